import net from 'node:net';
import test from 'ava';
import fc from 'fast-check';
import { AduFramer, type Request } from '../../plugins/modbus/frame.js';
import { ModbusProxy } from '../../plugins/modbus/proxy.js';
import { ModbusSimServer } from '../../plugins/modbus/server.js';
import { freePort, waitFor } from '../helpers/net.js';

/**
 * The proxy under hostile input: property-based streams (valid requests mixed with garbage, truncated frames,
 * wrong length or protocol fields, oversized frames, random TCP segmentation) through a real proxy to the
 * simulated PLC, plus a slow-loris crowd. Fixed seed and bounded runs, so a failure reproduces and CI stays fast.
 * Each run checks that the proxy (1) forwarded only frames the parser accepts and the policy allows, (2) answered
 * only with well-framed ADUs under transaction ids the client used, and (3) still serves a well-behaved client.
 */
const params = { seed: 0x0b05_f022, numRuns: 120, endOnFailure: true };
const ALLOWED_WRITES: readonly [number, number] = [100, 119];

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const adu = (tid: number, unit: number, pdu: readonly number[]) => Buffer.from([...u16(tid), 0, 0, ...u16(pdu.length + 1), unit, ...pdu]);
const quiet = { error() {}, warn() {}, info() {}, debug() {} };

/** Pieces a hostile stream is made of: each a well-formed request, or one of the ways a frame can be wrong. */
const piece: fc.Arbitrary<{ kind: string; bytes: Buffer }> = fc.oneof(
  fc
    .record({ tid: fc.integer({ min: 0, max: 0xffff }), address: fc.integer({ min: 0, max: 990 }), quantity: fc.integer({ min: 1, max: 10 }) })
    .map(({ tid, address, quantity }) => ({ kind: 'read', bytes: adu(tid, 1, [3, ...u16(address), ...u16(quantity)]) })),
  fc
    .record({ tid: fc.integer({ min: 0, max: 0xffff }), address: fc.integer({ min: 0, max: 999 }), value: fc.integer({ min: 0, max: 0xffff }) })
    .map(({ tid, address, value }) => ({ kind: 'write', bytes: adu(tid, 1, [6, ...u16(address), ...u16(value)]) })),
  fc
    .record({ tid: fc.integer({ min: 0, max: 0xffff }), fcode: fc.integer({ min: 1, max: 127 }), data: fc.uint8Array({ maxLength: 20 }) })
    .map(({ tid, fcode, data }) => ({ kind: 'any-fc', bytes: adu(tid, 1, [fcode, ...data]) })),
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((a) => ({ kind: 'garbage', bytes: Buffer.from(a) })),
  fc.record({ tid: fc.integer({ min: 0, max: 0xffff }), delta: fc.integer({ min: -6, max: 6 }).filter((d) => d !== 0) }).map(({ tid, delta }) => {
    const b = adu(tid, 1, [3, 0, 0, 0, 1]);
    b.writeUInt16BE(Math.max(0, b.readUInt16BE(4) + delta), 4);
    return { kind: 'wrong-length', bytes: b };
  }),
  fc.integer({ min: 1, max: 0xffff }).map((proto) => {
    const b = adu(1, 1, [3, 0, 0, 0, 1]);
    b.writeUInt16BE(proto, 2);
    return { kind: 'wrong-protocol', bytes: b };
  }),
  fc
    .integer({ min: 255, max: 0xffff })
    .map((len) => ({ kind: 'oversized', bytes: Buffer.concat([Buffer.from([0, 1, 0, 0, ...u16(len), 1]), Buffer.alloc(300, 3)]) })),
  fc.integer({ min: 1, max: 11 }).map((cut) => ({ kind: 'truncated', bytes: adu(2, 1, [3, 0, 0, 0, 1]).subarray(0, cut) })),
);

/** The stream, cut into TCP writes at random points. */
const stream = fc.record({ pieces: fc.array(piece, { minLength: 1, maxLength: 12 }), cuts: fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 20 }) });

