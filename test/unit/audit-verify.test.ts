import test from 'ava';
import type { AuditEventInput } from '../../agent/core/audit.js';
import {
  type EventPosition,
  encodeEvent,
  GENESIS_PREV,
  hashEventText,
  JournalActions,
  makeEvent,
  newChainId,
  type ParsedEvent,
  RECEIPT_TYPE,
  type SignedCheckpoint,
  sanitizeInput,
  signCheckpoint,
} from '../../agent/shared/audit/event.js';
import { anchorFromState, ChainVerifier, type ChainVerifierOptions, describeVerdict, type Verdict } from '../../agent/shared/audit/verify.js';
import { seal } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';

const device = generateSigningKey();
const controller = generateSigningKey();
const stranger = generateSigningKey();
const T0 = Date.UTC(2026, 0, 1);

type EventItem = { readonly t: 'event'; readonly seq: number; readonly text: string };
type StatementItem = { readonly t: 'checkpoint' | 'receipt'; readonly seq: number; readonly value: unknown };
type Item = EventItem | StatementItem;

const tick = sanitizeInput({ category: 'audit', actor: 'test', action: 'test.tick', outcome: 'success', details: { n: 1 } });

function input(action: string, details?: Record<string, unknown>): AuditEventInput {
  if (action === 'test.tick' && details === undefined) return tick;
  return sanitizeInput({ category: 'audit', actor: 'test', action, outcome: 'success', ...(details !== undefined ? { details } : {}) });
}

/** Writes events the way the journal does: seq, prev, session and mono follow on unless a test overrides them. */
class Journal {
  readonly chain = newChainId();
  seq = 0;
  prev = GENESIS_PREV;
  session = 1;
  mono = 0;

  event(action = 'test.tick', details?: Record<string, unknown>, at: Partial<EventPosition> = {}): ParsedEvent {
    const p = makeEvent(
      { chain: this.chain, seq: this.seq + 1, prev: this.prev, session: this.session, boot: 'boot-1', time: T0 + this.seq * 1000, mono: this.mono, ...at },
      input(action, details),
    );
    this.seq = p.event.seq;
    this.prev = p.hash;
    this.session = p.event.session;
    this.mono = p.event.mono + 10;
    return p;
  }

  start(reason: string | null = 'new journal'): ParsedEvent {
    return this.event(JournalActions.chainStart, { ...(reason !== null ? { reason } : {}), kid: device.kid }, { seq: 1, prev: GENESIS_PREV });
  }

  checkpoint(key: SigningKey = device): SignedCheckpoint {
    return signCheckpoint(key, { chain: this.chain, seq: this.seq, head: this.prev, session: this.session, time: T0 + this.seq * 1000 });
  }

  receipt(seq = this.seq, head = this.prev, key: SigningKey = controller): unknown {
    return seal(key, { typ: RECEIPT_TYPE, sub: 'gw-1', chain: this.chain, seq, head }, { ttlSeconds: 3600 });
  }
}

const ev = (p: ParsedEvent): EventItem => ({ t: 'event', seq: p.event.seq, text: p.text });
const cp = (j: Journal, key?: SigningKey): StatementItem => ({ t: 'checkpoint', seq: j.seq, value: j.checkpoint(key) });

/** A chain of n events starting with audit.chain-start, a checkpoint after every k-th; optionally a proper session change. */
function chain(n: number, k: number, options: { sessionStartAt?: number; journal?: Journal } = {}): { journal: Journal; items: Item[] } {
  const journal = options.journal ?? new Journal();
  const items: Item[] = [];
  for (let i = 1; i <= n; i++) {
    let p: ParsedEvent;
    if (i === 1) p = journal.start();
    else if (i === options.sessionStartAt)
      p = journal.event(JournalActions.sessionStart, { previousSession: journal.session }, { session: journal.session + 1, mono: 3 });
    else p = journal.event();
    items.push(ev(p));
    if (p.event.seq % k === 0) items.push(cp(journal));
  }
  return { journal, items };
}

function feed(v: ChainVerifier, items: Iterable<Item>): ChainVerifier {
  for (const item of items) {
    if (item.t === 'event') v.addEvent(item.text);
    else if (item.t === 'checkpoint') v.addCheckpoint(item.value);
    else v.addReceipt(item.value);
  }
  return v;
}

