import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeClock, SystemClock, type Clock } from '../../runtime/clock.ts';
import { ConfigError, DriverError, KeelError } from '../../runtime/errors.ts';
import type { Sample } from '../../drivers/types.ts';
import {
  MockSerialOpener,
  PtyPair,
  SerialSource,
  SystemSerialOpener,
  openError,
  socatPath,
  type SerialConnection,
  type SerialLinkOptions,
  type SerialOpener,
  type SerialSourceOptions,
} from '../../drivers/serial/index.ts';

// ---------------------------------------------------------------- helpers

/** Lets pending I/O callbacks, promise jobs and nextTicks run. */
async function settle(rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}

/** Polls `cond` on real time (for real ports); fails after `ms`. */
async function waitFor(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Records when (clock.monotonic()) each open was attempted. */
class RecordingOpener implements SerialOpener {
  readonly times: number[] = [];
  constructor(
    private readonly inner: SerialOpener,
    private readonly clock: Clock,
  ) {}
  open(opts: SerialLinkOptions): Promise<SerialConnection> {
    this.times.push(this.clock.monotonic());
    return this.inner.open(opts);
  }
}

let mockSeq = 0;
/** A mock port path used by one test only (MockBinding's table is process-wide). */
const mockPath = () => `/dev/mock-src-${process.pid}-${++mockSeq}`;

function csvSource(p: string, extra: Partial<SerialSourceOptions> = {}): SerialSourceOptions {
  return { name: 'imu', type: 'serial', path: p, baudRate: 115200, format: { type: 'csv', columns: ['a', 'b'], delimiter: ',' }, ...extra } as SerialSourceOptions;
}

/** Collects a source's events. */
function watch(src: SerialSource) {
  const seen = { samples: [] as Sample[], faults: [] as KeelError[], recovered: 0 };
  src.on('sample', (s) => seen.samples.push(s));
  src.on('fault', (e) => seen.faults.push(e));
  src.on('recovered', () => seen.recovered++);
  return seen;
}

/** Skips (or, in CI, fails) when socat is missing. Returns false when the test must stop. */
function needSocat(t: TestContext): boolean {
  if (socatPath() !== null) return true;
  if (process.env.CI === 'true') throw new Error('socat is required in CI: apt-get install socat');
  t.skip('socat is not installed: apt-get install socat');
  return false;
}

// ---------------------------------------------------------------- simulated ports, fake clock

test('a port absent at start: start() resolves, faults, then connects by itself when the device appears', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const p = mockPath();
  const src = new SerialSource(csvSource(p), { opener, clock, random: () => 0 });
  const seen = watch(src);
  await src.start();
  assert.equal(seen.faults.length, 1);
  const f = seen.faults[0];
  assert.ok(f instanceof DriverError);
  assert.equal(f.code, 'KEEL_E_SERIAL_OPEN');
  assert.equal(f.retryable, true);
  assert.equal(f.message, `serial port ${p} does not exist; check the cable / the path, or ls /dev/serial/by-id`);
  assert.deepEqual(src.stats(), { samples: 0, dropped: 0, reconnects: 0, connected: false });
  assert.deepEqual(clock.pending(), ['serial:imu:reopen']);

  opener.plug(p);
  await clock.advanceAsync(250);
  assert.equal(src.stats().connected, true);
  assert.equal(src.stats().reconnects, 1);
  assert.equal(seen.recovered, 0, 'recovered waits for data');

  opener.emitData(p, '1,2\n3,');
  await settle();
  opener.emitData(p, '4\n');
  await settle();
  assert.equal(seen.recovered, 1);
  assert.deepEqual(
    seen.samples.map((s) => s.values),
    [{ a: 1, b: 2 }, { a: 3, b: 4 }],
  );
  assert.equal(seen.samples[0].t, clock.now(), 'samples are stamped with the injected clock');
  assert.equal(src.stats().samples, 2);
  await src.stop();
});

