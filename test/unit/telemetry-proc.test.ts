import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import {
  countPidEntries,
  cpuLoadPercent,
  diskUsageFromStatfs,
  formatIPv6,
  listenerKey,
  parseMilliCelsius,
  parseMountPoints,
  parseNetDev,
  parseProcNetListeners,
  parseProcStatCpu,
  parseUptime,
  pickCpuTemperature,
  readCpuTemperature,
  readDiskUsage,
  readListeningSockets,
  readProcessCount,
} from '../../agent/telemetry/proc.js';
import { tempDir } from '../helpers/tmp.js';

// Captured on an x86_64 (little-endian) Linux 6.18 with listeners on 127.0.0.1:22, [::]:1883, [::1]:8080,
// [::ffff:127.0.0.1]:4840, udp 0.0.0.0:502 and [::]:5353, and a UDP socket connected to 127.0.0.1:53.
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2163480 1 0000000022be476a 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1597 1 00000000ee84c847 100 0 0 10 0
   2: 0A01A8C0:01F6 0B01A8C0:C350 01 00000000:00000000 02:000AFB1F 00000000     0        0 2163999 2 0000000011111111 20 4 30 10 -1
   3: 0100007F:9C40 0100007F:0016 06 00000000:00000000 03:000016C5 00000000     0        0 0 3 0000000022222222
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:12E8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2163481 1 0000000052343e5d 100 0 0 10 0
   1: 00000000000000000000000000000000:075B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2163477 1 00000000004a188c 100 0 0 10 0
   2: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2163478 1 000000009f445d35 100 0 0 10 0
