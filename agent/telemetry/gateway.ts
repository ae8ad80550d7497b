/*
 * Gateway health metrics: the input to the controller's health alarms and
 * its dynamic trust decisions.
 *
 * Why most of it reads /proc and /sys itself instead of systeminformation:
 * on Linux, systeminformation 5.33.23 runs shell pipelines for most calls.
 * Measured on Linux 6.18 (x86_64 VM, Node 20), by wrapping child_process
 * before requiring it and by `strace -f -e trace=execve` (successful execve
 * per call; first call / a later call where they differ):
 *
 *   call                 spawns  what it runs
 *   currentLoad          6 / 3   `sh -c 'cat /proc/stat | grep cpu'` via execSync,
 *                                which also blocks the event loop; module-level
 *                                delta state shared by every caller in the process
 *   mem                  0       fs.readFile('/proc/meminfo') + os.totalmem()
 *   cpuTemperature       6       sh+cat thermal zones (execSync), a hwmon shell
 *                                loop, `sensors`, `/opt/vc/bin/vcgencmd`
 *   fsSize               4       `cat /proc/mounts` (execSync), `df -kPTx squashfs`
 *   networkStats         11 / 3  `ip route | grep default` (execSync), cat per
 *                                /sys/class/net statistic
 *   networkInterfaces    57      `ip a`, `ip route`, cat per interface, `nmcli`
 *                                (searched along PATH)
 *   time                 4       `date +%Z`, `date +%z`, `ls -l /etc/localtime`
 *   processes            78      `ps -axo …` and one shell with a `cat` per PID
 *                                (73 processes on that machine)
 *   networkConnections   3       `netstat -tunap | grep …` (or `ss`)
 *   osInfo               15      hostname, cat *-release, dmesg, ip link, …
 *
 * Requiring systeminformation spawns nothing. So only `mem` is used from it
 * (loaded on first use: the package is ~0.8 MB of JavaScript and takes
 * ~40 ms to require on that x86 VM; slower ARM cores not measured); CPU
 * load, temperature, disk, interface counters, uptime, process count and
 * listening sockets come from proc.ts. Nothing in the periodic path starts
 * a process: a fork+exec costs far more than the reading (below), execSync
 * stalls the data path, and an agent running as root should not run
 * whatever `sensors`, `nmcli` or `netstat` comes first on its PATH.
 *
 * Cost of one full collection (fast + slow group), same machine (2 vCPU,
 * loaded): these readers ~4-7 ms wall, ~5 ms CPU, no process, no blocking
 * of the event loop. ~2 ms of it is kernel time producing /proc/net/tcp and
 * tcp6 (~1 ms each: the kernel walks its whole TCP hash table, which is
 * sized by RAM), one reason listeners are in the slow group. The systeminformation calls for the same metrics
 * (currentLoad, mem, cpuTemperature, fsSize, networkStats('*'), time,
 * processes, networkConnections): ~1.1 s wall (0.4-1.6 s), ~0.2 s CPU in
 * Node plus ~0.7 s in ~100 child processes, event loop blocked up to
 * ~0.65 s by its execSync calls.
 */
import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import type { Logger } from '../log.js';
import { type DeadbandRule, ExceptionFilter, type ExceptionFilterRules } from './deadband.js';
import type { MetricListener, MetricPoint, MetricType } from './metric.js';
import {
  type CpuTimes,
  cpuLoadPercent,
  type DiskUsage,
  type ListeningSocket,
  listenerKey,
  type NetDevCounters,
  readCpuTemperature,
  readCpuTimes,
  readDiskUsage,
  readListeningSockets,
  readMountPoints,
  readNetDev,
  readProcessCount,
  readUptime,
} from './proc.js';

