import test from 'ava';
import { canPublish, canSubscribe, clientIdAllowed, type Principal, principalFromCertificateCn } from '../../controller/acl.js';

// The broker least-privilege rules (DESIGN.md §4), shared by the embedded broker and the Mosquitto files.
const device: Principal = { kind: 'device', id: 'gw-a' };
const enroll: Principal = { kind: 'enroll', codeId: '0011223344556677' };
const claim: Principal = { kind: 'claim', claimId: '8899aabbccddeeff' };
const controller: Principal = { kind: 'controller' };

test('a device publishes and subscribes only under its own id', (t) => {
  t.true(canPublish(device, 'ward/v1/gw-a/state'));
  t.true(canSubscribe(device, 'ward/v1/gw-a/cmd'));
  t.true(canSubscribe(device, 'ward/v1/gw-a/#'));
  for (const topic of ['ward/v1/gw-b/state', 'ward/v1/gw-a', 'ward/v1/gw-ab/state', 'ward/v1/_enroll/0011223344556677/res', '$SYS/broker', 'other/x']) {
    t.false(canPublish(device, topic), topic);
  }
  for (const filter of ['ward/v1/+/state', 'ward/v1/#', '#', 'ward/v1/gw-b/#', '$share/g/ward/v1/+/state', 'ward/v1/gw-a+/x']) {
    t.false(canSubscribe(device, filter), filter);
  }
  t.false(canPublish(device, 'ward/v1/gw-a/+'), 'a topic name never holds a wildcard');
});

test('a token account reaches its own enrollment topics only; a claim account only reads its bundle', (t) => {
  t.true(canPublish(enroll, 'ward/v1/_enroll/0011223344556677/req'));
  t.true(canSubscribe(enroll, 'ward/v1/_enroll/0011223344556677/res'));
  t.false(canPublish(enroll, 'ward/v1/_enroll/0011223344556677/res'));
  t.false(canSubscribe(enroll, 'ward/v1/_enroll/+/res'));
  t.false(canPublish(enroll, 'ward/v1/_enroll/ffffffffffffffff/req'));
  t.false(canPublish(enroll, 'ward/v1/gw-a/state'));
  t.true(canSubscribe(claim, 'ward/v1/_claim/8899aabbccddeeff/bundle'));
  t.false(canSubscribe(claim, 'ward/v1/_claim/+/bundle'));
  t.false(canPublish(claim, 'ward/v1/_claim/8899aabbccddeeff/bundle'));
});

test('the controller reaches the ward tree (shared subscriptions included) and Sparkplug B, nothing else', (t) => {
  t.true(canSubscribe(controller, '$share/ward-controller/ward/v1/+/state'));
  t.true(canPublish(controller, 'ward/v1/gw-a/cmd'));
  t.false(canSubscribe(controller, '$SYS/#'));
  t.false(canPublish(controller, 'spBv1.0x/g/NCMD/x'));
  t.false(canPublish(controller, 'other/spBv1.0/g/NCMD/x'));
});

test('identities come from the certificate CN; client ids must belong to the principal', (t) => {
  t.deepEqual(principalFromCertificateCn('ward:controller'), controller);
  t.deepEqual(principalFromCertificateCn('gw-a'), device);
  t.is(principalFromCertificateCn('gw a'), undefined);
  t.is(principalFromCertificateCn('_enroll-0011223344556677'), undefined, 'no certificate can name a token account');
  t.is(principalFromCertificateCn(undefined), undefined);
  t.true(clientIdAllowed(device, 'ward-agent-gw-a'));
  t.true(clientIdAllowed(device, 'ward-agent-gw-a:renew'));
  t.false(clientIdAllowed(device, 'ward-agent-gw-b'));
  t.false(clientIdAllowed(device, 'ward-controller-x'));
  t.true(clientIdAllowed(enroll, 'ward-enroll-0011223344556677'));
  t.false(clientIdAllowed(enroll, 'ward-agent-gw-a'));
  t.true(clientIdAllowed(claim, 'ward-claim-8899aabbccddeeff'));
  t.true(clientIdAllowed(controller, 'ward-controller-ctl-a'));
});

