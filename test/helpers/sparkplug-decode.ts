/**
 * An independent Sparkplug B (spBv1.0) payload decoder for tests.
 *
 * Ward encodes with `sparkplug-payload`, which is protobufjs underneath. A test
 * that decodes with the same library proves nothing about the wire format, so
 * this reader is written by hand against Eclipse Tahu's `sparkplug_b.proto`
 * (proto2, package org.eclipse.tahu.protobuf; the schema is reproduced in the
 * field tables below) and shares no code with the encoder.
 *
 * Wire format handled: varint (wire type 0), fixed64 (1), length-delimited (2),
 * start/end group (3/4, skipped when unknown), fixed32 (5). No field in the
 * schema is a sint32/sint64, so zigzag decoding is never needed. Unknown fields
 * (including the proto2 extension ranges) are skipped by wire type. A known
 * field arriving with the wrong wire type, a varint longer than 10 bytes, a tag
 * of field 0, wire types 6/7, invalid UTF-8, and any length that runs past the
 * end of the buffer throw a SparkplugDecodeError that names the message path
 * and the byte offset.
 *
 * Integer values:
 *  - int_value (uint32) is returned as a JS number, long_value (uint64) as a
 *    bigint, whatever the datatype: `valueField` says which one was on the wire.
 *  - Sparkplug carries signed integers in these unsigned fields as two's
 *    complement. Encoders differ in the width they sign-extend to (protobufjs
 *    and Tahu Java write Int8 -1 as uint32 0xFFFFFFFF, some C encoders write
 *    0xFF), so for datatypes Int8/Int16/Int32 the low 8/16/32 bits are taken and
 *    sign-extended; for Int64 the 64-bit value is read as signed
 *    (BigInt.asIntN(64)). Both widths therefore decode to the same number. This
 *    reinterpretation is applied wherever a datatype travels with the value:
 *    Metric, PropertyValue, Template.Parameter and DataSet cells (by column type).
 *    All other datatypes are returned exactly as they were on the wire.
 *  - Timestamps, seq, alias, bdSeq and every other uint64 stay bigint.
 *
 * Array datatypes (22..34) are packed little-endian into bytes_value; they are
 * returned as the raw bytes.
 */

export class SparkplugDecodeError extends Error {
  override readonly name = 'SparkplugDecodeError';
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

/** The DataType enum of sparkplug_b.proto (Sparkplug 3.0.0 §6.4.16). */
export const DATATYPE_NAMES: readonly string[] = [
  'Unknown',
  'Int8',
  'Int16',
  'Int32',
  'Int64',
  'UInt8',
  'UInt16',
  'UInt32',
  'UInt64',
  'Float',
  'Double',
  'Boolean',
  'String',
  'DateTime',
  'Text',
  'UUID',
  'DataSet',
  'Bytes',
  'File',
  'Template',
  'PropertySet',
  'PropertySetList',
  'Int8Array',
  'Int16Array',
  'Int32Array',
  'Int64Array',
  'UInt8Array',
  'UInt16Array',
  'UInt32Array',
  'UInt64Array',
  'FloatArray',
  'DoubleArray',
  'BooleanArray',
  'StringArray',
  'DateTimeArray',
];

export const DataType = {
  Unknown: 0,
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt8: 5,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Float: 9,
  Double: 10,
  Boolean: 11,
  String: 12,
  DateTime: 13,
  Text: 14,
  UUID: 15,
  DataSet: 16,
  Bytes: 17,
  File: 18,
  Template: 19,
  PropertySet: 20,
  PropertySetList: 21,
} as const;

export type ValueField =
  | 'int_value'
  | 'long_value'
  | 'float_value'
  | 'double_value'
  | 'boolean_value'
  | 'string_value'
  | 'bytes_value'
  | 'dataset_value'
  | 'template_value'
  | 'propertyset_value'
  | 'propertysets_value'
  | 'extension_value';

export type ScalarValue = number | bigint | boolean | string | Uint8Array;

export interface DecodedMetaData {
  isMultiPart?: boolean;
  contentType?: string;
  size?: bigint;
  seq?: bigint;
  fileName?: string;
  fileType?: string;
  md5?: string;
  description?: string;
}

export interface DecodedPropertyValue {
  type: number;
  /** null when is_null is set; a nested record for PropertySet, an array of records for PropertySetList. */
  value: unknown;
}

export type DecodedPropertySet = Record<string, DecodedPropertyValue>;

export interface DecodedDataSet {
  numOfColumns?: bigint;
  columns: string[];
  types: number[];
  rows: (ScalarValue | undefined)[][];
}

export interface DecodedParameter {
  name?: string;
  type?: number;
  value?: ScalarValue;
}

export interface DecodedTemplate {
  version?: string;
  metrics: DecodedMetric[];
  parameters: DecodedParameter[];
  templateRef?: string;
  isDefinition?: boolean;
}

export interface DecodedMetric {
  name?: string;
  alias?: bigint;
  timestamp?: bigint;
  datatype?: number;
  datatypeName?: string;
  isHistorical?: boolean;
  isTransient?: boolean;
  isNull?: boolean;
  metadata?: DecodedMetaData;
  properties?: DecodedPropertySet;
  value?: ScalarValue | DecodedDataSet | DecodedTemplate;
  /** Which member of the `value` oneof was on the wire (the last one wins, as in protobuf). */
  valueField?: ValueField;
}

export interface DecodedPayload {
  timestamp?: bigint;
  seq?: bigint;
  uuid?: string;
  body?: Uint8Array;
  metrics: DecodedMetric[];
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_START_GROUP = 3;
const WIRE_END_GROUP = 4;
const WIRE_FIXED32 = 5;
const WIRE_NAMES = ['varint', 'fixed64', 'length-delimited', 'start-group', 'end-group', 'fixed32', 'invalid(6)', 'invalid(7)'];

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  private readonly view: DataView;
  pos: number;

