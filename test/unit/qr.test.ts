import { deflateSync } from 'node:zlib';
import test from 'ava';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import QRCode from 'qrcode';
import { ErrorCodes, WardError, type WardErrorCode } from '../../agent/core/errors.js';
import { decodeQrImage, qrInfo, renderPng, renderSvg, renderTerminal } from '../../agent/shared/qr.js';

const ALNUM = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:';

/** Deterministic xorshift32 in [0, 1): failures must reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** A `WARD1:` + base45-alphabet payload of exactly `length` characters, as a label carries. */
function payload(length: number, seed = 1): string {
  const rand = rng(seed);
  let s = 'WARD1:';
  while (s.length < length) s += ALNUM[Math.floor(rand() * ALNUM.length)];
  return s;
}

const P400 = payload(400);

function codeOf(fn: () => unknown): WardErrorCode | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof WardError) return err.code;
    throw err;
  }
  return undefined;
}

function toPng(width: number, height: number, rgba: Uint8Array): Buffer {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba);
  return PNG.sync.write(png);
}

/** A module bitmap (true = dark) as a black-on-white PNG, `scale` pixels per module. */
function bitmapToPng(rows: boolean[][], scale: number): Buffer {
  const h = rows.length;
  const w = rows[0]?.length ?? 0;
  const data = new Uint8Array(w * scale * h * scale * 4);
  for (let y = 0; y < h * scale; y++) {
    for (let x = 0; x < w * scale; x++) {
      const v = rows[Math.floor(y / scale)]?.[Math.floor(x / scale)] ? 0 : 255;
      data.set([v, v, v, 255], (y * w * scale + x) * 4);
    }
  }
  return toPng(w * scale, h * scale, data);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = (CRC_TABLE[(c ^ b) & 0xff] ?? 0) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])));
  return Buffer.concat([head, data, crc]);
}

function craftPng(width: number, height: number, opts: { depth?: number; colourType?: number; interlace?: number; idat?: Buffer } = {}): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = opts.depth ?? 8;
  ihdr[9] = opts.colourType ?? 6;
  ihdr[12] = opts.interlace ?? 0;
  const parts = [Buffer.from('89504e470d0a1a0a', 'hex'), pngChunk('IHDR', ihdr)];
  if (opts.idat !== undefined) parts.push(pngChunk('IDAT', opts.idat));
  parts.push(pngChunk('IEND', Buffer.alloc(0)));
  return Buffer.concat(parts);
}

/** Adam7-interlaced PNG (pngjs only writes plain ones); `pixel` gives each pixel's sample bytes. */
function interlacedPng(width: number, height: number, colourType: number, depth: number, pixel: (x: number, y: number) => number[]): Buffer {
  const raw: number[] = [];
  for (const [x0, y0, dx, dy] of [
    [0, 0, 8, 8],
    [4, 0, 8, 8],
    [0, 4, 4, 8],
    [2, 0, 4, 4],
    [0, 2, 2, 4],
    [1, 0, 2, 2],
    [0, 1, 1, 2],
  ] as const) {
    if (x0 >= width) continue;
    for (let y = y0; y < height; y += dy) {
      raw.push(0);
      for (let x = x0; x < width; x += dx) raw.push(...pixel(x, y));
    }
  }
  return craftPng(width, height, { depth, colourType, interlace: 1, idat: deflateSync(Buffer.from(raw)) });
}

function pngToJpeg(png: Buffer, quality: number): Buffer {
  const img = PNG.sync.read(png);
  return jpeg.encode({ width: img.width, height: img.height, data: img.data }, quality).data;
}

test('a 400-character alphanumeric payload is one alphanumeric segment, version 12 (65 modules) at M', (t) => {
  const info = qrInfo(P400);
  t.deepEqual(info.segments, [{ mode: 'alphanumeric', length: 400 }]);
  t.is(info.level, 'M');
  t.is(info.version, 12);
  t.is(info.modules, info.version * 4 + 17);
  for (const n of [300, 400, 450]) {
    const i = qrInfo(payload(n, n));
    t.log(`${n} chars at M: version ${i.version}, ${i.modules}×${i.modules} modules`);
  }
  t.deepEqual(
    [300, 450].map((n) => qrInfo(payload(n, n)).version),
    [10, 13],
  );
});

test('the version depends on the length alone: a digit-heavy payload is not split into numeric segments', (t) => {
  // qrcode's optimiser alone would put the digit run in a numeric segment and shrink this to version 9.
  const digits = `WARD1:${'1'.repeat(394)}`;
  const info = qrInfo(digits);
  t.deepEqual(info.segments, [{ mode: 'alphanumeric', length: 400 }]);
  t.is(info.version, qrInfo(P400).version);
});

