/**
 * Synthetic sensor data: channels built from signals (sine, noise, constant, steps, ramp,
 * sequences of these), for demos, tests and model training.
 *
 * Timing has no drift: sample i is due at exactly `start + i / rateHz` and carries the time
 * `startEpoch + i * 1000 / rateHz` ms. Every `batchMs` the source computes from the elapsed
 * monotonic time how many samples are due and emits them all, so 1 kHz works on 10 ms timers
 * and a late timer only makes a bigger batch.
 *
 * Values are a pure function of (config, sample index): `synthesize()` gives the training
 * scripts the very same stream offline, in any chunking, without a clock. Noise comes from a
 * counter-based generator (the mulberry32 mixing function applied to seed, channel, component
 * and sample index, then Box-Muller), so chunk boundaries, other channels and playback speed
 * never change a channel's noise, and the same seed always gives the same stream.
 *
 * Units: times in ms, frequencies in Hz, sine phase in radians, noise amplitude is the
 * standard deviation. `steps` cycles through its levels; `ramp` holds `to` after `overMs`;
 * a `sequence` restarts each segment's time at 0 and, without `loop`, keeps its last segment
 * running after the end.
 */
import { EventEmitter } from 'node:events';
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import type { SignalConfig, SyntheticSourceConfig } from '../runtime/config/schema.ts';
import type { Sample, SensorSource, SourceEvents, SourceStats } from './types.ts';

/** What `synthesize` needs: the signal part of a synthetic source's config. */
export interface SynthesisSpec {
  rateHz: number;
  /** Noise seed; default 1. */
  seed?: number;
  channels: Record<string, SignalConfig[]>;
}

/** A block of synthesized samples, channel-major. */
export interface SynthesizedBlock {
  /** Sample times relative to sample 0, ms: `(fromIndex + k) * 1000 / rateHz`. */
  timesMs: Float64Array<ArrayBuffer>;
  /** Channel name to its `count` values. */
  channels: Record<string, Float64Array<ArrayBuffer>>;
}

/** What a synthetic source needs from outside. */
export interface SyntheticSourceDeps {
  clock: Clock;
}

/** Value of one signal at time `tMs` (relative to its start) for global sample index `i`. */
type SignalFn = (tMs: number, i: number) => number;

/** A compiled synthesis spec: channel names and a per-sample evaluator. */
export interface CompiledSynthesis {
  readonly rateHz: number;
  readonly channelNames: readonly string[];
  /** Time of sample `i` relative to sample 0, ms. */
  timeOf(i: number): number;
  /** Value of channel `c` (index into channelNames) at sample `i`. */
  value(c: number, i: number): number;
}

/**
 * Checks and compiles a spec. Throws TypeError/RangeError naming the offending path
 * (`channels.x[1].freqHz`) for anything the schema would have rejected.
 */
export function compileSynthesis(spec: SynthesisSpec): CompiledSynthesis {
  if (!spec || typeof spec !== 'object') throw new TypeError('spec must be an object { rateHz, channels, seed? }');
  const rateHz = spec.rateHz;
  if (typeof rateHz !== 'number' || !Number.isFinite(rateHz) || rateHz <= 0) throw new RangeError(`rateHz must be a positive number, got ${String(rateHz)}`);
  const seed = spec.seed ?? 1;
  if (!Number.isInteger(seed)) throw new TypeError(`seed must be an integer, got ${String(seed)}`);
  if (!spec.channels || typeof spec.channels !== 'object') throw new TypeError('channels must be an object of channel name to signals');
  const names = Object.keys(spec.channels);
  if (names.length === 0) throw new RangeError('channels must name at least one channel');
  const fns = names.map((name) => {
    const signals = spec.channels[name];
    if (!Array.isArray(signals) || signals.length === 0) throw new TypeError(`channels.${name} must be a non-empty array of signals`);
    const parts = signals.map((s, k) => compileSignal(s, `channels.${name}[${k}]`, streamKey(seed, name, String(k))));
    return sum(parts);
  });
  return {
    rateHz,
    channelNames: names,
    timeOf: (i) => (i * 1000) / rateHz,
    value: (c, i) => fns[c]((i * 1000) / rateHz, i),
  };
}

/**
 * Synthesizes samples `fromIndex .. fromIndex + count - 1` of `spec`, exactly as a
 * SyntheticSource with the same config would emit them.
 */
