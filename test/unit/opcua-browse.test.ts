import test from 'ava';
import { type BrowseResultLike, type BrowseSessionLike, browseBounded } from '../../plugins/opcua/browse.js';

/**
 * The bounds of browseBounded against scripted servers. A fake session, because the misbehaviour is the point: a
 * server handing out continuation points forever, or refusing for lack of them forever, is not something
 * node-opcua-server can be made to do. The normal path (real continuation points) runs against the real
 * simulator in test/integration/opcua.test.ts.
 */
const good = { isGood: () => true, value: 0, name: 'Good' };
const status = (name: string, value: number) => ({ isGood: () => false, value, name });
const NO_CP = status('BadNoContinuationPoints', 0x804b0000);
const UNKNOWN = status('BadNodeIdUnknown', 0x80340000);

interface Calls {
  browse: string[][];
  next: { points: string[]; release: boolean }[];
}

/** Each node has `perNode` references served `page` at a time (Infinity: never ends). */
function pagedServer(perNode: Record<string, number>, page: number, extra: Partial<{ refuse: (node: string, attempt: number) => boolean }> = {}) {
  const calls: Calls = { browse: [], next: [] };
  const attempts = new Map<string, number>();
  const served = new Map<string, number>();
  const answer = (node: string): BrowseResultLike<string> => {
    const total = perNode[node];
    if (total === undefined) return { statusCode: UNKNOWN, references: [] };
    const from = served.get(node) ?? 0;
    const count = Math.min(page, total - from);
    served.set(node, from + count);
    const refs = Array.from({ length: count }, (_, i) => `${node}/${from + i}`);
    return { statusCode: good, references: refs, continuationPoint: from + count < total ? Buffer.from(node) : null };
  };
  const session: BrowseSessionLike<string, string> = {
    async browse(nodes) {
      calls.browse.push([...nodes]);
      return nodes.map((node) => {
        const n = (attempts.get(node) ?? 0) + 1;
        attempts.set(node, n);
        if (extra.refuse?.(node, n)) return { statusCode: NO_CP, references: [] };
        return answer(node);
      });
    },
    async browseNext(points, release) {
      calls.next.push({ points: points.map((p) => p.toString()), release });
      if (release) return points.map(() => ({ statusCode: good, references: [] }));
      return points.map((p) => answer(p.toString()));
    },
  };
  return { session, calls };
}

const limits = { maxReferences: 10_000, maxRequests: 100, nodesPerRequest: 2 };

test('continuation points are followed to the end; every reference kept, in order, per node', async (t) => {
  const { session, calls } = pagedServer({ a: 5, b: 2, c: 0 }, 2);
  const r = await browseBounded(session, ['a', 'b', 'c'], limits);
  t.is(r.truncated, undefined);
  t.deepEqual(
    r.results.map((x) => x.references),
    [['a/0', 'a/1', 'a/2', 'a/3', 'a/4'], ['b/0', 'b/1'], []],
  );
  t.deepEqual(calls.browse, [['a', 'b'], ['c']], 'nodes go in requests of nodesPerRequest');
  t.deepEqual(
    calls.next.map((n) => n.points),
    [['a'], ['a']],
  );
  t.is(r.requests, 4);
});

test('a server that hands out continuation points forever: stopped at the reference budget, its points released', async (t) => {
  const { session, calls } = pagedServer({ a: Number.POSITIVE_INFINITY }, 100);
  const r = await browseBounded(session, ['a'], { ...limits, maxReferences: 1_000 });
  t.is(r.truncated, 'stopped at 1000 references');
  t.is(r.results[0]?.references.length, 1_000);
  t.deepEqual(calls.next.at(-1), { points: ['a'], release: true }, 'the open continuation point is released');
  t.true(calls.next.length <= 11);
});

test('a server that pages one reference at a time forever: stopped at the request budget', async (t) => {
  const { session, calls } = pagedServer({ a: Number.POSITIVE_INFINITY }, 0);
  const r = await browseBounded(session, ['a'], { ...limits, maxRequests: 20 });
  t.is(r.truncated, 'stopped at 20 browse requests');
  t.is(calls.browse.length + calls.next.length, 21, '20 requests, then one release');
  t.true(calls.next.at(-1)?.release);
});

test('nodes refused for lack of continuation points are asked again later, a bounded number of times', async (t) => {
  // b is refused the first time only (a held the server's continuation points): asked again, answered.
  const once = pagedServer({ a: 1, b: 1 }, 1, { refuse: (node, attempt) => node === 'b' && attempt === 1 });
  const r1 = await browseBounded(once.session, ['a', 'b'], limits);
  t.deepEqual(
    r1.results.map((x) => x.references),
    [['a/0'], ['b/0']],
  );
  t.deepEqual(once.calls.browse, [['a', 'b'], ['b']]);

  // b is always refused, alone in its request: the server has no continuation point to give; its status says so.
  const always = pagedServer({ a: 1, b: 1, c: 1 }, 1, { refuse: (node) => node === 'b' });
  const r2 = await browseBounded(always.session, ['a', 'b', 'c'], { ...limits, nodesPerRequest: 1 });
  t.is(r2.results[1]?.status?.name, 'BadNoContinuationPoints');
  t.is(always.calls.browse.filter((c) => c.includes('b')).length, 1, 'alone in its request: refused all together, not retried');

  const pairs = pagedServer({ a: 1, b: 1, c: 1, d: 1 }, 1, { refuse: (node) => node === 'b' });
  const r3 = await browseBounded(pairs.session, ['a', 'b', 'c', 'd'], limits);
  t.is(r3.results[1]?.status?.name, 'BadNoContinuationPoints');
  // Refused beside a, then alone in the last request: refused all together, so not asked a third time.
  t.deepEqual(pairs.calls.browse, [['a', 'b'], ['c', 'd'], ['b']]);
  t.deepEqual(r3.results[3]?.references, ['d/0']);
});

test('a wrong node keeps its status; a result count that does not match the request is an error', async (t) => {
  const { session } = pagedServer({ a: 1 }, 1);
  const r = await browseBounded(session, ['a', 'missing'], limits);
  t.is(r.results[1]?.status?.name, 'BadNodeIdUnknown');
  t.deepEqual(r.results[0]?.references, ['a/0']);

  const short: BrowseSessionLike<string, string> = { browse: async () => [], browseNext: async () => [] };
  await t.throwsAsync(browseBounded(short, ['a'], limits), { message: 'the server answered 0 browse results for 1 nodes' });
});

test('nodes not reached before a budget ran out say so: no status', async (t) => {
  const { session } = pagedServer({ a: 3, b: 1, c: 1 }, 3);
  const r = await browseBounded(session, ['a', 'b', 'c'], { maxReferences: 2, maxRequests: 100, nodesPerRequest: 1 });
  t.is(r.truncated, 'stopped at 2 references');
  t.deepEqual(r.results[0]?.references, ['a/0', 'a/1']);
  t.is(r.results[1]?.status, undefined);
  t.is(r.results[2]?.status, undefined);
});
