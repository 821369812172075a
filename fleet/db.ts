/**
 * The fleet database: one SQLite file (`<state>/fleet.db`) holding the device registry, the
 * operator/service principals, every verified ledger record, per-device verification state,
 * fork evidence, device status and a bounded log of rejected input.
 *
 * Durability: WAL with synchronous=FULL, so a committed batch survives power loss before the
 * fleet acks it (the ack tells the device it may prune). busy_timeout lets several ingest
 * workers and the console share the file. The schema is versioned by `PRAGMA user_version`;
 * migrations run in order inside one transaction, and a newer file than this code knows is refused.
 *
 * Every SQLite failure the world can cause (locked, read-only, full, corrupt, missing) is mapped
 * by `fleetDbError` to KeelError('KEEL_E_FLEET') with a message saying what to do.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { KeelError } from '../runtime/errors.ts';

/** A better-sqlite3 database handle (the fleet database). */
export type FleetDb = Database.Database;

/** Options of `openFleetDb`. */
export interface FleetDbOptions {
  /** Open read-only (console, verify): no migrations, no writes. Default false. */
  readonly?: boolean;
  /** How long a statement waits for another connection's lock, ms. Default 5000. */
  busyTimeoutMs?: number;
  /** Create the file (and its directory) when missing. Default true unless readonly. */
  create?: boolean;
}

/** Schema version this code writes (PRAGMA user_version). */
export const FLEET_DB_VERSION = 1;

/** Rows kept in `rejects`; older ones are deleted as new ones arrive. */
export const MAX_REJECTS = 10_000;

