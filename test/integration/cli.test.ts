import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import mqtt from 'mqtt';
import { createRoot } from '../../agent/shared/fleet-root.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { freePort, waitFor } from '../helpers/net.js';
import { decodeSparkplug } from '../helpers/sparkplug-decode.js';
import { getJson, spawnWard } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// The real `ward` entry point in its own process: exit codes and messages a person can act on.

test('ward --version prints the version and exits 0', async (t) => {
  const p = spawnWard(t, ['--version']);
  t.is(await p.exited, 0);
  t.is(p.output().trim(), '0.1.0');
});

test('ward --help lists the commands', async (t) => {
  const p = spawnWard(t, ['--help']);
  t.is(await p.exited, 0);
  for (const cmd of ['agent', 'controller', 'dev']) t.regex(p.output(), new RegExp(`\\b${cmd}\\b`));
});

test('usage errors exit 2 with a hint', async (t) => {
  const unknown = spawnWard(t, ['frobnicate']);
  t.is(await unknown.exited, 2);
  t.regex(unknown.output(), /unknown command 'frobnicate'/);
  const missing = spawnWard(t, ['agent', 'run']);
  t.is(await missing.exited, 2);
  t.regex(missing.output(), /--config <file>/);
});

test('a missing config file exits 78 naming the file', async (t) => {
  const p = spawnWard(t, ['agent', 'run', '-c', '/nonexistent/ward/agent.yaml']);
  t.is(await p.exited, 78);
  t.regex(p.output(), /WARD_CONFIG_NOT_FOUND: config file \/nonexistent\/ward\/agent\.yaml does not exist/);
});

test('an invalid config exits 78 naming the file and each bad field', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'agent.yaml');
  await writeFile(file, `deviceId: gw-1\nstateDir: ${dir}\ncontroller: { publicKey: short }\nmqtt: { url: mqtt://127.0.0.1:1, keepalive: 5 }\n`);
  const p = spawnWard(t, ['agent', 'run', '-c', file]);
  t.is(await p.exited, 78);
  t.regex(p.output(), /WARD_CONFIG_INVALID/);
  t.regex(p.output(), new RegExp(file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')));
  t.regex(p.output(), /controller\.publicKey/);
  t.regex(p.output(), /mqtt\.keepalive: unknown field/);
});

test('ward dev brings up controller + broker + agent, shows it online, and stops cleanly on Ctrl-C', async (t) => {
  const dir = await tempDir(t);
  const [mqttPort, wsPort, apiPort, modbusPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const p = spawnWard(t, [
    'dev',
    '--modbus-port',
    String(modbusPort),
    '--opcua-port',
    '0',
    '--dir',
    dir,
    '--mqtt-port',
    String(mqttPort),
    '--ws-port',
    String(wsPort),
    '--api-port',
    String(apiPort),
    '--log-level',
    'warn',
  ]);
  const api = `http://127.0.0.1:${apiPort}`;
  const device = await waitFor(
    'dev agent online',
    async () => {
      if (p.child.exitCode !== null) throw new Error(`ward dev exited with ${p.child.exitCode}: ${p.output()}`);
      const { body } = await getJson<{ devices: { id: string; online: boolean; plugins: string[] }[] }>(`${api}/api/devices`);
      return body.devices.find((d) => d.online);
    },
    90_000,
    250,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n--- ward dev output ---\n${p.output()}`);
  });
  t.is(device.id, 'dev-gw-1');
  t.deepEqual(device.plugins, ['modbus', 'opcua', 'sim']);
  await waitFor('banner printed', () => p.output().includes('Press Ctrl-C to stop.'));
  // The agent's Modbus collector polls the simulated press PLC; its values reach the controller through the agent's status.
  const latest = await waitFor(
    'modbus values in the agent status',
    async () => {
      const res = await fetch(`${api}/api/devices/dev-gw-1/status`, { method: 'POST' });
      const body = (await res.json()) as { result?: { plugins?: { modbus?: { latest?: { point: string; value: unknown; quality: string }[] } } } };
      const points = body.result?.plugins?.modbus?.latest ?? [];
      return points.some((x) => x.point === 'cycles' && x.quality === 'good') ? points : undefined;
    },
    30_000,
    500,
  );
  t.like(
    latest.find((x) => x.point === 'setpoint-temperature'),
    { value: 45, quality: 'good' },
  );
  // Issue 8's done-when: the gateway, the press and the simulated CNC come alive over Sparkplug B in the controller.
  const telemetry = await waitFor(
    'Sparkplug telemetry of the gateway, the press and the CNC',
    async () => {
      const { body } = await getJson<{
        online?: boolean;
        metrics?: Record<string, { value: unknown }>;
        devices?: Record<string, { metrics: Record<string, { value: unknown }> }>;
      }>(`${api}/api/devices/dev-gw-1/telemetry`);
      const cnc = body.devices?.['cnc-1']?.metrics;
      // Points of the CNC may arrive in different publish cycles (a later one forces a rebirth): wait for both.
      return body.online &&
        body.metrics?.['Gateway/CPU/Load'] &&
        typeof cnc?.['Spindle/Speed']?.value === 'number' &&
        typeof cnc?.['Program/Name']?.value === 'string' &&
        body.devices?.['press-1']
        ? body
        : undefined;
    },
    60_000,
    500,
  );
  t.is(typeof telemetry.devices?.['cnc-1']?.metrics['Program/Name']?.value, 'string');
  // What a person with any Sparkplug tool sees, through the read-only identity ward dev wrote: the CNC's data,
  // decoded here with the tests' own protobuf reader.
  const observer = join(dir, 'observer');
  const watcher = await mqtt.connectAsync(`mqtts://127.0.0.1:${mqttPort}`, {
    ca: await readFile(join(observer, 'ca.pem')),
    cert: await readFile(join(observer, 'cert.pem')),
    key: await readFile(join(observer, 'key.pem')),
    clientId: 'ward-observer-test',
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  t.teardown(() => watcher.endAsync(true));
  const seen: { topic: string; metrics: number }[] = [];
  watcher.on('message', (topic, payload) => {
    if (!topic.startsWith('spBv1.0/STATE/')) seen.push({ topic, metrics: decodeSparkplug(payload).metrics.length });
  });
  await watcher.subscribeAsync('spBv1.0/#', { qos: 0 });
  const cncData = await waitFor('CNC data seen by the observer', () => seen.find((m) => m.topic === 'spBv1.0/ward/DDATA/dev-gw-1/cnc-1'), 30_000);
  t.true(cncData.metrics > 0);
  t.regex(p.output(), /mosquitto_sub .* -t 'spBv1\.0\/#' -v/);
  t.regex(p.output(), new RegExp(`curl ${api}/api/devices`));
  p.child.kill('SIGINT');
  t.is(await p.exited, 0);
  t.regex(p.output(), /Ward dev stack stopped\./);
});

test('ward dev says which port is taken instead of crashing obscurely', async (t) => {
  const { createServer } = await import('node:net');
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => blocker.close());
  const taken = (blocker.address() as { port: number }).port;
  const dir = await tempDir(t);
  const p = spawnWard(t, [
    'dev',
    '--dir',
    dir,
    '--mqtt-port',
    String(taken),
    '--ws-port',
    '0',
    '--api-port',
    '0',
    '--opcua-port',
    '0',
    '--log-level',
    'silent',
  ]);
  t.is(await p.exited, 1);
  t.regex(p.output(), new RegExp(`WARD_CONTROLLER_LISTEN_FAILED: MQTT \\(TLS\\) port 127.0.0.1:${taken} is already in use`));
});

test('ward dev says when the simulated Modbus PLC port is taken', async (t) => {
  const { createServer } = await import('node:net');
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => blocker.close());
  const taken = (blocker.address() as { port: number }).port;
  const dir = await tempDir(t);
  const p = spawnWard(t, [
    'dev',
    '--dir',
    dir,
    '--opcua-port',
    '0',
    '--modbus-port',
    String(taken),
    '--mqtt-port',
    '0',
    '--ws-port',
    '0',
    '--api-port',
    '0',
    '--log-level',
    'silent',
  ]);
  t.is(await p.exited, 1);
  t.regex(p.output(), new RegExp(`WARD_DEV_LISTEN_FAILED: simulated Modbus PLC port 127.0.0.1:${taken} is already in use: choose another with --modbus-port`));
});

