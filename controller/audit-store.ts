import type { Level } from 'level';
import { ErrorCodes, WardError } from '../agent/core/errors.js';
import { type SignedCheckpoint, seqKey } from '../agent/shared/audit/event.js';
import type { Finding } from '../agent/shared/audit/verify.js';

/**
 * What the controller holds of each device's audit chain: every verified
 * event (never pruned here: the controller is the archive), the checkpoints
 * that authenticated them, and one head record with the running verdict.
 * Chains are numbered per device in arrival order, so a restarted chain
 * (which begins again at seq 1) never collides with the one before it.
 */
export interface AuditHeadRecord {
  readonly deviceId: string;
  /** 1 for the first chain received from this device, +1 per accepted restart. */
  readonly chainIndex: number;
  readonly chain: string;
  /** Chains this device has left behind (restarts): a batch of one of them is a replay, never a new restart. */
  readonly pastChains?: readonly string[];
  readonly seq: number;
  readonly head: string;
  readonly session: number;
  readonly lastMono: number;
  /** First seq of the current chain held here (a device may have shipped before this controller existed). */
  readonly firstSeq: number;
  readonly lastCheckpoint: { readonly seq: number; readonly head: string; readonly time: number };
  /** ok: every event received so far verified; warnings: verified, with declared losses or restarts; broken: a signed history contradicts itself. */
  readonly status: 'ok' | 'warnings' | 'broken';
  /** Most recent findings first, bounded. */
  readonly findings: readonly (Finding & { readonly at: number })[];
  readonly events: number;
  readonly batches: number;
  readonly duplicates: number;
  readonly refused: number;
  readonly lastBatchAt: number;
}

export interface StoredAuditEvent {
  readonly chainIndex: number;
  readonly seq: number;
  readonly text: string;
}

export interface AuditStore {
  head(deviceId: string): Promise<AuditHeadRecord | undefined>;
  putHead(head: AuditHeadRecord): Promise<void>;
  eventText(deviceId: string, chainIndex: number, seq: number): Promise<string | undefined>;
  /** Events, head and checkpoint in one durable write. */
  commit(head: AuditHeadRecord, events: readonly { seq: number; text: string }[], checkpoint: SignedCheckpoint): Promise<void>;
  /** Events before the first one held, delivered later (their batch arrived cut short the first time). */
  backfill(deviceId: string, chainIndex: number, events: readonly { seq: number; text: string }[]): Promise<void>;
  /** Events of one chain from `fromSeq`, ascending. */
  events(deviceId: string, chainIndex: number, fromSeq: number, limit: number): Promise<StoredAuditEvent[]>;
  /** The newest `limit` events of one chain, ascending. */
  latest(deviceId: string, chainIndex: number, limit: number): Promise<StoredAuditEvent[]>;
  checkpoints(deviceId: string, chainIndex: number, fromSeq: number, limit: number): Promise<SignedCheckpoint[]>;
  close(): Promise<void>;
}

const chainPart = (i: number) => i.toString().padStart(6, '0');
const eventKey = (d: string, i: number, seq: number) => `e:${d}:${chainPart(i)}:${seqKey(seq)}`;
const checkpointKey = (d: string, i: number, seq: number) => `c:${d}:${chainPart(i)}:${seqKey(seq)}`;
const headKey = (d: string) => `h:${d}`;

export class LevelAuditStore implements AuditStore {
  readonly #db: Level<string, string>;

  private constructor(db: Level<string, string>) {
    this.#db = db;
  }

  static async open(location: string): Promise<LevelAuditStore> {
    const { Level } = await import('level');
    const db = new Level<string, string>(location, { valueEncoding: 'utf8' });
    try {
      await db.open();
    } catch (cause) {
      throw new WardError(ErrorCodes.CONTROLLER_STORE, `audit store ${location} cannot be opened (is another controller using this state folder?)`, {
        cause,
        details: { location },
      });
    }
    return new LevelAuditStore(db);
  }

  async head(deviceId: string) {
    const text = await this.#db.get(headKey(deviceId));
    return text === undefined ? undefined : (JSON.parse(text) as AuditHeadRecord);
  }

  async putHead(head: AuditHeadRecord) {
    await this.#db.put(headKey(head.deviceId), JSON.stringify(head), { sync: true });
  }

  eventText(deviceId: string, chainIndex: number, seq: number) {
    return this.#db.get(eventKey(deviceId, chainIndex, seq));
  }

  async commit(head: AuditHeadRecord, events: readonly { seq: number; text: string }[], checkpoint: SignedCheckpoint) {
    const d = head.deviceId;
    await this.#db.batch(
      [
        ...events.map((e) => ({ type: 'put' as const, key: eventKey(d, head.chainIndex, e.seq), value: e.text })),
        { type: 'put' as const, key: checkpointKey(d, head.chainIndex, checkpoint.payload.seq), value: JSON.stringify(checkpoint) },
        { type: 'put' as const, key: headKey(d), value: JSON.stringify(head) },
      ],
      { sync: true },
    );
  }

  async backfill(deviceId: string, chainIndex: number, events: readonly { seq: number; text: string }[]) {
    await this.#db.batch(
      events.map((e) => ({ type: 'put' as const, key: eventKey(deviceId, chainIndex, e.seq), value: e.text })),
      { sync: true },
    );
  }

  async events(deviceId: string, chainIndex: number, fromSeq: number, limit: number) {
    const out: StoredAuditEvent[] = [];
    const range = { gte: eventKey(deviceId, chainIndex, fromSeq), lt: `e:${deviceId}:${chainPart(chainIndex)}:~`, limit };
    for await (const [key, text] of this.#db.iterator(range)) out.push({ chainIndex, seq: Number(key.slice(key.lastIndexOf(':') + 1)), text });
    return out;
  }

  async latest(deviceId: string, chainIndex: number, limit: number) {
    const out: StoredAuditEvent[] = [];
    const range = { gte: eventKey(deviceId, chainIndex, 0), lt: `e:${deviceId}:${chainPart(chainIndex)}:~`, limit, reverse: true };
    for await (const [key, text] of this.#db.iterator(range)) out.push({ chainIndex, seq: Number(key.slice(key.lastIndexOf(':') + 1)), text });
    return out.reverse();
  }

  async checkpoints(deviceId: string, chainIndex: number, fromSeq: number, limit: number) {
    const out: SignedCheckpoint[] = [];
    const range = { gte: checkpointKey(deviceId, chainIndex, fromSeq), lt: `c:${deviceId}:${chainPart(chainIndex)}:~`, limit };
    for await (const text of this.#db.values(range)) out.push(JSON.parse(text) as SignedCheckpoint);
    return out;
  }

  close() {
    return this.#db.close();
  }
}
