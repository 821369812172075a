/**
 * Simulated runs of a brushed DC motor under PWM for the `motor-stall` model.
 *
 * Physics (per run, random parameters): armature current i = (V·duty − k·ω)/R (the
 * electrical time constant, ~1 ms, is far below the 10 ms sample period), and
 * J·dω/dt = k·i − b·ω − T_load − T_friction with ω ≥ 0 (the loads are passive). Integrated
 * with 1 ms Euler steps, sampled at 100 Hz. What keel sees: the measured current (noise,
 * 10 mA resolution) and the commanded duty. There is no speed sensor.
 *
 * A run: the motor starts from rest, the command steps or ramps between levels and sometimes
 * stops and restarts; the load wanders (an Ornstein–Uhlenbeck process) and has bumps. In
 * 60 % of runs, one or two jams develop: the load rises over 0.5–3 s past what the motor can
 * give, holds for 1.5–6 s, then may release. The label of a step is 1 while the motor has
 * been below 10 % of its no-load speed for at least 0.3 s with a duty of at least 0.2:
 * stalled. A start from rest draws the same current as a stall for a moment, and a heavy
 * bump looks like the start of a jam, so one step alone cannot tell; the history can.
 */
import { Rng } from '../nn.ts';
import { windowFeatures, type PipelineSpec } from '../features.ts';

/** Sample rate of current and command, Hz. */
export const MOTOR_RATE_HZ = 100;
/** Samples per model step (0.1 s). */
export const STEP_SAMPLES = 10;
/** Hidden state width of the model. */
export const STATE_SIZE = 16;

/**
 * keel pipeline: windows of 10 samples (0.1 s) of current (A) and command (duty 0..1),
 * channels-first, each standardized with fixed constants: the mean and standard deviation
 * of current and command over generated runs (1.92 A / 1.98 A, 0.62 / 0.27), rounded.
 */
export const MOTOR_PIPELINE: PipelineSpec = {
  window: { size: STEP_SAMPLES, hop: STEP_SAMPLES, channels: ['current', 'command'], layout: 'channels-first' },
  transforms: [{ type: 'normalize', mean: [2, 0.6], std: [2, 0.3] }],
};

/** Features per step (2 channels x 10 samples). */
export const MOTOR_FEATURES = 2 * STEP_SAMPLES;

/** One simulated run: samples and per-step labels. */
export interface MotorRun {
  current: Float64Array;
  command: Float64Array;
  /** per step (STEP_SAMPLES samples): 1 = stalled */
  labels: number[];
  /** per step: true when a jam is being applied (for reporting) */
  jam: boolean[];
}

