import type { AuditSink } from '../core/audit.js';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes } from '../core/errors.js';
import { MqttSession, type MqttSessionOptions } from '../shared/mqtt-session.js';
import type { TelemetryBuffer } from './buffer.js';
import type { MetricPoint } from './metric.js';
import { decodeSparkplug } from './sparkplug/codec.js';
import { EdgeNodeSession, REBIRTH_METRIC, type SpbMessage } from './sparkplug/edge-node.js';
import { parseSparkplugTopic, SPB_NAMESPACE, stateTopic } from './sparkplug/topics.js';

/**
 * The gateway as a Sparkplug B 3.0 edge node on its own MQTT session (the
 * control link's session has its own Will, the signed offline state, and an
 * MQTT connection has exactly one Will).
 *
 * Connection: clean session (3.1.1) or Clean Start with Session Expiry 0
 * (MQTT 5), as MqttSession always does (tck-id-principles-persistence-clean-session-311,
 * tck-id-principles-persistence-clean-session-50): a broker never buffers
 * for this node; the buffering is Ward's own (buffer.ts). Each CONNECT
 * carries the NDEATH as its Will, QoS 1, not retained, with a bdSeq one
 * above the previous CONNECT's, persisted so that a restart never reuses one.
 *
 * Order on every connection: subscribe NCMD/DCMD at QoS 1 (and the primary
 * host's STATE) → wait for the host's online STATE when one is configured →
 * NBIRTH, then a DBIRTH per device → the gap event, if anything was evicted →
 * replay of buffered data, oldest first, as is_historical → live data. Data
 * produced while any step before "live" is pending goes to the buffer, so
 * the host sees history in order and never data before its birth.
 *
 * Commands: NCMD `Node Control/Rebirth` = true re-sends the births (at most
 * once per `rebirthMinIntervalMs`; requests in between are coalesced). Every
 * other command, and every DCMD, is refused and audited: writing to a
 * machine through Sparkplug would bypass the segmentation policy and the
 * protocol proxy's operation checks.
 *
 * Concurrency: publishNode/publishDevice may be called at any time; they
 * never wait and never throw. start() and stop() once each.
 */
export interface SparkplugPublisherDeps {
  readonly group: string;
  readonly edgeNode: string;
  /** Wait for this host application's online STATE before births; null: publish whenever connected. */
  readonly primaryHostId: string | null;
  readonly mqtt: Omit<MqttSessionOptions, 'prepareWill' | 'subscriptions'>;
  readonly buffer: TelemetryBuffer;
  /** Current values of every node metric (for NBIRTH). */
  readonly nodeMetrics: () => readonly MetricPoint[];
  /** Current values of every metric of every device (for DBIRTH). */
  readonly deviceMetrics: () => ReadonlyMap<string, readonly MetricPoint[]>;
  readonly audit: AuditSink;
  readonly clock: Clock;
  readonly log: {
    info(o: object, m?: string): void;
    warn(o: object, m?: string): void;
    error(o: object, m?: string): void;
    debug(o: object, m?: string): void;
  };
  readonly rebirthMinIntervalMs?: number;
  /** Buffered batches per replay step. */
  readonly replayBatch?: number;
  /** For tests and benches: every message as it is handed to MQTT. */
  readonly onPublish?: (message: SpbMessage) => void;
}

export interface PublisherStatus {
  readonly connected: boolean;
  readonly hostOnline: boolean;
  readonly born: boolean;
  readonly live: boolean;
  readonly bdSeq: number;
  readonly seq: number;
  readonly buffered: { readonly batches: number; readonly points: number; readonly bytes: number };
  readonly dropped: number;
  readonly sent: { readonly messages: number; readonly metrics: number; readonly bytes: number; readonly historical: number };
  readonly births: number;
  readonly refusedCommands: number;
}

const REBIRTH_SETTLE_MS = 250;

/** `current` plus every name only `known` has (its last buffered point); current values win. */
function withKnown(current: readonly MetricPoint[], known: ReadonlyMap<string, MetricPoint> | undefined): MetricPoint[] {
  if (known === undefined || known.size === 0) return [...current];
  const names = new Set(current.map((p) => p.name));
  return [...current, ...[...known.values()].filter((p) => !names.has(p.name))];
}

interface HostState {
  readonly online: boolean;
  readonly timestamp: number;
}

