import { readdir, readFile, statfs } from 'node:fs/promises';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * What the gateway health collector reads straight from procfs and sysfs,
 * because systeminformation would spawn a shell (and `cat`, `grep`, `ps`,
 * `netstat`, `df`…) for it on Linux: see the measurements at the top of
 * gateway.ts. Parsers take the kernel's text and return data, with no I/O;
 * the readers are thin, take a root directory (default '/') so tests can
 * point them at fixtures, and never spawn a process.
 *
 * Everything here reads the caller's namespaces: in a container with its
 * own network namespace /proc/net/* lists the container's sockets, with its
 * own PID namespace /proc lists the container's processes.
 */

// ---------------------------------------------------------------------------
// Listening sockets: /proc/net/{tcp,tcp6,udp,udp6}

export type SocketProto = 'tcp' | 'tcp6' | 'udp' | 'udp6';
export const SOCKET_PROTOS: readonly SocketProto[] = ['tcp', 'tcp6', 'udp', 'udp6'];

export interface ListeningSocket {
  readonly proto: SocketProto;
  /** Dotted quad for tcp/udp, RFC 5952 text (no brackets) for tcp6/udp6. */
  readonly address: string;
  readonly port: number;
  /** The socket's inode: with /proc/<pid>/fd it names the owning process (not resolved here: that needs root). */
  readonly inode: number;
}

// include/net/tcp_states.h: TCP_LISTEN = 10. A UDP socket that is bound but
// not connect()ed stays in TCP_CLOSE = 7 and accepts datagrams from anyone,
// which is what `netstat -lu` calls listening; a connected one is 1.
const TCP_LISTEN = 0x0a;
const UDP_UNCONNECTED = 0x07;

export interface ProcNetOptions {
  /**
   * Byte order of the machine that wrote the text. The kernel prints each
   * 32-bit word of the address (network order in memory) with `%08X` as a
   * host-order integer, so on little-endian CPUs (x86, ARM as run on
   * gateways) every word reads byte-reversed: 0100007F is 127.0.0.1. The
   * port is printed after ntohs and is plain hex. Default: little-endian.
   */
  readonly littleEndian?: boolean;
}

/**
 * The listening entries of one /proc/net/{tcp,tcp6,udp,udp6} text: TCP
 * sockets in LISTEN, UDP sockets bound to a port and not connected. A line
 * that does not have the kernel's shape throws (WARD_TELEMETRY_PARSE): a
 * security signal must not lose a listener to a silently skipped line.
 */
export function parseProcNetListeners(text: string, proto: SocketProto, options: ProcNetOptions = {}): ListeningSocket[] {
  const littleEndian = options.littleEndian ?? true;
  const v6 = proto === 'tcp6' || proto === 'udp6';
  const wanted = proto === 'tcp' || proto === 'tcp6' ? TCP_LISTEN : UDP_UNCONNECTED;
  const addrPattern = v6 ? /^([0-9A-Fa-f]{32}):([0-9A-Fa-f]{4})$/ : /^([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})$/;
  const out: ListeningSocket[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]?.trim() ?? '';
    if (line === '' || line.startsWith('sl ')) continue;
    const fields = line.split(/\s+/);
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode … (net/ipv4/tcp_ipv4.c get_tcp4_sock)
    const local = addrPattern.exec(fields[1] ?? '');
    const st = fields[3];
    const inode = fields[9];
    if (!fields[0]?.endsWith(':') || !local || st === undefined || !/^[0-9A-Fa-f]{2}$/.test(st) || inode === undefined || !/^\d+$/.test(inode)) {
      throw new WardError(ErrorCodes.TELEMETRY_PARSE, `/proc/net/${proto} line ${i + 1} is not a socket entry`, {
        details: { proto, line: i + 1, text: line.slice(0, 200) },
      });
    }
    if (Number.parseInt(st, 16) !== wanted) continue;
    const port = Number.parseInt(local[2] ?? '', 16);
    // Port 0: not bound to a port (a raw leftover), nothing can reach it.
    if (port === 0) continue;
    const bytes = hexWordsToBytes(local[1] ?? '', littleEndian);
    out.push({ proto, address: v6 ? formatIPv6(bytes) : bytes.join('.'), port, inode: Number(inode) });
  }
  return out;
}

function hexWordsToBytes(hex: string, littleEndian: boolean): number[] {
  const bytes: number[] = [];
  for (let w = 0; w < hex.length; w += 8) {
    const word: number[] = [];
    for (let b = 0; b < 8; b += 2) word.push(Number.parseInt(hex.slice(w + b, w + b + 2), 16));
    if (littleEndian) word.reverse();
    bytes.push(...word);
  }
  return bytes;
}

