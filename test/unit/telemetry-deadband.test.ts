import test from 'ava';
import fc from 'fast-check';
import { validateConfig } from '../../agent/config/load.js';
import { agentConfigSchema } from '../../agent/config/schema.js';
import { type DeadbandRule, ExceptionFilter } from '../../agent/telemetry/deadband.js';
import { DEFAULT_GATEWAY_DEADBANDS, gatewayDeadbands } from '../../agent/telemetry/gateway.js';
import type { MetricPoint, MetricType } from '../../agent/telemetry/metric.js';

function p(name: string, value: MetricPoint['value'], extra: { type?: MetricType; quality?: 'good' | 'bad'; unit?: string } = {}): MetricPoint {
  return {
    name,
    type: extra.type ?? 'Double',
    value,
    timestamp: 0,
    ...(extra.quality ? { quality: extra.quality } : {}),
    ...(extra.unit ? { unit: extra.unit } : {}),
  };
}
const values = (points: readonly MetricPoint[]) => points.map((x) => x.value);

/** Feeds one value per step (time advancing by `stepMs`) and returns which were forwarded. */
function run(
  f: ExceptionFilter,
  name: string,
  seq: readonly MetricPoint['value'][],
  stepMs = 1000,
  extra: Parameters<typeof p>[2] = {},
): MetricPoint['value'][] {
  return seq.flatMap((v, i) => values(f.filter([p(name, v, extra)], i * stepMs)));
}

test('the first point of a name is always forwarded; an unchanged one is not', (t) => {
  const f = new ExceptionFilter({ default: {} });
  t.deepEqual(run(f, 'A', [5, 5, 5, 6, 6]), [5, 6]);
});

test('absolute deadband: forwarded only when the change exceeds it (OPC UA: "exceeds", so equal is not enough)', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1 } });
  t.deepEqual(run(f, 'A', [10, 10.5, 11, 11.01, 9.9, 12]), [10, 11.01, 9.9, 12]);
});

test('the comparison is with the last forwarded value, so a slow drift is reported', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1 } });
  t.deepEqual(run(f, 'A', [0, 0.4, 0.8, 1.2, 1.6]), [0, 1.2]);
});

test('percent deadband is relative to the last forwarded value; from 0 any change counts', (t) => {
  const f = new ExceptionFilter({ default: { percent: 10 } });
  t.deepEqual(run(f, 'A', [100, 109, 111, 100, 99.8]), [100, 111, 99.8]);
  t.deepEqual(run(f, 'B', [0, 0, 0.001]), [0, 0.001]);
  t.deepEqual(run(f, 'C', [-50, -54, -56]), [-50, -56], 'relative to |last|');
});

test('max silence: an unchanged value is forwarded again once the name has been quiet that long', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 100, maxSilenceMs: 3000 } });
  // steps of 1 s: forwarded at 0 s, then at 3 s and 6 s although nothing changed
  t.deepEqual(run(f, 'A', [1, 1, 1, 1, 1, 1, 1]), [1, 1, 1]);
  const g = new ExceptionFilter({ default: { maxSilenceMs: 3000 } });
  t.deepEqual(values(g.filter([p('A', 1)], 10_000)), [1]);
  t.deepEqual(values(g.filter([p('A', 1)], 11_000)), []);
  t.deepEqual(values(g.filter([p('A', 1)], 5_000)), [1], 'time going backwards counts as silence expired');
});

test('booleans and strings: any change is forwarded whatever the numeric deadband', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1000 } });
  t.deepEqual(run(f, 'B', [true, true, false, false, true], 1000, { type: 'Boolean' }), [true, false, true]);
  t.deepEqual(run(f, 'S', ['tcp:0.0.0.0:22', 'tcp:0.0.0.0:22', 'tcp:0.0.0.0:22,tcp6:[::]:1883'], 1000, { type: 'String' }), [
    'tcp:0.0.0.0:22',
    'tcp:0.0.0.0:22,tcp6:[::]:1883',
  ]);
});

