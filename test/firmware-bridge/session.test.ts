/**
 * The host session against the simulated MCU (and, where an MCU must misbehave in ways the
 * simulator does not, a scripted one), over in-memory streams on FakeClock: handshake and
 * its retries, heartbeats, time mapping across the 32-bit wrap, loss and damage counters,
 * resynchronization after garbage, the command window with timeouts and retries, NACKs,
 * MCU resets, a port that vanishes and comes back, and a clean stop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import { FakeClock } from '../../runtime/clock.ts';
import { DriverError } from '../../runtime/errors.ts';
import { BridgeSession, type BridgeSessionOptions, type ChannelSamples } from '../../firmware-bridge/session.ts';
import { DuplexOpener, duplexPair } from '../../firmware-bridge/duplex-link.ts';
import { SimMcu, type SimMcuOptions } from '../../firmware-bridge/sim-mcu.ts';
import { FrameDecoder } from '../../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, type HelloAckMsg, type Message } from '../../firmware-bridge/messages.ts';
import { McuTimeMap } from '../../firmware-bridge/mcu-time.ts';

const EPOCH = 1_700_000_000_000;

function rig(mcuOpts: Partial<SimMcuOptions> = {}, sessionOpts: Partial<BridgeSessionOptions> = {}) {
  const clock = new FakeClock(EPOCH);
  const mcu = new SimMcu({ clock, ...mcuOpts });
  let plugged = true;
  let hostEnd: Duplex | null = null;
  const opener = new DuplexOpener(() => {
    if (!plugged) return null;
    const [a, b] = duplexPair();
    mcu.attach(b);
    hostEnd = a;
    return a;
  });
  let seed = 1;
  const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const session = new BridgeSession({ link: { path: 'sim0', baudRate: 115200 }, opener, clock, random, ...sessionOpts });
  const events: string[] = [];
  session.on('up', () => events.push('up'));
  session.on('down', (e) => events.push(`down:${(e as DriverError & { bridgeReason?: string }).bridgeReason ?? 'port'}`));
  return {
    clock,
    mcu,
    opener,
    session,
    events,
    unplug() {
      plugged = false;
      hostEnd?.destroy();
    },
    plug() {
      plugged = true;
    },
    async close() {
      await session.stop();
      mcu.stop();
      assert.deepEqual(clock.pending(), [], 'no timer left behind');
    },
  };
}

test('handshake, CONFIG, samples stamped with MCU time mapped across the 32-bit wrap', async () => {
  // The MCU clock starts 20 ms before it wraps; each value is the MCU time in ms (mod 1000).
  const startTimeUs = 2 ** 32 - 20_000;
  const r = rig({ startTimeUs });
  r.mcu.setInput(2, (tUs) => Math.floor(tUs / 1000) % 1000);
  const got: ChannelSamples[] = [];
  r.session.on('samples', (s) => got.push(s));
  r.session.subscribe(Symbol('a'), 2, 200);
  await r.session.start();
  await r.clock.advanceAsync(50, 1);
  assert.equal(r.session.state, 'established');
  assert.deepEqual(r.events, ['up']);
  const info = r.session.info!;
  assert.equal(info.firmwareId, 'keel-sim-mcu/1.0.0');
  assert.equal(info.analogCount, 6);
  assert.equal(info.outputs.length, 3);
  assert.equal(r.mcu.rateOf(2), 200);
  await r.clock.advanceAsync(400, 5);
  const synced = got.filter((g) => g.synced);
  assert.ok(synced.length > 5, `synced SAMPLE frames: ${synced.length}`);
  let checked = 0;
  for (const g of synced) {
    assert.equal(g.periodMs, 5);
    g.values.forEach((v, i) => {
      // Host time of the value -> MCU time it was taken at (exact on FakeClock: rtt 0).
      const mcuMs = (g.t0 + i * g.periodMs - EPOCH) + startTimeUs / 1000;
      assert.equal(v, Math.floor(Math.round(mcuMs * 1000) / 1000) % 1000);
      checked++;
    });
  }
  assert.ok(checked > 50);
  // Times increase across the wrap (which happened 20 ms in).
  const times = synced.flatMap((g) => g.values.map((_, i) => g.t0 + i * g.periodMs));
  for (let i = 1; i < times.length; i++) assert.ok(times[i]! > times[i - 1]!);
  assert.equal(r.session.stats().rttMs, 0);
  assert.ok(r.clock.pending().includes('bridge:sim0:heartbeat'));
  assert.ok(r.clock.pending().includes('bridge:sim0:link'));
  assert.ok(r.clock.pending().includes('bridge:sim0:timesync'));
  await r.close();
});

test('host heartbeats keep the MCU out of failsafe; their period respects the MCU timeout', async () => {
  const r = rig({ heartbeatTimeoutMs: 600 });
  await r.session.start();
  await r.clock.advanceAsync(3000, 10);
  const beats = r.mcu.received.filter((m) => m.kind === 'heartbeat').length;
  // 600 ms / 3 = 200 ms instead of the default 250 ms: about 15 in 3 s.
  assert.ok(beats >= 14 && beats <= 16, `heartbeats: ${beats}`);
  assert.equal(r.mcu.failsafe, false);
  await r.close();
});

test('HELLO is retried with a growing interval; one down per outage; up when the MCU answers', async () => {
  const r = rig();
  r.mcu.faults.silent = true;
  await r.session.start();
  await r.clock.advanceAsync(12_000, 50);
  // HELLOs at 0, 500, 1500, 3500, 7500 ms (interval 500, 1000, 2000, 4000, then 5000 max).
  assert.equal(r.session.stats().framesOut, 5);
  assert.deepEqual(r.events, ['down:link-down']);
  assert.equal(r.session.state, 'handshaking');
  r.mcu.faults.silent = false;
  await r.clock.advanceAsync(5000, 50);
  assert.deepEqual(r.events, ['down:link-down', 'up']);
  await r.close();
});

test('no common version: refused with a clear reason, retried slowly, never up', async () => {
  const r = rig();
  r.mcu.faults.helloVersion = 0;
  const downs: DriverError[] = [];
  r.session.on('down', (e) => downs.push(e));
  await r.session.start();
  await r.clock.advanceAsync(11_000, 50);
  assert.equal(r.session.state, 'handshaking');
  assert.ok(!r.events.includes('up'));
  assert.equal(downs.length, 1);
  assert.match(downs[0]!.message, /no protocol version in common/);
  assert.equal(downs[0]!.retryable, false);
  // Retried every helloMaxMs (5 s), not hammered.
  assert.ok(r.mcu.stats().hellos <= 4, `hellos: ${r.mcu.stats().hellos}`);
  await r.close();
});

test('frames of another version are counted and dropped; silence then is link loss', async () => {
  const r = rig();
  await r.session.start();
  await r.clock.advanceAsync(100, 5);
  r.mcu.faults.frameVersion = 2;
  await r.clock.advanceAsync(1500, 10);
  const st = r.session.stats();
  assert.ok(st.version >= 3, `version errors: ${st.version}`);
  assert.ok(st.linkLost >= 1);
  // HELLO_ACK is always a version-1 frame, so the link comes back, and is lost again.
  assert.deepEqual(r.events.slice(0, 2), ['up', 'down:link-down']);
  await r.close();
});

test('lost frames are counted exactly; CRC damage costs exactly the damaged frame', async () => {
  const r = rig({ seed: 42 });
  r.session.subscribe(Symbol('a'), 0, 500);
  await r.session.start();
  await r.clock.advanceAsync(100, 5);
  r.mcu.faults.dropRate = 0.2;
  await r.clock.advanceAsync(3000, 5);
  r.mcu.faults.dropRate = 0;
  await r.clock.advanceAsync(100, 5);
  let st = r.session.stats();
  const dropped = r.mcu.stats().dropped;
  assert.ok(dropped > 10);
  assert.equal(st.lostFrames, dropped);
  r.mcu.faults.corruptRate = 0.2;
  await r.clock.advanceAsync(3000, 5);
  r.mcu.faults.corruptRate = 0;
  await r.clock.advanceAsync(100, 5);
  st = r.session.stats();
  const corrupted = r.mcu.stats().corrupted;
  assert.ok(corrupted > 10);
  assert.equal(st.crc + st.cobs + st.short, corrupted);
  assert.equal(st.lostFrames, dropped + corrupted);
  assert.equal(r.session.state, 'established');
  await r.close();
});

test('garbage costs at most one frame: resynchronized at the next delimiter', async () => {
  const r = rig();
  r.session.subscribe(Symbol('a'), 0, 100);
  await r.session.start();
  await r.clock.advanceAsync(100, 5);
  const base = r.session.stats();
  // Garbage that ends with a delimiter: no frame lost.
  r.mcu.injectGarbage(Buffer.from('de ad be ef 00 ff', 'ascii'));
  r.mcu.injectGarbage(Buffer.from([0x00]));
  await r.clock.advanceAsync(100, 5);
  let st = r.session.stats();
  assert.equal(st.lostFrames, base.lostFrames);
  assert.equal(st.cobs + st.crc + st.short - (base.cobs + base.crc + base.short), 1);
  // Garbage without a delimiter: it merges with the next frame, which is lost; the one after is fine.
  r.mcu.injectGarbage(Buffer.from([0x13, 0x37, 0x42]));
  await r.clock.advanceAsync(100, 5);
  st = r.session.stats();
  assert.equal(st.lostFrames, base.lostFrames + 1);
  // An oversize flood: counted once, memory bounded, the link survives.
  r.mcu.injectGarbage(Buffer.alloc(100_000, 0x41));
  r.mcu.injectGarbage(Buffer.from([0]));
  await r.clock.advanceAsync(100, 5);
  st = r.session.stats();
  assert.equal(st.oversize, 1);
  assert.equal(r.session.state, 'established');
  await r.close();
});

test('commands: window of 4, coalescing, retries with new seqs, then no-ack', async () => {
  const r = rig();
  await r.session.start();
  await r.clock.advanceAsync(50, 5);
  r.mcu.faults.neverAck = true;
  const results: string[] = [];
  const track = (p: Promise<void>, name: string) =>
    p.then(
      () => results.push(`${name}:ok`),
      (e: DriverError & { bridgeReason?: string }) => results.push(`${name}:${e.bridgeReason}:${e.retryable}`),
    );
  const ps = [
    track(r.session.set(0, 10), 'a'),
    track(r.session.set(1, 1), 'b'),
    track(r.session.set(2, 20), 'c'),
    track(r.session.set(0, 11), 'd'),
    track(r.session.set(2, 21), 'e'), // queued: window full
    track(r.session.set(2, 22), 'f'), // replaces e's value while queued
  ];
  const sets = () => r.mcu.received.filter((m): m is Extract<Message, { kind: 'set' }> => m.kind === 'set');
  await r.clock.advanceAsync(1, 1);
  assert.equal(sets().length, 4);
  await r.clock.advanceAsync(260, 5);
  assert.equal(sets().length, 8, 'first retry of the four in flight');
  await r.clock.advanceAsync(500, 5);
  await Promise.resolve();
  // a-d failed after 3 attempts; the queued one (e/f, value 22) went out as they left.
  assert.deepEqual(results.slice(0, 4).sort(), ['a:no-ack:true', 'b:no-ack:true', 'c:no-ack:true', 'd:no-ack:true']);
  assert.equal(r.mcu.output(2), 22);
  assert.ok(!sets().some((s) => s.output === 2 && s.value === 21));
  r.mcu.faults.neverAck = false;
  await r.clock.advanceAsync(800, 5);
  await Promise.all(ps);
  assert.deepEqual(results.slice(4), ['e:ok', 'f:ok']);
  assert.equal(r.session.stats().unacked, 4);
  // Values the output does not take are refused before anything is sent.
  await assert.rejects(r.session.set(1, 2), (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'bad-value' && !e.retryable);
  await assert.rejects(r.session.set(7, 1), (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'no-such-target');
  await assert.rejects(r.session.set(0, 1.5), RangeError);
  await r.close();
});

test('commands while the link is down fail at once; open ones fail when it drops', async () => {
  const r = rig({}, { retries: 10 });
  await r.session.start();
  await r.clock.advanceAsync(50, 5);
  r.mcu.faults.neverAck = true;
  const p = assert.rejects(r.session.set(0, 5), (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'link-down' && e.retryable);
  r.mcu.faults.silent = true;
  await r.clock.advanceAsync(1200, 10);
  await p;
  await assert.rejects(r.session.set(0, 5), (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'link-down');
  // The MCU, hearing nothing either, failed safe by itself.
  assert.equal(r.mcu.failsafe, true);
  assert.deepEqual(r.mcu.outputs(), [0, 0, 0]);
  await r.close();
});

test('the MCU failsafe flag is reported, and the MCU leaves failsafe on the next host frame', async () => {
  const r = rig({ heartbeatTimeoutMs: 300 }, { linkTimeoutMs: 2000 });
  const flags: boolean[] = [];
  r.session.on('failsafe', (f) => flags.push(f));
  await r.session.start();
  await r.clock.advanceAsync(50, 5);
  await r.session.set(0, 200);
  // Host frames stop reaching the MCU (its UART receive side dies), its frames still arrive.
  const silentRx = r.mcu as unknown as { decoder: { push: (b: Buffer) => void } };
  const push = silentRx.decoder.push;
  silentRx.decoder.push = () => undefined;
  await r.clock.advanceAsync(700, 10);
  assert.equal(r.mcu.failsafe, true);
  assert.equal(r.mcu.output(0), 0);
  assert.deepEqual(flags, [true]);
  silentRx.decoder.push = push;
  await r.clock.advanceAsync(600, 10);
  assert.deepEqual(flags, [true, false]);
  assert.equal(r.mcu.output(0), 0, 'outputs stay safe until SET again');
  await r.close();
});

test('an MCU reset (NACK not-ready) is detected and the session handshakes again', async () => {
  const r = rig();
  r.session.subscribe(Symbol('a'), 1, 50);
  await r.session.start();
  await r.clock.advanceAsync(100, 5);
  r.mcu.reset();
  assert.equal(r.mcu.rateOf(1), 0);
  await r.clock.advanceAsync(700, 5);
  const st = r.session.stats();
  assert.equal(st.mcuResets, 1);
  assert.equal(st.handshakes, 2);
  assert.deepEqual(r.events, ['up', 'down:link-down', 'up']);
  assert.equal(r.mcu.rateOf(1), 50, 'channels configured again');
  await r.close();
});

test('the port vanishes and comes back: down, reopen with backoff, handshake, up', async () => {
  const r = rig();
  r.session.subscribe(Symbol('a'), 0, 100);
  await r.session.start();
  await r.clock.advanceAsync(100, 5);
  r.unplug();
  await r.clock.advanceAsync(2000, 10);
  assert.equal(r.session.state, 'closed');
  assert.deepEqual(r.events, ['up', 'down:port']);
  const failedOpens = r.opener.opens;
  assert.ok(failedOpens >= 3, `reopen attempts: ${failedOpens}`);
  r.plug();
  await r.clock.advanceAsync(3000, 10);
  assert.equal(r.session.state, 'established');
  assert.deepEqual(r.events, ['up', 'down:port', 'up']);
  const st = r.session.stats();
  assert.equal(st.reopens, 1);
  assert.equal(st.linkLost, 1);
  assert.equal(r.mcu.rateOf(0), 100);
  await r.close();
});

test('a scripted MCU: NACKs reject with their reason, stray ACKs are counted, stale HELLO_ACKs ignored', async () => {
  const clock = new FakeClock(EPOCH);
  let far!: Duplex;
  const opener = new DuplexOpener(() => {
    const [a, b] = duplexPair();
    far = b;
    return a;
  });
  const session = new BridgeSession({ link: { path: 'script0', baudRate: 115200 }, opener, clock, random: () => 0.25 });
  let seq = 0;
  const send = (m: Message) => far.write(encodeMessage(m, seq++));
  const fromHost: { seq: number; msg: Message }[] = [];
  const attach = () => {
    const dec = new FrameDecoder((f) => {
      const r = checkFrame(f, 'toMcu');
      if (r.ok) fromHost.push({ seq: f.seq, msg: r.msg });
    });
    far.on('data', (c: Buffer) => dec.push(c));
  };
  await session.start();
  attach();
  await new Promise((res) => setImmediate(res));
  const hello = fromHost.find((h) => h.msg.kind === 'hello')!;
  const ack: Omit<HelloAckMsg, 'nonce'> = { kind: 'helloAck', version: 1, analogCount: 1, digitalCount: 0, maxRateHz: 100, heartbeatTimeoutMs: 1000, outputs: [{ pin: 3, kind: 1, safeValue: 0 }], firmwareId: 'script' };
  send({ ...ack, nonce: ((hello.msg as { nonce: number }).nonce + 1) >>> 0 }); // stale nonce
  assert.equal(session.state, 'handshaking');
  send({ ...ack, nonce: (hello.msg as { nonce: number }).nonce });
  assert.equal(session.state, 'established');
  const tick = () => new Promise((res) => setImmediate(res));
  const p = session.set(0, 200);
  await tick();
  const setFrame = fromHost.find((h) => h.msg.kind === 'set')!;
  send({ kind: 'nack', refusedSeq: setFrame.seq, reason: 2 });
  await assert.rejects(p, (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'bad-value' && !e.retryable && /bad-value/.test(e.message));
  send({ kind: 'ack', ackedSeq: 4242 });
  assert.equal(session.stats().strayAcks, 1);
  const mcuErrors: string[] = [];
  session.on('mcuError', (e) => mcuErrors.push(`${e.code}:${e.text}`));
  send({ kind: 'error', code: 1, text: 'sample buffer overflow' });
  assert.deepEqual(mcuErrors, ['1:sample buffer overflow']);
  assert.equal(session.stats().mcuErrors, 1);
  const q = session.set(0, 100);
  await tick();
  const set2 = fromHost.filter((h) => h.msg.kind === 'set').at(-1)!;
  send({ kind: 'nack', refusedSeq: set2.seq, reason: 6 });
  await assert.rejects(q, (e: DriverError & { bridgeReason?: string }) => e.bridgeReason === 'link-down');
  assert.equal(session.stats().mcuResets, 1);
  assert.equal(session.state, 'handshaking');
  await session.stop();
  assert.deepEqual(clock.pending(), []);
});

test('McuTimeMap: unwraps across 2^32, keeps the lowest-rtt estimate, ignores slow replies', () => {
  const m = new McuTimeMap();
  assert.equal(m.unwrap(0xffff_fff0), 0xffff_fff0);
  assert.equal(m.unwrap(0x10), 2 ** 32 + 0x10);
  assert.equal(m.unwrap(0xffff_fff8), 0xffff_fff8, 'a slightly older time stays before the wrap');
  assert.equal(m.unwrap(0x20), 2 ** 32 + 0x20);
  assert.equal(m.toHostMs(0), null);
  m.addExchange(100, 110, 0x30); // rtt 10
  m.addExchange(200, 202, 0x40); // rtt 2: best
  m.addExchange(300, 320, 0x50); // rtt 20
  assert.equal(m.estimate()!.rttMs, 2);
  assert.equal(m.addExchange(0, 5000, 0x60), null, 'a 5 s round trip is ignored');
  for (let i = 0; i < 8; i++) m.addExchange(1000 + i * 100, 1000 + i * 100 + 5, 0x100 + i);
  assert.equal(m.estimate()!.rttMs, 5, 'old estimates age out after 8 replies');
  assert.throws(() => m.unwrap(-1), RangeError);
});
