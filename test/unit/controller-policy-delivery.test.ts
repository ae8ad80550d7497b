import { readFile } from 'node:fs/promises';
import test from 'ava';
import YAML from 'yaml';
import { MemoryAuditSink } from '../../agent/core/audit.js';
import { EnvelopeVerifier } from '../../agent/shared/envelope.js';
import { generateSigningKey, keyIdOf, publicKeyFromRaw } from '../../agent/shared/keys.js';
import { POLICY_TYPE } from '../../agent/shared/policy/message.js';
import { PolicyService } from '../../controller/policy.js';
import { tempDir } from '../helpers/tmp.js';

// A policy signed while the controller has no broker: recorded as undelivered, audited as such, and sent with the
// same version once the controller is connected again. The publish function stands in for the MQTT session (the
// path through a real broker is test/e2e/enforce-stack.test.ts).

const LINE = YAML.parse(await readFile(new URL('../fixtures/policies/line.yaml', import.meta.url), 'utf8')) as Record<string, unknown>;

test('a policy the broker did not take is recorded undelivered, then sent with the same version on redelivery', async (t) => {
  const key = generateSigningKey();
  const audit = new MemoryAuditSink();
  let connected = false;
  const sent: { topic: string; payload: Buffer; retain: boolean }[] = [];
  const policies = new PolicyService({
    dir: await tempDir(t, 'ward-policies-'),
    key,
    audit,
    publish: async (topic, payload, opts) => {
      if (!connected) throw new Error('controller session not connected');
      sent.push({ topic, payload, retain: opts.retain });
    },
  });

  const record = await policies.publish('gw-1', LINE, 'alice');
  t.false(record.delivered);
  t.is(sent.length, 0);
  t.like(audit.events.at(-1), { action: 'policy.publish', outcome: 'failure', code: 'WARD_CONTROLLER_POLICY_UNDELIVERED', target: 'gw-1' });
  t.is((await policies.current('gw-1'))?.delivered, false, 'the record says so, across a restart');
  t.is(await policies.redeliver(), 0, 'still not connected: nothing sent, nothing lost');
  t.is((await policies.current('gw-1'))?.delivered, false);

  connected = true;
  t.is(await policies.redeliver(), 1);
  t.is(sent.length, 1);
  t.is(sent[0]?.topic, 'ward/v1/gw-1/policy');
  t.true(sent[0]?.retain);
  const verifier = new EnvelopeVerifier({
    keys: (kid) => (kid === keyIdOf(key.publicRaw) ? { publicKey: publicKeyFromRaw(key.publicRaw), principal: 'controller' } : undefined),
    maxLifetimeSeconds: 400 * 86_400,
  });
  const verified = verifier.verify(sent[0]?.payload as Buffer, {
    typ: POLICY_TYPE,
    principal: 'controller',
    subject: 'gw-1',
  });
  t.is(verified.payload.version, record.version, 'the same version the operator was given');
  t.is((verified.payload as { policy?: { name?: string } }).policy?.name, 'line-3');
  t.true((await policies.current('gw-1'))?.delivered);
  t.like(audit.events.at(-1), { action: 'policy.publish', outcome: 'success', details: { version: record.version, redelivery: true } });
  t.is(await policies.redeliver(), 0, 'delivered once');

  // A policy published while connected is delivered at once.
  const next = await policies.publish('gw-1', LINE, 'alice');
  t.true(next.delivered);
  t.true(next.version > record.version);
  t.is(sent.length, 2);
});
