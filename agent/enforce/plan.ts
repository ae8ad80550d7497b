import {
  type Cidr,
  GATEWAY,
  ipToNumber,
  type Mode,
  type Policy,
  parseCidr,
  parseService,
  resolveFlow,
  type ValidatedPolicy,
  type Zone,
} from '../shared/policy/model.js';

/**
 * The enforcement plan: a checked policy laid out the way the kernel will
 * judge traffic, before any nftables syntax. One chain per (ingress zone,
 * egress zone) pair and one per zone for traffic to the gateway itself; each
 * chain holds the flows that can match there and ends in the chain's default
 * verdict. The nft renderer (compile.ts) and the evaluator below both read
 * this plan, so the lockout check, denied-flow attribution and learn-mode
 * proposals agree with what the kernel does.
 *
 * Which mode judges a flow: the mode of its destination zone when that is a
 * cell, else the mode of its source zone when that is a cell, else the
 * policy's mode. So putting one cell in `observe` relaxes exactly the traffic
 * reaching (or, for outbound-only cells, leaving) that cell.
 */
export type GatewayMode = 'routed' | 'bridge';

/** The pseudo-zone of every port the policy does not bind (index 0). */
export const UNZONED = '(unzoned)';

export interface Binding {
  readonly mode: GatewayMode;
  /** Board port name → kernel interface name (from the hardware profile, or config overrides). */
  readonly interfaces: Readonly<Record<string, string>>;
  /** Bridge mode: the bridge device the ports are enslaved to (its address is the gateway's). */
  readonly bridge?: string;
}

export interface PlanOptions {
  readonly binding: Binding;
  /** The signed envelope's version, carried into the ruleset so the kernel state names its policy. */
  readonly version: number;
  /** Fail-safe: only the policy's `safe` flows. */
  readonly safe?: boolean;
  /** Record every new connection per chain for `ward enforce propose`. */
  readonly learn?: boolean;
  /**
   * The gateway's attested trust state: only flows whose `trust` includes it are compiled; when quarantined and the
   * policy names `safe` flows, only those (the gateway drops to its safe policy). Default active.
   */
  readonly trust?: 'active' | 'degraded' | 'quarantined';
  /**
   * Gateway ports the protocol proxies may listen on (routed mode): flows with
   * `ops` are redirected there instead of being allowed in their pair chain.
   * Without it those flows are left out (denied) and named in `unsteered`.
   */
  readonly proxyPorts?: {
    readonly from: number;
    readonly to: number;
    /**
     * The ports the plan in force gave its destinations (SteerPlan.key → port). A destination keeps its port,
     * and a new one never takes a port the plan in force uses: otherwise a policy change would point a live
     * redirect, and connections made through it, at another PLC.
     */
    readonly assigned?: Readonly<Record<string, number>>;
  };
}

/**
 * One proxied destination per (protocol, ingress zone, address, port): the
 * nat rule redirects the flow's sources there to `listenPort`, the protocol
 * plugin's proxy serves it against the grants.
 */
export interface SteerPlan {
  /** `protocol|zone name|address|port`: what keeps its listen port from one policy version to the next. */
  readonly key: string;
  readonly protocol: string;
  readonly listenPort: number;
  /** Index of the ingress zone (0 = ports in no zone). */
  readonly zone: number;
  readonly zoneName: string;
  readonly target: { readonly address: string; readonly port: number };
  readonly grants: readonly { readonly flow: string; readonly src: readonly Cidr[]; readonly ops: readonly string[]; readonly mode: Mode }[];
}

export interface PortRanges {
  readonly tcp: readonly (readonly [number, number])[];
  readonly udp: readonly (readonly [number, number])[];
  readonly icmp: boolean;
}

export interface RulePlan {
  readonly flow: string;
  readonly action: 'allow' | 'deny';
  /** Empty = any source address (in the chain's ingress zone). */
  readonly src: readonly Cidr[];
  readonly dst: readonly Cidr[];
  readonly services: PortRanges;
}

export interface ChainPlan {
  /** nft chain name: `pair_<i>_<j>` or `in_<i>` (zone indexes, so zone names never meet nft's grammar). */
  readonly name: string;
  readonly kind: 'pair' | 'input';
  readonly from: string;
  /** Zone name, or GATEWAY for the input chains. */
  readonly to: string;
  readonly mode: Mode;
  readonly rules: readonly RulePlan[];
}

