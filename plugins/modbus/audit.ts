import type { PluginAudit, PluginAuditEvent } from '../api/index.js';

/**
 * Folds repeated audit events so a SCADA polling every 100 ms, or a scanner
 * hammering a PLC, does not flood the journal. The first event of a kind in
 * a window goes out at once (so an operator sees a new denial immediately);
 * repeats within the window are counted and go out as one event at the end
 * of the window, with the count, first and last time, and the last details.
 * Past `maxKeys` kinds in one window, the rest is only counted, in one
 * `modbus.events-suppressed` event: memory stays bounded whatever a client sends.
 */
export interface AggregatorOptions {
  readonly audit: PluginAudit;
  readonly now: () => number;
  readonly windowMs: number;
  readonly maxKeys?: number;
}

interface Pending {
  event: PluginAuditEvent;
  repeats: number;
  first: number;
  last: number;
}

export class AuditAggregator {
  readonly #o: AggregatorOptions;
  readonly #seen = new Map<string, Pending>();
  #suppressed = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: AggregatorOptions) {
    this.#o = options;
  }

  start(): void {
    this.#timer ??= setInterval(() => this.flush(), this.#o.windowMs);
    this.#timer.unref();
  }

  record(key: string, event: PluginAuditEvent): void {
    const now = this.#o.now();
    const seen = this.#seen.get(key);
    if (seen) {
      seen.repeats += 1;
      seen.last = now;
      seen.event = event;
      return;
    }
    if (this.#seen.size >= (this.#o.maxKeys ?? 1_000)) {
      this.#suppressed += 1;
      return;
    }
    this.#seen.set(key, { event, repeats: 0, first: now, last: now });
    this.#o.audit.record({ ...event, details: { ...event.details, count: 1, firstSeen: now, lastSeen: now } });
  }

  /** Ends the window: one event per kind that repeated, then a fresh window. */
  flush(): void {
    for (const p of this.#seen.values()) {
      if (p.repeats === 0) continue;
      this.#o.audit.record({ ...p.event, details: { ...p.event.details, count: p.repeats, firstSeen: p.first, lastSeen: p.last, repeated: true } });
    }
    this.#seen.clear();
    if (this.#suppressed > 0) {
      this.#o.audit.record({
        category: 'request-error',
        actor: 'ward-agent',
        action: 'modbus.events-suppressed',
        target: 'modbus',
        outcome: 'failure',
        details: { count: this.#suppressed, reason: `more than ${this.#o.maxKeys ?? 1_000} distinct Modbus events in one window` },
      });
      this.#suppressed = 0;
    }
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.flush();
  }
}
