import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { Aedes, type Client } from 'aedes';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type MqttClient } from 'mqtt';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { systemClock } from '../../agent/core/clock.js';
import { TelemetryBuffer } from '../../agent/telemetry/buffer.js';
import type { MetricPoint } from '../../agent/telemetry/metric.js';
import { SparkplugPublisher } from '../../agent/telemetry/publisher.js';
import { encodeSparkplug } from '../../agent/telemetry/sparkplug/codec.js';
import { freePort, waitFor } from '../helpers/net.js';
import { type DecodedPayload, decodeSparkplug, findMetric, parseTopic } from '../helpers/sparkplug-decode.js';
import { tempDir } from '../helpers/tmp.js';

// Real components: an aedes broker on loopback (in this process, so the test can read each client's Will and clean
// flag as the broker saw them) and mqtt.js as the host application. Everything Ward publishes is decoded with the
// test's own protobuf reader (test/helpers/sparkplug-decode.ts), not with the library Ward encodes with.

const GROUP = 'plant1';
const NODE = 'gw-spb-1';
const HOST = 'scada-1';

interface Broker {
  readonly port: number;
  readonly url: string;
  readonly aedes: Aedes;
  readonly clients: Map<string, Client>;
  close(): Promise<void>;
}

async function startBroker(t: ExecutionContext, port?: number): Promise<Broker> {
  const aedes = await Aedes.createBroker();
  const clients = new Map<string, Client>();
  aedes.on('client', (c) => clients.set(c.id, c));
  const server: Server = createServer(aedes.handle);
  const p = port ?? (await freePort());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, '127.0.0.1', () => resolve());
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const c of clients.values()) c.conn.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
  };
  t.teardown(close);
  return { port: p, url: `mqtt://127.0.0.1:${p}`, aedes, clients, close };
}

interface Seen {
  readonly topic: string;
  readonly type: string;
  readonly device?: string;
  readonly retain: boolean;
  readonly qos: number;
  readonly payload: DecodedPayload;
}

