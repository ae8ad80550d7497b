import { createHash, type KeyObject, sign, verify } from 'node:crypto';
import { z } from 'zod';
import { ErrorCodes, WardError, type WardErrorCode } from '../core/errors.js';
import { canonicalBytes } from './canonical.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from './keys.js';

/**
 * Versioned root metadata for the fleet, after TUF (spec §5.3, "Update the
 * root role"). A gateway ships with a signed root document as its trust
 * anchor; the fleet root can later be rotated by publishing version N+1,
 * which must carry a threshold of signatures from version N's keys AND a
 * threshold from its own keys, so every key set in the chain both accepted
 * its successor and proved possession. Only the final root of a chain must
 * be unexpired (an expired intermediate is still a valid link).
 *
 * Each signature is ed25519 over the canonical JSON of `payload`, base64url,
 * exactly as envelope.ts signs; kids are keyIdOf(publicRaw). Signatures are
 * counted per distinct key: a key that signs twice counts once, and a
 * signature by a key outside the set is ignored rather than an error.
 */
export const ROOT_TYPE = 'ward.root';
/** Bounds an untrusted document's cost to check; far above any real root (a handful of keys). */
export const MAX_ROOT_KEYS = 32;
export const MAX_ROOT_SIGNATURES = 64;

export interface RootMetadata {
  readonly typ: typeof ROOT_TYPE;
  /** Integer >= 1, exactly +1 per rotation. */
  readonly version: number;
  /** kid → base64url of the raw 32-byte ed25519 public key. */
  readonly keys: Readonly<Record<string, string>>;
  /** Distinct keys of `keys` that must sign; 1 <= threshold <= number of keys. */
  readonly threshold: number;
  /** Seconds since the epoch. */
  readonly iat: number;
  /** Seconds since the epoch; expired when exp <= now. */
  readonly exp: number;
  readonly name?: string;
}

export interface RootSignature {
  readonly kid: string;
  readonly sig: string;
}

export interface SignedRoot {
  readonly payload: RootMetadata;
  readonly signatures: readonly RootSignature[];
}

const kidSchema = z.string().regex(/^[A-Za-z0-9_-]{22}$/, 'a kid is 22 base64url characters');
const publicRawSchema = z
  .string()
  .regex(/^[A-Za-z0-9_-]{43}$/, 'an ed25519 public key is 43 base64url characters')
  .refine((raw) => Buffer.from(raw, 'base64url').toString('base64url') === raw, 'not canonical base64url');

const payloadSchema = z
  .strictObject({
    typ: z.literal(ROOT_TYPE),
    version: z.number().int().min(1),
    keys: z.record(kidSchema, publicRawSchema),
    threshold: z.number().int().min(1),
    iat: z.number().int().nonnegative(),
    exp: z.number().int().nonnegative(),
    name: z.string().min(1).max(128).optional(),
  })
  .superRefine((p, ctx) => {
    const kids = Object.keys(p.keys);
    if (kids.length > MAX_ROOT_KEYS) ctx.addIssue({ code: 'custom', path: ['keys'], message: `more than ${MAX_ROOT_KEYS} keys` });
    if (p.threshold > kids.length) {
      ctx.addIssue({ code: 'custom', path: ['threshold'], message: `threshold ${p.threshold} exceeds the ${kids.length} keys listed` });
    }
    if (p.exp <= p.iat) ctx.addIssue({ code: 'custom', path: ['exp'], message: 'exp is not after iat' });
    for (const [kid, raw] of Object.entries(p.keys)) {
      if (keyIdOf(raw) !== kid) ctx.addIssue({ code: 'custom', path: ['keys', kid], message: `kid ${kid} is not the key id of its public key` });
    }
  });

const signedRootSchema = z.strictObject({
  payload: payloadSchema,
  signatures: z
    .array(z.strictObject({ kid: kidSchema, sig: z.string().regex(/^[A-Za-z0-9_-]{86}$/, 'an ed25519 signature is 86 base64url characters') }))
    .min(1)
    .max(MAX_ROOT_SIGNATURES),
});

