/**
 * The codec against the shared vectors (firmware-bridge/vectors.json, the same file the C
 * firmware tests against), plus published values written here by hand, so a bug that the
 * generator and the codec share cannot hide.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  cobsDecode,
  cobsEncode,
  crc16,
  decodeChunk,
  encodeFrame,
  FrameDecoder,
  MAX_ENCODED,
  MAX_WIRE,
} from '../../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, encodePayload, typeOf, type Direction, type Message } from '../../firmware-bridge/messages.ts';
import { renderVectors, VECTORS_PATH, classify } from '../../firmware-bridge/make-vectors.ts';

interface Vectors {
  schema: string;
  crc: { name: string; inputHex: string; crc: number; crcHex: string }[];
  cobs: { name: string; decodedHex: string; encodedHex: string }[];
  frames: { name: string; direction: Direction; version: number; type: number; kind: Message['kind']; seq: number; fields: Record<string, unknown>; payloadHex: string; rawHex: string; wireHex: string }[];
  invalid: { name: string; direction: Direction; wireHex: string; error: string; nack: number | null }[];
  streams: { name: string; wireHex: string; frames: string[]; errors: Record<string, number> }[];
}

const text = readFileSync(VECTORS_PATH, 'utf8');
const V = JSON.parse(text) as Vectors;
const hex = (s: string) => Buffer.from(s, 'hex');

test('the checked-in vectors are exactly what make-vectors.ts generates', () => {
  assert.equal(text, renderVectors(), 'stale: run npx tsx firmware-bridge/make-vectors.ts');
  assert.equal(V.schema, 'keel-firmware-bridge-vectors/1');
});

test('CRC-16/IBM-3740: the catalogue check value and every vector', () => {
  assert.equal(crc16(Buffer.from('123456789')), 0x29b1); // published check value
  assert.equal(crc16(Buffer.alloc(0)), 0xffff);
  assert.equal(crc16(Buffer.from('A')), 0xb915); // CCITT-FALSE of "A", a commonly published value
  for (const v of V.crc) assert.equal(crc16(hex(v.inputHex)), v.crc, v.name);
  assert.ok(V.crc.length >= 5);
});

test('COBS: published examples, then every vector both ways', () => {
  // Cheshire & Baker examples as listed on Wikipedia's COBS page.
  assert.equal(cobsEncode(hex('00')).toString('hex'), '0101');
  assert.equal(cobsEncode(hex('11220033')).toString('hex'), '0311220233');
  assert.equal(cobsEncode(hex('11000000')).toString('hex'), '0211010101');
  const b254 = Buffer.from(Array.from({ length: 254 }, (_, i) => i + 1));
  assert.equal(cobsEncode(b254).toString('hex'), 'ff' + b254.toString('hex'));
  for (const v of V.cobs) {
    assert.equal(cobsEncode(hex(v.decodedHex)).toString('hex'), v.encodedHex, `encode ${v.name}`);
    assert.equal(cobsDecode(hex(v.encodedHex)).toString('hex'), v.decodedHex, `decode ${v.name}`);
    assert.ok(!hex(v.encodedHex).includes(0), `${v.name}: no zero in the encoding`);
  }
  const names = V.cobs.map((v) => v.name).join('\n');
  assert.match(names, /254 non-zero/);
  assert.match(names, /run of 10 zeros/);
  assert.throws(() => cobsDecode(hex('0501')), RangeError);
  assert.throws(() => cobsDecode(hex('020011')), RangeError);
});

test('every frame vector encodes from its fields and decodes back to them', () => {
  const kinds = new Set<string>();
  for (const v of V.frames) {
    const msg = { kind: v.kind, ...v.fields } as Message;
    kinds.add(`${v.type}:${v.kind}`);
    assert.equal(typeOf(msg), v.type, v.name);
    assert.equal(encodePayload(msg).toString('hex'), v.payloadHex, `payload ${v.name}`);
    const wire = encodeMessage(msg, v.seq, v.version);
    assert.equal(wire.toString('hex'), v.wireHex, `wire ${v.name}`);
    assert.ok(wire.length <= MAX_WIRE, `${v.name}: at most ${MAX_WIRE} bytes`);
    const r = decodeChunk(wire.subarray(0, -1));
    assert.ok(r.ok, v.name);
    if (!r.ok) continue;
    assert.equal(encodeFrame(r.frame).toString('hex'), v.wireHex);
    assert.equal(r.frame.seq, v.seq);
    const c = checkFrame(r.frame, v.direction);
    assert.ok(c.ok, v.name);
    if (c.ok) assert.deepEqual(c.msg, msg, v.name);
  }
  // One or more per message type (TIMESYNC both ways).
  for (const k of ['1:hello', '2:helloAck', '3:sample', '4:set', '5:ack', '6:nack', '7:heartbeat', '8:timesyncRequest', '8:timesyncReply', '9:config', '10:error']) {
    assert.ok(kinds.has(k), `a vector for ${k}`);
  }
  const largest = V.frames.find((f) => f.name.includes('largest frame'))!;
  assert.equal(hex(largest.wireHex).length, MAX_WIRE);
});

test('every invalid vector gives its error kind and NACK reason', () => {
  const kinds = new Set<string>();
  for (const v of V.invalid) {
    const r = classify(hex(v.wireHex), v.direction);
    assert.equal(r.error, v.error, v.name);
    assert.equal(r.nack, v.nack, v.name);
    assert.equal(r.frames, 0, v.name);
    kinds.add(v.error);
  }
  assert.deepEqual([...kinds].sort(), ['cobs', 'crc', 'length', 'oversize', 'short', 'type', 'value', 'version']);
});

test('every stream vector delivers its frames and errors, in any split', () => {
  for (const v of V.streams) {
    const wire = hex(v.wireHex);
    for (const split of [wire.length, 1, 3, 7, 64]) {
      const frames: string[] = [];
      const errors: Record<string, number> = {};
      const dec = new FrameDecoder(
        (f) => frames.push(encodeFrameRaw(f)),
        (k) => {
          errors[k] = (errors[k] ?? 0) + 1;
        },
      );
      for (let i = 0; i < wire.length; i += split) dec.push(wire.subarray(i, i + split));
      assert.deepEqual(frames, v.frames, `${v.name} (split ${split})`);
      assert.deepEqual(errors, v.errors, `${v.name} (split ${split})`);
      assert.ok(dec.buffered() <= MAX_ENCODED);
    }
  }
});

function encodeFrameRaw(f: { version: number; type: number; seq: number; payload: Buffer }): string {
  const raw = Buffer.alloc(4 + f.payload.length + 2);
  raw[0] = f.version;
  raw[1] = f.type;
  raw.writeUInt16LE(f.seq, 2);
  f.payload.copy(raw, 4);
  raw.writeUInt16LE(crc16(raw, 0, raw.length - 2), raw.length - 2);
  return raw.toString('hex');
}

test('encoders refuse out-of-range fields, naming them', () => {
  assert.throws(() => encodePayload({ kind: 'set', output: 256, value: 1 }), /output/);
  assert.throws(() => encodePayload({ kind: 'sample', channel: 0, t0Us: 0, periodUs: 0, values: [] }), /values/);
  assert.throws(() => encodePayload({ kind: 'sample', channel: 0, t0Us: 0, periodUs: 0, values: new Array(101).fill(0) }), /values/);
  assert.throws(() => encodePayload({ kind: 'error', code: 1, text: 'x'.repeat(239) }), /text/);
  assert.throws(() => encodePayload({ kind: 'error', code: 1, text: 'tab\there' }), /printable/);
  assert.throws(() => encodeFrame({ version: 1, type: 1, seq: 70000, payload: Buffer.alloc(0) }), /seq/);
  assert.throws(() => encodeFrame({ version: 1, type: 1, seq: 0, payload: Buffer.alloc(241) }), /payload/);
});
