/**
 * Replay source on real files in a temp dir: CSV, JSON lines and WAV (bytes built here from
 * a known waveform; a sox-made WAV too when sox is installed), original timing on FakeClock
 * (speed 1 and 2), fast, loop, the streamed path for large files, and every bad input.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeClock } from '../../runtime/clock.ts';
import type { ReplaySourceConfig } from '../../runtime/config/schema.ts';
import { DriverError, KeelError } from '../../runtime/errors.ts';
import type { Sample } from '../../drivers/types.ts';
import { ReplaySource, type ReplaySourceDeps } from '../../drivers/replay.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-replay-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
/** Writes `content` to a fresh file with extension `ext` and returns its name (relative to dir). */
function put(ext: string, content: string | Buffer): string {
  const name = `f${++fileNo}${ext}`;
  writeFileSync(path.join(dir, name), content);
  return name;
}

function cfg(file: string, over: Partial<ReplaySourceConfig> = {}): ReplaySourceConfig {
  return { name: 'rec', type: 'replay', file, timing: 'original', speed: 1, loop: false, timeUnit: 'ms', ...over };
}

interface Harness {
  src: ReplaySource;
  clock: FakeClock;
  samples: Sample[];
  ended: () => boolean;
  faults: KeelError[];
  start: number;
}

function harness(config: ReplaySourceConfig, deps: Partial<ReplaySourceDeps> = {}): Harness {
  const clock = new FakeClock();
  const src = new ReplaySource(config, { clock, baseDir: dir, ...deps });
  const samples: Sample[] = [];
  const faults: KeelError[] = [];
  let ends = 0;
  src.on('sample', (s) => samples.push(s));
  src.on('end', () => ends++);
  src.on('fault', (e) => faults.push(e));
  return { src, clock, samples, faults, ended: () => ends > 0, start: clock.now() };
}

/** Waits (on real time, for real file IO) until `cond` holds; fails after 5 s. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

async function playFast(config: ReplaySourceConfig, deps: Partial<ReplaySourceDeps> = {}): Promise<Harness> {
  const h = harness({ ...config, timing: 'fast' }, deps);
  await h.src.start();
  await until(h.ended, 'end');
  return h;
}

function rejectsReplay(config: ReplaySourceConfig, message: RegExp, deps: Partial<ReplaySourceDeps> = {}) {
  return assert.rejects(new ReplaySource(config, { clock: new FakeClock(), baseDir: dir, ...deps }).start(), (err: unknown) => {
    assert.ok(err instanceof DriverError, `expected DriverError, got ${String(err)}`);
    assert.equal(err.code, 'KEEL_E_REPLAY');
    assert.match(err.message, /^replay source "rec" \(/);
    assert.match(err.message, message);
    return true;
  });
}

// ------------------------------------------------------------------ WAV bytes, by hand

interface WavSpec {
  channels: number;
  rate: number;
  /** Interleaved int16 samples. */
  samples: Int16Array;
  format?: number;
  bits?: number;
  extensible?: boolean;
  /** Unknown chunks to include (LIST before fmt, fact between fmt and data). */
  extras?: boolean;
  /** Declared data size instead of the real one. */
  declaredData?: number;
  riff?: string;
}

function chunk(id: string, body: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.write(id, 0, 'latin1');
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body, body.length & 1 ? Buffer.alloc(1) : Buffer.alloc(0)]);
}