export class SparkplugPublisher {
  readonly #d: SparkplugPublisherDeps;
  readonly #node: EdgeNodeSession;
  readonly #session: MqttSession;
  readonly #rebirthMinMs: number;
  readonly #replayBatch: number;
  #hostOnline: boolean;
  #lastHostState: HostState | undefined;
  #live = false;
  #birthing: Promise<void> | undefined;
  #rebirthTimer: NodeJS.Timeout | undefined;
  #lastBirthAt = Number.NEGATIVE_INFINITY;
  #stopped = false;
  #births = 0;
  #refused = 0;
  readonly #sent = { messages: 0, metrics: 0, bytes: 0, historical: 0 };
  #lastDroppedSent = -1;
  /** The buffered batch a replay asked a rebirth for (so a second miss on it drops it instead of looping). */
  #rebirthForKey: string | undefined;

  constructor(deps: SparkplugPublisherDeps) {
    this.#d = deps;
    this.#rebirthMinMs = deps.rebirthMinIntervalMs ?? 5_000;
    this.#replayBatch = deps.replayBatch ?? 64;
    this.#node = new EdgeNodeSession({ group: deps.group, edgeNode: deps.edgeNode, now: () => deps.clock.now() });
    this.#hostOnline = deps.primaryHostId === null;
    const ncmd = `${SPB_NAMESPACE}/${deps.group}/NCMD/${deps.edgeNode}`;
    const dcmd = `${SPB_NAMESPACE}/${deps.group}/DCMD/${deps.edgeNode}/+`;
    this.#session = new MqttSession(
      {
        ...deps.mqtt,
        // tck-id-operational-behavior-edge-node-subscribe-ncmd/dcmd: commands at QoS 1; the host's STATE at QoS 1.
        subscriptions: [
          { filter: ncmd, qos: 1 },
          { filter: dcmd, qos: 1 },
          ...(deps.primaryHostId !== null ? [{ filter: stateTopic(deps.primaryHostId), qos: 1 as const }] : []),
        ],
        prepareWill: () => this.#prepareConnection(),
      },
      {
        onConnected: ({ protocol }) => {
          deps.log.info({ protocol, bdSeq: this.#node.bdSeq, waitingForHost: this.#hostOnline ? null : deps.primaryHostId }, 'sparkplug session connected');
          this.#maybeBirth();
        },
        onDisconnected: (reason) => {
          this.#live = false;
          this.#hostOnline = deps.primaryHostId === null;
          deps.log.warn({ reason, buffered: deps.buffer.depth }, 'sparkplug session lost; buffering telemetry');
        },
        onMessage: (topic, payload) => this.#onMessage(topic, payload),
        onError: (err) => deps.log.warn({ code: err.code, err: err.message }, 'sparkplug session error'),
      },
    );
  }

  start(): void {
    this.#session.start();
  }

  /** Publishes NDEATH and disconnects (tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath). */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#live = false;
    clearTimeout(this.#rebirthTimer);
    await this.#session.stop(async () => {
      if (this.#node.born) await this.#send(this.#node.nodeDeath());
    });
  }

  publishNode(points: readonly MetricPoint[]): void {
    this.#publish(undefined, points);
  }

  publishDevice(device: string, points: readonly MetricPoint[]): void {
    this.#publish(device, points);
  }

