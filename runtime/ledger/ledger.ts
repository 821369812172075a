/**
 * The signed ledger: records (JCS JSON) appended to a LedgerStore, whose RFC 6962 tree is
 * signed as C2SP checkpoints by the device key. Layout of a ledger directory:
 *   records/     the LedgerStore (record frames, index, per-level subtree hashes)
 *   checkpoint   the latest signed checkpoint note (replaced atomically: write, fsync, rename)
 *   vkey         the verifier key the ledger was created with (trust on first use for
 *                `keel log verify` without --key; a verifier who cares brings their own key)
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { SystemClock, type Clock } from '../clock.ts';
import { canonicalBytes } from './jcs.ts';
import { leafHash } from './hash.ts';
import { consistencyProof, inclusionProof, rootAt } from './merkle.ts';
import { formatCheckpoint, noteSigner, noteVerifier, openCheckpoint, signNote, verifierKey, type Checkpoint, type NoteSigner } from './note.ts';
import { formatAddCheckpoint, formatTlogProof } from './proof.ts';
import { RECORD_VERSION, type RecordKind } from './records.ts';
import { LedgerStore, type LedgerDurability } from './store.ts';
import type { DeviceKey } from './keys.ts';
import { KeelError } from '../errors.ts';

/** Options of `Ledger.open`. */
export interface LedgerOptions {
  /** The device key; required to append or sign. */
  key?: DeviceKey;
  /** Checkpoint origin and signer name (default: the key's name, else `keel-device`). */
  origin?: string;
  durability?: LedgerDurability;
  intervalMs?: number;
  maxBytes?: number;
  clock?: Clock;
  /** Open without changing anything on disk (verification, proofs, export). */
  readOnly?: boolean;
}

/** One record to append: its kind, its body fields and optionally its device time. */
export interface RecordInput {
  kind: RecordKind;
  body: Record<string, unknown>;
  t?: number;
}

/** Result of `verify()`. */
export interface LedgerVerification {
  ok: boolean;
  size: number;
  checkpointSize?: number;
  /** The first problem found, with the record index when one is concerned. */
  problem?: { index?: number; reason: string };
}

const RESERVED = new Set(['v', 'seq', 't', 'kind']);

/**
 * Segment and record sizes under a disk bound: about 16 segments fit, so pruning whole
 * segments frees space in steps of ~1/16; a record may be at most a segment's worth.
 */
function boundedSegments(maxBytes: number): { segmentBytes: number; maxRecordBytes: number } {
  const segmentBytes = Math.max(64 * 1024, Math.floor(maxBytes / 16));
  return { segmentBytes, maxRecordBytes: Math.min(1024 * 1024, segmentBytes - 8) };
}

/** An open ledger directory. */
export class Ledger {
  readonly dir: string;
  readonly origin: string;
  private readonly store: LedgerStore;
  private readonly signer?: NoteSigner;
  private readonly clock: Clock;
  private readonly readOnly: boolean;
  private queue: Promise<void> = Promise.resolve();

  private constructor(dir: string, store: LedgerStore, origin: string, signer: NoteSigner | undefined, clock: Clock, readOnly: boolean) {
    this.dir = dir;
    this.store = store;
    this.origin = origin;
    this.signer = signer;
    this.clock = clock;
    this.readOnly = readOnly;
  }

  /** Opens (creating unless read-only) the ledger in `dir`, recovering the store's tail. */
  static async open(dir: string, opts: LedgerOptions = {}): Promise<Ledger> {
    const readOnly = opts.readOnly ?? false;
    if (!readOnly) mkdirSync(dir, { recursive: true });
    else if (!existsSync(path.join(dir, 'records'))) throw new KeelError('KEEL_E_USAGE', `${dir} is not a keel ledger (no records/ folder)`);
    const origin = opts.origin ?? opts.key?.name ?? Ledger.vkeyName(dir) ?? 'keel-device';
    const signer = opts.key ? noteSigner(origin, opts.key.privateKey) : undefined;
    const store = await LedgerStore.open(path.join(dir, 'records'), {
      durability: opts.durability,
      intervalMs: opts.intervalMs,
      maxBytes: opts.maxBytes,
      // Under a disk bound, segments must be small enough that pruning whole ones frees space.
      ...(opts.maxBytes ? boundedSegments(opts.maxBytes) : {}),
      clock: opts.clock,
      repair: !readOnly,
    });
    if (signer && opts.key && !readOnly) {
      const vkey = verifierKey(origin, opts.key.publicKey);
      const file = path.join(dir, 'vkey');
      if (!existsSync(file)) writeFileSync(file, `${vkey}\n`);
      else if (readFileSync(file, 'utf8').trim() !== vkey) {
        await store.close();
        throw new KeelError('KEEL_E_USAGE', `${dir} was created by another key (${readFileSync(file, 'utf8').trim()}); refusing to sign it with ${vkey}`);
      }
    }
    return new Ledger(dir, store, origin, signer, opts.clock ?? new SystemClock(), readOnly);
  }

