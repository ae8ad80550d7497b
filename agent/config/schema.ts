import { z } from 'zod';
import { DEVICE_ID_PATTERN } from '../shared/topics.js';

/**
 * The agent's configuration file. One schema, strict (an unknown field is an
 * error: a typo must not silently fall back to a default on a plant floor),
 * with a default for every optional field. Validated once at start, then
 * frozen; each subsystem receives only its slice.
 */
const b64urlKey = z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'expected a base64url ed25519 public key (43 characters)');
const duration = z.number().int().positive();
const LABEL = /^[A-Za-z0-9._-]{1,32}$/;

export const mqttSchema = z.strictObject({
  /** mqtt://host:port, mqtts://host:port (TLS), ws:// or wss:// */
  url: z.string().regex(/^(mqtts?|wss?):\/\/[^\s]+$/, 'expected an mqtt://, mqtts://, ws:// or wss:// URL'),
  /** 'auto' tries MQTT 5 and falls back to 3.1.1 when the broker refuses it (aedes speaks only 3.1.1). */
  protocol: z.enum(['auto', '3.1.1', '5']).default('auto'),
  keepaliveSeconds: z.number().int().min(5).max(3600).default(30),
  connectTimeoutMs: duration.default(10_000),
  reconnect: z
    .strictObject({
      baseMs: duration.default(500),
      capMs: duration.default(30_000),
    })
    .default({ baseMs: 500, capMs: 30_000 }),
  username: z.string().optional(),
  /** Path of a file holding the broker password (never the password itself in config). */
  passwordFile: z.string().optional(),
  tls: z
    .strictObject({
      caFile: z.string().optional(),
      certFile: z.string().optional(),
      keyFile: z.string().optional(),
      rejectUnauthorized: z.boolean().default(true),
    })
    .optional(),
});

export const pluginEntrySchema = z.strictObject({
  name: z.string().min(1),
  enabled: z.boolean().default(true),
  config: z.record(z.string(), z.unknown()).default({}),
});

export const hardwareSchema = z.strictObject({
  /** Where /proc, /sys and /dev are read: '/' on a gateway, a fixture tree in tests. */
  root: z.string().min(1).default('/'),
  /** 'auto' detects the board from the device tree or DMI; or a profile id (rpi4, rpi-cm4-dual-eth, rpi5, generic). */
  board: z.string().min(1).default('auto'),
  /** 'auto' uses the board's status LED when it has one; 'none'; or an LED name under /sys/class/leds. */
  statusLed: z.string().min(1).default('auto'),
  /** 'auto' uses systemd's watchdog when started by systemd (NOTIFY_SOCKET); 'none'. */
  watchdog: z.enum(['auto', 'none']).default('auto'),
  /** Where a USB barcode/QR scanner's keystrokes arrive: 'stdin' (systemd TTYPath), a tty path, or null. */
  scanner: z.string().min(1).nullable().default(null),
});