  constructor(
    private readonly buf: Uint8Array,
    start: number,
    readonly end: number,
    readonly path: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
  }

  fail(message: string, at = this.pos): never {
    throw new SparkplugDecodeError(`${this.path}: ${message} (offset ${at})`, at);
  }

  private need(n: number): void {
    if (this.end - this.pos < n) this.fail(`truncated input: need ${n} byte(s), ${this.end - this.pos} left`);
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  varint(): bigint {
    const start = this.pos;
    let result = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated input inside a varint', start);
      const b = this.buf[this.pos] ?? 0;
      this.pos++;
      result |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) return BigInt.asUintN(64, result);
    }
    return this.fail('malformed varint: longer than 10 bytes', start);
  }

  tag(): { field: number; wire: number; at: number } {
    const at = this.pos;
    const t = this.varint();
    if (t > 0xffffffffn) this.fail('tag does not fit in 32 bits', at);
    const field = Number(t >> 3n);
    const wire = Number(t & 7n);
    if (field === 0) this.fail('invalid tag: field number 0', at);
    if (wire > WIRE_FIXED32) this.fail(`invalid wire type ${wire} for field ${field}`, at);
    return { field, wire, at };
  }

  fixed32(): DataView {
    this.need(4);
    const at = this.pos;
    this.pos += 4;
    return new DataView(this.view.buffer, this.view.byteOffset + at, 4);
  }

  fixed64(): DataView {
    this.need(8);
    const at = this.pos;
    this.pos += 8;
    return new DataView(this.view.buffer, this.view.byteOffset + at, 8);
  }

  /** Reads a length prefix and returns [start, end) of the delimited bytes, advancing past them. */
  delimited(): [number, number] {
    const at = this.pos;
    const len = this.varint();
    if (len > BigInt(this.end - this.pos)) this.fail(`truncated input: length-delimited field of ${len} byte(s), ${this.end - this.pos} left`, at);
    const start = this.pos;
    this.pos += Number(len);
    return [start, this.pos];
  }

  sub(path: string): Reader {
    const [start, end] = this.delimited();
    return new Reader(this.buf, start, end, `${this.path}.${path}`);
  }

  bytes(): Uint8Array {
    const [start, end] = this.delimited();
    return new Uint8Array(this.buf.subarray(start, end)); // a copy: never alias the caller's buffer
  }

