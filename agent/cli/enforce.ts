import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { detectBoard } from '../../hardware/boards/detect.js';
import { hostFs } from '../../hardware/sysfs/hostfs.js';
import { builtinProtocols } from '../../plugins/index.js';
import { AuditJournal } from '../audit/journal.js';
import { logAuditSink } from '../audit-log.js';
import { loadConfigFile } from '../config/load.js';
import { type AgentConfig, agentConfigSchema } from '../config/schema.js';
import { callLocal } from '../control/local.js';
import { teeAudit } from '../core/audit.js';
import { systemClock } from '../core/clock.js';
import { ErrorCodes, WardError } from '../core/errors.js';
import type { EnforceStatus } from '../enforce/enforcer.js';
import { EnforceService } from '../enforce/service.js';
import { loadSigningKey } from '../identity/keystore.js';
import { createLogger } from '../log.js';
import { parsePolicyText } from '../shared/policy/model.js';
import { writeFileAtomic } from '../state/files.js';
import { journalOptions } from '../system.js';

/**
 * `ward enforce status|diff|apply|rollback|learn|propose|failsafe|check`.
 * With the agent running, the request goes to it over its local socket (one
 * writer of the kernel ruleset and of the audit journal); without it, the
 * CLI opens the journal and acts itself. Every change is an audit event
 * with the operator (`--as`, default $SUDO_USER or $USER) as actor.
 */
export interface EnforceIo {
  readonly out: NodeJS.WritableStream;
  readonly err: NodeJS.WritableStream;
}

type Method = 'enforce.status' | 'enforce.diff' | 'enforce.apply' | 'enforce.rollback' | 'enforce.learn' | 'enforce.propose' | 'enforce.failsafe';

export function operatorName(explicit?: string): string {
  return (explicit ?? process.env.SUDO_USER ?? process.env.USER ?? 'operator').slice(0, 64);
}

