import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { Aedes } from 'aedes';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { ErrorCodes, WardError } from '../agent/core/errors.js';

/**
 * The embedded MQTT broker (aedes, MQTT 3.1.1) on TCP and WebSocket, for the
 * one-machine deployment and tests. Per-device ACLs arrive with the identity
 * issue through aedes' authenticate/authorizePublish/authorizeSubscribe hooks.
 */
export interface EmbeddedBroker {
  readonly tcpPort: number;
  readonly wsPort: number | undefined;
  readonly url: string;
  close(): Promise<void>;
}

export async function startEmbeddedBroker(options: { host: string; tcpPort: number; wsPort: number | null }): Promise<EmbeddedBroker> {
  const aedes = await Aedes.createBroker();
  const tcp = createServer(aedes.handle);
  const tcpPort = await listen(tcp, options.host, options.tcpPort, 'MQTT');
  let http: HttpServer | undefined;
  let wss: WebSocketServer | undefined;
  let wsPort: number | undefined;
  if (options.wsPort !== null) {
    http = createHttpServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
    });
    wss = new WebSocketServer({ server: http, path: '/mqtt' });
    wss.on('connection', (ws, req) => {
      const stream = createWebSocketStream(ws);
      aedes.handle(stream as never, req as never);
    });
    try {
      wsPort = await listen(http, options.host, options.wsPort, 'MQTT-over-WebSocket');
    } catch (err) {
      tcp.close();
      await new Promise<void>((r) => aedes.close(() => r()));
      throw err;
    }
  }
  const url = `mqtt://${options.host.includes(':') ? `[${options.host}]` : options.host}:${tcpPort}`;
  return {
    tcpPort,
    wsPort,
    url,
    async close() {
      for (const client of wss?.clients ?? []) client.terminate();
      await new Promise<void>((r) => (wss ? wss.close(() => r()) : r()));
      await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
      http?.closeAllConnections();
      await new Promise<void>((r) => aedes.close(() => r()));
      await new Promise<void>((r) => tcp.close(() => r()));
    },
  };
}

export function listen(server: Server | HttpServer, host: string, port: number, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        new WardError(
          ErrorCodes.CONTROLLER_LISTEN_FAILED,
          err.code === 'EADDRINUSE'
            ? `${what} port ${host}:${port} is already in use; choose another port`
            : `${what} cannot listen on ${host}:${port}: ${err.message}`,
          { cause: err, details: { host, port } },
        ),
      );
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    });
  });
}
