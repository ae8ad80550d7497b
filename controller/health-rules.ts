import { z } from 'zod';

/**
 * Alarm rules on gateway health (issue 8), pure: metric values in, raised and
 * cleared alarms out. A rule names a metric (`*` matches within one level,
 * so `Gateway/Disk/*\/UsedPercent` covers every mount), a condition, and how
 * long it must hold before the alarm is raised (so one spike is not an
 * incident). `action` says what a raised alarm does:
 * - `alert`: an audit event and the alarm in the API;
 * - `degrade`: also holds the gateway's trust at `degraded` (controller/
 *   attestation.ts), so its policy falls back to the degraded flows.
 */
export const alarmRuleSchema = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/),
    metric: z.string().min(1).max(256),
    /** Sparkplug device; absent: a node (gateway) metric. */
    device: z.string().optional(),
    above: z.number().optional(),
    below: z.number().optional(),
    /**
     * Raised when the value differs from the first value the controller saw (e.g. the set of listening sockets);
     * cleared when it returns to it. The baseline is kept across births, so a change made while the link was down
     * still counts.
     */
    changed: z.literal(true).optional(),
    /** Raised when a counter goes up (e.g. telemetry lost to eviction); cleared by the next value that did not. */
    increased: z.literal(true).optional(),
    /** A bad-quality or null value raises the alarm (a sensor or machine that stopped answering). */
    bad: z.literal(true).optional(),
    forSeconds: z.number().min(0).max(86_400).default(0),
    action: z.enum(['alert', 'degrade']).default('alert'),
  })
  .refine((r) => [r.above, r.below, r.changed, r.increased, r.bad].filter((c) => c !== undefined).length === 1, {
    message: 'an alarm rule needs exactly one of above, below, changed, increased, bad',
  });
export type AlarmRule = z.output<typeof alarmRuleSchema>;

/** Defaults an OT engineer would set for a Pi-class gateway; each can be replaced in the controller's config. */
export const DEFAULT_ALARM_RULES: AlarmRule[] = [
  // The audit journal and the telemetry buffer live on this disk: full means lost evidence.
  { name: 'disk-full', metric: 'Gateway/Disk/*/UsedPercent', above: 95, forSeconds: 60, action: 'degrade' },
  { name: 'memory-exhausted', metric: 'Gateway/Memory/UsedPercent', above: 95, forSeconds: 120, action: 'alert' },
  // Raspberry Pi class SoCs throttle at 80-85 °C.
  { name: 'overheating', metric: 'Gateway/CPU/Temperature', above: 80, forSeconds: 120, action: 'alert' },
  { name: 'cpu-saturated', metric: 'Gateway/CPU/Load', above: 95, forSeconds: 300, action: 'alert' },
  // A new listener on a gateway is a security signal (the agent also audits it); Ward's own proxies open ports on a
  // policy change, so this alerts rather than degrades by default.
  { name: 'listeners-changed', metric: 'Gateway/Sockets/ListeningSet', changed: true, forSeconds: 0, action: 'alert' },
  { name: 'telemetry-lost', metric: 'Ward/Telemetry/Dropped', increased: true, forSeconds: 0, action: 'alert' },
];

export interface AlarmState {
  readonly rule: string;
  readonly metric: string;
  readonly device: string | null;
  readonly action: 'alert' | 'degrade';
  readonly since: number;
  readonly value: unknown;
  readonly message: string;
}

export type AcceptOutcome =
  | { readonly ok: true; readonly alarm: AlarmState }
  | { readonly ok: false; readonly reason: 'unknown-rule' | 'not-acceptable' | 'not-raised' | 'value-changed'; readonly current?: unknown };

export type AlarmChange = { readonly kind: 'raised' | 'cleared'; readonly alarm: AlarmState };

interface Tracking {
  pendingSince?: number | undefined;
  raised?: AlarmState | undefined;
  baseline?: unknown;
  /** The last value seen (for `increased`). */
  previous?: unknown;
  /** The last value that met the condition: what an alarm raised later by `tick` shows, and what `accept` takes. */
  lastHit?: unknown;
}

/**
 * One gateway's alarms. Not a timer: `observe` and `tick` take the time, so
 * a rule's `forSeconds` is judged on the next value or tick after it elapses
 * (the controller ticks every few seconds).
 */
export class HealthAlarms {
  readonly #rules: readonly (AlarmRule & { pattern: RegExp })[];
  readonly #tracking = new Map<string, Tracking>();

  constructor(rules: readonly AlarmRule[]) {
    this.#rules = rules.map((r) => ({ ...r, pattern: globToRegExp(r.metric) }));
  }

