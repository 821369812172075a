/**
 * Simulated accelerometer windows of a rotating machine, healthy or faulty, for the
 * `vibration-anomaly` model.
 *
 * One axis, in g, sampled at 1 kHz. A healthy machine vibrates at its shaft frequency
 * (12–55 Hz, i.e. 720–3300 rpm) with a few weak harmonics, sometimes an electrical tone at
 * twice the line frequency and a tone from other machinery nearby, broadband sensor noise
 * and the gravity offset of the mounting. Faults follow the textbook signatures (ISO
 * 13373-3 style): imbalance raises the 1x line, misalignment the 2x/3x lines, mechanical
 * looseness adds many harmonics and half-orders, a bearing defect adds impulses at a
 * non-integer multiple of shaft speed that ring a structural resonance (outer race), the
 * same modulated by shaft rotation (inner race), or discrete tones at the defect frequency.
 * Every fault has a severity from barely visible to obvious, and healthy machines vary in
 * level, speed and noise, so the classes overlap near the boundary.
 */
import { Rng } from '../nn.ts';
import { windowFeatures, type PipelineSpec } from '../features.ts';

/** Sample rate of the simulated accelerometer, Hz. */
export const VIBRATION_RATE_HZ = 1000;

/** keel pipeline that feeds the model: one 256-sample window (256 ms) of channel `accel`, FFT magnitude without DC. */
export const VIBRATION_PIPELINE: PipelineSpec = {
  window: { size: 256, hop: 128, channels: ['accel'], layout: 'channels-first' },
  transforms: [{ type: 'fft', hann: true, dropDc: true }],
};

/** Number of spectrum bins the model takes (256/2 + 1 minus DC). */
export const VIBRATION_BINS = 128;

/** What a window shows. */
export type VibrationKind = 'healthy' | 'imbalance' | 'misalignment' | 'looseness' | 'bearing-outer' | 'bearing-inner' | 'bearing-tones';

/** The fault kinds, in the order they are drawn. */
export const FAULT_KINDS: readonly VibrationKind[] = ['imbalance', 'misalignment', 'looseness', 'bearing-outer', 'bearing-inner', 'bearing-tones'];

interface Tone {
  /** multiple of the shaft frequency, or absolute Hz when `hz` is set */
  order: number;
  amp: number;
  hz?: boolean;
}

