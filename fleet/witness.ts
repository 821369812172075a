/**
 * The fleet's witness: verifies ledger batches against what the fleet already holds for each
 * device, stores them, and cosigns the device's checkpoint (docs/fleet.md, "Verification and
 * storage by the fleet"). No network here: `FleetWitness.accept` takes received batches and
 * returns one verdict per batch; fleet/ingest.ts moves them over MQTT.
 *
 * Per device the fleet keeps the verified size N, the compact range of the first N leaves and
 * the device's checkpoint note of size N (device_state). A batch [start, end) is:
 *  - a duplicate (end <= N): its leaves must equal the stored ones; the newest cosigned
 *    checkpoint is sent again (idempotent redelivery);
 *  - out of order (start > N): verdict `wait`; the caller holds it and retries;
 *  - an extension: entries [start, N) must equal the stored leaves, then leaves N..end-1 are
 *    appended to the compact range and the root must equal the signed root; since the range
 *    commits to every held leaf, that proves consistency with all history [RFC 6962 2.1].
 * Everything of one `accept` call is stored in ONE transaction (BEGIN IMMEDIATE), which
 * re-reads each device's state inside it, so several worker processes on one database
 * serialize and never store a batch twice or skip one. Acks are cosigned inside the
 * transaction (the ack is stored with the state) but handed out only after the commit.
 *
 * Fork: a checkpoint that verifies but provably disagrees with stored history (a different
 * root at the held size, a different root than an earlier checkpoint of the same size, or
 * leaves that differ from the stored ones while the offered leaves do hash to the offered
 * root) is stored with the held note in `forks`; the device is not acked any more.
 */
import { hash } from 'node:crypto';
import type { Logger } from 'pino';
import { SystemClock, type Clock } from '../runtime/clock.ts';
import { KeelError, type KeelErrorCode } from '../runtime/errors.ts';
import { cosign, noteVerifier, openCheckpoint, parseVerifierKey, type NoteVerifier } from '../runtime/ledger/note.ts';
import { decodeBatch, MAX_BATCH_BYTES, type BatchEntry } from '../runtime/sync/wire.ts';
import { CompactRange } from './compact-range.ts';
import { fleetDbError, MAX_REJECTS, type FleetDb } from './db.ts';

/** The fleet's witness (cosigner) key: an Ed25519 seed under the fleet's name. */
export interface WitnessKey {
  name: string;
  privateKey: Uint8Array;
}

/** One batch as received: the device named by its topic, and the payload. */
export interface Delivery {
  /** Device id from the MQTT topic `<prefix>/<device>/log`. */
  device: string;
  payload: Buffer;
  /** Filled by `accept` once decoded and signature-checked, so a retry does not repeat it. */
  prepared?: PreparedBatch;
}

/** A decoded batch whose signature, origin and shape verified; leaf hashes computed. */
export interface PreparedBatch {
  device: string;
  start: number;
  end: number;
  /** The device-signed checkpoint note (exactly as received). */
  note: string;
  /** Its checkpoint root. */
  root: Buffer;
  /** RFC 6962 leaf hash of each entry. */
  leaves: Buffer[];
  entries: BatchEntry[];
}

/** What became of one delivery. */
export type Verdict =
  /** Stored (or already held): publish `note` (the cosigned checkpoint of size `size`) on /ack. */
  | { kind: 'ack'; device: string; start: number; end: number; size: number; note: string; stored: number; duplicate: boolean }
  /** Refused: publish the nack; the refusal was logged in `rejects`. */
  | { kind: 'nack'; device: string; start?: number; end?: number; code: KeelErrorCode; reason: string }
  /** Out of order (start > held size `held`): hold and retry later. */
  | { kind: 'wait'; device: string; start: number; end: number; held: number }
  /** The database failed (locked, read-only, full...): nothing stored or acked; retry later. */
  | { kind: 'retry'; device: string; error: KeelError };

/** A fork found while accepting: both signed notes. */
export interface ForkEvidence {
  device: string;
  /** The held checkpoint (or an earlier one of the offered size). */
  held: string;
  offered: string;
  detectedAt: number;
}

