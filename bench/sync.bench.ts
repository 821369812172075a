/**
 * Device sync benchmarks, each against a raw limit measured in the same run:
 * - drain: N ledger records (inference-receipt-like, ~340 B) sent by the SyncClient from a
 *   durable ledger through an aedes broker to a fleet that only acknowledges (reads the batch
 *   header, cosigns its checkpoint, publishes the ack; stores nothing), with the default
 *   batching and in-flight bound and the rate limits lifted (rateRecordsPerS 100,000,000,
 *   rateBytesPerS 10 GiB/s: the protocol's cost, not the pacing). Every batch is read from
 *   disk (frame CRCs checked), signed (a device checkpoint), published at QoS 1, cosigned by
 *   the fleet, and its ack verified (cosignature and root) and persisted (sync.json, fsynced)
 *   by the device. Timed from the device's connection (birth published) to the verified ack
 *   of the last record. Baseline: a raw mqtt.js QoS 1 publish loop moving the same payload sizes
 *   (prebuilt, all at once) to the same broker and the same subscriber, timed until the
 *   subscriber has them all: the drain's own bytes must reach the fleet too, so this ratio is
 *   the protocol's cost. A second line compares with the broker alone (no subscriber: the
 *   broker parses and drops), which no delivery can match; it shows the transport's share.
 *   The row names carry the device's CPU time per record during the drain.
 * - pipeline while draining: windows/s of the obstacle pipeline (runWindow, as in
 *   pipeline.bench) while the client drains a backlog, at the default pace and unpaced, vs
 *   the same pipeline alone; and the event loop delay p99 in each case.
 * The broker and fleet run in a child process (bench/sync-fleet-child.ts), as `keel fleet
 * serve` would on its own machine; the device side runs here.
 *
 * Size: N = 1,000,000 records (100,000 with --quick), or --sync-records=<n> /
 * KEEL_BENCH_SYNC_RECORDS=<n>. KEEL_BENCH_SYNC_SETTINGS='{"maxInFlight":8}' overrides the sync
 * settings of every client here (experiments; the rate limits of the drains stay as stated).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SystemClock } from '../runtime/clock.ts';
import { loadConfigFile } from '../runtime/config/load.ts';
import type { SyncConfig } from '../runtime/config/schema.ts';
import { defaultEd25519 } from '../runtime/ledger/keys.ts';
import { Ledger } from '../runtime/ledger/ledger.ts';
import { parseVerifierKey } from '../runtime/ledger/note.ts';
import { SyncClient } from '../runtime/sync/client.ts';
import { syncSettings } from '../runtime/sync/config.ts';
import { SYNC_STATE_FILE } from '../runtime/sync/cursor.ts';
import { pushRuntime } from './harness.ts';
import { percentile, result, type BenchOptions, type BenchResult } from './lib.ts';
import { connectRaw, fillLedger, rawPublishLoop, recordsFlag } from './sync-lib.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const silent = pino({ level: 'silent' });
const clock = new SystemClock();

/** Starts the broker + acking fleet child; resolves with its port and cosigner key. */
async function startFleet(): Promise<{ child: ChildProcess; url: string; fleetVkey: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench', 'sync-fleet-child.ts')], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (l) => {
      rl.close();
      resolve(l);
    });
    child.once('exit', (code) => reject(new Error(`sync fleet child exited with ${code}`)));
  });
  const { port, fleetVkey } = JSON.parse(line) as { port: number; fleetVkey: string };
  return { child, url: `mqtt://127.0.0.1:${port}`, fleetVkey };
}

/** Raw QoS 1 publish loop of payloads of `sizes` bytes; ms until all are PUBACKed (and, with `sink`, received by the fleet child). */
async function rawLoop(url: string, sizes: number[], sink: boolean): Promise<number> {
  const pub = await connectRaw(url);
  try {
    if (!sink) return await rawPublishLoop(pub, 'bench/void', sizes);
    await pub.subscribeAsync('bench/done', { qos: 1 });
    await pub.publishAsync('bench/expect', JSON.stringify({ count: sizes.length }), { qos: 1 });
    const done = new Promise<void>((resolve) => pub.once('message', () => resolve()));
    return await rawPublishLoop(pub, 'bench/raw', sizes, () => done);
  } finally {
    await pub.endAsync();
  }
}

function settings(url: string, fleetVkey: string, o: Partial<SyncConfig> = {}): SyncConfig {
  const overrides = JSON.parse(process.env.KEEL_BENCH_SYNC_SETTINGS ?? '{}') as Partial<SyncConfig>;
  return syncSettings({ broker: url, fleet: fleetVkey, pruneDelivered: false, ackTimeoutMs: 60_000, ...overrides, ...o });
}

