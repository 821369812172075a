import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { FakeClock, SystemClock } from '../../runtime/clock.ts';
import { ConfigError, DriverError } from '../../runtime/errors.ts';
import {
  MAX_WRITE_BACKLOG,
  MockSerialOpener,
  OutputTemplate,
  PtyPair,
  SerialActuator,
  SupervisedPort,
  SystemSerialOpener,
  decodeHex,
  socatPath,
  type SerialActuatorOptions,
  type SerialConnection,
  type SerialOpener,
} from '../../drivers/serial/index.ts';

async function settle(rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}

async function waitFor(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function needSocat(t: TestContext): boolean {
  if (socatPath() !== null) return true;
  if (process.env.CI === 'true') throw new Error('socat is required in CI: apt-get install socat');
  t.skip('socat is not installed: apt-get install socat');
  return false;
}

let mockSeq = 0;
const mockPath = () => `/dev/mock-act-${process.pid}-${++mockSeq}`;

function actuator(p: string, extra: Partial<SerialActuatorOptions> = {}): SerialActuatorOptions {
  return { name: 'led', type: 'serial', path: p, baudRate: 115200, ...extra } as SerialActuatorOptions;
}

const now = () => 1_700_000_000_123;

test('templates: placeholders, context keys, number formats, literal braces', () => {
  const ctx = { decision: 'stop', pipeline: 'vision', score: 0.98765, n: 255, neg: -3.14159, flag: true, out: { label: 'cat', p: 0.5 }, list: [1, 2] };
  const cases: [string, string][] = [
    ['{value}\n', '42\n'],
    ['{decision}@{pipeline} {score:.2f}', 'stop@vision 0.99'],
    ['{time}', '1700000000123'],
    ['{n:02x}{n:X}{n:5d}|{n:d}', 'ffFF  255|255'],
    ['{neg:.1f} {neg:6.2f} {neg:07.2f} {neg:d}', '-3.1  -3.14 -003.14 -3'],
    ['{score:08.3f}', '0000.988'],
    ['{{"v":{value},"s":{score:.1f}}}', '{"v":42,"s":1.0}'],
    ['{out.label}={out.p:.1f} {flag} {flag:d} {list}', 'cat=0.5 true 1 [1,2]'],
    ['{tiny:.2f}', '0.00'],
  ];
  for (const [src, want] of cases) {
    const r = new OutputTemplate(src).render(42, { ...ctx, tiny: -0.001 }, now);
    assert.equal(r.text, want, src);
    assert.deepEqual(r.warnings, [], src);
  }
  assert.equal(new OutputTemplate('{time}').render(1, { time: 5 }, now).text, '5', 'context time wins');
});

test('templates: unknown names and non-numbers render "?" with a warning; control characters cannot be injected', () => {
  const t = new OutputTemplate('A {missing} B {label:.2f} C {label}\n');
  const r = t.render(1, { label: 'evil\r\nREBOOT' }, now);
  assert.equal(r.text, 'A ? B ? C evil??REBOOT\n');
  assert.equal(r.warnings.length, 3);
  assert.match(r.warnings[0], /unknown placeholder \{missing\}/);
  assert.match(r.warnings[1], /not a finite number/);
  assert.match(r.warnings[2], /control characters/);
  assert.equal(new OutputTemplate('{v:.1f}').render(1, { v: NaN }, now).text, '?');
});

test('templates: malformed ones are ConfigErrors naming the problem', () => {
  for (const bad of ['{value', 'value}', '{}', '{1x}', '{v:.2d}', '{v:z}', '{v:.99f}', '{a b}']) {
    assert.throws(() => new OutputTemplate(bad), ConfigError, bad);
  }
  assert.throws(() => new OutputTemplate(5 as never), TypeError);
});

test('decodeHex accepts hex byte pairs with blanks and refuses anything else', () => {
  assert.deepEqual(decodeHex('A5 5a\t0D'), Buffer.from([0xa5, 0x5a, 0x0d]));
  for (const bad of ['', 'A', 'A5 5', 'GG', '0x10', 'A5?']) assert.equal(decodeHex(bad), null, bad);
});

test('write renders the template and writes it; current(), safe() and stats follow', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const p = mockPath();
  opener.plug(p);
  const act = new SerialActuator(actuator(p, { template: 'SET {value} {decision} {score:.2f}\n', safe: 'SAFE {value}\n' }), { opener, clock });
  assert.equal(act.current(), undefined);
  await act.open();
  await act.write(7, { decision: 'go', score: 0.5 });
  assert.equal(opener.lastWrite(p)?.toString(), 'SET 7 go 0.50\n');
  assert.equal(act.current(), 7);
  await act.write('on', { decision: 'x' });
  assert.equal(opener.lastWrite(p)?.toString(), 'SET on x ?\n');
  assert.equal(act.stats().warnings, 1);
  assert.match(act.stats().lastWarning ?? '', /\{score:\.2f\}/);
  await act.safe();
  await act.safe();
  assert.equal(opener.written(p)?.toString(), 'SET 7 go 0.50\nSET on x ?\nSAFE safe\nSAFE safe\n');
  assert.equal(act.current(), 'safe');
  assert.equal(act.stats().writes, 4);
  await assert.rejects(act.write(undefined as never), TypeError);
  await act.close();
  await act.close();
  await assert.rejects(act.write(1), (e: unknown) => e instanceof DriverError && e.code === 'KEEL_E_ACTUATOR');

  // Without a configured safe string, safe() writes nothing.
  const q = mockPath();
  opener.plug(q);
  const plain = new SerialActuator(actuator(q), { opener, clock });
  await plain.open();
  await plain.safe();
  assert.equal(opener.written(q)?.length, 0);
  await plain.write(1.5);
  assert.equal(opener.written(q)?.toString(), '1.5\n', 'default template is {value}\\n');
  await plain.close();
});

