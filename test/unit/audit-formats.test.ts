import test from 'ava';
import {
  cefHeaderEscape,
  cefSeverity,
  cefValueEscape,
  escapeUnsafe,
  MAX_DETAILS_CHARS,
  sdParamEscape,
  syslogPri,
  toCef,
  toOcsfJson,
  toSyslog,
  toTextLine,
  truncate,
} from '../../agent/audit/formats.js';
import type { AuditEvent } from '../../agent/shared/audit/event.js';
import { WARD_VERSION } from '../../agent/version.js';

// SIEM renderings: a value chosen by a peer must never add a line, a CEF key or a syslog SD field.

const PREV = 'ab'.repeat(32);
const CHAIN = 'AAAAAAAAAAAAAAAAAAAAAA';

const refused: AuditEvent = {
  v: 1,
  chain: CHAIN,
  seq: 123,
  session: 2,
  boot: 'boot-1',
  time: Date.UTC(2026, 10, 26, 4, 30, 0, 123),
  mono: 5000,
  category: 'access-control',
  actor: 'unknown',
  action: 'link.command',
  target: 'gw-1',
  outcome: 'refused',
  code: 'WARD_ENVELOPE_BAD_SIGNATURE',
  details: { reason: 'a|b=c' },
  prev: PREV,
};

const minimal: AuditEvent = {
  v: 1,
  chain: CHAIN,
  seq: 7,
  session: 1,
  boot: 'boot-1',
  time: Date.UTC(2026, 0, 1),
  mono: 10,
  category: 'control-system',
  actor: 'ward-agent',
  action: 'agent.start',
  outcome: 'success',
  prev: PREV,
};

test('a known event renders to the exact CEF line', (t) => {
  t.is(
    toCef(refused, { deviceId: 'gw-1' }),
    `CEF:0|Ward|ward-agent|${WARD_VERSION}|link.command|link.command refused|7|` +
      'rt=1795667400123 act=link.command outcome=refused cat=access-control suser=unknown dvchost=gw-1 deviceExternalId=gw-1 ' +
      'cs1=gw-1 cs1Label=target cs2=WARD_ENVELOPE_BAD_SIGNATURE cs2Label=code cn1=123 cn1Label=seq ' +
      `cs3=${CHAIN} cs3Label=chain cs4={"reason":"a|b\\=c"} cs4Label=details cs5=${PREV} cs5Label=prev`,
  );
});

test('a known event renders to the exact RFC 5424 line', (t) => {
  t.is(
    toSyslog(refused, { deviceId: 'gw-1', hostname: 'line3-gw' }),
    '<107>1 2026-11-26T04:30:00.123Z line3-gw ward - AUDIT ' +
      `[ward@32473 seq="123" chain="${CHAIN}" category="access-control" action="link.command" outcome="refused" actor="unknown" ` +
      'code="WARD_ENVELOPE_BAD_SIGNATURE" target="gw-1" device="gw-1"] ' +
      'link.command was refused (WARD_ENVELOPE_BAD_SIGNATURE): actor unknown, target gw-1; details {"reason":"a|b=c"}',
  );
});

test('absent optional fields are omitted, not rendered empty', (t) => {
  const cef = toCef(minimal);
  t.is(
    cef,
    `CEF:0|Ward|ward-agent|${WARD_VERSION}|agent.start|agent.start success|3|` +
      `rt=1767225600000 act=agent.start outcome=success cat=control-system suser=ward-agent cn1=7 cn1Label=seq cs3=${CHAIN} cs3Label=chain cs5=${PREV} cs5Label=prev`,
  );
  for (const key of ['cs1=', 'cs2=', 'cs4=', 'dvchost=', 'deviceExternalId=']) t.false(cef.includes(key), key);
  const syslog = toSyslog(minimal);
  t.is(
    syslog,
    `<110>1 2026-01-01T00:00:00.000Z - ward - AUDIT [ward@32473 seq="7" chain="${CHAIN}" category="control-system" action="agent.start" outcome="success" actor="ward-agent"] agent.start succeeded: actor ward-agent`,
  );
  for (const key of ['code=', 'target=', 'device=', 'details']) t.false(syslog.includes(key), key);
  const ocsf = toOcsfJson(minimal) as unknown as Record<string, unknown>;
  for (const key of ['status_code', 'device', 'resources']) t.false(key in ocsf, key);
  t.false('details' in (ocsf.unmapped as object));
});

test('CEF header escapes backslash and pipe; line breaks cannot enter a header', (t) => {
  t.is(cefHeaderEscape('a|b\\c'), 'a\\|b\\\\c');
  t.is(cefHeaderEscape('x\ny\rz'), 'x y z');
});

test('CEF extension values escape backslash, equals and newlines; pipes stay', (t) => {
  t.is(cefValueEscape('a|b'), 'a|b');
  t.is(cefValueEscape('k=v'), 'k\\=v');
  t.is(cefValueEscape('C:\\ward'), 'C:\\\\ward');
  t.is(cefValueEscape('one\ntwo\r\nthree\rfour'), 'one\\ntwo\\nthree\\rfour');
  // A forged key inside a value stays part of the value.
  const cef = toCef({ ...refused, target: 'gw-1 suser=controller\nCEF:0|Evil|' });
  t.false(cef.includes('\n'));
  t.true(cef.includes('cs1=gw-1 suser\\=controller\\nCEF:0|Evil| cs1Label=target'));
});

