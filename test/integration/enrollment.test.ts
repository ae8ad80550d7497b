import { readFile, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import test from 'ava';
import mqtt from 'mqtt';
import { PNG } from 'pngjs';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { loadOrCreateClaim } from '../../agent/identity/claim.js';
import { deriveDeviceId } from '../../agent/identity/provision.js';
import { IdentityStore } from '../../agent/identity/store.js';
import { readRootFile } from '../../agent/identity/trust.js';
import { base45Decode, base45Encode } from '../../agent/shared/base45.js';
import { BUNDLE_PREFIX } from '../../agent/shared/bundle.js';
import { buildAgent } from '../../agent/system.js';
import { builtinPlugins } from '../../plugins/index.js';
import { freshAgent, makeFleet, startFleetController } from '../helpers/fleet.js';
import { waitFor } from '../helpers/net.js';
import { apiDevice, getJson, testLogger } from '../helpers/stack.js';

// Real components: the controller with its embedded aedes broker on TLS, in this process; the
// agent in this process too (the CLI path is covered in provision-cli.test.ts).

test('a fresh gateway enrolls with a scanned code and comes online over mutual TLS', async (t) => {
  const fleet = await makeFleet(t);
  const controllerAudit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, { audit: controllerAudit });
  t.true(controller.brokerUrl.startsWith('mqtts://'));
  const created = await getJson<{ text: string; codeId: string; qr: { version: number } }>(`${controller.apiUrl}/api/enroll-codes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ site: 'lyon', line: 'l3', cell: 'c12', ttlSeconds: 3600 }),
  });
  t.is(created.status, 201);
  const { agent } = await freshAgent(t, fleet);
  await agent.start();
  t.is(agent.lifecycle.state, 'unprovisioned');
  const deviceId = await agent.provision(created.body.text);
  t.regex(deviceId, /^gw-[0-9a-f]{12}$/);
  t.is(agent.lifecycle.state, 'attesting');
  const online = await waitFor('enrolled gateway online', async () => {
    const d = await apiDevice(controller, deviceId);
    return d?.online ? d : undefined;
  });
  t.is(online.lifecycle, 'attesting');
  const record = await controller.registry.get(deviceId);
  t.is(record?.identity?.status, 'active');
  t.is(record?.identity?.site, 'lyon');
  t.truthy(controllerAudit.find((e) => e.action === 'device.enroll' && e.outcome === 'success'));
  const ping = await getJson<{ result: { pong: boolean } }>(`${controller.apiUrl}/api/devices/${deviceId}/ping`, { method: 'POST' });
  t.true(ping.body.result.pong);
  const codes = await getJson<{ codes: { codeId: string; status: string; usedBy?: string }[] }>(`${controller.apiUrl}/api/enroll-codes`);
  t.deepEqual(
    codes.body.codes.map((c) => [c.codeId, c.status, c.usedBy]),
    [[created.body.codeId, 'used', deviceId]],
    'the token is burned',
  );
});

async function createCode(controller: { apiUrl: string }, body: Record<string, unknown> = {}): Promise<{ text: string; codeId: string }> {
  const res = await getJson<{ text: string; codeId: string }>(`${controller.apiUrl}/api/enroll-codes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ site: 'lyon', line: 'l3', cell: 'c12', ttlSeconds: 3600, ...body }),
  });
  if (res.status !== 201) throw new Error(`enroll-code: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

async function rejectionCode(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

test('refused scans change nothing: foreign root, flipped bit, expired, other site, garbage, a picture without a QR code', async (t) => {
  const fleet = await makeFleet(t);
  const controllerAudit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, { audit: controllerAudit });
  const good = await createCode(controller);
  const otherSite = await createCode(controller, { site: 'paris' });
  const rogue = await makeFleet(t);
  const rogueController = await startFleetController(t, rogue);
  const foreign = await createCode(rogueController);
  const raw = base45Decode(good.text.slice(BUNDLE_PREFIX.length));
  raw[raw.length - 10] = (raw[raw.length - 10] as number) ^ 0x01; // inside the controller signature
  const flipped = BUNDLE_PREFIX + base45Encode(raw);
  const blank = new PNG({ width: 64, height: 64 });
  blank.data.fill(255);

  const { agent, audit, stateDir } = await freshAgent(t, fleet, { provisioning: { site: 'lyon', timeoutMs: 10_000 } });
  // The expired case: the same valid code, seen by a gateway whose clock is two hours later.
  const late = await freshAgent(t, fleet, {}, { clock: { now: () => Date.now() + 2 * 3600_000, monotonic: () => performance.now() } });
  await agent.start();
  await late.agent.start();
  const cases: [string, () => Promise<unknown>, string][] = [
    ['foreign fleet', () => agent.provision(foreign.text), 'WARD_BUNDLE_UNTRUSTED_CONTROLLER'],
    ['bit flipped', () => agent.provision(flipped), 'WARD_BUNDLE_BAD_SIGNATURE'],
    ['other site', () => agent.provision(otherSite.text), 'WARD_BUNDLE_WRONG_SITE'],
    ['truncated', () => agent.provision(good.text.slice(0, 120)), 'WARD_BUNDLE_MALFORMED'],
    ['garbage', () => agent.provision('4006381333931'), 'WARD_BUNDLE_MALFORMED'],
    ['no QR in picture', () => agent.provision(PNG.sync.write(blank)), 'WARD_QR_NOT_FOUND'],
    ['not a picture', () => agent.provision(new Uint8Array([0xff, 0xd8, 0xff, 0x00, 1, 2, 3])), 'WARD_QR_IMAGE_UNREADABLE'],
    ['expired', () => late.agent.provision(good.text), 'WARD_BUNDLE_EXPIRED'],
  ];
  for (const [name, scan, expected] of cases) {
    // One at a time: a gateway handles one scan at a time.
    t.is(await rejectionCode(scan()), expected, name);
  }
  for (const a of [agent, late.agent]) {
    t.is(a.lifecycle.state, 'unprovisioned');
    t.is(a.identity, undefined);
    t.is(a.link, undefined);
  }
  await t.throwsAsync(stat(join(stateDir, 'identity')), { code: 'ENOENT' }, 'no identity was written');
  const refusals = [...audit.events, ...late.audit.events].filter((e) => e.action === 'provision.scan' && e.outcome === 'refused').map((e) => e.code);
  t.deepEqual(refusals.sort(), cases.map((c) => c[2]).sort(), 'each refusal is an audit event with its code');
  t.false(JSON.stringify(audit.events).includes(good.text.slice(8, 40)), 'the audit trail never holds the token-bearing text');
  t.is(
    controllerAudit.find((e) => e.action === 'device.enroll'),
    undefined,
    'the controller never saw a request',
  );
  const codes = await getJson<{ codes: { status: string }[] }>(`${controller.apiUrl}/api/enroll-codes`);
  t.deepEqual(
    codes.body.codes.map((c) => c.status),
    ['open', 'open'],
    'no code was burned',
  );
});

test('a used token is refused to any other gateway, which walks back to unprovisioned', async (t) => {
  const fleet = await makeFleet(t);
  const controllerAudit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, { audit: controllerAudit });
  const code = await createCode(controller);
  const first = await freshAgent(t, fleet);
  await first.agent.start();
  await first.agent.provision(code.text);
  const second = await freshAgent(t, fleet);
  await second.agent.start();
  t.is(await rejectionCode(second.agent.provision(code.text)), 'WARD_ENROLL_TOKEN_USED');
  t.is(second.agent.lifecycle.state, 'unprovisioned');
  t.truthy(second.audit.find((e) => e.action === 'identity.enroll' && e.outcome === 'failure' && e.code === 'WARD_ENROLL_TOKEN_USED'));
  t.truthy(controllerAudit.find((e) => e.action === 'device.enroll' && e.outcome === 'refused' && e.code === 'WARD_ENROLL_TOKEN_USED'));
  t.is((await controller.registry.list()).length, 1, 'only the first gateway exists');
});

test('an enrolled device is confined to its own topics, renews its certificate, survives a restart, and a revoked one is refused', async (t) => {
  const fleet = await makeFleet(t);
  const controllerAudit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, { audit: controllerAudit });
  const code = await createCode(controller);
  const gw = await freshAgent(t, fleet);
  await gw.agent.start();
  const deviceId = await gw.agent.provision(code.text);
  await waitFor('online', async () => (await apiDevice(controller, deviceId))?.online);
  const identity = gw.agent.identity;
  if (identity === undefined) throw new Error('no identity');

  // Posing as the device with its own certificate: anything outside ward/v1/<id>/ is refused by the broker.
  const tls = {
    ca: await readFile(identity.files.ca),
    cert: await readFile(identity.files.cert),
    key: await readFile(identity.files.key),
    rejectUnauthorized: true,
  };
  // Only the client ids of its own identity are allowed: another id would let a client knock others off.
  const wrongId = await mqtt.connectAsync(controller.brokerUrl, { ...tls, protocolVersion: 4, clientId: 'ward-controller-x', reconnectPeriod: 0 }).then(
    async (c) => {
      await c.endAsync(true);
      return 'connected';
    },
    (err: { code?: number }) => err.code,
  );
  t.is(wrongId, 2, 'CONNACK 2: identifier rejected');
  const rogue = await mqtt.connectAsync(controller.brokerUrl, { ...tls, protocolVersion: 4, clientId: `ward-agent-${deviceId}:renew`, reconnectPeriod: 0 });
  // mqtt.js rejects a SUBSCRIBE with any failed filter and carries the SUBACK on the error.
  const suback = await rogue.subscribeAsync([`ward/v1/${deviceId}/cmd`, 'ward/v1/+/state', 'ward/v1/other-gw/cmd']).then(
    () => undefined,
    (err: { packet?: { granted?: number[] } }) => err.packet?.granted,
  );
  t.deepEqual(suback, [0, 128, 128], 'its own topics only; wildcards across devices and other devices are refused');
  const closed = new Promise<void>((resolve) => rogue.once('close', () => resolve()));
  rogue.publish('ward/v1/other-gw/state', '{"forged":true}', { qos: 0 });
  await closed;
  t.truthy(
    controllerAudit.find((e) => e.action === 'broker.publish' && e.outcome === 'refused' && e.target === 'ward/v1/other-gw/state' && e.actor === deviceId),
  );
  t.is(await controller.registry.get('other-gw'), undefined);
  await rogue.endAsync(true).catch(() => undefined);

  // Renewal: a new key and certificate, same identity, back online.
  const before = identity.certSerial;
  await gw.agent.renewNow();
  const renewed = gw.agent.identity;
  t.not(renewed?.certSerial, before);
  t.not(renewed?.files.key, identity.files.key, 'a fresh TLS key each renewal');
  await waitFor('online after renewal', async () => (await apiDevice(controller, deviceId))?.online);
  t.deepEqual((await controller.registry.get(deviceId))?.identity?.serials, [before, renewed?.certSerial]);
  // Two renewals on, the first certificate is superseded: the broker refuses it although it has not expired.
  await gw.agent.renewNow();
  const superseded = await mqtt
    .connectAsync(controller.brokerUrl, { ...tls, protocolVersion: 4, clientId: `ward-agent-${deviceId}:renew`, reconnectPeriod: 0 })
    .then(
      async (c) => {
        await c.endAsync(true);
        return 'connected';
      },
      (err: { code?: number }) => err.code,
    );
  t.is(superseded, 5, 'CONNACK 5: not authorised');

  // Restart: the identity is read back from disk and verified; the gateway comes online by itself.
  await gw.agent.stop();
  await waitFor('offline after stop', async () => (await apiDevice(controller, deviceId))?.online === false);
  const restarted = await buildAgent({ config: gw.config, logger: testLogger(), plugins: builtinPlugins, audit: gw.audit });
  t.teardown(() => restarted.stop());
  t.is(restarted.deviceId, deviceId);
  await restarted.start();
  await waitFor('online after restart', async () => (await apiDevice(controller, deviceId))?.online);

  // Revocation: the live connection is dropped and every reconnection is refused.
  const auditBefore = controllerAudit.events.length;
  const revoked = await getJson<{ identity: { status: string } }>(`${controller.apiUrl}/api/devices/${deviceId}/revoke`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ reason: 'gateway stolen from line 3' }),
  });
  t.is(revoked.status, 200);
  t.is(revoked.body.identity.status, 'revoked');
  await waitFor('reconnection refused by the broker', () =>
    controllerAudit.events.slice(auditBefore).find((e) => e.action === 'broker.connect' && e.outcome === 'refused' && e.actor === deviceId),
  );
  t.false(restarted.link?.connected ?? false);
  const device = await apiDevice(controller, deviceId);
  t.false(device?.online);
  t.truthy(controllerAudit.find((e) => e.action === 'device.revoke' && e.target === deviceId));
});

test('claim flow: the gateway shows its claim QR, an operator scans and confirms it, the gateway enrolls by itself', async (t) => {
  const fleet = await makeFleet(t);
  const controllerAudit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, { audit: controllerAudit });
  const claimBroker = new URL(controller.brokerUrl).host;
  const gw = await freshAgent(t, fleet, { provisioning: { claimBroker, claimPollSeconds: 1, timeoutMs: 10_000 } });
  await gw.agent.start();
  // What `ward identity qr` shows: the same claim for the same key, whoever asks.
  const claim = await loadOrCreateClaim(gw.stateDir, gw.agent.key, deriveDeviceId(gw.agent.key.publicRaw));
  t.is((await loadOrCreateClaim(gw.stateDir, gw.agent.key, claim.deviceId)).claimCode, claim.claimCode);
  const post = (path: string, body: unknown) =>
    getJson<Record<string, unknown>>(`${controller.apiUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  t.is((await post('/api/claims', { text: 'WARDC1:GARBAGE' })).status, 400, 'a malformed claim is refused');
  const scanned = await post('/api/claims', { text: claim.text });
  t.is(scanned.status, 201);
  t.deepEqual([scanned.body.deviceId, scanned.body.status], [claim.deviceId, 'pending']);
  t.false('claimCodeHash' in scanned.body);
  // Pending is not enough: the broker does not know the claim account yet, so nothing has happened.
  t.is(gw.agent.lifecycle.state, 'unprovisioned');

  const confirmed = await post(`/api/claims/${claim.claimId}/confirm`, { site: 'lyon', line: 'l3', cell: 'c7', ttlSeconds: 600 });
  t.is(confirmed.status, 200);
  const online = await waitFor('claimed gateway online', async () => {
    const d = await apiDevice(controller, claim.deviceId);
    return d?.online ? d : undefined;
  });
  t.is(online.lifecycle, 'attesting');
  t.is(gw.agent.deviceId, claim.deviceId);
  const record = await controller.registry.get(claim.deviceId);
  t.is(record?.identity?.cell, 'c7');
  const claims = await getJson<{ claims: { status: string }[] }>(`${controller.apiUrl}/api/claims`);
  t.deepEqual(
    claims.body.claims.map((c) => c.status),
    ['done'],
  );
  t.truthy(controllerAudit.find((e) => e.action === 'claim.confirm'));
  // A wrong claim code never logs in.
  t.false(await controller.enrollment?.checkClaim(claim.claimId, 'AAAAA-AAAAA'));
});

