import net from 'node:net';
import test, { type ExecutionContext } from 'ava';
import jsmodbus from 'jsmodbus';
import { ModbusClient, ModbusError, ModbusErrorCodes } from '../../plugins/modbus/client.js';
import { collectorConfigSchema, ModbusCollector, type Sample } from '../../plugins/modbus/collector.js';
import { encodeReadRequest, encodeWriteMultipleRegistersRequest } from '../../plugins/modbus/encode.js';
import { AduFramer, parseResponse, type Request, type Response } from '../../plugins/modbus/frame.js';
import { type ModbusSimOptions, ModbusSimServer } from '../../plugins/modbus/server.js';
import { waitFor } from '../helpers/net.js';

const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------------------------------------------
// Helpers: every socket and server is closed in teardown, every wait is bounded.

async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function startSim(t: ExecutionContext, options?: ModbusSimOptions, port = 0): Promise<{ sim: ModbusSimServer; port: number }> {
  const sim = new ModbusSimServer(options);
  t.teardown(() => sim.close());
  const address = await sim.listen(port, HOST);
  return { sim, port: address.port };
}

async function connectJsmodbus(t: ExecutionContext, port: number, unitId = 1) {
  const socket = new net.Socket();
  socket.on('error', () => {});
  t.teardown(() => {
    socket.destroy();
  });
  // jsmodbus learns that it is online from the socket's connect event, so it must exist before the connect.
  const client = new jsmodbus.client.TCP(socket, unitId, 2000);
  await within(3000, 'jsmodbus connect', new Promise<void>((resolve) => socket.connect(port, HOST, () => resolve())));
  return { socket, client };
}

/** The exception code of a jsmodbus rejection, or undefined when the request succeeded. */
async function jsException(work: Promise<unknown>): Promise<number | undefined> {
  try {
    await within(3000, 'jsmodbus request', work);
    return undefined;
  } catch (err) {
    const e = err as { err?: string; response?: { body?: { code?: number } } };
    if (e.err !== 'ModbusException') throw err;
    return e.response?.body?.code;
  }
}

interface Raw {
  socket: net.Socket;
  /** Resolves with the next `count` answers, in arrival order. */
  next(count: number, timeoutMs?: number): Promise<Buffer[]>;
  closed: Promise<void>;
}

