/**
 * One OPC UA server: its connection, session, subscription and monitored items, kept alive for as long as the
 * plugin runs. node-opcua is passed in (loaded lazily by index.ts), so importing this module costs nothing.
 *
 * Two layers of recovery, because node-opcua 2.182 repairs a broken connection well but not every failure:
 *
 *  - A broken channel of an established session is left to node-opcua (connectionStrategy with infinite retries,
 *    bounded backoff). Verified against the simulator: after a server restart it opens a new channel, finds the
 *    old session gone, creates a new one and recreates the subscription and its monitored items (after_reconnection
 *    → session_repaired → session_restored → connection_reestablished), and the items' listeners keep working.
 *    After a short network break it reactivates the same session instead, which matters on PLCs that allow only a
 *    few sessions (a rebuilt session would leave the old one holding a slot until it times out).
 *  - Everything else goes through this class's own loop, which tears the client down and builds it again with
 *    capped backoff: a server down at start, a refused or failed connect, a repair that has not succeeded within
 *    a bound (3 × reconnect.maxDelayMs + requestTimeoutMs), a subscription the server terminated, a session closed
 *    under us, a certificate problem while reconnecting, and a subscription that stays silent past three
 *    keep-alive periods although the channel looks up. Each rebuild passes the same gate: GetEndpoints on an
 *    unsecured discovery channel, posture check, endpoint selection, certificate pin, identity check.
 *
 * Consumers see gaps honestly: when the connection is lost, or the first attempt fails, once per outage
 * every point gets one 'bad' sample naming the reason; after a repair, one Read refreshes every point (a
 * reactivated session only reports changes, so unchanged values would otherwise stay 'bad').
 *
 * Not re-entrant: start() once, stop() once (idempotent). All state changes happen on the event loop's thread in
 * node-opcua's callbacks or this class's loop; `#generation` fences callbacks of a torn-down client.
 */
import { readFile } from 'node:fs/promises';
import type { OPCUACertificateManager } from 'node-opcua-certificate-manager';
import type {
  BrowseDescriptionOptions,
  ClientMonitoredItem,
  ClientSession,
  ClientSubscription,
  DataValue,
  EndpointDescription,
  OPCUAClient,
  ReferenceDescription,
  UserIdentityInfo,
} from 'node-opcua-client';
import type { PluginAudit, PluginLogger, TelemetryDataType, TelemetrySample } from '../api/index.js';
import { type BrowseSessionLike, browseBounded } from './browse.js';
import { type NodeConfig, OpcuaCodes, type ServerConfig } from './config.js';
import {
  assessEndpoints,
  certificateSha256,
  diffFindings,
  type EndpointInfo,
  type Finding,
  formatFingerprint,
  passwordInClear,
  policyName,
  type SecurityModeName,
  selectEndpoint,
  type UserTokenTypeName,
} from './posture.js';
import { TRANSPORT_LIMITS } from './transport.js';
import { type DataValueLike, mapDataValue, printable, statusName } from './values.js';

export type Ua = typeof import('node-opcua-client');

export interface ConnectionSettings {
  readonly publishingIntervalMs: number;
  readonly reconnect: { readonly initialDelayMs: number; readonly maxDelayMs: number };
  readonly requestTimeoutMs: number;
  readonly postureCheck: boolean;
  readonly postureIntervalMs: number;
}

export interface ConnectionDeps {
  readonly ua: Ua;
  /** Shared by every connection of the plugin; owned (disposed) by the plugin. */
  readonly certificateManager: OPCUACertificateManager;
  readonly settings: ConnectionSettings;
  readonly log: PluginLogger;
  readonly audit: PluginAudit;
  readonly now: () => number;
  /** Called synchronously for every sample; must not throw (the plugin wraps its listeners). */
  readonly emit: (sample: TelemetrySample) => void;
}

/** A value to monitor: a configured node, or a Variable found by browsing. */
interface Point {
  readonly name: string;
  readonly nodeId: string;
  readonly samplingIntervalMs: number;
  readonly deadband?: NodeConfig['deadband'];
  readonly unit?: string;
}

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'waiting' | 'stopped';

export interface ConnectionStatus {
  state: ConnectionState;
  endpointUrl: string;
  securityMode: string;
  securityPolicy: string;
  connectedSince: number | null;
  /** The last failure, kept after recovery for diagnostics; null if none yet. */
  lastError: string | null;
  lastErrorCode: string | null;
  /** Connection attempts that failed in a row (0 once connected). */
  failedAttempts: number;
  /** Sessions established by this class's loop, and channel repairs node-opcua completed. */
  sessions: number;
  repairs: number;
  serverCertificateSha256: string | null;
  points: number;
  badPoints: { point: string; error: string }[];
  posture: { checkedAt: number; findings: Finding[] } | null;
}

