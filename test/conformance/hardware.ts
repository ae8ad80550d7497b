import type { ExecutionContext, TestFn } from 'ava';
import type { LedPattern, ScanEvent, ScanInput, StatusLed, Watchdog } from '../../hardware/api/index.js';
import { MAX_SCAN_LENGTH } from '../../hardware/api/index.js';
import { LED_PATTERNS } from '../../hardware/led/patterns.js';

/**
 * Suites every hardware driver and its fake must pass (CONVENTIONS.md #5).
 * Each factory gets the test context so it can create and clean up fixtures.
 */
export function statusLedSuite(test: TestFn, name: string, factory: (t: ExecutionContext) => Promise<StatusLed>): void {
  test(`${name}: shows every lifecycle pattern and reads it back`, async (t) => {
    const led = await factory(t);
    for (const [state, pattern] of Object.entries(LED_PATTERNS)) {
      await led.show(pattern);
      t.deepEqual(await led.current(), pattern, state);
    }
  });
  test(`${name}: off after on, blink after steady`, async (t) => {
    const led = await factory(t);
    const seq: LedPattern[] = [{ mode: 'on' }, { mode: 'off' }, { mode: 'blink', onMs: 100, offMs: 100 }, { mode: 'on' }];
    for (const p of seq) {
      await led.show(p);
      t.deepEqual(await led.current(), p);
    }
  });
}

export interface ScanHarness {
  readonly input: ScanInput;
  type(text: string): Promise<void>;
  end(): Promise<void>;
}

async function collect(input: ScanInput, count: number): Promise<ScanEvent[]> {
  const out: ScanEvent[] = [];
  for await (const e of input.events()) {
    out.push(e);
    if (out.length >= count) break;
  }
  return out;
}

export function scanInputSuite(test: TestFn, name: string, factory: (t: ExecutionContext) => Promise<ScanHarness>): void {
  test(`${name}: one scan per line, CR, LF and CRLF endings, empty lines ignored`, async (t) => {
    const h = await factory(t);
    const got = collect(h.input, 3);
    await h.type('WARD1:ABC\r\n');
    await h.type('\nsecond\r');
    await h.type('third\n');
    t.deepEqual(await got, [
      { kind: 'scan', text: 'WARD1:ABC' },
      { kind: 'scan', text: 'second' },
      { kind: 'scan', text: 'third' },
    ]);
    await h.input.close();
  });
  test(`${name}: a scan split across reads arrives whole`, async (t) => {
    const h = await factory(t);
    const got = collect(h.input, 1);
    await h.type('HC1:6BFO');
    await h.type('XN*TS0BI$ZD');
    await h.type('\n');
    t.deepEqual(await got, [{ kind: 'scan', text: 'HC1:6BFOXN*TS0BI$ZD' }]);
    await h.input.close();
  });
  test(`${name}: an over-long line is rejected once, then reading goes on`, async (t) => {
    const h = await factory(t);
    const got = collect(h.input, 2);
    await h.type('x'.repeat(MAX_SCAN_LENGTH + 10));
    await h.type('x'.repeat(100));
    await h.type('\nok\n');
    const events = await got;
    t.is(events[0]?.kind, 'rejected');
    t.deepEqual(events[1], { kind: 'scan', text: 'ok' });
    await h.input.close();
  });
}

export function watchdogSuite(
  test: TestFn,
  name: string,
  factory: (t: ExecutionContext) => Promise<{ watchdog: Watchdog; received: () => Promise<string[]> }>,
): void {
  test(`${name}: ready, ping and stopping reach the supervisor in order`, async (t) => {
    const { watchdog, received } = await factory(t);
    t.true(watchdog.intervalMs === undefined || watchdog.intervalMs > 0);
    await watchdog.ready('agent started');
    await watchdog.ping();
    await watchdog.ping();
    await watchdog.stopping();
    const messages = await received();
    t.deepEqual(
      messages.map((m) => m.split('\n')[0]),
      ['READY=1', 'WATCHDOG=1', 'WATCHDOG=1', 'STOPPING=1'],
    );
    t.true(messages[0]?.includes('STATUS=agent started'));
  });
}
