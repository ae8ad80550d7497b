/**
 * A minimal promise-based Modbus/TCP client for the telemetry collector, on frame.ts, so Ward carries no
 * third-party Modbus client at runtime. Requests are pipelined: each gets its own transaction id and the answers
 * may arrive in any order (Implementation Guide §3.1.3 lets a server answer out of order).
 *
 * Ownership: the client owns its socket from connect() to close(); when the socket closes, for any reason, every
 * pending request is rejected and the client stays closed (make a new one to reconnect). Every response is checked
 * by parseResponse against the request it answers, so a caller only ever sees values of the shape it asked for.
 */
import net from 'node:net';
import { encodeReadRequest, encodeWriteMultipleRegistersRequest, encodeWriteSingleRequest } from './encode.js';
import { AduFramer, parseRequest, parseResponse, type Request, type Response } from './frame.js';

/** Stable codes (conventions §7). Kept here until plugins/api carries an error registry a plugin can extend. */
export const ModbusErrorCodes = {
  CONNECT_FAILED: 'WARD_MODBUS_CONNECT_FAILED',
  TIMEOUT: 'WARD_MODBUS_TIMEOUT',
  EXCEPTION: 'WARD_MODBUS_EXCEPTION',
  BAD_RESPONSE: 'WARD_MODBUS_BAD_RESPONSE',
  CLOSED: 'WARD_MODBUS_CLOSED',
  ABORTED: 'WARD_MODBUS_ABORTED',
} as const;
export type ModbusErrorCode = (typeof ModbusErrorCodes)[keyof typeof ModbusErrorCodes];

/** AP §7 names, for messages. */
const EXCEPTION_NAMES: Readonly<Record<number, string>> = {
  1: 'Illegal Function',
  2: 'Illegal Data Address',
  3: 'Illegal Data Value',
  4: 'Server Device Failure',
  5: 'Acknowledge',
  6: 'Server Device Busy',
  8: 'Memory Parity Error',
  10: 'Gateway Path Unavailable',
  11: 'Gateway Target Device Failed to Respond',
};
/** Exceptions that describe a passing condition (busy, acknowledge, a gateway that lost its target). */
const TRANSIENT_EXCEPTIONS = new Set([5, 6, 10, 11]);

export class ModbusError extends Error {
  readonly code: ModbusErrorCode;
  /** Whether the same request may succeed later. */
  readonly retryable: boolean;
  /** The AP §7 exception code, when the server answered with an exception. */
  readonly exceptionCode: number | undefined;

  constructor(code: ModbusErrorCode, message: string, options: { cause?: unknown; retryable?: boolean; exceptionCode?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ModbusError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.exceptionCode = options.exceptionCode;
  }
}

export interface ModbusConnectOptions {
  /** Bounds the connect and each request. Default 3000 ms. */
  timeoutMs?: number;
  /** Aborts the connect; once connected, aborting closes the client. */
  signal?: AbortSignal;
}

interface Pending {
  request: Request;
  unitId: number;
  what: string;
  timer: NodeJS.Timeout;
  decode: (response: Response) => unknown;
  resolve: (value: unknown) => void;
  reject: (err: ModbusError) => void;
}

function checkInt(value: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < min || value > max) throw new TypeError(`${what} ${value} must be an integer in ${min}..${max}`);
}

function registersOf(response: Response): Uint16Array {
  const bytes = response.kind === 'read-registers' ? response.registers : Buffer.alloc(0);
  const out = new Uint16Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readUInt16BE(2 * i);
  return out;
}

function bitsOf(response: Response, quantity: number): boolean[] {
  const bytes = response.kind === 'read-bits' ? response.bytes : Buffer.alloc(0);
  const out = new Array<boolean>(quantity);
  for (let i = 0; i < quantity; i++) out[i] = (((bytes[i >> 3] ?? 0) >> (i & 7)) & 1) === 1;
  return out;
}

const nothing = (): undefined => undefined;

export class ModbusClient {
  readonly #socket: net.Socket;
  readonly #peer: string;
  readonly #timeoutMs: number;
  readonly #framer = new AduFramer();
  readonly #pending = new Map<number, Pending>();
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => this.#shutdown(new ModbusError(ModbusErrorCodes.ABORTED, `Modbus ${this.#peer}: aborted`));
  #nextTid = 0;
  #closed = false;
  #socketError: Error | undefined;

