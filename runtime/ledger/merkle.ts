/**
 * RFC 6962 / RFC 9162 Merkle tree hashes and proofs over stored perfect-subtree hashes.
 *
 * The store keeps, for every level l, the hash of each complete perfect subtree of 2^l leaves
 * (`node(l, i)` covers leaves [i*2^l, (i+1)*2^l)). Any range the RFC 6962 recursion visits is
 * either such a perfect subtree (its start is a multiple of its size) or lies on the right
 * spine of the tree, where it is composed from at most log2(n) perfect subtrees. A proof
 * touches at most two such composed ranges, so roots and proofs cost O(log n) reads of
 * `node()`, never a rebuild.
 *
 * All sizes and indexes are leaf counts held in JavaScript numbers: safe integers (< 2^53).
 * Bit tests use arithmetic, never 32-bit operators.
 */
import { EMPTY_ROOT, HASH_SIZE, leafHash, nodeHash, splitPoint } from './hash.ts';

/**
 * A source of stored subtree hashes. `node(level, index)` must return the hash of the perfect
 * subtree of 2^level leaves starting at leaf index*2^level (level 0: the leaf hashes), for
 * every subtree complete within the first `size` leaves.
 */
export interface SubtreeHashes {
  /** Number of leaves the source covers. */
  readonly size: number;
  /** Hash of the perfect subtree at `level` and horizontal `index`, 32 bytes. */
  node(level: number, index: number): Buffer;
}

function checkCount(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`${name} must be a non-negative safe integer, got ${typeof v === 'number' ? v : typeof v}`);
  }
  return v;
}

function checkSource(hashes: SubtreeHashes, needed: number, fn: string): void {
  if (!hashes || typeof hashes.node !== 'function') throw new TypeError(`${fn}: hashes must implement SubtreeHashes`);
  if (needed > hashes.size) throw new RangeError(`${fn}: size ${needed} exceeds the ${hashes.size} leaves the hash source holds`);
}

function isPowerOfTwo(n: number): boolean {
  let k = 1;
  while (k < n) k *= 2;
  return k === n;
}

/** Reads node(level, index) and checks what came back through the slot is a 32-byte hash. */
function readNode(hashes: SubtreeHashes, level: number, index: number): Buffer {
  const h: unknown = hashes.node(level, index);
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
    throw new TypeError(`SubtreeHashes.node(${level}, ${index}) returned ${h instanceof Uint8Array ? `${h.length} bytes` : typeof h}, expected ${HASH_SIZE} bytes`);
  }
  return Buffer.isBuffer(h) ? h : Buffer.from(h.buffer, h.byteOffset, h.length);
}

/**
 * MTH of leaves [start, start+n), n >= 1, for a range the RFC 6962 recursion can visit: a
 * perfect subtree aligned to its size, or a right-spine range (whose start is aligned to a
 * power of two at least n). Composed as node(P0, node(P1, ... Pk)) from its perfect parts.
 */
function rangeHash(start: number, n: number, hashes: SubtreeHashes): Buffer {
  const parts: Buffer[] = [];
  let offset = start;
  let remaining = n;
  while (remaining > 0) {
    // Largest power of two <= remaining: the left part of the RFC 6962 split, perfect.
    let size = 1;
    let level = 0;
    while (size * 2 <= remaining) {
      size *= 2;
      level++;
    }
    if (offset % size !== 0) throw new RangeError(`internal: range [${start}, ${start + n}) is not decomposable into aligned subtrees`);
    parts.push(readNode(hashes, level, offset / size));
    offset += size;
    remaining -= size;
  }
  let h = parts[parts.length - 1];
  for (let i = parts.length - 2; i >= 0; i--) h = nodeHash(parts[i], h);
  return h;
}

/**
 * The RFC 6962 2.1 Merkle Tree Hash of the first `size` leaves, composed from at most
 * log2(size)+1 stored perfect subtrees. `rootAt(0, ...)` is SHA-256 of the empty string.
 * @throws RangeError if size is not a safe integer or exceeds `hashes.size`.
 */
export function rootAt(size: number, hashes: SubtreeHashes): Buffer {
  checkCount('rootAt: size', size);
  checkSource(hashes, size, 'rootAt');
  if (size === 0) return Buffer.from(EMPTY_ROOT);
  return rangeHash(0, size, hashes);
}

/**
 * The RFC 6962 2.1.1 audit path PATH(index, D[size]) for leaf `index` in the tree of the first
 * `size` leaves: sibling hashes from the leaf upward, O(log size) node reads.
 * @throws RangeError unless 0 <= index < size <= hashes.size.
 */
