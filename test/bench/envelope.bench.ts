import { createHash, sign, verify } from 'node:crypto';
import nacl from 'tweetnacl';
import { canonicalBytes } from '../../agent/shared/canonical.js';
import { type EnvelopePayload, EnvelopeVerifier, encodeEnvelope, seal, signPayload } from '../../agent/shared/envelope.js';
import { signingKeyFromSeed } from '../../agent/shared/keys.js';
import { STATE_TYPE } from '../../agent/shared/messages.js';
import type { BenchResult, Figure } from './lib.js';
import { rate, round } from './lib.js';

/**
 * Envelope signing throughput: tweetnacl vs Node's ed25519 (OpenSSL) as the
 * project uses it, on the same seed and the same messages (realistic state
 * payloads), plus the full seal() + EnvelopeVerifier.verify() round trip
 * (canonical JSON, JSON encode/parse, shape and claim checks) to show what
 * the envelope layer costs on top of raw ed25519.
 */
const BUDGET_MS = 1500;
const DEVICE_ID = 'gw-hall3-line07-press';
const MESSAGES = 16;

function stateBody() {
  return {
    typ: STATE_TYPE,
    sub: DEVICE_ID,
    online: true,
    session: 'q1Zk3n8VfJxW0bLr9TmPcA',
    lifecycle: 'active',
    agentVersion: '0.1.0',
    protocol: '3.1.1',
    plugins: ['sim', 'opcua-client', 'modbus-tcp', 'sparkplug-b'],
    startedAt: 1_790_000_000,
  };
}

function statePayload(version: number): EnvelopePayload {
  const iat = 1_790_000_100 + version;
  return { ...stateBody(), iat, exp: iat + 7 * 24 * 3600, version };
}

