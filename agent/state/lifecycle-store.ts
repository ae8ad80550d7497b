import { join } from 'node:path';
import { ErrorCodes, WardError } from '../core/errors.js';
import { isLifecycleState, type LifecycleState, type TransitionRecord } from '../core/lifecycle.js';
import { readJsonFile, writeFileAtomic } from './files.js';

/**
 * The persisted lifecycle state. Saved *before* the agent acts on a new
 * state (CONVENTIONS.md #3), so a reboot resumes where the last decision
 * left off. A file that is present but unreadable is an error, not a silent
 * return to 'unprovisioned' (which would re-open enrollment).
 */
export class LifecycleStore {
  constructor(private readonly file: string) {}

  static in(stateDir: string): LifecycleStore {
    return new LifecycleStore(join(stateDir, 'lifecycle.json'));
  }

  async load(): Promise<LifecycleState | undefined> {
    const data = await readJsonFile(this.file);
    if (data === undefined) return undefined;
    const state = (data as { state?: unknown }).state;
    if (!isLifecycleState(state)) {
      throw new WardError(ErrorCodes.STATE_CORRUPT, `state file ${this.file} names no valid lifecycle state`, { details: { file: this.file } });
    }
    return state;
  }

  async save(t: TransitionRecord): Promise<void> {
    await writeFileAtomic(this.file, JSON.stringify({ state: t.to, since: t.at, event: t.event, reason: t.reason }));
  }
}