/** Simulates `steps` model steps (steps x 10 samples) of one random motor and duty cycle. */
export function motorRun(rng: Rng, steps: number, opts: { stallChance?: number } = {}): MotorRun {
  const n = steps * STEP_SAMPLES;
  const sub = 10; // 1 ms integration steps per 10 ms sample
  const dt = 1 / (MOTOR_RATE_HZ * sub);
  const V = 12 * rng.uniform(0.9, 1.1);
  const R = rng.uniform(0.8, 3);
  const k = rng.uniform(0.015, 0.05);
  const tauM = rng.uniform(0.08, 0.5);
  const J = (tauM * k * k) / R;
  const b = (rng.uniform(0.02, 0.08) * k * k) / R;
  const Ts = (k * V) / R; // stall torque at full duty, N·m
  const friction = rng.uniform(0.02, 0.05) * Ts;
  const iNoise = rng.uniform(0.005, 0.03) * (V / R);

  // Command schedule, per sample.
  const command = new Float64Array(n);
  {
    let i = 0;
    let level = 0;
    const first = Math.round(rng.uniform(0.5, 2) * MOTOR_RATE_HZ);
    for (; i < Math.min(n, first); i++) command[i] = 0;
    while (i < n) {
      const stop = level > 0 && rng.chance(0.15);
      const target = stop ? 0 : rng.uniform(0.35, 1);
      const hold = Math.round((stop ? rng.uniform(1, 3) : rng.uniform(2, 8)) * MOTOR_RATE_HZ);
      const ramp = !stop && rng.chance(0.3) ? Math.round(rng.uniform(0.5, 2) * MOTOR_RATE_HZ) : 0;
      for (let j = 0; j < hold && i < n; j++, i++) command[i] = j < ramp ? level + ((target - level) * (j + 1)) / ramp : target;
      level = target;
    }
  }

  // Load torque, per sample: base + OU wander + bumps + jams.
  const load = new Float64Array(n);
  const jamAt = new Uint8Array(n);
  {
    const base = rng.uniform(0.03, 0.2) * Ts;
    const sigma = rng.uniform(0, 0.05) * Ts;
    const theta = 1 / 0.5; // OU mean reversion, 1/s
    let ou = 0;
    for (let i = 0; i < n; i++) {
      ou += -theta * ou * (1 / MOTOR_RATE_HZ) + sigma * Math.sqrt((2 * theta) / MOTOR_RATE_HZ) * rng.normal();
      load[i] = Math.max(0, base + ou);
    }
    const bumps = Math.floor((n / MOTOR_RATE_HZ) * 0.1 + rng.next());
    for (let q = 0; q < bumps; q++) {
      const at = rng.int(n);
      const len = Math.round(rng.uniform(0.3, 1.5) * MOTOR_RATE_HZ);
      const h = rng.uniform(0.05, 0.3) * Ts;
      for (let j = 0; j < len && at + j < n; j++) load[at + j] += h * 0.5 * (1 - Math.cos((2 * Math.PI * j) / len));
    }
    if (rng.chance(opts.stallChance ?? 0.6)) {
      const jams = rng.chance(0.3) ? 2 : 1;
      const span = Math.floor(n / jams);
      for (let q = 0; q < jams; q++) {
        const start = q * span + Math.round(rng.uniform(0.2, 0.6) * span);
        const rise = Math.round(rng.uniform(0.5, 3) * MOTOR_RATE_HZ);
        const hold = Math.round(rng.uniform(1.5, 6) * MOTOR_RATE_HZ);
        const release = rng.chance(0.7);
        const peak = rng.uniform(1.2, 2.5) * Ts;
        for (let j = 0; start + j < n; j++) {
          let extra: number;
          if (j < rise) extra = (peak * (j + 1)) / rise;
          else if (j < rise + hold || !release) extra = peak;
          else if (j < rise + hold + 20) extra = peak * (1 - (j - rise - hold) / 20);
          else break;
          load[start + j] += extra;
          jamAt[start + j] = 1;
        }
      }
    }
  }

  const current = new Float64Array(n);
  const slow = new Uint8Array(n);
  let w = 0;
  for (let i = 0; i < n; i++) {
    const d = command[i];
    let iSum = 0;
    for (let s = 0; s < sub; s++) {
      const amps = (V * d - k * w) / R;
      iSum += amps;
      w += (dt / J) * (k * amps - b * w - load[i] - friction);
      if (w < 0) w = 0;
    }
    // Current sensors average over the sample period (ADC with an RC filter).
    const measured = iSum / sub + rng.normal(0, iNoise);
    current[i] = Math.round(measured * 100) / 100;
    const noLoad = (V * d) / k;
    slow[i] = d >= 0.2 && w < 0.1 * noLoad ? 1 : 0;
  }

  // Stalled: slow for at least 0.3 s (30 samples) up to the end of the step.
  const labels: number[] = [];
  const jam: boolean[] = [];
  let run = 0;
  const need = Math.round(0.3 * MOTOR_RATE_HZ);
  for (let t = 0; t < steps; t++) {
    let jammed = false;
    for (let j = 0; j < STEP_SAMPLES; j++) {
      const i = t * STEP_SAMPLES + j;
      run = slow[i] ? run + 1 : 0;
      jammed ||= jamAt[i] === 1;
    }
    labels.push(run >= need ? 1 : 0);
    jam.push(jammed);
  }
  return { current, command, labels, jam };
}

/** Features of model step `t` of a run, through keel's transforms. */
export function stepFeatures(run: MotorRun, t: number): Float32Array {
  const a = t * STEP_SAMPLES;
  return windowFeatures([run.current.subarray(a, a + STEP_SAMPLES), run.command.subarray(a, a + STEP_SAMPLES)], MOTOR_PIPELINE);
}

/** A set of runs with their per-step features. */
export interface MotorSet {
  runs: MotorRun[];
  /** x[r][t]: features of step t of run r */
  x: Float32Array[][];
  y: number[][];
}

/** `n` runs of `steps` steps each, from `seed`. */
export function motorSet(seed: number, n: number, steps = 300): MotorSet {
  const rng = new Rng(seed);
  const set: MotorSet = { runs: [], x: [], y: [] };
  for (let r = 0; r < n; r++) {
    const run = motorRun(rng, steps);
    set.runs.push(run);
    set.x.push(Array.from({ length: steps }, (_, t) => stepFeatures(run, t)));
    set.y.push(run.labels);
  }
  return set;
}
