/**
 * Ledger store throughput, in records/s of ~200-byte JCS-like records, each against the raw
 * limit the issue names: SHA-256 over the same record bytes, one hash per record, measured in
 * the same run (the faster of node:crypto's one-shot `hash()` and `createHash()`).
 * - append, per durability mode: `record` (append() awaited one by one: one fsync each),
 *   `batch` (appendBatch of 1000: one write per file and one fsync per batch), `interval`
 *   (append() awaited one by one, fsync left to the timer);
 * - verify: `verify()` re-reads every record, checks its frame, recomputes every leaf and
 *   interior hash and compares them with the stored ones.
 * - tree hashes alone: runtime/ledger/hash.ts `leafHash` for every record plus one `nodeHash`
 *   per record (what an RFC 6962 tree costs at least), no store: the ceiling for the lines above.
 * ratio = store records/s / raw SHA-256 records/s. The RFC 6962 tree costs a leaf hash and,
 * on average, one interior hash per record, so the ceiling is about 0.5-0.67 of raw SHA-256
 * (0.5 where per-call overhead dominates, as it does for 200-byte inputs on x86).
 * The store runs on the real filesystem under os.tmpdir(); fsync cost is the disk's.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { interleave, result, type BenchOptions, type BenchResult } from './lib.ts';
import { leafHash, nodeHash } from '../runtime/ledger/hash.ts';
import { LedgerStore, type LedgerDurability } from '../runtime/ledger/store.ts';

// Deterministic pseudo-random numbers, so every run stores the same bytes.
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Inference-receipt-like JCS records of about 200 bytes. */
function records(count: number): Buffer[] {
  const rnd = lcg(7);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const o = {
      kind: 'inference',
      model: Math.floor(rnd() * 2 ** 52).toString(16).padStart(16, '0').repeat(2),
      out: [Number(rnd().toFixed(4)), Number(rnd().toFixed(4)), Number(rnd().toFixed(4))],
      seq: i,
      t: 1_700_000_000_000 + i * 20,
      us: Math.floor(rnd() * 5000),
      v: '0.1.0',
    };
    // Keys are already in JCS order; pad to ~200 bytes like a receipt with an input digest.
    out.push(Buffer.from(JSON.stringify({ ...o, x: 'sha256:' + 'ab'.repeat(24) })));
  }
  return out;
}

type Hash1 = (r: Buffer) => Buffer;
const oneShot: Hash1 | undefined =
  typeof (crypto as { hash?: unknown }).hash === 'function' ? (r) => (crypto as unknown as { hash: (a: string, d: Buffer, e: 'buffer') => Buffer }).hash('sha256', r, 'buffer') : undefined;
const streaming: Hash1 = (r) => crypto.createHash('sha256').update(r).digest();

function rawHash(recs: Buffer[], h: Hash1): void {
  for (const r of recs) h(r);
}

/** The raw limit: whichever SHA-256 call hashes these records faster here. */
function fastestHash(recs: Buffer[]): Hash1 {
  if (!oneShot) return streaming;
  const time = (h: Hash1) => {
    const t0 = performance.now();
    rawHash(recs, h);
    return performance.now() - t0;
  };
  time(oneShot);
  time(streaming);
  return time(oneShot) <= time(streaming) ? oneShot : streaming;
}

async function appendRun(root: string, durability: LedgerDurability, recs: Buffer[], batch: number): Promise<void> {
  const dir = fs.mkdtempSync(path.join(root, `${durability}-`));
  const store = await LedgerStore.open(dir, { durability, intervalMs: 1000 });
  try {
    if (batch > 1) {
      for (let i = 0; i < recs.length; i += batch) await store.appendBatch(recs.slice(i, i + batch));
    } else {
      for (const r of recs) await store.append(r);
    }
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export default async function bench({ quick }: BenchOptions): Promise<BenchResult[]> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-ledger-bench-'));
  const out: BenchResult[] = [];
  try {
    const n = quick ? 20_000 : 100_000;
    const recs = records(n);
    const bytes = recs.reduce((a, r) => a + r.length, 0);
    const hash = fastestHash(recs);
    const rounds = quick ? 2 : 3;
    const rate = (count: number, ms: number) => (count / ms) * 1000;

    // The floor any RFC 6962 store pays: a leaf hash and one interior hash per record.
    const [tTree, tRawTree] = await interleave(
      rounds,
      () => {
        let prev = leafHash(recs[0]);
        for (const r of recs) prev = nodeHash(prev, leafHash(r));
      },
      () => rawHash(recs, hash),
    );
    out.push(result('ledger tree hashes alone (hash.ts leaf + node)', rate(n, tTree), 'records/s', rate(n, tRawTree)));

    // record mode: one fsync per record, so fewer records (the rate is the disk's fsync rate).
    const nRecord = quick ? 300 : 1000;
    const recordRecs = recs.slice(0, nRecord);
    const cases: [string, LedgerDurability, Buffer[], number][] = [
      ['ledger-store append record (fsync each)', 'record', recordRecs, 1],
      ['ledger-store append batch (1000/batch)', 'batch', recs, 1000],
      ['ledger-store append interval (1 s)', 'interval', recs, 1],
    ];
    for (const [name, mode, set, batch] of cases) {
      const [tStore, tRaw] = await interleave(
        rounds,
        () => appendRun(root, mode, set, batch),
        () => rawHash(set, hash),
      );
      out.push(result(`${name}, ${Math.round(bytes / n)} B records`, rate(set.length, tStore), 'records/s', rate(set.length, tRaw)));
    }

    // Full re-verification of one store holding all records.
    const dir = path.join(root, 'verify');
    const store = await LedgerStore.open(dir, { durability: 'batch' });
    for (let i = 0; i < recs.length; i += 1000) await store.appendBatch(recs.slice(i, i + 1000));
    try {
      const [tVerify, tRaw] = await interleave(
        rounds,
        async () => {
          const r = await store.verify();
          if (r.records !== n) throw new Error(`verify checked ${r.records} records, expected ${n}`);
        },
        () => rawHash(recs, hash),
      );
      out.push(result('ledger-store verify (records, leaves, tree)', rate(n, tVerify), 'records/s', rate(n, tRaw)));
      // Reopening runs recovery; with the default verify 'frames' it checksums every frame.
      const [tOpen, tRaw2] = await interleave(
        rounds,
        async () => {
          const s2 = await LedgerStore.open(dir, { repair: false });
          await s2.close();
        },
        () => rawHash(recs, hash),
      );
      out.push(result('ledger-store open, verify frames', rate(n, tOpen), 'records/s', rate(n, tRaw2)));
    } finally {
      await store.close();
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return out;
}
