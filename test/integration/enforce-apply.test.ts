import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { Nft, type WardTables } from '../../agent/enforce/nft.js';
import type { Binding } from '../../agent/enforce/plan.js';
import { bareNamespace, linePolicy, nftIn, nftText, openEnforcer } from '../helpers/enforce.js';
import { netnsUnavailable } from '../helpers/netns.js';

/**
 * Applying, checking, rolling back and restoring rulesets in a real kernel
 * (nftables in a namespace of the test's own). Traffic is the e2e test's
 * job (enforce-netns.test.ts); this one is about the kernel state.
 */
const routed: Binding = { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' } };
const unavailable = await netnsUnavailable();
const maybe = unavailable ? test.skip : test.serial;
if (unavailable) console.error(`enforce-apply: skipped: ${unavailable}`);

async function kernelTag(nft: Nft): Promise<string | undefined> {
  return (await nft.tables()).inet?.comment;
}

maybe('apply puts the ruleset in the kernel in one go, tags it, and keeps it on disk (0600)', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit, dir } = await openEnforcer(t, nft, routed);
  const result = await enforcer.apply({ validated: linePolicy(), version: 3, source: 'controller', actor: 'controller' });
  t.regex(result.tag, /^ward policy=line-3 version=3 digest=[0-9a-f]{16} mode=routed$/);
  t.is(await kernelTag(nft), result.tag);
  const status = await enforcer.status();
  t.is(status.inKernel, 'yes');
  t.true(status.counters.some((c) => c.rule === 'flow:eng-program'));
  for (const f of ['active.json']) t.is((await stat(join(dir, f))).mode & 0o777, 0o600, f);
  const event = audit.events.find((e) => e.action === 'enforce.policy-apply');
  t.like(event, { outcome: 'success', category: 'configuration-change', details: { version: 3 } });
});

maybe('a second apply keeps the first for rollback; rollback twice returns to the second', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  const v1 = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  const v2 = await enforcer.apply({
    validated: linePolicy((p) => {
      p.mode = 'observe';
    }),
    version: 2,
    source: 'controller',
    actor: 'controller',
  });
  t.not(v1.tag, v2.tag);
  t.deepEqual(
    v2.changedModes.map((c) => `${c.zone}:${c.from}->${c.to}`),
    ['cell-a:enforce->observe', 'cell-b:enforce->observe', 'it:enforce->observe'],
  );
  t.true(audit.events.some((e) => e.action === 'enforce.mode-change' && e.target === 'cell-a'));
  t.deepEqual(await enforcer.rollback('alice'), { version: 1 });
  t.is(await kernelTag(nft), v1.tag);
  t.like(
    audit.events.findLast((e) => e.action === 'enforce.rollback'),
    { outcome: 'success', actor: 'alice' },
  );
  await enforcer.rollback('alice');
  t.is(await kernelTag(nft), v2.tag);
  t.is(enforcer.active?.version, 2);
});

maybe('rollback with nothing to go back to is refused and audited', async (t) => {
  const ns = await bareNamespace(t);
  const { enforcer, audit } = await openEnforcer(t, nftIn(ns), routed);
  await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  const err = await t.throwsAsync(enforcer.rollback('bob'));
  t.is((err as { code?: string }).code, 'WARD_ENFORCE_NO_PREVIOUS');
  t.like(
    audit.events.findLast((e) => e.action === 'enforce.rollback'),
    { outcome: 'refused', code: 'WARD_ENFORCE_NO_PREVIOUS' },
  );
});

maybe('a ruleset nft refuses changes nothing: the previous rules stay in force', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  const good = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  // An interface name longer than the kernel's IFNAMSIZ: nft refuses the whole transaction.
  const { enforcer: bad } = await openEnforcer(t, nft, { mode: 'routed', interfaces: { UPLINK: 'up0', PLC1: 'p1-this-name-is-too-long', PLC2: 'p2' } });
  const err = await t.throwsAsync(bad.apply({ validated: linePolicy(), version: 2, source: 'controller', actor: 'controller' }));
  t.is((err as { code?: string }).code, 'WARD_ENFORCE_APPLY_FAILED');
  t.is(await kernelTag(nft), good.tag);
  t.is(enforcer.active?.version, 1);
  void audit;
});