  string(): string {
    const [start, end] = this.delimited();
    try {
      return utf8.decode(this.buf.subarray(start, end));
    } catch {
      return this.fail('invalid UTF-8 in string field', start);
    }
  }

  skipField(field: number, wire: number, at: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_FIXED64:
        this.fixed64();
        return;
      case WIRE_LEN:
        this.delimited();
        return;
      case WIRE_FIXED32:
        this.fixed32();
        return;
      case WIRE_START_GROUP:
        for (;;) {
          if (this.done()) this.fail(`truncated input: group ${field} is not closed`, at);
          const t = this.tag();
          if (t.wire === WIRE_END_GROUP) {
            if (t.field !== field) this.fail(`end-group ${t.field} does not match start-group ${field}`, t.at);
            return;
          }
          this.skipField(t.field, t.wire, t.at);
        }
      default:
        this.fail(`unexpected ${WIRE_NAMES[wire]} for field ${field}`, at);
    }
  }
}

type Kind = 'uint32' | 'uint64' | 'float' | 'double' | 'bool' | 'string' | 'bytes' | 'message';

const KIND_WIRE: Record<Kind, number> = {
  uint32: WIRE_VARINT,
  uint64: WIRE_VARINT,
  bool: WIRE_VARINT,
  float: WIRE_FIXED32,
  double: WIRE_FIXED64,
  string: WIRE_LEN,
  bytes: WIRE_LEN,
  message: WIRE_LEN,
};

function expectWire(r: Reader, field: number, name: string, kind: Kind, wire: number, at: number): void {
  if (KIND_WIRE[kind] !== wire) r.fail(`field ${field} (${name}, ${kind}) arrived as ${WIRE_NAMES[wire]}`, at);
}

function readScalar(r: Reader, kind: Exclude<Kind, 'message'>): ScalarValue {
  switch (kind) {
    case 'uint32':
      return Number(BigInt.asUintN(32, r.varint())); // proto: a uint32 varint keeps the low 32 bits
    case 'uint64':
      return r.varint();
    case 'bool':
      return r.varint() !== 0n;
    case 'float':
      return r.fixed32().getFloat32(0, true);
    case 'double':
      return r.fixed64().getFloat64(0, true);
    case 'string':
      return r.string();
    case 'bytes':
      return r.bytes();
  }
}

/** The `oneof value` members shared (with different field numbers) by Metric, PropertyValue, Parameter and DataSetValue. */
const SCALAR_MEMBERS: readonly [ValueField, Exclude<Kind, 'message'>][] = [
  ['int_value', 'uint32'],
  ['long_value', 'uint64'],
  ['float_value', 'float'],
  ['double_value', 'double'],
  ['boolean_value', 'bool'],
  ['string_value', 'string'],
];

const SIGNED_BITS: Record<number, number> = { [DataType.Int8]: 8, [DataType.Int16]: 16, [DataType.Int32]: 32, [DataType.Int64]: 64 };

/** Two's-complement reinterpretation of an unsigned wire value for the signed Sparkplug datatypes; identity otherwise. */
export function interpretSigned<T>(datatype: number | undefined, value: T): T | number | bigint {
  const bits = datatype === undefined ? undefined : SIGNED_BITS[datatype];
  if (bits === undefined) return value;
  if (typeof value === 'number') {
    if (bits === 64) return value; // an Int64 squeezed into int_value: leave it alone
    return Number(BigInt.asIntN(bits, BigInt(value)));
  }
  if (typeof value === 'bigint') return BigInt.asIntN(bits, value);
  return value;
}

function setOwn<V>(target: Record<string, V>, key: string, value: V, r: Reader): void {
  if (Object.hasOwn(target, key)) r.fail(`duplicate PropertySet key ${JSON.stringify(key)}`);
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

function decodeMetaData(r: Reader): DecodedMetaData {
  const md: DecodedMetaData = {};
  const strings: Record<number, 'contentType' | 'fileName' | 'fileType' | 'md5' | 'description'> = {
    2: 'contentType',
    5: 'fileName',
    6: 'fileType',
    7: 'md5',
    8: 'description',
  };
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    const s = strings[field];
    if (field === 1) {
      expectWire(r, field, 'is_multi_part', 'bool', wire, at);
      md.isMultiPart = r.varint() !== 0n;
    } else if (field === 3 || field === 4) {
      expectWire(r, field, field === 3 ? 'size' : 'seq', 'uint64', wire, at);
      if (field === 3) md.size = r.varint();
      else md.seq = r.varint();
    } else if (s !== undefined) {
      expectWire(r, field, s, 'string', wire, at);
      md[s] = r.string();
    } else r.skipField(field, wire, at);
  }
  return md;
}

