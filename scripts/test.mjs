#!/usr/bin/env node
// `npm test`: the hygiene checks and the whole ava suite, ending with the one
// plain line CI reads as the test count: "N passed, N failed[, N skipped]".
// Type-check, lint and the binary build count as one check each. ava exits non-zero without a
// failed test when a test file leaves handles open (it times out waiting for
// the worker to exit): that is counted as a failure too, never hidden.
import { spawn } from 'node:child_process';

const args = process.argv.slice(2);
const only = args.filter((a) => !a.startsWith('-'));

function run(cmd, cmdArgs, { capture = false } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, cmdArgs, { stdio: ['ignore', capture ? 'pipe' : 'inherit', capture ? 'pipe' : 'inherit'] });
    let out = '';
    if (capture) {
      child.stdout.on('data', (d) => {
        out += d;
        process.stdout.write(d);
      });
      child.stderr.on('data', (d) => {
        out += d;
        process.stderr.write(d);
      });
    }
    child.on('exit', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), out }));
  });
}

let passed = 0;
let failed = 0;
let skipped = 0;
const failures = [];

// The single binaries are built on every run, so every feature is proven inside them
// (test/e2e/binary.test.ts). WARD_SKIP_BINARY=1 skips the build for a quick local loop; the binary
// tests then run whatever dist/ holds (or fail if it is empty). CI never sets it.
const steps = [
  ['typecheck', 'npx', ['tsc', '--noEmit', '-p', '.']],
  ['lint', 'npx', ['biome', 'check', '.']],
];
if (process.env.WARD_SKIP_BINARY !== '1') steps.push(['build:binary', 'node', ['scripts/build-binary.mjs']]);
for (const [name, cmd, cmdArgs] of steps) {
  process.stdout.write(`\n== ${name} ==\n`);
  const { code } = await run(cmd, cmdArgs);
  if (code === 0) passed++;
  else {
    failed++;
    failures.push(name);
  }
}

process.stdout.write('\n== ava ==\n');
const ava = await run('npx', ['ava', '--tap', ...only], { capture: true });
const count = (label) => Number(new RegExp(`^# ${label} (\\d+)$`, 'm').exec(ava.out)?.[1] ?? 0);
const avaPass = count('pass');
const avaFail = count('fail');
const avaSkip = count('skip') + count('todo');
passed += avaPass;
failed += avaFail;
skipped += avaSkip;
if (avaFail > 0) failures.push(`${avaFail} ava test(s)`);
if (ava.code !== 0 && avaFail === 0) {
  failed++;
  failures.push('ava exited non-zero without a failed test (open handles, a timeout or a crash in a test file)');
}
if (avaPass + avaFail === 0) {
  failed++;
  failures.push('ava ran no test');
}

process.stdout.write(`\n${failures.length ? `Failed: ${failures.join('; ')}\n` : ''}`);
process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exit(failed === 0 ? 0 : 1);
