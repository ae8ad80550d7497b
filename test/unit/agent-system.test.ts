import { join } from 'node:path';
import test from 'ava';
import { pino } from 'pino';
import { validateConfig } from '../../agent/config/load.js';
import { agentConfigSchema } from '../../agent/config/schema.js';
import { buildAgent } from '../../agent/system.js';
import { FakeLed, FakeScanner, FakeWatchdog } from '../../hardware/fakes/index.js';
import { hostFs } from '../../hardware/sysfs/hostfs.js';
import { builtinPlugins } from '../../plugins/index.js';
import { waitFor } from '../helpers/net.js';
import { REPO_ROOT } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// The composition root with hardware fakes (no board here to blink or supervise) over the Pi 4 fixture tree.

function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

test('an agent without identity waits for provisioning: slow blink, READY to the watchdog, scans never logged', async (t) => {
  const dir = await tempDir(t);
  const config = validateConfig(
    { stateDir: join(dir, 'state'), hardware: { root: join(REPO_ROOT, 'test/fixtures/boards/rpi4') } },
    '(test)',
    agentConfigSchema,
  );
  const led = new FakeLed();
  const watchdog = new FakeWatchdog(50);
  const scanner = new FakeScanner();
  const { logger, lines } = capturingLogger();
  const agent = await buildAgent({ config, logger, plugins: builtinPlugins, hardware: { led, watchdog, scanner } });
  t.is(agent.board.profile.id, 'rpi4');
  t.is(agent.link, undefined);
  await agent.start();
  t.is(agent.lifecycle.state, 'unprovisioned');
  t.deepEqual(await led.current(), { mode: 'blink', onMs: 1000, offMs: 1000 });
  t.true(lines.some((l) => l.event === 'waiting-for-provisioning'));
  t.is(watchdog.messages[0], 'READY=1\nSTATUS=lifecycle unprovisioned');
  await waitFor('watchdog pinged from the main loop', () => watchdog.messages.includes('WATCHDOG=1'), 5_000, 10);

  const secret = 'WARD1:SECRET-ENROLLMENT-TOKEN-0123456789';
  scanner.type(`${secret}\r\n`);
  await waitFor('scan handled', () => lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith('enrollment code refused')), 5_000, 10);
  // This config names no fleet root, so no code can be checked: refused with a reason, as an audit line.
  t.true(lines.some((l) => l.audit === true && l.action === 'provision.scan' && l.code === 'WARD_FLEET_NOT_INITIALISED'));
  t.false(JSON.stringify(lines).includes('SECRET-ENROLLMENT-TOKEN'), 'the scanned token never reaches a log line');
  t.is(agent.lifecycle.state, 'unprovisioned', 'an unverified scan changes nothing');

  await agent.stop();
  t.is(watchdog.messages.at(-1), 'STOPPING=1');
});

test('hardware detection is logged with the port map', async (t) => {
  const dir = await tempDir(t);
  const config = validateConfig(
    { stateDir: join(dir, 'state'), hardware: { root: join(REPO_ROOT, 'test/fixtures/boards/rpi-cm4-dual-eth') } },
    '(test)',
    agentConfigSchema,
  );
  const { logger, lines } = capturingLogger();
  const agent = await buildAgent({ config, logger, plugins: [], hardware: { led: null, watchdog: new FakeWatchdog(undefined), scanner: null } });
  const hw = lines.find((l) => l.msg === 'hardware detected');
  t.is(hw?.board, 'rpi-cm4-dual-eth');
  t.deepEqual(hw?.ports, { UPLINK: 'eth0', PLC1: 'eth1', PLC2: null, 'RS485-1': '/dev/ttyAMA0' });
  t.is(hw?.tpm, '/dev/tpmrm0');
  t.is(agent.board.tpm.present, true);
});

test('the sysfs status LED of the fixture board follows the lifecycle when picked automatically', async (t) => {
  const dir = await tempDir(t);
  const { cp } = await import('node:fs/promises');
  const root = join(dir, 'board');
  await cp(join(REPO_ROOT, 'test/fixtures/boards/rpi4'), root, { recursive: true, verbatimSymlinks: true });
  const config = validateConfig({ stateDir: join(dir, 'state'), hardware: { root } }, '(test)', agentConfigSchema);
  const agent = await buildAgent({
    config,
    logger: pino({ level: 'silent' }),
    plugins: [],
    hardware: { watchdog: new FakeWatchdog(undefined), scanner: null },
  });
  await agent.start();
  const fs = hostFs(root);
  // The driver writes the trigger first and the delays after it (the kernel only creates the
  // delay files once the timer trigger is set), so wait for the whole pattern, not its first write.
  const blink = async () => ({
    trigger: (await fs.readText('/sys/class/leds/ACT/trigger'))?.trim(),
    delayOn: (await fs.readText('/sys/class/leds/ACT/delay_on'))?.trim(),
  });
  await waitFor(
    'LED blinking slowly',
    async () => {
      const led = await blink();
      return led.trigger === 'timer' && led.delayOn === '1000';
    },
    5_000,
    10,
  );
  t.deepEqual(await blink(), { trigger: 'timer', delayOn: '1000' });
  await agent.stop();
});
