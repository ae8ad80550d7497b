import { accessOf, ExceptionCode, type Request, type Table } from './frame.js';

/**
 * What a policy flow may do over Modbus/TCP, and the judgement of one request
 * against it (pure). A flow lists operations under `ops: { modbus: [...] }`:
 *
 * - presets: `read-only` (every table read, FIFO read, device
 *   identification), `read-write` (read-only plus writes to coils and holding
 *   registers), `programming` (every function code, including diagnostics,
 *   file records, program/vendor codes);
 * - `read [table] [range]`, `write [table] [range]`: a table is `coils`,
 *   `discrete-inputs`, `input-registers`, `holding-registers` (or `coil(s)`,
 *   `discrete`, `input`, `holding`), a range is 0-based protocol addresses
 *   `100` or `100-119`; without a table, a range is a Modicon reference
 *   (`40001-40010` = holding registers 0-9; 0xxxx coils, 1xxxx discrete inputs,
 *   3xxxx input registers, 4xxxx holding registers; 6 digits for 65536);
 * - `read file`, `write file` (FC20/21), `diagnostics` (FC7, 8, 11, 12, 17 and
 *   43/14), `device-id` (43/14 only), `program` (the program/vendor codes),
 *   `fc <n>` (one function code, any addressing: for a vendor code a line needs);
 * - limits that apply to the whole flow: `unit <n>[-<m>]` (unit ids it may
 *   address; default any) and `rate <n>/s` or `<n>/min` (requests per client).
 *
 * A request is allowed when some flow of the client allows it. A denial names
 * the Modbus exception the proxy answers with: 1 (illegal function) when the
 * flow allows that function nowhere, 2 (illegal data address) when it allows
 * the function elsewhere, 10 (gateway path unavailable) for a unit outside
 * `unit`, 6 (server busy) past the rate.
 */
export type Ranges = readonly (readonly [number, number])[];
type WritableTable = 'coils' | 'holding-registers';

export interface ModbusRules {
  readonly read: Readonly<Record<Table, Ranges>>;
  readonly write: Readonly<Record<WritableTable, Ranges>>;
  readonly readFile: boolean;
  readonly writeFile: boolean;
  readonly diagnostics: boolean;
  readonly deviceId: boolean;
  readonly program: boolean;
  /** Function codes allowed whatever they address (`fc <n>`, and every code under `programming`). */
  readonly anyFc: boolean;
  readonly fcs: ReadonlySet<number>;
  /** Unit ids; undefined = any. */
  readonly units: Ranges | undefined;
  /** Requests per second per client, with a burst of one second's worth (at least 1). */
  readonly rate: number | undefined;
}

export type Verdict =
  | { readonly allow: true }
  | { readonly allow: false; readonly exception: (typeof ExceptionCode)[keyof typeof ExceptionCode]; readonly reason: string };

const ALL: Ranges = [[0, 65_535]];
const TABLES: readonly Table[] = ['coils', 'discrete-inputs', 'input-registers', 'holding-registers'];
const TABLE_WORDS: Readonly<Record<string, Table>> = {
  coil: 'coils',
  coils: 'coils',
  'discrete-inputs': 'discrete-inputs',
  discrete: 'discrete-inputs',
  'input-registers': 'input-registers',
  input: 'input-registers',
  'holding-registers': 'holding-registers',
  holding: 'holding-registers',
};
const MODICON_TABLE: Readonly<Record<string, Table>> = { '0': 'coils', '1': 'discrete-inputs', '3': 'input-registers', '4': 'holding-registers' };

