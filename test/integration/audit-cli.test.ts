import { copyFile, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { AuditJournal } from '../../agent/audit/journal.js';
import { systemClock } from '../../agent/core/clock.js';
import { DEVICE_KEY_FILE } from '../../agent/identity/keystore.js';
import { parseEventText } from '../../agent/shared/audit/event.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { makeDevice, spawnWard, type TestDevice, writeAgentConfig } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// `ward audit …` as an operator runs it: the real CLI in its own process, against a real journal on disk.

const silent = { info: () => undefined, warn: () => undefined, error: () => undefined };
const controllerKey = generateSigningKey();
const REASON = 'bad signature | from 10.0.0.7\nsecond line';

interface Fixture {
  readonly device: TestDevice;
  readonly config: string;
  readonly journalDir: string;
  /** Events appended by the test (the journal adds its own chain and session starts). */
  readonly appended: number;
}

async function fixture(t: ExecutionContext, id = 'gw-audit'): Promise<Fixture> {
  const device = await makeDevice(t, id);
  const journalDir = join(device.stateDir, 'audit');
  const journal = await AuditJournal.open({ dir: journalDir, key: device.key, clock: systemClock, log: silent });
  await journal.append({ category: 'control-system', actor: 'ward-agent', action: 'agent.start', outcome: 'success' });
  await journal.append({
    category: 'access-control',
    actor: 'unknown',
    action: 'link.command',
    target: id,
    outcome: 'refused',
    code: 'WARD_ENVELOPE_BAD_SIGNATURE',
    details: { reason: REASON },
  });
  await journal.append({
    category: 'configuration-change',
    actor: 'controller',
    action: 'config.apply',
    target: 'plugins',
    outcome: 'failure',
    code: 'WARD_X',
  });
  await journal.close();
  const config = await writeAgentConfig(device, { publicKey: controllerKey.publicRaw }, 'mqtt://127.0.0.1:1');
  return { device, config, journalDir, appended: 3 };
}

async function ward(t: ExecutionContext, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  const p = spawnWard(t, args, env);
  const code = await p.exited;
  return { code, output: p.output() };
}

const jsonLines = (text: string) =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test('audit tail shows the newest events, one line each; --json prints the canonical texts', async (t) => {
  const f = await fixture(t);
  const tail = await ward(t, ['audit', 'tail', '-c', f.config]);
  t.is(tail.code, 0, tail.output);
  t.regex(tail.output, /Z #\d+ control-system agent\.start success actor=ward-agent/);
  t.regex(
    tail.output,
    /Z #\d+ access-control link\.command refused \(WARD_ENVELOPE_BAD_SIGNATURE\) actor=unknown target=gw-audit \{"reason":"bad signature \| from 10\.0\.0\.7\\nsecond line"\}/,
  );
  t.regex(tail.output, /config\.apply failure \(WARD_X\) actor=controller target=plugins/);

  const two = await ward(t, ['audit', 'tail', '-c', f.config, '-n', '2', '--json']);
  t.is(two.code, 0, two.output);
  const lines = two.output.trim().split('\n');
  t.is(lines.length, 2);
  const events = lines.map((l) => parseEventText(l).event);
  t.deepEqual(
    events.map((e) => e.action),
    ['link.command', 'config.apply'],
  );
  t.is(events[0]?.details?.reason, REASON);

  const bad = await ward(t, ['audit', 'tail', '-c', f.config, '-n', '0']);
  t.is(bad.code, 2, bad.output);
});

test('audit status --json reports the head, sealing and size', async (t) => {
  const f = await fixture(t);
  const r = await ward(t, ['audit', 'status', '-c', f.config, '--json']);
  t.is(r.code, 0, r.output);
  const status = JSON.parse(r.output) as Record<string, unknown>;
  t.is(status.snapshot, false);
  t.is(status.firstSeq, 1);
  t.is(typeof status.chain, 'string');
  t.true((status.seq as number) >= f.appended);
  t.is(status.sealedSeq, status.seq, 'close() seals the tail');
  t.is(status.unsealed, 0);
  t.is(status.receipted, null);
  t.true((status.bytes as number) > 0);
  const human = await ward(t, ['audit', 'status', '-c', f.config]);
  t.is(human.code, 0, human.output);
  t.regex(human.output, /sealed +through seq \d+/);
  t.regex(human.output, /receipted +nothing yet/);
});

test('export jsonl → verify with the device key: INTACT; a tampered copy: BROKEN naming the finding', async (t) => {
  const f = await fixture(t);
  const dir = await tempDir(t);
  const file = join(dir, 'export.jsonl');
  const exp = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'jsonl', '-o', file]);
  t.is(exp.code, 0, exp.output);
  t.is((await stat(file)).mode & 0o777, 0o600);
  t.regex(exp.output, /wrote \d+ jsonl lines/);
  t.deepEqual(await readdir(dir), ['export.jsonl'], 'no temporary file left behind');
  const header = JSON.parse((await readFile(file, 'utf8')).split('\n')[0] ?? '') as Record<string, unknown>;
  t.is(header.deviceId, 'gw-audit');
  t.is(header.publicKey, f.device.key.publicRaw);
  t.is(header.controllerPublicKey, controllerKey.publicRaw);

  const ok = await ward(t, ['audit', 'verify', file, '--device-key', f.device.key.publicRaw]);
  t.is(ok.code, 0, ok.output);
  t.regex(ok.output, /^INTACT: \d+ events in 1 chain, all sealed/m);
  t.regex(ok.output, /device key: .*given on the command line/);

  const selfVouched = await ward(t, ['audit', 'verify', file, '--json']);
  t.is(selfVouched.code, 0, selfVouched.output);
  const verdict = JSON.parse(selfVouched.output) as { status: string; deviceKeySource: string; controllerKeySource: string };
  t.is(verdict.status, 'intact');
  t.is(verdict.deviceKeySource, 'export-header');
  t.is(verdict.controllerKeySource, 'export-header');
  const strict = await ward(t, ['audit', 'verify', file, '--strict']);
  t.is(strict.code, 1, 'for evidence, a key taken from the file itself is not enough');
  const strictOk = await ward(t, ['audit', 'verify', file, '--strict', '--device-key', f.device.key.publicRaw]);
  t.is(strictOk.code, 0, strictOk.output);
  const human = await ward(t, ['audit', 'verify', file]);
  t.regex(
    human.output,
    /device key: taken from the export itself — this proves internal consistency only; pass --device-key from the controller to prove origin/,
  );

  // One edited detail: the event no longer hashes to what the next event and the checkpoint name.
  const tampered = join(dir, 'tampered.jsonl');
  const lines = (await readFile(file, 'utf8')).split('\n');
  let editedSeq = 0;
  const edited = lines.map((line) => {
    if (!line.includes('"action":"link.command"')) return line;
    const record = JSON.parse(line) as { event: { seq: number; details: { reason: string } } };
    record.event.details.reason = 'nothing to see here';
    editedSeq = record.event.seq;
    return JSON.stringify(record);
  });
  t.true(editedSeq > 0);
  await writeFile(tampered, edited.join('\n'));
  const broken = await ward(t, ['audit', 'verify', tampered, '--device-key', f.device.key.publicRaw]);
  t.is(broken.code, 1, broken.output);
  t.regex(broken.output, /^BROKEN: /m);
  t.regex(broken.output, new RegExp(`error {2}(broken-link|checkpoint-mismatch) {2}seq (${editedSeq}|${editedSeq + 1}):`));

  // Another device's key: nothing in the export is signed by it.
  const stranger = await ward(t, ['audit', 'verify', file, '--device-key', generateSigningKey().publicRaw]);
  t.is(stranger.code, 1, stranger.output);
  t.regex(stranger.output, /BROKEN/);
  t.regex(stranger.output, /this export claims another device key/);
});

