import test from 'ava';
import { waitFor } from '../helpers/net.js';
import { apiDevice, getJson, makeDevice, spawnWard, startTestController, writeAgentConfig } from '../helpers/stack.js';

// Real components: the controller's embedded aedes broker (in this process) and the agent as a
// separate `ward agent run` process, so SIGKILL and SIGTERM are the real thing.

test('agent comes online over the embedded broker, answers a signed ping, and kill -9 is seen through its LWT', async (t) => {
  const device = await makeDevice(t, 'gw-aedes-1');
  const controller = await startTestController(t, { devices: [device] });
  const config = await writeAgentConfig(device, controller, controller.brokerUrl);
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);

  const online = await waitFor('agent online', async () => {
    const d = await apiDevice(controller, device.id);
    return d?.online ? d : undefined;
  });
  t.is(online.lifecycle, 'attesting'); // static identity: never claims to be attested
  t.is(online.protocol, '3.1.1'); // aedes refused MQTT 5; the agent fell back by itself
  t.deepEqual(online.plugins, ['sim']);

  const ping = await getJson<{ result: { pong: boolean } }>(`${controller.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
  t.is(ping.status, 200);
  t.true(ping.body.result.pong);

  agent.child.kill('SIGKILL');
  const offline = await waitFor('LWT marks agent offline', async () => {
    const d = await apiDevice(controller, device.id);
    return d && !d.online ? d : undefined;
  });
  t.is(offline.offlineCause, 'lwt');
  const health = await getJson<{ messages: { refused: Record<string, number> } }>(`${controller.apiUrl}/api/health`);
  t.deepEqual(health.body.messages.refused, {}, 'no genuine message was refused along the way');
});

test('after the controller and its broker restart, the agent reconnects by itself and the registry survived', async (t) => {
  const device = await makeDevice(t, 'gw-aedes-2');
  const first = await startTestController(t, { devices: [device] });
  const port = Number(new URL(first.brokerUrl).port);
  const stateDir = (await import('node:path')).join(device.stateDir, '..', 'controller-state');
  await first.close();
  // Start again on a fixed port and a fixed state folder, so a restart can reuse both.
  const controller = await startTestController(t, { devices: [device], tcpPort: port, stateDir });
  const config = await writeAgentConfig(device, controller, controller.brokerUrl);
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online', async () => (await apiDevice(controller, device.id))?.online);

  await controller.close();
  const restartedAt = Math.floor(Date.now() / 1000) * 1000;
  const restarted = await startTestController(t, { devices: [device], tcpPort: port, stateDir });
  t.truthy(await apiDevice(restarted, device.id), 'the device record survived the restart (LevelDB store)');
  await waitFor('a fresh online state after the broker restart', async () => {
    const d = await apiDevice(restarted, device.id);
    return d?.online && Date.parse(d.lastSeen ?? '') >= restartedAt;
  });
  t.is(agent.child.exitCode, null, 'the agent did not exit while the broker was away');

  agent.child.kill('SIGTERM');
  t.is(await agent.exited, 0, 'SIGTERM stops the agent cleanly with exit 0');
  const offline = await waitFor('clean shutdown reported', async () => {
    const d = await apiDevice(restarted, device.id);
    return d && !d.online ? d : undefined;
  });
  t.is(offline.offlineCause, 'shutdown', agent.output());
});

test('an agent reaches the embedded broker over WebSocket too', async (t) => {
  const device = await makeDevice(t, 'gw-ws-1');
  const controller = await startTestController(t, { devices: [device] });
  t.truthy(controller.wsUrl);
  const config = await writeAgentConfig(device, controller, controller.wsUrl as string);
  spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online over ws', async () => (await apiDevice(controller, device.id))?.online);
  t.pass();
});
