import type { Level } from 'level';
import { ErrorCodes, WardError } from '../agent/core/errors.js';

/**
 * What the controller remembers about each device. Kept behind a small
 * interface so that replicas can move from the embedded LevelDB to a shared
 * database without touching the registry logic; both implementations pass
 * test/conformance/controller-store.ts.
 */
export interface DeviceRecord {
  readonly id: string;
  readonly publicKey: string;
  readonly kid: string;
  readonly registeredAt: number;
  readonly online: boolean;
  readonly lifecycle?: string;
  readonly session?: string;
  readonly stateVersion?: number;
  readonly lwtVersion?: number;
  readonly lastSeen?: number;
  /** The device's announced heartbeat; no state for 3 heartbeats makes it stale. */
  readonly heartbeatSeconds?: number;
  readonly agentVersion?: string;
  readonly protocol?: string;
  readonly plugins?: readonly string[];
  readonly offlineCause?: string;
  /** Enrollment (identity issue): absent for devices listed statically in the controller config. */
  readonly identity?: DeviceIdentityRecord;
}

export interface DeviceIdentityRecord {
  readonly status: 'active' | 'revoked';
  readonly site: string;
  readonly line: string;
  readonly cell: string;
  readonly roles: readonly string[];
  readonly enrolledAt: number;
  /** The enrollment code that admitted it (audit trail). */
  readonly codeId: string;
  /** The current X.509 client certificate: serial (hex) and notAfter (seconds). */
  readonly certSerial: string;
  readonly certNotAfter: number;
  /** base64url SHA-256 of the TLS public key (SPKI) the certificate binds. */
  readonly tlsKeyFingerprint: string;
  /** Every serial ever issued, so a revocation lists them all in the CRL. */
  readonly serials: readonly string[];
  readonly revokedAt?: number;
  readonly revokeReason?: string;
}

/**
 * A one-time enrollment code. Only a hash of its token is kept: the token
 * itself exists on the printed label and nowhere else. `mosquittoHash` is
 * the token in Mosquitto's password-file format, for external brokers.
 */
export interface EnrollmentCode {
  readonly codeId: string;
  readonly tokenHash: string;
  readonly mosquittoHash?: string;
  readonly site: string;
  readonly line: string;
  readonly cell: string;
  readonly createdAt: number;
  readonly exp: number;
  readonly status: 'open' | 'used' | 'withdrawn';
  readonly usedBy?: string;
  readonly usedAt?: number;
  /** Claim flow: the code may only be used by this device key (kid) and id. */
  readonly boundKid?: string;
  readonly boundDeviceId?: string;
  readonly claimId?: string;
}

/** A gateway's claim QR scanned by an operator (the reverse flow); confirmed, it gets a bound enrollment code. */
export interface ClaimRecord {
  readonly claimId: string;
  readonly deviceId: string;
  readonly kid: string;
  /** Hash of the claim code, the password of the claim's broker account. */
  readonly claimCodeHash: string;
  readonly mosquittoHash?: string;
  readonly status: 'pending' | 'confirmed' | 'done';
  readonly scannedAt: number;
  readonly confirmedAt?: number;
  readonly codeId?: string;
  readonly exp?: number;
}

const deviceLocks = new WeakMap<DeviceStore, Map<string, Promise<unknown>>>();

/**
 * Read-modify-write of one device record, serialised per device across
 * everything that writes it (the registry's state messages, enrollment,
 * renewal, revocation): `change` gets the record as stored now, and returns
 * the one to store, or undefined to store nothing. Without it, a heartbeat
 * read before a revocation and written after it made the device active again.
 * Per process: replicas sharing a database need the database's own
 * transaction.
 */
export async function updateDevice<T>(
  store: DeviceStore,
  id: string,
  change: (current: DeviceRecord | undefined) => Promise<{ next?: DeviceRecord; result: T }> | { next?: DeviceRecord; result: T },
): Promise<T> {
  let locks = deviceLocks.get(store);
  if (locks === undefined) {
    locks = new Map();
    deviceLocks.set(store, locks);
  }
  const previous = locks.get(id) ?? Promise.resolve();
  const run = previous.then(async () => {
    const { next, result } = await change(await store.get(id));
    if (next !== undefined) await store.put(next);
    return result;
  });
  const settled = run.catch(() => undefined);
  locks.set(id, settled);
  void settled.then(() => {
    if (locks.get(id) === settled) locks.delete(id);
  });
  return run;
}

/**
 * Liveness as the controller reports it: a device that said "online" but has
 * been silent for 3 of its own heartbeats is stale, not online.
 */
export function isStale(d: DeviceRecord, nowMs: number): boolean {
  return d.online && d.lastSeen !== undefined && d.heartbeatSeconds !== undefined && nowMs / 1000 - d.lastSeen > 3 * d.heartbeatSeconds;
}