export interface ZonePlan {
  readonly name: string;
  /** 1-based, by name: stable when zones are listed in another order. */
  readonly index: number;
  readonly kind: Zone['kind'];
  readonly mode: Mode;
  readonly ports: readonly string[];
  /** Interfaces of the bound ports (ports with no interface on this gateway are left out, with a warning). */
  readonly interfaces: readonly string[];
  readonly ethertypes: readonly string[];
}

export interface Plan {
  readonly policy: string;
  readonly version: number;
  readonly digest: string;
  readonly binding: Binding;
  readonly zones: readonly ZonePlan[];
  readonly chains: readonly ChainPlan[];
  /** Traffic that enters or leaves through no zone's port. */
  readonly unzonedMode: Mode;
  readonly safe: boolean;
  readonly learn: boolean;
  readonly trust: 'active' | 'degraded' | 'quarantined';
  readonly warnings: readonly string[];
  /** Where the policy places addresses (assets and zone subnets), for judging tracked connections. */
  readonly addressZones: readonly { readonly cidr: Cidr; readonly zone: number }[];
  /** Destinations served by protocol proxies, ordered by listen port. */
  readonly steered: readonly SteerPlan[];
  /** Flows with `ops` that could not be steered (and are therefore denied), with the reason. */
  readonly unsteered: readonly { readonly flow: string; readonly reason: string }[];
}

export function zoneMode(policy: Policy, zone: Zone): Mode {
  return zone.kind === 'cell' ? (zone.mode ?? policy.mode) : policy.mode;
}

