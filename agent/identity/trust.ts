import { readFile } from 'node:fs/promises';
import { ErrorCodes, WardError } from '../core/errors.js';
import { type SignedRoot, verifyInitialRoot } from '../shared/fleet-root.js';

/**
 * Reads the fleet root metadata (`root.json`): the one thing a fresh gateway
 * trusts, baked into its image. Verified as a self-signed initial root.
 */
export async function readRootFile(path: string, nowSec: number): Promise<SignedRoot> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new WardError(ErrorCodes.FLEET_NOT_INITIALISED, `fleet root ${path} cannot be read (create one with \`ward fleet init\`)`, {
      cause,
      details: { file: path },
    });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new WardError(ErrorCodes.FLEET_ROOT_INVALID, `fleet root ${path} is not JSON`, { cause, details: { file: path } });
  }
  return verifyInitialRoot(value, nowSec);
}
