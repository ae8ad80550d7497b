import { createPublicKey, X509Certificate } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ErrorCodes, WardError } from '../core/errors.js';
import { caPinOf, type TrustRoot, verifyControllerCert } from '../shared/bundle.js';
import { type Envelope, EnvelopeVerifier } from '../shared/envelope.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from '../shared/keys.js';
import { DEVICE_CERT_TYPE, type DeviceCertPayload, decodePayload, deviceCertPayload } from '../shared/messages.js';
import { DEVICE_ID_PATTERN } from '../shared/topics.js';
import { certFingerprint } from '../shared/x509.js';
import { ensurePrivateDir, readJsonFile, writeFileAtomic } from '../state/files.js';

/**
 * The gateway's enrolled identity, in `<stateDir>/identity/`. Each enrollment
 * or renewal writes a complete generation folder (TLS key, client
 * certificate, fleet CA, identity.json) and then switches `current.json` to
 * it with one atomic rename: a power cut leaves the old identity or the new
 * one, never a key that does not match its certificate. Older generations
 * are removed after the switch.
 *
 * load() re-checks everything against the trust root, so a state folder that
 * was edited or half-copied is refused (WARD_IDENTITY_*) rather than used.
 */
export interface StoredIdentity {
  readonly deviceId: string;
  readonly publicKey: string;
  readonly controllerPublicKey: string;
  /** base64url of the root-signed controller certificate (bundle.ts). */
  readonly controllerCert: string;
  readonly deviceCert: Envelope;
  readonly brokers: readonly string[];
  readonly site: string;
  readonly line: string;
  readonly cell: string;
  readonly certSerial: string;
  /** Seconds since the epoch. */
  readonly certNotAfter: number;
  readonly certNotBefore: number;
  readonly enrolledAt: number;
}

export interface LoadedIdentity extends StoredIdentity {
  readonly generation: string;
  /** The controller's certification by the root has lapsed (still trusted for this identity; see verifyControllerCert). */
  readonly controllerCertExpired: boolean;
  /** Paths the MQTT link reads. */
  readonly files: { readonly ca: string; readonly cert: string; readonly key: string };
  readonly deviceCertPayload: DeviceCertPayload;
}

export interface NewIdentityMaterial {
  readonly identity: StoredIdentity;
  readonly tlsKeyPem: string;
  readonly certPem: string;
  readonly caPem: string;
}

const storedSchema = z.strictObject({
  format: z.literal('ward-identity/v1'),
  deviceId: z.string().regex(DEVICE_ID_PATTERN),
  publicKey: z.string().length(43),
  controllerPublicKey: z.string().length(43),
  controllerCert: z.string().regex(/^[A-Za-z0-9_-]+$/),
  deviceCert: z.strictObject({ payload: z.record(z.string(), z.unknown()), kid: z.string(), sig: z.string() }),
  brokers: z.array(z.string()).min(1),
  site: z.string(),
  line: z.string(),
  cell: z.string(),
  certSerial: z.string(),
  certNotAfter: z.number().int(),
  certNotBefore: z.number().int(),
  enrolledAt: z.number().int(),
});

const FILES = { key: 'tls-key.pem', cert: 'tls-cert.pem', ca: 'ca.pem', identity: 'identity.json' } as const;

function corrupt(message: string, cause?: unknown): WardError {
  return new WardError(ErrorCodes.IDENTITY_CORRUPT, message, cause === undefined ? {} : { cause });
}

