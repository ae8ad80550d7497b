import { createServer } from 'node:net';

/** Ports this process has handed out: the kernel gives a just-closed port again often enough to matter. */
const handedOut = new Set<number>();

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it), never one this process handed out
 * before: tests of one file run concurrently, and two of them listening "on a free port" picked a moment
 * apart could otherwise get the same one (measured here: a repeat within 16 calls about 1 time in 300).
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await kernelPort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('freePort: the kernel kept giving ports already handed out');
}

function kernelPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` every `intervalMs` until it returns a truthy value or `timeoutMs` passes (then throws with `what`;
 * a function there is asked at the timeout, so the error can say what the state was instead of only what was awaited).
 */
export async function waitFor<T>(
  what: string | (() => string | Promise<string>),
  check: () => Promise<T> | T,
  timeoutMs = 45_000,
  intervalMs = 100,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const described = typeof what === 'string' ? what : await Promise.resolve(what()).catch((err: unknown) => `(state unreadable: ${String(err)})`);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${described}${lastError ? ` (last error: ${String(lastError)})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