/** A failure with a stable code (OpcuaCodes); `retryable` false still retries, at the longest backoff. */
export class OpcuaError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'OpcuaError';
  }
}

/** Status names meaning "this node id is wrong" rather than "this value is bad right now". */
const INVALID_NODE = new Set(['BadNodeIdUnknown', 'BadNodeIdInvalid', 'BadAttributeIdInvalid', 'BadNodeClassInvalid']);
const FILTER_REFUSED = new Set(['BadFilterNotAllowed', 'BadMonitoredItemFilterUnsupported', 'BadDeadbandFilterInvalid', 'BadMonitoredItemFilterInvalid']);
const SECURITY_MODES: readonly SecurityModeName[] = ['Invalid', 'None', 'Sign', 'SignAndEncrypt'];
const TOKEN_TYPES: readonly UserTokenTypeName[] = ['Anonymous', 'UserName', 'Certificate', 'IssuedToken'];
/** CreateMonitoredItems requests in flight per server while subscribing. */
const MONITOR_CONCURRENCY = 8;
/** Browse bounds against a server that answers with endless trees: nodes looked at in all, references per request. */
const MAX_BROWSE_SEEN = 20_000;
const MAX_REFERENCES_PER_NODE = 1_000;
/** Browse and BrowseNext requests in one browse of the configured folder. */
const MAX_BROWSE_REQUESTS = 500;
/** Servers often hold 10 continuation points in all (and node-opcua assumes 10 when a server does not say). */
const BROWSE_NODES_PER_REQUEST = 10;
/** Requests one level of `n` nodes needs at least, for the overall timeout of that level. */
const answerRequests = (n: number): number => Math.ceil(n / BROWSE_NODES_PER_REQUEST);
/** ReferenceType HasProperty (ns=0;i=46). */
const HAS_PROPERTY = 46;

/** Error text can come from the server (a TCP ERR reason): control characters stripped, length bounded. */
const errorMessage = (err: unknown): string => printable(err instanceof Error ? err.message : String(err), 300);

