import { createHash } from 'node:crypto';
import type { Cidr } from '../shared/policy/model.js';
import type { ChainPlan, Plan, PortRanges, RulePlan, ZonePlan } from './plan.js';

/**
 * Renders a plan as one nftables script (pure, deterministic: the same plan
 * gives byte-identical text, so `ward enforce diff` and the snapshot tests
 * compare text). The script replaces Ward's own tables in one transaction:
 * `table X` (creates it if absent) + `delete table X` + the new definition,
 * loaded by a single `nft -f`, so there is never a moment with no rules, and
 * nothing outside Ward's tables is touched.
 *
 * Layout (see plan.ts for which chain judges what):
 * - `inet ward`: forward and input hooks. Established/related traffic takes
 *   the fast path; new connections are dispatched by (ingress, egress) with a
 *   verdict map to one chain per zone pair, whose rules are the policy's flows
 *   (addresses and ports in anonymous sets, so the rule count follows the
 *   policy's flows, not assets × flows) and whose last rules are the default
 *   deny, recording each denied connection's addresses, protocol and port in a
 *   per-chain dynamic set with a counter. The denied-flow reporter reads those
 *   sets (enforce/denied.ts): no log daemon, and the kernel aggregates.
 * - `bridge ward` (bridge mode only): the bridge hooks know the physical
 *   ports, the inet hooks (reached through br_netfilter) only see the bridge,
 *   so the bridge table tags each frame's packet mark with its ingress and
 *   egress zone, and filters EtherTypes (VLAN-tagged frames would otherwise
 *   bypass the IP rules).
 */
export const TABLE = 'ward';
/**
 * Bits of the packet mark Ward owns in bridge mode: ingress zone in 24-31, egress zone in 16-23 (0 = a port in
 * no zone), and bit 15 set on every frame the bridge forwards (absent: the gateway routed it).
 */
export const MARK_MASK = 0xffff0000;
const BRIDGED_BIT = 0x00008000;
/** An address group this large becomes a named set shared by the rules that use it. */
const NAMED_SET_THRESHOLD = 8;
const DENIED_SET_SIZE = 4096;
const DENIED_TIMEOUT = '1h';
const LEARN_SET_SIZE = 65_535;
const LEARN_TIMEOUT = '8d';

export interface Ruleset {
  /** The complete `nft -f` script (atomic replace of Ward's tables). */
  readonly script: string;
  /** SHA-256 of the script: the kernel's table comment carries its first 16 hex digits. */
  readonly digest: string;
  /** The table comment written into the kernel, which the post-apply check reads back. */
  readonly tag: string;
  /** Rule comments in the order they appear, for mapping kernel counters back to policy flows. */
  readonly comments: readonly string[];
  readonly plan: Plan;
}

export function renderRuleset(plan: Plan): Ruleset {
  const comments: string[] = [];
  const emit =
    (into: string[]): Emit =>
    (indent, text, comment) => {
      if (comment !== undefined) comments.push(comment);
      into.push(`${'\t'.repeat(indent)}${text}${comment !== undefined ? ` comment "${comment}"` : ''}`);
    };
  const bridge = plan.binding.mode === 'bridge';
  const addresses = new AddressBook();
  const chains: string[] = [];
  renderHooks(plan, emit(chains), chains, bridge);
  for (const chain of plan.chains) renderChain(chain, plan, emit(chains), chains, addresses);
  renderSteering(plan, emit(chains), chains, addresses);
  const out: string[] = [`table inet ${TABLE} {`, '\tcomment "@TAG@"'];
  out.push(...addresses.render());
  for (const chain of plan.chains) renderSets(chain, plan, out);
  out.push(...chains, '}');
  if (bridge) renderBridge(plan, emit(out), out);
  const definitions = out.join('\n');
  const digest = createHash('sha256').update(definitions).digest('hex');
  const tag = `ward policy=${plan.policy} version=${plan.version} digest=${digest.slice(0, 16)} mode=${plan.binding.mode}${plan.safe ? ' safe' : ''}${plan.learn ? ' learn' : ''}`;
  const header = [
    '#!/usr/sbin/nft -f',
    `# Ward ruleset for policy "${plan.policy}" version ${plan.version} (${plan.binding.mode} mode). Generated; do not edit.`,
    `# policy digest ${plan.digest}`,
    ...plan.warnings.map((w) => `# warning: ${w}`),
    // Creating before deleting makes the delete valid whether or not the table exists; all in one transaction.
    `table inet ${TABLE}`,
    `delete table inet ${TABLE}`,
    `table bridge ${TABLE}`,
    `delete table bridge ${TABLE}`,
  ];
  const script = `${header.join('\n')}\n${definitions.replaceAll('@TAG@', tag)}\n`;
  return { script, digest, tag, comments, plan };
}

