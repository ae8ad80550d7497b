import { generateKeyPairSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { AgentAttestation } from '../../agent/attest/service.js';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { createLogger } from '../../agent/log.js';
import { APP_PCR } from '../../agent/shared/attest/evidence.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import type { RpcHandler, RpcServer } from '../../agent/shared/rpc.js';
import { type AttestationRecord, AttestationService } from '../../controller/attestation.js';
import type { AttestationTpm } from '../../hardware/api/index.js';
import { makeCredential, Tpm2ToolsTpm } from '../../hardware/tpm/tpm2-tools.js';
import { startSwtpm, swtpmUnavailable } from '../helpers/swtpm.js';
import { tempDir } from '../helpers/tmp.js';

/**
 * The TPM path of attestation, Attester to Verifier, with swtpm as the TPM: the controller's AttestationService
 * registers the gateway's attestation key by credential activation, then challenges and appraises quotes. The
 * control link is replaced by direct calls to the agent's command handlers (the MQTT path is covered by the
 * software e2e test); everything else is the real code and a real TPM 2.0.
 */
const unavailable = await swtpmUnavailable();
const maybe = unavailable ? test.skip : test.serial;
if (unavailable) console.error(`attest-tpm: skipped: ${unavailable}`);

const quiet = createLogger({ level: 'silent', name: 'test' });
const DEVICE = 'gw-tpm-1';

async function gatewayTpm(t: ExecutionContext): Promise<Tpm2ToolsTpm> {
  const swtpm = await startSwtpm(t);
  return new Tpm2ToolsTpm({ tcti: swtpm.tcti, dir: join(await tempDir(t, 'ward-tpm-'), 'tpm') });
}

interface Agent {
  attestation: AgentAttestation;
  handlers: Map<string, RpcHandler>;
  verdicts: string[];
}

async function agentWith(t: ExecutionContext, key: SigningKey, tpm: AttestationTpm, dir: string): Promise<Agent> {
  const handlers = new Map<string, RpcHandler>();
  const verdicts: string[] = [];
  const attestation = new AgentAttestation({
    deviceId: DEVICE,
    key,
    sources: () => ({
      configFile: join(dir, 'agent.yaml'),
      activePolicyFile: join(dir, 'enforce', 'active.json'),
      plugins: [],
      executable: join(dir, 'ward-bin'),
    }),
    tpm,
    clock: { now: () => Date.now(), monotonic: () => performance.now() },
    log: quiet,
    audit: new MemoryAuditSink(),
    claims: () => ({ bootId: 'boot', wardVersion: '0.1.0', lifecycle: 'attesting' }),
    publish: async () => {},
    onVerdict: async (v) => {
      verdicts.push(v.state);
      return v.state;
    },
  });
  attestation.register({ register: (method: string, handler: RpcHandler) => handlers.set(method, handler) } as unknown as RpcServer);
  await attestation.start();
  t.teardown(() => attestation.stop());
  return { attestation, handlers, verdicts };
}

async function setup(t: ExecutionContext) {
  const dir = await tempDir(t, 'ward-attest-tpm-');
  await writeFile(join(dir, 'agent.yaml'), 'stateDir: /var/lib/ward\n');
  await writeFile(join(dir, 'ward-bin'), Buffer.alloc(1024, 1));
  await mkdir(join(dir, 'enforce'));
  const key = generateSigningKey();
  const tpm = await gatewayTpm(t);
  let agent = await agentWith(t, key, tpm, dir);
  const audit = new MemoryAuditSink();
  const service = new AttestationService({
    dir: join(dir, 'controller'),
    config: { intervalSeconds: 3600, staleAfterSeconds: 3600, executables: [], manifests: [] },
    keys: (kid) => (kid === key.kid ? { publicKey: key.publicKey, principal: DEVICE } : undefined),
    call: async (_id, method, params) => {
      const handler = agent.handlers.get(method);
      if (!handler) throw new Error(`no handler ${method}`);
      return handler(params, {} as never);
    },
    onlineDevices: async () => [DEVICE],
    policyDigest: async () => undefined,
    makeCredential,
    audit,
    log: quiet,
  });
  await service.start();
  t.teardown(() => service.stop());
  return {
    dir,
    key,
    tpm,
    service,
    audit,
    agent: () => agent,
    swapAgent: async (next: AttestationTpm) => {
      agent = await agentWith(t, key, next, dir);
      return agent;
    },
  };
}

maybe('a TPM gateway registers its attestation key by credential activation, then passes with quotes', async (t) => {
  const s = await setup(t);
  const r: AttestationRecord = await s.service.challenge(DEVICE, 'test');
  t.is(r.state, 'active', JSON.stringify(r.history[0]));
  t.is(r.trust, 'tpm');
  t.regex(r.ak?.akName ?? '', /^000b[0-9a-f]{64}$/);
  t.is(r.ak?.publicPem, (await s.tpm.identity()).akPublicPem);
  t.truthy(s.audit.find((e) => e.action === 'attest.ak-registered'));
  t.deepEqual(s.agent().verdicts, ['active']);
  // Evidence again: still passes (the app PCR is replayed from the whole log).
  t.is((await s.service.challenge(DEVICE, 'again')).state, 'active');
});

maybe('something else extending the application PCR breaks the replay: quarantined, named', async (t) => {
  const s = await setup(t);
  t.is((await s.service.challenge(DEVICE, 'first')).state, 'active');
  await s.tpm.extendPcr(APP_PCR, Buffer.alloc(32, 0xab));
  const r = await s.service.challenge(DEVICE, 'after');
  t.is(r.state, 'quarantined');
  t.true(
    r.reasons.some((x) => x.startsWith('pcr-replay: replaying the measurement log does not give PCR 23')),
    r.reasons.join('\n'),
  );
});

maybe('a quote from another TPM (the device key copied to other hardware) is quarantined', async (t) => {
  const s = await setup(t);
  t.is((await s.service.challenge(DEVICE, 'first')).state, 'active');
  await s.swapAgent(await gatewayTpm(t));
  const r = await s.service.challenge(DEVICE, 'other hardware');
  t.is(r.state, 'quarantined');
  t.true(
    r.reasons.some((x) => x.startsWith('quote: the quote signature does not verify with the registered attestation key')),
    r.reasons.join('\n'),
  );
});

maybe('an attestation key that is not in the TPM of the reported EK fails registration', async (t) => {
  const s = await setup(t);
  const other = await gatewayTpm(t);
  const mine = await s.tpm.identity();
  // A gateway that reports another TPM's AK with its own EK: activation cannot recover the secret.
  const liar: AttestationTpm = {
    identity: async () => ({ ...(await other.identity()), ekPublicPem: mine.ekPublicPem }),
    resetPcr: (i) => other.resetPcr(i),
    extendPcr: (i, d) => other.extendPcr(i, d),
    readPcrs: (i) => other.readPcrs(i),
    quote: (q, p) => other.quote(q, p),
    activateCredential: (c) => s.tpm.activateCredential(c),
  };
  await s.swapAgent(liar);
  const r = await s.service.challenge(DEVICE, 'register');
  t.is(r.state, 'quarantined');
  t.regex(r.reasons.join('\n'), /attestation key registration: the gateway could not recover the credential's secret/);
  t.is(r.ak, undefined);
});

/** A TPM2B_PUBLIC describing a software P-256 key with the attributes of a TPM attestation key. */
function forgedAkArea(): Buffer {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' }) as { x: string; y: string };
  const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
  const sized = (b: Buffer) => Buffer.concat([u16(b.length), b]);
  const area = Buffer.concat([
    u16(0x0023), // ECC
    u16(0x000b), // sha256 name
    Buffer.from([0x00, 0x05, 0x00, 0x72]), // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign
    sized(Buffer.alloc(0)),
    u16(0x0010), // no symmetric
    u16(0x0018),
    u16(0x000b), // ecdsa sha256
    u16(0x0003), // P-256
    u16(0x0010), // no kdf
    sized(Buffer.from(jwk.x, 'base64url')),
    sized(Buffer.from(jwk.y, 'base64url')),
  ]);
  return sized(area);
}

maybe('a software key dressed up as an attestation key cannot be registered: the name it implies is not in the TPM', async (t) => {
  const s = await setup(t);
  const real = await s.tpm.identity();
  const liar: AttestationTpm = {
    identity: async () => ({ ...real, akPublic: forgedAkArea().toString('base64') }),
    resetPcr: (i) => s.tpm.resetPcr(i),
    extendPcr: (i, d) => s.tpm.extendPcr(i, d),
    readPcrs: (i) => s.tpm.readPcrs(i),
    quote: (q, p) => s.tpm.quote(q, p),
    activateCredential: (c) => s.tpm.activateCredential(c),
  };
  await s.swapAgent(liar);
  const r = await s.service.challenge(DEVICE, 'register');
  t.is(r.state, 'quarantined');
  t.regex(r.reasons.join('\n'), /the gateway could not recover the credential's secret/);
  t.is(r.ak, undefined);
});

maybe('a gateway that does not say whether it has a TPM is not taken for a software gateway', async (t) => {
  const s = await setup(t);
  s.agent().handlers.delete('attest.identity');
  const r = await s.service.challenge(DEVICE, 'register');
  t.is(r.state, 'attesting', 'no verdict from a missing answer');
  t.is(r.software, undefined);
  t.is(r.history[0]?.outcome, 'rejected');
  t.regex(JSON.stringify(r.history[0]?.findings), /did not say whether it has a TPM/);
});
