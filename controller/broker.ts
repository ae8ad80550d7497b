import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { Aedes, type Client } from 'aedes';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { ErrorCodes, WardError } from '../agent/core/errors.js';
import {
  canPublish,
  canSubscribe,
  clientIdAllowed,
  type Principal,
  parseClaimUsername,
  parseEnrollUsername,
  principalFromCertificateCn,
  sparkplugPacketAllowed,
} from './acl.js';

/**
 * The embedded MQTT broker (aedes, MQTT 3.1.1), for the one-machine
 * deployment and tests.
 *
 * Secured (a fleet exists): one TLS listener that asks for a client
 * certificate but lets the handshake finish without one, so that both kinds
 * of client can reach it: enrolled devices and the controller authenticate
 * by certificate (CN = identity, chain checked against the fleet CA), and
 * token accounts by username/password. `acl.ts` decides every publish and
 * subscribe; a client that tries something it may not do is disconnected
 * (aedes closes the connection on a refused publish). WebSocket is off.
 *
 * Open (no fleet yet): plain TCP and WebSocket with no authentication, for
 * development and the tests that predate enrollment; the controller logs a
 * warning.
 */
export interface BrokerAuth {
  /** Server certificate chain (leaf first, then the fleet CA so a gateway can check its pin), key, and the CA for client certificates. */
  readonly tls: { readonly certPem: string; readonly keyPem: string; readonly caPem: string };
  checkToken(codeId: string, token: string): Promise<boolean>;
  checkClaim(claimId: string, claimCode: string): Promise<boolean>;
  /** Is this device active, and `serial` (hex) one of the certificates it may still use? */
  isDeviceActive(deviceId: string, serial: string): Promise<boolean>;
  /** Told about each refusal, for audit. */
  onRefused?(event: { what: 'connect' | 'publish' | 'subscribe'; identity: string; topic?: string; reason: string }): void;
}

export interface EmbeddedBroker {
  readonly tcpPort: number;
  readonly wsPort: number | undefined;
  readonly url: string;
  /** Drops every connection of a device (after revocation). */
  disconnect(deviceId: string): number;
  close(): Promise<void>;
}

function authError(message: string, returnCode: 2 | 4 | 5): Error & { returnCode: number } {
  return Object.assign(new Error(message), { returnCode });
}

