import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { EMPTY_ROOT, leafHash, nodeHash } from '../../runtime/ledger/hash.ts';
import {
  consistencyProof,
  inclusionProof,
  MemoryTree,
  rootAt,
  rootFromLeaves,
  verifyConsistency,
  verifyInclusion,
  type SubtreeHashes,
} from '../../runtime/ledger/merkle.ts';

const vectors = (name: string) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url), 'utf8'));
const rfc6962 = vectors('rfc6962-merkle.json');
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const b64 = (s: string) => Buffer.from(s, 'base64'); // test data only; "" gives an empty buffer

function standardTree(size = 8): MemoryTree {
  const t = new MemoryTree();
  for (const l of (rfc6962.leaves as string[]).slice(0, size)) t.append(Buffer.from(l, 'hex'));
  return t;
}

// The RFC 6962 2.1 definitions, written as recursively as the RFC writes them: the oracle.
function mth(d: Buffer[]): Buffer {
  if (d.length === 0) return Buffer.from(EMPTY_ROOT);
  if (d.length === 1) return d[0];
  let k = 1;
  while (k * 2 < d.length) k *= 2;
  return nodeHash(mth(d.slice(0, k)), mth(d.slice(k)));
}
function path(m: number, d: Buffer[]): Buffer[] {
  if (d.length === 1) return [];
  let k = 1;
  while (k * 2 < d.length) k *= 2;
  return m < k ? [...path(m, d.slice(0, k)), mth(d.slice(k))] : [...path(m - k, d.slice(k)), mth(d.slice(0, k))];
}
function subproof(m: number, d: Buffer[], b: boolean): Buffer[] {
  if (m === d.length) return b ? [] : [mth(d)];
  let k = 1;
  while (k * 2 < d.length) k *= 2;
  return m <= k ? [...subproof(m, d.slice(0, k), b), mth(d.slice(k))] : [...subproof(m - k, d.slice(k), false), mth(d.slice(0, k))];
}

const flip = (h: Uint8Array, bit = 0) => {
  const c = Buffer.from(h);
  c[bit >> 3] ^= 1 << (bit & 7);
  return c;
};

test('the eight standard leaves: every node hash, every prefix root, the 8-leaf root 5dc9da79...', () => {
  const tree = standardTree();
  assert.equal(hex(tree.root()), '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328');
  (rfc6962.nodeHashes as string[][]).forEach((row, level) =>
    row.forEach((h, i) => assert.equal(hex(tree.node(level, i)), h, `node(${level}, ${i})`)),
  );
  const leafHashes = (rfc6962.leaves as string[]).map((l) => leafHash(Buffer.from(l, 'hex')));
  (rfc6962.rootHashes as string[]).forEach((h, size) => {
    assert.equal(hex(rootAt(size, tree)), h, `rootAt(${size})`);
    assert.equal(hex(tree.root(size)), h);
    assert.equal(hex(rootFromLeaves(leafHashes.slice(0, size))), h, `rootFromLeaves(${size})`);
    assert.equal(hex(standardTree(size).root()), h, `a tree of exactly ${size} leaves`);
  });
});

test('transparency-dev inclusion vectors: verification matches wantErr; our proofs equal the happy paths', () => {
  const tree = standardTree();
  for (const c of vectors('transparency-dev-inclusion.json').cases) {
    const proof = ((c.proof ?? []) as string[]).map(b64);
    const ok = verifyInclusion(b64(c.leafHash), c.leafIdx, c.treeSize, proof, b64(c.root));
    assert.equal(ok, !c.wantErr, `${c.file}: ${c.desc}`);
    if (!c.wantErr) {
      assert.deepEqual(inclusionProof(c.leafIdx, c.treeSize, tree).map(hex), proof.map(hex), c.file);
      assert.equal(hex(leafHash(Buffer.from(rfc6962.leaves[c.leafIdx], 'hex'))), hex(b64(c.leafHash)));
    }
  }
});

test('transparency-dev consistency vectors: verification matches wantErr; our proofs equal the happy paths', () => {
  const tree = standardTree();
  for (const c of vectors('transparency-dev-consistency.json').cases) {
    const proof = ((c.proof ?? []) as string[]).map(b64);
    const ok = verifyConsistency(c.size1, c.size2, proof, b64(c.root1), b64(c.root2));
    assert.equal(ok, !c.wantErr, `${c.file}: ${c.desc}`);
    if (!c.wantErr) assert.deepEqual(consistencyProof(c.size1, c.size2, tree).map(hex), proof.map(hex), c.file);
  }
});

