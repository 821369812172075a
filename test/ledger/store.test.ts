/**
 * LedgerStore on real files in a temp dir (and, for power cuts and injected faults, on the
 * in-memory filesystem twin): round trips, the stored tree against a naive RFC 6962
 * recomputation, reopen, torn tails of every kind, corruption, durability modes, full disk,
 * pruning, locking.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeClock } from '../../runtime/clock.ts';
import { EMPTY_ROOT, leafHash, nodeHash } from '../../runtime/ledger/hash.ts';
import { LedgerStore, LedgerStoreError, type LedgerStoreOptions } from '../../runtime/ledger/store.ts';
import { MemoryLedgerFs } from '../../runtime/ledger/store-fs.ts';

// ------------------------------------------------------------------------------ helpers

// Removed after every test has run, so stores closed in t.after() hooks still find their files.
const tempDirs: string[] = [];
after(() => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});

function tempDir(_t?: unknown): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-ledger-store-'));
  tempDirs.push(d);
  return d;
}

/** Record i: single-line JSON whose length varies with i. */
function rec(i: number): Buffer {
  return Buffer.from(JSON.stringify({ i, kind: 'event', pad: 'x'.repeat((i * 7) % 23) }));
}

/** MTH over leaf hashes, straight from RFC 6962 2.1 (recursive, no stored state). */
function mth(leaves: Buffer[]): Buffer {
  if (leaves.length === 0) return EMPTY_ROOT;
  if (leaves.length === 1) return leaves[0];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}

function leavesOf(records: Buffer[]): Buffer[] {
  return records.map((r) => leafHash(r));
}

function seeded(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<LedgerStoreError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof LedgerStoreError, `expected LedgerStoreError, got ${err}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected rejection with ${code}`);
}

function throwsWith(fn: () => unknown, code: string): LedgerStoreError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof LedgerStoreError, `expected LedgerStoreError, got ${err}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected a throw with ${code}`);
}

/** Checks every stored record and the root against the records we appended. */
function assertContents(store: LedgerStore, expected: Buffer[]): void {
  assert.equal(store.size, expected.length);
  for (let i = store.firstAvailable; i < expected.length; i++) assert.deepEqual(store.read(i), expected[i], `record ${i}`);
  assert.deepEqual(store.root(), mth(leavesOf(expected)));
}

/** A copy of the store's directory as kill -9 would leave it right now (files as written, LOCK dropped). */
function crashCopy(src: string, dst: string): string {
  fs.cpSync(src, dst, { recursive: true });
  fs.rmSync(path.join(dst, 'LOCK'), { force: true });
  return dst;
}

function segFiles(dir: string, ext: 'rec' | 'idx'): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.startsWith('seg-') && f.endsWith(`.${ext}`))
    .sort()
    .map((f) => path.join(dir, f));
}

function flipByte(file: string, offset: number): void {
  const b = fs.readFileSync(file);
  b[offset] ^= 0x04;
  fs.writeFileSync(file, b);
}

// ------------------------------------------------------------------------------ basics

