import { z } from 'zod';
import { ErrorCodes, WardError } from '../core/errors.js';
import { ChainVerifier, type Verdict } from '../shared/audit/verify.js';
import { canonicalize } from '../shared/canonical.js';
import { keyIdOf, publicKeyFromRaw } from '../shared/keys.js';
import type { JournalSource } from './journal.js';

/**
 * The verifiable export (`ward audit export --format jsonl`): one JSON object
 * per line: a header naming the device key, then the receipts the journal
 * kept (the newest one anchors the first exported event: everything before
 * it was acknowledged by the controller and pruned), then the events in seq
 * order, each checkpoint right after the event it seals. Nothing in the file
 * is trusted by the verifier except what the operator vouches for: the
 * device key and the controller key can be given from outside the file.
 */
export const EXPORT_TYPE = 'ward.audit.export';

export const exportHeader = z.strictObject({
  type: z.literal(EXPORT_TYPE),
  v: z.literal(1),
  deviceId: z.string().max(64).optional(),
  kid: z.string().min(1).max(64),
  publicKey: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
  controllerPublicKey: z
    .string()
    .regex(/^[A-Za-z0-9_-]{43}$/)
    .optional(),
  chain: z.string(),
  exportedAt: z.number().int(),
});
export type ExportHeader = z.infer<typeof exportHeader>;

export interface ExportOptions {
  readonly deviceId?: string;
  readonly publicKey: string;
  readonly controllerPublicKey?: string;
  readonly now: number;
}

const EVENT_LINE_PREFIX = '{"type":"event","event":';

export async function* exportJsonl(journal: JournalSource, options: ExportOptions): AsyncGenerator<string> {
  const status = journal.status();
  const header: ExportHeader = {
    type: EXPORT_TYPE,
    v: 1,
    ...(options.deviceId !== undefined ? { deviceId: options.deviceId } : {}),
    kid: journal.kid,
    publicKey: options.publicKey,
    ...(options.controllerPublicKey !== undefined ? { controllerPublicKey: options.controllerPublicKey } : {}),
    chain: status.chain,
    exportedAt: options.now,
  };
  yield JSON.stringify(header);
  for (const receipt of await journal.receipts()) yield JSON.stringify({ type: 'receipt', receipt });
  const checkpoints = journal.iterateCheckpoints(status.firstSeq);
  let nextCheckpoint = (await checkpoints.next()).value;
  for await (const text of journal.iterateEvents(status.firstSeq)) {
    // Events are canonical text already; embedding them as objects keeps the file readable and re-canonicalises identically.
    yield `${EVENT_LINE_PREFIX}${text}}`;
    const seq = (JSON.parse(text) as { seq: number }).seq;
    while (nextCheckpoint && nextCheckpoint.payload.seq <= seq) {
      yield JSON.stringify({ type: 'checkpoint', checkpoint: nextCheckpoint });
      nextCheckpoint = (await checkpoints.next()).value;
    }
  }
}

/** Longest line an export may hold; events are at most 8 KiB, so anything near this is hostile. */
export const MAX_EXPORT_LINE_BYTES = 1024 * 1024;

/**
 * Splits a byte stream into lines without ever buffering more than
 * `maxBytes` of one line (readline has no such bound, so a file that is one
 * endless line would be read whole into memory).
 */
export async function* boundedLines(input: AsyncIterable<Buffer | string>, maxBytes = MAX_EXPORT_LINE_BYTES): AsyncGenerator<string> {
  let parts: Buffer[] = [];
  let size = 0;
  let lineNo = 0;
  for await (const chunk of input) {
    let buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a)) {
      const piece = buf.subarray(0, nl);
      if (size + piece.length > maxBytes) throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `line ${lineNo + 1} is longer than ${maxBytes} bytes`);
      parts.push(piece);
      lineNo++;
      yield Buffer.concat(parts).toString('utf8').replace(/\r$/, '');
      parts = [];
      size = 0;
      buf = buf.subarray(nl + 1);
    }
    if (size + buf.length > maxBytes) throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `line ${lineNo + 1} is longer than ${maxBytes} bytes`);
    if (buf.length > 0) {
      parts.push(Buffer.from(buf));
      size += buf.length;
    }
  }
  if (size > 0) yield Buffer.concat(parts).toString('utf8').replace(/\r$/, '');
}