  private constructor(socket: net.Socket, peer: string, timeoutMs: number, signal: AbortSignal | undefined) {
    this.#socket = socket;
    this.#peer = peer;
    this.#timeoutMs = timeoutMs;
    this.#signal = signal;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#socketError = err;
    });
    socket.on('close', () => {
      const cause = this.#socketError;
      const detail = cause ? `: ${cause.message}` : '';
      this.#shutdown(new ModbusError(ModbusErrorCodes.CLOSED, `Modbus ${peer}: connection closed${detail}`, { cause, retryable: true }));
    });
    signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Connects, or rejects with WARD_MODBUS_CONNECT_FAILED (retryable), WARD_MODBUS_TIMEOUT or WARD_MODBUS_ABORTED. */
  static connect(host: string, port: number, options: ModbusConnectOptions = {}): Promise<ModbusClient> {
    const timeoutMs = options.timeoutMs ?? 3000;
    checkInt(port, 1, 65535, 'port');
    if (!(timeoutMs > 0)) throw new TypeError(`timeoutMs ${timeoutMs} must be positive`);
    const { signal } = options;
    const peer = `${host}:${port}`;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new ModbusError(ModbusErrorCodes.ABORTED, `Modbus ${peer}: connect aborted`));
        return;
      }
      const socket = net.connect({ host, port });
      const settle = (err: ModbusError | undefined) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        socket.off('error', onError);
        socket.off('connect', onConnect);
        if (err) {
          socket.destroy();
          reject(err);
        } else {
          resolve(new ModbusClient(socket, peer, timeoutMs, signal));
        }
      };
      const onConnect = () => settle(undefined);
      const onError = (cause: Error) =>
        settle(new ModbusError(ModbusErrorCodes.CONNECT_FAILED, `Modbus ${peer}: ${cause.message}`, { cause, retryable: true }));
      const onAbort = () => settle(new ModbusError(ModbusErrorCodes.ABORTED, `Modbus ${peer}: connect aborted`));
      const timer = setTimeout(
        () => settle(new ModbusError(ModbusErrorCodes.TIMEOUT, `Modbus ${peer}: not connected within ${timeoutMs} ms`, { retryable: true })),
        timeoutMs,
      );
      socket.once('connect', onConnect);
      socket.once('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** True once the connection is gone; requests then reject at once with WARD_MODBUS_CLOSED. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Requests sent and not yet answered. */
  get pending(): number {
    return this.#pending.size;
  }

  /** FC3 (§6.3). */
  readHoldingRegisters(unitId: number, address: number, quantity: number): Promise<Uint16Array> {
    return this.#read(unitId, 3, address, quantity, registersOf);
  }

  /** FC4 (§6.4). */
  readInputRegisters(unitId: number, address: number, quantity: number): Promise<Uint16Array> {
    return this.#read(unitId, 4, address, quantity, registersOf);
  }

  /** FC1 (§6.1). */
  readCoils(unitId: number, address: number, quantity: number): Promise<boolean[]> {
    return this.#read(unitId, 1, address, quantity, (r) => bitsOf(r, quantity));
  }

  /** FC2 (§6.2). */
  readDiscreteInputs(unitId: number, address: number, quantity: number): Promise<boolean[]> {
    return this.#read(unitId, 2, address, quantity, (r) => bitsOf(r, quantity));
  }

  /** FC6 (§6.6). */
  writeSingleRegister(unitId: number, address: number, value: number): Promise<void> {
    checkInt(address, 0, 0xffff, 'address');
    checkInt(value, 0, 0xffff, 'register value');
    return this.#send(unitId, (ids) => encodeWriteSingleRequest(ids, 6, address, value), nothing);
  }

  /** FC16 (§6.12): 1..123 registers. */
  writeMultipleRegisters(unitId: number, address: number, values: ArrayLike<number>): Promise<void> {
    checkInt(address, 0, 0xffff, 'address');
    for (let i = 0; i < values.length; i++) checkInt(values[i] as number, 0, 0xffff, `register value [${i}]`);
    return this.#send(unitId, (ids) => encodeWriteMultipleRegistersRequest(ids, address, values), nothing);
  }

  /** Closes the connection; pending requests reject with WARD_MODBUS_CLOSED. Resolves once the socket is closed. */
  async close(): Promise<void> {
    const closed = this.#socket.closed ? Promise.resolve() : new Promise<void>((resolve) => this.#socket.once('close', () => resolve()));
    this.#shutdown(new ModbusError(ModbusErrorCodes.CLOSED, `Modbus ${this.#peer}: client closed`));
    await closed;
  }

  #read<T>(unitId: number, fc: 1 | 2 | 3 | 4, address: number, quantity: number, decode: (r: Response) => T): Promise<T> {
    checkInt(address, 0, 0xffff, 'address');
    checkInt(quantity, 1, 0xffff, 'quantity');
    return this.#send(unitId, (ids) => encodeReadRequest(ids, fc, address, quantity), decode);
  }

  #send<T>(unitId: number, encode: (ids: { transactionId: number; unitId: number }) => Buffer, decode: (r: Response) => T): Promise<T> {
    checkInt(unitId, 0, 255, 'unit id');
    const transactionId = this.#allocateTid();
    // Addresses and quantities are checked by the parser the proxy uses, so the client refuses exactly what a
    // strict device would; a refusal here is the caller's bug, not a device problem.
    const adu = encode({ transactionId, unitId });
    const parsed = parseRequest(adu);
    if (!parsed.ok) throw new TypeError(parsed.error.message);
    const request = parsed.frame.body;
    const what = describe(request);
    if (this.#closed)
      return Promise.reject(new ModbusError(ModbusErrorCodes.CLOSED, `Modbus ${this.#peer} unit ${unitId} ${what}: not connected`, { retryable: true }));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(transactionId);
        reject(
          new ModbusError(ModbusErrorCodes.TIMEOUT, `Modbus ${this.#peer} unit ${unitId} ${what}: no response within ${this.#timeoutMs} ms`, {
            retryable: true,
          }),
        );
      }, this.#timeoutMs);
      this.#pending.set(transactionId, { request, unitId, what, timer, decode, resolve: resolve as (v: unknown) => void, reject });
      this.#socket.write(adu);
    });
  }

  #allocateTid(): number {
    if (this.#pending.size >= 0x10000) throw new TypeError('65536 requests already pending');
    do this.#nextTid = (this.#nextTid + 1) & 0xffff;
    while (this.#pending.has(this.#nextTid));
    return this.#nextTid;
  }

  #onData(chunk: Buffer): void {
    const { frames, error } = this.#framer.push(chunk);
    for (const frame of frames) this.#onFrame(frame);
    if (error) {
      this.#shutdown(
        new ModbusError(ModbusErrorCodes.BAD_RESPONSE, `Modbus ${this.#peer}: unframeable response stream: ${error.message}`, { retryable: true }),
      );
    }
  }

  #onFrame(frame: Buffer): void {
    const tid = frame.readUInt16BE(0);
    const pending = this.#pending.get(tid);
    // An answer after its request timed out: nobody is waiting for it any more.
    if (!pending) return;
    this.#pending.delete(tid);
    clearTimeout(pending.timer);
    const prefix = `Modbus ${this.#peer} unit ${pending.unitId} ${pending.what}`;
    const unitId = frame.readUInt8(6);
    if (unitId !== pending.unitId) {
      pending.reject(new ModbusError(ModbusErrorCodes.BAD_RESPONSE, `${prefix}: answered by unit ${unitId}`));
      return;
    }
    const parsed = parseResponse(frame, pending.request);
    if (!parsed.ok) {
      pending.reject(new ModbusError(ModbusErrorCodes.BAD_RESPONSE, `${prefix}: ${parsed.error.message}`));
      return;
    }
    const body = parsed.frame.body;
    if (body.kind === 'exception') {
      const name = EXCEPTION_NAMES[body.exceptionCode] ?? 'unknown exception';
      pending.reject(
        new ModbusError(ModbusErrorCodes.EXCEPTION, `${prefix}: exception ${body.exceptionCode} (${name})`, {
          exceptionCode: body.exceptionCode,
          retryable: TRANSIENT_EXCEPTIONS.has(body.exceptionCode),
        }),
      );
      return;
    }
    pending.resolve(pending.decode(body));
  }

  #shutdown(err: ModbusError): void {
    if (!this.#closed) {
      this.#closed = true;
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.#socket.destroy();
    }
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this.#pending.clear();
  }
}

function describe(r: Request): string {
  switch (r.kind) {
    case 'read':
      return `FC${r.fc} read ${r.quantity} at ${r.address}`;
    case 'write-single':
      return `FC${r.fc} write at ${r.address}`;
    case 'write-multiple':
      return `FC${r.fc} write ${r.quantity} at ${r.address}`;
    default:
      return `FC${r.fc}`;
  }
}
