import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ErrorCodes, WardError } from '../core/errors.js';

/**
 * Small-file persistence for the state folder. Writes are atomic and durable
 * (write a temp file, fsync it, rename over the target, fsync the folder), so
 * a power cut leaves either the old or the new content, never a torn file.
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

export async function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): Promise<void> {
  // Unique per call: two writers of the same file in one process must not share a temp file.
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const handle = await open(tmp, 'w', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await chmod(tmp, mode);
  await rename(tmp, path);
  const dirHandle = await open(dirname(path), 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

/** Reads a JSON state file; undefined if absent; WARD_STATE_CORRUPT (naming the file) if unreadable as JSON. */
export async function readJsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new WardError(ErrorCodes.STATE_CORRUPT, `state file ${path} is not valid JSON`, { cause, details: { file: path } });
  }
}

export async function fileMode(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mode & 0o777;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
