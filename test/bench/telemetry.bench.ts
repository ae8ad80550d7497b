import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import YAML from 'yaml';
import type { AgentConfigInput } from '../../agent/config/schema.js';
import { systemClock } from '../../agent/core/clock.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { TelemetryBuffer } from '../../agent/telemetry/buffer.js';
import type { MetricPoint } from '../../agent/telemetry/metric.js';
import { SparkplugPublisher } from '../../agent/telemetry/publisher.js';
import { decodeSparkplug } from '../../agent/telemetry/sparkplug/codec.js';
import { EdgeNodeSession } from '../../agent/telemetry/sparkplug/edge-node.js';
import { type EmbeddedBroker, startEmbeddedBroker } from '../../controller/broker.js';
import type { BenchResult, Figure, Proc } from './lib.js';
import { jsonLine, median, memoryKiB, rate, round, sleep, startProcess, stopProcess, withTimeout } from './lib.js';

/**
 * Cost of telemetry (agent/telemetry: Sparkplug B edge node, store-and-forward buffer, gateway metrics; the OPC UA
 * plugin as a source of machine data), in one run:
 * 1. bytes: an NDATA of 1, 10 and 100 Double metrics (alias only, with timestamps, as EdgeNodeSession encodes it
 *    after its NBIRTH) against the same metrics as a JSON message `{timestamp, seq, metrics: [{name, value,
 *    timestamp, type}]}`;
 * 2. metrics/s the publisher sustains: SparkplugPublisher + TelemetryBuffer in this process, DDATA batches of
 *    BATCH metrics as fast as an end-to-end window of in-flight batches allows, counted by a subscriber on an
 *    aedes broker in this process; against the same metrics as JSON published with plain mqtt.js, same broker,
 *    same subscriber, same window;
 * 3. the real agent (`node scripts/ward.mjs agent run`) as its own processes against an aedes broker in this
 *    process, all three at once over the same window: (a) telemetry off, no plugins; (b) telemetry on, gateway
 *    metrics at 1 Hz, no plugins; (c) as (b) plus the OPC UA plugin subscribed to TAGS Double tags sampled at
 *    1 Hz on a server in a child process (opcua-sim-child.ts). CPU % of one core from /proc/<pid>/stat
 *    utime+stime over the window, RSS from /proc/<pid>/status sampled each second; differences and ratios
 *    against (a).
 * Every process, broker, client and temp folder is cleaned up, pass or fail.
 */
const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const BATCH = 100;
/** Batches published but not yet seen by the subscriber, at most. */
const WINDOW = 16;
const PUBLISH_SECONDS = Number(process.env.WARD_BENCH_TELEMETRY_PUBLISH_SECONDS ?? 5);
const PUBLISH_WARMUP_SECONDS = 1;
const TAGS = 100;
const AGENT_SETTLE_SECONDS = Number(process.env.WARD_BENCH_TELEMETRY_SETTLE_SECONDS ?? 5);
const AGENT_WINDOW_SECONDS = Number(process.env.WARD_BENCH_TELEMETRY_WINDOW_SECONDS ?? 30);
const AGENT_READY_TIMEOUT_MS = 90_000;
const SIZES = [1, 10, 100] as const;
/** Clock ticks per second of utime/stime in /proc/<pid>/stat: USER_HZ, 100 on every Linux architecture Ward runs on. */
const USER_HZ = 100;
const quiet = { info() {}, warn() {}, error() {}, debug() {} };

/** `count` Double metrics with plausible names and three-decimal values, all stamped `timestamp`. */
function points(count: number, step: number, timestamp: number): MetricPoint[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `Line1/Tag${String(i + 1).padStart(3, '0')}`,
    type: 'Double' as const,
    value: Math.round((500 + 400 * Math.sin(step / 7 + i) + i) * 1000) / 1000,
    timestamp,
  }));
}

/** What a JSON telemetry message carrying the same metrics would be. */
function jsonMessage(metrics: readonly MetricPoint[], seq: number, timestamp: number): string {
  return JSON.stringify({ timestamp, seq, metrics: metrics.map((m) => ({ name: m.name, value: m.value, timestamp: m.timestamp, type: m.type })) });
}

