import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import mqtt from 'mqtt';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import {
  BATCH_TYPE,
  type BatchMessage,
  GENESIS_PREV,
  makeEvent,
  parseEventText,
  RECEIPT_TYPE,
  sanitizeInput,
  signCheckpoint,
} from '../../agent/shared/audit/event.js';
import { encodeEnvelope, seal } from '../../agent/shared/envelope.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { topics } from '../../agent/shared/topics.js';
import type { BatchOutcome } from '../../controller/audit.js';
import { sampleEvent } from '../helpers/audit.js';
import { staticAgent, untilReceipted } from '../helpers/audit-stack.js';
import { waitFor } from '../helpers/net.js';
import { getJson, makeDevice, startTestController } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// Real components: the embedded aedes broker, the controller and an agent in this process, and a raw
// mqtt.js client playing the attacker on the wire (aedes without a fleet is an open broker, so anyone
// can publish on a device's topics: exactly the threat the signatures are for).

async function rawClient(t: ExecutionContext, url: string) {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, clientId: `attacker-${Math.random().toString(36).slice(2)}` });
  t.teardown(() => client.endAsync(true));
  return client;
}

function nextOutcome(controller: { auditIngest: { onBatch(l: (id: string, o: BatchOutcome) => void): () => void } }, deviceId: string): Promise<BatchOutcome> {
  return new Promise((resolve) => {
    const off = controller.auditIngest.onBatch((id, outcome) => {
      if (id !== deviceId) return;
      off();
      resolve(outcome);
    });
  });
}

test('events reach the controller verified; its signed receipt prunes the agent journal; the API lists them as verified', async (t) => {
  const device = await makeDevice(t, 'gw-audit-1');
  const controller = await startTestController(t, { devices: [device] });
  const { agent } = await staticAgent(t, device, controller, controller.brokerUrl);
  await agent.start();
  let last = 0;
  for (let i = 0; i < 100; i++) last = (await agent.journal.append(sampleEvent(i)))?.seq ?? last;

  const head = await untilReceipted(controller, agent, last);
  t.is(head.status, 'ok', JSON.stringify(head.findings));
  t.is(head.chain, agent.journal.head().chain);
  const status = agent.journal.status();
  t.true(status.firstSeq > last, `pruned up to the receipt (first held seq ${status.firstSeq})`);
  t.true((await agent.journal.receipts()).length >= 1, 'receipts are kept');

  const api = await getJson<{ verdict: { status: string; events: number }; events: { seq: number; verification: string; event: { action: string } }[] }>(
    `${controller.apiUrl}/api/devices/${device.id}/audit?from=1&limit=1000`,
  );
  t.is(api.status, 200);
  t.is(api.body.verdict.status, 'ok');
  const listed = api.body.events.filter((e) => e.event.action === 'modbus.write');
  t.is(listed.length, 100);
  t.true(api.body.events.every((e) => e.verification === 'verified'));
  t.deepEqual(
    api.body.events.map((e) => e.seq),
    Array.from({ length: api.body.events.length }, (_, i) => i + 1),
    'every seq from 1, once',
  );
  t.truthy(
    api.body.events.find((e) => e.event.action === 'lifecycle.transition'),
    'lifecycle changes are audit events',
  );
  t.is((await getJson(`${controller.apiUrl}/api/devices/nobody/audit`)).status, 404);
  t.is((await getJson(`${controller.apiUrl}/api/devices/${device.id}/audit?limit=0`)).status, 400);
});