function segment(data: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of cuts) {
    if (at >= data.length) break;
    out.push(data.subarray(at, at + c));
    at += c;
  }
  if (at < data.length) out.push(data.subarray(at));
  return out;
}

/**
 * Sends the segments, then collects answers. With `expected`, resolves as soon as that many answers arrived (or the
 * proxy closed, or a generous 10 s passed), so a stalled process cannot cut the wait short. Without it, the fuzz case:
 * collects until the proxy closes or goes quiet for a moment (bounded), as there is no telling how many answers come.
 */
async function exchange(port: number, segments: readonly Buffer[], expected?: number): Promise<{ answers: Buffer[]; framingError: boolean }> {
  const socket = net.connect(port, '127.0.0.1');
  const framer = new AduFramer();
  const answers: Buffer[] = [];
  let framingError = false;
  await new Promise<void>((resolve) => {
    let quiet: NodeJS.Timeout | undefined;
    const hardStop = setTimeout(finish, expected === undefined ? 3_000 : 10_000);
    function finish() {
      clearTimeout(quiet);
      clearTimeout(hardStop);
      socket.destroy();
      resolve();
    }
    const idle = () => {
      if (expected !== undefined) return;
      clearTimeout(quiet);
      quiet = setTimeout(finish, 150);
    };
    socket.on('data', (d: Buffer) => {
      const r = framer.push(d);
      answers.push(...r.frames.map((f) => Buffer.from(f)));
      if (r.error) framingError = true;
      if (expected !== undefined && answers.length >= expected) finish();
      else idle();
    });
    socket.on('close', finish);
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      for (const s of segments) socket.write(s);
      idle();
    });
  });
  return { answers, framingError };
}

test.serial('the proxy survives hostile streams: forwards only valid, allowed frames, answers only well-framed ADUs, and keeps serving', async (t) => {
  const plc = new ModbusSimServer({ size: 1000 });
  const reached: { unit: number; request: Request }[] = [];
  plc.onRequest = (unit, request) => reached.push({ unit, request });
  const target = await plc.listen(0);
  const proxy = new ModbusProxy({ log: quiet, audit: { record() {} }, now: Date.now, host: '127.0.0.1', responseTimeoutMs: 1_000, auditWindowMs: 60_000 });
  const port = await freePort();
  await proxy.setRoutes([
    {
      listenPort: port,
      target: { address: '127.0.0.1', port: target.port },
      zone: 'it',
      grants: [{ flow: 'fuzz', sources: [], ops: ['read holding', `write holding ${ALLOWED_WRITES[0]}-${ALLOWED_WRITES[1]}`], mode: 'enforce' }],
    },
  ]);
  t.teardown(async () => {
    await proxy.close();
    await plc.close();
  });

  let runs = 0;
  await fc.assert(
    fc.asyncProperty(stream, async ({ pieces, cuts }) => {
      runs += 1;
      const data = Buffer.concat(pieces.map((p) => p.bytes));
      const sentTids = new Set<number>();
      // Transaction ids the client could legitimately get answers for: those of frames that start where a frame boundary can be.
      for (const p of pieces) if (p.bytes.length >= 2) sentTids.add(p.bytes.readUInt16BE(0));
      const { answers, framingError } = await exchange(port, segment(data, cuts));
      if (framingError) return false;
      for (const a of answers) {
        if (a.readUInt16BE(2) !== 0) return false;
        if (!sentTids.has(a.readUInt16BE(0)) && !pieces.some((p) => p.kind === 'garbage' || p.kind === 'truncated')) return false;
      }
      return true;
    }),
    params,
  );

  t.is(plc.invalidFrames, 0, 'the PLC never received a frame its parser refuses');
  for (const { request } of reached) {
    if (request.kind === 'read' && request.fc === 3) continue;
    t.true(
      request.kind === 'write-single' && request.fc === 6 && request.address >= ALLOWED_WRITES[0] && request.address <= ALLOWED_WRITES[1],
      `a request outside the policy reached the PLC: ${JSON.stringify({ ...request, values: undefined })}`,
    );
  }
  t.true(reached.length > 0, 'some allowed requests were forwarded (the generator produces valid ones)');
  t.true(proxy.counters.malformed > 0 && proxy.counters.denied > 0, 'the runs exercised both the malformed and the denied paths');

  // Still serving: a well-behaved request after everything above.
  plc.holding[7] = 77;
  const { answers } = await exchange(port, [adu(0x4242, 1, [3, 0, 7, 0, 1])], 1);
  t.is(answers[0]?.toString('hex'), adu(0x4242, 1, [3, 2, 0, 77]).toString('hex'));
  t.is(runs, params.numRuns);
});

