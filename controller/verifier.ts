import { createHash } from 'node:crypto';
import { ErrorCodes, isWardError } from '../agent/core/errors.js';
import {
  APP_PCR,
  BOOT_PCRS,
  CHALLENGE_TTL_SECONDS,
  currentMeasurements,
  EVIDENCE_TYPE,
  type EvidencePayload,
  evidencePayload,
  foldLog,
  type Measurement,
  measurementKey,
  NO_POLICY_DIGEST,
  quoteQualifier,
  type TrustLevel,
} from '../agent/shared/attest/evidence.js';
import { parseQuote, pcrDigestOf, verifyQuoteSignature } from '../agent/shared/attest/quote.js';
import { EnvelopeVerifier, type KeyResolver } from '../agent/shared/envelope.js';

/**
 * The Verifier's appraisal of one piece of evidence (pure: the attestation
 * service looks up the challenge, keys and reference values, and acts on
 * the result). Three outcomes:
 * - `rejected`: the evidence itself cannot be trusted as an answer to our
 *   challenge (malformed, bad signature, unknown/reused/expired challenge).
 *   It changes nothing by itself; no fresh evidence for long enough makes
 *   the gateway degraded.
 * - `fail`: authentic evidence that shows something wrong (a measurement
 *   that differs from its reference, a quote that does not verify, comes
 *   from another TPM or does not match the log, a TPM gateway answering in
 *   software): quarantine.
 * - `pass`.
 * Every finding names the check, and for measurements the expected and
 * actual digests, so the console can say exactly what changed.
 */
export interface Finding {
  readonly check:
    | 'format'
    | 'signature'
    | 'challenge'
    | 'log'
    | 'trust-level'
    | 'quote'
    | 'pcr-replay'
    | 'executable'
    | 'config'
    | 'policy'
    | 'plugin'
    | 'trust-anchor';
  readonly message: string;
  readonly name?: string;
  readonly expected?: string;
  readonly actual?: string;
}

export interface Appraisal {
  readonly outcome: 'pass' | 'fail' | 'rejected';
  readonly findings: readonly Finding[];
  readonly trust?: TrustLevel;
  /** The latest measurement of each (kind, name), when the evidence was authentic. */
  readonly measurements?: Readonly<Record<string, string>>;
  readonly aggregate?: string;
  readonly claims?: EvidencePayload['claims'];
  readonly pcrs?: Readonly<Record<string, string>>;
}

export interface ReferenceValues {
  /** Executable digests of released binaries (the build's manifest) and approved source trees; empty: use the baseline. */
  readonly executables: ReadonlySet<string>;
  /** The device's approved measurements (`kind:name` → sha256), from its first passing evidence or an operator's approval. */
  readonly baseline: Readonly<Record<string, string>> | undefined;
  /**
   * Digests of the policies the controller signed for this device that it may be running: the latest, and the one
   * before while the latest is still on its way. Empty: the controller signed none, the approved baseline decides.
   */
  readonly policyDigests: ReadonlySet<string>;
}

export interface AppraisalInput {
  readonly deviceId: string;
  readonly evidence: string;
  readonly keys: KeyResolver;
  /** The challenge this device has outstanding (undefined: none, or already answered). */
  readonly challenge: { readonly value: string; readonly issuedAt: number } | undefined;
  readonly now: number;
  /** The attestation key registered for this device (its TPM), if any: then only `tpm` evidence passes. */
  readonly ak: { readonly publicPem: string } | undefined;
  readonly references: ReferenceValues;
}

