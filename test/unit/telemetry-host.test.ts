import test from 'ava';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { encodeSparkplug } from '../../agent/telemetry/sparkplug/codec.js';
import { EdgeNodeSession } from '../../agent/telemetry/sparkplug/edge-node.js';
import { DEFAULT_ALARM_RULES, HealthAlarms } from '../../controller/health-rules.js';
import { HOST_LIMITS, TelemetryHost } from '../../controller/telemetry.js';
import { decodeSparkplug } from '../helpers/sparkplug-decode.js';

// The controller's Sparkplug host logic, fed with messages from Ward's own edge-node state machine (no broker: the
// broker path is test/integration/sparkplug-edge.test.ts and test/e2e/telemetry-stack.test.ts).

function rig(alarms = DEFAULT_ALARM_RULES) {
  let now = 1_700_000_000_000;
  const published: { topic: string; payload: Buffer }[] = [];
  const events: AuditEventInput[] = [];
  const health: { node: string; alarms: string[] }[] = [];
  const host = new TelemetryHost({
    config: { hostId: 'ward-controller', primaryHost: true, historyPoints: 5, rebirthMinIntervalSeconds: 0, alarms },
    publish: async (topic, payload) => void published.push({ topic, payload }),
    audit: { record: (e) => void events.push(e) },
    clock: { now: () => now, monotonic: () => now },
    log: { info() {}, warn() {}, debug() {} },
    onHealth: (node, a) => void health.push({ node, alarms: a }),
  });
  const edge = new EdgeNodeSession({ group: 'g', edgeNode: 'gw-1', now: () => now });
  const feed = (m: { topic: string; payload: Buffer }) => host.handle(m.topic, m.payload);
  return {
    host,
    edge,
    feed,
    published,
    events,
    health,
    advance: (ms: number) => {
      now += ms;
      return now;
    },
    get now() {
      return now;
    },
  };
}

const point = (name: string, value: number | string, timestamp: number) => ({
  name,
  type: typeof value === 'string' ? ('String' as const) : ('Double' as const),
  value,
  timestamp,
});

test('births and data build the view; aliases resolve; historical values fill history in time order without replacing newer values', (t) => {
  const r = rig();
  r.edge.beginConnection(3);
  r.feed(r.edge.nodeBirth([point('Gateway/CPU/Load', 10, r.now)]));
  r.feed(r.edge.deviceBirth('cnc-1', [point('Spindle/Speed', 1000, r.now)]));
  const live = r.advance(1000);
  r.feed(r.edge.data('cnc-1', [point('Spindle/Speed', 1200, live)]));
  r.feed(r.edge.data('cnc-1', [point('Spindle/Speed', 1100, live - 500)], { historical: true }));
  const v = r.host.view('gw-1') as { online: boolean; bdSeq: number; devices: Record<string, { metrics: Record<string, { value: unknown }> }> };
  t.true(v.online);
  t.is(v.bdSeq, 3);
  t.is(v.devices['cnc-1']?.metrics['Spindle/Speed']?.value, 1200, 'a historical value never replaces a newer one');
  t.deepEqual(
    r.host.history('gw-1', 'Spindle/Speed', 'cnc-1')?.map((p) => p.v),
    [1000, 1100, 1200],
  );
  t.is(r.published.length, 0, 'no rebirth asked for');
});

test('a seq gap, data without a birth and an unknown alias each ask the node for a rebirth (NCMD, no alias on the rebirth metric)', (t) => {
  const r = rig();
  r.edge.beginConnection(0);
  const birth = r.edge.nodeBirth([point('A', 1, r.now)]);
  const lost = r.edge.data(undefined, [point('A', 2, r.now)]);
  const next = r.edge.data(undefined, [point('A', 3, r.now)]);
  r.feed(next); // before any birth
  t.is(r.published.length, 1);
  r.feed(birth);
  void lost; // never delivered
  r.feed(next);
  t.is(r.published.length, 2, 'the seq gap asked again');
  const ncmd = r.published[1];
  t.is(ncmd?.topic, 'spBv1.0/g/NCMD/gw-1');
  const decoded = decodeSparkplug(ncmd?.payload as Buffer);
  t.is(decoded.metrics[0]?.name, 'Node Control/Rebirth');
  t.is(decoded.metrics[0]?.value, true);
  t.is(decoded.metrics[0]?.alias, undefined);
  t.is((r.host.view('gw-1') as { seqGaps: number }).seqGaps, 1);
  // A malformed payload is refused and audited, nothing else changes.
  r.host.handle('spBv1.0/g/NDATA/gw-1', Buffer.from([0x0a, 0xff, 0xff]));
  t.true(r.events.some((e) => e.action === 'sparkplug.malformed' && e.code === 'WARD_SPARKPLUG_BAD_MESSAGE'));
});

