import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { boundedLines, exportJsonl, verifyExport } from '../audit/export.js';
import { type FormatContext, toCef, toOcsfJson, toSyslog, toTextLine } from '../audit/formats.js';
import { JournalReader, readerSource } from '../audit/journal.js';
import { loadConfigFile } from '../config/load.js';
import { type AgentConfig, agentConfigSchema } from '../config/schema.js';
import { describeError, ErrorCodes, isWardError, WardError } from '../core/errors.js';
import { loadSigningKey } from '../identity/keystore.js';
import { IdentityStore } from '../identity/store.js';
import { readRootFile } from '../identity/trust.js';
import { type AuditEvent, parseEventText } from '../shared/audit/event.js';
import { describeVerdict } from '../shared/audit/verify.js';
import { keyIdOf, publicKeyFromRaw, type SigningKey } from '../shared/keys.js';

/**
 * `ward audit status|tail|export|verify`: read-only views of the signed
 * audit journal in `<stateDir>/audit`. None of them writes the journal or
 * creates a key; while the agent runs (and holds LevelDB's lock) they read a
 * copy taken at that moment (JournalReader), so the newest events may be
 * missing from what they show, never forged into it.
 *
 * stdout carries data only (it is piped into SIEM forwarders and files);
 * notes and warnings go to stderr.
 */
export const EXPORT_FORMATS = ['jsonl', 'cef', 'syslog', 'ocsf'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface AuditIo {
  readonly out: NodeJS.WritableStream;
  readonly err: NodeJS.WritableStream;
}

const journalDir = (config: AgentConfig) => join(config.stateDir, 'audit');

async function withReader<T>(config: AgentConfig, fn: (reader: JournalReader) => Promise<T>): Promise<T> {
  const reader = await JournalReader.open(journalDir(config));
  try {
    return await fn(reader);
  } finally {
    // Also removes the snapshot copy, which holds audit data in a shared temp folder.
    await reader.close();
  }
}

const SNAPSHOT_NOTE =
  'note: the agent is running and holds the journal; this reads a copy taken just now (events being written at that moment may be missing)\n';

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

export async function auditStatus(opts: { config: string; json?: boolean }, io: AuditIo): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  await withReader(config, async (reader) => {
    const m = reader.meta;
    const view = {
      journal: journalDir(config),
      snapshot: reader.snapshotOf !== undefined,
      chain: m.chain,
      kid: m.kid,
      seq: m.seq,
      head: m.head,
      session: m.session,
      firstSeq: m.firstSeq,
      sealedSeq: m.sealedSeq,
      unsealed: Math.max(0, m.seq - m.sealedSeq),
      receipted: m.receipted,
      bytes: m.bytes,
      maxBytes: config.audit.maxBytes,
    };
    if (opts.json) {
      io.out.write(`${JSON.stringify(view)}\n`);
      return;
    }
    const n = (v: number) => v.toLocaleString('en-US');
    const held = m.seq >= m.firstSeq ? `seq ${n(m.firstSeq)}–${n(m.seq)} (${n(m.seq - m.firstSeq + 1)} events)` : 'no events (all acknowledged and pruned)';
    io.out.write(
      [
        `audit journal ${view.journal}${view.snapshot ? ' (snapshot: the agent is running)' : ''}`,
        `  chain       ${m.chain} (device key ${m.kid})`,
        `  head        seq ${n(m.seq)}, hash ${m.head.slice(0, 16)}…`,
        `  session     ${n(m.session)}`,
        `  held        ${held}`,
        `  sealed      ${m.sealedSeq > 0 ? `through seq ${n(m.sealedSeq)}` : 'nothing yet'}${view.unsealed > 0 ? `; ${n(view.unsealed)} newer events await a checkpoint` : ''}`,
        `  receipted   ${m.receipted ? `through seq ${n(m.receipted.seq)} (the controller holds everything up to there)` : 'nothing yet (no controller receipt)'}`,
        `  size        ${n(m.bytes)} bytes of ${n(config.audit.maxBytes)} (${((100 * m.bytes) / config.audit.maxBytes).toFixed(1)}%)`,
        '',
      ].join('\n'),
    );
  });
}

// ---------------------------------------------------------------------------
// tail
// ---------------------------------------------------------------------------

