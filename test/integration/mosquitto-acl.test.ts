import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { createCsr, createFleetCa, type FleetCa, generateTlsKey, issueClientCert, issueCrl, issueServerCert } from '../../agent/shared/x509.js';
import {
  CONTROLLER_IDENTITY,
  enrollUsername,
  mosquittoPasswordHash,
  renderEnrollAcl,
  renderMosquittoConf,
  renderMtlsAcl,
  renderPasswordFile,
} from '../../controller/mosquitto.js';
import { startMosquittoWithConfig } from '../helpers/mosquitto.js';
import { freePort, waitFor } from '../helpers/net.js';
import { tempDir } from '../helpers/tmp.js';

// A real Mosquitto (Debian 2.0.11) running the controller's generated config: two TLS listeners on loopback
// with per-listener security, certificates from agent/shared/x509.ts, clients from mqtt.js.
//
// What 2.0.11 does, as found here:
//  - the acl_file plugin grants every SUBSCRIBE (its source says "FIXME - implement ACL subscription
//    strings"); read access is checked per message at delivery. So a forbidden subscription gets a normal
//    SUBACK and simply never delivers anything: tests assert on what arrives, never on SUBACK 0x80.
//  - a forbidden PUBLISH is dropped silently under MQTT 3.1.1 (a QoS 1 one is even PUBACKed); under MQTT 5
//    the PUBACK carries 0x87 Not authorized.
//  - SIGHUP re-reads acl_file, password_file and (for require_certificate listeners that had a crlfile at
//    start) the CRL. A revoked certificate then fails the TLS handshake (alert 44 "certificate revoked");
//    a revoked device still connected keeps its connection but loses every permission; a password user
//    removed from the file is disconnected.

const run = promisify(execFile);
const HOUR = 3600_000;
const CODE_1 = '0123456789abcdef';
const CODE_2 = 'fedcba9876543210';

interface Identity {
  readonly cert: string;
  readonly key: string;
  readonly serial: string;
}

async function identity(ca: FleetCa, cn: string): Promise<Identity> {
  const { privateKeyPem } = await generateTlsKey();
  const csrPem = await createCsr({ privateKeyPem, commonName: cn });
  const now = Date.now();
  const issued = await issueClientCert(ca, { csrPem, commonName: cn, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR) });
  return { cert: issued.certPem, key: privateKeyPem, serial: issued.serial };
}

/** A CA, a broker certificate for 127.0.0.1, identities, and Mosquitto running the generated configuration. */
async function fleetBroker(t: ExecutionContext) {
  const dir = await tempDir(t, 'ward-mosq-acl-');
  const ca = await createFleetCa({ commonName: 'Ward test fleet CA', validDays: 2 });
  const server = await issueServerCert(ca, { hosts: ['127.0.0.1'], validDays: 1 });
  const [gwA, gwB, controller] = await Promise.all([identity(ca, 'gw-a'), identity(ca, 'gw-b'), identity(ca, CONTROLLER_IDENTITY)]);
  // Mosquitto reads every file after dropping to its own user: make them world-readable (test keys only).
  const put = async (name: string, text: string) => {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o644 });
    return path;
  };
  const crl = (revoked: readonly string[]) =>
    issueCrl(ca, {
      revoked: revoked.map((serial) => ({ serial, revokedAt: new Date() })),
      thisUpdate: new Date(Date.now() - HOUR),
      nextUpdate: new Date(Date.now() + HOUR),
    });
  const passwords = (codes: readonly (readonly [string, string])[]) =>
    renderPasswordFile(codes.map(([code, token]) => ({ username: enrollUsername(code), hash: mosquittoPasswordHash(token) })));
  const files = {
    caFile: await put('ca.pem', ca.certPem),
    certFile: await put('server.pem', server.certPem),
    keyFile: await put('server.key', server.keyPem),
    crlFile: await put('crl.pem', await crl([])),
    mtlsAclFile: await put('mtls.acl', renderMtlsAcl(['gw-a', 'gw-b'])),
    enrollAclFile: await put('enroll.acl', renderEnrollAcl([CODE_1])),
    passwordFile: await put('passwd', passwords([[CODE_1, 'token-one_AbC']])),
  };
  const mtlsPort = await freePort();
  const enrollPort = await freePort();
  const broker = await startMosquittoWithConfig({
    dir,
    ports: [mtlsPort, enrollPort],
    configText: renderMosquittoConf({ host: '127.0.0.1', mtlsPort, enrollPort, ...files }),
  });
  t.teardown(() => broker.stop());
  t.teardown(() => {
    if (!t.passed) t.log(broker.output());
  });

  const open = (port: number, options: IClientOptions) => connectClient(t, `mqtts://127.0.0.1:${port}`, { ca: ca.certPem, ...options });
  return {
    ca,
    broker,
    ids: { gwA, gwB, controller },
    /** Rewrites the ACLs, password file and CRL in place (the caller then sends SIGHUP). */
    async rewrite(state: { devices: string[]; codes: [string, string][]; revoked: string[] }) {
      await put('mtls.acl', renderMtlsAcl(state.devices));
      await put('enroll.acl', renderEnrollAcl(state.codes.map(([code]) => code)));
      await put('passwd', passwords(state.codes));
      await put('crl.pem', await crl(state.revoked));
    },
    mtls: (id: { cert: string; key: string } | undefined, protocolVersion: 4 | 5) =>
      open(mtlsPort, { ...(id && { cert: id.cert, key: id.key }), protocolVersion }),
    enroll: (code: string, password: string, protocolVersion: 4 | 5) => open(enrollPort, { username: enrollUsername(code), password, protocolVersion }),
  };
}

