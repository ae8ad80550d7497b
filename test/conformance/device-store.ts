import type { ExecutionContext, TestFn } from 'ava';
import type { DeviceRecord, DeviceStore } from '../../controller/store.js';

/**
 * The contract of a controller DeviceStore (CONVENTIONS.md #5). Every
 * implementation — the embedded LevelDB store, the in-memory one, and a
 * future shared database — runs this same suite.
 */
export function deviceStoreSuite(
  test: TestFn,
  name: string,
  factory: (t: ExecutionContext) => Promise<{ store: DeviceStore; reopen?: () => Promise<DeviceStore> }>,
): void {
  const rec = (id: string, extra: Partial<DeviceRecord> = {}): DeviceRecord => ({
    id,
    publicKey: 'A'.repeat(43),
    kid: `kid-${id}`,
    registeredAt: 1,
    online: false,
    ...extra,
  });

  test(`${name}: get returns undefined for an unknown id`, async (t) => {
    const { store } = await factory(t);
    t.is(await store.get('nope'), undefined);
    await store.close();
  });

  test(`${name}: put then get round-trips every field`, async (t) => {
    const { store } = await factory(t);
    const r = rec('gw-1', { online: true, lifecycle: 'active', session: 's1', stateVersion: 10, plugins: ['sim'], heartbeatSeconds: 60 });
    await store.put(r);
    t.deepEqual(await store.get('gw-1'), r);
    await store.close();
  });

  test(`${name}: put replaces, list returns each device once sorted by id`, async (t) => {
    const { store } = await factory(t);
    await store.put(rec('gw-b'));
    await store.put(rec('gw-a'));
    await store.put(rec('gw-b', { online: true }));
    const all = await store.list();
    t.deepEqual(
      all.map((r) => [r.id, r.online]),
      [
        ['gw-a', false],
        ['gw-b', true],
      ],
    );
    await store.close();
  });

  test(`${name}: a stored record is a copy, not a live reference`, async (t) => {
    const { store } = await factory(t);
    const r = { ...rec('gw-1'), plugins: ['a'] };
    await store.put(r);
    r.plugins.push('b');
    t.deepEqual((await store.get('gw-1'))?.plugins, ['a']);
    await store.close();
  });

  test(`${name}: records survive a close and reopen where the store is persistent`, async (t) => {
    const { store, reopen } = await factory(t);
    await store.put(rec('gw-1', { stateVersion: 42 }));
    await store.close();
    if (reopen === undefined) {
      t.pass('in-memory store: not persistent by design');
      return;
    }
    const again = await reopen();
    t.is((await again.get('gw-1'))?.stateVersion, 42);
    await again.close();
  });

  test(`${name}: enrollment codes and claims live beside devices without mixing, and persist`, async (t) => {
    const { store, reopen } = await factory(t);
    const code = {
      codeId: '00112233445566aa',
      tokenHash: 'h',
      site: 's',
      line: 'l',
      cell: 'c',
      createdAt: 1,
      exp: 2,
      status: 'open' as const,
    };
    const claim = { claimId: 'aa00112233445566', deviceId: 'gw-9', kid: 'k', claimCodeHash: 'x', status: 'pending' as const, scannedAt: 3 };
    await store.put(rec('gw-1'));
    await store.putCode(code);
    await store.putCode({ ...code, codeId: '00112233445566bb', status: 'used', usedBy: 'gw-1' });
    await store.putClaim(claim);
    t.deepEqual(await store.getCode(code.codeId), code);
    t.is(await store.getCode('ffffffffffffffff'), undefined);
    t.deepEqual(
      (await store.listCodes()).map((c) => c.status),
      ['open', 'used'],
    );
    t.deepEqual(await store.listClaims(), [claim]);
    t.deepEqual(
      (await store.list()).map((d) => d.id),
      ['gw-1'],
      'codes and claims never show up as devices',
    );
    await store.close();
    if (reopen === undefined) return;
    const again = await reopen();
    t.is((await again.getCode('00112233445566bb'))?.usedBy, 'gw-1');
    t.deepEqual(await again.getClaim(claim.claimId), claim);
    await again.close();
  });
}
