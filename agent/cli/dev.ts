import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { type ControllerConfigInput, controllerConfigSchema } from '../../controller/config.js';
import { type Controller, issueObserverIdentity, startController } from '../../controller/controller.js';
import { certifyController, initFleet, ROOT_FILE } from '../../controller/fleet.js';
import { builtinPlugins } from '../../plugins/index.js';
import { ModbusSimServer } from '../../plugins/modbus/server.js';
import { CNC_POINTS, type CncSimulator, startCncSimulator } from '../../plugins/opcua/sim.js';
import { validateConfig } from '../config/load.js';
import { type AgentConfigInput, agentConfigSchema } from '../config/schema.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { createLogger } from '../log.js';
import { renderPng, renderTerminal } from '../shared/qr.js';
import { ensurePrivateDir, fileMode } from '../state/files.js';
import { type Agent, buildAgent } from '../system.js';

/**
 * `ward dev`: the whole system on one machine. A dev fleet root, the
 * controller it certifies with its embedded broker (TLS, enrollment tokens,
 * per-device ACLs), and one agent (in this process) with a simulated PLC that
 * enrolls through the same QR-code path as a gateway at the line. All state
 * in one folder. The agent and controller configs are written there too, so a
 * person can run the same pieces separately with `ward agent run -c …`.
 */
export interface DevOptions {
  readonly dir?: string;
  readonly mqttPort: number;
  readonly wsPort: number;
  readonly apiPort: number;
  /** The simulated Modbus/TCP PLC (loopback); the agent's modbus plugin polls it. Default 15502. */
  readonly modbusPort?: number;
  /** The simulated CNC machine's OPC UA server (loopback); the agent's opcua plugin subscribes to it. Default 14840; 0 picks a free port. */
  readonly opcuaPort?: number;
  readonly logLevel: string;
  /** Where the banner goes (stderr by default; logs go to stdout). */
  readonly out?: NodeJS.WritableStream;
}

export interface DevStack {
  readonly dir: string;
  readonly controller: Controller;
  readonly agent: Agent;
  readonly plc: ModbusSimServer;
  stop(): Promise<void>;
}

export const DEV_DEVICE_ID = 'dev-gw-1';
const DEV_SITE = 'dev-site';

/**
 * The dev stack's own fleet, created on first run: a throwaway passphrase
 * (kept in the folder, 0600) and the cheapest scrypt cost, because this root
 * guards nothing but a development folder. Never use it for real gateways.
 */
async function devFleet(dir: string): Promise<{ rootFile: string; passphraseFile: string; controllerStateDir: string }> {
  const fleetDir = join(dir, 'fleet');
  const passphraseFile = join(dir, 'fleet-passphrase');
  const controllerStateDir = join(dir, 'controller');
  const rootFile = join(fleetDir, ROOT_FILE);
  if ((await fileMode(rootFile)) === undefined) {
    const passphrase = randomBytes(18).toString('base64url');
    await writeFile(passphraseFile, `${passphrase}\n`, { mode: 0o600 });
    await initFleet({ dir: fleetDir, passphrase, name: 'ward-dev', scryptCost: 2 ** 14 });
    await certifyController({ fleetDir, passphrase, controllerStateDir });
  }
  return { rootFile, passphraseFile, controllerStateDir };
}

