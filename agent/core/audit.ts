/**
 * Audit events, by the IEC 62443 auditable-event categories of DESIGN.md §5.
 * This is the seam the signed, chained journal (audit issue) plugs into:
 * until it lands, the sink behind it writes structured log lines, so every
 * refusal is already recorded with its category, actor, action and outcome
 * and call sites do not change when the journal arrives.
 */
export type AuditCategory = 'access-control' | 'request-error' | 'control-system' | 'configuration-change' | 'audit';

export interface AuditEventInput {
  readonly category: AuditCategory;
  /** Who acted: a device id, 'controller', 'operator', 'scanner', or 'unknown' for unauthenticated input. */
  readonly actor: string;
  readonly action: string;
  readonly target?: string;
  readonly outcome: 'success' | 'failure' | 'refused';
  /** A stable WARD_* code when the outcome is a refusal or failure. */
  readonly code?: string;
  readonly details?: Readonly<Record<string, unknown>>;
}

export interface AuditSink {
  record(event: AuditEventInput): void;
}

/** Keeps events in memory; tests assert on what was recorded. */
export class MemoryAuditSink implements AuditSink {
  readonly events: AuditEventInput[] = [];
  record(event: AuditEventInput): void {
    this.events.push(event);
  }
  find(predicate: (e: AuditEventInput) => boolean): AuditEventInput | undefined {
    return this.events.find(predicate);
  }
}

/** Fans out to several sinks (the log and a test's memory sink, say). */
export function teeAudit(...sinks: readonly AuditSink[]): AuditSink {
  return {
    record(event) {
      for (const sink of sinks) sink.record(event);
    },
  };
}
