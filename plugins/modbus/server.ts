/**
 * A simulated Modbus/TCP PLC for tests, benchmarks and `ward dev`. Built on frame.ts: AduFramer cuts each
 * connection's stream, parseRequest decodes, encode.ts answers. Every function code a small PLC commonly serves is
 * implemented against four in-memory tables; everything else is answered with an exception, as a device would.
 *
 * Concurrency: single-threaded like everything on the event loop. Requests of one connection are answered in the
 * order they arrive (the Implementation Guide lets a server reorder, but in-order answers make pipelining tests
 * deterministic); connections share the tables, so a write on one is visible to the next read on any other.
 */
import net from 'node:net';
import {
  type DeviceIdObject,
  encodeDeviceIdResponse,
  encodeDiagnosticsResponse,
  encodeMaskWriteResponse,
  encodeReadBitsResponse,
  encodeReadRegistersResponse,
  encodeWriteMultipleResponse,
  encodeWriteSingleResponse,
} from './encode.js';
import { AduFramer, ExceptionCode, encodeException, type Mbap, parseRequest, type Request } from './frame.js';

export interface ModbusSimIdentity {
  vendor: string;
  product: string;
  version: string;
}

export interface ModbusSimOptions {
  /** Unit ids this PLC answers as; any other gets exception 0x0B. Default: every unit id. */
  unitIds?: readonly number[];
  /** Entries per table, 1..65536. Default 10000. */
  size?: number;
  /** Basic device identification objects (FC43/14), ASCII, at most 64 bytes each. */
  identity?: ModbusSimIdentity;
}

/** Function codes the simulator implements; a malformed request for one of these gets exception 3, others 1. */
const IMPLEMENTED = new Set([1, 2, 3, 4, 5, 6, 8, 15, 16, 22, 23, 43]);
const MEI_DEVICE_ID = 14;
/** §6.21 conformity level 0x81: basic identification, stream and individual access. */
const CONFORMITY_BASIC_INDIVIDUAL = 0x81;
const MAX_IDENTITY_BYTES = 64;
const DEFAULT_IDENTITY: ModbusSimIdentity = { vendor: 'Ward', product: 'ward-sim-plc', version: '0.1.0' };

type ExceptionValue = (typeof ExceptionCode)[keyof typeof ExceptionCode];

export class ModbusSimServer {
  /** FC3/6/16/22/23. Tests read and set the tables directly. */
  readonly holding: Uint16Array;
  /** FC4. */
  readonly input: Uint16Array;
  /** FC1/5/15, one entry (0 or 1) per coil. */
  readonly coils: Uint8Array;
  /** FC2, one entry (0 or 1) per input. */
  readonly discrete: Uint8Array;
  /** Requests that parsed, whether answered normally or with an exception. */
  requests = 0;
  /** Frames that did not parse: malformed PDUs (answered with an exception) and framing errors (connection closed). */
  invalidFrames = 0;
  /**
   * Called with every parsed request before it touches the tables, including those for a unit this PLC does not
   * serve. Must not throw: it runs inside the socket's data handler.
   */
  onRequest?: (unitId: number, request: Request) => void;

  /** 1 at index u when unit u is served. */
  readonly #units = new Uint8Array(256);
  /** Stream-access answers (§6.21 read codes 1-3) starting at object 0, 1 and 2, built once. */
  readonly #idStreams: DeviceIdObject[][];
  /** Individual-access answers (§6.21 read code 4), one per object, built once. */
  readonly #idSingles: DeviceIdObject[][];
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();
  #simTimer: NodeJS.Timeout | undefined;

  constructor(options: ModbusSimOptions = {}) {
    const size = options.size ?? 10_000;
    if (!Number.isInteger(size) || size < 1 || size > 0x10000) throw new TypeError(`size ${size} must be an integer in 1..65536`);
    this.holding = new Uint16Array(size);
    this.input = new Uint16Array(size);
    this.coils = new Uint8Array(size);
    this.discrete = new Uint8Array(size);
    if (options.unitIds) {
      for (const u of options.unitIds) {
        if (!Number.isInteger(u) || u < 0 || u > 255) throw new TypeError(`unit id ${u} must be an integer in 0..255`);
        this.#units[u] = 1;
      }
    } else {
      this.#units.fill(1);
    }
    const identity = options.identity ?? DEFAULT_IDENTITY;
    const objects = [identity.vendor, identity.product, identity.version].map((text, id) => {
      const value = Buffer.from(text, 'latin1');
      // Three objects of 64 bytes fit one 253-byte PDU, so no answer ever needs more-follows.
      if (value.length > MAX_IDENTITY_BYTES || !/^[\x20-\x7e]*$/.test(text)) {
        throw new TypeError(`identity object ${id} must be printable ASCII of at most ${MAX_IDENTITY_BYTES} bytes`);
      }
      return { id, value };
    });
    this.#idStreams = [objects, objects.slice(1), objects.slice(2)];
    this.#idSingles = objects.map((o) => [o]);
  }

