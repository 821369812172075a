/**
 * End-to-end latency on the emulated board: from an emulated input change (the ADC input of
 * the ATmega328P running the reference firmware under simavr) to the emulated output change
 * (pin 13), through the real keel Runtime: bridge link in, window, inference with the shipped
 * motor-stall model, rule decision, bridge link out. p50 and p99 over N trials, broken into:
 * - link in: input applied on the board -> the SAMPLE frame carrying the new value received
 *   by the host session (includes the MCU's batching: a frame covers up to 100 ms / 16 values);
 * - align+window wait: that frame received -> start of the inference that decided (the source
 *   joins the two channels, so a value waits for the other channel's frame; the window's hop;
 *   a busy pipeline). Negative when the value arrived while that inference ran (the rule
 *   reads the latest sensor values after the run);
 * - inference: session.run of the inference whose rule evaluation made the decision;
 * - decision: end of that inference -> decision emitted (rules; the SET is written right
 *   after, synchronously);
 * - link out: decision -> pin change seen by the harness (SET over the pty and the emulated
 *   UART at 115200 baud, firmware, pin scan every 50 us).
 * The rule is a sensor threshold (current above 3 A) evaluated after every window's inference
 * (hop 1), so the path is the runtime's full path while the model's own detection delay (a
 * stall takes a few hundred ms of history to recognize) stays out of the figure.
 *
 * Baseline (the raw limit, same board, same pty, same run): a TIMESYNC round trip written and
 * read with the codec alone, no session, no runtime. ratio = figure / raw round trip.
 * End-to-end times are emulated time (harness t_us of the input command and of the output
 * change); the parts are host wall time (harness host_ms mapped onto this process's clock).
 * Runs at two sample rates: 100 Hz (the model's rate, 10 values per frame) and 1000 Hz.
 * Skipped (no results, a note on stderr) when the AVR toolchain or simavr is missing.
 */
import { pino } from 'pino';
import { percentile, result, type BenchOptions, type BenchResult } from './lib.ts';
import { SystemClock } from '../runtime/clock.ts';
import { validateConfig } from '../runtime/config/load.ts';
import { Runtime } from '../runtime/runtime.ts';
import { createDriverDeps } from '../drivers/index.ts';
import { SystemSerialOpener } from '../drivers/serial/index.ts';
import { FrameDecoder } from '../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, type Message } from '../firmware-bridge/messages.ts';
import type { ChannelSamples } from '../firmware-bridge/session.ts';
import { HIL_INSTALL_HINT, missingHilTools, startBoard, type Board, type OutputEvent } from '../firmware-bridge/hil/harness.ts';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Current thresholds, ADC counts (10 mA per count): low = 1 A, high = 5 A, rule at 3 A. */
const LOW = 100;
const HIGH = 500;

const wallNow = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** TIMESYNC round trips over the pty with the codec alone (after a HELLO), ms each. */
async function rawRoundTrips(ptyPath: string, n: number): Promise<number[]> {
  const port = await new SystemSerialOpener().open({ path: ptyPath, baudRate: 115200 });
  port.on('error', () => undefined);
  let seq = 0;
  const waiting = new Map<string, (m: Message) => void>();
  const decoder = new FrameDecoder((f) => {
    const r = checkFrame(f, 'toHost');
    if (!r.ok) return;
    const key = r.msg.kind === 'timesyncReply' ? `ts:${r.msg.token}` : r.msg.kind === 'helloAck' ? `hello:${r.msg.nonce}` : '';
    waiting.get(key)?.(r.msg);
  });
  port.on('data', (d: Buffer) => decoder.push(d));
  const ask = (msg: Message, key: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const t0 = performance.now();
      const timer = setTimeout(() => reject(new Error(`no answer to ${msg.kind} within 1000 ms`)), 1000);
      waiting.set(key, () => {
        clearTimeout(timer);
        waiting.delete(key);
        resolve(performance.now() - t0);
      });
      port.write(Buffer.concat([Buffer.from([0]), encodeMessage(msg, seq++ & 0xffff)]));
    });
  try {
    await ask({ kind: 'hello', maxVersion: 1, nonce: 0x51 }, 'hello:81');
    const rtts: number[] = [];
    for (let i = 0; i < n; i++) {
      rtts.push(await ask({ kind: 'timesyncRequest', token: i + 1 }, `ts:${i + 1}`));
      await sleep(5);
    }
    return rtts;
  } finally {
    await port.close();
  }
}

/** One trial's measurements, ms. */
interface Trial {
  e2e: number;
  linkIn: number;
  wait: number;
  inference: number;
  decision: number;
  linkOut: number;
}

/** The bench config: the motor's current and duty at `rateHz`, the shipped model, a reflex rule on the lamp. */
function benchConfig(ptyPath: string, rateHz: number) {
  return validateConfig(
    {
      device: { name: 'hil-bench' },
      http: { enabled: false },
      log: { level: 'silent' },
      sources: [
        {
          name: 'motor',
          type: 'bridge',
          path: ptyPath,
          channels: [
            { mcuChannel: 0, name: 'current', rateHz, scale: 0.01 },
            { mcuChannel: 1, name: 'command', rateHz, scale: 1 / 1023 },
          ],
        },
      ],
      actuators: [{ name: 'lamp', type: 'bridge', path: ptyPath, output: 1 }],
      pipelines: [
        {
          name: 'reflex',
          source: 'motor',
          window: { size: 10, hop: 1, channels: ['current', 'command'] },
          transforms: [{ type: 'normalize', mean: [2, 0.6], std: [2, 0.3] }],
          model: {
            path: path.join(ROOT, 'models/motor-stall.onnx'),
            sha256: '165b1121e1e195290d003d3262d376761a5a0073500a33c447f5d7057b46734f',
            input: 'x',
            inputs: { x: { shape: [1, 20], dtype: 'float32' } },
            outputs: ['stall'],
            state: [{ input: 'h_in', output: 'h_out', shape: [1, 16], dtype: 'float32', initial: 0 }],
          },
          rules: [{ name: 'overcurrent', when: { sensor: 'motor.current', above: 3 }, onEnter: [{ actuator: 'lamp', value: 1 }], onExit: [{ actuator: 'lamp', value: 0 }] }],
        },
      ],
    },
    'hil-latency bench',
  );
}

