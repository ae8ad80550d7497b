import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { type TrustRoot, verifyControllerCert } from '../shared/bundle.js';
import type { SigningKey } from '../shared/keys.js';
import { acceptIdentity, type ExchangeLog, renew } from './enroll.js';
import type { IdentityStore, LoadedIdentity } from './store.js';

/**
 * One certificate renewal, end to end: a fresh TLS key and CSR over the
 * enrolled identity, the controller's answer checked like an enrollment
 * answer, and the new generation stored and read back. The caller switches
 * its link to the result; on failure nothing on disk has changed.
 */
export async function renewIdentity(options: {
  identity: LoadedIdentity;
  root: TrustRoot;
  key: SigningKey;
  store: IdentityStore;
  clock: Clock;
  audit: AuditSink;
  log: ExchangeLog;
  agentVersion: string;
  timeoutMs: number;
}): Promise<LoadedIdentity> {
  const { identity: current, root, key, clock } = options;
  const nowSec = () => Math.floor(clock.now() / 1000);
  const material = await renew({
    identity: current,
    key,
    clock,
    log: options.log,
    agentVersion: options.agentVersion,
    timeoutMs: options.timeoutMs,
  });
  // A renewed controller certification rides along with the answer; taken only if the root vouches for it
  // and it names the same controller key (a key rotation would need the device certificate re-signed too).
  let controllerCert = Buffer.from(current.controllerCert, 'base64url');
  let certified = verifyControllerCert(controllerCert, root, nowSec(), { allowExpired: true });
  if (material.controllerCert !== undefined) {
    try {
      const offered = Buffer.from(material.controllerCert, 'base64url');
      const next = verifyControllerCert(offered, root, nowSec());
      if (next.controllerPublicKey === current.controllerPublicKey && next.notAfter > certified.notAfter) {
        controllerCert = offered;
        certified = next;
      }
    } catch (err) {
      options.log.warn({ err: describeError(err) }, 'the controller offered a certification the fleet root does not vouch for; keeping the current one');
    }
  }
  await acceptIdentity({
    material,
    store: options.store,
    key,
    deviceId: current.deviceId,
    controllerPublicKey: current.controllerPublicKey,
    controllerCert,
    caPin: certified.caPin,
    site: current.site,
    line: current.line,
    cell: current.cell,
    nowSec: nowSec(),
    enrolledAt: current.enrolledAt,
  });
  const loaded = await options.store.load({ root, key, nowSec: nowSec() });
  if (loaded === undefined) throw new WardError(ErrorCodes.IDENTITY_CORRUPT, 'renewal finished but no identity was stored');
  options.audit.record({
    category: 'configuration-change',
    actor: loaded.deviceId,
    action: 'identity.renew',
    target: loaded.deviceId,
    outcome: 'success',
    details: { certSerial: loaded.certSerial, certNotAfter: loaded.certNotAfter },
  });
  options.log.info({ certSerial: loaded.certSerial, certNotAfter: new Date(loaded.certNotAfter * 1000).toISOString() }, 'client certificate renewed');
  return loaded;
}