test('verify: unreadable or invalid exports exit 1 with WARD_AUDIT_EXPORT_INVALID; bad flags exit 2', async (t) => {
  const dir = await tempDir(t);
  const missing = await ward(t, ['audit', 'verify', join(dir, 'nope.jsonl')]);
  t.is(missing.code, 1);
  t.regex(missing.output, /WARD_AUDIT_EXPORT_INVALID: .*nope\.jsonl cannot be read \(ENOENT\)/);
  const junk = join(dir, 'junk.jsonl');
  await writeFile(junk, '{"hello":"world"}\n');
  const invalid = await ward(t, ['audit', 'verify', junk]);
  t.is(invalid.code, 1);
  t.regex(invalid.output, /WARD_AUDIT_EXPORT_INVALID: .*not a Ward audit export header/);
  const empty = join(dir, 'empty.jsonl');
  await writeFile(empty, '');
  t.regex((await ward(t, ['audit', 'verify', empty])).output, /WARD_AUDIT_EXPORT_INVALID: .*empty/);
  const badKey = await ward(t, ['audit', 'verify', junk, '--device-key', 'not-a-key']);
  t.is(badKey.code, 2, badKey.output);
  t.regex(badKey.output, /--device-key/);
});

test('export cef, syslog and ocsf: one parseable line per event, filtered by --since', async (t) => {
  const f = await fixture(t);
  const dir = await tempDir(t);
  const total = JSON.parse((await ward(t, ['audit', 'status', '-c', f.config, '--json'])).output).seq as number;

  const cefFile = join(dir, 'audit.cef');
  const cef = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'cef', '-o', cefFile]);
  t.is(cef.code, 0, cef.output);
  t.is((await stat(cefFile)).mode & 0o777, 0o600);
  const cefLines = (await readFile(cefFile, 'utf8')).trimEnd().split('\n');
  t.is(cefLines.length, total, 'the newline in a detail did not split a record');
  for (const line of cefLines) t.true(line.startsWith('CEF:0|Ward|ward-agent|'), line);
  const refusedCef = cefLines.find((l) => l.includes('|link.command|'));
  t.truthy(refusedCef);
  t.regex(refusedCef ?? '', /\|7\|rt=\d+ act=link\.command outcome=refused cat=access-control suser=unknown dvchost=[^ ]+ deviceExternalId=gw-audit /);
  t.true(refusedCef?.includes('cs4={"reason":"bad signature | from 10.0.0.7\\\\nsecond line"}'));

  const syslog = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'syslog']);
  t.is(syslog.code, 0, syslog.output);
  const syslogLines = syslog.output.trimEnd().split('\n');
  t.is(syslogLines.length, total);
  for (const line of syslogLines) t.regex(line, /^<1\d\d>1 \S+Z \S+ ward - AUDIT \[ward@32473 seq="\d+" /);
  t.true(syslogLines.some((l) => l.startsWith('<107>1 ') && l.includes('code="WARD_ENVELOPE_BAD_SIGNATURE" target="gw-audit" device="gw-audit"]')));

  const ocsf = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'ocsf']);
  t.is(ocsf.code, 0, ocsf.output);
  const records = jsonLines(ocsf.output);
  t.is(records.length, total);
  t.true(records.every((r) => (r.metadata as { log_name: string }).log_name === 'ward-audit'));

  const recent = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'cef', '--since', '1h']);
  t.is(recent.code, 0, recent.output);
  t.is(recent.output.trimEnd().split('\n').length, total);
  const future = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'syslog', '--since', new Date(Date.now() + 3_600_000).toISOString()]);
  t.is(future.code, 0, future.output);
  t.is(future.output, '');

  const jsonlSince = await ward(t, ['audit', 'export', '-c', f.config, '--since', '2h']);
  t.is(jsonlSince.code, 2, jsonlSince.output);
  t.regex(jsonlSince.output, /--since cannot be used with --format jsonl/);
  const badSince = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'cef', '--since', 'yesterday']);
  t.is(badSince.code, 2, badSince.output);
  const badFormat = await ward(t, ['audit', 'export', '-c', f.config, '--format', 'xml']);
  t.is(badFormat.code, 2, badFormat.output);
});

