/**
 * End-to-end drain into the fleet database: a device's backlog of N ledger records (~340 B
 * inference receipts; 1,000,000 by default) sent by the SyncClient through a real
 * `keel fleet serve` child process (the embedded aedes broker with token authentication,
 * ACLs and packet limits, and the ingest in the same process: decode, signature, leaf hashes,
 * compact-range root check, SQLite WAL synchronous=FULL, cosign, retained ack), timed from
 * the device's connection (its birth published; the raw loop's connect is untimed too) until
 * it holds the verified cosigned ack of size N. Every round checks that
 * the database holds exactly N records and the verified size N; the last round also
 * re-verifies everything stored (`keel fleet verify`'s check), outside the timing.
 *
 * The device uses the shipped defaults (batchRecords, batchBytes, maxInFlight, ackTimeoutMs)
 * with the rate limits lifted (rateRecordsPerS 100,000,000, rateBytesPerS 10 GiB/s): the
 * default pace (20,000 records/s) exists to protect the pipeline, and would be the result.
 *
 * Baselines, measured in the same run and interleaved with the drains (the machine is shared):
 * - the raw mqtt.js QoS 1 publish loop moving the same payload sizes (the batches the drain
 *   sent) to the same broker, as a service principal, until every PUBACK (the transport);
 * - the raw storage work of any ingest: one SHA-256 leaf hash and one prepared INSERT per
 *   record into a fresh fleet database with the same pragmas, ~4 MiB per transaction (the
 *   ingest's group size), in this process: how close the whole path comes to storage alone.
 * The first row's name carries the CPU time per record of the device process and of the fleet
 * process during the drains (medians): on a shared 2-core machine they, not the wall clock,
 * say what the work costs. Each round starts a fresh fleet (new state directory).
 *
 * `npm run bench -- drain` (N = 1,000,000, 3 rounds), `-- drain --quick` (100,000, 1 round),
 * `--drain-records=<n>` or KEEL_BENCH_DRAIN_RECORDS=<n>. KEEL_BENCH_SYNC_SETTINGS='{"maxInFlight":8}'
 * overrides sync settings of the device for experiments; KEEL_BENCH_FLEET_NODE_ARGS='--cpu-prof'
 * passes node options to the fleet process (profiling); KEEL_BENCH_DEBUG=1 prints each drain's
 * figures and the fleet's ingest counters on stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { hash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { verifyStoredDevice } from '../fleet/console.ts';
import { openFleetDb } from '../fleet/db.ts';
import { addPrincipal, enroll } from '../fleet/registry.ts';
import { loadOrCreateFleetKey } from '../fleet/serve.ts';
import { SystemClock } from '../runtime/clock.ts';
import type { SyncConfig } from '../runtime/config/schema.ts';
import { defaultEd25519 } from '../runtime/ledger/keys.ts';
import { Ledger } from '../runtime/ledger/ledger.ts';
import { verifierKey } from '../runtime/ledger/note.ts';
import { SyncClient } from '../runtime/sync/client.ts';
import { syncSettings } from '../runtime/sync/config.ts';
import { SYNC_STATE_FILE } from '../runtime/sync/cursor.ts';
import { percentile, result, type BenchOptions, type BenchResult } from './lib.ts';
import { connectRaw, fillLedger, rawPublishLoop, recordsFlag } from './sync-lib.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEVICE = 'bench-drain';
const FLEET = 'bench-fleet';
const RAW_USER = 'bench-raw';
const debug = process.env.KEEL_BENCH_DEBUG === '1';

interface Fleet {
  child: ChildProcess;
  url: string;
  vkey: string;
  state: string;
  rawSecret: string;
}

/** A fresh fleet state directory (fleet key, the device enrolled, a service for the raw loop) and `keel fleet serve` on it. */
async function startFleet(state: string, deviceVkey: string): Promise<Fleet> {
  const { vkey } = loadOrCreateFleetKey(state, FLEET);
  const db = openFleetDb(path.join(state, 'fleet.db'));
  let rawSecret: string;
  try {
    enroll(db, deviceVkey, { name: DEVICE });
    rawSecret = (await addPrincipal(db, RAW_USER, { role: 'service' })).secret;
  } finally {
    db.close();
  }
  const nodeArgs = process.env.KEEL_BENCH_FLEET_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'runtime/cli.ts', 'fleet', 'serve', '--state', state, '--port', '0', '--log-level', debug ? 'info' : 'warn'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The fleet's JSON log lines: errors always reach stderr; with KEEL_BENCH_DEBUG=1 also its
  // final counters (transactions, acks...). Warnings of the shutdown are not the benchmark's.
  createInterface({ input: child.stdout! }).on('line', (l) => {
    let o: { level?: number; msg?: string; ingest?: unknown };
    try {
      o = JSON.parse(l);
    } catch {
      return;
    }
    if ((o.level ?? 0) >= 50) console.error(`keel fleet serve: ${l}`);
    else if (debug && o.msg === 'fleet stopped') console.error(JSON.stringify(o.ingest));
  });
  const url = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stderr! });
    const lines: string[] = [];
    rl.on('line', (l) => {
      const m = /^listening: (mqtt:\/\/[^,; ]+)/.exec(l);
      if (m) resolve(m[1]);
      else if (lines.push(l) > 20) lines.shift();
    });
    child.once('exit', (code) => reject(new Error(`keel fleet serve exited with ${code}:\n${lines.join('\n')}`)));
  });
  return { child, url, vkey, state, rawSecret };
}