describe('LedgerStore basics', () => {
  test('append, appendBatch and read round-trip the exact bytes', async (t) => {
    const dir = tempDir(t);
    const store = await LedgerStore.open(path.join(dir, 'l'));
    t.after(() => store.close());
    assert.equal(store.size, 0);
    assert.deepEqual(store.root(), EMPTY_ROOT);
    assert.equal(await store.append(rec(0)), 0);
    assert.equal(await store.append(new Uint8Array(rec(1))), 1);
    assert.equal(await store.appendBatch([rec(2), rec(3), rec(4)]), 2);
    const odd = Buffer.from([0x00, 0xff, 0x7b, 0x0d, 0x09, 0xc3, 0xa9]); // any bytes but 0x0A
    assert.equal(await store.append(odd), 5);
    assertContents(store, [rec(0), rec(1), rec(2), rec(3), rec(4), odd]);
    // read returns a copy
    const r = store.read(0);
    r[0] = 0;
    assert.deepEqual(store.read(0), rec(0));
    assert.throws(() => store.read(6), RangeError);
    assert.throws(() => store.read(-1), RangeError);
    assert.throws(() => store.read(1.5), RangeError);
  });

  test('readRange returns the same bytes as read, within maxBytes and one segment, and catches a flipped byte', async (t) => {
    const dir = tempDir(t);
    const store = await LedgerStore.open(path.join(dir, 'l'), { segmentBytes: 4096, maxRecordBytes: 1024 });
    t.after(() => store.close());
    const recs = Array.from({ length: 300 }, (_, i) => Buffer.from(`{"i":${i},"pad":"${'x'.repeat(i % 37)}"}`));
    await store.appendBatch(recs);
    for (let start = 0; start < 300; ) {
      const got = store.readRange(start, 300, 1000);
      assert.ok(got.length >= 1);
      assert.ok(got.length === 1 || got.reduce((n, b) => n + b.length, 0) <= 1000, 'within maxBytes');
      got.forEach((b, k) => assert.deepEqual(b, recs[start + k], `record ${start + k}`));
      start += got.length;
    }
    assert.deepEqual(store.readRange(10, 12, 1e9), [recs[10], recs[11]], 'stops before end');
    assert.equal(store.readRange(0, 300, 1).length, 1, 'at least one record');
    assert.throws(() => store.readRange(5, 5, 100), RangeError);
    assert.throws(() => store.readRange(0, 301, 100), RangeError);
    await store.close();
    // Flip one byte inside record 3's bytes on disk: a ranged read over it names record 3.
    const seg = fs.readdirSync(path.join(dir, 'l')).filter((f) => f.endsWith('.rec')).sort()[0];
    const file = path.join(dir, 'l', seg);
    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf(Buffer.from('{"i":3,'));
    bytes[at + 2] ^= 0x01;
    fs.writeFileSync(file, bytes);
    const again = await LedgerStore.open(path.join(dir, 'l'), { segmentBytes: 4096, maxRecordBytes: 1024, repair: false });
    t.after(() => again.close());
    assert.throws(() => again.readRange(0, 300, 1e9), (e: Error & { index?: number }) => e.index === 3);
  });

  test('bad records are refused and change nothing', async (t) => {
    const store = await LedgerStore.open(path.join(tempDir(t), 'l'), { maxRecordBytes: 64 });
    t.after(() => store.close());
    await store.append(rec(0));
    await assert.rejects(store.append(Buffer.from('{"a":1}\n')), (e: Error) => e instanceof RangeError && /newline.*byte 7/.test(e.message));
    await assert.rejects(store.append(Buffer.alloc(0)), RangeError);
    await assert.rejects(store.append(Buffer.alloc(65, 0x61)), /maxRecordBytes/);
    await assert.rejects(store.append('text' as unknown as Uint8Array), TypeError);
    await assert.rejects(store.appendBatch([rec(1), Buffer.from('a\nb')]), (e: Error) => e instanceof RangeError && /records\[1\]/.test(e.message));
    await assert.rejects(store.appendBatch([]), RangeError);
    await assert.rejects(store.appendBatch('x' as unknown as Uint8Array[]), TypeError);
    assertContents(store, [rec(0)]);
  });

  test('the copy is taken at the call: changing the buffer afterwards changes nothing', async (t) => {
    const store = await LedgerStore.open(path.join(tempDir(t), 'l'));
    t.after(() => store.close());
    const b = Buffer.from('{"v":1}');
    const p = store.append(b);
    b.write('{"v":2}');
    await p;
    assert.deepEqual(store.read(0), Buffer.from('{"v":1}'));
    assert.deepEqual(store.root(), leafHash(Buffer.from('{"v":1}')));
  });

  test('node() and root() match a naive RFC 6962 recomputation for sizes 1..70', async (t) => {
    // The reference itself against the published 8-leaf vector (SPECS.md).
    const vector = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map((h) => leafHash(Buffer.from(h, 'hex')));
    assert.equal(mth(vector).toString('hex'), '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328');

    const check = (store: LedgerStore, records: Buffer[]) => {
      const n = records.length;
      const leaves = leavesOf(records);
      assert.equal(store.size, n);
      for (let l = 0; 2 ** l <= n; l++) {
        const w = 2 ** l;
        for (let i = 0; (i + 1) * w <= n; i++) assert.deepEqual(store.node(l, i), mth(leaves.slice(i * w, (i + 1) * w)), `n=${n} node(${l}, ${i})`);
        assert.throws(() => store.node(l, Math.floor(n / w)), RangeError);
      }
      for (let m = 0; m <= n; m++) assert.deepEqual(store.root(m), mth(leaves.slice(0, m)), `root(${m}) at n=${n}`);
      assert.throws(() => store.root(n + 1), RangeError);
    };
    const base = tempDir(t);
    // One record at a time: every size 1..70.
    const store = await LedgerStore.open(path.join(base, 'one'), { segmentBytes: 200, maxRecordBytes: 100 });
    t.after(() => store.close());
    const records: Buffer[] = [];
    for (let n = 1; n <= 70; n++) {
      records.push(rec(n - 1));
      if (n % 2) await store.append(records[n - 1]);
      else await store.appendBatch([records[n - 1]]);
      check(store, records);
    }
    // Batches of 1..7 records crossing subtree boundaries.
    const batched = await LedgerStore.open(path.join(base, 'batched'), { segmentBytes: 200, maxRecordBytes: 100 });
    t.after(() => batched.close());
    const recs2: Buffer[] = [];
    for (let k = 1; recs2.length < 70; k = (k % 7) + 1) {
      const batch = Array.from({ length: Math.min(k, 70 - recs2.length) }, (_, j) => rec(1000 + recs2.length + j));
      assert.equal(await batched.appendBatch(batch), recs2.length);
      recs2.push(...batch);
      check(batched, recs2);
    }
    assert.throws(() => store.node(-1, 0), RangeError);
    assert.throws(() => store.node(64, 0), RangeError);
  });

  test('reopen after close keeps every record and hash; appends continue', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const opts: LedgerStoreOptions = { segmentBytes: 300, maxRecordBytes: 100 };
    const records = Array.from({ length: 57 }, (_, i) => rec(i));
    let store = await LedgerStore.open(dir, opts);
    for (let i = 0; i < 20; i++) await store.append(records[i]);
    await store.appendBatch(records.slice(20, 57));
    const root = store.root();
    await store.close();
    assert.ok(segFiles(dir, 'rec').length > 3, 'small segments roll');
    store = await LedgerStore.open(dir, { ...opts, verify: 'full' });
    assert.equal(store.recovery.truncatedBytes, 0);
    assert.equal(store.recovery.rebuiltHashes, 0);
    assert.equal(store.recovery.recoveryPoint, 57);
    assert.deepEqual(store.root(), root);
    assertContents(store, records);
    records.push(rec(57), rec(58));
    await store.appendBatch(records.slice(57));
    assertContents(store, records);
    const report = await store.verify();
    assert.equal(report.records, 59);
    assert.equal(report.nodes, 29 + 14 + 7 + 3 + 1, 'every stored interior node');
    await store.close();
  });

  test('closed stores refuse calls; close is idempotent', async (t) => {
    const store = await LedgerStore.open(path.join(tempDir(t), 'l'));
    await store.append(rec(0));
    await store.close();
    await store.close();
    throwsWith(() => store.read(0), 'KEEL_E_LEDGER_CLOSED');
    await rejectsWith(store.append(rec(1)), 'KEEL_E_LEDGER_CLOSED');
    await rejectsWith(store.sync(), 'KEEL_E_LEDGER_CLOSED');
  });

  test('bad options are RangeErrors naming the option', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    await assert.rejects(LedgerStore.open(dir, { durability: 'never' as 'record' }), /durability/);
    await assert.rejects(LedgerStore.open(dir, { intervalMs: 0 }), /intervalMs/);
    await assert.rejects(LedgerStore.open(dir, { maxRecordBytes: 0 }), /maxRecordBytes/);
    await assert.rejects(LedgerStore.open(dir, { segmentBytes: 100, maxRecordBytes: 100 }), /segmentBytes/);
    await assert.rejects(LedgerStore.open(dir, { maxBytes: -5 }), /maxBytes/);
    await assert.rejects(LedgerStore.open('', {}), TypeError);
    assert.equal(fs.existsSync(dir), false, 'nothing created');
  });

  test('a foreign directory or a newer format is refused', async (t) => {
    const base = tempDir(t);
    const foreign = path.join(base, 'foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'notes.txt'), 'hello');
    await rejectsWith(LedgerStore.open(foreign), 'KEEL_E_LEDGER_DIR');
    assert.deepEqual(fs.readdirSync(foreign), ['notes.txt']);
    const newer = path.join(base, 'newer');
    await (await LedgerStore.open(newer)).close();
    fs.writeFileSync(path.join(newer, 'FORMAT'), 'keel-ledger-store 2\n');
    await rejectsWith(LedgerStore.open(newer), 'KEEL_E_LEDGER_DIR');
    await rejectsWith(LedgerStore.open(path.join(base, 'missing'), { repair: false }), 'KEEL_E_LEDGER_DIR');
  });

  test('one writer at a time; a dead writer\'s LOCK is taken over; readers need no lock', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const a = await LedgerStore.open(dir);
    await a.append(rec(0));
    const err = await rejectsWith(LedgerStore.open(dir), 'KEEL_E_LEDGER_LOCKED');
    assert.equal(err.retryable, true);
    const reader = await LedgerStore.open(dir, { repair: false });
    assert.deepEqual(reader.read(0), rec(0));
    await reader.close();
    await a.close();
    fs.writeFileSync(path.join(dir, 'LOCK'), '999999 12345\n');
    const b = await LedgerStore.open(dir, { lockOwnerAlive: (o) => o.pid !== 999999 });
    assert.equal(b.recovery.staleLockPid, 999999);
    await b.close();
    fs.writeFileSync(path.join(dir, 'LOCK'), '4242 -\n');
    await rejectsWith(LedgerStore.open(dir, { lockOwnerAlive: () => true }), 'KEEL_E_LEDGER_LOCKED');
    // A torn LOCK (no complete line) names nobody.
    fs.writeFileSync(path.join(dir, 'LOCK'), '1');
    await (await LedgerStore.open(dir, { lockOwnerAlive: () => true })).close();
    // The real check: this process's pid with another start time is a recycled pid, not us.
    fs.writeFileSync(path.join(dir, 'LOCK'), `${process.ppid} 1\n`);
    const c = await LedgerStore.open(dir);
    assert.equal(c.recovery.staleLockPid, fs.existsSync('/proc/self/stat') ? process.ppid : undefined);
    assert.match(fs.readFileSync(path.join(dir, 'LOCK'), 'latin1'), new RegExp(`^${process.pid} (\\d+|-)\n$`));
    await c.close();
  });
});