export function buildPlan(validated: ValidatedPolicy, options: PlanOptions): Plan {
  const { policy } = validated;
  const warnings: string[] = [];
  const byName = [...policy.zones].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const zones: ZonePlan[] = byName.map((z, i) => {
    const interfaces: string[] = [];
    for (const port of z.ports) {
      const iface = options.binding.interfaces[port];
      if (iface === undefined) warnings.push(`zone "${z.name}": port ${port} has no interface on this gateway; its traffic is unzoned`);
      else interfaces.push(iface);
    }
    return {
      name: z.name,
      index: i + 1,
      kind: z.kind,
      mode: zoneMode(policy, z),
      ports: z.ports,
      interfaces,
      ethertypes: z.ethertypes ?? [],
    };
  });
  // Ports in no zone (or with no interface here) are one more zone, so traffic from them into a cell is judged
  // in that cell's mode like any other, rather than in the policy's default.
  const unzoned: ZonePlan = { name: UNZONED, index: 0, kind: 'uplink', mode: policy.mode, ports: [], interfaces: [], ethertypes: [] };
  const zoneByName = new Map(zones.map((z) => [z.name, z]));
  const policyZones = new Map(policy.zones.map((z) => [z.name, z]));
  const assets = new Map(policy.assets.map((a) => [a.name, a]));
  const roles = new Map<string, typeof policy.assets>();
  for (const a of policy.assets) {
    for (const r of a.roles) {
      const members = roles.get(r);
      if (members) members.push(a);
      else roles.set(r, [a]);
    }
  }

  const pairMode = (from: ZonePlan, to: ZonePlan): Mode => (to.kind === 'cell' ? to.mode : from.kind === 'cell' ? from.mode : policy.mode);
  const chains = new Map<string, { plan: Omit<ChainPlan, 'rules'>; rules: RulePlan[] }>();
  for (const from of [unzoned, ...zones]) {
    for (const to of [unzoned, ...zones]) {
      const name = `pair_${from.index}_${to.index}`;
      chains.set(name, { plan: { name, kind: 'pair', from: from.name, to: to.name, mode: pairMode(from, to) }, rules: [] });
    }
    const name = `in_${from.index}`;
    chains.set(name, { plan: { name, kind: 'input', from: from.name, to: GATEWAY, mode: from.mode }, rules: [] });
  }
  if (options.binding.mode === 'bridge') {
    // A bridge does not route: traffic the gateway would route between its own bridge ports (someone using its
    // management address as a router) cannot be matched to a zone pair, so it is judged as strictly as the strictest cell.
    const strict: Mode = zones.some((z) => z.kind === 'cell' && z.mode === 'enforce') ? 'enforce' : policy.mode;
    chains.set('routed', { plan: { name: 'routed', kind: 'pair', from: UNZONED, to: UNZONED, mode: strict }, rules: [] });
  }

  const trust = options.trust ?? 'active';
  const kept = options.safe || (trust === 'quarantined' && policy.safe.length > 0) ? new Set(policy.safe) : undefined;
  // Deny flows first: validation guarantees no deny overlaps an allow, so order only decides which counter a packet hits.
  const ordered = [...policy.flows.filter((f) => f.action === 'deny'), ...policy.flows.filter((f) => f.action === 'allow')];
  const steers = new Map<string, { protocol: string; zone: ZonePlan; target: { address: string; port: number }; grants: SteerPlan['grants'][number][] }>();
  const unsteered: { flow: string; reason: string }[] = [];
  for (const flow of ordered) {
    if (kept && !kept.has(flow.id)) continue;
    if (flow.trust && !flow.trust.includes(trust)) continue;
    const resolved = resolveFlow(flow, policyZones, assets, roles);
    const services = portRanges(flow.services);
    const ops = flow.ops ? Object.entries(flow.ops)[0] : undefined;
    if (ops) {
      // Never fall back to a plain allow: without its proxy, a flow limited to reads would also carry writes.
      if (options.binding.mode !== 'routed')
        unsteered.push({ flow: flow.id, reason: 'protocol proxies need routed mode (a bridge cannot redirect to the gateway)' });
      else if (!options.proxyPorts) unsteered.push({ flow: flow.id, reason: 'no proxy port range is configured (enforce.proxyPorts)' });
      else {
        for (const from of resolved.from) {
          const fromZone = zoneByName.get(from.zone);
          if (!fromZone) continue;
          for (const dst of resolved.to) {
            const toZone = zoneByName.get(dst.zone);
            if (!toZone) continue;
            if (toZone === fromZone) {
              // Hosts on one segment talk directly: their traffic never passes the gateway, so it cannot be proxied.
              unsteered.push({
                flow: flow.id,
                reason: `traffic inside zone "${fromZone.name}" does not pass the gateway, so its operations cannot be checked`,
              });
              continue;
            }
            for (const cidr of dst.cidrs) {
              for (const [port] of services.tcp) {
                const key = `${ops[0]}|${fromZone.name}|${cidr.text.replace(/\/32$/, '')}|${port}`;
                let entry = steers.get(key);
                if (!entry) {
                  entry = { protocol: ops[0], zone: fromZone, target: { address: cidr.text.replace(/\/32$/, ''), port }, grants: [] };
                  steers.set(key, entry);
                }
                entry.grants.push({ flow: flow.id, src: from.cidrs, ops: ops[1], mode: pairMode(fromZone, toZone) });
              }
            }
          }
        }
      }
      continue;
    }
    for (const src of resolved.from) {
      const fromZone = zoneByName.get(src.zone);
      if (!fromZone) continue;
      for (const dst of resolved.to) {
        const chainName = dst.zone === GATEWAY ? `in_${fromZone.index}` : `pair_${fromZone.index}_${zoneByName.get(dst.zone)?.index}`;
        const chain = chains.get(chainName);
        if (!chain) continue;
        chain.rules.push({ flow: flow.id, action: flow.action, src: src.cidrs, dst: dst.cidrs, services });
      }
    }
  }
  const steered: SteerPlan[] = [];
  const range = options.proxyPorts;
  const assigned = range?.assigned ?? {};
  const inRange = (p: number | undefined): p is number => p !== undefined && range !== undefined && p >= range.from && p <= range.to;
  const taken = new Set(Object.values(assigned).filter(inRange));
  let next = range?.from ?? 0;
  // Destinations that had a port keep it; the others get the lowest ports nobody in the plan in force uses.
  const keys = [...steers.keys()].sort();
  const ports = new Map<string, number>();
  for (const key of keys) if (inRange(assigned[key])) ports.set(key, assigned[key] as number);
  for (const key of keys) {
    if (ports.has(key) || !range) continue;
    while (next <= range.to && taken.has(next)) next++;
    if (next > range.to) continue;
    ports.set(key, next);
    taken.add(next);
  }
  for (const key of keys) {
    const e = steers.get(key) as NonNullable<ReturnType<typeof steers.get>>;
    const listenPort = ports.get(key);
    if (listenPort === undefined) {
      for (const g of e.grants) unsteered.push({ flow: g.flow, reason: `more proxied destinations than proxy ports ${range?.from}-${range?.to}` });
      continue;
    }
    steered.push({ key, protocol: e.protocol, listenPort, zone: e.zone.index, zoneName: e.zone.name, target: e.target, grants: e.grants });
  }
  steered.sort((a, b) => a.listenPort - b.listenPort);
  return {
    policy: policy.name,
    version: options.version,
    digest: validated.digest,
    binding: options.binding,
    zones,
    chains: [...chains.values()].map((c) => ({ ...c.plan, rules: c.rules })),
    unzonedMode: policy.mode,
    addressZones: [
      ...policy.assets.map((a) => ({ cidr: parseCidr(a.ip) as Cidr, zone: zoneByName.get(a.zone)?.index ?? 0 })),
      ...policy.zones.flatMap((z) => (z.subnets ?? []).map((sn) => ({ cidr: parseCidr(sn) as Cidr, zone: zoneByName.get(z.name)?.index ?? 0 }))),
    ],
    safe: options.safe === true,
    learn: options.learn === true,
    trust,
    warnings,
    steered,
    unsteered: dedupeUnsteered(unsteered),
  };
}

