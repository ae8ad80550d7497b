import type { KeyObject } from 'node:crypto';
import {
  type AuditEvent,
  GENESIS_PREV,
  JournalActions,
  type ParsedEvent,
  parseEventText,
  type SignedStatement,
  signedCheckpoint,
  signedReceipt,
  statementSignatureValid,
} from './event.js';

/**
 * The pure, streaming verifier of audit chains (format: event.ts). The
 * controller runs it per shipped batch, resuming from stored state; the CLI
 * runs it over exports of a million events. So it never holds the stream:
 * it keeps the last `window` seq→hash entries (to compare checkpoints,
 * receipts, duplicates and forks), at most 64 statements waiting for their
 * event, at most 100 missing ranges and at most `maxFindings` findings.
 *
 * What counts as authenticated: an event is sealed only when a validly
 * signed checkpoint names the hash of an event at or after it, reachable
 * through unbroken `prev` links. Events after the last such checkpoint are
 * reported, never assumed good (journald's CVE-2023-31439 was trusting
 * entries after the last seal). A damaged spot yields one finding and the
 * verifier resynchronises on the next event, so one edit does not bury
 * every later problem under a cascade.
 */

export type FindingSeverity = 'error' | 'warning' | 'info';
export type FindingKind =
  | 'malformed'
  | 'bad-signature'
  | 'broken-link'
  | 'gap'
  | 'declared-gap'
  | 'reordered'
  | 'duplicate'
  | 'fork'
  | 'checkpoint-mismatch'
  | 'receipt-mismatch'
  | 'truncated'
  | 'unsealed-tail'
  | 'unanchored'
  | 'restart'
  | 'unexplained-restart'
  | 'wrong-chain'
  | 'session-unstitched'
  | 'time-reversed'
  | 'overflow'
  | 'receipt-unchecked'
  /** info: a valid checkpoint or receipt whose event is not held (missing, or older than the window), so its head could not be compared. */
  | 'unchecked';

export interface Finding {
  readonly kind: FindingKind;
  readonly severity: FindingSeverity;
  readonly chain?: string;
  readonly seq?: number;
  readonly message: string;
}

export interface VerifierAnchor {
  readonly chain: string;
  readonly seq: number;
  readonly head: string;
  /** 0 when unknown: the first event's session is then taken as the baseline. */
  readonly session: number;
  readonly mono?: number;
}

export interface ChainVerifierOptions {
  readonly deviceKey: { readonly kid: string; readonly publicKey: KeyObject };
  readonly controllerKey?: { readonly kid: string; readonly publicKey: KeyObject };
  /** A trusted starting point (controller's stored head, or resumption). */
  readonly anchor?: VerifierAnchor;
  /** Recent seq→hash entries kept, default 4096. */
  readonly window?: number;
  /** Default 1000; beyond it findings are only counted in findingsOmitted. */
  readonly maxFindings?: number;
}

export interface ChainSummary {
  readonly chain: string;
  readonly firstSeq: number;
  readonly lastSeq: number;
  /** Highest seq covered by a valid, matching checkpoint (or the anchor); 0 when none. */
  readonly sealedThrough: number;
  readonly sessions: number;
}

export interface Verdict {
  /** No error-severity findings (omitted ones included). */
  readonly ok: boolean;
  readonly status: 'intact' | 'intact-with-warnings' | 'broken';
  /** Events read, excluding malformed ones (duplicates and out-of-order events included). */
  readonly events: number;
  /** Events authenticated by a later valid checkpoint through unbroken links; each counted once. */
  readonly sealedEvents: number;
  readonly chains: readonly ChainSummary[];
  readonly lastCheckpoint?: { readonly chain: string; readonly seq: number; readonly head: string; readonly time: number };
  readonly findings: readonly Finding[];
  readonly findingsOmitted: number;
  /** Findings by severity, omitted ones included: what the status line reports. */
  readonly counts: { readonly error: number; readonly warning: number; readonly info: number };
}

/** JSON-serialisable; session 0 and lastMono 0 mean "unknown". Resume with `anchorFromState`. */
export interface VerifierState {
  chain: string;
  lastSeq: number;
  lastHash: string;
  session: number;
  lastMono: number;
  sealedThrough: number;
}

/** Sizes of what the verifier retains; for tests and diagnostics. */
export interface VerifierFootprint {
  readonly windowEntries: number;
  readonly pending: number;
  readonly missingRanges: number;
  readonly chains: number;
  readonly findings: number;
}

export function anchorFromState(state: VerifierState): VerifierAnchor {
  return { chain: state.chain, seq: state.lastSeq, head: state.lastHash, session: state.session, mono: state.lastMono };
}

/** Text from the file under test goes into findings clipped: a hostile export must not inflate the verdict. */
const MAX_QUOTED = 200;
function clip(text: string): string {
  return text.length > MAX_QUOTED ? `${text.slice(0, MAX_QUOTED)}…(+${text.length - MAX_QUOTED} chars)` : text;
}
function quoted(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return clip(text);
}

const DEFAULT_WINDOW = 4096;
const DEFAULT_MAX_FINDINGS = 1000;
const MAX_PENDING = 64;
const MAX_MISSING_RANGES = 100;
const MAX_MALFORMED_RUN = 100;
/** A stream restarting thousands of times is already broken; past this, the oldest chain's bookkeeping is settled and dropped. */
const MAX_CHAINS = 1024;
const HEX64 = /^[0-9a-f]{64}$/;

