import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION, TelemetryFanout } from '../api/index.js';
import { collectorConfigSchema, ModbusCollector } from './collector.js';
import { ModbusProxy } from './proxy.js';
import { checkOps, VOCABULARY } from './rules.js';

/**
 * Modbus/TCP: the operations a policy may allow (rules.ts), the inline proxy
 * the enforcer steers those flows to (proxy.ts), and the register collector
 * for telemetry (collector.ts). See plugins/modbus/README.md.
 */
const configSchema = z.strictObject({
  /** Address the proxy listens on; the redirect delivers to the ingress interface's address. */
  listenHost: z.string().default('0.0.0.0'),
  connectTimeoutMs: z.number().int().min(100).max(60_000).default(3_000),
  /** How long a forwarded request may wait for the PLC before the client gets exception 11. */
  responseTimeoutMs: z.number().int().min(100).max(60_000).default(5_000),
  /** A client connection with no traffic for this long is closed (SCADA polls far more often). */
  idleTimeoutMs: z.number().int().min(1_000).max(86_400_000).default(600_000),
  /** Requests one client may have waiting at once; the rest of its stream waits in TCP. */
  maxInFlight: z.number().int().min(1).max(256).default(16),
  maxConnections: z.number().int().min(1).max(10_000).default(256),
  /** Connections one client address may hold to one PLC through the proxy (each is also a connection to the PLC). */
  maxConnectionsPerClient: z.number().int().min(1).max(1_000).default(8),
  /** Repeats of the same audit event within this window become one event with a count. */
  auditWindowSeconds: z.number().int().min(1).max(3_600).default(60),
  /** Registers to poll from PLCs for telemetry (collector.ts); absent: no polling. */
  collector: collectorConfigSchema.optional(),
});
export type ModbusPluginConfig = z.infer<typeof configSchema>;

export default definePlugin({
  manifest: {
    name: 'modbus',
    version: '0.1.0',
    api: PLUGIN_API_VERSION,
    description: 'Modbus/TCP: function-code and register-level enforcement proxy, register telemetry',
  },
  configSchema,
  protocol: {
    name: 'modbus',
    defaultPorts: [{ proto: 'tcp', port: 502 }],
    vocabulary: VOCABULARY,
    check: checkOps,
  },
  create(ctx) {
    const proxy = new ModbusProxy({
      log: ctx.log,
      audit: ctx.audit,
      now: () => ctx.clock.now(),
      host: ctx.config.listenHost,
      connectTimeoutMs: ctx.config.connectTimeoutMs,
      responseTimeoutMs: ctx.config.responseTimeoutMs,
      idleTimeoutMs: ctx.config.idleTimeoutMs,
      maxInFlight: ctx.config.maxInFlight,
      maxConnections: ctx.config.maxConnections,
      maxConnectionsPerClient: ctx.config.maxConnectionsPerClient,
      auditWindowMs: ctx.config.auditWindowSeconds * 1000,
    });
    const telemetry = new TelemetryFanout(ctx.log);
    const collector = ctx.config.collector
      ? new ModbusCollector(ctx.config.collector, { now: () => ctx.clock.now(), log: ctx.log, onSample: (sample) => telemetry.emit(sample) })
      : undefined;
    return {
      proxy,
      ...(collector ? { telemetry } : {}),
      async start() {
        collector?.start();
      },
      async stop() {
        await collector?.stop();
        await proxy.close();
      },
      status() {
        return {
          ...proxy.status(),
          ...(collector
            ? {
                collector: collector.status(),
                latest: telemetry.latest().map((s) => ({ device: s.device, point: s.point, value: s.value, quality: s.quality })),
              }
            : {}),
        };
      },
    };
  },
});
