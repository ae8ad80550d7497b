import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import test from 'ava';
import { isWardError } from '../../agent/core/errors.js';
import {
  certFingerprint,
  createCsr,
  createFleetCa,
  describeCert,
  generateTlsKey,
  issueClientCert,
  issueCrl,
  issueServerCert,
  verifyCertIssuedBy,
  verifyCsr,
} from '../../agent/shared/x509.js';
import { waitFor } from '../helpers/net.js';
import { tempDir } from '../helpers/tmp.js';

const run = promisify(execFile);
const HOUR = 3600_000;

const ca = await createFleetCa({ commonName: 'Ward test fleet CA', validDays: 2 });
const otherCa = await createFleetCa({ commonName: 'Some other CA', validDays: 2 });

async function clientIdentity(issuer = ca, csrCn = 'gw-a', commonName = 'gw-a') {
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName: csrCn });
  const now = Date.now();
  const issued = await issueClientCert(issuer, { csrPem, commonName, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR) });
  return { ...issued, keyPem: privateKeyPem };
}

/** Rewrites the DER inside a PEM block, keeping the label. */
function mutatePem(pem: string, mutate: (der: Buffer) => void): string {
  const label = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(pem)?.[1] ?? '';
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  mutate(der);
  const body = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

async function csrError(pem: string): Promise<{ code: string | undefined; message: string }> {
  try {
    await verifyCsr(pem);
  } catch (err) {
    return { code: isWardError(err) ? err.code : undefined, message: (err as Error).message };
  }
  return { code: undefined, message: 'accepted' };
}

async function openssl(dir: string, files: Record<string, string>, args: string[]): Promise<{ ok: boolean; out: string }> {
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  try {
    const { stdout, stderr } = await run('openssl', args, { cwd: dir });
    return { ok: true, out: stdout + stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

test('a TLS key is P-256 PKCS#8, and a CSR made from it round-trips with the key fingerprint', async (t) => {
  const { privateKeyPem } = await generateTlsKey();
  t.regex(privateKeyPem, /^-----BEGIN PRIVATE KEY-----\n/);
  const key = createPrivateKey(privateKeyPem);
  t.is(key.asymmetricKeyType, 'ec');
  t.is(key.asymmetricKeyDetails?.namedCurve, 'prime256v1');

  const csr = await createCsr({ privateKeyPem, commonName: 'gw-a' });
  t.regex(csr, /^-----BEGIN CERTIFICATE REQUEST-----\n/);
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  t.deepEqual(await verifyCsr(csr), { commonName: 'gw-a', publicKeyFingerprint: createHash('sha256').update(spki).digest('base64url') });
});

test('a tampered, malformed or foreign-algorithm CSR is refused with X509_BAD_CSR saying why', async (t) => {
  const { privateKeyPem } = await generateTlsKey();
  const csr = await createCsr({ privateKeyPem, commonName: 'gw-tamper' });

  const subject = mutatePem(csr, (der) => {
    const at = der.indexOf('gw-tamper');
    der[at] = 'h'.charCodeAt(0);
  });
  t.deepEqual(await csrError(subject), { code: 'WARD_X509_BAD_CSR', message: 'CSR signature does not verify (tampered, or not signed by its own key)' });

  // The DER ends with the ECDSA signature's s value: flipping its last byte keeps the structure valid.
  const signature = mutatePem(csr, (der) => {
    der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 0x01;
  });
  t.deepEqual(await csrError(signature), { code: 'WARD_X509_BAD_CSR', message: 'CSR signature does not verify (tampered, or not signed by its own key)' });

  const truncated = mutatePem(csr, (der) => der.fill(0, der.length - 20));
  t.is((await csrError(truncated)).code, 'WARD_X509_BAD_CSR');
  const garbage = await csrError('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n');
  t.deepEqual(garbage, { code: 'WARD_X509_BAD_CSR', message: 'CSR is malformed (not a PEM PKCS#10 certificate request)' });
  t.is((await csrError(ca.certPem)).code, 'WARD_X509_BAD_CSR', 'a certificate is not a CSR');
  t.regex((await csrError('x'.repeat(9000))).message, /too large/);
});

test('CSRs with an RSA or a P-384 key (made by the openssl CLI) are refused', async (t) => {
  const dir = await tempDir(t);
  const rsa = await openssl(dir, {}, ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=gw-rsa', '-keyout', 'rsa.key', '-out', 'rsa.csr']);
  t.true(rsa.ok, rsa.out);
  const rsaErr = await csrError(await readFile(join(dir, 'rsa.csr'), 'utf8'));
  t.deepEqual(rsaErr, { code: 'WARD_X509_BAD_CSR', message: 'CSR key must be EC P-256, got rsa' });

  const p384 = await openssl(dir, {}, [
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-384',
    '-nodes',
    '-subj',
    '/CN=gw-384',
    '-keyout',
    'p384.key',
    '-out',
    'p384.csr',
  ]);
  t.true(p384.ok, p384.out);
  t.deepEqual(await csrError(await readFile(join(dir, 'p384.csr'), 'utf8')), {
    code: 'WARD_X509_BAD_CSR',
    message: 'CSR key must be EC P-256, got EC secp384r1',
  });

  // An openssl-made P-256 CSR is accepted: the check is on the key, not on who built the request.
  const p256 = await openssl(dir, {}, [
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-subj',
    '/CN=gw-256',
    '-keyout',
    'p256.key',
    '-out',
    'p256.csr',
  ]);
  t.true(p256.ok, p256.out);
  t.is((await verifyCsr(await readFile(join(dir, 'p256.csr'), 'utf8'))).commonName, 'gw-256');
});

test('the fleet CA is a self-signed P-256 CA limited to leaf certificates', async (t) => {
  const dir = await tempDir(t);
  const text = await openssl(dir, { 'ca.pem': ca.certPem }, ['x509', '-in', 'ca.pem', '-noout', '-text']);
  t.true(text.ok, text.out);
  t.regex(text.out, /Signature Algorithm: ecdsa-with-SHA256/);
  t.regex(text.out, /NIST CURVE: P-256/);
  t.regex(text.out, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  t.regex(text.out, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
  t.regex(text.out, /Subject Key Identifier/);
  t.true(verifyCertIssuedBy(ca.certPem, ca.certPem));
  const d = describeCert(ca.certPem);
  t.is(d.subjectCn, 'Ward test fleet CA');
  t.is(d.issuerCn, 'Ward test fleet CA');
  t.true(d.notAfter.getTime() - Date.now() > 47 * HOUR);
  t.is(createPrivateKey(ca.keyPem).asymmetricKeyDetails?.namedCurve, 'prime256v1');
});

test('an issued client certificate verifies with openssl and node, and carries the caller-chosen CN, not the CSR one', async (t) => {
  const dir = await tempDir(t);
  const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000 - HOUR);
  const notAfter = new Date(notBefore.getTime() + 48 * HOUR);
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName: 'ward:controller' });
  const issued = await issueClientCert(ca, { csrPem, commonName: 'gw-7', notBefore, notAfter });

  t.regex(issued.serial, /^[0-7][0-9a-f]{31}$/, '16 bytes, positive, lowercase hex');
  t.deepEqual(issued.notAfter, notAfter);
  const verify = await openssl(dir, { 'ca.pem': ca.certPem, 'leaf.pem': issued.certPem }, ['verify', '-x509_strict', '-CAfile', 'ca.pem', 'leaf.pem']);
  t.true(verify.ok, verify.out);
  t.regex(verify.out, /leaf\.pem: OK/);

  const node = new X509Certificate(issued.certPem);
  const caCert = new X509Certificate(ca.certPem);
  t.true(node.checkIssued(caCert));
  t.true(node.verify(caCert.publicKey));
  t.true(verifyCertIssuedBy(issued.certPem, ca.certPem));
  t.false(verifyCertIssuedBy(issued.certPem, otherCa.certPem));
  t.is(
    node.publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),
    createPublicKey(privateKeyPem).export({ type: 'spki', format: 'der' }).toString('hex'),
  );

  const d = describeCert(issued.certPem);
  t.is(d.subjectCn, 'gw-7', 'the identity is the one the caller decided');
  t.is(d.issuerCn, 'Ward test fleet CA');
  t.is(d.serial, issued.serial);
  t.deepEqual(d.notBefore, notBefore);
  t.deepEqual(d.notAfter, notAfter);
  t.is(d.fingerprint, certFingerprint(issued.certPem));
  t.is(d.fingerprint, createHash('sha256').update(node.raw).digest('base64url'));

  const text = await openssl(dir, {}, ['x509', '-in', 'leaf.pem', '-noout', '-text']);
  t.regex(text.out, /Subject: CN = gw-7\n/);
  t.regex(text.out, /Basic Constraints: critical\s+CA:FALSE/);
  t.regex(text.out, /Key Usage: critical\s+Digital Signature\n/);
  t.regex(text.out, /Extended Key Usage:\s+TLS Web Client Authentication\n/);
  t.regex(text.out, /Authority Key Identifier/);
});

test('bad inputs: TypeError for misuse, X509_BAD_CERT for unreadable certificates or a CA key that does not match', async (t) => {
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName: 'gw-a' });
  const now = Date.now();
  const window = { notBefore: new Date(now), notAfter: new Date(now + HOUR) };
  await t.throwsAsync(issueClientCert(ca, { csrPem, commonName: 'gw a', ...window }), { instanceOf: TypeError });
  await t.throwsAsync(issueClientCert(ca, { csrPem, commonName: 'gw-a', notBefore: window.notAfter, notAfter: window.notBefore }), { instanceOf: TypeError });
  await t.throwsAsync(issueServerCert(ca, { hosts: [], validDays: 1 }), { instanceOf: TypeError });
  await t.throwsAsync(createFleetCa({ commonName: 'x', validDays: 0 }), { instanceOf: TypeError });
  const mismatch = await t.throwsAsync(issueClientCert({ certPem: ca.certPem, keyPem: otherCa.keyPem }, { csrPem, commonName: 'gw-a', ...window }));
  t.true(isWardError(mismatch, 'WARD_X509_BAD_CERT'), String(mismatch));
  t.true(
    isWardError(
      t.throws(() => describeCert('not a certificate')),
      'WARD_X509_BAD_CERT',
    ),
  );
  t.true(
    isWardError(
      t.throws(() => certFingerprint(csrPem)),
      'WARD_X509_BAD_CERT',
    ),
  );
});

test('a server and a client certificate from the fleet CA complete a mutual-TLS handshake; a foreign client certificate is refused', async (t) => {
  const server = await issueServerCert(ca, { hosts: ['127.0.0.1', 'localhost'], validDays: 1 });
  const sanText = new X509Certificate(server.certPem).subjectAltName;
  t.is(sanText, 'IP Address:127.0.0.1, DNS:localhost');
  t.is(describeCert(server.certPem).subjectCn, '127.0.0.1');
  t.is(describeCert(server.certPem).serial, server.serial);

  const seen: string[] = [];
  const failures: Error[] = [];
  const tls = createServer({ key: server.keyPem, cert: server.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (socket) => {
    seen.push(String((socket.getPeerCertificate().subject as { CN?: string } | undefined)?.CN));
    socket.end('hello\n');
  });
  tls.on('tlsClientError', (err) => failures.push(err));
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  t.teardown(() => tls.close());
  const port = (tls.address() as { port: number }).port;

  const dial = (id: { certPem: string; keyPem: string }) =>
    new Promise<{ data: string; error?: string; socket: TLSSocket }>((resolve) => {
      let data = '';
      const socket = connect({ host: '127.0.0.1', port, ca: ca.certPem, cert: id.certPem, key: id.keyPem });
      socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
      socket.on('data', (d) => {
        data += d;
      });
      socket.once('error', (err) => resolve({ data, error: (err as NodeJS.ErrnoException).code ?? err.message, socket }));
      socket.once('close', () => resolve({ data, socket }));
    });

  const device = await clientIdentity(ca, 'whatever-the-device-asked', 'gw-a');
  const ok = await dial(device);
  t.is(ok.error, undefined);
  t.is(ok.data, 'hello\n');
  t.deepEqual(seen, ['gw-a']);

  const foreign = await clientIdentity(otherCa, 'gw-a', 'gw-a');
  const refused = await dial(foreign);
  // Node's TLS server checks the chain after the TLS 1.3 handshake and just drops the socket: the client sees
  // a close (no alert), so what proves the refusal is the server side — an error and no application callback.
  t.is(refused.data, '');
  await waitFor('the server to report the refused handshake', () => failures.length > 0, 10_000, 20);
  t.deepEqual(seen, ['gw-a'], 'no application connection for the foreign certificate');
});

test('a CRL lists the revoked serial for openssl, which then refuses that certificate only', async (t) => {
  const dir = await tempDir(t);
  const revoked = await clientIdentity();
  const kept = await clientIdentity();
  const now = Date.now();
  const crl = await issueCrl(ca, {
    revoked: [{ serial: revoked.serial, revokedAt: new Date(now - 1000) }],
    thisUpdate: new Date(now - HOUR),
    nextUpdate: new Date(now + HOUR),
  });
  t.regex(crl, /^-----BEGIN X509 CRL-----\n/);
  const files = { 'ca.pem': ca.certPem, 'crl.pem': crl, 'revoked.pem': revoked.certPem, 'kept.pem': kept.certPem };
  const text = await openssl(dir, files, ['crl', '-in', 'crl.pem', '-noout', '-text']);
  t.true(text.ok, text.out);
  t.regex(text.out, /Version 2/);
  t.regex(text.out, /Issuer: CN = Ward test fleet CA/);
  t.true(text.out.includes(`Serial Number: ${revoked.serial.toUpperCase()}`), text.out);
  t.false(text.out.includes(kept.serial.toUpperCase()));

  const signed = await openssl(dir, {}, ['crl', '-in', 'crl.pem', '-noout', '-CAfile', 'ca.pem']);
  t.regex(signed.out, /verify OK/);
  const refused = await openssl(dir, {}, ['verify', '-crl_check', '-CRLfile', 'crl.pem', '-CAfile', 'ca.pem', 'revoked.pem']);
  t.false(refused.ok);
  t.regex(refused.out, /certificate revoked/);
  const accepted = await openssl(dir, {}, ['verify', '-crl_check', '-CRLfile', 'crl.pem', '-CAfile', 'ca.pem', 'kept.pem']);
  t.true(accepted.ok, accepted.out);

  const empty = await issueCrl(ca, { revoked: [], thisUpdate: new Date(now - HOUR), nextUpdate: new Date(now + HOUR) });
  const emptyOk = await openssl(dir, { 'empty.pem': empty }, ['verify', '-crl_check', '-CRLfile', 'empty.pem', '-CAfile', 'ca.pem', 'revoked.pem']);
  t.true(emptyOk.ok, emptyOk.out);
});
