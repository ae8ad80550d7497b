import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { cp, rename } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { detectBoard } from '../../hardware/boards/detect.js';
import { FakeLed, FakeScanner, FakeWatchdog } from '../../hardware/fakes/index.js';
import { SysfsLed } from '../../hardware/led/sysfs.js';
import { StreamScanInput } from '../../hardware/qr/tty.js';
import { hostFs } from '../../hardware/sysfs/hostfs.js';
import { SystemdWatchdog } from '../../hardware/watchdog/systemd.js';
import { scanInputSuite, statusLedSuite, watchdogSuite } from '../conformance/hardware.js';
import { waitFor } from '../helpers/net.js';
import { REPO_ROOT } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

const BOARDS = join(REPO_ROOT, 'test/fixtures/boards');

/** A private copy of a fixture tree, for drivers that write (LEDs) or tests that rename. */
async function boardCopy(t: import('ava').ExecutionContext, board: string): Promise<string> {
  const dir = join(await tempDir(t), board);
  await cp(join(BOARDS, board), dir, { recursive: true, verbatimSymlinks: true });
  return dir;
}

test('Raspberry Pi 4: ports mapped by device path, no TPM, serial from the device tree', async (t) => {
  const board = await detectBoard(hostFs(join(BOARDS, 'rpi4')));
  t.is(board.profile.id, 'rpi4');
  t.is(board.model, 'Raspberry Pi 4 Model B Rev 1.4');
  t.deepEqual(
    board.ports.map((p) => [p.name, p.device]),
    [
      ['UPLINK', 'eth0'],
      ['PLC1', 'eth1'],
      ['PLC2', undefined],
      ['RS485-1', '/dev/ttyAMA0'],
    ],
  );
  t.deepEqual(board.tpm, { present: false });
  t.is(board.serial, '10000000a1b2c3d4');
});

test('CM4 on a dual-Ethernet carrier: PCIe NIC is PLC1, SPI TPM 2.0 found', async (t) => {
  const board = await detectBoard(hostFs(join(BOARDS, 'rpi-cm4-dual-eth')));
  t.is(board.profile.id, 'rpi-cm4-dual-eth');
  t.is(board.ports.find((p) => p.name === 'UPLINK')?.device, 'eth0');
  t.is(board.ports.find((p) => p.name === 'PLC1')?.device, 'eth1');
  t.is(board.ports.find((p) => p.name === 'RS485-1')?.device, '/dev/ttyAMA0');
  t.deepEqual(board.tpm, { present: true, version: '2', device: '/dev/tpmrm0' });
});

test('a generic x86 box numbers its physical NICs in device order and ignores virtual ones', async (t) => {
  const board = await detectBoard(hostFs(join(BOARDS, 'generic-x86')));
  t.is(board.profile.id, 'generic');
  t.is(board.model, 'QEMU Standard PC (Q35 + ICH9, 2009)');
  t.deepEqual(
    board.ports.map((p) => [p.name, p.device]),
    [
      ['UPLINK', 'enp1s0'],
      ['PLC1', 'enp2s0'],
      ['PLC2', undefined],
      ['RS485-1', '/dev/ttyUSB0'],
    ],
  );
});

test('a renamed interface (eth0 → end0, newer kernels) still maps to the same port', async (t) => {
  const root = await boardCopy(t, 'rpi4');
  await rename(join(root, 'sys/class/net/eth0'), join(root, 'sys/class/net/end0'));
  const board = await detectBoard(hostFs(root));
  t.is(board.ports.find((p) => p.name === 'UPLINK')?.device, 'end0');
});

test('a forced board profile is used as given; an unknown one is refused with the known list', async (t) => {
  const forced = await detectBoard(hostFs(join(BOARDS, 'generic-x86')), { board: 'rpi4' });
  t.is(forced.profile.id, 'rpi4');
  t.is(forced.ports.find((p) => p.name === 'UPLINK')?.device, undefined);
  const err = await t.throwsAsync(detectBoard(hostFs(join(BOARDS, 'rpi4')), { board: 'rpi9' }));
  t.is((err as { code?: string }).code, 'WARD_HW_UNKNOWN_BOARD');
  t.regex(err?.message ?? '', /known: .*rpi4/);
});

test('an empty tree (no device tree, no DMI) falls back to the generic profile with no ports', async (t) => {
  const board = await detectBoard(hostFs(await tempDir(t)));
  t.is(board.profile.id, 'generic');
  t.true(board.ports.every((p) => p.device === undefined));
});

