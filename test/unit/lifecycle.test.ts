import test from 'ava';
import { LIFECYCLE_EVENTS, LIFECYCLE_STATES, Lifecycle, nextState, TRANSITIONS } from '../../agent/core/lifecycle.js';

test('the happy path of DESIGN.md §3: unprovisioned → enrolling → attesting → active', (t) => {
  const l = new Lifecycle('unprovisioned', () => 0);
  l.apply('provision', 'bundle verified');
  l.apply('enrolled', 'certificate issued');
  l.apply('attest-pass', 'evidence matched');
  t.is(l.state, 'active');
});

test('active ⇄ degraded, then quarantine and re-attestation', (t) => {
  const l = new Lifecycle('active', () => 0);
  l.apply('attest-stale', 'no evidence for 2 intervals');
  t.is(l.state, 'degraded');
  l.apply('recovered', 'fresh evidence');
  t.is(l.state, 'active');
  l.apply('attest-fail', 'binary hash mismatch');
  t.is(l.state, 'quarantined');
  l.apply('reattest', 'operator requested');
  t.is(l.state, 'attesting');
});

test('every state except unprovisioned can be factory-reset', (t) => {
  for (const s of LIFECYCLE_STATES.filter((s) => s !== 'unprovisioned')) t.is(nextState(s, 'factory-reset'), 'unprovisioned', s);
});

test('invalid transitions are refused with a code and the allowed events, and the state does not change', (t) => {
  const l = new Lifecycle('unprovisioned', () => 0);
  const err = t.throws(() => l.apply('attest-pass', 'skip the line'));
  t.is((err as { code?: string }).code, 'WARD_LIFECYCLE_INVALID_TRANSITION');
  t.regex(err?.message ?? '', /allowed: provision/);
  t.is(l.state, 'unprovisioned');
  // A quarantined gateway cannot simply recover: it must be re-attested.
  t.throws(() => nextState('quarantined', 'recovered'));
  t.throws(() => nextState('quarantined', 'attest-pass'));
});

test('the table only names known states and events', (t) => {
  for (const [from, edges] of Object.entries(TRANSITIONS)) {
    t.true((LIFECYCLE_STATES as readonly string[]).includes(from));
    for (const [event, to] of Object.entries(edges)) {
      t.true((LIFECYCLE_EVENTS as readonly string[]).includes(event), event);
      t.true((LIFECYCLE_STATES as readonly string[]).includes(to as string), String(to));
    }
  }
});

test('listeners see each transition once, and may not re-enter', (t) => {
  const l = new Lifecycle('unprovisioned', () => 1234);
  const seen: string[] = [];
  l.onTransition((tr) => seen.push(`${tr.from}>${tr.to}@${tr.at}:${tr.reason}`));
  l.apply('provision', 'qr');
  t.deepEqual(seen, ['unprovisioned>enrolling@1234:qr']);
  const off = l.onTransition(() => l.apply('enrolled', 'nested'));
  t.throws(() => l.apply('enroll-failed', 'x'), { instanceOf: TypeError });
  off();
});
