/**
 * Modbus/TCP frames for the inline proxy: MBAP framing per the Messaging on TCP/IP Implementation Guide V1.0b
 * (§3.1.2-§3.1.3) and per-function-code PDU checks per the Modbus Application Protocol V1.1b3 (§4.1, §6, §7).
 *
 * Pure and zero-copy: every Buffer handed back is a view over the caller's bytes, so a proxy can forward the very
 * bytes a policy judged. Strict on purpose: a frame a real device would answer with an exception, or would read in
 * some unintended way, is refused here, because a policy can only judge what it can decode unambiguously.
 */

export const MAX_ADU = 260;
/** Transaction id, protocol id, length, unit id. */
const MBAP_SIZE = 7;
/** Unit id + the 253-byte maximum PDU (§4.1). */
const MAX_LENGTH = MAX_ADU - 6;

export type Table = 'coils' | 'discrete-inputs' | 'holding-registers' | 'input-registers';
export type Access = 'read' | 'write' | 'read-write' | 'diagnostics' | 'program' | 'other';
export interface Mbap {
  transactionId: number;
  protocolId: number;
  length: number;
  unitId: number;
}
/** A decoded request: what a policy needs to judge it. */
export type Request =
  | { kind: 'read'; fc: number; table: Table; address: number; quantity: number }
  | { kind: 'write-single'; fc: number; table: 'coils' | 'holding-registers'; address: number; value: number }
  | { kind: 'write-multiple'; fc: number; table: 'coils' | 'holding-registers'; address: number; quantity: number; values: Buffer }
  | { kind: 'mask-write'; fc: 22; address: number; andMask: number; orMask: number }
  | { kind: 'read-write'; fc: 23; read: { address: number; quantity: number }; write: { address: number; quantity: number; values: Buffer } }
  | { kind: 'read-fifo'; fc: 24; address: number }
  | { kind: 'file'; fc: 20 | 21; subRequests: number }
  | { kind: 'diagnostics'; fc: 8; subFunction: number; data: Buffer }
  | { kind: 'device-id'; fc: 43; meiType: 14; readCode: number; objectId: number }
  | { kind: 'serial-line'; fc: 7 | 11 | 12 | 17 }
  | { kind: 'other'; fc: number; data: Buffer };
export interface Frame<T> {
  mbap: Mbap;
  pdu: Buffer;
  body: T;
  raw: Buffer;
}
export type ParseResult<T> = { ok: true; frame: Frame<T> } | { ok: false; error: FrameError };
export interface FrameError {
  code: 'truncated' | 'bad-protocol' | 'bad-length' | 'bad-pdu' | 'oversized';
  message: string;
}
export type Response =
  | { kind: 'exception'; fc: number; exceptionCode: number }
  | { kind: 'read-bits'; fc: 1 | 2; bytes: Buffer }
  | { kind: 'read-registers'; fc: 3 | 4 | 23; registers: Buffer }
  | { kind: 'echo'; fc: 5 | 6 | 15 | 16 | 22 | 8; data: Buffer }
  | { kind: 'other'; fc: number; data: Buffer };

export const ExceptionCode = {
  IllegalFunction: 1,
  IllegalDataAddress: 2,
  IllegalDataValue: 3,
  ServerDeviceFailure: 4,
  ServerDeviceBusy: 6,
  GatewayPathUnavailable: 10,
  GatewayTargetFailedToRespond: 11,
} as const;

// Decoders return the decoded value or the reason they refused it; request and response bodies never carry a
// `message`, so that field tells the two apart without a wrapper object per frame.
type Decoded<T> = T | FrameError;
const refused = (x: object): x is FrameError => 'message' in x;
const bad = (message: string): FrameError => ({ code: 'bad-pdu', message });

// ---------------------------------------------------------------------------------------------------------------
// MBAP header (Implementation Guide §3.1.3)

/**
 * What the first bytes of an ADU already tell, so the stream framer can refuse a bad header as soon as it arrives
 * instead of waiting for bytes that a broken peer may never send: an error, the ADU's total size once the length
 * field is in, or undefined while fewer than 6 bytes are known.
 */
