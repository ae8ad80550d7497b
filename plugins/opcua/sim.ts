/**
 * A CNC machine as an OPC UA server, for `ward dev`, demos and the integration tests: one object `CNC` in the
 * namespace "urn:ward:cnc-sim" (index 1) whose variables follow a machining cycle (spindle ramps up, cuts, ramps
 * down, a part is counted; temperature follows load; now and then an alarm stops the spindle).
 *
 * Not part of the agent's data path: nothing in index.ts imports this module, so node-opcua-server is never
 * loaded by a gateway. Its PKI (the server's own certificate and the client certificates it has seen) lives in
 * `pkiDir` or a fresh temporary folder, never in the home directory (node-opcua's default).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type CncPointType = 'Double' | 'Boolean' | 'String' | 'UInt32';

export interface CncPoint {
  /** The metric name (also the key for `set`). */
  readonly name: string;
  readonly nodeId: string;
  readonly dataType: CncPointType;
  readonly unit?: string;
  /** Analog values: the EURange a percent deadband is taken of (OPC 10000-8 §5.3.2.2). */
  readonly range?: { readonly low: number; readonly high: number };
}

const point = (name: string, dataType: CncPointType, unit?: string, range?: CncPoint['range']): CncPoint => ({
  name,
  nodeId: `ns=1;s=CNC.${name.replaceAll('/', '.')}`,
  dataType,
  ...(unit !== undefined ? { unit } : {}),
  ...(range !== undefined ? { range } : {}),
});

/** Every variable the simulator serves: configure the plugin's `nodes` from this list. */
export const CNC_POINTS: readonly CncPoint[] = [
  point('Spindle/Speed', 'Double', 'rpm', { low: 0, high: 12_000 }),
  point('Spindle/Load', 'Double', '%', { low: 0, high: 100 }),
  point('Spindle/Temperature', 'Double', '°C', { low: 0, high: 120 }),
  point('Feed/Rate', 'Double', 'mm/min', { low: 0, high: 2_000 }),
  point('Alarm/Active', 'Boolean'),
  point('Alarm/Text', 'String'),
  point('Program/Name', 'String'),
  point('Parts/Count', 'UInt32'),
];

export const CNC_NAMESPACE = 'urn:ward:cnc-sim';

export interface CncSimulatorOptions {
  /** Default: a free port picked at start. */
  port?: number;
  /** Address to listen on and to advertise in endpoint URLs. Default 127.0.0.1. */
  host?: string;
  /** Also offer SecurityMode None (with policy None) besides SignAndEncrypt/Basic256Sha256. Default true. */
  securityNone?: boolean;
  /** Offer the anonymous user token. Default true. */
  allowAnonymous?: boolean;
  /** Accounts for the username token. Default none. */
  users?: readonly { username: string; password: string }[];
  /** Simulation step. 0 stops the motion (values change only through `set`). Default 200 ms. */
  tickMs?: number;
  /** Where the server keeps its certificate. Reuse one folder to skip key generation on later starts. */
  pkiDir?: string;
  /** Seed of the simulation's random numbers, for repeatable runs. */
  seed?: number;
}

export interface CncSimulator {
  readonly endpointUrl: string;
  readonly port: number;
  /** The server certificate's SHA-256 fingerprint (lower-case hex), what a client pins in trustedServerCertificates. */
  readonly certificateSha256: string;
  /**
   * Pins a variable to `value` (the simulation stops driving it) with status `statusCode` (a StatusCodes name such
   * as 'BadSensorFailure'; default Good). `set(name, undefined)` hands the variable back to the simulation.
   */
  set(name: string, value: number | boolean | string | undefined, statusCode?: string): void;
  stop(): Promise<void>;
}

