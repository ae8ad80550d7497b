// Entry of the single binary. agent/main.ts uses top-level await, which a
// CommonJS bundle (what Node's single-executable blob runs) cannot hold, so
// the bundle starts here instead.
import { main } from '../../agent/cli/index.js';

main(process.argv).catch((err: unknown) => {
  process.stderr.write(`ward: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
