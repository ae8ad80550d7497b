import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { certifyController, initFleet, openRootKey, ROOT_FILE } from '../../controller/fleet.js';
import { logAuditSink } from '../audit-log.js';
import { loadConfigFile } from '../config/load.js';
import { type AgentConfig, agentConfigSchema } from '../config/schema.js';
import { systemClock } from '../core/clock.js';
import { ErrorCodes, WardError } from '../core/errors.js';
import { Lifecycle, type LifecycleEvent, nextState } from '../core/lifecycle.js';
import { loadOrCreateClaim } from '../identity/claim.js';
import { DEVICE_KEY_FILE, loadOrCreateSigningKey } from '../identity/keystore.js';
import { deriveDeviceId, provision } from '../identity/provision.js';
import { IdentityStore } from '../identity/store.js';
import { readRootFile } from '../identity/trust.js';
import { createLogger } from '../log.js';
import { rootFingerprint } from '../shared/fleet-root.js';
import { qrInfo, renderPng, renderSvg, renderTerminal } from '../shared/qr.js';
import { LifecycleStore } from '../state/lifecycle-store.js';
import { WARD_VERSION } from '../version.js';

/**
 * The identity commands: fleet keys (operator, offline), enrollment codes
 * (controller), provisioning and factory reset (gateway). Human-readable
 * output on stdout, errors through the common exit-code path.
 */
const MIN_PASSPHRASE = 12;

/** The passphrase comes from a file or WARD_FLEET_PASSPHRASE, never from a command-line argument (ps would show it). */
export async function readPassphrase(file: string | undefined): Promise<string> {
  const text = file !== undefined ? await readFile(file, 'utf8') : process.env.WARD_FLEET_PASSPHRASE;
  const passphrase = text?.replace(/\r?\n$/, '');
  if (!passphrase) {
    throw new WardError(ErrorCodes.FLEET_PASSPHRASE_WRONG, 'no passphrase: pass --passphrase-file FILE or set WARD_FLEET_PASSPHRASE');
  }
  return passphrase;
}

export async function fleetInit(opts: { dir: string; passphraseFile?: string; name?: string }, out: NodeJS.WritableStream): Promise<void> {
  const passphrase = await readPassphrase(opts.passphraseFile);
  if (passphrase.length < MIN_PASSPHRASE) {
    throw new WardError(ErrorCodes.FLEET_PASSPHRASE_WRONG, `the fleet root passphrase must be at least ${MIN_PASSPHRASE} characters`);
  }
  const r = await initFleet({ dir: opts.dir, passphrase, ...(opts.name !== undefined ? { name: opts.name } : {}) });
  out.write(
    [
      `fleet root created in ${opts.dir}`,
      `  root key        ${r.keyFile} (sealed with your passphrase; keep it offline)`,
      `  root metadata   ${r.rootFile} (bake into gateway images: npm run build:image -- --fleet-root ${r.rootFile})`,
      `  root key id     ${r.rootKid}`,
      `  fingerprint     ${r.rootFingerprint}`,
      '',
    ].join('\n'),
  );
}

export async function fleetCertify(
  opts: { dir: string; passphraseFile?: string; controllerStateDir: string; validDays?: number },
  out: NodeJS.WritableStream,
): Promise<void> {
  const passphrase = await readPassphrase(opts.passphraseFile);
  const r = await certifyController({
    fleetDir: opts.dir,
    passphrase,
    controllerStateDir: opts.controllerStateDir,
    ...(opts.validDays !== undefined ? { validDays: opts.validDays } : {}),
  });
  out.write(
    [
      `controller in ${opts.controllerStateDir} certified by the fleet root until ${new Date(r.notAfter * 1000).toISOString()}`,
      `  controller key  ${r.controllerKid} (${r.controllerPublicKey})`,
      `  fleet CA        sha256 ${r.caFingerprint}${r.caCreated ? ' (created)' : ''}`,
      '',
    ].join('\n'),
  );
}

