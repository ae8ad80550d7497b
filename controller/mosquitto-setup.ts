import { chmod, chown, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ErrorCodes, WardError } from '../agent/core/errors.js';
import { loadOrCreateSigningKey } from '../agent/identity/keystore.js';
import { createCsr, generateTlsKey, issueClientCert, issueCrl, issueServerCert } from '../agent/shared/x509.js';
import { ensurePrivateDir, writeFileAtomic } from '../agent/state/files.js';
import { CONTROLLER_IDENTITY } from './acl.js';
import { loadControllerFleet } from './fleet.js';
import { renderEnrollAcl, renderMosquittoConf, renderMtlsAcl, renderPasswordFile } from './mosquitto.js';
import { MOSQUITTO_FILES } from './mosquitto-sync.js';

/**
 * `ward controller mosquitto-setup`: everything an external Mosquitto needs
 * to front a fleet, from the controller's fleet CA: a server certificate for
 * the broker's addresses, a client certificate for the controller
 * (CN ward:controller), the two-listener mosquitto.conf and empty access
 * files that the controller then keeps up to date (mosquitto-sync.ts).
 * Run once with the controller stopped (its store and CA key are read).
 */
export interface MosquittoSetup {
  readonly dir: string;
  readonly confFile: string;
  readonly controllerTls: { readonly caFile: string; readonly certFile: string; readonly keyFile: string };
  readonly mtlsUrl: string;
  readonly enrollAddress: string;
}

export async function setupMosquitto(options: {
  stateDir: string;
  outDir: string;
  host: string;
  mtlsPort: number;
  enrollPort: number;
  /** Names and addresses gateways dial (certificate SANs); default the listener host. */
  serverHosts?: readonly string[];
  now?: number;
}): Promise<MosquittoSetup> {
  const now = options.now ?? Date.now();
  const { key } = await loadOrCreateSigningKey(options.stateDir, 'controller-key.pem');
  const fleet = await loadControllerFleet(options.stateDir, key, Math.floor(now / 1000));
  if (fleet === undefined) {
    throw new WardError(ErrorCodes.FLEET_NOT_INITIALISED, `controller ${options.stateDir} is not certified: run \`ward fleet certify-controller\` first`);
  }
  const dir = resolve(options.outDir);
  await ensurePrivateDir(dir);
  // Mosquitto drops to its own user before reading these: the folder must be traversable.
  await chmod(dir, 0o755);
  const path = (name: string) => join(dir, name);
  const hosts = [...new Set([...(options.serverHosts ?? []), options.host])];
  const server = await issueServerCert(fleet.ca, { hosts, validDays: 397, now: new Date(now) });
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName: CONTROLLER_IDENTITY });
  const client = await issueClientCert(fleet.ca, {
    csrPem,
    commonName: CONTROLLER_IDENTITY,
    notBefore: new Date(now - 300_000),
    notAfter: new Date(now + 397 * 86_400_000),
  });
  await writeFileAtomic(path('ca.pem'), fleet.ca.certPem, 0o644);
  await writeFileAtomic(path('server.pem'), server.certPem + fleet.ca.certPem, 0o644);
  // The broker's own key: readable by the mosquitto group only (Mosquitto reads it after dropping to its user).
  const gid = await groupId('mosquitto');
  if (gid !== undefined && process.getuid?.() === 0) {
    await writeFileAtomic(path('server-key.pem'), server.keyPem, 0o640);
    await chown(path('server-key.pem'), 0, gid);
  } else {
    // Without root or a mosquitto group we cannot narrow it; the caller is told to.
    await writeFileAtomic(path('server-key.pem'), server.keyPem, 0o600);
  }
  await writeFileAtomic(path('controller.pem'), client.certPem, 0o644);
  await writeFileAtomic(path('controller-key.pem'), privateKeyPem, 0o600);
  await writeFileAtomic(path(MOSQUITTO_FILES.mtlsAcl), renderMtlsAcl([]), 0o644);
  await writeFileAtomic(path(MOSQUITTO_FILES.enrollAcl), renderEnrollAcl([]), 0o644);
  await writeFileAtomic(path(MOSQUITTO_FILES.passwords), renderPasswordFile([]), 0o644);
  const nowDate = new Date(now);
  await writeFileAtomic(
    path(MOSQUITTO_FILES.crl),
    await issueCrl(fleet.ca, { revoked: [], thisUpdate: nowDate, nextUpdate: new Date(now + 30 * 86_400_000) }),
    0o644,
  );
  const confFile = path('mosquitto.conf');
  await writeFileAtomic(
    confFile,
    renderMosquittoConf({
      host: options.host,
      mtlsPort: options.mtlsPort,
      enrollPort: options.enrollPort,
      caFile: path('ca.pem'),
      certFile: path('server.pem'),
      keyFile: path('server-key.pem'),
      crlFile: path(MOSQUITTO_FILES.crl),
      mtlsAclFile: path(MOSQUITTO_FILES.mtlsAcl),
      enrollAclFile: path(MOSQUITTO_FILES.enrollAcl),
      passwordFile: path(MOSQUITTO_FILES.passwords),
    }),
    0o644,
  );
  const hostPart = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    dir,
    confFile,
    controllerTls: { caFile: path('ca.pem'), certFile: path('controller.pem'), keyFile: path('controller-key.pem') },
    mtlsUrl: `mqtts://${hostPart}:${options.mtlsPort}`,
    enrollAddress: `${hostPart}:${options.enrollPort}`,
  };
}

async function groupId(name: string): Promise<number | undefined> {
  const groups = await readFile('/etc/group', 'utf8').catch(() => '');
  const line = groups.split('\n').find((l) => l.startsWith(`${name}:`));
  const gid = Number(line?.split(':')[2]);
  return Number.isInteger(gid) ? gid : undefined;
}