function wavBytes(w: WavSpec): Buffer {
  const bits = w.bits ?? 16;
  const blockAlign = (w.channels * bits) / 8;
  const fmt = Buffer.alloc(w.extensible ? 40 : 16);
  fmt.writeUInt16LE(w.extensible ? 0xfffe : (w.format ?? 1), 0);
  fmt.writeUInt16LE(w.channels, 2);
  fmt.writeUInt32LE(w.rate, 4);
  fmt.writeUInt32LE(w.rate * blockAlign, 8);
  fmt.writeUInt16LE(blockAlign, 12);
  fmt.writeUInt16LE(bits, 14);
  if (w.extensible) {
    fmt.writeUInt16LE(22, 16); // cbSize
    fmt.writeUInt16LE(bits, 18); // valid bits
    fmt.writeUInt32LE(w.channels === 2 ? 3 : 4, 20); // channel mask
    // KSDATAFORMAT_SUBTYPE_PCM {00000001-0000-0010-8000-00aa00389b71}
    Buffer.from('0100000000001000800000aa00389b71', 'hex').copy(fmt, 24);
  }
  const data = Buffer.from(w.samples.buffer, w.samples.byteOffset, w.samples.byteLength);
  const dataChunk = chunk('data', data);
  if (w.declaredData !== undefined) dataChunk.writeUInt32LE(w.declaredData, 4);
  const parts = [
    ...(w.extras ? [chunk('LIST', Buffer.from('INFOISFT\x05\x00\x00\x00keel\x00', 'latin1'))] : []),
    chunk('fmt ', fmt),
    ...(w.extras ? [chunk('fact', Buffer.alloc(4))] : []),
    dataChunk,
  ];
  const body = Buffer.concat([Buffer.from('WAVE', 'latin1'), ...parts]);
  const head = Buffer.alloc(8);
  head.write(w.riff ?? 'RIFF', 0, 'latin1');
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}

/** 440 Hz at 8 kHz, 0.1 s, amplitude 16000; right channel is the negated left. */
function stereoSine(frames = 800): Int16Array {
  const s = new Int16Array(frames * 2);
  for (let k = 0; k < frames; k++) {
    const v = Math.round(16000 * Math.sin(2 * Math.PI * 440 * (k / 8000) + 0.2));
    s[2 * k] = v;
    s[2 * k + 1] = -v;
  }
  return s;
}

function zeroCrossings(v: number[]): number {
  let n = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > 0 !== v[i - 1] > 0) n++;
  return n;
}

// ------------------------------------------------------------------ CSV and JSON lines

const sensorCsv = '# bench recording\ntime,temp,hum\n0,20.5,40\n100,20.6,41\n\n250,20.7,\n1000,20.8,43\n';

