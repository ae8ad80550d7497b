import { randomBytes } from 'node:crypto';
import test from 'ava';
import { encode } from 'cbor2';
import { base45Decode, base45Encode } from '../../agent/shared/base45.js';
import {
  BUNDLE_PREFIX,
  caPinOf,
  encodeBundle,
  enrollmentCodeId,
  issueControllerCert,
  type TrustRoot,
  verifyBundle,
  verifyControllerCert,
} from '../../agent/shared/bundle.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import { codeOf } from '../helpers/errors.js';

const NOW = 1_800_000_000;
const root = generateSigningKey();
const controller = generateSigningKey();
const trust: TrustRoot = { payload: { version: 1, keys: { [root.kid]: root.publicRaw } } };
const caPin = caPinOf(randomBytes(32).toString('base64url'));

function certFor(key: SigningKey, signer = root, notAfter = NOW + 86_400 * 365) {
  return issueControllerCert(signer, { controllerPublicKey: key.publicRaw, caPin, notAfter, rootVersion: 1 });
}

function bundle(overrides: Partial<Parameters<typeof encodeBundle>[1]> = {}, signer = controller) {
  return encodeBundle(signer, {
    controllerCert: certFor(controller),
    token: randomBytes(16),
    exp: NOW + 3600,
    brokers: ['192.168.100.10:8884'],
    site: 'plant-lyon',
    line: 'line-3',
    cell: 'cell-12',
    ...overrides,
  });
}

test('RFC 9285 test vectors, and strict decoding', (t) => {
  t.is(base45Encode(Buffer.from('AB')), 'BB8');
  t.is(base45Encode(Buffer.from('Hello!!')), '%69 VD92EX0');
  t.is(base45Encode(Buffer.from('base-45')), 'UJCLQE7W581');
  t.is(base45Decode('QED8WEX0').toString(), 'ietf!');
  for (let n = 0; n < 50; n++) {
    const bytes = randomBytes(n);
    t.deepEqual(base45Decode(base45Encode(bytes)), bytes);
  }
  // RFC 9285 §4.2: "GGW" decodes to 65535+1 and must be refused; lowercase is not in the alphabet; a 1-char tail cannot occur.
  t.is(
    codeOf(() => base45Decode('GGW')),
    'WARD_BUNDLE_MALFORMED',
  );
  t.is(
    codeOf(() => base45Decode('bb8')),
    'WARD_BUNDLE_MALFORMED',
  );
  t.is(
    codeOf(() => base45Decode('BB8A')),
    'WARD_BUNDLE_MALFORMED',
  );
});

test('a bundle round-trips, stays in the QR alphanumeric set, and fits the size aim', (t) => {
  const token = randomBytes(16);
  const text = bundle({ token });
  t.true(text.startsWith(BUNDLE_PREFIX));
  t.regex(text, /^[0-9A-Z $%*+\-./:]+$/, 'alphanumeric-mode characters only');
  const bytes = base45Decode(text.slice(BUNDLE_PREFIX.length)).length;
  t.log(`bundle: ${bytes} bytes, ${text.length} characters`);
  t.true(bytes <= 300, `bundle is ${bytes} bytes`);
  const v = verifyBundle(text, { root: trust, nowSec: NOW });
  t.is(v.controller.controllerPublicKey, controller.publicRaw);
  t.is(v.controller.rootKid, root.kid);
  t.is(v.controller.caPin, caPin);
  t.is(v.token, token.toString('base64url'));
  t.is(v.codeId, enrollmentCodeId(token));
  t.deepEqual([v.site, v.line, v.cell, v.brokers], ['plant-lyon', 'line-3', 'cell-12', ['192.168.100.10:8884']]);
  // Scanners add a trailing newline or spaces.
  t.is(verifyBundle(`  ${text}\r\n`, { root: trust, nowSec: NOW }).codeId, v.codeId);
});

test('a bundle from a controller the root never certified is refused', (t) => {
  const rogueRoot = generateSigningKey();
  const text = bundle({ controllerCert: certFor(controller, rogueRoot) });
  t.is(
    codeOf(() => verifyBundle(text, { root: trust, nowSec: NOW })),
    'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
  );
});

test('a bundle signed by a key other than the certified controller is refused', (t) => {
  const other = generateSigningKey();
  t.is(
    codeOf(() => verifyBundle(bundle({}, other), { root: trust, nowSec: NOW })),
    'WARD_BUNDLE_BAD_SIGNATURE',
  );
});

