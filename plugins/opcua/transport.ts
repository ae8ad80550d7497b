/**
 * node-opcua takes the receive limits a server announces in its ACK as its own (client_transport_base
 * _handle_ACK_response → setLimits), so a server, or anyone in the middle before the channel is secured, could
 * announce 2 GB chunks and make the agent buffer them. Every TCP transport of this process is clamped to Ward's
 * limits instead; process-wide by nature, done once.
 */
export const TRANSPORT_LIMITS = { receiveBufferSize: 65_536, sendBufferSize: 65_536, maxMessageSize: 8 * 1024 * 1024, maxChunkCount: 256 } as const;

type Limits = { receiveBufferSize: number; sendBufferSize: number; maxMessageSize: number; maxChunkCount: number };

export async function clampTransportLimits(): Promise<void> {
  const { TCP_transport } = await import('node-opcua-transport');
  const proto = TCP_transport.prototype as unknown as { setLimits(l: Limits): void; __wardClamped?: true };
  if (proto.__wardClamped) return;
  const original = proto.setLimits;
  // 0 means "no limit" in OPC UA: it becomes Ward's limit, as does anything larger.
  const clamp = (value: number, max: number) => (value > 0 ? Math.min(value, max) : max);
  proto.setLimits = function setLimits(this: unknown, l: Limits) {
    original.call(this, {
      receiveBufferSize: clamp(l.receiveBufferSize, TRANSPORT_LIMITS.receiveBufferSize),
      sendBufferSize: clamp(l.sendBufferSize, TRANSPORT_LIMITS.sendBufferSize),
      maxMessageSize: clamp(l.maxMessageSize, TRANSPORT_LIMITS.maxMessageSize),
      maxChunkCount: clamp(l.maxChunkCount, TRANSPORT_LIMITS.maxChunkCount),
    });
  };
  proto.__wardClamped = true;
}
