import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../runtime/errors.ts';
import {
  BinaryRecordParser,
  CsvParser,
  JsonLinesParser,
  KeyValueParser,
  createParser,
  formatIssues,
  parseNumber,
  type RecordParser,
  type RecordValues,
} from '../../drivers/serial/parse.ts';

/** Feeds `chunks` and returns every record. */
function run(p: RecordParser, ...chunks: (Buffer | string)[]): RecordValues[] {
  const out: RecordValues[] = [];
  for (const c of chunks) p.feed(Buffer.isBuffer(c) ? c : Buffer.from(c), (v) => out.push(v));
  return out;
}

/** Feeds `data` split at every possible single point and checks each result against one-shot parsing. */
function everySplit(make: () => RecordParser, data: Buffer): RecordValues[] {
  const ref = make();
  const expected = run(ref, data);
  for (let cut = 0; cut <= data.length; cut++) {
    const p = make();
    const got = run(p, data.subarray(0, cut), data.subarray(cut));
    assert.deepEqual(got, expected, `split at ${cut}`);
    assert.deepEqual(p.counters, ref.counters, `counters, split at ${cut}`);
  }
  // And byte by byte.
  const p = make();
  const got: RecordValues[] = [];
  for (let i = 0; i < data.length; i++) p.feed(data.subarray(i, i + 1), (v) => got.push(v));
  assert.deepEqual(got, expected, 'byte by byte');
  assert.deepEqual(p.counters, ref.counters, 'counters byte by byte');
  return expected;
}

test('parseNumber agrees with Number() bit for bit on valid decimal text', () => {
  const cases = [
    '0', '-0', '+0', '1', '-1', '42', '3.14159', '-2.5', '.5', '5.', '-.5', '1e3', '1E-3', '2.5e+10', '-7.25e-2',
    '0.1', '0.2', '0.3', '123456789012345', '1234567890123456789', '9007199254740993', '0.000000000000000000000001',
    '1e22', '1e23', '1e-22', '1e-23', '4.9e-324', '1.7976931348623157e308', '0.1e1', '00012', '000.000', '1e999', '-1e999',
    '  12.5  ', '\t-3\t', '123.456e2', '9.999999999999999', '0.30000000000000004', '1.000000000000000000000001',
  ];
  for (const s of cases) {
    const b = Buffer.from(s);
    assert.ok(Object.is(parseNumber(b, 0, b.length), Number(s)), `${JSON.stringify(s)}: ${parseNumber(b, 0, b.length)} vs ${Number(s)}`);
  }
  // Randomized: mantissas of up to 20 digits with exponents, against Number().
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const digits = (n: number) => Array.from({ length: n }, () => String(rnd(10))).join('');
  for (let i = 0; i < 20000; i++) {
    let s = (rnd(3) === 0 ? '-' : '') + digits(1 + rnd(10));
    if (rnd(2)) s += '.' + digits(rnd(12));
    if (rnd(3) === 0) s += 'e' + (rnd(2) ? '-' : '') + String(rnd(40));
    const b = Buffer.from(s);
    assert.ok(Object.is(parseNumber(b, 0, b.length), Number(s)), s);
  }
});

test('parseNumber rejects everything that is not a plain decimal', () => {
  for (const s of ['', ' ', '-', '+', '.', 'e5', '1e', '1e+', '0x1A', '0b101', '0o7', 'Infinity', '-Infinity', 'NaN', 'nan', '1,5', '1.2.3', '--1', '+-1', '1 2', '12abc', 'abc', '١٢', '1_000', '\u00001']) {
    const b = Buffer.from(s);
    assert.ok(Number.isNaN(parseNumber(b, 0, b.length)), JSON.stringify(s));
  }
});

test('csv: values by column, \\r stripped, spaces allowed, blank lines ignored', () => {
  const p = new CsvParser(['ax', 'ay', 'az']);
  const out = run(p, '1,2,3\n', '-1.5, 2e2 ,0.25\r\n', '\n\r\n', '4,5,6\n');
  assert.deepEqual(out, [
    { ax: 1, ay: 2, az: 3 },
    { ax: -1.5, ay: 200, az: 0.25 },
    { ax: 4, ay: 5, az: 6 },
  ]);
  assert.deepEqual(p.counters, { records: 3, dropped: 0, bytes: 32 });
});

