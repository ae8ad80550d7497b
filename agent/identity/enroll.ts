import { createHash, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { type PeerCertificate, connect as tlsConnect } from 'node:tls';
import type { Clock } from '../core/clock.js';
import { ErrorCodes, WardError, type WardErrorCode } from '../core/errors.js';
import { caPinOf, type VerifiedBundle } from '../shared/bundle.js';
import { EnvelopeVerifier, encodeEnvelope, MemoryReplayCache, seal } from '../shared/envelope.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from '../shared/keys.js';
import {
  decodePayload,
  ENROLL_REQUEST_TYPE,
  ENROLL_RESPONSE_TYPE,
  type EnrollResponsePayload,
  enrollResponsePayload,
  RENEW_REQUEST_TYPE,
} from '../shared/messages.js';
import { MqttSession } from '../shared/mqtt-session.js';
import { enrollTopics, enrollUsername } from '../shared/topics.js';
import { createCsr, generateTlsKey } from '../shared/x509.js';
import { checkX509, type IdentityStore, type LoadedIdentity, verifyDeviceCert } from './store.js';

/**
 * The gateway side of enrollment (DESIGN.md §3 step 3) and renewal.
 *
 * Enrollment: the bundle (already verified against the fleet root) pins the
 * fleet CA by hash. The gateway fetches the CA from the broker's TLS chain,
 * keeps it only if it matches the pin, and then opens a normally verified TLS
 * connection with it — so the token is never sent to a broker the root did
 * not vouch for. It logs in as the code's token account, sends a request
 * signed by its fresh device key with a CSR for a fresh TLS key, and accepts
 * only a response signed by the certified controller key that answers this
 * request (nonce) and whose certificates match its own keys and the pin.
 */
export type IdentityMaterial = NonNullable<EnrollResponsePayload['identity']>;

export interface ExchangeLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
}

const REQUEST_TTL_SECONDS = 300;

function parseHostPort(entry: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(entry);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!host || !Number.isInteger(port) || port < 1 || port > 65_535) throw new TypeError(`not host:port: ${entry}`);
  return { host, port };
}

/** Connects once, reads the presented chain and returns the certificate whose SHA-256 matches the pin, as PEM. */
export function fetchPinnedCa(host: string, port: number, caPin: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // Not verified on purpose: this connection only reads the chain; nothing is sent over it.
    const socket = tlsConnect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new WardError(ErrorCodes.ENROLL_TIMEOUT, `no TLS answer from ${host}:${port} within ${timeoutMs} ms`, { retryable: true, details: { host, port } }),
      );
    }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const seen = new Set<string>();
      let cert: PeerCertificate | undefined = socket.getPeerCertificate(true);
      let found: Buffer | undefined;
      while (cert?.raw && !seen.has(cert.fingerprint256)) {
        seen.add(cert.fingerprint256);
        if (caPinOf(createHash('sha256').update(cert.raw).digest('base64url')) === caPin) found = cert.raw;
        cert = (cert as { issuerCertificate?: PeerCertificate }).issuerCertificate;
      }
      socket.end();
      if (found === undefined) {
        return reject(
          new WardError(
            ErrorCodes.ENROLL_BAD_RESPONSE,
            `the broker at ${host}:${port} does not present the fleet CA pinned by the enrollment code: not connecting`,
            {
              details: { host, port },
            },
          ),
        );
      }
      resolve(new X509Certificate(found).toString());
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(
        new WardError(ErrorCodes.ENROLL_TIMEOUT, `cannot reach the enrollment broker ${host}:${port}: ${err.message}`, {
          cause: err,
          retryable: true,
          details: { host, port },
        }),
      );
    });
  });
}

const REMOTE_CODES = new Set<string>(Object.values(ErrorCodes));

