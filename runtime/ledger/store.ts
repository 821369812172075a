/**
 * The ledger's append-only store on local disk: records as opaque byte strings, their RFC 6962
 * Merkle tree kept as stored subtree hashes (so proofs cost O(log n) reads), three durability
 * modes, and recovery after a crash that truncates a torn tail and never accepts a corrupt
 * record silently.
 *
 * ## On-disk layout (one directory per ledger; integers big-endian)
 * ```
 * <dir>/FORMAT          "keel-ledger-store 1\n"; written once, after head, at creation.
 * <dir>/LOCK            "<pid> <process start time>\n" of the process that has the store open
 *                       for writing; a dead or recycled pid's LOCK is taken over.
 * <dir>/head            the recovery point: two 64-byte slots written alternately, each
 *                       magic "KLHD" | u32 version 1 | u64 generation | u64 size S |
 *                       u64 prunedBefore P | 28 zero bytes | u32 CRC-32 of bytes 0..59.
 *                       The valid slot with the higher generation wins. Everything below
 *                       record S (frames, index entries, hashes) was fsynced before the slot
 *                       was written; records below P were pruned on purpose.
 * <dir>/seg-<first>.rec record frames, <first> = index of its first record in 20 decimal
 *                       digits. Frame = u32 length L | L record bytes | u32 CRC-32 (IEEE, as
 *                       zlib computes it) over the length and record bytes. A segment holds
 *                       at most `segmentBytes` (default 64 MiB) so pruning deletes whole files.
 * <dir>/seg-<first>.idx u32 byte offset of each record's frame in its .rec file.
 * <dir>/hash-<ll>.bin   the 32-byte hashes of tree level ll (two digits): entry i of level l is
 *                       the hash of the perfect subtree of 2^l leaves starting at leaf i*2^l
 *                       (level 0: leaf hashes SHA-256(0x00 || record)); an entry is appended
 *                       as soon as its subtree is complete [RFC 6962 2.1]. `node(l, i)` is one
 *                       positioned read. About 64 bytes of hashes per record in all.
 * ```
 * Records may not contain 0x0A: JCS (RFC 8785) escapes control characters, so a ledger record
 * never has one, and an export can write one record per line.
 *
 * ## Durability (what a resolved append promises)
 * - `record`: `append` and `appendBatch` resolve after the records' frames were fsynced.
 *   Appends issued while an fsync is running share the next one (group commit).
 * - `batch`: the same per call; callers group records with `appendBatch`, and each batch
 *   costs one write per file and one fsync. Both modes survive kill -9 and power loss.
 * - `interval`: appends resolve once written (in the page cache: they survive kill -9, not a
 *   power cut); a one-shot timer named `ledger-store.sync` fsyncs within `intervalMs` of the
 *   first unsynced append, and `sync()`/`close()` fsync. `durableSize` says how many records
 *   are fsynced.
 * Index and hash files are derived from the frames: they are fsynced when the recovery point
 * advances (every `recoveryPointEvery` records, on `sync()`, `close()` and before pruning),
 * so a crash costs at most that many records' worth of re-derivation on the next open.
 *
 * ## Recovery on open
 * Everything below the recovery point S is trusted to exist (a missing or short file there is
 * corruption, not a torn tail). With `verify: 'frames'` (the default) every frame's checksum
 * and index entry is checked; `'full'` also recomputes every leaf and interior hash; `'tail'`
 * checks only what lies past S. Past S, frames are scanned: the first bad frame is a torn
 * tail and is truncated only if no valid frame follows it anywhere; a bad frame with valid
 * frames after it is corruption. Index entries and hashes past S are re-derived from the
 * frames (hash files longer than the records they cover are cut). Corruption makes `open`
 * throw `LedgerStoreError` (`KEEL_E_LEDGER_CORRUPT`) naming the record index, file and byte.
 * With `repair: false` the store opens read-only for verification: nothing on disk changes,
 * torn tails are left in place (and not counted), corruption is reported in
 * `recovery.corrupt` instead of thrown, and `read()` of a corrupt record throws.
 *
 * ## Pruning
 * `pruneBefore(i)` deletes whole record segments below i (never the newest). Only record bytes
 * are dropped: the hash files keep every level, so the tree can be extended and consistency
 * proved from any size; `read()` of a pruned index throws `KEEL_E_LEDGER_PRUNED`.
 *
 * Power loss cannot be produced here for real; `MemoryLedgerFs.powerCut()` (store-fs.ts)
 * models it and the tests run the store against it. Power-loss safety rests on the fsync
 * order: frames before the append resolves, index and hashes before the head, the head last.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { type Clock, SystemClock, type TimerHandle } from '../clock.ts';
import { KeelError, type KeelErrorCode } from '../errors.ts';
import { EMPTY_ROOT, HASH_SIZE, leafHash, nodeHash } from './hash.ts';
import { type LedgerFs, nodeLedgerFs } from './store-fs.ts';

/** When appended records are fsynced; see the module comment. */
export type LedgerDurability = 'record' | 'batch' | 'interval';

/** How much of the existing store `open` checks; see the module comment. */
export type LedgerVerifyLevel = 'tail' | 'frames' | 'full';

/** Options of `LedgerStore.open`. Every default lives in `defaultStoreOptions`. */
export interface LedgerStoreOptions {
  /** When appends are fsynced. */
  durability?: LedgerDurability;
  /** Interval mode: appended records are fsynced at most this long after the first unsynced one, ms. */
  intervalMs?: number;
  /** Disk bound for all the store's files, bytes; appends past it reject with `KEEL_E_LEDGER_FULL`. Unset: no bound. */
  maxBytes?: number;
  /** Largest record accepted by `append`, bytes. */
  maxRecordBytes?: number;
  /** Size at which a record segment is closed and a new one started, bytes. */
  segmentBytes?: number;
  /** Records appended between recovery-point advances (bounds the re-derivation after a crash). */
  recoveryPointEvery?: number;
  /** How much `open` checks. */
  verify?: LedgerVerifyLevel;
  /** false: open read-only for verification and change nothing on disk. */
  repair?: boolean;
  /** Clock for the interval timer. */
  clock?: Clock;
  /** Filesystem slot. */
  fs?: LedgerFs;
  /** Called when a background fsync (interval mode) fails; later calls reject too. */
  onError?: (err: LedgerStoreError) => void;
  /**
   * Whether the process that wrote a LOCK still runs, to recognize a stale one. `start` is the
   * process start time it recorded (Linux /proc/<pid>/stat field 22) when known. Default:
   * signal 0, and on Linux the start time must match too, so a recycled pid is not mistaken
   * for the writer.
   */
  lockOwnerAlive?: (owner: LockOwner) => boolean;
}

/** The writer named by a LOCK file: `<pid> <start time or ->\n`. */
export interface LockOwner {
  /** Process id. */
  pid: number;
  /** Start time in clock ticks since boot (Linux), when it was recorded. */
  start?: string;
}

/** Defaults of `LedgerStoreOptions`. */
export const defaultStoreOptions = {
  durability: 'record' as LedgerDurability,
  intervalMs: 1000,
  maxBytes: undefined as number | undefined,
  maxRecordBytes: 1024 * 1024,
  segmentBytes: 64 * 1024 * 1024,
  recoveryPointEvery: 4096,
  verify: 'frames' as LedgerVerifyLevel,
  repair: true,
};

/** Largest record any store reads back, bytes (an upper bound for `maxRecordBytes`). */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;
/** Largest segment, bytes: index entries are 32-bit offsets. */
export const MAX_SEGMENT_BYTES = 1024 * 1024 * 1024;
/** Bytes a frame adds to its record (length and CRC). */
export const FRAME_OVERHEAD = 8;

const FORMAT_TEXT = 'keel-ledger-store 1\n';
const HEAD_SLOT = 64;
const HEAD_MAGIC = 0x4b4c4844; // "KLHD"
const HEAD_VERSION = 1;
const IDX_ENTRY = 4;
const MAX_LEVEL = 63;
const SYNC_TIMER = 'ledger-store.sync';
const SEG_RE = /^seg-(\d{20})\.(rec|idx)$/;
const LEVEL_RE = /^hash-(\d{2})\.bin$/;

/** What `open` found and did. Byte counts are what was cut from files. */
export interface LedgerRecovery {
  /** Records in the store after recovery. */
  records: number;
  /** Records the head's recovery point vouched for. */
  recoveryPoint: number;
  /** How much was checked. */
  verified: LedgerVerifyLevel;
  /** Bytes cut from (or files removed from) the end of the store: torn frames, stale index and hash entries. */
  truncatedBytes: number;
  /** Bytes of torn record frames among `truncatedBytes`. */
  truncatedFrameBytes: number;
  /** Hashes (all levels) past the recovery point that were missing and were derived from the records. */
  rebuiltHashes: number;
  /** Index entries past the recovery point that were missing and were derived from the frames. */
  rebuiltIndexEntries: number;
  /** Index entries and hashes present past the recovery point that were wrong and were rewritten. */
  replacedEntries: number;
  /** Files removed (segments after a torn tail, leftovers of an interrupted prune); read-only opens list what a repair would remove. */
  removedFiles: string[];
  /** Pid of a dead process whose LOCK was taken over. */
  staleLockPid?: number;
  /** Both head slots were unreadable; the tree was re-derived from record 0. */
  headReset: boolean;
  /** Read-only opens only: the first corruption found (writable opens throw instead). */
  corrupt?: LedgerCorruption;
  /** Read-only opens only: bytes of a torn tail left in place. */
  tornBytes: number;
}

/** Where a corruption was found. */
export interface LedgerCorruption {
  /** Record (or, for hash files, leaf-level) index concerned, when one is known. */
  index?: number;
  /** File name within the store directory. */
  file: string;
  /** Byte offset in that file, when known. */
  offset?: number;
  /** What is wrong, in words. */
  reason: string;
}

/** What `verify()` checked. */
export interface LedgerVerifyReport {
  /** Records in the verified tree. */
  size: number;
  /** Records read, checksummed and hashed. */
  records: number;
  /** Leaves below `firstAvailable` whose stored hashes fed the tree without their records. */
  prunedLeaves: number;
  /** Interior hashes recomputed and compared. */
  nodes: number;
}

