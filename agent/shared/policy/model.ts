import { createHash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import YAML from 'yaml';
import { z } from 'zod';
import { ErrorCodes, WardError } from '../../core/errors.js';
import { canonicalize } from '../canonical.js';

/**
 * The segmentation policy (DESIGN.md §6), shared by the controller (which
 * signs it) and the agent (which compiles it). Pure: text in, checked model
 * out. Shape is checked by zod; meaning (references, overlaps, conflicts) by
 * `validatePolicy`, which collects every problem with the path an operator
 * needs to fix it, rather than stopping at the first.
 *
 * IPv4 only for assets: the PLC/CNC networks Ward fronts are IPv4; IPv6 is
 * default-denied on cell zones (new connections), which the compiler says.
 */
export const POLICY_SCHEMA_ID = 'ward.policy/v1';

const NAME = /^[a-z][a-z0-9-]{0,30}$/;
const name = z.string().regex(NAME, 'expected a lower-case name: letter first, then letters, digits or "-", at most 31');
/** Board port names (hardware profile): UPLINK, PLC1, … */
const portName = z.string().regex(/^(UPLINK|PLC[0-9]{1,2}|ETH[0-9]{1,2})$/, 'expected a board port name such as UPLINK or PLC1');
const ipv4OrCidr = z.string().refine((s) => parseCidr(s) !== undefined, 'expected an IPv4 address or CIDR (198.18.1.10 or 198.18.1.0/24)');
const mac = z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'expected a lower-case MAC address aa:bb:cc:dd:ee:ff');
const comment = z.string().max(200).optional();

export const MODES = ['observe', 'enforce'] as const;
export type Mode = (typeof MODES)[number];

const TUNNELLING_ETHERTYPES = ['0x8100', '0x88a8', '0x9100', '0x8863', '0x8864'];

const zoneSchema = z.strictObject({
  name,
  /** `uplink`: the IT/management side; `cell`: PLC/CNC ports that Ward protects. */
  kind: z.enum(['uplink', 'cell']).default('cell'),
  ports: z.array(portName).min(1).max(16),
  /** Overrides the policy's mode for flows judged in this zone. */
  mode: z.enum(MODES).optional(),
  /** Address ranges expected in this zone; assets must fall inside them when given. */
  subnets: z.array(ipv4OrCidr).max(64).optional(),
  /** Bridge mode: extra EtherTypes (hex, e.g. 0x8892 PROFINET) allowed from this zone's ports besides IPv4 and ARP. */
  ethertypes: z
    .array(
      z
        .string()
        .regex(/^0x[0-9a-f]{4}$/)
        // br_netfilter does not look inside these, so allowing them would carry IP traffic past the policy.
        .refine((t) => !TUNNELLING_ETHERTYPES.includes(t), 'VLAN (0x8100, 0x88a8, 0x9100) and PPPoE (0x8863, 0x8864) frames would carry IP past the policy'),
    )
    .max(16)
    .optional(),
  comment,
});

const assetSchema = z.strictObject({
  name,
  zone: name,
  ip: ipv4OrCidr,
  mac: mac.optional(),
  kind: z.enum(['plc', 'cnc', 'hmi', 'workstation', 'historian', 'server', 'robot', 'drive', 'other']).default('other'),
  roles: z.array(name).max(16).default([]),
  comment,
});

/** `tcp/502`, `udp/161`, `tcp/20000-20010`, `icmp`. */
const SERVICE = /^(?:(tcp|udp)\/([0-9]{1,5})(?:-([0-9]{1,5}))?|icmp)$/;
const service = z.string().regex(SERVICE, 'expected tcp/<port>, udp/<port>, tcp/<from>-<to> or icmp');

