import type { AttestationTpm } from '../../hardware/api/index.js';
import { type Clock, systemClock } from '../core/clock.js';
import { describeError } from '../core/errors.js';
import type { Logger } from '../log.js';
import {
  APP_PCR,
  BOOT_PCRS,
  EVIDENCE_TTL_SECONDS,
  EVIDENCE_TYPE,
  type EvidencePayload,
  entryDigest,
  foldLog,
  type Measurement,
  quoteQualifier,
  type TrustLevel,
} from '../shared/attest/evidence.js';
import { encodeEnvelope, seal } from '../shared/envelope.js';
import type { SigningKey } from '../shared/keys.js';
import { changedMeasurements, type MeasureSources, measure, watchFiles } from './measure.js';

/**
 * The Attester: keeps the measurement log of this agent run, extends each
 * entry into the TPM's application PCR when there is a TPM, re-measures
 * when a measured file changes (and says so at once through `onChange`),
 * and answers a verifier's challenge with evidence signed by the device key,
 * with a TPM quote over the boot PCRs and the application PCR.
 */
export interface AttesterOptions {
  readonly deviceId: string;
  readonly key: SigningKey;
  /** Read at every measurement: the active policy and identity change while the agent runs. */
  readonly sources: () => MeasureSources;
  readonly tpm?: AttestationTpm | undefined;
  readonly clock?: Clock;
  readonly log: Logger;
  readonly claims: () => { bootId: string; wardVersion: string; lifecycle: string };
  /** A measured file changed (the agent reports at once instead of waiting for the next challenge). */
  readonly onChange?: (changed: readonly Measurement[], reason: string) => void;
}

export class Attester {
  readonly #o: AttesterOptions;
  readonly #clock: Clock;
  #log: Measurement[] = [];
  #aggregate: Buffer = Buffer.alloc(32);
  #unwatch: (() => void) | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: AttesterOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  get trust(): TrustLevel {
    return this.#o.tpm ? 'tpm' : 'software';
  }

  get log(): readonly Measurement[] {
    return this.#log;
  }

  get aggregate(): string {
    return this.#aggregate.toString('hex');
  }

  /** Measures everything once; with a TPM, resets the application PCR and extends the log into it. */
  async start(): Promise<void> {
    await this.#serial(async () => {
      const entries = await measure(this.#o.sources());
      if (this.#o.tpm) {
        await this.#o.tpm.resetPcr(APP_PCR);
        for (const m of entries) await this.#o.tpm.extendPcr(APP_PCR, entryDigest(m));
      }
      this.#log = entries;
      this.#aggregate = foldLog(entries);
    });
    const s = this.#o.sources();
    const files = [s.configFile, s.activePolicyFile, s.fleetRootFile, s.executable].filter((f): f is string => f !== undefined);
    this.#unwatch = watchFiles(files, (path) => {
      void this.remeasure(`${path} changed`).catch((err) => this.#o.log.warn({ err: describeError(err) }, 're-measurement failed'));
    });
  }

  stop(): void {
    this.#unwatch?.();
    this.#unwatch = undefined;
  }

  /** Measures again and appends (and extends) what changed; returns the changed entries. */
  async remeasure(reason: string): Promise<Measurement[]> {
    const changed = await this.#serial(async () => {
      const next = await measure(this.#o.sources());
      const diff = changedMeasurements(this.#log, next);
      for (const m of diff) {
        if (this.#o.tpm) await this.#o.tpm.extendPcr(APP_PCR, entryDigest(m));
        this.#log.push(m);
      }
      if (diff.length > 0) this.#aggregate = foldLog(diff, this.#aggregate);
      return diff;
    });
    if (changed.length > 0) {
      this.#o.log.warn({ reason, changed: changed.map((m) => `${m.kind}:${m.name}`) }, 'measurements changed');
      this.#o.onChange?.(changed, reason);
    }
    return changed;
  }

  /** Evidence for a verifier's challenge: re-measures first, so it describes this moment. */
  async evidence(challenge: string): Promise<string> {
    await this.remeasure('challenge');
    return this.#serial(async () => {
      const aggregate = this.aggregate;
      const claims = this.#o.claims();
      const body: Omit<EvidencePayload, 'iat' | 'exp' | 'nonce'> = {
        typ: EVIDENCE_TYPE,
        sub: this.#o.deviceId,
        challenge,
        trust: this.trust,
        log: [...this.#log],
        aggregate,
        claims: {
          bootId: claims.bootId,
          uptimeSeconds: Math.floor(process.uptime()),
          wardVersion: claims.wardVersion,
          nodeVersion: process.version,
          lifecycle: claims.lifecycle,
        },
      };
      if (this.#o.tpm) {
        const q = await this.#o.tpm.quote(quoteQualifier(challenge, aggregate), [...BOOT_PCRS, APP_PCR]);
        const pcrs: Record<string, string> = {};
        for (const [i, v] of Object.entries(q.pcrs)) pcrs[i] = v;
        (body as { tpm?: EvidencePayload['tpm'] }).tpm = { attest: q.attest.toString('base64'), signature: q.signature.toString('base64'), pcrs };
      }
      return encodeEnvelope(seal(this.#o.key, body, { ttlSeconds: EVIDENCE_TTL_SECONDS, clock: this.#clock })).toString('utf8');
    });
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}