describe('CSV replay, original timing on FakeClock', () => {
  test('rows come out at their recorded times, stamped with host time; then end', async () => {
    const h = harness(cfg(put('.csv', sensorCsv), { timeField: 'time' }));
    await h.src.start();
    assert.equal(h.samples.length, 0, 'nothing before the first timer');
    h.clock.advance(0);
    assert.deepEqual(h.samples, [{ t: h.start, values: { temp: 20.5, hum: 40 } }]);
    h.clock.advance(99);
    assert.equal(h.samples.length, 1);
    h.clock.advance(1);
    assert.equal(h.samples.length, 2);
    h.clock.advance(150);
    assert.deepEqual(h.samples[2], { t: h.start + 250, values: { temp: 20.7 } }, 'an empty cell leaves the channel out');
    assert.equal(h.ended(), false);
    h.clock.advance(749);
    assert.equal(h.samples.length, 3);
    h.clock.advance(1);
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 100, 250, 1000]);
    assert.equal(h.ended(), true);
    assert.deepEqual(h.src.stats(), { samples: 4, dropped: 0, reconnects: 0, connected: false });
    assert.equal(h.src.format(), 'csv');
    assert.deepEqual(h.clock.pending(), []);
    await h.src.stop();
  });

  test('speed 2 plays twice as fast, and sample times follow', async () => {
    const h = harness(cfg(put('.csv', sensorCsv), { timeField: 'time', speed: 2 }));
    await h.src.start();
    h.clock.advance(0);
    h.clock.advance(124);
    assert.equal(h.samples.length, 2);
    h.clock.advance(1);
    assert.equal(h.samples.length, 3);
    h.clock.advance(375);
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 50, 125, 500]);
    assert.equal(h.ended(), true);
  });

  test('rateHz spacing; semicolons, quoted header, CRLF and a BOM are all understood', async () => {
    const file = put('.csv', '\uFEFF"a";"b c"\r\n1;2\r\n3;"4"\r\n5;6\r\n');
    const h = harness(cfg(file, { rateHz: 50 }));
    await h.src.start();
    h.clock.advance(40);
    assert.deepEqual(h.samples, [
      { t: h.start, values: { a: 1, 'b c': 2 } },
      { t: h.start + 20, values: { a: 3, 'b c': 4 } },
      { t: h.start + 40, values: { a: 5, 'b c': 6 } },
    ]);
    assert.equal(h.ended(), true);
  });

  test('time units: seconds and microseconds; relative to the first row', async () => {
    const s = harness(cfg(put('.csv', 't,v\n1.5,1\n2.0,2\n2.25,3\n'), { timeField: 't', timeUnit: 's' }));
    await s.src.start();
    s.clock.advance(750);
    assert.deepEqual(s.samples.map((x) => x.t - s.start), [0, 500, 750]);
    const us = harness(cfg(put('.csv', 't,v\n1700000000000000,1\n1700000000002500,2\n'), { timeField: 't', timeUnit: 'us' }));
    await us.src.start();
    us.clock.advance(2.5);
    assert.deepEqual(us.samples.map((x) => x.t - us.start), [0, 2.5]);
  });

  test('channels picks columns, so other columns may hold text', async () => {
    const h = await playFast(cfg(put('.csv', 'ts,label,x,y\n0,walk,1,2\n10,run,3,4\n'), { timeField: 'ts', channels: ['y'] }));
    assert.deepEqual(h.samples.map((s) => s.values), [{ y: 2 }, { y: 4 }]);
  });

  test('malformed rows are skipped and counted, with line numbers and reasons', async () => {
    const csv = 'time,a,b\n0,1,2\n10,1\n20,x,2\n30,1,2,3\n40,,\n50,5,6\n';
    const h = await playFast(cfg(put('.csv', csv), { timeField: 'time' }));
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 50]);
    assert.equal(h.src.stats().dropped, 4);
    assert.deepEqual(h.src.droppedRows(), [
      { line: 3, reason: 'expected 3 fields like the header, found 2' },
      { line: 4, reason: 'column "a" is not a number: "x"' },
      { line: 5, reason: 'expected 3 fields like the header, found 4' },
      { line: 6, reason: 'no values (every data cell is empty)' },
    ]);
  });

  test('with rateHz a malformed row keeps its time slot (a gap, not a shift)', async () => {
    const h = await playFast(cfg(put('.csv', 'v\n1\nbad\n3\n'), { rateHz: 10 }));
    assert.deepEqual(h.samples.map((s) => [s.t - h.start, s.values.v]), [
      [0, 1],
      [200, 3],
    ]);
  });

  test('a line over 1 MiB is dropped, the rest plays', async () => {
    const h = await playFast(cfg(put('.csv', `v\n1\n${'9'.repeat(1_100_000)}\n3\n`), { rateHz: 10 }));
    assert.deepEqual(h.samples.map((s) => s.values.v), [1, 3]);
    assert.match(h.src.droppedRows()[0].reason, /longer than 1048576 bytes/);
  });
});

