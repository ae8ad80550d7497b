import { createRequire } from 'node:module';
import test from 'ava';
import { get as spbNamespace } from 'sparkplug-payload';
import type { UMetric, UPayload } from 'sparkplug-payload/lib/sparkplugbpayload.js';
import {
  DataType,
  type DecodedDataSet,
  type DecodedMetric,
  type DecodedTemplate,
  decodeSparkplug,
  findMetric,
  parseState,
  parseStateTopic,
  parseTopic,
  SparkplugDecodeError,
} from '../helpers/sparkplug-decode.js';

// Cross-check: encode with sparkplug-payload (protobufjs), decode with the hand-written reader.

const sp = spbNamespace('spBv1.0');
if (sp === null) throw new Error('sparkplug-payload does not know spBv1.0');
const encode = (p: UPayload): Uint8Array => sp.encodePayload(p);

// protobufjs' own generated decoder, used only as a parity oracle for malformed input.
type ProtoRoot = typeof import('sparkplug-payload/lib/sparkplugPayloadProto.js');
const proto = createRequire(import.meta.url)('sparkplug-payload/lib/sparkplugPayloadProto.js') as ProtoRoot;
const ProtoPayload = proto.org.eclipse.tahu.protobuf.Payload;

const TS = 1_700_000_000_123;

function one(metric: UMetric): DecodedMetric {
  const decoded = decodeSparkplug(encode({ timestamp: TS, seq: 1, metrics: [metric] }));
  const m = decoded.metrics[0];
  if (decoded.metrics.length !== 1 || m === undefined) throw new Error('expected exactly one metric');
  return m;
}

test('payload header: timestamp, seq (including 0 and 255), uuid, body; absent seq stays absent', (t) => {
  const body = new Uint8Array([0, 1, 2, 254, 255]);
  const full = decodeSparkplug(encode({ timestamp: TS, seq: 255, uuid: 'schema-1', body, metrics: [] }));
  t.is(full.timestamp, BigInt(TS));
  t.is(full.seq, 255n);
  t.is(full.uuid, 'schema-1');
  t.deepEqual(full.body, body);
  t.deepEqual(full.metrics, []);

  t.is(decodeSparkplug(encode({ timestamp: TS, seq: 0, metrics: [] })).seq, 0n, 'seq 0 is present on the wire (proto2 presence)');
  t.false('seq' in decodeSparkplug(encode({ timestamp: TS, metrics: [] })), 'an NDEATH-style payload has no seq');
  t.deepEqual(decodeSparkplug(new Uint8Array(0)), { metrics: [] });
});

const signed: [UMetric['type'], number, number][] = [
  ['Int8', -1, DataType.Int8],
  ['Int8', -128, DataType.Int8],
  ['Int8', 127, DataType.Int8],
  ['Int16', -32768, DataType.Int16],
  ['Int16', -87, DataType.Int16],
  ['Int16', 32767, DataType.Int16],
  ['Int32', -2147483648, DataType.Int32],
  ['Int32', -1, DataType.Int32],
  ['Int32', 2147483647, DataType.Int32],
];

for (const [type, value, datatype] of signed) {
  test(`${type} ${value} round-trips through int_value with sign`, (t) => {
    const m = one({ name: 'v', type, value, timestamp: TS });
    t.is(m.datatype, datatype);
    t.is(m.datatypeName, type);
    t.is(m.valueField, 'int_value');
    t.is(m.value, value);
  });
}

test('Int64 goes to long_value and keeps its sign, including both extremes (given as strings to stay exact)', (t) => {
  const cases: [number | string, bigint][] = [
    [-1, -1n],
    [-42, -42n],
    [Number.MAX_SAFE_INTEGER, BigInt(Number.MAX_SAFE_INTEGER)],
    ['-9223372036854775808', -9223372036854775808n],
    ['9223372036854775807', 9223372036854775807n],
  ];
  for (const [value, expected] of cases) {
    const m = one({ name: 'v', type: 'Int64', value: value as number, timestamp: TS });
    t.is(m.valueField, 'long_value');
    t.is(m.value, expected, `Int64 ${value}`);
  }
});

