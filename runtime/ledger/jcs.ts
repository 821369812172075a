/**
 * RFC 8785 JSON Canonicalization Scheme (JCS): the one serialization of a ledger record, whose
 * exact bytes become the Merkle leaf (docs/ledger.md, "Records and canonical JSON").
 *
 * - Object members sorted by their names' UTF-16 code units [RFC 8785 3.2.3]; JavaScript's
 *   default string comparison is exactly that order, independent of locale.
 * - No whitespace [3.2.1].
 * - Numbers in the ECMAScript Number-to-String form [3.2.2.3], which is what `String(n)` gives
 *   for a finite double (-0 becomes "0"). NaN and Infinity are not JSON: rejected.
 * - Strings with JSON.stringify's escaping [3.2.2.2]: `"` and `\` escaped, U+0008/9/A/C/D as
 *   `\b \t \n \f \r`, other controls below U+0020 as `\u00xx` (lower-case hex), everything else
 *   (including U+2028, U+007F and non-ASCII) as itself. Lone surrogates cannot be written as
 *   UTF-8 [3.1, I-JSON]: rejected.
 * - Only the JSON data model is accepted: null, booleans, finite numbers, strings, plain arrays
 *   and plain objects. `undefined`, functions, BigInt, symbols, cycles and class instances
 *   (Date, Map, typed arrays, Buffer...) are refused with the path of the offending value
 *   (`$.outputs.scores[3]`), because silently dropping or stringifying them would sign
 *   something other than what the caller meant.
 *
 * `parseIJson` is the strict reader for the other direction: JSON text from outside (stdin,
 * files) parsed as I-JSON (RFC 7493), refusing duplicate member names, lone surrogates and
 * numbers beyond the double range that `JSON.parse` would silently accept or collapse.
 */
import { LedgerFormatError } from './errors.ts';

/** Deepest nesting canonicalize and parseIJson accept, so hostile input cannot exhaust the stack. */
export const MAX_JSON_DEPTH = 256;

const LONE_SURROGATE = /\p{Cs}/u; // in /u mode a well-formed pair is one code point, so only lone halves match
const ANY_SURROGATE = /[\ud800-\udfff]/; // cheap pre-check: most strings have no surrogate at all

/** Whether `s` holds a surrogate code unit that is not half of a pair. */
function hasLoneSurrogate(s: string): boolean {
  return ANY_SURROGATE.test(s) && LONE_SURROGATE.test(s);
}
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y; // RFC 8259 section 6
const SIMPLE_ESCAPES = new Map<string, string>([['"', '"'], ['\\', '\\'], ['/', '/'], ['b', '\b'], ['f', '\f'], ['n', '\n'], ['r', '\r'], ['t', '\t']]);

/**
 * Returns the RFC 8785 canonical JSON text of `value`.
 * @throws TypeError for values outside the JSON data model (undefined, functions, BigInt,
 *   symbols, holes, cycles, non-plain objects), RangeError for NaN/Infinity, lone surrogates
 *   and nesting deeper than MAX_JSON_DEPTH; messages name the path (`$.a[3].b`).
 */
export function canonicalize(value: unknown): string {
  return write(value, { segments: [], ancestors: [] });
}

/** Returns the UTF-8 bytes of `canonicalize(value)`: the exact bytes hashed as a Merkle leaf. */
export function canonicalBytes(value: unknown): Uint8Array {
  return Buffer.from(canonicalize(value), 'utf8');
}

/**
 * Where the serializer is: path segments (member names, array indexes) and the enclosing
 * containers (for cycle detection; its length is the depth). The path string is only built
 * for an error message, which keeps the common case fast.
 */
interface Walk {
  segments: (string | number)[];
  ancestors: object[];
}

function pathOf(w: Walk, extra?: string | number): string {
  let p = '$';
  for (const s of extra === undefined ? w.segments : [...w.segments, extra]) p = typeof s === 'number' ? `${p}[${s}]` : memberPath(p, s);
  return p;
}