test('every (index, size) up to 64: proofs equal RFC 6962 PATH, verify, and every tampering fails', () => {
  const tree = new MemoryTree();
  const leaves: Buffer[] = [];
  for (let i = 0; i < 64; i++) {
    tree.append(Buffer.from(`record ${i}`));
    leaves.push(leafHash(Buffer.from(`record ${i}`)));
  }
  for (let n = 1; n <= 64; n++) {
    const d = leaves.slice(0, n);
    const root = rootAt(n, tree);
    assert.equal(hex(root), hex(mth(d)), `root ${n}`);
    for (let m = 0; m < n; m++) {
      const p = inclusionProof(m, n, tree);
      assert.deepEqual(p.map(hex), path(m, d).map(hex), `PATH(${m}, ${n})`);
      assert.ok(verifyInclusion(d[m], m, n, p, root), `verify ${m}/${n}`);
      assert.equal(verifyInclusion(d[m], n + m, n, p, root), false, 'index beyond size');
      if (n > 1) assert.equal(verifyInclusion(d[m], (m + 1) % n, n, p, root), false, `wrong index ${m}/${n}`);
      if (n > 1) assert.equal(verifyInclusion(d[(m + 1) % n], m, n, p, root), false, 'wrong leaf');
      assert.equal(verifyInclusion(d[m], m, n, p, flip(root, m)), false, 'wrong root');
      p.forEach((_, j) => {
        const bad = [...p];
        bad[j] = flip(bad[j], (j * 37 + m) % 256);
        assert.equal(verifyInclusion(d[m], m, n, bad, root), false, `flipped proof[${j}] ${m}/${n}`);
      });
      if (p.length > 0) assert.equal(verifyInclusion(d[m], m, n, p.slice(0, -1), root), false, 'truncated');
      assert.equal(verifyInclusion(d[m], m, n, [...p, root], root), false, 'extended');
      assert.equal(verifyInclusion(d[m], m, n, [root, ...p], root), false, 'prefixed');
    }
  }
});

test('every 0 <= m <= n <= 64: consistency proofs equal RFC 6962 PROOF, verify, and tampering fails', () => {
  const tree = new MemoryTree();
  const leaves: Buffer[] = [];
  for (let i = 0; i < 64; i++) leaves.push(leafHash(Buffer.from([i, i ^ 0x5a])));
  leaves.forEach((h) => tree.appendLeafHash(h));
  const roots = Array.from({ length: 65 }, (_, n) => rootAt(n, tree));
  for (let n = 0; n <= 64; n++) {
    for (let m = 0; m <= n; m++) {
      const p = consistencyProof(m, n, tree);
      const expected = m === 0 || m === n ? [] : subproof(m, leaves.slice(0, n), true);
      assert.deepEqual(p.map(hex), expected.map(hex), `PROOF(${m}, ${n})`);
      assert.ok(verifyConsistency(m, n, p, roots[m], roots[n]), `verify ${m}->${n}`);
      if (m < n) {
        assert.equal(verifyConsistency(n, m, p, roots[n], roots[m]), false, 'reversed sizes');
        if (m > 0) assert.equal(verifyConsistency(m, n, p, roots[n], roots[m]), false, 'swapped roots');
        // Every tree extends the empty tree, so with m == 0 there is no new root to check.
        if (m > 0) assert.equal(verifyConsistency(m, n, p, roots[m], flip(roots[n])), false, 'wrong new root');
        if (m > 0) assert.equal(verifyConsistency(m, n, p, flip(roots[m]), roots[n]), false, 'wrong old root');
        p.forEach((_, j) => {
          const bad = [...p];
          bad[j] = flip(bad[j], (j * 11 + n) % 256);
          assert.equal(verifyConsistency(m, n, bad, roots[m], roots[n]), false, `flipped proof[${j}] ${m}->${n}`);
        });
        if (p.length > 0) assert.equal(verifyConsistency(m, n, p.slice(0, -1), roots[m], roots[n]), false, 'truncated');
        assert.equal(verifyConsistency(m, n, [...p, roots[n]], roots[m], roots[n]), false, 'extended');
      } else {
        assert.equal(verifyConsistency(m, n, [roots[n]], roots[m], roots[n]), false, 'm == n with a non-empty proof');
        if (n > 0) assert.equal(verifyConsistency(m, n, [], roots[m], flip(roots[n])), false, 'm == n with different roots');
      }
    }
  }
  // Old size 0: only the empty proof from the empty tree's hash.
  assert.ok(verifyConsistency(0, 10, [], EMPTY_ROOT, roots[10]));
  assert.equal(verifyConsistency(0, 10, [], roots[3], roots[10]), false, 'size 0 needs the empty-tree root');
  assert.equal(verifyConsistency(0, 10, [roots[10]], EMPTY_ROOT, roots[10]), false, 'size 0 takes no proof');
});

