import { type Logger, pino } from 'pino';

/**
 * Structured JSON logs on stdout (journald and container runtimes pick them
 * up as-is). Synchronous destination: a gateway that crashes must not lose
 * the lines that explain why. Secrets never go in log fields; the redact
 * list is a second line of defence.
 */
export type { Logger };

export function createLogger(options: { level: string; name: string; destination?: NodeJS.WritableStream | number }): Logger {
  const dest = options.destination ?? 1;
  return pino(
    {
      name: options.name,
      level: options.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', 'token', '*.token', 'privateKey', '*.privateKey'], censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    typeof dest === 'number' ? pino.destination({ fd: dest, sync: true }) : (dest as NodeJS.WritableStream as pino.DestinationStream),
  );
}