export async function startEmbeddedBroker(options: { host: string; tcpPort: number; wsPort: number | null; auth?: BrokerAuth }): Promise<EmbeddedBroker> {
  const aedes = await Aedes.createBroker();
  const auth = options.auth;
  const principals = new WeakMap<Client, Principal>();
  if (auth) {
    aedes.authenticate = (client, username, password, done) => {
      const socket = client.conn as Partial<TLSSocket>;
      const refuse = (reason: string, code: 2 | 4 | 5, identity: string) => {
        auth.onRefused?.({ what: 'connect', identity, reason });
        done(authError(reason, code) as never, false);
      };
      const cert = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined;
      const hasCert = cert !== undefined && cert !== null && Object.keys(cert).length > 0;
      if (hasCert) {
        const cn = typeof cert.subject?.CN === 'string' ? cert.subject.CN : undefined;
        if (!socket.authorized) return refuse(`client certificate not issued by the fleet CA (${socket.authorizationError ?? 'unverified'})`, 5, cn ?? '?');
        const principal = principalFromCertificateCn(cn);
        if (principal === undefined) return refuse(`certificate CN ${JSON.stringify(cn)} names no Ward identity`, 5, cn ?? '?');
        if (!clientIdAllowed(principal, client.id)) return refuse(`client id ${JSON.stringify(client.id)} does not belong to ${cn}`, 2, cn ?? '?');
        // An observer's certificate is issued by the fleet CA like the controller's; it can only read Sparkplug.
        if (principal.kind === 'controller' || principal.kind === 'observer') {
          principals.set(client, principal);
          return done(null, true);
        }
        const serial = typeof cert.serialNumber === 'string' ? cert.serialNumber : '';
        auth.isDeviceActive(principal.id, serial).then(
          (active) => {
            if (!active)
              return refuse(`device ${principal.id} is not enrolled, is revoked, or presents a superseded certificate (serial ${serial})`, 5, principal.id);
            principals.set(client, principal);
            done(null, true);
          },
          (err: Error) => refuse(`device check failed: ${err.message}`, 5, principal.id),
        );
        return;
      }
      const claimId = parseClaimUsername(username);
      if (claimId !== undefined && !clientIdAllowed({ kind: 'claim', claimId }, client.id))
        return refuse(`client id ${JSON.stringify(client.id)} does not belong to ${username}`, 2, username ?? '?');
      if (claimId !== undefined && password !== undefined) {
        auth.checkClaim(claimId, password.toString('utf8')).then(
          (ok) => {
            if (!ok) return refuse(`claim ${claimId} is not confirmed or the claim code is wrong`, 4, username ?? '?');
            principals.set(client, { kind: 'claim', claimId });
            done(null, true);
          },
          (err: Error) => refuse(`claim check failed: ${err.message}`, 4, username ?? '?'),
        );
        return;
      }
      const codeId = parseEnrollUsername(username);
      if (codeId === undefined || password === undefined) return refuse('no client certificate and no enrollment token', 4, username ?? 'anonymous');
      if (!clientIdAllowed({ kind: 'enroll', codeId }, client.id))
        return refuse(`client id ${JSON.stringify(client.id)} does not belong to ${username}`, 2, username ?? '?');
      auth.checkToken(codeId, password.toString('utf8')).then(
        (ok) => {
          if (!ok) return refuse(`enrollment token for ${codeId} is unknown, used or expired`, 4, username ?? '?');
          principals.set(client, { kind: 'enroll', codeId });
          done(null, true);
        },
        (err: Error) => refuse(`token check failed: ${err.message}`, 4, username ?? '?'),
      );
    };
    aedes.authorizePublish = (client, packet, done) => {
      const principal = client ? principals.get(client) : undefined;
      // client is null only for the broker's own publishes ($SYS), which never reach here in our setup.
      if (client === null) return done(null);
      if (principal?.kind === 'device' && !sparkplugPacketAllowed(packet)) {
        auth.onRefused?.({ what: 'publish', identity: describe(principal), topic: packet.topic, reason: 'retained or oversized Sparkplug message' });
        return done(new Error(`not authorised to publish to ${packet.topic}: retained or oversized Sparkplug message`));
      }
      if (principal !== undefined && canPublish(principal, packet.topic)) return done(null);
      auth.onRefused?.({ what: 'publish', identity: describe(principal), topic: packet.topic, reason: 'outside its topics' });
      done(new Error(`not authorised to publish to ${packet.topic}`));
    };
    aedes.authorizeSubscribe = (client, sub, done) => {
      const principal = principals.get(client);
      if (principal !== undefined && canSubscribe(principal, sub.topic)) return done(null, sub);
      auth.onRefused?.({ what: 'subscribe', identity: describe(principal), topic: sub.topic, reason: 'outside its topics' });
      // A null subscription makes aedes answer SUBACK 0x80 (failure) for this filter.
      done(null, null);
    };
  }
  const tcp: Server = auth
    ? createTlsServer({ cert: auth.tls.certPem, key: auth.tls.keyPem, ca: auth.tls.caPem, requestCert: true, rejectUnauthorized: false }, aedes.handle)
    : createServer(aedes.handle);
  const tcpPort = await listen(tcp, options.host, options.tcpPort, auth ? 'MQTT (TLS)' : 'MQTT');
  let http: HttpServer | undefined;
  let wss: WebSocketServer | undefined;
  let wsPort: number | undefined;
  if (options.wsPort !== null && !auth) {
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
  const url = `${auth ? 'mqtts' : 'mqtt'}://${options.host.includes(':') ? `[${options.host}]` : options.host}:${tcpPort}`;
  return {
    tcpPort,
    wsPort,
    url,
    disconnect(deviceId: string) {
      let n = 0;
      const clients = (aedes as unknown as { clients: Record<string, Client> }).clients;
      for (const client of Object.values(clients)) {
        const p = principals.get(client);
        if (p?.kind === 'device' && p.id === deviceId) {
          client.close();
          n++;
        }
      }
      return n;
    },
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

function describe(p: Principal | undefined): string {
  if (p === undefined) return 'unauthenticated';
  switch (p.kind) {
    case 'device':
      return p.id;
    case 'enroll':
      return `_enroll-${p.codeId}`;
    case 'claim':
      return `_claim-${p.claimId}`;
    case 'observer':
      return 'ward:observer';
    case 'controller':
      return 'ward:controller';
  }
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