describe('JSON lines replay', () => {
  const jsonl = ['{"t":0,"a":1,"b":2,"label":"x"}', 'not json', '{"t":10,"a":3}', '[1,2]', '{"t":20,"a":"x"}', '', '{"t":30,"b":5}'].join('\n');

  test('numeric fields become channels; bad lines are dropped with their line numbers', async () => {
    const h = await playFast(cfg(put('.jsonl', jsonl), { timeField: 't' }));
    assert.deepEqual(
      h.samples.map((s) => [s.t - h.start, s.values]),
      [
        [0, { a: 1, b: 2 }],
        [10, { a: 3 }],
        [30, { b: 5 }],
      ],
    );
    assert.deepEqual(h.src.droppedRows().map((d) => [d.line, d.reason]), [
      [2, 'not valid JSON'],
      [4, 'not a JSON object'],
      [5, 'no numeric fields'],
    ]);
  });

  test('channels keeps only the named fields; a non-number in one of them drops the row', async () => {
    const h = await playFast(cfg(put('.ndjson', jsonl), { timeField: 't', channels: ['a'] }));
    assert.deepEqual(h.samples.map((s) => s.values), [{ a: 1 }, { a: 3 }]);
    assert.ok(h.src.droppedRows().some((d) => d.line === 5 && /field "a" is not a number/.test(d.reason)));
    assert.ok(h.src.droppedRows().some((d) => d.line === 7 && /none of the channels/.test(d.reason)));
  });

  test('an unknown extension is sniffed: a leading { means JSON lines', async () => {
    const h = await playFast(cfg(put('.log', '{"v":1}\n{"v":2}\n'), { rateHz: 100 }));
    assert.equal(h.src.format(), 'jsonl');
    assert.deepEqual(h.samples.map((s) => s.values.v), [1, 2]);
  });

  test('a __proto__ key does not become a channel or touch prototypes', async () => {
    const h = await playFast(cfg(put('.jsonl', '{"__proto__":{"polluted":1},"v":1}\n{"__proto__":5,"v":2}\n'), { rateHz: 100 }));
    assert.deepEqual(h.samples.map((s) => Object.keys(s.values)), [['v'], ['v']]);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });
});

