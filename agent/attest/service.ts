import { join } from 'node:path';
import type { AttestationTpm } from '../../hardware/api/index.js';
import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import type { Logger } from '../log.js';
import { type Measurement, type VerdictParams, verdictParams } from '../shared/attest/evidence.js';
import { encodeEnvelope, seal } from '../shared/envelope.js';
import type { SigningKey } from '../shared/keys.js';
import type { RpcServer } from '../shared/rpc.js';
import { topics } from '../shared/topics.js';
import { Attester } from './attester.js';
import type { MeasureSources } from './measure.js';

/**
 * The agent's side of attestation on its control link: the Attester, the
 * controller's commands (`attest` with a challenge, `attest.identity` and
 * `attest.activate` for TPM key registration, `attest.verdict`), and the
 * `attest/notify` message that asks for a challenge as soon as a measured
 * file changes.
 */
export const NOTIFY_TYPE = 'ward.attest.notify';

export interface AgentAttestationOptions {
  readonly deviceId: string;
  readonly key: SigningKey;
  readonly sources: () => MeasureSources;
  readonly tpm: AttestationTpm | undefined;
  readonly clock: Clock;
  readonly log: Logger;
  readonly audit: AuditSink;
  readonly claims: () => { bootId: string; wardVersion: string; lifecycle: string };
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 1 }) => Promise<void>;
  /** Applies a verdict (lifecycle, enforcement); returns the lifecycle state after it. */
  readonly onVerdict: (verdict: VerdictParams) => Promise<string>;
}

export class AgentAttestation {
  readonly attester: Attester;
  readonly #o: AgentAttestationOptions;

  constructor(o: AgentAttestationOptions) {
    this.#o = o;
    this.attester = new Attester({
      deviceId: o.deviceId,
      key: o.key,
      sources: o.sources,
      tpm: o.tpm,
      clock: o.clock,
      log: o.log,
      claims: o.claims,
      onChange: (changed, reason) => void this.#notify(changed, reason),
    });
  }

  async start(): Promise<void> {
    try {
      await this.attester.start();
      this.#o.log.info({ trust: this.attester.trust, entries: this.attester.log.length, aggregate: this.attester.aggregate }, 'measured');
    } catch (err) {
      // Without measurements the agent cannot answer challenges: the controller will see it degrade. Say why here.
      this.#o.log.error({ err: describeError(err) }, 'attestation could not measure this agent');
      this.#o.audit.record({
        category: 'control-system',
        actor: 'ward-agent',
        action: 'attest.measure',
        outcome: 'failure',
        code: ErrorCodes.ATTEST_UNAVAILABLE,
        details: { error: describeError(err) },
      });
    }
  }

  stop(): void {
    this.attester.stop();
  }

  register(rpc: RpcServer): void {
    rpc.register('attest', async (params) => {
      const challenge = params.challenge;
      if (typeof challenge !== 'string' || !/^[A-Za-z0-9_-]{16,64}$/.test(challenge)) {
        throw new WardError(ErrorCodes.ATTEST_EVIDENCE_INVALID, 'a challenge is 16-64 base64url characters');
      }
      return { evidence: await this.attester.evidence(challenge) };
    });
    rpc.register('attest.identity', async () => {
      const tpm = this.#o.tpm;
      if (!tpm) return { tpm: false };
      return { tpm: true, ...(await tpm.identity()) };
    });
    rpc.register('attest.activate', async (params) => {
      const tpm = this.#o.tpm;
      if (!tpm) throw new WardError(ErrorCodes.ATTEST_UNAVAILABLE, 'this gateway has no TPM');
      if (typeof params.credential !== 'string' || params.credential.length > 8192)
        throw new WardError(ErrorCodes.ATTEST_EVIDENCE_INVALID, 'credential missing or too large');
      const secret = await tpm.activateCredential(Buffer.from(params.credential, 'base64'));
      return { secret: secret.toString('base64') };
    });
    rpc.register('attest.verdict', async (params) => {
      const parsed = verdictParams.safeParse(params);
      if (!parsed.success) throw new WardError(ErrorCodes.ATTEST_EVIDENCE_INVALID, `malformed verdict: ${parsed.error.issues[0]?.message}`);
      const verdict = parsed.data;
      const lifecycle = await this.#o.onVerdict(verdict);
      this.#o.audit.record({
        category: verdict.state === 'quarantined' ? 'access-control' : 'control-system',
        actor: 'controller',
        action: 'attest.verdict',
        target: this.#o.deviceId,
        outcome: verdict.state === 'active' || verdict.state === 'attesting' ? 'success' : 'failure',
        ...(verdict.state === 'quarantined' ? { code: ErrorCodes.ATTEST_FAILED } : {}),
        details: { state: verdict.state, reasons: verdict.reasons, lifecycle },
      });
      return { lifecycle };
    });
  }

  /** `ward attest now`: measure again and ask the controller for a challenge, changed or not. */
  async reportNow(actor: string): Promise<Measurement[]> {
    const changed = await this.attester.remeasure(`requested by ${actor}`);
    // A change already notified through onChange; with none, ask anyway: the technician wants a verdict now.
    if (changed.length === 0) await this.#notify([], `requested by ${actor}`);
    return changed;
  }

  async #notify(changed: readonly Measurement[], reason: string): Promise<void> {
    if (changed.length > 0)
      this.#o.audit.record({
        category: 'configuration-change',
        actor: 'ward-agent',
        action: 'attest.measurement-changed',
        target: this.#o.deviceId,
        outcome: 'success',
        details: { reason, changed: changed.map((m) => ({ kind: m.kind, name: m.name, sha256: m.sha256 })) },
      });
    const envelope = seal(
      this.#o.key,
      { typ: NOTIFY_TYPE, sub: this.#o.deviceId, changed: changed.map((m) => `${m.kind}:${m.name}`).slice(0, 32) },
      { ttlSeconds: 60, clock: this.#o.clock },
    );
    await this.#o
      .publish(topics.attestNotify(this.#o.deviceId), encodeEnvelope(envelope), { qos: 1 })
      .catch((err) =>
        this.#o.log.warn({ err: describeError(err) }, 'could not tell the controller that measurements changed; the next challenge will show it'),
      );
  }
}

/** The measurement sources of this agent, from its config (read at every measurement). */
export function measureSourcesFor(input: {
  configFile: string | undefined;
  config: unknown;
  stateDir: string;
  plugins: readonly { name: string; enabled: boolean; config: unknown }[];
  pluginVersions: ReadonlyMap<string, string>;
  fleetRootFile: string | undefined;
  controllerPublicKey: string | undefined;
}): MeasureSources {
  return {
    configFile: input.configFile,
    configObject: input.config,
    activePolicyFile: join(input.stateDir, 'enforce', 'active.json'),
    plugins: input.plugins.filter((p) => p.enabled).map((p) => ({ name: p.name, version: input.pluginVersions.get(p.name) ?? 'unknown', config: p.config })),
    fleetRootFile: input.fleetRootFile,
    controllerPublicKey: input.controllerPublicKey,
  };
}
