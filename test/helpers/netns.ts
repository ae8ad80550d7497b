import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { waitFor } from './net.js';

/**
 * Network-namespace topologies for firewall end-to-end tests: an IT switch with three hosts, a gateway
 * namespace (the board under test) and two PLCs behind it, either routed or bridged. Traffic is real
 * kernel traffic through veth pairs, so an nft ruleset loaded into the gateway namespace is exercised
 * exactly as on a board.
 *
 * Safety rules (DESIGN.md §8): addresses only in 198.18.0.0/15; every namespace is named
 * `<prefix>-<role>` with a per-run prefix; veth pairs are created inside our own namespaces (`ip -n`),
 * never in the host's; everything is bounded by a timeout; destroy() (and a failed create) deletes what
 * was created.
 *
 * Layout (both modes): namespace `<prefix>-sw` holds bridge br0 with ports sw-eng, sw-historian,
 * sw-attacker and sw-uplink; each host namespace has one `eth0`.
 *   routed: gateway `<prefix>-gw` has <prefix>-up 198.18.0.1/24, <prefix>-p1 198.18.1.1/24,
 *           <prefix>-p2 198.18.2.1/24, ip_forward=1; plc1 198.18.1.10, plc2 198.18.2.10.
 *   bridge: gateway has br0 over <prefix>-up, <prefix>-p1, <prefix>-p2 with 198.18.0.1/24 on br0;
 *           plc1 198.18.0.101, plc2 198.18.0.102.
 * IT hosts: eng 198.18.0.10, historian 198.18.0.20, attacker 198.18.0.66; every host's default route
 * is via 198.18.0.1 (or its PLC-side gateway address when routed).
 */

export type Mode = 'routed' | 'bridge';
export type Role = 'eng' | 'historian' | 'attacker' | 'plc1' | 'plc2';

export interface Host {
  readonly role: Role;
  readonly ns: string;
  readonly ip: string;
}

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface HeldConnection {
  /** Sends a payload on the held connection; true if its echo comes back within timeoutMs (default 2000). */
  ping(timeoutMs?: number): Promise<boolean>;
  close(): Promise<void>;
}

export interface Topology {
  readonly mode: Mode;
  readonly prefix: string;
  /** gateway namespace name */
  readonly gw: string;
  /** the gateway's address on the IT side (routed: uplink interface address; bridge: br0 management address) */
  readonly gwIp: string;
  readonly hosts: Readonly<Record<Role, Host>>;
  /** gateway-side interface names for the board's logical ports */
  readonly ports: { readonly UPLINK: string; readonly PLC1: string; readonly PLC2: string };
  /** 'br0' in bridge mode */
  readonly bridge: string | undefined;
  /** Every namespace of this topology (switch, gateway, hosts), for diagnostics. */
  readonly namespaces: readonly string[];
  /**
   * Runs argv inside a namespace (ip netns exec, PATH = SYSTEM_PATH), bounded by timeoutMs (default 10 s);
   * never throws on non-zero exit (code is null if killed by the timeout).
   */
  exec(ns: string, argv: readonly string[], opts?: { input?: string; timeoutMs?: number }): Promise<ExecResult>;
  /**
   * argv prefix that runs a command inside the gateway namespace:
   * ['/usr/sbin/ip', 'netns', 'exec', gw, '/usr/bin/env', 'PATH=<SYSTEM_PATH>'], so a bare `nft` after it
   * is the system's nftables, not node_modules/.bin/nft.
   */
  readonly gwPrefix: readonly string[];
  /** Starts TCP and UDP echo servers on `host` (one long-lived peer per host, started lazily). Resolves when listening. */
  listen(host: Host, ports: { tcp?: readonly number[]; udp?: readonly number[] }): Promise<void>;
  /**
   * One TCP connection attempt from -> to:port (default timeout 2000 ms), made by `from`'s long-lived peer
   * (started lazily, so probes cost milliseconds, not a Node start-up). 'connected' only if a payload
   * round-trips through the echo server; 'refused' if something actively turned it down (RST, or an ICMP
   * error as from nft `reject`); 'timeout' if nothing came back (e.g. nft `drop`).
   */
  tcp(from: Host, to: Host | string, port: number, timeoutMs?: number): Promise<'connected' | 'refused' | 'timeout'>;
  /** One UDP datagram to to:port; true if the echo comes back within timeoutMs (default 2000). */
  udp(from: Host, to: Host | string, port: number, timeoutMs?: number): Promise<boolean>;
  /**
   * Opens and holds a TCP connection from a long-lived client in `from`'s namespace; rejects if it cannot
   * connect within 5 s. ping() after close() rejects. Note that after a drop is lifted, data already sent waits for TCP's retransmit
   * timer (which backs off), so give the first ping after an outage a generous timeout.
   */
  hold(from: Host, to: Host | string, port: number): Promise<HeldConnection>;
  /** How many TCP connections / UDP datagrams the echo servers of `host` accepted so far, per port. */
  accepted(host: Host): Promise<{ tcp: Record<number, number>; udp: Record<number, number> }>;
  /** Stops every process and deletes every namespace of this topology. Idempotent. */
  destroy(): Promise<void>;
}