test('renewal while the controller is away fails without harm; the gateway keeps its certificate and reconnects when it returns', async (t) => {
  const fleet = await makeFleet(t);
  const first = await startFleetController(t, fleet);
  const port = Number(new URL(first.brokerUrl).port);
  const code = await createCode(first);
  const gw = await freshAgent(t, fleet, { provisioning: { timeoutMs: 3_000 } });
  await gw.agent.start();
  const deviceId = await gw.agent.provision(code.text);
  await waitFor('online', async () => (await apiDevice(first, deviceId))?.online);
  const serial = gw.agent.identity?.certSerial;

  // A year later the controller's certification by the root has lapsed: the enrolled identity still loads.
  const root = await readRootFile(fleet.rootFile, Math.floor(Date.now() / 1000));
  const later = await new IdentityStore(gw.stateDir).load({ root, key: gw.agent.key, nowSec: Math.floor(Date.now() / 1000) + 400 * 86_400 });
  t.is(later?.deviceId, deviceId);
  t.true(later?.controllerCertExpired);

  await first.close();
  const failure = await rejectionCode(gw.agent.renewNow());
  t.truthy(failure, 'renewal cannot succeed without the controller');
  t.is(gw.agent.identity?.certSerial, serial, 'the current certificate stays');
  t.is(gw.agent.lifecycle.state, 'attesting', 'and so does the lifecycle');

  const back = await startFleetController(t, fleet, { extra: { broker: { embedded: { host: '127.0.0.1', tcpPort: port, wsPort: null } } } });
  await waitFor('reconnected with the same certificate', async () => (await apiDevice(back, deviceId))?.online);
  // "online" comes in on the controller's first subscription, renewal requests on a later one.
  await waitFor('controller subscribed', () => back.session.connected, 10_000, 20);
  await gw.agent.renewNow();
  t.not(gw.agent.identity?.certSerial, serial, 'and renews once the controller is back');
});

