import test from 'ava';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { ManualClock } from '../../agent/core/clock.js';
import { encodeEnvelope, seal } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import { STATE_TYPE } from '../../agent/shared/messages.js';
import { DeviceRegistry } from '../../controller/registry.js';
import { MemoryDeviceStore, updateDevice } from '../../controller/store.js';

const silent = { warn() {}, info() {} };
const clock = new ManualClock(Date.UTC(2026, 10, 25));
const gw1 = generateSigningKey();
const gw2 = generateSigningKey();
const stranger = generateSigningKey();

async function registry(audit?: MemoryAuditSink) {
  const store = new MemoryDeviceStore();
  const reg = await DeviceRegistry.open({
    ...(audit ? { audit } : {}),
    store,
    clock,
    devices: [
      { id: 'gw-1', publicKey: gw1.publicRaw },
      { id: 'gw-2', publicKey: gw2.publicRaw },
    ],
    log: silent,
  });
  return { reg, store };
}

let version = 1000;
function state(key: SigningKey, fields: Record<string, unknown> = {}, v = ++version) {
  const body = {
    typ: STATE_TYPE,
    sub: 'gw-1',
    online: true,
    session: 'session-aaaa',
    lifecycle: 'attesting',
    agentVersion: '0.1.0',
    protocol: '3.1.1',
    plugins: [],
    startedAt: 1,
    heartbeatSeconds: 60,
    ...fields,
  };
  return encodeEnvelope(seal(key, body as typeof body & { typ: string }, { ttlSeconds: 3600, clock, version: v }));
}
const TOPIC = 'ward/v1/gw-1/state';

test('a genuine state is applied and stored', async (t) => {
  const { reg, store } = await registry();
  t.is((await reg.handleState(TOPIC, state(gw1), false)).outcome, 'applied');
  const r = await store.get('gw-1');
  t.true(r?.online);
  t.is(r?.lifecycle, 'attesting');
  t.is(r?.heartbeatSeconds, 60);
});

test('bad input is refused with its own code and changes nothing', async (t) => {
  const { reg, store } = await registry();
  await reg.handleState(TOPIC, state(gw1, { online: false, cause: 'shutdown' }), false);
  const before = await store.get('gw-1');
  const genuine = state(gw1);
  const tampered = Buffer.from(genuine.toString().replace('"online":true', '"online":false'));
  const cases: [string, Buffer, string][] = [
    [TOPIC, Buffer.from('not json'), 'WARD_ENVELOPE_NOT_JSON'],
    [TOPIC, Buffer.from('{"payload":{},"kid":"x","sig":"y"}'), 'WARD_ENVELOPE_MALFORMED'],
    [TOPIC, Buffer.alloc(300 * 1024, 0x7b), 'WARD_ENVELOPE_TOO_LARGE'],
    [TOPIC, tampered, 'WARD_ENVELOPE_BAD_SIGNATURE'],
    [TOPIC, state(stranger), 'WARD_ENVELOPE_UNKNOWN_KEY'],
    [TOPIC, state(gw2), 'WARD_ENVELOPE_WRONG_SUBJECT'], // gw-2's key speaking on gw-1's topic
    ['ward/v1/gw-2/state', state(gw2), 'WARD_ENVELOPE_WRONG_SUBJECT'], // signed by gw-2 but about gw-1
    [TOPIC, state(gw1, { lifecycle: 'root' }), 'WARD_ENVELOPE_MALFORMED'],
    [TOPIC, state(gw1, { extra: 1 }), 'WARD_ENVELOPE_MALFORMED'],
    [TOPIC, state(gw1, {}, 5), 'WARD_ENVELOPE_ROLLBACK'],
    ['ward/v1/gw-1/other', state(gw1), 'WARD_ENVELOPE_MALFORMED'],
  ];
  for (const [topic, payload, code] of cases) {
    const e = await reg.handleState(topic, payload, false);
    t.is(e.outcome, 'rejected', code);
    t.is(e.code, code);
  }
  t.deepEqual(await store.get('gw-1'), before);
  t.is(reg.rejections().WARD_ENVELOPE_MALFORMED, 4);
});

test('the same message delivered twice is a replay the second time', async (t) => {
  const { reg } = await registry();
  const msg = state(gw1);
  t.is((await reg.handleState(TOPIC, msg, false)).outcome, 'applied');
  const again = await reg.handleState(TOPIC, msg, false);
  t.is(again.code, 'WARD_ENVELOPE_ROLLBACK');
  // ...but the retained copy of it after a controller restart is just a duplicate, not an alarm.
  t.is((await reg.handleState(TOPIC, msg, true)).outcome, 'duplicate');
});

