import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import type { AgentConfigInput } from '../../agent/config/schema.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import { createLogger } from '../../agent/log.js';
import { controllerConfigSchema } from '../../controller/config.js';
import { type Controller, startController } from '../../controller/controller.js';
import type { BenchResult, Figure } from './lib.js';
import { memoryKiB, round, sleep } from './lib.js';

/**
 * Agent startup and idle memory, against baselines:
 *  - bare node idle RSS (`node -e "setTimeout(...)"`), and the wall time of
 *    `node -e 0` and of `node scripts/ward.mjs --version` (which shows what
 *    the tsx loader of a source checkout costs before any agent code runs);
 *  - the real agent, `node scripts/ward.mjs agent run -c agent.yaml` as its
 *    own process (no plugins), against a controller with embedded broker in
 *    this process: wall time from spawn until the controller holds an
 *    authenticated `online: true` state for the device, and the agent's RSS
 *    after IDLE_MS connected and idle.
 * Every wait is bounded; processes, controller and temp folder are cleaned up.
 */
const IDLE_MS = 10_000;
const TIMEOUT_MS = 30_000;
const DEVICE_ID = 'bench-gw-1';
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const node = process.execPath;

interface Proc {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  /** Last ~64 KiB of stdout+stderr, for diagnostics. */
  output(): string;
  onLine(listener: (line: string) => void): void;
}

function start(args: readonly string[]): Proc {
  const child = spawn(node, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
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
    child.once('error', () => res(-2));
  });
  return { child, exited, output: () => buffered, onLine: (l) => listeners.push(l) };
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. Returns the ms it took to exit after SIGTERM. */
async function stop(proc: Proc, graceMs = 10_000): Promise<{ ms: number; clean: boolean }> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return { ms: 0, clean: proc.child.exitCode === 0 };
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

/** Median wall time (ms) of a short command that must exit 0. */
async function wallTime(args: readonly string[], runs: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const proc = start(args);
    const code = await withTimeout(proc.exited, TIMEOUT_MS, `node ${args.join(' ')}`).catch(async (err) => {
      await stop(proc);
      throw err;
    });
    if (code !== 0) throw new Error(`node ${args.join(' ')} exited ${code}: ${proc.output()}`);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] as number;
}

/** RSS of a bare node process after IDLE_MS idle (its timer outlives the reading; killed afterwards). */
async function bareIdleMemory(): Promise<{ rss: number; peak: number }> {
  const proc = start(['-e', `setTimeout(()=>{},${IDLE_MS + 5_000})`]);
  try {
    await sleep(IDLE_MS);
    if (proc.child.pid === undefined || proc.child.exitCode !== null) throw new Error(`bare node exited early: ${proc.output()}`);
    return await memoryKiB(proc.child.pid);
  } finally {
    await stop(proc);
  }
}

