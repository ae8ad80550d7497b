import type { KeyObject } from 'node:crypto';
import type { AuditSink } from '../agent/core/audit.js';
import type { Clock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, WardError, type WardErrorCode } from '../agent/core/errors.js';
import {
  type BatchMessage,
  JournalActions,
  type ParsedEvent,
  parseBatch,
  parseEventText,
  RECEIPT_TYPE,
  statementSignatureValid,
} from '../agent/shared/audit/event.js';
import { ChainVerifier, type Finding, type VerifierAnchor } from '../agent/shared/audit/verify.js';
import { encodeEnvelope, seal } from '../agent/shared/envelope.js';
import type { SigningKey } from '../agent/shared/keys.js';
import { topics } from '../agent/shared/topics.js';
import type { AuditHeadRecord, AuditStore } from './audit-store.js';

/**
 * The controller's half of the audit trail: verifies each shipped batch
 * against the chain it already holds for the device, stores what verifies,
 * and answers with a signed receipt `{deviceId, chain, seq, head}`.
 *
 * Two kinds of "no":
 * - a message that cannot be the device's (not a batch, checkpoint not
 *   signed by the device key, events that do not add up to the checkpoint)
 *   is refused and counted; the stored chain and its verdict do not change,
 *   since anybody on the wire could have sent it;
 * - a batch the device did sign but that contradicts what the controller
 *   already holds (a fork, a gap, a rewritten event, a restart without a
 *   reason) is evidence about the gateway: it is refused, and the device's
 *   verdict turns `broken` with the finding, for an operator to look at.
 * A batch that only repeats what is stored is a duplicate (a QoS 1 redelivery
 * or a lost receipt) and is answered with the receipt again.
 */
export interface AuditIngestDeps {
  readonly store: AuditStore;
  readonly key: SigningKey;
  readonly keyOf: (deviceId: string) => { kid: string; publicKey: KeyObject } | undefined;
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 1 }) => Promise<void>;
  readonly audit: AuditSink;
  readonly clock: Clock;
  readonly log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
}

export type BatchOutcome =
  | { readonly outcome: 'accepted'; readonly seq: number; readonly events: number }
  | { readonly outcome: 'duplicate'; readonly seq: number }
  | { readonly outcome: 'refused'; readonly code: WardErrorCode; readonly message: string }
  | { readonly outcome: 'broken'; readonly findings: readonly Finding[] };

const MAX_FINDINGS_KEPT = 50;
const MAX_PAST_CHAINS = 64;
/** Batches waiting for verification; beyond it new ones are refused (the device resends after its receipt timeout). */
const MAX_QUEUED = 1000;
const RECEIPT_TTL_SECONDS = 7 * 24 * 3600;

export class AuditIngest {
  #queue: Promise<unknown> = Promise.resolve();
  #queued = 0;
  readonly #refusedBy = new Map<string, number>();
  readonly #listeners = new Set<(deviceId: string, outcome: BatchOutcome) => void>();
  readonly #refusals = new Map<string, number>();

  constructor(private readonly deps: AuditIngestDeps) {}

