import { createHash, type KeyObject, randomBytes, sign, verify } from 'node:crypto';
import { z } from 'zod';
import { AUDIT_CATEGORIES, type AuditEventInput } from '../../core/audit.js';
import { ErrorCodes, WardError } from '../../core/errors.js';
import { canonicalize } from '../canonical.js';
import type { SigningKey } from '../keys.js';

/**
 * The audit journal's wire and storage format (DESIGN.md §5), shared by the
 * agent's journal, the controller's ingest and the offline verifier.
 *
 * An event is stored and shipped as its canonical JSON text; its hash is
 * SHA-256 over exactly those bytes, and each event names the hash of the one
 * before it (`prev`), so editing, dropping or reordering any event breaks
 * every later link. A chain is identified by a random id and starts with an
 * `audit.chain-start` event whose prev is all zeros; each agent process is a
 * session whose first event is `audit.session-start` naming the session
 * before it. Hashes are not signatures: the device key signs checkpoints
 * `{chain, seq, head}` per interval or batch, and an event counts as
 * authenticated only once a checkpoint covers it (the journald sealing flaw,
 * CVE-2023-31439, was accepting entries after the last seal).
 */
export const AUDIT_EVENT_VERSION = 1;
export const GENESIS_PREV = '0'.repeat(64);

/** Actions the journal itself writes; the verifier gives them meaning. */
export const JournalActions = {
  chainStart: 'audit.chain-start',
  sessionStart: 'audit.session-start',
  /** Sequence numbers lost to damage, declared: details {from, to, reason}. */
  gap: 'audit.gap',
  /** Events that never got a sequence number (journal full), aggregated: details {count, byAction, firstAt, lastAt}. */
  overflow: 'audit.overflow',
  quotaWarning: 'audit.quota-warning',
} as const;

const HEX64 = /^[0-9a-f]{64}$/;
const CHAIN_ID = /^[A-Za-z0-9_-]{22}$/;
const ACTION = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export const MAX_DETAILS_BYTES = 4096;
export const MAX_EVENT_BYTES = 8192;

export const auditEventSchema = z.strictObject({
  v: z.literal(AUDIT_EVENT_VERSION),
  chain: z.string().regex(CHAIN_ID),
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  session: z.number().int().min(1),
  boot: z.string().min(1).max(64),
  time: z.number().int().min(0),
  mono: z.number().int().min(0),
  category: z.enum(AUDIT_CATEGORIES),
  actor: z.string().min(1).max(128),
  action: z.string().regex(ACTION),
  target: z.string().max(512).optional(),
  outcome: z.enum(['success', 'failure', 'refused']),
  code: z.string().max(64).optional(),
  details: z.record(z.string(), z.unknown()).optional(),
  prev: z.string().regex(HEX64),
});
export type AuditEvent = z.infer<typeof auditEventSchema>;

