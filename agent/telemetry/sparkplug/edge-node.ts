import type { UMetric } from 'sparkplug-payload/lib/sparkplugbpayload.js';
import type { MetricPoint } from '../metric.js';
import { encodeSparkplug, toSparkplugMetric } from './codec.js';
import { type DeviceMessageType, deviceTopic, type MessageType, type NodeMessageType, nodeTopic } from './topics.js';

/** One MQTT publish the edge node wants made. Sparkplug never retains node or device messages. */
export interface SpbMessage {
  readonly type: MessageType;
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1;
  readonly retain: false;
  readonly device?: string;
  readonly seq?: number;
  readonly metrics: number;
}

export const BDSEQ_METRIC = 'bdSeq';
export const REBIRTH_METRIC = 'Node Control/Rebirth';

/**
 * The Sparkplug B 3.0 edge node's message rules, without I/O: it turns
 * metric points into the messages of one MQTT connection and keeps the
 * counters that tie them together. The publisher (publisher.ts) owns the
 * connection and decides when to call what.
 *
 * Invariants:
 * - bdSeq belongs to a connection: the NDEATH registered as that
 *   connection's Will and the NBIRTHs sent on it carry the same value
 *   (tck-id-payloads-ndeath-bdseq, tck-id-payloads-nbirth-bdseq).
 * - seq is 0 on NBIRTH and goes up by one, modulo 256, on every later
 *   message of the connection, DBIRTH and DDEATH included; NDEATH has none
 *   (tck-id-payloads-nbirth-seq, tck-id-payloads-sequence-num-incrementing).
 * - an alias is fixed for a metric for the life of the process, so births
 *   on a new connection and data buffered before it agree; births carry
 *   name and alias, data the alias only (tck-id-payloads-alias-uniqueness,
 *   tck-id-payloads-alias-birth-requirement, tck-id-payloads-alias-data-cmd-requirement).
 * - a data message only names metrics its node or device birth on this
 *   connection declared: `needsBirth` says when one is needed first.
 *
 * Not re-entrant; one instance per edge node, used from one event loop.
 */
export class EdgeNodeSession {
  readonly #group: string;
  readonly #edgeNode: string;
  readonly #now: () => number;
  #bdSeq = 0;
  #seq = -1;
  readonly #aliases = new Map<string, number>();
  #nextAlias = 1;
  /** Metric names declared by the births of this connection: '' is the node, others are devices. */
  readonly #declared = new Map<string, Set<string>>();