/** Where the readings come from: the Linux readers by default; tests and other platforms replace some. Each may throw; none may spawn. */
export interface GatewaySources {
  cpuTimes(): Promise<CpuTimes>;
  memory(): Promise<{ readonly total: number; readonly available: number }>;
  /** °C; throws (WARD_TELEMETRY_NO_SENSOR) when the board has no sensor. */
  cpuTemperature(): Promise<number>;
  netDev(): Promise<ReadonlyMap<string, NetDevCounters>>;
  uptime(): Promise<number>;
  processCount(): Promise<number>;
  listeningSockets(): Promise<readonly ListeningSocket[]>;
  mountPoints(): Promise<ReadonlySet<string>>;
  /** `mountPoints` undefined: could not be read, skip the is-it-mounted check. */
  diskUsage(mount: string, mountPoints: ReadonlySet<string> | undefined): Promise<DiskUsage>;
}

/** The Linux sources under `root` (memory always reads the real /proc/meminfo: systeminformation has the path built in). */
export function linuxSources(root = '/'): GatewaySources {
  let si: Promise<typeof import('systeminformation')> | undefined;
  return {
    cpuTimes: () => readCpuTimes(root),
    async memory() {
      si ??= import('systeminformation');
      const m = await (await si).mem();
      // systeminformation falls back to os.freemem() silently when /proc/meminfo is unreadable; a nonsense pair is still caught here.
      if (!(m.total > 0) || !(m.available >= 0) || m.available > m.total) {
        throw new WardError(ErrorCodes.TELEMETRY_SOURCE_FAILED, `memory figures make no sense (total ${m.total}, available ${m.available})`, {
          retryable: true,
        });
      }
      return { total: m.total, available: m.available };
    },
    cpuTemperature: () => readCpuTemperature(root),
    netDev: () => readNetDev(root),
    uptime: () => readUptime(root),
    processCount: () => readProcessCount(root),
    listeningSockets: () => readListeningSockets(root),
    mountPoints: () => readMountPoints(root),
    diskUsage: (mount, mountPoints) => readDiskUsage(mount, root, mountPoints),
  };
}

export const GatewayMetricNames = {
  cpuLoad: 'Gateway/CPU/Load',
  cpuTemperature: 'Gateway/CPU/Temperature',
  memoryTotal: 'Gateway/Memory/Total',
  memoryAvailable: 'Gateway/Memory/Available',
  memoryUsedPercent: 'Gateway/Memory/UsedPercent',
  uptime: 'Gateway/Uptime',
  processes: 'Gateway/Processes',
  listening: 'Gateway/Sockets/Listening',
  listeningSet: 'Gateway/Sockets/ListeningSet',
  diskUsedPercent: (mount: string) => `Gateway/Disk/${mountMetricFolder(mount)}/UsedPercent`,
  diskFreeBytes: (mount: string) => `Gateway/Disk/${mountMetricFolder(mount)}/FreeBytes`,
  network: (iface: string, counter: NetCounterName) => `Gateway/Network/${iface}/${counter}`,
} as const;

const NET_COUNTERS = ['RxBytes', 'TxBytes', 'RxErrors', 'TxErrors', 'RxDropped', 'TxDropped'] as const;
export type NetCounterName = (typeof NET_COUNTERS)[number];
const NET_FIELD: Readonly<Record<NetCounterName, keyof NetDevCounters>> = {
  RxBytes: 'rxBytes',
  TxBytes: 'txBytes',
  RxErrors: 'rxErrors',
  TxErrors: 'txErrors',
  RxDropped: 'rxDropped',
  TxDropped: 'txDropped',
};

/**
 * '/' → 'root', '/data' → 'data', '/var/lib/ward' → 'var/lib/ward' (nested
 * Sparkplug folders). A mount '/root' would collide with '/', which the
 * constructor refuses.
 */
export function mountMetricFolder(mount: string): string {
  return mount === '/' ? 'root' : mount.replace(/^\/+/, '').replace(/\/+$/, '');
}

