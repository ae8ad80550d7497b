import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { Level } from 'level';
import { AuditJournal } from '../../agent/audit/journal.js';
import { ManualClock } from '../../agent/core/clock.js';
import { ErrorCodes } from '../../agent/core/errors.js';
import { JournalActions, parseEventText, statementSignatureValid } from '../../agent/shared/audit/event.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { openTestJournal, receiptFor, sampleEvent, verifyJournal } from '../helpers/audit.js';

// Real LevelDB in a temp folder throughout: durability and damage are properties of the store, not of a mock.

test('appends are durable, chained and sealed: a reopened journal holds every resolved event and its export verifies intact', async (t) => {
  const { journal, key, reopen } = await openTestJournal(t);
  const resolved = [];
  for (let i = 0; i < 20; i++) resolved.push(await journal.append(sampleEvent(i)));
  const concurrent = await Promise.all(Array.from({ length: 500 }, (_, i) => journal.append(sampleEvent(100 + i))));
  const seqs = [...resolved, ...concurrent].map((e) => e?.seq);
  t.deepEqual(
    seqs,
    Array.from({ length: 520 }, (_, i) => i + 3),
    'chain-start and session-start take seq 1 and 2; every append gets the next seq, concurrent ones included',
  );
  await journal.close();

  const again = await reopen();
  const events = await again.readEvents(1);
  t.is(events.length, 523, 'all 520 appended events plus chain start, session start and the new session start');
  t.is(events[0]?.event.action, JournalActions.chainStart);
  t.is(events.at(-1)?.event.action, JournalActions.sessionStart);
  t.is(events.at(-1)?.event.session, 2);
  t.deepEqual(events.at(-1)?.event.details, { session: 2, previousSession: 1, boot: 'test-boot', pid: process.pid });
  for (const [i, e] of events.entries()) {
    if (i > 0) t.is(e.event.prev, events[i - 1]?.hash ?? 'missing', `seq ${e.event.seq} links to its predecessor`);
  }
  await again.seal();
  const verdict = await verifyJournal(again, key);
  t.is(verdict.status, 'intact', JSON.stringify(verdict.findings));
  t.is(verdict.sealedEvents, verdict.events, 'every event is covered by a device-signed checkpoint');
});

test('secrets never enter an event: secret-named fields and enrollment codes are redacted, sizes bounded', async (t) => {
  const { journal } = await openTestJournal(t);
  const event = await journal.append(
    sampleEvent(1, {
      actor: 'WARD1:ABCDEF',
      details: { password: 'hunter2', token: 'abc', nested: { privateKey: 'k', note: 'WARD1:SECRET' }, big: 'x'.repeat(5000), n: Number.NaN },
    }),
  );
  t.is(event?.actor, '[redacted]');
  const d = event?.details as Record<string, unknown>;
  t.is(d.password, '[redacted]');
  t.is(d.token, '[redacted]');
  t.deepEqual(d.nested, { privateKey: '[redacted]', note: '[redacted enrollment code]' });
  t.true(String(d.big).length < 600 && String(d.big).includes('(+4488 chars)'));
  t.is(d.n, 'NaN');
  t.false(JSON.stringify(await journal.readEvents(1)).includes('hunter2'));
  await t.throwsAsync(journal.append({ ...sampleEvent(2), category: 'nonsense' as never }), { instanceOf: TypeError });
  t.notThrows(() => journal.record({ ...sampleEvent(3), action: 'bad action with spaces' }), 'record() never throws, even on misuse');
});

