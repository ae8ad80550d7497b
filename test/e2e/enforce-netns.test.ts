import { spawn } from 'node:child_process';
import test, { type ExecutionContext } from 'ava';
import { type AuditEventInput, MemoryAuditSink } from '../../agent/core/audit.js';
import { Enforcer } from '../../agent/enforce/enforcer.js';
import { FlowMonitor } from '../../agent/enforce/flows.js';
import { Nft } from '../../agent/enforce/nft.js';
import { type Binding, evaluate } from '../../agent/enforce/plan.js';
import type { ValidatedPolicy } from '../../agent/shared/policy/model.js';
import { linePolicy, quietLog } from '../helpers/enforce.js';
import { waitFor } from '../helpers/net.js';
import { createTopology, type Mode, netnsUnavailable, SYSTEM_PATH, systemBinary, type Topology } from '../helpers/netns.js';
import { tempDir } from '../helpers/tmp.js';

/**
 * The "done when", in network namespaces: an engineering workstation,
 * a historian and an attacker on the IT side, two PLCs behind a gateway that
 * routes (routed mode) or bridges (bump-in-the-wire). Real listeners on the
 * PLCs, the real kernel filtering, Ward's real apply path and flow monitor.
 */
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`enforce-netns: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test.serial;

const DENY_MS = 800;

interface Rig {
  topo: Topology;
  enforcer: Enforcer;
  monitor: FlowMonitor;
  audit: MemoryAuditSink;
  nft: Nft;
  policy: (changes?: Parameters<typeof linePolicy>[0]) => ValidatedPolicy;
}

async function rig(t: ExecutionContext, mode: Mode): Promise<Rig> {
  const topo = await createTopology(mode);
  t.teardown(() => topo.destroy());
  const { hosts } = topo;
  await topo.listen(hosts.plc1, { tcp: [502, 4840], udp: [161] });
  await topo.listen(hosts.plc2, { tcp: [502] });
  await topo.listen(hosts.historian, { tcp: [8080] });
  const nft = new Nft({ prefix: topo.gwPrefix });
  const binding: Binding = {
    mode,
    interfaces: { UPLINK: topo.ports.UPLINK, PLC1: topo.ports.PLC1, PLC2: topo.ports.PLC2 },
    ...(topo.bridge ? { bridge: topo.bridge } : {}),
  };
  const audit = new MemoryAuditSink();
  const dir = await tempDir(t, 'ward-enforce-e2e-');
  const enforcer = await Enforcer.open({ nft, dir, binding, audit, log: quietLog, management: [{ port: 'UPLINK', service: 'tcp/22' }] });
  const monitor = new FlowMonitor({ enforcer, nft, audit, log: quietLog, dir, reportEveryMs: 0 });
  enforcer.beforeReplace = () => monitor.tick();
  // In bridge mode every host shares 198.18.0.0/24: the PLCs have .101 and .102 there.
  const policy = (changes: Parameters<typeof linePolicy>[0] = () => {}) =>
    linePolicy((p) => {
      if (mode === 'bridge') {
        for (const a of p.assets ?? []) {
          if (a.name === 'press-plc') a.ip = hosts.plc1.ip;
          if (a.name === 'mill-cnc') a.ip = hosts.plc2.ip;
        }
      }
      changes(p);
    });
  return { topo, enforcer, monitor, audit, nft, policy };
}

/** Applies the line policy, changed by `changes`, as the controller would. */
function applyAs(r: Rig, version: number, changes: Parameters<typeof linePolicy>[0]) {
  return r.enforcer.apply({ validated: r.policy(changes), version, source: 'controller', actor: 'controller' });
}

function denied(audit: MemoryAuditSink, action: string, match: Record<string, unknown>): AuditEventInput | undefined {
  return audit.events.find((e) => e.action === action && Object.entries(match).every(([k, v]) => (e.details as Record<string, unknown>)[k] === v));
}

for (const mode of ['routed', 'bridge'] as const) {
  maybe(`${mode}: allowed flows connect, the attacker and lateral moves fail, and the denied attempts are audit events`, async (t) => {
    const r = await rig(t, mode);
    const { eng, historian, attacker, plc1, plc2 } = r.topo.hosts;
    t.is(await r.topo.tcp(attacker, plc1, 502), 'connected', 'before any policy the flat network lets the attacker in');

    await r.enforcer.apply({ validated: r.policy(), version: 1, source: 'controller', actor: 'controller' });
    t.is(await r.topo.tcp(eng, plc1, 502), 'connected', 'engineering -> PLC1 modbus');
    t.is(await r.topo.tcp(eng, plc2, 502), 'connected', 'engineering -> PLC2 modbus');
    t.is(await r.topo.tcp(eng, plc1, 4840), 'connected', 'engineering -> PLC1 OPC UA');
    t.true(await r.topo.udp(historian, plc1, 161), 'historian -> PLC1 SNMP');
    t.is(await r.topo.tcp(plc2, historian, 8080), 'connected', 'CNC pushes to the historian');

    t.is(await r.topo.tcp(attacker, plc1, 502, DENY_MS), 'timeout', 'attacker -> PLC1');
    t.is(await r.topo.tcp(attacker, plc2, 502, DENY_MS), 'timeout', 'attacker -> PLC2');
    t.false(await r.topo.udp(attacker, plc1, 161, DENY_MS), 'attacker -> PLC1 udp');
    t.is(await r.topo.tcp(historian, plc2, 502, DENY_MS), 'timeout', 'historian has no flow to PLC2');
    t.is(await r.topo.tcp(plc1, plc2, 502, DENY_MS), 'timeout', 'lateral PLC1 -> PLC2');
    t.is(await r.topo.tcp(plc2, plc1, 502, DENY_MS), 'timeout', 'lateral PLC2 -> PLC1');

    await r.monitor.tick({ flush: true });
    const attack = denied(r.audit, 'enforce.flow-denied', { src: attacker.ip, dst: plc1.ip, dport: 502 });
    t.like(attack, {
      category: 'access-control',
      outcome: 'refused',
      actor: attacker.ip,
      details: { proto: 'tcp', from: 'it', to: 'cell-a', rule: 'default', mode: 'enforce' },
    });
    t.true((((attack?.details ?? {}) as { count?: number }).count ?? 0) >= 1);
    t.truthy(
      denied(r.audit, 'enforce.flow-denied', { src: plc1.ip, dst: plc2.ip, dport: 502, from: 'cell-a', to: 'cell-b' }),
      'the lateral attempt is an event',
    );
    t.truthy(denied(r.audit, 'enforce.flow-denied', { src: attacker.ip, dst: plc1.ip, dport: 161, proto: 'udp' }));
    t.falsy(denied(r.audit, 'enforce.flow-denied', { src: eng.ip }), 'allowed traffic is not reported as denied');
    const counters = (await r.enforcer.status()).counters;
    t.true((counters.find((c) => c.rule === 'flow:eng-program' && c.packets > 0)?.packets ?? 0) > 0, 'per-flow counters count');
  });

  maybe(`${mode}: observe passes everything but counts would-be denies; switching to enforce keeps an allowed connection and stops the attacker`, async (t) => {
    const r = await rig(t, mode);
    const { eng, attacker, plc1 } = r.topo.hosts;
    await applyAs(r, 1, (p) => {
      p.mode = 'observe';
    });
    const held = await r.topo.hold(eng, plc1, 502);
    t.teardown(() => held.close().catch(() => undefined));
    t.true(await held.ping());
    const intruder = await r.topo.hold(attacker, plc1, 502);
    t.teardown(() => intruder.close().catch(() => undefined));
    t.true(await intruder.ping(), 'observe mode lets the attacker connect');
    t.is(await r.topo.tcp(attacker, plc1, 502), 'connected', 'observe mode blocks nothing');
    await r.monitor.tick({ flush: true });
    t.like(denied(r.audit, 'enforce.flow-would-deny', { src: attacker.ip, dst: plc1.ip, dport: 502 }), {
      outcome: 'success',
      details: { mode: 'observe', rule: 'default' },
    });

    const before = (await r.topo.accepted(plc1)).tcp[502] ?? 0;
    await r.enforcer.apply({ validated: r.policy(), version: 2, source: 'controller', actor: 'controller' });
    for (let i = 0; i < 3; i++) t.true(await held.ping(), `the engineer's open connection survives the switch (ping ${i})`);
    t.is((await r.topo.accepted(plc1)).tcp[502], before, 'no reconnect was needed');
    t.false(await intruder.ping(1500), "the attacker's connection opened under observe is cut when enforce starts");
    const revoked = r.audit.events.find((e) => e.action === 'enforce.connections-revoked');
    t.like(revoked, { outcome: 'success' });
    // The attacker's held connection, and the probe's finished one still in conntrack's TIME_WAIT; never the engineer's.
    const examples = ((revoked?.details ?? {}) as { examples?: string[] }).examples ?? [];
    t.true(examples.length >= 1 && examples.every((e) => e.startsWith(`${attacker.ip}:`)), examples.join(', '));
    t.is(await r.topo.tcp(attacker, plc1, 502, DENY_MS), 'timeout', 'enforce stops the attacker');
    t.is(await r.topo.tcp(eng, plc1, 502), 'connected', 'and new allowed connections still work');
    t.true(r.audit.events.some((e) => e.action === 'enforce.mode-change' && e.target === 'cell-a' && (e.details as { to?: string }).to === 'enforce'));
  });

  maybe(`${mode}: a failed apply leaves the previous rules in force; rollback restores the one before`, async (t) => {
    const r = await rig(t, mode);
    const { eng, attacker, plc1 } = r.topo.hosts;
    await applyAs(r, 1, (p) => {
      p.mode = 'observe';
    });
    await r.enforcer.apply({ validated: r.policy(), version: 2, source: 'controller', actor: 'controller' });
    // The same state folder and kernel, but a binding nft refuses (an interface name longer than the kernel allows).
    const broken = await Enforcer.open({
      nft: r.nft,
      dir: await tempDir(t, 'ward-enforce-broken-'),
      binding: { ...r.enforcer.binding, interfaces: { ...r.enforcer.binding.interfaces, PLC2: 'a-name-far-too-long' } },
      audit: r.audit,
      log: quietLog,
    });
    await t.throwsAsync(broken.apply({ validated: r.policy(), version: 3, source: 'controller', actor: 'controller' }), {
      code: 'WARD_ENFORCE_APPLY_FAILED',
    } as never);
    t.is(await r.topo.tcp(attacker, plc1, 502, DENY_MS), 'timeout', 'still enforced after the failed apply');
    t.is(await r.topo.tcp(eng, plc1, 502), 'connected');
    await r.enforcer.rollback('operator');
    t.is(await r.topo.tcp(attacker, plc1, 502), 'connected', 'rolled back to the observe policy');
  });
}