export async function runDev(options: DevOptions): Promise<DevStack> {
  const out = options.out ?? process.stderr;
  const dir = options.dir ? resolve(options.dir) : await mkdtemp(join(tmpdir(), 'ward-dev-'));
  await ensurePrivateDir(dir);
  const agentStateDir = join(dir, 'agent');
  const fleet = await devFleet(dir);

  const controllerInput: ControllerConfigInput = {
    stateDir: fleet.controllerStateDir,
    replicaId: 'dev-controller',
    broker: { embedded: { host: '127.0.0.1', tcpPort: options.mqttPort, wsPort: options.wsPort }, sharedGroup: null },
    api: { host: '127.0.0.1', port: options.apiPort },
    log: { level: options.logLevel as 'info' },
    // Attested within seconds of starting (a plant would use minutes).
    attestation: { intervalSeconds: 15, staleAfterSeconds: 60 },
  };
  const controllerConfig = validateConfig(controllerInput, '(ward dev)', controllerConfigSchema);
  const controllerLog = createLogger({ level: controllerConfig.log.level, name: 'ward-controller' });
  const controller = await startController({ config: controllerConfig, logger: controllerLog });
  // A press PLC on loopback: live input registers (cycle counter, temperature ×10), a running flag, setpoints.
  const plc = new ModbusSimServer({ size: 1000, identity: { vendor: 'Ward', product: 'press-1 (simulated)', version: '0.1.0' } });
  const modbusPort = options.modbusPort ?? 15_502;

  let agent: Agent | undefined;
  let cnc: CncSimulator | undefined;
  const opcuaPort = options.opcuaPort ?? 14_840;
  try {
    // A CNC machine with an OPC UA server (spindle, feed, temperature, alarms, part count), as a machine tool offers it.
    cnc = await startCncSimulator({ ...(opcuaPort !== 0 ? { port: opcuaPort } : {}), host: '127.0.0.1', pkiDir: join(dir, 'cnc-sim-pki') }).catch(
      (cause: Error) => {
        // The single binary leaves the OPC UA server library out (it never belongs on a gateway): run without the CNC.
        if (isModuleMissing(cause)) return undefined;
        throw new WardError(
          ErrorCodes.DEV_LISTEN_FAILED,
          `simulated CNC OPC UA server 127.0.0.1:${opcuaPort} cannot start (${cause.message}): choose another port with --opcua-port`,
          { cause },
        );
      },
    );
    await plc.listen(modbusPort, '127.0.0.1').catch((cause: NodeJS.ErrnoException) => {
      throw new WardError(
        ErrorCodes.DEV_LISTEN_FAILED,
        `simulated Modbus PLC port 127.0.0.1:${modbusPort} ${cause.code === 'EADDRINUSE' ? 'is already in use' : `cannot be opened (${cause.code ?? cause.message})`}: choose another with --modbus-port`,
        { cause },
      );
    });
    plc.simulate(1_000);
    plc.holding.set([450, 1200], 100);
    const enrollment = controller.enrollment;
    if (enrollment === undefined) throw new TypeError('the dev controller is certified, so enrollment must be on');
    const agentInput: AgentConfigInput = {
      stateDir: agentStateDir,
      trust: { rootFile: fleet.rootFile },
      provisioning: { deviceId: DEV_DEVICE_ID, site: DEV_SITE },
      state: { heartbeatSeconds: 60 },
      // A development stack never drives the host's LEDs or answers to its service manager.
      hardware: { statusLed: 'none', watchdog: 'none' },
      // The development machine's own TPM (if any) is not the gateway's: software evidence, predictably.
      attestation: { tpm: 'off' },
      log: { level: options.logLevel as 'info' },
      // Health every 5 s so the controller's view moves while someone watches; the primary host is the controller.
      telemetry: { gateway: { intervalSeconds: 5, slowIntervalSeconds: 15 } },
      plugins: [
        { name: 'sim', config: { machine: 'press-1' } },
        {
          name: 'modbus',
          config: {
            collector: {
              devices: [
                {
                  name: 'press-1',
                  host: '127.0.0.1',
                  port: modbusPort,
                  pollMs: 1_000,
                  points: [
                    { name: 'cycles', table: 'input', address: 0 },
                    { name: 'temperature', table: 'input', address: 1, scale: 0.1, unit: 'degC' },
                    { name: 'running', table: 'coil', address: 0 },
                    { name: 'setpoint-temperature', table: 'holding', address: 100, scale: 0.1, unit: 'degC' },
                    { name: 'setpoint-strokes', table: 'holding', address: 101, unit: '1/h' },
                  ],
                },
              ],
            },
          },
        },
        ...(cnc
          ? [
              {
                name: 'opcua',
                config: {
                  servers: [
                    {
                      name: 'cnc-1',
                      endpointUrl: cnc.endpointUrl,
                      // The simulator, like many machine tools out of the box, offers an unsecured endpoint: the
                      // plugin's posture check reports exactly that (opcua.posture-finding audit events).
                      securityMode: 'None' as const,
                      nodes: CNC_POINTS.map((p) => ({ nodeId: p.nodeId, name: p.name, samplingIntervalMs: 1000, ...(p.unit ? { unit: p.unit } : {}) })),
                    },
                  ],
                },
              },
            ]
          : []),
      ],
    };
    const agentConfig = validateConfig(agentInput, '(ward dev)', agentConfigSchema);
    await writeFile(join(dir, 'agent.yaml'), YAML.stringify(agentInput), { mode: 0o600 });
    await writeFile(join(dir, 'controller.yaml'), YAML.stringify(controllerInput), { mode: 0o600 });

    const online = new Promise<boolean>((resolveOnline) => {
      const timer = setTimeout(() => resolveOnline(false), 60_000);
      const off = controller.registry.onState(async (e) => {
        if (e.deviceId !== DEV_DEVICE_ID || e.outcome !== 'applied') return;
        if ((await controller.registry.get(DEV_DEVICE_ID))?.online) {
          clearTimeout(timer);
          off();
          resolveOnline(true);
        }
      });
    });
    agent = await buildAgent({
      config: agentConfig,
      configFile: join(dir, 'agent.yaml'),
      logger: createLogger({ level: agentConfig.log.level, name: 'ward-agent' }),
      plugins: builtinPlugins,
    });
    await agent.start();
    if (agent.identity === undefined) {
      // The same path as a scan at the line: a one-time code, verified against the fleet root, then enrollment.
      const first = await enrollment.createCode({ site: DEV_SITE, line: 'line-1', cell: 'cell-1', ttlSeconds: 3600 });
      await agent.provision(first.text);
    }
    const isOnline = await online;
    // A second code, for a person to try provisioning another gateway by hand.
    const spare = await enrollment.createCode({ site: DEV_SITE, line: 'line-1', cell: 'cell-2', ttlSeconds: 24 * 3600 });
    const pngFile = join(dir, 'enroll-code.png');
    // A read-only Sparkplug identity, so a person can watch with any Sparkplug tool (the broker is mutual TLS).
    const observerDir = join(dir, 'observer');
    let watch = '';
    if (controller.fleet) {
      const observer = await issueObserverIdentity(controller.fleet);
      await ensurePrivateDir(observerDir);
      await writeFile(join(observerDir, 'ca.pem'), observer.ca, { mode: 0o600 });
      await writeFile(join(observerDir, 'cert.pem'), observer.cert, { mode: 0o600 });
      await writeFile(join(observerDir, 'key.pem'), observer.key, { mode: 0o600 });
      const { hostname, port } = new URL(controller.brokerUrl);
      watch = `mosquitto_sub -h ${hostname} -p ${port} --cafile ${join(observerDir, 'ca.pem')} --cert ${join(observerDir, 'cert.pem')} --key ${join(observerDir, 'key.pem')} -i ward-observer-1 -t 'spBv1.0/#' -v`;
    }
    await writeFile(pngFile, await renderPng(spare.text, { scale: 6 }), { mode: 0o600 });
    const lines = [
      '',
      `Ward dev stack is running (state in ${dir})`,
      `  devices        curl ${controller.apiUrl}/api/devices`,
      `  health         curl ${controller.apiUrl}/api/health`,
      `  ping agent     curl -X POST ${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/ping`,
      `  audit trail    curl ${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/audit   (verdict + verified events)`,
      `  attestation    curl ${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/attestation   (active within ~15 s)`,
      `  MQTT broker    ${controller.brokerUrl} (mutual TLS; enrollment tokens)`,
      `  Modbus PLC     127.0.0.1:${modbusPort} (simulated press; the agent polls its registers)`,
      cnc
        ? `  CNC (OPC UA)   ${cnc.endpointUrl} (simulated machining centre; the agent subscribes to its ${CNC_POINTS.length} variables)`
        : '  CNC (OPC UA)   not in this build (node-opcua-server is a development dependency; run `npm run dev` from source)',
      `  telemetry      curl ${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/telemetry   (Sparkplug B: gateway health, press-1, cnc-1)`,
      `  history        curl '${controller.apiUrl}/api/devices/${DEV_DEVICE_ID}/telemetry/history?device=cnc-1&metric=Spindle/Speed'`,
      `  Sparkplug      group ward, edge node ${DEV_DEVICE_ID}, primary host ward-controller; read-only identity (CN ward:observer) in ${observerDir}:`,
      `                 ${watch || '(no fleet: the broker is open)'}`,
      `  agent          ${DEV_DEVICE_ID}: ${isOnline ? 'online' : 'NOT online yet (see logs)'}, enrolled by QR code, lifecycle ${agent.lifecycle.state}`,
      `  fleet root     ${fleet.rootFile} (dev passphrase in ${fleet.passphraseFile})`,
      `  configs        ${join(dir, 'agent.yaml')}, ${join(dir, 'controller.yaml')}`,
      '',
      `A spare enrollment code (${DEV_SITE}/line-1/cell-2, valid 24 h, ${pngFile}); provision a second gateway with it:`,
      `  ward provision -c <agent.yaml with trust.rootFile> --image ${pngFile}`,
      await renderTerminal(spare.text),
      spare.text,
      '',
      'Press Ctrl-C to stop.',
      '',
    ];
    out.write(`${lines.join('\n')}\n`);
  } catch (err) {
    await agent?.stop().catch(() => undefined);
    await cnc?.stop().catch(() => undefined);
    await plc.close();
    await controller.close();
    throw err;
  }

  const started = agent;
  const cncSim = cnc;
  return {
    dir,
    controller,
    agent: started,
    plc,
    async stop() {
      try {
        await started.stop();
      } catch (err) {
        out.write(`ward dev: agent stop failed: ${describeError(err)}\n`);
      }
      await cncSim?.stop().catch((err) => out.write(`ward dev: CNC simulator stop failed: ${describeError(err)}\n`));
      await plc.close();
      await controller.close();
      out.write('Ward dev stack stopped.\n');
    },
  };
}

/** A dynamic import of a package this build does not carry (from source; or inside the single binary, whose require knows only built-ins). */
function isModuleMissing(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND' || code === 'ERR_UNKNOWN_BUILTIN_MODULE';
}
