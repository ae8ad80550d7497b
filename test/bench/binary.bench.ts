import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type AgentRun, withAgentHarness } from './agent-harness.js';
import type { BenchResult, Command, Figure } from './lib.js';
import { idleMemory, median, round, wallTime } from './lib.js';

/**
 * "One binary for ARM gateways": what the single executable costs and buys.
 *  1. Size of each dist/ward-linux-* (raw, and `xz -T0 -<XZ_LEVEL>` as it
 *     would travel in an update), and whether it still matches
 *     dist/manifest.json. Needs `npm run build:binary` first; never builds.
 *  2. On x64, in the same run and interleaved (a, b, c, a, b, c, …, RUNS
 *     each): spawn → controller sees `online`, and RSS after IDLE_MS
 *     connected and idle, for
 *       (a) the binary   dist/ward-linux-x64 agent run -c cfg
 *       (b) its bundle   node <build cache>/work/linux-x64/ward.cjs agent run -c cfg (host Node, no tsx)
 *       (c) the source   node scripts/ward.mjs agent run -c cfg (tsx loader)
 *     against bare-node baselines (`node -e 0` wall, idle RSS).
 *  3. Once: the arm64 binary under qemu-user, emulated, for trend only.
 * Each agent run is the first start of a fresh device (test/bench/agent-harness.ts);
 * the binaries get WARD_CACHE_DIR in a temp folder (one per variant; the
 * embedded LevelDB addon would be extracted there, though the agent itself
 * does not open LevelDB) and run from a temp cwd, away from node_modules. Every wait is bounded;
 * processes, controller and temp folders are cleaned up.
 */
const RUNS = 3;
const IDLE_MS = 10_000;
const TIMEOUT_MS = 60_000;
const QEMU_TIMEOUT_MS = 120_000;
const XZ_LEVEL = 6;
const XZ_TIMEOUT_MS = 300_000;

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const distDir = join(repoRoot, 'dist');
const buildCache = process.env.WARD_BUILD_CACHE ?? join(homedir(), '.cache', 'ward-build');
const node = process.execPath;

interface TargetSpec {
  readonly package: string;
  readonly version: string;
  readonly qemu: { readonly bin: string; readonly sysroot: string } | null;
}
interface Manifest {
  readonly targets: Record<string, { file: string; size: number; sha256: string; node: string; bundleSha256: string }>;
}

const mb = (bytes: number) => round(bytes / 2 ** 20);
const kibToMb = (kib: number) => round(kib / 1024);
const f = (key: string, label: string, value: number | string | boolean, unit?: string): Figure =>
  unit === undefined ? { key, label, value } : { key, label, value, unit };

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Bytes of `xz -T0 -<level> -c file`, counted here; bounded by XZ_TIMEOUT_MS. */
function xzSize(file: string, level: number): Promise<number> {
  return new Promise((res, rej) => {
    const child = spawn('xz', ['-T0', `-${level}`, '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let bytes = 0;
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      rej(new Error(`xz ${file}: no result within ${XZ_TIMEOUT_MS} ms`));
    }, XZ_TIMEOUT_MS);
    child.stdout.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      rej(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) res(bytes);
      else rej(new Error(`xz ${file} exited ${code}: ${stderr.trim()}`));
    });
  });
}

/** Median per field over the runs of one variant. */
function summarise(runs: readonly AgentRun[]) {
  return {
    onlineMs: median(runs.map((r) => r.onlineMs)),
    each: runs.map((r) => String(Math.round(r.onlineMs))).join(' / '),
    rss: median(runs.map((r) => r.rss)),
    peak: median(runs.map((r) => r.peak)),
    stillOnline: runs.every((r) => r.stillOnline),
    cleanStop: runs.every((r) => r.cleanStop),
    stopMs: median(runs.map((r) => r.stopMs)),
  };
}

async function hasNativeCache(cacheDir: string): Promise<boolean> {
  const files = await readdir(join(cacheDir, 'native')).catch(() => [] as string[]);
  return files.some((name) => name.endsWith('.node'));
}

