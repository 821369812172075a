import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { canonicalBytes, canonicalize, MAX_JSON_DEPTH, parseIJson } from '../../runtime/ledger/jcs.ts';
import { LedgerFormatError } from '../../runtime/ledger/errors.ts';

const vectors = (name: string) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url), 'utf8'));
const rfc = vectors('rfc8785-jcs.json');
const cyberphone = vectors('cyberphone-jcs.json');

function double(bitsHex: string): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setBigUint64(0, BigInt(`0x${bitsHex}`));
  return view.getFloat64(0);
}

test('RFC 8785 3.2.2 sample canonicalizes to the published text and 3.2.4 UTF-8 bytes', () => {
  const out = canonicalize(parseIJson(rfc.sample.input));
  assert.equal(out, rfc.sample.output);
  assert.equal(Buffer.from(canonicalBytes(parseIJson(rfc.sample.input))).toString('hex'), rfc.sample.outputHex.replaceAll(' ', ''));
  // JSON.parse yields the same value, so either reader gives the same leaf.
  assert.equal(canonicalize(JSON.parse(rfc.sample.input)), rfc.sample.output);
});

test('RFC 8785 3.2.3: members sort by UTF-16 code units (the emoji before U+FB33)', () => {
  const out = canonicalize(parseIJson(rfc.sorting.input));
  const values = [...out.matchAll(/:"([^"]*)"/g)].map((m) => m[1]);
  assert.deepEqual(values, rfc.sorting.memberOrder);
  assert.ok(out.startsWith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"'), out);
});

test('RFC 8785 Appendix B: every number serializes as published; NaN and Infinity are refused', () => {
  for (const [bits, expected] of rfc.numbers as [string, string][]) {
    assert.equal(canonicalize(double(bits)), expected, `0x${bits}`);
    assert.equal(canonicalize({ n: double(bits) }), `{"n":${expected}}`);
  }
  for (const bits of rfc.notNumbers as string[]) {
    assert.throws(() => canonicalize([double(bits)]), (e: Error) => e instanceof RangeError && /\$\[0\] is (NaN|Infinity)/.test(e.message));
  }
  for (const [bits, expected] of rfc.readmeNumbers.lines as [string, string][]) {
    assert.equal(canonicalize(double(bits.padStart(16, '0'))), expected, `0x${bits}`);
  }
});

test('cyberphone/json-canonicalization test data: inputs canonicalize to the published outputs', () => {
  for (const c of cyberphone.cases as { name: string; input: string; output?: string }[]) {
    const out = canonicalize(parseIJson(c.input));
    if (c.output !== undefined) assert.equal(out, c.output, c.name);
    assert.equal(canonicalize(JSON.parse(out)), out, `${c.name} is stable`);
  }
  const hex = cyberphone.outhex.hex.replaceAll(' ', '').toLowerCase();
  const simple = cyberphone.cases.find((c: { name: string }) => c.name === cyberphone.outhex.name);
  assert.equal(Buffer.from(canonicalBytes(parseIJson(simple.input))).toString('hex'), hex);
});

test('small cases: -0, escapes, U+2028 and DEL as themselves, empty containers, null prototype, __proto__', () => {
  assert.equal(canonicalize(-0), '0');
  assert.equal(canonicalize([0, -0, 1e21, 1e-7, 123.456]), '[0,0,1e+21,1e-7,123.456]');
  assert.equal(canonicalize('\u0000\b\t\n\f\r\u001f"\\/\u007f\u2028\u00e9\u{1f600}'), '"\\u0000\\b\\t\\n\\f\\r\\u001f\\"\\\\/\u007f\u2028\u00e9\u{1f600}"');
  assert.equal(canonicalize({ b: [], a: {} }), '{"a":{},"b":[]}');
  const bare = Object.create(null) as Record<string, unknown>;
  bare.z = 1;
  bare.a = null;
  assert.equal(canonicalize(bare), '{"a":null,"z":1}');
  const proto = parseIJson('{"__proto__":{"x":1},"a":2}') as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(proto), Object.prototype, 'parsing __proto__ must not set the prototype');
  assert.equal(canonicalize(proto), '{"__proto__":{"x":1},"a":2}');
  assert.equal(canonicalize(JSON.parse('{"__proto__":{"x":1},"a":2}')), '{"__proto__":{"x":1},"a":2}');
  // Digits-only keys sort as strings, not numbers (JavaScript orders them numerically).
  assert.equal(canonicalize({ 10: 'a', 9: 'b', 1: 'c' }), '{"1":"c","10":"a","9":"b"}');
  assert.equal(new TextDecoder().decode(canonicalBytes({ é: 'ü' })), '{"é":"ü"}');
});