/** A run of events joined by valid prev links: a checkpoint vouches for its segment only. */
interface Segment {
  lastN: number;
  lastSeq: number;
  sealedN: number;
  sealedSeq: number | undefined;
  /** Undefined exactly when every event of the segment is sealed. */
  firstUnsealedSeq: number | undefined;
}

interface Entry {
  readonly seq: number;
  readonly hash: string;
  /** Ordinal among linked-in events: sealing credit is a difference of these. */
  readonly n: number;
  readonly seg: Segment;
  /** Seq of the next event in the same segment, once it arrived. */
  next: number | undefined;
}

interface ChainRecord {
  readonly chain: string;
  firstSeq: number | undefined;
  lastSeq: number;
  /** Statements at or below this seq concern history before the stream, vouched for by the anchor or already flagged. */
  readonly floorSeq: number;
  sealedThrough: number;
  sessions: number;
  lastSession: number | undefined;
  tail: Segment | undefined;
}

interface Position {
  readonly record: ChainRecord;
  lastSeq: number;
  lastHash: string;
  session: number | undefined;
  lastMono: number | undefined;
  entry: Entry;
}

interface Statement {
  readonly type: 'checkpoint' | 'receipt';
  readonly chain: string;
  readonly seq: number;
  readonly head: string;
  readonly time: number;
}

interface MissingRange {
  readonly chain: string;
  readonly from: number;
  readonly to: number;
  readonly at: number;
}

const short = (hash: string) => `${hash.slice(0, 12)}…`;
const range = (from: number, to: number) => (from === to ? `seq ${from}` : `seq ${from}–${to}`);
const count = (n: number, word: string) => `${n.toLocaleString('en-US')} ${word}${n === 1 ? '' : 's'}`;
const nonEmptyString = (value: unknown): value is string => typeof value === 'string' && value.trim().length > 0;
const what = (s: Statement) => (s.type === 'checkpoint' ? 'checkpoint' : 'controller receipt');

export class ChainVerifier {
  readonly #deviceKey: ChainVerifierOptions['deviceKey'];
  readonly #controllerKey: ChainVerifierOptions['controllerKey'];
  readonly #optionAnchor: VerifierAnchor | undefined;
  readonly #windowSize: number;
  readonly #maxFindings: number;

  readonly #window = new Map<string, Entry>();
  readonly #ring: string[] = [];
  #ringPos = 0;
  readonly #chains = new Map<string, ChainRecord>();
  #pending: Statement[] = [];
  readonly #missing: MissingRange[] = [];
  /** Claimed seqs (undefined: unreadable) of malformed events since the last linked-in event: they explain a gap. */
  #malformedRun: (number | undefined)[] = [];

  #cur: Position | undefined;
  #started = false;
  #events = 0;
  #n = 0;
  #sealed = 0;
  #lastCheckpoint: Verdict['lastCheckpoint'];
  #receiptUncheckedReported = false;

  readonly #findings: Finding[] = [];
  #omitted = 0;
  readonly #counts = { error: 0, warning: 0, info: 0 };
  #verdict: Verdict | undefined;

  constructor(options: ChainVerifierOptions) {
    if (typeof options?.deviceKey?.kid !== 'string') throw new TypeError('ChainVerifier: deviceKey {kid, publicKey} is required');
    const window = options.window ?? DEFAULT_WINDOW;
    if (!Number.isSafeInteger(window) || window < 1) throw new TypeError(`ChainVerifier: window must be a positive integer, got ${window}`);
    const maxFindings = options.maxFindings ?? DEFAULT_MAX_FINDINGS;
    if (!Number.isSafeInteger(maxFindings) || maxFindings < 0) {
      throw new TypeError(`ChainVerifier: maxFindings must be a non-negative integer, got ${maxFindings}`);
    }
    const anchor = options.anchor;
    if (anchor !== undefined) {
      if (typeof anchor.chain !== 'string' || !Number.isSafeInteger(anchor.seq) || anchor.seq < 1 || !HEX64.test(anchor.head)) {
        throw new TypeError('ChainVerifier: anchor needs a chain id, a seq >= 1 and a 64-hex head');
      }
    }
    this.#deviceKey = options.deviceKey;
    this.#controllerKey = options.controllerKey;
    this.#optionAnchor = anchor;
    this.#windowSize = window;
    this.#maxFindings = maxFindings;
  }

  addEvent(text: string): void {
    this.#assertOpen('addEvent');
    if (typeof text !== 'string') throw new TypeError('ChainVerifier.addEvent takes the canonical event text');
    let parsed: ParsedEvent;
    try {
      parsed = parseEventText(text);
    } catch (err) {
      this.#malformedEvent(text, err);
      return;
    }
    this.#events++;
    if (this.#started && this.#cur !== undefined) {
      this.#place(this.#cur, parsed);
      return;
    }
    this.#started = true;
    this.#begin(parsed);
  }