export async function auditTail(opts: { config: string; lines: number; json?: boolean }, io: AuditIo): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  await withReader(config, async (reader) => {
    if (reader.snapshotOf !== undefined) io.err.write(SNAPSHOT_NOTE);
    const events = await reader.tail(opts.lines);
    io.out.write(events.map((p) => `${opts.json ? p.text : toTextLine(p.event)}\n`).join(''));
    // The gateway keeps only what the controller has not acknowledged yet: say where the rest is.
    const receipted = reader.meta.receipted;
    if (events.length < opts.lines && receipted !== null) {
      io.err.write(
        `note: events up to seq ${receipted.seq} were acknowledged by the controller and pruned here; the controller keeps them (GET /api/devices/<id>/audit)\n`,
      );
    }
  });
}

// ---------------------------------------------------------------------------
// export
// ---------------------------------------------------------------------------

export interface ExportCommandOptions {
  readonly config: string;
  readonly format: ExportFormat;
  /** Epoch ms: only events with time >= since (not for jsonl: see index.ts). */
  readonly since?: number;
  readonly output?: string;
}

export async function auditExport(opts: ExportCommandOptions, io: AuditIo): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  const warn = (text: string) => io.err.write(`ward: warning: ${text}\n`);
  // The header needs the device key; the SIEM formats only want the device id, so a missing key is no reason to stop them.
  const key = opts.format === 'jsonl' ? await readDeviceKey(config.stateDir) : await readDeviceKey(config.stateDir).catch(() => undefined);
  const device = await deviceIdentity(config, key, warn);
  await withReader(config, async (reader) => {
    if (reader.snapshotOf !== undefined) io.err.write(SNAPSHOT_NOTE);
    let lines: AsyncIterable<string>;
    let unreadable = { count: 0 };
    if (opts.format === 'jsonl') {
      if (key === undefined) throw new TypeError('a jsonl export reads the device key first');
      if (reader.meta.kid !== key.kid) {
        warn(
          `the journal is signed by key ${reader.meta.kid}, but the device key in ${config.stateDir} is ${key.kid}: its checkpoints will not verify against the header`,
        );
      }
      lines = exportJsonl(readerSource(reader), {
        ...(device.deviceId !== undefined ? { deviceId: device.deviceId } : {}),
        publicKey: key.publicRaw,
        ...(device.controllerPublicKey !== undefined ? { controllerPublicKey: device.controllerPublicKey } : {}),
        now: Date.now(),
      });
    } else {
      const ctx: FormatContext = { ...(device.deviceId !== undefined ? { deviceId: device.deviceId } : {}), hostname: hostname() };
      const rendered = renderEvents(reader, opts.format, ctx, opts.since, warn);
      unreadable = rendered.unreadable;
      lines = rendered.lines;
    }
    const written = await writeLines(lines, opts.output, io.out);
    if (opts.output !== undefined) {
      const hint = opts.format === 'jsonl' ? `; check it with: ward audit verify ${opts.output} --device-key <the device key as the controller knows it>` : '';
      io.err.write(`wrote ${written.toLocaleString('en-US')} ${opts.format} lines to ${opts.output}${hint}\n`);
    }
    if (unreadable.count > 0) {
      throw new WardError(
        ErrorCodes.AUDIT_EVENT_INVALID,
        `${unreadable.count} stored events could not be read and were left out; export --format jsonl and run ward audit verify to see the damage`,
      );
    }
  });
}

function renderEvents(
  reader: JournalReader,
  format: Exclude<ExportFormat, 'jsonl'>,
  ctx: FormatContext,
  since: number | undefined,
  warn: (text: string) => void,
): { lines: AsyncIterable<string>; unreadable: { count: number } } {
  const render: (event: AuditEvent) => string =
    format === 'cef' ? (e) => toCef(e, ctx) : format === 'syslog' ? (e) => toSyslog(e, ctx) : (e) => JSON.stringify(toOcsfJson(e, ctx));
  const unreadable = { count: 0 };
  async function* lines(): AsyncGenerator<string> {
    // Wall-clock times can go back (NTP, RTC-less boot), so the window is a filter over every event, not a starting point.
    for await (const text of reader.iterateEvents(reader.meta.firstSeq)) {
      let event: AuditEvent;
      try {
        event = parseEventText(text).event;
      } catch (err) {
        unreadable.count++;
        if (unreadable.count <= 10) warn(`skipping an unreadable stored event (${describeError(err)})`);
        continue;
      }
      if (since === undefined || event.time >= since) yield render(event);
    }
  }
  return { lines: lines(), unreadable };
}