export function synthesize(spec: SynthesisSpec, fromIndex: number, count: number): SynthesizedBlock {
  if (!Number.isSafeInteger(fromIndex) || fromIndex < 0) throw new RangeError(`fromIndex must be a non-negative integer, got ${fromIndex}`);
  if (!Number.isSafeInteger(count) || count < 0 || count > 1 << 28) throw new RangeError(`count must be an integer 0..${1 << 28}, got ${count}`);
  const c = compileSynthesis(spec);
  const timesMs = new Float64Array(count);
  for (let k = 0; k < count; k++) timesMs[k] = c.timeOf(fromIndex + k);
  const channels: Record<string, Float64Array<ArrayBuffer>> = {};
  c.channelNames.forEach((name, ci) => {
    const out = new Float64Array(count);
    for (let k = 0; k < count; k++) out[k] = c.value(ci, fromIndex + k);
    channels[name] = out;
  });
  return { timesMs, channels };
}

/** A sensor source emitting synthesized samples in real (injected-clock) time. */
export class SyntheticSource extends EventEmitter<SourceEvents> implements SensorSource {
  /** Source name (from config). */
  readonly name: string;
  private readonly clock: Clock;
  private readonly synth: CompiledSynthesis;
  private readonly batchMs: number;
  /** Most samples emitted per tick (one second's worth, at least 1000): a long stall is caught up over a few ticks instead of freezing the process. */
  private readonly maxPerTick: number;
  private timer?: TimerHandle;
  private startMono = 0;
  private startEpoch = 0;
  private next = 0;
  private emitted = 0;

  constructor(config: SyntheticSourceConfig, deps: SyntheticSourceDeps) {
    super();
    if (!config || typeof config !== 'object') throw new TypeError('config must be a synthetic source configuration');
    if (!deps?.clock) throw new TypeError('deps.clock is required');
    this.name = config.name;
    this.clock = deps.clock;
    this.synth = compileSynthesis(config);
    const batchMs = config.batchMs ?? 10;
    if (!Number.isFinite(batchMs) || batchMs < 1) throw new RangeError(`config.batchMs must be at least 1, got ${batchMs}`);
    this.batchMs = batchMs;
    this.maxPerTick = Math.max(1000, Math.ceil(config.rateHz));
  }

  /** Starts emitting; sample 0 is due now and goes out with the first batch. */
  async start(): Promise<void> {
    if (this.timer) return;
    this.startMono = this.clock.monotonic();
    this.startEpoch = this.clock.now();
    this.next = 0;
    this.timer = this.clock.setInterval(`synthetic:${this.name}:batch`, () => this.tick(), this.batchMs);
  }

  /** Stops emitting. Idempotent. */
  async stop(): Promise<void> {
    this.clock.cancel(this.timer);
    this.timer = undefined;
  }

  /** Counters for metrics. */
  stats(): SourceStats {
    return { samples: this.emitted, dropped: 0, reconnects: 0, connected: this.timer !== undefined };
  }

  private tick(): void {
    const elapsedMs = this.clock.monotonic() - this.startMono;
    // Samples 0..due-1 are due; the epsilon keeps float rounding (2.9999999) from delaying
    // a sample that is exactly due by one batch.
    const due = Math.floor((elapsedMs * this.synth.rateHz) / 1000 + 1e-9) + 1;
    const until = Math.min(due, this.next + this.maxPerTick);
    const names = this.synth.channelNames;
    for (let i = this.next; i < until && this.timer; i++) {
      const values: Record<string, number> = {};
      for (let c = 0; c < names.length; c++) values[names[c]] = this.synth.value(c, i);
      const sample: Sample = { t: this.startEpoch + this.synth.timeOf(i), values };
      this.next = i + 1;
      this.emitted++;
      this.emit('sample', sample);
    }
  }
}

// ------------------------------------------------------------------ signals

