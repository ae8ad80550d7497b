import type { ExecutionContext } from 'ava';
import { validateConfig } from '../../agent/config/load.js';
import { type AgentConfigInput, agentConfigSchema } from '../../agent/config/schema.js';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { type Agent, buildAgent } from '../../agent/system.js';
import type { AuditHeadRecord } from '../../controller/audit-store.js';
import type { Controller } from '../../controller/controller.js';
import { builtinPlugins } from '../../plugins/index.js';
import { waitFor } from './net.js';
import { type TestDevice, testLogger } from './stack.js';

/** An agent with a static identity (device key pre-registered with the controller), built in this process. */
export async function staticAgent(
  t: ExecutionContext,
  device: TestDevice,
  controller: { publicKey: string },
  brokerUrl: string,
  extra: Partial<AgentConfigInput> = {},
): Promise<{ agent: Agent; audit: MemoryAuditSink }> {
  const audit = new MemoryAuditSink();
  const config = validateConfig(
    {
      deviceId: device.id,
      stateDir: device.stateDir,
      controller: { publicKey: controller.publicKey },
      mqtt: { url: brokerUrl, reconnect: { baseMs: 100, capMs: 1_000 }, connectTimeoutMs: 5_000 },
      hardware: { statusLed: 'none', watchdog: 'none' },
      audit: { receiptTimeoutMs: 2_000, checkpointIntervalMs: 200 },
      ...extra,
    },
    '(test)',
    agentConfigSchema,
  );
  const agent = await buildAgent({ config, logger: testLogger(), plugins: builtinPlugins, audit });
  t.teardown(() => agent.stop());
  return { agent, audit };
}

/** Waits until the controller holds (and has receipted to the agent) everything up to `seq`. */
export async function untilReceipted(controller: Controller, agent: Agent, seq: number, timeoutMs = 60_000): Promise<AuditHeadRecord> {
  const deviceId = agent.deviceId as string;
  return waitFor(
    `controller receipted seq ${seq}`,
    async () => {
      const head = await controller.auditStore.head(deviceId);
      return head && head.seq >= seq && (agent.journal.status().receipted?.seq ?? 0) >= seq ? head : undefined;
    },
    timeoutMs,
    50,
  );
}
