import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { renderRuleset } from '../../agent/enforce/compile.js';
import { Enforcer } from '../../agent/enforce/enforcer.js';
import { Nft, systemBinary } from '../../agent/enforce/nft.js';
import { type Binding, buildPlan } from '../../agent/enforce/plan.js';
import { checkPolicy, type PolicyInput, type ValidatedPolicy } from '../../agent/shared/policy/model.js';
import { LINE_POLICY, quietLog } from '../helpers/enforce.js';
import { createTopology, netnsUnavailable, type Topology } from '../helpers/netns.js';
import type { BenchResult, Figure } from './lib.js';
import { round } from './lib.js';

/**
 * Segmentation cost, in one run:
 * - compile (check + plan + render) and apply (one `nft -f` + read-back) for
 *   policies of 10, 1,000 and 10,000 flows over as many assets, in a network
 *   namespace of the bench's own; growth per 10x says whether cost is linear;
 * - TCP connection setup latency from the engineering workstation to a PLC
 *   through a routed gateway namespace: no ruleset, the line policy, and a
 *   10,000-flow ruleset where the engineer's flow is the last rule its new
 *   connections meet (the worst case of the linear chain).
 */
const run = promisify(execFile);
const SIZES = [10, 1_000, 10_000];
const CONNECTS = 400;

/** n assets split over the IT zone and four cells, n flows from IT assets to cell assets, distinct ports. */
function synthetic(n: number, extra: (p: PolicyInput) => void = () => {}): ValidatedPolicy {
  const zones = [{ name: 'it', kind: 'uplink' as const, ports: ['UPLINK'] }, ...[1, 2, 3, 4].map((i) => ({ name: `cell-${i}`, ports: [`PLC${i}`] }))];
  const assets: NonNullable<PolicyInput['assets']> = [];
  const half = Math.max(1, Math.floor(n / 2));
  for (let i = 0; i < n; i++) {
    const it = i < half;
    const k = it ? i : i - half;
    assets.push({
      name: `a-${i}`,
      zone: it ? 'it' : `cell-${(k % 4) + 1}`,
      ip: it ? `198.18.${100 + Math.floor(k / 250)}.${(k % 250) + 1}` : `198.19.${Math.floor(k / 250)}.${(k % 250) + 1}`,
      kind: it ? 'workstation' : 'plc',
    });
  }
  const flows: NonNullable<PolicyInput['flows']> = [];
  for (let i = 0; i < n; i++) {
    const from = assets[i % half] as { name: string };
    const to = assets[half + (i % Math.max(1, n - half))] ?? (assets[0] as { name: string });
    flows.push({ id: `f-${i}`, from: `asset:${from.name}`, to: `asset:${to.name}`, services: [`tcp/${1000 + (i % 50_000)}`] });
  }
  flows.push({ id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] });
  const p: PolicyInput = { schema: 'ward.policy/v1', name: `bench-${n}`, mode: 'enforce', zones, assets, flows };
  extra(p);
  return checkPolicy(p);
}

async function namespace(): Promise<{ ns: string; drop: () => Promise<void> }> {
  const ns = `wb${randomBytes(3).toString('hex')}`;
  await run(systemBinary('ip'), ['netns', 'add', ns]);
  return { ns, drop: () => run(systemBinary('ip'), ['netns', 'del', ns]).then(() => undefined) };
}

const CONNECT_SCRIPT = `
const net = require('node:net');
const [host, port, n] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const times = [];
(async () => {
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => { times.push(Number(process.hrtime.bigint() - t0) / 1e3); s.destroy(); resolve(); });
      s.setTimeout(2000, () => { s.destroy(); reject(new Error('timeout')); });
      s.on('error', reject);
    });
  }
  times.sort((a, b) => a - b);
  const q = (f) => times[Math.min(times.length - 1, Math.floor(f * times.length))];
  console.log(JSON.stringify({ p50: q(0.5), p99: q(0.99) }));
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); });
`;

async function connectLatency(topo: Topology): Promise<{ p50: number; p99: number }> {
  const r = await topo.exec(topo.hosts.eng.ns, [process.execPath, '-e', CONNECT_SCRIPT, topo.hosts.plc1.ip, '502', String(CONNECTS)], { timeoutMs: 120_000 });
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { p50?: number; p99?: number; error?: string };
  if (out.p50 === undefined || out.p99 === undefined) throw new Error(`connect probe failed: ${out.error ?? r.stderr}`);
  return { p50: out.p50, p99: out.p99 };
}

