import { inflateSync, constants as zlibConstants } from 'node:zlib';
import jpeg from 'jpeg-js';
import jsqr from 'jsqr';
import { PNG } from 'pngjs';
import QRCode from 'qrcode';
import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * Enrollment QR codes: rendered by the controller for production-line labels,
 * decoded on the gateway from a camera frame (a USB scanner types the text and
 * never reaches this module). Decoding takes untrusted images, so every decoder
 * is bounded by the header dimensions before it allocates.
 */
export type QrLevel = 'L' | 'M' | 'Q' | 'H';

export interface QrInfo {
  readonly version: number;
  /** Modules per side, without the quiet zone: version × 4 + 17. */
  readonly modules: number;
  readonly level: QrLevel;
  readonly segments: readonly { readonly mode: string; readonly length: number }[];
}

export interface QrRenderOptions {
  readonly level?: QrLevel;
  /** Quiet zone in modules; ISO/IEC 18004 asks for 4 and cheap scanners need it. */
  readonly margin?: number;
}

export interface QrPngOptions extends QrRenderOptions {
  /** Pixels per module. */
  readonly scale?: number;
}

export interface QrTerminalOptions extends QrRenderOptions {
  /**
   * Pin black-on-white with ANSI colours (default true): a plain half-block code
   * shows inverted on a dark terminal theme, which many scanners refuse.
   */
  readonly ansi?: boolean;
}

export interface QrDecodeOptions {
  /**
   * Largest image accepted, in pixels (default 25 MP: ~100 MB of RGBA). PNG samples are held
   * to 4 B and JPEG decoder memory to 16 B per allowed pixel, which caps 4:4:4 JPEGs lower.
   */
  readonly maxPixels?: number;
}

// jsqr is CommonJS typed as an ES module: its typed default sits on `.default`, which the CJS build also sets.
const jsQR = jsqr.default;

const DEFAULT_LEVEL: QrLevel = 'M';
const DEFAULT_MARGIN = 4;
const DEFAULT_MAX_PIXELS = 25_000_000;
const ALPHANUMERIC = /^[0-9A-Z $%*+\-./:]+$/;

export function qrInfo(text: string, level: QrLevel = DEFAULT_LEVEL): QrInfo {
  const qr = create(text, level);
  return {
    version: qr.version,
    modules: qr.modules.size,
    level,
    segments: qr.segments.map((s) => ({ mode: s.mode.id.toLowerCase(), length: s.getLength() })),
  };
}

export async function renderPng(text: string, opts: QrPngOptions = {}): Promise<Buffer> {
  const level = opts.level ?? DEFAULT_LEVEL;
  const options = { type: 'png', errorCorrectionLevel: level, margin: opts.margin ?? DEFAULT_MARGIN, scale: opts.scale ?? 4 } as const;
  return QRCode.toBuffer(segmentsOf(text), options).catch(cannotEncode(text, level));
}

export async function renderSvg(text: string, opts: QrRenderOptions = {}): Promise<string> {
  const level = opts.level ?? DEFAULT_LEVEL;
  const options = { type: 'svg', errorCorrectionLevel: level, margin: opts.margin ?? DEFAULT_MARGIN } as const;
  return QRCode.toString(segmentsOf(text), options).catch(cannotEncode(text, level));
}

/**
 * Two module rows per text line with half blocks. Our own renderer because
 * qrcode's `terminal` form keeps a 1-module quiet zone (scanners miss it) and
 * its `utf8` form breaks on odd margins and has no colours.
 */
