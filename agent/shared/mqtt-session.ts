import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { backoffDelay } from '../core/backoff.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';

/**
 * One MQTT session that keeps itself connected, shared by the agent's
 * control link and the controller. It owns its mqtt.js client: a fresh client
 * per connection attempt, because each attempt needs a freshly signed Will
 * (the LWT carries the new session id) and mqtt.js fixes the Will at
 * construction. Reconnects use capped exponential backoff with full jitter
 * rather than mqtt.js's fixed reconnectPeriod, so a fleet does not stampede a
 * restarted broker.
 *
 * Protocol: 'auto' tries MQTT 5 and falls back to 3.1.1 when the broker
 * answers CONNACK "unacceptable protocol version" (3.1.1 return code 1,
 * [MQTT-3.2.2-4]) or "unsupported protocol version" (MQTT 5 reason 0x84):
 * aedes, the embedded broker, speaks only 3.1.1.
 *
 * Concurrency: start() once, stop() once; publish()/subscribe state may be
 * used at any time in between. Message handlers run on the mqtt.js event
 * loop turn and must not throw (errors are caught and reported).
 */
export type ProtocolChoice = 'auto' | '3.1.1' | '5';
export type NegotiatedProtocol = '3.1.1' | '5';

export interface Will {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1;
  readonly retain: boolean;
}

export interface Subscription {
  readonly filter: string;
  readonly qos: 0 | 1;
}

export interface SessionEvents {
  /** Called on each successful connect, after subscriptions are in place. */
  onConnected?(info: { protocol: NegotiatedProtocol; attempt: number }): void | Promise<void>;
  onDisconnected?(reason: string): void;
  onMessage?(topic: string, payload: Buffer, packet: IPublishPacket): void;
  onError?(error: WardError): void;
}

export interface MqttSessionOptions {
  readonly url: string;
  readonly clientId: string;
  readonly protocol: ProtocolChoice;
  readonly keepaliveSeconds: number;
  readonly connectTimeoutMs: number;
  readonly reconnect: { readonly baseMs: number; readonly capMs: number };
  readonly username?: string;
  readonly password?: Buffer;
  readonly tls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer; readonly rejectUnauthorized: boolean };
  readonly subscriptions?: readonly Subscription[];
  /** Called before every connection attempt; returns the Will for that attempt. */
  readonly prepareWill?: () => Will | undefined | Promise<Will | undefined>;
  readonly random?: () => number;
}

export class MqttSession {
  #client: MqttClient | undefined;
  #connected = false;
  #stopped = false;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #protocol: NegotiatedProtocol;
  readonly #subs: Subscription[];

  constructor(
    private readonly options: MqttSessionOptions,
    private readonly events: SessionEvents = {},
  ) {
    this.#protocol = options.protocol === '3.1.1' ? '3.1.1' : '5';
    this.#subs = [...(options.subscriptions ?? [])];
  }

  get connected(): boolean {
    return this.#connected;
  }

  get protocol(): NegotiatedProtocol {
    return this.#protocol;
  }

