import net from 'node:net';
import type { PluginAudit, PluginLogger, ProtocolProxy, ProxyRoute } from '../api/index.js';
import { AuditAggregator } from './audit.js';
import { AduFramer, accessOf, type ExceptionCode, encodeException, type FrameError, type Mbap, parseRequest, parseResponse, type Request } from './frame.js';
import { compileOps, judgeRequest, type ModbusRules, type Verdict } from './rules.js';

/**
 * The inline Modbus/TCP proxy (DESIGN.md §6). nftables redirects a flow's new
 * connections to one listen port per (ingress zone, PLC, port); the proxy
 * terminates the client's TCP connection, judges every request against the
 * flows that allow this client, and:
 * - forwards an allowed request to the PLC on its own connection (opened at the
 *   first forwarded request, so a client that is only ever denied never
 *   reaches the PLC), under a transaction id of its own, and returns the PLC's
 *   answer under the client's id once it has checked it against the request;
 * - answers a denied one itself with the Modbus exception rules.ts names,
 *   without contacting the PLC (observe mode: forwards it and reports);
 * - closes the connection on a malformed frame: Modbus/TCP has no delimiter to
 *   resynchronise on, and nothing invalid is ever forwarded.
 * Answers go back in request order (a pipelining client sees what a PLC
 * would), at most `maxInFlight` requests per client wait at once (the rest of
 * the stream waits in the socket: backpressure both ways), and a client that
 * stays quiet for `idleTimeoutMs` is closed.
 */
export interface ModbusProxyOptions {
  readonly log: PluginLogger;
  readonly audit: PluginAudit;
  readonly now: () => number;
  /** Address the listeners bind (the redirect target is the ingress interface's address). */
  readonly host?: string;
  readonly connectTimeoutMs?: number;
  readonly responseTimeoutMs?: number;
  readonly idleTimeoutMs?: number;
  readonly maxInFlight?: number;
  readonly maxConnections?: number;
  readonly maxConnectionsPerClient?: number;
  readonly auditWindowMs?: number;
}

type Code = (typeof ExceptionCode)[keyof typeof ExceptionCode];

interface Grant {
  readonly flow: string;
  readonly sources: readonly { base: number; last: number }[];
  readonly rules: ModbusRules | undefined;
  readonly mode: 'observe' | 'enforce';
}

interface RouteState {
  route: ProxyRoute;
  grants: readonly Grant[];
  readonly server: net.Server;
  readonly sessions: Set<Session>;
  /** Token buckets per client address (rate limits are per client, however many connections it opens). */
  readonly buckets: Map<string, { tokens: number; at: number }>;
}

interface Entry {
  readonly mbap: Mbap;
  readonly request: Request;
  readonly upstreamTid: number;
  readonly started: number;
  answer: Buffer | undefined;
  timer: NodeJS.Timeout | undefined;
  /** Audit a write once the PLC has answered it. */
  readonly write: boolean;
  readonly flow: string;
}

const FC_NAMES: Readonly<Record<number, string>> = {
  1: 'read-coils',
  2: 'read-discrete-inputs',
  3: 'read-holding-registers',
  4: 'read-input-registers',
  5: 'write-single-coil',
  6: 'write-single-register',
  7: 'read-exception-status',
  8: 'diagnostics',
  11: 'get-comm-event-counter',
  12: 'get-comm-event-log',
  15: 'write-multiple-coils',
  16: 'write-multiple-registers',
  17: 'report-server-id',
  20: 'read-file-record',
  21: 'write-file-record',
  22: 'mask-write-register',
  23: 'read-write-multiple-registers',
  24: 'read-fifo-queue',
  43: 'read-device-identification',
};

export class ModbusProxy implements ProtocolProxy {
  readonly #o: Required<Omit<ModbusProxyOptions, 'log' | 'audit' | 'now'>> & Pick<ModbusProxyOptions, 'log' | 'audit' | 'now'>;
  readonly #routes = new Map<number, RouteState>();
  readonly #events: AuditAggregator;
  readonly counters = { accepted: 0, refused: 0, forwarded: 0, denied: 0, wouldDeny: 0, malformed: 0, upstreamFailures: 0, badResponses: 0 };