maybe("routed: a port in no zone reaching an enforced cell is judged in that cell's mode", async (t) => {
  const r = await rig(t, 'routed');
  const { plc1, plc2, historian } = r.topo.hosts;
  await r.topo.listen(plc2, { tcp: [502] });
  // PLC2's port is in no zone; the policy default is observe, the cell PLC1 is in enforces.
  await applyAs(r, 1, (p) => {
    p.mode = 'observe';
    p.zones = p.zones?.filter((z) => z.name !== 'cell-b');
    for (const z of p.zones ?? []) if (z.name === 'cell-a') z.mode = 'enforce';
    p.assets = p.assets?.filter((a) => a.zone !== 'cell-b');
    p.flows = p.flows?.filter((f) => f.id !== 'cnc-push').map((f) => (f.id === 'eng-program' ? { ...f, to: 'asset:press-plc' } : f));
  });
  t.is(await r.topo.tcp(plc2, plc1, 502, DENY_MS), 'timeout', 'from the unzoned port into the enforced cell');
  t.is(await r.topo.tcp(plc2, historian, 8080), 'connected', 'unzoned to the observed uplink passes');
  await r.monitor.tick({ flush: true });
  t.truthy(denied(r.audit, 'enforce.flow-denied', { src: plc2.ip, dst: plc1.ip, from: '(unzoned)', to: 'cell-a' }));
});