/** Options of `FleetWitness`. */
export interface WitnessOptions {
  db: FleetDb;
  /** The fleet witness key; its name is the cosigner name. */
  key: WitnessKey;
  clock?: Clock;
  log?: Logger;
  /** Called after the commit that stored fork evidence (the alarm). */
  onFork?: (fork: ForkEvidence) => void;
  /**
   * Largest start index for which a suspected fork is proved by re-hashing the stored leaves
   * before it (O(start) reads). Beyond it the batch is refused as not matching. Default 4,000,000.
   */
  forkProofMaxLeaves?: number;
}

/** Counters of a witness, for metrics and the console. */
export interface WitnessStats {
  batches: number;
  /** Records newly stored. */
  records: number;
  duplicates: number;
  nacks: number;
  forks: number;
  waits: number;
  dbErrors: number;
  /** Database transactions committed (each is one fsync; batches / transactions = grouping). */
  transactions: number;
}

// Earlier checkpoints remembered per device to catch a second, different checkpoint of the
// same size (a fork below the held size). Bounded: memory is per device x this.
const NOTES_PER_DEVICE = 64;
const NOTE_CACHE_DEVICES = 10_000;
// Rows inserted per statement: one multi-row INSERT costs far less than as many single ones.
const INSERT_CHUNK = 64;
// Rejects are trimmed to MAX_REJECTS every this many inserts.
const TRIM_EVERY = 256;

interface WorkingState {
  device: string;
  size: number;
  range: CompactRange;
  checkpoint: string;
  root: Buffer | undefined;
  cosigned: string;
  forked: boolean;
  dirty: boolean;
  existed: boolean;
}

class Refusal extends Error {
  constructor(
    readonly code: KeelErrorCode,
    message: string,
  ) {
    super(message);
  }
}

function rootOf(note: string): Buffer {
  // The note text's third line is the base64 root; only called on notes that parsed before.
  return Buffer.from(note.split('\n')[2], 'base64');
}

/** Verifies, stores and cosigns ledger batches (see the module comment). */
export class FleetWitness {
  readonly stats: WitnessStats = { batches: 0, records: 0, duplicates: 0, nacks: 0, forks: 0, waits: 0, dbErrors: 0, transactions: 0 };
  private readonly db: FleetDb;
  private readonly key: WitnessKey;
  private readonly clock: Clock;
  private readonly log?: Logger;
  private readonly onFork?: (fork: ForkEvidence) => void;
  private readonly forkProofMaxLeaves: number;
  private readonly file: string;
  private readonly verifiers = new Map<string, { verifier: NoteVerifier; name: string }>();
  private readonly notes = new Map<string, Map<number, string>>();
  private rejectsSinceTrim = 0;
  private scratch = Buffer.allocUnsafe(4096);
  private readonly q: ReturnType<FleetWitness['prepareStatements']>;

  constructor(opts: WitnessOptions) {
    if (!opts || !opts.db) throw new TypeError('opts.db must be an open fleet database');
    if (!opts.key || typeof opts.key.name !== 'string' || !(opts.key.privateKey instanceof Uint8Array)) throw new TypeError('opts.key must be { name, privateKey }');
    this.db = opts.db;
    this.key = opts.key;
    this.clock = opts.clock ?? new SystemClock();
    this.log = opts.log;
    this.onFork = opts.onFork;
    this.forkProofMaxLeaves = opts.forkProofMaxLeaves ?? 4_000_000;
    this.file = opts.db.name;
    // Fails early (with the mapped error) if the key cannot cosign.
    cosign('x\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n', this.key, 0);
    try {
      this.q = this.prepareStatements();
    } catch (err) {
      throw fleetDbError(err, this.file, 'preparing ingest statements');
    }
  }