test('unsigned types: UInt8/UInt16 in int_value; UInt32, UInt64 and DateTime in long_value (sparkplug-payload choice)', (t) => {
  t.deepEqual(pick(one({ name: 'a', type: 'UInt8', value: 255, timestamp: TS })), { datatype: DataType.UInt8, valueField: 'int_value', value: 255 });
  t.deepEqual(pick(one({ name: 'a', type: 'UInt16', value: 65535, timestamp: TS })), { datatype: DataType.UInt16, valueField: 'int_value', value: 65535 });
  // The 3.0 datatype table says uint32 for UInt32; sparkplug-payload writes it to long_value instead.
  t.deepEqual(pick(one({ name: 'a', type: 'UInt32', value: 4294967295, timestamp: TS })), {
    datatype: DataType.UInt32,
    valueField: 'long_value',
    value: 4294967295n,
  });
  t.deepEqual(pick(one({ name: 'a', type: 'UInt64', value: '18446744073709551615' as unknown as number, timestamp: TS })), {
    datatype: DataType.UInt64,
    valueField: 'long_value',
    value: 18446744073709551615n,
  });
  t.deepEqual(pick(one({ name: 'a', type: 'DateTime', value: TS, timestamp: TS })), {
    datatype: DataType.DateTime,
    valueField: 'long_value',
    value: BigInt(TS),
  });
});

function pick(m: DecodedMetric): Pick<DecodedMetric, 'datatype' | 'valueField' | 'value'> {
  return { datatype: m.datatype, valueField: m.valueField, value: m.value } as Pick<DecodedMetric, 'datatype' | 'valueField' | 'value'>;
}

test('Float (fixed32), Double (fixed64), Boolean, String/Text/UUID, Bytes/File', (t) => {
  t.is(one({ name: 'f', type: 'Float', value: 1.5, timestamp: TS }).value, 1.5);
  t.is(one({ name: 'f', type: 'Float', value: 0.1, timestamp: TS }).value, Math.fround(0.1), 'float is single precision on the wire');
  t.is(one({ name: 'f', type: 'Float', value: -3.25e10, timestamp: TS }).value, Math.fround(-3.25e10));
  t.is(one({ name: 'd', type: 'Double', value: Math.PI, timestamp: TS }).value, Math.PI);
  t.is(one({ name: 'd', type: 'Double', value: -0.000123, timestamp: TS }).value, -0.000123);
  const bt = one({ name: 'b', type: 'Boolean', value: true, timestamp: TS });
  t.is(bt.value, true);
  t.is(bt.valueField, 'boolean_value');
  t.is(one({ name: 'b', type: 'Boolean', value: false, timestamp: TS }).value, false);
  for (const type of ['String', 'Text', 'UUID'] as const) {
    const m = one({ name: 's', type, value: 'héllo ✓ 𝄞', timestamp: TS });
    t.is(m.value, 'héllo ✓ 𝄞');
    t.is(m.valueField, 'string_value');
  }
  for (const type of ['Bytes', 'File'] as const) {
    const m = one({ name: 'x', type, value: new Uint8Array([0, 1, 0x7f, 0x80, 0xff]), timestamp: TS });
    t.is(m.valueField, 'bytes_value');
    t.deepEqual(m.value, new Uint8Array([0, 1, 0x7f, 0x80, 0xff]));
  }
});

test('metric flags, timestamp, is_null without a value, alias-only data metrics', (t) => {
  const birth = one({ name: 'Line/Speed', alias: 7, type: 'Double', value: 12.5, timestamp: TS, isHistorical: true, isTransient: true });
  t.deepEqual(birth, {
    name: 'Line/Speed',
    alias: 7n,
    timestamp: BigInt(TS),
    datatype: DataType.Double,
    datatypeName: 'Double',
    isHistorical: true,
    isTransient: true,
    value: 12.5,
    valueField: 'double_value',
  });

  const nul = one({ name: 'n', type: 'Int32', value: null, timestamp: TS });
  t.true(nul.isNull);
  t.false('value' in nul, 'is_null carries no value');

  const data = decodeSparkplug(
    encode({
      timestamp: TS,
      seq: 9,
      metrics: [
        { alias: 7, type: 'Double', value: 13, timestamp: TS },
        { alias: 8, type: 'Int16', value: -2, timestamp: TS + 1 },
      ],
    }),
  );
  t.deepEqual(
    data.metrics.map((m) => [m.name, m.alias, m.value]),
    [
      [undefined, 7n, 13],
      [undefined, 8n, -2],
    ],
  );
  t.is(findMetric(data, 8n)?.timestamp, BigInt(TS + 1));
  t.is(findMetric(data, 'Line/Speed'), undefined);
  // sparkplug-payload always writes the datatype, even in DATA messages (tck-id-payloads-metric-datatype-not-req is a SHOULD NOT).
  t.is(data.metrics[0]?.datatype, DataType.Double);
});