export interface VerifyExportOptions {
  /** The device key as the operator knows it (from the controller, the device certificate); overrides the header. */
  readonly devicePublicKey?: string;
  readonly controllerPublicKey?: string;
}

export interface ExportVerification {
  readonly header: ExportHeader;
  readonly verdict: Verdict;
  /** Where the device key came from: vouched for by the operator, or only the file's own claim. */
  readonly deviceKeySource: 'given' | 'export-header';
  /** Receipts prove what the controller acknowledged only when its key comes from outside the file. */
  readonly controllerKeySource: 'given' | 'export-header' | 'none';
  readonly lines: number;
}

/** Streams an export through the chain verifier; memory stays bounded whatever the file size. */
export async function verifyExport(lines: AsyncIterable<string> | Iterable<string>, options: VerifyExportOptions = {}): Promise<ExportVerification> {
  let header: ExportHeader | undefined;
  let verifier: ChainVerifier | undefined;
  let n = 0;
  for await (const raw of lines) {
    n++;
    const line = raw.trim();
    if (line === '') continue;
    // The exporter writes each event's stored text verbatim inside a fixed wrapper: take it as is (the
    // verifier checks it is canonical), instead of parsing and re-serialising a million objects.
    if (verifier !== undefined && line.startsWith(EVENT_LINE_PREFIX) && line.endsWith('}}')) {
      verifier.addEvent(line.slice(EVENT_LINE_PREFIX.length, -1));
      continue;
    }
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      if (verifier === undefined) throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `line ${n}: not JSON`);
      verifier.addEvent(line);
      continue;
    }
    if (header === undefined) {
      const parsed = exportHeader.safeParse(value);
      if (!parsed.success)
        throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `line ${n}: not a Ward audit export header (${parsed.error.issues[0]?.message})`);
      header = parsed.data;
      const deviceRaw = options.devicePublicKey ?? header.publicKey;
      // Receipts anchor pruned history only under a controller key the operator vouches for: a key from the
      // file itself would let anyone who cut the front off an export sign their own anchor.
      const controllerRaw = options.controllerPublicKey;
      verifier = new ChainVerifier({
        deviceKey: { kid: keyIdOf(deviceRaw), publicKey: publicKeyFromRaw(deviceRaw) },
        ...(controllerRaw !== undefined ? { controllerKey: { kid: keyIdOf(controllerRaw), publicKey: publicKeyFromRaw(controllerRaw) } } : {}),
      });
      continue;
    }
    const record = value as { type?: unknown; event?: unknown; checkpoint?: unknown; receipt?: unknown };
    const v = verifier as ChainVerifier;
    if (record.type === 'event') {
      let text: string;
      try {
        text = canonicalize(record.event);
      } catch {
        text = JSON.stringify(record.event ?? null);
      }
      v.addEvent(text);
    } else if (record.type === 'checkpoint') v.addCheckpoint(record.checkpoint);
    else if (record.type === 'receipt') v.addReceipt(record.receipt);
    else throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, `line ${n}: unknown record type ${JSON.stringify(record.type)}`);
  }
  if (header === undefined || verifier === undefined) throw new WardError(ErrorCodes.AUDIT_EXPORT_INVALID, 'the export is empty');
  return {
    header,
    verdict: verifier.finish(),
    deviceKeySource: options.devicePublicKey !== undefined ? 'given' : 'export-header',
    controllerKeySource: options.controllerPublicKey !== undefined ? 'given' : header.controllerPublicKey !== undefined ? 'export-header' : 'none',
    lines: n,
  };
}