  /** Refusals by code since start (for /api/health). */
  refusals(): Record<string, number> {
    return Object.fromEntries(this.#refusals);
  }

  onBatch(listener: (deviceId: string, outcome: BatchOutcome) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Serialised: a device's batches must be checked against the head the previous one left. */
  handle(deviceId: string, raw: Buffer): Promise<BatchOutcome> {
    if (this.#queued >= MAX_QUEUED) {
      this.#count(ErrorCodes.AUDIT_BATCH_INVALID);
      return Promise.resolve({ outcome: 'refused', code: ErrorCodes.AUDIT_BATCH_INVALID, message: 'audit ingest queue full' });
    }
    this.#queued++;
    const run = this.#queue.then(() => this.#handle(deviceId, raw)).finally(() => this.#queued--);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #count(code: string): void {
    this.#refusals.set(code, (this.#refusals.get(code) ?? 0) + 1);
  }

  /** Refusals per device since start: counted in memory, since an unauthenticated sender must not cost a disk write. */
  refusedFor(deviceId: string): number {
    return this.#refusedBy.get(deviceId) ?? 0;
  }

  async #handle(deviceId: string, raw: Buffer): Promise<BatchOutcome> {
    let outcome: BatchOutcome;
    try {
      outcome = await this.#check(deviceId, raw);
    } catch (err) {
      const code = (err instanceof WardError ? err.code : ErrorCodes.AUDIT_BATCH_INVALID) as WardErrorCode;
      outcome = { outcome: 'refused', code, message: (err as Error).message };
    }
    if (outcome.outcome === 'refused') {
      this.#count(outcome.code);
      if (this.#refusedBy.size < 100_000 || this.#refusedBy.has(deviceId)) this.#refusedBy.set(deviceId, (this.#refusedBy.get(deviceId) ?? 0) + 1);
      this.deps.log.warn({ deviceId, code: outcome.code, err: outcome.message }, 'audit batch refused');
      this.deps.audit.record({
        category: 'request-error',
        actor: deviceId,
        action: 'audit.batch',
        target: deviceId,
        outcome: 'refused',
        code: outcome.code,
        details: { message: outcome.message },
      });
    } else if (outcome.outcome === 'broken') {
      this.#count(ErrorCodes.AUDIT_CHAIN_BROKEN);
      this.deps.log.error({ deviceId, findings: outcome.findings }, "AUDIT CHAIN BROKEN: the device's signed history contradicts what the controller holds");
      this.deps.audit.record({
        category: 'audit',
        actor: deviceId,
        action: 'audit.chain-broken',
        target: deviceId,
        outcome: 'failure',
        code: ErrorCodes.AUDIT_CHAIN_BROKEN,
        details: { findings: outcome.findings.map((f) => `${f.kind}${f.seq !== undefined ? `@${f.seq}` : ''}: ${f.message}`) },
      });
    }
    for (const listener of this.#listeners) listener(deviceId, outcome);
    return outcome;
  }

  async #check(deviceId: string, raw: Buffer): Promise<BatchOutcome> {
    const batch = parseBatch(raw);
    const deviceKey = this.deps.keyOf(deviceId);
    if (deviceKey === undefined) {
      throw new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `no trusted key for device ${deviceId} (unknown or revoked)`);
    }
    const cp = batch.checkpoint;
    if (cp.kid !== deviceKey.kid || !statementSignatureValid(cp, deviceKey.publicKey)) {
      throw new WardError(ErrorCodes.ENVELOPE_BAD_SIGNATURE, `the batch checkpoint is not signed by ${deviceId}'s key`);
    }
    // From here on every event is the device's own (links inside the batch + its signed checkpoint). But a
    // genuine batch can still be replayed, or cut to a suffix, by anyone who saw it: only what no copy of a
    // genuine batch could produce may turn the verdict broken; everything else is refused and changes nothing.
    const events = parseEvents(batch);
    const head = await this.deps.store.head(deviceId);
    const now = this.deps.clock.now();
    const first = events[0] as ParsedEvent;

    if (head && head.chain !== batch.chain && (head.pastChains ?? []).includes(batch.chain)) {
      throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `chain ${batch.chain} was superseded by chain ${head.chain}: a replay of old evidence`);
    }
    if (head && head.chain !== batch.chain && first.event.seq !== 1) {
      throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `a new chain must be shipped from its first event, not from seq ${first.event.seq}`);
    }