test('syslog SD-PARAM values escape quote, backslash and closing bracket (RFC 5424 §6.3.3)', (t) => {
  t.is(sdParamEscape('say "hi"'), 'say \\"hi\\"');
  t.is(sdParamEscape('a\\b'), 'a\\\\b');
  t.is(sdParamEscape('x] [evil@1 a="b"'), 'x\\] [evil@1 a=\\"b\\"');
  const line = toSyslog({ ...refused, actor: 'op"]\\', target: 'gw-1\ninjected line' }, { deviceId: 'gw-1' });
  t.false(line.includes('\n'));
  t.true(line.includes('actor="op\\"\\]\\\\"'));
  t.true(line.includes('target="gw-1\\ninjected line"'));
});

test('syslog PRI: facility 13 (log audit) × 8 + severity from outcome and category', (t) => {
  t.is(syslogPri(minimal), 110, 'success: informational');
  t.is(syslogPri({ ...minimal, outcome: 'failure' }), 108, 'failure: warning');
  t.is(syslogPri({ ...minimal, outcome: 'refused', category: 'request-error' }), 108, 'refused: warning');
  t.is(syslogPri({ ...minimal, outcome: 'refused', category: 'access-control' }), 107, 'access refused: error');
  t.is(syslogPri({ ...minimal, category: 'audit', action: 'audit.gap', outcome: 'failure' }), 107, 'lost audit evidence: error');
  t.true(toSyslog({ ...minimal, outcome: 'failure' }).startsWith('<108>1 '));
});

test('CEF severity ranks refusals of access and lost evidence above routine events', (t) => {
  t.is(cefSeverity(minimal), 3);
  t.is(cefSeverity({ ...minimal, outcome: 'failure' }), 6);
  t.is(cefSeverity({ ...minimal, outcome: 'refused' }), 5);
  t.is(cefSeverity({ ...minimal, outcome: 'refused', category: 'access-control' }), 7);
  t.is(cefSeverity({ ...minimal, category: 'audit', action: 'audit.overflow', outcome: 'failure' }), 8);
});

test('details are compact JSON cut to 1024 characters in CEF and syslog', (t) => {
  const long = { ...refused, details: { blob: 'x'.repeat(3000) } };
  const cs4 = /cs4=(.*) cs4Label=/.exec(toCef(long))?.[1] ?? '';
  t.is(cs4.length, MAX_DETAILS_CHARS);
  t.true(cs4.endsWith('…'));
  const msg = toSyslog(long).split('; details ')[1] ?? '';
  t.is(msg.length, MAX_DETAILS_CHARS);
  t.is(truncate('😀😀', 2), '…', 'never splits a surrogate pair');
});

test('text lines and messages make control and bidi characters visible', (t) => {
  t.is(escapeUnsafe('a\nb\tc\u001b[31m\u202Ed'), 'a\\nb\\tc\\u001b[31m\\u202ed');
  const line = toTextLine({ ...refused, actor: 'x\u001b]0;pwned\u0007', target: 'gw-1\nfake line' });
  t.false(
    [...line].some((c) => c.charCodeAt(0) < 0x20),
    'no control character reaches the terminal',
  );
  t.true(line.includes('actor=x\\u001b]0;pwned\\u0007 target=gw-1\\nfake line'));
  t.is(
    toTextLine(refused),
    '2026-11-26T04:30:00.123Z #123 access-control link.command refused (WARD_ENVELOPE_BAD_SIGNATURE) actor=unknown target=gw-1 {"reason":"a|b=c"}',
  );
});

test('the OCSF-inspired record carries the mapped fields', (t) => {
  const r = toOcsfJson(refused, { deviceId: 'gw-1', hostname: 'line3-gw' });
  t.is(r.activity_name, 'link.command');
  t.is(r.time, refused.time);
  t.is(r.status, 'Failure');
  t.is(r.status_detail, 'refused');
  t.is(r.status_code, 'WARD_ENVELOPE_BAD_SIGNATURE');
  t.is(r.actor.user.name, 'unknown');
  t.deepEqual(r.device, { name: 'gw-1', uid: 'gw-1', hostname: 'line3-gw' });
  t.is(r.metadata.sequence, 123);
  t.is(r.metadata.log_name, 'ward-audit');
  t.deepEqual(r.unmapped.details, { reason: 'a|b=c' });
  t.is(r.severity_id, 4);
  t.deepEqual(JSON.parse(JSON.stringify(r)), r);
});

test('export lines are split without unbounded buffering: CRLF tolerated, an endless line refused', async (t) => {
  const { boundedLines } = await import('../../agent/audit/export.js');
  const collect = async (chunks: string[], max?: number) => {
    const out: string[] = [];
    for await (const line of boundedLines(
      (async function* () {
        yield* chunks.map((c) => Buffer.from(c));
      })(),
      max,
    ))
      out.push(line);
    return out;
  };
  t.deepEqual(await collect(['a\nb', 'c\r\n', 'd']), ['a', 'bc', 'd']);
  t.deepEqual(await collect(['é\n']), ['é']);
  const err = await t.throwsAsync(collect(['x'.repeat(50), 'y'.repeat(50)], 64));
  t.is((err as { code?: string }).code, 'WARD_AUDIT_EXPORT_INVALID');
});
