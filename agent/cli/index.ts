import { resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import YAML from 'yaml';
import { controllerConfigSchema } from '../../controller/config.js';
import { startController } from '../../controller/controller.js';
import { setupMosquitto } from '../../controller/mosquitto-setup.js';
import { builtinPlugins } from '../../plugins/index.js';
import { loadConfigFile, validateConfig } from '../config/load.js';
import { agentConfigSchema } from '../config/schema.js';
import { loadOrCreateSigningKey } from '../identity/keystore.js';
import { createLogger } from '../log.js';
import { buildAgent } from '../system.js';
import { WARD_VERSION } from '../version.js';
import { attestNow, attestShow } from './attest.js';
import { auditExport, auditStatus, auditTail, auditVerify, EXPORT_FORMATS, type ExportFormat, parsePublicKey, parseSince } from './audit.js';
import { runDev } from './dev.js';
import {
  enforceApply,
  enforceCheck,
  enforceDiff,
  enforceFailsafe,
  enforceLearn,
  enforcePropose,
  enforceRollback,
  enforceStatus,
  parseLearnDuration,
  policyPush,
} from './enforce.js';
import { enrollCode, fleetCertify, fleetInit, fleetShow, identityQr, identityReset, identityShow, provisionCommand } from './identity.js';
import { ExitCode, fatal, runUntilSignal } from './run.js';

/**
 * The one `ward` entry point. Long-running commands (`agent run`,
 * `controller run`, `dev`) log JSON to stdout and stop cleanly on
 * SIGTERM/SIGINT; exit codes: 0 ok, 1 failure, 2 usage error, 78 bad
 * configuration (sysexits EX_CONFIG, so systemd need not restart-loop).
 */
export function buildProgram(): Command {
  const program = new Command('ward')
    .description('Ward: zero-trust edge agent for industrial gateways, and its reference controller')
    .version(WARD_VERSION, '-V, --version', 'print the Ward version')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  const agent = program.command('agent').description('run or inspect the gateway agent');
  agent
    .command('run')
    .description('run the agent with a config file (YAML or JSON)')
    .requiredOption('-c, --config <file>', 'agent config file')
    .action(async (opts: { config: string }) => {
      const config = await loadConfigFile(opts.config, agentConfigSchema);
      const logger = createLogger({ level: config.log.level, name: 'ward-agent' });
      const node = await buildAgent({ config, logger, plugins: builtinPlugins, configFile: resolve(opts.config) });
      await node.start();
      logger.info({ deviceId: node.deviceId, lifecycle: node.lifecycle.state }, 'agent started');
      runUntilSignal(
        async () => {
          await node.stop();
          logger.info('agent stopped');
          logger.flush();
        },
        config.shutdownTimeoutMs,
        (signal) => logger.info({ signal }, 'stopping'),
      );
    });
  agent
    .command('pubkey')
    .description("print the device id and the device's public signing key (creating the key if missing)")
    .requiredOption('-c, --config <file>', 'agent config file')
    .action(async (opts: { config: string }) => {
      const config = await loadConfigFile(opts.config, agentConfigSchema);
      const { key } = await loadOrCreateSigningKey(config.stateDir);
      process.stdout.write(`${JSON.stringify({ id: config.deviceId, kid: key.kid, publicKey: key.publicRaw })}\n`);
    });

  const controller = program.command('controller').description('run or inspect the reference controller');
  controller
    .command('run')
    .description('run the controller (embedded broker by default)')
    .option('-c, --config <file>', 'controller config file')
    .option('--state-dir <dir>', 'state folder when no config file is given', '.ward/controller')
    .action(async (opts: { config?: string; stateDir: string }) => {
      const config = opts.config
        ? await loadConfigFile(opts.config, controllerConfigSchema)
        : validateConfig({ stateDir: opts.stateDir }, '(defaults)', controllerConfigSchema);
      const logger = createLogger({ level: config.log.level, name: 'ward-controller' });
      const ctl = await startController({ config, logger });
      runUntilSignal(
        async () => {
          await ctl.close();
          logger.info('controller stopped');
          logger.flush();
        },
        10_000,
        (signal) => logger.info({ signal }, 'stopping'),
      );
    });

  controller
    .command('enroll-code')
    .description('create a one-time enrollment code (QR) for a gateway at site/line/cell, through the controller API')
    .requiredOption('--site <site>', 'site the gateway belongs to')
    .requiredOption('--line <line>', 'production line')
    .requiredOption('--cell <cell>', 'cell')
    .option('--ttl <duration>', 'validity: 90m, 24h, 7d, …', '24h')
    .option('--api <url>', 'controller API', 'http://127.0.0.1:8080')
    .option('--png <file>', 'write the QR code as PNG (label printer)')
    .option('--svg <file>', 'write the QR code as SVG')
    .option('--no-terminal', 'do not draw the QR code on the terminal')
    .action(async (opts: { site: string; line: string; cell: string; ttl: string; api: string; png?: string; svg?: string; terminal: boolean }) => {
      await enrollCode(opts, process.stdout);
    });

  controller
    .command('policy-push')
    .description('check a segmentation policy file, then have the controller sign and publish it for a gateway')
    .requiredOption('--device <id>', 'the gateway')
    .requiredOption('--policy <file>', 'policy file (YAML or JSON)')
    .option('--api <url>', 'controller API', 'http://127.0.0.1:8080')
    .option('--as <name>', 'operator name recorded in the audit event (default $SUDO_USER or $USER)')
    .action((opts: { device: string; policy: string; api: string; as?: string }) => policyPush(opts, { out: process.stdout, err: process.stderr }));

  controller
    .command('mosquitto-setup')
    .description('write certificates, mosquitto.conf and access files for an external Mosquitto fronting the fleet (controller stopped)')
    .requiredOption('--state-dir <dir>', "the controller's state folder (certified)")
    .requiredOption('--out <dir>', 'folder for the broker files (the controller keeps its ACL, password and CRL files up to date)')
    .option('--host <host>', 'listener address', '0.0.0.0')
    .option('--server-host <name...>', 'names/addresses gateways dial (TLS certificate SANs)')
    .option('--mtls-port <port>', 'mutual-TLS listener (devices, controller)', parsePort, 8883)
    .option('--enroll-port <port>', 'enrollment listener (token accounts)', parsePort, 8884)
    .action(async (opts: { stateDir: string; out: string; host: string; serverHost?: string[]; mtlsPort: number; enrollPort: number }) => {
      const r = await setupMosquitto({
        stateDir: opts.stateDir,
        outDir: opts.out,
        host: opts.host,
        mtlsPort: opts.mtlsPort,
        enrollPort: opts.enrollPort,
        ...(opts.serverHost ? { serverHosts: opts.serverHost } : {}),
      });
      const dial = opts.serverHost?.[0] ?? opts.host;
      process.stdout.write(
        [
          `Mosquitto files written to ${r.dir}; start it with: mosquitto -c ${r.confFile}`,
          'Controller config for this broker:',
          YAML.stringify({
            broker: { url: `mqtts://${dial}:${opts.mtlsPort}`, tls: r.controllerTls, mosquitto: { dir: r.dir, pidFile: '/run/mosquitto/mosquitto.pid' } },
            enrollment: { advertise: [`${dial}:${opts.enrollPort}`], deviceBrokers: [`mqtts://${dial}:${opts.mtlsPort}`] },
          }),
        ].join('\n'),
      );
    });

  const fleet = program.command('fleet').description('fleet root keys (operator, offline)');
  const passphraseHelp = 'file holding the fleet root passphrase (default: $WARD_FLEET_PASSPHRASE)';
  fleet
    .command('init')
    .description('create the fleet root key (sealed with a passphrase) and its signed root metadata (root.json)')
    .requiredOption('--dir <dir>', 'fleet folder (keep it offline)')
    .option('--passphrase-file <file>', passphraseHelp)
    .option('--name <name>', 'a name for the fleet')
    .action(async (opts: { dir: string; passphraseFile?: string; name?: string }) => {
      await fleetInit(opts, process.stdout);
    });
  fleet
    .command('certify-controller')
    .description("certify a controller's key and fleet CA with the root (creates both on first use)")
    .requiredOption('--dir <dir>', 'fleet folder')
    .requiredOption('--state-dir <dir>', "the controller's state folder")
    .option('--passphrase-file <file>', passphraseHelp)
    .option('--valid-days <days>', 'validity of the certification', (v) => parseCount(v, 1, 3650), 365)
    .action(async (opts: { dir: string; stateDir: string; passphraseFile?: string; validDays: number }) => {
      await fleetCertify({ ...opts, controllerStateDir: opts.stateDir }, process.stdout);
    });
  fleet
    .command('show')
    .description('print the fleet root fingerprint and keys (and check the passphrase if one is given)')
    .requiredOption('--dir <dir>', 'fleet folder')
    .option('--passphrase-file <file>', passphraseHelp)
    .action(async (opts: { dir: string; passphraseFile?: string }) => {
      await fleetShow(opts, process.stdout);
    });

  program
    .command('provision')
    .description('enroll this gateway with a scanned enrollment code: pasted, typed by a USB scanner on stdin, or a camera image')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--text <text>', 'the enrollment code text (WARD1:…)')
    .option('--image <file>', 'a PNG or JPEG picture of the QR code')
    .option('--reenroll', 'replace the certificates of an enrolled gateway, keeping its id and key')
    .action(async (opts: { config: string; text?: string; image?: string; reenroll?: boolean }) => {
      await provisionCommand(opts, process.stdout);
    });

  const identity = program.command('identity').description("the gateway's enrolled identity");
  identity
    .command('show')
    .description('print the device id, site/line/cell and certificate validity')
    .requiredOption('-c, --config <file>', 'agent config file')
    .action(async (opts: { config: string }) => {
      await identityShow(opts, process.stdout);
    });
  identity
    .command('qr')
    .description("show this gateway's claim QR (device id, key fingerprint, claim code) for an operator to scan into the console")
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--png <file>', 'also write it as PNG (box label, screen)')
    .option('--no-terminal', 'do not draw the QR code on the terminal')
    .action(async (opts: { config: string; png?: string; terminal: boolean }) => {
      await identityQr(opts, process.stdout);
    });
  identity
    .command('reset')
    .description('factory reset: wipe the device key and identity (the gateway enrolls again as a new device)')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--yes', 'confirm')
    .action(async (opts: { config: string; yes?: boolean }) => {
      await identityReset(opts, process.stdout);
    });

  const enforceIo = { out: process.stdout, err: process.stderr };
  const attest = program.command('attest').description("the gateway's self-attestation: its measurements and the controller's verdict");
  attest
    .command('show')
    .description("the measurement log and its aggregate (the running agent's, or measured now)")
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--json', 'print one JSON object')
    .action((opts: { config: string; json?: boolean }) => attestShow(opts, enforceIo));
  attest
    .command('now')
    .description('measure again and ask the controller for a verdict now (needs the running agent)')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--as <name>', 'operator name recorded in the audit event (default $SUDO_USER or $USER)')
    .action((opts: { config: string; as?: string }) => attestNow(opts, enforceIo));
  const enforce = program.command('enforce').description('micro-segmentation: the policy in force on this gateway and its nftables ruleset');
  const asOption = ['--as <name>', 'operator name recorded in the audit event (default $SUDO_USER or $USER)'] as const;
  enforce
    .command('status')
    .description('the policy in force, whether the kernel holds it, zone modes and per-flow counters')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--json', 'print one JSON object')
    .action((opts: { config: string; json?: boolean }) => enforceStatus(opts, enforceIo));
  enforce
    .command('diff')
    .description('unified diff of the nftables ruleset: in force vs a candidate policy (--policy), or what the last change did')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--policy <file>', 'candidate policy (YAML or JSON)')
    .action((opts: { config: string; policy?: string }) => enforceDiff(opts, enforceIo));
  enforce
    .command('apply')
    .description("apply a local policy file now (an operator override; the controller's next version replaces it)")
    .requiredOption('-c, --config <file>', 'agent config file')
    .requiredOption('--policy <file>', 'policy file (YAML or JSON)')
    .option('--force', 'apply even if the management uplink would be locked out')
    .option(...asOption)
    .action((opts: { config: string; policy: string; force?: boolean; as?: string }) => enforceApply(opts, enforceIo));
  enforce
    .command('rollback')
    .description('return to the ruleset applied before the current one')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option(...asOption)
    .action((opts: { config: string; as?: string }) => enforceRollback(opts, enforceIo));
  enforce
    .command('learn')
    .description('record every new connection per zone pair for a while, for ward enforce propose')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--for <duration>', 'how long: 30m, 24h, up to 7d', parseLearnDuration)
    .option('--stop', 'stop learning now')
    .option(...asOption)
    .action((opts: { config: string; for?: number; stop?: boolean; as?: string }) => enforceLearn(opts, enforceIo));
  enforce
    .command('propose')
    .description('print a least-privilege policy proposal from what learn mode saw (a valid policy file, in observe mode)')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('-o, --output <file>', 'write to this file (mode 0600) instead of stdout')
    .action((opts: { config: string; output?: string }) => enforcePropose(opts, enforceIo));
  enforce
    .command('failsafe')
    .description("load the policy's safe flows (failMode safe); systemd runs this when the agent dies")
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--leave', 'back to the full active policy')
    .option('--if-service-failed', "only when systemd's $SERVICE_RESULT says the agent failed (for ExecStopPost)")
    .option(...asOption)
    .action((opts: { config: string; leave?: boolean; as?: string; ifServiceFailed?: boolean }) => enforceFailsafe(opts, enforceIo));
  enforce
    .command('check')
    .description('validate a policy file offline (every problem listed)')
    .requiredOption('--policy <file>', 'policy file (YAML or JSON)')
    .action((opts: { policy: string }) => enforceCheck(opts, enforceIo));

  const audit = program.command('audit').description("the gateway's signed audit journal (read-only; works while the agent runs)");
  const auditIo = { out: process.stdout, err: process.stderr };
  audit
    .command('status')
    .description('print the chain, head, sealed and receipted seqs and the size of the journal')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('--json', 'print one JSON object')
    .action(async (opts: { config: string; json?: boolean }) => {
      await auditStatus(opts, auditIo);
    });
  audit
    .command('tail')
    .description('print the newest events, one line each')
    .requiredOption('-c, --config <file>', 'agent config file')
    .option('-n, --lines <n>', 'how many events', (v) => parseCount(v, 1, 100_000), 20)
    .option('--json', 'print the stored canonical event texts, one per line')
    .action(async (opts: { config: string; lines: number; json?: boolean }) => {
      await auditTail(opts, auditIo);
    });
  audit
    .command('export')
    .description('export the journal: jsonl is the verifiable export (ward audit verify); cef, syslog (RFC 5424) and ocsf are for a SIEM and prove nothing')
    .requiredOption('-c, --config <file>', 'agent config file')
    .addOption(new Option('--format <format>', 'output format').choices(EXPORT_FORMATS).default('jsonl'))
    .option('--since <time>', 'only events from this time on: ISO time or a duration back from now (30m, 2h, 7d); not for jsonl', (v) => parseSince(v))
    .option('-o, --output <file>', 'write to this file (mode 0600) instead of stdout')
    .action(async (opts: { config: string; format: ExportFormat; since?: number; output?: string }, cmd: Command) => {
      // A jsonl export cut at a time would start mid-chain and verify only as unanchored: the evidence export is always whole.
      if (opts.format === 'jsonl' && opts.since !== undefined) {
        cmd.error(
          'error: --since cannot be used with --format jsonl: the verifiable export is always the whole journal (use --format cef|syslog|ocsf for a time window)',
          {
            exitCode: ExitCode.usage,
            code: 'ward.audit.sinceJsonl',
          },
        );
      }
      await auditExport(opts, auditIo);
    });
  audit
    .command('verify')
    .description('verify a jsonl export offline: hash links, device-signed checkpoints, controller receipts')
    .argument('<export-file>', 'the file written by ward audit export --format jsonl')
    .option('--device-key <key>', "the device's public key (base64url) as the controller knows it; without it the export vouches for itself", parsePublicKey)
    .option('--controller-key <key>', "the controller's public key (base64url), to check its receipts", parsePublicKey)
    .option('--json', 'print the verdict as JSON')
    .option('--strict', 'exit 1 unless INTACT without warnings and checked under --device-key (for evidence)')
    .action(async (file: string, opts: { deviceKey?: string; controllerKey?: string; json?: boolean; strict?: boolean }) => {
      if (!(await auditVerify({ file, ...opts }, auditIo))) process.exitCode = ExitCode.failure;
    });

  program
    .command('dev')
    .description('run a local stack: controller + embedded broker + one agent with a simulated PLC')
    .option('--dir <dir>', 'state folder (default: a new temporary folder)')
    .option('--mqtt-port <port>', 'embedded broker TCP port', parsePort, 11883)
    .option('--ws-port <port>', 'embedded broker WebSocket port', parsePort, 18083)
    .option('--api-port <port>', 'controller HTTP API port', parsePort, 18080)
    .option('--modbus-port <port>', 'simulated Modbus/TCP PLC port (the agent polls its registers)', parsePort, 15502)
    .option('--opcua-port <port>', "simulated CNC's OPC UA server port (the agent subscribes to its variables)", parsePort, 14840)
    .option('--log-level <level>', 'log level', 'info')
    .action(async (opts: { dir?: string; mqttPort: number; wsPort: number; apiPort: number; modbusPort: number; opcuaPort: number; logLevel: string }) => {
      // Signals are handled from the start: bringing the stack up (enrollment, QR rendering) takes seconds,
      // and a Ctrl-C in that window must still stop it cleanly.
      const starting = runDev(opts);
      runUntilSignal(async () => {
        const stack = await starting.catch(() => undefined);
        await stack?.stop();
      }, 15_000);
      await starting;
    });

  return program;
}

function parseCount(value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer ${min}-${max}`);
  return n;
}

function parsePort(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError('expected a port number 0-65535');
  return n;
}

export async function main(argv: readonly string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here with exitCode 0; usage errors were already printed by commander.
      process.exit(err.exitCode === 0 ? ExitCode.ok : ExitCode.usage);
    }
    fatal(err);
  }
}
