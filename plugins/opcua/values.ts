/**
 * OPC UA DataValue → Ward telemetry value: pure, and free of node-opcua imports (its enums are restated as the
 * numbers OPC 10000-6 §5.1.2 fixes), so the agent does not load node-opcua for it and tests need no server.
 */
import type { TelemetryDataType } from '../api/index.js';

/** Built-in type ids (OPC 10000-6 §5.1.2 Table 1). */
export const BuiltinType = {
  Null: 0,
  Boolean: 1,
  SByte: 2,
  Byte: 3,
  Int16: 4,
  UInt16: 5,
  Int32: 6,
  UInt32: 7,
  Int64: 8,
  UInt64: 9,
  Float: 10,
  Double: 11,
  String: 12,
  DateTime: 13,
  Guid: 14,
  ByteString: 15,
  XmlElement: 16,
  NodeId: 17,
  ExpandedNodeId: 18,
  StatusCode: 19,
  QualifiedName: 20,
  LocalizedText: 21,
  ExtensionObject: 22,
  DataValue: 23,
  Variant: 24,
  DiagnosticInfo: 25,
} as const;

const TYPE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(BuiltinType).map(([k, v]) => [v, k]));

/** The part of node-opcua's DataValue this module reads. */
export interface DataValueLike {
  readonly value?: { readonly dataType: number; readonly arrayType?: number; readonly value: unknown } | null;
  readonly statusCode?: { readonly value: number; readonly name?: string } | null;
  readonly sourceTimestamp?: Date | null;
  readonly serverTimestamp?: Date | null;
}

export interface MappedValue {
  readonly quality: 'good' | 'bad';
  readonly value: number | boolean | string | null;
  readonly timestamp: number;
  readonly dataType?: TelemetryDataType;
  readonly error?: string;
}

/** Arrays go out as JSON text; past this many characters the sample is bad instead (a publisher is no blob store). */
export const MAX_ARRAY_JSON = 4096;

/** OPC 10000-4 §7.39: the two top bits of a StatusCode are its severity (00 Good, 01 Uncertain, 10/11 Bad). */
export function isGood(code: number): boolean {
  return (code & 0xc0000000) === 0;
}

export function statusName(status: { value: number; name?: string } | null | undefined): string {
  if (!status) return 'Good';
  if (status.name && status.name !== 'Unknown' && status.name !== '') return status.name;
  return `0x${(status.value >>> 0).toString(16).padStart(8, '0')}`;
}

// OPC UA's DateTime minimum (1601-01-01) and node-opcua's "no timestamp" both come out before 1970: not a time.
function usableTime(d: Date | null | undefined): number | undefined {
  if (!d) return undefined;
  const t = d.getTime();
  return Number.isFinite(t) && t > 0 ? t : undefined;
}

/** OPC UA 64-bit integers arrive as [high, low] 32-bit words (node-opcua's Int64/UInt64). */
function toBigInt(v: unknown): bigint | undefined {
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'number' && typeof v[1] === 'number') {
    return (BigInt(v[0] >>> 0) << 32n) | BigInt(v[1] >>> 0);
  }
  if (typeof v === 'number' && Number.isInteger(v)) return BigInt(v);
  if (typeof v === 'bigint') return v;
  return undefined;
}

type Scalar = { ok: true; value: number | boolean | string; dataType: TelemetryDataType } | { ok: false; error: string };

