import { randomBytes } from 'node:crypto';
import test from 'ava';
import nacl from 'tweetnacl';
import { ManualClock } from '../../agent/core/clock.js';
import { canonicalBytes } from '../../agent/shared/canonical.js';
import { type Envelope, EnvelopeVerifier, type Expectation, encodeEnvelope, MemoryReplayCache, seal, signPayload } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey, signingKeyFromSeed } from '../../agent/shared/keys.js';
import { codeOf } from '../helpers/errors.js';

const clock = new ManualClock(Date.UTC(2026, 10, 25, 12));
const device = generateSigningKey();
const other = generateSigningKey();

function verifierFor(...keys: [SigningKey, string][]) {
  const byKid = new Map(keys.map(([k, principal]) => [k.kid, { publicKey: k.publicKey, principal }]));
  return new EnvelopeVerifier({ keys: (kid) => byKid.get(kid), clock, skewSeconds: 60 });
}

const expectCmd: Expectation = { typ: 'ward.test', principal: 'gw-1', subject: 'gw-1' };
const body = { typ: 'ward.test', sub: 'gw-1', value: 42 };

test('a sealed message verifies and returns its payload and principal', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, body, { ttlSeconds: 60, clock });
  const out = v.verify(encodeEnvelope(env), expectCmd);
  t.is(out.payload.value, 42);
  t.is(out.principal, 'gw-1');
  t.is(out.kid, device.kid);
});

test('node:crypto ed25519 signatures are byte-identical to tweetnacl for the same seed (independent cross-check)', (t) => {
  for (let i = 0; i < 20; i++) {
    const seed = randomBytes(32);
    const key = signingKeyFromSeed(seed);
    const pair = nacl.sign.keyPair.fromSeed(seed);
    t.is(Buffer.from(pair.publicKey).toString('base64url'), key.publicRaw);
    const env = signPayload(key, { typ: 'x', iat: 1, exp: 2, nonce: `nonce-${i}-abcdefgh`, n: i });
    const naclSig = nacl.sign.detached(canonicalBytes(env.payload), pair.secretKey);
    t.is(Buffer.from(naclSig).toString('base64url'), env.sig);
    t.true(nacl.sign.detached.verify(canonicalBytes(env.payload), Buffer.from(env.sig, 'base64url'), pair.publicKey));
  }
});

test('a tampered payload is refused as a bad signature', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, body, { ttlSeconds: 60, clock });
  const tampered = { ...env, payload: { ...env.payload, value: 43 } };
  t.is(
    codeOf(() => v.verify(JSON.stringify(tampered), expectCmd)),
    'WARD_ENVELOPE_BAD_SIGNATURE',
  );
});

test('a flipped signature bit is refused', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, body, { ttlSeconds: 60, clock });
  const sig = Buffer.from(env.sig, 'base64url');
  sig[10] = (sig[10] as number) ^ 0x01;
  t.is(
    codeOf(() => v.verify(JSON.stringify({ ...env, sig: sig.toString('base64url') }), expectCmd)),
    'WARD_ENVELOPE_BAD_SIGNATURE',
  );
});

test('a message signed by a different key under a known kid is refused', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const forged = seal(other, body, { ttlSeconds: 60, clock });
  t.is(
    codeOf(() => v.verify(JSON.stringify({ ...forged, kid: device.kid }), expectCmd)),
    'WARD_ENVELOPE_BAD_SIGNATURE',
  );
});

test('an unknown key is refused before any claim is looked at', (t) => {
  const v = verifierFor([device, 'gw-1']);
  t.is(
    codeOf(() => v.verify(encodeEnvelope(seal(other, body, { ttlSeconds: 60, clock })), expectCmd)),
    'WARD_ENVELOPE_UNKNOWN_KEY',
  );
});

test("a device's key cannot speak for another device", (t) => {
  const v = verifierFor([device, 'gw-1'], [other, 'gw-2']);
  const env = seal(other, body, { ttlSeconds: 60, clock });
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), expectCmd)),
    'WARD_ENVELOPE_WRONG_SUBJECT',
  );
  const aboutOther = seal(device, { ...body, sub: 'gw-2' }, { ttlSeconds: 60, clock });
  t.is(
    codeOf(() => v.verify(encodeEnvelope(aboutOther), expectCmd)),
    'WARD_ENVELOPE_WRONG_SUBJECT',
  );
});

test('a message of another type is refused (no cross-topic replay)', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, { ...body, typ: 'ward.other' }, { ttlSeconds: 60, clock });
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), expectCmd)),
    'WARD_ENVELOPE_WRONG_TYPE',
  );
});

