import net from 'node:net';
import test, { type ExecutionContext } from 'ava';
import jsmodbus from 'jsmodbus';
import type { PluginAuditEvent, ProxyRoute } from '../../plugins/api/index.js';
import { AduFramer, type Request } from '../../plugins/modbus/frame.js';
import { ModbusProxy } from '../../plugins/modbus/proxy.js';
import { ModbusSimServer } from '../../plugins/modbus/server.js';
import { freePort } from '../helpers/net.js';

// A third-party client (jsmodbus) talks through Ward's proxy to the simulated PLC, all on loopback.

const quiet = { error() {}, warn() {}, info() {}, debug() {} };

interface Stack {
  plc: ModbusSimServer;
  proxy: ModbusProxy;
  port: number;
  events: PluginAuditEvent[];
  seen: { unit: number; request: Request }[];
  route: ProxyRoute;
}

async function stack(
  t: ExecutionContext,
  ops: string[],
  options: { mode?: 'observe' | 'enforce'; sources?: string[]; plcDown?: boolean; now?: () => number } = {},
): Promise<Stack> {
  const plc = new ModbusSimServer({ size: 1000 });
  const seen: Stack['seen'] = [];
  plc.onRequest = (unit, request) => seen.push({ unit, request });
  const target = options.plcDown ? { host: '127.0.0.1', port: await freePort() } : await plc.listen(0);
  const events: PluginAuditEvent[] = [];
  const proxy = new ModbusProxy({
    log: quiet,
    audit: { record: (e) => events.push(e) },
    now: options.now ?? Date.now,
    host: '127.0.0.1',
    responseTimeoutMs: 2_000,
    auditWindowMs: 3_600_000,
  });
  const port = await freePort();
  const route: ProxyRoute = {
    listenPort: port,
    target: { address: '127.0.0.1', port: target.port },
    zone: 'it',
    grants: [{ flow: 'vendor-laptop', sources: options.sources ?? ['127.0.0.1/32'], ops, mode: options.mode ?? 'enforce' }],
  };
  await proxy.setRoutes([route]);
  t.teardown(async () => {
    await proxy.close();
    await plc.close();
  });
  return { plc, proxy, port, events, seen, route };
}

async function client(t: ExecutionContext, port: number): Promise<{ modbus: InstanceType<typeof jsmodbus.client.TCP>; socket: net.Socket }> {
  const socket = new net.Socket();
  const modbus = new jsmodbus.client.TCP(socket, 1, 3_000);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.connect(port, '127.0.0.1', () => resolve());
  });
  t.teardown(() => socket.destroy());
  return { modbus, socket };
}

/** jsmodbus rejects an exception response with { err: 'ModbusException', response }; returns the code. */
async function exceptionOf(p: Promise<unknown>): Promise<number | string> {
  try {
    await p;
    return 'no exception';
  } catch (e) {
    const body = (e as { response?: { body?: { code?: number } } }).response?.body;
    return body?.code ?? `error: ${(e as { message?: string; err?: string }).message ?? (e as { err?: string }).err}`;
  }
}

const u16 = (n: number) => [n >> 8, n & 0xff];
const adu = (tid: number, unit: number, pdu: number[]) => Buffer.from([...u16(tid), 0, 0, ...u16(pdu.length + 1), unit, ...pdu]);

/** Raw socket: sends bytes, collects what comes back until `count` ADUs arrived or the socket closed (bounded). */
async function raw(port: number, chunks: Buffer[], count: number, gapMs = 0): Promise<{ frames: Buffer[]; closed: boolean }> {
  const socket = net.connect(port, '127.0.0.1');
  const frames: Buffer[] = [];
  let pending = Buffer.alloc(0);
  let closed = false;
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 4_000);
    socket.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 6 && pending.length >= 6 + pending.readUInt16BE(4)) {
        const size = 6 + pending.readUInt16BE(4);
        frames.push(pending.subarray(0, size));
        pending = pending.subarray(size);
      }
      if (frames.length >= count) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.on('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve();
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  for (const c of chunks) {
    socket.write(c);
    if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
  }
  await done;
  socket.destroy();
  return { frames, closed };
}

