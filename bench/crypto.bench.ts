/**
 * The ledger's cryptographic raw limits, measured in the same run:
 * - Ed25519 signing and verifying a checkpoint note: @noble/ed25519 against node:crypto
 *   (ratio = noble ops/s / node:crypto ops/s; below 1 means noble is slower), and the full
 *   signNote/openNote path against the raw node:crypto call (the cost of the note format);
 * - SHA-256 over record-sized inputs: one hash per JCS record (what a Merkle leaf costs),
 *   against hashing the same bytes as one stream (the hash's own speed limit), and the
 *   in-memory RFC 6962 tree against one hash per record (interior nodes put the ceiling
 *   near 0.67);
 * - RFC 8785 canonicalization of the same records against JSON.stringify (sorting members and
 *   checking the data model is what the ratio shows).
 * `sampleRecords` and `sha256PerRecordMBps` are exported so other ledger benchmarks measure
 * against the same baseline.
 */
import { createHash } from 'node:crypto';
import { interleave, result, type BenchOptions, type BenchResult } from './lib.ts';
import { canonicalBytes, canonicalize } from '../runtime/ledger/jcs.ts';
import { leafHash } from '../runtime/ledger/hash.ts';
import { MemoryTree } from '../runtime/ledger/merkle.ts';
import { nobleEd25519, nodeEd25519 } from '../runtime/ledger/keys.ts';
import { formatCheckpoint, noteSigner, noteVerifier, openNote, signNote, verifierKey } from '../runtime/ledger/note.ts';

/** Deterministic inference-receipt-like records, JCS bytes (about 300-400 bytes each). */
export function sampleRecords(n: number): Uint8Array[] {
  let s = 12345;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    out.push(
      canonicalBytes({
        v: 1,
        seq: i,
        t: 1_717_171_717_000 + i * 20,
        kind: 'inference',
        pipeline: 'vibration',
        model: { sha256: createHash('sha256').update('model').digest('hex') },
        inputs: { x: { dtype: 'float32', shape: [1, 64, 3], sha256: createHash('sha256').update(String(i)).digest('hex') } },
        outputs: { scores: [rnd(), rnd(), rnd(), rnd()].map((x) => Math.fround(x)) },
        ms: Math.round(rnd() * 5000) / 1000,
        runtime: { keel: '0.1.0', onnxruntime: '1.20.0' },
      }),
    );
  }
  return out;
}

/** MB/s of SHA-256 computed once per record (the raw limit for hashing leaves). */
export function sha256PerRecordMBps(records: readonly Uint8Array[], ms: number): number {
  const bytes = records.reduce((a, r) => a + r.length, 0);
  return bytes / 1e6 / (ms / 1000);
}

/** interleave() after one untimed warm-up round of each side (JIT, caches, lazy imports). */
async function measure(rounds: number, a: () => void, b: () => void): Promise<[number, number]> {
  a();
  b();
  return interleave(rounds, a, b);
}

