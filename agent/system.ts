import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AttestationTpm, DetectedBoard, HostFs, ScanInput, StatusLed, Watchdog } from '../hardware/api/index.js';
import { detectBoard } from '../hardware/boards/detect.js';
import { patternFor } from '../hardware/led/patterns.js';
import { SysfsLed } from '../hardware/led/sysfs.js';
import { StreamScanInput } from '../hardware/qr/tty.js';
import { hostFs } from '../hardware/sysfs/hostfs.js';
import { Tpm2ToolsTpm } from '../hardware/tpm/tpm2-tools.js';
import { NoWatchdog, SystemdWatchdog } from '../hardware/watchdog/systemd.js';
import type { AnyPluginDefinition } from '../plugins/api/index.js';
import { AgentAttestation, measureSourcesFor } from './attest/service.js';
import { AuditJournal, type JournalOptions } from './audit/journal.js';
import { AuditShipper } from './audit/shipper.js';
import { logAuditSink } from './audit-log.js';
import { type AgentConfig, type HardwareConfig, mqttSchema } from './config/schema.js';
import { ControlLink, sessionOptionsFor } from './control/link.js';
import { LocalControl } from './control/local.js';
import { VersionCounter } from './control/version-counter.js';
import { type AuditSink, teeAudit } from './core/audit.js';
import { type Clock, systemClock } from './core/clock.js';
import { describeError, ErrorCodes, WardError } from './core/errors.js';
import { Lifecycle, type LifecycleEvent, type LifecycleState, nextState } from './core/lifecycle.js';
import type { TrustLevel } from './enforce/enforcer.js';
import { EnforceService } from './enforce/service.js';
import { fetchClaimedBundle, loadOrCreateClaim } from './identity/claim.js';
import { loadOrCreateSigningKey } from './identity/keystore.js';
import { deriveDeviceId, type ProvisionContext, provision } from './identity/provision.js';
import { renewIdentity } from './identity/renewal.js';
import { IdentityStore, type LoadedIdentity } from './identity/store.js';
import { readRootFile } from './identity/trust.js';
import type { Logger } from './log.js';
import { PluginHost } from './plugins/host.js';
import type { VerdictParams } from './shared/attest/evidence.js';
import { RECEIPT_TYPE, signedReceipt } from './shared/audit/event.js';
import { EnvelopeVerifier, MemoryReplayCache } from './shared/envelope.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from './shared/keys.js';
import { CONTROLLER_PRINCIPAL, RpcServer } from './shared/rpc.js';
import { topics } from './shared/topics.js';
import { ensurePrivateDir } from './state/files.js';
import { LifecycleStore } from './state/lifecycle-store.js';
import { TelemetryBuffer } from './telemetry/buffer.js';
import { GatewayMetrics, gatewayDeadbands } from './telemetry/gateway.js';
import { SparkplugPublisher } from './telemetry/publisher.js';
import { TelemetryService } from './telemetry/service.js';
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
  /** Also receives every audit event (tests assert on a memory sink); the journal always does. */
  readonly audit?: AuditSink;
  /** Kernel boot id override (tests). */
  readonly bootId?: string;
  /** The config file the agent was started with (measured for attestation, byte for byte). */
  readonly configFile?: string;
  /** The TPM to attest with, overriding `attestation.tpm` (tests). */
  readonly tpm?: AttestationTpm | null;
}