// --- 1. Bytes per message.

function sizes(): Figure[] {
  const figures: Figure[] = [];
  const now = Date.now();
  for (const n of SIZES) {
    const node = new EdgeNodeSession({ group: 'plant1', edgeNode: 'gw-bench-1', now: () => now });
    node.beginConnection(0);
    const metrics = points(n, 1, now);
    node.nodeBirth(metrics);
    const data = node.data(undefined, metrics);
    const check = decodeSparkplug(data.payload);
    if (check.metrics.length !== n || check.metrics.some((m) => m.name !== undefined || m.alias === undefined || m.timestamp !== now)) {
      throw new Error(`NDATA of ${n} metrics did not decode as ${n} alias-only metrics with timestamps`);
    }
    const json = Buffer.byteLength(jsonMessage(metrics, data.seq ?? 0, now));
    const spb = data.payload.length;
    figures.push(
      { key: `bytes.ndata_${n}`, label: `NDATA, ${n} Double metric${n === 1 ? '' : 's'} (alias only, timestamps)`, value: spb, unit: 'bytes' },
      { key: `bytes.json_${n}`, label: `  JSON, same metric${n === 1 ? '' : 's'}`, value: json, unit: 'bytes' },
      { key: `bytes.ratio_${n}`, label: '  JSON/NDATA', value: round(json / spb), unit: '×' },
    );
  }
  return figures;
}

/** Encoding alone, no I/O: what part of the publisher's cost is the protobuf encoder (points built once, outside). */
function encodeRates(): Figure[] {
  const now = Date.now();
  const node = new EdgeNodeSession({ group: 'plant1', edgeNode: 'gw-bench-1', now: () => now });
  node.beginConnection(0);
  const metrics = points(BATCH, 1, now);
  node.nodeBirth(metrics);
  let sink = 0;
  const spb = rate(
    () => {
      sink += node.data(undefined, metrics).payload.length;
    },
    { budgetMs: 1500, warmupMs: 300 },
  );
  const json = rate(
    (i) => {
      sink += jsonMessage(metrics, i % 256, now).length;
    },
    { budgetMs: 1500, warmupMs: 300 },
  );
  if (sink === 0) throw new Error('nothing encoded');
  return [
    {
      key: 'encode.spb_metrics_per_s',
      label: `encode only: NDATA of ${BATCH} metrics (EdgeNodeSession.data)`,
      value: round(spb.perSecond * BATCH),
      unit: 'metrics/s',
    },
    {
      key: 'encode.json_metrics_per_s',
      label: `encode only: JSON of ${BATCH} metrics (map + JSON.stringify)`,
      value: round(json.perSecond * BATCH),
      unit: 'metrics/s',
    },
    { key: 'encode.ratio', label: '  NDATA/JSON encode rate', value: round(spb.perSecond / json.perSecond), unit: '×' },
  ];
}

// --- 2. Publisher throughput.

interface Counter {
  messages: number;
  bytes: number;
  last: Buffer | undefined;
}

interface Throughput {
  readonly metricsPerSecond: number;
  readonly messagesPerSecond: number;
  readonly bytesPerMessage: number;
  /** CPU of this whole process (publisher, broker and subscriber) per 1000 metrics delivered, ms. */
  readonly cpuMsPer1000: number;
  readonly last: Buffer;
}

/**
 * Calls `push` (one message of BATCH metrics) whenever fewer than WINDOW pushed messages are still unseen by the
 * subscriber's `counter`; `warmupMs` untimed, then `measureMs` timed on the subscriber's side.
 */
