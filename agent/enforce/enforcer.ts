import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createTwoFilesPatch } from 'diff';
import { z } from 'zod';
import type { ProtocolProxy, ProxyRoute } from '../../plugins/api/index.js';
import type { AuditSink } from '../core/audit.js';
import { type Clock, systemClock } from '../core/clock.js';
import { describeError, ErrorCodes, isWardError, WardError } from '../core/errors.js';
import type { Logger } from '../log.js';
import { checkPolicy, type Mode, parseService, type ValidatedPolicy, type ValidationContext } from '../shared/policy/model.js';
import { ensurePrivateDir, readJsonFile, writeFileAtomic } from '../state/files.js';
import { type Ruleset, renderRuleset } from './compile.js';
import type { Nft, WardTables } from './nft.js';
import { type Binding, buildPlan, connectionsToRevoke, evaluate, type Plan, proxyAssignment, zoneOfPort } from './plan.js';

/**
 * Puts a policy into the kernel and keeps it there (DESIGN.md §6).
 *
 * Apply = compile → lockout check → one `nft -f` transaction → read the
 * kernel back (table tag and rule count) → persist. A refused load changes
 * nothing; a failed read-back reloads the previous ruleset. The last two
 * applied rulesets are kept on disk (0600, in the state folder), so a
 * rollback needs neither the controller nor a compiler, and a reboot (which
 * empties the kernel's tables) is healed at agent start from the same file.
 * An agent restart finds its tag in the kernel and leaves the rules alone.
 */
export interface ManagementRequirement {
  /** Board port the management traffic arrives on. */
  readonly port: string;
  /** `tcp/22`. */
  readonly service: string;
  /** A management station's address; when absent, some source must be allowed. */
  readonly from?: string | undefined;
}

export interface EnforcerOptions {
  readonly nft: Nft;
  /** `<stateDir>/enforce`. */
  readonly dir: string;
  readonly binding: Binding;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly clock?: Clock;
  readonly management?: readonly ManagementRequirement[];
  /** What policies are checked against here (ports this gateway has, plugin operations). */
  readonly context?: ValidationContext;
  /** Forget established connections a new ruleset denies (default true; needs the conntrack tool). */
  readonly revokeEstablished?: boolean;
  /** Gateway ports the protocol proxies listen on (routed mode); flows with `ops` need it. */
  readonly proxyPorts?: { readonly from: number; readonly to: number };
  /** The started protocol plugins' proxies, by protocol key (asked at each change: plugins start after the enforcer opens). */
  readonly proxies?: () => Readonly<Record<string, ProtocolProxy>>;
  /** The gateway's attested trust state at start, when no active record says otherwise (flows may depend on it). */
  readonly trust?: TrustLevel;
}

export type TrustLevel = 'active' | 'degraded' | 'quarantined';

/** The plan's steered destinations as each protocol proxy's route table. */
export function proxyRoutes(plan: Plan | undefined, keep: (st: Plan['steered'][number]) => boolean = () => true): Map<string, ProxyRoute[]> {
  const out = new Map<string, ProxyRoute[]>();
  for (const st of plan?.steered ?? []) {
    if (!keep(st)) continue;
    const routes = out.get(st.protocol) ?? [];
    routes.push({
      listenPort: st.listenPort,
      target: st.target,
      zone: st.zoneName,
      grants: st.grants.map((g) => ({ flow: g.flow, sources: g.src.map((c) => c.text), ops: g.ops, mode: g.mode })),
    });
    out.set(st.protocol, routes);
  }
  return out;
}

const activeRecord = z.strictObject({
  version: z.number().int().nonnegative(),
  source: z.enum(['controller', 'operator']),
  actor: z.string(),
  policy: z.record(z.string(), z.unknown()),
  policyDigest: z.string(),
  tag: z.string(),
  rulesetDigest: z.string(),
  appliedAt: z.number().int(),
  forced: z.boolean(),
  /** The controller's signed envelope, as received (attestation measures it). */
  envelope: z.string().optional(),
  /** The nft script in force, and the fail-safe one (failMode safe): one file holds a record and its rulesets, so they cannot part. */
  script: z.string(),
  safeScript: z.string().optional(),
  /** Listen port of each proxied destination (SteerPlan.key → port): the next policy keeps them (plan.ts). */
  proxyPorts: z.record(z.string(), z.number().int()).optional(),
  /** The attested trust state the script was compiled for. */
  trust: z.enum(['active', 'degraded', 'quarantined']).optional(),
});
export type ActiveRecord = z.infer<typeof activeRecord>;

const learnRecord = z.strictObject({ since: z.number().int(), until: z.number().int() });
export type LearnRecord = z.infer<typeof learnRecord>;

