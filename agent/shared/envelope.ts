import { type KeyObject, randomBytes, sign, verify } from 'node:crypto';
import { type Clock, systemClock } from '../core/clock.js';
import { ErrorCodes, WardError, type WardErrorCode } from '../core/errors.js';
import { canonicalBytes } from './canonical.js';
import type { SigningKey } from './keys.js';

/**
 * The signed envelope of DESIGN.md §4: `{payload, kid, sig}`, where `sig` is
 * ed25519 over the canonical JSON of `payload`. Every payload names its type
 * (`typ`), its validity window (`iat`/`exp`, seconds since the epoch), and
 * either a `nonce` (one-shot messages: commands, replies) or a monotonic
 * `version` (streams with a "latest": state, policy), so the verifier can
 * refuse replays and rollbacks. `sub` names who the message is about (a
 * device id) so a message signed for one device cannot be replayed on
 * another's topic.
 */
export interface EnvelopePayload {
  readonly typ: string;
  readonly iat: number;
  readonly exp: number;
  readonly sub?: string;
  readonly nonce?: string;
  readonly version?: number;
  readonly [field: string]: unknown;
}

export interface Envelope<P extends EnvelopePayload = EnvelopePayload> {
  readonly payload: P;
  readonly kid: string;
  readonly sig: string;
}

export const DEFAULT_MAX_ENVELOPE_BYTES = 256 * 1024;

export function newNonce(): string {
  return randomBytes(16).toString('base64url');
}

export interface SealOptions {
  readonly ttlSeconds: number;
  readonly clock?: Clock;
  readonly nonce?: string;
  readonly version?: number;
}

/** Stamps iat/exp (and a nonce unless a version is given) onto `body` and signs it. */
export function seal<B extends Record<string, unknown> & { typ: string }>(key: SigningKey, body: B, options: SealOptions): Envelope<B & EnvelopePayload> {
  const iat = Math.floor((options.clock ?? systemClock).now() / 1000);
  const stamped: Record<string, unknown> = { ...body, iat, exp: iat + options.ttlSeconds };
  if (options.version !== undefined) stamped.version = options.version;
  else stamped.nonce = options.nonce ?? newNonce();
  return signPayload(key, stamped as B & EnvelopePayload);
}

export function signPayload<P extends EnvelopePayload>(key: SigningKey, payload: P): Envelope<P> {
  const sig = sign(null, canonicalBytes(payload), key.privateKey).toString('base64url');
  return { payload, kid: key.kid, sig };
}

export function encodeEnvelope(envelope: Envelope): Buffer {
  return Buffer.from(JSON.stringify(envelope), 'utf8');
}

/** Who a key belongs to: the resolver maps a kid to its public key and principal (a device id, "controller", …). */
export interface TrustedKey {
  readonly publicKey: KeyObject;
  readonly principal: string;
}
export type KeyResolver = (kid: string) => TrustedKey | undefined;

export interface ReplayCache {
  /** True if this (kid, nonce) was accepted before and has not yet expired. */
  seen(kid: string, nonce: string, nowSec: number): boolean;
  remember(kid: string, nonce: string, expiresAtSec: number): void;
}

export interface VersionLedger {
  last(stream: string): number | undefined;
  accept(stream: string, version: number): void;
}

/**
 * In-memory nonce cache. Entries live until their message expires (plus
 * skew), so memory is bounded by message rate × lifetime; `maxEntries` is a
 * hard cap for a flood by a key holder, evicting the soonest-expiring first.
 */
export class MemoryReplayCache implements ReplayCache {
  readonly #entries = new Map<string, number>();
  constructor(private readonly maxEntries = 100_000) {}

  seen(kid: string, nonce: string, nowSec: number): boolean {
    const key = `${kid}\u0000${nonce}`;
    const exp = this.#entries.get(key);
    if (exp === undefined) return false;
    if (exp < nowSec) {
      this.#entries.delete(key);
      return false;
    }
    return true;
  }

