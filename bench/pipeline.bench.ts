/**
 * Pipeline benchmarks, each against the raw limit measured in the same run:
 * - throughput: windows/s through the pipeline (transforms, inference, rules, actions) on
 *   ready windows, and again including per-sample ingestion and windowing, each vs a raw
 *   `session.run` loop on the same model and input shapes;
 * - sensor-to-action latency p50/p99: from pushing the sample that completes a window to the
 *   actuator write it causes, vs the raw `session.run` latency p50/p99;
 * - resident memory of a keel process with the model loaded and running vs a bare
 *   onnxruntime session in the same kind of process.
 * Every shipped model is measured, plus a third-party model (Silero VAD) when installed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { pino } from 'pino';
import { PushSource } from '../drivers/push.ts';
import type { ActionContext, Actuator, ActuatorValue } from '../drivers/types.ts';
import { loadConfigFile } from '../runtime/config/load.ts';
import type { KeelConfig, PipelineConfig } from '../runtime/config/schema.ts';
import { Runtime } from '../runtime/runtime.ts';
import { windowToInput } from '../runtime/pipeline/window.ts';
import { generateKeyFile } from '../runtime/ledger/keys.ts';
import { LedgerRecorder } from '../runtime/ledger/recorder.ts';
import { pushRuntime } from './harness.ts';
import { percentile, result, type BenchOptions, type BenchResult } from './lib.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The configs measured: one per shipped model, plus the third-party one if present. */
export const BENCH_CONFIGS = ['examples/vibration.yaml', 'examples/obstacle.yaml', 'examples/motor-stall.yaml', 'examples/silero-vad.yaml'];

/** An actuator that records when it was written (performance.now(), ms). */
class StopwatchActuator implements Actuator {
  readonly name: string;
  writes: number[] = [];
  private value: ActuatorValue | undefined;
  constructor(name: string) {
    this.name = name;
  }
  async open(): Promise<void> {}
  async write(value: ActuatorValue, _ctx?: ActionContext): Promise<void> {
    this.writes.push(performance.now());
    this.value = value;
  }
  async safe(): Promise<void> {}
  current(): ActuatorValue | undefined {
    return this.value;
  }
  async close(): Promise<void> {}
}

interface Harness {
  rt: Runtime;
  push: PushSource;
  p: PipelineConfig;
  stopwatch: StopwatchActuator;
  hop: number;
  recorder?: LedgerRecorder;
}

/**
 * Builds a runtime on the config with a push source. With `toggle`, adds a rule that acts on
 * every window (for latency: every window then ends in an actuator write); without it the
 * pipeline keeps only the example's own rules, which fire rarely, as in the field.
 */
async function harness(file: string, toggle: boolean, ledgerDir?: string): Promise<Harness> {
  const { config, dir } = loadConfigFile(path.join(ROOT, file));
  const p = config.pipelines[0];
  const stopwatch = new StopwatchActuator('bench_stopwatch');
  const cfg: KeelConfig = structuredClone(config);
  cfg.actuators.push({ name: 'bench_stopwatch', type: 'gpio', line: { chip: 'sim', offset: 63 }, activeLow: false, initial: 0, safe: 0 });
  // Toggles with the sign of the last sample of each window, so every window causes an action.
  if (toggle) cfg.pipelines[0].rules.push({
    name: 'bench_toggle',
    when: { sensor: `${p.source}.${p.window.channels[0]}`, above: 0, index: 0, hysteresis: 0 },
    cooldownMs: 0,
    onEnter: [{ actuator: 'bench_stopwatch', value: 1 }],
    onExit: [{ actuator: 'bench_stopwatch', value: 0 }],
  });
  // The harness pauses between phases; a silence fault would suppress the measured actions.
  cfg.safety.silenceMs = 86_400_000;
  cfg.safety.overrunMs = 86_400_000;
  delete cfg.pipelines[0].watchdog;
  const { rt, push, clock } = await pushRuntime(cfg, dir, { bench_stopwatch: stopwatch });
  let recorder: LedgerRecorder | undefined;
  if (ledgerDir) {
    const key = generateKeyFile(path.join(ledgerDir, 'bench.key'), { name: 'bench.example/device' });
    const ledgerCfg = { dir: ledgerDir, key: 'bench.key', durability: 'batch' as const, onFull: 'drop-oldest' as const, flushMs: 200, intervalMs: 1000, checkpointEveryRecords: 10_000, checkpointEveryMs: 60_000, maxBuffered: 1_000_000 };
    recorder = await LedgerRecorder.open(ledgerCfg, key, 'bench', path.join(ledgerDir, 'ledger'), clock, pino({ level: 'silent' }));
    recorder.attach(rt);
  }
  await rt.start();
  return { rt, push, p: cfg.pipelines[0], stopwatch, hop: p.window.hop ?? p.window.size, recorder };
}