export default async function binaryBench(): Promise<BenchResult> {
  const progress = (msg: string) => process.stderr.write(`  [binary] ${msg}\n`);
  const figures: Figure[] = [];
  const notes: string[] = [];
  const { targets } = JSON.parse(await readFile(join(repoRoot, 'scripts/binary/targets.json'), 'utf8')) as { targets: Record<string, TargetSpec> };
  const manifestFile = join(distDir, 'manifest.json');
  const manifest = existsSync(manifestFile) ? (JSON.parse(await readFile(manifestFile, 'utf8')) as Manifest) : undefined;
  const binaryOf = (target: string) => join(distDir, manifest?.targets[target]?.file ?? `ward-${target}`);
  const baseNodeOf = (target: string) => {
    const spec = targets[target];
    return spec ? join(buildCache, `${spec.package}-${spec.version}`, 'package/bin/node') : '';
  };

  // ---- 1. sizes ---------------------------------------------------------------------------
  const present = Object.keys(targets).filter((t) => existsSync(binaryOf(t)));
  if (present.length === 0) {
    figures.push(f('size.dist', 'binaries in dist/', 'missing'));
    notes.push('dist/ has no ward-linux-* binary: run `npm run build:binary` first (this bench never builds); sizes and binary runs skipped');
  }
  for (const target of present) {
    const file = binaryOf(target);
    const bytes = (await stat(file)).size;
    progress(`xz -T0 -${XZ_LEVEL} ${file}`);
    const t0 = performance.now();
    const xz = await xzSize(file, XZ_LEVEL).catch((err: Error) => err);
    const xzSeconds = (performance.now() - t0) / 1000;
    const expected = manifest?.targets[target]?.sha256;
    const matches = expected === undefined ? 'no manifest entry' : (await sha256File(file)) === expected;
    figures.push(
      f(`size.${target}.bytes`, `${target}: size`, bytes, 'bytes'),
      f(`size.${target}.mib`, `${target}: size`, mb(bytes), 'MiB'),
      xz instanceof Error
        ? f(`size.${target}.xz_mib`, `${target}: xz -${XZ_LEVEL}`, `n/a (${xz.message.split('\n')[0]})`)
        : f(`size.${target}.xz_mib`, `${target}: xz -${XZ_LEVEL} (${xzSeconds.toFixed(0)} s)`, mb(xz), 'MiB'),
      ...(xz instanceof Error ? [] : [f(`size.${target}.xz_pct`, `${target}: xz / raw`, round((100 * xz) / bytes), '%')]),
      f(`size.${target}.matches_manifest`, `${target}: sha256 matches dist/manifest.json`, matches),
      f(`size.${target}.node`, `${target}: embedded Node`, manifest?.targets[target]?.node ?? '?'),
    );
  }
  const missing = Object.keys(targets).filter((t) => !present.includes(t));
  if (present.length > 0 && missing.length > 0) notes.push(`missing in dist/: ${missing.join(', ')} (run \`npm run build:binary\`)`);

  // ---- 2. + 3. startup and memory ---------------------------------------------------------
  const work = await mkdtemp(join(tmpdir(), 'ward-bench-binary-'));
  try {
    const env = async (name: string) => {
      const cacheDir = join(work, `cache-${name}`);
      await mkdir(cacheDir, { recursive: true });
      return { cacheDir, env: { ...process.env, WARD_CACHE_DIR: cacheDir } };
    };
    const cwd = join(work, 'cwd');
    await mkdir(cwd, { recursive: true });

    interface Variant {
      readonly key: string;
      readonly label: string;
      readonly cacheDir: string;
      readonly cmd: (args: readonly string[]) => Command;
      readonly runs: AgentRun[];
    }
    const variants: Variant[] = [];
    const x64Binary = binaryOf('linux-x64');
    const bundle = join(buildCache, 'work', 'linux-x64', 'ward.cjs');
    const onX64 = process.arch === 'x64' && process.platform === 'linux';
    if (!onX64) notes.push(`host is ${process.platform}/${process.arch}: the x64 binary and bundle runs are skipped`);
    if (onX64 && existsSync(x64Binary)) {
      const e = await env('binary');
      variants.push({ key: 'binary', label: '(a) binary', cacheDir: e.cacheDir, cmd: (args) => ({ command: x64Binary, args, cwd, env: e.env }), runs: [] });
    } else if (onX64) notes.push(`(a) skipped: ${x64Binary} missing (run \`npm run build:binary\`)`);
    if (onX64 && existsSync(bundle)) {
      const e = await env('bundle');
      variants.push({
        key: 'bundle',
        label: '(b) bundle/node',
        cacheDir: e.cacheDir,
        cmd: (args) => ({ command: node, args: [bundle, ...args], cwd, env: e.env }),
        runs: [],
      });
      const expected = manifest?.targets['linux-x64']?.bundleSha256;
      if (expected !== undefined && (await sha256File(bundle)) !== expected) {
        notes.push(`(b) ${bundle} does NOT match the bundleSha256 of dist/manifest.json: rebuild for a like-for-like comparison`);
      }
    } else if (onX64) notes.push(`(b) skipped: ${bundle} missing (run \`npm run build:binary\`)`);
    {
      const e = await env('source');
      variants.push({
        key: 'source',
        label: '(c) source/tsx',
        cacheDir: e.cacheDir,
        cmd: (args) => ({ command: node, args: ['scripts/ward.mjs', ...args], cwd: repoRoot, env: e.env }),
        runs: [],
      });
    }

    progress('baselines: node -e 0 ×5, --version ×3 per variant');
    const nodeWall = await wallTime({ command: node, args: ['-e', '0'] }, 5, TIMEOUT_MS);
    const versionWall = new Map<string, number>();
    for (const v of variants) versionWall.set(v.key, await wallTime(v.cmd(['--version']), 3, TIMEOUT_MS));

    // Idle baselines side by side (all idle, so they do not disturb each other): host node,
    // and when the build cache has them, the binaries' own stock Node (x64, and arm64 under qemu).
    const arm64Qemu = targets['linux-arm64']?.qemu;
    const idle = (cmd: Command) => idleMemory(cmd, IDLE_MS);
    const idleScript = ['-e', `setTimeout(()=>{},${IDLE_MS + 20_000})`];
    const node22x64 = baseNodeOf('linux-x64');
    const node22arm64 = baseNodeOf('linux-arm64');
    progress(`bare node idle for ${IDLE_MS / 1000} s`);
    const [bare, bareX64, bareArm64] = await Promise.allSettled([
      idle({ command: node, args: idleScript }),
      onX64 && existsSync(node22x64) ? idle({ command: node22x64, args: idleScript }) : Promise.resolve(undefined),
      arm64Qemu && existsSync(node22arm64)
        ? idle({ command: arm64Qemu.bin, args: ['-L', arm64Qemu.sysroot, node22arm64, ...idleScript] })
        : Promise.resolve(undefined),
    ]);
    if (bare.status === 'rejected') throw bare.reason;
    const bareRss = bare.value.rss;

    let arm64Run: AgentRun | undefined;
    await withAgentHarness({ name: 'binary', progress }, async (h) => {
      for (let i = 0; i < RUNS; i++) {
        for (const v of variants) {
          progress(`${v.label} run ${i + 1}/${RUNS}`);
          v.runs.push(await h.runAgent((cfg) => v.cmd(['agent', 'run', '-c', cfg]), { timeoutMs: TIMEOUT_MS, idleMs: IDLE_MS }));
        }
      }
      const arm64Binary = binaryOf('linux-arm64');
      if (arm64Qemu && existsSync(arm64Binary)) {
        const e = await env('arm64');
        progress(`arm64 binary under ${arm64Qemu.bin} (bounded by ${QEMU_TIMEOUT_MS / 1000} s)`);
        arm64Run = await h.runAgent(
          (cfg) => ({ command: arm64Qemu.bin, args: ['-L', arm64Qemu.sysroot, arm64Binary, 'agent', 'run', '-c', cfg], cwd, env: e.env }),
          { timeoutMs: QEMU_TIMEOUT_MS, idleMs: IDLE_MS },
        );
      } else notes.push('arm64 under qemu skipped: dist/ward-linux-arm64 or its qemu entry in scripts/binary/targets.json missing');
    });

    // ---- figures --------------------------------------------------------------------------
    figures.push(
      f('baseline.node_e0_ms', `baseline: node -e 0 (host ${process.version}), wall`, round(nodeWall), 'ms'),
      f('baseline.node_idle_rss_mb', `baseline: bare node ${process.version} RSS, ${IDLE_MS / 1000} s idle`, kibToMb(bareRss), 'MiB'),
    );
    if (bareX64.status === 'fulfilled' && bareX64.value) {
      figures.push(
        f('baseline.node22_idle_rss_mb', `baseline: bare node ${targets['linux-x64']?.version} (the x64 binary's) RSS`, kibToMb(bareX64.value.rss), 'MiB'),
      );
    }
    const source = variants.find((v) => v.key === 'source');
    const sourceSum = source ? summarise(source.runs) : undefined;
    for (const v of variants) {
      const s = summarise(v.runs);
      const k = `x64.${v.key}`;
      figures.push(
        f(`${k}.version_ms`, `${v.label}: --version, wall (median 3)`, round(versionWall.get(v.key) ?? Number.NaN), 'ms'),
        f(`${k}.online_ms`, `${v.label}: spawn → online (median ${RUNS})`, round(s.onlineMs), 'ms'),
        f(`${k}.online_runs`, `${v.label}: spawn → online, each run`, s.each, 'ms'),
        f(`${k}.idle_rss_mb`, `${v.label}: RSS, ${IDLE_MS / 1000} s online + idle (median)`, kibToMb(s.rss), 'MiB'),
        f(`${k}.peak_rss_mb`, `${v.label}: peak RSS, VmHWM (median)`, kibToMb(s.peak), 'MiB'),
        f(`${k}.still_online`, `${v.label}: online after idle (all runs)`, s.stillOnline),
        f(`${k}.clean_stop`, `${v.label}: SIGTERM → exit 0 (all runs)`, s.cleanStop),
      );
      if (v.key !== 'source') {
        const extracted = await hasNativeCache(v.cacheDir);
        figures.push(f(`${k}.addon`, `${v.label}: LevelDB addon in WARD_CACHE_DIR`, extracted ? 'extracted' : 'not loaded'));
      }
    }
    for (const v of variants) {
      const s = summarise(v.runs);
      const k = `ratio.${v.key}`;
      if (sourceSum && v.key !== 'source') {
        figures.push(
          f(`${k}.online_vs_source`, `ratio ${v.label} / (c) source: online time`, round(s.onlineMs / sourceSum.onlineMs), '×'),
          f(`${k}.rss_vs_source`, `ratio ${v.label} / (c) source: RSS`, round(s.rss / sourceSum.rss), '×'),
        );
      }
      figures.push(
        f(`${k}.online_vs_node`, `ratio ${v.label} online time / node -e 0`, round(s.onlineMs / nodeWall), '×'),
        f(`${k}.rss_vs_node`, `ratio ${v.label} RSS / bare node ${process.version}`, round(s.rss / bareRss), '×'),
      );
      if (v.key === 'binary' && bareX64.status === 'fulfilled' && bareX64.value) {
        figures.push(f(`${k}.rss_vs_node22`, `ratio ${v.label} RSS / bare node ${targets['linux-x64']?.version}`, round(s.rss / bareX64.value.rss), '×'));
      }
    }
    if (arm64Run) {
      const label = 'arm64/qemu';
      figures.push(
        f('qemu.arm64.what', `${label}: dist/ward-linux-arm64 under ${arm64Qemu?.bin}`, 'emulated, for trend only'),
        f('qemu.arm64.online_ms', `${label}: spawn → online (1 run)`, round(arm64Run.onlineMs), 'ms'),
        f('qemu.arm64.idle_rss_mb', `${label}: qemu RSS after ${IDLE_MS / 1000} s online + idle`, kibToMb(arm64Run.rss), 'MiB'),
        f('qemu.arm64.peak_rss_mb', `${label}: qemu peak RSS, VmHWM`, kibToMb(arm64Run.peak), 'MiB'),
        f('qemu.arm64.still_online', `${label}: still online after idle`, arm64Run.stillOnline),
        f('qemu.arm64.clean_stop', `${label}: SIGTERM → exit 0`, arm64Run.cleanStop),
      );
      if (bareArm64.status === 'fulfilled' && bareArm64.value) {
        figures.push(
          f('qemu.arm64.node_idle_rss_mb', `${label}: baseline bare node ${targets['linux-arm64']?.version} RSS`, kibToMb(bareArm64.value.rss), 'MiB'),
        );
      }
      const binary = variants.find((v) => v.key === 'binary');
      if (binary) {
        const s = summarise(binary.runs);
        figures.push(
          f('qemu.arm64.online_vs_x64', 'ratio arm64/qemu / (a): online time', round(arm64Run.onlineMs / s.onlineMs), '×'),
          f('qemu.arm64.rss_vs_x64', 'ratio arm64/qemu / (a): RSS', round(arm64Run.rss / s.rss), '×'),
        );
      }
    }
    for (const r of [bareX64, bareArm64]) if (r.status === 'rejected') notes.push(`a stock-Node baseline failed: ${String(r.reason).split('\n')[0]}`);

    notes.push(
      `sizes: xz -T0 -${XZ_LEVEL} (-9 gains little and takes ~70 s per binary); MiB = 2^20 bytes`,
      `x64 runs interleaved a, b, c × ${RUNS}; each is the first start of a fresh device (new state folder, key pre-registered), no plugins; controller + embedded aedes broker run in the bench process`,
      `(a) carries Node ${manifest?.targets['linux-x64']?.node ?? '?'}, (b) and (c) run on the host's Node ${process.version}: (a) vs (b) differs in Node version as well as SEA packaging`,
      '(a), (b) and arm64 run with WARD_CACHE_DIR in a temp folder (one per variant) and cwd outside the repository; the agent never opens LevelDB (only the controller store does), so "not loaded" is expected',
      'under qemu the RSS is the qemu-user process: emulator + guest Node + agent; compare with the bare arm64 node baseline under qemu, not with native figures',
    );
    return { figures, notes };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