maybe("bridge: traffic routed through the gateway's own address is judged as strictly as the strictest cell", async (t) => {
  const r = await rig(t, 'bridge');
  const { attacker, eng, plc1 } = r.topo.hosts;
  await r.topo.exec(r.topo.gw, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  await applyAs(r, 1, (p) => {
    p.mode = 'observe';
    for (const z of p.zones ?? []) if (z.name === 'cell-a') z.mode = 'enforce';
  });
  t.is(await r.topo.tcp(attacker, plc1, 502, DENY_MS), 'timeout', 'bridged: denied by the cell');
  const route = await r.topo.exec(attacker.ns, ['ip', 'route', 'add', `${plc1.ip}/32`, 'via', r.topo.gwIp]);
  t.is(route.code, 0, route.stderr);
  t.is(await r.topo.tcp(attacker, plc1, 502, DENY_MS), 'timeout', 'routed through the gateway: still denied');
  t.is(await r.topo.tcp(eng, plc1, 502), 'connected', 'the allowed flow, bridged, still works');
});

const L2 = new URL('../fixtures/l2-frames.py', import.meta.url).pathname;

/**
 * Starts l2-frames.py's receiver in `ns` for `seconds` and resolves once its socket is bound (its `ready` line, bounded),
 * with the promise of its verdict (the last line it prints). Bounded too: killed `seconds` + 15 s after the start.
 */
async function l2Receiver(t: ExecutionContext, ns: string, seconds: number): Promise<{ verdict: Promise<string | undefined> }> {
  const child = spawn(systemBinary('ip') ?? 'ip', ['netns', 'exec', ns, 'python3', L2, 'recv', String(seconds)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: SYSTEM_PATH },
  });
  let stdout = '';
  let stderr = '';
  let closed = false;
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + 15) * 1000);
  const done = new Promise<string | undefined>((resolve) => {
    const end = () => {
      closed = true;
      clearTimeout(killer);
      resolve(stdout.trim().split('\n').pop());
    };
    child.once('close', end);
    child.once('error', (err) => {
      stderr += String(err);
      end();
    });
  });
  t.teardown(() => {
    if (!closed) child.kill('SIGKILL');
  });
  const ready = () => stdout.split('\n').includes('ready');
  await waitFor(
    () => `the L2 receiver's ready line (stdout ${JSON.stringify(stdout)}, stderr ${JSON.stringify(stderr)})`,
    () => ready() || closed,
    15_000,
    20,
  );
  if (!ready()) throw new Error(`the L2 receiver ended before it was ready: ${stderr || stdout}`);
  // Wrapped: an async function returning the bare promise would wait for it.
  return { verdict: done };
}