function write(value: unknown, w: Walk): string {
  switch (typeof value) {
    case 'string':
      if (hasLoneSurrogate(value)) throw new RangeError(`canonicalize: ${pathOf(w)} has a lone surrogate, which UTF-8 cannot encode [RFC 8785 3.2.2.2]`);
      // For well-formed strings JSON.stringify escapes exactly as RFC 8785 3.2.2.2 requires.
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new RangeError(`canonicalize: ${pathOf(w)} is ${value}; JSON has no NaN or Infinity [RFC 8785 3.2.2.3]`);
      return String(value); // ECMAScript Number::toString; String(-0) === "0"
    case 'boolean':
      return value ? 'true' : 'false';
    case 'undefined':
      throw new TypeError(`canonicalize: ${pathOf(w)} is undefined; omit the member or use null`);
    case 'bigint':
      throw new TypeError(`canonicalize: ${pathOf(w)} is a BigInt; JSON numbers are IEEE doubles, encode it as a string or a safe integer`);
    case 'symbol':
      throw new TypeError(`canonicalize: ${pathOf(w)} is a symbol, which JSON cannot represent`);
    case 'function':
      throw new TypeError(`canonicalize: ${pathOf(w)} is a function, which JSON cannot represent`);
  }
  if (value === null) return 'null';
  const obj = value as object;
  if (w.ancestors.length >= MAX_JSON_DEPTH) throw new RangeError(`canonicalize: ${pathOf(w)} is nested deeper than ${MAX_JSON_DEPTH} levels`);
  if (w.ancestors.includes(obj)) throw new TypeError(`canonicalize: ${pathOf(w)} refers back to an enclosing value (a cycle)`);
  const proto = Object.getPrototypeOf(obj);
  w.ancestors.push(obj);
  try {
    if (Array.isArray(obj)) {
      if (proto !== Array.prototype) throw new TypeError(`canonicalize: ${pathOf(w)} is an ${describe(obj)}, not a plain array`);
      let out = '[';
      for (let i = 0; i < obj.length; i++) {
        if (!(i in obj)) throw new TypeError(`canonicalize: ${pathOf(w, i)} is a hole in a sparse array`);
        w.segments.push(i);
        out += (i === 0 ? '' : ',') + write(obj[i], w);
        w.segments.pop();
      }
      return `${out}]`;
    }
    if (proto !== Object.prototype && proto !== null) {
      throw new TypeError(`canonicalize: ${pathOf(w)} is a ${describe(obj)}; only plain objects, arrays, strings, finite numbers, booleans and null are JSON`);
    }
    const symbols = Object.getOwnPropertySymbols(obj);
    if (symbols.length > 0 && symbols.some((sym) => Object.prototype.propertyIsEnumerable.call(obj, sym))) {
      throw new TypeError(`canonicalize: ${pathOf(w)} has symbol-keyed members, which JSON cannot represent`);
    }
    // Default sort compares UTF-16 code units, which is RFC 8785 3.2.3's order.
    const keys = Object.keys(obj).sort();
    let out = '{';
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      if (hasLoneSurrogate(key)) throw new RangeError(`canonicalize: member name at ${pathOf(w, key)} has a lone surrogate, which UTF-8 cannot encode`);
      w.segments.push(key);
      out += `${i === 0 ? '' : ','}${JSON.stringify(key)}:${write((obj as Record<string, unknown>)[key], w)}`;
      w.segments.pop();
    }
    return `${out}}`;
  } finally {
    w.ancestors.pop();
  }
}