/** `asset:<name>`, `role:<name>`, `zone:<name>`, `any`; destinations may also be `gateway` (the gateway itself). */
const SELECTOR = /^(?:(asset|role|zone):([a-z][a-z0-9-]{0,30})|any|gateway)$/;
const selector = z.string().regex(SELECTOR, 'expected asset:<name>, role:<name>, zone:<name>, any or gateway');
const selectors = z.union([selector, z.array(selector).min(1).max(64)]).transform((v) => (typeof v === 'string' ? [v] : v));

const flowSchema = z.strictObject({
  id: name,
  action: z.enum(['allow', 'deny']).default('allow'),
  from: selectors,
  to: selectors,
  services: z.array(service).min(1).max(64),
  /** Protocol operations (`modbus: [read]`), enforced by a plugin's proxy. */
  ops: z.record(z.string(), z.array(z.string()).max(64)).optional(),
  /**
   * The gateway trust states (attestation) in which the flow applies; default all. `[active]` on a write flow and
   * a read-only twin for `[active, degraded]` make a suspect gateway fall back to reads instead of cutting the line.
   */
  trust: z
    .array(z.enum(['active', 'degraded', 'quarantined']))
    .min(1)
    .max(3)
    .optional(),
  comment,
});

export const policySchema = z.strictObject({
  schema: z.literal(POLICY_SCHEMA_ID),
  /** A name for people ("line-3-press"); the version comes from the signed envelope. */
  name,
  /** Default mode for every zone without its own. */
  mode: z.enum(MODES).default('observe'),
  /**
   * What the gateway does when the agent dies or the controller stays unreachable:
   * keep the last policy in the kernel (default), or load the `safe` flows.
   */
  failMode: z
    .strictObject({
      kind: z.enum(['keep-last', 'safe']).default('keep-last'),
      /** Controller silence after which the safe flows take over (kind: safe). */
      afterSeconds: z
        .number()
        .int()
        .min(60)
        .max(30 * 86_400)
        .default(86_400),
    })
    .default({ kind: 'keep-last', afterSeconds: 86_400 }),
  zones: z.array(zoneSchema).min(1).max(64),
  assets: z.array(assetSchema).max(20_000).default([]),
  flows: z.array(flowSchema).max(20_000).default([]),
  /** Flows (ids from `flows`) kept in force in safe mode; every other flow is dropped then. */
  safe: z.array(name).max(20_000).default([]),
  comment,
});

export type PolicyInput = z.input<typeof policySchema>;
export type Policy = z.output<typeof policySchema>;
export type Zone = Policy['zones'][number];
export type Asset = Policy['assets'][number];
export type Flow = Policy['flows'][number];

export interface Cidr {
  /** Network address as an unsigned 32-bit number. */
  readonly base: number;
  readonly bits: number;
  readonly text: string;
}

export function parseCidr(text: string): Cidr | undefined {
  const [addr, len, extra] = text.split('/');
  if (extra !== undefined || addr === undefined || !isIPv4(addr)) return undefined;
  const bits = len === undefined ? 32 : Number(len);
  if (!Number.isInteger(bits) || bits < 0 || bits > 32 || (len !== undefined && !/^[0-9]{1,2}$/.test(len))) return undefined;
  const n = addr.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  if ((n & ~mask) >>> 0 !== 0) return undefined; // host bits set: "198.18.1.5/24" is ambiguous, refuse it
  return { base: n >>> 0, bits, text: bits === 32 ? addr : `${addr}/${bits}` };
}

export function cidrEnd(c: Cidr): number {
  return c.base + 2 ** (32 - c.bits) - 1;
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.base <= cidrEnd(b) && b.base <= cidrEnd(a);
}

export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return outer.base <= inner.base && cidrEnd(inner) <= cidrEnd(outer);
}

export function ipToNumber(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0) >>> 0;
}

export interface Service {
  readonly proto: 'tcp' | 'udp' | 'icmp';
  /** Inclusive port range; [0, 0] for icmp. */
  readonly from: number;
  readonly to: number;
  readonly text: string;
}