function verify(items: Iterable<Item>, options: Partial<ChainVerifierOptions> = {}, controllerKey: SigningKey | null = controller): Verdict {
  return feed(new ChainVerifier({ deviceKey: device, ...(controllerKey !== null ? { controllerKey } : {}), ...options }), items).finish();
}

/** `kind@seq` per finding, in order: what each test pins down exactly. */
const found = (v: Verdict) => v.findings.map((f) => `${f.kind}@${f.seq ?? '-'}`);

const without = (items: Item[], drop: (item: Item) => boolean) => items.filter((item) => !drop(item));
const eventText = (items: Item[], seq: number): string => {
  const item = items.find((i) => i.t === 'event' && i.seq === seq);
  if (item?.t !== 'event') throw new Error(`no event ${seq}`);
  return item.text;
};
/** The same event with its details changed: canonical and well-formed, so only the chain can tell. */
function edited(text: string, details: Record<string, unknown>): string {
  return encodeEvent({ ...JSON.parse(text), details });
}

test('an intact chain with a proper session change is intact, every event sealed, no findings', (t) => {
  const { journal, items } = chain(1204, 4, { sessionStartAt: 600 });
  const v = verify(items);
  t.deepEqual(found(v), []);
  t.is(v.status, 'intact');
  t.true(v.ok);
  t.is(v.events, 1204);
  t.is(v.sealedEvents, v.events);
  t.deepEqual(v.chains, [{ chain: journal.chain, firstSeq: 1, lastSeq: 1204, sealedThrough: 1204, sessions: 2 }]);
  t.like(v.lastCheckpoint, { chain: journal.chain, seq: 1204, head: journal.prev });
  t.is(describeVerdict(v).split('\n')[0], 'INTACT: 1,204 events in 1 chain, all sealed');
});

test('a checkpoint that arrives before its event is held and checked when the event comes', (t) => {
  const { items } = chain(10, 5);
  const i5 = items.findIndex((i) => i.t === 'checkpoint' && i.seq === 5);
  const [early] = items.splice(i5, 1);
  if (early === undefined) throw new Error('no checkpoint');
  items.splice(2, 0, early);
  const v = verify(items);
  t.deepEqual(found(v), []);
  t.is(v.sealedEvents, 10);
});

test('a receipt for pruned history anchors the stream: first events gone, still intact', (t) => {
  const { journal, items } = chain(100, 10);
  const receipt = journal.receipt(50, hashEventText(eventText(items, 50)));
  const tail = items.filter((i) => i.seq > 50);
  const v = verify([{ t: 'receipt', seq: 50, value: receipt }, ...tail]);
  t.deepEqual(found(v), []);
  t.is(v.status, 'intact');
  t.is(v.events, 50);
  t.is(v.sealedEvents, 50);
  t.like(v.chains[0], { firstSeq: 51, lastSeq: 100, sealedThrough: 100 });
});

test('without the controller key a receipt vouches for nothing: pruned start is unanchored, receipts reported unchecked once', (t) => {
  const { journal, items } = chain(100, 10);
  const receipt = journal.receipt(50, hashEventText(eventText(items, 50)));
  const tail = items.filter((i) => i.seq > 50);
  const v = verify([{ t: 'receipt', seq: 50, value: receipt }, ...tail, { t: 'receipt', seq: 100, value: journal.receipt() }], {}, null);
  t.deepEqual(found(v), ['receipt-unchecked@-', 'unanchored@51']);
  t.is(v.findings[0]?.severity, 'info');
  t.is(v.findings[1]?.severity, 'warning');
  t.is(v.status, 'intact-with-warnings');
});

test('a stream starting mid-chain with no anchor is unanchored (warning at its first seq)', (t) => {
  const { items } = chain(30, 10);
  const v = verify(items.filter((i) => i.seq > 10));
  t.deepEqual(found(v), ['unanchored@11']);
  t.is(v.sealedEvents, 20);
});

