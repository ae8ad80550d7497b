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
  /** Calls timed, over all rounds. */
  readonly iterations: number;
  /** Best round's rate: the least disturbed by other work on the machine. */
  readonly perSecond: number;
  /** Median round's rate. */
  readonly medianPerSecond: number;
}

/**
 * Runs `fn` for about `warmupMs` untimed (JIT warm-up: tweetnacl needs ~1 s
 * to reach full speed), then `rounds` timed rounds sharing `budgetMs`,
 * reading the clock after every call (~50 ns, noise next to a signature);
 * at most `maxIterations` calls per round.
 */
export function rate(fn: (i: number) => void, options: { budgetMs?: number; warmupMs?: number; rounds?: number; maxIterations?: number } = {}): Rate {
  const budgetMs = options.budgetMs ?? 1500;
  const rounds = options.rounds ?? 5;
  const maxIterations = options.maxIterations ?? 1_000_000;
  let i = 0;
  const loop = (ms: number): { n: number; perSecond: number } => {
    let n = 0;
    const start = performance.now();
    while (n < maxIterations && performance.now() - start < ms) {
      fn(i++);
      n++;
    }
    return { n, perSecond: (n * 1000) / (performance.now() - start) };
  };
  loop(options.warmupMs ?? 250);
  const results = Array.from({ length: rounds }, () => loop(budgetMs / rounds));
  const rates = results.map((r) => r.perSecond).sort((a, b) => a - b);
  return {
    iterations: results.reduce((sum, r) => sum + r.n, 0),
    perSecond: rates[rates.length - 1] as number,
    medianPerSecond: rates[Math.floor(rates.length / 2)] as number,
  };
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