export function parseService(text: string): Service {
  const m = SERVICE.exec(text);
  if (!m) throw new TypeError(`not a service: ${text}`);
  if (text === 'icmp') return { proto: 'icmp', from: 0, to: 0, text };
  const from = Number(m[2]);
  const to = m[3] === undefined ? from : Number(m[3]);
  return { proto: m[1] as 'tcp' | 'udp', from, to, text };
}

export function servicesOverlap(a: Service, b: Service): boolean {
  return a.proto === b.proto && a.from <= b.to && b.from <= a.to;
}

export interface PolicyProblem {
  readonly path: string;
  readonly message: string;
}

/** Things the checker needs from where the policy will run (all optional: the controller knows less than the agent). */
export interface ValidationContext {
  /** Port names this gateway has; an unknown port is then an error. */
  readonly ports?: readonly string[];
  /** What the loaded protocol plugins accept under a flow's `ops`, by protocol key (plugins/api ProtocolDescription). */
  readonly protocols?: Readonly<Record<string, ProtocolOps>>;
}

/** The part of a protocol plugin's description the checker needs. */
export interface ProtocolOps {
  check(ops: readonly string[]): string[];
}

/**
 * A flow with protocol operations is served by the plugin's inline proxy: the
 * compiler redirects its connections to a proxy port per destination, and the
 * proxy connects on to that destination, so each destination must be one
 * address (an asset, or a role of assets, with a /32) and each service one TCP
 * port. One protocol per flow: a port speaks one protocol.
 */
function checkOps(
  flow: Flow,
  path: string,
  ctx: ValidationContext,
  assets: ReadonlyMap<string, Asset>,
  roles: ReadonlyMap<string, readonly Asset[]>,
  add: (path: string, message: string) => void,
): void {
  const entries = Object.entries(flow.ops ?? {});
  if (entries.length === 0) return;
  if (flow.action !== 'allow') add(`${path}.ops`, 'protocol operations narrow what a flow allows; a deny flow cannot have them');
  if (entries.length > 1) add(`${path}.ops`, `one protocol per flow (a port speaks one protocol); found ${entries.map(([k]) => k).join(', ')}`);
  for (const [protocol, ops] of entries) {
    const known = ctx.protocols?.[protocol];
    if (known === undefined) {
      add(`${path}.ops.${protocol}`, `protocol operations need the "${protocol}" plugin's proxy, which this gateway does not have`);
      continue;
    }
    if (ops.length === 0) add(`${path}.ops.${protocol}`, 'an empty list allows nothing: remove the flow, or name the operations');
    for (const problem of known.check(ops)) add(`${path}.ops.${protocol}`, problem);
  }
  flow.services.forEach((s, j) => {
    const svc = parseService(s);
    if (svc.proto !== 'tcp' || svc.from !== svc.to)
      add(`${path}.services.${j}`, `a flow with protocol operations takes single TCP ports (like tcp/502), not ${s}: its proxy listens per destination port`);
  });
  flow.to.forEach((sel, j) => {
    const m = SELECTOR.exec(sel);
    const members = m?.[1] === 'asset' ? [assets.get(m[2] as string)] : m?.[1] === 'role' ? (roles.get(m[2] as string) ?? []) : undefined;
    if (members === undefined) {
      add(`${path}.to.${j}`, `a flow with protocol operations goes to assets or roles (its proxy connects to each one), not ${sel}`);
      return;
    }
    for (const a of members) {
      if (a && parseCidr(a.ip)?.bits !== 32) add(`${path}.to.${j}`, `asset "${a.name}" is a subnet (${a.ip}); the proxy needs one address per destination`);
    }
  });
}

export interface ValidatedPolicy {
  readonly policy: Policy;
  /** SHA-256 of the canonical JSON of the checked policy (what the attestation measures). */
  readonly digest: string;
}

