/**
 * The fleet as a new user runs it, every part a separate process: `keel fleet serve`, two
 * devices under `keel run` logging at a high rate and syncing, the console. The broker is
 * killed (SIGKILL) mid-sync and restarted on the same port; afterwards every record each
 * device reports delivered is in the fleet database exactly once and verifies, and a signed
 * command travels operator -> device -> operator.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { keel, killAll, portableCopy, portFree, startKeel, type KeelProcess } from '../cli/keel-process.ts';
import { waitFor } from '../helpers.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-e2e-fleet-'));
after(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    if (await portFree(port)) return port;
  }
  throw new Error('no free port found');
}

async function ok(args: string[], stdin?: string): Promise<string> {
  const r = await keel(args, { timeoutMs: 30_000, stdin });
  assert.equal(r.code, 0, `keel ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function serve(state: string, port: number): KeelProcess {
  return startKeel(['fleet', 'serve', '--state', state, '--port', String(port)], { timeoutMs: 120_000 });
}

/** Verified size per device from `keel fleet devices --json`. */
async function verified(state: string): Promise<Record<string, number>> {
  const rows = JSON.parse(await ok(['fleet', 'devices', '--state', state, '--json'])) as { id: string; verified: number }[];
  return Object.fromEntries(rows.map((r) => [r.id, r.verified]));
}