async function drive(push: (step: number) => void, counter: Counter, arrived: { wake: (() => void) | undefined }, warmupMs: number, measureMs: number) {
  let pushed = 0;
  const base = counter.messages;
  const until = async (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end) {
      if (pushed - (counter.messages - base) < WINDOW) {
        push(pushed++);
        // Let I/O run now and then even while the window is open.
        if (pushed % WINDOW === 0) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      await withTimeout(
        new Promise<void>((r) => {
          arrived.wake = r;
        }),
        10_000,
        'subscriber receiving',
      );
    }
  };
  await until(warmupMs);
  const m0 = counter.messages;
  const b0 = counter.bytes;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await until(measureMs);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const messages = counter.messages - m0;
  // Drain what is in flight before the next case.
  const settle = performance.now() + 10_000;
  while (counter.messages - base < pushed && performance.now() < settle) await sleep(10);
  if (messages === 0 || counter.last === undefined) throw new Error('the subscriber received nothing');
  return {
    metricsPerSecond: (messages * BATCH) / seconds,
    messagesPerSecond: messages / seconds,
    bytesPerMessage: (counter.bytes - b0) / messages,
    cpuMsPer1000: (cpu.user + cpu.system) / 1000 / ((messages * BATCH) / 1000),
    last: counter.last,
  } satisfies Throughput;
}

/** Runs `body`, then whatever it registered, last first, pass or fail. */
async function withCleanups<T>(body: (cleanups: (() => unknown)[]) => Promise<T>): Promise<T> {
  const cleanups: (() => unknown)[] = [];
  try {
    return await body(cleanups);
  } finally {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`telemetry bench cleanup: ${String(err)}\n`);
      }
    }
  }
}

