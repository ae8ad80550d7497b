import test from 'ava';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { ManualClock } from '../../agent/core/clock.js';
import { WardError } from '../../agent/core/errors.js';
import { GatewayMetrics, type GatewayMetricsOptions, type GatewaySources } from '../../agent/telemetry/gateway.js';
import type { MetricPoint, MetricType } from '../../agent/telemetry/metric.js';
import type { ListeningSocket, NetDevCounters } from '../../agent/telemetry/proc.js';
import { waitFor } from '../helpers/net.js';

// GatewayMetrics against fake sources: the contracts (failure isolation, warn once, baseline, stop) without /proc.

const counters = (n: number): NetDevCounters => ({
  rxBytes: n,
  rxPackets: n,
  rxErrors: 0,
  rxDropped: 0,
  txBytes: 2 * n,
  txPackets: n,
  txErrors: 0,
  txDropped: 0,
});

function harness(over: Partial<GatewaySources> = {}, options: Partial<GatewayMetricsOptions> = {}) {
  const clock = new ManualClock();
  const audit = new MemoryAuditSink();
  const logs: { level: 'info' | 'warn'; obj: Record<string, unknown>; msg: string }[] = [];
  const emitted: MetricPoint[][] = [];
  const calls = { cpu: 0, listeners: 0 };
  let jiffies = 0;
  const state = {
    listeners: [{ proto: 'tcp', address: '0.0.0.0', port: 22, inode: 1 }] as ListeningSocket[],
    ifaces: new Map([
      ['lo', counters(1)],
      ['eth0', counters(1000)],
    ]),
  };
  const sources: GatewaySources = {
    async cpuTimes() {
      calls.cpu++;
      jiffies += 100;
      return { total: jiffies * 2, idle: jiffies };
    },
    memory: async () => ({ total: 1000, available: 250 }),
    cpuTemperature: async () => 48.25,
    netDev: async () => state.ifaces,
    uptime: async () => 3600,
    processCount: async () => 80,
    async listeningSockets() {
      calls.listeners++;
      return state.listeners;
    },
    mountPoints: async () => new Set(['/', '/data']),
    diskUsage: async (mount) => ({ totalBytes: 1000, freeBytes: mount === '/' ? 400 : 900, usedPercent: mount === '/' ? 60 : 10 }),
    ...over,
  };
  const log = {
    info: (obj: Record<string, unknown>, msg: string) => logs.push({ level: 'info', obj, msg }),
    warn: (obj: Record<string, unknown>, msg: string) => logs.push({ level: 'warn', obj, msg }),
  } as unknown as GatewayMetricsOptions['log'];
  const metrics = new GatewayMetrics({ clock, audit, log, onPoints: (p) => emitted.push([...p]), sources, ...options });
  return { metrics, clock, audit, logs, emitted, state, calls };
}

const byName = (points: readonly MetricPoint[]) => new Map(points.map((x) => [x.name, x]));
const warnings = <L extends { level: string }>(logs: readonly L[]): L[] => logs.filter((l) => l.level === 'warn');