  /** Starts accepting connections; resolves with the address actually bound (port 0 picks a free port). */
  async listen(port = 0, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    if (this.#server) throw new TypeError('ModbusSimServer is already listening');
    const server = net.createServer((socket) => this.#accept(socket));
    this.#server = server;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      this.#server = undefined;
      throw err;
    }
    const address = server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  /** Stops the simulation, stops listening and destroys open connections. Idempotent. */
  async close(): Promise<void> {
    if (this.#simTimer) clearInterval(this.#simTimer);
    this.#simTimer = undefined;
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
    await closed;
  }

  /**
   * Makes a few values live for `ward dev`, in the spirit of plugins/sim: input[0] counts ticks (wrapping at 65536),
   * input[1] is a temperature in tenths of a degree, a sine of 45.0 ± 5.0 °C over about 3 minutes, and coil 0 and
   * discrete input 0 are the running flag. Calling it again restarts it with the new period; close() stops it.
   */
  simulate(periodMs = 1000): this {
    if (!Number.isFinite(periodMs) || periodMs < 1) throw new TypeError(`periodMs ${periodMs} must be at least 1`);
    if (this.input.length < 2) throw new TypeError('simulate() needs tables of at least 2 entries');
    if (this.#simTimer) clearInterval(this.#simTimer);
    let ticks = 0;
    this.coils[0] = 1;
    this.discrete[0] = 1;
    const tick = () => {
      const seconds = (ticks * periodMs) / 1000;
      this.input[0] = ticks & 0xffff;
      this.input[1] = Math.round(450 + 50 * Math.sin(seconds / 30));
      ticks++;
    };
    tick();
    this.#simTimer = setInterval(tick, periodMs);
    this.#simTimer.unref();
    return this;
  }

  /**
   * The answer to one complete ADU, or undefined when there is none to give (a PDU that cannot start a request,
   * fc 0 or >= 0x80, has no exception form: §7 sets the high bit of the fc, so the client could not tell the
   * answer from an exception to another function). Public so benchmarks can drive the server without sockets.
   */
  respond(adu: Buffer): Buffer | undefined {
    const parsed = parseRequest(adu);
    if (!parsed.ok) {
      this.invalidFrames++;
      // Only a PDU-level refusal leaves a header worth answering; framing errors are the connection's business.
      if (parsed.error.code !== 'bad-pdu' || adu.length < 8) return undefined;
      const fc = adu.readUInt8(7);
      if (fc === 0 || fc >= 0x80) return undefined;
      const mbap: Mbap = { transactionId: adu.readUInt16BE(0), protocolId: 0, length: adu.readUInt16BE(4), unitId: adu.readUInt8(6) };
      const code = IMPLEMENTED.has(fc) ? ExceptionCode.IllegalDataValue : ExceptionCode.IllegalFunction;
      const mei = fc === 43 && adu.length > 8 ? adu.readUInt8(8) : undefined;
      return encodeException(mbap, fc, code, mei);
    }
    this.requests++;
    const { mbap, body } = parsed.frame;
    this.onRequest?.(mbap.unitId, body);
    // A TCP server has no silent way to say "nobody here": no answer would only cost the client its timeout, so it
    // answers the way a gateway does for an absent serial device (AP §7, code 0x0B).
    if (this.#units[mbap.unitId] !== 1) return this.#exception(mbap, body, ExceptionCode.GatewayTargetFailedToRespond);
    return this.#execute(mbap, body);
  }

  #execute(mbap: Mbap, r: Request): Buffer {
    switch (r.kind) {
      case 'read': {
        const table = r.fc === 1 ? this.coils : r.fc === 2 ? this.discrete : r.fc === 3 ? this.holding : this.input;
        if (r.address + r.quantity > table.length) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
        return r.fc === 1 || r.fc === 2
          ? encodeReadBitsResponse(mbap, r.fc, table, r.address, r.quantity)
          : encodeReadRegistersResponse(mbap, r.fc === 3 ? 3 : 4, table, r.address, r.quantity);
      }
      case 'write-single': {
        const coil = r.fc === 5;
        if (r.address >= (coil ? this.coils.length : this.holding.length)) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
        if (coil) this.coils[r.address] = r.value === 0 ? 0 : 1;
        else this.holding[r.address] = r.value;
        return encodeWriteSingleResponse(mbap, coil ? 5 : 6, r.address, r.value);
      }
      case 'write-multiple': {
        if (r.fc === 15) {
          if (r.address + r.quantity > this.coils.length) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
          // §6.11: LSB of the first data byte is the coil at `address`.
          for (let i = 0; i < r.quantity; i++) this.coils[r.address + i] = ((r.values[i >> 3] as number) >> (i & 7)) & 1;
          return encodeWriteMultipleResponse(mbap, 15, r.address, r.quantity);
        }
        if (r.address + r.quantity > this.holding.length) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
        for (let i = 0; i < r.quantity; i++) this.holding[r.address + i] = r.values.readUInt16BE(2 * i);
        return encodeWriteMultipleResponse(mbap, 16, r.address, r.quantity);
      }
      case 'mask-write': {
        if (r.address >= this.holding.length) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
        // §6.16: Result = (Current Contents AND And_Mask) OR (Or_Mask AND (NOT And_Mask))
        const current = this.holding[r.address] as number;
        this.holding[r.address] = (current & r.andMask) | (r.orMask & ~r.andMask);
        return encodeMaskWriteResponse(mbap, r.address, r.andMask, r.orMask);
      }
      case 'read-write': {
        const size = this.holding.length;
        if (r.write.address + r.write.quantity > size || r.read.address + r.read.quantity > size) {
          return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
        }
        // §6.17: "The write operation is performed before the read."
        for (let i = 0; i < r.write.quantity; i++) this.holding[r.write.address + i] = r.write.values.readUInt16BE(2 * i);
        return encodeReadRegistersResponse(mbap, 23, this.holding, r.read.address, r.read.quantity);
      }
      case 'diagnostics':
        // Sub-function 0 (Return Query Data, §6.8.1) is the only one with a meaning over TCP: the rest count
        // serial-line events or change serial-line modes.
        if (r.subFunction !== 0) return this.#exception(mbap, r, ExceptionCode.IllegalFunction);
        return encodeDiagnosticsResponse(mbap, 0, r.data);
      case 'device-id':
        return this.#deviceId(mbap, r);
      default:
        return this.#exception(mbap, r, ExceptionCode.IllegalFunction);
    }
  }

  /** §6.21 with basic objects only: read codes 1-3 stream them, 4 returns one. */
  #deviceId(mbap: Mbap, r: Extract<Request, { kind: 'device-id' }>): Buffer {
    if (r.readCode === 4) {
      const single = this.#idSingles[r.objectId];
      if (!single) return this.#exception(mbap, r, ExceptionCode.IllegalDataAddress);
      return encodeDeviceIdResponse(mbap, 4, CONFORMITY_BASIC_INDIVIDUAL, single);
    }
    // §6.21: codes 2 and 3 ask for more than a basic device has, so it answers at its own level; an unknown start
    // object restarts the stream at object 0.
    const objects = this.#idStreams[r.objectId] ?? (this.#idStreams[0] as DeviceIdObject[]);
    return encodeDeviceIdResponse(mbap, r.readCode, CONFORMITY_BASIC_INDIVIDUAL, objects);
  }

  #exception(mbap: Mbap, r: Request, code: ExceptionValue): Buffer {
    // §6.21: an FC43 exception carries the MEI type it answers.
    const mei = r.kind === 'device-id' ? MEI_DEVICE_ID : r.fc === 43 && r.kind === 'other' ? r.data[0] : undefined;
    return encodeException(mbap, r.fc, code, mei);
  }

  #accept(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('error', () => {
      // A client resetting its connection is routine for a server; 'close' follows and cleans up.
    });
    socket.on('close', () => this.#sockets.delete(socket));
    const framer = new AduFramer();
    socket.on('data', (chunk: Buffer) => {
      if (framer.error) return;
      const { frames, error } = framer.push(chunk);
      if (frames.length > 0) {
        // One write per pipelined batch rather than per answer.
        socket.cork();
        for (const frame of frames) {
          const answer = this.respond(frame);
          if (answer) socket.write(answer);
        }
        socket.uncork();
      }
      if (error) {
        // Implementation Guide §3.1.3 gives no delimiter to resynchronise on: answer what came before, then close.
        this.invalidFrames++;
        socket.destroySoon();
      }
    });
  }
}
