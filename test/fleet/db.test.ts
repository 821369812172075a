/** The fleet database on real SQLite files: schema, pragmas, migrations, helpers, error mapping. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { KeelError } from '../../runtime/errors.ts';
import {
  deviceKey, deviceRow, deviceState, deviceStatus, FLEET_DB_VERSION, fleetDbError, forks, hasFork, MAX_REJECTS, openFleetDb, recentRejects,
} from '../../fleet/db.ts';
import { tempDir } from './ingest-fixtures.ts';

const isFleetError = (re: RegExp, retryable?: boolean) => (err: unknown) => {
  assert.ok(err instanceof KeelError, `expected a KeelError, got ${String(err)}`);
  assert.equal(err.code, 'KEEL_E_FLEET');
  assert.match(err.message, re);
  if (retryable !== undefined) assert.equal(err.retryable, retryable);
  return true;
};

test('creates the schema with WAL, synchronous=FULL, busy timeout and user_version', () => {
  const { dir, cleanup } = tempDir('db');
  try {
    const file = path.join(dir, 'sub', 'fleet.db');
    const db = openFleetDb(file, { busyTimeoutMs: 1234 });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.pragma('synchronous', { simple: true }), 2); // FULL
    assert.equal(db.pragma('busy_timeout', { simple: true }), 1234);
    assert.equal(db.pragma('page_size', { simple: true }), 16384);
    assert.equal(db.pragma('user_version', { simple: true }), FLEET_DB_VERSION);
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all();
    assert.deepEqual(tables, ['device_state', 'devices', 'forks', 'principals', 'records', 'rejects', 'status']);
    // Constraints from the shared design.
    db.prepare('INSERT INTO devices VALUES (?,?,?,NULL)').run('a', 'a+1+x', 1);
    assert.throws(() => db.prepare('INSERT INTO devices VALUES (?,?,?,NULL)').run('b', 'a+1+x', 1), /UNIQUE/);
    assert.throws(() => db.prepare("INSERT INTO principals VALUES ('p','root','h',NULL,1,NULL)").run(), /CHECK/);
    db.prepare('INSERT INTO records VALUES (?,?,?,NULL)').run('a', 0, Buffer.alloc(32));
    assert.throws(() => db.prepare('INSERT INTO records VALUES (?,?,?,NULL)').run('a', 0, Buffer.alloc(32)), /UNIQUE|PRIMARY/);
    db.close();
    // Reopening is a no-op migration; read-only opens work and refuse writes with a clear error.
    openFleetDb(file).close();
    const ro = openFleetDb(file, { readonly: true });
    assert.equal(deviceKey(ro, 'a'), 'a+1+x');
    assert.throws(
      () => {
        try {
          ro.prepare('DELETE FROM devices').run();
        } catch (err) {
          throw fleetDbError(err, file, 'deleting');
        }
      },
      isFleetError(/is read-only while deleting/, true),
    );
    ro.close();
  } finally {
    cleanup();
  }
});

test('refuses a newer schema, a corrupt file, and a missing file when read-only', () => {
  const { dir, cleanup } = tempDir('db');
  try {
    const file = path.join(dir, 'fleet.db');
    const raw = new Database(file);
    raw.pragma(`user_version = ${FLEET_DB_VERSION + 1}`);
    raw.close();
    assert.throws(() => openFleetDb(file), isFleetError(/schema version 2, newer than this keel understands/));
    const bad = path.join(dir, 'bad.db');
    fs.writeFileSync(bad, Buffer.alloc(8192, 0x5a));
    assert.throws(() => openFleetDb(bad), isFleetError(/corrupt or not a SQLite database/, false));
    assert.throws(() => openFleetDb(path.join(dir, 'none.db'), { readonly: true }), isFleetError(/does not exist/));
    const old = path.join(dir, 'old.db');
    new Database(old).close();
    assert.throws(() => openFleetDb(old, { readonly: true }), isFleetError(/open it writable once/));
    assert.throws(() => openFleetDb(''), TypeError);
    assert.throws(() => openFleetDb(file, { busyTimeoutMs: -1 }), RangeError);
  } finally {
    cleanup();
  }
});

test('locked and full map to retryable KEEL_E_FLEET errors', () => {
  const { dir, cleanup } = tempDir('db');
  try {
    const file = path.join(dir, 'fleet.db');
    const a = openFleetDb(file, { busyTimeoutMs: 0 });
    const b = openFleetDb(file, { busyTimeoutMs: 0 });
    a.exec('BEGIN IMMEDIATE');
    const write = (db: typeof a, what: string) => {
      try {
        db.prepare('INSERT INTO rejects(device, code, reason, at) VALUES (?,?,?,?)').run('x', 'KEEL_E_WIRE', 'r'.repeat(4000), 1);
      } catch (err) {
        throw fleetDbError(err, file, what);
      }
    };
    assert.throws(() => write(b, 'logging a reject'), isFleetError(/is locked by another connection while logging a reject \(SQLITE_BUSY\)/, true));
    a.exec('ROLLBACK');
    write(b, 'logging a reject');
    b.pragma(`max_page_count = ${b.pragma('page_count', { simple: true })}`);
    assert.throws(() => {
      for (let i = 0; i < 100; i++) write(b, 'logging rejects');
    }, isFleetError(/is full while logging rejects \(SQLITE_FULL\).*free disk space/, true));
    a.close();
    b.close();
    // Plain filesystem codes map too.
    assert.throws(() => {
      throw fleetDbError(Object.assign(new Error('no space'), { code: 'ENOSPC' }), file, 'x');
    }, isFleetError(/is full/));
    assert.throws(() => {
      throw fleetDbError(Object.assign(new Error('denied'), { code: 'EACCES' }), file, 'x');
    }, isFleetError(/read-only/));
    const k = new KeelError('KEEL_E_AUTH', 'kept');
    assert.equal(fleetDbError(k, file, 'x'), k);
  } finally {
    cleanup();
  }
});

test('typed helpers read what was stored', () => {
  const db = openFleetDb(':memory:');
  try {
    db.prepare('INSERT INTO devices VALUES (?,?,?,?)').run('r1', 'r1+abcd+key', 10, null);
    db.prepare('INSERT INTO devices VALUES (?,?,?,?)').run('r2', 'r2+abcd+key', 10, 20);
    assert.equal(deviceKey(db, 'r1'), 'r1+abcd+key');
    assert.equal(deviceKey(db, 'r2'), undefined, 'revoked');
    assert.equal(deviceKey(db, 'r3'), undefined, 'unknown');
    assert.deepEqual(deviceRow(db, 'r2'), { id: 'r2', vkey: 'r2+abcd+key', enrolledAt: 10, revokedAt: 20 });
    assert.equal(deviceState(db, 'r1'), undefined);
    db.prepare('INSERT INTO device_state VALUES (?,?,?,?,?,?)').run('r1', 3, Buffer.alloc(8), 'cp', 'cosigned', 5);
    assert.equal(deviceState(db, 'r1')!.size, 3);
    db.prepare('INSERT INTO status VALUES (?,?,?,?,?,?)').run('r1', 1, 4, '{}', 99, 2);
    assert.deepEqual(deviceStatus(db, 'r1'), { device: 'r1', online: true, bdSeq: 4, birth: '{}', lastSeen: 99, faults: 2 });
    assert.equal(hasFork(db, 'r1'), false);
    db.prepare('INSERT INTO forks(device, held, offered, detected_at) VALUES (?,?,?,?)').run('r1', 'h', 'o', 7);
    assert.equal(hasFork(db, 'r1'), true);
    assert.deepEqual(forks(db), [{ id: 1, device: 'r1', held: 'h', offered: 'o', detectedAt: 7 }]);
    for (let i = 0; i < 5; i++) db.prepare('INSERT INTO rejects(device, code, reason, at) VALUES (?,?,?,?)').run(i % 2 ? 'r1' : null, 'KEEL_E_WIRE', `r${i}`, i);
    assert.deepEqual(recentRejects(db, 2).map((r) => r.reason), ['r4', 'r3']);
    assert.deepEqual(recentRejects(db, 10, 'r1').map((r) => r.reason), ['r3', 'r1']);
    assert.throws(() => recentRejects(db, 0), RangeError);
    assert.equal(MAX_REJECTS, 10_000);
  } finally {
    db.close();
  }
});
