import { CLAIM_ROOT, ENROLL_ROOT, isDeviceId, TOPIC_ROOT } from '../agent/shared/topics.js';
import { parseSparkplugTopic, SPB_NAMESPACE } from '../agent/telemetry/sparkplug/topics.js';

export { claimUsername, enrollUsername, parseClaimUsername, parseEnrollUsername } from '../agent/shared/topics.js';

/**
 * Who a broker client is, and what it may touch (DESIGN.md §4, least
 * privilege). The same rules drive the embedded broker's hooks and the
 * Mosquitto ACL files (mosquitto.ts), so both brokers enforce one policy:
 * - a device: only `ward/v1/<its id>/…`;
 * - an enrollment token account: publish its request, read its response;
 * - a claim account: read its claim's bundle, nothing else;
 * - the controller: the whole `ward/v1/…` tree, and all of Sparkplug B (`spBv1.0/…`: it is the primary host);
 * - an observer (a SCADA, a historian, a person with a Sparkplug tool): reads Sparkplug B, publishes nothing;
 * - a device, as a Sparkplug edge node named by its id: its own NBIRTH/NDATA/NDEATH and
 *   DBIRTH/DDATA/DDEATH in any group; it reads its own NCMD/DCMD and host STATE messages.
 * Anything else (`$SYS`, other roots, wildcards reaching across devices) is denied.
 */
export type Principal =
  | { readonly kind: 'controller' }
  | { readonly kind: 'observer' }
  | { readonly kind: 'device'; readonly id: string }
  | { readonly kind: 'enroll'; readonly codeId: string }
  | { readonly kind: 'claim'; readonly claimId: string };

/** The controller's certificate CN: ':' can never occur in a device id, so no device can claim it. */
export const CONTROLLER_IDENTITY = 'ward:controller';
/** A read-only Sparkplug consumer's certificate CN (issued by the fleet CA, e.g. by `ward dev`). */
export const OBSERVER_IDENTITY = 'ward:observer';
export function principalFromCertificateCn(cn: string | undefined): Extract<Principal, { kind: 'controller' | 'device' | 'observer' }> | undefined {
  if (cn === CONTROLLER_IDENTITY) return { kind: 'controller' };
  if (cn === OBSERVER_IDENTITY) return { kind: 'observer' };
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
      return under(topic, TOPIC_ROOT) || under(topic, SPB_NAMESPACE);
    case 'device':
      return under(topic, `${TOPIC_ROOT}/${p.id}`) || sparkplugPublishAllowed(p.id, topic);
    case 'enroll':
      return topic === `${ENROLL_ROOT}/${p.codeId}/req`;
    case 'claim':
    case 'observer':
      return false;
  }
}

export function canSubscribe(p: Principal, filter: string): boolean {
  const unshared = filter.startsWith('$share/') ? filter.split('/').slice(2).join('/') : filter;
  switch (p.kind) {
    case 'controller':
      return under(unshared, TOPIC_ROOT) || under(unshared, SPB_NAMESPACE);
    case 'device': {
      const prefix = `${TOPIC_ROOT}/${p.id}`;
      // The device's own id must be spelled out: `ward/v1/+/…` would reach every device.
      return under(unshared, prefix) || unshared === `${prefix}/#` || sparkplugSubscribeAllowed(p.id, unshared);
    }
    case 'enroll':
      return unshared === `${ENROLL_ROOT}/${p.codeId}/res`;
    case 'claim':
      return unshared === `${CLAIM_ROOT}/${p.claimId}/bundle`;
    case 'observer':
      return under(unshared, SPB_NAMESPACE);
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
      // The renewal and Sparkplug sessions take a ':' suffix: ':' never occurs in a device id, so no other device's
      // id can spell them (with '-renew', a device enrolled as `gw-a-renew` could knock gw-a's renewal off).
      return clientId === `ward-agent-${p.id}` || clientId === `ward-agent-${p.id}:renew` || clientId === `ward-agent-${p.id}:spb`;
    case 'enroll':
      return clientId === `ward-enroll-${p.codeId}`;
    case 'claim':
      return clientId === `ward-claim-${p.claimId}`;
    case 'observer':
      return clientId.startsWith('ward-observer-');
  }
}

/** An edge node publishes only its own births, deaths and data (never commands, never STATE). */
function sparkplugPublishAllowed(deviceId: string, topic: string): boolean {
  const t = parseSparkplugTopic(topic);
  if (t === undefined || t.kind === 'state' || t.edgeNode !== deviceId) return false;
  return t.type !== 'NCMD' && t.type !== 'DCMD';
}

/**
 * An edge node reads its own commands (`…/DCMD/<id>/+` for all its devices; the group may be a wildcard) and any
 * host's STATE by name. Nothing else: no other node's data, no `spBv1.0/#`.
 */
function sparkplugSubscribeAllowed(deviceId: string, filter: string): boolean {
  const parts = filter.split('/');
  if (parts[0] !== SPB_NAMESPACE) return false;
  if (parts.length === 3 && parts[1] === 'STATE') return parseSparkplugTopic(filter)?.kind === 'state';
  const [, group, type, node, device] = parts;
  if (group === undefined || group === '#' || node !== deviceId) return false;
  if (group !== '+' && parseSparkplugTopic(`${SPB_NAMESPACE}/${group}/NCMD/${deviceId}`) === undefined) return false;
  if (parts.length === 4) return type === 'NCMD';
  return parts.length === 5 && type === 'DCMD' && (device === '+' || (device !== undefined && !device.includes('#')));
}

/** The largest Sparkplug payload a device may publish (the controller refuses larger ones before decoding anyway). */
export const SPARKPLUG_MAX_PAYLOAD = 1024 * 1024;

/**
 * Sparkplug B forbids retained node and device messages, and a retained one would be replayed to every host that
 * subscribes; an oversized one costs every subscriber. Checked on the embedded broker (Mosquitto has one global
 * packet limit, which the controller's own policy documents exceed).
 */
export function sparkplugPacketAllowed(packet: { topic: string; retain?: boolean; payload: Buffer | string }): boolean {
  if (!packet.topic.startsWith(`${SPB_NAMESPACE}/`)) return true;
  return packet.retain !== true && Buffer.byteLength(packet.payload) <= SPARKPLUG_MAX_PAYLOAD;
}
