/**
 * Fuzzing the receive path: over a million random and mutated frames through the streaming
 * decoder and the message checks (both directions), then tens of thousands of hostile but
 * well-formed frames into a live session. Nothing may throw, the decoder may never hold more
 * than one frame's worth of bytes, every chunk must be accounted for, and whatever decodes
 * must re-encode to the same bytes. Deterministic (seeded), a few seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../runtime/clock.ts';
import { decodeChunk, encodeFrame, FrameDecoder, MAX_ENCODED, type FrameErrorKind } from '../../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, type Message } from '../../firmware-bridge/messages.ts';
import { BridgeSession } from '../../firmware-bridge/session.ts';
import { DuplexOpener, duplexPair } from '../../firmware-bridge/duplex-link.ts';
import { SimMcu } from '../../firmware-bridge/sim-mcu.ts';
import type { Duplex } from 'node:stream';

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

function randomMessage(rnd: () => number): Message {
  const u = (bits: number) => Math.floor(rnd() * 2 ** bits);
  switch (u(4) % 11) {
    case 0: return { kind: 'hello', maxVersion: 1 + (u(8) % 255), nonce: u(32) };
    case 1: return { kind: 'helloAck', version: u(8), nonce: u(32), analogCount: u(6), digitalCount: u(6), maxRateHz: u(16), heartbeatTimeoutMs: u(16), outputs: Array.from({ length: u(5) }, () => ({ pin: u(8), kind: 1, safeValue: u(8) })), firmwareId: 'fw'.repeat(1 + (u(4) % 8)) };
    case 2: return { kind: 'sample', channel: u(8), t0Us: u(32), periodUs: u(16), values: Array.from({ length: 1 + (u(7) % 100) }, () => u(16) - 32768) };
    case 3: return { kind: 'set', output: u(8), value: u(16) };
    case 4: return { kind: 'ack', ackedSeq: u(16) };
    case 5: return { kind: 'nack', refusedSeq: u(16), reason: u(8) };
    case 6: return { kind: 'heartbeat', flags: u(8) };
    case 7: return { kind: 'timesyncRequest', token: u(32) };
    case 8: return { kind: 'timesyncReply', token: u(32), mcuTimeUs: u(32) };
    case 9: return { kind: 'config', channel: u(8), rateHz: u(16) };
    default: return { kind: 'error', code: u(8), text: 'x'.repeat(u(8) % 200) };
  }
}

/** A frame with valid COBS and CRC but any version, type and payload (reaches checks 6-9 of §1.6). */
function hostileFrame(rnd: () => number): Buffer {
  const payload = Buffer.from(Array.from({ length: Math.floor(rnd() * 241) }, () => Math.floor(rnd() * 256)));
  return encodeFrame({ version: rnd() < 0.5 ? 1 : Math.floor(rnd() * 256), type: Math.floor(rnd() * 256), seq: Math.floor(rnd() * 65536), payload });
}

test('one million random and mutated frames: no throw, bounded memory, every chunk accounted for', () => {
  const rnd = xorshift(0xc0ffee);
  const pool = Array.from({ length: 2000 }, (_, i) => encodeMessage(randomMessage(rnd), i & 0xffff));
  const errors: Record<FrameErrorKind, number> = { oversize: 0, cobs: 0, short: 0, crc: 0, version: 0, type: 0, length: 0, value: 0 };
  let ok = 0;
  let decoded = 0;
  let roundTripFailures = 0;
  const dec = new FrameDecoder(
    (f) => {
      // What decoded re-encodes to a frame that decodes to the same fields (checks 1-5 held);
      // checked on every 4th frame to keep the test within a few seconds.
      if ((++decoded & 3) === 0) {
        const again = decodeChunk(encodeFrame(f).subarray(0, -1));
        if (!again.ok || again.frame.version !== f.version || again.frame.type !== f.type || again.frame.seq !== f.seq || !again.frame.payload.equals(f.payload)) roundTripFailures++;
      }
      for (const dir of ['toHost', 'toMcu'] as const) {
        const r = checkFrame(f, dir);
        if (r.ok) ok++;
        else errors[r.error]++;
      }
    },
    (k) => {
      errors[k]++;
    },
  );
  const TOTAL = 1_000_000;
  const BATCH = 4096;
  let sent = 0;
  let delimiters = 0;
  const t0 = performance.now();
  const buf = Buffer.allocUnsafe(BATCH * 300);
  while (sent < TOTAL) {
    let off = 0;
    for (let i = 0; i < BATCH; i++) {
      const pick = rnd();
      const base = pool[Math.floor(rnd() * pool.length)]!;
      if (pick < 0.15) {
        // Pure random bytes with a delimiter at the end.
        const n = 1 + Math.floor(rnd() * 280);
        for (let k = 0; k < n; k++) buf[off + k] = Math.floor(rnd() * 256);
        off += n;
        buf[off++] = 0;
      } else if (pick < 0.55) {
        // A valid frame with 1..4 flipped bytes (the delimiter kept, zeros may appear inside).
        base.copy(buf, off);
        const flips = 1 + Math.floor(rnd() * 4);
        for (let k = 0; k < flips; k++) buf[off + Math.floor(rnd() * (base.length - 1))] ^= 1 + Math.floor(rnd() * 255);
        off += base.length;
      } else if (pick < 0.7) {
        // Truncated: the frame's head, then the delimiter.
        const n = Math.floor(rnd() * (base.length - 1));
        base.copy(buf, off, 0, n);
        off += n;
        buf[off++] = 0;
      } else if (pick < 0.85) {
        // Well-formed (COBS, CRC) but with a hostile header: any version, type or length.
        const w = hostileFrame(rnd);
        w.copy(buf, off);
        off += w.length;
      } else {
        // An intact frame (so the happy path is fuzzed too), sometimes two glued without delimiter.
        base.copy(buf, off, 0, rnd() < 0.1 ? base.length - 1 : base.length);
        off += rnd() < 0.1 ? base.length - 1 : base.length;
      }
    }
    const chunk = buf.subarray(0, off);
    for (let k = chunk.indexOf(0); k !== -1; k = chunk.indexOf(0, k + 1)) delimiters++;
    // Feed in uneven pieces, like serial reads.
    let p = 0;
    while (p < chunk.length) {
      const n = 1 + Math.floor(rnd() * 2048);
      dec.push(chunk.subarray(p, p + n));
      p += n;
      assert.ok(dec.buffered() <= MAX_ENCODED);
    }
    sent += BATCH;
  }
  const ms = performance.now() - t0;
  const c = dec.counters;
  assert.equal(roundTripFailures, 0);
  // Every non-empty chunk ended as exactly one frame or one codec error (empty chunks are ignored).
  assert.ok(c.frames + c.oversize + c.cobs + c.short + c.crc <= delimiters);
  assert.ok(c.frames > 100_000, `frames decoded: ${c.frames}`);
  for (const k of ['oversize', 'cobs', 'short', 'crc', 'version', 'type', 'length'] as const) assert.ok(errors[k] > 0, `some ${k} errors (${JSON.stringify(errors)})`);
  assert.ok(ok > 0);
  assert.ok(sent >= 1_000_000);
  assert.ok(ms < 20_000, `fuzzing took ${ms.toFixed(0)} ms`);
});

