/**
 * `sudo npm run demo:segmentation`: the segmentation issue's "done when", to
 * watch rather than to test. Builds a routed gateway, an engineering
 * workstation, a historian, an attacker and two PLCs in network namespaces
 * of its own (198.18.0.0/15, removed at the end), runs Ward's enforcement
 * on the gateway with a real signed audit journal, and narrates:
 * the flat network, observe mode, the switch to enforce without dropping the
 * engineer's open connection, the attacker's and the lateral moves failing,
 * and the denied attempts read back from the journal with `ward audit tail`.
 * Development tooling: not part of the binary.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { AuditJournal } from '../agent/audit/journal.js';
import { validateConfig } from '../agent/config/load.js';
import { agentConfigSchema } from '../agent/config/schema.js';
import { systemClock } from '../agent/core/clock.js';
import { EnforceService } from '../agent/enforce/service.js';
import { loadOrCreateSigningKey } from '../agent/identity/keystore.js';
import { createLogger } from '../agent/log.js';
import { journalOptions } from '../agent/system.js';
import { boardWith, LINE_POLICY } from '../test/helpers/enforce.js';
import { createTopology, netnsUnavailable } from '../test/helpers/netns.js';

const say = (text: string) => process.stdout.write(`${text}\n`);
const step = (text: string) => say(`\n== ${text}`);

const reason = await netnsUnavailable();
if (reason) {
  say(`demo:segmentation needs network namespaces and nftables: ${reason}`);
  process.exit(1);
}

const dir = await mkdtemp(join(tmpdir(), 'ward-demo-'));
const topo = await createTopology('routed');
let journal: AuditJournal | undefined;
let service: EnforceService | undefined;
try {
  const { eng, historian, attacker, plc1, plc2 } = topo.hosts;
  await topo.listen(plc1, { tcp: [502, 4840], udp: [161] });
  await topo.listen(plc2, { tcp: [502] });
  await topo.listen(historian, { tcp: [8080] });
  const stateDir = join(dir, 'state');
  const interfaces = { UPLINK: topo.ports.UPLINK, PLC1: topo.ports.PLC1, PLC2: topo.ports.PLC2 };
  const configFile = join(dir, 'agent.yaml');
  const configData = { stateDir, hardware: { statusLed: 'none', watchdog: 'none' }, enforce: { netns: topo.gw, interfaces, reportEverySeconds: 1 } };
  await writeFile(configFile, YAML.stringify(configData));
  const config = validateConfig(configData, configFile, agentConfigSchema);
  const { key } = await loadOrCreateSigningKey(stateDir);
  const log = createLogger({ level: 'warn', name: 'ward-demo', destination: 2 });
  journal = await AuditJournal.open(journalOptions(config, key, systemClock, log));
  service = await EnforceService.open({ config: config.enforce, stateDir, board: boardWith(interfaces), audit: journal, log });
  const probe = async (label: string, from: typeof eng, to: typeof eng, port: number) => {
    const result = await topo.tcp(from, to, port, 1000);
    say(`  ${label.padEnd(46)} ${result === 'connected' ? 'CONNECTED' : `blocked (${result})`}`);
  };
  say(`Hosts: engineering ${eng.ip}, historian ${historian.ip}, attacker ${attacker.ip} on the IT side;`);
  say(`PLC1 ${plc1.ip} and PLC2 ${plc2.ip} behind the gateway (namespace ${topo.gw}). Policy: test/fixtures/policies/line.yaml`);

  step('1. No policy: the flat network trusts everyone');
  await probe('attacker -> PLC1 modbus (tcp/502)', attacker, plc1, 502);
  await probe('PLC1 -> PLC2 modbus (lateral)', plc1, plc2, 502);

  step('2. The policy in observe mode: nothing is blocked, would-be denies are counted');
  await service.applyText(LINE_POLICY.replace('mode: enforce', 'mode: observe'), 'demo');
  const held = await topo.hold(eng, plc1, 502);
  say(`  engineer opens a modbus session to PLC1:          ${(await held.ping()) ? 'ok' : 'FAILED'}`);
  await probe('attacker -> PLC1 modbus', attacker, plc1, 502);

  step('3. Switch to enforce (one nft transaction)');
  const applied = await service.applyText(LINE_POLICY, 'demo');
  say(`  ${applied.tag}`);
  say(`  engineer's open session still answers:             ${(await held.ping()) ? 'yes, no reconnect' : 'NO'}`);
  await probe('engineering -> PLC1 modbus (allowed flow)', eng, plc1, 502);
  await probe('historian -> PLC2 (no flow)', historian, plc2, 502);
  await probe('attacker -> PLC1 modbus', attacker, plc1, 502);
  await probe('attacker -> PLC2 modbus', attacker, plc2, 502);
  await probe('PLC1 -> PLC2 modbus (lateral)', plc1, plc2, 502);
  await held.close();

  step('4. The denied attempts, as signed audit events');
  await service.monitor.tick({ flush: true });
  await service.stop();
  await journal.close();
  journal = undefined;
  const ward = fileURLToPath(new URL('./ward.mjs', import.meta.url));
  const tail = spawnSync(process.execPath, [ward, 'audit', 'tail', '-c', configFile, '-n', '40'], { encoding: 'utf8' });
  for (const line of tail.stdout.split('\n').filter((l) => /enforce\.(flow|connections|policy|mode)/.test(l))) say(`  ${line}`);
  say('\nVerify the chain offline as an auditor would: ward audit export (jsonl) + ward audit verify.');
} finally {
  await service?.stop().catch(() => undefined);
  await journal?.close().catch(() => undefined);
  await topo.destroy();
  await rm(dir, { recursive: true, force: true });
}
