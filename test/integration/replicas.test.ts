import test from 'ava';
import { encodeEnvelope, seal } from '../../agent/shared/envelope.js';
import { STATE_TYPE } from '../../agent/shared/messages.js';
import { MqttSession } from '../../agent/shared/mqtt-session.js';
import { topics } from '../../agent/shared/topics.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { waitFor } from '../helpers/net.js';
import { getJson, makeDevice, spawnWard, startTestController, writeAgentConfig } from '../helpers/stack.js';

// Real components: one Mosquitto, two controller replicas in this process subscribed through
// $share/ward-controller/…, a device publishing through its own MQTT session.

test('two controller replicas on one Mosquitto: each device message is handled by exactly one', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-shared-1');
  const a = await startTestController(t, { devices: [device], brokerUrl: broker.url, replicaId: 'replica-a' });
  const b = await startTestController(t, { devices: [device], brokerUrl: broker.url, replicaId: 'replica-b' });
  await waitFor('both replicas connected', () => a.session.connected && b.session.connected);

  const publisher = new MqttSession({
    url: broker.url,
    clientId: 'test-device-publisher',
    protocol: '3.1.1', // a 3.1.1 device works with 5.0 controllers sharing the load
    keepaliveSeconds: 30,
    connectTimeoutMs: 3_000,
    reconnect: { baseMs: 100, capMs: 1_000 },
  });
  publisher.start();
  t.teardown(() => publisher.stop());
  await waitFor('publisher connected', () => publisher.connected);

  const N = 40;
  for (let i = 1; i <= N; i++) {
    const body = {
      typ: STATE_TYPE,
      sub: device.id,
      online: true,
      session: 'session-shared',
      lifecycle: 'attesting' as const,
      agentVersion: '0.1.0',
      protocol: '3.1.1' as const,
      plugins: [],
      startedAt: 1,
      heartbeatSeconds: 60,
    };
    await publisher.publish(topics.state(device.id), encodeEnvelope(seal(device.key, body, { ttlSeconds: 600, version: i })), { qos: 1 });
  }
  await waitFor('all messages handled', () => a.registry.handledCount + b.registry.handledCount >= N);
  // Give a duplicate delivery a chance to show up before counting (bounded).
  await new Promise((r) => setTimeout(r, 500));
  t.is(a.registry.handledCount + b.registry.handledCount, N, 'no message was handled twice or lost');
  t.true(a.registry.handledCount > 0 && b.registry.handledCount > 0, `load was shared (${a.registry.handledCount}/${b.registry.handledCount})`);
  t.deepEqual(a.registry.rejections(), {});
  t.deepEqual(b.registry.rejections(), {});
});

test('RPC replies go to the replica that asked; a replica whose key the agent does not trust gets no answer', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const device = await makeDevice(t, 'gw-shared-2');
  const a = await startTestController(t, { devices: [device], brokerUrl: broker.url, replicaId: 'replica-a' });
  const b = await startTestController(t, { devices: [device], brokerUrl: broker.url, replicaId: 'replica-b' });
  // The agent trusts the key of replica A only (until the identity issue distributes one controller key).
  const config = await writeAgentConfig(device, a, broker.url);
  spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent connected (seen by one replica)', async () => {
    const [ra, rb] = await Promise.all([a.registry.get(device.id), b.registry.get(device.id)]);
    return ra?.online || rb?.online;
  });
  for (let i = 0; i < 4; i++) {
    const res = await getJson<{ result: { pong: boolean } }>(`${a.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
    t.true(res.body.result.pong);
  }
  // Replica B's key is not trusted by this agent: its request is refused, and B times out rather than
  // receiving A's replies.
  const res = await getJson<{ error: { code: string } }>(`${b.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
  t.is(res.status, 504);
  t.is(res.body.error.code, 'WARD_RPC_TIMEOUT');
});
