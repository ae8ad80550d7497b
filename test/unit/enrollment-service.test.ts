import test, { type ExecutionContext } from 'ava';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { ManualClock } from '../../agent/core/clock.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import { readRootFile } from '../../agent/identity/trust.js';
import { verifyBundle } from '../../agent/shared/bundle.js';
import { claimIdOf, encodeClaim, newClaimCode, parseClaim } from '../../agent/shared/claim.js';
import { type Envelope, encodeEnvelope, seal } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import { ENROLL_REQUEST_TYPE } from '../../agent/shared/messages.js';
import { createCsr, generateTlsKey } from '../../agent/shared/x509.js';
import { EnrollmentService } from '../../controller/enrollment.js';
import { loadControllerFleet } from '../../controller/fleet.js';
import { DeviceRegistry } from '../../controller/registry.js';
import { MemoryDeviceStore } from '../../controller/store.js';
import { makeFleet } from '../helpers/fleet.js';
import { testLogger } from '../helpers/stack.js';

// The controller's enrollment logic without a broker: requests go in as bytes, answers are captured.
// Every refusal must leave the code open and the store without a device.

async function setup(t: ExecutionContext) {
  const fleetDir = await makeFleet(t);
  const clock = new ManualClock(Date.now());
  const { key } = await loadOrCreateSigningKey(fleetDir.controllerStateDir, 'controller-key.pem');
  const fleet = await loadControllerFleet(fleetDir.controllerStateDir, key, Math.floor(clock.now() / 1000));
  if (!fleet) throw new Error('fleet not loaded');
  const root = await readRootFile(fleetDir.rootFile, Math.floor(clock.now() / 1000));
  const store = new MemoryDeviceStore();
  const log = testLogger();
  const registry = await DeviceRegistry.open({ store, clock, devices: [], log });
  const audit = new MemoryAuditSink();
  const published: { topic: string; envelope: Envelope }[] = [];
  const publishedRaw: { topic: string; payload: Buffer }[] = [];
  const service = new EnrollmentService({
    key,
    fleet,
    store,
    registry,
    clock,
    audit,
    publish: async (topic, payload) => {
      publishedRaw.push({ topic, payload });
      // Enrollment answers are envelopes; a claim bundle is QR text (or empty, to clear it).
      if (!topic.includes('/_claim/')) published.push({ topic, envelope: JSON.parse(payload.toString()) as Envelope });
    },
    enrollBrokers: ['127.0.0.1:8884'],
    deviceBrokers: ['mqtts://127.0.0.1:8883'],
    certValidityDays: 30,
    log,
  });
  return { service, store, audit, published, publishedRaw, clock, root };
}

async function request(
  device: SigningKey,
  code: { codeId: string; token: string; site: string; line: string; cell: string },
  overrides: { sub?: string; csrCn?: string; site?: string; clock?: ManualClock } = {},
) {
  const { privateKeyPem } = await generateTlsKey();
  const sub = overrides.sub ?? 'gw-test-1';
  const csr = await createCsr({ privateKeyPem, commonName: overrides.csrCn ?? sub });
  const envelope = seal(
    device,
    {
      typ: ENROLL_REQUEST_TYPE,
      sub,
      codeId: code.codeId,
      token: code.token,
      publicKey: device.publicRaw,
      csr,
      site: overrides.site ?? code.site,
      line: code.line,
      cell: code.cell,
      agentVersion: 'test',
    },
    { ttlSeconds: 300, ...(overrides.clock ? { clock: overrides.clock } : {}) },
  );
  return encodeEnvelope(envelope);
}

async function newCode(ctx: Awaited<ReturnType<typeof setup>>, ttlSeconds = 3600) {
  const created = await ctx.service.createCode({ site: 'lyon', line: 'l3', cell: 'c12', ttlSeconds });
  const bundle = verifyBundle(created.text, { root: ctx.root, nowSec: Math.floor(ctx.clock.now() / 1000) });
  return { codeId: bundle.codeId, token: bundle.token, site: bundle.site, line: bundle.line, cell: bundle.cell };
}

function lastAnswer(ctx: Awaited<ReturnType<typeof setup>>) {
  const p = ctx.published.at(-1)?.envelope.payload as { ok: boolean; error?: { code: string } } | undefined;
  return p?.ok ? 'ok' : p?.error?.code;
}

async function assertNothingChanged(t: ExecutionContext, ctx: Awaited<ReturnType<typeof setup>>, codeId: string) {
  t.is((await ctx.store.getCode(codeId))?.status, 'open', 'the code is still open');
  t.deepEqual(await ctx.store.list(), [], 'no device was created');
}