async function publisherThroughput(dir: string, cleanups: (() => unknown)[]): Promise<{ figures: Figure[]; notes: string[] }> {
  const broker = await startEmbeddedBroker({ host: '127.0.0.1', tcpPort: 0, wsPort: null });
  cleanups.push(() => broker.close());
  const spb: Counter = { messages: 0, bytes: 0, last: undefined };
  const json: Counter = { messages: 0, bytes: 0, last: undefined };
  const arrived: { wake: (() => void) | undefined } = { wake: undefined };
  const subscriber = await mqtt.connectAsync(broker.url, { clientId: 'bench-subscriber', reconnectPeriod: 0 });
  cleanups.push(() => subscriber.endAsync(true));
  subscriber.on('message', (topic, payload) => {
    // Counted, not decoded: the last message of each kind is decoded afterwards to check what arrived.
    const c = topic.startsWith('spBv1.0/') ? (topic.includes('/DDATA/') ? spb : undefined) : json;
    if (c === undefined) return;
    c.messages++;
    c.bytes += payload.length;
    c.last = payload;
    const wake = arrived.wake;
    arrived.wake = undefined;
    wake?.();
  });
  await subscriber.subscribeAsync([`spBv1.0/bench/#`, 'bench-json/#'], { qos: 0 });

  // Sparkplug: the agent's publisher and buffer, the device born from the start (its metrics in deviceMetrics).
  const device = 'cnc-1';
  let current = points(BATCH, 0, Date.now());
  const buffer = await TelemetryBuffer.open({ dir: join(dir, 'publisher-buffer'), maxBytes: 64 * 1024 * 1024, audit: { record() {} }, log: quiet });
  cleanups.push(() => buffer.close());
  const publisher = new SparkplugPublisher({
    group: 'bench',
    edgeNode: 'gw-bench-pub',
    primaryHostId: null,
    mqtt: {
      url: broker.url,
      clientId: 'ward-agent-gw-bench-pub:spb',
      protocol: '3.1.1',
      keepaliveSeconds: 30,
      connectTimeoutMs: 5_000,
      reconnect: { baseMs: 100, capMs: 1_000 },
    },
    buffer,
    nodeMetrics: () => [],
    deviceMetrics: () => new Map([[device, current]]),
    audit: { record() {} },
    clock: systemClock,
    log: quiet,
  });
  cleanups.push(() => publisher.stop());
  publisher.start();
  await withTimeout(
    (async () => {
      while (!publisher.status().live) await sleep(20);
    })(),
    15_000,
    'Sparkplug publisher live',
  );
  const spbRun = await drive(
    (step) => {
      current = points(BATCH, step, Date.now());
      publisher.publishDevice(device, current);
    },
    spb,
    arrived,
    PUBLISH_WARMUP_SECONDS * 1000,
    PUBLISH_SECONDS * 1000,
  );
  const status = publisher.status();
  const decoded = decodeSparkplug(spbRun.last);
  if (decoded.metrics.length !== BATCH || decoded.metrics.some((m) => m.name !== undefined || m.alias === undefined)) {
    throw new Error(`the last DDATA did not decode as ${BATCH} alias-only metrics`);
  }
  if (status.buffered.batches !== 0 || status.births !== 1) {
    throw new Error(`publisher left live during the run: ${JSON.stringify(status)}`);
  }

  // JSON baseline: plain mqtt.js, same broker, subscriber and window, QoS 0 like DDATA.
  const plain: MqttClient = await mqtt.connectAsync(broker.url, { clientId: 'bench-json-publisher', protocolVersion: 4, reconnectPeriod: 0 });
  cleanups.push(() => plain.endAsync(true));
  let seq = 0;
  const jsonRun = await drive(
    (step) => {
      const now = Date.now();
      plain.publish(`bench-json/gw-bench-pub/${device}`, jsonMessage(points(BATCH, step, now), seq++ % 256, now), { qos: 0 });
    },
    json,
    arrived,
    PUBLISH_WARMUP_SECONDS * 1000,
    PUBLISH_SECONDS * 1000,
  );
  const parsed = JSON.parse(jsonRun.last.toString('utf8')) as { metrics: unknown[] };
  if (parsed.metrics.length !== BATCH) throw new Error(`the last JSON message did not hold ${BATCH} metrics`);

  const ratio = spbRun.metricsPerSecond / jsonRun.metricsPerSecond;
  return {
    figures: [
      {
        key: 'publish.spb_metrics_per_s',
        label: `Sparkplug publisher: DDATA of ${BATCH} metrics, delivered`,
        value: round(spbRun.metricsPerSecond),
        unit: 'metrics/s',
      },
      { key: 'publish.spb_messages_per_s', label: '  messages', value: round(spbRun.messagesPerSecond), unit: 'msg/s' },
      { key: 'publish.spb_bytes_per_msg', label: '  payload per message', value: round(spbRun.bytesPerMessage), unit: 'bytes' },
      { key: 'publish.spb_cpu_ms_per_1000', label: '  bench-process CPU per 1000 metrics (all in-process)', value: round(spbRun.cpuMsPer1000), unit: 'ms' },
      {
        key: 'publish.json_metrics_per_s',
        label: `baseline: plain mqtt.js, JSON of ${BATCH} metrics, delivered`,
        value: round(jsonRun.metricsPerSecond),
        unit: 'metrics/s',
      },
      { key: 'publish.json_messages_per_s', label: '  messages', value: round(jsonRun.messagesPerSecond), unit: 'msg/s' },
      { key: 'publish.json_bytes_per_msg', label: '  payload per message', value: round(jsonRun.bytesPerMessage), unit: 'bytes' },
      { key: 'publish.json_cpu_ms_per_1000', label: '  bench-process CPU per 1000 metrics (all in-process)', value: round(jsonRun.cpuMsPer1000), unit: 'ms' },
      { key: 'publish.ratio', label: 'Sparkplug/JSON metrics per second', value: round(ratio), unit: '×' },
    ],
    notes: [
      `publisher throughput: ${PUBLISH_WARMUP_SECONDS} s warm-up then ${PUBLISH_SECONDS} s timed per case (WARD_BENCH_TELEMETRY_PUBLISH_SECONDS), Sparkplug first; each message is ${BATCH} fresh Double points (built in both cases); at most ${WINDOW} messages published and not yet received by the subscriber (end-to-end flow control, so neither broker nor socket queues grow); metrics/s counted at the subscriber; publisher, aedes and subscriber share this process and its event loop, so the figures are a lower bound for a publisher with a broker elsewhere, and the CPU per 1000 metrics includes broker and subscriber in both cases`,
      `the subscriber counts messages and bytes without decoding; the last message of each kind is decoded afterwards (Sparkplug: ${BATCH} alias-only metrics; JSON: ${BATCH} metrics); the Sparkplug case also checks the publisher stayed live (no buffering, one birth) throughout`,
    ],
  };
}