function fail(code: WardErrorCode, message: string, details: Record<string, unknown> = {}): never {
  throw new WardError(code, message, { details });
}

function describeIssue(error: z.ZodError): { path: string; message: string } {
  const issue = error.issues[0];
  if (issue === undefined) return { path: '$', message: 'is invalid' };
  const path = ['$', ...issue.path.map((s) => (typeof s === 'number' ? `[${s}]` : `.${String(s)}`))].join('').replace(/^\$\./, '');
  const message = issue.code === 'unrecognized_keys' ? `unknown field(s) ${issue.keys.join(', ')}` : issue.message;
  return { path, message };
}

/** Strict shape check of an untrusted root document; says nothing about its signatures. */
export function parseSignedRoot(value: unknown): SignedRoot {
  const result = signedRootSchema.safeParse(value);
  if (!result.success) {
    const { path, message } = describeIssue(result.error);
    fail(ErrorCodes.FLEET_ROOT_INVALID, `root metadata ${path}: ${message}`, { path });
  }
  const root = result.data as SignedRoot;
  try {
    canonicalBytes(root.payload); // -0, lone surrogates: valid to zod, unsignable to us
  } catch (cause) {
    throw new WardError(ErrorCodes.FLEET_ROOT_INVALID, 'root metadata payload cannot be canonicalised', { cause });
  }
  return root;
}

/** Signs `payload` with every signer (deduplicated by kid). Signers need not be listed in the payload: a rotation is signed by the old keys too. */
export function signRoot(payload: RootMetadata, signers: readonly SigningKey[]): SignedRoot {
  const checked = payloadSchema.safeParse(payload);
  if (!checked.success) {
    const { path, message } = describeIssue(checked.error);
    throw new TypeError(`signRoot: invalid root metadata at ${path}: ${message}`);
  }
  if (signers.length === 0) throw new TypeError('signRoot: at least one signer is required');
  const message = canonicalBytes(payload);
  const signatures: RootSignature[] = [];
  const seen = new Set<string>();
  for (const key of signers) {
    if (seen.has(key.kid)) continue;
    seen.add(key.kid);
    signatures.push({ kid: key.kid, sig: sign(null, message, key.privateKey).toString('base64url') });
  }
  return { payload, signatures };
}

export interface CreateRootOptions {
  /** The root's keys; it is signed by all of them. */
  readonly keys: readonly SigningKey[];
  /** Defaults to the number of keys (every key must sign): lower it deliberately. */
  readonly threshold?: number;
  /** Defaults to 1. */
  readonly version?: number;
  readonly validDays: number;
  readonly name?: string;
  /** Milliseconds since the epoch; defaults to Date.now(). */
  readonly now?: number;
}

export function createRoot(opts: CreateRootOptions): SignedRoot {
  if (opts.keys.length === 0) throw new TypeError('createRoot: at least one key is required');
  if (!Number.isFinite(opts.validDays) || opts.validDays <= 0) throw new TypeError(`createRoot: validDays must be positive, got ${opts.validDays}`);
  const keys: Record<string, string> = {};
  for (const key of opts.keys) keys[key.kid] = key.publicRaw;
  const iat = Math.floor((opts.now ?? Date.now()) / 1000);
  const payload: RootMetadata = {
    typ: ROOT_TYPE,
    version: opts.version ?? 1,
    keys,
    threshold: opts.threshold ?? Object.keys(keys).length,
    iat,
    exp: iat + Math.round(opts.validDays * 86_400),
    ...(opts.name === undefined ? {} : { name: opts.name }),
  };
  return signRoot(payload, opts.keys);
}

/** Distinct kids of `keys` with a valid signature over `payload`. */
function validSigners(root: SignedRoot, keys: Readonly<Record<string, string>>): number {
  const message = canonicalBytes(root.payload);
  const valid = new Set<string>();
  for (const { kid, sig } of root.signatures) {
    if (valid.has(kid) || !Object.hasOwn(keys, kid)) continue;
    const raw = keys[kid];
    if (raw === undefined) continue;
    const bytes = Buffer.from(sig, 'base64url');
    if (bytes.length === 64 && verify(null, message, publicKeyFromRaw(raw), bytes)) valid.add(kid);
  }
  return valid.size;
}