maybe('a failed read-back after the load restores the previous ruleset', async (t) => {
  const ns = await bareNamespace(t);
  // The real kernel and nft; only the read-back after the second load is made to disagree (a stand-in for a kernel that
  // accepted the transaction but holds something else, which cannot be provoked on purpose).
  class LyingNft extends Nft {
    lie = false;
    override async tables(): Promise<WardTables> {
      const real = await super.tables();
      if (!this.lie) return real;
      this.lie = false;
      return { ...real, rules: real.rules.slice(1) };
    }
  }
  const nft = new LyingNft({ prefix: ['ip', 'netns', 'exec', ns] });
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  const first = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  nft.lie = true;
  const err = await t.throwsAsync(
    enforcer.apply({
      validated: linePolicy((p) => {
        p.mode = 'observe';
      }),
      version: 2,
      source: 'controller',
      actor: 'controller',
    }),
  );
  t.is((err as { code?: string }).code, 'WARD_ENFORCE_CHECK_FAILED');
  t.is(await kernelTag(nft), first.tag, 'the previous ruleset is back in the kernel');
  t.is(enforcer.active?.version, 1);
  t.like(
    audit.events.findLast((e) => e.action === 'enforce.rollback'),
    { outcome: 'success', details: { reason: 'post-apply check failed' } },
  );
});

maybe('a policy that would lock out the management uplink is refused unless forced', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  const noSsh = linePolicy((p) => {
    p.flows = p.flows?.filter((f) => f.id !== 'mgmt-ssh');
  });
  const err = await t.throwsAsync(enforcer.apply({ validated: noSsh, version: 1, source: 'controller', actor: 'controller' }));
  t.is((err as { code?: string }).code, 'WARD_POLICY_LOCKOUT');
  t.regex((err as Error).message, /tcp\/22 to the gateway on UPLINK would be blocked/);
  t.is(await kernelTag(nft), undefined, 'nothing was loaded');
  t.like(audit.events.at(-1), { action: 'enforce.policy-apply', outcome: 'refused', code: 'WARD_POLICY_LOCKOUT' });
  const forced = await enforcer.apply({ validated: noSsh, version: 1, source: 'operator', actor: 'carol', force: true });
  t.is(await kernelTag(nft), forced.tag);
  t.true(enforcer.active?.forced);
  // The same policy in observe mode blocks nothing, so it locks nobody out.
  const observing = linePolicy((p) => {
    p.mode = 'observe';
    p.flows = p.flows?.filter((f) => f.id !== 'mgmt-ssh');
  });
  await t.notThrowsAsync(enforcer.apply({ validated: observing, version: 2, source: 'controller', actor: 'controller' }));
});

maybe('nft missing is a clear error naming the package', async (t) => {
  const ns = await bareNamespace(t);
  const { enforcer, audit } = await openEnforcer(t, new Nft({ prefix: ['ip', 'netns', 'exec', ns], nft: '/nonexistent/nft' }), routed);
  const err = await t.throwsAsync(enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' }));
  t.is((err as { code?: string }).code, 'WARD_ENFORCE_NFT_MISSING');
  t.regex((err as Error).message, /install the nftables package/);
  t.like(audit.events.at(-1), { action: 'enforce.policy-apply', outcome: 'failure', code: 'WARD_ENFORCE_NFT_MISSING' });
});

maybe('restart keeps the kernel rules; a reboot (empty kernel) or a hand edit is healed from disk', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, dir } = await openEnforcer(t, nft, routed);
  const applied = await enforcer.apply({ validated: linePolicy(), version: 5, source: 'controller', actor: 'controller' });
  // A new agent process over the same state folder.
  const { enforcer: again, audit } = await openEnforcer(t, nft, routed, { dir });
  t.is(await again.restore(), 'kept');
  t.is(audit.events.length, 0);
  await nft.deleteTables();
  t.is(await again.restore(), 'reapplied');
  t.is(await kernelTag(nft), applied.tag);
  t.like(audit.events.at(-1), { action: 'enforce.restore', details: { reason: 'the kernel had no Ward table (reboot)' } });
  // A hand edit that keeps the tag (rules flushed from a chain) is noticed too: the read-back counts rules.
  await nftText(ns, 'flush', 'chain', 'inet', 'ward', 'forward');
  t.is(await again.restore(), 'reapplied');
  t.is((await again.status()).inKernel, 'yes');
  await nft.deleteTables();
  await nftText(ns, 'add', 'table', 'inet', 'ward', '{ comment "hand-made"; }');
  t.is(await kernelTag(nft), 'hand-made');
  t.is(await again.restore(), 'reapplied');
  t.is(await kernelTag(nft), applied.tag);
});

