/**
 * The reference firmware on an emulated ATmega328P (simavr, real time), driven through a
 * real pseudo-terminal with the `serialport` package and the shared TS codec: handshake,
 * SET driving the emulated pins, analog and digital inputs showing up in SAMPLE frames,
 * TIMESYNC against emulated time, heartbeats, and failsafe when host heartbeats stop
 * (docs/firmware-bridge.md §2, §4, §5).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startBoard, type Board } from '../../firmware-bridge/hil/harness.ts';
import type { HelloAckMsg, Message, NackMsg, SampleMsg, TimesyncReplyMsg } from '../../firmware-bridge/messages.ts';
import { PtyLink, hilAvailable, sleep } from './pty-link.ts';

const isSample = (ch: number) => (m: Message): m is SampleMsg => m.kind === 'sample' && m.channel === ch;

test('reference firmware on the emulated board', { timeout: 60_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const board: Board = await startBoard();
  let link: PtyLink | undefined;
  t.after(async () => {
    await link?.close();
    await board.stop();
  });
  link = await PtyLink.open(board.ptyPath);

  await t.test('is silent before HELLO and refuses everything else with NACK 6 (§2.2)', async () => {
    await sleep(400);
    assert.equal(link!.received.length, 0, 'the MCU sent frames before any HELLO');
    const seq = await link!.send({ kind: 'heartbeat', flags: 0 }, true);
    const r = await link!.waitFor((m) => m.kind === 'nack');
    assert.deepEqual(r.msg, { kind: 'nack', refusedSeq: seq, reason: 6 });
    // Outputs sit at their safe values from power-up.
    assert.equal((await board.waitForOutput((e) => e.pin === 9)).value, 0);
    assert.equal((await board.waitForOutput((e) => e.pin === 10)).value, 128);
    assert.equal((await board.waitForOutput((e) => e.pin === 13)).value, 0);
  });

  await t.test('HELLO gets the board description (§4.2)', async () => {
    const from = link!.received.length;
    const sentAt = Date.now();
    await link!.send({ kind: 'hello', maxVersion: 3, nonce: 0xc0ffee11 });
    const r = await link!.waitFor((m) => m.kind === 'helloAck', 1000, from);
    const ack = r.msg as HelloAckMsg;
    assert.equal(ack.version, 1);
    assert.equal(ack.nonce, 0xc0ffee11);
    assert.equal(ack.analogCount, 6);
    assert.equal(ack.digitalCount, 2);
    assert.equal(ack.maxRateHz, 1000);
    assert.equal(ack.heartbeatTimeoutMs, 1000);
    assert.equal(ack.firmwareId, 'keel-ref-avr/1.0.0');
    assert.deepEqual(ack.outputs, [
      { pin: 9, kind: 1, safeValue: 0 },
      { pin: 13, kind: 0, safeValue: 0 },
      { pin: 10, kind: 1, safeValue: 128 },
    ]);
    // 11 bytes out and 43 bytes back at 115200 baud: a few ms, plus pty and loop latency.
    assert.ok(r.at - sentAt < 150, `HELLO_ACK took ${r.at - sentAt} ms`);
  });

  // From here on the host keeps the session alive like a real host (§5.1).
  let beating = true;
  let lastBeatAt = 0;
  const beat = (async () => {
    while (beating) {
      await link!.send({ kind: 'heartbeat', flags: 0 });
      lastBeatAt = Date.now();
      await sleep(250);
    }
  })();

  await t.test('SET drives the emulated pins, then ACKs; bad SETs are refused (§4.4)', async () => {
    const from = link!.received.length;
    const s0 = await link!.send({ kind: 'set', output: 0, value: 200 });
    const s1 = await link!.send({ kind: 'set', output: 1, value: 1 });
    const s2 = await link!.send({ kind: 'set', output: 2, value: 0 });
    const pin9 = await board.waitForOutput((e) => e.pin === 9 && e.kind === 'pwm' && e.value === 200);
    assert.ok(Math.abs(pin9.duty! - 200 / 255) < 1e-4, `duty ${pin9.duty}`);
    await board.waitForOutput((e) => e.pin === 13 && e.kind === 'digital' && e.value === 1);
    await board.waitForOutput((e) => e.pin === 10 && e.value === 0);
    for (const seq of [s0, s1, s2]) await link!.waitFor((m) => m.kind === 'ack' && m.ackedSeq === seq, 1000, from);

    const bad1 = await link!.send({ kind: 'set', output: 3, value: 1 });
    const bad2 = await link!.send({ kind: 'set', output: 1, value: 2 });
    const bad3 = await link!.send({ kind: 'set', output: 0, value: 256 });
    const nack = (seq: number) => link!.waitFor((m) => m.kind === 'nack' && m.refusedSeq === seq, 1000, from);
    assert.equal(((await nack(bad1)).msg as NackMsg).reason, 1);
    assert.equal(((await nack(bad2)).msg as NackMsg).reason, 2);
    assert.equal(((await nack(bad3)).msg as NackMsg).reason, 2);
    const now = await board.outputs();
    assert.deepEqual(
      now.map((o) => [o.pin, o.kind, o.value]),
      [
        [9, 'pwm', 200],
        [10, 'pwm', 0],
        [13, 'digital', 1],
      ],
    );
  });

  await t.test('analog input changes show up in SAMPLE values at the configured rate (§4.3, §4.9)', async () => {
    await board.setAnalog(2, 300);
    const from = link!.received.length;
    const cfg = await link!.send({ kind: 'config', channel: 2, rateHz: 100 });
    await link!.waitFor((m) => m.kind === 'ack' && m.ackedSeq === cfg, 1000, from);
    const first = (await link!.waitFor(isSample(2), 1000, from)).msg as SampleMsg;
    assert.equal(first.periodUs, 10_000);
    assert.equal(first.values.length, 10, '100 Hz batches cover 100 ms');
    assert.ok(first.values.every((v) => v === 300), `values ${first.values}`);

    const changedAt = link!.received.length;
    await board.setAnalog(2, 901);
    const r = await link!.waitFor((m) => isSample(2)(m) && m.values.includes(901), 1000, changedAt);
    const after = (r.msg as SampleMsg).values;
    const k = after.indexOf(901);
    assert.ok(after.slice(k).every((v) => v === 901), `values after the change: ${after}`);

    // Consecutive frames are exactly 10 periods apart in MCU time: nothing lost or duplicated.
    const frames = link!.messages().filter(isSample(2));
    for (let i = 1; i < frames.length; i++) {
      assert.equal((frames[i]!.t0Us - frames[i - 1]!.t0Us) >>> 0, 100_000, `frame ${i} t0`);
    }
    // 1 s of sampling: 100 values, give or take one batch.
    const start = link!.received.length;
    await sleep(1000);
    const n = link!.received.slice(start).filter((r) => r.msg && isSample(2)(r.msg)).length;
    assert.ok(n >= 9 && n <= 11, `${n} frames in 1 s at 100 Hz`);
    const off = await link!.send({ kind: 'config', channel: 2, rateHz: 0 });
    await link!.waitFor((m) => m.kind === 'ack' && m.ackedSeq === off, 1000, start);
  });

  await t.test('digital inputs are sampled on channels 6 and 7 (D2, D3)', async () => {
    await board.setDigital(2, 0);
    await board.setDigital(3, 1);
    const from = link!.received.length;
    await link!.send({ kind: 'config', channel: 6, rateHz: 50 });
    await link!.send({ kind: 'config', channel: 7, rateHz: 50 });
    const d2 = (await link!.waitFor(isSample(6), 1000, from)).msg as SampleMsg;
    const d3 = (await link!.waitFor(isSample(7), 1000, from)).msg as SampleMsg;
    assert.ok(d2.values.every((v) => v === 0), `D2 ${d2.values}`);
    assert.ok(d3.values.every((v) => v === 1), `D3 ${d3.values}`);
    const mid = link!.received.length;
    await board.setDigital(2, 1);
    await link!.waitFor((m) => isSample(6)(m) && m.values.at(-1) === 1, 1000, mid);
    await link!.send({ kind: 'config', channel: 6, rateHz: 0 });
    await link!.send({ kind: 'config', channel: 7, rateHz: 0 });
    await sleep(150);
  });

  await t.test('TIMESYNC reports MCU time that tracks emulated and wall time (§4.8)', async () => {
    const ask = async (token: number) => {
      const from = link!.received.length;
      await link!.send({ kind: 'timesyncRequest', token });
      return (await link!.waitFor((m) => m.kind === 'timesyncReply' && m.token === token, 1000, from)).msg as TimesyncReplyMsg;
    };
    const emu0 = await board.time();
    const a = await ask(0x11111111);
    const wall0 = Date.now();
    const emu1 = await board.time();
    // The MCU clock (Timer0) and the emulator's clock agree to within the request's trip.
    assert.ok(a.mcuTimeUs >= emu0.tUs - 5000 && a.mcuTimeUs <= emu1.tUs + 5000, `mcu ${a.mcuTimeUs} vs emulated ${emu0.tUs}..${emu1.tUs}`);
    await sleep(700);
    const b = await ask(0x22222222);
    const wallMs = Date.now() - wall0;
    const mcuMs = ((b.mcuTimeUs - a.mcuTimeUs) >>> 0) / 1000;
    // Emulated time tracks wall time: the harness paces simavr (no free-running emulation).
    assert.ok(Math.abs(mcuMs - wallMs) < 60, `MCU advanced ${mcuMs} ms while ${wallMs} ms passed`);
    assert.ok(emu1.behindMs < 50, `emulation ${emu1.behindMs} ms behind wall time`);
  });

  await t.test('MCU heartbeats every 250 ms while the host is alive (§5.1)', async () => {
    const from = link!.received.length;
    await sleep(1100);
    const beats = link!.received.slice(from).filter((r) => r.msg?.kind === 'heartbeat');
    assert.ok(beats.length >= 4 && beats.length <= 5, `${beats.length} heartbeats in 1.1 s`);
    assert.ok(beats.every((r) => r.msg!.kind === 'heartbeat' && r.msg!.flags === 0), 'failsafe flag set while alive');
  });

  await t.test('heartbeats stop: every output goes to its safe value after 1000 ms (§5.2)', async () => {
    beating = false;
    await beat;
    const lastHostFrame = lastBeatAt;
    const from = link!.received.length;
    const safe9 = await board.waitForOutput((e) => e.pin === 9 && e.value === 0, 2500);
    const waited = safe9.hostMs - lastHostFrame;
    assert.ok(waited >= 900 && waited <= 1400, `failsafe after ${waited} ms`);
    await board.waitForOutput((e) => e.pin === 13 && e.value === 0, 500);
    await board.waitForOutput((e) => e.pin === 10 && e.value === 128, 500);
    const hb = await link!.waitFor((m) => m.kind === 'heartbeat' && (m.flags & 1) === 1, 1000, from);
    assert.ok(hb.at >= lastHostFrame + 900);

    // The next valid host frame ends failsafe; outputs stay safe until SET again.
    const back = link!.received.length;
    await link!.send({ kind: 'heartbeat', flags: 0 });
    await link!.waitFor((m) => m.kind === 'heartbeat' && m.flags === 0, 1000, back);
    assert.equal(board.output(9)!.value, 0);
    const s = await link!.send({ kind: 'set', output: 0, value: 99 });
    await link!.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s, 1000, back);
    await board.waitForOutput((e) => e.pin === 9 && e.value === 99, 500);
  });

  await t.test('an MCU reset shows as NACK 6; a new HELLO restores the session (§2.2)', async () => {
    const before = await board.time();
    await board.reset();
    await sleep(50); // the firmware boots in well under a millisecond of emulated time
    await board.waitForOutput((e) => e.pin === 9 && e.value === 0, 500);
    const from = link!.received.length;
    const hb = await link!.send({ kind: 'heartbeat', flags: 0 }, true);
    const r = await link!.waitFor((m) => m.kind === 'nack', 1000, from);
    assert.deepEqual(r.msg, { kind: 'nack', refusedSeq: hb, reason: 6 });
    assert.equal(r.frame.seq, 0, 'the MCU numbers its frames from 0 after a reset (§2.3)');
    await link!.send({ kind: 'hello', maxVersion: 1, nonce: 5 });
    await link!.waitFor((m) => m.kind === 'helloAck' && m.nonce === 5, 1000, from);
    const after = await board.time();
    assert.ok(after.tUs > before.tUs, 'emulated time went backwards across the reset');
    const s = await link!.send({ kind: 'set', output: 0, value: 17 });
    await link!.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s, 1000, from);
    await board.waitForOutput((e) => e.pin === 9 && e.value === 17, 500);
  });

  await t.test('the link stayed clean', async () => {
    assert.deepEqual(link!.errors, [], 'host-side frame errors');
    // The reset above restarted the MCU's seq at 0: counted once as a restart, never as loss.
    assert.equal(link!.lostFrames, 0, 'MCU frames lost between firmware and host');
    assert.deepEqual(board.faults, [], 'simavr core faults');
    const stats = await board.stats();
    assert.equal(stats.resets, 1, 'only the requested reset (a watchdog reset would add one)');
    assert.equal(stats.xoff, 0, 'the firmware did not keep up with the UART');
  });
});
