/**
 * Turns a window of samples into model features with keel's own transform functions
 * (runtime/pipeline/transforms.ts), in the order a pipeline config lists them. Training,
 * the model tests and the device all go through these functions, so they cannot drift.
 */
import { fftMagnitude, normalize, scale, type Frame } from '../runtime/pipeline/transforms.ts';
import type { TransformConfig } from '../runtime/config/schema.ts';

/** The pipeline settings a model was trained for, written fully (defaults spelled out). */
export interface PipelineSpec {
  window: { size: number; hop: number; channels: string[]; layout: 'channels-first' };
  transforms: TransformConfig[];
}

/** Builds a channel-major frame from one Float32Array per channel (all the same length). */
export function frameOf(channels: ArrayLike<number>[]): Frame {
  if (channels.length === 0) throw new RangeError('frameOf: channels must not be empty');
  const length = channels[0].length;
  const data = new Float32Array(channels.length * length);
  channels.forEach((c, k) => {
    if (c.length !== length) throw new RangeError(`frameOf: channel ${k} has ${c.length} samples, expected ${length}`);
    data.set(c, k * length);
  });
  return { channels: channels.length, length, data };
}

/** Applies `transforms` in order, as keel's pipeline does; returns the features (float32). */
export function applyTransforms(frame: Frame, transforms: readonly TransformConfig[]): Float32Array {
  let f: Frame = { channels: frame.channels, length: frame.length, data: Float32Array.from(frame.data) };
  for (const t of transforms) {
    switch (t.type) {
      case 'scale':
        f = scale(f, t.factor, t.offset ?? 0);
        break;
      case 'normalize':
        f = normalize(f, t.mean, t.std);
        break;
      case 'fft':
        f = fftMagnitude(f, { hann: t.hann ?? true, dropDc: t.dropDc ?? false });
        break;
    }
  }
  return f.data;
}

/** Features of one window given per-channel samples and the model's pipeline. */
export function windowFeatures(channels: ArrayLike<number>[], spec: PipelineSpec): Float32Array {
  if (channels.length !== spec.window.channels.length) throw new RangeError(`windowFeatures: expected ${spec.window.channels.length} channels, got ${channels.length}`);
  for (const c of channels) if (c.length !== spec.window.size) throw new RangeError(`windowFeatures: expected ${spec.window.size} samples per channel, got ${c.length}`);
  return applyTransforms(frameOf(channels), spec.transforms);
}