/**
 * Defaults sized for a cellular uplink: levels report on a change an alarm
 * would care about; counters (which rise every tick on a live link) report
 * per MiB; errors and drops on any change, as they are the signal; every
 * name at least every 5 minutes so a silent gateway is a dead one.
 */
export const DEFAULT_GATEWAY_DEADBANDS: ExceptionFilterRules = Object.freeze({
  default: { maxSilenceMs: 300_000 },
  byName: Object.freeze({
    'Gateway/CPU/Load': { absolute: 5, maxSilenceMs: 300_000 },
    'Gateway/CPU/Temperature': { absolute: 1, maxSilenceMs: 300_000 },
    'Gateway/Memory/Available': { percent: 5, maxSilenceMs: 300_000 },
    'Gateway/Memory/UsedPercent': { absolute: 2, maxSilenceMs: 300_000 },
    'Gateway/Uptime': { absolute: 600, maxSilenceMs: 300_000 },
    'Gateway/Processes': { absolute: 5, maxSilenceMs: 300_000 },
    'Gateway/Disk/*/UsedPercent': { absolute: 0.5, maxSilenceMs: 300_000 },
    'Gateway/Disk/*/FreeBytes': { percent: 1, maxSilenceMs: 300_000 },
    'Gateway/Network/*/RxBytes': { absolute: 1_048_576, maxSilenceMs: 300_000 },
    'Gateway/Network/*/TxBytes': { absolute: 1_048_576, maxSilenceMs: 300_000 },
  }),
});

/** Deadbands as the agent config gives them (seconds), over the built-in ones: given names and patterns first. */
export function gatewayDeadbands(
  overrides: Readonly<Record<string, { absolute?: number | undefined; percent?: number | undefined; maxSilenceSeconds?: number | undefined }>>,
): ExceptionFilterRules {
  const byName: Record<string, DeadbandRule> = {};
  for (const [name, r] of Object.entries(overrides)) {
    byName[name] = {
      ...(r.absolute !== undefined ? { absolute: r.absolute } : {}),
      ...(r.percent !== undefined ? { percent: r.percent } : {}),
      ...(r.maxSilenceSeconds !== undefined ? { maxSilenceMs: r.maxSilenceSeconds * 1000 } : {}),
    };
  }
  for (const [name, rule] of Object.entries(DEFAULT_GATEWAY_DEADBANDS.byName ?? {})) if (!(name in byName)) byName[name] = rule;
  return { default: DEFAULT_GATEWAY_DEADBANDS.default, byName };
}

export interface GatewayMetricsOptions {
  readonly clock: Clock;
  readonly audit: AuditSink;
  readonly log: Pick<Logger, 'info' | 'warn'>;
  /** Gets what passed the deadbands at each collection; never called with an empty list. Its errors are logged, not thrown. */
  readonly onPoints: MetricListener;
  /** CPU, temperature, memory, network, uptime, processes. Default 10 s. */
  readonly intervalMs?: number;
  /** Listening sockets and disks: they change rarely and a listing grows with the connection table. Default 60 s. */
  readonly slowIntervalMs?: number;
  /** Absolute mount points to report. Default ['/']. */
  readonly mounts?: readonly string[];
  /** Interfaces to report. Default: every interface in /proc/net/dev but lo. */
  readonly interfaces?: readonly string[];
  readonly deadband?: ExceptionFilterRules;
  /** A read that takes longer reads as bad (a statfs on a dead NFS or a failing SD card can block for minutes). Default 5 s. */
  readonly sourceTimeoutMs?: number;
  readonly sources?: Partial<GatewaySources>;
  /** Root for the default Linux sources (fixtures in tests). Default '/'. */
  readonly root?: string;
}

type Outcome<T> = { readonly ok: true; readonly value: T; readonly at: number } | { readonly ok: false; readonly err: unknown; readonly at: number };

