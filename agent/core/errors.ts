/**
 * Ward's error type. Every failure that crosses a module boundary is a
 * WardError with a stable code `WARD_<AREA>_<WHAT>`: codes are part of the
 * operator-facing contract (logs, audit events, CLI exit messages) and are
 * never reused for a different meaning. `retryable` says whether trying the
 * same thing again later can help (a dead broker: yes; a bad signature: no).
 * Programmer misuse throws a plain TypeError instead.
 */
export type ErrorDetails = Readonly<Record<string, unknown>>;

export interface WardErrorOptions {
  readonly cause?: unknown;
  readonly retryable?: boolean;
  readonly details?: ErrorDetails;
}

export class WardError extends Error {
  readonly code: WardErrorCode;
  readonly retryable: boolean;
  readonly details: ErrorDetails;

  constructor(code: WardErrorCode, message: string, options: WardErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WardError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = Object.freeze({ ...(options.details ?? {}) });
  }

  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/** The registry of codes. Add new ones at the end of their area; never rename or reuse one. */
export const ErrorCodes = {
  // configuration
  CONFIG_NOT_FOUND: 'WARD_CONFIG_NOT_FOUND',
  CONFIG_UNREADABLE: 'WARD_CONFIG_UNREADABLE',
  CONFIG_SYNTAX: 'WARD_CONFIG_SYNTAX',
  CONFIG_INVALID: 'WARD_CONFIG_INVALID',
  // lifecycle
  LIFECYCLE_INVALID_TRANSITION: 'WARD_LIFECYCLE_INVALID_TRANSITION',
  // canonical JSON and signed envelopes
  CANONICAL_UNSUPPORTED_VALUE: 'WARD_CANONICAL_UNSUPPORTED_VALUE',
  ENVELOPE_TOO_LARGE: 'WARD_ENVELOPE_TOO_LARGE',
  ENVELOPE_NOT_JSON: 'WARD_ENVELOPE_NOT_JSON',
  ENVELOPE_MALFORMED: 'WARD_ENVELOPE_MALFORMED',
  ENVELOPE_UNKNOWN_KEY: 'WARD_ENVELOPE_UNKNOWN_KEY',
  ENVELOPE_BAD_SIGNATURE: 'WARD_ENVELOPE_BAD_SIGNATURE',
  ENVELOPE_WRONG_TYPE: 'WARD_ENVELOPE_WRONG_TYPE',
  ENVELOPE_EXPIRED: 'WARD_ENVELOPE_EXPIRED',
  ENVELOPE_NOT_YET_VALID: 'WARD_ENVELOPE_NOT_YET_VALID',
  ENVELOPE_REPLAYED: 'WARD_ENVELOPE_REPLAYED',
  ENVELOPE_ROLLBACK: 'WARD_ENVELOPE_ROLLBACK',
  ENVELOPE_WRONG_SUBJECT: 'WARD_ENVELOPE_WRONG_SUBJECT',
  // keys
  KEY_INVALID: 'WARD_KEY_INVALID',
  KEY_UNREADABLE: 'WARD_KEY_UNREADABLE',
  KEY_INSECURE_PERMISSIONS: 'WARD_KEY_INSECURE_PERMISSIONS',
  // control link
  LINK_NOT_CONNECTED: 'WARD_LINK_NOT_CONNECTED',
  LINK_CONNECT_FAILED: 'WARD_LINK_CONNECT_FAILED',
  LINK_PUBLISH_FAILED: 'WARD_LINK_PUBLISH_FAILED',
  LINK_CLOSED: 'WARD_LINK_CLOSED',
  RPC_TIMEOUT: 'WARD_RPC_TIMEOUT',
  RPC_REMOTE_ERROR: 'WARD_RPC_REMOTE_ERROR',
  RPC_UNKNOWN_METHOD: 'WARD_RPC_UNKNOWN_METHOD',
  // plugins
  PLUGIN_UNKNOWN: 'WARD_PLUGIN_UNKNOWN',
  PLUGIN_API_MISMATCH: 'WARD_PLUGIN_API_MISMATCH',
  PLUGIN_DEPENDENCY: 'WARD_PLUGIN_DEPENDENCY',
  PLUGIN_CONFIG_INVALID: 'WARD_PLUGIN_CONFIG_INVALID',
  PLUGIN_START_FAILED: 'WARD_PLUGIN_START_FAILED',
  PLUGIN_TIMEOUT: 'WARD_PLUGIN_TIMEOUT',
  // controller
  CONTROLLER_STORE: 'WARD_CONTROLLER_STORE',
  CONTROLLER_LISTEN_FAILED: 'WARD_CONTROLLER_LISTEN_FAILED',
  CONTROLLER_DEVICE_UNKNOWN: 'WARD_CONTROLLER_DEVICE_UNKNOWN',
  CONTROLLER_BROKER_SYNC_FAILED: 'WARD_CONTROLLER_BROKER_SYNC_FAILED',
  // state files
  STATE_CORRUPT: 'WARD_STATE_CORRUPT',
  // fleet keys and root metadata
  FLEET_PASSPHRASE_WRONG: 'WARD_FLEET_PASSPHRASE_WRONG',
  FLEET_KEY_FILE_INVALID: 'WARD_FLEET_KEY_FILE_INVALID',
  FLEET_ROOT_INVALID: 'WARD_FLEET_ROOT_INVALID',
  FLEET_ROOT_ROLLBACK: 'WARD_FLEET_ROOT_ROLLBACK',
  FLEET_ROOT_THRESHOLD: 'WARD_FLEET_ROOT_THRESHOLD',
  FLEET_ROOT_EXPIRED: 'WARD_FLEET_ROOT_EXPIRED',
  FLEET_CONTROLLER_CERT_INVALID: 'WARD_FLEET_CONTROLLER_CERT_INVALID',
  FLEET_NOT_INITIALISED: 'WARD_FLEET_NOT_INITIALISED',
  // enrollment bundle (QR payload)
  BUNDLE_MALFORMED: 'WARD_BUNDLE_MALFORMED',
  BUNDLE_BAD_SIGNATURE: 'WARD_BUNDLE_BAD_SIGNATURE',
  BUNDLE_UNTRUSTED_CONTROLLER: 'WARD_BUNDLE_UNTRUSTED_CONTROLLER',
  BUNDLE_EXPIRED: 'WARD_BUNDLE_EXPIRED',
  BUNDLE_WRONG_SITE: 'WARD_BUNDLE_WRONG_SITE',
  BUNDLE_NOT_FOR_THIS_DEVICE: 'WARD_BUNDLE_NOT_FOR_THIS_DEVICE',
  // QR images
  QR_NOT_FOUND: 'WARD_QR_NOT_FOUND',
  QR_IMAGE_UNREADABLE: 'WARD_QR_IMAGE_UNREADABLE',
  QR_TOO_LARGE: 'WARD_QR_TOO_LARGE',
  // X.509
  X509_BAD_CSR: 'WARD_X509_BAD_CSR',
  X509_BAD_CERT: 'WARD_X509_BAD_CERT',
  // enrollment exchange
  ENROLL_TOKEN_UNKNOWN: 'WARD_ENROLL_TOKEN_UNKNOWN',
  ENROLL_TOKEN_USED: 'WARD_ENROLL_TOKEN_USED',
  ENROLL_TOKEN_EXPIRED: 'WARD_ENROLL_TOKEN_EXPIRED',
  ENROLL_WRONG_SITE: 'WARD_ENROLL_WRONG_SITE',
  ENROLL_ID_TAKEN: 'WARD_ENROLL_ID_TAKEN',
  ENROLL_DEVICE_REVOKED: 'WARD_ENROLL_DEVICE_REVOKED',
  ENROLL_REFUSED: 'WARD_ENROLL_REFUSED',
  ENROLL_TIMEOUT: 'WARD_ENROLL_TIMEOUT',
  ENROLL_BAD_RESPONSE: 'WARD_ENROLL_BAD_RESPONSE',
  // device identity on the gateway
  IDENTITY_NOT_PROVISIONED: 'WARD_IDENTITY_NOT_PROVISIONED',
  IDENTITY_ALREADY_PROVISIONED: 'WARD_IDENTITY_ALREADY_PROVISIONED',
  IDENTITY_CORRUPT: 'WARD_IDENTITY_CORRUPT',
  IDENTITY_CERT_MISMATCH: 'WARD_IDENTITY_CERT_MISMATCH',
  IDENTITY_CERT_EXPIRED: 'WARD_IDENTITY_CERT_EXPIRED',
  // audit journal, shipping and verification
  AUDIT_EVENT_INVALID: 'WARD_AUDIT_EVENT_INVALID',
  AUDIT_JOURNAL_CORRUPT: 'WARD_AUDIT_JOURNAL_CORRUPT',
  AUDIT_JOURNAL_BUSY: 'WARD_AUDIT_JOURNAL_BUSY',
  AUDIT_JOURNAL_WRITE_FAILED: 'WARD_AUDIT_JOURNAL_WRITE_FAILED',
  AUDIT_JOURNAL_CLOSED: 'WARD_AUDIT_JOURNAL_CLOSED',
  AUDIT_BATCH_INVALID: 'WARD_AUDIT_BATCH_INVALID',
  AUDIT_CHAIN_BROKEN: 'WARD_AUDIT_CHAIN_BROKEN',
  AUDIT_RECEIPT_INVALID: 'WARD_AUDIT_RECEIPT_INVALID',
  AUDIT_EXPORT_INVALID: 'WARD_AUDIT_EXPORT_INVALID',
  AUDIT_JOURNAL_NOT_FOUND: 'WARD_AUDIT_JOURNAL_NOT_FOUND',
} as const;

export type WardErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export function isWardError(err: unknown, code?: WardErrorCode): err is WardError {
  return err instanceof WardError && (code === undefined || err.code === code);
}

/** A one-line, operator-readable description of any thrown value, without stack noise. */
export function describeError(err: unknown): string {
  if (err instanceof WardError) return `${err.code}: ${err.message}`;
  if (err instanceof Error) return err.message;
  return String(err);
}
