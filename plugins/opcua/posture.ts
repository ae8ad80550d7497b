/**
 * The security posture of an OPC UA server, judged from what it advertises (GetEndpoints, OPC 10000-4 §5.4.4):
 * pure functions from endpoint descriptions to findings, so the rules are tested without a server. Also the
 * certificate helpers the connection uses to pin a server certificate. No node-opcua import here: the connection
 * translates node-opcua's EndpointDescription into EndpointInfo (client.ts).
 */
import { X509Certificate } from 'node:crypto';

export type SecurityModeName = 'Invalid' | 'None' | 'Sign' | 'SignAndEncrypt';
export type UserTokenTypeName = 'Anonymous' | 'UserName' | 'Certificate' | 'IssuedToken';

export interface UserTokenInfo {
  readonly type: UserTokenTypeName;
  /** The token's own security policy (short name); undefined/empty means the endpoint's (OPC 10000-4 §7.41). */
  readonly securityPolicy?: string;
}

export interface EndpointInfo {
  readonly endpointUrl: string;
  readonly securityMode: SecurityModeName;
  /** Short policy name: the part of the policy URI after '#', e.g. "Basic256Sha256" or "None". */
  readonly securityPolicy: string;
  readonly userTokens: readonly UserTokenInfo[];
  /** DER, the leaf certificate possibly followed by its issuers (OPC 10000-6 §6.2.6). */
  readonly serverCertificate?: Uint8Array;
}

export type Severity = 'high' | 'medium' | 'low' | 'info';

export type FindingId =
  | 'security-none'
  | 'sign-only'
  | 'deprecated-policy'
  | 'anonymous-token'
  | 'cleartext-password'
  | 'certificate-expired'
  | 'certificate-expiring'
  | 'certificate-not-yet-valid'
  | 'certificate-self-signed'
  | 'certificate-weak-key'
  | 'certificate-unreadable';

export interface Finding {
  readonly id: FindingId;
  readonly severity: Severity;
  /** What the finding is about: "None/None" (an endpoint's mode/policy) or "certificate <sha256>". */
  readonly subject: string;
  readonly detail: string;
}

/** Policies the OPC Foundation deprecated (SHA-1 signatures, RSA PKCS#1 v1.5 padding). */
export const DEPRECATED_POLICIES: ReadonlySet<string> = new Set(['Basic128Rsa15', 'Basic256']);

const DAY_MS = 86_400_000;
export const EXPIRY_WARNING_DAYS = 30;

const SEVERITY_ORDER: Record<Severity, number> = { high: 0, medium: 1, low: 2, info: 3 };

/** The short name of a security policy URI ("http://opcfoundation.org/UA/SecurityPolicy#None" → "None"). */
export function policyName(uri: string | null | undefined): string {
  if (!uri) return '';
  const hash = uri.lastIndexOf('#');
  return hash >= 0 ? uri.slice(hash + 1) : uri;
}

/**
 * Whether a UserName token's password would cross the network readable: the token's effective policy (its own, or
 * the endpoint's when empty) is None, and the channel does not encrypt either.
 */
export function passwordInClear(endpoint: EndpointInfo, token: UserTokenInfo): boolean {
  const effective = token.securityPolicy ? token.securityPolicy : endpoint.securityPolicy;
  return effective === 'None' && endpoint.securityMode !== 'SignAndEncrypt';
}

/** Splits a DER blob holding one or more concatenated certificates (each an ASN.1 SEQUENCE). */
export function splitDerChain(der: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < der.length) {
    if (der[at] !== 0x30 || at + 2 > der.length) throw new RangeError(`not a DER certificate sequence at byte ${at}`);
    const first = der[at + 1] as number;
    let length: number;
    let header: number;
    if (first < 0x80) {
      length = first;
      header = 2;
    } else {
      const bytes = first & 0x7f;
      if (bytes === 0 || bytes > 4 || at + 2 + bytes > der.length) throw new RangeError(`unsupported DER length at byte ${at}`);
      length = 0;
      for (let i = 0; i < bytes; i++) length = length * 256 + (der[at + 2 + i] as number);
      header = 2 + bytes;
    }
    const end = at + header + length;
    if (end > der.length) throw new RangeError(`DER certificate at byte ${at} runs past the end (${end} > ${der.length})`);
    out.push(der.subarray(at, end));
    at = end;
  }
  return out;
}

