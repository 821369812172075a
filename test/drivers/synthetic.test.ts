/**
 * Synthetic source: deterministic values (same seed, same stream, in any chunking), exact
 * sample counts and times over simulated time on FakeClock, and the frequency content and
 * statistics of the signals.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../runtime/clock.ts';
import type { SignalConfig, SyntheticSourceConfig } from '../../runtime/config/schema.ts';
import type { Sample } from '../../drivers/types.ts';
import { compileSynthesis, synthesize, SyntheticSource, type SynthesisSpec } from '../../drivers/synthetic.ts';

function config(over: Partial<SyntheticSourceConfig> = {}): SyntheticSourceConfig {
  return {
    name: 'vib',
    type: 'synthetic',
    rateHz: 1000,
    seed: 7,
    batchMs: 10,
    channels: { x: [{ kind: 'sine', freqHz: 5, amplitude: 2, phase: 0.3 }, { kind: 'noise', amplitude: 0.1 }], y: [{ kind: 'constant', value: 3 }] },
    ...over,
  };
}

function run(cfg: SyntheticSourceConfig, ms: number, clock = new FakeClock()): { samples: Sample[]; src: SyntheticSource; clock: FakeClock } {
  const src = new SyntheticSource(cfg, { clock });
  const samples: Sample[] = [];
  src.on('sample', (s) => samples.push(s));
  void src.start();
  clock.advance(ms);
  return { samples, src, clock };
}

function zeroCrossings(v: ArrayLike<number>): number {
  let n = 0;
  for (let i = 1; i < v.length; i++) if (Math.sign(v[i]) !== Math.sign(v[i - 1])) n++;
  return n;
}

describe('synthesize (offline, no clock)', () => {
  test('same seed gives the same stream; another seed another noise; chunking does not matter', () => {
    const spec: SynthesisSpec = { rateHz: 500, seed: 42, channels: { a: [{ kind: 'noise', amplitude: 1 }], b: [{ kind: 'noise', amplitude: 1 }] } };
    const one = synthesize(spec, 0, 1000);
    const two = synthesize(spec, 0, 1000);
    assert.deepEqual(one.channels.a, two.channels.a);
    const other = synthesize({ ...spec, seed: 43 }, 0, 1000);
    assert.notDeepEqual(other.channels.a, one.channels.a);
    assert.notDeepEqual(one.channels.a, one.channels.b, 'channels get independent noise');
    const parts = [synthesize(spec, 0, 333), synthesize(spec, 333, 400), synthesize(spec, 733, 267)];
    assert.deepEqual(Float64Array.from(parts.flatMap((p) => [...p.channels.a])), one.channels.a);
    // Adding a channel does not change the noise of the others (it depends on the name).
    const more = synthesize({ ...spec, channels: { z: [{ kind: 'noise', amplitude: 1 }], ...spec.channels } }, 0, 1000);
    assert.deepEqual(more.channels.a, one.channels.a);
  });

  test('noise is Gaussian-like with the given standard deviation and no lag-1 correlation', () => {
    const n = 20_000;
    const { channels } = synthesize({ rateHz: 1000, seed: 1, channels: { n: [{ kind: 'noise', amplitude: 0.5 }] } }, 0, n);
    const v = channels.n;
    const mean = v.reduce((a, b) => a + b, 0) / n;
    const sd = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
    let lag = 0;
    for (let i = 1; i < n; i++) lag += (v[i] - mean) * (v[i - 1] - mean);
    const r1 = lag / n / sd ** 2;
    assert.ok(Math.abs(mean) < 0.02, `mean ${mean}`);
    assert.ok(Math.abs(sd - 0.5) < 0.02, `sd ${sd}`);
    assert.ok(Math.abs(r1) < 0.03, `lag-1 autocorrelation ${r1}`);
    const within1 = v.filter((x) => Math.abs(x) < 0.5).length / n;
    assert.ok(Math.abs(within1 - 0.6827) < 0.02, `fraction within 1 sd: ${within1}`);
  });

  test('a sine has the right frequency (zero crossings), amplitude and phase; components sum', () => {
    const { channels, timesMs } = synthesize({ rateHz: 1000, channels: { s: [{ kind: 'sine', freqHz: 7, amplitude: 3, phase: 0.1 }, { kind: 'constant', value: 0 }] } }, 0, 2000);
    assert.equal(zeroCrossings(channels.s), 28, '7 Hz over 2 s crosses zero 28 times');
    assert.ok(Math.abs(Math.max(...channels.s) - 3) < 0.01);
    assert.equal(channels.s[0], 3 * Math.sin(0.1));
    assert.equal(timesMs[1999], 1999);
    const sum = synthesize({ rateHz: 100, channels: { c: [{ kind: 'constant', value: 2 }, { kind: 'constant', value: -0.5 }, { kind: 'ramp', from: 0, to: 10, overMs: 1000 }] } }, 0, 201);
    assert.equal(sum.channels.c[0], 1.5);
    assert.equal(sum.channels.c[50], 1.5 + 5);
    assert.equal(sum.channels.c[200], 1.5 + 10, 'a ramp holds its end value');
  });

  test('steps cycle through their levels; sequences restart time per segment and loop (or hold the last)', () => {
    const steps = synthesize({ rateHz: 10, channels: { s: [{ kind: 'steps', levels: [1, 2, 3], everyMs: 200 }] } }, 0, 14);
    assert.deepEqual([...steps.channels.s], [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3, 1, 1]);
    const seq: SignalConfig = {
      kind: 'sequence',
      loop: true,
      segments: [
        { durationMs: 300, signals: [{ kind: 'constant', value: 0 }] },
        { durationMs: 200, signals: [{ kind: 'ramp', from: 10, to: 20, overMs: 200 }] },
      ],
    };
    const looped = synthesize({ rateHz: 10, channels: { q: [seq] } }, 0, 11);
    assert.deepEqual([...looped.channels.q], [0, 0, 0, 10, 15, 0, 0, 0, 10, 15, 0]);
    const held = synthesize({ rateHz: 10, channels: { q: [{ ...seq, loop: false } as SignalConfig] } }, 0, 9);
    assert.deepEqual([...held.channels.q], [0, 0, 0, 10, 15, 20, 20, 20, 20]);
  });

  test('bad specs fail with errors naming the path', () => {
    const bad = (channels: unknown, rateHz = 10) => () => compileSynthesis({ rateHz, channels } as SynthesisSpec);
    assert.throws(bad({ a: [{ kind: 'sine', freqHz: 1 }] }, 0), /RangeError: rateHz must be a positive number/);
    assert.throws(bad({}), /at least one channel/);
    assert.throws(bad({ a: [] }), /channels\.a must be a non-empty array/);
    assert.throws(bad({ a: [{ kind: 'square' }] }), /channels\.a\[0\]\.kind must be one of/);
    assert.throws(bad({ a: [{ kind: 'sine', freqHz: -1 }] }), /channels\.a\[0\]\.freqHz must be positive/);
    assert.throws(bad({ a: [{ kind: 'noise', amplitude: -1 }] }), /standard deviation/);
    assert.throws(bad({ a: [{ kind: 'steps', levels: [1], everyMs: 0 }] }), /everyMs must be positive/);
    assert.throws(bad({ a: [{ kind: 'constant', value: NaN }] }), /value must be a finite number/);
    assert.throws(
      bad({ a: [{ kind: 'sequence', segments: [{ durationMs: 1, signals: [{ kind: 'sequence', segments: [] }] }] }] }),
      /channels\.a\[0\]\.segments\[0\]\.signals\[0\]: sequences cannot be nested/,
    );
    assert.throws(() => synthesize({ rateHz: 10, channels: { a: [{ kind: 'constant', value: 1 }] } }, -1, 1), /fromIndex/);
  });
});

describe('SyntheticSource on FakeClock', () => {
  test('1 kHz on 10 ms batches: exactly 1001 samples over 1 s, at exact times, 10 per batch', () => {
    const clock = new FakeClock();
    const start = clock.now();
    const src = new SyntheticSource(config(), { clock });
    const samples: Sample[] = [];
    const perBatch: number[] = [];
    src.on('sample', (s) => samples.push(s));
    void src.start();
    for (let k = 0; k < 100; k++) {
      const before = samples.length;
      clock.advance(10);
      perBatch.push(samples.length - before);
    }
    assert.equal(samples.length, 1001, 'samples 0..1000 are due after 1000 ms');
    assert.equal(perBatch[0], 11);
    assert.ok(perBatch.slice(1).every((n) => n === 10), `batches ${perBatch.join(',')}`);
    samples.forEach((s, i) => assert.equal(s.t, start + i));
    assert.equal(src.stats().samples, 1001);
  });

  test('no drift at a rate that does not divide the batch (3 Hz over 10 s: 31 samples, last at exactly +10 s)', () => {
    const clock = new FakeClock();
    const start = clock.now();
    // 7 ms batches: the last one before 10 s fires at 9996 ms, so sample 30 (due at 10 s) waits for 10003.
    const { samples } = run(config({ rateHz: 3, batchMs: 7 }), 10_002, clock);
    assert.equal(samples.length, 30);
    clock.advance(1);
    assert.equal(samples.length, 31);
    assert.equal(samples[30].t, start + 10_000);
    // The timestamps are the exact due times, not the (later) batch times.
    samples.forEach((s, i) => assert.equal(s.t, start + (i * 1000) / 3));
  });

  test('emits the same values as synthesize() with the same config', () => {
    const cfg = config();
    const { samples } = run(cfg, 500);
    const offline = synthesize(cfg, 0, samples.length);
    assert.deepEqual(Float64Array.from(samples.map((s) => s.values.x)), offline.channels.x);
    assert.ok(samples.every((s) => s.values.y === 3));
    // The 5 Hz sine shows through the noise: 5 crossings in 0.5 s of the clean sine.
    const clean = synthesize({ rateHz: 1000, channels: { x: [cfg.channels.x[0]] } }, 0, samples.length);
    assert.equal(zeroCrossings(clean.channels.x), 5);
  });

  test('two runs with the same seed emit identical streams; another seed differs', () => {
    const a = run(config(), 300).samples.map((s) => s.values.x);
    const b = run(config(), 300).samples.map((s) => s.values.x);
    const c = run(config({ seed: 8 }), 300).samples.map((s) => s.values.x);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
  });

  test('stop() ends emission and leaves no timer; start() again restarts at sample 0', async () => {
    const { samples, src, clock } = run(config({ rateHz: 100 }), 100);
    assert.equal(samples.length, 11);
    await src.stop();
    await src.stop();
    assert.deepEqual(clock.pending(), []);
    assert.equal(src.stats().connected, false);
    clock.advance(1000);
    assert.equal(samples.length, 11);
    const restartAt = clock.now();
    await src.start();
    clock.advance(10);
    assert.equal(samples[11].t, restartAt);
    await src.stop();
  });

  test('high rates are delivered in full (20 kHz for 250 ms)', () => {
    const { samples } = run(config({ rateHz: 20_000, channels: { x: [{ kind: 'sine', freqHz: 1000, amplitude: 1, phase: 0.5 }] } }), 250);
    assert.equal(samples.length, 5001);
    assert.equal(zeroCrossings(samples.map((s) => s.values.x)), 500);
  });
});
