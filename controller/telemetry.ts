import type { AuditEventInput, AuditSink } from '../agent/core/audit.js';
import type { Clock } from '../agent/core/clock.js';
import { describeError, ErrorCodes } from '../agent/core/errors.js';
import { type CommandMetric, decodeSparkplug, encodeSparkplug } from '../agent/telemetry/sparkplug/codec.js';
import { REBIRTH_METRIC } from '../agent/telemetry/sparkplug/edge-node.js';
import { nodeTopic, parseSparkplugTopic, SPB_NAMESPACE, stateTopic } from '../agent/telemetry/sparkplug/topics.js';
import { type AcceptOutcome, type AlarmChange, type AlarmRule, type AlarmState, HealthAlarms } from './health-rules.js';

/**
 * The controller as a Sparkplug B host application (issue 8): it ingests
 * every edge node's births, data and deaths into a small in-memory
 * time-series view per gateway (last value and recent history of each
 * metric, in the API), evaluates alarm rules on gateway health, and hands
 * the `degrade` alarms to the trust decision.
 *
 * Host rules followed (Sparkplug B 3.0):
 * - as the primary host it publishes `spBv1.0/STATE/<hostId>` {online:true}
 *   retained at QoS 1 on connect, with the offline STATE as its Will
 *   carrying the same timestamp (tck-id-host-topic-phid-birth-*, -death-*);
 * - aliases are learnt from births and resolved in data;
 * - an edge node's NDEATH counts only when its bdSeq matches the current
 *   NBIRTH's (a late Will of an earlier connection is ignored);
 * - data from a node it has no birth for, a seq gap, or an unknown alias
 *   → an NCMD `Node Control/Rebirth` (rate-limited per node), since the
 *   view can no longer be trusted to be complete.
 * Historical metrics go into the history in timestamp order; they never
 * replace a newer last value.
 *
 * State is in memory: a restarted controller asks each node for a rebirth
 * on its first data, which rebuilds the view.
 */
/**
 * What one gateway may make the controller hold (a compromised gateway can publish anything under its own node
 * id). Past a limit the excess is dropped, audited (throttled) and counted; nothing grows without bound.
 */
export const HOST_LIMITS = {
  payloadBytes: 1024 * 1024,
  devicesPerNode: 256,
  metricsPerDevice: 4096,
  nameLength: 256,
  /** Strings longer than this are kept truncated (history × metrics × this is the worst case per gateway). */
  stringValue: 1024,
} as const;

/** At most one audit event per node and kind in this window; the rest are counted into the next one. */
const AUDIT_WINDOW_MS = 60_000;

export interface TelemetryHostConfig {
  readonly hostId: string;
  /** Publish STATE as the primary host application (edge nodes wait for it before their births). */
  readonly primaryHost: boolean;
  /** Points of history kept per metric. */
  readonly historyPoints: number;
  readonly rebirthMinIntervalSeconds: number;
  readonly alarms: readonly AlarmRule[];
}

export interface MetricView {
  readonly type: string;
  readonly value: unknown;
  readonly timestamp: number;
  readonly quality: 'good' | 'bad';
  readonly unit?: string;
}

export interface HistoryPoint {
  readonly t: number;
  readonly v: unknown;
  readonly q?: 'bad';
  readonly h?: true;
}

interface SeriesState {
  last: MetricView;
  readonly history: HistoryPoint[];
}

interface DeviceState {
  online: boolean;
  /** Series outlive births (history survives a reconnect); bounded by HOST_LIMITS.metricsPerDevice. */
  readonly metrics: Map<string, SeriesState>;
  /** What the current birth declared: data may only name these. */
  readonly declared: Set<string>;
  bornAt: number;
}