/** SHA-256 (hex) over the canonical text of an event: the value the next event's `prev` and checkpoints name. */
export function hashEventText(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

export function encodeEvent(event: AuditEvent): string {
  return canonicalize(event);
}

export interface ParsedEvent {
  readonly event: AuditEvent;
  readonly text: string;
  readonly hash: string;
}

/**
 * Parses stored or shipped event text. The text must already be canonical:
 * an event whose bytes differ from their canonical form would hash
 * differently on two machines, so it is refused rather than normalised.
 */
export function parseEventText(text: string): ParsedEvent {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new WardError(ErrorCodes.AUDIT_EVENT_INVALID, 'audit event is not JSON');
  }
  const result = auditEventSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new WardError(ErrorCodes.AUDIT_EVENT_INVALID, `audit event field ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  let canonical: string;
  try {
    canonical = canonicalize(raw);
  } catch (cause) {
    throw new WardError(ErrorCodes.AUDIT_EVENT_INVALID, 'audit event cannot be canonicalised', { cause });
  }
  if (canonical !== text) throw new WardError(ErrorCodes.AUDIT_EVENT_INVALID, 'audit event text is not in canonical form');
  return { event: result.data, text, hash: hashEventText(text) };
}

// ---------------------------------------------------------------------------
// What enters an event: redaction and bounds
// ---------------------------------------------------------------------------

/** Field names whose values never enter an event, whatever the caller passes. */
const SECRET_FIELD = /pass(word|phrase)?|secret|token|private|seed|authori[sz]ation|cookie|credential|api[-_]?key|otp|pin$/i;
/** Enrollment and claim codes carry one-time secrets. */
const SECRET_TEXT = /^WARDC?1:/;
/** base45 is QR alphanumeric: the code runs until the first character outside that set. */
const EMBEDDED_CODE = /WARDC?1:[0-9A-Z $%*+./:-]*/g;
const MAX_STRING = 512;
const MAX_ARRAY = 32;
const MAX_KEYS = 48;
const MAX_KEY_LENGTH = 64;
const MAX_DEPTH = 4;

/**
 * Well-formed (lone surrogates replaced: canonical JSON refuses them) and cut
 * on a code point boundary, so text from the wire can never make an event
 * unserialisable.
 */
function boundedText(value: string, max: number): string {
  const text = value.toWellFormed();
  if (text.length <= max) return text;
  let end = max - 1;
  const code = text.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}

function cleanText(raw: string): string {
  // A code quoted inside a message (an error echoing its input) is cut out, not the whole message.
  const value = raw.includes('WARD') ? raw.replace(EMBEDDED_CODE, '[redacted enrollment code]') : raw;
  return value.length > MAX_STRING ? `${boundedText(value, MAX_STRING + 1)}(+${value.length - MAX_STRING} chars)` : value.toWellFormed();
}

function clean(value: unknown, depth: number): unknown {
  if (value === null) return null;
  switch (typeof value) {
    case 'string':
      if (SECRET_TEXT.test(value)) return '[redacted enrollment code]';
      return cleanText(value);
    case 'number':
      if (!Number.isFinite(value)) return String(value);
      return Object.is(value, -0) ? 0 : value;
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (depth >= MAX_DEPTH) return '[nested too deep]';
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
  if (value instanceof Uint8Array) return `[${value.byteLength} bytes]`;
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { ...(typeof code === 'string' ? { code: boundedText(code, 64) } : {}), message: clean(value.message, depth + 1) };
  }
  if (Array.isArray(value)) {
    const out = value.slice(0, MAX_ARRAY).map((v) => clean(v, depth + 1) ?? null);
    if (value.length > MAX_ARRAY) out.push(`…(+${value.length - MAX_ARRAY} items)`);
    return out;
  }
  const out: Record<string, unknown> = {};
  let kept = 0;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (kept >= MAX_KEYS) {
      out['…'] = `${Object.keys(value as object).length - MAX_KEYS} more fields`;
      break;
    }
    const key = boundedText(k, MAX_KEY_LENGTH);
    if (SECRET_FIELD.test(k)) {
      out[key] = '[redacted]';
    } else {
      const c = clean(v, depth + 1);
      if (c === undefined) continue;
      out[key] = c;
    }
    kept++;
  }
  return out;
}

/** Details as they may enter the journal: secrets redacted, sizes bounded, values JSON can carry exactly. */
export function sanitizeDetails(details: Readonly<Record<string, unknown>> | undefined): Record<string, unknown> | undefined {
  if (details === undefined) return undefined;
  const cleaned = clean(details, 0) as Record<string, unknown>;
  const size = Buffer.byteLength(canonicalize(cleaned));
  if (size <= MAX_DETAILS_BYTES) return cleaned;
  return { truncated: true, size, fields: Object.keys(cleaned).slice(0, 20) };
}

/** sanitizeInput for paths that must not throw (the log sink): misuse becomes a visible placeholder. */
export function sanitizeInputLenient(input: AuditEventInput): AuditEventInput {
  try {
    return sanitizeInput(input);
  } catch (err) {
    return { category: 'audit', actor: 'ward-agent', action: 'audit.invalid-event', outcome: 'failure', details: { error: (err as Error).message } };
  }
}

const OUTCOMES: readonly string[] = ['success', 'failure', 'refused'];

function field(value: unknown, max: number): string {
  const text = typeof value === 'string' ? value : String(value);
  return SECRET_TEXT.test(text) ? '[redacted]' : boundedText(text, max);
}

/**
 * The caller's part of an event, cleaned: what the journal adds seq, times
 * and links to. Every field is bounded, so a built event always fits
 * MAX_EVENT_BYTES and always serialises; programmer misuse (unknown
 * category, outcome or action syntax) is a TypeError.
 */
export function sanitizeInput(input: AuditEventInput): AuditEventInput {
  if (!(AUDIT_CATEGORIES as readonly string[]).includes(input.category)) {
    throw new TypeError(`unknown audit category ${JSON.stringify(input.category)}`);
  }
  if (typeof input.action !== 'string' || !ACTION.test(input.action)) throw new TypeError(`audit action ${JSON.stringify(input.action)} must match ${ACTION}`);
  if (!OUTCOMES.includes(input.outcome)) throw new TypeError(`unknown audit outcome ${JSON.stringify(input.outcome)}`);
  const details = sanitizeDetails(input.details);
  return {
    category: input.category,
    actor: field(input.actor || 'unknown', 128),
    action: input.action,
    ...(input.target !== undefined ? { target: field(input.target, 512) } : {}),
    outcome: input.outcome,
    ...(input.code !== undefined ? { code: field(input.code, 64) } : {}),
    ...(details !== undefined ? { details } : {}),
  };
}

// ---------------------------------------------------------------------------
// Checkpoints (device-signed) and receipts (controller-signed)
// ---------------------------------------------------------------------------

export const CHECKPOINT_TYPE = 'ward.audit.checkpoint';
export const RECEIPT_TYPE = 'ward.audit.receipt';
export const BATCH_TYPE = 'ward.audit.batch';

export const checkpointPayload = z.strictObject({
  typ: z.literal(CHECKPOINT_TYPE),
  chain: z.string().regex(CHAIN_ID),
  seq: z.number().int().min(1),
  head: z.string().regex(HEX64),
  session: z.number().int().min(1),
  /** Wall-clock ms when signed. */
  time: z.number().int().min(0),
});
export type CheckpointPayload = z.infer<typeof checkpointPayload>;

/** A signed statement `{payload, kid, sig}` (the envelope shape, without envelope freshness rules: these are kept for years). */
export interface SignedStatement<P> {
  readonly payload: P;
  readonly kid: string;
  readonly sig: string;
}

const signedStatement = <S extends z.ZodType>(payload: S) =>
  z.strictObject({ payload, kid: z.string().min(1).max(64), sig: z.string().regex(/^[A-Za-z0-9_-]{86}$/) });

export const signedCheckpoint = signedStatement(checkpointPayload);
export type SignedCheckpoint = SignedStatement<CheckpointPayload>;

export function signCheckpoint(key: SigningKey, payload: Omit<CheckpointPayload, 'typ'>): SignedCheckpoint {
  const body: CheckpointPayload = { typ: CHECKPOINT_TYPE, ...payload };
  return { payload: body, kid: key.kid, sig: sign(null, Buffer.from(canonicalize(body)), key.privateKey).toString('base64url') };
}

/** True when `statement.sig` is the signature of `publicKey` over the canonical payload. Says nothing about who the key is. */
export function statementSignatureValid(statement: SignedStatement<unknown>, publicKey: KeyObject): boolean {
  const sig = Buffer.from(statement.sig, 'base64url');
  if (sig.length !== 64) return false;
  try {
    return verify(null, Buffer.from(canonicalize(statement.payload)), publicKey, sig);
  } catch {
    return false;
  }
}

/**
 * The controller's receipt: it holds and has verified the chain up to
 * `{seq, head}`. It is an ordinary envelope (iat/exp/nonce, `sub` = the
 * device) for the live link, and stays checkable offline by its signature.
 */
export const receiptPayload = z.strictObject({
  typ: z.literal(RECEIPT_TYPE),
  sub: z.string().min(1).max(64),
  chain: z.string().regex(CHAIN_ID),
  seq: z.number().int().min(1),
  head: z.string().regex(HEX64),
  iat: z.number().int(),
  exp: z.number().int(),
  nonce: z.string().min(8).max(128),
});
export type ReceiptPayload = z.infer<typeof receiptPayload>;
export const signedReceipt = signedStatement(receiptPayload);
export type SignedReceipt = SignedStatement<ReceiptPayload>;

/**
 * A shipped batch: contiguous events of one chain ending exactly at the
 * checkpoint that covers them. Not signed as a whole: the checkpoint
 * authenticates every event through the hash links, and anything else in
 * the message is checked against them.
 */
export const batchMessage = z.strictObject({
  typ: z.literal(BATCH_TYPE),
  v: z.literal(AUDIT_EVENT_VERSION),
  chain: z.string().regex(CHAIN_ID),
  /** Canonical event texts, ascending seq. */
  events: z.array(z.string().max(MAX_EVENT_BYTES)).min(1).max(5000),
  checkpoint: signedCheckpoint,
});
export type BatchMessage = z.infer<typeof batchMessage>;

export const MAX_BATCH_BYTES = 1024 * 1024;

export function parseBatch(raw: Uint8Array): BatchMessage {
  if (raw.byteLength > MAX_BATCH_BYTES) {
    throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `audit batch is ${raw.byteLength} bytes, limit ${MAX_BATCH_BYTES}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(raw).toString('utf8'));
  } catch {
    throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, 'audit batch is not JSON');
  }
  const result = batchMessage.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new WardError(ErrorCodes.AUDIT_BATCH_INVALID, `audit batch field ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
}

export function seqKey(seq: number): string {
  return seq.toString().padStart(16, '0');
}

/** Where an event sits: what the journal (or a test) decides, as opposed to what the caller reports. */
export interface EventPosition {
  readonly chain: string;
  readonly seq: number;
  readonly prev: string;
  readonly session: number;
  readonly boot: string;
  readonly time: number;
  readonly mono: number;
}

/** Builds, encodes and hashes one event. `input` must already be sanitised (sanitizeInput). */
export function makeEvent(position: EventPosition, input: AuditEventInput): ParsedEvent {
  const event: AuditEvent = {
    v: AUDIT_EVENT_VERSION,
    chain: position.chain,
    seq: position.seq,
    session: position.session,
    boot: position.boot,
    time: Math.floor(position.time),
    mono: Math.max(0, Math.floor(position.mono)),
    category: input.category,
    actor: input.actor,
    action: input.action,
    ...(input.target !== undefined ? { target: input.target } : {}),
    outcome: input.outcome,
    ...(input.code !== undefined ? { code: input.code } : {}),
    ...(input.details !== undefined ? { details: input.details as Record<string, unknown> } : {}),
    prev: position.prev,
  };
  const text = encodeEvent(event);
  return { event, text, hash: hashEventText(text) };
}

export function newChainId(): string {
  return randomBytes(16).toString('base64url');
}
