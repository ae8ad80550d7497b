import type { AuditEventInput, AuditSink } from './core/audit.js';
import type { Logger } from './log.js';
import { sanitizeInputLenient } from './shared/audit/event.js';

/** One structured log line per audit event, marked `audit: true` for log shippers to route (the journal is the record). */
export function logAuditSink(logger: Logger): AuditSink {
  return {
    record(input: AuditEventInput) {
      // The same redaction as the journal: a log line must not carry what an event may not.
      const event = sanitizeInputLenient(input);
      const level = event.outcome === 'success' ? 'info' : 'warn';
      logger[level]({ audit: true, ...event }, `audit: ${event.action} ${event.outcome}${event.code ? ` (${event.code})` : ''}`);
    },
  };
}
