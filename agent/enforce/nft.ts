import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ErrorCodes, WardError } from '../core/errors.js';
import { TABLE } from './compile.js';

/**
 * The edge between Ward and the kernel's packet filter: the `nft` command
 * (libnftables' CLI, present wherever nftables is) and `sysctl`. Everything
 * runs through an argv prefix, empty on a gateway and `ip netns exec <ns>`
 * in tests and `ward dev`, so the same code drives a namespace.
 */
export interface CommandResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export type CommandRunner = (argv: readonly string[], input?: string) => Promise<CommandResult>;

export function spawnRunner(timeoutMs = 30_000): CommandRunner {
  return (argv, input) =>
    new Promise((resolve, reject) => {
      const [cmd, ...args] = argv as [string, ...string[]];
      const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
      });
      child.stdin.on('error', () => {});
      child.stdin.end(input ?? '');
    });
}

/** Debian packages of the programs Ward runs here, for the error an operator reads. */
const PACKAGE_OF: Readonly<Record<string, string>> = { nft: 'nftables', sysctl: 'procps', ip: 'iproute2', conntrack: 'conntrack' };

const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];

/**
 * The system's own copy of a tool, by absolute path: PATH is not trusted for
 * the program that writes the firewall (under npm, node_modules/.bin comes
 * first, and a dev dependency there is called `nft` too).
 */
export function systemBinary(name: string): string {
  if (name.includes('/')) return name;
  for (const dir of SYSTEM_DIRS) if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  return name;
}

export interface NftOptions {
  /** argv prefix, e.g. ['ip', 'netns', 'exec', 'gw']; empty on a gateway. */
  readonly prefix?: readonly string[];
  readonly nft?: string;
  readonly run?: CommandRunner;
}

export interface SetElement {
  /** Key parts as nft prints them: addresses, protocol name, port number. */
  readonly key: readonly (string | number)[];
  readonly packets: number;
  readonly bytes: number;
  /** Seconds until the element expires (dynamic sets with timeout). */
  readonly expires: number | undefined;
}

export interface RuleCounter {
  readonly family: 'inet' | 'bridge';
  readonly chain: string;
  readonly comment: string;
  readonly handle: number;
  readonly packets: number;
  readonly bytes: number;
}

export interface Connection {
  readonly proto: 'tcp' | 'udp';
  readonly src: string;
  readonly dst: string;
  readonly sport: number;
  readonly dport: number;
  /** The reply direction's source when it is not the original destination: the connection was redirected (to a protocol proxy). */
  readonly replySrc?: string;
}

export interface WardTables {
  readonly inet: { readonly comment: string | undefined } | undefined;
  readonly bridge: { readonly comment: string | undefined } | undefined;
  readonly rules: readonly RuleCounter[];
}

type NftJson = { nftables: Record<string, Record<string, unknown>>[] };

export class Nft {
  readonly #prefix: readonly string[];
  readonly #nft: string;
  readonly #run: CommandRunner;

  constructor(options: NftOptions = {}) {
    const [first, ...rest] = options.prefix ?? [];
    this.#prefix = first === undefined ? [] : [systemBinary(first), ...rest];
    this.#nft = systemBinary(options.nft ?? 'nft');
    this.#run = options.run ?? spawnRunner();
  }

