/**
 * The Modbus telemetry collector: polls configured points from Modbus/TCP devices with Ward's own client and turns
 * them into samples. Config validation, read planning and value decoding are pure and exported for tests; the
 * ModbusCollector class only schedules polls and moves data between them.
 */
import { z } from 'zod';
import type { PluginLogger } from '../api/index.js';
import { ModbusClient, ModbusError, ModbusErrorCodes } from './client.js';

export const POINT_TABLES = ['holding', 'input', 'coil', 'discrete'] as const;
export const POINT_TYPES = ['bool', 'int16', 'uint16', 'int32', 'uint32', 'float32'] as const;
export type PointTable = (typeof POINT_TABLES)[number];
export type PointType = (typeof POINT_TYPES)[number];

const isBitTable = (table: PointTable): boolean => table === 'coil' || table === 'discrete';
const defaultType = (table: PointTable): PointType => (isBitTable(table) ? 'bool' : 'uint16');
/** Table entries a point occupies: 32-bit types span two registers. */
export const widthOf = (type: PointType): 1 | 2 => (type === 'int32' || type === 'uint32' || type === 'float32' ? 2 : 1);

const pointSchema = z
  .strictObject({
    name: z.string().min(1),
    table: z.enum(POINT_TABLES),
    address: z.number().int().min(0).max(65535),
    /** Default: bool for coil/discrete, uint16 for holding/input. */
    type: z.enum(POINT_TYPES).optional(),
    /** Which register holds the high word of a 32-bit value; bytes within a register are always big-endian. */
    wordOrder: z.enum(['big', 'little']).default('big'),
    scale: z.number().finite().default(1),
    offset: z.number().finite().default(0),
    unit: z.string().min(1).optional(),
  })
  .superRefine((p, ctx) => {
    const type = p.type ?? defaultType(p.table);
    if (isBitTable(p.table) && type !== 'bool') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `point "${p.name}": a ${p.table} is a single bit, so its type must be bool, not ${type}` });
    }
    if (!isBitTable(p.table) && type === 'bool') {
      ctx.addIssue({
        code: 'custom',
        path: ['type'],
        message: `point "${p.name}": bool needs a coil or discrete table, not ${p.table} (a register is 16 bits)`,
      });
    }
    const width = widthOf(type);
    if (p.address + width > 0x10000) {
      ctx.addIssue({ code: 'custom', path: ['address'], message: `point "${p.name}": ${type} at ${p.address} spans ${width} registers and runs past 65535` });
    }
  })
  .transform((p) => ({ ...p, type: p.type ?? defaultType(p.table) }));

const deviceSchema = z
  .strictObject({
    name: z.string().min(1),
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(502),
    unitId: z.number().int().min(0).max(255).default(1),
    pollMs: z.number().int().min(100).max(3_600_000).default(1000),
    timeoutMs: z.number().int().min(10).max(60_000).default(2000),
    points: z.array(pointSchema).min(1),
  })
  .superRefine((d, ctx) => {
    const seen = new Set<string>();
    d.points.forEach((p, i) => {
      if (seen.has(p.name)) ctx.addIssue({ code: 'custom', path: ['points', i, 'name'], message: `point "${p.name}" appears twice in device "${d.name}"` });
      seen.add(p.name);
    });
  });

export const collectorConfigSchema = z
  .strictObject({
    devices: z.array(deviceSchema),
  })
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.devices.forEach((d, i) => {
      // Samples are keyed by device name, so two devices with one name would be indistinguishable downstream.
      if (seen.has(d.name)) ctx.addIssue({ code: 'custom', path: ['devices', i, 'name'], message: `device "${d.name}" appears twice` });
      seen.add(d.name);
    });
  });

export type CollectorConfig = z.output<typeof collectorConfigSchema>;
export type DeviceConfig = CollectorConfig['devices'][number];
export type PointConfig = DeviceConfig['points'][number];

// ---------------------------------------------------------------------------------------------------------------
// Read planning

export interface ReadLimits {
  /** Unwanted entries a block may read to join two points rather than send a second request. */
  maxGap: number;
  /** AP §6.3/§6.4: at most 125 registers per FC3/FC4. */
  maxRegisters: number;
  /** AP §6.1/§6.2: at most 2000 bits per FC1/FC2. */
  maxBits: number;
}

