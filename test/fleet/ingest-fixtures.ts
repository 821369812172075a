/**
 * Fixtures for the ingest tests and bench: real device ledgers (generated key, temp dir) that
 * make real batches, a fleet database with devices enrolled by plain SQL (the registry is
 * another module), and an in-process aedes broker on an ephemeral port.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Aedes } from 'aedes';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { generateKeyFile, type DeviceKey } from '../../runtime/ledger/keys.ts';
import { verifierKey } from '../../runtime/ledger/note.ts';
import { encodeBatch, type BatchEntry } from '../../runtime/sync/wire.ts';
import { openFleetDb, type FleetDb } from '../../fleet/db.ts';

/** A temp dir removed by `cleanup`. */
export function tempDir(tag: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `keel-${tag}-`));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A device: its key, its ledger and its verifier key. */
export interface TestDevice {
  id: string;
  key: DeviceKey & { name: string };
  ledger: Ledger;
  vkey: string;
}

/** Creates a device `id` with a fresh key (name = id) and a ledger under `dir`. */
export async function makeDevice(dir: string, id: string, o: { key?: DeviceKey & { name: string }; ledgerDir?: string } = {}): Promise<TestDevice> {
  const key = o.key ?? (generateKeyFile(path.join(dir, `${id}.key`), { name: id }) as DeviceKey & { name: string });
  const ledger = await Ledger.open(o.ledgerDir ?? path.join(dir, `${id}-ledger`), { key, durability: 'batch' });
  return { id, key, ledger, vkey: verifierKey(key.name, key.publicKey) };
}

/** Appends `n` event records of about `pad` bytes each. */
export async function appendRecords(dev: TestDevice, n: number, pad = 40): Promise<void> {
  const filler = 'x'.repeat(pad);
  const chunk = 5000;
  for (let i = 0; i < n; i += chunk) {
    const m = Math.min(chunk, n - i);
    await dev.ledger.appendBatch(Array.from({ length: m }, (_, j) => ({ kind: 'event' as const, body: { n: i + j, filler } })));
  }
}

/** The batch [start, end) of `dev`'s ledger, with a checkpoint of size end; `hashOnly` indexes go as hashes. */
export async function makeBatch(dev: TestDevice, start: number, end: number, o: { hashOnly?: Set<number>; device?: string } = {}): Promise<Buffer> {
  const checkpoint = await dev.ledger.signCheckpointAt(end);
  const entries: BatchEntry[] = [];
  for (let i = start; i < end; i++) {
    entries.push(o.hashOnly?.has(i) ? { kind: 'hash', hash: dev.ledger.storedLeafHash(i) } : { kind: 'record', bytes: dev.ledger.read(i) });
  }
  return encodeBatch({ header: { v: 1, device: o.device ?? dev.id, start, count: end - start, checkpoint }, entries });
}

/** Enrolls `dev` (or a raw id/vkey) in the fleet database by plain SQL. */
export function enroll(db: FleetDb, id: string, vkey: string, now = Date.now()): void {
  db.prepare('INSERT INTO devices(id, vkey, enrolled_at, revoked_at) VALUES (?,?,?,NULL)').run(id, vkey, now);
}

/** Opens a fleet database in `dir` with the ingest's short busy timeout. */
export function fleetDb(dir: string, busyTimeoutMs = 250): FleetDb {
  return openFleetDb(path.join(dir, 'fleet.db'), { busyTimeoutMs });
}

/** An aedes broker on 127.0.0.1:<ephemeral>. */
export async function startAedes(): Promise<{ url: string; port: number; broker: Aedes; close: () => Promise<void> }> {
  const broker = await Aedes.createBroker();
  const server = net.createServer(broker.handle);
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    broker,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    },
  };
}

/** Rows stored for `device`: [idx, bytes|null] in index order. */
export function storedRows(db: FleetDb, device: string): { idx: number; leaf: Buffer; bytes: Buffer | null }[] {
  return db.prepare('SELECT idx, leaf, bytes FROM records WHERE device = ? ORDER BY idx').all(device) as { idx: number; leaf: Buffer; bytes: Buffer | null }[];
}