/** A raw TCP connection that collects whatever ADUs the server sends back. */
async function rawConnect(t: ExecutionContext, port: number): Promise<Raw> {
  const socket = net.connect(port, HOST);
  socket.on('error', () => {});
  t.teardown(() => {
    socket.destroy();
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await within(3000, 'raw connect', new Promise<void>((resolve) => socket.once('connect', () => resolve())));
  const framer = new AduFramer();
  const received: Buffer[] = [];
  let wake: (() => void) | undefined;
  socket.on('data', (chunk: Buffer) => {
    const out = framer.push(chunk);
    for (const f of out.frames) received.push(Buffer.from(f));
    wake?.();
  });
  return {
    socket,
    closed,
    async next(count, timeoutMs = 3000) {
      const deadline = Date.now() + timeoutMs;
      while (received.length < count) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`got ${received.length} of ${count} answers within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      return received.splice(0, count);
    },
  };
}

/** An ADU from a PDU given in hex. */
function adu(pduHex: string, tid = 1, unit = 1): Buffer {
  const pdu = Buffer.from(pduHex.replace(/\s+/g, ''), 'hex');
  const head = Buffer.alloc(7);
  head.writeUInt16BE(tid, 0);
  head.writeUInt16BE(pdu.length + 1, 4);
  head.writeUInt8(unit, 6);
  return Buffer.concat([head, pdu]);
}

function body(answer: Buffer | undefined, request?: Request): Response {
  if (!answer) throw new Error('no answer');
  const r = parseResponse(answer, request);
  if (!r.ok) throw new Error(r.error.message);
  return r.frame.body;
}

// ---------------------------------------------------------------------------------------------------------------
// ModbusSimServer with jsmodbus as the client

test('jsmodbus reads the values in all four tables', async (t) => {
  const { sim, port } = await startSim(t);
  sim.holding.set([0x1234, 0xbeef, 7], 100);
  sim.input.set([1, 2, 0xffff], 9997);
  sim.coils.set([1, 0, 1, 1, 0, 0, 0, 0, 1], 10);
  sim.discrete.set([0, 1, 1], 0);
  const { client } = await connectJsmodbus(t, port);
  const holding = await within(3000, 'FC3', client.readHoldingRegisters(100, 3));
  t.deepEqual(holding.response.body.valuesAsArray, [0x1234, 0xbeef, 7]);
  const input = await within(3000, 'FC4', client.readInputRegisters(9997, 3));
  t.deepEqual(input.response.body.valuesAsArray, [1, 2, 0xffff], 'the last entries of the table');
  const coils = await within(3000, 'FC1', client.readCoils(10, 9));
  t.deepEqual(coils.response.body.valuesAsArray.slice(0, 9), [1, 0, 1, 1, 0, 0, 0, 0, 1]);
  const discrete = await within(3000, 'FC2', client.readDiscreteInputs(0, 3));
  t.deepEqual(discrete.response.body.valuesAsArray.slice(0, 3), [0, 1, 1]);
  t.is(sim.requests, 4);
  t.is(sim.invalidFrames, 0);
});

test('jsmodbus writes change the tables', async (t) => {
  const { sim, port } = await startSim(t);
  const { client } = await connectJsmodbus(t, port);
  await within(3000, 'FC6', client.writeSingleRegister(5, 0xcafe));
  await within(3000, 'FC16', client.writeMultipleRegisters(20, [1, 2, 0xffff]));
  await within(3000, 'FC5 on', client.writeSingleCoil(3, true));
  await within(3000, 'FC15', client.writeMultipleCoils(30, [true, false, true, true, false, false, false, false, true]));
  t.is(sim.holding[5], 0xcafe);
  t.deepEqual([...sim.holding.subarray(20, 23)], [1, 2, 0xffff]);
  t.is(sim.coils[3], 1);
  t.deepEqual([...sim.coils.subarray(30, 39)], [1, 0, 1, 1, 0, 0, 0, 0, 1]);
  await within(3000, 'FC5 off', client.writeSingleCoil(3, false));
  t.is(sim.coils[3], 0);
});

test('a block outside the table is exception 2, for reads and writes', async (t) => {
  const { sim, port } = await startSim(t, { size: 100 });
  const { client } = await connectJsmodbus(t, port);
  t.is(await jsException(client.readHoldingRegisters(99, 2)), 2);
  t.is(await jsException(client.readCoils(100, 1)), 2);
  t.is(await jsException(client.writeSingleRegister(100, 1)), 2);
  t.is(await jsException(client.writeMultipleRegisters(98, [1, 2, 3])), 2);
  t.is(sim.holding[98], 0, 'a refused write leaves the table alone');
  t.is(await jsException(client.readHoldingRegisters(98, 2)), undefined, 'the last two registers are readable');
});

test('jsmodbus reads the device identification', async (t) => {
  const { port } = await startSim(t, { identity: { vendor: 'Acme', product: 'PLC-9', version: '2.1' } });
  const { client } = await connectJsmodbus(t, port);
  const r = await within(3000, 'FC43', client.readDeviceIdentification(1, 0));
  const objects = r.response.body.objects.map((o: { id: number; value: Buffer }) => [o.id, o.value.toString()]);
  t.deepEqual(objects, [
    [0, 'Acme'],
    [1, 'PLC-9'],
    [2, '2.1'],
  ]);
});

test('FC43/14 individual access, stream restart, and exception 2 for an unknown object', async (t) => {
  const { port } = await startSim(t);
  const raw = await rawConnect(t, port);
  const one = { kind: 'device-id', fc: 43, meiType: 14, readCode: 4, objectId: 1 } as const;
  raw.socket.write(Buffer.concat([adu('2B 0E 04 01', 1), adu('2B 0E 01 07', 2), adu('2B 0E 04 07', 3)]));
  const [individual, stream, unknown] = await raw.next(3);
  const ind = body(individual, one);
  t.is(ind.kind === 'other' ? ind.data.subarray(6).toString('latin1') : '', '\x01\x0cward-sim-plc');
  const st = body(stream, { ...one, readCode: 1, objectId: 7 });
  t.is(st.kind === 'other' ? st.data[5] : -1, 3, 'an unknown start object restarts the stream at object 0');
  t.like(body(unknown, { ...one, objectId: 7 }), { kind: 'exception', fc: 43, exceptionCode: 2 });
});

test('unsupported functions are exception 1', async (t) => {
  const { sim, port } = await startSim(t);
  const raw = await rawConnect(t, port);
  // FC7 (serial line), FC24 (FIFO), FC8 sub-function 1 (restart), FC43/13 (CANopen), FC65 (user-defined)
  raw.socket.write(Buffer.concat([adu('07', 1), adu('18 0000', 2), adu('08 0001 0000', 3), adu('2B 0D 00 01', 4), adu('41 0102', 5)]));
  const answers = await raw.next(5);
  t.deepEqual(
    answers.map((a) => [a.readUInt16BE(0), a.readUInt8(7), a.readUInt8(a.length - 1)]),
    [
      [1, 0x87, 1],
      [2, 0x98, 1],
      [3, 0x88, 1],
      [4, 0xab, 1],
      [5, 0xc1, 1],
    ],
  );
  t.is(answers[3]?.readUInt8(8), 13, 'the FC43 exception carries the MEI type it answers');
  t.is(sim.requests, 5);
  t.is(sim.invalidFrames, 0);
});

test('FC22 mask write, FC23 read/write (write first), FC8 echo', async (t) => {
  const { sim, port } = await startSim(t);
  sim.holding[4] = 0x12;
  const raw = await rawConnect(t, port);
  // §6.16 example: 0x12 AND 0xF2 OR (0x25 AND NOT 0xF2) = 0x17
  raw.socket.write(Buffer.concat([adu('16 0004 00F2 0025', 1), adu('17 0004 0002 0005 0001 02 BEEF', 2), adu('08 0000 A537', 3)]));
  const [mask, readWrite, echo] = await raw.next(3);
  t.like(body(mask, { kind: 'mask-write', fc: 22, address: 4, andMask: 0xf2, orMask: 0x25 }), { kind: 'echo', fc: 22 });
  t.is(sim.holding[4], 0x17);
  const rw = body(readWrite, {
    kind: 'read-write',
    fc: 23,
    read: { address: 4, quantity: 2 },
    write: { address: 5, quantity: 1, values: Buffer.from('beef', 'hex') },
  });
  t.is(rw.kind === 'read-registers' ? rw.registers.toString('hex') : '', '0017beef', 'the read sees the write made by the same request');
  t.is(sim.holding[5], 0xbeef);
  const e = body(echo, { kind: 'diagnostics', fc: 8, subFunction: 0, data: Buffer.from('a537', 'hex') });
  t.is(e.kind === 'echo' ? e.data.toString('hex') : '', '0000a537');
});

test('a unit the PLC does not serve gets exception 0x0B; its units are served', async (t) => {
  const { sim, port } = await startSim(t, { unitIds: [1, 7] });
  sim.holding[0] = 42;
  const raw = await rawConnect(t, port);
  raw.socket.write(Buffer.concat([encodeReadRequest({ transactionId: 1, unitId: 2 }, 3, 0, 1), encodeReadRequest({ transactionId: 2, unitId: 7 }, 3, 0, 1)]));
  const [absent, served] = await raw.next(2);
  t.like(body(absent), { kind: 'exception', fc: 3, exceptionCode: 0x0b });
  t.is(absent?.readUInt8(6), 2, 'the exception carries the unit id asked for');
  const ok = body(served);
  t.is(ok.kind === 'read-registers' ? ok.registers.readUInt16BE(0) : -1, 42);
});

test('malformed PDUs: exception 3 for implemented functions, 1 for others, none for fc 0; all counted', async (t) => {
  const { sim, port } = await startSim(t);
  const raw = await rawConnect(t, port);
  // FC3 quantity 0, FC6 one byte short, FC7 with data, fc 0, then a good read
  raw.socket.write(Buffer.concat([adu('03 0000 0000', 1), adu('06 0000 00', 2), adu('07 00', 3), adu('00 0000', 4), adu('03 0000 0001', 5)]));
  const answers = await raw.next(4);
  t.deepEqual(
    answers.map((a) => [a.readUInt16BE(0), a.readUInt8(7), a.readUInt8(8)]),
    [
      [1, 0x83, 3],
      [2, 0x86, 3],
      [3, 0x87, 1],
      [5, 3, 2],
    ],
    'fc 0 has no exception form, so it goes unanswered and the connection carries on',
  );
  t.is(sim.invalidFrames, 4);
  t.is(sim.requests, 1);
});

test('pipelined requests are answered in order with their transaction ids', async (t) => {
  const { sim, port } = await startSim(t);
  for (let i = 0; i < 50; i++) sim.holding[i] = 1000 + i;
  const raw = await rawConnect(t, port);
  const tids = Array.from({ length: 50 }, (_, i) => (i * 7919 + 3) & 0xffff);
  const frames = tids.map((tid, i) => encodeReadRequest({ transactionId: tid, unitId: 1 }, 3, i, 1));
  const stream = Buffer.concat(frames);
  // Split across writes at odd places, so frames straddle TCP segments too.
  raw.socket.write(stream.subarray(0, 5));
  raw.socket.write(stream.subarray(5, 301));
  raw.socket.write(stream.subarray(301));
  const answers = await raw.next(50);
  t.deepEqual(
    answers.map((a) => a.readUInt16BE(0)),
    tids,
  );
  t.deepEqual(
    answers.map((a) => a.readUInt16BE(9)),
    tids.map((_, i) => 1000 + i),
  );
});

test('a framing error closes only that connection; another client keeps being served', async (t) => {
  const { sim, port } = await startSim(t);
  sim.holding[0] = 7;
  const { client } = await connectJsmodbus(t, port);
  const bad = await rawConnect(t, port);
  // A good request, then a header with protocol id 1: the first is answered, then the connection closes.
  const broken = adu('03 0000 0001', 9);
  broken.writeUInt16BE(1, 2);
  bad.socket.write(Buffer.concat([adu('03 0000 0001', 8), broken]));
  const [answer] = await bad.next(1);
  t.is(answer?.readUInt16BE(0), 8);
  await within(3000, 'the server closing the broken connection', bad.closed);
  t.is(sim.invalidFrames, 1);
  const r = await within(3000, 'FC3 on the other connection', client.readHoldingRegisters(0, 1));
  t.deepEqual(r.response.body.valuesAsArray, [7]);
});

test('onRequest sees every parsed request before the tables change', async (t) => {
  const { sim, port } = await startSim(t);
  const seen: [number, Request['kind'], number][] = [];
  sim.onRequest = (unitId, request) => seen.push([unitId, request.kind, sim.holding[3] ?? -1]);
  const { client } = await connectJsmodbus(t, port, 5);
  await within(3000, 'FC6', client.writeSingleRegister(3, 99));
  await within(3000, 'FC3', client.readHoldingRegisters(3, 1));
  t.deepEqual(seen, [
    [5, 'write-single', 0],
    [5, 'read', 99],
  ]);
  t.is(sim.requests, 2);
});

test('simulate() makes the cycle counter and temperature live, and close() stops it', async (t) => {
  const { sim } = await startSim(t);
  sim.simulate(10);
  t.is(sim.coils[0], 1);
  t.is(sim.discrete[0], 1);
  await waitFor('the cycle counter to advance', () => (sim.input[0] ?? 0) >= 3, 3000, 10);
  const temperature = sim.input[1] ?? 0;
  t.true(temperature >= 400 && temperature <= 500, `temperature ×10 ${temperature} within 450 ± 50`);
  await sim.close();
  const stopped = sim.input[0];
  await new Promise((r) => setTimeout(r, 50));
  t.is(sim.input[0], stopped);
});

test('respond() drives the server without sockets', (t) => {
  const sim = new ModbusSimServer({ size: 10 });
  sim.holding[2] = 0x0102;
  const answer = sim.respond(encodeReadRequest({ transactionId: 0xabcd, unitId: 3 }, 3, 2, 1));
  t.is(answer?.toString('hex'), 'abcd000000050303020102');
  t.is(sim.respond(encodeWriteMultipleRegistersRequest({ transactionId: 1, unitId: 1 }, 9, [1, 2]))?.readUInt8(8), 2, 'exception 2 past the table');
  t.is(sim.respond(Buffer.from('0001', 'hex')), undefined, 'a truncated ADU gets no answer');
  t.is(sim.invalidFrames, 1);
});

// ---------------------------------------------------------------------------------------------------------------
// ModbusClient

async function connectClient(t: ExecutionContext, port: number, timeoutMs = 2000): Promise<ModbusClient> {
  const client = await ModbusClient.connect(HOST, port, { timeoutMs });
  t.teardown(() => client.close());
  return client;
}

test('ModbusClient reads, writes and pipelines against the simulator', async (t) => {
  const { sim, port } = await startSim(t);
  sim.input.set([10, 20, 30], 5);
  sim.coils.set([1, 1, 0, 1], 0);
  sim.discrete[9] = 1;
  const client = await connectClient(t, port);
  await client.writeSingleRegister(1, 0, 0xffff);
  await client.writeMultipleRegisters(1, 1, [1, 2, 3]);
  t.deepEqual([...sim.holding.subarray(0, 4)], [0xffff, 1, 2, 3]);
  const [holding, input, coils, discrete] = await within(
    3000,
    'pipelined reads',
    Promise.all([client.readHoldingRegisters(1, 0, 4), client.readInputRegisters(1, 5, 3), client.readCoils(1, 0, 4), client.readDiscreteInputs(1, 8, 2)]),
  );
  t.deepEqual([...holding], [0xffff, 1, 2, 3]);
  t.deepEqual([...input], [10, 20, 30]);
  t.deepEqual(coils, [true, true, false, true]);
  t.deepEqual(discrete, [false, true]);
  const many = await within(3000, '100 pipelined reads', Promise.all(Array.from({ length: 100 }, (_, i) => client.readHoldingRegisters(1, i % 4, 1))));
  t.deepEqual(
    many.map((r) => r[0]),
    Array.from({ length: 100 }, (_, i) => [0xffff, 1, 2, 3][i % 4]),
  );
  t.is(client.pending, 0);
});

test('ModbusClient rejects an exception with its code, and keeps the connection', async (t) => {
  const { port } = await startSim(t, { size: 10, unitIds: [1] });
  const client = await connectClient(t, port);
  const outside = await t.throwsAsync(client.readHoldingRegisters(1, 9, 2), { instanceOf: ModbusError });
  t.is(outside?.code, ModbusErrorCodes.EXCEPTION);
  t.is(outside?.exceptionCode, 2);
  t.regex(outside?.message ?? '', /exception 2 \(Illegal Data Address\)/);
  t.false(outside?.retryable);
  const absent = await t.throwsAsync(client.readInputRegisters(9, 0, 1), { instanceOf: ModbusError });
  t.is(absent?.exceptionCode, 11);
  t.true(absent?.retryable, 'a gateway that lost its target may find it again');
  t.false(client.closed);
  t.deepEqual([...(await client.readHoldingRegisters(1, 0, 1))], [0]);
});

test('ModbusClient refuses bad arguments as a programming error, before sending', async (t) => {
  const { sim, port } = await startSim(t);
  const client = await connectClient(t, port);
  t.throws(() => client.readHoldingRegisters(1, 0, 126), { instanceOf: TypeError, message: /quantity 126/ });
  t.throws(() => client.readCoils(1, 0.5, 1), { instanceOf: TypeError });
  t.throws(() => client.writeSingleRegister(1, 0, 65536), { instanceOf: TypeError });
  t.throws(() => client.readInputRegisters(256, 0, 1), { instanceOf: TypeError });
  t.is(sim.requests, 0);
});

test('ModbusClient times out against a server that never answers', async (t) => {
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  });
  await new Promise<void>((resolve) => silent.listen(0, HOST, () => resolve()));
  const port = (silent.address() as net.AddressInfo).port;
  const client = await connectClient(t, port, 150);
  const err = await within(3000, 'the timeout', t.throwsAsync(client.readHoldingRegisters(1, 0, 1), { instanceOf: ModbusError }));
  t.is(err?.code, ModbusErrorCodes.TIMEOUT);
  t.regex(err?.message ?? '', /no response within 150 ms/);
  t.is(client.pending, 0);
  t.false(client.closed, 'a timeout alone keeps the connection');

  // The server going away rejects what is still pending (a long timeout, so the close is what ends it).
  const patient = await connectClient(t, port, 30_000);
  const pending = patient.readHoldingRegisters(1, 0, 1);
  pending.catch(() => {});
  await waitFor('the silent server to see both connections', () => sockets.size === 2, 3000, 10);
  for (const s of sockets) s.destroy();
  const closed = await within(3000, 'the close', t.throwsAsync(pending, { instanceOf: ModbusError }));
  t.is(closed?.code, ModbusErrorCodes.CLOSED);
  t.true(patient.closed);
  await t.throwsAsync(patient.readHoldingRegisters(1, 0, 1), { message: /not connected/ });
});

test('ModbusClient.connect: refused, and aborted', async (t) => {
  const { port } = await startSim(t);
  const free = await (async () => {
    const s = new ModbusSimServer();
    const a = await s.listen();
    await s.close();
    return a.port;
  })();
  const refused = await t.throwsAsync(ModbusClient.connect(HOST, free, { timeoutMs: 2000 }), { instanceOf: ModbusError });
  t.is(refused?.code, ModbusErrorCodes.CONNECT_FAILED);
  t.true(refused?.retryable);
  const aborted = await t.throwsAsync(ModbusClient.connect(HOST, port, { signal: AbortSignal.abort() }), { instanceOf: ModbusError });
  t.is(aborted?.code, ModbusErrorCodes.ABORTED);
  const controller = new AbortController();
  const client = await ModbusClient.connect(HOST, port, { signal: controller.signal });
  t.teardown(() => client.close());
  controller.abort();
  t.true(client.closed, 'aborting the signal closes a connected client');
});

// ---------------------------------------------------------------------------------------------------------------
// ModbusCollector against the simulator

function latest(samples: readonly Sample[], point: string, from = 0): Sample | undefined {
  for (let i = samples.length - 1; i >= from; i--) if (samples[i]?.point === point) return samples[i];
  return undefined;
}

test('ModbusCollector: good samples, bad while the PLC is gone, good again after it returns', async (t) => {
  const first = await startSim(t);
  const { port } = first;
  const fill = (sim: ModbusSimServer, speed: number) => {
    sim.holding[0] = speed;
    sim.holding.set([0x3fc0, 0x0000], 2); // float32 1.5, big word order
    sim.holding.set([0xfffe, 0xffff], 10); // int32 -2, little word order
    sim.input[5] = 0xfffe; // int16 -2
    sim.coils[0] = 1;
  };
  fill(first.sim, 1234);
  const config = collectorConfigSchema.parse({
    devices: [
      {
        name: 'press-1',
        host: HOST,
        port,
        pollMs: 100,
        // Generous, so a poll stalled by a loaded machine is not a failure of the healthy PLC (asserted below: failures 0).
        // Losing the PLC does not wait for it: close() destroys the connection and reconnecting is refused at once.
        timeoutMs: 5_000,
        points: [
          { name: 'speed', table: 'holding', address: 0, scale: 0.5, unit: 'rpm' },
          { name: 'level', table: 'holding', address: 2, type: 'float32' },
          { name: 'count', table: 'holding', address: 10, type: 'int32', wordOrder: 'little', offset: 100 },
          { name: 'delta', table: 'input', address: 5, type: 'int16' },
          { name: 'running', table: 'coil', address: 0 },
        ],
      },
    ],
  });
  const samples: Sample[] = [];
  const warnings: unknown[] = [];
  const collector = new ModbusCollector(config, {
    onSample: (s) => samples.push(s),
    log: { warn: (o) => warnings.push(o), info: () => {}, debug: () => {} },
    backoff: { initialMs: 100, maxMs: 400 },
  });
  t.teardown(() => collector.stop());
  collector.start();

  await waitFor(
    'a good sample of every point',
    () => ['speed', 'level', 'count', 'delta', 'running'].every((p) => latest(samples, p)?.quality === 'good'),
    10_000,
    20,
  );
  t.like(latest(samples, 'speed'), { device: 'press-1', value: 617, quality: 'good', unit: 'rpm' });
  t.like(latest(samples, 'level'), { value: 1.5 });
  t.like(latest(samples, 'count'), { value: 98 });
  t.like(latest(samples, 'delta'), { value: -2 });
  t.like(latest(samples, 'running'), { value: true });
  t.false('error' in (latest(samples, 'speed') ?? {}));
  t.like(collector.status()['press-1'], { connected: true, failures: 0, lastError: null });

  await first.sim.close();
  const down = samples.length;
  await waitFor(
    'bad samples for every point',
    () => ['speed', 'level', 'count', 'delta', 'running'].every((p) => latest(samples, p, down)?.quality === 'bad'),
    10_000,
    20,
  );
  const bad = latest(samples, 'speed', down);
  t.like(bad, { value: null, quality: 'bad', unit: 'rpm' });
  t.true(typeof bad?.error === 'string' && bad.error.length > 0);
  t.true((collector.status()['press-1']?.failures ?? 0) > 0);
  t.true(warnings.length > 0);

  const second = await startSim(t, undefined, port);
  fill(second.sim, 200);
  const up = samples.length;
  await waitFor('good samples from the new PLC', () => latest(samples, 'speed', up)?.value === 100, 10_000, 20);
  t.like(latest(samples, 'speed', up), { quality: 'good' });
  t.like(collector.status()['press-1'], { connected: true });
  t.is(typeof collector.status()['press-1']?.lastError, 'string', 'the last error is kept for diagnostics');

  await collector.stop();
  const after = samples.length;
  await new Promise((r) => setTimeout(r, 250));
  t.is(samples.length, after, 'no sample after stop()');
});

test('ModbusCollector: an exception spoils only its block, and a throwing onSample does not stop polling', async (t) => {
  const { sim, port } = await startSim(t, { size: 100 });
  sim.input[0] = 5;
  const config = collectorConfigSchema.parse({
    devices: [
      {
        name: 'plc',
        host: HOST,
        port,
        pollMs: 100,
        points: [
          { name: 'ok', table: 'input', address: 0 },
          { name: 'missing', table: 'holding', address: 99, type: 'uint32' },
        ],
      },
    ],
  });
  const samples: Sample[] = [];
  let calls = 0;
  const collector = new ModbusCollector(config, {
    onSample: (s) => {
      calls++;
      if (calls === 1) throw new Error('consumer bug');
      samples.push(s);
    },
  });
  t.teardown(() => collector.stop());
  collector.start();
  await waitFor('two polls', () => (collector.status().plc?.polls ?? 0) >= 2 && latest(samples, 'ok') && latest(samples, 'missing'), 10_000, 20);
  t.like(latest(samples, 'ok'), { quality: 'good', value: 5 });
  t.like(latest(samples, 'missing'), { quality: 'bad', value: null });
  t.regex(latest(samples, 'missing')?.error ?? '', /exception 2/);
  t.like(collector.status().plc, { connected: true });
  t.true((collector.status().plc?.failures ?? 0) >= 2);
});