export const VOCABULARY: readonly { op: string; meaning: string }[] = [
  { op: 'read-only', meaning: 'read every table (FC1-4), FIFO queues (FC24) and device identification (FC43/14)' },
  { op: 'read-write', meaning: 'read-only plus writes to coils and holding registers (FC5, 6, 15, 16, 22, 23)' },
  { op: 'programming', meaning: 'every function code: diagnostics, file records, program and vendor codes' },
  { op: 'read [table] [range]', meaning: 'reads of one table, optionally one address range (`read holding 0-99`, `read 30001-30010`)' },
  { op: 'write [table] [range]', meaning: 'writes to coils or holding registers, optionally one range (`write holding 100-119`, `write 40101-40120`)' },
  { op: 'read file | write file', meaning: 'file record access (FC20 / FC21)' },
  { op: 'diagnostics', meaning: 'FC7, 8, 11, 12, 17 and device identification' },
  { op: 'device-id', meaning: 'device identification only (FC43/14)' },
  { op: 'program', meaning: 'the Modicon program codes and the vendor/user-defined codes (e.g. 90, UMAS)' },
  { op: 'fc <n>', meaning: 'one function code, whatever it addresses' },
  { op: 'unit <n>[-<m>]', meaning: 'limit the flow to these unit ids (default: any)' },
  { op: 'rate <n>/s | <n>/min', meaning: 'at most this many requests per client; beyond: exception 6 (busy)' },
];

interface Draft {
  read: Record<Table, [number, number][] | 'all'>;
  write: Record<WritableTable, [number, number][] | 'all'>;
  readFile: boolean;
  writeFile: boolean;
  diagnostics: boolean;
  deviceId: boolean;
  program: boolean;
  anyFc: boolean;
  fcs: Set<number>;
  units: [number, number][] | undefined;
  rate: number | undefined;
  grants: number;
}

/** Compiles one flow's operation list; problems (each naming its entry) instead of rules when any is wrong. */
export function compileOps(ops: readonly string[]): { rules: ModbusRules; problems: [] } | { rules: undefined; problems: string[] } {
  const d: Draft = {
    read: { coils: [], 'discrete-inputs': [], 'input-registers': [], 'holding-registers': [] },
    write: { coils: [], 'holding-registers': [] },
    readFile: false,
    writeFile: false,
    diagnostics: false,
    deviceId: false,
    program: false,
    anyFc: false,
    fcs: new Set(),
    units: undefined,
    rate: undefined,
    grants: 0,
  };
  const problems: string[] = [];
  for (const op of ops) {
    const problem = applyOp(d, op);
    if (problem !== undefined) problems.push(`"${op}": ${problem}`);
  }
  if (problems.length === 0 && d.grants === 0) problems.push('only limits (unit, rate) and no operation: the flow would allow nothing');
  if (problems.length > 0) return { rules: undefined, problems };
  const ranges = (r: [number, number][] | 'all'): Ranges => (r === 'all' ? ALL : merge(r));
  return {
    rules: {
      read: {
        coils: ranges(d.read.coils),
        'discrete-inputs': ranges(d.read['discrete-inputs']),
        'input-registers': ranges(d.read['input-registers']),
        'holding-registers': ranges(d.read['holding-registers']),
      },
      write: { coils: ranges(d.write.coils), 'holding-registers': ranges(d.write['holding-registers']) },
      readFile: d.readFile,
      writeFile: d.writeFile,
      diagnostics: d.diagnostics,
      deviceId: d.deviceId,
      program: d.program,
      anyFc: d.anyFc,
      fcs: d.fcs,
      units: d.units ? merge(d.units) : undefined,
      rate: d.rate,
    },
    problems: [],
  };
}

/** The policy checker's view: problems only. */
export function checkOps(ops: readonly string[]): string[] {
  return compileOps(ops).problems;
}

