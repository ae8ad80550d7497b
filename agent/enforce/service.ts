import { join } from 'node:path';
import type { DetectedBoard } from '../../hardware/api/index.js';
import type { ProtocolProxy } from '../../plugins/api/index.js';
import type { AuditSink } from '../core/audit.js';
import { type Clock, systemClock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import type { Logger } from '../log.js';
import { EnvelopeVerifier, MemoryReplayCache } from '../shared/envelope.js';
import { keyIdOf, publicKeyFromRaw } from '../shared/keys.js';
import { POLICY_MAX_BYTES, POLICY_MAX_LIFETIME_SECONDS, POLICY_TYPE, type PolicyPayload, policyPayload } from '../shared/policy/message.js';
import { checkPolicy, parsePolicyText, type ValidationContext } from '../shared/policy/model.js';
import { CONTROLLER_PRINCIPAL } from '../shared/rpc.js';
import { readJsonFile, writeFileAtomic } from '../state/files.js';
import { type ApplyResult, Enforcer, type EnforceStatus, type ManagementRequirement, type TrustLevel } from './enforcer.js';
import { FlowMonitor } from './flows.js';
import { Nft } from './nft.js';
import type { Binding } from './plan.js';
import { proposePolicy } from './propose.js';

/**
 * Enforcement as the rest of the agent sees it: the signed policy from the
 * controller, the operator's actions at the line (CLI, through the agent's
 * local socket or directly when no agent runs), and the flow monitor.
 */
export interface EnforceConfig {
  readonly mode: Binding['mode'];
  readonly bridge: string;
  readonly interfaces: Readonly<Record<string, string>>;
  readonly netns?: string | undefined;
  readonly nft: string;
  readonly management: readonly ManagementRequirement[];
  readonly pollSeconds: number;
  readonly reportEverySeconds: number;
  readonly maxEventsPerReport: number;
  readonly proxyPorts?: { readonly from: number; readonly to: number };
}

export interface EnforceServiceOptions {
  readonly config: EnforceConfig;
  readonly stateDir: string;
  readonly board: DetectedBoard;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly clock?: Clock;
  readonly context?: ValidationContext;
  /** The started protocol plugins' proxies (flows with `ops` are steered to them). */
  readonly proxies?: () => Readonly<Record<string, ProtocolProxy>>;
  /** The gateway's attested trust state at start (flows may depend on it). */
  readonly trust?: TrustLevel;
}

const IFNAME = /^[A-Za-z0-9_.:@-]{1,15}$/;

/** Board ports (detected) with config overrides; names checked so they can be quoted into nft text safely. */
export function bindingFor(config: EnforceConfig, board: DetectedBoard): Binding {
  const interfaces: Record<string, string> = {};
  for (const p of board.ports) if (p.kind === 'ethernet' && p.device !== undefined) interfaces[p.name] = p.device;
  Object.assign(interfaces, config.interfaces);
  for (const [port, name] of Object.entries(interfaces)) {
    if (!IFNAME.test(name))
      throw new WardError(ErrorCodes.CONFIG_INVALID, `enforce: interface name ${JSON.stringify(name)} for ${port} is not a Linux interface name`);
  }
  return { mode: config.mode, interfaces, ...(config.mode === 'bridge' ? { bridge: config.bridge } : {}) };
}

export class EnforceService {
  readonly enforcer: Enforcer;
  readonly monitor: FlowMonitor;
  readonly nft: Nft;
  readonly #o: EnforceServiceOptions;
  readonly #clock: Clock;
  readonly #dir: string;
  #verifier: EnvelopeVerifier | undefined;
  #deviceId: string | undefined;

  private constructor(o: EnforceServiceOptions, nft: Nft, enforcer: Enforcer) {
    this.#o = o;
    this.#clock = o.clock ?? systemClock;
    this.#dir = join(o.stateDir, 'enforce');
    this.nft = nft;
    this.enforcer = enforcer;
    this.monitor = new FlowMonitor({
      enforcer,
      nft,
      audit: o.audit,
      log: o.log,
      clock: this.#clock,
      dir: this.#dir,
      pollMs: o.config.pollSeconds * 1000,
      reportEveryMs: o.config.reportEverySeconds * 1000,
      maxEventsPerReport: o.config.maxEventsPerReport,
    });
    enforcer.beforeReplace = () => this.monitor.tick();
  }

  static async open(o: EnforceServiceOptions): Promise<EnforceService> {
    const nft = new Nft({ prefix: o.config.netns ? ['ip', 'netns', 'exec', o.config.netns] : [], nft: o.config.nft });
    const binding = bindingFor(o.config, o.board);
    const context: ValidationContext = { ports: Object.keys(binding.interfaces), ...(o.context ?? {}) };
    const enforcer = await Enforcer.open({
      nft,
      dir: join(o.stateDir, 'enforce'),
      binding,
      audit: o.audit,
      log: o.log,
      ...(o.clock ? { clock: o.clock } : {}),
      management: o.config.management,
      context,
      ...(o.config.proxyPorts ? { proxyPorts: o.config.proxyPorts } : {}),
      ...(o.proxies ? { proxies: o.proxies } : {}),
      ...(o.trust ? { trust: o.trust } : {}),
    });
    return new EnforceService({ ...o, context }, nft, enforcer);
  }

  /** At agent start: heal the kernel from disk, start reporting. Never throws: a gateway without nft still runs its other jobs. */
  async start(): Promise<void> {
    try {
      const outcome = await this.enforcer.restore();
      if (outcome !== 'none') this.#o.log.info({ outcome, version: this.enforcer.active?.version }, 'enforcement in force');
    } catch (err) {
      this.#o.log.error({ err: describeError(err) }, 'could not restore the enforcement ruleset at start');
      this.#o.audit.record({
        category: 'configuration-change',
        actor: 'ward-agent',
        action: 'enforce.restore',
        target: 'nftables',
        outcome: 'failure',
        ...(err instanceof WardError ? { code: err.code } : {}),
        details: { error: describeError(err) },
      });
    }
    this.monitor.start();
  }

  async stop(): Promise<void> {
    clearTimeout(this.#retryTimer);
    await this.monitor.stop();
  }

  /** Trust for signed policies: the controller key this gateway enrolled with. */
  setController(deviceId: string, controllerPublicKey: string): void {
    const kid = keyIdOf(controllerPublicKey);
    const publicKey = publicKeyFromRaw(controllerPublicKey);
    this.#deviceId = deviceId;
    this.#verifier = new EnvelopeVerifier({
      keys: (k) => (k === kid ? { publicKey, principal: CONTROLLER_PRINCIPAL } : undefined),
      clock: this.#clock,
      replay: new MemoryReplayCache(),
      // Versions are checked against the persisted accepted version below: a retained redelivery of the same one is normal.
      versions: { last: () => undefined, accept: () => {} },
      maxBytes: POLICY_MAX_BYTES,
      maxLifetimeSeconds: POLICY_MAX_LIFETIME_SECONDS,
    });
  }

  /**
   * A message on the retained policy topic. The same version again (a
   * retained redelivery on every reconnect) is a no-op; an older one is a
   * rollback and refused; anything unsigned, forged, for another device or
   * invalid is refused with an audit event, and the policy in force stays.
   */
  receive(raw: Buffer): Promise<'applied' | 'unchanged' | 'refused'> {
    // One document at a time, whether it comes from the subscription or from a retry: both read the version floor
    // and then apply, so two in flight could put the older one in the kernel last.
    const run = this.#receiveQueue.then(() => this.#receive(raw, false));
    this.#receiveQueue = run.catch(() => undefined);
    return run;
  }

  #receiveQueue: Promise<unknown> = Promise.resolve();

  async #receive(raw: Buffer, retry: boolean): Promise<'applied' | 'unchanged' | 'refused'> {
    const refuse = (code: string | undefined, message: string, category: 'access-control' | 'request-error', details: Record<string, unknown> = {}) => {
      this.#o.log.warn({ code, message }, 'policy refused');
      this.#o.audit.record({
        category,
        actor: category === 'access-control' ? 'unknown' : 'controller',
        action: 'enforce.policy-receive',
        target: this.#deviceId ?? 'unprovisioned',
        outcome: 'refused',
        ...(code !== undefined ? { code } : {}),
        details: { message, ...details },
      });
      return 'refused' as const;
    };
    if (!this.#verifier || !this.#deviceId) return refuse(ErrorCodes.ENFORCE_NO_POLICY, 'no controller key to check a policy against', 'request-error');
    let payload: PolicyPayload;
    try {
      const verified = this.#verifier.verify(raw, { typ: POLICY_TYPE, principal: CONTROLLER_PRINCIPAL, subject: this.#deviceId, stream: 'policy' });
      payload = policyPayload.parse(verified.payload);
    } catch (err) {
      const code = err instanceof WardError ? err.code : ErrorCodes.ENVELOPE_MALFORMED;
      const forged = code === ErrorCodes.ENVELOPE_BAD_SIGNATURE || code === ErrorCodes.ENVELOPE_UNKNOWN_KEY || code === ErrorCodes.ENVELOPE_WRONG_SUBJECT;
      return refuse(code, describeError(err), forged ? 'access-control' : 'request-error');
    }
    const accepted = await this.acceptedVersion();
    // A pending retry of an older or the same document is moot once this one is here.
    if (!retry && this.#retryVersion !== undefined && this.#retryVersion <= payload.version) this.#cancelRetry();
    // A retry overtaken by a newer document is dropped quietly: it is not a rollback attempt.
    if (retry && accepted !== undefined && payload.version <= accepted) return 'unchanged';
    if (accepted !== undefined && payload.version === accepted) return 'unchanged';
    if (accepted !== undefined && payload.version < accepted) {
      return refuse(ErrorCodes.ENVELOPE_ROLLBACK, `policy version ${payload.version} is older than the accepted version ${accepted}`, 'access-control', {
        version: payload.version,
        accepted,
      });
    }
    let validated: ReturnType<typeof checkPolicy>;
    try {
      validated = checkPolicy(payload.policy, this.#o.context);
    } catch (err) {
      return refuse((err as WardError).code, describeError(err), 'request-error', { version: payload.version, problems: (err as WardError).details?.problems });
    }
    try {
      await this.enforcer.apply({ validated, version: payload.version, source: 'controller', actor: 'controller', envelope: raw.toString('utf8') });
    } catch (err) {
      // Audited by the enforcer (refused lockout, failed load or check); the previous rules stay in force.
      this.#o.log.error({ err: describeError(err), version: payload.version }, 'policy not applied');
      if (err instanceof WardError && err.retryable) {
        // A passing failure (a busy or missing tool): try this same document again later, do not write it off.
        this.#retryLater(raw, payload.version);
        return 'refused';
      }
      // A refusal that would repeat (a lockout, a ruleset the kernel refuses) is still the controller's latest
      // word: remember it, so its retained copy is not re-applied on every reconnect.
      await this.#saveAccepted(payload.version);
      return 'refused';
    }
    await this.#saveAccepted(payload.version);
    return 'applied';
  }

  #retryTimer: NodeJS.Timeout | undefined;
  #retryVersion: number | undefined;
  #retries = 0;

  #retryLater(raw: Buffer, version: number): void {
    clearTimeout(this.#retryTimer);
    this.#retryVersion = undefined;
    if (this.#retries >= 10) return;
    const delay = Math.min(60_000 * 2 ** this.#retries, 3_600_000);
    this.#retries += 1;
    this.#retryVersion = version;
    this.#retryTimer = setTimeout(() => {
      this.#retryVersion = undefined;
      const run = this.#receiveQueue.then(() => this.#receive(raw, true));
      this.#receiveQueue = run.catch(() => undefined);
      void run.then((r) => {
        if (r !== 'refused') this.#retries = 0;
      });
    }, delay);
    this.#retryTimer.unref();
  }

  #cancelRetry(): void {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#retryVersion = undefined;
    this.#retries = 0;
  }

  /**
   * The version floor for the controller's documents: the last one accepted, and never below the version in
   * force from the controller (so losing or damaging controller.json cannot open the door to older documents).
   */
  async acceptedVersion(): Promise<number | undefined> {
    const raw = (await readJsonFile(join(this.#dir, 'controller.json')).catch(() => undefined)) as { version?: unknown } | undefined;
    const active = this.enforcer.active;
    const fromActive = active?.source === 'controller' ? active.version : undefined;
    const saved = typeof raw?.version === 'number' ? raw.version : undefined;
    if (saved === undefined) return fromActive;
    return fromActive === undefined ? saved : Math.max(saved, fromActive);
  }

  async #saveAccepted(version: number): Promise<void> {
    await writeFileAtomic(join(this.#dir, 'controller.json'), `${JSON.stringify({ version, at: this.#clock.now() })}\n`);
  }

  // Operator actions (CLI). Each is audited with the operator as actor.

  async status(): Promise<EnforceStatus> {
    return this.enforcer.status();
  }

  async applyText(text: string, actor: string, force = false): Promise<ApplyResult> {
    let validated: ReturnType<typeof parsePolicyText>;
    try {
      validated = parsePolicyText(text, this.#o.context);
    } catch (err) {
      this.#o.audit.record({
        category: 'request-error',
        actor,
        action: 'enforce.policy-apply',
        target: 'nftables',
        outcome: 'refused',
        code: (err as WardError).code,
        details: { message: describeError(err), source: 'operator' },
      });
      throw err;
    }
    // A local policy keeps the controller's version number: the controller's next version still wins.
    return this.enforcer.apply({ validated, version: this.enforcer.active?.version ?? 0, source: 'operator', actor, force });
  }

  async diffText(text: string | undefined): Promise<string> {
    if (text === undefined) return this.enforcer.diff();
    return this.enforcer.diff({ validated: parsePolicyText(text, this.#o.context), version: this.enforcer.active?.version ?? 0 });
  }

  async learn(forMs: number | undefined, actor: string) {
    if (forMs !== undefined) await this.monitor.resetLearned();
    return this.enforcer.setLearning(forMs === undefined ? undefined : this.#clock.now() + forMs, actor);
  }

  async propose(): Promise<ReturnType<typeof proposePolicy>> {
    const plan = this.enforcer.plan;
    const active = this.enforcer.active;
    if (!plan || !active)
      throw new WardError(ErrorCodes.ENFORCE_NO_POLICY, 'no active policy: apply one (zones and assets, observe mode) and run learn mode first');
    await this.monitor.tick();
    return proposePolicy(checkPolicy(active.policy, this.#o.context).policy, plan, await this.monitor.learned(), this.#clock.now());
  }
}
