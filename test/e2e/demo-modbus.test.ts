import { join } from 'node:path';
import test from 'ava';
import { netnsUnavailable } from '../helpers/netns.js';
import { REPO_ROOT, spawnProcess } from '../helpers/stack.js';

// The README's `sudo npm run demo:modbus`, run as a person would, its narration checked.
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`demo-modbus: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test;

maybe('the Modbus demo shows reads passing, protected writes refused with exceptions and audited, the PLC unchanged', async (t) => {
  const demo = spawnProcess(t, join(REPO_ROOT, 'node_modules/.bin/tsx'), [join(REPO_ROOT, 'scripts/demo-modbus.mts')]);
  t.is(await demo.exited, 0, demo.output());
  const out = demo.output();
  t.regex(out, /read holding registers 0-2\s+values \[1234,452,1\]/);
  t.regex(out, /write 1 to holding register 500 \(protected\)\s+Modbus exception 2/);
  t.regex(out, /write 470 to setpoint 100 \(allowed\)\s+OK/);
  t.regex(out, /holding register 500: \[4242\] \(unchanged\)/);
  t.regex(out, /writes that reached the PLC: 1 /);
  t.regex(out, /read holding register 0: no answer/);
  t.regex(out, /modbus\.request-denied\s+198\.18\.0\.10\s+refused\s+fc 6 holding-registers 500\+1 values \[1\] -> exception 2/);
  t.regex(out, /modbus\.write\s+198\.18\.0\.10\s+success\s+fc 6 holding-registers 100\+1 values \[470\]/);
});
