import type { AnyPluginDefinition } from '../plugins/api/index.js';
import type { AgentConfig } from './config/schema.js';
import { ControlLink } from './control/link.js';
import { VersionCounter } from './control/version-counter.js';
import { type Clock, systemClock } from './core/clock.js';
import { describeError } from './core/errors.js';
import { Lifecycle, type LifecycleEvent } from './core/lifecycle.js';
import { loadOrCreateSigningKey } from './identity/keystore.js';
import type { Logger } from './log.js';
import { PluginHost } from './plugins/host.js';
import { EnvelopeVerifier, MemoryReplayCache } from './shared/envelope.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from './shared/keys.js';
import { CONTROLLER_PRINCIPAL, RpcServer } from './shared/rpc.js';
import { ensurePrivateDir } from './state/files.js';
import { LifecycleStore } from './state/lifecycle-store.js';
import { WARD_VERSION } from './version.js';

/**
 * The agent's composition root (CONVENTIONS.md #1): the only place that
 * picks implementations and wires subsystems together. Nothing else holds
 * module-level state; tests build a system with their own clock, logger and
 * plugin list.
 */
export interface AgentDeps {
  readonly config: AgentConfig;
  readonly logger: Logger;
  readonly plugins: readonly AnyPluginDefinition[];
  readonly clock?: Clock;
}

export interface Agent {
  readonly deviceId: string;
  readonly key: SigningKey;
  readonly lifecycle: Lifecycle;
  readonly link: ControlLink;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function buildAgent(deps: AgentDeps): Promise<Agent> {
  const { config, logger } = deps;
  const clock = deps.clock ?? systemClock;
  await ensurePrivateDir(config.stateDir);
  const { key, created } = await loadOrCreateSigningKey(config.stateDir);
  logger.info({ kid: key.kid, publicKey: key.publicRaw, created }, created ? 'device key generated' : 'device key loaded');

  const lifecycleStore = LifecycleStore.in(config.stateDir);
  const lifecycle = new Lifecycle((await lifecycleStore.load()) ?? 'unprovisioned', () => clock.now());

  const plugins = new PluginHost({
    available: deps.plugins,
    selected: config.plugins,
    deviceId: config.deviceId,
    clock,
    logger: (name) => logger.child({ plugin: name }),
  });

  const controllerKid = keyIdOf(config.controller.publicKey);
  const controllerKey = publicKeyFromRaw(config.controller.publicKey);
  const verifier = new EnvelopeVerifier({
    keys: (kid) => (kid === controllerKid ? { publicKey: controllerKey, principal: CONTROLLER_PRINCIPAL } : undefined),
    clock,
    replay: new MemoryReplayCache(),
  });

  const versions = await VersionCounter.open(config.stateDir, () => clock.now());
  let rpc: RpcServer | undefined;
  const link = new ControlLink({
    deviceId: config.deviceId,
    config: config.mqtt,
    key,
    versions,
    clock,
    agentVersion: WARD_VERSION,
    heartbeatSeconds: config.state.heartbeatSeconds,
    snapshot: () => ({ lifecycle: lifecycle.state, plugins: plugins.names }),
    onCommand: (payload) => {
      rpc?.handle(payload).catch((err) => {
        // Refused commands become audit events once the audit journal exists (audit issue).
        logger.warn({ code: (err as { code?: string }).code, err: describeError(err) }, 'command refused');
      });
    },
    log: logger.child({ area: 'control' }),
  });
  rpc = new RpcServer({ deviceId: config.deviceId, key, verifier, publish: link.publish, clock });
  rpc.register('ping', () => ({ pong: true, lifecycle: lifecycle.state, uptimeSeconds: Math.round(process.uptime()) }));
  rpc.register('status', () => ({ lifecycle: lifecycle.state, plugins: plugins.status(), protocol: link.protocol }));

  lifecycle.onTransition((t) => logger.info({ from: t.from, to: t.to, event: t.event, reason: t.reason }, 'lifecycle transition'));

  const advance = async (event: LifecycleEvent, reason: string) => {
    if (!lifecycle.can(event)) return;
    const from = lifecycle.state;
    const probe = new Lifecycle(from, () => clock.now()).apply(event, reason);
    await lifecycleStore.save(probe); // persisted before the state takes effect
    lifecycle.apply(event, reason);
  };

  let started = false;
  return {
    deviceId: config.deviceId,
    key,
    lifecycle,
    link,
    async start() {
      if (started) throw new TypeError('agent started twice');
      started = true;
      // Until enrollment and attestation land (identity and attestation issues), the identity is static:
      // the controller key is pinned in config and the device key pre-registered with the controller.
      // The agent therefore walks to 'attesting' and stays there: it never claims to be attested.
      await advance('provision', 'static identity from config (enrollment not yet available)');
      await advance('enrolled', 'device key pre-registered with the controller');
      await plugins.start();
      await link.start();
    },
    async stop() {
      await link.stop();
      const failures = await plugins.stop();
      for (const f of failures) logger.warn(f, 'plugin failed to stop cleanly');
    },
  };
}
