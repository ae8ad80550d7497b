import test from 'ava';
import { collectorConfigSchema, decodePoint, type PointConfig, planReads } from '../../plugins/modbus/collector.js';

type PointInput = { name: string; table: string; address: number } & Record<string, unknown>;

function config(points: PointInput[], device: Record<string, unknown> = {}) {
  return { devices: [{ name: 'plc-1', host: '127.0.0.1', points, ...device }] };
}

/** The messages of a refused config, so a test can check that they name the point. */
function refusals(input: unknown): string[] {
  const r = collectorConfigSchema.safeParse(input);
  if (r.success) throw new Error(`expected a refusal, got ${JSON.stringify(r.data)}`);
  return r.error.issues.map((i) => i.message);
}

/** A point with every default filled, the way the schema hands it to the collector. */
function point(p: PointInput): PointConfig {
  const parsed = collectorConfigSchema.parse(config([p])).devices[0]?.points[0];
  if (!parsed) throw new Error('no point parsed');
  return parsed;
}

// ---------------------------------------------------------------------------------------------------------------
// Schema

test('schema fills the defaults, with the type following the table', (t) => {
  const c = collectorConfigSchema.parse(
    config([
      { name: 'speed', table: 'holding', address: 0 },
      { name: 'running', table: 'coil', address: 3 },
    ]),
  );
  t.like(c.devices[0], { port: 502, unitId: 1, pollMs: 1000, timeoutMs: 2000 });
  t.deepEqual(c.devices[0]?.points, [
    { name: 'speed', table: 'holding', address: 0, type: 'uint16', wordOrder: 'big', scale: 1, offset: 0 },
    { name: 'running', table: 'coil', address: 3, type: 'bool', wordOrder: 'big', scale: 1, offset: 0 },
  ]);
});

test('schema refuses a type that does not fit the table, naming the point', (t) => {
  t.true(refusals(config([{ name: 'flag', table: 'holding', address: 0, type: 'bool' }])).some((m) => m.includes('"flag"') && m.includes('bool')));
  t.true(refusals(config([{ name: 'level', table: 'coil', address: 0, type: 'float32' }])).some((m) => m.includes('"level"') && m.includes('float32')));
  t.true(refusals(config([{ name: 'door', table: 'discrete', address: 0, type: 'uint16' }])).some((m) => m.includes('"door"')));
});

test('schema refuses duplicate point names in one device, naming the point', (t) => {
  const messages = refusals(
    config([
      { name: 'temp', table: 'input', address: 0 },
      { name: 'temp', table: 'input', address: 1 },
    ]),
  );
  t.true(messages.some((m) => m.includes('"temp"') && m.includes('plc-1')));
});

test('schema accepts the same point name in two devices but refuses duplicate device names', (t) => {
  const devices = [
    { name: 'a', host: 'h', points: [{ name: 'temp', table: 'input', address: 0 }] },
    { name: 'b', host: 'h', points: [{ name: 'temp', table: 'input', address: 0 }] },
  ];
  t.true(collectorConfigSchema.safeParse({ devices }).success);
  t.true(refusals({ devices: [devices[0], devices[0]] }).some((m) => m.includes('"a"')));
});

test('schema refuses a 32-bit point that runs past address 65535, naming the point', (t) => {
  t.true(refusals(config([{ name: 'total', table: 'holding', address: 65535, type: 'uint32' }])).some((m) => m.includes('"total"') && m.includes('65535')));
  t.true(collectorConfigSchema.safeParse(config([{ name: 'total', table: 'holding', address: 65534, type: 'uint32' }])).success);
  t.true(collectorConfigSchema.safeParse(config([{ name: 'last', table: 'holding', address: 65535 }])).success);
});

