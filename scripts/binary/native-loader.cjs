'use strict';
// Loads a native addon inside the single binary, where node_modules does not
// exist. The build (scripts/build-binary.mjs) replaces classic-level's
// binding.js with a call to this loader and embeds the target's prebuild in
// the bundle (module "ward:embedded-native"). Embedding in the bundle, not
// as a SEA asset, is deliberate: it is the one mechanism that also works on
// armv7, whose newest Node on npm (20.11) has no node:sea assets.
//
// Order: $WARD_NATIVE_DIR/<name>.node (operator override) → the embedded
// bytes, written once (atomically, named by content hash) to a cache folder
// and loaded with process.dlopen → <name>.node beside the executable.
// The cache folder must not be mounted noexec.
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const crypto = require('node:crypto');

function dlopen(file) {
  const mod = { exports: {} };
  process.dlopen(mod, file);
  return mod.exports;
}

function cacheDir() {
  if (process.env.WARD_CACHE_DIR) return process.env.WARD_CACHE_DIR;
  if (process.env.CACHE_DIRECTORY) return process.env.CACHE_DIRECTORY.split(':')[0]; // systemd CacheDirectory=
  if (process.env.XDG_CACHE_HOME) return path.join(process.env.XDG_CACHE_HOME, 'ward');
  const home = os.homedir();
  if (home && home !== '/') return path.join(home, '.cache', 'ward');
  return path.join(os.tmpdir(), `ward-${typeof process.getuid === 'function' ? process.getuid() : 'user'}`);
}

function extract(name, bytes) {
  const hash = crypto.createHash('sha256').update(bytes).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), 'native');
  const file = path.join(dir, `${name}-${hash}.node`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, bytes, { mode: 0o500 });
    fs.renameSync(tmp, file); // concurrent starts never load a half-written file
  }
  return file;
}

module.exports = function loadNative(name) {
  if (process.env.WARD_NATIVE_DIR) return dlopen(path.join(process.env.WARD_NATIVE_DIR, `${name}.node`));
  const embedded = require('ward:embedded-native');
  if (embedded?.[name]) return dlopen(extract(name, Buffer.from(embedded[name])));
  const beside = path.join(path.dirname(process.execPath), `${name}.node`);
  if (fs.existsSync(beside)) return dlopen(beside);
  throw new Error(`ward: native module ${name} is neither embedded nor at ${beside} (set WARD_NATIVE_DIR to its folder)`);
};