test('allowed reads return the PLC values; writes to protected registers get exception 2, never reach the PLC, and are audited', async (t) => {
  const s = await stack(t, ['read-only', 'write holding 100-119']);
  s.plc.holding.set([11, 22, 33], 0);
  s.plc.holding[500] = 4242;
  const { modbus } = await client(t, s.port);

  const read = await modbus.readHoldingRegisters(0, 3);
  t.deepEqual(read.response.body.valuesAsArray, [11, 22, 33]);

  t.is(await exceptionOf(modbus.writeSingleRegister(500, 1)), 2);
  t.is(await exceptionOf(modbus.writeMultipleRegisters(90, [1, 2, 3])), 2);
  t.is(await exceptionOf(modbus.writeSingleCoil(3, true)), 1, 'coils were not granted: illegal function');
  t.is(s.plc.holding[500], 4242, 'the protected register is unchanged');
  t.is(s.plc.coils[3], 0);
  t.false(
    s.seen.some((r) => r.request.kind !== 'read'),
    'no write reached the PLC',
  );

  await modbus.writeMultipleRegisters(100, [7, 8]);
  t.deepEqual([s.plc.holding[100], s.plc.holding[101]], [7, 8], 'an allowed write lands');

  const denied = s.events.filter((e) => e.action === 'modbus.request-denied');
  t.is(denied.length, 3);
  t.like(denied[0], {
    category: 'access-control',
    actor: '127.0.0.1',
    outcome: 'refused',
    code: 'WARD_MODBUS_DENIED',
    target: s.route.target.address.concat(':', String(s.route.target.port)),
    details: {
      client: '127.0.0.1',
      flow: 'vendor-laptop',
      mode: 'enforce',
      unit: 1,
      fc: 6,
      function: 'write-single-register',
      table: 'holding-registers',
      address: 500,
      quantity: 1,
      values: [1],
      exception: 2,
      count: 1,
    },
  });
  t.regex(String(denied[0]?.details?.reason), /outside the allowed 100-119/);
  const writes = s.events.filter((e) => e.action === 'modbus.write');
  t.is(writes.length, 1);
  t.like(writes[0], { outcome: 'success', details: { fc: 16, address: 100, quantity: 2, values: [7, 8] } });
});

test('observe mode forwards what enforce would deny, and reports it as would-deny', async (t) => {
  const s = await stack(t, ['read-only'], { mode: 'observe' });
  const { modbus } = await client(t, s.port);
  await modbus.writeSingleRegister(5, 99);
  t.is(s.plc.holding[5], 99, 'the write reached the PLC');
  const would = s.events.find((e) => e.action === 'modbus.request-would-deny');
  t.like(would, { outcome: 'success', details: { mode: 'observe', fc: 6, address: 5, values: [99] } });
  t.false(s.events.some((e) => e.action === 'modbus.request-denied'));
  t.true(
    s.events.some((e) => e.action === 'modbus.write'),
    'the forwarded write is audited like any write',
  );
});

test('pipelined requests are answered in order, under the client transaction ids, even when some are denied locally', async (t) => {
  const s = await stack(t, ['read holding 0-9']);
  s.plc.holding.set([1, 2, 3], 0);
  const chunk = Buffer.concat([
    adu(7, 1, [3, 0, 0, 0, 1]),
    adu(7, 1, [6, 0, 50, 0, 9]), // same id again, denied
    adu(9, 1, [3, 0, 2, 0, 1]),
    adu(0xffff, 1, [4, 0, 0, 0, 1]), // input registers: not granted
  ]);
  const { frames, closed } = await raw(s.port, [chunk], 4);
  t.false(closed);
  t.deepEqual(
    frames.map((f) => f.toString('hex')),
    [
      adu(7, 1, [3, 2, 0, 1]).toString('hex'),
      adu(7, 1, [0x86, 1]).toString('hex'),
      adu(9, 1, [3, 2, 0, 3]).toString('hex'),
      adu(0xffff, 1, [0x84, 1]).toString('hex'),
    ],
  );
});

