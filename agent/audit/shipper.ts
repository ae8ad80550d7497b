import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { BATCH_TYPE, type BatchMessage, type SignedReceipt } from '../shared/audit/event.js';
import { topics } from '../shared/topics.js';
import type { AuditJournal, JournalLog } from './journal.js';

/**
 * Ships the journal to the controller (DESIGN.md §5): one batch in flight at
 * a time, from the last receipt onward, each batch ending at a signed
 * checkpoint. Only a receipt (checked by the caller's envelope verifier and
 * then against the journal's own hashes) lets the journal prune. A lost
 * batch or receipt costs a resend after `receiptTimeoutMs`; the controller
 * treats the overlap as a duplicate.
 *
 * Live events are sealed and shipped after a short linger, so checkpoint
 * signatures follow the batch rate (one per round trip at most), not the
 * event rate. Catch-up after an outage is paced in bytes per second so a
 * backlog of hours does not crowd out telemetry and control traffic on a
 * thin uplink.
 */
export interface ShipperOptions {
  readonly journal: AuditJournal;
  readonly deviceId: string;
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 1 }) => Promise<void>;
  /** Authenticates a receipt envelope (controller key, subject, freshness) and returns it. */
  readonly verifyReceipt: (raw: Buffer) => SignedReceipt;
  /** Where refused receipts are recorded (the journal itself, in the agent). */
  readonly audit: AuditSink;
  readonly clock: Clock;
  readonly log: JournalLog & { debug?(obj: object, msg?: string): void };
  readonly maxBatchEvents?: number;
  readonly maxBatchBytes?: number;
  readonly receiptTimeoutMs?: number;
  readonly lingerMs?: number;
  readonly catchupBytesPerSecond?: number;
}

export interface ShipperStatus {
  readonly connected: boolean;
  readonly inFlight: { readonly from: number; readonly to: number } | null;
  readonly batchesSent: number;
  readonly receiptsAccepted: number;
  readonly receiptsRefused: number;
  readonly resends: number;
  readonly lastReceiptAt: number | null;
}

export class AuditShipper {
  readonly #o: Required<Omit<ShipperOptions, 'log'>> & { log: ShipperOptions['log'] };
  #connected = false;
  #stopped = false;
  #pumping = false;
  #again = false;
  #inFlight: { from: number; to: number; done: () => void } | null = null;
  #linger: NodeJS.Timeout | undefined;
  #sleep: { timer: NodeJS.Timeout; wake: () => void } | undefined;
  #unsubscribe: () => void;
  #stats = { batchesSent: 0, receiptsAccepted: 0, receiptsRefused: 0, resends: 0, lastReceiptAt: null as number | null };