function inspectHeader(head: Buffer): FrameError | number | undefined {
  if (head.length >= 4) {
    const protocolId = head.readUInt16BE(2);
    if (protocolId !== 0) return { code: 'bad-protocol', message: `MBAP protocol id ${protocolId}, expected 0 (Modbus)` };
  }
  if (head.length < 6) return undefined;
  const length = head.readUInt16BE(4);
  if (length === 1) return bad('empty PDU: MBAP length 1 covers only the unit id');
  if (length < 2) return { code: 'bad-length', message: `MBAP length ${length}, expected 2..${MAX_LENGTH}` };
  if (length > MAX_LENGTH) {
    return { code: 'oversized', message: `MBAP length ${length} announces a ${6 + length}-byte ADU, over the ${MAX_ADU}-byte maximum` };
  }
  return 6 + length;
}

/** Checks that `adu` is exactly one complete ADU and splits it into header and PDU (views, not copies). */
function splitAdu(adu: Buffer): Decoded<{ mbap: Mbap; pdu: Buffer }> {
  const size = inspectHeader(adu);
  if (typeof size === 'object') return size;
  if (size === undefined || adu.length < size) {
    const expected = size === undefined ? `at least ${MBAP_SIZE}` : `${size}`;
    return { code: 'truncated', message: `ADU is ${adu.length} bytes, expected ${expected}` };
  }
  if (adu.length > size) {
    const length = size - 6;
    const message = `ADU is ${adu.length} bytes but MBAP length ${length} announces ${size}`;
    return adu.length > MAX_ADU ? { code: 'oversized', message: `${message} (over the ${MAX_ADU}-byte maximum)` } : { code: 'bad-length', message };
  }
  const mbap = { transactionId: adu.readUInt16BE(0), protocolId: 0, length: size - 6, unitId: adu.readUInt8(6) };
  return { mbap, pdu: adu.subarray(MBAP_SIZE, size) };
}

// ---------------------------------------------------------------------------------------------------------------
// Field checks shared by requests and responses. Each returns the refusal or undefined, so checks chain with `??`.

function exactly(pdu: Buffer, n: number, what: string): FrameError | undefined {
  return pdu.length === n ? undefined : bad(`${what} PDU is ${pdu.length} bytes, expected ${n}`);
}

function atLeast(pdu: Buffer, n: number, what: string): FrameError | undefined {
  return pdu.length >= n ? undefined : bad(`${what} PDU is ${pdu.length} bytes, expected at least ${n}`);
}

function within(value: number, min: number, max: number, what: string, field: string): FrameError | undefined {
  return value >= min && value <= max ? undefined : bad(`${what}: ${field} ${value} outside ${min}..${max}`);
}

/** The data model addresses 0..65535 (§4.4): a block that wraps past the end is no block at all. */
function span(address: number, quantity: number, what: string): FrameError | undefined {
  return address + quantity <= 0x10000 ? undefined : bad(`${what}: address ${address} + quantity ${quantity} runs past 65535`);
}

function byteCount(actual: number, expected: number, what: string, why: string): FrameError | undefined {
  return actual === expected ? undefined : bad(`${what}: byte count ${actual}, expected ${expected} (${why})`);
}

const READ_TABLES = { 1: 'coils', 2: 'discrete-inputs', 3: 'holding-registers', 4: 'input-registers' } as const;
/** §6.1-§6.4: 2000 bits or 125 registers fill a 253-byte response PDU. */
const READ_MAX = { 1: 2000, 2: 2000, 3: 125, 4: 125 } as const;
const COIL_ON = 0xff00;
/** §6.8.1 sub-functions whose data field is one 16-bit word; 0 (Return Query Data) echoes any data. */
const WORD_SUBFUNCTIONS = new Set([1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20]);
/** §6.8.1 sub-functions whose normal response echoes the request's data (the rest return a counter or register). */
const ECHO_SUBFUNCTIONS = new Set([0, 1, 3, 10, 20]);
/** §6.14-§6.15: file records are numbered 0..9999 and carry reference type 6. */
const FILE_REFERENCE_TYPE = 6;
const FILE_RECORDS = 10000;
/** §6.14: the read file record response data length is one byte, at most 0xF5. */
const FILE_READ_MAX = 0xf5;
const MEI_DEVICE_ID = 14;

