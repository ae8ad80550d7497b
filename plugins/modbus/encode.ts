/**
 * Modbus/TCP ADU encoders: the normal responses the simulated PLC sends and the requests Ward's own client sends.
 * The mirror of frame.ts, which only decodes (plus `encodeException`). Pure: each call allocates exactly the ADU it
 * returns and writes every byte of it, so the pooled `Buffer.allocUnsafe` is safe here.
 *
 * Arguments are trusted: callers are the simulator (which answers only requests parseRequest accepted) and the
 * client (which checks its arguments first), so nothing here re-validates ranges beyond what Buffer's writers do.
 */
import type { Mbap } from './frame.js';

/** The MBAP fields a response copies from its request (Implementation Guide §3.1.3). */
export type MbapIds = Pick<Mbap, 'transactionId' | 'unitId'>;

/** One object of a read device identification response (AP §6.21). */
export interface DeviceIdObject {
  id: number;
  value: Buffer;
}

const MBAP_SIZE = 7;

/** An ADU with its MBAP header written and `pduLength` bytes left for the caller to fill, starting at offset 7. */
function adu(ids: MbapIds, pduLength: number): Buffer {
  const b = Buffer.allocUnsafe(MBAP_SIZE + pduLength);
  b.writeUInt16BE(ids.transactionId, 0);
  b.writeUInt16BE(0, 2);
  b.writeUInt16BE(pduLength + 1, 4);
  b.writeUInt8(ids.unitId, 6);
  return b;
}

// ---------------------------------------------------------------------------------------------------------------
// Responses (AP §6)

/**
 * FC1/FC2 (§6.1, §6.2): bits packed LSB first, the last byte padded with zeros. Reads `quantity` entries of `bits`
 * from `start`, so a server can answer straight from its table without slicing it.
 */
export function encodeReadBitsResponse(ids: MbapIds, fc: 1 | 2, bits: ArrayLike<number | boolean>, start = 0, quantity = bits.length - start): Buffer {
  const count = Math.ceil(quantity / 8);
  const b = adu(ids, 2 + count);
  b.writeUInt8(fc, 7);
  b.writeUInt8(count, 8);
  b.fill(0, 9);
  for (let i = 0; i < quantity; i++) {
    if (bits[start + i]) b[9 + (i >> 3)] = (b[9 + (i >> 3)] as number) | (1 << (i & 7));
  }
  return b;
}

/** FC3/FC4/FC23 (§6.3, §6.4, §6.17): registers big-endian; reads `quantity` entries of `values` (uint16s) from `start`. */
export function encodeReadRegistersResponse(ids: MbapIds, fc: 3 | 4 | 23, values: ArrayLike<number>, start = 0, quantity = values.length - start): Buffer {
  const b = adu(ids, 2 + 2 * quantity);
  b.writeUInt8(fc, 7);
  b.writeUInt8(2 * quantity, 8);
  // Plain byte stores: writeUInt16BE's range checks cost more than the copy itself on a 125-register answer.
  for (let i = 0, at = 9; i < quantity; i++, at += 2) {
    const v = values[start + i] as number;
    b[at] = v >>> 8;
    b[at + 1] = v;
  }
  return b;
}

/** FC5/FC6 (§6.5, §6.6): the echo of the request; for FC5 `value` is the raw word, 0xFF00 or 0x0000. */
export function encodeWriteSingleResponse(ids: MbapIds, fc: 5 | 6, address: number, value: number): Buffer {
  const b = adu(ids, 5);
  b.writeUInt8(fc, 7);
  b.writeUInt16BE(address, 8);
  b.writeUInt16BE(value, 10);
  return b;
}

/** FC15/FC16 (§6.11, §6.12): address and quantity written. */
export function encodeWriteMultipleResponse(ids: MbapIds, fc: 15 | 16, address: number, quantity: number): Buffer {
  const b = adu(ids, 5);
  b.writeUInt8(fc, 7);
  b.writeUInt16BE(address, 8);
  b.writeUInt16BE(quantity, 10);
  return b;
}

/** FC22 (§6.16): the echo of the request. */
export function encodeMaskWriteResponse(ids: MbapIds, address: number, andMask: number, orMask: number): Buffer {
  const b = adu(ids, 7);
  b.writeUInt8(22, 7);
  b.writeUInt16BE(address, 8);
  b.writeUInt16BE(andMask, 10);
  b.writeUInt16BE(orMask, 12);
  return b;
}

/** FC8 (§6.8): sub-function and data; for sub-function 0 (Return Query Data) the data is the request's. */
export function encodeDiagnosticsResponse(ids: MbapIds, subFunction: number, data: Buffer): Buffer {
  const b = adu(ids, 3 + data.length);
  b.writeUInt8(8, 7);
  b.writeUInt16BE(subFunction, 8);
  data.copy(b, 10);
  return b;
}

/**
 * FC43/14 (§6.21): read code echoed, then conformity level, more-follows (0xFF when the objects continue in a
 * further transaction, starting at `nextObjectId`), and the objects as (id, length, value). The caller keeps the
 * objects within the 253-byte PDU.
 */
export function encodeDeviceIdResponse(
  ids: MbapIds,
  readCode: number,
  conformity: number,
  objects: readonly DeviceIdObject[],
  moreFollows = false,
  nextObjectId = 0,
): Buffer {
  let size = 7;
  for (const o of objects) size += 2 + o.value.length;
  const b = adu(ids, size);
  b.writeUInt8(43, 7);
  b.writeUInt8(14, 8);
  b.writeUInt8(readCode, 9);
  b.writeUInt8(conformity, 10);
  b.writeUInt8(moreFollows ? 0xff : 0, 11);
  b.writeUInt8(moreFollows ? nextObjectId : 0, 12);
  b.writeUInt8(objects.length, 13);
  let at = 14;
  for (const o of objects) {
    b.writeUInt8(o.id, at);
    b.writeUInt8(o.value.length, at + 1);
    o.value.copy(b, at + 2);
    at += 2 + o.value.length;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------------------
// Requests (AP §6), for Ward's client and for tests that speak raw frames

/** FC1-FC4 (§6.1-§6.4). */
export function encodeReadRequest(ids: MbapIds, fc: 1 | 2 | 3 | 4, address: number, quantity: number): Buffer {
  const b = adu(ids, 5);
  b.writeUInt8(fc, 7);
  b.writeUInt16BE(address, 8);
  b.writeUInt16BE(quantity, 10);
  return b;
}

/** FC5/FC6 (§6.5, §6.6); for FC5 `value` is the raw word, 0xFF00 (on) or 0x0000 (off). */
export function encodeWriteSingleRequest(ids: MbapIds, fc: 5 | 6, address: number, value: number): Buffer {
  return encodeWriteSingleResponse(ids, fc, address, value);
}

/** FC16 (§6.12). */
export function encodeWriteMultipleRegistersRequest(ids: MbapIds, address: number, values: ArrayLike<number>): Buffer {
  const b = adu(ids, 6 + 2 * values.length);
  b.writeUInt8(16, 7);
  b.writeUInt16BE(address, 8);
  b.writeUInt16BE(values.length, 10);
  b.writeUInt8(2 * values.length, 12);
  for (let i = 0; i < values.length; i++) b.writeUInt16BE(values[i] as number, 13 + 2 * i);
  return b;
}
