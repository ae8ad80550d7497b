import { randomBytes, verify } from 'node:crypto';
import test from 'ava';
import nacl from 'tweetnacl';
import { canonicalBytes, canonicalize } from '../../agent/shared/canonical.js';
import {
  createRoot,
  parseSignedRoot,
  type RootMetadata,
  rootFingerprint,
  type SignedRoot,
  signRoot,
  trustedKey,
  updateRootChain,
  verifyInitialRoot,
  verifyRootUpdate,
} from '../../agent/shared/fleet-root.js';
import { generateSigningKey, signingKeyFromSeed } from '../../agent/shared/keys.js';
import { codeOf } from '../helpers/errors.js';

const NOW_MS = Date.UTC(2026, 10, 25, 12);
const now = Math.floor(NOW_MS / 1000);
const DAY = 86_400;

const a = generateSigningKey();
const b = generateSigningKey();
const c = generateSigningKey();
const x = generateSigningKey();
const y = generateSigningKey();
const z = generateSigningKey();

/** v1: keys a, b, c, threshold 2, signed by all three. */
const v1 = createRoot({ keys: [a, b, c], threshold: 2, validDays: 365, name: 'acme-fleet', now: NOW_MS });

function next(from: SignedRoot, keys: (typeof a)[], threshold: number, overrides: Partial<RootMetadata> = {}): RootMetadata {
  return {
    typ: 'ward.root',
    version: from.payload.version + 1,
    keys: Object.fromEntries(keys.map((k) => [k.kid, k.publicRaw])),
    threshold,
    iat: now,
    exp: now + 365 * DAY,
    ...overrides,
  };
}

function errorOf(fn: () => unknown): { code?: string; details?: Record<string, unknown>; message: string } {
  try {
    fn();
  } catch (err) {
    return err as { code?: string; details?: Record<string, unknown>; message: string };
  }
  throw new Error('expected a throw');
}

/** As a gateway receives it: through JSON. */
function wire(root: unknown): unknown {
  return JSON.parse(JSON.stringify(root));
}

test('an initial root verifies and keeps its fields', (t) => {
  const root = verifyInitialRoot(wire(v1), now);
  t.is(root.payload.version, 1);
  t.is(root.payload.threshold, 2);
  t.is(root.payload.name, 'acme-fleet');
  t.is(root.payload.exp, now + 365 * DAY);
  t.deepEqual(Object.keys(root.payload.keys).sort(), [a.kid, b.kid, c.kid].sort());
  t.is(root.signatures.length, 3);
  t.is(rootFingerprint(root), rootFingerprint(v1));
  t.is(canonicalize(root), canonicalize(v1));
});

test('createRoot defaults: version 1, threshold = number of keys, no name field', (t) => {
  const root = createRoot({ keys: [a, b], validDays: 30, now: NOW_MS });
  t.is(root.payload.version, 1);
  t.is(root.payload.threshold, 2);
  t.false('name' in root.payload);
  t.notThrows(() => verifyInitialRoot(wire(root), now));
});