test('a frame split byte by byte is reassembled and answered', async (t) => {
  const s = await stack(t, ['read-only']);
  s.plc.input[3] = 0xbeef;
  const frame = adu(0x1234, 1, [4, 0, 3, 0, 1]);
  const { frames } = await raw(
    s.port,
    [...frame].map((b) => Buffer.from([b])),
    1,
    5,
  );
  t.is(frames[0]?.toString('hex'), adu(0x1234, 1, [4, 2, 0xbe, 0xef]).toString('hex'));
});

test('a malformed frame closes that connection with an audit event, nothing reaches the PLC, and other clients are served', async (t) => {
  const s = await stack(t, ['read-only']);
  s.plc.holding[0] = 5;
  const { modbus } = await client(t, s.port);
  const before = s.plc.requests;
  const badProtocol = Buffer.from([0, 1, 0, 9, 0, 6, 1, 3, 0, 0, 0, 1]);
  const badPdu = adu(2, 1, [3, 0, 0, 0, 0]); // quantity 0
  const r1 = await raw(s.port, [badProtocol], 1);
  const r2 = await raw(s.port, [badPdu], 1);
  t.true(r1.closed && r1.frames.length === 0);
  t.true(r2.closed && r2.frames.length === 0);
  t.is(s.plc.requests, before, 'nothing was forwarded');
  t.is(s.plc.invalidFrames, 0);
  const malformed = s.events.filter((e) => e.action === 'modbus.malformed-frame');
  t.deepEqual(
    malformed.map((e) => e.details?.error),
    ['bad-protocol', 'bad-pdu'],
  );
  t.like(malformed[0], { category: 'request-error', outcome: 'refused', code: 'WARD_MODBUS_MALFORMED' });
  const read = await modbus.readHoldingRegisters(0, 1);
  t.deepEqual(read.response.body.valuesAsArray, [5], 'the well-behaved client is still served');
});

test('a client no flow allows is disconnected before anything is read', async (t) => {
  const s = await stack(t, ['read-only'], { sources: ['198.18.0.10/32'] });
  const r = await raw(s.port, [adu(1, 1, [3, 0, 0, 0, 1])], 1);
  t.true(r.closed);
  t.is(r.frames.length, 0);
  t.is(s.plc.requests, 0);
  t.like(
    s.events.find((e) => e.action === 'modbus.connection-refused'),
    { outcome: 'refused', actor: '127.0.0.1' },
  );
});

test('unit limits answer exception 10, the rate limit exception 6', async (t) => {
  let now = 1_000_000;
  const s = await stack(t, ['read-only', 'unit 1', 'rate 2/s'], { now: () => now });
  const { frames } = await raw(
    s.port,
    [Buffer.concat([adu(1, 2, [3, 0, 0, 0, 1]), adu(2, 1, [3, 0, 0, 0, 1]), adu(3, 1, [3, 0, 0, 0, 1]), adu(4, 1, [3, 0, 0, 0, 1])])],
    4,
  );
  t.deepEqual(
    frames.map((f) => `${f.readUInt16BE(0)}:${(f[7] as number).toString(16)}:${f[8]}`),
    ['1:83:10', '2:3:2', '3:3:2', '4:83:6'],
    'unit 2 refused; two reads within the burst; the third is busy',
  );
  now += 1_000;
  const later = await raw(s.port, [adu(5, 1, [3, 0, 0, 0, 1])], 1);
  t.is(later.frames[0]?.[7], 3, 'tokens come back with time');
});

test('a PLC that is down: the client gets exception 11 and the gateway reports it', async (t) => {
  const s = await stack(t, ['read-only'], { plcDown: true });
  const { frames } = await raw(s.port, [adu(1, 1, [3, 0, 0, 0, 1])], 1);
  t.is(frames[0]?.toString('hex'), adu(1, 1, [0x83, 11]).toString('hex'));
  t.like(
    s.events.find((e) => e.action === 'modbus.plc-unreachable'),
    { outcome: 'failure', code: 'WARD_MODBUS_UPSTREAM' },
  );
});