export interface ApplyRequest {
  readonly validated: ValidatedPolicy;
  readonly version: number;
  readonly source: ActiveRecord['source'];
  /** Who asked: 'controller', or the operator's name at the line. */
  readonly actor: string;
  readonly envelope?: string;
  /** Apply even if the management uplink would be locked out. */
  readonly force?: boolean;
  /** Keep the previous ruleset as it is (a re-apply of the same policy, e.g. for learn mode, is not a new step to roll back). */
  readonly rotate?: boolean;
}

export interface ApplyResult {
  readonly version: number;
  readonly tag: string;
  readonly changedModes: readonly { zone: string; from: Mode | undefined; to: Mode }[];
  readonly warnings: readonly string[];
}

export interface FlowCounter {
  readonly rule: string;
  readonly chain: string;
  readonly packets: number;
  readonly bytes: number;
}

export interface EnforceStatus {
  readonly active: Omit<ActiveRecord, 'policy' | 'envelope' | 'script' | 'safeScript'> | undefined;
  /** Whether the kernel holds exactly the active ruleset. */
  readonly inKernel: 'yes' | 'no-table' | 'different';
  readonly kernelTag: string | undefined;
  readonly mode: Binding['mode'];
  readonly zones: readonly { name: string; kind: string; mode: Mode; ports: readonly string[]; interfaces: readonly string[] }[];
  readonly counters: readonly FlowCounter[];
  readonly learn: LearnRecord | undefined;
  readonly failsafe: boolean;
}

const FILES = {
  active: 'active.json',
  previous: 'previous.json',
  learn: 'learn.json',
  failsafe: 'failsafe.json',
} as const;

export class Enforcer {
  readonly #o: EnforcerOptions;
  readonly #clock: Clock;
  #active: ActiveRecord | undefined;
  #plan: Plan | undefined;
  #learn: LearnRecord | undefined;
  #failsafe = false;
  #trust: TrustLevel = 'active';
  /** Runs before a ruleset replaces the one in force (which empties its sets): the flow monitor reads them one last time. */
  beforeReplace: (() => Promise<void>) | undefined;
  /** One kernel change at a time: the controller, the CLI socket and the fail-safe timer may all ask at once. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(options: EnforcerOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  static async open(options: EnforcerOptions): Promise<Enforcer> {
    await ensurePrivateDir(options.dir);
    const e = new Enforcer(options);
    e.#active = await e.#readRecord(FILES.active);
    const learn = await readJsonFile(join(options.dir, FILES.learn));
    e.#learn = learn === undefined ? undefined : learnRecord.safeParse(learn).data;
    e.#failsafe = (await readJsonFile(join(options.dir, FILES.failsafe))) !== undefined;
    e.#trust = e.#active?.trust ?? options.trust ?? 'active';
    if (e.#active) e.#plan = e.#planFor(e.#activeValidated(), e.#active.version, { safe: e.#failsafe });
    return e;
  }

  get active(): ActiveRecord | undefined {
    return this.#active;
  }

  /** The plan in force (what the denied-flow reporter and learn harvest read). */
  get plan(): Plan | undefined {
    return this.#plan;
  }

  get binding(): Binding {
    return this.#o.binding;
  }

  get learning(): LearnRecord | undefined {
    return this.#learn && this.#learn.until > this.#clock.now() ? this.#learn : undefined;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => {});
    return next;
  }

