import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import {
  assessEndpoints,
  certificateSha256,
  diffFindings,
  type EndpointInfo,
  type Finding,
  formatFingerprint,
  MAX_FINDINGS,
  passwordInClear,
  policyName,
  selectEndpoint,
  splitDerChain,
} from '../../plugins/opcua/posture.js';

// posture.ts is pure: endpoint descriptions (as GetEndpoints returns them) and a clock in, findings out. The
// certificates are real (openssl CLI); expiry is tested by moving `now`, not by forging dates.

const run = promisify(execFile);
const certs: { selfSigned: Uint8Array; caIssued: Uint8Array; ca: Uint8Array; weak: Uint8Array } = {
  selfSigned: new Uint8Array(),
  caIssued: new Uint8Array(),
  ca: new Uint8Array(),
  weak: new Uint8Array(),
};
let dir = '';

async function selfSigned(name: string, keySpec: string): Promise<Uint8Array> {
  const out = join(dir, `${name}.pem`);
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    keySpec,
    '-nodes',
    '-days',
    '365',
    '-subj',
    `/CN=${name}`,
    '-keyout',
    join(dir, `${name}.key`),
    '-out',
    out,
  ]);
  return new X509Certificate(await readFile(out)).raw;
}

/** A CA and a certificate it issued, both valid for a year. */
async function caAndLeaf(): Promise<{ ca: Uint8Array; leaf: Uint8Array }> {
  const p = (f: string) => join(dir, f);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-days', '365', '-subj', '/CN=Plant CA', '-keyout', p('ca.key'), '-out', p('ca.pem')]);
  await run('openssl', ['req', ...ec, '-subj', '/CN=cnc-1', '-keyout', p('leaf.key'), '-out', p('leaf.csr')]);
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    p('leaf.csr'),
    '-CA',
    p('ca.pem'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-days',
    '365',
    '-out',
    p('leaf.pem'),
  ]);
  return { ca: new X509Certificate(await readFile(p('ca.pem'))).raw, leaf: new X509Certificate(await readFile(p('leaf.pem'))).raw };
}

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ward-opcua-posture-'));
  const pki = await caAndLeaf();
  certs.ca = pki.ca;
  certs.caIssued = pki.leaf;
  certs.selfSigned = await selfSigned('machine', 'rsa:2048');
  certs.weak = await selfSigned('old-machine', 'rsa:1024');
});
test.after.always(() => rm(dir, { recursive: true, force: true }));

const URL = 'opc.tcp://cnc-1:4840';
const ep = (
  securityMode: EndpointInfo['securityMode'],
  securityPolicy: string,
  userTokens: EndpointInfo['userTokens'] = [],
  cert?: Uint8Array,
): EndpointInfo => ({
  endpointUrl: URL,
  securityMode,
  securityPolicy,
  userTokens,
  ...(cert ? { serverCertificate: cert } : {}),
});
const ids = (findings: readonly Finding[]) => findings.map((f) => `${f.severity}:${f.id}:${f.subject}`);
const NOW = Date.parse('2026-06-01T00:00:00Z');
const validity = (der: Uint8Array) => {
  const c = new X509Certificate(der);
  return { from: Date.parse(c.validFrom), to: Date.parse(c.validTo) };
};
const inValidity = (der: Uint8Array) => validity(der).from + 86_400_000;

test('a server like the simulator: None endpoint, anonymous everywhere, self-signed certificate', (t) => {
  const now = inValidity(certs.selfSigned);
  const findings = assessEndpoints(
    [
      ep('None', 'None', [{ type: 'Anonymous' }]),
      ep('SignAndEncrypt', 'Basic256Sha256', [{ type: 'Anonymous' }, { type: 'UserName', securityPolicy: 'Basic256Sha256' }], certs.selfSigned),
    ],
    now,
  );
  const fp = certificateSha256(certs.selfSigned);
  t.deepEqual(ids(findings), [
    'high:security-none:None/None',
    'medium:anonymous-token:None/None',
    'medium:anonymous-token:SignAndEncrypt/Basic256Sha256',
    `info:certificate-self-signed:certificate ${fp}`,
  ]);
  t.regex(findings[0]?.detail ?? '', /opc\.tcp:\/\/cnc-1:4840.*neither signed nor encrypted/);
  t.true(findings[3]?.detail.includes(formatFingerprint(fp)));
});

