import { describeError, ErrorCodes, isWardError } from '../core/errors.js';

/**
 * Process-level glue shared by the long-running commands: exit codes a
 * service manager and a person can act on, and a clean stop on SIGTERM or
 * SIGINT (a second signal forces exit).
 */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  /** sysexits.h EX_CONFIG: the configuration is wrong; restarting will not help. */
  config: 78,
} as const;

export function exitCodeFor(err: unknown): number {
  if (
    isWardError(err) &&
    (
      [
        ErrorCodes.CONFIG_INVALID,
        ErrorCodes.CONFIG_NOT_FOUND,
        ErrorCodes.CONFIG_SYNTAX,
        ErrorCodes.CONFIG_UNREADABLE,
        ErrorCodes.PLUGIN_UNKNOWN,
        ErrorCodes.PLUGIN_CONFIG_INVALID,
        ErrorCodes.PLUGIN_DEPENDENCY,
        ErrorCodes.PLUGIN_API_MISMATCH,
        ErrorCodes.KEY_INSECURE_PERMISSIONS,
        ErrorCodes.KEY_INVALID,
        ErrorCodes.STATE_CORRUPT,
        // Trust anchor and identity problems: restarting cannot fix them; an operator must (new image, reset).
        ErrorCodes.FLEET_NOT_INITIALISED,
        ErrorCodes.FLEET_ROOT_INVALID,
        ErrorCodes.FLEET_ROOT_EXPIRED,
        ErrorCodes.FLEET_ROOT_THRESHOLD,
        ErrorCodes.FLEET_CONTROLLER_CERT_INVALID,
        ErrorCodes.IDENTITY_CORRUPT,
        ErrorCodes.IDENTITY_CERT_MISMATCH,
      ] as string[]
    ).includes(err.code)
  ) {
    return ExitCode.config;
  }
  return ExitCode.failure;
}

export function fatal(err: unknown): never {
  process.stderr.write(`ward: ${describeError(err)}\n`);
  process.exit(exitCodeFor(err));
}

/** Resolves when the process is asked to stop; then runs `stop` within `timeoutMs` and exits 0 (1 if stop failed). */
export function runUntilSignal(stop: () => Promise<void>, timeoutMs: number, onSignal?: (signal: string) => void): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      process.stderr.write(`ward: second ${signal}, exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    onSignal?.(signal);
    const timer = setTimeout(() => {
      process.stderr.write(`ward: clean stop did not finish within ${timeoutMs} ms, exiting\n`);
      process.exit(ExitCode.failure);
    }, timeoutMs);
    timer.unref();
    stop().then(
      () => process.exit(ExitCode.ok),
      (err) => {
        process.stderr.write(`ward: stop failed: ${describeError(err)}\n`);
        process.exit(ExitCode.failure);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}