interface Client {
  readonly mqtt: MqttClient;
  readonly received: string[];
  /** Waits (bounded) until `topic=payload` has arrived. */
  saw(topic: string, payload: string): Promise<void>;
  has(topic: string, payload: string): boolean;
}

/** Connects once (no reconnects); resolves with a message-recording client or rejects with the refusal (CONNACK code or TLS error code). */
function connectClient(t: ExecutionContext, url: string, options: IClientOptions): Promise<Client> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 10_000, clean: true, ...options });
    t.teardown(() => client.endAsync(true));
    const received: string[] = [];
    client.on('message', (topic, payload) => received.push(`${topic}=${payload.toString()}`));
    client.once('connect', () =>
      resolve({
        mqtt: client,
        received,
        has: (topic, payload) => received.includes(`${topic}=${payload}`),
        saw: async (topic, payload) => {
          await waitFor(`${topic}=${payload}`, () => received.includes(`${topic}=${payload}`), 10_000, 20);
        },
      }),
    );
    client.once('error', (err) => reject(err));
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

async function refusal(attempt: Promise<Client>): Promise<string | number> {
  try {
    await attempt;
  } catch (err) {
    return (err as { code?: string | number }).code ?? (err as Error).message;
  }
  throw new Error('the connection was accepted');
}