/** CPU time (user + system) of process `pid` so far, ms (Linux /proc; NaN elsewhere). */
function cpuMsOf(pid: number | undefined): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

async function stopFleet(f: Fleet): Promise<void> {
  if (f.child.exitCode !== null) return;
  const exited = new Promise((r) => f.child.once('exit', r));
  f.child.kill('SIGTERM');
  await exited;
}

/** One drain: wall time, CPU time per record of the device (this process) and of the fleet process (us), and the batch sizes sent. */
interface DrainRun {
  ms: number;
  deviceUs: number;
  fleetUs: number;
  sizes: number[];
}

/** Drains the whole ledger into `f` with a fresh delivery state. */
async function drainInto(f: Fleet, ledger: Ledger, key: { name: string; privateKey: Uint8Array }, overrides: Partial<SyncConfig>): Promise<DrainRun> {
  fs.rmSync(path.join(ledger.dir, SYNC_STATE_FILE), { force: true });
  const settings = syncSettings({ broker: f.url, fleet: f.vkey, pruneDelivered: false, rateRecordsPerS: 100_000_000, rateBytesPerS: 10_737_418_240, ...overrides });
  const c = await SyncClient.open({ device: DEVICE, ledger, key, fleetKey: f.vkey, audience: FLEET, settings, clock: new SystemClock(), logger: pino({ level: 'silent' }) });
  const sizes: number[] = [];
  c.on('sent', (b) => sizes.push(b.bytes));
  const n = ledger.size;
  const finished = new Promise<void>((resolve) => c.on('delivered', ({ size }) => size === n && resolve()));
  const fleetCpu0 = cpuMsOf(f.child.pid);
  const cpu0 = process.cpuUsage();
  // Timed from the connection (token, CONNACK, subscriptions, birth: once per session, and
  // outside the raw loop's timing too) to the verified ack of the last record.
  let t0 = 0;
  c.once('connected', () => (t0 = performance.now()));
  c.start();
  await finished;
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const fleetUs = ((cpuMsOf(f.child.pid) - fleetCpu0) * 1000) / n;
  const deviceUs = (cpu.user + cpu.system) / n;
  if (debug) console.error(`drain ${n}: ${ms.toFixed(0)} ms, device CPU ${deviceUs.toFixed(2)} us/record, fleet CPU ${fleetUs.toFixed(2)} us/record`);
  const st = c.stats();
  await c.stop();
  if (st.ackRejects || st.nacks) throw new Error(`drain had ${st.ackRejects} refused acks and ${st.nacks} nacks (${st.lastError ?? ''})`);
  return { ms, deviceUs, fleetUs, sizes };
}

/** Checks that the fleet database holds exactly `n` records of the device and the verified size `n`; with `full`, re-verifies them all. */
function checkStored(f: Fleet, n: number, full: boolean): void {
  const db = openFleetDb(path.join(f.state, 'fleet.db'), { readonly: true });
  try {
    const { count, hi } = db.prepare('SELECT count(*) AS count, max(idx) AS hi FROM records WHERE device = ? AND bytes IS NOT NULL').get(DEVICE) as { count: number; hi: number };
    const size = (db.prepare('SELECT size FROM device_state WHERE device = ?').get(DEVICE) as { size: number } | undefined)?.size;
    if (count !== n || hi !== n - 1 || size !== n) throw new Error(`fleet database holds ${count} records (last ${hi}), verified size ${size}; expected ${n}`);
    if (full) {
      const v = verifyStoredDevice(db, DEVICE, { fleetVkey: f.vkey });
      if (!v.ok || v.records !== n) throw new Error(`stored records do not verify: ${JSON.stringify(v.problem)} (${v.records} records)`);
    }
  } finally {
    db.close();
  }
}

