/**
 * Generates firmware-bridge/vectors.json, the shared test vectors of the bridge protocol
 * (docs/firmware-bridge.md §10). Run `npx tsx firmware-bridge/make-vectors.ts` to rewrite
 * the file, `--check` to exit 1 when the checked-in file is stale.
 *
 * Published values are written here by hand and checked against the codec while
 * generating (CRC check 0x29B1 from the CRC catalogue; COBS examples from Cheshire & Baker
 * as listed on Wikipedia), so the file is not merely the codec agreeing with itself.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { cobsEncode, crc16, encodeFrame, encodeRaw, FrameDecoder, decodeChunk, MAX_ENCODED, type Frame, type FrameErrorKind } from './codec.ts';
import { checkFrame, encodePayload, typeOf, TYPE_NAMES, type Direction, type Message } from './messages.ts';

/** Where the vectors live. */
export const VECTORS_PATH = fileURLToPath(new URL('./vectors.json', import.meta.url));

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const bytes = (...parts: (number | number[] | Buffer)[]): Buffer =>
  Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(typeof p === 'number' ? [p] : p))));
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

function crcVectors() {
  const known: [string, Buffer, number | null][] = [
    ['catalogue check value: ASCII 123456789', Buffer.from('123456789', 'ascii'), 0x29b1],
    ['empty input: the init value', Buffer.alloc(0), 0xffff],
    ['one zero byte', Buffer.from([0x00]), null],
    ['one 0xFF byte', Buffer.from([0xff]), null],
    ['ASCII A', Buffer.from('A', 'ascii'), null],
    ['256 bytes 00..FF', Buffer.from(range(0, 255)), null],
    ['header of HELLO seq 0', Buffer.from([0x01, 0x01, 0x00, 0x00]), null],
  ];
  return known.map(([name, input, expect]) => {
    const crc = crc16(input);
    if (expect !== null && crc !== expect) throw new Error(`CRC of ${name}: expected ${expect.toString(16)}, codec gives ${crc.toString(16)}`);
    return { name, inputHex: hex(input), crc, crcHex: crc.toString(16).padStart(4, '0') };
  });
}

function cobsVectors() {
  // [name, decoded, expected encoding or null (then taken from the codec)]
  const cases: [string, Buffer, Buffer | null][] = [
    ['empty', bytes(), bytes(0x01)],
    ['one zero', bytes(0x00), bytes(0x01, 0x01)],
    ['two zeros', bytes(0x00, 0x00), bytes(0x01, 0x01, 0x01)],
    ['zero, byte, zero', bytes(0x00, 0x11, 0x00), bytes(0x01, 0x02, 0x11, 0x01)],
    ['zero inside', bytes(0x11, 0x22, 0x00, 0x33), bytes(0x03, 0x11, 0x22, 0x02, 0x33)],
    ['no zeros', bytes(0x11, 0x22, 0x33, 0x44), bytes(0x05, 0x11, 0x22, 0x33, 0x44)],
    ['trailing run of zeros', bytes(0x11, 0x00, 0x00, 0x00), bytes(0x02, 0x11, 0x01, 0x01, 0x01)],
    ['run of 10 zeros', Buffer.alloc(10), Buffer.alloc(11, 0x01)],
    ['254 non-zero bytes 01..FE: one FF block, no trailing 01', bytes(range(1, 254)), bytes(0xff, range(1, 254))],
    ['zero then 254 non-zero bytes', bytes(0x00, range(1, 254)), bytes(0x01, 0xff, range(1, 254))],
    ['255 non-zero bytes 01..FF', bytes(range(1, 255)), bytes(0xff, range(1, 254), 0x02, 0xff)],
    ['254 non-zero bytes then a zero', bytes(range(2, 255), 0x00), bytes(0xff, range(2, 255), 0x01, 0x01)],
    ['253 non-zero bytes, zero, 01', bytes(range(3, 255), 0x00, 0x01), bytes(0xfe, range(3, 255), 0x02, 0x01)],
    ['253 non-zero bytes', bytes(range(1, 253)), bytes(0xfe, range(1, 253))],
    ['508 non-zero bytes: two full blocks', Buffer.alloc(508, 0x42), bytes(0xff, Buffer.alloc(254, 0x42), 0xff, Buffer.alloc(254, 0x42))],
    ['246 bytes (largest raw frame) all 0x5A', Buffer.alloc(246, 0x5a), null],
    ['246 zero bytes', Buffer.alloc(246), null],
  ];
  return cases.map(([name, decoded, expected]) => {
    const enc = cobsEncode(decoded);
    if (expected && !enc.equals(expected)) throw new Error(`COBS of ${name}: expected ${hex(expected)}, codec gives ${hex(enc)}`);
    return { name, decodedHex: hex(decoded), encodedHex: hex(enc) };
  });
}