test('every metric under its Sparkplug name and type; lo skipped; deadbands decide what reaches onPoints; latest() is unfiltered', async (t) => {
  const { metrics, emitted } = harness({}, { mounts: ['/', '/data'] });
  const points = byName(await metrics.collectNow());
  const expect: [string, MetricType, MetricPoint['value']][] = [
    ['Gateway/CPU/Load', 'Double', 50],
    ['Gateway/CPU/Temperature', 'Double', 48.25],
    ['Gateway/Memory/Total', 'UInt64', 1000],
    ['Gateway/Memory/Available', 'UInt64', 250],
    ['Gateway/Memory/UsedPercent', 'Double', 75],
    ['Gateway/Network/eth0/RxBytes', 'UInt64', 1000],
    ['Gateway/Network/eth0/TxBytes', 'UInt64', 2000],
    ['Gateway/Network/eth0/RxErrors', 'UInt64', 0],
    ['Gateway/Network/eth0/TxErrors', 'UInt64', 0],
    ['Gateway/Network/eth0/RxDropped', 'UInt64', 0],
    ['Gateway/Network/eth0/TxDropped', 'UInt64', 0],
    ['Gateway/Uptime', 'UInt64', 3600],
    ['Gateway/Processes', 'UInt32', 80],
    ['Gateway/Disk/root/UsedPercent', 'Double', 60],
    ['Gateway/Disk/root/FreeBytes', 'UInt64', 400],
    ['Gateway/Disk/data/UsedPercent', 'Double', 10],
    ['Gateway/Disk/data/FreeBytes', 'UInt64', 900],
    ['Gateway/Sockets/Listening', 'UInt32', 1],
    ['Gateway/Sockets/ListeningSet', 'String', 'tcp:0.0.0.0:22'],
  ];
  t.deepEqual([...points.keys()].sort(), expect.map(([n]) => n).sort());
  for (const [name, type, value] of expect) {
    t.is(points.get(name)?.type, type, name);
    t.is(points.get(name)?.value, value, name);
    t.is(points.get(name)?.quality, undefined, name);
  }
  t.is(emitted.length, 1);
  t.is(emitted[0]?.length, expect.length, 'first collection: everything is news');

  await metrics.collectNow();
  t.is(emitted.length, 1, 'nothing changed past a deadband: no call at all');
  t.is(metrics.latest().length, expect.length);
});

test('listening set: sorted, de-duplicated (SO_REUSEPORT), IPv6 bracketed', async (t) => {
  const { metrics, state } = harness();
  state.listeners = [
    { proto: 'udp', address: '0.0.0.0', port: 502, inode: 5 },
    { proto: 'tcp6', address: '::', port: 1883, inode: 4 },
    { proto: 'tcp', address: '0.0.0.0', port: 8080, inode: 3 },
    { proto: 'tcp', address: '0.0.0.0', port: 8080, inode: 6 },
    { proto: 'tcp', address: '0.0.0.0', port: 22, inode: 2 },
  ];
  const points = byName(await metrics.collectNow());
  t.is(points.get('Gateway/Sockets/ListeningSet')?.value, 'tcp:0.0.0.0:22,tcp:0.0.0.0:8080,tcp6:[::]:1883,udp:0.0.0.0:502');
  t.is(points.get('Gateway/Sockets/Listening')?.value, 4);
});

test('a failing source reads null/bad, warns once until it recovers, and leaves the others alone', async (t) => {
  let sensor: number | undefined;
  const { metrics, logs } = harness({
    cpuTemperature: async () => {
      if (sensor === undefined) throw new WardError('WARD_TELEMETRY_NO_SENSOR', 'no readable temperature sensor');
      return sensor;
    },
    memory: async () => {
      throw new Error('EIO');
    },
  });
  for (let i = 0; i < 3; i++) {
    const points = byName(await metrics.collectNow());
    t.like(points.get('Gateway/CPU/Temperature'), { value: null, quality: 'bad', type: 'Double' });
    t.like(points.get('Gateway/Memory/Total'), { value: null, quality: 'bad' });
    t.like(points.get('Gateway/Memory/UsedPercent'), { value: null, quality: 'bad' });
    t.is(points.get('Gateway/Uptime')?.value, 3600);
    t.is(points.get('Gateway/CPU/Load')?.quality, undefined);
  }
  const warned = warnings(logs);
  t.is(warned.length, 2, 'one warning per failing source, not one per tick');
  t.like(warned[0]?.obj, { source: 'memory', err: 'EIO' });
  t.like(warned[1]?.obj, { source: 'temperature', code: 'WARD_TELEMETRY_NO_SENSOR' });

  sensor = 51;
  const points = byName(await metrics.collectNow());
  t.is(points.get('Gateway/CPU/Temperature')?.value, 51);
  t.is(points.get('Gateway/CPU/Temperature')?.quality, undefined);
  t.true(logs.some((l) => l.level === 'info' && l.obj.source === 'temperature'));
});