test('a well-configured server has nothing to report', (t) => {
  const findings = assessEndpoints(
    [
      ep('SignAndEncrypt', 'Basic256Sha256', [{ type: 'UserName' }], certs.caIssued),
      ep('SignAndEncrypt', 'Aes256_Sha256_RsaPss', [{ type: 'Certificate' }], certs.caIssued),
    ],
    inValidity(certs.caIssued),
  );
  t.deepEqual(findings, []);
});

test('passwords: in clear only when neither the token policy nor the channel protects them', (t) => {
  const clear = assessEndpoints([ep('None', 'None', [{ type: 'UserName' }])], NOW);
  t.true(ids(clear).includes('high:cleartext-password:None/None'));
  const tokenEncrypted = assessEndpoints([ep('None', 'None', [{ type: 'UserName', securityPolicy: 'Basic256Sha256' }])], NOW);
  t.false(
    tokenEncrypted.some((f) => f.id === 'cleartext-password'),
    'the token policy encrypts the password with the server key',
  );
  // An empty token policy means the endpoint's: Basic256Sha256 encrypts the secret even on a Sign-only channel.
  t.false(passwordInClear(ep('Sign', 'Basic256Sha256'), { type: 'UserName' }));
  t.true(passwordInClear(ep('Sign', 'Basic256Sha256'), { type: 'UserName', securityPolicy: 'None' }));
  t.false(passwordInClear(ep('SignAndEncrypt', 'Basic256Sha256'), { type: 'UserName', securityPolicy: 'None' }), 'the channel encrypts it');
});

test('sign-only and deprecated policies', (t) => {
  const cert = certs.caIssued;
  const findings = assessEndpoints(
    [ep('Sign', 'Basic256Sha256', [], cert), ep('SignAndEncrypt', 'Basic128Rsa15', [], cert), ep('SignAndEncrypt', 'Basic256', [], cert)],
    inValidity(cert),
  );
  t.deepEqual(ids(findings), [
    'medium:deprecated-policy:SignAndEncrypt/Basic128Rsa15',
    'medium:deprecated-policy:SignAndEncrypt/Basic256',
    'low:sign-only:Sign/Basic256Sha256',
  ]);
});

test('certificate validity: expired, expiring within 30 days, not yet valid', (t) => {
  const der = certs.caIssued;
  const { from, to } = validity(der);
  const fp = certificateSha256(der);
  const at = (now: number) => assessEndpoints([ep('SignAndEncrypt', 'Basic256Sha256', [], der)], now);
  t.deepEqual(ids(at(to + 1000)), [`high:certificate-expired:certificate ${fp}`]);
  const expiring = at(to - 10 * 86_400_000 + 1000);
  t.deepEqual(ids(expiring), [`low:certificate-expiring:certificate ${fp}`]);
  t.regex(expiring[0]?.detail ?? '', /in 10 days/);
  t.deepEqual(ids(at(from - 86_400_000)), [`medium:certificate-not-yet-valid:certificate ${fp}`]);
});

test('a short RSA key, an unreadable certificate', (t) => {
  const weak = assessEndpoints([ep('SignAndEncrypt', 'Basic256Sha256', [], certs.weak)], inValidity(certs.weak));
  t.true(ids(weak).some((s) => s.startsWith('medium:certificate-weak-key:')));
  t.regex(weak.find((f) => f.id === 'certificate-weak-key')?.detail ?? '', /1024-bit/);
  const junk = assessEndpoints([ep('SignAndEncrypt', 'Basic256Sha256', [], new Uint8Array([0x30, 0x03, 1, 2, 3]))], NOW);
  t.deepEqual(ids(junk), ['medium:certificate-unreadable:certificate']);
});