/** A raw session on the same model file, options and inputs, outside keel. */
async function rawSession(file: string) {
  const { config, dir } = loadConfigFile(path.join(ROOT, file));
  const p = config.pipelines[0];
  const m = p.model;
  const session = await ort.InferenceSession.create(path.resolve(dir, m.path), {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: m.threads?.intraOp ?? 1,
    interOpNumThreads: m.threads?.interOp ?? 1,
    executionMode: 'sequential',
    executionProviders: m.executionProviders,
  });
  const channels = p.window.channels.length;
  const frame = { channels, length: p.window.size, data: Float32Array.from({ length: channels * p.window.size }, () => Math.random() - 0.5) };
  const input = windowToInput(frame, p);
  const dims = m.inputs[m.input].shape;
  const fixed = dims.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const feeds: Record<string, ort.Tensor> = { [m.input]: new ort.Tensor('float32', input, dims.map((d) => (d === -1 ? input.length / fixed : d))) };
  for (const [name, spec] of Object.entries(m.inputs)) {
    if (name === m.input || spec.value === undefined) continue;
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const vals = Array.isArray(spec.value) ? spec.value : new Array<number>(n).fill(spec.value);
    feeds[name] = spec.dtype === 'int64' ? new ort.Tensor('int64', BigInt64Array.from(vals, (v) => BigInt(v)), spec.shape) : new ort.Tensor('float32', Float32Array.from(vals), spec.shape);
  }
  for (const s of m.state ?? []) feeds[s.input] = new ort.Tensor('float32', new Float32Array(s.shape.reduce((a, b) => a * b, 1)), s.shape);
  return { session, feeds, outputs: session.outputNames };
}

function channelsOf(p: PipelineConfig): string[] {
  return p.window.channels;
}

/** Pre-built sample values for one hop: the harness's own allocation stays out of the timing. */
function hopSamples(p: PipelineConfig, hop: number, sign: number): Record<string, number>[] {
  const chans = channelsOf(p);
  return Array.from({ length: hop }, (_, i) => {
    const v: Record<string, number> = {};
    for (const c of chans) v[c] = Math.random() - 0.5;
    if (i === hop - 1) v[chans[0]] = sign * (0.5 + Math.random());
    return v;
  });
}