/** Failure of the ledger store. `code` says what; CORRUPT errors name `index`, `file` and `offset`. */
export class LedgerStoreError extends KeelError {
  /** Record index concerned, when known. */
  readonly index?: number;
  /** File concerned (name within the store directory), when known. */
  readonly file?: string;
  /** Byte offset in `file`, when known. */
  readonly offset?: number;
  constructor(code: KeelErrorCode, message: string, options: { cause?: unknown; retryable?: boolean; index?: number; file?: string; offset?: number } = {}) {
    super(code, message, options);
    if (options.index !== undefined) this.index = options.index;
    if (options.file !== undefined) this.file = options.file;
    if (options.offset !== undefined) this.offset = options.offset;
  }
}

function corruptError(dir: string, c: LedgerCorruption): LedgerStoreError {
  const where = `${path.join(dir, c.file)}${c.offset !== undefined ? ` at byte ${c.offset}` : ''}`;
  const what = c.index !== undefined ? `record ${c.index}` : 'ledger store';
  return new LedgerStoreError('KEEL_E_LEDGER_CORRUPT', `${what} is corrupt in ${where}: ${c.reason}`, { index: c.index, file: c.file, offset: c.offset });
}

// ---------------------------------------------------------------------------- small helpers

const crc32: (data: Uint8Array, value?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (zlib as unknown as { crc32: (d: Uint8Array, v?: number) => number }).crc32 : crc32Js;

let crcTable: Uint32Array | undefined;
/** CRC-32 (IEEE 802.3, reflected 0xEDB88320) for Node versions without zlib.crc32 (< 20.15). */
function crc32Js(data: Uint8Array, value = 0): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[i] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

function segName(first: number, ext: 'rec' | 'idx'): string {
  return `seg-${String(first).padStart(20, '0')}.${ext}`;
}
function levelName(level: number): string {
  return `hash-${String(level).padStart(2, '0')}.bin`;
}
/** floor(n / 2^level) without 32-bit operators (n may exceed 2^32). */
function levelCount(n: number, level: number): number {
  return Math.floor(n / 2 ** level);
}
/** Highest level with at least one complete node for n leaves, or -1 when n = 0. */
function topLevel(n: number): number {
  if (n === 0) return -1;
  if (n < 2 ** 31) return 31 - Math.clz32(n);
  let l = 31;
  while (2 ** (l + 1) <= n) l++;
  return l;
}
function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}
function checkInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${typeof v === 'number' ? v : typeof v}`);
  }
  return v;
}

/** Sequential-friendly positioned reads of one file through a window buffer. */
class WindowReader {
  /** The window; `at()` returns offsets into it. */
  buf: Buffer;
  private start = 0;
  private end = 0;
  constructor(
    private readonly fs: LedgerFs,
    private readonly fd: number,
    readonly fileSize: number,
    private readonly chunk = 1 << 20,
  ) {
    this.buf = Buffer.allocUnsafe(Math.min(chunk, Math.max(64, fileSize)));
  }
  /** Bytes [pos, pos + len) as a view valid until the next call, or null when the file is shorter. */
  get(pos: number, len: number): Buffer | null {
    const o = this.at(pos, len);
    return o < 0 ? null : this.buf.subarray(o, o + len);
  }
  /** Offset in `buf` (valid until the next call) where bytes [pos, pos + len) of the file are, or -1 when the file is shorter. */
  at(pos: number, len: number): number {
    if (pos < 0 || pos + len > this.fileSize) return -1;
    if (pos >= this.start && pos + len <= this.end) return pos - this.start;
    const want = Math.min(Math.max(len, this.chunk), this.fileSize - pos);
    if (this.buf.length < want) this.buf = Buffer.allocUnsafe(want);
    let got = 0;
    while (got < want) {
      const n = this.fs.read(this.fd, this.buf, got, want - got, pos + got);
      if (n === 0) break;
      got += n;
    }
    this.start = pos;
    this.end = pos + got;
    return got >= len ? 0 : -1;
  }
}

/** Sequential reads of 32-byte entries of one hash level file, compared without copies. */
class LevelCursor {
  private readonly r: WindowReader;
  constructor(fs: LedgerFs, fd: number, entries: number) {
    this.r = new WindowReader(fs, fd, entries * HASH_SIZE, 1 << 16);
  }
  /** Whether entry j holds h; false when the file is too short. */
  holds(j: number, h: Buffer): boolean {
    const o = this.r.at(j * HASH_SIZE, HASH_SIZE);
    return o >= 0 && h.compare(this.r.buf, o, o + HASH_SIZE) === 0;
  }
  /** A copy of entry j, or undefined when the file is too short. */
  copy(j: number): Buffer | undefined {
    const o = this.r.at(j * HASH_SIZE, HASH_SIZE);
    return o < 0 ? undefined : Buffer.from(this.r.buf.subarray(o, o + HASH_SIZE));
  }
}

type FrameCheck = { ok: true; len: number; end: number; payload: Buffer } | { ok: false; reason: string };

/** Parses and checks the frame at `pos`. */
function frameAt(r: WindowReader, pos: number): FrameCheck {
  const head = r.get(pos, 4);
  if (!head) return { ok: false, reason: 'frame header cut short by the end of the file' };
  const len = head.readUInt32BE(0);
  if (len === 0 || len > MAX_RECORD_BYTES) return { ok: false, reason: `implausible record length ${len}` };
  const f = r.get(pos, len + FRAME_OVERHEAD);
  if (!f) return { ok: false, reason: `frame of ${len} bytes runs past the end of the file` };
  if (crc32(f.subarray(0, 4 + len)) !== f.readUInt32BE(4 + len)) return { ok: false, reason: 'checksum mismatch' };
  const payload = f.subarray(4, 4 + len);
  if (payload.indexOf(0x0a) !== -1) return { ok: false, reason: 'record contains a newline byte' };
  return { ok: true, len, end: pos + len + FRAME_OVERHEAD, payload };
}

/** First offset in [from, r.fileSize) where a valid frame starts, or -1. Used to tell a torn tail from corruption. */
function findValidFrame(r: WindowReader, from: number): number {
  for (let p = from; p + FRAME_OVERHEAD < r.fileSize; p++) {
    const o = r.at(p, 4);
    if (o < 0) return -1;
    // Most candidates fail on the length; only plausible ones pay for a checksum.
    const len = r.buf.readUInt32BE(o);
    if (len === 0 || len > MAX_RECORD_BYTES || p + len + FRAME_OVERHEAD > r.fileSize) continue;
    if (frameAt(r, p).ok) return p;
  }
  return -1;
}

interface HeadState {
  generation: number;
  size: number;
  prunedBefore: number;
}

function encodeHead(h: HeadState): Buffer {
  const b = Buffer.alloc(HEAD_SLOT);
  b.writeUInt32BE(HEAD_MAGIC, 0);
  b.writeUInt32BE(HEAD_VERSION, 4);
  b.writeBigUInt64BE(BigInt(h.generation), 8);
  b.writeBigUInt64BE(BigInt(h.size), 16);
  b.writeBigUInt64BE(BigInt(h.prunedBefore), 24);
  b.writeUInt32BE(crc32(b.subarray(0, HEAD_SLOT - 4)), HEAD_SLOT - 4);
  return b;
}

function decodeHead(b: Buffer): HeadState | undefined {
  if (b.length < HEAD_SLOT) return undefined;
  if (b.readUInt32BE(0) !== HEAD_MAGIC || b.readUInt32BE(4) !== HEAD_VERSION) return undefined;
  if (crc32(b.subarray(0, HEAD_SLOT - 4)) !== b.readUInt32BE(HEAD_SLOT - 4)) return undefined;
  const g = b.readBigUInt64BE(8);
  const s = b.readBigUInt64BE(16);
  const p = b.readBigUInt64BE(24);
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  if (g > max || s > max || p > s) return undefined;
  return { generation: Number(g), size: Number(s), prunedBefore: Number(p) };
}

// ---------------------------------------------------------------------------- the store

interface Segment {
  first: number;
  /** Records committed in this segment. */
  count: number;
  /** Committed bytes of the .rec file. */
  bytes: number;
  recFd: number;
  idxFd: number;
  /** Index entries the .idx file holds (read-only opens may hold fewer than count). */
  idxInFile: number;
}

/** Records validated, framed and leaf-hashed at the call, waiting for the writer. */
interface AppendRequest {
  kind: 'append';
  frames: Buffer;
  /** Frame start offsets within `frames`, one per record, plus the end. */
  bounds: number[];
  leaves: Buffer[];
  resolve: (first: number) => void;
  reject: (err: Error) => void;
}

interface ControlRequest {
  kind: 'sync' | 'flush' | 'prune';
  before?: number;
  resolve: (v: number) => void;
  reject: (err: Error) => void;
}

type Request = AppendRequest | ControlRequest;

/** Read-only opens keep re-derived tail entries here instead of writing them. */
interface Overlay {
  /** Record index of offsets[0]. */
  base: number;
  offsets: number[];
  /** nodes[l][k] is node (l, floor(base / 2^l) + k). */
  nodes: Buffer[][];
}

/**
 * An append-only store of records and their RFC 6962 tree in one directory. Implements the
 * `SubtreeHashes` shape of merkle.ts (`size`, `node(level, index)`).
 */
export class LedgerStore {
  /** The store's directory. */
  readonly dir: string;
  /** What `open` found and did. */
  readonly recovery: LedgerRecovery;
  /** True when opened with `repair: false`: appends, sync and prune are refused. */
  readonly readOnly: boolean;
  /** The durability mode. */
  readonly durability: LedgerDurability;

  private readonly fs: LedgerFs;
  private readonly clock: Clock;
  private readonly opts: typeof defaultStoreOptions;
  private readonly onError?: (err: LedgerStoreError) => void;
  private readonly lockOwnerAlive: (owner: LockOwner) => boolean;

  private n = 0;
  private durable = 0;
  private head: HeadState = { generation: 0, size: 0, prunedBefore: 0 };
  private headFd = -1;
  private lockHeld = false;
  private segs: Segment[] = [];
  private levelFds: number[] = [];
  /** frontier[l]: the last complete node of level l (its left sibling-to-be when its index is even). */
  private frontier: (Buffer | undefined)[] = [];
  private overlay: Overlay | undefined;
  private diskBytes = 0;

  private dirtySegFds = new Set<number>();
  private dirtyDerivedFds = new Set<number>();
  private dirDirty = false;

  private queue: Request[] = [];
  private draining = false;
  private timer: TimerHandle | undefined;
  private failure: LedgerStoreError | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(dir: string, options: LedgerStoreOptions) {
    this.dir = dir;
    this.fs = options.fs ?? nodeLedgerFs;
    this.clock = options.clock ?? new SystemClock();
    this.onError = options.onError;
    this.lockOwnerAlive = options.lockOwnerAlive ?? defaultLockOwnerAlive;
    const pick = <K extends keyof typeof defaultStoreOptions>(k: K) => (options[k] === undefined ? defaultStoreOptions[k] : options[k]) as (typeof defaultStoreOptions)[K];
    const o = {
      durability: pick('durability'),
      intervalMs: pick('intervalMs'),
      maxBytes: pick('maxBytes'),
      maxRecordBytes: pick('maxRecordBytes'),
      segmentBytes: pick('segmentBytes'),
      recoveryPointEvery: pick('recoveryPointEvery'),
      verify: pick('verify'),
      repair: pick('repair'),
    };
    if (!['record', 'batch', 'interval'].includes(o.durability)) throw new RangeError(`durability must be 'record', 'batch' or 'interval', got ${String(o.durability)}`);
    if (!['tail', 'frames', 'full'].includes(o.verify)) throw new RangeError(`verify must be 'tail', 'frames' or 'full', got ${String(o.verify)}`);
    if (typeof o.intervalMs !== 'number' || !(o.intervalMs > 0) || !Number.isFinite(o.intervalMs)) throw new RangeError(`intervalMs must be a positive number of milliseconds, got ${o.intervalMs}`);
    checkInt('maxRecordBytes', o.maxRecordBytes, 1, MAX_RECORD_BYTES);
    checkInt('segmentBytes', o.segmentBytes, 16, MAX_SEGMENT_BYTES);
    if (o.maxRecordBytes + FRAME_OVERHEAD > o.segmentBytes) throw new RangeError(`segmentBytes (${o.segmentBytes}) must hold one frame of maxRecordBytes (${o.maxRecordBytes}) + ${FRAME_OVERHEAD}`);
    checkInt('recoveryPointEvery', o.recoveryPointEvery, 1, Number.MAX_SAFE_INTEGER);
    if (o.maxBytes !== undefined) checkInt('maxBytes', o.maxBytes, 1, Number.MAX_SAFE_INTEGER);
    if (typeof o.repair !== 'boolean') throw new TypeError(`repair must be a boolean, got ${typeof o.repair}`);
    this.opts = o;
    this.readOnly = !o.repair;
    this.durability = o.durability;
    this.recovery = {
      records: 0,
      recoveryPoint: 0,
      verified: o.verify,
      truncatedBytes: 0,
      truncatedFrameBytes: 0,
      rebuiltHashes: 0,
      rebuiltIndexEntries: 0,
      replacedEntries: 0,
      removedFiles: [],
      headReset: false,
      tornBytes: 0,
    };
  }

  /**
   * Opens the store in `dir`, creating it when the directory is missing or empty (unless
   * read-only), and recovers from a crash. Throws `LedgerStoreError`: CORRUPT (names the
   * record, file and byte), DIR (not a store, or a newer format), LOCKED (open for writing by
   * a live process), IO; RangeError/TypeError for bad options.
   */
  static async open(dir: string, options: LedgerStoreOptions = {}): Promise<LedgerStore> {
    if (typeof dir !== 'string' || dir.length === 0) throw new TypeError('dir must be a non-empty path');
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    const store = new LedgerStore(path.resolve(dir), options);
    try {
      await store.recover();
    } catch (err) {
      store.releaseAll();
      if (err instanceof LedgerStoreError || err instanceof RangeError || err instanceof TypeError) throw err;
      throw store.ioError(`cannot open the ledger store in ${store.dir}`, err);
    }
    return store;
  }

  /** Records in the store (committed: readable, and durable unless in interval mode). */
  get size(): number {
    return this.n;
  }
  /** Records known to be fsynced. */
  get durableSize(): number {
    return this.durable;
  }
  /** Lowest index whose record bytes are still stored (records below were pruned). */
  get firstAvailable(): number {
    return this.segs.length > 0 ? this.segs[0].first : this.n;
  }
  /** Bytes the store's files take on disk (their lengths). */
  get bytes(): number {
    return this.diskBytes;
  }

  /** Appends one record; resolves to its index once durable per the mode. RangeError for an empty, oversized or newline-holding record. */
  append(record: Uint8Array): Promise<number> {
    return this.enqueueAppend([record], 'record');
  }

  /** Appends records in order with one write per file and (unless interval mode) one fsync; resolves to the first index. */
  appendBatch(records: readonly Uint8Array[]): Promise<number> {
    if (!Array.isArray(records)) return Promise.reject(new TypeError('records must be an array of Uint8Array'));
    if (records.length === 0) return Promise.reject(new RangeError('records must not be empty'));
    return this.enqueueAppend(records, 'records');
  }

  /** The exact bytes of record `index` (a fresh Buffer). Throws RangeError out of range, PRUNED below `firstAvailable`, CORRUPT when the stored frame fails its checks. */
  read(index: number): Buffer {
    this.checkOpen();
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0 || index >= this.n) {
      throw new RangeError(`index must be an integer in [0, ${this.n - 1}], got ${index}`);
    }
    if (index < this.firstAvailable) {
      throw new LedgerStoreError('KEEL_E_LEDGER_PRUNED', `record ${index} was pruned (records below ${this.firstAvailable} are no longer stored; their hashes are)`, { index });
    }
    const seg = this.segmentOf(index);
    const off = this.frameOffset(seg, index);
    const head = Buffer.alloc(4);
    const file = segName(seg.first, 'rec');
    if (this.readFully(seg.recFd, head, off) < 4) throw corruptError(this.dir, { index, file, offset: off, reason: 'frame header missing' });
    const len = head.readUInt32BE(0);
    if (len === 0 || len > MAX_RECORD_BYTES || off + len + FRAME_OVERHEAD > seg.bytes) throw corruptError(this.dir, { index, file, offset: off, reason: `implausible record length ${len}` });
    const frame = Buffer.alloc(len + FRAME_OVERHEAD);
    if (this.readFully(seg.recFd, frame, off) < frame.length) throw corruptError(this.dir, { index, file, offset: off, reason: 'frame cut short' });
    if (crc32(frame.subarray(0, 4 + len)) !== frame.readUInt32BE(4 + len)) throw corruptError(this.dir, { index, file, offset: off, reason: 'checksum mismatch' });
    return Buffer.from(frame.subarray(4, 4 + len));
  }

  /**
   * The exact bytes of consecutive records from `start`, each checked like `read` (frame length,
   * checksum), with one positioned read: at least one record when start < end, then as many as
   * fit in `maxBytes` of record bytes, stopping before `end` and at the end of `start`'s
   * segment. The buffers are views into one fresh allocation. Throws as `read` does.
   */
  readRange(start: number, end: number, maxBytes: number): Buffer[] {
    this.checkOpen();
    if (typeof end !== 'number' || !Number.isSafeInteger(end) || end <= start || end > this.n) throw new RangeError(`end must be an integer in (${start}, ${this.n}], got ${end}`);
    if (typeof maxBytes !== 'number' || !(maxBytes >= 1)) throw new RangeError(`maxBytes must be a number >= 1, got ${maxBytes}`);
    const firstRecord = this.read(start); // validates start, refuses pruned indexes
    const seg = this.segmentOf(start);
    const last = Math.min(end, seg.first + seg.count);
    const out: Buffer[] = [firstRecord];
    if (last === start + 1 || firstRecord.length >= maxBytes) return out;
    const off = this.frameOffset(seg, start + 1);
    const len = Math.min(seg.bytes - off, Math.ceil(maxBytes - firstRecord.length) + (last - start - 1) * FRAME_OVERHEAD);
    const buf = Buffer.allocUnsafe(len);
    const got = this.readFully(seg.recFd, buf, off);
    const file = segName(seg.first, 'rec');
    let p = 0;
    let total = firstRecord.length;
    for (let i = start + 1; i < last && p + 4 <= got; i++) {
      const n = buf.readUInt32BE(p);
      if (n === 0 || n > MAX_RECORD_BYTES || off + p + n + FRAME_OVERHEAD > seg.bytes) throw corruptError(this.dir, { index: i, file, offset: off + p, reason: `implausible record length ${n}` });
      if (p + n + FRAME_OVERHEAD > got || total + n > maxBytes) break; // the next record does not fit in maxBytes
      total += n;
      if (crc32(buf.subarray(p, p + 4 + n)) !== buf.readUInt32BE(p + 4 + n)) throw corruptError(this.dir, { index: i, file, offset: off + p, reason: 'checksum mismatch' });
      out.push(buf.subarray(p + 4, p + 4 + n));
      p += n + FRAME_OVERHEAD;
    }
    return out;
  }

  /** Hash of the perfect subtree of 2^level leaves starting at leaf index*2^level (one positioned read). RangeError unless complete within `size`. */
  node(level: number, index: number): Buffer {
    this.checkOpen();
    if (typeof level !== 'number' || !Number.isSafeInteger(level) || level < 0 || level > MAX_LEVEL) throw new RangeError(`level must be an integer in [0, ${MAX_LEVEL}], got ${level}`);
    const count = levelCount(this.n, level);
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0 || index >= count) {
      throw new RangeError(`index must be an integer in [0, ${count - 1}] at level ${level} for size ${this.n}, got ${index}`);
    }
    return this.storedNode(level, index);
  }

  /** RFC 6962 root of the first `size` records (default: all), composed from at most log2(size) stored subtrees. */
  root(size: number = this.n): Buffer {
    this.checkOpen();
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || size > this.n) throw new RangeError(`size must be an integer in [0, ${this.n}], got ${size}`);
    if (size === 0) return Buffer.from(EMPTY_ROOT);
    // size = sum of distinct powers of two, largest first: those perfect subtrees, folded from
    // the right, are MTH of the range [RFC 6962 2.1: the left subtree is the largest power of two < n].
    const parts: Buffer[] = [];
    let start = 0;
    for (let l = topLevel(size); l >= 0; l--) {
      const w = 2 ** l;
      if (size - start >= w) {
        parts.push(this.storedNode(l, start / w));
        start += w;
      }
    }
    let h = parts[parts.length - 1];
    for (let i = parts.length - 2; i >= 0; i--) h = nodeHash(parts[i], h);
    return h;
  }

  /** Makes every appended record durable and advances the recovery point. */
  sync(): Promise<void> {
    if (this.readOnly && !this.closed) return Promise.resolve();
    const refusal = this.refusal();
    if (refusal) return Promise.reject(refusal);
    return this.enqueueControl('sync').then(() => undefined);
  }

  /**
   * Deletes whole record segments entirely below `index` (never the newest segment) and
   * resolves to the new `firstAvailable`. Hashes are kept (see the module comment).
   */
  pruneBefore(index: number): Promise<number> {
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0 || index > this.n) {
      return Promise.reject(new RangeError(`index must be an integer in [0, ${this.n}], got ${index}`));
    }
    const refusal = this.refusal();
    if (refusal) return Promise.reject(refusal);
    return this.enqueueControl('prune', index);
  }

  /**
   * Re-verifies everything: every frame's checksum and index entry, every leaf hash against
   * its record, every interior hash against its children (leaves below `firstAvailable` feed
   * the tree from their stored hashes). Throws CORRUPT naming the first bad record or hash.
   */
  async verify(): Promise<LedgerVerifyReport> {
    this.checkOpen();
    const size = this.n;
    const report: LedgerVerifyReport = { size, records: 0, prunedLeaves: 0, nodes: 0 };
    const cursors: LevelCursor[] = [];
    const ov = this.overlay;
    // Whether stored node (l, j) equals h: from its file, or (read-only opens) the overlay.
    const holds = (l: number, j: number, h: Buffer): boolean => {
      const inFile = this.nodesInFile(l);
      if (j >= inFile) return ov!.nodes[l][j - levelCount(ov!.base, l)].equals(h);
      cursors[l] ??= new LevelCursor(this.fs, this.levelFds[l], inFile);
      return cursors[l].holds(j, h);
    };
    const work: Buffer[] = [];
    const push = (i: number, leaf: Buffer): void => {
      let idx = i;
      let l = 0;
      let cur = leaf;
      for (;;) {
        const left = work[l];
        work[l] = cur;
        if (idx % 2 === 0) return;
        cur = nodeHash(left, cur);
        idx = (idx - 1) / 2;
        l++;
        report.nodes++;
        if (!holds(l, idx, cur)) {
          throw corruptError(this.dir, { index: idx * 2 ** l, file: levelName(l), offset: idx * HASH_SIZE, reason: `stored hash of level ${l} node ${idx} does not match its children` });
        }
      }
    };
    const first = Math.min(this.firstAvailable, size);
    if (first > 0) {
      const leaves = new LevelCursor(this.fs, this.levelFds[0], this.nodesInFile(0));
      for (let i = 0; i < first; i++) {
        const h = leaves.copy(i);
        if (!h) throw corruptError(this.dir, { index: i, file: levelName(0), offset: i * HASH_SIZE, reason: 'leaf hash of a pruned record is missing' });
        push(i, h);
        report.prunedLeaves++;
        if (i % 65536 === 65535) await yieldTurn();
      }
    }
    let i = first;
    for (const seg of this.segs) {
      if (i >= size) break;
      const file = segName(seg.first, 'rec');
      const rec = new WindowReader(this.fs, seg.recFd, seg.bytes);
      const end = Math.min(seg.first + seg.count, size);
      // The segment's index entries in one read.
      const inIdx = Math.min(seg.idxInFile, end - seg.first);
      const idx = Buffer.alloc(inIdx * IDX_ENTRY);
      if (this.readFully(seg.idxFd, idx, 0) < idx.length) throw corruptError(this.dir, { index: seg.first, file: segName(seg.first, 'idx'), reason: 'index file shorter than its records' });
      let pos = 0;
      for (; i < end; i++) {
        const k = i - seg.first;
        const off = k < inIdx ? idx.readUInt32BE(k * IDX_ENTRY) : ov!.offsets[i - ov!.base];
        if (off !== pos) throw corruptError(this.dir, { index: i, file: segName(seg.first, 'idx'), offset: k * IDX_ENTRY, reason: `index entry says byte ${off}, the frames say ${pos}` });
        // The leaf hash checks every record byte, so the frame CRC adds nothing here: only the length is checked.
        let o = rec.at(pos, 4);
        const len = o < 0 ? -1 : rec.buf.readUInt32BE(o);
        o = len > 0 && len <= MAX_RECORD_BYTES ? rec.at(pos, len + FRAME_OVERHEAD) : -1;
        if (o < 0) throw corruptError(this.dir, { index: i, file, offset: pos, reason: len < 0 ? 'frame header cut short' : `implausible record length ${len}` });
        const leaf = leafHash(rec.buf.subarray(o + 4, o + 4 + len));
        if (!holds(0, i, leaf)) throw corruptError(this.dir, { index: i, file, offset: pos, reason: `record bytes do not match the stored leaf hash (${levelName(0)} entry ${i})` });
        report.records++;
        push(i, leaf);
        pos += len + FRAME_OVERHEAD;
        if (i % 65536 === 65535) await yieldTurn();
      }
    }
    return report;
  }

  /** Fsyncs what is pending (unless read-only or failed), closes every file and releases the lock. Idempotent. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        try {
          if (!this.readOnly && !this.failure) await this.enqueueControl('sync');
        } finally {
          this.clock.cancel(this.timer);
          this.timer = undefined;
          this.closed = true;
          for (const r of this.queue.splice(0)) r.reject(this.closedError());
          this.releaseAll();
        }
      })();
    }
    return this.closing;
  }

  // -------------------------------------------------------------------------- appending

  private enqueueAppend(records: readonly Uint8Array[], param: string): Promise<number> {
    const refusal = this.refusal();
    if (refusal) return Promise.reject(refusal);
    let total = 0;
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      const name = param === 'record' ? 'record' : `records[${i}]`;
      if (!(r instanceof Uint8Array)) return Promise.reject(new TypeError(`${name} must be a Uint8Array, got ${r === null ? 'null' : typeof r}`));
      if (r.length === 0) return Promise.reject(new RangeError(`${name} must not be empty`));
      if (r.length > this.opts.maxRecordBytes) return Promise.reject(new RangeError(`${name} is ${r.length} bytes, more than maxRecordBytes (${this.opts.maxRecordBytes})`));
      const nl = r.indexOf(0x0a);
      if (nl !== -1) return Promise.reject(new RangeError(`${name} contains a newline (0x0A) at byte ${nl}; ledger records are single-line JCS`));
      total += r.length + FRAME_OVERHEAD;
    }
    // Frame and leaf-hash now: the bytes are copied before the caller can change them.
    const frames = Buffer.allocUnsafe(total);
    const bounds = new Array<number>(records.length + 1);
    const leaves = new Array<Buffer>(records.length);
    let pos = 0;
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      bounds[i] = pos;
      frames.writeUInt32BE(r.length, pos);
      frames.set(r, pos + 4);
      frames.writeUInt32BE(crc32(frames.subarray(pos, pos + 4 + r.length)), pos + 4 + r.length);
      // Hashing the caller's bytes is safe: nothing can change them between the copy and here.
      leaves[i] = leafHash(r);
      pos += r.length + FRAME_OVERHEAD;
    }
    bounds[records.length] = pos;
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ kind: 'append', frames, bounds, leaves, resolve, reject });
      this.kick();
    });
  }

  /** Queues work behind the appends already queued; callers check `refusal()` first. */
  private enqueueControl(kind: ControlRequest['kind'], before?: number): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ kind, before, resolve, reject });
      this.kick();
    });
  }

  private refusal(): LedgerStoreError | undefined {
    if (this.closed || this.closing) return this.closedError();
    if (this.readOnly) return new LedgerStoreError('KEEL_E_LEDGER_READONLY', `the ledger store in ${this.dir} was opened read-only (repair: false)`);
    if (this.failure) return this.failure;
    return undefined;
  }

  private kick(): void {
    if (this.draining) return;
    this.draining = true;
    void this.drain();
  }

  /** The single writer: takes every queued append as one group, writes it, syncs it, resolves it. */
  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        if (this.failure) {
          for (const r of this.queue.splice(0)) r.reject(this.failure);
          break;
        }
        const head = this.queue[0];
        if (head.kind === 'append') {
          let k = 0;
          while (k < this.queue.length && this.queue[k].kind === 'append') k++;
          await this.commitGroup(this.queue.splice(0, k) as AppendRequest[]);
        } else {
          this.queue.shift();
          try {
            head.resolve(await this.control(head));
          } catch (err) {
            head.reject(err as Error);
          }
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async control(req: ControlRequest): Promise<number> {
    if (req.kind === 'flush') {
      await this.flushSegments();
      if (this.n - this.head.size >= this.opts.recoveryPointEvery) await this.advanceRecoveryPoint();
      return this.durable;
    }
    await this.advanceRecoveryPoint();
    if (req.kind === 'prune') return this.prune(req.before!);
    return this.n;
  }

  /** Bytes a group of `count` records of `frameBytes` adds at size n: frames, index entries, new hashes on every level. */
  private bytesNeeded(n: number, count: number, frameBytes: number): number {
    let hashes = 0;
    const top = topLevel(n + count);
    for (let l = 0; l <= top; l++) hashes += levelCount(n + count, l) - levelCount(n, l);
    return frameBytes + count * IDX_ENTRY + hashes * HASH_SIZE;
  }

  private async commitGroup(reqs: AppendRequest[]): Promise<void> {
    // The disk bound, per request: one that does not fit fails alone, the rest keep their order.
    const accepted: AppendRequest[] = [];
    let projected = this.diskBytes;
    let n = this.n;
    for (const r of reqs) {
      const count = r.leaves.length;
      const need = this.bytesNeeded(n, count, r.frames.length);
      if (this.opts.maxBytes !== undefined && projected + need > this.opts.maxBytes) {
        r.reject(new LedgerStoreError('KEEL_E_LEDGER_FULL', `ledger store ${this.dir} is at its disk bound: ${need} more bytes would exceed maxBytes ${this.opts.maxBytes} (${projected} used); prune acknowledged records or drop unacknowledged ones`, { retryable: true }));
        continue;
      }
      projected += need;
      n += count;
      accepted.push(r);
    }
    if (accepted.length === 0) return;

    let plan: WritePlan;
    try {
      plan = this.writeGroup(accepted);
    } catch (err) {
      const e = err instanceof LedgerStoreError ? err : this.writeError(err);
      for (const r of accepted) r.reject(e);
      return;
    }
    if (this.durability !== 'interval') {
      try {
        await this.syncFds(plan.segFds, plan.newSegment);
      } catch (err) {
        this.fail('fsync of appended records failed', err);
        for (const r of accepted) r.reject(this.failure!);
        return;
      }
    }
    this.commitPlan(plan);
    if (this.durability !== 'interval') this.durable = this.n;
    else this.armTimer();
    let first = plan.first;
    for (const r of accepted) {
      r.resolve(first);
      first += r.leaves.length;
    }
    if (this.durability !== 'interval' && this.n - this.head.size >= this.opts.recoveryPointEvery) {
      try {
        await this.advanceRecoveryPoint();
      } catch {
        // fail() recorded it; the next call reports it.
      }
    }
  }

  /** Writes a group's frames, index entries and hashes (one write per file); on failure cuts every file back. */
  private writeGroup(reqs: AppendRequest[]): WritePlan {
    const first = this.n;
    const frontier = this.frontier.slice();
    let count = 0;
    for (const r of reqs) count += r.leaves.length;
    // New nodes per level, into one buffer each. A level with no new node has none above it.
    const levelBufs: Buffer[] = [];
    const levelFill: number[] = [];
    for (let l = 0; ; l++) {
      const k = levelCount(first + count, l) - levelCount(first, l);
      if (k === 0) break;
      levelBufs.push(Buffer.allocUnsafe(k * HASH_SIZE));
      levelFill.push(0);
    }
    const top = levelBufs.length - 1;
    // Segment pieces: frames split at segment boundaries, with their index entries.
    const pieces: SegmentPiece[] = [];
    const lastSeg: Segment | undefined = this.segs[this.segs.length - 1];
    let piece: SegmentPiece | undefined;
    let haveSeg = lastSeg !== undefined;
    let segBytes = lastSeg ? lastSeg.bytes : 0;
    let segCount = lastSeg ? lastSeg.count : 0;
    let index = first;
    for (const r of reqs) {
      for (let i = 0; i < r.leaves.length; i++, index++) {
        const flen = r.bounds[i + 1] - r.bounds[i];
        if (!haveSeg || (segCount > 0 && segBytes + flen > this.opts.segmentBytes)) {
          piece = { seg: undefined, first: index, startBytes: 0, startCount: 0, ranges: [], buffers: [], offsets: [] };
          pieces.push(piece);
          haveSeg = true;
          segBytes = 0;
          segCount = 0;
        } else if (!piece) {
          piece = { seg: lastSeg, first: lastSeg!.first, startBytes: lastSeg!.bytes, startCount: lastSeg!.count, ranges: [], buffers: [], offsets: [] };
          pieces.push(piece);
        }
        piece.offsets.push(segBytes);
        // Consecutive frames of one request stay one range (one iovec).
        const last = piece.ranges[piece.ranges.length - 1];
        if (last && last.frames === r.frames && last.end === r.bounds[i]) last.end = r.bounds[i + 1];
        else piece.ranges.push({ frames: r.frames, start: r.bounds[i], end: r.bounds[i + 1] });
        segBytes += flen;
        segCount++;
        // The tree: a node with an odd index completes its parent [RFC 6962 2.1].
        let idx = index;
        let l = 0;
        let cur = r.leaves[i];
        for (;;) {
          const left = frontier[l];
          frontier[l] = cur;
          cur.copy(levelBufs[l], levelFill[l]);
          levelFill[l] += HASH_SIZE;
          if (idx % 2 === 0) break;
          cur = nodeHash(left!, cur);
          idx = (idx - 1) / 2;
          l++;
        }
      }
    }

    const undo: (() => void)[] = [];
    const plan: WritePlan = { first, count, frontier, pieces, segFds: [], newSegment: false, newLevels: [], bytes: 0 };
    try {
      for (const p of pieces) {
        if (!p.seg) {
          const rec = path.join(this.dir, segName(p.first, 'rec'));
          const idxFile = path.join(this.dir, segName(p.first, 'idx'));
          const recFd = this.fs.open(rec, 'create');
          undo.push(() => {
            this.fs.close(recFd);
            this.fs.unlink(rec);
          });
          const idxFd = this.fs.open(idxFile, 'create');
          undo.push(() => {
            this.fs.close(idxFd);
            this.fs.unlink(idxFile);
          });
          p.seg = { first: p.first, count: 0, bytes: 0, recFd, idxFd, idxInFile: 0 };
          p.created = true;
          plan.newSegment = true;
        } else {
          const s = p.seg;
          undo.push(() => {
            this.fs.truncate(s.recFd, s.bytes);
            this.fs.truncate(s.idxFd, s.count * IDX_ENTRY);
          });
        }
        const s = p.seg;
        p.buffers = p.ranges.map((x) => x.frames.subarray(x.start, x.end));
        this.fs.write(s.recFd, p.buffers.length === 1 ? p.buffers[0] : p.buffers, p.startBytes);
        const idx = Buffer.allocUnsafe(p.offsets.length * IDX_ENTRY);
        for (let k = 0; k < p.offsets.length; k++) idx.writeUInt32BE(p.offsets[k], k * IDX_ENTRY);
        this.fs.write(s.idxFd, idx, p.startCount * IDX_ENTRY);
        plan.segFds.push(s.recFd);
        plan.bytes += idx.length + p.buffers.reduce((a, b) => a + b.length, 0);
      }
      for (let l = 0; l <= top; l++) {
        if (levelBufs[l].length === 0) continue;
        let fd = this.levelFds[l];
        if (fd === undefined) {
          const file = path.join(this.dir, levelName(l));
          fd = this.fs.open(file, 'create');
          const created = fd;
          undo.push(() => {
            this.fs.close(created);
            this.fs.unlink(file);
          });
          plan.newLevels.push([l, fd]);
        } else {
          const before = levelCount(first, l) * HASH_SIZE;
          const lfd = fd;
          undo.push(() => this.fs.truncate(lfd, before));
        }
        this.fs.write(fd, levelBufs[l], levelCount(first, l) * HASH_SIZE);
        plan.bytes += levelBufs[l].length;
      }
    } catch (err) {
      // Cut every file back to its committed length so nothing half-written stays behind.
      for (const u of undo.reverse()) {
        try {
          u();
        } catch (cleanupErr) {
          this.fail('could not undo a failed append', cleanupErr);
        }
      }
      throw this.failure ?? this.writeError(err);
    }
    return plan;
  }

  private commitPlan(plan: WritePlan): void {
    for (const p of plan.pieces) {
      const s = p.seg!;
      if (p.created) {
        this.segs.push(s);
        this.dirDirty = true;
      }
      s.count += p.offsets.length;
      s.idxInFile += p.offsets.length;
      s.bytes = p.startBytes + p.buffers.reduce((a, b) => a + b.length, 0);
      this.dirtySegFds.add(s.recFd);
      this.dirtyDerivedFds.add(s.idxFd);
    }
    for (const [l, fd] of plan.newLevels) {
      this.levelFds[l] = fd;
      this.dirDirty = true;
    }
    for (let l = 0; levelCount(plan.first + plan.count, l) > levelCount(plan.first, l); l++) this.dirtyDerivedFds.add(this.levelFds[l]);
    if (plan.newSegment) this.dirDirty = true;
    this.frontier = plan.frontier;
    this.n = plan.first + plan.count;
    this.diskBytes += plan.bytes;
  }

  private async syncFds(fds: number[], dir: boolean): Promise<void> {
    const jobs = fds.map((fd) => this.fs.sync(fd));
    if (dir) jobs.push(this.fs.syncDir(this.dir));
    await Promise.all(jobs);
    for (const fd of fds) this.dirtySegFds.delete(fd);
  }

  /** Interval mode's timer work: fsync the record files so what was written becomes durable. */
  private async flushSegments(): Promise<void> {
    const n = this.n;
    const fds = [...this.dirtySegFds];
    const dir = this.dirDirty;
    try {
      await this.syncFds(fds, dir);
    } catch (err) {
      this.fail('fsync of appended records failed', err);
      throw this.failure;
    }
    this.durable = Math.max(this.durable, n);
  }

  private armTimer(): void {
    if (this.timer || this.durable === this.n) return;
    this.timer = this.clock.setTimeout(
      SYNC_TIMER,
      () => {
        this.timer = undefined;
        if (this.closed || this.closing || this.failure) return;
        this.enqueueControl('flush').catch((err: unknown) => {
          if (err instanceof LedgerStoreError && err.code !== 'KEEL_E_LEDGER_CLOSED') this.onError?.(err);
        });
      },
      this.opts.intervalMs,
    );
  }

  /** Fsyncs everything, then writes the head saying all n records are durable. */
  private async advanceRecoveryPoint(prunedBefore = this.head.prunedBefore): Promise<void> {
    if (this.readOnly) return;
    const n = this.n;
    try {
      const fds = [...this.dirtySegFds, ...this.dirtyDerivedFds];
      const jobs = fds.map((fd) => this.fs.sync(fd));
      if (this.dirDirty) jobs.push(this.fs.syncDir(this.dir));
      await Promise.all(jobs);
      this.dirtySegFds.clear();
      this.dirtyDerivedFds.clear();
      this.dirDirty = false;
      this.durable = Math.max(this.durable, n);
      if (n === this.head.size && prunedBefore === this.head.prunedBefore) return;
      await this.writeHead({ generation: this.head.generation + 1, size: n, prunedBefore });
    } catch (err) {
      this.fail('could not make the ledger store durable', err);
      throw this.failure;
    }
  }

  private async writeHead(h: HeadState): Promise<void> {
    this.fs.write(this.headFd, encodeHead(h), (h.generation % 2) * HEAD_SLOT);
    await this.fs.sync(this.headFd);
    this.head = h;
  }

  private async prune(before: number): Promise<number> {
    // Whole segments below `before`, never the newest (appends continue in it).
    let k = 0;
    while (k < this.segs.length - 1 && this.segs[k].first + this.segs[k].count <= before) k++;
    if (k === 0) return this.firstAvailable;
    const next = this.segs[k].first;
    try {
      // The head first: a crash part-way leaves files the next open finishes deleting.
      await this.writeHead({ generation: this.head.generation + 1, size: this.head.size, prunedBefore: next });
      for (const s of this.segs.slice(0, k)) {
        this.fs.close(s.recFd);
        this.fs.close(s.idxFd);
        this.fs.unlink(path.join(this.dir, segName(s.first, 'rec')));
        this.fs.unlink(path.join(this.dir, segName(s.first, 'idx')));
        this.diskBytes -= s.bytes + s.count * IDX_ENTRY;
      }
      this.segs = this.segs.slice(k);
      await this.fs.syncDir(this.dir);
    } catch (err) {
      this.fail('pruning failed', err);
      throw this.failure;
    }
    return next;
  }

  // -------------------------------------------------------------------------- reading

  private checkOpen(): void {
    if (this.closed) throw this.closedError();
  }

  private segmentOf(index: number): Segment {
    let lo = 0;
    let hi = this.segs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segs[mid].first <= index) lo = mid;
      else hi = mid - 1;
    }
    return this.segs[lo];
  }

  private frameOffset(seg: Segment, index: number): number {
    const k = index - seg.first;
    if (k >= seg.idxInFile) return this.overlay!.offsets[index - this.overlay!.base];
    const b = Buffer.alloc(IDX_ENTRY);
    if (this.readFully(seg.idxFd, b, k * IDX_ENTRY) < IDX_ENTRY) {
      throw corruptError(this.dir, { index, file: segName(seg.first, 'idx'), offset: k * IDX_ENTRY, reason: 'index entry missing' });
    }
    return b.readUInt32BE(0);
  }

  private nodesInFile(level: number): number {
    return this.overlay ? levelCount(this.overlay.base, level) : levelCount(this.n, level);
  }

  private storedNode(level: number, index: number): Buffer {
    if (index >= this.nodesInFile(level)) return Buffer.from(this.overlay!.nodes[level][index - levelCount(this.overlay!.base, level)]);
    const b = Buffer.alloc(HASH_SIZE);
    const fd = this.levelFds[level];
    if (fd === undefined || this.readFully(fd, b, index * HASH_SIZE) < HASH_SIZE) {
      throw corruptError(this.dir, { index: index * 2 ** level, file: levelName(level), offset: index * HASH_SIZE, reason: `hash of level ${level} node ${index} missing` });
    }
    return b;
  }

  private readFully(fd: number, buf: Buffer, position: number): number {
    let got = 0;
    while (got < buf.length) {
      const n = this.fs.read(fd, buf, got, buf.length - got, position + got);
      if (n === 0) break;
      got += n;
    }
    return got;
  }

  // -------------------------------------------------------------------------- failures

  private closedError(): LedgerStoreError {
    return new LedgerStoreError('KEEL_E_LEDGER_CLOSED', `the ledger store in ${this.dir} is closed`);
  }

  private ioError(message: string, cause: unknown): LedgerStoreError {
    const code = errnoOf(cause);
    return new LedgerStoreError('KEEL_E_LEDGER_IO', `${message}: ${code ?? (cause as Error)?.message ?? String(cause)}`, { cause });
  }

  private writeError(err: unknown): LedgerStoreError {
    const code = errnoOf(err);
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
      return new LedgerStoreError('KEEL_E_LEDGER_FULL', `no space left for the ledger store in ${this.dir} (${code}); nothing was appended, retry when space is freed`, { cause: err, retryable: true });
    }
    return new LedgerStoreError('KEEL_E_LEDGER_IO', `append to the ledger store in ${this.dir} failed (${code ?? String(err)}); nothing was appended`, { cause: err });
  }

  /**
   * After a failed fsync the kernel may have dropped the dirty pages, so nothing written since
   * the last good sync can be trusted: refuse every later call until a reopen recovers.
   */
  private fail(message: string, cause: unknown): void {
    if (this.failure) return;
    this.failure = new LedgerStoreError('KEEL_E_LEDGER_IO', `${message} in ${this.dir} (${errnoOf(cause) ?? String(cause)}); the store refuses further writes, reopen it to recover`, { cause });
  }

  private releaseAll(): void {
    const close = (fd: number | undefined) => {
      if (fd === undefined || fd < 0) return;
      try {
        this.fs.close(fd);
      } catch {
        // already closed
      }
    };
    for (const s of this.segs) {
      close(s.recFd);
      close(s.idxFd);
    }
    for (const fd of this.levelFds) close(fd);
    close(this.headFd);
    this.headFd = -1;
    this.segs = [];
    this.levelFds = [];
    if (this.lockHeld) {
      this.lockHeld = false;
      heldHere(this.fs).delete(this.dir);
      try {
        this.fs.unlink(path.join(this.dir, 'LOCK'));
      } catch {
        // gone already
      }
    }
  }

  // -------------------------------------------------------------------------- recovery

  private async recover(): Promise<void> {
    const fs = this.fs;
    const dir = this.dir;
    const rep = this.recovery;
    const ro = this.readOnly;
    let names: string[];
    try {
      names = fs.list(dir);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
      if (ro) throw new LedgerStoreError('KEEL_E_LEDGER_DIR', `no ledger store at ${dir} (the directory does not exist)`);
      fs.mkdir(dir);
      names = [];
    }
    if (!ro) {
      this.takeLock();
      names = fs.list(dir);
    }
    const ours = names.filter((n) => n !== 'LOCK');
    const hasData = ours.some((n) => SEG_RE.test(n) || LEVEL_RE.test(n));
    // Creation writes head, then FORMAT, then syncs the directory: a power cut before that
    // may leave either one alone. Without any record or hash file that is a store not yet
    // created, and creating it again loses nothing.
    const halfCreated = !hasData && ours.includes('FORMAT') !== ours.includes('head');
    if (!ours.includes('FORMAT') || halfCreated) {
      if (hasData) throw corruptError(dir, { file: 'FORMAT', reason: 'the FORMAT file is missing although record or hash files are present' });
      const strays = ours.filter((n) => n !== 'head' && n !== 'FORMAT');
      if (strays.length > 0) throw new LedgerStoreError('KEEL_E_LEDGER_DIR', `${dir} is not empty and holds no ledger store (no FORMAT file); refusing to write into it`);
      if (ro) throw new LedgerStoreError('KEEL_E_LEDGER_DIR', `no ledger store at ${dir} (${ours.length > 0 ? 'its creation was interrupted' : 'the directory is empty'})`);
      for (const n of ours) {
        fs.unlink(path.join(dir, n));
        rep.removedFiles.push(n);
      }
      await this.create();
      this.diskBytes = FORMAT_TEXT.length + 2 * HEAD_SLOT;
      return;
    }
    const formatText = this.readSmall(path.join(dir, 'FORMAT'), 256).toString('latin1');
    if (formatText !== FORMAT_TEXT) {
      throw new LedgerStoreError('KEEL_E_LEDGER_DIR', `${dir}/FORMAT says ${JSON.stringify(formatText.slice(0, 60))}; this keel reads ${JSON.stringify(FORMAT_TEXT)} (a newer keel wrote it, or it is not a keel ledger store)`);
    }

    // The head: the recovery point S and the prune boundary P.
    const segFirsts = new Map<number, { rec: boolean; idx: boolean }>();
    const levelsPresent = new Set<number>();
    for (const name of names) {
      const m = SEG_RE.exec(name);
      if (m) {
        const first = Number(m[1]);
        if (!Number.isSafeInteger(first)) throw corruptError(dir, { file: name, reason: 'segment number out of range' });
        const e = segFirsts.get(first) ?? { rec: false, idx: false };
        e[m[2] as 'rec' | 'idx'] = true;
        segFirsts.set(first, e);
      }
      const lm = LEVEL_RE.exec(name);
      if (lm && Number(lm[1]) <= MAX_LEVEL) levelsPresent.add(Number(lm[1]));
    }
    const firsts = [...segFirsts.keys()].sort((a, b) => a - b);
    if (!names.includes('head')) throw corruptError(dir, { file: 'head', reason: 'the head file is missing' });
    this.headFd = fs.open(path.join(dir, 'head'), ro ? 'read' : 'write');
    const headBuf = Buffer.alloc(2 * HEAD_SLOT);
    this.readFully(this.headFd, headBuf, 0);
    const slots = [decodeHead(headBuf.subarray(0, HEAD_SLOT)), decodeHead(headBuf.subarray(HEAD_SLOT))].filter((h): h is HeadState => h !== undefined);
    let head = slots.sort((a, b) => b.generation - a.generation)[0];
    const headInvalid = !head;
    if (!head) {
      if (firsts.length > 0 && firsts[0] !== 0) throw corruptError(dir, { file: 'head', offset: 0, reason: `both recovery-point slots are unreadable and records before ${firsts[0]} are not stored, so the tree cannot be re-derived` });
      head = { generation: 0, size: 0, prunedBefore: 0 };
      rep.headReset = firsts.length > 0 || levelsPresent.size > 0;
    }
    this.head = head;
    const S = head.size;
    const P = head.prunedBefore;
    rep.recoveryPoint = S;

    const overlay: Overlay = { base: S, offsets: [], nodes: [] };

    // Leftovers of an interrupted prune: segments wholly below P.
    const removable = (name: string) => {
      rep.removedFiles.push(name);
      if (!ro) fs.unlink(path.join(dir, name));
    };
    while (firsts.length > 0 && firsts[0] < P && (firsts.length === 1 ? false : firsts[1] <= P)) {
      const f = firsts.shift()!;
      const e = segFirsts.get(f)!;
      if (e.rec) removable(segName(f, 'rec'));
      if (e.idx) removable(segName(f, 'idx'));
    }
    if (firsts.length === 0 && S > 0) throw corruptError(dir, { index: P, file: segName(P, 'rec'), reason: `no record segment is stored, yet the head vouches for ${S} records` });
    if (firsts.length > 0 && firsts[0] !== P) {
      throw corruptError(dir, { index: Math.min(P, firsts[0]), file: segName(firsts[0], 'rec'), reason: firsts[0] > P ? `records ${P}..${firsts[0] - 1} are missing (segment files deleted?)` : `segment starts at ${firsts[0]} but records below ${P} were pruned` });
    }

    // Open the segments. A missing half is allowed only in the newest segment past the
    // recovery point: a crash between creating the .rec and the .idx of a new segment.
    for (let k = 0; k < firsts.length; k++) {
      const f = firsts[k];
      const e = segFirsts.get(f)!;
      if (!e.rec || !e.idx) {
        if (k !== firsts.length - 1 || f < S) {
          throw corruptError(dir, { index: f, file: segName(f, e.rec ? 'idx' : 'rec'), reason: 'file missing' });
        }
        if (!e.rec) {
          removable(segName(f, 'idx'));
          firsts.pop();
          break;
        }
        if (!ro) {
          fs.close(fs.open(path.join(dir, segName(f, 'idx')), 'create'));
          this.dirDirty = true;
        }
      }
      const recFd = fs.open(path.join(dir, segName(f, 'rec')), ro ? 'read' : 'write');
      let idxFd = -1;
      if (e.idx || !ro) {
        try {
          idxFd = fs.open(path.join(dir, segName(f, 'idx')), ro ? 'read' : 'write');
        } catch (err) {
          fs.close(recFd);
          throw err;
        }
      }
      this.segs.push({ first: f, count: 0, bytes: fs.size(recFd), recFd, idxFd, idxInFile: idxFd >= 0 ? Math.floor(fs.size(idxFd) / IDX_ENTRY) : 0 });
    }
    for (const l of [...levelsPresent].sort((a, b) => a - b)) this.levelFds[l] = fs.open(path.join(dir, levelName(l)), ro ? 'read' : 'write');

    // Trusted region [P, S): structure always, every frame with verify 'frames' or 'full'.
    const segs = this.segs;
    let t = 0; // the segment holding record S (the newest one with first <= S)
    while (t + 1 < segs.length && segs[t + 1].first <= S) t++;
    for (let k = 0; k <= t && k < segs.length && segs[k].first < S; k++) {
      const s = segs[k];
      const c = (k < t ? segs[k + 1].first : S) - s.first;
      if (s.idxInFile < c) throw corruptError(dir, { index: s.first + s.idxInFile, file: segName(s.first, 'idx'), offset: s.idxInFile * IDX_ENTRY, reason: `index file holds ${s.idxInFile} entries, the recovery point vouches for ${c}` });
      const end = this.checkTrusted(s, c, k < t);
      s.count = c;
      if (k < t && s.bytes !== end) throw corruptError(dir, { index: s.first + c - 1, file: segName(s.first, 'rec'), offset: end, reason: `${s.bytes - end} stray bytes after the last record of a closed segment` });
      if (k < t && s.idxInFile !== c) throw corruptError(dir, { index: s.first + c, file: segName(s.first, 'idx'), offset: c * IDX_ENTRY, reason: 'stray index entries after the last record of a closed segment' });
    }
    for (let l = 0; l <= topLevel(S); l++) {
      const need = levelCount(S, l);
      const have = this.levelFds[l] === undefined ? 0 : Math.floor(fs.size(this.levelFds[l]) / HASH_SIZE);
      if (have < need) throw corruptError(dir, { index: have * 2 ** l, file: levelName(l), offset: have * HASH_SIZE, reason: `hash file of level ${l} holds ${have} hashes, the recovery point vouches for ${need}` });
    }

    // Past S: scan the frames; tell a torn tail from corruption.
    const tail: { seg: Segment; offset: number; leaf: Buffer }[] = [];
    let n = S;
    if (segs.length > 0) {
      const st = segs[t];
      let pos = 0;
      if (S > st.first) {
        const lastOff = this.frameOffset(st, S - 1);
        const f = frameAt(new WindowReader(fs, st.recFd, st.bytes, 1 << 16), lastOff);
        if (!f.ok) throw corruptError(dir, { index: S - 1, file: segName(st.first, 'rec'), offset: lastOff, reason: f.reason });
        pos = f.end;
      }
      // bad: the first place the frames stop making sense; `from` is where a valid frame after it would prove corruption.
      let bad: { k: number; offset: number; from: number; reason: string } | undefined;
      let endSeg = t;
      let endPos = pos;
      scan: for (let k = t; k < segs.length; k++) {
        const s = segs[k];
        if (k > t && s.first !== n) {
          bad = { k, offset: 0, from: 0, reason: `the segment starts at record ${s.first}, the records before it end at ${n}` };
          break;
        }
        const r = new WindowReader(fs, s.recFd, s.bytes);
        let p = k === t ? pos : 0;
        endSeg = k;
        endPos = p;
        while (p < s.bytes) {
          const f = frameAt(r, p);
          if (!f.ok) {
            bad = { k, offset: p, from: p + 1, reason: f.reason };
            break scan;
          }
          tail.push({ seg: s, offset: p, leaf: leafHash(f.payload) });
          n++;
          p = f.end;
          endPos = p;
        }
      }
      if (bad) {
        // A valid frame anywhere after the bad spot means the damage is not a torn tail.
        for (let j = bad.k; j < segs.length; j++) {
          const found = findValidFrame(new WindowReader(fs, segs[j].recFd, segs[j].bytes), j === bad.k ? bad.from : 0);
          if (found < 0) continue;
          const c: LedgerCorruption = { index: n, file: segName(segs[bad.k].first, 'rec'), offset: bad.offset, reason: `${bad.reason}, and a valid record follows at byte ${found} of ${segName(segs[j].first, 'rec')}` };
          if (!ro) throw corruptError(dir, c);
          rep.corrupt ??= c;
          break;
        }
      }
      // The torn tail: cut it (read-only: measure it) and drop the segments after it.
      const cut = segs[endSeg];
      const torn = cut.bytes - endPos;
      let tornTotal = torn;
      for (const s of segs.slice(endSeg + 1)) tornTotal += s.bytes + (s.idxFd >= 0 ? fs.size(s.idxFd) : 0);
      if (ro) {
        rep.tornBytes = tornTotal;
      } else {
        if (torn > 0) fs.truncate(cut.recFd, endPos);
        rep.truncatedFrameBytes += torn + segs.slice(endSeg + 1).reduce((a, s) => a + s.bytes, 0);
        rep.truncatedBytes += tornTotal;
        if (torn > 0) this.dirtySegFds.add(cut.recFd);
      }
      cut.bytes = endPos;
      for (const s of segs.slice(endSeg + 1)) {
        fs.close(s.recFd);
        if (s.idxFd >= 0) fs.close(s.idxFd);
        removable(segName(s.first, 'rec'));
        if (s.idxFd >= 0 || !ro) removable(segName(s.first, 'idx'));
        this.dirDirty = true;
      }
      segs.length = endSeg + 1;

      // Index entries past S: re-derived from the scan (read-only: kept in memory).
      for (let k = t; k < segs.length; k++) {
        const s = segs[k];
        const mine = tail.filter((e) => e.seg === s);
        const already = Math.max(0, S - s.first);
        s.count = already + mine.length;
        if (ro) {
          for (const e of mine) overlay.offsets.push(e.offset);
          s.idxInFile = Math.min(s.idxInFile, already);
          continue;
        }
        const want = Buffer.allocUnsafe(mine.length * IDX_ENTRY);
        mine.forEach((e, i) => want.writeUInt32BE(e.offset, i * IDX_ENTRY));
        const haveBytes = fs.size(s.idxFd);
        const start = already * IDX_ENTRY;
        const have = Buffer.alloc(Math.max(0, Math.min(haveBytes - start, want.length)));
        if (have.length > 0) this.readFully(s.idxFd, have, start);
        for (let i = 0; i < mine.length; i++) {
          if ((i + 1) * IDX_ENTRY > have.length) rep.rebuiltIndexEntries++;
          else if (have.readUInt32BE(i * IDX_ENTRY) !== want.readUInt32BE(i * IDX_ENTRY)) rep.replacedEntries++;
        }
        if (mine.length > 0 && !have.equals(want)) fs.write(s.idxFd, want, start);
        const finalBytes = s.count * IDX_ENTRY;
        if (haveBytes > finalBytes) {
          fs.truncate(s.idxFd, finalBytes);
          rep.truncatedBytes += haveBytes - finalBytes;
        }
        s.idxInFile = s.count;
        if (mine.length > 0 || haveBytes !== finalBytes) this.dirtyDerivedFds.add(s.idxFd);
      }
    }
    this.n = n;

    // Hashes past S: the frontier at S from the files, then every tail leaf pushed through it.
    for (let l = 0; l <= topLevel(S); l++) this.frontier[l] = this.storedNodeRaw(l, levelCount(S, l) - 1, S);
    const top = topLevel(n);
    const fresh: Buffer[][] = [];
    for (let l = 0; l <= Math.max(top, 0); l++) fresh.push([]);
    let idx0 = S;
    for (const e of tail) {
      let idx = idx0++;
      let l = 0;
      let cur = e.leaf;
      for (;;) {
        const left = this.frontier[l];
        this.frontier[l] = cur;
        fresh[l].push(cur);
        if (idx % 2 === 0) break;
        cur = nodeHash(left!, cur);
        idx = (idx - 1) / 2;
        l++;
      }
    }
    if (ro) {
      overlay.nodes = fresh;
      this.overlay = overlay;
    } else {
      for (let l = 0; l <= MAX_LEVEL; l++) {
        const fd = this.levelFds[l];
        const want = l < fresh.length ? Buffer.concat(fresh[l]) : Buffer.alloc(0);
        const start = levelCount(S, l) * HASH_SIZE;
        const finalBytes = levelCount(n, l) * HASH_SIZE;
        if (fd === undefined) {
          if (want.length === 0) continue;
          this.levelFds[l] = fs.open(path.join(dir, levelName(l)), 'create');
          this.dirDirty = true;
          fs.write(this.levelFds[l], want, 0);
          rep.rebuiltHashes += want.length / HASH_SIZE;
          this.dirtyDerivedFds.add(this.levelFds[l]);
          continue;
        }
        const haveBytes = fs.size(fd);
        const have = Buffer.alloc(Math.max(0, Math.min(haveBytes - start, want.length)));
        if (have.length > 0) this.readFully(fd, have, start);
        for (let i = 0; i * HASH_SIZE < want.length; i++) {
          if ((i + 1) * HASH_SIZE <= have.length) {
            if (!have.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE).equals(want.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE))) rep.replacedEntries++;
          } else {
            rep.rebuiltHashes++;
          }
        }
        if (want.length > 0 && !have.equals(want)) fs.write(fd, want, start);
        if (haveBytes > finalBytes) {
          fs.truncate(fd, finalBytes);
          rep.truncatedBytes += haveBytes - finalBytes;
        }
        if (finalBytes > 0 && (want.length > 0 || haveBytes !== finalBytes)) this.dirtyDerivedFds.add(fd);
        if (finalBytes === 0) {
          fs.close(fd);
          delete this.levelFds[l];
          removable(levelName(l));
          this.dirDirty = true;
        }
      }
    }
    this.frontier.length = Math.max(top + 1, 0);

    rep.records = n;
    this.durable = n;
    this.diskBytes = this.measureBytes();
    if (this.opts.verify === 'full') {
      try {
        await this.verify();
      } catch (err) {
        if (!(err instanceof LedgerStoreError) || !ro) throw err;
        rep.corrupt ??= { index: err.index, file: err.file ?? '', offset: err.offset, reason: err.message };
      }
    }
    if (!ro) {
      // Make the repaired state durable before anyone appends to it, then vouch for it.
      await this.advanceRecoveryPoint();
      if (headInvalid && this.head.generation === 0) await this.writeHead({ generation: 1, size: n, prunedBefore: P });
    }
  }

  /**
   * Checks the first c records of a trusted segment and returns the end of the last one.
   * With verify 'tail' only the last record's frame is read; otherwise every frame, each
   * against its index entry.
   */
  private checkTrusted(s: Segment, c: number, closed: boolean): number {
    if (c === 0) return 0;
    const dir = this.dir;
    const file = segName(s.first, 'rec');
    const r = new WindowReader(this.fs, s.recFd, s.bytes);
    const idxR = new WindowReader(this.fs, s.idxFd, s.idxInFile * IDX_ENTRY, 1 << 16);
    const report = (c0: LedgerCorruption): void => {
      if (!this.readOnly) throw corruptError(dir, c0);
      this.recovery.corrupt ??= c0;
    };
    if (this.opts.verify === 'tail') {
      const off = idxR.get((c - 1) * IDX_ENTRY, IDX_ENTRY)!.readUInt32BE(0);
      const f = frameAt(r, off);
      if (!f.ok) {
        report({ index: s.first + c - 1, file, offset: off, reason: f.reason });
        return closed ? s.bytes : off;
      }
      return f.end;
    }
    let pos = 0;
    for (let k = 0; k < c; k++) {
      const off = idxR.get(k * IDX_ENTRY, IDX_ENTRY)!.readUInt32BE(0);
      if (off !== pos) {
        report({ index: s.first + k, file: segName(s.first, 'idx'), offset: k * IDX_ENTRY, reason: `index entry says byte ${off}, the frames say ${pos}` });
        pos = off;
      }
      const f = frameAt(r, pos);
      if (!f.ok) {
        report({ index: s.first + k, file, offset: pos, reason: f.reason });
        // Read-only: resynchronize on the next index entry.
        pos = k + 1 < c ? idxR.get((k + 1) * IDX_ENTRY, IDX_ENTRY)!.readUInt32BE(0) : s.bytes;
        continue;
      }
      pos = f.end;
    }
    return pos;
  }

  /** Node (l, j) read from its file during recovery (before n is set). */
  private storedNodeRaw(level: number, index: number, size: number): Buffer {
    const b = Buffer.alloc(HASH_SIZE);
    const fd = this.levelFds[level];
    if (fd === undefined || this.readFully(fd, b, index * HASH_SIZE) < HASH_SIZE) {
      throw corruptError(this.dir, { index: index * 2 ** level, file: levelName(level), offset: index * HASH_SIZE, reason: `hash needed for size ${size} is missing` });
    }
    return b;
  }

  private measureBytes(): number {
    let total = FORMAT_TEXT.length + 2 * HEAD_SLOT;
    for (const s of this.segs) total += s.bytes + s.count * IDX_ENTRY;
    for (let l = 0; l <= topLevel(this.n); l++) total += levelCount(this.n, l) * HASH_SIZE;
    return total;
  }

  /** Creates head, then FORMAT (the mark of a complete store), then makes both entries durable. */
  private async create(): Promise<void> {
    const fs = this.fs;
    this.headFd = fs.open(path.join(this.dir, 'head'), 'create');
    this.head = { generation: 0, size: 0, prunedBefore: 0 };
    fs.write(this.headFd, Buffer.concat([encodeHead(this.head), Buffer.alloc(HEAD_SLOT)]), 0);
    await fs.sync(this.headFd);
    const fmt = fs.open(path.join(this.dir, 'FORMAT'), 'create');
    try {
      fs.write(fmt, Buffer.from(FORMAT_TEXT, 'latin1'), 0);
      await fs.sync(fmt);
    } finally {
      fs.close(fmt);
    }
    await fs.syncDir(this.dir);
  }

  private readSmall(file: string, max: number): Buffer {
    const fd = this.fs.open(file, 'read');
    try {
      const b = Buffer.alloc(max);
      return b.subarray(0, this.readFully(fd, b, 0));
    } finally {
      this.fs.close(fd);
    }
  }

  /** Takes <dir>/LOCK (exclusive create), taking over one left by a dead process. */
  private takeLock(): void {
    const file = path.join(this.dir, 'LOCK');
    for (let attempt = 0; attempt < 2; attempt++) {
      let fd: number;
      try {
        fd = this.fs.open(file, 'create');
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
        let owner: LockOwner | undefined;
        try {
          // Only a complete line counts: a LOCK torn by a power cut names nobody.
          const m = /^(\d{1,10}) (\d{1,20}|-)\n$/.exec(this.readSmall(file, 64).toString('latin1'));
          if (m) owner = { pid: Number(m[1]), start: m[2] === '-' ? undefined : m[2] };
        } catch {
          // vanished or unreadable: stale
        }
        if (owner && owner.pid > 0 && (owner.pid === process.pid ? heldHere(this.fs).has(this.dir) : this.lockOwnerAlive(owner))) {
          throw new LedgerStoreError('KEEL_E_LEDGER_LOCKED', `the ledger store in ${this.dir} is open for writing by process ${owner.pid}${owner.pid === process.pid ? ' (this process)' : ''}`, { retryable: true });
        }
        if (owner) this.recovery.staleLockPid = owner.pid;
        try {
          this.fs.unlink(file);
        } catch {
          // another opener removed it first; the exclusive create decides
        }
        continue;
      }
      try {
        this.fs.write(fd, Buffer.from(`${process.pid} ${processStart(process.pid) ?? '-'}\n`), 0);
      } finally {
        this.fs.close(fd);
      }
      this.lockHeld = true;
      heldHere(this.fs).add(this.dir);
      return;
    }
    throw new LedgerStoreError('KEEL_E_LEDGER_LOCKED', `could not take the lock of the ledger store in ${this.dir}`, { retryable: true });
  }
}

/** Directories this process holds the LOCK of, per filesystem (a pid check cannot tell them apart). */
const heldLocks = new WeakMap<LedgerFs, Set<string>>();
function heldHere(fs: LedgerFs): Set<string> {
  let s = heldLocks.get(fs);
  if (!s) heldLocks.set(fs, (s = new Set()));
  return s;
}

interface SegmentPiece {
  seg: Segment | undefined;
  first: number;
  startBytes: number;
  startCount: number;
  /** Frame bytes to write, as ranges of request buffers; `buffers` holds their views at write time. */
  ranges: { frames: Buffer; start: number; end: number }[];
  buffers: Buffer[];
  offsets: number[];
  created?: boolean;
}

interface WritePlan {
  first: number;
  count: number;
  frontier: (Buffer | undefined)[];
  pieces: SegmentPiece[];
  segFds: number[];
  newSegment: boolean;
  newLevels: [number, number][];
  bytes: number;
}

/** Start time of a process in clock ticks since boot (Linux), or undefined where /proc is not there. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return /^\d+$/.test(fields[19] ?? '') ? fields[19] : undefined;
  } catch {
    return undefined;
  }
}

function defaultLockOwnerAlive(owner: LockOwner): boolean {
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if (errnoOf(err) !== 'EPERM') return false;
  }
  if (owner.start === undefined) return true;
  const now = processStart(owner.pid);
  return now === undefined || now === owner.start;
}

function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
