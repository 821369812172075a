/**
 * kill -9 during heavy appends, many times. A child process (test/fixtures/ledger/append-child.ts)
 * appends in `record` durability and prints each index only after its append resolved; the
 * test SIGKILLs it at random moments (some while it is still recovering the previous crash),
 * reopens the store, and checks that every index the child reported is there with its exact
 * bytes, that every stored hash and the root agree with the records, and that appends go on.
 *
 * This tests the process-crash half of "nothing lost": data the child wrote is in the page
 * cache and survives its death. A power cut cannot be produced here; it is covered by design
 * (fsync before an append resolves, index and hashes fsynced before the head that vouches for
 * them) and by the power-cut model of MemoryLedgerFs in store.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { leafHash, nodeHash } from '../../runtime/ledger/hash.ts';
import { LedgerStore } from '../../runtime/ledger/store.ts';
import { crashRecord } from '../fixtures/ledger/crash-records.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const child = path.join(repo, 'test/fixtures/ledger/append-child.ts');
const ROUNDS = 20;

/** RFC 6962 root computed from scratch with a stack of perfect subtrees (independent of the store). */
function rootOf(leaves: Buffer[]): Buffer {
  const stack: { size: number; hash: Buffer }[] = [];
  for (const leaf of leaves) {
    let cur = { size: 1, hash: leaf };
    while (stack.length > 0 && stack[stack.length - 1].size === cur.size) {
      const left = stack.pop()!;
      cur = { size: left.size * 2, hash: nodeHash(left.hash, cur.hash) };
    }
    stack.push(cur);
  }
  let h = stack.pop()!.hash;
  while (stack.length > 0) h = nodeHash(stack.pop()!.hash, h);
  return h;
}

interface Round {
  reported: number[];
  sawReady: boolean;
}

/** Runs the child until a random moment, kills it with SIGKILL, and returns what it reported. */
function runAndKill(dir: string, seed: number, rnd: () => number): Promise<Round> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child, dir, String(seed)], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let armed = false;
    let timer: NodeJS.Timeout | undefined;
    const kill = () => p.kill('SIGKILL');
    // Early rounds sometimes die while still recovering; the rest after appending a while.
    const earlyKill = rnd() < 0.25;
    const watchdog = setTimeout(kill, 5000);
    p.stdout.setEncoding('utf8');
    p.stderr.setEncoding('utf8');
    p.stdout.on('data', (chunk: string) => {
      out += chunk;
      if (armed) return;
      if (earlyKill && out.includes('opening\n')) {
        armed = true;
        timer = setTimeout(kill, Math.floor(rnd() * 4));
      } else if (out.includes('\nready ')) {
        armed = true;
        timer = setTimeout(kill, 30 + Math.floor(rnd() * 220));
      }
    });
    p.stderr.on('data', (chunk: string) => (err += chunk));
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      clearTimeout(watchdog);
      clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`child exited by itself (code ${code}, signal ${signal}): ${err}`));
      // Only complete lines count: a line cut by the kill was never fully reported.
      const lines = out.slice(0, out.lastIndexOf('\n') + 1).split('\n').filter(Boolean);
      resolve({ reported: lines.filter((l) => /^\d+$/.test(l)).map(Number), sawReady: lines.some((l) => l.startsWith('ready ')) });
    });
  });
}

test(`kill -9 during record-mode appends, ${ROUNDS} times: every reported record survives`, async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-ledger-crash-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const dir = path.join(base, 'ledger');
  let s = 0x5eed;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const leaves: Buffer[] = [];
  const leafOf = (i: number) => (leaves[i] ??= leafHash(crashRecord(i)));
  let reportedTotal = 0;
  let tailsRecovered = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const { reported, sawReady } = await runAndKill(dir, 1000 + round, rnd);
    reportedTotal += reported.length;
    if (!fs.existsSync(path.join(dir, 'FORMAT'))) {
      assert.equal(reported.length, 0, `round ${round}: records reported but no store exists`);
      continue;
    }
    const store = await LedgerStore.open(dir, { verify: 'full', segmentBytes: 64 * 1024, maxRecordBytes: 4096 });
    try {
      const size = store.size;
      const maxReported = reported.length > 0 ? Math.max(...reported) : -1;
      assert.ok(size > maxReported, `round ${round}: store holds ${size} records, the child reported index ${maxReported} as durable`);
      for (const i of reported) assert.deepEqual(store.read(i), crashRecord(i), `round ${round}: record ${i}`);
      // The child only ever writes crashRecord(i) at i: nothing else may be there.
      for (let i = 0; i < size; i++) assert.ok(store.node(0, i).equals(leafOf(i)), `round ${round}: leaf ${i}`);
      assert.deepEqual(store.root(), rootOf(leaves.slice(0, size)), `round ${round}: root`);
      if (store.recovery.recoveryPoint < size || store.recovery.truncatedBytes > 0) tailsRecovered++;
      // Appends continue after the crash.
      assert.equal(await store.appendBatch([crashRecord(size), crashRecord(size + 1)]), size);
      assert.equal(store.size, size + 2);
      t.diagnostic(`round ${round}: ${sawReady ? '' : 'killed while opening; '}${reported.length} reported, ${size} stored, recovery ${JSON.stringify({ point: store.recovery.recoveryPoint, truncated: store.recovery.truncatedBytes, rebuilt: store.recovery.rebuiltHashes + store.recovery.rebuiltIndexEntries })}`);
    } finally {
      await store.close();
    }
  }
  assert.ok(reportedTotal > ROUNDS * 10, `the child appended under load (${reportedTotal} reported)`);
  assert.ok(tailsRecovered > ROUNDS / 2, `recovery had a tail to deal with in ${tailsRecovered} of ${ROUNDS} rounds`);
});