let round = 0;

/** A SyncClient on `ledger` with a fresh device id (no retained ack) and a fresh sync.json. */
async function freshClient(ledger: Ledger, key: { name: string; privateKey: Uint8Array }, url: string, fleetVkey: string, s: SyncConfig): Promise<SyncClient> {
  fs.rmSync(path.join(ledger.dir, SYNC_STATE_FILE), { force: true });
  return SyncClient.open({ device: `bench-${process.pid}-${++round}`, ledger, key, fleetKey: fleetVkey, audience: parseVerifierKey(fleetVkey).name, settings: s, clock, logger: silent });
}

/** Drains the whole ledger once; returns ms, the device's CPU time (us) and the batch sizes sent. */
async function drain(ledger: Ledger, key: { name: string; privateKey: Uint8Array }, url: string, fleetVkey: string): Promise<{ ms: number; cpuUs: number; sizes: number[] }> {
  const c = await freshClient(ledger, key, url, fleetVkey, settings(url, fleetVkey, { rateRecordsPerS: 100_000_000, rateBytesPerS: 10_737_418_240 }));
  const sizes: number[] = [];
  c.on('sent', (b) => sizes.push(b.bytes));
  const n = ledger.size;
  const finished = new Promise<void>((resolve) => c.on('delivered', ({ size }) => size === n && resolve()));
  // Timed from the connection (token, CONNACK, subscriptions, birth: once per session, and
  // outside the raw loop's timing too) to the verified ack of the last record.
  let t0 = 0;
  c.once('connected', () => (t0 = performance.now()));
  const cpu0 = process.cpuUsage();
  c.start();
  await finished;
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await c.stop();
  return { ms, cpuUs: cpu.user + cpu.system, sizes };
}

/**
 * Keeps a drain running (a fresh client whenever the backlog is through) until stop(), which
 * resolves with the records sent meanwhile.
 */
function continuousDrain(ledger: Ledger, key: { name: string; privateKey: Uint8Array }, url: string, fleetVkey: string, s: SyncConfig): { started: Promise<void>; stop(): Promise<number> } {
  let active = true;
  let sent = 0;
  let release: () => void = () => undefined;
  const halted = new Promise<void>((r) => (release = r));
  let markStarted: () => void = () => undefined;
  const started = new Promise<void>((r) => (markStarted = r));
  const loop = (async () => {
    while (active) {
      const c = await freshClient(ledger, key, url, fleetVkey, s);
      const n = ledger.size;
      const done = new Promise<void>((r) => c.on('delivered', ({ size }) => size === n && r()));
      c.once('sent', () => markStarted());
      c.start();
      await Promise.race([done, halted]);
      sent += c.stats().recordsSent;
      await c.stop({ waitMs: 0 });
    }
  })();
  return {
    started,
    async stop() {
      active = false;
      release();
      await loop;
      return sent;
    },
  };
}

/** Windows per second of the obstacle pipeline over `ms`, and the event loop delay p99 (ms). */
async function pipelineRate(rt: Awaited<ReturnType<typeof pushRuntime>>['rt'], name: string, size: number, channels: number, ms: number): Promise<{ rate: number; lagP99: number }> {
  const frames = Array.from({ length: 16 }, () => Float32Array.from({ length: channels * size }, () => Math.random() + 0.5));
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    await rt.runWindow(name, { channels, length: size, data: frames[n & 15].slice() });
    n++;
    // A sensor-driven pipeline waits for IO between windows; let timers and IO run, as they would.
    if ((n & 7) === 0) await new Promise((r) => setImmediate(r));
  }
  const elapsed = performance.now() - t0;
  h.disable();
  return { rate: (n / elapsed) * 1000, lagP99: h.percentile(99) / 1e6 };
}

