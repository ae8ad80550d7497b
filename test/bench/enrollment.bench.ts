import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import YAML from 'yaml';
import { validateConfig } from '../../agent/config/load.js';
import { agentConfigSchema } from '../../agent/config/schema.js';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { base45Decode } from '../../agent/shared/base45.js';
import { BUNDLE_PREFIX, caPinOf, encodeBundle, issueControllerCert, verifyBundle } from '../../agent/shared/bundle.js';
import { signPayload } from '../../agent/shared/envelope.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { qrInfo } from '../../agent/shared/qr.js';
import { buildAgent } from '../../agent/system.js';
import { controllerConfigSchema } from '../../controller/config.js';
import { startController } from '../../controller/controller.js';
import { certifyController, initFleet } from '../../controller/fleet.js';
import type { BenchResult, Figure } from './lib.js';
import { median, rate, round, startProcess, stopProcess, wallTime, withTimeout } from './lib.js';

/**
 * Enrollment figures (identity issue):
 *  - the QR payload: bundle bytes and characters, QR version and modules at
 *    level M, against a baseline of the same content as a signed JSON
 *    envelope (base64url fields) — what the compact CBOR + base45 format buys;
 *  - bundle verification rate (two ed25519 verifies + CBOR);
 *  - provision → online over loopback, in one process: from `agent.provision(text)`
 *    until the controller holds an authenticated online state from the device over
 *    mutual TLS (key generation, CSR, pinned-CA fetch, token login, issuance,
 *    reconnect), median of RUNS fresh gateways; baseline, in the same run: the same
 *    gateway, already enrolled, from start to online over the same broker;
 *  - the CLI path: `ward provision -c … --text …` as its own process (spawn → exit),
 *    then `ward agent run` (spawn → online), against `ward --version` as the
 *    process start-up baseline.
 */
const RUNS = 5;
const silent = pino({ level: 'silent' });

function payloadFigures(): { figures: Figure[]; text: string } {
  const root = generateSigningKey();
  const controller = generateSigningKey();
  const now = Math.floor(Date.now() / 1000);
  const caFingerprint = randomBytes(32).toString('base64url');
  const cert = issueControllerCert(root, {
    controllerPublicKey: controller.publicRaw,
    caPin: caPinOf(caFingerprint),
    notAfter: now + 365 * 86_400,
    rootVersion: 1,
  });
  const content = { token: randomBytes(16), exp: now + 86_400, brokers: ['192.168.100.10:8884'], site: 'plant-lyon', line: 'line-3', cell: 'cell-12' };
  const text = encodeBundle(controller, { controllerCert: cert, ...content });
  const bytes = base45Decode(text.slice(BUNDLE_PREFIX.length)).length;
  const info = qrInfo(text, 'M');
  // Baseline: the same fields as nested signed JSON envelopes (how every other Ward message travels).
  const certJson = signPayload(root, {
    typ: 'ward.controller.cert',
    iat: now,
    exp: now + 365 * 86_400,
    version: 1,
    publicKey: controller.publicRaw,
    caFingerprint,
  });
  const json = JSON.stringify(
    signPayload(controller, {
      typ: 'ward.enroll.bundle',
      iat: now,
      exp: content.exp,
      nonce: randomBytes(8).toString('base64url'),
      controllerCert: certJson as never,
      token: content.token.toString('base64url'),
      brokers: content.brokers,
      site: content.site,
      line: content.line,
      cell: content.cell,
    }),
  );
  const jsonInfo = qrInfo(json, 'M');
  const trust = { payload: { version: 1, keys: { [root.kid]: root.publicRaw } } };
  const verify = rate(() => verifyBundle(text, { root: trust, nowSec: now }), { budgetMs: 1000 });
  return {
    text,
    figures: [
      { key: 'bundle.bytes', label: 'bundle (CBOR), plant-lyon/line-3/cell-12, one broker', value: bytes, unit: 'B' },
      { key: 'bundle.chars', label: 'QR text (WARD1: + base45)', value: text.length, unit: 'chars' },
      { key: 'bundle.qr_version_m', label: `QR version at level M (${info.segments.map((s) => s.mode).join('+')})`, value: info.version },
      { key: 'bundle.qr_modules_m', label: 'QR modules per side at M', value: info.modules },
      { key: 'baseline.json_chars', label: 'baseline: same content as signed JSON envelopes', value: json.length, unit: 'chars' },
      { key: 'baseline.json_qr_version_m', label: `baseline: its QR version at M (${jsonInfo.segments.length} mixed segments)`, value: jsonInfo.version },
      { key: 'baseline.json_qr_modules_m', label: 'baseline: its modules per side', value: jsonInfo.modules },
      { key: 'bundle.modules_ratio', label: '  QR side length, CBOR+base45 / JSON', value: round(info.modules / jsonInfo.modules) },
      { key: 'bundle.verify_per_s', label: 'bundle verifications per second (2 ed25519 verifies + CBOR)', value: Math.round(verify.perSecond), unit: '/s' },
    ],
  };
}

