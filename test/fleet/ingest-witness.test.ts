/**
 * FleetWitness (verify, store, cosign) on real device ledgers and a real SQLite file, without
 * MQTT: every refusal case, duplicates, reordering, forks, and database failures.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from 'better-sqlite3';
import { FakeClock } from '../../runtime/clock.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { formatCheckpoint, noteSigner, noteVerifier, openNote, signNote, SIGNATURE_TYPE_COSIGNATURE_V1, splitNote, verifierKey, verifyCosignature } from '../../runtime/ledger/note.ts';
import { decodeBatch, encodeBatch, MAX_BATCH_BYTES } from '../../runtime/sync/wire.ts';
import { FleetWitness, type ForkEvidence, type Verdict } from '../../fleet/witness.ts';
import { deviceState, forks, hasFork, MAX_REJECTS, recentRejects, type FleetDb } from '../../fleet/db.ts';
import { appendRecords, enroll, fleetDb, makeBatch, makeDevice, storedRows, tempDir, type TestDevice } from './ingest-fixtures.ts';

interface Setup {
  dir: string;
  db: FleetDb;
  witness: FleetWitness;
  cosigner: string;
  dev: TestDevice;
  forksSeen: ForkEvidence[];
  clock: FakeClock;
  done: () => Promise<void>;
}

async function setup(records = 50): Promise<Setup> {
  const { dir, cleanup } = tempDir('witness');
  const db = fleetDb(dir);
  const fleetKey = generateKeyFile(path.join(dir, 'fleet.key'), { name: 'keel-fleet' });
  const key = { name: 'keel-fleet', privateKey: fleetKey.privateKey };
  const clock = new FakeClock();
  const forksSeen: ForkEvidence[] = [];
  const witness = new FleetWitness({ db, key, clock, onFork: (f) => forksSeen.push(f) });
  const dev = await makeDevice(dir, 'robot-1');
  await appendRecords(dev, records);
  enroll(db, dev.id, dev.vkey);
  return {
    dir,
    db,
    witness,
    cosigner: verifierKey('keel-fleet', fleetKey.publicKey, SIGNATURE_TYPE_COSIGNATURE_V1),
    dev,
    forksSeen,
    clock,
    done: async () => {
      await dev.ledger.close();
      db.close();
      cleanup();
    },
  };
}

function one(w: FleetWitness, device: string, payload: Buffer): Verdict {
  const [v] = w.accept([{ device, payload }]);
  return v;
}

function assertAckVerifies(v: Verdict, s: Setup, size: number): void {
  assert.equal(v.kind, 'ack', JSON.stringify(v));
  if (v.kind !== 'ack') return;
  assert.equal(v.size, size);
  // The ack is a signed note: the device signature and the fleet cosignature both verify.
  const { text, signatures } = splitNote(v.note);
  assert.equal(signatures.length, 2);
  const cos = verifyCosignature(text, signatures[1].line, s.cosigner);
  assert.equal(cos.name, 'keel-fleet');
  assert.equal(cos.timestamp, Math.floor(s.clock.now() / 1000));
  const opened = openNote(v.note, [noteVerifier(s.dev.vkey), noteVerifier(s.cosigner)]);
  assert.equal(opened.verified.length, 2);
  assert.equal(text, `robot-1\n${size}\n${s.dev.ledger.rootAt(size).toString('base64')}\n`);
}

test('valid batches are stored once with their exact bytes and acked with a verifying cosignature', async () => {
  const s = await setup(50);
  try {
    const v1 = one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 20));
    assertAckVerifies(v1, s, 20);
    assert.equal(v1.kind === 'ack' && v1.stored, 20);
    const v2 = one(s.witness, 'robot-1', await makeBatch(s.dev, 20, 50));
    assertAckVerifies(v2, s, 50);
    const rows = storedRows(s.db, 'robot-1');
    assert.equal(rows.length, 50);
    rows.forEach((r, i) => {
      assert.equal(r.idx, i);
      assert.deepEqual(r.bytes, s.dev.ledger.read(i));
      assert.deepEqual(r.leaf, leafHash(s.dev.ledger.read(i)));
    });
    const st = deviceState(s.db, 'robot-1')!;
    assert.equal(st.size, 50);
    assert.equal(st.cosigned, (v2 as { note: string }).note);
    assert.equal(s.witness.stats.records, 50);
  } finally {
    await s.done();
  }
});

test('duplicates are re-acked idempotently; overlapping batches store only the new part', async () => {
  const s = await setup(60);
  try {
    const b = await makeBatch(s.dev, 0, 30);
    const first = one(s.witness, 'robot-1', b);
    s.clock.advance(5000);
    const again = one(s.witness, 'robot-1', b);
    assert.equal(again.kind, 'ack');
    assert.equal(again.kind === 'ack' && again.duplicate, true);
    assert.equal(again.kind === 'ack' && again.note, first.kind === 'ack' && first.note, 're-ack is the stored cosigned note');
    // An older, smaller duplicate is re-acked with the newest cosigned checkpoint.
    const small = one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 10));
    assert.equal(small.kind === 'ack' && small.size, 30);
    // Overlap [20, 60): 20..29 are compared, 30..59 stored.
    const over = one(s.witness, 'robot-1', await makeBatch(s.dev, 20, 60));
    assert.equal(over.kind === 'ack' && over.stored, 30);
    assert.equal(storedRows(s.db, 'robot-1').length, 60);
    assert.equal(s.witness.stats.duplicates, 2);
  } finally {
    await s.done();
  }
});

test('out-of-order batches wait, and are accepted once the gap is filled (same group or later)', async () => {
  const s = await setup(40);
  try {
    const b1 = await makeBatch(s.dev, 0, 10);
    const b2 = await makeBatch(s.dev, 10, 20);
    const b3 = await makeBatch(s.dev, 20, 40);
    const w = one(s.witness, 'robot-1', b3);
    assert.deepEqual(w, { kind: 'wait', device: 'robot-1', start: 20, end: 40, held: 0 });
    assert.equal(storedRows(s.db, 'robot-1').length, 0);
    // In one group, in order: both stored in the one transaction.
    const vs = s.witness.accept([{ device: 'robot-1', payload: b1 }, { device: 'robot-1', payload: b2 }]);
    assert.deepEqual(vs.map((v) => v.kind), ['ack', 'ack']);
    // Every ack of a group carries the newest cosigned checkpoint.
    assert.equal(vs[0].kind === 'ack' && vs[0].size, 20);
    assertAckVerifies(one(s.witness, 'robot-1', b3), s, 40);
    assert.equal(storedRows(s.db, 'robot-1').length, 40);
  } finally {
    await s.done();
  }
});

test('hash-only entries (records dropped on the device) are stored as hash-only rows and verify', async () => {
  const s = await setup(20);
  try {
    const v = one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 20, { hashOnly: new Set([3, 4, 5]) }));
    assertAckVerifies(v, s, 20);
    const rows = storedRows(s.db, 'robot-1');
    assert.equal(rows[4].bytes, null);
    assert.deepEqual(rows[4].leaf, s.dev.ledger.storedLeafHash(4));
    assert.deepEqual(rows[6].bytes, s.dev.ledger.read(6));
  } finally {
    await s.done();
  }
});

function nack(v: Verdict, code: string, re: RegExp): void {
  assert.equal(v.kind, 'nack', JSON.stringify(v));
  if (v.kind !== 'nack') return;
  assert.equal(v.code, code);
  assert.match(v.reason, re);
}

test('refusals: altered record, bad signature, wrong origin, other device topic, unenrolled, revoked, malformed, oversized', async () => {
  const s = await setup(20);
  try {
    const good = await makeBatch(s.dev, 0, 10);

    // A record altered in transit (same length, one byte changed).
    const b = decodeBatch(good);
    const e = b.entries[3] as { kind: 'record'; bytes: Uint8Array };
    const altered = Buffer.from(e.bytes);
    altered[altered.length - 3] ^= 1;
    b.entries[3] = { kind: 'record', bytes: altered };
    nack(one(s.witness, 'robot-1', encodeBatch(b)), 'KEEL_E_LEDGER_VERIFY', /do not hash to the root/);

    // A bad signature: flip a byte inside the signature's base64.
    const bs = decodeBatch(good);
    const sigLine = bs.header.checkpoint.trimEnd().split('\n').pop()!;
    const sigB64 = sigLine.split(' ')[2];
    const raw = Buffer.from(sigB64, 'base64');
    raw[10] ^= 0xff;
    bs.header.checkpoint = bs.header.checkpoint.replace(sigB64, raw.toString('base64'));
    nack(one(s.witness, 'robot-1', encodeBatch(bs)), 'KEEL_E_AUTH', /does not verify/);

    // A checkpoint signed by another key of the same name (not the enrolled one).
    const impostor = await makeDevice(s.dir, 'robot-1', { key: { ...generateKeyFile(path.join(s.dir, 'imp.key'), { name: 'robot-1' }), name: 'robot-1' }, ledgerDir: path.join(s.dir, 'imp-ledger') });
    await appendRecords(impostor, 10);
    nack(one(s.witness, 'robot-1', await makeBatch(impostor, 0, 10)), 'KEEL_E_AUTH', /no signature by a trusted key/);
    await impostor.ledger.close();

    // Wrong origin: signed by the enrolled key (signature line "robot-1"), but the checkpoint names another log.
    const wo = decodeBatch(good);
    wo.header.checkpoint = signNote(formatCheckpoint({ origin: 'elsewhere', size: 10, root: s.dev.ledger.rootAt(10) }), [noteSigner('robot-1', s.dev.key.privateKey)]);
    nack(one(s.witness, 'robot-1', encodeBatch(wo)), 'KEEL_E_AUTH', /origin "elsewhere" is not the enrolled key's name "robot-1"/);

    // A device id may differ from its key name (origin = key name, not device id): accepted.
    const odd = await makeDevice(s.dir, 'other-origin');
    await appendRecords(odd, 5);
    enroll(s.db, 'robot-2', odd.vkey);
    assert.equal(one(s.witness, 'robot-2', await makeBatch(odd, 0, 5, { device: 'robot-2' })).kind, 'ack');
    await appendRecords(odd, 5);

    // Another device's topic: the header says robot-1, the topic says robot-2.
    nack(one(s.witness, 'robot-2', good), 'KEEL_E_AUTH', /published on the topic of device "robot-2"/);

    // Unenrolled device.
    const stranger = await makeDevice(s.dir, 'stranger');
    await appendRecords(stranger, 3);
    nack(one(s.witness, 'stranger', await makeBatch(stranger, 0, 3)), 'KEEL_E_AUTH', /not enrolled/);

    // Revoked device.
    s.db.prepare('UPDATE devices SET revoked_at = ? WHERE id = ?').run(Date.now(), 'robot-2');
    nack(one(s.witness, 'robot-2', await makeBatch(odd, 5, 10, { device: 'robot-2' })), 'KEEL_E_AUTH', /revoked/);
    await odd.ledger.close();
    await stranger.ledger.close();

    // Malformed payloads.
    nack(one(s.witness, 'robot-1', Buffer.from('hello')), 'KEEL_E_WIRE', /KLB1/);
    nack(one(s.witness, 'robot-1', Buffer.alloc(0)), 'KEEL_E_WIRE', /KLB1/);
    nack(one(s.witness, 'robot-1', good.subarray(0, good.length - 4)), 'KEEL_E_WIRE', /runs past|ends inside/);
    nack(one(s.witness, 'robot-1', Buffer.concat([good, Buffer.from([0])])), 'KEEL_E_WIRE', /after its last entry/);
    const trunc = Buffer.from(good);
    trunc.writeUInt32BE(0xffffffff, 4);
    nack(one(s.witness, 'robot-1', trunc), 'KEEL_E_WIRE', /header length/);
    // Checkpoint size disagreeing with start + count.
    const sz = decodeBatch(good);
    sz.header.checkpoint = await s.dev.ledger.signCheckpointAt(12);
    nack(one(s.witness, 'robot-1', encodeBatch(sz)), 'KEEL_E_WIRE', /not start \+ count/);
    // Oversized.
    nack(one(s.witness, 'robot-1', Buffer.alloc(MAX_BATCH_BYTES + 1)), 'KEEL_E_WIRE', /exceeds/);

    // None of it was stored; all was logged; the good batch still goes through.
    assert.equal(storedRows(s.db, 'robot-1').length, 0);
    const rejects = recentRejects(s.db, 100);
    assert.equal(rejects.length, 14);
    assert.equal(rejects.filter((r) => r.device === 'robot-1').length, 11);
    assert.ok(rejects.every((r) => r.code.startsWith('KEEL_E_')));
    assertAckVerifies(one(s.witness, 'robot-1', good), s, 10);
    const faults = s.db.prepare('SELECT faults FROM status WHERE device = ?').pluck().get('robot-1');
    assert.ok((faults as number) >= 9, `faults counted for robot-1: ${faults}`);
  } finally {
    await s.done();
  }
});

test('a fork (two ledgers with the same key diverging) is stored as evidence and the device is no longer acked', async () => {
  const s = await setup(0);
  try {
    // Same key, two ledgers: 10 shared records, then each goes its own way.
    await appendRecords(s.dev, 10);
    const twin = await makeDevice(s.dir, 'robot-1', { key: s.dev.key, ledgerDir: path.join(s.dir, 'twin') });
    for (let i = 0; i < 10; i++) await twin.ledger.append({ kind: 'event', body: { copy: s.dev.ledger.read(i).toString('base64') } });
    // (Different bytes from index 0: the twin is a different history under the same key.)
    await appendRecords(s.dev, 10);
    await appendRecords(twin, 10);
    assertAckVerifies(one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 20)), s, 20);
    // The twin offers its own size-20 checkpoint: same size, other root.
    const v = one(s.witness, 'robot-1', await makeBatch(twin, 10, 20));
    nack(v, 'KEEL_E_FORK', /fork evidence stored/);
    assert.equal(s.forksSeen.length, 1);
    const f = forks(s.db, 'robot-1');
    assert.equal(f.length, 1);
    assert.equal(f[0].held, deviceState(s.db, 'robot-1')!.checkpoint);
    assert.equal(f[0].offered, await twin.ledger.signCheckpointAt(20));
    assert.ok(hasFork(s.db, 'robot-1'));
    // Even valid, consistent batches are no longer acked.
    await appendRecords(s.dev, 5);
    nack(one(s.witness, 'robot-1', await makeBatch(s.dev, 20, 25)), 'KEEL_E_FORK', /no longer acknowledges/);
    assert.equal(forks(s.db).length, 1, 'evidence stored once');
    assert.equal(s.witness.stats.forks, 1);
    await twin.ledger.close();
  } finally {
    await s.done();
  }
});

test('a fork shown by a re-sent history from index 0 with other leaves is proved and stored', async () => {
  const s = await setup(10);
  try {
    const twin = await makeDevice(s.dir, 'robot-1', { key: s.dev.key, ledgerDir: path.join(s.dir, 'twin') });
    await appendRecords(twin, 15, 7);
    assertAckVerifies(one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 10)), s, 10);
    nack(one(s.witness, 'robot-1', await makeBatch(twin, 0, 15)), 'KEEL_E_FORK', /inconsistent/);
    assert.equal(forks(s.db, 'robot-1').length, 1);
    await twin.ledger.close();
  } finally {
    await s.done();
  }
});

test('database read-only, locked and full: nothing acked, nothing lost, recovers after', async () => {
  const s = await setup(30);
  try {
    const b1 = await makeBatch(s.dev, 0, 10);
    const b2 = await makeBatch(s.dev, 10, 20);
    const b3 = await makeBatch(s.dev, 20, 30);

    // Locked: another connection holds the write lock.
    const other = new Database(path.join(s.dir, 'fleet.db'), { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    let v = one(s.witness, 'robot-1', b1);
    assert.equal(v.kind, 'retry');
    assert.equal(v.kind === 'retry' && v.error.code, 'KEEL_E_FLEET');
    assert.match(v.kind === 'retry' ? v.error.message : '', /locked/);
    assert.equal(v.kind === 'retry' && v.error.retryable, true);
    other.exec('ROLLBACK');
    assertAckVerifies(one(s.witness, 'robot-1', b1), s, 10);

    // Read-only: the connection is switched to query_only (as a read-only mount would refuse writes).
    s.db.pragma('query_only = ON');
    v = one(s.witness, 'robot-1', b2);
    assert.equal(v.kind, 'retry');
    assert.match(v.kind === 'retry' ? v.error.message : '', /read-only/);
    s.db.pragma('query_only = OFF');
    assertAckVerifies(one(s.witness, 'robot-1', b2), s, 20);

    // Full: cap the page count at what is used now.
    const pages = s.db.pragma('page_count', { simple: true }) as number;
    s.db.pragma(`max_page_count = ${pages}`);
    const big = await (async () => {
      await appendRecords(s.dev, 2000, 400);
      return makeBatch(s.dev, 20, 2030);
    })();
    v = one(s.witness, 'robot-1', big);
    assert.equal(v.kind, 'retry');
    assert.match(v.kind === 'retry' ? v.error.message : '', /full/);
    assert.equal(deviceState(s.db, 'robot-1')!.size, 20, 'nothing of the failed transaction stored');
    assert.equal(storedRows(s.db, 'robot-1').length, 20);
    s.db.pragma('max_page_count = 1073741823');
    assertAckVerifies(one(s.witness, 'robot-1', big), s, 2030);
    assertAckVerifies(one(s.witness, 'robot-1', b3), s, 2030);
    assert.equal(storedRows(s.db, 'robot-1').length, 2030);
    assert.ok(s.witness.stats.dbErrors >= 3);
  } finally {
    await s.done();
  }
});

test('the rejects log stays bounded at MAX_REJECTS rows', async () => {
  const s = await setup(0);
  try {
    const fill = s.db.prepare('INSERT INTO rejects(device, code, reason, at) VALUES (?,?,?,?)');
    s.db.transaction(() => {
      for (let i = 0; i < MAX_REJECTS; i++) fill.run('robot-1', 'KEEL_E_WIRE', `old ${i}`, 0);
    })();
    const junk = Array.from({ length: 300 }, () => ({ device: 'robot-1', payload: Buffer.from('junk') }));
    const vs = s.witness.accept(junk);
    assert.ok(vs.every((v) => v.kind === 'nack'));
    assert.equal(s.db.prepare('SELECT count(*) FROM rejects').pluck().get(), MAX_REJECTS);
    assert.equal(recentRejects(s.db, 1)[0].reason, 'not a keel batch (no KLB1 magic)', 'the newest are kept');
  } finally {
    await s.done();
  }
});

test('an inconsistent stored state refuses that device only; other devices in the same transaction are stored', async () => {
  const s = await setup(20);
  try {
    const other = await makeDevice(s.dir, 'robot-3');
    await appendRecords(other, 5);
    enroll(s.db, other.id, other.vkey);
    assertAckVerifies(one(s.witness, 'robot-1', await makeBatch(s.dev, 0, 10)), s, 10);
    s.db.prepare('DELETE FROM records WHERE device = ? AND idx = 5').run('robot-1');
    const vs = s.witness.accept([
      { device: 'robot-1', payload: await makeBatch(s.dev, 5, 20) },
      { device: 'robot-3', payload: await makeBatch(other, 0, 5) },
    ]);
    nack(vs[0], 'KEEL_E_FLEET', /should hold records 5\.\.9 but 4 of 5 are there/);
    assert.equal(vs[1].kind, 'ack');
    assert.equal(storedRows(s.db, 'robot-3').length, 5);
    await other.ledger.close();
  } finally {
    await s.done();
  }
});