test('the first listener scan is a baseline; later ones audit new and closed listeners; a failed scan keeps the baseline', async (t) => {
  let fail = false;
  const h = harness({
    listeningSockets: async () => {
      if (fail) throw new Error('EMFILE');
      return h.state.listeners;
    },
  });
  const { state } = h;
  await h.metrics.collectNow();
  t.deepEqual(h.audit.events, [], 'baseline: no events');

  state.listeners = [...state.listeners, { proto: 'tcp6', address: '::', port: 1883, inode: 9 }];
  await h.metrics.collectNow();
  t.deepEqual(h.audit.events, [
    {
      category: 'control-system',
      actor: 'ward-agent',
      action: 'telemetry.new-listener',
      target: 'tcp6:[::]:1883',
      outcome: 'success',
      details: { proto: 'tcp6', address: '::', port: 1883 },
    },
  ]);

  fail = true;
  const failed = byName(await h.metrics.collectNow());
  t.like(failed.get('Gateway/Sockets/ListeningSet'), { value: null, quality: 'bad' });
  t.is(h.audit.events.length, 1, 'a failed scan is not every listener closing');

  fail = false;
  state.listeners = [{ proto: 'tcp6', address: '::', port: 1883, inode: 9 }];
  await h.metrics.collectNow();
  t.is(h.audit.events.length, 2);
  t.like(h.audit.events[1], { action: 'telemetry.listener-closed', target: 'tcp:0.0.0.0:22', details: { proto: 'tcp', address: '0.0.0.0', port: 22 } });
});

test('a collection in flight when stop() is called emits nothing and audits nothing', async (t) => {
  let release: () => void = () => undefined;
  let gate: Promise<void> | undefined;
  const { metrics, emitted, audit, state } = harness({
    async uptime() {
      await gate;
      return 3600;
    },
  });
  await metrics.collectNow();
  const before = emitted.length;
  state.listeners = [...state.listeners, { proto: 'tcp', address: '127.0.0.1', port: 9999, inode: 7 }];
  gate = new Promise((r) => {
    release = r;
  });
  const inflight = metrics.collectNow();
  const stopped = metrics.stop();
  release();
  await stopped;
  const points = await inflight;
  t.true(points.length > 0, 'the caller still gets what was read');
  t.is(emitted.length, before);
  t.deepEqual(audit.events, []);
  await metrics.stop();
});

test('a read that never returns times out as bad and is not started again while it hangs', async (t) => {
  let starts = 0;
  let unblock: () => void = () => undefined;
  const hung = new Promise<void>((r) => {
    unblock = r;
  });
  const { metrics, logs } = harness(
    {
      async diskUsage() {
        starts++;
        await hung;
        return { totalBytes: 1, freeBytes: 1, usedPercent: 0 };
      },
    },
    { sourceTimeoutMs: 20 },
  );
  const first = byName(await metrics.collectNow());
  t.like(first.get('Gateway/Disk/root/UsedPercent'), { value: null, quality: 'bad' });
  t.like(warnings(logs)[0]?.obj, { source: 'disk:/', code: 'WARD_TELEMETRY_SOURCE_TIMEOUT' });
  const second = byName(await metrics.collectNow());
  t.like(second.get('Gateway/Disk/root/FreeBytes'), { value: null, quality: 'bad' });
  t.is(starts, 1, 'the hung statfs holds one thread, not one more per tick');
  t.is(first.get('Gateway/Uptime')?.value, 3600);
  unblock();
  await waitFor(
    'the hung read to settle',
    async () => {
      await metrics.collectNow();
      return starts === 2;
    },
    5_000,
    10,
  );
});

