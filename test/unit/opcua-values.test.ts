import test from 'ava';
import { configSchema } from '../../plugins/opcua/config.js';
import { CncModel } from '../../plugins/opcua/sim.js';
import { clampTransportLimits, TRANSPORT_LIMITS } from '../../plugins/opcua/transport.js';
import { BuiltinType, type DataValueLike, MAX_ARRAY_JSON, mapDataValue, printable } from '../../plugins/opcua/values.js';

// values.ts maps node-opcua DataValues without importing node-opcua: these are the shapes node-opcua produces
// (Int64 as [high, low] words, StatusCode {value, name}, Date timestamps), written out by hand.

const NOW = Date.parse('2026-06-01T12:00:00Z');
const SOURCE = new Date('2026-06-01T11:59:59.500Z');
const GOOD = { value: 0, name: 'Good' };
const dv = (dataType: number, value: unknown, more: Partial<DataValueLike> = {}): DataValueLike => ({
  value: { dataType, arrayType: 0, value },
  statusCode: GOOD,
  sourceTimestamp: SOURCE,
  ...more,
});

test('scalars: value, type and the source timestamp', (t) => {
  t.deepEqual(mapDataValue(dv(BuiltinType.Double, 1234.5), NOW), { quality: 'good', value: 1234.5, timestamp: SOURCE.getTime(), dataType: 'Double' });
  t.like(mapDataValue(dv(BuiltinType.Float, 1.5), NOW), { value: 1.5, dataType: 'Float' });
  t.like(mapDataValue(dv(BuiltinType.Boolean, true), NOW), { value: true, dataType: 'Boolean' });
  t.like(mapDataValue(dv(BuiltinType.Int16, -7), NOW), { value: -7, dataType: 'Int32' });
  t.like(mapDataValue(dv(BuiltinType.Byte, 200), NOW), { value: 200, dataType: 'Int32' });
  t.like(mapDataValue(dv(BuiltinType.UInt32, 4_000_000_000), NOW), { value: 4_000_000_000, dataType: 'UInt32' });
  t.like(mapDataValue(dv(BuiltinType.String, 'O1001'), NOW), { value: 'O1001', dataType: 'String' });
  t.like(mapDataValue(dv(BuiltinType.LocalizedText, { text: 'Spindel', locale: 'de' }), NOW), { value: 'Spindel', dataType: 'String' });
  t.like(mapDataValue(dv(BuiltinType.QualifiedName, { namespaceIndex: 2, name: 'Drill' }), NOW), { value: '2:Drill' });
  t.like(mapDataValue(dv(BuiltinType.StatusCode, { value: 0x80000000, name: 'Bad' }), NOW), { quality: 'good', value: 'Bad' });
});

test('64-bit integers: [high, low] words, signed and unsigned, refused past 2^53', (t) => {
  t.like(mapDataValue(dv(BuiltinType.Int64, [0, 5]), NOW), { value: 5, dataType: 'Int64' });
  t.like(mapDataValue(dv(BuiltinType.Int64, [0xffffffff, 0xfffffffe]), NOW), { value: -2, dataType: 'Int64' });
  t.like(mapDataValue(dv(BuiltinType.UInt64, [1, 0]), NOW), { value: 4294967296, dataType: 'UInt64' });
  t.like(mapDataValue(dv(BuiltinType.UInt64, [0x1fffff, 0xffffffff]), NOW), { quality: 'good', value: Number.MAX_SAFE_INTEGER });
  const big = mapDataValue(dv(BuiltinType.UInt64, [0x200000, 0]), NOW);
  t.is(big.quality, 'bad');
  t.regex(big.error ?? '', /beyond ±2\^53/);
  t.like(mapDataValue(dv(BuiltinType.Int64, 'x'), NOW), { quality: 'bad' });
});

test('DateTime values become ISO text; unusable timestamps fall back to server time, then now', (t) => {
  t.like(mapDataValue(dv(BuiltinType.DateTime, new Date('2026-01-02T03:04:05Z')), NOW), { value: '2026-01-02T03:04:05.000Z', dataType: 'String' });
  t.like(mapDataValue(dv(BuiltinType.DateTime, new Date('1601-01-01T00:00:00Z')), NOW), { quality: 'bad' });
  const server = new Date('2026-06-01T11:59:58Z');
  t.is(mapDataValue(dv(BuiltinType.Double, 1, { sourceTimestamp: null, serverTimestamp: server }), NOW).timestamp, server.getTime());
  t.is(mapDataValue(dv(BuiltinType.Double, 1, { sourceTimestamp: new Date(Date.UTC(1601, 0, 1)), serverTimestamp: null }), NOW).timestamp, NOW);
});

