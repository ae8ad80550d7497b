import type { AddressInfo } from 'node:net';
import test from 'ava';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { EdgeNodeSession } from '../../agent/telemetry/sparkplug/edge-node.js';
import { createApiServer } from '../../controller/api.js';
import { type AlarmRule, DEFAULT_ALARM_RULES, HealthAlarms } from '../../controller/health-rules.js';
import { TelemetryHost } from '../../controller/telemetry.js';

// An operator accepting a planned change (a new listener) as a gateway's new baseline: the pure rule state, then the
// controller's host and its HTTP API over loopback, fed by Ward's own edge-node state machine (no broker needed: the
// broker path of the same host is test/e2e/telemetry-stack.test.ts).

const LISTENERS = 'Gateway/Sockets/ListeningSet';

test('HealthAlarms.accept: a changed alarm takes its value as the new baseline; the next change raises again', (t) => {
  const a = new HealthAlarms(DEFAULT_ALARM_RULES);
  a.observe(null, LISTENERS, 'tcp:22', 'good', 0);
  t.is(a.observe(null, LISTENERS, 'tcp:22,tcp:502', 'good', 1_000)[0]?.kind, 'raised');
  t.deepEqual(a.accept(null, LISTENERS, 'cpu-saturated'), { ok: false, reason: 'not-acceptable' }, 'a threshold alarm clears with its value');
  t.deepEqual(a.accept(null, LISTENERS, 'no-such-rule'), { ok: false, reason: 'unknown-rule' });
  t.like(a.accept(null, LISTENERS, 'listeners-changed', 'tcp:22'), { ok: false, reason: 'value-changed', current: 'tcp:22,tcp:502' });
  t.deepEqual(a.accept('cnc-1', LISTENERS, 'listeners-changed'), { ok: false, reason: 'not-raised' }, 'not on another device');
  const accepted = a.accept(null, LISTENERS, 'listeners-changed');
  t.true(accepted.ok);
  t.deepEqual(a.active(), []);
  t.deepEqual(a.observe(null, LISTENERS, 'tcp:22,tcp:502', 'good', 2_000), [], 'the accepted set is the baseline now');
  t.deepEqual(a.accept(null, LISTENERS, 'listeners-changed'), { ok: false, reason: 'not-raised' }, 'accepting twice does nothing');
  const again = a.observe(null, LISTENERS, 'tcp:22,tcp:502,tcp:4444', 'good', 3_000);
  t.is(again[0]?.kind, 'raised');
  // Back to the old baseline is a change too: what was accepted is what counts.
  a.accept(null, LISTENERS, 'listeners-changed');
  t.is(a.observe(null, LISTENERS, 'tcp:22', 'good', 4_000)[0]?.kind, 'raised');
});

test('HealthAlarms.accept: a changed alarm raised by tick after its hold time shows and accepts the value that changed', (t) => {
  const rule: AlarmRule = { name: 'firmware-changed', metric: 'Firmware', changed: true, forSeconds: 30, action: 'alert' };
  const a = new HealthAlarms([rule]);
  a.observe(null, 'Firmware', 'v1', 'good', 0);
  t.deepEqual(a.observe(null, 'Firmware', 'v2', 'good', 1_000), [], 'held for forSeconds first');
  const raised = a.tick(40_000);
  t.is(raised[0]?.alarm.value, 'v2');
  t.true(a.accept(null, 'Firmware', 'firmware-changed').ok);
  t.deepEqual(a.observe(null, 'Firmware', 'v2', 'good', 41_000), []);
  t.deepEqual(a.tick(100_000), [], 'v2 is the baseline, not a missing value');
});

function rig(alarms: readonly AlarmRule[]) {
  let now = 1_700_000_000_000;
  const events: AuditEventInput[] = [];
  const health: string[][] = [];
  const host = new TelemetryHost({
    config: { hostId: 'ward-controller', primaryHost: true, historyPoints: 5, rebirthMinIntervalSeconds: 0, alarms },
    publish: async () => {},
    audit: { record: (e) => void events.push(e) },
    clock: { now: () => now, monotonic: () => now },
    log: { info() {}, warn() {}, debug() {} },
    onHealth: (_node, a) => void health.push(a),
  });
  const edge = new EdgeNodeSession({ group: 'g', edgeNode: 'gw-1', now: () => now });
  const feed = (m: { topic: string; payload: Buffer }) => host.handle(m.topic, m.payload);
  const listeners = (value: string) => {
    now += 1_000;
    return { name: LISTENERS, type: 'String' as const, value, timestamp: now };
  };
  return { host, edge, feed, events, health, listeners };
}

