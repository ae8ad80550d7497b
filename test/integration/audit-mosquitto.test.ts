import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import mqtt from 'mqtt';
import { AuditJournal } from '../../agent/audit/journal.js';
import { systemClock } from '../../agent/core/clock.js';
import { JournalActions, parseEventText } from '../../agent/shared/audit/event.js';
import { ChainVerifier } from '../../agent/shared/audit/verify.js';
import { privateKeyToPem } from '../../agent/shared/keys.js';
import { topics } from '../../agent/shared/topics.js';
import type { Controller } from '../../controller/controller.js';
import { sampleEvent, silentLog, verifyJournal } from '../helpers/audit.js';
import { staticAgent, untilReceipted } from '../helpers/audit-stack.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { waitFor } from '../helpers/net.js';
import { makeDevice, REPO_ROOT, spawnProcess, spawnWard, startTestController, type TestDevice, writeAgentConfig } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// Real components: Mosquitto (Debian package) on a free loopback port as the only broker, the
// controller connected to it as an external broker, the agent in process or as its own process.

/** Everything the controller holds for a device, run through the verifier as a new reader would. */
async function verifyHeld(controller: Controller, device: TestDevice) {
  const head = await controller.auditStore.head(device.id);
  if (head === undefined) throw new Error('nothing held');
  const events = await controller.auditStore.events(device.id, head.chainIndex, 1, 1_000_000);
  const checkpoints = await controller.auditStore.checkpoints(device.id, head.chainIndex, 1, 1_000_000);
  const verifier = new ChainVerifier({ deviceKey: { kid: device.key.kid, publicKey: device.key.publicKey } });
  let c = 0;
  for (const e of events) {
    verifier.addEvent(e.text);
    while (checkpoints[c] && (checkpoints[c]?.payload.seq ?? 0) <= e.seq) verifier.addCheckpoint(checkpoints[c++]);
  }
  return { head, events: events.map((e) => parseEventText(e.text)), verdict: verifier.finish() };
}

test('Mosquitto: thousands of events appended while the broker is down all arrive exactly once after it returns, and verify', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-audit-m1');
  const controller = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });
  const { agent } = await staticAgent(t, device, controller, broker.url, {
    audit: { receiptTimeoutMs: 2_000, checkpointIntervalMs: 200, maxBatchEvents: 500, catchupBytesPerSecond: 1024 * 1024 },
  });
  await agent.start();
  let last = 0;
  for (let i = 0; i < 50; i++) last = (await agent.journal.append(sampleEvent(i)))?.seq ?? last;
  await untilReceipted(controller, agent, last);

  const OUTAGE_EVENTS = 3000;
  await broker.restart(async () => {
    await waitFor('agent notices the outage', () => agent.link?.connected === false, 20_000, 20);
    const appended = await Promise.all(Array.from({ length: OUTAGE_EVENTS }, (_, i) => agent.journal.append(sampleEvent(1000 + i))));
    last = Math.max(...appended.map((e) => e?.seq ?? 0));
    t.true(agent.journal.status().seq >= last, 'appends are durable with the broker gone');
  });
  const head = await untilReceipted(controller, agent, last, 90_000);
  t.is(head.status, 'ok', JSON.stringify(head.findings));

  const held = await verifyHeld(controller, device);
  t.deepEqual(
    held.events.map((e) => e.event.seq),
    Array.from({ length: held.head.seq }, (_, i) => i + 1),
    'every seq exactly once, none missing',
  );
  const details = held.events.filter((e) => e.event.action === 'modbus.write').map((e) => (e.event.details as { i: number }).i);
  t.is(details.length, 50 + OUTAGE_EVENTS);
  t.is(new Set(details).size, details.length, 'no event stored twice');
  t.is(held.verdict.status, 'intact', JSON.stringify(held.verdict.findings));
  t.is(held.verdict.sealedEvents, held.events.length);
  t.true(agent.journal.status().firstSeq > last, 'the agent pruned everything receipted');
  t.true((agent.shipper?.status().batchesSent ?? 0) >= Math.ceil(OUTAGE_EVENTS / 500), 'the backlog went out in bounded batches');
});

