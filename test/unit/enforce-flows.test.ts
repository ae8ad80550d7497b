import test from 'ava';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import type { Enforcer } from '../../agent/enforce/enforcer.js';
import { FlowMonitor, flowKey, type Learned } from '../../agent/enforce/flows.js';
import type { Nft, RuleCounter, SetElement } from '../../agent/enforce/nft.js';
import { buildPlan } from '../../agent/enforce/plan.js';
import { proposePolicy } from '../../agent/enforce/propose.js';
import { checkPolicy } from '../../agent/shared/policy/model.js';
import { linePolicy, quietLog } from '../helpers/enforce.js';
import { tempDir } from '../helpers/tmp.js';

// The aggregation and rate limiting of denied-flow events, on set listings as nft prints them. The kernel side
// (dynamic sets filled by real traffic) runs in test/e2e/enforce-netns.test.ts; here a stand-in returns listings,
// so a flood of thousands of tuples can be replayed exactly.

const plan = buildPlan(linePolicy(), { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } }, version: 4 });

function monitorWith(
  t: import('ava').ExecutionContext,
  sets: Map<string, SetElement[]>,
  clock: { now: number },
  dir: string,
  opts = {},
  rules?: RuleCounter[],
) {
  const audit = new MemoryAuditSink();
  const nft = { snapshot: async () => ({ sets, rules: rules ?? [] }) } as unknown as Nft;
  const monitor = new FlowMonitor({
    enforcer: { plan } as unknown as Enforcer,
    nft,
    audit,
    log: quietLog,
    dir,
    clock: { now: () => clock.now, monotonic: () => clock.now },
    ...opts,
  });
  void t;
  return { monitor, audit };
}

const el = (src: string, dst: string, proto: string, dport: number, packets: number, expires = 3590): SetElement => ({
  key: [src, dst, proto, dport],
  packets,
  bytes: packets * 60,
  expires,
});

test('a denied tuple becomes one event with its count, zone pair and rule; later reports carry only the new count', async (t) => {
  const sets = new Map<string, SetElement[]>([['d_pair_3_1', [el('198.18.0.66', '198.18.1.10', 'tcp', 502, 5)]]]);
  const clock = { now: Date.parse('2026-11-26T06:00:00Z') };
  const { monitor, audit } = monitorWith(t, sets, clock, await tempDir(t), { reportEveryMs: 60_000 });
  await monitor.poll();
  t.is(monitor.report(), 1);
  t.like(audit.events[0], {
    category: 'access-control',
    action: 'enforce.flow-denied',
    outcome: 'refused',
    actor: '198.18.0.66',
    target: '198.18.1.10:502/tcp',
    details: { from: 'it', to: 'cell-a', rule: 'default', mode: 'enforce', count: 5, policyVersion: 4 },
  });
  // 20 more packets 10 s later: counted, but not reported before a minute has passed for this tuple.
  clock.now += 10_000;
  sets.set('d_pair_3_1', [el('198.18.0.66', '198.18.1.10', 'tcp', 502, 25)]);
  await monitor.poll();
  t.is(monitor.report(), 0);
  clock.now += 60_000;
  await monitor.poll();
  t.is(monitor.report(), 1);
  t.like(audit.events[1], { details: { count: 20 } });
  // Nothing new: nothing reported.
  clock.now += 120_000;
  await monitor.poll();
  t.is(monitor.report(), 0);
});

test('a flood of distinct tuples is capped per report and folded into one summary event', async (t) => {
  const flood = Array.from({ length: 2000 }, (_, i) => el('198.18.0.66', '198.18.1.10', 'tcp', 1 + i, 1));
  const sets = new Map<string, SetElement[]>([['d_pair_3_1', flood]]);
  const clock = { now: 1_800_000_000_000 };
  const { monitor, audit } = monitorWith(t, sets, clock, await tempDir(t), { maxEventsPerReport: 50 });
  await monitor.poll();
  t.is(monitor.report(), 50);
  t.is(audit.events.length, 51);
  t.like(audit.events.at(-1), { action: 'enforce.flows-denied-summary', details: { flows: 1950, packets: 1950, byChain: { pair_3_1: 1950 } } });
});

test('an element that restarts (the table was replaced, or it expired) counts from zero, not negative', async (t) => {
  const sets = new Map<string, SetElement[]>([['d_pair_1_2', [el('198.18.1.10', '198.18.2.10', 'tcp', 502, 40)]]]);
  const clock = { now: 1_800_000_000_000 };
  const { monitor, audit } = monitorWith(t, sets, clock, await tempDir(t), { reportEveryMs: 0 });
  await monitor.poll();
  monitor.report();
  sets.set('d_pair_1_2', [el('198.18.1.10', '198.18.2.10', 'tcp', 502, 3)]);
  await monitor.poll();
  monitor.report();
  t.deepEqual(
    audit.events.map((e) => (e.details as { count: number }).count),
    [40, 3],
  );
  t.like(audit.events[0], { details: { from: 'cell-a', to: 'cell-b', rule: 'default' } });
});