function applyOp(d: Draft, op: string): string | undefined {
  const words = op.trim().toLowerCase().split(/\s+/);
  const [verb, ...rest] = words;
  const grant = () => {
    d.grants += 1;
  };
  switch (verb) {
    case 'read-only':
    case 'read-write':
    case 'programming': {
      if (rest.length > 0) return `the preset "${verb}" takes no arguments`;
      for (const t of TABLES) d.read[t] = 'all';
      d.deviceId = true;
      if (verb !== 'read-only') {
        d.write.coils = 'all';
        d.write['holding-registers'] = 'all';
      }
      if (verb === 'programming') {
        d.readFile = d.writeFile = d.diagnostics = d.program = d.anyFc = true;
      }
      grant();
      return undefined;
    }
    case 'read':
    case 'write': {
      if (rest[0] === 'file' && rest.length === 1) {
        if (verb === 'read') d.readFile = true;
        else d.writeFile = true;
        grant();
        return undefined;
      }
      const target = parseTarget(rest);
      if (typeof target === 'string') return target;
      const tables = target.table ? [target.table] : verb === 'read' ? TABLES : (['coils', 'holding-registers'] as const);
      for (const t of tables) {
        if (verb === 'write' && t !== 'coils' && t !== 'holding-registers')
          return `${t} are read-only in Modbus; only coils and holding registers can be written`;
        const into = verb === 'read' ? d.read : d.write;
        const cur = (into as Record<string, [number, number][] | 'all'>)[t];
        if (cur !== 'all') (into as Record<string, [number, number][] | 'all'>)[t] = target.range ? [...(cur ?? []), target.range] : 'all';
      }
      grant();
      return undefined;
    }
    case 'diagnostics':
    case 'device-id':
    case 'program':
      if (rest.length > 0) return `"${verb}" takes no arguments`;
      if (verb === 'diagnostics') d.diagnostics = d.deviceId = true;
      else if (verb === 'device-id') d.deviceId = true;
      else d.program = true;
      grant();
      return undefined;
    case 'fc': {
      const fc = rest.length === 1 ? integer(rest[0] as string) : undefined;
      if (fc === undefined || fc < 1 || fc > 127) return 'expected "fc <1-127>"';
      d.fcs.add(fc);
      grant();
      return undefined;
    }
    case 'unit': {
      const range = rest.length === 1 ? parseRange(rest[0] as string, 0, 255) : undefined;
      if (range === undefined) return 'expected "unit <0-255>" or "unit <n>-<m>"';
      d.units = [...(d.units ?? []), range];
      return undefined;
    }
    case 'rate': {
      const m = rest.length === 1 ? /^([0-9]{1,6})\/(s|min)$/.exec(rest[0] as string) : null;
      if (!m) return 'expected "rate <n>/s" or "rate <n>/min"';
      const perSecond = Number(m[1]) / (m[2] === 'min' ? 60 : 1);
      if (perSecond <= 0) return 'a rate of 0 allows nothing';
      if (d.rate !== undefined) return 'one rate per flow';
      d.rate = perSecond;
      return undefined;
    }
    default:
      return `unknown operation "${verb ?? ''}" (expected one of: ${VOCABULARY.map((v) => v.op.split(' ')[0]).join(', ')})`;
  }
}

function parseTarget(words: readonly string[]): { table?: Table; range?: [number, number] } | string {
  if (words.length === 0) return {};
  if (words.length > 2) return 'expected "[table] [range]"';
  const table = TABLE_WORDS[words[0] as string];
  if (table !== undefined) {
    if (words.length === 1) return { table };
    const range = parseRange(words[1] as string, 0, 65_535);
    return range ? { table, range } : `"${words[1]}" is not an address or range 0-65535`;
  }
  if (words.length === 2) return `unknown table "${words[0]}" (coils, discrete-inputs, input-registers, holding-registers)`;
  return parseModicon(words[0] as string);
}

/** `40001-40010` → holding registers 0-9. Both ends in the same table, 5 or 6 digits. */
function parseModicon(text: string): { table: Table; range: [number, number] } | string {
  const m = /^([0-9]{5,6})(?:-([0-9]{5,6}))?$/.exec(text);
  if (!m) return `"${text}" is neither a table nor a Modicon reference (like 40001 or 40001-40010; give a table for 0-based addresses: "holding 0-9")`;
  const from = modicon(m[1] as string);
  const to = modicon((m[2] ?? m[1]) as string);
  if (typeof from === 'string') return from;
  if (typeof to === 'string') return to;
  if (from.table !== to.table) return `${text} spans two tables`;
  if (from.address > to.address) return `${text} is an empty range`;
  return { table: from.table, range: [from.address, to.address] };
}

function modicon(ref: string): { table: Table; address: number } | string {
  const table = MODICON_TABLE[ref[0] as string];
  if (table === undefined) return `${ref}: a Modicon reference starts with 0 (coils), 1 (discrete inputs), 3 (input registers) or 4 (holding registers)`;
  const n = Number(ref.slice(1));
  const max = ref.length === 5 ? 9_999 : 65_536;
  if (n < 1 || n > max) return `${ref} is outside ${ref[0]}${'0'.repeat(ref.length - 2)}1-${ref[0]}${max}`;
  return { table, address: n - 1 };
}