interface FrameCase {
  name: string;
  direction: Direction;
  seq: number;
  msg: Message;
}

const REF_HELLO_ACK: Message = {
  kind: 'helloAck',
  version: 1,
  nonce: 0x12345678,
  analogCount: 6,
  digitalCount: 2,
  maxRateHz: 1000,
  heartbeatTimeoutMs: 1000,
  outputs: [
    { pin: 9, kind: 1, safeValue: 0 },
    { pin: 13, kind: 0, safeValue: 0 },
    { pin: 10, kind: 1, safeValue: 128 },
  ],
  firmwareId: 'keel-ref-avr/1.0.0',
};

function frameCases(): FrameCase[] {
  return [
    { name: 'HELLO, seq 0', direction: 'toMcu', seq: 0, msg: { kind: 'hello', maxVersion: 1, nonce: 0x12345678 } },
    { name: 'HELLO from a newer host, seq 65535', direction: 'toMcu', seq: 65535, msg: { kind: 'hello', maxVersion: 3, nonce: 0xffffffff } },
    { name: 'HELLO_ACK of the reference firmware', direction: 'toHost', seq: 0, msg: REF_HELLO_ACK },
    {
      name: 'HELLO_ACK: no version in common, no outputs',
      direction: 'toHost',
      seq: 1,
      msg: { kind: 'helloAck', version: 0, nonce: 0, analogCount: 0, digitalCount: 0, maxRateHz: 0, heartbeatTimeoutMs: 500, outputs: [], firmwareId: 'x' },
    },
    {
      name: 'HELLO_ACK: 32 outputs, 64-character id',
      direction: 'toHost',
      seq: 2,
      msg: {
        kind: 'helloAck',
        version: 1,
        nonce: 0xa5a5a5a5,
        analogCount: 64,
        digitalCount: 64,
        maxRateHz: 65535,
        heartbeatTimeoutMs: 65535,
        outputs: range(0, 31).map((i) => ({ pin: i, kind: i % 2, safeValue: i % 2 ? 255 : 1 })),
        firmwareId: 'F'.repeat(64),
      },
    },
    { name: 'SAMPLE: one analog value', direction: 'toHost', seq: 5, msg: { kind: 'sample', channel: 0, t0Us: 1000, periodUs: 0, values: [512] } },
    {
      name: 'SAMPLE: four values across the 32-bit wrap, i16 extremes',
      direction: 'toHost',
      seq: 6,
      msg: { kind: 'sample', channel: 3, t0Us: 0xfffff000, periodUs: 1000, values: [0, 1023, -32768, 32767] },
    },
    { name: 'SAMPLE: digital channel', direction: 'toHost', seq: 7, msg: { kind: 'sample', channel: 6, t0Us: 250000, periodUs: 10000, values: [0, 1, 1, 0] } },
    {
      name: 'SAMPLE: 100 values (largest)',
      direction: 'toHost',
      seq: 0x1234,
      msg: { kind: 'sample', channel: 1, t0Us: 123456789, periodUs: 1000, values: range(0, 99).map((i) => (i * 37) % 1024) },
    },
    { name: 'SET: PWM output 0 to 255', direction: 'toMcu', seq: 3, msg: { kind: 'set', output: 0, value: 255 } },
    { name: 'SET: digital output 1 to 1', direction: 'toMcu', seq: 256, msg: { kind: 'set', output: 1, value: 1 } },
    { name: 'ACK of seq 3', direction: 'toHost', seq: 8, msg: { kind: 'ack', ackedSeq: 3 } },
    { name: 'ACK of seq 65535', direction: 'toHost', seq: 9, msg: { kind: 'ack', ackedSeq: 65535 } },
    { name: 'NACK not-ready of seq 3', direction: 'toHost', seq: 0, msg: { kind: 'nack', refusedSeq: 3, reason: 6 } },
    { name: 'NACK bad-value of seq 0x0100', direction: 'toHost', seq: 10, msg: { kind: 'nack', refusedSeq: 0x0100, reason: 2 } },
    { name: 'HEARTBEAT host to MCU', direction: 'toMcu', seq: 4, msg: { kind: 'heartbeat', flags: 0 } },
    { name: 'HEARTBEAT MCU to host, failsafe', direction: 'toHost', seq: 11, msg: { kind: 'heartbeat', flags: 1 } },
    { name: 'TIMESYNC request', direction: 'toMcu', seq: 5, msg: { kind: 'timesyncRequest', token: 0xdeadbeef } },
    { name: 'TIMESYNC reply', direction: 'toHost', seq: 12, msg: { kind: 'timesyncReply', token: 0xdeadbeef, mcuTimeUs: 0x00000000 } },
    { name: 'TIMESYNC reply, MCU clock about to wrap', direction: 'toHost', seq: 13, msg: { kind: 'timesyncReply', token: 1, mcuTimeUs: 0xffffffff } },
    { name: 'CONFIG channel 0 at 100 Hz', direction: 'toMcu', seq: 6, msg: { kind: 'config', channel: 0, rateHz: 100 } },
    { name: 'CONFIG channel 7 off', direction: 'toMcu', seq: 7, msg: { kind: 'config', channel: 7, rateHz: 0 } },
    { name: 'ERROR samples dropped', direction: 'toHost', seq: 14, msg: { kind: 'error', code: 1, text: 'sample buffer overflow' } },
    { name: 'ERROR with empty text', direction: 'toHost', seq: 15, msg: { kind: 'error', code: 255, text: '' } },
    { name: 'ERROR with 238-character text (240-byte payload, largest frame)', direction: 'toHost', seq: 16, msg: { kind: 'error', code: 4, text: 'e'.repeat(238) } },
  ];
}