  async #exec(argv: readonly string[], input?: string): Promise<CommandResult> {
    try {
      return await this.#run([...this.#prefix, ...argv], input);
    } catch (cause) {
      const code = (cause as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        const program = this.#prefix[0] ?? argv[0] ?? '';
        const pkg = PACKAGE_OF[program.split('/').pop() ?? ''] ?? 'nftables';
        throw new WardError(ErrorCodes.ENFORCE_NFT_MISSING, `cannot run ${program}: not installed (install the ${pkg} package)`, { cause });
      }
      throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `cannot run ${argv[0]}: ${(cause as Error).message}`, { cause, retryable: true });
    }
  }

  async #nftExec(args: readonly string[], input?: string): Promise<CommandResult> {
    const result = await this.#exec([this.#nft, ...args], input);
    // `ip netns exec` reports a missing program as 'exec of "…" failed: No such file or directory' (exit 1).
    if (result.code !== 0 && /^exec of ".*" failed: No such file or directory$/m.test(result.stderr.trim())) {
      throw new WardError(ErrorCodes.ENFORCE_NFT_MISSING, `cannot run ${this.#nft}: not installed (install the nftables package)`, {
        details: { stderr: result.stderr.trim().slice(0, 500) },
      });
    }
    return result;
  }

  async version(): Promise<string> {
    const r = await this.#nftExec(['--version']);
    if (r.code !== 0) throw new WardError(ErrorCodes.ENFORCE_NFT_MISSING, `${this.#nft} --version failed: ${firstLines(r.stderr)}`);
    return r.stdout.trim();
  }

  /** Loads a script in one transaction; on refusal nothing changed in the kernel. */
  async load(script: string): Promise<void> {
    const r = await this.#nftExec(['-f', '-'], script);
    if (r.code !== 0) {
      throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `nft refused the ruleset: ${firstLines(r.stderr)}`, {
        details: { stderr: r.stderr.trim().slice(0, 2000) },
      });
    }
  }

  /** Dry run: the kernel checks the transaction and aborts it. */
  async check(script: string): Promise<void> {
    const r = await this.#nftExec(['-c', '-f', '-'], script);
    if (r.code !== 0) {
      throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `nft would refuse the ruleset: ${firstLines(r.stderr)}`, {
        details: { stderr: r.stderr.trim().slice(0, 2000) },
      });
    }
  }

  /** Ward's tables as the kernel has them now (text), for diff and for keeping what was there before a first apply. */
  async listText(): Promise<string> {
    const parts: string[] = [];
    for (const family of ['inet', 'bridge'] as const) {
      const r = await this.#nftExec(['list', 'table', family, TABLE]);
      if (r.code === 0) parts.push(r.stdout.trimEnd());
    }
    return parts.join('\n');
  }

  async tables(): Promise<WardTables> {
    const rules: RuleCounter[] = [];
    const found: Record<'inet' | 'bridge', { comment: string | undefined } | undefined> = { inet: undefined, bridge: undefined };
    for (const family of ['inet', 'bridge'] as const) {
      const r = await this.#nftExec(['-j', 'list', 'table', family, TABLE]);
      if (r.code !== 0) continue;
      const json = parseJson(r.stdout);
      // nft 1.0.6's JSON leaves table comments out; its text listing (terse: no set elements) has them.
      const text = await this.#nftExec(['-t', 'list', 'table', family, TABLE]);
      const comment = /^\s*comment "((?:[^"\\]|\\.)*)"\s*$/m.exec(text.stdout)?.[1];
      for (const item of json.nftables) {
        if (item.table) found[family] = { comment: typeof item.table.comment === 'string' ? item.table.comment : comment };
        const rule = item.rule as { chain: string; handle: number; comment?: string; expr?: Record<string, unknown>[] } | undefined;
        if (rule?.comment?.startsWith('ward:')) {
          const counter = rule.expr?.find((e) => 'counter' in e)?.counter as { packets?: number; bytes?: number } | undefined;
          rules.push({ family, chain: rule.chain, comment: rule.comment, handle: rule.handle, packets: counter?.packets ?? 0, bytes: counter?.bytes ?? 0 });
        }
      }
    }
    return { inet: found.inet, bridge: found.bridge, rules };
  }

  /** Every set (with its elements) and every counted rule of Ward's inet table, in one listing. */
  async snapshot(): Promise<{ sets: Map<string, SetElement[]>; rules: RuleCounter[] }> {
    const sets = new Map<string, SetElement[]>();
    const rules: RuleCounter[] = [];
    const r = await this.#nftExec(['-j', 'list', 'table', 'inet', TABLE]);
    if (r.code !== 0) return { sets, rules };
    for (const item of parseJson(r.stdout).nftables) {
      const set = item.set as { name?: string; elem?: unknown[] } | undefined;
      if (set?.name) sets.set(set.name, (set.elem ?? []).flatMap(elementOf));
      const rule = item.rule as { chain: string; handle: number; comment?: string; expr?: Record<string, unknown>[] } | undefined;
      if (rule?.comment?.startsWith('ward:')) {
        const counter = rule.expr?.find((e) => 'counter' in e)?.counter as { packets?: number; bytes?: number } | undefined;
        rules.push({
          family: 'inet',
          chain: rule.chain,
          comment: rule.comment,
          handle: rule.handle,
          packets: counter?.packets ?? 0,
          bytes: counter?.bytes ?? 0,
        });
      }
    }
    return { sets, rules };
  }

  /** Elements of one of Ward's sets with their counters; empty when the set does not exist. */
  async elements(set: string): Promise<SetElement[]> {
    const r = await this.#nftExec(['-j', 'list', 'set', 'inet', TABLE, set]);
    if (r.code !== 0) return [];
    const json = parseJson(r.stdout);
    return json.nftables.flatMap((item) => ((item.set as { elem?: unknown[] } | undefined)?.elem ?? []).flatMap(elementOf));
  }

  async deleteTables(): Promise<void> {
    await this.load(`table inet ${TABLE}\ndelete table inet ${TABLE}\ntable bridge ${TABLE}\ndelete table bridge ${TABLE}\n`);
  }

  /** Tracked TCP/UDP connections (original direction), from the conntrack tool. */
  async connections(): Promise<Connection[]> {
    const out: Connection[] = [];
    for (const proto of ['tcp', 'udp'] as const) {
      const r = await this.#exec([systemBinary('conntrack'), '-L', '-p', proto]);
      if (r.code !== 0) throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `conntrack -L failed: ${firstLines(r.stderr)}`, { retryable: true });
      for (const line of r.stdout.split('\n')) {
        const m =
          /\bsrc=(\S+) dst=(\S+) sport=(\d+) dport=(\d+).*?\bsrc=(\S+) dst=\S+ sport=\d+ dport=\d+/.exec(line) ??
          /\bsrc=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)/.exec(line);
        if (!m) continue;
        const replySrc = m[5];
        out.push({
          proto,
          src: m[1] as string,
          dst: m[2] as string,
          sport: Number(m[3]),
          dport: Number(m[4]),
          ...(replySrc !== undefined && replySrc !== m[2] ? { replySrc } : {}),
        });
      }
    }
    return out;
  }

  /** The gateway's own IPv4 addresses (its connections are not forwarded traffic). */
  async localAddresses(): Promise<string[]> {
    const r = await this.#exec([systemBinary('ip'), '-o', '-4', 'addr', 'show']);
    if (r.code !== 0) throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `ip addr failed: ${firstLines(r.stderr)}`, { retryable: true });
    return [...r.stdout.matchAll(/\binet (\d+\.\d+\.\d+\.\d+)\//g)].map((m) => m[1] as string);
  }

  /** Forgets one tracked connection: its next packet is judged as new, by the rules now in force. */
  async forget(c: Connection): Promise<boolean> {
    const r = await this.#exec([
      systemBinary('conntrack'),
      '-D',
      '-p',
      c.proto,
      '--orig-src',
      c.src,
      '--orig-dst',
      c.dst,
      '--orig-port-src',
      String(c.sport),
      '--orig-port-dst',
      String(c.dport),
    ]);
    return r.code === 0;
  }

  async sysctl(name: string, value?: string): Promise<string> {
    const sysctl = systemBinary('sysctl');
    const r = await this.#exec(value === undefined ? [sysctl, '-n', name] : [sysctl, '-qw', `${name}=${value}`]);
    if (r.code !== 0) throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `sysctl ${name} failed: ${firstLines(r.stderr)}`, { details: { name } });
    return value ?? r.stdout.trim();
  }
}

function elementOf(raw: unknown): SetElement[] {
  const e = (raw as { elem?: Record<string, unknown> }).elem;
  if (!e) return [];
  const val = e.val as { concat?: (string | number)[] } | string | number;
  const key = typeof val === 'object' && val !== null && Array.isArray(val.concat) ? val.concat : [val as string | number];
  const counter = e.counter as { packets?: number; bytes?: number } | undefined;
  return [{ key, packets: counter?.packets ?? 0, bytes: counter?.bytes ?? 0, expires: typeof e.expires === 'number' ? e.expires : undefined }];
}

function parseJson(text: string): NftJson {
  try {
    const json = JSON.parse(text) as NftJson;
    if (!Array.isArray(json.nftables)) throw new Error('no nftables array');
    return json;
  } catch (cause) {
    throw new WardError(ErrorCodes.ENFORCE_CHECK_FAILED, `nft printed JSON Ward cannot read: ${(cause as Error).message}`, { cause });
  }
}

function firstLines(text: string): string {
  return text.trim().split('\n').slice(0, 4).join(' | ').slice(0, 600) || '(no message)';
}
