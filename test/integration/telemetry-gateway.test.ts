import { createRequire } from 'node:module';
import { createServer, type Server } from 'node:net';
import test from 'ava';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { systemClock } from '../../agent/core/clock.js';
import { GatewayMetrics, type GatewayMetricsOptions } from '../../agent/telemetry/gateway.js';
import type { MetricPoint } from '../../agent/telemetry/metric.js';

// GatewayMetrics on this machine's real /proc and /sys. Nothing here depends on timing: every wait is a
// collectNow(), itself bounded by the per-source timeout.

// The no-spawn contract, checked where it can break: systeminformation (CJS) captures child_process functions
// when it is first required, which GatewayMetrics does lazily, so wrapping them here, before any collection,
// sees every process it would start. Ward's own readers do not import child_process at all.
const cp = createRequire(import.meta.url)('node:child_process') as Record<string, unknown>;
const spawned: string[] = [];
const originals = new Map<string, unknown>();
for (const fn of ['exec', 'execSync', 'execFile', 'execFileSync', 'spawn', 'spawnSync', 'fork']) {
  const original = cp[fn] as (...args: unknown[]) => unknown;
  originals.set(fn, original);
  cp[fn] = function (this: unknown, ...args: unknown[]) {
    spawned.push(`${fn} ${String(args[0]).slice(0, 80)}`);
    return original.apply(this, args);
  };
}
test.after.always(() => {
  for (const [fn, original] of originals) cp[fn] = original;
});

function make(audit = new MemoryAuditSink()) {
  const warnings: unknown[] = [];
  const log = { info: () => undefined, warn: (obj: unknown) => warnings.push(obj) } as unknown as GatewayMetricsOptions['log'];
  const metrics = new GatewayMetrics({ clock: systemClock, audit, log, onPoints: () => undefined });
  return { metrics, audit, warnings };
}

const byName = (points: readonly MetricPoint[]) => new Map(points.map((x) => [x.name, x]));
const num = (p: MetricPoint | undefined) => (typeof p?.value === 'number' ? p.value : Number.NaN);

function listen(host: string): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      resolve({ server, port: typeof address === 'object' && address ? address.port : 0 });
    });
  });
}
const close = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));

test.serial('collectNow on this machine returns sane values and starts no process', async (t) => {
  const { metrics, warnings } = make();
  await metrics.collectNow();
  const points = byName(await metrics.collectNow());

  const load = num(points.get('Gateway/CPU/Load'));
  t.true(load >= 0 && load <= 100, `CPU load ${load}`);
  const total = num(points.get('Gateway/Memory/Total'));
  const available = num(points.get('Gateway/Memory/Available'));
  t.true(total > 0 && available > 0 && available <= total, `memory ${available}/${total}`);
  const used = num(points.get('Gateway/Memory/UsedPercent'));
  t.true(used >= 0 && used <= 100);
  t.true(num(points.get('Gateway/Uptime')) > 0);
  t.true(num(points.get('Gateway/Processes')) >= 1);
  const disk = num(points.get('Gateway/Disk/root/UsedPercent'));
  t.true(disk >= 0 && disk <= 100, `root filesystem ${disk}%`);
  t.true(num(points.get('Gateway/Disk/root/FreeBytes')) >= 0);
  t.is(typeof points.get('Gateway/Sockets/ListeningSet')?.value, 'string');
  t.is(points.get('Gateway/Sockets/Listening')?.type, 'UInt32');
  t.false(
    [...points.keys()].some((n) => n.startsWith('Gateway/Network/lo/')),
    'lo is skipped',
  );

  // Hardware-dependent: a number on a board with a sensor, else null/bad with one warning (this CI VM has none).
  const temp = points.get('Gateway/CPU/Temperature');
  if (temp?.value === null) {
    t.is(temp.quality, 'bad');
    t.is(warnings.filter((w) => (w as { source?: string }).source === 'temperature').length, 1, 'warned once over two collections');
  } else {
    t.true(num(temp) > -40 && num(temp) < 150, `temperature ${String(temp?.value)}`);
  }
  for (const p of points.values()) if (p.name !== 'Gateway/CPU/Temperature') t.is(p.quality, undefined, p.name);

  t.deepEqual(spawned, [], 'no child process in a collection');
  t.is(metrics.latest().length, points.size);
});

test.serial('a socket this process opens is a new listener with an audit event naming its port; closing it is audited too', async (t) => {
  const { metrics, audit } = make();
  await metrics.collectNow(); // baseline: nothing audited

  const { server, port } = await listen('127.0.0.1');
  let open = true;
  t.teardown(() => (open ? close(server) : undefined));
  const key = `tcp:127.0.0.1:${port}`;

  const after = byName(await metrics.collectNow());
  const set = String(after.get('Gateway/Sockets/ListeningSet')?.value).split(',');
  t.true(set.includes(key), `${key} in ${set.join(',')}`);
  // Other test processes may open listeners at the same time: look for ours.
  const opened = audit.events.filter((e) => e.action === 'telemetry.new-listener' && e.details?.port === port);
  t.is(opened.length, 1);
  t.like(opened[0], {
    category: 'control-system',
    actor: 'ward-agent',
    outcome: 'success',
    target: key,
    details: { proto: 'tcp', address: '127.0.0.1', port },
  });

  await close(server);
  open = false;
  const closed = byName(await metrics.collectNow());
  t.false(String(closed.get('Gateway/Sockets/ListeningSet')?.value).split(',').includes(key));
  const gone = audit.events.filter((e) => e.action === 'telemetry.listener-closed' && e.details?.port === port);
  t.is(gone.length, 1);
  t.like(gone[0], { target: key, details: { proto: 'tcp', address: '127.0.0.1', port } });
});

test.serial('an IPv6 loopback listener is read with the right byte order', async (t) => {
  let listener: { server: Server; port: number };
  try {
    listener = await listen('::1');
  } catch (err) {
    t.log(`no IPv6 loopback here (${(err as Error).message}): nothing to check`);
    t.pass();
    return;
  }
  t.teardown(() => close(listener.server));
  const { metrics } = make();
  const set = String(byName(await metrics.collectNow()).get('Gateway/Sockets/ListeningSet')?.value).split(',');
  t.true(set.includes(`tcp6:[::1]:${listener.port}`), set.join(','));
});
