import { join } from 'node:path';
import { format } from 'node:util';
import type { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import { definePlugin, PLUGIN_API_VERSION, type PluginLogger, TelemetryFanout } from '../api/index.js';
import { ServerConnection, type Ua } from './client.js';
import { configSchema } from './config.js';
import { clampTransportLimits } from './transport.js';
import { printable } from './values.js';

/**
 * OPC UA: telemetry from machines' OPC UA servers (one session and one subscription per server, client.ts) with
 * a security posture check of each server's endpoints (posture.ts). No enforcement proxy yet, so no `protocol`.
 * See plugins/opcua/README.md.
 *
 * node-opcua is loaded on first use only: the client alone costs ~70 MB of RSS, which a gateway without OPC UA
 * machines should not pay. Nothing here may touch it at module load (nor use import.meta.url: the single binary
 * is a CommonJS bundle).
 */

/**
 * node-opcua logs through process-wide functions straight to the console, which would break the agent's
 * structured log. They are pointed at the plugin's logger while it runs (warnings at debug: this plugin reports
 * what matters itself). Process-wide by nature: the last started instance wins, a stopped one drops the lines.
 */
function bridgeLogs(ua: Ua, log: PluginLogger, active: () => boolean): void {
  // Control characters stripped and lines cut: the text can come from a server on the PLC network.
  const line = (args: unknown[]) => printable(format(...args.slice(1)), 500);
  // A peer can make node-opcua log on every packet: at most LOG_BURST lines a minute reach the agent's log.
  let windowStart = 0;
  let lines = 0;
  const allowed = () => {
    const now = Date.now();
    if (now - windowStart > 60_000) {
      windowStart = now;
      lines = 0;
    }
    return active() && ++lines <= LOG_BURST;
  };
  ua.setWarningLogger((...args: unknown[]) => {
    if (allowed()) log.debug({ source: 'node-opcua' }, line(args));
  });
  ua.setErrorLogger((...args: unknown[]) => {
    if (allowed()) log.warn({ source: 'node-opcua' }, line(args));
  });
  // Debug goes to the raw console otherwise, and with NODEOPCUADEBUG set node-opcua's debug output includes the
  // user identity (the password): never.
  ua.setDebugLogger(() => {});
}

const LOG_BURST = 60;

export default definePlugin({
  manifest: {
    name: 'opcua',
    version: '0.1.0',
    api: PLUGIN_API_VERSION,
    description: 'OPC UA: subscription telemetry from machine servers, with an endpoint security posture check',
  },
  configSchema,
  create(ctx) {
    const config = ctx.config;
    const telemetry = new TelemetryFanout(ctx.log);
    const connections: ServerConnection[] = [];
    let certificateManager: OPCUACertificateManager | undefined;
    let boot: Promise<void> | undefined;
    let bootError: string | null = null;
    let stopped = false;

    /** Loads node-opcua and starts every connection; runs in the background so start() never waits on it. */
    const load = async () => {
      const [ua, { OPCUACertificateManager }] = await Promise.all([
        import('node-opcua-client'),
        import('node-opcua-certificate-manager'),
        clampTransportLimits(),
      ]);
      if (stopped) return;
      bridgeLogs(ua, ctx.log, () => !stopped);
      // The client's own certificate and key: created on first connect (slow: RSA key generation), then reused.
      // Unknown server certificates are never accepted here: ServerConnection pins them by fingerprint.
      const manager = new OPCUACertificateManager({
        rootFolder: config.pkiDir ?? join(ctx.dataDir, 'pki'),
        automaticallyAcceptUnknownCertificate: false,
        disableFileWatchers: true,
      });
      certificateManager = manager;
      for (const server of config.servers) {
        const connection = new ServerConnection(server, {
          ua,
          certificateManager: manager,
          settings: {
            publishingIntervalMs: config.publishingIntervalMs,
            reconnect: config.reconnect,
            requestTimeoutMs: config.requestTimeoutMs,
            postureCheck: config.postureCheck,
            postureIntervalMs: config.postureIntervalHours * 3_600_000,
          },
          log: ctx.log,
          audit: ctx.audit,
          now: () => ctx.clock.now(),
          emit: (s) => {
            if (!stopped) telemetry.emit(s);
          },
        });
        connections.push(connection);
        connection.start();
      }
    };

    return {
      telemetry,
      async start() {
        if (config.servers.length === 0 || boot) return;
        boot = load().catch((err: unknown) => {
          bootError = `cannot load the OPC UA client: ${err instanceof Error ? err.message : String(err)}`;
          ctx.log.error({ err: bootError }, 'OPC UA plugin not running');
        });
      },
      async stop() {
        if (stopped) return;
        stopped = true;
        await boot;
        await Promise.allSettled(connections.map((c) => c.stop()));
        await certificateManager?.dispose().catch(() => {});
      },
      status() {
        return {
          ...(bootError ? { error: bootError } : {}),
          servers: Object.fromEntries(connections.map((c) => [c.name, c.status()])),
        };
      },
    };
  },
});