  remember(kid: string, nonce: string, expiresAtSec: number): void {
    this.#entries.set(`${kid}\u0000${nonce}`, expiresAtSec);
    if (this.#entries.size > this.maxEntries) this.#evict();
  }

  get size(): number {
    return this.#entries.size;
  }

  #evict(): void {
    const sorted = [...this.#entries].sort((a, b) => a[1] - b[1]);
    for (const [key] of sorted.slice(0, sorted.length - Math.floor(this.maxEntries * 0.9))) this.#entries.delete(key);
  }
}

export class MemoryVersionLedger implements VersionLedger {
  readonly #versions = new Map<string, number>();
  last(stream: string): number | undefined {
    return this.#versions.get(stream);
  }
  accept(stream: string, version: number): void {
    this.#versions.set(stream, version);
  }
}

export interface VerifierOptions {
  readonly keys: KeyResolver;
  readonly clock?: Clock;
  readonly replay?: ReplayCache;
  readonly versions?: VersionLedger;
  readonly maxBytes?: number;
  /** Tolerated clock difference between signer and verifier, seconds. */
  readonly skewSeconds?: number;
  /** Longest validity window a signer may claim, seconds; bounds the replay cache. */
  readonly maxLifetimeSeconds?: number;
}

export interface Expectation {
  /** Accepted payload types. */
  readonly typ: string | readonly string[];
  /** If set, the signing key's principal must be this one (e.g. the device id in the topic). */
  readonly principal?: string;
  /** If set, payload.sub must equal it. */
  readonly subject?: string;
  /** Version stream name, or a function of the (authenticated) payload; defaults to `${kid}/${typ}`. */
  readonly stream?: string | ((payload: EnvelopePayload) => string);
}

export interface Verified<P extends EnvelopePayload = EnvelopePayload> {
  readonly payload: P;
  readonly kid: string;
  readonly principal: string;
}

function fail(code: WardErrorCode, message: string, details: Record<string, unknown> = {}): never {
  throw new WardError(code, message, { details });
}

/**
 * Checks an inbound envelope completely before anything acts on it. Order
 * matters: size, JSON, shape, key, signature — and only then the claims
 * (type, subject, time, replay, version), so an unauthenticated sender learns
 * nothing about our replay or version state. Nonces and versions are
 * recorded only after every check passed, so a refused message burns nothing.
 */
export class EnvelopeVerifier {
  readonly #keys: KeyResolver;
  readonly #clock: Clock;
  readonly #replay: ReplayCache;
  readonly #versions: VersionLedger;
  readonly #maxBytes: number;
  readonly #skew: number;
  readonly #maxLifetime: number;

  constructor(options: VerifierOptions) {
    this.#keys = options.keys;
    this.#clock = options.clock ?? systemClock;
    this.#replay = options.replay ?? new MemoryReplayCache();
    this.#versions = options.versions ?? new MemoryVersionLedger();
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_ENVELOPE_BYTES;
    this.#skew = options.skewSeconds ?? 120;
    this.#maxLifetime = options.maxLifetimeSeconds ?? 7 * 24 * 3600;
  }

