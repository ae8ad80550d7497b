import { chmod, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, WardError } from '../agent/core/errors.js';
import { loadOrCreateSigningKey } from '../agent/identity/keystore.js';
import { readRootFile } from '../agent/identity/trust.js';
import { caPinOf, issueControllerCert, type VerifiedControllerCert, verifyControllerCert } from '../agent/shared/bundle.js';
import { createRoot, rootFingerprint, type SignedRoot } from '../agent/shared/fleet-root.js';
import { generateSigningKey, privateKeyToPem, type SigningKey, signingKeyFromPem } from '../agent/shared/keys.js';
import { openSealedKey, sealPrivateKey } from '../agent/shared/sealed-key.js';
import { certFingerprint, createFleetCa } from '../agent/shared/x509.js';
import { ensurePrivateDir, fileMode, writeFileAtomic } from '../agent/state/files.js';

/**
 * Fleet keys (DESIGN.md §2). The fleet root is an ed25519 key the operator
 * keeps offline, sealed with a passphrase; its signed root metadata
 * (`root.json`) is the trust anchor baked into every gateway image. The root
 * certifies each controller: its signing key and the fleet CA that issues
 * device TLS certificates. The CA key lives with the controller (it signs
 * certificates online, at enrollment); the root key never does.
 *
 * Files — fleet folder (operator, offline): root-key.sealed.json (0600), root.json.
 * Controller state folder: controller-key.pem, fleet/ca-key.pem (0600), fleet/ca.pem,
 * fleet/controller-cert.cbor, fleet/root.json.
 */
export const ROOT_KEY_FILE = 'root-key.sealed.json';
export const ROOT_FILE = 'root.json';
const CONTROLLER_FLEET_DIR = 'fleet';

export interface FleetInitResult {
  readonly rootKid: string;
  readonly rootFingerprint: string;
  readonly rootFile: string;
  readonly keyFile: string;
}

export async function initFleet(options: {
  dir: string;
  passphrase: string;
  name?: string;
  validDays?: number;
  scryptCost?: number;
  now?: number;
}): Promise<FleetInitResult> {
  await ensurePrivateDir(options.dir);
  const keyFile = join(options.dir, ROOT_KEY_FILE);
  const rootFile = join(options.dir, ROOT_FILE);
  if ((await fileMode(keyFile)) !== undefined) {
    throw new WardError(ErrorCodes.FLEET_KEY_FILE_INVALID, `${keyFile} already exists: a fleet is initialised once (its root is baked into every image)`, {
      details: { file: keyFile },
    });
  }
  const key = generateSigningKey();
  const root = createRoot({
    keys: [key],
    validDays: options.validDays ?? 3650,
    ...(options.name !== undefined ? { name: options.name } : {}),
    ...(options.now !== undefined ? { now: options.now } : {}),
  });
  await writeFileAtomic(keyFile, sealPrivateKey(privateKeyToPem(key), options.passphrase, options.scryptCost ? { cost: options.scryptCost } : {}), 0o600);
  await writeFileAtomic(rootFile, `${JSON.stringify(root, null, 2)}\n`, 0o644);
  // The fleet folder holds a sealed secret and public metadata; gateways and images only ever get root.json.
  await chmod(options.dir, 0o700);
  return { rootKid: key.kid, rootFingerprint: rootFingerprint(root), rootFile, keyFile };
}

export async function openRootKey(dir: string, passphrase: string): Promise<SigningKey> {
  const file = join(dir, ROOT_KEY_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new WardError(ErrorCodes.FLEET_NOT_INITIALISED, `no fleet root key at ${file} (run \`ward fleet init\` first)`, { cause, details: { file } });
  }
  return signingKeyFromPem(openSealedKey(text, passphrase));
}

export interface CertifyResult {
  readonly controllerKid: string;
  readonly controllerPublicKey: string;
  readonly caFingerprint: string;
  readonly notAfter: number;
  readonly caCreated: boolean;
}