test('on the wire: forged, malformed and tampered batches are refused without touching the verdict; a replayed batch is a duplicate', async (t) => {
  const device = await makeDevice(t, 'gw-audit-2');
  const controller = await startTestController(t, { devices: [device] });
  const spy = await rawClient(t, controller.brokerUrl);
  const captured: Buffer[] = [];
  await spy.subscribeAsync(topics.audit(device.id), { qos: 1 });
  spy.on('message', (_topic, payload) => captured.push(Buffer.from(payload)));

  const { agent } = await staticAgent(t, device, controller, controller.brokerUrl);
  await agent.start();
  let last = 0;
  for (let i = 0; i < 10; i++) last = (await agent.journal.append(sampleEvent(i)))?.seq ?? last;
  await untilReceipted(controller, agent, last);
  // From here on only the attacker sends batches, so each outcome below is the answer to one of them.
  await agent.stop();
  const before = await controller.auditStore.head(device.id);
  if (before === undefined) throw new Error('nothing held');
  const genuine = await waitFor('a batch captured', () => captured[0]);
  const attacker = await rawClient(t, controller.brokerUrl);
  const send = async (payload: Buffer | string) => {
    const outcome = nextOutcome(controller, device.id);
    await attacker.publishAsync(topics.audit(device.id), payload, { qos: 1 });
    return outcome;
  };

  t.like(await send('not json at all'), { outcome: 'refused', code: 'WARD_AUDIT_BATCH_INVALID' });

  // Events and checkpoint signed by a key that is not the device's.
  const forger = generateSigningKey();
  const batch = JSON.parse(genuine.toString()) as BatchMessage;
  const forged: BatchMessage = { ...batch, checkpoint: signCheckpoint(forger, batch.checkpoint.payload) };
  t.like(await send(JSON.stringify(forged)), { outcome: 'refused', code: 'WARD_ENVELOPE_BAD_SIGNATURE' });

  // A genuine batch with one event edited in transit no longer adds up to its checkpoint.
  const edited = batch.events.map((text, i) => (i === 1 ? text.replace('"outcome":"success"', '"outcome":"failure"') : text));
  t.like(await send(JSON.stringify({ ...batch, events: edited })), { outcome: 'refused' });

  // The genuine batch again (a replay, or a QoS 1 redelivery): nothing new stored, the receipt is sent again.
  t.like(await send(genuine), { outcome: 'duplicate' });

  const after = await controller.auditStore.head(device.id);
  t.is(after?.status, 'ok', 'nothing an outsider sent changed the verdict');
  t.is(after?.events, before.events, 'no event stored twice or forged in');
  t.is(controller.auditIngest.refusedFor(device.id), 3, 'refusals are counted (in memory: an outsider must not cost a disk write)');
  t.is(after?.duplicates, before.duplicates + 1);
  const health = await getJson<{ audit: { refused: Record<string, number> } }>(`${controller.apiUrl}/api/health`);
  t.is(health.body.audit.refused.WARD_ENVELOPE_BAD_SIGNATURE, 1);
});

test('a device-signed history that contradicts what the controller holds (a fork, a restart without reason) turns the verdict broken', async (t) => {
  // The attacker here owns the gateway (root, device key) and rewrites its journal: the signatures are
  // valid, so only the controller's memory of what it already received can tell.
  const device = await makeDevice(t, 'gw-audit-3');
  const controllerDir = join(await tempDir(t, 'ward-controller-'), 'state');
  const controller = await startTestController(t, { devices: [device], stateDir: controllerDir });
  const { agent } = await staticAgent(t, device, controller, controller.brokerUrl);
  await agent.start();
  let last = 0;
  for (let i = 0; i < 5; i++) last = (await agent.journal.append(sampleEvent(i)))?.seq ?? last;
  const head = await untilReceipted(controller, agent, last);
  await agent.stop();

  const held = (await controller.auditStore.events(device.id, head.chainIndex, 1, 10_000)).map((e) => parseEventText(e.text));
  const at3 = held.find((e) => e.event.seq === 3);
  if (at3 === undefined) throw new Error('seq 3 not held');
  // Same seq 4.., different content, linked from the genuine seq 3, sealed with the real device key.
  const rewritten = [];
  let prev = at3.hash;
  for (let seq = 4; seq <= head.seq + 2; seq++) {
    const made = makeEvent(
      { chain: head.chain, seq, prev, session: at3.event.session, boot: at3.event.boot, time: Date.now(), mono: at3.event.mono + seq },
      sanitizeInput(sampleEvent(seq, { details: { forged: true } })),
    );
    rewritten.push(made);
    prev = made.hash;
  }
  const lastMade = rewritten.at(-1);
  if (lastMade === undefined) throw new Error('nothing rewritten');
  const sealed = signCheckpoint(device.key, {
    chain: head.chain,
    seq: lastMade.event.seq,
    head: lastMade.hash,
    session: lastMade.event.session,
    time: Date.now(),
  });
  const attacker = await rawClient(t, controller.brokerUrl);
  const fork: BatchMessage = { typ: BATCH_TYPE, v: 1, chain: head.chain, events: rewritten.map((e) => e.text), checkpoint: sealed };
  const outcome = nextOutcome(controller, device.id);
  await attacker.publishAsync(topics.audit(device.id), JSON.stringify(fork), { qos: 1 });
  const result = await outcome;
  t.is(result.outcome, 'broken');
  const verdict = await controller.auditStore.head(device.id);
  t.is(verdict?.status, 'broken');
  t.like(verdict?.findings[0], { kind: 'fork', seq: 4 });
  t.is(verdict?.seq, head.seq, 'the contradicting events are not stored');

  // A brand-new chain without a signed reason is also refused as a verdict, not silently adopted.
  const newChain = 'N'.repeat(22);
  const start = makeEvent(
    { chain: newChain, seq: 1, prev: GENESIS_PREV, session: 1, boot: 'b', time: Date.now(), mono: 0 },
    sanitizeInput({ category: 'audit', actor: 'ward-agent', action: 'audit.chain-start', outcome: 'success', details: {} }),
  );
  const restart: BatchMessage = {
    typ: BATCH_TYPE,
    v: 1,
    chain: newChain,
    events: [start.text],
    checkpoint: signCheckpoint(device.key, { chain: newChain, seq: 1, head: start.hash, session: 1, time: Date.now() }),
  };
  const second = nextOutcome(controller, device.id);
  await attacker.publishAsync(topics.audit(device.id), JSON.stringify(restart), { qos: 1 });
  const restartOutcome = await second;
  t.is(restartOutcome.outcome, 'broken');
  t.true(restartOutcome.outcome === 'broken' && restartOutcome.findings.some((f) => f.kind === 'unexplained-restart'));
});