test('an edited event breaks the link at the next seq and contradicts its checkpoint', (t) => {
  const { items } = chain(10, 5);
  const i5 = items.findIndex((i) => i.t === 'event' && i.seq === 5);
  items[i5] = { t: 'event', seq: 5, text: edited(eventText(items, 5), { n: 2 }) };
  const v = verify(items);
  t.deepEqual(found(v), ['checkpoint-mismatch@5', 'broken-link@6']);
  t.is(v.status, 'broken');
  t.false(v.ok);
  t.true(v.findings[1]?.message.includes('seq 6 does not link to seq 5'));
  // Events 1-5 lost their seal; 6-10 are still sealed by the checkpoint at 10.
  t.is(v.sealedEvents, 5);
});

test('a dropped event is one gap error at the next seq, no cascade', (t) => {
  const { items } = chain(10, 5);
  const v = verify(without(items, (i) => i.t === 'event' && i.seq === 7));
  t.deepEqual(found(v), ['gap@8']);
  t.true(v.findings[0]?.message.includes('seq 7'));
  t.is(v.events, 9);
  t.is(v.sealedEvents, 8);
});

test('a declared gap is a warning; a gap event declaring the wrong range is a gap error', (t) => {
  const build = (to: number) => {
    const j = new Journal();
    const items: Item[] = [ev(j.start())];
    for (let i = 0; i < 3; i++) items.push(ev(j.event()));
    items.push(ev(j.event(JournalActions.gap, { from: 5, to, reason: 'sector damage' }, { seq: 8 })));
    items.push(ev(j.event()), ev(j.event()), cp(j));
    return items;
  };
  const declared = verify(build(7));
  t.deepEqual(found(declared), ['declared-gap@8']);
  t.is(declared.findings[0]?.severity, 'warning');
  t.is(declared.status, 'intact-with-warnings');
  t.is(declared.sealedEvents, declared.events);
  t.true(declared.findings[0]?.message.includes('seq 5–7'));

  const wrong = verify(build(6));
  t.deepEqual(found(wrong), ['gap@8']);
  t.is(wrong.status, 'broken');
});

test('events out of order: the gap at the early one, reordered at the late one', (t) => {
  const { items } = chain(10, 5);
  const i4 = items.findIndex((i) => i.t === 'event' && i.seq === 4);
  const [e4, e5] = items.splice(i4, 2);
  if (e4 === undefined || e5 === undefined) throw new Error('missing events');
  items.splice(i4, 0, e5, e4);
  const v = verify(items);
  t.deepEqual(found(v), ['gap@5', 'reordered@4']);
  t.is(v.findings[1]?.severity, 'error');
});

test('the same event twice is an info-level duplicate; the chain stays intact', (t) => {
  const { items } = chain(10, 5);
  const i5 = items.findIndex((i) => i.t === 'event' && i.seq === 5);
  items.splice(i5 + 1, 0, { t: 'event', seq: 5, text: eventText(items, 5) });
  const v = verify(items);
  t.deepEqual(found(v), ['duplicate@5']);
  t.is(v.status, 'intact');
  t.is(v.events, 11);
  t.is(v.sealedEvents, 10);
});

test('two different events with one seq are a fork', (t) => {
  const { items } = chain(10, 5);
  const i5 = items.findIndex((i) => i.t === 'event' && i.seq === 5);
  items.splice(i5 + 1, 0, { t: 'event', seq: 5, text: edited(eventText(items, 5), { n: 99 }) });
  const v = verify(items);
  t.deepEqual(found(v), ['fork@5']);
  t.is(v.status, 'broken');
});

test('a cut-off tail is truncated when a later checkpoint or receipt survives', (t) => {
  const { journal, items } = chain(20, 5);
  items.push({ t: 'receipt', seq: 20, value: journal.receipt() });
  const v = verify(without(items, (i) => i.t === 'event' && i.seq > 12));
  t.deepEqual(found(v), ['truncated@20', 'unsealed-tail@11']);
  t.true(v.findings[0]?.message.includes('end at seq 12'));
  t.is(v.status, 'broken');
});

test('events after the last checkpoint are an unsealed tail, never counted as verified', (t) => {
  const { items } = chain(23, 10);
  const v = verify(items);
  t.deepEqual(found(v), ['unsealed-tail@21']);
  t.is(v.status, 'intact-with-warnings');
  t.is(v.sealedEvents, 20);
  t.true(v.findings[0]?.message.includes('seq 21–23'));
});

