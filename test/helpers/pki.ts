import { execFile } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * A throwaway CA and a server certificate for 127.0.0.1, made with the
 * openssl CLI (Node's crypto cannot issue X.509 certificates). For TLS tests
 * only; the fleet CA of the identity issue is a different thing. Files are
 * world-readable because Mosquitto drops to its own user before reading them.
 */
export interface TestPki {
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
}

export async function makeTestPki(dir: string, name = 'ca'): Promise<TestPki> {
  await chmod(dir, 0o755);
  const p = (f: string) => join(dir, `${name}-${f}`);
  const subj = (cn: string) => ['-subj', `/CN=${cn}`];
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-days',
    '2',
    ...subj(`Ward test CA ${name}`),
    '-keyout',
    p('ca.key'),
    '-out',
    p('ca.pem'),
  ]);
  await run('openssl', [
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    ...subj('127.0.0.1'),
    '-keyout',
    p('server.key'),
    '-out',
    p('server.csr'),
  ]);
  await writeFile(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    p('server.csr'),
    '-CA',
    p('ca.pem'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    p('ext.cnf'),
    '-out',
    p('server.pem'),
  ]);
  for (const f of ['ca.pem', 'server.pem', 'server.key']) await chmod(p(f), 0o644);
  return { caCert: p('ca.pem'), serverCert: p('server.pem'), serverKey: p('server.key') };
}