export function appraise(input: AppraisalInput): Appraisal {
  const rejected = (check: Finding['check'], message: string): Appraisal => ({ outcome: 'rejected', findings: [{ check, message }] });
  let payload: EvidencePayload;
  try {
    // A verifier of its own: the challenge, not the envelope nonce, is what makes evidence fresh and single-use.
    const verified = new EnvelopeVerifier({ keys: input.keys, clock: { now: () => input.now, monotonic: () => input.now } }).verify(input.evidence, {
      typ: EVIDENCE_TYPE,
      principal: input.deviceId,
      subject: input.deviceId,
    });
    const parsed = evidencePayload.safeParse(verified.payload);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return rejected('format', `evidence is malformed at ${issue?.path.join('.') || '(root)'}: ${issue?.message}`);
    }
    payload = parsed.data;
  } catch (err) {
    const signature =
      isWardError(err, ErrorCodes.ENVELOPE_BAD_SIGNATURE) ||
      isWardError(err, ErrorCodes.ENVELOPE_UNKNOWN_KEY) ||
      isWardError(err, ErrorCodes.ENVELOPE_WRONG_SUBJECT);
    return rejected(signature ? 'signature' : 'format', `evidence refused: ${err instanceof Error ? err.message : String(err)}`);
  }

  if (input.challenge === undefined || payload.challenge !== input.challenge.value) {
    return rejected('challenge', 'the evidence does not answer the outstanding challenge (replayed, or the challenge was already used)');
  }
  if (input.now - input.challenge.issuedAt > CHALLENGE_TTL_SECONDS * 1000) {
    return rejected(
      'challenge',
      `the evidence came ${Math.round((input.now - input.challenge.issuedAt) / 1000)} s after the challenge (limit ${CHALLENGE_TTL_SECONDS} s)`,
    );
  }

  const findings: Finding[] = [];
  const aggregate = foldLog(payload.log).toString('hex');
  if (aggregate !== payload.aggregate)
    findings.push({
      check: 'log',
      message: 'the measurement log does not fold to the aggregate the evidence claims',
      expected: aggregate,
      actual: payload.aggregate,
    });

  if (input.ak && payload.trust !== 'tpm') {
    findings.push({ check: 'trust-level', message: 'this gateway registered a TPM attestation key but answered without a TPM quote' });
  }
  if (payload.trust === 'tpm') findings.push(...checkQuote(payload, input.ak, aggregate));

  const current = currentMeasurements(payload.log);
  for (const kind of ['executable', 'policy'] as const) {
    const n = [...current.values()].filter((m) => m.kind === kind).length;
    if (n !== 1) findings.push({ check: 'log', message: `the log has ${n} ${kind} measurements; exactly one is expected` });
  }
  findings.push(...checkReferences(current, input.references));
  const measurements: Record<string, string> = {};
  for (const [k, m] of current) measurements[k] = m.sha256;
  // With a TPM the boot chain (firmware, boot loader, kernel on a measured-boot board) is part of what is approved.
  if (payload.trust === 'tpm' && payload.tpm && !findings.some((f) => f.check === 'quote')) {
    for (const i of BOOT_PCRS) {
      const v = payload.tpm.pcrs[String(i)];
      if (v === undefined) continue;
      measurements[`boot-pcr:${i}`] = v;
      const approved = input.references.baseline?.[`boot-pcr:${i}`];
      if (approved !== undefined && approved !== v) {
        findings.push({
          check: 'quote',
          name: `PCR ${i}`,
          message: `boot PCR ${i} changed since it was approved (firmware, boot loader or kernel)`,
          expected: approved,
          actual: v,
        });
      }
    }
  }
  return {
    outcome: findings.length === 0 ? 'pass' : 'fail',
    findings,
    trust: payload.trust,
    measurements,
    aggregate,
    claims: payload.claims,
    ...(payload.tpm ? { pcrs: payload.tpm.pcrs } : {}),
  };
}

