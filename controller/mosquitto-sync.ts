import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../agent/core/clock.js';
import { describeError } from '../agent/core/errors.js';
import { issueCrl } from '../agent/shared/x509.js';
import { writeFileAtomic } from '../agent/state/files.js';
import { claimUsername } from './acl.js';
import { enrollUsername, renderEnrollAcl, renderMtlsAcl, renderPasswordFile } from './mosquitto.js';
import type { DeviceStore } from './store.js';

/**
 * Keeps an external Mosquitto's access files in step with the controller's
 * store: the mutual-TLS ACL (active devices), the enrollment ACL and
 * password file (open codes), and the CRL (every serial of every revoked
 * device), then asks Mosquitto to reload (SIGHUP). Files are written
 * atomically and world-readable (Mosquitto reads them as its own user; they
 * hold no secrets: password entries are PBKDF2 hashes of one-time tokens).
 */
export const MOSQUITTO_FILES = {
  mtlsAcl: 'acl-mtls',
  enrollAcl: 'acl-enroll',
  passwords: 'passwd',
  crl: 'crl.pem',
} as const;

export async function syncMosquitto(options: {
  dir: string;
  pidFile?: string | undefined;
  store: DeviceStore;
  ca: { certPem: string; keyPem: string };
  clock: Clock;
  log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}): Promise<void> {
  const nowSec = Math.floor(options.clock.now() / 1000);
  const devices = await options.store.list();
  const active = devices.filter((d) => d.identity?.status === 'active').map((d) => d.id);
  // Every serial of a revoked device; for an active one, those older than its newest two (superseded by renewal).
  const revoked = devices.flatMap((d) => {
    const identity = d.identity;
    if (identity === undefined) return [];
    const serials = identity.status === 'revoked' ? identity.serials : identity.serials.slice(0, -2);
    return serials.map((serial) => ({ serial, revokedAt: new Date((identity.revokedAt ?? nowSec) * 1000) }));
  });
  // Used codes keep their account until they expire: the gateway that used one may fetch a lost answer again.
  const codes = (await options.store.listCodes()).filter(
    (c) => (c.status === 'open' || c.status === 'used') && c.exp >= nowSec && c.mosquittoHash !== undefined,
  );
  const claims = (await options.store.listClaims()).filter((c) => c.status === 'confirmed' && (c.exp ?? 0) >= nowSec && c.mosquittoHash !== undefined);
  const now = new Date(options.clock.now());
  // A CRL past its nextUpdate makes OpenSSL refuse every client: give it a long horizon and re-sign on each change.
  const crl = await issueCrl(options.ca, { revoked, thisUpdate: now, nextUpdate: new Date(now.getTime() + 30 * 86_400_000) });
  const write = (name: string, text: string) => writeFileAtomic(join(options.dir, name), text, 0o644);
  await write(MOSQUITTO_FILES.mtlsAcl, renderMtlsAcl(active));
  await write(
    MOSQUITTO_FILES.enrollAcl,
    renderEnrollAcl(
      codes.map((c) => c.codeId),
      claims.map((c) => c.claimId),
    ),
  );
  await write(
    MOSQUITTO_FILES.passwords,
    renderPasswordFile([
      ...codes.map((c) => ({ username: enrollUsername(c.codeId), hash: c.mosquittoHash as string })),
      ...claims.map((c) => ({ username: claimUsername(c.claimId), hash: c.mosquittoHash as string })),
    ]),
  );
  await write(MOSQUITTO_FILES.crl, crl);
  if (options.pidFile === undefined) return;
  try {
    const pid = Number.parseInt((await readFile(options.pidFile, 'utf8')).trim(), 10);
    if (!Number.isSafeInteger(pid) || pid <= 1) throw new Error(`pid file ${options.pidFile} holds no pid`);
    process.kill(pid, 'SIGHUP');
    options.log.info({ pid, devices: active.length, codes: codes.length, revokedSerials: revoked.length }, 'mosquitto access files updated and reloaded');
  } catch (err) {
    options.log.warn({ err: describeError(err), pidFile: options.pidFile }, 'mosquitto access files updated but mosquitto was not signalled');
  }
}
