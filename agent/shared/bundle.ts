import { createHash, type KeyObject, sign, verify } from 'node:crypto';
import { decode, encode } from 'cbor2';
import { ErrorCodes, WardError, type WardErrorCode } from '../core/errors.js';
import { base45Decode, base45Encode } from './base45.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from './keys.js';

/**
 * The enrollment bundle: what a technician scans at the line (DESIGN.md §3).
 *
 * It has to fit a label-printed QR code, so it is CBOR (RFC 8949) with raw
 * key and signature bytes, carried as base45 (RFC 9285) behind a `WARD1:`
 * prefix so the whole text stays in QR alphanumeric mode. JSON + base64
 * envelopes would be about twice the size (a version 20+ code instead of ~12).
 *
 * Signatures cover the exact encoded bytes of a body (carried as a byte
 * string, as COSE_Sign1 does), so no canonical CBOR is needed; the first
 * element of each body is a type tag so a signature over one structure can
 * never be taken for the other. Every byte counts toward the ≤300-byte aim:
 * tags are small integers, the CA pin is SHA-256 truncated to 128 bits
 * (second-preimage work 2^128), brokers are host:port with mqtts implied.
 *
 *   controller cert = [ body: bstr, sig: bstr(64) ]      signed by a fleet root key
 *     body = [ 0xC1, controllerKey: bstr(32), caPin: bstr(16), notAfter, rootVersion ]
 *   bundle          = [ body: bstr, sig: bstr(64) ]      signed by the controller key
 *     body = [ 0xB1, controllerCert: bstr, token: bstr(16), exp, brokers: [tstr], site, line, cell, ?boundKid: bstr(16) ]
 *
 * `boundKid` is present on codes made for a claimed gateway: signed, so a
 * gateway can tell a code meant for its own key from any other genuine label.
 *
 * Times are seconds since the epoch. The verifier checks, in order: shape,
 * the controller certificate against the trusted root, the bundle signature
 * against the certified controller key, and only then expiry and site: an
 * unauthenticated label learns nothing and changes nothing.
 */
export const BUNDLE_PREFIX = 'WARD1:';
/** Hard bound on scanned text: a version-25 QR code at level L holds under 1,900 alphanumeric characters. */
export const MAX_BUNDLE_TEXT = 2048;
const CONTROLLER_CERT_TAG = 0xc1;
const BUNDLE_TAG = 0xb1;
const CA_PIN_BYTES = 16;
const LABEL = /^[A-Za-z0-9._-]{1,32}$/;
/** host:port (IPv6 in brackets); the scheme is always mqtts. */
const BROKER = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}$/;

export interface ControllerCertBody {
  /** base64url raw ed25519 public key of the controller. */
  readonly controllerPublicKey: string;
  /** base64url of the first 16 bytes of SHA-256 over the fleet CA certificate (DER): the TLS anchor for the broker. */
  readonly caPin: string;
  readonly notAfter: number;
  readonly rootVersion: number;
}

export interface VerifiedControllerCert extends ControllerCertBody {
  readonly controllerKid: string;
  /** The root key that certified it. */
  readonly rootKid: string;
}

/** Only what bundle verification needs of the root: its version and keys (kid → base64url raw public key). */
export interface TrustRoot {
  readonly payload: { readonly version: number; readonly keys: Readonly<Record<string, string>>; readonly threshold?: number };
}

export interface BundleContent {
  readonly controllerCert: Uint8Array;
  /** 16 random bytes; the account password on the enrollment listener and the proof in the request. */
  readonly token: Uint8Array;
  readonly exp: number;
  readonly brokers: readonly string[];
  readonly site: string;
  readonly line: string;
  readonly cell: string;
  /** Claim flow: the device key id (base64url, 16 bytes) the code is bound to. */
  readonly boundKid?: string;
}

export interface VerifiedBundle {
  readonly controller: VerifiedControllerCert;
  /** The controller certificate bytes as carried (forwarded to the agent's identity store). */
  readonly controllerCert: Uint8Array;
  readonly token: string;
  readonly codeId: string;
  readonly exp: number;
  readonly brokers: readonly string[];
  readonly site: string;
  readonly line: string;
  readonly cell: string;
  readonly boundKid: string | undefined;
}

function fail(code: WardErrorCode, message: string, details: Record<string, unknown> = {}): never {
  throw new WardError(code, message, { details });
}

/** The public handle of a token: names its broker account and topics without revealing the token. */
export function enrollmentCodeId(token: Uint8Array): string {
  return createHash('sha256').update('ward-enroll-code\0').update(token).digest('hex').slice(0, 16);
}

export function tokenHash(token: Uint8Array): string {
  return createHash('sha256').update('ward-enroll-token\0').update(token).digest('base64url');
}

function signedPair(body: Uint8Array, key: SigningKey): Uint8Array {
  return encode([body, new Uint8Array(sign(null, body, key.privateKey))]);
}

function rawKey(b64: string): Uint8Array {
  return new Uint8Array(Buffer.from(b64, 'base64url'));
}

