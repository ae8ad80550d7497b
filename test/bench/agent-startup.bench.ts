import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withAgentHarness } from './agent-harness.js';
import type { BenchResult, Figure } from './lib.js';
import { idleMemory, round, wallTime } from './lib.js';

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
 * Every wait is bounded; processes, controller and temp folder are cleaned up
 * (test/bench/agent-harness.ts, shared with binary.bench.ts).
 */
const IDLE_MS = 10_000;
const TIMEOUT_MS = 30_000;
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const node = process.execPath;
const nodeCmd = (...args: string[]) => ({ command: node, args, cwd: repoRoot });

export default async function agentStartupBench(): Promise<BenchResult> {
  const progress = (msg: string) => process.stderr.write(`  [agent-startup] ${msg}\n`);
  progress('baseline wall times (node -e 0 ×5, ward --version ×3)');
  const nodeWall = await wallTime(nodeCmd('-e', '0'), 5, TIMEOUT_MS);
  const versionWall = await wallTime(nodeCmd('scripts/ward.mjs', '--version'), 3, TIMEOUT_MS);
  progress(`bare node idle for ${IDLE_MS / 1000} s`);
  const bare = await idleMemory(nodeCmd('-e', `setTimeout(()=>{},${IDLE_MS + 5_000})`), IDLE_MS);

  progress('spawning the agent');
  const run = await withAgentHarness({ name: 'startup', progress }, (h) =>
    h.runAgent((configFile) => nodeCmd('scripts/ward.mjs', 'agent', 'run', '-c', configFile), { timeoutMs: TIMEOUT_MS, idleMs: IDLE_MS }),
  );

  const mb = (kib: number) => round(kib / 1024);
  const onlineMs = run.onlineMs;
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
        run.startedLogMs === undefined ? 'n/a' : round(run.startedLogMs),
        run.startedLogMs === undefined ? undefined : 'ms',
      ),
      f('agent.online_ms', 'agent: spawn → controller sees online', round(onlineMs), 'ms'),
      f('agent.idle_rss_mb', `agent: RSS after ${IDLE_MS / 1000} s connected + idle`, mb(run.rss), 'MiB'),
      f('agent.peak_rss_mb', 'agent: peak RSS (VmHWM)', mb(run.peak), 'MiB'),
      f('agent.still_online', 'agent: still online after idle', run.stillOnline),
      f('agent.stop_ms', 'agent: SIGTERM → exit', round(run.stopMs), 'ms'),
      f('agent.clean_stop', 'agent: clean stop (exit 0)', run.cleanStop),
      f('ratio.online_vs_version', 'ratio online time / ward --version', round(onlineMs / versionWall), '×'),
      f('ratio.online_vs_node', 'ratio online time / node -e 0', round(onlineMs / nodeWall), '×'),
      f('ratio.rss_vs_node', 'ratio agent RSS / bare node RSS', round(run.rss / bare.rss), '×'),
    ],
    notes: [
      'agent has no plugins; it runs from source through tsx (scripts/ward.mjs), so its time and RSS include the loader',
      'controller + embedded aedes broker run in the bench process; wall times are medians (5 and 3 runs)',
    ],
  };
}