// --- 3. The real agent.

interface ProcSample {
  readonly ticks: number;
  readonly at: number;
}

async function cpuTicks(pid: number): Promise<ProcSample> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ticks: Number(rest[11]) + Number(rest[12]), at: performance.now() };
}

interface AgentCase {
  readonly key: string;
  readonly label: string;
  readonly config: Partial<AgentConfigInput>;
  /** Resolves when the agent is doing what it is measured doing. */
  readonly ready: (seen: SeenBy) => boolean;
}

interface SeenBy {
  started: boolean;
  nbirthMetrics: number;
  ndataMetrics: number;
  ddataMetrics: number;
  messages: number;
  bytes: number;
}

interface AgentResult {
  readonly cpuPercent: number;
  readonly rssMiB: number;
  readonly peakMiB: number;
  readonly received: { ndata: number; ddata: number; messages: number; bytes: number };
  readonly nbirthMetrics: number;
  readonly cleanStop: boolean;
}

async function startTagServer(dir: string, cleanups: (() => unknown)[]): Promise<{ endpointUrl: string; proc: Proc }> {
  const proc = startProcess({
    command: process.execPath,
    args: ['--import', 'tsx', join(here, 'opcua-sim-child.ts'), join(dir, 'opcua-server-pki'), String(TAGS), '250'],
    cwd: repo,
  });
  cleanups.push(() => stopProcess(proc));
  const ready = new Promise<string>((resolve) =>
    proc.onLine((line) => {
      const endpointUrl = jsonLine(line).endpointUrl;
      if (typeof endpointUrl === 'string') resolve(endpointUrl);
    }),
  );
  const endpointUrl = await withTimeout(
    Promise.race([ready, proc.exited.then((code) => Promise.reject(new Error(`OPC UA server child exited ${code}: ${proc.output()}`)))]),
    60_000,
    'OPC UA server child',
  );
  return { endpointUrl, proc };
}

