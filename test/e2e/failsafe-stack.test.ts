import { join } from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { bareNamespace, LINE_POLICY, nftText } from '../helpers/enforce.js';
import { freePort, waitFor } from '../helpers/net.js';
import { netnsUnavailable } from '../helpers/netns.js';
import { getJson, makeDevice, startEnforcingAgent, startTestController } from '../helpers/stack.js';

/**
 * Fail mode `safe` through the whole agent: a controller silent for `afterSeconds` puts the line on its safe flows
 * (the kernel in a namespace of the test's own), and the controller's return restores the full policy. The agent runs
 * in-process with its real control link; the controller (and its embedded broker) is closed and started again on the
 * same port and state.
 */
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`failsafe-stack: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test.serial;

maybe('a controller silent past afterSeconds puts the line on its safe flows; its return restores the full policy', async (t) => {
  const ns = await bareNamespace(t);
  const device = await makeDevice(t, 'gw-failsafe-1');
  const port = await freePort();
  const controllerState = join(device.stateDir, '..', 'controller-state');
  const first = await startTestController(t, { devices: [device], tcpPort: port, stateDir: controllerState });

  const policy = YAML.parse(LINE_POLICY) as Record<string, unknown>;
  policy.failMode = { kind: 'safe', afterSeconds: 60 };
  policy.safe = ['historian-poll', 'mgmt-ssh'];
  const audit = new MemoryAuditSink();
  // The shortest fail-safe delay a policy may set is 60 s: the agent's clock is moved 57 s forward when the controller
  // goes away instead of waiting (well inside the 120 s skew signed messages allow).
  let skewMs = 0;
  const { agent } = await startEnforcingAgent(t, {
    device,
    controller: first,
    enforce: { netns: ns, interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } },
    audit,
    clock: { now: () => Date.now() + skewMs, monotonic: () => performance.now() + skewMs },
  });
  const put = await getJson<{ version: number }>(`${first.apiUrl}/api/devices/${device.id}/policy`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ policy, actor: 'alice' }),
  });
  t.is(put.status, 200, JSON.stringify(put.body));
  await waitFor('the policy applied', () => agent.enforce.enforcer.active?.version === put.body.version, 30_000);
  const ruleset = () => nftText(ns, 'list', 'table', 'inet', 'ward');
  t.true((await ruleset()).includes('ward:flow:eng-program'));

  await first.close();
  await waitFor('the link down', () => agent.link?.connected === false, 30_000);
  skewMs = 57_000;
  await waitFor('fail-safe entered', () => agent.enforce.enforcer.failsafe, 30_000);
  const safe = await ruleset();
  t.regex(safe, /comment "ward policy=line-3 version=\d+ digest=[0-9a-f]+ mode=routed safe"/);
  t.true(safe.includes('ward:flow:historian-poll'));
  t.false(safe.includes('ward:flow:eng-program'), 'engineering access is not a safe flow');
  t.like(
    audit.events.find((e) => e.action === 'enforce.failsafe'),
    { outcome: 'success', details: { entered: true, reason: 'controller unreachable for 60 s' } },
  );

  await startTestController(t, { devices: [device], tcpPort: port, stateDir: controllerState });
  await waitFor('fail-safe left once the controller is back', () => agent.link?.connected && !agent.enforce.enforcer.failsafe, 30_000);
  t.true((await ruleset()).includes('ward:flow:eng-program'), 'the full policy is back');
  t.deepEqual(
    audit.events.filter((e) => e.action === 'enforce.failsafe').map((e) => (e.details as { entered: boolean }).entered),
    [true, false],
  );
});
