import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { type ControllerConfigInput, controllerConfigSchema } from '../../controller/config.js';
import { type Controller, startController } from '../../controller/controller.js';
import { builtinPlugins } from '../../plugins/index.js';
import { validateConfig } from '../config/load.js';
import { type AgentConfigInput, agentConfigSchema } from '../config/schema.js';
import { describeError } from '../core/errors.js';
import { loadOrCreateSigningKey } from '../identity/keystore.js';
import { createLogger } from '../log.js';
import { ensurePrivateDir } from '../state/files.js';
import { type Agent, buildAgent } from '../system.js';

/**
 * `ward dev`: the whole system on one machine. Controller with its embedded
 * broker, plus one agent (in this process) with a simulated PLC, all state in
 * one folder. The agent and controller configs are written there too, so a
 * person can run the same pieces separately with `ward agent run -c …`.
 */
export interface DevOptions {
  readonly dir?: string;
  readonly mqttPort: number;
  readonly wsPort: number;
  readonly apiPort: number;
  readonly logLevel: string;
  /** Where the banner goes (stderr by default; logs go to stdout). */
  readonly out?: NodeJS.WritableStream;
}

export interface DevStack {
  readonly dir: string;
  readonly controller: Controller;
  readonly agent: Agent;
  stop(): Promise<void>;
}

export const DEV_DEVICE_ID = 'dev-gw-1';

export async function runDev(options: DevOptions): Promise<DevStack> {
  const out = options.out ?? process.stderr;
  const dir = options.dir ? resolve(options.dir) : await mkdtemp(join(tmpdir(), 'ward-dev-'));
  await ensurePrivateDir(dir);
  const agentStateDir = join(dir, 'agent');
  const { key: deviceKey } = await loadOrCreateSigningKey(agentStateDir);

  const controllerInput: ControllerConfigInput = {
    stateDir: join(dir, 'controller'),
    replicaId: 'dev-controller',
    broker: { embedded: { host: '127.0.0.1', tcpPort: options.mqttPort, wsPort: options.wsPort }, sharedGroup: null },
    api: { host: '127.0.0.1', port: options.apiPort },
    devices: [{ id: DEV_DEVICE_ID, publicKey: deviceKey.publicRaw }],
    log: { level: options.logLevel as 'info' },
  };
  const controllerConfig = validateConfig(controllerInput, '(ward dev)', controllerConfigSchema);
  const controllerLog = createLogger({ level: controllerConfig.log.level, name: 'ward-controller' });
  const controller = await startController({ config: controllerConfig, logger: controllerLog });

  let agent: Agent | undefined;
  try {
    const agentInput: AgentConfigInput = {
      deviceId: DEV_DEVICE_ID,
      stateDir: agentStateDir,
      controller: { publicKey: controller.publicKey },
      mqtt: { url: controller.brokerUrl, reconnect: { baseMs: 250, capMs: 5_000 } },
      state: { heartbeatSeconds: 60 },
      // A development stack never drives the host's LEDs or answers to its service manager.
      hardware: { statusLed: 'none', watchdog: 'none' },
      log: { level: options.logLevel as 'info' },
      plugins: [{ name: 'sim', config: { machine: 'press-1' } }],
    };
    const agentConfig = validateConfig(agentInput, '(ward dev)', agentConfigSchema);
    await writeFile(join(dir, 'agent.yaml'), YAML.stringify(agentInput), { mode: 0o600 });
    await writeFile(join(dir, 'controller.yaml'), YAML.stringify(controllerInput), { mode: 0o600 });

    const online = new Promise<boolean>((resolveOnline) => {
      const timer = setTimeout(() => resolveOnline(false), 20_000);
      const off = controller.registry.onState(async (e) => {
        if (e.deviceId !== DEV_DEVICE_ID || e.outcome !== 'applied') return;
        if ((await controller.registry.get(DEV_DEVICE_ID))?.online) {
          clearTimeout(timer);
          off();
          resolveOnline(true);
        }
      });
    });
    agent = await buildAgent({ config: agentConfig, logger: createLogger({ level: agentConfig.log.level, name: 'ward-agent' }), plugins: builtinPlugins });
    await agent.start();
    const isOnline = await online;
    const lines = [
      '',
      `Ward dev stack is running (state in ${dir})`,
      `  devices        curl ${controller.apiUrl}/api/devices`,
      `  health         curl ${controller.apiUrl}/api/health`,
      `  ping agent     curl -X POST ${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/ping`,
      `  MQTT broker    ${controller.brokerUrl}${controller.wsUrl ? `  (WebSocket ${controller.wsUrl})` : ''}`,
      `  agent          ${DEV_DEVICE_ID}: ${isOnline ? 'online' : 'NOT online yet (see logs)'}, lifecycle ${agent.lifecycle.state}`,
      `  configs        ${join(dir, 'agent.yaml')}, ${join(dir, 'controller.yaml')}`,
      'Press Ctrl-C to stop.',
      '',
    ];
    out.write(`${lines.join('\n')}\n`);
  } catch (err) {
    await agent?.stop().catch(() => undefined);
    await controller.close();
    throw err;
  }

  const started = agent;
  return {
    dir,
    controller,
    agent: started,
    async stop() {
      try {
        await started.stop();
      } catch (err) {
        out.write(`ward dev: agent stop failed: ${describeError(err)}\n`);
      }
      await controller.close();
      out.write('Ward dev stack stopped.\n');
    },
  };
}