/** The CA pin for a fleet CA certificate's SHA-256 fingerprint (base64url, as x509.certFingerprint gives). */
export function caPinOf(caFingerprint: string): string {
  return Buffer.from(caFingerprint, 'base64url').subarray(0, CA_PIN_BYTES).toString('base64url');
}

export function issueControllerCert(rootKey: SigningKey, body: ControllerCertBody): Uint8Array {
  const ca = Buffer.from(body.caPin, 'base64url');
  if (ca.length !== CA_PIN_BYTES) throw new TypeError('caPin must be 16 bytes, base64url (see caPinOf)');
  const encoded = encode([CONTROLLER_CERT_TAG, rawKey(body.controllerPublicKey), new Uint8Array(ca), body.notAfter, body.rootVersion]);
  return signedPair(encoded, rootKey);
}

export function encodeBundle(controllerKey: SigningKey, content: BundleContent): string {
  if (content.token.length !== 16) throw new TypeError('token must be 16 bytes');
  for (const [name, value] of [
    ['site', content.site],
    ['line', content.line],
    ['cell', content.cell],
  ] as const) {
    if (!LABEL.test(value)) throw new TypeError(`${name} must be 1-32 of [A-Za-z0-9._-], got ${JSON.stringify(value)}`);
  }
  if (content.brokers.length === 0 || content.brokers.length > 4 || !content.brokers.every((b) => BROKER.test(b))) {
    throw new TypeError(`brokers must be 1-4 host:port entries, got ${JSON.stringify(content.brokers)}`);
  }
  const body = encode([
    BUNDLE_TAG,
    // Plain Uint8Array copies: cbor2 encodes a Node Buffer differently from a byte string.
    new Uint8Array(content.controllerCert),
    new Uint8Array(content.token),
    content.exp,
    [...content.brokers],
    content.site,
    content.line,
    content.cell,
    ...(content.boundKid !== undefined ? [new Uint8Array(Buffer.from(content.boundKid, 'base64url'))] : []),
  ]);
  return BUNDLE_PREFIX + base45Encode(signedPair(body, controllerKey));
}

function decodeCbor(bytes: Uint8Array, what: string): unknown {
  try {
    return decode(bytes, { maxDepth: 8, rejectDuplicateKeys: true, rejectStreaming: true });
  } catch (cause) {
    throw new WardError(ErrorCodes.BUNDLE_MALFORMED, `${what} is not valid CBOR: ${(cause as Error).message}`, { cause });
  }
}

function splitSigned(bytes: Uint8Array, what: string): { body: Uint8Array; sig: Uint8Array } {
  const outer = decodeCbor(bytes, what);
  if (!Array.isArray(outer) || outer.length !== 2 || !(outer[0] instanceof Uint8Array) || !(outer[1] instanceof Uint8Array) || outer[1].length !== 64) {
    fail(ErrorCodes.BUNDLE_MALFORMED, `${what} is not [body, 64-byte signature]`);
  }
  return { body: outer[0], sig: outer[1] };
}

const isUint = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isBytes = (v: unknown, n: number): v is Uint8Array => v instanceof Uint8Array && v.length === n;
const isLabel = (v: unknown): v is string => typeof v === 'string' && LABEL.test(v);

/**
 * `allowExpired` is for an identity already enrolled: a gateway keeps working
 * with the controller that enrolled it when that certification lapses (it
 * logs it, and takes the renewed certification from the controller's next
 * answer); a fresh bundle is never accepted from an expired certification.
 */
export function verifyControllerCert(bytes: Uint8Array, root: TrustRoot, nowSec: number, options: { allowExpired?: boolean } = {}): VerifiedControllerCert {
  if (root.payload.threshold !== undefined && root.payload.threshold > 1) {
    // One signature would let a single stolen root key certify a rogue controller under a k-of-n root.
    fail(
      ErrorCodes.BUNDLE_UNTRUSTED_CONTROLLER,
      `fleet root v${root.payload.version} needs ${root.payload.threshold} signatures; multi-signature controller certificates are not supported yet`,
    );
  }
  const { body, sig } = splitSigned(bytes, 'controller certificate');
  let rootKid: string | undefined;
  for (const [kid, publicRaw] of Object.entries(root.payload.keys)) {
    if (verify(null, body, publicKeyFromRaw(publicRaw), sig)) {
      rootKid = kid;
      break;
    }
  }
  if (rootKid === undefined) {
    fail(ErrorCodes.BUNDLE_UNTRUSTED_CONTROLLER, `controller certificate is not signed by any key of fleet root v${root.payload.version}`, {
      rootVersion: root.payload.version,
    });
  }
  const f = decodeCbor(body, 'controller certificate body');
  if (
    !Array.isArray(f) ||
    f.length !== 5 ||
    f[0] !== CONTROLLER_CERT_TAG ||
    !isBytes(f[1], 32) ||
    !isBytes(f[2], CA_PIN_BYTES) ||
    !isUint(f[3]) ||
    !isUint(f[4])
  ) {
    fail(ErrorCodes.BUNDLE_MALFORMED, 'controller certificate body has the wrong shape');
  }
  const [, key, ca, notAfter, rootVersion] = f as [number, Uint8Array, Uint8Array, number, number];
  if (nowSec > notAfter && options.allowExpired !== true) {
    fail(
      ErrorCodes.BUNDLE_UNTRUSTED_CONTROLLER,
      `controller certificate expired at ${iso(notAfter)} (now ${iso(nowSec)}): re-certify the controller with the fleet root, or check the gateway clock`,
      { notAfter, now: nowSec },
    );
  }
  const controllerPublicKey = Buffer.from(key).toString('base64url');
  return {
    controllerPublicKey,
    controllerKid: keyIdOf(controllerPublicKey),
    caPin: Buffer.from(ca).toString('base64url'),
    notAfter,
    rootVersion,
    rootKid,
  };
}

