import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { NOTIFY_TYPE } from '../agent/attest/service.js';
import type { AuditSink } from '../agent/core/audit.js';
import { type Clock, systemClock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, WardError } from '../agent/core/errors.js';
import type { Logger } from '../agent/log.js';
import { NO_POLICY_DIGEST, type TrustState } from '../agent/shared/attest/evidence.js';
import { parseAkPublic } from '../agent/shared/attest/quote.js';
import { EnvelopeVerifier, type KeyResolver, MemoryReplayCache } from '../agent/shared/envelope.js';
import { isDeviceId } from '../agent/shared/topics.js';
import { ensurePrivateDir, readJsonFile, writeFileAtomic } from '../agent/state/files.js';
import { type Appraisal, appraise, baselineOf, type Finding } from './verifier.js';

/**
 * The Verifier's service (RFC 9334): challenges each online gateway on a
 * schedule (and at once when it reports a change), appraises its evidence
 * (verifier.ts), keeps the result, and tells the gateway its trust state:
 * - pass → `active` (a quarantined gateway stays quarantined until an
 *   operator approves its measurements: quarantine is never lifted by the
 *   gateway's own say-so);
 * - authentic evidence that shows a change, a bad quote, or a TPM gateway
 *   answering without its TPM → `quarantined`;
 * - no acceptable evidence for `staleAfterSeconds` → `degraded`.
 * The first passing evidence of a gateway becomes its approved baseline
 * (said in an audit event); an operator approves a new one after a planned
 * change. Every transition is an audit event here, and the gateway records
 * the verdict it receives.
 *
 * TPM gateways register their attestation key once: the controller makes a
 * credential for the gateway's EK and AK name, and only a TPM holding both
 * can recover its secret (TPM2_ActivateCredential). From then on the gateway
 * must answer with quotes from that AK.
 */
export interface AttestationConfig {
  readonly intervalSeconds: number;
  readonly staleAfterSeconds: number;
  /** sha256 of released executables (the build's dist/manifest.json lists them). */
  readonly executables: readonly string[];
  /** Build manifests to take executable references from (`targets.*.sha256`). */
  readonly manifests: readonly string[];
}

export interface AttestationDeps {
  readonly dir: string;
  readonly config: AttestationConfig;
  readonly keys: KeyResolver;
  readonly call: (deviceId: string, method: string, params: Record<string, unknown>, timeoutMs?: number) => Promise<unknown>;
  readonly onlineDevices: () => Promise<string[]>;
  readonly policyDigest: (deviceId: string) => Promise<string | undefined>;
  /** Verifier side of credential activation (tpm2_makecredential); absent: TPM gateways cannot register here. */
  readonly makeCredential?: (input: { ekPublicPem: string; akName: string; secret: Buffer }) => Promise<Buffer>;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly clock?: Clock;
}

/** Enough for an operator publishing a few corrections in a row while a gateway is offline for a moment. */
const POLICY_RECENT_MAX = 8;

const findingSchema = z.object({
  check: z.string(),
  message: z.string(),
  name: z.string().optional(),
  expected: z.string().optional(),
  actual: z.string().optional(),
});
const recordSchema = z.object({
  deviceId: z.string(),
  state: z.enum(['attesting', 'active', 'degraded', 'quarantined']),
  since: z.number(),
  reasons: z.array(z.string()),
  lastPassAt: z.number().optional(),
  lastEvidenceAt: z.number().optional(),
  trust: z.enum(['tpm', 'software']).optional(),
  baseline: z.record(z.string(), z.string()).optional(),
  baselineApprovedBy: z.string().optional(),
  measurements: z.record(z.string(), z.string()).optional(),
  claims: z.record(z.string(), z.unknown()).optional(),
  ak: z.object({ publicPem: z.string(), akName: z.string(), ekPublicPem: z.string(), registeredAt: z.number() }).optional(),
  software: z.boolean().optional(),
  policySeen: z.object({ digest: z.string(), since: z.number() }).optional(),
  /** Policies superseded a moment ago, each accepted until `until` (the gateway may not have applied the newer yet). */
  policyRecent: z
    .array(z.object({ digest: z.string(), until: z.number() }))
    .max(POLICY_RECENT_MAX)
    .optional(),
  /** Written by earlier versions (one superseded policy); read into `policyRecent`. */
  policyPrevious: z.object({ digest: z.string(), until: z.number() }).optional(),
  /** Set on the returned record only (not stored): this challenge stopped at a failed key registration. */
  registrationFailed: z.boolean().optional(),
  unanswered: z.boolean().optional(),
  history: z.array(z.object({ at: z.number(), outcome: z.string(), state: z.string(), findings: z.array(findingSchema) })),
});
export type AttestationRecord = z.infer<typeof recordSchema>;