test('a checkpoint signed by another key, or with the device kid but a foreign signature, is bad-signature and ignored', (t) => {
  const { journal, items } = chain(10, 5);
  items.pop();
  const forged = journal.checkpoint(stranger);
  items.push({ t: 'checkpoint', seq: 10, value: forged });
  items.push({ t: 'checkpoint', seq: 10, value: { ...forged, kid: device.kid } });
  const v = verify(items);
  t.deepEqual(found(v), ['bad-signature@10', 'bad-signature@10', 'unsealed-tail@6']);
  t.is(v.sealedEvents, 5);
});

test('a receipt whose head differs from the event at its seq is receipt-mismatch; a forged receipt is bad-signature', (t) => {
  const { journal, items } = chain(10, 5);
  items.push({ t: 'receipt', seq: 10, value: journal.receipt(10, hashEventText(eventText(items, 9))) });
  items.push({ t: 'receipt', seq: 10, value: journal.receipt(10, journal.prev, stranger) });
  items.push({ t: 'receipt', seq: 10, value: journal.receipt() });
  const v = verify(items);
  t.deepEqual(found(v), ['receipt-mismatch@10', 'bad-signature@10']);
});

test('a restart with a reason is a warning; without reason, or not at seq 1, it is an unexplained restart', (t) => {
  const a = chain(10, 5);
  const restarted = new Journal();
  const items: Item[] = [...a.items, ev(restarted.start('journal corrupt, started over'))];
  for (let i = 0; i < 4; i++) items.push(ev(restarted.event()));
  items.push(cp(restarted));
  const v = verify(items);
  t.deepEqual(found(v), ['restart@1']);
  t.is(v.findings[0]?.chain, restarted.chain);
  t.is(v.chains.length, 2);
  t.is(v.sealedEvents, 15);
  t.is(v.status, 'intact-with-warnings');

  // A stray copy of the old chain's last event after the restart is one duplicate, not two more chain switches.
  const stray = verify([...items.slice(0, -1), { t: 'event', seq: 10, text: eventText(a.items, 10) }, ...items.slice(-1)]);
  t.deepEqual(found(stray), ['restart@1', 'duplicate@10']);
  t.is(stray.sealedEvents, 15);

  const silent = new Journal();
  const noReason = verify([...a.items, ev(silent.start(null)), ev(silent.event()), cp(silent)]);
  t.deepEqual(found(noReason), ['unexplained-restart@1']);

  const late = new Journal();
  late.seq = 2;
  late.prev = 'a'.repeat(64);
  const notAtOne = verify([...a.items, ev(late.event()), ev(late.event()), cp(late)]);
  t.deepEqual(found(notAtOne), ['unexplained-restart@3']);
  t.is(notAtOne.status, 'broken');
});

test('a session change without audit.session-start naming the previous session is unstitched', (t) => {
  const j = new Journal();
  const items: Item[] = [ev(j.start())];
  for (let i = 0; i < 4; i++) items.push(ev(j.event()));
  items.push(ev(j.event('test.tick', undefined, { session: 2, mono: 0 })));
  items.push(ev(j.event()), cp(j));
  t.deepEqual(found(verify(items)), ['session-unstitched@6']);

  const k = new Journal();
  const wrongPrevious: Item[] = [ev(k.start()), ev(k.event(JournalActions.sessionStart, { previousSession: 7 }, { session: 2 })), cp(k)];
  t.deepEqual(found(verify(wrongPrevious)), ['session-unstitched@2']);
});

test('a session number going back is unstitched, once', (t) => {
  const j = new Journal();
  const items: Item[] = [ev(j.start()), ev(j.event())];
  items.push(ev(j.event(JournalActions.sessionStart, { previousSession: 1 }, { session: 2, mono: 0 })));
  items.push(ev(j.event()));
  items.push(ev(j.event('test.tick', undefined, { session: 1 })));
  items.push(ev(j.event()), cp(j));
  t.deepEqual(found(verify(items)), ['session-unstitched@5']);
});

test('mono going back within a session is time-reversed (warning)', (t) => {
  const j = new Journal();
  const items: Item[] = [ev(j.start())];
  for (let i = 0; i < 4; i++) items.push(ev(j.event('test.tick', undefined, { mono: 1000 + i * 10 })));
  items.push(ev(j.event('test.tick', undefined, { mono: 500 })));
  items.push(ev(j.event()), cp(j));
  const v = verify(items);
  t.deepEqual(found(v), ['time-reversed@6']);
  t.is(v.findings[0]?.severity, 'warning');
  t.true(v.findings[0]?.message.includes('from 1030 to 500'));
});

