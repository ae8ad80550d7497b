import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import type { AgentConfigInput } from '../../agent/config/schema.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import { createLogger } from '../../agent/log.js';
import { controllerConfigSchema } from '../../controller/config.js';
import { type Controller, startController } from '../../controller/controller.js';
import { type Command, describeCommand, memoryKiB, type Proc, sleep, startProcess, stopProcess, withTimeout } from './lib.js';

/**
 * A controller with embedded broker in the bench process, and real agents
 * started as their own processes against it. Used by agent-startup.bench.ts
 * and binary.bench.ts. Each `runAgent` is the first start of a fresh device:
 * new state folder, new key (created beforehand and registered with the
 * controller, as `ward dev` does), new `agent.yaml` (no plugins).
 */
export interface AgentRun {
  readonly deviceId: string;
  /** Wall time from spawn until the controller holds an authenticated `online: true` state for the device. */
  readonly onlineMs: number;
  /** Wall time from spawn until the agent's `"agent started"` log line, if it printed one. */
  readonly startedLogMs: number | undefined;
  /** VmRSS / VmHWM (KiB) of the spawned process after `idleMs` connected and idle. */
  readonly rss: number;
  readonly peak: number;
  readonly stillOnline: boolean;
  /** SIGTERM → exit. */
  readonly stopMs: number;
  readonly cleanStop: boolean;
}

export interface AgentHarness {
  /** Starts `command(configFile)`, waits (at most `timeoutMs`) for online, idles `idleMs`, reads memory, stops it. */
  runAgent(command: (configFile: string) => Command, options: { timeoutMs: number; idleMs: number }): Promise<AgentRun>;
}

export async function withAgentHarness<T>(
  options: { name: string; progress?: (msg: string) => void },
  body: (harness: AgentHarness) => Promise<T>,
): Promise<T> {
  const progress = options.progress ?? (() => undefined);
  const dir = await mkdtemp(join(tmpdir(), `ward-bench-${options.name}-`));
  let controller: Controller | undefined;
  const live = new Set<Proc>();
  try {
    const config = controllerConfigSchema.parse({
      stateDir: join(dir, 'controller'),
      replicaId: 'bench-controller',
      broker: { embedded: { host: '127.0.0.1', tcpPort: 0, wsPort: null }, sharedGroup: null },
      api: { host: '127.0.0.1', port: 0 },
      devices: [],
      log: { level: 'warn' },
    });
    const ctl = await startController({ config, logger: createLogger({ level: 'warn', name: 'bench-controller', destination: process.stderr }) });
    controller = ctl;
    let devices = 0;

    const runAgent: AgentHarness['runAgent'] = async (command, { timeoutMs, idleMs }) => {
      const deviceId = `bench-gw-${++devices}`;
      const agentDir = join(dir, deviceId);
      // Device key first, registered before the agent starts (as `ward dev` does).
      const { key } = await loadOrCreateSigningKey(join(agentDir, 'state'));
      await ctl.registry.register(deviceId, key.publicRaw);
      const agentConfig: AgentConfigInput = {
        deviceId,
        stateDir: join(agentDir, 'state'),
        controller: { publicKey: ctl.publicKey },
        mqtt: { url: ctl.brokerUrl },
        log: { level: 'info' },
        plugins: [],
      };
      const configFile = join(agentDir, 'agent.yaml');
      await writeFile(configFile, YAML.stringify(agentConfig), { mode: 0o600 });

      const registry = ctl.registry;
      let offState: (() => void) | undefined;
      const online = new Promise<number>((res) => {
        offState = registry.onState((e) => {
          if (e.deviceId !== deviceId || e.outcome !== 'applied') return;
          const seenAt = performance.now();
          void registry.get(deviceId).then((rec) => rec?.online && res(seenAt));
        });
      });

      const cmd = command(configFile);
      const t0 = performance.now();
      const proc = startProcess(cmd);
      live.add(proc);
      try {
        let startedLogAt: number | undefined;
        proc.onLine((line) => {
          if (startedLogAt === undefined && line.includes('"msg":"agent started"')) startedLogAt = performance.now();
        });
        const died = proc.exited.then((code) => {
          throw new Error(`agent exited (${code}) before coming online`);
        });
        died.catch(() => undefined);
        let onlineAt: number;
        try {
          onlineAt = await withTimeout(Promise.race([online, died]), timeoutMs, `${deviceId} online`);
        } catch (err) {
          throw new Error(`${describeCommand(cmd)}: ${(err as Error).message}\n--- agent output ---\n${proc.output()}`);
        } finally {
          offState?.();
        }

        progress(`${deviceId} online after ${Math.round(onlineAt - t0)} ms; idle for ${idleMs / 1000} s`);
        await sleep(idleMs);
        if (proc.child.pid === undefined || proc.child.exitCode !== null) throw new Error(`agent exited while idle:\n${proc.output()}`);
        const mem = await memoryKiB(proc.child.pid);
        const stillOnline = (await registry.get(deviceId))?.online === true;
        const stopped = await stopProcess(proc);
        return {
          deviceId,
          onlineMs: onlineAt - t0,
          startedLogMs: startedLogAt === undefined ? undefined : startedLogAt - t0,
          rss: mem.rss,
          peak: mem.peak,
          stillOnline,
          stopMs: stopped.ms,
          cleanStop: stopped.clean,
        };
      } finally {
        await stopProcess(proc);
        live.delete(proc);
      }
    };

    return await body({ runAgent });
  } finally {
    for (const proc of live) await stopProcess(proc);
    await controller?.close().catch((err) => progress(`controller close failed: ${String(err)}`));
    await rm(dir, { recursive: true, force: true });
  }
}