const PEER_SCRIPT = fileURLToPath(new URL('../fixtures/netns-peer.mjs', import.meta.url));
const COMMAND_TIMEOUT_MS = 10_000;
const PEER_START_TIMEOUT_MS = 10_000;
const HOLD_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_PROBE_TIMEOUT_MS = 2_000;
// How much longer than a probe's or ping's own timeout we wait for the peer's answer before calling the peer broken
// (a connected probe waits up to 3 s more for its echo: ECHO_GRACE_MS in netns-peer.mjs).
const PROCESS_SLACK_MS = 10_000;
const LINKS_UP_TIMEOUT_MS = 10_000;
// Kernel interface names are at most 15 bytes; the gateway ports are `<prefix>-xx`.
const MAX_PREFIX = 12;
const MAX_CAPTURE = 1 << 20;

// npm and npx put node_modules/.bin first on PATH, and this repo's dev dependencies install an unrelated
// `nft` there (@vercel/nft, Node File Trace) which exits 0 on any nftables command. Everything started
// here (and through gwPrefix) therefore gets PATH without node_modules entries.
export const SYSTEM_PATH =
  (process.env.PATH ?? '')
    .split(':')
    .filter((dir) => dir.startsWith('/') && !dir.split('/').includes('node_modules'))
    .join(':') || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const CHILD_ENV = { ...process.env, PATH: SYSTEM_PATH };

