import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type {
  AnyPluginDefinition,
  PluginAudit,
  PluginClock,
  PluginInstance,
  PluginLogger,
  ProtocolDescription,
  ProtocolProxy,
  TelemetrySource,
} from '../../plugins/api/index.js';
import { PLUGIN_API_VERSION } from '../../plugins/api/index.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { ensurePrivateDir } from '../state/files.js';

export interface PluginSelection {
  readonly name: string;
  readonly enabled: boolean;
  readonly config: Readonly<Record<string, unknown>>;
}

export interface PluginHostOptions {
  readonly available: readonly AnyPluginDefinition[];
  readonly selected: readonly PluginSelection[];
  readonly deviceId: string;
  readonly clock: PluginClock;
  readonly logger: (pluginName: string) => PluginLogger;
  /** Where plugins' audit events go (the agent's journal); events without one are dropped. */
  readonly audit?: PluginAudit;
  readonly startTimeoutMs?: number;
  readonly stopTimeoutMs?: number;
  /**
   * Each plugin's private directory (PluginContext.dataDir), created 0700 before its create(). The agent passes
   * one under its state directory so plugin keys survive restarts; without it, each plugin gets a fresh folder
   * under the OS temp directory that stop() removes (tests, tools).
   */
  readonly dataDir?: (pluginName: string) => string;
}

interface Loaded {
  readonly name: string;
  readonly instance: PluginInstance;
  started: boolean;
}

/**
 * Loads the plugins named in config, in dependency order. Everything that can
 * be checked before running code is checked in the constructor (unknown name,
 * API major, missing or cyclic dependency, config against the plugin's
 * schema), so a bad config fails at start with one clear error. start()
 * runs each plugin's start with a timeout; if one fails, those already
 * started are stopped in reverse and the error names the plugin.
 *
 * Not re-entrant: start() and stop() are called once each by the system.
 */
export class PluginHost {
  readonly #order: { definition: AnyPluginDefinition; config: unknown }[];
  readonly #loaded: Loaded[] = [];
  readonly #abort = new AbortController();
  readonly #startTimeout: number;
  readonly #stopTimeout: number;
  /** The temporary root made when no dataDir option was given; removed by stop(). */
  #tempRoot: string | undefined;

  constructor(private readonly options: PluginHostOptions) {
    this.#startTimeout = options.startTimeoutMs ?? 10_000;
    this.#stopTimeout = options.stopTimeoutMs ?? 5_000;
    const byName = new Map<string, AnyPluginDefinition>();
    for (const def of options.available) {
      if (byName.has(def.manifest.name)) throw new TypeError(`two built-in plugins are named ${def.manifest.name}`);
      byName.set(def.manifest.name, def);
    }
    const wanted = new Map<string, { definition: AnyPluginDefinition; config: unknown }>();
    for (const sel of options.selected) {
      if (!sel.enabled) continue;
      const definition = byName.get(sel.name);
      if (definition === undefined) {
        throw new WardError(ErrorCodes.PLUGIN_UNKNOWN, `plugin '${sel.name}' is not built in (available: ${[...byName.keys()].join(', ') || 'none'})`, {
          details: { plugin: sel.name },
        });
      }
      if (definition.manifest.api !== PLUGIN_API_VERSION) {
        throw new WardError(
          ErrorCodes.PLUGIN_API_MISMATCH,
          `plugin '${sel.name}' targets plugin API ${definition.manifest.api}, this agent provides ${PLUGIN_API_VERSION}`,
          { details: { plugin: sel.name } },
        );
      }
      if (wanted.has(sel.name)) throw new WardError(ErrorCodes.PLUGIN_CONFIG_INVALID, `plugin '${sel.name}' is listed twice`);
      const parsed = definition.configSchema.safeParse(sel.config);
      if (!parsed.success) {
        const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
        throw new WardError(ErrorCodes.PLUGIN_CONFIG_INVALID, `plugin '${sel.name}' config is invalid: ${problems.join('; ')}`, {
          details: { plugin: sel.name, problems },
        });
      }
      wanted.set(sel.name, { definition, config: Object.freeze(parsed.data) });
    }
    this.#order = orderByDependencies(wanted);
  }

  /** Names in start order. */
  get names(): string[] {
    return this.#order.map((p) => p.definition.manifest.name);
  }