function fieldsOf(msg: Message): Record<string, unknown> {
  const { kind: _kind, ...fields } = msg;
  return fields;
}

function frameVectors() {
  return frameCases().map((c) => {
    const payload = encodePayload(c.msg);
    const frame: Frame = { version: 1, type: typeOf(c.msg), seq: c.seq, payload };
    const raw = encodeRaw(frame);
    const wire = encodeFrame(frame);
    // Round trip, so a vector never states something the decoder would not return.
    const back = decodeChunk(wire.subarray(0, wire.length - 1));
    if (!back.ok) throw new Error(`frame ${c.name} does not decode: ${back.error}`);
    const checked = checkFrame(back.frame, c.direction);
    if (!checked.ok || JSON.stringify(checked.msg) !== JSON.stringify(c.msg)) throw new Error(`frame ${c.name} does not round-trip`);
    return {
      name: c.name,
      direction: c.direction,
      version: 1,
      type: frame.type,
      typeName: TYPE_NAMES[frame.type],
      kind: c.msg.kind,
      seq: c.seq,
      fields: fieldsOf(c.msg),
      payloadHex: hex(payload),
      rawHex: hex(raw),
      wireHex: hex(wire),
    };
  });
}

/** Wire bytes of a frame with arbitrary header and payload (valid CRC and COBS). */
function wireOf(version: number, type: number, seq: number, payload: number[] | Buffer): Buffer {
  return encodeFrame({ version, type, seq, payload: Buffer.from(payload) });
}

function withDelimiter(chunk: Buffer): Buffer {
  return Buffer.concat([chunk, Buffer.from([0])]);
}

interface InvalidCase {
  name: string;
  direction: Direction;
  wire: Buffer;
}

