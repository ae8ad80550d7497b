import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { AuditSink } from '../agent/core/audit.js';
import type { Clock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, isWardError, WardError, type WardErrorCode } from '../agent/core/errors.js';
import { encodeBundle, enrollmentCodeId, tokenHash } from '../agent/shared/bundle.js';
import { parseClaim } from '../agent/shared/claim.js';
import { EnvelopeVerifier, encodeEnvelope, MemoryReplayCache, seal, signPayload } from '../agent/shared/envelope.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from '../agent/shared/keys.js';
import {
  DEVICE_CERT_TYPE,
  type DeviceCertPayload,
  decodePayload,
  ENROLL_REQUEST_TYPE,
  ENROLL_RESPONSE_TYPE,
  type EnrollRequestPayload,
  enrollRequestPayload,
  RENEW_REQUEST_TYPE,
} from '../agent/shared/messages.js';
import type { Publish } from '../agent/shared/rpc.js';
import { claimTopic, enrollTopics } from '../agent/shared/topics.js';
import { issueClientCert, verifyCsr } from '../agent/shared/x509.js';
import { mosquittoPasswordHash } from './mosquitto.js';
import type { DeviceRegistry } from './registry.js';
import { type ClaimRecord, type DeviceIdentityRecord, type DeviceRecord, type DeviceStore, type EnrollmentCode, updateDevice } from './store.js';

/**
 * Enrollment on the controller side (DESIGN.md §3 step 3): prints one-time
 * codes, answers enrollment and renewal requests, revokes devices, and
 * answers the broker's questions (is this token good? is this device
 * active?). Requests are handled one at a time, so a token can be burned
 * exactly once even when two gateways race with the same label.
 *
 * Every refusal is answered (signed) on the code's response topic, so the
 * technician sees why at the gateway, and recorded as an audit event; a
 * refused request changes no state: the token stays open, no record moves.
 */
export interface FleetMaterial {
  /** The root-signed controller certificate (bundle.ts), carried in every bundle. */
  readonly controllerCert: Uint8Array;
  readonly ca: { readonly certPem: string; readonly keyPem: string };
}

export interface EnrollmentDeps {
  readonly key: SigningKey;
  readonly fleet: FleetMaterial;
  readonly store: DeviceStore;
  readonly registry: DeviceRegistry;
  readonly clock: Clock;
  readonly audit: AuditSink;
  readonly publish: Publish;
  /** host:port of the enrollment listener(s), printed into bundles. */
  readonly enrollBrokers: readonly string[];
  /** mqtts:// URLs of the mutual-TLS listener(s), handed to enrolled devices. */
  readonly deviceBrokers: readonly string[];
  readonly certValidityDays: number;
  /** Called after any change the broker must learn about (new code, new device, revocation). */
  readonly onAuthChange?: () => Promise<void>;
  readonly log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}

export interface CreatedCode {
  readonly codeId: string;
  /** The QR payload. Contains the token: shown once, never stored. */
  readonly text: string;
  readonly exp: number;
  readonly site: string;
  readonly line: string;
  readonly cell: string;
}

const REQUEST_MAX_BYTES = 32 * 1024;
const RESPONSE_TTL_SECONDS = 300;
export const DEVICE_ROLES = ['gateway'] as const;

export class EnrollmentService {
  readonly #replay = new MemoryReplayCache();
  #queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: EnrollmentDeps) {}

