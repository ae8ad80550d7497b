import { isDeepStrictEqual } from 'node:util';
import test from 'ava';
import fc from 'fast-check';
import { AduFramer, MAX_ADU, type ParseResult, parseRequest, parseResponse, type Request, type Response } from '../../plugins/modbus/frame.js';

// Property-based checks of the Modbus/TCP parser and framer. Fixed seed and bounded runs: a failure reproduces
// exactly, and the whole file stays a few seconds on the CI machine.
const params = { seed: 0x5eed_0b05, numRuns: 5000 };

const u8 = (n: number): Buffer => Buffer.from([n]);
const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const bytes = (minLength: number, maxLength: number): fc.Arbitrary<Buffer> => fc.uint8Array({ minLength, maxLength }).map((a) => Buffer.from(a));

function wrap(pdu: Buffer, transactionId: number, unitId: number): Buffer {
  return Buffer.concat([u16(transactionId), u16(0), u16(pdu.length + 1), u8(unitId), pdu]);
}

// ---------------------------------------------------------------------------------------------------------------
// A generator of valid requests, each with the PDU a small encoder of this test makes for it. File record requests
// carry sub-requests the decoded body only counts, so each case pairs the expected body with its bytes.

interface Case {
  body: Request;
  pdu: Buffer;
}

const KNOWN = new Set([1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43]);

/**
 * The PDU the spec lays out for a request body. Byte counts come from the quantities, not from the data given, so
 * re-encoding an accepted frame gives its bytes back only if the parser checked them. File records: see fileCase.
 */
function encodeRequest(r: Request): Buffer | undefined {
  switch (r.kind) {
    case 'read':
      return Buffer.concat([u8(r.fc), u16(r.address), u16(r.quantity)]);
    case 'write-single':
      return Buffer.concat([u8(r.fc), u16(r.address), u16(r.value)]);
    case 'write-multiple':
      return Buffer.concat([u8(r.fc), u16(r.address), u16(r.quantity), u8(r.fc === 15 ? Math.ceil(r.quantity / 8) : 2 * r.quantity), r.values]);
    case 'mask-write':
      return Buffer.concat([u8(22), u16(r.address), u16(r.andMask), u16(r.orMask)]);
    case 'read-write':
      return Buffer.concat([
        u8(23),
        u16(r.read.address),
        u16(r.read.quantity),
        u16(r.write.address),
        u16(r.write.quantity),
        u8(2 * r.write.quantity),
        r.write.values,
      ]);
    case 'read-fifo':
      return Buffer.concat([u8(24), u16(r.address)]);
    case 'diagnostics':
      return Buffer.concat([u8(8), u16(r.subFunction), r.data]);
    case 'device-id':
      return Buffer.from([43, r.meiType, r.readCode, r.objectId]);
    case 'serial-line':
      return u8(r.fc);
    case 'other':
      return Buffer.concat([u8(r.fc), r.data]);
    case 'file':
      return undefined;
  }
}

const encoded = (body: Request): Case => ({ body, pdu: encodeRequest(body) ?? Buffer.alloc(0) });

const TABLES = ['coils', 'discrete-inputs', 'holding-registers', 'input-registers'] as const;

const readCase = fc
  .constantFrom(1, 2, 3, 4)
  .chain((code) =>
    fc
      .integer({ min: 1, max: code <= 2 ? 2000 : 125 })
      .chain((quantity) => fc.tuple(fc.constant(code), fc.constant(quantity), fc.integer({ min: 0, max: 0x10000 - quantity }))),
  )
  .map(([code, quantity, address]) => encoded({ kind: 'read', fc: code, table: TABLES[code - 1] ?? 'coils', address, quantity }));

const writeSingleCase = fc
  .oneof(
    fc.tuple(fc.constant(5), fc.integer({ min: 0, max: 0xffff }), fc.constantFrom(0, 0xff00)),
    fc.tuple(fc.constant(6), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff })),
  )
  .map(([code, address, value]) => encoded({ kind: 'write-single', fc: code, table: code === 5 ? 'coils' : 'holding-registers', address, value }));

