import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ModbusProxy } from '../../plugins/modbus/proxy.js';
import { freePort } from '../helpers/net.js';
import type { BenchResult, Figure } from './lib.js';
import { jsonLine, round, sleep, startProcess, stopProcess, withTimeout } from './lib.js';

/**
 * Cost of Ward's inline Modbus/TCP proxy (plugins/modbus/proxy.ts) on loopback, in one run:
 * read holding registers (FC3, 10 registers, unit 1) from closed-loop clients (one request outstanding per
 * client, the next sent when the answer arrives, each client its own TCP connection), straight to the simulated
 * PLC and through the proxy (enforce mode, a read-only grant), with 1 and with 32 clients; plus the proxy in
 * observe mode with 1 client. Figures: requests/s, p50/p99 round trip, proxy/direct ratios, and the aims
 * (added p50 < 100 µs, throughput >= 0.7 of direct) next to what was measured.
 *
 * The PLC simulator runs in a child process (modbus-sim-child.ts); the clients and the proxy share this process.
 */
const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const SECONDS = Number(process.env.WARD_BENCH_SECONDS ?? 3);
const WARMUP_SECONDS = Number(process.env.WARD_BENCH_WARMUP_SECONDS ?? 1);
const UNIT = 1;
const QUANTITY = 10;
const MANY = 32;
const AIM_ADDED_P50_US = 100;
const AIM_THROUGHPUT_RATIO = 0.7;
const quiet = { error() {}, warn() {}, info() {}, debug() {} };

/** FC3 read of QUANTITY registers at 0; bytes 0-1 (transaction id) are rewritten per request. */
const REQUEST = Buffer.from([0, 0, 0, 0, 0, 6, UNIT, 3, 0, 0, 0, QUANTITY]);
/** MBAP (7) + fc + byte count + the registers. */
const ANSWER_BYTES = 7 + 2 + 2 * QUANTITY;

interface Load {
  readonly requests: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  /** CPU time (user + system) of this process per timed request, µs: the clients' share, plus the proxy's in proxy cases. */
  readonly cpuPerRequest: number;
  /** CPU time of this process / wall time over the timed window (1 = one core busy all along). */
  readonly busy: number;
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

/**
 * `clients` closed-loop clients against `port`: `warmupMs` untimed, then `measureMs` timed. A request counts if it
 * was sent and answered inside the timed window (those straddling its edges, at most one per client at each edge,
 * are left out). Every answer is checked to be the FC3 answer to the request just sent, so an exception answered
 * by the proxy itself could not pass for a PLC answer.
 */
async function load(port: number, clients: number, warmupMs: number, measureMs: number): Promise<Load> {
  const sockets = await Promise.all(Array.from({ length: clients }, () => connect(port)));
  const latencies: number[] = [];
  let recording = false;
  let stopping = false;
  const loops = sockets.map(
    (socket) =>
      new Promise<void>((resolve, reject) => {
        const request = Buffer.from(REQUEST);
        let tid = 0;
        let sentAt = 0n;
        let timed = false;
        let partial: Buffer | undefined;
        const send = () => {
          if (stopping) {
            resolve();
            return;
          }
          tid = (tid + 1) & 0xffff;
          // Safe to reuse: one request outstanding, so the previous write is long done when the answer arrives.
          request.writeUInt16BE(tid, 0);
          timed = recording;
          sentAt = process.hrtime.bigint();
          socket.write(request);
        };
        const fail = (why: string) => {
          stopping = true;
          socket.destroy();
          reject(new Error(why));
        };
        socket.on('data', (chunk: Buffer) => {
          const now = process.hrtime.bigint();
          const data = partial ? Buffer.concat([partial, chunk]) : chunk;
          if (data.length < 6 || data.length < 6 + data.readUInt16BE(4)) {
            partial = data;
            return;
          }
          partial = undefined;
          const size = 6 + data.readUInt16BE(4);
          if (size !== data.length || size !== ANSWER_BYTES || data.readUInt16BE(0) !== tid || data[7] !== 3 || data[8] !== 2 * QUANTITY) {
            fail(`unexpected answer to transaction ${tid}: ${data.toString('hex')}`);
            return;
          }
          if (timed && recording) latencies.push(Number(now - sentAt) / 1000);
          send();
        });
        socket.on('error', (err) => fail(`client socket: ${err.message}`));
        socket.on('close', () => {
          if (!stopping) fail('connection closed by the server');
        });
        send();
      }),
  );
  const all = Promise.all(loops);
  all.catch(() => undefined); // a failure is rethrown below, after the timed window
  try {
    await sleep(warmupMs);
    recording = true;
    const start = process.hrtime.bigint();
    const cpuStart = process.cpuUsage();
    await sleep(measureMs);
    recording = false;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const cpu = process.cpuUsage(cpuStart);
    const cpuMicros = cpu.user + cpu.system;
    stopping = true;
    await withTimeout(all, 5_000, `${clients} modbus clients on port ${port} finishing`);
    if (latencies.length === 0) throw new Error(`no request completed on port ${port}`);
    const sorted = Float64Array.from(latencies).sort();
    const q = (f: number) => sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] as number;
    return {
      requests: sorted.length,
      perSecond: sorted.length / seconds,
      p50: q(0.5),
      p99: q(0.99),
      cpuPerRequest: cpuMicros / sorted.length,
      busy: cpuMicros / 1e6 / seconds,
    };
  } finally {
    stopping = true;
    for (const s of sockets) s.destroy();
  }
}