export default async function enrollmentBench(): Promise<BenchResult> {
  const progress = (msg: string) => process.stderr.write(`  [enrollment] ${msg}\n`);
  const { figures } = payloadFigures();
  const dir = await mkdtemp(join(tmpdir(), 'ward-bench-enroll-'));
  const cleanup: (() => Promise<void>)[] = [];
  try {
    progress('fleet + certified controller with its TLS broker');
    const fleetDir = join(dir, 'fleet');
    const passphrase = 'bench passphrase, not a secret';
    const init = await initFleet({ dir: fleetDir, passphrase, scryptCost: 2 ** 14 });
    await certifyController({ fleetDir, passphrase, controllerStateDir: join(dir, 'controller') });
    const controller = await startController({
      config: validateConfig(
        { stateDir: join(dir, 'controller'), broker: { embedded: { host: '127.0.0.1', tcpPort: 0, wsPort: null } }, api: { host: '127.0.0.1', port: 0 } },
        '(bench)',
        controllerConfigSchema,
      ),
      logger: silent,
      audit: new MemoryAuditSink(),
    });
    cleanup.push(() => controller.close());
    const enrollment = controller.enrollment;
    if (!enrollment) throw new Error('enrollment is off');
    const whenOnline = (deviceId: string) =>
      new Promise<void>((resolve) => {
        const off = controller.registry.onState(async (e) => {
          if (e.deviceId === deviceId && e.outcome === 'applied' && (await controller.registry.get(deviceId))?.online) {
            off();
            resolve();
          }
        });
      });
    const provisionMs: number[] = [];
    const restartMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      progress(`gateway ${i + 1}/${RUNS}`);
      const config = validateConfig(
        { stateDir: join(dir, `gw-${i}`), trust: { rootFile: init.rootFile }, hardware: { statusLed: 'none', watchdog: 'none' } },
        '(bench)',
        agentConfigSchema,
      );
      const code = await enrollment.createCode({ site: 'lyon', line: 'l3', cell: `c${i}`, ttlSeconds: 600 });
      const agent = await buildAgent({ config, logger: silent, plugins: [], audit: new MemoryAuditSink() });
      await agent.start();
      const t0 = performance.now();
      const deviceId = await withTimeout(agent.provision(code.text), 30_000, 'provision');
      await withTimeout(whenOnline(deviceId), 30_000, 'online after provisioning');
      provisionMs.push(performance.now() - t0);
      await agent.stop();
      // Baseline: the same gateway, already enrolled, from start to online.
      const again = await buildAgent({ config, logger: silent, plugins: [], audit: new MemoryAuditSink() });
      const t1 = performance.now();
      const online = whenOnline(deviceId);
      await again.start();
      await withTimeout(online, 30_000, 'online after restart');
      restartMs.push(performance.now() - t1);
      await again.stop();
    }
    // The CLI path, as a technician runs it: `ward provision` (its own process), then `ward agent run` to online.
    const cliRuns = 3;
    const provisionWall: number[] = [];
    const agentOnline: number[] = [];
    const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
    const ward = (...args: string[]) => ({ command: process.execPath, args: [join(repo, 'scripts/ward.mjs'), ...args], cwd: repo });
    for (let i = 0; i < cliRuns; i++) {
      progress(`ward provision + ward agent run ${i + 1}/${cliRuns}`);
      const gwDir = join(dir, `cli-${i}`);
      await mkdir(gwDir, { recursive: true });
      const configFile = join(gwDir, 'agent.yaml');
      await writeFile(
        configFile,
        YAML.stringify({
          stateDir: join(gwDir, 'state'),
          trust: { rootFile: init.rootFile },
          hardware: { statusLed: 'none', watchdog: 'none' },
          log: { level: 'warn' },
        }),
      );
      const code = await enrollment.createCode({ site: 'lyon', line: 'l3', cell: `k${i}`, ttlSeconds: 600 });
      const t0 = performance.now();
      const prov = startProcess(ward('provision', '-c', configFile, '--text', code.text));
      const exit = await withTimeout(prov.exited, 60_000, 'ward provision');
      if (exit !== 0) throw new Error(`ward provision exited ${exit}: ${prov.output()}`);
      provisionWall.push(performance.now() - t0);
      const deviceId = /enrolled as (\S+)/.exec(prov.output())?.[1] as string;
      const online = whenOnline(deviceId);
      const t1 = performance.now();
      const agentProc = startProcess(ward('agent', 'run', '-c', configFile));
      await withTimeout(online, 60_000, 'agent online');
      agentOnline.push(performance.now() - t1);
      await stopProcess(agentProc);
    }
    const versionWall = await wallTime(ward('--version'), 3);
    const p = median(provisionMs);
    const r = median(restartMs);
    figures.push(
      {
        key: 'cli.provision_wall_ms',
        label: `ward provision (process, from source) spawn → exit, median of ${cliRuns}`,
        value: round(median(provisionWall)),
        unit: 'ms',
      },
      { key: 'cli.agent_online_ms', label: '  then ward agent run spawn → online over mTLS, median', value: round(median(agentOnline)), unit: 'ms' },
      { key: 'cli.total_ms', label: '  ward provision → online, total', value: round(median(provisionWall) + median(agentOnline)), unit: 'ms' },
      { key: 'baseline.ward_version_ms', label: 'baseline: ward --version (process start from source), wall', value: round(versionWall), unit: 'ms' },
    );
    figures.push(
      { key: 'provision.online_ms', label: `provision → online over loopback mTLS, median of ${RUNS}`, value: round(p), unit: 'ms' },
      { key: 'baseline.enrolled_start_online_ms', label: 'baseline: enrolled gateway start → online, median', value: round(r), unit: 'ms' },
      { key: 'provision.ratio', label: '  provisioning / enrolled start', value: round(p / r) },
    );
  } finally {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
  return {
    figures,
    notes: [
      'in-process controller and agent (one event loop): the time is the protocol and crypto, not process start-up; the CLI path adds one `ward provision` process start',
    ],
  };
}