test('schema refuses out-of-range numbers and unknown fields', (t) => {
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: 65536 }])).success);
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: -1 }])).success);
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: 0 }], { pollMs: 99 })).success);
  t.true(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: 0 }], { pollMs: 100 })).success);
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: 0, colour: 'red' }])).success, 'unknown point field');
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'holding', address: 0 }], { tls: true })).success, 'unknown device field');
  t.false(collectorConfigSchema.safeParse(config([{ name: 'x', table: 'rom', address: 0 }])).success, 'unknown table');
  t.false(collectorConfigSchema.safeParse(config([])).success, 'a device without points');
});

// ---------------------------------------------------------------------------------------------------------------
// planReads

type P = Pick<PointConfig, 'table' | 'address' | 'type'> & { name: string };
const reg = (name: string, address: number, type: PointConfig['type'] = 'uint16', table: PointConfig['table'] = 'holding'): P => ({
  name,
  table,
  address,
  type,
});
const shape = (points: P[], limits?: Parameters<typeof planReads>[1]) =>
  planReads(points, limits).map((b) => ({
    table: b.table,
    address: b.address,
    quantity: b.quantity,
    points: b.points.map((p) => `${p.point.name}@${p.offset}`),
  }));

test('planReads: no points, no reads', (t) => {
  t.deepEqual(planReads([]), []);
});

test('planReads merges neighbours and sorts by address', (t) => {
  t.deepEqual(shape([reg('c', 2), reg('a', 0), reg('b', 1, 'float32')]), [{ table: 'holding', address: 0, quantity: 3, points: ['a@0', 'b@1', 'c@2'] }]);
});

test('planReads bridges a gap of 8 registers but not of 9', (t) => {
  t.deepEqual(shape([reg('a', 0), reg('b', 9)]), [{ table: 'holding', address: 0, quantity: 10, points: ['a@0', 'b@9'] }]);
  t.deepEqual(shape([reg('a', 0), reg('b', 10)]), [
    { table: 'holding', address: 0, quantity: 1, points: ['a@0'] },
    { table: 'holding', address: 10, quantity: 1, points: ['b@0'] },
  ]);
  t.is(shape([reg('a', 0), reg('b', 10)], { maxGap: 9 }).length, 1, 'the gap is configurable');
});

test('planReads counts the second register of a 32-bit point in gaps and sizes', (t) => {
  // a ends at 2, so b at 10 is a gap of 8
  t.deepEqual(shape([reg('a', 0, 'uint32'), reg('b', 10)]), [{ table: 'holding', address: 0, quantity: 11, points: ['a@0', 'b@10'] }]);
});

test('planReads keeps blocks within 125 registers', (t) => {
  t.deepEqual(shape([reg('a', 0), reg('b', 124)], { maxGap: 200 }), [{ table: 'holding', address: 0, quantity: 125, points: ['a@0', 'b@124'] }]);
  t.deepEqual(shape([reg('a', 0), reg('b', 124, 'int32')], { maxGap: 200 }), [
    { table: 'holding', address: 0, quantity: 1, points: ['a@0'] },
    { table: 'holding', address: 124, quantity: 2, points: ['b@0'] },
  ]);
  const many = Array.from({ length: 300 }, (_, i) => reg(`r${i}`, i));
  t.deepEqual(
    planReads(many).map((b) => [b.address, b.quantity]),
    [
      [0, 125],
      [125, 125],
      [250, 50],
    ],
  );
});

test('planReads keeps bit blocks within 2000 bits', (t) => {
  const bits = Array.from({ length: 2500 }, (_, i) => reg(`c${i}`, i, 'bool', 'coil'));
  t.deepEqual(
    planReads(bits).map((b) => [b.table, b.address, b.quantity]),
    [
      ['coil', 0, 2000],
      ['coil', 2000, 500],
    ],
  );
});

test('planReads never mixes tables, and orders them holding, input, coil, discrete', (t) => {
  const plan = shape([reg('d', 0, 'bool', 'discrete'), reg('c', 0, 'bool', 'coil'), reg('i', 1, 'int16', 'input'), reg('h', 1)]);
  t.deepEqual(
    plan.map((b) => [b.table, b.address, b.points]),
    [
      ['holding', 1, ['h@0']],
      ['input', 1, ['i@0']],
      ['coil', 0, ['c@0']],
      ['discrete', 0, ['d@0']],
    ],
  );
});