  constructor(options: ModbusProxyOptions) {
    this.#o = {
      host: '0.0.0.0',
      connectTimeoutMs: 3_000,
      responseTimeoutMs: 5_000,
      idleTimeoutMs: 600_000,
      maxInFlight: 16,
      maxConnections: 256,
      maxConnectionsPerClient: 8,
      auditWindowMs: 60_000,
      ...options,
    };
    this.#events = new AuditAggregator({ audit: options.audit, now: options.now, windowMs: this.#o.auditWindowMs });
    this.#events.start();
  }

  get options(): Readonly<ModbusProxyOptions> {
    return this.#o;
  }

  get events(): AuditAggregator {
    return this.#events;
  }

  /** Listen ports in use, for status and tests. */
  get ports(): number[] {
    return [...this.#routes.keys()].sort((a, b) => a - b);
  }

  async setRoutes(routes: readonly ProxyRoute[]): Promise<void> {
    const wanted = new Map(routes.map((r) => [r.listenPort, r]));
    for (const [port, state] of this.#routes) {
      const next = wanted.get(port);
      if (!next) {
        await this.#closeRoute(state);
        this.#routes.delete(port);
      } else if (next.target.address !== state.route.target.address || next.target.port !== state.route.target.port || next.zone !== state.route.zone) {
        // Same port, another destination: the open connections were made to the old one.
        for (const s of state.sessions) s.close('route changed');
        state.buckets.clear();
      }
    }
    const opened: RouteState[] = [];
    try {
      for (const route of routes) {
        const grants = route.grants.map((g) => this.#grant(route, g));
        const existing = this.#routes.get(route.listenPort);
        if (existing) {
          existing.route = route;
          existing.grants = grants;
          continue;
        }
        const state = await this.#listen(route, grants);
        opened.push(state);
        this.#routes.set(route.listenPort, state);
      }
    } catch (err) {
      for (const s of opened) {
        await this.#closeRoute(s);
        this.#routes.delete(s.route.listenPort);
      }
      throw err;
    }
  }

  async close(): Promise<void> {
    for (const state of this.#routes.values()) await this.#closeRoute(state);
    this.#routes.clear();
    this.#events.stop();
  }

  status(): Record<string, unknown> {
    return {
      routes: [...this.#routes.values()].map((s) => ({
        listenPort: s.route.listenPort,
        target: `${s.route.target.address}:${s.route.target.port}`,
        zone: s.route.zone,
        flows: s.grants.map((g) => `${g.flow} (${g.mode})`),
        connections: s.sessions.size,
      })),
      counters: { ...this.counters },
    };
  }

  #grant(route: ProxyRoute, g: ProxyRoute['grants'][number]): Grant {
    const compiled = compileOps(g.ops);
    if (!compiled.rules) {
      // The policy checker ran the same compiler, so this is a bug or a version skew; deny rather than guess.
      this.#o.log.error(
        { flow: g.flow, problems: compiled.problems, listenPort: route.listenPort },
        'modbus operations of a flow do not compile; it allows nothing',
      );
    }
    return { flow: g.flow, sources: g.sources.map(parseCidr), rules: compiled.rules, mode: g.mode };
  }

  async #listen(route: ProxyRoute, grants: readonly Grant[]): Promise<RouteState> {
    const server = net.createServer({ noDelay: true });
    server.maxConnections = this.#o.maxConnections;
    const state: RouteState = { route, grants, server, sessions: new Set(), buckets: new Map() };
    server.on('connection', (socket) => this.#accept(state, socket));
    server.on('drop', () => {
      this.counters.refused += 1;
    });
    server.on('error', (err) => this.#o.log.error({ err: err.message, listenPort: route.listenPort }, 'modbus proxy listener failed'));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) =>
        reject(
          new Error(
            `modbus proxy cannot listen on ${this.#o.host}:${route.listenPort} for ${route.target.address}:${route.target.port}: ${err.code ?? err.message} (choose another enforce.proxyPorts range)`,
          ),
        );
      server.once('error', onError);
      server.listen({ port: route.listenPort, host: this.#o.host, exclusive: true }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    return state;
  }

  async #closeRoute(state: RouteState): Promise<void> {
    const closed = new Promise<void>((resolve) => state.server.close(() => resolve()));
    for (const s of state.sessions) s.close('route removed');
    state.sessions.clear();
    // Bounded: a policy change must never wait on a client.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2_000)))]);
    clearTimeout(timer);
  }

  #accept(state: RouteState, socket: net.Socket): void {
    const client = unmapped(socket.remoteAddress ?? '');
    const clientNum = ipv4ToNumber(client);
    const mine =
      clientNum === undefined ? [] : state.grants.filter((g) => g.sources.length === 0 || g.sources.some((c) => clientNum >= c.base && clientNum <= c.last));
    if (mine.length === 0) {
      // Only a redirected connection reaches this port (the input chain checks), so this is a race with a policy
      // change or someone on the gateway itself; either way the client has no flow here.
      this.counters.refused += 1;
      this.#events.record(`refused|${client}|${state.route.listenPort}`, {
        category: 'access-control',
        actor: client || 'unknown',
        action: 'modbus.connection-refused',
        target: targetOf(state.route),
        outcome: 'refused',
        code: 'WARD_MODBUS_DENIED',
        details: { client, zone: state.route.zone, reason: 'no flow of the policy allows this client to this PLC' },
      });
      socket.destroy();
      return;
    }
    const open = [...state.sessions].filter((s) => s.client === client).length;
    if (open >= this.#o.maxConnectionsPerClient) {
      // One client must not hold every slot (nor the PLC's few connections): the others keep theirs.
      this.counters.refused += 1;
      this.#events.record(`too-many|${client}|${state.route.listenPort}`, {
        category: 'access-control',
        actor: client,
        action: 'modbus.connection-refused',
        target: targetOf(state.route),
        outcome: 'refused',
        code: 'WARD_MODBUS_DENIED',
        details: { client, zone: state.route.zone, reason: `more than ${this.#o.maxConnectionsPerClient} connections from one client` },
      });
      socket.destroy();
      return;
    }
    this.counters.accepted += 1;
    const session = new Session(this, state, socket, client);
    state.sessions.add(session);
    socket.once('close', () => state.sessions.delete(session));
  }

  /** Judges one request for a client: allowed if some flow of the client allows it. */
  judge(state: RouteState, client: string, unitId: number, req: Request): { verdict: Verdict; flow: string; mode: 'observe' | 'enforce' } {
    const n = ipv4ToNumber(client) ?? -1;
    const grants = state.grants.filter((g) => g.sources.length === 0 || g.sources.some((c) => n >= c.base && n <= c.last));
    let first: { verdict: Verdict; flow: string; mode: 'observe' | 'enforce' } | undefined;
    for (const g of grants) {
      const verdict: Verdict = g.rules ? judgeRequest(g.rules, unitId, req) : { allow: false, exception: 1, reason: 'the flow allows nothing' };
      if (verdict.allow) {
        if (g.rules?.rate !== undefined && !this.#take(state, client, g.rules.rate)) {
          first ??= { verdict: { allow: false, exception: 6, reason: `more than ${g.rules.rate} requests/s` }, flow: g.flow, mode: g.mode };
          continue;
        }
        return { verdict, flow: g.flow, mode: g.mode };
      }
      first ??= { verdict, flow: g.flow, mode: g.mode };
    }
    return first ?? { verdict: { allow: false, exception: 1, reason: 'no flow allows this client any more' }, flow: '(none)', mode: 'enforce' };
  }

  #take(state: RouteState, client: string, perSecond: number): boolean {
    const now = this.#o.now();
    const burst = Math.max(1, perSecond);
    let b = state.buckets.get(client);
    if (!b) {
      if (state.buckets.size >= 4_096) state.buckets.clear();
      b = { tokens: burst, at: now };
      state.buckets.set(client, b);
    }
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** One audit event, aggregated by `key` (see audit.ts). */
  report(key: string, event: Parameters<AuditAggregator['record']>[1], options: { keep?: boolean } = {}): void {
    this.#events.record(key, event, options);
  }
}

