import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
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
      for (const p of ports) {
        await waitFor(
          `mosquitto listening on ${p}`,
          () => (proc.exitCode !== null ? Promise.reject(new Error(`mosquitto exited: ${out}`)) : canConnect(p)),
          10_000,
          50,
        );
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

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
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