// ------------------------------------------------------------------------------ recovery

describe('LedgerStore recovery', () => {
  /**
   * A crash state: 6 records below the recovery point (synced), 6 after it, the directory
   * copied while the store is open. Returns the copy's path and the frame offsets.
   */
  async function crashState(base: string) {
    const live = path.join(base, 'live');
    const store = await LedgerStore.open(live, { recoveryPointEvery: 1_000_000 });
    const records = Array.from({ length: 12 }, (_, i) => rec(i));
    await store.appendBatch(records.slice(0, 6));
    await store.sync();
    for (let i = 6; i < 12; i++) await store.append(records[i]);
    const snap = crashCopy(live, path.join(base, 'snap'));
    await store.close();
    const [recFile] = segFiles(snap, 'rec');
    const offsets: number[] = [];
    let pos = 0;
    for (const r of records) {
      offsets.push(pos);
      pos += r.length + 8;
    }
    assert.equal(fs.statSync(recFile).size, pos);
    return { snap, records, offsets, end: pos, recFile, idxFile: segFiles(snap, 'idx')[0] };
  }

  function variant(base: string, snap: string, name: string, damage: (dir: string) => void): string {
    const d = path.join(base, name);
    fs.cpSync(snap, d, { recursive: true });
    damage(d);
    return d;
  }

  async function reopenAndCheck(dir: string, expected: Buffer[]) {
    const store = await LedgerStore.open(dir);
    try {
      assertContents(store, expected);
      await store.verify();
      const rep = store.recovery;
      // appends continue where the records end, and the result survives a clean reopen
      assert.equal(await store.append(rec(100)), expected.length);
      await store.close();
      const again = await LedgerStore.open(dir, { verify: 'full' });
      assertContents(again, [...expected, rec(100)]);
      assert.equal(again.recovery.truncatedBytes, 0);
      await again.close();
      return rep;
    } finally {
      await store.close();
    }
  }

  test('the crash state itself recovers every record, re-deriving nothing that was written', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    const rep = await reopenAndCheck(s.snap, s.records);
    assert.equal(rep.recoveryPoint, 6);
    assert.equal(rep.truncatedBytes, 0);
    assert.equal(rep.rebuiltHashes, 0);
  });

  test('a record segment cut at every byte of its last frame loses only that record', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    const start = s.offsets[11];
    for (let cut = start; cut < s.end; cut++) {
      const d = variant(base, s.snap, `cut-${cut}`, (dir) => fs.truncateSync(path.join(dir, path.basename(s.recFile)), cut));
      const rep = await reopenAndCheck(d, s.records.slice(0, 11));
      assert.equal(rep.truncatedFrameBytes, cut - start, `cut at ${cut}`);
      assert.ok(rep.truncatedBytes >= cut - start);
      fs.rmSync(d, { recursive: true });
    }
  });

  test('an index file cut at any byte is re-derived from the frames', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    for (let cut = 6 * 4; cut < 12 * 4; cut++) {
      const d = variant(base, s.snap, `idx-${cut}`, (dir) => fs.truncateSync(path.join(dir, path.basename(s.idxFile)), cut));
      const rep = await reopenAndCheck(d, s.records);
      assert.equal(rep.rebuiltIndexEntries, 12 - Math.floor(cut / 4), `cut at ${cut}`);
      fs.rmSync(d, { recursive: true });
    }
  });

  test('hash files cut short are re-derived; hash files longer than the records are cut', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    for (const [level, from] of [
      [0, 6 * 32],
      [1, 3 * 32],
      [2, 1 * 32],
    ]) {
      const file = `hash-0${level}.bin`;
      const size = fs.statSync(path.join(s.snap, file)).size;
      for (let cut = from; cut < size; cut += 7) {
        const d = variant(base, s.snap, `h${level}-${cut}`, (dir) => fs.truncateSync(path.join(dir, file), cut));
        const rep = await reopenAndCheck(d, s.records);
        assert.ok(rep.rebuiltHashes >= Math.ceil((size - cut) / 32), `${file} cut at ${cut}: ${JSON.stringify(rep)}`);
        fs.rmSync(d, { recursive: true });
      }
    }
    // The last frame torn away but its hashes written: the hash files are longer than the records.
    const d = variant(base, s.snap, 'long', (dir) => {
      fs.truncateSync(path.join(dir, path.basename(s.recFile)), s.offsets[11] + 3);
      fs.appendFileSync(path.join(dir, 'hash-00.bin'), Buffer.alloc(64, 0xee));
    });
    const rep = await reopenAndCheck(d, s.records.slice(0, 11));
    // frame: 3 bytes; level 0: 1 real + 2 garbage entries past 11; level 1: entry 5 (leaves 10-11);
    // level 2: entry 2 (leaves 8-11); index: 1 entry
    assert.equal(rep.truncatedBytes, 3 + 3 * 32 + 32 + 32 + 4);
    // Garbage where a hash past the recovery point should be is replaced, not trusted.
    const g = variant(base, s.snap, 'garbage', (dir) => {
      const f = path.join(dir, 'hash-00.bin');
      const b = fs.readFileSync(f);
      b.fill(0, 8 * 32, 9 * 32);
      fs.writeFileSync(f, b);
    });
    const rep2 = await reopenAndCheck(g, s.records);
    assert.equal(rep2.replacedEntries, 1);
  });

  test('a checksum failure in the last frame is a torn tail; zeros after the last frame are cut', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    for (let at = s.offsets[11]; at < s.end; at++) {
      const d = variant(base, s.snap, `flip-${at}`, (dir) => flipByte(path.join(dir, path.basename(s.recFile)), at));
      const rep = await reopenAndCheck(d, s.records.slice(0, 11));
      assert.equal(rep.truncatedFrameBytes, s.end - s.offsets[11], `flip at ${at}`);
      fs.rmSync(d, { recursive: true });
    }
    const z = variant(base, s.snap, 'zeros', (dir) => fs.appendFileSync(path.join(dir, path.basename(s.recFile)), Buffer.alloc(4096)));
    const rep = await reopenAndCheck(z, s.records);
    assert.equal(rep.truncatedFrameBytes, 4096);
  });

  test('a bit flip in the middle is never accepted: open fails naming the record and file', async (t) => {
    const base = tempDir(t);
    const s = await crashState(base);
    const recName = path.basename(s.recFile);
    // Past the recovery point, valid frames follow the damaged one: corruption, not a tear.
    for (const i of [6, 8, 10]) {
      for (const delta of [0, 2, 6]) {
        const at = s.offsets[i] + delta;
        const d = variant(base, s.snap, `mid-${at}`, (dir) => flipByte(path.join(dir, recName), at));
        const before = fs.readFileSync(path.join(d, recName));
        const err = await rejectsWith(LedgerStore.open(d), 'KEEL_E_LEDGER_CORRUPT');
        assert.equal(err.index, i, err.message);
        assert.equal(err.file, recName);
        assert.equal(err.offset, s.offsets[i]);
        assert.match(err.message, new RegExp(`record ${i} is corrupt in .*${recName} at byte ${s.offsets[i]}`));
        assert.deepEqual(fs.readFileSync(path.join(d, recName)), before, 'nothing truncated');
        fs.rmSync(d, { recursive: true });
      }
    }
    // Below the recovery point (after a clean close, everything is): verify 'frames' finds it.
    const clean = path.join(base, 'clean');
    const store = await LedgerStore.open(clean);
    await store.appendBatch(s.records);
    await store.close();
    flipByte(segFiles(clean, 'rec')[0], s.offsets[3] + 5);
    const err = await rejectsWith(LedgerStore.open(clean), 'KEEL_E_LEDGER_CORRUPT');
    assert.equal(err.index, 3);
    assert.match(err.message, /checksum mismatch/);
    // verify 'tail' opens without reading it, but the record is never returned.
    const fast = await LedgerStore.open(clean, { verify: 'tail' });
    assert.deepEqual(fast.read(2), s.records[2]);
    assert.equal(throwsWith(() => fast.read(3), 'KEEL_E_LEDGER_CORRUPT').index, 3);
    await rejectsWith(fast.verify(), 'KEEL_E_LEDGER_CORRUPT');
    await fast.close();
    // read-only: opens, reports, and refuses the bad record only.
    const ro = await LedgerStore.open(clean, { repair: false });
    assert.equal(ro.recovery.corrupt?.index, 3);
    assert.equal(ro.size, 12);
    assert.deepEqual(ro.read(4), s.records[4]);
    throwsWith(() => ro.read(3), 'KEEL_E_LEDGER_CORRUPT');
    await rejectsWith(ro.append(rec(1)), 'KEEL_E_LEDGER_READONLY');
    await ro.close();
  });

  test('a damaged hash or index entry below the recovery point is caught by verify', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const records = Array.from({ length: 20 }, (_, i) => rec(i));
    const store = await LedgerStore.open(dir);
    await store.appendBatch(records);
    await store.close();
    flipByte(path.join(dir, 'hash-00.bin'), 13 * 32 + 1);
    const err = await rejectsWith(LedgerStore.open(dir, { verify: 'full' }), 'KEEL_E_LEDGER_CORRUPT');
    assert.equal(err.index, 13);
    assert.equal(err.file, 'seg-00000000000000000000.rec');
    assert.match(err.message, /leaf hash/);
    flipByte(path.join(dir, 'hash-00.bin'), 13 * 32 + 1);
    flipByte(path.join(dir, 'hash-02.bin'), 2 * 32);
    const err2 = await rejectsWith(LedgerStore.open(dir, { verify: 'full' }), 'KEEL_E_LEDGER_CORRUPT');
    assert.equal(err2.file, 'hash-02.bin');
    assert.equal(err2.index, 8);
    flipByte(path.join(dir, 'hash-02.bin'), 2 * 32);
    const idx = segFiles(dir, 'idx')[0];
    const b = fs.readFileSync(idx);
    b.writeUInt32BE(b.readUInt32BE(5 * 4) + 1, 5 * 4);
    fs.writeFileSync(idx, b);
    const err3 = await rejectsWith(LedgerStore.open(dir), 'KEEL_E_LEDGER_CORRUPT');
    assert.equal(err3.index, 5);
    assert.match(err3.message, /index entry/);
  });

  test('files missing below the recovery point are corruption, not a torn tail', async (t) => {
    const base = tempDir(t);
    const dir = path.join(base, 'l');
    const store = await LedgerStore.open(dir, { segmentBytes: 120, maxRecordBytes: 100 });
    for (let i = 0; i < 30; i++) await store.append(rec(i));
    await store.close();
    const recs = segFiles(dir, 'rec');
    const copy = (name: string) => fs.cpSync(dir, path.join(base, name), { recursive: true });
    copy('a');
    fs.rmSync(path.join(base, 'a', path.basename(recs[1])));
    assert.match((await rejectsWith(LedgerStore.open(path.join(base, 'a')), 'KEEL_E_LEDGER_CORRUPT')).message, /missing/);
    copy('b');
    fs.truncateSync(path.join(base, 'b', path.basename(recs[recs.length - 1])), 3);
    await rejectsWith(LedgerStore.open(path.join(base, 'b')), 'KEEL_E_LEDGER_CORRUPT');
    copy('c');
    fs.truncateSync(path.join(base, 'c', 'hash-01.bin'), 32);
    assert.match((await rejectsWith(LedgerStore.open(path.join(base, 'c')), 'KEEL_E_LEDGER_CORRUPT')).message, /level 1/);
    copy('d');
    fs.rmSync(path.join(base, 'd', 'FORMAT'));
    await rejectsWith(LedgerStore.open(path.join(base, 'd')), 'KEEL_E_LEDGER_CORRUPT');
  });

  test('read-only opens change nothing on disk and leave torn tails in place', async (t) => {
    const base = tempDir(t);
    const live = path.join(base, 'live');
    const store = await LedgerStore.open(live, { recoveryPointEvery: 1_000_000 });
    for (let i = 0; i < 9; i++) await store.append(rec(i));
    const snap = crashCopy(live, path.join(base, 'snap'));
    await store.close();
    const recFile = segFiles(snap, 'rec')[0];
    fs.truncateSync(recFile, fs.statSync(recFile).size - 2);
    fs.truncateSync(path.join(snap, 'hash-00.bin'), 5 * 32);
    const before = new Map(fs.readdirSync(snap).map((f) => [f, fs.readFileSync(path.join(snap, f))]));
    const ro = await LedgerStore.open(snap, { repair: false, verify: 'full' });
    assert.equal(ro.size, 8);
    assert.ok(ro.recovery.tornBytes > 0);
    assert.equal(ro.recovery.corrupt, undefined);
    assertContents(ro, Array.from({ length: 8 }, (_, i) => rec(i)));
    for (let l = 0; 2 ** l <= 8; l++) for (let i = 0; (i + 1) * 2 ** l <= 8; i++) ro.node(l, i);
    await ro.verify();
    await ro.sync(); // a no-op
    await ro.close();
    const after = new Map(fs.readdirSync(snap).map((f) => [f, fs.readFileSync(path.join(snap, f))]));
    assert.deepEqual(after, before);
  });

  test('a creation cut short (FORMAT or head alone) is created again; with records present it is corruption', async (t) => {
    const base = tempDir(t);
    for (const alone of ['FORMAT', 'head']) {
      const dir = path.join(base, alone);
      await (await LedgerStore.open(dir)).close();
      fs.rmSync(path.join(dir, alone === 'FORMAT' ? 'head' : 'FORMAT'));
      await rejectsWith(LedgerStore.open(dir, { repair: false }), 'KEEL_E_LEDGER_DIR');
      const store = await LedgerStore.open(dir);
      assert.deepEqual(store.recovery.removedFiles, [alone]);
      await store.append(rec(0));
      await store.close();
      const again = await LedgerStore.open(dir);
      assertContents(again, [rec(0)]);
      await again.close();
    }
    const dir = path.join(base, 'data');
    const store = await LedgerStore.open(dir);
    await store.append(rec(0));
    await store.close();
    fs.rmSync(path.join(dir, 'head'));
    assert.match((await rejectsWith(LedgerStore.open(dir), 'KEEL_E_LEDGER_CORRUPT')).message, /head/);
  });

  test('a head with both slots unreadable re-derives the tree from record 0', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const store = await LedgerStore.open(dir);
    await store.appendBatch(Array.from({ length: 10 }, (_, i) => rec(i)));
    await store.close();
    fs.writeFileSync(path.join(dir, 'head'), Buffer.alloc(128, 0x55));
    const again = await LedgerStore.open(dir);
    assert.equal(again.recovery.headReset, true);
    assertContents(again, Array.from({ length: 10 }, (_, i) => rec(i)));
    await again.close();
    const third = await LedgerStore.open(dir);
    assert.equal(third.recovery.headReset, false);
    assert.equal(third.recovery.recoveryPoint, 10);
    await third.close();
  });
});