maybe('bridge: VLAN-tagged and non-IP frames into an enforced cell are dropped, whatever the mode of the zone they come from', async (t) => {
  const r = await rig(t, 'bridge');
  const { attacker, plc1 } = r.topo.hosts;
  const trial = async () => {
    const { verdict } = await l2Receiver(t, plc1.ns, 5);
    const sent = await r.topo.exec(attacker.ns, ['python3', L2, 'send', attacker.ip, plc1.ip]);
    t.is(sent.code, 0, sent.stderr);
    return await verdict;
  };
  // All observe: every frame arrives (the probe sees them, so the next assertion can fail).
  await applyAs(r, 1, (p) => {
    p.mode = 'observe';
  });
  t.is(await trial(), 'PN U0 V0');
  // The uplink observes, the cell enforces: nothing but the policy's IP flows reaches the cell.
  await applyAs(r, 2, (p) => {
    p.mode = 'observe';
    for (const z of p.zones ?? []) if (z.name === 'cell-a') z.mode = 'enforce';
  });
  t.is(await trial(), 'nothing');
});

maybe('routed: the evaluator (lockout check, event attribution) agrees with the kernel on every probe', async (t) => {
  const r = await rig(t, 'routed');
  const { eng, historian, attacker, plc1, plc2 } = r.topo.hosts;
  await r.enforcer.apply({ validated: r.policy(), version: 1, source: 'controller', actor: 'controller' });
  const plan = r.enforcer.plan;
  if (!plan) return t.fail('no plan');
  const portOf = new Map([
    [eng, 'UPLINK'],
    [historian, 'UPLINK'],
    [attacker, 'UPLINK'],
    [plc1, 'PLC1'],
    [plc2, 'PLC2'],
  ]);
  const targets = [
    [plc1, 502],
    [plc1, 4840],
    [plc2, 502],
    [historian, 8080],
  ] as const;
  const disagreements: string[] = [];
  for (const [from, fromPort] of portOf) {
    for (const [to, port] of targets) {
      // Hosts on the same segment talk without crossing the gateway: nothing to compare.
      if (fromPort === portOf.get(to)) continue;
      const expected = evaluate(plan, { inPort: fromPort, outPort: portOf.get(to), src: from.ip, dst: to.ip, proto: 'tcp', dport: port });
      // Short only where silence is the expected answer; a probe expected to connect gets the default, so a stalled peer
      // does not read as a drop.
      const got = await r.topo.tcp(from, to, port, expected.verdict === 'accept' ? undefined : 600);
      if ((got === 'connected') !== (expected.verdict === 'accept'))
        disagreements.push(`${from.role} -> ${to.role}:${port}: kernel ${got}, evaluator ${expected.verdict} (${expected.rule})`);
    }
  }
  t.deepEqual(disagreements, []);
});