test('an NDEATH counts only with the bdSeq of the current birth (a late Will of an older connection is ignored)', (t) => {
  const r = rig();
  const oldWill = r.edge.beginConnection(7);
  const newWill = r.edge.beginConnection(8);
  r.feed(r.edge.nodeBirth([point('A', 1, r.now)]));
  r.feed(oldWill);
  t.true((r.host.view('gw-1') as { online: boolean }).online);
  r.feed(newWill);
  t.false((r.host.view('gw-1') as { online: boolean }).online);
});

test('alarm rules: a degrade alarm raised after its hold time reaches the trust decision, and clears with it; alert rules only audit', (t) => {
  const r = rig();
  r.edge.beginConnection(0);
  r.feed(r.edge.nodeBirth([point('Gateway/Disk/root/UsedPercent', 50, r.now), point('Gateway/Sockets/ListeningSet', 'tcp:0.0.0.0:22', r.now)]));
  r.feed(r.edge.data(undefined, [point('Gateway/Disk/root/UsedPercent', 97, r.advance(1000))]));
  t.is(r.health.length, 0, 'not before forSeconds');
  r.advance(61_000);
  r.host.tick();
  t.is(r.health.length, 1);
  t.is(r.health[0]?.node, 'gw-1');
  t.regex(r.health[0]?.alarms[0] ?? '', /disk-full: Gateway\/Disk\/root\/UsedPercent above 95 for 60 s/);
  t.true(r.events.some((e) => e.action === 'telemetry.alarm-raised'));
  r.feed(r.edge.data(undefined, [point('Gateway/Disk/root/UsedPercent', 80, r.advance(1000))]));
  t.deepEqual(r.health.at(-1)?.alarms, []);
  t.true(r.events.some((e) => e.action === 'telemetry.alarm-cleared'));

  r.feed(r.edge.data(undefined, [point('Gateway/Sockets/ListeningSet', 'tcp:0.0.0.0:22,tcp:0.0.0.0:4444', r.advance(1000))]));
  const raised = r.events.filter((e) => e.action === 'telemetry.alarm-raised').map((e) => e.details?.rule);
  t.true(raised.includes('listeners-changed'));
  t.is(r.health.length, 2, 'an alert rule does not touch trust');
});

test('HealthAlarms: a spike shorter than forSeconds never raises; bad quality is not a threshold breach', (t) => {
  const a = new HealthAlarms([{ name: 'hot', metric: 'T', above: 80, forSeconds: 10, action: 'alert' }]);
  t.deepEqual(a.observe(null, 'T', 90, 'good', 0), []);
  t.deepEqual(a.observe(null, 'T', 70, 'good', 5_000), []);
  t.deepEqual(a.tick(20_000), []);
  t.deepEqual(a.observe(null, 'T', null, 'bad', 21_000), []);
  t.deepEqual(a.observe(null, 'T', 95, 'good', 22_000), []);
  t.is(a.tick(32_000)[0]?.kind, 'raised');
});

test('the STATE Will and the online STATE carry the same timestamp; offline again before a clean disconnect', async (t) => {
  const r = rig();
  const will = r.host.prepareWill();
  t.is(will?.topic, 'spBv1.0/STATE/ward-controller');
  t.true(will?.retain);
  t.is(will?.qos, 1);
  const offline = JSON.parse(String(will?.payload));
  await r.host.connected();
  const online = JSON.parse(String(r.published.at(-1)?.payload));
  t.deepEqual(online, { online: true, timestamp: offline.timestamp });
  t.false(offline.online);
});