interface Readings {
  readonly cpu: Outcome<CpuTimes>;
  readonly memory: Outcome<{ readonly total: number; readonly available: number }>;
  readonly temperature: Outcome<number>;
  readonly net: Outcome<ReadonlyMap<string, NetDevCounters>>;
  readonly uptime: Outcome<number>;
  readonly processes: Outcome<number>;
  readonly slow:
    | {
        readonly listeners: Outcome<readonly ListeningSocket[]>;
        readonly mountPoints: Outcome<ReadonlySet<string>>;
        readonly disks: readonly { readonly mount: string; readonly usage: Outcome<DiskUsage> }[];
      }
    | undefined;
}

/**
 * Collects gateway health on an interval and hands the changed points to
 * `onPoints`; records an audit event when a listening socket appears or
 * disappears after the first scan (a new listener on an industrial gateway
 * is a security signal: a debug server, a backdoor, a misdeployed service).
 *
 * Contracts: one collection runs at a time (a tick that finds one running
 * is skipped, `collectNow` waits its turn); after `stop()` nothing is
 * emitted or audited by a collection that was in flight. A failing source
 * makes its metrics null with quality 'bad' and logs one warning until it
 * recovers; the other sources are unaffected. A read that never returns
 * (hung statfs) is not started again until it does, so it holds at most one
 * libuv thread. The listener baseline survives stop/start: what opened
 * while stopped is reported at the next scan.
 */
export class GatewayMetrics {
  readonly #o: GatewayMetricsOptions;
  readonly #sources: GatewaySources;
  readonly #intervalMs: number;
  readonly #slowIntervalMs: number;
  readonly #timeoutMs: number;
  readonly #mounts: readonly string[];
  readonly #filter: ExceptionFilter;
  readonly #latest = new Map<string, MetricPoint>();
  /** Interfaces reported so far: one that vanishes (USB modem unplugged) reads as bad rather than silently frozen. */
  readonly #ifaces = new Set<string>();
  readonly #failing = new Set<string>();
  readonly #inflight = new Set<string>();
  #prevCpu: CpuTimes | undefined;
  #listeners: Map<string, ListeningSocket> | undefined;
  #lastSlowAt: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  /** Bumped by stop(): a collection that started under an older generation discards its results. */
  #generation = 0;

  constructor(options: GatewayMetricsOptions) {
    this.#o = options;
    this.#sources = { ...linuxSources(options.root ?? '/'), ...options.sources };
    this.#intervalMs = positive('intervalMs', options.intervalMs ?? 10_000);
    this.#slowIntervalMs = positive('slowIntervalMs', options.slowIntervalMs ?? 60_000);
    this.#timeoutMs = positive('sourceTimeoutMs', options.sourceTimeoutMs ?? 5_000);
    this.#mounts = checkMounts(options.mounts ?? ['/']);
    this.#filter = new ExceptionFilter(options.deadband ?? DEFAULT_GATEWAY_DEADBANDS);
  }