const HISTORY = 20;
const HEALTH = 'health alarm: ';

export class AttestationService {
  readonly #d: AttestationDeps;
  readonly #clock: Clock;
  readonly #outstanding = new Map<string, { value: string; issuedAt: number }>();
  readonly #running = new Map<string, Promise<AttestationRecord>>();
  readonly #locks = new Map<string, Promise<unknown>>();
  #executables = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  /** Health alarms (telemetry.ts) that hold a gateway at `degraded` whatever its evidence says, by device. */
  readonly #health = new Map<string, readonly string[]>();
  readonly #notifyVerifier: EnvelopeVerifier;

  constructor(deps: AttestationDeps) {
    this.#d = deps;
    this.#clock = deps.clock ?? systemClock;
    this.#notifyVerifier = new EnvelopeVerifier({ keys: deps.keys, clock: this.#clock, replay: new MemoryReplayCache() });
  }

  async start(): Promise<void> {
    await ensurePrivateDir(this.#d.dir);
    this.#executables = new Set(this.#d.config.executables);
    for (const file of this.#d.config.manifests) {
      try {
        const manifest = JSON.parse(await readFile(file, 'utf8')) as { targets?: Record<string, { sha256?: string }> };
        for (const t of Object.values(manifest.targets ?? {})) if (t.sha256) this.#executables.add(t.sha256);
      } catch (err) {
        this.#d.log.error({ file, err: describeError(err) }, 'attestation: cannot read a release manifest; its executables are not reference values');
      }
    }
    this.#timer = setInterval(
      () => void this.sweep().catch((err) => this.#d.log.warn({ err: describeError(err) }, 'attestation sweep failed')),
      this.#d.config.intervalSeconds * 1000,
    );
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** One round: challenge every online gateway, then mark those without fresh passing evidence degraded. */
  async sweep(): Promise<void> {
    const online = await this.#d.onlineDevices();
    await Promise.all(online.map((id) => this.challenge(id, 'scheduled').catch(() => undefined)));
    for (const id of online) {
      // Read and written under the device's lock, like every other change of its record: read outside it, a
      // quarantine saved meanwhile by a challenge would be overwritten with `degraded`, which passing evidence lifts
      // without an operator's approval.
      await this.#exclusive(id, async () => {
        const now = this.#clock.now();
        const r = await this.get(id).catch(() => undefined);
        const last = r?.lastPassAt ?? r?.since ?? now;
        if (r && r.state === 'active' && now - last > this.#d.config.staleAfterSeconds * 1000) {
          await this.#transition(r, 'degraded', [`no passing evidence for ${Math.round((now - last) / 1000)} s`], 'controller');
        }
      }).catch((err) => this.#d.log.warn({ deviceId: id, err: describeError(err) }, 'stale-evidence check failed'));
    }
  }

  async get(deviceId: string): Promise<AttestationRecord | undefined> {
    if (!isDeviceId(deviceId)) return undefined;
    const data = await readJsonFile(join(this.#d.dir, `${deviceId}.json`));
    if (data === undefined) return undefined;
    const parsed = recordSchema.safeParse(data);
    // Never "a new device" for a record that does not read: that would lift a quarantine and trust anew.
    if (!parsed.success) throw new WardError(ErrorCodes.ATTEST_FAILED, `attestation record of ${deviceId} is corrupt: ${parsed.error.issues[0]?.message}`);
    return parsed.data;
  }

  /** Challenges one gateway now (one at a time per gateway) and appraises its answer. */
  challenge(deviceId: string, reason: string): Promise<AttestationRecord> {
    const running = this.#running.get(deviceId);
    if (running) return running;
    const run = this.#exclusive(deviceId, () => this.#challenge(deviceId, reason)).finally(() => this.#running.delete(deviceId));
    this.#running.set(deviceId, run);
    return run;
  }

  /** One change of a device's record at a time (challenges and approvals read, then write it). */
  #exclusive<T>(deviceId: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(deviceId) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.#locks.set(deviceId, tail);
    void tail.then(() => {
      if (this.#locks.get(deviceId) === tail) this.#locks.delete(deviceId);
    });
    return run;
  }

  async #challenge(deviceId: string, reason: string): Promise<AttestationRecord> {
    let record = (await this.get(deviceId)) ?? this.#fresh(deviceId);
    if (!record.ak) {
      // Asked every round until an AK is registered: a gateway may gain a TPM (never the reverse once registered).
      record = await this.#register(record);
      if (record.unanswered) {
        return this.#recordAppraisal(
          record,
          { outcome: 'rejected', findings: [{ check: 'format', message: 'the gateway did not say whether it has a TPM' }] },
          reason,
        );
      }
      // A TPM gateway whose key could not be bound to its TPM: no quote of it means anything; quarantined as is.
      if (record.registrationFailed) return record;
    }
    const value = randomBytes(24).toString('base64url');
    this.#outstanding.set(deviceId, { value, issuedAt: this.#clock.now() });
    let evidence: string;
    try {
      const result = (await this.#d.call(deviceId, 'attest', { challenge: value }, 20_000)) as { evidence?: unknown };
      if (typeof result?.evidence !== 'string') throw new WardError(ErrorCodes.ATTEST_EVIDENCE_INVALID, 'the answer carries no evidence');
      evidence = result.evidence;
    } catch (err) {
      this.#outstanding.delete(deviceId);
      this.#d.log.warn({ deviceId, reason, err: describeError(err) }, 'attestation: no evidence');
      return this.#recordAppraisal(record, { outcome: 'rejected', findings: [{ check: 'format', message: `no evidence: ${describeError(err)}` }] }, reason);
    }
    return this.appraiseEvidence(deviceId, evidence, reason);
  }

  /** Appraises evidence against the outstanding challenge (which it uses up) and records the result. */
  async appraiseEvidence(deviceId: string, evidence: string, reason = 'evidence'): Promise<AttestationRecord> {
    let record = (await this.get(deviceId)) ?? this.#fresh(deviceId);
    const challenge = this.#outstanding.get(deviceId);
    // The policy the controller signed last, and the one before for a while: the newest may still be on its way.
    const now = this.#clock.now();
    const published = await this.#d.policyDigest(deviceId);
    const { policyPrevious, ...current } = record;
    let recent = [...(record.policyRecent ?? []), ...(policyPrevious ? [policyPrevious] : [])].filter((p) => p.until > now);
    if (published !== undefined && record.policySeen?.digest !== published) {
      // Until a gateway has fetched and applied a new policy it enforces the one before, or none before its first:
      // that one passes for `staleAfterSeconds`, after which a gateway still on it is quarantined. Without this, a
      // challenge landing while the policy is in flight quarantined a healthy gateway (seen under CI load).
      const superseded = record.policySeen?.digest ?? NO_POLICY_DIGEST;
      recent = [
        { digest: superseded, until: now + this.#d.config.staleAfterSeconds * 1000 },
        ...recent.filter((p) => p.digest !== superseded && p.digest !== published),
      ].slice(0, POLICY_RECENT_MAX);
      record = { ...current, policySeen: { digest: published, since: now }, policyRecent: recent };
    } else {
      record = { ...current, policyRecent: recent };
    }
    const policyDigests = new Set<string>();
    if (published !== undefined) policyDigests.add(published);
    for (const p of recent) policyDigests.add(p.digest);
    // Single use: whatever the outcome, this challenge cannot be answered again.
    this.#outstanding.delete(deviceId);
    const appraisal = appraise({
      deviceId,
      evidence,
      keys: this.#d.keys,
      challenge,
      now: this.#clock.now(),
      ak: record.ak ? { publicPem: record.ak.publicPem } : undefined,
      references: {
        executables: this.#executables,
        baseline: record.baseline,
        policyDigests,
      },
    });
    return this.#recordAppraisal(record, appraisal, reason);
  }

  async #recordAppraisal(record: AttestationRecord, a: Appraisal, reason: string): Promise<AttestationRecord> {
    const now = this.#clock.now();
    let next: AttestationRecord = {
      ...record,
      history: [{ at: now, outcome: a.outcome, state: record.state, findings: a.findings.slice(0, 64).map(plainFinding) }, ...record.history].slice(0, HISTORY),
    };
    if (a.outcome === 'rejected') {
      this.#d.audit.record({
        category: 'request-error',
        actor: record.deviceId,
        action: 'attest.evidence-refused',
        target: record.deviceId,
        outcome: 'refused',
        code: ErrorCodes.ATTEST_EVIDENCE_INVALID,
        details: { reason, findings: a.findings.map(plainFinding) },
      });
      await this.#save(next);
      return next;
    }
    next = {
      ...next,
      lastEvidenceAt: now,
      ...(a.trust ? { trust: a.trust } : {}),
      ...(a.measurements ? { measurements: a.measurements } : {}),
      ...(a.claims ? { claims: a.claims } : {}),
    };
    if (a.outcome === 'pass') {
      next = { ...next, lastPassAt: now };
      if (!next.baseline && a.measurements) {
        next = { ...next, baseline: baselineOf(a.measurements), baselineApprovedBy: 'first attestation' };
        this.#d.audit.record({
          category: 'configuration-change',
          actor: 'controller',
          action: 'attest.baseline',
          target: record.deviceId,
          outcome: 'success',
          details: { by: 'first attestation', measurements: next.baseline },
        });
      }
      const stay = next.state === 'quarantined';
      const health = this.#healthReasons(record.deviceId);
      if (!stay && health.length > 0) return this.#transition(next, 'degraded', health, 'controller', a.claims?.lifecycle);
      return this.#transition(next, stay ? 'quarantined' : 'active', stay ? next.reasons : [], 'controller', a.claims?.lifecycle);
    }
    return this.#transition(next, 'quarantined', a.findings.map(describeFinding), 'controller', a.claims?.lifecycle);
  }

  /** The gateway says its measurements changed (signed `attest/notify`): challenge it now rather than at the next round. */
  async notified(deviceId: string, payload: Buffer): Promise<void> {
    try {
      const v = this.#notifyVerifier.verify<{ typ: string; iat: number; exp: number; changed?: unknown }>(payload, {
        typ: NOTIFY_TYPE,
        principal: deviceId,
        subject: deviceId,
      });
      const changed = Array.isArray(v.payload.changed) ? v.payload.changed.slice(0, 32).map(String) : [];
      await this.challenge(deviceId, `the gateway reported a change: ${changed.join(', ') || 'unspecified'}`);
    } catch (err) {
      this.#d.audit.record({
        category: 'request-error',
        actor: 'unknown',
        action: 'attest.notify',
        target: deviceId,
        outcome: 'refused',
        ...((err as { code?: string }).code !== undefined ? { code: (err as { code: string }).code } : {}),
        details: { error: describeError(err) },
      });
    }
  }

  /**
   * The gateway's health alarms that call for a degraded trust (telemetry alarm rules with action `degrade`).
   * Graded: an active gateway goes to `degraded` (its policy's degraded flows) while any is raised; when the last
   * clears it is challenged, and passing evidence makes it active again. Never lifts a quarantine.
   */
  setHealth(deviceId: string, alarms: readonly string[]): Promise<AttestationRecord | undefined> {
    const before = this.#healthReasons(deviceId).join('\n');
    if (alarms.length === 0) this.#health.delete(deviceId);
    else this.#health.set(deviceId, [...alarms]);
    if (before === this.#healthReasons(deviceId).join('\n')) return Promise.resolve(undefined);
    return this.#exclusive(deviceId, async () => {
      const record = await this.get(deviceId);
      if (record === undefined) return undefined;
      const health = this.#healthReasons(deviceId);
      if (health.length > 0 && (record.state === 'active' || (record.state === 'degraded' && record.reasons.every((r) => r.startsWith(HEALTH))))) {
        return this.#transition(record, 'degraded', health, 'controller');
      }
      if (health.length === 0 && record.state === 'degraded' && record.reasons.length > 0 && record.reasons.every((r) => r.startsWith(HEALTH))) {
        return this.#challenge(deviceId, 'health alarms cleared');
      }
      return record;
    });
  }

  #healthReasons(deviceId: string): string[] {
    return (this.#health.get(deviceId) ?? []).map((a) => `${HEALTH}${a}`);
  }

  /** An operator accepts the gateway's current measurements (after a planned change) and lifts a quarantine. */
  approve(deviceId: string, actor: string): Promise<AttestationRecord> {
    return this.#exclusive(deviceId, () => this.#approve(deviceId, actor));
  }

  async #approve(deviceId: string, actor: string): Promise<AttestationRecord> {
    const record = await this.get(deviceId);
    if (!record?.measurements) throw new WardError(ErrorCodes.ATTEST_NO_EVIDENCE, `no evidence from ${deviceId} to approve yet`);
    const next: AttestationRecord = { ...record, baseline: baselineOf(record.measurements), baselineApprovedBy: actor };
    this.#d.audit.record({
      category: 'configuration-change',
      actor,
      action: 'attest.baseline',
      target: deviceId,
      outcome: 'success',
      details: { by: actor, measurements: next.baseline, previousState: record.state },
    });
    // Not told to the gateway yet: it leaves quarantine when the evidence against the new baseline passes.
    await this.#save({ ...next, state: record.state === 'quarantined' ? 'attesting' : record.state, reasons: [`measurements approved by ${actor}`] });
    return this.#challenge(deviceId, 'approved');
  }

  async #transition(
    record: AttestationRecord,
    state: AttestationRecord['state'],
    reasons: string[],
    actor: string,
    gatewayLifecycle?: string,
  ): Promise<AttestationRecord> {
    const changed = record.state !== state;
    reasons = reasons.slice(0, 64);
    const next: AttestationRecord = {
      ...record,
      state,
      reasons: changed || state !== 'active' ? reasons : record.reasons,
      since: changed ? this.#clock.now() : record.since,
    };
    await this.#save(next);
    // A verdict lost on the way is sent again: whenever the gateway's own state (in its evidence) differs.
    if (!changed) {
      if (gatewayLifecycle !== undefined && gatewayLifecycle !== state) await this.#sendVerdict(next, state, reasons);
      return next;
    }
    this.#d.audit.record({
      category: state === 'quarantined' ? 'access-control' : 'control-system',
      actor,
      action: state === 'quarantined' ? 'attest.quarantine' : `attest.${state}`,
      target: record.deviceId,
      outcome: state === 'quarantined' || state === 'degraded' ? 'failure' : 'success',
      ...(state === 'quarantined' ? { code: ErrorCodes.ATTEST_FAILED } : {}),
      details: { from: record.state, to: state, reasons },
    });
    this.#d.log.warn({ deviceId: record.deviceId, from: record.state, to: state, reasons }, 'attestation state changed');
    await this.#sendVerdict(next, state, reasons);
    return next;
  }

  async #sendVerdict(record: AttestationRecord, state: AttestationRecord['state'], reasons: readonly string[]): Promise<void> {
    await this.#d
      .call(record.deviceId, 'attest.verdict', { state, reasons: reasons.slice(0, 64).map((r) => r.slice(0, 512)), verifiedAt: this.#clock.now() })
      .catch((err) =>
        this.#d.log.warn(
          { deviceId: record.deviceId, err: describeError(err) },
          'the gateway did not take its verdict; it is sent again after the next evidence',
        ),
      );
  }

  /**
   * First contact: ask the gateway whether it has a TPM; if so, bind its attestation key to its endorsement key
   * by credential activation before any of its quotes is believed.
   */
  async #register(record: AttestationRecord): Promise<AttestationRecord> {
    const id = (await this.#d.call(record.deviceId, 'attest.identity', {}, 20_000).catch(() => undefined)) as
      | { tpm?: boolean; akPublic?: string; ekPublicPem?: string }
      | undefined;
    // No answer is not "no TPM": a TPM gateway must not become a software one because one call was lost.
    if (id === undefined) return { ...record, registrationFailed: true, unanswered: true };
    if (!id.tpm) {
      if (record.software) return record;
      const next = { ...record, software: true };
      await this.#save(next);
      return next;
    }
    const finding = async (message: string): Promise<AttestationRecord> => ({
      ...(await this.#transition({ ...record }, 'quarantined', [`attestation key registration: ${message}`], 'controller')),
      registrationFailed: true,
    });
    if (typeof id.akPublic !== 'string' || typeof id.ekPublicPem !== 'string') return finding('the gateway reports a TPM but not its attestation key');
    // The key and its name come from the TPM's own description of the AK, never from a PEM the gateway could pair with any name.
    const ak = parseAkPublic(Buffer.from(id.akPublic, 'base64'));
    if (typeof ak === 'string') return finding(ak);
    if (!this.#d.makeCredential) return finding('this controller cannot make TPM credentials (tpm2-tools missing)');
    const secret = randomBytes(32);
    let credential: Buffer;
    try {
      credential = await this.#d.makeCredential({ ekPublicPem: id.ekPublicPem, akName: ak.name, secret });
    } catch (err) {
      return finding(`cannot make a credential for the reported EK and AK: ${describeError(err)}`);
    }
    const answer = (await this.#d
      .call(record.deviceId, 'attest.activate', { credential: credential.toString('base64') }, 20_000)
      .catch((err) => ({ error: describeError(err) }))) as {
      secret?: string;
      error?: string;
    };
    if (answer.secret === undefined || !Buffer.from(answer.secret, 'base64').equals(secret)) {
      return finding(
        `the gateway could not recover the credential's secret: its AK is not in the TPM of the EK it reported${answer.error ? ` (${answer.error})` : ''}`,
      );
    }
    const next: AttestationRecord = {
      ...record,
      software: false,
      ak: { publicPem: ak.publicPem, akName: ak.name, ekPublicPem: id.ekPublicPem, registeredAt: this.#clock.now() },
    };
    this.#d.audit.record({
      category: 'configuration-change',
      actor: 'controller',
      action: 'attest.ak-registered',
      target: record.deviceId,
      outcome: 'success',
      details: { akName: ak.name },
    });
    await this.#save(next);
    return next;
  }

  #fresh(deviceId: string): AttestationRecord {
    return { deviceId, state: 'attesting', since: this.#clock.now(), reasons: [], history: [] };
  }

  async #save(record: AttestationRecord): Promise<void> {
    const { registrationFailed: _f, unanswered: _u, ...stored } = record;
    await writeFileAtomic(join(this.#d.dir, `${record.deviceId}.json`), `${JSON.stringify(stored)}\n`);
  }
}

function plainFinding(f: Finding): z.infer<typeof findingSchema> {
  return { ...f };
}

export function describeFinding(f: Finding): string {
  const digests =
    f.expected !== undefined || f.actual !== undefined ? ` (expected ${f.expected?.slice(0, 16) ?? '-'}…, got ${f.actual?.slice(0, 16) ?? '-'}…)` : '';
  return `${f.check}: ${f.message}${digests}`;
}

export type { TrustState };