    let fresh = events;
    let backfill: ParsedEvent[] = [];
    let anchor: VerifierAnchor | undefined = head
      ? { chain: head.chain, seq: head.seq, head: head.head, session: head.session, mono: head.lastMono }
      : undefined;
    const notes: Finding[] = [];
    if (head && head.chain === batch.chain) {
      // What the controller already holds must be repeated byte for byte: anything else is a rewritten history,
      // which only the device key could have signed.
      for (const e of events) {
        if (e.event.seq > head.seq) break;
        if (e.event.seq < head.firstSeq) continue;
        const stored = await this.deps.store.eventText(deviceId, head.chainIndex, e.event.seq);
        if (stored !== undefined && stored !== e.text) {
          return this.#broken(
            head,
            [
              {
                kind: 'fork',
                severity: 'error',
                chain: batch.chain,
                seq: e.event.seq,
                message: `seq ${e.event.seq} differs from the event received earlier: the device's history was rewritten after the controller received it`,
              },
            ],
            now,
          );
        }
      }
      // Events before the first one held (a first batch that arrived cut short): the rest of the batch matched,
      // and its links carry them, so they are the device's and are kept.
      backfill = events.filter((e) => e.event.seq < head.firstSeq);
      fresh = events.filter((e) => e.event.seq > head.seq);
      const lead = fresh[0];
      if (lead && lead.event.seq > head.seq + 1) {
        const declared = await this.#declaredLoss(deviceId, head, lead);
        if (declared === undefined) {
          throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `the batch jumps from seq ${head.seq} held to seq ${lead.event.seq} without declaring the loss`);
        }
        anchor = declared.anchor;
        if (declared.note) notes.push(declared.note);
      }
      if (fresh.length === 0) {
        if (backfill.length > 0)
          await this.deps.store.backfill(
            head.deviceId,
            head.chainIndex,
            backfill.map((e) => ({ seq: e.event.seq, text: e.text })),
          );
        const updated = {
          ...head,
          firstSeq: Math.min(head.firstSeq, first.event.seq),
          events: head.events + backfill.length,
          duplicates: head.duplicates + 1,
          lastBatchAt: now,
        };
        await this.deps.store.putHead(updated);
        this.#sendReceipt(deviceId, head.chain, head.seq, head.head);
        return { outcome: 'duplicate', seq: head.seq };
      }
    }

    const verifier = new ChainVerifier({ deviceKey, ...(anchor ? { anchor } : {}) });
    for (const e of fresh) verifier.addEvent(e.text);
    verifier.addCheckpoint(cp);
    const verdict = verifier.finish();
    const errors = verdict.findings.filter((f) => f.severity === 'error');
    if (head && errors.length > 0) return this.#broken(head, errors, now);
    if (errors.length > 0) {
      throw new WardError(ErrorCodes.AUDIT_CHAIN_BROKEN, `first batch from ${deviceId} does not verify: ${errors.map((f) => f.message).join('; ')}`);
    }
    const state = verifier.state();
    const last = fresh.at(-1) as ParsedEvent;
    if (state === undefined || state.sealedThrough < last.event.seq || cp.payload.seq !== last.event.seq) {
      throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `the batch checkpoint (seq ${cp.payload.seq}) does not seal its last event (seq ${last.event.seq})`);
    }
    const restarted = head !== undefined && head.chain !== batch.chain;
    const found = [...notes, ...verdict.findings.filter((f) => f.severity !== 'info')].map((f) => ({ ...f, at: now }));
    const next: AuditHeadRecord = {
      deviceId,
      chainIndex: head ? head.chainIndex + (restarted ? 1 : 0) : 1,
      chain: batch.chain,
      pastChains: restarted && head ? [...(head.pastChains ?? []), head.chain].slice(-MAX_PAST_CHAINS) : (head?.pastChains ?? []),
      seq: last.event.seq,
      head: last.hash,
      session: last.event.session,
      lastMono: last.event.mono,
      firstSeq: head && !restarted ? Math.min(head.firstSeq, first.event.seq) : (fresh[0] as ParsedEvent).event.seq,
      lastCheckpoint: { seq: cp.payload.seq, head: cp.payload.head, time: cp.payload.time },
      status: head?.status === 'broken' ? 'broken' : found.length > 0 || head?.status === 'warnings' ? 'warnings' : 'ok',
      findings: [...found.reverse(), ...(head?.findings ?? [])].slice(0, MAX_FINDINGS_KEPT),
      events: (head?.events ?? 0) + fresh.length + backfill.length,
      batches: (head?.batches ?? 0) + 1,
      duplicates: head?.duplicates ?? 0,
      refused: head?.refused ?? 0,
      lastBatchAt: now,
    };
    await this.deps.store.commit(
      next,
      [...backfill, ...fresh].map((e) => ({ seq: e.event.seq, text: e.text })),
      cp,
    );
    if (found.length > 0) {
      this.deps.audit.record({
        category: 'audit',
        actor: deviceId,
        action: 'audit.chain-warning',
        target: deviceId,
        outcome: 'success',
        details: { findings: found.map((f) => `${f.kind}${f.seq !== undefined ? `@${f.seq}` : ''}: ${f.message}`) },
      });
    }
    this.#sendReceipt(deviceId, next.chain, next.seq, next.head);
    return { outcome: 'accepted', seq: next.seq, events: fresh.length };
  }

  /**
   * A device that found damage in its own journal declares the lost range in
   * a signed `audit.gap` linked to its last good event. If the controller
   * already holds some of those numbers, the chain continues from that last
   * good event: what the controller holds stays archived, and the loss is a
   * warning naming both ranges.
   */
  async #declaredLoss(deviceId: string, head: AuditHeadRecord, gap: ParsedEvent): Promise<{ anchor: VerifierAnchor; note?: Finding } | undefined> {
    if (gap.event.action !== JournalActions.gap) return undefined;
    const from = (gap.event.details as { from?: unknown } | undefined)?.from;
    const to = (gap.event.details as { to?: unknown } | undefined)?.to;
    if (typeof from !== 'number' || typeof to !== 'number' || to !== gap.event.seq - 1 || from > head.seq + 1 || from <= head.firstSeq) return undefined;
    const before = await this.deps.store.eventText(deviceId, head.chainIndex, from - 1);
    if (before === undefined) return undefined;
    const parsed = parseEventText(before);
    if (parsed.hash !== gap.event.prev) return undefined;
    const anchor = { chain: head.chain, seq: from - 1, head: parsed.hash, session: parsed.event.session, mono: parsed.event.mono };
    // Declared from right after the head: an ordinary declared gap, which the verifier reports itself.
    if (from === head.seq + 1) return { anchor };
    return {
      anchor,
      note: {
        kind: 'declared-gap',
        severity: 'warning',
        chain: head.chain,
        seq: gap.event.seq,
        message: `the device declared seq ${from}..${to} lost (${String((gap.event.details as { reason?: unknown }).reason ?? 'no reason')}); the controller had already received seq ${from}..${head.seq} of them and keeps them`,
      },
    };
  }

  async #broken(head: AuditHeadRecord, findings: readonly Finding[], now: number): Promise<BatchOutcome> {
    await this.deps.store.putHead({
      ...head,
      status: 'broken',
      findings: [...findings.map((f) => ({ ...f, at: now })), ...head.findings].slice(0, MAX_FINDINGS_KEPT),
      refused: head.refused + 1,
      lastBatchAt: now,
    });
    return { outcome: 'broken', findings };
  }

  /** Not awaited: one slow acknowledgement must not hold up every other device's batches. */
  #sendReceipt(deviceId: string, chain: string, seq: number, head: string): void {
    const receipt = seal(this.deps.key, { typ: RECEIPT_TYPE, sub: deviceId, chain, seq, head }, { ttlSeconds: RECEIPT_TTL_SECONDS, clock: this.deps.clock });
    this.deps.publish(topics.auditReceipt(deviceId), encodeEnvelope(receipt), { qos: 1 }).catch((err) => {
      // The device resends the batch when no receipt comes; the duplicate is answered then.
      this.deps.log.warn({ deviceId, seq, err: describeError(err) }, 'audit receipt not published');
    });
  }
}

