import net from 'node:net';
import test from 'ava';
import jsmodbus from 'jsmodbus';
import {
  type Access,
  AduFramer,
  accessOf,
  ExceptionCode,
  encodeException,
  type FrameError,
  MAX_ADU,
  type ParseResult,
  parseRequest,
  parseResponse,
  type Request,
  type Response,
} from '../../plugins/modbus/frame.js';

// Most PDUs below are the worked examples of the Modbus Application Protocol V1.1b3, §6.

/** An ADU around a PDU given in hex; `length` and `protocol` override the MBAP fields to build broken frames. */
function adu(pduHex: string, opts: { tid?: number; unit?: number; protocol?: number; length?: number } = {}): Buffer {
  const pdu = Buffer.from(pduHex.replace(/\s+/g, ''), 'hex');
  const head = Buffer.alloc(7);
  head.writeUInt16BE(opts.tid ?? 0x0102, 0);
  head.writeUInt16BE(opts.protocol ?? 0, 2);
  head.writeUInt16BE(opts.length ?? pdu.length + 1, 4);
  head.writeUInt8(opts.unit ?? 0x11, 6);
  return Buffer.concat([head, pdu]);
}

function request(pduHex: string): Request {
  const r = parseRequest(adu(pduHex));
  if (!r.ok) throw new Error(`expected ${pduHex} to parse: ${r.error.message}`);
  return r.frame.body;
}

function response(pduHex: string, req?: Request): Response {
  const r = parseResponse(adu(pduHex), req);
  if (!r.ok) throw new Error(`expected ${pduHex} to parse: ${r.error.message}`);
  return r.frame.body;
}