test('hex encoding sends bytes; bad hex is a clear error and nothing is written', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const p = mockPath();
  opener.plug(p);
  const act = new SerialActuator(actuator(p, { template: 'A5 {value:02x} {speed:04X}', encoding: 'hex', safe: 'A5 00 0000' }), { opener, clock });
  await act.open();
  await act.write(10, { speed: 4660 });
  assert.deepEqual(opener.lastWrite(p), Buffer.from([0xa5, 0x0a, 0x12, 0x34]));
  await assert.rejects(act.write(1, {}), (err: unknown) => {
    assert.ok(err instanceof DriverError);
    assert.equal(err.code, 'KEEL_E_ACTUATOR');
    assert.equal(err.retryable, false);
    assert.match(err.message, /"A5 01 \?" is not hex bytes .*nothing was written/);
    return true;
  });
  assert.equal(opener.written(p)?.length, 4, 'nothing written by the failed action');
  assert.equal(act.current(), 10);
  assert.equal(act.stats().failures, 1);
  await act.safe();
  assert.deepEqual(opener.lastWrite(p), Buffer.from([0xa5, 0, 0, 0]));
  await act.close();
});

test('invalid config rejects open() with every problem, and nothing is opened', async () => {
  const opener = new MockSerialOpener();
  const act = new SerialActuator(actuator('/dev/x', { template: '{value', safe: '{v:q}', encoding: 'base64' as never, baudRate: 0 }), { opener, clock: new FakeClock() });
  await assert.rejects(act.open(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.deepEqual(err.issues.map((i) => i.path).sort(), ['baudRate', 'encoding', 'safe', 'template']);
    return true;
  });
  assert.equal(opener.opens, 0);
});

