import test from 'ava';
import { generateSigningKey, privateKeyToPem, signingKeyFromPem } from '../../agent/shared/keys.js';
import { openSealedKey, SEALED_KEY_FORMAT, sealPrivateKey } from '../../agent/shared/sealed-key.js';
import { codeOf } from '../helpers/errors.js';

const FAST = 2 ** 14;
const key = generateSigningKey();
const pem = privateKeyToPem(key);
const passphrase = 'correct horse battery staple';

function detailsOf(fn: () => unknown): Record<string, unknown> | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { details?: Record<string, unknown> }).details;
  }
  return undefined;
}

const sealed = sealPrivateKey(pem, passphrase, { cost: FAST });

function edit(mutate: (doc: Record<string, unknown>) => void): string {
  const doc = JSON.parse(sealed) as Record<string, unknown>;
  mutate(doc);
  return JSON.stringify(doc);
}

test('a sealed key opens with its passphrase and yields the same key', (t) => {
  const doc = JSON.parse(sealed);
  t.is(doc.format, SEALED_KEY_FORMAT);
  t.deepEqual(Object.keys(doc).sort(), ['cipher', 'ciphertext', 'format', 'iv', 'kdf', 'tag']);
  t.like(doc.kdf, { name: 'scrypt', N: FAST, r: 8, p: 1 });
  t.is(Buffer.from(doc.kdf.salt, 'base64url').length, 16);
  t.is(Buffer.from(doc.iv, 'base64url').length, 12);
  t.false(sealed.includes('PRIVATE KEY'));
  const opened = openSealedKey(sealed, passphrase);
  t.is(opened, pem);
  t.is(signingKeyFromPem(opened).kid, key.kid);
});

test('the default cost is scrypt N = 2^17 and round-trips', (t) => {
  const text = sealPrivateKey(pem, passphrase);
  t.is(JSON.parse(text).kdf.N, 2 ** 17);
  t.is(openSealedKey(text, passphrase), pem);
});

test('sealing twice gives different salts, ivs and ciphertexts', (t) => {
  const a = JSON.parse(sealPrivateKey(pem, passphrase, { cost: FAST }));
  const b = JSON.parse(sealPrivateKey(pem, passphrase, { cost: FAST }));
  t.not(a.kdf.salt, b.kdf.salt);
  t.not(a.iv, b.iv);
  t.not(a.ciphertext, b.ciphertext);
});

test('a wrong passphrase is refused', (t) => {
  t.is(
    codeOf(() => openSealedKey(sealed, 'correct horse battery stapler')),
    'WARD_FLEET_PASSPHRASE_WRONG',
  );
});

test('a flipped ciphertext byte is refused as wrong passphrase or tampering', (t) => {
  const tampered = edit((doc) => {
    const ct = Buffer.from(doc.ciphertext as string, 'base64url');
    ct[5] = (ct[5] as number) ^ 0x01;
    doc.ciphertext = ct.toString('base64url');
  });
  t.is(
    codeOf(() => openSealedKey(tampered, passphrase)),
    'WARD_FLEET_PASSPHRASE_WRONG',
  );
});

test('a flipped tag or iv byte is refused', (t) => {
  for (const field of ['tag', 'iv'] as const) {
    const tampered = edit((doc) => {
      const b = Buffer.from(doc[field] as string, 'base64url');
      b[0] = (b[0] as number) ^ 0x80;
      doc[field] = b.toString('base64url');
    });
    t.is(
      codeOf(() => openSealedKey(tampered, passphrase)),
      'WARD_FLEET_PASSPHRASE_WRONG',
      field,
    );
  }
});

test('a changed scrypt N in the header is detected, not a crash', (t) => {
  for (const N of [2 ** 15, 2 ** 16]) {
    const tampered = edit((doc) => {
      (doc.kdf as Record<string, unknown>).N = N;
    });
    t.is(
      codeOf(() => openSealedKey(tampered, passphrase)),
      'WARD_FLEET_PASSPHRASE_WRONG',
      `N=${N}`,
    );
  }
});

