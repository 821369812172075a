/**
 * Throughput of the serial parsers, in MB/s of input, each against the raw limit of
 * walking the same bytes in the same run:
 * - CSV lines vs. raw `Buffer.indexOf('\n')` line scanning;
 * - binary records (with sync bytes) vs. a raw loop over the record boundaries.
 * ratio = parser MB/s / raw MB/s (1.0 would mean parsing costs nothing beyond finding records).
 * Input is fed in 4 KiB chunks, the size of a typical serial read burst.
 */
import { interleave, result, type BenchOptions, type BenchResult } from './lib.ts';
import { BinaryRecordParser, CsvParser, type RecordValues } from '../drivers/serial/parse.ts';

const CHUNK = 4096;

function chunks(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += CHUNK) out.push(data.subarray(i, i + CHUNK));
  return out;
}

// Deterministic pseudo-random numbers, so every run parses the same bytes.
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** IMU-like CSV: 6 columns, 3 decimals, about 45 bytes a line. */
function csvData(bytes: number): Buffer {
  const rnd = lcg(1);
  const lines: string[] = [];
  let n = 0;
  while (n < bytes) {
    const line = `${(rnd() * 20 - 10).toFixed(3)},${(rnd() * 20 - 10).toFixed(3)},${(rnd() * 20 - 10).toFixed(3)},${(rnd() * 500 - 250).toFixed(2)},${(rnd() * 500 - 250).toFixed(2)},${Math.round(rnd() * 4096)}\n`;
    lines.push(line);
    n += line.length;
  }
  return Buffer.from(lines.join(''));
}

const LAYOUT = {
  recordSize: 16,
  sync: 'A55A',
  fields: [
    { name: 'ax', type: 'int16le', offset: 2, scale: 1 / 1024 },
    { name: 'ay', type: 'int16le', offset: 4, scale: 1 / 1024 },
    { name: 'az', type: 'int16le', offset: 6, scale: 1 / 1024 },
    { name: 'temp', type: 'float32le', offset: 8 },
    { name: 'seq', type: 'uint32le', offset: 12 },
  ],
};

function binaryData(bytes: number): Buffer {
  const rnd = lcg(2);
  const n = Math.floor(bytes / 16);
  const b = Buffer.alloc(n * 16);
  for (let i = 0; i < n; i++) {
    const o = i * 16;
    b[o] = 0xa5;
    b[o + 1] = 0x5a;
    b.writeInt16LE(Math.round(rnd() * 60000 - 30000), o + 2);
    b.writeInt16LE(Math.round(rnd() * 60000 - 30000), o + 4);
    b.writeInt16LE(Math.round(rnd() * 60000 - 30000), o + 6);
    b.writeFloatLE(rnd() * 80 - 20, o + 8);
    b.writeUInt32LE(i, o + 12);
  }
  return b;
}

const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

/** Benchmark entry point. */
export default async function serialParseBench(opts: BenchOptions): Promise<BenchResult[]> {
  const size = opts.quick ? 1 << 20 : 4 << 20;
  const rounds = opts.quick ? 5 : 15;
  const results: BenchResult[] = [];
  let sink = 0; // consumed so the work cannot be optimized away

  const text = csvData(size);
  const textChunks = chunks(text);
  let records = 0;
  const onRecord = (v: RecordValues) => {
    records++;
    sink += v.ax;
  };
  // Raw: count lines with indexOf across the same chunks (a line may span chunks).
  const rawLines = () => {
    let lines = 0;
    for (const c of textChunks) {
      let p = c.indexOf(10);
      while (p !== -1) {
        lines++;
        p = c.indexOf(10, p + 1);
      }
    }
    sink += lines;
  };
  const csv = () => {
    const p = new CsvParser(['ax', 'ay', 'az', 'gx', 'gy', 'n']);
    for (const c of textChunks) p.feed(c, onRecord);
  };
  csv();
  rawLines(); // warm-up
  const [csvMs, rawTextMs] = await interleave(rounds, csv, rawLines);
  results.push(result('serial csv parse', mbps(text.length, csvMs), 'MB/s', mbps(text.length, rawTextMs)));

  const bin = binaryData(size);
  const binChunks = chunks(bin);
  // Raw: touch the first byte of every record boundary across the same chunks.
  const rawRecords = () => {
    let acc = 0;
    let off = 0; // offset of the next record start within the current chunk
    for (const c of binChunks) {
      let p = off;
      for (; p < c.length; p += 16) acc += c[p];
      off = p - c.length;
    }
    sink += acc;
  };
  const binary = () => {
    const p = new BinaryRecordParser(LAYOUT);
    for (const c of binChunks) p.feed(c, onRecord);
  };
  binary();
  rawRecords();
  const [binMs, rawBinMs] = await interleave(rounds, binary, rawRecords);
  results.push(result('serial binary parse', mbps(bin.length, binMs), 'MB/s', mbps(bin.length, rawBinMs)));

  if (sink === 0.123456789 && records < 0) console.log(sink); // never true; keeps `sink` live
  return results;
}