  #serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task, task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #nowSec(): number {
    return Math.floor(this.deps.clock.now() / 1000);
  }

  async createCode(options: {
    site: string;
    line: string;
    cell: string;
    ttlSeconds: number;
    bind?: { kid: string; deviceId: string; claimId: string };
  }): Promise<CreatedCode> {
    if (!Number.isSafeInteger(options.ttlSeconds) || options.ttlSeconds < 60 || options.ttlSeconds > 30 * 86_400) {
      throw new WardError(ErrorCodes.ENROLL_REFUSED, `ttl must be between 1 minute and 30 days, got ${options.ttlSeconds} s`);
    }
    const token = randomBytes(16);
    const now = this.#nowSec();
    const exp = now + options.ttlSeconds;
    let text: string;
    try {
      text = encodeBundle(this.deps.key, {
        controllerCert: this.deps.fleet.controllerCert,
        token,
        exp,
        brokers: this.deps.enrollBrokers,
        site: options.site,
        line: options.line,
        cell: options.cell,
        ...(options.bind ? { boundKid: options.bind.kid } : {}),
      });
    } catch (err) {
      // encodeBundle throws TypeError for labels outside the QR-safe set: that is operator input here.
      const refused = new WardError(ErrorCodes.ENROLL_REFUSED, `cannot create an enrollment code: ${describeError(err)}`, { cause: err });
      this.deps.audit.record({
        category: 'request-error',
        actor: 'operator',
        action: 'enroll-code.create',
        outcome: 'refused',
        code: refused.code,
        details: { message: refused.message },
      });
      throw refused;
    }
    const code: EnrollmentCode = {
      codeId: enrollmentCodeId(token),
      tokenHash: tokenHash(token),
      mosquittoHash: mosquittoPasswordHash(token.toString('base64url')),
      site: options.site,
      line: options.line,
      cell: options.cell,
      createdAt: now,
      exp,
      status: 'open',
      ...(options.bind ? { boundKid: options.bind.kid, boundDeviceId: options.bind.deviceId, claimId: options.bind.claimId } : {}),
    };
    await this.deps.store.putCode(code);
    this.deps.audit.record({
      category: 'configuration-change',
      actor: 'operator',
      action: 'enroll-code.create',
      target: code.codeId,
      outcome: 'success',
      details: { site: code.site, line: code.line, cell: code.cell, exp, ...(options.bind ? { boundTo: options.bind.deviceId } : {}) },
    });
    await this.#authChanged();
    return { codeId: code.codeId, text, exp, site: code.site, line: code.line, cell: code.cell };
  }

  /** An operator scanned a gateway's claim QR: remembered as pending until confirmed. */
  registerClaim(text: string): Promise<ClaimRecord> {
    return this.#serial(async () => {
      let claim: ReturnType<typeof parseClaim>;
      try {
        claim = parseClaim(text);
      } catch (err) {
        this.deps.audit.record({ category: 'request-error', actor: 'operator', action: 'claim.scan', outcome: 'refused', code: (err as WardError).code });
        throw err;
      }
      const existing = await this.deps.store.getClaim(claim.claimId);
      if (existing?.status === 'done' || (await this.deps.store.get(claim.deviceId))?.identity !== undefined) {
        this.deps.audit.record({
          category: 'request-error',
          actor: 'operator',
          action: 'claim.scan',
          target: claim.deviceId,
          outcome: 'refused',
          code: ErrorCodes.ENROLL_ID_TAKEN,
        });
        throw new WardError(ErrorCodes.ENROLL_ID_TAKEN, `gateway ${claim.deviceId} is already enrolled; revoke or factory-reset it first`);
      }
      // Scanning a confirmed claim again changes nothing: its code and account stay as they are.
      if (existing?.status === 'confirmed' && existing.claimCodeHash === tokenHash(Buffer.from(claim.claimCode))) return existing;
      const record: ClaimRecord = {
        claimId: claim.claimId,
        deviceId: claim.deviceId,
        kid: claim.kid,
        claimCodeHash: tokenHash(Buffer.from(claim.claimCode)),
        mosquittoHash: mosquittoPasswordHash(claim.claimCode),
        status: 'pending',
        scannedAt: this.#nowSec(),
      };
      await this.deps.store.putClaim(record);
      this.deps.audit.record({
        category: 'configuration-change',
        actor: 'operator',
        action: 'claim.scan',
        target: claim.deviceId,
        outcome: 'success',
        details: { claimId: claim.claimId, kid: claim.kid },
      });
      return record;
    });
  }

  /**
   * The operator confirms a claim for a site/line/cell: an enrollment code bound
   * to the claimed key is created and its bundle left (retained) where only the
   * gateway's claim account can read it.
   */
  confirmClaim(claimId: string, options: { site: string; line: string; cell: string; ttlSeconds: number }): Promise<ClaimRecord> {
    return this.#serial(() => this.#confirmClaim(claimId, options));
  }

  async #confirmClaim(claimId: string, options: { site: string; line: string; cell: string; ttlSeconds: number }): Promise<ClaimRecord> {
    const claim = await this.deps.store.getClaim(claimId);
    if (claim === undefined || claim.status === 'done') {
      this.deps.audit.record({
        category: 'request-error',
        actor: 'operator',
        action: 'claim.confirm',
        target: claimId,
        outcome: 'refused',
        code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN,
      });
      throw new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `no open claim ${claimId}`);
    }
    // Confirming again (another cell, a lapsed code) withdraws the code of the previous confirmation.
    const previous = claim.codeId ? await this.deps.store.getCode(claim.codeId) : undefined;
    if (previous?.status === 'open') await this.deps.store.putCode({ ...previous, status: 'withdrawn' });
    const created = await this.createCode({ ...options, bind: { kid: claim.kid, deviceId: claim.deviceId, claimId } });
    const confirmed: ClaimRecord = { ...claim, status: 'confirmed', confirmedAt: this.#nowSec(), codeId: created.codeId, exp: created.exp };
    await this.deps.store.putClaim(confirmed);
    await this.deps.publish(claimTopic(claimId), Buffer.from(created.text), { qos: 1, retain: true });
    this.deps.audit.record({
      category: 'configuration-change',
      actor: 'operator',
      action: 'claim.confirm',
      target: claim.deviceId,
      outcome: 'success',
      details: { claimId, codeId: created.codeId, site: options.site, line: options.line, cell: options.cell },
    });
    await this.#authChanged();
    return confirmed;
  }

  async listClaims(): Promise<Omit<ClaimRecord, 'claimCodeHash' | 'mosquittoHash'>[]> {
    return (await this.deps.store.listClaims()).map(({ claimCodeHash: _c, mosquittoHash: _m, ...rest }) => rest);
  }

  /** The broker asks: may this client log in as the claim account of `claimId`? */
  async checkClaim(claimId: string, claimCode: string): Promise<boolean> {
    const claim = await this.deps.store.getClaim(claimId);
    if (claim?.status !== 'confirmed' || (claim.exp ?? 0) < this.#nowSec()) return false;
    return safeEqual(tokenHash(Buffer.from(claimCode)), claim.claimCodeHash);
  }

  async listCodes(): Promise<Omit<EnrollmentCode, 'tokenHash' | 'mosquittoHash'>[]> {
    return (await this.deps.store.listCodes()).map(({ tokenHash: _t, mosquittoHash: _m, ...rest }) => rest);
  }

  /**
   * The broker asks: may this client log in as the token account of `codeId`? A used code's account stays
   * open until the code expires, so the gateway that used it can fetch a lost answer again (#checkCode).
   */
  async checkToken(codeId: string, token: string): Promise<boolean> {
    const code = await this.deps.store.getCode(codeId);
    if (code === undefined || (code.status !== 'open' && code.status !== 'used') || code.exp < this.#nowSec()) return false;
    const raw = Buffer.from(token, 'base64url');
    if (raw.length !== 16 || enrollmentCodeId(raw) !== codeId) return false;
    return safeEqual(tokenHash(raw), code.tokenHash);
  }

  /**
   * The broker asks: may the holder of this certificate for `deviceId` connect? The device must be active
   * and the certificate one of its two newest: after a renewal the previous one stays good until the
   * gateway has switched (it may not have stored the new one yet), anything older is superseded.
   * Without a serial (a caller that has none) only the device status is checked.
   */
  async isDeviceActive(deviceId: string, serial?: string): Promise<boolean> {
    const record = await this.deps.store.get(deviceId);
    if (record?.identity?.status !== 'active') return false;
    if (serial === undefined) return true;
    return currentSerials(record.identity.serials).includes(normalSerial(serial));
  }

  handleEnrollRequest(codeId: string, raw: Buffer): Promise<void> {
    return this.#serial(() => this.#enroll(codeId, raw));
  }

  handleRenewRequest(deviceId: string, raw: Buffer): Promise<void> {
    return this.#serial(() => this.#renew(deviceId, raw));
  }

  revoke(deviceId: string, reason: string): Promise<DeviceRecord> {
    return this.#serial(async () => {
      const updated = await updateDevice(this.deps.store, deviceId, (record) => {
        if (record?.identity === undefined) {
          throw new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `no enrolled device ${deviceId}`, { details: { deviceId } });
        }
        const next: DeviceRecord = {
          ...record,
          online: false,
          offlineCause: 'revoked',
          identity: { ...record.identity, status: 'revoked', revokedAt: this.#nowSec(), revokeReason: reason },
        };
        return { next, result: next };
      });
      this.deps.registry.untrust(deviceId);
      this.deps.audit.record({
        category: 'access-control',
        actor: 'operator',
        action: 'device.revoke',
        target: deviceId,
        outcome: 'success',
        details: { reason, serials: updated.identity?.serials ?? [] },
      });
      // Unlike other changes, a revocation the broker has not taken must not look done to the operator.
      try {
        await this.deps.onAuthChange?.();
      } catch (cause) {
        throw new WardError(
          ErrorCodes.CONTROLLER_BROKER_SYNC_FAILED,
          `${deviceId} is revoked in the controller, but the broker's access files were not updated (${describeError(cause)}); they are retried daily and at the next change`,
          { cause, retryable: true },
        );
      }
      return updated;
    });
  }

  async #closeClaim(claimId: string): Promise<void> {
    const claim = await this.deps.store.getClaim(claimId);
    if (claim) await this.deps.store.putClaim({ ...claim, status: 'done' });
    // An empty retained message deletes the retained bundle ([MQTT-3.3.1-10]).
    await this.deps.publish(claimTopic(claimId), Buffer.alloc(0), { qos: 1, retain: true }).catch(() => undefined);
  }

  async #authChanged(): Promise<void> {
    await this.deps.onAuthChange?.().catch((err) => this.deps.log.warn({ err: describeError(err) }, 'broker access files not updated'));
  }

  async #enroll(codeId: string, raw: Buffer): Promise<void> {
    let request: EnrollRequestPayload | undefined;
    /** Set once the token is burned and the device stored: from then on nothing is a refusal. */
    let committed: EnrollRequestPayload | undefined;
    try {
      request = this.#verifyRequest(raw, ENROLL_REQUEST_TYPE);
      if (request.codeId !== codeId || request.token === undefined) {
        throw new WardError(ErrorCodes.ENROLL_TOKEN_UNKNOWN, 'request names another enrollment code than its topic');
      }
      const code = await this.#checkCode(codeId, request.token, request);
      const redelivery = code.status === 'used';
      if (request.site !== code.site || request.line !== code.line || request.cell !== code.cell) {
        throw new WardError(
          ErrorCodes.ENROLL_WRONG_SITE,
          `code ${codeId} is for ${code.site}/${code.line}/${code.cell}, request names ${request.site}/${request.line}/${request.cell}`,
        );
      }
      if (code.boundKid !== undefined && (keyIdOf(request.publicKey) !== code.boundKid || request.sub !== code.boundDeviceId)) {
        throw new WardError(ErrorCodes.ENROLL_REFUSED, `enrollment code ${codeId} was issued for claimed gateway ${code.boundDeviceId} and its key only`);
      }
      const existing = await this.deps.store.get(request.sub);
      if (existing?.identity?.status === 'revoked') {
        throw new WardError(ErrorCodes.ENROLL_DEVICE_REVOKED, `device ${request.sub} is revoked; factory-reset it to enroll as a new device`);
      }
      if (existing !== undefined && existing.publicKey !== request.publicKey) {
        throw new WardError(ErrorCodes.ENROLL_ID_TAKEN, `device id ${request.sub} belongs to another key`);
      }
      const issued = await this.#issue(request, code);
      // The token burns before the answer leaves: a lost answer can be fetched again by the same gateway (same
      // key, same label), never used for a second identity.
      if (!redelivery) await this.deps.store.putCode({ ...code, status: 'used', usedBy: request.sub, usedAt: this.#nowSec() });
      await this.#storeDevice(request, code, issued);
      committed = request;
      this.deps.audit.record({
        category: 'access-control',
        actor: request.sub,
        action: redelivery ? 'device.enroll.redeliver' : existing ? 'device.reenroll' : 'device.enroll',
        target: request.sub,
        outcome: 'success',
        details: { codeId, site: code.site, line: code.line, cell: code.cell, certSerial: issued.serial },
      });
      this.deps.log.info({ deviceId: request.sub, codeId, certSerial: issued.serial }, existing ? 'device re-enrolled' : 'device enrolled');
      // Past the commit point nothing may be reported as a refusal: the broker must learn the device either way.
      await this.#authChanged();
      if (code.claimId !== undefined) await this.#closeClaim(code.claimId).catch((err) => this.deps.log.warn({ err: describeError(err) }, 'claim not closed'));
      const enrolled = request;
      await this.#respond(enrollTopics.response(codeId), enrolled, { ok: true, identity: issued.identity }).catch((err) =>
        this.deps.log.warn({ err: describeError(err), deviceId: enrolled.sub }, 'enrollment answer not delivered; the gateway needs a new code'),
      );
    } catch (err) {
      if (committed !== undefined) {
        this.deps.log.warn({ err: describeError(err), deviceId: committed.sub }, 'enrollment stored, but a later step failed');
        return;
      }
      await this.#refuse(enrollTopics.response(codeId), request, err, { action: 'device.enroll', codeId }, raw);
    }
  }

  async #renew(deviceId: string, raw: Buffer): Promise<void> {
    let request: EnrollRequestPayload | undefined;
    try {
      // Renewal is signed by the enrolled device key, which the registry already trusts.
      const verified = this.deps.registry.verifier.verify(raw, { typ: RENEW_REQUEST_TYPE, principal: deviceId, subject: deviceId });
      request = decodePayload(enrollRequestPayload, verified.payload);
      const existing = await this.deps.store.get(deviceId);
      if (existing?.identity === undefined) throw new WardError(ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, `no enrolled device ${deviceId}`);
      if (existing.identity.status !== 'active') throw new WardError(ErrorCodes.ENROLL_DEVICE_REVOKED, `device ${deviceId} is revoked`);
      if (request.publicKey !== existing.publicKey) throw new WardError(ErrorCodes.ENROLL_ID_TAKEN, 'renewal names another device key');
      const { identity } = existing;
      const code = { site: identity.site, line: identity.line, cell: identity.cell, codeId: identity.codeId };
      const issued = await this.#issue(request, code);
      await this.#storeDevice(request, code, issued);
      await this.#respond(enrollTopics.renewResponse(deviceId), request, { ok: true, identity: issued.identity });
      this.deps.audit.record({
        category: 'access-control',
        actor: deviceId,
        action: 'device.renew',
        target: deviceId,
        outcome: 'success',
        details: { certSerial: issued.serial },
      });
    } catch (err) {
      await this.#refuse(enrollTopics.renewResponse(deviceId), request, err, { action: 'device.renew', deviceId }, raw);
    }
  }

  #verifyRequest(raw: Buffer, typ: string): EnrollRequestPayload {
    if (raw.byteLength > REQUEST_MAX_BYTES) throw new WardError(ErrorCodes.ENVELOPE_TOO_LARGE, `enrollment request is ${raw.byteLength} bytes`);
    // Proof of possession: the request is verified with the key it introduces.
    let claimed: { publicKey?: unknown; sub?: unknown } = {};
    try {
      claimed = (JSON.parse(raw.toString('utf8')) as { payload?: typeof claimed }).payload ?? {};
    } catch {
      // The verifier below reports the JSON error with its own code.
    }
    const publicKey = typeof claimed.publicKey === 'string' ? claimed.publicKey : '';
    let key: ReturnType<typeof publicKeyFromRaw> | undefined;
    try {
      key = publicKey ? publicKeyFromRaw(publicKey) : undefined;
    } catch {
      key = undefined;
    }
    const kid = key ? keyIdOf(publicKey) : '';
    const verifier = new EnvelopeVerifier({
      keys: (k) => (key !== undefined && k === kid ? { publicKey: key, principal: String(claimed.sub) } : undefined),
      clock: this.deps.clock,
      replay: this.#replay,
      maxBytes: REQUEST_MAX_BYTES,
      maxLifetimeSeconds: 3600,
    });
    const verified = verifier.verify(raw, { typ });
    return decodePayload(enrollRequestPayload, verified.payload);
  }

  /**
   * A used code is good once more for exactly the gateway that used it (same id, same key, still active):
   * its answer may have been lost on the way, and a technician scanning the same label again should get
   * certificates, not an error. Anyone else gets WARD_ENROLL_TOKEN_USED.
   */
  async #checkCode(codeId: string, token: string, request: EnrollRequestPayload): Promise<EnrollmentCode> {
    const code = await this.deps.store.getCode(codeId);
    const raw = Buffer.from(token, 'base64url');
    if (code === undefined || raw.length !== 16 || !safeEqual(tokenHash(raw), code.tokenHash)) {
      throw new WardError(ErrorCodes.ENROLL_TOKEN_UNKNOWN, `no enrollment code ${codeId} with this token`);
    }
    if (code.status === 'used') {
      const user = code.usedBy !== undefined ? await this.deps.store.get(code.usedBy) : undefined;
      const sameGateway = code.usedBy === request.sub && user?.publicKey === request.publicKey && user.identity?.status === 'active';
      if (!sameGateway || code.exp < this.#nowSec()) {
        throw new WardError(ErrorCodes.ENROLL_TOKEN_USED, `enrollment code ${codeId} was already used${code.usedBy ? ` by ${code.usedBy}` : ''}`);
      }
      return code;
    }
    if (code.status !== 'open') throw new WardError(ErrorCodes.ENROLL_TOKEN_UNKNOWN, `enrollment code ${codeId} was withdrawn`);
    if (code.exp < this.#nowSec())
      throw new WardError(ErrorCodes.ENROLL_TOKEN_EXPIRED, `enrollment code ${codeId} expired at ${new Date(code.exp * 1000).toISOString()}`);
    return code;
  }

  async #issue(request: EnrollRequestPayload, code: { site: string; line: string; cell: string }) {
    const csr = await verifyCsr(request.csr);
    if (csr.commonName !== request.sub) {
      throw new WardError(ErrorCodes.X509_BAD_CSR, `CSR names ${JSON.stringify(csr.commonName)}, the request ${request.sub}`);
    }
    const now = this.deps.clock.now();
    const notAfter = new Date(now + this.deps.certValidityDays * 86_400_000);
    // Backdated a few minutes: gateways without an RTC may run slightly behind the controller.
    const cert = await issueClientCert(this.deps.fleet.ca, { csrPem: request.csr, commonName: request.sub, notBefore: new Date(now - 300_000), notAfter });
    const nowSec = Math.floor(now / 1000);
    const deviceCert = {
      typ: DEVICE_CERT_TYPE,
      sub: request.sub,
      version: now,
      iat: nowSec,
      exp: Math.floor(notAfter.getTime() / 1000),
      publicKey: request.publicKey,
      tlsKeyFingerprint: csr.publicKeyFingerprint,
      certSerial: cert.serial,
      site: code.site,
      line: code.line,
      cell: code.cell,
      roles: [...DEVICE_ROLES],
    } satisfies DeviceCertPayload;
    return {
      serial: cert.serial,
      notAfter: deviceCert.exp,
      tlsKeyFingerprint: csr.publicKeyFingerprint,
      identity: {
        deviceCert: signPayload(this.deps.key, deviceCert),
        certPem: cert.certPem,
        caPem: this.deps.fleet.ca.certPem,
        brokers: [...this.deps.deviceBrokers],
        controllerCert: Buffer.from(this.deps.fleet.controllerCert).toString('base64url'),
      },
    };
  }

  async #storeDevice(
    request: EnrollRequestPayload,
    code: { codeId: string; site: string; line: string; cell: string },
    issued: { serial: string; notAfter: number; tlsKeyFingerprint: string },
  ): Promise<void> {
    const nowSec = this.#nowSec();
    // Built on the record as stored at the write (state messages update it meanwhile), under the device's lock.
    const record = await updateDevice(this.deps.store, request.sub, (latest) => {
      const identity: DeviceIdentityRecord = {
        status: 'active',
        site: code.site,
        line: code.line,
        cell: code.cell,
        roles: [...DEVICE_ROLES],
        enrolledAt: latest?.identity?.enrolledAt ?? nowSec,
        codeId: code.codeId,
        certSerial: issued.serial,
        certNotAfter: issued.notAfter,
        tlsKeyFingerprint: issued.tlsKeyFingerprint,
        serials: [...(latest?.identity?.serials ?? []), issued.serial],
      };
      const next: DeviceRecord = latest
        ? { ...latest, identity }
        : { id: request.sub, publicKey: request.publicKey, kid: keyIdOf(request.publicKey), registeredAt: nowSec, online: false, identity };
      return { next, result: next };
    });
    this.deps.registry.trust(record);
  }

  async #respond(
    topic: string,
    request: EnrollRequestPayload,
    body: { ok: true; identity: unknown } | { ok: false; error: { code: string; message: string } },
  ) {
    const envelope = seal(
      this.deps.key,
      { typ: ENROLL_RESPONSE_TYPE, sub: request.sub, inReplyTo: request.nonce, ...body },
      { ttlSeconds: RESPONSE_TTL_SECONDS, clock: this.deps.clock },
    );
    await this.deps.publish(topic, encodeEnvelope(envelope), { qos: 1 });
  }

  async #refuse(topic: string, request: EnrollRequestPayload | undefined, err: unknown, context: Record<string, unknown> & { action: string }, raw: Buffer) {
    const code: WardErrorCode | string = isWardError(err) ? err.code : 'WARD_ENROLL_INTERNAL';
    const message = isWardError(err) ? err.message : 'internal error';
    if (!isWardError(err)) this.deps.log.warn({ err: describeError(err), ...context }, 'enrollment failed unexpectedly');
    const { action, ...details } = context;
    this.deps.audit.record({
      category: isWardError(err) && err.code.startsWith('WARD_ENVELOPE') ? 'request-error' : 'access-control',
      actor: request?.sub ?? 'unknown',
      action,
      target: request?.sub ?? (context.codeId as string | undefined) ?? 'unknown',
      outcome: 'refused',
      code,
      details: { ...details, message, bytes: raw.byteLength },
    });
    this.deps.log.warn({ code, message, ...context, deviceId: request?.sub }, 'enrollment request refused');
    // Without a parsed request there is no nonce to answer: the gateway times out and shows its own error.
    if (request !== undefined) {
      await this.#respond(topic, request, { ok: false, error: { code, message } }).catch((e) =>
        this.deps.log.warn({ err: describeError(e) }, 'refusal not delivered'),
      );
    }
  }
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Hex serials compare without case or leading zeros (OpenSSL and @peculiar/x509 print them differently). */
export function normalSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+/, '');
}

/** The serials a device may still connect with: its newest two. */
export function currentSerials(serials: readonly string[]): string[] {
  return serials.slice(-2).map(normalSerial);
}