test('an audit.overflow event is a warning naming how many events were aggregated', (t) => {
  const j = new Journal();
  const items: Item[] = [ev(j.start()), ev(j.event())];
  items.push(ev(j.event(JournalActions.overflow, { count: 37, byAction: { 'test.tick': 37 }, firstAt: T0, lastAt: T0 + 5 })));
  items.push(ev(j.event()), cp(j));
  const v = verify(items);
  t.deepEqual(found(v), ['overflow@3']);
  t.true(v.findings[0]?.message.includes('37 events'));
  t.is(v.sealedEvents, 4);
});

test('unreadable event text is malformed; the chain re-joins at the next event without a second finding', (t) => {
  const { items } = chain(10, 5);
  const i5 = items.findIndex((i) => i.t === 'event' && i.seq === 5);
  items[i5] = { t: 'event', seq: 5, text: '{"v":1,"chain":' };
  const v = verify(items);
  // The checkpoint at 5 names an event that is not there: reported, not counted.
  t.deepEqual(found(v), ['malformed@-', 'unchecked@5']);
  t.is(v.findings[1]?.severity, 'info');
  t.is(v.events, 9);
  t.is(v.sealedEvents, 5);
});

test('event text that is not canonical is malformed at its claimed seq', (t) => {
  const { items } = chain(10, 5);
  const i3 = items.findIndex((i) => i.t === 'event' && i.seq === 3);
  items[i3] = { t: 'event', seq: 3, text: JSON.stringify(JSON.parse(eventText(items, 3)), null, 1) };
  const v = verify(items);
  t.deepEqual(found(v), ['malformed@3']);
  t.true(v.findings[0]?.message.includes('canonical'));
  t.is(v.sealedEvents, 7);
});

test('a checkpoint that does not parse is malformed; one for a chain never seen is wrong-chain', (t) => {
  const { items } = chain(10, 5);
  const other = new Journal();
  other.start();
  const v = verify([...items, { t: 'checkpoint', seq: 3, value: { payload: { seq: 3 }, kid: 'x', sig: 'y' } }, cp(other)]);
  t.deepEqual(found(v), ['malformed@3', 'wrong-chain@1']);
});

test('state() is undefined before anything, JSON-serialisable after, and a verifier resumed from it continues seamlessly', (t) => {
  const { journal, items } = chain(40, 10, { sessionStartAt: 15 });
  t.is(new ChainVerifier({ deviceKey: device }).state(), undefined);
  const cut = items.findIndex((i) => i.t === 'checkpoint' && i.seq === 20) + 1;
  const first = feed(new ChainVerifier({ deviceKey: device }), items.slice(0, cut));
  const state = JSON.parse(JSON.stringify(first.state()));
  t.deepEqual(state, {
    chain: journal.chain,
    lastSeq: 20,
    lastHash: hashEventText(eventText(items, 20)),
    session: 2,
    lastMono: state.lastMono,
    sealedThrough: 20,
  });
  t.deepEqual(found(first.finish()), []);

  const resumed = new ChainVerifier({ deviceKey: device, anchor: anchorFromState(state) });
  t.like(resumed.state(), { chain: journal.chain, lastSeq: 20 });
  const v = feed(resumed, items.slice(cut)).finish();
  t.deepEqual(found(v), []);
  t.is(v.status, 'intact');
  t.is(v.events, 20);
  t.is(v.sealedEvents, 20);
  t.like(resumed.state(), { lastSeq: 40, lastHash: journal.prev, sealedThrough: 40 });

  const wrongHead = verify(items.slice(cut), { anchor: { ...anchorFromState(state), head: 'b'.repeat(64) } });
  t.deepEqual(found(wrongHead), ['broken-link@21']);
  const older = verify(items.slice(cut), { anchor: { ...anchorFromState(state), seq: 18 } });
  t.deepEqual(found(older), ['gap@21']);
});

