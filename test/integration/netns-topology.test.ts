import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { cleanupPrefix, createTopology, type Mode, netnsUnavailable, type Topology } from '../helpers/netns.js';

// The netns topology helper itself, with no firewall loaded: every path is open, so this pins down what
// the firewall end-to-end tests take as their baseline (reachability, refused vs timeout, held connections,
// counters) and that nothing is left behind.

const run = promisify(execFile);

async function namespacesStartingWith(prefix: string): Promise<string[]> {
  const { stdout } = await run('ip', ['netns', 'list'], { timeout: 10_000 });
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[0] ?? '')
    .filter((name) => name.startsWith(prefix));
}

async function topology(t: ExecutionContext, mode: Mode): Promise<Topology> {
  const topo = await createTopology(mode);
  t.teardown(async () => {
    await topo.destroy();
    await cleanupPrefix(topo.prefix);
  });
  return topo;
}

const unavailable = await netnsUnavailable();

if (unavailable !== undefined) {
  console.error(`netns topology tests skipped: ${unavailable}`);
  test.skip(`netns topology (skipped: ${unavailable})`, () => {});
} else {
  for (const mode of ['routed', 'bridge'] as const) {
    test.serial(`${mode}: IT hosts reach the PLCs, PLCs reach each other, closed ports are refused`, async (t) => {
      const topo = await topology(t, mode);
      const { eng, historian, attacker, plc1, plc2 } = topo.hosts;
      t.is(topo.mode, mode);
      t.is(topo.bridge, mode === 'bridge' ? 'br0' : undefined);
      // gwPrefix must reach the system's nftables even though npx put node_modules/.bin (with @vercel/nft's
      // `nft`) first on this process's PATH.
      const [file = '', ...rest] = topo.gwPrefix;
      t.true(rest.includes(topo.gw));
      const { stdout: version } = await run(file, [...rest, 'nft', '--version'], { timeout: 10_000 });
      t.regex(version, /nftables/);
      for (const name of Object.values(topo.ports)) t.true(name.length <= 15, name);

      await Promise.all([topo.listen(plc1, { tcp: [502], udp: [161] }), topo.listen(plc2, { tcp: [502, 20000], udp: [161] })]);
      // Asking again for a port already served is harmless.
      await topo.listen(plc1, { tcp: [502] });

      t.is(await topo.tcp(eng, plc1, 502), 'connected');
      t.true(await topo.udp(eng, plc1, 161));
      t.is(await topo.tcp(historian, plc1.ip, 502), 'connected');
      t.is(await topo.tcp(plc1, plc2, 502), 'connected');
      t.true(await topo.udp(plc1, plc2, 161));
      t.is(await topo.tcp(attacker, plc2, 20000), 'connected');
      t.is(await topo.tcp(plc2, eng.ip, 22), 'refused');
      t.is(await topo.tcp(eng, plc1, 5020), 'refused');
      // The gateway's own stack answers on gwIp (RST: nothing listens there).
      t.is(await topo.tcp(eng, topo.gwIp, 9), 'refused');
      // No listener: the ICMP port-unreachable comes back at once instead of waiting for the timeout.
      const started = Date.now();
      t.false(await topo.udp(eng, plc1, 162, 5_000));
      t.true(Date.now() - started < 4_000);

      const counts = await topo.accepted(plc1);
      t.is(counts.tcp[502], 2);
      t.is(counts.udp[161], 1);
      t.is(counts.tcp[5020], undefined);
      t.deepEqual((await topo.accepted(plc2)).tcp, { 502: 1, 20000: 1 });
      t.deepEqual(await topo.accepted(eng), { tcp: {}, udp: {} });

      if (mode === 'bridge') {
        const nf = await topo.exec(topo.gw, ['sysctl', '-n', '-e', 'net.bridge.bridge-nf-call-iptables']);
        t.true(nf.stdout.trim() === '' || nf.stdout.trim() === '0', nf.stdout);
      } else {
        const forward = await topo.exec(topo.gw, ['sysctl', '-n', 'net.ipv4.ip_forward']);
        t.is(forward.stdout.trim(), '1');
      }
    });

    test.serial(`${mode}: a dropped port times out, exec feeds stdin, a held connection survives an outage`, async (t) => {
      const topo = await topology(t, mode);
      const { eng, attacker, plc1 } = topo.hosts;
      await topo.listen(plc1, { tcp: [502, 503], udp: [161, 162] });

      const links = await topo.exec(topo.gw, ['ip', '-br', 'link', 'show']);
      t.is(links.code, 0);
      for (const name of Object.values(topo.ports)) t.regex(links.stdout, new RegExp(`^${name}(@\\S+)?\\s+UP`, 'm'));
      const failing = await topo.exec(eng.ns, ['false']);
      t.is(failing.code, 1);

      // A drop rule on the PLC itself (not a firewall under test): the probe must see silence, not refusal.
      const table = [
        'table inet netns_test {',
        '  chain input {',
        '    type filter hook input priority 0; policy accept;',
        '    tcp dport 503 drop',
        '    udp dport 162 drop',
        '  }',
        '}',
      ].join('\n');
      const loaded = await topo.exec(plc1.ns, ['nft', '-f', '-'], { input: table });
      t.is(loaded.code, 0, loaded.stderr);
      t.is(await topo.tcp(eng, plc1, 503, 500), 'timeout');
      t.false(await topo.udp(eng, plc1, 162, 500));
      t.is(await topo.tcp(eng, plc1, 502), 'connected', 'the default timeout where the answer should be connected: a stalled peer must not read as silence');

      const held = await topo.hold(attacker, plc1, 502);
      t.teardown(() => held.close());
      for (let i = 0; i < 5; i++) t.true(await held.ping(), `ping ${i}`);

      // Cut the held connection's traffic, then restore it: the same connection carries echoes again.
      const cut = await topo.exec(plc1.ns, ['nft', 'add', 'rule', 'inet', 'netns_test', 'input', 'tcp', 'dport', '502', 'drop']);
      t.is(cut.code, 0, cut.stderr);
      t.false(await held.ping(300));
      t.is((await topo.exec(plc1.ns, ['nft', 'delete', 'table', 'inet', 'netns_test'])).code, 0);
      t.true(await held.ping(5_000));
      t.true(await held.ping());
      t.is((await topo.accepted(plc1)).tcp[502], 2, 'one probe and one held connection');
      await held.close();
    });

    test.serial(`${mode}: destroy removes every namespace`, async (t) => {
      const topo = await topology(t, mode);
      t.is((await namespacesStartingWith(topo.prefix)).length, 7);
      await topo.listen(topo.hosts.plc2, { tcp: [502] });
      const held = await topo.hold(topo.hosts.eng, topo.hosts.plc2, 502);
      t.true(await held.ping());
      // Left open on purpose: destroy() must end the held client and the echo server too.
      await topo.destroy();
      await topo.destroy();
      t.deepEqual(await namespacesStartingWith(topo.prefix), []);
      await t.throwsAsync(() => topo.tcp(topo.hosts.eng, topo.hosts.plc2, 502), { message: /destroyed/ });
    });
  }

  test.serial('a failed create deletes what it had created, and only that', async (t) => {
    const prefix = `w${randomBytes(3).toString('hex')}`;
    t.teardown(() => cleanupPrefix(prefix));
    // Occupy the name of the last namespace create makes, so it fails after making the others.
    await run('ip', ['netns', 'add', `${prefix}-plc2`], { timeout: 10_000 });
    await t.throwsAsync(() => createTopology('routed', { prefix }), { message: /plc2/ });
    t.deepEqual(await namespacesStartingWith(prefix), [`${prefix}-plc2`]);
    await cleanupPrefix(prefix);
    t.deepEqual(await namespacesStartingWith(prefix), []);
  });

  test.serial('prefixes that could break interface names or sweep other namespaces are refused', async (t) => {
    await t.throwsAsync(() => createTopology('routed', { prefix: 'w123456789abc' }), { message: /prefix/ });
    await t.throwsAsync(() => createTopology('routed', { prefix: 'W-x' }), { message: /prefix/ });
    await t.throwsAsync(() => cleanupPrefix('w'), { message: /short prefix/ });
  });
}
