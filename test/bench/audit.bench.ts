import { execFile } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Level } from 'level';
import { pino } from 'pino';
import { AuditJournal } from '../../agent/audit/journal.js';
import { validateConfig } from '../../agent/config/load.js';
import { agentConfigSchema } from '../../agent/config/schema.js';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { systemClock } from '../../agent/core/clock.js';
import { GENESIS_PREV, JournalActions, makeEvent, newChainId, sanitizeInput, signCheckpoint } from '../../agent/shared/audit/event.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { buildAgent } from '../../agent/system.js';
import { controllerConfigSchema } from '../../controller/config.js';
import { startController } from '../../controller/controller.js';
import { mosquittoBinary, startMosquitto } from '../helpers/mosquitto.js';
import type { BenchResult, Figure } from './lib.js';
import { round, withTimeout } from './lib.js';

/**
 * Audit journal figures (audit issue), each against a baseline measured in the same run:
 *  1. durable appends/s through the journal (64 producers, group commit, fsync per group)
 *     vs raw LevelDB `batch(…, {sync: true})` of 64 records of the same size, back to back;
 *     and one producer at a time vs one raw synced put at a time;
 *  2. end to end agent → Mosquitto → controller (verified, stored, receipted back): p50/p99
 *     latency from append() resolved to the receipt covering it at a steady 200 events/s, then
 *     events/s and latency for a burst from 16 producers at full speed;
 *  3. the verifier over a 1,000,000-event export: events/s and peak RSS of the process,
 *     vs a process that only reads the same file line by line.
 */
const here = dirname(fileURLToPath(import.meta.url));
const silent = pino({ level: 'silent' });
const quiet = { info() {}, warn() {}, error() {} };
const run = promisify(execFile);

const event = (i: number): AuditEventInput => ({
  category: 'access-control',
  actor: '198.18.0.10',
  action: 'modbus.write',
  target: 'plc-1',
  outcome: 'refused',
  code: 'WARD_MODBUS_DENIED',
  details: { unit: 1, function: 6, address: 40_001 + (i % 100), value: i },
});

async function durableAppends(dir: string, seconds: number): Promise<Figure[]> {
  const key = generateSigningKey();
  const journal = await AuditJournal.open({ dir: join(dir, 'journal'), key, clock: systemClock, log: quiet });
  const sample = (await journal.append(event(0)))?.seq ?? 0;
  const recordBytes = (await journal.readEvents(sample, 1))[0]?.text.length ?? 300;
  const producers = async (n: number) => {
    let count = 0;
    const until = performance.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: n }, async () => {
        while (performance.now() < until) {
          await journal.append(event(count));
          count++;
        }
      }),
    );
    return count / seconds;
  };
  const journal64 = await producers(64);
  const journal1 = await producers(1);
  await journal.close();

  const db = new Level<string, string>(join(dir, 'raw'), { valueEncoding: 'utf8' });
  await db.open();
  const value = 'x'.repeat(recordBytes);
  let seq = 0;
  const raw = async (group: number) => {
    let count = 0;
    const until = performance.now() + seconds * 1000;
    while (performance.now() < until) {
      const ops = Array.from({ length: group }, () => ({ type: 'put' as const, key: `e:${(seq++).toString().padStart(16, '0')}`, value }));
      await db.batch(ops, { sync: true });
      count += group;
    }
    return count / seconds;
  };
  const raw64 = await raw(64);
  const raw1 = await raw(1);
  await db.close();
  return [
    { key: 'append.record_bytes', label: 'event size (canonical JSON)', value: recordBytes, unit: 'B' },
    { key: 'append.journal_64', label: 'journal, 64 producers (durable appends)', value: round(journal64), unit: '/s' },
    { key: 'append.raw_64', label: 'raw level batch(64, sync), same size', value: round(raw64), unit: '/s' },
    { key: 'append.ratio_64', label: 'journal / raw (aim ≥ 0.5)', value: round(journal64 / raw64) },
    { key: 'append.journal_1', label: 'journal, 1 producer', value: round(journal1), unit: '/s' },
    { key: 'append.raw_1', label: 'raw level put(sync), one at a time', value: round(raw1), unit: '/s' },
    { key: 'append.ratio_1', label: 'journal / raw, one at a time', value: round(journal1 / raw1) },
  ];
}