export function inclusionProof(index: number, size: number, hashes: SubtreeHashes): Buffer[] {
  checkCount('inclusionProof: index', index);
  checkCount('inclusionProof: size', size);
  if (index >= size) throw new RangeError(`inclusionProof: index ${index} is not below size ${size}`);
  checkSource(hashes, size, 'inclusionProof');
  const path: Buffer[] = [];
  // Walk down from the root, collecting siblings; PATH lists them leaf-first, so reverse.
  let start = 0;
  let n = size;
  let m = index;
  while (n > 1) {
    const k = splitPoint(n);
    if (m < k) {
      path.push(rangeHash(start + k, n - k, hashes)); // PATH(m, D[0:k]) : MTH(D[k:n])
      n = k;
    } else {
      path.push(rangeHash(start, k, hashes)); // PATH(m-k, D[k:n]) : MTH(D[0:k])
      start += k;
      m -= k;
      n -= k;
    }
  }
  return path.reverse();
}

/**
 * The RFC 6962 2.1.2 consistency proof PROOF(m, D[n]) between the trees of the first m and
 * the first n leaves, O(log n) node reads. Empty when m == 0 or m == n.
 * @throws RangeError unless 0 <= m <= n <= hashes.size.
 */
export function consistencyProof(m: number, n: number, hashes: SubtreeHashes): Buffer[] {
  checkCount('consistencyProof: m', m);
  checkCount('consistencyProof: n', n);
  if (m > n) throw new RangeError(`consistencyProof: old size ${m} exceeds new size ${n}`);
  checkSource(hashes, n, 'consistencyProof');
  if (m === 0 || m === n) return [];
  // SUBPROOF(m, D[start:start+size], b), iteratively; siblings collected root-first.
  const proof: Buffer[] = [];
  let start = 0;
  let size = n;
  let b = true;
  let mm = m;
  for (;;) {
    if (mm === size) {
      if (!b) proof.push(rangeHash(start, size, hashes)); // SUBPROOF(m, D[m], false) = {MTH(D[m])}
      break;
    }
    const k = splitPoint(size);
    if (mm <= k) {
      proof.push(rangeHash(start + k, size - k, hashes)); // SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
      size = k;
    } else {
      proof.push(rangeHash(start, k, hashes)); // SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k])
      start += k;
      mm -= k;
      size -= k;
      b = false;
    }
  }
  return proof.reverse();
}

function isHash(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array && x.length === HASH_SIZE;
}

