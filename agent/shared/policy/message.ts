import { z } from 'zod';
import { DEVICE_ID_PATTERN } from '../topics.js';

/**
 * The signed policy document on the retained `ward/v1/<id>/policy` topic:
 * an envelope (DESIGN.md §4) from the controller key whose payload carries
 * the policy and a per-device monotonic `version`. The agent refuses any
 * version not newer than the last one it accepted (rollback), and keeps
 * enforcing its last policy when the controller is gone, so the validity
 * window is long: expiry only stops a stale retained message from being
 * taken up by a gateway that never saw it.
 */
export const POLICY_TYPE = 'ward.policy';
export const POLICY_TTL_SECONDS = 365 * 86_400;
/** The agent accepts windows up to this long for policy documents. */
export const POLICY_MAX_LIFETIME_SECONDS = 400 * 86_400;
/** Policies of 10,000 flows and assets fit; anything larger is refused before parsing. */
export const POLICY_MAX_BYTES = 8 * 1024 * 1024;

export const policyPayload = z.strictObject({
  typ: z.literal(POLICY_TYPE),
  sub: z.string().regex(DEVICE_ID_PATTERN),
  iat: z.number().int(),
  exp: z.number().int(),
  version: z.number().int().positive(),
  /** Checked against the policy schema after the signature (model.ts). */
  policy: z.record(z.string(), z.unknown()),
});
export type PolicyPayload = z.infer<typeof policyPayload>;