test('the API refuses what a browser page could send: another Host, a non-JSON body, a malformed path', async (t) => {
  const fleet = await makeFleet(t);
  const controller = await startFleetController(t, fleet);
  const { port } = new URL(controller.apiUrl);
  const raw = (path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: Number(port), path, method: init.method ?? 'GET', headers: init.headers ?? {} }, (res) => {
        let body = '';
        res.on('data', (d) => {
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end(init.body);
    });
  t.is((await raw('/api/health', { headers: { host: 'evil.example:80' } })).status, 421, 'DNS rebinding');
  t.is((await raw('/api/health', { headers: { host: `localhost:${port}` } })).status, 200);
  const csrf = await raw('/api/enroll-codes', {
    method: 'POST',
    headers: { host: `127.0.0.1:${port}`, 'content-type': 'text/plain' },
    body: JSON.stringify({ site: 'a', line: 'b', cell: 'c' }),
  });
  t.is(csrf.status, 415, 'a cross-site text/plain POST');
  t.is((await raw('/api/devices/%E0', { headers: { host: `127.0.0.1:${port}` } })).status, 400, 'malformed percent-encoding');
  t.is((await getJson(`${controller.apiUrl}/api/health`)).status, 200, 'and the controller is still up');
  t.deepEqual((await getJson<{ codes: unknown[] }>(`${controller.apiUrl}/api/enroll-codes`)).body.codes, [], 'no code was created');
});