test('a receipt prunes exactly up to its seq and is kept; wrong chain, unsent seq, wrong head and stale receipts are told apart', async (t) => {
  const { journal, key } = await openTestJournal(t);
  const controller = generateSigningKey();
  for (let i = 0; i < 10; i++) await journal.append(sampleEvent(i));
  const cp = await journal.seal();
  if (cp === undefined) throw new Error('no checkpoint');
  const at6 = (await journal.readEvents(6, 1))[0];
  if (at6 === undefined) throw new Error('no event 6');
  const { chain } = journal.head();

  const refused = async (fields: { chain: string; seq: number; head: string }) => {
    const err = await t.throwsAsync(journal.acceptReceipt(receiptFor(controller, 'gw-1', fields)));
    return (err as { code?: string }).code;
  };
  t.is(await refused({ chain: 'A'.repeat(22), seq: 6, head: at6.hash }), ErrorCodes.AUDIT_RECEIPT_INVALID, 'another chain');
  t.is(await refused({ chain, seq: cp.payload.seq + 5, head: at6.hash }), ErrorCodes.AUDIT_RECEIPT_INVALID, 'a seq never shipped');
  t.is(await refused({ chain, seq: 6, head: 'f'.repeat(64) }), ErrorCodes.AUDIT_RECEIPT_INVALID, 'a head that is not ours');
  t.is(journal.status().firstSeq, 1, 'nothing pruned by refused receipts');

  t.deepEqual(await journal.acceptReceipt(receiptFor(controller, 'gw-1', { chain, seq: 6, head: at6.hash })), { pruned: 6, stale: false });
  t.is(journal.status().firstSeq, 7);
  t.deepEqual(journal.status().receipted, { seq: 6, head: at6.hash });
  t.deepEqual((await journal.readEvents(1)).map((e) => e.event.seq)[0], 7, 'events up to the receipt are gone');
  t.deepEqual(await journal.acceptReceipt(receiptFor(controller, 'gw-1', { chain, seq: 6, head: at6.hash })), { pruned: 0, stale: true });
  t.is((await journal.receipts()).length, 2 - 1, 'the receipt is kept once (a repeat changes nothing)');

  // The export after pruning starts at seq 7, anchored by the kept receipt.
  const verdict = await verifyJournal(journal, key, controller);
  t.is(verdict.status, 'intact', JSON.stringify(verdict.findings));
});

test('quota: past the warning threshold a signed warning; when full, events are counted (durably) and written as one overflow event once receipts free space', async (t) => {
  const { journal, key, reopen } = await openTestJournal(t, { maxBytes: 20_000, warnFraction: 0.5 });
  const controller = generateSigningKey();
  let stored = 0;
  let counted = 0;
  for (let i = 0; i < 200; i++) {
    const e = await journal.append(sampleEvent(i, { details: { i, pad: 'p'.repeat(100) } }));
    if (e) stored++;
    else counted++;
  }
  t.true(stored > 20 && counted > 50, `${stored} stored, ${counted} counted`);
  const status = journal.status();
  t.is(status.level, 'full');
  t.is(status.overflowCount, counted);
  const events = await journal.readEvents(1);
  t.truthy(
    events.find((e) => e.event.action === JournalActions.quotaWarning),
    'the warning threshold was recorded as an event',
  );
  t.falsy(
    events.find((e) => e.event.action === JournalActions.overflow),
    'no overflow event while still full',
  );

  // The count survives a restart (it is written with the events), then a receipt frees space.
  await journal.close();
  const again = await reopen();
  t.is(again.status().overflowCount, counted);
  await again.seal();
  const sealed = again.status();
  const head = (await again.readEvents(sealed.sealedSeq, 1))[0];
  if (head === undefined) throw new Error('no sealed head');
  await again.acceptReceipt(receiptFor(controller, 'gw-1', { chain: sealed.chain, seq: sealed.sealedSeq, head: head.hash }));
  await again.append(sampleEvent(999));
  const after = await again.readEvents(1);
  const overflow = after.find((e) => e.event.action === JournalActions.overflow);
  t.truthy(overflow, 'the aggregate became a signed event');
  const details = (overflow?.event.details ?? {}) as { count?: number; byAction?: object };
  t.is(details.count, counted);
  t.deepEqual(details.byAction, { 'access-control/modbus.write/success': counted });
  t.is(after.at(-1)?.event.action, 'modbus.write', 'the overflow event precedes anything newer');
  t.is(again.status().level, 'ok');
  await again.seal();
  const verdict = await verifyJournal(again, key, controller);
  t.true(
    verdict.findings.some((f) => f.kind === 'overflow'),
    'the verifier reports the aggregated events',
  );
  t.true(verdict.ok);
});

