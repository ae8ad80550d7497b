import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { MqttConfig } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { encodeEnvelope, seal } from '../shared/envelope.js';
import type { SigningKey } from '../shared/keys.js';
import { STATE_TYPE, type StatePayload } from '../shared/messages.js';
import { MqttSession, type MqttSessionOptions, type NegotiatedProtocol, type Will } from '../shared/mqtt-session.js';
import { topics } from '../shared/topics.js';
import type { VersionCounter } from './version-counter.js';

/**
 * The agent's control link: one MQTT session to the broker that
 * - registers a signed "offline" Will for each connection (retained, on the
 *   device's `state` topic) so the controller learns of a dead agent from the
 *   broker ([MQTT-3.1.2-8]);
 * - publishes its signed, retained `state` on connect, on change and every
 *   heartbeat;
 * - hands inbound `cmd` messages to the RPC server.
 *
 * State messages carry a monotonic `version` and a random per-connection
 * `session`. The Will is signed before the connection it belongs to, so it
 * versions on its own stream (`…/state/lwt`) and the controller honours it
 * only for the session it names.
 */
export interface StateSnapshot {
  readonly lifecycle: StatePayload['lifecycle'];
  readonly plugins: readonly string[];
}

export interface ControlLinkDeps {
  readonly deviceId: string;
  readonly config: MqttConfig;
  readonly key: SigningKey;
  readonly versions: VersionCounter;
  readonly clock: Clock;
  readonly agentVersion: string;
  readonly heartbeatSeconds: number;
  readonly snapshot: () => StateSnapshot;
  readonly onCommand: (payload: Buffer) => void;
  /** More topics under the device's own tree (audit receipts, …), each with its handler. */
  readonly handlers?: ReadonlyMap<string, (payload: Buffer) => void>;
  /** Told when the link gains or loses the broker (the audit shipper pauses while it is away). */
  readonly onConnectionChange?: (connected: boolean) => void;
  readonly log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void; debug: (o: object, m?: string) => void };
}

const STATE_TTL_SECONDS = 7 * 24 * 3600;

export class ControlLink {
  #session: MqttSession | undefined;
  #sessionId = '';
  #heartbeat: NodeJS.Timeout | undefined;
  #publishing: Promise<void> = Promise.resolve();
  readonly #startedAt: number;

  constructor(private readonly deps: ControlLinkDeps) {
    this.#startedAt = Math.floor(deps.clock.now() / 1000);
  }

  get connected(): boolean {
    return this.#session?.connected ?? false;
  }

  get protocol(): NegotiatedProtocol | undefined {
    return this.#session?.protocol;
  }

  get publish() {
    return async (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }) => {
      if (this.#session === undefined) throw new WardError(ErrorCodes.LINK_NOT_CONNECTED, 'control link not started', { retryable: true });
      await this.#session.publish(topic, payload, opts);
    };
  }

