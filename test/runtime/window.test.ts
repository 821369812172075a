import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Windower, toChannelsLast, windowToInput } from '../../runtime/pipeline/window.ts';
import { fftMagnitude, normalize } from '../../runtime/pipeline/transforms.ts';

const sample = (t: number, values: Record<string, number>) => ({ t, values });

test('a window fills, then completes every hop samples, oldest sample first', () => {
  const w = new Windower(['a', 'b'], 4, 2);
  const frames = [];
  for (let i = 0; i < 8; i++) {
    const f = w.push(sample(i, { a: i, b: 10 + i }));
    if (f) frames.push(f);
  }
  // First window at sample 3 (filled), then at 5 and 7.
  assert.equal(frames.length, 3);
  assert.deepEqual(Array.from(frames[0].data), [0, 1, 2, 3, 10, 11, 12, 13]);
  assert.deepEqual(Array.from(frames[1].data), [2, 3, 4, 5, 12, 13, 14, 15]);
  assert.deepEqual(Array.from(frames[2].data), [4, 5, 6, 7, 14, 15, 16, 17]);
  assert.equal(w.lastTime, 7);
});

test('a sample missing a channel or carrying NaN is skipped and counted, never half-used', () => {
  const w = new Windower(['a', 'b'], 2, 2);
  assert.equal(w.push(sample(0, { a: 1, b: 1 })), undefined);
  assert.equal(w.push(sample(1, { a: 2 })), undefined);
  assert.equal(w.push(sample(2, { a: NaN, b: 3 })), undefined);
  const f = w.push(sample(3, { a: 4, b: 4 }));
  assert.ok(f);
  assert.deepEqual(Array.from(f.data), [1, 4, 1, 4]);
  assert.equal(w.incomplete, 2);
});

test('reset forgets held samples so no window spans a gap', () => {
  const w = new Windower(['a'], 3, 1);
  w.push(sample(0, { a: 1 }));
  w.push(sample(1, { a: 2 }));
  w.reset();
  assert.equal(w.push(sample(2, { a: 3 })), undefined);
  assert.equal(w.push(sample(3, { a: 4 })), undefined);
  assert.deepEqual(Array.from(w.push(sample(4, { a: 5 }))!.data), [3, 4, 5]);
});

test('bad windower arguments are RangeErrors naming the parameter', () => {
  assert.throws(() => new Windower([], 4), /channels/);
  assert.throws(() => new Windower(['a'], 0), /size/);
  assert.throws(() => new Windower(['a'], 4, 1.5), /hop/);
});

test('channels-last interleaves samples', () => {
  const out = toChannelsLast({ channels: 2, length: 3, data: Float32Array.from([1, 2, 3, 10, 20, 30]) });
  assert.deepEqual(Array.from(out), [1, 10, 2, 20, 3, 30]);
});

test('transform chain: scale then fixed normalize, per channel', () => {
  const frame = { channels: 2, length: 2, data: Float32Array.from([1, 3, 10, 30]) };
  const out = windowToInput(frame, {
    window: { size: 2, channels: ['a', 'b'], layout: 'channels-first' },
    transforms: [
      { type: 'scale', factor: 2, offset: 0 },
      { type: 'normalize', mean: [4, 40], std: [2, 20] },
    ],
  });
  assert.deepEqual(Array.from(out), [-1, 1, -1, 1]);
});

test('per-window z-score gives zero mean and unit deviation; a flat channel stays finite', () => {
  const f = normalize({ channels: 2, length: 4, data: Float32Array.from([1, 2, 3, 4, 5, 5, 5, 5]) });
  const a = Array.from(f.data.subarray(0, 4));
  const mean = a.reduce((x, y) => x + y) / 4;
  const sd = Math.sqrt(a.reduce((x, y) => x + (y - mean) ** 2, 0) / 4);
  assert.ok(Math.abs(mean) < 1e-6);
  assert.ok(Math.abs(sd - 1) < 1e-6);
  assert.deepEqual(Array.from(f.data.subarray(4)), [0, 0, 0, 0]);
});

test('FFT magnitude finds a tone in its bin, with and without DC', () => {
  const n = 64;
  const data = Float32Array.from({ length: n }, (_, i) => 3 + Math.sin((2 * Math.PI * 8 * i) / n));
  const f = fftMagnitude({ channels: 1, length: n, data });
  assert.equal(f.length, n / 2 + 1);
  const bins = Array.from(f.data);
  assert.ok(Math.abs(bins[0] - 3) < 1e-5, `DC ${bins[0]}`);
  assert.ok(Math.abs(bins[8] - 0.5) < 1e-5, `bin 8 ${bins[8]}`);
  const others = bins.filter((_, k) => k !== 0 && k !== 8);
  assert.ok(Math.max(...others) < 1e-5);
  // Hann leaks a DC offset into bin 1, so test the windowed path on the tone alone.
  const tone = Float32Array.from(data, (x) => x - 3);
  const noDc = fftMagnitude({ channels: 1, length: n, data: tone }, { dropDc: true, hann: true });
  assert.equal(noDc.length, n / 2);
  const peak = Array.from(noDc.data).indexOf(Math.max(...noDc.data));
  assert.equal(peak, 7); // bin 8 shifted by the dropped DC bin
  assert.throws(() => fftMagnitude({ channels: 1, length: 12, data: new Float32Array(12) }), /power of two/);
});