test('values outside the JSON data model are refused with the path of the offender', () => {
  class Reading {
    v = 1;
  }
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = { back: cyclic };
  const sparse = [1, , 3]; // eslint-disable-line no-sparse-arrays
  const cases: [unknown, RegExp, ErrorConstructor][] = [
    [{ a: [1, 2, 3, { b: undefined }] }, /\$\.a\[3\]\.b is undefined/, TypeError],
    [{ x: NaN }, /\$\.x is NaN/, RangeError],
    [{ x: [Infinity] }, /\$\.x\[0\] is Infinity/, RangeError],
    [{ x: -Infinity }, /\$\.x is -Infinity/, RangeError],
    [{ n: 10n }, /\$\.n is a BigInt/, TypeError],
    [{ s: Symbol('s') }, /\$\.s is a symbol/, TypeError],
    [{ f: () => 1 }, /\$\.f is a function/, TypeError],
    [{ when: new Date(0) }, /\$\.when is a Date/, TypeError],
    [{ m: new Map() }, /\$\.m is a Map/, TypeError],
    [{ t: new Float32Array(2) }, /\$\.t is a Float32Array/, TypeError],
    [{ b: Buffer.from('x') }, /\$\.b is a Buffer/, TypeError],
    [{ r: new Reading() }, /\$\.r is a Reading/, TypeError],
    [{ boxed: new String('x') }, /\$\.boxed is a String/, TypeError],
    [cyclic, /\$\.self\.back refers back/, TypeError],
    [{ arr: sparse }, /\$\.arr\[1\] is a hole/, TypeError],
    [{ s: 'ok\ud800' }, /\$\.s has a lone surrogate/, RangeError],
    [{ ['\udc00']: 1 }, /lone surrogate/, RangeError],
    [{ [Symbol('k')]: 1 }, /\$ has symbol-keyed members/, TypeError],
    [{ 'odd key': { 'x-y': undefined } }, /\$\["odd key"\]\["x-y"\] is undefined/, TypeError],
    [undefined, /\$ is undefined/, TypeError],
  ];
  for (const [value, message, kind] of cases) {
    assert.throws(() => canonicalize(value), (e: Error) => e instanceof kind && message.test(e.message), String(message));
  }
  // A shared (non-cyclic) reference is fine.
  const shared = { k: 1 };
  assert.equal(canonicalize({ a: shared, b: shared }), '{"a":{"k":1},"b":{"k":1}}');
});

test('nesting is bounded so hostile input cannot exhaust the stack', () => {
  let ok: unknown = 0;
  for (let i = 0; i < MAX_JSON_DEPTH - 1; i++) ok = [ok];
  assert.equal(canonicalize(ok).length, 2 * (MAX_JSON_DEPTH - 1) + 1);
  let deep: unknown = 0;
  for (let i = 0; i < 100_000; i++) deep = { d: deep };
  assert.throws(() => canonicalize(deep), (e: Error) => e instanceof RangeError && /nested deeper/.test(e.message));
  assert.throws(() => parseIJson('['.repeat(100_000) + ']'.repeat(100_000)), (e: Error) => e instanceof LedgerFormatError && /nested deeper/.test(e.message));
  assert.equal(canonicalize(parseIJson('['.repeat(MAX_JSON_DEPTH) + ']'.repeat(MAX_JSON_DEPTH))), '['.repeat(MAX_JSON_DEPTH) + ']'.repeat(MAX_JSON_DEPTH));
});

