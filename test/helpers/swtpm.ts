import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { systemTool } from '../../hardware/tpm/tpm2-tools.js';

/**
 * A software TPM 2.0 (swtpm, Debian packages `swtpm` and `swtpm-tools`) on free loopback ports, for tests of the
 * tpm2-tools driver: TPM commands on `port`, swtpm's control channel on `port + 1`. Started with
 * `startup-clear`, so no tpm2_startup is needed; stopped cleanly (TPM2_Shutdown, then the control channel's
 * shutdown) so the dictionary-attack counter never sees an interrupted session. When `setpriv` is there swtpm gets
 * PR_SET_PDEATHSIG, so a crashed test process leaves no emulator holding ports.
 */
export interface Swtpm {
  /** TPM2TOOLS_TCTI value for this TPM. */
  readonly tcti: string;
  readonly port: number;
  /** The TPM's state folder (NVRAM: persistent keys, hierarchy seeds), removed at the end of the test. */
  readonly dir: string;
  /** What swtpm printed, for failure messages. */
  output(): string;
  /** Clean stop and start again on the same state and ports: a reboot (PCRs reset, persistent keys stay). */
  restart(): Promise<void>;
  /** Clean stop (idempotent); also done by the test's teardown. */
  stop(): Promise<void>;
}

/** swtpm, swtpm_ioctl and the tpm2-tools programs the tests and the driver run. */
const TOOLS = [
  'swtpm',
  'swtpm_ioctl',
  'tpm2_getcap',
  'tpm2_shutdown',
  'tpm2_createek',
  'tpm2_readpublic',
  'tpm2_startauthsession',
  'tpm2_policysecret',
  'tpm2_create',
  'tpm2_evictcontrol',
  'tpm2_flushcontext',
  'tpm2_pcrreset',
  'tpm2_pcrextend',
  'tpm2_pcrread',
  'tpm2_quote',
  'tpm2_makecredential',
  'tpm2_activatecredential',
];
const PACKAGE_OF: Readonly<Record<string, string>> = { swtpm: 'swtpm', swtpm_ioctl: 'swtpm-tools' };
const READY_MS = 5_000;
const STEP_MS = 3_000;

let availability: Promise<string | undefined> | undefined;

/** Why swtpm tests cannot run here, or undefined when they can. */
export function swtpmUnavailable(): Promise<string | undefined> {
  availability ??= checkAvailability();
  return availability;
}

async function checkAvailability(): Promise<string | undefined> {
  if (process.platform !== 'linux') return `swtpm tests need Linux (this is ${process.platform})`;
  for (const tool of TOOLS) {
    if (systemTool(tool) === undefined)
      return `\`${tool}\` is not installed (Debian package ${PACKAGE_OF[tool] ?? 'tpm2-tools'}; scripts/setup.sh installs it)`;
  }
  const version = await run(systemTool('swtpm') as string, ['--version'], STEP_MS);
  if (version.error !== undefined || !/TPM emulator version/.test(version.stdout))
    return `\`swtpm --version\` does not work: ${version.error ?? version.stdout}`;
  return undefined;
}