/** RFC 5952 text of 16 bytes: lower case, no leading zeros, the longest run (≥ 2) of zero groups as '::', IPv4-mapped as ::ffff:a.b.c.d (§5). */
export function formatIPv6(bytes: readonly number[]): string {
  if (bytes.length !== 16) throw new TypeError(`an IPv6 address has 16 bytes, got ${bytes.length}`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) return `::ffff:${bytes.slice(12).join('.')}`;
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** `tcp:0.0.0.0:22`, `tcp6:[::]:1883`: the form of Gateway/Sockets/ListeningSet and of audit targets. */
export function listenerKey(s: Pick<ListeningSocket, 'proto' | 'address' | 'port'>): string {
  return s.proto.endsWith('6') ? `${s.proto}:[${s.address}]:${s.port}` : `${s.proto}:${s.address}:${s.port}`;
}

/**
 * All listening sockets of this network namespace. A missing tcp6/udp6 file
 * means a kernel built without IPv6 (common on small gateway images): no
 * IPv6 listeners, not an error. A missing tcp file is an error.
 */
export async function readListeningSockets(root = '/'): Promise<ListeningSocket[]> {
  const littleEndian = endianness() === 'LE';
  const lists = await Promise.all(
    SOCKET_PROTOS.map(async (proto) => {
      const path = join(root, 'proc/net', proto);
      let text: string;
      try {
        text = await readFile(path, 'utf8');
      } catch (err) {
        if (proto.endsWith('6') && (err as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw sourceError(`reading ${path}`, err);
      }
      return parseProcNetListeners(text, proto, { littleEndian });
    }),
  );
  return lists.flat();
}

// ---------------------------------------------------------------------------
// CPU time: /proc/stat

export interface CpuTimes {
  /** Jiffies since boot spent in any state, summed over all CPUs. */
  readonly total: number;
  /** Of which idle or waiting for I/O (the CPU could have run something else). */
  readonly idle: number;
}

/**
 * The aggregate `cpu` line of /proc/stat (Documentation/filesystems/proc.rst
 * §1.8): user nice system idle iowait irq softirq steal guest guest_nice.
 * guest and guest_nice are already counted in user and nice, so they are
 * not added again. Older kernels print fewer columns; missing ones are 0.
 */
export function parseProcStatCpu(text: string): CpuTimes {
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new WardError(ErrorCodes.TELEMETRY_PARSE, '/proc/stat has no aggregate cpu line');
  const v = line
    .trim()
    .split(/\s+/)
    .slice(1, 9)
    .map((x) => Number(x));
  if (v.length < 4 || v.some((x) => !Number.isFinite(x) || x < 0)) {
    throw new WardError(ErrorCodes.TELEMETRY_PARSE, '/proc/stat cpu line is malformed', { details: { text: line.slice(0, 200) } });
  }
  const total = v.reduce((a, b) => a + b, 0);
  return { total, idle: (v[3] ?? 0) + (v[4] ?? 0) };
}

/**
 * Busy percentage between two samples, or undefined when no jiffy passed
 * between them (two reads within one tick) or the counters went backwards
 * (CPU hot-unplug drops an offline CPU's times from the sum).
 */
export function cpuLoadPercent(prev: CpuTimes, next: CpuTimes): number | undefined {
  const dTotal = next.total - prev.total;
  const dIdle = next.idle - prev.idle;
  if (dTotal <= 0 || dIdle < 0 || dIdle > dTotal) return undefined;
  return (100 * (dTotal - dIdle)) / dTotal;
}

export async function readCpuTimes(root = '/'): Promise<CpuTimes> {
  return parseProcStatCpu(await readText(join(root, 'proc/stat')));
}

// ---------------------------------------------------------------------------
// Network interface counters: /proc/net/dev

export interface NetDevCounters {
  readonly rxBytes: number;
  readonly rxPackets: number;
  readonly rxErrors: number;
  readonly rxDropped: number;
  readonly txBytes: number;
  readonly txPackets: number;
  readonly txErrors: number;
  readonly txDropped: number;
}

/**
 * /proc/net/dev (net/core/net-procfs.c dev_seq_printf_stats): two header
 * lines, then `iface: 8 receive columns 8 transmit columns`. Old kernels
 * print no space after the colon once rx bytes get wide, so the name is cut
 * at the colon, not at whitespace. Values are JS numbers: exact up to 2^53
 * bytes (8 PiB), far beyond what a gateway moves between reboots.
 */
export function parseNetDev(text: string): Map<string, NetDevCounters> {
  const out = new Map<string, NetDevCounters>();
  for (const raw of text.split('\n')) {
    const colon = raw.indexOf(':');
    if (colon < 0 || raw.includes('|')) continue;
    const name = raw.slice(0, colon).trim();
    const v = raw
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map((x) => Number(x));
    if (name === '' || v.length < 16 || v.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new WardError(ErrorCodes.TELEMETRY_PARSE, '/proc/net/dev line is malformed', { details: { text: raw.slice(0, 200) } });
    }
    const at = (i: number) => v[i] ?? 0;
    out.set(name, {
      rxBytes: at(0),
      rxPackets: at(1),
      rxErrors: at(2),
      rxDropped: at(3),
      txBytes: at(8),
      txPackets: at(9),
      txErrors: at(10),
      txDropped: at(11),
    });
  }
  return out;
}

export async function readNetDev(root = '/'): Promise<Map<string, NetDevCounters>> {
  return parseNetDev(await readText(join(root, 'proc/net/dev')));
}

// ---------------------------------------------------------------------------
// Uptime and process count

/** Whole seconds since boot from /proc/uptime ("41675.64 43582.17": uptime, then idle time summed over CPUs). */
export function parseUptime(text: string): number {
  const first = text.trim().split(/\s+/)[0] ?? '';
  const seconds = Number(first);
  if (first === '' || !Number.isFinite(seconds) || seconds < 0) {
    throw new WardError(ErrorCodes.TELEMETRY_PARSE, '/proc/uptime is malformed', { details: { text: text.slice(0, 100) } });
  }
  return Math.floor(seconds);
}

export async function readUptime(root = '/'): Promise<number> {
  return parseUptime(await readText(join(root, 'proc/uptime')));
}

/** Processes among the names of /proc: one numeric directory per process (threads live under /proc/<pid>/task and are not counted). */
export function countPidEntries(names: Iterable<string>): number {
  let n = 0;
  for (const name of names) if (/^\d+$/.test(name)) n++;
  return n;
}

export async function readProcessCount(root = '/'): Promise<number> {
  const dir = join(root, 'proc');
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    return countPidEntries(entries.filter((e) => e.isDirectory()).map((e) => e.name));
  } catch (err) {
    throw sourceError(`listing ${dir}`, err);
  }
}

// ---------------------------------------------------------------------------
// CPU temperature: /sys/class/thermal, then /sys/class/hwmon

export interface TemperatureSensor {
  /** thermal zone `type` or hwmon `name`, e.g. cpu-thermal, soc_thermal, x86_pkg_temp, coretemp. */
  readonly type: string;
  readonly celsius: number;
}

// Names SoC and CPU drivers give their sensors (RPi cpu-thermal, Allwinner
// cpu_thermal, Rockchip soc-thermal, i.MX cpu-thermal, x86 x86_pkg_temp,
// coretemp, k10temp). Boards also expose battery, PMIC, Wi-Fi or ACPI
// zones, which must not stand in for the CPU.
const CPU_SENSOR = /cpu|soc|x86_pkg_temp|coretemp|k10temp|zenpower/i;

/**
 * The CPU temperature among the readable sensors: the hottest CPU-like one,
 * else the first sensor (thermal_zone0 is the SoC on the ARM boards Ward
 * targets), else null when the board has none.
 */
export function pickCpuTemperature(sensors: readonly TemperatureSensor[]): number | null {
  const cpu = sensors.filter((s) => CPU_SENSOR.test(s.type));
  if (cpu.length > 0) return Math.max(...cpu.map((s) => s.celsius));
  return sensors[0]?.celsius ?? null;
}

/** A sysfs temperature in millidegrees Celsius ("48312\n"), or undefined when unreadable text. */
export function parseMilliCelsius(text: string): number | undefined {
  const t = text.trim();
  if (!/^-?\d+$/.test(t)) return undefined;
  const c = Number(t) / 1000;
  // Disabled or unconnected sensors report absurd values (-273000, 0x7fffffff…).
  return c > -100 && c < 200 ? c : undefined;
}

/** Every readable sensor, thermal zones first, in zone order. A zone whose `temp` read fails (disabled, EAGAIN from an ADC) is skipped. */
export async function readTemperatureSensors(root = '/'): Promise<TemperatureSensor[]> {
  const out: TemperatureSensor[] = [];
  const thermal = join(root, 'sys/class/thermal');
  for (const zone of sortNumbered(await listOrEmpty(thermal), 'thermal_zone')) {
    const type = (await readOptional(join(thermal, zone, 'type')))?.trim() ?? zone;
    const c = parseMilliCelsius((await readOptional(join(thermal, zone, 'temp'))) ?? '');
    if (c !== undefined) out.push({ type, celsius: c });
  }
  const hwmon = join(root, 'sys/class/hwmon');
  for (const mon of sortNumbered(await listOrEmpty(hwmon), 'hwmon')) {
    const type = (await readOptional(join(hwmon, mon, 'name')))?.trim() ?? mon;
    const c = parseMilliCelsius((await readOptional(join(hwmon, mon, 'temp1_input'))) ?? '');
    if (c !== undefined) out.push({ type, celsius: c });
  }
  return out;
}

/** The CPU temperature in °C; throws WARD_TELEMETRY_NO_SENSOR when the board exposes no readable sensor. */
export async function readCpuTemperature(root = '/'): Promise<number> {
  const c = pickCpuTemperature(await readTemperatureSensors(root));
  if (c === null) {
    throw new WardError(
      ErrorCodes.TELEMETRY_NO_SENSOR,
      `no readable temperature sensor under ${join(root, 'sys/class/thermal')} or ${join(root, 'sys/class/hwmon')}`,
    );
  }
  return c;
}

function sortNumbered(names: readonly string[], prefix: string): string[] {
  const re = new RegExp(`^${prefix}(\\d+)$`);
  return names
    .map((n) => ({ n, m: re.exec(n) }))
    .filter((x): x is { n: string; m: RegExpExecArray } => x.m !== null)
    .sort((a, b) => Number(a.m[1]) - Number(b.m[1]))
    .map((x) => x.n);
}

// ---------------------------------------------------------------------------
// Disk usage: statfs(2) on configured mount points

export interface DiskUsage {
  readonly totalBytes: number;
  /** Bytes an unprivileged process may still write (f_bavail: excludes the root-reserved blocks). */
  readonly freeBytes: number;
  /** df's Use%: used / (used + available), so a full disk reads 100 % even with reserved blocks left. */
  readonly usedPercent: number;
}

export function diskUsageFromStatfs(s: { bsize: number; blocks: number; bfree: number; bavail: number }): DiskUsage {
  const used = (s.blocks - s.bfree) * s.bsize;
  const freeBytes = s.bavail * s.bsize;
  const denom = used + freeBytes;
  return { totalBytes: s.blocks * s.bsize, freeBytes, usedPercent: denom > 0 ? (100 * used) / denom : 0 };
}

/**
 * Mount points from /proc/self/mounts (fstab(5) format: the second field,
 * with space, tab, newline and backslash written as octal escapes).
 */
export function parseMountPoints(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[1];
    if (field) out.add(field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))));
  }
  return out;
}