test('devices are confined to their own subtree; the controller sees and commands all of them', async (t) => {
  const f = await fleetBroker(t);
  const controller = await f.mtls(f.ids.controller, 5);
  await controller.mqtt.subscribeAsync(['ward/v1/#', '$share/ward-controller/ward/v1/+/state'], { qos: 1 });

  for (const v of [4, 5] as const) {
    const gwA = await f.mtls(f.ids.gwA, v);
    const gwB = await f.mtls(f.ids.gwB, v);
    await gwA.mqtt.subscribeAsync(['ward/v1/gw-a/#', 'ward/v1/gw-b/#'], { qos: 1 });
    await gwB.mqtt.subscribeAsync('ward/v1/gw-b/#', { qos: 1 });

    // gw-a's own topics work both ways; a state published to gw-b's tree never reaches anybody.
    await gwA.mqtt.publishAsync('ward/v1/gw-a/state', `own-${v}`, { qos: 1 });
    await controller.saw('ward/v1/gw-a/state', `own-${v}`);
    await gwA.saw('ward/v1/gw-a/state', `own-${v}`);
    if (v === 5) {
      const denied = await t.throwsAsync(gwA.mqtt.publishAsync('ward/v1/gw-b/state', `forged-${v}`, { qos: 1 }));
      t.is((denied as { code?: number }).code, 0x87, 'MQTT 5 says "not authorised" in the PUBACK');
    } else {
      await gwA.mqtt.publishAsync('ward/v1/gw-b/state', `forged-${v}`, { qos: 1 }); // 3.1.1: PUBACKed and dropped
    }
    await gwA.mqtt.publishAsync(`ward/v1/_enroll/${CODE_1}/res`, `forged-${v}`, { qos: 1 }).catch(() => undefined);
    // Messages from one connection are routed in order, so once the marker is in, the forgeries had their chance.
    await gwA.mqtt.publishAsync('ward/v1/gw-a/state', `marker-${v}`, { qos: 1 });
    await controller.saw('ward/v1/gw-a/state', `marker-${v}`);
    t.false(controller.has('ward/v1/gw-b/state', `forged-${v}`));
    t.false(controller.has(`ward/v1/_enroll/${CODE_1}/res`, `forged-${v}`));
    // Delivery to another subscriber is ordered only on its own connection: a marker there, sent after, comes after.
    await controller.mqtt.publishAsync('ward/v1/gw-b/cmd', `marker-${v}`, { qos: 1 });
    await gwB.saw('ward/v1/gw-b/cmd', `marker-${v}`);
    t.false(gwB.has('ward/v1/gw-b/state', `forged-${v}`));

    // The controller commands both; gw-a's subscription to gw-b's tree was granted but delivers nothing.
    await controller.mqtt.publishAsync('ward/v1/gw-b/cmd', `for-b-${v}`, { qos: 1 });
    await controller.mqtt.publishAsync('ward/v1/gw-a/cmd', `for-a-${v}`, { qos: 1 });
    await gwB.saw('ward/v1/gw-b/cmd', `for-b-${v}`);
    await gwA.saw('ward/v1/gw-a/cmd', `for-a-${v}`);
    t.false(gwA.has('ward/v1/gw-b/cmd', `for-b-${v}`));
    await gwA.mqtt.endAsync();
    await gwB.mqtt.endAsync();
  }
});

