import { type ChildProcess, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { pino } from 'pino';
import YAML from 'yaml';
import { validateConfig } from '../../agent/config/load.js';
import { type AgentConfigInput, agentConfigSchema } from '../../agent/config/schema.js';
import type { AuditSink } from '../../agent/core/audit.js';
import type { Clock } from '../../agent/core/clock.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import type { SigningKey } from '../../agent/shared/keys.js';
import { type Agent, buildAgent } from '../../agent/system.js';
import { type ControllerConfigInput, controllerConfigSchema } from '../../controller/config.js';
import { type Controller, startController } from '../../controller/controller.js';
import type { DeviceStore } from '../../controller/store.js';
import { builtinPlugins } from '../../plugins/index.js';
import { waitFor } from './net.js';
import { tempDir } from './tmp.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const WARD_CLI = join(REPO_ROOT, 'scripts/ward.mjs');

/** Logs are silent in tests unless WARD_TEST_LOG=debug|info|warn is set. */
export function testLogger() {
  return pino({ level: process.env.WARD_TEST_LOG ?? 'silent' });
}

export interface TestDevice {
  readonly id: string;
  readonly stateDir: string;
  readonly key: SigningKey;
}

export async function makeDevice(t: ExecutionContext, id: string): Promise<TestDevice> {
  const stateDir = join(await tempDir(t, `ward-agent-${id}-`), 'state');
  const { key } = await loadOrCreateSigningKey(stateDir);
  return { id, stateDir, key };
}

export async function startTestController(
  t: ExecutionContext,
  options: {
    devices: TestDevice[];
    brokerUrl?: string;
    stateDir?: string;
    replicaId?: string;
    sharedGroup?: string | null;
    tcpPort?: number;
    store?: DeviceStore;
    attestation?: ControllerConfigInput['attestation'];
    telemetry?: ControllerConfigInput['telemetry'];
    audit?: AuditSink;
  },
): Promise<Controller> {
  const input: ControllerConfigInput = {
    stateDir: options.stateDir ?? join(await tempDir(t, 'ward-controller-'), 'state'),
    replicaId: options.replicaId ?? 'test-controller',
    broker: options.brokerUrl
      ? { url: options.brokerUrl, sharedGroup: options.sharedGroup === undefined ? 'ward-controller' : options.sharedGroup }
      : { embedded: { host: '127.0.0.1', tcpPort: options.tcpPort ?? 0, wsPort: 0 } },
    api: { host: '127.0.0.1', port: 0 },
    devices: options.devices.map((d) => ({ id: d.id, publicKey: d.key.publicRaw })),
    rpc: { timeoutMs: 5_000 },
    // Tests that do not look at attestation get no surprise verdict halfway through.
    attestation: options.attestation ?? { intervalSeconds: 3600 },
    ...(options.telemetry ? { telemetry: options.telemetry } : {}),
  };
  const controller = await startController({
    config: validateConfig(input, '(test)', controllerConfigSchema),
    logger: testLogger(),
    ...(options.store ? { store: options.store } : {}),
    ...(options.audit ? { audit: options.audit } : {}),
  });
  // close() is idempotent: a test may close early (to restart it) and the teardown is then a no-op.
  t.teardown(() => controller.close());
  return controller;
}

export async function writeAgentConfig(
  device: TestDevice,
  controller: { publicKey: string },
  brokerUrl: string,
  extra: Partial<AgentConfigInput> = {},
): Promise<string> {
  const config: AgentConfigInput = {
    deviceId: device.id,
    stateDir: device.stateDir,
    controller: { publicKey: controller.publicKey },
    mqtt: { url: brokerUrl, reconnect: { baseMs: 100, capMs: 1_000 }, connectTimeoutMs: 10_000 },
    log: { level: 'info' },
    plugins: [{ name: 'sim', config: { periodMs: 100 } }],
    ...extra,
  };
  const file = join(device.stateDir, '..', 'agent.yaml');
  await writeFile(file, YAML.stringify(config));
  return file;
}

export interface AgentProcess {
  readonly child: ChildProcess;
  readonly output: () => string;
  readonly exited: Promise<number | null>;
}

/** Runs `ward <args>` from source in its own process (so kill -9 is real). Killed at test end if still running. */
export function spawnWard(t: ExecutionContext, args: string[], env: NodeJS.ProcessEnv = {}, options: { input?: string } = {}): AgentProcess {
  return spawnProcess(t, process.execPath, [WARD_CLI, ...args], env, options);
}

/** Any command, its stdout and stderr collected together; killed at test end if still running. */
export function spawnProcess(
  t: ExecutionContext,
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  options: { input?: string } = {},
): AgentProcess {
  const child = spawn(command, args, { stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  if (options.input !== undefined) child.stdin?.end(options.input);
  let out = '';
  child.stdout?.on('data', (d) => {
    out += d;
  });
  child.stderr?.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, output: () => out, exited };
}

export async function getJson<T = unknown>(url: string, init?: RequestInit): Promise<{ status: number; body: T }> {
  const res = await fetch(url, init);
  return { status: res.status, body: (await res.json()) as T };
}

export interface ApiDevice {
  id: string;
  online: boolean;
  lifecycle: string | null;
  offlineCause?: string;
  lastSeen: string | null;
  stale: boolean;
  protocol: string | null;
  plugins: string[];
}

export async function apiDevice(controller: Controller, id: string): Promise<ApiDevice | undefined> {
  const { body } = await getJson<{ devices: ApiDevice[] }>(`${controller.apiUrl}/api/devices`);
  return body.devices.find((d) => d.id === id);
}

/**
 * Resolves on the next state message from `id` that the controller applies and
 * after which `predicate(record)` holds. Arm it *before* triggering the change.
 */
export function nextAppliedState(
  controller: Controller,
  id: string,
  predicate: (record: { online: boolean; offlineCause?: string }) => boolean,
  timeoutMs = 30_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for a state from ${id}`));
    }, timeoutMs);
    const off = controller.registry.onState((e) => {
      if (e.deviceId !== id || e.outcome !== 'applied') return;
      void controller.registry.get(id).then((record) => {
        if (record && predicate(record)) {
          clearTimeout(timer);
          off();
          resolve();
        }
      });
    });
  });
}

/**
 * An agent in this process with its real control link and enforcement in a namespace of the test's own (for tests
 * that read the enforcer and lifecycle directly); software attestation. Started, connected, stopped at teardown.
 */
export async function startEnforcingAgent(
  t: ExecutionContext,
  options: {
    device: TestDevice;
    controller: { publicKey: string; brokerUrl: string };
    enforce: { netns: string; interfaces: Record<string, string> };
    audit: AuditSink;
    clock?: Clock;
  },
): Promise<{ agent: Agent; configFile: string }> {
  const { device, controller } = options;
  const configFile = join(device.stateDir, '..', 'agent.yaml');
  const configData = {
    deviceId: device.id,
    stateDir: device.stateDir,
    controller: { publicKey: controller.publicKey },
    mqtt: { url: controller.brokerUrl, reconnect: { baseMs: 100, capMs: 1_000 }, connectTimeoutMs: 5_000 },
    hardware: { statusLed: 'none', watchdog: 'none' },
    state: { heartbeatSeconds: 60 },
    attestation: { tpm: 'off' },
    enforce: options.enforce,
  };
  await writeFile(configFile, YAML.stringify(configData));
  const agent = await buildAgent({
    config: validateConfig(configData, configFile, agentConfigSchema),
    configFile,
    logger: testLogger(),
    plugins: builtinPlugins,
    audit: options.audit,
    ...(options.clock ? { clock: options.clock } : {}),
  });
  t.teardown(() => agent.stop());
  await agent.start();
  await waitFor('agent connected', () => agent.link?.connected);
  return { agent, configFile };
}
