import { randomBytes } from 'node:crypto';
import { rename } from 'node:fs/promises';
import type { Level } from 'level';
import type { AuditSink } from '../core/audit.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import type { MetricPoint } from './metric.js';

/**
 * Store-and-forward for telemetry (issue 8): while the broker or the primary
 * host is away, the publisher appends here instead of sending, and replays
 * oldest first, marked historical, once it is born again.
 *
 * Bounded by bytes: past `maxBytes` the OLDEST batches are evicted (the
 * newest data is worth more to an operator coming back to a line), and every
 * evicted point is counted. The count and the time span of the loss are
 * handed out once through takeGap(), which the publisher turns into a gap
 * audit event and a `Ward/Telemetry/Dropped` metric, so a hole in a
 * historian's trend is always explained.
 *
 * Keys are `d:` + a 16-hex-digit counter, so LevelDB's key order is append
 * order; `m:` keys hold counters that survive restarts (the Sparkplug bdSeq
 * lives here too, see meta()). Writes are chained so that peek() sees every
 * append made before it was called. Not durable to the last write on power
 * loss (LevelDB without sync): telemetry is not the audit journal.
 *
 * Concurrency: one publisher appends and replays; append() never waits.
 */
export interface BufferedBatch {
  /** undefined: node metrics; otherwise the Sparkplug device. */
  readonly device?: string;
  readonly points: readonly MetricPoint[];
}

export interface BufferEntry {
  readonly key: string;
  /** null: the batch never reached the disk (its write failed); discard() it. */
  readonly batch: BufferedBatch | null;
}

export interface Gap {
  readonly points: number;
  readonly batches: number;
  /** Source timestamps of the oldest and newest evicted point. */
  readonly from: number;
  readonly to: number;
}

export interface TelemetryBufferOptions {
  readonly dir: string;
  readonly maxBytes: number;
  readonly audit: AuditSink;
  readonly log: { warn(o: object, m?: string): void; error(o: object, m?: string): void; info(o: object, m?: string): void };
}

interface IndexEntry {
  readonly key: string;
  readonly bytes: number;
  readonly points: number;
  readonly from: number;
  readonly to: number;
}

export class TelemetryBuffer {
  readonly #db: Level<string, string>;
  readonly #options: TelemetryBufferOptions;
  /** Oldest first; mirrors the `d:` keys so eviction and depth never scan the disk. */
  readonly #index: IndexEntry[] = [];
  #head = 0;
  #bytes = 0;
  #points = 0;
  #counter: bigint;
  #writes: Promise<void> = Promise.resolve();
  #dropped: number;
  #gap: { points: number; batches: number; from: number; to: number } | undefined;
  #evictingSince: number | undefined;
  #sending = new Set<string>();
  #evictedWhileSending: IndexEntry[] = [];
  #closed = false;
  /** The last buffered point of every metric, by device ('' for the node): births must declare them all. */
  readonly #known = new Map<string, Map<string, MetricPoint>>();

  private constructor(db: Level<string, string>, options: TelemetryBufferOptions, counter: bigint, dropped: number) {
    this.#db = db;
    this.#options = options;
    this.#counter = counter;
    this.#dropped = dropped;
  }

  static async open(options: TelemetryBufferOptions): Promise<TelemetryBuffer> {
    if (!(options.maxBytes >= 1024)) throw new TypeError('maxBytes must be at least 1024');
    const db = await openDb(options);
    let counter = 0n;
    const stored: { entry: IndexEntry; batch: BufferedBatch }[] = [];
    let unreadable = 0;
    for await (const [key, value] of db.iterator({ gt: 'd:', lt: 'd;' })) {
      counter = BigInt(`0x${key.slice(2)}`) + 1n;
      try {
        const batch = JSON.parse(value) as BufferedBatch;
        stored.push({ entry: indexEntry(key, value, batch), batch });
      } catch {
        unreadable++;
        await db.del(key);
      }
    }
    const dropped = Number((await db.get('m:dropped')) ?? 0) || 0;
    const buffer = new TelemetryBuffer(db, options, counter, dropped);
    for (const { entry, batch } of stored) {
      buffer.#push(entry);
      buffer.#remember(batch);
    }
    if (unreadable > 0) {
      options.log.error({ unreadable }, 'telemetry buffer: unreadable batches removed');
      recordCorrupt(options, { removedBatches: unreadable });
    }
    return buffer;
  }

  /** Batches waiting. */
  get depth(): number {
    return this.#index.length - this.#head;
  }

