import { chmod, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { AgentAttestation } from '../attest/service.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import type { EnforceService } from '../enforce/service.js';
import type { Logger } from '../log.js';

/**
 * The agent's local control socket (`<stateDir>/agent.sock`, 0600 in a 0700
 * folder: root on the gateway only). `ward enforce …` talks to the running
 * agent through it, so there is one writer of the kernel ruleset and of the
 * audit journal; when no agent runs, the CLI does the same work itself.
 * One JSON request per line, one JSON answer per line.
 */
export interface LocalControlOptions {
  readonly path: string;
  readonly enforce: EnforceService;
  readonly log: Logger;
  /** The attestation of the current link (none while unprovisioned). */
  readonly attestation?: () => AgentAttestation | undefined;
}

type Params = Record<string, unknown>;
const MAX_LINE = 16 * 1024 * 1024;

export class LocalControl {
  readonly #o: LocalControlOptions;
  #server: Server | undefined;
  #ready = false;

  constructor(options: LocalControlOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    // A socket file left by a killed agent refuses connections; one that answers belongs to a live agent.
    if ((await callLocal(this.#o.path, 'ping', {}, 1000).catch(() => undefined)) !== undefined) {
      throw new WardError(ErrorCodes.ENFORCE_APPLY_FAILED, `another agent answers on ${this.#o.path}`);
    }
    await rm(this.#o.path, { force: true });
    const server = createServer((socket) => this.#serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#o.path, () => resolve());
    });
    await chmod(this.#o.path, 0o600);
    this.#server = server;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.#o.path, { force: true });
  }

  #serve(socket: Socket): void {
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('error', () => {});
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      if (buffer.length > MAX_LINE) return socket.destroy();
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      const line = buffer.slice(0, nl);
      buffer = '';
      void this.#answer(line).then((answer) => socket.end(`${JSON.stringify(answer)}\n`));
    });
  }

  async #answer(line: string): Promise<{ result?: unknown; error?: { code: string; message: string } }> {
    try {
      const req = JSON.parse(line) as { method?: unknown; params?: unknown };
      const params = (typeof req.params === 'object' && req.params !== null ? req.params : {}) as Params;
      return { result: await this.#dispatch(String(req.method), params) };
    } catch (err) {
      this.#o.log.warn({ err: describeError(err) }, 'local control request failed');
      return { error: { code: err instanceof WardError ? err.code : 'WARD_LOCAL_REQUEST_FAILED', message: err instanceof Error ? err.message : String(err) } };
    }
  }

  /**
   * The socket is up from the agent's first steps, so `ward enforce` never takes it for absent and acts on the kernel
   * beside the agent; until this is called (rules restored, trust followed), requests are answered "starting".
   */
  ready(): void {
    this.#ready = true;
  }

  async #dispatch(method: string, p: Params): Promise<unknown> {
    const e = this.#o.enforce;
    const actor = typeof p.actor === 'string' && p.actor.length > 0 ? p.actor.slice(0, 64) : 'operator';
    if (method === 'ping') return { pong: true };
    if (!this.#ready) throw new WardError(ErrorCodes.LOCAL_AGENT_STARTING, 'the agent is starting (restoring its rules): retry in a few seconds');
    switch (method) {
      case 'attest.show':
      case 'attest.now': {
        const a = this.#o.attestation?.();
        if (!a) throw new WardError(ErrorCodes.ATTEST_UNAVAILABLE, 'this agent has no link to a controller yet (unprovisioned): nothing attests');
        const changed = method === 'attest.now' ? await a.reportNow(actor) : undefined;
        return { trust: a.attester.trust, aggregate: a.attester.aggregate, log: a.attester.log, ...(changed ? { changed } : {}) };
      }
      case 'enforce.status':
        return e.status();
      case 'enforce.diff':
        return e.diffText(typeof p.text === 'string' ? p.text : undefined);
      case 'enforce.apply':
        return e.applyText(String(p.text ?? ''), actor, p.force === true);
      case 'enforce.rollback':
        return e.enforcer.rollback(actor);
      case 'enforce.learn':
        return e.learn(typeof p.forMs === 'number' ? p.forMs : undefined, actor);
      case 'enforce.propose':
        return e.propose();
      case 'enforce.failsafe':
        return p.enter === false ? e.enforcer.leaveFailsafe(`operator ${actor}`) : e.enforcer.enterFailsafe(`operator ${actor}`, actor);
      default:
        throw new WardError(ErrorCodes.RPC_UNKNOWN_METHOD, `unknown local method ${method}`);
    }
  }
}

/** Calls the running agent; undefined when none listens (no socket, or a stale one). */
export function callLocal(path: string, method: string, params: Params, timeoutMs = 120_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let buffer = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new WardError(ErrorCodes.RPC_TIMEOUT, `the agent did not answer ${method} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(undefined);
      else reject(err);
    });
    socket.on('data', (chunk: string) => {
      buffer += chunk;
    });
    socket.once('end', () => {
      clearTimeout(timer);
      try {
        const answer = JSON.parse(buffer) as { result?: unknown; error?: { code: string; message: string } };
        if (answer.error) reject(new WardError(answer.error.code as never, answer.error.message));
        else resolve(answer.result ?? null);
      } catch {
        reject(new WardError(ErrorCodes.RPC_REMOTE_ERROR, `the agent answered ${method} with something that is not JSON`));
      }
    });
    socket.write(`${JSON.stringify({ method, params })}\n`);
  });
}
