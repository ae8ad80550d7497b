import { createHash, createPrivateKey, createPublicKey, type KeyObject, X509Certificate as NodeX509, randomBytes, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import type * as X509 from '@peculiar/x509';
import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * The fleet CA and the TLS identities it issues (devices, the controller,
 * the broker). ECDSA P-256 with SHA-256 throughout: every TLS stack on a
 * gateway speaks it, keys and signatures are small, and one algorithm means
 * one thing to audit. Building certificates needs an ASN.1 library
 * (@peculiar/x509, on webcrypto); reading and checking them uses Node's own
 * OpenSSL-backed X509Certificate, the same code that will judge them in TLS.
 *
 * Fingerprints are base64url(SHA-256(DER)) of the certificate, or of the
 * SubjectPublicKeyInfo for a key: short, URL- and topic-safe.
 */

export interface FleetCa {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface CertDescription {
  readonly subjectCn: string;
  readonly issuerCn: string;
  /** Lowercase hex, no leading zero byte. */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint: string;
}

const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;
// A CSR travels from an untrusted device; a P-256 one is ~400 bytes, so anything far larger is not worth parsing.
const MAX_CSR_CHARS = 8192;
// Fresh certificates are backdated a little so a peer whose clock lags (common on gateways without RTC) still accepts them.
const CLOCK_SKEW_MS = 60 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;
// ub-common-name in RFC 5280. Identities become Mosquitto usernames and ACL lines, so no spaces or controls there.
const IDENTITY_CN = /^[!-~]{1,64}$/;
const LABEL_CN = /^[ -~]{1,64}$/;

const crypto = webcrypto;
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

let library: Promise<typeof X509> | undefined;

/**
 * @peculiar/x509 registers its algorithms through tsyringe, which needs the
 * Reflect metadata polyfill loaded first. Both are imported lazily: processes
 * that only read certificates (Node's X509Certificate) never load them, and
 * the binary's startup does not pay for them.
 */
function x509(): Promise<typeof X509> {
  library ??= import('reflect-metadata').then(() => import('@peculiar/x509'));
  return library;
}

export async function generateTlsKey(): Promise<{ privateKeyPem: string }> {
  const { privateKey } = await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  return { privateKeyPem: await exportPrivateKeyPem(privateKey) };
}

export async function createCsr(opts: { privateKeyPem: string; commonName: string }): Promise<string> {
  checkCn(opts.commonName, IDENTITY_CN, 'commonName');
  const lib = await x509();
  const keys = await importKeyPair(opts.privateKeyPem, 'privateKeyPem');
  const csr = await lib.Pkcs10CertificateRequestGenerator.create({ name: [{ CN: [opts.commonName] }], keys, signingAlgorithm: SIGNING }, crypto);
  return withNewline(csr.toString('pem'));
}

/**
 * Checks what a CSR can prove: that its sender holds the private key of a
 * P-256 public key. The CN it claims is returned for the caller to compare,
 * never trusted as the identity.
 */
export async function verifyCsr(pem: string): Promise<{ commonName: string; publicKeyFingerprint: string }> {
  return (await parseCsr(pem)).info;
}

async function parseCsr(pem: string): Promise<{ csr: X509.Pkcs10CertificateRequest; info: { commonName: string; publicKeyFingerprint: string } }> {
  if (typeof pem !== 'string') throw new TypeError('a CSR is a PEM string');
  const bad = (message: string, cause?: unknown) =>
    new WardError(ErrorCodes.X509_BAD_CSR, message, cause === undefined ? {} : { cause, details: { reason: String(cause) } });
  if (pem.length > MAX_CSR_CHARS) throw bad(`CSR is too large (${pem.length} characters, at most ${MAX_CSR_CHARS})`);
  const lib = await x509();
  let csr: X509.Pkcs10CertificateRequest;
  try {
    csr = new lib.Pkcs10CertificateRequest(pem);
  } catch (cause) {
    throw bad('CSR is malformed (not a PEM PKCS#10 certificate request)', cause);
  }
  const spki = Buffer.from(csr.publicKey.rawData);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (cause) {
    throw bad('CSR public key is unreadable', cause);
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    const kind = key.asymmetricKeyType === 'ec' ? `EC ${key.asymmetricKeyDetails?.namedCurve}` : String(key.asymmetricKeyType);
    throw bad(`CSR key must be EC P-256, got ${kind}`);
  }
  const alg = csr.signatureAlgorithm as { name?: string; hash?: { name?: string } };
  if (alg.name !== 'ECDSA' || alg.hash?.name !== 'SHA-256') throw bad('CSR must be signed with ECDSA SHA-256');
  let valid = false;
  try {
    valid = await csr.verify(crypto);
  } catch (cause) {
    throw bad('CSR signature is malformed', cause);
  }
  if (!valid) throw bad('CSR signature does not verify (tampered, or not signed by its own key)');
  const cns = csr.subjectName.getField('CN');
  const commonName = cns[0];
  if (cns.length !== 1 || commonName === undefined) throw bad(`CSR subject must have exactly one CN, has ${cns.length}`);
  return { csr, info: { commonName, publicKeyFingerprint: createHash('sha256').update(spki).digest('base64url') } };
}

export async function createFleetCa(opts: { commonName: string; validDays: number; now?: Date }): Promise<FleetCa> {
  checkCn(opts.commonName, LABEL_CN, 'commonName');
  const { notBefore, notAfter } = validity(opts.validDays, opts.now);
  const lib = await x509();
  const keys = await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const cert = await lib.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerial(),
      name: [{ CN: [opts.commonName] }],
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        // pathlen 0: the fleet CA signs leaves only, so a stolen device key can never be turned into a sub-CA.
        new lib.BasicConstraintsExtension(true, 0, true),
        new lib.KeyUsagesExtension(lib.KeyUsageFlags.keyCertSign | lib.KeyUsageFlags.cRLSign, true),
        await lib.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return { certPem: withNewline(cert.toString('pem')), keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/**
 * Issues a device (or controller) client certificate. The subject CN is the
 * caller's decision — the identity the controller assigned — so a device
 * cannot pick its own name by writing it into the CSR.
 */
export async function issueClientCert(
  ca: FleetCa,
  opts: { csrPem: string; commonName: string; notBefore: Date; notAfter: Date },
): Promise<{ certPem: string; serial: string; notAfter: Date }> {
  checkCn(opts.commonName, IDENTITY_CN, 'commonName');
  checkDates(opts.notBefore, opts.notAfter);
  const { csr } = await parseCsr(opts.csrPem);
  const lib = await x509();
  const signer = await loadCa(lib, ca);
  const serial = randomSerial();
  const cert = await lib.X509CertificateGenerator.create(
    {
      serialNumber: serial,
      subject: [{ CN: [opts.commonName] }],
      issuer: signer.cert.subjectName,
      notBefore: opts.notBefore,
      notAfter: opts.notAfter,
      publicKey: csr.publicKey,
      signingKey: signer.key,
      signingAlgorithm: SIGNING,
      extensions: await leafExtensions(lib, signer.cert, csr.publicKey, lib.ExtendedKeyUsage.clientAuth),
    },
    crypto,
  );
  return { certPem: withNewline(cert.toString('pem')), serial, notAfter: cert.notAfter };
}

/** A broker/server certificate with a fresh key; hosts become SANs (IP literals as IP entries, since TLS clients never match an IP against a DNS SAN). */
export async function issueServerCert(
  ca: FleetCa,
  opts: { hosts: readonly string[]; validDays: number; now?: Date },
): Promise<{ certPem: string; keyPem: string; serial: string }> {
  const first = opts.hosts[0];
  if (first === undefined) throw new TypeError('issueServerCert needs at least one host');
  for (const h of opts.hosts) checkCn(h, IDENTITY_CN, 'host');
  const { notBefore, notAfter } = validity(opts.validDays, opts.now);
  const lib = await x509();
  const signer = await loadCa(lib, ca);
  const keys = await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  const publicKey = await lib.PublicKey.create(keys.publicKey, crypto);
  const serial = randomSerial();
  const extensions = await leafExtensions(lib, signer.cert, publicKey, lib.ExtendedKeyUsage.serverAuth);
  extensions.push(new lib.SubjectAlternativeNameExtension(opts.hosts.map((h) => ({ type: isIP(h) ? 'ip' : 'dns', value: h }))));
  const cert = await lib.X509CertificateGenerator.create(
    {
      serialNumber: serial,
      subject: [{ CN: [first] }],
      issuer: signer.cert.subjectName,
      notBefore,
      notAfter,
      publicKey,
      signingKey: signer.key,
      signingAlgorithm: SIGNING,
      extensions,
    },
    crypto,
  );
  return { certPem: withNewline(cert.toString('pem')), keyPem: await exportPrivateKeyPem(keys.privateKey), serial };
}

/**
 * A v2 CRL signed by the fleet CA. Relying parties that check CRLs (Mosquitto
 * with `crlfile`) refuse every client once nextUpdate has passed, so it must
 * be re-issued well before then even when nothing new was revoked.
 * No CRL number extension: @peculiar/x509 has no builder for it and OpenSSL
 * does not need it. The library also writes an empty crlEntryExtensions
 * sequence per entry (RFC 5280 wants it absent); OpenSSL accepts that.
 */
export async function issueCrl(
  ca: FleetCa,
  opts: { revoked: readonly { serial: string; revokedAt: Date }[]; thisUpdate: Date; nextUpdate: Date },
): Promise<string> {
  checkDates(opts.thisUpdate, opts.nextUpdate);
  for (const r of opts.revoked) {
    if (!/^[0-9a-f]{1,40}$/i.test(r.serial)) throw new TypeError(`not a hex serial: ${JSON.stringify(r.serial)}`);
    if (!(r.revokedAt instanceof Date) || Number.isNaN(r.revokedAt.getTime())) throw new TypeError('revokedAt must be a valid Date');
  }
  const lib = await x509();
  const signer = await loadCa(lib, ca);
  const crl = await lib.X509CrlGenerator.create(
    {
      issuer: signer.cert.subjectName,
      thisUpdate: opts.thisUpdate,
      nextUpdate: opts.nextUpdate,
      entries: opts.revoked.map((r) => ({ serialNumber: r.serial.toLowerCase(), revocationDate: r.revokedAt })),
      signingKey: signer.key,
      signingAlgorithm: SIGNING,
      extensions: [await authorityKeyId(lib, signer.cert)],
    },
    crypto,
  );
  // The library labels it "CRL"; OpenSSL (and RFC 7468) only read "X509 CRL".
  return withNewline(lib.PemConverter.encode(crl.rawData, 'X509 CRL'));
}

export function certFingerprint(pem: string): string {
  return createHash('sha256').update(parseCert(pem).raw).digest('base64url');
}

export function describeCert(pem: string): CertDescription {
  const cert = parseCert(pem);
  const legacy = cert.toLegacyObject();
  return {
    subjectCn: firstCn(legacy.subject),
    issuerCn: firstCn(legacy.issuer),
    serial: normaliseSerial(cert.serialNumber),
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    fingerprint: createHash('sha256').update(cert.raw).digest('base64url'),
  };
}

/** True when `caPem` is the issuer by name and its key verifies the signature. Validity dates are not checked here. */
export function verifyCertIssuedBy(certPem: string, caPem: string): boolean {
  const cert = parseCert(certPem);
  const ca = parseCert(caPem);
  return cert.checkIssued(ca) && cert.verify(ca.publicKey);
}

function parseCert(pem: string): NodeX509 {
  if (typeof pem !== 'string') throw new TypeError('a certificate is a PEM string');
  try {
    return new NodeX509(pem);
  } catch (cause) {
    throw new WardError(ErrorCodes.X509_BAD_CERT, 'not a PEM X.509 certificate', { cause });
  }
}

// Node's legacy object splits the subject properly (RFC 2253 escapes resolved); a repeated CN comes as an array.
// The first one is taken because that is the one Mosquitto's use_identity_as_username picks.
function firstCn(name: NodeJS.Dict<string | string[]>): string {
  const cn = name.CN;
  return (Array.isArray(cn) ? cn[0] : cn) ?? '';
}

function normaliseSerial(hex: string): string {
  return hex.toLowerCase().replace(/^(00)+(?=.)/, '');
}

async function loadCa(lib: typeof X509, ca: FleetCa): Promise<{ cert: X509.X509Certificate; key: CryptoKey }> {
  let cert: X509.X509Certificate;
  try {
    cert = new lib.X509Certificate(ca.certPem);
  } catch (cause) {
    throw new WardError(ErrorCodes.X509_BAD_CERT, 'the CA certificate is not a PEM X.509 certificate', { cause });
  }
  const key = loadEcPrivateKey(ca.keyPem, 'CA keyPem');
  // Signing with the wrong key would produce certificates nobody can verify, and only fail much later, far away.
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  if (!spki.equals(Buffer.from(cert.publicKey.rawData))) {
    throw new WardError(ErrorCodes.X509_BAD_CERT, 'the CA key does not belong to the CA certificate');
  }
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
  return { cert, key: await crypto.subtle.importKey('pkcs8', pkcs8, EC_KEY, false, ['sign']) };
}

async function leafExtensions(lib: typeof X509, caCert: X509.X509Certificate, publicKey: X509.PublicKey, usage: string): Promise<X509.Extension[]> {
  return [
    new lib.BasicConstraintsExtension(false, undefined, true),
    new lib.KeyUsagesExtension(lib.KeyUsageFlags.digitalSignature, true),
    new lib.ExtendedKeyUsageExtension([usage], false),
    await lib.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
    await authorityKeyId(lib, caCert),
  ];
}

// Copy the CA's own subject key id rather than recomputing it: identifiers are only compared, never re-derived.
async function authorityKeyId(lib: typeof X509, caCert: X509.X509Certificate): Promise<X509.Extension> {
  const ski = caCert.getExtension(lib.SubjectKeyIdentifierExtension);
  return ski ? new lib.AuthorityKeyIdentifierExtension(ski.keyId, false) : lib.AuthorityKeyIdentifierExtension.create(caCert.publicKey, false, crypto);
}

function loadEcPrivateKey(pem: string, what: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (cause) {
    throw new WardError(ErrorCodes.KEY_INVALID, `${what} is not a PEM private key`, { cause });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new WardError(ErrorCodes.KEY_INVALID, `${what} must be an EC P-256 key`);
  }
  return key;
}

async function importKeyPair(pem: string, what: string): Promise<CryptoKeyPair> {
  const key = loadEcPrivateKey(pem, what);
  const [privateKey, publicKey] = await Promise.all([
    crypto.subtle.importKey('pkcs8', key.export({ type: 'pkcs8', format: 'der' }), EC_KEY, false, ['sign']),
    crypto.subtle.importKey('spki', createPublicKey(key).export({ type: 'spki', format: 'der' }), EC_KEY, true, ['verify']),
  ]);
  return { privateKey, publicKey };
}

async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await crypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString();
}

// 16 random bytes with the top bit clear and a non-zero first byte: a positive DER INTEGER of exactly 16 bytes, so the
// hex we return is byte-for-byte the serial every tool prints. Randomness (not a counter) keeps serials unguessable.
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f || 0x01;
  return bytes.toString('hex');
}

function validity(validDays: number, now: Date = new Date()): { notBefore: Date; notAfter: Date } {
  if (!Number.isFinite(validDays) || validDays <= 0) throw new TypeError(`validDays must be a positive number, got ${validDays}`);
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new TypeError('now must be a valid Date');
  return { notBefore: new Date(now.getTime() - CLOCK_SKEW_MS), notAfter: new Date(now.getTime() + validDays * DAY_MS) };
}

function checkDates(from: Date, to: Date): void {
  for (const d of [from, to]) if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw new TypeError('dates must be valid Date objects');
  if (from.getTime() >= to.getTime()) throw new TypeError(`the validity window is empty: ${from.toISOString()} .. ${to.toISOString()}`);
}

function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

function checkCn(value: string, pattern: RegExp, what: string): void {
  if (typeof value !== 'string' || !pattern.test(value)) throw new TypeError(`${what} must be 1-64 printable ASCII characters, got ${JSON.stringify(value)}`);
}
