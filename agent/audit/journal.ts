import { randomBytes } from 'node:crypto';
import { readFile, rename } from 'node:fs/promises';
import type { Level } from 'level';
import type { AuditEventInput, AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import {
  type AuditEvent,
  GENESIS_PREV,
  JournalActions,
  MAX_EVENT_BYTES,
  makeEvent,
  newChainId,
  type ParsedEvent,
  parseEventText,
  type SignedCheckpoint,
  type SignedReceipt,
  sanitizeInput,
  seqKey,
  signCheckpoint,
  signedCheckpoint,
  statementSignatureValid,
} from '../shared/audit/event.js';
import type { SigningKey } from '../shared/keys.js';

/**
 * The agent's audit journal (DESIGN.md §5): append-only in LevelDB, one
 * chain per database.
 *
 * Durability: appends are group-committed. Every event waiting when a write
 * starts goes into one LevelDB batch written with `sync: true` (fsync), and
 * each `append()` resolves only after the batch holding it is on disk, so the
 * cost of an fsync is shared by everything that arrived meanwhile. LevelDB's
 * write-ahead log makes a batch all-or-nothing: events, checkpoint and the
 * head record move together, and a write torn by power loss is dropped whole
 * on recovery.
 *
 * What LevelDB cannot promise (a damaged table file, a corrupted log record
 * its recovery skips) the journal checks itself on open: it re-walks every
 * un-receipted event and checkpoint. Damage is never accepted silently: the
 * damaged records move to a quarantine prefix (kept for forensics), and a
 * signed `audit.gap` event declares exactly which sequence numbers were lost
 * and why. Sequence numbers are never reused, so nothing the controller may
 * already hold is contradicted by a new event with the same number.
 *
 * Quota: events beyond `maxBytes` are not stored one by one; they are
 * counted per category/action (the count is durable like an event) and
 * written as one signed `audit.overflow` event once receipts free space. Un-
 * receipted events are never evicted. An audit failure never blocks the
 * caller: `record()` returns at once, and a failing disk only delays events
 * in memory (bounded) while enforcement carries on.
 */

export interface JournalLog {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface JournalOptions {
  readonly dir: string;
  readonly key: SigningKey;
  readonly clock: Clock;
  readonly log: JournalLog;
  /** Kernel boot id (/proc/sys/kernel/random/boot_id); read here when absent. */
  readonly bootId?: string;
  readonly agentVersion?: string;
  /** Bytes of un-receipted events and checkpoints the journal may hold. */
  readonly maxBytes?: number;
  readonly warnFraction?: number;
  /** A checkpoint is signed at most this often while events keep coming… */
  readonly checkpointIntervalMs?: number;
  /** …or sooner once this many bytes or events are unsealed (bounds a shipped batch). */
  readonly checkpointBytes?: number;
  readonly checkpointEvents?: number;
  /** Events held in memory while the disk refuses writes; beyond it they are only counted. */
  readonly maxPendingEvents?: number;
  /** Receipts kept after pruning (the proof of what the controller acknowledged). */
  readonly keepReceipts?: number;
}

export interface JournalHead {
  readonly chain: string;
  readonly seq: number;
  readonly head: string;
  readonly session: number;
}

export interface JournalStatus extends JournalHead {
  readonly kid: string;
  /** Lowest event still held (receipted events before it are pruned). */
  readonly firstSeq: number;
  /** Highest seq covered by a signed checkpoint. */
  readonly sealedSeq: number;
  readonly receipted: { readonly seq: number; readonly head: string } | null;
  readonly bytes: number;
  readonly maxBytes: number;
  readonly level: 'ok' | 'warning' | 'full';
  /** Events counted but not stored individually since the journal last had room. */
  readonly overflowCount: number;
  readonly pending: number;
  readonly writeFailing: boolean;
  /** Damage found and quarantined on open, if any. */
  readonly repairs: readonly RepairNote[];
}

export interface RepairNote {
  readonly from: number;
  readonly to: number;
  readonly reason: string;
}

interface Meta {
  v: 1;
  chain: string;
  kid: string;
  seq: number;
  head: string;
  session: number;
  firstSeq: number;
  sealedSeq: number;
  sealedHead: string;
  lastCheckpointAt: number;
  receipted: { seq: number; head: string } | null;
  bytes: number;
  quotaWarned: boolean;
  /** Monotonic ms of the last event, so a declared gap sits in its session's time line. */
  lastMono: number;
}

interface OverflowAggregate {
  count: number;
  firstAt: number;
  lastAt: number;
  byAction: Record<string, number>;
}

interface Pending {
  readonly input: AuditEventInput;
  readonly system: boolean;
  readonly resolve: (event: AuditEvent | undefined) => void;
  readonly reject: (err: unknown) => void;
}

type Op = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

const META_KEY = 'm:head';
const OVERFLOW_KEY = 'm:overflow';
const EVENT_PREFIX = 'e:';
const CHECKPOINT_PREFIX = 'c:';
const RECEIPT_PREFIX = 'r:';
const QUARANTINE_PREFIX = 'q:';
/** Room above the quota for the journal's own events (session start, gap, overflow), which must never be refused. */
const SYSTEM_RESERVE = 64 * 1024;
const MAX_GROUP = 2000;

export class AuditJournal implements AuditSink {
  readonly #db: Level<string, string>;
  readonly #opts: Required<Omit<JournalOptions, 'bootId' | 'agentVersion'>> & { agentVersion: string | undefined };
  readonly #boot: string;
  readonly #monoOrigin: number;
  #meta: Meta;
  #overflow: OverflowAggregate | undefined;
  #pending: Pending[] = [];
  #writing = false;
  #closed = false;
  #forceCheckpoint = false;
  #unsealedBytes = 0;
  #writeFailing = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelay = 250;
  #checkpointTimer: NodeJS.Timeout | undefined;
  #drained: Promise<void> = Promise.resolve();
  /** Serialises every mutation of the database and of #meta. */
  #mutex: Promise<unknown> = Promise.resolve();
  #repairs: RepairNote[] = [];
  readonly #listeners = new Set<(kind: 'event' | 'checkpoint') => void>();
  #recordFailures = 0;

  private constructor(db: Level<string, string>, opts: JournalOptions, boot: string, meta: Meta) {
    this.#db = db;
    this.#opts = {
      dir: opts.dir,
      key: opts.key,
      clock: opts.clock,
      log: opts.log,
      agentVersion: opts.agentVersion,
      maxBytes: opts.maxBytes ?? 64 * 1024 * 1024,
      warnFraction: opts.warnFraction ?? 0.8,
      checkpointIntervalMs: opts.checkpointIntervalMs ?? 1000,
      checkpointBytes: opts.checkpointBytes ?? 192 * 1024,
      checkpointEvents: opts.checkpointEvents ?? 1000,
      maxPendingEvents: opts.maxPendingEvents ?? 10_000,
      keepReceipts: opts.keepReceipts ?? 100,
    };
    this.#boot = boot;
    this.#monoOrigin = opts.clock.monotonic();
    this.#meta = meta;
  }

  /**
   * Opens (or creates) the journal, checks what is on disk, quarantines and
   * declares any damage, and starts a new session. Resolves once the session
   * start is durable. WARD_AUDIT_JOURNAL_BUSY when another process holds it.
   */
  static async open(options: JournalOptions): Promise<AuditJournal> {
    const boot = options.bootId ?? (await readBootId());
    let { db, reopened } = await openDatabase(options.dir, options.log);
    try {
      let stored: string | undefined = await db.get(META_KEY);
      const storedKid = stored === undefined ? undefined : parseMeta(stored).kid;
      if (storedKid !== undefined && storedKid !== options.key.kid) {
        // A new device key (identity reset) cannot sign the old chain: keep it aside, start a new one that says why.
        await db.close();
        const aside = await moveAside(options.dir);
        options.log.warn(
          { movedTo: aside, previousKid: storedKid, kid: options.key.kid },
          'device key changed: previous audit journal kept aside, a new chain starts',
        );
        ({ db } = await openDatabase(options.dir, options.log));
        reopened = `device key changed from ${storedKid} to ${options.key.kid}; previous journal kept at ${aside}`;
        stored = undefined;
      }
      let meta: Meta;
      const repairs: RepairNote[] = [];
      let chainStartReason: string | undefined;
      if (stored === undefined) {
        let anyEvent: string | undefined;
        for (const prefix of [EVENT_PREFIX, CHECKPOINT_PREFIX, RECEIPT_PREFIX, OVERFLOW_KEY]) anyEvent ??= await firstKey(db, prefix);
        chainStartReason = reopened ?? 'new journal';
        if (anyEvent !== undefined) {
          // Without its head record the old chain cannot be continued safely: keep it aside and say so.
          const moved = await quarantineFrom(db, 0, true);
          chainStartReason = `journal head record missing: the previous chain's records are quarantined${moved.to >= moved.from ? ` (events ${moved.from}..${moved.to})` : ''}`;
          options.log.error({ from: moved.from, to: moved.to }, 'audit journal head record missing: previous records quarantined, a new chain starts');
        }
        meta = freshMeta(options.key.kid);
      } else {
        meta = parseMeta(stored);
        const damage = await checkStoredChain(db, meta, options.key);
        if (damage) {
          const moved = await quarantineFrom(db, damage.from);
          const to = Math.max(moved.to, meta.seq);
          repairs.push({ from: damage.from, to, reason: damage.reason });
          // Continue from the last good event; the gap event that follows declares damage.from..to as lost.
          const sealed = await lastCheckpointBefore(db, damage.from);
          meta = {
            ...meta,
            seq: to,
            head: damage.lastGoodHash,
            sealedSeq: sealed?.payload.seq ?? meta.receipted?.seq ?? 0,
            sealedHead: sealed?.payload.head ?? meta.receipted?.head ?? GENESIS_PREV,
            bytes: await storedBytes(db),
          };
        }
      }
      const journal = new AuditJournal(db, options, boot, meta);
      journal.#repairs = repairs;
      journal.#overflow = await readOverflow(db);
      await journal.#startSession(chainStartReason, repairs);
      journal.#checkpointTimer = setInterval(() => journal.#tick(), journal.#opts.checkpointIntervalMs);
      journal.#checkpointTimer.unref();
      return journal;
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
  }

  get kid(): string {
    return this.#meta.kid;
  }

  head(): JournalHead {
    const { chain, seq, head, session } = this.#meta;
    return { chain, seq, head, session };
  }

  status(): JournalStatus {
    const m = this.#meta;
    const level =
      this.#overflow !== undefined || m.bytes >= this.#opts.maxBytes ? 'full' : m.bytes >= this.#opts.maxBytes * this.#opts.warnFraction ? 'warning' : 'ok';
    return {
      chain: m.chain,
      seq: m.seq,
      head: m.head,
      session: m.session,
      kid: m.kid,
      firstSeq: m.firstSeq,
      sealedSeq: m.sealedSeq,
      receipted: m.receipted,
      bytes: m.bytes,
      maxBytes: this.#opts.maxBytes,
      level,
      overflowCount: this.#overflow?.count ?? 0,
      pending: this.#pending.length,
      writeFailing: this.#writeFailing,
      repairs: [...this.#repairs],
    };
  }

  /** Called after each durable write: the shipper listens to learn there is something new. */
  onWrite(listener: (kind: 'event' | 'checkpoint') => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** AuditSink: never throws, never waits. */
  record(input: AuditEventInput): void {
    this.append(input).catch((err) => {
      this.#recordFailures++;
      if (this.#recordFailures <= 10 || this.#recordFailures % 1000 === 0) {
        this.#opts.log.error({ err: describeError(err), action: input.action, failures: this.#recordFailures }, 'audit event not journaled');
      }
    });
  }

  /**
   * Appends one event; resolves with it once it is on disk. Resolves with
   * undefined when the journal is full and the event was counted into the
   * overflow aggregate instead (durably, like an event).
   */
  append(input: AuditEventInput): Promise<AuditEvent | undefined> {
    if (this.#closed) return Promise.reject(new WardError(ErrorCodes.AUDIT_JOURNAL_CLOSED, 'the audit journal is closed'));
    let clean: AuditEventInput;
    try {
      clean = sanitizeInput(input);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#enqueue(clean, false);
  }

  /** Signs a checkpoint over the current head if anything is unsealed; resolves when it is durable. */
  async seal(): Promise<SignedCheckpoint | undefined> {
    if (this.#meta.seq > this.#meta.sealedSeq || this.#pending.length > 0) {
      this.#forceCheckpoint = true;
      this.#kick();
      await this.#idle();
    }
    if (this.#meta.sealedSeq === 0) return undefined;
    return this.#readCheckpoint(this.#meta.sealedSeq);
  }

  /** Events in seq order from `fromSeq` (inclusive), at most `limit`. */
  async readEvents(fromSeq: number, limit = Number.MAX_SAFE_INTEGER): Promise<ParsedEvent[]> {
    const out: ParsedEvent[] = [];
    for await (const [, text] of this.#db.iterator({ gte: eventKey(fromSeq), lt: `${EVENT_PREFIX}~`, limit })) out.push(parseEventText(text));
    return out;
  }

  /** The last `n` events, oldest first. */
  async tail(n: number): Promise<ParsedEvent[]> {
    const out: ParsedEvent[] = [];
    for await (const [, text] of this.#db.iterator({ gte: EVENT_PREFIX, lt: `${EVENT_PREFIX}~`, reverse: true, limit: n })) out.push(parseEventText(text));
    return out.reverse();
  }

  async *iterateEvents(fromSeq = 0): AsyncGenerator<string> {
    for await (const [, text] of this.#db.iterator({ gte: eventKey(fromSeq), lt: `${EVENT_PREFIX}~` })) yield text;
  }

  async *iterateCheckpoints(fromSeq = 0): AsyncGenerator<SignedCheckpoint> {
    for await (const [, text] of this.#db.iterator({ gte: checkpointKey(fromSeq), lt: `${CHECKPOINT_PREFIX}~` })) {
      yield JSON.parse(text) as SignedCheckpoint;
    }
  }

  async receipts(): Promise<SignedReceipt[]> {
    const out: SignedReceipt[] = [];
    for await (const [, text] of this.#db.iterator({ gte: RECEIPT_PREFIX, lt: `${RECEIPT_PREFIX}~` })) out.push(JSON.parse(text) as SignedReceipt);
    return out;
  }

  /** Records kept aside by repairs (raw text), for forensics and the damage test. */
  async quarantined(): Promise<{ key: string; value: string }[]> {
    const out: { key: string; value: string }[] = [];
    for await (const [key, value] of this.#db.iterator({ gte: QUARANTINE_PREFIX, lt: `${QUARANTINE_PREFIX}~` })) out.push({ key, value });
    return out;
  }

  /**
   * The next batch to ship from `fromSeq`: contiguous events ending exactly
   * at a signed checkpoint, as large as the limits allow (at least up to the
   * first checkpoint at or after `fromSeq`, which the checkpoint policy keeps
   * small). Undefined when nothing sealed is waiting.
   */
  batchFrom(fromSeq: number, limits: { maxEvents: number; maxBytes: number }): Promise<{ events: string[]; checkpoint: SignedCheckpoint } | undefined> {
    // Under the mutex: a receipt pruning meanwhile would otherwise pull events from under the read.
    return this.#exclusive(() => this.#batchFrom(fromSeq, limits));
  }

  async #batchFrom(fromSeq: number, limits: { maxEvents: number; maxBytes: number }): Promise<{ events: string[]; checkpoint: SignedCheckpoint } | undefined> {
    if (fromSeq > this.#meta.sealedSeq) return undefined;
    const start = Math.max(fromSeq, this.#meta.firstSeq);
    const checkpoints: number[] = [];
    for await (const key of this.#db.keys({ gte: checkpointKey(start), lte: checkpointKey(this.#meta.sealedSeq) })) {
      const seq = Number(key.slice(CHECKPOINT_PREFIX.length));
      checkpoints.push(seq);
      if (seq - start + 1 >= limits.maxEvents) break;
    }
    const firstCheckpoint = checkpoints[0];
    if (firstCheckpoint === undefined) return undefined;
    const events: string[] = [];
    const seqs: number[] = [];
    let bytes = 0;
    let end = start - 1;
    for await (const [key, text] of this.#db.iterator({ gte: eventKey(start), lte: eventKey(checkpoints.at(-1) ?? firstCheckpoint) })) {
      const seq = Number(key.slice(EVENT_PREFIX.length));
      if (seq !== end + 1 && !declaresGapFrom(text, end + 1)) {
        throw new WardError(ErrorCodes.AUDIT_JOURNAL_CORRUPT, `audit journal is missing seq ${end + 1} (found ${seq})`);
      }
      if (seq > firstCheckpoint && (bytes + text.length > limits.maxBytes || events.length >= limits.maxEvents)) break;
      events.push(text);
      seqs.push(seq);
      bytes += text.length;
      end = seq;
    }
    const until = checkpoints.filter((s) => s <= end).at(-1);
    if (until === undefined) return undefined;
    const checkpoint = await this.#readCheckpoint(until);
    if (checkpoint === undefined) return undefined;
    return { events: events.slice(0, seqs.indexOf(until) + 1), checkpoint };
  }

  /**
   * Applies a receipt the caller has already authenticated (controller
   * signature, subject). The receipt must name an event this journal holds
   * with exactly that hash; then everything up to it is pruned and the
   * receipt kept. A stale receipt (at or below the last one) changes nothing.
   */
  acceptReceipt(receipt: SignedReceipt): Promise<{ pruned: number; stale: boolean }> {
    return this.#exclusive(async () => {
      const { chain, seq, head } = receipt.payload;
      const m = this.#meta;
      if (chain !== m.chain) {
        throw new WardError(ErrorCodes.AUDIT_RECEIPT_INVALID, `receipt is for chain ${chain}, the journal holds chain ${m.chain}`);
      }
      if (m.receipted && seq <= m.receipted.seq) {
        if (seq === m.receipted.seq && head !== m.receipted.head) {
          throw new WardError(ErrorCodes.AUDIT_RECEIPT_INVALID, `receipt for seq ${seq} names head ${head}, an earlier receipt named ${m.receipted.head}`);
        }
        return { pruned: 0, stale: true };
      }
      if (seq > m.sealedSeq) {
        throw new WardError(ErrorCodes.AUDIT_RECEIPT_INVALID, `receipt for seq ${seq}, which this journal never shipped (sealed up to ${m.sealedSeq})`);
      }
      const text = await this.#db.get(eventKey(seq));
      if (text === undefined) throw new WardError(ErrorCodes.AUDIT_RECEIPT_INVALID, `receipt for seq ${seq}, which this journal does not hold`);
      const ours = parseEventText(text).hash;
      if (ours !== head) throw new WardError(ErrorCodes.AUDIT_RECEIPT_INVALID, `receipt for seq ${seq} names head ${head}, the journal has ${ours}`);

      const ops: Op[] = [];
      let freed = 0;
      let pruned = 0;
      for await (const [key, value] of this.#db.iterator({ gte: eventKey(m.firstSeq), lte: eventKey(seq) })) {
        ops.push({ type: 'del', key });
        freed += value.length;
        pruned++;
      }
      for await (const [key, value] of this.#db.iterator({ gte: checkpointKey(0), lte: checkpointKey(seq) })) {
        ops.push({ type: 'del', key });
        freed += value.length;
      }
      ops.push({ type: 'put', key: receiptKey(seq), value: JSON.stringify(receipt) });
      const keep = this.#opts.keepReceipts;
      const old: string[] = [];
      for await (const key of this.#db.keys({ gte: RECEIPT_PREFIX, lt: receiptKey(seq), reverse: true })) old.push(key);
      for (const key of old.slice(Math.max(0, keep - 1))) ops.push({ type: 'del', key });
      const next: Meta = { ...m, firstSeq: seq + 1, receipted: { seq, head }, bytes: Math.max(0, m.bytes - freed) };
      if (next.bytes < this.#opts.maxBytes * this.#opts.warnFraction) next.quotaWarned = false;
      ops.push({ type: 'put', key: META_KEY, value: JSON.stringify(next) });
      await this.#db.batch(ops, { sync: true });
      this.#meta = next;
      if (this.#overflow && next.bytes + this.#reserve < this.#opts.maxBytes) this.#kick();
      return { pruned, stale: false };
    });
  }

  /** Writes what is pending, seals it with a final checkpoint, and closes the database. */
  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#checkpointTimer);
    clearTimeout(this.#retryTimer);
    if (!this.#writeFailing) {
      this.#forceCheckpoint = this.#meta.seq > this.#meta.sealedSeq || this.#pending.length > 0;
      this.#kick();
      await this.#idle().catch(() => undefined);
    }
    this.#closed = true;
    await this.#mutex.catch(() => undefined);
    for (const p of this.#pending.splice(0)) p.reject(new WardError(ErrorCodes.AUDIT_JOURNAL_CLOSED, 'the audit journal closed before this event was written'));
    await this.#db.close();
  }

  // -------------------------------------------------------------------------

  async #startSession(chainStartReason: string | undefined, repairs: readonly RepairNote[]): Promise<void> {
    const previousSession = this.#meta.session;
    const newSession = previousSession + 1;
    if (chainStartReason !== undefined) {
      this.#meta = { ...this.#meta, chain: newChainId() };
      // The chain start is the first event and names the key that will sign the chain's checkpoints.
      void this.#enqueue(
        {
          category: 'audit',
          actor: 'ward-agent',
          action: JournalActions.chainStart,
          outcome: 'success',
          details: { reason: chainStartReason, kid: this.#meta.kid },
        },
        true,
        { newSession },
      );
    }
    for (const repair of repairs) {
      void this.#enqueue(
        {
          category: 'audit',
          actor: 'ward-agent',
          action: JournalActions.gap,
          outcome: 'failure',
          code: ErrorCodes.AUDIT_JOURNAL_CORRUPT,
          details: { from: repair.from, to: repair.to, reason: repair.reason },
        },
        true,
        { gap: repair },
      );
      this.#opts.log.error({ ...repair }, 'audit journal damage found: records quarantined and the loss declared in a signed gap event');
    }
    const startEvent = this.#enqueue(
      {
        category: 'audit',
        actor: 'ward-agent',
        action: JournalActions.sessionStart,
        outcome: 'success',
        details: {
          session: newSession,
          previousSession,
          boot: this.#boot,
          pid: process.pid,
          ...(this.#opts.agentVersion ? { agentVersion: this.#opts.agentVersion } : {}),
        },
      },
      true,
      { newSession },
    );
    this.#forceCheckpoint = true;
    // A disk that refuses writes must not keep the agent (and enforcement) from starting: the session start
    // stays queued and is retried; the failure is logged loudly by the write loop.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([startEvent, new Promise((resolve) => (timer = setTimeout(resolve, 5_000)))]).finally(() => clearTimeout(timer));
  }

  #enqueue(input: AuditEventInput, system: boolean, special?: { gap?: RepairNote; newSession?: number }): Promise<AuditEvent | undefined> {
    return new Promise<AuditEvent | undefined>((resolve, reject) => {
      const entry: Pending = { input, system, resolve, reject };
      if (special) specials.set(entry, special);
      if (!system && this.#pending.length >= this.#opts.maxPendingEvents) {
        // The disk has been refusing writes for a while: keep counting rather than grow without bound (the count
        // lives in memory until the disk takes writes again; a crash before that loses the count, never an event on disk).
        this.#countOverflow(input);
        resolve(undefined);
        return;
      }
      this.#pending.push(entry);
      this.#kick();
    });
  }

  #countOverflow(input: AuditEventInput): void {
    const now = this.#opts.clock.now();
    const agg = this.#overflow ?? { count: 0, firstAt: now, lastAt: now, byAction: {} };
    agg.count++;
    agg.lastAt = now;
    const key = `${input.category}/${input.action}/${input.outcome}`;
    if (agg.byAction[key] !== undefined || Object.keys(agg.byAction).length < 64) agg.byAction[key] = (agg.byAction[key] ?? 0) + 1;
    else agg.byAction['(other)'] = (agg.byAction['(other)'] ?? 0) + 1;
    if (this.#overflow === undefined) {
      this.#opts.log.error(
        { bytes: this.#meta.bytes, maxBytes: this.#opts.maxBytes },
        'AUDIT JOURNAL FULL: events are now counted, not stored one by one, until the controller receipts older events',
      );
    }
    this.#overflow = agg;
  }

  #kick(): void {
    if (this.#writing || this.#closed || this.#retryTimer !== undefined) return;
    this.#writing = true;
    this.#drained = this.#exclusive(() => this.#drain())
      .catch((err) => this.#opts.log.error({ err: describeError(err) }, 'audit journal write loop failed; it restarts with the next event'))
      .finally(() => {
        this.#writing = false;
        // An append that arrived after the drain loop's last look but before this line would otherwise wait forever.
        if (this.#pending.length > 0 && this.#retryTimer === undefined) this.#kick();
      });
  }

  async #idle(): Promise<void> {
    for (let i = 0; i < 1000 && (this.#writing || this.#pending.length > 0 || this.#forceCheckpoint); i++) {
      if (this.#retryTimer !== undefined)
        throw new WardError(ErrorCodes.AUDIT_JOURNAL_WRITE_FAILED, 'the audit journal cannot write to disk', { retryable: true });
      if (!this.#writing) this.#kick();
      await this.#drained;
    }
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#mutex.then(fn);
    this.#mutex = run.catch(() => undefined);
    return run;
  }

  async #drain(): Promise<void> {
    while (!this.#closed && (this.#pending.length > 0 || this.#forceCheckpoint || this.#overflowDue())) {
      const group = this.#pending.splice(0, MAX_GROUP);
      const before = this.#meta;
      const beforeOverflow = this.#overflow === undefined ? undefined : structuredClone(this.#overflow);
      const beforeUnsealed = this.#unsealedBytes;
      // Consumed now, not after the write: a seal() asked for while this group is on its way to disk
      // must get its own checkpoint over the events that arrive meanwhile.
      const forced = this.#forceCheckpoint;
      this.#forceCheckpoint = false;
      const ops: Op[] = [];
      const results: ({ ok: true; event: AuditEvent | undefined } | { ok: false; error: unknown })[] = [];
      let meta = { ...before };
      let overflowTouched = false;
      let wrote = false;
      let checkpoints = 0;

      const sealHere = () => {
        const now = this.#opts.clock.now();
        const checkpoint = signCheckpoint(this.#opts.key, { chain: meta.chain, seq: meta.seq, head: meta.head, session: meta.session, time: now });
        const text = JSON.stringify(checkpoint);
        ops.push({ type: 'put', key: checkpointKey(meta.seq), value: text });
        meta = { ...meta, sealedSeq: meta.seq, sealedHead: meta.head, lastCheckpointAt: now, bytes: meta.bytes + Buffer.byteLength(text) };
        this.#unsealedBytes = 0;
        checkpoints++;
      };
      const put = (input: AuditEventInput, special?: { gap?: RepairNote; newSession?: number }): AuditEvent => {
        const seq = special?.gap ? Math.max(meta.seq, special.gap.to) + 1 : meta.seq + 1;
        const session = special?.newSession ?? meta.session;
        // A declared gap closes the previous session's stream, so it carries that session's clock.
        const mono = special?.gap ? (meta.lastMono ?? 0) : this.#opts.clock.monotonic() - this.#monoOrigin;
        // May throw (a value canonical JSON refuses): nothing of this event has touched `meta` or `ops` yet.
        const made = makeEvent({ chain: meta.chain, seq, prev: meta.head, session, boot: this.#boot, time: this.#opts.clock.now(), mono }, input);
        const size = Buffer.byteLength(made.text);
        if (size > MAX_EVENT_BYTES) throw new TypeError(`audit event ${input.action} is ${size} bytes, limit ${MAX_EVENT_BYTES}`);
        ops.push({ type: 'put', key: eventKey(seq), value: made.text });
        meta = { ...meta, seq, session, head: made.hash, bytes: meta.bytes + size, lastMono: made.event.mono };
        this.#unsealedBytes += size;
        wrote = true;
        // Within a group too: a burst must never leave a span between checkpoints larger than one shipped batch.
        if (this.#unsealedBytes >= this.#opts.checkpointBytes || meta.seq - meta.sealedSeq >= this.#opts.checkpointEvents) sealHere();
        return made.event;
      };

      // Room again after receipts: the aggregate becomes one signed event before anything newer, except a
      // declared gap, which must sit right where the lost numbers were.
      if (this.#overflowDue() && this.#overflow && !group.some((e) => specials.get(e)?.gap)) {
        const agg = this.#overflow;
        put({
          category: 'audit',
          actor: 'ward-agent',
          action: JournalActions.overflow,
          outcome: 'failure',
          details: { count: agg.count, firstAt: agg.firstAt, lastAt: agg.lastAt, byAction: agg.byAction },
        });
        this.#overflow = undefined;
        overflowTouched = true;
        ops.push({ type: 'del', key: OVERFLOW_KEY });
      }
      for (const entry of group) {
        const special = specials.get(entry);
        try {
          if (!entry.system && this.#overflow === undefined && meta.bytes >= this.#opts.maxBytes * this.#opts.warnFraction && !meta.quotaWarned) {
            meta.quotaWarned = true;
            put({
              category: 'audit',
              actor: 'ward-agent',
              action: JournalActions.quotaWarning,
              outcome: 'failure',
              details: { bytes: meta.bytes, maxBytes: this.#opts.maxBytes, warnFraction: this.#opts.warnFraction },
            });
            this.#opts.log.warn(
              { bytes: meta.bytes, maxBytes: this.#opts.maxBytes },
              'audit journal above its warning threshold: is the controller receipting?',
            );
          }
          const full = this.#overflow !== undefined || meta.bytes >= this.#opts.maxBytes;
          if (!entry.system && full) {
            this.#countOverflow(entry.input);
            overflowTouched = true;
            results.push({ ok: true, event: undefined });
          } else {
            results.push({ ok: true, event: put(entry.input, special) });
          }
        } catch (error) {
          // One unwritable event fails alone; the rest of the group is written.
          results.push({ ok: false, error });
        }
      }
      if (overflowTouched && this.#overflow) ops.push({ type: 'put', key: OVERFLOW_KEY, value: JSON.stringify(this.#overflow) });

      const now = this.#opts.clock.now();
      if (meta.seq > meta.sealedSeq && (forced || now - meta.lastCheckpointAt >= this.#opts.checkpointIntervalMs)) sealHere();
      if (ops.length === 0) {
        this.#settle(group, results);
        continue;
      }
      ops.push({ type: 'put', key: META_KEY, value: JSON.stringify(meta) });
      try {
        await this.#db.batch(ops, { sync: true });
      } catch (err) {
        // Nothing of this group is durable: undo the in-memory head and keep the events for a retry.
        this.#meta = before;
        this.#overflow = beforeOverflow;
        this.#unsealedBytes = beforeUnsealed;
        this.#forceCheckpoint ||= forced;
        this.#pending.unshift(...group);
        this.#scheduleRetry(err);
        return;
      }
      this.#meta = meta;
      if (this.#writeFailing) {
        this.#writeFailing = false;
        this.#opts.log.info({ seq: meta.seq }, 'audit journal writes again');
      }
      this.#retryDelay = 250;
      this.#settle(group, results);
      if (wrote) this.#emit('event');
      if (checkpoints > 0) this.#emit('checkpoint');
    }
  }

  #settle(group: readonly Pending[], results: readonly ({ ok: true; event: AuditEvent | undefined } | { ok: false; error: unknown })[]): void {
    group.forEach((entry, i) => {
      specials.delete(entry);
      const result = results[i];
      if (result?.ok) entry.resolve(result.event);
      else entry.reject(result?.error ?? new Error('audit event was not processed'));
    });
  }

  /** Room the overflow event needs before it is written: small against the quota, so a tiny quota still recovers. */
  get #reserve(): number {
    return Math.min(SYSTEM_RESERVE, this.#opts.maxBytes / 8);
  }

  #overflowDue(): boolean {
    return this.#overflow !== undefined && this.#meta.bytes + this.#reserve < this.#opts.maxBytes && this.#pending.length < this.#opts.maxPendingEvents;
  }

  #scheduleRetry(err: unknown): void {
    if (!this.#writeFailing) {
      this.#opts.log.error(
        { err: describeError(err), pending: this.#pending.length },
        'AUDIT JOURNAL CANNOT WRITE: events are held in memory and retried; enforcement continues',
      );
    }
    this.#writeFailing = true;
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(this.#retryDelay * 2, 30_000);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#kick();
    }, delay);
    this.#retryTimer.unref();
  }

  #emit(kind: 'event' | 'checkpoint'): void {
    for (const listener of this.#listeners) {
      try {
        listener(kind);
      } catch (err) {
        this.#opts.log.warn({ err: describeError(err) }, 'audit journal listener failed');
      }
    }
  }

  #tick(): void {
    if (this.#meta.seq > this.#meta.sealedSeq && !this.#writing) {
      this.#forceCheckpoint = true;
      this.#kick();
    }
  }

  async #readCheckpoint(seq: number): Promise<SignedCheckpoint | undefined> {
    const text = await this.#db.get(checkpointKey(seq));
    return text === undefined ? undefined : (JSON.parse(text) as SignedCheckpoint);
  }
}

/**
 * Read-only access for the CLI (`ward audit tail|export|status`). The agent
 * holds LevelDB's lock while it runs, so when the journal is busy the reader
 * works on a copy taken now: LevelDB recovers a copy whose log ends mid-write
 * by dropping that last write, which at worst hides the newest events (the
 * export's verdict then shows them as not yet there, never as forged).
 */
export class JournalReader {
  private constructor(
    private readonly db: Level<string, string>,
    readonly meta: Readonly<Pick<Meta, 'chain' | 'kid' | 'seq' | 'head' | 'session' | 'firstSeq' | 'sealedSeq' | 'receipted' | 'bytes'>>,
    readonly snapshotOf: string | undefined,
    private readonly cleanup: () => Promise<void>,
  ) {}

  static async open(dir: string): Promise<JournalReader> {
    const { Level } = await import('level');
    const { cp, mkdtemp, rm, stat } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    await stat(dir).catch((cause) => {
      throw new WardError(ErrorCodes.AUDIT_JOURNAL_NOT_FOUND, `no audit journal at ${dir} (has the agent run with this state folder?)`, { cause });
    });
    let location = dir;
    let snapshotOf: string | undefined;
    let cleanup = async (): Promise<void> => undefined;
    let db = new Level<string, string>(location, { valueEncoding: 'utf8', createIfMissing: false });
    try {
      await db.open();
    } catch (cause) {
      const message = String((cause as { cause?: { message?: string } }).cause?.message ?? '');
      if (!message.includes('lock')) throw new WardError(ErrorCodes.AUDIT_JOURNAL_CORRUPT, `the audit journal ${dir} cannot be opened: ${message}`, { cause });
      const tmp = await mkdtemp(join(tmpdir(), 'ward-audit-snapshot-'));
      location = join(tmp, 'journal');
      await cp(dir, location, { recursive: true });
      snapshotOf = dir;
      cleanup = () => rm(tmp, { recursive: true, force: true });
      db = new Level<string, string>(location, { valueEncoding: 'utf8', createIfMissing: false });
      await db.open();
    }
    const text = await db.get(META_KEY);
    if (text === undefined) {
      await db.close();
      await cleanup();
      throw new WardError(ErrorCodes.AUDIT_JOURNAL_CORRUPT, `the audit journal ${dir} has no head record`);
    }
    return new JournalReader(db, parseMeta(text), snapshotOf, cleanup);
  }

  async *iterateEvents(fromSeq = 0): AsyncGenerator<string> {
    for await (const [, text] of this.db.iterator({ gte: eventKey(fromSeq), lt: `${EVENT_PREFIX}~` })) yield text;
  }

  async *iterateCheckpoints(fromSeq = 0): AsyncGenerator<SignedCheckpoint> {
    for await (const [, text] of this.db.iterator({ gte: checkpointKey(fromSeq), lt: `${CHECKPOINT_PREFIX}~` })) yield JSON.parse(text) as SignedCheckpoint;
  }

  async receipts(): Promise<SignedReceipt[]> {
    const out: SignedReceipt[] = [];
    for await (const [, text] of this.db.iterator({ gte: RECEIPT_PREFIX, lt: `${RECEIPT_PREFIX}~` })) out.push(JSON.parse(text) as SignedReceipt);
    return out;
  }

  async tail(n: number): Promise<ParsedEvent[]> {
    const out: ParsedEvent[] = [];
    for await (const [, text] of this.db.iterator({ gte: EVENT_PREFIX, lt: `${EVENT_PREFIX}~`, reverse: true, limit: n })) out.push(parseEventText(text));
    return out.reverse();
  }

  async close(): Promise<void> {
    await this.db.close();
    await this.cleanup();
  }
}

/** What an export reads: the journal itself in the agent, a JournalReader in the CLI. */
export interface JournalSource {
  readonly kid: string;
  status(): { readonly chain: string; readonly firstSeq: number };
  receipts(): Promise<SignedReceipt[]>;
  iterateEvents(fromSeq?: number): AsyncGenerator<string>;
  iterateCheckpoints(fromSeq?: number): AsyncGenerator<SignedCheckpoint>;
}

export function readerSource(reader: JournalReader): JournalSource {
  return {
    kid: reader.meta.kid,
    status: () => ({ chain: reader.meta.chain, firstSeq: reader.meta.firstSeq }),
    receipts: () => reader.receipts(),
    iterateEvents: (from) => reader.iterateEvents(from),
    iterateCheckpoints: (from) => reader.iterateCheckpoints(from),
  };
}

/** The only jump in seq a journal makes on purpose: a declared gap after a repair, starting exactly where the numbers stop. */
function declaresGapFrom(text: string, from: number): boolean {
  try {
    const { event } = parseEventText(text);
    return event.action === JournalActions.gap && (event.details as { from?: unknown } | undefined)?.from === from;
  } catch {
    return false;
  }
}

/** Pending entries that carry journal-internal instructions (gap position, new session). */
const specials = new WeakMap<Pending, { gap?: RepairNote; newSession?: number }>();

const eventKey = (seq: number) => `${EVENT_PREFIX}${seqKey(seq)}`;
const checkpointKey = (seq: number) => `${CHECKPOINT_PREFIX}${seqKey(seq)}`;
const receiptKey = (seq: number) => `${RECEIPT_PREFIX}${seqKey(seq)}`;

function freshMeta(kid: string): Meta {
  return {
    v: 1,
    chain: newChainId(),
    kid,
    seq: 0,
    head: GENESIS_PREV,
    session: 0,
    firstSeq: 1,
    sealedSeq: 0,
    sealedHead: GENESIS_PREV,
    lastCheckpointAt: 0,
    receipted: null,
    bytes: 0,
    quotaWarned: false,
    lastMono: 0,
  };
}

function parseMeta(text: string): Meta {
  try {
    const m = JSON.parse(text) as Meta;
    if (m.v !== 1 || typeof m.chain !== 'string' || !Number.isSafeInteger(m.seq) || typeof m.head !== 'string' || !Number.isSafeInteger(m.session)) {
      throw new Error('unexpected shape');
    }
    return m;
  } catch (cause) {
    throw new WardError(ErrorCodes.AUDIT_JOURNAL_CORRUPT, 'the audit journal head record is unreadable', { cause });
  }
}

async function readOverflow(db: Level<string, string>): Promise<OverflowAggregate | undefined> {
  const text = await db.get(OVERFLOW_KEY);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as OverflowAggregate;
  } catch {
    // The counts are lost but not the fact: an aggregate with an unknown count is still declared.
    return { count: -1, firstAt: 0, lastAt: 0, byAction: { '(unreadable aggregate)': -1 } };
  }
}

async function firstKey(db: Level<string, string>, prefix: string): Promise<string | undefined> {
  for await (const key of db.keys({ gte: prefix, lt: `${prefix}~`, limit: 1 })) return key;
  return undefined;
}

/**
 * Re-walks the un-receipted part of the chain: contiguous seqs, parseable
 * canonical events, unbroken links from the receipted head, a last event
 * matching the head record, and checkpoints signed by this key over the
 * hashes actually stored. Returns the first damaged seq, or undefined.
 */
async function checkStoredChain(
  db: Level<string, string>,
  meta: Meta,
  key: SigningKey,
): Promise<{ from: number; reason: string; lastGoodHash: string } | undefined> {
  const damage = await findDamage(db, meta, key);
  if (damage === undefined) return undefined;
  // The hash the chain continues from: the event just before the damage, or the receipted head.
  let lastGoodHash = meta.receipted?.head ?? GENESIS_PREV;
  if (damage.from - 1 >= meta.firstSeq) {
    const text = await db.get(eventKey(damage.from - 1)).catch(() => undefined);
    if (text !== undefined) lastGoodHash = parseEventText(text).hash;
  }
  return { ...damage, lastGoodHash };
}

async function lastCheckpointBefore(db: Level<string, string>, seq: number): Promise<SignedCheckpoint | undefined> {
  for await (const text of db.values({ lt: checkpointKey(seq), gte: CHECKPOINT_PREFIX, reverse: true, limit: 1 })) return JSON.parse(text) as SignedCheckpoint;
  return undefined;
}

async function storedBytes(db: Level<string, string>): Promise<number> {
  let bytes = 0;
  for (const prefix of [EVENT_PREFIX, CHECKPOINT_PREFIX]) {
    for await (const value of db.values({ gte: prefix, lt: `${prefix}~` })) bytes += value.length;
  }
  return bytes;
}

async function findDamage(db: Level<string, string>, meta: Meta, key: SigningKey): Promise<{ from: number; reason: string } | undefined> {
  let expected = meta.firstSeq;
  let prev = meta.receipted?.head ?? GENESIS_PREV;
  const hashes = new Map<number, string>();
  try {
    for await (const [k, text] of db.iterator({ gte: eventKey(meta.firstSeq), lt: `${EVENT_PREFIX}~` })) {
      const seq = Number(k.slice(EVENT_PREFIX.length));
      if (seq !== expected) return { from: expected, reason: `seq ${expected} missing (next stored is ${seq})` };
      let parsed: ParsedEvent;
      try {
        parsed = parseEventText(text);
      } catch (err) {
        return { from: seq, reason: `seq ${seq} unreadable: ${(err as Error).message}` };
      }
      if (parsed.event.seq !== seq || parsed.event.chain !== meta.chain) return { from: seq, reason: `seq ${seq} is stored under the wrong key or chain` };
      if (parsed.event.prev !== prev) {
        // Either this event's link or the previous event's content was altered; neither can be trusted.
        const from = seq - 1 >= meta.firstSeq ? seq - 1 : seq;
        return { from, reason: `seq ${seq} does not link to seq ${seq - 1}: one of them was altered` };
      }
      prev = parsed.hash;
      hashes.set(seq, parsed.hash);
      expected = seq + 1;
    }
  } catch (err) {
    return { from: expected, reason: `reading seq ${expected} failed: ${describeError(err)}` };
  }
  if (expected - 1 < meta.seq) return { from: expected, reason: `events end at seq ${expected - 1}, the head record says ${meta.seq}` };
  if (expected - 1 > meta.seq) return { from: meta.seq + 1, reason: `events beyond the head record (seq ${meta.seq + 1}..${expected - 1})` };
  if (meta.seq > 0 && meta.seq >= meta.firstSeq && prev !== meta.head) return { from: meta.seq, reason: `seq ${meta.seq} does not match the head record` };
  for await (const [k, text] of db.iterator({ gte: checkpointKey(meta.firstSeq), lt: `${CHECKPOINT_PREFIX}~` })) {
    const seq = Number(k.slice(CHECKPOINT_PREFIX.length));
    let cp: SignedCheckpoint | undefined;
    try {
      const parsed = signedCheckpoint.safeParse(JSON.parse(text));
      cp = parsed.success ? parsed.data : undefined;
    } catch {
      cp = undefined;
    }
    if (cp === undefined || cp.kid !== key.kid || !statementSignatureValid(cp, key.publicKey)) {
      return { from: Math.max(meta.firstSeq, seq), reason: `checkpoint at seq ${seq} is unreadable or not signed by this device` };
    }
    if (cp.payload.seq !== seq || hashes.get(seq) !== cp.payload.head) {
      return { from: Math.max(meta.firstSeq, seq), reason: `checkpoint at seq ${seq} does not match the stored event` };
    }
  }
  return undefined;
}

/** Moves every event and checkpoint from `fromSeq` on under the quarantine prefix. */
async function quarantineFrom(db: Level<string, string>, fromSeq: number, everything = false): Promise<{ from: number; to: number }> {
  const ops: Op[] = [];
  let first = Number.POSITIVE_INFINITY;
  let last = fromSeq - 1;
  const stamp = Date.now().toString(36);
  // A chain given up entirely takes its receipts and its overflow count along: they belong to it.
  const prefixes = everything ? [EVENT_PREFIX, CHECKPOINT_PREFIX, RECEIPT_PREFIX, OVERFLOW_KEY] : [EVENT_PREFIX, CHECKPOINT_PREFIX];
  for (const prefix of prefixes) {
    try {
      const range = prefix === OVERFLOW_KEY ? { gte: OVERFLOW_KEY, lte: OVERFLOW_KEY } : { gte: `${prefix}${seqKey(fromSeq)}`, lt: `${prefix}~` };
      for await (const [k, v] of db.iterator(range)) {
        const seq = Number(k.slice(prefix.length));
        if ((prefix === EVENT_PREFIX || prefix === CHECKPOINT_PREFIX) && Number.isSafeInteger(seq)) {
          first = Math.min(first, seq);
          last = Math.max(last, seq);
        }
        ops.push({ type: 'put', key: `${QUARANTINE_PREFIX}${stamp}:${k}`, value: v });
        ops.push({ type: 'del', key: k });
      }
    } catch {
      // An unreadable region: what could be read is moved; the rest stays unreachable behind the gap.
    }
  }
  if (ops.length > 0) await db.batch(ops, { sync: true });
  return { from: Number.isFinite(first) ? Math.min(first, fromSeq) : fromSeq, to: last };
}

async function openDatabase(dir: string, log: JournalLog): Promise<{ db: Level<string, string>; reopened?: string }> {
  // Loaded on first use: in the single binary this extracts and dlopens the LevelDB addon.
  const { Level } = await import('level');
  const attempt = async () => {
    const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
    await db.open();
    return db;
  };
  try {
    return { db: await attempt() };
  } catch (cause) {
    const message = String((cause as { cause?: { message?: string } }).cause?.message ?? (cause as Error).message ?? '');
    if (message.includes('lock')) {
      throw new WardError(ErrorCodes.AUDIT_JOURNAL_BUSY, `the audit journal ${dir} is in use by another process (is the agent running?)`, {
        cause,
        retryable: true,
        details: { dir },
      });
    }
    // Only damage is repaired: a full, read-only or unreadable disk is not the journal's fault, and "repairing"
    // (or moving aside) a healthy journal there would break its chain for nothing.
    if (!/corrupt/i.test(message)) {
      throw new WardError(ErrorCodes.AUDIT_JOURNAL_WRITE_FAILED, `the audit journal ${dir} cannot be opened: ${message}`, {
        cause,
        retryable: true,
        details: { dir },
      });
    }
    log.error({ dir, err: message }, 'audit journal damaged: trying LevelDB repair');
    try {
      // `level` re-exports classic-level's class, whose static repair() its typings do not declare.
      await (Level as unknown as { repair(location: string): Promise<void> }).repair(dir);
      return { db: await attempt() };
    } catch (repairErr) {
      // Beyond repair: keep the damaged files for forensics and start a new chain that says why.
      const aside = await moveAside(dir);
      log.error({ dir, movedTo: aside, err: describeError(repairErr) }, 'audit journal beyond repair: moved aside, a new chain starts');
      return { db: await attempt(), reopened: `previous journal unreadable (${message.slice(0, 200)}); kept at ${aside}` };
    }
  }
}

async function moveAside(dir: string): Promise<string> {
  const aside = `${dir}.aside-${Date.now()}-${randomBytes(3).toString('hex')}`;
  await rename(dir, aside);
  return aside;
}

async function readBootId(): Promise<string> {
  try {
    return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim().slice(0, 64) || 'unknown';
  } catch {
    return `nobootid-${randomBytes(8).toString('hex')}`;
  }
}