  /** Collects now, then every intervalMs. Idempotent. */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
    this.#timer.unref();
    this.#tick();
  }

  /** Stops the timer; resolves once a collection in flight has settled (its results discarded). Idempotent. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#generation++;
    await this.#running?.catch(() => undefined);
  }

  /** One full collection (both groups), emitted like a tick; resolves with every point it read, before the deadbands. */
  async collectNow(): Promise<MetricPoint[]> {
    while (this.#running) await this.#running.catch(() => undefined);
    const run = this.#collect(true);
    // The caller handles run's rejection; the copy kept for serialising must not be an unhandled one.
    const running: Promise<unknown> = run
      .catch(() => undefined)
      .finally(() => {
        if (this.#running === running) this.#running = undefined;
      });
    this.#running = running;
    return run;
  }

  /** Every metric's current value, unfiltered, in a stable order: what a birth certificate carries. */
  latest(): MetricPoint[] {
    return [...this.#latest.values()];
  }

  /**
   * `latest()`, and marks it as sent so the data messages after the birth
   * carry only changes from it (a Sparkplug NBIRTH holds every metric with
   * its current value; the NDATA after it report by exception).
   */
  birth(): MetricPoint[] {
    const points = this.latest();
    this.#filter.prime(points, this.#o.clock.monotonic());
    return points;
  }

  #tick(): void {
    if (this.#running) return;
    const slowDue = this.#lastSlowAt === undefined || this.#o.clock.monotonic() - this.#lastSlowAt >= this.#slowIntervalMs;
    const run = this.#collect(slowDue).catch((err: unknown) => {
      // #collect handles source errors; reaching here is a bug in this class, which must not take the agent down.
      this.#o.log.warn({ err: describeError(err) }, 'gateway metrics collection failed');
    });
    const running: Promise<unknown> = run.finally(() => {
      if (this.#running === running) this.#running = undefined;
    });
    this.#running = running;
  }

  async #collect(slow: boolean): Promise<MetricPoint[]> {
    const generation = this.#generation;
    if (slow) this.#lastSlowAt = this.#o.clock.monotonic();
    const s = this.#sources;
    const [cpu, memory, temperature, net, uptime, processes, slowReadings] = await Promise.all([
      this.#read('cpu', () => s.cpuTimes()),
      this.#read('memory', () => s.memory()),
      this.#read('temperature', () => s.cpuTemperature()),
      this.#read('network', () => s.netDev()),
      this.#read('uptime', () => s.uptime()),
      this.#read('processes', () => s.processCount()),
      slow ? this.#readSlow() : undefined,
    ]);
    const readings: Readings = { cpu, memory, temperature, net, uptime, processes, slow: slowReadings };
    const points = this.#toPoints(readings);
    if (generation !== this.#generation) return points;
    this.#commit(readings, points);
    return points;
  }

  async #readSlow(): Promise<NonNullable<Readings['slow']>> {
    const s = this.#sources;
    const [listeners, mountPoints] = await Promise.all([this.#read('listeners', () => s.listeningSockets()), this.#read('mounts', () => s.mountPoints())]);
    const known = mountPoints.ok ? mountPoints.value : undefined;
    const disks = await Promise.all(this.#mounts.map(async (mount) => ({ mount, usage: await this.#read(`disk:${mount}`, () => s.diskUsage(mount, known)) })));
    return { listeners, mountPoints, disks };
  }

  /** One source read, bounded by the timeout, never two of the same source at once. */
  async #read<T>(key: string, fn: () => Promise<T>): Promise<Outcome<T>> {
    const clock = this.#o.clock;
    if (this.#inflight.has(key)) {
      return {
        ok: false,
        err: new WardError(ErrorCodes.TELEMETRY_SOURCE_TIMEOUT, `${key}: the previous read has still not returned`, { retryable: true }),
        at: clock.now(),
      };
    }
    this.#inflight.add(key);
    const work = Promise.resolve()
      .then(fn)
      .finally(() => this.#inflight.delete(key));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new WardError(ErrorCodes.TELEMETRY_SOURCE_TIMEOUT, `${key}: no answer within ${this.#timeoutMs} ms`, { retryable: true })),
        this.#timeoutMs,
      );
    });
    try {
      const value = await Promise.race([work, timeout]);
      return { ok: true, value, at: clock.now() };
    } catch (err) {
      return { ok: false, err, at: clock.now() };
    } finally {
      clearTimeout(timer);
      // A read that lost the race settles later; its rejection is already accounted for.
      work.catch(() => undefined);
    }
  }

  /** Readings → points. Reads instance state (previous CPU sample, interfaces seen) but changes none of it. */
  #toPoints(r: Readings): MetricPoint[] {
    const N = GatewayMetricNames;
    const out: MetricPoint[] = [];
    const add = (name: string, type: MetricType, o: Outcome<unknown>, value: number | string | undefined, unit?: string) => {
      out.push(point(name, type, o.ok && value !== undefined ? value : null, o.at, unit));
    };

    const load = r.cpu.ok ? this.#cpuLoad(r.cpu.value) : undefined;
    add(N.cpuLoad, 'Double', r.cpu, load === undefined ? undefined : round2(load), '%');
    add(N.cpuTemperature, 'Double', r.temperature, r.temperature.ok ? round2(r.temperature.value) : undefined, '°C');

    const mem = r.memory.ok ? r.memory.value : undefined;
    add(N.memoryTotal, 'UInt64', r.memory, mem?.total, 'B');
    add(N.memoryAvailable, 'UInt64', r.memory, mem?.available, 'B');
    add(N.memoryUsedPercent, 'Double', r.memory, mem ? round2((100 * (mem.total - mem.available)) / mem.total) : undefined, '%');

    for (const iface of this.#ifacesFor(r.net)) {
      const counters = r.net.ok ? r.net.value.get(iface) : undefined;
      const o: Outcome<unknown> = counters ? r.net : { ok: false, err: undefined, at: r.net.at };
      for (const c of NET_COUNTERS) add(N.network(iface, c), 'UInt64', o, counters?.[NET_FIELD[c]], c.endsWith('Bytes') ? 'B' : undefined);
    }

    add(N.uptime, 'UInt64', r.uptime, r.uptime.ok ? r.uptime.value : undefined, 's');
    add(N.processes, 'UInt32', r.processes, r.processes.ok ? r.processes.value : undefined);

    if (r.slow) {
      for (const { mount, usage } of r.slow.disks) {
        add(N.diskUsedPercent(mount), 'Double', usage, usage.ok ? round2(usage.value.usedPercent) : undefined, '%');
        add(N.diskFreeBytes(mount), 'UInt64', usage, usage.ok ? usage.value.freeBytes : undefined, 'B');
      }
      const set = r.slow.listeners.ok ? byKey(r.slow.listeners.value) : undefined;
      add(N.listening, 'UInt32', r.slow.listeners, set?.size);
      add(N.listeningSet, 'String', r.slow.listeners, set ? [...set.keys()].join(',') : undefined);
    }
    return out;
  }

  /** Busy % since the previous sample; the first sample of this instance gives the average since boot (there is no earlier one). */
  #cpuLoad(next: CpuTimes): number | undefined {
    if (!this.#prevCpu) return next.total > 0 ? (100 * (next.total - next.idle)) / next.total : undefined;
    const load = cpuLoadPercent(this.#prevCpu, next);
    if (load !== undefined) return load;
    // No jiffy elapsed (two collections back to back): the last value still stands.
    const last = this.#latest.get(GatewayMetricNames.cpuLoad)?.value;
    return typeof last === 'number' ? last : undefined;
  }

  #ifacesFor(net: Outcome<ReadonlyMap<string, NetDevCounters>>): string[] {
    const wanted = this.#o.interfaces;
    if (wanted) return [...wanted];
    const names = new Set(this.#ifaces);
    if (net.ok) for (const name of net.value.keys()) if (name !== 'lo') names.add(name);
    return [...names];
  }

  /** The side effects of a collection that is still current: state, warnings, audit events, emission. */
  #commit(r: Readings, points: readonly MetricPoint[]): void {
    const { clock, log } = this.#o;
    this.#outcome('cpu', r.cpu);
    if (r.cpu.ok) this.#prevCpu = r.cpu.value;
    this.#outcome('memory', r.memory);
    this.#outcome('temperature', r.temperature);
    this.#outcome('network', r.net);
    if (r.net.ok) {
      for (const iface of this.#ifacesFor(r.net)) {
        this.#ifaces.add(iface);
        const present = r.net.value.has(iface);
        this.#outcome(
          `network:${iface}`,
          present ? r.net : { ok: false, err: new WardError(ErrorCodes.TELEMETRY_SOURCE_FAILED, `interface ${iface} is not in /proc/net/dev`), at: r.net.at },
        );
      }
    }
    this.#outcome('uptime', r.uptime);
    this.#outcome('processes', r.processes);
    if (r.slow) {
      this.#outcome('listeners', r.slow.listeners);
      this.#outcome('mounts', r.slow.mountPoints);
      for (const d of r.slow.disks) this.#outcome(`disk:${d.mount}`, d.usage);
      if (r.slow.listeners.ok) this.#diffListeners(byKey(r.slow.listeners.value));
    }

    for (const p of points) this.#latest.set(p.name, p);
    const changed = this.#filter.filter(points, clock.monotonic());
    if (changed.length === 0) return;
    try {
      this.#o.onPoints(changed);
    } catch (err) {
      log.warn({ err: describeError(err), points: changed.length }, 'gateway metrics listener threw');
    }
  }

  /** One warning when a source starts failing, one info line when it recovers: a missing sensor must not log every 10 s. */
  #outcome(key: string, o: Outcome<unknown>): void {
    const { log } = this.#o;
    if (o.ok) {
      if (this.#failing.delete(key)) log.info({ source: key }, 'gateway metric source recovered');
      return;
    }
    if (this.#failing.has(key)) return;
    this.#failing.add(key);
    const code = o.err instanceof WardError ? o.err.code : undefined;
    log.warn({ source: key, code, err: describeError(o.err) }, 'gateway metric source failed; its metrics read as bad until it recovers');
  }

  /** The first successful scan is the baseline; a failed scan keeps the old one, so a read error is not reported as every socket closing. */
  #diffListeners(now: Map<string, ListeningSocket>): void {
    const before = this.#listeners;
    this.#listeners = now;
    if (!before) return;
    const record = (action: string, key: string, s: ListeningSocket) =>
      this.#o.audit.record({
        category: 'control-system',
        actor: 'ward-agent',
        action,
        target: key,
        outcome: 'success',
        details: { proto: s.proto, address: s.address, port: s.port },
      });
    for (const [key, s] of now) if (!before.has(key)) record('telemetry.new-listener', key, s);
    for (const [key, s] of before) if (!now.has(key)) record('telemetry.listener-closed', key, s);
  }
}