export async function renderTerminal(text: string, opts: QrTerminalOptions = {}): Promise<string> {
  const qr = create(text, opts.level ?? DEFAULT_LEVEL);
  const margin = opts.margin ?? DEFAULT_MARGIN;
  const size = qr.modules.size;
  const full = size + 2 * margin;
  const dark = (x: number, y: number): boolean => {
    const mx = x - margin;
    const my = y - margin;
    return mx >= 0 && my >= 0 && mx < size && my < size && qr.modules.get(my, mx) === 1;
  };
  const lines: string[] = [];
  for (let y = 0; y < full; y += 2) {
    let line = '';
    for (let x = 0; x < full; x++) {
      const top = dark(x, y);
      const bottom = y + 1 < full && dark(x, y + 1);
      line += top ? (bottom ? '█' : '▀') : bottom ? '▄' : ' ';
    }
    lines.push(opts.ansi === false ? line : `\x1b[30;47m${line}\x1b[0m`);
  }
  return `${lines.join('\n')}\n`;
}

export function decodeQrImage(bytes: Uint8Array, opts: QrDecodeOptions = {}): string {
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS;
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const image = isPng(buf) ? decodePng(buf, maxPixels) : isJpeg(buf) ? decodeJpeg(buf, maxPixels) : undefined;
  if (image === undefined) throw unreadable('not a PNG or JPEG image');

  // Smoothed first: on a noisy frame the raw pass takes seconds (every speckle is a finder candidate)
  // and fails; the raw pass stays as the fallback for codes under ~3 pixels per module that blurring erases.
  smoothKeepingLuma(image);
  let found = scan(image);
  if (found === null) {
    restoreLuma(image);
    found = scan(image);
  }
  if (found === null) {
    throw new WardError(ErrorCodes.QR_NOT_FOUND, 'no readable QR code in the image', { details: { width: image.width, height: image.height } });
  }
  if (found.data === '' && found.binaryData.length > 0) return Buffer.from(found.binaryData).toString('latin1');
  return found.data;
}

function scan(image: Rgba): ReturnType<typeof jsQR> {
  try {
    // Printed labels photographed under glare or shown on a screen come out inverted often enough.
    const pixels = new Uint8ClampedArray(image.data.buffer, image.data.byteOffset, image.data.byteLength);
    return jsQR(pixels, image.width, image.height, { inversionAttempts: 'attemptBoth' });
  } catch (cause) {
    throw new WardError(ErrorCodes.QR_NOT_FOUND, 'the QR detector failed on this image', { cause });
  }
}

/**
 * 3×3 box blur of the luma into grey RGB, keeping the unblurred luma in the
 * alpha channel (jsQR ignores alpha), so both passes share one frame buffer.
 * Sensor noise defeats jsQR's binariser on version 12+ codes even at 5–6
 * pixels per module: a JPEG'd frame with ±20 grey noise fails raw, scans blurred.
 */
function smoothKeepingLuma({ width: w, height: h, data }: Rgba): void {
  const at = (x: number, y: number, c: number): number => data[(y * w + x) * 4 + c] ?? 0;
  // BT.709 weights, as jsQR's own greyscale conversion uses.
  for (let i = 0; i < data.length; i += 4) data[i + 3] = ((data[i] ?? 0) * 54 + (data[i + 1] ?? 0) * 183 + (data[i + 2] ?? 0) * 19) >> 8;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      data[(y * w + x) * 4] = Math.round((at(Math.max(x - 1, 0), y, 3) + at(x, y, 3) + at(Math.min(x + 1, w - 1), y, 3)) / 3);
    }
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      data[(y * w + x) * 4 + 1] = Math.round((at(x, Math.max(y - 1, 0), 0) + at(x, y, 0) + at(x, Math.min(y + 1, h - 1), 0)) / 3);
    }
  }
  for (let i = 0; i < data.length; i += 4) {
    data[i] = data[i + 1] ?? 0;
    data[i + 2] = data[i + 1] ?? 0;
  }
}

function restoreLuma({ data }: Rgba): void {
  for (let i = 0; i < data.length; i += 4) {
    const luma = data[i + 3] ?? 0;
    data[i] = luma;
    data[i + 1] = luma;
    data[i + 2] = luma;
  }
}

