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