const writeMultipleCase = fc
  .constantFrom(15, 16)
  .chain((code) => fc.integer({ min: 1, max: code === 15 ? 1968 : 123 }).map((quantity) => [code, quantity] as const))
  .chain(([code, quantity]) => {
    const count = code === 15 ? Math.ceil(quantity / 8) : 2 * quantity;
    return fc.tuple(fc.constant(code), fc.constant(quantity), fc.integer({ min: 0, max: 0x10000 - quantity }), bytes(count, count));
  })
  .map(([code, quantity, address, values]) =>
    encoded({ kind: 'write-multiple', fc: code, table: code === 15 ? 'coils' : 'holding-registers', address, quantity, values }),
  );

const maskWriteCase = fc
  .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }))
  .map(([address, andMask, orMask]) => encoded({ kind: 'mask-write', fc: 22, address, andMask, orMask }));

const readWriteCase = fc
  .tuple(fc.integer({ min: 1, max: 125 }), fc.integer({ min: 1, max: 121 }))
  .chain(([rq, wq]) =>
    fc.tuple(fc.constant(rq), fc.integer({ min: 0, max: 0x10000 - rq }), fc.constant(wq), fc.integer({ min: 0, max: 0x10000 - wq }), bytes(2 * wq, 2 * wq)),
  )
  .map(([rq, ra, wq, wa, values]) =>
    encoded({ kind: 'read-write', fc: 23, read: { address: ra, quantity: rq }, write: { address: wa, quantity: wq, values } }),
  );

const fifoCase = fc.integer({ min: 0, max: 0xffff }).map((address) => encoded({ kind: 'read-fifo', fc: 24, address }));

const fileSub = fc
  .integer({ min: 0, max: 9999 })
  .chain((record) => fc.tuple(fc.integer({ min: 1, max: 0xffff }), fc.constant(record), fc.integer({ min: 1, max: Math.min(10, 10000 - record) })));

const fileCase: fc.Arbitrary<Case> = fc.oneof(
  fc.array(fileSub, { minLength: 1, maxLength: 5 }).map((subs): Case => {
    const body = Buffer.concat(subs.map(([file, record, length]) => Buffer.concat([u8(6), u16(file), u16(record), u16(length)])));
    return { body: { kind: 'file', fc: 20, subRequests: subs.length }, pdu: Buffer.concat([u8(20), u8(body.length), body]) };
  }),
  fc
    .array(
      fileSub.chain(([file, record, length]) => bytes(2 * length, 2 * length).map((data) => Buffer.concat([u8(6), u16(file), u16(record), u16(length), data]))),
      {
        minLength: 1,
        maxLength: 4,
      },
    )
    .map((subs): Case => {
      const body = Buffer.concat(subs);
      return { body: { kind: 'file', fc: 21, subRequests: subs.length }, pdu: Buffer.concat([u8(21), u8(body.length), body]) };
    }),
);

const diagnosticsCase = fc
  .oneof(
    fc.tuple(fc.constant(0), bytes(0, 250)),
    fc.tuple(fc.constantFrom(1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20), bytes(2, 2)),
    fc.tuple(fc.oneof(fc.integer({ min: 5, max: 9 }), fc.constant(19), fc.integer({ min: 21, max: 0xffff })), bytes(0, 100)),
  )
  .map(([subFunction, data]) => encoded({ kind: 'diagnostics', fc: 8, subFunction, data }));

const deviceIdCase = fc
  .tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 255 }))
  .map(([readCode, objectId]) => encoded({ kind: 'device-id', fc: 43, meiType: 14, readCode, objectId }));

const serialCase = fc.constantFrom(7, 11, 12, 17).map((code) => encoded({ kind: 'serial-line', fc: code }));

const otherCase = fc.oneof(
  fc
    .tuple(
      fc.integer({ min: 1, max: 127 }).filter((code) => !KNOWN.has(code)),
      bytes(0, 252),
    )
    .map(([code, data]) => encoded({ kind: 'other', fc: code, data })),
  fc
    .tuple(
      fc.integer({ min: 0, max: 255 }).filter((mei) => mei !== 14),
      bytes(0, 251),
    )
    .map(([mei, rest]) => encoded({ kind: 'other', fc: 43, data: Buffer.concat([u8(mei), rest]) })),
);

const requestCase: fc.Arbitrary<Case> = fc.oneof(
  readCase,
  writeSingleCase,
  writeMultipleCase,
  maskWriteCase,
  readWriteCase,
  fifoCase,
  fileCase,
  diagnosticsCase,
  deviceIdCase,
  serialCase,
  otherCase,
);