test('a tampered payload fails: lowered threshold, added key', (t) => {
  const lowered = { ...v1, payload: { ...v1.payload, threshold: 1 } };
  t.is(
    codeOf(() => verifyInitialRoot(wire(lowered), now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
  const added = { ...v1, payload: { ...v1.payload, keys: { ...v1.payload.keys, [x.kid]: x.publicRaw } } };
  t.is(
    codeOf(() => verifyInitialRoot(wire(added), now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
  const extended = { ...v1, payload: { ...v1.payload, exp: v1.payload.exp + DAY } };
  t.is(
    codeOf(() => verifyInitialRoot(wire(extended), now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
});

test('a root with threshold 2 signed by one key fails', (t) => {
  const one = signRoot(v1.payload, [a]);
  const err = errorOf(() => verifyInitialRoot(wire(one), now));
  t.is(err.code, 'WARD_FLEET_ROOT_THRESHOLD');
  t.like(err.details, { set: 'own', valid: 1, required: 2 });
});

test('duplicate signatures by one key count once; signatures by unknown keys are ignored', (t) => {
  const one = signRoot(v1.payload, [a]);
  const first = one.signatures[0];
  if (first === undefined) throw new Error('no signature');
  const doubled = { ...one, signatures: [first, first] };
  t.like(errorOf(() => verifyInitialRoot(wire(doubled), now)).details, { valid: 1, required: 2 });
  const withStranger = signRoot(v1.payload, [a, x, y]);
  t.like(errorOf(() => verifyInitialRoot(wire(withStranger), now)).details, { valid: 1, required: 2 });
  const enough = signRoot(v1.payload, [x, a, y, c]);
  t.notThrows(() => verifyInitialRoot(wire(enough), now));
});

test('a signature under a listed kid made by another key does not count', (t) => {
  const forged = signRoot(v1.payload, [a, x]);
  const sigs = forged.signatures.map((s) => (s.kid === x.kid ? { kid: b.kid, sig: s.sig } : s));
  t.is(
    codeOf(() => verifyInitialRoot(wire({ ...forged, signatures: sigs }), now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
});

test('an expired initial root is refused', (t) => {
  t.is(
    codeOf(() => verifyInitialRoot(wire(v1), v1.payload.exp)),
    'WARD_FLEET_ROOT_EXPIRED',
  );
  t.notThrows(() => verifyInitialRoot(wire(v1), v1.payload.exp - 1));
});

test('rotation v1 → v2 to a brand-new key set works when signed by old and new keys', (t) => {
  const v2 = signRoot(next(v1, [x, y, z], 2), [a, b, x, y]);
  const trusted = verifyInitialRoot(wire(v1), now);
  const rotated = verifyRootUpdate(trusted, wire(v2), now);
  t.is(rotated.payload.version, 2);
  t.deepEqual(Object.keys(rotated.payload.keys).sort(), [x.kid, y.kid, z.kid].sort());
  t.truthy(trustedKey(rotated, x.kid));
  t.is(trustedKey(rotated, a.kid), undefined);
  t.is(trustedKey(rotated, '__proto__'), undefined);
  t.not(rootFingerprint(rotated), rootFingerprint(trusted));
});

test('v2 signed only by the new keys fails on the trusted (old) set', (t) => {
  const v2 = signRoot(next(v1, [x, y, z], 2), [x, y, z]);
  const err = errorOf(() => verifyRootUpdate(v1, wire(v2), now));
  t.is(err.code, 'WARD_FLEET_ROOT_THRESHOLD');
  t.like(err.details, { set: 'trusted', valid: 0, required: 2 });
});

test('v2 signed only by the old keys fails on its own (new) set', (t) => {
  const v2 = signRoot(next(v1, [x, y, z], 2), [a, b, c]);
  const err = errorOf(() => verifyRootUpdate(v1, wire(v2), now));
  t.is(err.code, 'WARD_FLEET_ROOT_THRESHOLD');
  t.like(err.details, { set: 'own', valid: 0, required: 2 });
});

test('v2 with one old signature short of the old threshold fails', (t) => {
  const v2 = signRoot(next(v1, [x], 1), [a, x]);
  t.like(errorOf(() => verifyRootUpdate(v1, wire(v2), now)).details, { set: 'trusted', valid: 1, required: 2 });
});

test('replaying v1 as an update is a rollback', (t) => {
  t.is(
    codeOf(() => verifyRootUpdate(v1, wire(v1), now)),
    'WARD_FLEET_ROOT_ROLLBACK',
  );
  const v2 = signRoot(next(v1, [a, b, c], 2), [a, b]);
  const older = signRoot({ ...v1.payload, iat: now + 1 }, [a, b, c]);
  t.is(
    codeOf(() => verifyRootUpdate(verifyRootUpdate(v1, wire(v2), now), wire(older), now)),
    'WARD_FLEET_ROOT_ROLLBACK',
  );
});

test('v3 directly after v1 (skipping v2) is invalid even when properly signed', (t) => {
  const v3 = signRoot(next(v1, [a, b, c], 2, { version: 3 }), [a, b, c]);
  const err = errorOf(() => verifyRootUpdate(v1, wire(v3), now));
  t.is(err.code, 'WARD_FLEET_ROOT_INVALID');
  t.like(err.details, { version: 3, expected: 2 });
});

test('a chain v1 → v2 → v3 applies in order; an expired intermediate is fine, an expired final is not', (t) => {
  const v2 = signRoot(next(v1, [x, y], 1, { exp: now - DAY, iat: now - 2 * DAY }), [a, b, x]);
  const v3 = signRoot(next(v2, [z], 1, { version: 3 }), [x, z]);
  const final = updateRootChain(v1, [wire(v2), wire(v3)], now);
  t.is(final.payload.version, 3);
  t.truthy(trustedKey(final, z.kid));

  t.is(
    codeOf(() => updateRootChain(v1, [wire(v2)], now)),
    'WARD_FLEET_ROOT_EXPIRED',
  );
  t.is(
    codeOf(() => verifyRootUpdate(v1, wire(v2), now)),
    'WARD_FLEET_ROOT_EXPIRED',
  );
  t.is(
    codeOf(() => updateRootChain(v1, [wire(v3)], now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
  t.is(
    codeOf(() => updateRootChain(v1, [wire(v3), wire(v2)], now)),
    'WARD_FLEET_ROOT_THRESHOLD',
  );
});

test('an empty chain returns the trusted root if it is still valid', (t) => {
  t.is(updateRootChain(v1, [], now), v1);
  t.is(
    codeOf(() => updateRootChain(v1, [], v1.payload.exp + 1)),
    'WARD_FLEET_ROOT_EXPIRED',
  );
});

test('a kid that is not the key id of its public key is refused', (t) => {
  const { [a.kid]: _aRaw, ...rest } = v1.payload.keys;
  const mismatched = { ...v1.payload, keys: { ...rest, [a.kid]: x.publicRaw } };
  const err = errorOf(() => parseSignedRoot({ payload: mismatched, signatures: v1.signatures }));
  t.is(err.code, 'WARD_FLEET_ROOT_INVALID');
  t.regex(err.message, /not the key id/);
  t.throws(() => signRoot(mismatched, [a]), { instanceOf: TypeError });
});

test('malformed root documents are invalid', (t) => {
  const bad: unknown[] = [
    null,
    [],
    'root',
    { payload: v1.payload },
    { payload: v1.payload, signatures: [] },
    { ...v1, extra: 1 },
    { ...v1, payload: { ...v1.payload, extra: 1 } },
    { ...v1, payload: { ...v1.payload, typ: 'ward.state' } },
    { ...v1, payload: { ...v1.payload, version: 0 } },
    { ...v1, payload: { ...v1.payload, version: 1.5 } },
    { ...v1, payload: { ...v1.payload, threshold: 0 } },
    { ...v1, payload: { ...v1.payload, threshold: 4 } },
    { ...v1, payload: { ...v1.payload, keys: {} } },
    { ...v1, payload: { ...v1.payload, exp: v1.payload.iat } },
    { ...v1, payload: { ...v1.payload, iat: -0 } },
    { ...v1, payload: { ...v1.payload, name: 'x'.repeat(129) } },
    { ...v1, signatures: [{ kid: a.kid, sig: 'short' }] },
    { ...v1, signatures: [{ kid: a.kid, sig: v1.signatures[0]?.sig, extra: true }] },
  ];
  for (const [i, value] of bad.entries()) {
    t.is(
      codeOf(() => parseSignedRoot(value)),
      'WARD_FLEET_ROOT_INVALID',
      `case ${i}`,
    );
  }
});

test('root signatures are plain ed25519 over canonical JSON of the payload (tweetnacl cross-check)', (t) => {
  const seed = randomBytes(32);
  const key = signingKeyFromSeed(seed);
  const pair = nacl.sign.keyPair.fromSeed(seed);
  const root = createRoot({ keys: [key], validDays: 10, now: NOW_MS });
  const sig = root.signatures[0];
  if (sig === undefined) throw new Error('no signature');
  t.is(sig.kid, key.kid);
  const message = canonicalBytes(root.payload);
  t.is(Buffer.from(nacl.sign.detached(message, pair.secretKey)).toString('base64url'), sig.sig);
  t.true(nacl.sign.detached.verify(message, Buffer.from(sig.sig, 'base64url'), pair.publicKey));
  const pub = trustedKey(root, key.kid);
  if (pub === undefined) throw new Error('no key');
  t.true(verify(null, message, pub, Buffer.from(sig.sig, 'base64url')));
});

test('programmer misuse throws TypeError', (t) => {
  t.throws(() => createRoot({ keys: [], validDays: 1 }), { instanceOf: TypeError });
  t.throws(() => createRoot({ keys: [a], validDays: 0 }), { instanceOf: TypeError });
  t.throws(() => createRoot({ keys: [a], threshold: 2, validDays: 1 }), { instanceOf: TypeError });
  t.throws(() => signRoot(v1.payload, []), { instanceOf: TypeError });
  t.throws(() => verifyInitialRoot(v1, Number.NaN), { instanceOf: TypeError });
});
