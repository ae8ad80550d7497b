import type { z } from 'zod';

/**
 * The contract every Ward plugin implements (one shape for all protocols,
 * after fastify's encapsulated plugins and EdgeX's ProtocolDriver). A plugin
 * imports only this module and its own npm dependencies; the agent reaches it
 * only through the static list in plugins/index.ts, so the single binary can
 * bundle every plugin without dynamic loading.
 *
 * Bump PLUGIN_API_VERSION on any breaking change to these types; the host
 * refuses a plugin built for another major.
 */
export const PLUGIN_API_VERSION = 1;

export interface PluginManifest {
  /** Unique, lower-case: the name used in the agent config. */
  readonly name: string;
  readonly version: string;
  /** The PLUGIN_API_VERSION this plugin was written against. */
  readonly api: number;
  readonly description: string;
  /** Plugins that must be started before this one (and stopped after it). */
  readonly dependsOn?: readonly string[];
}

export type LogFn = (objOrMsg: object | string, msg?: string) => void;

/** The logging surface a plugin gets: a child logger already bound to its name. */
export interface PluginLogger {
  readonly error: LogFn;
  readonly warn: LogFn;
  readonly info: LogFn;
  readonly debug: LogFn;
}

export interface PluginClock {
  now(): number;
  monotonic(): number;
}

/**
 * What a plugin is given. Scoped: its own logger, its own frozen config slice
 * (already validated against its configSchema), the clock, and an abort
 * signal that fires when the agent begins to stop.
 */
export interface PluginContext<C> {
  readonly deviceId: string;
  readonly config: Readonly<C>;
  readonly log: PluginLogger;
  readonly clock: PluginClock;
  readonly signal: AbortSignal;
  /** The agent's signed audit journal. Never throws, never waits: safe on a data path. */
  readonly audit: PluginAudit;
  /**
   * A private directory for this plugin's files (keys, certificates, caches), created with mode 0700 by the host
   * before create() and kept across restarts when the agent gives a persistent one. No other plugin shares it.
   */
  readonly dataDir: string;
}

/** One audit event (the agent's AuditEventInput, restated here so plugins depend on this module alone). */
export interface PluginAuditEvent {
  readonly category: 'access-control' | 'request-error' | 'control-system' | 'configuration-change' | 'reconnaissance';
  readonly actor: string;
  readonly action: string;
  readonly target?: string;
  readonly outcome: 'success' | 'failure' | 'refused';
  readonly code?: string;
  readonly details?: Readonly<Record<string, unknown>>;
}

export interface PluginAudit {
  record(event: PluginAuditEvent): void;
}

/**
 * What a protocol plugin tells the policy checker and the segmentation
 * compiler (DESIGN.md §6). A flow names operations under the protocol's key
 * (`ops: { modbus: [read-only, "write holding 100-119"] }`); the checker asks
 * `check` about each flow's list on the controller and on the gateway alike,
 * so it must be pure and must not depend on the plugin's runtime config.
 */
export interface ProtocolDescription {
  /** The key flows use under `ops` (usually the plugin's name). */
  readonly name: string;
  /** Where the protocol usually listens (documentation and `ward enforce propose`). */
  readonly defaultPorts: readonly { readonly proto: 'tcp' | 'udp'; readonly port: number }[];
  /** The words a policy may use, each with one line for people. */
  readonly vocabulary: readonly { readonly op: string; readonly meaning: string }[];
  /** Problems with one flow's operation list (empty: fine). Messages name the offending entry. */
  check(ops: readonly string[]): string[];
}

/**
 * One steered destination: the segmentation compiler redirects matching new
 * connections to `listenPort` on the gateway, and the plugin's proxy serves
 * them against `target`. A route belongs to one ingress zone, so `sources`
 * empty means "any address arriving from that zone".
 */
export interface ProxyRoute {
  readonly listenPort: number;
  readonly target: { readonly address: string; readonly port: number };
  readonly zone: string;
  readonly grants: readonly ProxyGrant[];
}

export interface ProxyGrant {
  /** The policy flow that allows this, for audit events. */
  readonly flow: string;
  /** IPv4 CIDRs; empty = any source in the route's zone. */
  readonly sources: readonly string[];
  readonly ops: readonly string[];
  /** observe: forward everything and report what would be denied. */
  readonly mode: 'observe' | 'enforce';
}

