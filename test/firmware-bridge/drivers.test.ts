/**
 * The runtime-facing parts on FakeClock: the channel aligner, the shared-port hub, the
 * bridge source (faults, recovery, channels the MCU lacks) and the bridge actuator (value
 * rules, safe values, behaviour while the link is down).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../runtime/clock.ts';
import { ConfigError, DriverError, type KeelError } from '../../runtime/errors.ts';
import type { Sample } from '../../drivers/types.ts';
import { ChannelAligner } from '../../firmware-bridge/align.ts';
import { BridgeHub } from '../../firmware-bridge/hub.ts';
import { BridgeSource } from '../../firmware-bridge/source.ts';
import { BridgeActuator, outputValue } from '../../firmware-bridge/actuator.ts';
import { DuplexOpener, duplexPair } from '../../firmware-bridge/duplex-link.ts';
import { SimMcu } from '../../firmware-bridge/sim-mcu.ts';

function rig() {
  const clock = new FakeClock();
  const mcu = new SimMcu({ clock, outputs: [{ pin: 9, kind: 1, safeValue: 7 }, { pin: 13, kind: 0, safeValue: 1 }] });
  let opens = 0;
  const opener = new DuplexOpener(() => {
    opens++;
    const [a, b] = duplexPair();
    mcu.attach(b);
    return a;
  });
  const hub = new BridgeHub({ opener, clock });
  return { clock, mcu, hub, opens: () => opens };
}

test('ChannelAligner: one sample per lead value, others held, waits for late channels, bounded by the lag', () => {
  const out: [number, Record<number, number>][] = [];
  const al = new ChannelAligner(
    [
      { id: 3, periodMs: 100 },
      { id: 0, periodMs: 10 },
    ],
    (t, raw) => out.push([t, Object.fromEntries(raw)]),
    250,
  );
  assert.equal(al.lead, 0);
  // Lead values 0..40 ms arrive before channel 3 said anything: they wait.
  al.add(0, 0, 10, [1, 2, 3, 4, 5], 50);
  assert.equal(out.length, 0);
  assert.equal(al.waiting(), 5);
  // Channel 3's value at t=0 settles them (its next is due at 100 ms).
  al.add(3, 0, 0, [30], 55);
  assert.deepEqual(out, [[0, { 0: 1, 3: 30 }], [10, { 0: 2, 3: 30 }], [20, { 0: 3, 3: 30 }], [30, { 0: 4, 3: 30 }], [40, { 0: 5, 3: 30 }]]);
  // Lead values past 100 ms wait for channel 3's next value; earlier ones go out.
  out.length = 0;
  al.add(0, 90, 10, [6, 7, 8], 120);
  assert.deepEqual(out.map((o) => o[0]), [90]);
  al.add(3, 100, 0, [31], 125);
  assert.deepEqual(out, [[90, { 0: 6, 3: 30 }], [100, { 0: 7, 3: 31 }], [110, { 0: 8, 3: 31 }]]);
  // Channel 3 goes quiet: lead values wait at most 250 ms, then go out with the held value.
  out.length = 0;
  al.add(0, 200, 10, [9], 260);
  assert.equal(out.length, 0);
  al.add(0, 210, 10, [10], 451);
  assert.deepEqual(out.map((o) => o[1][3]), [31]);
  assert.equal(al.late, 0);
  assert.throws(() => new ChannelAligner([], () => undefined), RangeError);
});

test('BridgeHub: one session per path, shared; baud rates must agree; timing is the strictest wish; last release stops', async () => {
  const r = rig();
  const a = await r.hub.acquire({ path: 'p0' });
  const b = await r.hub.acquire({ path: 'p0', heartbeatMs: 100, linkTimeoutMs: 600 });
  assert.equal(a.session, b.session);
  assert.equal(r.opens(), 1);
  assert.deepEqual({ hb: a.session.settings.heartbeatMs, lt: a.session.settings.linkTimeoutMs }, { hb: 100, lt: 600 });
  await assert.rejects(r.hub.acquire({ path: 'p0', baudRate: 9600 }), /already open at 115200 baud/);
  await b.release();
  await b.release(); // idempotent
  assert.deepEqual({ hb: a.session.settings.heartbeatMs, lt: a.session.settings.linkTimeoutMs }, { hb: 250, lt: 1000 });
  assert.equal(a.session.state !== 'stopped', true);
  await a.release();
  assert.equal(a.session.state, 'stopped');
  assert.deepEqual(r.hub.paths(), []);
  r.mcu.stop();
  assert.deepEqual(r.clock.pending(), []);
});

test('BridgeSource: joined samples, fault on link loss, recovered on return; a channel the MCU lacks is a lasting config fault', async () => {
  const r = rig();
  r.mcu.setInput(0, 100);
  r.mcu.setInput(1, 200);
  const src = new BridgeSource(
    { type: 'bridge', name: 'arm', path: 'p1', channels: [{ mcuChannel: 0, name: 'a', rateHz: 50, scale: 0.5 }, { mcuChannel: 1, name: 'b', rateHz: 50, offset: -200 }, { mcuChannel: 0, name: 'a_raw', rateHz: 100 }] },
    { hub: r.hub, clock: r.clock },
  );
  const samples: Sample[] = [];
  const faults: KeelError[] = [];
  let recovered = 0;
  src.on('sample', (s) => samples.push(s));
  src.on('fault', (e) => faults.push(e));
  src.on('recovered', () => recovered++);
  await src.start();
  await r.clock.advanceAsync(500, 5);
  assert.equal(r.mcu.rateOf(0), 100, 'the fastest wish for a channel wins');
  assert.ok(samples.length > 20);
  const full = samples.filter((s) => 'b' in s.values);
  assert.ok(full.length >= samples.length - 2);
  assert.deepEqual(full.at(-1)!.values, { a: 50, a_raw: 100, b: 0 });
  assert.equal(src.stats().connected, true);
  r.mcu.faults.silent = true;
  await r.clock.advanceAsync(1200, 10);
  assert.equal(faults.length, 1);
  assert.equal(faults[0]!.code, 'KEEL_E_SERIAL_IO');
  assert.equal(faults[0]!.retryable, true);
  r.mcu.faults.silent = false;
  await r.clock.advanceAsync(3000, 10);
  assert.equal(recovered, 1);
  await src.stop();
  await src.stop();

  const bad = new BridgeSource({ type: 'bridge', name: 'x', path: 'p1', channels: [{ mcuChannel: 40, name: 'nope', rateHz: 10 }] }, { hub: r.hub, clock: r.clock });
  const badFaults: KeelError[] = [];
  let badRecovered = 0;
  bad.on('fault', (e) => badFaults.push(e));
  bad.on('recovered', () => badRecovered++);
  await bad.start();
  await r.clock.advanceAsync(300, 5);
  assert.equal(badFaults.length, 1);
  assert.equal(badFaults[0]!.code, 'KEEL_E_CONFIG');
  assert.match(badFaults[0]!.message, /bridge source x \(nope\): .*has no input channel 40 \(it has 6 analog 0\.\.5, 2 digital 6\.\.7\)/);
  // A reconnect does not clear it: the MCU still lacks the channel.
  r.mcu.reset();
  await r.clock.advanceAsync(1000, 10);
  assert.equal(badRecovered, 0);
  assert.equal(badFaults.filter((f) => f.code === 'KEEL_E_CONFIG').length, 2);
  await bad.stop();

  const invalid = new BridgeSource({ type: 'bridge', name: 'y', path: 'p1', channels: [] }, { hub: r.hub, clock: r.clock });
  await assert.rejects(invalid.start(), ConfigError);
  r.mcu.stop();
  assert.deepEqual(r.clock.pending(), []);
});

test('BridgeActuator: values, safe values, and refusing while the link is down', async () => {
  assert.equal(outputValue(true), 1);
  assert.equal(outputValue(127.6), 128);
  assert.equal(outputValue(' 12 '), 12);
  assert.match(String(outputValue('on')), /not a number/);
  assert.match(String(outputValue(300)), /outside 0\.\.255/);
  assert.match(String(outputValue(NaN)), /not a finite number/);

  const r = rig();
  const pwm = new BridgeActuator({ type: 'bridge', name: 'fan', path: 'p2', output: 0 }, { hub: r.hub });
  const led = new BridgeActuator({ type: 'bridge', name: 'led', path: 'p2', output: 1, safeValue: 0 }, { hub: r.hub });
  await pwm.open();
  await led.open();
  await r.clock.advanceAsync(100, 5);
  await pwm.write(127.6);
  assert.equal(r.mcu.output(0), 128);
  assert.equal(pwm.current(), 127.6);
  await led.write(true);
  assert.equal(r.mcu.output(1), 1);
  await assert.rejects(led.write(2), (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'bad-value' && /led/.test(e.message));
  await assert.rejects(pwm.write('fast'), /not a number; nothing was sent/);
  await pwm.safe();
  assert.equal(r.mcu.output(0), 7, "the MCU's own safe value when none is configured");
  await led.safe();
  assert.equal(r.mcu.output(1), 0, 'the configured safe value');
  r.mcu.faults.silent = true;
  await r.clock.advanceAsync(1200, 10);
  await assert.rejects(pwm.safe(), (e: DriverError) => e.retryable && /cannot confirm the safe value/.test(e.message));
  await assert.rejects(pwm.write(5), (e: DriverError) => e.retryable);
  assert.equal(pwm.stats().failures, 3);
  await pwm.close();
  await led.close();
  await assert.rejects(pwm.write(1), /closed/);
  r.mcu.stop();
  assert.deepEqual(r.clock.pending(), []);
});
