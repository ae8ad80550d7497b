import { createHash } from 'node:crypto';
import type { DetectedBoard, HostFs, ScanInput, StatusLed, Watchdog } from '../hardware/api/index.js';
import { detectBoard } from '../hardware/boards/detect.js';
import { patternFor } from '../hardware/led/patterns.js';
import { SysfsLed } from '../hardware/led/sysfs.js';
import { StreamScanInput } from '../hardware/qr/tty.js';
import { hostFs } from '../hardware/sysfs/hostfs.js';
import { NoWatchdog, SystemdWatchdog } from '../hardware/watchdog/systemd.js';
import type { AnyPluginDefinition } from '../plugins/api/index.js';
import type { AgentConfig, HardwareConfig } from './config/schema.js';
import { ControlLink } from './control/link.js';
import { VersionCounter } from './control/version-counter.js';
import { type Clock, systemClock } from './core/clock.js';
import { describeError } from './core/errors.js';
import { Lifecycle, type LifecycleEvent, nextState } from './core/lifecycle.js';
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
 * picks implementations (hardware drivers, plugins) and wires subsystems
 * together. Nothing else holds module-level state; tests build a system with
 * their own clock, logger, plugin list and hardware fakes.
 */
export interface HardwareOverrides {
  readonly fs?: HostFs;
  readonly led?: StatusLed | null;
  readonly watchdog?: Watchdog;
  readonly scanner?: ScanInput | null;
}

export interface AgentDeps {
  readonly config: AgentConfig;
  readonly logger: Logger;
  readonly plugins: readonly AnyPluginDefinition[];
  readonly clock?: Clock;
  readonly hardware?: HardwareOverrides;
}

export interface Agent {
  readonly deviceId: string | undefined;
  readonly key: SigningKey;
  readonly lifecycle: Lifecycle;
  readonly board: DetectedBoard;
  /** Undefined while unprovisioned: there is nobody to talk to yet. */
  readonly link: ControlLink | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
}

interface Hardware {
  readonly board: DetectedBoard;
  readonly led: StatusLed | undefined;
  readonly watchdog: Watchdog;
  readonly scanner: ScanInput | undefined;
}

async function pickHardware(config: HardwareConfig, overrides: HardwareOverrides = {}): Promise<Hardware> {
  const fs = overrides.fs ?? hostFs(config.root);
  const board = await detectBoard(fs, { board: config.board });
  let led: StatusLed | undefined;
  if (overrides.led !== undefined) led = overrides.led ?? undefined;
  else if (config.statusLed === 'auto') led = await SysfsLed.find(fs, board.profile.statusLeds);
  else if (config.statusLed !== 'none') led = await SysfsLed.find(fs, [config.statusLed]);
  const watchdog = overrides.watchdog ?? (config.watchdog === 'auto' && SystemdWatchdog.available() ? new SystemdWatchdog() : new NoWatchdog());
  let scanner: ScanInput | undefined;
  if (overrides.scanner !== undefined) scanner = overrides.scanner ?? undefined;
  else if (config.scanner === 'stdin') scanner = new StreamScanInput(process.stdin);
  else if (config.scanner !== null) scanner = StreamScanInput.fromTty(config.scanner);
  return { board, led, watchdog, scanner };
}