test('metric properties (PropertySet): signed Int32 quality, strings, nulls, nested sets', (t) => {
  const m = one({
    name: 'p',
    type: 'Int32',
    value: 1,
    timestamp: TS,
    properties: {
      Quality: { type: 'Int32', value: 0 },
      offset: { type: 'Int32', value: -5 },
      engUnit: { type: 'String', value: 'm/s' },
      missing: { type: 'Int64', value: null },
      nested: { type: 'PropertySet', value: { inner: { type: 'Boolean', value: true } } },
    },
  });
  t.deepEqual(m.properties, {
    Quality: { type: DataType.Int32, value: 0 },
    offset: { type: DataType.Int32, value: -5 },
    engUnit: { type: DataType.String, value: 'm/s' },
    missing: { type: DataType.Int64, value: null },
    nested: { type: DataType.PropertySet, value: { inner: { type: DataType.Boolean, value: true } } },
  });
});

test('DataSet and Template values decode with their field numbers', (t) => {
  const ds = one({
    name: 'table',
    type: 'DataSet',
    timestamp: TS,
    value: {
      numOfColumns: 3,
      columns: ['a', 'b', 'c'],
      types: ['Int32', 'String', 'Double'],
      rows: [
        [1, 'x', 0.5],
        [-2, 'y', 2],
      ],
    },
  });
  t.is(ds.valueField, 'dataset_value');
  t.deepEqual(ds.value as DecodedDataSet, {
    numOfColumns: 3n,
    columns: ['a', 'b', 'c'],
    types: [DataType.Int32, DataType.String, DataType.Double],
    rows: [
      [1, 'x', 0.5],
      [-2, 'y', 2],
    ],
  });

  const tpl = one({
    name: 'Motor',
    type: 'Template',
    timestamp: TS,
    value: {
      version: 'v1',
      isDefinition: true,
      metrics: [{ name: 'rpm', type: 'Int16', value: -300, timestamp: TS }],
      parameters: [{ name: 'site', type: 'String', value: 'A' }],
    },
  });
  t.is(tpl.valueField, 'template_value');
  const tv = tpl.value as DecodedTemplate;
  t.is(tv.version, 'v1');
  t.true(tv.isDefinition);
  t.is(tv.templateRef, undefined);
  t.deepEqual(
    tv.metrics.map((m) => [m.name, m.datatype, m.value]),
    [['rpm', DataType.Int16, -300]],
  );
  t.deepEqual(tv.parameters, [{ name: 'site', type: DataType.String, value: 'A' }]);
});

// ---------------------------------------------------------------- hand-built wire data

function varint(n: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) b |= 0x80;
    out.push(b);
  } while (v !== 0n);
  return out;
}
const tag = (field: number, wire: number): number[] => varint(BigInt((field << 3) | wire));
const len = (bytes: number[]): number[] => [...varint(BigInt(bytes.length)), ...bytes];

test('Int8/Int16 written narrow (0xFF, 0xFFA9) decode like the 32-bit sign-extended form', (t) => {
  const metric = (datatype: number, raw: number): number[] => [
    ...tag(2, 2),
    ...len([...tag(4, 0), ...varint(BigInt(datatype)), ...tag(10, 0), ...varint(BigInt(raw))]),
  ];
  const p = decodeSparkplug(new Uint8Array([...metric(DataType.Int8, 0xff), ...metric(DataType.Int16, 0xffa9), ...metric(DataType.UInt8, 0xff)]));
  t.deepEqual(
    p.metrics.map((m) => m.value),
    [-1, -87, 255],
  );
});

