import { z } from 'zod';
import { DEVICE_ID_PATTERN } from '../agent/shared/topics.js';
import { alarmRuleSchema } from './health-rules.js';

/**
 * The controller's configuration file. Either an embedded broker (aedes,
 * the one-machine default) or the URL of an external one (Mosquitto, EMQX,
 * …); with an external broker, replicas share device traffic through the
 * `$share/<sharedGroup>/…` subscriptions.
 */
const port = z.number().int().min(0).max(65_535);

export const controllerConfigSchema = z.strictObject({
  stateDir: z.string().min(1),
  /** Distinguishes replicas (reply topics, client ids). Default: hostname-pid. */
  replicaId: z.string().regex(DEVICE_ID_PATTERN).optional(),
  broker: z
    .strictObject({
      embedded: z
        .strictObject({
          host: z.string().default('127.0.0.1'),
          tcpPort: port.default(1883),
          /** WebSocket listener (MQTT over ws://host:port/mqtt); null disables it. */
          wsPort: port.nullable().default(8083),
        })
        .optional(),
      url: z
        .string()
        .regex(/^(mqtts?|wss?):\/\/\S+$/)
        .optional(),
      username: z.string().optional(),
      passwordFile: z.string().optional(),
      /** External broker with a fleet: the controller's client certificate (CN ward:controller) and the fleet CA. */
      tls: z.strictObject({ caFile: z.string(), certFile: z.string(), keyFile: z.string() }).optional(),
      /**
       * External Mosquitto: the folder where the controller keeps its ACL, password and CRL files
       * (mosquitto.conf points at them), and Mosquitto's pid file to signal a reload after each change.
       */
      mosquitto: z.strictObject({ dir: z.string(), pidFile: z.string().optional() }).optional(),
      /** Shared-subscription group for replicas; null subscribes plainly (one controller). */
      sharedGroup: z
        .string()
        .regex(/^[A-Za-z0-9_-]+$/)
        .nullable()
        .default('ward-controller'),
    })
    .refine((b) => (b.embedded === undefined) !== (b.url === undefined), { message: 'set exactly one of broker.embedded or broker.url' })
    .default({ embedded: { host: '127.0.0.1', tcpPort: 1883, wsPort: 8083 }, sharedGroup: 'ward-controller' }),
  api: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: port.default(8080),
    })
    .default({ host: '127.0.0.1', port: 8080 }),
  /** Device keys accepted until enrollment (identity issue) registers them. */
  devices: z.array(z.strictObject({ id: z.string().regex(DEVICE_ID_PATTERN), publicKey: z.string().regex(/^[A-Za-z0-9_-]{43}$/) })).default([]),
  /** Enrollment, once the controller is certified by a fleet root (`ward fleet certify-controller`). */
  enrollment: z
    .strictObject({
      /** host:port of the enrollment listener printed into QR codes. Default: the embedded broker's address. */
      advertise: z
        .array(z.string().regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/))
        .min(1)
        .max(4)
        .optional(),
      /** mqtts:// URLs enrolled devices use. Default: the embedded broker's URL. */
      deviceBrokers: z
        .array(z.string().regex(/^mqtts:\/\/\S+$/))
        .min(1)
        .max(4)
        .optional(),
      /** Extra names/addresses for the embedded broker's TLS certificate (what gateways dial). */
      serverHosts: z.array(z.string().min(1)).default([]),
      certValidityDays: z.number().int().min(1).max(825).default(90),
    })
    .default({ serverHosts: [], certValidityDays: 90 }),
  rpc: z.strictObject({ timeoutMs: z.number().int().positive().default(10_000) }).default({ timeoutMs: 10_000 }),
  /** The Verifier (DESIGN.md §2): how often gateways are challenged, and the reference values. */
  attestation: z
    .strictObject({
      intervalSeconds: z.number().int().min(1).max(86_400).default(60),
      /** No passing evidence for this long: the gateway is degraded. */
      staleAfterSeconds: z
        .number()
        .int()
        .min(1)
        .max(7 * 86_400)
        .default(180),
      /** sha256 of approved executables, beside those in `manifests`. */
      executables: z.array(z.string().regex(/^[0-9a-f]{64}$/)).default([]),
      /** Build manifests (dist/manifest.json) whose binaries are released executables. */
      manifests: z.array(z.string().min(1)).default([]),
    })
    .default({ intervalSeconds: 60, staleAfterSeconds: 180, executables: [], manifests: [] }),
  /** Sparkplug B host application (issue 8): STATE, the per-gateway time-series view, health alarms. */
  telemetry: z
    .strictObject({
      /** The STATE topic's host id; gateways wait for this host (their `telemetry.primaryHostId`). */
      hostId: z
        .string()
        .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/)
        .default('ward-controller'),
      /** Publish STATE as the primary host. Off when another host application (a SCADA) is the primary. */
      primaryHost: z.boolean().default(true),
      historyPoints: z.number().int().min(1).max(100_000).default(500),
      rebirthMinIntervalSeconds: z.number().min(0).max(3_600).default(10),
      /** Alarm rules on gateway health (controller/health-rules.ts); absent: the defaults there. */
      alarms: z.array(alarmRuleSchema).optional(),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).default({ level: 'info' }),
});

export type ControllerConfigInput = z.input<typeof controllerConfigSchema>;
export type ControllerConfig = z.output<typeof controllerConfigSchema>;
