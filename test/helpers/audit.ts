import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { exportJsonl, verifyExport } from '../../agent/audit/export.js';
import { AuditJournal, type JournalOptions } from '../../agent/audit/journal.js';
import type { AuditEventInput } from '../../agent/core/audit.js';
import { systemClock } from '../../agent/core/clock.js';
import { RECEIPT_TYPE, type SignedReceipt } from '../../agent/shared/audit/event.js';
import { seal } from '../../agent/shared/envelope.js';
import { generateSigningKey, type SigningKey } from '../../agent/shared/keys.js';
import { tempDir } from './tmp.js';

export const silentLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

export function sampleEvent(i: number, extra: Partial<AuditEventInput> = {}): AuditEventInput {
  return { category: 'access-control', actor: 'scada-1', action: 'modbus.write', target: 'plc-1', outcome: 'success', details: { i }, ...extra };
}

export async function openTestJournal(
  t: ExecutionContext,
  options: Partial<JournalOptions> & { dir?: string } = {},
): Promise<{ journal: AuditJournal; dir: string; key: SigningKey; reopen: (more?: Partial<JournalOptions>) => Promise<AuditJournal> }> {
  const dir = options.dir ?? join(await tempDir(t, 'ward-journal-'), 'audit');
  const key = options.key ?? generateSigningKey();
  const base: JournalOptions = { dir, key, clock: systemClock, log: silentLog, bootId: 'test-boot', ...options };
  const opened: AuditJournal[] = [];
  const open = async (more: Partial<JournalOptions> = {}) => {
    const j = await AuditJournal.open({ ...base, ...more });
    opened.push(j);
    return j;
  };
  t.teardown(async () => {
    for (const j of opened) await j.close().catch(() => undefined);
  });
  return { journal: await open(), dir, key, reopen: open };
}

/** A controller-signed receipt for the journal's sealed head (or a given seq/head), as the controller would send. */
export function receiptFor(controllerKey: SigningKey, deviceId: string, fields: { chain: string; seq: number; head: string }): SignedReceipt {
  return seal(controllerKey, { typ: RECEIPT_TYPE, sub: deviceId, ...fields }, { ttlSeconds: 3600 }) as unknown as SignedReceipt;
}

/** Runs a journal's own export through the verifier, as `ward audit verify` would. */
export async function verifyJournal(journal: AuditJournal, key: SigningKey, controllerKey?: SigningKey) {
  const lines: string[] = [];
  for await (const line of exportJsonl(journal, {
    publicKey: key.publicRaw,
    now: Date.now(),
    ...(controllerKey ? { controllerPublicKey: controllerKey.publicRaw } : {}),
  })) {
    lines.push(line);
  }
  return (await verifyExport(lines, { devicePublicKey: key.publicRaw, ...(controllerKey ? { controllerPublicKey: controllerKey.publicRaw } : {}) })).verdict;
}
