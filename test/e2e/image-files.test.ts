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

test('the image ships an agent config the agent accepts, with no identity (waits for its QR code)', async (t) => {
  const { loadConfigFile } = await import('../../agent/config/load.js');
  const { agentConfigSchema } = await import('../../agent/config/schema.js');
  const config = await loadConfigFile(join(REPO_ROOT, 'images/rootfs/etc/ward/agent.yaml'), agentConfigSchema);
  t.is(config.deviceId, undefined);
  t.is(config.hardware.scanner, 'stdin');
  t.is(config.stateDir, '/var/lib/ward/agent');
});

test('the setup unit also passes systemd-analyze verify', async (t) => {
  const dir = await tempDir(t);
  const text = await readFile(join(REPO_ROOT, 'images/rootfs/usr/lib/systemd/system/ward-setup.service'), 'utf8');
  const file = join(dir, 'ward-setup.service');
  await writeFile(file, text.replace('/usr/libexec/ward/setup', join(REPO_ROOT, 'images/rootfs/usr/libexec/ward/setup')));
  const { stdout, stderr } = await run('systemd-analyze', ['verify', file]).catch((e: { stdout: string; stderr: string }) => e);
  t.is((stdout + stderr).trim(), '');
});

test('the boot setup script is valid POSIX sh', async (t) => {
  await t.notThrowsAsync(run('sh', ['-n', join(REPO_ROOT, 'images/rootfs/usr/libexec/ward/setup')]));
});

test('the shell scripts pass shellcheck (warnings and errors)', async (t) => {
  const scripts = [
    'images/build.sh',
    'scripts/setup.sh',
    'scripts/boot-image.sh',
    '.ci/run',
    'images/rootfs/usr/libexec/ward/setup',
    'test/fixtures/boards/make.sh',
  ];
  const result = await run('shellcheck', ['-S', 'warning', ...scripts.map((f) => join(REPO_ROOT, f))]).catch((e: { stdout: string }) => ({
    stdout: e.stdout,
    stderr: '',
  }));
  t.is(result.stdout.trim(), '');
});