test('the agent refuses receipts for another device, for a seq it never sent, or not signed by the controller, and records each', async (t) => {
  const device = await makeDevice(t, 'gw-audit-4');
  const controllerDir = join(await tempDir(t, 'ward-controller-'), 'state');
  const controller = await startTestController(t, { devices: [device], stateDir: controllerDir });
  const { key: controllerKey } = await loadOrCreateSigningKey(controllerDir, 'controller-key.pem');
  const { agent, audit } = await staticAgent(t, device, controller, controller.brokerUrl);
  await agent.start();
  let last = 0;
  for (let i = 0; i < 5; i++) last = (await agent.journal.append(sampleEvent(i)))?.seq ?? last;
  await untilReceipted(controller, agent, last);
  const before = agent.journal.status();

  const attacker = await rawClient(t, controller.brokerUrl);
  const { chain, seq, head } = { chain: before.chain, seq: before.seq, head: before.head };
  const cases: [string, Buffer][] = [
    ['WARD_ENVELOPE_WRONG_SUBJECT', encodeEnvelope(seal(controllerKey, { typ: RECEIPT_TYPE, sub: 'gw-other', chain, seq, head }, { ttlSeconds: 60 }))],
    [
      'WARD_AUDIT_RECEIPT_INVALID',
      encodeEnvelope(seal(controllerKey, { typ: RECEIPT_TYPE, sub: device.id, chain, seq: seq + 1000, head }, { ttlSeconds: 60 })),
    ],
    ['WARD_ENVELOPE_UNKNOWN_KEY', encodeEnvelope(seal(generateSigningKey(), { typ: RECEIPT_TYPE, sub: device.id, chain, seq, head }, { ttlSeconds: 60 }))],
  ];
  for (const [code, payload] of cases) {
    await attacker.publishAsync(topics.auditReceipt(device.id), payload, { qos: 1 });
    await waitFor(`receipt refused with ${code}`, () => audit.find((e) => e.action === 'audit.receipt' && e.code === code), 10_000, 20);
  }
  // Each refusal is itself an audit event, shipped and genuinely receipted meanwhile: what was pruned must
  // match what the controller holds, never what the forged receipts claimed.
  t.is(agent.shipper?.status().receiptsRefused, 3);
  const receipted = agent.journal.status().receipted;
  const held = await controller.auditStore.head(device.id);
  if (receipted === null || held === undefined) throw new Error('nothing receipted');
  t.true(receipted.seq <= held.seq && receipted.seq < before.seq + 1000);
  const heldText = await controller.auditStore.eventText(device.id, held.chainIndex, receipted.seq);
  t.is(heldText === undefined ? undefined : parseEventText(heldText).hash, receipted.head);
});