test('limits: an oversized payload, data naming undeclared metrics and too many devices are refused, audited once, and never stored', (t) => {
  const r = rig();
  r.edge.beginConnection(0);
  r.feed(r.edge.nodeBirth([point('A', 1, r.now)]));
  r.host.handle('spBv1.0/g/NDATA/gw-1', Buffer.alloc(HOST_LIMITS.payloadBytes + 1));
  r.host.handle('spBv1.0/g/NDATA/gw-1', Buffer.alloc(HOST_LIMITS.payloadBytes + 1));
  const malformed = r.events.filter((e) => e.action === 'sparkplug.malformed');
  t.is(malformed.length, 1, 'throttled: one event per window');
  // A data message may only name what the birth declared: a new name is not a new series, it asks for a rebirth.
  const forged = encodeSparkplug({ timestamp: r.now, seq: 1, metrics: [{ name: 'Injected/Metric', type: 'Double', value: 1 }] });
  r.host.handle('spBv1.0/g/NDATA/gw-1', forged);
  t.is(r.host.history('gw-1', 'Injected/Metric', null), undefined);
  t.true(r.published.some((p) => p.topic === 'spBv1.0/g/NCMD/gw-1'));
  // Devices beyond the cap are ignored.
  for (let i = 0; i < HOST_LIMITS.devicesPerNode + 5; i++) r.feed(r.edge.deviceBirth(`d${i}`, [point('X', i, r.now)]));
  const view = r.host.view('gw-1') as { devices: Record<string, unknown>; limited: number };
  t.is(Object.keys(view.devices).length, HOST_LIMITS.devicesPerNode);
  t.is(view.limited, 5);
  t.is(r.events.filter((e) => e.action === 'sparkplug.limit').length, 1);
  // Long strings are kept truncated.
  r.feed(r.edge.nodeBirth([point('A', 1, r.now), point('Text', 'x'.repeat(50_000), r.now)]));
  const text = r.host.history('gw-1', 'Text', null)?.[0]?.v as string;
  t.is(text.length, HOST_LIMITS.stringValue + 1);
});

test('an NDEATH does not lift a degrade alarm; a changed set of listeners stays raised across births; a counter that increased raises', (t) => {
  const r = rig();
  r.edge.beginConnection(0);
  r.feed(
    r.edge.nodeBirth([
      point('Gateway/Disk/root/UsedPercent', 99, r.now),
      point('Gateway/Sockets/ListeningSet', 'tcp:0.0.0.0:22', r.now),
      { name: 'Ward/Telemetry/Dropped', type: 'UInt64', value: 0, timestamp: r.now },
    ]),
  );
  r.advance(61_000);
  r.host.tick();
  t.is(r.health.at(-1)?.alarms.length, 1);
  r.feed(r.edge.nodeDeath());
  t.is(r.health.length, 1, 'the degrade was not lifted by the NDEATH');
  t.is(r.host.alarms('gw-1').length, 1);
  // Reconnected with a new listener opened and data lost while away: both seen in the new NBIRTH.
  r.edge.beginConnection(1);
  r.feed(
    r.edge.nodeBirth([
      point('Gateway/Disk/root/UsedPercent', 99, r.advance(1000)),
      point('Gateway/Sockets/ListeningSet', 'tcp:0.0.0.0:22,tcp:0.0.0.0:4444', r.now),
      { name: 'Ward/Telemetry/Dropped', type: 'UInt64', value: 5000, timestamp: r.now },
    ]),
  );
  const rules = r.host.alarms('gw-1').map((a) => a.rule);
  t.true(rules.includes('listeners-changed'));
  t.true(rules.includes('telemetry-lost'));
  // A rebirth repeating the same values does not clear them.
  r.feed(
    r.edge.nodeBirth([
      point('Gateway/Disk/root/UsedPercent', 99, r.advance(1000)),
      point('Gateway/Sockets/ListeningSet', 'tcp:0.0.0.0:22,tcp:0.0.0.0:4444', r.now),
      { name: 'Ward/Telemetry/Dropped', type: 'UInt64', value: 5000, timestamp: r.now },
    ]),
  );
  t.true(r.host.alarms('gw-1').some((a) => a.rule === 'listeners-changed'));
});

test('a replica that sees its host id go offline while it is connected says online again, with a newer timestamp', async (t) => {
  let connected = true;
  const published: { topic: string; payload: Buffer }[] = [];
  let now = 1_000;
  const host = new TelemetryHost({
    config: { hostId: 'ward-controller', primaryHost: true, historyPoints: 5, rebirthMinIntervalSeconds: 0, alarms: [] },
    publish: async (topic, payload) => void published.push({ topic, payload }),
    audit: { record() {} },
    clock: { now: () => now, monotonic: () => now },
    log: { info() {}, warn() {}, debug() {} },
    isConnected: () => connected,
  });
  const will = host.prepareWill();
  await host.connected();
  now = 2_000;
  host.handle('spBv1.0/STATE/ward-controller', Buffer.from(JSON.stringify({ online: false, timestamp: 1_500 })));
  await new Promise((r) => setImmediate(r));
  const last = JSON.parse(String(published.at(-1)?.payload));
  t.true(last.online);
  t.true(last.timestamp > JSON.parse(String(will?.payload)).timestamp);
  // Not while shutting down (its own offline STATE comes back to it), nor while disconnected.
  connected = false;
  const count = published.length;
  host.handle('spBv1.0/STATE/ward-controller', Buffer.from(JSON.stringify({ online: false, timestamp: 2_500 })));
  await new Promise((r) => setImmediate(r));
  t.is(published.length, count);
});