export async function startSwtpm(t: ExecutionContext): Promise<Swtpm> {
  const reason = await swtpmUnavailable();
  if (reason !== undefined) throw new Error(`swtpm is not usable: ${reason}`);
  const dir = await mkdtemp(join(tmpdir(), 'ward-swtpm-'));
  let port = 0;
  let child: ChildProcess | undefined;
  let out = '';
  const tcti = () => `swtpm:host=127.0.0.1,port=${port}`;

  const launch = async (): Promise<void> => {
    const swtpm = systemTool('swtpm') as string;
    const args = [
      'socket',
      '--tpm2',
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
      '--tpmstate',
      `dir=${dir}`,
      '--flags',
      'not-need-init,startup-clear',
    ];
    const setpriv = systemTool('setpriv');
    const proc = setpriv
      ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', swtpm, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(swtpm, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let spawnError: Error | undefined;
    proc.once('error', (err) => {
      spawnError = err;
    });
    const exited = exitOf(proc);
    proc.stdout?.on('data', (d) => {
      out += d;
    });
    proc.stderr?.on('data', (d) => {
      out += d;
    });
    const deadline = Date.now() + READY_MS;
    let last = '';
    for (;;) {
      if (spawnError !== undefined) throw new Error(`cannot start ${swtpm}: ${spawnError.message}`);
      if (proc.exitCode !== null || proc.signalCode !== null) {
        await exited;
        throw new Error(`swtpm exited during startup (${proc.exitCode ?? proc.signalCode}): ${out.trim()}`);
      }
      if (await canConnect(port + 1)) {
        const probe = await run(systemTool('tpm2_getcap') as string, ['handles-persistent'], Math.max(500, deadline - Date.now()), tcti());
        if (probe.error === undefined) return;
        last = `${probe.error}: ${probe.stderr.trim().split('\n').slice(0, 3).join(' | ')}`;
      }
      if (Date.now() > deadline) {
        await halt();
        throw new Error(`swtpm on port ${port} not ready after ${READY_MS} ms (${last}): ${out.trim()}`);
      }
      await delay(50);
    }
  };

  const halt = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (proc === undefined) return;
    const exited = exitOf(proc);
    if (proc.exitCode === null && proc.signalCode === null) {
      // TPM2_Shutdown(CLEAR) first: swtpm then stores an orderly state, and no interrupted authorization is counted.
      await run(systemTool('tpm2_shutdown') as string, ['-c'], STEP_MS, tcti());
      await run(systemTool('swtpm_ioctl') as string, ['--tcp', `127.0.0.1:${port + 1}`, '-s'], STEP_MS);
      if (!(await within(exited, STEP_MS))) {
        proc.kill('SIGKILL');
        await within(exited, STEP_MS);
      }
    }
  };

  let lastError: unknown;
  for (let attempt = 0; attempt < 4; attempt++) {
    port = await freePortPair();
    try {
      await launch();
      lastError = undefined;
      break;
    } catch (err) {
      // Most likely another process took one of the ports between the check and swtpm's bind: new ports.
      lastError = err;
      await halt();
    }
  }
  let stopped = false;
  const stop = async (): Promise<void> => {
    stopped = true;
    await halt();
  };
  t.teardown(async () => {
    await stop();
    await rm(dir, { recursive: true, force: true });
  });
  if (lastError !== undefined) throw lastError;

  return {
    tcti: tcti(),
    port,
    dir,
    output: () => out,
    async restart() {
      if (stopped) throw new Error('swtpm was stopped');
      await halt();
      for (let attempt = 0; ; attempt++) {
        try {
          await launch();
          return;
        } catch (err) {
          await halt();
          if (attempt >= 2) throw err;
          await delay(200);
        }
      }
    },
    stop,
  };
}

/** A port P with P and P + 1 both free on 127.0.0.1 a moment ago. */
async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = await listen(0);
    const address = first?.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const second = port > 0 && port < 65535 ? await listen(port + 1) : undefined;
    await Promise.all([close(first), close(second)]);
    if (second !== undefined) return port;
  }
  throw new Error('no two consecutive free ports on 127.0.0.1');
}

function listen(port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

function close(server: Server | undefined): Promise<void> {
  return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, 1_000);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

function exitOf(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => proc.once('exit', () => resolve()));
}

async function within(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs a program with a time bound; never rejects. `tcti` sets TPM2TOOLS_TCTI. */
function run(file: string, args: readonly string[], timeoutMs: number, tcti?: string): Promise<{ error: string | undefined; stdout: string; stderr: string }> {
  const env = tcti === undefined ? process.env : { ...process.env, TPM2TOOLS_TCTI: tcti };
  return new Promise((resolve) => {
    execFile(file, [...args], { env, timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ error: err === null ? undefined : err.killed ? `timed out after ${timeoutMs} ms` : err.message.split('\n')[0], stdout, stderr });
    });
  });
}