  addCheckpoint(value: unknown): void {
    this.#assertOpen('addCheckpoint');
    const result = signedCheckpoint.safeParse(value);
    if (!result.success) {
      const seq = claimedSeq((value as { payload?: unknown } | null)?.payload);
      this.#add(
        'malformed',
        'error',
        undefined,
        seq,
        `a checkpoint${seq !== undefined ? ` claiming seq ${seq}` : ''} cannot be read (${issueText(result.error)}): it is ignored and authenticates nothing`,
      );
      return;
    }
    const cp = result.data;
    const p = cp.payload;
    if (!this.#signedBy(cp, this.#deviceKey, 'checkpoint', 'device', p)) return;
    this.#statement({ type: 'checkpoint', chain: p.chain, seq: p.seq, head: p.head, time: p.time });
  }

  addReceipt(value: unknown): void {
    this.#assertOpen('addReceipt');
    const result = signedReceipt.safeParse(value);
    if (!result.success) {
      const seq = claimedSeq((value as { payload?: unknown } | null)?.payload);
      this.#add(
        'malformed',
        'error',
        undefined,
        seq,
        `a controller receipt${seq !== undefined ? ` claiming seq ${seq}` : ''} cannot be read (${issueText(result.error)}): it is ignored`,
      );
      return;
    }
    const receipt = result.data;
    const p = receipt.payload;
    const key = this.#controllerKey;
    if (key === undefined) {
      // Without the controller's key a receipt is just a claim anyone could write, so it must not anchor or vouch for anything.
      if (!this.#receiptUncheckedReported) {
        this.#receiptUncheckedReported = true;
        this.#add(
          'receipt-unchecked',
          'info',
          undefined,
          undefined,
          'controller receipts are present but no controller key was given: they were not checked and vouch for nothing',
        );
      }
      return;
    }
    if (!this.#signedBy(receipt, key, 'receipt', 'controller', p)) return;
    this.#statement({ type: 'receipt', chain: p.chain, seq: p.seq, head: p.head, time: p.iat * 1000 });
  }

  /** One check for both kinds of statement: the named key, then its signature; a finding and false when either fails. */
  #signedBy(
    statement: SignedStatement<unknown>,
    key: { readonly kid: string; readonly publicKey: KeyObject },
    what: 'checkpoint' | 'receipt',
    owner: 'device' | 'controller',
    p: { readonly chain: string; readonly seq: number },
  ): boolean {
    if (statement.kid !== key.kid) {
      this.#add(
        'bad-signature',
        'error',
        p.chain,
        p.seq,
        `the ${what} for seq ${p.seq} names key ${statement.kid}, not the ${owner} key ${key.kid}: it is forged or from another ${owner}, and is ignored`,
      );
      return false;
    }
    if (!statementSignatureValid(statement, key.publicKey)) {
      this.#add(
        'bad-signature',
        'error',
        p.chain,
        p.seq,
        `the ${what} for seq ${p.seq} does not carry a valid ${owner} signature: it was altered or forged, and is ignored`,
      );
      return false;
    }
    return true;
  }

  state(): VerifierState | undefined {
    const cur = this.#cur;
    if (cur !== undefined) {
      return {
        chain: cur.record.chain,
        lastSeq: cur.lastSeq,
        lastHash: cur.lastHash,
        session: cur.session ?? 0,
        lastMono: cur.lastMono ?? 0,
        sealedThrough: cur.record.sealedThrough,
      };
    }
    const anchor = this.#provisionalAnchor();
    if (anchor === undefined) return undefined;
    return { chain: anchor.chain, lastSeq: anchor.seq, lastHash: anchor.head, session: anchor.session, lastMono: anchor.mono ?? 0, sealedThrough: anchor.seq };
  }

  footprint(): VerifierFootprint {
    return {
      windowEntries: this.#window.size,
      pending: this.#pending.length,
      missingRanges: this.#missing.length,
      chains: this.#chains.size,
      findings: this.#findings.length,
    };
  }

  finish(): Verdict {
    if (this.#verdict !== undefined) return this.#verdict;
    if (!this.#started && this.#optionAnchor !== undefined) {
      // Statements about the anchored chain can still be judged (truncation) even if no event came.
      this.#started = true;
      const cur = this.#seedAnchor(this.#optionAnchor);
      this.#resolvePending(cur.record.chain, cur.lastSeq);
    }
    if (!this.#started) {
      // No event at all, only receipts: a journal whose every event the controller acknowledged and that was then
      // pruned. The newest receipt is where it stands; a checkpoint beyond it would still show a cut tail.
      let newest: Statement | undefined;
      for (const st of this.#pending) if (st.type === 'receipt' && (newest === undefined || st.seq > newest.seq)) newest = st;
      if (newest !== undefined) {
        this.#started = true;
        this.#seedAnchor({ chain: newest.chain, seq: newest.seq, head: newest.head, session: 0 });
        this.#resolvePending(newest.chain, newest.seq);
      }
    }
    const truncated = new Map<string, { record: ChainRecord; seq: number; type: Statement['type']; others: number }>();
    for (const s of this.#pending) {
      const record = this.#chains.get(s.chain);
      if (record === undefined) {
        this.#add(
          'wrong-chain',
          'error',
          s.chain,
          s.seq,
          `a valid ${what(s)} covers seq ${s.seq} of chain ${s.chain}, but no event of that chain is in this stream: it belongs to another journal, or that chain's events were removed entirely`,
        );
      } else if (s.seq > record.lastSeq) {
        const known = truncated.get(s.chain);
        if (known === undefined) truncated.set(s.chain, { record, seq: s.seq, type: s.type, others: 0 });
        else if (s.seq > known.seq) truncated.set(s.chain, { record, seq: s.seq, type: s.type, others: known.others + 1 });
        else known.others++;
      } else {
        this.#evaluate(record, s);
      }
    }
    this.#pending = [];
    for (const { record, seq, type, others } of truncated.values()) {
      const also = others > 0 ? ` (and ${count(others, 'more statement')} beyond the end)` : '';
      this.#add(
        'truncated',
        'error',
        record.chain,
        seq,
        `events of chain ${record.chain} end at seq ${record.lastSeq}, but a valid ${type === 'checkpoint' ? 'checkpoint' : 'controller receipt'} covers seq ${seq}${also}: ${range(record.lastSeq + 1, seq)} existed and were signed, and have been cut off (truncated export or deleted tail)`,
      );
    }
    for (const record of this.#chains.values()) this.#reportTail(record);

    const chains: ChainSummary[] = [];
    for (const r of this.#chains.values()) {
      if (r.firstSeq === undefined) continue;
      chains.push(Object.freeze({ chain: r.chain, firstSeq: r.firstSeq, lastSeq: r.lastSeq, sealedThrough: r.sealedThrough, sessions: r.sessions }));
    }
    const counts = Object.freeze({ ...this.#counts });
    this.#verdict = Object.freeze({
      ok: counts.error === 0,
      status: counts.error > 0 ? 'broken' : counts.warning > 0 ? 'intact-with-warnings' : 'intact',
      events: this.#events,
      sealedEvents: this.#sealed,
      chains: Object.freeze(chains),
      ...(this.#lastCheckpoint !== undefined ? { lastCheckpoint: this.#lastCheckpoint } : {}),
      findings: Object.freeze([...this.#findings]),
      findingsOmitted: this.#omitted,
      counts,
    });
    return this.#verdict;
  }

  // -------------------------------------------------------------------------
  // Events
  // -------------------------------------------------------------------------

  #begin(p: ParsedEvent): void {
    const ev = p.event;
    // A receipt that arrived first anchors the stream only if it lies before the first event; otherwise it is an early receipt to check.
    let best: Statement | undefined;
    for (const s of this.#pending) {
      if (s.type === 'receipt' && s.chain === ev.chain && s.seq < ev.seq && (best === undefined || s.seq > best.seq)) best = s;
    }
    const option = this.#optionAnchor;
    let anchor: VerifierAnchor | undefined = option;
    if (best !== undefined && !(option !== undefined && option.chain === ev.chain && option.seq >= best.seq)) {
      anchor = { chain: best.chain, seq: best.seq, head: best.head, session: 0 };
    }
    if (anchor !== undefined) {
      const cur = this.#seedAnchor(anchor);
      this.#resolvePending(anchor.chain, anchor.seq);
      this.#place(cur, p);
      return;
    }
    if (!(ev.seq === 1 && ev.prev === GENESIS_PREV && ev.action === JournalActions.chainStart)) {
      this.#add(
        'unanchored',
        'warning',
        ev.chain,
        ev.seq,
        `the stream begins at seq ${ev.seq} of chain ${ev.chain}, which is not a chain start (seq 1, audit.chain-start, genesis prev), and no anchor or controller receipt vouches for what came before: earlier events may be missing, and only what follows can be checked`,
      );
    }
    this.#openChain(p);
  }

  #place(cur: Position, p: ParsedEvent): void {
    const ev = p.event;
    if (ev.chain === cur.record.chain) {
      if (ev.seq <= cur.lastSeq) this.#revisit(p, `seq ${cur.lastSeq}`);
      else this.#forward(cur, p);
      return;
    }
    // A stray copy of an earlier chain's event is one finding; taking it for a chain switch would report two restarts.
    const earlier = this.#chains.get(ev.chain);
    if (earlier !== undefined && ev.seq <= earlier.lastSeq) this.#revisit(p, `seq ${cur.lastSeq} of chain ${cur.record.chain}`);
    else this.#switchChain(cur, p);
  }

  #forward(cur: Position, p: ParsedEvent): void {
    const ev = p.event;
    const chain = ev.chain;
    const linked = ev.prev === cur.lastHash;
    if (ev.prev === GENESIS_PREV && !linked) {
      this.#add(
        'unexplained-restart',
        'error',
        chain,
        ev.seq,
        `seq ${ev.seq} of chain ${chain} starts over (its prev is the genesis value) after seq ${cur.lastSeq}: the journal was reset in place or the event was forged; nothing links it to seq ${cur.lastSeq} and before`,
      );
      this.#openChain(p);
      return;
    }
    let lenient = false;
    if (ev.seq === cur.lastSeq + 1) {
      if (!linked) {
        this.#add(
          'broken-link',
          'error',
          chain,
          ev.seq,
          `seq ${ev.seq} does not link to seq ${cur.lastSeq}: its prev ${short(ev.prev)} is not the hash ${short(cur.lastHash)} of the event before it, so seq ${cur.lastSeq} (or the history before it) was edited or replaced; checkpoints after seq ${ev.seq} vouch for nothing before it`,
        );
      }
    } else {
      const from = cur.lastSeq + 1;
      const to = ev.seq - 1;
      const missing = to - from + 1;
      // A jump may also hide a session-start: judge sessions after a gap leniently rather than report the same damage twice.
      lenient = true;
      this.#recordMissing(chain, from, to, ev.seq);
      const d = ev.details;
      if (ev.action === JournalActions.gap && linked && d?.from === from && d.to === to && nonEmptyString(d.reason)) {
        this.#add(
          'declared-gap',
          'warning',
          chain,
          ev.seq,
          `${range(from, to)} of chain ${chain} (${count(missing, 'event')}) ${missing === 1 ? 'is' : 'are'} missing, declared by the audit.gap event at seq ${ev.seq} (reason: ${quoted(d.reason)}): the journal knew it lost them; what they recorded is gone, the chain around them is intact`,
        );
      } else if (!this.#malformedExplains(from, to)) {
        const declared =
          ev.action === JournalActions.gap
            ? ` The audit.gap event at seq ${ev.seq} does not declare exactly this range with a reason and a link to seq ${cur.lastSeq}.`
            : '';
        this.#add(
          'gap',
          'error',
          chain,
          ev.seq,
          `${range(from, to)} of chain ${chain} (${count(missing, 'event')}) ${missing === 1 ? 'is' : 'are'} missing between seq ${cur.lastSeq} and seq ${ev.seq}, undeclared: they were deleted or lost, and nothing here shows what they recorded.${declared}`,
        );
      }
    }
    const entry = linked ? this.#append(cur, p) : this.#newSegment(cur.record, p);
    this.#checkSession(cur, ev, lenient);
    cur.entry = entry;
    cur.lastSeq = ev.seq;
    cur.lastHash = p.hash;
    this.#afterPlaced(cur.record, ev);
  }

  #switchChain(cur: Position, p: ParsedEvent): void {
    const ev = p.event;
    const reason = ev.details?.reason;
    const isStart = ev.seq === 1 && ev.prev === GENESIS_PREV && ev.action === JournalActions.chainStart;
    const old = `chain ${cur.record.chain} (last seq ${cur.lastSeq})`;
    if (isStart && nonEmptyString(reason)) {
      this.#add(
        'restart',
        'warning',
        ev.chain,
        ev.seq,
        `a new chain ${ev.chain} starts after ${old}, reason: ${quoted(reason)}: the journal was restarted; nothing links the two chains, so events the old chain recorded after seq ${cur.lastSeq}, if any, cannot be accounted for`,
      );
    } else if (isStart) {
      this.#add(
        'unexplained-restart',
        'error',
        ev.chain,
        ev.seq,
        `a new chain ${ev.chain} starts after ${old} without a reason in its audit.chain-start: the journal was reset without saying why; treat events of the old chain after seq ${cur.lastSeq} as possibly lost`,
      );
    } else {
      this.#add(
        'unexplained-restart',
        'error',
        ev.chain,
        ev.seq,
        `seq ${ev.seq} of chain ${ev.chain} follows ${old}, but a new chain must begin at seq 1 with an audit.chain-start (genesis prev) giving a reason: the journal was replaced, or the beginning of chain ${ev.chain} is missing`,
      );
    }
    this.#openChain(p);
  }

  #revisit(p: ParsedEvent, after: string): void {
    const ev = p.event;
    const entry = this.#window.get(windowKey(ev.chain, ev.seq));
    if (entry !== undefined) {
      if (entry.hash === p.hash) {
        this.#add(
          'duplicate',
          'info',
          ev.chain,
          ev.seq,
          `seq ${ev.seq} appears again with identical content after ${after}: a repeated copy, harmless; it is not linked in a second time`,
        );
      } else {
        this.#add(
          'fork',
          'error',
          ev.chain,
          ev.seq,
          `two different events claim seq ${ev.seq} of chain ${ev.chain} (hashes ${short(entry.hash)} and ${short(p.hash)}): the journal was forked or an event replaced; at most one of them is genuine and checkpoints decide which`,
        );
      }
      return;
    }
    const gap = this.#findMissing(ev.chain, ev.seq);
    if (gap !== undefined) {
      this.#add(
        'reordered',
        'error',
        ev.chain,
        ev.seq,
        `seq ${ev.seq} arrives after ${after} although it was missing (gap reported at seq ${gap.at}): the events are out of order or this one was inserted later; it is not linked into the chain and nothing vouches for it`,
      );
    } else {
      this.#add(
        'reordered',
        'error',
        ev.chain,
        ev.seq,
        `seq ${ev.seq} reappears after ${after}, too far back to compare with what was seen: a replayed or out-of-order event; it is not linked into the chain and nothing vouches for it`,
      );
    }
  }

  #openChain(p: ParsedEvent): void {
    const ev = p.event;
    let record = this.#chains.get(ev.chain);
    if (record === undefined) {
      record = {
        chain: ev.chain,
        firstSeq: undefined,
        lastSeq: ev.seq,
        floorSeq: ev.seq - 1,
        sealedThrough: 0,
        sessions: 0,
        lastSession: undefined,
        tail: undefined,
      };
    } else {
      // Keeps insertion order = recency, so eviction below drops the chain least recently active.
      this.#chains.delete(ev.chain);
    }
    this.#chains.set(ev.chain, record);
    if (this.#chains.size > MAX_CHAINS) {
      const [oldest] = this.#chains.values();
      if (oldest !== undefined && oldest !== record) {
        this.#reportTail(oldest);
        this.#chains.delete(oldest.chain);
      }
    }
    const entry = this.#newSegment(record, p);
    const cur: Position = { record, lastSeq: ev.seq, lastHash: p.hash, session: undefined, lastMono: undefined, entry };
    this.#checkSession(cur, ev, true);
    this.#cur = cur;
    this.#afterPlaced(record, ev);
  }

  #seedAnchor(anchor: VerifierAnchor): Position {
    const record: ChainRecord = {
      chain: anchor.chain,
      firstSeq: undefined,
      lastSeq: anchor.seq,
      floorSeq: anchor.seq,
      sealedThrough: anchor.seq,
      sessions: 0,
      lastSession: undefined,
      tail: undefined,
    };
    this.#chains.set(anchor.chain, record);
    // The anchor is trusted, so its own entry counts as already sealed: a checkpoint at its seq earns no credit.
    const seg: Segment = { lastN: this.#n, lastSeq: anchor.seq, sealedN: this.#n, sealedSeq: anchor.seq, firstUnsealedSeq: undefined };
    const entry: Entry = { seq: anchor.seq, hash: anchor.head, n: this.#n, seg, next: undefined };
    this.#remember(anchor.chain, entry);
    const cur: Position = {
      record,
      lastSeq: anchor.seq,
      lastHash: anchor.head,
      session: anchor.session >= 1 ? anchor.session : undefined,
      lastMono: anchor.mono,
      entry,
    };
    this.#cur = cur;
    return cur;
  }

  #append(cur: Position, p: ParsedEvent): Entry {
    const n = ++this.#n;
    const seg = cur.entry.seg;
    seg.lastN = n;
    seg.lastSeq = p.event.seq;
    seg.firstUnsealedSeq ??= p.event.seq;
    cur.entry.next = p.event.seq;
    const entry: Entry = { seq: p.event.seq, hash: p.hash, n, seg, next: undefined };
    this.#remember(p.event.chain, entry);
    this.#touch(cur.record, p.event, seg);
    return entry;
  }

  #newSegment(record: ChainRecord, p: ParsedEvent): Entry {
    const n = ++this.#n;
    const seg: Segment = { lastN: n, lastSeq: p.event.seq, sealedN: n - 1, sealedSeq: undefined, firstUnsealedSeq: p.event.seq };
    const entry: Entry = { seq: p.event.seq, hash: p.hash, n, seg, next: undefined };
    this.#remember(p.event.chain, entry);
    this.#touch(record, p.event, seg);
    return entry;
  }

  #touch(record: ChainRecord, ev: AuditEvent, seg: Segment): void {
    record.tail = seg;
    record.lastSeq = Math.max(record.lastSeq, ev.seq);
    if (record.firstSeq === undefined) {
      record.firstSeq = ev.seq;
      record.sessions = 1;
    } else if (ev.session !== record.lastSession) {
      record.sessions++;
    }
    record.lastSession = ev.session;
  }

  #checkSession(cur: Position, ev: AuditEvent, lenient: boolean): void {
    const before = cur.session;
    if (before === undefined) {
      cur.session = ev.session;
      cur.lastMono = ev.mono;
      return;
    }
    if (ev.session < before) {
      this.#add(
        'session-unstitched',
        'error',
        ev.chain,
        ev.seq,
        `seq ${ev.seq} belongs to session ${ev.session}, after session ${before} had begun: events of an older agent run appear after a newer one (rolled-back or spliced journal); their order cannot be trusted`,
      );
    } else if (ev.session > before) {
      const declared = ev.action === JournalActions.sessionStart ? ev.details?.previousSession : undefined;
      if (declared !== before && !lenient) {
        const said =
          ev.action === JournalActions.sessionStart ? `its audit.session-start names previousSession ${quoted(declared)}` : 'it is not an audit.session-start';
        this.#add(
          'session-unstitched',
          'error',
          ev.chain,
          ev.seq,
          `seq ${ev.seq} begins session ${ev.session} after session ${before}, but ${said}: the start of the new agent run is missing or the events were spliced in from elsewhere`,
        );
      }
    } else {
      if (cur.lastMono !== undefined && ev.mono < cur.lastMono) {
        this.#add(
          'time-reversed',
          'warning',
          ev.chain,
          ev.seq,
          `the monotonic clock goes back from ${cur.lastMono} to ${ev.mono} ms at seq ${ev.seq} within session ${ev.session}: events were recorded out of order or the time source was tampered with; do not rely on their timing`,
        );
      }
      cur.lastMono = ev.mono;
      return;
    }
    // A new session has its own monotonic origin.
    cur.session = ev.session;
    cur.lastMono = ev.mono;
  }

  #afterPlaced(record: ChainRecord, ev: AuditEvent): void {
    this.#malformedRun = [];
    if (ev.action === JournalActions.overflow) {
      const n = ev.details?.count;
      const how = typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? count(n, 'event') : 'an unknown number of events';
      this.#add(
        'overflow',
        'warning',
        ev.chain,
        ev.seq,
        `seq ${ev.seq} records that ${how} could not be stored individually (journal full) and are only summarised here: what exactly they recorded cannot be verified one by one`,
      );
    }
    this.#resolvePending(record.chain, ev.seq);
  }

  #malformedEvent(text: string, err: unknown): void {
    let seq: number | undefined;
    let chain: string | undefined;
    try {
      const raw: unknown = JSON.parse(text);
      seq = claimedSeq(raw);
      const c = (raw as { chain?: unknown } | null)?.chain;
      if (typeof c === 'string' && c.length <= 64) chain = c;
    } catch {
      // Unreadable text claims nothing.
    }
    const reason = clip(err instanceof Error ? err.message : String(err));
    const after = this.#cur !== undefined ? ` after seq ${this.#cur.lastSeq}` : '';
    const subject = seq !== undefined ? `the event claiming seq ${seq}` : `an event${after}`;
    this.#add(
      'malformed',
      'error',
      chain,
      seq,
      `${subject} cannot be read (${reason}): its content cannot be verified and must not be trusted, and the chain is re-joined at the next readable event`,
    );
    if (this.#malformedRun.length < MAX_MALFORMED_RUN) this.#malformedRun.push(seq);
  }

  /** A gap made only of events already reported as malformed is the same damage: not reported twice. */
  #malformedExplains(from: number, to: number): boolean {
    let known = 0;
    let unknown = 0;
    for (const seq of this.#malformedRun) {
      if (seq === undefined) unknown++;
      else if (seq >= from && seq <= to) known++;
    }
    return known + unknown >= to - from + 1;
  }

  #recordMissing(chain: string, from: number, to: number, at: number): void {
    if (this.#missing.length >= MAX_MISSING_RANGES) this.#missing.shift();
    this.#missing.push({ chain, from, to, at });
  }

  #findMissing(chain: string, seq: number): MissingRange | undefined {
    for (let i = this.#missing.length - 1; i >= 0; i--) {
      const m = this.#missing[i];
      if (m !== undefined && m.chain === chain && seq >= m.from && seq <= m.to) return m;
    }
    return undefined;
  }

  #remember(chain: string, entry: Entry): void {
    const key = windowKey(chain, entry.seq);
    if (this.#window.has(key)) {
      // Only after a chain reused its seqs (already reported); the ring slot stays, so this entry may leave the window early.
      this.#window.set(key, entry);
      return;
    }
    if (this.#ring.length < this.#windowSize) {
      this.#ring.push(key);
    } else {
      const old = this.#ring[this.#ringPos];
      if (old !== undefined) this.#window.delete(old);
      this.#ring[this.#ringPos] = key;
      this.#ringPos = (this.#ringPos + 1) % this.#windowSize;
    }
    this.#window.set(key, entry);
  }

  // -------------------------------------------------------------------------
  // Checkpoints and receipts
  // -------------------------------------------------------------------------

  #statement(s: Statement): void {
    const record = this.#started ? this.#chains.get(s.chain) : undefined;
    if (record === undefined || s.seq > record.lastSeq) this.#pend(s);
    else this.#evaluate(record, s);
  }

  #pend(s: Statement): void {
    if (this.#pending.length >= MAX_PENDING) {
      const dropped = this.#pending.shift();
      if (dropped !== undefined) {
        this.#add(
          'unchecked',
          'info',
          dropped.chain,
          dropped.seq,
          `more than ${MAX_PENDING} checkpoints and receipts wait for events they cover; the ${what(dropped)} for seq ${dropped.seq} of chain ${dropped.chain} was dropped unchecked and vouches for nothing`,
        );
      }
    }
    this.#pending.push(s);
  }

  #resolvePending(chain: string, seq: number): void {
    if (this.#pending.length === 0) return;
    const due: Statement[] = [];
    const keep: Statement[] = [];
    for (const s of this.#pending) (s.chain === chain && s.seq <= seq ? due : keep).push(s);
    if (due.length === 0) return;
    this.#pending = keep;
    for (const s of due) this.#statement(s);
  }

  #evaluate(record: ChainRecord, s: Statement): void {
    const entry = this.#window.get(windowKey(s.chain, s.seq));
    if (entry === undefined) {
      if (s.seq <= record.floorSeq) return;
      const gap = this.#findMissing(s.chain, s.seq);
      const why =
        gap !== undefined
          ? `the event at seq ${s.seq} is missing from the stream (reported at seq ${gap.at})`
          : `the event at seq ${s.seq} is no longer held (older than the window of ${count(this.#windowSize, 'event')}, or never linked in)`;
      this.#add(
        'unchecked',
        'info',
        s.chain,
        s.seq,
        `a valid ${what(s)} covers seq ${s.seq} of chain ${s.chain}, but ${why}: its head ${short(s.head)} could not be compared and it vouches for nothing here`,
      );
      return;
    }
    if (entry.hash !== s.head) {
      if (s.type === 'checkpoint') {
        this.#add(
          'checkpoint-mismatch',
          'error',
          s.chain,
          s.seq,
          `the device signed seq ${s.seq} of chain ${s.chain} with head ${short(s.head)}, but the event here hashes to ${short(entry.hash)}: the event at seq ${s.seq} or the history before it was rewritten after it was sealed`,
        );
      } else {
        this.#add(
          'receipt-mismatch',
          'error',
          s.chain,
          s.seq,
          `the controller received seq ${s.seq} of chain ${s.chain} with head ${short(s.head)}, but the event here hashes to ${short(entry.hash)}: the event or the history before it was rewritten after the controller received it; the controller's copy is the authentic one`,
        );
      }
      return;
    }
    if (s.type !== 'checkpoint') return;
    const seg = entry.seg;
    if (entry.n > seg.sealedN) {
      this.#sealed += entry.n - seg.sealedN;
      seg.sealedN = entry.n;
      seg.sealedSeq = entry.seq;
      seg.firstUnsealedSeq = entry.next;
    }
    record.sealedThrough = Math.max(record.sealedThrough, s.seq);
    this.#lastCheckpoint = Object.freeze({ chain: s.chain, seq: s.seq, head: s.head, time: s.time });
  }

  #reportTail(record: ChainRecord): void {
    const seg = record.tail;
    if (seg === undefined || seg.lastN <= seg.sealedN || seg.firstUnsealedSeq === undefined) return;
    const n = seg.lastN - seg.sealedN;
    const after = seg.sealedSeq !== undefined ? `after the last valid checkpoint (seq ${seg.sealedSeq})` : 'and no valid checkpoint covers them';
    this.#add(
      'unsealed-tail',
      'warning',
      record.chain,
      seg.firstUnsealedSeq,
      `${count(n, 'event')} of chain ${record.chain}, ${range(seg.firstUnsealedSeq, seg.lastSeq)}, come ${after}: they are not authenticated, and anyone able to write the journal could have added or changed them`,
    );
  }

  #provisionalAnchor(): VerifierAnchor | undefined {
    let anchor = this.#optionAnchor;
    for (const s of this.#pending) {
      if (s.type !== 'receipt') continue;
      if (anchor === undefined || (s.chain === anchor.chain && s.seq > anchor.seq)) anchor = { chain: s.chain, seq: s.seq, head: s.head, session: 0 };
    }
    return anchor;
  }

  #add(kind: FindingKind, severity: FindingSeverity, chain: string | undefined, seq: number | undefined, message: string): void {
    this.#counts[severity]++;
    if (this.#findings.length >= this.#maxFindings) {
      this.#omitted++;
      return;
    }
    this.#findings.push(Object.freeze({ kind, severity, ...(chain !== undefined ? { chain } : {}), ...(seq !== undefined ? { seq } : {}), message }));
  }

  #assertOpen(method: string): void {
    if (this.#verdict !== undefined) throw new TypeError(`ChainVerifier.${method} called after finish()`);
  }
}

