import { readdir } from 'node:fs/promises';
import { arch, cpus, loadavg, platform } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Bench, BenchResult, Figure } from './lib.js';

/**
 * `npm run bench [-- <name>]`: runs test/bench/*.bench.ts one after another
 * (or only those whose file name matches <name>), prints a table per bench
 * and one `BENCH {json}` line each for machines. Figures are reported, never
 * asserted; the exit code is non-zero only if a bench throws.
 */
const SUFFIX = '.bench.ts';
const here = dirname(fileURLToPath(import.meta.url));

async function main(): Promise<number> {
  const filter = process.argv[2];
  const all = (await readdir(here))
    .filter((f) => f.endsWith(SUFFIX))
    .map((f) => f.slice(0, -SUFFIX.length))
    .sort();
  const exact = all.filter((n) => n === filter);
  const selected = filter === undefined ? all : exact.length > 0 ? exact : all.filter((n) => n.includes(filter));
  if (selected.length === 0) {
    process.stderr.write(`bench: nothing matches "${filter}"; available: ${all.join(', ')}\n`);
    return 2;
  }
  const env = { node: process.version, platform: platform(), arch: arch(), cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown' };
  process.stdout.write(`Ward benchmarks — node ${env.node}, ${env.platform}/${env.arch}, ${env.cpus}× ${env.cpu}\n`);

  let failed = 0;
  for (const name of selected) {
    // Load average before the bench: other work on the machine skews the figures.
    const load = Number((loadavg()[0] ?? 0).toFixed(2));
    process.stdout.write(`\n== ${name} == (load average ${load})\n`);
    const started = performance.now();
    try {
      const mod = (await import(pathToFileURL(join(here, `${name}${SUFFIX}`)).href)) as { default?: Bench };
      if (typeof mod.default !== 'function') throw new Error(`${name}${SUFFIX} has no default export function`);
      const result: BenchResult = await mod.default();
      const ms = Math.round(performance.now() - started);
      printTable(result.figures);
      for (const note of result.notes ?? []) process.stdout.write(`  note: ${note}\n`);
      process.stdout.write(`  (${(ms / 1000).toFixed(1)} s)\n`);
      const figures = Object.fromEntries(result.figures.map((f) => [f.key, f.unit === undefined ? { value: f.value } : { value: f.value, unit: f.unit }]));
      process.stdout.write(`BENCH ${JSON.stringify({ bench: name, ok: true, ms, load, ...env, figures })}\n`);
    } catch (err) {
      failed++;
      const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
      process.stdout.write(`  FAILED: ${message}\n`);
      process.stdout.write(
        `BENCH ${JSON.stringify({ bench: name, ok: false, ms: Math.round(performance.now() - started), load, ...env, error: String(err) })}\n`,
      );
    }
  }
  return failed > 0 ? 1 : 0;
}

function printTable(figures: readonly Figure[]): void {
  const show = (v: Figure['value']) => (typeof v === 'boolean' ? (v ? 'yes' : 'NO') : typeof v === 'number' ? v.toLocaleString('en-US') : v);
  const rows = figures.map((f) => [f.label, show(f.value), f.unit ?? ''] as const);
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  for (const [label, value, unit] of rows) process.stdout.write(`${`  ${label.padEnd(w0)}  ${value.padStart(w1)} ${unit}`.trimEnd()}\n`);
}

process.exitCode = await main();
