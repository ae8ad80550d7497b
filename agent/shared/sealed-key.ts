import { createCipheriv, createDecipheriv, createPrivateKey, randomBytes, scryptSync } from 'node:crypto';
import { ErrorCodes, WardError } from '../core/errors.js';
import { canonicalBytes } from './canonical.js';

/**
 * A private key at rest under an operator passphrase (the fleet root key is
 * kept offline this way). The file is one JSON object:
 *
 *   { format: 'ward-sealed-key/v1',
 *     kdf: { name: 'scrypt', N, r: 8, p: 1, salt },   salt: 16 random bytes
 *     cipher: 'aes-256-gcm', iv, ciphertext, tag }     iv: 12 random bytes
 *
 * binary fields in unpadded base64url. The AES key is scrypt(passphrase,
 * salt); the header (format, kdf, cipher, iv) is GCM additional data as
 * canonical JSON, so lowering the work factor or swapping any parameter
 * fails authentication instead of quietly weakening the file. A wrong
 * passphrase and a modified file are indistinguishable by design: both are
 * FLEET_PASSPHRASE_WRONG. Everything is node:crypto (OpenSSL).
 */
export const SEALED_KEY_FORMAT = 'ward-sealed-key/v1';

/** scrypt N written by default: ~128 MiB of memory, a few hundred ms on a laptop. */
export const DEFAULT_SEAL_COST = 2 ** 17;
/** The work factors a key file may carry: below is too cheap to guess against, above is a memory bomb (1 GiB at 2^20). */
export const MIN_SEAL_COST = 2 ** 14;
export const MAX_SEAL_COST = 2 ** 20;

const SCRYPT_R = 8;
const SCRYPT_P = 1;
const SALT_BYTES = 16;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
/** A PEM private key is a few hundred bytes; anything this large is not a key file. */
const MAX_FILE_CHARS = 64 * 1024;

export interface SealOptions {
  /** scrypt N: a power of two in [2^14, 2^20]; default 2^17. */
  readonly cost?: number;
}

interface Header {
  readonly format: typeof SEALED_KEY_FORMAT;
  readonly kdf: { readonly name: 'scrypt'; readonly N: number; readonly r: number; readonly p: number; readonly salt: string };
  readonly cipher: 'aes-256-gcm';
  readonly iv: string;
}

export function sealPrivateKey(pem: string, passphrase: string, opts: SealOptions = {}): string {
  if (typeof pem !== 'string' || pem.length === 0) throw new TypeError('sealPrivateKey: pem must be a non-empty string');
  try {
    createPrivateKey(pem);
  } catch {
    throw new TypeError('sealPrivateKey: pem is not a PEM private key');
  }
  const secret = passphraseBytes(passphrase, 'sealPrivateKey');
  const N = opts.cost ?? DEFAULT_SEAL_COST;
  if (!isAllowedCost(N)) throw new TypeError(`sealPrivateKey: cost must be a power of two in [2^14, 2^20], got ${N}`);

  const header: Header = {
    format: SEALED_KEY_FORMAT,
    kdf: { name: 'scrypt', N, r: SCRYPT_R, p: SCRYPT_P, salt: randomBytes(SALT_BYTES).toString('base64url') },
    cipher: 'aes-256-gcm',
    iv: randomBytes(IV_BYTES).toString('base64url'),
  };
  const key = deriveKey(secret, header);
  const plaintext = Buffer.from(pem, 'utf8');
  try {
    const cipher = createCipheriv('aes-256-gcm', key, Buffer.from(header.iv, 'base64url'), { authTagLength: TAG_BYTES });
    cipher.setAAD(canonicalBytes(header));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const tag = cipher.getAuthTag();
    return `${JSON.stringify({ ...header, ciphertext: ciphertext.toString('base64url'), tag: tag.toString('base64url') }, null, 2)}\n`;
  } finally {
    key.fill(0);
    secret.fill(0);
    plaintext.fill(0);
  }
}

/** Returns the PEM sealed in `text`. */
export function openSealedKey(text: string, passphrase: string): string {
  if (typeof text !== 'string') throw new TypeError('openSealedKey: text must be a string');
  const secret = passphraseBytes(passphrase, 'openSealedKey');
  try {
    const { header, ciphertext, tag } = parseKeyFile(text);
    const key = deriveKey(secret, header);
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(header.iv, 'base64url'), { authTagLength: TAG_BYTES });
      decipher.setAAD(canonicalBytes(header));
      decipher.setAuthTag(tag);
      let plaintext: Buffer;
      try {
        plaintext = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
      } catch (cause) {
        throw new WardError(ErrorCodes.FLEET_PASSPHRASE_WRONG, 'wrong passphrase, or the key file was modified', { cause });
      }
      const pem = plaintext.toString('utf8');
      plaintext.fill(0);
      return pem;
    } finally {
      key.fill(0);
    }
  } finally {
    secret.fill(0);
  }
}

