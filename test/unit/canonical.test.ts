import test from 'ava';
import { canonicalize } from '../../agent/shared/canonical.js';

test('sorts keys by UTF-16 code units and drops whitespace (RFC 8785 §3.2.3)', (t) => {
  // The key-ordering example of RFC 8785 §3.2.3, values replaced by their index.
  const input = {
    '\u20ac': 'Euro Sign',
    '\r': 'Carriage Return',
    '\ufb33': 'Hebrew Letter Dalet With Dagesh',
    '1': 'One',
    '\ud83d\ude00': 'Emoji: Grinning Face',
    '\u0080': 'Control',
    '\u00f6': 'Latin Small Letter O With Diaeresis',
  };
  // Compare positions in the text: JSON.parse would reorder integer-like keys.
  const text = canonicalize(input);
  const positions = ['\\r', '1', '\u0080', '\u00f6', '\u20ac', '\ud83d\ude00', '\ufb33'].map((k) => text.indexOf(`"${k}"`));
  t.deepEqual(
    [...positions].sort((a, b) => a - b),
    positions,
  );
  t.false(text.includes(' : ') || text.includes(', '));
});

test('numbers serialise as ECMAScript does (RFC 8785 §3.2.2.3)', (t) => {
  t.is(canonicalize([1e21, 1e-7, 0.000001, 333333333.3333333, 4.5, 100, -1.5e-10]), '[1e+21,1e-7,0.000001,333333333.3333333,4.5,100,-1.5e-10]');
});

test('nested objects and arrays are canonical at every level', (t) => {
  t.is(canonicalize({ b: [{ z: 1, a: 2 }], a: { d: null, c: true } }), '{"a":{"c":true,"d":null},"b":[{"a":2,"z":1}]}');
});

test('the same value always gives the same bytes, whatever the insertion order', (t) => {
  t.is(canonicalize({ x: 1, y: 2 }), canonicalize({ y: 2, x: 1 }));
});

for (const [name, value] of [
  ['undefined', { a: undefined }],
  ['NaN', { a: Number.NaN }],
  ['Infinity', [Number.POSITIVE_INFINITY]],
  ['-0', { a: -0 }],
  ['bigint', { a: 10n }],
  ['a Date', { a: new Date(0) }],
  ['a Buffer', { a: Buffer.from('x') }],
  ['a function', { a: () => 1 }],
  // biome-ignore lint/suspicious/noSparseArray: the hole is the input under test
  ['a sparse array', [1, , 3]],
  ['a lone surrogate', { a: '\ud800' }],
] as const) {
  test(`refuses ${name} instead of silently changing it`, (t) => {
    const err = t.throws(() => canonicalize(value));
    t.is((err as { code?: string }).code, 'WARD_CANONICAL_UNSUPPORTED_VALUE');
  });
}