async function agents(dir: string, cleanups: (() => unknown)[], progress: (m: string) => void): Promise<{ figures: Figure[]; notes: string[] }> {
  const broker: EmbeddedBroker = await startEmbeddedBroker({ host: '127.0.0.1', tcpPort: 0, wsPort: null });
  cleanups.push(() => broker.close());
  progress(`starting the OPC UA server (${TAGS} Double tags) in a child process`);
  const server = await startTagServer(dir, cleanups);

  const controllerKey = generateSigningKey().publicRaw;
  const tagNodes = Array.from({ length: TAGS }, (_, i) => {
    const id = String(i + 1).padStart(3, '0');
    return { nodeId: `ns=1;s=Bench.Tag${id}`, name: `Tags/Tag${id}`, samplingIntervalMs: 1000 };
  });
  const telemetryOn = { enabled: true, primaryHostId: null, gateway: { intervalSeconds: 1 } };
  const cases: AgentCase[] = [
    { key: 'off', label: '(a) telemetry off, no plugins', config: { telemetry: { enabled: false }, plugins: [] }, ready: (s) => s.started },
    {
      key: 'gateway',
      label: '(b) telemetry on, gateway metrics 1 Hz, no plugins',
      config: { telemetry: telemetryOn, plugins: [] },
      ready: (s) => s.started && s.nbirthMetrics > 0,
    },
    {
      key: 'opcua',
      label: `(c) as (b) + OPC UA plugin, ${TAGS} tags at 1 Hz`,
      config: {
        telemetry: telemetryOn,
        plugins: [
          {
            name: 'opcua',
            config: {
              publishingIntervalMs: 1000,
              servers: [{ name: 'cnc-bench', endpointUrl: server.endpointUrl, securityMode: 'None', nodes: tagNodes }],
            },
          },
        ],
      },
      // One DDATA carrying (nearly) every tag: the subscription runs at full size.
      ready: (s) => s.started && s.ddataMetrics >= TAGS * 2,
    },
  ];

  // One subscriber sees everything the agents publish over Sparkplug, by edge node.
  const seen = new Map<string, SeenBy>(
    cases.map((c) => [`bench-gw-${c.key}`, { started: false, nbirthMetrics: 0, ndataMetrics: 0, ddataMetrics: 0, messages: 0, bytes: 0 }]),
  );
  const host = await mqtt.connectAsync(broker.url, { clientId: 'bench-sparkplug-host', reconnectPeriod: 0 });
  cleanups.push(() => host.endAsync(true));
  host.on('message', (topic, payload) => {
    const [, , type, node] = topic.split('/');
    const s = node === undefined ? undefined : seen.get(node);
    if (s === undefined) return;
    s.messages++;
    s.bytes += payload.length;
    const metrics = decodeSparkplug(payload).metrics.length;
    if (type === 'NBIRTH') s.nbirthMetrics = metrics;
    else if (type === 'NDATA') s.ndataMetrics += metrics;
    else if (type === 'DDATA') s.ddataMetrics += metrics;
  });
  await host.subscribeAsync('spBv1.0/#', { qos: 0 });

  const running: { c: AgentCase; proc: Proc; pid: number; s: SeenBy }[] = [];
  try {
    for (const c of cases) {
      const deviceId = `bench-gw-${c.key}`;
      const agentDir = join(dir, deviceId);
      await mkdir(agentDir, { recursive: true });
      await loadOrCreateSigningKey(join(agentDir, 'state'));
      const config: AgentConfigInput = {
        deviceId,
        stateDir: join(agentDir, 'state'),
        controller: { publicKey: controllerKey },
        mqtt: { url: broker.url },
        log: { level: 'info' },
        ...c.config,
      };
      const file = join(agentDir, 'agent.yaml');
      await writeFile(file, YAML.stringify(config), { mode: 0o600 });
      const proc = startProcess({ command: process.execPath, args: ['scripts/ward.mjs', 'agent', 'run', '-c', file], cwd: repo });
      cleanups.push(() => stopProcess(proc));
      const s = seen.get(deviceId) as SeenBy;
      proc.onLine((line) => {
        if (line.includes('"msg":"agent started"')) s.started = true;
      });
      if (proc.child.pid === undefined) throw new Error(`${deviceId} did not spawn: ${proc.output()}`);
      running.push({ c, proc, pid: proc.child.pid, s });
    }
    progress(`3 agents spawned; waiting (at most ${AGENT_READY_TIMEOUT_MS / 1000} s) until each publishes what it is measured publishing`);
    const t0 = performance.now();
    await withTimeout(
      (async () => {
        while (!running.every((r) => r.c.ready(r.s))) {
          const dead = running.find((r) => r.proc.child.exitCode !== null || r.proc.child.signalCode !== null);
          if (dead)
            throw new Error(`agent ${dead.c.key} exited (${dead.proc.child.exitCode ?? dead.proc.child.signalCode}):\n${dead.proc.output().slice(-3000)}`);
          await sleep(200);
        }
      })(),
      AGENT_READY_TIMEOUT_MS,
      'agents ready',
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${running.map((r) => `--- ${r.c.key}: ${JSON.stringify(r.s)}\n${r.proc.output().slice(-2000)}`).join('\n')}`);
    });
    progress(`ready after ${Math.round((performance.now() - t0) / 1000)} s; settling ${AGENT_SETTLE_SECONDS} s, then measuring ${AGENT_WINDOW_SECONDS} s`);
    await sleep(AGENT_SETTLE_SECONDS * 1000);

    const before = await Promise.all(running.map((r) => cpuTicks(r.pid)));
    const counts0 = running.map((r) => ({ ...r.s }));
    const rss: number[][] = running.map(() => []);
    const end = performance.now() + AGENT_WINDOW_SECONDS * 1000;
    while (performance.now() < end) {
      await sleep(Math.min(1000, Math.max(0, end - performance.now())));
      const mem = await Promise.all(running.map((r) => memoryKiB(r.pid)));
      for (const [i, m] of mem.entries()) rss[i]?.push(m.rss);
    }
    const after = await Promise.all(running.map((r) => cpuTicks(r.pid)));
    const peaks = await Promise.all(running.map((r) => memoryKiB(r.pid)));
    const counts1 = running.map((r) => ({ ...r.s }));

    const results = new Map<string, AgentResult>();
    for (const [i, r] of running.entries()) {
      const b = before[i] as ProcSample;
      const a = after[i] as ProcSample;
      const c0 = counts0[i] as SeenBy;
      const c1 = counts1[i] as SeenBy;
      const seconds = (a.at - b.at) / 1000;
      results.set(r.c.key, {
        cpuPercent: ((a.ticks - b.ticks) / USER_HZ / seconds) * 100,
        rssMiB: median(rss[i] as number[]) / 1024,
        peakMiB: (peaks[i] as { peak: number }).peak / 1024,
        received: {
          ndata: (c1.ndataMetrics - c0.ndataMetrics) / seconds,
          ddata: (c1.ddataMetrics - c0.ddataMetrics) / seconds,
          messages: (c1.messages - c0.messages) / seconds,
          bytes: (c1.bytes - c0.bytes) / seconds,
        },
        nbirthMetrics: c1.nbirthMetrics,
        cleanStop: false,
      });
    }
    const stops = await Promise.all(running.map((r) => stopProcess(r.proc)));
    running.forEach((r, i) => {
      const res = results.get(r.c.key) as AgentResult;
      results.set(r.c.key, { ...res, cleanStop: stops[i]?.clean === true });
    });

    const figures: Figure[] = [];
    for (const c of cases) {
      const res = results.get(c.key) as AgentResult;
      figures.push(
        { key: `agent.${c.key}.cpu_pct`, label: `${c.label}: CPU`, value: round(res.cpuPercent), unit: '% of a core' },
        { key: `agent.${c.key}.rss_mb`, label: '  RSS (median over the window)', value: round(res.rssMiB), unit: 'MiB' },
        { key: `agent.${c.key}.peak_mb`, label: '  peak RSS (VmHWM, start-up included)', value: round(res.peakMiB), unit: 'MiB' },
      );
      if (c.key !== 'off') {
        figures.push(
          { key: `agent.${c.key}.nbirth_metrics`, label: '  node metrics declared in NBIRTH', value: res.nbirthMetrics },
          { key: `agent.${c.key}.ndata_metrics_per_s`, label: '  node metrics received (NDATA)', value: round(res.received.ndata), unit: 'metrics/s' },
          { key: `agent.${c.key}.ddata_metrics_per_s`, label: '  machine metrics received (DDATA)', value: round(res.received.ddata), unit: 'metrics/s' },
          { key: `agent.${c.key}.messages_per_s`, label: '  Sparkplug messages received', value: round(res.received.messages), unit: 'msg/s' },
          { key: `agent.${c.key}.bytes_per_s`, label: '  Sparkplug payload received', value: round(res.received.bytes), unit: 'bytes/s' },
        );
      }
      figures.push({ key: `agent.${c.key}.clean_stop`, label: '  clean stop (SIGTERM → exit 0)', value: res.cleanStop });
    }
    const off = results.get('off') as AgentResult;
    for (const c of cases.filter((x) => x.key !== 'off')) {
      const res = results.get(c.key) as AgentResult;
      const tag = c.label.slice(0, 3);
      figures.push(
        { key: `agent.${c.key}.cpu_diff_pct`, label: `${tag} − (a): CPU`, value: round(res.cpuPercent - off.cpuPercent), unit: '% of a core' },
        { key: `agent.${c.key}.cpu_ratio`, label: `${tag} / (a): CPU`, value: round(res.cpuPercent / off.cpuPercent), unit: '×' },
        { key: `agent.${c.key}.rss_diff_mb`, label: `${tag} − (a): RSS`, value: round(res.rssMiB - off.rssMiB), unit: 'MiB' },
        { key: `agent.${c.key}.rss_ratio`, label: `${tag} / (a): RSS`, value: round(res.rssMiB / off.rssMiB), unit: '×' },
      );
    }
    const opcua = results.get('opcua') as AgentResult;
    const gateway = results.get('gateway') as AgentResult;
    figures.push(
      {
        key: 'agent.opcua_vs_gateway.cpu_diff_pct',
        label: '(c) − (b): CPU (OPC UA client + 100 tags/s through telemetry)',
        value: round(opcua.cpuPercent - gateway.cpuPercent),
        unit: '% of a core',
      },
      { key: 'agent.opcua_vs_gateway.rss_diff_mb', label: '(c) − (b): RSS', value: round(opcua.rssMiB - gateway.rssMiB), unit: 'MiB' },
    );

    const serverStop = await stopProcess(server.proc);
    const updates = server.proc
      .output()
      .split('\n')
      .map(jsonLine)
      .find((l) => typeof l.updates === 'number')?.updates;
    const notes = [
      `agents: \`node scripts/ward.mjs agent run\` (from source through tsx), static identity (deviceId, controller.publicKey, mqtt.url) against an open aedes broker in this process, no controller (nothing answers the control link; all three agents alike); log level info; all three run at the same time over the same ${AGENT_WINDOW_SECONDS} s window (WARD_BENCH_TELEMETRY_WINDOW_SECONDS), after each was publishing what it is measured publishing and ${AGENT_SETTLE_SECONDS} s more; (b) and (c): primaryHostId null (births do not wait for a host STATE), gateway.intervalSeconds 1: the gateway is read every second, but only values past their deadbands are published, hence few NDATA metrics/s (slow group at its default 60 s, so listening sockets and disks are read at most once in the window)`,
      `CPU: utime+stime of the agent process (all its threads) from /proc/<pid>/stat at the start and end of the window, USER_HZ ${USER_HZ}, as % of one core; RSS: VmRSS sampled each second, median; the OPC UA server (node-opcua-server, ${TAGS} Double tags changing every 250 ms, SecurityMode None, anonymous) runs in a child process of its own${typeof updates === 'number' ? ` (${updates} updates served)` : ''}${serverStop.clean ? '' : ', and did not stop cleanly'}; the plugin subscribes to each tag with samplingIntervalMs 1000, publishingIntervalMs 1000, no deadband, so (c) should receive about ${TAGS} DDATA metrics/s`,
      'this machine is shared (see the load average): the three agents, the broker, this process and the OPC UA server compete for its cores, which inflates wall-time effects but not much the CPU time each process is charged; RSS includes the tsx loader of a source checkout (the same in every case), and when V8 collects differs from process to process: RSS differences of a few MiB (up to ~10 MiB between runs, measured) are noise, the ~40 MiB of the OPC UA client is not',
    ];
    return { figures, notes };
  } finally {
    for (const r of running) await stopProcess(r.proc);
  }
}

