/**
 * One value the telemetry publisher sends, in a form independent of the wire
 * (Sparkplug B metric types, DESIGN.md §4). Gateway health and every plugin's
 * machine samples are mapped to this before publishing, so the publisher,
 * the store-and-forward buffer and the benches share one shape.
 *
 * Names are Sparkplug metric names: '/'-separated folders, e.g.
 * `Gateway/CPU/Load` or `Spindle/Speed`.
 */
export type MetricType = 'Int32' | 'Int64' | 'UInt32' | 'UInt64' | 'Float' | 'Double' | 'Boolean' | 'String';

export interface MetricPoint {
  readonly name: string;
  readonly type: MetricType;
  /** null: no value (quality bad, or not read yet); Sparkplug sends is_null. */
  readonly value: number | boolean | string | null;
  /** ms since the epoch, when the value was read at its source. */
  readonly timestamp: number;
  /** Absent means good. */
  readonly quality?: 'good' | 'bad';
  readonly unit?: string;
}

/** What a producer of gateway metrics hands the publisher at each tick (only what changed past its deadband). */
export type MetricListener = (points: readonly MetricPoint[]) => void;