function decodePropertyValue(r: Reader): DecodedPropertyValue {
  let type: number | undefined;
  let isNull = false;
  let value: unknown;
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'type', 'uint32', wire, at);
      type = readScalar(r, 'uint32') as number;
    } else if (field === 2) {
      expectWire(r, field, 'is_null', 'bool', wire, at);
      isNull = r.varint() !== 0n;
    } else if (field >= 3 && field <= 8) {
      const member = SCALAR_MEMBERS[field - 3];
      if (member === undefined) r.fail(`no value member for field ${field}`, at);
      expectWire(r, field, member[0], member[1], wire, at);
      value = readScalar(r, member[1]);
    } else if (field === 9) {
      expectWire(r, field, 'propertyset_value', 'message', wire, at);
      value = decodePropertySet(r.sub('propertyset_value'));
    } else if (field === 10) {
      expectWire(r, field, 'propertysets_value', 'message', wire, at);
      value = decodePropertySetList(r.sub('propertysets_value'));
    } else if (field === 11) {
      expectWire(r, field, 'extension_value', 'message', wire, at);
      value = r.bytes();
    } else r.skipField(field, wire, at);
  }
  if (type === undefined) r.fail('PropertyValue without a type');
  return { type, value: isNull ? null : interpretSigned(type, value) };
}

function decodePropertySet(r: Reader): DecodedPropertySet {
  const keys: string[] = [];
  const values: DecodedPropertyValue[] = [];
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'keys', 'string', wire, at);
      keys.push(r.string());
    } else if (field === 2) {
      expectWire(r, field, 'values', 'message', wire, at);
      values.push(decodePropertyValue(r.sub(`values[${values.length}]`)));
    } else r.skipField(field, wire, at);
  }
  // tck-id-payloads-propertyset-keys-array-size / -values-array-size
  if (keys.length !== values.length) r.fail(`PropertySet has ${keys.length} key(s) but ${values.length} value(s)`);
  const out: DecodedPropertySet = {};
  keys.forEach((k, i) => {
    const v = values[i];
    if (v !== undefined) setOwn(out, k, v, r);
  });
  return out;
}

function decodePropertySetList(r: Reader): DecodedPropertySet[] {
  const sets: DecodedPropertySet[] = [];
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'propertyset', 'message', wire, at);
      sets.push(decodePropertySet(r.sub(`propertyset[${sets.length}]`)));
    } else r.skipField(field, wire, at);
  }
  return sets;
}

function decodeDataSetValue(r: Reader): ScalarValue | undefined {
  let value: ScalarValue | undefined;
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    const member = field >= 1 && field <= 6 ? SCALAR_MEMBERS[field - 1] : undefined;
    if (member !== undefined) {
      expectWire(r, field, member[0], member[1], wire, at);
      value = readScalar(r, member[1]);
    } else if (field === 7) {
      expectWire(r, field, 'extension_value', 'message', wire, at);
      value = r.bytes();
    } else r.skipField(field, wire, at);
  }
  return value;
}

