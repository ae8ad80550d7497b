/**
 * The hardware contract. The agent sees the gateway's hardware only through
 * these interfaces; drivers (hardware/<driver>) implement them against the
 * real kernel interfaces (sysfs, device-tree, ttys, systemd), fakes
 * (hardware/fakes) against memory, and both pass the suites in
 * test/conformance/. Only agent/system.ts picks implementations.
 *
 * Every driver reads the file system through a `HostFs` rooted at a folder:
 * '/' on a gateway, a fixture tree (fake /proc and /sys) in tests, so board
 * detection is tested on the trees of real boards without the boards.
 */

/** Read-mostly access to /proc, /sys and /dev under a root folder. Paths are absolute ("/sys/class/net"). */
export interface HostFs {
  readonly root: string;
  readText(path: string): Promise<string | undefined>;
  list(path: string): Promise<string[]>;
  /** Resolves symlinks to an absolute path inside the root ("/sys/devices/…"), or undefined. */
  realpath(path: string): Promise<string | undefined>;
  exists(path: string): Promise<boolean>;
  writeText(path: string, value: string): Promise<void>;
}

/** Logical port names used by policies and the console: stable across boards. */
export type PortName = `UPLINK` | `PLC${number}` | `RS485-${number}` | `SERIAL${number}`;

export interface PortSpec {
  readonly name: PortName;
  readonly kind: 'ethernet' | 'rs485' | 'serial';
  readonly label: string;
  /**
   * How to find the port: a pattern matched against the resolved sysfs device path of each
   * network interface (ethernet) or tty (serial) — stable across interface renames.
   */
  readonly devicePath: RegExp;
  /** When several devices match, take the nth (0-based) in device-path order; default 0 with exactly-one semantics relaxed. */
  readonly nth?: number;
}

export interface BoardProfile {
  readonly id: string;
  readonly name: string;
  /** Matched against /proc/device-tree/model (ARM boards) or "<sys_vendor> <product_name>" from DMI (x86). */
  readonly model: RegExp;
  readonly source: 'device-tree' | 'dmi';
  readonly ports: readonly PortSpec[];
  /** Candidate LED names under /sys/class/leds for the status LED, first present wins. */
  readonly statusLeds: readonly string[];
}

export interface MappedPort {
  readonly name: PortName;
  readonly kind: PortSpec['kind'];
  readonly label: string;
  /** Interface name (ethernet) or /dev path (serial); undefined when the hardware is absent. */
  readonly device: string | undefined;
}

export interface TpmInfo {
  readonly present: boolean;
  readonly version?: string;
  /** Resource-manager device to use (/dev/tpmrm0), when present. */
  readonly device?: string;
}

export interface DetectedBoard {
  readonly profile: BoardProfile;
  /** What identified it (the model string), for logs and the console. */
  readonly model: string;
  readonly ports: readonly MappedPort[];
  readonly tpm: TpmInfo;
  /** A stable serial (device-tree serial-number or DMI product_uuid) when the board has one. */
  readonly serial: string | undefined;
}

/** What the status LED shows: one pattern per lifecycle state (DESIGN.md §3). */
export type LedPattern = { readonly mode: 'off' } | { readonly mode: 'on' } | { readonly mode: 'blink'; readonly onMs: number; readonly offMs: number };

export interface StatusLed {
  readonly name: string;
  show(pattern: LedPattern): Promise<void>;
  /** What the LED is showing now, read back from the device (not remembered). */
  current(): Promise<LedPattern>;
}

/**
 * A supervisor watchdog (systemd's WatchdogSec, or a hardware one). `ready()` once started,
 * `ping()` from the main loop at `intervalMs` (undefined: no watchdog armed), `stopping()` on shutdown.
 */
export interface Watchdog {
  readonly kind: string;
  readonly intervalMs: number | undefined;
  ready(status?: string): Promise<void>;
  ping(): Promise<void>;
  stopping(): Promise<void>;
}

/**
 * Scans typed by a barcode/QR scanner acting as a USB keyboard (HID), read
 * from a tty. Each scan ends with Enter. A line longer than MAX_SCAN_LENGTH
 * (a stuck key, the wrong device) is reported as `rejected` and discarded up
 * to the next line end, never buffered without bound; reading goes on.
 */
export type ScanEvent = { readonly kind: 'scan'; readonly text: string } | { readonly kind: 'rejected'; readonly reason: string };

export interface ScanInput {
  /** Yields each scan (without the line ending) until the source ends or close() is called. */
  events(): AsyncIterable<ScanEvent>;
  close(): Promise<void>;
}

export const MAX_SCAN_LENGTH = 4096;

/**
 * The TPM operations attestation needs (hardware/tpm implements them with tpm2-tools; the TCTI says which TPM:
 * `device:/dev/tpmrm0` on a gateway, `swtpm:host=127.0.0.1,port=P` in tests). Digests and PCR values are sha256.
 */
export interface AttestationTpm {
  /** The attestation key (created under the endorsement key on first use, kept in the TPM) and the EK it is bound to. */
  identity(): Promise<{
    readonly akPublicPem: string;
    readonly akName: string;
    readonly ekPublicPem: string /** TPM2B_PUBLIC, base64. */;
    readonly akPublic: string;
  }>;
  resetPcr(index: number): Promise<void>;
  extendPcr(index: number, digest: Buffer): Promise<void>;
  readPcrs(indexes: readonly number[]): Promise<Record<number, string>>;
  /** TPM2_Quote over `pcrs` with `qualifier` as extraData, signed by the attestation key. */
  quote(qualifier: Buffer, pcrs: readonly number[]): Promise<{ readonly attest: Buffer; readonly signature: Buffer; readonly pcrs: Record<number, string> }>;
  /**
   * TPM2_ActivateCredential: recovers the verifier's secret from a credential made for this EK and AK name (the
   * tpm2_makecredential output file), proving the AK lives in the same TPM as the EK.
   */
  activateCredential(credential: Buffer): Promise<Buffer>;
}