  /** The key name in the ledger's vkey file (its checkpoint origin), if the file exists. */
  private static vkeyName(dir: string): string | undefined {
    const f = path.join(dir, 'vkey');
    return existsSync(f) ? readFileSync(f, 'utf8').trim().split('+')[0] : undefined;
  }

  /** Records in the log. */
  get size(): number {
    return this.store.size;
  }

  /** First index whose record bytes are still on disk (earlier ones were pruned). */
  get firstAvailable(): number {
    return this.store.firstAvailable;
  }

  /** The verifier key of the signing key, if the ledger was opened with one. */
  get vkey(): string | undefined {
    const f = path.join(this.dir, 'vkey');
    return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined;
  }

  /** Builds the record bytes for `input` at index `seq` (JCS; the exact leaf bytes). */
  static recordBytes(seq: number, input: RecordInput, now: number): Uint8Array {
    if (input.body === null || typeof input.body !== 'object' || Array.isArray(input.body)) throw new TypeError('record body must be a JSON object');
    for (const k of Object.keys(input.body)) if (RESERVED.has(k)) throw new RangeError(`record body must not set "${k}" (keel sets v, seq, t and kind)`);
    return canonicalBytes({ ...input.body, v: RECORD_VERSION, seq, t: input.t ?? now, kind: input.kind });
  }

  /** Appends one record; resolves with its index once durable per the store's mode. */
  append(input: RecordInput): Promise<number> {
    return this.appendBatch([input]);
  }