test('reopen delays grow by the factor and are capped at maxMs; repeated identical faults are reported once', async () => {
  const clock = new FakeClock();
  const rec = new RecordingOpener(new MockSerialOpener(), clock);
  const src = new SerialSource(csvSource(mockPath(), { reconnect: { initialMs: 100, maxMs: 1000, factor: 2 } }), { opener: rec, clock, random: () => 0 });
  const seen = watch(src);
  await src.start();
  await clock.advanceAsync(6000);
  const gaps = rec.times.slice(1).map((t, i) => t - rec.times[i]);
  assert.deepEqual(gaps.slice(0, 8), [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
  assert.equal(seen.faults.length, 1, 'an absent device is not reported on every retry');
  await src.stop();
  assert.deepEqual(clock.pending(), [], 'stop cancels the reopen timer');
  const opens = rec.times.length;
  await clock.advanceAsync(5000, 50);
  assert.equal(rec.times.length, opens, 'no open after stop');
});

test('jitter shortens delays by at most 10 % and never exceeds the cap', async () => {
  const clock = new FakeClock();
  const rec = new RecordingOpener(new MockSerialOpener(), clock);
  let r = 0;
  const random = () => (r = (r + 0.37) % 1); // spread over [0, 1)
  const src = new SerialSource(csvSource(mockPath(), { reconnect: { initialMs: 100, maxMs: 400, factor: 2 } }), { opener: rec, clock, random });
  await src.start();
  await clock.advanceAsync(3000);
  const gaps = rec.times.slice(1).map((t, i) => t - rec.times[i]);
  const bases = [100, 200, 400, 400, 400, 400];
  bases.forEach((b, i) => {
    assert.ok(gaps[i] <= b + 1 && gaps[i] >= b * 0.9 - 1, `gap ${i} = ${gaps[i]}, base ${b}`);
  });
  assert.ok(new Set(gaps.slice(2, 6).map(Math.round)).size > 1, 'capped delays still vary');
  await src.stop();
});

test('unplug while running: fault, reopen with a fresh backoff, the cut line is dropped, samples resume', async () => {
  const clock = new FakeClock();
  const mock = new MockSerialOpener();
  const rec = new RecordingOpener(mock, clock);
  const p = mockPath();
  mock.plug(p);
  const src = new SerialSource(csvSource(p, { reconnect: { initialMs: 50, maxMs: 800, factor: 2 } }), { opener: rec, clock, random: () => 0 });
  const seen = watch(src);
  await src.start();
  assert.equal(seen.faults.length, 0);
  assert.equal(src.stats().connected, true);
  mock.emitData(p, '1,2\n5,');
  await settle();
  mock.unplug(p);
  await settle();
  assert.equal(src.stats().connected, false);
  assert.equal(seen.faults.length, 1);
  assert.equal(seen.faults[0].code, 'KEEL_E_SERIAL_IO');
  assert.equal(seen.faults[0].retryable, true);
  assert.match(seen.faults[0].message, /disconnected/);

  await clock.advanceAsync(50 + 100 + 200);
  assert.equal(rec.times.length, 4, 'first open, then reopen attempts at +50, +100, +200');
  mock.plug(p);
  await clock.advanceAsync(400);
  assert.equal(src.stats().connected, true);
  assert.equal(src.stats().reconnects, 1);
  mock.emitData(p, '6\n7,8\n');
  await settle();
  // "5," before the unplug and "6" after it are not one line.
  assert.deepEqual(
    seen.samples.map((s) => s.values),
    [{ a: 1, b: 2 }, { a: 7, b: 8 }],
  );
  assert.equal(src.stats().dropped, 2);
  assert.equal(seen.recovered, 1);

  // The connection proved healthy, so the next outage starts again at initialMs.
  const before = rec.times.length;
  mock.unplug(p);
  await settle();
  await clock.advanceAsync(50);
  assert.equal(rec.times.length, before + 1);
  await src.stop();
});

test('invalid config rejects start() with every problem at once, and nothing is opened', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const src = new SerialSource(
    {
      name: 'bad',
      type: 'serial',
      path: '',
      baudRate: 12,
      parity: 'mark',
      maxLineBytes: 3,
      format: { type: 'csv', columns: ['a', 'a'], delimiter: ',' },
      reconnect: { initialMs: 500, maxMs: 100, factor: 2 },
    } as SerialSourceOptions,
    { opener, clock },
  );
  await assert.rejects(src.start(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.deepEqual(err.issues.map((i) => i.path).sort(), ['baudRate', 'format.columns[1]', 'maxLineBytes', 'parity', 'path', 'reconnect.maxMs']);
    return true;
  });
  assert.equal(opener.opens, 0);
  assert.deepEqual(clock.pending(), []);
  assert.throws(() => new SerialSource(null as never, { opener, clock }), TypeError);
  assert.throws(() => new SerialSource(csvSource('/x'), {} as never), TypeError);
});

test('a throwing sample listener becomes a fault; the source and the process keep going', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const p = mockPath();
  opener.plug(p);
  const src = new SerialSource(csvSource(p), { opener, clock });
  const faults: KeelError[] = [];
  let calls = 0;
  src.on('fault', (e) => faults.push(e));
  src.on('sample', () => {
    calls++;
    if (calls === 1) throw new Error('listener bug');
  });
  await src.start();
  opener.emitData(p, '1,2\n3,4\n');
  await settle();
  assert.equal(calls, 2);
  assert.equal(faults.length, 1);
  assert.match(faults[0].message, /listener bug/);
  assert.equal(src.stats().connected, true);
  await src.stop();
  await src.stop(); // idempotent
});

