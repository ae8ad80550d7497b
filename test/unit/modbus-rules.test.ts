import test from 'ava';
import { parseRequest, type Request } from '../../plugins/modbus/frame.js';
import { checkOps, compileOps, covers, judgeRequest, type ModbusRules } from '../../plugins/modbus/rules.js';

function rules(...ops: string[]): ModbusRules {
  const c = compileOps(ops);
  if (!c.rules) throw new Error(c.problems.join('; '));
  return c.rules;
}

/** A request as the proxy sees it: built as bytes and decoded by the parser, so the rules meet real frames. */
function req(pdu: number[]): Request {
  const adu = Buffer.from([0, 1, 0, 0, 0, pdu.length + 1, 1, ...pdu]);
  const parsed = parseRequest(adu);
  if (!parsed.ok) throw new Error(parsed.error.message);
  return parsed.frame.body;
}
const u16 = (n: number) => [n >> 8, n & 0xff];
const readHolding = (address: number, quantity: number) => req([3, ...u16(address), ...u16(quantity)]);
const readInput = (address: number, quantity: number) => req([4, ...u16(address), ...u16(quantity)]);
const readCoils = (address: number, quantity: number) => req([1, ...u16(address), ...u16(quantity)]);
const writeRegister = (address: number, value: number) => req([6, ...u16(address), ...u16(value)]);
const writeCoil = (address: number, on: boolean) => req([5, ...u16(address), on ? 0xff : 0, 0]);
const writeRegisters = (address: number, values: number[]) => req([16, ...u16(address), ...u16(values.length), values.length * 2, ...values.flatMap(u16)]);
const maskWrite = (address: number) => req([22, ...u16(address), 0xff, 0, 0, 0x0f]);
const readWrite = (ra: number, rq: number, wa: number, wv: number[]) =>
  req([23, ...u16(ra), ...u16(rq), ...u16(wa), ...u16(wv.length), wv.length * 2, ...wv.flatMap(u16)]);
const diagnostics = () => req([8, 0, 0, 0x12, 0x34]);
const deviceId = () => req([43, 14, 1, 0]);
const umas = () => req([90, 0, 2]);

const verdict = (r: ModbusRules, q: Request, unit = 1) => {
  const v = judgeRequest(r, unit, q);
  return v.allow ? 'allow' : `exception ${v.exception}`;
};

test('read-only allows every read and device identification, and no write, diagnostic or program code', (t) => {
  const r = rules('read-only');
  t.is(verdict(r, readHolding(0, 125)), 'allow');
  t.is(verdict(r, readInput(65_535, 1)), 'allow');
  t.is(verdict(r, readCoils(100, 2000)), 'allow');
  t.is(verdict(r, deviceId()), 'allow');
  t.is(verdict(r, writeRegister(0, 1)), 'exception 1');
  t.is(verdict(r, writeCoil(0, true)), 'exception 1');
  t.is(verdict(r, writeRegisters(10, [1, 2])), 'exception 1');
  t.is(verdict(r, maskWrite(10)), 'exception 1');
  t.is(verdict(r, readWrite(0, 1, 0, [1])), 'exception 1', 'FC23 writes, so read-only refuses it');
  t.is(verdict(r, diagnostics()), 'exception 1');
  t.is(verdict(r, umas()), 'exception 1');
});

test('read-write adds writes to coils and holding registers; programming allows everything', (t) => {
  const rw = rules('read-write');
  t.is(verdict(rw, writeRegisters(100, [1, 2, 3])), 'allow');
  t.is(verdict(rw, writeCoil(7, false)), 'allow');
  t.is(verdict(rw, readWrite(0, 4, 10, [9])), 'allow');
  t.is(verdict(rw, diagnostics()), 'exception 1');
  t.is(verdict(rw, umas()), 'exception 1');
  const p = rules('programming');
  for (const q of [umas(), diagnostics(), writeRegister(1, 2), req([21, 9, 6, 0, 1, 0, 0, 0, 1, 0x12, 0x34]), req([66])]) t.is(verdict(p, q), 'allow');
});

test('write ranges: inside is allowed, outside is an illegal data address, a block straddling the edge is refused', (t) => {
  const r = rules('read-only', 'write holding 100-119');
  t.is(verdict(r, writeRegister(100, 5)), 'allow');
  t.is(verdict(r, writeRegister(119, 5)), 'allow');
  t.is(verdict(r, writeRegister(120, 5)), 'exception 2');
  t.is(verdict(r, writeRegister(99, 5)), 'exception 2');
  t.is(verdict(r, writeRegisters(118, [1, 2])), 'allow');
  t.is(verdict(r, writeRegisters(118, [1, 2, 3])), 'exception 2', 'the block must lie wholly inside');
  t.is(verdict(r, writeCoil(100, true)), 'exception 1', 'coils were not granted at all');
  t.is(verdict(r, maskWrite(105)), 'allow');
  t.is(verdict(r, readWrite(0, 10, 110, [1])), 'allow');
  t.is(verdict(r, readWrite(0, 10, 5, [1])), 'exception 2');
  const reason = judgeRequest(r, 1, writeRegister(5000, 1));
  t.false(reason.allow);
  if (!reason.allow) t.regex(reason.reason, /write of holding-registers 5000-5000 is outside the allowed 100-119/);
});

