import { mkdir } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type { PluginAuditEvent, PluginInstance, TelemetrySample } from '../../plugins/api/index.js';
import { type BrowseSessionLike, browseBounded } from '../../plugins/opcua/browse.js';
import type { ConnectionStatus } from '../../plugins/opcua/client.js';
import opcua from '../../plugins/opcua/index.js';
import { formatFingerprint } from '../../plugins/opcua/posture.js';
import { CNC_POINTS, type CncSimulator, startCncSimulator } from '../../plugins/opcua/sim.js';
import { freePort, waitFor } from '../helpers/net.js';
import { tempDir } from '../helpers/tmp.js';

// The OPC UA plugin against real node-opcua servers (the CNC simulator) on 127.0.0.1. One simulator is shared by
// the tests that only read from it (serial, since some pin its values); restart, down-at-start and certificate
// tests bring their own. Every wait is bounded; every server and plugin is stopped in teardown.
//
// Key generation is slow, so the simulators' and the client's PKI folders are cached across runs under the OS
// temp directory (test-only keys; never the home directory).

const PKI_CACHE = join(tmpdir(), 'ward-test-opcua-pki');
const WAIT_MS = 20_000;

const quiet = { error() {}, warn() {}, info() {}, debug() {} };
const t0 = Date.now();
const debugLog = (servers: Record<string, unknown>[]) => {
  const tag = String(servers[0]?.endpointUrl);
  const line = (level: string) => (o: object | string, m?: string) => console.error(Date.now() - t0, tag, level, m ?? '', JSON.stringify(o).slice(0, 300));
  return { error: line('E'), warn: line('W'), info: line('I'), debug: line('D') };
};

async function sim(t: ExecutionContext, opts: Parameters<typeof startCncSimulator>[0] = {}): Promise<CncSimulator> {
  await mkdir(PKI_CACHE, { recursive: true });
  const s = await startCncSimulator({ pkiDir: join(PKI_CACHE, 'sim'), tickMs: 100, ...opts });
  t.teardown(() => s.stop());
  return s;
}

interface Harness {
  readonly instance: PluginInstance;
  readonly samples: TelemetrySample[];
  readonly audits: PluginAuditEvent[];
  /** Samples of one point, in arrival order. */
  of(point: string): TelemetrySample[];
  server(name?: string): ConnectionStatus;
}

/** A started plugin with fast test timings; `servers` entries get defaults for what they leave out. */
async function plugin(t: ExecutionContext, servers: Record<string, unknown>[], extra: Record<string, unknown> = {}): Promise<Harness> {
  const config = opcua.configSchema.parse({
    servers,
    publishingIntervalMs: 100,
    reconnect: { initialDelayMs: 200, maxDelayMs: 1000 },
    requestTimeoutMs: 2000,
    pkiDir: join(PKI_CACHE, 'client'),
    ...extra,
  });
  const samples: TelemetrySample[] = [];
  const audits: PluginAuditEvent[] = [];
  const instance = opcua.create({
    deviceId: 'gw-opcua-test',
    config,
    log: process.env.OPCUA_TEST_DEBUG ? debugLog(servers) : quiet,
    clock: { now: () => Date.now(), monotonic: () => performance.now() },
    signal: new AbortController().signal,
    audit: { record: (e) => audits.push(e) },
    dataDir: await tempDir(t, 'ward-opcua-data-'),
  });
  instance.telemetry?.subscribe((s) => samples.push(s));
  t.teardown(() => instance.stop?.());
  await instance.start?.();
  return {
    instance,
    samples,
    audits,
    of: (point) => samples.filter((s) => s.point === point),
    server(name = 'cnc-1') {
      const status = instance.status?.() as { servers: Record<string, ConnectionStatus> };
      const s = status.servers[name];
      if (!s) throw new Error(`no status for ${name} yet`);
      return s;
    },
  };
}

const nodes = (points = CNC_POINTS, samplingIntervalMs = 100) =>
  points.map((p) => ({ nodeId: p.nodeId, name: p.name, samplingIntervalMs, ...(p.unit !== undefined ? { unit: p.unit } : {}) }));

