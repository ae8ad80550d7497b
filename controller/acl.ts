import { CLAIM_ROOT, ENROLL_ROOT, isDeviceId, TOPIC_ROOT } from '../agent/shared/topics.js';

export { claimUsername, enrollUsername, parseClaimUsername, parseEnrollUsername } from '../agent/shared/topics.js';

/**
 * Who a broker client is, and what it may touch (DESIGN.md §4, least
 * privilege). The same rules drive the embedded broker's hooks and the
 * Mosquitto ACL files (mosquitto.ts), so both brokers enforce one policy:
 * - a device: only `ward/v1/<its id>/…`;
 * - an enrollment token account: publish its request, read its response;
 * - a claim account: read its claim's bundle, nothing else;
 * - the controller: the whole `ward/v1/…` tree.
 * Anything else (`$SYS`, other roots, wildcards reaching across devices) is denied.
 */
export type Principal =
  | { readonly kind: 'controller' }
  | { readonly kind: 'device'; readonly id: string }
  | { readonly kind: 'enroll'; readonly codeId: string }
  | { readonly kind: 'claim'; readonly claimId: string };

/** The controller's certificate CN: ':' can never occur in a device id, so no device can claim it. */
export const CONTROLLER_IDENTITY = 'ward:controller';
export function principalFromCertificateCn(cn: string | undefined): Extract<Principal, { kind: 'controller' | 'device' }> | undefined {
  if (cn === CONTROLLER_IDENTITY) return { kind: 'controller' };
  if (cn !== undefined && isDeviceId(cn)) return { kind: 'device', id: cn };
  return undefined;
}

function under(topic: string, prefix: string): boolean {
  return topic.startsWith(`${prefix}/`);
}

/** Topic names never contain wildcards ([MQTT-3.3.2-2]); a filter may, so its prefix must be literal. */
export function canPublish(p: Principal, topic: string): boolean {
  if (topic.includes('+') || topic.includes('#')) return false;
  switch (p.kind) {
    case 'controller':
      return under(topic, TOPIC_ROOT);
    case 'device':
      return under(topic, `${TOPIC_ROOT}/${p.id}`);
    case 'enroll':
      return topic === `${ENROLL_ROOT}/${p.codeId}/req`;
    case 'claim':
      return false;
  }
}

export function canSubscribe(p: Principal, filter: string): boolean {
  const unshared = filter.startsWith('$share/') ? filter.split('/').slice(2).join('/') : filter;
  switch (p.kind) {
    case 'controller':
      return under(unshared, TOPIC_ROOT);
    case 'device': {
      const prefix = `${TOPIC_ROOT}/${p.id}`;
      // The device's own id must be spelled out: `ward/v1/+/…` would reach every device.
      return under(unshared, prefix) || unshared === `${prefix}/#`;
    }
    case 'enroll':
      return unshared === `${ENROLL_ROOT}/${p.codeId}/res`;
    case 'claim':
      return unshared === `${CLAIM_ROOT}/${p.claimId}/bundle`;
  }
}

/**
 * The client id each kind of principal must use. A broker drops an existing
 * session when another connects with the same client id ([MQTT-3.1.4-2]), so
 * free choice would let any authenticated client knock any other off.
 */
export function clientIdAllowed(p: Principal, clientId: string): boolean {
  switch (p.kind) {
    case 'controller':
      return clientId.startsWith('ward-controller-');
    case 'device':
      return clientId === `ward-agent-${p.id}` || clientId === `ward-agent-${p.id}-renew`;
    case 'enroll':
      return clientId === `ward-enroll-${p.codeId}`;
    case 'claim':
      return clientId === `ward-claim-${p.claimId}`;
  }
}