/** A host application: records every Sparkplug message of the node, decoded independently. */
async function hostApp(t: ExecutionContext, url: string): Promise<{ client: MqttClient; seen: Seen[]; of(type: string): Seen[] }> {
  const client = await mqtt.connectAsync(url, { clientId: `host-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 200 });
  t.teardown(() => client.endAsync(true));
  const seen: Seen[] = [];
  client.on('message', (topic, payload, packet) => {
    if (topic.startsWith('spBv1.0/STATE/')) return;
    const tp = parseTopic(topic);
    if (tp.type === 'NCMD' || tp.type === 'DCMD') return;
    seen.push({ topic, type: tp.type, ...(tp.device ? { device: tp.device } : {}), retain: packet.retain, qos: packet.qos, payload: decodeSparkplug(payload) });
  });
  await client.subscribeAsync('spBv1.0/#', { qos: 1 });
  return { client, seen, of: (type) => seen.filter((s) => s.type === type) };
}

async function setState(client: MqttClient, online: boolean, timestamp = Date.now()) {
  await client.publishAsync(`spBv1.0/STATE/${HOST}`, JSON.stringify({ online, timestamp }), { qos: 1, retain: true });
}

interface Edge {
  readonly publisher: SparkplugPublisher;
  readonly buffer: TelemetryBuffer;
  readonly events: AuditEventInput[];
  readonly node: Map<string, MetricPoint>;
  readonly devices: Map<string, Map<string, MetricPoint>>;
  publishDevice(device: string, points: MetricPoint[]): void;
}

async function edgeNode(t: ExecutionContext, url: string, opts: { maxBytes?: number; primaryHostId?: string | null; dir?: string } = {}): Promise<Edge> {
  const dir = opts.dir ?? join(await tempDir(t), 'telemetry');
  const events: AuditEventInput[] = [];
  const audit = { record: (e: AuditEventInput) => void events.push(e) };
  const log = { info() {}, warn() {}, error() {}, debug() {} };
  const buffer = await TelemetryBuffer.open({ dir, maxBytes: opts.maxBytes ?? 1024 * 1024, audit, log });
  const node = new Map<string, MetricPoint>([
    ['Gateway/CPU/Load', { name: 'Gateway/CPU/Load', type: 'Double', value: 12.5, timestamp: Date.now(), unit: '%' }],
  ]);
  const devices = new Map<string, Map<string, MetricPoint>>();
  const publisher = new SparkplugPublisher({
    group: GROUP,
    edgeNode: NODE,
    primaryHostId: opts.primaryHostId === undefined ? HOST : opts.primaryHostId,
    mqtt: { url, clientId: `ward-agent-${NODE}:spb`, protocol: '3.1.1', keepaliveSeconds: 5, connectTimeoutMs: 2_000, reconnect: { baseMs: 100, capMs: 300 } },
    buffer,
    nodeMetrics: () => [...node.values()],
    deviceMetrics: () => new Map([...devices].map(([d, m]) => [d, [...m.values()]])),
    audit,
    clock: systemClock,
    log,
    rebirthMinIntervalMs: 0,
    replayBatch: 4,
  });
  t.teardown(async () => {
    await publisher.stop();
    await buffer.close();
  });
  return {
    publisher,
    buffer,
    events,
    node,
    devices,
    publishDevice(device, points) {
      let m = devices.get(device);
      if (m === undefined) {
        m = new Map();
        devices.set(device, m);
      }
      for (const p of points) m.set(p.name, p);
      publisher.publishDevice(device, points);
    },
  };
}

const speed = (v: number, timestamp = Date.now()): MetricPoint => ({ name: 'Spindle/Speed', type: 'Double', value: v, timestamp, unit: 'rpm' });
const seqOf = (s: Seen) => Number(s.payload.seq);
const bdSeqOf = (p: DecodedPayload) => findMetric(p, 'bdSeq')?.value;

test('tck-id-operational-behavior-edge-node-birth-sequence-wait: no birth before the primary host is online; then NBIRTH (seq 0, bdSeq, Rebirth) and DBIRTH', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const edge = await edgeNode(t, broker.url);
  edge.devices.set('cnc-1', new Map([['Spindle/Speed', speed(1000)]]));
  edge.publisher.start();
  await waitFor('edge node connected', () => edge.publisher.status().connected, 10_000);
  edge.publishDevice('cnc-1', [speed(1100)]);
  await new Promise((r) => setTimeout(r, 300));
  t.is(host.seen.length, 0, 'nothing is published while the primary host has not said it is online');
  t.is(edge.buffer.depth, 1, 'data produced meanwhile is buffered');

  await setState(host.client, true);
  await waitFor('births and replay', () => host.of('DDATA').length >= 1, 10_000);
  const [nbirth] = host.of('NBIRTH');
  const [dbirth] = host.of('DBIRTH');
  t.truthy(nbirth && dbirth);
  if (!nbirth || !dbirth) return;
  // tck-id-topics-nbirth-topic / tck-id-topics-nbirth-qos / -retain
  t.is(nbirth.topic, `spBv1.0/${GROUP}/NBIRTH/${NODE}`);
  t.is(nbirth.qos, 0);
  t.false(nbirth.retain);
  // tck-id-topics-nbirth-seq-num: NBIRTH seq is 0
  t.is(seqOf(nbirth), 0);
  // tck-id-payloads-nbirth-bdseq: bdSeq metric, Int64 (datatype 4), 0 on the very first connection
  const bd = findMetric(nbirth.payload, 'bdSeq');
  t.is(bd?.datatype, 4);
  t.is(bd?.value, 0n);
  // tck-id-payloads-nbirth-rebirth-req: Node Control/Rebirth Boolean false, without an alias (tck-id-payloads-alias-rebirth?)
  const rebirth = findMetric(nbirth.payload, 'Node Control/Rebirth');
  t.is(rebirth?.value, false);
  t.is(rebirth?.alias, undefined);
  const cpu = findMetric(nbirth.payload, 'Gateway/CPU/Load');
  t.is(cpu?.value, 12.5);
  t.not(cpu?.alias, undefined, 'tck-id-payloads-alias-birth-requirement: births carry name and alias');
  // tck-id-payloads-dbirth-order / tck-id-payloads-sequence-num-incrementing
  t.is(dbirth.topic, `spBv1.0/${GROUP}/DBIRTH/${NODE}/cnc-1`);
  t.is(seqOf(dbirth), 1);
  const birthSpeed = findMetric(dbirth.payload, 'Spindle/Speed');
  t.truthy(birthSpeed?.alias);
  t.is(birthSpeed?.properties?.engUnit?.value, 'rpm');
  // The buffered point is replayed as historical, alias only (tck-id-payloads-alias-data-cmd-requirement).
  const [replayed] = host.of('DDATA');
  t.is(seqOf(replayed as Seen), 2);
  const m = replayed?.payload.metrics[0];
  t.is(m?.name, undefined);
  t.is(m?.alias, birthSpeed?.alias);
  t.true(m?.isHistorical);
  t.is(m?.value, 1100);
  t.false(replayed?.retain);
  t.is(replayed?.qos, 0);

  // Live data after the replay: not historical, seq continues.
  edge.publishDevice('cnc-1', [speed(1200)]);
  const live = await waitFor('live DDATA', () => host.of('DDATA').find((s) => s.payload.metrics[0]?.value === 1200), 5_000);
  t.is(seqOf(live), 3);
  t.falsy(live.payload.metrics[0]?.isHistorical);
});

test('tck-id-payloads-ndeath-will-message-qos: the Will is NDEATH at QoS 1, not retained, with the NBIRTH bdSeq; clean session; the Will reaches the host on a dropped connection', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null });
  edge.publisher.start();
  const nbirth = await waitFor('NBIRTH', () => host.of('NBIRTH')[0], 10_000);
  const client = broker.clients.get(`ward-agent-${NODE}:spb`);
  t.truthy(client);
  const will = (client as unknown as { will: { topic: string; payload: Buffer; qos: number; retain: boolean } }).will;
  t.is(will.topic, `spBv1.0/${GROUP}/NDEATH/${NODE}`);
  t.is(will.qos, 1);
  t.false(will.retain);
  const willPayload = decodeSparkplug(will.payload);
  t.is(bdSeqOf(willPayload), bdSeqOf(nbirth.payload), 'tck-id-payloads-ndeath-bdseq: same bdSeq as the NBIRTH');
  t.is(willPayload.seq, undefined, 'tck-id-payloads-ndeath-seq: NDEATH has no seq');
  // tck-id-principles-persistence-clean-session-311
  t.true((client as unknown as { clean: boolean }).clean);

  // The connection drops without DISCONNECT: the broker publishes the Will to the host.
  client?.conn.destroy();
  const death = await waitFor('NDEATH from the Will', () => host.of('NDEATH')[0], 10_000);
  t.is(bdSeqOf(death.payload), bdSeqOf(nbirth.payload));
  // tck-id-payloads-nbirth-bdseq-increment: the next connection's bdSeq is one more.
  const second = await waitFor('second NBIRTH', () => host.of('NBIRTH')[1], 10_000);
  t.is(bdSeqOf(second.payload), (bdSeqOf(nbirth.payload) as bigint) + 1n);
  t.is(seqOf(second), 0);
});

test('tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath: stop() publishes NDEATH before disconnecting', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null });
  edge.publisher.start();
  const nbirth = await waitFor('NBIRTH', () => host.of('NBIRTH')[0], 10_000);
  await edge.publisher.stop();
  const death = await waitFor('NDEATH', () => host.of('NDEATH')[0], 5_000);
  t.is(bdSeqOf(death.payload), bdSeqOf(nbirth.payload));
});

test('Node Control/Rebirth: NCMD re-sends NBIRTH (seq 0, same bdSeq) and every DBIRTH; malformed NCMD and any DCMD are refused and audited', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null });
  edge.devices.set('cnc-1', new Map([['Spindle/Speed', speed(900)]]));
  edge.publisher.start();
  const first = await waitFor('NBIRTH', () => host.of('NBIRTH')[0], 10_000);
  await waitFor('DBIRTH', () => host.of('DBIRTH')[0], 5_000);

  // Malformed: not a protobuf. The node keeps publishing.
  await host.client.publishAsync(`spBv1.0/${GROUP}/NCMD/${NODE}`, Buffer.from([0xff, 0xff, 0xff, 0x0a, 0x99]), { qos: 0 });
  await host.client.publishAsync(
    `spBv1.0/${GROUP}/DCMD/${NODE}/cnc-1`,
    encodeSparkplug({ timestamp: Date.now(), metrics: [{ name: 'Spindle/Speed', type: 'Double', value: 0 }] }),
    { qos: 0 },
  );
  await waitFor('refusals audited', () => edge.events.filter((e) => e.outcome === 'refused').length >= 2, 5_000);
  const refused = edge.events.filter((e) => e.outcome === 'refused');
  t.true(refused.some((e) => e.action === 'sparkplug.ncmd' && e.code === 'WARD_SPARKPLUG_BAD_COMMAND'));
  t.true(refused.some((e) => e.action === 'sparkplug.dcmd' && e.code === 'WARD_SPARKPLUG_COMMAND_REFUSED'));
  // A rebirth the refusals had caused would go out on this session before data published after them.
  edge.publishDevice('cnc-1', [speed(901)]);
  await waitFor('a marker published after the refusals', () => host.of('DDATA').find((s) => s.payload.metrics[0]?.value === 901), 5_000);
  t.is(host.of('NBIRTH').length, 1, 'neither caused a rebirth');

  await host.client.publishAsync(
    `spBv1.0/${GROUP}/NCMD/${NODE}`,
    encodeSparkplug({ timestamp: Date.now(), metrics: [{ name: 'Node Control/Rebirth', type: 'Boolean', value: true }] }),
    { qos: 0 },
  );
  const again = await waitFor('rebirth NBIRTH', () => host.of('NBIRTH')[1], 5_000);
  const dAgain = await waitFor('rebirth DBIRTH', () => host.of('DBIRTH')[1], 5_000);
  t.is(seqOf(again), 0);
  t.is(bdSeqOf(again.payload), bdSeqOf(first.payload), 'a rebirth keeps the bdSeq of the connection');
  t.is(seqOf(dAgain), 1);
  t.true(edge.events.some((e) => e.action === 'sparkplug.rebirth'));
  edge.publishDevice('cnc-1', [speed(950)]);
  const data = await waitFor('data after rebirth', () => host.of('DDATA').find((s) => s.payload.metrics[0]?.value === 950), 5_000);
  t.is(seqOf(data), 2);
});

test('store-and-forward: a broker outage is buffered and replayed in order as is_historical after the new births', async (t) => {
  const broker = await startBroker(t);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null });
  edge.publisher.start();
  await waitFor('connected', () => edge.publisher.status().live, 10_000);
  await broker.close();
  await waitFor('disconnected', () => !edge.publisher.status().connected, 10_000);
  const t0 = Date.now() - 60_000;
  for (let i = 0; i < 25; i++) edge.publishDevice('cnc-1', [speed(i, t0 + i * 1000)]);
  t.is(edge.buffer.depth, 25);

  const again = await startBroker(t, broker.port);
  const host = await hostApp(t, again.url);
  const values = await waitFor(
    'replay complete',
    () => {
      const v = host.of('DDATA').flatMap((s) => s.payload.metrics.map((m) => ({ v: m.value, h: m.isHistorical, ts: Number(m.timestamp) })));
      return v.length >= 25 ? v : undefined;
    },
    15_000,
  );
  t.deepEqual(
    values.map((v) => v.v),
    Array.from({ length: 25 }, (_, i) => i),
    'every buffered value arrives, oldest first',
  );
  t.true(values.every((v) => v.h === true));
  t.deepEqual(
    values.map((v) => v.ts),
    Array.from({ length: 25 }, (_, i) => t0 + i * 1000),
    'with their original timestamps',
  );
  // Births come first (tck-id-payloads-ndata-order, tck-id-payloads-dbirth-order), then data; seq strictly increasing.
  t.deepEqual(
    host.seen.slice(0, 2).map((s) => s.type),
    ['NBIRTH', 'DBIRTH'],
  );
  const seqs = host.seen.map(seqOf);
  t.deepEqual(
    seqs,
    seqs.map((_, i) => i),
  );
  await waitFor('buffer drained', () => edge.buffer.depth === 0 && edge.publisher.status().live, 5_000);
});

test('store-and-forward is bounded: the oldest data is evicted and counted, the gap is audited and published', async (t) => {
  const broker = await startBroker(t);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null, maxBytes: 4096 });
  edge.publisher.start();
  await waitFor('live', () => edge.publisher.status().live, 10_000);
  await broker.close();
  await waitFor('disconnected', () => !edge.publisher.status().connected, 10_000);
  for (let i = 0; i < 200; i++) edge.publishDevice('cnc-1', [speed(i, Date.now() - 200_000 + i)]);
  t.true(edge.buffer.bytes <= 4096);
  const dropped = edge.buffer.dropped;
  t.true(dropped > 0);
  t.true(edge.events.some((e) => e.action === 'telemetry.buffer-full'));

  const again = await startBroker(t, broker.port);
  const host = await hostApp(t, again.url);
  const values = await waitFor(
    'replay',
    () => {
      const v = host.of('DDATA').flatMap((s) => s.payload.metrics.map((m) => m.value as number));
      return v.length >= 200 - dropped ? v : undefined;
    },
    15_000,
  );
  // What survived is the newest data, contiguous and in order.
  t.deepEqual(
    values,
    Array.from({ length: 200 - dropped }, (_, i) => dropped + i),
  );
  const gap = edge.events.find((e) => e.action === 'telemetry.gap');
  t.is(gap?.details?.points, dropped);
  const droppedMetric = await waitFor(
    'Ward/Telemetry/Dropped',
    () =>
      host.seen
        .flatMap((s) => s.payload.metrics)
        .filter((m) => m.name === 'Ward/Telemetry/Dropped' || m.alias !== undefined)
        .find((m) => m.value === BigInt(dropped)),
    5_000,
  );
  t.truthy(droppedMetric);
});

test('tck-id-operational-behavior-edge-node-terminate-host-offline: an offline STATE ends the session with NDEATH; a stale STATE is ignored; births resume when the host is back', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const edge = await edgeNode(t, broker.url);
  edge.publisher.start();
  const online = Date.now();
  await setState(host.client, true, online);
  const nbirth = await waitFor('NBIRTH', () => host.of('NBIRTH')[0], 10_000);

  // Older than the online STATE: ignored.
  await host.client.publishAsync(`spBv1.0/STATE/${HOST}`, JSON.stringify({ online: false, timestamp: online - 10_000 }), { qos: 1 });
  await new Promise((r) => setTimeout(r, 300));
  t.is(host.of('NDEATH').length, 0);

  await setState(host.client, false, online + 1);
  const death = await waitFor('NDEATH', () => host.of('NDEATH')[0], 5_000);
  t.is(bdSeqOf(death.payload), bdSeqOf(nbirth.payload));
  edge.publishDevice('cnc-1', [speed(7)]);
  // The old connection may still be up for a moment after its NDEATH: wait for the next one (its own bdSeq).
  const nextBdSeq = Number(bdSeqOf(nbirth.payload)) + 1;
  await waitFor('reconnected, waiting for the host', () => edge.publisher.status().connected && edge.publisher.status().bdSeq === nextBdSeq, 10_000);
  await new Promise((r) => setTimeout(r, 300));
  t.is(host.of('NBIRTH').length, 1, 'no birth while the host is offline');
  t.is(edge.buffer.depth, 1);

  // A malformed STATE is refused and audited, nothing else happens.
  await host.client.publishAsync(`spBv1.0/STATE/${HOST}`, 'ONLINE', { qos: 1 });
  await waitFor('malformed STATE audited', () => edge.events.find((e) => e.action === 'sparkplug.state'), 5_000);

  await setState(host.client, true, online + 2);
  const second = await waitFor('NBIRTH again', () => host.of('NBIRTH')[1], 10_000);
  t.is(bdSeqOf(second.payload), (bdSeqOf(nbirth.payload) as bigint) + 1n);
  const replay = await waitFor('replayed', () => host.of('DDATA')[0], 5_000);
  t.is(replay.payload.metrics[0]?.value, 7);
  t.true(replay.payload.metrics[0]?.isHistorical);
});

test('bdSeq survives a restart: a new publisher on the same buffer continues from the stored value', async (t) => {
  const broker = await startBroker(t);
  const host = await hostApp(t, broker.url);
  const dir = join(await tempDir(t), 'telemetry');
  const first = await edgeNode(t, broker.url, { primaryHostId: null, dir });
  first.publisher.start();
  const a = await waitFor('NBIRTH', () => host.of('NBIRTH')[0], 10_000);
  await first.publisher.stop();
  await first.buffer.close();
  const second = await edgeNode(t, broker.url, { primaryHostId: null, dir });
  second.publisher.start();
  const b = await waitFor('NBIRTH', () => host.of('NBIRTH')[1], 10_000);
  t.is(bdSeqOf(b.payload), (bdSeqOf(a.payload) as bigint) + 1n);
});

test('after a restart with buffered data the collectors no longer produce, the births still declare it and the replay goes out (no rebirth loop)', async (t) => {
  const broker = await startBroker(t);
  const dir = join(await tempDir(t), 'telemetry');
  const first = await edgeNode(t, broker.url, { primaryHostId: null, dir });
  // Buffered while never connected: a metric of a machine and a node metric the next process will not know.
  first.publisher.publishDevice('plc-gone', [speed(5)]);
  first.publisher.publishNode([{ name: 'Gateway/Network/usb0/RxBytes', type: 'UInt64', value: 42, timestamp: Date.now() }]);
  await first.buffer.close();

  const host = await hostApp(t, broker.url);
  const second = await edgeNode(t, broker.url, { primaryHostId: null, dir });
  second.publisher.start();
  await waitFor('live after the replay', () => second.publisher.status().live, 10_000);
  // `live` is set once the replay is handed to the socket; the host receives it a moment later.
  const replayed = await waitFor('the replayed machine data at the host', () => host.of('DDATA').find((s) => s.device === 'plc-gone'), 5_000);
  t.is(replayed.payload.metrics[0]?.value, 5);
  t.true(replayed.payload.metrics[0]?.isHistorical);
  t.is(second.buffer.depth, 0);
  // A loop would rebirth after the 250 ms settle: give it several, then a marker on the same session orders the rest.
  await new Promise((r) => setTimeout(r, 1_000));
  second.publisher.publishDevice('plc-gone', [speed(6)]);
  await waitFor('a live marker at the host', () => host.of('DDATA').find((s) => s.device === 'plc-gone' && s.payload.metrics[0]?.value === 6), 5_000);
  t.is(host.of('NBIRTH').length, 1, 'one birth, no rebirth loop');
  const nbirth = host.of('NBIRTH')[0] as Seen;
  t.is(findMetric(nbirth.payload, 'Gateway/Network/usb0/RxBytes')?.value, 42n);
  t.truthy(
    host.of('DBIRTH').find((s) => s.device === 'plc-gone'),
    'the buffered machine is born',
  );
});

test('a machine that appears while the buffer is being replayed is born and its data arrives; nothing buffered is dropped', async (t) => {
  const broker = await startBroker(t);
  const edge = await edgeNode(t, broker.url, { primaryHostId: null });
  edge.publisher.start();
  await waitFor('live', () => edge.publisher.status().live, 10_000);
  await broker.close();
  await waitFor('disconnected', () => !edge.publisher.status().connected, 10_000);
  for (let i = 0; i < 200; i++) edge.publishDevice('cnc-1', [speed(i, Date.now() - 300_000 + i)]);
  const again = await startBroker(t, broker.port);
  const host = await hostApp(t, again.url);
  await waitFor('reconnected', () => edge.publisher.status().connected, 10_000);
  // Most likely mid-replay (200 batches go out 4 at a time); the outcome must not depend on it.
  edge.publishDevice('cnc-new', [{ name: 'Feed/Rate', type: 'Double', value: 321, timestamp: Date.now() }]);
  await waitFor('everything delivered', () => edge.publisher.status().live && edge.buffer.depth === 0, 15_000);
  const received = () =>
    host
      .of('DDATA')
      .filter((s) => s.device === 'cnc-1')
      .flatMap((s) => s.payload.metrics.map((m) => m.value));
  // Handed to the socket is not yet received: wait for the host to have them all (or time out and compare).
  const cnc1 = await waitFor('every buffered value at the host', () => (received().length >= 200 ? received() : undefined), 5_000).catch(() => received());
  t.deepEqual(
    cnc1,
    Array.from({ length: 200 }, (_, i) => i),
  );
  const fresh = await waitFor('the new machine', () => host.of('DDATA').find((s) => s.device === 'cnc-new'), 5_000);
  t.is(fresh.payload.metrics[0]?.value, 321);
  t.truthy(host.of('DBIRTH').find((s) => s.device === 'cnc-new'));
  t.is(edge.buffer.dropped, 0);
});