describe('fast timing and loop', () => {
  test('fast plays everything without the clock moving, with the same times as original timing, yielding to the event loop', async () => {
    const rows = Array.from({ length: 5000 }, (_, i) => `${i * 2},${i}`).join('\n');
    const h = harness(cfg(put('.csv', `t,v\n${rows}\n`), { timeField: 't', timing: 'fast' }));
    let turns = 0;
    let spinning = true;
    const spin = () => {
      turns++;
      if (spinning) setImmediate(spin);
    };
    setImmediate(spin);
    await h.src.start();
    await until(h.ended, 'end');
    spinning = false;
    assert.equal(h.samples.length, 5000);
    assert.equal(h.clock.monotonic(), 0);
    h.samples.forEach((s, i) => {
      assert.equal(s.t, h.start + i * 2);
      assert.equal(s.values.v, i);
    });
    assert.ok(turns >= 9, `other work ran only ${turns} times while 5000 rows played`);
  });

  test('loop on original timing: times keep increasing by one period per pass (span + mean interval)', async () => {
    const h = harness(cfg(put('.csv', 't,v\n0,1\n100,2\n200,3\n'), { timeField: 't', loop: true }));
    await h.src.start();
    h.clock.advance(900);
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
    assert.deepEqual(h.samples.map((s) => s.values.v), [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
    assert.equal(h.ended(), false);
    // Loops hand out copies: changing one sample does not change the next pass.
    h.samples[0].values.v = 99;
    h.clock.advance(300);
    assert.equal(h.samples[12].values.v, 1);
    await h.src.stop();
    assert.deepEqual(h.clock.pending(), []);
    h.clock.advance(1000);
    assert.equal(h.samples.length, 13);
    assert.equal(h.src.stats().connected, false);
  });

  test('loop with rateHz is seamless; fast + loop runs until stopped', async () => {
    const h = harness(cfg(put('.csv', 'v\n1\n2\n3\n'), { rateHz: 10, loop: true, timing: 'fast' }));
    await h.src.start();
    await until(() => h.samples.length >= 3000, '3000 samples');
    await h.src.stop();
    const n = h.samples.length;
    for (let i = 0; i < n; i++) {
      assert.equal(h.samples[i].t, h.start + i * 100);
      assert.equal(h.samples[i].values.v, (i % 3) + 1);
    }
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(h.samples.length, n, 'nothing after stop');
  });
});

describe('large files are streamed from disk', () => {
  const big = (() => {
    const rows: string[] = ['t,v'];
    for (let i = 0; i < 20_000; i++) rows.push(`${i},${i * 0.5}`);
    return `${rows.join('\n')}\n`;
  })();

  test('fast playback of a streamed CSV delivers every row in order', async () => {
    const h = await playFast(cfg(put('.csv', big), { timeField: 't' }), { residentBytes: 0 });
    assert.equal(h.samples.length, 20_000);
    h.samples.forEach((s, i) => assert.equal(s.values.v, i * 0.5));
  });

  test('original timing of a streamed CSV keeps exact times across block boundaries', async () => {
    const h = harness(cfg(put('.csv', big), { timeField: 't' }), { residentBytes: 0 });
    await h.src.start();
    for (let ms = 0; ms <= 19_999; ms += 2_500) {
      h.clock.advance(ms === 0 ? 0 : 2_500);
      await until(() => h.samples.length === ms + 1, `${ms + 1} samples at ${ms} ms`);
    }
    h.clock.advance(2_499);
    await until(h.ended, 'end');
    assert.equal(h.samples.length, 20_000);
    h.samples.forEach((s, i) => assert.equal(s.t, h.start + i));
    await h.src.stop();
  });

  test('a streamed file loops (rewinds) with times still increasing', async () => {
    const h = harness(cfg(put('.csv', big), { timeField: 't', loop: true, timing: 'fast' }), { residentBytes: 0 });
    await h.src.start();
    await until(() => h.samples.length >= 45_000, '45000 samples');
    await h.src.stop();
    for (let i = 1; i < h.samples.length; i++) assert.equal(h.samples[i].t - h.samples[i - 1].t, 1);
    assert.equal(h.samples[20_000].values.v, 0);
    assert.equal(h.samples[40_001].values.v, 0.5);
  });
});

// ------------------------------------------------------------------ WAV

describe('WAV replay', () => {
  test('16-bit stereo PCM built by hand: values normalized to [-1, 1), 8 kHz timing, unknown chunks skipped', async () => {
    const pcm = stereoSine();
    const h = await playFast(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: pcm, extras: true })), { channels: ['left', 'right'] }));
    assert.equal(h.src.format(), 'wav');
    assert.equal(h.samples.length, 800);
    h.samples.forEach((s, k) => {
      assert.equal(s.t, h.start + k * 0.125);
      assert.equal(s.values.left, pcm[2 * k] / 32768);
      assert.equal(s.values.right, pcm[2 * k + 1] / 32768);
    });
    const left = h.samples.map((s) => s.values.left);
    // 44 cycles from phase 0.2 rad: the 88th crossing (at 88 pi) falls just after the last frame.
    assert.equal(zeroCrossings(left), 87);
    assert.ok(Math.abs(Math.max(...left) - 16000 / 32768) < 1e-3);
  });

  test('full-scale samples map to -1 and 32767/32768; default channel names ch0..', async () => {
    const h = await playFast(cfg(put('.wav', wavBytes({ channels: 1, rate: 1000, samples: Int16Array.from([-32768, 32767, 0]) }))));
    assert.deepEqual(h.samples.map((s) => s.values), [{ ch0: -1 }, { ch0: 32767 / 32768 }, { ch0: 0 }]);
  });

  test('WAVE_FORMAT_EXTENSIBLE with the PCM sub-format is accepted', async () => {
    const h = await playFast(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: stereoSine(100), extensible: true }))));
    assert.equal(h.samples.length, 100);
  });

  test('original timing on FakeClock: 81 frames in the first 10 ms at 8 kHz; rateHz overrides the header', async () => {
    const file = put('.wav', wavBytes({ channels: 2, rate: 8000, samples: stereoSine() }));
    const h = harness(cfg(file));
    await h.src.start();
    h.clock.advance(10);
    assert.equal(h.samples.length, 81);
    await h.src.stop();
    const slow = harness(cfg(file, { rateHz: 100 }));
    await slow.src.start();
    slow.clock.advance(10);
    assert.equal(slow.samples.length, 2);
    await slow.src.stop();
  });

  test('a big backlog on original timing is caught up in bursts, with exact times', async () => {
    const frames = 30_000;
    const h = harness(cfg(put('.wav', wavBytes({ channels: 1, rate: 10_000, samples: new Int16Array(frames) }))));
    await h.src.start();
    h.clock.advance(2_999.9);
    assert.equal(h.samples.length, frames);
    assert.ok(h.samples.every((s, k) => s.t === h.start + k * 0.1));
    h.clock.advance(1);
    assert.equal(h.ended(), true);
  });

  test('streamed WAV (larger than residentBytes) gives the same samples; loops continue the timeline', async () => {
    const frames = 40_000; // 160 kB stereo: three 64 KiB blocks
    const pcm = new Int16Array(frames * 2);
    for (let k = 0; k < pcm.length; k++) pcm[k] = ((k * 37) % 65536) - 32768;
    const file = put('.wav', wavBytes({ channels: 2, rate: 16000, samples: pcm }));
    const resident = await playFast(cfg(file));
    const streamed = await playFast(cfg(file), { residentBytes: 0 });
    assert.equal(streamed.samples.length, frames);
    assert.deepEqual(streamed.samples, resident.samples);
    const looped = harness(cfg(file, { loop: true, timing: 'fast' }), { residentBytes: 0 });
    await looped.src.start();
    await until(() => looped.samples.length >= frames * 2 + 10, 'two passes');
    await looped.src.stop();
    assert.equal(looped.samples[frames].t, looped.start + frames / 16);
    assert.deepEqual(looped.samples[frames].values, resident.samples[0].values);
  });

  test('a WAV truncated while streaming reports a fault and stops', async () => {
    const frames = 100_000; // mono: 200 kB, four blocks
    const file = put('.wav', wavBytes({ channels: 1, rate: 8000, samples: new Int16Array(frames) }));
    const h = harness(cfg(file), { residentBytes: 0 });
    await h.src.start();
    h.clock.advance(0);
    await until(() => h.samples.length === 1, 'first sample');
    truncateSync(path.join(dir, file), 1000);
    for (let i = 0; i < 20 && h.faults.length === 0; i++) {
      h.clock.advance(1000);
      await new Promise((r) => setTimeout(r, 5));
    }
    await until(() => h.faults.length === 1, 'fault');
    assert.equal(h.faults[0].code, 'KEEL_E_REPLAY');
    assert.match(h.faults[0].message, /ended early/);
    assert.equal(h.src.stats().connected, false);
    assert.equal(h.ended(), false);
    await h.src.stop();
  });

  test('a WAV made by sox plays (optional: skipped without sox)', async (t) => {
    if (spawnSync('sox', ['--version']).error) {
      t.skip('sox is not installed (apt-get install sox); the hand-built WAV tests above cover the parser');
      return;
    }
    const out = path.join(dir, 'sox.wav');
    // -D: no dither, so samples near zero do not flip sign at random.
    execFileSync('sox', ['-D', '-n', '-r', '8000', '-c', '1', '-b', '16', '-e', 'signed-integer', out, 'synth', '0.1', 'sine', '440', 'gain', '-6']);
    const h = await playFast(cfg('sox.wav'));
    assert.equal(h.samples.length, 800);
    const v = h.samples.map((s) => s.values.ch0);
    assert.ok(Math.abs(zeroCrossings(v) - 88) <= 2, `zero crossings ${zeroCrossings(v)} (440 Hz for 0.1 s: about 88)`);
    assert.ok(Math.max(...v) > 0.4 && Math.max(...v) < 0.55, `peak ${Math.max(...v)}`);
    const float = path.join(dir, 'sox-float.wav');
    execFileSync('sox', ['-n', '-r', '8000', '-c', '1', '-b', '32', '-e', 'floating-point', float, 'synth', '0.01', 'sine', '440']);
    await rejectsReplay(cfg('sox-float.wav'), /32-bit IEEE float WAV is not supported/);
  });
});