  /**
   * Appends records in order; resolves with the first index once durable per the mode.
   * Appends run one after another: each record's `seq` is taken from the store's size when
   * its batch is written, so a failed batch leaves no hole in the numbering.
   */
  appendBatch(inputs: readonly RecordInput[]): Promise<number> {
    if (this.readOnly) return Promise.reject(new KeelError('KEEL_E_USAGE', 'the ledger is open read-only'));
    const run = this.queue.then(() => {
      const first = this.store.size;
      const now = this.clock.now();
      return this.store.appendBatch(inputs.map((r, i) => Ledger.recordBytes(first + i, r, now)));
    });
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** The exact bytes of record `index`. */
  read(index: number): Buffer {
    return this.store.read(index);
  }

  /**
   * The exact bytes of consecutive records from `start` with one read (see LedgerStore.readRange):
   * at least one, stopping before `end`, within `maxBytes`, or at a segment end. Sync reads with it.
   */
  readRange(start: number, end: number, maxBytes: number): Buffer[] {
    return this.store.readRange(start, end, maxBytes);
  }

  /** Signs a checkpoint of the current tree and makes it the latest (atomically). Returns the note. */
  async checkpoint(): Promise<string> {
    if (!this.signer) throw new KeelError('KEEL_E_USAGE', 'signing a checkpoint needs the device key (--key)');
    await this.store.sync();
    const size = this.store.size;
    const text = formatCheckpoint({ origin: this.origin, size, root: rootAt(size, this.store) });
    const note = signNote(text, [this.signer]);
    const file = path.join(this.dir, 'checkpoint');
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeSync(fd, note);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    const dfd = openSync(this.dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
    return note;
  }

  /**
   * Signs a checkpoint of the first `size` records without making it the latest: sync sends
   * one per batch. Only durable records are covered (the store is synced first).
   */
  async signCheckpointAt(size: number): Promise<string> {
    if (!this.signer) throw new KeelError('KEEL_E_USAGE', 'signing a checkpoint needs the device key (--key)');
    await this.store.sync();
    if (!Number.isSafeInteger(size) || size < 0 || size > this.store.size) throw new RangeError(`size must be an integer in [0, ${this.store.size}], got ${size}`);
    return signNote(formatCheckpoint({ origin: this.origin, size, root: rootAt(size, this.store) }), [this.signer]);
  }

  /** RFC 6962 root hash of the first `size` records. */
  rootAt(size: number): Buffer {
    return rootAt(size, this.store);
  }

  /** Stored leaf hash of record `index`: available even after the record's bytes were pruned. */
  storedLeafHash(index: number): Buffer {
    return this.store.node(0, index);
  }

  /** The latest signed checkpoint note, if one was written. */
  latestCheckpoint(): string | undefined {
    const f = path.join(this.dir, 'checkpoint');
    return existsSync(f) ? readFileSync(f, 'utf8') : undefined;
  }

  private latestParsed(): { note: string; cp: Checkpoint } {
    const note = this.latestCheckpoint();
    if (!note) throw new KeelError('KEEL_E_USAGE', `${this.dir} has no checkpoint yet (keel log checkpoint signs one)`);
    const vkey = this.vkey;
    if (!vkey) throw new KeelError('KEEL_E_USAGE', `${this.dir} has no vkey file`);
    return { note, cp: openCheckpoint(note, [noteVerifier(vkey)]).checkpoint };
  }

  /** C2SP tlog-proof for record `index` against the latest checkpoint. */
  proof(index: number): string {
    const { note, cp } = this.latestParsed();
    if (!Number.isSafeInteger(index) || index < 0) throw new RangeError(`index must be a non-negative integer, got ${index}`);
    if (index >= cp.size) throw new RangeError(`index ${index} is not covered by the latest checkpoint (size ${cp.size})`);
    return formatTlogProof({ index, proof: inclusionProof(index, cp.size, this.store), checkpoint: note });
  }

  /** tlog-witness add-checkpoint body: consistency from size `from` to the latest checkpoint. */
  consistency(from: number): string {
    const { note, cp } = this.latestParsed();
    if (!Number.isSafeInteger(from) || from < 0) throw new RangeError(`from must be a non-negative integer, got ${from}`);
    if (from > cp.size) throw new RangeError(`from ${from} is past the latest checkpoint (size ${cp.size})`);
    return formatAddCheckpoint({ oldSize: from, proof: from === 0 ? [] : consistencyProof(from, cp.size, this.store), checkpoint: note });
  }

  /**
   * Re-verifies everything: the store's frames and hashes (every leaf hash recomputed from
   * the record bytes, every interior hash), every record's JSON (canonical form, seq equal
   * to its index), and the latest checkpoint's signature and root. Names the first problem.
   */
  async verify(vkey?: string): Promise<LedgerVerification> {
    const size = this.store.size;
    try {
      await this.store.verify();
    } catch (err) {
      const e = err as KeelError & { index?: number };
      return { ok: false, size, problem: { index: e.index, reason: e.message } };
    }
    for (let i = this.store.firstAvailable; i < size; i++) {
      const bytes = this.store.read(i);
      let rec: unknown;
      try {
        rec = JSON.parse(bytes.toString('utf8'));
      } catch {
        return { ok: false, size, problem: { index: i, reason: 'record is not JSON' } };
      }
      if (!Buffer.from(canonicalBytes(rec)).equals(bytes)) return { ok: false, size, problem: { index: i, reason: 'record is not in RFC 8785 canonical form' } };
      const seq = (rec as { seq?: unknown }).seq;
      if (seq !== i) return { ok: false, size, problem: { index: i, reason: `record says seq ${String(seq)} at index ${i}` } };
    }
    const note = this.latestCheckpoint();
    if (!note) return { ok: true, size };
    const key = vkey ?? this.vkey;
    if (!key) return { ok: false, size, problem: { reason: 'no verifier key: pass --key' } };
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(note, [noteVerifier(key)]).checkpoint;
    } catch (err) {
      return { ok: false, size, problem: { reason: `checkpoint: ${(err as Error).message}` } };
    }
    if (cp.origin !== this.origin && vkey === undefined) return { ok: false, size, checkpointSize: cp.size, problem: { reason: `checkpoint origin ${cp.origin} is not ${this.origin}` } };
    if (cp.size > size) return { ok: false, size, checkpointSize: cp.size, problem: { reason: `checkpoint covers ${cp.size} records but the log holds ${size}` } };
    if (!rootAt(cp.size, this.store).equals(Buffer.from(cp.root))) return { ok: false, size, checkpointSize: cp.size, problem: { reason: `the tree of the first ${cp.size} records does not hash to the checkpoint's root` } };
    return { ok: true, size, checkpointSize: cp.size };
  }

  /** Writes `<out>/checkpoint` and `<out>/records.jsonl` (every leaf's exact bytes in index order). */
  exportTo(out: string): { records: number } {
    const note = this.latestCheckpoint();
    if (!note) throw new KeelError('KEEL_E_USAGE', `${this.dir} has no checkpoint yet (keel log checkpoint signs one)`);
    if (this.store.firstAvailable > 0) throw new KeelError('KEEL_E_USAGE', `records before ${this.store.firstAvailable} were pruned; a full export is no longer possible`);
    mkdirSync(out, { recursive: true });
    writeFileSync(path.join(out, 'checkpoint'), note);
    const fd = openSync(path.join(out, 'records.jsonl'), 'w');
    try {
      for (let i = 0; i < this.store.size; i++) {
        writeSync(fd, this.store.read(i));
        writeSync(fd, '\n');
      }
    } finally {
      closeSync(fd);
    }
    return { records: this.store.size };
  }

  /**
   * Deletes the record bytes of whole segments below `index` (their hashes stay, so the tree
   * still verifies and extends). Resolves with the new first available index.
   */
  pruneBefore(index: number): Promise<number> {
    return this.store.pruneBefore(index);
  }

  /** RFC 6962 leaf hash of record `index`. */
  leafHash(index: number): Buffer {
    return leafHash(this.store.read(index));
  }

  /** Flushes and closes. */
  async close(): Promise<void> {
    await this.store.close();
  }
}
