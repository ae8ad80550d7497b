import type { HostFs, LedPattern, StatusLed } from '../api/index.js';

/**
 * A status LED through the kernel's LED class (/sys/class/leds/<name>), always
 * on the "timer" trigger: the kernel does the blinking (a hung agent cannot
 * freeze it mid-blink), and every pattern is just delay_on/delay_off —
 * delay_on 0 is off, delay_off 0 is steady on (ledtrig-timer semantics). So
 * an unprivileged service needs write access to those two files only; the
 * image's udev rule selects the trigger at boot and grants that access.
 */
export class SysfsLed implements StatusLed {
  readonly #dir: string;
  constructor(
    private readonly fs: HostFs,
    readonly name: string,
  ) {
    this.#dir = `/sys/class/leds/${name}`;
  }

  /** The first LED of `candidates` present on this board, if any. */
  static async find(fs: HostFs, candidates: readonly string[]): Promise<SysfsLed | undefined> {
    for (const name of candidates) if (await fs.exists(`/sys/class/leds/${name}/trigger`)) return new SysfsLed(fs, name);
    return undefined;
  }

  async show(pattern: LedPattern): Promise<void> {
    if ((await this.#trigger()) !== 'timer') await this.fs.writeText(`${this.#dir}/trigger`, 'timer');
    const [onMs, offMs] = pattern.mode === 'blink' ? [pattern.onMs, pattern.offMs] : pattern.mode === 'on' ? [1, 0] : [0, 1];
    // Order matters for a glitch-free switch: the kernel restarts the blink on each write.
    await this.fs.writeText(`${this.#dir}/delay_off`, String(offMs));
    await this.fs.writeText(`${this.#dir}/delay_on`, String(onMs));
  }

  async current(): Promise<LedPattern> {
    if ((await this.#trigger()) !== 'timer') {
      const brightness = Number((await this.fs.readText(`${this.#dir}/brightness`))?.trim() ?? '0');
      return brightness > 0 ? { mode: 'on' } : { mode: 'off' };
    }
    const onMs = Number((await this.fs.readText(`${this.#dir}/delay_on`))?.trim() ?? '0');
    const offMs = Number((await this.fs.readText(`${this.#dir}/delay_off`))?.trim() ?? '0');
    if (onMs === 0) return { mode: 'off' };
    if (offMs === 0) return { mode: 'on' };
    return { mode: 'blink', onMs, offMs };
  }

  async #trigger(): Promise<string> {
    const text = (await this.fs.readText(`${this.#dir}/trigger`)) ?? '';
    // The kernel lists every trigger and brackets the active one; a plain value is what a fixture holds.
    return /\[([^\]]+)\]/.exec(text)?.[1] ?? text.trim();
  }
}
