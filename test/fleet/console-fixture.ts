/**
 * Builds fleet state directories for the console tests: a real device Ledger (signed by a real
 * device key), its records and leaf hashes inserted into fleet.db with the schema of
 * fleet/db.ts, the device checkpoint, and the fleet's cosignature over it, as ingest stores them.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CompactRange } from '../../fleet/compact-range.ts';
import { openFleetDb, type FleetDb } from '../../fleet/db.ts';
import { canonicalBytes } from '../../runtime/ledger/jcs.ts';
import { defaultEd25519, generateKeyFile, type DeviceKey } from '../../runtime/ledger/keys.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { cosign, formatCheckpoint, noteSigner, signNote, verifierKey, SIGNATURE_TYPE_COSIGNATURE_V1 } from '../../runtime/ledger/note.ts';

/** Lines written by the console, and a ConsoleIo that captures them. */
export function captureIo(o: { isTTY?: boolean; env?: Record<string, string | undefined>; signal?: AbortSignal } = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const raw: string[] = [];
  const errRaw: string[] = [];
  return {
    out,
    err,
    raw,
    errRaw,
    io: {
      out: (s: string) => void out.push(s),
      err: (s: string) => void err.push(s),
      raw: (s: string) => void raw.push(s),
      errRaw: (s: string) => void errRaw.push(s),
      isTTY: o.isTTY ?? false,
      outTTY: false,
      env: o.env ?? {},
      signal: o.signal,
    },
  };
}

/** A fleet witness key and its cosigner verifier key. */
export interface FleetKey {
  name: string;
  privateKey: Uint8Array;
  vkey: string;
}

/** A fleet state directory with an (empty) fleet.db and fleet.vkey. */
export function makeFleetState(dir: string, keyFile: string): { db: FleetDb; fleet: FleetKey } {
  mkdirSync(dir, { recursive: true });
  const k = generateKeyFile(keyFile, { name: 'keel-fleet' });
  const fleet = { name: 'keel-fleet', privateKey: k.privateKey, vkey: verifierKey('keel-fleet', k.publicKey, SIGNATURE_TYPE_COSIGNATURE_V1) };
  writeFileSync(path.join(dir, 'fleet.vkey'), `${fleet.vkey}\n`);
  return { db: openFleetDb(path.join(dir, 'fleet.db')), fleet };
}

/** Enrolls `id` with `vkey`. */
export function enroll(db: FleetDb, id: string, vkey: string, at = Date.now()): void {
  db.prepare('INSERT INTO devices(id, vkey, enrolled_at) VALUES (?, ?, ?)').run(id, vkey, at);
}

/**
 * Writes `count` event records into a real ledger at `ledgerDir` signed by `key`, then stores
 * them for device `id` in `db` (leaf hashes from the ledger's store) with the device checkpoint
 * and its cosignature. `hashOnly` indexes are stored without bytes (records dropped on the device).
 */
export async function ingestLedger(
  db: FleetDb,
  fleet: FleetKey,
  o: { id: string; key: DeviceKey; ledgerDir: string; count: number; hashOnly?: number[] },
): Promise<{ ledger: Ledger; vkey: string; checkpoint: string; cosigned: string }> {
  const ledger = await Ledger.open(o.ledgerDir, { key: o.key, durability: 'batch' });
  const batch = Array.from({ length: o.count }, (_, i) => ({ kind: 'event' as const, body: { event: 'test', i, note: `record ${i}` }, t: 1_700_000_000_000 + i }));
  for (let i = 0; i < batch.length; i += 5000) await ledger.appendBatch(batch.slice(i, i + 5000));
  const checkpoint = await ledger.signCheckpointAt(o.count);
  const cosigned = checkpoint + cosign(checkpoint.slice(0, checkpoint.indexOf('\n\n') + 1), fleet, 1_700_000_500);
  const skip = new Set(o.hashOnly ?? []);
  const range = new CompactRange();
  const insert = db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?, ?, ?, ?)');
  db.transaction(() => {
    for (let i = 0; i < o.count; i++) {
      const leaf = ledger.storedLeafHash(i);
      range.append(leaf);
      insert.run(o.id, i, leaf, skip.has(i) ? null : ledger.read(i));
    }
    db.prepare('INSERT INTO device_state(device, size, range, checkpoint, cosigned, updated_at) VALUES (?, ?, ?, ?, ?, ?)').run(o.id, o.count, range.toBytes(), checkpoint, cosigned, Date.now());
  })();
  return { ledger, vkey: ledger.vkey!, checkpoint, cosigned };
}

/**
 * Stores `count` synthetic records for `id` straight into `db` (no ledger on disk): canonical
 * event records, their leaves, a checkpoint signed by `key` under `origin`, cosigned by `fleet`.
 * For volume tests (a million records in seconds).
 */
export function storeSynthetic(db: FleetDb, fleet: FleetKey, o: { id: string; key: DeviceKey; origin: string; count: number }): { checkpoint: string } {
  const range = new CompactRange();
  const insert = db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?, ?, ?, ?)');
  const chunk = 50_000;
  for (let start = 0; start < o.count; start += chunk) {
    db.transaction(() => {
      for (let i = start; i < Math.min(o.count, start + chunk); i++) {
        const bytes = Buffer.from(canonicalBytes({ v: 1, seq: i, t: 1_700_000_000_000 + i, kind: 'event', event: 'load', i }));
        const leaf = leafHash(bytes);
        range.append(leaf);
        insert.run(o.id, i, leaf, bytes);
      }
    })();
  }
  const text = formatCheckpoint({ origin: o.origin, size: o.count, root: range.root() });
  const checkpoint = signNote(text, [noteSigner(o.origin, o.key.privateKey, defaultEd25519)]);
  const cosigned = checkpoint + cosign(text, fleet, 1_700_000_500);
  db.prepare('INSERT INTO device_state(device, size, range, checkpoint, cosigned, updated_at) VALUES (?, ?, ?, ?, ?, ?)').run(o.id, o.count, range.toBytes(), checkpoint, cosigned, Date.now());
  return { checkpoint };
}