/** Lower-case hex SHA-256 fingerprint of the leaf certificate of a DER chain. Throws if it does not parse. */
export function certificateSha256(der: Uint8Array): string {
  const leaf = splitDerChain(der)[0];
  if (!leaf) throw new RangeError('empty certificate');
  return new X509Certificate(leaf).fingerprint256.replaceAll(':', '').toLowerCase();
}

/** "aa:bb:…" for people; config accepts either form. */
export function formatFingerprint(hex: string): string {
  return hex.match(/../g)?.join(':') ?? hex;
}

/** The endpoint the client would use for this mode and policy, if the server offers one. */
export function selectEndpoint(endpoints: readonly EndpointInfo[], mode: SecurityModeName, policy: string): EndpointInfo | undefined {
  return endpoints.find((e) => e.securityMode === mode && e.securityPolicy === policy);
}

function certificateFindings(der: Uint8Array, now: number): Finding[] {
  let leaf: X509Certificate;
  let fingerprint: string;
  try {
    const first = splitDerChain(der)[0];
    if (!first) throw new RangeError('empty certificate');
    leaf = new X509Certificate(first);
    fingerprint = leaf.fingerprint256.replaceAll(':', '').toLowerCase();
  } catch (err) {
    return [
      {
        id: 'certificate-unreadable',
        severity: 'medium',
        subject: 'certificate',
        detail: `the server's certificate does not parse (${err instanceof Error ? err.message : String(err)}): clients cannot validate it`,
      },
    ];
  }
  const subject = `certificate ${fingerprint}`;
  const out: Finding[] = [];
  const notAfter = Date.parse(leaf.validTo);
  const notBefore = Date.parse(leaf.validFrom);
  if (Number.isFinite(notAfter) && notAfter <= now) {
    out.push({ id: 'certificate-expired', severity: 'high', subject, detail: `the server certificate expired on ${new Date(notAfter).toISOString()}` });
  } else if (Number.isFinite(notAfter) && notAfter - now <= EXPIRY_WARNING_DAYS * DAY_MS) {
    const days = Math.ceil((notAfter - now) / DAY_MS);
    out.push({
      id: 'certificate-expiring',
      severity: 'low',
      subject,
      detail: `the server certificate expires on ${new Date(notAfter).toISOString()} (in ${days} day${days === 1 ? '' : 's'})`,
    });
  }
  if (Number.isFinite(notBefore) && notBefore > now) {
    out.push({
      id: 'certificate-not-yet-valid',
      severity: 'medium',
      subject,
      detail: `the server certificate is valid only from ${new Date(notBefore).toISOString()}: check the server's clock`,
    });
  }
  let key: { type: string | undefined; bits: number | undefined } | undefined;
  try {
    // An unknown key algorithm parses as a certificate but throws here: that must not stop the assessment.
    key = { type: leaf.publicKey.asymmetricKeyType, bits: leaf.publicKey.asymmetricKeyDetails?.modulusLength };
  } catch {
    out.push({ id: 'certificate-unreadable', severity: 'medium', subject, detail: 'the server certificate has a public key this agent cannot read' });
  }
  if (key?.type === 'rsa' && key.bits !== undefined && key.bits < 2048) {
    out.push({ id: 'certificate-weak-key', severity: 'medium', subject, detail: `the server certificate has a ${key.bits}-bit RSA key (2048 is the minimum)` });
  }
  let selfSigned = false;
  try {
    selfSigned = leaf.subject === leaf.issuer && leaf.checkIssued(leaf) && leaf.verify(leaf.publicKey);
  } catch {
    selfSigned = false;
  }
  if (selfSigned) {
    out.push({
      id: 'certificate-self-signed',
      severity: 'info',
      subject,
      detail: `the server certificate is self-signed (SHA-256 ${formatFingerprint(fingerprint)}): trust it by fingerprint, not through a CA`,
    });
  }
  return out;
}

