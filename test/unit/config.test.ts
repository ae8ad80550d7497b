import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { loadConfigFile, parseConfig } from '../../agent/config/load.js';
import { agentConfigSchema } from '../../agent/config/schema.js';
import { controllerConfigSchema } from '../../controller/config.js';
import { tempDir } from '../helpers/tmp.js';

const KEY = 'A'.repeat(43);
const minimal = `deviceId: gw-1
stateDir: /var/lib/ward
controller:
  publicKey: ${KEY}
mqtt:
  url: mqtts://broker.plant.example:8883
`;

function codeAndMessage(fn: () => unknown): { code?: string | undefined; message: string } {
  try {
    fn();
  } catch (err) {
    return { code: (err as { code?: string }).code, message: (err as Error).message };
  }
  return { message: '(no error)' };
}

test('a minimal YAML config gets a default for every optional field, and is frozen', (t) => {
  const c = parseConfig(minimal, '/etc/ward/agent.yaml', agentConfigSchema);
  t.is(c.mqtt?.protocol, 'auto');
  t.is(c.mqtt?.keepaliveSeconds, 30);
  t.deepEqual(c.mqtt?.reconnect, { baseMs: 500, capMs: 30_000 });
  t.is(c.state.heartbeatSeconds, 300);
  t.is(c.log.level, 'info');
  t.deepEqual(c.plugins, []);
  t.deepEqual(c.hardware, { root: '/', board: 'auto', statusLed: 'auto', watchdog: 'auto', scanner: null });
  t.true(Object.isFrozen(c) && Object.isFrozen(c.mqtt) && Object.isFrozen(c.mqtt?.reconnect));
});

test('a gateway config with no identity at all is valid: the agent waits for its QR code', (t) => {
  const c = parseConfig('stateDir: /var/lib/ward\nhardware: { scanner: stdin }\n', 'agent.yaml', agentConfigSchema);
  t.is(c.deviceId, undefined);
  t.is(c.hardware.scanner, 'stdin');
});

test('half an identity is refused: deviceId, controller and mqtt go together', (t) => {
  const { code, message } = codeAndMessage(() => parseConfig('stateDir: /s\ndeviceId: gw-1\n', 'agent.yaml', agentConfigSchema));
  t.is(code, 'WARD_CONFIG_INVALID');
  t.regex(message, /deviceId, controller and mqtt go together/);
});

test('JSON configs are read too', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'agent.json');
  await writeFile(file, JSON.stringify({ deviceId: 'gw-2', stateDir: '/s', controller: { publicKey: KEY }, mqtt: { url: 'mqtt://127.0.0.1:1883' } }));
  const c = await loadConfigFile(file, agentConfigSchema);
  t.is(c.deviceId, 'gw-2');
});

test('a wrong type names the field and the file', (t) => {
  const { code, message } = codeAndMessage(() => parseConfig(`${minimal}  keepaliveSeconds: "thirty"\n`, '/etc/ward/agent.yaml', agentConfigSchema));
  t.is(code, 'WARD_CONFIG_INVALID');
  t.regex(message, /\/etc\/ward\/agent\.yaml/);
  t.regex(message, /mqtt\.keepaliveSeconds/);
});

test('an unknown field (a typo) is an error naming it, not silently ignored', (t) => {
  const { code, message } = codeAndMessage(() => parseConfig(`${minimal}  keepaliveSecs: 10\n`, 'agent.yaml', agentConfigSchema));
  t.is(code, 'WARD_CONFIG_INVALID');
  t.regex(message, /mqtt\.keepaliveSecs: unknown field/);
});

test('a missing required field is named', (t) => {
  const { code, message } = codeAndMessage(() => parseConfig('deviceId: gw-1\n', 'agent.yaml', agentConfigSchema));
  t.is(code, 'WARD_CONFIG_INVALID');
  t.regex(message, /stateDir: /);
});

test('an invalid device id and broker URL are refused with the rule', (t) => {
  const bad = minimal.replace('gw-1', 'gw/1').replace('mqtts://broker.plant.example:8883', 'http://x');
  const { message } = codeAndMessage(() => parseConfig(bad, 'agent.yaml', agentConfigSchema));
  t.regex(message, /deviceId: expected 1-64/);
  t.regex(message, /mqtt\.url: expected an mqtt:\/\//);
});

test('YAML syntax errors and duplicate keys are reported with the file', (t) => {
  t.is(codeAndMessage(() => parseConfig('deviceId: [unclosed', 'a.yaml', agentConfigSchema)).code, 'WARD_CONFIG_SYNTAX');
  t.is(codeAndMessage(() => parseConfig(`${minimal}deviceId: again\n`, 'a.yaml', agentConfigSchema)).code, 'WARD_CONFIG_SYNTAX');
  t.is(codeAndMessage(() => parseConfig('{"deviceId": ', 'a.json', agentConfigSchema)).code, 'WARD_CONFIG_SYNTAX');
});

test('a missing file is WARD_CONFIG_NOT_FOUND with its absolute path', async (t) => {
  const err = await t.throwsAsync(loadConfigFile('does/not/exist.yaml', agentConfigSchema));
  t.is((err as { code?: string }).code, 'WARD_CONFIG_NOT_FOUND');
  t.regex(err?.message ?? '', /\/does\/not\/exist\.yaml/);
});

test('an empty file is reported as missing fields, not a crash', (t) => {
  t.is(codeAndMessage(() => parseConfig('', 'empty.yaml', agentConfigSchema)).code, 'WARD_CONFIG_INVALID');
});

test('controller config: embedded broker by default; exactly one of embedded or url', (t) => {
  const c = parseConfig('stateDir: /var/lib/ward-controller\n', 'c.yaml', controllerConfigSchema);
  t.deepEqual(c.broker.embedded, { host: '127.0.0.1', tcpPort: 1883, wsPort: 8083 });
  t.is(c.api.host, '127.0.0.1');
  const both = codeAndMessage(() => parseConfig('stateDir: /x\nbroker:\n  url: mqtt://127.0.0.1:1883\n  embedded: {}\n', 'c.yaml', controllerConfigSchema));
  t.regex(both.message, /exactly one of broker\.embedded or broker\.url/);
});