test('busy and permission-denied ports give clear faults; permission is retried at maxMs only', async () => {
  const clock = new FakeClock();
  const mock = new MockSerialOpener();
  const p = mockPath();
  mock.plug(p);
  const first = new SerialSource(csvSource(p), { opener: mock, clock });
  await first.start();
  const second = new SerialSource(csvSource(p), { opener: mock, clock });
  const seen = watch(second);
  await second.start();
  assert.equal(seen.faults[0].code, 'KEEL_E_SERIAL_OPEN');
  assert.equal(seen.faults[0].retryable, true);
  assert.match(seen.faults[0].message, new RegExp(`serial port ${p} is busy: another process holds it`));
  await first.stop();
  await clock.advanceAsync(300);
  assert.equal(second.stats().connected, true, 'takes the port once the other holder lets go');
  await second.stop();

  const q = mockPath();
  mock.plug(q, { denied: true });
  const rec = new RecordingOpener(mock, clock);
  const third = new SerialSource(csvSource(q, { reconnect: { initialMs: 100, maxMs: 2000, factor: 2 } }), { opener: rec, clock, random: () => 0 });
  const seen3 = watch(third);
  await third.start();
  assert.equal(seen3.faults[0].retryable, false);
  assert.match(seen3.faults[0].message, /permission denied opening serial port .*dialout group/);
  await clock.advanceAsync(4000, 5);
  assert.deepEqual(rec.times.slice(1).map((t, i) => t - rec.times[i]), [2000, 2000]);
  await third.stop();
});

test('openError maps the native binding messages to clear, typed errors', () => {
  const cases: [string, RegExp, boolean][] = [
    ['Error: No such file or directory, cannot open /dev/ttyUSB9', /^serial port \/dev\/ttyUSB9 does not exist; check the cable \/ the path, or ls \/dev\/serial\/by-id$/, true],
    ['Error: Permission denied, cannot open /dev/ttyUSB9', /dialout group/, false],
    ['Error Resource temporarily unavailable Cannot lock port', /is busy/, true],
    ['Error: Device or resource busy, cannot open /dev/ttyUSB9', /is busy/, true],
    ['Error: Inappropriate ioctl for device setting custom baud rate of 9600', /is not a serial port/, false],
    ['Error: No such device or address, cannot open /dev/ttyUSB9', /no device behind it/, true],
  ];
  for (const [msg, re, retryable] of cases) {
    const e = openError('/dev/ttyUSB9', new Error(msg));
    assert.ok(e instanceof DriverError);
    assert.equal(e.code, 'KEEL_E_SERIAL_OPEN');
    assert.match(e.message, re, msg);
    assert.equal(e.retryable, retryable, msg);
    assert.equal((e.cause as Error).message, msg);
  }
});

// ---------------------------------------------------------------- real ports

test('real opener: a nonexistent path gives the clear error; a non-tty is refused', async () => {
  const opener = new SystemSerialOpener();
  const missing = path.join(os.tmpdir(), `keel-no-such-port-${process.pid}`);
  await assert.rejects(opener.open({ path: missing, baudRate: 9600 }), (err: unknown) => {
    assert.ok(err instanceof DriverError);
    assert.equal(err.code, 'KEEL_E_SERIAL_OPEN');
    assert.equal(err.retryable, true);
    assert.equal(err.message, `serial port ${missing} does not exist; check the cable / the path, or ls /dev/serial/by-id`);
    return true;
  });
  await assert.rejects(opener.open({ path: '/dev/null', baudRate: 9600 }), /\/dev\/null is not a serial port/);
  await assert.rejects(opener.open({ path: '/dev/null', baudRate: 3 }), RangeError);

  const src = new SerialSource(csvSource(missing), { opener, clock: new SystemClock() });
  const seen = watch(src);
  await src.start(); // does not reject: the device may appear later
  assert.equal(seen.faults[0].message, `serial port ${missing} does not exist; check the cable / the path, or ls /dev/serial/by-id`);
  await src.stop();
});