  observe(device: string | null, metric: string, value: unknown, quality: 'good' | 'bad', now: number): AlarmChange[] {
    const changes: AlarmChange[] = [];
    for (const rule of this.#rules) {
      if ((rule.device ?? null) !== device || !rule.pattern.test(metric)) continue;
      const key = `${device ?? ''}\u0000${metric}\u0000${rule.name}`;
      let t = this.#tracking.get(key);
      if (t === undefined) {
        t = {};
        this.#tracking.set(key, t);
      }
      const bad = quality === 'bad' || value === null || value === undefined;
      let hit: boolean;
      if (rule.bad) hit = bad;
      else if (bad) continue;
      else if (rule.changed) {
        if (t.baseline === undefined) {
          t.baseline = value;
          continue;
        }
        hit = !Object.is(t.baseline, value);
      } else if (rule.increased) {
        const previous = t.previous;
        t.previous = value;
        // The first value is where counting starts; a counter that went down was reset (a new buffer).
        hit = typeof previous === 'number' && typeof value === 'number' && value > previous;
      } else {
        const n = typeof value === 'number' ? value : typeof value === 'bigint' ? Number(value) : Number.NaN;
        if (Number.isNaN(n)) continue;
        hit = rule.above !== undefined ? n > rule.above : n < (rule.below as number);
      }
      if (hit) {
        t.pendingSince ??= now;
        t.lastHit = value;
        const change = this.#maybeRaise(rule, t, device, metric, value, now);
        if (change) changes.push(change);
        else if (t.raised) t.raised = { ...t.raised, value };
      } else {
        t.pendingSince = undefined;
        if (t.raised) {
          changes.push({ kind: 'cleared', alarm: t.raised });
          t.raised = undefined;
        }
      }
    }
    return changes;
  }

  /** Raises alarms whose condition has now held long enough. */
  tick(now: number): AlarmChange[] {
    const changes: AlarmChange[] = [];
    for (const [key, t] of this.#tracking) {
      if (t.pendingSince === undefined || t.raised) continue;
      const [device, metric, name] = key.split('\u0000') as [string, string, string];
      const rule = this.#rules.find((r) => r.name === name);
      if (rule === undefined) continue;
      const change = this.#maybeRaise(rule, t, device === '' ? null : device, metric, t.lastHit, now);
      if (change) changes.push(change);
    }
    return changes;
  }

  /**
   * An operator accepts the value a `changed` alarm was raised on as the new
   * baseline (a planned change: a new proxy port, a service installed on
   * purpose), which clears it; a later change raises it again. Threshold and
   * counter alarms clear when their value does, so they cannot be accepted.
   * `expected`, when given, is the value the operator reviewed: if the metric
   * has changed again since (a second listener opened meanwhile), nothing is
   * accepted.
   */
  accept(device: string | null, metric: string, ruleName: string, expected?: unknown): AcceptOutcome {
    const rule = this.#rules.find((r) => r.name === ruleName);
    if (rule === undefined) return { ok: false, reason: 'unknown-rule' };
    if (!rule.changed) return { ok: false, reason: 'not-acceptable' };
    const t = this.#tracking.get(`${device ?? ''}\u0000${metric}\u0000${rule.name}`);
    if (t?.raised === undefined) return { ok: false, reason: 'not-raised' };
    // Compared as text: what the operator copied from the API's JSON may come back as a string for a number.
    if (expected !== undefined && String(expected) !== String(t.lastHit)) return { ok: false, reason: 'value-changed', current: t.lastHit };
    const alarm = t.raised;
    t.baseline = t.lastHit;
    t.raised = undefined;
    t.pendingSince = undefined;
    return { ok: true, alarm };
  }

  /** Every raised alarm (for the API). */
  active(): AlarmState[] {
    return [...this.#tracking.values()].flatMap((t) => (t.raised ? [t.raised] : []));
  }

  #maybeRaise(rule: AlarmRule, t: Tracking, device: string | null, metric: string, value: unknown, now: number): AlarmChange | undefined {
    if (t.raised || t.pendingSince === undefined || now - t.pendingSince < rule.forSeconds * 1000) return undefined;
    const condition =
      rule.above !== undefined
        ? `above ${rule.above}`
        : rule.below !== undefined
          ? `below ${rule.below}`
          : rule.changed
            ? 'changed'
            : rule.increased
              ? 'increased'
              : 'bad quality';
    t.raised = {
      rule: rule.name,
      metric,
      device,
      action: rule.action,
      since: now,
      value: value ?? null,
      message: `${rule.name}: ${device ? `${device} ` : ''}${metric} ${condition}${rule.forSeconds > 0 ? ` for ${rule.forSeconds} s` : ''}`,
    };
    return { kind: 'raised', alarm: t.raised };
  }
}

function globToRegExp(glob: string): RegExp {
  const escaped = glob.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*');
  return new RegExp(`^${escaped}$`);
}