test('status: anything but Good* is bad and named; the value is dropped', (t) => {
  t.deepEqual(mapDataValue(dv(BuiltinType.Double, 3, { statusCode: { value: 0x808b0000, name: 'BadSensorFailure' } }), NOW), {
    quality: 'bad',
    value: null,
    timestamp: SOURCE.getTime(),
    error: 'BadSensorFailure',
  });
  t.like(mapDataValue(dv(BuiltinType.Double, 3, { statusCode: { value: 0x40000000, name: 'Uncertain' } }), NOW), { quality: 'bad', error: 'Uncertain' });
  t.like(mapDataValue(dv(BuiltinType.Double, 3, { statusCode: { value: 0x80ab0000 } }), NOW), { quality: 'bad', error: '0x80ab0000' });
  t.like(mapDataValue(dv(BuiltinType.Double, 3, { statusCode: { value: 0x00a20000, name: 'GoodClamped' } }), NOW), { quality: 'good', value: 3 });
});

test('arrays become JSON text; nulls, matrices, structures and huge arrays are bad', (t) => {
  t.like(
    mapDataValue(
      { ...dv(BuiltinType.Double, new Float64Array([1, 2.5])), value: { dataType: BuiltinType.Double, arrayType: 1, value: new Float64Array([1, 2.5]) } },
      NOW,
    ),
    {
      quality: 'good',
      value: '[1,2.5]',
      dataType: 'String',
    },
  );
  const huge = new Float64Array(MAX_ARRAY_JSON).fill(1.25);
  t.like(mapDataValue({ ...dv(BuiltinType.Double, 0), value: { dataType: BuiltinType.Double, arrayType: 1, value: huge } }, NOW), { quality: 'bad' });
  t.like(mapDataValue({ ...dv(BuiltinType.Double, 0), value: { dataType: BuiltinType.Double, arrayType: 2, value: [] } }, NOW), {
    quality: 'bad',
    error: 'matrices are not published',
  });
  t.like(mapDataValue(dv(BuiltinType.Null, null), NOW), { quality: 'bad', error: 'the server sent no value (Null)' });
  t.like(mapDataValue(dv(BuiltinType.ExtensionObject, {}), NOW), { quality: 'bad', error: 'unsupported data type ExtensionObject' });
  t.like(mapDataValue(dv(BuiltinType.ByteString, Buffer.from('x')), NOW), { quality: 'bad', error: 'unsupported data type ByteString' });
});

// ---------------------------------------------------------------------------------------------------------------
// Config

