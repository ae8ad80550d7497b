import test from 'ava';
import { ModbusSimServer } from '../../plugins/modbus/server.js';
import { freePort, waitFor } from '../helpers/net.js';
import { apiDevice, getJson, makeDevice, spawnWard, startTestController, writeAgentConfig } from '../helpers/stack.js';

// Real components: the controller (Sparkplug host application, primary host STATE) with its embedded aedes broker,
// the agent as its own `ward agent run` process (kill -9 is real), and a Modbus PLC simulator the agent's collector
// polls over loopback. The done-when of issue 8: the gateway and its machine come alive in the controller's view,
// and after a broker outage the gap is filled with historical values.

interface MetricView {
  value: unknown;
  type: string;
  timestamp: number;
  quality: string;
}
interface TelemetryView {
  online: boolean;
  bdSeq: number;
  births: number;
  seqGaps: number;
  historicalPoints: number;
  metrics: Record<string, MetricView>;
  devices: Record<string, { online: boolean; metrics: Record<string, MetricView> }>;
  alarms: unknown[];
}

test('the gateway and its PLC come alive in the controller over Sparkplug B; a broker outage is filled with historical values; kill -9 is an NDEATH', async (t) => {
  const plc = new ModbusSimServer({ size: 100 });
  const plcPort = await freePort();
  await plc.listen(plcPort, '127.0.0.1');
  t.teardown(() => plc.close());
  let cycles = 0;
  const ticker = setInterval(() => plc.input.set([++cycles], 0), 100);
  t.teardown(() => clearInterval(ticker));

  const device = await makeDevice(t, 'gw-telemetry-1');
  const port = await freePort();
  const stateDir = (await import('node:path')).join(device.stateDir, '..', 'controller-state');
  const first = await startTestController(t, { devices: [device], tcpPort: port, stateDir });
  const config = await writeAgentConfig(device, first, first.brokerUrl, {
    telemetry: { gateway: { intervalSeconds: 1, slowIntervalSeconds: 2 }, flushMs: 50 },
    plugins: [
      {
        name: 'modbus',
        config: {
          collector: {
            devices: [{ name: 'press-1', host: '127.0.0.1', port: plcPort, pollMs: 200, points: [{ name: 'cycles', table: 'input', address: 0 }] }],
          },
        },
      },
    ],
  });
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);

  const view = async (controller = first) => (await getJson<TelemetryView>(`${controller.apiUrl}/api/devices/${device.id}/telemetry`)).body;
  const alive = await waitFor(
    'gateway and PLC metrics in the controller',
    async () => {
      const v = (await getJson<TelemetryView>(`${first.apiUrl}/api/devices/${device.id}/telemetry`)).body;
      return v.online && v.metrics?.['Gateway/CPU/Load'] && typeof v.devices?.['press-1']?.metrics.cycles?.value === 'number' ? v : undefined;
    },
    60_000,
  );
  t.is(alive.metrics['Ward/Lifecycle']?.value, 'attesting');
  t.is(typeof alive.metrics['Gateway/Memory/UsedPercent']?.value, 'number');
  t.true(alive.devices['press-1']?.online);
  t.is(alive.seqGaps, 0, agent.output());

  // The broker (and the host with it) goes away for a few seconds. Long enough, and the bounds below loose enough, that
  // an agent stalled for seconds by a loaded machine still shows the claim: the gap is filled, in order, all along.
  const OUTAGE_MS = 8_000;
  const replays = () => agent.output().split('buffered telemetry replayed').length - 1;
  const replaysBefore = replays();
  await first.close();
  const outageFrom = Date.now();
  await new Promise((r) => setTimeout(r, OUTAGE_MS));
  const outageTo = Date.now();
  const second = await startTestController(t, { devices: [device], tcpPort: port, stateDir });
  type Point = { t: number; v: number; h?: boolean };
  // The agent says when it has handed the whole buffer over (after its births); the controller then has it once the
  // last of those messages is in, so the history is read until two reads 500 ms apart agree.
  await waitFor(
    () => `the agent to replay its buffer:\n${agent.output().slice(-2000)}`,
    () => replays() > replaysBefore,
    60_000,
  );
  let seen: Point[] = [];
  let previous = -1;
  const filled = await waitFor(
    () =>
      `the replayed outage to settle in the controller (${seen.filter((p) => p.h).length} historical points, the last at ${seen.filter((p) => p.h).at(-1)?.t}; outage ${outageFrom}-${outageTo})`,
    async () => {
      const h = (await getJson<{ points: Point[] }>(`${second.apiUrl}/api/devices/${device.id}/telemetry/history?device=press-1&metric=cycles`)).body;
      seen = h.points ?? [];
      const during = seen.filter((p) => p.h && p.t >= outageFrom && p.t <= outageTo);
      const settled = during.length > 0 && during.length === previous;
      previous = during.length;
      return settled ? { all: seen, during } : undefined;
    },
    15_000,
    500,
  );
  // Points spread over the whole outage (polls every 200 ms; one a second is plenty), in order, and no hole, edges
  // included, as wide as half the outage.
  const times = filled.during.map((p) => p.t);
  t.true(times.length >= OUTAGE_MS / 1_000, `${times.length} historical points in the outage`);
  t.deepEqual(
    times,
    [...times].sort((a, b) => a - b),
  );
  const edges = [outageFrom, ...times, outageTo];
  const widest = Math.max(...edges.slice(1).map((x, i) => x - (edges[i] as number)));
  t.true(widest < OUTAGE_MS / 2, `widest hole ${widest} ms in the ${outageTo - outageFrom} ms outage`);
  const values = filled.during.map((p) => p.v);
  t.deepEqual(
    values,
    [...values].sort((a, b) => a - b),
    'the PLC counter only rises',
  );
  const after = await view(second);
  t.true(after.online);
  t.true(after.historicalPoints >= OUTAGE_MS / 1_000);

  agent.child.kill('SIGKILL');
  const dead = await waitFor(
    'NDEATH from the Will',
    async () => {
      const v = await view(second);
      return v.online ? undefined : v;
    },
    30_000,
  );
  t.false(dead.online);
  // The control link is another MQTT session with its own Will (the signed offline state); the broker sends the two
  // Wills as it notices each socket close, in no set order, so the link's may come in after the NDEATH.
  const linkDead = await waitFor(
    'the control link offline from its own Will',
    async () => {
      const d = await apiDevice(second, device.id);
      return d && !d.online ? d : undefined;
    },
    30_000,
  );
  t.false(linkDead.online);
  t.is(linkDead.offlineCause, 'lwt');
});

