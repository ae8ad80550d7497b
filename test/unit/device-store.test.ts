import { join } from 'node:path';
import test from 'ava';
import { LevelDeviceStore, MemoryDeviceStore } from '../../controller/store.js';
import { deviceStoreSuite } from '../conformance/device-store.js';
import { tempDir } from '../helpers/tmp.js';

deviceStoreSuite(test, 'memory', async () => ({ store: new MemoryDeviceStore() }));

deviceStoreSuite(test, 'level', async (t) => {
  const dir = join(await tempDir(t), 'db');
  return { store: await LevelDeviceStore.open(dir), reopen: () => LevelDeviceStore.open(dir) };
});

test('a LevelDB store already opened by another controller gives an actionable error', async (t) => {
  const dir = join(await tempDir(t), 'db');
  const first = await LevelDeviceStore.open(dir);
  t.teardown(() => first.close());
  const err = await t.throwsAsync(LevelDeviceStore.open(dir));
  t.is((err as { code?: string }).code, 'WARD_CONTROLLER_STORE');
  t.regex(err?.message ?? '', /in use by another process/);
});