  constructor(options: ShipperOptions) {
    this.#o = {
      maxBatchEvents: 1000,
      maxBatchBytes: 256 * 1024,
      receiptTimeoutMs: 15_000,
      lingerMs: 50,
      catchupBytesPerSecond: 256 * 1024,
      ...options,
    };
    this.#unsubscribe = options.journal.onWrite((kind) => {
      if (kind === 'checkpoint') this.#pump();
      else this.#scheduleSeal();
    });
  }

  status(): ShipperStatus {
    return {
      connected: this.#connected,
      inFlight: this.#inFlight ? { from: this.#inFlight.from, to: this.#inFlight.to } : null,
      ...this.#stats,
    };
  }

  setConnected(connected: boolean): void {
    this.#connected = connected;
    if (!connected) {
      // Whatever was in flight is resent from the last receipt on reconnect.
      this.#inFlight?.done();
      this.#wake();
      return;
    }
    this.#scheduleSeal();
    this.#pump();
  }

  /** Inbound `audit/receipt`. Never throws: a bad receipt is refused and recorded. */
  async handleReceipt(raw: Buffer): Promise<void> {
    let receipt: SignedReceipt;
    try {
      receipt = this.#o.verifyReceipt(raw);
      await this.#o.journal.acceptReceipt(receipt);
    } catch (err) {
      this.#stats.receiptsRefused++;
      const code = (err as { code?: string }).code ?? ErrorCodes.AUDIT_RECEIPT_INVALID;
      this.#o.log.warn({ code, err: describeError(err) }, 'audit receipt refused');
      this.#o.audit.record({
        category: 'request-error',
        actor: 'controller',
        action: 'audit.receipt',
        outcome: 'refused',
        code,
        details: { message: (err as Error).message },
      });
      return;
    }
    this.#stats.receiptsAccepted++;
    this.#stats.lastReceiptAt = this.#o.clock.now();
    const inFlight = this.#inFlight;
    if (inFlight && receipt.payload.seq >= inFlight.to) inFlight.done();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#unsubscribe();
    clearTimeout(this.#linger);
    this.#inFlight?.done();
    this.#wake();
  }

  #scheduleSeal(): void {
    if (this.#linger !== undefined || !this.#connected || this.#stopped || this.#inFlight) return;
    this.#linger = setTimeout(() => {
      this.#linger = undefined;
      if (!this.#connected || this.#stopped || this.#inFlight) return;
      this.#o.journal.seal().catch((err) => this.#o.log.warn({ err: describeError(err) }, 'audit checkpoint failed'));
    }, this.#o.lingerMs);
    this.#linger.unref();
  }

  #pump(): void {
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    if (!this.#connected || this.#stopped) return;
    this.#pumping = true;
    this.#run()
      .catch((err) => this.#o.log.error({ err: describeError(err) }, 'audit shipping stopped unexpectedly; resumes on the next checkpoint'))
      .finally(() => {
        this.#pumping = false;
        if (this.#again) {
          this.#again = false;
          this.#pump();
        }
      });
  }

  async #run(): Promise<void> {
    let failures = 0;
    // Bounded by the journal: each turn ships a batch up to the sealed head or stops.
    while (this.#connected && !this.#stopped) {
      this.#again = false;
      const status = this.#o.journal.status();
      const from = Math.max(status.firstSeq, (status.receipted?.seq ?? 0) + 1);
      if (from > status.sealedSeq) return;
      const batch = await this.#o.journal.batchFrom(from, { maxEvents: this.#o.maxBatchEvents, maxBytes: this.#o.maxBatchBytes });
      if (batch === undefined) return;
      const message: BatchMessage = { typ: BATCH_TYPE, v: 1, chain: status.chain, events: batch.events, checkpoint: batch.checkpoint };
      const payload = Buffer.from(JSON.stringify(message));
      const to = batch.checkpoint.payload.seq;
      const receipted = new Promise<void>((resolve) => {
        this.#inFlight = { from, to, done: resolve };
      });
      try {
        await this.#o.publish(topics.audit(this.#o.deviceId), payload, { qos: 1 });
        this.#stats.batchesSent++;
        if (failures > 0) this.#stats.resends++;
      } catch (err) {
        this.#inFlight = null;
        if (err instanceof WardError && err.code === ErrorCodes.LINK_NOT_CONNECTED) return;
        this.#o.log.warn({ err: describeError(err), from, to }, 'audit batch not published; retrying');
        failures++;
        await this.#pause(Math.min(this.#o.receiptTimeoutMs, 1000 * 2 ** Math.min(failures, 5)));
        continue;
      }
      const timedOut = await this.#waitFor(receipted, this.#o.receiptTimeoutMs * Math.min(2 ** failures, 16));
      this.#inFlight = null;
      if (timedOut) {
        failures++;
        this.#o.log.warn({ from, to, attempt: failures }, 'no receipt for an audit batch; it will be sent again');
        continue;
      }
      failures = 0;
      // Pace only while there is a backlog beyond this batch: live events go out at once.
      const after = this.#o.journal.status();
      if (after.sealedSeq > to || after.seq > to + this.#o.maxBatchEvents) {
        await this.#pause(Math.round((payload.length / this.#o.catchupBytesPerSecond) * 1000));
      }
    }
  }

  /** Resolves true on timeout, false when `done` settled first (or the shipper stopped / lost the link). */
  async #waitFor(done: Promise<void>, ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), ms);
      timer.unref();
    });
    const result = await Promise.race([done.then(() => false), timeout]);
    clearTimeout(timer);
    return result && this.#connected && !this.#stopped;
  }

  #pause(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#sleep = undefined;
        resolve();
      }, ms);
      timer.unref();
      this.#sleep = { timer, wake: resolve };
    });
  }

  #wake(): void {
    if (this.#sleep) {
      clearTimeout(this.#sleep.timer);
      this.#sleep.wake();
      this.#sleep = undefined;
    }
  }
}