interface NodeState {
  readonly edgeNode: string;
  group: string;
  online: boolean;
  bdSeq: number | undefined;
  lastSeq: number | undefined;
  births: number;
  bornAt: number | undefined;
  diedAt: number | undefined;
  lastMessageAt: number;
  seqGaps: number;
  historicalPoints: number;
  rebirthRequests: number;
  lastRebirthRequestAt: number;
  readonly aliases: Map<number, { device: string | null; name: string }>;
  limited: number;
  readonly node: DeviceState;
  readonly devices: Map<string, DeviceState>;
  readonly alarms: HealthAlarms;
}

export interface TelemetryHostDeps {
  readonly config: TelemetryHostConfig;
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }) => Promise<void>;
  readonly audit: AuditSink;
  readonly clock: Clock;
  readonly log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; debug(o: object, m?: string): void };
  /** Told when a gateway's `degrade` alarms change (attestation.setHealth). Gateways are edge nodes named by device id. */
  readonly onHealth?: (edgeNode: string, degradeAlarms: string[]) => void;
  /** Whether the session is up (a replica re-asserts its online STATE only while it is). */
  readonly isConnected?: () => boolean;
}

export class TelemetryHost {
  readonly #d: TelemetryHostDeps;
  readonly #nodes = new Map<string, NodeState>();
  #stateTimestamp = 0;
  #stopping = false;
  readonly #auditWindows = new Map<string, { until: number; suppressed: number }>();
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: TelemetryHostDeps) {
    this.#d = deps;
  }

  /** The Sparkplug subscription the controller's session needs. */
  static readonly FILTER = `${SPB_NAMESPACE}/#`;

  start(): void {
    this.#timer = setInterval(() => this.tick(), 5_000);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** The Will for the controller's MQTT session: offline STATE, with the timestamp its online STATE will repeat. */
  prepareWill(): { topic: string; payload: Buffer; qos: 1; retain: true } | undefined {
    if (!this.#d.config.primaryHost) return undefined;
    this.#stateTimestamp = this.#d.clock.now();
    return {
      topic: stateTopic(this.#d.config.hostId),
      payload: Buffer.from(JSON.stringify({ online: false, timestamp: this.#stateTimestamp })),
      qos: 1,
      retain: true,
    };
  }

  /** On every connect, after the subscriptions are in place (tck-id-host-topic-phid-birth-sub-required). */
  async connected(): Promise<void> {
    if (!this.#d.config.primaryHost) return;
    await this.#d.publish(
      stateTopic(this.#d.config.hostId),
      Buffer.from(JSON.stringify({ online: true, timestamp: this.#stateTimestamp || this.#d.clock.now() })),
      {
        qos: 1,
        retain: true,
      },
    );
  }

  /** Publishes offline STATE before a clean disconnect (a clean DISCONNECT discards the Will). */
  async disconnecting(): Promise<void> {
    this.#stopping = true;
    if (!this.#d.config.primaryHost) return;
    await this.#d.publish(
      stateTopic(this.#d.config.hostId),
      Buffer.from(JSON.stringify({ online: false, timestamp: this.#stateTimestamp || this.#d.clock.now() })),
      {
        qos: 1,
        retain: true,
      },
    );
  }

  handle(topic: string, payload: Buffer): void {
    const t = parseSparkplugTopic(topic);
    if (t === undefined) return;
    if (t.kind === 'state') {
      this.#ownState(t.hostId, payload);
      return;
    }
    if (t.type === 'NCMD' || t.type === 'DCMD') return;
    const refuse = (message: string) => {
      this.#auditThrottled(`${t.edgeNode}\u0000malformed`, {
        category: 'request-error',
        actor: t.edgeNode,
        action: 'sparkplug.malformed',
        target: topic,
        outcome: 'refused',
        code: ErrorCodes.SPARKPLUG_BAD_MESSAGE,
        details: { bytes: payload.length, message: message.slice(0, 300) },
      });
    };
    // Checked before decoding: decoding a huge payload blocks the event loop the broker and the API share.
    if (payload.length > HOST_LIMITS.payloadBytes) {
      refuse(`payload of ${payload.length} bytes is over the ${HOST_LIMITS.payloadBytes}-byte limit`);
      return;
    }
    let decoded: ReturnType<typeof decodeSparkplug>;
    try {
      decoded = decodeSparkplug(payload);
    } catch (err) {
      this.#d.log.debug({ topic, err: describeError(err) }, 'malformed Sparkplug payload');
      refuse(describeError(err));
      return;
    }
    const now = this.#d.clock.now();
    const node = this.#node(t.edgeNode, t.group);
    node.lastMessageAt = now;
    switch (t.type) {
      case 'NBIRTH':
        this.#nodeBirth(node, decoded, now);
        return;
      case 'NDEATH':
        this.#nodeDeath(node, decoded, now);
        return;
      case 'DBIRTH':
      case 'DDATA':
      case 'DDEATH':
      case 'NDATA':
        break;
    }
    if (!node.online || node.bdSeq === undefined) {
      this.#requestRebirth(node, `${t.type} without a birth`);
      return;
    }
    if (!this.#checkSeq(node, decoded.seq, t.type)) return;
    if (t.kind === 'node') {
      this.#data(node, null, decoded.metrics, now);
      return;
    }
    const device = t.device;
    if (t.type === 'DBIRTH') {
      if (!node.devices.has(device) && node.devices.size >= HOST_LIMITS.devicesPerNode) {
        this.#limited(node, `more than ${HOST_LIMITS.devicesPerNode} devices: ${device} ignored`);
        return;
      }
      const d: DeviceState = node.devices.get(device) ?? { online: true, metrics: new Map(), declared: new Set(), bornAt: now };
      d.online = true;
      d.bornAt = now;
      d.declared.clear();
      node.devices.set(device, d);
      this.#data(node, device, decoded.metrics, now, true);
      return;
    }
    const d = node.devices.get(device);
    if (t.type === 'DDEATH') {
      if (d) d.online = false;
      return;
    }
    if (d === undefined || !d.online) {
      this.#requestRebirth(node, `DDATA for ${device} without its DBIRTH`);
      return;
    }
    this.#data(node, device, decoded.metrics, now);
  }

  /** Raises alarms whose `forSeconds` elapsed without a new value. */
  tick(): void {
    const now = this.#d.clock.now();
    for (const node of this.#nodes.values()) this.#alarmChanges(node, node.alarms.tick(now));
  }

  /** The view of one gateway, for the API. */
  view(edgeNode: string): Record<string, unknown> | undefined {
    const n = this.#nodes.get(edgeNode);
    if (n === undefined) return undefined;
    const metrics = (d: DeviceState) => Object.fromEntries([...d.metrics].map(([name, s]) => [name, s.last]));
    return {
      edgeNode: n.edgeNode,
      group: n.group,
      online: n.online,
      bdSeq: n.bdSeq ?? null,
      seq: n.lastSeq ?? null,
      births: n.births,
      bornAt: n.bornAt ?? null,
      diedAt: n.diedAt ?? null,
      lastMessageAt: n.lastMessageAt,
      seqGaps: n.seqGaps,
      limited: n.limited,
      historicalPoints: n.historicalPoints,
      rebirthRequests: n.rebirthRequests,
      metrics: metrics(n.node),
      devices: Object.fromEntries([...n.devices].map(([name, d]) => [name, { online: d.online && n.online, bornAt: d.bornAt, metrics: metrics(d) }])),
      alarms: n.alarms.active(),
    };
  }

  /** Recent history of one metric (oldest first). */
  history(edgeNode: string, metric: string, device: string | null): HistoryPoint[] | undefined {
    const n = this.#nodes.get(edgeNode);
    const d = device === null ? n?.node : n?.devices.get(device);
    return d?.metrics.get(metric)?.history.slice();
  }

  /**
   * An operator accepts a raised `changed` alarm's value as the gateway's new
   * baseline (see HealthAlarms.accept). Audited with who accepted what; the
   * outcome says why nothing was accepted.
   */
  acceptAlarm(
    edgeNode: string,
    target: { rule: string; metric: string; device: string | null; value?: unknown },
    actor: string,
  ): AcceptOutcome | { ok: false; reason: 'unknown-node' } {
    const node = this.#nodes.get(edgeNode);
    if (node === undefined) return { ok: false, reason: 'unknown-node' };
    const outcome = node.alarms.accept(target.device, target.metric, target.rule, target.value);
    if (!outcome.ok) return outcome;
    const { alarm } = outcome;
    this.#d.log.warn({ edgeNode, rule: alarm.rule, metric: alarm.metric, device: alarm.device, actor }, 'health alarm accepted as the new baseline');
    this.#d.audit.record({
      category: 'control-system',
      actor,
      action: 'telemetry.alarm-accepted',
      target: edgeNode,
      outcome: 'success',
      details: { rule: alarm.rule, metric: alarm.metric, device: alarm.device, action: alarm.action, baseline: alarm.value, raisedAt: alarm.since },
    });
    if (alarm.action === 'degrade') this.#reportHealth(node);
    return outcome;
  }

  alarms(edgeNode: string): AlarmState[] {
    return this.#nodes.get(edgeNode)?.alarms.active() ?? [];
  }

  #node(edgeNode: string, group: string): NodeState {
    let n = this.#nodes.get(edgeNode);
    if (n === undefined) {
      n = {
        edgeNode,
        group,
        online: false,
        bdSeq: undefined,
        lastSeq: undefined,
        births: 0,
        bornAt: undefined,
        diedAt: undefined,
        lastMessageAt: 0,
        seqGaps: 0,
        historicalPoints: 0,
        rebirthRequests: 0,
        lastRebirthRequestAt: Number.NEGATIVE_INFINITY,
        aliases: new Map(),
        limited: 0,
        node: { online: false, metrics: new Map(), declared: new Set(), bornAt: 0 },
        devices: new Map(),
        alarms: new HealthAlarms(this.#d.config.alarms),
      };
      this.#nodes.set(edgeNode, n);
    }
    n.group = group;
    return n;
  }

  #nodeBirth(node: NodeState, p: ReturnType<typeof decodeSparkplug>, now: number): void {
    const bdSeq = p.metrics.find((m) => m.name === 'bdSeq')?.value;
    node.online = true;
    node.bdSeq = typeof bdSeq === 'number' ? bdSeq : undefined;
    node.lastSeq = p.seq;
    node.births++;
    node.bornAt = now;
    node.aliases.clear();
    // A rebirth re-announces every device; those that do not come back are not online.
    for (const d of node.devices.values()) d.online = false;
    node.node.declared.clear();
    this.#data(
      node,
      null,
      p.metrics.filter((m) => m.name !== 'bdSeq' && m.name !== REBIRTH_METRIC),
      now,
      true,
    );
    this.#d.log.info({ edgeNode: node.edgeNode, bdSeq: node.bdSeq, metrics: p.metrics.length }, 'sparkplug NBIRTH');
  }

  #nodeDeath(node: NodeState, p: ReturnType<typeof decodeSparkplug>, now: number): void {
    const bdSeq = p.metrics.find((m) => m.name === 'bdSeq')?.value;
    // tck-id-operational-behavior-edge-node-... the host honours an NDEATH only for the session of the NBIRTH it has.
    if (node.bdSeq !== undefined && bdSeq !== node.bdSeq) {
      this.#d.log.debug({ edgeNode: node.edgeNode, bdSeq, current: node.bdSeq }, 'stale NDEATH ignored');
      return;
    }
    node.online = false;
    node.diedAt = now;
    // Alarms stay raised: an offline gateway is not a healthy one (a `degrade` alarm lifted by a dropped connection
    // would let a flapping link, or anyone able to drop it, undo the degrade). They clear on a good value.
    this.#d.log.info({ edgeNode: node.edgeNode, bdSeq }, 'sparkplug NDEATH');
  }

  #checkSeq(node: NodeState, seq: number | undefined, type: string): boolean {
    if (seq === undefined || !Number.isInteger(seq) || seq < 0 || seq > 255) {
      this.#requestRebirth(node, `${type} without a valid seq`);
      return false;
    }
    const expected = node.lastSeq === undefined ? undefined : (node.lastSeq + 1) % 256;
    node.lastSeq = seq;
    if (expected !== undefined && seq !== expected) {
      node.seqGaps++;
      this.#d.log.warn({ edgeNode: node.edgeNode, expected, got: seq, type }, 'sparkplug seq gap: messages lost; asking for a rebirth');
      this.#requestRebirth(node, `seq gap: expected ${expected}, got ${seq}`);
    }
    return true;
  }

  /** Births declare (and bound) the metrics; data may only update metrics its birth declared. */
  #data(node: NodeState, device: string | null, metrics: readonly CommandMetric[], now: number, birth = false): void {
    const target = device === null ? node.node : node.devices.get(device);
    if (target === undefined) return;
    const changes: AlarmChange[] = [];
    for (const m of metrics) {
      const name = m.name ?? (m.alias !== undefined ? node.aliases.get(m.alias)?.name : undefined);
      if (name === undefined) {
        this.#requestRebirth(node, `unknown alias ${m.alias}`);
        continue;
      }
      if (!birth && !target.declared.has(name)) {
        this.#requestRebirth(node, `metric ${name.slice(0, 64)} not declared in the birth`);
        continue;
      }
      let s = target.metrics.get(name);
      if (s === undefined && (name.length > HOST_LIMITS.nameLength || target.metrics.size >= HOST_LIMITS.metricsPerDevice)) {
        this.#limited(node, `metric ${name.slice(0, 64)} refused (name over ${HOST_LIMITS.nameLength} or over ${HOST_LIMITS.metricsPerDevice} metrics)`);
        continue;
      }
      if (birth) {
        target.declared.add(name);
        if (m.alias !== undefined) node.aliases.set(m.alias, { device, name });
      }
      const value = bounded(m.value);
      const ts = m.timestamp ?? now;
      const view: MetricView = {
        type: m.type,
        value,
        timestamp: ts,
        quality: m.quality,
        ...(m.unit !== undefined ? { unit: m.unit } : s?.last.unit !== undefined ? { unit: s.last.unit } : {}),
      };
      if (s === undefined) {
        s = { last: view, history: [] };
        target.metrics.set(name, s);
      } else if (!m.historical || ts >= s.last.timestamp) {
        s.last = view;
      }
      insertHistory(
        s.history,
        { t: ts, v: value, ...(m.quality === 'bad' ? { q: 'bad' as const } : {}), ...(m.historical ? { h: true as const } : {}) },
        this.#d.config.historyPoints,
      );
      if (m.historical) node.historicalPoints++;
      else changes.push(...node.alarms.observe(device, name, value, m.quality, now));
    }
    this.#alarmChanges(node, changes);
  }

  #alarmChanges(node: NodeState, changes: readonly AlarmChange[]): void {
    if (changes.length === 0) return;
    for (const c of changes) {
      this.#d.log.warn({ edgeNode: node.edgeNode, ...c.alarm, kind: c.kind }, `health alarm ${c.kind}`);
      // Throttled per rule and metric: a value flapping across a threshold is one event a minute with a count.
      this.#auditThrottled(`${node.edgeNode}\u0000${c.alarm.rule}\u0000${c.alarm.device ?? ''}\u0000${c.alarm.metric}\u0000${c.kind}`, {
        category: 'control-system',
        actor: 'controller',
        action: c.kind === 'raised' ? 'telemetry.alarm-raised' : 'telemetry.alarm-cleared',
        target: node.edgeNode,
        outcome: c.kind === 'raised' ? 'failure' : 'success',
        details: { rule: c.alarm.rule, metric: c.alarm.metric, device: c.alarm.device, action: c.alarm.action, value: c.alarm.value, message: c.alarm.message },
      });
    }
    if (changes.some((c) => c.alarm.action === 'degrade')) this.#reportHealth(node);
  }

  #reportHealth(node: NodeState): void {
    const degrade = node.alarms
      .active()
      .filter((a) => a.action === 'degrade')
      .map((a) => a.message)
      .slice(0, 64);
    this.#d.onHealth?.(node.edgeNode, degrade);
  }

  #limited(node: NodeState, message: string): void {
    node.limited++;
    this.#auditThrottled(`${node.edgeNode}\u0000limit`, {
      category: 'request-error',
      actor: node.edgeNode,
      action: 'sparkplug.limit',
      target: node.edgeNode,
      outcome: 'refused',
      code: ErrorCodes.SPARKPLUG_BAD_MESSAGE,
      details: { message },
    });
  }

  /** The first event of a key in a window is recorded; later ones are counted into the first after the window. */
  #auditThrottled(key: string, event: AuditEventInput): void {
    const now = this.#d.clock.now();
    const w = this.#auditWindows.get(key);
    if (w !== undefined && now < w.until) {
      w.suppressed++;
      return;
    }
    const suppressed = w?.suppressed ?? 0;
    if (this.#auditWindows.size > 10_000) this.#auditWindows.clear();
    this.#auditWindows.set(key, { until: now + AUDIT_WINDOW_MS, suppressed: 0 });
    this.#d.audit.record(suppressed > 0 ? { ...event, details: { ...event.details, suppressedBefore: suppressed } } : event);
  }

  /**
   * Our own STATE seen offline while this replica is connected: another replica of the same host id went away and
   * its Will said so. Say online again (with a newer timestamp), or every gateway would wait for a host that is here.
   */
  #ownState(hostId: string, payload: Buffer): void {
    if (!this.#d.config.primaryHost || hostId !== this.#d.config.hostId || this.#stopping || !(this.#d.isConnected?.() ?? false)) return;
    let online: unknown;
    try {
      online = (JSON.parse(payload.toString('utf8')) as { online?: unknown }).online;
    } catch {
      return;
    }
    if (online !== false) return;
    this.#stateTimestamp = Math.max(this.#stateTimestamp + 1, this.#d.clock.now());
    void this.connected().catch((err) => this.#d.log.warn({ err: describeError(err) }, 'Sparkplug STATE not re-published'));
  }

  #requestRebirth(node: NodeState, reason: string): void {
    const now = this.#d.clock.now();
    if (now - node.lastRebirthRequestAt < this.#d.config.rebirthMinIntervalSeconds * 1000) return;
    node.lastRebirthRequestAt = now;
    node.rebirthRequests++;
    this.#d.log.info({ edgeNode: node.edgeNode, reason }, 'asking the edge node for a rebirth');
    // NCMD: QoS 0, not retained (tck-id-topics-ncmd-qos, -retain); the rebirth metric never carries an alias.
    const payload = encodeSparkplug({ timestamp: now, metrics: [{ name: REBIRTH_METRIC, type: 'Boolean', value: true, timestamp: now }] });
    this.#d.publish(nodeTopic(node.group, 'NCMD', node.edgeNode), payload, { qos: 0 }).catch((err) => {
      this.#d.log.warn({ edgeNode: node.edgeNode, err: describeError(err) }, 'rebirth request not sent');
    });
  }
}

/** Keeps history sorted by time (historical replays arrive late) and bounded (oldest dropped). */
function insertHistory(history: HistoryPoint[], point: HistoryPoint, max: number): void {
  let i = history.length;
  while (i > 0 && (history[i - 1] as HistoryPoint).t > point.t) i--;
  history.splice(i, 0, point);
  if (history.length > max) history.splice(0, history.length - max);
}

/** Keeps what a gateway sends from growing the controller without bound (HOST_LIMITS.stringValue). */
function bounded(value: unknown): unknown {
  if (typeof value === 'string' && value.length > HOST_LIMITS.stringValue) return `${value.slice(0, HOST_LIMITS.stringValue)}…`;
  if (value instanceof Uint8Array) return { bytes: value.length };
  return value;
}