test('keel fleet serve + two keel run devices + console: a broker kill mid-sync loses and duplicates nothing; a signed command round-trips', async () => {
  const state = path.join(dir, 'fleet');
  const port = await freePort();
  let server = serve(state, port);
  await server.waitForLog('fleet serving', 30_000);

  // Keys: two devices and one operator; enroll the devices, add the operator with its key.
  const devices = ['rover-1', 'rover-2'];
  const vkeys: Record<string, string> = {};
  for (const name of [...devices, 'ops']) {
    await ok(['keygen', '--out', path.join(dir, `${name}.key`), '--name', name]);
    vkeys[name] = (await ok(['id', '--key', path.join(dir, `${name}.key`)])).trim();
  }
  for (const d of devices) await ok(['fleet', 'enroll', vkeys[d], '--state', state]);
  const user = JSON.parse(await ok(['fleet', 'user', 'add', 'ops', '--role', 'operator', '--vkey', vkeys.ops, '--state', state, '--json'])) as { secret: string };

  // Two devices on the shipped obstacle example, 200 scans/s each (about 400 records/s each:
  // an inference receipt per scan plus decisions and actions), syncing to the fleet.
  const runs: Record<string, KeelProcess> = {};
  for (const d of devices) {
    const ddir = path.join(dir, d);
    rmSync(ddir, { recursive: true, force: true });
    const cfg = portableCopy('examples/obstacle.yaml', mkdtempSync(path.join(dir, `${d}-cfg-`)), 0, (c) => {
      c.device = { name: d };
      c.sources[0].rateHz = 200;
      c.pipelines[0].watchdog = { silenceMs: 2000, overrunMs: 200 };
      c.safety.silenceMs = 2000;
      c.ledger = { dir: ddir, key: path.join(dir, `${d}.key`), durability: 'batch', flushMs: 50, checkpointEveryMs: 1000 };
      c.sync = {
        broker: `mqtt://127.0.0.1:${port}`,
        fleet: `@${path.join(state, 'fleet.vkey')}`,
        operators: [vkeys.ops],
        ackTimeoutMs: 2000,
        batchRecords: 500,
        reconnect: { initialMs: 100, maxMs: 1000 },
      };
    });
    runs[d] = startKeel(['run', cfg], { timeoutMs: 120_000 });
  }

  // Sync is flowing for both devices.
  await waitFor(async () => {
    const v = await verified(state);
    return devices.every((d) => (v[d] ?? 0) > 300);
  }, 'both devices to have records verified by the fleet', 40_000, 500);

  // The broker dies mid-sync (SIGKILL: no Will for the fleet, no clean close), the devices keep
  // logging into their ledgers for a while, then the fleet comes back on the same port.
  const before = await verified(state);
  server.signal('SIGKILL');
  await server.exited;
  await new Promise((r) => setTimeout(r, 2000));
  for (const d of devices) assert.ok(runs[d].running, `${d} kept running without its fleet:\n${runs[d].stderr}`);
  server = serve(state, port);
  await server.waitForLog('fleet serving', 30_000);
  await waitFor(async () => {
    const v = await verified(state);
    return devices.every((d) => (v[d] ?? 0) > before[d] + 800);
  }, 'sync to resume past the outage', 40_000, 500);

  // A signed command: the operator asks rover-1 for a checkpoint; the device checks it, records
  // the outcome in its ledger and answers, signed.
  const sent = await keel(
    ['fleet', 'send', 'rover-1', 'checkpoint', '--key', path.join(dir, 'ops.key'), '--broker', `mqtt://127.0.0.1:${port}`, '--user', 'ops', '--password', user.secret, '--state', state, '--wait', '15s'],
    { timeoutMs: 30_000 },
  );
  assert.equal(sent.code, 0, `${sent.stdout}\n${sent.stderr}`);
  assert.match(sent.stdout + sent.stderr, /done/);

  // Stop the devices (SIGTERM: safe state, last acks awaited, ledger flushed), then count.
  for (const d of devices) runs[d].signal('SIGTERM');
  for (const d of devices) {
    const r = await runs[d].exited;
    assert.equal(r.code, 0, `${d} exit ${r.code}\n${r.stderr.slice(-3000)}`);
  }
  server.signal('SIGTERM');
  await server.exited;

  const db = new Database(path.join(state, 'fleet.db'), { readonly: true });
  try {
    for (const d of devices) {
      const delivered = (JSON.parse(readFileSync(path.join(dir, d, 'sync.json'), 'utf8')) as { delivered: number }).delivered;
      const ledger = await Ledger.open(path.join(dir, d), { readOnly: true });
      const size = ledger.size;
      await ledger.close();
      const row = db.prepare('SELECT count(*) AS n, min(idx) AS lo, max(idx) AS hi, sum(bytes IS NULL) AS hashOnly FROM records WHERE device = ?').get(d) as { n: number; lo: number; hi: number; hashOnly: number };
      // Every record the device counts as delivered is stored, once, with its bytes; no gaps.
      assert.ok(delivered > 1000, `${d} delivered ${delivered}`);
      assert.ok(row.n >= delivered, `${d}: fleet holds ${row.n} rows, device delivered ${delivered}`);
      assert.equal(row.lo, 0);
      assert.equal(row.hi, row.n - 1, `${d}: rows are indexes 0..${row.n - 1} without gaps or duplicates`);
      assert.equal(row.hashOnly, 0);
      // What was not delivered is only the tail written while stopping (safe state, final checkpoint).
      assert.ok(size - delivered < 200, `${d}: ledger ${size}, delivered ${delivered}`);
      // The console re-verifies everything stored: leaf hashes, root, device signature, cosignature.
      const v = await keel(['fleet', 'verify', d, '--state', state], { timeoutMs: 60_000 });
      assert.equal(v.code, 0, `${v.stdout}\n${v.stderr}`);
    }
    // The command's outcome is a record in rover-1's ledger.
    const cmdRows = db.prepare("SELECT count(*) AS n FROM records WHERE device = 'rover-1' AND bytes LIKE '%\"kind\":\"command\"%'").get() as { n: number };
    const ledger = await Ledger.open(path.join(dir, 'rover-1'), { readOnly: true });
    let found = false;
    for (let i = ledger.firstAvailable; i < ledger.size && !found; i++) found = ledger.read(i).toString('utf8').includes('"kind":"command"');
    await ledger.close();
    assert.ok(found || cmdRows.n > 0, 'the command outcome is recorded in the ledger');
  } finally {
    db.close();
  }
  writeFileSync(path.join(dir, 'done'), '');
});