export async function buildAgent(deps: AgentDeps): Promise<Agent> {
  const { config, logger } = deps;
  const clock = deps.clock ?? systemClock;
  await ensurePrivateDir(config.stateDir);
  const { key, created } = await loadOrCreateSigningKey(config.stateDir);
  logger.info({ kid: key.kid, publicKey: key.publicRaw, created }, created ? 'device key generated' : 'device key loaded');

  const hw = await pickHardware(config.hardware, deps.hardware);
  const { board } = hw;
  logger.info(
    {
      board: board.profile.id,
      model: board.model,
      ports: Object.fromEntries(board.ports.map((p) => [p.name, p.device ?? null])),
      tpm: board.tpm.present ? (board.tpm.device ?? 'present') : 'none',
      statusLed: hw.led?.name ?? 'none',
      watchdog: hw.watchdog.kind,
    },
    'hardware detected',
  );

  const lifecycleStore = LifecycleStore.in(config.stateDir);
  const lifecycle = new Lifecycle((await lifecycleStore.load()) ?? 'unprovisioned', () => clock.now());
  const showLed = (state: string) => {
    hw.led?.show(patternFor(state)).catch((err) => logger.warn({ err: describeError(err), led: hw.led?.name }, 'status LED not updated'));
  };
  lifecycle.onTransition((t) => {
    logger.info({ from: t.from, to: t.to, event: t.event, reason: t.reason }, 'lifecycle transition');
    showLed(t.to);
  });

  const plugins = new PluginHost({
    available: deps.plugins,
    selected: config.plugins,
    deviceId: config.deviceId ?? 'unprovisioned',
    clock,
    logger: (name) => logger.child({ plugin: name }),
  });

  const link = config.deviceId && config.controller && config.mqtt ? await buildLink(config.deviceId, config.controller.publicKey, config.mqtt) : undefined;

  async function buildLink(deviceId: string, controllerPublicKey: string, mqtt: NonNullable<AgentConfig['mqtt']>): Promise<ControlLink> {
    const controllerKid = keyIdOf(controllerPublicKey);
    const controllerKey = publicKeyFromRaw(controllerPublicKey);
    const verifier = new EnvelopeVerifier({
      keys: (kid) => (kid === controllerKid ? { publicKey: controllerKey, principal: CONTROLLER_PRINCIPAL } : undefined),
      clock,
      replay: new MemoryReplayCache(),
    });
    const versions = await VersionCounter.open(config.stateDir, () => clock.now());
    let rpc: RpcServer | undefined;
    const controlLink = new ControlLink({
      deviceId,
      config: mqtt,
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
    rpc = new RpcServer({ deviceId, key, verifier, publish: controlLink.publish, clock });
    rpc.register('ping', () => ({ pong: true, lifecycle: lifecycle.state, uptimeSeconds: Math.round(process.uptime()) }));
    rpc.register('status', () => ({
      lifecycle: lifecycle.state,
      plugins: plugins.status(),
      protocol: controlLink.protocol,
      board: { id: board.profile.id, model: board.model, ports: board.ports, tpm: board.tpm },
    }));
    return controlLink;
  }

  const advance = async (event: LifecycleEvent, reason: string) => {
    if (!lifecycle.can(event)) return;
    const from = lifecycle.state;
    // Persisted before the state takes effect (CONVENTIONS.md #3).
    await lifecycleStore.save({ from, to: nextState(from, event), event, reason, at: clock.now() });
    lifecycle.apply(event, reason);
  };

  let watchdogTimer: NodeJS.Timeout | undefined;
  const consumeScans = async (scanner: ScanInput) => {
    for await (const scan of scanner.events()) {
      if (scan.kind === 'rejected') {
        logger.warn({ reason: scan.reason }, 'scan refused');
        continue;
      }
      // Never log the scan itself: an enrollment QR carries a one-time token.
      const digest = createHash('sha256').update(scan.text).digest('hex').slice(0, 12);
      logger.warn(
        { length: scan.text.length, sha256: digest, lifecycle: lifecycle.state },
        'scan received; enrollment by QR code is not implemented yet (identity issue), so it is ignored',
      );
    }
  };

  let started = false;
  return {
    deviceId: config.deviceId,
    key,
    lifecycle,
    board,
    link,
    async start() {
      if (started) throw new TypeError('agent started twice');
      started = true;
      showLed(lifecycle.state);
      if (link) {
        // Until enrollment and attestation land (identity and attestation issues), the identity is static:
        // the controller key is pinned in config and the device key pre-registered with the controller.
        // The agent therefore walks to 'attesting' and stays there: it never claims to be attested.
        await advance('provision', 'static identity from config (enrollment not yet available)');
        await advance('enrolled', 'device key pre-registered with the controller');
      }
      await plugins.start();
      await link?.start();
      if (hw.scanner) void consumeScans(hw.scanner).catch((err) => logger.warn({ err: describeError(err) }, 'scanner input ended'));
      if (lifecycle.state === 'unprovisioned') {
        logger.info({ event: 'waiting-for-provisioning', scanner: config.hardware.scanner }, 'waiting for provisioning: scan the enrollment QR code');
      }
      await hw.watchdog.ready(`lifecycle ${lifecycle.state}`).catch((err) => logger.warn({ err: describeError(err) }, 'watchdog ready failed'));
      if (hw.watchdog.intervalMs !== undefined) {
        // Pinged from the main event loop on purpose: if the loop hangs, the pings stop and systemd restarts us.
        watchdogTimer = setInterval(() => {
          hw.watchdog.ping().catch((err) => logger.warn({ err: describeError(err) }, 'watchdog ping failed'));
        }, hw.watchdog.intervalMs);
      }
    },
    async stop() {
      clearInterval(watchdogTimer);
      await hw.watchdog.stopping().catch(() => undefined);
      // Not awaiting the scan loop: closing the input ends it, and a tty read must never hold up a stop.
      await hw.scanner?.close();
      await link?.stop();
      const failures = await plugins.stop();
      for (const f of failures) logger.warn(f, 'plugin failed to stop cleanly');
    },
  };
}
