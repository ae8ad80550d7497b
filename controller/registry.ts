import type { AuditSink } from '../agent/core/audit.js';
import type { Clock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, WardError } from '../agent/core/errors.js';
import { EnvelopeVerifier, type KeyResolver, MemoryReplayCache, MemoryVersionLedger } from '../agent/shared/envelope.js';
import { keyIdOf, publicKeyFromRaw } from '../agent/shared/keys.js';
import { decodePayload, STATE_TYPE, statePayload } from '../agent/shared/messages.js';
import { parseDeviceTopic } from '../agent/shared/topics.js';
import { type DeviceRecord, type DeviceStore, updateDevice } from './store.js';

/**
 * The controller's view of its devices: which keys it trusts, and each
 * device's last authenticated state. Every inbound device message passes the
 * envelope verifier with the device's own key before it can change a record;
 * refusals are counted by error code (and become audit events with the audit
 * issue). Handling is serialised per controller so version checks and store
 * writes happen in arrival order.
 */
export type StateOutcome = 'applied' | 'stale-lwt' | 'duplicate' | 'rejected';

export interface StateEvent {
  readonly deviceId: string;
  readonly outcome: StateOutcome;
  readonly code?: string;
}

export class DeviceRegistry {
  readonly #byKid = new Map<string, { id: string; publicKey: ReturnType<typeof publicKeyFromRaw> }>();
  readonly #rejections = new Map<string, number>();
  readonly #listeners = new Set<(e: StateEvent) => void>();
  readonly #verifier: EnvelopeVerifier;
  /** Versions last accepted per stream, seeded from the store so a restart does not reopen replays. */
  readonly #ledger = new MemoryVersionLedger();
  #queue: Promise<unknown> = Promise.resolve();
  #handled = 0;

  private constructor(
    private readonly store: DeviceStore,
    private readonly clock: Clock,
    private readonly log: { warn: (o: object, m?: string) => void; info: (o: object, m?: string) => void },
    private readonly audit: AuditSink | undefined,
  ) {
    const keys: KeyResolver = (kid) => {
      const entry = this.#byKid.get(kid);
      return entry ? { publicKey: entry.publicKey, principal: entry.id } : undefined;
    };
    this.#verifier = new EnvelopeVerifier({ keys, clock, replay: new MemoryReplayCache(), versions: this.#ledger });
  }

  static async open(options: {
    store: DeviceStore;
    clock: Clock;
    devices: readonly { id: string; publicKey: string }[];
    log: { warn: (o: object, m?: string) => void; info: (o: object, m?: string) => void };
    audit?: AuditSink;
  }): Promise<DeviceRegistry> {
    const registry = new DeviceRegistry(options.store, options.clock, options.log, options.audit);
    for (const d of options.devices) await registry.register(d.id, d.publicKey);
    for (const record of await options.store.list()) registry.trust(record);
    return registry;
  }

  /**
   * Marks every device offline with `cause`. Used when the controller's own
   * embedded broker (re)starts: every connection to it is gone, so a stored
   * "online" is known to be false until the device says otherwise.
   */
  async markAllOffline(cause: string): Promise<number> {
    let changed = 0;
    for (const record of await this.store.list()) {
      if (!record.online) continue;
      await this.store.put({ ...record, online: false, offlineCause: cause });
      changed++;
    }
    return changed;
  }

  get verifier(): EnvelopeVerifier {
    return this.#verifier;
  }

  /** The trusted device keys, for verifiers of their own (attestation evidence). */
  get keys(): KeyResolver {
    return (kid) => {
      const entry = this.#byKid.get(kid);
      return entry ? { publicKey: entry.publicKey, principal: entry.id } : undefined;
    };
  }

  /** Messages handled (any outcome), for diagnostics and the replica test. */
  get handledCount(): number {
    return this.#handled;
  }

