import { type AuditEvent, JournalActions } from '../shared/audit/event.js';
import { WARD_VERSION } from '../version.js';

/**
 * SIEM renderings of one audit event (`ward audit export --format
 * cef|syslog|ocsf`, and the tail line a person reads). Pure: no I/O, no clock.
 *
 * These renderings are for search and alerting only. They drop the hash
 * links and checkpoints, so nothing in them can be verified: the evidence is
 * the jsonl export (export.ts) checked with `ward audit verify`.
 *
 * Event text is attacker-influenced (an unauthenticated peer picks the target
 * or a detail string), so every rendering escapes whatever could split a
 * record, forge a field or drive a terminal: a value must never become a
 * second line in a line-based collector, a new CEF key, or a closing SD bracket.
 */
export interface FormatContext {
  readonly deviceId?: string;
  readonly hostname?: string;
}

const CEF_VENDOR = 'Ward';
const CEF_PRODUCT = 'ward-agent';
/** Longest details JSON a CEF or syslog line carries (ArcSight string fields are bounded; collectors cut long lines). */
export const MAX_DETAILS_CHARS = 1024;
/** Details shown in a tail line: enough to recognise, short enough for one terminal line. */
const TEXT_DETAILS_CHARS = 160;

/** Syslog facility 13 "log audit" (RFC 5424 §6.2.1). */
const SYSLOG_FACILITY_AUDIT = 13;
/**
 * The SD-ID's enterprise number. 32473 is the number RFC 5612 reserves for
 * documentation: Ward has no IANA private enterprise number yet. Replace it
 * (here only) once one is assigned; collectors key their parsing on it.
 */
export const SYSLOG_SD_ID = 'ward@32473';

const isIntegrityLoss = (event: AuditEvent) => event.action === JournalActions.gap || event.action === JournalActions.overflow;
/** Refusals there are someone probing or being kept out, not a misconfigured peer. */
const isHostileRefusal = (event: AuditEvent) => event.outcome === 'refused' && (event.category === 'access-control' || event.category === 'reconnaissance');

/**
 * CEF severity 0-10: successes are routine (3); failures matter (6);
 * refusals of access or probing rank above ordinary refusals (7 vs 5); lost
 * audit evidence (a declared gap, an overflow) ranks highest (8).
 */
export function cefSeverity(event: AuditEvent): number {
  if (isIntegrityLoss(event)) return 8;
  if (event.outcome === 'success') return 3;
  if (event.outcome === 'failure') return 6;
  return isHostileRefusal(event) ? 7 : 5;
}

/** RFC 5424 severity: 6 informational, 4 warning, 3 error for hostile refusals and lost audit evidence. */
export function syslogSeverity(event: AuditEvent): number {
  if (isIntegrityLoss(event) || isHostileRefusal(event)) return 3;
  return event.outcome === 'success' ? 6 : 4;
}

export function syslogPri(event: AuditEvent): number {
  return SYSLOG_FACILITY_AUDIT * 8 + syslogSeverity(event);
}

// ---------------------------------------------------------------------------
// Escaping helpers
// ---------------------------------------------------------------------------

/** Cuts to at most `max` UTF-16 units, ending in "…" when cut, never splitting a surrogate pair. */
export function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}

