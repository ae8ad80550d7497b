import { type ChildProcess, spawn } from 'node:child_process';
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

/** Median of a non-empty list (the upper middle one for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of nothing');
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/** A spawned process with its output kept for diagnostics. */
export interface Proc {
  readonly child: ChildProcess;
  /** Resolves with the exit code, -1 if killed by a signal, -2 if it could not be spawned. */
  readonly exited: Promise<number | null>;
  /** Last ~64 KiB of stdout+stderr, for diagnostics. */
  output(): string;
  onLine(listener: (line: string) => void): void;
}

export interface Command {
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd?: string;
  /** Full environment of the child; default: this process's. */
  readonly env?: NodeJS.ProcessEnv;
}

/** Human-readable form of a command, for labels and errors. */
export const describeCommand = (c: Command): string => [c.command, ...c.args].join(' ');

export function startProcess(cmd: Command): Proc {
  const child = spawn(cmd.command, cmd.args, { cwd: cmd.cwd, env: cmd.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let buffered = '';
  let partial = '';
  const listeners: ((line: string) => void)[] = [];
  const take = (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    buffered = (buffered + text).slice(-65_536);
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) for (const l of listeners) l(line);
  };
  child.stdout?.on('data', take);
  child.stderr?.on('data', take);
  const exited = new Promise<number | null>((res) => {
    child.once('exit', (code, signal) => res(code ?? (signal ? -1 : null)));
    child.once('error', (err) => {
      buffered += `\n[spawn error] ${String(err)}`;
      res(-2);
    });
  });
  return { child, exited, output: () => buffered, onLine: (l) => listeners.push(l) };
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. Returns the ms it took to exit after SIGTERM. */
export async function stopProcess(proc: Proc, graceMs = 10_000): Promise<{ ms: number; clean: boolean }> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null || proc.child.pid === undefined) {
    return { ms: 0, clean: proc.child.exitCode === 0 };
  }
  const t0 = performance.now();
  proc.child.kill('SIGTERM');
  try {
    const code = await withTimeout(proc.exited, graceMs, 'stop');
    return { ms: performance.now() - t0, clean: code === 0 };
  } catch {
    proc.child.kill('SIGKILL');
    await withTimeout(proc.exited, 5_000, 'kill').catch(() => undefined);
    return { ms: performance.now() - t0, clean: false };
  }
}

/** Median wall time (ms) of a short command that must exit 0, each run bounded by `timeoutMs`. */
export async function wallTime(cmd: Command, runs: number, timeoutMs = 30_000): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const proc = startProcess(cmd);
    const code = await withTimeout(proc.exited, timeoutMs, describeCommand(cmd)).catch(async (err) => {
      await stopProcess(proc);
      throw err;
    });
    if (code !== 0) throw new Error(`${describeCommand(cmd)} exited ${code}: ${proc.output()}`);
    times.push(performance.now() - t0);
  }
  return median(times);
}

/**
 * RSS of a process that idles (e.g. `node -e "setTimeout(()=>{},N)"`, N
 * longer than `idleMs`), read after `idleMs`; the process is stopped afterwards.
 */
export async function idleMemory(cmd: Command, idleMs: number): Promise<{ rss: number; peak: number }> {
  const proc = startProcess(cmd);
  try {
    await sleep(idleMs);
    if (proc.child.pid === undefined || proc.child.exitCode !== null) throw new Error(`${describeCommand(cmd)} exited early: ${proc.output()}`);
    return await memoryKiB(proc.child.pid);
  } finally {
    await stopProcess(proc);
  }
}

/** A child's JSON lines; anything else (a loader warning) reads as {}. */
export function jsonLine(line: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