function decodeDataSet(r: Reader): DecodedDataSet {
  const ds: DecodedDataSet = { columns: [], types: [], rows: [] };
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'num_of_columns', 'uint64', wire, at);
      ds.numOfColumns = r.varint();
    } else if (field === 2) {
      expectWire(r, field, 'columns', 'string', wire, at);
      ds.columns.push(r.string());
    } else if (field === 3) {
      // repeated uint32: proto2 writes it unpacked, but a parser must accept the packed form too.
      if (wire === WIRE_LEN) {
        const packed = r.sub('types');
        while (!packed.done()) ds.types.push(readScalar(packed, 'uint32') as number);
      } else {
        expectWire(r, field, 'types', 'uint32', wire, at);
        ds.types.push(readScalar(r, 'uint32') as number);
      }
    } else if (field === 4) {
      expectWire(r, field, 'rows', 'message', wire, at);
      const row = r.sub(`rows[${ds.rows.length}]`);
      const cells: (ScalarValue | undefined)[] = [];
      while (!row.done()) {
        const t = row.tag();
        if (t.field === 1) {
          expectWire(row, t.field, 'elements', 'message', t.wire, t.at);
          cells.push(decodeDataSetValue(row.sub(`elements[${cells.length}]`)));
        } else row.skipField(t.field, t.wire, t.at);
      }
      ds.rows.push(cells);
    } else r.skipField(field, wire, at);
  }
  ds.rows = ds.rows.map((row) => row.map((cell, i) => interpretSigned(ds.types[i], cell)));
  return ds;
}

function decodeParameter(r: Reader): DecodedParameter {
  const p: DecodedParameter = {};
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'name', 'string', wire, at);
      p.name = r.string();
    } else if (field === 2) {
      expectWire(r, field, 'type', 'uint32', wire, at);
      p.type = readScalar(r, 'uint32') as number;
    } else if (field >= 3 && field <= 8) {
      const member = SCALAR_MEMBERS[field - 3];
      if (member === undefined) r.fail(`no value member for field ${field}`, at);
      expectWire(r, field, member[0], member[1], wire, at);
      p.value = readScalar(r, member[1]);
    } else if (field === 9) {
      expectWire(r, field, 'extension_value', 'message', wire, at);
      p.value = r.bytes();
    } else r.skipField(field, wire, at);
  }
  if (p.value !== undefined) p.value = interpretSigned(p.type, p.value);
  return p;
}

function decodeTemplate(r: Reader): DecodedTemplate {
  const t: DecodedTemplate = { metrics: [], parameters: [] };
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      expectWire(r, field, 'version', 'string', wire, at);
      t.version = r.string();
    } else if (field === 2) {
      expectWire(r, field, 'metrics', 'message', wire, at);
      t.metrics.push(decodeMetric(r.sub(`metrics[${t.metrics.length}]`)));
    } else if (field === 3) {
      expectWire(r, field, 'parameters', 'message', wire, at);
      t.parameters.push(decodeParameter(r.sub(`parameters[${t.parameters.length}]`)));
    } else if (field === 4) {
      expectWire(r, field, 'template_ref', 'string', wire, at);
      t.templateRef = r.string();
    } else if (field === 5) {
      expectWire(r, field, 'is_definition', 'bool', wire, at);
      t.isDefinition = r.varint() !== 0n;
    } else r.skipField(field, wire, at);
  }
  return t;
}

const METRIC_VALUE_MEMBERS: Record<number, [ValueField, Kind]> = {
  10: ['int_value', 'uint32'],
  11: ['long_value', 'uint64'],
  12: ['float_value', 'float'],
  13: ['double_value', 'double'],
  14: ['boolean_value', 'bool'],
  15: ['string_value', 'string'],
  16: ['bytes_value', 'bytes'],
  17: ['dataset_value', 'message'],
  18: ['template_value', 'message'],
  19: ['extension_value', 'message'],
};