test('csv: garbage, wrong column count, empty fields, non-numeric and invalid UTF-8 are dropped, never thrown', () => {
  const p = new CsvParser(['a', 'b'], ';');
  const lines = [
    '1;2', // ok
    '1;2;3', // too many
    '1', // too few
    '1;', // empty field
    ';2', // empty field
    'x;2', // letters
    '0x10;2', // hex
    'Infinity;1', // not finite
    '1e999;1', // overflows to Infinity
    '1,2', // wrong delimiter
    'hello world',
  ];
  const noise = Buffer.from([0x31, 0x3b, 0xff, 0xfe, 0x0a, 0x00, 0x00, 0x3b, 0x00, 0x0a, 0xc3, 0x28, 0x3b, 0x32, 0x0a]);
  const out = run(p, lines.join('\n') + '\n', noise, '3;4\n');
  assert.deepEqual(out, [{ a: 1, b: 2 }, { a: 3, b: 4 }]);
  assert.equal(p.counters.records, 2);
  assert.equal(p.counters.dropped, lines.length - 1 + 3);
});

test('csv: random binary noise is counted as dropped lines and never crashes', () => {
  const p = new CsvParser(['a', 'b', 'c']);
  let seed = 7;
  const noise = Buffer.alloc(200_000);
  for (let i = 0; i < noise.length; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    noise[i] = seed >> 16;
  }
  const out = run(p, noise, '\n1,2,3\n');
  // Whatever the noise produced, the good line after it parses and nothing was kept unboundedly.
  assert.deepEqual(out.at(-1), { a: 1, b: 2, c: 3 });
  assert.ok(p.counters.dropped > 0);
  assert.equal(p.buffered, 0);
});

test('overlong lines are dropped once and skipped up to the next newline, with bounded buffering', () => {
  const max = 32;
  const p = new CsvParser(['a', 'b'], ',', { maxLineBytes: max });
  const long = '1,' + '2'.repeat(1000);
  const out: RecordValues[] = [];
  // The long line arrives in small pieces; the parser must never hold more than `max` bytes.
  const data = Buffer.from(`1,2\n${long}\n3,4\n${'9'.repeat(max)}\n5,6`);
  for (let i = 0; i < data.length; i += 7) {
    p.feed(data.subarray(i, i + 7), (v) => out.push(v));
    assert.ok(p.buffered <= max, `buffered ${p.buffered}`);
  }
  p.feed(Buffer.from('\n'), (v) => out.push(v));
  assert.deepEqual(out, [{ a: 1, b: 2 }, { a: 3, b: 4 }, { a: 5, b: 6 }]);
  assert.equal(p.counters.dropped, 2); // the long line, and the 32-digit line (one column only)
  // A line of exactly maxLineBytes is accepted; one byte more is dropped.
  const q = new CsvParser(['a', 'b'], ',', { maxLineBytes: 8 });
  assert.deepEqual(run(q, '1234,567\n', '1234,5678\n'), [{ a: 1234, b: 567 }]);
  assert.equal(q.counters.dropped, 1);
  // A long line inside a single chunk is dropped the same way.
  const r = new CsvParser(['a'], ',', { maxLineBytes: 16 });
  assert.deepEqual(run(r, `${'1'.repeat(100)}\n7\n`), [{ a: 7 }]);
  assert.equal(r.counters.dropped, 1);
});

test('csv: records split across chunks at every possible point give the same result', () => {
  const data = Buffer.from('1,2,3\r\n-4.5,5e1,6\nbad line\n7,8,9\n\n10,11,12\n13,14');
  const out = everySplit(() => new CsvParser(['x', 'y', 'z']), data);
  assert.equal(out.length, 4);
});

test('reset() discards an unfinished line and counts it', () => {
  const p = new CsvParser(['a', 'b']);
  const out = run(p, '1,2\n3,');
  p.reset();
  run(p, '4\n5,6\n').forEach((v) => out.push(v));
  // "3," + "4" would have been a valid record; after reset the "4" alone is one column.
  assert.deepEqual(out, [{ a: 1, b: 2 }, { a: 5, b: 6 }]);
  assert.equal(p.counters.dropped, 2);
});

