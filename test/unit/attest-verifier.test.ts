import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { Attester } from '../../agent/attest/attester.js';
import { activePolicyDigest } from '../../agent/attest/measure.js';
import { createLogger } from '../../agent/log.js';
import { EVIDENCE_TYPE, foldLog } from '../../agent/shared/attest/evidence.js';
import { encodeEnvelope, type KeyResolver, seal } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import { policyDigest } from '../../agent/shared/policy/model.js';
import { appraise, baselineOf, type ReferenceValues } from '../../controller/verifier.js';
import { linePolicy } from '../helpers/enforce.js';
import { tempDir } from '../helpers/tmp.js';

// The software path of attestation end to end in one process: the Attester measures real files and signs
// evidence; the Verifier appraises it. Every tamper case of the issue that does not need a TPM is here (the TPM
// ones are in test/integration/attest-tpm.test.ts).

const quiet = createLogger({ level: 'silent', name: 'test' });
const DEVICE = 'gw-attest-1';

interface Rig {
  dir: string;
  key: SigningKey;
  attester: Attester;
  keys: KeyResolver;
  configFile: string;
  policyFile: string;
  executable: string;
  challenge(): { value: string; issuedAt: number };
  refs(extra?: Partial<ReferenceValues>): ReferenceValues;
  now: { value: number };
}

/** Fresh evidence for a new challenge, appraised against `refs` (the rig's defaults when absent). */
async function appraiseNow(r: Rig, references = r.refs()) {
  const c = r.challenge();
  return appraise({ deviceId: DEVICE, evidence: await r.attester.evidence(c.value), keys: r.keys, challenge: c, now: r.now.value, ak: undefined, references });
}

async function rig(t: ExecutionContext): Promise<Rig> {
  const dir = await tempDir(t, 'ward-attest-');
  const key = generateSigningKey();
  const configFile = join(dir, 'agent.yaml');
  const executable = join(dir, 'ward-bin');
  const rootFile = join(dir, 'root.json');
  await writeFile(configFile, 'stateDir: /var/lib/ward\nlog: { level: info }\n');
  await writeFile(executable, Buffer.alloc(4096, 7));
  await writeFile(rootFile, '{"root":"fleet"}\n');
  await mkdir(join(dir, 'enforce'));
  const policyFile = join(dir, 'enforce', 'active.json');
  const policy = linePolicy().policy;
  await writeFile(policyFile, JSON.stringify({ version: 1, policy }));
  const now = { value: 1_800_000_000_000 };
  const attester = new Attester({
    deviceId: DEVICE,
    key,
    sources: () => ({
      configFile,
      activePolicyFile: policyFile,
      plugins: [{ name: 'modbus', version: '0.1.0', config: {} }],
      fleetRootFile: rootFile,
      controllerPublicKey: 'controller-public-key',
      executable,
    }),
    clock: { now: () => now.value, monotonic: () => now.value },
    log: quiet,
    claims: () => ({ bootId: 'boot-1', wardVersion: '0.1.0', lifecycle: 'attesting' }),
  });
  await attester.start();
  t.teardown(() => attester.stop());
  let n = 0;
  return {
    dir,
    key,
    attester,
    keys: (kid) => (kid === key.kid ? { publicKey: key.publicKey, principal: DEVICE } : undefined),
    configFile,
    policyFile,
    executable,
    challenge: () => ({ value: `challenge-${String(++n).padStart(8, '0')}-abcdefgh`, issuedAt: now.value }),
    refs: (extra = {}) => ({ executables: new Set(), baseline: undefined, policyDigests: new Set([policyDigest(policy)]), ...extra }),
    now,
  };
}

test('authentic software evidence passes, names its trust level, and its log folds to its aggregate', async (t) => {
  const r = await rig(t);
  const a = await appraiseNow(r);
  t.is(a.outcome, 'pass', JSON.stringify(a.findings));
  t.is(a.trust, 'software');
  t.deepEqual(Object.keys(a.measurements ?? {}).sort(), [
    `config:${r.configFile}`,
    `executable:${r.executable}`,
    'plugin:modbus',
    'policy:active-policy',
    'trust-anchor:controller-key',
    'trust-anchor:fleet-root',
  ]);
  t.is(a.aggregate, foldLog(r.attester.log).toString('hex'));
  t.is(a.measurements?.['policy:active-policy'], await activePolicyDigest(r.policyFile));
});