// ------------------------------------------------------------------------------ durability

describe('LedgerStore durability modes', () => {
  function recSyncs(mfs: MemoryLedgerFs, log: string[]): void {
    mfs.onCall = (call, file) => {
      if (call === 'sync') log.push(path.basename(file));
    };
  }

  test('record: every append is fsynced before it resolves; concurrent appends share fsyncs', async () => {
    const mfs = new MemoryLedgerFs();
    const store = await LedgerStore.open('/mem/l', { fs: mfs, durability: 'record', recoveryPointEvery: 1_000_000 });
    const log: string[] = [];
    recSyncs(mfs, log);
    for (let i = 0; i < 5; i++) {
      const before = log.filter((f) => f.endsWith('.rec')).length;
      await store.append(rec(i));
      assert.equal(log.filter((f) => f.endsWith('.rec')).length, before + 1);
      assert.equal(store.durableSize, i + 1);
    }
    log.length = 0;
    const idx = await Promise.all(Array.from({ length: 20 }, (_, i) => store.append(rec(5 + i))));
    assert.deepEqual(idx, Array.from({ length: 20 }, (_, i) => 5 + i));
    const recSyncCount = log.filter((f) => f.endsWith('.rec')).length;
    assert.ok(recSyncCount >= 1 && recSyncCount < 20, `group commit: ${recSyncCount} fsyncs for 20 appends`);
    // Only the frames are synced per append; index and hashes wait for the recovery point.
    assert.ok(!log.some((f) => f.endsWith('.bin') || f.endsWith('.idx')));
    assertContents(store, Array.from({ length: 25 }, (_, i) => rec(i)));
    await store.close();
  });

  test('batch: one write per file and one fsync per appendBatch', async () => {
    const mfs = new MemoryLedgerFs();
    const store = await LedgerStore.open('/mem/l', { fs: mfs, durability: 'batch', recoveryPointEvery: 1_000_000 });
    await store.append(rec(0));
    const writes: string[] = [];
    const syncs: string[] = [];
    mfs.onCall = (call, file) => {
      if (call === 'write') writes.push(path.basename(file));
      if (call === 'sync') syncs.push(path.basename(file));
    };
    await store.appendBatch(Array.from({ length: 500 }, (_, i) => rec(1 + i)));
    assert.deepEqual(syncs, ['seg-00000000000000000000.rec']);
    assert.equal(new Set(writes).size, writes.length, `one write per file: ${writes.join(' ')}`);
    assert.ok(writes.includes('seg-00000000000000000000.idx') && writes.includes('hash-00.bin') && writes.includes('hash-08.bin'));
    assert.equal(store.durableSize, 501);
    await store.close();
  });

  test('interval: appends resolve unsynced; the named timer fsyncs after intervalMs; sync() and close() fsync', async () => {
    const mfs = new MemoryLedgerFs();
    const clock = new FakeClock();
    const store = await LedgerStore.open('/mem/l', { fs: mfs, durability: 'interval', intervalMs: 250, clock });
    let syncs = 0;
    mfs.onCall = (call) => {
      if (call === 'sync') syncs++;
    };
    for (let i = 0; i < 10; i++) await store.append(rec(i));
    assert.equal(syncs, 0);
    assert.equal(store.size, 10);
    assert.equal(store.durableSize, 0);
    assert.deepEqual(clock.pending(), ['ledger-store.sync']);
    assert.deepEqual(store.read(9), rec(9), 'readable before it is durable');
    await clock.advanceAsync(249);
    assert.equal(syncs, 0);
    await clock.advanceAsync(1);
    for (let i = 0; i < 10 && store.durableSize < 10; i++) await new Promise((r) => setImmediate(r));
    assert.equal(store.durableSize, 10);
    assert.ok(syncs >= 1);
    assert.deepEqual(clock.pending(), [], 'no timer while idle');
    await store.appendBatch([rec(10), rec(11)]);
    assert.equal(store.durableSize, 10);
    await store.sync();
    assert.equal(store.durableSize, 12);
    await store.append(rec(12));
    const before = syncs;
    await store.close();
    assert.ok(syncs > before, 'close fsyncs');
    assert.deepEqual(clock.pending(), []);
  });

  test('interval: a failing background fsync is reported and fails the store', async () => {
    const mfs = new MemoryLedgerFs();
    const clock = new FakeClock();
    const errors: LedgerStoreError[] = [];
    const store = await LedgerStore.open('/mem/l', { fs: mfs, durability: 'interval', intervalMs: 100, clock, onError: (e) => errors.push(e) });
    await store.append(rec(0));
    mfs.failNext('sync', 'EIO');
    await clock.advanceAsync(100);
    for (let i = 0; i < 10 && errors.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'KEEL_E_LEDGER_IO');
    await rejectsWith(store.append(rec(1)), 'KEEL_E_LEDGER_IO');
    await store.close();
  });

  test('power cuts at random moments lose no record whose append resolved (record, batch) or that was synced (interval)', async () => {
    for (let seed = 1; seed <= 150; seed++) {
      const rnd = seeded(seed);
      const mode = (['record', 'batch', 'interval'] as const)[seed % 3];
      const mfs = new MemoryLedgerFs();
      const clock = new FakeClock();
      const opts: LedgerStoreOptions = { fs: mfs, durability: mode, clock, intervalMs: 50, segmentBytes: 256, maxRecordBytes: 100, recoveryPointEvery: 1 + Math.floor(rnd() * 12) };
      const resolved: number[] = [];
      let cut: MemoryLedgerFs | undefined;
      let mustSurvive = 0;
      // Some cuts land while the store is being created.
      let countdown = 1 + Math.floor(rnd() * (seed % 10 === 0 ? 12 : 300));
      let store: LedgerStore | undefined;
      mfs.onCall = () => {
        if (cut || --countdown > 0) return;
        cut = mfs.powerCut({ random: rnd });
        mustSurvive = !store ? 0 : mode === 'interval' ? store.durableSize : resolved.length === 0 ? 0 : Math.max(...resolved) + 1;
      };
      const live = await LedgerStore.open('/mem/l', opts);
      store = live;
      let next = 0;
      for (let step = 0; step < 40 && !cut; step++) {
        const r = rnd();
        if (r < 0.4) {
          const i = next++;
          resolved.push(await live.append(rec(i)));
        } else if (r < 0.7) {
          const k = 1 + Math.floor(rnd() * 6);
          const first = await live.appendBatch(Array.from({ length: k }, (_, j) => rec(next + j)));
          assert.equal(first, next);
          next += k;
          for (let j = 0; j < k; j++) resolved.push(first + j);
        } else if (r < 0.85) {
          const ps = [0, 1, 2].map(() => live.append(rec(next++)));
          resolved.push(...(await Promise.all(ps)));
        } else if (r < 0.92) {
          await live.sync();
        } else if (r < 0.96) {
          await live.pruneBefore(Math.floor(live.size / 2));
        } else {
          await clock.advanceAsync(60);
        }
      }
      if (!cut) {
        cut = mfs.powerCut({ random: rnd });
        mustSurvive = mode === 'interval' ? live.durableSize : live.size;
      }
      await live.close();
      let after: LedgerStore;
      try {
        after = await LedgerStore.open('/mem/l', { ...opts, fs: cut, verify: 'full' });
      } catch (err) {
        assert.fail(`seed ${seed} (${mode}): reopen after the power cut failed: ${(err as Error).message}`);
      }
      assert.ok(after.size >= mustSurvive, `seed ${seed} (${mode}): ${after.size} records after the cut, ${mustSurvive} were durable`);
      const expected = Array.from({ length: after.size }, (_, i) => rec(i));
      assertContents(after, expected);
      assert.equal(await after.append(rec(after.size)), expected.length);
      await after.verify();
      await after.close();
    }
  });
});