`;
const UDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
15126: 0100007F:800E 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 2163484 2 00000000aae3bb01 0
15614: 00000000:01F6 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2163482 2 00000000cb6cd8ad 0
`;
const UDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 4081: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2163483 2 00000000388f6dd7 0
`;

test('tcp: LISTEN entries only, IPv4 words read little-endian (0100007F:0016 is 127.0.0.1:22)', (t) => {
  t.deepEqual(parseProcNetListeners(TCP, 'tcp'), [
    { proto: 'tcp', address: '127.0.0.1', port: 22, inode: 2163480 },
    { proto: 'tcp', address: '0.0.0.0', port: 2024, inode: 1597 },
  ]);
});

test('tcp6: each 32-bit word byte-reversed; RFC 5952 text, IPv4-mapped as ::ffff:a.b.c.d', (t) => {
  t.deepEqual(parseProcNetListeners(TCP6, 'tcp6'), [
    { proto: 'tcp6', address: '::ffff:127.0.0.1', port: 4840, inode: 2163481 },
    { proto: 'tcp6', address: '::', port: 1883, inode: 2163477 },
    { proto: 'tcp6', address: '::1', port: 8080, inode: 2163478 },
  ]);
});

test('udp: bound unconnected sockets (st 07) count, connected ones (st 01) do not', (t) => {
  t.deepEqual(parseProcNetListeners(UDP, 'udp'), [{ proto: 'udp', address: '0.0.0.0', port: 502, inode: 2163482 }]);
  t.deepEqual(parseProcNetListeners(UDP6, 'udp6'), [{ proto: 'udp6', address: '::', port: 5353, inode: 2163483 }]);
});

test('global and link-local IPv6 addresses; a big-endian host prints words in network order', (t) => {
  const line = (hex: string) =>
    `  sl  local_address remote_address st\n   0: ${hex}:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 42 1 0 100 0 0 10 0\n`;
  // 2001:db8::1 and fe80::1, as a little-endian kernel prints them
  t.is(parseProcNetListeners(line('B80D0120000000000000000001000000'), 'tcp6')[0]?.address, '2001:db8::1');
  t.is(parseProcNetListeners(line('000080FE000000000000000001000000'), 'tcp6')[0]?.address, 'fe80::1');
  t.is(parseProcNetListeners(line('20010DB8000000000000000000000001'), 'tcp6', { littleEndian: false })[0]?.address, '2001:db8::1');
  const v4 = '  sl local rem st\n   0: C0A8010A:01F6 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 7 1\n';
  t.is(parseProcNetListeners(v4, 'tcp', { littleEndian: false })[0]?.address, '192.168.1.10');
  t.is(parseProcNetListeners(v4, 'tcp')[0]?.address, '10.1.168.192');
  t.is(parseProcNetListeners(v4, 'tcp')[0]?.port, 502);
});

test('a line without the kernel shape throws WARD_TELEMETRY_PARSE naming the file and line', (t) => {
  const bad = `${TCP}   4: nonsense\n`;
  const err = t.throws(() => parseProcNetListeners(bad, 'tcp'));
  t.is((err as { code?: string }).code, 'WARD_TELEMETRY_PARSE');
  t.regex(err?.message ?? '', /\/proc\/net\/tcp line 6/);
  t.deepEqual(parseProcNetListeners('', 'tcp'), []);
});

test('formatIPv6 follows RFC 5952: longest zero run compressed (first on a tie), single zero groups kept', (t) => {
  const bytes = (groups: number[]) => groups.flatMap((g) => [g >> 8, g & 0xff]);
  t.is(formatIPv6(bytes([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1])), '2001:db8::1:0:0:1');
  t.is(formatIPv6(bytes([0x2001, 0xdb8, 0, 1, 1, 1, 1, 1])), '2001:db8:0:1:1:1:1:1');
  t.is(formatIPv6(bytes([0x2001, 0, 0, 1, 0, 0, 0, 1])), '2001:0:0:1::1');
  t.is(formatIPv6(bytes([0, 0, 0, 0, 0, 0, 0, 0])), '::');
  t.is(formatIPv6(bytes([0xfe80, 0, 0, 0, 0, 0, 0, 0])), 'fe80::');
  t.throws(() => formatIPv6([1, 2, 3]), { instanceOf: TypeError });
});

test('listener keys bracket IPv6 addresses', (t) => {
  t.is(listenerKey({ proto: 'tcp', address: '0.0.0.0', port: 22 }), 'tcp:0.0.0.0:22');
  t.is(listenerKey({ proto: 'tcp6', address: '::', port: 1883 }), 'tcp6:[::]:1883');
  t.is(listenerKey({ proto: 'udp6', address: 'fe80::1', port: 5353 }), 'udp6:[fe80::1]:5353');
});

test('/proc/stat: busy share between two samples, iowait counted idle, guest not counted twice', (t) => {
  const a = parseProcStatCpu('cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\nintr 1 2\n');
  t.deepEqual(a, { total: 1000, idle: 800 });
  const b = parseProcStatCpu('cpu  250 0 150 1400 200 0 0 0 120 0\n');
  t.deepEqual(b, { total: 2000, idle: 1600 });
  t.is(cpuLoadPercent(a, b), 20);
  t.is(cpuLoadPercent(a, a), undefined, 'no jiffy elapsed');
  t.is(cpuLoadPercent(b, a), undefined, 'counters went backwards (CPU unplugged)');
  t.deepEqual(parseProcStatCpu('cpu 10 0 10 80\n'), { total: 100, idle: 80 }, 'old kernels: four columns');
  t.throws(() => parseProcStatCpu('intr 1 2 3\n'), { message: /no aggregate cpu line/ });
  t.throws(() => parseProcStatCpu('cpu  a b c d\n'), { message: /malformed/ });
});

test('/proc/net/dev: counters per interface, including the old no-space-after-colon form', (t) => {
  const text = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1018214203 9442214    0    0    0     0          0         0 1018214203 9442214    0    0    0     0       0          0
  eth0: 3887537724  161351    3    7    0     0          0         0 16201079  114042    1    2    0     0       0          0
wwan0:123456789012 99 0 0 0 0 0 0 42 1 0 0 0 0 0 0
`;
  const dev = parseNetDev(text);
  t.deepEqual([...dev.keys()], ['lo', 'eth0', 'wwan0']);
  t.deepEqual(dev.get('eth0'), {
    rxBytes: 3887537724,
    rxPackets: 161351,
    rxErrors: 3,
    rxDropped: 7,
    txBytes: 16201079,
    txPackets: 114042,
    txErrors: 1,
    txDropped: 2,
  });
  t.is(dev.get('wwan0')?.rxBytes, 123456789012);
  t.throws(() => parseNetDev('eth0: 1 2 3\n'), { message: /malformed/ });
});