export default async function envelopeBench(): Promise<BenchResult> {
  const seed = createHash('sha256').update('ward-bench-seed').digest();
  const key = signingKeyFromSeed(seed);
  const naclPair = nacl.sign.keyPair.fromSeed(seed);
  const messages = Array.from({ length: MESSAGES }, (_, i) => canonicalBytes(statePayload(i + 1)));
  const msgAt = (i: number) => messages[i % MESSAGES] as Buffer;

  // Same key, same signatures? (ed25519 is deterministic, RFC 8032.)
  const samePublicKey = Buffer.from(naclPair.publicKey).toString('base64url') === key.publicRaw;
  const nodeSigs = messages.map((m) => sign(null, m, key.privateKey));
  const naclSigs = messages.map((m) => nacl.sign.detached(m, naclPair.secretKey));
  const identical = nodeSigs.every((s, i) => s.equals(naclSigs[i] as Uint8Array));
  const viaProject = messages.every((_, i) => signPayload(key, statePayload(i + 1)).sig === Buffer.from(naclSigs[i] as Uint8Array).toString('base64url'));
  const crossVerifies =
    messages.every((m, i) => nacl.sign.detached.verify(m, nodeSigs[i] as Uint8Array, naclPair.publicKey)) &&
    messages.every((m, i) => verify(null, m, key.publicKey, naclSigs[i] as Uint8Array));

  // Raw ed25519 over pre-computed canonical bytes. Results are consumed so nothing is optimised away.
  let sink = 0;
  const naclSign = rate(
    (i) => {
      sink ^= nacl.sign.detached(msgAt(i), naclPair.secretKey)[0] as number;
    },
    { budgetMs: BUDGET_MS, warmupMs: 1000 },
  );
  const naclVerify = rate(
    (i) => {
      if (!nacl.sign.detached.verify(msgAt(i), naclSigs[i % MESSAGES] as Uint8Array, naclPair.publicKey)) throw new Error('tweetnacl verify failed');
    },
    { budgetMs: BUDGET_MS, warmupMs: 1000 },
  );
  const nodeSign = rate(
    (i) => {
      sink ^= sign(null, msgAt(i), key.privateKey)[0] as number;
    },
    { budgetMs: BUDGET_MS },
  );
  const nodeVerify = rate(
    (i) => {
      if (!verify(null, msgAt(i), key.publicKey, nodeSigs[i % MESSAGES] as Buffer)) throw new Error('node verify failed');
    },
    { budgetMs: BUDGET_MS },
  );

  // The project's signing path: canonical JSON + sign, from a payload object.
  const payloads = Array.from({ length: MESSAGES }, (_, i) => statePayload(i + 1));
  const projectSign = rate(
    (i) => {
      sink ^= signPayload(key, payloads[i % MESSAGES] as EnvelopePayload).sig.length;
    },
    { budgetMs: BUDGET_MS },
  );

  // Full round trip: seal (stamp + canonical + sign) → encode JSON → verify (size, parse, shape, key, canonical, signature, claims, version).
  const verifier = new EnvelopeVerifier({
    keys: (kid) => (kid === key.kid ? { publicKey: key.publicKey, principal: DEVICE_ID } : undefined),
  });
  const expect = { typ: STATE_TYPE, principal: DEVICE_ID, subject: DEVICE_ID };
  let version = 0;
  let envelopeBytes = 0;
  const roundTrip = rate(
    () => {
      const raw = encodeEnvelope(seal(key, stateBody(), { ttlSeconds: 7 * 24 * 3600, version: ++version }));
      envelopeBytes = raw.length;
      verifier.verify(raw, expect);
    },
    { budgetMs: BUDGET_MS },
  );
  if (sink === 0.5) process.stderr.write('unreachable\n');

  const usRaw = 1e6 / nodeSign.perSecond + 1e6 / nodeVerify.perSecond;
  const usRoundTrip = 1e6 / roundTrip.perSecond;
  const f = (key: string, label: string, value: number | string | boolean, unit?: string): Figure =>
    unit === undefined ? { key, label, value } : { key, label, value, unit };
  return {
    figures: [
      f('message_bytes', 'state payload (canonical JSON)', messages[0]?.length ?? 0, 'bytes'),
      f('envelope_bytes', 'sealed envelope (JSON)', envelopeBytes, 'bytes'),
      f('tweetnacl.sign_per_s', 'tweetnacl sign', round(naclSign.perSecond), 'ops/s'),
      f('tweetnacl.verify_per_s', 'tweetnacl verify', round(naclVerify.perSecond), 'ops/s'),
      f('node.sign_per_s', 'node:crypto sign', round(nodeSign.perSecond), 'ops/s'),
      f('node.verify_per_s', 'node:crypto verify', round(nodeVerify.perSecond), 'ops/s'),
      f('ratio.sign', 'sign ratio node/tweetnacl', round(nodeSign.perSecond / naclSign.perSecond), '×'),
      f('ratio.verify', 'verify ratio node/tweetnacl', round(nodeVerify.perSecond / naclVerify.perSecond), '×'),
      f('same_public_key', 'same public key from seed', samePublicKey),
      f('identical_signatures', `byte-identical signatures (${MESSAGES} msgs)`, identical && viaProject),
      f('cross_verify', 'each verifies the other', crossVerifies),
      f('project.sign_payload_per_s', 'signPayload (canonical + sign)', round(projectSign.perSecond), 'ops/s'),
      f('project.round_trip_per_s', 'seal + encode + verify round trip', round(roundTrip.perSecond), 'ops/s'),
      f('project.round_trip_us', 'round trip, per message', round(usRoundTrip), 'µs'),
      f('project.raw_sign_verify_us', 'raw node sign + verify, per message', round(usRaw), 'µs'),
      f('project.overhead_pct', 'envelope overhead over raw ed25519', round(((usRoundTrip - usRaw) / usRaw) * 100), '%'),
    ],
    notes: [
      `rates are the best of 5 rounds (${BUDGET_MS} ms in all per measurement) after an untimed warm-up (1 s tweetnacl, 250 ms node); iterations: tweetnacl ${naclSign.iterations}/${naclVerify.iterations}, node ${nodeSign.iterations}/${nodeVerify.iterations}, round trip ${roundTrip.iterations}`,
      'raw figures sign pre-computed canonical bytes; node keys come from signingKeyFromSeed (same seed as tweetnacl)',
    ],
  };
}