test('one byte of the config changed on disk: the verdict fails and names the config, with both digests', async (t) => {
  const r = await rig(t);
  const baseline = await appraiseNow(r);
  await writeFile(r.configFile, 'stateDir: /var/lib/ward\nlog: { level: infO }\n');
  const a = await appraiseNow(r, r.refs({ baseline: baselineOf(baseline.measurements ?? {}) }));
  t.is(a.outcome, 'fail');
  t.is(a.findings.length, 1);
  t.like(a.findings[0], { check: 'config', name: r.configFile, expected: baseline.measurements?.[`config:${r.configFile}`] });
  t.regex(a.findings[0]?.message ?? '', /changed since it was approved/);
  t.is(r.attester.log.length, 7, 'the log grew by the re-measured config (append-only, like a PCR)');
});

test('a flipped byte in the executable fails against the released builds; the active policy must be the one signed', async (t) => {
  const r = await rig(t);
  const released = r.attester.log[0]?.sha256 as string;
  await writeFile(r.executable, Buffer.concat([Buffer.alloc(4095, 7), Buffer.from([8])]));
  const a = await appraiseNow(r, r.refs({ executables: new Set([released]), policyDigests: new Set(['f'.repeat(64)]) }));
  t.is(a.outcome, 'fail');
  t.deepEqual(
    a.findings.map((f) => f.check),
    ['executable', 'policy'],
  );
  t.regex(a.findings[0]?.message ?? '', /is not a released build/);
  t.regex(a.findings[1]?.message ?? '', /not the one the controller signed/);
});

test('a policy edited inside the enforcer state file is caught', async (t) => {
  const r = await rig(t);
  const record = JSON.parse(await readFile(r.policyFile, 'utf8')) as { policy: { mode: string } };
  record.policy.mode = 'observe';
  await writeFile(r.policyFile, JSON.stringify(record));
  const a = await appraiseNow(r);
  t.is(a.outcome, 'fail');
  t.is(a.findings[0]?.check, 'policy');
});

test('replayed evidence, a reused challenge and a late answer are rejected, not appraised', async (t) => {
  const r = await rig(t);
  const old = r.challenge();
  const evidence = await r.attester.evidence(old.value);
  const fresh = r.challenge();
  const replay = appraise({ deviceId: DEVICE, evidence, keys: r.keys, challenge: fresh, now: r.now.value, ak: undefined, references: r.refs() });
  t.is(replay.outcome, 'rejected');
  t.is(replay.findings[0]?.check, 'challenge');
  // The service forgets a challenge once answered: the same evidence again finds no challenge outstanding.
  const reused = appraise({ deviceId: DEVICE, evidence, keys: r.keys, challenge: undefined, now: r.now.value, ak: undefined, references: r.refs() });
  t.is(reused.outcome, 'rejected');
  t.regex(reused.findings[0]?.message ?? '', /already used/);
  const late = appraise({ deviceId: DEVICE, evidence, keys: r.keys, challenge: old, now: r.now.value + 31_000, ak: undefined, references: r.refs() });
  t.is(late.outcome, 'rejected');
  t.regex(late.findings[0]?.message ?? '', /came 31 s after the challenge/);
});

