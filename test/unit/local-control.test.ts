import { join } from 'node:path';
import test from 'ava';
import { callLocal, LocalControl } from '../../agent/control/local.js';
import type { EnforceService } from '../../agent/enforce/service.js';
import { createLogger } from '../../agent/log.js';
import { tempDir } from '../helpers/tmp.js';

// The agent's local socket over a real Unix socket. The enforcement behind it is a stand-in (only status() is
// called): the CLI and agent path through a real kernel is test/e2e/enforce-cli.test.ts.

test('the local socket answers "starting" until the agent is ready, so ward enforce never acts beside a starting agent', async (t) => {
  const path = join(await tempDir(t, 'ward-local-'), 'agent.sock');
  const enforce = { status: async () => ({ inKernel: 'yes' }) } as unknown as EnforceService;
  const local = new LocalControl({ path, enforce, log: createLogger({ level: 'silent', name: 'test' }) });
  await local.start();
  t.teardown(() => local.stop());

  t.deepEqual(await callLocal(path, 'ping', {}), { pong: true }, 'the socket is there: the CLI will not take the agent for absent');
  const starting = await t.throwsAsync(callLocal(path, 'enforce.status', {}));
  t.is((starting as { code?: string }).code, 'WARD_LOCAL_AGENT_STARTING');
  local.ready();
  t.deepEqual(await callLocal(path, 'enforce.status', {}), { inKernel: 'yes' });
});