function refusal<T>(r: ParseResult<T>): FrameError {
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.frame.body)}`);
  return r.error;
}

const hex = (b: Buffer): string => b.toString('hex');

// ---------------------------------------------------------------------------------------------------------------
// Requests, one function code at a time

test('FC1 read coils', (t) => {
  t.deepEqual(request('01 0013 0013'), { kind: 'read', fc: 1, table: 'coils', address: 19, quantity: 19 });
});

test('FC2 read discrete inputs', (t) => {
  t.deepEqual(request('02 00C4 0016'), { kind: 'read', fc: 2, table: 'discrete-inputs', address: 196, quantity: 22 });
});

test('FC3 read holding registers, with the MBAP fields', (t) => {
  const r = parseRequest(adu('03 006B 0003', { tid: 0xbeef, unit: 0xff }));
  t.true(r.ok);
  if (!r.ok) return;
  t.deepEqual(r.frame.mbap, { transactionId: 0xbeef, protocolId: 0, length: 6, unitId: 0xff });
  t.deepEqual(r.frame.body, { kind: 'read', fc: 3, table: 'holding-registers', address: 107, quantity: 3 });
  t.is(hex(r.frame.pdu), '03006b0003');
});

test('FC4 read input registers', (t) => {
  t.deepEqual(request('04 0008 0001'), { kind: 'read', fc: 4, table: 'input-registers', address: 8, quantity: 1 });
});

test('FC5 write single coil, ON and OFF', (t) => {
  t.deepEqual(request('05 00AC FF00'), { kind: 'write-single', fc: 5, table: 'coils', address: 172, value: 0xff00 });
  t.deepEqual(request('05 00AC 0000'), { kind: 'write-single', fc: 5, table: 'coils', address: 172, value: 0 });
});

test('FC6 write single register', (t) => {
  t.deepEqual(request('06 0001 0003'), { kind: 'write-single', fc: 6, table: 'holding-registers', address: 1, value: 3 });
});

test('FC7, FC11, FC12 and FC17 carry no data', (t) => {
  for (const fc of [7, 11, 12, 17] as const) {
    t.deepEqual(request(fc.toString(16).padStart(2, '0')), { kind: 'serial-line', fc });
  }
});

test('FC8 diagnostics: return query data echoes any data; other sub-functions carry one word', (t) => {
  const r = request('08 0000 A537');
  t.like(r, { kind: 'diagnostics', fc: 8, subFunction: 0 });
  t.is(r.kind === 'diagnostics' ? hex(r.data) : '', 'a537');
  t.like(request('08 0000 010203'), { kind: 'diagnostics', subFunction: 0 });
  t.like(request('08 000A 0000'), { kind: 'diagnostics', subFunction: 10 });
  t.like(request('08 0015 00'), { kind: 'diagnostics', subFunction: 21 }, 'reserved sub-functions stay opaque');
});

test('FC15 write multiple coils', (t) => {
  const r = request('0F 0013 000A 02 CD01');
  t.like(r, { kind: 'write-multiple', fc: 15, table: 'coils', address: 19, quantity: 10 });
  t.is(r.kind === 'write-multiple' ? hex(r.values) : '', 'cd01');
});

test('FC16 write multiple registers', (t) => {
  const r = request('10 0001 0002 04 000A 0102');
  t.like(r, { kind: 'write-multiple', fc: 16, table: 'holding-registers', address: 1, quantity: 2 });
  t.is(r.kind === 'write-multiple' ? hex(r.values) : '', '000a0102');
});

test('FC20 read file record counts its sub-requests', (t) => {
  t.deepEqual(request('14 0E 06 0004 0001 0002 06 0003 0009 0002'), { kind: 'file', fc: 20, subRequests: 2 });
});

test('FC21 write file record counts its sub-requests', (t) => {
  t.deepEqual(request('15 0D 06 0004 0007 0003 06AF 04BE 100D'), { kind: 'file', fc: 21, subRequests: 1 });
  t.deepEqual(request('15 12 06 0001 0000 0001 1234 06 0002 270F 0001 5678'), { kind: 'file', fc: 21, subRequests: 2 });
});

test('FC22 mask write register', (t) => {
  t.deepEqual(request('16 0004 00F2 0025'), { kind: 'mask-write', fc: 22, address: 4, andMask: 0xf2, orMask: 0x25 });
});

test('FC23 read/write multiple registers', (t) => {
  const r = request('17 0003 0006 000E 0003 06 00FF 00FF 00FF');
  t.like(r, { kind: 'read-write', fc: 23, read: { address: 3, quantity: 6 }, write: { address: 14, quantity: 3 } });
  t.is(r.kind === 'read-write' ? hex(r.write.values) : '', '00ff00ff00ff');
});

test('FC24 read FIFO queue', (t) => {
  t.deepEqual(request('18 04DE'), { kind: 'read-fifo', fc: 24, address: 0x04de });
});

test('FC43/14 read device identification; other MEI types stay opaque', (t) => {
  t.deepEqual(request('2B 0E 01 00'), { kind: 'device-id', fc: 43, meiType: 14, readCode: 1, objectId: 0 });
  t.deepEqual(request('2B 0E 04 81'), { kind: 'device-id', fc: 43, meiType: 14, readCode: 4, objectId: 0x81 });
  const canopen = request('2B 0D 00 01 02');
  t.like(canopen, { kind: 'other', fc: 43 });
  t.is(canopen.kind === 'other' ? hex(canopen.data) : '', '0d000102');
});

test('user-defined and unassigned function codes parse as opaque data', (t) => {
  for (const fc of [65, 72, 90, 100, 110, 126, 50]) {
    const r = request(`${fc.toString(16).padStart(2, '0')} DEAD BEEF`);
    t.like(r, { kind: 'other', fc });
    t.is(r.kind === 'other' ? hex(r.data) : '', 'deadbeef');
  }
  t.like(request('5A'), { kind: 'other', fc: 90 }, 'an opaque request may carry no data at all');
});

test('parsing is zero-copy: the frame and its fields are views over the input', (t) => {
  const input = adu('10 0001 0002 04 000A 0102');
  const r = parseRequest(input);
  if (!r.ok || r.frame.body.kind !== 'write-multiple') return t.fail('expected a write-multiple frame');
  t.is(r.frame.raw, input);
  t.is(r.frame.pdu.buffer, input.buffer);
  t.is(r.frame.pdu.byteOffset, input.byteOffset + 7);
  input[input.length - 1] = 0x99;
  t.is(hex(r.frame.body.values), '000a0199', 'the values see a change made to the input');
});

// ---------------------------------------------------------------------------------------------------------------
// Request strictness: each rule, and the code it refuses with

test('MBAP: protocol id other than 0 is refused', (t) => {
  t.like(refusal(parseRequest(adu('03 0000 0001', { protocol: 1 }))), { code: 'bad-protocol' });
  t.like(refusal(parseRequest(adu('03 0000 0001', { protocol: 0x8000 }))), { code: 'bad-protocol' });
});

test('MBAP: length below 2 or above 254 is refused', (t) => {
  t.like(refusal(parseRequest(adu('', { length: 0 }))), { code: 'bad-length' });
  const empty = refusal(parseRequest(adu('', { length: 1 })));
  t.is(empty.code, 'bad-pdu');
  t.regex(empty.message, /empty PDU/);
  const oversized = refusal(parseRequest(adu('03 0000 0001', { length: 255 })));
  t.is(oversized.code, 'oversized');
  t.regex(oversized.message, /255/);
  t.true(parseRequest(adu(`41${'00'.repeat(252)}`)).ok, 'MBAP length 254 (a 253-byte PDU) is the largest accepted');
  t.is(adu(`41${'00'.repeat(252)}`).length, MAX_ADU);
});

test('MBAP: the ADU must be exactly 6 + length bytes', (t) => {
  const full = adu('03 0000 0001');
  for (const n of [0, 3, 6, 7, full.length - 1]) {
    t.like(refusal(parseRequest(full.subarray(0, n))), { code: 'truncated' }, `${n} bytes`);
  }
  const trailing = refusal(parseRequest(Buffer.concat([full, Buffer.from([0])])));
  t.is(trailing.code, 'bad-length');
  t.regex(trailing.message, /13 bytes but MBAP length 6 announces 12/);
  const big = Buffer.concat([adu(`41${'00'.repeat(252)}`), Buffer.alloc(40)]);
  t.like(refusal(parseRequest(big)), { code: 'oversized' });
});

test('function code 0 and exception codes cannot start a request', (t) => {
  t.like(refusal(parseRequest(adu('00 0000 0001'))), { code: 'bad-pdu' });
  t.like(refusal(parseRequest(adu('83 02'))), { code: 'bad-pdu' });
});

test('read requests: exact PDU length, quantity range, no wrap past address 65535', (t) => {
  const cases: [string, RegExp][] = [
    ['03 006B 0003 00', /FC3 request PDU is 6 bytes, expected 5/],
    ['03 006B 00', /FC3 request PDU is 4 bytes, expected 5/],
    ['03 0000 0000', /quantity 0 outside 1\.\.125/],
    ['04 0000 007E', /FC4 request: quantity 126 outside 1\.\.125/],
    ['01 0000 07D1', /FC1 request: quantity 2001 outside 1\.\.2000/],
    ['02 0000 0000', /quantity 0 outside 1\.\.2000/],
    ['03 FFFF 0002', /address 65535 \+ quantity 2 runs past 65535/],
    ['01 FFF0 0011', /address 65520 \+ quantity 17/],
  ];
  for (const [pdu, message] of cases) {
    const error = refusal(parseRequest(adu(pdu)));
    t.is(error.code, 'bad-pdu', pdu);
    t.regex(error.message, message, pdu);
  }
  t.true(parseRequest(adu('03 FFFF 0001')).ok, 'the last register can be read');
  t.true(parseRequest(adu('01 F830 07D0')).ok, '2000 coils ending at 65535');
});

test('FC5 accepts only 0x0000 and 0xFF00; both single writes are 5 bytes', (t) => {
  t.regex(refusal(parseRequest(adu('05 0001 0001'))).message, /coil value 0x1, expected 0x0000 or 0xFF00/);
  t.like(refusal(parseRequest(adu('05 0001 00FF'))), { code: 'bad-pdu' });
  t.like(refusal(parseRequest(adu('06 0001 00'))), { code: 'bad-pdu' });
  t.like(refusal(parseRequest(adu('06 0001 0003 00'))), { code: 'bad-pdu' });
});

test('FC15: 1..1968 coils, byte count ceil(quantity/8), data matching the byte count', (t) => {
  const cases: [string, RegExp][] = [
    ['0F 0013 000A 01 CD', /byte count 1, expected 2 \(ceil\(10\/8\)\)/],
    ['0F 0013 000A 02 CD', /PDU is 7 bytes, expected 8/],
    ['0F 0013 000A 02 CD0100', /PDU is 9 bytes, expected 8/],
    ['0F 0013 0000 00', /quantity 0 outside 1\.\.1968/],
    [`0F 0000 07B1 F7 ${'00'.repeat(247)}`, /quantity 1969 outside 1\.\.1968/],
    ['0F FFFF 0002 01 03', /runs past 65535/],
    ['0F 0013 000A', /PDU is 5 bytes, expected at least 6/],
  ];
  for (const [pdu, message] of cases) {
    const error = refusal(parseRequest(adu(pdu)));
    t.is(error.code, 'bad-pdu', pdu);
    t.regex(error.message, message, pdu);
  }
  t.true(parseRequest(adu(`0F 0000 07B0 F6 ${'FF'.repeat(246)}`)).ok, '1968 coils');
});

test('FC16: 1..123 registers, byte count 2 x quantity', (t) => {
  const cases: [string, RegExp][] = [
    ['10 0001 0002 03 000A01', /byte count 3, expected 4 \(2 x 2\)/],
    ['10 0001 0002 04 000A01', /PDU is 9 bytes, expected 10/],
    ['10 0000 007C 02 0000', /quantity 124 outside 1\.\.123/],
    ['10 0001 0000 00', /quantity 0/],
  ];
  for (const [pdu, message] of cases) {
    const error = refusal(parseRequest(adu(pdu)));
    t.is(error.code, 'bad-pdu', pdu);
    t.regex(error.message, message, pdu);
  }
  t.true(parseRequest(adu(`10 0000 007B F6 ${'00'.repeat(246)}`)).ok, '123 registers');
});

test('FC23: read 1..125, write 1..121, byte count 2 x write quantity', (t) => {
  const cases: [string, RegExp][] = [
    ['17 0003 007E 000E 0001 02 00FF', /read quantity 126 outside 1\.\.125/],
    ['17 0003 0001 000E 007A 02 0000', /write quantity 122 outside 1\.\.121/],
    ['17 0003 0006 000E 0003 04 00FF 00FF 00FF', /byte count 4, expected 6/],
    ['17 0003 0006 000E 0002 04 00FF 00FF 00FF', /PDU is 16 bytes, expected 14/],
    ['17 FFFE 0006 000E 0001 02 00FF', /\(read\): address 65534 \+ quantity 6/],
    ['17 0003 0006 000E 0000 00', /write quantity 0/],
  ];
  for (const [pdu, message] of cases) {
    const error = refusal(parseRequest(adu(pdu)));
    t.is(error.code, 'bad-pdu', pdu);
    t.regex(error.message, message, pdu);
  }
});

test('exact lengths for FC7/11/12/17, FC22, FC24, FC43/14; FC8 word sub-functions', (t) => {
  for (const pdu of [
    '07 00',
    '11 0000',
    '16 0004 00F2',
    '16 0004 00F2 0025 00',
    '18',
    '18 04DE 00',
    '2B 0E 01',
    '2B 0E 01 00 00',
    '2B',
    '08 0001',
    '08 0001 0000 00',
    '08',
  ]) {
    t.like(refusal(parseRequest(adu(pdu))), { code: 'bad-pdu' }, pdu);
  }
  t.regex(refusal(parseRequest(adu('2B 0E 05 00'))).message, /read device id code 5 outside 1\.\.4/);
  t.regex(refusal(parseRequest(adu('08 000B 000000'))).message, /sub-function 11 carries 3 data bytes, expected 2/);
});

test('FC20/FC21: the sub-request structure is checked in full', (t) => {
  const cases: [string, RegExp][] = [
    ['14 0E 05 0004 0001 0002 06 0003 0009 0002', /sub-request 0: reference type 5, expected 6/],
    ['14 0E 06 0004 0001 0002 06 0003 0009', /byte count 14 but 12 bytes follow/],
    ['14 08 06 0004 0001 0002 00', /not a whole number of 7-byte sub-requests/],
    ['14 07 06 0000 0001 0002', /file number 0 outside 1\.\.65535/],
    ['14 07 06 0001 2710 0001', /record number 10000 outside 0\.\.9999/],
    ['14 07 06 0001 270F 0002', /record length 2 outside 1\.\.1/],
    ['14 07 06 0001 0000 0000', /record length 0/],
    ['14 0E 06 0001 0000 0064 06 0002 0000 0064', /the response would need 404 data bytes, over 245/],
    ['15 0D 06 0004 0007 0004 06AF 04BE 100D', /byte count 13 but|4 registers run past the PDU/],
    ['15 0D 06 0004 0007 0002 06AF 04BE 100D', /sub-request 1 header runs past the PDU/],
    ['15 07 06 0004 0007 0000', /byte count 7 outside 9\.\.251/],
  ];
  for (const [pdu, message] of cases) {
    const error = refusal(parseRequest(adu(pdu)));
    t.is(error.code, 'bad-pdu', pdu);
    t.regex(error.message, message, pdu);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Responses, one function code at a time, checked against the request they answer

test('FC1/FC2 responses: status bytes, byte count against the quantity asked', (t) => {
  const coils = request('01 0013 0013');
  t.deepEqual(response('01 03 CD6B05', coils), { kind: 'read-bits', fc: 1, bytes: Buffer.from('cd6b05', 'hex') });
  t.regex(refusal(parseResponse(adu('01 02 CD6B'), coils)).message, /byte count 2, expected 3 \(ceil\(19\/8\)/);
  t.like(response('02 03 ACDB35', request('02 00C4 0016')), { kind: 'read-bits', fc: 2 });
  t.like(refusal(parseResponse(adu('01 00'))), { code: 'bad-pdu' }, 'no quantity reads zero bytes');
  t.like(refusal(parseResponse(adu('01 03 CD6B'))), { code: 'bad-pdu' }, 'byte count larger than the data');
});

test('FC3/FC4 responses: an even byte count matching the data and the quantity asked', (t) => {
  const r = response('03 06 022B 0000 0064', request('03 006B 0003'));
  t.deepEqual(r, { kind: 'read-registers', fc: 3, registers: Buffer.from('022b00000064', 'hex') });
  t.like(response('04 02 000A', request('04 0008 0001')), { kind: 'read-registers', fc: 4 });
  t.regex(refusal(parseResponse(adu('03 04 022B 0000'), request('03 006B 0003'))).message, /byte count 4, expected 6 \(2 x 3 for the request\)/);
  t.regex(refusal(parseResponse(adu('03 03 022B 00'))).message, /byte count 3 is not a whole number of registers/);
  t.regex(refusal(parseResponse(adu('03 06 022B 0000'))).message, /FC3 response PDU is 6 bytes, expected 8/);
  // What jsmodbus's server sends for a read past its register buffer, where §6.3 wants exception 2.
  t.regex(refusal(parseResponse(adu('03 00'), request('03 00C7 000A'))).message, /byte count 0 outside 2\.\.250/);
});

test('FC5/FC6 responses echo the request', (t) => {
  t.deepEqual(response('05 00AC FF00', request('05 00AC FF00')), { kind: 'echo', fc: 5, data: Buffer.from('00acff00', 'hex') });
  t.like(response('06 0001 0003', request('06 0001 0003')), { kind: 'echo', fc: 6 });
  t.regex(refusal(parseResponse(adu('06 0001 0004'), request('06 0001 0003'))).message, /echo 1=4 does not match the request's 1=3/);
  t.like(refusal(parseResponse(adu('05 00AC 1234'))), { code: 'bad-pdu' });
});

test('FC7, FC11, FC12 and FC17 responses are framed and kept opaque', (t) => {
  t.deepEqual(response('07 6D', request('07')), { kind: 'other', fc: 7, data: Buffer.from([0x6d]) });
  t.like(response('0B FFFF 0108', request('0B')), { kind: 'other', fc: 11 });
  t.like(response('0C 08 0000 0108 0121 2000', request('0C')), { kind: 'other', fc: 12 });
  t.like(response('11 02 AA FF', request('11')), { kind: 'other', fc: 17 });
  for (const pdu of ['07', '0B FFFF 01', '0C 05 0000 0108 01', '0C 08 0000 0108 0121 20', '11 03 AAFF']) {
    t.like(refusal(parseResponse(adu(pdu))), { code: 'bad-pdu' }, pdu);
  }
});

test('FC8 response: same sub-function, and the data echoed where §6.8.1 says so', (t) => {
  const query = request('08 0000 A537');
  t.deepEqual(response('08 0000 A537', query), { kind: 'echo', fc: 8, data: Buffer.from('0000a537', 'hex') });
  t.regex(refusal(parseResponse(adu('08 0000 A538'), query)).message, /must echo the request's 2 data bytes/);
  t.regex(refusal(parseResponse(adu('08 000B 0000'), query)).message, /sub-function 11 does not answer sub-function 0/);
  t.like(response('08 000B 0042', request('08 000B 0000')), { kind: 'echo', fc: 8 }, 'a counter comes back instead of the echo');
});

test('FC15/FC16 responses echo address and quantity', (t) => {
  t.deepEqual(response('0F 0013 000A', request('0F 0013 000A 02 CD01')), { kind: 'echo', fc: 15, data: Buffer.from('0013000a', 'hex') });
  t.like(response('10 0001 0002', request('10 0001 0002 04 000A 0102')), { kind: 'echo', fc: 16 });
  t.regex(refusal(parseResponse(adu('10 0001 0003'), request('10 0001 0002 04 000A 0102'))).message, /echo of 3 at 1 does not match the request's 2 at 1/);
  t.like(refusal(parseResponse(adu('10 0001 007C'))), { code: 'bad-pdu' });
});

test('FC20/FC21 responses: sub-responses tile the data and match the request', (t) => {
  const read = request('14 0E 06 0004 0001 0002 06 0003 0009 0002');
  t.like(response('14 0C 05 06 0DFE 0020 05 06 33CD 0040', read), { kind: 'other', fc: 20 });
  t.regex(refusal(parseResponse(adu('14 06 05 06 0DFE 0020'), read)).message, /1 sub-responses for 2 sub-requests/);
  t.regex(refusal(parseResponse(adu('14 06 04 06 0DFE 0020'))).message, /file response length 4 is not 1 \+ 2 x registers/);
  t.regex(refusal(parseResponse(adu('14 06 05 07 0DFE 0020'))).message, /reference type 7/);
  const write = '15 0D 06 0004 0007 0003 06AF 04BE 100D';
  t.like(response(write, request(write)), { kind: 'other', fc: 21 });
});

test('FC22, FC23 and FC24 responses', (t) => {
  const mask = request('16 0004 00F2 0025');
  t.like(response('16 0004 00F2 0025', mask), { kind: 'echo', fc: 22 });
  t.regex(refusal(parseResponse(adu('16 0004 00F2 0026'), mask)).message, /echo 4\/242\/38 does not match the request's 4\/242\/37/);
  const rw = request('17 0003 0006 000E 0003 06 00FF 00FF 00FF');
  t.like(response('17 0C 00FE 0ACD 0001 0003 000D 00FF', rw), { kind: 'read-registers', fc: 23 });
  t.like(refusal(parseResponse(adu('17 06 00FE 0ACD 0001'), rw)), { code: 'bad-pdu' });
  t.like(response('18 0006 0002 01B8 1284', request('18 04DE')), { kind: 'other', fc: 24 });
  t.regex(refusal(parseResponse(adu('18 0006 0003 01B8 1284'))).message, /byte count 6, expected 8/);
  t.regex(refusal(parseResponse(adu(`18 0042 0020 ${'00'.repeat(64)}`))).message, /FIFO count 32 outside 0\.\.31/);
});

test('FC43/14 response: objects tile the PDU; the read code matches', (t) => {
  const objects = [
    [0, 'Ward'],
    [1, 'W-1'],
    [2, '1.0'],
  ] as const;
  const list = objects.map(
    ([id, text]) => `${id.toString(16).padStart(2, '0')}${text.length.toString(16).padStart(2, '0')}${Buffer.from(text).toString('hex')}`,
  );
  const pdu = `2B 0E 01 01 00 00 03 ${list.join('')}`;
  const req = request('2B 0E 01 00');
  t.like(response(pdu, req), { kind: 'other', fc: 43 });
  t.regex(refusal(parseResponse(adu(pdu.replace('2B 0E 01 01 00 00 03', '2B 0E 01 01 00 00 04')))).message, /object 3 of 4 runs past/);
  t.regex(refusal(parseResponse(adu(`${pdu}00`))).message, /1 bytes after the 3 objects/);
  t.regex(refusal(parseResponse(adu(pdu.replace('2B 0E 01 01', '2B 0E 01 07')))).message, /conformity level 0x7/);
  t.regex(refusal(parseResponse(adu(pdu.replace('2B 0E 01 01 00', '2B 0E 01 01 01')))).message, /more-follows 0x1/);
  t.regex(refusal(parseResponse(adu(pdu), request('2B 0E 02 00'))).message, /read device id code 1 answers 2/);
  t.regex(refusal(parseResponse(adu('2B 0D 00'), req)).message, /MEI type 13 does not answer MEI type 14/);
});

test('unknown function codes pass as opaque responses; the fc must answer the request', (t) => {
  t.deepEqual(response('41 0102', request('41 00')), { kind: 'other', fc: 65, data: Buffer.from('0102', 'hex') });
  t.regex(refusal(parseResponse(adu('04 02 000A'), request('03 0000 0001'))).message, /FC4 response does not answer a FC3 request/);
  t.like(refusal(parseResponse(adu('00 01'))), { code: 'bad-pdu' });
});

test('exception responses: high bit set, codes 1..255, the fc of the request', (t) => {
  t.deepEqual(response('83 02', request('03 0000 0001')), { kind: 'exception', fc: 3, exceptionCode: 2 });
  t.deepEqual(response('C1 FF'), { kind: 'exception', fc: 65, exceptionCode: 255 });
  t.deepEqual(response('AB 0E 01', request('2B 0E 01 00')), { kind: 'exception', fc: 43, exceptionCode: 1 }, '§6.21 form, with the MEI type');
  t.deepEqual(response('AB 03'), { kind: 'exception', fc: 43, exceptionCode: 3 }, 'the plain form devices also send');
  t.regex(refusal(parseResponse(adu('AB 0D 01'), request('2B 0E 01 00'))).message, /MEI type 13 does not answer MEI type 14/);
  t.regex(refusal(parseResponse(adu('83 00'))).message, /exception code 0/);
  t.regex(refusal(parseResponse(adu('80 01'))).message, /function code 0/);
  t.regex(refusal(parseResponse(adu('83 02 00'))).message, /FC3 exception response PDU is 3 bytes, expected 2/);
  t.regex(refusal(parseResponse(adu('84 02'), request('03 0000 0001'))).message, /FC4 exception response does not answer a FC3 request/);
  t.like(refusal(parseResponse(adu('03 02'), request('03 0000 0001'))), { code: 'bad-pdu' }, 'without the high bit it is a FC3 response, and a short one');
});

test('responses get the same MBAP checks as requests', (t) => {
  t.like(refusal(parseResponse(adu('83 02', { protocol: 2 }))), { code: 'bad-protocol' });
  t.like(refusal(parseResponse(adu('83 02', { length: 0x100 }))), { code: 'oversized' });
  t.like(refusal(parseResponse(adu('83 02').subarray(0, 8))), { code: 'truncated' });
  t.like(refusal(parseResponse(Buffer.concat([adu('83 02'), Buffer.from([1])]))), { code: 'bad-length' });
});

// ---------------------------------------------------------------------------------------------------------------
// Exceptions and the policy view

test('encodeException round-trips through parseResponse for every code the proxy sends', (t) => {
  const asked = parseRequest(adu('10 0001 0002 04 000A 0102', { tid: 0x4242, unit: 9 }));
  if (!asked.ok) return t.fail(asked.error.message);
  for (const code of Object.values(ExceptionCode)) {
    const out = encodeException(asked.frame.mbap, 16, code);
    t.is(hex(out), `4242 0000 0003 09 90 ${code.toString(16).padStart(2, '0')}`.replaceAll(' ', ''));
    const back = parseResponse(out, asked.frame.body);
    if (!back.ok) return t.fail(back.error.message);
    t.deepEqual(back.frame.mbap, { transactionId: 0x4242, protocolId: 0, length: 3, unitId: 9 });
    t.deepEqual(back.frame.body, { kind: 'exception', fc: 16, exceptionCode: code });
  }
  const mei = encodeException(asked.frame.mbap, 43, ExceptionCode.IllegalDataAddress, 14);
  t.is(hex(mei), '42420000000409ab0e02');
  t.deepEqual(response(hex(mei.subarray(7)), request('2B 0E 04 07')), { kind: 'exception', fc: 43, exceptionCode: 2 });
  t.throws(() => encodeException(asked.frame.mbap, 0, 1), { instanceOf: RangeError });
  t.throws(() => encodeException(asked.frame.mbap, 0x83, 1), { instanceOf: RangeError });
  t.throws(() => encodeException(asked.frame.mbap, 3, 5 as 4), { instanceOf: RangeError });
});

test('jsmodbus decodes the exceptions encodeException writes', (t) => {
  const mbap = { transactionId: 7, protocolId: 0, length: 6, unitId: 1 };
  const plain = jsmodbus.ModbusTCPResponse.fromBuffer(encodeException(mbap, 3, ExceptionCode.IllegalDataAddress));
  t.like(plain, { id: 7, unitId: 1 });
  t.like(plain?.body, { fc: 3, code: 2, isException: true });
  const mei = jsmodbus.ModbusTCPResponse.fromBuffer(encodeException(mbap, 43, ExceptionCode.IllegalDataValue, 14));
  t.like(mei?.body, { fc: 43, code: 3, meiType: 14 });
});

test('accessOf classes every kind of request', (t) => {
  const cases: [string, Access][] = [
    ['01 0000 0001', 'read'],
    ['02 0000 0001', 'read'],
    ['03 0000 0001', 'read'],
    ['04 0000 0001', 'read'],
    ['18 0000', 'read'],
    ['14 07 06 0001 0000 0001', 'read'],
    ['05 0000 FF00', 'write'],
    ['06 0000 0001', 'write'],
    ['0F 0000 0001 01 01', 'write'],
    ['10 0000 0001 02 0001', 'write'],
    ['16 0000 FFFF 0000', 'write'],
    ['15 09 06 0001 0000 0001 0000', 'write'],
    ['17 0000 0001 0000 0001 02 0000', 'read-write'],
    ['08 0000', 'diagnostics'],
    ['08 0004 0000', 'diagnostics'],
    ['07', 'diagnostics'],
    ['0B', 'diagnostics'],
    ['0C', 'diagnostics'],
    ['11', 'diagnostics'],
    ['2B 0E 01 00', 'diagnostics'],
    ['5A 0002', 'program'],
    ['7E 00', 'program'],
    ['0D 00', 'program'],
    ['41', 'program'],
    ['48', 'program'],
    ['64 00', 'program'],
    ['6E 00', 'program'],
    ['2B 0D 00', 'other'],
    ['32 00', 'other'],
    ['49 00', 'other'],
    ['6F 00', 'other'],
  ];
  for (const [pdu, access] of cases) t.is(accessOf(request(pdu)), access, pdu);
});

// ---------------------------------------------------------------------------------------------------------------
// The stream framer

const A = adu('03 006B 0003', { tid: 1 });
const B = adu('10 0001 0002 04 000A 0102', { tid: 2 });
const C = adu('05 00AC FF00', { tid: 3 });

test('framer: a frame fed one byte at a time comes out once, whole', (t) => {
  const framer = new AduFramer();
  const out: Buffer[] = [];
  for (let i = 0; i < B.length; i++) {
    const { frames, error } = framer.push(B.subarray(i, i + 1));
    t.is(error, undefined);
    out.push(...frames);
    t.is(framer.buffered, i + 1 < B.length ? i + 1 : 0);
  }
  t.deepEqual(out.map(hex), [hex(B)]);
});

test('framer: pipelined frames in one chunk come out as views over the chunk', (t) => {
  const chunk = Buffer.concat([A, B]);
  const { frames, error } = new AduFramer().push(chunk);
  t.is(error, undefined);
  t.deepEqual(frames.map(hex), [hex(A), hex(B)]);
  t.true(frames.every((f) => f.buffer === chunk.buffer));
});

test('framer: a frame split across chunks together with the start of the next', (t) => {
  const framer = new AduFramer();
  const stream = Buffer.concat([A, B, C]);
  const first = framer.push(Buffer.from(stream.subarray(0, 5)));
  t.deepEqual(first.frames, []);
  t.is(framer.buffered, 5);
  const second = framer.push(Buffer.from(stream.subarray(5, A.length + 3)));
  t.deepEqual(second.frames.map(hex), [hex(A)]);
  t.is(framer.buffered, 3);
  const third = framer.push(Buffer.from(stream.subarray(A.length + 3)));
  t.deepEqual(third.frames.map(hex), [hex(B), hex(C)]);
  t.is(framer.buffered, 0);
  t.is(third.error, undefined);
});

test('framer: a bad protocol id mid-stream stops it for good', (t) => {
  const framer = new AduFramer();
  const bad = adu('03 0000 0001', { protocol: 0x0101 });
  const { frames, error } = framer.push(Buffer.concat([A, bad, C]));
  t.deepEqual(frames.map(hex), [hex(A)], 'frames before the error still come out');
  t.is(error?.code, 'bad-protocol');
  t.is(framer.buffered, 0);
  const later = framer.push(C);
  t.deepEqual(later.frames, []);
  t.is(later.error?.code, 'bad-protocol');
  t.is(framer.error?.code, 'bad-protocol');
});

test('framer: a bad protocol id is refused as soon as its bytes arrive', (t) => {
  const framer = new AduFramer();
  t.is(framer.push(Buffer.from([0, 1, 0])).error, undefined);
  t.is(framer.push(Buffer.from([7])).error?.code, 'bad-protocol');
});

test('framer: an oversized length stops it without buffering the announced bytes', (t) => {
  const framer = new AduFramer();
  t.deepEqual(framer.push(A), { frames: [A] });
  t.is(framer.push(Buffer.from([0, 9, 0, 0, 0xff])).error, undefined);
  t.is(framer.buffered, 5);
  const { frames, error } = framer.push(Buffer.concat([Buffer.from([0xff, 1]), Buffer.alloc(4000)]));
  t.deepEqual(frames, []);
  t.is(error?.code, 'oversized');
  t.regex(error?.message ?? '', /MBAP length 65535 announces a 65541-byte ADU/);
  t.is(framer.buffered, 0);
  t.true(framer.push(Buffer.alloc(MAX_ADU * 4)).error !== undefined);
  t.is(framer.buffered, 0);
});

test('framer: a length just within bounds is held whole, never more', (t) => {
  const framer = new AduFramer();
  const max = adu(`41${'00'.repeat(252)}`);
  t.deepEqual(framer.push(max.subarray(0, MAX_ADU - 1)).frames, []);
  t.is(framer.buffered, MAX_ADU - 1);
  const { frames } = framer.push(Buffer.concat([max.subarray(MAX_ADU - 1), A.subarray(0, 2)]));
  t.deepEqual(frames.map(hex), [hex(max)]);
  t.is(framer.buffered, 2);
  t.like(new AduFramer().push(adu('', { length: 0 })).error, { code: 'bad-length' });
});

// ---------------------------------------------------------------------------------------------------------------
// Real frames from a third-party implementation: jsmodbus's client talks to jsmodbus's server through a tap on
// loopback that records both directions, then the recorded streams go through AduFramer and the parsers.

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

function close(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function frameAll(chunks: Buffer[]): Buffer[] {
  const framer = new AduFramer();
  const frames: Buffer[] = [];
  for (const chunk of chunks) {
    const out = framer.push(chunk);
    if (out.error) throw new Error(out.error.message);
    frames.push(...out.frames);
  }
  if (framer.buffered !== 0) throw new Error(`${framer.buffered} bytes left over`);
  return frames;
}

test('frames jsmodbus writes parse with the fields it was asked for; its responses fit them', async (t) => {
  const holding = Buffer.alloc(64);
  holding.writeUInt16BE(0x1234, 8);
  holding.writeUInt16BE(0x5678, 10);
  const input = Buffer.alloc(16);
  input.writeUInt16BE(0xabcd, 4);
  const upstream = net.createServer();
  new jsmodbus.server.TCP(upstream, { holding, input, coils: Buffer.alloc(8), discrete: Buffer.from([0x55, 0x0f]) });
  const upstreamPort = await listen(upstream);

  const toServer: Buffer[] = [];
  const toClient: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const tap = net.createServer((inbound) => {
    const outbound = net.connect(upstreamPort, '127.0.0.1');
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.on('data', (d: Buffer) => {
      toServer.push(Buffer.from(d));
      outbound.write(d);
    });
    outbound.on('data', (d: Buffer) => {
      toClient.push(Buffer.from(d));
      inbound.write(d);
    });
  });
  const tapPort = await listen(tap);

  const socket = new net.Socket();
  socket.on('error', () => {});
  const client = new jsmodbus.client.TCP(socket, 7, 2000);
  let deviceIdError: unknown;
  try {
    await within(2000, 'connect', new Promise<void>((resolve) => socket.connect(tapPort, '127.0.0.1', () => resolve())));
    const read = await within(3000, 'readHoldingRegisters', client.readHoldingRegisters(4, 3));
    t.deepEqual(read.response.body.valuesAsArray, [0x1234, 0x5678, 0]);
    await within(3000, 'writeSingleRegister', client.writeSingleRegister(7, 0xbeef));
    await within(3000, 'writeMultipleRegisters', client.writeMultipleRegisters(10, [1, 2, 0xffff]));
    await within(3000, 'writeSingleCoil', client.writeSingleCoil(5, true));
    await within(3000, 'writeSingleCoil', client.writeSingleCoil(6, false));
    await within(3000, 'writeMultipleCoils', client.writeMultipleCoils(3, [true, false, true, true, false, false, false, false, true]));
    await within(3000, 'readCoils', client.readCoils(0, 13));
    await within(3000, 'readDiscreteInputs', client.readDiscreteInputs(1, 10));
    await within(3000, 'readInputRegisters', client.readInputRegisters(2, 2));
    deviceIdError = await within(
      3000,
      'readDeviceIdentification',
      client.readDeviceIdentification(1, 0).then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
  } finally {
    socket.destroy();
    for (const s of sockets) s.destroy();
    await within(3000, 'closing the tap', close(tap));
    await within(3000, 'closing the server', close(upstream));
  }
  t.like(deviceIdError, { err: 'ModbusException' }, 'jsmodbus answers device identification with an exception when no handler is set');

  const requests = frameAll(toServer).map((f) => parseRequest(f));
  const bodies = requests.map((r) => (r.ok ? r.frame.body : r.error));
  t.deepEqual(bodies, [
    { kind: 'read', fc: 3, table: 'holding-registers', address: 4, quantity: 3 },
    { kind: 'write-single', fc: 6, table: 'holding-registers', address: 7, value: 0xbeef },
    { kind: 'write-multiple', fc: 16, table: 'holding-registers', address: 10, quantity: 3, values: Buffer.from('00010002ffff', 'hex') },
    { kind: 'write-single', fc: 5, table: 'coils', address: 5, value: 0xff00 },
    { kind: 'write-single', fc: 5, table: 'coils', address: 6, value: 0 },
    { kind: 'write-multiple', fc: 15, table: 'coils', address: 3, quantity: 9, values: Buffer.from([0b00001101, 0b00000001]) },
    { kind: 'read', fc: 1, table: 'coils', address: 0, quantity: 13 },
    { kind: 'read', fc: 2, table: 'discrete-inputs', address: 1, quantity: 10 },
    { kind: 'read', fc: 4, table: 'input-registers', address: 2, quantity: 2 },
    { kind: 'device-id', fc: 43, meiType: 14, readCode: 1, objectId: 0 },
  ]);
  const byTid = new Map(requests.flatMap((r) => (r.ok ? [[r.frame.mbap.transactionId, r.frame] as const] : [])));
  t.is(byTid.size, 10, 'every request has its own transaction id');
  t.true(requests.every((r) => r.ok && r.frame.mbap.unitId === 7));

  const responses = frameAll(toClient).map((f) => {
    const tid = f.readUInt16BE(0);
    const asked = byTid.get(tid);
    const r = parseResponse(f, asked?.body);
    if (!r.ok) return r.error;
    return { tid, unit: r.frame.mbap.unitId, body: r.frame.body };
  });
  t.is(responses.length, 10);
  const kinds = responses.map((r) => ('body' in r ? [r.body.kind, r.body.fc] : r));
  t.deepEqual(kinds, [
    ['read-registers', 3],
    ['echo', 6],
    ['echo', 16],
    ['echo', 5],
    ['echo', 5],
    ['echo', 15],
    ['read-bits', 1],
    ['read-bits', 2],
    ['read-registers', 4],
    ['exception', 43],
  ]);
  const first = responses[0];
  t.like(first, { unit: 7, body: { kind: 'read-registers', registers: Buffer.from('123456780000', 'hex') } });
  t.like(responses[8], { body: { registers: Buffer.from('abcd0000', 'hex') } });
  t.like(responses[9], { body: { exceptionCode: ExceptionCode.IllegalFunction } });
});
