import { readFile } from 'node:fs/promises';

/**
 * Shared shapes and helpers for the benchmarks (test/bench/*.bench.ts).
 * Benchmarks report figures; nothing here asserts on them.
 */
export interface Figure {
  /** Machine-readable key, stable across runs (e.g. `node.sign_per_s`). */
  readonly key: string;
  /** Human-readable label for the table. */
  readonly label: string;
  readonly value: number | string | boolean;
  readonly unit?: string;
}

export interface BenchResult {
  readonly figures: readonly Figure[];
  /** Free-text lines printed under the table (method, caveats). */
  readonly notes?: readonly string[];
}

export type Bench = () => Promise<BenchResult>;

export interface Rate {
  readonly iterations: number;
  readonly ms: number;
  readonly perSecond: number;
}

/**
 * Runs `fn` for about `warmupMs` untimed (JIT warm-up: tweetnacl needs ~1 s
 * to reach full speed), then timed for about `budgetMs`, checking the clock
 * every 16 calls; at most `maxIterations` calls in each phase.
 */
export function rate(fn: (i: number) => void, options: { budgetMs?: number; warmupMs?: number; maxIterations?: number } = {}): Rate {
  const budgetMs = options.budgetMs ?? 1500;
  const warmupMs = options.warmupMs ?? 250;
  const maxIterations = options.maxIterations ?? 1_000_000;
  const loop = (ms: number): Rate => {
    let n = 0;
    const start = performance.now();
    let now = start;
    while (n < maxIterations && now - start < ms) {
      fn(n);
      n++;
      if ((n & 15) === 0 || n < 16) now = performance.now();
    }
    const elapsed = performance.now() - start;
    return { iterations: n, ms: elapsed, perSecond: (n * 1000) / elapsed };
  };
  loop(warmupMs);
  return loop(budgetMs);
}

/** Resident set size (VmRSS) and its peak (VmHWM) of a live process in KiB, from /proc/<pid>/status (Linux). */
export async function memoryKiB(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => {
    const match = new RegExp(`^${name}:\\s+(\\d+)\\s+kB$`, 'm').exec(status);
    if (!match) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(match[1]);
  };
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Rounds for display: 3 significant digits below 100, integers above. */
export function round(value: number): number {
  return Math.abs(value) >= 100 ? Math.round(value) : Number(value.toPrecision(3));
}