test('while the port is down writes reject at once as retryable; the actuator reopens by itself', async () => {
  const clock = new FakeClock();
  const opener = new MockSerialOpener();
  const p = mockPath();
  const act = new SerialActuator(actuator(p, { reconnect: { initialMs: 100, maxMs: 1000, factor: 2 } }), { opener, clock, random: () => 0 });
  const events: string[] = [];
  act.on('fault', (e) => events.push(`fault ${e.code}`));
  act.on('recovered', () => events.push('recovered'));
  await act.open(); // the device is not there yet: open still succeeds
  const down = (e: unknown) => e instanceof DriverError && e.code === 'KEEL_E_SERIAL_IO' && e.retryable === true;
  await assert.rejects(act.write(1), down);
  await assert.rejects(act.safe().then(() => act.write(2)), down);
  opener.plug(p);
  await clock.advanceAsync(100);
  assert.equal(act.stats().connected, true);
  await act.write(3);
  assert.equal(opener.lastWrite(p)?.toString(), '3\n');
  opener.unplug(p);
  await settle();
  await assert.rejects(act.write(4), down);
  opener.plug(p);
  await clock.advanceAsync(100);
  await act.write(5);
  assert.equal(opener.lastWrite(p)?.toString(), '5\n');
  assert.deepEqual(events, ['fault KEEL_E_SERIAL_OPEN', 'recovered', 'fault KEEL_E_SERIAL_IO', 'recovered']);
  assert.equal(act.stats().reconnects, 2);
  assert.equal(act.stats().failures, 3);
  await act.close();
  assert.deepEqual(clock.pending(), []);
});

test('a device that stops reading makes writes fail fast instead of queueing without bound', async () => {
  // A connection whose writes never complete (flow control held off forever).
  const stalled: SerialOpener = {
    async open(opts) {
      const d = new Duplex({ read() {}, write() {} });
      return Object.assign(d, { path: opts.path, close: async () => void d.destroy() }) as unknown as SerialConnection;
    },
  };
  const port = new SupervisedPort({ name: 'stall', link: { path: '/dev/stall', baudRate: 9600 }, opener: stalled, clock: new FakeClock() });
  await port.start();
  const chunk = Buffer.alloc(16 * 1024);
  const pending: Promise<void>[] = [];
  for (let i = 0; i < MAX_WRITE_BACKLOG / chunk.length; i++) pending.push(port.write(chunk));
  await assert.rejects(port.write(Buffer.alloc(1)), (e: unknown) => e instanceof DriverError && e.retryable && /not keeping up/.test(e.message));
  await port.stop();
  // The stuck writes are failed by the close, not left hanging forever.
  const results = await Promise.allSettled(pending);
  assert.ok(results.every((r) => r.status === 'rejected'));
});

test('real pseudo-terminals: the other end reads the rendered template; socat restart is survived', async (t) => {
  if (!needSocat(t)) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-serial-act-'));
  const opener = new SystemSerialOpener();
  const pair = await PtyPair.start({ dir });
  const act = new SerialActuator(actuator(pair.a, { template: 'MOTOR {value:.1f} {decision}\r\n', reconnect: { initialMs: 20, maxMs: 100, factor: 2 } }), {
    opener,
    clock: new SystemClock(),
  });
  let reader: SerialConnection | null = null;
  let got = '';
  const listen = async () => {
    reader = await opener.open({ path: pair.b, baudRate: 115200 });
    reader.on('data', (d: Buffer) => (got += d.toString('latin1')));
    reader.on('error', () => {});
  };
  try {
    await listen();
    await act.open();
    await act.write(0.25, { decision: 'slow' });
    await act.write(-1, { decision: 'back' });
    await waitFor('both lines', () => got === 'MOTOR 0.3 slow\r\nMOTOR -1.0 back\r\n');

    await pair.stop();
    await waitFor('the actuator to notice', () => !act.stats().connected);
    await assert.rejects(act.write(1, { decision: 'x' }), (e: unknown) => e instanceof DriverError && e.retryable);
    await reader!.close();
    await pair.restart();
    await waitFor('the actuator to reconnect', () => act.stats().connected);
    got = '';
    await listen();
    await act.write(2, { decision: 'again' });
    await waitFor('the line after reconnecting', () => got === 'MOTOR 2.0 again\r\n');
  } finally {
    await act.close();
    await (reader as SerialConnection | null)?.close();
    await pair.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
