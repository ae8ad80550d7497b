import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { type Clock, systemClock } from '../agent/core/clock.js';
import { describeError } from '../agent/core/errors.js';
import { loadOrCreateSigningKey } from '../agent/identity/keystore.js';
import type { Logger } from '../agent/log.js';
import { MqttSession } from '../agent/shared/mqtt-session.js';
import { RpcClient } from '../agent/shared/rpc.js';
import { filters, sharedFilter } from '../agent/shared/topics.js';
import { ensurePrivateDir } from '../agent/state/files.js';
import { WARD_VERSION } from '../agent/version.js';
import { createApiServer } from './api.js';
import { type EmbeddedBroker, listen, startEmbeddedBroker } from './broker.js';
import type { ControllerConfig } from './config.js';
import { DeviceRegistry } from './registry.js';
import { type DeviceStore, isLive, LevelDeviceStore } from './store.js';

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
  close(): Promise<void>;
}

export interface ControllerDeps {
  readonly config: ControllerConfig;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Injected by tests that exercise the store interface; default is LevelDB in the state folder. */
  readonly store?: DeviceStore;
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
    const registry = await DeviceRegistry.open({ store, clock, devices: config.devices, log });

    let broker: EmbeddedBroker | undefined;
    if (config.broker.embedded) {
      const reset = await registry.markAllOffline('broker-restart');
      if (reset > 0) log.info({ devices: reset }, 'embedded broker starting: devices marked offline until they reconnect');
      broker = await startEmbeddedBroker(config.broker.embedded);
      cleanup.push(() => (broker as EmbeddedBroker).close());
      log.info({ mqtt: broker.url, wsPort: broker.wsPort }, 'embedded MQTT broker listening');
    }
    const brokerUrl = broker?.url ?? (config.broker.url as string);
    const group = broker ? null : config.broker.sharedGroup;
    const stateFilter = group ? sharedFilter(group, filters.allStates) : filters.allStates;

    let rpc: RpcClient | undefined;
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
        subscriptions: [
          { filter: stateFilter, qos: 1 },
          { filter: filters.repliesFor(replicaId), qos: 1 },
        ],
      },
      {
        onConnected: ({ protocol }) => log.info({ broker: brokerUrl, protocol, stateFilter }, 'controller connected to broker'),
        onDisconnected: (reason) => log.warn({ reason }, 'controller lost the broker; reconnecting'),
        onError: (err) => log.warn({ code: err.code, err: err.message }, 'controller MQTT error'),
        onMessage: (topic, payload, packet) => {
          if (topic.endsWith('/state')) {
            void registry.handleState(topic, payload, packet.retain);
          } else if (topic.includes('/reply/')) {
            try {
              rpc?.handleReply(topic, payload);
            } catch (err) {
              log.warn({ topic, code: (err as { code?: string }).code, err: describeError(err) }, 'device reply refused');
            }
          }
        },
      },
    );
    session.start();
    cleanup.push(() => session.stop());
    rpc = new RpcClient({
      key,
      replicaId,
      verifier: registry.verifier,
      publish: (t, p, o) => session.publish(t, p, o),
      clock,
      timeoutMs: config.rpc.timeoutMs,
    });
    cleanup.push(async () => rpc?.close());

    const startedAt = Date.now();
    const server: Server = createApiServer({
      health: async () => {
        const devices = await registry.list();
        return {
          status: session.connected ? 'ok' : 'degraded',
          version: WARD_VERSION,
          replicaId,
          uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
          broker: { url: brokerUrl, connected: session.connected, protocol: session.protocol, embedded: broker !== undefined, sharedGroup: group },
          devices: { total: devices.length, online: devices.filter((d) => isLive(d, clock.now())).length },
          messages: { handled: registry.handledCount, refused: registry.rejections() },
        };
      },
      listDevices: () => registry.list(),
      getDevice: (id) => registry.get(id),
      now: () => clock.now(),
      callDevice: (id, method) => (rpc as RpcClient).call(id, method),
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
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