export function isLive(d: DeviceRecord, nowMs: number): boolean {
  return d.online && !isStale(d, nowMs);
}

export interface DeviceStore {
  get(id: string): Promise<DeviceRecord | undefined>;
  put(record: DeviceRecord): Promise<void>;
  list(): Promise<DeviceRecord[]>;
  getCode(codeId: string): Promise<EnrollmentCode | undefined>;
  putCode(code: EnrollmentCode): Promise<void>;
  listCodes(): Promise<EnrollmentCode[]>;
  getClaim(claimId: string): Promise<ClaimRecord | undefined>;
  putClaim(claim: ClaimRecord): Promise<void>;
  listClaims(): Promise<ClaimRecord[]>;
  close(): Promise<void>;
}

export class MemoryDeviceStore implements DeviceStore {
  readonly #records = new Map<string, DeviceRecord>();
  readonly #codes = new Map<string, EnrollmentCode>();
  readonly #claims = new Map<string, ClaimRecord>();
  async getClaim(claimId: string) {
    return this.#claims.get(claimId);
  }
  async putClaim(claim: ClaimRecord) {
    this.#claims.set(claim.claimId, structuredClone(claim));
  }
  async listClaims() {
    return [...this.#claims.values()].sort((a, b) => a.claimId.localeCompare(b.claimId));
  }
  async getCode(codeId: string) {
    return this.#codes.get(codeId);
  }
  async putCode(code: EnrollmentCode) {
    this.#codes.set(code.codeId, structuredClone(code));
  }
  async listCodes() {
    return [...this.#codes.values()].sort((a, b) => a.codeId.localeCompare(b.codeId));
  }
  async get(id: string) {
    return this.#records.get(id);
  }
  async put(record: DeviceRecord) {
    this.#records.set(record.id, structuredClone(record));
  }
  async list() {
    return [...this.#records.values()].sort((a, b) => a.id.localeCompare(b.id));
  }
  async close() {}
}

export class LevelDeviceStore implements DeviceStore {
  readonly #db: Level<string, DeviceRecord>;
  readonly #codes: Level<string, EnrollmentCode>;
  readonly #claims: Level<string, ClaimRecord>;

  private constructor(db: Level<string, DeviceRecord>) {
    this.#db = db;
    // One database, one JSON encoding, disjoint key prefixes: device:, code:, claim:.
    this.#codes = db as unknown as Level<string, EnrollmentCode>;
    this.#claims = db as unknown as Level<string, ClaimRecord>;
  }
  async getClaim(claimId: string) {
    return (await this.#claims.get(`claim:${claimId}`)) ?? undefined;
  }
  async putClaim(claim: ClaimRecord) {
    await this.#claims.put(`claim:${claim.claimId}`, claim, { sync: true });
  }
  async listClaims() {
    const out: ClaimRecord[] = [];
    for await (const value of this.#claims.values({ gte: 'claim:', lt: 'claim;' })) out.push(value);
    return out;
  }

  static async open(location: string): Promise<LevelDeviceStore> {
    // Loaded on first use: in the single binary this extracts and dlopens the LevelDB addon, which
    // commands that never open a store (`ward --version`, the agent today) should not pay for.
    const { Level } = await import('level');
    const db = new Level<string, DeviceRecord>(location, { valueEncoding: 'json' });
    try {
      await db.open();
    } catch (cause) {
      const locked = String((cause as { cause?: { message?: string } }).cause?.message ?? '').includes('lock');
      throw new WardError(
        ErrorCodes.CONTROLLER_STORE,
        locked
          ? `device store ${location} is in use by another process (is a controller already running on this state folder?)`
          : `device store ${location} cannot be opened`,
        { cause, details: { location } },
      );
    }
    return new LevelDeviceStore(db);
  }

  async get(id: string) {
    return (await this.#db.get(`device:${id}`)) ?? undefined;
  }
  async put(record: DeviceRecord) {
    await this.#db.put(`device:${record.id}`, record, { sync: true });
  }
  async list() {
    const out: DeviceRecord[] = [];
    for await (const value of this.#db.values({ gte: 'device:', lt: 'device;' })) out.push(value);
    return out;
  }
  async getCode(codeId: string) {
    return (await this.#codes.get(`code:${codeId}`)) ?? undefined;
  }
  async putCode(code: EnrollmentCode) {
    await this.#codes.put(`code:${code.codeId}`, code, { sync: true });
  }
  async listCodes() {
    const out: EnrollmentCode[] = [];
    for await (const value of this.#codes.values({ gte: 'code:', lt: 'code;' })) out.push(value);
    return out;
  }
  async close() {
    await this.#db.close();
  }
}
