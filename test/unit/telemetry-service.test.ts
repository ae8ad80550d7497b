import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { TelemetryBuffer } from '../../agent/telemetry/buffer.js';
import type { MetricPoint } from '../../agent/telemetry/metric.js';
import { TelemetryService, toMetric } from '../../agent/telemetry/service.js';
import type { TelemetrySample, TelemetrySource } from '../../plugins/api/index.js';
import { TelemetryFanout } from '../../plugins/api/index.js';
import { tempDir } from '../helpers/tmp.js';

// The join between plugins' samples and the publisher: batching per machine, type stability, flood bound.

const log = { info() {}, warn() {}, error() {} };

async function rig(t: ExecutionContext, flushMs: number) {
  const buffer = await TelemetryBuffer.open({ dir: join(await tempDir(t), 'telemetry'), maxBytes: 1024 * 1024, audit: { record() {} }, log });
  t.teardown(() => buffer.close());
  const source = new TelemetryFanout({ error() {}, warn() {}, info() {}, debug() {} });
  const sent: { device: string | undefined; points: readonly MetricPoint[] }[] = [];
  const service = new TelemetryService({
    buffer,
    gateway: null,
    sources: () => ({ plc: source as TelemetrySource }),
    flushMs,
    now: () => Date.now(),
    log,
  });
  service.attach({
    publishNode: (points) => void sent.push({ device: undefined, points }),
    publishDevice: (device, points) => void sent.push({ device, points }),
  });
  service.start();
  t.teardown(() => service.stop());
  return { source, sent, service, buffer };
}

const sample = (point: string, value: number | boolean | string, extra: Partial<TelemetrySample> = {}): TelemetrySample => ({
  device: 'press-1',
  point,
  value,
  quality: 'good',
  timestamp: Date.now(),
  ...extra,
});

test('samples of one machine within the flush window go out as one batch; the registry keeps the latest of each', async (t) => {
  const r = await rig(t, 20);
  r.source.emit(sample('a', 1));
  r.source.emit(sample('b', 2));
  r.source.emit(sample('a', 3));
  await new Promise((res) => setTimeout(res, 100));
  t.is(r.sent.length, 1);
  t.deepEqual(
    r.sent[0]?.points.map((p) => [p.name, p.value]),
    [
      ['a', 1],
      ['b', 2],
      ['a', 3],
    ],
  );
  t.deepEqual(
    r.service
      .deviceMetrics()
      .get('press-1')
      ?.map((p) => [p.name, p.value]),
    [
      ['a', 3],
      ['b', 2],
    ],
  );
});

test('a source flooding samples is folded to the latest value per point, bounded, and counted', async (t) => {
  const r = await rig(t, 10_000);
  for (let i = 0; i < 5_000; i++) r.source.emit(sample(i % 2 === 0 ? 'a' : 'b', i));
  await r.service.stop();
  const points = r.sent.flatMap((s) => s.points);
  t.true(points.length <= 1_001, `${points.length} points`);
  t.true(r.service.coalesced >= 3_999);
  t.is(points.filter((p) => p.name === 'a').at(-1)?.value, 4_998);
});

test('a metric keeps the type of its first value: lossless coercion, otherwise null with bad quality', (t) => {
  t.like(toMetric(sample('x', 1.5), undefined), { type: 'Double', value: 1.5 });
  t.like(toMetric(sample('x', true), 'Double'), { type: 'Double', value: 1 });
  t.like(toMetric(sample('x', 0), 'Boolean'), { type: 'Boolean', value: false });
  t.like(toMetric(sample('x', 'text'), 'Double'), { type: 'Double', value: null, quality: 'bad' });
  t.like(toMetric(sample('x', 7, { dataType: 'Int32' }), undefined), { type: 'Int32', value: 7 });
  t.like(toMetric(sample('x', 7, { quality: 'bad', error: 'BadSensorFailure' }), 'Double'), { value: null, quality: 'bad' });
});