  get points(): number {
    return this.#points;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Points evicted since the buffer was first created (persisted). */
  get dropped(): number {
    return this.#dropped;
  }

  /** Queues a batch; never waits. Evicts the oldest batches when over the bound. */
  append(batch: BufferedBatch): void {
    if (this.#closed) throw new WardError(ErrorCodes.TELEMETRY_BUFFER_CLOSED, 'telemetry buffer is closed');
    if (batch.points.length === 0) return;
    const key = `d:${this.#counter.toString(16).padStart(16, '0')}`;
    this.#counter++;
    const value = JSON.stringify(batch.device === undefined ? { points: batch.points } : { device: batch.device, points: batch.points });
    const entry = indexEntry(key, value, batch);
    this.#push(entry);
    this.#remember(batch);
    this.#chain(() => this.#db.put(key, value));
    this.#evict();
  }

  /** The oldest `limit` batches, in append order, without removing them. */
  async peek(limit: number): Promise<BufferEntry[]> {
    await this.#writes;
    const out: BufferEntry[] = [];
    for (const entry of this.#index.slice(this.#head, this.#head + limit)) {
      const value = await this.#db.get(entry.key);
      // Missing: its write failed (a full disk). Handed out as null so the caller discards it, or it would
      // block the head of the buffer for ever.
      out.push({ key: entry.key, batch: value === undefined ? null : (JSON.parse(value) as BufferedBatch) });
    }
    return out;
  }

  /** The last buffered point of every metric, by device ('' is the node): what births must declare for a replay. */
  known(): ReadonlyMap<string, ReadonlyMap<string, MetricPoint>> {
    return this.#known;
  }

  /** Removes the oldest batches without delivering them, counted as dropped (lost writes, unsendable batches). */
  async discard(keys: readonly string[]): Promise<void> {
    const gone = new Set(keys);
    const lost: IndexEntry[] = [];
    while (this.#head < this.#index.length && gone.has((this.#index[this.#head] as IndexEntry).key)) lost.push(this.#shift());
    this.#compact();
    this.#lose(lost, keys);
    await this.#writes;
  }

  /**
   * The replay has handed these batches (the oldest) to the connection. Evicted while they are on their way, they
   * are not counted lost, unless the sending fails (release).
   */
  sending(keys: readonly string[]): void {
    this.#sending = new Set(keys);
    this.#evictedWhileSending = [];
  }

  /** The sending failed: batches evicted meanwhile are lost after all. */
  release(): void {
    const lost = this.#evictedWhileSending;
    this.#sending = new Set();
    this.#evictedWhileSending = [];
    if (lost.length > 0) this.#lose(lost, []);
  }

  /** Removes delivered batches (only ever the oldest ones, in order). */
  async remove(keys: readonly string[]): Promise<void> {
    this.#sending = new Set();
    this.#evictedWhileSending = [];
    const gone = new Set(keys);
    while (this.#head < this.#index.length && gone.has((this.#index[this.#head] as IndexEntry).key)) this.#shift();
    this.#compact();
    this.#chain(() => this.#db.batch(keys.map((key) => ({ type: 'del' as const, key }))));
    await this.#writes;
    if (this.depth === 0) {
      this.#evictingSince = undefined;
      // Nothing left to replay: births no longer need to declare what was buffered.
      this.#known.clear();
    }
  }

  /** The loss since the last call, if any (the publisher reports it once, on reconnect). */
  takeGap(): Gap | undefined {
    const gap = this.#gap;
    this.#gap = undefined;
    return gap;
  }

  /** A small persisted value (the Sparkplug bdSeq): read. */
  async meta(name: string): Promise<string | undefined> {
    await this.#writes;
    return this.#db.get(`m:${name}`);
  }

  /** …and written, durably before it is used (a bdSeq must never repeat after a restart). */
  async setMeta(name: string, value: string): Promise<void> {
    await this.#writes;
    // Not through #chain, which only logs: a bdSeq that was not stored must not be used.
    const write = this.#db.put(`m:${name}`, value, { sync: true });
    this.#writes = write.catch(() => undefined);
    await write;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#writes.catch(() => undefined);
    await this.#db.close();
  }

  #remember(batch: BufferedBatch): void {
    const key = batch.device ?? '';
    let metrics = this.#known.get(key);
    if (metrics === undefined) {
      metrics = new Map();
      this.#known.set(key, metrics);
    }
    for (const p of batch.points) metrics.set(p.name, p);
  }

  #push(entry: IndexEntry): void {
    this.#index.push(entry);
    this.#bytes += entry.bytes;
    this.#points += entry.points;
  }

  #shift(): IndexEntry {
    const entry = this.#index[this.#head] as IndexEntry;
    this.#head++;
    this.#bytes -= entry.bytes;
    this.#points -= entry.points;
    return entry;
  }

  #compact(): void {
    if (this.#head > 1024 && this.#head * 2 > this.#index.length) {
      this.#index.splice(0, this.#head);
      this.#head = 0;
    }
  }