/** node-opcua's EndpointDescription as posture.ts reads it. */
export function toEndpointInfo(e: EndpointDescription): EndpointInfo {
  const info: { -readonly [K in keyof EndpointInfo]: EndpointInfo[K] } = {
    endpointUrl: e.endpointUrl ?? '',
    securityMode: SECURITY_MODES[e.securityMode] ?? 'Invalid',
    securityPolicy: policyName(e.securityPolicyUri),
    userTokens: (e.userIdentityTokens ?? []).map((t) => {
      const securityPolicy = policyName(t.securityPolicyUri);
      return { type: TOKEN_TYPES[t.tokenType] ?? 'IssuedToken', ...(securityPolicy ? { securityPolicy } : {}) };
    }),
  };
  if (e.serverCertificate && e.serverCertificate.length > 0) info.serverCertificate = e.serverCertificate;
  return info;
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new OpcuaError(OpcuaCodes.CONNECT_FAILED, `${what} did not finish within ${ms} ms`, true)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

export class ServerConnection {
  readonly #server: ServerConfig;
  readonly #deps: ConnectionDeps;
  readonly #configured: readonly Point[];
  /** Configured points plus those the last browse found: the set a 'bad' sample goes to. */
  #points: Point[];
  readonly #status: ConnectionStatus;
  readonly #abort = new AbortController();
  #loop: Promise<void> | undefined;
  /** Clients that exist right now (main and discovery), so stop() can disconnect them mid-call. */
  readonly #clients = new Set<OPCUAClient>();
  /** Bumped at every teardown; callbacks of an older client compare and drop. */
  #generation = 0;
  #findings: Finding[] = [];
  #postureTimer: NodeJS.Timeout | undefined;
  #postureRunning = false;
  /** Per point: last quality, error and type, for status() and so 'bad' samples keep the point's type. */
  readonly #last = new Map<string, { quality: 'good' | 'bad'; error?: string; dataType?: TelemetryDataType }>();
  /** True from the 'bad' samples of a lost connection until the server is back. */
  #offline = false;
  /** Audits already written (node-invalid per point, untrusted cert per fingerprint): once each, not per retry. */
  readonly #audited = new Set<string>();

  constructor(server: ServerConfig, deps: ConnectionDeps) {
    this.#server = server;
    this.#deps = deps;
    this.#configured = server.nodes.map((n) => ({
      name: n.name,
      nodeId: n.nodeId,
      samplingIntervalMs: n.samplingIntervalMs,
      ...(n.deadband ? { deadband: n.deadband } : {}),
      ...(n.unit !== undefined ? { unit: n.unit } : {}),
    }));
    this.#points = [...this.#configured];
    this.#status = {
      state: 'connecting',
      endpointUrl: server.endpointUrl,
      securityMode: server.securityMode,
      securityPolicy: server.securityPolicy,
      connectedSince: null,
      lastError: null,
      lastErrorCode: null,
      failedAttempts: 0,
      sessions: 0,
      repairs: 0,
      serverCertificateSha256: null,
      points: this.#points.length,
      badPoints: [],
      posture: null,
    };
  }

  get name(): string {
    return this.#server.name;
  }

  /** Starts connecting in the background; never waits for the server. */
  start(): void {
    if (this.#loop || this.#abort.signal.aborted) return;
    this.#loop = this.#run();
    const { postureCheck, postureIntervalMs } = this.#deps.settings;
    if (postureCheck) {
      this.#postureTimer = setInterval(() => void this.#periodicPosture(), postureIntervalMs);
      this.#postureTimer.unref();
    }
  }

  /** Disconnects every client and waits for the loop to end; no sample is emitted after it resolves. */
  async stop(): Promise<void> {
    if (this.#abort.signal.aborted) return;
    this.#abort.abort();
    clearInterval(this.#postureTimer);
    this.#generation++;
    await Promise.allSettled([...this.#clients].map((c) => this.#disconnect(c)));
    // A node-opcua call that ignores the disconnect must not hold the agent's shutdown: the loop is abandoned
    // (it emits nothing more, every path checks the signal) after a bound.
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.min(this.#deps.settings.requestTimeoutMs, 3000));
    });
    await Promise.race([this.#loop, bound]);
    clearTimeout(timer);
    this.#status.state = 'stopped';
  }

  status(): ConnectionStatus {
    const badPoints: { point: string; error: string }[] = [];
    for (const [point, l] of this.#last) if (l.quality === 'bad') badPoints.push({ point, error: l.error ?? 'bad' });
    return { ...this.#status, points: this.#points.length, badPoints: badPoints.slice(0, 50), posture: this.#status.posture };
  }

  // ---------------------------------------------------------------------------------------------------------
  // The loop

  async #run(): Promise<void> {
    const { initialDelayMs, maxDelayMs } = this.#deps.settings.reconnect;
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      let failure: unknown;
      try {
        const ended = await this.#session(signal);
        if (signal.aborted) break;
        failure = new OpcuaError(OpcuaCodes.CONNECT_FAILED, ended, true);
      } catch (err) {
        failure = err;
      }
      if (signal.aborted) break;
      this.#fail(failure);
      const retryable = !(failure instanceof OpcuaError) || failure.retryable;
      const n = this.#status.failedAttempts;
      // A refusal (untrusted certificate, no matching endpoint) needs a person: retry, but at the longest interval.
      const delay = retryable ? Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(n - 1, 20)) : maxDelayMs;
      this.#status.state = 'waiting';
      await sleep(delay, signal);
    }
  }

  /** One connection, from discovery to teardown. Resolves with why it ended (the loop then rebuilds); throws if it never got up. */
  async #session(signal: AbortSignal): Promise<string> {
    const { ua, settings } = this.#deps;
    const server = this.#server;
    this.#status.state = 'connecting';
    const endpoints = await this.#discover();
    if (signal.aborted) return 'stopped';
    this.#assess(endpoints);
    const endpoint = selectEndpoint(endpoints, server.securityMode, server.securityPolicy);
    if (!endpoint) {
      const offered = [...new Set(endpoints.map((e) => `${e.securityMode}/${e.securityPolicy}`))].join(', ') || 'none';
      throw new OpcuaError(
        OpcuaCodes.NO_ENDPOINT,
        `the server offers no ${server.securityMode}/${server.securityPolicy} endpoint (it offers: ${offered})`,
        false,
      );
    }
    const serverCertificate = server.securityMode === 'None' ? undefined : this.#checkCertificate(endpoint);
    const identity = await this.#identity(endpoint);

    const generation = ++this.#generation;
    const client = ua.OPCUAClient.create({
      applicationName: 'Ward agent',
      clientName: `ward-${server.name}`,
      endpointMustExist: false,
      securityMode: ua.MessageSecurityMode[server.securityMode],
      securityPolicy: ua.SecurityPolicy[server.securityPolicy],
      ...(serverCertificate ? { serverCertificate } : {}),
      clientCertificateManager: this.#deps.certificateManager,
      // maxRetry 1: a failing first connect comes back to this loop quickly (the discovery just reached the
      // server, so one retry covers a blip); any maxRetry other than 0 also makes node-opcua repair a broken
      // channel later, and that repair always retries forever within these delays.
      connectionStrategy: { initialDelay: settings.reconnect.initialDelayMs, maxDelay: settings.reconnect.maxDelayMs, maxRetry: 1 },
      keepSessionAlive: true,
      transportSettings: { ...TRANSPORT_LIMITS },
      requestedSessionTimeout: Math.max(60_000, 3 * settings.requestTimeoutMs),
      defaultTransactionTimeout: settings.requestTimeoutMs,
      transportTimeout: settings.requestTimeoutMs,
    });
    this.#clients.add(client);
    try {
      await withTimeout(client.connect(server.endpointUrl), 3 * settings.requestTimeoutMs + settings.reconnect.maxDelayMs, 'connect');
      const session = await withTimeout(client.createSession(identity), 2 * settings.requestTimeoutMs, 'create session');
      const subscription = await withTimeout(
        session.createSubscription2({
          requestedPublishingInterval: settings.publishingIntervalMs,
          requestedMaxKeepAliveCount: 10,
          requestedLifetimeCount: 60,
          maxNotificationsPerPublish: 1000,
          publishingEnabled: true,
          priority: 10,
        }),
        2 * settings.requestTimeoutMs,
        'create subscription',
      );
      const discovered = server.browse ? await this.#browse(session) : [];
      if (signal.aborted) return 'stopped';
      this.#points = [...this.#configured, ...discovered];
      // One CreateMonitoredItems request per point (each has its own sampling interval and filter), a few in
      // flight at once: hundreds of points on a distant PLC would otherwise cost hundreds of round trips in a row.
      const queue = [...this.#points];
      const worker = async () => {
        for (let point = queue.shift(); point; point = queue.shift()) {
          if (signal.aborted || generation !== this.#generation) return;
          await this.#monitor(subscription, point, generation);
        }
      };
      await Promise.all(Array.from({ length: Math.min(MONITOR_CONCURRENCY, queue.length) }, worker));
      if (signal.aborted || generation !== this.#generation) return 'stopped';
      this.#status.state = 'connected';
      this.#status.connectedSince = this.#deps.now();
      this.#status.failedAttempts = 0;
      this.#offline = false;
      this.#status.sessions++;
      this.#deps.log.info(
        { server: server.name, endpointUrl: server.endpointUrl, securityMode: server.securityMode, points: this.#points.length },
        'OPC UA server connected',
      );
      return await this.#watch(client, session, subscription, generation, signal);
    } finally {
      this.#generation++;
      this.#status.connectedSince = null;
      await this.#disconnect(client);
    }
  }

  /** Resolves when the connection needs rebuilding (with why) or the plugin stops. */
  #watch(client: OPCUAClient, session: ClientSession, subscription: ClientSubscription, generation: number, signal: AbortSignal): Promise<string> {
    const { settings, now, log } = this.#deps;
    const server = this.#server;
    return new Promise<string>((resolve) => {
      let lastActivity = now();
      let reconnectingSince: number | undefined;
      const current = () => generation === this.#generation && !signal.aborted;
      const end = (why: string) => {
        clearInterval(check);
        signal.removeEventListener('abort', onAbort);
        resolve(why);
      };
      const onAbort = () => end('stopped');
      signal.addEventListener('abort', onAbort, { once: true });
      const alive = () => {
        lastActivity = now();
      };
      subscription.on('keepalive', alive);
      subscription.on('received_notifications', alive);
      subscription.on('terminated', () => {
        if (current() && reconnectingSince === undefined) end('the server terminated the subscription');
      });
      session.on('session_closed', (code) => {
        if (current()) end(`the session was closed (${statusName(code)})`);
      });
      client.on('connection_lost', () => {
        if (!current()) return;
        reconnectingSince = now();
        this.#status.state = 'reconnecting';
        this.#status.connectedSince = null;
        this.#setError(OpcuaCodes.CONNECT_FAILED, 'connection lost');
        log.warn({ server: server.name, endpointUrl: server.endpointUrl }, 'OPC UA connection lost; node-opcua is reconnecting');
        this.#allBad('server unreachable: connection lost');
      });
      client.on('reconnection_attempt_has_failed', (err) => {
        if (!current()) return;
        // A certificate that changed while we were away must pass this class's pin check, not node-opcua's store.
        if (/certificate/i.test(err.message)) end(`reconnection failed on the server certificate: ${err.message}`);
      });
      client.on('close', (err) => {
        if (current()) end(`the connection closed${err ? `: ${err.message}` : ''}`);
      });
      client.on('connection_reestablished', () => {
        if (!current()) return;
        reconnectingSince = undefined;
        alive();
        this.#offline = false;
        this.#status.state = 'connected';
        this.#status.connectedSince = now();
        this.#status.repairs++;
        log.info({ server: server.name }, 'OPC UA connection re-established by node-opcua');
        void this.#refresh(session, generation);
      });
      const giveUpMs = 3 * settings.reconnect.maxDelayMs + settings.requestTimeoutMs;
      const check = setInterval(
        () => {
          if (!current()) return;
          const t = now();
          if (reconnectingSince !== undefined) {
            if (t - reconnectingSince > giveUpMs) end(`node-opcua did not reconnect within ${giveUpMs} ms`);
            return;
          }
          // OPC 10000-4 §5.13.1: a silent subscription still sends a keep-alive every publishingInterval × maxKeepAliveCount.
          const keepAliveMs = Math.max(subscription.publishingInterval, 1) * Math.max(subscription.maxKeepAliveCount, 1);
          const stallMs = 3 * keepAliveMs + settings.requestTimeoutMs;
          if (t - lastActivity > stallMs) end(`no publish response or keep-alive for ${t - lastActivity} ms`);
        },
        Math.min(1000, settings.publishingIntervalMs),
      );
      check.unref();
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Gate: discovery, posture, certificate, identity

  /** GetEndpoints over an unsecured channel (always allowed, OPC 10000-4 §5.4.4), on a short-lived client. */
  async #discover(): Promise<EndpointInfo[]> {
    const { ua, settings } = this.#deps;
    const client = ua.OPCUAClient.create({
      applicationName: 'Ward agent',
      clientName: `ward-${this.#server.name}-discovery`,
      endpointMustExist: false,
      securityMode: ua.MessageSecurityMode.None,
      securityPolicy: ua.SecurityPolicy.None,
      clientCertificateManager: this.#deps.certificateManager,
      connectionStrategy: { initialDelay: 100, maxDelay: 200, maxRetry: 0 },
      transportSettings: { ...TRANSPORT_LIMITS },
      defaultTransactionTimeout: settings.requestTimeoutMs,
      transportTimeout: settings.requestTimeoutMs,
    });
    this.#clients.add(client);
    try {
      await withTimeout(client.connect(this.#server.endpointUrl), 2 * settings.requestTimeoutMs, 'connect');
      const endpoints = await withTimeout(client.getEndpoints(), settings.requestTimeoutMs, 'GetEndpoints');
      return endpoints.map(toEndpointInfo);
    } catch (err) {
      if (err instanceof OpcuaError) throw err;
      throw new OpcuaError(OpcuaCodes.CONNECT_FAILED, `cannot reach ${this.#server.endpointUrl}: ${errorMessage(err)}`, true, { cause: err });
    } finally {
      await this.#disconnect(client);
    }
  }

  async #periodicPosture(): Promise<void> {
    if (this.#postureRunning || this.#abort.signal.aborted) return;
    this.#postureRunning = true;
    try {
      this.#assess(await this.#discover());
    } catch (err) {
      this.#deps.log.debug({ server: this.#server.name, err: errorMessage(err) }, 'OPC UA posture check could not reach the server');
    } finally {
      this.#postureRunning = false;
    }
  }

  /** Records the posture; audits findings that are new (or changed severity) and those resolved, never repeats. */
  #assess(endpoints: readonly EndpointInfo[]): void {
    if (!this.#deps.settings.postureCheck) return;
    const server = this.#server;
    const findings = assessEndpoints(endpoints, this.#deps.now());
    const { added, resolved } = diffFindings(this.#findings, findings);
    this.#findings = findings;
    this.#status.posture = { checkedAt: this.#deps.now(), findings };
    for (const f of added) {
      // control-system: the finding describes a machine's own configuration, not something a party did to it.
      this.#deps.audit.record({
        category: 'control-system',
        actor: 'ward-agent',
        action: 'opcua.posture-finding',
        target: server.name,
        outcome: 'failure',
        code: OpcuaCodes.POSTURE_FINDING,
        details: { server: server.name, endpointUrl: server.endpointUrl, finding: f.id, subject: f.subject, severity: f.severity, detail: f.detail },
      });
    }
    for (const f of resolved) {
      this.#deps.audit.record({
        category: 'control-system',
        actor: 'ward-agent',
        action: 'opcua.posture-finding-resolved',
        target: server.name,
        outcome: 'success',
        code: OpcuaCodes.POSTURE_FINDING,
        details: { server: server.name, endpointUrl: server.endpointUrl, finding: f.id, subject: f.subject, severity: f.severity },
      });
    }
    if (added.length > 0) {
      this.#deps.log.warn(
        { server: server.name, findings: added.map((f) => `${f.severity}: ${f.id} (${f.subject})`) },
        'OPC UA server security posture findings',
      );
    }
  }

  /** The server certificate of the chosen endpoint, if its fingerprint is pinned; else a refusal naming it. */
  #checkCertificate(endpoint: EndpointInfo): Buffer {
    const server = this.#server;
    const der = endpoint.serverCertificate;
    if (!der) throw new OpcuaError(OpcuaCodes.UNTRUSTED_CERT, `the ${server.securityMode} endpoint has no server certificate`, false);
    let sha256: string;
    try {
      sha256 = certificateSha256(der);
    } catch (err) {
      throw new OpcuaError(OpcuaCodes.UNTRUSTED_CERT, `the server certificate does not parse: ${errorMessage(err)}`, false, { cause: err });
    }
    this.#status.serverCertificateSha256 = sha256;
    if (server.trustedServerCertificates.includes(sha256)) return Buffer.from(der);
    const message = `server certificate SHA-256 ${formatFingerprint(sha256)} is not in trustedServerCertificates: confirm it with the machine's operator, then add it to trust this server`;
    if (!this.#audited.has(`cert|${sha256}`)) {
      this.#audited.add(`cert|${sha256}`);
      this.#deps.audit.record({
        category: 'access-control',
        actor: 'ward-agent',
        action: 'opcua.untrusted-certificate',
        target: server.name,
        outcome: 'refused',
        code: OpcuaCodes.UNTRUSTED_CERT,
        details: { server: server.name, endpointUrl: server.endpointUrl, sha256, securityMode: server.securityMode, securityPolicy: server.securityPolicy },
      });
    }
    throw new OpcuaError(OpcuaCodes.UNTRUSTED_CERT, message, false);
  }

  async #identity(endpoint: EndpointInfo): Promise<UserIdentityInfo> {
    const { ua } = this.#deps;
    const server = this.#server;
    const want = server.userIdentity;
    if (want === 'anonymous') {
      if (!endpoint.userTokens.some((t) => t.type === 'Anonymous')) {
        throw new OpcuaError(OpcuaCodes.CONNECT_FAILED, 'the endpoint does not accept anonymous sessions: configure userIdentity', false);
      }
      return { type: ua.UserTokenType.Anonymous };
    }
    const token = endpoint.userTokens.find((t) => t.type === 'UserName');
    if (!token) throw new OpcuaError(OpcuaCodes.CONNECT_FAILED, 'the endpoint does not accept user names', false);
    if (passwordInClear(endpoint, token)) {
      if (!this.#audited.has('cleartext')) {
        this.#audited.add('cleartext');
        this.#deps.audit.record({
          category: 'access-control',
          actor: 'ward-agent',
          action: 'opcua.cleartext-password',
          target: server.name,
          outcome: 'refused',
          code: OpcuaCodes.CLEARTEXT_PASSWORD,
          details: { server: server.name, endpointUrl: server.endpointUrl, username: want.username },
        });
      }
      throw new OpcuaError(
        OpcuaCodes.CLEARTEXT_PASSWORD,
        `the password of "${want.username}" would cross the network unencrypted on this endpoint: use securityMode SignAndEncrypt`,
        false,
      );
    }
    let password: string;
    try {
      // Read at every attempt, so a rotated password is picked up without a restart. Never logged.
      password = (await readFile(want.passwordFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new OpcuaError(
        OpcuaCodes.CONNECT_FAILED,
        `cannot read passwordFile ${want.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`,
        false,
      );
    }
    return { type: ua.UserTokenType.UserName, userName: want.username, password };
  }

  // ---------------------------------------------------------------------------------------------------------
  // Points

  async #browse(session: ClientSession): Promise<Point[]> {
    const { ua, log } = this.#deps;
    const browse = this.#server.browse;
    if (!browse) return [];
    const taken = new Set(this.#configured.map((p) => p.name));
    const found: Point[] = [];
    const seen = new Set<string>();
    let level: { nodeId: string; path: string[] }[] = [{ nodeId: browse.from, path: [] }];
    // A field of the Browse request, not of each node: node-opcua takes it from the session (10,000 by default).
    session.requestedMaxReferencesPerNode = MAX_REFERENCES_PER_NODE;
    let requestsLeft = MAX_BROWSE_REQUESTS;
    let referencesLeft = MAX_BROWSE_SEEN;
    let truncated: string | undefined;
    for (let depth = 1; depth <= browse.maxDepth && level.length > 0 && found.length < browse.maxNodes && !truncated; depth++) {
      const answer = await withTimeout(
        browseBounded(
          session as unknown as BrowseSessionLike<BrowseDescriptionOptions, ReferenceDescription>,
          level.map((l) => ({
            nodeId: l.nodeId,
            browseDirection: ua.BrowseDirection.Forward,
            referenceTypeId: 'HierarchicalReferences',
            includeSubtypes: true,
            nodeClassMask: ua.NodeClassMask.Object | ua.NodeClassMask.Variable,
            resultMask: 63,
          })),
          { maxReferences: referencesLeft, maxRequests: requestsLeft, nodesPerRequest: BROWSE_NODES_PER_REQUEST },
        ),
        // Each request has its own timeout; this bounds the whole level.
        (answerRequests(level.length) + 1) * this.#deps.settings.requestTimeoutMs,
        'browse',
      );
      requestsLeft -= answer.requests;
      truncated = answer.truncated;
      const next: { nodeId: string; path: string[] }[] = [];
      answer.results.forEach((result, i) => {
        const from = level[i];
        if (!from || !result.status) return;
        referencesLeft -= result.references.length;
        if (!result.status.isGood() && result.references.length === 0) {
          if (depth === 1) this.#invalidNode({ name: '(browse)', nodeId: from.nodeId, samplingIntervalMs: 0 }, statusName(result.status));
          return;
        }
        for (const ref of result.references) {
          // Properties (EURange, EngineeringUnits, …) describe a variable; they are not values of the machine.
          if (ref.referenceTypeId.namespace === 0 && ref.referenceTypeId.value === HAS_PROPERTY) continue;
          // The server is untrusted: the set of nodes looked at is bounded, not only the variables taken.
          if (seen.size >= MAX_BROWSE_SEEN) break;
          const nodeId = ref.nodeId.toString();
          if (seen.has(nodeId)) continue;
          seen.add(nodeId);
          const segment = (ref.browseName.name ?? '').replace(/[^A-Za-z0-9_.-]/g, '_') || '_';
          const path = [...from.path, segment];
          if (ref.nodeClass === ua.NodeClass.Variable) {
            const name = path.join('/');
            if (taken.has(name) || found.length >= browse.maxNodes) continue;
            taken.add(name);
            found.push({ name, nodeId, samplingIntervalMs: browse.samplingIntervalMs });
          } else if (ref.nodeClass === ua.NodeClass.Object && next.length < browse.maxNodes) {
            next.push({ nodeId, path });
          }
        }
      });
      level = next;
    }
    if (truncated)
      log.warn(
        { server: this.#server.name, from: browse.from, found: found.length, why: truncated },
        'OPC UA browse stopped early: the server answers with more than Ward looks at',
      );
    else log.info({ server: this.#server.name, from: browse.from, found: found.length }, 'OPC UA browse done');
    return found;
  }

  async #monitor(subscription: ClientSubscription, point: Point, generation: number): Promise<void> {
    const { ua } = this.#deps;
    const filter = point.deadband
      ? new ua.DataChangeFilter({
          trigger: ua.DataChangeTrigger.StatusValue,
          deadbandType: point.deadband.type === 'absolute' ? ua.DeadbandType.Absolute : ua.DeadbandType.Percent,
          deadbandValue: point.deadband.value,
        })
      : undefined;
    let item: ClientMonitoredItem;
    try {
      item = ua.ClientMonitoredItem.create(
        subscription,
        { nodeId: point.nodeId, attributeId: ua.AttributeIds.Value },
        // queueSize 1 + discardOldest: telemetry wants the latest value, not a backlog after a slow publish.
        { samplingInterval: point.samplingIntervalMs, queueSize: 1, discardOldest: true, ...(filter ? { filter } : {}) },
        ua.TimestampsToReturn.Both,
      );
    } catch (err) {
      // The node id is parsed here, before anything is sent: a throw means the id itself is unusable.
      this.#deps.log.debug({ server: this.#server.name, point: point.name, err: errorMessage(err) }, 'OPC UA node id does not parse');
      this.#invalidNode(point, 'BadNodeIdInvalid');
      return;
    }
    // Listening before the item is created, not after: node-opcua hands the notifications that beat the create
    // response to the item in a setImmediate, which runs before an awaited subscription.monitor() resumes. The
    // initial value lost there is not sent again until the value changes, and an alarm flag may not change for
    // weeks (seen under load: Alarm/Active never reported).
    item.on('changed', (dv: DataValue) => {
      // Monitored items survive node-opcua's repairs, so the generation of the session's setup stays current
      // until this class tears the client down.
      if (generation === this.#generation && !this.#abort.signal.aborted) this.#emitValue(point, dv);
    });
    const created = await withTimeout(
      new Promise<string | undefined>((resolve) => {
        item.once('initialized', () => resolve(undefined));
        item.once('err', (message: string) => resolve(message));
      }),
      2 * this.#deps.settings.requestTimeoutMs,
      `monitor ${point.nodeId}`,
    );
    const status = statusName(item.statusCode);
    if (created !== undefined && item.statusCode.value === ua.StatusCodes.BadDataUnavailable.value) {
      // Still the status node-opcua starts with: the request failed, not the node (a transport error).
      throw new OpcuaError(OpcuaCodes.CONNECT_FAILED, `monitor ${point.nodeId}: ${printable(created, 300)}`, true);
    }
    if (!item.statusCode.isGood()) {
      if (INVALID_NODE.has(status)) this.#invalidNode(point, status);
      else if (FILTER_REFUSED.has(status)) this.#emitBad(point, `the server refused the deadband (${status})`);
      else this.#emitBad(point, status);
    }
  }

  /** After node-opcua repaired the connection: one Read so points marked bad during the gap get their values. */
  async #refresh(session: ClientSession, generation: number): Promise<void> {
    const { ua, settings } = this.#deps;
    const points = this.#points.filter((p) => this.#last.get(p.name)?.quality === 'bad' && !this.#audited.has(`node|${p.name}`));
    if (points.length === 0) return;
    try {
      const values = await withTimeout(
        session.read(points.map((p) => ({ nodeId: p.nodeId, attributeId: ua.AttributeIds.Value }))),
        settings.requestTimeoutMs,
        'read after reconnection',
      );
      if (generation !== this.#generation || this.#abort.signal.aborted) return;
      values.forEach((dv, i) => {
        const p = points[i];
        if (p) this.#emitValue(p, dv);
      });
    } catch (err) {
      this.#deps.log.debug({ server: this.#server.name, err: errorMessage(err) }, 'OPC UA refresh read failed; values arrive with the next change');
    }
  }

  #invalidNode(point: Point, status: string): void {
    const server = this.#server;
    const message = `${status}: node ${point.nodeId} is not a readable variable on ${server.name} (check the node id)`;
    this.#emitBad(point, message);
    if (this.#audited.has(`node|${point.name}`)) return;
    this.#audited.add(`node|${point.name}`);
    this.#deps.log.warn({ server: server.name, point: point.name, nodeId: point.nodeId, status }, 'OPC UA node id refused by the server');
    this.#deps.audit.record({
      category: 'request-error',
      actor: 'ward-agent',
      action: 'opcua.node-invalid',
      target: `${server.name}/${point.name}`,
      outcome: 'failure',
      code: OpcuaCodes.NODE_INVALID,
      details: { server: server.name, endpointUrl: server.endpointUrl, point: point.name, nodeId: point.nodeId, status },
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Samples

  #emitValue(point: Point, dv: DataValueLike): void {
    const m = mapDataValue(dv, this.#deps.now());
    const dataType = m.dataType ?? this.#last.get(point.name)?.dataType;
    this.#record(point, m.quality, m.error, dataType);
    this.#deps.emit({
      device: this.#server.name,
      point: point.name,
      value: m.value,
      quality: m.quality,
      timestamp: m.timestamp,
      ...(point.unit !== undefined ? { unit: point.unit } : {}),
      ...(m.error !== undefined ? { error: m.error } : {}),
      ...(dataType !== undefined ? { dataType } : {}),
    });
  }

  #emitBad(point: Point, error: string): void {
    const dataType = this.#last.get(point.name)?.dataType;
    this.#record(point, 'bad', error, dataType);
    this.#deps.emit({
      device: this.#server.name,
      point: point.name,
      value: null,
      quality: 'bad',
      timestamp: this.#deps.now(),
      error,
      ...(point.unit !== undefined ? { unit: point.unit } : {}),
      ...(dataType !== undefined ? { dataType } : {}),
    });
  }

  #record(point: Point, quality: 'good' | 'bad', error: string | undefined, dataType: TelemetryDataType | undefined): void {
    this.#last.set(point.name, { quality, ...(error !== undefined ? { error } : {}), ...(dataType !== undefined ? { dataType } : {}) });
  }

  /**
   * One 'bad' sample for every point when the server goes out of reach; nothing more until it is back (later
   * reasons go to status, not to a burst of samples per retry). Points refused as invalid keep their own error.
   */
  #allBad(error: string): void {
    if (this.#abort.signal.aborted || this.#offline) return;
    this.#offline = true;
    for (const p of this.#points) if (!this.#audited.has(`node|${p.name}`)) this.#emitBad(p, error);
  }

  #setError(code: string, message: string): void {
    this.#status.lastError = message;
    this.#status.lastErrorCode = code;
  }

  #fail(err: unknown): void {
    const code = err instanceof OpcuaError ? err.code : OpcuaCodes.CONNECT_FAILED;
    const message = errorMessage(err);
    const changed = message !== this.#status.lastError;
    this.#status.failedAttempts++;
    this.#setError(code, message);
    // Logged when the reason changes, not at every retry of a server that stays down.
    if (changed) this.#deps.log.warn({ server: this.#server.name, endpointUrl: this.#server.endpointUrl, code, err: message }, 'OPC UA server not connected');
    const refused = err instanceof OpcuaError && err.code !== OpcuaCodes.CONNECT_FAILED;
    this.#allBad(refused ? `not connected: ${message}` : `server unreachable: ${message}`);
  }

  async #disconnect(client: OPCUAClient): Promise<void> {
    if (!this.#clients.delete(client)) return;
    try {
      // Bounded well inside the host's stop timeout: a silent server must not hold up the agent's stop.
      await withTimeout(client.disconnect(), Math.min(this.#deps.settings.requestTimeoutMs, 3_000), 'disconnect');
    } catch (err) {
      this.#deps.log.debug({ server: this.#server.name, err: errorMessage(err) }, 'OPC UA disconnect did not finish cleanly');
    }
  }
}