  async start(): Promise<void> {
    const { config, deviceId } = this.deps;
    this.#session = new MqttSession(
      {
        ...(await sessionOptionsFor(config, `ward-agent-${deviceId}`)),
        subscriptions: [{ filter: topics.cmd(deviceId), qos: 1 }, ...[...(this.deps.handlers?.keys() ?? [])].map((filter) => ({ filter, qos: 1 as const }))],
        prepareWill: () => this.#prepareWill(),
      },
      {
        onConnected: async ({ protocol, attempt }) => {
          this.deps.log.info({ protocol, attempt, session: this.#sessionId }, 'control link connected');
          await this.publishState();
          this.deps.onConnectionChange?.(true);
        },
        onDisconnected: (reason) => {
          this.deps.log.warn({ reason }, 'control link lost; reconnecting');
          this.deps.onConnectionChange?.(false);
        },
        onMessage: (topic, payload) => {
          if (topic === topics.cmd(deviceId)) this.deps.onCommand(payload);
          else this.deps.handlers?.get(topic)?.(payload);
        },
        onError: (err) => this.deps.log.warn({ code: err.code, err: err.message }, 'control link error'),
      },
    );
    this.#session.start();
    this.#heartbeat = setInterval(() => {
      if (this.connected) void this.publishState();
    }, this.deps.heartbeatSeconds * 1000);
    this.#heartbeat.unref();
  }

  /** Publishes the current state (retained). Serialised: versions must reach the broker in order. */
  publishState(): Promise<void> {
    const run = this.#publishing.then(() => this.#publishStateNow(true));
    this.#publishing = run.catch(() => undefined);
    return run;
  }

  async stop(): Promise<void> {
    clearInterval(this.#heartbeat);
    const session = this.#session;
    if (session === undefined) return;
    await session.stop(async () => {
      await this.#publishing;
      await this.#publishStateNow(false, 'shutdown');
    });
  }

  async #publishStateNow(online: boolean, cause?: 'shutdown'): Promise<void> {
    const session = this.#session;
    if (session === undefined || !session.connected) return;
    const version = await this.deps.versions.next();
    const envelope = seal(this.deps.key, this.#stateBody(online, cause), { ttlSeconds: STATE_TTL_SECONDS, clock: this.deps.clock, version });
    try {
      await session.publish(topics.state(this.deps.deviceId), encodeEnvelope(envelope), { qos: 1, retain: true });
      this.deps.log.debug({ version, online }, 'state published');
    } catch (err) {
      this.deps.log.warn({ err: describeError(err) }, 'state publish failed; will retry on reconnect');
    }
  }

  async #prepareWill(): Promise<Will> {
    this.#sessionId = randomBytes(12).toString('base64url');
    const version = await this.deps.versions.next();
    const envelope = seal(this.deps.key, this.#stateBody(false, 'lwt'), { ttlSeconds: STATE_TTL_SECONDS, clock: this.deps.clock, version });
    return { topic: topics.state(this.deps.deviceId), payload: encodeEnvelope(envelope), qos: 1, retain: true };
  }

  #stateBody(online: boolean, cause?: 'lwt' | 'shutdown') {
    const snap = this.deps.snapshot();
    return {
      typ: STATE_TYPE,
      sub: this.deps.deviceId,
      online,
      ...(cause ? { cause } : {}),
      session: this.#sessionId,
      lifecycle: snap.lifecycle,
      agentVersion: this.deps.agentVersion,
      protocol: this.#session?.protocol ?? '3.1.1',
      plugins: [...snap.plugins],
      startedAt: this.#startedAt,
      heartbeatSeconds: this.deps.heartbeatSeconds,
    } satisfies Omit<StatePayload, 'iat' | 'exp' | 'version' | 'nonce'>;
  }
}

/**
 * What every MQTT session of the agent takes from its `mqtt` config: the
 * broker, timers and credentials (TLS files and password read now). The
 * control link and the Sparkplug publisher differ only in client id, Will
 * and subscriptions.
 */
export async function sessionOptionsFor(config: MqttConfig, clientId: string): Promise<Omit<MqttSessionOptions, 'prepareWill' | 'subscriptions'>> {
  const tls = config.tls
    ? {
        ...(config.tls.caFile ? { ca: await readFile(config.tls.caFile) } : {}),
        ...(config.tls.certFile ? { cert: await readFile(config.tls.certFile) } : {}),
        ...(config.tls.keyFile ? { key: await readFile(config.tls.keyFile) } : {}),
        rejectUnauthorized: config.tls.rejectUnauthorized,
      }
    : undefined;
  const password = config.passwordFile ? (await readFile(config.passwordFile)).subarray(0) : undefined;
  return {
    url: config.url,
    clientId,
    protocol: config.protocol,
    keepaliveSeconds: config.keepaliveSeconds,
    connectTimeoutMs: config.connectTimeoutMs,
    reconnect: config.reconnect,
    ...(config.username !== undefined ? { username: config.username } : {}),
    ...(password !== undefined ? { password: trimNewline(password) } : {}),
    ...(tls ? { tls } : {}),
  };
}

function trimNewline(buf: Buffer): Buffer {
  let end = buf.length;
  while (end > 0 && (buf[end - 1] === 0x0a || buf[end - 1] === 0x0d)) end--;
  return buf.subarray(0, end);
}
