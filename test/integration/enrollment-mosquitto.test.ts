import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import mqtt from 'mqtt';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { setupMosquitto } from '../../controller/mosquitto-setup.js';
import { freshAgent, makeFleet, startFleetController } from '../helpers/fleet.js';
import { startMosquittoWithConfig } from '../helpers/mosquitto.js';
import { freePort, waitFor } from '../helpers/net.js';
import { apiDevice, getJson } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// Real Mosquitto 2.0 with the files `ward controller mosquitto-setup` writes and the controller keeps
// in sync (ACLs, password file, CRL, SIGHUP): enrollment on the token listener, operation on the
// mutual-TLS listener, revocation through the CRL.

test('enrollment and revocation through an external Mosquitto with the generated ACL, passwords and CRL', async (t) => {
  const fleet = await makeFleet(t);
  const base = await tempDir(t, 'ward-mosq-');
  await chmod(base, 0o755); // Mosquitto reads its files as the mosquitto user
  const dir = join(base, 'broker');
  const [mtlsPort, enrollPort] = [await freePort(), await freePort()];
  const setup = await setupMosquitto({ stateDir: fleet.controllerStateDir, outDir: dir, host: '127.0.0.1', mtlsPort, enrollPort });
  t.is((await stat(join(dir, 'server-key.pem'))).mode & 0o007, 0, "the broker's private key is not world-readable");
  const broker = await startMosquittoWithConfig({ dir, configText: await readFile(setup.confFile, 'utf8'), ports: [mtlsPort, enrollPort] });
  t.teardown(() => broker.stop());
  const pidFile = join(dir, 'mosquitto.pid');
  await writeFile(pidFile, `${broker.pid}\n`);

  const audit = new MemoryAuditSink();
  const controller = await startFleetController(t, fleet, {
    audit,
    extra: {
      broker: { url: setup.mtlsUrl, tls: setup.controllerTls, mosquitto: { dir, pidFile }, sharedGroup: 'ward-controller' },
      enrollment: { advertise: [setup.enrollAddress], deviceBrokers: [setup.mtlsUrl] },
    },
  });
  await waitFor('controller connected to mosquitto', () => controller.session.connected);
  // The controller syncs the files and signals Mosquitto while it starts: count from after that reload is logged, or
  // its late log line would pass for the reload the new code causes.
  await waitFor(
    () => `mosquitto to log the reload the controller's start caused (${broker.reloads()} so far)`,
    () => broker.reloads() >= 1,
    10_000,
    20,
  );
  const reloadsBefore = broker.reloads();
  const created = await getJson<{ text: string; codeId: string }>(`${controller.apiUrl}/api/enroll-codes`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ site: 'lyon', line: 'l3', cell: 'c12' }),
  });
  t.is(created.status, 201);
  // The technician scans after the broker has taken the new account (the controller signalled it).
  await waitFor('mosquitto reloaded the password file', () => broker.reloads() > reloadsBefore, 10_000, 20);
  t.regex(await readFile(join(dir, 'passwd'), 'utf8'), new RegExp(`^_enroll-${created.body.codeId}:\\$7\\$`, 'm'));

  const gw = await freshAgent(t, fleet);
  await gw.agent.start();
  const deviceId = await gw.agent.provision(created.body.text);
  const online = await waitFor('online over the mutual-TLS listener', async () => {
    const d = await apiDevice(controller, deviceId);
    return d?.online ? d : undefined;
  });
  t.is(online.protocol, '5', 'Mosquitto speaks MQTT 5');
  t.regex(await readFile(join(dir, 'acl-mtls'), 'utf8'), new RegExp(`^user ${deviceId}\\ntopic readwrite ward/v1/${deviceId}/#$`, 'm'));
  // The used code's account stays until the code expires (its gateway may fetch a lost answer again);
  // an expired or withdrawn code's account is dropped (daily and on every change).
  t.regex(await readFile(join(dir, 'passwd'), 'utf8'), new RegExp(`^_enroll-${created.body.codeId}:`, 'm'));

  // Another device's topics, with this device's own certificate: MQTT 5 gives PUBACK 0x87 (not authorised).
  const identity = gw.agent.identity;
  if (!identity) throw new Error('no identity');
  const tls = { ca: await readFile(identity.files.ca), cert: await readFile(identity.files.cert), key: await readFile(identity.files.key) };
  const probe = await mqtt.connectAsync(setup.mtlsUrl, { ...tls, protocolVersion: 5, clientId: `probe-${deviceId}`, reconnectPeriod: 0 });
  const refused = await probe.publishAsync('ward/v1/other-gw/state', 'x', { qos: 1 }).then(
    () => undefined,
    (err: { code?: number }) => err.code,
  );
  t.is(refused, 135);
  await probe.endAsync();

  const reloadsBeforeRevoke = broker.reloads();
  const revoked = await getJson(`${controller.apiUrl}/api/devices/${deviceId}/revoke`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ reason: 'test' }),
  });
  t.is(revoked.status, 200);
  await waitFor('mosquitto reloaded the CRL', () => broker.reloads() > reloadsBeforeRevoke, 10_000, 20);
  const handshake = await mqtt
    .connectAsync(setup.mtlsUrl, { ...tls, protocolVersion: 5, clientId: `revoked-${deviceId}`, reconnectPeriod: 0, connectTimeout: 5_000 })
    .then(
      async (c) => {
        await c.endAsync();
        return 'connected';
      },
      (err: Error & { code?: string }) => err.code ?? err.message,
    );
  t.is(handshake, 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED');
  t.notRegex(await readFile(join(dir, 'acl-mtls'), 'utf8'), new RegExp(`user ${deviceId}`));
});
