/**
 * The OPC UA plugin's config slice: validated once by the host, then frozen. Everything that can be checked
 * without a server is checked here (node id syntax, unique names, security mode and policy agreeing), so a typo
 * stops the agent at start with the field named instead of showing up as a bad sample at run time.
 */
import { z } from 'zod';

/**
 * The plugin's error and audit codes, restated from agent/core/errors.ts (a plugin does not import agent code;
 * the registry there lists them in its "opcua" area so they stay unique).
 */
export const OpcuaCodes = {
  NODE_INVALID: 'WARD_OPCUA_NODE_INVALID',
  UNTRUSTED_CERT: 'WARD_OPCUA_UNTRUSTED_CERT',
  POSTURE_FINDING: 'WARD_OPCUA_POSTURE_FINDING',
  NO_ENDPOINT: 'WARD_OPCUA_NO_ENDPOINT',
  CLEARTEXT_PASSWORD: 'WARD_OPCUA_CLEARTEXT_PASSWORD',
  CONNECT_FAILED: 'WARD_OPCUA_CONNECT_FAILED',
} as const;

/**
 * OPC 10000-6 §5.3.1.10 string form of a NodeId: optional `ns=<index>;`, then `i=` numeric, `s=` string, `g=` GUID
 * or `b=` opaque (base64). `nsu=` (namespace URI) forms are not accepted: the client resolves ns indexes only.
 */
const NODE_ID =
  /^(?:ns=\d{1,5};)?(?:i=\d{1,10}|s=[\s\S]{1,4096}|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/]+={0,2})$/;
const nodeId = z.string().regex(NODE_ID, 'must be an OPC UA node id such as "ns=1;s=Spindle.Speed" or "i=2258"');

/** Sparkplug metric names: '/'-separated folders of letters, digits, '_', '-', '.'. */
export const METRIC_NAME = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;
const metricName = z.string().max(200).regex(METRIC_NAME, "must be folders of [A-Za-z0-9_.-] separated by '/', e.g. Spindle/Speed");

const deadbandSchema = z
  .strictObject({
    /** absolute: in the value's units; percent: of the variable's EURange (the server refuses it without one). */
    type: z.enum(['absolute', 'percent']),
    value: z.number().finite().min(0),
  })
  .refine((d) => d.type !== 'percent' || d.value <= 100, { message: 'a percent deadband is at most 100', path: ['value'] });

const nodeSchema = z.strictObject({
  nodeId,
  name: metricName,
  /** How often the server samples the value; 0 asks for the fastest it supports. */
  samplingIntervalMs: z.number().int().min(0).max(3_600_000).default(1000),
  deadband: deadbandSchema.optional(),
  unit: z.string().min(1).max(32).optional(),
});

const browseSchema = z.strictObject({
  /** The folder (or object) whose Variables are discovered and subscribed. */
  from: nodeId,
  maxDepth: z.number().int().min(1).max(10).default(3),
  maxNodes: z.number().int().min(1).max(5_000).default(200),
  samplingIntervalMs: z.number().int().min(0).max(3_600_000).default(1000),
});

/** A SHA-256 certificate fingerprint, hex with or without ':' separators; normalised to lower-case hex. */
const sha256Fingerprint = z
  .string()
  .transform((s) => s.replaceAll(':', '').toLowerCase())
  .pipe(z.string().regex(/^[0-9a-f]{64}$/, 'must be a SHA-256 fingerprint: 64 hex digits, ":" separators allowed'));

const userIdentitySchema = z.union([
  z.literal('anonymous'),
  z.strictObject({
    username: z.string().min(1).max(256),
    /** A file holding the password (trailing newline ignored), so the password is never in the config. */
    passwordFile: z.string().min(1),
  }),
]);

// Deprecated policies (Basic128Rsa15, Basic256: SHA-1, PKCS#1 v1.5) are not offered: the posture check reports a
// server that still has them, and Ward does not speak them itself.
export const SECURITY_POLICIES = ['None', 'Basic256Sha256', 'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss'] as const;
export const SECURITY_MODES = ['None', 'Sign', 'SignAndEncrypt'] as const;

