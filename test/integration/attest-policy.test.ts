import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { AgentAttestation } from '../../agent/attest/service.js';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { createLogger } from '../../agent/log.js';
import { NO_POLICY_DIGEST } from '../../agent/shared/attest/evidence.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { policyDigest } from '../../agent/shared/policy/model.js';
import type { RpcHandler, RpcServer } from '../../agent/shared/rpc.js';
import { AttestationService } from '../../controller/attestation.js';
import { tempDir } from '../helpers/tmp.js';

/**
 * The policy measurement against what the controller signed, with a policy in flight: the controller publishes,
 * the gateway fetches and applies it a moment later. A challenge in that moment must not quarantine a healthy
 * gateway, and a gateway that never applies it must still be quarantined once the grace (staleAfterSeconds) ends.
 * Software evidence (no TPM); the control link is replaced by direct calls to the agent's command handler (the
 * MQTT path is covered by the e2e tests); the controller's clock is moved forward instead of waiting.
 */
const quiet = createLogger({ level: 'silent', name: 'test' });
const DEVICE = 'gw-policy-1';
const STALE_SECONDS = 30;

function policyNamed(name: string) {
  return { version: 1, name, zones: [], assets: [], flows: [] };
}

async function setup(t: ExecutionContext) {
  const dir = await tempDir(t, 'ward-attest-policy-');
  await writeFile(join(dir, 'agent.yaml'), 'stateDir: /var/lib/ward\n');
  await writeFile(join(dir, 'ward-bin'), Buffer.alloc(1024, 1));
  await mkdir(join(dir, 'enforce'));
  const activeFile = join(dir, 'enforce', 'active.json');
  const key = generateSigningKey();
  const handlers = new Map<string, RpcHandler>();
  const agent = new AgentAttestation({
    deviceId: DEVICE,
    key,
    sources: () => ({ configFile: join(dir, 'agent.yaml'), activePolicyFile: activeFile, plugins: [], executable: join(dir, 'ward-bin') }),
    tpm: undefined,
    clock: { now: () => Date.now(), monotonic: () => performance.now() },
    log: quiet,
    audit: new MemoryAuditSink(),
    claims: () => ({ bootId: 'boot', wardVersion: '0.1.0', lifecycle: 'attesting' }),
    publish: async () => {},
    onVerdict: async (v) => v.state,
  });
  agent.register({ register: (method: string, handler: RpcHandler) => handlers.set(method, handler) } as unknown as RpcServer);
  await agent.start();
  t.teardown(() => agent.stop());

  let published: string | undefined;
  let skewMs = 0;
  let silent = false;
  const service = new AttestationService({
    dir: join(dir, 'controller'),
    config: { intervalSeconds: 3600, staleAfterSeconds: STALE_SECONDS, executables: [], manifests: [] },
    keys: (kid) => (kid === key.kid ? { publicKey: key.publicKey, principal: DEVICE } : undefined),
    call: async (_id, method, params) => {
      if (silent && method !== 'attest.verdict') throw new Error('the gateway does not answer');
      const handler = handlers.get(method);
      if (!handler) throw new Error(`no handler ${method}`);
      return handler(params, {} as never);
    },
    onlineDevices: async () => [DEVICE],
    policyDigest: async () => published,
    audit: new MemoryAuditSink(),
    log: quiet,
    // Moved forward by the test; the evidence's own envelope time stays real, well inside the envelope's skew.
    clock: { now: () => Date.now() + skewMs, monotonic: () => performance.now() + skewMs },
  });
  await service.start();
  t.teardown(() => service.stop());
  return {
    service,
    publish: (policy: ReturnType<typeof policyNamed>) => {
      published = policyDigest(policy as never);
    },
    apply: (policy: ReturnType<typeof policyNamed>) => writeFile(activeFile, JSON.stringify({ policy })),
    unapply: () => rm(activeFile, { force: true }),
    advance: (seconds: number) => {
      skewMs += seconds * 1000;
    },
    challenge: (why: string) => service.challenge(DEVICE, why),
    silence: () => {
      silent = true;
    },
  };
}

test('a first policy in flight: the gateway still without it passes, then passes with it', async (t) => {
  const s = await setup(t);
  t.is((await s.challenge('before any policy')).state, 'active');
  const v1 = policyNamed('v1');
  s.publish(v1);
  const inFlight = await s.challenge('policy published, not yet applied');
  t.is(inFlight.state, 'active', inFlight.reasons.join('\n'));
  await s.apply(v1);
  t.is((await s.challenge('applied')).state, 'active');
});

test('a gateway that never applies its first policy is quarantined once the grace ends', async (t) => {
  const s = await setup(t);
  s.publish(policyNamed('v1'));
  t.is((await s.challenge('in flight')).state, 'active');
  s.advance(STALE_SECONDS + 1);
  const late = await s.challenge('grace over');
  t.is(late.state, 'quarantined');
  t.true(
    late.reasons.some((r) => r.includes('the active policy on the gateway is not the one the controller signed for it')),
    late.reasons.join('\n'),
  );
});

test('corrections published in a row: the gateway on any of the recent ones passes; a policy never signed does not', async (t) => {
  const s = await setup(t);
  const [v1, v2, v3] = [policyNamed('v1'), policyNamed('v2'), policyNamed('v3')];
  s.publish(v1);
  await s.apply(v1);
  t.is((await s.challenge('v1 applied')).state, 'active');
  s.publish(v2);
  t.is((await s.challenge('v2 published')).state, 'active');
  s.publish(v3);
  // Still on v1, two publications behind: both superseded policies are in their grace.
  const behind = await s.challenge('v3 published, gateway on v1');
  t.is(behind.state, 'active', behind.reasons.join('\n'));
  t.deepEqual(
    behind.policyRecent?.map((p) => p.digest),
    [policyDigest(v2 as never), policyDigest(v1 as never), NO_POLICY_DIGEST],
  );

  await s.apply(policyNamed('forged'));
  const forged = await s.challenge('a policy the controller never signed');
  t.is(forged.state, 'quarantined');
  t.true(
    forged.reasons.some((r) => r.startsWith('policy')),
    forged.reasons.join('\n'),
  );
});

test('a gateway that drops its policy after the grace is quarantined: "none" passes only while a first policy is in flight', async (t) => {
  const s = await setup(t);
  const v1 = policyNamed('v1');
  s.publish(v1);
  await s.apply(v1);
  t.is((await s.challenge('applied')).state, 'active');
  s.advance(STALE_SECONDS + 1);
  await s.unapply();
  const dropped = await s.challenge('policy file removed');
  t.is(dropped.state, 'quarantined', dropped.reasons.join('\n'));
});

test('a gateway that stops answering challenges is degraded by the sweep once its last pass is older than the grace', async (t) => {
  const s = await setup(t);
  t.is((await s.challenge('first')).state, 'active');
  s.silence();
  await s.service.sweep();
  t.is((await s.service.get(DEVICE))?.state, 'active', 'within the grace');
  s.advance(STALE_SECONDS + 1);
  await s.service.sweep();
  const r = await s.service.get(DEVICE);
  t.is(r?.state, 'degraded');
  t.regex(r?.reasons.join('; ') ?? '', /no passing evidence for \d+ s/);
});
