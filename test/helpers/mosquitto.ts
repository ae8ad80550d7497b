import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor } from './net.js';

/**
 * A real Mosquitto broker on a free loopback port, with a generated config,
 * for integration tests. stop() is idempotent; restart() keeps the port so
 * clients can reconnect by themselves. Requires the Debian `mosquitto`
 * package (.ci/run installs it); MOSQUITTO_BIN overrides the path.
 */
export interface Mosquitto {
  readonly port: number;
  readonly url: string;
  /** mqtts:// URL when started with `tls`. */
  readonly tlsUrl: string | undefined;
  readonly output: () => string;
  /** Stops the broker, runs `whileDown` (an outage), then starts it again on the same ports. */
  restart(whileDown?: () => Promise<void>): Promise<void>;
  stop(): Promise<void>;
}

export function mosquittoBinary(): string | undefined {
  const candidates = [process.env.MOSQUITTO_BIN, '/usr/sbin/mosquitto', '/usr/bin/mosquitto'].filter(Boolean) as string[];
  for (const c of candidates) if (spawnSync(c, ['-h']).error === undefined) return c;
  return undefined;
}

export async function startMosquitto(options: { tls?: { ca: string; cert: string; key: string } } = {}): Promise<Mosquitto> {
  const bin = mosquittoBinary();
  if (bin === undefined) throw new Error('mosquitto is not installed: run scripts/setup.sh (Debian package "mosquitto")');
  const dir = await mkdtemp(join(tmpdir(), 'ward-mosquitto-'));
  await chmod(dir, 0o755);
  // Another process may take a port between freePort() and the broker's bind: then new ports, a few times.
  for (let attempt = 1; ; attempt++) {
    try {
      return await launchOnFreePorts(bin, dir, options);
    } catch (err) {
      if (!(err instanceof MosquittoExited && err.addressInUse) || attempt >= 3) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }
}

async function launchOnFreePorts(bin: string, dir: string, options: { tls?: { ca: string; cert: string; key: string } }): Promise<Mosquitto> {
  const port = await freePort();
  const tlsPort = options.tls ? await freePort() : undefined;
  const conf = join(dir, 'mosquitto.conf');
  const lines = [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    'persistence false',
    'log_dest stdout',
    'log_type error',
    'log_type warning',
    'log_type notice',
  ];
  if (options.tls) {
    lines.push(
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${options.tls.ca}`,
      `certfile ${options.tls.cert}`,
      `keyfile ${options.tls.key}`,
      'tls_version tlsv1.2',
    );
  }
  await writeFile(conf, `${lines.join('\n')}\n`);
  const broker = mosquittoProcess(
    bin,
    conf,
    [port, tlsPort].filter((x): x is number => x !== undefined),
  );
  await broker.launch();
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    tlsUrl: tlsPort ? `mqtts://127.0.0.1:${tlsPort}` : undefined,
    output: broker.output,
    async restart(whileDown) {
      await broker.halt();
      await whileDown?.();
      await broker.launch();
    },
    async stop() {
      await broker.halt();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** One Mosquitto process for a config file: (re)launch until every port accepts, halt with a SIGKILL fallback. */
function mosquittoProcess(bin: string, conf: string, ports: readonly number[]) {
  let child: ChildProcess | undefined;
  let out = '';
  return {
    output: () => out,
    get child() {
      return child;
    },
    async launch() {
      const proc = spawn(bin, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
      child = proc;
      proc.stdout?.on('data', (d) => {
        out += d;
      });
      proc.stderr?.on('data', (d) => {
        out += d;
      });
      // Listening means this process holds the listening socket: a port that accepts may be another test's
      // broker while ours is exiting with "Address already in use".
      const deadline = Date.now() + 10_000;
      for (const p of ports) {
        for (;;) {
          if (proc.exitCode !== null || proc.signalCode !== null) throw new MosquittoExited(p, out);
          if (proc.pid !== undefined && (await listensOn(proc.pid, p))) break;
          if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${p} within 10 s: ${out}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    },
    async halt() {
      const proc = child;
      child = undefined;
      if (proc === undefined || proc.exitCode !== null) return;
      const exited = new Promise<void>((r) => proc.once('exit', () => r()));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

class MosquittoExited extends Error {
  constructor(
    readonly port: number,
    readonly output: string,
  ) {
    super(`mosquitto exited before listening on ${port}: ${output}`);
  }
  get addressInUse(): boolean {
    return /address already in use/i.test(this.output);
  }
}

/** Whether process `pid` holds a TCP socket listening on `port` (inodes of /proc/net/tcp{,6} against its fds). */
async function listensOn(pid: number, port: number): Promise<boolean> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address is ADDR:PORT; st 0A is LISTEN; inode is the tenth field.
      if (f[1]?.endsWith(`:${hexPort}`) && f[3] === '0A' && f[9]) inodes.add(`socket:[${f[9]}]`);
    }
  }
  if (inodes.size === 0) return false;
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (inodes.has(target)) return true;
  }
  return false;
}

/** A broker started from a caller-written config; see startMosquittoWithConfig. */
export interface ConfiguredMosquitto extends Mosquitto {
  /** The listener ports, in the order given. `port`/`url` refer to the first one (plain mqtt:// in the URL whatever the listener speaks). */
  readonly ports: readonly number[];
  /** The broker's process id (for a pid file a controller signals). */
  readonly pid: number | undefined;
  /** How many times the broker has logged "Reloading config." so far. */
  reloads(): number;
  /**
   * SIGHUP, resolved once the broker has logged "Reloading config." (so the
   * config needs `log_type information`, Mosquitto's default). Connections
   * made after that are judged by the reloaded files: the broker handles the
   * signal in its single-threaded main loop before any further network I/O.
   */
  reload(): Promise<void>;
}

/**
 * Mosquitto with a caller-supplied config (written to `dir`/mosquitto.conf):
 * for tests of generated production configs. The caller owns `dir` (stop()
 * leaves it) and must make every file in it readable by the `mosquitto`
 * user; restart() re-reads the config and whatever the caller rewrote.
 */
export async function startMosquittoWithConfig(options: { dir: string; configText: string; ports: readonly number[] }): Promise<ConfiguredMosquitto> {
  const bin = mosquittoBinary();
  if (bin === undefined) throw new Error('mosquitto is not installed: run scripts/setup.sh (Debian package "mosquitto")');
  const first = options.ports[0];
  if (first === undefined) throw new TypeError('startMosquittoWithConfig needs the ports the config listens on');
  await chmod(options.dir, 0o755);
  const conf = join(options.dir, 'mosquitto.conf');
  await writeFile(conf, options.configText, { mode: 0o644 });
  const broker = mosquittoProcess(bin, conf, options.ports);
  const reloads = () => broker.output().match(/Reloading config/g)?.length ?? 0;
  await broker.launch();
  return {
    port: first,
    ports: [...options.ports],
    get pid() {
      return broker.child?.pid;
    },
    reloads,
    url: `mqtt://127.0.0.1:${first}`,
    tlsUrl: undefined,
    output: broker.output,
    async reload() {
      const proc = broker.child;
      if (proc === undefined || proc.exitCode !== null) throw new Error(`mosquitto is not running: ${broker.output()}`);
      const before = reloads();
      proc.kill('SIGHUP');
      await waitFor('mosquitto to log "Reloading config."', () => reloads() > before, 10_000, 20);
    },
    async restart() {
      await broker.halt();
      await broker.launch();
    },
    async stop() {
      await broker.halt();
    },
  };
}
