import type { AnyPluginDefinition, ProtocolDescription } from './api/index.js';
import modbus from './modbus/index.js';
import opcua from './opcua/index.js';
import sim from './sim/index.js';

/**
 * Every plugin the agent can load. A static list (not a directory scan or a
 * dynamic import) so that the single binary bundles them all and a plugin
 * can only be added by a reviewed change here.
 */
export const builtinPlugins: readonly AnyPluginDefinition[] = [modbus, opcua, sim];

/**
 * The operation vocabularies of every built-in protocol plugin, by protocol key: what the controller (and
 * `ward enforce check` away from a gateway) checks a policy's `ops` against. A gateway checks against the
 * plugins it has enabled (PluginHost.protocols), so a policy using one it lacks is refused there.
 */
export function builtinProtocols(): Record<string, ProtocolDescription> {
  const out: Record<string, ProtocolDescription> = {};
  for (const p of builtinPlugins) if (p.protocol) out[p.protocol.name] = p.protocol;
  return out;
}