  async #readRecord(file: string): Promise<ActiveRecord | undefined> {
    const raw = await readJsonFile(join(this.#o.dir, file));
    if (raw === undefined) return undefined;
    const parsed = activeRecord.safeParse(raw);
    if (!parsed.success) throw new WardError(ErrorCodes.STATE_CORRUPT, `${join(this.#o.dir, file)} is not a Ward enforcement record`);
    return parsed.data;
  }

  #activeValidated(): ValidatedPolicy {
    return checkPolicy((this.#active as ActiveRecord).policy, this.#o.context);
  }

  #planFor(
    validated: ValidatedPolicy,
    version: number,
    opts: { safe?: boolean; learn?: boolean; assigned?: Readonly<Record<string, number>> | undefined } = {},
  ): Plan {
    const assigned = opts.assigned ?? this.#active?.proxyPorts;
    return buildPlan(validated, {
      binding: this.#o.binding,
      version,
      safe: opts.safe ?? false,
      learn: opts.learn ?? this.learning !== undefined,
      trust: this.#trust,
      ...(this.#o.proxyPorts ? { proxyPorts: { ...this.#o.proxyPorts, ...(assigned ? { assigned } : {}) } } : {}),
    });
  }

  /** Compiles without touching the kernel (`ward enforce diff`, tests). */
  compile(validated: ValidatedPolicy, version: number, opts: { safe?: boolean; learn?: boolean } = {}): Ruleset {
    return renderRuleset(this.#planFor(validated, version, opts));
  }

  /** The management requirements the plan would break (empty = none). */
  lockouts(plan: Plan): string[] {
    const problems: string[] = [];
    for (const req of this.#o.management ?? []) {
      const svc = parseService(req.service);
      const zone = zoneOfPort(plan, req.port);
      const chain = zone ? plan.chains.find((c) => c.name === `in_${zone.index}`) : undefined;
      const mode = chain ? chain.mode : plan.unzonedMode;
      if (mode === 'observe') continue;
      let reachable: boolean;
      if (req.from !== undefined) {
        const d = evaluate(plan, {
          inPort: req.port,
          outPort: 'gateway',
          src: req.from,
          dst: '0.0.0.0',
          proto: svc.proto,
          ...(svc.proto === 'icmp' ? {} : { dport: svc.from }),
        });
        reachable = d.verdict === 'accept';
      } else {
        reachable =
          chain?.rules.some(
            (r) =>
              r.action === 'allow' && (svc.proto === 'icmp' ? r.services.icmp : r.services[svc.proto].some(([lo, hi]) => svc.from >= lo && svc.from <= hi)),
          ) ?? false;
      }
      if (!reachable) {
        problems.push(
          `${req.service} to the gateway on ${req.port}${req.from ? ` from ${req.from}` : ''} would be blocked (${zone ? `zone "${zone.name}" enforces` : 'the port is in no zone and the policy enforces'}, and no flow to "gateway" allows it)`,
        );
      }
    }
    return problems;
  }

  async apply(request: ApplyRequest): Promise<ApplyResult> {
    return this.#serial(() => this.#apply(request));
  }

  async #apply(request: ApplyRequest): Promise<ApplyResult> {
    const { validated, version } = request;
    const plan = this.#planFor(validated, version);
    const safePlan =
      validated.policy.failMode.kind === 'safe' ? this.#planFor(validated, version, { safe: true, learn: false, assigned: proxyAssignment(plan) }) : undefined;
    // The safe flows take over exactly when nobody can reach the gateway from afar, so they must not lock out the line either.
    const lockouts = [...this.lockouts(plan), ...(safePlan ? this.lockouts(safePlan).map((l) => `in fail-safe: ${l}`) : [])];
    const base = { version, policy: validated.policy.name, digest: validated.digest, source: request.source };
    if (lockouts.length > 0 && !request.force) {
      const err = new WardError(
        ErrorCodes.POLICY_LOCKOUT,
        `policy would lock out the management uplink: ${lockouts.join('; ')} (apply with force to override)`,
        {
          details: { lockouts },
        },
      );
      this.#record('enforce.policy-apply', 'refused', request.actor, { ...base, lockouts }, err.code);
      throw err;
    }
    const unproxied = this.#unproxied(plan, safePlan);
    if (unproxied.length > 0) {
      const err = new WardError(ErrorCodes.ENFORCE_NO_PROXY, `policy has flows this gateway cannot proxy: ${unproxied.join('; ')}`, {
        details: { flows: unproxied },
      });
      this.#record('enforce.policy-apply', 'refused', request.actor, { ...base, unproxied }, err.code);
      throw err;
    }
    const ruleset = renderRuleset(plan);
    const previousScript = this.#inForce();
    try {
      await this.#beforeReplace();
      await this.#prepareKernel();
      await this.#steer(plan, 'before');
      await this.#o.nft.load(ruleset.script);
    } catch (err) {
      await this.#steer(this.#plan, 'after').catch(() => undefined);
      this.#record('enforce.policy-apply', 'failure', request.actor, { ...base, error: describeError(err) }, codeOf(err));
      throw err;
    }
    try {
      await this.#verifyKernel(ruleset.script);
    } catch (err) {
      await this.#restoreAfterFailedCheck(previousScript, request.actor, base);
      await this.#steer(this.#plan, 'after').catch(() => undefined);
      this.#record(
        'enforce.policy-apply',
        'failure',
        request.actor,
        { ...base, error: describeError(err), restored: previousScript ? 'previous' : 'none' },
        codeOf(err),
      );
      throw err;
    }

    const before = this.#plan;
    const record: ActiveRecord = {
      version,
      source: request.source,
      actor: request.actor,
      policy: validated.policy as unknown as Record<string, unknown>,
      policyDigest: validated.digest,
      tag: ruleset.tag,
      rulesetDigest: ruleset.digest,
      appliedAt: this.#clock.now(),
      forced: lockouts.length > 0,
      ...(request.envelope !== undefined ? { envelope: request.envelope } : {}),
      script: ruleset.script,
      ...(safePlan ? { safeScript: renderRuleset(safePlan).script } : {}),
      ...(plan.steered.length > 0 ? { proxyPorts: proxyAssignment(plan) } : {}),
      ...(this.#trust !== 'active' ? { trust: this.#trust } : {}),
    };
    await this.#persist(record, request.rotate !== false);
    this.#plan = ruleset.plan;
    await this.#steer(plan, 'after').catch((err) => this.#o.log.warn({ err: describeError(err) }, 'protocol proxies could not retire old routes'));
    if (this.#failsafe) {
      this.#failsafe = false;
      await rm(join(this.#o.dir, FILES.failsafe), { force: true });
    }
    const changedModes = plan.zones
      .map((z) => ({ zone: z.name, from: before?.zones.find((b) => b.name === z.name)?.mode, to: z.mode }))
      .filter((c) => c.from !== c.to);
    for (const w of plan.warnings) this.#o.log.warn({ version }, w);
    this.#record(
      'enforce.policy-apply',
      'success',
      request.actor,
      { ...base, tag: ruleset.tag, forced: record.forced, ...(lockouts.length > 0 ? { lockouts } : {}), changedModes, warnings: plan.warnings },
      undefined,
    );
    for (const c of changedModes.filter((m) => m.from !== undefined)) {
      this.#o.audit.record({
        category: 'configuration-change',
        actor: request.actor,
        action: 'enforce.mode-change',
        target: c.zone,
        outcome: 'success',
        details: { zone: c.zone, from: c.from, to: c.to, version },
      });
    }
    this.#o.log.info({ version, policy: validated.policy.name, tag: ruleset.tag, forced: record.forced }, 'policy applied');
    await this.#revokeEstablished(plan, request.actor);
    return { version, tag: ruleset.tag, changedModes, warnings: plan.warnings };
  }

  /** Flows with `ops` the plan could not steer, or whose protocol has no running proxy here (empty: all served). */
  #unproxied(...plans: (Plan | undefined)[]): string[] {
    const out = new Set<string>();
    const proxies = this.#o.proxies?.() ?? {};
    for (const plan of plans) {
      for (const u of plan?.unsteered ?? []) out.add(`${u.flow}: ${u.reason}`);
      for (const st of plan?.steered ?? []) {
        if (!proxies[st.protocol]) for (const g of st.grants) out.add(`${g.flow}: the ${st.protocol} plugin is not enabled on this gateway`);
      }
    }
    return [...out];
  }

