/**
 * Per-channel transforms applied to a window before inference. A window is channel-major:
 * `channels` rows of `length` values each, in one Float32Array.
 *
 * The shipped models' training scripts (tools/) call these same functions to build their
 * features, so training and inference cannot drift apart.
 */
import FFT from 'fft.js';

/** A channel-major block of samples: data[c * length + i]. */
export interface Frame {
  channels: number;
  length: number;
  data: Float32Array;
}

/** `y = x * factor + offset` on every value, in place. */
export function scale(frame: Frame, factor: number, offset = 0): Frame {
  const d = frame.data;
  for (let i = 0; i < d.length; i++) d[i] = d[i] * factor + offset;
  return frame;
}

/**
 * Normalizes each channel, in place. With `mean`/`std` given (one per channel, or one for all)
 * computes (x - mean) / std; without them, z-scores each channel over the window itself.
 * A zero std leaves the centred values unscaled rather than dividing by zero.
 */
export function normalize(frame: Frame, mean?: number[], std?: number[]): Frame {
  const { channels, length, data } = frame;
  for (let c = 0; c < channels; c++) {
    const base = c * length;
    let m: number;
    let s: number;
    if (mean && std) {
      m = mean.length === 1 ? mean[0] : mean[c];
      s = std.length === 1 ? std[0] : std[c];
    } else {
      let sum = 0;
      for (let i = 0; i < length; i++) sum += data[base + i];
      m = sum / length;
      let sq = 0;
      for (let i = 0; i < length; i++) sq += (data[base + i] - m) ** 2;
      s = Math.sqrt(sq / length);
    }
    const inv = s > 0 ? 1 / s : 1;
    for (let i = 0; i < length; i++) data[base + i] = (data[base + i] - m) * inv;
  }
  return frame;
}

interface FftPlan {
  fft: FFT;
  // Plain arrays: fft.js runs faster on them than on typed arrays (measured here).
  input: number[];
  out: number[];
  hann: number[];
}
const ffts = new Map<number, FftPlan>();

/** True when n is a power of two and at least 4 (what the FFT accepts). */
export function isFftSize(n: number): boolean {
  return Number.isInteger(n) && n >= 4 && (n & (n - 1)) === 0;
}

function plan(length: number): FftPlan {
  let p = ffts.get(length);
  if (!p) {
    const fft = new FFT(length);
    const hann = Array.from({ length }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / length));
    p = { fft, input: new Array<number>(length).fill(0), out: fft.createComplexArray() as number[], hann };
    ffts.set(length, p);
  }
  return p;
}

/**
 * Magnitude spectrum of each channel: `length/2 + 1` bins (DC to Nyquist), each |X_k| / length.
 * `length` must be a power of two >= 4. A Hann window is applied first when `hann` is true
 * (reduces leakage for vibration signals). Optionally drops the DC bin (`dropDc`).
 * Returns a new frame; the input is left untouched.
 */
export function fftMagnitude(frame: Frame, opts: { hann?: boolean; dropDc?: boolean } = {}): Frame {
  const { channels, length, data } = frame;
  if (!isFftSize(length)) throw new RangeError(`fft: window length must be a power of two >= 4, got ${length}`);
  const { fft, input, out, hann } = plan(length);
  const first = opts.dropDc ? 1 : 0;
  const half = length / 2;
  const bins = half + 1 - first;
  const scaleBy = 1 / length;
  const result = new Float32Array(channels * bins);
  for (let c = 0; c < channels; c++) {
    const base = c * length;
    if (opts.hann) for (let i = 0; i < length; i++) input[i] = data[base + i] * hann[i];
    else for (let i = 0; i < length; i++) input[i] = data[base + i];
    fft.realTransform(out, input);
    const o = c * bins - first;
    for (let k = first; k <= half; k++) {
      const re = out[2 * k];
      const im = out[2 * k + 1];
      result[o + k] = Math.sqrt(re * re + im * im) * scaleBy;
    }
  }
  return { channels, length: bins, data: result };
}
