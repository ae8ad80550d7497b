/**
 * Capped exponential backoff with "full jitter" (AWS Architecture Blog,
 * "Exponential Backoff And Jitter"): delay = random(0, min(cap, base·2^n)),
 * floored at `minMs` so a fleet reconnecting after a broker restart does not
 * hammer it in lockstep, yet never waits less than a floor.
 */
export interface BackoffOptions {
  readonly baseMs: number;
  readonly capMs: number;
  readonly minMs?: number;
}

export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  if (!Number.isInteger(attempt) || attempt < 0) throw new TypeError(`attempt must be a non-negative integer, got ${attempt}`);
  const { baseMs, capMs } = options;
  const minMs = Math.min(options.minMs ?? 0, capMs);
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  const r = random();
  const jittered = Math.floor(Math.min(Math.max(r, 0), 1) * ceiling);
  return Math.max(minMs, jittered);
}