export default async function bench({ quick }: BenchOptions): Promise<BenchResult[]> {
  const n = recordsFlag('sync-records', 'KEEL_BENCH_SYNC_RECORDS') ?? (quick ? 100_000 : 1_000_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-sync-bench-'));
  const { child, url, fleetVkey } = await startFleet();
  const out: BenchResult[] = [];
  let ledger: Ledger | undefined;
  try {
    const privateKey = new Uint8Array(randomBytes(32));
    const key = { name: 'bench.example/device', privateKey, publicKey: defaultEd25519.publicKey(privateKey) };
    ledger = await Ledger.open(path.join(tmp, 'ledger'), { key, durability: 'batch' });
    await fillLedger(ledger, n);

    // Warm up both paths (JIT, connections, the child's first messages).
    const warm = await drain(ledger, key, url, fleetVkey);
    await rawLoop(url, warm.sizes.slice(0, 50), true);

    const rounds = quick ? 1 : 3;
    const drainMs: number[] = [];
    const cpuUs: number[] = [];
    const rawMs: number[] = [];
    const voidMs: number[] = [];
    let sizes = warm.sizes;
    for (let r = 0; r < rounds; r++) {
      const d = await drain(ledger, key, url, fleetVkey);
      drainMs.push(d.ms);
      cpuUs.push(d.cpuUs);
      sizes = d.sizes;
      rawMs.push(await rawLoop(url, sizes, true));
      voidMs.push(await rawLoop(url, sizes, false));
    }
    const rate = (ms: number[]) => (n / percentile(ms, 50)) * 1000;
    const avgBatch = Math.round(sizes.reduce((a, b) => a + b, 0) / sizes.length);
    // SyncClient reads a run of records with one read when the ledger offers readRange.
    const reads = typeof (ledger as { readRange?: unknown }).readRange === 'function' ? 'ranged reads' : 'per-record reads';
    const cpu = (percentile(cpuUs, 50) / n).toFixed(2);
    out.push(result(`sync drain ${n} records to an acking fleet (${sizes.length} batches of ~${Math.round(avgBatch / 1024)} KiB, ${reads}, device CPU ${cpu} us/record) vs raw QoS 1 of the same bytes to the same broker and subscriber`, rate(drainMs), 'records/s', rate(rawMs)));
    out.push(result(`sync drain ${n} records to an acking fleet vs raw QoS 1 of the same bytes to the broker alone (no subscriber)`, rate(drainMs), 'records/s', rate(voidMs)));

    // The pipeline while a backlog drains, in this process (where keel run has both).
    const { config, dir } = loadConfigFile(path.join(ROOT, 'examples/obstacle.yaml'));
    config.safety.silenceMs = 86_400_000;
    config.safety.overrunMs = 86_400_000;
    delete config.pipelines[0].watchdog;
    const p = config.pipelines[0];
    const { rt } = await pushRuntime(config, dir);
    try {
      await rt.start();
      const channels = p.window.channels.length;
      const windowMs = quick ? 1000 : 3000;
      await pipelineRate(rt, p.name, p.window.size, channels, 300);
      const paced = settings(url, fleetVkey); // the shipped defaults
      const unpaced = settings(url, fleetVkey, { rateRecordsPerS: 100_000_000, rateBytesPerS: 10_737_418_240 });
      const alone: number[] = [];
      const withDrain = { paced: [] as number[], unpaced: [] as number[] };
      const lag = { alone: [] as number[], paced: [] as number[], unpaced: [] as number[] };
      const drained = { paced: 0, unpaced: 0 };
      for (let r = 0; r < rounds; r++) {
        const a = await pipelineRate(rt, p.name, p.window.size, channels, windowMs);
        alone.push(a.rate);
        lag.alone.push(a.lagP99);
        for (const [which, s] of [['paced', paced], ['unpaced', unpaced]] as const) {
          const drainer = continuousDrain(ledger, key, url, fleetVkey, s);
          await drainer.started;
          const t0 = performance.now();
          const w = await pipelineRate(rt, p.name, p.window.size, channels, windowMs);
          const sent = await drainer.stop();
          withDrain[which].push(w.rate);
          lag[which].push(w.lagP99);
          drained[which] = Math.max(drained[which], (sent / (performance.now() - t0)) * 1000);
        }
      }
      const med = (x: number[]) => percentile(x, 50);
      out.push(result(`pipeline obstacle while draining at the default pace (~${Math.round(drained.paced)} records/s)`, med(withDrain.paced), 'windows/s', med(alone)));
      out.push(result(`pipeline obstacle while draining unpaced (~${Math.round(drained.unpaced)} records/s)`, med(withDrain.unpaced), 'windows/s', med(alone)));
      out.push(result('event loop delay p99 while draining at the default pace', med(lag.paced), 'ms', med(lag.alone)));
      out.push(result('event loop delay p99 while draining unpaced', med(lag.unpaced), 'ms', med(lag.alone)));
    } finally {
      await rt.stop('bench done');
    }
  } finally {
    await ledger?.close();
    child.stdin?.end();
    await new Promise((r) => child.once('exit', r));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return out;
}
