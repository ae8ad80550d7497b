import { access, readdir, readFile, realpath, writeFile } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import type { HostFs } from '../api/index.js';

/**
 * HostFs over a real folder: '/' on a gateway, a fixture tree in tests.
 * Absolute paths are resolved inside the root, and a symlink that resolves
 * outside it is treated as absent (a fixture can never read the host's /sys).
 */
export function hostFs(root = '/'): HostFs {
  const base = resolve(root);
  const inside = (p: string) => join(base, p);
  const toHostPath = (real: string): string | undefined => {
    const rel = relative(base, real);
    if (rel.startsWith('..') || resolve(base, rel) !== real) return undefined;
    return `/${rel.split(sep).join('/')}`;
  };
  return {
    root: base,
    async readText(path) {
      try {
        return await readFile(inside(path), 'utf8');
      } catch {
        return undefined;
      }
    },
    async list(path) {
      try {
        return (await readdir(inside(path))).sort();
      } catch {
        return [];
      }
    },
    async realpath(path) {
      try {
        return toHostPath(await realpath(inside(path)));
      } catch {
        return undefined;
      }
    },
    async exists(path) {
      try {
        await access(inside(path));
        return true;
      } catch {
        return false;
      }
    },
    async writeText(path, value) {
      await writeFile(inside(path), value);
    },
  };
}
