import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, WardError } from '../core/errors.js';
import { generateSigningKey, privateKeyToPem, type SigningKey, signingKeyFromPem } from '../shared/keys.js';
import { ensurePrivateDir, fileMode, writeFileAtomic } from '../state/files.js';

/**
 * The device signing key, generated on the device and never sent anywhere.
 * Stored as PKCS#8 PEM, mode 0600 in a 0700 folder; a key file that group or
 * others can read is refused rather than used (it may have been copied).
 * The identity issue replaces the creation path with enrollment, behind this
 * same function.
 */
export const DEVICE_KEY_FILE = 'device-key.pem';

export async function loadOrCreateSigningKey(dir: string, fileName = DEVICE_KEY_FILE): Promise<{ key: SigningKey; created: boolean }> {
  await ensurePrivateDir(dir);
  const path = join(dir, fileName);
  if ((await fileMode(path)) === undefined) {
    const key = generateSigningKey();
    await writeFileAtomic(path, privateKeyToPem(key), 0o600);
    return { key, created: true };
  }
  return { key: await loadSigningKey(dir, fileName), created: false };
}

/**
 * The existing key, never a new one: for tools that must not mint an
 * identity by accident (`ward audit`). WARD_KEY_UNREADABLE when absent.
 */
export async function loadSigningKey(dir: string, fileName = DEVICE_KEY_FILE): Promise<SigningKey> {
  const path = join(dir, fileName);
  let mode: number | undefined;
  try {
    mode = await fileMode(path);
  } catch (cause) {
    throw new WardError(ErrorCodes.KEY_UNREADABLE, `key file ${path} cannot be read (${(cause as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause,
      details: { file: path },
    });
  }
  if (mode === undefined) throw new WardError(ErrorCodes.KEY_UNREADABLE, `no key file at ${path}`, { details: { file: path } });
  if ((mode & 0o077) !== 0) {
    throw new WardError(ErrorCodes.KEY_INSECURE_PERMISSIONS, `key file ${path} has mode ${mode.toString(8)}; it must be 600 (chmod 600 ${path})`, {
      details: { file: path, mode },
    });
  }
  let pem: string;
  try {
    pem = await readFile(path, 'utf8');
  } catch (cause) {
    throw new WardError(ErrorCodes.KEY_UNREADABLE, `key file ${path} cannot be read`, { cause, details: { file: path } });
  }
  try {
    return signingKeyFromPem(pem);
  } catch (cause) {
    throw new WardError(ErrorCodes.KEY_INVALID, `key file ${path} does not hold an ed25519 private key`, { cause, details: { file: path } });
  }
}
