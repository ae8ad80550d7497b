// Child process for the audit bench: streams an export file either through the verifier (`verify`)
// or only through the line reader (`read`, the baseline), then prints one JSON line with the time
// taken and its own peak RSS (VmHWM), so memory is measured for exactly this work.
import { createReadStream, readFileSync } from 'node:fs';
import { boundedLines, verifyExport } from '../../agent/audit/export.js';

const [mode, file] = process.argv.slice(2);
if ((mode !== 'verify' && mode !== 'read') || file === undefined) throw new Error('usage: audit-verify-child verify|read <export.jsonl>');
const lines = boundedLines(createReadStream(file));
const started = performance.now();
let events = 0;
let status = 'n/a';
if (mode === 'verify') {
  const result = await verifyExport(lines);
  events = result.verdict.events;
  status = result.verdict.status;
} else {
  for await (const line of lines) if (line.startsWith('{"type":"event"')) events++;
}
const ms = performance.now() - started;
const peakKiB = Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);
process.stdout.write(`${JSON.stringify({ mode, events, ms, status, peakKiB })}\n`);