async function endToEnd(dir: string, burst: number, steady: { perSecond: number; seconds: number }): Promise<{ figures: Figure[]; notes: string[] }> {
  const broker = mosquittoBinary() ? await startMosquitto() : undefined;
  const device = { id: 'gw-bench', stateDir: join(dir, 'agent') };
  const { loadOrCreateSigningKey } = await import('../../agent/identity/keystore.js');
  const { key } = await loadOrCreateSigningKey(device.stateDir);
  const controller = await startController({
    config: validateConfig(
      {
        stateDir: join(dir, 'controller'),
        replicaId: 'bench',
        broker: broker ? { url: broker.url, sharedGroup: null } : { embedded: { host: '127.0.0.1', tcpPort: 0, wsPort: null } },
        api: { host: '127.0.0.1', port: 0 },
        devices: [{ id: device.id, publicKey: key.publicRaw }],
      },
      '(bench)',
      controllerConfigSchema,
    ),
    logger: silent,
  });
  const agent = await buildAgent({
    config: validateConfig(
      {
        deviceId: device.id,
        stateDir: device.stateDir,
        controller: { publicKey: controller.publicKey },
        mqtt: { url: controller.brokerUrl },
        hardware: { statusLed: 'none', watchdog: 'none' },
        // Unpaced, to measure what the pipeline can carry; the default pacing (256 KiB/s) is a deliberate cap.
        audit: { catchupBytesPerSecond: 1024 * 1024 * 1024 },
      },
      '(bench)',
      agentConfigSchema,
    ),
    logger: silent,
    plugins: [],
  });
  const resolvedAt = new Map<number, number>();
  let latencies: number[] = [];
  let receipted = 0;
  const poll = setInterval(() => {
    const now = agent.journal.status().receipted?.seq ?? 0;
    if (now <= receipted) return;
    const at = performance.now();
    for (let s = receipted + 1; s <= now; s++) {
      const t0 = resolvedAt.get(s);
      if (t0 !== undefined) {
        latencies.push(at - t0);
        resolvedAt.delete(s);
      }
    }
    receipted = now;
  }, 1);
  const untilReceipted = (seq: number) =>
    withTimeout(
      (async () => {
        while ((agent.journal.status().receipted?.seq ?? 0) < seq) await new Promise((r) => setTimeout(r, 2));
      })(),
      180_000,
      'all events receipted',
    );
  const pct = (p: number) => {
    const sorted = [...latencies].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
  };
  try {
    await agent.start();
    const connected = performance.now();
    while (!agent.link?.connected && performance.now() - connected < 10_000) await new Promise((r) => setTimeout(r, 20));

    // Steady rate: a busy line at a realistic pace; latency is append() resolved → receipt back.
    let last = 0;
    const total = steady.perSecond * steady.seconds;
    const t0 = performance.now();
    for (let i = 0; i < total; i++) {
      const due = t0 + (i * 1000) / steady.perSecond;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const e = await agent.journal.append(event(i));
      if (e) {
        resolvedAt.set(e.seq, performance.now());
        last = Math.max(last, e.seq);
      }
    }
    await untilReceipted(last);
    const steadyP50 = pct(50);
    const steadyP99 = pct(99);

    // Burst: producers at full speed; throughput from first append to the last receipt.
    latencies = [];
    const batchesBefore = agent.shipper?.status().batchesSent ?? 0;
    const start = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < burst) {
          next++;
          const e = await agent.journal.append(event(next));
          if (e) {
            resolvedAt.set(e.seq, performance.now());
            last = Math.max(last, e.seq);
          }
        }
      }),
    );
    const appendedIn = (performance.now() - start) / 1000;
    await untilReceipted(last);
    const elapsed = (performance.now() - start) / 1000;
    const held = await controller.auditStore.head(device.id);
    return {
      figures: [
        { key: 'e2e.steady_rate', label: 'steady load', value: steady.perSecond, unit: 'events/s' },
        { key: 'e2e.steady_p50_ms', label: 'steady: append() → receipt, p50', value: round(steadyP50), unit: 'ms' },
        { key: 'e2e.steady_p99_ms', label: 'steady: append() → receipt, p99', value: round(steadyP99), unit: 'ms' },
        { key: 'e2e.burst_events', label: 'burst: events appended by 16 producers', value: burst },
        { key: 'e2e.burst_append_per_s', label: 'burst: durable appends', value: round(burst / appendedIn), unit: '/s' },
        {
          key: 'e2e.events_per_s',
          label: `burst: agent → ${broker ? 'Mosquitto' : 'aedes'} → controller, verified + receipted`,
          value: round(burst / elapsed),
          unit: '/s',
        },
        { key: 'e2e.burst_p50_ms', label: 'burst: append() → receipt, p50 (queueing included)', value: round(pct(50)), unit: 'ms' },
        { key: 'e2e.burst_p99_ms', label: 'burst: append() → receipt, p99', value: round(pct(99)), unit: 'ms' },
        { key: 'e2e.batches', label: 'burst: batches (one device checkpoint each)', value: (agent.shipper?.status().batchesSent ?? 0) - batchesBefore },
        { key: 'e2e.verdict', label: 'controller verdict', value: held?.status ?? 'none' },
      ],
      notes: [
        `end to end: agent and controller in this process, ${broker ? 'Mosquitto as its own process' : 'aedes embedded (Mosquitto not installed)'}, loopback; batches ≤ 1000 events / 256 KiB, 50 ms linger; catch-up pacing off here (default 256 KiB/s caps a backlog at ~640 events/s of this size, by design)`,
      ],
    };
  } finally {
    clearInterval(poll);
    await agent.stop();
    await controller.close();
    await broker?.stop();
  }
}

