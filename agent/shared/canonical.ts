import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * Canonical JSON in the style of RFC 8785 (JCS): object keys sorted by UTF-16
 * code units, no whitespace, strings and numbers serialised as ECMAScript's
 * JSON.stringify does (which is what JCS §3.2.2 specifies).
 *
 * Stricter than JCS on purpose: anything JSON cannot represent exactly
 * (undefined, functions, symbols, bigint, NaN/Infinity, -0, sparse arrays,
 * non-plain objects such as Date or Buffer) throws instead of being silently
 * dropped or coerced, because a value that changes between signer and
 * verifier is a signature failure waiting to happen. Hand-written rather than
 * a dependency because the reference package (`canonicalize`) drops
 * undefined and honours toJSON(), which is exactly the leniency we refuse.
 */
export function canonicalize(value: unknown): string {
  return write(value, '$');
}

export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalize(value), 'utf8');
}

function unsupported(path: string, what: string): never {
  throw new WardError(ErrorCodes.CANONICAL_UNSUPPORTED_VALUE, `canonical JSON: ${what} at ${path} cannot be signed`, {
    details: { path },
  });
}

function write(value: unknown, path: string): string {
  switch (typeof value) {
    case 'string':
      if (!value.isWellFormed()) unsupported(path, 'a string with a lone surrogate');
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) unsupported(path, `the number ${value}`);
      if (Object.is(value, -0)) unsupported(path, 'negative zero');
      return JSON.stringify(value);
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) {
        const parts: string[] = [];
        for (let i = 0; i < value.length; i++) {
          if (!(i in value)) unsupported(`${path}[${i}]`, 'a hole in an array');
          parts.push(write(value[i], `${path}[${i}]`));
        }
        return `[${parts.join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) unsupported(path, `a ${proto?.constructor?.name ?? 'non-plain'} object`);
      // Default sort compares UTF-16 code units, as JCS §3.2.3 requires.
      const keys = Object.keys(value).sort();
      const parts: string[] = [];
      for (const key of keys) {
        const v = (value as Record<string, unknown>)[key];
        parts.push(`${write(key, path)}:${write(v, `${path}.${key}`)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      return unsupported(path, `a value of type ${typeof value}`);
  }
}
