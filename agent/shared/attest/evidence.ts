import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DEVICE_ID_PATTERN } from '../topics.js';

/**
 * Attestation evidence (RFC 9334 terms: the agent is the Attester, the
 * controller the Verifier). Wire contract shared by both sides.
 *
 * The agent measures what it runs (its executable, config, active policy,
 * plugins, trust anchors) into an ordered measurement log. Each entry's
 * digest is folded into an aggregate exactly as a TPM extends a PCR,
 * `agg = sha256(agg || entryDigest)` from 32 zero bytes, so with a TPM the
 * same entries extended into the application PCR give the quoted PCR value
 * and the verifier replays the log against it; without one the aggregate is
 * only as strong as the device key that signs it (trust level `software`).
 * The log only grows while the agent runs: a re-measured file is appended,
 * and the latest entry of each (kind, name) is what the agent runs now.
 */
export const EVIDENCE_TYPE = 'ward.evidence';
export const VERDICT_TYPE = 'ward.attest.verdict';
/** How long a challenge nonce may take to come back as evidence. */
export const CHALLENGE_TTL_SECONDS = 30;
export const EVIDENCE_TTL_SECONDS = 60;
/** The application PCR the agent extends its measurements into (resettable at locality 0, zero after reset). */
export const APP_PCR = 23;
/** The policy measurement of a gateway that enforces no policy (no active policy file). */
export const NO_POLICY_DIGEST = '0'.repeat(64);
/** Boot PCRs quoted alongside (firmware, boot loader, kernel on a measured-boot platform). */
export const BOOT_PCRS = [0, 1, 2, 3, 4, 5, 6, 7] as const;

export const MEASUREMENT_KINDS = ['executable', 'config', 'policy', 'plugin', 'trust-anchor'] as const;
export type MeasurementKind = (typeof MEASUREMENT_KINDS)[number];
export const TRUST_LEVELS = ['tpm', 'software'] as const;
export type TrustLevel = (typeof TRUST_LEVELS)[number];

const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const b64 = z.string().regex(/^[A-Za-z0-9+/_-]*={0,2}$/);

export const measurementSchema = z.strictObject({
  kind: z.enum(MEASUREMENT_KINDS),
  /** What was measured: a path, a plugin name, `active-policy`, `fleet-root`. */
  name: z.string().min(1).max(512),
  sha256: hex64,
});
export type Measurement = z.infer<typeof measurementSchema>;

export const quoteSchema = z.strictObject({
  /** TPMS_ATTEST as the TPM produced it (base64). */
  attest: b64.max(4096),
  /** TPMT_SIGNATURE over it by the attestation key (base64). */
  signature: b64.max(1024),
  /** PCR index → value (hex) for every quoted PCR, sha256 bank. */
  pcrs: z.record(z.string().regex(/^[0-9]{1,2}$/), hex64),
});
export type QuoteEvidence = z.infer<typeof quoteSchema>;

export const evidencePayload = z.strictObject({
  typ: z.literal(EVIDENCE_TYPE),
  sub: z.string().regex(DEVICE_ID_PATTERN),
  iat: z.number().int(),
  exp: z.number().int(),
  nonce: z.string(),
  /** The verifier's challenge this answers. */
  challenge: z.string().min(16).max(64),
  trust: z.enum(TRUST_LEVELS),
  log: z.array(measurementSchema).min(1).max(4096),
  /** Fold of the whole log (= the application PCR with a TPM). */
  aggregate: hex64,
  claims: z.strictObject({
    bootId: z.string().max(64),
    uptimeSeconds: z.number().int().nonnegative(),
    wardVersion: z.string().max(64),
    nodeVersion: z.string().max(64),
    lifecycle: z.string().max(32),
  }),
  tpm: quoteSchema.optional(),
});
export type EvidencePayload = z.infer<typeof evidencePayload>;

/** What one log entry extends into the aggregate / PCR. */
export function entryDigest(m: Measurement): Buffer {
  return createHash('sha256').update(`${m.kind}\n${m.name}\n${m.sha256}`, 'utf8').digest();
}

/** PCR-style fold of the log; `from` continues an earlier fold (defaults to the reset value, 32 zero bytes). */
export function foldLog(log: readonly Measurement[], from: Buffer = Buffer.alloc(32)): Buffer {
  let acc = from;
  for (const m of log) acc = createHash('sha256').update(acc).update(entryDigest(m)).digest();
  return acc;
}

/** The latest measurement of each (kind, name): what the agent runs now. */
export function currentMeasurements(log: readonly Measurement[]): Map<string, Measurement> {
  const out = new Map<string, Measurement>();
  for (const m of log) out.set(measurementKey(m), m);
  return out;
}

export function measurementKey(m: Pick<Measurement, 'kind' | 'name'>): string {
  return `${m.kind}:${m.name}`;
}

/**
 * The qualifying data a TPM quote carries: binds the quote to the challenge and to this log, so neither a quote
 * from another challenge nor a quote paired with another log verifies.
 */
export function quoteQualifier(challenge: string, aggregate: string): Buffer {
  return createHash('sha256').update(`ward-quote\n${challenge}\n${aggregate}`, 'utf8').digest();
}

/** The graded trust the controller gives a gateway (the agent's lifecycle states of the same names). */
export const TRUST_STATES = ['active', 'degraded', 'quarantined'] as const;
export type TrustState = (typeof TRUST_STATES)[number];

export const verdictParams = z.strictObject({
  state: z.enum([...TRUST_STATES, 'attesting']),
  reasons: z.array(z.string().max(512)).max(64),
  verifiedAt: z.number().int(),
});
export type VerdictParams = z.infer<typeof verdictParams>;
