import test from 'ava';
import { backoffDelay } from '../../agent/core/backoff.js';
import { filters, isDeviceId, parseDeviceTopic, sharedFilter, topics } from '../../agent/shared/topics.js';

const opts = { baseMs: 500, capMs: 30_000, minMs: 100 };

test('backoff grows exponentially up to the cap (upper bound with random=1)', (t) => {
  const delays = [0, 1, 2, 3, 4, 5, 6, 7, 20, 1000].map((n) => backoffDelay(n, opts, () => 1));
  t.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test('backoff jitter stays within [min, ceiling]', (t) => {
  t.is(
    backoffDelay(3, opts, () => 0),
    100,
  );
  t.is(
    backoffDelay(3, opts, () => 0.5),
    2000,
  );
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(i % 12, opts);
    t.true(d >= 100 && d <= 30_000);
  }
});

test('backoff refuses a nonsensical attempt number', (t) => {
  t.throws(() => backoffDelay(-1, opts), { instanceOf: TypeError });
});

test('device topics are built and parsed under ward/v1/<id>/', (t) => {
  t.is(topics.state('gw-1'), 'ward/v1/gw-1/state');
  t.is(topics.cmd('gw-1'), 'ward/v1/gw-1/cmd');
  t.is(topics.reply('gw-1', 'ctl-a'), 'ward/v1/gw-1/reply/ctl-a');
  t.deepEqual(parseDeviceTopic('ward/v1/gw-1/reply/ctl-a'), { deviceId: 'gw-1', suffix: 'reply/ctl-a' });
  t.is(sharedFilter('ward-controller', filters.allStates), '$share/ward-controller/ward/v1/+/state');
});

test('device ids cannot carry wildcards, levels or broker prefixes', (t) => {
  for (const bad of ['', '+', '#', 'a/b', '$SYS', '-lead', 'x'.repeat(65), 'sp ace']) {
    t.false(isDeviceId(bad), bad);
    t.throws(() => topics.state(bad), { instanceOf: TypeError });
  }
  for (const bad of ['ward/v1/+/state', 'ward/v1//state', 'ward/v1/gw-1', 'ward/v2/gw-1/state', 'other/gw-1/state', 'ward/v1/gw-1/']) {
    t.is(parseDeviceTopic(bad), undefined, bad);
  }
});
