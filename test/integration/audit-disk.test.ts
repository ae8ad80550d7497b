import { spawnSync } from 'node:child_process';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { AuditJournal } from '../../agent/audit/journal.js';
import { systemClock } from '../../agent/core/clock.js';
import { ErrorCodes } from '../../agent/core/errors.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { sampleEvent, silentLog, verifyJournal } from '../helpers/audit.js';
import { waitFor } from '../helpers/net.js';
import { tempDir } from '../helpers/tmp.js';

// Real component: a small tmpfs this test mounts (root, as CI runs) and really fills, so LevelDB
// meets ENOSPC from the kernel, not from a mock.

async function smallDisk(t: ExecutionContext, mib: number): Promise<{ dir: string; fill: () => Promise<void>; free: () => Promise<void> }> {
  const dir = join(await tempDir(t, 'ward-disk-'), 'mnt');
  await mkdir(dir);
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m`, 'tmpfs', dir], { encoding: 'utf8' });
  if (mounted.status !== 0) throw new Error(`cannot mount a tmpfs for the full-disk test (needs root): ${mounted.stderr}`);
  t.teardown(() => {
    spawnSync('umount', ['-l', dir]);
  });
  const fillers = join(dir, 'fill');
  return {
    dir,
    async fill() {
      await mkdir(fillers, { recursive: true });
      // Large blocks first, then small ones, until the kernel says no: the disk is full to the last page.
      for (const size of [256 * 1024, 4096, 256]) {
        for (let i = 0; i < 100_000; i++) {
          try {
            await writeFile(join(fillers, `${size}-${i}`), Buffer.alloc(size));
          } catch {
            break;
          }
        }
      }
    },
    async free() {
      await rm(fillers, { recursive: true, force: true });
    },
  };
}

test('a full disk never blocks the caller: events wait in memory, and land in the intact chain once space returns', async (t) => {
  const disk = await smallDisk(t, 4);
  const key = generateSigningKey();
  const journal = await AuditJournal.open({ dir: join(disk.dir, 'audit'), key, clock: systemClock, log: silentLog });
  t.teardown(() => journal.close().catch(() => undefined));
  for (let i = 0; i < 10; i++) await journal.append(sampleEvent(i));
  await disk.fill();

  const appends = Array.from({ length: 200 }, (_, i) => journal.append(sampleEvent(100 + i, { details: { i, pad: 'x'.repeat(300) } })));
  t.notThrows(() => journal.record(sampleEvent(999)), 'record() returns at once with the disk full');
  await waitFor('the journal reports the failing disk', () => journal.status().writeFailing, 10_000, 20);
  t.true(journal.status().pending >= 200, 'the events wait in memory, none dropped');
  let written = 0;
  for (const a of appends) void a.then((e) => (written += e ? 1 : 0));
  await new Promise((r) => setTimeout(r, 300));
  t.is(written, 0, 'append() does not claim durability while nothing can be written');

  await disk.free();
  // Polled (the retry timer is unref'd, as in the agent, so only the poll keeps this test process awake).
  await waitFor('the held events are written once space returns', () => written === appends.length, 60_000, 50);
  t.false(journal.status().writeFailing);
  await journal.seal();
  const verdict = await verifyJournal(journal, key);
  t.is(verdict.status, 'intact', JSON.stringify(verdict.findings));
  t.is((await journal.readEvents(1)).filter((e) => e.event.action === 'modbus.write').length, 211);
});

test('opening on a full disk neither repairs nor moves the journal aside: a retryable error, then it opens intact', async (t) => {
  const disk = await smallDisk(t, 4);
  const key = generateSigningKey();
  const dir = join(disk.dir, 'audit');
  const first = await AuditJournal.open({ dir, key, clock: systemClock, log: silentLog });
  for (let i = 0; i < 10; i++) await first.append(sampleEvent(i));
  const chain = first.head().chain;
  await first.close();
  await disk.fill();

  // LevelDB writes a new log and manifest on every open: with no room at all, the open fails.
  const err = await t.throwsAsync(AuditJournal.open({ dir, key, clock: systemClock, log: silentLog }));
  t.is((err as { code?: string }).code, ErrorCodes.AUDIT_JOURNAL_WRITE_FAILED);
  t.true((err as { retryable?: boolean }).retryable);
  t.deepEqual(
    (await readdir(disk.dir)).filter((f) => f.startsWith('audit')),
    ['audit'],
    'nothing moved aside',
  );
  await disk.free();
  const again = await AuditJournal.open({ dir, key, clock: systemClock, log: silentLog });
  t.teardown(() => again.close());
  t.is(again.head().chain, chain, 'the same chain continues');
  t.deepEqual(again.status().repairs, []);
  await again.seal();
  t.is((await verifyJournal(again, key)).status, 'intact');
});