function compileSignal(s: SignalConfig, at: string, key: number): SignalFn {
  if (!s || typeof s !== 'object') throw new TypeError(`${at} must be a signal object`);
  switch (s.kind) {
    case 'sine': {
      const f = finite(s.freqHz, `${at}.freqHz`);
      if (f <= 0) throw new RangeError(`${at}.freqHz must be positive, got ${f}`);
      const a = finite(s.amplitude ?? 1, `${at}.amplitude`);
      const phase = finite(s.phase ?? 0, `${at}.phase`);
      return (tMs) => {
        // Reduce to a fraction of a cycle first, so precision does not decay over long runs.
        const cycles = (f * tMs) / 1000;
        return a * Math.sin(2 * Math.PI * (cycles - Math.floor(cycles)) + phase);
      };
    }
    case 'noise': {
      const sd = finite(s.amplitude, `${at}.amplitude`);
      if (sd < 0) throw new RangeError(`${at}.amplitude must be >= 0 (it is the standard deviation), got ${sd}`);
      return (_t, i) => sd * gaussian(key, i);
    }
    case 'constant': {
      const v = finite(s.value, `${at}.value`);
      return () => v;
    }
    case 'steps': {
      if (!Array.isArray(s.levels) || s.levels.length === 0) throw new TypeError(`${at}.levels must be a non-empty array of numbers`);
      const levels = s.levels.map((v, k) => finite(v, `${at}.levels[${k}]`));
      const every = positive(s.everyMs, `${at}.everyMs`);
      return (tMs) => levels[Math.floor(tMs / every + 1e-9) % levels.length];
    }
    case 'ramp': {
      const from = finite(s.from, `${at}.from`);
      const to = finite(s.to, `${at}.to`);
      const over = positive(s.overMs, `${at}.overMs`);
      return (tMs) => (tMs >= over ? to : from + ((to - from) * tMs) / over);
    }
    case 'sequence': {
      if (!Array.isArray(s.segments) || s.segments.length === 0) throw new TypeError(`${at}.segments must be a non-empty array`);
      const loop = s.loop ?? true;
      const starts: number[] = [];
      let total = 0;
      const segs = s.segments.map((seg, k) => {
        const where = `${at}.segments[${k}]`;
        const d = positive(seg?.durationMs, `${where}.durationMs`);
        if (!Array.isArray(seg.signals) || seg.signals.length === 0) throw new TypeError(`${where}.signals must be a non-empty array`);
        const fns = seg.signals.map((x, j) => {
          if ((x as { kind?: string })?.kind === 'sequence') throw new TypeError(`${where}.signals[${j}]: sequences cannot be nested`);
          return compileSignal(x as SignalConfig, `${where}.signals[${j}]`, mixKey(key, 0x5e9 + k * 0x10001 + j));
        });
        starts.push(total);
        total += d;
        return sum(fns);
      });
      const last = segs.length - 1;
      return (tMs, i) => {
        let local = tMs;
        if (loop) local = tMs % total;
        else if (tMs >= total) return segs[last](tMs - starts[last], i);
        // Few segments in practice: a linear scan beats a binary search's bookkeeping.
        let k = last;
        for (let j = 1; j < starts.length; j++) {
          if (local < starts[j]) {
            k = j - 1;
            break;
          }
        }
        return segs[k](local - starts[k], i);
      };
    }
    default:
      throw new TypeError(`${at}.kind must be one of sine, noise, constant, steps, ramp, sequence, got ${JSON.stringify((s as { kind?: unknown }).kind)}`);
  }
}

function sum(fns: SignalFn[]): SignalFn {
  if (fns.length === 1) return fns[0];
  return (t, i) => {
    let v = 0;
    for (const f of fns) v += f(t, i);
    return v;
  };
}

function finite(v: unknown, at: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`${at} must be a finite number, got ${JSON.stringify(v)}`);
  return v;
}

function positive(v: unknown, at: string): number {
  const n = finite(v, at);
  if (n <= 0) throw new RangeError(`${at} must be positive, got ${n}`);
  return n;
}

// ------------------------------------------------------------------ noise

/** mulberry32's output function: one 32-bit state step, mixed to a well-spread 32-bit value. */
function mulberry32(state: number): number {
  let t = (state + 0x6d2b79f5) | 0;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}

function mixKey(key: number, v: number): number {
  return mulberry32((key ^ Math.imul(v | 0, 0x9e3779b1)) | 0);
}

/** FNV-1a of a string, so a channel's noise depends on its name, not on its position. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let k = 0; k < s.length; k++) {
    h ^= s.charCodeAt(k);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function streamKey(seed: number, channel: string, path: string): number {
  const lo = seed | 0;
  const hi = Math.floor(seed / 2 ** 32) | 0;
  return mixKey(mixKey(mixKey(fnv1a(channel), lo), hi), fnv1a(path));
}

/** Standard normal deviate for sample `i` of the stream `key` (Box-Muller, cosine branch). */
function gaussian(key: number, i: number): number {
  const lo = i >>> 0;
  const hi = Math.floor(i / 2 ** 32) >>> 0;
  const h = mixKey(mixKey(key, lo), hi);
  const u1 = (mulberry32(h ^ 0x1) + 1) / 2 ** 32; // (0, 1]: log stays finite
  const u2 = mulberry32(h ^ 0x2) / 2 ** 32; // [0, 1)
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}
