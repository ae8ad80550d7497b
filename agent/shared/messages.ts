import { z } from 'zod';
import { ErrorCodes, WardError } from '../core/errors.js';
import { LIFECYCLE_STATES } from '../core/lifecycle.js';
import { DEVICE_ID_PATTERN } from './topics.js';

/**
 * Payload schemas of the control messages, checked after the envelope
 * verified (so shape errors from unauthenticated senders never reach here).
 * Objects are strict: an unknown field is an error, not something ignored.
 */
const common = {
  iat: z.number().int(),
  exp: z.number().int(),
  nonce: z.string().optional(),
  version: z.number().int().nonnegative().optional(),
};

const deviceId = z.string().regex(DEVICE_ID_PATTERN);

export const STATE_TYPE = 'ward.state';
export const RPC_REQUEST_TYPE = 'ward.rpc.req';
export const RPC_RESPONSE_TYPE = 'ward.rpc.res';

export const statePayload = z.strictObject({
  ...common,
  typ: z.literal(STATE_TYPE),
  sub: deviceId,
  version: z.number().int().nonnegative(),
  online: z.boolean(),
  /** Why the device went offline: 'lwt' (broker-published will), 'shutdown' (clean stop). */
  cause: z.enum(['lwt', 'shutdown']).optional(),
  /** Random per connection; an LWT is honoured only for the session it was registered with. */
  session: z.string().min(8).max(64),
  lifecycle: z.enum(LIFECYCLE_STATES),
  agentVersion: z.string().max(64),
  protocol: z.enum(['3.1.1', '5']),
  plugins: z.array(z.string().max(64)).max(64),
  startedAt: z.number().int(),
  /** How often the device re-publishes state: the controller's liveness deadline derives from it. */
  heartbeatSeconds: z.number().int().positive(),
});
export type StatePayload = z.infer<typeof statePayload>;

export const rpcRequestPayload = z.strictObject({
  ...common,
  typ: z.literal(RPC_REQUEST_TYPE),
  sub: deviceId,
  nonce: z.string(),
  method: z.string().regex(/^[a-z][a-z0-9.-]{0,63}$/),
  params: z.record(z.string(), z.unknown()),
  replyTo: z.string().max(256),
  corr: z.string().min(8).max(64),
});
export type RpcRequestPayload = z.infer<typeof rpcRequestPayload>;

export const rpcResponsePayload = z.strictObject({
  ...common,
  typ: z.literal(RPC_RESPONSE_TYPE),
  sub: deviceId,
  nonce: z.string(),
  corr: z.string().min(8).max(64),
  ok: z.boolean(),
  result: z.unknown().optional(),
  error: z.strictObject({ code: z.string(), message: z.string() }).optional(),
});
export type RpcResponsePayload = z.infer<typeof rpcResponsePayload>;

// Enrollment and renewal (identity issue). The request is signed by the new device key itself
// (proof of possession); the response and the device certificate by the controller key.
export const ENROLL_REQUEST_TYPE = 'ward.enroll.req';
export const RENEW_REQUEST_TYPE = 'ward.renew.req';
export const ENROLL_RESPONSE_TYPE = 'ward.enroll.res';
export const DEVICE_CERT_TYPE = 'ward.device.cert';

const b64url = z.string().regex(/^[A-Za-z0-9_-]+$/);
const label = z.string().regex(/^[A-Za-z0-9._-]{1,32}$/);
const pem = (what: string) =>
  z
    .string()
    .max(16_384)
    .regex(new RegExp(`^-----BEGIN ${what}-----`), `expected a PEM ${what}`);

export const enrollRequestPayload = z.strictObject({
  ...common,
  typ: z.enum([ENROLL_REQUEST_TYPE, RENEW_REQUEST_TYPE]),
  sub: deviceId,
  nonce: z.string(),
  /** Enrollment only: the code id and its token (renewal is authenticated by the enrolled device key). */
  codeId: z
    .string()
    .regex(/^[0-9a-f]{16}$/)
    .optional(),
  token: b64url.length(22).optional(),
  publicKey: b64url.length(43),
  csr: pem('CERTIFICATE REQUEST'),
  site: label.optional(),
  line: label.optional(),
  cell: label.optional(),
  agentVersion: z.string().max(64),
});
export type EnrollRequestPayload = z.infer<typeof enrollRequestPayload>;

export const deviceCertPayload = z.strictObject({
  ...common,
  typ: z.literal(DEVICE_CERT_TYPE),
  sub: deviceId,
  version: z.number().int().nonnegative(),
  publicKey: b64url.length(43),
  tlsKeyFingerprint: b64url.length(43),
  certSerial: z.string().regex(/^[0-9a-f]{1,40}$/),
  site: label,
  line: label,
  cell: label,
  roles: z.array(z.string().max(32)).max(16),
});
export type DeviceCertPayload = z.infer<typeof deviceCertPayload>;

export const enrollResponsePayload = z.strictObject({
  ...common,
  typ: z.literal(ENROLL_RESPONSE_TYPE),
  sub: deviceId,
  nonce: z.string(),
  /** The request's nonce: a response answers exactly one request. */
  inReplyTo: z.string().min(8).max(128),
  ok: z.boolean(),
  error: z.strictObject({ code: z.string().max(64), message: z.string().max(512) }).optional(),
  identity: z
    .strictObject({
      /** A signed envelope of type ward.device.cert. */
      deviceCert: z.strictObject({ payload: z.record(z.string(), z.unknown()), kid: z.string(), sig: z.string() }),
      certPem: pem('CERTIFICATE'),
      caPem: pem('CERTIFICATE'),
      /** Operational broker URLs (mutual TLS). */
      brokers: z
        .array(z.string().regex(/^mqtts:\/\/\S+$/))
        .min(1)
        .max(4),
      /** The controller's current root certification (base64url CBOR), so gateways follow its renewal. */
      controllerCert: z
        .string()
        .regex(/^[A-Za-z0-9_-]+$/)
        .max(1024)
        .optional(),
    })
    .optional(),
});
export type EnrollResponsePayload = z.infer<typeof enrollResponsePayload>;

/** Validates a verified payload against its schema; the error names the offending field. */
export function decodePayload<S extends z.ZodType>(schema: S, payload: unknown): z.infer<S> {
  const result = schema.safeParse(payload);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue?.path.length ? issue.path.join('.') : '(payload)';
    throw new WardError(ErrorCodes.ENVELOPE_MALFORMED, `payload field ${where}: ${issue?.message ?? 'invalid'}`, {
      details: { field: where },
    });
  }
  return result.data;
}
