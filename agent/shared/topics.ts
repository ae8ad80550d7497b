/**
 * The topic tree of DESIGN.md §4. Every device topic sits under
 * `ward/v1/<deviceId>/`, so a broker ACL of `ward/v1/%u/#` confines a device
 * to its own subtree. Device ids are restricted to characters that cannot
 * form MQTT wildcards or levels ([MQTT-4.7.1-1]: '+' and '#' are wildcards;
 * '/' separates levels), nor '$' which marks broker topics.
 */
export const TOPIC_ROOT = 'ward/v1';
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function isDeviceId(id: string): boolean {
  return DEVICE_ID_PATTERN.test(id);
}

export function assertDeviceId(id: string): string {
  if (!isDeviceId(id)) throw new TypeError(`invalid device id ${JSON.stringify(id)}: 1-64 of [A-Za-z0-9._-], starting alphanumeric`);
  return id;
}

export const topics = {
  state: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/state`,
  cmd: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/cmd`,
  /** Replies go back under the *device's* tree (its ACL allows nothing else), tagged with the asking replica. */
  reply: (deviceId: string, replicaId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/reply/${assertDeviceId(replicaId)}`,
  /** Audit batches, agent → controller (QoS 1). */
  audit: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/audit`,
  /** Signed receipts, controller → agent (QoS 1). */
  auditReceipt: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/audit/receipt`,
  /** The signed segmentation policy, controller → agent, retained (QoS 1). */
  policy: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/policy`,
  /** Agent → controller: its measurements changed; challenge me now (signed, QoS 1). */
  attestNotify: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/attest/notify`,
} as const;

/**
 * Enrollment topics are keyed by the code, not the device: a token account's
 * ACL is fixed when the code is printed, before any device id exists. `_enroll`
 * can never be a device id (ids start alphanumeric).
 */
export const ENROLL_ROOT = `${TOPIC_ROOT}/_enroll`;
export const CODE_ID_PATTERN = /^[0-9a-f]{16}$/;
export const enrollTopics = {
  request: (codeId: string) => `${ENROLL_ROOT}/${assertCodeId(codeId)}/req`,
  response: (codeId: string) => `${ENROLL_ROOT}/${assertCodeId(codeId)}/res`,
  /** Renewal runs under the device's own tree with its enrolled identity. */
  renewRequest: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/renew/req`,
  renewResponse: (deviceId: string) => `${TOPIC_ROOT}/${assertDeviceId(deviceId)}/renew/res`,
} as const;

/** Where a confirmed claim's bundle waits (retained) for its gateway. */
export const CLAIM_ROOT = `${TOPIC_ROOT}/_claim`;
export const claimTopic = (claimId: string) => `${CLAIM_ROOT}/${assertCodeId(claimId)}/bundle`;

function assertCodeId(codeId: string): string {
  if (!CODE_ID_PATTERN.test(codeId)) throw new TypeError(`invalid enrollment code id ${JSON.stringify(codeId)}`);
  return codeId;
}

/** `ward/v1/_enroll/<codeId>/req` → codeId; undefined for anything else. */
export function parseEnrollTopic(topic: string): string | undefined {
  const m = /^ward\/v1\/_enroll\/([0-9a-f]{16})\/req$/.exec(topic);
  return m?.[1];
}

/** Subscription filters the controller uses (single-level wildcard for the device id). */
export const filters = {
  allStates: `${TOPIC_ROOT}/+/state`,
  enrollRequests: `${ENROLL_ROOT}/+/req`,
  renewRequests: `${TOPIC_ROOT}/+/renew/req`,
  allAudit: `${TOPIC_ROOT}/+/audit`,
  allAttestNotify: `${TOPIC_ROOT}/+/attest/notify`,
  repliesFor: (replicaId: string) => `${TOPIC_ROOT}/+/reply/${assertDeviceId(replicaId)}`,
} as const;

/** Shared subscription per MQTT 5 §4.8.2 (Mosquitto also honours it for 3.1.1 clients). */
export function sharedFilter(group: string, filter: string): string {
  return `$share/${group}/${filter}`;
}

export interface ParsedTopic {
  readonly deviceId: string;
  readonly suffix: string;
}

/** Splits `ward/v1/<id>/<suffix…>`; undefined for anything else, including a malformed id. */
export function parseDeviceTopic(topic: string): ParsedTopic | undefined {
  const prefix = `${TOPIC_ROOT}/`;
  if (!topic.startsWith(prefix)) return undefined;
  const rest = topic.slice(prefix.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined;
  const deviceId = rest.slice(0, slash);
  const suffix = rest.slice(slash + 1);
  if (!isDeviceId(deviceId) || suffix.length === 0) return undefined;
  return { deviceId, suffix };
}

/** The username prefix of enrollment token accounts ('-', not ':', which Mosquitto's password file cannot hold; '_' keeps it outside the device-id space). */
export const ENROLL_USER_PREFIX = '_enroll-';

export function enrollUsername(codeId: string): string {
  if (!CODE_ID_PATTERN.test(codeId)) throw new TypeError(`invalid enrollment code id ${JSON.stringify(codeId)}`);
  return `${ENROLL_USER_PREFIX}${codeId}`;
}

/** The username prefix of claim accounts (a claimed gateway fetching its bundle). */
export const CLAIM_USER_PREFIX = '_claim-';

export function claimUsername(claimId: string): string {
  if (!CODE_ID_PATTERN.test(claimId)) throw new TypeError(`invalid claim id ${JSON.stringify(claimId)}`);
  return `${CLAIM_USER_PREFIX}${claimId}`;
}

export function parseClaimUsername(username: string | undefined): string | undefined {
  if (username === undefined || !username.startsWith(CLAIM_USER_PREFIX)) return undefined;
  const claimId = username.slice(CLAIM_USER_PREFIX.length);
  return CODE_ID_PATTERN.test(claimId) ? claimId : undefined;
}

export function parseEnrollUsername(username: string | undefined): string | undefined {
  if (username === undefined || !username.startsWith(ENROLL_USER_PREFIX)) return undefined;
  const codeId = username.slice(ENROLL_USER_PREFIX.length);
  return CODE_ID_PATTERN.test(codeId) ? codeId : undefined;
}
