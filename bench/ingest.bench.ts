/**
 * Fleet ingest throughput in verified, stored records/s, against raw limits measured in the
 * same run on the same ~190-byte JCS-like records:
 * - `ingest: witness alone`: FleetWitness.accept on received batches of 1000 records (decode,
 *   Ed25519 signature check, leaf hash per record, compact-range root check, INSERT OR IGNORE
 *   into the WAL/synchronous=FULL database, cosign), groups of 8 batches per transaction as
 *   the ingest forms them when batches queue up. Baseline: the raw work any ingest must do,
 *   one SHA-256 per record plus a plain prepared INSERT of the same rows into the same schema
 *   with the same pragmas and transaction grouping.
 * - `ingest: end to end over MQTT`: a publisher in a worker thread publishes every batch QoS 1
 *   (64 in flight) to an in-process aedes broker, ingest stores and acks them; measured until
 *   the ack of the last size. Baseline: the same publisher moving the same bytes through the
 *   same broker to a plain QoS 1 subscriber (the raw mqtt.js limit).
 * The database lives under os.tmpdir(); fsync cost is the disk's.
 */
import { hash } from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Aedes } from 'aedes';
import { connectAsync } from 'mqtt';
import { result, type BenchOptions, type BenchResult } from './lib.ts';
import { defaultEd25519 } from '../runtime/ledger/keys.ts';
import { MemoryTree, rootAt } from '../runtime/ledger/merkle.ts';
import { formatCheckpoint, noteSigner, signNote, verifierKey } from '../runtime/ledger/note.ts';
import { encodeBatch } from '../runtime/sync/wire.ts';
import { openFleetDb, type FleetDb } from '../fleet/db.ts';
import { FleetWitness } from '../fleet/witness.ts';
import { Ingest } from '../fleet/ingest.ts';

const BATCH = 1000;
const GROUP = 8;
const DEVICE_SEED = new Uint8Array(32).fill(7);
const FLEET_SEED = new Uint8Array(32).fill(9);

function records(count: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    out.push(Buffer.from(JSON.stringify({ kind: 'inference', model: 'ab'.repeat(16), out: [0.1234, (i % 997) / 997, 0.9], seq: i, t: 1_700_000_000_000 + i * 20, us: i % 5000, v: 1, x: `sha256:${'cd'.repeat(24)}` })));
  }
  return out;
}

/** Real device batches of BATCH records with checkpoints signed over an RFC 6962 tree. */
function batches(device: string, recs: Buffer[]): Buffer[] {
  const tree = new MemoryTree();
  const signer = noteSigner(device, DEVICE_SEED);
  const out: Buffer[] = [];
  for (let s = 0; s < recs.length; s += BATCH) {
    for (let i = s; i < s + BATCH; i++) tree.append(recs[i]);
    const checkpoint = signNote(formatCheckpoint({ origin: device, size: s + BATCH, root: rootAt(s + BATCH, tree) }), [signer]);
    out.push(encodeBatch({ header: { v: 1, device, start: s, count: BATCH, checkpoint }, entries: recs.slice(s, s + BATCH).map((bytes) => ({ kind: 'record' as const, bytes })) }));
  }
  return out;
}

function freshDb(dir: string, name: string, device: string): FleetDb {
  const db = openFleetDb(path.join(dir, name), { busyTimeoutMs: 250 });
  db.prepare('INSERT INTO devices VALUES (?,?,?,NULL)').run(device, verifierKey(device, defaultEd25519.publicKey(DEVICE_SEED)), 0);
  return db;
}

function witnessAlone(dir: string, tag: string, device: string, bs: Buffer[]): number {
  const db = freshDb(dir, `w-${tag}.db`, device);
  const w = new FleetWitness({ db, key: { name: 'keel-fleet', privateKey: FLEET_SEED } });
  const t0 = performance.now();
  for (let i = 0; i < bs.length; i += GROUP) {
    const vs = w.accept(bs.slice(i, i + GROUP).map((payload) => ({ device, payload })));
    if (vs.some((v) => v.kind !== 'ack')) throw new Error(`bench batch refused: ${JSON.stringify(vs.find((v) => v.kind !== 'ack'))}`);
  }
  const ms = performance.now() - t0;
  db.close();
  return ((bs.length * BATCH) / ms) * 1000;
}

