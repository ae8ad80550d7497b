import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { REPO_ROOT } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

const run = promisify(execFile);
const UNIT = join(REPO_ROOT, 'images/rootfs/usr/lib/systemd/system/ward-agent.service');

// systemd's own checker on the real unit file. verify insists that ExecStart exists, so the copy
// points it at the x64 binary from the build; everything else is the file as shipped.

async function verify(t: import('ava').ExecutionContext, text: string) {
  const file = join(await tempDir(t), 'ward-agent.service');
  await writeFile(file, text.replace('/usr/bin/ward ', `${join(REPO_ROOT, 'dist/ward-linux-x64')} `));
  try {
    const { stdout, stderr } = await run('systemd-analyze', ['verify', file]);
    return { ok: true, output: stdout + stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, output: (e.stdout ?? '') + (e.stderr ?? '') };
  }
}

test('the agent unit passes systemd-analyze verify with no warning', async (t) => {
  const result = await verify(t, await readFile(UNIT, 'utf8'));
  t.true(result.ok, result.output);
  t.is(result.output.trim(), '', 'no warnings (an unknown or misspelled key only warns)');
});

test('the check can fail: a misspelled key is reported', async (t) => {
  const text = (await readFile(UNIT, 'utf8')).replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes');
  const result = await verify(t, text);
  t.regex(result.output, /Unknown key .*NoNewPrivilege/);
});

test('the unit keeps the properties the agent relies on', async (t) => {
  const text = await readFile(UNIT, 'utf8');
  for (const line of [
    'Type=notify',
    'NotifyAccess=all',
    'WatchdogSec=30s',
    'Restart=on-failure',
    'RestartPreventExitStatus=78',
    'ProtectSystem=strict',
    'NoNewPrivileges=yes',
    'StateDirectory=ward',
    'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW',
    'PrivateTmp=yes',
  ]) {
    t.true(text.split('\n').includes(line), line);
  }
});