/** Parses YAML or JSON policy text (the format an operator edits and `ward enforce propose` writes). */
export function parsePolicyText(text: string, ctx: ValidationContext = {}): ValidatedPolicy {
  let data: unknown;
  try {
    data = YAML.parse(text, { uniqueKeys: true });
  } catch (cause) {
    const why = cause instanceof Error ? cause.message.split('\n')[0] : String(cause);
    throw new WardError(ErrorCodes.POLICY_INVALID, `policy is not valid YAML/JSON: ${why}`, {
      cause,
      details: { problems: [{ path: '(root)', message: why }] },
    });
  }
  return checkPolicy(data, ctx);
}

/** Shape and meaning; throws WARD_POLICY_INVALID listing every problem. */
export function checkPolicy(data: unknown, ctx: ValidationContext = {}): ValidatedPolicy {
  const shaped = policySchema.safeParse(data);
  if (!shaped.success) {
    const problems = shaped.error.issues.map((issue) => {
      const keys = (issue as { keys?: string[] }).keys;
      const path = issue.path.map(String).join('.') || '(root)';
      return { path, message: issue.code === 'unrecognized_keys' && keys ? `unknown field(s) ${keys.join(', ')}` : issue.message };
    });
    throw invalid(problems);
  }
  const problems = validatePolicy(shaped.data, ctx);
  if (problems.length > 0) throw invalid(problems);
  return { policy: shaped.data, digest: policyDigest(shaped.data) };
}

export function policyDigest(policy: Policy): string {
  return createHash('sha256').update(canonicalize(policy)).digest('hex');
}

function invalid(problems: readonly PolicyProblem[]): WardError {
  const shown = problems.slice(0, 20).map((p) => `${p.path}: ${p.message}`);
  const more = problems.length > shown.length ? ` (and ${problems.length - shown.length} more)` : '';
  return new WardError(ErrorCodes.POLICY_INVALID, `policy is invalid: ${shown.join('; ')}${more}`, { details: { problems } });
}