async function measure(file: string, quick: boolean): Promise<BenchResult[]> {
  const name = path.basename(file, '.yaml');
  const h = await harness(file, false);
  const lat = await harness(file, true);
  const raw = await rawSession(file);
  const windows = quick ? 300 : 3000;
  const rounds = quick ? 3 : 7;
  const hops = [hopSamples(h.p, h.hop, 1), hopSamples(h.p, h.hop, -1)];
  const channels = h.p.window.channels.length;
  const frames = Array.from({ length: 16 }, () => Float32Array.from({ length: channels * h.p.window.size }, () => Math.random() - 0.5));
  const pushHop = (x: Harness, k: number): number => {
    const hop = hops[k & 1];
    for (let i = 0; i < hop.length - 1; i++) x.push.push(hop[i]);
    const t = performance.now();
    x.push.push(hop[hop.length - 1]);
    return t;
  };
  // Fill the first windows and warm every path.
  for (let i = 0; i < Math.ceil(h.p.window.size / h.hop) + 50; i++) {
    pushHop(h, i);
    pushHop(lat, i);
    await h.rt.settled();
    await lat.rt.settled();
  }
  for (let i = 0; i < 50; i++) await raw.session.run(raw.feeds, raw.outputs);

  const rawTimes: number[] = [];
  const windowTimes: number[] = [];
  const ingestTimes: number[] = [];
  const rawLat: number[] = [];
  const pipeLat: number[] = [];
  for (let r = 0; r < rounds; r++) {
    let t0 = performance.now();
    for (let i = 0; i < windows; i++) {
      const s = performance.now();
      await raw.session.run(raw.feeds, raw.outputs);
      rawLat.push(performance.now() - s);
    }
    rawTimes.push(performance.now() - t0);
    // Window path: transforms, inference, rules, actions on ready windows (runWindow).
    t0 = performance.now();
    for (let i = 0; i < windows; i++) {
      await h.rt.runWindow(h.p.name, { channels, length: h.p.window.size, data: frames[i & 15].slice() });
    }
    windowTimes.push(performance.now() - t0);
    // Whole path: samples pushed one by one until each window completes, then the window path.
    t0 = performance.now();
    for (let i = 0; i < windows; i++) {
      pushHop(h, i);
      await h.rt.settled();
    }
    ingestTimes.push(performance.now() - t0);
    // Latency: every window toggles an actuator; from the completing sample to the write.
    for (let i = 0; i < windows; i++) {
      const before = lat.stopwatch.writes.length;
      const pushed = pushHop(lat, i);
      await lat.rt.settled();
      if (lat.stopwatch.writes.length > before) pipeLat.push(lat.stopwatch.writes[lat.stopwatch.writes.length - 1] - pushed);
    }
  }
  // The same window path with the ledger recording every inference (batch mode, temp dir).
  const ledgerTmp = mkdtempSync(path.join(os.tmpdir(), 'keel-bench-ledger-'));
  const withLedger = await harness(file, false, ledgerTmp);
  const ledgerTimes: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < windows; i++) {
      await withLedger.rt.runWindow(withLedger.p.name, { channels, length: h.p.window.size, data: frames[i & 15].slice() });
    }
    ledgerTimes.push(performance.now() - t0);
  }
  await withLedger.rt.stop('bench done');
  await withLedger.recorder?.close();
  rmSync(ledgerTmp, { recursive: true, force: true });
  await h.rt.stop('bench done');
  await lat.rt.stop('bench done');
  await raw.session.release();
  const rate = (times: number[]) => windows / (percentile(times, 50) / 1000);
  const rawRate = rate(rawTimes);
  const out = [
    result(`pipeline throughput ${name}`, rate(windowTimes), 'windows/s', rawRate),
    result(`pipeline throughput with ingest ${name} (${h.hop} samples/window)`, rate(ingestTimes), 'windows/s', rawRate),
    result(`pipeline throughput with ledger ${name}`, rate(ledgerTimes), 'windows/s', rawRate),
  ];
  if (pipeLat.length > 0) {
    out.push(result(`sensor-to-action p50 ${name}`, percentile(pipeLat, 50), 'ms', percentile(rawLat, 50)));
    out.push(result(`sensor-to-action p99 ${name}`, percentile(pipeLat, 99), 'ms', percentile(rawLat, 99)));
  }
  out.push(...memory(file, quick));
  return out;
}

/** Resident memory of a keel runtime on `file` vs a bare session of the same model, in child processes. */
function memory(file: string, quick: boolean): BenchResult[] {
  const child = path.join(ROOT, 'bench', 'memory-child.ts');
  const run = (mode: string) => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', child, mode, path.join(ROOT, file), quick ? '1' : '3'], { cwd: ROOT, encoding: 'utf8' });
    return JSON.parse(out.trim().split('\n').pop()!) as { rssMb: number };
  };
  const bare = run('bare');
  const keel = run('keel');
  return [result(`resident memory ${path.basename(file, '.yaml')}`, keel.rssMb, 'MB', bare.rssMb)];
}

export default async function (opts: BenchOptions): Promise<BenchResult[]> {
  const all: BenchResult[] = [];
  for (const f of BENCH_CONFIGS) {
    if (!existsSync(path.join(ROOT, f))) continue;
    all.push(...(await measure(f, opts.quick)));
  }
  return all;
}
