import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { z } from 'zod';
import { describeError, ErrorCodes, WardError } from '../agent/core/errors.js';
import { isDeviceId } from '../agent/shared/topics.js';
import { type DeviceRecord, isStale } from './store.js';

/**
 * The controller's HTTP JSON API. Bound to loopback by default: it has no
 * authentication yet (the operator console issue adds sign-in), so exposing
 * it beyond the host is a deployment error the README warns about.
 */
export interface ApiBackend {
  health(): Promise<Record<string, unknown>>;
  listDevices(): Promise<DeviceRecord[]>;
  getDevice(id: string): Promise<DeviceRecord | undefined>;
  callDevice(id: string, method: string): Promise<unknown>;
  now(): number;
  /** Host names (without port) the API answers to; undefined accepts any (a non-loopback listener). */
  allowedHosts?: readonly string[];
  /** A device's audit chain as the controller holds it: verdict and verified events. */
  auditView?(deviceId: string, query: { chainIndex?: number; fromSeq?: number; limit: number }): Promise<unknown | undefined>;
  /** Segmentation policies: the one published for a device, and publishing a new one. */
  policy?: {
    current(deviceId: string): Promise<unknown | undefined>;
    publish(deviceId: string, policy: unknown, actor: string): Promise<unknown>;
  };
  /** The Verifier: a device's attestation record, a challenge now, an operator's approval of its measurements. */
  attestation?: {
    get(deviceId: string): Promise<unknown | undefined>;
    challenge(deviceId: string): Promise<unknown>;
    approve(deviceId: string, actor: string): Promise<unknown>;
  };
  /** The Sparkplug host's view of a gateway: last values, recent history, health alarms. */
  telemetry?: {
    view(deviceId: string): Record<string, unknown> | undefined;
    history(deviceId: string, metric: string, device: string | null): unknown[] | undefined;
    /** An operator accepts a raised `changed` alarm's value as the new baseline. */
    acceptAlarm(
      deviceId: string,
      target: { rule: string; metric: string; device: string | null; value?: unknown },
      actor: string,
    ):
      | { ok: true; alarm: unknown }
      | { ok: false; reason: 'unknown-node' | 'unknown-rule' | 'not-acceptable' | 'not-raised' | 'value-changed'; current?: unknown };
  };
  /** Enrollment exists only once the controller is certified by a fleet root. */
  enrollment?: {
    createCode(input: { site: string; line: string; cell: string; ttlSeconds: number }): Promise<unknown>;
    listCodes(): Promise<unknown[]>;
    revoke(deviceId: string, reason: string): Promise<DeviceRecord>;
    registerClaim(text: string): Promise<unknown>;
    confirmClaim(claimId: string, input: { site: string; line: string; cell: string; ttlSeconds: number }): Promise<unknown>;
    listClaims(): Promise<unknown[]>;
  };
}

type Handler = (req: IncomingMessage, params: string[], body: unknown) => Promise<[number, unknown]>;

const MAX_BODY_BYTES = 16 * 1024;
/** A policy of 10,000 flows and assets is a few MiB of JSON. */
const MAX_POLICY_BODY_BYTES = 8 * 1024 * 1024;
const label = z.string().regex(/^[A-Za-z0-9._-]{1,32}$/, 'expected 1-32 of [A-Za-z0-9._-]');
const createCodeBody = z.strictObject({
  site: label,
  line: label,
  cell: label,
  ttlSeconds: z
    .number()
    .int()
    .min(60)
    .max(30 * 86_400)
    .default(86_400),
});
const revokeBody = z.strictObject({ reason: z.string().min(1).max(256) });
const claimBody = z.strictObject({ text: z.string().min(1).max(256) });
const acceptAlarmBody = z.strictObject({
  rule: z.string().min(1).max(64),
  metric: z.string().min(1).max(256),
  /** The Sparkplug device the metric belongs to; absent or null: a gateway metric. */
  device: z.string().min(1).max(256).nullable().optional(),
  /** The value the operator reviewed; if the metric has changed since, nothing is accepted (409). */
  value: z.union([z.string().max(65_536), z.number(), z.boolean()]).optional(),
  actor: z.string().min(1).max(64).optional(),
});
const policyBody = z.strictObject({ policy: z.record(z.string(), z.unknown()), actor: z.string().min(1).max(64).optional() });

function badRequest(message: string): [number, unknown] {
  return [400, { error: { code: 'WARD_API_BAD_REQUEST', message } }];
}