function parseEvents(batch: BatchMessage): ParsedEvent[] {
  const out: ParsedEvent[] = [];
  for (const [i, text] of batch.events.entries()) {
    let parsed: ParsedEvent;
    try {
      parsed = parseEventText(text);
    } catch (err) {
      throw new WardError(ErrorCodes.AUDIT_EVENT_INVALID, `batch event #${i}: ${(err as Error).message}`);
    }
    if (parsed.event.chain !== batch.chain) throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `batch event #${i} belongs to chain ${parsed.event.chain}`);
    const prev = out.at(-1);
    if (prev && parsed.event.seq !== prev.event.seq + 1 && !(parsed.event.action === 'audit.gap' && parsed.event.seq > prev.event.seq)) {
      throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `batch events are not contiguous: seq ${prev.event.seq} then ${parsed.event.seq}`);
    }
    // Links inside the batch are checked before anything is compared with the store: together with the
    // checkpoint over the last event they authenticate every event, so an edited copy of a genuine batch
    // is refused as not the device's, and cannot make the device's own verdict look broken.
    if (prev && parsed.event.prev !== prev.hash) {
      throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `batch event seq ${parsed.event.seq} does not link to seq ${prev.event.seq}`);
    }
    out.push(parsed);
  }
  if (batch.checkpoint.payload.chain !== batch.chain) throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, 'the checkpoint belongs to another chain');
  const last = out.at(-1);
  if (last === undefined || last.event.seq !== batch.checkpoint.payload.seq || last.hash !== batch.checkpoint.payload.head) {
    throw new WardError(
      ErrorCodes.AUDIT_BATCH_INVALID,
      `the batch ends at seq ${last?.event.seq} but its checkpoint covers seq ${batch.checkpoint.payload.seq} with another head`,
    );
  }
  return out;
}