/**
 * Writes line by line with backpressure, so memory stays bounded however
 * long the journal. A file is written under a temporary name (mode 0600:
 * audit data names peers and commands) and renamed into place when
 * complete, so a failed export never leaves a truncated file that looks whole.
 */
async function writeLines(lines: AsyncIterable<string>, file: string | undefined, stdout: NodeJS.WritableStream): Promise<number> {
  if (file === undefined) return writeStream(lines, stdout);
  const tmp = join(dirname(file), `.${basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  let handle: FileHandle | undefined;
  try {
    handle = await open(tmp, 'wx', 0o600);
    const fh = handle;
    const n = await writeChunked(lines, (chunk) => fh.write(chunk).then(() => undefined));
    await fh.sync();
    await fh.close();
    handle = undefined;
    await rename(tmp, file);
    return n;
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
}

async function writeStream(lines: AsyncIterable<string>, out: NodeJS.WritableStream): Promise<number> {
  let closed: Error | undefined;
  const onError = (err: Error) => {
    closed = err;
  };
  out.on('error', onError);
  try {
    return await writeChunked(lines, async (chunk) => {
      if (closed !== undefined) throw closed;
      if (!out.write(chunk)) await once(out, 'drain');
    });
  } catch (err) {
    // The reader went away (`… | head`): not a failure of the export.
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') return 0;
    throw err;
  } finally {
    out.off('error', onError);
  }
}

const CHUNK_CHARS = 64 * 1024;

async function writeChunked(lines: AsyncIterable<string>, write: (chunk: string) => Promise<void>): Promise<number> {
  let n = 0;
  let chunk = '';
  for await (const line of lines) {
    chunk += `${line}\n`;
    n++;
    if (chunk.length >= CHUNK_CHARS) {
      await write(chunk);
      chunk = '';
    }
  }
  if (chunk !== '') await write(chunk);
  return n;
}

/**
 * The device key without the keystore's create-if-missing: an audit command
 * must never mint a new identity. Only its public half is used (the export
 * header, the identity check); nothing of it is printed but the key id.
 */
async function readDeviceKey(stateDir: string): Promise<SigningKey> {
  try {
    return await loadSigningKey(stateDir);
  } catch (err) {
    if (isWardError(err, ErrorCodes.KEY_UNREADABLE) && err.message.startsWith('no key file')) {
      throw new WardError(
        ErrorCodes.KEY_UNREADABLE,
        `no device key at ${String(err.details.file)}: no agent has run with this state folder (ward audit does not create one)`,
        {
          cause: err,
          details: err.details,
        },
      );
    }
    throw err;
  }
}

/**
 * Who the export is from, the way the agent decides it (system.ts): a
 * static deviceId in the config wins, else the enrolled identity. An
 * identity that fails its checks is reported and left out rather than
 * stopping the export: the journal is most needed exactly when something
 * on the gateway is wrong, and the verifier trusts neither value anyway.
 */
async function deviceIdentity(
  config: AgentConfig,
  key: SigningKey | undefined,
  warn: (text: string) => void,
): Promise<{ deviceId?: string; controllerPublicKey?: string }> {
  if (config.deviceId !== undefined) {
    return { deviceId: config.deviceId, ...(config.controller !== undefined ? { controllerPublicKey: config.controller.publicKey } : {}) };
  }
  if (config.trust === undefined || key === undefined) return {};
  const store = new IdentityStore(config.stateDir);
  try {
    if (!(await store.exists())) return {};
    const nowSec = Math.floor(Date.now() / 1000);
    const root = await readRootFile(config.trust.rootFile, nowSec);
    const identity = await store.load({ root, key, nowSec });
    return identity === undefined ? {} : { deviceId: identity.deviceId, controllerPublicKey: identity.controllerPublicKey };
  } catch (err) {
    warn(`the enrolled identity could not be loaded (${describeError(err)}); the export names no device id or controller key`);
    return {};
  }
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

export interface VerifyCommandOptions {
  readonly file: string;
  readonly deviceKey?: string;
  readonly controllerKey?: string;
  readonly json?: boolean;
  /** Warnings and a device key taken from the file itself fail too: for evidence, not for a quick look. */
  readonly strict?: boolean;
}

/** Returns true when the export verifies (intact, or intact with warnings unless strict). */
export async function auditVerify(opts: VerifyCommandOptions, io: AuditIo): Promise<boolean> {
  const input = createReadStream(opts.file);
  const lines = boundedLines(input);
  let result: Awaited<ReturnType<typeof verifyExport>>;
  try {
    result = await verifyExport(lines, {
      ...(opts.deviceKey !== undefined ? { devicePublicKey: opts.deviceKey } : {}),
      ...(opts.controllerKey !== undefined ? { controllerPublicKey: opts.controllerKey } : {}),
    });
  } catch (err) {
    if (isWardError(err, ErrorCodes.AUDIT_EXPORT_INVALID)) throw new WardError(err.code, `${opts.file}: ${err.message}`, { cause: err });
    const code = (err as NodeJS.ErrnoException).code;
    const why = typeof code === 'string' && !code.startsWith('WARD_') ? `cannot be read (${code})` : `is not a valid Ward audit export (${describeError(err)})`;
    throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `${opts.file} ${why}`, { cause: err, details: { file: opts.file } });
  } finally {
    input.destroy();
  }
  const { header, verdict } = result;
  const ok = opts.strict ? verdict.status === 'intact' && result.deviceKeySource === 'given' : verdict.status !== 'broken';
  if (opts.json) {
    io.out.write(
      `${JSON.stringify({
        file: opts.file,
        ok,
        status: verdict.status,
        header: { deviceId: header.deviceId ?? null, kid: header.kid, chain: header.chain, exportedAt: header.exportedAt },
        deviceKeySource: result.deviceKeySource,
        controllerKeySource: result.controllerKeySource,
        lines: result.lines,
        verdict,
      })}\n`,
    );
    return ok;
  }
  const exportedAt = Math.abs(header.exportedAt) <= 8.64e15 ? new Date(header.exportedAt).toISOString() : String(header.exportedAt);
  const notes = [
    `export ${opts.file}: ${header.deviceId !== undefined ? `device ${header.deviceId}, ` : ''}chain ${header.chain}, exported ${exportedAt}, ${result.lines.toLocaleString('en-US')} lines`,
    describeVerdict(verdict),
    deviceKeyNote(result.deviceKeySource, header.kid, opts.deviceKey),
    controllerKeyNote(result.controllerKeySource),
  ];
  io.out.write(`${notes.join('\n')}\n`);
  return ok;
}

function deviceKeyNote(source: 'given' | 'export-header', headerKid: string, given: string | undefined): string {
  if (source === 'export-header' || given === undefined) {
    return 'device key: taken from the export itself — this proves internal consistency only; pass --device-key from the controller to prove origin';
  }
  const kid = keyIdOf(given);
  const differs = kid !== headerKid ? ` (the export header names key ${headerKid}: this export claims another device key)` : '';
  return `device key: ${kid}, given on the command line — the checkpoints prove the events come from the holder of that key${differs}`;
}

function controllerKeyNote(source: 'given' | 'export-header' | 'none'): string {
  if (source === 'given') return 'controller key: given on the command line — receipts prove what the controller acknowledged';
  if (source === 'export-header') {
    return 'controller key: named in the export but not used — receipts count only under a key you give (--controller-key)';
  }
  return 'controller key: none (receipts, if any, are not checked)';
}

// ---------------------------------------------------------------------------
// option parsing (commander argParsers: a bad value is a usage error, exit 2)
// ---------------------------------------------------------------------------

const DURATION_UNITS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `--since`: an ISO 8601 time (2026-11-26T04:00:00Z) or a duration back from now (30m, 2h, 7d). */
export function parseSince(text: string, now = Date.now()): number {
  const value = text.trim();
  const duration = /^(\d{1,9})([smhdw])$/.exec(value);
  if (duration) return now - Number(duration[1]) * (DURATION_UNITS[duration[2] ?? ''] ?? 0);
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    const ms = Date.parse(value);
    if (Number.isFinite(ms)) return ms;
  }
  throw new InvalidArgumentError('expected an ISO time (2026-11-26T04:00:00Z) or a duration back from now (30m, 2h, 7d)');
}

/** `--device-key`, `--controller-key`: a raw ed25519 public key, base64url (43 characters), as `ward agent pubkey` and the controller print it. */
export function parsePublicKey(text: string): string {
  const value = text.trim();
  try {
    publicKeyFromRaw(value);
  } catch {
    throw new InvalidArgumentError('expected an ed25519 public key: 32 bytes in unpadded base64url (43 characters)');
  }
  return value;
}