function memberPath(path: string, key: string): string {
  return IDENTIFIER.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

function describe(obj: object): string {
  const name = (obj as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name ? name : 'object with a custom prototype';
}

/**
 * Parses JSON text strictly as I-JSON (RFC 7493), the input domain of RFC 8785 [3.1]:
 * RFC 8259 grammar, no duplicate member names, no lone surrogates (raw or escaped), no
 * numbers that overflow a double, nesting at most MAX_JSON_DEPTH. A leading byte-order mark is
 * refused too. Objects come back as plain objects (a member named `__proto__` is an ordinary
 * own property, never a prototype).
 * @throws LedgerFormatError (format `JSON`) naming the offset and path of the first problem.
 */
export function parseIJson(text: string): unknown {
  if (typeof text !== 'string') throw new TypeError(`parseIJson: text must be a string, got ${typeof text}`);
  const p = new IJsonParser(text);
  p.skipSpace();
  const value = p.value('$', 0);
  p.skipSpace();
  if (p.pos !== text.length) p.fail('$', 'unexpected text after the JSON value');
  return value;
}

class IJsonParser {
  pos = 0;
  constructor(private readonly s: string) {}

  fail(path: string, message: string): never {
    throw new LedgerFormatError('JSON', `offset ${this.pos} (${path}): ${message}`);
  }

  skipSpace(): void {
    const s = this.s;
    while (this.pos < s.length) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.pos++;
      else break;
    }
  }

  value(path: string, depth: number): unknown {
    const s = this.s;
    if (this.pos >= s.length) this.fail(path, 'unexpected end of text');
    const c = s[this.pos];
    if (c === '{' || c === '[') {
      if (depth >= MAX_JSON_DEPTH) this.fail(path, `nested deeper than ${MAX_JSON_DEPTH} levels`);
      return c === '{' ? this.object(path, depth) : this.array(path, depth);
    }
    if (c === '"') return this.string(path);
    if (c === '-' || (c >= '0' && c <= '9')) return this.number(path);
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (s.startsWith(word, this.pos)) {
        this.pos += word.length;
        return v;
      }
    }
    return this.fail(path, `unexpected character ${JSON.stringify(c)}`);
  }

  object(path: string, depth: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    const seen = new Set<string>();
    this.pos++; // {
    this.skipSpace();
    if (this.s[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      if (this.s[this.pos] !== '"') this.fail(path, 'expected a member name in double quotes');
      const key = this.string(path);
      const childPath = memberPath(path, key);
      if (seen.has(key)) this.fail(childPath, `duplicate member name ${JSON.stringify(key)} (I-JSON forbids it)`);
      seen.add(key);
      this.skipSpace();
      if (this.s[this.pos] !== ':') this.fail(childPath, "expected ':' after the member name");
      this.pos++;
      this.skipSpace();
      const v = this.value(childPath, depth + 1);
      if (key === '__proto__') Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
      else out[key] = v;
      this.skipSpace();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === '}') {
        this.pos++;
        return out;
      }
      this.fail(path, "expected ',' or '}' in object");
    }
  }

  array(path: string, depth: number): unknown[] {
    const out: unknown[] = [];
    this.pos++; // [
    this.skipSpace();
    if (this.s[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      out.push(this.value(`${path}[${out.length}]`, depth + 1));
      this.skipSpace();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === ']') {
        this.pos++;
        return out;
      }
      this.fail(path, "expected ',' or ']' in array");
    }
  }

  string(path: string): string {
    const s = this.s;
    const start = ++this.pos; // opening quote
    let out = '';
    let chunk = start;
    for (;;) {
      if (this.pos >= s.length) this.fail(path, 'unterminated string');
      const c = s.charCodeAt(this.pos);
      if (c === 0x22) break; // "
      if (c < 0x20) this.fail(path, `control character U+${c.toString(16).padStart(4, '0')} must be escaped in a string`);
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += s.slice(chunk, this.pos);
      const e = s[this.pos + 1];
      const unescaped = e === undefined ? undefined : SIMPLE_ESCAPES.get(e);
      if (unescaped !== undefined) {
        out += unescaped;
        this.pos += 2;
      } else if (e === 'u' && /^[0-9A-Fa-f]{4}$/.test(s.slice(this.pos + 2, this.pos + 6))) {
        out += String.fromCharCode(parseInt(s.slice(this.pos + 2, this.pos + 6), 16));
        this.pos += 6;
      } else {
        this.fail(path, `invalid escape ${JSON.stringify(s.slice(this.pos, this.pos + 2))}`);
      }
      chunk = this.pos;
    }
    out += s.slice(chunk, this.pos);
    this.pos++; // closing quote
    if (LONE_SURROGATE.test(out)) this.fail(path, 'string holds a lone surrogate, which I-JSON forbids');
    return out;
  }

  number(path: string): number {
    NUMBER.lastIndex = this.pos;
    const m = NUMBER.exec(this.s);
    if (!m) return this.fail(path, 'invalid number');
    const n = Number(m[0]);
    if (!Number.isFinite(n)) this.fail(path, `number ${m[0].slice(0, 40)} is beyond the range of an IEEE double`);
    this.pos += m[0].length;
    return n;
  }
}
