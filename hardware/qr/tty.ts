import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import type { ScanEvent, ScanInput } from '../api/index.js';
import { frameScans } from '../api/scan.js';

/**
 * Scans from a USB barcode/QR scanner in keyboard (HID) mode, read from the
 * tty it types into (the console VT, e.g. /dev/tty1, with no getty on it) or
 * any stream.
 */
export class StreamScanInput implements ScanInput {
  constructor(private readonly stream: Readable) {}

  static fromTty(path: string): StreamScanInput {
    return new StreamScanInput(createReadStream(path, { encoding: 'utf8' }));
  }

  events(): AsyncIterable<ScanEvent> {
    return frameScans(this.stream);
  }

  async close(): Promise<void> {
    this.stream.destroy();
  }
}