  private prepareStatements() {
    const db = this.db;
    const values = Array.from({ length: INSERT_CHUNK }, () => '(?,?,?,?)').join(',');
    return {
      device: db.prepare('SELECT vkey, revoked_at AS revokedAt FROM devices WHERE id = ?'),
      state: db.prepare('SELECT size, range, checkpoint, cosigned FROM device_state WHERE device = ?'),
      forked: db.prepare('SELECT 1 FROM forks WHERE device = ? LIMIT 1'),
      leaves: db.prepare('SELECT leaf FROM records WHERE device = ? AND idx >= ? AND idx < ? ORDER BY idx').pluck(),
      insert1: db.prepare('INSERT OR IGNORE INTO records(device, idx, leaf, bytes) VALUES (?,?,?,?)'),
      insertN: db.prepare(`INSERT OR IGNORE INTO records(device, idx, leaf, bytes) VALUES ${values}`),
      upsertState: db.prepare(
        `INSERT INTO device_state(device, size, range, checkpoint, cosigned, updated_at) VALUES (?,?,?,?,?,?)
         ON CONFLICT(device) DO UPDATE SET size = excluded.size, range = excluded.range, checkpoint = excluded.checkpoint,
           cosigned = excluded.cosigned, updated_at = excluded.updated_at`,
      ),
      fork: db.prepare('INSERT INTO forks(device, held, offered, detected_at) VALUES (?,?,?,?)'),
      reject: db.prepare('INSERT INTO rejects(device, code, reason, at) VALUES (?,?,?,?)'),
      trim: db.prepare('DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?'),
      fault: db.prepare(
        `INSERT INTO status(device, online, bd_seq, birth, last_seen, faults) VALUES (?, 0, -1, NULL, ?, 1)
         ON CONFLICT(device) DO UPDATE SET faults = faults + 1`,
      ),
      seen: db.prepare('UPDATE status SET last_seen = ? WHERE device = ? AND last_seen < ?'),
    };
  }

  /**
   * Verifies and stores `deliveries` (in order; one transaction for all) and returns one
   * verdict per delivery. Never throws for bad input or database failures: those become
   * `nack` and `retry` verdicts.
   */
  accept(deliveries: readonly Delivery[]): Verdict[] {
    const verdicts: Verdict[] = new Array(deliveries.length);
    const ready: number[] = [];
    const refused: { device: string | null; code: KeelErrorCode; reason: string; i: number }[] = [];
    const now = this.clock.now();
    for (let i = 0; i < deliveries.length; i++) {
      const d = deliveries[i];
      try {
        d.prepared ??= this.prepare(d);
        ready.push(i);
      } catch (err) {
        if (err instanceof Refusal) {
          verdicts[i] = { kind: 'nack', device: d.device, code: err.code, reason: err.message, ...this.span(d) };
          refused.push({ device: d.device, code: err.code, reason: err.message, i });
        } else {
          verdicts[i] = { kind: 'retry', device: d.device, error: fleetDbError(err, this.file, 'looking up the device key') };
        }
      }
    }
    const forks: ForkEvidence[] = [];
    try {
      this.db
        .transaction(() => {
          const states = new Map<string, WorkingState>();
          for (const i of ready) {
            const p = deliveries[i].prepared!;
            let v: Verdict;
            try {
              v = this.apply(p, states, forks, now);
            } catch (err) {
              if (err instanceof Refusal) v = { kind: 'nack', device: p.device, start: p.start, end: p.end, code: err.code, reason: err.message };
              else if (err instanceof KeelError) {
                // The stored state of this one device is inconsistent (nothing was written for
                // it yet): refuse its batch, keep storing the others', and say so loudly.
                this.log?.error({ device: p.device, err: err.message }, 'fleet database holds an inconsistent state for this device; its batches are refused until repaired');
                v = { kind: 'nack', device: p.device, start: p.start, end: p.end, code: err.code, reason: err.message };
              } else throw err; // SQLite failed: the whole transaction rolls back and is retried
            }
            if (v.kind === 'nack') refused.push({ device: p.device, code: v.code, reason: v.reason, i });
            verdicts[i] = v;
          }
          const t = Math.floor(now / 1000);
          for (const st of states.values()) {
            if (!st.dirty) continue;
            st.cosigned = st.checkpoint + cosign(st.checkpoint.slice(0, st.checkpoint.indexOf('\n\n') + 1), this.key, t);
            this.q.upsertState.run(st.device, st.size, st.range.toBytes(), st.checkpoint, st.cosigned, now);
            this.q.seen.run(now, st.device, now);
          }
          // Acks carry the newest cosigned checkpoint of their device (it covers every batch below it).
          for (const i of ready) {
            const v = verdicts[i];
            if (v.kind === 'ack') {
              const st = states.get(v.device)!;
              v.note = st.cosigned;
              v.size = st.size;
            }
          }
          for (const r of refused) {
            this.q.reject.run(r.device, r.code, r.reason.slice(0, 1000), now);
            if (r.device !== null && verdicts[r.i].kind === 'nack' && this.enrolled(r.device)) this.q.fault.run(r.device, now);
          }
          this.rejectsSinceTrim += refused.length;
          if (this.rejectsSinceTrim >= TRIM_EVERY) {
            this.q.trim.run(MAX_REJECTS);
            this.rejectsSinceTrim = 0;
          }
        })
        .immediate();
    } catch (err) {
      const error = fleetDbError(err, this.file, `storing ${ready.length} batch(es)`);
      this.stats.dbErrors++;
      this.log?.error({ err: error.message, code: error.code, batches: ready.length }, 'fleet database failed; nothing acked, batches will be retried');
      // The notes cache may have learned checkpoints that were never stored: forget them.
      for (const i of ready) this.notes.delete(deliveries[i].device);
      for (const i of ready) verdicts[i] = { kind: 'retry', device: deliveries[i].device, error };
      return verdicts;
    }
    this.stats.transactions++;
    for (const v of verdicts) {
      this.stats.batches++;
      if (v.kind === 'ack') {
        if (v.duplicate) this.stats.duplicates++;
        this.stats.records += v.stored;
      } else if (v.kind === 'nack') this.stats.nacks++;
      else if (v.kind === 'wait') this.stats.waits++;
    }
    for (const f of forks) {
      this.stats.forks++;
      this.log?.error({ device: f.device, held: f.held, offered: f.offered }, 'FORK: two valid, inconsistent checkpoints from one device; evidence stored, acks stopped');
      try {
        this.onFork?.(f);
      } catch (err) {
        this.log?.error({ err: (err as Error).message }, 'fork alarm handler failed');
      }
    }
    return verdicts;
  }