function parseRange(text: string, min: number, max: number): [number, number] | undefined {
  const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(text);
  if (!m) return undefined;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo >= min && hi <= max && lo <= hi ? [lo, hi] : undefined;
}

function integer(text: string): number | undefined {
  return /^[0-9]{1,3}$/.test(text) ? Number(text) : undefined;
}

function merge(ranges: readonly (readonly [number, number])[]): [number, number][] {
  const out: [number, number][] = [];
  for (const [lo, hi] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const last = out[out.length - 1];
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** Whether [address, address + quantity) lies inside one merged range. */
export function covers(ranges: Ranges, address: number, quantity: number): boolean {
  const last = address + quantity - 1;
  for (const [lo, hi] of ranges) if (address >= lo && last <= hi) return true;
  return false;
}

const deny = (exception: (typeof ExceptionCode)[keyof typeof ExceptionCode], reason: string): Verdict => ({ allow: false, exception, reason });
const ALLOW: Verdict = { allow: true };

/** One request against one flow's rules (the rate is the proxy's, since it needs a clock). */
export function judgeRequest(rules: ModbusRules, unitId: number, req: Request): Verdict {
  if (rules.units && !covers(rules.units, unitId, 1)) return deny(ExceptionCode.GatewayPathUnavailable, `unit ${unitId} is not one this flow may address`);
  if (rules.anyFc || rules.fcs.has(req.fc)) return ALLOW;
  const block = (ranges: Ranges, what: string, address: number, quantity: number): Verdict =>
    ranges.length === 0
      ? deny(ExceptionCode.IllegalFunction, `${what} is not allowed`)
      : covers(ranges, address, quantity)
        ? ALLOW
        : deny(ExceptionCode.IllegalDataAddress, `${what} ${address}-${address + quantity - 1} is outside the allowed ${rangeText(ranges)}`);
  switch (req.kind) {
    case 'read':
      return block(rules.read[req.table], `read of ${req.table}`, req.address, req.quantity);
    case 'read-fifo':
      // The FIFO count register and up to 31 queued values behind it (AP §6.18).
      return block(rules.read['holding-registers'], 'FIFO read of holding-registers', req.address, Math.min(32, 65_536 - req.address));
    case 'write-single':
      return block(rules.write[req.table], `write of ${req.table}`, req.address, 1);
    case 'write-multiple':
      return block(rules.write[req.table], `write of ${req.table}`, req.address, req.quantity);
    case 'mask-write':
      return block(rules.write['holding-registers'], 'mask write of holding-registers', req.address, 1);
    case 'read-write': {
      const w = block(rules.write['holding-registers'], 'write of holding-registers', req.write.address, req.write.quantity);
      if (!w.allow) return w;
      return block(rules.read['holding-registers'], 'read of holding-registers', req.read.address, req.read.quantity);
    }
    case 'file':
      return (req.fc === 20 ? rules.readFile : rules.writeFile)
        ? ALLOW
        : deny(ExceptionCode.IllegalFunction, `file record ${req.fc === 20 ? 'read' : 'write'} is not allowed`);
    case 'device-id':
      return rules.deviceId || rules.diagnostics ? ALLOW : deny(ExceptionCode.IllegalFunction, 'device identification is not allowed');
    case 'diagnostics':
    case 'serial-line':
      return rules.diagnostics ? ALLOW : deny(ExceptionCode.IllegalFunction, `diagnostics (FC${req.fc}) are not allowed`);
    case 'other':
      return accessOf(req) === 'program' && rules.program
        ? ALLOW
        : deny(ExceptionCode.IllegalFunction, `function code ${req.fc} (${accessOf(req)}) is not allowed`);
  }
}

function rangeText(ranges: Ranges): string {
  const shown = ranges.slice(0, 4).map(([lo, hi]) => (lo === hi ? String(lo) : `${lo}-${hi}`));
  return `${shown.join(', ')}${ranges.length > 4 ? ', …' : ''}`;
}
