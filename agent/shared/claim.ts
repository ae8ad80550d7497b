import { createHash, randomInt } from 'node:crypto';
import { decode, encode } from 'cbor2';
import { ErrorCodes, WardError } from '../core/errors.js';
import { base45Decode, base45Encode } from './base45.js';
import { DEVICE_ID_PATTERN } from './topics.js';

/**
 * The claim QR (DESIGN.md §3, the reverse flow): a gateway without a scanner
 * shows its own code — device id, key fingerprint and a short claim code — and
 * an operator scans it into the console. Nothing in it is secret enough to
 * enroll: the controller binds the enrollment code it then creates to this key
 * fingerprint, so only the gateway holding the key can use it. The claim code
 * is the password with which the gateway fetches its bundle from the broker.
 *
 *   text = "WARDC1:" + base45(CBOR [0xC2, deviceId, kid: bstr(16), claimCode])
 */
export const CLAIM_PREFIX = 'WARDC1:';
const CLAIM_TAG = 0xc2;
// Crockford base32 without I, L, O, U: read aloud or typed from a label without ambiguity.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
export const CLAIM_CODE_PATTERN = /^[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}$/;

export interface Claim {
  readonly deviceId: string;
  /** The device key id (base64url, 16 bytes): the enrollment code will be bound to it. */
  readonly kid: string;
  readonly claimCode: string;
  /** Names the claim's broker account and topic. */
  readonly claimId: string;
}

/** 50 random bits as XXXXX-XXXXX. */
export function newClaimCode(): string {
  const chars = Array.from({ length: 10 }, () => ALPHABET[randomInt(ALPHABET.length)] as string).join('');
  return `${chars.slice(0, 5)}-${chars.slice(5)}`;
}

export function claimIdOf(kid: string): string {
  return createHash('sha256').update('ward-claim\0').update(Buffer.from(kid, 'base64url')).digest('hex').slice(0, 16);
}

export function encodeClaim(claim: { deviceId: string; kid: string; claimCode: string }): string {
  if (!DEVICE_ID_PATTERN.test(claim.deviceId) || !CLAIM_CODE_PATTERN.test(claim.claimCode)) throw new TypeError('invalid claim');
  const kid = Buffer.from(claim.kid, 'base64url');
  if (kid.length !== 16) throw new TypeError('kid must be 16 bytes');
  return CLAIM_PREFIX + base45Encode(encode([CLAIM_TAG, claim.deviceId, new Uint8Array(kid), claim.claimCode]));
}

export function parseClaim(text: string): Claim {
  const trimmed = text.trim();
  const bad = (why: string): never => {
    throw new WardError(ErrorCodes.BUNDLE_MALFORMED, `not a Ward claim code: ${why}`);
  };
  if (!trimmed.startsWith(CLAIM_PREFIX) || trimmed.length > 256) bad(`expected ${CLAIM_PREFIX}… under 256 characters`);
  let fields: unknown;
  try {
    fields = decode(base45Decode(trimmed.slice(CLAIM_PREFIX.length)), { maxDepth: 4, rejectStreaming: true });
  } catch (err) {
    bad(err instanceof Error ? err.message : String(err));
  }
  if (!Array.isArray(fields) || fields.length !== 4 || fields[0] !== CLAIM_TAG) bad('wrong shape');
  const [, deviceId, kid, claimCode] = fields as unknown[];
  if (typeof deviceId !== 'string' || !DEVICE_ID_PATTERN.test(deviceId)) bad('bad device id');
  if (!(kid instanceof Uint8Array) || kid.length !== 16) bad('bad key fingerprint');
  if (typeof claimCode !== 'string' || !CLAIM_CODE_PATTERN.test(claimCode)) bad('bad claim code');
  const kidText = Buffer.from(kid as Uint8Array).toString('base64url');
  return { deviceId: deviceId as string, kid: kidText, claimCode: claimCode as string, claimId: claimIdOf(kidText) };
}