test('forged, other-device and malformed evidence is refused with a clear reason', async (t) => {
  const r = await rig(t);
  const c = r.challenge();
  const forger = generateSigningKey();
  const body = { typ: EVIDENCE_TYPE, sub: DEVICE, challenge: c.value, trust: 'software', log: [], aggregate: '0'.repeat(64) };
  const forged = encodeEnvelope(seal(forger, body, { ttlSeconds: 60, clock: { now: () => r.now.value, monotonic: () => 0 } })).toString();
  const f = appraise({ deviceId: DEVICE, evidence: forged, keys: r.keys, challenge: c, now: r.now.value, ak: undefined, references: r.refs() });
  t.like(f, { outcome: 'rejected', findings: [{ check: 'signature' }] });
  t.regex(f.findings[0]?.message ?? '', /no trusted key/);
  const other = appraise({
    deviceId: 'gw-other',
    evidence: await r.attester.evidence(c.value),
    keys: r.keys,
    challenge: c,
    now: r.now.value,
    ak: undefined,
    references: r.refs(),
  });
  t.like(other, { outcome: 'rejected', findings: [{ check: 'signature' }] });
  const malformed = encodeEnvelope(seal(r.key, { ...body, log: [] }, { ttlSeconds: 60, clock: { now: () => r.now.value, monotonic: () => 0 } })).toString();
  const m = appraise({ deviceId: DEVICE, evidence: malformed, keys: r.keys, challenge: c, now: r.now.value, ak: undefined, references: r.refs() });
  t.like(m, { outcome: 'rejected', findings: [{ check: 'format' }] });
  t.regex(m.findings[0]?.message ?? '', /evidence is malformed at log/);
  t.like(appraise({ deviceId: DEVICE, evidence: '{not json', keys: r.keys, challenge: c, now: r.now.value, ak: undefined, references: r.refs() }), {
    outcome: 'rejected',
    findings: [{ check: 'format' }],
  });
});

test('a log that does not fold to its aggregate, and a TPM gateway answering in software, fail', async (t) => {
  const r = await rig(t);
  const c = r.challenge();
  const log = [...r.attester.log];
  const body = {
    typ: EVIDENCE_TYPE,
    sub: DEVICE,
    challenge: c.value,
    trust: 'software',
    log,
    aggregate: 'a'.repeat(64),
    claims: { bootId: 'b', uptimeSeconds: 1, wardVersion: '0.1.0', nodeVersion: 'v20', lifecycle: 'active' },
  };
  const evidence = encodeEnvelope(seal(r.key, body, { ttlSeconds: 60, clock: { now: () => r.now.value, monotonic: () => 0 } })).toString();
  const a = appraise({ deviceId: DEVICE, evidence, keys: r.keys, challenge: c, now: r.now.value, ak: { publicPem: 'unused' }, references: r.refs() });
  t.is(a.outcome, 'fail');
  t.deepEqual(
    a.findings.map((f) => f.check),
    ['log', 'trust-level'],
  );
});

test('a log without its executable or policy measurement fails, whatever the references', async (t) => {
  const r = await rig(t);
  const c = r.challenge();
  const log = r.attester.log.filter((m) => m.kind !== 'policy');
  const body = {
    typ: EVIDENCE_TYPE,
    sub: DEVICE,
    challenge: c.value,
    trust: 'software',
    log,
    aggregate: foldLog(log).toString('hex'),
    claims: { bootId: 'b', uptimeSeconds: 1, wardVersion: '0.1.0', nodeVersion: 'v20', lifecycle: 'active' },
  };
  const evidence = encodeEnvelope(seal(r.key, body, { ttlSeconds: 60, clock: { now: () => r.now.value, monotonic: () => 0 } })).toString();
  const a = appraise({ deviceId: DEVICE, evidence, keys: r.keys, challenge: c, now: r.now.value, ak: undefined, references: r.refs() });
  t.is(a.outcome, 'fail');
  t.regex(a.findings.map((f) => f.message).join('\n'), /the log has 0 policy measurements; exactly one is expected/);
});

test('while a newly signed policy is on its way, the previous one still passes; a policy the controller never signed does not', async (t) => {
  const r = await rig(t);
  const current = policyDigest(linePolicy().policy);
  t.is((await appraiseNow(r, r.refs({ policyDigests: new Set(['e'.repeat(64), current]) }))).outcome, 'pass');
  t.is((await appraiseNow(r, r.refs({ policyDigests: new Set(['e'.repeat(64)]) }))).outcome, 'fail');
});