/** One client connection and, once something is forwarded, its connection to the PLC. */
class Session {
  readonly #framer = new AduFramer();
  readonly #queue: Entry[] = [];
  readonly #pending = new Map<number, Entry>();
  /** Frames of the client's stream not yet judged because maxInFlight requests are waiting. */
  #backlog: Buffer[] = [];
  #upstream: net.Socket | undefined;
  #upstreamFramer = new AduFramer();
  #nextTid = 1;
  #closed = false;
  /** After a malformed frame: nothing more is read or forwarded; answers already owed go out, then the connection closes. */
  #draining = false;
  #drainTimer: NodeJS.Timeout | undefined;
  #clientPaused = false;

  constructor(
    readonly proxy: ModbusProxy,
    readonly state: RouteState,
    readonly socket: net.Socket,
    readonly client: string,
  ) {
    socket.setNoDelay(true);
    socket.setTimeout(proxy.options.idleTimeoutMs ?? 600_000, () => this.close('idle'));
    socket.on('data', (chunk: Buffer) => this.#onClientData(chunk));
    socket.on('drain', () => {
      this.#upstream?.resume();
      this.#drainBacklog();
    });
    socket.on('error', () => this.close('client error'));
    socket.on('close', () => this.close('client closed'));
  }

  /** Ends both connections now. Writes still waiting for the PLC are audited: they may have been carried out. */
  close(why: string): void {
    clearTimeout(this.#drainTimer);
    const upstream = this.#upstream;
    // Cleared first, so the upstream's own close is not mistaken for the PLC going away.
    this.#upstream = undefined;
    upstream?.destroy();
    this.socket.destroy();
    if (this.#closed) return;
    this.#closed = true;
    for (const e of this.#pending.values()) {
      clearTimeout(e.timer);
      if (e.write) this.#auditWrite(e, undefined, `the connection closed (${why}) before the PLC answered; the write may have been carried out`);
    }
    this.#pending.clear();
    this.#queue.length = 0;
    this.#backlog = [];
    this.proxy.options.log.debug({ client: this.client, target: targetOf(this.state.route), why }, 'modbus proxy connection closed');
  }

  #onClientData(chunk: Buffer): void {
    if (this.#closed || this.#draining) return;
    const { frames, error } = this.#framer.push(chunk);
    this.#backlog.push(...frames);
    this.#drainBacklog();
    if (error) this.#malformed(error);
  }

  #drainBacklog(): void {
    if (this.#closed || this.#draining) return;
    const max = this.proxy.options.maxInFlight ?? 16;
    // A client that sends but does not read its answers stops being read too: its unread answers stay bounded.
    while (!this.#closed && !this.#draining && this.#backlog.length > 0 && this.#queue.length < max && this.socket.writableLength < MAX_UNREAD)
      this.#onRequest(this.#backlog.shift() as Buffer);
    if (this.#closed || this.#draining) return;
    const full = this.#backlog.length > 0;
    if (full && !this.#clientPaused) this.socket.pause();
    else if (!full && this.#clientPaused) this.socket.resume();
    this.#clientPaused = full;
  }

  #malformed(error: FrameError): void {
    if (this.#closed || this.#draining) return;
    this.#draining = true;
    this.#backlog = [];
    this.socket.pause();
    this.proxy.counters.malformed += 1;
    this.proxy.report(`malformed|${this.client}|${this.state.route.listenPort}|${error.code}`, {
      category: 'request-error',
      actor: this.client,
      action: 'modbus.malformed-frame',
      target: targetOf(this.state.route),
      outcome: 'refused',
      code: 'WARD_MODBUS_MALFORMED',
      details: { client: this.client, zone: this.state.route.zone, error: error.code, message: error.message, action: 'connection closed' },
    });
    // The frames before the bad one were fine: their answers (and the audit of their writes) are still owed. Bounded.
    this.#drainTimer = setTimeout(() => this.close('malformed frame; owed answers timed out'), (this.proxy.options.responseTimeoutMs ?? 5_000) + 1_000);
    this.#flush();
  }

  /** After a malformed frame, once every owed answer is out: end, and destroy if the client does not close its side. */
  #finishDraining(): void {
    clearTimeout(this.#drainTimer);
    this.#drainTimer = setTimeout(() => this.close('malformed frame'), 1_000);
    this.socket.end(() => this.close('malformed frame'));
  }

  #onRequest(adu: Buffer): void {
    const parsed = parseRequest(adu);
    if (!parsed.ok) {
      this.#malformed(parsed.error);
      return;
    }
    const { mbap, body } = parsed.frame;
    const { verdict, flow, mode } = this.proxy.judge(this.state, this.client, mbap.unitId, body);
    const access = accessOf(body);
    if (!verdict.allow) {
      const observe = mode === 'observe';
      if (observe) this.proxy.counters.wouldDeny += 1;
      else this.proxy.counters.denied += 1;
      const what = describe(body);
      this.proxy.report(
        `${mode}|deny|${this.client}|${this.state.route.listenPort}|${mbap.unitId}|${body.fc}|${what.table ?? ''}|${what.address ?? ''}|${what.quantity ?? ''}|${verdict.exception}`,
        {
          category: 'access-control',
          actor: this.client,
          action: observe ? 'modbus.request-would-deny' : 'modbus.request-denied',
          target: targetOf(this.state.route),
          outcome: observe ? 'success' : 'refused',
          ...(observe ? {} : { code: 'WARD_MODBUS_DENIED' }),
          details: {
            client: this.client,
            flow,
            zone: this.state.route.zone,
            mode,
            unit: mbap.unitId,
            fc: body.fc,
            function: FC_NAMES[body.fc] ?? `fc-${body.fc}`,
            access,
            ...what,
            reason: verdict.reason,
            exception: verdict.exception,
          },
        },
      );
      if (!observe) {
        const entry = this.#entry(mbap, body, -1, false, flow);
        entry.answer = encodeException(mbap, body.fc, verdict.exception, body.kind === 'device-id' ? 14 : undefined);
        this.#flush();
        return;
      }
    }
    this.#forward(adu, mbap, body, access === 'write' || access === 'read-write', flow);
  }

  #entry(mbap: Mbap, request: Request, upstreamTid: number, write: boolean, flow: string): Entry {
    const entry: Entry = { mbap, request, upstreamTid, started: this.proxy.options.now(), answer: undefined, timer: undefined, write, flow };
    this.#queue.push(entry);
    return entry;
  }

  #forward(adu: Buffer, mbap: Mbap, request: Request, write: boolean, flow: string): void {
    const upstream = this.#upstream ?? this.#connect();
    const tid = this.#allocateTid();
    const entry = this.#entry(mbap, request, tid, write, flow);
    this.#pending.set(tid, entry);
    entry.timer = setTimeout(() => this.#fail(entry, 'the PLC did not answer in time'), this.proxy.options.responseTimeoutMs ?? 5_000);
    // A copy: the client's chunk is not ours to change, and the id the PLC sees is the proxy's.
    const out = Buffer.from(adu);
    out.writeUInt16BE(tid, 0);
    this.proxy.counters.forwarded += 1;
    if (!upstream.write(out)) this.socket.pause();
  }

  #allocateTid(): number {
    for (let i = 0; i < 65_536; i++) {
      const tid = this.#nextTid;
      this.#nextTid = (this.#nextTid + 1) & 0xffff;
      if (!this.#pending.has(tid)) return tid;
    }
    throw new Error('no free transaction id (cannot happen with maxInFlight below 65536)');
  }

  #connect(): net.Socket {
    const { address, port } = this.state.route.target;
    const upstream = net.connect({ host: address, port, noDelay: true, timeout: this.proxy.options.connectTimeoutMs ?? 3_000 });
    this.#upstream = upstream;
    this.#upstreamFramer = new AduFramer();
    upstream.once('connect', () => upstream.setTimeout(0));
    upstream.on('timeout', () => upstream.destroy(new Error(`no connection to the PLC within ${this.proxy.options.connectTimeoutMs} ms`)));
    upstream.on('data', (chunk: Buffer) => this.#onUpstreamData(upstream, chunk));
    upstream.on('drain', () => {
      if (!this.#clientPaused) this.socket.resume();
    });
    upstream.on('error', (err) => this.#upstreamDown(upstream, err.message));
    upstream.on('close', () => this.#upstreamDown(upstream, 'the PLC closed the connection'));
    return upstream;
  }

  #upstreamDown(upstream: net.Socket, why: string): void {
    if (this.#upstream !== upstream) return;
    this.#upstream = undefined;
    if (this.#pending.size === 0) return;
    this.proxy.counters.upstreamFailures += 1;
    this.proxy.report(`upstream|${this.state.route.listenPort}`, {
      category: 'control-system',
      actor: 'ward-agent',
      action: 'modbus.plc-unreachable',
      target: targetOf(this.state.route),
      outcome: 'failure',
      code: 'WARD_MODBUS_UPSTREAM',
      details: { error: why, waiting: this.#pending.size },
    });
    for (const e of [...this.#pending.values()]) this.#fail(e, why);
  }

  #onUpstreamData(upstream: net.Socket, chunk: Buffer): void {
    const { frames, error } = this.#upstreamFramer.push(chunk);
    for (const adu of frames) {
      const entry = this.#pending.get(adu.readUInt16BE(0));
      // Late answers (after a timeout) and unsolicited frames have no one waiting for them.
      if (!entry) continue;
      this.#pending.delete(entry.upstreamTid);
      clearTimeout(entry.timer);
      const parsed = parseResponse(adu, entry.request);
      if (!parsed.ok || parsed.frame.mbap.unitId !== entry.mbap.unitId) {
        this.proxy.counters.badResponses += 1;
        this.proxy.report(`bad-response|${this.state.route.listenPort}|${parsed.ok ? 'unit' : parsed.error.code}`, {
          category: 'control-system',
          actor: this.state.route.target.address,
          action: 'modbus.bad-response',
          target: targetOf(this.state.route),
          outcome: 'refused',
          code: 'WARD_MODBUS_MALFORMED',
          details: {
            fc: entry.request.fc,
            error: parsed.ok ? `unit ${parsed.frame.mbap.unitId} answered for unit ${entry.mbap.unitId}` : parsed.error.message,
          },
        });
        entry.answer = encodeException(entry.mbap, entry.request.fc, 11, entry.request.kind === 'device-id' ? 14 : undefined);
        if (entry.write) this.#auditWrite(entry, undefined, 'the PLC answer was rejected; the write may have been carried out');
        continue;
      }
      const answer = Buffer.from(adu);
      answer.writeUInt16BE(entry.mbap.transactionId, 0);
      entry.answer = answer;
      if (entry.write) this.#auditWrite(entry, parsed.frame.body.kind === 'exception' ? parsed.frame.body.exceptionCode : undefined);
    }
    if (error) {
      this.#upstreamDown(upstream, `the PLC sent a malformed frame: ${error.message}`);
      upstream.destroy();
    }
    this.#flush();
  }

  #fail(entry: Entry, why: string): void {
    if (this.#pending.get(entry.upstreamTid) !== entry) return;
    this.#pending.delete(entry.upstreamTid);
    clearTimeout(entry.timer);
    entry.answer = encodeException(entry.mbap, entry.request.fc, 11 as Code, entry.request.kind === 'device-id' ? 14 : undefined);
    if (entry.write) this.#auditWrite(entry, 11, why);
    this.#flush();
  }

  #auditWrite(entry: Entry, exception: number | undefined, error?: string): void {
    const what = describe(entry.request);
    this.proxy.report(
      // Values are part of the key: a repeated write of the same values folds, a different value is its own event.
      `write|${this.client}|${this.state.route.listenPort}|${entry.mbap.unitId}|${entry.request.fc}|${what.table}|${what.address}|${what.quantity}|${what.values?.join(',')}|${exception ?? 0}|${error ?? ''}`,
      {
        category: 'control-system',
        actor: this.client,
        action: 'modbus.write',
        target: targetOf(this.state.route),
        outcome: exception === undefined && error === undefined ? 'success' : 'failure',
        details: {
          client: this.client,
          flow: entry.flow,
          zone: this.state.route.zone,
          unit: entry.mbap.unitId,
          fc: entry.request.fc,
          function: FC_NAMES[entry.request.fc] ?? `fc-${entry.request.fc}`,
          ...what,
          ...(exception !== undefined ? { exception } : {}),
          ...(error !== undefined ? { error } : {}),
        },
      },
      { keep: true },
    );
  }

  /** Answers leave in request order: an answer waits for every earlier one. */
  #flush(): void {
    for (;;) {
      const head = this.#queue[0];
      if (!head?.answer || this.socket.destroyed) break;
      this.#queue.shift();
      if (!this.socket.write(head.answer)) this.#upstream?.pause();
    }
    if (this.#draining && !this.#closed && this.#queue.length === 0) this.#finishDraining();
    else if (!this.#closed) this.#drainBacklog();
  }
}

/** What a request touches, for audit details (values of writes included, bounded). */
function describe(r: Request): { table?: string; address?: number; quantity?: number; values?: number[]; truncated?: boolean } {
  switch (r.kind) {
    case 'read':
      return { table: r.table, address: r.address, quantity: r.quantity };
    case 'read-fifo':
      return { table: 'holding-registers', address: r.address };
    case 'write-single':
      return { table: r.table, address: r.address, quantity: 1, values: [r.table === 'coils' ? (r.value === 0xff00 ? 1 : 0) : r.value] };
    case 'write-multiple':
      return { table: r.table, address: r.address, quantity: r.quantity, ...values(r.table, r.values, r.quantity) };
    case 'mask-write':
      return { table: 'holding-registers', address: r.address, quantity: 1, values: [r.andMask, r.orMask] };
    case 'read-write':
      return {
        table: 'holding-registers',
        address: r.write.address,
        quantity: r.write.quantity,
        ...values('holding-registers', r.write.values, r.write.quantity),
      };
    default:
      return {};
  }
}

const MAX_AUDIT_VALUES = 32;
const MAX_UNREAD = 64 * 1024;

function values(table: string, data: Buffer, quantity: number): { values: number[]; truncated?: boolean } {
  const n = Math.min(quantity, MAX_AUDIT_VALUES);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(table === 'coils' ? ((data[i >> 3] as number) >> (i & 7)) & 1 : data.readUInt16BE(i * 2));
  return quantity > n ? { values: out, truncated: true } : { values: out };
}

function targetOf(route: ProxyRoute): string {
  return `${route.target.address}:${route.target.port}`;
}

function unmapped(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}

function ipv4ToNumber(ip: string): number | undefined {
  const parts = ip.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^[0-9]{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n;
}

function parseCidr(text: string): { base: number; last: number } {
  const [ip, bitsText] = text.split('/');
  const bits = bitsText === undefined ? 32 : Number(bitsText);
  const n = ipv4ToNumber(ip ?? '');
  if (n === undefined || !Number.isInteger(bits) || bits < 0 || bits > 32) throw new TypeError(`not an IPv4 address or CIDR: ${text}`);
  const size = 2 ** (32 - bits);
  const base = Math.floor(n / size) * size;
  return { base, last: base + size - 1 };
}