maybe('a ruleset edited in the state file is not loaded at boot: the policy is compiled again, and the edit is reported', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, dir } = await openEnforcer(t, nft, routed);
  const applied = await enforcer.apply({ validated: linePolicy(), version: 5, source: 'controller', actor: 'controller' });
  // Someone with write access to the state folder turns every default drop into an accept (the policy, which
  // attestation measures, is left as it was).
  const file = join(dir, 'active.json');
  const record = JSON.parse(await readFile(file, 'utf8')) as { script: string };
  record.script = record.script.replaceAll(' counter drop comment "ward:default:', ' counter accept comment "ward:default:');
  await writeFile(file, JSON.stringify(record));
  await nft.deleteTables(); // a reboot
  const { enforcer: again, audit } = await openEnforcer(t, nft, routed, { dir });
  t.is(await again.restore(), 'reapplied');
  t.is(await kernelTag(nft), applied.tag, 'the kernel holds what the policy compiles to');
  t.notRegex(await nftText(ns, 'list', 'table', 'inet', 'ward'), /counter packets \d+ bytes \d+ accept comment "ward:default:pair_1_2"/);
  t.like(
    audit.events.find((e) => e.action === 'enforce.stored-ruleset-mismatch'),
    { outcome: 'failure', code: 'WARD_ENFORCE_CHECK_FAILED' },
  );
});

maybe("Ward's tables are the only ones it touches", async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const other = 'table inet plant {\n\tchain keep {\n\t\ttype filter hook forward priority 10; policy accept;\n\t\ttcp dport 9999 counter accept\n\t}\n}\n';
  await nft.load(other);
  const before = await nftText(ns, 'list', 'table', 'inet', 'plant');
  const { enforcer } = await openEnforcer(t, nft, routed);
  await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  await enforcer.apply({ validated: linePolicy(), version: 2, source: 'controller', actor: 'controller' });
  await enforcer.rollback('dave');
  await nft.deleteTables();
  t.is(await nftText(ns, 'list', 'table', 'inet', 'plant'), before);
});

maybe('bridge mode turns on br_netfilter for the namespace (without it the policy would not see bridged traffic)', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  await nft.sysctl('net.bridge.bridge-nf-call-iptables', '0');
  const { enforcer } = await openEnforcer(t, nft, { mode: 'bridge', interfaces: { UPLINK: 'up0', PLC1: 'p1', PLC2: 'p2' }, bridge: 'br0' });
  const r = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  t.is(await nft.sysctl('net.bridge.bridge-nf-call-iptables'), '1');
  t.is(await nft.sysctl('net.bridge.bridge-nf-call-ip6tables'), '1');
  const tables = await nft.tables();
  t.is(tables.bridge?.comment, r.tag);
});

maybe('learn mode re-applies the active policy with learn sets, and stops again', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  const learn = await enforcer.setLearning(Date.now() + 3_600_000, 'erin');
  t.truthy(learn);
  t.regex((await kernelTag(nft)) ?? '', / learn$/);
  t.regex(await nftText(ns, 'list', 'set', 'inet', 'ward', 'l_pair_3_1'), /flags dynamic,timeout/);
  t.true(audit.events.some((e) => e.action === 'enforce.learn' && e.actor === 'erin'));
  await enforcer.setLearning(undefined, 'erin');
  t.notRegex((await kernelTag(nft)) ?? '', /learn/);
});

