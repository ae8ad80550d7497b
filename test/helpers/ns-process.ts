import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SYSTEM_PATH, systemBinary } from './netns.js';

/**
 * A TypeScript fixture running inside a network namespace (`ip netns exec <ns> node --import tsx <script>`),
 * spoken to in line-delimited JSON: call() sends {id, ...} and resolves with the reply carrying that id; other
 * lines are collected in `events`. Every call is bounded; close() ends stdin (the fixture exits) and kills it
 * if it has not within a few seconds.
 */
export interface NsProcess {
  call(message: Record<string, unknown>, timeoutMs?: number): Promise<Record<string, unknown>>;
  readonly events: Record<string, unknown>[];
  readonly stderr: () => string;
  close(): Promise<void>;
}

export async function startInNamespace(ns: string, script: URL, args: readonly string[], startTimeoutMs = 20_000): Promise<NsProcess> {
  const ip = systemBinary('ip') ?? 'ip';
  const child: ChildProcess = spawn(ip, ['netns', 'exec', ns, process.execPath, '--import', 'tsx', fileURLToPath(script), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PATH: SYSTEM_PATH },
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 100_000) stderr += d;
  });
  const events: Record<string, unknown>[] = [];
  const waiting = new Map<number, (m: Record<string, unknown>) => void>();
  let ready: (() => void) | undefined;
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (m.ready === true) ready?.();
    else if (typeof m.id === 'number' && waiting.has(m.id)) {
      waiting.get(m.id)?.(m);
      waiting.delete(m.id);
    } else events.push(m);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fixture in ${ns} did not start within ${startTimeoutMs} ms: ${stderr}`)), startTimeoutMs);
    ready = () => {
      clearTimeout(timer);
      resolve();
    };
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`fixture in ${ns} exited before it was ready: ${stderr}`));
    });
  });
  let nextId = 1;
  return {
    events,
    stderr: () => stderr,
    call(message, timeoutMs = 15_000) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(id);
          reject(new Error(`no answer to ${JSON.stringify(message).slice(0, 200)} within ${timeoutMs} ms from ${ns}: ${stderr.slice(-2000)}`));
        }, timeoutMs);
        waiting.set(id, (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        child.stdin?.write(`${JSON.stringify({ ...message, id })}\n`);
      });
    },
    async close() {
      child.stdin?.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
