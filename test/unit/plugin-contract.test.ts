import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { PLUGIN_API_VERSION, type PluginContext } from '../../plugins/api/index.js';
import { builtinPlugins, builtinProtocols } from '../../plugins/index.js';

// Every built-in plugin against the contract in plugins/README.md, so a second protocol plugin is held to the same
// rules as the first without anyone writing new agent code or new host tests for it.

const quiet = { error() {}, warn() {}, info() {}, debug() {} };
const dataRoot = mkdtempSync(join(tmpdir(), 'ward-contract-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

function context<C>(name: string, config: C): PluginContext<C> {
  return {
    deviceId: `gw-contract-${name}`,
    config,
    log: quiet,
    clock: { now: () => Date.now(), monotonic: () => performance.now() },
    signal: new AbortController().signal,
    audit: { record() {} },
    dataDir: mkdtempSync(join(dataRoot, `${name}-`)),
  };
}

for (const plugin of builtinPlugins) {
  const name = plugin.manifest.name;
  test(`${name}: manifest, default config, start and stop`, async (t) => {
    t.regex(name, /^[a-z][a-z0-9-]*$/);
    t.is(plugin.manifest.api, PLUGIN_API_VERSION);
    const config = plugin.configSchema.parse({});
    const instance = plugin.create(context(name, config));
    await instance.start?.();
    t.is(typeof (instance.status?.() ?? {}), 'object');
    await instance.stop?.();
    await instance.stop?.(); // idempotent
    t.pass();
  });

  if (plugin.protocol) {
    const protocol = plugin.protocol;
    test(`${name}: protocol description is pure and names what it refuses`, async (t) => {
      t.is(protocol.name, name, 'the ops key is the plugin name');
      t.true(protocol.vocabulary.length > 0);
      t.true(protocol.defaultPorts.length > 0);
      const bogus = protocol.check(['definitely-not-an-operation']);
      t.true(bogus.length > 0);
      t.regex(bogus.join('\n'), /definitely-not-an-operation/);
      t.deepEqual(protocol.check(['definitely-not-an-operation']), bogus, 'the same answer every time');
      t.is(builtinProtocols()[protocol.name], protocol);
      const instance = plugin.create(context(name, plugin.configSchema.parse({})));
      t.truthy(instance.proxy, 'a protocol plugin has a proxy for the enforcer to steer flows to');
      await instance.proxy?.setRoutes([]);
      await instance.stop?.();
    });
  }
}
