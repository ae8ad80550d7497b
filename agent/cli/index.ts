import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { controllerConfigSchema } from '../../controller/config.js';
import { startController } from '../../controller/controller.js';
import { builtinPlugins } from '../../plugins/index.js';
import { loadConfigFile, validateConfig } from '../config/load.js';
import { agentConfigSchema } from '../config/schema.js';
import { loadOrCreateSigningKey } from '../identity/keystore.js';
import { createLogger } from '../log.js';
import { buildAgent } from '../system.js';
import { WARD_VERSION } from '../version.js';
import { runDev } from './dev.js';
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
      const node = await buildAgent({ config, logger, plugins: builtinPlugins });
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

  program
    .command('dev')
    .description('run a local stack: controller + embedded broker + one agent with a simulated PLC')
    .option('--dir <dir>', 'state folder (default: a new temporary folder)')
    .option('--mqtt-port <port>', 'embedded broker TCP port', parsePort, 11883)
    .option('--ws-port <port>', 'embedded broker WebSocket port', parsePort, 18083)
    .option('--api-port <port>', 'controller HTTP API port', parsePort, 18080)
    .option('--log-level <level>', 'log level', 'info')
    .action(async (opts: { dir?: string; mqttPort: number; wsPort: number; apiPort: number; logLevel: string }) => {
      const stack = await runDev(opts);
      runUntilSignal(() => stack.stop(), 15_000);
    });

  return program;
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