function decodeMetric(r: Reader): DecodedMetric {
  const m: DecodedMetric = {};
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    const member = METRIC_VALUE_MEMBERS[field];
    if (member !== undefined) {
      const [name, kind] = member;
      expectWire(r, field, name, kind, wire, at);
      m.valueField = name;
      if (kind !== 'message') m.value = readScalar(r, kind);
      else if (name === 'dataset_value') m.value = decodeDataSet(r.sub('dataset_value'));
      else if (name === 'template_value') m.value = decodeTemplate(r.sub('template_value'));
      else m.value = r.bytes();
      continue;
    }
    switch (field) {
      case 1:
        expectWire(r, field, 'name', 'string', wire, at);
        m.name = r.string();
        break;
      case 2:
        expectWire(r, field, 'alias', 'uint64', wire, at);
        m.alias = r.varint();
        break;
      case 3:
        expectWire(r, field, 'timestamp', 'uint64', wire, at);
        m.timestamp = r.varint();
        break;
      case 4:
        expectWire(r, field, 'datatype', 'uint32', wire, at);
        m.datatype = readScalar(r, 'uint32') as number;
        break;
      case 5:
        expectWire(r, field, 'is_historical', 'bool', wire, at);
        m.isHistorical = r.varint() !== 0n;
        break;
      case 6:
        expectWire(r, field, 'is_transient', 'bool', wire, at);
        m.isTransient = r.varint() !== 0n;
        break;
      case 7:
        expectWire(r, field, 'is_null', 'bool', wire, at);
        m.isNull = r.varint() !== 0n;
        break;
      case 8:
        expectWire(r, field, 'metadata', 'message', wire, at);
        m.metadata = decodeMetaData(r.sub('metadata'));
        break;
      case 9:
        expectWire(r, field, 'properties', 'message', wire, at);
        m.properties = decodePropertySet(r.sub('properties'));
        break;
      default:
        r.skipField(field, wire, at);
    }
  }
  if (m.datatype !== undefined) {
    const name = DATATYPE_NAMES[m.datatype];
    if (name !== undefined) m.datatypeName = name;
  }
  if (m.value !== undefined && (typeof m.value === 'number' || typeof m.value === 'bigint')) m.value = interpretSigned(m.datatype, m.value);
  return m;
}

/** Decodes a Sparkplug B `Payload` (every verb except STATE, whose payload is JSON: see parseState). */
export function decodeSparkplug(buf: Uint8Array): DecodedPayload {
  const r = new Reader(buf, 0, buf.length, 'Payload');
  const p: DecodedPayload = { metrics: [] };
  while (!r.done()) {
    const { field, wire, at } = r.tag();
    switch (field) {
      case 1:
        expectWire(r, field, 'timestamp', 'uint64', wire, at);
        p.timestamp = r.varint();
        break;
      case 2:
        expectWire(r, field, 'metrics', 'message', wire, at);
        p.metrics.push(decodeMetric(r.sub(`metrics[${p.metrics.length}]`)));
        break;
      case 3:
        expectWire(r, field, 'seq', 'uint64', wire, at);
        p.seq = r.varint();
        break;
      case 4:
        expectWire(r, field, 'uuid', 'string', wire, at);
        p.uuid = r.string();
        break;
      case 5:
        expectWire(r, field, 'body', 'bytes', wire, at);
        p.body = r.bytes();
        break;
      default:
        r.skipField(field, wire, at); // includes the extension range 6..max
    }
  }
  return p;
}

/** Finds a metric by name, or by the alias its birth gave that name. */
export function findMetric(payload: DecodedPayload, key: string | bigint): DecodedMetric | undefined {
  return payload.metrics.find((m) => (typeof key === 'string' ? m.name === key : m.alias === key));
}

// ---------------------------------------------------------------- topics and STATE

export const SPARKPLUG_NAMESPACE = 'spBv1.0';

export type NodeMessageType = 'NBIRTH' | 'NDEATH' | 'NDATA' | 'NCMD';
export type DeviceMessageType = 'DBIRTH' | 'DDEATH' | 'DDATA' | 'DCMD';

export interface SparkplugTopic {
  namespace: typeof SPARKPLUG_NAMESPACE;
  group: string;
  type: NodeMessageType | DeviceMessageType;
  edgeNode: string;
  device?: string;
}

const NODE_TYPES: ReadonlySet<string> = new Set(['NBIRTH', 'NDEATH', 'NDATA', 'NCMD']);
const DEVICE_TYPES: ReadonlySet<string> = new Set(['DBIRTH', 'DDEATH', 'DDATA', 'DCMD']);