function windowKey(chain: string, seq: number): string {
  return `${chain}:${seq}`;
}

function claimedSeq(value: unknown): number | undefined {
  const seq = (value as { seq?: unknown } | null | undefined)?.seq;
  return typeof seq === 'number' && Number.isSafeInteger(seq) ? seq : undefined;
}

function issueText(error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }): string {
  const issue = error.issues[0];
  if (issue === undefined) return 'invalid';
  return `${issue.path.map(String).join('.') || '(root)'}: ${issue.message}`;
}

/** The verdict as a person reads it: the status first, then each chain, then every finding with its seq. */
export function describeVerdict(v: Verdict): string {
  const sealed = v.sealedEvents === v.events ? 'all sealed' : `${v.sealedEvents.toLocaleString('en-US')} sealed`;
  const scope = `${count(v.events, 'event')} in ${count(v.chains.length, 'chain')}, ${sealed}`;
  const lines: string[] = [];
  if (v.status === 'intact') lines.push(`INTACT: ${scope}`);
  else if (v.status === 'intact-with-warnings') lines.push(`INTACT WITH WARNINGS: ${count(v.counts.warning, 'warning')}; ${scope}`);
  else lines.push(`BROKEN: ${count(v.counts.error, 'error')}${v.counts.warning > 0 ? `, ${count(v.counts.warning, 'warning')}` : ''}; ${scope}`);
  for (const c of v.chains) {
    const sealedThrough = c.sealedThrough > 0 ? `sealed through seq ${c.sealedThrough.toLocaleString('en-US')}` : 'not sealed';
    lines.push(`  chain ${c.chain}: ${range(c.firstSeq, c.lastSeq)}, ${count(c.sessions, 'session')}, ${sealedThrough}`);
  }
  if (v.lastCheckpoint !== undefined) {
    // Date throws beyond ±8.64e15 ms, and a signed time is still only a claim.
    const at = Math.abs(v.lastCheckpoint.time) <= 8.64e15 ? new Date(v.lastCheckpoint.time).toISOString() : `time ${v.lastCheckpoint.time}`;
    lines.push(`  last checkpoint: chain ${v.lastCheckpoint.chain} seq ${v.lastCheckpoint.seq}, signed ${at}`);
  }
  if (v.findings.length > 0) lines.push('findings:');
  for (const f of v.findings) lines.push(`${f.severity}  ${f.kind}${f.seq !== undefined ? `  seq ${f.seq}` : ''}: ${f.message}`);
  if (v.findingsOmitted > 0) lines.push(`… and ${count(v.findingsOmitted, 'more finding')} not listed (limit reached)`);
  return lines.join('\n');
}
