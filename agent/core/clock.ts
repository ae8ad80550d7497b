/**
 * Time as a dependency. Logic that checks expiry or schedules retries takes a
 * Clock so tests can move time without sleeping.
 */
export interface Clock {
  /** Wall-clock milliseconds since the epoch (may jump: NTP, RTC-less boot). */
  now(): number;
  /** Monotonic milliseconds since an arbitrary origin (never goes back). */
  monotonic(): number;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
};

/** A clock that only moves when told to. */
export class ManualClock implements Clock {
  #wall: number;
  #mono = 0;
  constructor(startWallMs = Date.UTC(2026, 0, 1)) {
    this.#wall = startWallMs;
  }
  now(): number {
    return this.#wall;
  }
  monotonic(): number {
    return this.#mono;
  }
  advance(ms: number): void {
    this.#wall += ms;
    this.#mono += ms;
  }
  /** Wall-clock jump only (an NTP correction); monotonic time is unaffected. */
  setWall(ms: number): void {
    this.#wall = ms;
  }
}