/** tck-id-topic-structure-namespace-valid-{group,edge-node,device}-id: UTF-8 without '+', '/', '#' (and not empty). */
function checkId(what: string, id: string, topic: string): void {
  if (id.length === 0) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: empty ${what}`);
  if (/[+#/]/.test(id)) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: ${what} ${JSON.stringify(id)} contains a reserved character (+ / #)`);
  if (!id.isWellFormed()) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: ${what} is not well-formed UTF-16/UTF-8`);
}

/**
 * Parses `spBv1.0/group_id/message_type/edge_node_id[/device_id]` (tck-id-topic-structure).
 * The device_id is required for D* verbs and forbidden for N* verbs
 * (tck-id-topic-structure-namespace-device-id-(non-)associated-message-types).
 * STATE topics are rejected here: use parseStateTopic.
 */
export function parseTopic(topic: string): SparkplugTopic {
  const parts = topic.split('/');
  const [namespace, group, type, edgeNode, device] = parts;
  if (namespace !== SPARKPLUG_NAMESPACE) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: namespace must be ${SPARKPLUG_NAMESPACE}`);
  if (group === 'STATE') throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: a STATE topic, use parseStateTopic`);
  if (group === undefined || type === undefined || edgeNode === undefined) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: too few levels`);
  const isNode = NODE_TYPES.has(type);
  const isDevice = DEVICE_TYPES.has(type);
  if (!isNode && !isDevice) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: unknown message type ${JSON.stringify(type)}`);
  if (isNode && parts.length !== 4) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: ${type} takes exactly group/${type}/edge_node_id`);
  if (isDevice && parts.length !== 5) throw new Error(`Sparkplug topic ${JSON.stringify(topic)}: ${type} takes exactly group/${type}/edge_node_id/device_id`);
  checkId('group_id', group, topic);
  checkId('edge_node_id', edgeNode, topic);
  const out: SparkplugTopic = { namespace: SPARKPLUG_NAMESPACE, group, type: type as SparkplugTopic['type'], edgeNode };
  if (isDevice && device !== undefined) {
    checkId('device_id', device, topic);
    out.device = device;
  }
  return out;
}

/** Parses `spBv1.0/STATE/sparkplug_host_id` (tck-id-host-topic-phid-birth-topic). The 2.2-era `STATE/host_id` is rejected. */
export function parseStateTopic(topic: string): { namespace: typeof SPARKPLUG_NAMESPACE; hostId: string } {
  const parts = topic.split('/');
  if (parts.length !== 3 || parts[0] !== SPARKPLUG_NAMESPACE || parts[1] !== 'STATE') {
    throw new Error(`Sparkplug STATE topic ${JSON.stringify(topic)}: must be ${SPARKPLUG_NAMESPACE}/STATE/sparkplug_host_id`);
  }
  const hostId = parts[2] ?? '';
  checkId('sparkplug_host_id', hostId, topic);
  return { namespace: SPARKPLUG_NAMESPACE, hostId };
}

export interface StatePayload {
  online: boolean;
  /** UTC milliseconds since epoch. */
  timestamp: number;
}

/**
 * Parses a Sparkplug 3.0 Host Application STATE payload: JSON UTF-8 with exactly
 * the keys `online` (boolean) and `timestamp` (UTC ms since epoch)
 * (tck-id-host-topic-phid-birth-payload, tck-id-host-topic-phid-death-payload).
 * The 2.2-era plain-text 'ONLINE'/'OFFLINE' payloads are rejected with a message saying so.
 */
export function parseState(payload: Uint8Array | string): StatePayload {
  let text: string;
  try {
    text = typeof payload === 'string' ? payload : utf8.decode(payload);
  } catch {
    throw new Error('Sparkplug STATE payload is not valid UTF-8');
  }
  if (text === 'ONLINE' || text === 'OFFLINE')
    throw new Error(`Sparkplug STATE payload ${JSON.stringify(text)} is the Sparkplug 2.2 form; 3.0 requires JSON {online, timestamp}`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`Sparkplug STATE payload is not JSON: ${JSON.stringify(text.slice(0, 80))}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error('Sparkplug STATE payload must be a JSON object');
  const obj = json as Record<string, unknown>;
  const extra = Object.keys(obj).filter((k) => k !== 'online' && k !== 'timestamp');
  if (extra.length > 0) throw new Error(`Sparkplug STATE payload has unexpected key(s): ${extra.join(', ')}`);
  if (typeof obj.online !== 'boolean') throw new Error('Sparkplug STATE payload: "online" must be a boolean');
  const ts = obj.timestamp;
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts < 0)
    throw new Error('Sparkplug STATE payload: "timestamp" must be a non-negative integer (UTC ms)');
  return { online: obj.online, timestamp: ts };
}
