import type { BoardProfile, DetectedBoard, HostFs, MappedPort, PortSpec, TpmInfo } from '../api/index.js';
import { BOARD_PROFILES } from './profiles.js';

/**
 * Identifies the board and maps its logical ports to interfaces. Pure over a
 * HostFs, so tests run it on fixture trees of real boards.
 * Identity: /proc/device-tree/model (ARM boards; NUL-terminated) else DMI.
 */
export class UnknownBoardError extends Error {
  readonly code = 'WARD_HW_UNKNOWN_BOARD';
}

const clean = (s: string | undefined) => s?.replace(/\0+$/, '').trim() || undefined;

export async function readModel(fs: HostFs): Promise<{ model: string; source: 'device-tree' | 'dmi' } | undefined> {
  const dt = clean(await fs.readText('/proc/device-tree/model'));
  if (dt) return { model: dt, source: 'device-tree' };
  const vendor = clean(await fs.readText('/sys/class/dmi/id/sys_vendor'));
  const product = clean(await fs.readText('/sys/class/dmi/id/product_name'));
  if (vendor || product) return { model: [vendor, product].filter(Boolean).join(' '), source: 'dmi' };
  return undefined;
}

export async function detectBoard(fs: HostFs, options: { board?: string; profiles?: readonly BoardProfile[] } = {}): Promise<DetectedBoard> {
  const profiles = options.profiles ?? BOARD_PROFILES;
  const identity = await readModel(fs);
  let profile: BoardProfile | undefined;
  if (options.board && options.board !== 'auto') {
    profile = profiles.find((p) => p.id === options.board);
    if (!profile) throw new UnknownBoardError(`board profile '${options.board}' is not known (known: ${profiles.map((p) => p.id).join(', ')})`);
  } else {
    profile =
      profiles.find((p) => p.id !== 'generic' && identity && p.source === identity.source && p.model.test(identity.model)) ??
      profiles.find((p) => p.id === 'generic');
    if (!profile) throw new UnknownBoardError(`no board profile matches '${identity?.model ?? 'unknown model'}'`);
  }
  const [ports, tpm, serial] = await Promise.all([mapPorts(fs, profile.ports), detectTpm(fs), readSerial(fs)]);
  return { profile, model: identity?.model ?? 'unknown', ports, tpm, serial };
}

async function devices(fs: HostFs, classDir: '/sys/class/net' | '/sys/class/tty'): Promise<{ name: string; path: string }[]> {
  const out: { name: string; path: string }[] = [];
  for (const name of await fs.list(classDir)) {
    const path = await fs.realpath(`${classDir}/${name}`);
    // Virtual devices (lo, bridges, veth, ptys) are never ports.
    if (path && !path.startsWith('/sys/devices/virtual/')) out.push({ name, path });
  }
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

export async function mapPorts(fs: HostFs, specs: readonly PortSpec[]): Promise<MappedPort[]> {
  const [nets, ttys] = await Promise.all([devices(fs, '/sys/class/net'), devices(fs, '/sys/class/tty')]);
  return specs.map((spec) => {
    const pool = spec.kind === 'ethernet' ? nets : ttys;
    const match = pool.filter((d) => spec.devicePath.test(d.path))[spec.nth ?? 0];
    const device = match ? (spec.kind === 'ethernet' ? match.name : `/dev/${match.name}`) : undefined;
    return { name: spec.name, kind: spec.kind, label: spec.label, device };
  });
}

export async function detectTpm(fs: HostFs): Promise<TpmInfo> {
  if (!(await fs.exists('/sys/class/tpm/tpm0'))) return { present: false };
  const version = clean(await fs.readText('/sys/class/tpm/tpm0/tpm_version_major'));
  const device = (await fs.exists('/dev/tpmrm0')) ? '/dev/tpmrm0' : (await fs.exists('/dev/tpm0')) ? '/dev/tpm0' : undefined;
  return { present: true, ...(version ? { version } : {}), ...(device ? { device } : {}) };
}

async function readSerial(fs: HostFs): Promise<string | undefined> {
  return clean(await fs.readText('/proc/device-tree/serial-number')) ?? clean(await fs.readText('/sys/class/dmi/id/product_serial'));
}