async function run(configFile: string, method: Method, params: Record<string, unknown>): Promise<unknown> {
  const config = await loadConfigFile(configFile, agentConfigSchema);
  const socket = join(config.stateDir, 'agent.sock');
  // An agent still restoring its rules answers "starting": wait for it (bounded) rather than act beside it.
  const deadline = Date.now() + 60_000;
  let viaAgent: unknown;
  for (;;) {
    try {
      viaAgent = await callLocal(socket, method, params);
      break;
    } catch (err) {
      if (!(err instanceof WardError && err.code === ErrorCodes.LOCAL_AGENT_STARTING) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
  if (viaAgent !== undefined) return viaAgent;
  return withDirectService<unknown>(config, (svc): Promise<unknown> => {
    const actor = String(params.actor ?? 'operator');
    switch (method) {
      case 'enforce.status':
        return svc.status();
      case 'enforce.diff':
        return svc.diffText(params.text as string | undefined);
      case 'enforce.apply':
        return svc.applyText(String(params.text), actor, params.force === true);
      case 'enforce.rollback':
        return svc.enforcer.rollback(actor);
      case 'enforce.learn':
        return svc.learn(params.forMs as number | undefined, actor);
      case 'enforce.propose':
        return svc.propose();
      case 'enforce.failsafe':
        return params.enter === false ? svc.enforcer.leaveFailsafe(`operator ${actor}`) : svc.enforcer.enterFailsafe(`operator ${actor}`, actor);
    }
  });
}

/** The same service the agent builds, with the journal opened by the CLI (the agent is not running). */
async function withDirectService<T>(config: AgentConfig, fn: (svc: EnforceService) => Promise<T>): Promise<T> {
  // Files written here must stay readable by the agent: `sudo ward enforce …` would leave root-owned state behind.
  const owner = (await stat(config.stateDir).catch(() => undefined))?.uid;
  const uid = process.getuid?.();
  if (owner !== undefined && uid !== undefined && owner !== uid) {
    throw new WardError(
      ErrorCodes.ENFORCE_APPLY_FAILED,
      `the agent is not running and ${config.stateDir} belongs to uid ${owner}: run this as that user (e.g. sudo -u ward ward enforce …) so the agent can read what it writes`,
    );
  }
  const log = createLogger({ level: 'warn', name: 'ward-enforce', destination: 2 });
  const key = await loadSigningKey(config.stateDir);
  const journal = await AuditJournal.open(journalOptions(config, key, systemClock, log));
  try {
    const board = await detectBoard(hostFs(config.hardware.root), { board: config.hardware.board });
    const svc = await EnforceService.open({
      config: config.enforce,
      stateDir: config.stateDir,
      board,
      audit: teeAudit(journal, logAuditSink(log)),
      log,
    });
    return await fn(svc);
  } finally {
    await journal.close();
  }
}

export async function enforceStatus(opts: { config: string; json?: boolean }, io: EnforceIo): Promise<void> {
  const status = (await run(opts.config, 'enforce.status', {})) as EnforceStatus;
  if (opts.json) {
    io.out.write(`${JSON.stringify(status)}\n`);
    return;
  }
  const a = status.active;
  const lines = [
    a
      ? `policy ${a.tag.match(/policy=(\S+)/)?.[1]} version ${a.version} from ${a.source} (${a.actor}), applied ${new Date(a.appliedAt).toISOString()}${a.forced ? ' FORCED past a lockout check' : ''}`
      : 'no policy applied: the gateway forwards as the kernel does without Ward',
    `kernel: ${status.inKernel === 'yes' ? 'holds the applied ruleset' : status.inKernel === 'no-table' ? 'has no Ward table' : `holds another ruleset (${status.kernelTag})`}${status.failsafe ? ' [FAIL-SAFE: only the safe flows]' : ''}`,
    `gateway mode: ${status.mode}${status.learn ? `; learning until ${new Date(status.learn.until).toISOString()}` : ''}`,
    ...status.zones.map(
      (z) => `zone ${z.name} (${z.kind}) ${z.mode.toUpperCase()} ports ${z.ports.join(',')} -> ${z.interfaces.join(',') || '(no interface)'}`,
    ),
    ...status.counters.filter((c) => c.packets > 0).map((c) => `  ${c.rule.padEnd(40)} ${String(c.packets).padStart(10)} packets  ${c.chain}`),
  ];
  io.out.write(`${lines.join('\n')}\n`);
}

export async function enforceDiff(opts: { config: string; policy?: string }, io: EnforceIo): Promise<void> {
  const text = opts.policy ? await readFile(opts.policy, 'utf8') : undefined;
  io.out.write(String(await run(opts.config, 'enforce.diff', text === undefined ? {} : { text })));
}

export async function enforceApply(opts: { config: string; policy: string; force?: boolean; as?: string }, io: EnforceIo): Promise<void> {
  const text = await readFile(opts.policy, 'utf8');
  const result = (await run(opts.config, 'enforce.apply', { text, force: opts.force === true, actor: operatorName(opts.as) })) as {
    tag: string;
    changedModes: { zone: string; from?: string; to: string }[];
    warnings: string[];
  };
  for (const w of result.warnings) io.err.write(`warning: ${w}\n`);
  for (const c of result.changedModes) io.err.write(`zone ${c.zone}: ${c.from ?? '(new)'} -> ${c.to}\n`);
  io.out.write(`applied: ${result.tag}\n`);
}

export async function enforceRollback(opts: { config: string; as?: string }, io: EnforceIo): Promise<void> {
  const result = (await run(opts.config, 'enforce.rollback', { actor: operatorName(opts.as) })) as { version: number };
  io.out.write(`rolled back to version ${result.version}\n`);
}

export async function enforceLearn(opts: { config: string; for?: number; stop?: boolean; as?: string }, io: EnforceIo): Promise<void> {
  if (opts.for === undefined && !opts.stop) throw new InvalidArgumentError('give --for <duration> or --stop');
  const result = (await run(opts.config, 'enforce.learn', { ...(opts.stop ? {} : { forMs: opts.for }), actor: operatorName(opts.as) })) as {
    until: number;
  } | null;
  io.out.write(result ? `learning until ${new Date(result.until).toISOString()}; then run ward enforce propose\n` : 'learning stopped\n');
}

export async function enforcePropose(opts: { config: string; output?: string }, io: EnforceIo): Promise<void> {
  const proposal = (await run(opts.config, 'enforce.propose', {})) as { text: string; newFlows: number; newAssets: number; observed: number };
  if (opts.output) await writeFileAtomic(opts.output, proposal.text, 0o600);
  else io.out.write(proposal.text);
  io.err.write(`proposal: ${proposal.newFlows} new flow(s), ${proposal.newAssets} new asset(s) from ${proposal.observed} observed connection tuple(s)\n`);
}

export async function enforceFailsafe(opts: { config: string; leave?: boolean; as?: string; ifServiceFailed?: boolean }, io: EnforceIo): Promise<void> {
  // systemd's ExecStopPost runs on every stop; only a crash, a watchdog kill or a failed exit means "the agent died".
  const result = process.env.SERVICE_RESULT;
  if (opts.ifServiceFailed && (result === undefined || result === 'success')) {
    io.out.write(`agent stopped cleanly (SERVICE_RESULT=${result ?? 'unset'}): the policy in the kernel stays\n`);
    return;
  }
  const changed = await run(opts.config, 'enforce.failsafe', { enter: !opts.leave, actor: operatorName(opts.as) });
  io.out.write(
    changed
      ? opts.leave
        ? 'left fail-safe: the active policy is in force\n'
        : 'fail-safe: only the safe flows are in force\n'
      : 'no change (failMode keep-last, no safe flows, or already so)\n',
  );
}

/** Offline check of a policy file: no config, no kernel. */
export async function enforceCheck(opts: { policy: string }, io: EnforceIo): Promise<void> {
  const { policy, digest } = parsePolicyText(await readFile(opts.policy, 'utf8'), { protocols: builtinProtocols() });
  io.out.write(
    `valid: policy ${policy.name}, ${policy.zones.length} zone(s), ${policy.assets.length} asset(s), ${policy.flows.length} flow(s), sha256 ${digest}\n`,
  );
}

const UNITS: Readonly<Record<string, number>> = { m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `--for 24h`: minutes, hours or days, up to 7 days (the learn sets' lifetime). */
export function parseLearnDuration(text: string): number {
  const m = /^(\d{1,4})([mhd])$/.exec(text.trim());
  const ms = m ? Number(m[1]) * (UNITS[m[2] ?? ''] ?? 0) : Number.NaN;
  if (!Number.isFinite(ms) || ms < 60_000 || ms > 7 * 86_400_000) throw new InvalidArgumentError('expected a duration from 1m to 7d (30m, 24h, 3d)');
  return ms;
}

/** `ward controller policy-push`: checks a policy file locally, then asks the controller to sign and publish it for a device. */
export async function policyPush(opts: { api: string; device: string; policy: string; as?: string }, io: EnforceIo): Promise<void> {
  const { policy } = parsePolicyText(await readFile(opts.policy, 'utf8'), { protocols: builtinProtocols() });
  const res = await fetch(new URL(`/api/devices/${encodeURIComponent(opts.device)}/policy`, opts.api), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ policy, actor: operatorName(opts.as) }),
  }).catch((cause: unknown) => {
    throw new WardError(ErrorCodes.LINK_CONNECT_FAILED, `controller API ${opts.api} is not reachable (is the controller running?)`, { cause, retryable: true });
  });
  const body = (await res.json().catch(() => ({}))) as { version?: number; digest?: string; delivered?: boolean; error?: { code?: string; message?: string } };
  if (!res.ok || typeof body.version !== 'number') {
    throw new WardError(ErrorCodes.POLICY_INVALID, `controller refused: ${body.error?.code ?? res.status} ${body.error?.message ?? ''}`.trim());
  }
  io.out.write(
    body.delivered === false
      ? `signed policy ${policy.name} version ${body.version} (sha256 ${body.digest}) for ${opts.device}; the controller has no broker now and sends it when it is back\n`
      : `published policy ${policy.name} version ${body.version} (sha256 ${body.digest}) for ${opts.device}\n`,
  );
}
