import { createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { APP_PCR, BOOT_PCRS, entryDigest, foldLog, type Measurement, quoteQualifier } from '../../agent/shared/attest/evidence.js';
import { parseQuote, pcrDigestOf, verifyQuoteSignature } from '../../agent/shared/attest/quote.js';
import { makeCredential, Tpm2ToolsTpm, TpmError } from '../../hardware/tpm/tpm2-tools.js';
import { startSwtpm, swtpmUnavailable } from '../helpers/swtpm.js';
import { tempDir } from '../helpers/tmp.js';

// The tpm2-tools driver against swtpm (a real TPM 2.0 implementation: libtpms), checked with the verifier's
// pure functions: what the agent will send is what the controller accepts.

const unavailable = await swtpmUnavailable();
const maybe = unavailable ? test.skip : test;
if (unavailable) console.error(`tpm: skipped: ${unavailable}`);

const ZERO = '00'.repeat(32);
const QUOTED = [...BOOT_PCRS, APP_PCR];

function measurements(n: number): Measurement[] {
  return Array.from({ length: n }, () => ({ kind: 'config' as const, name: 'x', sha256: randomBytes(32).toString('hex') }));
}

async function tpmOn(t: ExecutionContext) {
  const swtpm = await startSwtpm(t);
  const work = join(await tempDir(t, 'ward-tpm-'), 'tpm');
  return { swtpm, work, tpm: new Tpm2ToolsTpm({ tcti: swtpm.tcti, dir: work }) };
}

async function extendLog(tpm: Tpm2ToolsTpm, log: readonly Measurement[]): Promise<void> {
  await tpm.resetPcr(APP_PCR);
  for (const m of log) await tpm.extendPcr(APP_PCR, entryDigest(m));
}

maybe('the identity is created once, kept in the TPM, and the same after a restart', async (t) => {
  const { swtpm, work, tpm } = await tpmOn(t);
  const first = await tpm.identity();
  t.regex(first.akName, /^000b[0-9a-f]{64}$/);
  const ak = createPublicKey(first.akPublicPem);
  t.is(ak.asymmetricKeyType, 'ec');
  t.is(ak.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.is(createPublicKey(first.ekPublicPem).asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.is(await tpm.identity(), first, 'cached');

  // The working folder is private; no per-operation temporary files are left behind.
  t.is((await stat(work)).mode & 0o777, 0o700);
  for (const name of ['ak.pub', 'ak.priv', 'ak.pem', 'ek.pem']) t.is((await stat(join(work, name))).mode & 0o777, 0o600, name);
  t.deepEqual(
    (await readdir(work)).filter((f) => f.startsWith('op-')),
    [],
  );

  await extendLog(tpm, measurements(2));
  t.not((await tpm.readPcrs([APP_PCR]))[APP_PCR], ZERO);

  await swtpm.restart();
  const otherDir = join(await tempDir(t, 'ward-tpm-'), 'tpm');
  const again = new Tpm2ToolsTpm({ tcti: swtpm.tcti, dir: otherDir });
  t.deepEqual(await again.identity(), first);
  t.false(existsSync(join(otherDir, 'ak.priv')), 'the persisted AK was reused, not created again');
  t.deepEqual(await again.readPcrs([APP_PCR]), { [APP_PCR]: ZERO }, 'PCR 23 is reset by the reboot');
});

maybe('extending the log into PCR 23 gives the fold the verifier computes', async (t) => {
  const { tpm } = await tpmOn(t);
  const log = measurements(7);
  await tpm.resetPcr(APP_PCR);
  t.deepEqual(await tpm.readPcrs([APP_PCR]), { [APP_PCR]: ZERO });
  for (const m of log) await tpm.extendPcr(APP_PCR, entryDigest(m));
  const pcrs = await tpm.readPcrs([APP_PCR, ...BOOT_PCRS, APP_PCR]);
  t.deepEqual(Object.keys(pcrs).map(Number), QUOTED);
  t.is(pcrs[APP_PCR], foldLog(log).toString('hex'));
  // the fold continues from an earlier aggregate exactly as the PCR does
  const more = measurements(2);
  for (const m of more) await tpm.extendPcr(APP_PCR, entryDigest(m));
  t.is((await tpm.readPcrs([APP_PCR]))[APP_PCR], foldLog(more, foldLog(log)).toString('hex'));
  t.is((await tpm.readPcrs([APP_PCR]))[APP_PCR], foldLog([...log, ...more]).toString('hex'));
});

maybe('a quote verifies with the verifier functions; a changed byte or another AK does not', async (t) => {
  const [{ tpm }, other] = await Promise.all([tpmOn(t), tpmOn(t)]);
  const log = measurements(5);
  await extendLog(tpm, log);
  const aggregate = foldLog(log).toString('hex');
  const qualifier = quoteQualifier('challenge-0123456789abcdef', aggregate);
  const { akPublicPem } = await tpm.identity();

  const quote = await tpm.quote(qualifier, [APP_PCR, ...BOOT_PCRS]);
  const parsed = parseQuote(quote.attest);
  if (typeof parsed === 'string') return t.fail(parsed);
  t.true(parsed.extraData.equals(qualifier));
  t.deepEqual(parsed.pcrs, QUOTED);
  t.is(verifyQuoteSignature(quote.attest, quote.signature, akPublicPem), true);
  t.deepEqual(Object.keys(quote.pcrs).map(Number), QUOTED);
  const digest = pcrDigestOf(parsed.pcrs, quote.pcrs);
  if (typeof digest === 'string') return t.fail(digest);
  t.true(digest.equals(parsed.pcrDigest));
  t.is(quote.pcrs[APP_PCR], aggregate);

  const flipped = Buffer.from(quote.attest);
  flipped[flipped.length - 40] = (flipped[flipped.length - 40] ?? 0) ^ 0x01;
  t.is(typeof verifyQuoteSignature(flipped, quote.signature, akPublicPem), 'string');
  const otherAk = (await other.tpm.identity()).akPublicPem;
  t.not(otherAk, akPublicPem);
  t.is(typeof verifyQuoteSignature(quote.attest, quote.signature, otherAk), 'string');

  // a fresh qualifier each time, and a quote after further extends covers the new value
  const next = measurements(1);
  for (const m of next) await tpm.extendPcr(APP_PCR, entryDigest(m));
  const again = await tpm.quote(randomBytes(32), QUOTED);
  const reparsed = parseQuote(again.attest);
  if (typeof reparsed === 'string') return t.fail(reparsed);
  t.false(reparsed.extraData.equals(qualifier));
  t.is(again.pcrs[APP_PCR], foldLog([...log, ...next]).toString('hex'));
  const redigest = pcrDigestOf(reparsed.pcrs, again.pcrs);
  t.true(Buffer.isBuffer(redigest) && redigest.equals(reparsed.pcrDigest));
  t.is(verifyQuoteSignature(again.attest, again.signature, akPublicPem), true);
});

maybe('a credential made for this EK and AK name activates; one for another AK name fails', async (t) => {
  const [{ tpm }, other] = await Promise.all([tpmOn(t), tpmOn(t)]);
  const { ekPublicPem, akName } = await tpm.identity();
  const scratch = await tempDir(t, 'ward-verifier-');

  const secret = randomBytes(32);
  const credential = await makeCredential({ ekPublicPem, akName, secret, dir: scratch });
  t.true((await tpm.activateCredential(credential)).equals(secret));
  t.deepEqual(await readdir(scratch), [], 'makeCredential removes its temporary files');

  const wrongName = (await other.tpm.identity()).akName;
  const forOther = await makeCredential({ ekPublicPem, akName: wrongName, secret: randomBytes(32) });
  const err = await t.throwsAsync(tpm.activateCredential(forOther), { instanceOf: TpmError });
  t.is(err?.code, 'WARD_TPM_COMMAND_FAILED');
  t.regex(err?.message ?? '', /tpm2_activatecredential/);

  // the failed activation left no session behind: activation still works, many times over
  for (let i = 0; i < 5; i++) {
    const s = randomBytes(16);
    t.true((await tpm.activateCredential(await makeCredential({ ekPublicPem, akName, secret: s }))).equals(s));
  }
  // a credential for another TPM's EK does not activate here either
  const otherEk = (await other.tpm.identity()).ekPublicPem;
  const foreign = await makeCredential({ ekPublicPem: otherEk, akName, secret });
  t.is((await t.throwsAsync(tpm.activateCredential(foreign), { instanceOf: TpmError }))?.code, 'WARD_TPM_COMMAND_FAILED');
});

maybe('a TPM that is not there, or does not answer, fails with WARD_TPM_COMMAND_FAILED within the timeout', async (t) => {
  const dir = await tempDir(t, 'ward-tpm-');
  // nothing listening
  const closed = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
  const absent = new Tpm2ToolsTpm({ tcti: `swtpm:host=127.0.0.1,port=${closed}`, dir: join(dir, 'a') });
  const e1 = await t.throwsAsync(absent.readPcrs([APP_PCR]), { instanceOf: TpmError });
  t.is(e1?.code, 'WARD_TPM_COMMAND_FAILED');
  t.regex(e1?.message ?? '', /tpm2_pcrread/);
  t.is((await t.throwsAsync(absent.identity(), { instanceOf: TpmError }))?.code, 'WARD_TPM_COMMAND_FAILED');

  // accepts and never answers (the swtpm TCTI connects to the TPM port and to the control port next to it)
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    for (const s of servers) s.close();
  });
  const listenSilently = (p: number) =>
    new Promise<Server | undefined>((resolve) => {
      const server = createServer((s) => {
        sockets.add(s);
        s.on('error', () => {});
      });
      server.once('error', () => resolve(undefined));
      server.listen(p, '127.0.0.1', () => {
        servers.push(server);
        resolve(server);
      });
    });
  let port = 0;
  for (let attempt = 0; attempt < 20 && port === 0; attempt++) {
    const address = (await listenSilently(0))?.address();
    const p = typeof address === 'object' && address ? address.port : 0;
    if (p > 0 && p < 65535 && (await listenSilently(p + 1))) port = p;
  }
  t.not(port, 0, 'two consecutive free ports');
  const mute = new Tpm2ToolsTpm({ tcti: `swtpm:host=127.0.0.1,port=${port}`, dir: join(dir, 'b'), timeoutMs: 700 });
  const started = Date.now();
  const e2 = await t.throwsAsync(mute.resetPcr(APP_PCR), { instanceOf: TpmError });
  t.is(e2?.code, 'WARD_TPM_COMMAND_FAILED');
  t.regex(e2?.message ?? '', /did not finish within 700 ms/);
  t.true(Date.now() - started < 5_000);
  // the queue goes on after a failure
  const e3 = await t.throwsAsync(mute.extendPcr(APP_PCR, Buffer.alloc(32)), { instanceOf: TpmError });
  t.is(e3?.code, 'WARD_TPM_COMMAND_FAILED');
});
