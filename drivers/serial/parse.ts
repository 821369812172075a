/**
 * Incremental parsers that turn the bytes of a serial line into records of named numbers.
 *
 * Input arrives in chunks of any size, split anywhere (a serial read returns whatever the
 * UART had). Every parser is fed `Buffer` chunks and calls back once per complete record.
 * Nothing here throws on bad input: garbage, binary noise, invalid UTF-8, non-numeric fields,
 * wrong column counts and overlong lines are counted in `counters.dropped` and skipped. Only
 * a bad *format configuration* throws (a `ConfigError` listing every problem).
 *
 * Memory is bounded: a text parser never holds more than `maxLineBytes` of an unfinished
 * line (a longer line is counted once and skipped up to its newline), and a binary parser
 * never holds more than one record.
 *
 * Speed matters (a 4 Mbaud line, a slow ARM core): lines are found with `Buffer.indexOf`,
 * numbers are parsed straight from the bytes without building strings (see `parseNumber`),
 * and only the tail of a chunk that ends mid-line is copied.
 */
import { isUtf8 } from 'node:buffer';
import { ConfigError, type ConfigIssue } from '../../runtime/errors.ts';
import type { SerialFormatConfig } from '../../runtime/config/schema.ts';

/** One parsed record: channel name to value. */
export type RecordValues = Record<string, number>;

/** Receives each parsed record, in input order. */
export type RecordSink = (values: RecordValues) => void;

/** Running totals of a parser. */
export interface ParserCounters {
  /** Records delivered to the sink. */
  records: number;
  /**
   * Input discarded as malformed. Text formats: one per rejected line (garbage, non-numeric,
   * wrong column count, invalid UTF-8, overlong). Binary: one per partial record discarded
   * and one per run of noise bytes skipped while resynchronizing.
   */
  dropped: number;
  /** Bytes fed in. */
  bytes: number;
}

/** An incremental parser for one serial format. */
export interface RecordParser {
  /** Parses `chunk`, continuing any record left unfinished by the previous chunk. */
  feed(chunk: Buffer, sink: RecordSink): void;
  /** Forgets an unfinished record (counting it as dropped), e.g. after the port reopened. */
  reset(): void;
  /** Bytes held from an unfinished record; never more than `maxLineBytes` / `recordSize`. */
  readonly buffered: number;
  readonly counters: ParserCounters;
}

/** Options of the text (line) parsers. */
export interface LineParserOptions {
  /** Longest accepted line in bytes, excluding the `\n` (a trailing `\r` counts). Default 1024. */
  maxLineBytes?: number;
}

/** Default longest line, bytes (same default as the schema's `maxLineBytes`). */
export const DEFAULT_MAX_LINE_BYTES = 1024;

// Channel names follow the schema's `Name` rule. Keys from the wire (kv, jsonl) that do not
// match are ignored; this also keeps `__proto__` and friends out of the records.
const NAME_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

const NL = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const TAB = 0x09;

// Exact powers of ten: every 10^k with k <= 22 is representable in a double.
const POW10 = Array.from({ length: 23 }, (_, k) => Number(`1e${k}`));

/**
 * Parses a decimal number from `buf[start, end)`, ignoring spaces and tabs around it.
 * Accepts exactly `[+-]digits[.digits][(e|E)[+-]digits]` (either side of the point may be
 * empty, not both) and returns NaN for anything else (hex, `Infinity`, empty, letters...).
 *
 * Result equals `Number(text)` bit for bit: up to 15 significant digits and a decimal
 * exponent within +-22, one IEEE multiplication or division of two exact values is
 * correctly rounded (Clinger's fast path); anything else falls back to `Number()` on the
 * already validated text. May return +-Infinity for huge exponents; callers check finiteness.
 */
