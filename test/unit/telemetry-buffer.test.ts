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