test('text outside the alphanumeric set still encodes (byte mode) and the level is honoured', async (t) => {
  t.is(qrInfo('ward1:lower-case').segments[0]?.mode, 'byte');
  t.true(qrInfo(P400, 'H').version > qrInfo(P400, 'L').version);
  t.is(qrInfo(P400, 'Q').level, 'Q');
  t.throws(() => qrInfo(''), { instanceOf: TypeError });
  t.throws(() => qrInfo(payload(5000)), { instanceOf: TypeError });
  await t.throwsAsync(renderPng(payload(5000)), { instanceOf: TypeError });
  await t.throwsAsync(renderSvg(''), { instanceOf: TypeError });
});

test('text → PNG → decodeQrImage gives the text back', async (t) => {
  const png = await renderPng(P400);
  t.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  const img = PNG.sync.read(png);
  t.is(img.width, (65 + 2 * 4) * 4, 'default scale 4 and a 4-module quiet zone');
  t.is(decodeQrImage(png), P400);
  t.is(decodeQrImage(await renderPng('ward1:lower-case', { level: 'H', scale: 2, margin: 2 })), 'ward1:lower-case');
});

test('a JPEG (quality 85) of the label decodes', async (t) => {
  const jpg = pngToJpeg(await renderPng(P400), 85);
  t.deepEqual([...jpg.subarray(0, 3)], [0xff, 0xd8, 0xff]);
  t.is(decodeQrImage(jpg), P400);
});

test('a camera frame: the label offset, rotated 7° and unevenly lit in a noisy grey 1280×960 JPEG', async (t) => {
  const qr = PNG.sync.read(await renderPng(P400, { scale: 1 }));
  const n = qr.width;
  const [fw, fh] = [1280, 960];
  // 5 px per module at 7°: the code 365 px wide in the frame, ±20 grey noise under the JPEG artefacts.
  const [cx, cy, px, angle] = [700, 480, 5, (7 * Math.PI) / 180];
  const [cos, sin] = [Math.cos(angle), Math.sin(angle)];
  const rand = rng(42);
  const frame = new Uint8Array(fw * fh * 4);
  for (let y = 0; y < fh; y++) {
    for (let x = 0; x < fw; x++) {
      // Uneven lighting across the frame, and a label printed dark grey on off-white.
      let v = 110 + (60 * x) / fw - (30 * y) / fh;
      let ink = 0;
      for (const [sx, sy] of [
        [0.25, 0.25],
        [0.75, 0.25],
        [0.25, 0.75],
        [0.75, 0.75],
      ] as const) {
        const dx = x + sx - cx;
        const dy = y + sy - cy;
        const u = Math.floor((dx * cos + dy * sin) / px + n / 2);
        const w = Math.floor((-dx * sin + dy * cos) / px + n / 2);
        if (u >= 0 && w >= 0 && u < n && w < n) ink += (qr.data[(w * n + u) * 4] ?? 255) < 128 ? 45 / 4 : 225 / 4;
        else ink += v / 4;
      }
      v = ink + (rand() - 0.5) * 40;
      const c = Math.max(0, Math.min(255, Math.round(v)));
      frame.set([c, c, c, 255], (y * fw + x) * 4);
    }
  }
  const jpg = jpeg.encode({ width: fw, height: fh, data: frame }, 85).data;
  t.is(decodeQrImage(jpg), P400);
  // The same frame without the label's columns holds nothing.
  const left = new Uint8Array(400 * fh * 4);
  for (let y = 0; y < fh; y++) left.set(frame.subarray(y * fw * 4, (y * fw + 400) * 4), y * 400 * 4);
  t.is(
    codeOf(() => decodeQrImage(toPng(400, fh, left))),
    ErrorCodes.QR_NOT_FOUND,
  );
});

test('an inverted label (light on dark) and one on a transparent background both decode', async (t) => {
  const img = PNG.sync.read(await renderPng(P400));
  const inverted = Uint8Array.from(img.data, (v, i) => (i % 4 === 3 ? v : 255 - v));
  t.is(decodeQrImage(toPng(img.width, img.height, inverted)), P400);
  // A design tool's export: light modules fully transparent black; unflattened, jsQR sees black on black.
  const transparent = Uint8Array.from(img.data, (v, i) => {
    const light = (img.data[i - (i % 4)] ?? 0) > 128;
    return light ? 0 : i % 4 === 3 ? 255 : v;
  });
  t.is(decodeQrImage(toPng(img.width, img.height, transparent)), P400);
});

test('binary content that is not UTF-8 comes back as latin1', async (t) => {
  const png = await QRCode.toBuffer([{ mode: 'byte', data: Buffer.from([0xff, 0x41, 0xfe]) }], { type: 'png' });
  t.is(decodeQrImage(png), '\u00ffA\u00fe');
});