// ------------------------------------------------------------------------------ full disk

describe('LedgerStore full disk and disk bound', () => {
  test('ENOSPC rejects with a retryable error, leaves nothing half-written, and appends work once space frees', async () => {
    const mfs = new MemoryLedgerFs();
    const store = await LedgerStore.open('/mem/l', { fs: mfs, segmentBytes: 400, maxRecordBytes: 100 });
    const records: Buffer[] = [];
    for (let i = 0; i < 10; i++) records.push(rec(i));
    await store.appendBatch(records);
    const usedBefore = mfs.usedBytes();
    let full = 0;
    for (let room = 0; room < 300; room += 5) {
      mfs.capacity = usedBefore + room;
      const size = store.size;
      try {
        const batch = [rec(size), rec(size + 1), rec(size + 2)];
        await store.appendBatch(batch);
        records.push(...batch);
      } catch (err) {
        full++;
        assert.ok(err instanceof LedgerStoreError && err.code === 'KEEL_E_LEDGER_FULL' && err.retryable, String(err));
        assert.equal(store.size, size);
      }
      assertContents(store, records);
      assert.equal(mfs.usedBytes() - mfs.contents('/mem/l/LOCK')!.length, store.bytes, 'files hold exactly the committed bytes');
      mfs.capacity = undefined;
      // With room again, the same store appends and stays consistent.
      records.push(rec(records.length));
      await store.append(records[records.length - 1]);
      assertContents(store, records);
    }
    assert.ok(full > 10, `ENOSPC was hit (${full} times)`);
    await store.verify();
    await store.close();
    const again = await LedgerStore.open('/mem/l', { fs: mfs, segmentBytes: 400, maxRecordBytes: 100, verify: 'full' });
    assertContents(again, records);
    assert.equal(again.recovery.truncatedBytes, 0);
    await again.close();
  });

  test('ENOSPC on a real 1 MiB tmpfs', async (t) => {
    const mnt = tempDir(t);
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (err) {
      t.skip(`cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): ${(err as Error).message.split('\n')[0]}; the in-memory ENOSPC test covers the logic`);
      return;
    }
    const open: LedgerStore[] = [];
    // Close whatever is still open first, so a failing assertion cannot keep the mount busy.
    t.after(async () => {
      for (const s of open) await s.close().catch(() => {});
      try {
        execFileSync('umount', [mnt], { stdio: 'pipe' });
      } catch {
        execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
      }
    });
    const dir = path.join(mnt, 'l');
    const store = await LedgerStore.open(dir, { durability: 'batch', segmentBytes: 256 * 1024, maxRecordBytes: 64 * 1024 });
    open.push(store);
    const big = (i: number) => Buffer.from(JSON.stringify({ i, pad: 'y'.repeat(2000) }));
    const records: Buffer[] = [];
    let err: unknown;
    try {
      for (let i = 0; i < 2000; i++) {
        await store.appendBatch([big(i * 2), big(i * 2 + 1)]);
        records.push(big(i * 2), big(i * 2 + 1));
      }
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof LedgerStoreError, `expected ENOSPC, got ${err}`);
    assert.equal(err.code, 'KEEL_E_LEDGER_FULL');
    assert.equal(err.retryable, true);
    assertContents(store, records);
    await store.verify();
    execFileSync('mount', ['-o', 'remount,size=2m', mnt]);
    await store.appendBatch([big(records.length), big(records.length + 1)]);
    records.push(big(records.length), big(records.length + 1));
    await store.close();
    const again = await LedgerStore.open(dir, { verify: 'full' });
    open.push(again);
    assertContents(again, records);
    assert.equal(again.recovery.truncatedBytes, 0);
    await again.close();
  });

  test('maxBytes bounds the store: appends past it are refused, retryable, and pruning makes room', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const opts = { maxBytes: 6000, segmentBytes: 1000, maxRecordBytes: 100 };
    const store = await LedgerStore.open(dir, opts);
    const records: Buffer[] = [];
    let err: LedgerStoreError | undefined;
    for (let i = 0; i < 1000 && !err; i++) {
      try {
        await store.append(rec(i));
        records.push(rec(i));
      } catch (e) {
        err = e as LedgerStoreError;
      }
    }
    assert.equal(err?.code, 'KEEL_E_LEDGER_FULL');
    assert.equal(err?.retryable, true);
    assert.ok(store.bytes <= 6000, `${store.bytes} bytes`);
    const onDisk = fs.readdirSync(dir).filter((f) => f !== 'LOCK').reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
    assert.equal(store.bytes, onDisk);
    assertContents(store, records);
    await store.pruneBefore(Math.floor(records.length / 2));
    records.push(rec(records.length));
    await store.append(records[records.length - 1]);
    assertContents(store, records);
    await store.close();
  });

  test('a failing fsync fails the store until it is reopened', async () => {
    const mfs = new MemoryLedgerFs();
    const store = await LedgerStore.open('/mem/l', { fs: mfs });
    await store.append(rec(0));
    mfs.failNext('sync', 'EIO');
    const err = await rejectsWith(store.append(rec(1)), 'KEEL_E_LEDGER_IO');
    assert.equal(err.retryable, false);
    await rejectsWith(store.append(rec(1)), 'KEEL_E_LEDGER_IO');
    await store.close();
    const again = await LedgerStore.open('/mem/l', { fs: mfs });
    assert.ok(again.size === 1 || again.size === 2);
    assertContents(again, Array.from({ length: again.size }, (_, i) => rec(i)));
    await again.close();
  });
});