/** Raw samples (g) of one window of the given kind. */
export function vibrationWindow(rng: Rng, kind: VibrationKind, n = VIBRATION_PIPELINE.window.size): Float64Array {
  const fs = VIBRATION_RATE_HZ;
  const f0 = rng.uniform(12, 55);
  // Speed drifts a little within the window (load changes): +-0.5 % linear.
  const drift = rng.uniform(-0.005, 0.005);
  let a1 = rng.logUniform(0.05, 0.3);
  const tones: Tone[] = [];
  for (let k = 2; k <= 5; k++) tones.push({ order: k, amp: (a1 * rng.logUniform(0.01, 0.2)) / (k - 1) });
  if (rng.chance(0.3)) tones.push({ order: rng.pick([100, 120]), amp: a1 * rng.uniform(0.05, 0.4), hz: true });
  if (rng.chance(0.2)) tones.push({ order: rng.uniform(20, 450), amp: a1 * rng.uniform(0.02, 0.15), hz: true });
  let noise = rng.logUniform(0.004, 0.06);
  const gravity = rng.uniform(-1.05, 1.05);

  // Severity 0.1 (barely visible) .. 1 (obvious).
  const severity = rng.uniform(0.1, 1);
  type Burst = { times: number[]; amp: number; fr: number; tau: number; modDepth: number };
  let burst: Burst | undefined;
  switch (kind) {
    case 'healthy':
      break;
    case 'imbalance':
      a1 *= 2 + 4 * severity;
      break;
    case 'misalignment':
      tones[0].amp = a1 * (0.4 + 1.1 * severity);
      tones[1].amp = a1 * (0.1 + 0.5 * severity) * rng.uniform(0.3, 1);
      break;
    case 'looseness': {
      const g = 0.5 + severity;
      for (let k = 2; k <= 10; k++) tones.push({ order: k, amp: a1 * rng.uniform(0.06, 0.3) * g });
      for (const h of [0.5, 1.5, 2.5, 3.5]) tones.push({ order: h, amp: a1 * rng.uniform(0.04, 0.25) * g });
      noise *= 1 + 0.5 * severity;
      break;
    }
    case 'bearing-outer':
    case 'bearing-inner': {
      const inner = kind === 'bearing-inner';
      const bpf = f0 * (inner ? rng.uniform(4.8, 7.5) : rng.uniform(3.0, 5.2));
      const times: number[] = [];
      // Impulses with ~1 % timing jitter (rolling elements slip), starting before the window.
      for (let t = -rng.uniform(0, 1 / bpf) - 0.01; t < n / fs; t += (1 / bpf) * (1 + rng.normal(0, 0.01))) times.push(t);
      burst = {
        times,
        amp: rng.logUniform(0.1, 1) * (0.3 + severity),
        fr: rng.uniform(120, 450),
        tau: rng.uniform(0.0015, 0.005),
        modDepth: inner ? rng.uniform(0.3, 0.9) : 0,
      };
      break;
    }
    case 'bearing-tones': {
      const bpf = rng.uniform(3.0, 7.5);
      const base = rng.logUniform(0.03, 0.25) * (0.4 + severity);
      for (let k = 1; k <= 3; k++) tones.push({ order: bpf * k, amp: (base * rng.uniform(0.4, 1)) / k });
      if (rng.chance(0.5)) for (const s of [-1, 1]) tones.push({ order: bpf + s, amp: base * rng.uniform(0.1, 0.4) });
      break;
    }
  }

  const phase0 = rng.uniform(0, 2 * Math.PI);
  const phases = tones.map(() => rng.uniform(0, 2 * Math.PI));
  const modPhase = rng.uniform(0, 2 * Math.PI);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t = i / fs;
    // Shaft angle (rad) with the linear speed drift integrated.
    const angle = 2 * Math.PI * f0 * (t + (drift * t * t * fs) / (2 * n));
    let v = gravity + a1 * Math.sin(angle + phase0);
    tones.forEach((tone, k) => {
      v += tone.amp * Math.sin((tone.hz ? 2 * Math.PI * tone.order * t : tone.order * angle) + phases[k]);
    });
    if (burst) {
      const mod = 1 - burst.modDepth * 0.5 * (1 - Math.cos(angle + modPhase));
      for (const tn of burst.times) {
        const dt = t - tn;
        if (dt < 0 || dt > 8 * burst.tau) continue;
        v += burst.amp * mod * Math.exp(-dt / burst.tau) * Math.sin(2 * Math.PI * burst.fr * dt);
      }
    }
    out[i] = v + rng.normal(0, noise);
  }
  return out;
}

/** A labelled set of features: spectra (as keel computes them), 0 = healthy / 1 = faulty, and the kind. */
export interface VibrationSet {
  x: Float32Array[];
  y: number[];
  kind: VibrationKind[];
}

/** `n` windows, half healthy, half faulty (fault kinds in equal shares), from `seed`. */
export function vibrationSet(seed: number, n: number): VibrationSet {
  const rng = new Rng(seed);
  const set: VibrationSet = { x: [], y: [], kind: [] };
  for (let i = 0; i < n; i++) {
    const faulty = i % 2 === 1;
    const kind = faulty ? FAULT_KINDS[((i - 1) / 2) % FAULT_KINDS.length] : 'healthy';
    set.x.push(windowFeatures([vibrationWindow(rng, kind)], VIBRATION_PIPELINE));
    set.y.push(faulty ? 1 : 0);
    set.kind.push(kind);
  }
  return set;
}

/** Offset added before the logarithm inside the model (spectrum units, g). */
export const LOG_FLOOR = 1e-4;

/**
 * The model's first stage, as in its ONNX graph: log(spectrum + LOG_FLOOR), then per-bin
 * standardization with constants measured on the training set. `mean`/`invStd` are float32.
 */
export function logSpectrum(spectrum: ArrayLike<number>, mean: ArrayLike<number>, invStd: ArrayLike<number>): Float64Array {
  const out = new Float64Array(spectrum.length);
  const floor = Math.fround(LOG_FLOOR);
  for (let i = 0; i < spectrum.length; i++) {
    out[i] = (Math.log(Math.fround(spectrum[i] + floor)) - mean[i]) * invStd[i];
  }
  return out;
}