test('every single-bit flip anywhere in the bundle is refused', (t) => {
  const text = bundle();
  const raw = base45Decode(text.slice(BUNDLE_PREFIX.length));
  const codes = new Map<string, number>();
  for (let i = 0; i < raw.length; i++) {
    for (const bit of [0, 3, 7]) {
      const flipped = Buffer.from(raw);
      flipped[i] = (flipped[i] as number) ^ (1 << bit);
      const code = codeOf(() => verifyBundle(BUNDLE_PREFIX + base45Encode(flipped), { root: trust, nowSec: NOW }));
      t.truthy(code, `flip of bit ${bit} in byte ${i} was accepted`);
      codes.set(code as string, (codes.get(code as string) ?? 0) + 1);
    }
  }
  t.log(Object.fromEntries(codes));
  t.true(
    [...codes.keys()].every((c) => c.startsWith('WARD_BUNDLE_')),
    [...codes.keys()].join(),
  );
});

test('expiry: an expired bundle and an expired controller certification are refused', (t) => {
  t.is(
    codeOf(() => verifyBundle(bundle({ exp: NOW - 1 }), { root: trust, nowSec: NOW })),
    'WARD_BUNDLE_EXPIRED',
  );
  const old = bundle({ controllerCert: certFor(controller, root, NOW - 10) });
  t.is(
    codeOf(() => verifyBundle(old, { root: trust, nowSec: NOW })),
    'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
  );
});

test('a bundle for another site or line is refused when the gateway knows its own', (t) => {
  const text = bundle();
  t.is(
    codeOf(() => verifyBundle(text, { root: trust, nowSec: NOW, expectSite: 'plant-paris' })),
    'WARD_BUNDLE_WRONG_SITE',
  );
  t.is(
    codeOf(() => verifyBundle(text, { root: trust, nowSec: NOW, expectSite: 'plant-lyon', expectLine: 'line-4' })),
    'WARD_BUNDLE_WRONG_SITE',
  );
  t.is(verifyBundle(text, { root: trust, nowSec: NOW, expectSite: 'plant-lyon', expectLine: 'line-3' }).cell, 'cell-12');
});

test('truncated, garbage and foreign texts are refused as malformed', (t) => {
  const text = bundle();
  for (const bad of [
    '',
    'hello',
    'https://example.com/',
    BUNDLE_PREFIX,
    text.slice(0, text.length - 3),
    text.slice(0, 40),
    `${text}AB`,
    text.toLowerCase(),
    `${BUNDLE_PREFIX}${'9'.repeat(3000)}`,
    BUNDLE_PREFIX + base45Encode(encode(['x', 1])),
    BUNDLE_PREFIX + base45Encode(encode([new Uint8Array(3), new Uint8Array(64)])),
  ]) {
    t.is(
      codeOf(() => verifyBundle(bad, { root: trust, nowSec: NOW })),
      'WARD_BUNDLE_MALFORMED',
      JSON.stringify(bad.slice(0, 40)),
    );
  }
});

test('a controller certificate names its key, CA pin and root version', (t) => {
  const v = verifyControllerCert(certFor(controller), trust, NOW);
  t.is(v.controllerKid, controller.kid);
  t.is(v.caPin, caPin);
  t.is(v.rootVersion, 1);
  t.throws(() => issueControllerCert(root, { controllerPublicKey: controller.publicRaw, caPin: 'short', notAfter: NOW, rootVersion: 1 }), {
    instanceOf: TypeError,
  });
});

test('an enrolled identity may outlive its controller certification; a bundle may not; k-of-n roots are refused', (t) => {
  const expired = certFor(controller, root, NOW - 10);
  t.is(
    codeOf(() => verifyControllerCert(expired, trust, NOW)),
    'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
  );
  t.is(verifyControllerCert(expired, trust, NOW, { allowExpired: true }).controllerKid, controller.kid);
  const rogue = generateSigningKey();
  t.is(
    codeOf(() => verifyControllerCert(certFor(controller, rogue), trust, NOW, { allowExpired: true })),
    'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
    'never a foreign signature',
  );
  const twoOfTwo: TrustRoot = { payload: { version: 1, threshold: 2, keys: { [root.kid]: root.publicRaw, [rogue.kid]: rogue.publicRaw } } };
  t.is(
    codeOf(() => verifyControllerCert(certFor(controller), twoOfTwo, NOW)),
    'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
  );
});

test('a code bound to a claimed key is refused by any other gateway; the claim path accepts bound codes only', (t) => {
  const device = generateSigningKey();
  const bound = bundle({ boundKid: device.kid });
  t.is(verifyBundle(bound, { root: trust, nowSec: NOW, deviceKid: device.kid, requireBound: true }).boundKid, device.kid);
  t.is(
    codeOf(() => verifyBundle(bound, { root: trust, nowSec: NOW, deviceKid: generateSigningKey().kid })),
    'WARD_BUNDLE_NOT_FOR_THIS_DEVICE',
  );
  t.is(
    codeOf(() => verifyBundle(bundle(), { root: trust, nowSec: NOW, deviceKid: device.kid, requireBound: true })),
    'WARD_BUNDLE_NOT_FOR_THIS_DEVICE',
  );
  t.is(verifyBundle(bundle(), { root: trust, nowSec: NOW, deviceKid: device.kid }).boundKid, undefined, 'an ordinary label is for anyone');
});