const mbapIds = fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xff }));
const requestFrame = fc.tuple(requestCase, mbapIds).map(([c, [tid, unit]]) => ({ ...c, tid, unit, adu: wrap(c.pdu, tid, unit) }));

// ---------------------------------------------------------------------------------------------------------------
// Inputs that are not frames, or barely: arbitrary bytes, and random PDUs behind a well-formed MBAP header so the
// PDU decoders get exercised rather than the header check alone.

const FIRST_BYTES = [...KNOWN, 0, 0x80, 0x81, 0x83, 0x86, 0xab, 0xff, 65, 90, 100];
const framedNoise = fc
  .tuple(fc.oneof(fc.constantFrom(...FIRST_BYTES), fc.integer({ min: 0, max: 255 })), bytes(0, 252), mbapIds)
  .map(([first, rest, [tid, unit]]) => wrap(Buffer.concat([u8(first), rest]), tid, unit));
const noise = fc.oneof(bytes(0, 300), framedNoise);

const CODES = new Set(['truncated', 'bad-protocol', 'bad-length', 'bad-pdu', 'oversized']);

/** Either a refusal with a known code and a message, or a frame that is exactly the input and agrees with it. */
function wellFormed<T>(input: Buffer, r: ParseResult<T>): boolean {
  if (!r.ok) return CODES.has(r.error.code) && r.error.message.length > 0;
  const { frame } = r;
  return (
    frame.raw === input &&
    frame.mbap.protocolId === 0 &&
    frame.mbap.length === input.length - 6 &&
    frame.mbap.length >= 2 &&
    input.length <= MAX_ADU &&
    frame.pdu.length === frame.mbap.length - 1 &&
    frame.pdu.buffer === input.buffer &&
    frame.pdu.byteOffset === input.byteOffset + 7
  );
}

test('parseRequest and parseResponse never throw, and refuse or return the input itself', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(noise, fc.option(requestCase, { nil: undefined }), (input, asked) => {
        return wellFormed(input, parseRequest(input)) && wellFormed(input, parseResponse(input)) && wellFormed(input, parseResponse(input, asked?.body));
      }),
      params,
    ),
  );
});

test('every valid request parses back to the fields it was encoded from', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(requestFrame, ({ adu, body, tid, unit }) => {
        const r = parseRequest(adu);
        return r.ok && isDeepStrictEqual(r.frame.body, body) && r.frame.mbap.transactionId === tid && r.frame.mbap.unitId === unit && r.frame.raw === adu;
      }),
      params,
    ),
  );
});

// Field-level noise: a known function code, then 16- and 8-bit fields biased to the spec's boundaries (laid out as
// that function code's request, or at random), then data whose length is random or the last 8-bit field (a byte
// count) give or take one.
const edge16 = fc.oneof(
  fc.constantFrom(0, 1, 2, 7, 8, 9, 121, 122, 123, 124, 125, 126, 1968, 1969, 2000, 2001, 0xff00, 0xfffe, 0xffff),
  fc.integer({ min: 0, max: 0xffff }),
);
const edge8 = fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 6, 7, 8, 9, 13, 14, 0xf5, 0xf6, 0xf7, 0xff), fc.integer({ min: 0, max: 255 }));
const SHAPES: Record<number, number[]> = {
  15: [16, 16, 8],
  16: [16, 16, 8],
  20: [8, 8, 16, 16, 16],
  21: [8, 8, 16, 16, 16],
  22: [16, 16, 16],
  23: [16, 16, 16, 16, 8],
  43: [8, 8, 8],
};
const field = (bits: number) => (bits === 16 ? edge16.map(u16) : edge8.map(u8));
const fieldNoise = fc
  .constantFrom(...KNOWN)
  .chain((code) => {
    const shape = SHAPES[code] ?? [16, 16];
    return fc.tuple(
      fc.constant(code),
      fc.oneof(fc.tuple(...shape.map(field)), fc.array(fc.oneof(field(16), field(8)), { maxLength: 6 })),
      fc.oneof(fc.constant(undefined), fc.integer({ min: 0, max: 60 })),
      fc.integer({ min: -1, max: 1 }),
      bytes(260, 260),
    );
  })
  .map(([code, fields, tail, delta, filler]) => {
    const last = fields.at(-1);
    const count = tail ?? (last?.length === 1 ? (last[0] ?? 0) + delta : 0);
    const head = Buffer.concat([u8(code), ...fields]);
    return Buffer.concat([head, filler.subarray(0, Math.max(0, Math.min(count, 253 - head.length)))]);
  });

