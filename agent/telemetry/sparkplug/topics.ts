/**
 * The Sparkplug B topic namespace (DESIGN.md §4):
 * `spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]`, and the
 * primary host's `spBv1.0/STATE/<host_id>`. Pure: shared by the agent (edge
 * node), the controller (host application) and the broker ACL.
 */
export const SPB_NAMESPACE = 'spBv1.0';

export type NodeMessageType = 'NBIRTH' | 'NDEATH' | 'NDATA' | 'NCMD';
export type DeviceMessageType = 'DBIRTH' | 'DDEATH' | 'DDATA' | 'DCMD';
export type MessageType = NodeMessageType | DeviceMessageType;

const NODE_TYPES = new Set<string>(['NBIRTH', 'NDEATH', 'NDATA', 'NCMD']);
const DEVICE_TYPES = new Set<string>(['DBIRTH', 'DDEATH', 'DDATA', 'DCMD']);

/**
 * Sparkplug B 3.0 tck-id-topic-structure-namespace-valid-group-id (and the
 * edge node / device id statements): ids are UTF-8 strings that MUST NOT
 * contain '+', '/' or '#'. Ward is stricter (printable, no '$', bounded) so an
 * id is also safe in a log line, a file name and an MQTT ACL.
 */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export function isSparkplugId(id: string): boolean {
  return ID_PATTERN.test(id);
}

export function assertSparkplugId(id: string, what: string): string {
  if (!isSparkplugId(id)) {
    throw new TypeError(`invalid Sparkplug ${what} ${JSON.stringify(id)}: 1-64 of [A-Za-z0-9._:-], starting alphanumeric (no '+', '/', '#')`);
  }
  return id;
}

export function nodeTopic(group: string, type: NodeMessageType, edgeNode: string): string {
  return `${SPB_NAMESPACE}/${assertSparkplugId(group, 'group id')}/${type}/${assertSparkplugId(edgeNode, 'edge node id')}`;
}

export function deviceTopic(group: string, type: DeviceMessageType, edgeNode: string, device: string): string {
  return `${nodeTopic(group, type as unknown as NodeMessageType, edgeNode)}/${assertSparkplugId(device, 'device id')}`;
}

/** Sparkplug B 3.0 tck-id-host-topic-phid-required: the host application's STATE topic. */
export function stateTopic(hostId: string): string {
  return `${SPB_NAMESPACE}/STATE/${assertSparkplugId(hostId, 'host id')}`;
}

export type ParsedTopic =
  | { readonly kind: 'node'; readonly group: string; readonly type: NodeMessageType; readonly edgeNode: string }
  | { readonly kind: 'device'; readonly group: string; readonly type: DeviceMessageType; readonly edgeNode: string; readonly device: string }
  | { readonly kind: 'state'; readonly hostId: string };

/** undefined for anything that is not a well-formed Sparkplug B topic. */
export function parseSparkplugTopic(topic: string): ParsedTopic | undefined {
  const parts = topic.split('/');
  if (parts[0] !== SPB_NAMESPACE) return undefined;
  if (parts.length === 3 && parts[1] === 'STATE') {
    const hostId = parts[2] as string;
    return isSparkplugId(hostId) ? { kind: 'state', hostId } : undefined;
  }
  const [, group, type, edgeNode, device] = parts;
  if (group === undefined || type === undefined || edgeNode === undefined || !isSparkplugId(group) || !isSparkplugId(edgeNode)) return undefined;
  if (parts.length === 4 && NODE_TYPES.has(type)) return { kind: 'node', group, type: type as NodeMessageType, edgeNode };
  if (parts.length === 5 && DEVICE_TYPES.has(type) && device !== undefined && isSparkplugId(device)) {
    return { kind: 'device', group, type: type as DeviceMessageType, edgeNode, device };
  }
  return undefined;
}