test('one finding per kind and endpoint, whatever host names the server repeats its endpoints under', (t) => {
  const a = ep('None', 'None', [{ type: 'Anonymous' }]);
  const b = { ...a, endpointUrl: 'opc.tcp://10.0.0.5:4840' };
  t.deepEqual(ids(assessEndpoints([a, b], NOW)), ['high:security-none:None/None', 'medium:anonymous-token:None/None']);
  t.deepEqual(
    assessEndpoints([a, b], NOW),
    assessEndpoints([b, a], NOW).map((f) => ({ ...f, detail: f.detail.replace('10.0.0.5:4840', 'cnc-1:4840') })),
  );
  t.deepEqual(assessEndpoints([{ ...a, securityMode: 'Invalid' }], NOW), []);
});

test('diffFindings: new, changed severity and resolved; the same list is no change', (t) => {
  const f = (id: Finding['id'], severity: Finding['severity'], subject = 'None/None'): Finding => ({ id, severity, subject, detail: 'x' });
  const before = [f('security-none', 'high'), f('anonymous-token', 'medium'), f('certificate-expiring', 'low', 'certificate a')];
  t.deepEqual(diffFindings(before, before), { added: [], resolved: [] });
  t.deepEqual(diffFindings(before, [...before.slice(0, 2), { ...f('certificate-expiring', 'low', 'certificate a'), detail: 'in 9 days' }]), {
    added: [],
    resolved: [],
  });
  const after = [f('security-none', 'high'), f('certificate-expired', 'high', 'certificate a'), f('certificate-expiring', 'medium', 'certificate a')];
  const d = diffFindings(before, after);
  t.deepEqual(
    d.added.map((x) => x.id),
    ['certificate-expired', 'certificate-expiring'],
  );
  t.deepEqual(
    d.resolved.map((x) => x.id),
    ['anonymous-token'],
  );
});

test('certificate helpers: DER chains, fingerprints, endpoint selection, policy names', (t) => {
  const chain = Buffer.concat([certs.caIssued, certs.ca]);
  const parts = splitDerChain(chain);
  t.is(parts.length, 2);
  t.deepEqual(Buffer.from(parts[1] ?? []), Buffer.from(certs.ca));
  t.is(certificateSha256(chain), new X509Certificate(certs.caIssued).fingerprint256.replaceAll(':', '').toLowerCase(), 'the leaf is what is pinned');
  t.throws(() => splitDerChain(new Uint8Array([0x31, 0x00])), { instanceOf: RangeError });
  t.throws(() => splitDerChain(new Uint8Array([0x30, 0x10, 0x00])), { message: /runs past the end/ });
  t.is(formatFingerprint('abcdef'), 'ab:cd:ef');
  const endpoints = [ep('None', 'None'), ep('SignAndEncrypt', 'Basic256Sha256')];
  t.is(selectEndpoint(endpoints, 'SignAndEncrypt', 'Basic256Sha256'), endpoints[1]);
  t.is(selectEndpoint(endpoints, 'Sign', 'Basic256Sha256'), undefined);
  t.is(policyName('http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep'), 'Aes128_Sha256_RsaOaep');
  t.is(policyName(null), '');
});

test('an unauthenticated endpoint list cannot flood the journal: findings are capped, texts cut', (t) => {
  const many = Array.from({ length: 5000 }, (_, i) => ep('Sign', `Policy${i}${'x'.repeat(500)}`, [{ type: 'Anonymous' }]));
  const findings = assessEndpoints(many, Date.now());
  t.is(findings.length, MAX_FINDINGS);
  t.true(findings.every((f) => f.subject.length <= 120 && f.detail.length <= 300));
});