test('value before datatype on the wire is still sign-interpreted; packed DataSet types are accepted', (t) => {
  const m = [...tag(11, 0), ...varint(-5n), ...tag(4, 0), ...varint(4n)];
  t.is(decodeSparkplug(new Uint8Array([...tag(2, 2), ...len(m)])).metrics[0]?.value, -5n);

  const row = [...tag(1, 2), ...len([...tag(1, 0), ...varint(0xfffffffen)])];
  const dataset = [...tag(3, 2), ...len([...varint(3n), ...varint(12n)]), ...tag(2, 2), ...len([...Buffer.from('n')]), ...tag(4, 2), ...len(row)];
  const metric = [...tag(4, 0), ...varint(16n), ...tag(17, 2), ...len(dataset)];
  const ds = decodeSparkplug(new Uint8Array([...tag(2, 2), ...len(metric)])).metrics[0]?.value as DecodedDataSet;
  t.deepEqual(ds.types, [DataType.Int32, DataType.String]);
  t.deepEqual(ds.rows, [[-2]]);
});

test('unknown fields of every wire type, and groups, are skipped', (t) => {
  const base = encode({ timestamp: TS, seq: 3, metrics: [{ name: 'a', alias: 1, type: 'Int32', value: -9, timestamp: TS }] });
  const unknown = [
    ...tag(99, 0),
    ...varint(123456789n),
    ...tag(100, 1),
    ...[1, 2, 3, 4, 5, 6, 7, 8],
    ...tag(101, 5),
    ...[9, 9, 9, 9],
    ...tag(102, 2),
    ...len([1, 2, 3]),
    ...tag(103, 3),
    ...tag(1, 0),
    ...varint(5n),
    ...tag(2, 3),
    ...tag(2, 4),
    ...tag(103, 4),
    ...tag(6, 0),
    ...varint(1n), // the Payload extension range starts at 6
  ];
  const withUnknown = new Uint8Array([...unknown, ...base, ...unknown]);
  t.deepEqual(decodeSparkplug(withUnknown), decodeSparkplug(base));
  // an unknown field inside a metric
  const metric = [...tag(1, 2), ...len([...Buffer.from('m')]), ...tag(50, 5), 1, 2, 3, 4, ...tag(14, 0), 1];
  t.like(decodeSparkplug(new Uint8Array([...tag(2, 2), ...len(metric)])).metrics[0], { name: 'm', value: true });
});

test('truncated input: a prefix decodes only when it ends on a field boundary, otherwise it throws a SparkplugDecodeError', (t) => {
  const full = encode({
    timestamp: TS,
    seq: 4,
    uuid: 'u',
    metrics: [
      { name: 'Node Control/Rebirth', type: 'Boolean', value: false, timestamp: TS },
      { name: 'f', alias: 300, type: 'Float', value: 2.5, timestamp: TS, properties: { Quality: { type: 'Int32', value: 192 } } },
      { name: 'd', type: 'Double', value: 1e-9, timestamp: TS },
      { name: 'l', type: 'Int64', value: -1, timestamp: TS },
    ],
  });
  // Oracle: a prefix is a clean boundary iff protobufjs decodes it and re-encodes it byte for byte.
  const clean = (prefix: Uint8Array): boolean => {
    try {
      return Buffer.from(ProtoPayload.encode(ProtoPayload.decode(prefix)).finish()).equals(prefix);
    } catch {
      return false;
    }
  };
  let threw = 0;
  for (let n = 0; n < full.length; n++) {
    const prefix = full.subarray(0, n);
    let ours: unknown;
    try {
      decodeSparkplug(prefix);
    } catch (e) {
      ours = e;
    }
    t.is(ours === undefined, clean(prefix), `prefix of ${n} bytes: ${String(ours)}`);
    if (ours !== undefined) {
      threw++;
      t.true(ours instanceof SparkplugDecodeError, `prefix of ${n} bytes: ${String(ours)}`);
      t.regex((ours as Error).message, /truncated/);
    }
  }
  t.true(threw > full.length / 2);
  t.throws(() => decodeSparkplug(full.subarray(0, full.length - 1)), { instanceOf: SparkplugDecodeError, message: /^Payload: truncated/ });
  // a length that overruns its enclosing message is reported with the path of that message
  const inner = new Uint8Array([...tag(2, 2), ...len([...tag(1, 2), 5, 0x61])]);
  t.throws(() => decodeSparkplug(inner), {
    instanceOf: SparkplugDecodeError,
    message: /^Payload\.metrics\[0\]: truncated input: length-delimited field of 5 byte\(s\), 1 left \(offset 3\)$/,
  });
});