export const DEFAULT_READ_LIMITS: ReadLimits = { maxGap: 8, maxRegisters: 125, maxBits: 2000 };

type PlannablePoint = Pick<PointConfig, 'table' | 'address' | 'type'>;

export interface ReadBlock<P extends PlannablePoint = PointConfig> {
  table: PointTable;
  address: number;
  quantity: number;
  /** The points this block carries, each with its first entry's index into the block's data. */
  points: { point: P; offset: number }[];
}

/**
 * Groups points into as few reads as possible: per table, in address order, a point joins the current block when
 * it starts at most `maxGap` entries after the block's end and the block stays within the per-request maximum.
 * Overlapping points share entries. Blocks come out by table (holding, input, coil, discrete), then address.
 */
export function planReads<P extends PlannablePoint>(points: readonly P[], limits: Partial<ReadLimits> = {}): ReadBlock<P>[] {
  const { maxGap, maxRegisters, maxBits } = { ...DEFAULT_READ_LIMITS, ...limits };
  const blocks: ReadBlock<P>[] = [];
  for (const table of POINT_TABLES) {
    const max = isBitTable(table) ? maxBits : maxRegisters;
    const sorted = points.filter((p) => p.table === table).sort((a, b) => a.address - b.address || widthOf(b.type) - widthOf(a.type));
    let block: ReadBlock<P> | undefined;
    for (const point of sorted) {
      const end = point.address + widthOf(point.type);
      if (block) {
        const blockEnd = block.address + block.quantity;
        const newEnd = Math.max(blockEnd, end);
        if (point.address - blockEnd <= maxGap && newEnd - block.address <= max) {
          block.quantity = newEnd - block.address;
          block.points.push({ point, offset: point.address - block.address });
          continue;
        }
      }
      block = { table, address: point.address, quantity: end - point.address, points: [{ point, offset: 0 }] };
      blocks.push(block);
    }
  }
  return blocks;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding

// One scratch word pair for float32: decoding runs to completion synchronously, so sharing it is safe.
const scratch = new DataView(new ArrayBuffer(4));

/**
 * The engineering value of a point whose first entry is `raw[at]`: registers for holding/input points, bits
 * (0/1 or booleans) for coil/discrete ones. Numbers come out as raw × scale + offset; booleans as they are.
 */
export function decodePoint(point: Pick<PointConfig, 'type' | 'wordOrder' | 'scale' | 'offset'>, raw: ArrayLike<number | boolean>, at = 0): number | boolean {
  const first = Number(raw[at] ?? 0);
  if (point.type === 'bool') return first !== 0;
  let value: number;
  switch (point.type) {
    case 'uint16':
      value = first;
      break;
    case 'int16':
      value = (first << 16) >> 16;
      break;
    default: {
      const second = Number(raw[at + 1] ?? 0);
      const [high, low] = point.wordOrder === 'big' ? [first, second] : [second, first];
      scratch.setUint16(0, high);
      scratch.setUint16(2, low);
      value = point.type === 'uint32' ? scratch.getUint32(0) : point.type === 'int32' ? scratch.getInt32(0) : scratch.getFloat32(0);
    }
  }
  return value * point.scale + point.offset;
}

// ---------------------------------------------------------------------------------------------------------------
// Polling

export interface Sample {
  device: string;
  point: string;
  /** null when quality is 'bad'. */
  value: number | boolean | null;
  quality: 'good' | 'bad';
  /** ms since the epoch, when the value was read (or the read failed). */
  timestamp: number;
  unit?: string;
  error?: string;
}

export interface DeviceStatus {
  connected: boolean;
  /** The most recent failure, kept after recovery for diagnostics; null if the device never failed. */
  lastError: string | null;
  /** Completed polls. */
  polls: number;
  /** Polls in which at least one point came out 'bad'. */
  failures: number;
}

export interface CollectorOptions {
  /** Called synchronously for every sample; an exception it throws is logged and otherwise ignored. */
  onSample: (sample: Sample) => void;
  log?: Pick<PluginLogger, 'warn' | 'info' | 'debug'>;
  /** Wall clock for timestamps. Default Date.now. */
  now?: () => number;
  /** Reconnect delay after a connection-level failure: doubles from initialMs up to maxMs. Default 500 ms → 30 s. */
  backoff?: { initialMs?: number; maxMs?: number };
}

const silent = { warn: () => {}, info: () => {}, debug: () => {} };

/** 'degraded': some blocks failed but the connection holds; 'down': no connection, or it was dropped. */
type PollOutcome = 'ok' | 'degraded' | 'down' | 'aborted';

interface DeviceRun {
  device: DeviceConfig;
  blocks: ReadBlock[];
  client: ModbusClient | undefined;
  timer: NodeJS.Timeout | undefined;
  inflight: Promise<void> | undefined;
  /** Polls that ended 'down' in a row, for the backoff. */
  downStreak: number;
  /** Whether the last poll failed, so recovery is logged once. */
  failing: boolean;
  status: DeviceStatus;
}

/**
 * Polls every device on its own timer; one poll per device at a time, each starting pollMs after the previous one
 * started (or later, if a poll overran). A failure never escapes the timer: it becomes 'bad' samples, `status()`
 * and a log line.
 *
 * Two kinds of failure: an exception or malformed answer spoils only the block it answers, and the connection is
 * kept; a timeout or a lost connection spoils the rest of the poll, drops the connection and reconnects with
 * capped exponential backoff (never faster than pollMs).
 */
export class ModbusCollector {
  readonly #onSample: (sample: Sample) => void;
  readonly #log: Pick<PluginLogger, 'warn' | 'info' | 'debug'>;
  readonly #now: () => number;
  readonly #backoffInitial: number;
  readonly #backoffMax: number;
  readonly #runs: DeviceRun[];
  #abort: AbortController | undefined;

  /** `config` must come from collectorConfigSchema (defaults filled, checks passed). */
  constructor(config: CollectorConfig, options: CollectorOptions) {
    this.#onSample = options.onSample;
    this.#log = options.log ?? silent;
    this.#now = options.now ?? Date.now;
    this.#backoffInitial = options.backoff?.initialMs ?? 500;
    this.#backoffMax = options.backoff?.maxMs ?? 30_000;
    this.#runs = config.devices.map((device) => ({
      device,
      blocks: planReads(device.points),
      client: undefined,
      timer: undefined,
      inflight: undefined,
      downStreak: 0,
      failing: false,
      status: { connected: false, lastError: null, polls: 0, failures: 0 },
    }));
  }

  /** Starts polling every device now. Calling it while running does nothing. */
  start(): void {
    if (this.#abort) return;
    this.#abort = new AbortController();
    for (const run of this.#runs) this.#schedule(run, 0);
  }

  /** Stops the timers, closes the connections and waits for polls in flight; no sample is emitted after it resolves. */
  async stop(): Promise<void> {
    const abort = this.#abort;
    if (!abort) return;
    this.#abort = undefined;
    abort.abort();
    const closing: Promise<unknown>[] = [];
    for (const run of this.#runs) {
      clearTimeout(run.timer);
      run.timer = undefined;
      if (run.client) closing.push(run.client.close());
      run.client = undefined;
      run.status.connected = false;
      if (run.inflight) closing.push(run.inflight);
    }
    await Promise.allSettled(closing);
  }

  /** Per device name. */
  status(): Record<string, DeviceStatus> {
    return Object.fromEntries(this.#runs.map((r) => [r.device.name, { ...r.status }]));
  }

  #schedule(run: DeviceRun, delayMs: number): void {
    if (!this.#abort) return;
    run.timer = setTimeout(() => {
      run.timer = undefined;
      const signal = this.#abort?.signal;
      if (!signal) return;
      const started = performance.now();
      run.inflight = this.#poll(run, signal)
        .catch((err: unknown): PollOutcome => {
          // #poll catches what it expects; reaching here is a bug, which must still not kill the agent.
          this.#log.warn({ device: run.device.name, err }, 'modbus poll failed unexpectedly');
          return 'degraded';
        })
        .then((outcome) => {
          run.inflight = undefined;
          if (signal.aborted || outcome === 'aborted') return;
          run.status.polls++;
          if (outcome !== 'ok') run.status.failures++;
          else if (run.failing) this.#log.info({ device: run.device.name }, 'modbus device polled without error again');
          run.failing = outcome !== 'ok';
          run.downStreak = outcome === 'down' ? run.downStreak + 1 : 0;
          const remaining = Math.max(0, run.device.pollMs - (performance.now() - started));
          const backoff = run.downStreak === 0 ? 0 : Math.min(this.#backoffMax, this.#backoffInitial * 2 ** Math.min(run.downStreak - 1, 30));
          this.#schedule(run, Math.max(remaining, backoff));
        });
    }, delayMs);
    run.timer.unref();
  }

  /** One poll of one device: every point yields one sample, good or bad, unless the collector is stopping. */
  async #poll(run: DeviceRun, signal: AbortSignal): Promise<PollOutcome> {
    const { device } = run;
    if (run.client?.closed) this.#drop(run);
    let client = run.client;
    if (!client) {
      try {
        client = await ModbusClient.connect(device.host, device.port, { timeoutMs: device.timeoutMs, signal });
      } catch (err) {
        if (signal.aborted) return 'aborted';
        this.#fail(run, run.blocks, err);
        return 'down';
      }
      if (signal.aborted) {
        await client.close();
        return 'aborted';
      }
      run.client = client;
      run.status.connected = true;
      this.#log.info({ device: device.name, host: device.host, port: device.port }, 'modbus device connected');
    }
    let outcome: PollOutcome = 'ok';
    for (const [i, block] of run.blocks.entries()) {
      let data: ArrayLike<number | boolean>;
      try {
        data = await read(client, device.unitId, block);
      } catch (err) {
        if (signal.aborted) return 'aborted';
        const transport = client.closed || (err instanceof ModbusError && err.code === ModbusErrorCodes.TIMEOUT);
        if (!transport) {
          this.#fail(run, [block], err);
          outcome = 'degraded';
          continue;
        }
        // A device that stopped answering on this connection is given a fresh one; answers still in flight
        // on the old one would only be stale.
        this.#fail(run, run.blocks.slice(i), err);
        this.#drop(run);
        return 'down';
      }
      if (signal.aborted) return 'aborted';
      const timestamp = this.#now();
      for (const { point, offset } of block.points) {
        this.#emit(sampleOf(device.name, point, timestamp, decodePoint(point, data, offset), undefined));
      }
    }
    return outcome;
  }

  #drop(run: DeviceRun): void {
    if (run.client) void run.client.close();
    run.client = undefined;
    run.status.connected = false;
  }

  #fail(run: DeviceRun, blocks: readonly ReadBlock[], err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    // Logged when the error changes, not on every poll of a device that stays down.
    if (!run.failing || message !== run.status.lastError) this.#log.warn({ device: run.device.name, err: message }, 'modbus poll failed');
    run.status.lastError = message;
    const timestamp = this.#now();
    for (const block of blocks) {
      for (const { point } of block.points) this.#emit(sampleOf(run.device.name, point, timestamp, null, message));
    }
  }

  #emit(sample: Sample): void {
    if (!this.#abort) return;
    try {
      this.#onSample(sample);
    } catch (err) {
      this.#log.warn({ err, device: sample.device, point: sample.point }, 'onSample threw; sample dropped');
    }
  }
}

function read(client: ModbusClient, unitId: number, block: ReadBlock): Promise<ArrayLike<number | boolean>> {
  switch (block.table) {
    case 'holding':
      return client.readHoldingRegisters(unitId, block.address, block.quantity);
    case 'input':
      return client.readInputRegisters(unitId, block.address, block.quantity);
    case 'coil':
      return client.readCoils(unitId, block.address, block.quantity);
    case 'discrete':
      return client.readDiscreteInputs(unitId, block.address, block.quantity);
  }
}

function sampleOf(device: string, point: PointConfig, timestamp: number, value: number | boolean | null, error: string | undefined): Sample {
  const sample: Sample = { device, point: point.name, value, quality: error === undefined ? 'good' : 'bad', timestamp };
  if (point.unit !== undefined) sample.unit = point.unit;
  if (error !== undefined) sample.error = error;
  return sample;
}