test('an expired message is refused; skew is tolerated', (t) => {
  const c = new ManualClock(clock.now());
  const v = new EnvelopeVerifier({ keys: () => ({ publicKey: device.publicKey, principal: 'gw-1' }), clock: c, skewSeconds: 30 });
  const env = encodeEnvelope(seal(device, body, { ttlSeconds: 60, clock: c }));
  c.advance(85_000); // 85 s: past exp (60 s) but within skew (30 s)
  t.is(v.verify(env, expectCmd).payload.value, 42);
  c.advance(10_000);
  const late = encodeEnvelope(seal(device, body, { ttlSeconds: 60, clock: new ManualClock(c.now() - 100_000) }));
  t.is(
    codeOf(() => v.verify(late, expectCmd)),
    'WARD_ENVELOPE_EXPIRED',
  );
});

test('a message from the future is refused', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, body, { ttlSeconds: 60, clock: new ManualClock(clock.now() + 3_600_000) });
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), expectCmd)),
    'WARD_ENVELOPE_NOT_YET_VALID',
  );
});

test('a replayed nonce is refused, and a refused message does not burn its nonce', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const env = seal(device, body, { ttlSeconds: 60, clock, nonce: 'nonce-replay-1' });
  // First delivered on the wrong subject: refused, nonce not consumed.
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), { ...expectCmd, subject: 'gw-9' })),
    'WARD_ENVELOPE_WRONG_SUBJECT',
  );
  t.notThrows(() => v.verify(encodeEnvelope(env), expectCmd));
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), expectCmd)),
    'WARD_ENVELOPE_REPLAYED',
  );
});

test('versions must increase per stream; a rollback is refused', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const at = (version: number) => encodeEnvelope(seal(device, body, { ttlSeconds: 60, clock, version }));
  t.notThrows(() => v.verify(at(5), expectCmd));
  t.notThrows(() => v.verify(at(7), expectCmd));
  t.is(
    codeOf(() => v.verify(at(6), expectCmd)),
    'WARD_ENVELOPE_ROLLBACK',
  );
  t.is(
    codeOf(() => v.verify(at(7), expectCmd)),
    'WARD_ENVELOPE_ROLLBACK',
  );
  // Another stream has its own sequence.
  t.notThrows(() => v.verify(at(6), { ...expectCmd, stream: 'other' }));
});

test('malformed input gets precise errors, never a crash', (t) => {
  const v = verifierFor([device, 'gw-1']);
  const good = seal(device, body, { ttlSeconds: 60, clock }) as Envelope;
  const cases: [unknown, string][] = [
    ['not json at all', 'WARD_ENVELOPE_NOT_JSON'],
    ['[1,2,3]', 'WARD_ENVELOPE_MALFORMED'],
    ['null', 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, extra: 1 }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ payload: good.payload, sig: good.sig }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, kid: 'has spaces' }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, payload: 'string' }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, payload: { ...good.payload, iat: '1' } }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, payload: { typ: 'ward.test', iat: 1, exp: 2 } }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, payload: { ...good.payload, exp: good.payload.iat - 1 } }), 'WARD_ENVELOPE_MALFORMED'],
    [JSON.stringify({ ...good, sig: 'AAAA' }), 'WARD_ENVELOPE_BAD_SIGNATURE'],
  ];
  for (const [raw, code] of cases)
    t.is(
      codeOf(() => v.verify(raw as string, expectCmd)),
      code,
      String(raw).slice(0, 60),
    );
});

test('an oversized envelope is refused before parsing', (t) => {
  const v = new EnvelopeVerifier({ keys: () => undefined, clock, maxBytes: 1024 });
  t.is(
    codeOf(() => v.verify(Buffer.alloc(2048, 0x20), expectCmd)),
    'WARD_ENVELOPE_TOO_LARGE',
  );
});

test('a validity window longer than allowed is refused (bounds the replay cache)', (t) => {
  const v = new EnvelopeVerifier({ keys: () => ({ publicKey: device.publicKey, principal: 'gw-1' }), clock, maxLifetimeSeconds: 3600 });
  const env = seal(device, body, { ttlSeconds: 7200, clock });
  t.is(
    codeOf(() => v.verify(encodeEnvelope(env), expectCmd)),
    'WARD_ENVELOPE_MALFORMED',
  );
});

test('the replay cache forgets expired nonces and stays bounded', (t) => {
  const cache = new MemoryReplayCache(100);
  for (let i = 0; i < 500; i++) cache.remember('k', `n${i}`, 1000 + i);
  t.true(cache.size <= 100);
  t.true(cache.seen('k', 'n499', 1000));
  t.false(cache.seen('k', 'n499', 2000));
});
