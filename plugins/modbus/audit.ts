import type { PluginAudit, PluginAuditEvent } from '../api/index.js';

/**
 * Folds repeated audit events so a SCADA polling every 100 ms, or a scanner
 * hammering a PLC, does not flood the journal. The first event of a kind in
 * a window goes out at once (so an operator sees a new denial immediately);
 * repeats within the window are counted and go out as one event at the end
 * of the window, with the count, first and last time, and the last details.
 * Each actor (client address) has its own budget of kinds per window, so one
 * client flooding distinct denials cannot crowd out another's events; past
 * its budget (or the global one), its events are only counted, in one
 * `modbus.events-suppressed` event per actor. Events recorded with `keep`
 * (writes that reached a PLC) are never dropped: past a budget they go out
 * one by one instead of being folded. Memory stays bounded whatever a client sends.
 */
export interface AggregatorOptions {
  readonly audit: PluginAudit;
  readonly now: () => number;
  readonly windowMs: number;
  readonly maxKeys?: number;
  readonly maxKeysPerActor?: number;
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
  readonly #perActor = new Map<string, number>();
  readonly #suppressed = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: AggregatorOptions) {
    this.#o = options;
  }

  start(): void {
    this.#timer ??= setInterval(() => this.flush(), this.#o.windowMs);
    this.#timer.unref();
  }

  record(key: string, event: PluginAuditEvent, options: { keep?: boolean } = {}): void {
    const now = this.#o.now();
    const seen = this.#seen.get(key);
    if (seen) {
      seen.repeats += 1;
      seen.last = now;
      seen.event = event;
      return;
    }
    const actorKeys = this.#perActor.get(event.actor) ?? 0;
    if (this.#seen.size >= (this.#o.maxKeys ?? 5_000) || actorKeys >= (this.#o.maxKeysPerActor ?? 200)) {
      if (options.keep) this.#o.audit.record({ ...event, details: { ...event.details, count: 1, firstSeen: now, lastSeen: now } });
      else this.#suppressed.set(event.actor, (this.#suppressed.get(event.actor) ?? 0) + 1);
      return;
    }
    this.#perActor.set(event.actor, actorKeys + 1);
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
    this.#perActor.clear();
    for (const [actor, count] of this.#suppressed) {
      this.#o.audit.record({
        category: 'request-error',
        actor,
        action: 'modbus.events-suppressed',
        target: 'modbus',
        outcome: 'failure',
        details: {
          count,
          reason: `more distinct Modbus events from ${actor} in one window than the journal takes (${this.#o.maxKeysPerActor ?? 200} per client)`,
        },
      });
    }
    this.#suppressed.clear();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.flush();
  }
}