test('a changed salt is detected', (t) => {
  const tampered = edit((doc) => {
    (doc.kdf as Record<string, unknown>).salt = Buffer.alloc(16, 7).toString('base64url');
  });
  t.is(
    codeOf(() => openSealedKey(tampered, passphrase)),
    'WARD_FLEET_PASSPHRASE_WRONG',
  );
});

test('N outside [2^14, 2^20] or not a power of two is an invalid key file naming kdf.N', (t) => {
  for (const N of [2 ** 13, 2 ** 21, 3 * 2 ** 14, 2 ** 14 + 0.5, '16384']) {
    const bad = edit((doc) => {
      (doc.kdf as Record<string, unknown>).N = N;
    });
    t.is(
      codeOf(() => openSealedKey(bad, passphrase)),
      'WARD_FLEET_KEY_FILE_INVALID',
      String(N),
    );
    t.deepEqual(
      detailsOf(() => openSealedKey(bad, passphrase)),
      { field: 'kdf.N' },
    );
  }
});

test('truncated JSON is an invalid key file', (t) => {
  t.is(
    codeOf(() => openSealedKey(sealed.slice(0, sealed.length / 2), passphrase)),
    'WARD_FLEET_KEY_FILE_INVALID',
  );
  t.is(
    codeOf(() => openSealedKey('', passphrase)),
    'WARD_FLEET_KEY_FILE_INVALID',
  );
  t.is(
    codeOf(() => openSealedKey('[]', passphrase)),
    'WARD_FLEET_KEY_FILE_INVALID',
  );
});

test('an unknown format is refused naming the format field', (t) => {
  const bad = edit((doc) => {
    doc.format = 'ward-sealed-key/v2';
  });
  t.is(
    codeOf(() => openSealedKey(bad, passphrase)),
    'WARD_FLEET_KEY_FILE_INVALID',
  );
  t.deepEqual(
    detailsOf(() => openSealedKey(bad, passphrase)),
    { field: 'format' },
  );
});

test('malformed fields are refused naming the field', (t) => {
  const REMOVE = Symbol('remove');
  const cases: [string, unknown][] = [
    ['cipher', 'aes-128-gcm'],
    ['iv', Buffer.alloc(16).toString('base64url')],
    ['tag', 'not base64url!'],
    ['tag', REMOVE],
    ['ciphertext', ''],
    ['kdf', 'scrypt'],
    ['kdf.name', 'argon2id'],
    ['kdf.r', 1],
    ['kdf.p', 64],
    ['kdf.salt', Buffer.alloc(8).toString('base64url')],
    ['comment', 'hello'],
  ];
  for (const [field, value] of cases) {
    const bad = edit((doc) => {
      const parts = field.split('.');
      const last = parts.pop() as string;
      const target = parts.reduce((o, k) => o[k] as Record<string, unknown>, doc);
      if (value === REMOVE) delete target[last];
      else target[last] = value;
    });
    t.is(
      codeOf(() => openSealedKey(bad, passphrase)),
      'WARD_FLEET_KEY_FILE_INVALID',
      field,
    );
    t.deepEqual(
      detailsOf(() => openSealedKey(bad, passphrase)),
      { field },
      field,
    );
  }
});

test('NFC and NFD spellings of the same passphrase both open the key', (t) => {
  const nfc = 'Grüße aus Köln, café'.normalize('NFC');
  const nfd = nfc.normalize('NFD');
  t.not(nfc, nfd);
  const a = sealPrivateKey(pem, nfc, { cost: FAST });
  t.is(openSealedKey(a, nfd), pem);
  const b = sealPrivateKey(pem, nfd, { cost: FAST });
  t.is(openSealedKey(b, nfc), pem);
});

test('programmer misuse throws TypeError', (t) => {
  t.throws(() => sealPrivateKey(pem, ''), { instanceOf: TypeError });
  t.throws(() => sealPrivateKey('not a pem', passphrase, { cost: FAST }), { instanceOf: TypeError });
  t.throws(() => sealPrivateKey(pem, passphrase, { cost: 1000 }), { instanceOf: TypeError });
  t.throws(() => sealPrivateKey(pem, passphrase, { cost: 2 ** 21 }), { instanceOf: TypeError });
  t.throws(() => openSealedKey(sealed, ''), { instanceOf: TypeError });
});
