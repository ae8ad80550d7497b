import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * Base45 (RFC 9285): bytes as characters of the QR alphanumeric set, so a
 * binary payload fills a QR code in alphanumeric mode (5.5 bits/char) rather
 * than byte mode (8 bits/char). The npm `base45` package decodes leniently
 * (unknown characters and out-of-range triples become garbage bytes), and a
 * scanned label is untrusted input, so this strict version refuses both as
 * RFC 9285 §4.2 requires.
 */
const CHARSET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:';
const VALUE = new Map([...CHARSET].map((c, i) => [c, i]));

export function base45Encode(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const n = (bytes[i] as number) * 256 + (bytes[i + 1] as number);
    out += CHARSET[n % 45] + (CHARSET[Math.floor(n / 45) % 45] as string) + (CHARSET[Math.floor(n / 2025)] as string);
  }
  if (bytes.length % 2 === 1) {
    const n = bytes[bytes.length - 1] as number;
    out += (CHARSET[n % 45] as string) + (CHARSET[Math.floor(n / 45)] as string);
  }
  return out;
}

export function base45Decode(text: string): Buffer {
  if (text.length % 3 === 1) throw malformed(`length ${text.length} is not valid base45 (a group of 1 character cannot occur)`);
  const out = Buffer.alloc(Math.floor(text.length / 3) * 2 + (text.length % 3 === 2 ? 1 : 0));
  let o = 0;
  for (let i = 0; i < text.length; i += 3) {
    const group = text.slice(i, i + 3);
    let n = 0;
    for (let j = group.length - 1; j >= 0; j--) {
      const v = VALUE.get(group[j] as string);
      if (v === undefined) throw malformed(`character ${JSON.stringify(group[j])} at ${i + j} is not in the base45 alphabet`);
      n = n * 45 + v;
    }
    if (group.length === 3) {
      if (n > 0xffff) throw malformed(`group at ${i} decodes to ${n}, above 65535`);
      out[o++] = n >> 8;
      out[o++] = n & 0xff;
    } else {
      if (n > 0xff) throw malformed(`final group decodes to ${n}, above 255`);
      out[o++] = n;
    }
  }
  return out;
}

function malformed(message: string): WardError {
  return new WardError(ErrorCodes.BUNDLE_MALFORMED, `not base45: ${message}`);
}
