import test from 'ava';
import mqtt from 'mqtt';
import { encodeEnvelope, seal } from '../../agent/shared/envelope.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { RPC_REQUEST_TYPE } from '../../agent/shared/messages.js';
import { topics } from '../../agent/shared/topics.js';
import { waitFor } from '../helpers/net.js';
import { apiDevice, getJson, makeDevice, spawnWard, startTestController, writeAgentConfig } from '../helpers/stack.js';

// Real components: the embedded aedes broker, a raw mqtt.js client playing the attacker, and the
// agent as its own process. Bad input must be refused with a clear code, never crash either side,
// and never change state.

/** The correlation id of a request or reply envelope, if it has one. */
function corrOf(payload: Buffer): string | undefined {
  try {
    const corr = (JSON.parse(payload.toString('utf8')) as { payload?: { corr?: unknown } }).payload?.corr;
    return typeof corr === 'string' ? corr : undefined;
  } catch {
    return undefined;
  }
}

async function rawClient(t: import('ava').ExecutionContext, url: string) {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, clientId: `attacker-${Math.random().toString(36).slice(2)}` });
  t.teardown(() => client.endAsync(true));
  return client;
}

test('garbage, forged, replayed and oversized messages on the wire are refused by controller and agent', async (t) => {
  const device = await makeDevice(t, 'gw-bad-1');
  const controller = await startTestController(t, { devices: [device] });
  const config = await writeAgentConfig(device, controller, controller.brokerUrl);
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);
  await waitFor('agent online', async () => (await apiDevice(controller, device.id))?.online);
  const before = await apiDevice(controller, device.id);

  const attacker = await rawClient(t, controller.brokerUrl);
  const replies: { topic: string; corr: string | undefined }[] = [];
  await attacker.subscribeAsync(`ward/v1/${device.id}/reply/#`, { qos: 1 });
  const captured: Buffer[] = [];
  await attacker.subscribeAsync(topics.cmd(device.id), { qos: 1 });
  attacker.on('message', (topic, payload) => {
    if (topic.includes('/reply/')) replies.push({ topic, corr: corrOf(payload) });
    else captured.push(Buffer.from(payload));
  });

  // 1. Toward the controller: forged and malformed device state.
  const stateTopic = topics.state(device.id);
  const mallory = generateSigningKey();
  const forged = encodeEnvelope(
    seal(
      mallory,
      {
        typ: 'ward.state',
        sub: device.id,
        online: false,
        session: 'x'.repeat(10),
        lifecycle: 'active',
        agentVersion: 'x',
        protocol: '5',
        plugins: [],
        startedAt: 1,
        heartbeatSeconds: 60,
      },
      { ttlSeconds: 60, version: Date.now() * 10 },
    ),
  );
  for (const payload of [Buffer.from('not json'), Buffer.from('{"payload":[]}'), Buffer.alloc(400 * 1024, 0x20), forged]) {
    await attacker.publishAsync(stateTopic, payload, { qos: 1 });
  }
  const refused = await waitFor('controller counted the refusals', async () => {
    const h = await getJson<{ messages: { refused: Record<string, number> } }>(`${controller.apiUrl}/api/health`);
    const r = h.body.messages.refused;
    return Object.values(r).reduce((s, n) => s + n, 0) >= 4 ? r : undefined;
  });
  t.deepEqual(refused, {
    WARD_ENVELOPE_NOT_JSON: 1,
    WARD_ENVELOPE_MALFORMED: 1,
    WARD_ENVELOPE_TOO_LARGE: 1,
    WARD_ENVELOPE_UNKNOWN_KEY: 1,
  });
  const after = await apiDevice(controller, device.id);
  t.is(after?.online, true);
  t.is(after?.lifecycle, before?.lifecycle);

  // 2. Toward the agent: a genuine ping (captured by the attacker), then garbage, a forged command
  // and the replay of the captured one. Then one more genuine ping.
  const first = await getJson<{ result: { pong: boolean } }>(`${controller.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
  t.true(first.body.result.pong);
  await waitFor('captured the genuine request', () => captured.length >= 1);
  const forgedCmd = encodeEnvelope(
    seal(
      mallory,
      { typ: RPC_REQUEST_TYPE, sub: device.id, method: 'ping', params: {}, replyTo: topics.reply(device.id, 'evil'), corr: 'corr-evil-1' },
      { ttlSeconds: 60 },
    ),
  );
  for (const payload of [Buffer.from('{{{'), Buffer.from('{"payload":{"typ":"x"},"kid":"a","sig":"b"}'), forgedCmd, captured[0] as Buffer]) {
    await attacker.publishAsync(topics.cmd(device.id), payload, { qos: 1 });
  }
  const second = await getJson<{ result: { pong: boolean } }>(`${controller.apiUrl}/api/devices/${device.id}/ping`, { method: 'POST' });
  t.true(second.body.result.pong, 'the agent still answers genuine requests');
  // The agent handles its messages in order and its replies reach the attacker in order: once the attacker has the
  // second genuine ping's reply, a reply to any bad message before it would have arrived too.
  const firstCorr = corrOf(captured[0] as Buffer);
  const secondCorr = () => captured.map(corrOf).find((c) => c !== undefined && c !== firstCorr && c !== 'corr-evil-1');
  await waitFor(
    () => `the attacker to see the second genuine ping and its reply (requests ${JSON.stringify(captured.map(corrOf))}, replies ${JSON.stringify(replies)})`,
    () => {
      const corr = secondCorr();
      return corr !== undefined && replies.some((r) => r.corr === corr);
    },
  );
  t.is(replies.length, 2, 'only the two genuine pings were answered');
  await waitFor('agent logged the refusals', () => agent.output().includes('WARD_ENVELOPE_REPLAYED'));
  for (const code of ['WARD_ENVELOPE_NOT_JSON', 'WARD_ENVELOPE_MALFORMED', 'WARD_ENVELOPE_UNKNOWN_KEY', 'WARD_ENVELOPE_REPLAYED']) {
    t.true(agent.output().includes(code), `agent log names ${code}`);
  }
  t.is(agent.child.exitCode, null, 'the agent is still running');
});

test('the HTTP API answers unknown routes, methods and devices with JSON errors', async (t) => {
  const controller = await startTestController(t, { devices: [] });
  const notFound = await getJson<{ error: { code: string } }>(`${controller.apiUrl}/api/nope`);
  t.is(notFound.status, 404);
  const wrongMethod = await getJson<{ error: { code: string } }>(`${controller.apiUrl}/api/devices`, { method: 'DELETE' });
  t.is(wrongMethod.status, 405);
  const unknown = await getJson<{ error: { code: string } }>(`${controller.apiUrl}/api/devices/ghost/ping`, { method: 'POST' });
  t.is(unknown.status, 404);
  t.is(unknown.body.error.code, 'WARD_CONTROLLER_DEVICE_UNKNOWN');
  const badId = await getJson<{ error: { code: string } }>(`${controller.apiUrl}/api/devices/${encodeURIComponent('a/../b')}`);
  t.is(badId.status, 404);
});