test('a mount that is not mounted and an interface that vanished read as bad', async (t) => {
  const { metrics, state, logs } = harness(
    {
      mountPoints: async () => new Set(['/']),
      diskUsage: async (mount, known) => {
        if (known && !known.has(mount)) throw new WardError('WARD_TELEMETRY_NOT_A_MOUNT', `${mount} is not a mount point`);
        return { totalBytes: 10, freeBytes: 5, usedPercent: 50 };
      },
    },
    { mounts: ['/', '/data'] },
  );
  const first = byName(await metrics.collectNow());
  t.is(first.get('Gateway/Disk/root/UsedPercent')?.value, 50);
  t.like(first.get('Gateway/Disk/data/UsedPercent'), { value: null, quality: 'bad' });
  t.like(warnings(logs)[0]?.obj, { source: 'disk:/data', code: 'WARD_TELEMETRY_NOT_A_MOUNT' });

  state.ifaces = new Map([['lo', counters(1)]]);
  const second = byName(await metrics.collectNow());
  t.like(second.get('Gateway/Network/eth0/RxBytes'), { value: null, quality: 'bad' });
  t.true(warnings(logs).some((l) => l.obj.source === 'network:eth0'));
});

test('configured interfaces only; a configured one that is missing reads bad', async (t) => {
  const { metrics } = harness({}, { interfaces: ['eth0', 'wwan0'] });
  const points = byName(await metrics.collectNow());
  t.is(points.get('Gateway/Network/eth0/RxBytes')?.value, 1000);
  t.like(points.get('Gateway/Network/wwan0/RxBytes'), { value: null, quality: 'bad' });
  t.false([...points.keys()].some((n) => n.startsWith('Gateway/Network/lo/')));
});

test('ticks read the slow group (sockets, disks) only every slowIntervalMs; start and stop are idempotent', async (t) => {
  const { metrics, clock, calls } = harness({}, { intervalMs: 5, slowIntervalMs: 60_000 });
  metrics.start();
  metrics.start();
  t.teardown(() => metrics.stop());
  await waitFor('a few ticks', () => calls.cpu >= 4, 10_000, 5);
  t.is(calls.listeners, 1);
  clock.advance(60_000);
  await waitFor('the slow group again', () => calls.listeners >= 2, 10_000, 5);
  await metrics.stop();
  await metrics.stop();
  const after = calls.cpu;
  await new Promise((r) => setTimeout(r, 30));
  t.is(calls.cpu, after, 'no tick after stop');
});

test('birth() returns every current value and makes it the deadband baseline', async (t) => {
  const { metrics, emitted } = harness({ uptime: async () => 3600 + emitted.length });
  await metrics.collectNow();
  const birth = metrics.birth();
  t.is(birth.length, metrics.latest().length);
  emitted.length = 0;
  await metrics.collectNow();
  t.deepEqual(emitted, [], 'uptime moved by 1 s, within its 600 s deadband of the birth value');
});

test('a throwing listener is logged, not thrown', async (t) => {
  const { metrics, logs } = harness(
    {},
    {
      onPoints: () => {
        throw new Error('publisher broke');
      },
    },
  );
  await t.notThrowsAsync(metrics.collectNow());
  t.like(warnings(logs)[0]?.obj, { err: 'publisher broke' });
});

test('options are checked: relative or colliding mounts, non-positive intervals', (t) => {
  const make = (o: Partial<GatewayMetricsOptions>) => () => harness({}, o);
  t.throws(make({ mounts: ['/', '/root'] }), { instanceOf: TypeError, message: /share the metric folder/ });
  t.throws(make({ mounts: ['data'] }), { instanceOf: TypeError });
  t.throws(make({ mounts: ['/data/../etc'] }), { instanceOf: TypeError });
  t.throws(make({ intervalMs: 0 }), { instanceOf: TypeError });
  t.throws(make({ slowIntervalMs: Number.NaN }), { instanceOf: TypeError });
  t.notThrows(make({ mounts: ['/var/lib/ward', '/data'] }));
});
