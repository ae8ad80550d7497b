import type { AnyPluginDefinition } from './api/index.js';
import sim from './sim/index.js';

/**
 * Every plugin the agent can load. A static list (not a directory scan or a
 * dynamic import) so that the single binary bundles them all and a plugin
 * can only be added by a reviewed change here.
 */
export const builtinPlugins: readonly AnyPluginDefinition[] = [sim];