  /** A machine is gone (its plugin stopped, or it was removed from config): DDEATH if it was born. */
  deviceGone(device: string): void {
    if (this.#live && this.#node.isDeviceBorn(device)) this.#sendNow(this.#node.deviceDeath(device));
  }

  /** Asks for the births again (as an NCMD rebirth would): after the set of metrics changed shape. */
  rebirth(reason: string): void {
    this.#requestRebirth(reason);
  }

  status(): PublisherStatus {
    const b = this.#d.buffer;
    return {
      connected: this.#session.connected,
      hostOnline: this.#hostOnline,
      born: this.#node.born,
      live: this.#live,
      bdSeq: this.#node.bdSeq,
      seq: this.#node.seq,
      buffered: { batches: b.depth, points: b.points, bytes: b.bytes },
      dropped: b.dropped,
      sent: { ...this.#sent },
      births: this.#births,
      refusedCommands: this.#refused,
    };
  }

  #publish(device: string | undefined, points: readonly MetricPoint[]): void {
    if (points.length === 0 || this.#stopped) return;
    const batch = device === undefined ? { points } : { device, points };
    if (!this.#live) {
      this.#append(batch);
      return;
    }
    const need = this.#node.needsBirth(device, points);
    if (need !== 'none') {
      // A device or metric the births did not declare (a new machine, interface, disk): everything is born again,
      // because DBIRTHs must directly follow the NBIRTH, before any data (tck-id-payloads-dbirth-order). The data
      // waits in the buffer and goes out after the births.
      this.#append(batch);
      this.#requestRebirth(`${need === 'node' ? 'new node metric' : `new metric or device ${device}`}`, true);
      return;
    }
    const message = this.#node.data(device, points);
    this.#sendNow(message, batch);
  }

  #append(batch: { device?: string; points: readonly MetricPoint[] }): void {
    try {
      this.#d.buffer.append(batch);
    } catch (err) {
      this.#d.log.error({ err: describeError(err) }, 'telemetry not buffered');
    }
  }

  async #prepareConnection() {
    const raw = await this.#d.buffer.meta('bdSeq');
    const previous = raw === undefined ? Number.NaN : Number(raw);
    // tck-id-payloads-nbirth-bdseq-increment: one above the previous CONNECT's, 0..255; 0 on the very first.
    const bdSeq = Number.isInteger(previous) && previous >= 0 && previous <= 255 ? (previous + 1) % 256 : 0;
    await this.#d.buffer.setMeta('bdSeq', String(bdSeq));
    this.#live = false;
    const will = this.#node.beginConnection(bdSeq);
    return { topic: will.topic, payload: will.payload, qos: 1 as const, retain: false };
  }

