import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
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
}

type Handler = (req: IncomingMessage, params: string[]) => Promise<[number, unknown]>;

export function createApiServer(backend: ApiBackend): Server {
  const routes: { method: string; pattern: RegExp; handler: Handler }[] = [
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
      method: 'POST',
      pattern: /^\/api\/devices\/([^/]+)\/(ping|status)$/,
      handler: async (_req, [id, method]) => {
        if (!isDeviceId(id ?? '') || (await backend.getDevice(id as string)) === undefined) {
          return [404, { error: { code: ErrorCodes.CONTROLLER_DEVICE_UNKNOWN, message: `no device ${id}` } }];
        }
        return [200, { result: await backend.callDevice(id as string, method as string) }];
      },
    },
  ];

  return createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const matching = routes.filter((r) => r.pattern.test(url.pathname));
    if (matching.length === 0) return send(res, 404, { error: { code: 'WARD_API_NOT_FOUND', message: `no route ${url.pathname}` } });
    const route = matching.find((r) => r.method === req.method);
    if (route === undefined) {
      res.setHeader('allow', matching.map((r) => r.method).join(', '));
      return send(res, 405, { error: { code: 'WARD_API_METHOD_NOT_ALLOWED', message: `${req.method} not allowed on ${url.pathname}` } });
    }
    const params = (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodeURIComponent);
    route
      .handler(req, params)
      .then(([status, body]) => send(res, status, body))
      .catch((err: unknown) => {
        const status = err instanceof WardError && err.code === ErrorCodes.RPC_TIMEOUT ? 504 : err instanceof WardError && err.retryable ? 503 : 500;
        send(res, status, {
          error: err instanceof WardError ? { code: err.code, message: err.message } : { code: 'WARD_API_INTERNAL', message: describeError(err) },
        });
      });
    req.resume();
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
    online: d.online && !stale,
    stale,
    lifecycle: d.lifecycle ?? null,
    lastSeen: d.lastSeen !== undefined ? new Date(d.lastSeen * 1000).toISOString() : null,
    agentVersion: d.agentVersion ?? null,
    protocol: d.protocol ?? null,
    plugins: d.plugins ?? [],
    ...(d.offlineCause !== undefined && !d.online ? { offlineCause: d.offlineCause } : {}),
  };
}