test('a wiped journal cannot pass unnoticed: the new chain is accepted only as a signed restart, and the verdict says so', async (t) => {
  const device = await makeDevice(t, 'gw-audit-5');
  const controller = await startTestController(t, { devices: [device] });
  const spy = await rawClient(t, controller.brokerUrl);
  const captured: Buffer[] = [];
  await spy.subscribeAsync(topics.audit(device.id), { qos: 1 });
  spy.on('message', (_topic, payload) => captured.push(Buffer.from(payload)));
  const first = await staticAgent(t, device, controller, controller.brokerUrl);
  await first.agent.start();
  const last = (await first.agent.journal.append(sampleEvent(1)))?.seq ?? 0;
  const before = await untilReceipted(controller, first.agent, last);
  await first.agent.stop();
  await rm(join(device.stateDir, 'audit'), { recursive: true, force: true });

  const second = await staticAgent(t, device, controller, controller.brokerUrl);
  await second.agent.start();
  const seq = (await second.agent.journal.append(sampleEvent(2)))?.seq ?? 0;
  const after = await untilReceipted(controller, second.agent, seq);
  // The old chain's first batch, replayed: a restart already happened, so it is old evidence, not a new restart.
  const oldBatch = await waitFor('old batch captured', () => captured[0]);
  const replayed = nextOutcome(controller, device.id);
  const attacker = await rawClient(t, controller.brokerUrl);
  await attacker.publishAsync(topics.audit(device.id), oldBatch, { qos: 1 });
  t.like(await replayed, { outcome: 'refused', code: 'WARD_AUDIT_BATCH_INVALID' });
  t.is((await controller.auditStore.head(device.id))?.chain, after.chain, 'the head stays on the current chain');
  t.is(after.chainIndex, before.chainIndex + 1, 'the old chain stays archived under its own index');
  t.not(after.chain, before.chain);
  t.is(after.status, 'warnings');
  t.like(after.findings[0], { kind: 'restart', seq: 1 });
  t.regex(after.findings[0]?.message ?? '', /new journal/);
  const old = await controller.auditStore.events(device.id, before.chainIndex, 1, 1000);
  t.is(old.length, before.seq, 'nothing of the first chain was lost at the controller');
});

/** Events the device key signs, continuing from `after` (tests play a device whose journal they control). */
function continueChain(
  key: import('../../agent/shared/keys.js').SigningKey,
  after: { chain: string; seq: number; hash: string; session: number; mono: number },
  count: number,
  first?: { seq: number; input: import('../../agent/core/audit.js').AuditEventInput },
) {
  const made: ReturnType<typeof makeEvent>[] = [];
  let prev = after.hash;
  let seq = after.seq;
  for (let i = 0; i < count; i++) {
    const special = i === 0 ? first : undefined;
    seq = special?.seq ?? seq + 1;
    const e = makeEvent(
      { chain: after.chain, seq, prev, session: after.session, boot: 'b', time: Date.now(), mono: after.mono + i + 1 },
      sanitizeInput(special?.input ?? sampleEvent(seq)),
    );
    made.push(e);
    prev = e.hash;
  }
  const batch = (from = 0): BatchMessage => {
    const part = made.slice(from);
    const last = part.at(-1);
    if (last === undefined) throw new Error('empty');
    return {
      typ: BATCH_TYPE,
      v: 1,
      chain: after.chain,
      events: part.map((e) => e.text),
      checkpoint: signCheckpoint(key, { chain: after.chain, seq: last.event.seq, head: last.hash, session: last.event.session, time: Date.now() }),
    };
  };
  return { made, batch };
}