/** Every semantic problem of a shape-checked policy (empty when it is sound). */
export function validatePolicy(policy: Policy, ctx: ValidationContext = {}): PolicyProblem[] {
  const problems: PolicyProblem[] = [];
  const add = (path: string, message: string) => problems.push({ path, message });

  const zones = new Map<string, Zone>();
  const portOwner = new Map<string, string>();
  policy.zones.forEach((zone, i) => {
    if (zones.has(zone.name)) add(`zones.${i}.name`, `zone "${zone.name}" is defined twice`);
    zones.set(zone.name, zone);
    zone.ports.forEach((port, j) => {
      const owner = portOwner.get(port);
      if (owner !== undefined && owner !== zone.name) add(`zones.${i}.ports.${j}`, `port ${port} is already bound to zone "${owner}"`);
      else if (owner === zone.name) add(`zones.${i}.ports.${j}`, `port ${port} is listed twice`);
      portOwner.set(port, zone.name);
      if (ctx.ports && !ctx.ports.includes(port)) add(`zones.${i}.ports.${j}`, `this gateway has no port ${port} (it has ${ctx.ports.join(', ')})`);
    });
    if (zone.kind === 'uplink' && zone.mode !== undefined)
      add(`zones.${i}.mode`, 'an uplink zone has no mode of its own: flows are judged in the mode of the cell they reach');
  });
  if (zones.size > 250) add('zones', 'at most 250 zones');

  const assets = new Map<string, Asset>();
  const assetCidrs: { asset: Asset; cidr: Cidr; index: number }[] = [];
  const roles = new Map<string, Asset[]>();
  policy.assets.forEach((asset, i) => {
    if (assets.has(asset.name)) add(`assets.${i}.name`, `asset "${asset.name}" is defined twice`);
    assets.set(asset.name, asset);
    const zone = zones.get(asset.zone);
    if (zone === undefined) add(`assets.${i}.zone`, `unknown zone "${asset.zone}"`);
    const cidr = parseCidr(asset.ip) as Cidr;
    if (zone?.subnets && !zone.subnets.some((s) => cidrContains(parseCidr(s) as Cidr, cidr))) {
      add(`assets.${i}.ip`, `${asset.ip} is outside zone "${asset.zone}"'s subnets ${zone.subnets.join(', ')}`);
    }
    for (const role of asset.roles) {
      const members = roles.get(role);
      if (members) members.push(asset);
      else roles.set(role, [asset]);
    }
    assetCidrs.push({ asset, cidr, index: i });
  });
  // One address in two zones would make the zone of a packet ambiguous (and anti-spoofing meaningless).
  const sorted = [...assetCidrs].sort((a, b) => a.cidr.base - b.cidr.base || b.cidr.bits - a.cidr.bits);
  for (let i = 0; i < sorted.length; i++) {
    const a = sorted[i] as (typeof sorted)[number];
    for (let j = i + 1; j < sorted.length; j++) {
      const b = sorted[j] as (typeof sorted)[number];
      if (b.cidr.base > cidrEnd(a.cidr)) break;
      if (a.asset.zone !== b.asset.zone) {
        add(`assets.${b.index}.ip`, `${b.asset.ip} ("${b.asset.name}") overlaps ${a.asset.ip} ("${a.asset.name}") in another zone: an asset is in two zones`);
      } else if (a.cidr.bits === 32 && b.cidr.bits === 32) {
        add(`assets.${b.index}.ip`, `"${b.asset.name}" has the same address as "${a.asset.name}"`);
      }
    }
  }
  for (let i = 0; i < policy.zones.length; i++) {
    for (let j = i + 1; j < policy.zones.length; j++) {
      const zi = policy.zones[i] as Zone;
      const zj = policy.zones[j] as Zone;
      for (const si of zi.subnets ?? []) {
        for (const sj of zj.subnets ?? []) {
          if (cidrsOverlap(parseCidr(si) as Cidr, parseCidr(sj) as Cidr)) add(`zones.${j}.subnets`, `${sj} overlaps ${si} of zone "${zi.name}"`);
        }
      }
    }
  }

  const flowIds = new Set<string>();
  const resolved: { flow: Flow; index: number; sides: ResolvedFlow }[] = [];
  policy.flows.forEach((flow, i) => {
    if (flowIds.has(flow.id)) add(`flows.${i}.id`, `flow id "${flow.id}" is used twice`);
    flowIds.add(flow.id);
    const check = (sel: string, path: string, side: 'from' | 'to') => {
      const m = SELECTOR.exec(sel) as RegExpExecArray;
      if (sel === 'gateway' && side === 'from') add(path, '"gateway" can only be a destination (the gateway\'s own traffic is not filtered)');
      if (m[1] === 'asset' && !assets.has(m[2] as string)) add(path, `unknown asset "${m[2]}"`);
      if (m[1] === 'role' && !roles.has(m[2] as string)) add(path, `unknown role "${m[2]}" (no asset has it)`);
      if (m[1] === 'zone' && !zones.has(m[2] as string)) add(path, `unknown zone "${m[2]}"`);
    };
    flow.from.forEach((s, j) => {
      check(s, `flows.${i}.from.${j}`, 'from');
    });
    flow.to.forEach((s, j) => {
      check(s, `flows.${i}.to.${j}`, 'to');
    });
    flow.services.forEach((s, j) => {
      const svc = parseService(s);
      if (svc.proto !== 'icmp' && (svc.from < 1 || svc.to > 65_535)) add(`flows.${i}.services.${j}`, `port out of range 1-65535 in ${s}`);
      else if (svc.from > svc.to) add(`flows.${i}.services.${j}`, `empty port range ${s}`);
    });
    if (flow.to.includes('gateway') && flow.to.length > 1) add(`flows.${i}.to`, '"gateway" cannot be mixed with other destinations in one flow');
    if (flow.ops !== undefined) checkOps(flow, `flows.${i}`, ctx, assets, roles, add);
    resolved.push({ flow, index: i, sides: resolveFlow(flow, zones, assets, roles) });
  });
  policy.safe.forEach((id, i) => {
    if (!flowIds.has(id)) add(`safe.${i}`, `unknown flow "${id}"`);
  });
  if (policy.failMode.kind === 'safe' && policy.safe.length === 0) {
    add('safe', 'failMode "safe" needs the list of flows kept in safe mode (an empty list would block the line; say so with failMode keep-last instead)');
  }

  // A deny overlapping an allow would make the outcome depend on rule order, which a reviewer cannot see.
  const allows = resolved.filter((r) => r.flow.action === 'allow');
  for (const d of resolved.filter((r) => r.flow.action === 'deny')) {
    for (const a of allows) {
      if (flowsOverlap(d.sides, a.sides, d.flow, a.flow)) {
        add(`flows.${d.index}`, `deny flow "${d.flow.id}" contradicts allow flow "${a.flow.id}" (they match the same traffic)`);
      }
    }
  }
  return problems;
}