function requireThreshold(root: SignedRoot, by: SignedRoot, set: 'trusted' | 'own'): void {
  const valid = validSigners(root, by.payload.keys);
  const required = by.payload.threshold;
  if (valid >= required) return;
  const whose = set === 'own' ? 'its own keys' : `the keys of trusted root v${by.payload.version}`;
  fail(ErrorCodes.FLEET_ROOT_THRESHOLD, `root v${root.payload.version} has ${valid} valid signature(s) from ${whose}, ${required} required`, {
    set,
    version: root.payload.version,
    valid,
    required,
  });
}

function requireUnexpired(root: SignedRoot, nowSec: number): void {
  if (root.payload.exp <= nowSec) {
    fail(ErrorCodes.FLEET_ROOT_EXPIRED, `root v${root.payload.version} expired ${nowSec - root.payload.exp}s ago`, {
      version: root.payload.version,
      exp: root.payload.exp,
      now: nowSec,
    });
  }
}

function checkNow(nowSec: number, fn: string): void {
  if (!Number.isFinite(nowSec)) throw new TypeError(`${fn}: nowSec must be a finite number of seconds`);
}

/** The baked trust anchor: well-formed, signed by a threshold of its own keys, unexpired. */
export function verifyInitialRoot(value: unknown, nowSec: number): SignedRoot {
  checkNow(nowSec, 'verifyInitialRoot');
  const root = parseSignedRoot(value);
  requireThreshold(root, root, 'own');
  requireUnexpired(root, nowSec);
  return root;
}

/**
 * One rotation step without the expiry check (TUF §5.3.4-5.3.5). Signatures
 * first, then the version, as in TUF and envelope.ts: an unsigned document
 * learns nothing beyond "not signed".
 */
function stepRoot(trusted: SignedRoot, next: unknown): SignedRoot {
  const candidate = parseSignedRoot(next);
  requireThreshold(candidate, trusted, 'trusted');
  requireThreshold(candidate, candidate, 'own');
  const have = trusted.payload.version;
  const got = candidate.payload.version;
  if (got <= have) fail(ErrorCodes.FLEET_ROOT_ROLLBACK, `root v${got} is not newer than trusted root v${have}`, { version: got, trusted: have });
  if (got !== have + 1) fail(ErrorCodes.FLEET_ROOT_INVALID, `root v${got} skips versions: expected v${have + 1}`, { version: got, expected: have + 1 });
  return candidate;
}

/** A single rotation where `next` is the final root: also refuses it if expired. */
export function verifyRootUpdate(trusted: SignedRoot, next: unknown, nowSec: number): SignedRoot {
  checkNow(nowSec, 'verifyRootUpdate');
  const root = stepRoot(trusted, next);
  requireUnexpired(root, nowSec);
  return root;
}

/**
 * Applies `chain` (versions trusted+1, trusted+2, …) in order; only the
 * resulting root must be unexpired (TUF §5.3.10), which with an empty chain
 * is `trusted` itself.
 */
export function updateRootChain(trusted: SignedRoot, chain: readonly unknown[], nowSec: number): SignedRoot {
  checkNow(nowSec, 'updateRootChain');
  if (!Array.isArray(chain)) throw new TypeError('updateRootChain: chain must be an array');
  let current = trusted;
  for (const next of chain) current = stepRoot(current, next);
  requireUnexpired(current, nowSec);
  return current;
}

/** base64url(SHA-256(canonical payload)), for operators to compare out of band. */
export function rootFingerprint(root: SignedRoot): string {
  return createHash('sha256').update(canonicalBytes(root.payload)).digest('base64url');
}

export function trustedKey(root: SignedRoot, kid: string): KeyObject | undefined {
  if (!Object.hasOwn(root.payload.keys, kid)) return undefined;
  const raw = root.payload.keys[kid];
  return raw === undefined ? undefined : publicKeyFromRaw(raw);
}