async function api(host: TelemetryHost, t: { teardown(fn: () => void): void }) {
  const server = createApiServer({
    health: async () => ({}),
    listDevices: async () => [],
    getDevice: async () => undefined,
    callDevice: async () => undefined,
    now: () => Date.now(),
    telemetry: {
      view: (id) => host.view(id),
      history: (id, metric, device) => host.history(id, metric, device),
      acceptAlarm: (id, target, actor) => host.acceptAlarm(id, target, actor),
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return async (path: string, body: unknown) => {
    const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as { accepted?: { rule: string; value: unknown }; error?: { code: string; message: string } } };
  };
}

test('the API accepts a raised listeners-changed alarm for an operator, audited with who and what; bad requests say why', async (t) => {
  const r = rig(DEFAULT_ALARM_RULES);
  r.edge.beginConnection(0);
  r.feed(r.edge.nodeBirth([r.listeners('tcp:0.0.0.0:22')]));
  r.feed(r.edge.data(undefined, [r.listeners('tcp:0.0.0.0:22,tcp:0.0.0.0:15020')]));
  t.deepEqual(
    r.host.alarms('gw-1').map((a) => a.rule),
    ['listeners-changed'],
  );
  const post = await api(r.host, t);
  const path = '/api/devices/gw-1/telemetry/alarms/accept';

  t.is((await post(path, { rule: 'listeners-changed' })).status, 400, 'the metric is required');
  t.is((await post(path, { rule: 'listeners-changed', metric: LISTENERS, extra: 1 })).status, 400);
  const threshold = await post(path, { rule: 'disk-full', metric: 'Gateway/Disk/root/UsedPercent' });
  t.is(threshold.status, 409);
  t.is(threshold.body.error?.code, 'WARD_API_ALARM_NOT_ACCEPTABLE');
  const elsewhere = await post(path, { rule: 'listeners-changed', metric: LISTENERS, device: 'press-1' });
  t.is(elsewhere.status, 404);
  t.regex(elsewhere.body.error?.message ?? '', /not raised on press-1/);
  t.is((await post('/api/devices/gw-unknown/telemetry/alarms/accept', { rule: 'listeners-changed', metric: LISTENERS })).status, 404);
  t.is(r.events.filter((e) => e.action === 'telemetry.alarm-accepted').length, 0, 'nothing accepted by a refused request');

  // The operator reviewed one new listener; a second opened meanwhile: nothing is accepted, the current set is shown.
  r.feed(r.edge.data(undefined, [r.listeners('tcp:0.0.0.0:22,tcp:0.0.0.0:15020,tcp:0.0.0.0:4444')]));
  const stale = await post(path, { rule: 'listeners-changed', metric: LISTENERS, value: 'tcp:0.0.0.0:22,tcp:0.0.0.0:15020', actor: 'j.doe' });
  t.is(stale.status, 409);
  t.is(stale.body.error?.code, 'WARD_API_ALARM_VALUE_CHANGED');
  t.is((stale.body.error as { current?: unknown } | undefined)?.current, 'tcp:0.0.0.0:22,tcp:0.0.0.0:15020,tcp:0.0.0.0:4444');
  t.is(r.host.alarms('gw-1').length, 1, 'still raised');
  t.is(r.events.filter((e) => e.action === 'telemetry.alarm-accepted').length, 0);
  r.feed(r.edge.data(undefined, [r.listeners('tcp:0.0.0.0:22,tcp:0.0.0.0:15020')]));

  const ok = await post(path, { rule: 'listeners-changed', metric: LISTENERS, value: 'tcp:0.0.0.0:22,tcp:0.0.0.0:15020', actor: 'j.doe' });
  t.is(ok.status, 200);
  t.is(ok.body.accepted?.value, 'tcp:0.0.0.0:22,tcp:0.0.0.0:15020');
  t.deepEqual(r.host.alarms('gw-1'), []);
  const audit = r.events.filter((e) => e.action === 'telemetry.alarm-accepted');
  t.is(audit.length, 1);
  t.like(audit[0], {
    actor: 'j.doe',
    target: 'gw-1',
    outcome: 'success',
    details: { rule: 'listeners-changed', baseline: 'tcp:0.0.0.0:22,tcp:0.0.0.0:15020' },
  });

  // The accepted set survives a rebirth; a further listener raises again.
  r.feed(r.edge.nodeBirth([r.listeners('tcp:0.0.0.0:22,tcp:0.0.0.0:15020')]));
  t.deepEqual(r.host.alarms('gw-1'), []);
  r.feed(r.edge.data(undefined, [r.listeners('tcp:0.0.0.0:22,tcp:0.0.0.0:15020,tcp:0.0.0.0:4444')]));
  t.deepEqual(
    r.host.alarms('gw-1').map((a) => a.rule),
    ['listeners-changed'],
  );
});

test('accepting a changed alarm with action degrade lifts the degrade from the trust decision', (t) => {
  const r = rig([{ name: 'listeners-changed', metric: LISTENERS, changed: true, forSeconds: 0, action: 'degrade' }]);
  r.edge.beginConnection(0);
  r.feed(r.edge.nodeBirth([r.listeners('tcp:22')]));
  r.feed(r.edge.data(undefined, [r.listeners('tcp:22,tcp:502')]));
  t.is(r.health.at(-1)?.length, 1, 'degraded by the new listener');
  t.like(r.host.acceptAlarm('gw-1', { rule: 'listeners-changed', metric: LISTENERS, device: null }, 'operator'), { ok: true });
  t.deepEqual(r.health.at(-1), [], 'the trust decision was told');
  t.deepEqual(r.host.acceptAlarm('gw-2', { rule: 'listeners-changed', metric: LISTENERS, device: null }, 'operator'), { ok: false, reason: 'unknown-node' });
});