test('planReads lets overlapping points share registers', (t) => {
  t.deepEqual(shape([reg('lo', 5), reg('whole', 4, 'uint32'), reg('hi', 4)]), [
    { table: 'holding', address: 4, quantity: 2, points: ['whole@0', 'hi@0', 'lo@1'] },
  ]);
});

test('planReads near the top of the address space', (t) => {
  t.deepEqual(shape([reg('a', 65530), reg('b', 65534, 'uint32')]), [{ table: 'holding', address: 65530, quantity: 6, points: ['a@0', 'b@4'] }]);
});

// ---------------------------------------------------------------------------------------------------------------
// decodePoint

const dec = (type: PointConfig['type'], raw: ArrayLike<number | boolean>, extra: Partial<PointConfig> = {}) =>
  decodePoint({ type, wordOrder: 'big', scale: 1, offset: 0, ...extra }, raw);

test('decodePoint: bool from bits, as 0/1 or booleans', (t) => {
  t.is(dec('bool', [1]), true);
  t.is(dec('bool', [0]), false);
  t.is(dec('bool', [true]), true);
  t.is(dec('bool', [false]), false);
  t.is(dec('bool', [true], { scale: 10, offset: 3 }), true, 'scale and offset do not apply to booleans');
});

test('decodePoint: 16-bit types', (t) => {
  t.is(dec('uint16', [0xffff]), 65535);
  t.is(dec('int16', [0xffff]), -1);
  t.is(dec('int16', [0x8000]), -32768);
  t.is(dec('int16', [0x7fff]), 32767);
  t.is(dec('uint16', new Uint16Array([1234])), 1234);
});

test('decodePoint: 32-bit integers in both word orders', (t) => {
  t.is(dec('uint32', [0x1234, 0x5678]), 0x12345678);
  t.is(dec('uint32', [0x5678, 0x1234], { wordOrder: 'little' }), 0x12345678);
  t.is(dec('uint32', [0xffff, 0xffff]), 4294967295);
  t.is(dec('int32', [0xffff, 0xfffe]), -2);
  t.is(dec('int32', [0xfffe, 0xffff], { wordOrder: 'little' }), -2);
  t.is(dec('int32', [0x8000, 0x0000]), -2147483648);
  t.is(dec('int32', [0x0001, 0x0000]), 65536);
});

test('decodePoint: float32 1.5 in both word orders', (t) => {
  // 1.5 = 0x3FC00000
  t.is(dec('float32', [0x3fc0, 0x0000]), 1.5);
  t.is(dec('float32', [0x0000, 0x3fc0], { wordOrder: 'little' }), 1.5);
  t.is(dec('float32', [0xc2f6, 0xe979]), Math.fround(-123.456));
  t.true(Number.isNaN(dec('float32', [0x7fc0, 0x0000])));
});

test('decodePoint reads from an offset into a block', (t) => {
  const block = new Uint16Array([9, 9, 0x3fc0, 0, 0xfffe]);
  t.is(decodePoint({ type: 'float32', wordOrder: 'big', scale: 1, offset: 0 }, block, 2), 1.5);
  t.is(decodePoint({ type: 'int16', wordOrder: 'big', scale: 1, offset: 0 }, block, 4), -2);
});

test('decodePoint applies value × scale + offset', (t) => {
  t.is(dec('uint16', [250], { scale: 0.5 }), 125);
  t.is(dec('int16', [0xfff6], { scale: 2, offset: 100 }), 80);
  t.is(dec('uint16', [0], { offset: -40 }), -40);
  t.is(dec('float32', [0x3fc0, 0], { scale: 4, offset: 1 }), 7);
  t.is(decodePoint(point({ name: 'temp', table: 'input', address: 0, type: 'int16', scale: 0.25, offset: -10 }), [100]), 15);
});
