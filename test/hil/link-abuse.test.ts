/**
 * Bad input through the real pseudo-terminal into the firmware on the emulated board
 * (docs/firmware-bridge.md §1.6, §6-6): random bytes, truncated frames, corrupted CRCs,
 * oversize chunks, unknown types and versions, wrong lengths, and floods. The firmware must
 * count, refuse with the right NACK where §1.6 says so, recover at the next delimiter, and
 * never hang, reset or corrupt what it sends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encodeFrame } from '../../firmware-bridge/codec.ts';
import { startBoard, type Board } from '../../firmware-bridge/hil/harness.ts';
import type { ErrorMsg, NackMsg } from '../../firmware-bridge/messages.ts';
import { PtyLink, hilAvailable, sleep } from './pty-link.ts';

test('the firmware survives a hostile link', { timeout: 60_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const board: Board = await startBoard();
  let link: PtyLink | undefined;
  let beating = false;
  let beat: Promise<void> = Promise.resolve();
  t.after(async () => {
    beating = false;
    await beat;
    await link?.close();
    await board.stop();
  });
  link = await PtyLink.open(board.ptyPath);
  const l = link;

  /** The MCU still answers promptly: a TIMESYNC round trip after a resync delimiter. */
  const probe = async (what: string): Promise<void> => {
    const from = l.received.length;
    const token = randomBytes(4).readUInt32LE(0);
    await l.send({ kind: 'timesyncRequest', token }, true);
    await l.waitFor((m) => m.kind === 'timesyncReply' && m.token === token, 1500, from).catch((err: Error) => {
      throw new Error(`no TIMESYNC reply after ${what}: ${err.message}`);
    });
  };
  /** Collects the NACKs answering `seqs`, in order. */
  const nacksFor = async (seqs: number[], from: number): Promise<number[]> => {
    const reasons: number[] = [];
    for (const seq of seqs) {
      const r = await l.waitFor((m) => m.kind === 'nack' && m.refusedSeq === seq, 1500, from);
      reasons.push((r.msg as NackMsg).reason);
    }
    return reasons;
  };

  await t.test('random bytes before HELLO, then a clean handshake', async () => {
    await l.write(randomBytes(3000));
    await l.send({ kind: 'hello', maxVersion: 1, nonce: 42 }, true);
    await l.waitFor((m) => m.kind === 'helloAck' && m.nonce === 42, 1500);
    // Keep the session alive from here on; each heartbeat starts with a lone delimiter so
    // garbage written before it costs nothing but itself (§1.6).
    beating = true;
    beat = (async () => {
      while (beating) {
        await l.send({ kind: 'heartbeat', flags: 0 }, true);
        await sleep(200);
      }
    })();
    const s = await l.send({ kind: 'set', output: 0, value: 123 });
    await l.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s);
    await board.waitForOutput((e) => e.pin === 9 && e.value === 123);
  });

  await t.test('random bytes with and without delimiters', async () => {
    for (let i = 0; i < 3; i++) {
      const noise = randomBytes(2500);
      if (i === 1) for (let k = 0; k < noise.length; k++) if (noise[k] === 0) noise[k] = 0x5a; // one endless chunk
      await l.write(noise);
      await probe(`noise burst ${i}`);
    }
  });

  await t.test('truncated and CRC-damaged SETs are dropped, never applied', async () => {
    for (let i = 0; i < 40; i++) {
      const wire = encodeFrame({ version: 1, type: 4, seq: l.seq, payload: Buffer.from([0, 7, 0]) });
      const damaged = Buffer.from(wire);
      if (i % 2) damaged[2 + (i % (damaged.length - 3))] ^= 0x10; // flip a bit inside the frame
      const bytes = i % 2 ? damaged : Buffer.concat([wire.subarray(0, wire.length - 4), Buffer.from([0])]);
      await l.write(bytes);
    }
    await probe('damaged frames');
    assert.equal(board.output(9)!.value, 123, 'a damaged SET changed the output');
  });

  await t.test('oversize chunks are dropped at 248 bytes and resynchronized', async () => {
    const long = Buffer.alloc(3000, 0x41);
    await l.write(Buffer.concat([long, Buffer.from([0])]));
    await l.write(Buffer.alloc(248, 0x7f)); // exactly one byte over, no delimiter: the probe's 0x00 ends it
    await probe('oversize chunks');
  });

  await t.test('unknown types, versions and lengths get the NACKs of §1.6/§4.6', async () => {
    const from = l.received.length;
    const seqs: number[] = [];
    const want: number[] = [];
    for (const type of [0x00, 0x0b, 0x20, 0xff, 0x02, 0x03, 0x05, 0x06, 0x0a]) {
      seqs.push(await l.sendRaw(1, type, Buffer.from([1, 2, 3])));
      want.push(3); // unknown or wrong direction
    }
    for (const version of [0, 2, 255]) {
      seqs.push(await l.sendRaw(version, 0x07, Buffer.from([0])));
      want.push(5);
    }
    for (const [type, len] of [
      [0x04, 4],
      [0x09, 2],
      [0x01, 0],
      [0x07, 2],
      [0x08, 8],
    ] as const) {
      seqs.push(await l.sendRaw(1, type, Buffer.alloc(len, 1)));
      want.push(4);
    }
    assert.deepEqual(await nacksFor(seqs, from), want);
  });

  await t.test('a flood of valid SETs is answered in full and in order', async () => {
    const from = l.received.length;
    const frames = Array.from({ length: 300 }, (_, i) => l.build(1, 4, Buffer.from([0, i % 256, 0])));
    await l.write(Buffer.concat(frames.map((f) => f.wire))); // 3.3 kB at once: ~290 ms of line time
    const seqs = frames.map((f) => f.seq);
    await l.waitFor((m) => m.kind === 'ack' && m.ackedSeq === seqs.at(-1), 3000, from);
    const acked = l.received.slice(from).flatMap((r) => (r.msg?.kind === 'ack' ? [r.msg.ackedSeq] : []));
    assert.deepEqual(acked, seqs, 'ACKs missing or out of order');
    await board.waitForOutput((e) => e.pin === 9 && e.value === 299 % 256);
  });

  await t.test('a flood the MCU cannot answer at line rate: counted, reported, recovered', async (st) => {
    // Every 8-byte unknown-type frame asks for an 11-byte NACK: replies outgrow the line, the
    // MCU's receive buffer overflows, and it must say so (ERROR 2) and carry on.
    const from = l.received.length;
    const frames = Array.from({ length: 600 }, () => l.build(1, 0x42, Buffer.alloc(0)));
    await l.write(Buffer.concat(frames.map((f) => f.wire)));
    await probe('the NACK flood');
    await sleep(1200); // ERROR reports are rate-limited to one per second per code
    const after = l.received.slice(from);
    const nacked = after.flatMap((r) => (r.msg?.kind === 'nack' ? [r.msg.refusedSeq] : []));
    const sent = new Set(frames.map((f) => f.seq));
    assert.ok(nacked.length > 200, `only ${nacked.length} of ${frames.length} answered`);
    assert.ok(nacked.every((s) => sent.has(s)), 'NACK for a seq never sent');
    assert.ok(nacked.every((s, i) => i === 0 || ((s - nacked[i - 1]!) & 0xffff) < 32768), 'NACKs out of order');
    assert.ok(after.every((r) => r.msg?.kind !== 'nack' || r.msg.reason === 3), 'wrong NACK reason');
    const errors = after.filter((r) => r.msg?.kind === 'error').map((r) => (r.msg as ErrorMsg).text);
    st.diagnostic(`${nacked.length} of ${frames.length} answered; MCU errors: ${errors.join('; ') || 'none'}`);
    if (nacked.length < frames.length) {
      const err = after.find((r) => r.msg?.kind === 'error' && r.msg.code === 2);
      assert.ok(err, `${frames.length - nacked.length} frames unanswered but no ERROR 2 (uart receive errors)`);
      assert.match((err!.msg as ErrorMsg).text, /^uart receive errors: \d+$/);
    }
  });

  await t.test('afterwards: a fresh HELLO, SET and clean books', async () => {
    const from = l.received.length;
    await l.send({ kind: 'hello', maxVersion: 1, nonce: 7 }, true);
    await l.waitFor((m) => m.kind === 'helloAck' && m.nonce === 7, 1500, from);
    await board.waitForOutput((e) => e.pin === 9 && e.value === 0); // HELLO drives safe values
    const s = await l.send({ kind: 'set', output: 1, value: 1 });
    await l.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s, 1500, from);
    await board.waitForOutput((e) => e.pin === 13 && e.value === 1);

    // Whatever the host sent, the MCU's own frames all arrived intact and in sequence.
    assert.deepEqual(l.errors, [], 'MCU frames failed host checks');
    assert.equal(l.lostFrames, 0, 'MCU frames lost or reordered');
    assert.ok(!l.messages().some((m) => m.kind === 'heartbeat' && (m.flags & 1) === 1), 'failsafe tripped during the abuse');
    assert.ok(!l.messages().some((m) => m.kind === 'nack' && m.reason === 6), 'the MCU reset (NACK 6) during the abuse');
    assert.deepEqual(board.faults, [], 'simavr core faults (bad address, invalid opcode)');
    const stats = await board.stats();
    assert.equal(stats.resets, 0, 'the MCU reset');
    assert.equal(board.exitReason, null);
  });

  await t.test('a pulled cable trips failsafe; plugged back, the session carries on', async () => {
    const s = await l.send({ kind: 'set', output: 2, value: 40 });
    await l.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s);
    await board.waitForOutput((e) => e.pin === 10 && e.value === 40);
    await board.setLink(false);
    const pulled = Date.now();
    const safe = await board.waitForOutput((e) => e.pin === 10 && e.value === 128, 2500);
    assert.ok(safe.hostMs - pulled >= 700, `failsafe ${safe.hostMs - pulled} ms after the pull`);
    await board.setLink(true);
    const from = l.received.length;
    await probe('the cable came back');
    await l.waitFor((m) => m.kind === 'heartbeat' && m.flags === 0, 1500, from);
    const s2 = await l.send({ kind: 'set', output: 2, value: 41 });
    await l.waitFor((m) => m.kind === 'ack' && m.ackedSeq === s2, 1500, from);
    await board.waitForOutput((e) => e.pin === 10 && e.value === 41);
  });

  await t.test('the host closes and reopens the port: the pty and the MCU carry on', async () => {
    beating = false;
    await beat;
    await l.reopen();
    await probe('reopening the port');
    await l.reopen();
    await probe('reopening the port twice');
    assert.equal(board.exitReason, null);
    assert.deepEqual(board.faults, []);
  });
});