export const agentConfigSchema = z
  .strictObject({
    /**
     * Identity: deviceId + controller + mqtt together (static provisioning, until enrollment by QR
     * code lands), or none of them: the agent then waits, unprovisioned, for its enrollment QR code.
     */
    deviceId: z.string().regex(DEVICE_ID_PATTERN, 'expected 1-64 of [A-Za-z0-9._-], starting alphanumeric').optional(),
    /** Where keys and persistent state live (0700). */
    stateDir: z.string().min(1),
    controller: z
      .strictObject({
        /** The controller's signing key. Until enrollment (identity issue) lands, pinned here. */
        publicKey: b64urlKey,
      })
      .optional(),
    mqtt: mqttSchema.optional(),
    /** The fleet root metadata baked into the image: the only thing a fresh gateway trusts. */
    trust: z.strictObject({ rootFile: z.string().min(1) }).optional(),
    /** What enrollment may assume about this gateway (all optional). */
    provisioning: z
      .strictObject({
        /** The device id to enroll as; default gw-<12 hex of the device key's SHA-256>. */
        deviceId: z.string().regex(DEVICE_ID_PATTERN, 'expected 1-64 of [A-Za-z0-9._-], starting alphanumeric').optional(),
        /** Refuse enrollment codes for another site or line (a gateway imaged for one plant must not join another). */
        site: z.string().regex(LABEL).optional(),
        line: z.string().regex(LABEL).optional(),
        timeoutMs: duration.default(30_000),
        /**
         * The reverse flow (claim QR, `ward identity qr`): the enrollment listener (host:port) where this
         * gateway, while unprovisioned, looks for the bundle an operator confirmed for it.
         */
        claimBroker: z
          .string()
          .regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/, 'expected host:port')
          .optional(),
        claimPollSeconds: z.number().int().min(1).max(3600).default(30),
        /** Renew the client certificate once this fraction of its lifetime has passed. */
        renewAfterFraction: z
          .number()
          .min(0.1)
          .max(0.95)
          .default(2 / 3),
        /** How often to check whether renewal is due. */
        renewCheckSeconds: z.number().int().min(10).max(86_400).default(3600),
      })
      .default({ timeoutMs: 30_000, renewAfterFraction: 2 / 3, renewCheckSeconds: 3600, claimPollSeconds: 30 }),
    hardware: hardwareSchema.default({ root: '/', board: 'auto', statusLed: 'auto', watchdog: 'auto', scanner: null }),
    state: z
      .strictObject({
        /** Re-publish the retained state this often even without change, so the controller sees liveness. */
        heartbeatSeconds: z.number().int().min(5).max(86_400).default(300),
      })
      .default({ heartbeatSeconds: 300 }),
    /** The signed audit journal (DESIGN.md §5) and its shipping to the controller. */
    audit: z
      .strictObject({
        /** Bytes of un-receipted events kept on disk; beyond it events are counted, not stored (and a signed overflow event says so). */
        maxBytes: z
          .number()
          .int()
          .min(64 * 1024)
          .default(64 * 1024 * 1024),
        /** Warn (log + audit event) once the journal is this full. */
        warnFraction: z.number().min(0.1).max(0.99).default(0.8),
        /** Sign a checkpoint at most this often while events keep coming. */
        checkpointIntervalMs: z.number().int().min(100).max(60_000).default(1000),
        maxBatchEvents: z.number().int().min(10).max(5000).default(1000),
        maxBatchBytes: z
          .number()
          .int()
          .min(16 * 1024)
          // JSON-escaped in the batch, this stays under the controller's 1 MiB message limit.
          .max(400 * 1024)
          .default(256 * 1024),
        receiptTimeoutMs: z.number().int().min(1000).max(600_000).default(15_000),
        /** Catch-up after an outage is paced to this many bytes per second, so it does not crowd out live traffic. */
        catchupBytesPerSecond: z
          .number()
          .int()
          .min(1024)
          .default(256 * 1024),
      })
      .default({
        maxBytes: 64 * 1024 * 1024,
        warnFraction: 0.8,
        checkpointIntervalMs: 1000,
        maxBatchEvents: 1000,
        maxBatchBytes: 256 * 1024,
        receiptTimeoutMs: 15_000,
        catchupBytesPerSecond: 256 * 1024,
      }),
    /** Micro-segmentation (DESIGN.md §6): where the policy's board ports are and how the gateway forwards. */
    enforce: z
      .strictObject({
        /** routed: the gateway routes between its ports; bridge: bump-in-the-wire, PLCs keep their addresses. */
        mode: z.enum(['routed', 'bridge']).default('routed'),
        /** Bridge mode: the bridge the ports are enslaved to. */
        bridge: z
          .string()
          .regex(/^[A-Za-z0-9_.-]{1,15}$/)
          .default('br0'),
        /** Board port → interface, overriding detection (e.g. { PLC1: enx00e04c680001 }). */
        interfaces: z.record(z.string().regex(/^(UPLINK|PLC[0-9]{1,2}|ETH[0-9]{1,2})$/), z.string().regex(/^[A-Za-z0-9_.:@-]{1,15}$/)).default({}),
        /** Run nft inside this network namespace (tests, `ward dev`); absent on a gateway. */
        netns: z
          .string()
          .regex(/^[A-Za-z0-9_.-]{1,64}$/)
          .optional(),
        nft: z.string().min(1).default('nft'),
        /**
         * Traffic to the gateway that a policy must not block (a policy that would is refused unless forced).
         * Default: SSH on the uplink from somewhere.
         */
        management: z
          .array(
            z.strictObject({
              port: z.string().regex(/^(UPLINK|PLC[0-9]{1,2}|ETH[0-9]{1,2})$/),
              service: z.string().regex(/^(?:(tcp|udp)\/[0-9]{1,5}|icmp)$/),
              from: z
                .string()
                .regex(/^[0-9]{1,3}(\.[0-9]{1,3}){3}$/)
                .optional(),
            }),
          )
          .default([{ port: 'UPLINK', service: 'tcp/22' }]),
        /** How often the kernel's denied/learned flow sets are read. */
        pollSeconds: z.number().int().min(1).max(3600).default(10),
        /** At most one denied-flow event per connection tuple this often. */
        reportEverySeconds: z.number().int().min(1).max(86_400).default(60),
        maxEventsPerReport: z.number().int().min(1).max(10_000).default(50),
        /**
         * Gateway ports the protocol proxies listen on, one per proxied destination (flows with `ops`, routed
         * mode). Pick a range nothing else on the gateway uses.
         */
        proxyPorts: z
          .strictObject({ from: z.number().int().min(1024).max(65_535), to: z.number().int().min(1024).max(65_535) })
          .refine((r) => r.from <= r.to, { message: 'proxyPorts.from must not be above proxyPorts.to' })
          .default({ from: 15_020, to: 15_519 }),
      })
      .default({
        mode: 'routed',
        bridge: 'br0',
        interfaces: {},
        nft: 'nft',
        management: [{ port: 'UPLINK', service: 'tcp/22' }],
        pollSeconds: 10,
        reportEverySeconds: 60,
        maxEventsPerReport: 50,
        proxyPorts: { from: 15_020, to: 15_519 },
      }),
    /** Self-attestation (DESIGN.md §2): which TPM quotes the evidence. */
    attestation: z
      .strictObject({
        /**
         * `auto`: the board's TPM if it has one (`device:/dev/tpmrm0`), else software evidence; `off`: software
         * evidence only; or a tpm2-tools TCTI (`swtpm:host=127.0.0.1,port=2321` for a software TPM).
         */
        tpm: z.union([z.literal('auto'), z.literal('off'), z.string().regex(/^(device|swtpm|mssim|tabrmd):[^\s]*$/)]).default('auto'),
      })
      .default({ tpm: 'auto' }),
    /**
     * Telemetry (issue 8): gateway health and machine data as a Sparkplug B edge node (the gateway is the
     * node, each PLC/CNC a device), store-and-forward while the broker or the primary host is away.
     */
    telemetry: z
      .strictObject({
        enabled: z.boolean().default(true),
        /** The Sparkplug group id; the edge node id is the device id. */
        group: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/)
          .default('ward'),
        /** Births wait for this host application's online STATE (the Ward controller by default); null: do not wait. */
        primaryHostId: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/)
          .nullable()
          .default('ward-controller'),
        /** Machine samples are gathered this long per machine and sent as one DDATA. */
        flushMs: z.number().int().min(0).max(10_000).default(250),
        /** Coalesce NCMD rebirth requests arriving closer together than this. */
        rebirthMinIntervalSeconds: z.number().min(0).max(3_600).default(5),
        gateway: z
          .strictObject({
            enabled: z.boolean().default(true),
            intervalSeconds: z.number().min(1).max(3_600).default(10),
            /** Listening sockets and disks are read at this slower pace. */
            slowIntervalSeconds: z.number().min(1).max(86_400).default(60),
            mounts: z.array(z.string().startsWith('/')).default(['/']),
            /** Interfaces to report; absent: every interface but loopback. */
            interfaces: z.array(z.string().regex(/^[A-Za-z0-9_.:@-]{1,15}$/)).optional(),
            /**
             * Report-by-exception rules by metric name, over the built-in ones (gateway.ts); `*` stands for one or
             * more whole folders, as in the built-in Network and Disk rules. A key given here wins over a built-in pattern.
             */
            deadbands: z
              .record(
                z.string().regex(/^Gateway\/[A-Za-z0-9_.:*-]+(\/[A-Za-z0-9_.:*-]+)*$/, 'a gateway metric name or pattern (Gateway/…)'),
                z
                  .strictObject({
                    absolute: z.number().min(0).optional(),
                    percent: z.number().min(0).optional(),
                    /** Sent at least this often even when unchanged. */
                    maxSilenceSeconds: z.number().min(1).max(86_400).optional(),
                  })
                  .refine((r) => r.absolute === undefined || r.percent === undefined, 'give absolute or percent, not both'),
              )
              .default({}),
          })
          .prefault({}),
        buffer: z
          .strictObject({
            /** Store-and-forward bound; past it the oldest data is evicted and counted. */
            maxBytes: z
              .number()
              .int()
              .min(64 * 1024)
              .default(64 * 1024 * 1024),
          })
          .prefault({}),
      })
      .prefault({}),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .default({ level: 'info' }),
    plugins: z.array(pluginEntrySchema).default([]),
    shutdownTimeoutMs: duration.default(5_000),
  })
  .refine((c) => [c.deviceId, c.controller, c.mqtt].every((v) => v === undefined) || [c.deviceId, c.controller, c.mqtt].every((v) => v !== undefined), {
    message: 'deviceId, controller and mqtt go together: set all three (static provisioning) or none (wait for the enrollment QR code)',
  });

export type AgentConfigInput = z.input<typeof agentConfigSchema>;
export type AgentConfig = z.output<typeof agentConfigSchema>;
export type MqttConfig = z.output<typeof mqttSchema>;
export type HardwareConfig = z.output<typeof hardwareSchema>;
