import type { LedPattern } from '../api/index.js';

/**
 * What a technician at the line sees (DESIGN.md §3): slow blink = waiting
 * for its QR code; quick double-rate blink = enrolling/attesting; steady =
 * active; short blips = degraded; fast blink = quarantined.
 */
export const LED_PATTERNS: Readonly<Record<string, LedPattern>> = Object.freeze({
  unprovisioned: { mode: 'blink', onMs: 1000, offMs: 1000 },
  enrolling: { mode: 'blink', onMs: 250, offMs: 250 },
  attesting: { mode: 'blink', onMs: 250, offMs: 250 },
  active: { mode: 'on' },
  degraded: { mode: 'blink', onMs: 100, offMs: 900 },
  quarantined: { mode: 'blink', onMs: 100, offMs: 100 },
});

export function patternFor(state: string): LedPattern {
  return LED_PATTERNS[state] ?? { mode: 'off' };
}