test('null and quality changes are always forwarded; a steady null is not', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1000 } });
  const seq: [MetricPoint['value'], 'good' | 'bad' | undefined][] = [
    [20, undefined],
    [null, 'bad'],
    [null, 'bad'],
    [20, undefined],
    [20, 'bad'],
    [20, 'good'],
    [21, undefined],
  ];
  const out = seq.flatMap(([v, q], i) => f.filter([p('T', v, q ? { quality: q } : {})], i).map((x) => `${x.value}/${x.quality ?? 'good'}`));
  t.deepEqual(out, ['20/good', 'null/bad', '20/good', '20/bad', '20/good']);
});

test('NaN and infinities have no distance: changes to and from them are forwarded, a steady NaN is not', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 10 } });
  t.deepEqual(run(f, 'A', [1, Number.NaN, Number.NaN, 2, Number.POSITIVE_INFINITY, 3]), [1, Number.NaN, 2, Number.POSITIVE_INFINITY, 3]);
});

test('a change of type or unit is forwarded', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 10 } });
  t.is(f.filter([p('A', 1)], 0).length, 1);
  t.is(f.filter([p('A', 1, { type: 'Float' })], 1).length, 1);
  t.is(f.filter([p('A', 1, { type: 'Float', unit: '°C' })], 2).length, 1);
  t.is(f.filter([p('A', 1, { type: 'Float', unit: '°C' })], 3).length, 0);
});

test('rules by name: exact names win over patterns; * spans one or more folders', (t) => {
  const f = new ExceptionFilter({
    default: { absolute: 0 },
    byName: {
      'Gateway/Disk/*/UsedPercent': { absolute: 5 },
      'Gateway/Disk/root/UsedPercent': { absolute: 50 },
      'Gateway/*': { absolute: 1 },
    },
  });
  t.deepEqual(f.ruleFor('Gateway/Disk/root/UsedPercent'), { absolute: 50 });
  t.deepEqual(f.ruleFor('Gateway/Disk/var/lib/ward/UsedPercent'), { absolute: 5 });
  t.deepEqual(f.ruleFor('Gateway/Disk/data/FreeBytes'), { absolute: 1 }, 'falls through to the next pattern');
  t.deepEqual(f.ruleFor('Gateway/Disk/UsedPercent'), { absolute: 1 }, '* matches at least one folder');
  t.deepEqual(f.ruleFor('Spindle/Speed'), { absolute: 0 });
  t.deepEqual(f.ruleFor('Gateway.CPU'), { absolute: 0 }, 'pattern text other than * is literal');
});

test('reset forwards everything again; prime marks a birth as the baseline', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1 } });
  const batch = [p('A', 1), p('B', true, { type: 'Boolean' }), p('C', 'x', { type: 'String' })];
  t.is(f.filter(batch, 0).length, 3);
  t.is(f.filter(batch, 1).length, 0);
  f.reset();
  t.deepEqual(f.filter(batch, 2), batch, 'same objects, input order');

  const g = new ExceptionFilter({ default: { absolute: 1 } });
  g.prime([p('A', 10)], 0);
  t.deepEqual(values(g.filter([p('A', 10.5), p('Z', 1)], 1)), [1]);
  t.deepEqual(values(g.filter([p('A', 12)], 2)), [12]);
});

test('several names in one batch are judged independently; the input is not modified', (t) => {
  const f = new ExceptionFilter({ default: { absolute: 1 } });
  f.filter([p('A', 0), p('B', 0)], 0);
  const batch = Object.freeze([p('A', 0.5), p('B', 5)]);
  t.deepEqual(
    f.filter(batch, 1).map((x) => x.name),
    ['B'],
  );
});