test('uptime, process count, temperatures, mounts, statfs arithmetic', (t) => {
  t.is(parseUptime('41675.64 43582.17\n'), 41675);
  t.throws(() => parseUptime(''), { message: /malformed/ });
  t.is(countPidEntries(['1', '42', 'self', 'thread-self', 'net', '1234', 'sys']), 3);

  t.is(parseMilliCelsius('48312\n'), 48.312);
  t.is(parseMilliCelsius('-273000'), undefined);
  t.is(parseMilliCelsius('garbage'), undefined);
  t.is(
    pickCpuTemperature([
      { type: 'battery', celsius: 30 },
      { type: 'cpu-thermal', celsius: 51 },
      { type: 'soc_thermal', celsius: 55 },
    ]),
    55,
  );
  t.is(pickCpuTemperature([{ type: 'acpitz', celsius: 40 }]), 40, 'no CPU-like sensor: the first zone');
  t.is(pickCpuTemperature([]), null);

  const mounts = parseMountPoints('/dev/root / ext4 rw 0 0\n/dev/mmcblk0p3 /data ext4 rw 0 0\n/dev/sda1 /mnt/usb\\040stick vfat rw 0 0\n');
  t.deepEqual([...mounts], ['/', '/data', '/mnt/usb stick']);

  // 4 KiB blocks: 1000 total, 300 free of which 250 available to non-root
  const d = diskUsageFromStatfs({ bsize: 4096, blocks: 1000, bfree: 300, bavail: 250 });
  t.is(d.totalBytes, 4_096_000);
  t.is(d.freeBytes, 1_024_000);
  t.is(d.usedPercent, (100 * 700) / 950, "df's Use%: used / (used + available)");
  t.is(diskUsageFromStatfs({ bsize: 4096, blocks: 0, bfree: 0, bavail: 0 }).usedPercent, 0);
});

async function fixtureRoot(dir: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), text);
  }
}

test('readers under a fixture root: sockets from all four tables; a kernel without IPv6 is not an error', async (t) => {
  const root = await tempDir(t);
  await fixtureRoot(root, { 'proc/net/tcp': TCP, 'proc/net/udp': UDP });
  const littleEndianHost = (await import('node:os')).endianness() === 'LE';
  const v4 = await readListeningSockets(root);
  t.is(v4.length, 3);
  if (littleEndianHost) t.deepEqual(v4.map(listenerKey), ['tcp:127.0.0.1:22', 'tcp:0.0.0.0:2024', 'udp:0.0.0.0:502']);

  await fixtureRoot(root, { 'proc/net/tcp6': TCP6, 'proc/net/udp6': UDP6 });
  t.is((await readListeningSockets(root)).length, 7);

  const empty = await tempDir(t);
  const err = await t.throwsAsync(readListeningSockets(empty));
  t.is((err as { code?: string }).code, 'WARD_TELEMETRY_SOURCE_FAILED');
  t.regex(err?.message ?? '', /proc\/net\/tcp/);
});

test('readers under a fixture root: process count, temperature (and its absence), mount check', async (t) => {
  const root = await tempDir(t);
  for (const d of ['proc/1', 'proc/42', 'proc/self-not-a-pid', 'proc/net']) await mkdir(join(root, d), { recursive: true });
  await writeFile(join(root, 'proc/77'), 'a file with a numeric name is not a process');
  t.is(await readProcessCount(root), 2);

  const noSensor = await t.throwsAsync(readCpuTemperature(root));
  t.is((noSensor as { code?: string }).code, 'WARD_TELEMETRY_NO_SENSOR');

  await fixtureRoot(root, {
    'sys/class/thermal/thermal_zone0/type': 'cpu-thermal\n',
    'sys/class/thermal/thermal_zone0/temp': '47250\n',
    'sys/class/thermal/thermal_zone1/type': 'gpu-thermal\n',
    'sys/class/thermal/thermal_zone1/temp': '60000\n',
    'sys/class/thermal/thermal_zone2/type': 'cpu-big-thermal\n',
    // zone2 has no temp file (a disabled zone): skipped
    'sys/class/hwmon/hwmon0/name': 'coretemp\n',
    'sys/class/hwmon/hwmon0/temp1_input': '49000\n',
  });
  t.is(await readCpuTemperature(root), 49, 'hottest CPU-like sensor');

  const notMounted = await t.throwsAsync(readDiskUsage('/data', root, new Set(['/'])));
  t.is((notMounted as { code?: string }).code, 'WARD_TELEMETRY_NOT_A_MOUNT');
  const usage = await readDiskUsage('/', root, new Set(['/']));
  t.true(usage.totalBytes > 0 && usage.usedPercent >= 0 && usage.usedPercent <= 100);
  const missing = await t.throwsAsync(readDiskUsage('/nope', root));
  t.is((missing as { code?: string }).code, 'WARD_TELEMETRY_SOURCE_FAILED');
});