test('protobufjs (the encoder side) silently accepts a uint64 varint cut after 4 or 5 bytes; this decoder does not', (t) => {
  const ts = encode({ timestamp: TS, metrics: [] }); // 08 + 6-byte varint
  const cut = ts.subarray(0, 5);
  t.notThrows(() => ProtoPayload.decode(cut));
  t.throws(() => decodeSparkplug(cut), { instanceOf: SparkplugDecodeError, message: /truncated input inside a varint/ });
});

test('malformed input gives clear errors', (t) => {
  const bad = (bytes: number[], re: RegExp): void => {
    t.throws(() => decodeSparkplug(new Uint8Array(bytes)), { instanceOf: SparkplugDecodeError, message: re });
  };
  bad([...tag(1, 2), ...len([1])], /field 1 \(timestamp, uint64\) arrived as length-delimited/);
  bad([0x0e], /invalid wire type 6/);
  bad([0x00], /field number 0/);
  bad([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], /longer than 10 bytes/);
  bad([...tag(4, 2), ...len([0xc3, 0x28])], /invalid UTF-8/);
  bad([...tag(2, 2), ...len([...tag(9, 2), ...len([...tag(1, 2), ...len([0x61])])])], /1 key\(s\) but 0 value\(s\)/);
  bad([...tag(7, 3), ...tag(1, 0), 1], /group 7 is not closed/);
});

// ---------------------------------------------------------------- topics and STATE

test('parseTopic', (t) => {
  t.deepEqual(parseTopic('spBv1.0/Plant 1/NBIRTH/gw-01'), { namespace: 'spBv1.0', group: 'Plant 1', type: 'NBIRTH', edgeNode: 'gw-01' });
  t.deepEqual(parseTopic('spBv1.0/g/DDATA/e/plc.3'), { namespace: 'spBv1.0', group: 'g', type: 'DDATA', edgeNode: 'e', device: 'plc.3' });
  for (const bad of [
    'spAv1.0/g/NBIRTH/e',
    'spBv1.0/g/NBIRTH/e/d',
    'spBv1.0/g/DBIRTH/e',
    'spBv1.0/g/NFOO/e',
    'spBv1.0//NDATA/e',
    'spBv1.0/g/NDATA/',
    'spBv1.0/g+/NDATA/e',
    'spBv1.0/g/NDATA',
    'spBv1.0/STATE/scada',
  ]) {
    t.throws(() => parseTopic(bad), undefined, bad);
  }
  t.deepEqual(parseStateTopic('spBv1.0/STATE/scada-1'), { namespace: 'spBv1.0', hostId: 'scada-1' });
  t.throws(() => parseStateTopic('STATE/scada-1'));
  t.throws(() => parseStateTopic('spBv1.0/STATE/a/b'));
});

test('parseState', (t) => {
  t.deepEqual(parseState(Buffer.from('{"online":true,"timestamp":1700000000123}')), { online: true, timestamp: 1700000000123 });
  t.deepEqual(parseState('{"timestamp":5,"online":false}'), { online: false, timestamp: 5 });
  t.throws(() => parseState('ONLINE'), { message: /2\.2/ });
  t.throws(() => parseState('{"online":"true","timestamp":1}'), { message: /online/ });
  t.throws(() => parseState('{"online":true}'), { message: /timestamp/ });
  t.throws(() => parseState('{"online":true,"timestamp":1,"bdSeq":0}'), { message: /bdSeq/ });
  t.throws(() => parseState('{'), { message: /not JSON/ });
});