function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> | string {
  const r = schema.safeParse(body ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  return `${issue?.path.join('.') || 'body'}: ${issue?.message ?? 'invalid'}`;
}

const NO_ENROLLMENT: [number, unknown] = [
  409,
  {
    error: {
      code: ErrorCodes.FLEET_NOT_INITIALISED,
      message: 'this controller is not certified by a fleet root: run `ward fleet init` and `ward fleet certify-controller`',
    },
  },
];

export function createApiServer(backend: ApiBackend): Server {
  const routes: { method: string; pattern: RegExp; handler: Handler; maxBody?: number }[] = [
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)\/policy$/,
      handler: async (_req, [id]) => {
        const current = isDeviceId(id ?? '') && backend.policy ? await backend.policy.current(id as string) : undefined;
        return current ? [200, current] : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no policy published for ${id}` } }];
      },
    },
    {
      method: 'PUT',
      pattern: /^\/api\/devices\/([^/]+)\/policy$/,
      maxBody: MAX_POLICY_BODY_BYTES,
      handler: async (_req, [id], body) => {
        if (!backend.policy) return [501, { error: { code: 'WARD_API_NOT_AVAILABLE', message: 'this controller publishes no policies' } }];
        if (!isDeviceId(id ?? '') || (await backend.getDevice(id as string)) === undefined) {
          return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
        }
        const input = parseBody(policyBody, body);
        if (typeof input === 'string') return badRequest(input);
        const published = await backend.policy.publish(id as string, input.policy, input.actor ?? 'operator');
        // 202: signed and recorded, not yet taken by the broker; the controller sends it when it is connected again.
        return [(published as { delivered?: boolean }).delivered === false ? 202 : 200, published];
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)\/telemetry$/,
      handler: async (_req, [id]) => {
        const view = isDeviceId(id ?? '') ? backend.telemetry?.view(id as string) : undefined;
        return view ? [200, view] : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no telemetry from ${id} yet` } }];
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)\/telemetry\/history$/,
      handler: async (req, [id]) => {
        const url = new URL(req.url ?? '/', 'http://localhost');
        const metric = url.searchParams.get('metric');
        if (metric === null || metric.length === 0 || metric.length > 256) return badRequest('query parameter metric is required (a Sparkplug metric name)');
        const device = url.searchParams.get('device');
        const points = isDeviceId(id ?? '') ? backend.telemetry?.history(id as string, metric, device) : undefined;
        return points
          ? [200, { deviceId: id, device, metric, points }]
          : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no metric ${metric}${device ? ` on ${device}` : ''} from ${id}` } }];
      },
    },
    {
      method: 'POST',
      pattern: /^\/api\/devices\/([^/]+)\/telemetry\/alarms\/accept$/,
      handler: async (_req, [id], body) => {
        if (!backend.telemetry) return [501, { error: { code: 'WARD_API_NOT_AVAILABLE', message: 'this controller ingests no telemetry' } }];
        const input = parseBody(acceptAlarmBody, body);
        if (typeof input === 'string') return badRequest(input);
        const target = { rule: input.rule, metric: input.metric, device: input.device ?? null, ...(input.value !== undefined ? { value: input.value } : {}) };
        const outcome = isDeviceId(id ?? '') ? backend.telemetry.acceptAlarm(id as string, target, input.actor ?? 'operator') : undefined;
        if (outcome?.ok) return [200, { accepted: outcome.alarm }];
        const where = `${target.device ? `${target.device} ` : ''}${target.metric}`;
        switch (outcome?.reason) {
          case 'not-acceptable':
            return [
              409,
              { error: { code: 'WARD_API_ALARM_NOT_ACCEPTABLE', message: `rule ${target.rule} is not a 'changed' rule: it clears when its value does` } },
            ];
          case 'value-changed':
            return [
              409,
              {
                error: {
                  code: 'WARD_API_ALARM_VALUE_CHANGED',
                  message: `${where} of ${id} has changed since the value given; nothing accepted: review the current value`,
                  current: outcome?.current,
                },
              },
            ];
          case 'unknown-rule':
            return [404, { error: { code: 'WARD_API_ALARM_UNKNOWN', message: `no alarm rule ${target.rule}` } }];
          case 'not-raised':
            return [404, { error: { code: 'WARD_API_ALARM_UNKNOWN', message: `${target.rule} is not raised on ${where} of ${id}` } }];
          default:
            return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no telemetry from ${id} yet` } }];
        }
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)\/attestation$/,
      handler: async (_req, [id]) => {
        const record = isDeviceId(id ?? '') && backend.attestation ? await backend.attestation.get(id as string) : undefined;
        return record ? [200, record] : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no attestation record for ${id}` } }];
      },
    },
    {
      method: 'POST',
      pattern: /^\/api\/devices\/([^/]+)\/attestation\/(challenge|approve)$/,
      handler: async (_req, [id, what], body) => {
        if (!backend.attestation) return [501, { error: { code: 'WARD_API_NOT_AVAILABLE', message: 'this controller verifies no attestation' } }];
        if (!isDeviceId(id ?? '') || (await backend.getDevice(id as string)) === undefined) {
          return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
        }
        if (what === 'challenge') return [200, await backend.attestation.challenge(id as string)];
        const actor = typeof (body as { actor?: unknown } | undefined)?.actor === 'string' ? (body as { actor: string }).actor.slice(0, 64) : 'operator';
        return [200, await backend.attestation.approve(id as string, actor)];
      },
    },
    { method: 'GET', pattern: /^\/api\/health$/, handler: async () => [200, await backend.health()] },
    {
      method: 'GET',
      pattern: /^\/api\/devices$/,
      handler: async () => [200, { devices: (await backend.listDevices()).map((d) => publicView(d, backend.now())) }],
    },
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)$/,
      handler: async (_req, [id]) => {
        const device = isDeviceId(id ?? '') ? await backend.getDevice(id as string) : undefined;
        return device ? [200, publicView(device, backend.now())] : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/devices\/([^/]+)\/audit$/,
      handler: async (req, [id]) => {
        const query = new URL(req.url ?? '/', 'http://api').searchParams;
        const int = (name: string, min: number, max: number): number | undefined | string => {
          const raw = query.get(name);
          if (raw === null) return undefined;
          const n = Number(raw);
          return Number.isSafeInteger(n) && n >= min && n <= max ? n : `${name} must be an integer ${min}..${max}`;
        };
        const chainIndex = int('chain', 1, 1_000_000);
        const fromSeq = int('from', 1, Number.MAX_SAFE_INTEGER);
        const limit = int('limit', 1, 1000);
        for (const v of [chainIndex, fromSeq, limit]) if (typeof v === 'string') return badRequest(v);
        const view =
          isDeviceId(id ?? '') && backend.auditView
            ? await backend.auditView(id as string, {
                ...(chainIndex !== undefined ? { chainIndex: chainIndex as number } : {}),
                ...(fromSeq !== undefined ? { fromSeq: fromSeq as number } : {}),
                limit: (limit as number | undefined) ?? 100,
              })
            : undefined;
        return view ? [200, view] : [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no audit trail for device ${id}` } }];
      },
    },
    {
      method: 'POST',
      pattern: /^\/api\/devices\/([^/]+)\/(ping|status)$/,
      handler: async (_req, [id, method]) => {
        if (!isDeviceId(id ?? '') || (await backend.getDevice(id as string)) === undefined) {
          return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
        }
        return [200, { result: await backend.callDevice(id as string, method as string) }];
      },
    },
    {
      method: 'POST',
      pattern: /^\/api\/enroll-codes$/,
      handler: async (_req, _params, body) => {
        if (!backend.enrollment) return NO_ENROLLMENT;
        const input = parseBody(createCodeBody, body);
        if (typeof input === 'string') return badRequest(input);
        return [201, await backend.enrollment.createCode(input)];
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/enroll-codes$/,
      handler: async () => (backend.enrollment ? [200, { codes: await backend.enrollment.listCodes() }] : NO_ENROLLMENT),
    },
    {
      method: 'POST',
      pattern: /^\/api\/claims$/,
      handler: async (_req, _params, body) => {
        if (!backend.enrollment) return NO_ENROLLMENT;
        const input = parseBody(claimBody, body);
        if (typeof input === 'string') return badRequest(input);
        return [201, await backend.enrollment.registerClaim(input.text)];
      },
    },
    {
      method: 'GET',
      pattern: /^\/api\/claims$/,
      handler: async () => (backend.enrollment ? [200, { claims: await backend.enrollment.listClaims() }] : NO_ENROLLMENT),
    },
    {
      method: 'POST',
      pattern: /^\/api\/claims\/([0-9a-f]{16})\/confirm$/,
      handler: async (_req, [claimId], body) => {
        if (!backend.enrollment) return NO_ENROLLMENT;
        const input = parseBody(createCodeBody, body);
        if (typeof input === 'string') return badRequest(input);
        return [200, await backend.enrollment.confirmClaim(claimId as string, input)];
      },
    },
    {
      method: 'POST',
      pattern: /^\/api\/devices\/([^/]+)\/revoke$/,
      handler: async (_req, [id], body) => {
        if (!backend.enrollment) return NO_ENROLLMENT;
        const input = parseBody(revokeBody, body);
        if (typeof input === 'string') return badRequest(input);
        if (!isDeviceId(id ?? '')) return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
        return [200, publicView(await backend.enrollment.revoke(id as string, input.reason), backend.now())];
      },
    },
  ];

  return createServer((req, res) => {
    // A web page in the operator's browser must not drive this API: a rebound DNS name fails the Host check,
    // and a cross-site form or no-cors fetch cannot send application/json without a CORS preflight we never grant.
    const host = hostnameOf(req.headers.host);
    if (backend.allowedHosts !== undefined && (host === undefined || !backend.allowedHosts.includes(host))) {
      return send(res, 421, { error: { code: 'WARD_API_WRONG_HOST', message: `this API answers to ${backend.allowedHosts.join(', ')} only` } });
    }
    const hasBody = Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined;
    if (hasBody && !/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
      return send(res, 415, { error: { code: 'WARD_API_JSON_ONLY', message: 'request bodies must be application/json' } });
    }
    let url: URL;
    let params: string[];
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
      params = [];
      decodeURIComponent(url.pathname);
    } catch {
      return send(res, 400, { error: { code: 'WARD_API_BAD_REQUEST', message: 'malformed request path' } });
    }
    const matching = routes.filter((r) => r.pattern.test(url.pathname));
    if (matching.length === 0) return send(res, 404, { error: { code: 'WARD_API_NOT_FOUND', message: `no route ${url.pathname}` } });
    const route = matching.find((r) => r.method === req.method);
    if (route === undefined) {
      res.setHeader('allow', matching.map((r) => r.method).join(', '));
      return send(res, 405, { error: { code: 'WARD_API_METHOD_NOT_ALLOWED', message: `${req.method} not allowed on ${url.pathname}` } });
    }
    params = (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodeURIComponent);
    readJsonBody(req, route.maxBody ?? MAX_BODY_BYTES)
      .then((body) => (typeof body === 'string' ? badRequest(body) : route.handler(req, params, body.value)))
      .then(([status, body]) => send(res, status, body))
      .catch((err: unknown) => {
        const status = httpStatusFor(err);
        send(res, status, {
          error: err instanceof WardError ? { code: err.code, message: err.message } : { code: 'WARD_API_INTERNAL', message: describeError(err) },
        });
      });
  });
}

