import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Watchdog } from '../api/index.js';

const run = promisify(execFile);

/**
 * systemd's service watchdog and readiness (Type=notify, WatchdogSec=).
 * Node cannot send on a unix datagram socket, so notifications go through
 * `systemd-notify`, which (systemd ≥ 246) waits on a barrier until PID 1 has
 * read the message: with NotifyAccess=all the message from this helper
 * process is attributed to the unit reliably (sd_notify(3), "race").
 * `intervalMs` is half of WATCHDOG_USEC, the rate systemd recommends.
 */
export type Exec = (file: string, args: readonly string[], env: NodeJS.ProcessEnv) => Promise<unknown>;

export class SystemdWatchdog implements Watchdog {
  readonly kind = 'systemd';
  readonly intervalMs: number | undefined;

  constructor(
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly exec: Exec = (file, args, env) => run(file, [...args], { timeout: 10_000, env }),
  ) {
    const usec = Number(env.WATCHDOG_USEC);
    const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === process.pid;
    this.intervalMs = Number.isFinite(usec) && usec > 0 && forUs ? Math.max(1, Math.floor(usec / 2000)) : undefined;
  }

  /** True when started by systemd with a notify socket. */
  static available(env: NodeJS.ProcessEnv = process.env): boolean {
    return typeof env.NOTIFY_SOCKET === 'string' && env.NOTIFY_SOCKET.length > 0;
  }

  ready(status?: string): Promise<void> {
    return this.#notify(['READY=1', `MAINPID=${process.pid}`, ...(status ? [`STATUS=${status}`] : [])]);
  }
  ping(): Promise<void> {
    return this.#notify(['WATCHDOG=1']);
  }
  stopping(): Promise<void> {
    return this.#notify(['STOPPING=1']);
  }

  async #notify(assignments: string[]): Promise<void> {
    if (!SystemdWatchdog.available(this.env)) return;
    await this.exec('systemd-notify', assignments, this.env);
  }
}

/** No supervisor: every call is a no-op. */
export class NoWatchdog implements Watchdog {
  readonly kind = 'none';
  readonly intervalMs = undefined;
  async ready(): Promise<void> {}
  async ping(): Promise<void> {}
  async stopping(): Promise<void> {}
}