/** Runs `n` input toggles through a runtime at `rateHz`; returns the trials. */
async function trials(board: Board, rateHz: number, n: number): Promise<Trial[]> {
  const clock = new SystemClock();
  const config = benchConfig(board.ptyPath, rateHz);
  const deps = createDriverDeps(config, clock);
  const rt = await Runtime.create(config, { ...deps, clock, logger: pino({ level: 'silent' }), baseDir: ROOT, noHttp: true });
  // The harness's host_ms is CLOCK_REALTIME; map it onto this process's clock.
  const h0 = wallNow();
  const tm = await board.time();
  const skew = tm.hostMs - (h0 + wallNow()) / 2;

  let want: 0 | 1 = 1;
  let sampleAt = NaN;
  let lastInference = { end: NaN, ms: NaN };
  let decided: { at: number; inference: { end: number; ms: number } } | null = null;
  const onSamples = (s: ChannelSamples) => {
    if (s.channel !== 0 || !Number.isNaN(sampleAt)) return;
    if (s.values.some((v) => (want === 1 ? v >= HIGH : v <= LOW))) sampleAt = wallNow();
  };
  rt.on('inference', (e) => (lastInference = { end: wallNow(), ms: e.ms }));
  rt.on('decision', (d) => {
    if (d.rule === 'overcurrent' && d.state === (want === 1 ? 'enter' : 'exit') && !decided) decided = { at: wallNow(), inference: lastInference };
  });
  await board.setAnalog(0, LOW);
  await board.setAnalog(1, 714);
  const lease = await deps.bridges!.acquire({ path: board.ptyPath });
  lease.session.on('samples', onSamples);
  await rt.start();
  try {
    const deadline = Date.now() + 5000;
    while (lease.session.state !== 'established' || rt.snapshot().pipelines[0].inferences < 20) {
      if (Date.now() > deadline) throw new Error(`the runtime did not get going on the emulated board (link ${lease.session.state})`);
      await sleep(10);
    }
    const out: Trial[] = [];
    for (let i = 0; i < n; i++) {
      want = i % 2 === 0 ? 1 : 0;
      // A random phase against the MCU's batching, so the figures are not one lucky alignment.
      await sleep(30 + Math.random() * 120);
      sampleAt = NaN;
      decided = null;
      const pin = board.waitForOutput((e: OutputEvent) => e.pin === 13 && e.value === want, 3000);
      const reply = await board.command(`analog 0 ${want === 1 ? HIGH : LOW}`);
      const inUs = Number(reply.t_us);
      const changed = await pin.catch((err: Error) => {
        throw new Error(`trial ${i} at ${rateHz} Hz: ${err.message}`);
      });
      const d = decided as { at: number; inference: { end: number; ms: number } } | null;
      if (!d || Number.isNaN(sampleAt)) throw new Error(`trial ${i} at ${rateHz} Hz: the pin changed without a matching sample or decision`);
      const inputWall = tm.hostMs + (inUs - tm.tUs) / 1000 - skew;
      const outWall = changed.hostMs - skew;
      out.push({
        e2e: (changed.tUs - inUs) / 1000,
        linkIn: sampleAt - inputWall,
        wait: d.inference.end - d.inference.ms - sampleAt,
        inference: d.inference.ms,
        decision: d.at - d.inference.end,
        linkOut: outWall - d.at,
      });
    }
    return out;
  } finally {
    await rt.stop('bench done');
    lease.session.off('samples', onSamples);
    await lease.release();
  }
}

/** Benchmark entry point. */
export default async function hilLatencyBench(opts: BenchOptions): Promise<BenchResult[]> {
  const missing = missingHilTools();
  if (missing.length) {
    console.error(`hil-latency: skipped, the HIL needs ${missing.join(', ')} (${HIL_INSTALL_HINT})`);
    return [];
  }
  const n = opts.quick ? 12 : 60;
  const board = await startBoard();
  try {
    const raw = await rawRoundTrips(board.ptyPath, opts.quick ? 30 : 100);
    const raw50 = percentile(raw, 50);
    const raw99 = percentile(raw, 99);
    const out: BenchResult[] = [result('hil raw TIMESYNC round trip p50 (baseline)', raw50, 'ms', raw50)];
    for (const rateHz of [100, 1000]) {
      const ts = await trials(board, rateHz, n);
      const col = (k: keyof Trial) => ts.map((t) => t[k]);
      for (const [label, k] of [
        ['e2e input->pin', 'e2e'],
        ['link in', 'linkIn'],
        ['align+window wait', 'wait'],
        ['inference', 'inference'],
        ['decision', 'decision'],
        ['link out', 'linkOut'],
      ] as Array<[string, keyof Trial]>) {
        out.push(result(`hil ${rateHz} Hz ${label} p50`, percentile(col(k), 50), 'ms', raw50));
        out.push(result(`hil ${rateHz} Hz ${label} p99`, percentile(col(k), 99), 'ms', raw99));
      }
    }
    return out;
  } finally {
    await board.stop();
  }
}