export async function fleetShow(opts: { dir: string; passphraseFile?: string }, out: NodeJS.WritableStream): Promise<void> {
  const root = await readRootFile(join(opts.dir, ROOT_FILE), Math.floor(Date.now() / 1000));
  const lines = [
    `fleet root v${root.payload.version}${root.payload.name ? ` (${root.payload.name})` : ''}, threshold ${root.payload.threshold}`,
    `  fingerprint     ${rootFingerprint(root)}`,
    `  expires         ${new Date(root.payload.exp * 1000).toISOString()}`,
    ...Object.keys(root.payload.keys).map((kid) => `  key             ${kid}`),
  ];
  if (opts.passphraseFile !== undefined || process.env.WARD_FLEET_PASSPHRASE) {
    const key = await openRootKey(opts.dir, await readPassphrase(opts.passphraseFile));
    lines.push(`  sealed key      ${key.kid} opens with this passphrase`);
  }
  out.write(`${lines.join('\n')}\n`);
}

function parseTtl(text: string): number {
  const m = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!m) throw new WardError(ErrorCodes.ENROLL_REFUSED, `ttl ${JSON.stringify(text)}: expected a number with s, m, h or d (e.g. 24h)`);
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

export async function enrollCode(
  opts: { api: string; site: string; line: string; cell: string; ttl: string; png?: string; svg?: string; terminal: boolean },
  out: NodeJS.WritableStream,
): Promise<void> {
  const res = await fetch(new URL('/api/enroll-codes', opts.api), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ site: opts.site, line: opts.line, cell: opts.cell, ttlSeconds: parseTtl(opts.ttl) }),
  }).catch((cause: unknown) => {
    throw new WardError(ErrorCodes.LINK_CONNECT_FAILED, `controller API ${opts.api} is not reachable (is the controller running?)`, { cause, retryable: true });
  });
  const body = (await res.json().catch(() => ({}))) as { text?: string; codeId?: string; expiresAt?: string; error?: { code?: string; message?: string } };
  if (!res.ok || typeof body.text !== 'string') {
    throw new WardError(ErrorCodes.ENROLL_REFUSED, `controller refused: ${body.error?.code ?? res.status} ${body.error?.message ?? ''}`.trim());
  }
  const info = qrInfo(body.text);
  if (opts.png) await writeFile(opts.png, await renderPng(body.text, { scale: 6 }), { mode: 0o600 });
  if (opts.svg) await writeFile(opts.svg, await renderSvg(body.text), { mode: 0o600 });
  out.write(
    [
      `enrollment code ${body.codeId} for ${opts.site}/${opts.line}/${opts.cell}, single use, expires ${body.expiresAt}`,
      `  QR version ${info.version} (${info.modules}x${info.modules} modules, level ${info.level}), ${body.text.length} characters`,
      ...(opts.png ? [`  PNG  ${opts.png}`] : []),
      ...(opts.svg ? [`  SVG  ${opts.svg}`] : []),
      '',
    ].join('\n'),
  );
  if (opts.terminal) out.write(await renderTerminal(body.text));
  // The text last and alone on its line, so it can be piped: … | tail -1 | ward provision -c agent.yaml
  out.write(`${body.text}\n`);
}

async function readStdinLine(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (Buffer.concat(chunks).includes(0x0a) || size > 8192) break;
  }
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

export async function provisionCommand(opts: { config: string; text?: string; image?: string; reenroll?: boolean }, out: NodeJS.WritableStream): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  if (config.trust === undefined) {
    throw new WardError(ErrorCodes.CONFIG_INVALID, `${opts.config} names no trust.rootFile: a gateway cannot check an enrollment code without the fleet root`);
  }
  const logger = createLogger({ level: config.log.level === 'info' ? 'warn' : config.log.level, name: 'ward-provision', destination: 2 });
  const nowSec = Math.floor(Date.now() / 1000);
  const root = await readRootFile(config.trust.rootFile, nowSec);
  const { key } = await loadOrCreateSigningKey(config.stateDir);
  const store = new IdentityStore(config.stateDir);
  const identity = await store.load({ root, key, nowSec });
  const input: string | Uint8Array =
    opts.image !== undefined ? new Uint8Array(await readFile(opts.image)) : opts.text !== undefined ? opts.text : await readStdinLine();
  const lifecycleStore = LifecycleStore.in(config.stateDir);
  const lifecycle = new Lifecycle((await lifecycleStore.load()) ?? 'unprovisioned');
  const transition = async (event: LifecycleEvent, reason: string) => {
    if (!lifecycle.can(event)) return;
    await lifecycleStore.save({ from: lifecycle.state, to: nextState(lifecycle.state, event), event, reason, at: Date.now() });
    lifecycle.apply(event, reason);
  };
  const result = await provision(
    {
      root,
      key,
      store,
      clock: systemClock,
      audit: logAuditSink(logger.child({ area: 'audit' })),
      log: logger,
      agentVersion: WARD_VERSION,
      transition,
      expectSite: config.provisioning.site,
      expectLine: config.provisioning.line,
      deviceId: config.provisioning.deviceId,
      timeoutMs: config.provisioning.timeoutMs,
      reenroll: opts.reenroll === true,
      identity,
    },
    input,
  );
  out.write(
    `enrolled as ${result.deviceId} for ${result.bundle.site}/${result.bundle.line}/${result.bundle.cell}; lifecycle ${lifecycle.state}. ` +
      'Start (or restart) the agent to connect with mutual TLS: ward agent run -c ' +
      `${opts.config}\n`,
  );
}