/** What a flow's selectors mean in addresses, per zone. `undefined` addresses = the whole zone. */
export interface Endpoint {
  readonly zone: string;
  /** Empty = any address in the zone. */
  readonly cidrs: readonly Cidr[];
}

export interface ResolvedFlow {
  readonly from: readonly Endpoint[];
  /** `gateway` destinations resolve to `{ zone: '@gateway' }`. */
  readonly to: readonly Endpoint[];
}

export const GATEWAY = '@gateway';

export function resolveFlow(
  flow: Flow,
  zones: ReadonlyMap<string, Zone>,
  assets: ReadonlyMap<string, Asset>,
  roles: ReadonlyMap<string, readonly Asset[]>,
): ResolvedFlow {
  const side = (sels: readonly string[]): Endpoint[] => {
    const byZone = new Map<string, Cidr[] | 'all'>();
    const addAll = (zone: string) => byZone.set(zone, 'all');
    const addCidr = (zone: string, ip: string) => {
      const cur = byZone.get(zone);
      if (cur === 'all') return;
      const c = parseCidr(ip);
      if (!c) return;
      if (cur) cur.push(c);
      else byZone.set(zone, [c]);
    };
    for (const sel of sels) {
      const m = SELECTOR.exec(sel);
      if (!m) continue;
      if (sel === 'any') for (const z of zones.keys()) addAll(z);
      else if (sel === 'gateway') addAll(GATEWAY);
      else if (m[1] === 'zone' && zones.has(m[2] as string)) addAll(m[2] as string);
      else if (m[1] === 'asset') {
        const a = assets.get(m[2] as string);
        if (a) addCidr(a.zone, a.ip);
      } else if (m[1] === 'role') for (const a of roles.get(m[2] as string) ?? []) addCidr(a.zone, a.ip);
    }
    return [...byZone].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([zone, c]) => ({ zone, cidrs: c === 'all' ? [] : dedupeCidrs(c) }));
  };
  return { from: side(flow.from), to: side(flow.to) };
}

function dedupeCidrs(cidrs: readonly Cidr[]): Cidr[] {
  const seen = new Map<string, Cidr>();
  for (const c of cidrs) seen.set(c.text, c);
  return [...seen.values()].sort((a, b) => a.base - b.base || a.bits - b.bits);
}

function endpointsOverlap(a: readonly Endpoint[], b: readonly Endpoint[]): boolean {
  return a.some((ea) =>
    b.some(
      (eb) => ea.zone === eb.zone && (ea.cidrs.length === 0 || eb.cidrs.length === 0 || ea.cidrs.some((ca) => eb.cidrs.some((cb) => cidrsOverlap(ca, cb)))),
    ),
  );
}

function flowsOverlap(a: ResolvedFlow, b: ResolvedFlow, fa: Flow, fb: Flow): boolean {
  if (!endpointsOverlap(a.from, b.from) || !endpointsOverlap(a.to, b.to)) return false;
  return fa.services.some((sa) => fb.services.some((sb) => servicesOverlap(parseService(sa), parseService(sb))));
}
