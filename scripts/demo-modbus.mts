/**
 * `sudo npm run demo:modbus`: the Modbus issue's "done when", to watch rather
 * than to test. Network namespaces of its own (198.18.0.0/15, removed at the
 * end): a vendor laptop and an attacker on the IT side, a simulated press PLC
 * behind a routed gateway that runs Ward's enforcer and Modbus proxy. The
 * laptop uses jsmodbus (a third-party client). Narrates: the policy, the
 * vendor's reads, a write to a protected register refused with a Modbus
 * exception, an allowed setpoint change, the PLC's registers afterwards, the
 * attacker, and the audit events the gateway wrote.
 * Development tooling: not part of the binary.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { LINE_POLICY } from '../test/helpers/enforce.js';
import { createTopology, netnsUnavailable } from '../test/helpers/netns.js';
import { type NsProcess, startInNamespace } from '../test/helpers/ns-process.js';

const say = (text: string) => process.stdout.write(`${text}\n`);
const step = (text: string) => say(`\n== ${text}`);
const FIXTURE = new URL('../test/fixtures/modbus-ns.ts', import.meta.url);
const PLC = '198.18.1.10';

const reason = await netnsUnavailable();
if (reason) {
  say(`demo:modbus needs network namespaces and nftables: ${reason}`);
  process.exit(1);
}

const dir = await mkdtemp(join(tmpdir(), 'ward-demo-modbus-'));
const topo = await createTopology('routed');
const started: NsProcess[] = [];
try {
  const start = async (ns: string, args: string[]) => {
    const p = await startInNamespace(ns, FIXTURE, args);
    started.push(p);
    return p;
  };
  const gw = await start(topo.gw, ['gateway', join(dir, 'enforce'), topo.ports.UPLINK, topo.ports.PLC1, topo.ports.PLC2]);
  const plc = await start(topo.hosts.plc1.ns, ['plc']);
  const laptop = await start(topo.hosts.eng.ns, ['client']);
  const attacker = await start(topo.hosts.attacker.ns, ['client']);
  await plc.call({ cmd: 'set', address: 0, values: [1234, 452, 1] });
  await plc.call({ cmd: 'set', address: 100, values: [450, 1200] });
  await plc.call({ cmd: 'set', address: 500, values: [4242] });

  const policy = YAML.parse(LINE_POLICY) as { flows: unknown[] };
  policy.flows = [
    {
      id: 'vendor-tuning',
      from: 'role:engineering',
      to: 'asset:press-plc',
      services: ['tcp/502'],
      ops: { modbus: ['read-only', 'write holding 100-119'] },
    },
    { id: 'mgmt-ssh', from: 'zone:it', to: 'gateway', services: ['tcp/22'] },
  ];
  step('Policy: the vendor laptop (198.18.0.10) may read the press PLC and write its setpoints, holding registers 100-119, nothing else');
  say(
    YAML.stringify({ flows: [policy.flows[0]] })
      .trimEnd()
      .replace(/^/gm, '    '),
  );
  const applied = await gw.call({ cmd: 'apply', policy, version: 1 });
  if (!applied.ok) throw new Error(`apply failed: ${JSON.stringify(applied)}`);
  say(`  applied: ${applied.tag as string}`);

  const show = (label: string, r: Record<string, unknown>) =>
    say(
      `  ${label.padEnd(58)} ${
        r.values
          ? `values ${JSON.stringify(r.values)}`
          : r.ok
            ? 'OK'
            : r.exception !== undefined
              ? `Modbus exception ${r.exception as number}`
              : `failed (${r.error as string})`
      }`,
    );
  const at = (cmd: Record<string, unknown>) => laptop.call({ host: PLC, port: 502, ...cmd });
  step('The vendor laptop, through the gateway');
  show('read holding registers 0-2', await at({ cmd: 'read', address: 0, quantity: 3 }));
  show('read setpoints 100-101', await at({ cmd: 'read', address: 100, quantity: 2 }));
  show('write 1 to holding register 500 (protected)', await at({ cmd: 'write', address: 500, values: [1] }));
  show('write 0,0,0 to 118-120 (runs past the allowed range)', await at({ cmd: 'write', address: 118, values: [0, 0, 0] }));
  show('write 470 to setpoint 100 (allowed)', await at({ cmd: 'write', address: 100, values: [470] }));

  step('The PLC afterwards');
  say(`  holding register 500: ${JSON.stringify((await plc.call({ cmd: 'get', address: 500, quantity: 1 })).values)} (unchanged)`);
  say(`  setpoint 100:         ${JSON.stringify((await plc.call({ cmd: 'get', address: 100, quantity: 1 })).values)}`);
  const reached = (await plc.call({ cmd: 'seen' })).requests as { kind: string; fc: number }[];
  say(`  writes that reached the PLC: ${reached.filter((r) => r.kind !== 'read').length} (the allowed one)`);

  step('An attacker on the same network (198.18.0.66)');
  const scan = await attacker.call({ cmd: 'read', host: PLC, port: 502, address: 0, quantity: 1 });
  say(`  read holding register 0: ${scan.values ? 'ANSWERED' : `no answer (${scan.error as string}): no flow names it, the gateway drops it`}`);

  step('Audit events the gateway wrote');
  for (const line of gw.events) {
    const e = line.event as { action: string; actor?: string; outcome: string; details?: Record<string, unknown> };
    if (!e.action.startsWith('modbus.')) continue;
    const d = e.details ?? {};
    say(
      `  ${e.action.padEnd(24)} ${String(e.actor).padEnd(12)} ${e.outcome.padEnd(8)} fc ${d.fc} ${d.table ?? ''} ${d.address ?? ''}+${d.quantity ?? ''} values ${JSON.stringify(d.values ?? [])}${d.exception ? ` -> exception ${d.exception}` : ''}`,
    );
  }
  say('\nDone: reads pass, writes to protected registers come back as Modbus exceptions and audit events, the PLC is unchanged.');
} finally {
  for (const p of started.reverse()) await p.close().catch(() => undefined);
  await topo.destroy();
  await rm(dir, { recursive: true, force: true });
}