/** Rasterises qrcode's SVG path (`M x y`, `m dx 0`, `h n` on a 1-unit stroke at y + 0.5) back into modules. */
function svgToBitmap(svg: string, size: number): boolean[][] {
  const rows = Array.from({ length: size }, () => Array<boolean>(size).fill(false));
  const d = /<path[^>]*stroke="#000000"[^>]*\sd="([^"]*)"/.exec(svg)?.[1] ?? '';
  let x = 0;
  let y = 0;
  for (const [, cmd, a, b] of d.matchAll(/([MmHh])(-?[\d.]+)(?: (-?[\d.]+))?/g)) {
    const n = Number(a);
    if (cmd === 'M') [x, y] = [n, Math.floor(Number(b))];
    else if (cmd === 'm') x += n;
    else if (cmd === 'h') {
      for (let i = 0; i < n; i++) {
        const row = rows[y];
        if (row !== undefined) row[x + i] = true;
      }
      x += n;
    }
  }
  return rows;
}

test('SVG output is a well-formed <svg> whose viewBox is the module count plus the quiet zone, and it scans', async (t) => {
  const svg = await renderSvg(P400);
  t.regex(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.true(svg.trimEnd().endsWith('</svg>'));
  // Every element is self-closing or closed, in order.
  const stack: string[] = [];
  for (const [, close, name, selfClose] of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (close === '/') t.is(stack.pop(), name);
    else if (selfClose !== '/' && name !== undefined) stack.push(name);
  }
  t.deepEqual(stack, []);
  const viewBox = /viewBox="0 0 (\d+) (\d+)"/.exec(svg);
  t.is(Number(viewBox?.[1]), 65 + 2 * 4);
  t.is(Number(viewBox?.[2]), 65 + 2 * 4);
  t.is(decodeQrImage(bitmapToPng(svgToBitmap(svg, 73), 4)), P400);
  t.regex(await renderSvg(P400, { margin: 1 }), /viewBox="0 0 67 67"/);
});

const ESC = '\x1b';
const ANSI = new RegExp(`${ESC}\\[[0-9;]*m`, 'g');

/** Turns the half-block rendering back into modules (█ both, ▀ top, ▄ bottom). */
function terminalToBitmap(out: string): boolean[][] {
  const rows: boolean[][] = [];
  for (const line of out.replace(ANSI, '').split('\n').filter(Boolean)) {
    const chars = [...line];
    rows.push(chars.map((c) => c === '█' || c === '▀'));
    rows.push(chars.map((c) => c === '█' || c === '▄'));
  }
  return rows;
}

test('terminal output fits 80 columns for 400 and 450 characters and scans back', async (t) => {
  for (const [n, text] of [
    [400, P400],
    [450, payload(450, 450)],
  ] as const) {
    const out = await renderTerminal(text);
    // Every line ends in a newline; the quiet-zone lines are all spaces and must be counted.
    const lines = out.replace(ANSI, '').split('\n').slice(0, -1);
    const width = Math.max(...lines.map((l) => [...l].length));
    t.log(`${n} chars: ${width} columns × ${lines.length} lines`);
    t.true(width <= 80, `${width} columns`);
    t.is(width, qrInfo(text).modules + 8);
    t.is(lines.length, Math.ceil(width / 2));
    t.is(decodeQrImage(bitmapToPng(terminalToBitmap(out), 4)), text);
  }
  const plain = await renderTerminal(P400, { ansi: false });
  t.false(plain.includes(ESC));
  t.true((await renderTerminal(P400)).startsWith(`${ESC}[30;47m`), 'pinned black on white');
  t.is(decodeQrImage(bitmapToPng(terminalToBitmap(plain), 4)), P400);
});

test('a blank white image holds no QR code', (t) => {
  t.is(
    codeOf(() => decodeQrImage(toPng(400, 300, new Uint8Array(400 * 300 * 4).fill(255)))),
    ErrorCodes.QR_NOT_FOUND,
  );
});

test('empty input, random bytes and a bare signature are unreadable', (t) => {
  const rand = rng(7);
  const random = Uint8Array.from({ length: 4096 }, () => Math.floor(rand() * 256));
  random[0] = 0x42; // never a PNG or JPEG magic by chance
  for (const bytes of [new Uint8Array(0), random, Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.from([0xff, 0xd8, 0xff])]) {
    t.is(
      codeOf(() => decodeQrImage(bytes)),
      ErrorCodes.QR_IMAGE_UNREADABLE,
    );
  }
});

test('a PNG or JPEG truncated to half is unreadable', async (t) => {
  const png = await renderPng(P400);
  t.is(
    codeOf(() => decodeQrImage(png.subarray(0, png.length >> 1))),
    ErrorCodes.QR_IMAGE_UNREADABLE,
  );
  const jpg = pngToJpeg(png, 85);
  t.is(
    codeOf(() => decodeQrImage(jpg.subarray(0, jpg.length >> 1))),
    ErrorCodes.QR_IMAGE_UNREADABLE,
  );
});

test('a PNG whose header claims 20000×20000 is refused from the header alone', (t) => {
  const bomb = craftPng(20000, 20000, { idat: deflateSync(Buffer.alloc(1000)) });
  t.true(bomb.length < 200);
  const started = performance.now();
  const err = t.throws(() => decodeQrImage(bomb), { instanceOf: WardError });
  t.is(err?.code, ErrorCodes.QR_TOO_LARGE);
  t.deepEqual(err?.details, { width: 20000, height: 20000 });
  t.regex(err?.message ?? '', /more than 25000000 pixels/);
  t.true(performance.now() - started < 50, 'no 1.6 GB buffer was filled');
});

/** A small real JPEG whose SOF0 claims other dimensions; the scan data no longer matches, which must not matter. */
async function jpegClaiming(width: number, height: number): Promise<Buffer> {
  const jpg = Buffer.from(pngToJpeg(await renderPng('WARD1:X'), 85));
  const sof = jpg.indexOf(Buffer.from([0xff, 0xc0]));
  jpg.writeUInt16BE(height, sof + 5);
  jpg.writeUInt16BE(width, sof + 7);
  return jpg;
}

test('a JPEG whose frame header claims 20000×20000 is refused before decoding', async (t) => {
  const jpg = await jpegClaiming(20000, 20000);
  const started = performance.now();
  const err = t.throws(() => decodeQrImage(jpg), { instanceOf: WardError });
  t.is(err?.code, ErrorCodes.QR_TOO_LARGE);
  t.deepEqual(err?.details, { width: 20000, height: 20000 });
  t.regex(err?.message ?? '', /more than 25000000 pixels/, 'refused from our header parse, not by jpeg-js midway');
  t.true(performance.now() - started < 50, 'nothing was decoded');
});

test('a 12 MP 4:4:4 JPEG is under the pixel limit but refused for what jpeg-js would allocate', async (t) => {
  // jpeg-js's own accounting lets this through and the process peaks near 500 MB before it gives up.
  const jpg = await jpegClaiming(4000, 3000);
  const err = t.throws(() => decodeQrImage(jpg), { instanceOf: WardError });
  t.is(err?.code, ErrorCodes.QR_TOO_LARGE);
  t.regex(err?.message ?? '', /decoding this JPEG needs ~\d+ MB/);
});

test('maxPixels lowers the limit, and 16-bit samples count against it by their bytes', async (t) => {
  const png = await renderPng(P400);
  t.is(
    codeOf(() => decodeQrImage(png, { maxPixels: 10_000 })),
    ErrorCodes.QR_TOO_LARGE,
  );
  t.is(decodeQrImage(png, { maxPixels: 300 * 300 }), P400);
  // 16 MP is under the 25 MP default, but 16-bit RGBA is 128 MB of samples before conversion.
  t.is(
    codeOf(() => decodeQrImage(craftPng(4000, 4000, { depth: 16 }))),
    ErrorCodes.QR_TOO_LARGE,
  );
});

test('interlaced PNG labels decode, 8-bit grey and 16-bit RGBA', async (t) => {
  const img = PNG.sync.read(await renderPng(P400));
  const grey = (x: number, y: number): number => img.data[(y * img.width + x) * 4] ?? 0;
  t.is(decodeQrImage(interlacedPng(img.width, img.height, 0, 8, (x, y) => [grey(x, y)])), P400);
  t.is(decodeQrImage(interlacedPng(img.width, img.height, 6, 16, (x, y) => [grey(x, y), 0, grey(x, y), 0, grey(x, y), 0, 255, 255])), P400);
});

test('an interlaced PNG whose data inflates far beyond its dimensions is refused before pngjs inflates it', (t) => {
  // 16×16 greyscale needs under 300 bytes; this 64 KB IDAT inflates to 64 MB (512 KB of it: ~900 MB RSS in pngjs).
  const bomb = craftPng(16, 16, { colourType: 0, interlace: 1, idat: deflateSync(Buffer.alloc(64 * 2 ** 20)) });
  t.true(bomb.length < 100_000);
  const err = t.throws(() => decodeQrImage(bomb), { instanceOf: WardError });
  t.is(err?.code, ErrorCodes.QR_IMAGE_UNREADABLE);
  t.regex(err?.message ?? '', /inflates beyond its dimensions/);
});