function dedupeUnsteered(list: readonly { flow: string; reason: string }[]): { flow: string; reason: string }[] {
  const seen = new Map(list.map((u) => [`${u.flow}|${u.reason}`, u]));
  return [...seen.values()];
}

function portRanges(services: readonly string[]): PortRanges {
  const tcp: [number, number][] = [];
  const udp: [number, number][] = [];
  let icmp = false;
  for (const s of services) {
    const svc = parseService(s);
    if (svc.proto === 'icmp') icmp = true;
    else (svc.proto === 'tcp' ? tcp : udp).push([svc.from, svc.to]);
  }
  return { tcp: mergeRanges(tcp), udp: mergeRanges(udp), icmp };
}

/** Sorted, overlapping and adjacent ranges merged: nft refuses overlapping elements in an interval set. */
export function mergeRanges(ranges: readonly (readonly [number, number])[]): [number, number][] {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [lo, hi] of sorted) {
    const last = out[out.length - 1];
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** One packet as the kernel would see it at the start of a new connection. */
export interface Probe {
  /** Board port it arrives on; undefined = a port in no zone. */
  readonly inPort: string | undefined;
  /** Board port it leaves by, or 'gateway' for traffic to the gateway itself. */
  readonly outPort: string | 'gateway' | undefined;
  readonly src: string;
  readonly dst: string;
  readonly proto: 'tcp' | 'udp' | 'icmp' | 'other';
  /** Destination port (tcp/udp). */
  readonly dport?: number;
}

export interface Decision {
  readonly verdict: 'accept' | 'drop';
  /** The flow that matched, or `default` (the chain's default deny), or `unzoned`. */
  readonly rule: string;
  readonly chain: string | undefined;
  readonly mode: Mode;
  /** True when the policy says deny (in observe mode the verdict is still accept). */
  readonly denied: boolean;
}

export function zoneOfPort(plan: Plan, port: string | undefined): ZonePlan | undefined {
  if (port === undefined) return undefined;
  return plan.zones.find((z) => z.ports.includes(port) && z.interfaces.includes(plan.binding.interfaces[port] ?? '\u0000'));
}

export function chainFor(plan: Plan, probe: Pick<Probe, 'inPort' | 'outPort'>): ChainPlan | undefined {
  const from = zoneOfPort(plan, probe.inPort)?.index ?? 0;
  if (probe.outPort === 'gateway') return plan.chains.find((c) => c.name === `in_${from}`);
  const to = zoneOfPort(plan, probe.outPort)?.index ?? 0;
  return plan.chains.find((c) => c.name === `pair_${from}_${to}`);
}

/** What the compiled ruleset does with the first packet of a connection (the kernel-independent twin of the nft rules). */
export function evaluate(plan: Plan, probe: Probe): Decision {
  const chain = chainFor(plan, probe);
  if (!chain) throw new TypeError('every port pair has a chain');
  return judge(chain, probe);
}

/** The verdict of one chain for the first packet of a connection. */
export function judge(chain: ChainPlan, probe: Pick<Probe, 'src' | 'dst' | 'proto' | 'dport'>): Decision {
  const src = ipToNumber(probe.src);
  const dst = ipToNumber(probe.dst);
  const inSet = (cidrs: readonly Cidr[], ip: number) => cidrs.length === 0 || cidrs.some((c) => ip >= c.base && ip <= c.base + 2 ** (32 - c.bits) - 1);
  for (const rule of chain.rules) {
    if (!inSet(rule.src, src) || !inSet(rule.dst, dst)) continue;
    const s = rule.services;
    const hit =
      probe.proto === 'icmp'
        ? s.icmp
        : probe.proto === 'tcp' || probe.proto === 'udp'
          ? s[probe.proto].some(([lo, hi]) => (probe.dport ?? -1) >= lo && (probe.dport ?? -1) <= hi)
          : false;
    if (!hit) continue;
    const denied = rule.action === 'deny';
    return { verdict: denied && chain.mode === 'enforce' ? 'drop' : 'accept', rule: rule.flow, chain: chain.name, mode: chain.mode, denied };
  }
  return { verdict: chain.mode === 'enforce' ? 'drop' : 'accept', rule: 'default', chain: chain.name, mode: chain.mode, denied: true };
}

/** Address literal check for probes typed by people (CLI, config). */
export function isIpv4Address(text: string): boolean {
  const c = parseCidr(text);
  return c !== undefined && c.bits === 32;
}

export interface TrackedConnection {
  readonly proto: 'tcp' | 'udp';
  readonly src: string;
  readonly dst: string;
  readonly sport: number;
  readonly dport: number;
  /** Set when the reply comes from elsewhere than the original destination (redirected to a proxy). */
  readonly replySrc?: string;
}

/**
 * Established connections the plan no longer allows. The kernel's fast path
 * keeps established connections without looking at the rules, so after a
 * policy tightens, those are forgotten (conntrack) and their next packet is
 * judged afresh. Conservative: a connection is picked only if every zone its
 * addresses could be in denies it in enforce mode; one whose addresses the
 * policy does not place at all, or that involves the gateway itself, is left.
 */
export function connectionsToRevoke(plan: Plan, connections: readonly TrackedConnection[], local: readonly string[]): TrackedConnection[] {
  const all = [0, ...plan.zones.map((z) => z.index)];
  const zonesOf = (ip: string): number[] => {
    const n = ipToNumber(ip);
    return [...new Set(plan.addressZones.filter((a) => n >= a.cidr.base && n <= a.cidr.base + 2 ** (32 - a.cidr.bits) - 1).map((a) => a.zone))];
  };
  const chains = new Map(plan.chains.map((c) => [c.name, c]));
  const steered = steeredConnections(plan, connections, local);
  return connections.filter((c) => {
    if (steered.includes(c)) return true;
    if (local.includes(c.src) || local.includes(c.dst) || !isIpv4Address(c.src) || !isIpv4Address(c.dst)) return false;
    // Served by a protocol proxy on the gateway: the proxy judges it, and closes it when its route goes.
    if (c.replySrc !== undefined && local.includes(c.replySrc)) return false;
    const srcZones = zonesOf(c.src);
    const dstZones = zonesOf(c.dst);
    if (srcZones.length === 0 && dstZones.length === 0) return false;
    for (const s of srcZones.length > 0 ? srcZones : all) {
      for (const d of dstZones.length > 0 ? dstZones : all) {
        const chain = chains.get(`pair_${s}_${d}`);
        if (chain?.mode !== 'enforce') return false;
        if (!judge(chain, { src: c.src, dst: c.dst, proto: c.proto, dport: c.dport }).denied) return false;
      }
    }
    return true;
  });
}

/**
 * Connections to a steered destination that do not go through its proxy (they
 * were open before the flow got operations, in any mode): forgotten, so their
 * next packet meets the redirect and the client reconnects through the proxy.
 */
export function steeredConnections(plan: Plan, connections: readonly TrackedConnection[], local: readonly string[]): TrackedConnection[] {
  if (plan.steered.length === 0) return [];
  return connections.filter((c) => {
    if (c.proto !== 'tcp' || local.includes(c.src) || (c.replySrc !== undefined && local.includes(c.replySrc)) || !isIpv4Address(c.src)) return false;
    const src = ipToNumber(c.src);
    return plan.steered.some(
      (st) =>
        st.target.address === c.dst &&
        st.target.port === c.dport &&
        st.grants.some((g) => g.src.length === 0 || g.src.some((cidr) => src >= cidr.base && src <= cidr.base + 2 ** (32 - cidr.bits) - 1)),
    );
  });
}

/** Which port each steered destination has (SteerPlan.key → listen port): what the next plan must keep. */
export function proxyAssignment(plan: Plan | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const st of plan?.steered ?? []) out[st.key] = st.listenPort;
  return out;
}