maybe('fail-safe loads the safe flows only (failMode safe) and leaving it restores the full policy; keep-last never changes the kernel', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer, audit } = await openEnforcer(t, nft, routed);
  const keepLast = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  t.false(await enforcer.enterFailsafe('controller silent'), 'keep-last: nothing to switch to');
  t.is(await kernelTag(nft), keepLast.tag);

  const full = await enforcer.apply({
    validated: linePolicy((p) => {
      p.failMode = { kind: 'safe', afterSeconds: 3600 };
      p.safe = ['historian-poll', 'mgmt-ssh'];
    }),
    version: 2,
    source: 'controller',
    actor: 'controller',
  });
  t.true(await enforcer.enterFailsafe('controller silent for 3600 s'));
  const safeTag = await kernelTag(nft);
  t.regex(safeTag ?? '', / safe$/);
  const listing = await nftText(ns, 'list', 'table', 'inet', 'ward');
  t.true(listing.includes('ward:flow:historian-poll'));
  t.false(listing.includes('ward:flow:eng-program'), 'engineering access is not a safe flow');
  t.is((await enforcer.status()).inKernel, 'yes');
  t.true((await enforcer.status()).failsafe);
  t.true(await enforcer.leaveFailsafe('controller back'));
  t.is(await kernelTag(nft), full.tag);
  t.deepEqual(
    audit.events.filter((e) => e.action === 'enforce.failsafe').map((e) => (e.details as { entered: boolean }).entered),
    [true, false],
  );
});

maybe('learn mode on and off does not overwrite the ruleset a rollback returns to', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer } = await openEnforcer(t, nft, routed);
  const v1 = await enforcer.apply({ validated: linePolicy(), version: 1, source: 'controller', actor: 'controller' });
  await enforcer.apply({
    validated: linePolicy((p) => {
      p.mode = 'observe';
    }),
    version: 2,
    source: 'controller',
    actor: 'controller',
  });
  await enforcer.setLearning(Date.now() + 3_600_000, 'erin');
  await enforcer.setLearning(undefined, 'erin');
  t.deepEqual(await enforcer.rollback('erin'), { version: 1 });
  t.is(await kernelTag(nft), v1.tag);
});

maybe('a fail-safe whose safe flows would lock out management is refused like any lockout', async (t) => {
  const ns = await bareNamespace(t);
  const { enforcer } = await openEnforcer(t, nftIn(ns), routed);
  const err = await t.throwsAsync(
    enforcer.apply({
      validated: linePolicy((p) => {
        p.failMode = { kind: 'safe', afterSeconds: 3600 };
        p.safe = ['historian-poll'];
      }),
      version: 1,
      source: 'controller',
      actor: 'controller',
    }),
  );
  t.is((err as { code?: string }).code, 'WARD_POLICY_LOCKOUT');
  t.regex((err as Error).message, /in fail-safe: tcp\/22 to the gateway on UPLINK would be blocked/);
});

maybe('a trust verdict that lands while a policy is being applied is in the kernel once both are done', async (t) => {
  // The flow to the press exists only while the gateway is attested active.
  const policy = linePolicy((p) => {
    const eng = (p.flows as { id: string; trust?: string[] }[]).find((f) => f.id === 'eng-program');
    if (eng) eng.trust = ['active'];
  });
  const engInKernel = async (ns: string) => (await nftText(ns, 'list', 'table', 'inet', 'ward')).includes('ward:flow:eng-program');
  const open = async (trust: 'active' | 'degraded') => {
    const ns = await bareNamespace(t);
    const nft = nftIn(ns);
    return { ns, nft, ...(await openEnforcer(t, nft, routed, { trust })) };
  };
  const a = await open('degraded');
  const b = await open('active');

  // The first policy is in flight (its kernel work has begun) when the gateway is attested active.
  const applying = a.enforcer.apply({ validated: policy, version: 1, source: 'controller', actor: 'controller' });
  await new Promise((r) => setImmediate(r));
  await a.enforcer.setTrust('active', 'controller', 'attestation verdict active');
  await applying;
  t.is(a.enforcer.trust, 'active');
  t.is(a.enforcer.active?.trust, undefined, 'recorded as compiled for active');
  t.true(await engInKernel(a.ns), 'the flow for an active gateway is in the kernel');

  // The other way: quarantined while a policy is in flight: the flow must not stay.
  const applyingB = b.enforcer.apply({ validated: policy, version: 1, source: 'controller', actor: 'controller' });
  await new Promise((r) => setImmediate(r));
  await b.enforcer.setTrust('quarantined', 'controller', 'attestation verdict quarantined');
  await applyingB;
  t.is(b.enforcer.active?.trust, 'quarantined');
  t.false(await engInKernel(b.ns), 'no engineering flow for a quarantined gateway');
  t.true(b.audit.events.some((e) => e.action === 'enforce.trust-change' && (e.details as { to?: string }).to === 'quarantined'));
});

