import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION } from '../api/index.js';

/**
 * A simulated PLC signal source for `ward dev` and tests: a few tags that
 * change over time (a cycle counter, a temperature sine, a running flag), so
 * later features (telemetry, enforcement) have something live to act on
 * without plant hardware. It exposes its current values through status().
 */
const configSchema = z.strictObject({
  /** Name of the simulated machine, e.g. "press-1". */
  machine: z.string().min(1).default('sim-plc-1'),
  periodMs: z.number().int().min(10).max(60_000).default(1_000),
});

export default definePlugin({
  manifest: {
    name: 'sim',
    version: '0.1.0',
    api: PLUGIN_API_VERSION,
    description: 'Simulated PLC tags for development and tests',
  },
  configSchema,
  create(ctx) {
    let cycles = 0;
    let timer: NodeJS.Timeout | undefined;
    const started = ctx.clock.monotonic();
    const tags = () => {
      const t = (ctx.clock.monotonic() - started) / 1000;
      return { cycles, temperatureC: Math.round((45 + 5 * Math.sin(t / 30)) * 10) / 10, running: true };
    };
    return {
      async start() {
        timer = setInterval(() => {
          cycles++;
        }, ctx.config.periodMs);
        timer.unref();
        ctx.log.info({ machine: ctx.config.machine }, 'simulated PLC started');
      },
      async stop() {
        if (timer) clearInterval(timer);
        timer = undefined;
      },
      status() {
        return { machine: ctx.config.machine, ...tags() };
      },
    };
  },
});