/**
 * Findings about a server from its endpoints, at time `now` (ms since the epoch). One finding per (id, subject):
 * an endpoint is named by mode/policy, since servers repeat each one for every host name they answer to. Sorted
 * by severity, then id and subject, so the same endpoints always give the same list.
 */
export function assessEndpoints(endpoints: readonly EndpointInfo[], now: number): Finding[] {
  const found = new Map<string, Finding>();
  const add = (f: Finding) => {
    const key = findingKey(f);
    if (!found.has(key)) found.set(key, f);
  };
  const certificates = new Map<string, Uint8Array>();
  for (const e of endpoints) {
    if (e.securityMode === 'Invalid') continue;
    const label = `${e.securityMode}/${e.securityPolicy || '?'}`;
    if (e.securityMode === 'None' || e.securityPolicy === 'None') {
      add({
        id: 'security-none',
        severity: 'high',
        subject: label,
        detail: `endpoint ${e.endpointUrl} offers security mode ${e.securityMode} with policy ${e.securityPolicy}: traffic is neither signed nor encrypted`,
      });
    } else if (e.securityMode === 'Sign') {
      add({
        id: 'sign-only',
        severity: 'low',
        subject: label,
        detail: `endpoint ${e.endpointUrl} signs but does not encrypt: values and names can be read on the wire`,
      });
    }
    if (DEPRECATED_POLICIES.has(e.securityPolicy)) {
      add({
        id: 'deprecated-policy',
        severity: 'medium',
        subject: label,
        detail: `endpoint ${e.endpointUrl} offers the deprecated security policy ${e.securityPolicy} (SHA-1, RSA PKCS#1 v1.5)`,
      });
    }
    for (const t of e.userTokens) {
      if (t.type === 'Anonymous') {
        add({
          id: 'anonymous-token',
          severity: 'medium',
          subject: label,
          detail: `endpoint ${e.endpointUrl} accepts anonymous sessions: no user is authenticated`,
        });
      } else if (t.type === 'UserName' && passwordInClear(e, t)) {
        add({
          id: 'cleartext-password',
          severity: 'high',
          subject: label,
          detail: `endpoint ${e.endpointUrl} accepts user names with passwords that cross the network unencrypted`,
        });
      }
    }
    if (e.securityMode !== 'None' && e.serverCertificate && e.serverCertificate.length > 0) {
      certificates.set(Buffer.from(e.serverCertificate).toString('base64'), e.serverCertificate);
    }
  }
  for (const der of certificates.values()) for (const f of certificateFindings(der, now)) add(f);
  const sorted = [...found.values()].sort(
    (a, b) => SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity] || a.id.localeCompare(b.id) || a.subject.localeCompare(b.subject),
  );
  // The endpoint list comes from an unauthenticated server: bounded, so it cannot flood the audit journal.
  return sorted.slice(0, MAX_FINDINGS).map((f) => ({ ...f, subject: f.subject.slice(0, 120), detail: f.detail.slice(0, 300) }));
}

/** Findings per assessment at most; the most severe are kept. */
export const MAX_FINDINGS = 50;

export function findingKey(f: Pick<Finding, 'id' | 'subject'>): string {
  return `${f.id}\u0000${f.subject}`;
}

/** What changed between two assessments: new findings (or ones whose severity changed) and those gone. */
export function diffFindings(previous: readonly Finding[], current: readonly Finding[]): { added: Finding[]; resolved: Finding[] } {
  const before = new Map(previous.map((f) => [findingKey(f), f]));
  const after = new Map(current.map((f) => [findingKey(f), f]));
  const added = current.filter((f) => before.get(findingKey(f))?.severity !== f.severity);
  const resolved = previous.filter((f) => !after.has(findingKey(f)));
  return { added, resolved };
}