test('an enrollment account reaches only its own request and response topics; bad credentials are refused', async (t) => {
  const f = await fleetBroker(t);
  const controller = await f.mtls(f.ids.controller, 5);
  await controller.mqtt.subscribeAsync(['ward/v1/#'], { qos: 1 });
  const gwA = await f.mtls(f.ids.gwA, 4);
  await gwA.mqtt.subscribeAsync('ward/v1/gw-a/#', { qos: 1 });

  for (const v of [4, 5] as const) {
    const token = await f.enroll(CODE_1, 'token-one_AbC', v);
    await token.mqtt.subscribeAsync([`ward/v1/_enroll/${CODE_1}/res`, `ward/v1/_enroll/${CODE_1}/req`, 'ward/v1/#'], { qos: 1 });

    await token.mqtt.publishAsync(`ward/v1/_enroll/${CODE_1}/req`, `csr-${v}`, { qos: 1 });
    await controller.saw(`ward/v1/_enroll/${CODE_1}/req`, `csr-${v}`);
    for (const topic of [`ward/v1/_enroll/${CODE_1}/res`, 'ward/v1/gw-a/cmd', `ward/v1/_enroll/${CODE_2}/req`]) {
      await token.mqtt.publishAsync(topic, `forged-${v}`, { qos: 1 }).catch(() => undefined);
    }
    await token.mqtt.publishAsync(`ward/v1/_enroll/${CODE_1}/req`, `marker-${v}`, { qos: 1 });
    await controller.saw(`ward/v1/_enroll/${CODE_1}/req`, `marker-${v}`);
    t.false(controller.received.some((m) => m.endsWith(`=forged-${v}`)));
    await controller.mqtt.publishAsync('ward/v1/gw-a/cmd', `marker-${v}`, { qos: 1 });
    await gwA.saw('ward/v1/gw-a/cmd', `marker-${v}`);
    t.false(gwA.has('ward/v1/gw-a/cmd', `forged-${v}`));

    // The controller's answer arrives; the account cannot read back its own request nor anything else.
    await gwA.mqtt.publishAsync('ward/v1/gw-a/state', `device-${v}`, { qos: 1 });
    await controller.saw('ward/v1/gw-a/state', `device-${v}`);
    await controller.mqtt.publishAsync(`ward/v1/_enroll/${CODE_1}/res`, `cert-${v}`, { qos: 1 });
    await token.saw(`ward/v1/_enroll/${CODE_1}/res`, `cert-${v}`);
    // (MQTT 5 delivers one copy per matching subscription, hence the Set.)
    t.deepEqual([...new Set(token.received)], [`ward/v1/_enroll/${CODE_1}/res=cert-${v}`]);
    await token.mqtt.endAsync();
  }

  t.is(await refusal(f.enroll(CODE_1, 'wrong-token', 4)), 5, 'MQTT 3.1.1 CONNACK: not authorised');
  t.is(await refusal(f.enroll(CODE_1, 'wrong-token', 5)), 0x87, 'MQTT 5 CONNACK: not authorised');
  t.is(await refusal(f.enroll(CODE_2, 'token-one_AbC', 5)), 0x87, 'an unknown code');

  // The mTLS listener wants a certificate from the fleet CA, whatever else the client offers.
  t.regex(String(await refusal(f.mtls(undefined, 4))), /^ERR_SSL_/);
  t.regex(String(await refusal(f.mtls(undefined, 5))), /^ERR_SSL_/);
  const foreignCa = await createFleetCa({ commonName: 'Impostor CA', validDays: 1 });
  const impostor = await identity(foreignCa, 'gw-a');
  t.is(await refusal(f.mtls(impostor, 5)), 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA');
});

test('revocation: after SIGHUP a revoked device fails the TLS handshake, and its live connection loses every permission', async (t) => {
  const f = await fleetBroker(t);
  const controller = await f.mtls(f.ids.controller, 5);
  await controller.mqtt.subscribeAsync('ward/v1/#', { qos: 1 });
  const liveB = await f.mtls(f.ids.gwB, 5);
  await liveB.mqtt.subscribeAsync('ward/v1/gw-b/#', { qos: 1 });
  await liveB.mqtt.publishAsync('ward/v1/gw-b/state', 'before', { qos: 1 });
  await controller.saw('ward/v1/gw-b/state', 'before');

  await f.rewrite({ devices: ['gw-a'], codes: [[CODE_1, 'token-one_AbC']], revoked: [f.ids.gwB.serial] });
  await f.broker.reload();

  // 2.0.11 re-reads the CRL on SIGHUP: no restart needed for new connections.
  for (const v of [4, 5] as const) t.is(await refusal(f.mtls(f.ids.gwB, v)), 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED');
  const gwA = await f.mtls(f.ids.gwA, 5);
  await gwA.mqtt.subscribeAsync('ward/v1/gw-a/#', { qos: 1 });

  // The connection opened before the revocation survives (TLS is not re-checked) but can neither publish nor read.
  t.true(liveB.mqtt.connected);
  const denied = await t.throwsAsync(liveB.mqtt.publishAsync('ward/v1/gw-b/state', 'after', { qos: 1 }));
  t.is((denied as { code?: number }).code, 0x87);
  await controller.mqtt.publishAsync('ward/v1/gw-b/cmd', 'too-late', { qos: 1 });
  await controller.mqtt.publishAsync('ward/v1/gw-a/cmd', 'marker', { qos: 1 });
  await gwA.saw('ward/v1/gw-a/cmd', 'marker');
  t.false(liveB.has('ward/v1/gw-b/cmd', 'too-late'));
  t.false(controller.has('ward/v1/gw-b/state', 'after'));

  // Still revoked after a full restart (the CRL file is the source of truth, not broker memory).
  await f.broker.restart();
  t.is(await refusal(f.mtls(f.ids.gwB, 5)), 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED');
  const again = await f.mtls(f.ids.gwA, 4);
  t.true(again.mqtt.connected);
});

test('a new enrollment code is usable after SIGHUP without a restart; a consumed one is cut off', async (t) => {
  const f = await fleetBroker(t);
  const controller = await f.mtls(f.ids.controller, 5);
  await controller.mqtt.subscribeAsync('ward/v1/_enroll/+/req', { qos: 1 });
  t.is(await refusal(f.enroll(CODE_2, 'token-two_XyZ', 5)), 0x87, 'not yet open');
  const first = await f.enroll(CODE_1, 'token-one_AbC', 5);
  let firstClosed = false;
  first.mqtt.once('close', () => {
    firstClosed = true;
  });

  await f.rewrite({ devices: ['gw-a', 'gw-b'], codes: [[CODE_2, 'token-two_XyZ']], revoked: [] });
  await f.broker.reload();

  const second = await f.enroll(CODE_2, 'token-two_XyZ', 4);
  await second.mqtt.subscribeAsync(`ward/v1/_enroll/${CODE_2}/res`, { qos: 1 });
  await second.mqtt.publishAsync(`ward/v1/_enroll/${CODE_2}/req`, 'csr', { qos: 1 });
  await controller.saw(`ward/v1/_enroll/${CODE_2}/req`, 'csr');
  await controller.mqtt.publishAsync(`ward/v1/_enroll/${CODE_2}/res`, 'cert', { qos: 1 });
  await second.saw(`ward/v1/_enroll/${CODE_2}/res`, 'cert');

  // The reload re-checks connected password users: the consumed code's session is dropped and cannot come back.
  await waitFor('the consumed code session to be closed', () => firstClosed, 10_000, 20);
  t.is(await refusal(f.enroll(CODE_1, 'token-one_AbC', 5)), 0x87);
});

test('the $7$ hash is byte-identical to mosquitto_passwd for the same salt', async (t) => {
  const dir = await tempDir(t, 'ward-mosq-pw-');
  const file = join(dir, 'passwd');
  await writeFile(file, '');
  const token = 'tok_en-With.Mixed+chars/ünï';
  await run('mosquitto_passwd', ['-b', file, 'someone', token]);
  const line = (await readFile(file, 'utf8')).trim();
  const m = /^someone:\$7\$101\$([A-Za-z0-9+/]{16})\$[A-Za-z0-9+/]{86}==$/.exec(line);
  t.truthy(m, line);
  const salt = Buffer.from(m?.[1] ?? '', 'base64');
  t.is(`someone:${mosquittoPasswordHash(token, salt)}`, line);
  t.is(renderPasswordFile([{ username: 'someone', hash: mosquittoPasswordHash(token, salt) }]), `${line}\n`);
});

test('the generators refuse anything that could inject or alter a config line', (t) => {
  for (const bad of ['gw a', 'gw-a\nuser evil', 'gw-a/#', '+', '#', '_enroll-x', '', 'ward:controller']) {
    t.throws(() => renderMtlsAcl([bad]), { instanceOf: TypeError }, JSON.stringify(bad));
  }
  t.throws(() => renderMtlsAcl(['gw-a', 'gw-a']), { instanceOf: TypeError });
  for (const bad of ['0123456789ABCDEF', '0123456789abcde', '0123456789abcdef\n', '0123456789abcde#']) {
    t.throws(() => renderEnrollAcl([bad]), { instanceOf: TypeError }, JSON.stringify(bad));
  }
  const hash = mosquittoPasswordHash('x');
  for (const username of ['_enroll:0123456789abcdef', 'a b', 'a\nb', '#comment', '']) {
    t.throws(() => renderPasswordFile([{ username, hash }]), { instanceOf: TypeError }, JSON.stringify(username));
  }
  t.throws(() => renderPasswordFile([{ username: 'a', hash: `${hash}\nb:${hash}` }]), { instanceOf: TypeError });
  t.throws(() => mosquittoPasswordHash('a\0b'), { instanceOf: TypeError });
  t.throws(() => mosquittoPasswordHash('a', Buffer.alloc(8)), { instanceOf: TypeError });
  const base = {
    host: '127.0.0.1',
    mtlsPort: 8883,
    enrollPort: 8884,
    caFile: '/etc/ward/ca.pem',
    certFile: '/etc/ward/server.pem',
    keyFile: '/etc/ward/server.key',
    mtlsAclFile: '/etc/ward/mtls.acl',
    enrollAclFile: '/etc/ward/enroll.acl',
    passwordFile: '/etc/ward/passwd',
  };
  t.notThrows(() => renderMosquittoConf(base));
  t.throws(() => renderMosquittoConf({ ...base, caFile: '/etc/ward/ca.pem\nallow_anonymous true' }), { instanceOf: TypeError });
  t.throws(() => renderMosquittoConf({ ...base, keyFile: 'relative.key' }), { instanceOf: TypeError });
  t.throws(() => renderMosquittoConf({ ...base, host: '127.0.0.1 8885' }), { instanceOf: TypeError });
  t.throws(() => renderMosquittoConf({ ...base, enrollPort: 8883 }), { instanceOf: TypeError });
  t.regex(renderMosquittoConf({ ...base, persistenceDir: '/var/lib/ward/mosquitto' }), /^persistence_location \/var\/lib\/ward\/mosquitto\/$/m);
});
