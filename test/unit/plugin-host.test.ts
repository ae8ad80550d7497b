import test from 'ava';
import { z } from 'zod';
import { ManualClock } from '../../agent/core/clock.js';
import { PluginHost, type PluginSelection } from '../../agent/plugins/host.js';
import { type AnyPluginDefinition, definePlugin, PLUGIN_API_VERSION } from '../../plugins/api/index.js';
import { builtinPlugins } from '../../plugins/index.js';

const silent = { error() {}, warn() {}, info() {}, debug() {} };

/** Test plugins that record their start/stop order in `events`. */
function recorder(events: string[], name: string, opts: { dependsOn?: string[]; failStart?: boolean; hangStart?: boolean; api?: number } = {}) {
  return definePlugin({
    manifest: { name, version: '1.0.0', api: opts.api ?? PLUGIN_API_VERSION, description: 'test', ...(opts.dependsOn ? { dependsOn: opts.dependsOn } : {}) },
    configSchema: z.strictObject({ rate: z.number().int().default(1) }),
    create(ctx) {
      return {
        async start() {
          if (opts.hangStart) await new Promise((r) => setTimeout(r, 5_000));
          if (opts.failStart) throw new Error('boom');
          events.push(`start:${name}:${ctx.config.rate}`);
        },
        async stop() {
          events.push(`stop:${name}`);
        },
      };
    },
  });
}

function host(available: AnyPluginDefinition[], selected: PluginSelection[], extra: { startTimeoutMs?: number } = {}) {
  return new PluginHost({ available, selected, deviceId: 'gw-1', clock: new ManualClock(), logger: () => silent, ...extra });
}
const sel = (name: string, config: Record<string, unknown> = {}, enabled = true): PluginSelection => ({ name, config, enabled });

test('starts in dependency order and stops in reverse', async (t) => {
  const events: string[] = [];
  const h = host(
    [recorder(events, 'modbus', { dependsOn: ['net'] }), recorder(events, 'net'), recorder(events, 'opcua', { dependsOn: ['modbus'] })],
    [sel('opcua'), sel('modbus', { rate: 5 }), sel('net')],
  );
  t.deepEqual(h.names, ['net', 'modbus', 'opcua']);
  await h.start();
  t.deepEqual(await h.stop(), []);
  t.deepEqual(events, ['start:net:1', 'start:modbus:5', 'start:opcua:1', 'stop:opcua', 'stop:modbus', 'stop:net']);
});

test('disabled plugins are not loaded', async (t) => {
  const events: string[] = [];
  const h = host([recorder(events, 'a')], [sel('a', {}, false)]);
  await h.start();
  t.deepEqual(h.names, []);
  t.deepEqual(events, []);
});

test('unknown plugin, API mismatch, missing dependency, cycle and bad config are refused before anything runs', (t) => {
  const e: string[] = [];
  const code = (fn: () => unknown) => (t.throws(fn) as { code?: string }).code;
  t.is(
    code(() => host([recorder(e, 'a')], [sel('nope')])),
    'WARD_PLUGIN_UNKNOWN',
  );
  t.is(
    code(() => host([recorder(e, 'a', { api: 99 })], [sel('a')])),
    'WARD_PLUGIN_API_MISMATCH',
  );
  t.is(
    code(() => host([recorder(e, 'a', { dependsOn: ['b'] }), recorder(e, 'b')], [sel('a')])),
    'WARD_PLUGIN_DEPENDENCY',
  );
  t.is(
    code(() => host([recorder(e, 'a', { dependsOn: ['b'] }), recorder(e, 'b', { dependsOn: ['a'] })], [sel('a'), sel('b')])),
    'WARD_PLUGIN_DEPENDENCY',
  );
  const err = t.throws(() => host([recorder(e, 'a')], [sel('a', { rate: 'fast' })]));
  t.is((err as { code?: string }).code, 'WARD_PLUGIN_CONFIG_INVALID');
  t.regex(err?.message ?? '', /plugin 'a' config is invalid: rate/);
  t.deepEqual(e, []);
});

test('a failing start stops the plugins already started, in reverse, and names the plugin', async (t) => {
  const events: string[] = [];
  const h = host([recorder(events, 'a'), recorder(events, 'b', { dependsOn: ['a'], failStart: true })], [sel('a'), sel('b')]);
  const err = await t.throwsAsync(h.start());
  t.is((err as { code?: string }).code, 'WARD_PLUGIN_START_FAILED');
  t.regex(err?.message ?? '', /plugin 'b' failed to start: boom/);
  t.deepEqual(events, ['start:a:1', 'stop:b', 'stop:a']);
});

test('a start that hangs times out with its own code', async (t) => {
  const events: string[] = [];
  const h = host([recorder(events, 'slow', { hangStart: true })], [sel('slow')], { startTimeoutMs: 50 });
  const err = await t.throwsAsync(h.start());
  t.is((err as { code?: string }).code, 'WARD_PLUGIN_TIMEOUT');
});

test('the built-in sim plugin loads through the same interface and reports status', async (t) => {
  const h = host([...builtinPlugins], [sel('sim', { machine: 'press-7', periodMs: 10 })]);
  await h.start();
  const status = h.status().sim;
  t.is(status?.machine, 'press-7');
  t.is(status?.started, true);
  await h.stop();
});