function invalidCases(): InvalidCase[] {
  const hello = wireOf(1, 1, 0, [1, 0x78, 0x56, 0x34, 0x12]);
  const crcFlipped = Buffer.from(hello);
  crcFlipped[crcFlipped.length - 2] ^= 0x01; // low bit of the CRC's high byte
  const payloadFlipped = Buffer.from(hello);
  payloadFlipped[6] ^= 0x80; // inside the nonce
  const sampleHeader = (n: number) => [0, 0, 0, 0, 0, 0, 0, n];
  return [
    { name: '248 non-zero bytes before the delimiter', direction: 'toMcu', wire: withDelimiter(Buffer.alloc(MAX_ENCODED + 1, 0x55)) },
    { name: '1000 non-zero bytes before the delimiter (counted once)', direction: 'toHost', wire: withDelimiter(Buffer.alloc(1000, 0xaa)) },
    { name: 'COBS code points past the end of the chunk', direction: 'toMcu', wire: bytes(0x05, 0x01, 0x02, 0x00) },
    { name: 'random garbage de ad be ef', direction: 'toHost', wire: bytes(0xde, 0xad, 0xbe, 0xef, 0x00) },
    { name: 'decodes to nothing (chunk 01)', direction: 'toMcu', wire: bytes(0x01, 0x00) },
    { name: 'decodes to 5 bytes', direction: 'toHost', wire: withDelimiter(cobsEncode(bytes(0x01, 0x07, 0x00, 0x00, 0xff))) },
    { name: 'truncated HELLO (last 3 encoded bytes lost)', direction: 'toMcu', wire: withDelimiter(hello.subarray(0, hello.length - 4)) },
    { name: 'HELLO with a flipped CRC bit', direction: 'toMcu', wire: crcFlipped },
    { name: 'HELLO with a flipped payload bit', direction: 'toMcu', wire: payloadFlipped },
    { name: 'HELLO as version 2', direction: 'toMcu', wire: wireOf(2, 1, 0, [2, 1, 0, 0, 0]) },
    { name: 'HEARTBEAT as version 0', direction: 'toMcu', wire: wireOf(0, 7, 9, [0]) },
    { name: 'HEARTBEAT as version 255, to host', direction: 'toHost', wire: wireOf(255, 7, 9, [0]) },
    { name: 'unknown type 0x0B', direction: 'toMcu', wire: wireOf(1, 0x0b, 1, []) },
    { name: 'unknown type 0x00', direction: 'toMcu', wire: wireOf(1, 0x00, 1, [1, 2, 3]) },
    { name: 'unknown type 0xFF, to host', direction: 'toHost', wire: wireOf(1, 0xff, 1, []) },
    { name: 'SAMPLE sent to the MCU (wrong direction)', direction: 'toMcu', wire: wireOf(1, 3, 1, [...sampleHeader(1), 0, 0]) },
    { name: 'ACK sent to the MCU (wrong direction)', direction: 'toMcu', wire: wireOf(1, 5, 1, [0, 0]) },
    { name: 'SET sent to the host (wrong direction)', direction: 'toHost', wire: wireOf(1, 4, 1, [0, 1, 0]) },
    { name: 'HELLO with a 4-byte payload', direction: 'toMcu', wire: wireOf(1, 1, 0, [1, 0, 0, 0]) },
    { name: 'SET with a 4-byte payload', direction: 'toMcu', wire: wireOf(1, 4, 2, [0, 1, 0, 0]) },
    { name: 'HEARTBEAT with an empty payload', direction: 'toMcu', wire: wireOf(1, 7, 3, []) },
    { name: 'TIMESYNC reply (8 bytes) sent to the MCU', direction: 'toMcu', wire: wireOf(1, 8, 4, [1, 0, 0, 0, 2, 0, 0, 0]) },
    { name: 'TIMESYNC request (4 bytes) sent to the host', direction: 'toHost', wire: wireOf(1, 8, 4, [1, 0, 0, 0]) },
    { name: 'CONFIG with a 2-byte payload', direction: 'toMcu', wire: wireOf(1, 9, 5, [0, 100]) },
    { name: 'HELLO_ACK truncated before the firmware id', direction: 'toHost', wire: wireOf(1, 2, 0, encodePayload(REF_HELLO_ACK).subarray(0, 22)) },
    { name: 'SAMPLE whose count says 3 but carries 2 values', direction: 'toHost', wire: wireOf(1, 3, 0, [...sampleHeader(3), 1, 0, 2, 0]) },
    { name: 'ERROR whose text length overruns the payload', direction: 'toHost', wire: wireOf(1, 0x0a, 0, [1, 10, 0x41]) },
    { name: 'SAMPLE with count 0', direction: 'toHost', wire: wireOf(1, 3, 0, sampleHeader(0)) },
    { name: 'SAMPLE with count 101', direction: 'toHost', wire: wireOf(1, 3, 0, [...sampleHeader(101), ...Buffer.alloc(202, 1)]) },
    {
      name: 'HELLO_ACK with output kind 2',
      direction: 'toHost',
      wire: wireOf(1, 2, 0, [1, 0, 0, 0, 0, 1, 0, 1, 100, 0, 0xe8, 0x03, 9, 2, 0, 1, 0x41]),
    },
    {
      name: 'HELLO_ACK with an empty firmware id',
      direction: 'toHost',
      wire: wireOf(1, 2, 0, [1, 0, 0, 0, 0, 1, 0, 0, 100, 0, 0xe8, 0x03, 0]),
    },
  ];
}