// ------------------------------------------------------------------------------ pruning

describe('LedgerStore pruning', () => {
  test('pruneBefore drops whole segments, keeps every hash, and read() of a pruned index is a clear error', async (t) => {
    const dir = path.join(tempDir(t), 'l');
    const opts = { segmentBytes: 200, maxRecordBytes: 100 };
    const store = await LedgerStore.open(dir, opts);
    const records = Array.from({ length: 60 }, (_, i) => rec(i));
    await store.appendBatch(records);
    const leaves = leavesOf(records);
    const segsBefore = segFiles(dir, 'rec').length;
    const bytesBefore = store.bytes;
    assert.equal(await store.pruneBefore(0), 0);
    const first = await store.pruneBefore(30);
    assert.ok(first > 0 && first <= 30, `firstAvailable ${first}`);
    assert.equal(store.firstAvailable, first);
    assert.ok(segFiles(dir, 'rec').length < segsBefore);
    assert.ok(store.bytes < bytesBefore);
    const err = throwsWith(() => store.read(first - 1), 'KEEL_E_LEDGER_PRUNED');
    assert.equal(err.index, first - 1);
    assert.deepEqual(store.read(first), records[first]);
    // Hashes for pruned records are kept: every node and every old root still answers.
    for (let l = 0; 2 ** l <= 60; l++) for (let i = 0; (i + 1) * 2 ** l <= 60; i++) assert.deepEqual(store.node(l, i), mth(leaves.slice(i * 2 ** l, (i + 1) * 2 ** l)));
    for (let m = 0; m <= 60; m++) assert.deepEqual(store.root(m), mth(leaves.slice(0, m)));
    await store.append(rec(60));
    records.push(rec(60));
    const report = await store.verify();
    assert.equal(report.prunedLeaves, first);
    assert.equal(report.records, 61 - first);
    // Everything prunable: the newest segment stays.
    const last = await store.pruneBefore(store.size);
    assert.ok(last < store.size);
    assert.deepEqual(store.read(60), rec(60));
    await store.close();
    const again = await LedgerStore.open(dir, { ...opts, verify: 'full' });
    assert.equal(again.firstAvailable, last);
    assertContents(again, records);
    throwsWith(() => again.read(0), 'KEEL_E_LEDGER_PRUNED');
    await again.close();
    await assert.rejects(store.pruneBefore(-1), RangeError);
  });

  test('an interrupted prune is finished on open; a segment missing without a prune is corruption', async (t) => {
    const base = tempDir(t);
    const dir = path.join(base, 'l');
    const opts = { segmentBytes: 200, maxRecordBytes: 100 };
    const store = await LedgerStore.open(dir, opts);
    await store.appendBatch(Array.from({ length: 40 }, (_, i) => rec(i)));
    await store.sync();
    const saved = path.join(base, 'saved');
    fs.cpSync(dir, saved, { recursive: true });
    const first = await store.pruneBefore(25);
    await store.close();
    // Put the deleted files back, as if the crash came right after the head was written.
    for (const f of fs.readdirSync(saved)) if (f.startsWith('seg-') && !fs.existsSync(path.join(dir, f))) fs.copyFileSync(path.join(saved, f), path.join(dir, f));
    const again = await LedgerStore.open(dir, opts);
    assert.ok(again.recovery.removedFiles.length >= 2, JSON.stringify(again.recovery.removedFiles));
    assert.equal(again.firstAvailable, first);
    await again.close();
    // Deleting the oldest segment by hand is not a prune: the head says nothing was pruned.
    fs.rmSync(segFiles(saved, 'rec')[0]);
    fs.rmSync(segFiles(saved, 'idx')[0]);
    fs.rmSync(path.join(saved, 'LOCK'), { force: true });
    const err = await rejectsWith(LedgerStore.open(saved, opts), 'KEEL_E_LEDGER_CORRUPT');
    assert.equal(err.index, 0);
  });
});