/** A port nobody listens on right now (the kernel's choice); the server binds it a moment later. */
async function freePort(host: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const address = srv.address();
      srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** mulberry32: small, fast, good enough for a simulation. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Phase = 'idle' | 'ramp-up' | 'cutting' | 'ramp-down' | 'alarm';
const PROGRAMS = ['O1001-FLANGE', 'O1002-SHAFT', 'O2040-HOUSING'];
const ALARMS = ['SPINDLE OVERLOAD', 'COOLANT LOW', 'TOOL WEAR LIMIT'];

/** The machining cycle as a pure state machine, one step per tick. */
export class CncModel {
  phase: Phase = 'idle';
  values: Record<string, number | boolean | string> = {
    'Spindle/Speed': 0,
    'Spindle/Load': 0,
    'Spindle/Temperature': 24,
    'Feed/Rate': 0,
    'Alarm/Active': false,
    'Alarm/Text': '',
    'Program/Name': PROGRAMS[0] ?? '',
    'Parts/Count': 0,
  };
  #rand: () => number;
  #phaseLeft = 2;
  #targetSpeed = 9000;

  constructor(seed: number) {
    this.#rand = random(seed);
  }

  /** Advances the model by dtSeconds. */
  step(dtSeconds: number): void {
    const v = this.values;
    const r = this.#rand;
    this.#phaseLeft -= dtSeconds;
    let speed = Number(v['Spindle/Speed']);
    let load = 0;
    let feed = 0;
    switch (this.phase) {
      case 'idle':
        speed = 0;
        if (this.#phaseLeft <= 0) {
          this.#enter('ramp-up', 2);
          this.#targetSpeed = 8000 + Math.round(r() * 4000);
          if (r() < 0.2) v['Program/Name'] = PROGRAMS[Math.floor(r() * PROGRAMS.length)] ?? '';
        }
        break;
      case 'ramp-up':
        speed = Math.min(this.#targetSpeed, speed + (this.#targetSpeed / 2) * dtSeconds);
        load = 15;
        if (speed >= this.#targetSpeed) this.#enter('cutting', 6 + r() * 6);
        break;
      case 'cutting':
        speed = this.#targetSpeed + (r() - 0.5) * 60;
        load = 45 + r() * 35;
        feed = 800 + r() * 700;
        // About one alarm per twenty cycles.
        if (r() < 0.005 * dtSeconds * 10) {
          v['Alarm/Active'] = true;
          v['Alarm/Text'] = ALARMS[Math.floor(r() * ALARMS.length)] ?? '';
          this.#enter('alarm', 5);
        } else if (this.#phaseLeft <= 0) this.#enter('ramp-down', 1.5);
        break;
      case 'ramp-down':
        speed = Math.max(0, speed - (this.#targetSpeed / 1.5) * dtSeconds);
        load = 5;
        if (speed <= 0) {
          v['Parts/Count'] = Number(v['Parts/Count']) + 1;
          this.#enter('idle', 2 + r() * 2);
        }
        break;
      case 'alarm':
        speed = Math.max(0, speed - this.#targetSpeed * dtSeconds);
        if (this.#phaseLeft <= 0) {
          v['Alarm/Active'] = false;
          v['Alarm/Text'] = '';
          this.#enter('idle', 2);
        }
        break;
    }
    // The spindle heats towards 25 °C + 0.5 °C per % load, with a time constant of about 20 s.
    const temperature = Number(v['Spindle/Temperature']);
    const target = 25 + 0.5 * load;
    v['Spindle/Speed'] = Math.round(speed * 10) / 10;
    v['Spindle/Load'] = Math.round(load * 10) / 10;
    v['Feed/Rate'] = Math.round(feed);
    v['Spindle/Temperature'] = Math.round((temperature + (target - temperature) * Math.min(1, dtSeconds / 20)) * 100) / 100;
  }

  #enter(phase: Phase, seconds: number): void {
    this.phase = phase;
    this.#phaseLeft = seconds;
  }
}

/** Starts the simulator; resolves once it accepts connections. */
export async function startCncSimulator(opts: CncSimulatorOptions = {}): Promise<CncSimulator> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? (await freePort(host));
  const tempPki = opts.pkiDir === undefined ? await mkdtemp(join(tmpdir(), 'ward-cnc-sim-pki-')) : undefined;
  const pkiDir = opts.pkiDir ?? (tempPki as string);
  const [{ OPCUAServer }, { OPCUACertificateManager }, { MessageSecurityMode, SecurityPolicy, DataType, StatusCodes, Variant }] = await Promise.all([
    import('node-opcua-server'),
    import('node-opcua-certificate-manager'),
    // node-opcua-server does not re-export the shared enums and types; the client package does.
    import('node-opcua-client'),
  ]);
  const users = opts.users ?? [];

  const securityNone = opts.securityNone ?? true;
  const server = new OPCUAServer({
    port,
    host,
    hostname: host,
    securityModes: securityNone ? [MessageSecurityMode.None, MessageSecurityMode.SignAndEncrypt] : [MessageSecurityMode.SignAndEncrypt],
    securityPolicies: securityNone ? [SecurityPolicy.None, SecurityPolicy.Basic256Sha256] : [SecurityPolicy.Basic256Sha256],
    allowAnonymous: opts.allowAnonymous ?? true,
    serverInfo: { applicationUri: CNC_NAMESPACE, productUri: 'urn:ward:cnc-sim:product', applicationName: { text: 'Ward CNC simulator' } },
    buildInfo: { productName: 'Ward CNC simulator', manufacturerName: 'Ward' },
    // A simulator accepts any client certificate: it stands in for a machine whose trust list an operator manages.
    serverCertificateManager: new OPCUACertificateManager({
      rootFolder: join(pkiDir, 'server'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    }),
    userCertificateManager: new OPCUACertificateManager({ rootFolder: join(pkiDir, 'user'), disableFileWatchers: true }),
    userManager: { isValidUser: (username: string, password: string) => users.some((u) => u.username === username && u.password === password) },
  });
  await server.initialize();

  const addressSpace = server.engine.addressSpace;
  if (!addressSpace) throw new Error('the OPC UA simulator has no address space after initialize()');
  const ns = addressSpace.getOwnNamespace();
  const cnc = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: 'CNC', nodeId: 's=CNC' });
  const folders = new Map<string, ReturnType<typeof ns.addObject>>();
  const model = new CncModel(opts.seed ?? 1);
  const pinned = new Map<string, { value: number | boolean | string | undefined; status: string }>();
  const variables = new Map<string, { node: ReturnType<typeof ns.addVariable>; type: CncPointType }>();
  const dataTypes = { Double: DataType.Double, Boolean: DataType.Boolean, String: DataType.String, UInt32: DataType.UInt32 } as const;

  for (const p of CNC_POINTS) {
    const [folderName = '', leaf = ''] = p.name.split('/');
    let folder = folders.get(folderName);
    if (!folder) {
      folder = ns.addObject({ componentOf: cnc, browseName: folderName, nodeId: `s=CNC.${folderName}` });
      folders.set(folderName, folder);
    }
    const common = {
      componentOf: folder,
      browseName: leaf,
      nodeId: p.nodeId.replace(/^ns=1;/, ''),
      dataType: p.dataType,
      // Sampled, not exception-based: the server reads on each sampling tick like a real controller's OPC UA stack.
      minimumSamplingInterval: 10,
    };
    // Analog values are AnalogItems (EURange, EngineeringUnits), so a client may ask for a percent deadband.
    const node = p.range
      ? ns.addAnalogDataItem({
          ...common,
          engineeringUnitsRange: p.range,
          ...(p.unit !== undefined ? { engineeringUnits: { displayName: { text: p.unit }, description: { text: p.unit } } } : {}),
        })
      : ns.addVariable(common);
    variables.set(p.name, { node, type: p.dataType });
  }

  const publish = () => {
    const now = new Date();
    for (const [name, { node, type }] of variables) {
      const pin = pinned.get(name);
      const value = pin ? pin.value : model.values[name];
      const status = pin ? (StatusCodes as unknown as Record<string, (typeof StatusCodes)['Good']>)[pin.status] : StatusCodes.Good;
      if (status === undefined) throw new TypeError(`unknown status code ${pin?.status}`);
      const variant = value === undefined ? new Variant({ dataType: DataType.Null }) : new Variant({ dataType: dataTypes[type], value });
      node.setValueFromSource(variant, status, now);
    }
  };
  publish();

  const tickMs = opts.tickMs ?? 200;
  const timer =
    tickMs > 0
      ? setInterval(() => {
          model.step(tickMs / 1000);
          publish();
        }, tickMs)
      : undefined;
  timer?.unref();

  await server.start();
  const endpointUrl = `opc.tcp://${host}:${port}`;
  const { X509Certificate } = await import('node:crypto');
  const der = server.getCertificate();
  const certificateSha256 = new X509Certificate(der).fingerprint256.replaceAll(':', '').toLowerCase();

  let stopped = false;
  return {
    endpointUrl,
    port,
    certificateSha256,
    set(name, value, statusCode = 'Good') {
      const v = variables.get(name);
      if (!v) throw new TypeError(`the simulator has no variable ${name} (known: ${[...variables.keys()].join(', ')})`);
      if (value === undefined && statusCode === 'Good') pinned.delete(name);
      else pinned.set(name, { value, status: statusCode });
      publish();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (timer) clearInterval(timer);
      // shutdown(0): no grace period; clients see the connection drop at once, as with a machine switched off.
      await server.shutdown(0);
      if (tempPki) await rm(tempPki, { recursive: true, force: true });
    },
  };
}