test('parseIJson refuses what JSON.parse lets through, and malformed JSON, naming offset and path', () => {
  const bad: [string, RegExp][] = [
    ['{"a":1,"a":2}', /\(\$\.a\): duplicate member name "a"/],
    ['{"x":{"k":[1,{"d":1,"d":1}]}}', /\(\$\.x\.k\[1\]\.d\): duplicate/],
    ['["\\ud800"]', /\$\[0\].*lone surrogate/],
    ['"\\udc00x"', /lone surrogate/],
    ['"a\ud800"', /lone surrogate/],
    ['{"n":1e400}', /\$\.n.*beyond the range/],
    ['[-1e309]', /beyond the range/],
    ['\ufeff{}', /unexpected character/],
    ['{} x', /unexpected text after/],
    ['[1,]', /unexpected character/],
    ['{"a":1,}', /expected a member name/],
    ["{'a':1}", /expected a member name/],
    ['[01]', /expected ',' or ']'/],
    ['[1.]', /expected ',' or ']'/],
    ['[.5]', /unexpected character/],
    ['[+1]', /unexpected character/],
    ['["tab\there"]', /control character U\+0009/],
    ['["\\x41"]', /invalid escape/],
    ['["\\u12"]', /invalid escape/],
    ['["open', /unterminated string/],
    ['', /unexpected end/],
    ['[1 2]', /expected ',' or ']'/],
    ['{"a" 1}', /expected ':'/],
    ['nul', /unexpected character/],
    ['[NaN]', /unexpected character/],
  ];
  for (const [text, message] of bad) {
    assert.throws(() => parseIJson(text), (e: Error) => e instanceof LedgerFormatError && e.code === 'KEEL_E_LEDGER_FORMAT' && message.test(e.message), `${JSON.stringify(text)} -> ${message}`);
  }
  assert.deepEqual(parseIJson(' {"a" : [ 1 , -0.5e-3 , true , false , null , "\\u00e9\\/\\"" ] } \n'), { a: [1, -0.0005, true, false, null, 'é/"'] });
  assert.throws(() => parseIJson(42 as unknown as string), TypeError);
});

/** Deterministic PRNG (mulberry32), so a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomString(r: () => number): string {
  const pool = ['a', 'Z', ' ', '"', '\\', '/', '\n', '\u0000', '\u001f', '\u007f', '\u0080', '\u00f6', '\u2028', '\u20ac', '\ufb33', '\u{1f600}', '\u{10ffff}', '1', '10', 'é'];
  let s = '';
  const n = Math.floor(r() * 8);
  for (let i = 0; i < n; i++) s += pool[Math.floor(r() * pool.length)];
  return s;
}

function randomNumber(r: () => number): number {
  const kind = Math.floor(r() * 4);
  if (kind === 0) return Math.floor(r() * 2000) - 1000;
  if (kind === 1) return (r() - 0.5) * 10 ** Math.floor(r() * 40 - 20);
  // Arbitrary finite bit patterns, subnormals included.
  for (;;) {
    const view = new DataView(new ArrayBuffer(8));
    view.setUint32(0, Math.floor(r() * 2 ** 32));
    view.setUint32(4, Math.floor(r() * 2 ** 32));
    const x = view.getFloat64(0);
    if (Number.isFinite(x)) return x;
  }
}

function randomValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 3 ? 4 : 6));
  if (k === 0) return null;
  if (k === 1) return r() < 0.5;
  if (k === 2) return randomNumber(r);
  if (k === 3) return randomString(r);
  if (k === 4) return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = Math.floor(r() * 5); i > 0; i--) o[randomString(r)] = randomValue(r, depth + 1);
  return o;
}

function shuffleKeys(v: unknown, r: () => number): unknown {
  if (Array.isArray(v)) return v.map((x) => shuffleKeys(x, r));
  if (v === null || typeof v !== 'object') return v;
  const entries = Object.entries(v).sort(() => r() - 0.5);
  return Object.fromEntries(entries.map(([k, x]) => [k, shuffleKeys(x, r)]));
}

test('property: canonical text re-parses to itself, ignores member order, and both readers agree', () => {
  const r = prng(8785);
  for (let i = 0; i < 600; i++) {
    const v = randomValue(r, 0);
    const c = canonicalize(v);
    assert.equal(canonicalize(JSON.parse(c)), c);
    assert.equal(canonicalize(parseIJson(c)), c);
    assert.equal(canonicalize(shuffleKeys(v, r)), c);
    const pretty = JSON.stringify(v, null, 2);
    assert.deepEqual(parseIJson(pretty), JSON.parse(pretty));
  }
});

test('property: numbers use the shortest digits that round-trip (checked without String())', () => {
  const r = prng(7);
  for (let i = 0; i < 3000; i++) {
    const x = randomNumber(r);
    const s = canonicalize(x);
    assert.equal(Number(s), Object.is(x, -0) ? 0 : x, s);
    const digits = s.replace(/^-/, '').replace(/e.*$/, '').replace('.', '').replace(/^0+/, '').replace(/0+$/, '').length;
    if (digits > 1) assert.notEqual(Number(x.toPrecision(digits - 1)), x, `${s} is not the shortest form`);
    // ECMAScript layout: plain decimal for 1e-7 <= |x| < 1e21, exponent form outside.
    const ax = Math.abs(x);
    if (ax !== 0) assert.equal(s.includes('e'), ax < 1e-6 || ax >= 1e21, s);
  }
});
