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
  close(): Promise<void>;
}

export class MemoryDeviceStore implements DeviceStore {
  readonly #records = new Map<string, DeviceRecord>();
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

  private constructor(db: Level<string, DeviceRecord>) {
    this.#db = db;
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
  async close() {
    await this.#db.close();
  }
}
