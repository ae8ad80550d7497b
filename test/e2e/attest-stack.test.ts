import { readFile, writeFile } from 'node:fs/promises';
import test from 'ava';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import type { AttestationRecord } from '../../controller/attestation.js';
import { LINE_POLICY, nftText } from '../helpers/enforce.js';
import { waitFor } from '../helpers/net.js';
import { createTopology, netnsUnavailable } from '../helpers/netns.js';
import { getJson, makeDevice, startEnforcingAgent, startTestController } from '../helpers/stack.js';

/**
 * Issue 7's "done when": change one byte of the agent's config on disk and,
 * within the configured interval, the controller shows the gateway
 * quarantined with the reason, its write access drops to the safe policy
 * (the kernel, in the gateway's namespace, stops the engineering flow that
 * only an attested gateway may carry), and both sides logged it. Then an
 * operator approves the change and the gateway is active again.
 * Software evidence (the TPM path: test/integration/attest-tpm.test.ts).
 */
const unavailable = await netnsUnavailable();
if (unavailable) console.error(`attest-stack: skipped: ${unavailable}`);
const maybe = unavailable ? test.skip : test.serial;

maybe('one byte of the config changed: quarantined with the reason, writes drop to the safe policy, both sides log it; approval restores', async (t) => {
  const topo = await createTopology('routed');
  t.teardown(() => topo.destroy());
  const { eng, historian, plc1 } = topo.hosts;
  await topo.listen(plc1, { tcp: [502, 4840] });
  const device = await makeDevice(t, 'gw-attest-1');
  const controllerAudit = new MemoryAuditSink();
  const controller = await startTestController(t, { devices: [device], attestation: { intervalSeconds: 1, staleAfterSeconds: 60 }, audit: controllerAudit });

  // The engineering tool (tcp/4840 here) only while the gateway is attested active; the historian's polling always;
  // in quarantine only the safe flows.
  const policy = YAML.parse(LINE_POLICY) as Record<string, unknown>;
  policy.flows = [
    { id: 'eng-write', from: 'role:engineering', to: 'asset:press-plc', services: ['tcp/4840'], trust: ['active'] },
    { id: 'historian-poll', from: 'role:scada', to: 'asset:press-plc', services: ['tcp/502'] },
    { id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] },
  ];
  policy.failMode = { kind: 'safe', afterSeconds: 3600 };
  policy.safe = ['historian-poll', 'mgmt-ssh'];

  const agentAudit = new MemoryAuditSink();
  const { agent, configFile } = await startEnforcingAgent(t, {
    device,
    controller,
    enforce: { netns: topo.gw, interfaces: { UPLINK: topo.ports.UPLINK, PLC1: topo.ports.PLC1, PLC2: topo.ports.PLC2 } },
    audit: agentAudit,
  });
  const put = await getJson<{ version: number }>(`${controller.apiUrl}/api/devices/${device.id}/policy`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ policy, actor: 'alice' }),
  });
  t.is(put.status, 200);
  // The kernel follows once the re-applied ruleset is recorded (the trust state itself changes first).
  const inKernel = (level: 'active' | 'quarantined') => (agent.enforce.enforcer.active?.trust ?? 'active') === level && agent.enforce.enforcer.trust === level;
  const record = () => getJson<AttestationRecord>(`${controller.apiUrl}/api/devices/${device.id}/attestation`).then((r) => r.body);

  await waitFor(
    async () =>
      `gateway attested active; it was: agent ${agent.lifecycle.state}, ruleset ${agent.enforce.enforcer.active?.version} (want ${put.body.version}) ` +
      `trust ${agent.enforce.enforcer.active?.trust}/${agent.enforce.enforcer.trust}, controller ${JSON.stringify(await record())}`,
    async () => agent.lifecycle.state === 'active' && agent.enforce.enforcer.active?.version === put.body.version && inKernel('active'),
    // A bound, not a figure: this takes ~5 s alone, but CI runs it beside the ARM binaries under qemu.
    60_000,
  );
  t.like(await record(), { state: 'active', trust: 'software', baselineApprovedBy: 'first attestation' });
  // One probe: once the ruleset is recorded for the attested state, the flow is open. (A miss here, under load, was a
  // verdict landing during the policy apply that left the kernel compiled for the old trust; fixed in the enforcer,
  // test/integration/enforce-apply.test.ts.) A miss says what the gateway held.
  const describeMiss = async () =>
    `agent ${agent.lifecycle.state}, enforcer trust ${agent.enforce.enforcer.trust}, active ${JSON.stringify({ v: agent.enforce.enforcer.active?.version, trust: agent.enforce.enforcer.active?.trust })}; ` +
    `controller ${JSON.stringify(await record())}\n${await nftText(topo.gw, 'list', 'table', 'inet', 'ward').catch((e: unknown) => String(e))}`;
  const engineering = await topo.tcp(eng, plc1, 4840);
  t.is(engineering, 'connected', engineering === 'connected' ? undefined : await describeMiss());
  t.is(agent.lifecycle.state, 'active', 'attested: the engineering flow is open');
  t.is(await topo.tcp(historian, plc1, 502), 'connected');

  // One byte of the config on disk.
  const text = await readFile(configFile, 'utf8');
  await writeFile(configFile, text.replace('heartbeatSeconds: 60', 'heartbeatSeconds: 61'));

  await waitFor('controller shows quarantined', async () => (await record()).state === 'quarantined', 15_000);
  const q = await record();
  t.true(
    q.reasons.some((r) => r.startsWith(`config: config ${configFile} changed since it was approved`)),
    q.reasons.join('\n'),
  );
  // The agent audits its verdict once the quarantine ruleset is applied and established flows are cut (after the
  // ruleset is in the kernel): both are waited for.
  await waitFor(
    'agent quarantined, policy dropped to its safe flows, verdict audited',
    () =>
      agent.lifecycle.state === 'quarantined' &&
      inKernel('quarantined') &&
      agentAudit.find((e) => e.action === 'attest.verdict' && (e.details as { state?: string }).state === 'quarantined') !== undefined,
    15_000,
  );
  t.is(await topo.tcp(eng, plc1, 4840, 800), 'timeout', 'quarantined: the engineering flow is cut');
  t.is(await topo.tcp(historian, plc1, 502), 'connected', 'the safe flow keeps the line observable');

  t.like(
    controllerAudit.find((e) => e.action === 'attest.quarantine' && e.target === device.id),
    { outcome: 'failure', code: 'WARD_ATTEST_FAILED' },
  );
  t.truthy(
    agentAudit.find((e) => e.action === 'attest.measurement-changed'),
    'the agent reported the change itself',
  );
  t.like(
    agentAudit.find((e) => e.action === 'attest.verdict' && (e.details as { state?: string }).state === 'quarantined'),
    { outcome: 'failure', code: 'WARD_ATTEST_FAILED' },
  );
  t.like(
    agentAudit.find((e) => e.action === 'enforce.trust-change' && (e.details as { to?: string }).to === 'quarantined'),
    { outcome: 'success' },
  );

  // The change was planned: an operator approves it, the gateway attests again and is active.
  const approved = await getJson(`${controller.apiUrl}/api/devices/${device.id}/attestation/approve`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ actor: 'bob' }),
  });
  t.is(approved.status, 200);
  await waitFor('active again', () => agent.lifecycle.state === 'active' && inKernel('active'), 20_000);
  t.like(await record(), { state: 'active', baselineApprovedBy: 'bob' });
  t.is(await topo.tcp(eng, plc1, 4840), 'connected');
});