test('a valid request is answered with certificates and burns the code; the same token again is refused as used', async (t) => {
  const ctx = await setup(t);
  const code = await newCode(ctx, 600);
  const device = generateSigningKey();
  await ctx.service.handleEnrollRequest(code.codeId, await request(device, code));
  t.is(lastAnswer(ctx), 'ok');
  t.is((await ctx.store.getCode(code.codeId))?.status, 'used');
  t.is((await ctx.store.get('gw-test-1'))?.identity?.status, 'active');
  for (const [who, key, sub] of [
    ['another gateway', generateSigningKey(), 'gw-test-2'],
    ['another key claiming the same id', generateSigningKey(), 'gw-test-1'],
  ] as const) {
    await ctx.service.handleEnrollRequest(code.codeId, await request(key, code, { sub }));
    t.is(lastAnswer(ctx), 'WARD_ENROLL_TOKEN_USED', who);
  }
  t.is(await ctx.store.get('gw-test-2'), undefined);

  // The answer was lost on the way: the same gateway scanning the same label again gets certificates again.
  await ctx.service.handleEnrollRequest(code.codeId, await request(device, code));
  t.is(lastAnswer(ctx), 'ok');
  t.is((await ctx.store.get('gw-test-1'))?.identity?.serials.length, 2);
  t.truthy(ctx.audit.find((e) => e.action === 'device.enroll.redeliver'));
  t.true(await ctx.service.checkToken(code.codeId, code.token), 'its account stays open until the code expires');
  ctx.clock.advance(601_000);
  t.false(await ctx.service.checkToken(code.codeId, code.token), 'and closes then');
  await ctx.service.handleEnrollRequest(code.codeId, await request(device, code, { clock: ctx.clock }));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_TOKEN_USED');
});

test('refusals: wrong site, CSR for another id, wrong token, expired code, forged signature; none changes state', async (t) => {
  const ctx = await setup(t);
  const code = await newCode(ctx, 600);
  const device = generateSigningKey();
  const cases: [string, Buffer, string | undefined][] = [
    ['request for another site', await request(device, code, { site: 'paris' }), 'WARD_ENROLL_WRONG_SITE'],
    ['CSR for another device id', await request(device, code, { csrCn: 'gw-victim' }), 'WARD_X509_BAD_CSR'],
    ['wrong token', await request(device, { ...code, token: Buffer.alloc(16, 7).toString('base64url') }), 'WARD_ENROLL_TOKEN_UNKNOWN'],
  ];
  for (const [name, raw, expected] of cases) {
    await ctx.service.handleEnrollRequest(code.codeId, raw);
    t.is(lastAnswer(ctx), expected, name);
    t.truthy(
      ctx.audit.find((e) => e.outcome === 'refused' && e.code === expected),
      `audit for ${name}`,
    );
  }
  // A forged request: signed by one key, claiming another. There is no nonce to answer; it is audited.
  const forged = JSON.parse((await request(device, code)).toString()) as Envelope;
  const other = generateSigningKey();
  const answersBefore = ctx.published.length;
  await ctx.service.handleEnrollRequest(code.codeId, Buffer.from(JSON.stringify({ ...forged, payload: { ...forged.payload, publicKey: other.publicRaw } })));
  t.is(ctx.published.length, answersBefore, 'no answer to an unauthenticated request');
  t.truthy(ctx.audit.find((e) => e.outcome === 'refused' && e.code === 'WARD_ENVELOPE_UNKNOWN_KEY'));
  await ctx.service.handleEnrollRequest(code.codeId, Buffer.from('garbage'));
  t.truthy(ctx.audit.find((e) => e.outcome === 'refused' && e.code === 'WARD_ENVELOPE_NOT_JSON'));
  await assertNothingChanged(t, ctx, code.codeId);

  ctx.clock.advance(601_000);
  await ctx.service.handleEnrollRequest(code.codeId, await request(device, code, { clock: ctx.clock }));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_TOKEN_EXPIRED');
  await assertNothingChanged(t, ctx, code.codeId);
});

