import test from 'ava';
import YAML from 'yaml';
import { LINE_POLICY } from '../helpers/enforce.js';
import { createTopology, netnsUnavailable } from '../helpers/netns.js';
import { startInNamespace } from '../helpers/ns-process.js';
import { tempDir } from '../helpers/tmp.js';

/**
 * Issue 6's "done when", in network namespaces: a vendor laptop (198.18.0.10)
 * on the IT side, a simulated PLC (198.18.1.10) behind a routed gateway. The
 * gateway runs Ward's real Enforcer (nftables in its namespace) with the real
 * Modbus proxy; the laptop uses jsmodbus, a third-party client; the PLC is
 * Ward's simulator, which records every request that reaches it.
 */
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`modbus-netns: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test.serial;

const FIXTURE = new URL('../fixtures/modbus-ns.ts', import.meta.url);
const PLC = '198.18.1.10';

function policy(mode: 'enforce' | 'observe', withOps = true): unknown {
  const p = YAML.parse(LINE_POLICY) as { mode: string; flows: Record<string, unknown>[] };
  p.mode = mode;
  if (!withOps) {
    p.flows = [
      { id: 'vendor-plain', from: 'role:engineering', to: 'asset:press-plc', services: ['tcp/502'] },
      { id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] },
    ];
    return p;
  }
  p.flows = [
    {
      id: 'vendor-tuning',
      from: 'role:engineering',
      to: 'asset:press-plc',
      services: ['tcp/502'],
      ops: { modbus: ['read-only', 'write holding 100-119'] },
      comment: 'the vendor reads everything and may tune the setpoints in 40101-40120, nothing else',
    },
    { id: 'historian-poll', from: 'role:scada', to: 'asset:press-plc', services: ['tcp/502'], ops: { modbus: ['read-only'] } },
    { id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] },
  ];
  return p;
}

maybe(
  'a vendor laptop reads the PLC through the gateway; writes to protected registers come back as exceptions, are audited and never reach the PLC',
  async (t) => {
    const topo = await createTopology('routed');
    t.teardown(() => topo.destroy());
    const dir = await tempDir(t, 'ward-modbus-e2e-');
    const gw = await startInNamespace(topo.gw, FIXTURE, ['gateway', dir, topo.ports.UPLINK, topo.ports.PLC1, topo.ports.PLC2]);
    t.teardown(() => gw.close());
    const plc = await startInNamespace(topo.hosts.plc1.ns, FIXTURE, ['plc']);
    t.teardown(() => plc.close());
    const laptop = await startInNamespace(topo.hosts.eng.ns, FIXTURE, ['client']);
    t.teardown(() => laptop.close());
    const attacker = await startInNamespace(topo.hosts.attacker.ns, FIXTURE, ['client']);
    t.teardown(() => attacker.close());

    await plc.call({ cmd: 'set', address: 0, values: [100, 200, 300] });
    await plc.call({ cmd: 'set', address: 500, values: [4242] });
    // Before: a plain port-level allow, and the vendor's tool holds a connection straight to the PLC.
    const plain = await gw.call({ cmd: 'apply', policy: policy('enforce', false), version: 1 });
    t.true(plain.ok, JSON.stringify(plain));
    t.like(await laptop.call({ cmd: 'open', host: PLC, port: 502 }), { ok: true });
    t.deepEqual((await laptop.call({ cmd: 'held-read', address: 0, quantity: 1 })).values, [100]);

    const applied = await gw.call({ cmd: 'apply', policy: policy('enforce'), version: 2 });
    t.true(applied.ok, JSON.stringify(applied));
    // The connection opened before the flow had operations cannot carry a write past the proxy.
    const stale = await laptop.call({ cmd: 'held-write', address: 500, values: [666] });
    t.falsy(stale.ok, `a write on the pre-policy connection must not succeed: ${JSON.stringify(stale)}`);
    t.deepEqual((await plc.call({ cmd: 'get', address: 500, quantity: 1 })).values, [4242]);
    t.true(
      gw.events.some((e) => (e.event as { action: string }).action === 'enforce.connections-revoked'),
      'the bypassing connection was revoked',
    );

    const at = (cmd: Record<string, unknown>) => laptop.call({ host: PLC, port: 502, ...cmd });
    t.deepEqual((await at({ cmd: 'read', address: 0, quantity: 3 })).values, [100, 200, 300], 'reads return the PLC values');
    t.like(await at({ cmd: 'write', address: 500, values: [1] }), { exception: 2 }, 'a write to a protected register: illegal data address');
    t.like(await at({ cmd: 'write', address: 118, values: [1, 2, 3] }), { exception: 2 }, 'a block running past the allowed range');
    t.like(await at({ cmd: 'write', address: 100, values: [7] }), { ok: true }, 'a setpoint inside the range is written');

    t.deepEqual((await plc.call({ cmd: 'get', address: 500, quantity: 1 })).values, [4242], 'the protected register is unchanged');
    t.deepEqual((await plc.call({ cmd: 'get', address: 100, quantity: 1 })).values, [7]);
    const reached = (await plc.call({ cmd: 'seen' })).requests as { fc: number; kind: string }[];
    t.deepEqual(
      reached.filter((r) => r.kind !== 'read').map((r) => r.fc),
      [6],
      'the only write that reached the PLC is the allowed one',
    );

    const events = gw.events.map((e) => e.event as { action: string; actor: string; details: Record<string, unknown> });
    const denied = events.filter((e) => e.action === 'modbus.request-denied');
    t.is(denied.length, 2);
    t.like(denied[0], {
      actor: '198.18.0.10',
      details: { flow: 'vendor-tuning', zone: 'it', unit: 1, fc: 6, address: 500, quantity: 1, values: [1], exception: 2, mode: 'enforce' },
    });
    t.like(denied[1], { details: { fc: 16, address: 118, quantity: 3, values: [1, 2, 3] } });
    t.like(
      events.find((e) => e.action === 'modbus.write'),
      { actor: '198.18.0.10', details: { fc: 6, address: 100, values: [7] } },
    );

    // A host no flow names is not redirected at all: the segmentation rules drop it before any proxy.
    const scan = await attacker.call({ cmd: 'read', host: PLC, port: 502, address: 0, quantity: 1 });
    t.regex(String(scan.error), /connect timeout|ETIMEDOUT|EHOSTUNREACH/);
    t.is(((await plc.call({ cmd: 'seen' })).requests as unknown[]).length, reached.length, 'the attacker reached nothing');

    // Observe mode on a live line: the same write passes, and is reported as what enforce would have denied.
    const observed = await gw.call({ cmd: 'apply', policy: policy('observe'), version: 3 });
    t.true(observed.ok, JSON.stringify(observed));
    // Observe mode accepts everything to the gateway, yet the proxy port takes only what was redirected to it:
    // a host in cell-b connecting straight to the gateway's proxy port is dropped.
    const cnc = await startInNamespace(topo.hosts.plc2.ns, FIXTURE, ['client']);
    t.teardown(() => cnc.close());
    const direct = await cnc.call({ cmd: 'write', host: '198.18.2.1', port: 15020, address: 101, values: [31337] });
    t.regex(String(direct.error), /connect timeout|ETIMEDOUT/, JSON.stringify(direct));
    t.deepEqual((await plc.call({ cmd: 'get', address: 101, quantity: 1 })).values, [0]);
    t.like(await at({ cmd: 'write', address: 500, values: [9] }), { ok: true });
    t.deepEqual((await plc.call({ cmd: 'get', address: 500, quantity: 1 })).values, [9]);
    t.like(
      gw.events.map((e) => e.event as { action: string; details: Record<string, unknown> }).find((e) => e.action === 'modbus.request-would-deny'),
      { details: { address: 500, values: [9], mode: 'observe' } },
    );
  },
);