function create(text: string, level: QrLevel): QRCode.QRCode {
  try {
    return QRCode.create(segmentsOf(text), { errorCorrectionLevel: level });
  } catch (cause) {
    return cannotEncode(text, level)(cause);
  }
}

/** Too much text for a QR code is the caller's sizing mistake, like an empty one: a TypeError, not a WardError. */
function cannotEncode(text: string, level: QrLevel): (cause: unknown) => never {
  return (cause) => {
    if (cause instanceof TypeError) throw cause;
    throw new TypeError(`cannot encode ${text.length} characters as a QR code at level ${level}`, { cause });
  };
}

/**
 * One alphanumeric segment when the text allows it: the version then depends
 * on the length alone, so every label of a batch prints at the same size
 * (qrcode's optimiser may split off numeric runs and vary it per payload).
 */
function segmentsOf(text: string): string | QRCode.QRCodeSegment[] {
  if (text === '') throw new TypeError('cannot encode an empty QR code');
  return ALPHANUMERIC.test(text) ? [{ mode: 'alphanumeric', data: text }] : text;
}

interface Rgba {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

function isPng(b: Buffer): boolean {
  return b.length >= 8 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a;
}

function isJpeg(b: Buffer): boolean {
  return b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
}

const PNG_CHANNELS: Readonly<Record<number, number>> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

function decodePng(buf: Buffer, maxPixels: number): Rgba {
  if (buf.length < 33 || buf.toString('latin1', 12, 16) !== 'IHDR') throw unreadable('PNG without an IHDR header');
  const width = buf.readUInt32BE(16);
  const height = buf.readUInt32BE(20);
  const depth = buf[24] ?? 0;
  const channels = PNG_CHANNELS[buf[25] ?? -1];
  if (width === 0 || height === 0 || channels === undefined) throw unreadable('PNG header is invalid');
  checkSize(width, height, maxPixels);
  // pngjs holds the raw scanlines, a 16-bit copy and the RGBA result at once, so bound raw bytes too.
  const rawBytes = Math.ceil((width * channels * depth) / 8) * height;
  if (rawBytes > maxPixels * 4) throw tooLarge(width, height, `${depth}-bit samples need ${rawBytes} bytes`);
  // pngjs bounds the inflate of plain PNGs but not of interlaced ones: a tiny zlib bomb would run free.
  if (buf[28] === 1) boundInterlacedInflate(buf, rawBytes + 4 * height + 64);

  let png: PNG;
  try {
    png = PNG.sync.read(buf);
  } catch (cause) {
    throw unreadable('corrupt or truncated PNG', cause);
  }
  flattenAlpha(png.data);
  return png;
}

function boundInterlacedInflate(buf: Buffer, maxOutputLength: number): void {
  const idat: Buffer[] = [];
  for (let at = 8; at + 8 <= buf.length; ) {
    const length = buf.readUInt32BE(at);
    if (buf.toString('latin1', at + 4, at + 8) === 'IDAT') idat.push(buf.subarray(at + 8, at + 8 + length));
    at += 12 + length;
  }
  try {
    // Sync flush: a truncated stream is left for pngjs to report; only the size matters here.
    inflateSync(Buffer.concat(idat), { maxOutputLength, finishFlush: zlibConstants.Z_SYNC_FLUSH });
  } catch (cause) {
    throw unreadable('corrupt PNG image data (inflates beyond its dimensions)', cause);
  }
}

/** Design tools export labels on a transparent background; jsQR ignores alpha, so composite onto white. */
function flattenAlpha(data: Uint8Array): void {
  for (let i = 3; i < data.length; i += 4) {
    const a = data[i] ?? 255;
    if (a === 255) continue;
    for (let c = i - 3; c < i; c++) data[c] = Math.round(((data[c] ?? 0) * a + 255 * (255 - a)) / 255);
    data[i] = 255;
  }
}

function decodeJpeg(buf: Buffer, maxPixels: number): Rgba {
  const frames = jpegFrames(buf);
  const { width = 0, height = 0 } = frames[0] ?? {};
  for (const f of frames) checkSize(f.width, f.height, maxPixels);
  // jpeg-js keeps every 8×8 block of every component as its own Int32Array, ~720 B of heap apiece
  // with its sample plane (measured), then 3 + 4 B/pixel of planes and RGBA. The budget, 16 B per
  // allowed pixel (400 MB at 25 MP), admits 4:2:0 frames to ~16 MP and 4:4:4 ones to ~9.6 MP.
  const budget = maxPixels * 16;
  const needed = frames.reduce((sum, f) => sum + f.blocks * 720 + f.width * f.height * 8, 0);
  if (needed > budget) throw tooLarge(width, height, `decoding this JPEG needs ~${Math.ceil(needed / 2 ** 20)} MB`);
  try {
    return jpeg.decode(buf, {
      useTArray: true,
      formatAsRGBA: true,
      // Cheap camera firmware writes technically invalid JPEGs (stray MCUs); truncated data still fails.
      tolerantDecoding: true,
      // jpeg-js's own accounting undercounts (~256 B a block) but backs up a frame list we misjudged.
      maxResolutionInMP: maxPixels / 1e6,
      maxMemoryUsageInMB: Math.ceil(budget / 2 ** 20),
    });
  } catch (cause) {
    const message = cause instanceof Error ? cause.message : '';
    if (/maxResolutionInMP|maxMemoryUsageInMB/.test(message)) throw tooLarge(width, height, `JPEG decoding: ${message}`, cause);
    throw unreadable('corrupt, truncated or unsupported JPEG', cause);
  }
}

interface JpegFrame {
  readonly width: number;
  readonly height: number;
  /** 8×8 blocks jpeg-js allocates, MCU padding included. */
  readonly blocks: number;
}

/** Every SOFn frame header in the file, entropy-coded data skipped: jpeg-js allocates for each it meets. */
function jpegFrames(b: Buffer): JpegFrame[] {
  const frames: JpegFrame[] = [];
  let at = 2;
  while (at + 4 <= b.length) {
    const marker = b[at + 1] ?? 0;
    if (b[at] !== 0xff || marker === 0x00 || marker === 0xff) {
      at++; // scan data, a stuffed FF00, or fill bytes
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    if (marker === 0xd9) break;
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    const count = b[at + 9] ?? 0;
    if (isSof && at + 10 + 3 * count <= b.length) {
      const height = b.readUInt16BE(at + 5);
      const width = b.readUInt16BE(at + 7);
      const sampling = Array.from({ length: count }, (_, i) => b[at + 11 + 3 * i] ?? 0);
      const maxH = Math.max(1, ...sampling.map((hv) => hv >> 4));
      const maxV = Math.max(1, ...sampling.map((hv) => hv & 15));
      const mcus = [Math.ceil(width / 8 / maxH), Math.ceil(height / 8 / maxV)] as const;
      const blocks = sampling.reduce((sum, hv) => sum + mcus[0] * (hv >> 4) * mcus[1] * (hv & 15), 0);
      frames.push({ width, height, blocks });
    }
    at += 2 + b.readUInt16BE(at + 2);
  }
  return frames;
}

function checkSize(width: number, height: number, maxPixels: number): void {
  if (width * height > maxPixels) throw tooLarge(width, height, `more than ${maxPixels} pixels`);
}

function tooLarge(width: number, height: number, why: string, cause?: unknown): WardError {
  return new WardError(ErrorCodes.QR_TOO_LARGE, `image too large to scan for a QR code: ${why}`, {
    details: { width, height },
    ...(cause === undefined ? {} : { cause }),
  });
}

function unreadable(message: string, cause?: unknown): WardError {
  return new WardError(ErrorCodes.QR_IMAGE_UNREADABLE, message, cause === undefined ? {} : { cause });
}
