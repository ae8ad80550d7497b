import type { MetricPoint } from './metric.js';

/**
 * Report by exception. A gateway on a metered cellular link cannot send
 * every sample; the controller still needs to tell "steady" from "dead".
 * So a point is forwarded when it differs enough from the last value
 * *forwarded* for its name (comparing with the last forwarded rather than
 * the last seen value is what stops a slow drift from never being reported),
 * or when its name has been silent for `maxSilenceMs`.
 *
 * Pure: no I/O, no clock (time is the `nowMs` argument). The state is the
 * last forwarded point per name; the class is not safe for concurrent
 * callers interleaving `filter` and `reset` across awaits (it has none).
 */
export interface DeadbandRule {
  /**
   * Numbers: forward when |value − last forwarded| exceeds this (OPC UA
   * Part 4 §7.17.2 "exceeds": a deadband of 0 forwards any change). Only one
   * of `absolute` and `percent`; with neither, any change is forwarded.
   */
  readonly absolute?: number;
  /** Numbers: forward when |value − last| exceeds this percentage of |last| (so any change when last was 0). */
  readonly percent?: number;
  /** Forward at least this often even when unchanged. Absent: only on change. */
  readonly maxSilenceMs?: number;
}

export interface ExceptionFilterRules {
  readonly default: DeadbandRule;
  // By metric name. A key may use `*` for one or more whole folders
  // (`Gateway/Network/*/RxBytes`, `Gateway/Disk/*/UsedPercent`), since
  // interface and mount names are only known on the gateway. An exact key
  // wins over a pattern; among patterns, the first declared that matches.
  readonly byName?: Readonly<Record<string, DeadbandRule>>;
}

interface Sent {
  readonly point: MetricPoint;
  readonly at: number;
}

const RULE_KEYS = new Set(['absolute', 'percent', 'maxSilenceMs']);
const NUMERIC = new Set<MetricPoint['type']>(['Int32', 'Int64', 'UInt32', 'UInt64', 'Float', 'Double']);

export class ExceptionFilter {
  readonly #default: DeadbandRule;
  readonly #exact = new Map<string, DeadbandRule>();
  readonly #patterns: { readonly re: RegExp; readonly rule: DeadbandRule }[] = [];
  /** Rule per name, resolved once: pattern matching on every point of every tick would be wasted work. */
  readonly #resolved = new Map<string, DeadbandRule>();
  readonly #sent = new Map<string, Sent>();

  constructor(rules: ExceptionFilterRules) {
    this.#default = checkRule('default', rules.default);
    for (const [key, rule] of Object.entries(rules.byName ?? {})) {
      checkRule(key, rule);
      if (key.includes('*')) this.#patterns.push({ re: patternToRegExp(key), rule });
      else this.#exact.set(key, rule);
    }
  }

  /** The rule that applies to `name`. */
  ruleFor(name: string): DeadbandRule {
    let rule = this.#resolved.get(name);
    if (!rule) {
      rule = this.#exact.get(name) ?? this.#patterns.find((p) => p.re.test(name))?.rule ?? this.#default;
      this.#resolved.set(name, rule);
    }
    return rule;
  }

  /**
   * The points to forward, in input order, and records them as forwarded.
   * `nowMs` should be monotonic time: a wall clock stepped back by NTP on an
   * RTC-less gateway would otherwise silence every name until it caught up
   * (as a guard, time going backwards counts as the silence having expired).
   */
  filter(points: readonly MetricPoint[], nowMs: number): MetricPoint[] {
    const out: MetricPoint[] = [];
    for (const p of points) {
      const last = this.#sent.get(p.name);
      if (last === undefined || this.#due(p, last, nowMs)) {
        out.push(p);
        this.#sent.set(p.name, { point: p, at: nowMs });
      }
    }
    return out;
  }

  /**
   * Records points as forwarded without filtering them: what a birth
   * certificate carried is the baseline for the data messages after it.
   */
  prime(points: readonly MetricPoint[], nowMs: number): void {
    for (const p of points) this.#sent.set(p.name, { point: p, at: nowMs });
  }

  /** Forget everything forwarded: the next `filter` forwards every point (after a rebirth with no values, or a new session). */
  reset(): void {
    this.#sent.clear();
  }

  #due(p: MetricPoint, last: Sent, nowMs: number): boolean {
    const rule = this.ruleFor(p.name);
    if (rule.maxSilenceMs !== undefined && (nowMs - last.at >= rule.maxSilenceMs || nowMs < last.at)) return true;
    const prev = last.point;
    // Metadata and quality changes are news whatever the value did.
    if (p.type !== prev.type || p.unit !== prev.unit || (p.quality ?? 'good') !== (prev.quality ?? 'good')) return true;
    if (p.value === null || prev.value === null) return p.value !== prev.value;
    if (Object.is(p.value, prev.value)) return false;
    if (!NUMERIC.has(p.type) || typeof p.value !== 'number' || typeof prev.value !== 'number') return true;
    // NaN and ±Infinity have no distance; a change to or from them is always news.
    if (!Number.isFinite(p.value) || !Number.isFinite(prev.value)) return true;
    const delta = Math.abs(p.value - prev.value);
    if (rule.absolute !== undefined) return delta > rule.absolute;
    if (rule.percent !== undefined) return delta > (Math.abs(prev.value) * rule.percent) / 100;
    return delta > 0;
  }
}

function checkRule(name: string, rule: DeadbandRule): DeadbandRule {
  const bad = (what: string) => new TypeError(`deadband rule ${name}: ${what}`);
  if (rule.absolute !== undefined && rule.percent !== undefined) throw bad('give absolute or percent, not both');
  for (const [k, v] of Object.entries(rule)) {
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 0)) throw bad(`${k} must be a finite number ≥ 0, got ${String(v)}`);
  }
  for (const k of Object.keys(rule)) if (!RULE_KEYS.has(k)) throw bad(`unknown field ${k}`);
  return rule;
}

function patternToRegExp(key: string): RegExp {
  const parts = key.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${parts.join('[^/]+(?:/[^/]+)*')}$`);
}
