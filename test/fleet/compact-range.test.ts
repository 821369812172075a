import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { CompactRange } from '../../fleet/compact-range.ts';
import { rootFromLeaves, MemoryTree, rootAt } from '../../runtime/ledger/merkle.ts';
import { EMPTY_ROOT, leafHash } from '../../runtime/ledger/hash.ts';

const leaves = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => leafHash(Buffer.from(`record ${i}`)));

test('root equals rootFromLeaves for every size 0..300, appending one leaf at a time', () => {
  const all = leaves(300);
  const r = new CompactRange();
  assert.deepEqual(r.root(), EMPTY_ROOT);
  for (let n = 1; n <= 300; n++) {
    r.append(all[n - 1]);
    assert.equal(r.size, n);
    assert.deepEqual(r.root(), rootFromLeaves(all.slice(0, n)), `size ${n}`);
    // The frontier has one hash per set bit of the size.
    assert.equal(r.frontier.length, n.toString(2).split('').filter((b) => b === '1').length);
  }
});

test('serialization round-trips for every size 0..300 and extends identically', () => {
  const all = leaves(310);
  for (let n = 0; n <= 300; n++) {
    const r = CompactRange.of(all.slice(0, n));
    const bytes = r.toBytes();
    assert.equal(bytes.length, 8 + 32 * r.frontier.length);
    const back = CompactRange.fromBytes(bytes);
    assert.equal(back.size, n);
    assert.deepEqual(back.root(), r.root());
    back.appendAll(all.slice(n, n + 10));
    assert.deepEqual(back.root(), rootFromLeaves(all.slice(0, n + 10)), `restored at ${n}, extended by 10`);
    // The original is untouched by extending the restored copy.
    assert.deepEqual(r.root(), rootFromLeaves(all.slice(0, n)));
  }
});

test('random larger sizes, split at random points, agree with the stored-subtree tree', () => {
  for (let round = 0; round < 8; round++) {
    const n = 300 + Math.floor(Math.random() * 20_000);
    const all = Array.from({ length: n }, () => randomBytes(32));
    const tree = new MemoryTree();
    for (const l of all) tree.appendLeafHash(l);
    const cut = Math.floor(Math.random() * n);
    const r = CompactRange.of(all.slice(0, cut));
    const c = r.clone();
    c.appendAll(all.slice(cut));
    const want = rootFromLeaves(all);
    assert.deepEqual(c.root(), want, `n=${n} cut=${cut}`);
    assert.deepEqual(r.root(), rootFromLeaves(all.slice(0, cut)));
    assert.deepEqual(rootAt(n, tree), want);
  }
});

test('appendOwned agrees with append', () => {
  const all = leaves(100);
  const a = new CompactRange();
  const b = new CompactRange();
  for (const l of all) {
    a.append(l);
    b.appendOwned(Buffer.from(l));
    assert.deepEqual(a.root(), b.root());
  }
  assert.throws(() => b.appendOwned(new Uint8Array(32) as Buffer), TypeError);
});

test('bad input is refused with clear errors', () => {
  assert.throws(() => new CompactRange(-1), RangeError);
  assert.throws(() => new CompactRange(3, [randomBytes(32)]), /size 3 has 2 hashes/);
  assert.throws(() => new CompactRange(1, [randomBytes(31)]), /32-byte/);
  assert.throws(() => new CompactRange().append(Buffer.alloc(5)), TypeError);
  assert.throws(() => CompactRange.fromBytes(Buffer.alloc(3)), /8-byte size/);
  const b = CompactRange.of(leaves(5)).toBytes();
  assert.throws(() => CompactRange.fromBytes(b.subarray(0, b.length - 1)), /must be 72 bytes/);
  const huge = Buffer.alloc(8);
  huge.writeBigUInt64BE(1n << 60n);
  assert.throws(() => CompactRange.fromBytes(huge), /exceeds/);
});