/** The wire type a value should be published as (Sparkplug B metric types); absent: inferred from the JS value. */
export type TelemetryDataType = 'Boolean' | 'Int32' | 'Int64' | 'UInt32' | 'UInt64' | 'Float' | 'Double' | 'String';

/**
 * One reading of a machine value, as a plugin's collector produced it. The
 * telemetry publisher (Sparkplug B) maps devices to Sparkplug devices and
 * points to metrics; a 'bad' sample carries no value and says why.
 */
export interface TelemetrySample {
  /** The machine (a PLC, a CNC) as the plugin's config names it. */
  readonly device: string;
  /** The value's name on that machine. */
  readonly point: string;
  readonly value: number | boolean | string | null;
  readonly quality: 'good' | 'bad';
  /** ms since the epoch, when it was read. */
  readonly timestamp: number;
  readonly unit?: string;
  readonly error?: string;
  /**
   * The source's own type, when the protocol says (OPC UA does; Modbus points know theirs from config). Without
   * it a publisher sends numbers as Double. A 'bad' sample may carry it too, so a metric keeps its type.
   */
  readonly dataType?: TelemetryDataType;
}

/** A plugin's telemetry: listeners get every sample; the returned function unsubscribes. */
export interface TelemetrySource {
  subscribe(listener: (sample: TelemetrySample) => void): () => void;
  /** The last sample of every point, for a birth certificate or a status page. */
  latest(): readonly TelemetrySample[];
}

/**
 * The usual TelemetrySource of a plugin: it keeps the last sample of every point and hands each new one to every
 * listener; a listener that throws is logged and does not stop the others (nor the collector that emits).
 */
export class TelemetryFanout implements TelemetrySource {
  readonly #listeners = new Set<(sample: TelemetrySample) => void>();
  readonly #latest = new Map<string, TelemetrySample>();

  constructor(private readonly log: PluginLogger) {}

  emit(sample: TelemetrySample): void {
    this.#latest.set(`${sample.device}\u0000${sample.point}`, sample);
    for (const listener of this.#listeners) {
      try {
        listener(sample);
      } catch (err) {
        this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'a telemetry listener failed');
      }
    }
  }

  subscribe(listener: (sample: TelemetrySample) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  latest(): readonly TelemetrySample[] {
    return [...this.#latest.values()];
  }
}

/** The proxy side of a protocol plugin, driven by the enforcer. */
export interface ProtocolProxy {
  /**
   * Replace the route table. Called before the ruleset that redirects to
   * these ports is loaded, so every listener must be up when it resolves; a
   * port it cannot bind rejects, which fails the apply. Connections already
   * open are judged by the new grants from their next request on, and closed
   * when their route is gone.
   */
  setRoutes(routes: readonly ProxyRoute[]): Promise<void>;
}

export interface PluginInstance {
  /** Called once, in dependency order. Must resolve within the host's start timeout. */
  start?(): Promise<void>;
  /** Called once, in reverse order, even if a later plugin failed to start. Must be idempotent. */
  stop?(): Promise<void>;
  /** A small JSON-able status for `state` and diagnostics. */
  status?(): Record<string, unknown>;
  /** Protocol plugins with a `protocol` description: the inline proxy the enforcer steers flows to. */
  readonly proxy?: ProtocolProxy;
  /** Plugins that read machine values: the source the telemetry publisher subscribes to. */
  readonly telemetry?: TelemetrySource;
}

export interface PluginDefinition<C = unknown> {
  readonly manifest: PluginManifest;
  readonly configSchema: z.ZodType<C>;
  /** Set by protocol plugins (modbus, opcua, …): what flows may name under `ops`. */
  readonly protocol?: ProtocolDescription;
  create(context: PluginContext<C>): PluginInstance;
}

/** A definition whose config type is erased, for lists of heterogeneous plugins. */
// biome-ignore lint/suspicious/noExplicitAny: the host validates each config against its own schema before create()
export type AnyPluginDefinition = PluginDefinition<any>;

/** Identity function that gives a plugin module its type; validation happens at registration in the host. */
export function definePlugin<C>(definition: PluginDefinition<C>): PluginDefinition<C> {
  return definition;
}
