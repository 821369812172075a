/**
 * Windows over a sample stream, and the transform chain that turns a window into the
 * model's input values.
 */
import type { Sample } from '../../drivers/types.ts';
import type { PipelineConfig, TransformConfig } from '../config/schema.ts';
import { fftMagnitude, normalize, scale, type Frame } from './transforms.ts';

/**
 * Collects the configured channels of each sample into ring buffers and yields a frame
 * (channel-major, oldest sample first) every `hop` samples once `size` samples are held.
 * A sample missing a channel, or carrying a non-finite value for one, is skipped and counted:
 * a window never mixes real readings with invented ones.
 */
export class Windower {
  private readonly channels: string[];
  private readonly size: number;
  private readonly hop: number;
  private readonly rings: Float32Array[];
  private head = 0; // next write position
  private filled = 0; // samples held, up to size
  private sinceEmit = 0;
  /** Samples skipped because a channel was missing or not finite. */
  incomplete = 0;
  /** Time (epoch ms) of the newest sample in the last emitted window. */
  lastTime = 0;

  constructor(channels: string[], size: number, hop = size) {
    if (channels.length === 0) throw new RangeError('channels must name at least one channel');
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`size must be a positive integer, got ${size}`);
    if (!Number.isInteger(hop) || hop < 1) throw new RangeError(`hop must be a positive integer, got ${hop}`);
    this.channels = channels;
    this.size = size;
    this.hop = hop;
    this.rings = channels.map(() => new Float32Array(size));
  }

  /** Adds a sample; returns a new frame when one completes. */
  push(sample: Sample): Frame | undefined {
    const v = sample.values;
    for (let c = 0; c < this.channels.length; c++) {
      const x = v[this.channels[c]];
      if (typeof x !== 'number' || !Number.isFinite(x)) {
        this.incomplete++;
        return undefined;
      }
    }
    for (let c = 0; c < this.channels.length; c++) this.rings[c][this.head] = v[this.channels[c]];
    this.head = (this.head + 1) % this.size;
    if (this.filled < this.size) this.filled++;
    this.sinceEmit++;
    if (this.filled < this.size || this.sinceEmit < this.hop) return undefined;
    // The first window is emitted as soon as it fills; after that every `hop` samples.
    this.sinceEmit = 0;
    this.lastTime = sample.t;
    const data = new Float32Array(this.channels.length * this.size);
    for (let c = 0; c < this.channels.length; c++) {
      const ring = this.rings[c];
      const base = c * this.size;
      // Oldest sample sits at `head` once the ring is full.
      data.set(ring.subarray(this.head), base);
      data.set(ring.subarray(0, this.head), base + this.size - this.head);
    }
    return { channels: this.channels.length, length: this.size, data };
  }

  /** Forgets every held sample (after a gap, so a window never spans it). */
  reset(): void {
    this.head = 0;
    this.filled = 0;
    this.sinceEmit = 0;
  }
}

/** Applies the configured transforms in order; returns the frame the model sees. */
export function applyTransforms(frame: Frame, transforms: readonly TransformConfig[]): Frame {
  let f = frame;
  for (const t of transforms) {
    switch (t.type) {
      case 'scale':
        f = scale(f, t.factor, t.offset);
        break;
      case 'normalize':
        f = normalize(f, t.mean, t.std);
        break;
      case 'fft':
        f = fftMagnitude(f, { hann: t.hann, dropDc: t.dropDc });
        break;
    }
  }
  return f;
}

/** Interleaves a channel-major frame into channels-last order ([t0c0, t0c1, ..., t1c0, ...]). */
export function toChannelsLast(frame: Frame): Float32Array {
  const { channels, length, data } = frame;
  if (channels === 1) return data;
  const out = new Float32Array(data.length);
  for (let c = 0; c < channels; c++) for (let i = 0; i < length; i++) out[i * channels + c] = data[c * length + i];
  return out;
}

/** The model input values for one window, per the pipeline's transforms and layout. */
export function windowToInput(frame: Frame, p: Pick<PipelineConfig, 'transforms' | 'window'>): Float32Array {
  const f = applyTransforms(frame, p.transforms);
  return p.window.layout === 'channels-last' ? toChannelsLast(f) : f.data;
}