/** Publishes a signed request on one MQTT session and waits for the controller's signed answer. */
export function exchange(options: {
  url: string;
  clientId: string;
  username?: string;
  password?: string;
  tls: { ca: string; cert?: string; key?: string };
  requestTopic: string;
  responseTopic: string;
  request: Buffer;
  nonce: string;
  deviceId: string;
  controllerPublicKey: string;
  clock: Clock;
  timeoutMs: number;
  log: ExchangeLog;
}): Promise<IdentityMaterial> {
  const controllerKid = keyIdOf(options.controllerPublicKey);
  const verifier = new EnvelopeVerifier({
    keys: (kid) => (kid === controllerKid ? { publicKey: publicKeyFromRaw(options.controllerPublicKey), principal: 'controller' } : undefined),
    clock: options.clock,
    replay: new MemoryReplayCache(),
  });
  return new Promise<IdentityMaterial>((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | undefined, value?: IdentityMaterial) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void session.stop().finally(() => (err ? reject(err) : resolve(value as IdentityMaterial)));
    };
    const timer = setTimeout(
      () => finish(new WardError(ErrorCodes.ENROLL_TIMEOUT, `no answer from the controller within ${options.timeoutMs} ms`, { retryable: true })),
      options.timeoutMs,
    );
    let published = false;
    const session = new MqttSession(
      {
        url: options.url,
        clientId: options.clientId,
        protocol: 'auto',
        keepaliveSeconds: 30,
        connectTimeoutMs: Math.min(10_000, options.timeoutMs),
        reconnect: { baseMs: 500, capMs: 5_000 },
        ...(options.username !== undefined ? { username: options.username } : {}),
        ...(options.password !== undefined ? { password: Buffer.from(options.password) } : {}),
        tls: {
          ca: Buffer.from(options.tls.ca),
          ...(options.tls.cert ? { cert: Buffer.from(options.tls.cert) } : {}),
          ...(options.tls.key ? { key: Buffer.from(options.tls.key) } : {}),
          rejectUnauthorized: true,
        },
        subscriptions: [{ filter: options.responseTopic, qos: 1 }],
      },
      {
        onConnected: async () => {
          if (published) return;
          published = true;
          await session.publish(options.requestTopic, options.request, { qos: 1 }).catch((err) => finish(err as Error));
        },
        onMessage: (_topic, payload) => {
          try {
            const verified = verifier.verify(payload, { typ: ENROLL_RESPONSE_TYPE, subject: options.deviceId });
            const response = decodePayload(enrollResponsePayload, verified.payload);
            if (response.inReplyTo !== options.nonce) return; // an answer to an earlier attempt
            if (!response.ok || response.identity === undefined) {
              const code = response.error?.code ?? '';
              const mapped = (REMOTE_CODES.has(code) ? code : ErrorCodes.ENROLL_REFUSED) as WardErrorCode;
              return finish(
                new WardError(mapped, `the controller refused: ${response.error?.message ?? 'no reason given'}`, { details: { remoteCode: code } }),
              );
            }
            finish(undefined, response.identity);
          } catch (err) {
            options.log.warn({ code: (err as { code?: string }).code, err: (err as Error).message }, 'enrollment answer refused');
          }
        },
        onError: (err) => {
          // A refused CONNECT is final for a token account: retrying cannot make a used token good.
          if (/bad user ?name or password|not authori[sz]ed/i.test(err.message)) {
            finish(
              new WardError(
                options.username ? ErrorCodes.ENROLL_TOKEN_UNKNOWN : ErrorCodes.ENROLL_REFUSED,
                options.username
                  ? 'the broker refused the enrollment token: it was used, withdrawn or has expired'
                  : `the broker refused this device: ${err.message}`,
                { cause: err },
              ),
            );
            return;
          }
          options.log.warn({ code: err.code, err: err.message }, 'enrollment connection problem; retrying');
        },
      },
    );
    session.start();
  });
}

export interface EnrollOptions {
  readonly bundle: VerifiedBundle;
  readonly key: SigningKey;
  readonly deviceId: string;
  readonly store: IdentityStore;
  readonly clock: Clock;
  readonly log: ExchangeLog;
  readonly agentVersion: string;
  readonly timeoutMs?: number;
}