  start(): void {
    if (this.#client || this.#timer) throw new TypeError('MqttSession.start() called twice');
    this.#connect();
  }

  /** Adds a subscription for this and every later connection. */
  async subscribe(sub: Subscription): Promise<void> {
    this.#subs.push(sub);
    if (this.#connected && this.#client) await this.#client.subscribeAsync(sub.filter, { qos: sub.qos });
  }

  async publish(topic: string, payload: Buffer | string, opts: { qos: 0 | 1; retain?: boolean; messageExpirySeconds?: number }): Promise<void> {
    const client = this.#client;
    if (!this.#connected || client === undefined) {
      throw new WardError(ErrorCodes.LINK_NOT_CONNECTED, `cannot publish to ${topic}: not connected to ${redactUrl(this.options.url)}`, {
        retryable: true,
      });
    }
    const properties = this.#protocol === '5' && opts.messageExpirySeconds ? { messageExpiryInterval: opts.messageExpirySeconds } : undefined;
    try {
      await client.publishAsync(topic, payload, { qos: opts.qos, retain: opts.retain ?? false, ...(properties ? { properties } : {}) });
    } catch (cause) {
      throw new WardError(ErrorCodes.LINK_PUBLISH_FAILED, `publish to ${topic} failed: ${describeError(cause)}`, { cause, retryable: true });
    }
  }

  /**
   * Ends the session. `beforeDisconnect` may publish a last message (an
   * "offline, shutdown" state) while still connected. A clean DISCONNECT
   * means the broker discards the Will ([MQTT-3.14.4-3]).
   */
  async stop(beforeDisconnect?: () => Promise<void>): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const client = this.#client;
    if (client === undefined) return;
    if (this.#connected && beforeDisconnect) {
      try {
        await beforeDisconnect();
      } catch (err) {
        this.events.onError?.(asWardError(err, 'final publish before disconnect failed'));
      }
    }
    this.#client = undefined;
    this.#connected = false;
    await client.endAsync(!client.connected).catch(() => undefined);
  }

  /**
   * Ends the current connection cleanly (the broker discards its Will,
   * [MQTT-3.14.4-3]) and opens a new one after the reconnect backoff, with a
   * freshly prepared Will. For protocols whose peer can ask a client to go
   * away and come back (Sparkplug's offline STATE).
   */
  async restart(reason: string): Promise<void> {
    const client = this.#client;
    if (this.#stopped || client === undefined) return;
    this.#client = undefined;
    const wasConnected = this.#connected;
    this.#connected = false;
    clearTimeout(this.#timer);
    await client.endAsync(false).catch(() => undefined);
    if (wasConnected) this.events.onDisconnected?.(reason);
    if (this.#stopped) return;
    this.#attempt = 1;
    this.#timer = setTimeout(() => this.#connect(), backoffDelay(1, { ...this.options.reconnect, minMs: 100 }, this.options.random));
  }

  #connect(): void {
    this.#timer = undefined;
    void this.#attemptConnect();
  }

  async #attemptConnect(): Promise<void> {
    if (this.#stopped) return;
    const attempt = this.#attempt++;
    let will: Will | undefined;
    try {
      will = await this.options.prepareWill?.();
    } catch (err) {
      this.events.onError?.(asWardError(err, 'preparing the will message failed'));
      this.#timer = setTimeout(() => this.#connect(), backoffDelay(attempt, { ...this.options.reconnect, minMs: 100 }, this.options.random));
      return;
    }
    if (this.#stopped) return;
    const version = this.#protocol === '5' ? 5 : 4;
    const opts: IClientOptions = {
      clientId: this.options.clientId,
      protocolVersion: version,
      keepalive: this.options.keepaliveSeconds,
      connectTimeout: this.options.connectTimeoutMs,
      reconnectPeriod: 0,
      clean: true,
      resubscribe: false,
      ...(version === 5 ? { properties: { sessionExpiryInterval: 0 } } : {}),
      ...(this.options.username !== undefined ? { username: this.options.username } : {}),
      ...(this.options.password !== undefined ? { password: this.options.password } : {}),
      ...(will ? { will: { topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain } } : {}),
      ...(this.options.tls
        ? {
            ...(this.options.tls.ca ? { ca: this.options.tls.ca } : {}),
            ...(this.options.tls.cert ? { cert: this.options.tls.cert } : {}),
            ...(this.options.tls.key ? { key: this.options.tls.key } : {}),
            rejectUnauthorized: this.options.tls.rejectUnauthorized,
          }
        : {}),
    };
    const client = mqtt.connect(this.options.url, opts);
    this.#client = client;
    let fellBack = false;

    client.on('connect', () => {
      if (this.#client !== client) return;
      void this.#onConnect(client, attempt);
    });
    client.on('message', (topic, payload, packet) => {
      if (this.#client !== client) return;
      try {
        this.events.onMessage?.(topic, payload, packet);
      } catch (err) {
        this.events.onError?.(asWardError(err, `handler for ${topic} threw`));
      }
    });
    client.on('error', (err) => {
      if (this.#client !== client) return;
      const code = (err as { code?: unknown }).code;
      if (this.options.protocol === 'auto' && this.#protocol === '5' && (code === 1 || code === 132)) {
        // The broker does not speak MQTT 5: fall back at once, without backoff.
        this.#protocol = '3.1.1';
        fellBack = true;
        return;
      }
      this.events.onError?.(
        new WardError(ErrorCodes.LINK_CONNECT_FAILED, `MQTT ${redactUrl(this.options.url)}: ${err.message}`, { cause: err, retryable: true }),
      );
    });
    client.on('close', () => {
      if (this.#client !== client) return;
      const wasConnected = this.#connected;
      this.#connected = false;
      client.removeAllListeners('connect');
      client.end(true);
      if (wasConnected) this.events.onDisconnected?.('connection closed');
      if (this.#stopped) return;
      const delay = fellBack ? 0 : backoffDelay(wasConnected ? 0 : Math.max(attempt, 0), { ...this.options.reconnect, minMs: 100 }, this.options.random);
      if (wasConnected) this.#attempt = 1;
      this.#timer = setTimeout(() => this.#connect(), delay);
    });
  }

  async #onConnect(client: MqttClient, attempt: number): Promise<void> {
    try {
      for (const sub of this.#subs) await client.subscribeAsync(sub.filter, { qos: sub.qos });
    } catch (err) {
      this.events.onError?.(asWardError(err, 'subscribe after connect failed'));
      client.end(true);
      return;
    }
    if (this.#client !== client) return;
    this.#connected = true;
    this.#attempt = 0;
    try {
      await this.events.onConnected?.({ protocol: this.#protocol, attempt });
    } catch (err) {
      this.events.onError?.(asWardError(err, 'connect handler failed'));
    }
  }
}

function asWardError(err: unknown, context: string): WardError {
  if (err instanceof WardError) return err;
  return new WardError(ErrorCodes.LINK_CONNECT_FAILED, `${context}: ${describeError(err)}`, { cause: err, retryable: true });
}

/** Hides credentials embedded in a broker URL before it reaches a log line. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}
