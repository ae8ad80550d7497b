import { createHash } from 'node:crypto';
import { createReadStream, type FSWatcher, watch } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { currentMeasurements, type Measurement, measurementKey, NO_POLICY_DIGEST } from '../shared/attest/evidence.js';
import { canonicalize } from '../shared/canonical.js';
import { policyDigest } from '../shared/policy/model.js';

/**
 * What the agent measures about itself, in a fixed order (the log's first
 * entries are always executable, config, policy, plugins, trust anchors):
 * - the executable: the single binary (`process.execPath` under pkg), or, run
 *   from source, one digest over every source file the agent can load;
 * - its config file, byte for byte;
 * - the active policy: the canonical digest of the policy in the enforcer's
 *   state file, read back from disk (what the controller signed has the same
 *   digest), or `none`;
 * - each enabled plugin: name, version and its config slice;
 * - trust anchors: the fleet root file and the controller's public key.
 * Reading is the only I/O; a file that cannot be read is measured as the
 * digest of its error text, so it shows as a mismatch, never as a skip.
 */
export interface MeasureSources {
  readonly configFile?: string | undefined;
  /** The config as loaded, measured instead when there is no file (agents built in tests). */
  readonly configObject?: unknown;
  readonly activePolicyFile: string;
  readonly plugins: readonly { name: string; version: string; config: unknown }[];
  readonly fleetRootFile?: string | undefined;
  readonly controllerPublicKey?: string | undefined;
  /** Override for tests: measure this file as the executable. */
  readonly executable?: string;
}

/** The repository a from-source agent runs from; only asked when not the single binary (whose CJS bundle has no import.meta.url). */
function repoRoot(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..');
}
/** Source folders a from-source agent loads code from. */
const SOURCE_DIRS = ['agent', 'plugins', 'hardware'];
const SOURCE_FILE = /\.(ts|mts|mjs|js|json)$/;

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Large files (the binary) are not re-hashed at every challenge: a 100 MB binary costs about a second of CPU on
 * a Pi. Their digest is kept while the file's identity and times are unchanged, for at most MAX_CACHE_MS: writes
 * through a shared mapping may leave the times alone, so the cache only shortens the window, never closes it.
 * Small files (config, state, trust anchors) are hashed every time.
 */
const digestCache = new Map<string, { key: string; digest: string; at: number }>();
const CACHE_MIN_BYTES = 1024 * 1024;
const MAX_CACHE_MS = 10 * 60_000;

/**
 * Hashes a large file in chunks as they are read: one update over a 100 MB buffer blocks the event loop for the
 * whole hash (about a second on a Pi, several under qemu), long enough for the control link's RPCs to time out.
 */