export class IdentityStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'identity');
  }

  async exists(): Promise<boolean> {
    return (await readJsonFile(join(this.dir, 'current.json'))) !== undefined;
  }

  /**
   * The current identity, verified: the controller certificate against the
   * root, the device certificate against the controller key and this
   * device's key, the X.509 certificate against the pinned CA and the TLS key.
   */
  async load(options: { root: TrustRoot; key: SigningKey; nowSec: number }): Promise<LoadedIdentity | undefined> {
    const current = await readJsonFile(join(this.dir, 'current.json'));
    if (current === undefined) return undefined;
    const generation = (current as { generation?: unknown }).generation;
    if (typeof generation !== 'string' || !/^gen-[0-9a-f]{1,40}$/.test(generation)) throw corrupt(`${this.dir}/current.json names no generation`);
    const dir = join(this.dir, generation);
    const raw = await readJsonFile(join(dir, FILES.identity));
    const parsed = storedSchema.safeParse(raw);
    if (!parsed.success) throw corrupt(`${dir}/${FILES.identity} is not a Ward identity: ${parsed.error.issues[0]?.path.join('.') ?? ''}`);
    const stored = parsed.data;
    let certPem: string;
    let caPem: string;
    let keyPem: string;
    try {
      [certPem, caPem, keyPem] = (await Promise.all([FILES.cert, FILES.ca, FILES.key].map((f) => readFile(join(dir, f), 'utf8')))) as [string, string, string];
    } catch (cause) {
      throw corrupt(`identity generation ${dir} is incomplete`, cause);
    }
    if (stored.publicKey !== options.key.publicRaw) {
      throw new WardError(
        ErrorCodes.IDENTITY_CERT_MISMATCH,
        `identity in ${dir} belongs to key ${keyIdOf(stored.publicKey)}, not this device's ${options.key.kid}`,
      );
    }
    const controller = (() => {
      try {
        return verifyControllerCert(Buffer.from(stored.controllerCert, 'base64url'), options.root, options.nowSec, { allowExpired: true });
      } catch (cause) {
        throw corrupt(`identity in ${dir}: the controller certificate no longer verifies against the fleet root`, cause);
      }
    })();
    if (controller.controllerPublicKey !== stored.controllerPublicKey) throw corrupt(`identity in ${dir}: controller key does not match its certificate`);
    const deviceCertPayload = verifyDeviceCert(stored.deviceCert as Envelope, controller.controllerPublicKey, stored.deviceId, options.key.publicRaw);
    checkX509({ certPem, caPem, keyPem, deviceId: stored.deviceId, caPin: controller.caPin, serial: deviceCertPayload.certSerial });
    return {
      ...stored,
      deviceCert: stored.deviceCert as Envelope,
      controllerCertExpired: options.nowSec > controller.notAfter,
      generation,
      deviceCertPayload,
      files: { ca: join(dir, FILES.ca), cert: join(dir, FILES.cert), key: join(dir, FILES.key) },
    };
  }

  /** Writes a new generation and makes it current. */
  async save(material: NewIdentityMaterial): Promise<string> {
    await ensurePrivateDir(this.dir);
    const generation = `gen-${material.identity.certSerial}`;
    const dir = join(this.dir, generation);
    await rm(dir, { recursive: true, force: true });
    await ensurePrivateDir(dir);
    await writeFileAtomic(join(dir, FILES.key), material.tlsKeyPem, 0o600);
    await writeFileAtomic(join(dir, FILES.cert), material.certPem, 0o644);
    await writeFileAtomic(join(dir, FILES.ca), material.caPem, 0o644);
    await writeFileAtomic(join(dir, FILES.identity), `${JSON.stringify({ format: 'ward-identity/v1', ...material.identity }, null, 2)}\n`, 0o600);
    // The commit point.
    await writeFileAtomic(join(this.dir, 'current.json'), `${JSON.stringify({ generation })}\n`, 0o600);
    for (const entry of await readdir(this.dir)) {
      if (entry.startsWith('gen-') && entry !== generation) await rm(join(this.dir, entry), { recursive: true, force: true });
    }
    return generation;
  }

  /** Factory reset of the identity: everything enrollment produced goes. */
  async wipe(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

export function verifyDeviceCert(envelope: Envelope, controllerPublicKey: string, deviceId: string, devicePublicKey: string): DeviceCertPayload {
  const controllerKid = keyIdOf(controllerPublicKey);
  const verifier = new EnvelopeVerifier({
    keys: (kid) => (kid === controllerKid ? { publicKey: publicKeyFromRaw(controllerPublicKey), principal: 'controller' } : undefined),
    // Validity is the certificate's own business (renewal watches it); the envelope window equals it.
    clock: { now: () => ((envelope.payload as { iat?: number }).iat ?? 0) * 1000, monotonic: () => 0 },
    maxLifetimeSeconds: 3 * 366 * 86_400,
  });
  const verified = verifier.verify(JSON.stringify(envelope), { typ: DEVICE_CERT_TYPE, subject: deviceId });
  const payload = decodePayload(deviceCertPayload, verified.payload);
  if (payload.publicKey !== devicePublicKey) {
    throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, `device certificate for ${deviceId} names key ${keyIdOf(payload.publicKey)}, not this device's`);
  }
  return payload;
}

/** The X.509 side: CN, issuer, CA pin, serial and the TLS key all have to agree. */
export function checkX509(options: { certPem: string; caPem: string; keyPem: string; deviceId: string; caPin: string; serial: string }): void {
  let cert: X509Certificate;
  let ca: X509Certificate;
  try {
    cert = new X509Certificate(options.certPem);
    ca = new X509Certificate(options.caPem);
  } catch (cause) {
    throw new WardError(ErrorCodes.X509_BAD_CERT, 'device or CA certificate is not valid X.509', { cause });
  }
  if (caPinOf(certFingerprint(options.caPem)) !== options.caPin) {
    throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, 'the fleet CA does not match the pin certified by the fleet root');
  }
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey))
    throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, 'the client certificate is not issued by the fleet CA');
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
  if (cn !== options.deviceId) {
    throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, `the client certificate is for ${JSON.stringify(cn)}, not ${options.deviceId}`, { details: { cn } });
  }
  if (cert.serialNumber.toLowerCase().replace(/^0+/, '') !== options.serial.replace(/^0+/, '')) {
    throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, `the client certificate serial ${cert.serialNumber} is not the certified ${options.serial}`);
  }
  const certKey = cert.publicKey.export({ type: 'spki', format: 'der' });
  const ownKey = createPublicKey(options.keyPem).export({ type: 'spki', format: 'der' });
  if (!certKey.equals(ownKey)) throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, 'the client certificate does not certify this gateway TLS key');
}