export default async function enforceBench(): Promise<BenchResult> {
  const reason = await netnsUnavailable();
  if (reason) return { figures: [{ key: 'skipped', label: 'skipped', value: reason }] };
  const figures: Figure[] = [];
  const notes: string[] = [];
  const binding: Binding = { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2', PLC3: 'p3', PLC4: 'p4' } };

  const applyMs: number[] = [];
  for (const n of SIZES) {
    const t0 = performance.now();
    const validated = synthetic(n);
    const ruleset = renderRuleset(buildPlan(validated, { binding, version: 1 }));
    const compileMs = performance.now() - t0;
    const { ns, drop } = await namespace();
    const dir = await mkdtemp(join(tmpdir(), 'ward-bench-enforce-'));
    try {
      const enforcer = await Enforcer.open({
        nft: new Nft({ prefix: ['ip', 'netns', 'exec', ns] }),
        dir,
        binding,
        audit: new MemoryAuditSink(),
        log: quietLog,
      });
      const t1 = performance.now();
      await enforcer.apply({ validated, version: 1, source: 'controller', actor: 'bench' });
      const first = performance.now() - t1;
      // A second apply replaces a table of the same size (the steady-state update).
      const t2 = performance.now();
      await enforcer.apply({ validated, version: 2, source: 'controller', actor: 'bench' });
      const replace = performance.now() - t2;
      applyMs.push(replace);
      figures.push(
        { key: `compile_ms.${n}`, label: `${n} flows/assets: check + compile`, value: round(compileMs), unit: 'ms' },
        { key: `apply_ms.${n}`, label: `${n} flows/assets: first apply (nft -f + read-back)`, value: round(first), unit: 'ms' },
        { key: `replace_ms.${n}`, label: `${n} flows/assets: replace in one transaction`, value: round(replace), unit: 'ms' },
        {
          key: `rules.${n}`,
          label: `${n} flows/assets: kernel rules / script bytes`,
          value: `${ruleset.comments.length} / ${ruleset.script.length.toLocaleString('en-US')}`,
        },
      );
    } finally {
      await drop();
      await rm(dir, { recursive: true, force: true });
    }
  }
  for (let i = 1; i < SIZES.length; i++) {
    figures.push({
      key: `growth.${SIZES[i]}`,
      label: `replace time ${SIZES[i - 1]} -> ${SIZES[i]} (x${(SIZES[i] as number) / (SIZES[i - 1] as number)} the size)`,
      value: round((applyMs[i] as number) / (applyMs[i - 1] as number)),
      unit: 'x',
    });
  }

  const topo = await createTopology('routed');
  try {
    await topo.listen(topo.hosts.plc1, { tcp: [502] });
    const lineBinding: Binding = { mode: 'routed', interfaces: { UPLINK: topo.ports.UPLINK, PLC1: topo.ports.PLC1, PLC2: topo.ports.PLC2 } };
    const dir = await mkdtemp(join(tmpdir(), 'ward-bench-enforce-'));
    const enforcer = await Enforcer.open({ nft: new Nft({ prefix: topo.gwPrefix }), dir, binding: lineBinding, audit: new MemoryAuditSink(), log: quietLog });
    await connectLatency(topo); // warm-up: ARP, the peer's JIT
    const none = await connectLatency(topo);
    await enforcer.apply({ validated: checkPolicy(YAML.parse(LINE_POLICY)), version: 1, source: 'controller', actor: 'bench' });
    const line = await connectLatency(topo);
    // 10,000 flows into PLC1's cell ahead of the engineer's: every SYN walks them all.
    const big = checkPolicy(
      (() => {
        const p = YAML.parse(LINE_POLICY) as PolicyInput & { assets: object[]; flows: object[] };
        const extraAssets = Array.from({ length: 100 }, (_, i) => ({ name: `ws-${i}`, zone: 'it', ip: `198.18.0.${100 + i}` }));
        const extraFlows = Array.from({ length: 10_000 }, (_, i) => ({
          id: `x-${i}`,
          from: `asset:ws-${i % 100}`,
          to: 'asset:press-plc',
          services: [`tcp/${10_000 + i}`],
        }));
        p.assets = [...p.assets, ...extraAssets];
        p.flows = [...extraFlows, ...p.flows];
        return p;
      })(),
    );
    await enforcer.apply({ validated: big, version: 2, source: 'controller', actor: 'bench' });
    const heavy = await connectLatency(topo);
    await rm(dir, { recursive: true, force: true });
    const us = (v: number) => round(v);
    figures.push(
      { key: 'connect_p50_us.none', label: 'connect p50, no ruleset', value: us(none.p50), unit: 'µs' },
      { key: 'connect_p99_us.none', label: 'connect p99, no ruleset', value: us(none.p99), unit: 'µs' },
      { key: 'connect_p50_us.line', label: 'connect p50, line policy', value: us(line.p50), unit: 'µs' },
      { key: 'connect_p99_us.line', label: 'connect p99, line policy', value: us(line.p99), unit: 'µs' },
      { key: 'connect_p50_us.10k', label: 'connect p50, 10,000 flows ahead in the chain', value: us(heavy.p50), unit: 'µs' },
      { key: 'connect_p99_us.10k', label: 'connect p99, 10,000 flows ahead in the chain', value: us(heavy.p99), unit: 'µs' },
      { key: 'connect_ratio.line', label: 'p50 ratio line policy / none', value: round(line.p50 / none.p50), unit: 'x' },
      { key: 'connect_ratio.10k', label: 'p50 ratio 10,000 flows / none', value: round(heavy.p50 / none.p50), unit: 'x' },
    );
    notes.push(
      `connect = TCP handshake from the engineering namespace to PLC1 through the routed gateway namespace (veth), ${CONNECTS} sequential connects per case, measured inside the client`,
      'apply times include the read-back of the kernel state (nft -j list) that every apply does',
    );
  } finally {
    await topo.destroy();
  }
  return { figures, notes };
}
