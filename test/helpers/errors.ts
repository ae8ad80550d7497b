/** The stable error code `fn` throws, undefined if it does not throw; an uncoded error shows as such (never as a pass). */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? `uncoded error: ${(err as Error).message}`;
  }
}
