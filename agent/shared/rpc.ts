import { randomBytes } from 'node:crypto';
import type { Clock } from '../core/clock.js';
import { describeError, ErrorCodes, WardError } from '../core/errors.js';
import { type EnvelopeVerifier, encodeEnvelope, seal } from './envelope.js';
import type { SigningKey } from './keys.js';
import { decodePayload, RPC_REQUEST_TYPE, RPC_RESPONSE_TYPE, type RpcRequestPayload, rpcRequestPayload, rpcResponsePayload } from './messages.js';
import { parseDeviceTopic, topics } from './topics.js';

/**
 * Request/response over MQTT 3.1.1 with the reply topic and correlation id
 * inside the signed payload (MQTT 5 has Response Topic and Correlation Data
 * properties, but those are unauthenticated and absent on 3.1.1). Requests
 * go controller → device on `ward/v1/<id>/cmd`; replies come back under the
 * device's own tree, `ward/v1/<id>/reply/<replica>`, to the replica that asked.
 */
export type Publish = (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean; messageExpirySeconds?: number }) => Promise<void>;

export const CONTROLLER_PRINCIPAL = 'controller';
const REQUEST_TTL_SECONDS = 60;

interface Pending {
  readonly deviceId: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** The asking side (the controller). */
export class RpcClient {
  readonly #pending = new Map<string, Pending>();

  constructor(
    private readonly deps: {
      readonly key: SigningKey;
      readonly replicaId: string;
      readonly verifier: EnvelopeVerifier;
      readonly publish: Publish;
      readonly clock: Clock;
      readonly timeoutMs: number;
    },
  ) {}

  async call(deviceId: string, method: string, params: Record<string, unknown> = {}, timeoutMs = this.deps.timeoutMs): Promise<unknown> {
    const corr = randomBytes(12).toString('base64url');
    const envelope = seal(
      this.deps.key,
      { typ: RPC_REQUEST_TYPE, sub: deviceId, method, params, replyTo: topics.reply(deviceId, this.deps.replicaId), corr },
      { ttlSeconds: REQUEST_TTL_SECONDS, clock: this.deps.clock },
    );
    const result = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(corr);
        reject(new WardError(ErrorCodes.RPC_TIMEOUT, `device ${deviceId} did not answer '${method}' within ${timeoutMs} ms`, { retryable: true }));
      }, timeoutMs);
      this.#pending.set(corr, { deviceId, resolve, reject, timer });
    });
    // close() or the timeout may reject while the publish below is still pending, before anyone awaits `result`:
    // that must not surface as an unhandled rejection (it would end the process); the caller still sees it.
    result.catch(() => undefined);
    try {
      // On MQTT 5 the broker also drops a command nobody fetched before it expires (3.3.2.3.3).
      await this.deps.publish(topics.cmd(deviceId), encodeEnvelope(envelope), { qos: 1, messageExpirySeconds: REQUEST_TTL_SECONDS });
    } catch (err) {
      const pending = this.#pending.get(corr);
      if (pending) {
        clearTimeout(pending.timer);
        this.#pending.delete(corr);
      }
      throw err;
    }
    return result;
  }

  /**
   * Feeds a message from the replies filter. Throws the verifier's error for
   * anything forged, stale or malformed (the caller logs and counts it);
   * returns false for a verified reply nobody waits for any more.
   */
  handleReply(topic: string, payload: Buffer): boolean {
    const parsed = parseDeviceTopic(topic);
    if (parsed === undefined) throw new WardError(ErrorCodes.ENVELOPE_MALFORMED, `reply on a non-device topic ${topic}`);
    const verified = this.deps.verifier.verify(payload, { typ: RPC_RESPONSE_TYPE, principal: parsed.deviceId, subject: parsed.deviceId });
    const res = decodePayload(rpcResponsePayload, verified.payload);
    const pending = this.#pending.get(res.corr);
    if (pending === undefined || pending.deviceId !== parsed.deviceId) return false;
    this.#pending.delete(res.corr);
    clearTimeout(pending.timer);
    if (res.ok) pending.resolve(res.result);
    else
      pending.reject(
        new WardError(ErrorCodes.RPC_REMOTE_ERROR, `device ${parsed.deviceId}: ${res.error?.code ?? 'error'}: ${res.error?.message ?? ''}`, {
          details: { remoteCode: res.error?.code },
        }),
      );
    return true;
  }

  /** Rejects everything still waiting (on shutdown). */
  close(): void {
    for (const [corr, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new WardError(ErrorCodes.LINK_CLOSED, 'controller is shutting down'));
      this.#pending.delete(corr);
    }
  }
}

export type RpcHandler = (params: Record<string, unknown>, request: RpcRequestPayload) => Promise<unknown> | unknown;

/** The answering side (the agent). */
export class RpcServer {
  readonly #handlers = new Map<string, RpcHandler>();

  constructor(
    private readonly deps: {
      readonly deviceId: string;
      readonly key: SigningKey;
      readonly verifier: EnvelopeVerifier;
      readonly publish: Publish;
      readonly clock: Clock;
    },
  ) {}

  register(method: string, handler: RpcHandler): void {
    if (this.#handlers.has(method)) throw new TypeError(`RPC method ${method} registered twice`);
    this.#handlers.set(method, handler);
  }

  /**
   * Verifies a request from the cmd topic and answers it. Throws the
   * verifier's error for a request that must not be answered (forged,
   * replayed, expired, malformed): answering would echo to an unauthenticated
   * reply topic. A verified request for an unknown method gets an error reply.
   */
  async handle(payload: Buffer): Promise<void> {
    const { deviceId } = this.deps;
    const verified = this.deps.verifier.verify(payload, { typ: RPC_REQUEST_TYPE, principal: CONTROLLER_PRINCIPAL, subject: deviceId });
    const req = decodePayload(rpcRequestPayload, verified.payload);
    const replyTopic = parseDeviceTopic(req.replyTo);
    if (replyTopic === undefined || replyTopic.deviceId !== deviceId || !replyTopic.suffix.startsWith('reply/')) {
      throw new WardError(ErrorCodes.ENVELOPE_MALFORMED, `replyTo ${req.replyTo} is outside this device's reply topics`);
    }
    const handler = this.#handlers.get(req.method);
    let body: { ok: boolean; result?: unknown; error?: { code: string; message: string } };
    if (handler === undefined) {
      body = { ok: false, error: { code: ErrorCodes.RPC_UNKNOWN_METHOD, message: `unknown method ${req.method}` } };
    } else {
      try {
        const result = await handler(req.params, req);
        body = result === undefined ? { ok: true } : { ok: true, result };
      } catch (err) {
        body = { ok: false, error: { code: err instanceof WardError ? err.code : 'WARD_RPC_HANDLER_FAILED', message: describeError(err) } };
      }
    }
    const envelope = seal(
      this.deps.key,
      { typ: RPC_RESPONSE_TYPE, sub: deviceId, corr: req.corr, ...body },
      { ttlSeconds: REQUEST_TTL_SECONDS, clock: this.deps.clock },
    );
    await this.deps.publish(req.replyTo, encodeEnvelope(envelope), { qos: 1 });
  }
}
