import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import type { ExecutionContext } from 'ava';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { Enforcer, type ManagementRequirement, type TrustLevel } from '../../agent/enforce/enforcer.js';
import { Nft, systemBinary } from '../../agent/enforce/nft.js';
import type { Binding } from '../../agent/enforce/plan.js';
import { createLogger } from '../../agent/log.js';
import { checkPolicy, type PolicyInput, type ValidatedPolicy } from '../../agent/shared/policy/model.js';
import type { DetectedBoard } from '../../hardware/api/index.js';
import { BOARD_PROFILES } from '../../hardware/boards/profiles.js';
import { tempDir } from './tmp.js';

const run = promisify(execFile);

export const LINE_POLICY = readFileSync(new URL('../fixtures/policies/line.yaml', import.meta.url), 'utf8');

export const quietLog = createLogger({ level: 'silent', name: 'test' });

/** The fixture line policy as data, to change before checking. */
export function linePolicy(changes: (p: PolicyInput & Record<string, unknown>) => void = () => {}): ValidatedPolicy {
  const p = YAML.parse(LINE_POLICY) as PolicyInput & Record<string, unknown>;
  changes(p);
  return checkPolicy(p);
}

/** A bare network namespace (no links but lo) to load rulesets into; deleted at teardown. */
export async function bareNamespace(t: ExecutionContext): Promise<string> {
  const ns = `w${randomBytes(3).toString('hex')}enf`;
  await run(systemBinary('ip'), ['netns', 'add', ns]);
  t.teardown(async () => {
    await run(systemBinary('ip'), ['netns', 'del', ns]).catch(() => undefined);
  });
  return ns;
}

export function nftIn(ns: string): Nft {
  return new Nft({ prefix: ['ip', 'netns', 'exec', ns] });
}

export async function nftText(ns: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(systemBinary('ip'), ['netns', 'exec', ns, systemBinary('nft'), ...args]);
  return stdout;
}

export async function openEnforcer(
  t: ExecutionContext,
  nft: Nft,
  binding: Binding,
  options: { management?: ManagementRequirement[]; dir?: string; trust?: TrustLevel } = {},
): Promise<{ enforcer: Enforcer; audit: MemoryAuditSink; dir: string }> {
  const dir = options.dir ?? (await tempDir(t, 'ward-enforce-'));
  const audit = new MemoryAuditSink();
  const enforcer = await Enforcer.open({
    nft,
    dir,
    binding,
    audit,
    log: quietLog,
    management: options.management ?? [{ port: 'UPLINK', service: 'tcp/22' }],
    ...(options.trust ? { trust: options.trust } : {}),
  });
  return { enforcer, audit, dir };
}

/** A generic board with the three ports of the test topologies. */
export function boardWith(interfaces: Record<string, string>): DetectedBoard {
  const profile = BOARD_PROFILES.find((p) => p.id === 'generic') as DetectedBoard['profile'];
  return {
    profile,
    model: 'test board',
    ports: Object.entries(interfaces).map(([name, device]) => ({ name: name as 'UPLINK', kind: 'ethernet' as const, label: name, device })),
    tpm: { present: false },
    serial: undefined,
  };
}
