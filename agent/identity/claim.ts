import { open } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { type Claim, claimIdOf, encodeClaim, newClaimCode } from '../shared/claim.js';
import type { SigningKey } from '../shared/keys.js';
import { claimTopic, claimUsername } from '../shared/topics.js';
import { readJsonFile, writeFileAtomic } from '../state/files.js';

/**
 * The gateway side of the claim flow. The claim code is created once per
 * device key and kept in the state folder (0600): the QR shown on the
 * gateway's screen or box label stays the same across reboots.
 */
export async function loadOrCreateClaim(stateDir: string, key: SigningKey, deviceId: string): Promise<Claim & { text: string }> {
  const file = join(stateDir, 'claim.json');
  const read = async () => {
    const stored = (await readJsonFile(file)) as { kid?: string; deviceId?: string; claimCode?: string } | undefined;
    return stored?.kid === key.kid && stored.deviceId === deviceId && typeof stored.claimCode === 'string' ? stored.claimCode : undefined;
  };
  let claimCode = await read();
  if (claimCode === undefined) {
    // The agent and `ward identity qr` may both get here first: exclusive creation makes one code win, and the
    // loser reads it, so the QR on the label and the account the agent logs in with never differ.
    const fresh = `${JSON.stringify({ kid: key.kid, deviceId, claimCode: newClaimCode() })}\n`;
    try {
      const handle = await open(file, 'wx', 0o600);
      try {
        await handle.writeFile(fresh);
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (err) {
      // EEXIST: another writer won; anything else (a stale claim of an old key): replace it atomically.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if ((await read()) === undefined) await writeFileAtomic(file, fresh, 0o600);
    }
    claimCode = await read();
    if (claimCode === undefined) throw new TypeError(`claim file ${file} could not be written`);
  }
  const claim = { deviceId, kid: key.kid, claimCode, claimId: claimIdOf(key.kid) };
  return { ...claim, text: encodeClaim(claim) };
}

/**
 * Looks once for the bundle an operator confirmed for this claim. The TLS
 * connection is not verified, on purpose: before enrollment the gateway knows
 * no CA, only the fleet root. Nothing here needs the channel's authenticity:
 * the bundle is verified against the root before use and must be bound (in
 * its signed body) to this gateway's key, so a bundle seen by someone in the
 * middle is useless to them, and a genuine label of another gateway swapped
 * in is refused (provision with `claimed`). Resolves undefined when there is
 * nothing yet (account not confirmed, or no retained bundle).
 */
export function fetchClaimedBundle(options: { broker: string; claim: Claim; timeoutMs: number }): Promise<string | undefined> {
  return new Promise((resolve) => {
    const client = mqtt.connect(`mqtts://${options.broker}`, {
      protocolVersion: 4,
      clientId: `ward-claim-${options.claim.claimId}`,
      username: claimUsername(options.claim.claimId),
      password: options.claim.claimCode,
      rejectUnauthorized: false,
      reconnectPeriod: 0,
      connectTimeout: options.timeoutMs,
    });
    let done = false;
    const finish = (text: string | undefined) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      client.end(true, () => resolve(text));
    };
    const timer = setTimeout(() => finish(undefined), options.timeoutMs);
    client.on('connect', () => {
      client.subscribe(claimTopic(options.claim.claimId), { qos: 1 }, (err) => {
        if (err) finish(undefined);
      });
    });
    client.on('message', (_topic, payload) => {
      if (payload.length > 0) finish(payload.toString('utf8'));
    });
    client.on('error', () => finish(undefined));
    client.on('close', () => finish(undefined));
  });
}