test('Mosquitto: kill -9 of the agent while it journals and ships a flood of refused commands loses nothing; the restarted session is stitched on', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-audit-m2');
  const controller = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });
  const config = await writeAgentConfig(device, controller, broker.url, {
    audit: { receiptTimeoutMs: 2_000, checkpointIntervalMs: 100 },
    hardware: { statusLed: 'none', watchdog: 'none' },
  });
  const first = spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('first session shipped', async () => ((await controller.auditStore.head(device.id))?.seq ?? 0) >= 3, 45_000);

  // An attacker floods the command topic; every refusal is an audit event the agent must journal and ship.
  const attacker = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0, clientId: 'flood' });
  t.teardown(() => attacker.endAsync(true));
  for (let i = 0; i < 400; i++) await attacker.publishAsync(topics.cmd(device.id), `garbage ${i}`, { qos: 0 });
  await waitFor('some refusals shipped', async () => ((await controller.auditStore.head(device.id))?.events ?? 0) > 50, 45_000, 20);
  first.child.kill('SIGKILL');
  await first.exited;
  const atKill = await controller.auditStore.head(device.id);

  const second = spawnWard(t, ['agent', 'run', '-c', config]);
  const final = await waitFor(
    'second session shipped',
    async () => {
      const held = await verifyHeld(controller, device);
      return held.events.some((e) => e.event.action === JournalActions.sessionStart && e.event.session === 2) ? held : undefined;
    },
    45_000,
  );
  second.child.kill('SIGTERM');
  t.is(await second.exited, 0);

  t.is(final.head.status, 'ok', JSON.stringify(final.head.findings));
  t.is(final.verdict.status, 'intact', JSON.stringify(final.verdict.findings));
  t.true(final.head.seq >= (atKill?.seq ?? 0), 'nothing the controller had acknowledged went missing');
  const refusals = final.events.filter((e) => e.event.action === 'link.command' && e.event.outcome === 'refused');
  t.true(refusals.length >= (atKill?.events ?? 0) - 10, `${refusals.length} refusals held`);
  t.is(refusals[0]?.event.code, 'WARD_ENVELOPE_NOT_JSON');
  const sessionStart = final.events.find((e) => e.event.action === JournalActions.sessionStart && e.event.session === 2);
  t.like(sessionStart?.event.details, { session: 2, previousSession: 1 });
});

test('kill -9 in the middle of appends: every append that resolved is on disk afterwards, and the chain verifies', async (t) => {
  const base = await tempDir(t, 'ward-crash-');
  const device = await makeDevice(t, 'gw-crash');
  const keyFile = join(base, 'key.pem');
  await writeFile(keyFile, privateKeyToPem(device.key), { mode: 0o600 });
  const dir = join(base, 'audit');
  const writer = spawnProcess(t, process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'test/fixtures/audit-writer.ts'), dir, keyFile]);
  const acked = () => [...writer.output().matchAll(/^ack (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])] as const);
  await waitFor('writer acknowledged 2000 appends', () => acked().length >= 2000, 60_000, 10);
  writer.child.kill('SIGKILL');
  await writer.exited;
  const acknowledged = acked();

  const journal = await AuditJournal.open({ dir, key: device.key, clock: systemClock, log: silentLog });
  t.teardown(() => journal.close());
  t.deepEqual(journal.status().repairs, [], 'a kill is not damage: nothing to repair');
  const bySeq = new Map((await journal.readEvents(1)).map((e) => [e.event.seq, e.event]));
  const missing = acknowledged.filter(([seq, n]) => (bySeq.get(seq)?.details as { n?: number } | undefined)?.n !== n);
  t.deepEqual(missing, [], `all ${acknowledged.length} acknowledged appends are present with their content`);
  await journal.seal();
  const verdict = await verifyJournal(journal, device.key);
  t.is(verdict.status, 'intact', JSON.stringify(verdict.findings));
});
