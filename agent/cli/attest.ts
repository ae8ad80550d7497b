import { join } from 'node:path';
import { builtinPlugins } from '../../plugins/index.js';
import { measure } from '../attest/measure.js';
import { measureSourcesFor } from '../attest/service.js';
import { loadConfigFile } from '../config/load.js';
import { agentConfigSchema } from '../config/schema.js';
import { callLocal } from '../control/local.js';
import { ErrorCodes, WardError } from '../core/errors.js';
import { foldLog, type Measurement } from '../shared/attest/evidence.js';
import type { EnforceIo } from './enforce.js';
import { operatorName } from './enforce.js';

/**
 * `ward attest show|now` for a technician at the gateway. `show` prints the
 * measurement log and its aggregate: the running agent's (what it would
 * send), or, with no agent running, a fresh measurement of the files. `now`
 * asks the running agent to measure again and to get a verdict from the
 * controller at once.
 */
export async function attestShow(opts: { config: string; json?: boolean }, io: EnforceIo): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  const viaAgent = (await callLocal(join(config.stateDir, 'agent.sock'), 'attest.show', {}).catch(() => undefined)) as
    | { trust: string; aggregate: string; log: Measurement[] }
    | undefined;
  const view =
    viaAgent ??
    (await (async () => {
      const log = await measure(
        measureSourcesFor({
          configFile: opts.config,
          config,
          stateDir: config.stateDir,
          plugins: config.plugins,
          pluginVersions: new Map(builtinPlugins.map((p) => [p.manifest.name, p.manifest.version])),
          fleetRootFile: config.trust?.rootFile,
          controllerPublicKey: config.controller?.publicKey,
        }),
      );
      return { trust: 'not running', aggregate: foldLog(log).toString('hex'), log };
    })());
  if (opts.json) {
    io.out.write(`${JSON.stringify(view, null, 2)}\n`);
    return;
  }
  io.out.write(`trust level: ${view.trust}${viaAgent ? '' : ' (no agent running: measured the files now)'}\n`);
  for (const m of view.log) io.out.write(`  ${m.kind.padEnd(13)} ${m.sha256.slice(0, 16)}…  ${m.name}\n`);
  io.out.write(`aggregate: ${view.aggregate}\n`);
}

export async function attestNow(opts: { config: string; as?: string }, io: EnforceIo): Promise<void> {
  const config = await loadConfigFile(opts.config, agentConfigSchema);
  const result = (await callLocal(join(config.stateDir, 'agent.sock'), 'attest.now', { actor: operatorName(opts.as) })) as
    | { trust: string; aggregate: string; changed?: Measurement[] }
    | undefined;
  if (result === undefined) {
    throw new WardError(
      ErrorCodes.ATTEST_UNAVAILABLE,
      'no agent is running: attestation needs the agent (it holds the link to the controller); `ward attest show` measures without it',
    );
  }
  const changed = result.changed ?? [];
  io.out.write(
    changed.length > 0
      ? `changed since the last measurement:\n${changed.map((m) => `  ${m.kind} ${m.name} ${m.sha256.slice(0, 16)}…`).join('\n')}\n`
      : 'no change since the last measurement\n',
  );
  io.out.write(
    `asked the controller for a verdict (trust level ${result.trust}, aggregate ${result.aggregate.slice(0, 16)}…): see its console or GET /api/devices/<id>/attestation\n`,
  );
}