test('a live session survives 30 000 hostile frames, counts them, and still works', async () => {
  const clock = new FakeClock();
  const rnd = xorshift(7);
  const mcu = new SimMcu({ clock });
  let far: Duplex | null = null;
  const opener = new DuplexOpener(() => {
    const [a, b] = duplexPair();
    mcu.attach(b);
    far = b;
    return a;
  });
  const s = new BridgeSession({ link: { path: 'fuzz0', baudRate: 115200 }, opener, clock, random: rnd });
  let samples = 0;
  s.on('samples', () => samples++);
  s.subscribe(Symbol('t'), 0, 100);
  await s.start();
  await clock.advanceAsync(300, 10);
  assert.equal(s.state, 'established');
  // Hostile traffic from the "MCU" side: valid frames of every kind with random fields (stray
  // ACKs, NACK 6, foreign HELLO_ACKs, samples of absent channels), plus garbage and damage.
  for (let i = 0; i < 30_000; i++) {
    const m = randomMessage(rnd);
    let w = encodeMessage(m, Math.floor(rnd() * 65536));
    const r = rnd();
    if (r < 0.2) w = Buffer.concat([Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256))), w]);
    else if (r < 0.3) w = damage(w, rnd);
    else if (r < 0.4) w = hostileFrame(rnd);
    far!.write(w);
    if (i % 1000 === 0) await clock.advanceAsync(5, 5);
  }
  await clock.advanceAsync(50, 5);
  const st = s.stats();
  assert.ok(st.framesIn > 10_000 && st.type > 1000, `framesIn ${st.framesIn}, type ${st.type}`);
  assert.ok(st.cobs + st.crc + st.short + st.oversize > 0);
  assert.ok(st.strayAcks > 0 && st.lostFrames > 0 && st.seqResets > 0 && st.unknownChannel > 0, JSON.stringify(st));
  // Random NACK 6 made it re-handshake; whatever happened, it must come back and work.
  mcu.reset();
  await clock.advanceAsync(6000, 20);
  assert.equal(s.state, 'established', JSON.stringify(s.stats()));
  const before = samples;
  await clock.advanceAsync(500, 10);
  assert.ok(samples > before, 'samples flow again');
  await s.set(0, 77);
  assert.equal(mcu.output(0), 77);
  await s.stop();
  mcu.stop();
});

/** Damages a wire frame's middle byte but keeps it delimiter-clean. */
function damage(w: Buffer, rnd: () => number): Buffer {
  const out = Buffer.from(w);
  const i = Math.floor(rnd() * (out.length - 1));
  out[i] = out[i]! ^ 0x20 || 1;
  return out;
}

test('the simulated MCU survives the same hostile input from a host', async () => {
  const clock = new FakeClock();
  const rnd = xorshift(99);
  const mcu = new SimMcu({ clock });
  const [host, dev] = duplexPair();
  mcu.attach(dev);
  let bytes = 0;
  host.on('data', (c: Buffer) => (bytes += c.length));
  for (let i = 0; i < 20_000; i++) {
    const r = rnd();
    const w =
      r < 0.4
        ? encodeMessage(randomMessage(rnd), i & 0xffff)
        : r < 0.7
          ? hostileFrame(rnd)
          : Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 255) + 1));
    host.write(rnd() < 0.5 ? w : Buffer.concat([w, Buffer.from([0])]));
    if (i % 2000 === 0) await clock.advanceAsync(5, 5);
  }
  await clock.advanceAsync(100, 10);
  const st = mcu.stats();
  assert.ok(st.nacksSent > 1000, JSON.stringify(st));
  assert.ok(st.badChunks > 1000);
  assert.ok(bytes > 0);
  mcu.stop();
  host.destroy();
});