async function streamDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function fileDigest(path: string): Promise<string> {
  try {
    const st = await stat(path, { bigint: true });
    if (st.size < BigInt(CACHE_MIN_BYTES)) return sha256(await readFile(path));
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    const cached = digestCache.get(path);
    const now = Date.now();
    if (cached?.key === key && now - cached.at < MAX_CACHE_MS) return cached.digest;
    const digest = await streamDigest(path);
    digestCache.set(path, { key, digest, at: now });
    return digest;
  } catch (err) {
    return sha256(`unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** Whether this process is the pkg single binary. */
/** Set to true by the binary build (esbuild `define`); absent when running from source. */
declare const __WARD_SINGLE_BINARY__: boolean | undefined;

export function isSingleBinary(): boolean {
  return typeof __WARD_SINGLE_BINARY__ !== 'undefined' && __WARD_SINGLE_BINARY__ === true;
}

async function sourceTreeDigest(): Promise<string> {
  const REPO_ROOT = repoRoot();
  const files: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (entry.name !== 'node_modules') await walk(path);
      } else if (SOURCE_FILE.test(entry.name)) files.push(path);
    }
  };
  for (const d of SOURCE_DIRS) await walk(join(REPO_ROOT, d)).catch(() => undefined);
  files.push(join(REPO_ROOT, 'scripts', 'ward.mjs'), join(REPO_ROOT, 'package.json'));
  const lines: string[] = [];
  for (const f of files.sort()) lines.push(`${relative(REPO_ROOT, f).split(sep).join('/')}\0${await fileDigest(f)}\n`);
  return sha256(lines.join(''));
}

/** The executable's measurement as the agent would take it (the controller's reference for a from-source lab). */
export async function executableMeasurement(override?: string): Promise<Measurement> {
  if (override !== undefined) return { kind: 'executable', name: override, sha256: await fileDigest(override) };
  if (isSingleBinary()) return { kind: 'executable', name: process.execPath, sha256: await fileDigest(process.execPath) };
  return { kind: 'executable', name: 'source', sha256: await sourceTreeDigest() };
}

export async function measure(s: MeasureSources): Promise<Measurement[]> {
  const out: Measurement[] = [await executableMeasurement(s.executable)];
  out.push(
    s.configFile !== undefined
      ? { kind: 'config', name: s.configFile, sha256: await fileDigest(s.configFile) }
      : { kind: 'config', name: '(in memory)', sha256: sha256(canonicalize(s.configObject ?? null)) },
  );
  out.push({ kind: 'policy', name: 'active-policy', sha256: await activePolicyDigest(s.activePolicyFile) });
  for (const p of [...s.plugins].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    out.push({ kind: 'plugin', name: p.name, sha256: sha256(canonicalize({ name: p.name, version: p.version, config: p.config ?? null })) });
  }
  if (s.fleetRootFile !== undefined) out.push({ kind: 'trust-anchor', name: 'fleet-root', sha256: await fileDigest(s.fleetRootFile) });
  if (s.controllerPublicKey !== undefined) out.push({ kind: 'trust-anchor', name: 'controller-key', sha256: sha256(s.controllerPublicKey) });
  return out;
}

/** `none` (64 zeros) without an active policy; the canonical digest of the policy the enforcer keeps on disk otherwise. */
export async function activePolicyDigest(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return NO_POLICY_DIGEST;
    return sha256(`unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    const record = JSON.parse(text) as { policy?: unknown };
    if (record.policy === undefined || record.policy === null || typeof record.policy !== 'object') return sha256(`no policy in ${text.length} bytes`);
    return policyDigest(record.policy as Parameters<typeof policyDigest>[0]);
  } catch {
    // Not JSON any more: somebody edited it. Its bytes are the measurement.
    return sha256(text);
  }
}

/** Entries of `next` that differ from the current state of `log` (what a re-measurement appends). */
export function changedMeasurements(log: readonly Measurement[], next: readonly Measurement[]): Measurement[] {
  const current = currentMeasurements(log);
  return next.filter((m) => current.get(measurementKey(m))?.sha256 !== m.sha256);
}

/**
 * Watches the measured files (inotify through fs.watch) and calls `onChange` once per burst of events (editors
 * write a file in several steps). Directories are watched for files that are replaced by rename.
 */
export function watchFiles(paths: readonly string[], onChange: (path: string) => void, debounceMs = 200): () => void {
  const watchers: FSWatcher[] = [];
  let timer: NodeJS.Timeout | undefined;
  let last = '';
  const fire = (path: string) => {
    last = path;
    clearTimeout(timer);
    timer = setTimeout(() => onChange(last), debounceMs);
    timer.unref();
  };
  const dirs = new Map<string, Set<string>>();
  for (const p of paths) {
    const names = dirs.get(dirname(p)) ?? new Set<string>();
    names.add(p.slice(dirname(p).length + 1));
    dirs.set(dirname(p), names);
  }
  for (const [dir, names] of dirs) {
    try {
      const w = watch(dir, { persistent: false }, (_event, name) => {
        if (name === null || names.has(name.toString())) fire(join(dir, name?.toString() ?? ''));
      });
      w.on('error', () => undefined);
      watchers.push(w);
    } catch {
      // A folder that does not exist yet (no policy applied): the periodic re-measurement still covers it.
    }
  }
  return () => {
    clearTimeout(timer);
    for (const w of watchers) w.close();
  };
}
