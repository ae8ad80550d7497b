import { join } from 'node:path';
import test from 'ava';
import { netnsUnavailable } from '../helpers/netns.js';
import { REPO_ROOT, spawnProcess } from '../helpers/stack.js';

// The README's `sudo npm run demo:segmentation`, run as a person would, its narration checked.
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`demo-segmentation: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test;

maybe('the segmentation demo shows the attacker and the lateral move blocked, the engineer kept, and the events', async (t) => {
  const demo = spawnProcess(t, join(REPO_ROOT, 'node_modules/.bin/tsx'), [join(REPO_ROOT, 'scripts/demo-segmentation.mts')]);
  t.is(await demo.exited, 0, demo.output());
  const out = demo.output();
  t.regex(out, /1\. No policy[^\n]*\n\s+attacker -> PLC1 modbus \(tcp\/502\)\s+CONNECTED/);
  t.regex(out, /engineer's open session still answers:\s+yes, no reconnect/);
  t.regex(out, /3\. Switch to enforce[\s\S]*attacker -> PLC1 modbus\s+blocked/);
  t.regex(out, /PLC1 -> PLC2 modbus \(lateral\)\s+blocked/);
  t.regex(out, /enforce\.flow-denied refused actor=198\.18\.0\.66 target=198\.18\.1\.10:502\/tcp/);
  t.regex(out, /enforce\.flow-denied refused actor=198\.18\.1\.10 target=198\.18\.2\.10:502\/tcp/);
});