test('a nonsensical rule is a TypeError at construction', (t) => {
  const bad: DeadbandRule[] = [
    { absolute: 1, percent: 1 },
    { absolute: -1 },
    { percent: Number.NaN },
    { maxSilenceMs: -5 },
    { absolute: 1, extra: 2 } as DeadbandRule,
  ];
  for (const rule of bad) {
    t.throws(() => new ExceptionFilter({ default: rule }), { instanceOf: TypeError });
    t.throws(() => new ExceptionFilter({ default: {}, byName: { X: rule } }), { instanceOf: TypeError, message: /deadband rule X/ });
  }
});

test('property: with an absolute deadband, a held-back value is never further than the deadband from the last forwarded one', (t) => {
  fc.assert(
    fc.property(fc.double({ min: 0, max: 50, noNaN: true }), fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { maxLength: 200 }), (d, seq) => {
      const f = new ExceptionFilter({ default: { absolute: d } });
      let last: number | undefined;
      for (const [i, v] of seq.entries()) {
        const out = f.filter([p('A', v)], i);
        if (out.length === 1) last = v;
        else if (last === undefined || Math.abs(v - last) > d) return false;
      }
      return true;
    }),
  );
  t.pass();
});

test('gateway deadbands from the agent config: a given name or pattern wins over the built-in rules, which stay for the rest', (t) => {
  const config = validateConfig(
    {
      stateDir: '/var/lib/ward',
      deviceId: 'gw-1',
      controller: { publicKey: 'x'.repeat(43) },
      mqtt: { url: 'mqtt://127.0.0.1:1883' },
      telemetry: {
        gateway: {
          deadbands: {
            'Gateway/CPU/Load': { absolute: 20 },
            'Gateway/Network/*/RxBytes': { percent: 10, maxSilenceSeconds: 60 },
            'Gateway/Network/eth0/TxBytes': { absolute: 0 },
          },
        },
      },
    },
    '(test)',
    agentConfigSchema,
  );
  const filter = new ExceptionFilter(gatewayDeadbands(config.telemetry.gateway.deadbands));
  t.deepEqual(filter.ruleFor('Gateway/CPU/Load'), { absolute: 20 });
  t.deepEqual(filter.ruleFor('Gateway/Network/eth0/RxBytes'), { percent: 10, maxSilenceMs: 60_000 });
  t.deepEqual(filter.ruleFor('Gateway/Network/eth0/TxBytes'), { absolute: 0 });
  // Not given: the built-in rules.
  t.deepEqual(filter.ruleFor('Gateway/Network/wlan0/TxBytes'), DEFAULT_GATEWAY_DEADBANDS.byName?.['Gateway/Network/*/TxBytes']);
  t.deepEqual(filter.ruleFor('Gateway/CPU/Temperature'), DEFAULT_GATEWAY_DEADBANDS.byName?.['Gateway/CPU/Temperature']);
  t.deepEqual(filter.ruleFor('Gateway/Something/New'), DEFAULT_GATEWAY_DEADBANDS.default);

  const bad = (deadbands: unknown) =>
    t.throws(() =>
      validateConfig(
        {
          stateDir: '/var/lib/ward',
          deviceId: 'gw-1',
          controller: { publicKey: 'x'.repeat(43) },
          mqtt: { url: 'mqtt://127.0.0.1:1883' },
          telemetry: { gateway: { deadbands } },
        },
        '(test)',
        agentConfigSchema,
      ),
    );
  t.regex(bad({ 'Gateway/CPU/Load': { absolute: 1, percent: 1 } })?.message ?? '', /absolute or percent, not both/);
  // zod reports a refused record key as such, naming it.
  t.regex(bad({ 'Press/Temperature': { absolute: 1 } })?.message ?? '', /deadbands.Press\/Temperature: Invalid key in record/);
  t.regex(bad({ 'Gateway/CPU/Load': { absolute: -1 } })?.message ?? '', /absolute/);
  t.regex(bad({ 'Gateway/CPU/Load': { every: 1 } })?.message ?? '', /every/);
});
