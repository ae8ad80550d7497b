import type { HostFs, LedPattern, StatusLed } from '../api/index.js';

/**
 * A status LED through the kernel's LED class (/sys/class/leds/<name>):
 * steady = trigger "none" + brightness; blink = trigger "timer" with
 * delay_on/delay_off, so the kernel blinks it and a hung agent cannot leave
 * it frozen mid-blink. Writing needs root (or a udev rule for the group).
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
    for (const name of candidates) if (await fs.exists(`/sys/class/leds/${name}/brightness`)) return new SysfsLed(fs, name);
    return undefined;
  }

  async show(pattern: LedPattern): Promise<void> {
    if (pattern.mode === 'blink') {
      await this.fs.writeText(`${this.#dir}/trigger`, 'timer');
      // The timer trigger creates delay_on/delay_off once selected; set them after.
      await this.fs.writeText(`${this.#dir}/delay_on`, String(pattern.onMs));
      await this.fs.writeText(`${this.#dir}/delay_off`, String(pattern.offMs));
      return;
    }
    await this.fs.writeText(`${this.#dir}/trigger`, 'none');
    const max = Number((await this.fs.readText(`${this.#dir}/max_brightness`))?.trim() ?? '1') || 1;
    await this.fs.writeText(`${this.#dir}/brightness`, pattern.mode === 'on' ? String(max) : '0');
  }

  async current(): Promise<LedPattern> {
    const trigger = (await this.fs.readText(`${this.#dir}/trigger`)) ?? '';
    // The kernel lists every trigger and brackets the active one; a plain value is what we wrote (fixtures).
    const active = /\[([^\]]+)\]/.exec(trigger)?.[1] ?? trigger.trim();
    if (active === 'timer') {
      const onMs = Number((await this.fs.readText(`${this.#dir}/delay_on`))?.trim());
      const offMs = Number((await this.fs.readText(`${this.#dir}/delay_off`))?.trim());
      return { mode: 'blink', onMs, offMs };
    }
    const brightness = Number((await this.fs.readText(`${this.#dir}/brightness`))?.trim() ?? '0');
    return brightness > 0 ? { mode: 'on' } : { mode: 'off' };
  }
}