const serverSchema = z
  .strictObject({
    /** The machine's name: the Sparkplug device id of its samples. */
    name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 of [A-Za-z0-9_-]'),
    endpointUrl: z.string().regex(/^opc\.tcp:\/\/[^\s/:]+(?::\d{1,5})?(?:\/\S*)?$/, 'must be opc.tcp://host[:port][/path]'),
    securityMode: z.enum(SECURITY_MODES).default('SignAndEncrypt'),
    /** Default: None with securityMode None, else Basic256Sha256. */
    securityPolicy: z.enum(SECURITY_POLICIES).optional(),
    userIdentity: userIdentitySchema.default('anonymous'),
    /**
     * SHA-256 fingerprints of the server certificates this agent accepts when securityMode is not None. Empty
     * refuses every certificate: the first attempt fails, and the status and the audit event name the fingerprint
     * for an operator to check and add. Pinning the certificate itself is simpler than a CA store for machines
     * with self-signed certificates, and no certificate is ever trusted on first use.
     */
    trustedServerCertificates: z.array(sha256Fingerprint).max(16).default([]),
    nodes: z.array(nodeSchema).max(5_000).default([]),
    browse: browseSchema.optional(),
  })
  .superRefine((s, ctx) => {
    const policy = s.securityPolicy ?? (s.securityMode === 'None' ? 'None' : 'Basic256Sha256');
    if ((s.securityMode === 'None') !== (policy === 'None')) {
      ctx.addIssue({
        code: 'custom',
        path: ['securityPolicy'],
        message: `server "${s.name}": securityMode ${s.securityMode} cannot go with securityPolicy ${policy} (None goes only with None)`,
      });
    }
    if (s.nodes.length === 0 && !s.browse) {
      ctx.addIssue({ code: 'custom', path: ['nodes'], message: `server "${s.name}": give at least one node, or browse` });
    }
    // Only an encrypted channel to a pinned certificate protects a password: over None, node-opcua encrypts it with
    // whatever certificate the (unauthenticated) server hands back, or sends it in clear; over Sign the check of
    // the token policy would read an unauthenticated endpoint list.
    if (s.userIdentity !== 'anonymous' && s.securityMode !== 'SignAndEncrypt') {
      ctx.addIssue({
        code: 'custom',
        path: ['userIdentity'],
        message: `server "${s.name}": a user name and password need securityMode SignAndEncrypt (with the server certificate pinned)`,
      });
    }
    const seen = new Set<string>();
    s.nodes.forEach((n, i) => {
      // Samples are keyed by point name, so two nodes with one name would overwrite each other downstream.
      if (seen.has(n.name)) ctx.addIssue({ code: 'custom', path: ['nodes', i, 'name'], message: `point "${n.name}" appears twice in server "${s.name}"` });
      seen.add(n.name);
    });
  })
  .transform((s) => ({ ...s, securityPolicy: s.securityPolicy ?? (s.securityMode === 'None' ? ('None' as const) : ('Basic256Sha256' as const)) }));

export const configSchema = z
  .strictObject({
    servers: z.array(serverSchema).max(64).default([]),
    /** How often each subscription delivers what changed. */
    publishingIntervalMs: z.number().int().min(50).max(60_000).default(1000),
    /** Backoff between connection attempts (and node-opcua's own reconnection): doubles from initial to max. */
    reconnect: z
      .strictObject({
        initialDelayMs: z.number().int().min(50).max(60_000).default(1000),
        maxDelayMs: z.number().int().min(100).max(600_000).default(30_000),
      })
      .refine((r) => r.maxDelayMs >= r.initialDelayMs, { message: 'maxDelayMs must be at least initialDelayMs' })
      .default({ initialDelayMs: 1000, maxDelayMs: 30_000 }),
    /** Any one request (connect, browse, create session, ...) that takes longer fails. */
    requestTimeoutMs: z.number().int().min(200).max(120_000).default(10_000),
    /** Assess each server's endpoints (security modes, user tokens, certificate) at connect and every postureIntervalHours. */
    postureCheck: z.boolean().default(true),
    // At most 24 days: a timer of more than 2^31 ms fires at once in Node.
    postureIntervalHours: z
      .number()
      .positive()
      .max(24 * 24)
      .default(24),
    /** Where the client keeps its application certificate and key. Default: <plugin data dir>/pki. */
    pkiDir: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.servers.forEach((s, i) => {
      if (seen.has(s.name)) ctx.addIssue({ code: 'custom', path: ['servers', i, 'name'], message: `server "${s.name}" appears twice` });
      seen.add(s.name);
    });
  });

export type OpcuaConfig = z.output<typeof configSchema>;
export type ServerConfig = OpcuaConfig['servers'][number];
export type NodeConfig = ServerConfig['nodes'][number];
