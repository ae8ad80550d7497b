import { createHash, createPublicKey, verify } from 'node:crypto';

/**
 * TPM 2.0 quote verification in Node (TCG TPM 2.0 Library Part 2: TPMS_ATTEST
 * §10.12.12, TPMS_QUOTE_INFO §10.12.1, TPMT_SIGNATURE §11.3.4). Pure: the
 * verifier needs no TPM and no tpm2-tools. Never throws on input: every
 * problem comes back as a reason.
 */
const TPM_GENERATED_VALUE = 0xff544347;
const TPM_ST_ATTEST_QUOTE = 0x8018;
const TPM_ALG_SHA256 = 0x000b;
const TPM_ALG_RSASSA = 0x0014;
const TPM_ALG_RSAPSS = 0x0016;
const TPM_ALG_ECDSA = 0x0018;

export interface ParsedQuote {
  readonly qualifiedSigner: Buffer;
  readonly extraData: Buffer;
  readonly clock: bigint;
  readonly resetCount: number;
  readonly restartCount: number;
  readonly firmwareVersion: bigint;
  /** Selected PCR indexes of the sha256 bank, ascending (the order their values enter pcrDigest). */
  readonly pcrs: readonly number[];
  readonly pcrDigest: Buffer;
}

class Reader {
  at = 0;
  constructor(readonly buf: Buffer) {}
  need(n: number): void {
    if (this.at + n > this.buf.length) throw new RangeError(`truncated at byte ${this.at} (needed ${n} more)`);
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.at++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
  sized(): Buffer {
    return this.bytes(this.u16());
  }
}

export function parseQuote(attest: Buffer): ParsedQuote | string {
  try {
    const r = new Reader(attest);
    if (r.u32() !== TPM_GENERATED_VALUE) return 'not TPM-generated (magic is not TPM_GENERATED_VALUE)';
    const type = r.u16();
    if (type !== TPM_ST_ATTEST_QUOTE) return `attestation type 0x${type.toString(16)} is not a quote`;
    const qualifiedSigner = r.sized();
    const extraData = r.sized();
    const clock = r.u64();
    const resetCount = r.u32();
    const restartCount = r.u32();
    r.u8(); // safe
    const firmwareVersion = r.u64();
    const banks = r.u32();
    if (banks > 16) return `implausible PCR selection count ${banks}`;
    const pcrs: number[] = [];
    for (let b = 0; b < banks; b++) {
      const hash = r.u16();
      const select = r.bytes(r.u8());
      if (hash !== TPM_ALG_SHA256) {
        if (select.some((x) => x !== 0)) return `PCRs of hash algorithm 0x${hash.toString(16)} are quoted; only sha256 is verified`;
        continue;
      }
      for (let i = 0; i < select.length * 8; i++) if (((select[i >> 3] as number) >> (i & 7)) & 1) pcrs.push(i);
    }
    const pcrDigest = r.sized();
    if (r.at !== attest.length) return `${attest.length - r.at} bytes after the quote`;
    return { qualifiedSigner, extraData, clock, resetCount, restartCount, firmwareVersion, pcrs, pcrDigest };
  } catch (err) {
    return `malformed TPMS_ATTEST: ${(err as Error).message}`;
  }
}

/** Verifies a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA, sha256) over `attest` with the attestation key. */
export function verifyQuoteSignature(attest: Buffer, signature: Buffer, akPublicPem: string): true | string {
  try {
    const key = createPublicKey(akPublicPem);
    const r = new Reader(signature);
    const alg = r.u16();
    const hash = r.u16();
    if (hash !== TPM_ALG_SHA256) return `signature hash 0x${hash.toString(16)} is not sha256`;
    let ok: boolean;
    if (alg === TPM_ALG_ECDSA) {
      const rr = r.sized();
      const ss = r.sized();
      const size = Math.max(rr.length, ss.length, 32);
      const raw = Buffer.concat([Buffer.alloc(size - rr.length), rr, Buffer.alloc(size - ss.length), ss]);
      ok = verify('sha256', attest, { key, dsaEncoding: 'ieee-p1363' }, raw);
    } else if (alg === TPM_ALG_RSASSA || alg === TPM_ALG_RSAPSS) {
      const sig = r.sized();
      ok = verify('sha256', attest, alg === TPM_ALG_RSAPSS ? { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 32 } : key, sig);
    } else return `signature algorithm 0x${alg.toString(16)} is not supported`;
    if (r.at !== signature.length) return 'bytes after the signature';
    return ok ? true : 'the quote signature does not verify with the registered attestation key';
  } catch (err) {
    return `malformed signature or key: ${(err as Error).message}`;
  }
}

/** sha256 over the selected PCR values in selection order: what a quote's pcrDigest must be. */
export function pcrDigestOf(pcrs: readonly number[], values: Readonly<Record<string, string>>): Buffer | string {
  const h = createHash('sha256');
  for (const i of pcrs) {
    const v = values[String(i)];
    if (v === undefined) return `PCR ${i} is quoted but its value is not in the evidence`;
    h.update(Buffer.from(v, 'hex'));
  }
  return h.digest();
}

/** The TPM name of a public key blob is alg || H(TPMT_PUBLIC); the name of a sha256 name starts 0x000b. */
export function isSha256Name(name: Buffer): boolean {
  return name.length === 34 && name.readUInt16BE(0) === TPM_ALG_SHA256;
}

const TPMA_FIXED_TPM = 0x2;
const TPMA_FIXED_PARENT = 0x10;
const TPMA_SENSITIVE_DATA_ORIGIN = 0x20;
const TPMA_RESTRICTED = 0x10000;
const TPMA_DECRYPT = 0x20000;
const TPMA_SIGN = 0x40000;
const TPM_ALG_ECC = 0x0023;
const TPM_ALG_NULL = 0x0010;
const CURVES: Readonly<Record<number, [string, number]>> = { 3: ['P-256', 32], 4: ['P-384', 48] };

/**
 * The attestation key as the TPM describes it (TPM2B_PUBLIC, Part 2 §12.2.5): its public key, and its name
 * (nameAlg || H(TPMT_PUBLIC)), which is what credential activation proves is in the EK's TPM. The verifier
 * derives both from these bytes, never from a PEM the gateway could pair with any name, and requires a
 * restricted, fixedTPM, fixedParent signing key created inside the TPM.
 */
export function parseAkPublic(tpm2bPublic: Buffer): { publicPem: string; name: string } | string {
  try {
    const outer = new Reader(tpm2bPublic);
    const area = outer.sized();
    if (outer.at !== tpm2bPublic.length) return 'bytes after the TPM2B_PUBLIC';
    const r = new Reader(area);
    const type = r.u16();
    const nameAlg = r.u16();
    const attributes = r.u32();
    r.sized(); // authPolicy
    if (nameAlg !== TPM_ALG_SHA256) return `the attestation key's name algorithm 0x${nameAlg.toString(16)} is not sha256`;
    const need = TPMA_FIXED_TPM | TPMA_FIXED_PARENT | TPMA_SENSITIVE_DATA_ORIGIN | TPMA_RESTRICTED | TPMA_SIGN;
    if ((attributes & need) !== need || attributes & TPMA_DECRYPT) {
      return `attributes 0x${attributes.toString(16)} are not those of an attestation key (restricted fixedTPM signing key made in the TPM)`;
    }
    if (type !== TPM_ALG_ECC) return `attestation key type 0x${type.toString(16)} is not supported (ECC P-256 or P-384)`;
    if (r.u16() !== TPM_ALG_NULL) return 'a signing key has no symmetric algorithm';
    const scheme = r.u16();
    if (scheme !== TPM_ALG_NULL) r.u16();
    const curve = CURVES[r.u16()];
    if (!curve) return 'unsupported curve';
    if (r.u16() !== TPM_ALG_NULL) r.u16(); // kdf
    const pad = (b: Buffer) => Buffer.concat([Buffer.alloc(Math.max(0, curve[1] - b.length)), b]);
    const x = pad(r.sized());
    const y = pad(r.sized());
    if (r.at !== area.length) return 'bytes after the public area';
    const key = createPublicKey({ format: 'jwk', key: { kty: 'EC', crv: curve[0], x: x.toString('base64url'), y: y.toString('base64url') } });
    const name = Buffer.concat([Buffer.from([0x00, 0x0b]), createHash('sha256').update(area).digest()]).toString('hex');
    return { publicPem: key.export({ type: 'spki', format: 'pem' }).toString(), name };
  } catch (err) {
    return `malformed TPM2B_PUBLIC: ${(err as Error).message}`;
  }
}