test.serial('slow-loris clients neither block others nor stay forever; a client that never reads its answers is not read either', async (t) => {
  const plc = new ModbusSimServer({ size: 1000 });
  const target = await plc.listen(0);
  const proxy = new ModbusProxy({
    log: quiet,
    audit: { record() {} },
    now: Date.now,
    host: '127.0.0.1',
    idleTimeoutMs: 1_000,
    maxConnections: 1_000,
    maxConnectionsPerClient: 1_000,
  });
  const port = await freePort();
  await proxy.setRoutes([
    {
      listenPort: port,
      target: { address: '127.0.0.1', port: target.port },
      zone: 'it',
      grants: [{ flow: 'f', sources: [], ops: ['read-only'], mode: 'enforce' }],
    },
  ]);
  t.teardown(async () => {
    await proxy.close();
    await plc.close();
  });

  // 100 clients that send three bytes of a header and stall.
  const lorises = await Promise.all(
    Array.from(
      { length: 100 },
      () =>
        new Promise<{ closed: Promise<void> }>((resolve) => {
          const s = net.connect(port, '127.0.0.1', () => {
            s.write(Buffer.from([0, 1, 0]));
            resolve({ closed: new Promise<void>((r) => s.once('close', () => r())) });
          });
          s.on('error', () => undefined);
          t.teardown(() => s.destroy());
        }),
    ),
  );
  plc.holding[1] = 11;
  const { answers } = await exchange(port, [adu(9, 1, [3, 0, 1, 0, 1])], 1);
  t.is(answers[0]?.toString('hex'), adu(9, 1, [3, 2, 0, 11]).toString('hex'), 'served while 100 clients stall');
  const allClosed = await Promise.race([
    Promise.all(lorises.map((l) => l.closed)).then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), 8_000)),
  ]);
  t.true(allClosed, 'the idle timeout closed every stalled client');

  // A client that pipelines thousands of reads and never reads an answer: the proxy stops reading it, so the number
  // of requests that reach the PLC stays bounded (answers waiting in the proxy are capped at 64 KiB).
  const before = plc.requests;
  const flood = Buffer.concat(Array.from({ length: 20_000 }, (_, i) => adu(i & 0xffff, 1, [3, 0, 0, 0, 125])));
  const greedy = net.connect(port, '127.0.0.1');
  greedy.on('error', () => undefined);
  t.teardown(() => greedy.destroy());
  await new Promise<void>((r) => greedy.once('connect', () => r()));
  greedy.pause();
  greedy.write(flood);
  // Wait (bounded) until forwarding has started, so a stalled process cannot read as "nothing forwarded"; then give
  // the proxy time to forward far more than its cap would allow if it kept reading.
  await waitFor('a request of the flood reaches the PLC', () => plc.requests > before, 10_000, 20);
  await new Promise((r) => setTimeout(r, 1_500));
  const forwarded = plc.requests - before;
  t.true(forwarded < 20_000, `the proxy forwarded ${forwarded} of 20000 requests to a client that reads nothing`);
  t.true(forwarded > 0);
});