function scalar(dataType: number, v: unknown): Scalar {
  const name = TYPE_NAMES[dataType] ?? `type ${dataType}`;
  switch (dataType) {
    case BuiltinType.Boolean:
      return { ok: true, value: Boolean(v), dataType: 'Boolean' };
    case BuiltinType.SByte:
    case BuiltinType.Byte:
    case BuiltinType.Int16:
    case BuiltinType.UInt16:
    case BuiltinType.Int32:
      return typeof v === 'number' ? { ok: true, value: v, dataType: 'Int32' } : { ok: false, error: `${name} value is not a number` };
    case BuiltinType.UInt32:
      return typeof v === 'number' ? { ok: true, value: v, dataType: 'UInt32' } : { ok: false, error: `${name} value is not a number` };
    case BuiltinType.Int64:
    case BuiltinType.UInt64: {
      const raw = toBigInt(v);
      if (raw === undefined) return { ok: false, error: `${name} value is not a 64-bit integer` };
      const big = dataType === BuiltinType.Int64 ? BigInt.asIntN(64, raw) : BigInt.asUintN(64, raw);
      // A JS number holds integers exactly only up to 2^53; a rounded counter would look like a good value.
      if (big > BigInt(Number.MAX_SAFE_INTEGER) || big < BigInt(Number.MIN_SAFE_INTEGER)) {
        return { ok: false, error: `${name} value ${big} is beyond ±2^53 and cannot be published exactly` };
      }
      return { ok: true, value: Number(big), dataType: dataType === BuiltinType.Int64 ? 'Int64' : 'UInt64' };
    }
    case BuiltinType.Float:
      return typeof v === 'number' ? { ok: true, value: v, dataType: 'Float' } : { ok: false, error: `${name} value is not a number` };
    case BuiltinType.Double:
      return typeof v === 'number' ? { ok: true, value: v, dataType: 'Double' } : { ok: false, error: `${name} value is not a number` };
    case BuiltinType.String:
    case BuiltinType.XmlElement:
      return { ok: true, value: v === null || v === undefined ? '' : String(v), dataType: 'String' };
    case BuiltinType.DateTime: {
      // ISO 8601 text: unambiguous for people and dashboards, where a bare ms count would read as a counter.
      const t = v instanceof Date ? usableTime(v) : undefined;
      return t === undefined
        ? { ok: false, error: 'DateTime value is empty or before 1970' }
        : { ok: true, value: new Date(t).toISOString(), dataType: 'String' };
    }
    case BuiltinType.LocalizedText: {
      const text = (v as { text?: unknown } | null)?.text;
      return { ok: true, value: typeof text === 'string' ? text : '', dataType: 'String' };
    }
    case BuiltinType.QualifiedName: {
      const q = v as { name?: unknown; namespaceIndex?: unknown } | null;
      return { ok: true, value: `${q?.namespaceIndex ? `${q.namespaceIndex}:` : ''}${typeof q?.name === 'string' ? q.name : ''}`, dataType: 'String' };
    }
    case BuiltinType.Guid:
    case BuiltinType.NodeId:
    case BuiltinType.ExpandedNodeId:
      return { ok: true, value: String(v), dataType: 'String' };
    case BuiltinType.StatusCode:
      return { ok: true, value: statusName(v as { value: number; name?: string }), dataType: 'String' };
    default:
      return { ok: false, error: `unsupported data type ${name}` };
  }
}

/**
 * Maps one DataValue: Good* status → a good sample with its value; any other status (Uncertain included, which
 * the contract cannot express) → a bad sample naming the status. Timestamp: source, else server, else `now`.
 * Arrays become JSON text of their converted elements (dataType String); matrices, structures (ExtensionObject)
 * and ByteStrings are not published (a bad sample says why).
 */
export function mapDataValue(dv: DataValueLike, now: number): MappedValue {
  const timestamp = usableTime(dv.sourceTimestamp) ?? usableTime(dv.serverTimestamp) ?? now;
  const code = dv.statusCode?.value ?? 0;
  if (!isGood(code)) return { quality: 'bad', value: null, timestamp, error: statusName(dv.statusCode) };
  const variant = dv.value;
  if (!variant || variant.dataType === BuiltinType.Null || variant.value === null || variant.value === undefined) {
    return { quality: 'bad', value: null, timestamp, error: 'the server sent no value (Null)' };
  }
  const arrayType = variant.arrayType ?? 0;
  if (arrayType === 0) {
    const s = scalar(variant.dataType, variant.value);
    if (s.ok && typeof s.value === 'string' && s.value.length > MAX_ARRAY_JSON) {
      return { quality: 'bad', value: null, timestamp, error: `a text of ${s.value.length} characters is too large to publish` };
    }
    return s.ok ? { quality: 'good', value: s.value, timestamp, dataType: s.dataType } : { quality: 'bad', value: null, timestamp, error: s.error };
  }
  if (arrayType !== 1) return { quality: 'bad', value: null, timestamp, error: 'matrices are not published' };
  const length = (variant.value as ArrayLike<unknown>).length;
  // Refused before converting: even one-digit elements need two characters each in JSON.
  if (typeof length !== 'number' || length > MAX_ARRAY_JSON / 2) {
    return { quality: 'bad', value: null, timestamp, error: `array of ${length} elements is too large to publish` };
  }
  const elements: (number | boolean | string)[] = [];
  for (const item of Array.from(variant.value as ArrayLike<unknown>)) {
    const s = scalar(variant.dataType, item);
    if (!s.ok) return { quality: 'bad', value: null, timestamp, error: `array element: ${s.error}` };
    elements.push(s.value);
  }
  const json = JSON.stringify(elements);
  if (json.length > MAX_ARRAY_JSON) return { quality: 'bad', value: null, timestamp, error: `array of ${elements.length} elements is too large to publish` };
  return { quality: 'good', value: json, timestamp, dataType: 'String' };
}

/** Text a server chose (error reasons, log lines): control characters and escapes removed, length bounded. */
export function printable(text: string, max: number): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is this pattern's purpose
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ').slice(0, max);
}
