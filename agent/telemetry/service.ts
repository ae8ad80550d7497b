import type { TelemetrySample, TelemetrySource } from '../../plugins/api/index.js';
import { describeError } from '../core/errors.js';
import type { TelemetryBuffer } from './buffer.js';
import type { MetricPoint, MetricType } from './metric.js';
import { isSparkplugId } from './sparkplug/topics.js';

/** Where telemetry goes: the Sparkplug publisher (which buffers by itself while offline). */
export interface TelemetrySink {
  publishNode(points: readonly MetricPoint[]): void;
  publishDevice(device: string, points: readonly MetricPoint[]): void;
}

/** The gateway's own health collector (gateway.ts), reduced to what the service drives. */
export interface GatewaySource {
  start(): void;
  stop(): Promise<void>;
  /** Every current value, unfiltered: what an NBIRTH declares (and marked sent, so data after it is by exception). */
  birth(): readonly MetricPoint[];
}

export interface TelemetryServiceDeps {
  readonly buffer: TelemetryBuffer;
  /** Built with `onPoints` wired to this service's publishNode; null when gateway metrics are off. */
  readonly gateway: GatewaySource | null;
  /** The started plugins' telemetry sources (read when start() runs). */
  readonly sources: () => Readonly<Record<string, TelemetrySource>>;
  /** Samples of one machine are gathered this long, then published as one DDATA. */
  readonly flushMs: number;
  readonly now: () => number;
  readonly log: { warn(o: object, m?: string): void; info(o: object, m?: string): void };
}

/**
 * Joins every producer of telemetry (gateway health, each plugin's machine
 * samples) into one registry of current values, which the births are built
 * from, and hands changes to the sink. Samples of a machine arrive one by
 * one from a collector's poll; they are batched per machine for `flushMs` so
 * a poll becomes one DDATA rather than one message per point.
 *
 * Until a sink is attached for the first time (the gateway is not enrolled
 * yet) nothing is kept: there is nobody to forward it to. Between sinks (a
 * certificate renewal swaps the connection) data goes to the buffer and is
 * replayed by the next publisher.
 *
 * A metric's type is fixed by its first value (a host's birth certificate
 * declares it); a later value of another type is coerced where that is
 * lossless (boolean ↔ number) and otherwise published as null with bad quality.
 */
export class TelemetryService {
  readonly #d: TelemetryServiceDeps;
  #sink: TelemetrySink | undefined;
  #everAttached = false;
  readonly #node = new Map<string, MetricPoint>();
  readonly #devices = new Map<string, Map<string, MetricPoint>>();
  readonly #pending = new Map<string, MetricPoint[]>();
  #flushTimer: NodeJS.Timeout | undefined;
  readonly #unsubscribe: (() => void)[] = [];
  readonly #badNames = new Set<string>();
  #started = false;
  #coalesced = 0;