// ------------------------------------------------------------------ bad input

describe('bad input fails start() with a clear KEEL_E_REPLAY error', () => {
  test('missing, empty, a directory, a FIFO', async () => {
    await rejectsReplay(cfg('nope.csv', { rateHz: 1 }), /nope\.csv\): file not found \(a relative path resolves against the config file's directory\)/);
    await rejectsReplay(cfg(put('.csv', ''), { rateHz: 1 }), /the file is empty/);
    mkdirSync(path.join(dir, 'adir.csv'));
    await rejectsReplay(cfg('adir.csv', { rateHz: 1 }), /is a directory/);
    const fifo = path.join(dir, 'pipe.csv');
    execFileSync('mkfifo', [fifo]);
    await rejectsReplay(cfg('pipe.csv', { rateHz: 1 }), /not a regular file/);
  });

  test('CSV structure: no header, header only, duplicate names, unknown time/channel columns, binary', async () => {
    await rejectsReplay(cfg(put('.csv', '# only\n\n# comments\n'), { rateHz: 1 }), /no header row/);
    await rejectsReplay(cfg(put('.csv', 'a,b\n'), { rateHz: 1 }), /has a header but no data rows/);
    await rejectsReplay(cfg(put('.csv', 'a,b,a\n1,2,3\n'), { rateHz: 1 }), /names column "a" twice/);
    await rejectsReplay(cfg(put('.csv', 'time,a\n1,2\n'), { timeField: 'ts' }), /timeField "ts" is not a column of the header \(columns: "time", "a"\)/);
    await rejectsReplay(cfg(put('.csv', 'time,a\n1,2\n'), { timeField: 'time', channels: ['a', 'zz'] }), /channels "zz" not in the header/);
    await rejectsReplay(cfg(put('.csv', 'time\n1\n'), { timeField: 'time' }), /no data columns besides the time/);
    await rejectsReplay(cfg(put('.csv', Buffer.from([0x00, 0x01, 0x02, 0x0a, 0x03])), { rateHz: 1 }), /NUL bytes: this is not a text/);
  });

  test('timing: neither timeField nor rateHz, or both', async () => {
    await rejectsReplay(cfg(put('.csv', 'a\n1\n')), /no timing: set timeField \(the column holding each row's time, in timeUnit\) or rateHz/);
    await rejectsReplay(cfg(put('.jsonl', '{"a":1}\n')), /no timing: set timeField \(the field/);
    await rejectsReplay(cfg(put('.csv', 't,a\n1,1\n'), { timeField: 't', rateHz: 5 }), /not both/);
  });

  test('no valid rows at all names the first bad lines (and hints at channels for text columns)', async () => {
    await rejectsReplay(cfg(put('.csv', 't,a,label\n0,1,walk\n1,2,run\n'), { timeField: 't' }), /no valid rows: all 2 data lines are malformed \(line 2: column "label" is not a number: "walk"; line 3: .*list the numeric ones in channels/);
    await rejectsReplay(cfg(put('.jsonl', 'garbage\n{]\n'), { rateHz: 10 }), /no valid rows: all 2 data lines are malformed \(line 1: not valid JSON/);
  });

  test('timestamps going backwards are an error naming the line', async () => {
    await rejectsReplay(cfg(put('.csv', 't,a\n0,1\n10,2\n5,3\n20,4\n'), { timeField: 't' }), /time goes backwards at line 4 \(5 ms after 10 ms at line 3\).*sort the file by t/);
    // Equal times are fine.
    const h = await playFast(cfg(put('.csv', 't,a\n0,1\n0,2\n5,3\n'), { timeField: 't' }));
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 0, 5]);
  });

  test('loop needs time to advance', async () => {
    await rejectsReplay(cfg(put('.csv', 't,a\n7,1\n'), { timeField: 't', loop: true }), /cannot loop/);
    await rejectsReplay(cfg(put('.jsonl', '{"t":3,"a":1}\n{"t":3,"a":2}\n'), { timeField: 't', loop: true }), /cannot loop/);
    // One row at a fixed rate loops fine.
    const h = harness(cfg(put('.csv', 'a\n1\n'), { rateHz: 10, loop: true }));
    await h.src.start();
    h.clock.advance(250);
    assert.deepEqual(h.samples.map((s) => s.t - h.start), [0, 100, 200]);
    await h.src.stop();
  });

  test('WAV: not RIFF, big-endian, 24-bit, float, compressed, truncated, no data, no fmt, channel names, time field', async () => {
    const pcm = stereoSine(10);
    await rejectsReplay(cfg(put('.wav', 'hello, world, this is no wav')), /named \.wav but is not a RIFF\/WAVE file/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: pcm, riff: 'RIFX' }))), /big-endian WAV \(RIFX\)/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: new Int16Array(30), bits: 24 }))), /24-bit PCM WAV is not supported; keel replays 16-bit PCM \(convert: sox in\.wav -b 16 out\.wav\)/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 1, rate: 8000, samples: new Int16Array(8), bits: 32, format: 3 }))), /32-bit IEEE float WAV is not supported/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 1, rate: 8000, samples: new Int16Array(8), format: 0x11 }))), /IMA ADPCM WAV is not supported/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: pcm, declaredData: 4000 }))), /truncated file: the data chunk declares 4000 bytes but the file ends after 40/);
    const whole = wavBytes({ channels: 2, rate: 8000, samples: pcm });
    await rejectsReplay(cfg(put('.wav', whole.subarray(0, 30))), /truncated|no data chunk/);
    await rejectsReplay(cfg(put('.wav', whole.subarray(0, 36))), /no data chunk/);
    const noFmt = Buffer.concat([Buffer.from('RIFF\x00\x00\x00\x00WAVE', 'latin1'), chunk('data', Buffer.alloc(8))]);
    await rejectsReplay(cfg(put('.wav', noFmt)), /no fmt chunk/);
    await rejectsReplay(cfg(put('.wav', wavBytes({ channels: 2, rate: 8000, samples: new Int16Array(0) }))), /no complete sample frame/);
    await rejectsReplay(cfg(put('.wav', whole), { channels: ['mono'] }), /names 1 channel\(s\) \(mono\) but the WAV file has 2/);
    await rejectsReplay(cfg(put('.wav', whole), { timeField: 't' }), /WAV files have no time field/);
    await rejectsReplay(cfg(put('.wav', Buffer.from('RIFF'))), /not a WAV file: only 4 bytes/);
  });

  test('WAV: a data size of 0xFFFFFFFF (written by a streaming recorder) means "to the end of the file"', async () => {
    const bytes = wavBytes({ channels: 2, rate: 8000, samples: stereoSine(50), declaredData: 0xffffffff });
    const h = await playFast(cfg(put('.dat', bytes)));
    assert.equal(h.src.format(), 'wav', 'sniffed by its RIFF magic');
    assert.equal(h.samples.length, 50);
  });

  test('WAV: an incomplete last frame is ignored and counted as dropped', async () => {
    const full = wavBytes({ channels: 2, rate: 8000, samples: stereoSine(10) });
    // Cut 2 bytes off the last frame and fix the data size to match.
    const cut = Buffer.from(full.subarray(0, full.length - 2));
    cut.writeUInt32LE(38, cut.length - 38 - 4);
    const h = await playFast(cfg(put('.wav', cut)));
    assert.equal(h.samples.length, 9);
    assert.equal(h.src.stats().dropped, 1);
    assert.match(h.src.droppedRows()[0].reason, /incomplete last frame/);
  });

  test('bad constructor arguments are TypeErrors/RangeErrors', () => {
    const clock = new FakeClock();
    assert.throws(() => new ReplaySource(cfg(''), { clock, baseDir: dir }), /TypeError: config\.file must be a non-empty path/);
    assert.throws(() => new ReplaySource(cfg('x.csv', { speed: 0 }), { clock, baseDir: dir }), /RangeError: config\.speed must be a positive number/);
    assert.throws(() => new ReplaySource(cfg('x.csv'), { clock } as unknown as ReplaySourceDeps), /deps\.baseDir/);
  });
});
