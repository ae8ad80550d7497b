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
}

export interface PluginInstance {
  /** Called once, in dependency order. Must resolve within the host's start timeout. */
  start?(): Promise<void>;
  /** Called once, in reverse order, even if a later plugin failed to start. Must be idempotent. */
  stop?(): Promise<void>;
  /** A small JSON-able status for `state` and diagnostics. */
  status?(): Record<string, unknown>;
}

export interface PluginDefinition<C = unknown> {
  readonly manifest: PluginManifest;
  readonly configSchema: z.ZodType<C>;
  create(context: PluginContext<C>): PluginInstance;
}

/** A definition whose config type is erased, for lists of heterogeneous plugins. */
// biome-ignore lint/suspicious/noExplicitAny: the host validates each config against its own schema before create()
export type AnyPluginDefinition = PluginDefinition<any>;

/** Identity function that gives a plugin module its type; validation happens at registration in the host. */
export function definePlugin<C>(definition: PluginDefinition<C>): PluginDefinition<C> {
  return definition;
}