export default async function modbusBench(): Promise<BenchResult> {
  const warmupMs = WARMUP_SECONDS * 1000;
  const measureMs = SECONDS * 1000;
  const figures: Figure[] = [];
  const notes: string[] = [];

  const sim = startProcess({ command: process.execPath, args: ['--import', 'tsx', join(here, 'modbus-sim-child.ts')], cwd: repo });
  let proxy: ModbusProxy | undefined;
  try {
    const lines: string[] = [];
    const ready = new Promise<number>((resolve) =>
      sim.onLine((line) => {
        lines.push(line);
        const port = jsonLine(line).port;
        if (typeof port === 'number') resolve(port);
      }),
    );
    const simPort = await withTimeout(
      Promise.race([ready, sim.exited.then((code) => Promise.reject(new Error(`PLC simulator exited ${code}: ${sim.output()}`)))]),
      30_000,
      'PLC simulator child',
    );

    proxy = new ModbusProxy({ log: quiet, audit: { record() {} }, now: Date.now, host: '127.0.0.1', maxConnectionsPerClient: MANY }); // every bench client is 127.0.0.1
    const proxyPort = await freePort();
    const grant = (mode: 'observe' | 'enforce') => ({ flow: 'bench', sources: ['127.0.0.1/32'], ops: ['read-only'], mode });
    const route = (mode: 'observe' | 'enforce') => ({
      listenPort: proxyPort,
      target: { address: '127.0.0.1', port: simPort },
      zone: 'it',
      grants: [grant(mode)],
    });
    await proxy.setRoutes([route('enforce')]);

    const run = (port: number, clients: number) => load(port, clients, warmupMs, measureMs);
    // The 1-client cases last: by then both paths are JIT-warm, and enforce and observe run back to back.
    const directN = await run(simPort, MANY);
    const proxyN = await run(proxyPort, MANY);
    const direct1 = await run(simPort, 1);
    const proxy1 = await run(proxyPort, 1);
    // Same route, same port, the grant switched to observe: reads are allowed either way, so only the mode differs.
    await proxy.setRoutes([route('observe')]);
    const observe1 = await run(proxyPort, 1);
    const counters = { ...proxy.counters };

    const cases: [string, string, Load][] = [
      ['direct_32', `direct, ${MANY} clients`, directN],
      ['proxy_32', `proxy (enforce), ${MANY} clients`, proxyN],
      ['direct_1', 'direct, 1 client', direct1],
      ['proxy_1', 'proxy (enforce), 1 client', proxy1],
      ['observe_1', 'proxy (observe), 1 client', observe1],
    ];
    for (const [key, label, r] of cases) {
      figures.push(
        { key: `${key}.req_per_s`, label: `${label}: throughput`, value: round(r.perSecond), unit: 'req/s' },
        { key: `${key}.p50_us`, label: `${label}: p50 round trip`, value: round(r.p50), unit: 'µs' },
        { key: `${key}.p99_us`, label: `${label}: p99 round trip`, value: round(r.p99), unit: 'µs' },
        { key: `${key}.cpu_us`, label: `${label}: bench-process CPU per request`, value: round(r.cpuPerRequest), unit: 'µs' },
        { key: `${key}.busy`, label: `${label}: bench-process CPU / wall time`, value: round(r.busy), unit: 'cores' },
      );
    }
    const ratio1 = proxy1.perSecond / direct1.perSecond;
    const ratioN = proxyN.perSecond / directN.perSecond;
    const added50 = proxy1.p50 - direct1.p50;
    figures.push(
      { key: 'ratio_1', label: `proxy/direct throughput, 1 client (aim >= ${AIM_THROUGHPUT_RATIO})`, value: round(ratio1), unit: 'x' },
      { key: 'aim.ratio_1', label: '  aim met', value: ratio1 >= AIM_THROUGHPUT_RATIO },
      { key: 'ratio_32', label: `proxy/direct throughput, ${MANY} clients (aim >= ${AIM_THROUGHPUT_RATIO})`, value: round(ratioN), unit: 'x' },
      { key: 'aim.ratio_32', label: '  aim met', value: ratioN >= AIM_THROUGHPUT_RATIO },
      { key: 'added_p50_us.1', label: `added p50, 1 client (aim < ${AIM_ADDED_P50_US} µs)`, value: round(added50), unit: 'µs' },
      { key: 'aim.added_p50_1', label: '  aim met', value: added50 < AIM_ADDED_P50_US },
      { key: 'added_p99_us.1', label: 'added p99, 1 client', value: round(proxy1.p99 - direct1.p99), unit: 'µs' },
      { key: 'added_p50_us.32', label: `added p50, ${MANY} clients (queueing, see note)`, value: round(proxyN.p50 - directN.p50), unit: 'µs' },
      { key: 'added_p99_us.32', label: `added p99, ${MANY} clients`, value: round(proxyN.p99 - directN.p99), unit: 'µs' },
      {
        key: 'proxy_cpu_us.1',
        label: 'proxy CPU per request, 1 client (proxy − direct case)',
        value: round(proxy1.cpuPerRequest - direct1.cpuPerRequest),
        unit: 'µs',
      },
      {
        key: 'proxy_cpu_us.32',
        label: `proxy CPU per request, ${MANY} clients (proxy − direct case)`,
        value: round(proxyN.cpuPerRequest - directN.cpuPerRequest),
        unit: 'µs',
      },
      {
        key: 'proxy_ceiling_req_per_s',
        label: `  implied ceiling of a proxy with one core to itself (${MANY} clients)`,
        value: round(1e6 / (proxyN.cpuPerRequest - directN.cpuPerRequest)),
        unit: 'req/s',
      },
      { key: 'observe_vs_enforce_p50_us', label: 'observe − enforce p50, 1 client', value: round(observe1.p50 - proxy1.p50), unit: 'µs' },
      { key: 'observe_vs_enforce_ratio', label: 'observe/enforce throughput, 1 client', value: round(observe1.perSecond / proxy1.perSecond), unit: 'x' },
      { key: 'proxy.forwarded', label: 'proxy: requests forwarded / denied', value: `${counters.forwarded.toLocaleString('en-US')} / ${counters.denied}` },
    );

    const stopped = await stopProcess(sim);
    const answered = lines.map(jsonLine).find((l) => typeof l.requests === 'number')?.requests;
    if (typeof answered === 'number') {
      figures.push({ key: 'plc.requests', label: 'PLC simulator: requests answered (warm-up included)', value: answered });
    }
    if (!stopped.clean) notes.push(`the PLC simulator child did not exit cleanly: ${sim.output().slice(-500)}`);

    notes.push(
      `FC3 read of ${QUANTITY} holding registers, unit ${UNIT}, over loopback; closed loop: each client is its own TCP connection with one request outstanding; ${WARMUP_SECONDS} s warm-up then ${SECONDS} s timed per case (WARD_BENCH_WARMUP_SECONDS, WARD_BENCH_SECONDS); round trip = process.hrtime.bigint() from write to the complete answer, in the client`,
      'the PLC simulator runs in a child process (own event loop); the clients and the proxy share the bench process and its event loop, so the proxy cases also pay for the clients on the same loop (on a gateway the clients and the PLC are other machines): the throughput ratios are pessimistic for the proxy, and every figure is loopback, without a real network',
      `with 1 client, throughput is 1 / round trip, so the 1-client throughput ratio is direct/proxy round trip: with a direct round trip of ${round(direct1.p50)} µs, ${AIM_THROUGHPUT_RATIO} would leave the proxy about ${round(direct1.p50 / AIM_THROUGHPUT_RATIO - direct1.p50)} µs; it is printed and judged anyway`,
      `proxy CPU per request = this process's CPU per request in the proxy case minus the direct case with as many clients (the client's share cancels out); the implied ceiling (1 s / that) is what a proxy on a core of its own could forward, an extrapolation, not a measurement; CPU / wall time near 1 core means this event loop was the bottleneck; well below 1 with 32 clients, other work on the machine (see the load average) had the CPUs, and the 32-client figures say little`,
      `added latency with ${MANY} clients is mostly queueing (closed loop: latency ≈ clients / throughput), so it follows the throughput ratio; the ${AIM_ADDED_P50_US} µs aim is judged on 1 client, where nothing queues`,
      'enforce vs observe (1 client, run back to back, last): the read is allowed in both, so only the mode differs; the proxy has no audit work for allowed reads in either, so a gap between the two lines is run-to-run noise (compare with the load average), not the mode',
      `cases run in this order: direct ${MANY}, proxy ${MANY}, direct 1, proxy 1, observe 1`,
    );
    return { figures, notes };
  } finally {
    await proxy?.close();
    await stopProcess(sim);
  }
}
