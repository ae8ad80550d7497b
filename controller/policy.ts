import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AuditSink } from '../agent/core/audit.js';
import { type Clock, systemClock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, WardError } from '../agent/core/errors.js';
import { encodeEnvelope, seal } from '../agent/shared/envelope.js';
import type { SigningKey } from '../agent/shared/keys.js';
import { POLICY_TTL_SECONDS, POLICY_TYPE } from '../agent/shared/policy/message.js';
import { checkPolicy } from '../agent/shared/policy/model.js';
import { isDeviceId, topics } from '../agent/shared/topics.js';
import { ensurePrivateDir, writeFileAtomic } from '../agent/state/files.js';
import { builtinProtocols } from '../plugins/index.js';

/**
 * The controller's side of segmentation: checks a policy, signs it for one
 * device with a version newer than any before, and publishes it retained on
 * the device's `policy` topic, so a gateway that was offline gets it on
 * reconnect. Versions are at least the current Unix time in seconds, so a
 * second replica (or a restored backup) never issues a version the gateway
 * would refuse as a rollback.
 */
export interface PolicyServiceOptions {
  readonly dir: string;
  readonly key: SigningKey;
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 1; retain: boolean }) => Promise<void>;
  readonly audit: AuditSink;
  readonly clock?: Clock;
}

export interface PublishedPolicy {
  readonly deviceId: string;
  readonly version: number;
  readonly digest: string;
  readonly name: string;
  readonly publishedAt: number;
  readonly actor: string;
  readonly policy: Record<string, unknown>;
  /**
   * False while the broker has not taken it (the controller was not connected, or lost the broker mid-send): it is
   * sent again, with the same version, when the controller connects. Absent in records from before this field.
   */
  readonly delivered?: boolean;
}

export class PolicyService {
  readonly #o: PolicyServiceOptions;
  readonly #clock: Clock;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: PolicyServiceOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  async current(deviceId: string): Promise<PublishedPolicy | undefined> {
    if (!isDeviceId(deviceId)) return undefined;
    try {
      return JSON.parse(await readFile(join(this.#o.dir, `${deviceId}.json`), 'utf8')) as PublishedPolicy;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Checks, signs and publishes; one at a time, so versions are strictly increasing. */
  publish(deviceId: string, policy: unknown, actor: string): Promise<PublishedPolicy> {
    const run = this.#queue.then(() => this.#publish(deviceId, policy, actor));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #publish(deviceId: string, data: unknown, actor: string): Promise<PublishedPolicy> {
    let validated: ReturnType<typeof checkPolicy>;
    try {
      validated = checkPolicy(data, { protocols: builtinProtocols() });
    } catch (err) {
      this.#o.audit.record({
        category: 'request-error',
        actor,
        action: 'policy.publish',
        target: deviceId,
        outcome: 'refused',
        code: (err as WardError).code ?? ErrorCodes.POLICY_INVALID,
        details: { message: describeError(err) },
      });
      throw err;
    }
    await ensurePrivateDir(this.#o.dir);
    const previous = await this.current(deviceId);
    const nowSec = Math.floor(this.#clock.now() / 1000);
    const version = Math.max((previous?.version ?? 0) + 1, nowSec);
    const record: PublishedPolicy = {
      deviceId,
      version,
      digest: validated.digest,
      name: validated.policy.name,
      publishedAt: this.#clock.now(),
      actor,
      policy: validated.policy as unknown as Record<string, unknown>,
      delivered: false,
    };
    // Recorded before it is sent: a crash in between re-publishes a newer version, never reuses this one.
    await this.#save(record);
    const details = {
      version,
      digest: validated.digest,
      name: validated.policy.name,
      modes: validated.policy.zones.map((z) => `${z.name}:${z.mode ?? validated.policy.mode}`),
    };
    return this.#deliver(record, actor, details);
  }

  /**
   * Sends every policy the broker has not taken yet (on each connection of the controller's session). Until then
   * the gateway runs its older policy, and attestation expects the newer one (controller/attestation.ts gives a
   * policy in flight `staleAfterSeconds`): a policy left undelivered would end in a false quarantine.
   */
  redeliver(): Promise<number> {
    const run = this.#queue.then(async () => {
      let sent = 0;
      const files = await readdir(this.#o.dir).catch(() => [] as string[]);
      for (const file of files.filter((f) => f.endsWith('.json'))) {
        const record = await this.current(file.slice(0, -'.json'.length)).catch(() => undefined);
        if (record?.delivered !== false) continue;
        const delivered = await this.#deliver(record, 'controller', { version: record.version, digest: record.digest, name: record.name, redelivery: true });
        if (delivered.delivered) sent++;
        else break; // not connected after all: the next connection tries again
      }
      return sent;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #save(record: PublishedPolicy): Promise<void> {
    await writeFileAtomic(join(this.#o.dir, `${record.deviceId}.json`), `${JSON.stringify(record)}\n`);
  }

  /** Signs (again, for a redelivery: same version, fresh lifetime) and publishes retained; audits either way. */
  async #deliver(record: PublishedPolicy, actor: string, details: Record<string, unknown>): Promise<PublishedPolicy> {
    const envelope = seal(
      this.#o.key,
      { typ: POLICY_TYPE, sub: record.deviceId, policy: record.policy },
      {
        ttlSeconds: POLICY_TTL_SECONDS,
        version: record.version,
        clock: this.#clock,
      },
    );
    try {
      await this.#o.publish(topics.policy(record.deviceId), encodeEnvelope(envelope), { qos: 1, retain: true });
    } catch (err) {
      this.#o.audit.record({
        category: 'configuration-change',
        actor,
        action: 'policy.publish',
        target: record.deviceId,
        outcome: 'failure',
        code: ErrorCodes.CONTROLLER_POLICY_UNDELIVERED,
        details: { ...details, error: describeError(err), retry: 'when the controller is connected to the broker again' },
      });
      return record;
    }
    const delivered: PublishedPolicy = { ...record, delivered: true };
    await this.#save(delivered);
    this.#o.audit.record({ category: 'configuration-change', actor, action: 'policy.publish', target: record.deviceId, outcome: 'success', details });
    return delivered;
  }
}

export function policyNotFound(deviceId: string): WardError {
  return new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `no policy published for ${deviceId}`);
}
