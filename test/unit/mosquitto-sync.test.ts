import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { ManualClock } from '../../agent/core/clock.js';
import { createFleetCa } from '../../agent/shared/x509.js';
import { syncMosquitto } from '../../controller/mosquitto-sync.js';
import { type DeviceIdentityRecord, MemoryDeviceStore } from '../../controller/store.js';
import { testLogger } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// What the controller writes for an external Mosquitto, from the store (the real broker runs these
// files in test/integration/enrollment-mosquitto.test.ts).

const identity = (status: 'active' | 'revoked', serials: string[]): DeviceIdentityRecord => ({
  status,
  site: 's',
  line: 'l',
  cell: 'c',
  roles: ['gateway'],
  enrolledAt: 1,
  codeId: '0011223344556677',
  certSerial: serials.at(-1) as string,
  certNotAfter: 2,
  tlsKeyFingerprint: 'f',
  serials,
  ...(status === 'revoked' ? { revokedAt: 1_800_000_000 } : {}),
});

test('ACL lists active devices only; the CRL holds every serial of a revoked device and the superseded ones of active devices', async (t) => {
  const dir = await tempDir(t);
  const store = new MemoryDeviceStore();
  const clock = new ManualClock(Date.parse('2027-01-01T00:00:00Z'));
  const base = { publicKey: 'A'.repeat(43), registeredAt: 1, online: false };
  await store.put({ ...base, id: 'gw-active', kid: 'k1', identity: identity('active', ['0a01', '0a02', '0a03']) });
  await store.put({ ...base, id: 'gw-revoked', kid: 'k2', identity: identity('revoked', ['0b01', '0b02']) });
  await store.put({ ...base, id: 'gw-static', kid: 'k3' });
  await store.putCode({
    codeId: '0011223344556677',
    tokenHash: 'h',
    mosquittoHash: `$7$101$${'A'.repeat(16)}$${'B'.repeat(86)}==`,
    site: 's',
    line: 'l',
    cell: 'c',
    createdAt: 1,
    exp: 1,
    status: 'open',
  });
  const ca = await createFleetCa({ commonName: 'test CA', validDays: 3650 });
  await syncMosquitto({ dir, store, ca, clock, log: testLogger() });

  const acl = await readFile(join(dir, 'acl-mtls'), 'utf8');
  t.regex(acl, /^user gw-active$/m);
  t.notRegex(acl, /gw-revoked|gw-static/);
  t.notRegex(await readFile(join(dir, 'passwd'), 'utf8'), /_enroll-/, 'an expired code has no account');
  const crl = execFileSync('openssl', ['crl', '-in', join(dir, 'crl.pem'), '-noout', '-text'], { encoding: 'utf8' });
  const serials = [...crl.matchAll(/Serial Number: ([0-9A-F]+)/g)].map((m) => (m[1] as string).toLowerCase().replace(/^0+/, '')).sort();
  t.deepEqual(serials, ['a01', 'b01', 'b02']);
  t.regex(crl, /Next Update: .*2027/, 'a month ahead: the daily refresh keeps it valid');
});