export default async function telemetryBench(): Promise<BenchResult> {
  const progress = (msg: string) => process.stderr.write(`  [telemetry] ${msg}\n`);
  return withCleanups(async (cleanups) => {
    const dir = await mkdtemp(join(tmpdir(), 'ward-bench-telemetry-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const figures: Figure[] = [];
    const notes: string[] = [];
    progress('bytes per message');
    figures.push(...sizes());
    notes.push(
      'bytes: payload only (MQTT topic and header excluded); NDATA as EdgeNodeSession encodes data after its NBIRTH: alias only, a timestamp per metric and one per payload, seq; the JSON names each metric (12-character names such as "Line1/Tag001", values with three decimals, ms timestamps); longer metric names widen the gap, since NDATA carries none',
    );
    progress('encoding rates (no I/O)');
    figures.push(...encodeRates());
    notes.push('encode only: best of 5 rounds over 1.5 s after a 0.3 s warm-up, the same 100 points every call (no I/O, no point construction)');
    progress(`publisher throughput (Sparkplug, then JSON; ${PUBLISH_WARMUP_SECONDS + PUBLISH_SECONDS} s each)`);
    const pub = await withCleanups((c) => publisherThroughput(dir, c));
    figures.push(...pub.figures);
    notes.push(...pub.notes);
    const agentPart = await withCleanups((c) => agents(dir, c, progress));
    figures.push(...agentPart.figures);
    notes.push(...agentPart.notes);
    return { figures, notes };
  });
}