/** Benchmark entry point. */
export default async function cryptoBench(opts: BenchOptions): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const rounds = opts.quick ? 5 : 15;
  let sink = 0; // consumed so the work cannot be optimized away

  // --- Ed25519 over a checkpoint --------------------------------------------------------
  const seed = new Uint8Array(32).fill(7);
  const name = 'example.com/bench';
  const text = formatCheckpoint({ origin: name, size: 123_456_789, root: createHash('sha256').update('root').digest() });
  const message = Buffer.from(text);
  const pub = nodeEd25519.publicKey(seed);
  const sig = nodeEd25519.sign(message, seed);
  const ops = opts.quick ? 100 : 400;
  const nobleOps = Math.max(10, Math.round(ops / 4)); // noble is slower; keep rounds short

  const [nodeSignMs, nobleSignMs] = await measure(
    rounds,
    () => {
      for (let i = 0; i < ops; i++) sink += nodeEd25519.sign(message, seed)[0];
    },
    () => {
      for (let i = 0; i < nobleOps; i++) sink += nobleEd25519.sign(message, seed)[0];
    },
  );
  const nodeSign = ops / (nodeSignMs / 1000);
  results.push(result('ed25519 sign checkpoint: @noble/ed25519 vs node:crypto', nobleOps / (nobleSignMs / 1000), 'ops/s', nodeSign));

  const [nodeVerifyMs, nobleVerifyMs] = await measure(
    rounds,
    () => {
      for (let i = 0; i < ops; i++) sink += nodeEd25519.verify(sig, message, pub) ? 1 : 0;
    },
    () => {
      for (let i = 0; i < nobleOps; i++) sink += nobleEd25519.verify(sig, message, pub) ? 1 : 0;
    },
  );
  const nodeVerify = ops / (nodeVerifyMs / 1000);
  results.push(result('ed25519 verify checkpoint: @noble/ed25519 vs node:crypto', nobleOps / (nobleVerifyMs / 1000), 'ops/s', nodeVerify));

  // The note format around the signature: formatting, key ID, base64, parsing.
  const signer = noteSigner(name, seed, nodeEd25519);
  const verifiers = [noteVerifier(verifierKey(name, pub), nodeEd25519)];
  const signed = signNote(text, [signer]);
  const [rawSignMs, noteSignMs] = await measure(
    rounds,
    () => {
      for (let i = 0; i < ops; i++) sink += nodeEd25519.sign(message, seed)[0];
    },
    () => {
      for (let i = 0; i < ops; i++) sink += signNote(text, [signer]).length;
    },
  );
  results.push(result('signNote checkpoint vs raw sign (node:crypto)', ops / (noteSignMs / 1000), 'ops/s', ops / (rawSignMs / 1000)));
  const [rawVerifyMs, openMs] = await measure(
    rounds,
    () => {
      for (let i = 0; i < ops; i++) sink += nodeEd25519.verify(sig, message, pub) ? 1 : 0;
    },
    () => {
      for (let i = 0; i < ops; i++) sink += openNote(signed, verifiers).verified.length;
    },
  );
  results.push(result('openNote checkpoint vs raw verify (node:crypto)', ops / (openMs / 1000), 'ops/s', ops / (rawVerifyMs / 1000)));

  // --- SHA-256 over record-sized inputs --------------------------------------------------
  // Per-record hashing is dominated by allocation and GC, which makes it noisy: more rounds.
  const shaRounds = opts.quick ? 7 : 25;
  const records = sampleRecords(opts.quick ? 5_000 : 20_000);
  const stream = Buffer.concat(records);
  const [perRecordMs, streamMs] = await measure(
    shaRounds,
    () => {
      for (const r of records) sink += createHash('sha256').update(r).digest()[0];
    },
    () => {
      sink += createHash('sha256').update(stream).digest()[0];
    },
  );
  const perRecord = sha256PerRecordMBps(records, perRecordMs);
  const avg = Math.round(stream.length / records.length);
  results.push(result(`sha256 per record (~${avg} B) vs one stream`, perRecord, 'MB/s', sha256PerRecordMBps(records, streamMs)));

  const [rawMs, leafMs] = await measure(
    shaRounds,
    () => {
      for (const r of records) sink += createHash('sha256').update(r).digest()[0];
    },
    () => {
      for (const r of records) sink += leafHash(r)[0];
    },
  );
  results.push(result('RFC 6962 leaf hash vs raw sha256 per record', sha256PerRecordMBps(records, leafMs), 'MB/s', sha256PerRecordMBps(records, rawMs)));

  const [rawMs2, treeMs] = await measure(
    shaRounds,
    () => {
      for (const r of records) sink += createHash('sha256').update(r).digest()[0];
    },
    () => {
      const t = new MemoryTree();
      for (const r of records) t.append(r);
      sink += t.root()[0];
    },
  );
  results.push(result('MemoryTree append+root vs raw sha256 per record', sha256PerRecordMBps(records, treeMs), 'MB/s', sha256PerRecordMBps(records, rawMs2)));

  // --- RFC 8785 serialization of the same records -----------------------------------------
  const values = records.slice(0, opts.quick ? 2_000 : 10_000).map((r) => JSON.parse(Buffer.from(r).toString('utf8')) as unknown);
  const [stringifyMs, jcsMs] = await measure(
    rounds,
    () => {
      for (const v of values) sink += JSON.stringify(v).length;
    },
    () => {
      for (const v of values) sink += canonicalize(v).length;
    },
  );
  results.push(result('JCS canonicalize vs JSON.stringify (records)', values.length / (jcsMs / 1000), 'records/s', values.length / (stringifyMs / 1000)));

  if (sink === -1) console.log(sink);
  return results;
}