test('a fixture symlink pointing outside the root is treated as absent', async (t) => {
  const root = await boardCopy(t, 'rpi4');
  execFileSync('ln', ['-sfn', '/sys/class/net/lo', join(root, 'sys/class/net/eth0')]);
  const board = await detectBoard(hostFs(root));
  t.is(board.ports.find((p) => p.name === 'UPLINK')?.device, undefined);
});

statusLedSuite(test, 'FakeLed', async () => new FakeLed());
statusLedSuite(test, 'SysfsLed on the Pi 4 tree', async (t) => {
  const led = await SysfsLed.find(hostFs(await boardCopy(t, 'rpi4')), ['ACT', 'led0']);
  if (led === undefined) throw new Error('ACT LED not found in the fixture');
  return led;
});

test('SysfsLed.find takes the first present candidate and finds none on a board without LEDs', async (t) => {
  t.is((await SysfsLed.find(hostFs(join(BOARDS, 'rpi4')), ['led0', 'ACT']))?.name, 'ACT');
  t.is(await SysfsLed.find(hostFs(join(BOARDS, 'generic-x86')), ['ACT']), undefined);
});

scanInputSuite(test, 'FakeScanner', async () => {
  const scanner = new FakeScanner();
  return { input: scanner, type: async (s) => scanner.type(s), end: async () => scanner.end() };
});
scanInputSuite(test, 'StreamScanInput on a FIFO (a real character stream)', async (t) => {
  const fifo = join(await tempDir(t), 'scanner');
  execFileSync('mkfifo', [fifo]);
  const input = StreamScanInput.fromTty(fifo);
  const writer = createWriteStream(fifo);
  t.teardown(() => {
    writer.destroy();
  });
  return {
    input,
    type: (s) => new Promise<void>((resolve) => writer.write(s, () => resolve())),
    end: () => new Promise<void>((resolve) => writer.end(() => resolve())),
  };
});

watchdogSuite(test, 'FakeWatchdog', async () => {
  const w = new FakeWatchdog();
  return { watchdog: w, received: async () => w.messages };
});
watchdogSuite(test, 'SystemdWatchdog through systemd-notify to a real notify socket', async (t) => {
  const dir = await tempDir(t);
  const socket = join(dir, 'notify.sock');
  const receiver: ChildProcess = spawn('/usr/bin/python3', [join(REPO_ROOT, 'test/helpers/notify-receiver.py'), socket], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => receiver.kill());
  let out = '';
  receiver.stdout?.on('data', (d) => {
    out += d;
  });
  await waitFor('notify receiver listening', () => out.includes('listening'), 10_000, 20);
  const watchdog = new SystemdWatchdog({ NOTIFY_SOCKET: socket, WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) });
  t.is(watchdog.intervalMs, 15_000, 'pings at half of WatchdogSec');
  const messages = () =>
    out
      .split('\n')
      .slice(1)
      .filter((l) => l.startsWith('"'))
      .map((l) => JSON.parse(l) as string)
      .filter((m) => m !== 'BARRIER=1');
  return { watchdog, received: async () => messages() };
});

test('SystemdWatchdog is inert without NOTIFY_SOCKET and ignores a watchdog meant for another process', async (t) => {
  const calls: string[][] = [];
  const w = new SystemdWatchdog({ WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' }, async (_f, args) => calls.push([...args]));
  t.is(w.intervalMs, undefined);
  await w.ping();
  t.deepEqual(calls, []);
});

test('StreamScanInput on a real pseudo-terminal: scans arrive in canonical mode and close() does not hang', async (t) => {
  const typist = spawn('/usr/bin/python3', [join(REPO_ROOT, 'test/helpers/pty-typist.py')], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => typist.kill());
  let out = '';
  typist.stdout?.on('data', (d) => {
    out += d;
  });
  const ttyPath = await waitFor('pty created', () => (out.includes('\n') ? out.trim() : undefined), 10_000, 20);
  t.regex(ttyPath, /^\/dev\/pts\/\d+$/);
  const input = StreamScanInput.fromTty(ttyPath);
  const events: string[] = [];
  const reading = (async () => {
    for await (const e of input.events()) if (e.kind === 'scan') events.push(e.text);
  })();
  typist.stdin?.write('WARD1:FIRST\nWARD1:SECOND\n');
  await waitFor('two scans read from the tty', () => events.length >= 2, 10_000, 20);
  t.deepEqual(events, ['WARD1:FIRST', 'WARD1:SECOND']);
  await input.close();
  await reading; // ends because close() destroyed the tty stream, with the typist still holding the pty open
  t.pass();
});