const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  [ErrorCodes.RPC_TIMEOUT]: 504,
  [ErrorCodes.CONTROLLER_DEVICE_UNKNOWN]: 404,
  [ErrorCodes.ENROLL_REFUSED]: 400,
  [ErrorCodes.BUNDLE_MALFORMED]: 400,
  [ErrorCodes.ENROLL_ID_TAKEN]: 409,
  [ErrorCodes.POLICY_INVALID]: 422,
};

function httpStatusFor(err: unknown): number {
  if (!(err instanceof WardError)) return 500;
  return STATUS_BY_CODE[err.code] ?? (err.retryable ? 503 : 500);
}

function hostnameOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^(\[[^\]]+\]|[^:]+)(?::\d+)?$/.exec(header.trim().toLowerCase());
  return m?.[1];
}

/** The names a loopback listener is reached by; a browser's rebound DNS name is none of them. */
export function loopbackHosts(bindHost: string): readonly string[] | undefined {
  const loopback = ['127.0.0.1', 'localhost', '[::1]'];
  return bindHost === '127.0.0.1' || bindHost === 'localhost' || bindHost === '::1' ? loopback : undefined;
}

/** Reads a JSON body (bounded); a string result is the reason it was refused. */
function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<{ value: unknown } | string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) tooLarge = true;
      else chunks.push(chunk);
    });
    req.on('error', () => resolve('request body could not be read'));
    req.on('end', () => {
      if (tooLarge) return resolve(`request body exceeds ${maxBytes} bytes`);
      if (size === 0) return resolve({ value: undefined });
      try {
        resolve({ value: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
      } catch {
        resolve('request body is not JSON');
      }
    });
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function publicView(d: DeviceRecord, nowMs: number): Record<string, unknown> {
  const stale = isStale(d, nowMs);
  return {
    id: d.id,
    kid: d.kid,
    // Public, and what an auditor passes to `ward audit verify --device-key`: the controller vouches for it.
    publicKey: d.publicKey,
    online: d.online && !stale,
    stale,
    lifecycle: d.lifecycle ?? null,
    lastSeen: d.lastSeen !== undefined ? new Date(d.lastSeen * 1000).toISOString() : null,
    agentVersion: d.agentVersion ?? null,
    protocol: d.protocol ?? null,
    plugins: d.plugins ?? [],
    ...(d.offlineCause !== undefined && !d.online ? { offlineCause: d.offlineCause } : {}),
    ...(d.identity
      ? {
          identity: {
            status: d.identity.status,
            site: d.identity.site,
            line: d.identity.line,
            cell: d.identity.cell,
            roles: d.identity.roles,
            enrolledAt: new Date(d.identity.enrolledAt * 1000).toISOString(),
            certSerial: d.identity.certSerial,
            certNotAfter: new Date(d.identity.certNotAfter * 1000).toISOString(),
            ...(d.identity.revokedAt !== undefined
              ? { revokedAt: new Date(d.identity.revokedAt * 1000).toISOString(), revokeReason: d.identity.revokeReason }
              : {}),
          },
        }
      : {}),
  };
}