export function parseNumber(buf: Uint8Array, start: number, end: number): number {
  let s = start;
  let e = end;
  while (s < e && (buf[s] === SP || buf[s] === TAB)) s++;
  while (e > s && (buf[e - 1] === SP || buf[e - 1] === TAB)) e--;
  if (s === e) return NaN;
  let i = s;
  let neg = false;
  let c = buf[i];
  if (c === 0x2d) {
    neg = true;
    i++;
  } else if (c === 0x2b) {
    i++;
  }
  let mant = 0;
  let sig = 0; // significant digits taken into mant
  let exp10 = 0;
  let digits = 0; // digits seen in the mantissa, significant or not
  let slow = false;
  for (; i < e; i++) {
    const d = buf[i] - 0x30;
    if (d < 0 || d > 9) break;
    digits++;
    if (mant === 0 && d === 0) continue;
    if (sig < 15) {
      mant = mant * 10 + d;
      sig++;
    } else {
      slow = true;
    }
  }
  if (i < e && buf[i] === 0x2e) {
    for (i++; i < e; i++) {
      const d = buf[i] - 0x30;
      if (d < 0 || d > 9) break;
      digits++;
      if (mant === 0 && d === 0) {
        exp10--;
        continue;
      }
      if (sig < 15) {
        mant = mant * 10 + d;
        sig++;
        exp10--;
      } else {
        slow = true;
      }
    }
  }
  if (digits === 0) return NaN;
  if (i < e && (buf[i] === 0x65 || buf[i] === 0x45)) {
    i++;
    let eneg = false;
    if (i < e && (buf[i] === 0x2d || buf[i] === 0x2b)) {
      eneg = buf[i] === 0x2d;
      i++;
    }
    let ex = 0;
    let edigits = 0;
    for (; i < e; i++) {
      const d = buf[i] - 0x30;
      if (d < 0 || d > 9) break;
      edigits++;
      if (ex < 100_000) ex = ex * 10 + d; // beyond this the result is 0 or Infinity anyway
    }
    if (edigits === 0) return NaN;
    exp10 += eneg ? -ex : ex;
  }
  if (i !== e) return NaN;
  if (slow || exp10 > 22 || exp10 < -22) {
    if (mant === 0 && !slow) return neg ? -0 : 0;
    return Number(Buffer.from(buf.buffer, buf.byteOffset + s, e - s).toString('latin1'));
  }
  const v = exp10 < 0 ? mant / POW10[-exp10] : mant * POW10[exp10];
  return neg ? -v : v;
}

/**
 * Splits a byte stream into lines and hands each complete line (without `\n` and a trailing
 * `\r`) to a decoder. Holds at most `maxLineBytes` of an unfinished line.
 */
abstract class LineParser implements RecordParser {
  readonly counters: ParserCounters = { records: 0, dropped: 0, bytes: 0 };
  private readonly maxLineBytes: number;
  // Start of the unfinished line, copied out of its chunk (chunks may come from a reused pool).
  private pending: Buffer | null = null;
  // True while discarding the rest of an overlong line, up to its newline.
  private skipping = false;