  verify<P extends EnvelopePayload = EnvelopePayload>(raw: Uint8Array | string, expect: Expectation): Verified<P> {
    const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
    if (size > this.#maxBytes) fail(ErrorCodes.ENVELOPE_TOO_LARGE, `envelope is ${size} bytes, limit ${this.#maxBytes}`, { size });
    let parsed: unknown;
    try {
      parsed = JSON.parse(typeof raw === 'string' ? raw : Buffer.from(raw).toString('utf8'));
    } catch {
      fail(ErrorCodes.ENVELOPE_NOT_JSON, 'envelope is not valid JSON');
    }
    const envelope = checkShape(parsed);
    const trusted = this.#keys(envelope.kid);
    if (trusted === undefined) fail(ErrorCodes.ENVELOPE_UNKNOWN_KEY, `no trusted key with kid ${envelope.kid}`, { kid: envelope.kid });

    let message: Buffer;
    try {
      message = canonicalBytes(envelope.payload);
    } catch (cause) {
      throw new WardError(ErrorCodes.ENVELOPE_MALFORMED, 'payload cannot be canonicalised', { cause });
    }
    const sig = Buffer.from(envelope.sig, 'base64url');
    if (sig.length !== 64 || !verify(null, message, trusted.publicKey, sig)) {
      fail(ErrorCodes.ENVELOPE_BAD_SIGNATURE, `signature does not verify for kid ${envelope.kid}`, { kid: envelope.kid });
    }

    const p = envelope.payload;
    const types = typeof expect.typ === 'string' ? [expect.typ] : expect.typ;
    if (!types.includes(p.typ)) fail(ErrorCodes.ENVELOPE_WRONG_TYPE, `expected ${types.join('|')}, got ${p.typ}`, { typ: p.typ });
    if (expect.principal !== undefined && trusted.principal !== expect.principal) {
      fail(ErrorCodes.ENVELOPE_WRONG_SUBJECT, `key ${envelope.kid} belongs to ${trusted.principal}, not ${expect.principal}`, {
        principal: trusted.principal,
      });
    }
    if (expect.subject !== undefined && p.sub !== expect.subject) {
      fail(ErrorCodes.ENVELOPE_WRONG_SUBJECT, `message is about ${String(p.sub)}, not ${expect.subject}`, { sub: p.sub });
    }

    const now = Math.floor(this.#clock.now() / 1000);
    if (p.exp - p.iat > this.#maxLifetime) {
      fail(ErrorCodes.ENVELOPE_MALFORMED, `validity window ${p.exp - p.iat}s exceeds ${this.#maxLifetime}s`);
    }
    if (p.iat > now + this.#skew) fail(ErrorCodes.ENVELOPE_NOT_YET_VALID, `issued ${p.iat - now}s in the future`, { iat: p.iat, now });
    if (p.exp + this.#skew < now) fail(ErrorCodes.ENVELOPE_EXPIRED, `expired ${now - p.exp}s ago`, { exp: p.exp, now });

    const stream = typeof expect.stream === 'function' ? expect.stream(p) : (expect.stream ?? `${envelope.kid}/${p.typ}`);
    if (p.nonce !== undefined && this.#replay.seen(envelope.kid, p.nonce, now)) {
      fail(ErrorCodes.ENVELOPE_REPLAYED, `nonce already used by kid ${envelope.kid}`, { kid: envelope.kid });
    }
    if (p.version !== undefined) {
      const last = this.#versions.last(stream);
      if (last !== undefined && p.version <= last) {
        fail(ErrorCodes.ENVELOPE_ROLLBACK, `version ${p.version} is not newer than ${last} on ${stream}`, { version: p.version, last, stream });
      }
    }
    if (p.nonce !== undefined) this.#replay.remember(envelope.kid, p.nonce, p.exp + this.#skew);
    if (p.version !== undefined) this.#versions.accept(stream, p.version);
    return { payload: p as P, kid: envelope.kid, principal: trusted.principal };
  }
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function checkShape(value: unknown): Envelope {
  const problem = (what: string): never => fail(ErrorCodes.ENVELOPE_MALFORMED, `envelope ${what}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) problem('is not an object');
  const v = value as Record<string, unknown>;
  const extra = Object.keys(v).filter((k) => k !== 'payload' && k !== 'kid' && k !== 'sig');
  if (extra.length > 0) problem(`has unknown fields: ${extra.join(', ')}`);
  if (typeof v.kid !== 'string' || v.kid.length === 0 || v.kid.length > 64 || !B64URL.test(v.kid)) problem('kid is missing or malformed');
  if (typeof v.sig !== 'string' || !B64URL.test(v.sig)) problem('sig is missing or malformed');
  const p = v.payload;
  if (typeof p !== 'object' || p === null || Array.isArray(p)) problem('payload is not an object');
  const payload = p as Record<string, unknown>;
  if (typeof payload.typ !== 'string' || payload.typ.length === 0) problem('payload.typ is missing');
  if (!Number.isSafeInteger(payload.iat)) problem('payload.iat is not an integer');
  if (!Number.isSafeInteger(payload.exp)) problem('payload.exp is not an integer');
  if ((payload.exp as number) < (payload.iat as number)) problem('payload.exp is before payload.iat');
  const hasNonce = payload.nonce !== undefined;
  const hasVersion = payload.version !== undefined;
  if (!hasNonce && !hasVersion) problem('payload carries neither nonce nor version');
  if (hasNonce && (typeof payload.nonce !== 'string' || payload.nonce.length < 8 || payload.nonce.length > 128)) {
    problem('payload.nonce must be a string of 8-128 characters');
  }
  if (hasVersion && (!Number.isSafeInteger(payload.version) || (payload.version as number) < 0)) {
    problem('payload.version must be a non-negative integer');
  }
  if (payload.sub !== undefined && typeof payload.sub !== 'string') problem('payload.sub must be a string');
  return v as unknown as Envelope;
}