/** The raw mqtt.js QoS 1 loop of `sizes` bytes into `f`'s broker, as a service principal (ms). */
async function rawInto(f: Fleet, sizes: number[]): Promise<number> {
  const pub = await connectRaw(f.url, { username: RAW_USER, password: f.rawSecret });
  try {
    return await rawPublishLoop(pub, `keel/_bench/raw`, sizes);
  } finally {
    await pub.endAsync();
  }
}

/** Reads every record of the ledger (the bytes the fleet stores). */
function allRecords(ledger: Ledger): Buffer[] {
  const out: Buffer[] = [];
  while (out.length < ledger.size) out.push(...ledger.readRange(out.length, ledger.size, 16 * 1024 * 1024));
  return out;
}

/** The raw storage work per record: SHA-256 leaf hash and a prepared INSERT, ~4 MiB per transaction (ms). */
function rawStore(dir: string, records: Buffer[]): number {
  const file = path.join(dir, `raw-${randomBytes(4).toString('hex')}.db`);
  const db = openFleetDb(file);
  try {
    const ins = db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?,?,?,?)');
    const prefix = Buffer.from([0]);
    const t0 = performance.now();
    let i = 0;
    while (i < records.length) {
      db.transaction(() => {
        let bytes = 0;
        for (; i < records.length && bytes < 4 * 1024 * 1024; i++) {
          ins.run(DEVICE, i, hash('sha256', Buffer.concat([prefix, records[i]]), 'buffer'), records[i]);
          bytes += records[i].length;
        }
      }).immediate();
    }
    return performance.now() - t0;
  } finally {
    db.close();
    for (const s of ['', '-wal', '-shm']) fs.rmSync(file + s, { force: true });
  }
}

export default async function bench({ quick }: BenchOptions): Promise<BenchResult[]> {
  const n = recordsFlag('drain-records', 'KEEL_BENCH_DRAIN_RECORDS') ?? (quick ? 100_000 : 1_000_000);
  const rounds = quick ? 1 : 3;
  const overrides = JSON.parse(process.env.KEEL_BENCH_SYNC_SETTINGS ?? '{}') as Partial<SyncConfig>;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-drain-bench-'));
  let ledger: Ledger | undefined;
  let fleet: Fleet | undefined;
  try {
    const privateKey = new Uint8Array(randomBytes(32));
    const key = { name: DEVICE, privateKey, publicKey: defaultEd25519.publicKey(privateKey) };
    const deviceVkey = verifierKey(DEVICE, key.publicKey);
    ledger = await Ledger.open(path.join(tmp, 'ledger'), { key, durability: 'batch' });
    await fillLedger(ledger, n);
    const records = allRecords(ledger);

    const drains: DrainRun[] = [];
    const rawMs: number[] = [];
    const storeMs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      // A fresh fleet per round: the device drains from 0 into an empty database.
      fleet = await startFleet(path.join(tmp, `fleet-${r}`), deviceVkey);
      drains.push(await drainInto(fleet, ledger, key, overrides));
      const sizes = drains[drains.length - 1].sizes;
      checkStored(fleet, n, r === rounds - 1);
      rawMs.push(await rawInto(fleet, sizes));
      await stopFleet(fleet);
      fs.rmSync(fleet.state, { recursive: true, force: true });
      fleet = undefined;
      storeMs.push(rawStore(tmp, records));
    }
    const rate = (ms: number[]) => (n / percentile(ms, 50)) * 1000;
    const med = (f: (d: DrainRun) => number) => percentile(drains.map(f), 50);
    const sizes = drains[0].sizes;
    const avgKiB = Math.round(sizes.reduce((a, b) => a + b, 0) / sizes.length / 1024);
    const drained = rate(drains.map((d) => d.ms));
    const cpu = `CPU per record: device ${med((d) => d.deviceUs).toFixed(2)} us, fleet ${med((d) => d.fleetUs).toFixed(2)} us`;
    return [
      result(`drain ${n} records end to end into the fleet database, verified and stored (${sizes.length} batches of ~${avgKiB} KiB; ${cpu}) vs raw QoS 1 of the same bytes to the same broker`, drained, 'records/s', rate(rawMs)),
      result(`drain ${n} records end to end into the fleet database vs raw SHA-256 + SQLite insert of the same records (the storage floor)`, drained, 'records/s', rate(storeMs)),
    ];
  } finally {
    if (fleet) await stopFleet(fleet);
    await ledger?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