export interface Agent {
  /** Undefined until the gateway is provisioned. */
  readonly deviceId: string | undefined;
  readonly key: SigningKey;
  readonly lifecycle: Lifecycle;
  readonly board: DetectedBoard;
  /** Undefined while unprovisioned: there is nobody to talk to yet. */
  readonly link: ControlLink | undefined;
  readonly identity: LoadedIdentity | undefined;
  /** The signed audit journal; every module's events land here. */
  readonly journal: AuditJournal;
  /** Ships the journal while a link exists. */
  readonly shipper: AuditShipper | undefined;
  /** Micro-segmentation: the policy in force, its kernel ruleset and the denied-flow reporter. */
  readonly enforce: EnforceService;
  /** Self-attestation while a link exists (measurements, evidence, verdicts). */
  readonly attestation: AgentAttestation | undefined;
  /** Gateway health and machine data (undefined when `telemetry.enabled` is false). */
  readonly telemetry: TelemetryService | undefined;
  /** The Sparkplug B edge node while a link exists. */
  readonly sparkplug: SparkplugPublisher | undefined;
  /** What a scan does: a bundle text or a camera frame. Resolves once the gateway is enrolled and its link started. */
  provision(input: string | Uint8Array): Promise<string>;
  /** Renews the client certificate now (normally done on a timer). */
  renewNow(): Promise<void>;
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

/** The journal as the agent's config describes it (the agent, and `ward enforce` when no agent runs, open it alike). */
export function journalOptions(config: AgentConfig, key: SigningKey, clock: Clock, log: Logger): JournalOptions {
  return {
    dir: join(config.stateDir, 'audit'),
    key,
    clock,
    log,
    agentVersion: WARD_VERSION,
    maxBytes: config.audit.maxBytes,
    warnFraction: config.audit.warnFraction,
    checkpointIntervalMs: config.audit.checkpointIntervalMs,
    // A span between two checkpoints must always fit one shipped batch (the controller refuses anything larger).
    checkpointEvents: Math.min(1000, config.audit.maxBatchEvents),
    checkpointBytes: Math.min(192 * 1024, config.audit.maxBatchBytes),
  };
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

  // Nothing records an event before the journal opens below (no transition happens before start()).
  // The journal is the record; the log line is for whoever reads journalctl at the line.
  let journal: AuditJournal | undefined;
  const audit = teeAudit(
    { record: (event) => (journal ? journal.record(event) : logger.error({ action: event.action }, 'audit event before the journal opened')) },
    logAuditSink(logger.child({ area: 'audit' })),
    ...(deps.audit ? [deps.audit] : []),
  );
  const nowSec = () => Math.floor(clock.now() / 1000);
  const root = config.trust ? await readRootFile(config.trust.rootFile, nowSec()) : undefined;
  const identityStore = new IdentityStore(config.stateDir);
  if (root === undefined && (await identityStore.exists())) {
    throw new WardError(
      ErrorCodes.CONFIG_INVALID,
      `an enrolled identity is in ${identityStore.dir} but the config names no trust.rootFile to check it against`,
    );
  }
  let identity = root ? await identityStore.load({ root, key, nowSec: nowSec() }) : undefined;
  if (identity?.controllerCertExpired) {
    logger.warn(
      { deviceId: identity.deviceId },
      "the controller's certification by the fleet root has expired; still trusted for this identity until the controller renews it",
    );
  }
  if (identity) {
    logger.info(
      {
        deviceId: identity.deviceId,
        site: identity.site,
        line: identity.line,
        cell: identity.cell,
        certNotAfter: new Date(identity.certNotAfter * 1000).toISOString(),
      },
      'enrolled identity loaded',
    );
  }
  const staticIdentity = config.deviceId !== undefined && config.controller !== undefined && config.mqtt !== undefined;

  const lifecycleStore = LifecycleStore.in(config.stateDir);
  const lifecycle = new Lifecycle((await lifecycleStore.load()) ?? 'unprovisioned', () => clock.now());
  const showLed = (state: string) => {
    hw.led?.show(patternFor(state)).catch((err) => logger.warn({ err: describeError(err), led: hw.led?.name }, 'status LED not updated'));
  };
  lifecycle.onTransition((t) => {
    logger.info({ from: t.from, to: t.to, event: t.event, reason: t.reason }, 'lifecycle transition');
    audit.record({
      category: 'control-system',
      actor: 'ward-agent',
      action: 'lifecycle.transition',
      target: t.to,
      outcome: 'success',
      details: { from: t.from, to: t.to, event: t.event, reason: t.reason },
    });
    showLed(t.to);
    telemetry?.service.publishNode(lifecycleMetric());
  });

  const plugins = new PluginHost({
    available: deps.plugins,
    selected: config.plugins,
    deviceId: config.deviceId ?? identity?.deviceId ?? 'unprovisioned',
    clock,
    logger: (name) => logger.child({ plugin: name }),
    audit,
    // Plugin keys and certificates (an OPC UA client's PKI) survive restarts with the rest of the state.
    dataDir: (name) => join(config.stateDir, 'plugins', name),
  });

  const openedJournal = await AuditJournal.open({
    ...journalOptions(config, key, clock, logger.child({ area: 'audit' })),
    ...(deps.bootId !== undefined ? { bootId: deps.bootId } : {}),
  });
  {
    const s = openedJournal.status();
    logger.info({ chain: s.chain, seq: s.seq, session: s.session, receipted: s.receipted?.seq ?? 0, repairs: s.repairs }, 'audit journal open');
  }
  journal = openedJournal;
  let telemetry: { service: TelemetryService; buffer: TelemetryBuffer } | undefined;
  if (config.telemetry.enabled) {
    try {
      telemetry = await openTelemetry();
    } catch (err) {
      await openedJournal.close();
      throw err;
    }
  }
  async function openTelemetry() {
    const t = config.telemetry;
    const buffer = await TelemetryBuffer.open({
      dir: join(config.stateDir, 'telemetry'),
      maxBytes: t.buffer.maxBytes,
      audit,
      log: logger.child({ area: 'telemetry' }),
    });
    let service: TelemetryService | undefined;
    const gateway = t.gateway.enabled
      ? new GatewayMetrics({
          clock,
          audit,
          log: logger.child({ area: 'telemetry' }),
          onPoints: (points) => service?.publishNode(points),
          intervalMs: t.gateway.intervalSeconds * 1000,
          slowIntervalMs: t.gateway.slowIntervalSeconds * 1000,
          mounts: t.gateway.mounts,
          ...(t.gateway.interfaces ? { interfaces: t.gateway.interfaces } : {}),
          deadband: gatewayDeadbands(t.gateway.deadbands),
        })
      : null;
    service = new TelemetryService({
      buffer,
      gateway,
      sources: () => plugins.telemetry,
      flushMs: t.flushMs,
      now: () => clock.now(),
      log: logger.child({ area: 'telemetry' }),
    });
    return { service, buffer };
  }
  const lifecycleMetric = () => [{ name: 'Ward/Lifecycle', type: 'String' as const, value: lifecycle.state, timestamp: clock.now() }];
  let enforce: EnforceService;
  try {
    enforce = await EnforceService.open({
      config: config.enforce,
      stateDir: config.stateDir,
      board,
      audit,
      log: logger.child({ area: 'enforce' }),
      clock,
      context: { protocols: plugins.protocols },
      proxies: () => plugins.proxies,
      trust: trustOf(lifecycle.state),
    });
  } catch (err) {
    await telemetry?.buffer.close();
    await openedJournal.close();
    throw err;
  }
  const local = new LocalControl({
    path: join(config.stateDir, 'agent.sock'),
    enforce,
    log: logger.child({ area: 'local-control' }),
    attestation: () => (link ? attestations.get(link) : undefined),
  });
  let failsafeTimer: NodeJS.Timeout | undefined;
  let trustRetryTimer: NodeJS.Timeout | undefined;
  let trustRetryMs = 0;
  /**
   * The kernel follows the lifecycle's trust. A failed re-apply is tried again with backoff: the controller sends
   * no new verdict while the reported lifecycle already matches its record, so nothing else would.
   */
  const followTrust = async (actor: string, reason: string): Promise<void> => {
    clearTimeout(trustRetryTimer);
    trustRetryTimer = undefined;
    try {
      await enforce.enforcer.setTrust(trustOf(lifecycle.state), actor, reason);
      trustRetryMs = 0;
    } catch (err) {
      trustRetryMs = Math.min(trustRetryMs === 0 ? 5_000 : trustRetryMs * 2, 300_000);
      logger.error({ err: describeError(err), retryInMs: trustRetryMs }, 'the policy could not follow the trust state; trying again');
      trustRetryTimer = setTimeout(() => void followTrust('ward-agent', reason), trustRetryMs);
      trustRetryTimer.unref();
    }
  };
  // Fail mode (policy failMode: safe): a controller silent for too long gets the line onto its safe flows.
  let disconnectedAt: number | undefined;
  const watchController = (connected: boolean) => {
    clearTimeout(failsafeTimer);
    failsafeTimer = undefined;
    if (connected) {
      disconnectedAt = undefined;
      void enforce.enforcer.leaveFailsafe('controller reachable again').catch((err) => logger.error({ err: describeError(err) }, 'leaving fail-safe failed'));
      return;
    }
    disconnectedAt ??= clock.now();
    const since = disconnectedAt;
    // The policy's fail mode is read at each check, not once at the disconnect: a first policy still being applied
    // then, or one applied on the gateway during the outage, counts from the start of the outage.
    const check = () => {
      const failMode = (enforce.enforcer.active?.policy as { failMode?: { kind?: string; afterSeconds?: number } } | undefined)?.failMode;
      const afterSeconds = failMode?.afterSeconds ?? 86_400;
      const left = failMode?.kind === 'safe' ? since + afterSeconds * 1000 - clock.now() : Number.POSITIVE_INFINITY;
      if (left > 0) {
        // In steps (Node's timers overflow past 2^31-1 ms), looking at the policy and the clock again every 5 s.
        failsafeTimer = setTimeout(check, Math.min(left, 5_000));
        failsafeTimer.unref();
        return;
      }
      void enforce.enforcer
        .enterFailsafe(`controller unreachable for ${afterSeconds} s`)
        .catch((err) => logger.error({ err: describeError(err) }, 'entering fail-safe failed'));
    };
    check();
  };
  const shippers = new WeakMap<ControlLink, AuditShipper>();
  const attestations = new WeakMap<ControlLink, AgentAttestation>();
  const publishers = new WeakMap<ControlLink, SparkplugPublisher>();
  let lastVerdictAt = 0;
  let verdictQueue: Promise<unknown> = Promise.resolve();
  const bootId = deps.bootId ?? readBootIdSync();
  const tpm = deps.tpm === null ? undefined : (deps.tpm ?? tpmFor(config.attestation.tpm, board, join(config.stateDir, 'tpm')));
  const linkFor = (id: LoadedIdentity) =>
    buildLink(
      id.deviceId,
      id.controllerPublicKey,
      mqttSchema.parse({ url: id.brokers[0], tls: { caFile: id.files.ca, certFile: id.files.cert, keyFile: id.files.key, rejectUnauthorized: true } }),
    );
  let link: ControlLink | undefined;
  try {
    link =
      config.deviceId && config.controller && config.mqtt
        ? await buildLink(config.deviceId, config.controller.publicKey, config.mqtt)
        : identity
          ? await linkFor(identity)
          : undefined;
  } catch (err) {
    await telemetry?.buffer.close();
    await openedJournal.close();
    throw err;
  }

  async function buildLink(deviceId: string, controllerPublicKey: string, mqtt: NonNullable<AgentConfig['mqtt']>): Promise<ControlLink> {
    const controllerKid = keyIdOf(controllerPublicKey);
    const controllerKey = publicKeyFromRaw(controllerPublicKey);
    const verifier = new EnvelopeVerifier({
      keys: (kid) => (kid === controllerKid ? { publicKey: controllerKey, principal: CONTROLLER_PRINCIPAL } : undefined),
      clock,
      replay: new MemoryReplayCache(),
    });
    const versions = await VersionCounter.open(config.stateDir, () => clock.now());
    enforce.setController(deviceId, controllerPublicKey);
    // In arrival order: each policy is checked against the version the previous one left.
    let policyQueue: Promise<unknown> = Promise.resolve();
    let rpc: RpcServer | undefined;
    let controlLink: ControlLink | undefined;
    const shipper = new AuditShipper({
      journal: openedJournal,
      deviceId,
      publish: (topic, payload, opts) => (controlLink as ControlLink).publish(topic, payload, opts),
      verifyReceipt: (raw) => {
        verifier.verify(raw, { typ: RECEIPT_TYPE, principal: CONTROLLER_PRINCIPAL, subject: deviceId });
        // Authenticated above; parsed again for the exact shape the journal keeps.
        return signedReceipt.parse(JSON.parse(raw.toString('utf8')));
      },
      audit,
      clock,
      log: logger.child({ area: 'audit-shipper' }),
      maxBatchEvents: config.audit.maxBatchEvents,
      maxBatchBytes: config.audit.maxBatchBytes,
      receiptTimeoutMs: config.audit.receiptTimeoutMs,
      catchupBytesPerSecond: config.audit.catchupBytesPerSecond,
    });
    controlLink = new ControlLink({
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
          const code = (err as { code?: string }).code;
          logger.warn({ code, err: describeError(err) }, 'command refused');
          audit.record({
            category: code === ErrorCodes.ENVELOPE_BAD_SIGNATURE || code === ErrorCodes.ENVELOPE_UNKNOWN_KEY ? 'access-control' : 'request-error',
            actor: 'unknown',
            action: 'link.command',
            target: deviceId,
            outcome: 'refused',
            ...(code !== undefined ? { code } : {}),
            details: { message: (err as Error).message },
          });
        });
      },
      handlers: new Map([
        [topics.auditReceipt(deviceId), (payload: Buffer) => void shipper.handleReceipt(payload)],
        [
          topics.policy(deviceId),
          (payload: Buffer) => {
            policyQueue = policyQueue.then(() => enforce.receive(payload)).catch((err) => logger.error({ err: describeError(err) }, 'policy handling failed'));
          },
        ],
      ]),
      onConnectionChange: (connected) => {
        shipper.setConnected(connected);
        watchController(connected);
      },
      log: logger.child({ area: 'control' }),
    });
    rpc = new RpcServer({ deviceId, key, verifier, publish: controlLink.publish, clock });
    shippers.set(controlLink, shipper);
    const link = controlLink;
    const attestation = new AgentAttestation({
      deviceId,
      key,
      sources: () =>
        measureSourcesFor({
          configFile: deps.configFile,
          config,
          stateDir: config.stateDir,
          plugins: config.plugins,
          pluginVersions: new Map(deps.plugins.map((p) => [p.manifest.name, p.manifest.version])),
          fleetRootFile: config.trust?.rootFile,
          controllerPublicKey,
        }),
      tpm,
      clock,
      log: logger.child({ area: 'attest' }),
      audit,
      claims: () => ({ bootId, wardVersion: WARD_VERSION, lifecycle: lifecycle.state }),
      publish: (t, p, o) => link.publish(t, p, o),
      // One verdict at a time (RPC handlers run concurrently): each is judged on the lifecycle the one before left.
      onVerdict: (v) => {
        const run = verdictQueue.then(() => handleVerdict(v));
        verdictQueue = run.catch(() => undefined);
        return run;
      },
    });
    const handleVerdict = async (v: VerdictParams) => {
      // Verdicts can cross on the wire (a re-sent one after a newer one): only a newer verdict counts.
      if (v.verifiedAt < lastVerdictAt) return lifecycle.state;
      lastVerdictAt = v.verifiedAt;
      // Out of quarantine only through an operator's approval at the controller, which ends in a passing verdict.
      if (v.state === 'active' && lifecycle.state === 'quarantined') await advance('reattest', 'controller: measurements approved');
      const event: LifecycleEvent =
        v.state === 'active'
          ? lifecycle.state === 'degraded'
            ? 'recovered'
            : 'attest-pass'
          : v.state === 'degraded'
            ? 'attest-stale'
            : v.state === 'quarantined'
              ? 'attest-fail'
              : 'reattest';
      await advance(event, `controller verdict ${v.state}${v.reasons.length > 0 ? `: ${v.reasons.join('; ')}` : ''}`);
      await followTrust('controller', `attestation verdict ${v.state}`);
      return lifecycle.state;
    };
    attestation.register(rpc);
    attestations.set(controlLink, attestation);
    if (telemetry) {
      const { service, buffer } = telemetry;
      publishers.set(
        controlLink,
        new SparkplugPublisher({
          group: config.telemetry.group,
          edgeNode: deviceId,
          primaryHostId: config.telemetry.primaryHostId,
          // Its own session: an MQTT connection has one Will, and the control link's is the signed offline state.
          mqtt: await sessionOptionsFor(mqtt, `ward-agent-${deviceId}:spb`),
          buffer,
          nodeMetrics: () => service.nodeMetrics(),
          deviceMetrics: () => service.deviceMetrics(),
          audit,
          clock,
          log: logger.child({ area: 'sparkplug' }),
          rebirthMinIntervalMs: config.telemetry.rebirthMinIntervalSeconds * 1000,
        }),
      );
    }
    rpc.register('ping', () => ({ pong: true, lifecycle: lifecycle.state, uptimeSeconds: Math.round(process.uptime()) }));
    // Through JSON first: the answer is signed as canonical JSON, which refuses `undefined` (a port without a
    // detected device, a plugin's optional field), where plain JSON simply leaves the key out.
    rpc.register('status', () =>
      jsonSafe({
        lifecycle: lifecycle.state,
        plugins: plugins.status(),
        protocol: link.protocol,
        board: { id: board.profile.id, model: board.model, ports: board.ports, tpm: board.tpm },
        audit: { journal: openedJournal.status(), shipper: shipper.status() },
        enforce: { version: enforce.enforcer.active?.version ?? null, tag: enforce.enforcer.active?.tag ?? null, learning: enforce.enforcer.learning ?? null },
        telemetry: publishers.get(link)?.status() ?? null,
      }),
    );
    return link;
  }

  const startPublisher = (l: ControlLink) => {
    const publisher = publishers.get(l);
    if (publisher === undefined || telemetry === undefined) return;
    telemetry.service.attach(publisher);
    publisher.start();
  };
  const stopPublisher = async (l: ControlLink) => {
    const publisher = publishers.get(l);
    if (publisher === undefined) return;
    telemetry?.service.detach(publisher);
    await publisher.stop();
  };

  const advance = async (event: LifecycleEvent, reason: string) => {
    if (!lifecycle.can(event)) return;
    const from = lifecycle.state;
    // Persisted before the state takes effect (CONVENTIONS.md #3).
    await lifecycleStore.save({ from, to: nextState(from, event), event, reason, at: clock.now() });
    lifecycle.apply(event, reason);
  };

  let watchdogTimer: NodeJS.Timeout | undefined;
  let renewTimer: NodeJS.Timeout | undefined;
  let started = false;
  let stopping = false;
  let provisioning: Promise<string> | undefined;

  // What enrollment and renewal share: the trust anchor, the keys, where the identity lives, and who hears about it.
  const enrollmentBase = {
    key,
    store: identityStore,
    clock,
    audit,
    log: logger.child({ area: 'enrollment' }),
    agentVersion: WARD_VERSION,
    timeoutMs: config.provisioning.timeoutMs,
  };

  const provisionContext = (): ProvisionContext => {
    if (root === undefined) {
      throw new WardError(
        ErrorCodes.FLEET_NOT_INITIALISED,
        'this gateway has no fleet root (trust.rootFile in its config), so it cannot check an enrollment code',
      );
    }
    return {
      ...enrollmentBase,
      root,
      transition: advance,
      expectSite: config.provisioning.site,
      expectLine: config.provisioning.line,
      deviceId: config.provisioning.deviceId,
    };
  };

  const switchIdentity = async (next: LoadedIdentity) => {
    identity = next;
    const previous = link;
    link = undefined;
    if (previous) await shippers.get(previous)?.stop();
    await previous?.stop();
    if (previous) attestations.get(previous)?.stop();
    if (previous) await stopPublisher(previous);
    link = await linkFor(next);
    if (started && !stopping) {
      void attestations.get(link)?.start();
      await link.start();
      startPublisher(link);
    }
  };

  const doProvision = async (input: string | Uint8Array, source: { claimed?: boolean } = {}): Promise<string> => {
    let ctx: ProvisionContext;
    try {
      if (staticIdentity || identity !== undefined) {
        throw new WardError(ErrorCodes.IDENTITY_ALREADY_PROVISIONED, `this gateway is already provisioned${identity ? ` as ${identity.deviceId}` : ''}`);
      }
      ctx = provisionContext();
    } catch (err) {
      audit.record({
        category: 'request-error',
        actor: 'scanner',
        action: 'provision.scan',
        outcome: 'refused',
        code: (err as WardError).code,
        details: { lifecycle: lifecycle.state, message: (err as Error).message },
      });
      throw err;
    }
    const { deviceId } = await provision({ ...ctx, claimed: source.claimed === true }, input);
    const loaded = await identityStore.load({ root: ctx.root, key, nowSec: nowSec() });
    if (loaded === undefined) throw new WardError(ErrorCodes.IDENTITY_CORRUPT, 'enrollment finished but no identity was stored');
    await switchIdentity(loaded);
    scheduleRenewal();
    logger.info({ deviceId, site: loaded.site, line: loaded.line, cell: loaded.cell }, 'gateway enrolled; connecting with mutual TLS');
    return deviceId;
  };

  // One renewal at a time: two would each save a generation and delete the other's.
  let renewing: Promise<void> | undefined;
  const renewNow = (): Promise<void> => {
    renewing ??= renewOnce().finally(() => {
      renewing = undefined;
    });
    return renewing;
  };
  const renewOnce = async () => {
    const current = identity;
    if (current === undefined || root === undefined) throw new WardError(ErrorCodes.IDENTITY_NOT_PROVISIONED, 'nothing to renew: the gateway is not enrolled');
    const loaded = await renewIdentity({ ...enrollmentBase, identity: current, root });
    await switchIdentity(loaded);
  };

  function scheduleRenewal(): void {
    clearInterval(renewTimer);
    const { renewAfterFraction, renewCheckSeconds } = config.provisioning;
    renewTimer = setInterval(() => {
      const current = identity;
      if (current === undefined) return;
      const due = current.certNotBefore + (current.certNotAfter - current.certNotBefore) * renewAfterFraction;
      if (nowSec() < due) return;
      if (nowSec() > current.certNotAfter) {
        // Renewal needs a working certificate: past expiry only a new enrollment code helps.
        logger.error(
          { certNotAfter: new Date(current.certNotAfter * 1000).toISOString() },
          'client certificate expired: the broker will refuse this gateway; re-enroll it with a new code (ward provision --reenroll)',
        );
        return;
      }
      // Failure is not fatal: the current certificate keeps working until it truly expires; the next tick retries.
      renewNow().catch((err) =>
        logger.warn(
          { err: describeError(err), certNotAfter: new Date(current.certNotAfter * 1000).toISOString() },
          'certificate renewal failed; will retry (the current certificate stays in use until it expires)',
        ),
      );
    }, renewCheckSeconds * 1000);
    renewTimer.unref();
  }

  let claimTimer: NodeJS.Timeout | undefined;
  /** Reverse flow: while unprovisioned, look for a bundle an operator confirmed for this gateway's claim. */
  const watchClaim = async (broker: string) => {
    const claim = await loadOrCreateClaim(config.stateDir, key, config.provisioning.deviceId ?? deriveDeviceId(key.publicRaw));
    logger.info({ deviceId: claim.deviceId, claimId: claim.claimId, broker }, 'claimable: show the claim QR (ward identity qr) to an operator');
    const poll = async () => {
      claimTimer = undefined;
      if (stopping || identity !== undefined) return;
      // A scan may be enrolling right now: look again later rather than give up.
      const text = provisioning ? undefined : await fetchClaimedBundle({ broker, claim, timeoutMs: 10_000 });
      if (text !== undefined && !stopping && identity === undefined && !provisioning) {
        logger.info({ claimId: claim.claimId }, 'a confirmed claim delivered an enrollment code');
        provisioning = doProvision(text, { claimed: true });
        await provisioning
          .catch((err) => logger.error({ code: (err as { code?: string }).code, err: describeError(err) }, 'the claimed enrollment code was refused'))
          .finally(() => {
            provisioning = undefined;
          });
      }
      if (!stopping && identity === undefined) claimTimer = setTimeout(() => void poll(), config.provisioning.claimPollSeconds * 1000);
    };
    await poll();
  };

  const consumeScans = async (scanner: ScanInput) => {
    for await (const scan of scanner.events()) {
      if (scan.kind === 'rejected') {
        audit.record({
          category: 'request-error',
          actor: 'scanner',
          action: 'provision.scan',
          outcome: 'refused',
          code: 'WARD_SCAN_REJECTED',
          details: { reason: scan.reason },
        });
        continue;
      }
      if (provisioning) {
        logger.warn({}, 'scan ignored: an enrollment is already in progress');
        continue;
      }
      provisioning = doProvision(scan.text);
      // Errors are already audited with their code; the log line tells the technician at the line what to do.
      await provisioning
        .catch((err) => logger.error({ code: (err as { code?: string }).code, err: describeError(err) }, 'enrollment code refused; scan a valid code'))
        .finally(() => {
          provisioning = undefined;
        });
    }
  };

  return {
    get deviceId() {
      return config.deviceId ?? identity?.deviceId;
    },
    key,
    lifecycle,
    board,
    get link() {
      return link;
    },
    get identity() {
      return identity;
    },
    journal: openedJournal,
    get shipper() {
      return link ? shippers.get(link) : undefined;
    },
    enforce,
    get attestation() {
      return link ? attestations.get(link) : undefined;
    },
    telemetry: telemetry?.service,
    get sparkplug() {
      return link ? publishers.get(link) : undefined;
    },
    provision: (input) => {
      if (provisioning) return Promise.reject(new WardError(ErrorCodes.ENROLL_REFUSED, 'an enrollment is already in progress'));
      provisioning = doProvision(input);
      return provisioning.finally(() => {
        provisioning = undefined;
      });
    },
    renewNow,
    async start() {
      if (started) throw new TypeError('agent started twice');
      started = true;
      showLed(lifecycle.state);
      if (staticIdentity) {
        // Static identity (lab and legacy setups): the controller key is pinned in config and the device key
        // pre-registered with the controller. The agent walks to 'attesting' and stays there until attestation exists.
        await advance('provision', 'static identity from config');
        await advance('enrolled', 'device key pre-registered with the controller');
      } else if (identity) {
        // Resume after a power cut between storing the identity and recording the transition (CONVENTIONS.md #3).
        await advance('enrolled', 'identity present at start');
        scheduleRenewal();
      } else if (lifecycle.state === 'enrolling') {
        await advance('enroll-failed', 'restarted during enrollment without an identity');
      } else if (lifecycle.state !== 'unprovisioned') {
        await advance('factory-reset', `no identity in ${identityStore.dir}`);
      }
      // First the local socket (answering "starting"), so that `ward enforce` run meanwhile does not act on the kernel
      // beside the agent.
      await local.start().catch((err) => logger.warn({ err: describeError(err) }, 'local control socket not available; ward enforce acts directly'));
      // Before the link: the kernel rules must be back in force before anything else happens after a reboot.
      await enforce.start();
      // The lifecycle is saved before the kernel follows it: after a crash in between, or a re-apply that failed,
      // the stored ruleset was compiled for another trust than the gateway is in.
      await followTrust('ward-agent', `lifecycle ${lifecycle.state} at start`);
      local.ready();
      await plugins.start();
      // The kernel may already redirect flows to protocol proxies (restored above); now they can listen.
      await enforce.enforcer
        .syncProxies()
        .catch((err) => logger.error({ err: describeError(err) }, 'protocol proxies could not take the routes of the policy in force'));
      // Not awaited: hashing a 100 MB binary takes seconds on a Pi (more under qemu); a challenge waits for it.
      if (link) void attestations.get(link)?.start();
      await link?.start();
      // After the plugins: their telemetry sources exist once they have started.
      if (telemetry) {
        telemetry.service.publishNode(lifecycleMetric());
        telemetry.service.start();
      }
      if (link) startPublisher(link);
      if (link === undefined) watchController(false);
      if (hw.scanner) void consumeScans(hw.scanner).catch((err) => logger.warn({ err: describeError(err) }, 'scanner input ended'));
      const claimBroker = config.provisioning.claimBroker;
      if (claimBroker !== undefined && root !== undefined && !staticIdentity && identity === undefined) {
        void watchClaim(claimBroker).catch((err) => logger.warn({ err: describeError(err) }, 'claim watch stopped'));
      }
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
      stopping = true;
      clearInterval(watchdogTimer);
      clearInterval(renewTimer);
      clearTimeout(claimTimer);
      clearTimeout(trustRetryTimer);
      await hw.watchdog.stopping().catch(() => undefined);
      // Not awaiting the scan loop: closing the input ends it, and a tty read must never hold up a stop.
      await hw.scanner?.close();
      if (link) await shippers.get(link)?.stop();
      if (link) attestations.get(link)?.stop();
      if (link) await stopPublisher(link);
      await telemetry?.service.stop();
      await link?.stop();
      clearTimeout(failsafeTimer);
      await local.stop();
      await enforce.stop();
      const failures = await plugins.stop();
      for (const f of failures) logger.warn(f, 'plugin failed to stop cleanly');
      await telemetry?.buffer.close().catch((err) => logger.warn({ err: describeError(err) }, 'telemetry buffer did not close cleanly'));
      audit.record({ category: 'control-system', actor: 'ward-agent', action: 'agent.stop', outcome: 'success', details: { lifecycle: lifecycle.state } });
      // Last: everything above may still record events; close() writes and seals them.
      await openedJournal.close().catch((err) => logger.error({ err: describeError(err) }, 'audit journal did not close cleanly'));
    },
  };
}

function jsonSafe<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

/** The attested trust state the enforcement follows: only an attested gateway is `active`. */
export function trustOf(state: LifecycleState): TrustLevel {
  return state === 'active' ? 'active' : state === 'quarantined' ? 'quarantined' : 'degraded';
}

function readBootIdSync(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** `attestation.tpm` → a TPM driver: `auto` uses the board's TPM when it has one. */
function tpmFor(setting: string, board: DetectedBoard, dir: string): AttestationTpm | undefined {
  if (setting === 'off') return undefined;
  if (setting === 'auto') return board.tpm.present && board.tpm.device ? new Tpm2ToolsTpm({ tcti: `device:${board.tpm.device}`, dir }) : undefined;
  return new Tpm2ToolsTpm({ tcti: setting, dir });
}
