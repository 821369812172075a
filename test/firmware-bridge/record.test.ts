/**
 * `keel record`: a live bridge link (simulated MCU behind a real socat pty) and a live serial
 * CSV source from a config are captured to files, and the replay source plays them back
 * with the same values and timing. Plus the file writer's rules and the usage errors.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeClock, SystemClock } from '../../runtime/clock.ts';
import { KeelError } from '../../runtime/errors.ts';
import { PtyPair, SystemSerialOpener, type SerialConnection } from '../../drivers/serial/index.ts';
import { ReplaySource } from '../../drivers/replay.ts';
import type { Sample } from '../../drivers/types.ts';
import { cmdRecord, SampleFile } from '../../firmware-bridge/record.ts';
import { SimMcu } from '../../firmware-bridge/sim-mcu.ts';
import { requireTool } from '../helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-bridge-rec-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s) } };
}

async function replayAll(file: string): Promise<Sample[]> {
  const clock = new FakeClock();
  const src = new ReplaySource(
    { name: 'rec', type: 'replay', file, timing: 'fast', speed: 1, loop: false, timeField: 't_ms', timeUnit: 'ms' },
    { clock, baseDir: dir },
  );
  const got: Sample[] = [];
  src.on('sample', (s) => got.push(s));
  const ended = new Promise<void>((r) => src.once('end', () => r()));
  await src.start();
  await ended;
  await src.stop();
  return got;
}

test('record a bridge link from its device path, then replay it with its timing', async (t) => {
  if (!requireTool(t, 'socat', 'apt-get install socat')) return;
  const clock = new SystemClock();
  const pair = await PtyPair.start({ dir, names: ['mcu-a', 'mcu-b'] });
  const mcu = new SimMcu({ clock, name: 'rec-mcu' });
  // Channel 0 counts milliseconds of MCU time; channel 6 (digital) toggles every 100 ms.
  mcu.setInput(0, (tUs) => Math.floor(tUs / 1000) % 1000);
  mcu.setInput(6, (tUs) => Math.floor(tUs / 100_000) % 2);
  let port: SerialConnection | null = null;
  try {
    port = await new SystemSerialOpener().open({ path: pair.a, baudRate: 115200 });
    port.on('error', () => undefined);
    mcu.attach(port);
    const file = path.join(dir, 'mcu.csv');
    const o = io();
    const code = await cmdRecord([pair.b, '--out', file, '--duration', '1', '--channels', '0,6', '--rate', '200', '--json'], o.io, { clock });
    assert.equal(code, 0, o.err.join('\n'));
    const summary = JSON.parse(o.out[0]!);
    assert.deepEqual(summary.channels, ['ch0', 'ch6']);
    assert.ok(summary.samples > 120, `samples: ${summary.samples}`);
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /^# keel-record v1\n# source: MCU keel-sim-mcu\/1\.0\.0 on .*mcu-b \(channels 0, 6 at 200 Hz\)\n# started: /);
    assert.match(text, /\nt_ms,ch0,ch6\n0\.000,/);

    const rows = await replayAll(file);
    assert.equal(rows.length, summary.samples);
    // The joined samples: ch0 at 200 Hz (5 ms apart), ch6 held; both present once ch6 started.
    const full = rows.filter((r) => r.values.ch0 !== undefined && r.values.ch6 !== undefined);
    assert.ok(full.length > rows.length - 5);
    const t0 = rows[0]!.t;
    for (let i = 1; i < full.length; i++) {
      const dt = full[i]!.t - full[i - 1]!.t;
      assert.ok(Math.abs(dt - 5) < 1.5, `row spacing ${dt} ms`);
      // ch0 is the MCU time in ms: it advances by the same 5 ms as the recorded time.
      const dv = (full[i]!.values.ch0! - full[i - 1]!.values.ch0! + 1000) % 1000;
      assert.equal(dv, 5);
    }
    assert.ok(full.some((r) => r.values.ch6 === 1) && full.some((r) => r.values.ch6 === 0));
    assert.ok(rows.at(-1)!.t - t0 > 700, 'the recording spans the duration');
  } finally {
    mcu.stop();
    await port?.close();
    await pair.stop();
  }
});

test('record a serial CSV source named in a config to JSON lines, then replay it', async (t) => {
  if (!requireTool(t, 'socat', 'apt-get install socat')) return;
  const pair = await PtyPair.start({ dir, names: ['csv-a', 'csv-b'] });
  const cfg = path.join(dir, 'serial.yaml');
  fs.writeFileSync(
    cfg,
    `
gpio: {backend: sim}
sources:
  - {name: imu, type: serial, path: ${pair.b}, baudRate: 115200, format: {type: csv, columns: [ax, ay]}}
  - {name: gps, type: serial, path: ${path.join(dir, 'no-such-tty')}, format: {type: csv, columns: [lat, lon]}}
pipelines:
  - name: p
    source: imu
    window: {size: 10, channels: [ax, ay]}
    model: {path: m.onnx, sha256: '${'0'.repeat(64)}', input: x, inputs: {x: {shape: [1, 20]}}}
`,
  );
  const opener = new SystemSerialOpener();
  let writer: SerialConnection | null = null;
  const timer = setInterval(() => {
    k++;
    writer?.write(`${k},${-k}\n`);
  }, 10);
  let k = 0;
  try {
    writer = await opener.open({ path: pair.a, baudRate: 115200 });
    writer.on('error', () => undefined);
    const file = path.join(dir, 'imu.jsonl');
    const o = io();
    // Two sources: without --source it must ask which.
    await assert.rejects(cmdRecord([cfg, '--out', file, '--duration', '0.2'], o.io), (e: KeelError) => e.code === 'KEEL_E_USAGE' && /several live sources \(imu, gps\); choose one with --source/.test(e.message));
    await assert.rejects(cmdRecord([cfg, '--out', file, '--source', 'nope'], o.io), (e: KeelError) => e.code === 'KEEL_E_USAGE' && /no source named "nope"/.test(e.message));
    const code = await cmdRecord([cfg, '--out', file, '--duration', '0.8', '--source', 'imu'], o.io);
    assert.equal(code, 0, o.err.join('\n'));
    assert.match(o.out.join('\n'), /samples of ax, ay/);
    assert.match(o.out.join('\n'), /timeField: t_ms/);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    assert.deepEqual(Object.keys(JSON.parse(lines[0]!)), ['t_ms', 'ax', 'ay']);
    const rows = await replayAll(file);
    assert.equal(rows.length, lines.length);
    assert.ok(rows.length > 30);
    for (const r of rows) assert.equal(r.values.ay, -r.values.ax!);
    for (let i = 1; i < rows.length; i++) assert.ok(rows[i]!.t >= rows[i - 1]!.t);
  } finally {
    clearInterval(timer);
    await writer?.close();
    await pair.stop();
  }
});

test('SampleFile: header, empty cells, clamped times, formats, no silent overwrite', () => {
  const csv = path.join(dir, 'w.csv');
  const f = new SampleFile(csv, { channels: ['a', 'b'], meta: ['source: test\ninjected'] });
  f.write({ t: 1000, values: { a: 1, b: 2 } });
  f.write({ t: 1002.5, values: { a: 3 } });
  f.write({ t: 1001, values: { b: 4, c: 9 } }); // earlier than the last: clamped; c unknown
  f.close();
  f.close();
  assert.equal(fs.readFileSync(csv, 'utf8'), '# keel-record v1\n# source: test injected\nt_ms,a,b\n0.000,1,2\n2.500,3,\n2.500,,4\n');
  assert.deepEqual(f.stats(), { rows: 3, clamped: 1, unknownValues: 1, bytes: fs.statSync(csv).size });
  assert.throws(() => new SampleFile(csv), (e: KeelError) => e.code === 'KEEL_E_USAGE' && /--force/.test(e.message));
  new SampleFile(csv, { overwrite: true }).close();
  assert.equal(fs.readFileSync(csv, 'utf8'), '# keel-record v1\nt_ms\n');
  assert.throws(() => new SampleFile(path.join(dir, 'x.txt')), RangeError);
  const jl = path.join(dir, 'w.jsonl');
  const g = new SampleFile(jl);
  g.write({ t: 5, values: { a: 1.5, bad: NaN } });
  g.write({ t: 6, values: {} });
  g.close();
  assert.equal(fs.readFileSync(jl, 'utf8'), '{"t_ms":0.000,"a":1.5}\n{"t_ms":1.000}\n');
});

test('record: usage errors say what to do', async () => {
  const o = io();
  const usage = (e: unknown) => e instanceof KeelError && e.code === 'KEEL_E_USAGE';
  await assert.rejects(cmdRecord(['/dev/ttyACM0'], o.io), (e) => usage(e) && /--out/.test((e as Error).message));
  await assert.rejects(cmdRecord([], o.io), usage);
  await assert.rejects(cmdRecord(['/dev/x', '--out', 'a.csv', '--duration', '-1'], o.io), (e) => usage(e) && /--duration/.test((e as Error).message));
  await assert.rejects(cmdRecord(['/dev/x', '--out', 'a.csv', '--channels', '1,x'], o.io), (e) => usage(e) && /--channels/.test((e as Error).message));
  await assert.rejects(cmdRecord(['/dev/x', '--out', 'a.csv', '--source', 's'], o.io), (e) => usage(e) && /--source applies to a config/.test((e as Error).message));
  await assert.rejects(cmdRecord(['/dev/x', '--bogus'], o.io), usage);
  assert.equal(await cmdRecord(['--help'], o.io), 0);
  assert.match(o.out.join('\n'), /Usage: keel record/);
});

test('record: a device that never answers fails after --wait with exit code 1', async () => {
  const o = io();
  const clock = new FakeClock();
  const opener = { open: async () => { throw Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' }); } };
  const p = cmdRecord([path.join(dir, 'nothing'), '--out', path.join(dir, 'n.csv'), '--wait', '1'], o.io, { clock, opener });
  await new Promise((r) => setImmediate(r));
  await clock.advanceAsync(1100, 50);
  assert.equal(await p, 1);
  assert.match(o.err.join('\n'), /no answer from bridge firmware .* within 1 s/);
  assert.ok(!fs.existsSync(path.join(dir, 'n.csv')));
});