  constructor(opts: LineParserOptions) {
    const max = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxLineBytes must be a positive integer, got ${max}`);
    this.maxLineBytes = max;
  }

  get buffered(): number {
    return this.pending === null ? 0 : this.pending.length;
  }

  /**
   * Decodes the line `buf[start, end)` (no line terminator) and returns its values, or
   * null if the line is malformed. Must not throw.
   */
  protected abstract decode(buf: Buffer, start: number, end: number): RecordValues | null;

  feed(chunk: Buffer, sink: RecordSink): void {
    const len = chunk.length;
    this.counters.bytes += len;
    let pos = 0;
    while (pos < len) {
      const nl = chunk.indexOf(NL, pos);
      if (nl === -1) {
        this.hold(chunk, pos, len);
        return;
      }
      if (this.skipping) {
        this.skipping = false;
      } else if (this.pending !== null) {
        const head = this.pending;
        this.pending = null;
        if (head.length + (nl - pos) > this.maxLineBytes) {
          this.counters.dropped++;
        } else {
          const line = Buffer.concat([head, chunk.subarray(pos, nl)]);
          this.line(line, 0, line.length, sink);
        }
      } else if (nl - pos > this.maxLineBytes) {
        this.counters.dropped++;
      } else {
        this.line(chunk, pos, nl, sink);
      }
      pos = nl + 1;
    }
  }

  reset(): void {
    // An overlong line being skipped was already counted when skipping began.
    if (this.pending !== null) this.counters.dropped++;
    this.pending = null;
    this.skipping = false;
  }

  // Keeps chunk[from, to), the start of a line whose newline has not arrived yet.
  private hold(chunk: Buffer, from: number, to: number): void {
    if (this.skipping) return;
    const have = this.pending === null ? 0 : this.pending.length;
    if (have + (to - from) > this.maxLineBytes) {
      this.counters.dropped++;
      this.pending = null;
      this.skipping = true;
      return;
    }
    const tail = chunk.subarray(from, to);
    this.pending = this.pending === null ? Buffer.from(tail) : Buffer.concat([this.pending, tail]);
  }

  private line(buf: Buffer, start: number, end: number, sink: RecordSink): void {
    if (end > start && buf[end - 1] === CR) end--;
    if (end === start) return; // blank lines are keep-alives, not errors
    const values = this.decode(buf, start, end);
    if (values === null) {
      this.counters.dropped++;
      return;
    }
    this.counters.records++;
    sink(values);
  }
}

/** CSV lines: one number per configured column, in order, separated by `delimiter`. */
export class CsvParser extends LineParser {
  private readonly columns: string[];
  private readonly delim: number;

  /** `columns` names each field; `delimiter` is one ASCII character (default `,`). */
  constructor(columns: string[], delimiter = ',', opts: LineParserOptions = {}) {
    super(opts);
    const issues = csvIssues(columns, delimiter);
    if (issues.length > 0) throw new ConfigError(issues, 'serial csv format');
    this.columns = [...columns];
    this.delim = delimiter.charCodeAt(0);
  }

  protected decode(buf: Buffer, start: number, end: number): RecordValues | null {
    const cols = this.columns;
    const n = cols.length;
    const delim = this.delim;
    const out: RecordValues = {};
    let pos = start;
    for (let k = 0; k < n; k++) {
      let j = pos;
      while (j < end && buf[j] !== delim) j++;
      // Every column but the last must end at a delimiter, the last at the end of the line.
      if (k < n - 1 ? j === end : j !== end) return null;
      const v = parseNumber(buf, pos, j);
      if (!Number.isFinite(v)) return null;
      out[cols[k]] = v;
      pos = j + 1;
    }
    return out;
  }
}

/** JSON lines: one JSON object per line; its finite numeric fields become channels. */
export class JsonLinesParser extends LineParser {
  private readonly fields: string[] | null;

  /**
   * `fields`: keep only these fields; a listed field that is present but not a finite number
   * rejects the line. Without `fields`, every top-level finite number with a channel-style
   * name is kept and other fields are ignored. A line with no kept value is dropped.
   */
  constructor(fields?: string[], opts: LineParserOptions = {}) {
    super(opts);
    const issues = fieldIssues(fields, 'fields');
    if (issues.length > 0) throw new ConfigError(issues, 'serial jsonl format');
    this.fields = fields ? [...fields] : null;
  }

  protected decode(buf: Buffer, start: number, end: number): RecordValues | null {
    // Cheap rejection of noise before paying for UTF-8 validation and JSON.parse.
    let s = start;
    while (s < end && (buf[s] === SP || buf[s] === TAB)) s++;
    if (buf[s] !== 0x7b) return null; // '{'
    const bytes = buf.subarray(start, end);
    if (!isUtf8(bytes)) return null;
    let obj: unknown;
    try {
      obj = JSON.parse(bytes.toString('utf8'));
    } catch {
      return null;
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return null;
    const src = obj as Record<string, unknown>;
    const out: RecordValues = {};
    let kept = 0;
    if (this.fields !== null) {
      for (const f of this.fields) {
        if (!Object.hasOwn(src, f)) continue;
        const v = src[f];
        if (typeof v !== 'number' || !Number.isFinite(v)) return null;
        out[f] = v;
        kept++;
      }
    } else {
      for (const k of Object.keys(src)) {
        const v = src[k];
        if (typeof v === 'number' && Number.isFinite(v) && NAME_RE.test(k)) {
          out[k] = v;
          kept++;
        }
      }
    }
    return kept === 0 ? null : out;
  }
}

// Bytes that separate key/value pairs in a kv line.
function isPairBreak(c: number): boolean {
  return c === SP || c === TAB || c === 0x2c || c === 0x3b; // space, tab, ',', ';'
}

/**
 * Key/value lines: `a=1 b=2`, `a=1,b=2` or `a:1; b:2` (pairs separated by spaces, tabs, commas
 * or semicolons; key and value by `separator`). A malformed pair rejects the whole line.
 * `fields` keeps only the listed keys (others are ignored); a line with no kept value is dropped.
 */
export class KeyValueParser extends LineParser {
  private readonly sep: number;
  private readonly fields: Set<string> | null;

  constructor(separator = '=', fields?: string[], opts: LineParserOptions = {}) {
    super(opts);
    const issues = [...kvSeparatorIssues(separator), ...fieldIssues(fields, 'fields')];
    if (issues.length > 0) throw new ConfigError(issues, 'serial kv format');
    this.sep = separator.charCodeAt(0);
    this.fields = fields ? new Set(fields) : null;
  }

  protected decode(buf: Buffer, start: number, end: number): RecordValues | null {
    const sep = this.sep;
    const out: RecordValues = {};
    let kept = 0;
    let pos = start;
    for (;;) {
      while (pos < end && isPairBreak(buf[pos])) pos++;
      if (pos === end) break;
      const ks = pos;
      while (pos < end && buf[pos] !== sep && !isPairBreak(buf[pos])) pos++;
      const ke = pos;
      // Blanks may surround the separator (`a = 1`), commas and semicolons may not.
      while (pos < end && (buf[pos] === SP || buf[pos] === TAB)) pos++;
      if (pos === end || buf[pos] !== sep) return null;
      pos++;
      while (pos < end && (buf[pos] === SP || buf[pos] === TAB)) pos++;
      const vs = pos;
      while (pos < end && !isPairBreak(buf[pos])) pos++;
      const key = keyAt(buf, ks, ke);
      if (key === null) return null;
      const v = parseNumber(buf, vs, pos);
      if (!Number.isFinite(v)) return null;
      if (this.fields === null || this.fields.has(key)) {
        if (!Object.hasOwn(out, key)) kept++;
        out[key] = v;
      }
    }
    return kept === 0 ? null : out;
  }
}

// The key in buf[start, end) if it is a valid channel name.
function keyAt(buf: Buffer, start: number, end: number): string | null {
  const n = end - start;
  if (n < 1 || n > 64) return null;
  const c0 = buf[start] | 0x20;
  if (c0 < 0x61 || c0 > 0x7a) return null;
  for (let i = start + 1; i < end; i++) {
    const c = buf[i];
    const ok = (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a) || c === 0x5f || c === 0x2d;
    if (!ok) return null;
  }
  return buf.toString('latin1', start, end);
}

/** Numeric types of binary fields and their sizes in bytes. */
export const BINARY_FIELD_SIZES = {
  int8: 1,
  uint8: 1,
  int16le: 2,
  int16be: 2,
  uint16le: 2,
  uint16be: 2,
  int32le: 4,
  int32be: 4,
  uint32le: 4,
  uint32be: 4,
  float32le: 4,
  float32be: 4,
} as const;

/** A binary field type name. */
export type BinaryFieldType = keyof typeof BINARY_FIELD_SIZES;

/** One typed field of a binary record; value = raw * scale. */
export interface BinaryField {
  name: string;
  type: BinaryFieldType | string;
  /** Byte offset within the record. */
  offset: number;
  /** Multiplier applied to the raw value (default 1). */
  scale?: number;
}

/** Layout of fixed-size binary records. */
export interface BinaryLayout {
  /** Bytes per record, sync bytes included. */
  recordSize: number;
  /** Hex bytes that start every record (e.g. `A55A`); enables resynchronization after noise. */
  sync?: string;
  fields: BinaryField[];
}

// Field types as small integers, so the per-record loop is one monomorphic switch.
const TYPE_CODES: Record<BinaryFieldType, number> = {
  int8: 0,
  uint8: 1,
  int16le: 2,
  int16be: 3,
  uint16le: 4,
  uint16be: 5,
  int32le: 6,
  int32be: 7,
  uint32le: 8,
  uint32be: 9,
  float32le: 10,
  float32be: 11,
};

function readField(v: DataView, code: number, at: number): number {
  switch (code) {
    case 0:
      return v.getInt8(at);
    case 1:
      return v.getUint8(at);
    case 2:
      return v.getInt16(at, true);
    case 3:
      return v.getInt16(at, false);
    case 4:
      return v.getUint16(at, true);
    case 5:
      return v.getUint16(at, false);
    case 6:
      return v.getInt32(at, true);
    case 7:
      return v.getInt32(at, false);
    case 8:
      return v.getUint32(at, true);
    case 9:
      return v.getUint32(at, false);
    case 10:
      return v.getFloat32(at, true);
    default:
      return v.getFloat32(at, false);
  }
}

/**
 * Fixed-size binary records. With `sync`, each record must start with the sync bytes; when
 * it does not (noise, a lost byte), the parser scans forward for the next sync pattern,
 * counting the skipped run once as dropped. Without `sync` the stream is cut every
 * `recordSize` bytes from the first byte received (no resynchronization is possible).
 * A record with a non-finite field (a NaN float) is dropped.
 */
export class BinaryRecordParser implements RecordParser {
  readonly counters: ParserCounters = { records: 0, dropped: 0, bytes: 0 };
  private readonly size: number;
  private readonly sync: Buffer | null;
  private readonly names: string[];
  private readonly offsets: number[];
  private readonly scales: number[];
  private readonly codes: number[];
  // Unfinished record (or a possible partial sync pattern), copied out of its chunk.
  private pending: Buffer | null = null;
  // True while inside a run of skipped noise, so that one run counts as one drop.
  private inNoise = false;

  constructor(layout: BinaryLayout) {
    const issues = binaryIssues(layout);
    if (issues.length > 0) throw new ConfigError(issues, 'serial binary format');
    this.size = layout.recordSize;
    this.sync = layout.sync ? Buffer.from(layout.sync, 'hex') : null;
    this.names = layout.fields.map((f) => f.name);
    this.offsets = layout.fields.map((f) => f.offset);
    this.scales = layout.fields.map((f) => f.scale ?? 1);
    this.codes = layout.fields.map((f) => TYPE_CODES[f.type as BinaryFieldType]);
  }

  get buffered(): number {
    return this.pending === null ? 0 : this.pending.length;
  }

  feed(chunk: Buffer, sink: RecordSink): void {
    this.counters.bytes += chunk.length;
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
    const end = this.sync === null ? this.feedPlain(buf, view, sink) : this.feedSynced(buf, view, this.sync, sink);
    if (end < buf.length) this.pending = Buffer.from(buf.subarray(end));
  }

  reset(): void {
    if (this.pending !== null && !this.inNoise) this.counters.dropped++;
    this.pending = null;
    this.inNoise = false;
  }

  // Returns the index of the first byte not consumed.
  private feedPlain(buf: Buffer, view: DataView, sink: RecordSink): number {
    const size = this.size;
    let p = 0;
    for (; p + size <= buf.length; p += size) this.emit(view, p, sink);
    return p;
  }

  private feedSynced(buf: Buffer, view: DataView, sync: Buffer, sink: RecordSink): number {
    const size = this.size;
    const slen = sync.length;
    const len = buf.length;
    let p = 0;
    while (p < len) {
      if (startsWith(buf, p, sync, len)) {
        if (p + size > len) return p; // the rest of this record is still on the wire
        this.inNoise = false;
        this.emit(view, p, sink);
        p += size;
        continue;
      }
      if (len - p < slen && isPrefixOfSync(buf, p, len, sync)) return p; // maybe a split sync
      // Noise: skip to the next sync pattern.
      if (!this.inNoise) {
        this.inNoise = true;
        this.counters.dropped++;
      }
      const next = buf.indexOf(sync, p + 1);
      if (next !== -1) {
        p = next;
        continue;
      }
      // No sync in the rest; keep only a tail that could be the start of one.
      let keep = Math.max(p + 1, len - (slen - 1));
      while (keep < len && !isPrefixOfSync(buf, keep, len, sync)) keep++;
      return keep;
    }
    return p;
  }

  private emit(view: DataView, at: number, sink: RecordSink): void {
    const out: RecordValues = {};
    const { names, offsets, scales, codes } = this;
    const n = names.length;
    for (let k = 0; k < n; k++) {
      const v = readField(view, codes[k], at + offsets[k]) * scales[k];
      if (!Number.isFinite(v)) {
        this.counters.dropped++;
        return;
      }
      out[names[k]] = v;
    }
    this.counters.records++;
    sink(out);
  }
}

function startsWith(buf: Buffer, p: number, sync: Buffer, len: number): boolean {
  if (p + sync.length > len) return false;
  for (let i = 0; i < sync.length; i++) if (buf[p + i] !== sync[i]) return false;
  return true;
}

// True if buf[p, len) (shorter than the sync pattern) equals the pattern's beginning.
function isPrefixOfSync(buf: Buffer, p: number, len: number, sync: Buffer): boolean {
  for (let i = 0; p + i < len; i++) if (buf[p + i] !== sync[i]) return false;
  return true;
}

// ---------------------------------------------------------------- validation

// Characters a CSV delimiter cannot be: they occur inside numbers or end lines.
const BAD_DELIMITERS = new Set(['\n', '\r', '.', '+', '-', 'e', 'E', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);

function csvIssues(columns: unknown, delimiter: unknown): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (!Array.isArray(columns) || columns.length === 0) {
    issues.push({ path: 'columns', message: 'expected a non-empty array of channel names' });
  } else {
    issues.push(...nameListIssues(columns, 'columns'));
  }
  if (typeof delimiter !== 'string' || delimiter.length !== 1 || delimiter.charCodeAt(0) > 0x7f) {
    issues.push({ path: 'delimiter', message: `expected one ASCII character, got ${JSON.stringify(delimiter)}` });
  } else if (BAD_DELIMITERS.has(delimiter)) {
    issues.push({ path: 'delimiter', message: `${JSON.stringify(delimiter)} cannot separate numbers (it occurs inside them or ends lines)` });
  }
  return issues;
}

function kvSeparatorIssues(separator: unknown): ConfigIssue[] {
  if (typeof separator !== 'string' || separator.length !== 1 || separator.charCodeAt(0) > 0x7f) {
    return [{ path: 'separator', message: `expected one ASCII character, got ${JSON.stringify(separator)}` }];
  }
  if (isPairBreak(separator.charCodeAt(0)) || BAD_DELIMITERS.has(separator) || /[A-Za-z_]/.test(separator)) {
    return [{ path: 'separator', message: `${JSON.stringify(separator)} cannot separate keys from values (it separates pairs or occurs in names/numbers)` }];
  }
  return [];
}

function fieldIssues(fields: unknown, path: string): ConfigIssue[] {
  if (fields === undefined) return [];
  if (!Array.isArray(fields) || fields.length === 0) return [{ path, message: 'expected a non-empty array of channel names' }];
  return nameListIssues(fields, path);
}

function nameListIssues(names: unknown[], path: string): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  names.forEach((n, i) => {
    if (typeof n !== 'string' || !NAME_RE.test(n)) {
      issues.push({ path: `${path}[${i}]`, message: `${JSON.stringify(n)} is not a channel name (letter, then letters, digits, _ or -; at most 64)` });
    } else if (seen.has(n)) {
      issues.push({ path: `${path}[${i}]`, message: `duplicate name "${n}"` });
    } else {
      seen.add(n);
    }
  });
  return issues;
}

function binaryIssues(layout: BinaryLayout): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const size = layout?.recordSize;
  if (!Number.isInteger(size) || size < 1 || size > 4096) {
    issues.push({ path: 'recordSize', message: `expected an integer from 1 to 4096, got ${JSON.stringify(size)}` });
  }
  let syncLen = 0;
  if (layout?.sync !== undefined) {
    if (typeof layout.sync !== 'string' || !/^([0-9a-fA-F]{2})+$/.test(layout.sync)) {
      issues.push({ path: 'sync', message: `expected an even number of hex digits (e.g. "A55A"), got ${JSON.stringify(layout.sync)}` });
    } else {
      syncLen = layout.sync.length / 2;
      if (Number.isInteger(size) && syncLen >= size) issues.push({ path: 'sync', message: `sync (${syncLen} bytes) must be shorter than recordSize (${size})` });
    }
  }
  const fields = layout?.fields;
  if (!Array.isArray(fields) || fields.length === 0) {
    issues.push({ path: 'fields', message: 'expected a non-empty array of fields' });
    return issues;
  }
  issues.push(...nameListIssues(fields.map((f) => f?.name), 'fields').map((i) => ({ ...i, path: i.path + '.name' })));
  fields.forEach((f, i) => {
    const fsize = BINARY_FIELD_SIZES[f?.type as BinaryFieldType];
    if (fsize === undefined || !Object.hasOwn(BINARY_FIELD_SIZES, f.type)) {
      issues.push({ path: `fields[${i}].type`, message: `expected one of ${Object.keys(BINARY_FIELD_SIZES).join(', ')}, got ${JSON.stringify(f?.type)}` });
    }
    if (!Number.isInteger(f?.offset) || f.offset < 0) {
      issues.push({ path: `fields[${i}].offset`, message: `expected a non-negative integer, got ${JSON.stringify(f?.offset)}` });
    } else if (fsize !== undefined && Number.isInteger(size)) {
      if (f.offset + fsize > size) issues.push({ path: `fields[${i}].offset`, message: `a ${fsize}-byte field at offset ${f.offset} overruns recordSize ${size}` });
      if (f.offset < syncLen) issues.push({ path: `fields[${i}].offset`, message: `overlaps the ${syncLen} sync bytes` });
    }
    if (f?.scale !== undefined && (typeof f.scale !== 'number' || !Number.isFinite(f.scale))) {
      issues.push({ path: `fields[${i}].scale`, message: `expected a finite number, got ${JSON.stringify(f.scale)}` });
    }
  });
  return issues;
}

/**
 * Problems with a format configuration, paths relative to the format object
 * (`fields[1].offset`). Empty when `createParser` would succeed.
 */
export function formatIssues(format: SerialFormatConfig): ConfigIssue[] {
  if (format === null || typeof format !== 'object') return [{ path: '', message: 'expected a format object with a "type"' }];
  switch (format.type) {
    case 'csv':
      return csvIssues(format.columns, format.delimiter ?? ',');
    case 'jsonl':
      return fieldIssues(format.fields, 'fields');
    case 'kv':
      return [...kvSeparatorIssues(format.separator ?? '='), ...fieldIssues(format.fields, 'fields')];
    case 'binary':
      return binaryIssues(format);
    default:
      return [{ path: 'type', message: `expected csv, jsonl, kv or binary, got ${JSON.stringify((format as { type?: unknown }).type)}` }];
  }
}

/**
 * Builds the parser for a configured format. `maxLineBytes` applies to text formats.
 * Throws ConfigError (every problem at once) for an invalid format.
 */
export function createParser(format: SerialFormatConfig, opts: LineParserOptions = {}): RecordParser {
  const issues = formatIssues(format);
  if (issues.length > 0) throw new ConfigError(issues, 'serial format');
  switch (format.type) {
    case 'csv':
      return new CsvParser(format.columns, format.delimiter ?? ',', opts);
    case 'jsonl':
      return new JsonLinesParser(format.fields, opts);
    case 'kv':
      return new KeyValueParser(format.separator ?? '=', format.fields, opts);
    case 'binary':
      return new BinaryRecordParser(format);
  }
}