/** NFC so that the same passphrase typed on two keyboards (precomposed é vs e + combining accent) opens the same file. */
function passphraseBytes(passphrase: string, fn: string): Buffer {
  if (typeof passphrase !== 'string' || passphrase.length === 0) throw new TypeError(`${fn}: passphrase must be a non-empty string`);
  if (!passphrase.isWellFormed()) throw new TypeError(`${fn}: passphrase contains a lone surrogate`);
  return Buffer.from(passphrase.normalize('NFC'), 'utf8');
}

function isAllowedCost(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_SEAL_COST && n <= MAX_SEAL_COST && (n & (n - 1)) === 0;
}

function deriveKey(secret: Buffer, header: Header): Buffer {
  const { N, r, p, salt } = header.kdf;
  // OpenSSL needs 128·r·(N + p + 2) bytes; Node's default maxmem (32 MiB) is below N = 2^15.
  const maxmem = 128 * r * (N + p + 2) + 1024 * 1024;
  return scryptSync(secret, Buffer.from(salt, 'base64url'), KEY_BYTES, { N, r, p, maxmem });
}

function invalid(field: string, what: string): never {
  throw new WardError(ErrorCodes.FLEET_KEY_FILE_INVALID, `key file: ${field} ${what}`, { details: { field } });
}

/** Unpadded base64url that decodes to exactly `bytes` bytes (or at least one byte when `bytes` is undefined). */
function binaryField(value: unknown, field: string, bytes?: number): Buffer {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_-]+$/.test(value)) invalid(field, 'is not base64url');
  const buf = Buffer.from(value, 'base64url');
  if (buf.toString('base64url') !== value) invalid(field, 'is not canonical base64url');
  if (bytes !== undefined && buf.length !== bytes) invalid(field, `must be ${bytes} bytes, got ${buf.length}`);
  return buf;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function onlyFields(obj: Record<string, unknown>, allowed: readonly string[], where: string): void {
  const extra = Object.keys(obj).filter((k) => !allowed.includes(k));
  if (extra.length > 0) invalid(extra.map((k) => `${where}${k}`).join(', '), 'is not a known field');
}

function parseKeyFile(text: string): { header: Header; ciphertext: Buffer; tag: Buffer } {
  if (text.length > MAX_FILE_CHARS) invalid('(file)', `is ${text.length} characters, limit ${MAX_FILE_CHARS}`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    invalid('(file)', 'is not JSON');
  }
  if (!isPlainObject(doc)) invalid('(file)', 'is not a JSON object');
  // Format first: a future version deserves "unknown format", not a complaint about its fields.
  if (doc.format !== SEALED_KEY_FORMAT) invalid('format', `is ${JSON.stringify(doc.format)}, expected ${SEALED_KEY_FORMAT}`);
  onlyFields(doc, ['format', 'kdf', 'cipher', 'iv', 'ciphertext', 'tag'], '');

  const kdf = doc.kdf;
  if (!isPlainObject(kdf)) invalid('kdf', 'is not an object');
  onlyFields(kdf, ['name', 'N', 'r', 'p', 'salt'], 'kdf.');
  if (kdf.name !== 'scrypt') invalid('kdf.name', `is ${JSON.stringify(kdf.name)}, expected "scrypt"`);
  if (typeof kdf.N !== 'number' || !isAllowedCost(kdf.N)) invalid('kdf.N', 'must be a power of two in [2^14, 2^20]');
  if (kdf.r !== SCRYPT_R) invalid('kdf.r', `must be ${SCRYPT_R}`);
  if (kdf.p !== SCRYPT_P) invalid('kdf.p', `must be ${SCRYPT_P}`);
  binaryField(kdf.salt, 'kdf.salt', SALT_BYTES);
  if (doc.cipher !== 'aes-256-gcm') invalid('cipher', `is ${JSON.stringify(doc.cipher)}, expected "aes-256-gcm"`);
  binaryField(doc.iv, 'iv', IV_BYTES);
  const ciphertext = binaryField(doc.ciphertext, 'ciphertext');
  const tag = binaryField(doc.tag, 'tag', TAG_BYTES);

  const header: Header = {
    format: SEALED_KEY_FORMAT,
    kdf: { name: 'scrypt', N: kdf.N, r: SCRYPT_R, p: SCRYPT_P, salt: kdf.salt as string },
    cipher: 'aes-256-gcm',
    iv: doc.iv as string,
  };
  return { header, ciphertext, tag };
}
