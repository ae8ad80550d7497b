import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import YAML from 'yaml';
import { parsePolicyText } from '../../agent/shared/policy/model.js';
import { LINE_POLICY } from '../helpers/enforce.js';
import { waitFor } from '../helpers/net.js';
import { createTopology, netnsUnavailable, type Topology } from '../helpers/netns.js';
import { makeDevice, spawnWard } from '../helpers/stack.js';

/**
 * `ward enforce …` as a technician at the line runs it: the real CLI in its
 * own process, nft in the gateway namespace, first with no agent running
 * (the CLI acts and journals itself), then against a running agent (the CLI
 * asks it over the local socket).
 */
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`enforce-cli: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test.serial;

async function ward(t: ExecutionContext, args: string[]): Promise<{ code: number | null; out: string }> {
  const p = spawnWard(t, args);
  const code = await p.exited;
  return { code, out: p.output() };
}

async function setup(t: ExecutionContext) {
  const topo = await createTopology('routed');
  t.teardown(() => topo.destroy());
  const device = await makeDevice(t, 'gw-cli');
  const dir = join(device.stateDir, '..');
  const config = join(dir, 'agent.yaml');
  await writeFile(
    config,
    YAML.stringify({
      stateDir: device.stateDir,
      hardware: { statusLed: 'none', watchdog: 'none' },
      enforce: { netns: topo.gw, interfaces: { UPLINK: topo.ports.UPLINK, PLC1: topo.ports.PLC1, PLC2: topo.ports.PLC2 } },
      log: { level: 'warn' },
    }),
  );
  const file = (name: string, text: string) => writeFile(join(dir, name), text).then(() => join(dir, name));
  return { topo, device, dir, config, file };
}

/** The fixture line with only the zones, assets and management SSH: what a first visit to a line starts from. */
function zonesOnly(): string {
  const p = YAML.parse(LINE_POLICY) as { mode: string; flows: { id: string }[] };
  p.mode = 'observe';
  p.flows = p.flows.filter((f) => f.id === 'mgmt-ssh');
  return YAML.stringify(p);
}

async function traffic(topo: Topology) {
  const { eng, historian, attacker, plc1 } = topo.hosts;
  await topo.listen(plc1, { tcp: [502, 4840], udp: [161] });
  await topo.listen(historian, { tcp: [8080] });
  for (let i = 0; i < 3; i++) {
    await topo.tcp(eng, plc1, 502);
    await topo.udp(historian, plc1, 161);
  }
  await topo.tcp(plc1, historian, 8080);
  await topo.tcp(attacker, plc1, 4840);
}

maybe('check, apply, status, diff, rollback and learn -> propose, with no agent running', async (t) => {
  const { topo, dir, config, file } = await setup(t);
  const good = await file('line.yaml', LINE_POLICY);
  const broken = await file('broken.yaml', LINE_POLICY.replace('services: [tcp/8080]', 'services: [tcp/80800]'));

  const check = await ward(t, ['enforce', 'check', '--policy', good]);
  t.is(check.code, 0, check.out);
  t.regex(check.out, /valid: policy line-3, 3 zone\(s\), 4 asset\(s\), 4 flow\(s\)/);
  const bad = await ward(t, ['enforce', 'check', '--policy', broken]);
  t.not(bad.code, 0);
  t.regex(bad.out, /WARD_POLICY_INVALID.*flows\.2\.services\.0: port out of range 1-65535/s);

  const applied = await ward(t, ['enforce', 'apply', '-c', config, '--policy', good, '--as', 'tech1']);
  t.is(applied.code, 0, applied.out);
  t.regex(applied.out, /applied: ward policy=line-3 version=0 digest=[0-9a-f]{16} mode=routed/);
  t.is(await topo.tcp(topo.hosts.attacker, topo.hosts.plc1, 502, 800), 'timeout', 'the CLI-applied policy is in the kernel');

  const status = await ward(t, ['enforce', 'status', '-c', config]);
  t.is(status.code, 0, status.out);
  t.regex(status.out, /from operator \(tech1\)/);
  t.regex(status.out, /kernel: holds the applied ruleset/);
  t.regex(status.out, /zone cell-a \(cell\) ENFORCE ports PLC1/);

  const observeFile = await file('observe.yaml', LINE_POLICY.replace('mode: enforce', 'mode: observe'));
  const diff = await ward(t, ['enforce', 'diff', '-c', config, '--policy', observeFile]);
  t.is(diff.code, 0, diff.out);
  t.regex(diff.out, /^-\t\tmeta l4proto \{ tcp, udp \} update @d_pair_3_1 .* counter drop/m);
  t.regex(diff.out, /^\+\t\tmeta l4proto \{ tcp, udp \} update @d_pair_3_1 .* counter accept/m);

  t.is((await ward(t, ['enforce', 'apply', '-c', config, '--policy', observeFile, '--as', 'tech1'])).code, 0);
  t.is(await topo.tcp(topo.hosts.attacker, topo.hosts.plc1, 502), 'refused', 'observe passes (nothing listens on 502 yet)');
  const rolled = await ward(t, ['enforce', 'rollback', '-c', config, '--as', 'tech2']);
  t.is(rolled.code, 0, rolled.out);
  t.is(await topo.tcp(topo.hosts.attacker, topo.hosts.plc1, 502, 800), 'timeout', 'rolled back to enforce');

  // Learn mode from a zones-only policy, real traffic, then a proposal that is itself a valid policy.
  const zones = await file('zones.yaml', zonesOnly());
  t.is((await ward(t, ['enforce', 'apply', '-c', config, '--policy', zones])).code, 0);
  const learn = await ward(t, ['enforce', 'learn', '-c', config, '--for', '2h']);
  t.is(learn.code, 0, learn.out);
  t.regex(learn.out, /learning until .*; then run ward enforce propose/);
  await traffic(topo);
  const out = join(dir, 'proposal.yaml');
  const propose = await ward(t, ['enforce', 'propose', '-c', config, '-o', out]);
  t.is(propose.code, 0, propose.out);
  t.regex(propose.out, /proposal: \d+ new flow\(s\), 1 new asset\(s\)/);
  const text = await readFile(out, 'utf8');
  const proposal = parsePolicyText(text).policy;
  const flow = (from: string, to: string) => proposal.flows.find((f) => f.from.includes(`asset:${from}`) && f.to.includes(`asset:${to}`));
  t.deepEqual(flow('eng-ws', 'press-plc')?.services, ['tcp/502']);
  t.deepEqual(flow('historian', 'press-plc')?.services, ['udp/161']);
  t.deepEqual(flow('press-plc', 'historian')?.services, ['tcp/8080']);
  t.deepEqual(flow('host-198-18-0-66', 'press-plc')?.services, ['tcp/4840'], 'the unknown attacker shows up as a new asset for the reviewer to judge');
  t.is(proposal.mode, 'observe');
  t.regex(text, /# not used during learning|# used: \d+ packet/);
  t.regex(text, /learned: \d+ packet\(s\)/);

  // Every change above is in the journal, with who made it.
  const tail = await ward(t, ['audit', 'tail', '-c', config, '-n', '200', '--json']);
  const events = tail.out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { action: string; actor: string; outcome: string });
  t.true(events.some((e) => e.action === 'enforce.policy-apply' && e.actor === 'tech1' && e.outcome === 'success'));
  t.true(events.some((e) => e.action === 'enforce.rollback' && e.actor === 'tech2' && e.outcome === 'success'));
  t.true(events.some((e) => e.action === 'enforce.learn'));
});

maybe('with the agent running, the CLI goes through its local socket (one writer of kernel and journal)', async (t) => {
  const { topo, device, config, file } = await setup(t);
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);
  const socket = join(device.stateDir, 'agent.sock');
  await waitFor('agent socket', async () => (await readFile(socket).catch((e: NodeJS.ErrnoException) => e.code)) !== 'ENOENT', 30_000);
  const good = await file('line.yaml', LINE_POLICY);
  const applied = await ward(t, ['enforce', 'apply', '-c', config, '--policy', good, '--as', 'tech3']);
  t.is(applied.code, 0, `${applied.out}\n${agent.output()}`);
  t.is(await topo.tcp(topo.hosts.attacker, topo.hosts.plc1, 502, 800), 'timeout');
  const status = await ward(t, ['enforce', 'status', '-c', config, '--json']);
  t.is(status.code, 0, status.out);
  t.like(JSON.parse(status.out), { inKernel: 'yes', active: { actor: 'tech3', source: 'operator' } });
  agent.child.kill('SIGTERM');
  t.is(await agent.exited, 0, agent.output());
  // The agent journaled the operator's change: the CLI never opened the journal while it ran.
  const tail = await ward(t, ['audit', 'tail', '-c', config, '-n', '200', '--json']);
  t.true(
    tail.out.split('\n').some((l) => l.includes('"action":"enforce.policy-apply"') && l.includes('"actor":"tech3"')),
    tail.out,
  );
  // And after the agent stopped, the rules are still in force.
  t.is(await topo.tcp(topo.hosts.attacker, topo.hosts.plc1, 502, 800), 'timeout');
});