/** FC5/FC6 requests and their normal responses share one layout (§6.5, §6.6): address, value. */
function singleWrite(pdu: Buffer, fc: 5 | 6, what: string): Decoded<{ address: number; value: number }> {
  const short = exactly(pdu, 5, what);
  if (short) return short;
  const address = pdu.readUInt16BE(1);
  const value = pdu.readUInt16BE(3);
  // §6.5: any other value is not a coil state, and devices differ on what they do with it.
  if (fc === 5 && value !== 0 && value !== COIL_ON) return bad(`${what}: coil value 0x${value.toString(16)}, expected 0x0000 or 0xFF00`);
  return { address, value };
}

function diagnosticsData(pdu: Buffer, what: string): Decoded<{ subFunction: number; data: Buffer }> {
  const short = atLeast(pdu, 3, what);
  if (short) return short;
  const subFunction = pdu.readUInt16BE(1);
  const data = pdu.subarray(3);
  if (WORD_SUBFUNCTIONS.has(subFunction) && data.length !== 2) {
    return bad(`${what}: sub-function ${subFunction} carries ${data.length} data bytes, expected 2`);
  }
  return { subFunction, data };
}

/**
 * Walks the sub-requests of a read (FC20) or write (FC21) file record PDU, which a response to FC21 echoes. The
 * structure is checked in full because a policy that counts sub-requests must count the ones the server acts on.
 */