test('a device is a Sparkplug edge node under its own id only: its births, data and deaths; its commands and host STATE to read', (t) => {
  for (const topic of [
    'spBv1.0/g1/NBIRTH/gw-a',
    'spBv1.0/g1/NDATA/gw-a',
    'spBv1.0/g1/NDEATH/gw-a',
    'spBv1.0/other/DDATA/gw-a/cnc-1',
    'spBv1.0/g1/DBIRTH/gw-a/plc.2',
  ]) {
    t.true(canPublish(device, topic), topic);
  }
  for (const topic of [
    'spBv1.0/g1/NBIRTH/gw-b',
    'spBv1.0/g1/NCMD/gw-a',
    'spBv1.0/g1/DCMD/gw-a/cnc-1',
    'spBv1.0/STATE/ward-controller',
    'spBv1.0/g1/NDATA/gw-a/extra',
    'spBv1.0/g1/DDATA/gw-b/cnc-1',
    'spBv1.0/g1/BOGUS/gw-a',
  ]) {
    t.false(canPublish(device, topic), topic);
  }
  for (const filter of ['spBv1.0/g1/NCMD/gw-a', 'spBv1.0/+/NCMD/gw-a', 'spBv1.0/g1/DCMD/gw-a/+', 'spBv1.0/STATE/ward-controller']) {
    t.true(canSubscribe(device, filter), filter);
  }
  for (const filter of [
    'spBv1.0/#',
    'spBv1.0/+/NCMD/+',
    'spBv1.0/g1/NCMD/gw-b',
    'spBv1.0/g1/NDATA/gw-b',
    'spBv1.0/STATE/+',
    'spBv1.0/STATE/#',
    'spBv1.0/#/NCMD/gw-a',
    'spBv1.0/g1/DCMD/gw-a/#',
  ]) {
    t.false(canSubscribe(device, filter), filter);
  }
  t.true(clientIdAllowed(device, 'ward-agent-gw-a:spb'));
  t.false(clientIdAllowed(device, 'ward-agent-gw-b:spb'));
  // A device enrolled as `gw-a-spb` (or `gw-a-renew`) cannot take gw-a's sessions: suffixes use ':', never in an id.
  const lookalike: Principal = { kind: 'device', id: 'gw-a-spb' };
  t.false(clientIdAllowed(lookalike, 'ward-agent-gw-a:spb'));
  t.true(clientIdAllowed(lookalike, 'ward-agent-gw-a-spb'));
  t.false(clientIdAllowed(device, 'ward-agent-gw-a-spb'));
  t.true(canSubscribe(controller, 'spBv1.0/#'));
  t.true(canPublish(controller, 'spBv1.0/STATE/ward-controller'));
  t.true(canPublish(controller, 'spBv1.0/g1/NCMD/gw-a'));
});

test('an observer (CN ward:observer) reads Sparkplug B and nothing else, and publishes nothing', (t) => {
  const observer = principalFromCertificateCn('ward:observer');
  t.deepEqual(observer, { kind: 'observer' });
  if (observer === undefined) return;
  t.true(canSubscribe(observer, 'spBv1.0/#'));
  t.true(canSubscribe(observer, 'spBv1.0/ward/DDATA/gw-a/+'));
  t.false(canSubscribe(observer, 'ward/v1/#'));
  t.false(canSubscribe(observer, '#'));
  for (const topic of ['spBv1.0/ward/NCMD/gw-a', 'spBv1.0/STATE/ward-controller', 'spBv1.0/ward/NDATA/gw-a', 'ward/v1/gw-a/cmd'])
    t.false(canPublish(observer, topic), topic);
  t.true(clientIdAllowed(observer, 'ward-observer-scada'));
  t.false(clientIdAllowed(observer, 'ward-controller-x'));
});