test('an edited event on disk is found on open: the damaged range is quarantined and declared in a signed gap event', async (t) => {
  const { journal, dir, key, reopen } = await openTestJournal(t);
  for (let i = 0; i < 30; i++) await journal.append(sampleEvent(i));
  await journal.close();

  // An attacker with root edits one event (seq 12) in place.
  const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
  const k = `e:${'12'.padStart(16, '0')}`;
  const original = (await db.get(k)) as string;
  await db.put(k, original.replace('"i":9', '"i":900'));
  await db.close();

  const again = await reopen();
  const status = again.status();
  t.deepEqual(
    status.repairs.map((r) => [r.from, r.to]),
    [[12, 32]],
    'from the edited event to the old head',
  );
  t.regex(status.repairs[0]?.reason ?? '', /seq 13 does not link to seq 12/);
  t.true(
    (await again.quarantined()).some((q) => q.value.includes('"i":900')),
    'the damaged records are kept aside, not deleted',
  );
  const events = await again.readEvents(1);
  const gap = events.find((e) => e.event.action === JournalActions.gap);
  t.is(gap?.event.seq, 33, 'sequence numbers are never reused');
  t.deepEqual(gap?.event.details, { from: 12, to: 32, reason: status.repairs[0]?.reason });
  t.is(gap?.event.prev, events.find((e) => e.event.seq === 11)?.hash, 'the chain continues from the last good event');
  await again.seal();
  const verdict = await verifyJournal(again, key);
  t.deepEqual(
    verdict.findings.filter((f) => f.severity !== 'info').map((f) => [f.kind, f.seq]),
    [['declared-gap', 33]],
  );
});

test('file-level corruption of the LevelDB log is detected and declared, never silently accepted', async (t) => {
  const { journal, dir, key, reopen } = await openTestJournal(t);
  // Many small batches so the write-ahead log holds many records.
  for (let i = 0; i < 400; i++) await journal.append(sampleEvent(i, { details: { i, pad: 'q'.repeat(200) } }));
  const before = journal.head();
  await journal.close();

  const logs = (await readdir(dir)).filter((f) => f.endsWith('.log'));
  t.true(logs.length > 0);
  const file = join(dir, logs.sort().at(-1) as string);
  const bytes = await readFile(file);
  // Flip bytes in the middle of the log: LevelDB's recovery skips records whose checksum fails.
  const at = Math.floor(bytes.length / 3);
  for (let i = at; i < at + 64; i++) bytes.writeUInt8((bytes[i] ?? 0) ^ 0xff, i);
  await writeFile(file, bytes);

  const again = await reopen();
  const status = again.status();
  const events = await again.readEvents(1);
  const declared =
    status.repairs.length > 0 ||
    (status.chain !== before.chain &&
      events[0]?.event.action === JournalActions.chainStart &&
      /unreadable|quarantined/.test(JSON.stringify(events[0]?.event.details)));
  t.true(declared, `damage declared: repairs ${JSON.stringify(status.repairs)}, chain ${status.chain} vs ${before.chain}`);
  await again.seal();
  const verdict = await verifyJournal(again, key);
  t.not(verdict.status, 'intact', 'the verdict shows the loss');
  t.true(
    verdict.findings.some((f) => f.kind === 'declared-gap' || f.kind === 'restart'),
    JSON.stringify(verdict.findings),
  );
});

