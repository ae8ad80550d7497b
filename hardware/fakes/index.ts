import { PassThrough } from 'node:stream';
import type { LedPattern, ScanEvent, ScanInput, StatusLed, Watchdog } from '../api/index.js';
import { frameScans } from '../api/scan.js';

/**
 * In-memory stand-ins for tests and `ward dev`. They pass the same
 * conformance suites as the drivers (test/conformance/hardware.ts). Board
 * detection needs no fake: it runs on fixture trees through hostFs(root).
 */
export class FakeLed implements StatusLed {
  readonly history: LedPattern[] = [];
  #current: LedPattern = { mode: 'off' };
  constructor(readonly name = 'fake-led') {}
  async show(pattern: LedPattern): Promise<void> {
    this.#current = { ...pattern };
    this.history.push(this.#current);
  }
  async current(): Promise<LedPattern> {
    return this.#current;
  }
}

/** Records what a supervisor would receive, in sd_notify(3) message form. */
export class FakeWatchdog implements Watchdog {
  readonly kind = 'fake';
  readonly messages: string[] = [];
  constructor(readonly intervalMs: number | undefined = 1000) {}
  async ready(status?: string): Promise<void> {
    this.messages.push(status ? `READY=1\nSTATUS=${status}` : 'READY=1');
  }
  async ping(): Promise<void> {
    this.messages.push('WATCHDOG=1');
  }
  async stopping(): Promise<void> {
    this.messages.push('STOPPING=1');
  }
}

/** A scanner whose keystrokes the test types with `type()`. */
export class FakeScanner implements ScanInput {
  readonly #stream = new PassThrough({ encoding: 'utf8' });
  type(text: string): void {
    this.#stream.write(text);
  }
  end(): void {
    this.#stream.end();
  }
  events(): AsyncIterable<ScanEvent> {
    return frameScans(this.#stream);
  }
  async close(): Promise<void> {
    this.#stream.end();
  }
}
