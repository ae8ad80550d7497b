/**
 * Browse with continuation points, bounded. node-opcua's browseAll follows a server's continuation points for as
 * long as the server hands them out, and retries nodes refused for lack of continuation points for as long as the
 * server refuses some: a hostile or broken server keeps it looping and accumulating references without end (a
 * timeout around it stops the wait, not the loop). Here every request counts against a budget, every reference
 * against another, and continuation points still open when a budget runs out are released on the server.
 *
 * Pure over a two-method session (node-opcua's ClientSession has both), so the bounds are tested against a server
 * that never stops; the normal path runs against the real simulator.
 */

export interface BrowseStatus {
  isGood(): boolean;
  readonly value: number;
  readonly name?: string;
}

export interface BrowseResultLike<R> {
  readonly statusCode: BrowseStatus;
  readonly references?: readonly R[] | null;
  readonly continuationPoint?: Buffer | null;
}

export interface BrowseSessionLike<D, R> {
  browse(nodesToBrowse: D[]): Promise<BrowseResultLike<R>[]>;
  browseNext(continuationPoints: Buffer[], releaseContinuationPoints: boolean): Promise<BrowseResultLike<R>[]>;
}

export interface BrowseLimits {
  /** References kept over the whole call; the rest of a server's answer is not looked at. */
  readonly maxReferences: number;
  /** Browse and BrowseNext requests over the whole call, releases included. */
  readonly maxRequests: number;
  /** Nodes per Browse request: a server holds a continuation point per node answered in part (often 10 in all). */
  readonly nodesPerRequest: number;
}

export interface BrowsedNode<R> {
  /** Undefined when the node was not browsed (a budget ran out first). */
  readonly status: BrowseStatus | undefined;
  readonly references: R[];
}

export interface BoundedBrowse<R> {
  readonly results: BrowsedNode<R>[];
  /** Why the answer is partial, or undefined when it is whole. */
  readonly truncated: string | undefined;
  /** Requests sent, releases included (to carry a budget across calls). */
  readonly requests: number;
}

/** A status that means "ask again later", not "this node is wrong". */
const NO_CONTINUATION_POINTS = new Set(['BadNoContinuationPoints', 'BadContinuationPointInvalid']);
/** A node refused for lack of continuation points is asked again this many times at most. */
const MAX_ATTEMPTS = 3;

export async function browseBounded<D, R>(session: BrowseSessionLike<D, R>, nodes: readonly D[], limits: BrowseLimits): Promise<BoundedBrowse<R>> {
  const results: { status: BrowseStatus | undefined; references: R[] }[] = nodes.map(() => ({ status: undefined, references: [] }));
  let references = 0;
  let requests = 0;
  let truncated: string | undefined;
  const attempts = new Array<number>(nodes.length).fill(0);
  const queue = nodes.map((_, i) => i);
  const per = Math.max(1, limits.nodesPerRequest);

  const exhausted = (): boolean => {
    if (truncated) return true;
    if (references >= limits.maxReferences) truncated = `stopped at ${limits.maxReferences} references`;
    else if (requests >= limits.maxRequests) truncated = `stopped at ${limits.maxRequests} browse requests`;
    return truncated !== undefined;
  };
  const keep = (index: number, refs: readonly R[] | null | undefined): void => {
    const target = results[index] as { references: R[] };
    for (const ref of refs ?? []) {
      if (references >= limits.maxReferences) {
        truncated ??= `stopped at ${limits.maxReferences} references`;
        return;
      }
      target.references.push(ref);
      references++;
    }
  };

  while (queue.length > 0 && !exhausted()) {
    const chunk = queue.splice(0, per);
    const answered = await session.browse(chunk.map((i) => nodes[i] as D));
    requests++;
    if (answered.length !== chunk.length) throw new Error(`the server answered ${answered.length} browse results for ${chunk.length} nodes`);
    let pending: { index: number; point: Buffer }[] = [];
    const retry: number[] = [];
    answered.forEach((r, k) => {
      const index = chunk[k] as number;
      attempts[index] = (attempts[index] ?? 0) + 1;
      if (NO_CONTINUATION_POINTS.has(r.statusCode.name ?? '') && (attempts[index] ?? 0) < MAX_ATTEMPTS) {
        retry.push(index);
        return;
      }
      (results[index] as { status: BrowseStatus | undefined }).status = r.statusCode;
      keep(index, r.references);
      if (r.continuationPoint && r.continuationPoint.length > 0) pending.push({ index, point: r.continuationPoint });
    });
    // Refused for lack of continuation points while others in the request were not: ask again in a later request,
    // when those are released. Refused all together: the server has none to give, and asking again will not help.
    if (retry.length > 0 && retry.length < chunk.length) queue.push(...retry);
    else for (const index of retry) (results[index] as { status: BrowseStatus | undefined }).status = answered[chunk.indexOf(index)]?.statusCode;

    while (pending.length > 0) {
      if (exhausted()) {
        // The server keeps a continuation point per pending node until released or its session ends.
        await session
          .browseNext(
            pending.map((p) => p.point),
            true,
          )
          .catch(() => undefined);
        requests++;
        break;
      }
      const next = await session.browseNext(
        pending.map((p) => p.point),
        false,
      );
      requests++;
      if (next.length !== pending.length) throw new Error(`the server answered ${next.length} browse-next results for ${pending.length} continuation points`);
      const again: { index: number; point: Buffer }[] = [];
      next.forEach((r, k) => {
        const index = (pending[k] as { index: number }).index;
        if (!r.statusCode.isGood()) {
          // What came before stays; the node's status says the rest is missing.
          (results[index] as { status: BrowseStatus | undefined }).status = r.statusCode;
          return;
        }
        keep(index, r.references);
        if (r.continuationPoint && r.continuationPoint.length > 0) again.push({ index, point: r.continuationPoint });
      });
      pending = again;
    }
  }
  if (queue.length > 0) exhausted();
  return { results, truncated, requests };
}