test('real pseudo-terminals: samples flow, socat dies (fault, process survives), socat returns (source reconnects by itself)', async (t) => {
  if (!needSocat(t)) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-serial-src-'));
  const opener = new SystemSerialOpener();
  let pair: PtyPair | null = null;
  let writer: SerialConnection | null = null;
  const src = new SerialSource(csvSource(path.join(dir, 'b'), { reconnect: { initialMs: 20, maxMs: 100, factor: 2 } }), { opener, clock: new SystemClock() });
  try {
    pair = await PtyPair.start({ dir });
    const seen = watch(src);
    await src.start();
    assert.equal(src.stats().connected, true);
    assert.equal(seen.faults.length, 0);

    // A second open of the same port is refused: serialport locks it.
    await assert.rejects(opener.open({ path: pair.b, baudRate: 115200 }), /is busy/);

    writer = await opener.open({ path: pair.a, baudRate: 115200 });
    writer.on('error', () => {}); // it dies with socat below
    writer.write('1,2\r\n3,4\ngarbage\n');
    await waitFor('two samples', () => seen.samples.length === 2);
    assert.deepEqual(
      seen.samples.map((s) => s.values),
      [{ a: 1, b: 2 }, { a: 3, b: 4 }],
    );
    await waitFor('the garbage line counted', () => src.stats().dropped === 1);

    await pair.stop();
    await waitFor('a fault after socat died', () => seen.faults.length >= 1);
    assert.equal(seen.faults[0].code, 'KEEL_E_SERIAL_IO');
    assert.equal(seen.faults[0].retryable, true);
    assert.equal(src.stats().connected, false);
    await writer.close();
    // Retries run against a vanished path for a while; the process must stay healthy.
    await new Promise((r) => setTimeout(r, 150));
    assert.ok(seen.faults.some((f) => f.code === 'KEEL_E_SERIAL_OPEN' && /does not exist/.test(f.message)));

    await pair.restart();
    await waitFor('the source to reconnect', () => src.stats().connected);
    assert.equal(src.stats().reconnects, 1);
    writer = await opener.open({ path: pair.a, baudRate: 115200 });
    writer.on('error', () => {});
    writer.write('5,6\n');
    await waitFor('a sample after reconnecting', () => seen.samples.length === 3);
    assert.deepEqual(seen.samples[2].values, { a: 5, b: 6 });
    assert.equal(seen.recovered, 1);
  } finally {
    await src.stop();
    await writer?.close();
    await pair?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('real pseudo-terminal: binary records with noise between them', async (t) => {
  if (!needSocat(t)) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-serial-bin-'));
  const opener = new SystemSerialOpener();
  const pair = await PtyPair.start({ dir });
  const src = new SerialSource(
    {
      name: 'enc',
      type: 'serial',
      path: pair.b,
      baudRate: 921600,
      format: { type: 'binary', recordSize: 6, sync: 'AA55', fields: [{ name: 'pos', type: 'int32le', offset: 2, scale: 1 }] },
    } as SerialSourceOptions,
    { opener, clock: new SystemClock() },
  );
  let writer: SerialConnection | null = null;
  try {
    const seen = watch(src);
    await src.start();
    writer = await opener.open({ path: pair.a, baudRate: 921600 });
    const recs = [-1, 0, 123456].map((v) => {
      const b = Buffer.from([0xaa, 0x55, 0, 0, 0, 0]);
      b.writeInt32LE(v, 2);
      return b;
    });
    writer.write(Buffer.concat([Buffer.from([1, 2, 3]), recs[0], Buffer.from([0xaa]), recs[1], recs[2]]));
    await waitFor('three records', () => seen.samples.length === 3);
    assert.deepEqual(seen.samples.map((s) => s.values.pos), [-1, 0, 123456]);
    assert.equal(src.stats().dropped, 2);
  } finally {
    await src.stop();
    await writer?.close();
    await pair.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
