import { readFileSync } from 'node:fs';
import test from 'ava';
import YAML from 'yaml';
import { renderRuleset } from '../../agent/enforce/compile.js';
import { type Binding, buildPlan, evaluate, proxyAssignment } from '../../agent/enforce/plan.js';
import { checkPolicy, type PolicyInput, type ProtocolOps, parsePolicyText } from '../../agent/shared/policy/model.js';
import modbus from '../../plugins/modbus/index.js';

const LINE = readFileSync(new URL('../fixtures/policies/line.yaml', import.meta.url), 'utf8');
const routed: Binding = { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } };
const bridged: Binding = { mode: 'bridge', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' }, bridge: 'br0' };

function base(): PolicyInput & Record<string, unknown> {
  return YAML.parse(LINE) as PolicyInput & Record<string, unknown>;
}

/** Every problem the checker reports for `data`, as "path: message" lines. */
function problems(data: unknown, ctx = {}): string[] {
  try {
    checkPolicy(data, ctx);
    return [];
  } catch (err) {
    const e = err as { code?: string; details?: { problems?: { path: string; message: string }[] } };
    if (e.code !== 'WARD_POLICY_INVALID') throw err;
    return (e.details?.problems ?? []).map((p) => `${p.path}: ${p.message}`);
  }
}

test('the fixture policy is valid, and its digest is stable', (t) => {
  const a = parsePolicyText(LINE);
  const b = parsePolicyText(LINE);
  t.is(a.policy.name, 'line-3');
  t.is(a.digest, b.digest);
  t.regex(a.digest, /^[0-9a-f]{64}$/);
});

const invalidCases: [string, (p: ReturnType<typeof base>) => void, RegExp][] = [
  [
    'unknown zone of an asset',
    (p) => ((p.assets as { zone: string }[])[0] as { zone: string }).zone === 'it' && Object.assign((p.assets as object[])[0] as object, { zone: 'nope' }),
    /assets\.0\.zone: unknown zone "nope"/,
  ],
  ['unknown zone in a selector', (p) => Object.assign((p.flows as object[])[0] as object, { to: 'zone:cell-z' }), /flows\.0\.to\.0: unknown zone "cell-z"/],
  [
    'unknown asset in a selector',
    (p) => Object.assign((p.flows as object[])[0] as object, { from: 'asset:ghost' }),
    /flows\.0\.from\.0: unknown asset "ghost"/,
  ],
  ['unknown role', (p) => Object.assign((p.flows as object[])[0] as object, { from: 'role:operators' }), /unknown role "operators"/],
  [
    'an asset in two zones (same address in another zone)',
    (p) => (p.assets as object[]).push({ name: 'dup', zone: 'cell-b', ip: '198.18.1.10' }),
    /overlaps 198\.18\.1\.10 \("press-plc"\) in another zone: an asset is in two zones/,
  ],
  [
    "an asset whose subnet overlaps another zone's asset",
    (p) => (p.assets as object[]).push({ name: 'cell-net', zone: 'cell-b', ip: '198.18.1.0/24' }),
    /an asset is in two zones/,
  ],
  [
    'a port bound to two zones',
    (p) => ((p.zones as { ports: string[] }[])[2] as { ports: string[] }).ports.push('PLC1'),
    /port PLC1 is already bound to zone "cell-a"/,
  ],
  [
    'a port out of range',
    (p) => Object.assign((p.flows as object[])[1] as object, { services: ['tcp/70000'] }),
    /flows\.1\.services\.0: port out of range 1-65535/,
  ],
  ['port zero', (p) => Object.assign((p.flows as object[])[1] as object, { services: ['udp/0'] }), /port out of range/],
  ['an empty port range', (p) => Object.assign((p.flows as object[])[1] as object, { services: ['tcp/600-500'] }), /empty port range tcp\/600-500/],
  ['a malformed service', (p) => Object.assign((p.flows as object[])[1] as object, { services: ['modbus'] }), /expected tcp\/<port>/],
  [
    'overlapping contradictory rules',
    (p) => (p.flows as object[]).push({ id: 'no-eng', action: 'deny', from: 'asset:eng-ws', to: 'zone:cell-a', services: ['tcp/500-510'] }),
    /deny flow "no-eng" contradicts allow flow "eng-program"/,
  ],
  ['the gateway as a source', (p) => Object.assign((p.flows as object[])[3] as object, { from: 'gateway' }), /"gateway" can only be a destination/],
  ['a duplicate flow id', (p) => Object.assign((p.flows as object[])[1] as object, { id: 'eng-program' }), /flow id "eng-program" is used twice/],
  ['a duplicate asset name', (p) => (p.assets as object[]).push({ name: 'eng-ws', zone: 'it', ip: '198.18.0.99' }), /asset "eng-ws" is defined twice/],
  [
    'protocol operations without the plugin',
    (p) => Object.assign((p.flows as object[])[1] as object, { ops: { modbus: ['read'] } }),
    /need the "modbus" plugin's proxy/,
  ],
  ['safe fail mode without safe flows', (p) => Object.assign(p, { failMode: { kind: 'safe' } }), /failMode "safe" needs the list of flows/],
  ['a safe flow that does not exist', (p) => Object.assign(p, { safe: ['ghost'] }), /safe\.0: unknown flow "ghost"/],
  [
    'an address with host bits under a prefix',
    (p) => Object.assign((p.assets as object[])[0] as object, { ip: '198.18.0.10/24' }),
    /expected an IPv4 address or CIDR/,
  ],
  ['an unknown field', (p) => Object.assign(p, { flowz: [] }), /unknown field\(s\) flowz/],
  ['a mode on an uplink zone', (p) => Object.assign((p.zones as object[])[0] as object, { mode: 'enforce' }), /an uplink zone has no mode of its own/],
  [
    "an asset outside its zone's subnets",
    (p) => Object.assign((p.zones as object[])[1] as object, { subnets: ['198.18.9.0/24'] }),
    /198\.18\.1\.10 is outside zone "cell-a"'s subnets/,
  ],
];

for (const [name, mutate, expected] of invalidCases) {
  test(`refused with a precise error: ${name}`, (t) => {
    const p = base();
    mutate(p);
    const found = problems(p);
    t.true(
      found.some((line) => expected.test(line)),
      `expected a problem matching ${expected}, got:\n${found.join('\n') || '(none: the policy was accepted)'}`,
    );
  });
}

test('a port this gateway does not have is refused where the ports are known', (t) => {
  t.deepEqual(problems(base(), { ports: ['UPLINK', 'PLC1', 'PLC2'] }), []);
  t.true(problems(base(), { ports: ['UPLINK', 'PLC1'] }).some((l) => /this gateway has no port PLC2/.test(l)));
});

test('protocol operations are checked by the plugin that offers them, and its problems are named', (t) => {
  const p = base();
  Object.assign((p.flows as object[])[1] as object, { services: ['tcp/502'], ops: { modbus: ['read-only', 'flash'] } });
  const found = problems(p, { protocols: { modbus: modbus.protocol as ProtocolOps } });
  t.is(found.length, 1);
  t.regex(found[0] as string, /^flows\.1\.ops\.modbus: "flash": unknown operation "flash"/);
  Object.assign((p.flows as object[])[1] as object, { ops: { modbus: ['read-only', 'write holding 100-119'] } });
  t.deepEqual(problems(p, { protocols: { modbus: modbus.protocol as ProtocolOps } }), []);
});

test('a flow with protocol operations needs single TCP ports, single-address destinations, one protocol and allow', (t) => {
  const ctx = { protocols: { modbus: modbus.protocol as ProtocolOps, other: { check: () => [] } } };
  const p = base();
  Object.assign((p.flows as object[])[1] as object, {
    services: ['tcp/502-503', 'udp/161'],
    to: ['asset:press-plc', 'zone:cell-b'],
    ops: { modbus: ['read-only'], other: ['x'] },
  });
  const found = problems(p, ctx).join('\n');
  t.regex(found, /flows\.1\.services\.0: a flow with protocol operations takes single TCP ports \(like tcp\/502\), not tcp\/502-503/);
  t.regex(found, /flows\.1\.services\.1: .*not udp\/161/);
  t.regex(found, /flows\.1\.to\.1: a flow with protocol operations goes to assets or roles .*not zone:cell-b/);
  t.regex(found, /flows\.1\.ops: one protocol per flow/);
  const deny = base();
  (deny.flows as object[]).push({
    id: 'no-write',
    action: 'deny',
    from: 'asset:historian',
    to: 'asset:mill-cnc',
    services: ['tcp/502'],
    ops: { modbus: ['read-only'] },
  });
  t.regex(problems(deny, ctx).join('\n'), /a deny flow cannot have them/);
  const subnet = base();
  (subnet.assets as object[]).push({ name: 'cell-b-net', zone: 'cell-b', ip: '198.18.2.128/25' });
  Object.assign((subnet.flows as object[])[1] as object, { services: ['tcp/502'], to: 'asset:cell-b-net', ops: { modbus: ['read-only'] } });
  t.regex(problems(subnet, ctx).join('\n'), /asset "cell-b-net" is a subnet \(198\.18\.2\.128\/25\)/);
});

test('YAML syntax errors and duplicate keys are refused with the reason', (t) => {
  const err = t.throws(() => parsePolicyText('schema: ward.policy/v1\nname: a\nname: b\n'));
  t.is((err as { code?: string }).code, 'WARD_POLICY_INVALID');
  t.regex((err as Error).message, /not valid YAML\/JSON/);
});

test('all problems are reported at once, not only the first', (t) => {
  const p = base();
  Object.assign((p.flows as object[])[0] as object, { from: 'asset:ghost' });
  Object.assign((p.flows as object[])[1] as object, { services: ['tcp/0'] });
  t.true(problems(p).length >= 2);
});

// --- compiler -------------------------------------------------------------

test('routed ruleset snapshot (same policy, same text)', (t) => {
  const v = parsePolicyText(LINE);
  const a = renderRuleset(buildPlan(v, { binding: routed, version: 7 }));
  const b = renderRuleset(buildPlan(parsePolicyText(LINE), { binding: routed, version: 7 }));
  t.is(a.script, b.script);
  t.snapshot(a.script);
});

test('bridge ruleset snapshot, with learn mode', (t) => {
  const v = parsePolicyText(LINE);
  t.snapshot(renderRuleset(buildPlan(v, { binding: bridged, version: 7, learn: true })).script);
});

test('the order zones and assets are listed in does not change the ruleset', (t) => {
  const p = base();
  (p.zones as object[]).reverse();
  (p.assets as object[]).reverse();
  const a = renderRuleset(buildPlan(parsePolicyText(LINE), { binding: routed, version: 1 }));
  const b = renderRuleset(buildPlan(checkPolicy(p), { binding: routed, version: 1 }));
  // Only the header's policy digest (of the document as written) differs; the rules and the kernel tag do not.
  const body = (s: string) => s.replace(/^# policy digest .*$/m, '');
  t.is(body(a.script), body(b.script));
  t.is(a.tag, b.tag);
});

test('rule count follows flows, not assets x flows: addresses live in sets', (t) => {
  const withAssets = (n: number) => {
    const p = base();
    for (let i = 0; i < n; i++) (p.assets as object[]).push({ name: `ws-${i}`, zone: 'it', ip: `198.18.0.${100 + i}`, roles: ['engineering'] });
    return renderRuleset(buildPlan(checkPolicy(p), { binding: routed, version: 1 }));
  };
  const few = withAssets(0);
  const many = withAssets(100);
  t.is(many.comments.length, few.comments.length);
  t.true(many.script.includes('198.18.0.199'));
});

test('each flow rule carries a comment naming its policy flow; every chain ends in its default', (t) => {
  const r = renderRuleset(buildPlan(parsePolicyText(LINE), { binding: routed, version: 1 }));
  for (const id of ['eng-program', 'historian-poll', 'cnc-push', 'mgmt-ssh']) t.true(r.comments.includes(`ward:flow:${id}`), id);
  for (const chain of r.plan.chains) t.true(r.comments.includes(`ward:default:${chain.name}`), chain.name);
  // eng-program reaches two cells: one rule in each zone pair's chain, addresses and ports in sets.
  t.regex(
    r.script,
    /chain pair_3_1 \{[^}]*ip saddr \{ 198\.18\.0\.10 \} ip daddr \{ 198\.18\.1\.10 \} tcp dport \{ 502, 4840 \} counter accept comment "ward:flow:eng-program"/,
  );
  t.regex(
    r.script,
    /chain pair_3_2 \{[^}]*ip saddr \{ 198\.18\.0\.10 \} ip daddr \{ 198\.18\.2\.10 \} tcp dport \{ 502, 4840 \} counter accept comment "ward:flow:eng-program"/,
  );
});

test('observe mode turns every default drop into a counted accept', (t) => {
  const p = base();
  p.mode = 'observe';
  const script = renderRuleset(buildPlan(checkPolicy(p), { binding: routed, version: 1 })).script;
  t.false(/counter drop/.test(script), 'no drop in observe mode');
  t.regex(script, /update @d_pair_1_2 .* counter accept comment "ward:default:pair_1_2"/);
});

test('ports without an interface on this gateway are left out with a warning, not an error', (t) => {
  const plan = buildPlan(parsePolicyText(LINE), { binding: { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1' } }, version: 1 });
  t.deepEqual(plan.warnings, ['zone "cell-b": port PLC2 has no interface on this gateway; its traffic is unzoned']);
  t.false(renderRuleset(plan).script.includes('"p2"'));
});

// --- evaluator (what the lockout check and denied-flow attribution rely on) ---

test('evaluator: allowed flows, default deny, lateral PLC-to-PLC, the attacker, the gateway', (t) => {
  const plan = buildPlan(parsePolicyText(LINE), { binding: routed, version: 1 });
  const probe = (inPort: string, outPort: string, src: string, dst: string, proto: 'tcp' | 'udp' | 'icmp', dport?: number) =>
    evaluate(plan, { inPort, outPort, src, dst, proto, ...(dport !== undefined ? { dport } : {}) });
  t.like(probe('UPLINK', 'PLC1', '198.18.0.10', '198.18.1.10', 'tcp', 502), { verdict: 'accept', rule: 'eng-program' });
  t.like(probe('UPLINK', 'PLC1', '198.18.0.20', '198.18.1.10', 'udp', 161), { verdict: 'accept', rule: 'historian-poll' });
  t.like(probe('UPLINK', 'PLC2', '198.18.0.20', '198.18.2.10', 'tcp', 502), { verdict: 'drop', rule: 'default' });
  t.like(probe('UPLINK', 'PLC1', '198.18.0.66', '198.18.1.10', 'tcp', 502), { verdict: 'drop', rule: 'default', denied: true });
  t.like(probe('PLC1', 'PLC2', '198.18.1.10', '198.18.2.10', 'tcp', 502), { verdict: 'drop', rule: 'default' });
  t.like(probe('PLC2', 'UPLINK', '198.18.2.10', '198.18.0.20', 'tcp', 8080), { verdict: 'accept', rule: 'cnc-push' });
  t.like(probe('UPLINK', 'gateway', '198.18.0.66', '198.18.0.1', 'tcp', 22), { verdict: 'accept', rule: 'mgmt-ssh' });
  t.like(probe('PLC1', 'gateway', '198.18.1.10', '198.18.1.1', 'tcp', 22), { verdict: 'drop', rule: 'default' });
  t.like(probe('UPLINK', 'PLC1', '198.18.0.10', '198.18.1.10', 'icmp'), { verdict: 'accept', rule: 'eng-program' });
});

test('evaluator: a cell in observe mode passes would-be denies, and the other cell still enforces', (t) => {
  const p = base();
  Object.assign((p.zones as object[])[1] as object, { mode: 'observe' });
  const plan = buildPlan(checkPolicy(p), { binding: routed, version: 1 });
  t.like(evaluate(plan, { inPort: 'UPLINK', outPort: 'PLC1', src: '198.18.0.66', dst: '198.18.1.10', proto: 'tcp', dport: 102 }), {
    verdict: 'accept',
    denied: true,
    mode: 'observe',
  });
  t.like(evaluate(plan, { inPort: 'UPLINK', outPort: 'PLC2', src: '198.18.0.66', dst: '198.18.2.10', proto: 'tcp', dport: 102 }), {
    verdict: 'drop',
    mode: 'enforce',
  });
});

test('evaluator: safe mode keeps only the safe flows', (t) => {
  const p = base();
  Object.assign(p, { failMode: { kind: 'safe' }, safe: ['historian-poll', 'mgmt-ssh'] });
  const plan = buildPlan(checkPolicy(p), { binding: routed, version: 1, safe: true });
  t.like(evaluate(plan, { inPort: 'UPLINK', outPort: 'PLC1', src: '198.18.0.20', dst: '198.18.1.10', proto: 'udp', dport: 161 }), { verdict: 'accept' });
  t.like(evaluate(plan, { inPort: 'UPLINK', outPort: 'PLC1', src: '198.18.0.10', dst: '198.18.1.10', proto: 'tcp', dport: 502 }), { verdict: 'drop' });
});

test('a flow with Modbus operations is steered to a proxy port in routed mode and never allowed in its pair chain', (t) => {
  const p = base();
  Object.assign((p.flows as object[])[1] as object, { services: ['tcp/502'], ops: { modbus: ['read-only'] } });
  (p.flows as object[]).push({ id: 'eng-tune', from: 'role:engineering', to: 'asset:press-plc', services: ['tcp/1502'], ops: { modbus: ['read-write'] } });
  const validated = checkPolicy(p, { protocols: { modbus: modbus.protocol as ProtocolOps } });
  const plan = buildPlan(validated, { binding: routed, version: 7, proxyPorts: { from: 15020, to: 15029 } });
  t.deepEqual(plan.unsteered, []);
  t.deepEqual(
    plan.steered.map((s) => [
      s.protocol,
      s.listenPort,
      s.zoneName,
      `${s.target.address}:${s.target.port}`,
      s.grants.map((g) => `${g.flow}:${g.mode}:${g.ops.join('+')}`),
    ]),
    [
      ['modbus', 15020, 'it', '198.18.1.10:1502', ['eng-tune:enforce:read-write']],
      ['modbus', 15021, 'it', '198.18.1.10:502', ['historian-poll:enforce:read-only']],
    ],
  );
  const { script } = renderRuleset(plan);
  t.regex(script, /chain steer \{\n\t\ttype nat hook prerouting priority dstnat; policy accept;/);
  t.regex(
    script,
    /iifname \{ "up0" \} ip saddr \{ 198\.18\.0\.20 \} ip daddr 198\.18\.1\.10 tcp dport 502 counter redirect to :15021 comment "ward:steer:historian-poll"/,
  );
  t.regex(
    script,
    /iifname \{ "up0" \} tcp dport 15021 ct status dnat ct original ip daddr 198\.18\.1\.10 ct original proto-dst 502 counter accept comment "ward:proxy:15021"/,
  );
  t.regex(script, /tcp dport \{ 15020, 15021 \} counter drop comment "ward:proxy-guard"/);
  // The pair chain keeps the flow's other services but has no rule of its own for the steered flow.
  t.notRegex(script, /comment "ward:flow:historian-poll"/);
  t.notRegex(script, /comment "ward:flow:eng-tune"/);
  t.is(
    evaluate(plan, { inPort: 'UPLINK', outPort: 'PLC1', src: '198.18.0.20', dst: '198.18.1.10', proto: 'tcp', dport: 502 }).verdict,
    'drop',
    'a connection that escaped the redirect is denied',
  );
});

test('flows with protocol operations are left out, and named, where they cannot be steered', (t) => {
  const p = base();
  Object.assign((p.flows as object[])[1] as object, { services: ['tcp/502'], ops: { modbus: ['read-only'] } });
  const validated = checkPolicy(p, { protocols: { modbus: modbus.protocol as ProtocolOps } });
  const bridge = buildPlan(validated, { binding: bridged, version: 1, proxyPorts: { from: 15020, to: 15029 } });
  t.deepEqual(bridge.unsteered, [{ flow: 'historian-poll', reason: 'protocol proxies need routed mode (a bridge cannot redirect to the gateway)' }]);
  t.notRegex(renderRuleset(bridge).script, /historian-poll/);
  const noPorts = buildPlan(validated, { binding: routed, version: 1 });
  t.regex(noPorts.unsteered[0]?.reason ?? '', /no proxy port range/);
  const full = buildPlan(validated, { binding: routed, version: 1, proxyPorts: { from: 15020, to: 15019 } });
  t.regex(full.unsteered[0]?.reason ?? '', /more proxied destinations than proxy ports/);
});

test('a proxied destination keeps its port from one policy version to the next, and a new one never takes a port in use', (t) => {
  const ctx = { protocols: { modbus: modbus.protocol as ProtocolOps } };
  const p1 = base();
  Object.assign((p1.flows as object[])[1] as object, { services: ['tcp/502'], to: 'asset:mill-cnc', ops: { modbus: ['read-only'] } });
  const v1 = buildPlan(checkPolicy(p1, ctx), { binding: routed, version: 1, proxyPorts: { from: 15020, to: 15029 } });
  t.deepEqual(proxyAssignment(v1), { 'modbus|it|198.18.2.10|502': 15020 });
  // v2 adds a destination that sorts first: without the assignment it would take 15020 from the mill.
  const p2 = base();
  Object.assign((p2.flows as object[])[1] as object, { services: ['tcp/502'], to: ['asset:mill-cnc', 'asset:press-plc'], ops: { modbus: ['read-only'] } });
  const fresh = buildPlan(checkPolicy(p2, ctx), { binding: routed, version: 2, proxyPorts: { from: 15020, to: 15029 } });
  t.is(proxyAssignment(fresh)['modbus|it|198.18.1.10|502'], 15020, 'sorted afresh, press-plc would take the port');
  const v2 = buildPlan(checkPolicy(p2, ctx), { binding: routed, version: 2, proxyPorts: { from: 15020, to: 15029, assigned: proxyAssignment(v1) } });
  t.deepEqual(proxyAssignment(v2), { 'modbus|it|198.18.2.10|502': 15020, 'modbus|it|198.18.1.10|502': 15021 });
  // v3 drops the mill: its port is not handed to anyone else in this step.
  const p3 = base();
  Object.assign((p3.flows as object[])[1] as object, { services: ['tcp/502'], to: 'asset:press-plc', ops: { modbus: ['read-only'] } });
  const v3 = buildPlan(checkPolicy(p3, ctx), { binding: routed, version: 3, proxyPorts: { from: 15020, to: 15029, assigned: proxyAssignment(v2) } });
  t.deepEqual(proxyAssignment(v3), { 'modbus|it|198.18.1.10|502': 15021 });
});

test('operations on traffic inside one zone are refused: it never passes the gateway', (t) => {
  const p = base();
  (p.assets as object[]).push({ name: 'hmi-a', zone: 'cell-a', ip: '198.18.1.20', kind: 'hmi' });
  (p.flows as object[]).push({ id: 'hmi-writes', from: 'asset:hmi-a', to: 'asset:press-plc', services: ['tcp/502'], ops: { modbus: ['read-write'] } });
  const plan = buildPlan(checkPolicy(p, { protocols: { modbus: modbus.protocol as ProtocolOps } }), {
    binding: routed,
    version: 1,
    proxyPorts: { from: 15020, to: 15029 },
  });
  t.deepEqual(plan.unsteered, [{ flow: 'hmi-writes', reason: 'traffic inside zone "cell-a" does not pass the gateway, so its operations cannot be checked' }]);
  t.deepEqual(plan.steered, []);
});

test('writes only while attested active, reads while degraded, safe flows only in quarantine: the README example compiles so', (t) => {
  const p = base();
  p.flows = [
    { id: 'eng-write', from: 'role:engineering', to: 'asset:press-plc', services: ['tcp/502'], ops: { modbus: ['read-write'] }, trust: ['active'] },
    { id: 'eng-read', from: 'role:engineering', to: 'asset:press-plc', services: ['tcp/502'], ops: { modbus: ['read-only'] } },
    { id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] },
  ];
  Object.assign(p, { safe: ['eng-read', 'mgmt-ssh'] });
  const validated = checkPolicy(p, { protocols: { modbus: modbus.protocol as ProtocolOps } });
  const grants = (trust: 'active' | 'degraded' | 'quarantined') =>
    buildPlan(validated, { binding: routed, version: 1, proxyPorts: { from: 15020, to: 15029 }, trust }).steered.flatMap((s) =>
      s.grants.map((g) => `${g.flow}:${g.ops.join('+')}`),
    );
  t.deepEqual(grants('active'), ['eng-write:read-write', 'eng-read:read-only']);
  t.deepEqual(grants('degraded'), ['eng-read:read-only']);
  t.deepEqual(grants('quarantined'), ['eng-read:read-only']);
  const quarantined = buildPlan(validated, { binding: routed, version: 1, proxyPorts: { from: 15020, to: 15029 }, trust: 'quarantined' });
  t.true(
    quarantined.chains.some((c) => c.rules.some((r) => r.flow === 'mgmt-ssh')),
    'management stays reachable',
  );
});