test('jsonl: numeric fields, whitelist, non-objects and invalid UTF-8 dropped', () => {
  const p = new JsonLinesParser();
  const out = run(
    p,
    '{"t":1,"temp":21.5,"label":"café","ok":true,"nested":{"x":1}}\n',
    '[1,2]\n',
    'null\n',
    '{"broken":\n',
    '{"__proto__":5,"constructor":7,"9bad":1}\n',
    Buffer.concat([Buffer.from('{"a":1,"s":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}\n')]),
    '{"only":"strings"}\n',
    '  {"a": -2e3}\n',
  );
  const want: RecordValues[] = [{ t: 1, temp: 21.5 }, { constructor: 7 }, { a: -2000 }];
  assert.deepEqual(out, want);
  assert.equal(Object.getPrototypeOf(out[1]), Object.prototype, 'no prototype pollution');
  assert.equal(p.counters.dropped, 5);

  const w = new JsonLinesParser(['temp', 'hum']);
  const out2 = run(w, '{"temp":20,"hum":40,"other":1}\n{"temp":21}\n{"temp":"22"}\n{"other":3}\n');
  assert.deepEqual(out2, [{ temp: 20, hum: 40 }, { temp: 21 }]);
  assert.equal(w.counters.dropped, 2);
  everySplit(() => new JsonLinesParser(['a', 'b']), Buffer.from('{"a":1,"b":2}\n{"a":"x"}\r\n{"b":3.5}\n{"a":1'));
});

test('kv: space, comma and semicolon separated pairs, configured separator, whitelist', () => {
  const p = new KeyValueParser();
  assert.deepEqual(run(p, 'a=1 b=2\n', 'a=1,b=2\n', 'a = 3 ; b=4\n', 'temp=21.5,hum=40\r\n'), [
    { a: 1, b: 2 },
    { a: 1, b: 2 },
    { a: 3, b: 4 },
    { temp: 21.5, hum: 40 },
  ]);
  const bad = ['a=1 b', 'a=x', '=1', '1a=2', 'a==1', 'a=1 b=', 'garbage', 'a=0x10', '__proto__=1'];
  const q = new KeyValueParser();
  assert.deepEqual(run(q, bad.join('\n') + '\n'), []);
  assert.equal(q.counters.dropped, bad.length);

  const c = new KeyValueParser(':', ['x', 'y']);
  assert.deepEqual(run(c, 'x:1 y:2 z:3\n', 'z:9\n', 'x:5\n'), [{ x: 1, y: 2 }, { x: 5 }]);
  assert.equal(c.counters.dropped, 1, 'a line with no whitelisted key');
  everySplit(() => new KeyValueParser('='), Buffer.from('a=1 b=2\nc=3,d=4\r\njunk\ne=5'));
});

// A record: A5 5A | int16le x | uint16be y | float32le z | uint8 n | int8 m  = 12 bytes
const LAYOUT = {
  recordSize: 12,
  sync: 'A55A',
  fields: [
    { name: 'x', type: 'int16le', offset: 2, scale: 0.5 },
    { name: 'y', type: 'uint16be', offset: 4 },
    { name: 'z', type: 'float32le', offset: 6 },
    { name: 'n', type: 'uint8', offset: 10 },
    { name: 'm', type: 'int8', offset: 11 },
  ],
};
function rec(x: number, y: number, z: number, n: number, m: number): Buffer {
  const b = Buffer.alloc(12);
  b[0] = 0xa5;
  b[1] = 0x5a;
  b.writeInt16LE(x, 2);
  b.writeUInt16BE(y, 4);
  b.writeFloatLE(z, 6);
  b[10] = n;
  b.writeInt8(m, 11);
  return b;
}

test('binary: typed fields at offsets with scale', () => {
  const p = new BinaryRecordParser(LAYOUT);
  const out = run(p, Buffer.concat([rec(-200, 65535, 1.5, 255, -128), rec(7, 1, -0.25, 0, 127)]));
  assert.deepEqual(out, [
    { x: -100, y: 65535, z: 1.5, n: 255, m: -128 },
    { x: 3.5, y: 1, z: -0.25, n: 0, m: 127 },
  ]);
  assert.deepEqual(p.counters, { records: 2, dropped: 0, bytes: 24 });
});

test('binary: resynchronizes on the sync bytes after noise, one drop per noise run', () => {
  const p = new BinaryRecordParser(LAYOUT);
  const noise1 = Buffer.from([0x01, 0x02, 0xa5, 0x03, 0x5a, 0xff]); // a lone A5, not A5 5A
  const noise2 = Buffer.from('line noise without the pattern');
  const data = Buffer.concat([noise1, rec(1, 2, 3, 4, 5), noise2, rec(6, 7, 8, 9, 10), Buffer.from([0xa5]), rec(11, 12, 13, 14, 15)]);
  const out = run(p, data);
  assert.deepEqual(
    out.map((v) => v.n),
    [4, 9, 14],
  );
  assert.equal(p.counters.dropped, 3);
  // Every split point gives the same records and counters.
  everySplit(() => new BinaryRecordParser(LAYOUT), data);
});