  constructor(deps: TelemetryServiceDeps) {
    this.#d = deps;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    for (const [plugin, source] of Object.entries(this.#d.sources())) {
      for (const s of source.latest()) this.#remember(s);
      this.#unsubscribe.push(source.subscribe((s) => this.#onSample(plugin, s)));
    }
    this.#d.gateway?.start();
  }

  async stop(): Promise<void> {
    for (const u of this.#unsubscribe.splice(0)) u();
    clearTimeout(this.#flushTimer);
    this.#flush();
    await this.#d.gateway?.stop();
  }

  attach(sink: TelemetrySink): void {
    this.#sink = sink;
    this.#everAttached = true;
  }

  detach(sink: TelemetrySink): void {
    if (this.#sink === sink) this.#sink = undefined;
  }

  /** Gateway metrics (already past their deadbands) and Ward's own node metrics. */
  publishNode(points: readonly MetricPoint[]): void {
    for (const p of points) this.#node.set(p.name, p);
    this.#forward(undefined, points);
  }

  /** Current node metrics for an NBIRTH: the collector's full set plus any other node metric seen. */
  nodeMetrics(): MetricPoint[] {
    const byName = new Map(this.#node);
    for (const p of this.#d.gateway?.birth() ?? []) byName.set(p.name, p);
    return [...byName.values()];
  }

  /** Samples folded into a later one of the same point because a source sent faster than they could be batched. */
  get coalesced(): number {
    return this.#coalesced;
  }

  deviceMetrics(): Map<string, MetricPoint[]> {
    const out = new Map<string, MetricPoint[]>();
    for (const [device, metrics] of this.#devices) out.set(device, [...metrics.values()]);
    return out;
  }

  #onSample(plugin: string, sample: TelemetrySample): void {
    const point = this.#remember(sample);
    if (point === undefined) {
      const key = `${plugin}\u0000${sample.device}`;
      if (!this.#badNames.has(key)) {
        this.#badNames.add(key);
        this.#d.log.warn({ plugin, device: sample.device }, 'telemetry device name is not a valid Sparkplug device id; its samples are not published');
      }
      return;
    }
    let list = this.#pending.get(sample.device);
    if (list === undefined) {
      list = [];
      this.#pending.set(sample.device, list);
    }
    list.push(point);
    // A source flooding samples (a server ignoring its sampling interval) must not grow memory or the wire: past
    // the bound, a machine's pending samples are reduced to the latest value of each point.
    if (list.length > MAX_PENDING_PER_DEVICE) {
      const latest = new Map(list.map((p) => [p.name, p]));
      this.#coalesced += list.length - latest.size;
      list.splice(0, list.length, ...latest.values());
    }
    if (this.#d.flushMs === 0) this.#flush();
    else this.#flushTimer ??= setTimeout(() => this.#flush(), this.#d.flushMs);
  }

  #remember(sample: TelemetrySample): MetricPoint | undefined {
    if (!isSparkplugId(sample.device)) return undefined;
    let metrics = this.#devices.get(sample.device);
    if (metrics === undefined) {
      metrics = new Map();
      this.#devices.set(sample.device, metrics);
    }
    const known = metrics.get(sample.point);
    const point = toMetric(sample, known?.type);
    metrics.set(sample.point, point);
    return point;
  }

  #flush(): void {
    this.#flushTimer = undefined;
    for (const [device, points] of this.#pending) this.#forward(device, points);
    this.#pending.clear();
  }

  #forward(device: string | undefined, points: readonly MetricPoint[]): void {
    if (points.length === 0) return;
    try {
      if (this.#sink) {
        if (device === undefined) this.#sink.publishNode(points);
        else this.#sink.publishDevice(device, points);
      } else if (this.#everAttached) {
        this.#d.buffer.append(device === undefined ? { points } : { device, points });
      }
    } catch (err) {
      this.#d.log.warn({ err: describeError(err), device: device ?? null }, 'telemetry not forwarded');
    }
  }
}

const MAX_PENDING_PER_DEVICE = 1_000;

/** A plugin sample as a metric of the type its first value fixed. */
export function toMetric(sample: TelemetrySample, fixed: MetricType | undefined): MetricPoint {
  const natural: MetricType = sample.dataType ?? (typeof sample.value === 'boolean' ? 'Boolean' : typeof sample.value === 'string' ? 'String' : 'Double');
  const type = fixed ?? natural;
  let value = sample.quality === 'bad' ? null : sample.value;
  let quality = sample.quality;
  if (value !== null && type !== natural) {
    const numeric = type !== 'Boolean' && type !== 'String';
    if (numeric && typeof value === 'boolean') value = value ? 1 : 0;
    else if (type === 'Boolean' && typeof value === 'number') value = value !== 0;
    else if (!(numeric && typeof value === 'number')) {
      value = null;
      quality = 'bad';
    }
  }
  return {
    name: sample.point,
    type,
    value,
    timestamp: sample.timestamp,
    ...(quality === 'bad' ? { quality: 'bad' as const } : {}),
    ...(sample.unit !== undefined ? { unit: sample.unit } : {}),
  };
}