  /**
   * Gives each protocol proxy the routes of `next`, in two steps around the kernel change. `before`: new
   * listeners come up (a redirect to a port nobody listens on would reset the line's connections), and routes of
   * the plan in force stay up, since the kernel still redirects to them; a port that changes destination is
   * closed meanwhile, so no connection made under the old redirect is served against the new destination.
   * `after`: exactly `next`.
   */
  async #steer(next: Plan | undefined, phase: 'before' | 'after'): Promise<void> {
    const proxies = this.#o.proxies?.() ?? {};
    if (Object.keys(proxies).length === 0) return;
    let routes: Map<string, ProxyRoute[]>;
    if (phase === 'after') routes = proxyRoutes(next);
    else {
      const current = new Map((this.#plan?.steered ?? []).map((st) => [st.listenPort, st.key]));
      const upcoming = new Map((next?.steered ?? []).map((st) => [st.listenPort, st.key]));
      const stable = (port: number, key: string, other: Map<number, string>) => (other.get(port) ?? key) === key;
      routes = proxyRoutes(next, (st) => stable(st.listenPort, st.key, current));
      const old = proxyRoutes(this.#plan, (st) => !upcoming.has(st.listenPort));
      for (const [protocol, list] of old) routes.set(protocol, [...(routes.get(protocol) ?? []), ...list]);
    }
    for (const [protocol, proxy] of Object.entries(proxies)) await proxy.setRoutes(routes.get(protocol) ?? []);
  }

  /** The script the kernel should hold now. */
  #inForce(): string | undefined {
    return this.#failsafe ? (this.#active?.safeScript ?? this.#active?.script) : this.#active?.script;
  }

  /** The flow monitor reads the sets one last time; bounded, so a slow poll never holds up a policy. */
  async #beforeReplace(): Promise<void> {
    const hook = this.beforeReplace;
    if (!hook) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([hook().catch(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, 5_000)))]);
    clearTimeout(timer);
  }

  /**
   * The fast path keeps established connections whatever the new rules say: those the rules in force now deny
   * are forgotten, so their next packet is judged (and dropped) like a new one. Best effort: a failure is
   * reported, never undoes the apply.
   */
  async #revokeEstablished(plan: Plan | undefined, actor: string): Promise<void> {
    if ((!plan?.chains.some((c) => c.mode === 'enforce') && !plan?.steered.length) || this.#o.revokeEstablished === false) return;
    try {
      const [connections, local] = [await this.#o.nft.connections(), await this.#o.nft.localAddresses()];
      const revoke = connectionsToRevoke(plan, connections, local);
      let forgotten = 0;
      for (const c of revoke) if (await this.#o.nft.forget(c)) forgotten += 1;
      if (revoke.length === 0) return;
      this.#o.audit.record({
        category: 'access-control',
        actor,
        action: 'enforce.connections-revoked',
        target: 'conntrack',
        outcome: 'success',
        details: {
          count: forgotten,
          version: plan.version,
          examples: revoke.slice(0, 10).map((c) => `${c.src}:${c.sport} -> ${c.dst}:${c.dport}/${c.proto}`),
        },
      });
      this.#o.log.info({ count: forgotten }, 'established connections the policy no longer allows were revoked');
    } catch (err) {
      this.#o.log.warn({ err: describeError(err) }, 'could not revoke established connections the new policy denies');
      this.#record('enforce.connections-revoked', 'failure', actor, { error: describeError(err) }, codeOf(err));
    }
  }

  async #prepareKernel(): Promise<void> {
    if (this.#o.binding.mode !== 'bridge') return;
    // Without these, bridged IP traffic never reaches the inet hooks: the policy would silently not apply.
    for (const name of ['net.bridge.bridge-nf-call-iptables', 'net.bridge.bridge-nf-call-ip6tables']) {
      // The gateway image sets these at boot (the agent runs unprivileged and cannot write /proc/sys); set them only if not.
      if ((await this.#o.nft.sysctl(name).catch(() => undefined)) === '1') continue;
      await this.#o.nft.sysctl(name, '1');
      const value = await this.#o.nft.sysctl(name);
      if (value !== '1')
        throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `${name} is ${value} after setting it to 1: bridged traffic would bypass the policy`);
    }
  }

  /** Reads the kernel back: both tables carry the script's tag and hold exactly its rules. */
  async #verifyKernel(script: string): Promise<WardTables> {
    const tables = await this.#o.nft.tables();
    const problems = kernelMismatch(tables, script);
    if (problems.length > 0) {
      throw new WardError(ErrorCodes.ENFORCE_CHECK_FAILED, `the kernel does not hold the ruleset just loaded: ${problems.join('; ')}`, {
        details: { problems },
      });
    }
    return tables;
  }

  async #restoreAfterFailedCheck(previousScript: string | undefined, actor: string, base: Record<string, unknown>): Promise<void> {
    try {
      if (previousScript) await this.#o.nft.load(previousScript);
      else await this.#o.nft.deleteTables();
      this.#record('enforce.rollback', 'success', actor, { ...base, reason: 'post-apply check failed', to: this.#active?.version ?? null }, undefined);
    } catch (err) {
      this.#o.log.error({ err: describeError(err) }, 'could not restore the previous ruleset after a failed check');
      this.#record('enforce.rollback', 'failure', actor, { ...base, error: describeError(err) }, codeOf(err));
    }
  }

  /** Two atomic writes: a crash between them leaves previous == active, never a record without its ruleset. */
  async #persist(record: ActiveRecord, rotate: boolean): Promise<void> {
    if (rotate && this.#active) await writeFileAtomic(join(this.#o.dir, FILES.previous), `${JSON.stringify(this.#active)}\n`);
    await writeFileAtomic(join(this.#o.dir, FILES.active), `${JSON.stringify(record)}\n`);
    this.#active = record;
  }

  /** Back to the ruleset applied before the active one. */
  async rollback(actor: string): Promise<{ version: number }> {
    return this.#serial(async () => {
      const previous = await this.#readRecord(FILES.previous);
      const current = this.#active;
      if (!previous || !current) {
        const err = new WardError(ErrorCodes.ENFORCE_NO_PREVIOUS, 'there is no previous ruleset to roll back to');
        this.#record('enforce.rollback', 'refused', actor, {}, err.code);
        throw err;
      }
      const inForce = this.#inForce();
      // Compiled again for the trust the gateway is in now, not loaded as stored: the previous record was compiled for
      // the trust of its day, and a rollback on a quarantined gateway must not bring back the flows of an active one.
      const validated = checkPolicy(previous.policy, this.#o.context);
      const plan = this.#planFor(validated, previous.version, { assigned: previous.proxyPorts ?? {} });
      const ruleset = renderRuleset(plan);
      const safeScript =
        validated.policy.failMode.kind === 'safe'
          ? renderRuleset(this.#planFor(validated, previous.version, { safe: true, learn: false, assigned: proxyAssignment(plan) })).script
          : undefined;
      const { trust: _compiledFor, safeScript: _storedSafe, ...rest } = previous;
      const restored: ActiveRecord = {
        ...rest,
        script: ruleset.script,
        tag: ruleset.tag,
        rulesetDigest: ruleset.digest,
        ...(safeScript !== undefined ? { safeScript } : {}),
        ...(this.#trust !== 'active' ? { trust: this.#trust } : {}),
      };
      try {
        await this.#beforeReplace();
        await this.#prepareKernel();
        await this.#steer(plan, 'before');
        await this.#o.nft.load(restored.script);
        await this.#verifyKernel(restored.script);
      } catch (err) {
        if (inForce) await this.#o.nft.load(inForce).catch(() => undefined);
        await this.#steer(this.#plan, 'after').catch(() => undefined);
        this.#record('enforce.rollback', 'failure', actor, { from: current.version, to: previous.version, error: describeError(err) }, codeOf(err));
        throw err;
      }
      // The two swap places, so a second rollback undoes the first.
      await writeFileAtomic(join(this.#o.dir, FILES.previous), `${JSON.stringify(current)}\n`);
      await writeFileAtomic(join(this.#o.dir, FILES.active), `${JSON.stringify(restored)}\n`);
      this.#active = restored;
      this.#failsafe = false;
      await rm(join(this.#o.dir, FILES.failsafe), { force: true });
      this.#plan = ruleset.plan;
      await this.#steer(this.#plan, 'after').catch((err) => this.#o.log.warn({ err: describeError(err) }, 'protocol proxies could not retire old routes'));
      this.#record(
        'enforce.rollback',
        'success',
        actor,
        { from: current.version, to: previous.version, tag: restored.tag, ...(this.#trust !== 'active' ? { trust: this.#trust } : {}) },
        undefined,
      );
      await this.#revokeEstablished(this.#plan, actor);
      return { version: previous.version };
    });
  }

  /**
   * At agent start: the kernel keeps its rules across an agent restart (left
   * alone), loses them on reboot (re-applied from disk), and may have been
   * changed by hand (re-applied, and said so). "Kept" means the tag and
   * every rule are there, not only the tag.
   */
  async restore(): Promise<'none' | 'kept' | 'reapplied'> {
    return this.#serial(async () => {
      let script = this.#inForce();
      if (!this.#active || script === undefined) return 'none';
      // The state file is not trusted to hold what the policy compiles to: a ruleset edited on disk (`policy
      // accept` in a chain) would otherwise be loaded at every boot while the policy digest still attests fine.
      try {
        const compiled = renderRuleset(this.#plan ?? this.#planFor(this.#activeValidated(), this.#active.version, { safe: this.#failsafe })).script;
        if (compiled !== script) {
          this.#record(
            'enforce.stored-ruleset-mismatch',
            'failure',
            'ward-agent',
            { version: this.#active.version, file: FILES.active, reason: "edited on disk, or this gateway's ports changed" },
            ErrorCodes.ENFORCE_CHECK_FAILED,
          );
          this.#o.log.error({ version: this.#active.version }, 'the ruleset on disk is not what the active policy compiles to: loading the compiled one');
          script = compiled;
        }
      } catch (err) {
        this.#o.log.warn({ err: describeError(err) }, 'could not recompile the active policy to check the stored ruleset');
      }
      // The proxies start empty with the agent: they serve what the kernel redirects, kept or re-applied.
      // A proxy that cannot listen must not keep the rules out of the kernel: its flows then fail closed (refused).
      await this.#steer(this.#plan, 'after').catch((err) => {
        this.#o.log.error({ err: describeError(err) }, 'protocol proxies could not take the routes of the policy in force; their flows are refused');
        this.#record('enforce.proxy-routes', 'failure', 'ward-agent', { error: describeError(err) }, codeOf(err));
      });
      const tables = await this.#o.nft.tables();
      const problems = kernelMismatch(tables, script);
      if (problems.length === 0) return 'kept';
      await this.#prepareKernel();
      await this.#o.nft.load(script);
      await this.#verifyKernel(script);
      const reason = tables.inet === undefined ? 'the kernel had no Ward table (reboot)' : `the kernel held something else: ${problems.join('; ')}`;
      this.#record('enforce.restore', 'success', 'ward-agent', { version: this.#active.version, tag: tagOf(script), reason }, undefined);
      this.#o.log.warn({ version: this.#active.version, reason }, 'enforcement restored from disk');
      return 'reapplied';
    });
  }

  get trust(): TrustLevel {
    return this.#trust;
  }

  /**
   * The controller's attestation verdict changed the gateway's trust state: the active policy is compiled again
   * for it (flows whose `trust` excludes it drop out; quarantined with `safe` flows: only those). Not a new step
   * to roll back to.
   */
  async setTrust(level: TrustLevel, actor: string, reason: string): Promise<boolean> {
    // In the queue, like every kernel change: a verdict that lands while a policy is being applied must see the
    // policy it produced. Decided outside it, a verdict arriving during the first apply found no policy and changed
    // nothing, and that apply, compiled for the old trust, then went into the kernel recorded under the new one.
    return this.#serial(async () => {
      if (level === this.#trust) return false;
      const from = this.#trust;
      this.#trust = level;
      this.#o.audit.record({
        category: 'access-control',
        actor,
        action: 'enforce.trust-change',
        target: 'nftables',
        outcome: 'success',
        details: { from, to: level, reason, version: this.#active?.version ?? null },
      });
      const active = this.#active;
      if (!active) return true;
      const script = renderRuleset(this.#planFor(this.#activeValidated(), active.version)).script;
      if (!this.#failsafe && script === active.script) {
        // No flow depends on the new state: the kernel keeps its rules (and its counters), only the record follows.
        await this.#persist({ ...active, ...(level !== 'active' ? { trust: level } : { trust: undefined }) } as ActiveRecord, false);
        return true;
      }
      const wasFailsafe = this.#failsafe;
      try {
        await this.#apply(this.#reapplyRequest(active, actor, true));
      } catch (err) {
        // The kernel still holds the rules for `from`: say so, so the next verdict tries again.
        this.#trust = from;
        throw err;
      }
      // An apply leaves fail-safe; the line stays on its safe flows, now those of the new trust.
      if (wasFailsafe) await this.#enterFailsafe(`trust changed to ${level} while in fail-safe`, actor);
      return true;
    });
  }

  /** Hands the plan in force to the protocol proxies again (they start after the enforcer has restored the kernel). */
  async syncProxies(): Promise<void> {
    return this.#serial(() => this.#steer(this.#plan, 'after'));
  }

  /** Fail-safe (failMode safe): load the precompiled safe ruleset; `keep-last` keeps what is there. */
  async enterFailsafe(reason: string, actor = 'ward-agent'): Promise<boolean> {
    return this.#serial(() => this.#enterFailsafe(reason, actor));
  }

  /** Whether the safe flows are in force (fail-safe entered and not left). */
  get failsafe(): boolean {
    return this.#failsafe;
  }

  async #enterFailsafe(reason: string, actor: string): Promise<boolean> {
    const active = this.#active;
    if (!active?.safeScript || this.#failsafe) return false;
    await this.#beforeReplace();
    await this.#prepareKernel();
    const safePlan = this.#planFor(this.#activeValidated(), active.version, { safe: true, learn: false });
    await this.#steer(safePlan, 'before');
    await this.#o.nft.load(active.safeScript);
    await this.#verifyKernel(active.safeScript);
    this.#failsafe = true;
    await writeFileAtomic(join(this.#o.dir, FILES.failsafe), `${JSON.stringify({ since: this.#clock.now(), reason })}\n`);
    this.#plan = safePlan;
    await this.#steer(safePlan, 'after').catch(() => undefined);
    this.#record('enforce.failsafe', 'success', actor, { version: active.version, reason, entered: true }, undefined);
    await this.#revokeEstablished(this.#plan, actor);
    return true;
  }

  async leaveFailsafe(reason: string): Promise<boolean> {
    return this.#serial(async () => {
      const active = this.#active;
      if (!this.#failsafe || !active) return false;
      await this.#beforeReplace();
      const fullPlan = this.#planFor(this.#activeValidated(), active.version);
      await this.#steer(fullPlan, 'before');
      await this.#o.nft.load(active.script);
      await this.#verifyKernel(active.script);
      this.#failsafe = false;
      await rm(join(this.#o.dir, FILES.failsafe), { force: true });
      this.#plan = fullPlan;
      await this.#steer(fullPlan, 'after').catch(() => undefined);
      this.#record('enforce.failsafe', 'success', 'ward-agent', { version: active.version, reason, entered: false }, undefined);
      return true;
    });
  }

  /** The active policy compiled again for the current learn and trust settings: not a new step to roll back to. */
  #reapplyRequest(active: ActiveRecord, actor: string, force: boolean): ApplyRequest {
    return {
      validated: this.#activeValidated(),
      version: active.version,
      source: active.source,
      actor,
      ...(active.envelope !== undefined ? { envelope: active.envelope } : {}),
      force,
      rotate: false,
    };
  }

  /** Learn mode: re-applies the active policy with per-chain sets recording every new connection until `until`. */
  async setLearning(untilMs: number | undefined, actor: string): Promise<LearnRecord | undefined> {
    if (!this.#active)
      throw new WardError(
        ErrorCodes.ENFORCE_NO_POLICY,
        'learn mode needs an active policy that names the zones (observe mode with no flows is the usual start)',
      );
    const file = join(this.#o.dir, FILES.learn);
    if (untilMs === undefined) {
      this.#learn = undefined;
      await rm(file, { force: true });
    } else {
      this.#learn = { since: this.#clock.now(), until: untilMs };
      await writeFileAtomic(file, `${JSON.stringify(this.#learn)}\n`);
    }
    await this.#serial(() => {
      const active = this.#active as ActiveRecord;
      return this.#apply(this.#reapplyRequest(active, actor, active.forced));
    });
    this.#record('enforce.learn', 'success', actor, { until: untilMs ?? null, since: this.#learn?.since ?? null }, undefined);
    return this.#learn;
  }

  async status(): Promise<EnforceStatus> {
    const tables = await this.#o.nft.tables().catch((err) => {
      if (isWardError(err, ErrorCodes.ENFORCE_NFT_MISSING)) throw err;
      return undefined;
    });
    const script = this.#inForce();
    const kernelTag = tables?.inet?.comment;
    const { policy: _p, envelope: _e, script: _s, safeScript: _ss, ...active } = this.#active ?? ({} as ActiveRecord);
    return {
      active: this.#active ? active : undefined,
      inKernel: kernelTag === undefined ? 'no-table' : tables && script && kernelMismatch(tables, script).length === 0 ? 'yes' : 'different',
      kernelTag,
      mode: this.#o.binding.mode,
      zones: (this.#plan?.zones ?? []).map((z) => ({ name: z.name, kind: z.kind, mode: z.mode, ports: z.ports, interfaces: z.interfaces })),
      counters: (tables?.rules ?? [])
        .filter((r) => r.family === 'inet' && !r.comment.startsWith('ward:fastpath'))
        .map((r) => ({ rule: r.comment.replace(/^ward:/, ''), chain: r.chain, packets: r.packets, bytes: r.bytes })),
      learn: this.learning,
      failsafe: this.#failsafe,
    };
  }

  /** Unified diff from the ruleset in force to the one `candidate` compiles to; without one, what the last change did. */
  async diff(candidate?: { validated: ValidatedPolicy; version: number }): Promise<string> {
    const current = this.#inForce() ?? '';
    if (!candidate) {
      const prev = await this.#readRecord(FILES.previous);
      const previous = prev?.script ?? '';
      return createTwoFilesPatch(`previous v${prev?.version ?? '-'}`, `active v${this.#active?.version ?? '-'}`, previous, current, undefined, undefined, {
        context: 2,
      });
    }
    const next = this.compile(candidate.validated, candidate.version).script;
    return createTwoFilesPatch(`active v${this.#active?.version ?? '-'}`, `candidate v${candidate.version}`, current, next, undefined, undefined, {
      context: 2,
    });
  }

  #record(action: string, outcome: 'success' | 'failure' | 'refused', actor: string, details: Record<string, unknown>, code: string | undefined): void {
    this.#o.audit.record({
      category: 'configuration-change',
      actor,
      action,
      target: 'nftables',
      outcome,
      ...(code !== undefined ? { code } : {}),
      details,
    });
  }
}

function codeOf(err: unknown): string | undefined {
  return err instanceof WardError ? err.code : undefined;
}

/** The table tag a script writes (its `comment "ward policy=…"` line). */
export function tagOf(script: string): string | undefined {
  return /\n\tcomment "(ward policy=[^"]*)"/.exec(script)?.[1];
}

/** Rules a script puts in the kernel under Ward comments (the read-back compares counts). */
export function ruleCount(script: string): number {
  return script.match(/ comment "ward:/g)?.length ?? 0;
}

/** What differs between the kernel's Ward tables and a script (empty: the kernel holds exactly it). */
export function kernelMismatch(tables: WardTables, script: string): string[] {
  const tag = tagOf(script);
  const problems: string[] = [];
  if (tables.inet?.comment !== tag) problems.push(`inet table tag is ${JSON.stringify(tables.inet?.comment)}, expected ${JSON.stringify(tag)}`);
  const bridge = script.includes('\ntable bridge ward {');
  if (bridge && tables.bridge?.comment !== tag) problems.push(`bridge table tag is ${JSON.stringify(tables.bridge?.comment)}`);
  if (!bridge && tables.bridge !== undefined) problems.push('a bridge table is present in routed mode');
  const expected = ruleCount(script);
  if (tables.rules.length !== expected) problems.push(`kernel holds ${tables.rules.length} Ward rules, the ruleset has ${expected}`);
  return problems;
}
