import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AttestationTpm } from '../api/index.js';

/**
 * AttestationTpm on top of the tpm2-tools command-line programs (Debian
 * package `tpm2-tools`, 5.x), one child process per TPM command. The TCTI
 * says which TPM: `device:/dev/tpmrm0` on a gateway (the kernel's resource
 * manager), `swtpm:host=127.0.0.1,port=P` in tests. The swtpm TCTI has no
 * resource manager, so every command is serialized here (one operation at a
 * time per TCTI in this process; another process using the same TPM is not
 * coordinated with) and transient objects and sessions are flushed by the
 * operation that loaded them.
 *
 * The endorsement key (ECC P-256, TCG default template) is persisted at
 * `ekHandle`, the attestation key (restricted ECDSA-P256/SHA-256 signing key
 * under the EK) at `akHandle`; both are created on first use. The AK is
 * `noda`: an interrupted command (a power cut, a killed process) must not
 * count towards the dictionary-attack lockout of an AK that has no password.
 */

/** The stable codes of the errors thrown here (registered in agent/core/errors.ts as well). */
export const TpmErrorCodes = {
  /** A tpm2-tools program is not installed. */
  UNAVAILABLE: 'WARD_TPM_UNAVAILABLE',
  /** A tpm2-tools program failed, timed out or produced unusable output. */
  COMMAND_FAILED: 'WARD_TPM_COMMAND_FAILED',
} as const;
export type TpmErrorCode = (typeof TpmErrorCodes)[keyof typeof TpmErrorCodes];