test('a new device key starts a new chain that says why; the old journal is kept aside', async (t) => {
  const { journal, dir, reopen } = await openTestJournal(t);
  await journal.append(sampleEvent(1));
  const oldChain = journal.head().chain;
  await journal.close();
  const newKey = generateSigningKey();
  const again = await reopen({ key: newKey });
  t.not(again.head().chain, oldChain);
  const first = (await again.readEvents(1))[0];
  t.is(first?.event.action, JournalActions.chainStart);
  t.regex(String(first?.event.details?.reason), /device key changed/);
  t.true((await readdir(join(dir, '..'))).some((f) => f.startsWith('audit.aside-')));
});

test('batches end exactly at a signed checkpoint and respect the size limits', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 10, 26));
  const { journal, key } = await openTestJournal(t, { clock, checkpointEvents: 50, checkpointIntervalMs: 60_000 });
  for (let i = 0; i < 175; i++) await journal.append(sampleEvent(i));
  await journal.seal();
  const small = await journal.batchFrom(1, { maxEvents: 120, maxBytes: 1_000_000 });
  if (small === undefined) throw new Error('no batch');
  t.is(small.checkpoint.payload.seq, small.events.length, 'from seq 1, the batch ends at its checkpoint');
  t.true(small.events.length <= 120);
  t.true(statementSignatureValid(small.checkpoint, key.publicKey));
  t.is(parseEventText(small.events.at(-1) as string).hash, small.checkpoint.payload.head);
  const tiny = await journal.batchFrom(1, { maxEvents: 1000, maxBytes: 100 });
  t.is(tiny?.checkpoint.payload.seq, tiny?.events.length, 'even past the byte limit the first checkpoint is reached, never a partial batch');
  t.true((tiny?.events.length ?? 0) <= 52);
  t.is(await journal.batchFrom(journal.head().seq + 1, { maxEvents: 10, maxBytes: 10_000 }), undefined);
});

test('a second process cannot open a journal in use (WARD_AUDIT_JOURNAL_BUSY)', async (t) => {
  const { dir, key } = await openTestJournal(t);
  const err = await t.throwsAsync(AuditJournal.open({ dir, key, clock: new ManualClock(), log: { info() {}, warn() {}, error() {} } }));
  t.is((err as { code?: string }).code, ErrorCodes.AUDIT_JOURNAL_BUSY);
});

test('hostile text cannot make an event unwritable: lone surrogates, non-string fields and huge keys are cleaned, record() never throws', async (t) => {
  const { journal, key } = await openTestJournal(t);
  const lone = 'bad \ud800 surrogate';
  journal.record({
    ...sampleEvent(1),
    actor: lone,
    target: `${'x'.repeat(511)}\ud83d\ude00`,
    code: 42 as unknown as string,
    details: { [lone]: lone, ['k'.repeat(20_000)]: 1 },
  });
  const written = await journal.append({ ...sampleEvent(2), details: { message: `envelope has unknown fields: ${lone}` } });
  t.truthy(written, 'the event after it is written too');
  await journal.seal();
  const events = await journal.readEvents(1);
  const cleaned = events.find((e) => e.event.actor.startsWith('bad'));
  t.truthy(cleaned, 'the hostile event was journaled, not dropped');
  t.is(cleaned?.event.actor, 'bad \ufffd surrogate');
  t.is(cleaned?.event.code, '42');
  t.true(Object.keys(cleaned?.event.details ?? {}).every((k) => k.length <= 64));
  t.true((cleaned?.text.length ?? Number.POSITIVE_INFINITY) <= 8192);
  t.is((await verifyJournal(journal, key)).status, 'intact');
});