  /**
   * Protocol descriptions of the enabled plugins, by the key flows use under
   * `ops`: the policy checker's vocabulary on this gateway. Known before
   * start(), so a policy can be checked while plugins are still starting.
   */
  get protocols(): Record<string, ProtocolDescription> {
    const out: Record<string, ProtocolDescription> = {};
    for (const { definition } of this.#order) if (definition.protocol) out[definition.protocol.name] = definition.protocol;
    return out;
  }

  /** The started protocol plugins' proxies, by protocol key (the enforcer steers flows to them). */
  get proxies(): Record<string, ProtocolProxy> {
    const out: Record<string, ProtocolProxy> = {};
    for (const { definition } of this.#order) {
      const loaded = this.#loaded.find((l) => l.name === definition.manifest.name);
      if (definition.protocol && loaded?.started && loaded.instance.proxy) out[definition.protocol.name] = loaded.instance.proxy;
    }
    return out;
  }

  /** The started plugins' telemetry sources, by plugin name. */
  get telemetry(): Record<string, TelemetrySource> {
    const out: Record<string, TelemetrySource> = {};
    for (const l of this.#loaded) if (l.started && l.instance.telemetry) out[l.name] = l.instance.telemetry;
    return out;
  }

  async start(): Promise<void> {
    for (const { definition, config } of this.#order) {
      const name = definition.manifest.name;
      let dataDir: string;
      try {
        dataDir = await this.#dataDir(name);
      } catch (cause) {
        await this.stop();
        throw new WardError(ErrorCodes.PLUGIN_START_FAILED, `plugin '${name}' data directory: ${describeError(cause)}`, { cause, details: { plugin: name } });
      }
      const instance = definition.create({
        deviceId: this.options.deviceId,
        config: config as Readonly<Record<string, unknown>>,
        log: this.options.logger(name),
        clock: this.options.clock,
        signal: this.#abort.signal,
        audit: this.options.audit ?? { record() {} },
        dataDir,
      });
      const loaded: Loaded = { name, instance, started: false };
      this.#loaded.push(loaded);
      try {
        await withTimeout(instance.start?.() ?? Promise.resolve(), this.#startTimeout, `plugin '${name}' start`);
        loaded.started = true;
      } catch (cause) {
        await this.stop();
        if (cause instanceof WardError && cause.code === ErrorCodes.PLUGIN_TIMEOUT) throw cause;
        throw new WardError(ErrorCodes.PLUGIN_START_FAILED, `plugin '${name}' failed to start: ${describeError(cause)}`, {
          cause,
          details: { plugin: name },
        });
      }
    }
  }

  /** Stops in reverse start order; one plugin's failure does not keep the others running. Returns the failures. */
  async stop(): Promise<{ plugin: string; error: string }[]> {
    this.#abort.abort();
    const failures: { plugin: string; error: string }[] = [];
    while (this.#loaded.length > 0) {
      const loaded = this.#loaded.pop() as Loaded;
      try {
        await withTimeout(loaded.instance.stop?.() ?? Promise.resolve(), this.#stopTimeout, `plugin '${loaded.name}' stop`);
      } catch (err) {
        failures.push({ plugin: loaded.name, error: describeError(err) });
      }
    }
    if (this.#tempRoot !== undefined) {
      const root = this.#tempRoot;
      this.#tempRoot = undefined;
      await rm(root, { recursive: true, force: true }).catch(() => {});
    }
    return failures;
  }

  async #dataDir(name: string): Promise<string> {
    let dir: string;
    if (this.options.dataDir) dir = this.options.dataDir(name);
    else {
      // mkdtemp: a fresh, unpredictable 0700 folder, so another local user cannot plant files or links in it.
      this.#tempRoot ??= await mkdtemp(join(tmpdir(), 'ward-plugins-'));
      dir = join(this.#tempRoot, name);
    }
    await ensurePrivateDir(dir);
    return dir;
  }

  status(): Record<string, Record<string, unknown>> {
    const out: Record<string, Record<string, unknown>> = {};
    for (const p of this.#loaded) out[p.name] = { started: p.started, ...(p.instance.status?.() ?? {}) };
    return out;
  }
}

function orderByDependencies<T extends { definition: AnyPluginDefinition }>(wanted: Map<string, T>): T[] {
  const order: T[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, path: string[]): void => {
    const mark = state.get(name);
    if (mark === 'done') return;
    if (mark === 'visiting') {
      throw new WardError(ErrorCodes.PLUGIN_DEPENDENCY, `plugin dependency cycle: ${[...path, name].join(' -> ')}`);
    }
    const entry = wanted.get(name);
    if (entry === undefined) {
      throw new WardError(ErrorCodes.PLUGIN_DEPENDENCY, `plugin '${path.at(-1)}' depends on '${name}', which is not enabled`, {
        details: { plugin: path.at(-1), missing: name },
      });
    }
    state.set(name, 'visiting');
    for (const dep of entry.definition.manifest.dependsOn ?? []) visit(dep, [...path, name]);
    state.set(name, 'done');
    order.push(entry);
  };
  for (const name of [...wanted.keys()].sort()) visit(name, []);
  return order;
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new WardError(ErrorCodes.PLUGIN_TIMEOUT, `${what} did not finish within ${ms} ms`, { retryable: true })), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