test('an agent whose fleet root is missing or tampered exits 78 (restarting cannot help) with the reason', async (t) => {
  const dir = await tempDir(t);
  const rootFile = join(dir, 'root.json');
  const file = join(dir, 'agent.yaml');
  await writeFile(file, `stateDir: ${join(dir, 'state')}\ntrust: { rootFile: ${rootFile} }\nhardware: { statusLed: none, watchdog: none }\n`);
  const missing = spawnWard(t, ['agent', 'run', '-c', file]);
  t.is(await missing.exited, 78);
  t.regex(missing.output(), /WARD_FLEET_NOT_INITIALISED/);
  const key = generateSigningKey();
  const root = createRoot({ keys: [key], validDays: 10 });
  await writeFile(rootFile, JSON.stringify({ ...root, payload: { ...root.payload, threshold: 1, name: 'tampered' } }));
  const tampered = spawnWard(t, ['agent', 'run', '-c', file]);
  t.is(await tampered.exited, 78);
  t.regex(tampered.output(), /WARD_FLEET_ROOT_THRESHOLD|WARD_FLEET_ROOT_INVALID/);
});

test('ward attest show measures the files without an agent; a changed config byte changes its line and the aggregate; attest now needs the agent', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'agent.yaml');
  await writeFile(file, `stateDir: ${join(dir, 'state')}\nhardware: { statusLed: none, watchdog: none }\nattestation: { tpm: off }\n`);
  const first = spawnWard(t, ['attest', 'show', '-c', file]);
  t.is(await first.exited, 0, first.output());
  t.regex(first.output(), /trust level: not running \(no agent running: measured the files now\)/);
  t.regex(first.output(), new RegExp(`config\\s+[0-9a-f]{16}…  ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
  t.regex(first.output(), /executable\s+[0-9a-f]{16}… {2}source/);
  await writeFile(file, `stateDir: ${join(dir, 'state')}\nhardware: { statusLed: none, watchdog: none }\nattestation: { tpm: off }\n `);
  const second = spawnWard(t, ['attest', 'show', '-c', file, '--json']);
  t.is(await second.exited, 0, second.output());
  const a = /aggregate: ([0-9a-f]{64})/.exec(first.output())?.[1];
  t.truthy(a);
  const b = JSON.parse(second.output()) as { aggregate: string; log: { kind: string; sha256: string }[] };
  t.not(b.aggregate, a, 'one more byte in the config, another aggregate');
  t.is(b.log.length, 3, 'executable, config, policy (no plugins, no trust anchors configured)');
  const now = spawnWard(t, ['attest', 'now', '-c', file]);
  t.is(await now.exited, 1);
  t.regex(now.output(), /WARD_ATTEST_UNAVAILABLE: no agent is running/);
});
