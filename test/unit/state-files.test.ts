import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { VersionCounter } from '../../agent/control/version-counter.js';
import { Lifecycle } from '../../agent/core/lifecycle.js';
import { loadOrCreateSigningKey } from '../../agent/identity/keystore.js';
import { LifecycleStore } from '../../agent/state/lifecycle-store.js';
import { WARD_VERSION } from '../../agent/version.js';
import { tempDir } from '../helpers/tmp.js';

test('the device key is created 0600 in a 0700 folder, then loaded unchanged', async (t) => {
  const dir = join(await tempDir(t), 'state');
  const first = await loadOrCreateSigningKey(dir);
  t.true(first.created);
  t.is((await stat(join(dir, 'device-key.pem'))).mode & 0o777, 0o600);
  t.is((await stat(dir)).mode & 0o777, 0o700);
  const again = await loadOrCreateSigningKey(dir);
  t.false(again.created);
  t.is(again.key.publicRaw, first.key.publicRaw);
});

test('a key file readable by others is refused, not used', async (t) => {
  const dir = await tempDir(t);
  await loadOrCreateSigningKey(dir);
  await chmod(join(dir, 'device-key.pem'), 0o644);
  const err = await t.throwsAsync(loadOrCreateSigningKey(dir));
  t.is((err as { code?: string }).code, 'WARD_KEY_INSECURE_PERMISSIONS');
});

test('a corrupt key file is refused with its path', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'device-key.pem'), 'garbage', { mode: 0o600 });
  const err = await t.throwsAsync(loadOrCreateSigningKey(dir));
  t.is((err as { code?: string }).code, 'WARD_KEY_INVALID');
  t.regex(err?.message ?? '', /device-key\.pem/);
});

test('versions increase across restarts even when the clock goes back', async (t) => {
  const dir = await tempDir(t);
  let now = 1_000_000;
  const a = await VersionCounter.open(dir, () => now);
  const v1 = await a.next();
  const v2 = await a.next();
  t.is(v1, 1_000_000);
  t.is(v2, 1_000_001);
  now = 5; // RTC-less boot in 1970
  const b = await VersionCounter.open(dir, () => now);
  t.is(await b.next(), 1_000_002);
  t.deepEqual(JSON.parse(await readFile(join(dir, 'versions.json'), 'utf8')), { last: 1_000_002 });
});

test('concurrent callers never get the same version', async (t) => {
  const dir = await tempDir(t);
  const counter = await VersionCounter.open(dir, () => 42);
  const versions = await Promise.all(Array.from({ length: 20 }, () => counter.next()));
  t.is(new Set(versions).size, 20);
  t.deepEqual(
    versions,
    [...versions].sort((a, b) => a - b),
  );
});

test('the lifecycle state persists; a corrupt state file is an error, not a silent reset', async (t) => {
  const dir = await tempDir(t);
  const store = LifecycleStore.in(dir);
  t.is(await store.load(), undefined);
  const l = new Lifecycle('unprovisioned', () => 7);
  await store.save(l.apply('provision', 'test'));
  t.is(await store.load(), 'enrolling');
  await writeFile(join(dir, 'lifecycle.json'), '{"state":"root"}');
  t.is(((await t.throwsAsync(store.load())) as { code?: string }).code, 'WARD_STATE_CORRUPT');
  await writeFile(join(dir, 'lifecycle.json'), '{"sta');
  t.is(((await t.throwsAsync(store.load())) as { code?: string }).code, 'WARD_STATE_CORRUPT');
});

test('WARD_VERSION matches package.json', async (t) => {
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  t.is(WARD_VERSION, pkg.version);
});
