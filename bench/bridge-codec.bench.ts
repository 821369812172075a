/**
 * Throughput of the firmware bridge codec (docs/firmware-bridge.md §1), in MB/s of wire
 * bytes, each against a raw limit measured in the same run on the same bytes:
 * - streaming decode (COBS, CRC, frames) vs. raw framing: `indexOf(0)` to find every
 *   delimiter and a `Buffer.copy` of every chunk, the least work any framed reader does;
 * - decode plus typed payloads (SAMPLE values) vs. the same raw framing;
 * - encode of SAMPLE messages vs. raw `Buffer.copy` of the same wire bytes.
 * ratio = codec MB/s / raw MB/s. The goal is at least 500 times a 921600-baud wire
 * (92 160 bytes/s), that is 46 MB/s for decoding. Input is fed in 4 KiB chunks, the size
 * of a typical serial read burst.
 */
import { interleave, result, type BenchOptions, type BenchResult } from './lib.ts';
import { FrameDecoder, MAX_ENCODED } from '../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, type Message, type SampleMsg } from '../firmware-bridge/messages.ts';

const CHUNK = 4096;
/** 500 x a 921600-baud wire (8N1: 92 160 bytes/s), MB/s. */
export const GOAL_MBPS = (500 * 921_600) / 10 / 1e6;

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A realistic MCU stream: SAMPLE frames of 10 and 100 values (ADC counts), heartbeats between. */
function messages(bytes: number): { msgs: Message[]; wire: Buffer } {
  const rnd = lcg(7);
  const msgs: Message[] = [];
  const parts: Buffer[] = [];
  let n = 0;
  let seq = 0;
  let t = 0;
  while (n < bytes) {
    const count = rnd() < 0.5 ? 10 : 100;
    const m: Message =
      rnd() < 0.05
        ? { kind: 'heartbeat', flags: 0 }
        : { kind: 'sample', channel: Math.floor(rnd() * 8), t0Us: t >>> 0, periodUs: 1000, values: Array.from({ length: count }, () => Math.floor(rnd() * 1024)) };
    t += 10_000;
    const w = encodeMessage(m, seq);
    seq = (seq + 1) & 0xffff;
    msgs.push(m);
    parts.push(w);
    n += w.length;
  }
  return { msgs, wire: Buffer.concat(parts) };
}

function chunks(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += CHUNK) out.push(data.subarray(i, i + CHUNK));
  return out;
}

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

/** Benchmark entry point. */
export default async function bridgeCodecBench(opts: BenchOptions): Promise<BenchResult[]> {
  const size = opts.quick ? 2 << 20 : 8 << 20;
  const rounds = opts.quick ? 5 : 15;
  const { msgs, wire } = messages(size);
  const parts = chunks(wire);
  let sink = 0;

  // Raw framing: find each delimiter and copy each chunk out (a chunk may span reads).
  const scratch = Buffer.allocUnsafe(MAX_ENCODED * 2);
  const rawFraming = () => {
    let held = 0;
    let frames = 0;
    for (const c of parts) {
      let p = 0;
      for (let z = c.indexOf(0); z !== -1; z = c.indexOf(0, p)) {
        c.copy(scratch, held, p, z);
        frames++;
        held = 0;
        p = z + 1;
      }
      c.copy(scratch, held, p);
      held += c.length - p;
    }
    sink += frames;
  };
  let frames = 0;
  const decode = () => {
    const d = new FrameDecoder(() => frames++);
    for (const c of parts) d.push(c);
  };
  let values = 0;
  const decodeTyped = () => {
    const d = new FrameDecoder((f) => {
      const r = checkFrame(f, 'toHost');
      if (r.ok && r.msg.kind === 'sample') values += r.msg.values.length;
    });
    for (const c of parts) d.push(c);
  };
  decode();
  decodeTyped();
  rawFraming();
  if (frames !== msgs.length) throw new Error(`decoded ${frames} frames, expected ${msgs.length}`);

  const [decMs, rawMs] = await interleave(rounds, decode, rawFraming);
  const [typedMs, raw2Ms] = await interleave(rounds, decodeTyped, rawFraming);

  // Encode: messages to wire frames vs. copying the same wire bytes.
  const samples = msgs.filter((m): m is SampleMsg => m.kind === 'sample');
  const sampleWire = samples.reduce((n, m) => n + encodeMessage(m, 0).length, 0);
  const out = Buffer.allocUnsafe(wire.length);
  const encode = () => {
    let seq = 0;
    for (const m of samples) sink += encodeMessage(m, (seq = (seq + 1) & 0xffff)).length;
  };
  const rawCopy = () => {
    wire.copy(out, 0, 0, sampleWire);
    sink += out[sampleWire - 1]!;
  };
  encode();
  const [encMs, copyMs] = await interleave(rounds, encode, rawCopy);

  if (sink === 0.5 && values < 0) console.log(sink);
  return [
    result('bridge decode (COBS+CRC+frames)', mbps(wire.length, decMs), 'MB/s', mbps(wire.length, rawMs)),
    result('bridge decode + typed SAMPLE payloads', mbps(wire.length, typedMs), 'MB/s', mbps(wire.length, raw2Ms)),
    result('bridge decode vs goal (500x 921600 baud)', mbps(wire.length, decMs), 'MB/s', GOAL_MBPS),
    result('bridge encode SAMPLE frames', mbps(sampleWire, encMs), 'MB/s', mbps(sampleWire, copyMs)),
  ];
}
