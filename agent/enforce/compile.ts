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
/** Bits of the packet mark Ward uses in bridge mode: ingress zone in 24-31, egress zone in 16-23. */
export const MARK_MASK = 0xffff0000;
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
  const out: string[] = [];
  const comments: string[] = [];
  const rule = (indent: number, text: string, comment?: string) => {
    if (comment !== undefined) comments.push(comment);
    out.push(`${'\t'.repeat(indent)}${text}${comment !== undefined ? ` comment "${comment}"` : ''}`);
  };
  const bridge = plan.binding.mode === 'bridge';
  renderInet(plan, rule, out, bridge);
  if (bridge) renderBridge(plan, rule, out);
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

function renderInet(plan: Plan, rule: Emit, out: string[], bridge: boolean): void {
  out.push(`table inet ${TABLE} {`);
  out.push('\tcomment "@TAG@"');
  for (const chain of plan.chains) renderSets(chain, plan, out);

  const zonesWithIfaces = plan.zones.filter((z) => z.interfaces.length > 0);
  out.push('', '\tchain forward {', '\t\ttype filter hook forward priority filter; policy accept;');
  rule(2, 'ct state established,related accept', 'ward:fastpath');
  if (bridge) {
    const elements: string[] = [];
    for (const from of zonesWithIfaces) for (const to of zonesWithIfaces) elements.push(`${hex(markOf(from, to))} : jump pair_${from.index}_${to.index}`);
    if (elements.length > 0) rule(2, `meta mark & ${hex(MARK_MASK)} vmap { ${elements.join(', ')} }`);
  } else {
    const elements: string[] = [];
    for (const from of zonesWithIfaces) {
      for (const to of zonesWithIfaces) {
        for (const i of from.interfaces) for (const o of to.interfaces) elements.push(`${q(i)} . ${q(o)} : jump pair_${from.index}_${to.index}`);
      }
    }
    if (elements.length > 0) rule(2, `iifname . oifname vmap { ${elements.join(', ')} }`);
  }
  defaultVerdict(rule, plan.unzonedMode, 'ward:unzoned');
  out.push('\t}');

  out.push('', '\tchain input {', '\t\ttype filter hook input priority filter; policy accept;');
  rule(2, 'iif "lo" accept', 'ward:loopback');
  rule(2, 'ct state established,related accept', 'ward:fastpath');
  // What keeps the gateway itself reachable and addressed whatever the policy says: DHCP replies and IPv6 neighbour discovery.
  rule(2, 'udp sport 67 udp dport 68 accept', 'ward:dhcp');
  rule(2, 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept', 'ward:ndp');
  if (bridge) {
    const elements = zonesWithIfaces.map((z) => `${hex(markOf(z, undefined))} : jump in_${z.index}`);
    if (elements.length > 0) rule(2, `meta mark & ${hex(0xff000000)} vmap { ${elements.join(', ')} }`);
  } else {
    const elements = zonesWithIfaces.flatMap((z) => z.interfaces.map((i) => `${q(i)} : jump in_${z.index}`));
    if (elements.length > 0) rule(2, `iifname vmap { ${elements.join(', ')} }`);
  }
  defaultVerdict(rule, plan.unzonedMode, 'ward:unzoned-in');
  out.push('\t}');

  for (const chain of plan.chains) renderChain(chain, plan, rule, out);
  out.push('}');
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

function renderChain(chain: ChainPlan, plan: Plan, rule: Emit, out: string[]): void {
  const enforce = chain.mode === 'enforce';
  const verdict = enforce ? 'drop' : 'accept';
  out.push('', `\tchain ${chain.name} {`);
  out.push(`\t\t# ${chain.kind === 'pair' ? `zone ${chain.from} -> zone ${chain.to}` : `zone ${chain.from} -> the gateway`}: ${chain.mode}`);
  rule(2, `ct state invalid counter ${verdict}`, `ward:invalid:${chain.name}`);
  if (plan.learn) rule(2, `meta l4proto { tcp, udp } update @l_${chain.name} { ip saddr . ip daddr . meta l4proto . th dport }`, `ward:learn:${chain.name}`);
  for (const r of chain.rules) renderFlowRule(chain, r, rule);
  rule(
    2,
    `meta l4proto { tcp, udp } update @d_${chain.name} { ip saddr . ip daddr . meta l4proto . th dport } counter ${verdict}`,
    `ward:default:${chain.name}`,
  );
  rule(2, `meta nfproto ipv4 update @o_${chain.name} { ip saddr . ip daddr . meta l4proto } counter ${verdict}`, `ward:default:${chain.name}`);
  rule(2, `counter ${verdict}`, `ward:default-ip6:${chain.name}`);
  out.push('\t}');
}

function renderFlowRule(chain: ChainPlan, r: RulePlan, rule: Emit): void {
  const addr = [
    r.src.length > 0 ? `ip saddr ${set(collapse(r.src).map((c) => c.text))}` : '',
    r.dst.length > 0 ? `ip daddr ${set(collapse(r.dst).map((c) => c.text))}` : '',
  ]
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

function renderBridge(plan: Plan, rule: Emit, out: string[]): void {
  const zones = plan.zones.filter((z) => z.interfaces.length > 0);
  out.push('', `table bridge ${TABLE} {`, '\tcomment "@TAG@"');
  out.push('', '\tchain forward {', '\t\ttype filter hook forward priority -200; policy accept;');
  rule(2, 'meta mark set 0x00000000', 'ward:mark-clear');
  const pairs: string[] = [];
  for (const from of zones)
    for (const to of zones) for (const i of from.interfaces) for (const o of to.interfaces) pairs.push(`${q(i)} . ${q(o)} : ${hex(markOf(from, to))}`);
  if (pairs.length > 0) rule(2, `meta mark set iifname . oifname map { ${pairs.join(', ')} }`, 'ward:mark');
  for (const z of zones) renderL2(z, plan, rule);
  out.push('\t}');
  out.push('', '\tchain input {', '\t\ttype filter hook input priority -200; policy accept;');
  rule(2, 'meta mark set 0x00000000', 'ward:mark-clear');
  const ins = zones.flatMap((z) => z.interfaces.map((i) => `${q(i)} : ${hex(markOf(z, undefined))}`));
  if (ins.length > 0) rule(2, `meta mark set iifname map { ${ins.join(', ')} }`, 'ward:mark');
  for (const z of zones) renderL2(z, plan, rule);
  out.push('\t}', '}');
}

function renderL2(zone: ZonePlan, plan: Plan, rule: Emit): void {
  // IPv6 passes to the inet rules (which default-deny new IPv6 connections), so it is not an EtherType problem here.
  const allowed = ['ip', 'arp', 'ip6', ...zone.ethertypes];
  const mode = zone.kind === 'cell' ? zone.mode : plan.unzonedMode;
  rule(2, `iifname ${set(zone.interfaces.map(q))} ether type != ${set(allowed)} counter ${mode === 'enforce' ? 'drop' : 'accept'}`, `ward:l2:${zone.name}`);
}

function defaultVerdict(rule: Emit, mode: 'observe' | 'enforce', comment: string): void {
  rule(2, `counter ${mode === 'enforce' ? 'drop' : 'accept'}`, comment);
}

export function markOf(from: ZonePlan, to: ZonePlan | undefined): number {
  return ((from.index << 24) | ((to?.index ?? 0) << 16)) >>> 0;
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