/**
 * Usage of the filesystem mounted at `mount`. Refuses a path that is not a
 * mount point (WARD_TELEMETRY_NOT_A_MOUNT): statfs on it would silently
 * report the parent filesystem, so a data partition that failed to mount
 * would look healthy while the agent fills the root filesystem.
 * `mountPoints` is the parsed /proc/self/mounts; omit it to skip the check.
 */
export async function readDiskUsage(mount: string, root = '/', mountPoints?: ReadonlySet<string>): Promise<DiskUsage> {
  if (mountPoints && !mountPoints.has(mount)) {
    throw new WardError(ErrorCodes.TELEMETRY_NOT_A_MOUNT, `${mount} is not a mount point (not in /proc/self/mounts)`, { details: { mount } });
  }
  const path = join(root, mount);
  try {
    return diskUsageFromStatfs(await statfs(path));
  } catch (err) {
    throw sourceError(`statfs ${path}`, err);
  }
}

export async function readMountPoints(root = '/'): Promise<Set<string>> {
  return parseMountPoints(await readText(join(root, 'proc/self/mounts')));
}

// ---------------------------------------------------------------------------

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw sourceError(`reading ${path}`, err);
  }
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

async function listOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return [];
  }
}

function sourceError(what: string, cause: unknown): WardError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  // ENOENT and EACCES are facts of this system (no such file, hidepid); anything else may pass.
  const retryable = code !== 'ENOENT' && code !== 'EACCES';
  return new WardError(ErrorCodes.TELEMETRY_SOURCE_FAILED, `${what} failed: ${(cause as Error)?.message ?? String(cause)}`, {
    cause,
    retryable,
    details: { errno: code },
  });
}