test('Modicon references map onto tables and 0-based addresses', (t) => {
  const r = rules('write 40001-40010', 'read 30001', 'write 00017');
  t.is(verdict(r, writeRegister(0, 1)), 'allow');
  t.is(verdict(r, writeRegister(9, 1)), 'allow');
  t.is(verdict(r, writeRegister(10, 1)), 'exception 2');
  t.is(verdict(r, readInput(0, 1)), 'allow');
  t.is(verdict(r, readInput(1, 1)), 'exception 2');
  t.is(verdict(r, writeCoil(16, true)), 'allow');
  t.is(verdict(r, readHolding(0, 1)), 'exception 1', 'no holding reads were granted');
  const six = rules('read 465536');
  t.is(verdict(six, readHolding(65_535, 1)), 'allow');
});

test('table-scoped reads, several ranges merged, and a second read without range widening to the whole table', (t) => {
  const r = rules('read holding 0-9', 'read holding 10-19', 'read coils');
  t.is(verdict(r, readHolding(0, 20)), 'allow', 'adjacent ranges merge into one block');
  t.is(verdict(r, readHolding(15, 10)), 'exception 2');
  t.is(verdict(r, readCoils(60_000, 100)), 'allow');
  t.is(verdict(r, readInput(0, 1)), 'exception 1');
  t.is(verdict(rules('read holding 0-9', 'read holding'), readHolding(500, 1)), 'allow');
});

test('unit limits answer gateway path unavailable (10) for any other unit, whatever the function', (t) => {
  const r = rules('read-only', 'unit 1-3', 'unit 7');
  t.is(verdict(r, readHolding(0, 1), 1), 'allow');
  t.is(verdict(r, readHolding(0, 1), 3), 'allow');
  t.is(verdict(r, readHolding(0, 1), 7), 'allow');
  t.is(verdict(r, readHolding(0, 1), 4), 'exception 10');
  t.is(verdict(r, readHolding(0, 1), 255), 'exception 10');
  t.is(verdict(rules('programming', 'unit 1'), umas(), 2), 'exception 10', 'even programming is limited to its units');
});

test('diagnostics, device-id, fc and program grants', (t) => {
  t.is(verdict(rules('diagnostics'), diagnostics()), 'allow');
  t.is(verdict(rules('diagnostics'), deviceId()), 'allow');
  t.is(verdict(rules('device-id'), deviceId()), 'allow');
  t.is(verdict(rules('device-id'), diagnostics()), 'exception 1');
  t.is(verdict(rules('program'), umas()), 'allow');
  t.is(verdict(rules('program'), req([66])), 'allow', 'user-defined codes count as program');
  t.is(verdict(rules('fc 90'), umas()), 'allow');
  t.is(verdict(rules('fc 90'), readHolding(0, 1)), 'exception 1');
  t.is(verdict(rules('read file'), req([20, 7, 6, 0, 1, 0, 0, 0, 1])), 'allow');
  t.is(verdict(rules('read file'), req([21, 9, 6, 0, 1, 0, 0, 0, 1, 0x12, 0x34])), 'exception 1');
});

test('the checker names every bad entry, and a list of limits alone is refused', (t) => {
  const problems = checkOps([
    'read-only',
    'write input-registers',
    'write discrete 0-4',
    'read holding 10-5',
    'read 50001',
    'read 40001-30001',
    'read 4001',
    'fc 200',
    'unit 300',
    'rate fast',
    'erase',
    'read-only please',
  ]);
  t.is(problems.length, 11);
  t.regex(problems.join('\n'), /"write input-registers": input-registers are read-only/);
  t.regex(problems.join('\n'), /"write discrete 0-4": discrete-inputs are read-only/);
  t.regex(problems.join('\n'), /"read holding 10-5": "10-5" is not an address or range/);
  t.regex(problems.join('\n'), /"read 50001": 50001: a Modicon reference starts with 0 \(coils\)/);
  t.regex(problems.join('\n'), /"read 40001-30001": 40001-30001 spans two tables/);
  t.regex(problems.join('\n'), /"read 4001": "4001" is neither a table nor a Modicon reference/);
  t.regex(problems.join('\n'), /"fc 200": expected "fc <1-127>"/);
  t.regex(problems.join('\n'), /"erase": unknown operation "erase"/);
  t.deepEqual(checkOps(['unit 1', 'rate 10/s']), ['only limits (unit, rate) and no operation: the flow would allow nothing']);
  t.deepEqual(checkOps(['read-only', 'rate 600/min', 'unit 1']), []);
  t.is(rules('read-only', 'rate 600/min').rate, 10);
});

test('covers: blocks at the ends of the address space', (t) => {
  t.true(covers([[0, 65_535]], 65_535, 1));
  t.false(covers([[0, 65_534]], 65_535, 1));
  t.true(covers([[10, 20]], 10, 11));
  t.false(covers([[10, 20]], 10, 12));
  t.false(covers([], 0, 1));
});