test('in observe mode the event says the flow would have been denied and passed', async (t) => {
  const observing = buildPlan(
    linePolicy((p) => {
      p.mode = 'observe';
    }),
    { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } }, version: 1 },
  );
  const audit = new MemoryAuditSink();
  const monitor = new FlowMonitor({
    enforcer: { plan: observing } as unknown as Enforcer,
    nft: { snapshot: async () => ({ sets: new Map([['d_pair_3_1', [el('198.18.0.66', '198.18.1.10', 'tcp', 102, 2)]]]), rules: [] }) } as unknown as Nft,
    audit,
    log: quietLog,
    dir: await tempDir(t),
  });
  await monitor.poll();
  monitor.report(true);
  t.like(audit.events[0], { action: 'enforce.flow-would-deny', outcome: 'success', details: { mode: 'observe' } });
});

test('propose: learned flows become a valid policy with new assets for unknown addresses and ids within limits', (t) => {
  const active = linePolicy((p) => {
    p.mode = 'observe';
    p.flows = p.flows?.filter((f) => f.id === 'mgmt-ssh');
  });
  const obsPlan = buildPlan(active, { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } }, version: 1, learn: true });
  const flows: Learned['flows'] = {};
  const add = (chain: string, src: string, dst: string, proto: string, dport: number) => {
    flows[flowKey({ chain, src, dst, proto, dport })] = { packets: 3, first: 1_800_000_000_000, last: 1_800_000_100_000 };
  };
  add('it>cell-a', '198.18.0.10', '198.18.1.10', 'tcp', 502);
  add('it>cell-a', '198.18.0.10', '198.18.1.10', 'tcp', 4840);
  add('it>@gateway', '198.18.0.10', '198.18.0.1', 'tcp', 22);
  // Many unknown hosts talking to the same PLC: each gets an asset and a distinct, short flow id.
  for (let i = 0; i < 15; i++) add('it>cell-a', `198.18.0.${200 + i}`, '198.18.1.10', 'tcp', 502);
  const proposal = proposePolicy(active.policy, obsPlan, { since: 1_800_000_000_000, flows }, 1_800_000_200_000);
  const policy = checkPolicy(YAML.parse(proposal.text)).policy;
  t.is(proposal.newAssets, 15);
  const eng = policy.flows.find((f) => f.from.includes('asset:eng-ws') && f.to.includes('asset:press-plc'));
  t.deepEqual(eng?.services, ['tcp/4840', 'tcp/502']);
  t.true(policy.flows.every((f) => f.id.length <= 31));
  t.is(new Set(policy.flows.map((f) => f.id)).size, policy.flows.length);
  t.regex(proposal.text, /# used: 3 packet\(s\) during learning/, 'ssh to the gateway was already allowed by mgmt-ssh');
});

test('denied packets a full set could not itemize are still reported, as counts per chain', async (t) => {
  const rules: RuleCounter[] = [{ family: 'inet', chain: 'pair_3_1', comment: 'ward:overflow:pair_3_1', handle: 40, packets: 900, bytes: 54_000 }];
  const clock = { now: 1_800_000_000_000 };
  const { monitor, audit } = monitorWith(t, new Map(), clock, await tempDir(t), {}, rules);
  await monitor.poll();
  monitor.report();
  t.like(audit.events[0], { action: 'enforce.flows-denied-unitemized', outcome: 'refused', details: { packets: 900, byChain: { pair_3_1: 900 } } });
  rules[0] = { ...(rules[0] as RuleCounter), packets: 950 };
  await monitor.poll();
  monitor.report();
  t.like(audit.events[1], { details: { packets: 50 } });
});

test('propose: a pair that used more than 64 ports (a scan while learning) becomes several valid flows', (t) => {
  const active = linePolicy((p) => {
    p.mode = 'observe';
    p.flows = p.flows?.filter((f) => f.id === 'mgmt-ssh');
  });
  const obsPlan = buildPlan(active, { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } }, version: 1, learn: true });
  const flows: Learned['flows'] = {};
  for (let port = 1; port <= 70; port++) {
    flows[flowKey({ chain: 'it>cell-a', src: '198.18.0.66', dst: '198.18.1.10', proto: 'tcp', dport: port })] = { packets: 1, first: 1, last: 2 };
  }
  const proposal = proposePolicy(active.policy, obsPlan, { since: 1, flows }, 3);
  const policy = checkPolicy(YAML.parse(proposal.text)).policy;
  const learned = policy.flows.filter((f) => f.id.startsWith('l-'));
  t.is(learned.length, 2);
  t.is(
    learned.reduce((n, f) => n + f.services.length, 0),
    70,
  );
  t.regex(proposal.text, /70 services in all, worth a look/);
});

test('after a new ruleset (a new plan), a tuple is counted afresh even when its count matches the old table', async (t) => {
  const sets = new Map<string, SetElement[]>([['d_pair_3_1', [el('198.18.0.66', '198.18.1.10', 'tcp', 502, 1)]]]);
  const audit = new MemoryAuditSink();
  const enforcer = { plan } as { plan: typeof plan };
  const monitor = new FlowMonitor({
    enforcer: enforcer as unknown as Enforcer,
    nft: { snapshot: async () => ({ sets, rules: [] }) } as unknown as Nft,
    audit,
    log: quietLog,
    dir: await tempDir(t),
    reportEveryMs: 0,
  });
  await monitor.poll();
  monitor.report();
  // The table was replaced (observe -> enforce): the same attacker's new attempt again counts 1 in the new set.
  enforcer.plan = buildPlan(linePolicy(), { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } }, version: 5 });
  await monitor.poll();
  monitor.report();
  t.is(audit.events.length, 2);
  t.like(audit.events[1], { details: { count: 1, policyVersion: 5 } });
});