maybe('a rollback on a quarantined gateway is compiled for quarantine, not for the trust the older policy was applied under', async (t) => {
  const withTrust = (mode: 'enforce' | 'observe') =>
    linePolicy((p) => {
      const eng = (p.flows as { id: string; trust?: string[] }[]).find((f) => f.id === 'eng-program');
      if (eng) eng.trust = ['active'];
      p.zones = p.zones.map((z) => (z.name === 'cell-b' ? { ...z, mode } : z));
    });
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer } = await openEnforcer(t, nft, routed);
  const engInKernel = async () => (await nftText(ns, 'list', 'table', 'inet', 'ward')).includes('ward:flow:eng-program');
  await enforcer.apply({ validated: withTrust('enforce'), version: 1, source: 'controller', actor: 'controller' });
  await enforcer.apply({ validated: withTrust('observe'), version: 2, source: 'controller', actor: 'controller' });
  t.true(await engInKernel());
  await enforcer.setTrust('quarantined', 'controller', 'attestation verdict quarantined');
  t.false(await engInKernel());

  t.deepEqual(await enforcer.rollback('technician'), { version: 1 });
  t.false(await engInKernel(), 'v1 was applied while active; rolled back to under quarantine, its active-only flow stays out');
  t.is(enforcer.active?.version, 1);
  t.is(enforcer.active?.trust, 'quarantined');
  t.is((await enforcer.status()).inKernel, 'yes');

  // Approval later: the rolled-back policy follows the trust like any other.
  await enforcer.setTrust('active', 'controller', 'attestation verdict active');
  t.true(await engInKernel());
  t.is(enforcer.active?.version, 1);
});

maybe('a trust change while in fail-safe keeps the line on its safe flows, those of the new trust', async (t) => {
  const ns = await bareNamespace(t);
  const nft = nftIn(ns);
  const { enforcer } = await openEnforcer(t, nft, routed);
  const listing = () => nftText(ns, 'list', 'table', 'inet', 'ward');
  await enforcer.apply({
    validated: linePolicy((p) => {
      p.failMode = { kind: 'safe', afterSeconds: 3600 };
      p.safe = ['historian-poll', 'mgmt-ssh', 'eng-program'];
      const eng = (p.flows as { id: string; trust?: string[] }[]).find((f) => f.id === 'eng-program');
      if (eng) eng.trust = ['active'];
    }),
    version: 1,
    source: 'controller',
    actor: 'controller',
  });
  t.true(await enforcer.enterFailsafe('controller silent'));
  t.true((await listing()).includes('ward:flow:eng-program'));

  await enforcer.setTrust('quarantined', 'ward-agent', 'lifecycle quarantined at start');
  t.true(enforcer.failsafe);
  t.regex((await kernelTag(nft)) ?? '', / safe$/);
  t.true((await listing()).includes('ward:flow:historian-poll'));
  t.false((await listing()).includes('ward:flow:eng-program'), 'quarantined: the active-only safe flow is out too');
  t.is((await enforcer.status()).inKernel, 'yes');

  await enforcer.setTrust('active', 'controller', 'attestation verdict active');
  t.true(enforcer.failsafe);
  t.regex((await kernelTag(nft)) ?? '', / safe$/);
  t.true((await listing()).includes('ward:flow:eng-program'));
});