/** Certifies a controller (creating its key and the fleet CA on first use) with the fleet root. */
export async function certifyController(options: {
  fleetDir: string;
  passphrase: string;
  controllerStateDir: string;
  validDays?: number;
  caValidDays?: number;
  now?: number;
}): Promise<CertifyResult> {
  const now = options.now ?? Date.now();
  const nowSec = Math.floor(now / 1000);
  const root = await readRootFile(join(options.fleetDir, ROOT_FILE), nowSec);
  const rootKey = await openRootKey(options.fleetDir, options.passphrase);
  if (root.payload.keys[rootKey.kid] !== rootKey.publicRaw) {
    throw new WardError(ErrorCodes.FLEET_ROOT_INVALID, `the sealed root key ${rootKey.kid} is not a key of ${ROOT_FILE} v${root.payload.version}`);
  }
  await ensurePrivateDir(options.controllerStateDir);
  const dir = join(options.controllerStateDir, CONTROLLER_FLEET_DIR);
  await ensurePrivateDir(dir);
  const { key } = await loadOrCreateSigningKey(options.controllerStateDir, 'controller-key.pem');

  const caCertFile = join(dir, 'ca.pem');
  const caKeyFile = join(dir, 'ca-key.pem');
  let caCreated = false;
  if ((await fileMode(caKeyFile)) === undefined) {
    const ca = await createFleetCa({
      commonName: `Ward fleet CA ${root.payload.name ?? rootKey.kid}`,
      validDays: options.caValidDays ?? 3650,
      now: new Date(now),
    });
    await writeFileAtomic(caKeyFile, ca.keyPem, 0o600);
    await writeFileAtomic(caCertFile, ca.certPem, 0o644);
    caCreated = true;
  }
  const caFingerprint = certFingerprint(await readFile(caCertFile, 'utf8'));
  const notAfter = nowSec + (options.validDays ?? 365) * 86_400;
  const cert = issueControllerCert(rootKey, { controllerPublicKey: key.publicRaw, caPin: caPinOf(caFingerprint), notAfter, rootVersion: root.payload.version });
  await writeFileAtomic(join(dir, 'controller-cert.cbor'), Buffer.from(cert), 0o644);
  await writeFileAtomic(join(dir, ROOT_FILE), `${JSON.stringify(root, null, 2)}\n`, 0o644);
  return { controllerKid: key.kid, controllerPublicKey: key.publicRaw, caFingerprint, notAfter, caCreated };
}

export interface ControllerFleet {
  readonly root: SignedRoot;
  readonly controllerCert: Uint8Array;
  readonly certified: VerifiedControllerCert;
  readonly ca: { readonly certPem: string; readonly keyPem: string };
  readonly caFingerprint: string;
}

/**
 * The controller's fleet material, checked for consistency at start: the
 * certificate must be signed by the root, name this controller's key and
 * pin this CA. Undefined when the controller was never certified.
 */
export async function loadControllerFleet(stateDir: string, key: SigningKey, nowSec: number): Promise<ControllerFleet | undefined> {
  const dir = join(stateDir, CONTROLLER_FLEET_DIR);
  if ((await fileMode(join(dir, 'controller-cert.cbor'))) === undefined) return undefined;
  const root = await readRootFile(join(dir, ROOT_FILE), nowSec);
  const controllerCert = new Uint8Array(await readFile(join(dir, 'controller-cert.cbor')));
  let certified: VerifiedControllerCert;
  try {
    certified = verifyControllerCert(controllerCert, root, nowSec);
  } catch (cause) {
    throw new WardError(ErrorCodes.FLEET_CONTROLLER_CERT_INVALID, `controller certificate in ${dir} is not valid: re-run \`ward fleet certify-controller\``, {
      cause,
    });
  }
  const ca = { certPem: await readFile(join(dir, 'ca.pem'), 'utf8'), keyPem: await readFile(join(dir, 'ca-key.pem'), 'utf8') };
  const caFingerprint = certFingerprint(ca.certPem);
  if (certified.controllerPublicKey !== key.publicRaw) {
    throw new WardError(
      ErrorCodes.FLEET_CONTROLLER_CERT_INVALID,
      `controller certificate in ${dir} certifies key ${certified.controllerKid}, not this controller's ${key.kid}`,
    );
  }
  if (certified.caPin !== caPinOf(caFingerprint)) {
    throw new WardError(ErrorCodes.FLEET_CONTROLLER_CERT_INVALID, `controller certificate in ${dir} pins another fleet CA than ca.pem`);
  }
  return { root, controllerCert, certified, ca, caFingerprint };
}