export class TpmError extends Error {
  readonly code: TpmErrorCode;
  readonly retryable: boolean;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: TpmErrorCode, message: string, options: { cause?: unknown; retryable?: boolean; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TpmError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = Object.freeze({ ...(options.details ?? {}) });
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/** TCG's conventional handle for the ECC endorsement key (EK Credential Profile). */
export const DEFAULT_EK_HANDLE = 0x81010002;
export const DEFAULT_AK_HANDLE = 0x81000002;
export const DEFAULT_TIMEOUT_MS = 10_000;

const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/**
 * A system program by absolute path, or undefined when it is not installed. PATH is not used: under npm it starts
 * with node_modules/.bin, and the program that holds the device's keys should be the system's own.
 */
export function systemTool(name: string): string | undefined {
  for (const dir of SYSTEM_DIRS) if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  return undefined;
}

/** TPM_RC_HANDLE for the first handle: nothing is persisted at that handle. */
const NO_SUCH_HANDLE = /\(0x(0000)?018b\)/i;
// TPMA_OBJECT bits (TPM 2.0 Part 2 §8.3)
const FIXED_TPM = 1 << 1;
const FIXED_PARENT = 1 << 4;
const SENSITIVE_DATA_ORIGIN = 1 << 5;
const RESTRICTED = 1 << 16;
const DECRYPT = 1 << 17;
const SIGN = 1 << 18;
const AK_ATTRIBUTES = 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda';
const PCR_COUNT = 24;
const SHA256_SIZE = 32;

export interface Tpm2ToolsOptions {
  /** TPM2TOOLS_TCTI for every command: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`. */
  readonly tcti: string;
  /** Working folder (created 0700): ak.pub, ak.priv, ak.pem, ak.name, ek.pem (0600) and per-operation temporary files. */
  readonly dir: string;
  readonly ekHandle?: number;
  readonly akHandle?: number;
  /** Bound on each tpm2-tools process (default 10 s); it is killed when it runs longer. */
  readonly timeoutMs?: number;
}

export interface TpmIdentity {
  readonly akPublicPem: string;
  /** The AK's TPM name, hex: 000b (sha256) followed by sha256(TPMT_PUBLIC). */
  readonly akName: string;
  readonly ekPublicPem: string;
  /** TPM2B_PUBLIC of the AK, base64. */
  readonly akPublic: string;
}

/**
 * The tail of each TPM's operation queue, by TCTI: one operation at a time per TPM in this process, whichever
 * instance runs it (without a resource manager, one operation's `tpm2_flushcontext -t` would flush another's objects).
 */
const queues = new Map<string, Promise<void>>();

interface ToolResult {
  readonly stdout: string;
  readonly stderr: string;
}

export class Tpm2ToolsTpm implements AttestationTpm {
  readonly #tcti: string;
  readonly #dir: string;
  readonly #ek: string;
  readonly #ak: string;
  readonly #timeoutMs: number;
  #dirReady: Promise<void> | undefined;
  #identity: Promise<TpmIdentity> | undefined;

  constructor(options: Tpm2ToolsOptions) {
    this.#tcti = options.tcti;
    this.#dir = options.dir;
    this.#ek = handleHex(options.ekHandle ?? DEFAULT_EK_HANDLE, 'ekHandle');
    this.#ak = handleHex(options.akHandle ?? DEFAULT_AK_HANDLE, 'akHandle');
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(this.#timeoutMs > 0)) throw new TypeError(`timeoutMs must be positive, got ${this.#timeoutMs}`);
  }

  /** The EK and AK, created and persisted on the first call when the TPM does not hold them yet; cached afterwards. */
  identity(): Promise<TpmIdentity> {
    if (this.#identity === undefined) {
      const pending = this.#exclusive((tmp) => this.#loadIdentity(tmp));
      this.#identity = pending;
      pending.catch(() => {
        if (this.#identity === pending) this.#identity = undefined;
      });
    }
    return this.#identity;
  }

  async resetPcr(index: number): Promise<void> {
    checkPcr(index);
    await this.#exclusive(() => this.#tool('tpm2_pcrreset', [String(index)]));
  }

  async extendPcr(index: number, digest: Buffer): Promise<void> {
    checkPcr(index);
    if (digest.length !== SHA256_SIZE) throw new TypeError(`a sha256 digest is ${SHA256_SIZE} bytes, got ${digest.length}`);
    await this.#exclusive(() => this.#tool('tpm2_pcrextend', [`${index}:sha256=${digest.toString('hex')}`]));
  }

  async readPcrs(indexes: readonly number[]): Promise<Record<number, string>> {
    const sorted = pcrList(indexes);
    if (sorted.length === 0) return {};
    return this.#exclusive(async (tmp) => {
      const out = join(tmp, 'pcrs.bin');
      await this.#tool('tpm2_pcrread', [`sha256:${sorted.join(',')}`, '-o', out]);
      return splitPcrValues('tpm2_pcrread', await readFile(out), sorted);
    });
  }

  async quote(
    qualifier: Buffer,
    pcrs: readonly number[],
  ): Promise<{ readonly attest: Buffer; readonly signature: Buffer; readonly pcrs: Record<number, string> }> {
    const sorted = pcrList(pcrs);
    if (sorted.length === 0) throw new TypeError('a quote needs at least one PCR');
    if (qualifier.length > 64) throw new TypeError(`the qualifier is at most 64 bytes (TPM2B_DATA), got ${qualifier.length}`);
    await this.identity();
    return this.#exclusive(async (tmp) => {
      const [msg, sig, values] = [join(tmp, 'quote.msg'), join(tmp, 'quote.sig'), join(tmp, 'quote.pcrs')];
      // tpm2_quote reads the PCRs (-o) in the same run as the quote; with every TPM command of this process
      // serialized, only another TPM user could change them in between, and the digest check below catches that.
      await this.#tool('tpm2_quote', [
        '-c',
        this.#ak,
        '-l',
        `sha256:${sorted.join(',')}`,
        ...(qualifier.length > 0 ? ['-q', qualifier.toString('hex')] : []),
        '-m',
        msg,
        '-s',
        sig,
        '-o',
        values,
        '-F',
        'values',
        '-g',
        'sha256',
      ]);
      const [attest, signature, raw] = await Promise.all([readFile(msg), readFile(sig), readFile(values)]);
      const map = splitPcrValues('tpm2_quote', raw, sorted);
      // TPMS_ATTEST of a quote ends with TPM2B_DIGEST pcrDigest = sha256 over the quoted values in selection order.
      const digest =
        attest.length >= 2 + SHA256_SIZE && attest.readUInt16BE(attest.length - 2 - SHA256_SIZE) === SHA256_SIZE ? attest.subarray(-SHA256_SIZE) : undefined;
      const computed = createHash('sha256').update(raw).digest();
      if (digest === undefined || !digest.equals(computed)) {
        throw new TpmError(
          TpmErrorCodes.COMMAND_FAILED,
          'tpm2_quote: the PCR values read with the quote are not the values it covers (a PCR changed meanwhile)',
          {
            retryable: true,
            details: { tool: 'tpm2_quote' },
          },
        );
      }
      return { attest, signature, pcrs: map };
    });
  }

  async activateCredential(credential: Buffer): Promise<Buffer> {
    if (credential.length === 0) throw new TypeError('empty credential');
    await this.identity();
    return this.#exclusive(async (tmp) => {
      const [cred, secret, session] = [join(tmp, 'cred.bin'), join(tmp, 'secret.out'), join(tmp, 'session.ctx')];
      await writeFile(cred, credential, { mode: 0o600 });
      // The EK's policy is PolicySecret(endorsement hierarchy): a policy session satisfied with the (empty) endorsement auth.
      await this.#tool('tpm2_startauthsession', ['--policy-session', '-S', session]);
      let failed = false;
      try {
        await this.#tool('tpm2_policysecret', ['-S', session, '-c', 'e']);
        await this.#tool('tpm2_activatecredential', ['-c', this.#ak, '-C', this.#ek, '-i', cred, '-o', secret, '-P', `session:${session}`]);
        return await readFile(secret);
      } catch (err) {
        failed = true;
        throw err;
      } finally {
        // A session left loaded takes one of the TPM's few session slots until it restarts.
        await this.#tool('tpm2_flushcontext', [session]).catch((err: unknown) => {
          if (!failed) throw err;
        });
      }
    });
  }

  async #loadIdentity(tmp: string): Promise<TpmIdentity> {
    const file = (name: string) => join(this.#dir, name);
    if (!(await this.#persisted(this.#ek))) {
      await this.#tool('tpm2_createek', ['-c', this.#ek, '-G', 'ecc', '-u', file('ek.pub')]);
    }
    if (!(await this.#persisted(this.#ak))) await this.#createAk(tmp);
    const ek = await this.#tool('tpm2_readpublic', ['-c', this.#ek, '-f', 'pem', '-o', file('ek.pem')]);
    const ekAttributes = attributesOf(ek.stdout);
    if (ekAttributes === undefined || (ekAttributes & (FIXED_TPM | RESTRICTED | DECRYPT)) !== (FIXED_TPM | RESTRICTED | DECRYPT) || ekAttributes & SIGN) {
      throw commandFailed('tpm2_readpublic', `the object at ${this.#ek} is not an endorsement key (restricted decryption key)`, ek.stdout);
    }
    const ak = await this.#tool('tpm2_readpublic', ['-c', this.#ak, '-f', 'pem', '-o', file('ak.pem'), '-n', file('ak.name')]);
    const need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN;
    const akAttributes = attributesOf(ak.stdout);
    if (akAttributes === undefined || (akAttributes & need) !== need || akAttributes & DECRYPT) {
      throw commandFailed('tpm2_readpublic', `the object at ${this.#ak} is not an attestation key (restricted fixedTPM signing key)`, ak.stdout);
    }
    // The public area as the TPM holds it (TPM2B_PUBLIC): the verifier derives the key and the name from it.
    await this.#tool('tpm2_readpublic', ['-c', this.#ak, '-f', 'tss', '-o', file('ak.tpm2b')]);
    for (const name of ['ek.pub', 'ek.pem', 'ak.pub', 'ak.priv', 'ak.pem', 'ak.name', 'ak.tpm2b']) {
      await chmod(file(name), 0o600).catch(() => {});
    }
    const [akPublicPem, ekPublicPem, name, area] = await Promise.all([
      readFile(file('ak.pem'), 'utf8'),
      readFile(file('ek.pem'), 'utf8'),
      readFile(file('ak.name')),
      readFile(file('ak.tpm2b')),
    ]);
    if (name.length !== 2 + SHA256_SIZE || name.readUInt16BE(0) !== 0x000b) {
      throw commandFailed('tpm2_readpublic', `the name of ${this.#ak} is not a sha256 name (${name.toString('hex')})`, '');
    }
    return { akPublicPem, akName: name.toString('hex'), ekPublicPem, akPublic: area.toString('base64') };
  }

  /** Whether the TPM holds a persistent object at `handle`; any failure other than "no such handle" is thrown. */
  async #persisted(handle: string): Promise<boolean> {
    try {
      await this.#tool('tpm2_readpublic', ['-c', handle]);
      return true;
    } catch (err) {
      if (err instanceof TpmError && NO_SUCH_HANDLE.test(String(err.details.stderr ?? ''))) return false;
      throw err;
    }
  }

  async #createAk(tmp: string): Promise<void> {
    const session = join(tmp, 'session.ctx');
    const context = join(tmp, 'ak.ctx');
    await this.#tool('tpm2_startauthsession', ['--policy-session', '-S', session]);
    try {
      await this.#tool('tpm2_policysecret', ['-S', session, '-c', 'e']);
      await this.#tool('tpm2_create', [
        '-C',
        this.#ek,
        '-P',
        `session:${session}`,
        '-G',
        'ecc256:ecdsa-sha256:null',
        '-g',
        'sha256',
        '-a',
        AK_ATTRIBUTES,
        '-u',
        join(this.#dir, 'ak.pub'),
        '-r',
        join(this.#dir, 'ak.priv'),
        '-c',
        context,
      ]);
    } finally {
      await this.#tool('tpm2_flushcontext', [session]).catch(() => {});
    }
    try {
      await this.#tool('tpm2_evictcontrol', ['-C', 'o', '-c', context, this.#ak]);
    } finally {
      // tpm2_create loaded the new key as a transient object; without a resource manager it stays until flushed.
      await this.#tool('tpm2_flushcontext', ['-t']).catch(() => {});
    }
  }

  /** Runs `fn` after every earlier operation on this TPM (any instance with this TCTI), with a fresh private temporary folder removed afterwards. */
  #exclusive<T>(fn: (tmp: string) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      this.#dirReady ??= prepareDir(this.#dir).catch((err: unknown) => {
        this.#dirReady = undefined;
        throw err;
      });
      await this.#dirReady;
      const tmp = await mkdtemp(join(this.#dir, 'op-'));
      try {
        return await fn(tmp);
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    };
    const tail = queues.get(this.#tcti) ?? Promise.resolve();
    const result = tail.then(run, run);
    const next = result.then(
      () => {},
      () => {},
    );
    queues.set(this.#tcti, next);
    void next.then(() => {
      if (queues.get(this.#tcti) === next) queues.delete(this.#tcti);
    });
    return result;
  }

  #tool(name: string, args: readonly string[]): Promise<ToolResult> {
    return runTool(name, args, { ...process.env, TPM2TOOLS_TCTI: this.#tcti }, this.#timeoutMs);
  }
}

export interface MakeCredentialOptions {
  /** The EK's public key (SPKI PEM, ECC P-256 with the default EK template: AES-128-CFB, sha256). */
  readonly ekPublicPem: string;
  /** The AK's TPM name, hex (000b…). */
  readonly akName: string;
  /** The secret only that EK's TPM can recover, and only for a key of that name (at most 32 bytes for a sha256 EK). */
  readonly secret: Buffer;
  /** Where the temporary files go (default: the OS temporary folder); removed afterwards. */
  readonly dir?: string;
  readonly timeoutMs?: number;
}

/** TPM2_MakeCredential in software (`tpm2_makecredential -T none`, no TPM needed): the verifier's side. Returns the credential file. */
export async function makeCredential(options: MakeCredentialOptions): Promise<Buffer> {
  if (!/^000b[0-9a-f]{64}$/i.test(options.akName)) throw new TypeError(`akName must be a hex sha256 TPM name (000b + 32 bytes), got "${options.akName}"`);
  if (options.secret.length === 0 || options.secret.length > SHA256_SIZE)
    throw new TypeError(`the secret is 1 to ${SHA256_SIZE} bytes, got ${options.secret.length}`);
  const tmp = await mkdtemp(join(options.dir ?? tmpdir(), 'ward-makecredential-'));
  try {
    const [ek, secret, out] = [join(tmp, 'ek.pem'), join(tmp, 'secret.bin'), join(tmp, 'cred.bin')];
    await writeFile(ek, options.ekPublicPem, { mode: 0o600 });
    await writeFile(secret, options.secret, { mode: 0o600 });
    const { TPM2TOOLS_TCTI: _unused, ...env } = process.env;
    await runTool(
      'tpm2_makecredential',
      ['-T', 'none', '-G', 'ecc', '-u', ek, '-s', secret, '-n', options.akName.toLowerCase(), '-o', out],
      env,
      options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    );
    return await readFile(out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

function runTool(name: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<ToolResult> {
  const path = systemTool(name);
  if (path === undefined) {
    return Promise.reject(
      new TpmError(TpmErrorCodes.UNAVAILABLE, `${name} is not installed (searched ${SYSTEM_DIRS.join(':')}): install the Debian package tpm2-tools`, {
        details: { tool: name },
      }),
    );
  }
  return new Promise((resolve, reject) => {
    execFile(path, [...args], { env, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err === null) {
        resolve({ stdout, stderr });
        return;
      }
      const errno = (err as NodeJS.ErrnoException).code;
      if (errno === 'ENOENT' || errno === 'EACCES') {
        reject(
          new TpmError(TpmErrorCodes.UNAVAILABLE, `cannot run ${path}: ${err.message} (install the Debian package tpm2-tools)`, {
            cause: err,
            details: { tool: name },
          }),
        );
        return;
      }
      if (err.killed || err.signal === 'SIGKILL') {
        reject(
          new TpmError(TpmErrorCodes.COMMAND_FAILED, `${name} did not finish within ${timeoutMs} ms (killed)`, {
            cause: err,
            retryable: true,
            details: { tool: name, timeoutMs, stderr: stderr.slice(0, 4096) },
          }),
        );
        return;
      }
      const exit = typeof err.code === 'number' ? `exit code ${err.code}` : `signal ${err.signal ?? 'unknown'}`;
      reject(commandFailed(name, `${name} failed (${exit})`, stderr, err));
    });
  });
}

function commandFailed(tool: string, what: string, output: string, cause?: unknown): TpmError {
  const lines = output
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  const rc = /\(0x([0-9a-f]+)\)/i.exec(output)?.[1];
  const first = lines.slice(0, 4).join(' | ').slice(0, 800);
  return new TpmError(TpmErrorCodes.COMMAND_FAILED, first ? `${what}: ${first}` : what, {
    cause,
    details: { tool, stderr: output.slice(0, 4096), ...(rc === undefined ? {} : { responseCode: `0x${rc.replace(/^0+(?=.)/, '')}` }) },
  });
}

/** `attributes: … raw: 0x…` from tpm2_readpublic's YAML output. */
function attributesOf(readpublicOutput: string): number | undefined {
  const raw = /^attributes:\s*\n\s*value:[^\n]*\n\s*raw:\s*0x([0-9a-f]+)/im.exec(readpublicOutput)?.[1];
  return raw === undefined ? undefined : Number.parseInt(raw, 16);
}

async function prepareDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

function handleHex(handle: number, what: string): string {
  if (!Number.isInteger(handle) || handle < 0x81000000 || handle > 0x81ffffff) {
    throw new TypeError(`${what} must be a persistent handle (0x81000000–0x81FFFFFF), got ${handle}`);
  }
  return `0x${handle.toString(16)}`;
}

function checkPcr(index: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= PCR_COUNT) throw new TypeError(`PCR index must be 0–${PCR_COUNT - 1}, got ${index}`);
}

/** Ascending, without duplicates: the order tpm2-tools selects (a bitmap) and writes values in. */
function pcrList(indexes: readonly number[]): number[] {
  for (const i of indexes) checkPcr(i);
  return [...new Set(indexes)].sort((a, b) => a - b);
}

function splitPcrValues(tool: string, raw: Buffer, indexes: readonly number[]): Record<number, string> {
  if (raw.length !== indexes.length * SHA256_SIZE) {
    throw commandFailed(tool, `${tool} wrote ${raw.length} bytes of PCR values for ${indexes.length} PCRs`, '');
  }
  const out: Record<number, string> = {};
  indexes.forEach((pcr, n) => {
    out[pcr] = raw.subarray(n * SHA256_SIZE, (n + 1) * SHA256_SIZE).toString('hex');
  });
  return out;
}
