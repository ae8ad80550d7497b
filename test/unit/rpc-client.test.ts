import test from 'ava';
import { EnvelopeVerifier } from '../../agent/shared/envelope.js';
import { generateSigningKey } from '../../agent/shared/keys.js';
import { RpcClient } from '../../agent/shared/rpc.js';

// Found when `ward dev` ended with exit 1 on Ctrl-C under qemu: close() rejected a call whose publish had not
// finished, before the caller awaited it, and Node ended the process on the unhandled rejection.

test('closing while a call is still publishing rejects that call, and nothing else', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => process.off('unhandledRejection', onUnhandled));
  let releasePublish: (() => void) | undefined;
  const client = new RpcClient({
    key: generateSigningKey(),
    replicaId: 'ctl-1',
    verifier: new EnvelopeVerifier({ keys: () => undefined }),
    publish: () => new Promise<void>((resolve) => (releasePublish = resolve)),
    clock: { now: () => Date.now(), monotonic: () => performance.now() },
    timeoutMs: 5_000,
  });
  const call = client.call('gw-1', 'attest', { challenge: 'x'.repeat(32) });
  client.close();
  await new Promise((r) => setTimeout(r, 50));
  releasePublish?.();
  const err = await t.throwsAsync(call);
  t.is((err as { code?: string }).code, 'WARD_LINK_CLOSED');
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(unhandled, []);
});