  private enrolled(device: string): boolean {
    return this.q.device.get(device) !== undefined;
  }

  private span(d: Delivery): { start?: number; end?: number } {
    return d.prepared ? { start: d.prepared.start, end: d.prepared.end } : {};
  }

  /** Decode, topic/header device, enrolled key, signature, origin, size; leaf hashes. */
  private prepare(d: Delivery): PreparedBatch {
    if (d.payload.length > MAX_BATCH_BYTES) throw new Refusal('KEEL_E_WIRE', `batch of ${d.payload.length} bytes exceeds ${MAX_BATCH_BYTES}`);
    let batch;
    try {
      batch = decodeBatch(d.payload);
    } catch (err) {
      throw new Refusal('KEEL_E_WIRE', (err as Error).message);
    }
    const { header, entries } = batch;
    if (header.device !== d.device) throw new Refusal('KEEL_E_AUTH', `batch for device "${header.device}" was published on the topic of device "${d.device}"`);
    const row = this.q.device.get(d.device) as { vkey: string; revokedAt: number | null } | undefined;
    if (!row) throw new Refusal('KEEL_E_AUTH', `device "${d.device}" is not enrolled (keel fleet enroll <vkey>)`);
    if (row.revokedAt !== null) throw new Refusal('KEEL_E_AUTH', `device "${d.device}" was revoked at ${new Date(row.revokedAt).toISOString()}`);
    let v = this.verifiers.get(row.vkey);
    if (!v) {
      try {
        v = { verifier: noteVerifier(row.vkey), name: parseVerifierKey(row.vkey).name };
      } catch (err) {
        throw new Refusal('KEEL_E_AUTH', `the enrolled key of device "${d.device}" is unusable: ${(err as Error).message}`);
      }
      if (this.verifiers.size > 10_000) this.verifiers.clear();
      this.verifiers.set(row.vkey, v);
    }
    let opened;
    try {
      opened = openCheckpoint(header.checkpoint, [v.verifier]);
    } catch (err) {
      const e = err as KeelError;
      if (e.code === 'KEEL_E_LEDGER_VERIFY') throw new Refusal('KEEL_E_AUTH', `batch checkpoint: ${e.message}`);
      throw new Refusal('KEEL_E_WIRE', `batch checkpoint: ${e.message}`);
    }
    if (opened.note.unknown.length > 0) throw new Refusal('KEEL_E_WIRE', `batch checkpoint carries ${opened.note.unknown.length} signature(s) by keys other than the device's`);
    const cp = opened.checkpoint;
    if (cp.origin !== v.name) throw new Refusal('KEEL_E_AUTH', `checkpoint origin "${cp.origin}" is not the enrolled key's name "${v.name}"`);
    if (cp.extensions.length > 0) throw new Refusal('KEEL_E_WIRE', 'checkpoint has extension lines (keel devices write none)');
    const end = header.start + header.count;
    if (cp.size !== end) throw new Refusal('KEEL_E_WIRE', `checkpoint size ${cp.size} is not start + count = ${end}`);
    const leaves = new Array<Buffer>(entries.length);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      leaves[i] = e.kind === 'record' ? this.leafHash(e.bytes) : Buffer.from(e.hash);
    }
    return { device: d.device, start: header.start, end, note: header.checkpoint, root: cp.root, leaves, entries };
  }

  /**
   * RFC 6962 leaf hash SHA-256(0x00 || record) through one reused buffer: per record only the
   * 32-byte digest is allocated (runtime/ledger/hash.ts leafHash allocates a copy each time,
   * which at 100k records/s is measurable garbage-collector work).
   */
  private leafHash(bytes: Uint8Array): Buffer {
    if (bytes.length + 1 > this.scratch.length) this.scratch = Buffer.allocUnsafe(Math.max(bytes.length + 1, this.scratch.length * 2));
    this.scratch[0] = 0x00;
    this.scratch.set(bytes, 1);
    return hash('sha256', this.scratch.subarray(0, bytes.length + 1), 'buffer') as Buffer;
  }

  private load(device: string, states: Map<string, WorkingState>): WorkingState {
    let st = states.get(device);
    if (st) return st;
    const row = this.q.state.get(device) as { size: number; range: Buffer; checkpoint: string; cosigned: string } | undefined;
    const forked = this.q.forked.get(device) !== undefined;
    if (row) {
      let range: CompactRange;
      try {
        range = CompactRange.fromBytes(row.range);
      } catch (err) {
        throw new KeelError('KEEL_E_FLEET', `fleet database ${this.file}: the stored compact range of device "${device}" is corrupt: ${(err as Error).message}`);
      }
      if (range.size !== row.size) throw new KeelError('KEEL_E_FLEET', `fleet database ${this.file}: device "${device}" state size ${row.size} disagrees with its compact range (${range.size})`);
      st = { device, size: row.size, range, checkpoint: row.checkpoint, root: rootOf(row.checkpoint), cosigned: row.cosigned, forked, dirty: false, existed: true };
    } else {
      st = { device, size: 0, range: new CompactRange(), checkpoint: '', root: undefined, cosigned: '', forked, dirty: false, existed: false };
    }
    states.set(device, st);
    return st;
  }

  private storedLeaves(device: string, from: number, to: number): Buffer[] {
    const rows = this.q.leaves.all(device, from, to) as Buffer[];
    if (rows.length !== to - from) {
      throw new KeelError('KEEL_E_FLEET', `fleet database ${this.file}: device "${device}" should hold records ${from}..${to - 1} but ${rows.length} of ${to - from} are there`);
    }
    return rows;
  }

  private apply(p: PreparedBatch, states: Map<string, WorkingState>, forks: ForkEvidence[], now: number): Verdict {
    const st = this.load(p.device, states);
    const span = { device: p.device, start: p.start, end: p.end };
    if (st.forked) throw new Refusal('KEEL_E_FORK', `device "${p.device}" has fork evidence on file; the fleet no longer acknowledges it until an operator resolves it`);
    const n = st.size;
    if (p.start > n) return { kind: 'wait', ...span, held: n };
    // A second, different checkpoint of a size already signed is a fork, whatever the entries:
    // the two signed notes alone prove it.
    const held = p.end === n ? st.checkpoint : p.end < n ? this.notes.get(p.device)?.get(p.end) : undefined;
    if (held !== undefined && !rootOf(held).equals(p.root)) return this.fork(st, held, p.note, forks, now);
    // Entries the fleet already holds must be exactly the stored leaves.
    const overlap = Math.min(p.end, n) - p.start;
    if (overlap > 0) {
      const stored = this.storedLeaves(p.device, p.start, p.start + overlap);
      for (let k = 0; k < overlap; k++) {
        if (!stored[k].equals(p.leaves[k])) return this.suspectFork(p, st, p.start + k, forks, now);
      }
    }
    if (p.end <= n) {
      // Duplicate: everything in it is held already.
      return { kind: 'ack', ...span, size: n, note: st.cosigned, stored: 0, duplicate: true };
    }
    const range = st.range.clone();
    // The leaves are this batch's own fresh digests, never changed: no copies.
    for (let k = overlap; k < p.leaves.length; k++) range.appendOwned(p.leaves[k]);
    if (!range.root().equals(p.root)) {
      throw new Refusal(
        'KEEL_E_LEDGER_VERIFY',
        `records ${n}..${p.end - 1} do not hash to the root of the signed checkpoint of size ${p.end} given the ${n} records held (altered in transit, or the device's history differs)`,
      );
    }
    this.insert(p, overlap);
    st.size = p.end;
    st.range = range;
    st.checkpoint = p.note;
    st.root = p.root;
    st.dirty = true;
    this.remember(p.device, p.end, p.note);
    return { kind: 'ack', ...span, size: p.end, note: '', stored: p.leaves.length - overlap, duplicate: false };
  }

  private insert(p: PreparedBatch, from: number): void {
    const dev = p.device;
    let k = from;
    const n = p.leaves.length;
    if (n - k >= INSERT_CHUNK) {
      const args: unknown[] = new Array(INSERT_CHUNK * 4);
      for (; k + INSERT_CHUNK <= n; k += INSERT_CHUNK) {
        for (let j = 0; j < INSERT_CHUNK; j++) {
          const e = p.entries[k + j];
          args[j * 4] = dev;
          args[j * 4 + 1] = p.start + k + j;
          args[j * 4 + 2] = p.leaves[k + j];
          args[j * 4 + 3] = e.kind === 'record' ? e.bytes : null;
        }
        this.q.insertN.run(args);
      }
    }
    for (; k < n; k++) {
      const e = p.entries[k];
      this.q.insert1.run(dev, p.start + k, p.leaves[k], e.kind === 'record' ? e.bytes : null);
    }
  }

  private remember(device: string, size: number, note: string): void {
    let m = this.notes.get(device);
    if (!m) {
      if (this.notes.size >= NOTE_CACHE_DEVICES) this.notes.delete(this.notes.keys().next().value!);
      m = new Map();
      this.notes.set(device, m);
    }
    m.set(size, note);
    if (m.size > NOTES_PER_DEVICE) m.delete(m.keys().next().value!);
  }

  /**
   * Entries differ from stored leaves from index `at`. If the offered entries, after the
   * stored leaves before `start`, hash to the offered root, the device signed a history
   * different from the one it signed before: fork. Otherwise the batch was altered.
   */
  private suspectFork(p: PreparedBatch, st: WorkingState, at: number, forks: ForkEvidence[], now: number): Verdict {
    if (p.start <= this.forkProofMaxLeaves) {
      const r = p.start === 0 ? new CompactRange() : CompactRange.of(this.storedLeaves(p.device, 0, p.start));
      r.appendAll(p.leaves);
      if (r.root().equals(p.root)) return this.fork(st, st.checkpoint, p.note, forks, now);
    }
    throw new Refusal('KEEL_E_LEDGER_VERIFY', `record ${at} differs from the one the fleet holds and the batch does not hash to its signed root (altered in transit?)`);
  }

  private fork(st: WorkingState, held: string, offered: string, forks: ForkEvidence[], now: number): Verdict {
    this.q.fork.run(st.device, held, offered, now);
    st.forked = true;
    forks.push({ device: st.device, held, offered, detectedAt: now });
    const size = offered.split('\n')[1];
    throw new Refusal('KEEL_E_FORK', `checkpoint of size ${size} is inconsistent with the checkpoint the fleet holds (size ${held.split('\n')[1]}): fork evidence stored, acks stopped for this device`);
  }
}