test("a Will from an older session does not mark a reconnected device offline; the current session's does", async (t) => {
  const { reg, store } = await registry();
  const oldWill = state(gw1, { online: false, cause: 'lwt', session: 'session-old1' });
  const newWill = state(gw1, { online: false, cause: 'lwt', session: 'session-new1' });
  await reg.handleState(TOPIC, state(gw1, { session: 'session-new1' }), false);
  t.is((await reg.handleState(TOPIC, oldWill, false)).outcome, 'stale-lwt');
  t.true((await store.get('gw-1'))?.online);
  t.is((await reg.handleState(TOPIC, newWill, false)).outcome, 'applied');
  const r = await store.get('gw-1');
  t.false(r?.online);
  t.is(r?.offlineCause, 'lwt');
});

test('markAllOffline resets only online devices and names the cause', async (t) => {
  const { reg, store } = await registry();
  await reg.handleState(TOPIC, state(gw1), false);
  t.is(await reg.markAllOffline('broker-restart'), 1);
  t.is((await store.get('gw-1'))?.offlineCause, 'broker-restart');
  t.is(await reg.markAllOffline('broker-restart'), 0);
});

test('version floors are seeded from the store, so a restart does not reopen replays', async (t) => {
  const { reg, store } = await registry();
  const old = state(gw1);
  await reg.handleState(TOPIC, old, false);
  await reg.handleState(TOPIC, state(gw1), false);
  const reopened = await DeviceRegistry.open({ store, clock, devices: [], log: silent });
  t.is((await reopened.handleState(TOPIC, old, false)).code, 'WARD_ENVELOPE_ROLLBACK');
});

test('a device silent for more than 3 of its heartbeats is stale, not live', async (t) => {
  const { isLive, isStale } = await import('../../controller/store.js');
  const record = { id: 'gw-1', publicKey: gw1.publicRaw, kid: gw1.kid, registeredAt: 0, online: true, lastSeen: 1000, heartbeatSeconds: 60 };
  t.true(isLive(record, 1000_000 + 180_000));
  t.true(isStale(record, 1000_000 + 181_000));
  t.false(isLive(record, 1000_000 + 181_000));
  t.false(isStale({ ...record, online: false }, 1000_000 + 999_000), 'an offline device is offline, not stale');
});

test('each refused state message is an audit event naming the target device and the code, never an authenticated actor', async (t) => {
  const audit = new MemoryAuditSink();
  const { reg } = await registry(audit);
  await reg.handleState(TOPIC, state(stranger), false);
  await reg.handleState(TOPIC, Buffer.from('nope'), false);
  await reg.handleState(TOPIC, state(gw1), false);
  t.deepEqual(
    audit.events.map((e) => [e.category, e.actor, e.action, e.target, e.outcome, e.code]),
    [
      ['access-control', 'unknown', 'link.state', 'gw-1', 'refused', 'WARD_ENVELOPE_UNKNOWN_KEY'],
      ['request-error', 'unknown', 'link.state', 'gw-1', 'refused', 'WARD_ENVELOPE_NOT_JSON'],
    ],
  );
});

test('a state message read before a revocation and written after it keeps the revocation (one writer per device at a time)', async (t) => {
  const { reg, store } = await registry();
  const enrolled = await store.get('gw-1');
  if (enrolled === undefined) return t.fail('no record');
  const identity = {
    status: 'active' as const,
    site: 's',
    line: 'l',
    cell: 'c',
    roles: [],
    enrolledAt: 1,
    codeId: 'code',
    certSerial: '01',
    certNotAfter: 2,
    tlsKeyFingerprint: 'fp',
    serials: ['01'],
  };
  await store.put({ ...enrolled, identity });
  // The registry's read is held until the revocation has been asked for.
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const get = store.get.bind(store);
  let held = false;
  store.get = async (id: string) => {
    const record = await get(id);
    if (!held) {
      held = true;
      await gate;
    }
    return record;
  };
  const applying = reg.handleState(TOPIC, state(gw1), false);
  await new Promise((r) => setImmediate(r));
  t.true(held, 'the state message is between its read and its write');
  // What EnrollmentService.revoke writes, through the same per-device update.
  const revoking = updateDevice(store, 'gw-1', (record) => {
    const next = record?.identity ? { ...record, online: false, identity: { ...record.identity, status: 'revoked' as const } } : undefined;
    return next ? { next, result: next } : { result: undefined };
  });
  release();
  t.is((await applying).outcome, 'applied');
  await revoking;
  const stored = await store.get('gw-1');
  t.is(stored?.identity?.status, 'revoked', 'the heartbeat did not make the device active again');
  t.is(stored?.lifecycle, 'attesting', 'and what the state message said is kept');
});