export async function identityShow(opts: { config: string }, out: NodeJS.WritableStream): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  const { key } = await loadOrCreateSigningKey(config.stateDir);
  const lifecycle = (await LifecycleStore.in(config.stateDir).load()) ?? 'unprovisioned';
  const root = config.trust ? await readRootFile(config.trust.rootFile, Math.floor(Date.now() / 1000)) : undefined;
  const identity = root ? await new IdentityStore(config.stateDir).load({ root, key, nowSec: Math.floor(Date.now() / 1000) }) : undefined;
  const view = identity
    ? {
        deviceId: identity.deviceId,
        lifecycle,
        kid: key.kid,
        site: identity.site,
        line: identity.line,
        cell: identity.cell,
        brokers: identity.brokers,
        certSerial: identity.certSerial,
        certNotAfter: new Date(identity.certNotAfter * 1000).toISOString(),
        controller: identity.controllerPublicKey,
      }
    : { deviceId: config.deviceId ?? null, lifecycle, kid: key.kid, enrolled: false, fleetRoot: root ? rootFingerprint(root) : null };
  out.write(`${JSON.stringify(view, null, 2)}\n`);
}

/** The claim QR (reverse flow): device id, key fingerprint and claim code, for an operator to scan into the console. */
export async function identityQr(opts: { config: string; png?: string; terminal: boolean }, out: NodeJS.WritableStream): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  const { key } = await loadOrCreateSigningKey(config.stateDir);
  if (await new IdentityStore(config.stateDir).exists()) {
    throw new WardError(ErrorCodes.IDENTITY_ALREADY_PROVISIONED, 'this gateway is already enrolled: it has nothing to claim');
  }
  const claim = await loadOrCreateClaim(config.stateDir, key, config.provisioning.deviceId ?? deriveDeviceId(key.publicRaw));
  if (opts.png) await writeFile(opts.png, await renderPng(claim.text, { scale: 8 }), { mode: 0o644 });
  out.write(
    [
      `claim for gateway ${claim.deviceId} (key ${claim.kid})`,
      `  claim code  ${claim.claimCode}`,
      ...(opts.png ? [`  PNG         ${opts.png}`] : []),
      config.provisioning.claimBroker
        ? `  the agent looks for its enrollment at ${config.provisioning.claimBroker} once an operator confirms the claim`
        : '  note: provisioning.claimBroker is not set, so the agent will not fetch a confirmed claim by itself',
      '',
    ].join('\n'),
  );
  if (opts.terminal) out.write(await renderTerminal(claim.text));
  out.write(`${claim.text}\n`);
}

/** Factory reset: the device key, the identity and the lifecycle go; the gateway is unprovisioned again. */
export async function identityReset(opts: { config: string; yes?: boolean }, out: NodeJS.WritableStream): Promise<void> {
  if (!opts.yes) {
    throw new WardError(ErrorCodes.CONFIG_INVALID, 'factory reset destroys this gateway identity (it will enroll as a new device): re-run with --yes');
  }
  const config: AgentConfig = await loadConfigFile(opts.config, agentConfigSchema);
  await new IdentityStore(config.stateDir).wipe();
  for (const file of [DEVICE_KEY_FILE, 'lifecycle.json', 'versions.json', 'claim.json']) await rm(join(config.stateDir, file), { force: true });
  out.write(`identity wiped from ${config.stateDir}; the gateway is unprovisioned and will create a new device key at next start\n`);
}
