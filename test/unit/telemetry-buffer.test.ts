import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { TelemetryBuffer } from '../../agent/telemetry/buffer.js';
import { tempDir } from '../helpers/tmp.js';

// The store-and-forward buffer on a real LevelDB in a temporary folder.

const log = { info() {}, warn() {}, error() {} };
const point = (v: number) => ({ name: 'Spindle/Speed', type: 'Double' as const, value: v, timestamp: 1_000 + v });

async function open(dir: string, maxBytes = 1024 * 1024) {
  const events: AuditEventInput[] = [];
  const buffer = await TelemetryBuffer.open({ dir, maxBytes, audit: { record: (e) => void events.push(e) }, log });
  return { buffer, events };
}

test('batches survive a restart in append order, with the eviction count and the stored bdSeq', async (t) => {
  const dir = join(await tempDir(t), 'telemetry');
  const first = await open(dir, 2048);
  for (let i = 0; i < 40; i++) first.buffer.append({ device: 'cnc-1', points: [point(i)] });
  await first.buffer.setMeta('bdSeq', '41');
  const dropped = first.buffer.dropped;
  t.true(dropped > 0, 'the 2 KiB bound evicted something');
  t.true(first.events.some((e) => e.action === 'telemetry.buffer-full'));
  await first.buffer.close();

  const second = await open(dir, 2048);
  t.teardown(() => second.buffer.close());
  t.is(second.buffer.dropped, dropped);
  t.is(await second.buffer.meta('bdSeq'), '41');
  const entries = await second.buffer.peek(1000);
  t.deepEqual(
    entries.map((e) => e.batch?.points[0]?.value),
    Array.from({ length: 40 - dropped }, (_, i) => dropped + i),
  );
  t.is(second.buffer.depth, 40 - dropped);
  // Appends continue after the stored keys, never before them.
  second.buffer.append({ points: [point(99)] });
  const all = await second.buffer.peek(1000);
  t.is(all.at(-1)?.batch?.points[0]?.value, 99);
  t.is(all.at(-1)?.batch?.device, undefined);
  await second.buffer.remove(all.slice(0, 3).map((e) => e.key));
  t.is((await second.buffer.peek(1))[0]?.batch?.points[0]?.value, all[3]?.batch?.points[0]?.value);
  t.is(second.buffer.depth, all.length - 3);
});

test('an unreadable store is moved aside and the buffer starts empty, saying so in the audit trail', async (t) => {
  const dir = join(await tempDir(t), 'telemetry');
  const first = await open(dir);
  first.buffer.append({ points: [point(1)] });
  await first.buffer.close();
  // Wreck every table file and the manifest: LevelDB cannot open this.
  for (const f of await readdir(dir)) if (/^(MANIFEST|CURRENT)/.test(f)) await writeFile(join(dir, f), 'garbage\n');
  const second = await open(dir);
  t.teardown(() => second.buffer.close());
  t.is(second.buffer.depth, 0);
  const event = second.events.find((e) => e.action === 'telemetry.buffer-corrupt');
  t.is(event?.code, 'WARD_TELEMETRY_BUFFER_CORRUPT');
  t.regex(String(event?.details?.movedTo), /telemetry\.aside-/);
  second.buffer.append({ points: [point(2)] });
  t.is((await second.buffer.peek(1))[0]?.batch?.points[0]?.value, 2);
});

test('batches evicted while the replay is sending them are not counted lost, unless the sending fails', async (t) => {
  const dir = join(await tempDir(t), 'telemetry');
  const { buffer, events } = await open(dir, 4096);
  t.teardown(() => buffer.close());
  for (let i = 0; i < 8; i++) buffer.append({ device: 'cnc-1', points: [point(i)] });
  t.is(buffer.dropped, 0, 'within the bound so far');
  const onTheWay = await buffer.peek(4);
  buffer.sending(onTheWay.map((e) => e.key));
  // Live data keeps coming while they are on their way: the bound evicts from the oldest, which are being sent.
  let i = 10;
  while (buffer.dropped === 0 && (await buffer.peek(1))[0]?.key === onTheWay[0]?.key && i < 200) buffer.append({ device: 'cnc-1', points: [point(i++)] });
  t.not((await buffer.peek(1))[0]?.key, onTheWay[0]?.key, 'the batches on their way were evicted');
  t.is(buffer.dropped, 0, 'not lost: they were handed to the connection');
  t.false(events.some((e) => e.action === 'telemetry.buffer-full'));
  await buffer.remove(onTheWay.map((e) => e.key));
  t.is(buffer.takeGap(), undefined);

  // The same, but the sending fails: what was evicted meanwhile is lost after all, and counted.
  const next = await buffer.peek(4);
  buffer.sending(next.map((e) => e.key));
  while ((await buffer.peek(1))[0]?.key === next[0]?.key && i < 400) buffer.append({ device: 'cnc-1', points: [point(i++)] });
  buffer.release();
  t.true(buffer.dropped > 0 && buffer.dropped <= next.length, `${buffer.dropped} counted`);
  t.is(buffer.takeGap()?.points, buffer.dropped);
});
