import { join } from 'node:path';
import { readJsonFile, writeFileAtomic } from '../state/files.js';

/**
 * Monotonic version numbers for the device's signed streams (its `state`),
 * so the controller can refuse a replayed older message. A version is
 * max(last + 1, wall-clock ms): readable as a time, yet still increasing when
 * the clock steps back (RTC-less boards boot in 1970 until NTP). The last
 * value is persisted before it is used, so a restart never reissues one.
 */
export class VersionCounter {
  #last = 0;
  #queue: Promise<unknown> = Promise.resolve();
  constructor(
    private readonly file: string,
    private readonly now: () => number = Date.now,
  ) {}

  static async open(stateDir: string, now: () => number = Date.now): Promise<VersionCounter> {
    const counter = new VersionCounter(join(stateDir, 'versions.json'), now);
    const stored = await readJsonFile(counter.file);
    const last = (stored as { last?: unknown } | undefined)?.last;
    if (typeof last === 'number' && Number.isSafeInteger(last) && last > 0) counter.#last = last;
    return counter;
  }

  get last(): number {
    return this.#last;
  }

  /** Reserves and persists the next version. Concurrent callers are served one after another, never the same number. */
  next(): Promise<number> {
    const run = this.#queue.then(async () => {
      const v = Math.max(this.#last + 1, Math.floor(this.now()));
      await writeFileAtomic(this.file, JSON.stringify({ last: v }));
      this.#last = v;
      return v;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }
}
