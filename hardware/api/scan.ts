import { MAX_SCAN_LENGTH, type ScanEvent } from './index.js';

/**
 * Frames keyboard-wedge scanner output into scans: CR, LF or CRLF end a
 * scan, empty lines are ignored, and an over-long line is reported once as
 * `rejected` and skipped up to its line end, never buffered without bound.
 * Pure over any chunk source, so the tty driver and the fake share it.
 */
export async function* frameScans(chunks: AsyncIterable<string | Uint8Array>): AsyncIterable<ScanEvent> {
  let buffer = '';
  let discarding = false;
  const tooLong = (n: number): ScanEvent => ({
    kind: 'rejected',
    reason: `a scanned line exceeded ${MAX_SCAN_LENGTH} characters (${n}): wrong device or a stuck key? Discarded.`,
  });
  for await (const chunk of chunks) {
    buffer += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    for (let end = buffer.search(/[\r\n]/); end >= 0; end = buffer.search(/[\r\n]/)) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (discarding) discarding = false;
      else if (line.length > MAX_SCAN_LENGTH) yield tooLong(line.length);
      else if (line.length > 0) yield { kind: 'scan', text: line };
    }
    if (!discarding && buffer.length > MAX_SCAN_LENGTH) {
      yield tooLong(buffer.length);
      buffer = '';
      discarding = true;
    } else if (discarding) {
      buffer = '';
    }
  }
  if (buffer.length > 0 && !discarding) yield { kind: 'scan', text: buffer };
}