/** Absolute path of a system program on SYSTEM_PATH, or undefined. */
export function systemBinary(name: string): string | undefined {
  for (const dir of SYSTEM_PATH.split(':')) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const IP = systemBinary('ip') ?? 'ip';

const IT_ROLES = ['eng', 'historian', 'attacker'] as const;
const PLC_ROLES = ['plc1', 'plc2'] as const;
const IT_ADDRESSES: Record<(typeof IT_ROLES)[number], string> = { eng: '198.18.0.10', historian: '198.18.0.20', attacker: '198.18.0.66' };
const GW_IT_ADDRESS = '198.18.0.1';

/** Runs a program, bounded; resolves with its exit code (null if killed by the timeout); rejects only if it cannot start. */
function run(
  file: string,
  args: readonly string[],
  opts: { input?: string | undefined; timeoutMs?: number | undefined } = {},
  track?: Set<ChildProcess>,
): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? COMMAND_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env: CHILD_ENV });
    track?.add(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += chunk;
    });
    child.stderr.on('data', (chunk: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += chunk;
    });
    // The child may exit without reading its input.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      track?.delete(child);
      reject(new Error(`cannot run ${file}: ${err.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      track?.delete(child);
      if (timedOut) stderr += `\n(killed after ${timeoutMs} ms)`;
      resolve({ code: timedOut ? null : code, stdout, stderr });
    });
  });
}

/** `ip ARGS`, throwing with the command and its stderr on failure. */
async function ip(args: readonly string[], input?: string): Promise<string> {
  const result = await run(IP, args, { input });
  if (result.code !== 0) throw new Error(`ip ${args.join(' ')} failed (${result.code}): ${result.stderr.trim()}${input ? `\ninput:\n${input}` : ''}`);
  return result.stdout;
}

// Where `ip netns add` puts its names. Read directly: `ip netns list` also resolves namespace ids and
// prints errors while another test file is deleting namespaces.
const NETNS_DIR = '/var/run/netns';

async function listNamespaces(): Promise<string[]> {
  try {
    return await readdir(NETNS_DIR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Kills the processes inside the named namespaces, then deletes the namespaces; throws if any is left. */
async function deleteNamespaces(names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  const own = await stat('/proc/self/ns/net');
  const problems: string[] = [];
  await Promise.all(
    names.map(async (name) => {
      try {
        // A namespace outlives `ip netns del` while a process is inside it (its veths with it), so end
        // those processes first. Guard against a name that was attached to our own namespace.
        const ns = await stat(join(NETNS_DIR, name)).catch(() => undefined);
        if (ns && !(ns.dev === own.dev && ns.ino === own.ino)) {
          const pids = await run(IP, ['netns', 'pids', name]);
          for (const pid of pids.stdout.split(/\s+/).map(Number)) {
            if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue;
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // already gone
            }
          }
        }
        const del = await run(IP, ['netns', 'del', name]);
        if (del.code !== 0 && !/No such file/.test(del.stderr)) problems.push(`${name}: ${del.stderr.trim()}`);
      } catch (err) {
        problems.push(`${name}: ${String(err)}`);
      }
    }),
  );
  const left = (await listNamespaces()).filter((name) => names.includes(name));
  if (left.length > 0 || problems.length > 0) throw new Error(`could not delete network namespaces ${left.join(', ')}: ${problems.join('; ')}`);
}

/** Deletes any leftover namespaces whose name starts with `prefix` (at least 3 characters, so it cannot sweep unrelated ones). */
export async function cleanupPrefix(prefix: string): Promise<void> {
  if (prefix.length < 3) throw new Error(`refusing to clean up namespaces by the short prefix '${prefix}'`);
  await deleteNamespaces((await listNamespaces()).filter((name) => name.startsWith(prefix)));
}

let availability: Promise<string | undefined> | undefined;

/** Undefined when namespaces + veth + bridge + nft work here; otherwise a printable reason to skip. Checked once per process. */
export function netnsUnavailable(): Promise<string | undefined> {
  availability ??= checkAvailability();
  return availability;
}

async function checkAvailability(): Promise<string | undefined> {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespace tests need root';
  const tools: [string, string[], RegExp][] = [
    ['ip', ['-V'], /iproute2/],
    ['nft', ['--version'], /nftables/],
    ['sysctl', ['-V'], /procps/],
  ];
  for (const [tool, args, expected] of tools) {
    const path = systemBinary(tool);
    const result = path ? await run(path, args).catch(() => undefined) : undefined;
    if (result === undefined) return `\`${tool}\` is not installed (searched ${SYSTEM_PATH})`;
    if (result.code !== 0 || !expected.test(result.stdout + result.stderr))
      return `\`${path} ${args.join(' ')}\` is not what it should be: ${result.stdout}${result.stderr}`;
  }
  const prefix = `w${randomBytes(3).toString('hex')}-chk`;
  const [a, b] = [`${prefix}a`, `${prefix}b`];
  const created: string[] = [];
  try {
    for (const ns of [a, b]) {
      await ip(['netns', 'add', ns]);
      created.push(ns);
    }
    await ip(['-n', a, 'link', 'add', 'name', 'v0', 'type', 'veth', 'peer', 'name', 'v1', 'netns', b]);
    await ip(['-n', a, 'link', 'add', 'name', 'br0', 'type', 'bridge']);
    await run(IP, ['netns', 'exec', a, 'nft', 'add', 'table', 'inet', 'ward_probe']);
    const nft = await run(IP, ['netns', 'exec', a, 'nft', 'list', 'tables']);
    if (nft.code !== 0 || !nft.stdout.includes('ward_probe')) return `nft does not work in a network namespace: ${nft.stderr.trim()}`;
    const node = await run(IP, ['netns', 'exec', a, process.execPath, '-e', '']);
    if (node.code !== 0) return `cannot run node inside a network namespace: ${node.stderr.trim()}`;
    return undefined;
  } catch (err) {
    return `the kernel or ip refused a network namespace step: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    await deleteNamespaces(created).catch(() => {});
  }
}

type Message = Record<string, unknown>;

/** A long-lived netns-peer.mjs process speaking line-delimited JSON with request ids. */
class Peer {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void }>();
  private readonly greetings: Message[] = [];
  private greetingWaiter: ((m: Message) => void) | undefined;
  private stderr = '';
  private exitReason: string | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    readonly label: string,
    private readonly child: ChildProcess,
  ) {
    const { stdout, stderr, stdin } = child;
    if (!stdout || !stderr || !stdin) throw new Error('peer spawned without pipes');
    stdin.on('error', () => {});
    stderr.setEncoding('utf8');
    stderr.on('data', (chunk: string) => {
      if (this.stderr.length < MAX_CAPTURE) this.stderr += chunk;
    });
    createInterface({ input: stdout }).on('line', (line) => this.onLine(line));
    this.exited = new Promise((resolve) => {
      child.on('error', (err) => {
        this.onExit(`could not start: ${err.message}`);
        resolve();
      });
      // 'close', not 'exit': a last line (e.g. hold's connect error) is read before we give up on the peer.
      child.on('close', (code, signal) => {
        this.onExit(`exited (${signal ?? code})${this.stderr ? `: ${this.stderr.trim()}` : ''}`);
        resolve();
      });
    });
    // A test that forgets destroy() must not hang its worker on these processes; they exit by themselves
    // when the worker (their stdin) goes away. Pending requests hold timers, which keep the loop alive.
    child.unref();
    for (const stream of [stdout, stderr, stdin]) (stream as { unref?: () => void }).unref?.();
  }

  static start(ns: string, args: readonly string[], track: Set<ChildProcess>): Peer {
    const child = spawn(IP, ['netns', 'exec', ns, process.execPath, PEER_SCRIPT, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: CHILD_ENV });
    track.add(child);
    child.on('exit', () => track.delete(child));
    return new Peer(`${args.join(' ')} in ${ns}`, child);
  }

  private onLine(line: string): void {
    let message: Message;
    try {
      message = JSON.parse(line) as Message;
    } catch {
      return;
    }
    const id = message.id;
    if (typeof id === 'number') {
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      waiter?.resolve(message);
      return;
    }
    if (this.greetingWaiter) this.greetingWaiter(message);
    else this.greetings.push(message);
  }

  private onExit(reason: string): void {
    this.exitReason ??= reason;
    const error = new Error(`peer ${this.label} ${reason}`);
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
    this.greetingWaiter?.({ error: reason });
  }

  /** The first message without an id ({"ready":true} or {"error":...}), bounded. */
  greeting(timeoutMs: number): Promise<Message> {
    const queued = this.greetings.shift();
    if (queued) return Promise.resolve(queued);
    if (this.exitReason) return Promise.resolve({ error: this.exitReason });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        resolve({ error: `no answer within ${timeoutMs} ms` });
      }, timeoutMs);
      this.greetingWaiter = (message) => {
        clearTimeout(timer);
        this.greetingWaiter = undefined;
        resolve(message);
      };
    });
  }

  request(body: Message, timeoutMs: number): Promise<Message> {
    if (this.exitReason) return Promise.reject(new Error(`peer ${this.label} ${this.exitReason}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`peer ${this.label} did not answer ${JSON.stringify(body)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.stdin?.write(`${JSON.stringify({ id, ...body })}\n`);
    });
  }

  /** Closes stdin (the peer exits by itself), then SIGKILL if it has not after 2 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin?.end();
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 2_000);
      // The exit wait is bounded by the SIGKILL above; a ref'd timer keeps us waiting for it.
      await this.exited;
      clearTimeout(timer);
    }
  }
}

function ipOf(to: Host | string): string {
  return typeof to === 'string' ? to : to.ip;
}

class NetnsTopology implements Topology {
  readonly gwPrefix: readonly string[];
  readonly bridge: string | undefined;
  private readonly children = new Set<ChildProcess>();
  // One long-lived peer per host namespace: echo servers, counters and probes.
  private readonly peers = new Map<string, Promise<Peer>>();
  private readonly holds = new Set<Peer>();
  private destroyed: Promise<void> | undefined;

  constructor(
    readonly mode: Mode,
    readonly prefix: string,
    readonly gw: string,
    readonly gwIp: string,
    readonly hosts: Readonly<Record<Role, Host>>,
    readonly ports: { readonly UPLINK: string; readonly PLC1: string; readonly PLC2: string },
    readonly namespaces: readonly string[],
  ) {
    const env = systemBinary('env');
    this.gwPrefix = Object.freeze([IP, 'netns', 'exec', gw, ...(env ? [env, `PATH=${SYSTEM_PATH}`] : [])]);
    this.bridge = mode === 'bridge' ? 'br0' : undefined;
  }

  private alive(): void {
    if (this.destroyed) throw new Error(`topology ${this.prefix} is destroyed`);
  }

  async exec(ns: string, argv: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
    this.alive();
    return run(IP, ['netns', 'exec', ns, ...argv], opts, this.children);
  }

  private peer(host: Host): Promise<Peer> {
    let peer = this.peers.get(host.ns);
    if (!peer) {
      peer = (async () => {
        const started = Peer.start(host.ns, ['serve'], this.children);
        const hello = await started.greeting(PEER_START_TIMEOUT_MS);
        if (hello.ready !== true) {
          await started.stop();
          throw new Error(`peer on ${host.role} (${host.ns}) did not start: ${String(hello.error)}`);
        }
        return started;
      })();
      this.peers.set(host.ns, peer);
      // A failed start may be retried by the next call.
      peer.catch(() => this.peers.delete(host.ns));
    }
    return peer;
  }

  async listen(host: Host, ports: { tcp?: readonly number[]; udp?: readonly number[] }): Promise<void> {
    this.alive();
    const peer = await this.peer(host);
    const reply = await peer.request({ cmd: 'listen', tcp: ports.tcp ?? [], udp: ports.udp ?? [] }, PEER_START_TIMEOUT_MS);
    if (reply.ok !== true) throw new Error(`listen on ${host.role} ${JSON.stringify(ports)} failed: ${String(reply.error)}`);
  }

  private async probe(proto: 'tcp' | 'udp', from: Host, to: Host | string, port: number, timeoutMs: number): Promise<string> {
    this.alive();
    const peer = await this.peer(from);
    const reply = await peer.request({ cmd: 'probe', proto, host: ipOf(to), port, timeoutMs }, timeoutMs + PROCESS_SLACK_MS);
    if (reply.result === 'connected' || reply.result === 'refused' || reply.result === 'timeout') return reply.result;
    throw new Error(`${proto} probe ${from.role} -> ${ipOf(to)}:${port} failed: ${JSON.stringify(reply)}`);
  }

  async tcp(from: Host, to: Host | string, port: number, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<'connected' | 'refused' | 'timeout'> {
    return (await this.probe('tcp', from, to, port, timeoutMs)) as 'connected' | 'refused' | 'timeout';
  }

  async udp(from: Host, to: Host | string, port: number, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<boolean> {
    return (await this.probe('udp', from, to, port, timeoutMs)) === 'connected';
  }

  async hold(from: Host, to: Host | string, port: number): Promise<HeldConnection> {
    this.alive();
    const peer = Peer.start(from.ns, ['hold', ipOf(to), String(port), String(HOLD_CONNECT_TIMEOUT_MS)], this.children);
    this.holds.add(peer);
    const hello = await peer.greeting(HOLD_CONNECT_TIMEOUT_MS + PROCESS_SLACK_MS);
    if (hello.ready !== true) {
      this.holds.delete(peer);
      await peer.stop();
      throw new Error(`hold ${from.role} -> ${ipOf(to)}:${port} could not connect: ${String(hello.error)}`);
    }
    // One ping at a time, so each echo is matched to the ping that is waiting for it.
    let queue: Promise<unknown> = Promise.resolve();
    return {
      ping: (timeoutMs = DEFAULT_PROBE_TIMEOUT_MS) => {
        const next = queue.then(async () => (await peer.request({ cmd: 'ping', timeoutMs }, timeoutMs + PROCESS_SLACK_MS)).ok === true);
        queue = next.catch(() => {});
        return next;
      },
      close: async () => {
        this.holds.delete(peer);
        await peer.stop();
      },
    };
  }

  async accepted(host: Host): Promise<{ tcp: Record<number, number>; udp: Record<number, number> }> {
    this.alive();
    const counts = { tcp: {} as Record<number, number>, udp: {} as Record<number, number> };
    if (!this.peers.has(host.ns)) return counts;
    const reply = await (await this.peer(host)).request({ cmd: 'counts' }, PEER_START_TIMEOUT_MS);
    for (const proto of ['tcp', 'udp'] as const) {
      const raw = (reply[proto] ?? {}) as Record<string, unknown>;
      for (const [port, n] of Object.entries(raw)) counts[proto][Number(port)] = Number(n);
    }
    return counts;
  }

  destroy(): Promise<void> {
    this.destroyed ??= (async () => {
      const peers = [...this.holds, ...(await Promise.all([...this.peers.values()].map((p) => p.catch(() => undefined))))];
      await Promise.all(peers.map((peer) => peer?.stop()));
      // Anything still running (an exec() or probe in flight) is ours: end it by pid.
      for (const child of this.children) child.kill('SIGKILL');
      await deleteNamespaces(this.namespaces);
    })();
    return this.destroyed;
  }
}

/** Polls until every link but lo in `ns` is operationally up and every bridge port is forwarding. */
async function waitLinksUp(ns: string): Promise<void> {
  let last = '';
  await waitFor(
    `links up in ${ns}`,
    async () => {
      const links = JSON.parse(await ip(['-n', ns, '-j', '-d', 'link', 'show'])) as {
        ifname: string;
        operstate?: string;
        linkinfo?: { info_slave_kind?: string; info_slave_data?: { state?: string } };
      }[];
      const notReady = links
        .filter((l) => l.ifname !== 'lo')
        .filter((l) => l.operstate !== 'UP' || (l.linkinfo?.info_slave_kind === 'bridge' && l.linkinfo.info_slave_data?.state !== 'forwarding'))
        .map((l) => `${l.ifname}:${l.operstate}/${l.linkinfo?.info_slave_data?.state ?? '-'}`);
      last = notReady.join(' ');
      return notReady.length === 0;
    },
    LINKS_UP_TIMEOUT_MS,
    25,
  ).catch((err: unknown) => {
    throw new Error(`${err instanceof Error ? err.message : String(err)}; not ready: ${last}`);
  });
}

/** Creates a fresh topology; on any failure deletes whatever it had created and rethrows. */
export async function createTopology(mode: Mode, opts: { prefix?: string } = {}): Promise<Topology> {
  const prefix = opts.prefix ?? `w${randomBytes(3).toString('hex')}`;
  if (!/^[a-z][a-z0-9]*$/.test(prefix) || prefix.length < 3 || prefix.length > MAX_PREFIX) {
    throw new Error(`netns prefix must be 3..${MAX_PREFIX} lowercase letters/digits starting with a letter, got '${prefix}'`);
  }
  const sw = `${prefix}-sw`;
  const gw = `${prefix}-gw`;
  const ports = { UPLINK: `${prefix}-up`, PLC1: `${prefix}-p1`, PLC2: `${prefix}-p2` } as const;
  const routed = mode === 'routed';
  const plc = {
    plc1: { ip: routed ? '198.18.1.10' : '198.18.0.101', via: routed ? '198.18.1.1' : GW_IT_ADDRESS, port: ports.PLC1 },
    plc2: { ip: routed ? '198.18.2.10' : '198.18.0.102', via: routed ? '198.18.2.1' : GW_IT_ADDRESS, port: ports.PLC2 },
  };
  const hosts = Object.freeze({
    eng: Object.freeze({ role: 'eng', ns: `${prefix}-eng`, ip: IT_ADDRESSES.eng }),
    historian: Object.freeze({ role: 'historian', ns: `${prefix}-historian`, ip: IT_ADDRESSES.historian }),
    attacker: Object.freeze({ role: 'attacker', ns: `${prefix}-attacker`, ip: IT_ADDRESSES.attacker }),
    plc1: Object.freeze({ role: 'plc1', ns: `${prefix}-plc1`, ip: plc.plc1.ip }),
    plc2: Object.freeze({ role: 'plc2', ns: `${prefix}-plc2`, ip: plc.plc2.ip }),
  } satisfies Record<Role, Host>);
  const all = [sw, gw, ...IT_ROLES.map((r) => hosts[r].ns), ...PLC_ROLES.map((r) => hosts[r].ns)];

  const created: string[] = [];
  try {
    for (const ns of all) {
      await ip(['netns', 'add', ns]);
      created.push(ns);
    }

    // IPv4 only (no IPv6 DAD or router solicitations); br_netfilter explicitly off so every test starts
    // from the same state (a new namespace inherits 1 here) and only the firewall code under test turns it on.
    // -e: the bridge keys exist only while br_netfilter is loaded.
    await Promise.all(
      all.map((ns) =>
        ip([
          'netns',
          'exec',
          ns,
          'sysctl',
          '-q',
          '-e',
          '-w',
          'net.ipv6.conf.all.disable_ipv6=1',
          'net.ipv6.conf.default.disable_ipv6=1',
          'net.bridge.bridge-nf-call-iptables=0',
          'net.bridge.bridge-nf-call-ip6tables=0',
          'net.bridge.bridge-nf-call-arptables=0',
          `net.ipv4.ip_forward=${ns === gw && routed ? 1 : 0}`,
        ]),
      ),
    );

    // Each pair is created inside one of our namespaces with its peer put straight into another, so no
    // interface ever appears in the host's namespace and names only need to be unique per namespace.
    const veth = (ns: string, name: string, peerNs: string, peerName: string) =>
      ip(['-n', ns, 'link', 'add', 'name', name, 'type', 'veth', 'peer', 'name', peerName, 'netns', peerNs]);
    await Promise.all([
      ...IT_ROLES.map((r) => veth(sw, `sw-${r}`, hosts[r].ns, 'eth0')),
      veth(sw, 'sw-uplink', gw, ports.UPLINK),
      ...PLC_ROLES.map((r) => veth(gw, plc[r].port, hosts[r].ns, 'eth0')),
    ]);

    // forward_delay 0 + STP off: bridge ports forward as soon as they are up.
    const bridge = (members: readonly string[]) => [
      'link add name br0 type bridge forward_delay 0 stp_state 0',
      ...members.flatMap((m) => [`link set dev ${m} master br0`, `link set dev ${m} up`]),
      'link set dev br0 up',
    ];
    const batches = new Map<string, string[]>();
    batches.set(sw, ['link set dev lo up', ...bridge([...IT_ROLES.map((r) => `sw-${r}`), 'sw-uplink'])]);
    batches.set(
      gw,
      routed
        ? [
            'link set dev lo up',
            `addr add ${GW_IT_ADDRESS}/24 dev ${ports.UPLINK}`,
            `addr add ${plc.plc1.via}/24 dev ${ports.PLC1}`,
            `addr add ${plc.plc2.via}/24 dev ${ports.PLC2}`,
            ...Object.values(ports).map((p) => `link set dev ${p} up`),
          ]
        : ['link set dev lo up', ...bridge(Object.values(ports)), `addr add ${GW_IT_ADDRESS}/24 dev br0`],
    );
    const hostBatch = (address: string, via: string) => [
      'link set dev lo up',
      'link set dev eth0 up',
      `addr add ${address}/24 dev eth0`,
      `route add default via ${via}`,
    ];
    for (const r of IT_ROLES) batches.set(hosts[r].ns, hostBatch(hosts[r].ip, GW_IT_ADDRESS));
    for (const r of PLC_ROLES) batches.set(hosts[r].ns, hostBatch(plc[r].ip, plc[r].via));
    await Promise.all([...batches].map(([ns, lines]) => ip(['-n', ns, '-batch', '-'], `${lines.join('\n')}\n`)));

    await Promise.all(all.map(waitLinksUp));

    const nf = await run(IP, ['netns', 'exec', gw, 'sysctl', '-n', '-e', 'net.bridge.bridge-nf-call-iptables']);
    if (nf.stdout.trim() !== '' && nf.stdout.trim() !== '0') throw new Error(`bridge-nf-call-iptables is ${nf.stdout.trim()} in ${gw} after writing 0`);

    return new NetnsTopology(mode, prefix, gw, GW_IT_ADDRESS, hosts, ports, all);
  } catch (err) {
    // Only what this call created: a clashing namespace that already existed is not ours to delete.
    await deleteNamespaces(created).catch((cleanupErr: unknown) => {
      throw new AggregateError([err, cleanupErr], `creating the ${mode} topology ${prefix} failed and so did its cleanup`);
    });
    throw err;
  }
}
