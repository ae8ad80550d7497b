import type { AuditEventInput, AuditSink } from './core/audit.js';
import type { Logger } from './log.js';

/** The interim audit sink: one structured log line per event, marked `audit: true` for log shippers to route. */
export function logAuditSink(logger: Logger): AuditSink {
  return {
    record(event: AuditEventInput) {
      const level = event.outcome === 'success' ? 'info' : 'warn';
      logger[level]({ audit: true, ...event }, `audit: ${event.action} ${event.outcome}${event.code ? ` (${event.code})` : ''}`);
    },
  };
}