/** Enrolls with a verified bundle and stores the resulting identity. */
export async function enroll(options: EnrollOptions): Promise<IdentityMaterial & { tlsKeyPem: string }> {
  const { bundle, key, deviceId } = options;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const { privateKeyPem } = await generateTlsKey();
  const csr = await createCsr({ privateKeyPem, commonName: deviceId });
  let lastError: unknown;
  for (const entry of bundle.brokers) {
    const { host, port } = parseHostPort(entry);
    try {
      const caPem = await fetchPinnedCa(host, port, bundle.controller.caPin, Math.min(timeoutMs, 10_000));
      const envelope = seal(
        key,
        {
          typ: ENROLL_REQUEST_TYPE,
          sub: deviceId,
          codeId: bundle.codeId,
          token: bundle.token,
          publicKey: key.publicRaw,
          csr,
          site: bundle.site,
          line: bundle.line,
          cell: bundle.cell,
          agentVersion: options.agentVersion,
        },
        { ttlSeconds: REQUEST_TTL_SECONDS, clock: options.clock },
      );
      options.log.info({ broker: entry, codeId: bundle.codeId, deviceId }, 'enrolling');
      const material = await exchange({
        url: `mqtts://${host.includes(':') ? `[${host}]` : host}:${port}`,
        clientId: `ward-enroll-${bundle.codeId}`,
        username: enrollUsername(bundle.codeId),
        password: bundle.token,
        tls: { ca: caPem },
        requestTopic: enrollTopics.request(bundle.codeId),
        responseTopic: enrollTopics.response(bundle.codeId),
        request: encodeEnvelope(envelope),
        nonce: envelope.payload.nonce as string,
        deviceId,
        controllerPublicKey: bundle.controller.controllerPublicKey,
        clock: options.clock,
        timeoutMs,
        log: options.log,
      });
      if (caPinOf(createHash('sha256').update(new X509Certificate(material.caPem).raw).digest('base64url')) !== bundle.controller.caPin) {
        throw new WardError(ErrorCodes.IDENTITY_CERT_MISMATCH, 'the controller answered with a CA other than the pinned fleet CA');
      }
      return { ...material, tlsKeyPem: privateKeyPem };
    } catch (err) {
      lastError = err;
      // Only an unreachable broker is worth trying the next address for; a refusal is the controller's answer.
      if (!(err instanceof WardError && err.retryable)) throw err;
      options.log.warn({ broker: entry, err: (err as Error).message }, 'enrollment broker unreachable; trying the next one');
    }
  }
  throw lastError;
}

/** Checks an issued identity against our own keys and the certified controller, then stores it. */
export async function acceptIdentity(options: {
  material: IdentityMaterial & { tlsKeyPem: string };
  store: IdentityStore;
  key: SigningKey;
  deviceId: string;
  controllerPublicKey: string;
  controllerCert: Uint8Array;
  caPin: string;
  site: string;
  line: string;
  cell: string;
  nowSec: number;
  enrolledAt?: number;
}): Promise<string> {
  const { material } = options;
  const deviceCert = verifyDeviceCert(material.deviceCert as never, options.controllerPublicKey, options.deviceId, options.key.publicRaw);
  checkX509({
    certPem: material.certPem,
    caPem: material.caPem,
    keyPem: material.tlsKeyPem,
    deviceId: options.deviceId,
    caPin: options.caPin,
    serial: deviceCert.certSerial,
  });
  return options.store.save({
    identity: {
      deviceId: options.deviceId,
      publicKey: options.key.publicRaw,
      controllerPublicKey: options.controllerPublicKey,
      controllerCert: Buffer.from(options.controllerCert).toString('base64url'),
      deviceCert: material.deviceCert as never,
      brokers: material.brokers,
      site: deviceCert.site,
      line: deviceCert.line,
      cell: deviceCert.cell,
      certSerial: deviceCert.certSerial,
      certNotAfter: deviceCert.exp,
      certNotBefore: deviceCert.iat,
      enrolledAt: options.enrolledAt ?? options.nowSec,
    },
    tlsKeyPem: material.tlsKeyPem,
    certPem: material.certPem,
    caPem: material.caPem,
  });
}

/** Renewal over the enrolled identity (mutual TLS), with a fresh TLS key. */
export async function renew(options: {
  identity: LoadedIdentity;
  key: SigningKey;
  clock: Clock;
  log: ExchangeLog;
  agentVersion: string;
  timeoutMs?: number;
}): Promise<IdentityMaterial & { tlsKeyPem: string }> {
  const { identity, key } = options;
  const { privateKeyPem } = await generateTlsKey();
  const csr = await createCsr({ privateKeyPem, commonName: identity.deviceId });
  const envelope = seal(
    key,
    { typ: RENEW_REQUEST_TYPE, sub: identity.deviceId, publicKey: key.publicRaw, csr, agentVersion: options.agentVersion },
    { ttlSeconds: REQUEST_TTL_SECONDS, clock: options.clock },
  );
  const material = await exchange({
    url: identity.brokers[0] as string,
    clientId: `ward-agent-${identity.deviceId}:renew`,
    tls: {
      ca: await readFile(identity.files.ca, 'utf8'),
      cert: await readFile(identity.files.cert, 'utf8'),
      key: await readFile(identity.files.key, 'utf8'),
    },
    requestTopic: enrollTopics.renewRequest(identity.deviceId),
    responseTopic: enrollTopics.renewResponse(identity.deviceId),
    request: encodeEnvelope(envelope),
    nonce: envelope.payload.nonce as string,
    deviceId: identity.deviceId,
    controllerPublicKey: identity.controllerPublicKey,
    clock: options.clock,
    timeoutMs: options.timeoutMs ?? 30_000,
    log: options.log,
  });
  return { ...material, tlsKeyPem: privateKeyPem };
}