/**
 * A tree of 2^53-ish identical leaves: every perfect subtree at one level has the same hash,
 * so the hash source is consistent without storing anything, and counts its reads.
 */
class UniformTree implements SubtreeHashes {
  reads = 0;
  private readonly levels: Buffer[] = [leafHash(Buffer.from('same'))];
  constructor(readonly size: number) {
    for (let l = 1; l < 54; l++) this.levels.push(nodeHash(this.levels[l - 1], this.levels[l - 1]));
  }
  node(level: number, index: number): Buffer {
    this.reads++;
    assert.ok((index + 1) * 2 ** level <= this.size, `read of incomplete subtree (${level}, ${index})`);
    return this.levels[level];
  }
}

test('roots and proofs cost O(log n) node reads and stay exact beyond 2^32 leaves', () => {
  for (const size of [2 ** 40 + 12345, 2 ** 52 - 1, Number.MAX_SAFE_INTEGER]) {
    const t = new UniformTree(size);
    const root = rootAt(size, t);
    assert.ok(t.reads <= 54, `rootAt read ${t.reads} nodes`);
    for (const index of [0, 2 ** 33 + 7, size - 1]) {
      t.reads = 0;
      const p = inclusionProof(index, size, t);
      assert.ok(t.reads <= 2 * 54, `inclusionProof read ${t.reads} nodes`);
      assert.ok(verifyInclusion(t.node(0, 0), index, size, p, root), `inclusion ${index}/${size}`);
    }
    for (const old of [1, 2 ** 32 + 1, size - 1]) {
      t.reads = 0;
      const p = consistencyProof(old, size, t);
      assert.ok(t.reads <= 3 * 54, `consistencyProof read ${t.reads} nodes`);
      assert.ok(verifyConsistency(old, size, p, rootAt(old, t), root), `consistency ${old}->${size}`);
    }
  }
});

test('bad arguments: RangeError/TypeError naming the parameter; malformed proof hashes just fail', () => {
  const tree = standardTree();
  assert.throws(() => rootAt(9, tree), /rootAt: size 9 exceeds the 8 leaves/);
  assert.throws(() => rootAt(-1, tree), (e: Error) => e instanceof RangeError && /size must be a non-negative safe integer/.test(e.message));
  assert.throws(() => inclusionProof(8, 8, tree), /index 8 is not below size 8/);
  assert.throws(() => inclusionProof(0, 0, tree), RangeError);
  assert.throws(() => inclusionProof(1.5, 8, tree), /index must be a non-negative safe integer/);
  assert.throws(() => consistencyProof(5, 4, tree), /old size 5 exceeds new size 4/);
  assert.throws(() => consistencyProof(1, 9, tree), /exceeds the 8 leaves/);
  assert.throws(() => verifyInclusion(EMPTY_ROOT, -1, 8, [], EMPTY_ROOT), RangeError);
  assert.throws(() => verifyInclusion(EMPTY_ROOT, 0, 2 ** 53, [], EMPTY_ROOT), /size must be a non-negative safe integer/);
  assert.throws(() => verifyConsistency(1, 2, 'x' as unknown as Buffer[], EMPTY_ROOT, EMPTY_ROOT), TypeError);
  assert.throws(() => tree.node(3, 1), /no complete subtree at level 3, index 1/);
  assert.throws(() => tree.node(0, 8), RangeError);
  assert.throws(() => tree.appendLeafHash(Buffer.alloc(31)), TypeError);
  assert.throws(() => rootFromLeaves([Buffer.alloc(32), Buffer.alloc(3)]), /leafHashes\[1\] is not a 32-byte hash/);
  const p = inclusionProof(3, 8, tree);
  assert.equal(verifyInclusion(tree.node(0, 3), 3, 8, [...p.slice(0, 2), Buffer.alloc(31)], tree.root()), false);
  assert.equal(verifyInclusion(tree.node(0, 3).subarray(1), 3, 8, p, tree.root()), false);
  // What comes back through the SubtreeHashes slot is checked too.
  const broken: SubtreeHashes = { size: 4, node: () => Buffer.alloc(31) };
  assert.throws(() => rootAt(3, broken), /returned 31 bytes, expected 32/);
  assert.equal(hex(rootAt(0, broken)), hex(createHash('sha256').digest()));
});