  #maybeBirth(): void {
    if (this.#stopped || !this.#session.connected || !this.#hostOnline || this.#birthing) return;
    this.#birthing = this.#birthAndReplay().finally(() => {
      this.#birthing = undefined;
    });
  }

  async #birthAndReplay(): Promise<void> {
    this.#live = false;
    this.#lastBirthAt = this.#d.clock.now();
    this.#births++;
    try {
      // Births declare what is current and everything still buffered: after a restart, a buffered metric the
      // collectors have not produced again (a PLC still down, an interface gone) must still be declared, or its
      // replay could never be sent.
      const known = this.#d.buffer.known();
      const sends = [this.#send(this.#node.nodeBirth(withKnown([...this.#d.nodeMetrics(), ...this.#wardMetrics()], known.get(''))))];
      const devices = new Map(this.#d.deviceMetrics());
      for (const device of known.keys()) if (device !== '' && !devices.has(device)) devices.set(device, []);
      for (const [device, metrics] of devices) {
        const all = withKnown(metrics, known.get(device));
        if (all.length > 0) sends.push(this.#send(this.#node.deviceBirth(device, all)));
      }
      await Promise.all(sends);
      this.#reportGap();
      await this.#replay();
    } catch (err) {
      this.#d.log.warn({ err: describeError(err) }, 'sparkplug births or replay interrupted');
      // Still connected (a read error, not a lost link): try the replay again shortly rather than at the next connection.
      if (!this.#stopped && this.#session.connected && this.#node.born && !this.#live) {
        setTimeout(() => {
          if (!this.#stopped && this.#session.connected && !this.#live && !this.#birthing) {
            this.#birthing = this.#replay()
              .catch((e) => this.#d.log.warn({ err: describeError(e) }, 'sparkplug replay failed again'))
              .finally(() => {
                this.#birthing = undefined;
              });
          }
        }, 1_000).unref();
      }
    }
  }

  async #replay(): Promise<void> {
    let replayed = 0;
    while (!this.#stopped && this.#session.connected && this.#node.born) {
      if (this.#d.buffer.depth === 0) {
        // Synchronously with the check: from here on, data goes straight out, after everything replayed.
        this.#live = true;
        if (replayed > 0) this.#d.log.info({ batches: replayed }, 'buffered telemetry replayed');
        if (this.#d.buffer.dropped !== this.#lastDroppedSent) this.#publish(undefined, this.#wardMetrics());
        return;
      }
      const entries = await this.#d.buffer.peek(this.#replayBatch);
      if (!this.#session.connected || !this.#node.born) return;
      const sends: Promise<void>[] = [];
      const sent: string[] = [];
      const unsendable: string[] = [];
      for (const { key, batch } of entries) {
        // A metric that appeared while replaying (buffered after these births): born again first, since births
        // declare everything buffered. The same batch still undeclared after that rebirth, or a batch whose write
        // failed, is dropped and counted: nothing may block the buffer's head.
        const undeclared = batch !== null && this.#node.needsBirth(batch.device, batch.points) !== 'none';
        if (undeclared && this.#rebirthForKey !== key) {
          if (sent.length === 0) {
            this.#rebirthForKey = key;
            this.#requestRebirth('a metric appeared while replaying', true);
            return;
          }
          break;
        }
        if (batch === null || undeclared) {
          if (sent.length > 0) break;
          unsendable.push(key);
          continue;
        }
        if (unsendable.length > 0) break;
        sends.push(this.#send(this.#node.data(batch.device, batch.points, { historical: true }), true));
        sent.push(key);
      }
      this.#d.buffer.sending(sent);
      try {
        await Promise.all(sends);
      } catch (err) {
        this.#d.buffer.release();
        throw err;
      }
      if (sent.length > 0) await this.#d.buffer.remove(sent);
      if (unsendable.length > 0) {
        this.#d.log.warn({ batches: unsendable.length }, 'buffered telemetry that cannot be sent was dropped (a failed write or an undeclared metric)');
        await this.#d.buffer.discard(unsendable);
        this.#reportGap();
      }
      replayed += sent.length;
    }
  }

  #reportGap(): void {
    const gap = this.#d.buffer.takeGap();
    if (gap === undefined) return;
    this.#d.log.warn({ ...gap }, 'telemetry lost while offline: the buffer was full and the oldest data was evicted');
    this.#d.audit.record({
      category: 'control-system',
      actor: 'ward-agent',
      action: 'telemetry.gap',
      outcome: 'failure',
      code: ErrorCodes.TELEMETRY_GAP,
      details: {
        points: gap.points,
        batches: gap.batches,
        from: new Date(gap.from).toISOString(),
        to: new Date(gap.to).toISOString(),
        droppedTotal: this.#d.buffer.dropped,
      },
    });
  }

  #wardMetrics(): MetricPoint[] {
    const now = this.#d.clock.now();
    this.#lastDroppedSent = this.#d.buffer.dropped;
    return [{ name: 'Ward/Telemetry/Dropped', type: 'UInt64', value: this.#d.buffer.dropped, timestamp: now }];
  }

  /**
   * Births again, coalesced: a host's NCMD at most once per rebirthMinIntervalMs; Ward's own (new metrics) after a
   * short settle, so the first samples of several machines after a start cost one rebirth rather than one each.
   * A pending rebirth is never pushed back, so a steady stream of requests cannot starve it.
   */
  #requestRebirth(reason: string, internal = false): void {
    if (this.#stopped || this.#rebirthTimer !== undefined) return;
    const wait = internal ? REBIRTH_SETTLE_MS : Math.max(0, this.#lastBirthAt + this.#rebirthMinMs - this.#d.clock.now());
    const go = () => {
      this.#rebirthTimer = undefined;
      if (this.#birthing) {
        // A birth in progress already re-announces everything; ask again after it for what it may have missed.
        void this.#birthing.then(() => this.#requestRebirth(reason, internal));
        return;
      }
      this.#d.log.info({ reason }, 'sparkplug rebirth');
      this.#live = false;
      this.#maybeBirth();
    };
    if (wait === 0) go();
    else this.#rebirthTimer = setTimeout(go, wait);
  }

  #onMessage(topic: string, payload: Buffer): void {
    const parsed = parseSparkplugTopic(topic);
    if (parsed?.kind === 'state') this.#onState(payload);
    else if (parsed?.kind === 'node' && parsed.type === 'NCMD') this.#onNodeCommand(payload);
    else if (parsed?.kind === 'device' && parsed.type === 'DCMD') {
      this.#refuse(
        'sparkplug.dcmd',
        parsed.device,
        ErrorCodes.SPARKPLUG_COMMAND_REFUSED,
        'device commands are not accepted: writes to machines go through the policy',
        payload,
      );
    }
  }

  #onNodeCommand(payload: Buffer): void {
    let metrics: ReturnType<typeof decodeSparkplug>['metrics'];
    try {
      metrics = decodeSparkplug(payload).metrics;
    } catch (err) {
      this.#refuse('sparkplug.ncmd', this.#d.edgeNode, ErrorCodes.SPARKPLUG_BAD_COMMAND, `malformed NCMD payload: ${describeError(err)}`, payload);
      return;
    }
    let rebirth = false;
    const refused: string[] = [];
    for (const m of metrics) {
      if (m.name === REBIRTH_METRIC && m.type === 'Boolean' && m.value === true) rebirth = true;
      else refused.push(m.name ?? `alias ${m.alias}`);
    }
    if (refused.length > 0 || metrics.length === 0) {
      this.#refuse(
        'sparkplug.ncmd',
        this.#d.edgeNode,
        ErrorCodes.SPARKPLUG_COMMAND_REFUSED,
        metrics.length === 0 ? 'NCMD without metrics' : `unsupported NCMD metrics: ${refused.slice(0, 8).join(', ')}`,
        payload,
      );
    }
    if (rebirth) {
      this.#d.audit.record({
        category: 'control-system',
        actor: 'sparkplug-host',
        action: 'sparkplug.rebirth',
        target: this.#d.edgeNode,
        outcome: 'success',
        details: { coalesced: this.#rebirthTimer !== undefined },
      });
      this.#requestRebirth('NCMD Node Control/Rebirth');
    }
  }

  #onState(payload: Buffer): void {
    let state: HostState;
    try {
      const parsed = JSON.parse(payload.toString('utf8')) as { online?: unknown; timestamp?: unknown };
      if (typeof parsed.online !== 'boolean' || typeof parsed.timestamp !== 'number' || !Number.isFinite(parsed.timestamp)) {
        throw new Error('expected {"online": boolean, "timestamp": number}');
      }
      state = { online: parsed.online, timestamp: parsed.timestamp };
    } catch (err) {
      this.#refuse('sparkplug.state', this.#d.primaryHostId ?? '', ErrorCodes.SPARKPLUG_BAD_STATE, `malformed STATE payload: ${describeError(err)}`, payload);
      return;
    }
    // tck-id-operational-behavior-edge-node-birth-sequence-wait / -timestamp: a STATE older than the newest seen is stale.
    if (this.#lastHostState && state.timestamp < this.#lastHostState.timestamp) {
      this.#d.log.debug({ state }, 'stale STATE ignored');
      return;
    }
    this.#lastHostState = state;
    if (state.online) {
      if (!this.#hostOnline) this.#d.log.info({ host: this.#d.primaryHostId }, 'primary host online');
      this.#hostOnline = true;
      this.#maybeBirth();
      return;
    }
    if (!this.#hostOnline) return;
    // tck-id-operational-behavior-edge-node-terminate-pre-existing: the primary host went offline: NDEATH,
    // disconnect, and connect again (the new connection waits for the host's online STATE, buffering meanwhile).
    this.#d.log.warn({ host: this.#d.primaryHostId }, 'primary host offline: ending this Sparkplug session; buffering until it is back');
    this.#hostOnline = false;
    this.#live = false;
    const born = this.#node.born;
    void (async () => {
      if (born) await this.#send(this.#node.nodeDeath()).catch(() => undefined);
      await this.#session.restart('primary host offline');
    })();
  }

  #refuse(action: string, target: string, code: string, message: string, payload: Buffer): void {
    this.#refused++;
    this.#d.log.warn({ action, target, code, bytes: payload.length }, message);
    this.#d.audit.record({
      category: 'request-error',
      actor: 'sparkplug-host',
      action,
      target,
      outcome: 'refused',
      code,
      details: { message: message.slice(0, 300), bytes: payload.length },
    });
  }

  /** Hands a message to MQTT in call order; a failure of live data puts it back in the buffer. */
  #sendNow(message: SpbMessage, batch?: { device?: string; points: readonly MetricPoint[] }): void {
    this.#send(message).catch(() => {
      if (batch) this.#append(batch);
    });
  }

  #send(message: SpbMessage, historical = false): Promise<void> {
    this.#d.onPublish?.(message);
    // The synchronous part of publish() queues the packet, so seq order on the wire is call order.
    const sent = this.#session.publish(message.topic, message.payload, { qos: message.qos, retain: message.retain });
    return sent.then(() => {
      this.#sent.messages++;
      this.#sent.metrics += message.metrics;
      this.#sent.bytes += message.payload.length;
      if (historical) this.#sent.historical += message.metrics;
    });
  }
}
