import { constants, createReadStream, openSync, statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { isatty, ReadStream } from 'node:tty';
import type { ScanEvent, ScanInput } from '../api/index.js';
import { frameScans } from '../api/scan.js';

/**
 * Scans from a USB barcode/QR scanner in keyboard (HID) mode, read from the
 * tty it types into (the console VT, e.g. /dev/tty1, with no getty on it) or
 * any stream.
 */
export class StreamScanInput implements ScanInput {
  #closed = false;
  constructor(private readonly stream: Readable) {}

  /**
   * A real tty is read through Node's tty handle (non-blocking, so close() ends a pending read);
   * anything else (a FIFO in tests) as a plain file stream.
   */
  static fromTty(path: string): StreamScanInput {
    if (statSync(path).isCharacterDevice()) {
      // O_NONBLOCK: opening a serial tty must not wait for carrier; O_NOCTTY: never become its controlling process.
      const fd = openSync(path, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
      if (isatty(fd)) {
        const tty = new ReadStream(fd);
        tty.setEncoding('utf8');
        return new StreamScanInput(tty);
      }
      return new StreamScanInput(createReadStream('', { fd, encoding: 'utf8' }));
    }
    // Opened asynchronously: opening a FIFO blocks until a writer appears.
    return new StreamScanInput(createReadStream(path, { encoding: 'utf8' }));
  }

  async *events(): AsyncIterable<ScanEvent> {
    try {
      yield* frameScans(this.stream);
    } catch (err) {
      // Destroying the stream in close() aborts the iteration ("premature close"): that is the normal end.
      if (!this.#closed) throw err;
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.stream.destroy();
  }
}