test('a device id bound to another key is refused, a revoked device cannot re-enroll, and revocation untrusts its key', async (t) => {
  const ctx = await setup(t);
  const first = generateSigningKey();
  const c1 = await newCode(ctx);
  await ctx.service.handleEnrollRequest(c1.codeId, await request(first, c1));
  t.is(lastAnswer(ctx), 'ok');
  const c2 = await newCode(ctx);
  await ctx.service.handleEnrollRequest(c2.codeId, await request(generateSigningKey(), c2));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_ID_TAKEN');
  t.is((await ctx.store.getCode(c2.codeId))?.status, 'open');
  // Same key, new code: re-enrollment keeps the identity and adds a certificate.
  await ctx.service.handleEnrollRequest(c2.codeId, await request(first, c2));
  t.is(lastAnswer(ctx), 'ok');
  t.is((await ctx.store.get('gw-test-1'))?.identity?.serials.length, 2);

  await ctx.service.revoke('gw-test-1', 'test');
  t.false(await ctx.service.isDeviceActive('gw-test-1'));
  const c3 = await newCode(ctx);
  await ctx.service.handleEnrollRequest(c3.codeId, await request(first, c3));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_DEVICE_REVOKED');
  t.is((await ctx.store.getCode(c3.codeId))?.status, 'open');
});

test('codes: ttl bounds and labels are checked, listing never shows token hashes', async (t) => {
  const ctx = await setup(t);
  await t.throwsAsync(ctx.service.createCode({ site: 'lyon', line: 'l3', cell: 'c12', ttlSeconds: 10 }), { code: 'WARD_ENROLL_REFUSED' });
  await t.throwsAsync(ctx.service.createCode({ site: 'lyon plant', line: 'l3', cell: 'c12', ttlSeconds: 3600 }), { code: 'WARD_ENROLL_REFUSED' });
  await newCode(ctx);
  const listed = await ctx.service.listCodes();
  t.is(listed.length, 1);
  t.false(JSON.stringify(listed).includes('Hash'));
});

test('claim flow: a confirmed claim yields a code bound to the claimed key and id; anyone else is refused', async (t) => {
  const ctx = await setup(t);
  const device = generateSigningKey();
  const claimCode = newClaimCode();
  const text = encodeClaim({ deviceId: 'gw-claimed', kid: device.kid, claimCode });
  t.deepEqual(parseClaim(text), { deviceId: 'gw-claimed', kid: device.kid, claimCode, claimId: claimIdOf(device.kid) });
  for (const bad of ['', 'WARDC1:', 'WARDC1:ZZZ', text.slice(0, -4), text.toLowerCase()]) {
    t.throws(() => parseClaim(bad), { code: 'WARD_BUNDLE_MALFORMED' }, JSON.stringify(bad));
  }
  const claim = await ctx.service.registerClaim(text);
  t.is(claim.status, 'pending');
  t.false(await ctx.service.checkClaim(claim.claimId, claimCode), 'no broker account before the operator confirms');
  await ctx.service.confirmClaim(claim.claimId, { site: 'lyon', line: 'l3', cell: 'c1', ttlSeconds: 600 });
  t.true(await ctx.service.checkClaim(claim.claimId, claimCode));
  t.false(await ctx.service.checkClaim(claim.claimId, newClaimCode()));
  t.truthy(
    ctx.publishedRaw.find((p) => p.topic === `ward/v1/_claim/${claim.claimId}/bundle`),
    'the bundle waits on the claim topic',
  );
  const codes = await ctx.store.listCodes();
  const bound = codes[0];
  if (!bound) throw new Error('no code');
  t.is(bound.boundKid, device.kid);
  const code = { codeId: bound.codeId, token: '', site: 'lyon', line: 'l3', cell: 'c1' };
  // The token is only in the bundle; recover it as the gateway would.
  const published = ctx.publishedRaw.find((p) => p.topic.endsWith('/bundle'));
  const verified = verifyBundle(published?.payload.toString() ?? '', { root: ctx.root, nowSec: Math.floor(ctx.clock.now() / 1000) });
  const withToken = { ...code, token: verified.token };
  await ctx.service.handleEnrollRequest(bound.codeId, await request(generateSigningKey(), withToken, { sub: 'gw-claimed' }));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_REFUSED', 'another key cannot use a bound code');
  await ctx.service.handleEnrollRequest(bound.codeId, await request(device, withToken, { sub: 'gw-other' }));
  t.is(lastAnswer(ctx), 'WARD_ENROLL_REFUSED', 'nor another device id');
  t.is((await ctx.store.getCode(bound.codeId))?.status, 'open');
  await ctx.service.handleEnrollRequest(bound.codeId, await request(device, withToken, { sub: 'gw-claimed' }));
  t.is(lastAnswer(ctx), 'ok');
  t.is((await ctx.store.getClaim(claim.claimId))?.status, 'done');
  t.is(ctx.publishedRaw.filter((p) => p.topic.endsWith('/bundle')).at(-1)?.payload.length, 0, 'the retained bundle is cleared');
});