const server = (more: Record<string, unknown> = {}) => ({
  name: 'cnc-1',
  endpointUrl: 'opc.tcp://10.0.0.5:4840',
  nodes: [{ nodeId: 'ns=1;s=A', name: 'A' }],
  ...more,
});
const problems = (input: unknown) => {
  const r = configSchema.safeParse(input);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

test('config: defaults are secure and complete', (t) => {
  const empty = configSchema.parse({});
  t.deepEqual(empty.servers, []);
  t.true(empty.postureCheck);
  const c = configSchema.parse({ servers: [server()] });
  const s = c.servers[0];
  t.is(s?.securityMode, 'SignAndEncrypt');
  t.is(s?.securityPolicy, 'Basic256Sha256');
  t.is(s?.userIdentity, 'anonymous');
  t.is(s?.nodes[0]?.samplingIntervalMs, 1000);
  t.is(configSchema.parse({ servers: [server({ securityMode: 'None' })] }).servers[0]?.securityPolicy, 'None');
});

test('config: refusals name the field and the reason', (t) => {
  t.regex(
    problems({ servers: [server({ securityMode: 'None', securityPolicy: 'Basic256Sha256' })] }).join(),
    /securityMode None cannot go with securityPolicy Basic256Sha256/,
  );
  t.regex(problems({ servers: [server({ securityMode: 'SignAndEncrypt', securityPolicy: 'None' })] }).join(), /cannot go with securityPolicy None/);
  t.true(problems({ servers: [server({ securityPolicy: 'Basic128Rsa15' })] }).length > 0, 'deprecated policies are not spoken');
  t.regex(
    problems({ servers: [server({ nodes: [{ nodeId: 'Spindle.Speed', name: 'A' }] })] }).join(),
    /servers\.0\.nodes\.0\.nodeId: must be an OPC UA node id/,
  );
  t.regex(problems({ servers: [server({ nodes: [{ nodeId: 'i=1', name: 'A+B' }] })] }).join(), /nodes\.0\.name/);
  t.regex(
    problems({
      servers: [
        server({
          nodes: [
            { nodeId: 'i=1', name: 'A' },
            { nodeId: 'i=2', name: 'A' },
          ],
        }),
      ],
    }).join(),
    /point "A" appears twice/,
  );
  t.regex(problems({ servers: [server(), server()] }).join(), /server "cnc-1" appears twice/);
  t.regex(problems({ servers: [server({ nodes: [] })] }).join(), /at least one node, or browse/);
  t.regex(problems({ servers: [server({ name: 'cnc/1' })] }).join(), /servers\.0\.name/);
  t.regex(problems({ servers: [server({ endpointUrl: 'http://x' })] }).join(), /opc\.tcp/);
  t.regex(problems({ servers: [server({ nodes: [{ nodeId: 'i=1', name: 'A', deadband: { type: 'percent', value: 150 } }] })] }).join(), /at most 100/);
  t.regex(problems({ servers: [server({ trustedServerCertificates: ['abc'] })] }).join(), /SHA-256 fingerprint/);
  t.regex(problems({ reconnect: { initialDelayMs: 5000, maxDelayMs: 1000 } }).join(), /maxDelayMs must be at least initialDelayMs/);
  t.true(problems({ bogus: 1 }).length > 0, 'no unknown fields');
});

test('config: fingerprints are normalised, every node id form is accepted', (t) => {
  const fp = 'AB:'.repeat(31).concat('CD');
  const c = configSchema.parse({
    servers: [
      server({
        trustedServerCertificates: [fp],
        nodes: [
          { nodeId: 'ns=1;s=CNC.Spindle.Speed', name: 'Spindle/Speed' },
          { nodeId: 'i=2258', name: 'Server/Time' },
          { nodeId: 'ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a', name: 'G' },
          { nodeId: 'ns=3;b=M/RbKBsRVkePCePcx24oRA==', name: 'B' },
        ],
        browse: { from: 'ns=1;s=CNC' },
      }),
    ],
  });
  t.is(c.servers[0]?.trustedServerCertificates[0], 'ab'.repeat(31).concat('cd'));
  t.like(c.servers[0]?.browse, { maxDepth: 3, maxNodes: 200, samplingIntervalMs: 1000 });
});

// ---------------------------------------------------------------------------------------------------------------
// The simulator's model (the server around it is exercised by test/integration/opcua.test.ts)

test('the CNC model runs machining cycles: parts counted, spindle and temperature follow the load', (t) => {
  const model = new CncModel(7);
  let maxSpeed = 0;
  let maxTemperature = 0;
  for (let i = 0; i < 1200; i++) {
    model.step(0.5);
    maxSpeed = Math.max(maxSpeed, Number(model.values['Spindle/Speed']));
    maxTemperature = Math.max(maxTemperature, Number(model.values['Spindle/Temperature']));
    const load = Number(model.values['Spindle/Load']);
    t.true(load >= 0 && load <= 100);
  }
  t.true(Number(model.values['Parts/Count']) > 5, `parts: ${model.values['Parts/Count']}`);
  t.true(maxSpeed >= 8000 && maxSpeed <= 12_100, `max speed ${maxSpeed}`);
  t.true(maxTemperature > 30, `max temperature ${maxTemperature}`);
});

test('config: a user name and password only over SignAndEncrypt (the review: None would hand the password to any server)', (t) => {
  const user = { username: 'ward', passwordFile: '/etc/ward/plc.pass' };
  t.regex(problems({ servers: [server({ securityMode: 'None', userIdentity: user })] }).join(), /userIdentity: .*need securityMode SignAndEncrypt/);
  t.regex(problems({ servers: [server({ securityMode: 'Sign', userIdentity: user })] }).join(), /need securityMode SignAndEncrypt/);
  t.deepEqual(problems({ servers: [server({ securityMode: 'SignAndEncrypt', userIdentity: user })] }), []);
});

test('a server cannot make the agent hold huge texts or convert huge arrays', (t) => {
  const long = mapDataValue(dv(BuiltinType.String, 'x'.repeat(MAX_ARRAY_JSON + 1)), NOW);
  t.is(long.quality, 'bad');
  t.regex(long.error ?? '', /too large/);
  const huge = { length: 10_000_000 } as ArrayLike<number>;
  const arr = mapDataValue({ value: { dataType: BuiltinType.Double, arrayType: 1, value: huge }, statusCode: GOOD, sourceTimestamp: SOURCE }, NOW);
  t.is(arr.quality, 'bad', 'refused from its length, before any element is converted');
  t.is(printable('a\u001b[31mred\r\nline', 100), 'a [31mred line');
});

test('transport limits a server announces are clamped to Ward\u2019s (node-opcua would otherwise take them as its own)', async (t) => {
  await clampTransportLimits();
  await clampTransportLimits(); // idempotent
  const { TCP_transport } = await import('node-opcua-transport');
  const transport = new TCP_transport() as unknown as {
    setLimits(l: Record<string, number>): void;
    receiveBufferSize: number;
    maxMessageSize: number;
    maxChunkCount: number;
  };
  transport.setLimits({ receiveBufferSize: 0x7fffffff, sendBufferSize: 0x7fffffff, maxMessageSize: 0, maxChunkCount: 0 });
  t.is(transport.receiveBufferSize, TRANSPORT_LIMITS.receiveBufferSize);
  t.is(transport.maxMessageSize, TRANSPORT_LIMITS.maxMessageSize);
  t.is(transport.maxChunkCount, TRANSPORT_LIMITS.maxChunkCount);
  transport.setLimits({ receiveBufferSize: 8192, sendBufferSize: 8192, maxMessageSize: 65_536, maxChunkCount: 8 });
  t.is(transport.receiveBufferSize, 8192, 'smaller limits are kept');
});