  constructor(options: { group: string; edgeNode: string; now: () => number }) {
    this.#group = options.group;
    this.#edgeNode = options.edgeNode;
    this.#now = options.now;
    // Validates both ids once, at construction, rather than on the first publish.
    nodeTopic(this.#group, 'NDATA', this.#edgeNode);
  }

  get bdSeq(): number {
    return this.#bdSeq;
  }

  get seq(): number {
    return this.#seq;
  }

  /** True once the node is born on the current connection. */
  get born(): boolean {
    return this.#declared.has('');
  }

  isDeviceBorn(device: string): boolean {
    return this.#declared.has(device);
  }

  get bornDevices(): string[] {
    return [...this.#declared.keys()].filter((k) => k !== '');
  }

  /**
   * A new MQTT connection is about to be opened with bdSeq `bdSeq`: returns
   * its Will, the NDEATH (tck-id-payloads-ndeath-will-message,
   * tck-id-payloads-ndeath-will-message-qos: QoS 1,
   * tck-id-payloads-ndeath-will-message-retain: not retained). Everything
   * born on the previous connection is forgotten.
   */
  beginConnection(bdSeq: number): SpbMessage {
    if (!Number.isInteger(bdSeq) || bdSeq < 0 || bdSeq > 255) throw new TypeError(`bdSeq must be 0..255, got ${bdSeq}`);
    this.#bdSeq = bdSeq;
    this.#seq = -1;
    this.#declared.clear();
    return this.nodeDeath();
  }

  /** The NDEATH of the current connection: the Will, and what is published before an intentional disconnect. */
  nodeDeath(): SpbMessage {
    const payload = encodeSparkplug({ timestamp: this.#now(), metrics: [this.#bdSeqMetric()] });
    return { type: 'NDEATH', topic: nodeTopic(this.#group, 'NDEATH', this.#edgeNode), payload, qos: 1, retain: false, metrics: 1 };
  }

  /**
   * NBIRTH: every node metric with its current value, bdSeq, and the
   * Node Control/Rebirth metric (tck-id-payloads-nbirth-rebirth-req).
   * seq restarts at 0; devices must be born again after it (a rebirth
   * re-announces everything).
   */
  nodeBirth(metrics: readonly MetricPoint[]): SpbMessage {
    this.#seq = -1;
    this.#declared.clear();
    const now = this.#now();
    const body: UMetric[] = [
      this.#bdSeqMetric(),
      { name: REBIRTH_METRIC, type: 'Boolean', value: false, timestamp: now },
      ...uniqueByName(metrics).map((m) => toSparkplugMetric(m, { form: 'birth', alias: (n) => this.#aliasFor('', n) })),
    ];
    this.#declared.set('', new Set(metrics.map((m) => m.name)));
    return this.#message('NBIRTH', undefined, body);
  }

  deviceBirth(device: string, metrics: readonly MetricPoint[]): SpbMessage {
    this.#assertBorn();
    const body = uniqueByName(metrics).map((m) => toSparkplugMetric(m, { form: 'birth', alias: (n) => this.#aliasFor(device, n) }));
    this.#declared.set(device, new Set(metrics.map((m) => m.name)));
    return this.#message('DBIRTH', device, body);
  }

  deviceDeath(device: string): SpbMessage {
    this.#assertBorn();
    this.#declared.delete(device);
    return this.#message('DDEATH', device, []);
  }

  /**
   * Which birth `points` need before they may be sent as data: none, the
   * device's (new device, or a metric its birth did not declare), or the
   * node's (a node metric not in the NBIRTH; the node is not born).
   */
  needsBirth(device: string | undefined, points: readonly MetricPoint[]): 'none' | 'device' | 'node' {
    const node = this.#declared.get('');
    if (node === undefined) return 'node';
    const declared = device === undefined ? node : this.#declared.get(device);
    if (declared === undefined) return 'device';
    for (const p of points) if (!declared.has(p.name)) return device === undefined ? 'node' : 'device';
    return 'none';
  }

  /** NDATA or DDATA. Historical points (store-and-forward replay) carry is_historical and their original timestamps. */
  data(device: string | undefined, points: readonly MetricPoint[], options: { historical?: boolean } = {}): SpbMessage {
    const need = this.needsBirth(device, points);
    if (need !== 'none') throw new TypeError(`data for ${device ?? 'the node'} needs a ${need} birth first`);
    const key = device ?? '';
    const body = points.map((m) =>
      toSparkplugMetric(m, { form: 'data', alias: (n) => this.#aliases.get(`${key}\u0000${n}`), historical: options.historical === true }),
    );
    return device === undefined ? this.#message('NDATA', undefined, body) : this.#message('DDATA', device, body);
  }

  #message(type: NodeMessageType | DeviceMessageType, device: string | undefined, metrics: UMetric[]): SpbMessage {
    this.#seq = (this.#seq + 1) % 256;
    const payload = encodeSparkplug({ timestamp: this.#now(), seq: this.#seq, metrics });
    const topic =
      device === undefined
        ? nodeTopic(this.#group, type as NodeMessageType, this.#edgeNode)
        : deviceTopic(this.#group, type as DeviceMessageType, this.#edgeNode, device);
    // Sparkplug B 3.0: NBIRTH, NDATA, DBIRTH, DDATA and DDEATH are QoS 0 and never retained (tck-id-topics-*-qos, *-retain).
    return { type, topic, payload, qos: 0, retain: false, ...(device !== undefined ? { device } : {}), seq: this.#seq, metrics: metrics.length };
  }

  #bdSeqMetric(): UMetric {
    return { name: BDSEQ_METRIC, type: 'Int64', value: this.#bdSeq, timestamp: this.#now() };
  }

  #aliasFor(device: string, name: string): number {
    const key = `${device}\u0000${name}`;
    let alias = this.#aliases.get(key);
    if (alias === undefined) {
      alias = this.#nextAlias++;
      this.#aliases.set(key, alias);
    }
    return alias;
  }

  #assertBorn(): void {
    if (!this.born) throw new TypeError('the node must be born (NBIRTH) before any device message');
  }
}

/** A birth names each metric once (the last value wins); duplicates would break alias uniqueness at the host. */
function uniqueByName(metrics: readonly MetricPoint[]): MetricPoint[] {
  const byName = new Map<string, MetricPoint>();
  for (const m of metrics) byName.set(m.name, m);
  return [...byName.values()];
}