function rawBaseline(dir: string, tag: string, device: string, recs: Buffer[]): number {
  const db = freshDb(dir, `r-${tag}.db`, device);
  const ins = db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?,?,?,?)');
  const prefix = Buffer.from([0]);
  const t0 = performance.now();
  const per = BATCH * GROUP;
  for (let s = 0; s < recs.length; s += per) {
    db.transaction(() => {
      for (let i = s; i < Math.min(s + per, recs.length); i++) ins.run(device, i, hash('sha256', Buffer.concat([prefix, recs[i]]), 'buffer'), recs[i]);
    }).immediate();
  }
  const ms = performance.now() - t0;
  db.close();
  return (recs.length / ms) * 1000;
}

const PUBLISHER = `
const { parentPort, workerData } = require('node:worker_threads');
const { connectAsync } = require(workerData.mqtt);
(async () => {
  const c = await connectAsync(workerData.url, { protocolVersion: 4, reconnectPeriod: 0, clientId: workerData.device });
  parentPort.postMessage('ready');
  await new Promise((r) => parentPort.once('message', r));
  let next = 0, inflight = 0;
  await new Promise((resolve) => {
    const pump = () => {
      while (inflight < 64 && next < workerData.batches.length) {
        const b = Buffer.from(workerData.batches[next++]);
        inflight++;
        c.publish(workerData.topic, b, { qos: 1 }, () => { inflight--; if (next >= workerData.batches.length && inflight === 0) resolve(); else pump(); });
      }
    };
    pump();
  });
  await c.endAsync();
  parentPort.postMessage('done');
})();
`;

async function overMqtt(dir: string, tag: string, device: string, bs: Buffer[], ingest: boolean): Promise<number> {
  const broker = await Aedes.createBroker();
  const server = net.createServer(broker.handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  const total = bs.length * BATCH;
  let db: FleetDb | undefined;
  let ing: Ingest | undefined;
  let finished: Promise<void>;
  const sub = await connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
  if (ingest) {
    db = freshDb(dir, `e-${tag}.db`, device);
    ing = new Ingest({ db, broker: url, key: { name: 'keel-fleet', privateKey: FLEET_SEED }, announce: false });
    await ing.start();
    finished = new Promise<void>((resolve) => sub.on('message', (_t, p) => Number(p.toString().split('\n')[1]) === total && resolve()));
    await sub.subscribeAsync(`keel/${device}/ack`, { qos: 1 });
  } else {
    let got = 0;
    finished = new Promise<void>((resolve) => sub.on('message', () => ++got === bs.length && resolve()));
    await sub.subscribeAsync(`keel/${device}/log`, { qos: 1 });
  }
  const worker = new Worker(PUBLISHER, {
    eval: true,
    workerData: { url, device, topic: `keel/${device}/log`, batches: bs.map((b) => new Uint8Array(b)), mqtt: createRequire(import.meta.url).resolve('mqtt') },
  });
  await new Promise<void>((r) => worker.once('message', () => r()));
  const t0 = performance.now();
  worker.postMessage('go');
  await finished;
  const ms = performance.now() - t0;
  await worker.terminate();
  await sub.endAsync(true);
  if (ing && process.env.KEEL_BENCH_DEBUG) console.error(JSON.stringify(ing.stats));
  await ing?.stop();
  db?.close();
  await new Promise<void>((r) => server.close(() => r()));
  await new Promise<void>((r) => broker.close(() => r()));
  return (total / ms) * 1000;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export default async function bench(opts: BenchOptions): Promise<BenchResult[]> {
  const count = opts.quick ? 40_000 : 200_000;
  const rounds = opts.quick ? 1 : 3;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-bench-ingest-'));
  try {
    const recs = records(count);
    const bs = batches('bench-dev', recs);
    const w: number[] = [];
    const raw: number[] = [];
    const e2e: number[] = [];
    const mq: number[] = [];
    for (let r = 0; r < rounds; r++) {
      // Interleaved, so machine noise lands on both sides of each ratio.
      w.push(witnessAlone(dir, `${r}`, 'bench-dev', bs));
      raw.push(rawBaseline(dir, `${r}`, 'bench-dev', recs));
      e2e.push(await overMqtt(dir, `${r}`, 'bench-dev', bs, true));
      mq.push(await overMqtt(dir, `${r}`, 'bench-dev', bs, false));
    }
    return [
      result('ingest: witness alone (records/s)', median(w), 'records/s', median(raw)),
      result('ingest: end to end over MQTT (records/s)', median(e2e), 'records/s', median(mq)),
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