export interface BundleCheck {
  readonly root: TrustRoot;
  readonly nowSec: number;
  /** Refuse bundles for another site (and line, if given): a gateway imaged for one plant must not join another. */
  readonly expectSite?: string;
  readonly expectLine?: string;
  /** This gateway's key id: a code bound to another key is refused. */
  readonly deviceKid?: string;
  /** Claim path: only a code bound to this key will do (a genuine but unbound label could be swapped in). */
  readonly requireBound?: boolean;
}

/** Verifies scanned text completely; the result is safe to act on. */
export function verifyBundle(text: string, check: BundleCheck): VerifiedBundle {
  const trimmed = text.trim();
  if (trimmed.length > MAX_BUNDLE_TEXT)
    fail(ErrorCodes.BUNDLE_MALFORMED, `scanned text is ${trimmed.length} characters; a Ward bundle is under ${MAX_BUNDLE_TEXT}`);
  if (!trimmed.startsWith(BUNDLE_PREFIX)) {
    fail(ErrorCodes.BUNDLE_MALFORMED, `not a Ward enrollment code: it does not start with ${BUNDLE_PREFIX}`, { length: trimmed.length });
  }
  const { body, sig } = splitSigned(base45Decode(trimmed.slice(BUNDLE_PREFIX.length)), 'enrollment bundle');
  const f = decodeCbor(body, 'enrollment bundle body');
  if (
    !Array.isArray(f) ||
    (f.length !== 8 && !(f.length === 9 && isBytes(f[8], 16))) ||
    f[0] !== BUNDLE_TAG ||
    !(f[1] instanceof Uint8Array) ||
    !isBytes(f[2], 16) ||
    !isUint(f[3]) ||
    !Array.isArray(f[4]) ||
    f[4].length === 0 ||
    f[4].length > 4 ||
    !f[4].every((b: unknown) => typeof b === 'string' && BROKER.test(b)) ||
    !isLabel(f[5]) ||
    !isLabel(f[6]) ||
    !isLabel(f[7])
  ) {
    fail(ErrorCodes.BUNDLE_MALFORMED, 'enrollment bundle body has the wrong shape');
  }
  const [, certBytes, token, exp, brokers, site, line, cell, bound] = f as [
    number,
    Uint8Array,
    Uint8Array,
    number,
    string[],
    string,
    string,
    string,
    Uint8Array?,
  ];
  const controller = verifyControllerCert(certBytes, check.root, check.nowSec);
  const controllerKey: KeyObject = publicKeyFromRaw(controller.controllerPublicKey);
  if (!verify(null, body, controllerKey, sig)) {
    fail(ErrorCodes.BUNDLE_BAD_SIGNATURE, `enrollment bundle signature does not verify for controller ${controller.controllerKid}`, {
      controllerKid: controller.controllerKid,
    });
  }
  if (check.nowSec > exp) {
    fail(ErrorCodes.BUNDLE_EXPIRED, `enrollment code expired at ${iso(exp)} (now ${iso(check.nowSec)}); ask for a new code`, { exp, now: check.nowSec });
  }
  if (check.expectSite !== undefined && site !== check.expectSite) {
    fail(ErrorCodes.BUNDLE_WRONG_SITE, `enrollment code is for site ${site}; this gateway belongs to site ${check.expectSite}`, { site });
  }
  if (bound !== undefined && check.deviceKid !== undefined && Buffer.from(bound).toString('base64url') !== check.deviceKid) {
    fail(ErrorCodes.BUNDLE_NOT_FOR_THIS_DEVICE, 'this enrollment code was issued for another claimed gateway');
  }
  if (check.requireBound === true && bound === undefined) {
    fail(ErrorCodes.BUNDLE_NOT_FOR_THIS_DEVICE, 'a claimed gateway only accepts a code bound to its own key');
  }
  if (check.expectLine !== undefined && line !== check.expectLine) {
    fail(ErrorCodes.BUNDLE_WRONG_SITE, `enrollment code is for line ${line}; this gateway belongs to line ${check.expectLine}`, { line });
  }
  return {
    controller,
    controllerCert: certBytes,
    token: Buffer.from(token).toString('base64url'),
    codeId: enrollmentCodeId(token),
    exp,
    brokers,
    site,
    line,
    cell,
    boundKid: bound ? Buffer.from(bound).toString('base64url') : undefined,
  };
}

function iso(sec: number): string {
  return new Date(sec * 1000).toISOString();
}
