import { join } from 'node:path';
import type { AuditSink } from '../core/audit.js';
import { type Clock, systemClock } from '../core/clock.js';
import { describeError } from '../core/errors.js';
import type { Logger } from '../log.js';
import { readJsonFile, writeFileAtomic } from '../state/files.js';
import type { Enforcer } from './enforcer.js';
import type { Nft, SetElement } from './nft.js';
import { type ChainPlan, judge, type Plan, type Probe } from './plan.js';

/**
 * Turns the kernel's per-chain dynamic sets into audit events and learn
 * observations. Why sets rather than nflog/ulogd or conntrack events: the
 * kernel already aggregates there (one element per source, destination,
 * protocol and port, with a packet counter and a refreshed timeout), so a
 * scan of 10,000 packets costs one element, nothing extra runs on the
 * gateway, and Node needs no netlink socket. The price is resolution: a
 * denied connection is seen at the next poll (10 s by default), its first
 * sighting is known to within that interval, its last from the timeout.
 *
 * Events are aggregated per (chain, source, destination, protocol, port):
 * at most one per key per `reportEveryMs`, carrying the count since the last
 * one, and at most `maxEventsPerReport` per report, the rest folded into one
 * summary event, so a SCADA poller hammering a closed port cannot flood the
 * journal.
 */
export interface FlowObservation {
  readonly chain: string;
  readonly src: string;
  readonly dst: string;
  readonly proto: string;
  readonly dport: number | undefined;
}

export interface DeniedAggregate extends FlowObservation {
  count: number;
  firstSeen: number;
  lastSeen: number;
}

export interface FlowMonitorOptions {
  readonly enforcer: Enforcer;
  readonly nft: Nft;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly clock?: Clock;
  /** `<stateDir>/enforce`, where learned flows accumulate. */
  readonly dir: string;
  readonly pollMs?: number;
  readonly reportEveryMs?: number;
  readonly maxEventsPerReport?: number;
}

const DENIED_TIMEOUT_S = 3600;

export interface Learned {
  readonly since: number;
  readonly flows: Record<string, { packets: number; first: number; last: number }>;
}

export class FlowMonitor {
  readonly #o: FlowMonitorOptions;
  readonly #clock: Clock;
  /** Packets last seen per set element, to report deltas. */
  readonly #seen = new Map<string, number>();
  #seenPlan: Plan | undefined;
  readonly #pending = new Map<string, DeniedAggregate>();
  readonly #lastReport = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #learnedDirty = false;
  #learned: Learned | undefined;
  /** Denied packets per chain that the kernel could not record in its (full) set. */
  readonly #unitemized = new Map<string, number>();

  constructor(options: FlowMonitorOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.tick(), this.#o.pollMs ?? 10_000);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#polling;
    await this.tick({ flush: true });
  }