const cnc = (endpointUrl: string, more: Record<string, unknown> = {}) => ({ name: 'cnc-1', endpointUrl, securityMode: 'None', nodes: nodes(), ...more });

const lastGood = (h: Harness, point: string) => h.of(point).findLast((s) => s.quality === 'good');

/** The plugin counts a session and says connected once every monitored item is created, after the first values may
 * already have arrived (notifications can beat the create responses). */
const connected = (h: Harness) => waitFor('the server connected in the status', () => h.server().state === 'connected', WAIT_MS);

// ---------------------------------------------------------------------------------------------------------------
// One shared simulator

let shared: CncSimulator | undefined;
test.before(async () => {
  await mkdir(PKI_CACHE, { recursive: true });
  shared = await startCncSimulator({ pkiDir: join(PKI_CACHE, 'sim'), tickMs: 100 });
});
test.after.always(async () => {
  await shared?.stop();
});
const sharedSim = (): CncSimulator => {
  if (!shared) throw new Error('the shared simulator did not start');
  return shared;
};

test.serial('values arrive for every configured point, good and sensible', async (t) => {
  const h = await plugin(t, [cnc(sharedSim().endpointUrl)]);
  await waitFor('a good sample of every point', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  const v = (name: string) => lastGood(h, name)?.value;
  const speed = v('Spindle/Speed');
  t.true(typeof speed === 'number' && speed >= 0 && speed <= 13_000, `speed ${speed}`);
  const load = v('Spindle/Load');
  t.true(typeof load === 'number' && load >= 0 && load <= 100, `load ${load}`);
  const temperature = v('Spindle/Temperature');
  t.true(typeof temperature === 'number' && temperature > 0 && temperature < 100, `temperature ${temperature}`);
  t.is(typeof v('Alarm/Active'), 'boolean');
  t.is(typeof v('Alarm/Text'), 'string');
  t.regex(String(v('Program/Name')), /^O\d+/);
  const parts = v('Parts/Count');
  t.true(typeof parts === 'number' && Number.isInteger(parts) && parts >= 0);

  const sample = lastGood(h, 'Spindle/Speed');
  t.is(sample?.device, 'cnc-1');
  t.is(sample?.unit, 'rpm');
  t.is(sample?.dataType, 'Double');
  t.is(lastGood(h, 'Parts/Count')?.dataType, 'UInt32');
  t.is(lastGood(h, 'Alarm/Active')?.dataType, 'Boolean');
  t.true(Math.abs((sample?.timestamp ?? 0) - Date.now()) < 60_000, 'the source timestamp is recent');
  await connected(h);
  t.is(h.server().state, 'connected');
  t.deepEqual(
    h.instance.telemetry
      ?.latest()
      .map((s) => s.point)
      .sort(),
    CNC_POINTS.map((p) => p.name).sort(),
  );
});

test.serial('a deadband holds back changes smaller than it', async (t) => {
  const s = sharedSim();
  const speed = CNC_POINTS.find((p) => p.name === 'Spindle/Speed')?.nodeId;
  // Pinned before subscribing, so every item's first value is 1000.
  t.teardown(() => s.set('Spindle/Speed', undefined));
  s.set('Spindle/Speed', 1000);
  // The same variable thrice: the raw item proves the server has sampled a value, the filtered ones must skip it.
  const h = await plugin(t, [
    cnc(s.endpointUrl, {
      nodes: [
        { nodeId: speed, name: 'Speed/Raw', samplingIntervalMs: 50 },
        { nodeId: speed, name: 'Speed/Filtered', samplingIntervalMs: 50, deadband: { type: 'absolute', value: 10 } },
        // 1 % of the simulator's EURange 0-12000 rpm: 120 rpm.
        { nodeId: speed, name: 'Speed/Percent', samplingIntervalMs: 50, deadband: { type: 'percent', value: 1 } },
      ],
    }),
  ]);
  await waitFor('1000 on both items', () => lastGood(h, 'Speed/Raw')?.value === 1000 && lastGood(h, 'Speed/Filtered')?.value === 1000, WAIT_MS);
  s.set('Spindle/Speed', 1005);
  await waitFor('the raw item to see 1005', () => lastGood(h, 'Speed/Raw')?.value === 1005, WAIT_MS);
  s.set('Spindle/Speed', 1020);
  await waitFor('the filtered item to see 1020', () => lastGood(h, 'Speed/Filtered')?.value === 1020, WAIT_MS);
  t.false(
    h.of('Speed/Filtered').some((x) => x.value === 1005),
    'a change of 5 within an absolute deadband of 10 is not reported',
  );
  s.set('Spindle/Speed', 1200);
  await waitFor('the percent item to see 1200', () => lastGood(h, 'Speed/Percent')?.value === 1200, WAIT_MS);
  t.deepEqual(
    h.of('Speed/Percent').map((x) => x.value),
    [1000, 1200],
    'changes within 1 % of the range (120 rpm) are not reported',
  );
});

test.serial('a bad status on one node makes that point bad while the others keep publishing', async (t) => {
  const s = sharedSim();
  const h = await plugin(t, [cnc(s.endpointUrl)]);
  await waitFor('good samples', () => lastGood(h, 'Spindle/Load') && lastGood(h, 'Program/Name'), WAIT_MS);
  t.teardown(() => s.set('Spindle/Load', undefined));
  s.set('Spindle/Load', 0, 'BadSensorFailure');
  const bad = await waitFor('a bad Spindle/Load', () => h.of('Spindle/Load').find((x) => x.quality === 'bad'), WAIT_MS);
  t.is(bad.error, 'BadSensorFailure');
  t.is(bad.value, null);
  t.is(bad.dataType, 'Double', 'a bad sample keeps its metric type');
  t.teardown(() => s.set('Program/Name', undefined));
  s.set('Program/Name', 'MARKER-BAD-STATUS');
  await waitFor('another point still publishing', () => lastGood(h, 'Program/Name')?.value === 'MARKER-BAD-STATUS', WAIT_MS);
  t.is(h.audits.filter((e) => e.action === 'opcua.node-invalid').length, 0, 'a bad value is not a configuration error');
});

test.serial('a misconfigured node id gives a bad sample and one audit event; the other points keep publishing', async (t) => {
  const s = sharedSim();
  const h = await plugin(t, [
    cnc(s.endpointUrl, { nodes: [...nodes(), { nodeId: 'ns=1;s=CNC.Spindle.Nope', name: 'Spindle/Nope' }, { nodeId: 'ns=9;i=4242', name: 'Elsewhere' }] }),
  ]);
  await waitFor('every good point', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  // Each invalid node is reported on its own create response: wait for both.
  await waitFor('a bad sample for both invalid nodes', () => h.of('Elsewhere').length > 0 && h.of('Spindle/Nope').some((x) => x.quality === 'bad'), WAIT_MS);
  const nope = h.of('Spindle/Nope').find((x) => x.quality === 'bad') as (typeof h.samples)[number];
  t.regex(nope.error ?? '', /BadNodeIdUnknown.*ns=1;s=CNC\.Spindle\.Nope/);
  t.regex(h.of('Elsewhere')[0]?.error ?? '', /^BadNodeId/);
  const invalid = h.audits.filter((e) => e.action === 'opcua.node-invalid');
  t.deepEqual(invalid.map((e) => e.details?.point).sort(), ['Elsewhere', 'Spindle/Nope']);
  t.true(invalid.every((e) => e.code === 'WARD_OPCUA_NODE_INVALID' && e.category === 'request-error' && e.outcome === 'failure'));
  t.deepEqual(h.server().badPoints, [
    { point: 'Spindle/Nope', error: nope.error },
    { point: 'Elsewhere', error: h.of('Elsewhere')[0]?.error },
  ]);
  // The rest keeps publishing after the refusals.
  t.teardown(() => s.set('Program/Name', undefined));
  s.set('Program/Name', 'MARKER-NODE-INVALID');
  await waitFor('a later good sample', () => lastGood(h, 'Program/Name')?.value === 'MARKER-NODE-INVALID', WAIT_MS);
  t.is(h.audits.filter((e) => e.action === 'opcua.node-invalid').length, 2, 'one audit event per bad node, not per sample');
});

test.serial('the posture check reports SecurityPolicy None and anonymous access, once', async (t) => {
  const h = await plugin(t, [cnc(sharedSim().endpointUrl)], { postureIntervalHours: 0.0003 }); // ≈ 1 s
  const findings = () => h.audits.filter((e) => e.action === 'opcua.posture-finding');
  await waitFor('posture findings', () => findings().length > 0, WAIT_MS);
  const byId = new Map(findings().map((e) => [`${e.details?.finding}|${e.details?.subject}`, e]));
  const none = byId.get('security-none|None/None');
  t.is(none?.details?.severity, 'high');
  t.is(none?.category, 'control-system');
  t.is(none?.code, 'WARD_OPCUA_POSTURE_FINDING');
  t.is(none?.details?.server, 'cnc-1');
  t.is(byId.get('anonymous-token|None/None')?.details?.severity, 'medium');
  t.is(byId.get('anonymous-token|SignAndEncrypt/Basic256Sha256')?.details?.severity, 'medium');
  t.true([...byId.keys()].some((k) => k.startsWith('certificate-self-signed|')));
  const posture = h.server().posture;
  if (!posture) return t.fail('no posture in status');
  t.true(posture.findings.some((f) => f.id === 'security-none'));
  // The periodic check runs again and finds the same: nothing new is audited.
  const count = findings().length;
  await waitFor('a second assessment', () => (h.server().posture?.checkedAt ?? 0) > posture.checkedAt, WAIT_MS);
  t.is(findings().length, count);
});

test.serial('browse discovers the Variables under a folder and subscribes them', async (t) => {
  const h = await plugin(t, [cnc(sharedSim().endpointUrl, { nodes: [], browse: { from: 'ns=1;s=CNC', maxDepth: 2, samplingIntervalMs: 100 } })]);
  // Browse paths from CNC are the simulator's point names: Spindle/Speed, Alarm/Active, ...
  await waitFor(
    () =>
      `a good sample of every discovered point; status ${JSON.stringify(h.server())}, good: ${CNC_POINTS.filter((p) => lastGood(h, p.name))
        .map((p) => p.name)
        .join(', ')}; seen: ${[...new Set(h.samples.map((x) => `${x.point}:${x.quality}`))].join(', ')}`,
    () => CNC_POINTS.every((p) => lastGood(h, p.name)),
    WAIT_MS,
  );
  t.is(h.server().points, CNC_POINTS.length);
  t.is(lastGood(h, 'Parts/Count')?.dataType, 'UInt32');
  t.is(lastGood(h, 'Spindle/Speed')?.unit, undefined, 'units come only from config');
});

// ---------------------------------------------------------------------------------------------------------------
// Simulators of their own

test('a server down at start: start() resolves, status shows the error, samples arrive once it is up', async (t) => {
  const port = await freePort();
  const h = await plugin(t, [cnc(`opc.tcp://127.0.0.1:${port}`)]);
  const status = await waitFor('an error in status', () => (h.server().lastError ? h.server() : undefined), WAIT_MS);
  t.regex(status.lastError ?? '', /cannot reach opc\.tcp:\/\/127\.0\.0\.1:\d+/);
  t.is(status.lastErrorCode, 'WARD_OPCUA_CONNECT_FAILED');
  const bad = await waitFor('bad samples', () => h.of('Spindle/Speed').find((s) => s.quality === 'bad'), WAIT_MS);
  t.regex(bad.error ?? '', /^server unreachable/);
  await sim(t, { port });
  await waitFor('good samples after the server came up', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  await connected(h);
  t.is(h.server().state, 'connected');
});

test('a server restart: every point goes bad with "unreachable", then samples resume', async (t) => {
  const first = await sim(t);
  const h = await plugin(t, [cnc(first.endpointUrl)]);
  await waitFor('good samples', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  await first.stop();
  await waitFor('a bad sample for every point', () => CNC_POINTS.every((p) => h.of(p.name).at(-1)?.quality === 'bad'), WAIT_MS);
  t.regex(h.of('Parts/Count').at(-1)?.error ?? '', /unreachable/);
  const gapAt = h.samples.length;
  const second = await sim(t, { port: first.port });
  second.set('Program/Name', 'AFTER-RESTART');
  await waitFor('samples after the restart', () => CNC_POINTS.every((p) => h.of(p.name).at(-1)?.quality === 'good'), WAIT_MS);
  await waitFor('a value from the new server', () => h.samples.slice(gapAt).some((s) => s.point === 'Program/Name' && s.value === 'AFTER-RESTART'), WAIT_MS);
  await connected(h);
  t.is(h.server().state, 'connected');
  t.log(`recovered through ${h.server().repairs} node-opcua repair(s); ${h.server().sessions} session(s) built by the plugin`);
});

test('a long outage: past the repair bound the plugin rebuilds the session itself', async (t) => {
  const first = await sim(t);
  // Repair bound = 3 × maxDelayMs + requestTimeoutMs = 1.3 s.
  const h = await plugin(t, [cnc(first.endpointUrl)], { reconnect: { initialDelayMs: 50, maxDelayMs: 100 }, requestTimeoutMs: 1000 });
  await waitFor('good samples', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  await connected(h);
  t.is(h.server().sessions, 1);
  await first.stop();
  await waitFor('the plugin to take over from node-opcua', () => h.server().failedAttempts > 0, WAIT_MS);
  const second = await sim(t, { port: first.port });
  second.set('Program/Name', 'REBUILT');
  await waitFor('a value from the new server', () => lastGood(h, 'Program/Name')?.value === 'REBUILT', WAIT_MS);
  await waitFor('every point good again', () => CNC_POINTS.every((p) => h.of(p.name).at(-1)?.quality === 'good'), WAIT_MS);
  await connected(h);
  t.is(h.server().sessions, 2, 'a second session, built by the plugin');
});

test('a network break: node-opcua reactivates the session and one read makes every point good again', async (t) => {
  const s = await sim(t);
  // A TCP relay between the plugin and the server, whose connections the test cuts while the server keeps running.
  const relayed = new Set<Socket>();
  const relay = createServer((inbound) => {
    const outbound = connect(s.port, '127.0.0.1');
    for (const sock of [inbound, outbound]) {
      relayed.add(sock);
      sock.on('error', () => {});
      sock.on('close', () => {
        relayed.delete(sock);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const sock of relayed) sock.destroy();
        relay.close(() => resolve());
      }),
  );
  const address = relay.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  // Repair bound = 3 × maxDelayMs + requestTimeoutMs = 23 s: well above a repair a loaded machine stalls for seconds,
  // so the plugin leaves the repair to node-opcua (the claim here) instead of rebuilding. The relay is back at once,
  // so node-opcua's first retry (after initialDelayMs) normally succeeds and the larger maximum costs nothing.
  const REPAIR_BOUND_MS = 3 * 5_000 + 8_000;
  const h = await plugin(t, [cnc(`opc.tcp://127.0.0.1:${port}`)], { reconnect: { initialDelayMs: 200, maxDelayMs: 5_000 }, requestTimeoutMs: 8_000 });
  await waitFor('good samples', () => CNC_POINTS.every((p) => lastGood(h, p.name)), WAIT_MS);
  for (const sock of relayed) sock.destroy();
  await waitFor('a bad sample for every point', () => CNC_POINTS.every((p) => h.of(p.name).at(-1)?.quality === 'bad'), WAIT_MS);
  // Parts/Count and Alarm/Text rarely change: only the refresh read brings them back within the wait.
  await waitFor(
    () => `every point good again (${JSON.stringify(h.server())})`,
    () => CNC_POINTS.every((p) => h.of(p.name).at(-1)?.quality === 'good'),
    REPAIR_BOUND_MS + WAIT_MS,
  );
  t.is(h.server().repairs, 1);
  t.is(h.server().sessions, 1, 'the same session, reactivated');
});

test('a server that accepts TCP but never answers: start() resolves and the status names the timeout', async (t) => {
  const sockets = new Set<Socket>();
  const blackhole = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        blackhole.close(() => resolve());
      }),
  );
  const address = blackhole.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const h = await plugin(t, [cnc(`opc.tcp://127.0.0.1:${port}`)], { requestTimeoutMs: 500 });
  const status = await waitFor('an error in status', () => (h.server().lastError ? h.server() : undefined), WAIT_MS);
  t.regex(status.lastError ?? '', /cannot reach|did not finish|timeout|timed out/i);
  t.is(h.samples.filter((s) => s.quality === 'good').length, 0);
});

test('SignAndEncrypt: an unpinned server certificate is refused and audited; the pinned one connects', async (t) => {
  const secure = await sim(t, { securityNone: false });
  const refused = await plugin(t, [cnc(secure.endpointUrl, { securityMode: 'SignAndEncrypt' })]);
  const status = await waitFor('a refusal', () => (refused.server().lastErrorCode === 'WARD_OPCUA_UNTRUSTED_CERT' ? refused.server() : undefined), WAIT_MS);
  t.true(status.lastError?.includes(formatFingerprint(secure.certificateSha256)), 'the status names the fingerprint to add');
  const audit = refused.audits.find((e) => e.action === 'opcua.untrusted-certificate');
  t.is(audit?.code, 'WARD_OPCUA_UNTRUSTED_CERT');
  t.is(audit?.outcome, 'refused');
  t.is(audit?.details?.sha256, secure.certificateSha256);
  t.is(refused.samples.filter((s) => s.quality === 'good').length, 0);

  const pinned = await plugin(t, [
    cnc(secure.endpointUrl, { securityMode: 'SignAndEncrypt', trustedServerCertificates: [formatFingerprint(secure.certificateSha256).toUpperCase()] }),
  ]);
  await waitFor('good samples over SignAndEncrypt', () => CNC_POINTS.every((p) => lastGood(pinned, p.name)), WAIT_MS);
  t.is(pinned.server().securityPolicy, 'Basic256Sha256');
  t.is(pinned.audits.filter((e) => e.action === 'opcua.untrusted-certificate').length, 0);
  // Without a None endpoint the posture check has nothing high to say about the channel.
  t.false(pinned.audits.some((e) => e.details?.finding === 'security-none'));
  t.is(refused.audits.filter((e) => e.action === 'opcua.untrusted-certificate').length, 1, 'refused once in the journal, not at every retry');
});

test.serial('bounded browse follows the real server’s continuation points and finds what browseAll finds', async (t) => {
  const ua = await import('node-opcua-client');
  const client = ua.OPCUAClient.create({
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 0 },
    securityMode: ua.MessageSecurityMode.None,
    securityPolicy: ua.SecurityPolicy.None,
  });
  await client.connect(sharedSim().endpointUrl);
  t.teardown(() => client.disconnect());
  const session = await client.createSession();
  t.teardown(() => session.close());
  const from = ['ns=1;s=CNC', 'i=85', 'i=2253', 'i=2253'];
  const description = (nodeId: string) => ({
    nodeId,
    browseDirection: ua.BrowseDirection.Forward,
    referenceTypeId: 'HierarchicalReferences',
    includeSubtypes: true,
    resultMask: 63,
  });
  // Two references per answer (a field of the request, which node-opcua takes from the session): every node with
  // more than two children needs continuation points.
  session.requestedMaxReferencesPerNode = 2;
  const bounded = await browseBounded(
    session as unknown as BrowseSessionLike<ReturnType<typeof description>, { nodeId: { toString(): string } }>,
    from.map((n) => description(n)),
    { maxReferences: 10_000, maxRequests: 200, nodesPerRequest: 2 },
  );
  session.requestedMaxReferencesPerNode = 0;
  const whole = await ua.browseAll(
    session,
    from.map((n) => description(n)),
  );
  t.is(bounded.truncated, undefined);
  t.true(bounded.requests > 2, `continuation points were used (${bounded.requests} requests)`);
  from.forEach((_, i) => {
    const ids = (bounded.results[i]?.references ?? []).map((r) => r.nodeId.toString());
    t.deepEqual(
      ids,
      (whole[i]?.references ?? []).map((r) => r.nodeId.toString()),
      `node ${from[i]}`,
    );
  });
  // Spindle, Feed, Alarm, Program, Parts: more than one answer holds.
  const groups = new Set(CNC_POINTS.map((p) => p.name.split('/')[0]));
  t.true((bounded.results[0]?.references.length ?? 0) >= groups.size, 'the CNC folder lists its groups');
});