test('a health alarm rule with action degrade holds an attested gateway at degraded, and it is active again once the alarm clears', async (t) => {
  const plc = new ModbusSimServer({ size: 100 });
  const plcPort = await freePort();
  await plc.listen(plcPort, '127.0.0.1');
  t.teardown(() => plc.close());
  plc.input.set([250], 1); // 25.0 °C

  const device = await makeDevice(t, 'gw-telemetry-2');
  // The rule watches a machine value the test controls; gateway metrics go through the same rules (the unit tests
  // raise the default disk-full rule from a gateway metric).
  const controller = await startTestController(t, {
    devices: [device],
    attestation: { intervalSeconds: 1, staleAfterSeconds: 120 },
    telemetry: { alarms: [{ name: 'press-overheat', device: 'press-1', metric: 'temperature', above: 80, forSeconds: 0, action: 'degrade' }] },
  });
  const config = await writeAgentConfig(device, controller, controller.brokerUrl, {
    attestation: { tpm: 'off' },
    telemetry: { flushMs: 50 },
    plugins: [
      {
        name: 'modbus',
        config: {
          collector: {
            devices: [
              { name: 'press-1', host: '127.0.0.1', port: plcPort, pollMs: 200, points: [{ name: 'temperature', table: 'input', address: 1, scale: 0.1 }] },
            ],
          },
        },
      },
    ],
  });
  const agent = spawnWard(t, ['agent', 'run', '-c', config]);
  const attestation = async () => (await getJson<{ state: string; reasons: string[] }>(`${controller.apiUrl}/api/devices/${device.id}/attestation`)).body;
  await waitFor('attested active', async () => ((await attestation()).state === 'active' ? true : undefined), 60_000);

  plc.input.set([900], 1); // 90.0 °C
  const degraded = await waitFor('degraded by the alarm', async () => {
    const a = await attestation();
    return a.state === 'degraded' ? a : undefined;
  });
  t.regex(degraded.reasons.join('; '), /health alarm: press-overheat/);
  await waitFor('the gateway took the verdict', async () => {
    const status = await getJson<{ result: { lifecycle: string } }>(`${controller.apiUrl}/api/devices/${device.id}/status`, { method: 'POST' });
    return status.body.result?.lifecycle === 'degraded' ? true : undefined;
  });
  const view = (await getJson<{ alarms: { rule: string; action: string }[] }>(`${controller.apiUrl}/api/devices/${device.id}/telemetry`)).body;
  t.deepEqual(
    view.alarms.map((a) => [a.rule, a.action]),
    [['press-overheat', 'degrade']],
  );

  plc.input.set([300], 1);
  await waitFor('active again after the alarm cleared', async () => ((await attestation()).state === 'active' ? true : undefined));
  t.is(agent.child.exitCode, null);
});