function sameHash(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

function checkProofArgs(fn: string, proof: unknown): readonly unknown[] {
  if (!Array.isArray(proof)) throw new TypeError(`${fn}: proof must be an array of hashes`);
  return proof;
}

/**
 * Verifies an inclusion proof exactly as RFC 9162 2.1.3.2: true iff `proof` shows that
 * `leafHashValue` is leaf `index` of the tree of `size` leaves with root `root`. Returns
 * false (never throws) for index >= size, hashes that are not 32 bytes, or proofs of the
 * wrong length.
 * @throws RangeError if index or size is not a non-negative safe integer; TypeError if proof
 *   is not an array.
 */
export function verifyInclusion(leafHashValue: Uint8Array, index: number, size: number, proof: readonly Uint8Array[], root: Uint8Array): boolean {
  checkCount('verifyInclusion: index', index);
  checkCount('verifyInclusion: size', size);
  const path = checkProofArgs('verifyInclusion', proof);
  if (!isHash(leafHashValue) || !isHash(root) || !path.every(isHash)) return false;
  if (index >= size) return false; // step 1
  let fn = index; // step 2
  let sn = size - 1;
  let r: Buffer = Buffer.from(leafHashValue); // step 3
  for (const p of path as Uint8Array[]) {
    // step 4
    if (sn === 0) return false; // 4a
    if (fn % 2 === 1 || fn === sn) {
      // 4b
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); // 4c
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && sameHash(r, root); // step 5
}

/**
 * Verifies a consistency proof exactly as RFC 9162 2.1.4.2 between the tree of `oldSize`
 * leaves with root `oldRoot` and the tree of `newSize` leaves with root `newRoot`, including
 * the cases the RFC's algorithm leaves to the caller: oldSize == newSize holds iff the proof
 * is empty and the roots are equal; oldSize == 0 holds iff the proof is empty and `oldRoot`
 * is the empty-tree hash; oldSize > newSize never holds. Returns false, never throws, for
 * malformed hashes.
 * @throws RangeError if a size is not a non-negative safe integer; TypeError if proof is not
 *   an array.
 */
export function verifyConsistency(oldSize: number, newSize: number, proof: readonly Uint8Array[], oldRoot: Uint8Array, newRoot: Uint8Array): boolean {
  checkCount('verifyConsistency: oldSize', oldSize);
  checkCount('verifyConsistency: newSize', newSize);
  const path = checkProofArgs('verifyConsistency', proof);
  if (!isHash(oldRoot) || !isHash(newRoot) || !path.every(isHash)) return false;
  if (oldSize > newSize) return false;
  if (oldSize === newSize) return path.length === 0 && sameHash(oldRoot, newRoot);
  if (oldSize === 0) return path.length === 0 && sameHash(oldRoot, EMPTY_ROOT);
  // 0 < first < second from here.
  if (path.length === 0) return false; // step 1
  const c = (isPowerOfTwo(oldSize) ? [oldRoot, ...path] : [...path]) as Uint8Array[]; // step 2
  let fn = oldSize - 1; // step 3
  let sn = newSize - 1;
  while (fn % 2 === 1) {
    // step 4
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr: Buffer = Buffer.from(c[0]); // step 5
  let sr: Buffer = Buffer.from(c[0]);
  for (let i = 1; i < c.length; i++) {
    // step 6
    if (sn === 0) return false; // 6a
    if (fn % 2 === 1 || fn === sn) {
      // 6b
      fr = nodeHash(c[i], fr);
      sr = nodeHash(c[i], sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = nodeHash(sr, c[i]);
    }
    fn = Math.floor(fn / 2); // 6c
    sn = Math.floor(sn / 2);
  }
  return sameHash(fr, oldRoot) && sameHash(sr, newRoot) && sn === 0; // step 7
}

/**
 * Reference MTH of a list of leaf hashes (not leaf data), computed independently of the
 * subtree store with a compact range: a stack of perfect-subtree hashes merged as leaves
 * arrive, folded right-to-left at the end. O(n) hashing; for tests and `keel log verify`.
 * @throws TypeError unless every entry is a 32-byte hash.
 */
export function rootFromLeaves(leafHashes: readonly Uint8Array[]): Buffer {
  if (!Array.isArray(leafHashes)) throw new TypeError('rootFromLeaves: leafHashes must be an array');
  const stack: { h: Buffer; size: number }[] = [];
  for (let i = 0; i < leafHashes.length; i++) {
    const lh = leafHashes[i];
    if (!isHash(lh)) throw new TypeError(`rootFromLeaves: leafHashes[${i}] is not a ${HASH_SIZE}-byte hash`);
    let top: { h: Buffer; size: number } = { h: Buffer.from(lh), size: 1 };
    while (stack.length > 0 && stack[stack.length - 1].size === top.size) {
      const left = stack.pop()!;
      top = { h: nodeHash(left.h, top.h), size: left.size * 2 };
    }
    stack.push(top);
  }
  if (stack.length === 0) return Buffer.from(EMPTY_ROOT);
  let h = stack[stack.length - 1].h;
  for (let i = stack.length - 2; i >= 0; i--) h = nodeHash(stack[i].h, h);
  return h;
}

/**
 * An in-memory SubtreeHashes: appends leaves and keeps the hash of every complete perfect
 * subtree, level by level, exactly what the on-disk store keeps. Memory: about 2n hashes.
 */
export class MemoryTree implements SubtreeHashes {
  /** levels[l][i] = hash of the perfect subtree of 2^l leaves starting at leaf i*2^l. */
  private readonly levels: Buffer[][] = [[]];

  /** Number of leaves appended. */
  get size(): number {
    return this.levels[0].length;
  }

  /** Appends a leaf by its data (hashed as SHA-256(0x00 || data)); returns its index. */
  append(data: Uint8Array): number {
    if (!(data instanceof Uint8Array)) throw new TypeError('MemoryTree.append: data must be a Uint8Array');
    return this.push(leafHash(data)); // a fresh hash: no defensive copy needed
  }

  /** Appends a leaf by its precomputed RFC 6962 leaf hash (copied); returns its index. */
  appendLeafHash(hash: Uint8Array): number {
    if (!isHash(hash)) throw new TypeError(`MemoryTree.appendLeafHash: hash must be ${HASH_SIZE} bytes`);
    return this.push(Buffer.from(hash));
  }

  private push(hash: Buffer): number {
    const index = this.levels[0].length;
    this.levels[0].push(hash);
    // Each time the new node is a right child, its parent's subtree just became complete.
    let level = 0;
    let i = index;
    while (i % 2 === 1) {
      const row = this.levels[level];
      const parent = nodeHash(row[i - 1], row[i]);
      if (this.levels.length === level + 1) this.levels.push([]);
      this.levels[level + 1].push(parent);
      level++;
      i = (i - 1) / 2;
    }
    return index;
  }

  /** See SubtreeHashes.node. @throws RangeError if that subtree is not complete. */
  node(level: number, index: number): Buffer {
    checkCount('MemoryTree.node: level', level);
    checkCount('MemoryTree.node: index', index);
    const h = this.levels[level]?.[index];
    if (!h) throw new RangeError(`MemoryTree.node: no complete subtree at level ${level}, index ${index} (size ${this.size})`);
    return h;
  }

  /** MTH of the first `size` leaves (default: all). */
  root(size: number = this.size): Buffer {
    return rootAt(size, this);
  }
}