export default async function agentStartupBench(): Promise<BenchResult> {
  const progress = (msg: string) => process.stderr.write(`  [agent-startup] ${msg}\n`);
  const dir = await mkdtemp(join(tmpdir(), 'ward-bench-startup-'));
  let controller: Controller | undefined;
  let agent: Proc | undefined;
  try {
    progress('baseline wall times (node -e 0 ×5, ward --version ×3)');
    const nodeWall = await wallTime(['-e', '0'], 5);
    const versionWall = await wallTime(['scripts/ward.mjs', '--version'], 3);
    progress(`bare node idle for ${IDLE_MS / 1000} s`);
    const bare = await bareIdleMemory();

    // Device key first, so the controller can pre-register it (as `ward dev` does).
    const agentStateDir = join(dir, 'agent');
    const { key: deviceKey } = await loadOrCreateSigningKey(agentStateDir);
    const config = controllerConfigSchema.parse({
      stateDir: join(dir, 'controller'),
      replicaId: 'bench-controller',
      broker: { embedded: { host: '127.0.0.1', tcpPort: 0, wsPort: null }, sharedGroup: null },
      api: { host: '127.0.0.1', port: 0 },
      devices: [{ id: DEVICE_ID, publicKey: deviceKey.publicRaw }],
      log: { level: 'warn' },
    });
    controller = await startController({ config, logger: createLogger({ level: 'warn', name: 'bench-controller', destination: process.stderr }) });

    const agentConfig: AgentConfigInput = {
      deviceId: DEVICE_ID,
      stateDir: agentStateDir,
      controller: { publicKey: controller.publicKey },
      mqtt: { url: controller.brokerUrl },
      log: { level: 'info' },
      plugins: [],
    };
    const configFile = join(dir, 'agent.yaml');
    await writeFile(configFile, YAML.stringify(agentConfig), { mode: 0o600 });

    const registry = controller.registry;
    let offState: (() => void) | undefined;
    const online = new Promise<number>((res) => {
      offState = registry.onState((e) => {
        if (e.deviceId !== DEVICE_ID || e.outcome !== 'applied') return;
        const seenAt = performance.now();
        void registry.get(DEVICE_ID).then((rec) => rec?.online && res(seenAt));
      });
    });

    progress('spawning the agent');
    const t0 = performance.now();
    const proc = start(['scripts/ward.mjs', 'agent', 'run', '-c', configFile]);
    agent = proc;
    let startedLogAt: number | undefined;
    proc.onLine((line) => {
      if (startedLogAt === undefined && line.includes('"msg":"agent started"')) startedLogAt = performance.now();
    });
    const died = proc.exited.then((code) => {
      throw new Error(`agent exited (${code}) before coming online:\n${proc.output()}`);
    });
    let onlineAt: number;
    try {
      onlineAt = await withTimeout(Promise.race([online, died]), TIMEOUT_MS, 'agent online');
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- agent output ---\n${proc.output()}`);
    } finally {
      offState?.();
    }
    died.catch(() => undefined);

    progress(`agent online; idle for ${IDLE_MS / 1000} s`);
    await sleep(IDLE_MS);
    if (proc.child.pid === undefined || proc.child.exitCode !== null) throw new Error(`agent exited while idle:\n${proc.output()}`);
    const mem = await memoryKiB(proc.child.pid);
    const stillOnline = (await registry.get(DEVICE_ID))?.online === true;
    const stopped = await stop(proc);
    agent = undefined;

    const mb = (kib: number) => round(kib / 1024);
    const onlineMs = onlineAt - t0;
    const f = (key: string, label: string, value: number | string | boolean, unit?: string): Figure =>
      unit === undefined ? { key, label, value } : { key, label, value, unit };
    return {
      figures: [
        f('baseline.node_e0_ms', 'baseline: node -e 0, wall', round(nodeWall), 'ms'),
        f('baseline.ward_version_ms', 'baseline: node scripts/ward.mjs --version, wall', round(versionWall), 'ms'),
        f('baseline.tsx_loader_ms', '  loader + CLI cost (--version − node -e 0)', round(versionWall - nodeWall), 'ms'),
        f('baseline.node_idle_rss_mb', `baseline: bare node RSS after ${IDLE_MS / 1000} s idle`, mb(bare.rss), 'MiB'),
        f(
          'agent.started_log_ms',
          'agent: spawn → "agent started" log',
          startedLogAt === undefined ? 'n/a' : round(startedLogAt - t0),
          startedLogAt === undefined ? undefined : 'ms',
        ),
        f('agent.online_ms', 'agent: spawn → controller sees online', round(onlineMs), 'ms'),
        f('agent.idle_rss_mb', `agent: RSS after ${IDLE_MS / 1000} s connected + idle`, mb(mem.rss), 'MiB'),
        f('agent.peak_rss_mb', 'agent: peak RSS (VmHWM)', mb(mem.peak), 'MiB'),
        f('agent.still_online', 'agent: still online after idle', stillOnline),
        f('agent.stop_ms', 'agent: SIGTERM → exit', round(stopped.ms), 'ms'),
        f('agent.clean_stop', 'agent: clean stop (exit 0)', stopped.clean),
        f('ratio.online_vs_version', 'ratio online time / ward --version', round(onlineMs / versionWall), '×'),
        f('ratio.online_vs_node', 'ratio online time / node -e 0', round(onlineMs / nodeWall), '×'),
        f('ratio.rss_vs_node', 'ratio agent RSS / bare node RSS', round(mem.rss / bare.rss), '×'),
      ],
      notes: [
        'agent has no plugins; it runs from source through tsx (scripts/ward.mjs), so its time and RSS include the loader',
        'controller + embedded aedes broker run in the bench process; wall times are medians (5 and 3 runs)',
      ],
    };
  } finally {
    if (agent) await stop(agent);
    await controller?.close().catch((err) => progress(`controller close failed: ${String(err)}`));
    await rm(dir, { recursive: true, force: true });
  }
}