function fileSubRequests(pdu: Buffer, fc: 20 | 21, what: string): Decoded<number> {
  const short = atLeast(pdu, 2, what);
  if (short) return short;
  const count = pdu.readUInt8(1);
  if (pdu.length !== 2 + count) return bad(`${what}: byte count ${count} but ${pdu.length - 2} bytes follow`);
  const problem = fc === 20 ? within(count, 7, 0xf5, what, 'byte count') : within(count, 9, 0xfb, what, 'byte count');
  if (problem) return problem;
  if (fc === 20 && count % 7 !== 0) return bad(`${what}: byte count ${count} is not a whole number of 7-byte sub-requests`);
  let subRequests = 0;
  let responseBytes = 0;
  for (let at = 2; at < pdu.length; subRequests++) {
    if (at + 7 > pdu.length) return bad(`${what}: sub-request ${subRequests} header runs past the PDU`);
    const referenceType = pdu.readUInt8(at);
    const file = pdu.readUInt16BE(at + 1);
    const record = pdu.readUInt16BE(at + 3);
    const length = pdu.readUInt16BE(at + 5);
    const sub = `${what} sub-request ${subRequests}`;
    const refusal =
      (referenceType === FILE_REFERENCE_TYPE ? undefined : bad(`${sub}: reference type ${referenceType}, expected ${FILE_REFERENCE_TYPE}`)) ??
      within(file, 1, 0xffff, sub, 'file number') ??
      within(record, 0, FILE_RECORDS - 1, sub, 'record number') ??
      within(length, 1, FILE_RECORDS - record, sub, 'record length');
    if (refusal) return refusal;
    at += 7;
    if (fc === 21) {
      if (at + 2 * length > pdu.length) return bad(`${sub}: ${length} registers run past the PDU`);
      at += 2 * length;
    } else {
      responseBytes += 2 + 2 * length;
    }
  }
  if (responseBytes > FILE_READ_MAX) return bad(`${what}: the response would need ${responseBytes} data bytes, over ${FILE_READ_MAX}`);
  return subRequests;
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

function decodeRequest(pdu: Buffer): Decoded<Request> {
  const fc = pdu.readUInt8(0);
  const what = `FC${fc} request`;
  switch (fc) {
    case 1:
    case 2:
    case 3:
    case 4: {
      const short = exactly(pdu, 5, what);
      if (short) return short;
      const address = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      return (
        within(quantity, 1, READ_MAX[fc], what, 'quantity') ?? span(address, quantity, what) ?? { kind: 'read', fc, table: READ_TABLES[fc], address, quantity }
      );
    }
    case 5:
    case 6: {
      const w = singleWrite(pdu, fc, what);
      return refused(w) ? w : { kind: 'write-single', fc, table: fc === 5 ? 'coils' : 'holding-registers', ...w };
    }
    case 7:
    case 11:
    case 12:
    case 17:
      return exactly(pdu, 1, what) ?? { kind: 'serial-line', fc };
    case 8: {
      const decoded = diagnosticsData(pdu, what);
      return refused(decoded) ? decoded : { kind: 'diagnostics', fc, ...decoded };
    }
    case 15:
    case 16: {
      const short = atLeast(pdu, 6, what);
      if (short) return short;
      const address = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      const count = pdu.readUInt8(5);
      const coils = fc === 15;
      const refusal =
        within(quantity, 1, coils ? 1968 : 123, what, 'quantity') ??
        span(address, quantity, what) ??
        byteCount(count, coils ? Math.ceil(quantity / 8) : 2 * quantity, what, coils ? `ceil(${quantity}/8)` : `2 x ${quantity}`) ??
        exactly(pdu, 6 + count, what);
      return refusal ?? { kind: 'write-multiple', fc, table: coils ? 'coils' : 'holding-registers', address, quantity, values: pdu.subarray(6) };
    }
    case 20:
    case 21: {
      const subRequests = fileSubRequests(pdu, fc, what);
      return typeof subRequests === 'number' ? { kind: 'file', fc, subRequests } : subRequests;
    }
    case 22:
      return exactly(pdu, 7, what) ?? { kind: 'mask-write', fc, address: pdu.readUInt16BE(1), andMask: pdu.readUInt16BE(3), orMask: pdu.readUInt16BE(5) };
    case 23: {
      const short = atLeast(pdu, 10, what);
      if (short) return short;
      const read = { address: pdu.readUInt16BE(1), quantity: pdu.readUInt16BE(3) };
      const writeAddress = pdu.readUInt16BE(5);
      const writeQuantity = pdu.readUInt16BE(7);
      const count = pdu.readUInt8(9);
      const refusal =
        within(read.quantity, 1, 125, what, 'read quantity') ??
        span(read.address, read.quantity, `${what} (read)`) ??
        within(writeQuantity, 1, 121, what, 'write quantity') ??
        span(writeAddress, writeQuantity, `${what} (write)`) ??
        byteCount(count, 2 * writeQuantity, what, `2 x ${writeQuantity}`) ??
        exactly(pdu, 10 + count, what);
      return refusal ?? { kind: 'read-write', fc, read, write: { address: writeAddress, quantity: writeQuantity, values: pdu.subarray(10) } };
    }
    case 24:
      return exactly(pdu, 3, what) ?? { kind: 'read-fifo', fc, address: pdu.readUInt16BE(1) };
    case 43: {
      const short = atLeast(pdu, 2, what);
      if (short) return short;
      if (pdu.readUInt8(1) !== MEI_DEVICE_ID) return { kind: 'other', fc, data: pdu.subarray(1) };
      const sub = `${what} (MEI 14)`;
      return (
        exactly(pdu, 4, sub) ??
        within(pdu.readUInt8(2), 1, 4, sub, 'read device id code') ?? {
          kind: 'device-id',
          fc,
          meiType: MEI_DEVICE_ID,
          readCode: pdu.readUInt8(2),
          objectId: pdu.readUInt8(3),
        }
      );
    }
    default:
      // §4.1: 0 is not a function code and 128..255 mark exception responses, so neither can open a request.
      if (fc === 0 || fc >= 0x80) return bad(`function code ${fc} cannot start a request (expected 1..127)`);
      return { kind: 'other', fc, data: pdu.subarray(1) };
  }
}

/** Decodes exactly one complete request ADU. Never throws; refuses with the first rule the frame breaks. */
export function parseRequest(adu: Buffer): ParseResult<Request> {
  const split = splitAdu(adu);
  if (refused(split)) return { ok: false, error: split };
  const body = decodeRequest(split.pdu);
  if (refused(body)) return { ok: false, error: body };
  return { ok: true, frame: { mbap: split.mbap, pdu: split.pdu, body, raw: adu } };
}

// ---------------------------------------------------------------------------------------------------------------
// Responses

function decodeException(pdu: Buffer, request: Request | undefined): Decoded<Response> {
  const fc = pdu.readUInt8(0) & 0x7f;
  const what = `FC${fc} exception response`;
  if (fc === 0) return bad('exception response for function code 0');
  // §6.19/§6.21: an encapsulated-interface exception carries the MEI type before the code; others are 2 bytes.
  const withMei = fc === 43 && pdu.length === 3;
  const short = withMei ? undefined : exactly(pdu, 2, what);
  if (short) return short;
  const exceptionCode = pdu.readUInt8(withMei ? 2 : 1);
  if (exceptionCode === 0) return bad(`${what}: exception code 0`);
  if (request && request.fc !== fc) return bad(`${what} does not answer a FC${request.fc} request`);
  if (withMei && request) {
    const meiType = pdu.readUInt8(1);
    const asked = request.kind === 'device-id' ? request.meiType : request.kind === 'other' ? request.data[0] : undefined;
    if (asked !== undefined && asked !== meiType) return bad(`${what}: MEI type ${meiType} does not answer MEI type ${asked}`);
  }
  return { kind: 'exception', fc, exceptionCode };
}

function decodeResponse(pdu: Buffer, request: Request | undefined): Decoded<Response> {
  const first = pdu.readUInt8(0);
  if (first & 0x80) return decodeException(pdu, request);
  const fc = first;
  const what = `FC${fc} response`;
  if (fc === 0) return bad('function code 0 cannot start a response');
  if (request && request.fc !== fc) return bad(`${what} does not answer a FC${request.fc} request`);
  switch (fc) {
    case 1:
    case 2: {
      const short = atLeast(pdu, 2, what);
      if (short) return short;
      const count = pdu.readUInt8(1);
      const refusal =
        within(count, 1, 250, what, 'byte count') ??
        exactly(pdu, 2 + count, what) ??
        (request?.kind === 'read' ? byteCount(count, Math.ceil(request.quantity / 8), what, `ceil(${request.quantity}/8) for the request`) : undefined);
      return refusal ?? { kind: 'read-bits', fc, bytes: pdu.subarray(2) };
    }
    case 3:
    case 4:
    case 23: {
      const short = atLeast(pdu, 2, what);
      if (short) return short;
      const count = pdu.readUInt8(1);
      const asked = request?.kind === 'read' ? request.quantity : request?.kind === 'read-write' ? request.read.quantity : undefined;
      const refusal =
        within(count, 2, 250, what, 'byte count') ??
        (count % 2 === 0 ? undefined : bad(`${what}: byte count ${count} is not a whole number of registers`)) ??
        exactly(pdu, 2 + count, what) ??
        (asked === undefined ? undefined : byteCount(count, 2 * asked, what, `2 x ${asked} for the request`));
      return refusal ?? { kind: 'read-registers', fc, registers: pdu.subarray(2) };
    }
    case 5:
    case 6: {
      const w = singleWrite(pdu, fc, what);
      if (refused(w)) return w;
      const { address, value } = w;
      if (request?.kind === 'write-single' && (request.address !== address || request.value !== value)) {
        return bad(`${what}: echo ${address}=${value} does not match the request's ${request.address}=${request.value}`);
      }
      return { kind: 'echo', fc, data: pdu.subarray(1) };
    }
    case 15:
    case 16: {
      const short = exactly(pdu, 5, what);
      if (short) return short;
      const address = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      const refusal = within(quantity, 1, fc === 15 ? 1968 : 123, what, 'quantity') ?? span(address, quantity, what);
      if (refusal) return refusal;
      if (request?.kind === 'write-multiple' && (request.address !== address || request.quantity !== quantity)) {
        return bad(`${what}: echo of ${quantity} at ${address} does not match the request's ${request.quantity} at ${request.address}`);
      }
      return { kind: 'echo', fc, data: pdu.subarray(1) };
    }
    case 22: {
      const short = exactly(pdu, 7, what);
      if (short) return short;
      if (request?.kind === 'mask-write') {
        const echoed = [pdu.readUInt16BE(1), pdu.readUInt16BE(3), pdu.readUInt16BE(5)];
        const sent = [request.address, request.andMask, request.orMask];
        if (echoed.some((v, i) => v !== sent[i])) return bad(`${what}: echo ${echoed.join('/')} does not match the request's ${sent.join('/')}`);
      }
      return { kind: 'echo', fc, data: pdu.subarray(1) };
    }
    case 8: {
      const decoded = diagnosticsData(pdu, what);
      if (refused(decoded)) return decoded;
      if (request?.kind === 'diagnostics') {
        if (request.subFunction !== decoded.subFunction) {
          return bad(`${what}: sub-function ${decoded.subFunction} does not answer sub-function ${request.subFunction}`);
        }
        if (ECHO_SUBFUNCTIONS.has(decoded.subFunction) && !request.data.equals(decoded.data)) {
          return bad(`${what}: sub-function ${decoded.subFunction} must echo the request's ${request.data.length} data bytes`);
        }
      }
      return { kind: 'echo', fc, data: pdu.subarray(1) };
    }
    default: {
      const refusal = checkOtherResponse(pdu, fc, what, request);
      return refusal ?? { kind: 'other', fc, data: pdu.subarray(1) };
    }
  }
}

/** Shape checks for the responses a policy does not read field by field but a proxy must still frame correctly. */
function checkOtherResponse(pdu: Buffer, fc: number, what: string, request: Request | undefined): FrameError | undefined {
  switch (fc) {
    case 7: // §6.7: one byte of exception status outputs
      return exactly(pdu, 2, what);
    case 11: // §6.9: status word and event count
      return exactly(pdu, 5, what);
    case 12: {
      // §6.10: status, event count, message count, then 0..64 event bytes
      const short = atLeast(pdu, 2, what);
      if (short) return short;
      const count = pdu.readUInt8(1);
      return within(count, 6, 70, what, 'byte count') ?? exactly(pdu, 2 + count, what);
    }
    case 17: {
      // §6.13: the server id is device specific, so only the byte count can be checked
      const short = atLeast(pdu, 2, what);
      if (short) return short;
      const count = pdu.readUInt8(1);
      return within(count, 1, 251, what, 'byte count') ?? exactly(pdu, 2 + count, what);
    }
    case 20:
      return readFileResponse(pdu, what, request);
    case 21: {
      // §6.15: the normal response echoes the request, so it must have the request's structure
      const subRequests = fileSubRequests(pdu, 21, what);
      if (typeof subRequests !== 'number') return subRequests;
      if (request?.kind === 'file' && request.subRequests !== subRequests) {
        return bad(`${what}: echoes ${subRequests} sub-requests, the request had ${request.subRequests}`);
      }
      return undefined;
    }
    case 24: {
      // §6.18: byte count (2 bytes) covers the FIFO count and up to 31 registers
      const short = atLeast(pdu, 5, what);
      if (short) return short;
      const count = pdu.readUInt16BE(1);
      const fifoCount = pdu.readUInt16BE(3);
      return within(fifoCount, 0, 31, what, 'FIFO count') ?? byteCount(count, 2 + 2 * fifoCount, what, `2 + 2 x ${fifoCount}`) ?? exactly(pdu, 3 + count, what);
    }
    case 43:
      return encapsulatedResponse(pdu, what, request);
    default:
      return undefined;
  }
}

function readFileResponse(pdu: Buffer, what: string, request: Request | undefined): FrameError | undefined {
  const short = atLeast(pdu, 2, what);
  if (short) return short;
  const count = pdu.readUInt8(1);
  const refusal = within(count, 4, FILE_READ_MAX, what, 'response data length') ?? exactly(pdu, 2 + count, what);
  if (refusal) return refusal;
  let subResponses = 0;
  for (let at = 2; at < pdu.length; subResponses++) {
    const sub = `${what} sub-response ${subResponses}`;
    if (at + 2 > pdu.length) return bad(`${sub}: header runs past the PDU`);
    // The file response length counts the reference type byte and the record data (2 bytes a register).
    const length = pdu.readUInt8(at);
    const referenceType = pdu.readUInt8(at + 1);
    if (length < 3 || length % 2 === 0) return bad(`${sub}: file response length ${length} is not 1 + 2 x registers`);
    if (referenceType !== FILE_REFERENCE_TYPE) return bad(`${sub}: reference type ${referenceType}, expected ${FILE_REFERENCE_TYPE}`);
    if (at + 1 + length > pdu.length) return bad(`${sub}: ${length} bytes run past the PDU`);
    at += 1 + length;
  }
  if (request?.kind === 'file' && request.subRequests !== subResponses) {
    return bad(`${what}: ${subResponses} sub-responses for ${request.subRequests} sub-requests`);
  }
  return undefined;
}

const CONFORMITY_LEVELS = new Set([0x01, 0x02, 0x03, 0x81, 0x82, 0x83]);

function encapsulatedResponse(pdu: Buffer, what: string, request: Request | undefined): FrameError | undefined {
  const short = atLeast(pdu, 2, what);
  if (short) return short;
  const meiType = pdu.readUInt8(1);
  if (request?.kind === 'other' && request.data[0] !== meiType) return bad(`${what}: MEI type ${meiType} does not answer MEI type ${request.data[0]}`);
  if (request?.kind === 'device-id' && meiType !== MEI_DEVICE_ID) return bad(`${what}: MEI type ${meiType} does not answer MEI type ${MEI_DEVICE_ID}`);
  if (meiType !== MEI_DEVICE_ID) return undefined;
  // §6.21: code, conformity level, more follows, next object id, number of objects, then (id, length, value) objects
  const sub = `${what} (MEI 14)`;
  const header = atLeast(pdu, 7, sub);
  if (header) return header;
  const readCode = pdu.readUInt8(2);
  const conformity = pdu.readUInt8(3);
  const moreFollows = pdu.readUInt8(4);
  const refusal =
    within(readCode, 1, 4, sub, 'read device id code') ??
    (CONFORMITY_LEVELS.has(conformity) ? undefined : bad(`${sub}: conformity level 0x${conformity.toString(16)} is not defined`)) ??
    (moreFollows === 0 || moreFollows === 0xff ? undefined : bad(`${sub}: more-follows 0x${moreFollows.toString(16)}, expected 0x00 or 0xFF`)) ??
    (request?.kind === 'device-id' && request.readCode !== readCode ? bad(`${sub}: read device id code ${readCode} answers ${request.readCode}`) : undefined);
  if (refusal) return refusal;
  const objects = pdu.readUInt8(6);
  let at = 7;
  for (let i = 0; i < objects; i++) {
    if (at + 2 > pdu.length) return bad(`${sub}: object ${i} of ${objects} runs past the PDU`);
    at += 2 + pdu.readUInt8(at + 1);
    if (at > pdu.length) return bad(`${sub}: object ${i} value runs past the PDU`);
  }
  return at === pdu.length ? undefined : bad(`${sub}: ${pdu.length - at} bytes after the ${objects} objects`);
}

/**
 * Decodes exactly one complete response ADU. With the request it answers, also checks that the response fits it
 * (function code, byte count against quantity, echoed fields); matching transaction and unit ids is the caller's job.
 */
export function parseResponse(adu: Buffer, request?: Request): ParseResult<Response> {
  const split = splitAdu(adu);
  if (refused(split)) return { ok: false, error: split };
  const body = decodeResponse(split.pdu, request);
  if (refused(body)) return { ok: false, error: body };
  return { ok: true, frame: { mbap: split.mbap, pdu: split.pdu, body, raw: adu } };
}

// ---------------------------------------------------------------------------------------------------------------
// Policy view and exceptions

/**
 * Function codes that vendors use to program, start, stop or reflash a controller: the legacy Modicon program/poll
 * codes (9, 10, 13, 14, 18), the codes §5.1/Annex A reserves for vendors' legacy products (90 Schneider UMAS, 91,
 * 125-127) and both user-defined ranges (65-72, 100-110, §5.1). User-defined codes are included as a whole because
 * nothing in the protocol says what they do, so a policy must treat them as the most dangerous thing they can be.
 */
const PROGRAM_FCS = new Set([9, 10, 13, 14, 18, 90, 91, 125, 126, 127]);
const isProgramFc = (fc: number): boolean => PROGRAM_FCS.has(fc) || (fc >= 65 && fc <= 72) || (fc >= 100 && fc <= 110);

/** The coarse class a policy rule matches on. Unassigned public codes, and FC43 with an MEI type other than 14, are 'other'. */
export function accessOf(r: Request): Access {
  switch (r.kind) {
    case 'read':
    case 'read-fifo':
      return 'read';
    case 'write-single':
    case 'write-multiple':
    case 'mask-write':
      return 'write';
    case 'read-write':
      return 'read-write';
    case 'file':
      return r.fc === 20 ? 'read' : 'write';
    case 'diagnostics':
    case 'device-id':
    case 'serial-line':
      return 'diagnostics';
    case 'other':
      return isProgramFc(r.fc) ? 'program' : 'other';
  }
}

const EXCEPTION_CODES: ReadonlySet<number> = new Set(Object.values(ExceptionCode));

/**
 * The exception ADU a proxy sends in place of the server's answer (§7): same transaction and unit id, fc | 0x80.
 * For FC43 pass the request's MEI type to get the 3-byte form §6.21 specifies. Throws RangeError on arguments no
 * request could have produced, since that is a bug in the caller rather than something to put on the wire.
 */
export function encodeException(req: Mbap, fc: number, exceptionCode: (typeof ExceptionCode)[keyof typeof ExceptionCode], meiType?: number): Buffer {
  if (!Number.isInteger(fc) || fc < 1 || fc > 0x7f) throw new RangeError(`function code ${fc} cannot be answered with an exception (expected 1..127)`);
  if (!EXCEPTION_CODES.has(exceptionCode)) throw new RangeError(`exception code ${exceptionCode} is not one a proxy sends`);
  const withMei = meiType !== undefined;
  const pduLength = withMei ? 3 : 2;
  const adu = Buffer.alloc(MBAP_SIZE + pduLength);
  adu.writeUInt16BE(req.transactionId, 0);
  adu.writeUInt16BE(0, 2);
  adu.writeUInt16BE(1 + pduLength, 4);
  adu.writeUInt8(req.unitId, 6);
  adu.writeUInt8(fc | 0x80, 7);
  if (withMei) adu.writeUInt8(meiType, 8);
  adu.writeUInt8(exceptionCode, withMei ? 9 : 8);
  return adu;
}

// ---------------------------------------------------------------------------------------------------------------
// Stream framing

/**
 * Stream framer for TCP: feed chunks as they arrive; yields complete ADUs, keeps partial ones, handles pipelined
 * requests and frames split across segments. It checks only the MBAP header (protocol id, length): that is all
 * framing depends on, and a bad PDU inside a well-framed ADU leaves the stream in sync, so the proxy can answer it
 * with an exception. After a framing error it stops for good and reports the error on every later push: TCP Modbus
 * has no frame delimiter, so resynchronising on a guess would let an attacker choose where the next frame starts.
 *
 * Frames wholly inside one chunk are views over that chunk; a frame split across chunks is assembled in its own
 * buffer (the only copy, and at most MAX_ADU bytes), so no yielded frame is ever overwritten by a later push.
 */
export class AduFramer {
  #held: Buffer | undefined;
  #heldLength = 0;
  /** Size of the held frame once its length field has arrived. */
  #heldSize: number | undefined;
  #error: FrameError | undefined;

  /** Bytes of an incomplete frame kept between pushes: always below MAX_ADU. */
  get buffered(): number {
    return this.#heldLength;
  }

  /** The framing error that stopped this framer, if any. */
  get error(): FrameError | undefined {
    return this.#error;
  }

  push(chunk: Buffer): { frames: Buffer[]; error?: FrameError } {
    const frames: Buffer[] = [];
    if (this.#error) return { frames, error: this.#error };
    let at = 0;
    // Top up a held frame first: to a full header, then to the size its header announces.
    while (this.#held && at < chunk.length) {
      const target = this.#heldSize ?? 6;
      const take = Math.min(target - this.#heldLength, chunk.length - at);
      chunk.copy(this.#held, this.#heldLength, at, at + take);
      this.#heldLength += take;
      at += take;
      if (this.#heldSize === undefined) {
        const size = inspectHeader(this.#held.subarray(0, this.#heldLength));
        if (typeof size === 'object') return this.#stop(frames, size);
        this.#heldSize = size;
      }
      if (this.#heldLength === this.#heldSize) {
        frames.push(this.#held.subarray(0, this.#heldSize));
        this.#release();
      }
    }
    while (at < chunk.length) {
      const rest = chunk.subarray(at);
      const size = inspectHeader(rest.subarray(0, 6));
      if (typeof size === 'object') return this.#stop(frames, size);
      if (size === undefined || rest.length < size) {
        // Sized for the largest ADU because the length field may not be in yet; never more than MAX_ADU bytes.
        this.#held = Buffer.alloc(MAX_ADU);
        rest.copy(this.#held);
        this.#heldLength = rest.length;
        this.#heldSize = size;
        break;
      }
      frames.push(rest.subarray(0, size));
      at += size;
    }
    return { frames };
  }

  #release(): void {
    this.#held = undefined;
    this.#heldLength = 0;
    this.#heldSize = undefined;
  }

  #stop(frames: Buffer[], error: FrameError): { frames: Buffer[]; error: FrameError } {
    this.#error = error;
    this.#release();
    return { frames, error };
  }
}