test('repeated identical denials are one event, then one event with the count at the end of the window', async (t) => {
  const s = await stack(t, ['read-only']);
  const { modbus } = await client(t, s.port);
  for (let i = 0; i < 30; i++) t.is(await exceptionOf(modbus.writeSingleRegister(7, i)), 1);
  t.is(s.events.filter((e) => e.action === 'modbus.request-denied').length, 1, 'the first denial goes out at once');
  s.proxy.events.flush();
  const denied = s.events.filter((e) => e.action === 'modbus.request-denied');
  t.is(denied.length, 2);
  t.like(denied[1], { details: { count: 29, repeated: true, values: [29] } });
});

test('a route removed by a new policy closes its listener and its connections', async (t) => {
  const s = await stack(t, ['read-only']);
  const { socket } = await client(t, s.port);
  const closed = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 3_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  await s.proxy.setRoutes([]);
  t.true(await closed);
  t.deepEqual(s.proxy.ports, []);
  const refused = await new Promise<string>((resolve) => {
    const c = net.connect(s.port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve('connected');
    });
    c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  t.is(refused, 'ECONNREFUSED');
});

test('a listen port already taken fails setRoutes with a message naming the port, and keeps nothing half-open', async (t) => {
  const s = await stack(t, ['read-only']);
  const other = new ModbusProxy({ log: quiet, audit: { record() {} }, now: Date.now, host: '127.0.0.1' });
  t.teardown(() => other.close());
  const err = await t.throwsAsync(other.setRoutes([s.route]));
  t.regex(err?.message ?? '', new RegExp(`cannot listen on 127\\.0\\.0\\.1:${s.port} .*EADDRINUSE`));
  t.deepEqual(other.ports, []);
});

// Found in review: each of these let a client hold resources, hide a write, or stall a policy change.

test('a malformed frame from a client that never closes its side: the connection is destroyed, and removing the route does not wait on it', async (t) => {
  const s = await stack(t, ['read-only']);
  const socket = net.connect(s.port, '127.0.0.1');
  socket.on('error', () => undefined);
  t.teardown(() => socket.destroy());
  await new Promise<void>((r) => socket.once('connect', () => r()));
  const closed = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 5_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  socket.write(adu(1, 1, [0])); // function code 0: not a request
  t.true(await closed, 'the proxy closed the connection although the client never sent FIN');
  const removed = await Promise.race([s.proxy.setRoutes([]).then(() => 'done'), new Promise((r) => setTimeout(() => r('stuck'), 5_000))]);
  t.is(removed, 'done');
});

test('requests after a malformed frame in the same segment are not forwarded; the write before it is answered and audited as done', async (t) => {
  const s = await stack(t, ['read-only', 'write holding 100-119']);
  const { frames, closed } = await raw(
    s.port,
    [Buffer.concat([adu(1, 1, [6, 0, 100, 0x04, 0x57]), adu(2, 1, [3, 0, 0, 0, 0]), adu(3, 1, [6, 0, 101, 0x08, 0xae])])],
    3,
  );
  t.true(closed);
  t.is(frames.length, 1);
  t.is(frames[0]?.toString('hex'), adu(1, 1, [6, 0, 100, 0x04, 0x57]).toString('hex'), 'the write before the bad frame was answered');
  t.is(s.plc.holding[100], 1111);
  t.is(s.plc.holding[101], 0, 'the write after the bad frame never reached the PLC');
  t.like(
    s.events.find((e) => e.action === 'modbus.write'),
    { outcome: 'success', details: { address: 100, values: [1111] } },
  );
  t.false(
    s.events.some((e) => e.action === 'modbus.plc-unreachable'),
    'the proxy closing its own PLC connection is no PLC failure',
  );
});

test('one client flooding distinct denials cannot hide another client’s events, and writes are never folded across values or dropped', async (t) => {
  const s = await stack(t, ['read-only', 'write holding 100-119'], { sources: [] });
  // 127.0.0.2 is another client on loopback (Linux routes all of 127/8 to lo).
  const flood = Buffer.concat(Array.from({ length: 600 }, (_, i) => adu(i, 1, [6, ...u16(1000 + i), 0, 1])));
  const socket = net.connect({ port: s.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
  socket.on('error', () => undefined);
  t.teardown(() => socket.destroy());
  await new Promise<void>((r) => socket.once('connect', () => r()));
  let answered = 0;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 5_000);
    socket.on('data', (d: Buffer) => {
      answered += d.length / 9;
      if (answered >= 600) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.write(flood);
  });
  t.is(answered, 600);
  const { modbus } = await client(t, s.port);
  t.is(await exceptionOf(modbus.writeSingleRegister(5, 1)), 2);
  for (const v of [50, 9999, 50]) await modbus.writeSingleRegister(110, v);
  const mine = s.events.filter((e) => e.actor === '127.0.0.1');
  t.true(
    mine.some((e) => e.action === 'modbus.request-denied'),
    'the second client’s denial is recorded despite the flood',
  );
  t.deepEqual(
    mine.filter((e) => e.action === 'modbus.write').map((e) => e.details?.values),
    [[50], [9999]],
    'each distinct value is its own event (the repeat of 50 folds into the first)',
  );
  s.proxy.events.flush();
  t.like(
    s.events.find((e) => e.action === 'modbus.events-suppressed'),
    { actor: '127.0.0.2' },
  );
  t.like(s.events.filter((e) => e.action === 'modbus.write' && e.actor === '127.0.0.1').at(-1), { details: { values: [50], count: 1, repeated: true } });
});

test('one client cannot take every connection slot', async (t) => {
  const s = await stack(t, ['read-only']);
  const sockets = await Promise.all(
    Array.from(
      { length: 12 },
      () =>
        new Promise<{ socket: net.Socket; closed: Promise<boolean> }>((resolve) => {
          const socket = net.connect(s.port, '127.0.0.1');
          socket.on('error', () => undefined);
          t.teardown(() => socket.destroy());
          const closed = new Promise<boolean>((r) => {
            const timer = setTimeout(() => r(false), 2_000);
            socket.once('close', () => {
              clearTimeout(timer);
              r(true);
            });
          });
          socket.once('connect', () => resolve({ socket, closed }));
        }),
    ),
  );
  const outcomes = await Promise.all(sockets.map((x) => x.closed));
  t.is(outcomes.filter((c) => c).length, 4, 'the default allows 8 connections per client; the other 4 were closed');
  t.like(
    s.events.find((e) => e.action === 'modbus.connection-refused'),
    { details: { reason: 'more than 8 connections from one client' } },
  );
});

test('a write whose answer from the PLC is rejected (wrong unit) is still audited, as possibly carried out', async (t) => {
  const s = await stack(t, ['read-write']);
  // A PLC that answers every request as unit 255 (common on Modbus/TCP devices).
  const liar = net.createServer((c) => {
    const framer = new AduFramer();
    c.on('data', (d: Buffer) => {
      for (const f of framer.push(d).frames) {
        const answer = Buffer.from(f);
        answer[6] = 255;
        c.write(answer);
      }
    });
  });
  await new Promise<void>((r) => liar.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => liar.close());
  await s.proxy.setRoutes([{ ...s.route, target: { address: '127.0.0.1', port: (liar.address() as net.AddressInfo).port } }]);
  const { frames } = await raw(s.port, [adu(4, 1, [6, 0, 7, 0, 42])], 1);
  t.is(frames[0]?.toString('hex'), adu(4, 1, [0x86, 11]).toString('hex'));
  t.like(
    s.events.find((e) => e.action === 'modbus.write'),
    { outcome: 'failure', details: { address: 7, values: [42], error: 'the PLC answer was rejected; the write may have been carried out' } },
  );
});
