import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { logAuditSink } from '../agent/audit-log.js';
import type { AuditSink } from '../agent/core/audit.js';
import { type Clock, systemClock } from '../agent/core/clock.js';
import { describeError, ErrorCodes, WardError } from '../agent/core/errors.js';
import { loadOrCreateSigningKey } from '../agent/identity/keystore.js';
import type { Logger } from '../agent/log.js';
import { MqttSession } from '../agent/shared/mqtt-session.js';
import { qrInfo, renderSvg } from '../agent/shared/qr.js';
import { RpcClient } from '../agent/shared/rpc.js';
import { filters, parseDeviceTopic, parseEnrollTopic, sharedFilter } from '../agent/shared/topics.js';
import { createCsr, generateTlsKey, issueClientCert, issueServerCert } from '../agent/shared/x509.js';
import { ensurePrivateDir } from '../agent/state/files.js';
import { WARD_VERSION } from '../agent/version.js';
import { makeCredential } from '../hardware/tpm/tpm2-tools.js';
import { CONTROLLER_IDENTITY, OBSERVER_IDENTITY } from './acl.js';
import { createApiServer, loopbackHosts } from './api.js';
import { AttestationService } from './attestation.js';
import { AuditIngest } from './audit.js';
import { type AuditStore, LevelAuditStore } from './audit-store.js';
import { type BrokerAuth, type EmbeddedBroker, listen, startEmbeddedBroker } from './broker.js';
import type { ControllerConfig } from './config.js';
import { EnrollmentService } from './enrollment.js';
import { type ControllerFleet, loadControllerFleet } from './fleet.js';
import { DEFAULT_ALARM_RULES } from './health-rules.js';
import { syncMosquitto } from './mosquitto-sync.js';
import { PolicyService } from './policy.js';
import { DeviceRegistry } from './registry.js';
import { type DeviceStore, isLive, LevelDeviceStore } from './store.js';
import { TelemetryHost } from './telemetry.js';

/**
 * The controller's composition root. Starts (in order) its store, the
 * embedded broker if configured, its own MQTT session, and the HTTP API;
 * close() undoes them in reverse.
 *
 * Replicas: device → controller traffic is subscribed through
 * `$share/<group>/…` when a group is set, so each message reaches exactly one
 * replica; RPC replies are addressed to the asking replica's own topic.
 * Retained messages are not delivered to shared subscriptions (MQTT 5
 * §4.8.2), so in replica mode a restarted controller relies on its store (a
 * shared database for real replica sets) rather than retained state.
 */
export interface Controller {
  readonly replicaId: string;
  readonly publicKey: string;
  readonly apiUrl: string;
  readonly brokerUrl: string;
  readonly wsUrl: string | undefined;
  readonly registry: DeviceRegistry;
  readonly rpc: RpcClient;
  readonly session: MqttSession;
  /** Present once the controller is certified by a fleet root. */
  readonly enrollment: EnrollmentService | undefined;
  readonly fleet: ControllerFleet | undefined;
  readonly auditIngest: AuditIngest;
  readonly auditStore: AuditStore;
  /** Signs and publishes segmentation policies (PUT /api/devices/:id/policy). */
  readonly policies: PolicyService;
  /** The Verifier: challenges, appraisals, trust states (GET /api/devices/:id/attestation). */
  readonly attestation: AttestationService;
  close(): Promise<void>;
}

export interface ControllerDeps {
  readonly config: ControllerConfig;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Injected by tests that exercise the store interface; default is LevelDB in the state folder. */
  readonly store?: DeviceStore;
  readonly audit?: AuditSink;
}

/** The controller's own broker identity: a client certificate (CN ward:controller) from the fleet CA, made at start. */
function controllerClientIdentity(ca: ControllerFleet['ca'], clock: Clock): Promise<{ ca: Buffer; cert: Buffer; key: Buffer }> {
  return fleetClientIdentity(ca, CONTROLLER_IDENTITY, clock);
}

/**
 * A read-only Sparkplug identity (CN ward:observer, acl.ts) for a SCADA, a historian or a person with a Sparkplug
 * tool: it may subscribe to `spBv1.0/#` and publish nothing. `ward dev` writes one to its folder.
 */
export function issueObserverIdentity(fleet: ControllerFleet, clock: Clock = systemClock): Promise<{ ca: Buffer; cert: Buffer; key: Buffer }> {
  return fleetClientIdentity(fleet.ca, OBSERVER_IDENTITY, clock);
}