type Emit = (indent: number, text: string, comment?: string) => void;

/** Address groups used by several rules, or too large to repeat inline, as named interval sets. */
class AddressBook {
  readonly #sets = new Map<string, { name: string; items: string[] }>();

  ref(cidrs: readonly Cidr[]): string {
    const items = collapse(cidrs).map((c) => c.text);
    if (items.length <= NAMED_SET_THRESHOLD) return set(items);
    const key = items.join(',');
    let entry = this.#sets.get(key);
    if (!entry) {
      entry = { name: `a_${this.#sets.size + 1}`, items };
      this.#sets.set(key, entry);
    }
    return `@${entry.name}`;
  }

  render(): string[] {
    return [...this.#sets.values()].flatMap(({ name, items }) => [
      `\tset ${name} {`,
      '\t\ttype ipv4_addr',
      '\t\tflags interval',
      `\t\telements = ${set(items)}`,
      '\t}',
    ]);
  }
}

function renderHooks(plan: Plan, rule: Emit, out: string[], bridge: boolean): void {
  const zones = plan.zones.filter((z) => z.interfaces.length > 0);
  out.push('', '\tchain forward {', '\t\ttype filter hook forward priority filter; policy accept;');
  rule(2, 'ct state established,related accept', 'ward:fastpath');
  if (bridge) {
    rule(2, `meta mark & ${hex(BRIDGED_BIT)} == 0 jump routed`, 'ward:routed');
    const elements: string[] = [];
    const all = [undefined, ...zones];
    for (const from of all) for (const to of all) elements.push(`${hex(markOf(from, to))} : jump pair_${from?.index ?? 0}_${to?.index ?? 0}`);
    rule(2, `meta mark & ${hex(MARK_MASK)} vmap { ${elements.join(', ')} }`);
  } else {
    // Both ports zoned, then only the egress zoned, then only the ingress: a port in no zone is zone 0.
    const pairs: string[] = [];
    for (const from of zones) {
      for (const to of zones) {
        for (const i of from.interfaces) for (const o of to.interfaces) pairs.push(`${q(i)} . ${q(o)} : jump pair_${from.index}_${to.index}`);
      }
    }
    if (pairs.length > 0) rule(2, `iifname . oifname vmap { ${pairs.join(', ')} }`);
    const outs = zones.flatMap((z) => z.interfaces.map((o) => `${q(o)} : jump pair_0_${z.index}`));
    if (outs.length > 0) rule(2, `oifname vmap { ${outs.join(', ')} }`);
    const ins = zones.flatMap((z) => z.interfaces.map((i) => `${q(i)} : jump pair_${z.index}_0`));
    if (ins.length > 0) rule(2, `iifname vmap { ${ins.join(', ')} }`);
  }
  rule(2, 'jump pair_0_0', 'ward:unzoned');
  out.push('\t}');

  out.push('', '\tchain input {', '\t\ttype filter hook input priority filter; policy accept;');
  renderProxyGuard(plan, rule);
  rule(2, 'iif "lo" accept', 'ward:loopback');
  rule(2, 'ct state established,related accept', 'ward:fastpath');
  // What keeps the gateway itself reachable and addressed whatever the policy says: DHCP replies and IPv6 neighbour discovery.
  rule(2, 'udp sport 67 udp dport 68 accept', 'ward:dhcp');
  rule(2, 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept', 'ward:ndp');
  if (bridge) {
    const elements = zones.map((z) => `${hex(markOf(z, undefined))} : jump in_${z.index}`);
    if (elements.length > 0) rule(2, `meta mark & ${hex(0xff000000)} vmap { ${elements.join(', ')} }`);
  } else {
    const elements = zones.flatMap((z) => z.interfaces.map((i) => `${q(i)} : jump in_${z.index}`));
    if (elements.length > 0) rule(2, `iifname vmap { ${elements.join(', ')} }`);
  }
  rule(2, 'jump in_0', 'ward:unzoned-in');
  out.push('\t}');
}

function renderSets(chain: ChainPlan, plan: Plan, out: string[]): void {
  const key = 'ipv4_addr . ipv4_addr . inet_proto . inet_service';
  out.push(
    `\tset d_${chain.name} {`,
    `\t\ttype ${key}`,
    `\t\tsize ${DENIED_SET_SIZE}`,
    '\t\tflags dynamic,timeout',
    `\t\ttimeout ${DENIED_TIMEOUT}`,
    '\t\tcounter',
    '\t}',
    `\tset o_${chain.name} {`,
    '\t\ttype ipv4_addr . ipv4_addr . inet_proto',
    `\t\tsize ${DENIED_SET_SIZE}`,
    '\t\tflags dynamic,timeout',
    `\t\ttimeout ${DENIED_TIMEOUT}`,
    '\t\tcounter',
    '\t}',
  );
  if (plan.learn) {
    out.push(
      `\tset l_${chain.name} {`,
      `\t\ttype ${key}`,
      `\t\tsize ${LEARN_SET_SIZE}`,
      '\t\tflags dynamic,timeout',
      `\t\ttimeout ${LEARN_TIMEOUT}`,
      '\t\tcounter',
      '\t}',
    );
  }
}

function renderChain(chain: ChainPlan, plan: Plan, rule: Emit, out: string[], addresses: AddressBook): void {
  const enforce = chain.mode === 'enforce';
  const verdict = enforce ? 'drop' : 'accept';
  out.push('', `\tchain ${chain.name} {`);
  const what =
    chain.name === 'routed'
      ? 'routed through a bridge-mode gateway'
      : chain.kind === 'pair'
        ? `zone ${chain.from} -> zone ${chain.to}`
        : `zone ${chain.from} -> the gateway`;
  out.push(`\t\t# ${what}: ${chain.mode}`);
  rule(2, `ct state invalid counter ${verdict}`, `ward:invalid:${chain.name}`);
  if (plan.learn) rule(2, `meta l4proto { tcp, udp } update @l_${chain.name} { ip saddr . ip daddr . meta l4proto . th dport }`, `ward:learn:${chain.name}`);
  for (const r of chain.rules) renderFlowRule(chain, r, rule, addresses);
  rule(
    2,
    `meta l4proto { tcp, udp } update @d_${chain.name} { ip saddr . ip daddr . meta l4proto . th dport } counter ${verdict}`,
    `ward:default:${chain.name}`,
  );
  // Reached only when the denied set is full: still judged, and counted so the report can say how much went unitemized.
  rule(2, `meta l4proto { tcp, udp } meta nfproto ipv4 counter ${verdict}`, `ward:overflow:${chain.name}`);
  rule(2, `meta nfproto ipv4 update @o_${chain.name} { ip saddr . ip daddr . meta l4proto } counter ${verdict}`, `ward:default-other:${chain.name}`);
  rule(2, `meta nfproto ipv4 counter ${verdict}`, `ward:overflow:${chain.name}`);
  rule(2, `counter ${verdict}`, `ward:default-ip6:${chain.name}`);
  out.push('\t}');
}

function renderFlowRule(chain: ChainPlan, r: RulePlan, rule: Emit, addresses: AddressBook): void {
  const addr = [r.src.length > 0 ? `ip saddr ${addresses.ref(r.src)}` : '', r.dst.length > 0 ? `ip daddr ${addresses.ref(r.dst)}` : '']
    .filter(Boolean)
    .join(' ');
  const match = (m: string) => [addr || 'meta nfproto ipv4', m].join(' ');
  const comment = `ward:flow:${r.flow}`;
  const deny = r.action === 'deny';
  const verdict = deny && chain.mode === 'enforce' ? 'drop' : 'accept';
  // Denied flows are recorded like the default deny, so their connections show up in denied-flow events too.
  const record = (proto: 'tcp' | 'udp' | 'icmp') =>
    !deny
      ? ''
      : proto === 'icmp'
        ? ` update @o_${chain.name} { ip saddr . ip daddr . meta l4proto }`
        : ` update @d_${chain.name} { ip saddr . ip daddr . meta l4proto . th dport }`;
  for (const proto of ['tcp', 'udp'] as const) {
    const ranges = r.services[proto];
    if (ranges.length > 0) rule(2, `${match(`${proto} dport ${set(ranges.map(portText))}`)}${record(proto)} counter ${verdict}`, comment);
  }
  if (r.services.icmp) rule(2, `${match('icmp type echo-request')}${record('icmp')} counter ${verdict}`, comment);
}

/**
 * Flows with protocol operations: new connections from the flow's sources, arriving on its ingress zone's ports,
 * to one destination port are redirected to the plugin proxy's port for that destination (routed mode only;
 * plan.ts leaves such flows out otherwise). Redirect keeps the client's source address, so the proxy knows who
 * is asking, and the listen port tells it where the client meant to go.
 */
function renderSteering(plan: Plan, rule: Emit, out: string[], addresses: AddressBook): void {
  const zones = new Map(plan.zones.map((z) => [z.index, z]));
  const steered = plan.steered.filter((st) => (zones.get(st.zone)?.interfaces.length ?? 0) > 0);
  if (steered.length === 0) return;
  out.push('', '\tchain steer {', '\t\ttype nat hook prerouting priority dstnat; policy accept;');
  for (const st of steered) {
    const ifs = set((zones.get(st.zone) as ZonePlan).interfaces.map(q));
    for (const g of st.grants) {
      const src = g.src.length > 0 ? ` ip saddr ${addresses.ref(g.src)}` : '';
      rule(2, `iifname ${ifs}${src} ip daddr ${st.target.address} tcp dport ${st.target.port} counter redirect to :${st.listenPort}`, `ward:steer:${g.flow}`);
    }
  }
  out.push('\t}');
}

/**
 * A proxy port takes exactly the connections the steering chain redirected to it: arriving on its zone's ports,
 * originally for its destination. Anything else to a proxy port (a host in another zone, a direct connection, a
 * process on the gateway itself) is dropped before any zone chain, whatever the zones' modes.
 */
function renderProxyGuard(plan: Plan, rule: Emit): void {
  const zones = new Map(plan.zones.map((z) => [z.index, z]));
  const ports: number[] = [];
  for (const st of plan.steered) {
    ports.push(st.listenPort);
    const ifs = zones.get(st.zone)?.interfaces ?? [];
    if (ifs.length === 0) continue;
    rule(
      2,
      `iifname ${set(ifs.map(q))} tcp dport ${st.listenPort} ct status dnat ct original ip daddr ${st.target.address} ct original proto-dst ${st.target.port} counter accept`,
      `ward:proxy:${st.listenPort}`,
    );
  }
  if (ports.length > 0) rule(2, `tcp dport ${set(ports.map(String))} counter drop`, 'ward:proxy-guard');
}

function renderBridge(plan: Plan, rule: Emit, out: string[]): void {
  const zones = plan.zones.filter((z) => z.interfaces.length > 0);
  out.push('', `table bridge ${TABLE} {`, '\tcomment "@TAG@"');
  for (const z of zones) {
    out.push('', `\tchain tag_in_${z.index} {`);
    rule(2, `meta mark set meta mark | ${hex(markOf(z, undefined))}`);
    out.push('\t}', '', `\tchain tag_out_${z.index} {`);
    rule(2, `meta mark set meta mark | ${hex(markOf(undefined, z))}`);
    out.push('\t}');
  }
  out.push('', '\tchain forward {', '\t\ttype filter hook forward priority -200; policy accept;');
  // Ward owns the packet mark of bridged traffic: cleared, then ingress zone, egress zone and the bridged bit.
  rule(2, 'meta mark set 0x00000000', 'ward:mark-clear');
  const ins = zones.flatMap((z) => z.interfaces.map((i) => `${q(i)} : jump tag_in_${z.index}`));
  const outs = zones.flatMap((z) => z.interfaces.map((o) => `${q(o)} : jump tag_out_${z.index}`));
  if (ins.length > 0) rule(2, `iifname vmap { ${ins.join(', ')} }`, 'ward:mark-in');
  if (outs.length > 0) rule(2, `oifname vmap { ${outs.join(', ')} }`, 'ward:mark-out');
  rule(2, `meta mark set meta mark | ${hex(BRIDGED_BIT)}`, 'ward:mark-bridged');
  renderL2(plan, zones, rule);
  out.push('\t}');
  out.push('', '\tchain input {', '\t\ttype filter hook input priority -200; policy accept;');
  rule(2, 'meta mark set 0x00000000', 'ward:mark-clear');
  if (ins.length > 0) rule(2, `iifname vmap { ${ins.join(', ')} }`, 'ward:mark-in');
  out.push('\t}', '}');
}

/**
 * EtherTypes a frame may carry between two ports: IPv4, ARP and IPv6 (which the inet rules judge) plus what
 * the zones on either side allow, judged in the mode of the pair (the destination cell's, as for IP).
 */
function renderL2(plan: Plan, zones: readonly ZonePlan[], rule: Emit): void {
  const base = ['ip', 'arp', 'ip6'];
  const allowed = (...z: (ZonePlan | undefined)[]) => set([...new Set([...base, ...z.flatMap((x) => x?.ethertypes ?? [])])]);
  const mode = (from: ZonePlan | undefined, to: ZonePlan | undefined) => (to?.kind === 'cell' ? to.mode : from?.kind === 'cell' ? from.mode : plan.unzonedMode);
  const verdict = (m: 'observe' | 'enforce') => (m === 'enforce' ? 'drop' : 'accept');
  const ifs = (z: ZonePlan) => set(z.interfaces.map(q));
  for (const from of zones) {
    for (const to of zones) {
      rule(
        2,
        `iifname ${ifs(from)} oifname ${ifs(to)} ether type != ${allowed(from, to)} counter ${verdict(mode(from, to))}`,
        `ward:l2:${from.name}>${to.name}`,
      );
    }
  }
  for (const to of zones) rule(2, `oifname ${ifs(to)} ether type != ${allowed(to)} counter ${verdict(mode(undefined, to))}`, `ward:l2:*>${to.name}`);
  for (const from of zones) rule(2, `iifname ${ifs(from)} ether type != ${allowed(from)} counter ${verdict(mode(from, undefined))}`, `ward:l2:${from.name}>*`);
}

export function markOf(from: ZonePlan | undefined, to: ZonePlan | undefined): number {
  return (((from?.index ?? 0) << 24) | ((to?.index ?? 0) << 16)) >>> 0;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

function q(name: string): string {
  return JSON.stringify(name);
}

function set(items: readonly string[]): string {
  return `{ ${items.join(', ')} }`;
}

function portText([lo, hi]: readonly [number, number]): string {
  return lo === hi ? String(lo) : `${lo}-${hi}`;
}

/** Drops CIDRs inside others: nft refuses overlapping intervals in one set. */
export function collapse(cidrs: readonly Cidr[]): Cidr[] {
  const sorted = [...cidrs].sort((a, b) => a.base - b.base || a.bits - b.bits);
  const out: Cidr[] = [];
  for (const c of sorted) {
    const last = out[out.length - 1];
    if (last && c.base <= last.base + 2 ** (32 - last.bits) - 1) continue;
    out.push(c);
  }
  return out;
}

export type { PortRanges };
