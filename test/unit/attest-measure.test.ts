import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { executableMeasurement } from '../../agent/attest/measure.js';
import { tempDir } from '../helpers/tmp.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('a large executable is hashed in chunks to the same digest as in one piece, and a rewrite is measured anew', async (t) => {
  const dir = await tempDir(t, 'ward-measure-');
  const file = join(dir, 'ward-bin');
  // Over the 1 MiB cache threshold and not a multiple of the 1 MiB read size.
  const first = randomBytes(3 * 1024 * 1024 + 123);
  await writeFile(file, first);
  t.is((await executableMeasurement(file)).sha256, sha256(first));

  const second = Buffer.from(first);
  second[second.length - 1] = (second.at(-1) ?? 0) ^ 0xff;
  await writeFile(file, second);
  t.is((await executableMeasurement(file)).sha256, sha256(second), 'a new write (new mtime) is not served from the cache');
});
