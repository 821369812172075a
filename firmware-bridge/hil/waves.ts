/**
 * The input waveforms of a HIL scenario (firmware-bridge/hil/scenario.ts): what one analog
 * channel or digital pin of the emulated board reads over scenario time.
 *
 * An input is a list of segments in time order. Each segment has one shape, valid from its
 * `atMs` until the next segment starts:
 * - `value`: a constant (a step at `atMs`);
 * - `sine`: mean + amplitude * sin(2π (t - atMs) / periodMs + phase);
 * - `csv`: a recorded column (CSV, JSON lines or WAV, read by the replay source's parser),
 *   sample-and-hold from the segment start, looping or holding the last value at the end;
 * - `follow`: gain * (the current value of an emulated output pin) + offset, so an input can
 *   react to what the runtime drives (a motor's current follows its PWM duty): the plant
 *   half of a closed loop.
 * Optional per segment: `overMs` cross-fades linearly from the previous segment's shape to
 * this one (a ramp is a `value` with `overMs`); `noise` adds seeded Gaussian noise with that
 * standard deviation (input units), drawn afresh at every update.
 *
 * Values are in the input's unit (ADC counts 0..1023, or millivolts, or 0/1 for a digital
 * pin), rounded and clamped to its range when sent; clamping is counted, not an error,
 * because a sine or noise may brush the rails on purpose.
 */
import path from 'node:path';
import { FakeClock } from '../../runtime/clock.ts';
import { ReplaySource } from '../../drivers/replay.ts';
import type { Sample } from '../../drivers/types.ts';
import { asError } from '../../runtime/errors.ts';

/** A recorded column to replay (times relative to the first row). */
export interface CsvShape {
  file: string;
  column: string;
  timeColumn?: string;
  timeUnit?: 's' | 'ms' | 'us';
  rateHz?: number;
  scale?: number;
  offset?: number;
  loop?: boolean;
}

/** One segment of an input's waveform, as written in the scenario file. */
export interface WaveSegment {
  atMs: number;
  value?: number;
  sine?: { mean: number; amplitude: number; periodMs: number; phaseDeg?: number };
  csv?: CsvShape;
  follow?: { pin: number; gain?: number; offset?: number };
  overMs?: number;
  noise?: number;
  event?: string;
}

/** A loaded recording: times (ms from the first row) and values of one column, in order. */
export interface Recording {
  timesMs: Float64Array;
  values: Float64Array;
  /** Length of one pass for looping, ms (span plus one mean interval). */
  periodMs: number;
}

/** Reads the pin values `follow` shapes depend on. */
export type PinReader = (pin: number) => number | undefined;

/** Largest recording a scenario may replay, rows (a 10-minute scenario at 1 kHz). */
export const MAX_RECORDING_ROWS = 600_000;

/**
 * Loads `column` of a recording with keel's replay parser (CSV with header and `#`
 * comments as `keel record` writes them, JSON lines, 16-bit WAV). Relative paths resolve
 * against `baseDir`. Rejects with an Error whose message says what is wrong.
 */