/** Valid requests with one field overwritten by a boundary value: a quantity that no longer fits its byte count. */
const tweaked = fc.tuple(requestCase, fc.nat(), fc.oneof(edge16.map(u16), edge8.map(u8))).map(([c, at, value]) => {
  const pdu = Buffer.from(c.pdu);
  if (pdu.length > 1) value.copy(pdu, 1 + (at % (pdu.length - 1)));
  return pdu;
});

/** The bounds §6 sets, restated independently of the parser. */
function withinSpec(r: Request): boolean {
  const fits = (address: number, quantity: number, max: number) => quantity >= 1 && quantity <= max && address + quantity <= 0x10000;
  switch (r.kind) {
    case 'read':
      return fits(r.address, r.quantity, r.fc <= 2 ? 2000 : 125);
    case 'write-single':
      return r.fc === 6 || r.value === 0 || r.value === 0xff00;
    case 'write-multiple':
      return fits(r.address, r.quantity, r.fc === 15 ? 1968 : 123) && r.values.length === (r.fc === 15 ? Math.ceil(r.quantity / 8) : 2 * r.quantity);
    case 'read-write':
      return fits(r.read.address, r.read.quantity, 125) && fits(r.write.address, r.write.quantity, 121) && r.write.values.length === 2 * r.write.quantity;
    case 'device-id':
      return r.readCode >= 1 && r.readCode <= 4;
    case 'file':
      return r.subRequests >= 1 && r.subRequests <= 35;
    default:
      return true;
  }
}

test('every request the parser accepts is canonical and within the spec bounds', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.oneof(fieldNoise, tweaked), mbapIds, (pdu, [tid, unit]) => {
        const r = parseRequest(wrap(pdu, tid, unit));
        if (!r.ok) return r.error.code === 'bad-pdu';
        const again = encodeRequest(r.frame.body);
        return withinSpec(r.frame.body) && (again === undefined || again.equals(pdu));
      }),
      params,
    ),
  );
});

/** The normal response a conforming server gives, for the kinds whose answer follows from the request alone. */
function answer(c: Case, payload: Buffer): { pdu: Buffer; body: Response } | undefined {
  const { body, pdu } = c;
  switch (body.kind) {
    case 'read': {
      const data = payload.subarray(0, body.fc <= 2 ? Math.ceil(body.quantity / 8) : 2 * body.quantity);
      const decoded: Response =
        body.fc <= 2 ? { kind: 'read-bits', fc: body.fc as 1 | 2, bytes: data } : { kind: 'read-registers', fc: body.fc as 3 | 4, registers: data };
      return { pdu: Buffer.concat([u8(body.fc), u8(data.length), data]), body: decoded };
    }
    case 'read-write': {
      const data = payload.subarray(0, 2 * body.read.quantity);
      return { pdu: Buffer.concat([u8(23), u8(data.length), data]), body: { kind: 'read-registers', fc: 23, registers: data } };
    }
    case 'write-single':
    case 'mask-write':
    case 'diagnostics':
      return { pdu, body: { kind: 'echo', fc: body.fc as 5 | 6 | 8 | 22, data: pdu.subarray(1) } };
    case 'write-multiple': {
      const echo = pdu.subarray(0, 5);
      return { pdu: echo, body: { kind: 'echo', fc: body.fc as 15 | 16, data: echo.subarray(1) } };
    }
    default:
      return body.fc === 21 ? { pdu, body: { kind: 'other', fc: 21, data: pdu.subarray(1) } } : undefined;
  }
}

test('the response a conforming server gives, or any exception, parses against its request', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(requestFrame, bytes(250, 250), fc.integer({ min: 1, max: 255 }), fc.boolean(), (c, payload, code, fail) => {
        const normal = answer(c, payload);
        const expected: { pdu: Buffer; body: Response } =
          fail || !normal ? { pdu: Buffer.from([c.body.fc | 0x80, code]), body: { kind: 'exception', fc: c.body.fc, exceptionCode: code } } : normal;
        const adu = wrap(expected.pdu, c.tid, c.unit);
        const r = parseResponse(adu, c.body);
        return r.ok && isDeepStrictEqual(r.frame.body, expected.body) && r.frame.mbap.transactionId === c.tid;
      }),
      params,
    ),
  );
});