/** Listening sockets by key, sorted (proto, address, port): several sockets on one address and port (SO_REUSEPORT, per-CPU workers) are one listener. */
function byKey(list: readonly ListeningSocket[]): Map<string, ListeningSocket> {
  const sorted = [...list].sort((a, b) => cmp(a.proto, b.proto) || cmp(a.address, b.address) || a.port - b.port);
  const out = new Map<string, ListeningSocket>();
  for (const s of sorted) {
    const key = listenerKey(s);
    if (!out.has(key)) out.set(key, s);
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function point(name: string, type: MetricType, value: number | string | null, timestamp: number, unit: string | undefined): MetricPoint {
  return {
    name,
    type,
    value,
    timestamp,
    ...(value === null ? { quality: 'bad' as const } : {}),
    ...(unit === undefined ? {} : { unit }),
  };
}

function round2(x: number): number {
  // Beyond two decimals it is jiffy noise, and shorter numbers make shorter payloads.
  return Math.round(x * 100) / 100;
}

function positive(name: string, v: number): number {
  if (!Number.isFinite(v) || v <= 0) throw new TypeError(`GatewayMetrics ${name} must be a positive number of ms, got ${v}`);
  return v;
}

function checkMounts(mounts: readonly string[]): readonly string[] {
  const folders = new Map<string, string>();
  for (const m of mounts) {
    if (!m.startsWith('/') || m.split('/').some((seg) => seg === '.' || seg === '..'))
      throw new TypeError(`GatewayMetrics mount ${m} must be an absolute path`);
    const folder = mountMetricFolder(m);
    const other = folders.get(folder);
    if (other !== undefined) throw new TypeError(`GatewayMetrics mounts ${other} and ${m} would share the metric folder Gateway/Disk/${folder}`);
    folders.set(folder, m);
  }
  return Object.freeze([...mounts]);
}