// Each entry migrates from version i to i + 1. Append only.
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE devices(
    id TEXT PRIMARY KEY,
    vkey TEXT NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL,
    revoked_at INTEGER
  );
  CREATE TABLE principals(
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK(role IN ('operator','service')),
    secret_hash TEXT NOT NULL,
    vkey TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
  );
  CREATE TABLE records(
    device TEXT NOT NULL,
    idx INTEGER NOT NULL,
    leaf BLOB NOT NULL,
    bytes BLOB,
    PRIMARY KEY(device, idx)
  ) WITHOUT ROWID;
  CREATE TABLE device_state(
    device TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    range BLOB NOT NULL,
    checkpoint TEXT NOT NULL,
    cosigned TEXT NOT NULL,
    updated_at INTEGER NOT NULL
  );
  CREATE TABLE forks(
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    held TEXT NOT NULL,
    offered TEXT NOT NULL,
    detected_at INTEGER NOT NULL
  );
  CREATE INDEX forks_device ON forks(device);
  CREATE TABLE status(
    device TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    bd_seq INTEGER NOT NULL,
    birth TEXT,
    last_seen INTEGER NOT NULL,
    faults INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE rejects(
    id INTEGER PRIMARY KEY,
    device TEXT,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
  );
  `,
];

function describe(file: string): string {
  return file === ':memory:' ? 'the in-memory fleet database' : `fleet database ${file}`;
}

/**
 * Maps a SQLite / filesystem failure to KeelError('KEEL_E_FLEET') with a clear message.
 * Locked and full are retryable (another writer finishes; an operator frees space); read-only
 * is retryable too because a remount or chmod fixes it without restarting. KeelErrors pass through.
 */
export function fleetDbError(err: unknown, file: string, doing: string): KeelError {
  if (err instanceof KeelError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  const where = describe(file);
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new KeelError('KEEL_E_FLEET', `${where} is locked by another connection while ${doing} (${code}); will retry`, { cause: err, retryable: true });
  }
  if (code.startsWith('SQLITE_READONLY') || code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new KeelError('KEEL_E_FLEET', `${where} is read-only while ${doing} (${code}): check the file, its directory and -wal/-shm permissions and that the disk is not mounted read-only`, { cause: err, retryable: true });
  }
  if (code.startsWith('SQLITE_FULL') || code === 'ENOSPC') {
    return new KeelError('KEEL_E_FLEET', `${where} is full while ${doing} (${code}): free disk space; nothing was acknowledged, devices keep and resend their records`, { cause: err, retryable: true });
  }
  if (code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB')) {
    return new KeelError('KEEL_E_FLEET', `${where} is corrupt or not a SQLite database while ${doing} (${code}): restore it from a backup or move it aside`, { cause: err });
  }
  if (code.startsWith('SQLITE_CANTOPEN') || code === 'ENOENT') {
    return new KeelError('KEEL_E_FLEET', `${where} cannot be opened while ${doing} (${code}): check that the state directory exists and is accessible`, { cause: err });
  }
  if (code.startsWith('SQLITE_IOERR')) {
    return new KeelError('KEEL_E_FLEET', `${where} had an I/O error while ${doing} (${code}): ${msg}`, { cause: err, retryable: true });
  }
  return new KeelError('KEEL_E_FLEET', `${where} failed while ${doing}: ${code ? `${code}: ` : ''}${msg}`, { cause: err });
}

/**
 * Opens (creating and migrating when writable) the fleet database at `file`.
 * @throws KeelError KEEL_E_FLEET when the file cannot be opened, is corrupt, locked, or of a newer version.
 */
export function openFleetDb(file: string, opts: FleetDbOptions = {}): FleetDb {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError('file must be a non-empty path');
  const readonly = opts.readonly ?? false;
  const busy = opts.busyTimeoutMs ?? 5000;
  if (!Number.isInteger(busy) || busy < 0) throw new RangeError(`busyTimeoutMs must be a non-negative integer, got ${busy}`);
  const create = opts.create ?? !readonly;
  if (file !== ':memory:') {
    if (!create && !fs.existsSync(file)) throw new KeelError('KEEL_E_FLEET', `${describe(file)} does not exist (start "keel fleet serve --state DIR" once to create it)`);
    if (create) {
      try {
        fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      } catch (err) {
        throw fleetDbError(err, file, 'creating its directory');
      }
    }
  }
  let db: FleetDb;
  try {
    db = new Database(file, { readonly, fileMustExist: !create, timeout: busy });
  } catch (err) {
    throw fleetDbError(err, file, 'opening');
  }
  try {
    if (!readonly) {
      // A new file gets 16 KiB pages: records are appended in key order, and bigger pages
      // measured about 1.3x the insert rate of the 4 KiB default here. Only effective
      // before the first write, so an existing file keeps its page size.
      if (Number(db.pragma('page_count', { simple: true })) === 0) db.pragma('page_size = 16384');
      // WAL survives readers during writes; FULL syncs the WAL on every commit (acks follow commits).
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (file !== ':memory:' && String(mode).toLowerCase() !== 'wal') {
        throw new KeelError('KEEL_E_FLEET', `${describe(file)} could not switch to WAL journal mode (got ${String(mode)})`);
      }
    }
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    const version = Number(db.pragma('user_version', { simple: true }));
    if (version > FLEET_DB_VERSION) {
      throw new KeelError('KEEL_E_FLEET', `${describe(file)} has schema version ${version}, newer than this keel understands (${FLEET_DB_VERSION}); upgrade keel`);
    }
    if (version < FLEET_DB_VERSION) {
      if (readonly) throw new KeelError('KEEL_E_FLEET', `${describe(file)} has schema version ${version}; open it writable once (keel fleet serve) to migrate it to ${FLEET_DB_VERSION}`);
      migrate(db);
    } else {
      // Touch the schema so a corrupt or foreign file fails here, not mid-ingest.
      db.prepare('SELECT count(*) FROM devices').get();
    }
  } catch (err) {
    db.close();
    throw fleetDbError(err, file, 'opening');
  }
  return db;
}

function migrate(db: FleetDb): void {
  // IMMEDIATE: two processes starting at once serialize; the loser re-reads the version.
  db.transaction(() => {
    let v = Number(db.pragma('user_version', { simple: true }));
    for (; v < FLEET_DB_VERSION; v++) {
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    }
  }).immediate();
}

/** A device's registry row. `revokedAt` is set once revoked. Times are epoch ms. */
export interface DeviceRow {
  id: string;
  vkey: string;
  enrolledAt: number;
  revokedAt: number | null;
}

/** The registry row of `id`, or undefined when it was never enrolled. */
export function deviceRow(db: FleetDb, id: string): DeviceRow | undefined {
  const r = db.prepare('SELECT id, vkey, enrolled_at AS enrolledAt, revoked_at AS revokedAt FROM devices WHERE id = ?').get(id) as DeviceRow | undefined;
  return r;
}

/** The enrolled, non-revoked verifier key of `id`, or undefined (unknown or revoked). */
export function deviceKey(db: FleetDb, id: string): string | undefined {
  const r = db.prepare('SELECT vkey FROM devices WHERE id = ? AND revoked_at IS NULL').get(id) as { vkey: string } | undefined;
  return r?.vkey;
}

/** What the fleet holds verified for one device. */
export interface DeviceState {
  device: string;
  /** Verified size: records 0..size-1 are held (bytes or hash-only). */
  size: number;
  /** Compact range (see fleet/compact-range.ts) of the first `size` leaves. */
  range: Buffer;
  /** The device-signed checkpoint note of size `size`. */
  checkpoint: string;
  /** That note with the fleet's cosignature appended (the latest ack). */
  cosigned: string;
  updatedAt: number;
}

/** The verified state of `device`, or undefined when nothing was ingested yet. */
export function deviceState(db: FleetDb, device: string): DeviceState | undefined {
  return db
    .prepare('SELECT device, size, range, checkpoint, cosigned, updated_at AS updatedAt FROM device_state WHERE device = ?')
    .get(device) as DeviceState | undefined;
}

/** A device's last known status. `online` is 0/1 in SQL, boolean here. Times are epoch ms. */
export interface StatusRow {
  device: string;
  online: boolean;
  bdSeq: number;
  /** The birth message JSON, when one was seen. */
  birth: string | null;
  lastSeen: number;
  faults: number;
}

/** The status row of `device`, or undefined. */
export function deviceStatus(db: FleetDb, device: string): StatusRow | undefined {
  const r = db.prepare('SELECT device, online, bd_seq AS bdSeq, birth, last_seen AS lastSeen, faults FROM status WHERE device = ?').get(device) as
    | (Omit<StatusRow, 'online'> & { online: number })
    | undefined;
  return r ? { ...r, online: r.online !== 0 } : undefined;
}

/** One fork-evidence row: the held and the offered signed checkpoints. */
export interface ForkRow {
  id: number;
  device: string;
  held: string;
  offered: string;
  detectedAt: number;
}

/** Fork evidence for `device` (or all devices), oldest first. */
export function forks(db: FleetDb, device?: string): ForkRow[] {
  const sql = 'SELECT id, device, held, offered, detected_at AS detectedAt FROM forks';
  return (device === undefined ? db.prepare(`${sql} ORDER BY id`).all() : db.prepare(`${sql} WHERE device = ? ORDER BY id`).all(device)) as ForkRow[];
}

/** True when fork evidence is held for `device` (ingest stops acking it). */
export function hasFork(db: FleetDb, device: string): boolean {
  return db.prepare('SELECT 1 FROM forks WHERE device = ? LIMIT 1').get(device) !== undefined;
}

/** One rejected input. */
export interface RejectRow {
  id: number;
  device: string | null;
  code: string;
  reason: string;
  at: number;
}

/** The newest `limit` rejects (for `device` when given), newest first. */
export function recentRejects(db: FleetDb, limit = 100, device?: string): RejectRow[] {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const sql = 'SELECT id, device, code, reason, at FROM rejects';
  return (device === undefined
    ? db.prepare(`${sql} ORDER BY id DESC LIMIT ?`).all(limit)
    : db.prepare(`${sql} WHERE device = ? ORDER BY id DESC LIMIT ?`).all(device, limit)) as RejectRow[];
}
