import { createHash } from 'node:crypto';
import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { ErrorCodes, isWardError, WardError } from '../core/errors.js';
import type { LifecycleEvent } from '../core/lifecycle.js';
import { BUNDLE_PREFIX, type TrustRoot, type VerifiedBundle, verifyBundle } from '../shared/bundle.js';
import type { SigningKey } from '../shared/keys.js';
import { decodeQrImage } from '../shared/qr.js';
import { acceptIdentity, type ExchangeLog, enroll } from './enroll.js';
import type { IdentityStore, LoadedIdentity } from './store.js';

/**
 * Provisioning at the line: scanned text (USB scanner, paste) or a camera
 * frame → verified bundle → enrollment → stored identity. The bundle is
 * verified against the baked fleet root before anything else happens; a
 * refused scan is an audit event and changes nothing. Once enrollment has
 * started, a failure walks the lifecycle back to `unprovisioned`.
 */
export interface ProvisionContext {
  readonly root: TrustRoot;
  readonly key: SigningKey;
  readonly store: IdentityStore;
  readonly clock: Clock;
  readonly audit: AuditSink;
  readonly log: ExchangeLog;
  readonly agentVersion: string;
  /** Moves the persisted lifecycle; absent when the caller does not track one. */
  readonly transition?: (event: LifecycleEvent, reason: string) => Promise<void>;
  readonly expectSite?: string | undefined;
  readonly expectLine?: string | undefined;
  readonly deviceId?: string | undefined;
  readonly timeoutMs?: number;
  /** Keep the current identity's device id and key, and replace its certificates (re-enrollment). */
  readonly reenroll?: boolean;
  readonly identity?: LoadedIdentity | undefined;
  /** The code came from the claim channel (unauthenticated): it must be bound to this key. */
  readonly claimed?: boolean;
}

/** The device id a fresh gateway proposes: stable for its key, readable on a label. */
export function deriveDeviceId(publicRaw: string): string {
  return `gw-${createHash('sha256').update(Buffer.from(publicRaw, 'base64url')).digest('hex').slice(0, 12)}`;
}

/** Scanned input as text: a camera frame is decoded; anything else must be the bundle text itself. */
export function scanToText(input: Uint8Array | string): string {
  if (typeof input === 'string') return input;
  return decodeQrImage(input);
}

function refuse(ctx: ProvisionContext, err: unknown, details: Record<string, unknown>): never {
  ctx.audit.record({
    category: 'request-error',
    actor: 'scanner',
    action: 'provision.scan',
    outcome: 'refused',
    code: isWardError(err) ? err.code : 'WARD_UNEXPECTED',
    details: { ...details, message: (err as Error).message },
  });
  throw err;
}

/** Verifies scanned input; refusals are audited and nothing else happens. */
export function checkScan(ctx: ProvisionContext, input: Uint8Array | string): VerifiedBundle {
  // Never the text itself in logs or audit: it carries a one-time token.
  const digest = createHash('sha256')
    .update(typeof input === 'string' ? input : Buffer.from(input))
    .digest('hex')
    .slice(0, 12);
  const details = { kind: typeof input === 'string' ? 'text' : 'image', bytes: typeof input === 'string' ? input.length : input.byteLength, sha256: digest };
  let text: string;
  try {
    text = scanToText(input);
  } catch (err) {
    return refuse(ctx, err, details);
  }
  try {
    return verifyBundle(text, {
      root: ctx.root,
      nowSec: Math.floor(ctx.clock.now() / 1000),
      ...(ctx.expectSite !== undefined ? { expectSite: ctx.expectSite } : {}),
      ...(ctx.expectLine !== undefined ? { expectLine: ctx.expectLine } : {}),
      deviceKid: ctx.key.kid,
      ...(ctx.claimed === true ? { requireBound: true } : {}),
    });
  } catch (err) {
    return refuse(ctx, err, { ...details, looksLikeWard: text.trim().startsWith(BUNDLE_PREFIX) });
  }
}

export async function provision(ctx: ProvisionContext, input: Uint8Array | string): Promise<{ deviceId: string; generation: string; bundle: VerifiedBundle }> {
  if (ctx.identity !== undefined && !ctx.reenroll) {
    throw new WardError(
      ErrorCodes.IDENTITY_ALREADY_PROVISIONED,
      `this gateway is already enrolled as ${ctx.identity.deviceId}; re-enroll explicitly (ward provision --reenroll) or factory-reset it (ward identity reset)`,
    );
  }
  const bundle = checkScan(ctx, input);
  const deviceId = ctx.identity?.deviceId ?? ctx.deviceId ?? deriveDeviceId(ctx.key.publicRaw);
  const fresh = ctx.identity === undefined;
  if (fresh) await ctx.transition?.('provision', `enrollment code ${bundle.codeId} for ${bundle.site}/${bundle.line}/${bundle.cell}`);
  try {
    const material = await enroll({
      bundle,
      key: ctx.key,
      deviceId,
      store: ctx.store,
      clock: ctx.clock,
      log: ctx.log,
      agentVersion: ctx.agentVersion,
      ...(ctx.timeoutMs !== undefined ? { timeoutMs: ctx.timeoutMs } : {}),
    });
    const generation = await acceptIdentity({
      material,
      store: ctx.store,
      key: ctx.key,
      deviceId,
      controllerPublicKey: bundle.controller.controllerPublicKey,
      controllerCert: bundle.controllerCert,
      caPin: bundle.controller.caPin,
      site: bundle.site,
      line: bundle.line,
      cell: bundle.cell,
      nowSec: Math.floor(ctx.clock.now() / 1000),
      ...(ctx.identity ? { enrolledAt: ctx.identity.enrolledAt } : {}),
    });
    if (fresh) await ctx.transition?.('enrolled', `device certificate issued by controller ${bundle.controller.controllerKid}`);
    ctx.audit.record({
      category: 'configuration-change',
      actor: deviceId,
      action: fresh ? 'identity.enroll' : 'identity.reenroll',
      target: deviceId,
      outcome: 'success',
      details: { codeId: bundle.codeId, site: bundle.site, line: bundle.line, cell: bundle.cell, generation },
    });
    return { deviceId, generation, bundle };
  } catch (err) {
    ctx.audit.record({
      category: 'access-control',
      actor: deviceId,
      action: fresh ? 'identity.enroll' : 'identity.reenroll',
      target: deviceId,
      outcome: 'failure',
      code: isWardError(err) ? err.code : 'WARD_UNEXPECTED',
      details: { codeId: bundle.codeId, message: (err as Error).message },
    });
    if (fresh) await ctx.transition?.('enroll-failed', (err as Error).message).catch(() => undefined);
    throw err;
  }
}