  rejections(): Record<string, number> {
    return Object.fromEntries(this.#rejections);
  }

  onState(listener: (e: StateEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Trusts a device key (pre-registration until enrollment exists). Keeps any known state. */
  async register(id: string, publicKey: string): Promise<DeviceRecord> {
    const kid = keyIdOf(publicKey);
    const existing = await this.store.get(id);
    const record: DeviceRecord =
      existing && existing.publicKey === publicKey ? existing : { id, publicKey, kid, registeredAt: Math.floor(this.clock.now() / 1000), online: false };
    if (record !== existing) await this.store.put(record);
    this.trust(record);
    return record;
  }

  async list(): Promise<DeviceRecord[]> {
    return this.store.list();
  }

  async get(id: string): Promise<DeviceRecord | undefined> {
    return this.store.get(id);
  }

  /** Feeds one message from `ward/v1/+/state`. Never throws: outcomes are returned and counted. */
  handleState(topic: string, payload: Buffer, retained: boolean): Promise<StateEvent> {
    const run = this.#queue.then(() => this.#handleState(topic, payload, retained));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #handleState(topic: string, payload: Buffer, retained: boolean): Promise<StateEvent> {
    this.#handled++;
    const parsed = parseDeviceTopic(topic);
    const deviceId = parsed?.deviceId ?? '(invalid)';
    let event: StateEvent;
    try {
      if (parsed === undefined || parsed.suffix !== 'state') throw new WardError(ErrorCodes.ENVELOPE_MALFORMED, `not a device state topic: ${topic}`);
      const verified = this.#verifier.verify(payload, {
        typ: STATE_TYPE,
        principal: deviceId,
        subject: deviceId,
        stream: (p) => `${deviceId}/state${p.cause === 'lwt' ? '/lwt' : ''}`,
      });
      const state = decodePayload(statePayload, verified.payload);
      event = await updateDevice(this.store, deviceId, (record) => {
        if (record === undefined) throw new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `device ${deviceId} has no record`);
        if (state.cause === 'lwt' && record.session !== undefined && record.session !== state.session) {
          // A Will from an older connection reaching us after the device reconnected: the device is not offline.
          return { result: { deviceId, outcome: 'stale-lwt' } as StateEvent };
        }
        // Only what a state message says is written; identity and the rest stay as stored now (a revocation made
        // while this message was verified is kept).
        const { offlineCause: _previousCause, ...current } = record;
        const next: DeviceRecord = {
          ...current,
          online: state.online,
          lifecycle: state.lifecycle,
          session: state.session,
          ...(state.cause === 'lwt' ? { lwtVersion: state.version } : { stateVersion: state.version }),
          lastSeen: Math.floor(this.clock.now() / 1000),
          heartbeatSeconds: state.heartbeatSeconds,
          agentVersion: state.agentVersion,
          protocol: state.protocol,
          plugins: state.plugins,
          ...(state.online ? {} : { offlineCause: state.cause ?? 'reported' }),
        };
        if (record.online !== next.online) this.log.info({ deviceId, online: next.online, cause: state.cause }, 'device state changed');
        return { next, result: { deviceId, outcome: 'applied' } as StateEvent };
      });
    } catch (err) {
      const code = err instanceof WardError ? err.code : 'WARD_UNEXPECTED';
      const details = err instanceof WardError ? err.details : {};
      if (retained && code === ErrorCodes.ENVELOPE_ROLLBACK && details.version === details.last) {
        // The retained copy of a state we already applied before a restart.
        event = { deviceId, outcome: 'duplicate' };
      } else {
        this.#rejections.set(code, (this.#rejections.get(code) ?? 0) + 1);
        this.log.warn({ deviceId, topic, code, err: describeError(err) }, 'device message refused');
        // The sender is unauthenticated until the signature checked out: the topic names a target, not an actor.
        this.audit?.record({
          category: code === ErrorCodes.ENVELOPE_BAD_SIGNATURE || code === ErrorCodes.ENVELOPE_UNKNOWN_KEY ? 'access-control' : 'request-error',
          actor: 'unknown',
          action: 'link.state',
          target: deviceId,
          outcome: 'refused',
          code,
          details: { message: (err as Error).message },
        });
        event = { deviceId, outcome: 'rejected', code };
      }
    }
    for (const listener of this.#listeners) listener(event);
    return event;
  }

  /** The key a device currently signs with, if it is trusted (not revoked, not unknown). */
  keyOf(deviceId: string): { kid: string; publicKey: ReturnType<typeof publicKeyFromRaw> } | undefined {
    for (const [kid, entry] of this.#byKid) if (entry.id === deviceId) return { kid, publicKey: entry.publicKey };
    return undefined;
  }

  /** Accepts messages signed by this record's key from now on; a revoked device is never trusted. */
  trust(record: DeviceRecord): void {
    if (record.identity?.status === 'revoked') {
      this.untrust(record.id);
      return;
    }
    for (const [kid, entry] of this.#byKid) if (entry.id === record.id && kid !== record.kid) this.#byKid.delete(kid);
    this.#byKid.set(record.kid, { id: record.id, publicKey: publicKeyFromRaw(record.publicKey) });
    if (record.stateVersion !== undefined) this.#ledger.accept(`${record.id}/state`, record.stateVersion);
    if (record.lwtVersion !== undefined) this.#ledger.accept(`${record.id}/state/lwt`, record.lwtVersion);
  }

  untrust(deviceId: string): void {
    for (const [kid, entry] of this.#byKid) if (entry.id === deviceId) this.#byKid.delete(kid);
  }
}