/**
 * C0/C1 controls, line and paragraph separators, and bidirectional
 * overrides (which can make a terminal show text in another order than it
 * is stored: "Trojan Source", CVE-2021-42574).
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is this pattern's purpose
const UNSAFE_CHARS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED_ESCAPES: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** Makes control and bidi characters visible as `\n`, `\r`, `\t` or `\uXXXX`; leaves everything else. */
export function escapeUnsafe(text: string): string {
  return text.replace(UNSAFE_CHARS, (c) => NAMED_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** CEF header field: `\` and `|` escaped; a header has no line breaks, so any control character becomes a space. */
export function cefHeaderEscape(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is this pattern's purpose
  return text.replace(/[\\|]/g, (c) => `\\${c}`).replace(/[\u0000-\u001f\u007f]/g, ' ');
}

/** CEF extension value: `\`, `=` and line breaks escaped (pipes need none there); other controls made visible. */
export function cefValueEscape(text: string): string {
  return escapeUnsafe(
    text
      .replace(/[\\=]/g, (c) => `\\${c}`)
      .replace(/\r\n|\n/g, '\\n')
      .replace(/\r/g, '\\r'),
  );
}

/**
 * RFC 5424 §6.3.3 PARAM-VALUE: `"`, `\` and `]` escaped. The RFC lets a
 * value hold raw line breaks, but most collectors frame syslog by lines, so
 * controls are written as visible `\n`-style sequences instead (a receiver
 * reads them as a backslash and a letter, as the RFC says for unknown escapes).
 */
export function sdParamEscape(text: string): string {
  return escapeUnsafe(text.replace(/["\\\]]/g, (c) => `\\${c}`));
}

/** RFC 5424 HOSTNAME: 1-255 printable US-ASCII characters, or the NILVALUE. */
function syslogHostname(name: string | undefined): string {
  const clean = (name ?? '').replace(/[^\x21-\x7e]/g, '_').slice(0, 255);
  return clean === '' ? '-' : clean;
}

/** Date throws beyond ±8.64e15 ms: a stored time is data, not a promise. */
function isoTime(ms: number): string | undefined {
  return Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : undefined;
}

function detailsJson(event: AuditEvent, max: number): string | undefined {
  return event.details === undefined ? undefined : truncate(JSON.stringify(event.details), max);
}

const OUTCOME_VERB: Readonly<Record<AuditEvent['outcome'], string>> = { success: 'succeeded', failure: 'failed', refused: 'was refused' };

/** One short sentence, details excluded: `link.command was refused (WARD_X): actor unknown, target gw-1`. */
export function eventSentence(event: AuditEvent): string {
  const code = event.code !== undefined ? ` (${event.code})` : '';
  const target = event.target !== undefined ? `, target ${event.target}` : '';
  return escapeUnsafe(`${event.action} ${OUTCOME_VERB[event.outcome]}${code}: actor ${event.actor}${target}`);
}

// ---------------------------------------------------------------------------
// Renderings
// ---------------------------------------------------------------------------

/**
 * ArcSight CEF:0. Ward fields with no CEF dictionary key travel in the
 * custom slots, each with its label: cs1 target, cs2 code, cs3 chain id,
 * cs4 details (compact JSON, cut to 1024 characters), cs5 the previous
 * event's hash, cn1 seq. dvchost is the host name when known, else the
 * device id; deviceExternalId is always the device id.
 */
export function toCef(event: AuditEvent, ctx: FormatContext = {}): string {
  const header = ['CEF:0', CEF_VENDOR, CEF_PRODUCT, WARD_VERSION, event.action, `${event.action} ${event.outcome}`, String(cefSeverity(event))].map(
    (field, i) => (i === 0 ? field : cefHeaderEscape(field)),
  );
  const ext: [string, string | number | undefined][] = [
    ['rt', event.time],
    ['act', event.action],
    ['outcome', event.outcome],
    ['cat', event.category],
    ['suser', event.actor],
    ['dvchost', ctx.hostname ?? ctx.deviceId],
    ['deviceExternalId', ctx.deviceId],
    ...labelled('cs1', 'target', event.target),
    ...labelled('cs2', 'code', event.code),
    ...labelled('cn1', 'seq', event.seq),
    ...labelled('cs3', 'chain', event.chain),
    ...labelled('cs4', 'details', detailsJson(event, MAX_DETAILS_CHARS)),
    ...labelled('cs5', 'prev', event.prev),
  ];
  const extension = ext
    .filter((entry): entry is [string, string | number] => entry[1] !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? v : cefValueEscape(v)}`)
    .join(' ');
  return `${header.join('|')}|${extension}`;
}

function labelled(key: string, label: string, value: string | number | undefined): [string, string | number | undefined][] {
  return value === undefined
    ? []
    : [
        [key, value],
        [`${key}Label`, label],
      ];
}

/**
 * RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME ward - AUDIT [ward@32473 …] MSG`.
 * HOSTNAME is the host name when known, else the device id; `device` names
 * the device id in the structured data whenever it is known. The MSG is
 * sent without a BOM (MSG-ANY): many collectors show a BOM as garbage.
 */
export function toSyslog(event: AuditEvent, ctx: FormatContext = {}): string {
  const params: [string, string | number | undefined][] = [
    ['seq', event.seq],
    ['chain', event.chain],
    ['category', event.category],
    ['action', event.action],
    ['outcome', event.outcome],
    ['actor', event.actor],
    ['code', event.code],
    ['target', event.target],
    ['device', ctx.deviceId],
  ];
  const sd = params
    .filter((entry): entry is [string, string | number] => entry[1] !== undefined)
    .map(([k, v]) => `${k}="${sdParamEscape(String(v))}"`)
    .join(' ');
  const details = detailsJson(event, MAX_DETAILS_CHARS);
  const msg = `${eventSentence(event)}${details !== undefined ? `; details ${escapeUnsafe(details)}` : ''}`;
  const time = isoTime(event.time) ?? '-';
  return `<${syslogPri(event)}>1 ${time} ${syslogHostname(ctx.hostname ?? ctx.deviceId)} ward - AUDIT [${SYSLOG_SD_ID} ${sd}] ${msg}`;
}

/**
 * An OCSF-inspired record, modelled on the shape of OCSF activity classes
 * (time, activity_name, status, actor, device, metadata, unmapped). It is
 * not certified against any OCSF schema version and carries no class_uid:
 * map it in the SIEM if strict OCSF is needed. status follows OCSF's
 * vocabulary (Success/Failure); the exact Ward outcome is in status_detail.
 */
export interface OcsfAuditRecord {
  readonly class_name: 'Audit Activity';
  readonly activity_name: string;
  readonly time: number;
  readonly time_dt?: string;
  readonly severity: string;
  readonly severity_id: number;
  readonly status: 'Success' | 'Failure';
  readonly status_id: 1 | 2;
  readonly status_detail: AuditEvent['outcome'];
  readonly status_code?: string;
  readonly message: string;
  readonly actor: { readonly user: { readonly name: string } };
  readonly device?: { readonly name: string; readonly uid?: string; readonly hostname?: string };
  readonly resources?: readonly { readonly name: string }[];
  readonly metadata: {
    readonly log_name: 'ward-audit';
    readonly sequence: number;
    readonly uid: string;
    readonly product: { readonly name: string; readonly vendor_name: string; readonly version: string };
  };
  readonly unmapped: {
    readonly category: AuditEvent['category'];
    readonly chain: string;
    readonly session: number;
    readonly boot: string;
    readonly mono: number;
    readonly prev: string;
    readonly details?: Record<string, unknown>;
  };
}

const OCSF_SEVERITY: readonly (readonly [number, string])[] = [
  [1, 'Informational'],
  [2, 'Low'],
  [3, 'Medium'],
  [4, 'High'],
  [5, 'Critical'],
];

function ocsfSeverity(event: AuditEvent): readonly [number, string] {
  const cef = cefSeverity(event);
  const id = cef <= 3 ? 1 : cef <= 5 ? 2 : cef === 6 ? 3 : cef <= 8 ? 4 : 5;
  return OCSF_SEVERITY[id - 1] ?? [id, 'Unknown'];
}

export function toOcsfJson(event: AuditEvent, ctx: FormatContext = {}): OcsfAuditRecord {
  const [severityId, severity] = ocsfSeverity(event);
  const time = isoTime(event.time);
  const deviceName = ctx.deviceId ?? ctx.hostname;
  return {
    class_name: 'Audit Activity',
    activity_name: event.action,
    time: event.time,
    ...(time !== undefined ? { time_dt: time } : {}),
    severity,
    severity_id: severityId,
    status: event.outcome === 'success' ? 'Success' : 'Failure',
    status_id: event.outcome === 'success' ? 1 : 2,
    status_detail: event.outcome,
    ...(event.code !== undefined ? { status_code: event.code } : {}),
    message: eventSentence(event),
    actor: { user: { name: event.actor } },
    ...(deviceName !== undefined
      ? {
          device: {
            name: deviceName,
            ...(ctx.deviceId !== undefined ? { uid: ctx.deviceId } : {}),
            ...(ctx.hostname !== undefined ? { hostname: ctx.hostname } : {}),
          },
        }
      : {}),
    ...(event.target !== undefined ? { resources: [{ name: event.target }] } : {}),
    metadata: {
      log_name: 'ward-audit',
      sequence: event.seq,
      uid: `${event.chain}:${event.seq}`,
      product: { name: CEF_PRODUCT, vendor_name: CEF_VENDOR, version: WARD_VERSION },
    },
    unmapped: {
      category: event.category,
      chain: event.chain,
      session: event.session,
      boot: event.boot,
      mono: event.mono,
      prev: event.prev,
      ...(event.details !== undefined ? { details: event.details } : {}),
    },
  };
}

/**
 * The one-line form `ward audit tail` prints:
 * `2026-11-26T04:30:00.123Z #123 access-control link.command refused (WARD_X) actor=unknown target=gw-1 {"reason":…}`.
 * Controls and bidi overrides are escaped: a terminal must show what is stored, not what a sender wanted it to show.
 */
export function toTextLine(event: AuditEvent): string {
  const parts = [
    isoTime(event.time) ?? `time=${event.time}`,
    `#${event.seq}`,
    event.category,
    event.action,
    event.outcome + (event.code !== undefined ? ` (${event.code})` : ''),
    `actor=${event.actor}`,
    ...(event.target !== undefined ? [`target=${event.target}`] : []),
    ...(event.details !== undefined ? [detailsJson(event, TEXT_DETAILS_CHARS) ?? ''] : []),
  ];
  return escapeUnsafe(parts.join(' '));
}