  /**
   * One poll and report; also what runs right before the ruleset is replaced (which empties the sets). A tick
   * asked for while one runs shares it: ticks never queue up behind a slow kernel listing.
   */
  tick(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.#polling) return this.#polling;
    const run = async () => {
      try {
        await this.poll();
        this.report(opts.flush === true);
        await this.#saveLearned();
      } catch (err) {
        this.#o.log.warn({ err: describeError(err) }, 'flow monitor poll failed');
      }
    };
    this.#polling = run().finally(() => {
      this.#polling = undefined;
    });
    return this.#polling;
  }

  /** Reads every set and counter of the ruleset in one kernel listing. */
  async poll(): Promise<void> {
    const plan = this.#o.enforcer.plan;
    if (!plan) return;
    // A new plan means a new table: its sets and counters started from zero, so old counts mean nothing.
    if (plan !== this.#seenPlan) {
      this.#seen.clear();
      this.#seenPlan = plan;
    }
    const now = this.#clock.now();
    const { sets, rules } = await this.#o.nft.snapshot();
    for (const chain of plan.chains) {
      for (const el of sets.get(`d_${chain.name}`) ?? []) this.#denied(chain, `d_${chain.name}`, el, true, now);
      for (const el of sets.get(`o_${chain.name}`) ?? []) this.#denied(chain, `o_${chain.name}`, el, false, now);
      if (plan.learn) for (const el of sets.get(`l_${chain.name}`) ?? []) await this.#observe(chain, el, now);
    }
    // Denied packets the full sets could not itemize: counted per chain, reported as such.
    for (const r of rules) {
      if (!r.comment.startsWith('ward:overflow:')) continue;
      const delta = this.#delta(`overflow|${r.chain}|${r.handle}`, { key: [], packets: r.packets, bytes: r.bytes, expires: undefined });
      if (delta > 0) this.#unitemized.set(r.chain, (this.#unitemized.get(r.chain) ?? 0) + delta);
    }
  }

  /** Learn mode starts afresh: what an earlier learning period saw is not this one's evidence. */
  async resetLearned(): Promise<void> {
    this.#learned = { since: this.#clock.now(), flows: {} };
    this.#learnedDirty = true;
    await this.#saveLearned();
  }

  #delta(set: string, el: SetElement): number {
    const id = `${set}|${el.key.join('|')}`;
    const before = this.#seen.get(id);
    this.#seen.set(id, el.packets);
    // A smaller count means the element expired or the table was replaced, and this is a new element.
    return before === undefined || el.packets < before ? el.packets : el.packets - before;
  }

  #denied(chain: ChainPlan, set: string, el: SetElement, hasPort: boolean, now: number): void {
    const delta = this.#delta(set, el);
    if (delta === 0) return;
    const [src, dst, proto, dport] = el.key;
    const obs: FlowObservation = { chain: chain.name, src: String(src), dst: String(dst), proto: String(proto), dport: hasPort ? Number(dport) : undefined };
    const lastSeen = el.expires === undefined ? now : now - Math.max(0, DENIED_TIMEOUT_S - el.expires) * 1000;
    const key = flowKey(obs);
    const agg = this.#pending.get(key);
    if (agg) {
      agg.count += delta;
      agg.lastSeen = Math.max(agg.lastSeen, lastSeen);
    } else {
      this.#pending.set(key, { ...obs, count: delta, firstSeen: Math.min(lastSeen, now), lastSeen });
    }
  }

  async #observe(chain: ChainPlan, el: SetElement, now: number): Promise<void> {
    const delta = this.#delta(`l_${chain.name}`, el);
    if (delta === 0) return;
    const learned = await this.learned();
    const [src, dst, proto, dport] = el.key;
    // Keyed by zone names, not chain names: chain numbers change when a zone is added.
    const key = flowKey({ chain: `${chain.from}>${chain.to}`, src: String(src), dst: String(dst), proto: String(proto), dport: Number(dport) });
    const cur = learned.flows[key];
    learned.flows[key] = cur ? { packets: cur.packets + delta, first: cur.first, last: now } : { packets: delta, first: now, last: now };
    this.#learnedDirty = true;
  }

  /** Emits what is due; `flush` emits everything pending (agent stop). */
  report(flush = false): number {
    const plan = this.#o.enforcer.plan;
    const now = this.#clock.now();
    const every = this.#o.reportEveryMs ?? 60_000;
    const max = this.#o.maxEventsPerReport ?? 50;
    const due = [...this.#pending.entries()].filter(([key]) => flush || now - (this.#lastReport.get(key) ?? Number.NEGATIVE_INFINITY) >= every);
    due.sort(([, a], [, b]) => b.count - a.count);
    let emitted = 0;
    const folded = { events: 0, connections: 0, byChain: {} as Record<string, number> };
    for (const [key, agg] of due) {
      this.#pending.delete(key);
      this.#lastReport.set(key, now);
      if (emitted >= max) {
        folded.events += 1;
        folded.connections += agg.count;
        folded.byChain[agg.chain] = (folded.byChain[agg.chain] ?? 0) + agg.count;
        continue;
      }
      emitted += 1;
      this.#o.audit.record(deniedEvent(plan, agg));
    }
    if (this.#unitemized.size > 0) {
      const byChain = Object.fromEntries(this.#unitemized);
      this.#unitemized.clear();
      this.#o.audit.record({
        category: 'access-control',
        actor: 'ward-agent',
        action: 'enforce.flows-denied-unitemized',
        outcome: 'refused',
        details: {
          packets: Object.values(byChain).reduce((a, b) => a + b, 0),
          byChain,
          reason: 'the denied-flow sets were full (a scan or flood); these packets were judged but not itemized',
        },
      });
    }
    if (folded.events > 0) {
      this.#o.audit.record({
        category: 'access-control',
        actor: 'ward-agent',
        action: 'enforce.flows-denied-summary',
        outcome: 'refused',
        details: { flows: folded.events, packets: folded.connections, byChain: folded.byChain, reason: `more than ${max} denied flows in one report` },
      });
    }
    // Keys not seen for a long time are forgotten, so the maps stay bounded by recent activity.
    if (this.#lastReport.size > 50_000) for (const [k, t] of this.#lastReport) if (now - t > every * 10) this.#lastReport.delete(k);
    if (this.#seen.size > 200_000) this.#seen.clear();
    return emitted;
  }

  async learned(): Promise<Learned> {
    if (!this.#learned) {
      const raw = (await readJsonFile(join(this.#o.dir, 'learned.json')).catch(() => undefined)) as Learned | undefined;
      this.#learned = raw && typeof raw === 'object' && raw.flows ? raw : { since: this.#clock.now(), flows: {} };
    }
    return this.#learned;
  }

  async #saveLearned(): Promise<void> {
    if (!this.#learnedDirty || !this.#learned) return;
    this.#learnedDirty = false;
    await writeFileAtomic(join(this.#o.dir, 'learned.json'), `${JSON.stringify(this.#learned)}\n`);
  }
}

export function flowKey(o: FlowObservation): string {
  return `${o.chain}|${o.src}|${o.dst}|${o.proto}|${o.dport ?? ''}`;
}

export function parseFlowKey(key: string): FlowObservation {
  const [chain = '', src = '', dst = '', proto = '', dport = ''] = key.split('|');
  return { chain, src, dst, proto, dport: dport === '' ? undefined : Number(dport) };
}

function deniedEvent(plan: Plan | undefined, agg: DeniedAggregate) {
  const chain = plan?.chains.find((c) => c.name === agg.chain);
  const proto = agg.proto === 'tcp' || agg.proto === 'udp' || agg.proto === 'icmp' ? agg.proto : 'other';
  const probe: Pick<Probe, 'src' | 'dst' | 'proto' | 'dport'> = { src: agg.src, dst: agg.dst, proto, ...(agg.dport !== undefined ? { dport: agg.dport } : {}) };
  const decision = chain ? judge(chain, probe) : undefined;
  const enforced = decision?.mode === 'enforce';
  return {
    category: 'access-control' as const,
    actor: agg.src,
    action: enforced ? 'enforce.flow-denied' : 'enforce.flow-would-deny',
    target: agg.dport !== undefined ? `${agg.dst}:${agg.dport}/${agg.proto}` : `${agg.dst}/${agg.proto}`,
    // A would-be deny in observe mode passed: the event says so rather than pretending it was blocked.
    outcome: enforced ? ('refused' as const) : ('success' as const),
    details: {
      src: agg.src,
      dst: agg.dst,
      proto: agg.proto,
      ...(agg.dport !== undefined ? { dport: agg.dport } : {}),
      from: chain?.from,
      to: chain?.to === '@gateway' ? 'gateway' : chain?.to,
      rule: decision?.rule ?? 'unknown',
      mode: decision?.mode ?? 'unknown',
      count: agg.count,
      firstSeen: new Date(agg.firstSeen).toISOString(),
      lastSeen: new Date(agg.lastSeen).toISOString(),
      policyVersion: plan?.version,
    },
  };
}
