import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { freePort, waitFor } from '../helpers/net.js';
import { getJson, spawnWard } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// The README's path, command by command, each a real `ward` process: create a fleet, certify a
// controller, run it, print an enrollment QR (PNG), provision a gateway from the picture, run the
// agent and see it online over mutual TLS; a second gateway provisioned by a "keyboard" scanner on
// stdin; then a factory reset.

const env = { WARD_FLEET_PASSPHRASE: 'a long enough test passphrase' };

async function run(t: Parameters<typeof spawnWard>[0], args: string[], options: { input?: string } = {}): Promise<string> {
  const p = spawnWard(t, args, env, options);
  const code = await p.exited;
  if (code !== 0) throw new Error(`ward ${args.join(' ')} exited ${code}:\n${p.output()}`);
  return p.output();
}

test('fleet init → controller → enrollment QR (PNG) → ward provision → agent online over mutual TLS → reset', async (t) => {
  const dir = await tempDir(t, 'ward-readme-');
  const fleetDir = join(dir, 'fleet');
  const controllerState = join(dir, 'controller');
  const initOut = await run(t, ['fleet', 'init', '--dir', fleetDir, '--name', 'plant-lyon']);
  t.regex(initOut, /fingerprint\s+[A-Za-z0-9_-]{43}/);
  t.regex(await run(t, ['fleet', 'certify-controller', '--dir', fleetDir, '--state-dir', controllerState]), /certified by the fleet root/);
  t.regex(await run(t, ['fleet', 'show', '--dir', fleetDir]), /sealed key .* opens with this passphrase/);

  const [mqttPort, apiPort] = [await freePort(), await freePort()];
  const controllerYaml = join(dir, 'controller.yaml');
  await writeFile(
    controllerYaml,
    YAML.stringify({
      stateDir: controllerState,
      broker: { embedded: { host: '127.0.0.1', tcpPort: mqttPort, wsPort: null } },
      api: { host: '127.0.0.1', port: apiPort },
      log: { level: 'warn' },
      // This test is about enrollment: no attestation verdict halfway through (that is attest-stack.test.ts).
      attestation: { intervalSeconds: 3600 },
    }),
  );
  const controller = spawnWard(t, ['controller', 'run', '-c', controllerYaml]);
  const api = `http://127.0.0.1:${apiPort}`;
  await waitFor('controller API up', () => getJson(`${api}/api/health`).catch(() => undefined), 30_000, 200);

  const png = join(dir, 'code.png');
  const svg = join(dir, 'code.svg');
  const codeOut = await run(t, [
    'controller',
    'enroll-code',
    '--site',
    'lyon',
    '--line',
    'l3',
    '--cell',
    'c12',
    '--ttl',
    '2h',
    '--api',
    api,
    '--png',
    png,
    '--svg',
    svg,
  ]);
  t.regex(codeOut, /QR version \d+ \(\d+x\d+ modules, level M\)/);
  t.true(existsSync(png));
  t.regex(await readFile(svg, 'utf8'), /^<svg/);

  const stateDir = join(dir, 'gw1', 'state');
  const agentYaml = join(dir, 'gw1', 'agent.yaml');
  await mkdir(join(dir, 'gw1'));
  await writeFile(
    agentYaml,
    YAML.stringify({
      stateDir,
      trust: { rootFile: join(fleetDir, 'root.json') },
      provisioning: { site: 'lyon', timeoutMs: 20_000 },
      hardware: { statusLed: 'none', watchdog: 'none' },
      log: { level: 'warn' },
      plugins: [{ name: 'sim', config: { periodMs: 100 } }],
    }),
  );
  const provisioned = await run(t, ['provision', '-c', agentYaml, '--image', png]);
  const deviceId = /enrolled as (gw-[0-9a-f]{12})/.exec(provisioned)?.[1];
  t.truthy(deviceId, provisioned);
  // A second scan of the same label is refused: the gateway is enrolled, and the token is burned anyway.
  const again = spawnWard(t, ['provision', '-c', agentYaml, '--image', png], env);
  t.is(await again.exited, 1);
  t.regex(again.output(), /WARD_IDENTITY_ALREADY_PROVISIONED/);

  const agent = spawnWard(t, ['agent', 'run', '-c', agentYaml]);
  const online = await waitFor(
    'gateway online over mutual TLS',
    async () => {
      if (agent.child.exitCode !== null) throw new Error(`agent exited: ${agent.output()}`);
      const { body } = await getJson<{ online: boolean; identity?: { status: string; site: string; certSerial: string } }>(`${api}/api/devices/${deviceId}`);
      return body.online ? body : undefined;
    },
    60_000,
    200,
  );
  t.is(online.identity?.status, 'active');
  t.is(online.identity?.site, 'lyon');
  const shown = JSON.parse(await run(t, ['identity', 'show', '-c', agentYaml])) as { deviceId: string; site: string; lifecycle: string };
  t.deepEqual([shown.deviceId, shown.site, shown.lifecycle], [deviceId, 'lyon', 'attesting']);

  // Re-enrollment keeps the id and key and replaces the certificates.
  const reCode = (await run(t, ['controller', 'enroll-code', '--site', 'lyon', '--line', 'l3', '--cell', 'c12', '--api', api, '--no-terminal']))
    .trim()
    .split('\n')
    .at(-1) as string;
  t.regex(await run(t, ['provision', '-c', agentYaml, '--reenroll', '--text', reCode]), new RegExp(`enrolled as ${deviceId} `));
  const afterReenroll = await getJson<{ identity: { certSerial: string } }>(`${api}/api/devices/${deviceId}`);
  t.not(afterReenroll.body.identity.certSerial, online.identity?.certSerial);

  // A USB scanner is a keyboard: the code arrives as one line on stdin.
  const codeText = (await run(t, ['controller', 'enroll-code', '--site', 'lyon', '--line', 'l3', '--cell', 'c13', '--api', api, '--no-terminal']))
    .trim()
    .split('\n')
    .at(-1) as string;
  const gw2 = join(dir, 'gw2');
  const agent2Yaml = join(gw2, 'agent.yaml');
  await mkdir(gw2);
  await writeFile(agent2Yaml, YAML.stringify({ stateDir: join(gw2, 'state'), trust: { rootFile: join(fleetDir, 'root.json') }, log: { level: 'warn' } }));
  t.regex(await run(t, ['provision', '-c', agent2Yaml], { input: `${codeText}\n` }), /enrolled as gw-[0-9a-f]{12} for lyon\/l3\/c13/);

  agent.child.kill('SIGTERM');
  t.is(await agent.exited, 0);
  t.regex(await run(t, ['identity', 'reset', '-c', agentYaml, '--yes']), /unprovisioned/);
  const reset = JSON.parse(await run(t, ['identity', 'show', '-c', agentYaml])) as { enrolled: boolean; lifecycle: string };
  t.false(reset.enrolled);
  t.is(reset.lifecycle, 'unprovisioned');
  controller.child.kill('SIGTERM');
  t.is(await controller.exited, 0);
});
