import { get as spbNamespace } from 'sparkplug-payload';
import type { UMetric, UPayload } from 'sparkplug-payload/lib/sparkplugbpayload.js';
import type { MetricPoint } from '../metric.js';

/**
 * Sparkplug B payload encoding through `sparkplug-payload` (Eclipse Tahu's
 * protobuf schema on protobufjs). Ward only maps its own MetricPoint to the
 * library's metric shape here; the library owns the protobuf. Tests decode
 * what this produces with an independent reader (test/helpers/sparkplug-decode.ts).
 */
type Codec = { encodePayload(p: UPayload): Uint8Array; decodePayload(b: Uint8Array): UPayload };

let codec: Codec | undefined;
function spb(): Codec {
  if (codec === undefined) {
    const got = spbNamespace('spBv1.0');
    if (got === null) throw new TypeError('sparkplug-payload does not know namespace spBv1.0');
    codec = got;
  }
  return codec;
}

/** Ignition's quality convention as a metric property (not in the Sparkplug spec, read by most hosts): 0 bad, 192 good. */
export const QUALITY_BAD = 0;
export const QUALITY_GOOD = 192;

export interface EncodeOptions {
  /** Births carry names (and aliases); data carries the alias only (Sparkplug B 3.0 tck-id-payloads-alias-data-cmd-requirement). */
  readonly form: 'birth' | 'data';
  readonly alias?: (name: string) => number | undefined;
  readonly historical?: boolean;
}

export function toSparkplugMetric(point: MetricPoint, opts: EncodeOptions): UMetric {
  const alias = opts.alias?.(point.name);
  const metric: UMetric = {
    type: point.type,
    value: point.value,
    timestamp: point.timestamp,
  };
  if (opts.form === 'birth' || alias === undefined) metric.name = point.name;
  if (alias !== undefined) metric.alias = alias;
  if (opts.historical) metric.isHistorical = true;
  const properties: NonNullable<UMetric['properties']> = {};
  if (point.quality === 'bad') properties.Quality = { type: 'Int32', value: QUALITY_BAD };
  if (opts.form === 'birth' && point.unit !== undefined) properties.engUnit = { type: 'String', value: point.unit };
  if (Object.keys(properties).length > 0) metric.properties = properties;
  return metric;
}

export function encodeSparkplug(payload: { timestamp: number; seq?: number; metrics: UMetric[] }): Buffer {
  const p: UPayload = { timestamp: payload.timestamp, metrics: payload.metrics };
  if (payload.seq !== undefined) p.seq = payload.seq;
  const bytes = spb().encodePayload(p);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A decoded inbound metric, reduced to what a command handler needs. */
export interface CommandMetric {
  readonly name: string | undefined;
  readonly alias: number | undefined;
  readonly type: string;
  readonly value: unknown;
  readonly timestamp: number | undefined;
  readonly historical: boolean;
  /** From the Quality property (Ignition's convention); absent means good. */
  readonly quality: 'good' | 'bad';
  readonly unit: string | undefined;
}

/**
 * Decodes an inbound payload (NCMD, DCMD, or anything the controller reads).
 * protobufjs throws on truncated or mis-typed wire data; the caller turns
 * that into a refused-command audit event.
 */
export function decodeSparkplug(bytes: Uint8Array): { timestamp: number | undefined; seq: number | undefined; metrics: CommandMetric[] } {
  const p = spb().decodePayload(bytes);
  return {
    timestamp: p.timestamp == null ? undefined : Number(toPlain(p.timestamp)),
    seq: p.seq == null ? undefined : Number(toPlain(p.seq)),
    metrics: (p.metrics ?? []).map((m) => {
      const quality = m.properties?.Quality?.value;
      const unit = m.properties?.engUnit?.value;
      return {
        name: typeof m.name === 'string' ? m.name : undefined,
        alias: m.alias == null ? undefined : Number(m.alias),
        type: m.type,
        value: toPlain(m.value),
        timestamp: m.timestamp == null ? undefined : Number(toPlain(m.timestamp)),
        historical: m.isHistorical === true,
        quality: quality !== undefined && quality !== null && Number(toPlain(quality)) !== QUALITY_GOOD ? 'bad' : 'good',
        unit: typeof unit === 'string' ? unit : undefined,
      };
    }),
  };
}

/** protobufjs hands 64-bit values as Long objects; Ward's values fit a double (counters, ms timestamps). */
function toPlain(value: unknown): unknown {
  if (value !== null && typeof value === 'object' && 'low' in value && 'high' in value && typeof (value as { toNumber?: unknown }).toNumber === 'function') {
    return (value as unknown as { toNumber(): number }).toNumber();
  }
  return value;
}