/** What a receiver in `direction` reports for one wire frame: error kind and MCU NACK reason. */
export function classify(wire: Buffer, direction: Direction): { error: FrameErrorKind | null; nack: number | null; frames: number } {
  let error: FrameErrorKind | null = null;
  let nack: number | null = null;
  let frames = 0;
  const dec = new FrameDecoder(
    (f) => {
      const r = checkFrame(f, direction);
      if (r.ok) frames++;
      else {
        error = r.error;
        nack = direction === 'toMcu' ? r.nack : null;
      }
    },
    (kind) => {
      error = kind;
    },
  );
  dec.push(wire);
  return { error, nack, frames };
}

function invalidVectors() {
  return invalidCases().map((c) => {
    const r = classify(c.wire, c.direction);
    if (r.error === null || r.frames !== 0) throw new Error(`invalid case ${c.name} decodes cleanly`);
    return { name: c.name, direction: c.direction, wireHex: hex(c.wire), error: r.error, nack: r.nack };
  });
}

function streamVectors() {
  const f = (seq: number) => wireOf(1, 7, seq, [0]); // a HEARTBEAT from the MCU
  const streams: [string, Buffer][] = [
    ['garbage then a frame', Buffer.concat([bytes(0xde, 0xad, 0xbe, 0xef, 0x00), f(0)])],
    ['leading delimiter, two frames, empty chunks ignored', Buffer.concat([bytes(0x00), f(0), bytes(0x00, 0x00), f(1), bytes(0x00)])],
    ['truncated frame merges with the next one; the third survives', Buffer.concat([f(0).subarray(0, 3), f(1), f(2)])],
    ['300 non-zero bytes, then a frame', Buffer.concat([Buffer.alloc(300, 0x55), bytes(0x00), f(5)])],
    ['frame, 2000 bytes of 0xAA, delimiter, frame', Buffer.concat([f(0), Buffer.alloc(2000, 0xaa), bytes(0x00), f(1)])],
    ['frame with a corrupted CRC between two good ones', Buffer.concat([f(0), (() => { const b = Buffer.from(f(1)); b[b.length - 2] ^= 0xff; return b; })(), f(2)])],
    ['every byte value 00..FF, a delimiter, then a frame', Buffer.concat([Buffer.from(range(0, 255)), bytes(0x00), f(9)])],
  ];
  return streams.map(([name, wire]) => {
    const frames: string[] = [];
    const errors: Record<string, number> = {};
    const dec = new FrameDecoder(
      (fr) => frames.push(hex(encodeRaw(fr))),
      (k) => {
        errors[k] = (errors[k] ?? 0) + 1;
      },
    );
    dec.push(wire);
    return { name, wireHex: hex(wire), frames, errors };
  });
}

/** Builds the whole vectors document (deterministic). */
export function buildVectors(): unknown {
  return {
    schema: 'keel-firmware-bridge-vectors/1',
    spec: 'docs/firmware-bridge.md',
    generatedBy: 'firmware-bridge/make-vectors.ts',
    protocolVersion: 1,
    limits: { maxPayload: 240, minRaw: 6, maxRaw: 246, maxEncoded: 247, maxWire: 248, maxSampleValues: 100, maxOutputs: 32, maxFirmwareId: 64, maxErrorText: 238 },
    crcAlgorithm: { name: 'CRC-16/IBM-3740', width: 16, poly: 0x1021, init: 0xffff, refin: false, refout: false, xorout: 0, check: 0x29b1, byteOrder: 'little-endian' },
    crc: crcVectors(),
    cobs: cobsVectors(),
    frames: frameVectors(),
    invalid: invalidVectors(),
    streams: streamVectors(),
  };
}

/** The vectors document as written to disk (2-space JSON, trailing newline). */
export function renderVectors(): string {
  return JSON.stringify(buildVectors(), null, 2) + '\n';
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = renderVectors();
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(VECTORS_PATH, 'utf8');
    } catch {
      // missing counts as stale
    }
    if (current !== text) {
      process.stderr.write(`${VECTORS_PATH} is stale; run npx tsx firmware-bridge/make-vectors.ts\n`);
      process.exit(1);
    }
    process.stdout.write(`${VECTORS_PATH} is up to date\n`);
  } else {
    writeFileSync(VECTORS_PATH, text);
    process.stdout.write(`wrote ${VECTORS_PATH}\n`);
  }
}