async function writeExport(file: string, events: number): Promise<void> {
  const key = generateSigningKey();
  const out = createWriteStream(file);
  const write = (line: string) => (out.write(`${line}\n`) ? Promise.resolve() : new Promise<void>((r) => out.once('drain', () => r())));
  const chain = newChainId();
  await write(JSON.stringify({ type: 'ward.audit.export', v: 1, kid: key.kid, publicKey: key.publicRaw, chain, exportedAt: Date.now() }));
  let prev = GENESIS_PREV;
  const t0 = Date.UTC(2026, 10, 1);
  for (let seq = 1; seq <= events; seq++) {
    const input =
      seq === 1
        ? sanitizeInput({ category: 'audit', actor: 'ward-agent', action: JournalActions.chainStart, outcome: 'success', details: { reason: 'bench' } })
        : sanitizeInput(event(seq));
    const made = makeEvent({ chain, seq, prev, session: 1, boot: 'bench', time: t0 + seq, mono: seq }, input);
    prev = made.hash;
    await write(`{"type":"event","event":${made.text}}`);
    if (seq % 1000 === 0 || seq === events) {
      await write(JSON.stringify({ type: 'checkpoint', checkpoint: signCheckpoint(key, { chain, seq, head: made.hash, session: 1, time: t0 + seq }) }));
    }
  }
  await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
}

async function verifier(dir: string, events: number): Promise<{ figures: Figure[]; notes: string[] }> {
  const file = join(dir, 'export.jsonl');
  const madeStart = performance.now();
  await writeExport(file, events);
  const madeMs = performance.now() - madeStart;
  const size = (await stat(file)).size;
  const child = async (mode: 'verify' | 'read') => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', join(here, 'audit-verify-child.ts'), mode, file], {
      maxBuffer: 1 << 20,
      timeout: 600_000,
    });
    return JSON.parse(stdout.trim().split('\n').at(-1) as string) as { events: number; ms: number; status: string; peakKiB: number };
  };
  const read = await child('read');
  const verified = await child('verify');
  return {
    figures: [
      { key: 'verify.events', label: 'export events', value: verified.events },
      { key: 'verify.file_mib', label: 'export size', value: round(size / 1048576), unit: 'MiB' },
      { key: 'verify.status', label: 'verdict', value: verified.status },
      { key: 'verify.events_per_s', label: 'verifier throughput', value: round(verified.events / (verified.ms / 1000)), unit: 'events/s' },
      { key: 'verify.read_per_s', label: 'baseline: read lines only', value: round(read.events / (read.ms / 1000)), unit: 'events/s' },
      { key: 'verify.peak_mib', label: 'verifier process peak RSS', value: round(verified.peakKiB / 1024), unit: 'MiB' },
      { key: 'verify.read_peak_mib', label: 'baseline process peak RSS', value: round(read.peakKiB / 1024), unit: 'MiB' },
      { key: 'verify.peak_over_file', label: 'verifier peak RSS / file size', value: round(verified.peakKiB / 1024 / (size / 1048576)) },
    ],
    notes: [`export of ${events.toLocaleString('en-US')} events written in ${round(madeMs / 1000)} s (checkpoint every 1000); both children run under tsx`],
  };
}

export default async function bench(): Promise<BenchResult> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-bench-audit-'));
  try {
    const appends = await durableAppends(dir, Number(process.env.WARD_BENCH_SECONDS ?? 3));
    const e2e = await endToEnd(dir, Number(process.env.WARD_BENCH_E2E_EVENTS ?? 20_000), { perSecond: 200, seconds: 5 });
    const verify = await verifier(dir, Number(process.env.WARD_BENCH_VERIFY_EVENTS ?? 1_000_000));
    // The same verifier on a tenth of the events: a flat peak says memory does not grow with the journal.
    const small = await verifier(dir, Math.round(Number(process.env.WARD_BENCH_VERIFY_EVENTS ?? 1_000_000) / 10));
    const smallPeak = small.figures.find((f) => f.key === 'verify.peak_mib');
    return {
      figures: [
        ...appends,
        ...e2e.figures,
        ...verify.figures,
        { key: 'verify.peak_mib_tenth', label: 'verifier peak RSS on a tenth of the events', value: smallPeak?.value ?? 'n/a', unit: 'MiB' },
      ],
      notes: ['appends: real LevelDB on this disk, fsync per group; raw baseline writes the same record size', ...e2e.notes, ...verify.notes],
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
