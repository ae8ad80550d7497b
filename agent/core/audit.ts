/**
 * Audit events, by the IEC 62443 auditable-event categories of DESIGN.md §5.
 * Every module records through this one interface; the agent's sink is the
 * signed, chained journal (agent/audit), which fills in seq, times, session
 * and the hash link. `record` never throws and never waits: an audit failure
 * must not block the PLC data path (IEC 62443-4-2 CR 2.10).
 */
export const AUDIT_CATEGORIES = [
  'access-control',
  'request-error',
  'control-system',
  'backup-restore',
  'configuration-change',
  'audit',
  'reconnaissance',
] as const;
export type AuditCategory = (typeof AUDIT_CATEGORIES)[number];

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
