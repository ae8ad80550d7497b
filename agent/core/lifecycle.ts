import { ErrorCodes, WardError } from './errors.js';

/**
 * The gateway lifecycle of DESIGN.md §3 as a transition table. Pure: the
 * machine only decides; persisting the state (before acting on it) is the
 * caller's job. Invariant: `state` only ever changes through `apply()`, and
 * only along an edge listed in TRANSITIONS.
 */
export const LIFECYCLE_STATES = ['unprovisioned', 'enrolling', 'attesting', 'active', 'degraded', 'quarantined'] as const;
export type LifecycleState = (typeof LIFECYCLE_STATES)[number];

export const LIFECYCLE_EVENTS = [
  'provision', // a verified enrollment bundle was accepted
  'enrolled', // the controller issued the device certificate
  'enroll-failed', // enrollment gave up (bad/expired token, refused)
  'attest-pass',
  'attest-fail',
  'attest-stale', // evidence missing or too old
  'recovered', // fresh passing evidence after a degradation
  'reattest', // operator or controller asks a quarantined gateway to prove itself again
  'factory-reset',
] as const;
export type LifecycleEvent = (typeof LIFECYCLE_EVENTS)[number];

type Table = Readonly<Record<LifecycleState, Partial<Record<LifecycleEvent, LifecycleState>>>>;

export const TRANSITIONS: Table = Object.freeze({
  unprovisioned: { provision: 'enrolling' },
  enrolling: { enrolled: 'attesting', 'enroll-failed': 'unprovisioned', 'factory-reset': 'unprovisioned' },
  attesting: {
    'attest-pass': 'active',
    'attest-fail': 'quarantined',
    'attest-stale': 'degraded',
    'factory-reset': 'unprovisioned',
  },
  active: { 'attest-stale': 'degraded', 'attest-fail': 'quarantined', 'factory-reset': 'unprovisioned' },
  degraded: { recovered: 'active', 'attest-pass': 'active', 'attest-fail': 'quarantined', 'factory-reset': 'unprovisioned' },
  quarantined: { reattest: 'attesting', 'factory-reset': 'unprovisioned' },
});

export function isLifecycleState(value: unknown): value is LifecycleState {
  return typeof value === 'string' && (LIFECYCLE_STATES as readonly string[]).includes(value);
}

/** The next state for `event`, or a WARD_LIFECYCLE_INVALID_TRANSITION error naming what was allowed. */
export function nextState(from: LifecycleState, event: LifecycleEvent): LifecycleState {
  const to = TRANSITIONS[from][event];
  if (to === undefined) {
    const allowed = Object.keys(TRANSITIONS[from]);
    throw new WardError(
      ErrorCodes.LIFECYCLE_INVALID_TRANSITION,
      `lifecycle: '${event}' is not allowed in state '${from}' (allowed: ${allowed.join(', ') || 'none'})`,
      { details: { from, event, allowed } },
    );
  }
  return to;
}

export interface TransitionRecord {
  readonly from: LifecycleState;
  readonly to: LifecycleState;
  readonly event: LifecycleEvent;
  readonly reason: string;
  readonly at: number;
}

/** Holds the current state and tells listeners about each transition. Not re-entrant: listeners must not call apply(). */
export class Lifecycle {
  #state: LifecycleState;
  #listeners = new Set<(t: TransitionRecord) => void>();
  #applying = false;

  constructor(
    initial: LifecycleState,
    private readonly now: () => number = Date.now,
  ) {
    this.#state = initial;
  }

  get state(): LifecycleState {
    return this.#state;
  }

  can(event: LifecycleEvent): boolean {
    return TRANSITIONS[this.#state][event] !== undefined;
  }

  apply(event: LifecycleEvent, reason: string): TransitionRecord {
    if (this.#applying) throw new TypeError('Lifecycle.apply() called from a transition listener');
    const from = this.#state;
    const to = nextState(from, event);
    this.#state = to;
    const record: TransitionRecord = Object.freeze({ from, to, event, reason, at: this.now() });
    this.#applying = true;
    try {
      for (const listener of this.#listeners) listener(record);
    } finally {
      this.#applying = false;
    }
    return record;
  }

  onTransition(listener: (t: TransitionRecord) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