async function fleetClientIdentity(ca: ControllerFleet['ca'], commonName: string, clock: Clock): Promise<{ ca: Buffer; cert: Buffer; key: Buffer }> {
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName });
  const now = clock.now();
  const cert = await issueClientCert(ca, {
    csrPem,
    commonName,
    notBefore: new Date(now - 300_000),
    notAfter: new Date(now + 397 * 86_400_000),
  });
  return { ca: Buffer.from(ca.certPem), cert: Buffer.from(cert.certPem), key: Buffer.from(privateKeyPem) };
}

export async function startController(deps: ControllerDeps): Promise<Controller> {
  const { config, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const replicaId =
    config.replicaId ??
    `${hostname()
      .replace(/[^A-Za-z0-9._-]/g, '-')
      .slice(0, 40)}-${process.pid}`;
  const log = logger.child({ replica: replicaId });
  const cleanup: (() => Promise<void>)[] = [];
  const closeAll = async () => {
    while (cleanup.length > 0) {
      const step = cleanup.pop() as () => Promise<void>;
      await step().catch((err) => log.warn({ err: describeError(err) }, 'controller shutdown step failed'));
    }
  };

  try {
    await ensurePrivateDir(config.stateDir);
    const { key, created } = await loadOrCreateSigningKey(config.stateDir, 'controller-key.pem');
    log.info({ kid: key.kid, publicKey: key.publicRaw, created }, created ? 'controller key generated' : 'controller key loaded');

    const store = deps.store ?? (await LevelDeviceStore.open(join(config.stateDir, 'devices')));
    cleanup.push(() => store.close());
    const audit = deps.audit ?? logAuditSink(log.child({ area: 'audit' }));
    const registry = await DeviceRegistry.open({ store, clock, devices: config.devices, log, audit });
    const auditStore = await LevelAuditStore.open(join(config.stateDir, 'audit'));
    cleanup.push(() => auditStore.close());
    // Late-bound publish: the session is created below.
    let publishReceipt: ((t: string, p: Buffer, o: { qos: 1; retain?: boolean }) => Promise<void>) | undefined;
    const auditIngest = new AuditIngest({
      store: auditStore,
      key,
      keyOf: (id) => registry.keyOf(id),
      publish: (t, p, o) => (publishReceipt ? publishReceipt(t, p, o) : Promise.reject(new Error('controller session not started'))),
      audit,
      clock,
      log: log.child({ area: 'audit-ingest' }),
    });

    const policies = new PolicyService({
      dir: join(config.stateDir, 'policies'),
      key,
      publish: (t, p, o) => (publishReceipt ? publishReceipt(t, p, o) : Promise.reject(new Error('controller session not started'))),
      audit,
      clock,
    });

    const fleet = await loadControllerFleet(config.stateDir, key, Math.floor(clock.now() / 1000));
    if (fleet) {
      log.info(
        {
          rootVersion: fleet.root.payload.version,
          caFingerprint: fleet.caFingerprint,
          certifiedUntil: new Date(fleet.certified.notAfter * 1000).toISOString(),
        },
        'controller certified by the fleet root: enrollment enabled, broker access by certificate or enrollment token',
      );
    } else {
      log.warn({}, 'no fleet: this controller is not certified (ward fleet init / certify-controller), so enrollment is off and the embedded broker is OPEN');
    }
    // Late-bound: the broker's hooks need the enrollment service, which needs the broker's address.
    let enrollment: EnrollmentService | undefined;
    let ownTls: { ca: Buffer; cert: Buffer; key: Buffer } | undefined;

    let broker: EmbeddedBroker | undefined;
    if (config.broker.embedded) {
      const reset = await registry.markAllOffline('broker-restart');
      if (reset > 0) log.info({ devices: reset }, 'embedded broker starting: devices marked offline until they reconnect');
      let auth: BrokerAuth | undefined;
      if (fleet) {
        const host = config.broker.embedded.host;
        const hosts = [...new Set([...(host === '0.0.0.0' || host === '::' ? [] : [host]), 'localhost', '127.0.0.1', ...config.enrollment.serverHosts])];
        const server = await issueServerCert(fleet.ca, { hosts, validDays: 397, now: new Date(clock.now()) });
        auth = {
          tls: { certPem: server.certPem + fleet.ca.certPem, keyPem: server.keyPem, caPem: fleet.ca.certPem },
          checkToken: (codeId, token) => enrollment?.checkToken(codeId, token) ?? Promise.resolve(false),
          checkClaim: (claimId, code) => enrollment?.checkClaim(claimId, code) ?? Promise.resolve(false),
          isDeviceActive: (id, serial) => enrollment?.isDeviceActive(id, serial) ?? Promise.resolve(false),
          onRefused: (e) =>
            audit.record({
              category: 'access-control',
              actor: e.identity,
              action: `broker.${e.what}`,
              ...(e.topic !== undefined ? { target: e.topic } : {}),
              outcome: 'refused',
              code: 'WARD_BROKER_NOT_AUTHORISED',
              details: { reason: e.reason },
            }),
        };
        ownTls = await controllerClientIdentity(fleet.ca, clock);
      }
      broker = await startEmbeddedBroker({ ...config.broker.embedded, ...(auth ? { auth } : {}) });
      cleanup.push(() => (broker as EmbeddedBroker).close());
      log.info({ mqtt: broker.url, wsPort: broker.wsPort }, 'embedded MQTT broker listening');
    } else if (config.broker.tls) {
      ownTls = {
        ca: await readFile(config.broker.tls.caFile),
        cert: await readFile(config.broker.tls.certFile),
        key: await readFile(config.broker.tls.keyFile),
      };
    }
    const brokerUrl = broker?.url ?? (config.broker.url as string);
    const group = broker ? null : config.broker.sharedGroup;
    const stateFilter = group ? sharedFilter(group, filters.allStates) : filters.allStates;
    const share = (filter: string) => (group ? sharedFilter(group, filter) : filter);

    let rpc: RpcClient | undefined;
    let attestationRef: AttestationService | undefined;
    let sessionRef: MqttSession | undefined;
    let publishSpb: (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }) => Promise<void> = async () => undefined;
    const telemetryHost = new TelemetryHost({
      config: { ...config.telemetry, alarms: config.telemetry.alarms ?? DEFAULT_ALARM_RULES },
      publish: (t, p, o) => publishSpb(t, p, o),
      audit,
      clock,
      log: log.child({ area: 'sparkplug-host' }),
      isConnected: () => sessionRef?.connected ?? false,
      onHealth: (deviceId, alarms) => {
        void attestationRef
          ?.setHealth(deviceId, alarms)
          .catch((err) => log.warn({ deviceId, err: describeError(err) }, 'health alarms did not reach the trust decision'));
      },
    });
    const password = config.broker.passwordFile ? await readFile(config.broker.passwordFile) : undefined;
    const session = new MqttSession(
      {
        url: brokerUrl,
        clientId: `ward-controller-${replicaId}`,
        protocol: 'auto',
        keepaliveSeconds: 30,
        connectTimeoutMs: 10_000,
        reconnect: { baseMs: 250, capMs: 10_000 },
        ...(config.broker.username !== undefined ? { username: config.broker.username } : {}),
        ...(password !== undefined ? { password } : {}),
        ...(ownTls ? { tls: { ...ownTls, rejectUnauthorized: true } } : {}),
        prepareWill: () => telemetryHost.prepareWill(),
        subscriptions: [
          { filter: stateFilter, qos: 1 },
          { filter: filters.repliesFor(replicaId), qos: 1 },
          // Not shared between replicas: each keeps its own archive and verdict (a shared store would allow sharing);
          // split across replicas, a device's chain would look full of gaps to each of them.
          { filter: filters.allAudit, qos: 1 },
          { filter: share(filters.allAttestNotify), qos: 1 },
          // Sparkplug B, as a host application (tck-id-host-topic-phid-birth-sub-required: before STATE online).
          { filter: TelemetryHost.FILTER, qos: 1 },
          ...(fleet
            ? [
                { filter: share(filters.enrollRequests), qos: 1 as const },
                { filter: share(filters.renewRequests), qos: 1 as const },
              ]
            : []),
        ],
      },
      {
        onConnected: async ({ protocol }) => {
          log.info({ broker: brokerUrl, protocol, stateFilter }, 'controller connected to broker');
          await telemetryHost.connected().catch((err) => log.warn({ err: describeError(err) }, 'Sparkplug STATE not published'));
          void policies
            .redeliver()
            .then((sent) => {
              if (sent > 0) log.info({ sent }, 'policies signed while the broker was away are delivered');
            })
            .catch((err) => log.warn({ err: describeError(err) }, 'undelivered policies not sent yet'));
        },
        onDisconnected: (reason) => log.warn({ reason }, 'controller lost the broker; reconnecting'),
        onError: (err) => log.warn({ code: err.code, err: err.message }, 'controller MQTT error'),
        onMessage: (topic, payload, packet) => {
          if (topic.startsWith('spBv1.0/')) return telemetryHost.handle(topic, payload);
          const codeId = parseEnrollTopic(topic);
          if (codeId !== undefined) {
            void enrollment?.handleEnrollRequest(codeId, payload);
          } else if (topic.endsWith('/renew/req')) {
            const parsed = parseDeviceTopic(topic);
            if (parsed) void enrollment?.handleRenewRequest(parsed.deviceId, payload);
          } else if (topic.endsWith('/audit')) {
            const parsed = parseDeviceTopic(topic);
            if (parsed?.suffix === 'audit') void auditIngest.handle(parsed.deviceId, payload);
          } else if (topic.endsWith('/attest/notify')) {
            const parsed = parseDeviceTopic(topic);
            if (parsed) void attestation.notified(parsed.deviceId, payload);
          } else if (topic.endsWith('/state')) {
            void registry.handleState(topic, payload, packet.retain);
          } else if (topic.includes('/reply/')) {
            try {
              rpc?.handleReply(topic, payload);
            } catch (err) {
              const code = (err as { code?: string }).code;
              log.warn({ topic, code, err: describeError(err) }, 'device reply refused');
              audit.record({
                category: 'request-error',
                actor: 'unknown',
                action: 'link.reply',
                target: parseDeviceTopic(topic)?.deviceId ?? topic,
                outcome: 'refused',
                ...(code !== undefined ? { code } : {}),
                details: { message: (err as Error).message },
              });
            }
          }
        },
      },
    );
    publishReceipt = (t, p, o) => session.publish(t, p, o);
    publishSpb = (t, p, o) => session.publish(t, p, o);
    sessionRef = session;
    session.start();
    telemetryHost.start();
    cleanup.push(() => session.stop(() => telemetryHost.disconnecting()));
    cleanup.push(async () => telemetryHost.stop());
    rpc = new RpcClient({
      key,
      replicaId,
      verifier: registry.verifier,
      publish: (t, p, o) => session.publish(t, p, o),
      clock,
      timeoutMs: config.rpc.timeoutMs,
    });
    cleanup.push(async () => rpc?.close());
    const attestation = new AttestationService({
      dir: join(config.stateDir, 'attestation'),
      config: config.attestation,
      keys: registry.keys,
      call: (id, method, params, timeoutMs) => (rpc as RpcClient).call(id, method, params, timeoutMs),
      onlineDevices: async () => (await registry.list()).filter((d) => isLive(d, clock.now())).map((d) => d.id),
      policyDigest: async (id) => (await policies.current(id))?.digest,
      makeCredential: (input) => makeCredential(input),
      audit,
      log: log.child({ area: 'attestation' }),
      clock,
    });
    await attestation.start();
    attestationRef = attestation;
    cleanup.push(async () => attestation.stop());

    if (fleet) {
      const embedded = config.broker.embedded;
      const hostPort = broker && embedded ? `${embedded.host === '0.0.0.0' ? '127.0.0.1' : embedded.host}:${broker.tcpPort}` : undefined;
      const advertise = config.enrollment.advertise ?? (hostPort ? [hostPort] : undefined);
      const deviceBrokers = config.enrollment.deviceBrokers ?? (hostPort ? [`mqtts://${hostPort}`] : undefined);
      if (advertise === undefined || deviceBrokers === undefined) {
        throw new WardError(
          ErrorCodes.CONFIG_INVALID,
          'with an external broker, set enrollment.advertise (host:port of its enrollment listener) and enrollment.deviceBrokers',
        );
      }
      const mosquitto = config.broker.mosquitto;
      // One sync at a time, each re-reading the store: an older snapshot must never be written after a newer one
      // (it could put a revoked device back). A daily run re-signs the CRL (Mosquitto refuses every client once
      // its nextUpdate passes) and drops expired codes and claims.
      let syncQueue: Promise<unknown> = Promise.resolve();
      const sync = mosquitto
        ? () => {
            const run = syncQueue.then(() => syncMosquitto({ ...mosquitto, store, ca: fleet.ca, clock, log }));
            syncQueue = run.catch(() => undefined);
            return run;
          }
        : undefined;
      enrollment = new EnrollmentService({
        key,
        fleet,
        store,
        registry,
        clock,
        audit,
        publish: (t, p, o) => session.publish(t, p, o),
        enrollBrokers: advertise,
        deviceBrokers,
        certValidityDays: config.enrollment.certValidityDays,
        log: log.child({ area: 'enrollment' }),
        ...(sync ? { onAuthChange: sync } : {}),
      });
      if (sync) {
        await sync();
        const daily = setInterval(() => {
          sync().catch((err) => log.error({ err: describeError(err) }, 'daily refresh of the broker access files failed'));
        }, 86_400_000);
        daily.unref();
        cleanup.push(async () => clearInterval(daily));
      }
    }

    const startedAt = Date.now();
    const server: Server = createApiServer({
      health: async () => {
        const devices = await registry.list();
        return {
          status: session.connected ? 'ok' : 'degraded',
          version: WARD_VERSION,
          replicaId,
          // The key that signs receipts and commands: `ward audit verify --controller-key`.
          publicKey: key.publicRaw,
          uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
          broker: { url: brokerUrl, connected: session.connected, protocol: session.protocol, embedded: broker !== undefined, sharedGroup: group },
          devices: { total: devices.length, online: devices.filter((d) => isLive(d, clock.now())).length },
          messages: { handled: registry.handledCount, refused: registry.rejections() },
          audit: { refused: auditIngest.refusals() },
        };
      },
      listDevices: () => registry.list(),
      getDevice: (id) => registry.get(id),
      policy: { current: (id) => policies.current(id), publish: (id, policy, actor) => policies.publish(id, policy, actor) },
      attestation: {
        get: (id) => attestation.get(id),
        challenge: (id) => attestation.challenge(id, 'operator'),
        approve: (id, actor) => attestation.approve(id, actor),
      },
      telemetry: {
        view: (id) => telemetryHost.view(id),
        history: (id, metric, device) => telemetryHost.history(id, metric, device),
        acceptAlarm: (id, target, actor) => telemetryHost.acceptAlarm(id, target, actor),
      },
      auditView: async (id, query) => {
        const head = await auditStore.head(id);
        if (head === undefined) return (await registry.get(id)) ? { verdict: null, events: [] } : undefined;
        const chainIndex = query.chainIndex ?? head.chainIndex;
        const stored =
          query.fromSeq !== undefined
            ? await auditStore.events(id, chainIndex, query.fromSeq, query.limit)
            : await auditStore.latest(id, chainIndex, query.limit);
        // Only events that verified against a device-signed checkpoint are ever stored here.
        return {
          verdict: { ...head, refusedSinceStart: auditIngest.refusedFor(id) },
          chainIndex,
          events: stored.map((e) => ({ seq: e.seq, verification: 'verified', event: JSON.parse(e.text) })),
        };
      },
      now: () => clock.now(),
      ...(loopbackHosts(config.api.host) ? { allowedHosts: loopbackHosts(config.api.host) as readonly string[] } : {}),
      callDevice: (id, method) => (rpc as RpcClient).call(id, method),
      ...(enrollment
        ? {
            enrollment: {
              createCode: async (input) => {
                const code = await (enrollment as EnrollmentService).createCode(input);
                return { ...code, expiresAt: new Date(code.exp * 1000).toISOString(), qr: qrInfo(code.text), svg: await renderSvg(code.text) };
              },
              listCodes: () => (enrollment as EnrollmentService).listCodes(),
              registerClaim: async (text) => {
                const { claimCodeHash: _c, mosquittoHash: _m, ...view } = await (enrollment as EnrollmentService).registerClaim(text);
                return view;
              },
              confirmClaim: async (claimId, input) => {
                const { claimCodeHash: _c, mosquittoHash: _m, ...view } = await (enrollment as EnrollmentService).confirmClaim(claimId, input);
                return view;
              },
              listClaims: () => (enrollment as EnrollmentService).listClaims(),
              revoke: async (id, reason) => {
                const record = await (enrollment as EnrollmentService).revoke(id, reason);
                const dropped = broker?.disconnect(id) ?? 0;
                log.info({ deviceId: id, reason, connectionsDropped: dropped }, 'device revoked');
                return record;
              },
            },
          }
        : {}),
    });
    const apiPort = await listen(server, config.api.host, config.api.port, 'HTTP API');
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    const apiUrl = `http://${config.api.host.includes(':') ? `[${config.api.host}]` : config.api.host}:${apiPort}`;
    log.info({ api: apiUrl }, 'controller API listening');

    return {
      replicaId,
      publicKey: key.publicRaw,
      apiUrl,
      brokerUrl,
      wsUrl: broker?.wsPort !== undefined ? `ws://${config.broker.embedded?.host}:${broker.wsPort}/mqtt` : undefined,
      registry,
      rpc,
      session,
      enrollment,
      fleet,
      auditIngest,
      auditStore,
      policies,
      attestation,
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