test('memory stays bounded over 200,000 events with a window of 1,024', (t) => {
  const journal = new Journal();
  let kept: { e5?: string; cp100?: unknown } = {};
  function* stream(): Generator<Item> {
    for (let i = 1; i <= 200_000; i++) {
      const p = i === 1 ? journal.start() : journal.event();
      yield ev(p);
      if (i === 5) kept = { ...kept, e5: p.text };
      if (i % 20_000 === 0) yield ev(p);
      if (i % 100 === 0) {
        const c = cp(journal);
        if (i === 100) kept = { ...kept, cp100: c.value };
        yield c;
      }
    }
  }
  const v = feed(new ChainVerifier({ deviceKey: device, window: 1024 }), stream());
  t.true(v.footprint().windowEntries <= 1024);
  // An event and a checkpoint from far behind the window: neither can be compared any more, both are reported.
  if (kept.e5 === undefined) throw new Error('event 5 not kept');
  v.addEvent(kept.e5);
  v.addCheckpoint(kept.cp100);
  const fp = v.footprint();
  t.true(fp.windowEntries <= 1024);
  t.is(fp.pending, 0);
  t.is(fp.chains, 1);
  const verdict = v.finish();
  t.is(verdict.events, 200_011);
  t.is(verdict.sealedEvents, 200_000);
  t.deepEqual(found(verdict).slice(-2), ['reordered@5', 'unchecked@100']);
  t.is(found(verdict).filter((f) => f.startsWith('duplicate@')).length, 10);
  t.is(verdict.findings.length, 12);
});

test('maxFindings caps the list; the rest are counted and still decide the status', (t) => {
  const { items } = chain(30, 10);
  const doubled = items.flatMap((i): Item[] => (i.t === 'event' ? [i, i] : [i]));
  doubled.push({ t: 'event', seq: 31, text: '{}' });
  const v = verify(doubled, { maxFindings: 10 });
  t.is(v.findings.length, 10);
  t.is(v.findingsOmitted, 21);
  t.deepEqual(v.counts, { error: 1, warning: 0, info: 30 });
  t.is(v.status, 'broken');
  t.true(describeVerdict(v).includes('21 more findings not listed'));
});

test('describeVerdict puts the status first and lists every finding with kind and seq', (t) => {
  const { journal, items } = chain(20, 5);
  const damaged = without(items, (i) => i.t === 'event' && i.seq === 7);
  const i12 = damaged.findIndex((i) => i.t === 'event' && i.seq === 12);
  damaged.splice(i12 + 1, 0, { t: 'event', seq: 12, text: edited(eventText(items, 12), { n: 5 }) });
  damaged.push(ev(journal.event()), ev(journal.event()));
  const v = verify(damaged);
  t.deepEqual(found(v), ['gap@8', 'fork@12', 'unsealed-tail@21']);
  const text = describeVerdict(v);
  const lines = text.split('\n');
  t.is(lines[0], 'BROKEN: 2 errors, 1 warning; 22 events in 1 chain, 18 sealed');
  t.true(lines[1]?.includes(`chain ${journal.chain}: seq 1–22, 1 session, sealed through seq 20`));
  for (const f of v.findings) t.true(text.includes(`${f.severity}  ${f.kind}  seq ${f.seq}: `), f.kind);

  const warned = describeVerdict(verify(chain(12, 10).items));
  t.true(warned.startsWith('INTACT WITH WARNINGS: 1 warning; 12 events in 1 chain, 10 sealed'));
  t.true(warned.includes('warning  unsealed-tail  seq 11: '));
});

test('misuse is a TypeError; finish() is idempotent', (t) => {
  t.throws(() => new ChainVerifier({ deviceKey: device, window: 0 }), { instanceOf: TypeError });
  t.throws(() => new ChainVerifier({ deviceKey: device, anchor: { chain: 'x', seq: 0, head: 'zz', session: 1 } }), { instanceOf: TypeError });
  const v = new ChainVerifier({ deviceKey: device });
  t.throws(() => v.addEvent(42 as unknown as string), { instanceOf: TypeError });
  const verdict = v.finish();
  t.is(v.finish(), verdict);
  t.is(verdict.status, 'intact');
  t.throws(() => v.addEvent('{}'), { instanceOf: TypeError });
  t.throws(() => v.addCheckpoint({}), { instanceOf: TypeError });
  t.throws(() => v.addReceipt({}), { instanceOf: TypeError });
});