test('while another process holds the journal, tail and status read a snapshot and leave the journal untouched', async (t) => {
  const f = await fixture(t);
  const journal = await AuditJournal.open({ dir: f.journalDir, key: f.device.key, clock: systemClock, log: silent });
  t.teardown(() => journal.close());
  await journal.append({ category: 'control-system', actor: 'ward-agent', action: 'plc.write', target: 'DB1.DBW0', outcome: 'success' });
  // Sealed now, so the journal's own checkpoint timer has nothing to change while the CLI runs.
  await journal.seal();
  const before = journal.status();
  const eventsBefore = await journal.readEvents(1);
  // The snapshot copy goes to the temp folder; a private one shows it is removed afterwards.
  const tmp = await tempDir(t);

  const tail = await ward(t, ['audit', 'tail', '-c', f.config, '-n', '3'], { TMPDIR: tmp });
  t.is(tail.code, 0, tail.output);
  t.regex(tail.output, /the agent is running/);
  t.regex(tail.output, /plc\.write success actor=ward-agent target=DB1\.DBW0/);
  const status = await ward(t, ['audit', 'status', '-c', f.config, '--json'], { TMPDIR: tmp });
  t.is(status.code, 0, status.output);
  const view = jsonLines(status.output)[0] ?? {};
  t.is(view.snapshot, true);
  t.is(view.seq, before.seq);
  t.deepEqual(
    (await readdir(tmp)).filter((name) => name.startsWith('ward-audit-snapshot-')),
    [],
    'the snapshot copy is removed',
  );

  t.deepEqual(journal.status(), before);
  t.deepEqual(await journal.readEvents(1), eventsBefore);
  await journal.append({ category: 'control-system', actor: 'ward-agent', action: 'plc.read', outcome: 'success' });
  t.is(journal.status().seq, before.seq + 1, 'the journal still takes events');
});

test('the audit commands never create a device key; a missing journal or key is a clear error', async (t) => {
  const f = await fixture(t, 'gw-nokey');
  const keyFile = join(f.device.stateDir, DEVICE_KEY_FILE);
  const saved = join(f.device.stateDir, '..', 'saved-key.pem');
  await copyFile(keyFile, saved);
  await rm(keyFile);
  const exp = await ward(t, ['audit', 'export', '-c', f.config]);
  t.is(exp.code, 1, exp.output);
  t.regex(exp.output, /WARD_KEY_UNREADABLE: no device key at .*device-key\.pem/);
  await t.throwsAsync(stat(keyFile), { code: 'ENOENT' });
  // The SIEM formats and tail need no key.
  t.is((await ward(t, ['audit', 'export', '-c', f.config, '--format', 'cef'])).code, 0);
  t.is((await ward(t, ['audit', 'tail', '-c', f.config])).code, 0);
  await t.throwsAsync(stat(keyFile), { code: 'ENOENT' });

  await rm(f.journalDir, { recursive: true });
  const none = await ward(t, ['audit', 'status', '-c', f.config]);
  t.is(none.code, 1, none.output);
  t.regex(none.output, /WARD_AUDIT_JOURNAL_NOT_FOUND: no audit journal at /);
});