function checkQuote(payload: EvidencePayload, ak: AppraisalInput['ak'], aggregate: string): Finding[] {
  const q = payload.tpm;
  if (!q) return [{ check: 'quote', message: 'trust level tpm without a quote' }];
  if (!ak) return [{ check: 'quote', message: 'no attestation key is registered for this gateway, so its quote cannot be checked' }];
  const attest = Buffer.from(q.attest, 'base64');
  const parsed = parseQuote(attest);
  if (typeof parsed === 'string') return [{ check: 'quote', message: parsed }];
  const sig = verifyQuoteSignature(attest, Buffer.from(q.signature, 'base64'), ak.publicPem);
  if (sig !== true) return [{ check: 'quote', message: `${sig} (a quote from another TPM, or altered)` }];
  const findings: Finding[] = [];
  const expectedQualifier = quoteQualifier(payload.challenge, payload.aggregate);
  if (!parsed.extraData.equals(expectedQualifier))
    findings.push({ check: 'quote', message: 'the quote was not made for this challenge and log (extraData differs)' });
  const wanted = [...BOOT_PCRS, APP_PCR];
  if (wanted.some((i) => !parsed.pcrs.includes(i))) findings.push({ check: 'quote', message: `the quote does not cover PCRs ${wanted.join(',')}` });
  const digest = pcrDigestOf(parsed.pcrs, q.pcrs);
  if (typeof digest === 'string') findings.push({ check: 'quote', message: digest });
  else if (!digest.equals(parsed.pcrDigest)) findings.push({ check: 'quote', message: 'the PCR values in the evidence are not the ones the TPM quoted' });
  const app = q.pcrs[String(APP_PCR)];
  if (app !== aggregate) {
    findings.push({
      check: 'pcr-replay',
      message: `replaying the measurement log does not give PCR ${APP_PCR}: the log is incomplete or something else extended the PCR`,
      expected: aggregate,
      ...(app !== undefined ? { actual: app } : {}),
    });
  }
  return findings;
}

function checkReferences(current: ReadonlyMap<string, Measurement>, refs: ReferenceValues): Finding[] {
  const findings: Finding[] = [];
  const baseline = refs.baseline;
  for (const [key, m] of current) {
    if (m.kind === 'executable' && refs.executables.size > 0) {
      if (!refs.executables.has(m.sha256)) {
        findings.push({ check: 'executable', name: m.name, message: `the executable ${m.name} is not a released build`, actual: m.sha256 });
      }
      continue;
    }
    if (m.kind === 'policy' && refs.policyDigests.size > 0) {
      if (!refs.policyDigests.has(m.sha256)) {
        findings.push({
          check: 'policy',
          name: m.name,
          message: 'the active policy on the gateway is not the one the controller signed for it',
          expected: [...refs.policyDigests][0] as string,
          actual: m.sha256,
        });
      }
      continue;
    }
    if (m.kind === 'policy' && m.sha256 === NO_POLICY_DIGEST) continue;
    if (baseline === undefined) continue;
    const expected = baseline[key];
    if (expected === undefined)
      findings.push({ check: m.kind, name: m.name, message: `${m.kind} ${m.name} is new since the approved measurements`, actual: m.sha256 });
    else if (expected !== m.sha256)
      findings.push({ check: m.kind, name: m.name, message: `${m.kind} ${m.name} changed since it was approved`, expected, actual: m.sha256 });
  }
  if (baseline) {
    for (const key of Object.keys(baseline)) {
      if (
        !current.has(key) &&
        !key.startsWith('boot-pcr:') &&
        !(key.startsWith('policy:') && refs.policyDigests.size > 0) &&
        !(key.startsWith('executable:') && refs.executables.size > 0)
      ) {
        const [kind, ...name] = key.split(':');
        findings.push({ check: kind as Finding['check'], name: name.join(':'), message: `${key} was approved but is no longer measured` });
      }
    }
  }
  return findings;
}

/**
 * What an approval (or the first passing evidence) fixes as the device's baseline: every measurement, boot PCRs
 * included. The policy entry counts only while the controller has signed no policy for the device (a policy an
 * operator applied at the gateway is then approved like a config).
 */
export function baselineOf(measurements: Readonly<Record<string, string>>): Record<string, string> {
  return { ...measurements };
}

/** Short digest for logs and the console. */
export function short(hex: string | undefined): string {
  return hex === undefined ? '-' : hex.slice(0, 12);
}

export function digestOfEvidence(evidence: string): string {
  return createHash('sha256').update(evidence).digest('hex');
}

export { measurementKey };