  #evict(): void {
    if (this.#bytes <= this.#options.maxBytes) return;
    const evicted: IndexEntry[] = [];
    // Never the batch just appended: one oversized batch still gets through once.
    while (this.#bytes > this.#options.maxBytes && this.depth > 1) evicted.push(this.#shift());
    this.#compact();
    if (evicted.length === 0) return;
    const lost = evicted.filter((e) => !this.#sending.has(e.key));
    this.#evictedWhileSending.push(...evicted.filter((e) => this.#sending.has(e.key)));
    this.#lose(
      lost,
      evicted.map((e) => e.key),
    );
    if (lost.length > 0 && this.#evictingSince === undefined) {
      // Once per outage: the count and span go out with the gap event on reconnect.
      this.#evictingSince = (evicted[0] as IndexEntry).from;
      this.#options.log.warn({ maxBytes: this.#options.maxBytes }, 'telemetry buffer full: evicting the oldest data');
      this.#options.audit.record({
        category: 'control-system',
        actor: 'ward-agent',
        action: 'telemetry.buffer-full',
        outcome: 'failure',
        code: ErrorCodes.TELEMETRY_BUFFER_FULL,
        details: { maxBytes: this.#options.maxBytes, oldestKeptFrom: this.#index[this.#head]?.from ?? null },
      });
    }
  }

  /** Batches taken off the head without delivery: counted (persisted) into the loss and the gap, deleted. */
  #lose(lost: readonly IndexEntry[], keys: readonly string[]): void {
    const points = lost.reduce((n, e) => n + e.points, 0);
    if (points > 0) {
      this.#dropped += points;
      const from = Math.min(...lost.map((e) => e.from));
      const to = Math.max(...lost.map((e) => e.to));
      const gap = this.#gap ?? { points: 0, batches: 0, from, to };
      this.#gap = { points: gap.points + points, batches: gap.batches + lost.length, from: Math.min(gap.from, from), to: Math.max(gap.to, to) };
    }
    const dropped = String(this.#dropped);
    this.#chain(() => this.#db.batch([...keys.map((key) => ({ type: 'del' as const, key })), { type: 'put' as const, key: 'm:dropped', value: dropped }]));
  }

  #chain(op: () => Promise<unknown>): void {
    this.#writes = this.#writes.then(op).then(
      () => undefined,
      (err) => {
        this.#options.log.error({ err: describeError(err) }, 'telemetry buffer write failed');
      },
    );
  }
}

const INDEX_OVERHEAD_BYTES = 150;

function indexEntry(key: string, value: string, batch: BufferedBatch): IndexEntry {
  let from = Number.POSITIVE_INFINITY;
  let to = Number.NEGATIVE_INFINITY;
  for (const p of batch.points) {
    from = Math.min(from, p.timestamp);
    to = Math.max(to, p.timestamp);
  }
  // The index entry in memory costs about as much again as a small batch: counted, so maxBytes bounds both.
  return { key, bytes: INDEX_OVERHEAD_BYTES + key.length + Buffer.byteLength(value), points: batch.points.length, from, to };
}

async function openDb(options: TelemetryBufferOptions): Promise<Level<string, string>> {
  // Loaded on first use: in the single binary this extracts and dlopens the LevelDB addon.
  const { Level } = await import('level');
  const attempt = async () => {
    const db = new Level<string, string>(options.dir, { valueEncoding: 'utf8' });
    await db.open();
    return db;
  };
  try {
    return await attempt();
  } catch (cause) {
    const message = String((cause as { cause?: { message?: string } }).cause?.message ?? (cause as Error).message ?? '');
    if (message.includes('lock')) {
      throw new WardError(ErrorCodes.TELEMETRY_BUFFER_BUSY, `the telemetry buffer ${options.dir} is in use by another process`, {
        cause,
        retryable: true,
        details: { dir: options.dir },
      });
    }
    // Buffered telemetry is replaceable; a gateway that stops publishing because of it is not. Keep the files for
    // a post-mortem and start empty, saying so.
    const aside = `${options.dir}.aside-${Date.now()}-${randomBytes(3).toString('hex')}`;
    await rename(options.dir, aside).catch(() => undefined);
    options.log.error({ dir: options.dir, movedTo: aside, err: message }, 'telemetry buffer unreadable: moved aside, starting empty');
    recordCorrupt(options, { movedTo: aside, message: message.slice(0, 300) });
    return attempt();
  }
}

function recordCorrupt(options: TelemetryBufferOptions, details: Record<string, unknown>): void {
  options.audit.record({
    category: 'request-error',
    actor: 'ward-agent',
    action: 'telemetry.buffer-corrupt',
    outcome: 'failure',
    code: ErrorCodes.TELEMETRY_BUFFER_CORRUPT,
    details,
  });
}
