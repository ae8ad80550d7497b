import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { validateConfig } from '../../agent/config/load.js';
import { type AgentConfig, type AgentConfigInput, agentConfigSchema } from '../../agent/config/schema.js';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import type { Clock } from '../../agent/core/clock.js';
import { type Agent, buildAgent } from '../../agent/system.js';
import { type ControllerConfigInput, controllerConfigSchema } from '../../controller/config.js';
import { type Controller, startController } from '../../controller/controller.js';
import { certifyController, initFleet } from '../../controller/fleet.js';
import { builtinPlugins } from '../../plugins/index.js';
import { testLogger } from './stack.js';
import { tempDir } from './tmp.js';

/**
 * A real fleet for tests: a sealed root key (cheap scrypt cost: tests are not
 * about the KDF), root.json, and a controller state folder certified by it.
 */
export interface TestFleet {
  readonly dir: string;
  readonly rootFile: string;
  readonly passphrase: string;
  readonly controllerStateDir: string;
}

export const TEST_PASSPHRASE = 'correct horse battery staple';

export async function makeFleet(t: ExecutionContext, options: { now?: number } = {}): Promise<TestFleet> {
  const base = await tempDir(t, 'ward-fleet-');
  const dir = join(base, 'fleet');
  const controllerStateDir = join(base, 'controller');
  const init = await initFleet({ dir, passphrase: TEST_PASSPHRASE, name: 'test', scryptCost: 2 ** 14, ...(options.now ? { now: options.now } : {}) });
  await certifyController({ fleetDir: dir, passphrase: TEST_PASSPHRASE, controllerStateDir, ...(options.now ? { now: options.now } : {}) });
  return { dir, rootFile: init.rootFile, passphrase: TEST_PASSPHRASE, controllerStateDir };
}

export async function startFleetController(
  t: ExecutionContext,
  fleet: TestFleet,
  options: { audit?: MemoryAuditSink; clock?: Clock; extra?: Partial<ControllerConfigInput> } = {},
): Promise<Controller> {
  const input: ControllerConfigInput = {
    stateDir: fleet.controllerStateDir,
    replicaId: 'test-controller',
    broker: { embedded: { host: '127.0.0.1', tcpPort: 0, wsPort: null } },
    api: { host: '127.0.0.1', port: 0 },
    rpc: { timeoutMs: 5_000 },
    // No attestation round during a test unless it asks for one: a test slowed past the default minute would be
    // challenged and see its gateway move from `attesting` to `active` under it.
    attestation: { intervalSeconds: 3600 },
    ...options.extra,
  };
  const controller = await startController({
    config: validateConfig(input, '(test)', controllerConfigSchema),
    logger: testLogger(),
    ...(options.audit ? { audit: options.audit } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  t.teardown(() => controller.close());
  return controller;
}

/** A fresh (unprovisioned) gateway that trusts the fleet root, built in this process. */
export async function freshAgent(
  t: ExecutionContext,
  fleet: TestFleet,
  extra: Partial<AgentConfigInput> = {},
  options: { audit?: MemoryAuditSink; clock?: Clock } = {},
): Promise<{ agent: Agent; audit: MemoryAuditSink; stateDir: string; config: AgentConfig }> {
  const stateDir = join(await tempDir(t, 'ward-gw-'), 'state');
  const audit = options.audit ?? new MemoryAuditSink();
  const config = validateConfig(
    {
      stateDir,
      trust: { rootFile: fleet.rootFile },
      hardware: { statusLed: 'none', watchdog: 'none' },
      provisioning: { timeoutMs: 10_000 },
      plugins: [{ name: 'sim', config: { periodMs: 100 } }],
      ...extra,
    },
    '(test)',
    agentConfigSchema,
  );
  const agent = await buildAgent({ config, logger: testLogger(), plugins: builtinPlugins, audit, ...(options.clock ? { clock: options.clock } : {}) });
  t.teardown(() => agent.stop());
  return { agent, audit, stateDir, config };
}