test('binary: after a record cut short, the parser loses at most the next record and then locks on again', () => {
  // Without a checksum a truncated record that starts with the sync bytes cannot be told from
  // a whole one: it swallows the start of the next record. The one after must come through.
  const cut = rec(9, 9, 9, 9, 9).subarray(0, 7);
  const data = Buffer.concat([rec(1, 1, 1, 1, 1), cut, rec(2, 2, 2, 2, 2), rec(3, 3, 3, 3, 3), rec(4, 4, 4, 4, 4)]);
  const out = everySplit(() => new BinaryRecordParser(LAYOUT), data);
  const ns = out.map((v) => v.n);
  assert.equal(ns[0], 1);
  assert.deepEqual(ns.slice(-2), [3, 4]);
  assert.ok(out.length <= 4);
});

test('binary: long noise without sync is skipped with bounded buffering; NaN floats dropped', () => {
  const p = new BinaryRecordParser(LAYOUT);
  const out: RecordValues[] = [];
  for (let i = 0; i < 100; i++) {
    p.feed(Buffer.alloc(1000, 0x33), (v) => out.push(v));
    assert.ok(p.buffered < 12);
  }
  const nan = rec(1, 1, 0, 1, 1);
  nan.writeFloatLE(NaN, 6);
  p.feed(Buffer.concat([nan, rec(1, 1, 1, 42, 1)]), (v) => out.push(v));
  assert.deepEqual(out.map((v) => v.n), [42]);
  assert.equal(p.counters.dropped, 2); // one noise run, one NaN record
});

test('binary without sync: fixed framing from the first byte; big-endian and 32-bit types', () => {
  const layout = {
    recordSize: 8,
    fields: [
      { name: 'a', type: 'int32be', offset: 0 },
      { name: 'b', type: 'uint32le', offset: 4, scale: 2 },
    ],
  };
  const b = Buffer.alloc(16);
  b.writeInt32BE(-5, 0);
  b.writeUInt32LE(4_000_000_000, 4);
  b.writeInt32BE(123, 8);
  b.writeUInt32LE(1, 12);
  const out = everySplit(() => new BinaryRecordParser(layout), Buffer.concat([b, Buffer.from([1, 2, 3])]));
  assert.deepEqual(out, [{ a: -5, b: 8_000_000_000 }, { a: 123, b: 2 }]);
});

test('invalid formats throw ConfigError listing every problem with its path', () => {
  const issues = formatIssues({
    type: 'binary',
    recordSize: 6,
    sync: 'A55',
    fields: [
      { name: 'a', type: 'int32le', offset: 4, scale: 1 },
      { name: 'a', type: 'int64le', offset: 0, scale: 1 },
    ],
  });
  const paths = issues.map((i) => i.path).sort();
  assert.deepEqual(paths, ['fields[0].offset', 'fields[1].name', 'fields[1].type', 'sync']);
  assert.throws(() => createParser({ type: 'csv', columns: ['a', 'a'], delimiter: '.' }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.deepEqual(err.issues.map((i) => i.path), ['columns[1]', 'delimiter']);
    return true;
  });
  assert.throws(() => createParser({ type: 'kv', separator: ',' }), ConfigError);
  assert.throws(() => createParser({ type: 'nope' } as never), ConfigError);
  assert.throws(() => new CsvParser(['a'], ',', { maxLineBytes: 0 }), RangeError);
  const sync = formatIssues({ type: 'binary', recordSize: 2, sync: 'A55A', fields: [{ name: 'x', type: 'uint8', offset: 1, scale: 1 }] });
  assert.deepEqual(sync.map((i) => i.path), ['sync', 'fields[0].offset']);
});

test('createParser builds each configured format', () => {
  const csv = createParser({ type: 'csv', columns: ['a', 'b'], delimiter: '\t' }, { maxLineBytes: 64 });
  assert.deepEqual(run(csv, '1\t2\n'), [{ a: 1, b: 2 }]);
  const kv = createParser({ type: 'kv', separator: '=' });
  assert.deepEqual(run(kv, 'q=1\n'), [{ q: 1 }]);
  const js = createParser({ type: 'jsonl' });
  assert.deepEqual(run(js, '{"q":2}\n'), [{ q: 2 }]);
  const bin = createParser({ type: 'binary', recordSize: 2, fields: [{ name: 'v', type: 'uint16le', offset: 0, scale: 1 }] });
  assert.deepEqual(run(bin, Buffer.from([1, 1])), [{ v: 257 }]);
});