test('replays and cut-down copies of genuine batches are refused and never break the verdict; a declared loss of held events is a warning', async (t) => {
  const device = await makeDevice(t, 'gw-audit-6');
  const controller = await startTestController(t, { devices: [device] });
  const { agent } = await staticAgent(t, device, controller, controller.brokerUrl);
  await agent.start();
  const last = (await agent.journal.append(sampleEvent(1)))?.seq ?? 0;
  await untilReceipted(controller, agent, last);
  await agent.stop();
  const attacker = await rawClient(t, controller.brokerUrl);
  const send = async (batch: BatchMessage) => {
    const outcome = nextOutcome(controller, device.id);
    await attacker.publishAsync(topics.audit(device.id), JSON.stringify(batch), { qos: 1 });
    return outcome;
  };
  const tip = async () => {
    const head = await controller.auditStore.head(device.id);
    if (head === undefined) throw new Error('nothing held');
    const text = await controller.auditStore.eventText(device.id, head.chainIndex, head.seq);
    const parsed = parseEventText(text ?? '');
    return { head, after: { chain: head.chain, seq: head.seq, hash: head.head, session: parsed.event.session, mono: parsed.event.mono } };
  };

  // A suffix of a genuine batch that arrives before the batch itself: refused, then the batch is accepted.
  const { head: h0, after } = await tip();
  const next = continueChain(device.key, after, 5);
  t.like(await send(next.batch(2)), { outcome: 'refused', code: 'WARD_AUDIT_BATCH_INVALID' });
  t.is((await controller.auditStore.head(device.id))?.status, 'ok');
  t.like(await send(next.batch()), { outcome: 'accepted', seq: h0.seq + 5 });

  // The device repaired its journal after losing seq (head-1).. it had already shipped: it declares them lost,
  // linked to its last good event. The controller keeps what it holds and records a warning, not a fork.
  const { head: h1 } = await tip();
  const goodText = await controller.auditStore.eventText(device.id, h1.chainIndex, h1.seq - 2);
  const good = parseEventText(goodText ?? '');
  const gapTo = h1.seq + 3;
  const repaired = continueChain(
    device.key,
    { chain: h1.chain, seq: h1.seq - 2, hash: good.hash, session: good.event.session, mono: good.event.mono + 10 },
    2,
    {
      seq: gapTo + 1,
      input: {
        category: 'audit',
        actor: 'ward-agent',
        action: 'audit.gap',
        outcome: 'failure',
        details: { from: h1.seq - 1, to: gapTo, reason: 'test damage' },
      },
    },
  );
  const declared = await send(repaired.batch());
  t.like(declared, { outcome: 'accepted', seq: gapTo + 2 });
  const h2 = await controller.auditStore.head(device.id);
  t.is(h2?.status, 'warnings');
  t.like(h2?.findings[0], { kind: 'declared-gap' });
  t.regex(h2?.findings.map((f) => f.message).join('\n') ?? '', /had already received seq/);
  t.truthy(await controller.auditStore.eventText(device.id, h1.chainIndex, h1.seq), 'the events it already held are kept');
});

test('a first batch that arrived cut short is completed by the full one, so the agent never prunes what the controller lacks', async (t) => {
  const device = await makeDevice(t, 'gw-audit-7');
  const controller = await startTestController(t, { devices: [device] });
  await waitFor('controller subscribed', () => controller.session.connected, 10_000, 20);
  const attacker = await rawClient(t, controller.brokerUrl);
  const chain = 'C'.repeat(22);
  const start = makeEvent(
    { chain, seq: 1, prev: GENESIS_PREV, session: 1, boot: 'b', time: Date.now(), mono: 0 },
    sanitizeInput({ category: 'audit', actor: 'ward-agent', action: 'audit.chain-start', outcome: 'success', details: { reason: 'new journal' } }),
  );
  const rest = continueChain(device.key, { chain, seq: 1, hash: start.hash, session: 1, mono: 0 }, 5);
  const full: BatchMessage = { ...rest.batch(), events: [start.text, ...rest.made.map((e) => e.text)] };
  const send = async (batch: BatchMessage) => {
    const outcome = nextOutcome(controller, device.id);
    await attacker.publishAsync(topics.audit(device.id), JSON.stringify(batch), { qos: 1 });
    return outcome;
  };
  t.like(await send(rest.batch(3)), { outcome: 'accepted' });
  t.is((await controller.auditStore.head(device.id))?.firstSeq, 5);
  t.like(await send(full), { outcome: 'duplicate' });
  const head = await controller.auditStore.head(device.id);
  t.is(head?.firstSeq, 1, 'the missing start was filled in');
  t.deepEqual(
    (await controller.auditStore.events(device.id, 1, 1, 100)).map((e) => e.seq),
    [1, 2, 3, 4, 5, 6],
  );
});