test('mutated frames are refused, or still consistent where the mutation cannot matter', (t) => {
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('extend' as const), extra: bytes(1, 40) }),
    fc.record({ kind: fc.constant('flip-mbap' as const), at: fc.integer({ min: 0, max: 6 }), mask: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ kind: fc.constant('flip-pdu' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  );
  t.notThrows(() =>
    fc.assert(
      fc.property(requestFrame, mutation, ({ adu, body }, m) => {
        switch (m.kind) {
          case 'truncate': {
            const r = parseRequest(adu.subarray(0, m.at % adu.length));
            return !r.ok && r.error.code === 'truncated';
          }
          case 'extend': {
            const longer = Buffer.concat([adu, m.extra]);
            const r = parseRequest(longer);
            return !r.ok && r.error.code === (longer.length > MAX_ADU ? 'oversized' : 'bad-length');
          }
          case 'flip-mbap': {
            const copy = Buffer.from(adu);
            copy[m.at] = (copy[m.at] ?? 0) ^ m.mask;
            const r = parseRequest(copy);
            // Transaction and unit ids are the client's to choose; protocol id and length are not.
            if (m.at === 2 || m.at === 3) return !r.ok && r.error.code === 'bad-protocol';
            if (m.at === 4 || m.at === 5) return !r.ok;
            return r.ok && isDeepStrictEqual(r.frame.body, body) && r.frame.mbap.length === copy.length - 6;
          }
          case 'flip-pdu': {
            const copy = Buffer.from(adu);
            const at = 7 + (m.at % (adu.length - 7));
            copy[at] = (copy[at] ?? 0) ^ m.mask;
            const r = parseRequest(copy);
            return wellFormed(copy, r) && (!r.ok || r.frame.mbap.length === copy.length - 6);
          }
        }
      }),
      params,
    ),
  );
});

/** Cuts a stream at the given points into separate Buffers, so no chunk shares memory with the next. */
function chunk(stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const to of [...points, stream.length]) {
    chunks.push(Buffer.from(stream.subarray(from, to)));
    from = to;
  }
  return chunks;
}

test('AduFramer yields exactly the frames of any chunking of a stream, in order', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(requestFrame, { minLength: 1, maxLength: 20 }), fc.array(fc.nat(), { maxLength: 40 }), (frames, cuts) => {
        const framer = new AduFramer();
        const out: Buffer[] = [];
        for (const piece of chunk(Buffer.concat(frames.map((f) => f.adu)), cuts)) {
          const { frames: got, error } = framer.push(piece);
          if (error) return false;
          out.push(...got);
        }
        return framer.buffered === 0 && out.length === frames.length && out.every((f, i) => f.equals(frames[i]?.adu ?? Buffer.alloc(0)));
      }),
      params,
    ),
  );
});

test('AduFramer never holds MAX_ADU bytes, and every frame it yields is well framed', (t) => {
  const badHeader = fc
    .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), bytes(0, 300))
    .map(([protocol, length, rest]) => Buffer.concat([u16(1), u16(protocol), u16(length), rest]));
  const piece = fc.oneof(
    { weight: 4, arbitrary: requestFrame.map((f) => f.adu) },
    { weight: 1, arbitrary: framedNoise },
    { weight: 1, arbitrary: badHeader },
    { weight: 1, arbitrary: bytes(0, 600) },
  );
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(piece, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 40 }), (pieces, cuts) => {
        const framer = new AduFramer();
        let fed = 0;
        let yielded = 0;
        let stopped = false;
        for (const part of chunk(Buffer.concat(pieces), cuts)) {
          const { frames, error } = framer.push(part);
          fed += part.length;
          if (stopped && (frames.length > 0 || !error)) return false;
          stopped ||= error !== undefined;
          for (const f of frames) {
            yielded += f.length;
            const r = parseRequest(f);
            if (f.length > MAX_ADU || (!r.ok && r.error.code !== 'bad-pdu')) return false;
          }
          if (framer.buffered >= MAX_ADU || yielded + framer.buffered > fed) return false;
        }
        return true;
      }),
      params,
    ),
  );
});
