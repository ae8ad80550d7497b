import test from 'ava';
import { startMosquitto } from '../helpers/mosquitto.js';
import { waitFor } from '../helpers/net.js';
import { makeTestPki } from '../helpers/pki.js';
import { apiDevice, getJson, makeDevice, nextAppliedState, spawnWard, startTestController, writeAgentConfig } from '../helpers/stack.js';
import { tempDir } from '../helpers/tmp.js';

// Real components: Mosquitto (Debian package) on a free loopback port, the controller in this
// process connected to it as an external broker, and the agent as a separate process.

test('over Mosquitto: online with MQTT 5, LWT on kill -9, reconnect after a broker restart, clean SIGTERM', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-mosq-1');
  const controller = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });
  const config = await writeAgentConfig(device, controller, broker.url);

  const first = spawnWard(t, ['agent', 'run', '-c', config]);
  const online = await waitFor('agent online via mosquitto', async () => {
    const d = await apiDevice(controller, device.id);
    return d?.online ? d : undefined;
  });
  t.is(online.protocol, '5', 'Mosquitto speaks MQTT 5, so the agent uses it');

  first.child.kill('SIGKILL');
  const dead = await waitFor('LWT after kill -9', async () => {
    const d = await apiDevice(controller, device.id);
    return d && !d.online ? d : undefined;
  });
  t.is(dead.offlineCause, 'lwt');

  const second = spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online again', async () => (await apiDevice(controller, device.id))?.online);

  // Both the agent and the controller reconnect by themselves; the agent re-publishes its state,
  // which the controller can only receive once it is back on the broker too.
  const republished = nextAppliedState(controller, device.id, (d) => d.online);
  await broker.restart();
  await republished;
  // The state arrives on the controller's first subscription; it publishes requests once all of them are back.
  await waitFor('controller resubscribed', () => controller.session.connected, 10_000, 20);
  const ping = await getJson<{ result: { pong: boolean } }>(`${controller.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
  t.true(ping.body.result.pong, 'request/response works over the new connections');

  second.child.kill('SIGTERM');
  t.is(await second.exited, 0);
  const stopped = await waitFor('clean shutdown reported', async () => {
    const d = await apiDevice(controller, device.id);
    return d && !d.online ? d : undefined;
  });
  t.is(stopped.offlineCause, 'shutdown');
});

test('a restarted controller (non-shared) reads the retained state from Mosquitto', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-mosq-2');
  const seed = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });
  const config = await writeAgentConfig(device, seed, broker.url);
  spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online', async () => (await apiDevice(seed, device.id))?.online);
  await seed.close();
  // A fresh controller with an empty store learns the device's state from the retained message alone.
  const fresh = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });
  await waitFor('retained state seen by a fresh controller', async () => (await apiDevice(fresh, device.id))?.online);
  t.pass();
});

test('over TLS: the agent verifies the broker against its pinned CA, and refuses a broker it cannot verify', async (t) => {
  const dir = await tempDir(t);
  const pki = await makeTestPki(dir, 'good');
  const otherCa = await makeTestPki(dir, 'other');
  const broker = await startMosquitto({ tls: { ca: pki.caCert, cert: pki.serverCert, key: pki.serverKey } });
  t.teardown(() => broker.stop());
  const tlsUrl = broker.tlsUrl as string;
  const device = await makeDevice(t, 'gw-tls-1');
  const controller = await startTestController(t, { devices: [device], brokerUrl: broker.url, sharedGroup: null });

  const config = await writeAgentConfig(device, controller, tlsUrl, { mqtt: { url: tlsUrl, tls: { caFile: pki.caCert }, connectTimeoutMs: 10_000 } });
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online over TLS', async () => (await apiDevice(controller, device.id))?.online);
  agent.child.kill('SIGTERM');
  t.is(await agent.exited, 0);
  // Its shutdown state may still be on its way through Mosquitto: count from after the controller handled it.
  await waitFor('the shutdown of the verified agent seen by the controller', async () => (await apiDevice(controller, device.id))?.online === false);

  const impostorConfig = await writeAgentConfig(device, controller, tlsUrl, {
    mqtt: { url: tlsUrl, tls: { caFile: otherCa.caCert }, connectTimeoutMs: 10_000 },
  });
  const handledBefore = controller.registry.handledCount;
  const refused = spawnWard(t, ['agent', 'run', '-c', impostorConfig]);
  await waitFor(
    'TLS verification failure logged',
    () => /WARD_LINK_CONNECT_FAILED|control link error/.test(refused.output()) && /certificate|self.signed|verify/i.test(refused.output()),
  );
  t.is(controller.registry.handledCount, handledBefore, 'an agent that cannot verify the broker never got a message through');
  t.false((await apiDevice(controller, device.id))?.online);
  refused.child.kill('SIGTERM');
  t.is(await refused.exited, 0);
});