export async function loadRecording(shape: CsvShape, baseDir: string): Promise<Recording> {
  const clock = new FakeClock();
  const file = path.resolve(baseDir, shape.file);
  const src = new ReplaySource(
    {
      type: 'replay',
      name: 'hil-input',
      file,
      timing: 'fast',
      speed: 1,
      loop: false,
      // Only this column is read, so other columns may hold text.
      channels: [shape.column],
      timeUnit: shape.timeUnit ?? 'ms',
      ...(shape.timeColumn !== undefined ? { timeField: shape.timeColumn } : {}),
      ...(shape.rateHz !== undefined ? { rateHz: shape.rateHz } : {}),
    },
    { clock, baseDir },
  );
  const t0 = clock.now();
  const times: number[] = [];
  const values: number[] = [];
  let missing = 0;
  let tooLong = false;
  const done = new Promise<void>((resolve, reject) => {
    src.on('sample', (s: Sample) => {
      const v = s.values[shape.column];
      if (v === undefined) {
        missing++;
        return;
      }
      if (times.length >= MAX_RECORDING_ROWS) {
        tooLong = true;
        return;
      }
      times.push(s.t - t0);
      values.push(v);
    });
    src.on('end', () => resolve());
    src.on('fault', (err) => reject(err));
  });
  try {
    await src.start();
    await done;
  } catch (err) {
    // The replay source's words, told from the scenario's side.
    const m = asError(err)
      .message.replace(/^replay source "hil-input" \((.*?)\): /, '$1: ')
      .replace(/channels ("[^"]*") not in the header/, 'column $1 not in the header')
      .replace(/ \(a relative path resolves against the config file's directory\)/, " (relative paths resolve against the scenario's directory)");
    throw new Error(m);
  } finally {
    await src.stop().catch(() => undefined);
  }
  if (tooLong) throw new Error(`${file}: more than ${MAX_RECORDING_ROWS} rows; cut the recording to the scenario's length`);
  if (values.length === 0) {
    throw new Error(`${file}: no row has a value in column "${shape.column}"${missing ? ` (${missing} rows without it)` : ''}`);
  }
  const span = times[times.length - 1] - times[0];
  const mean = times.length > 1 ? span / (times.length - 1) : 1;
  return { timesMs: Float64Array.from(times), values: Float64Array.from(values), periodMs: span + mean };
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What an input is, for the board's control channel. */
export interface InputTarget {
  kind: 'analog' | 'digital';
  /** ADC channel (analog) or Arduino pin (digital). */
  index: number;
  unit: 'counts' | 'mv' | 'level';
  /** Largest value the board accepts in `unit` (1023 counts, VCC millivolts, 1). */
  max: number;
}

/**
 * One input's waveform over scenario time. Stateful only in its noise generator, so the
 * same scenario draws the same noise sequence on every run.
 */
export class InputWave {
  /** Values whose shape (before noise) left the input's range and were clamped, so far. */
  clamped = 0;
  private readonly random: () => number;
  private spare: number | null = null;

  /**
   * @param segments in strictly increasing `atMs` (checked by the scenario loader)
   * @param recordings the loaded `csv` of each segment, by segment index
   */
  constructor(
    readonly label: string,
    readonly target: InputTarget,
    readonly segments: readonly WaveSegment[],
    private readonly recordings: ReadonlyMap<number, Recording>,
    seed: number,
    /** Update period of time-varying shapes, ms. */
    readonly everyMs: number,
  ) {
    if (segments.length === 0) throw new RangeError('segments must not be empty');
    this.random = mulberry32(seed);
  }

  /** Index of the segment in force at `tMs` (-1 before the first). */
  segmentAt(tMs: number): number {
    let i = -1;
    for (let k = 0; k < this.segments.length && this.segments[k].atMs <= tMs; k++) i = k;
    return i;
  }

  /** Pins whose value this input follows (in any segment). */
  followedPins(): number[] {
    return [...new Set(this.segments.flatMap((s) => (s.follow ? [s.follow.pin] : [])))];
  }

  /**
   * Whether the value changes with time during segment `i` at `tMs` (so it must be sent
   * every `everyMs`), as opposed to holding until the next segment or a pin change.
   */
  varies(i: number, tMs: number): boolean {
    if (i < 0) return false;
    const s = this.segments[i];
    if (s.noise !== undefined && s.noise > 0) return true;
    if (s.sine) return true;
    if (s.overMs !== undefined && tMs < s.atMs + s.overMs) return true;
    if (s.csv) {
      const rec = this.recordings.get(i)!;
      return Boolean(s.csv.loop) || tMs - s.atMs < rec.timesMs[rec.timesMs.length - 1];
    }
    // A fade that ended still follows the previous shape if that one varies; it does not.
    return false;
  }

  /** Start of the segment after `i` (Infinity after the last). */
  nextStart(i: number): number {
    return i + 1 < this.segments.length ? this.segments[i + 1].atMs : Infinity;
  }

  /**
   * The value at `tMs` in the input's unit, rounded and clamped to what the board takes
   * (undefined before the first segment, or while a followed pin was never reported).
   * Draws noise: call once per value actually sent.
   */
  sample(tMs: number, pins: PinReader): number | undefined {
    const i = this.segmentAt(tMs);
    if (i < 0) return undefined;
    const s = this.segments[i];
    let v = this.shape(i, tMs, pins);
    if (v === undefined) return undefined;
    if (s.overMs !== undefined && i > 0 && tMs < s.atMs + s.overMs) {
      const prev = this.shape(i - 1, tMs, pins);
      if (prev !== undefined) {
        const k = (tMs - s.atMs) / s.overMs;
        v = prev + (v - prev) * k;
      }
    }
    // Noise at a rail is clamped quietly (a sensor reading 0 A reads 0 counts); a shape that
    // itself leaves the range is counted, since the scenario probably meant something else.
    if (Math.round(v) < 0 || Math.round(v) > this.target.max) this.clamped++;
    if (s.noise !== undefined && s.noise > 0) v += s.noise * this.gaussian();
    return this.fit(v);
  }

  /** Rounds and clamps to the board's range; digital inputs read 1 at 0.5 and above. */
  private fit(v: number): number {
    if (this.target.kind === 'digital') return v >= 0.5 ? 1 : 0;
    const r = Math.round(v);
    return r < 0 ? 0 : r > this.target.max ? this.target.max : r;
  }

  /** The shape of segment `i` alone at `tMs` (no fade, no noise). */
  private shape(i: number, tMs: number, pins: PinReader): number | undefined {
    const s = this.segments[i];
    const dt = tMs - s.atMs;
    if (s.value !== undefined) return s.value;
    if (s.sine) {
      const phase = ((s.sine.phaseDeg ?? 0) * Math.PI) / 180;
      return s.sine.mean + s.sine.amplitude * Math.sin((2 * Math.PI * dt) / s.sine.periodMs + phase);
    }
    if (s.follow) {
      const p = pins(s.follow.pin);
      if (p === undefined) return undefined;
      return p * (s.follow.gain ?? 1) + (s.follow.offset ?? 0);
    }
    if (s.csv) {
      const rec = this.recordings.get(i)!;
      const scale = s.csv.scale ?? 1;
      const offset = s.csv.offset ?? 0;
      let at = Math.max(0, dt);
      if (s.csv.loop && rec.periodMs > 0) at %= rec.periodMs;
      return valueAt(rec, at) * scale + offset;
    }
    return undefined;
  }

  /** Standard normal deviate (Box-Muller, both halves used). */
  private gaussian(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.random();
    const v = this.random();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** Sample-and-hold value of a recording at `tMs` after its first row. */
function valueAt(rec: Recording, tMs: number): number {
  const t = rec.timesMs;
  let lo = 0;
  let hi = t.length - 1;
  if (tMs >= t[hi]) return rec.values[hi];
  // Largest index with t[idx] <= tMs.
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (t[mid] <= tMs) lo = mid;
    else hi = mid - 1;
  }
  return rec.values[lo];
}