test('a burst never leaves a checkpoint span larger than one shipped batch', async (t) => {
  const { journal } = await openTestJournal(t, { checkpointBytes: 64 * 1024, checkpointEvents: 1000, checkpointIntervalMs: 60_000 });
  await Promise.all(Array.from({ length: 2500 }, (_, i) => journal.append(sampleEvent(i, { details: { i, pad: 'z'.repeat(450) } }))));
  await journal.seal();
  let from = 1;
  let batches = 0;
  for (let i = 0; i < 1000 && from <= journal.head().seq; i++) {
    const batch = await journal.batchFrom(from, { maxEvents: 1000, maxBytes: 64 * 1024 });
    if (batch === undefined) break;
    const bytes = batch.events.reduce((n, e) => n + e.length, 0);
    t.true(bytes <= 64 * 1024 + 8192, `batch ${batches} is ${bytes} bytes`);
    from = batch.checkpoint.payload.seq + 1;
    batches++;
  }
  t.is(from, journal.head().seq + 1, 'every event shipped');
  t.true(batches >= 15);
});

test('after a repair the journal still ships: a batch may jump only over the range its gap event declares', async (t) => {
  const { journal, dir, reopen } = await openTestJournal(t);
  for (let i = 0; i < 10; i++) await journal.append(sampleEvent(i));
  await journal.close();
  const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
  await db.del(`e:${'5'.padStart(16, '0')}`);
  await db.close();
  const again = await reopen();
  t.deepEqual(
    again.status().repairs.map((r) => [r.from, r.to]),
    [[5, 12]],
  );
  await again.seal();
  const batch = await again.batchFrom(1, { maxEvents: 1000, maxBytes: 1_000_000 });
  const seqs = (batch?.events ?? []).map((e) => parseEventText(e).event.seq);
  t.deepEqual(seqs.slice(0, 5), [1, 2, 3, 4, 13], 'the gap event follows seq 4 directly');
  t.is(batch?.checkpoint.payload.seq, seqs.at(-1));
});

test('a missing head record sets the whole old chain aside, receipts and overflow count included', async (t) => {
  const { journal, dir, key, reopen } = await openTestJournal(t);
  const controller = generateSigningKey();
  for (let i = 0; i < 5; i++) await journal.append(sampleEvent(i));
  await journal.seal();
  const s = journal.status();
  const head = (await journal.readEvents(s.sealedSeq, 1))[0];
  await journal.acceptReceipt(receiptFor(controller, 'gw-1', { chain: s.chain, seq: s.sealedSeq, head: head?.hash ?? '' }));
  await journal.close();
  const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
  await db.del('m:head');
  await db.close();
  const again = await reopen();
  t.not(again.head().chain, s.chain);
  t.deepEqual(await again.receipts(), [], "the old chain's receipts went with it");
  t.true((await again.quarantined()).some((q) => q.key.includes(':r:')));
  const verdict = await verifyJournal(again, key, controller);
  t.false(
    verdict.findings.some((f) => f.kind === 'wrong-chain'),
    JSON.stringify(verdict.findings),
  );
});

test('a journal whose every event was acknowledged and pruned exports as intact, anchored by its newest receipt', async (t) => {
  const { journal, key } = await openTestJournal(t);
  const controller = generateSigningKey();
  for (let i = 0; i < 5; i++) await journal.append(sampleEvent(i));
  const first = await journal.seal();
  const firstHead = (await journal.readEvents(first?.payload.seq ?? 0, 1))[0];
  await journal.acceptReceipt(receiptFor(controller, 'gw-1', { chain: journal.head().chain, seq: first?.payload.seq ?? 0, head: firstHead?.hash ?? '' }));
  await journal.append(sampleEvent(6));
  const second = await journal.seal();
  const secondHead = (await journal.readEvents(second?.payload.seq ?? 0, 1))[0];
  await journal.acceptReceipt(receiptFor(controller, 'gw-1', { chain: journal.head().chain, seq: second?.payload.seq ?? 0, head: secondHead?.hash ?? '' }));
  t.deepEqual(await journal.readEvents(1), [], 'nothing held');
  const verdict = await verifyJournal(journal, key, controller);
  t.is(verdict.status, 'intact', JSON.stringify(verdict.findings));
  t.is(verdict.events, 0);
});
