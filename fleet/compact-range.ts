/**
 * A compact range (Merkle frontier) over the first `size` leaves of an RFC 6962 tree: the
 * hashes of the perfect subtrees along the right edge, one per set bit of `size`, largest
 * (leftmost) first. It is all the fleet needs per device to extend a verified log and to
 * check that a new checkpoint's root commits to everything already held: appending the new
 * leaves and folding gives MTH(D[0:n]) [RFC 6962 2.1] in O(log n) memory.
 *
 * Serialized form (device_state.range): u64 BE size, then popcount(size) 32-byte hashes in
 * the same order. Sizes are leaf counts below 2^53 (JavaScript safe integers); bit tests use
 * arithmetic, never 32-bit operators.
 */
import { hash } from 'node:crypto';
import { EMPTY_ROOT, HASH_SIZE } from '../runtime/ledger/hash.ts';

function popcount(n: number): number {
  let c = 0;
  while (n > 0) {
    if (n % 2 === 1) c++;
    n = Math.floor(n / 2);
  }
  return c;
}

/** The right-edge perfect-subtree hashes of an RFC 6962 tree of `size` leaves. */
export class CompactRange {
  private n: number;
  /** hashes[i] covers the i-th perfect subtree from the left; sizes strictly decrease. */
  private readonly hashes: Buffer[];
  // One scratch buffer for every node hash: 0x01 || left || right (65 bytes).
  private readonly scratch = Buffer.allocUnsafe(1 + 2 * HASH_SIZE);

  /** An empty range, or one restored from `size` and its right-edge hashes (checked). */
  constructor(size = 0, hashes: readonly Uint8Array[] = []) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`size must be a non-negative safe integer, got ${size}`);
    if (!Array.isArray(hashes)) throw new TypeError('hashes must be an array of 32-byte hashes');
    const want = popcount(size);
    if (hashes.length !== want) throw new RangeError(`a compact range of size ${size} has ${want} hashes, got ${hashes.length}`);
    this.n = size;
    this.hashes = hashes.map((h, i) => {
      if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) throw new TypeError(`hashes[${i}] must be a ${HASH_SIZE}-byte hash`);
      return Buffer.from(h);
    });
    this.scratch[0] = 0x01;
  }

  /** Number of leaves covered. */
  get size(): number {
    return this.n;
  }

  /** The right-edge hashes, largest subtree first (copies). */
  get frontier(): Buffer[] {
    return this.hashes.map((h) => Buffer.from(h));
  }

  private node(left: Uint8Array, right: Uint8Array): Buffer {
    this.scratch.set(left, 1);
    this.scratch.set(right, 1 + HASH_SIZE);
    return hash('sha256', this.scratch, 'buffer') as Buffer;
  }

  /**
   * Appends one leaf hash (RFC 6962 leaf hash, not record data). Merges equal-sized subtrees
   * while the old size's low bits are set, so each append costs amortized one node hash.
   */
  append(leafHash: Uint8Array): void {
    if (!(leafHash instanceof Uint8Array) || leafHash.length !== HASH_SIZE) throw new TypeError(`leafHash must be a ${HASH_SIZE}-byte hash`);
    if (this.n >= Number.MAX_SAFE_INTEGER) throw new RangeError('compact range is full (2^53 - 1 leaves)');
    let s = this.n;
    let h: Uint8Array = leafHash;
    while (s % 2 === 1) {
      h = this.node(this.hashes.pop()!, h);
      s = (s - 1) / 2;
    }
    // Copy only when the caller's leaf itself becomes a frontier entry.
    this.hashes.push(h === leafHash ? Buffer.from(leafHash) : (h as Buffer));
    this.n++;
  }

  /**
   * Appends a leaf hash the range may keep without copying: the caller hands it over and
   * must not change it afterwards (ingest passes freshly computed digests).
   */
  appendOwned(leafHash: Buffer): void {
    if (!Buffer.isBuffer(leafHash) || leafHash.length !== HASH_SIZE) throw new TypeError(`leafHash must be a ${HASH_SIZE}-byte Buffer`);
    if (this.n >= Number.MAX_SAFE_INTEGER) throw new RangeError('compact range is full (2^53 - 1 leaves)');
    let s = this.n;
    let h = leafHash;
    while (s % 2 === 1) {
      h = this.node(this.hashes.pop()!, h);
      s = (s - 1) / 2;
    }
    this.hashes.push(h);
    this.n++;
  }

  /** Appends leaf hashes in order. */
  appendAll(leafHashes: readonly Uint8Array[]): void {
    for (const h of leafHashes) this.append(h);
  }

  /** MTH of the covered leaves [RFC 6962 2.1]: the frontier folded right to left; SHA-256("") when empty. */
  root(): Buffer {
    const k = this.hashes.length;
    if (k === 0) return Buffer.from(EMPTY_ROOT);
    let h = this.hashes[k - 1];
    for (let i = k - 2; i >= 0; i--) h = this.node(this.hashes[i], h);
    return Buffer.from(h);
  }

  /** An independent copy (append to it without changing this one). */
  clone(): CompactRange {
    return new CompactRange(this.n, this.hashes);
  }

  /** Serialized form: u64 BE size || popcount(size) hashes, largest subtree first. */
  toBytes(): Buffer {
    const out = Buffer.allocUnsafe(8 + this.hashes.length * HASH_SIZE);
    out.writeBigUInt64BE(BigInt(this.n), 0);
    this.hashes.forEach((h, i) => h.copy(out, 8 + i * HASH_SIZE));
    return out;
  }

  /**
   * Parses `toBytes()` output.
   * @throws RangeError if the length does not match the size's popcount or the size is unsafe.
   */
  static fromBytes(bytes: Uint8Array): CompactRange {
    if (!(bytes instanceof Uint8Array) || bytes.length < 8) throw new RangeError('compact range bytes must start with an 8-byte size');
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const big = buf.readBigUInt64BE(0);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`compact range size ${big} exceeds 2^53 - 1`);
    const size = Number(big);
    const want = popcount(size);
    if (buf.length !== 8 + want * HASH_SIZE) throw new RangeError(`compact range of size ${size} must be ${8 + want * HASH_SIZE} bytes, got ${buf.length}`);
    const hashes: Buffer[] = [];
    for (let i = 0; i < want; i++) hashes.push(buf.subarray(8 + i * HASH_SIZE, 8 + (i + 1) * HASH_SIZE));
    return new CompactRange(size, hashes);
  }

  /** The compact range of `leafHashes` (from leaf 0). */
  static of(leafHashes: readonly Uint8Array[]): CompactRange {
    const r = new CompactRange();
    r.appendAll(leafHashes);
    return r;
  }
}
