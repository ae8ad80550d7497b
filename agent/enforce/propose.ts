import YAML from 'yaml';
import { checkPolicy, ipToNumber, type Policy, parseCidr } from '../shared/policy/model.js';
import { type Learned, parseFlowKey } from './flows.js';
import { judge, type Plan } from './plan.js';

/**
 * Learn mode's output: a least-privilege policy proposal from what the
 * kernel saw (per chain: source, destination, protocol, port). Connections
 * are grouped per asset pair, one flow per pair listing every service seen;
 * addresses no asset covers become new assets named after their address in
 * the zone they were seen in. Flows the active policy already has stay as
 * they are, annotated with whether traffic used them. The result is checked
 * like any policy before it is printed, and starts in observe mode: a person
 * reviews it, then switches zones to enforce.
 */
export interface Proposal {
  readonly text: string;
  readonly newFlows: number;
  readonly newAssets: number;
  readonly observed: number;
}

export function proposePolicy(active: Policy, plan: Plan, learned: Learned, now = Date.now()): Proposal {
  const assets = active.assets.map((a) => ({ ...a }));
  const byZone = (zone: string) => assets.filter((a) => a.zone === zone);
  const nameOf = (ip: string, zone: string): string => {
    const n = ipToNumber(ip);
    const hit = byZone(zone).find((a) => {
      const c = parseCidr(a.ip);
      return c !== undefined && n >= c.base && n <= c.base + 2 ** (32 - c.bits) - 1;
    });
    if (hit) return hit.name;
    const name = `host-${ip.replaceAll('.', '-')}`;
    if (!assets.some((a) => a.name === name)) assets.push({ name, zone, ip, kind: 'other', roles: [], comment: `seen during learn mode in zone ${zone}` });
    return name;
  };

  const used = new Map<string, number>();
  const pairs = new Map<string, { from: string; to: string; services: Set<string>; packets: number; first: number; last: number; examples: Set<string> }>();
  let observed = 0;
  for (const [key, seen] of Object.entries(learned.flows)) {
    const o = parseFlowKey(key);
    const chain = plan.chains.find((c) => `${c.from}>${c.to}` === o.chain);
    if (!chain || (o.proto !== 'tcp' && o.proto !== 'udp') || o.dport === undefined) continue;
    observed += 1;
    const decision = judge(chain, { src: o.src, dst: o.dst, proto: o.proto, dport: o.dport });
    if (!decision.denied) {
      used.set(decision.rule, (used.get(decision.rule) ?? 0) + seen.packets);
      continue;
    }
    const from = nameOf(o.src, chain.from);
    const to = chain.to === '@gateway' ? 'gateway' : nameOf(o.dst, chain.to);
    const id = `${from}>${to}`;
    const pair = pairs.get(id) ?? { from, to, services: new Set<string>(), packets: 0, first: seen.first, last: seen.last, examples: new Set<string>() };
    pair.services.add(`${o.proto}/${o.dport}`);
    pair.packets += seen.packets;
    pair.first = Math.min(pair.first, seen.first);
    pair.last = Math.max(pair.last, seen.last);
    if (pair.examples.size < 3) pair.examples.add(`${o.src} -> ${o.dst} ${o.proto}/${o.dport}`);
    pairs.set(id, pair);
  }

  const taken = new Set(active.flows.map((f) => f.id));
  const flowId = (from: string, to: string) => {
    const base = `${from}-to-${to}`.slice(0, 27).replace(/-+$/, '');
    let id = `l-${base}`.slice(0, 31);
    for (let i = 2; taken.has(id); i++) id = `${`l-${base}`.slice(0, 30 - String(i).length)}-${i}`;
    taken.add(id);
    return id;
  };
  const sortedPairs = [...pairs.values()].sort((a, b) => (a.from + a.to < b.from + b.to ? -1 : 1));
  // A flow lists at most 64 services: a pair that used more (a scan during learning, say) gets several flows.
  const learnedFlows = sortedPairs.flatMap((p) => {
    const services = [...p.services].sort();
    const chunks = Array.from({ length: Math.ceil(services.length / 64) }, (_, i) => services.slice(i * 64, i * 64 + 64));
    const many = chunks.length > 1 ? `; ${services.length} services in all, worth a look` : '';
    return chunks.map((chunk) => ({
      id: flowId(p.from, p.to),
      from: `asset:${p.from}`,
      to: p.to === 'gateway' ? 'gateway' : `asset:${p.to}`,
      services: chunk,
      // The policy schema bounds comments (200 characters): the count and times first, examples as room allows.
      comment: truncate(`learned: ${p.packets} packet(s) ${iso(p.first)}..${iso(p.last)}${many}; e.g. ${[...p.examples].join(', ')}`, 200),
    }));
  });

  const proposal = {
    schema: active.schema,
    name: active.name,
    mode: 'observe' as const,
    failMode: active.failMode,
    zones: active.zones,
    assets,
    flows: [...active.flows, ...learnedFlows],
    safe: active.safe,
    comment: `proposed by ward enforce propose at ${iso(now)} from ${observed} observed flow(s) since ${iso(learned.since)}; review, then set zones to enforce`,
  };
  // Whatever is printed must be a policy Ward accepts.
  checkPolicy(JSON.parse(JSON.stringify(proposal)));

  const doc = new YAML.Document(proposal);
  doc.commentBefore = ` Ward policy proposal (learn mode). ${observed} distinct connection(s) observed since ${iso(learned.since)}.\n Flows prefixed "l-" are new; existing flows are annotated with the traffic that used them.`;
  active.flows.forEach((f, i) => {
    const node = doc.getIn(['flows', i], true) as YAML.Node | undefined;
    if (node) node.commentBefore = used.has(f.id) ? ` used: ${used.get(f.id)} packet(s) during learning` : ' not used during learning: still needed?';
  });
  return { text: doc.toString({ lineWidth: 0 }), newFlows: learnedFlows.length, newAssets: assets.length - active.assets.length, observed };
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : text.slice(0, max);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
