/**
 * Replays a recorded file as a sensor source: CSV with a header row, JSON lines, or 16-bit
 * PCM WAV, with the original timing (scaled by `speed`), or as fast as possible; optionally
 * looping, with times that keep increasing across loops.
 *
 * Decisions (documented here because integrators meet them at 2 a.m.):
 * - Everything checkable is checked in `start()`, which rejects with DriverError
 *   `KEEL_E_REPLAY`: missing/empty/unreadable file, bad header, no timing (neither `timeField`
 *   nor `rateHz`), a WAV that is not 16-bit PCM or is truncated, no valid rows at all, and
 *   timestamps that go backwards (an error, not a silent clamp: a recording out of order
 *   is broken, and replaying it "fixed" would hide that). Equal timestamps are fine.
 * - A row that does not parse (wrong field count, a value that is not a number, bad JSON)
 *   is skipped and counted in `stats().dropped` (once, when the file is checked);
 *   `droppedRows()` names the first few by line number and reason. No event is emitted for
 *   them: `fault` means the safe state to the runtime, and one bad row must not trip it.
 * - CSV: the first line that is not blank and not a `#` comment is the header. The delimiter
 *   is `,`, tab or `;`, whichever the header uses most. Fields may be double-quoted (no line
 *   breaks inside quotes). Columns with an empty header name (a pandas index) are ignored.
 *   An empty cell leaves that channel out of the sample (channels may be missing, see
 *   `Sample`). With `channels` set, only those columns are read (others may hold text).
 * - JSON lines: every numeric top-level field is a channel (or only `channels` when set).
 * - WAV: samples are normalized to [-1, 1) (int16 / 32768); channels are named by `channels`
 *   or ch0, ch1, ...; the rate is the header's, unless `rateHz` overrides it.
 * - Timing: row k is due `(time_k - time_0) / speed` ms after start and carries that host
 *   time (`startEpoch + ...`), in `fast` mode too (it just does not wait), so sample times
 *   never depend on machine speed. With `rateHz`, time_k = k * 1000 / rateHz where k counts
 *   data lines including malformed ones, so a bad row leaves a gap instead of shifting the rest.
 *   A loop adds one period: the span plus one mean interval (time field), or rows / rate.
 * - Size: files up to `residentBytes` (default 4 MiB) are held in memory after the check;
 *   larger ones are streamed from disk in 64 KiB blocks, so memory stays bounded whatever the
 *   size (a 57 MB CSV plays in about 110 MB of RSS). `start()` reads a text file once in
 *   full to check it: about 25 MB/s on one desktop core, several times slower on a Pi, so a
 *   few hundred MB take a while to start; split such recordings.
 *   Lines longer than 1 MiB are dropped as malformed.
 */
import { EventEmitter } from 'node:events';
import { open, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import type { ReplaySourceConfig } from '../runtime/config/schema.ts';
import { DriverError } from '../runtime/errors.ts';
import type { Sample, SensorSource, SourceEvents, SourceStats } from './types.ts';

/** What a replay source needs from outside. */
export interface ReplaySourceDeps {
  clock: Clock;
  /** Directory relative file names resolve against (the config file's directory). */
  baseDir: string;
  /** Files (WAV: data chunks) up to this size are kept in memory; larger ones stream. Default 4 MiB. */
  residentBytes?: number;
}

/** One skipped row: its 1-based line number (WAV: frame index) and why. */
export interface DroppedRow {
  line: number;
  reason: string;
}

/** The file kinds a replay source plays. */
export type ReplayFormat = 'csv' | 'jsonl' | 'wav';

/** Default for `residentBytes`. */
export const DEFAULT_RESIDENT_BYTES = 4 * 1024 * 1024;
/** Bytes read from disk per block when streaming. */
const CHUNK_BYTES = 64 * 1024;
/** Longest text line accepted; longer ones are dropped (a binary file named .csv must not eat memory). */
const MAX_LINE_BYTES = 1024 * 1024;
/** Most rows emitted in one go on original timing before letting other work run. */
const MAX_ROWS_PER_PUMP = 8192;
/** Rows emitted between yields to the event loop in `fast` mode. */
const FAST_BATCH_ROWS = 512;
/** Dropped rows remembered with their reasons (the count is kept in full). */
const MAX_DROPS_KEPT = 20;
/** WAV frames per block handed to the player. */
const WAV_FRAMES_PER_BLOCK = 4096;

/** A parsed row: file time in ms (relative to nothing in particular) and its values. */
interface Row {
  time: number;
  values: Record<string, number>;
}

/** Gives rows in blocks: synchronously when in memory, as a promise when read from disk. */
interface RowReader {
  /** The next block (never empty), or null at the end of the data. */
  next(): Row[] | null | Promise<Row[] | null>;
  /** Starts again from the first row. */
  rewind(): void;
  /** True when the same row objects come back after a rewind (rows held in memory). */
  readonly reuses: boolean;
  close(): Promise<void>;
}

/** What the check in start() learned about the file. */
interface Checked {
  reader: RowReader;
  /** Time of the first row, ms. */
  t0: number;
  /** Time added per loop, ms (0 when the file cannot loop). */
  periodMs: number;
  dropped: number;
  drops: DroppedRow[];
  format: ReplayFormat;
}

/** A sensor source replaying a recorded CSV, JSON-lines or WAV file. */
export class ReplaySource extends EventEmitter<SourceEvents> implements SensorSource {
  /** Source name (from config). */
  readonly name: string;
  private readonly config: ReplaySourceConfig;
  private readonly clock: Clock;
  private readonly file: string;
  private readonly residentBytes: number;
  private readonly speed: number;
  private checked?: Checked;
  private starting?: Promise<void>;
  private running = false;
  private timer?: TimerHandle;
  private waiting?: Promise<void>;
  private fastRun?: Promise<void>;
  private closing?: Promise<void>;
  private block: Row[] = [];
  private pos = 0;
  private offsetMs = 0;
  private rowsThisPass = 0;
  private lastRel = 0;
  private startMono = 0;
  private startEpoch = 0;
  private emitted = 0;

  constructor(config: ReplaySourceConfig, deps: ReplaySourceDeps) {
    super();
    if (!config || typeof config !== 'object') throw new TypeError('config must be a replay source configuration');
    if (!deps?.clock) throw new TypeError('deps.clock is required');
    if (typeof deps.baseDir !== 'string') throw new TypeError('deps.baseDir must be a directory path');
    if (typeof config.file !== 'string' || config.file.length === 0) throw new TypeError('config.file must be a non-empty path');
    const speed = config.speed ?? 1;
    if (typeof speed !== 'number' || !Number.isFinite(speed) || speed <= 0) throw new RangeError(`config.speed must be a positive number, got ${String(speed)}`);
    const resident = deps.residentBytes ?? DEFAULT_RESIDENT_BYTES;
    if (!Number.isFinite(resident) || resident < 0) throw new RangeError(`deps.residentBytes must be a non-negative number, got ${resident}`);
    this.config = config;
    this.name = config.name;
    this.clock = deps.clock;
    this.file = path.resolve(deps.baseDir, config.file);
    this.residentBytes = resident;
    this.speed = speed;
  }

  /** Checks the whole file, then starts playback. Rejects with DriverError KEEL_E_REPLAY. */
  start(): Promise<void> {
    if (this.running) return Promise.resolve();
    this.starting ??= this.begin().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** Stops playback and closes the file. Idempotent. */
  async stop(): Promise<void> {
    if (this.starting) await this.starting.catch(() => undefined);
    this.running = false;
    this.clock.cancel(this.timer);
    this.timer = undefined;
    await this.waiting?.catch(() => undefined);
    await this.fastRun?.catch(() => undefined);
    await this.closing;
    const reader = this.checked?.reader;
    this.checked = undefined;
    await reader?.close();
  }

  /** Counters for metrics; `dropped` counts the malformed rows found in the file. */
  stats(): SourceStats {
    return { samples: this.emitted, dropped: this.checked?.dropped ?? this.lastDropped, reconnects: 0, connected: this.running };
  }

  /** The first malformed rows skipped (line numbers and reasons), for the log. */
  droppedRows(): readonly DroppedRow[] {
    return this.checked?.drops ?? this.lastDrops;
  }

  /** The detected file kind, once started. */
  format(): ReplayFormat | undefined {
    return this.checked?.format;
  }

  private lastDropped = 0;
  private lastDrops: DroppedRow[] = [];

  private async begin(): Promise<void> {
    const checked = await checkFile(this.file, this.config, this.residentBytes, (m) => this.fail(m));
    this.checked = checked;
    this.lastDropped = checked.dropped;
    this.lastDrops = checked.drops;
    this.block = [];
    this.pos = 0;
    this.offsetMs = 0;
    this.rowsThisPass = 0;
    this.lastRel = 0;
    this.startMono = this.clock.monotonic();
    this.startEpoch = this.clock.now();
    this.running = true;
    if ((this.config.timing ?? 'original') === 'fast') {
      this.fastRun = this.runFast().catch((err) => this.halt(err));
    } else {
      // The first rows go out on the first timer, after start() has resolved.
      this.timer = this.clock.setTimeout(`replay:${this.name}:pace`, () => this.pump(), 0);
    }
  }

  private fail(message: string, cause?: unknown): DriverError {
    return new DriverError('KEEL_E_REPLAY', `replay source "${this.name}" (${this.file}): ${message}`, cause === undefined ? {} : { cause });
  }

  /** Original timing: emits every row that is due, then sleeps until the next one is. */
  private pump(): void {
    this.timer = undefined;
    if (!this.running || !this.checked) return;
    const nowRel = this.clock.monotonic() - this.startMono;
    for (let burst = 0; ; burst++) {
      if (burst >= MAX_ROWS_PER_PUMP) {
        // Far behind (a stalled event loop at a high rate): catch up over several turns
        // instead of blocking everything else; the sample times stay exact.
        this.timer = this.clock.setTimeout(`replay:${this.name}:pace`, () => this.pump(), 0);
        return;
      }
      if (this.pos >= this.block.length) {
        const r = this.checked.reader.next();
        if (r instanceof Promise) {
          this.waiting = r.then(
            (b) => {
              this.waiting = undefined;
              if (this.running && this.takeBlock(b)) this.pump();
            },
            (err) => {
              this.waiting = undefined;
              this.halt(err);
            },
          );
          return;
        }
        if (!this.takeBlock(r)) return;
        continue;
      }
      const rel = this.relTime(this.block[this.pos]);
      // The epsilon absorbs float rounding of (time / speed) so a due row is not put off.
      if (rel > nowRel + 1e-6) {
        this.timer = this.clock.setTimeout(`replay:${this.name}:pace`, () => this.pump(), rel - nowRel);
        return;
      }
      this.deliver(this.block[this.pos++], rel);
      if (!this.running) return;
    }
  }

  /** Fast timing: emits rows back to back, yielding to the event loop every few hundred. */
  private async runFast(): Promise<void> {
    await yieldToEventLoop();
    let since = 0;
    while (this.running && this.checked) {
      if (this.pos >= this.block.length) {
        let r = this.checked.reader.next();
        if (r instanceof Promise) r = await r;
        if (!this.running) return;
        if (!this.takeBlock(r)) return;
        continue;
      }
      const row = this.block[this.pos++];
      this.deliver(row, this.relTime(row));
      if (++since >= FAST_BATCH_ROWS) {
        since = 0;
        await yieldToEventLoop();
      }
    }
  }

  /** Installs the next block; at the end of the data loops or finishes. False when playback is over. */
  private takeBlock(b: Row[] | null): boolean {
    const checked = this.checked;
    if (!checked) return false;
    this.pos = 0;
    if (b !== null) {
      this.block = b;
      this.rowsThisPass += b.length;
      return true;
    }
    this.block = [];
    if (this.config.loop && this.rowsThisPass > 0) {
      checked.reader.rewind();
      this.offsetMs += checked.periodMs;
      this.rowsThisPass = 0;
      return true;
    }
    if (this.config.loop) {
      this.halt(this.fail('the file has no valid rows any more (was it changed while playing?)'));
      return false;
    }
    this.running = false;
    this.release();
    this.emit('end');
    return false;
  }

  /** Closes the file once playback is over (end or fault); stop() waits for it. */
  private release(): void {
    const reader = this.checked?.reader;
    if (reader) this.closing = reader.close().catch(() => undefined);
  }

  /** Ms after start at which `row` is due (never earlier than the row before). */
  private relTime(row: Row): number {
    const checked = this.checked as Checked;
    const rel = (row.time + this.offsetMs - checked.t0) / this.speed;
    // The file was checked to be in order; this guards against it changing while streamed.
    this.lastRel = rel > this.lastRel ? rel : this.lastRel;
    return this.lastRel;
  }

  private deliver(row: Row, rel: number): void {
    this.emitted++;
    // Rows held in memory come back on every loop: hand out copies so a consumer that
    // changes a sample cannot change the next pass.
    const values = this.checked?.reader.reuses ? { ...row.values } : row.values;
    const sample: Sample = { t: this.startEpoch + rel, values };
    this.emit('sample', sample);
  }

  /** Playback failed (a read error mid-file): report it once and stop delivering. */
  private halt(err: unknown): void {
    if (!this.running) return;
    this.running = false;
    this.clock.cancel(this.timer);
    this.timer = undefined;
    const e = err instanceof DriverError ? err : this.fail(`reading failed: ${(err as Error)?.message ?? String(err)}`, err);
    this.release();
    this.emit('fault', e);
  }
}

// ------------------------------------------------------------------ checking a file

type Fail = (message: string, cause?: unknown) => DriverError;

async function checkFile(file: string, config: ReplaySourceConfig, residentBytes: number, fail: Fail): Promise<Checked> {
  let size: number;
  try {
    const st = await stat(file);
    if (st.isDirectory()) throw fail('is a directory, not a file');
    // A FIFO or device would block or never end; only regular files can be checked and looped.
    if (!st.isFile()) throw fail('is not a regular file (a pipe or a device?); replay plays files');
    size = st.size;
  } catch (err) {
    if (err instanceof DriverError) throw err;
    throw openFailure(err, fail);
  }
  if (size === 0) throw fail('the file is empty');
  let fh: FileHandle;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    throw openFailure(err, fail);
  }
  try {
    const head = Buffer.alloc(Math.min(size, 64));
    await fh.read(head, 0, head.length, 0);
    const format = detectFormat(file, head, fail);
    if (format === 'wav') return await checkWav(fh, size, config, residentBytes, fail);
    return await checkText(fh, size, format, config, residentBytes, fail);
  } catch (err) {
    await fh.close().catch(() => undefined);
    if (err instanceof DriverError) throw err;
    throw fail(`cannot read the file: ${(err as Error).message}`, err);
  }
}

function openFailure(err: unknown, fail: Fail): DriverError {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return fail('file not found (a relative path resolves against the config file\'s directory)', err);
    case 'EACCES':
    case 'EPERM':
      return fail('permission denied reading the file', err);
    case 'ENOTDIR':
      return fail('a part of the path is not a directory', err);
    default:
      return fail(`cannot open the file: ${e?.message ?? String(err)}`, err);
  }
}

/** By extension; for other names by content (RIFF magic, a leading `{`). */
function detectFormat(file: string, head: Buffer, fail: Fail): ReplayFormat {
  const ext = path.extname(file).toLowerCase();
  const magic = head.subarray(0, 4).toString('latin1');
  const riffLike = magic === 'RIFF' || magic === 'RIFX' || magic === 'RF64';
  if (ext === '.wav' || ext === '.wave') {
    if (!riffLike) throw fail(`named ${ext} but is not a RIFF/WAVE file (it starts with ${JSON.stringify(magic)})`);
    return 'wav';
  }
  if (ext === '.csv' || ext === '.tsv' || ext === '.txt') return 'csv';
  if (ext === '.jsonl' || ext === '.ndjson' || ext === '.json') return 'jsonl';
  if (riffLike) return 'wav';
  const text = head.toString('utf8').replace(/^\uFEFF/, '').trimStart();
  return text.startsWith('{') ? 'jsonl' : 'csv';
}

// ------------------------------------------------------------------ text: CSV and JSON lines

/** What a line parser returns: a row, a reason to drop the line, or `skip` (blank, comment, header). */
type LineResult = Row | string | typeof SKIP;
const SKIP = Symbol('skip');

interface LineParser {
  /** `text` is null for a line over MAX_LINE_BYTES. Throws DriverError for a fatal header problem. */
  parse(text: string | null, lineNo: number): LineResult;
  /** Back to the first data line (the header, once found, is remembered and skipped). */
  reset(): void;
}

const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

function unitMs(config: ReplaySourceConfig): number {
  switch (config.timeUnit ?? 'ms') {
    case 's':
      return 1000;
    case 'us':
      return 0.001;
    default:
      return 1;
  }
}

function quoteForMessage(v: string): string {
  return JSON.stringify(v.length > 24 ? `${v.slice(0, 24)}...` : v);
}

/** Splits one CSV line; double-quoted fields may hold the delimiter and "" for a quote. */
function splitCsv(line: string, delim: string): string[] {
  if (!line.includes('"')) return line.split(delim).map((f) => f.trim());
  const out: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"') {
        if (line[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += ch;
    } else if (ch === '"' && field.trim() === '') {
      field = '';
      quoted = true;
    } else if (ch === delim) {
      out.push(field.trim());
      field = '';
    } else field += ch;
  }
  out.push(field.trim());
  return out;
}

class CsvParser implements LineParser {
  private headerLine = 0;
  private delim = ',';
  private columns: string[] = [];
  private timeIndex = -1;
  /** [column index, channel name] of every channel read. */
  private channels: Array<[number, string]> = [];
  private dataIndex = 0;
  private readonly unit: number;

  constructor(
    private readonly config: ReplaySourceConfig,
    private readonly fail: Fail,
  ) {
    this.unit = unitMs(config);
  }

  reset(): void {
    this.dataIndex = 0;
  }

  /** Header column names (after the header was seen). */
  header(): string[] {
    return this.columns;
  }

  parse(text: string | null, lineNo: number): LineResult {
    if (text !== null) {
      const trimmed = text.trim();
      if (trimmed === '' || trimmed.startsWith('#')) return SKIP;
    }
    if (this.headerLine === 0) {
      if (text === null) throw this.fail(`line ${lineNo}: the header line is longer than ${MAX_LINE_BYTES} bytes; is this really a CSV file?`);
      this.readHeader(text, lineNo);
      return SKIP;
    }
    if (lineNo <= this.headerLine) return SKIP;
    const index = this.dataIndex++;
    if (text === null) return `line longer than ${MAX_LINE_BYTES} bytes`;
    const fields = splitCsv(text, this.delim);
    if (fields.length !== this.columns.length) return `expected ${this.columns.length} fields like the header, found ${fields.length}`;
    let time: number;
    if (this.timeIndex >= 0) {
      const raw = fields[this.timeIndex];
      if (!NUMBER.test(raw)) return `time column "${this.columns[this.timeIndex]}" is not a number: ${quoteForMessage(raw)}`;
      time = Number(raw) * this.unit;
    } else {
      time = (index * 1000) / (this.config.rateHz as number);
    }
    const values: Record<string, number> = {};
    let n = 0;
    for (const [col, name] of this.channels) {
      const raw = fields[col];
      if (raw === '') continue;
      if (!NUMBER.test(raw)) return `column "${name}" is not a number: ${quoteForMessage(raw)}`;
      values[name] = Number(raw);
      n++;
    }
    if (n === 0) return 'no values (every data cell is empty)';
    return { time, values };
  }

  private readHeader(text: string, lineNo: number): void {
    if (text.includes('\0')) throw this.fail(`line ${lineNo} contains NUL bytes: this is not a text (CSV) file`);
    const line = text.replace(/^\uFEFF/, '');
    const counts = [',', '\t', ';'].map((d) => [d, line.split(d).length - 1] as const);
    counts.sort((a, b) => b[1] - a[1]);
    this.delim = counts[0][1] > 0 ? counts[0][0] : ',';
    const columns = splitCsv(line, this.delim);
    const seen = new Set<string>();
    for (const c of columns) {
      if (c === '') continue;
      if (seen.has(c)) throw this.fail(`header (line ${lineNo}) names column "${c}" twice`);
      seen.add(c);
    }
    this.columns = columns;
    this.headerLine = lineNo;
    const tf = this.config.timeField;
    if (tf !== undefined) {
      this.timeIndex = columns.indexOf(tf);
      if (this.timeIndex < 0) throw this.fail(`timeField "${tf}" is not a column of the header (columns: ${named(columns).join(', ')})`);
    }
    const wanted = this.config.channels;
    if (wanted) {
      const missing = wanted.filter((w) => !columns.includes(w));
      if (missing.length) throw this.fail(`channels ${missing.map((m) => `"${m}"`).join(', ')} not in the header (columns: ${named(columns).join(', ')})`);
      this.channels = wanted.map((w) => [columns.indexOf(w), w]);
    } else {
      this.channels = columns.flatMap((c, i): Array<[number, string]> => (c === '' || c === '__proto__' || i === this.timeIndex ? [] : [[i, c]]));
    }
    if (this.channels.length === 0) throw this.fail(`the header (line ${lineNo}) names no data columns besides the time`);
  }
}

function named(columns: string[]): string[] {
  return columns.filter((c) => c !== '').map((c) => JSON.stringify(c));
}

class JsonLinesParser implements LineParser {
  private dataIndex = 0;
  private readonly unit: number;
  constructor(private readonly config: ReplaySourceConfig) {
    this.unit = unitMs(config);
  }
  reset(): void {
    this.dataIndex = 0;
  }
  parse(text: string | null, _lineNo: number): LineResult {
    if (text !== null && text.trim() === '') return SKIP;
    const index = this.dataIndex++;
    if (text === null) return `line longer than ${MAX_LINE_BYTES} bytes`;
    let obj: unknown;
    try {
      obj = JSON.parse(text.replace(/^\uFEFF/, ''));
    } catch {
      return 'not valid JSON';
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return 'not a JSON object';
    const rec = obj as Record<string, unknown>;
    const tf = this.config.timeField;
    let time: number;
    if (tf !== undefined) {
      const v = rec[tf];
      if (v === undefined) return `no "${tf}" (time) field`;
      if (typeof v !== 'number' || !Number.isFinite(v)) return `time field "${tf}" is not a number: ${quoteForMessage(JSON.stringify(v))}`;
      time = v * this.unit;
    } else {
      time = (index * 1000) / (this.config.rateHz as number);
    }
    const values: Record<string, number> = {};
    let n = 0;
    if (this.config.channels) {
      for (const name of this.config.channels) {
        const v = rec[name];
        if (v === undefined || v === null) continue;
        if (typeof v !== 'number' || !Number.isFinite(v)) return `field "${name}" is not a number: ${quoteForMessage(JSON.stringify(v))}`;
        values[name] = v;
        n++;
      }
    } else {
      for (const key of Object.keys(rec)) {
        const v = rec[key];
        if (key === tf || key === '__proto__' || typeof v !== 'number' || !Number.isFinite(v)) continue;
        values[key] = v;
        n++;
      }
    }
    if (n === 0) return this.config.channels ? 'none of the channels is present' : 'no numeric fields';
    return { time, values };
  }
}

/** Where a text pass is in the file. A rewind makes a new one, so a stale read cannot disturb it. */
interface TextCursor {
  pos: number;
  lineNo: number;
  carry: Buffer | null;
  /** Inside a line that grew past MAX_LINE_BYTES: skipping to its end. */
  discarding: boolean;
  eof: boolean;
}

function newCursor(): TextCursor {
  return { pos: 0, lineNo: 1, carry: null, discarding: false, eof: false };
}

/**
 * Reads the next chunk at `cur` and calls `onLine` for every complete line in it (and the
 * last line at the end of the file). `text` is null for an over-long line.
 */
async function readLines(fh: FileHandle, cur: TextCursor, onLine: (text: string | null, lineNo: number) => void): Promise<void> {
  const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
  const { bytesRead } = await fh.read(chunk, 0, CHUNK_BYTES, cur.pos);
  cur.pos += bytesRead;
  const emit = (buf: Buffer | null) => {
    const lineNo = cur.lineNo++;
    if (buf === null) return onLine(null, lineNo);
    let end = buf.length;
    if (end > 0 && buf[end - 1] === 13) end--; // CRLF
    onLine(buf.toString('utf8', 0, end), lineNo);
  };
  if (bytesRead === 0) {
    cur.eof = true;
    if (cur.discarding) emit(null);
    else if (cur.carry && cur.carry.length > 0) emit(cur.carry);
    cur.carry = null;
    cur.discarding = false;
    return;
  }
  const data = chunk.subarray(0, bytesRead);
  let start = 0;
  for (;;) {
    const nl = data.indexOf(10, start);
    if (nl < 0) break;
    if (cur.discarding) {
      cur.discarding = false;
      emit(null);
    } else {
      const part = data.subarray(start, nl);
      const line = cur.carry ? Buffer.concat([cur.carry, part]) : part;
      cur.carry = null;
      emit(line.length > MAX_LINE_BYTES ? null : line);
    }
    start = nl + 1;
  }
  if (cur.discarding || start >= data.length) return;
  const rest = data.subarray(start);
  // Copied, so the 64 KiB chunk is not kept alive by a short tail.
  cur.carry = cur.carry ? Buffer.concat([cur.carry, rest]) : Buffer.from(rest);
  if (cur.carry.length > MAX_LINE_BYTES) {
    cur.carry = null;
    cur.discarding = true;
  }
}

/** Rows held in memory (small files). */
class MemoryRows implements RowReader {
  readonly reuses = true;
  private done = false;
  constructor(private readonly rows: Row[]) {}
  next(): Row[] | null {
    if (this.done || this.rows.length === 0) return null;
    this.done = true;
    return this.rows;
  }
  rewind(): void {
    this.done = false;
  }
  async close(): Promise<void> {}
}

/** Rows read from disk block by block, the next block prefetched while the current one plays. */
abstract class StreamedRows implements RowReader {
  readonly reuses = false;
  private buffered: Row[] | null | undefined;
  private inflight?: Promise<void>;
  private failure?: unknown;
  private generation = 0;
  private closed = false;

  protected abstract readBlock(): Promise<Row[] | null>;
  protected abstract restart(): void;
  protected abstract release(): Promise<void>;

  next(): Row[] | null | Promise<Row[] | null> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.buffered !== undefined) {
      const b = this.buffered;
      this.buffered = undefined;
      if (b !== null) this.prefetch();
      return b;
    }
    this.prefetch();
    return (this.inflight as Promise<void>).then(() => this.next());
  }

  rewind(): void {
    this.generation++;
    this.inflight = undefined;
    this.buffered = undefined;
    this.failure = undefined;
    this.restart();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.generation++;
    // Let a read in progress finish before the handle goes away under it.
    await this.inflight?.catch(() => undefined);
    await this.release();
  }

  private prefetch(): void {
    if (this.inflight || this.buffered !== undefined || this.closed) return;
    const gen = this.generation;
    const p = this.readBlock().then(
      (b) => {
        if (gen !== this.generation) return;
        this.inflight = undefined;
        this.buffered = b;
      },
      (err) => {
        if (gen !== this.generation) return;
        this.inflight = undefined;
        this.failure = err;
      },
    );
    this.inflight = p;
  }
}

class TextRows extends StreamedRows {
  private cursor = newCursor();
  constructor(
    private readonly fh: FileHandle,
    private readonly parser: LineParser,
  ) {
    super();
  }
  protected async readBlock(): Promise<Row[] | null> {
    const cur = this.cursor;
    const rows: Row[] = [];
    while (rows.length === 0 && !cur.eof) {
      await readLines(this.fh, cur, (text, lineNo) => {
        const r = this.parser.parse(text, lineNo);
        if (typeof r === 'object') rows.push(r);
      });
    }
    return rows.length ? rows : null;
  }
  protected restart(): void {
    this.cursor = newCursor();
    this.parser.reset();
  }
  protected release(): Promise<void> {
    return this.fh.close();
  }
}

async function checkText(
  fh: FileHandle,
  size: number,
  format: 'csv' | 'jsonl',
  config: ReplaySourceConfig,
  residentBytes: number,
  fail: Fail,
): Promise<Checked> {
  if (config.timeField !== undefined && config.rateHz !== undefined) {
    throw fail('give timeField (each row carries its time) or rateHz (rows are evenly spaced), not both');
  }
  if (config.timeField === undefined && config.rateHz === undefined) {
    throw fail(`no timing: set timeField (the ${format === 'csv' ? 'column' : 'field'} holding each row's time, in timeUnit) or rateHz (rows evenly spaced)`);
  }
  const parser = format === 'csv' ? new CsvParser(config, fail) : new JsonLinesParser(config);
  const keep = size <= residentBytes;
  const rows: Row[] = [];
  const drops: DroppedRow[] = [];
  let dropped = 0;
  let valid = 0;
  let dataLines = 0;
  let t0 = 0;
  let tLast = 0;
  let lastLine = 0;
  const cur = newCursor();
  let headerSeen = false;
  while (!cur.eof) {
    await readLines(fh, cur, (text, lineNo) => {
      if (text !== null && lineNo === 1 && text.includes('\0') && format === 'jsonl') {
        throw fail('line 1 contains NUL bytes: this is not a text (JSON lines) file');
      }
      const r = parser.parse(text, lineNo);
      if (r === SKIP) {
        headerSeen ||= format === 'csv' && (parser as CsvParser).header().length > 0;
        return;
      }
      dataLines++;
      if (typeof r === 'string') {
        dropped++;
        if (drops.length < MAX_DROPS_KEPT) drops.push({ line: lineNo, reason: r });
        return;
      }
      if (valid === 0) t0 = r.time;
      else if (r.time < tLast) {
        throw fail(
          `time goes backwards at line ${lineNo} (${fmtMs(r.time)} after ${fmtMs(tLast)} at line ${lastLine}); ` +
            `rows are replayed in file order: sort the file by ${config.timeField ?? 'time'}`,
        );
      }
      tLast = r.time;
      lastLine = lineNo;
      valid++;
      if (keep) rows.push(r);
    });
  }
  if (format === 'csv' && !headerSeen) throw fail('no header row: the file holds only blank or # comment lines');
  if (valid === 0) {
    if (dataLines === 0) throw fail(format === 'csv' ? 'the file has a header but no data rows' : 'the file has no data lines');
    const examples = drops.slice(0, 3).map((d) => `line ${d.line}: ${d.reason}`).join('; ');
    const hint =
      format === 'csv' && !config.channels ? ' (if some columns hold text, list the numeric ones in channels)' : '';
    throw fail(`no valid rows: all ${dropped} data lines are malformed (${examples})${hint}`);
  }
  let periodMs: number;
  if (config.timeField === undefined) {
    periodMs = (dataLines * 1000) / (config.rateHz as number);
  } else {
    const span = tLast - t0;
    periodMs = valid >= 2 && span > 0 ? span + span / (valid - 1) : 0;
  }
  if (config.loop && !(periodMs > 0)) {
    throw fail('cannot loop: the file has a single time (one row, or all rows at the same time), so a loop would not advance; use rateHz or more rows');
  }
  let reader: RowReader;
  if (keep) {
    await fh.close();
    reader = new MemoryRows(rows);
  } else {
    parser.reset();
    reader = new TextRows(fh, parser);
  }
  return { reader, t0, periodMs, dropped, drops, format };
}

function fmtMs(ms: number): string {
  return `${Number(ms.toPrecision(12))} ms`;
}

// ------------------------------------------------------------------ WAV

/** What a WAV header says (RIFF/WAVE, `fmt ` and `data` chunks). */
export interface WavInfo {
  channels: number;
  sampleRate: number;
  bitsPerSample: number;
  blockAlign: number;
  /** Byte offset of the first sample. */
  dataOffset: number;
  /** Bytes of whole frames in the data chunk. */
  dataBytes: number;
  frames: number;
  /** Bytes of an incomplete last frame (ignored). */
  partialBytes: number;
}

const WAVE_FORMAT_PCM = 0x0001;
const WAVE_FORMAT_IEEE_FLOAT = 0x0003;
const WAVE_FORMAT_EXTENSIBLE = 0xfffe;
const FORMAT_NAMES: Record<number, string> = {
  0x0002: 'Microsoft ADPCM',
  0x0003: 'IEEE float',
  0x0006: 'A-law',
  0x0007: 'mu-law',
  0x0011: 'IMA ADPCM',
  0x0055: 'MP3',
};
/** Most chunks walked before giving up (a crafted file must not loop for long). */
const MAX_WAV_CHUNKS = 4096;

/**
 * Reads and checks a WAV header through `read(position, length)`. Accepts 16-bit integer PCM
 * (format 1, or WAVE_FORMAT_EXTENSIBLE with the PCM sub-format); skips unknown chunks
 * (LIST, fact, ...); throws via `fail` with a specific message otherwise.
 */
export async function readWavInfo(read: (position: number, length: number) => Promise<Buffer>, size: number, fail: (message: string) => Error): Promise<WavInfo> {
  if (size < 12) throw fail(`not a WAV file: only ${size} bytes`);
  const riff = await read(0, 12);
  const magic = riff.toString('latin1', 0, 4);
  if (magic === 'RIFX') throw fail('big-endian WAV (RIFX) is not supported; convert it to a little-endian 16-bit PCM WAV (sox in.wav -b 16 -L out.wav)');
  if (magic === 'RF64') throw fail('RF64 (over 4 GiB) WAV is not supported; split it or convert it to a plain 16-bit PCM WAV');
  if (magic !== 'RIFF' || riff.toString('latin1', 8, 12) !== 'WAVE') throw fail('not a WAV file (no RIFF/WAVE header)');
  let fmt: Buffer | undefined;
  let dataOffset = -1;
  let dataSize = 0;
  let off = 12;
  for (let n = 0; n < MAX_WAV_CHUNKS && off + 8 <= size && (fmt === undefined || dataOffset < 0); n++) {
    const head = await read(off, 8);
    const id = head.toString('latin1', 0, 4);
    const len = head.readUInt32LE(4);
    const body = off + 8;
    if (id === 'fmt ') {
      if (len < 16) throw fail(`the fmt chunk is ${len} bytes, shorter than the 16 a WAV needs`);
      if (body + Math.min(len, 40) > size) throw fail('truncated file: it ends inside the fmt chunk');
      fmt = await read(body, Math.min(len, 40));
    } else if (id === 'data') {
      dataOffset = body;
      // Writers that stream (arecord or sox to a pipe) leave the size at 0xFFFFFFFF: take the rest of the file.
      dataSize = len === 0xffffffff ? size - body : len;
      if (body + dataSize > size) {
        throw fail(`truncated file: the data chunk declares ${dataSize} bytes but the file ends after ${size - body}`);
      }
    }
    off = body + len + (len & 1); // chunks are padded to an even size
  }
  if (fmt === undefined) throw fail(dataOffset < 0 ? 'no fmt and no data chunk: not a usable WAV file (truncated?)' : 'no fmt chunk before the end of the file');
  if (dataOffset < 0) throw fail('no data chunk: the file holds no samples (truncated?)');
  let format = fmt.readUInt16LE(0);
  const channels = fmt.readUInt16LE(2);
  const sampleRate = fmt.readUInt32LE(4);
  const blockAlign = fmt.readUInt16LE(12);
  const bits = fmt.readUInt16LE(14);
  if (format === WAVE_FORMAT_EXTENSIBLE) {
    if (fmt.length < 40) throw fail('WAVE_FORMAT_EXTENSIBLE fmt chunk is too short (needs 40 bytes)');
    format = fmt.readUInt16LE(24); // the first two bytes of the sub-format GUID are the format code
  }
  if (format === WAVE_FORMAT_IEEE_FLOAT) {
    throw fail(`${bits}-bit IEEE float WAV is not supported; keel replays 16-bit PCM (convert: sox in.wav -e signed-integer -b 16 out.wav)`);
  }
  if (format !== WAVE_FORMAT_PCM) {
    const what = FORMAT_NAMES[format] ?? `format code 0x${format.toString(16).padStart(4, '0')}`;
    throw fail(`${what} WAV is not supported; keel replays 16-bit PCM (convert: sox in.wav -e signed-integer -b 16 out.wav)`);
  }
  if (bits !== 16) throw fail(`${bits}-bit PCM WAV is not supported; keel replays 16-bit PCM (convert: sox in.wav -b 16 out.wav)`);
  if (channels < 1) throw fail('the fmt chunk says 0 channels');
  if (sampleRate < 1) throw fail('the fmt chunk says a sample rate of 0');
  if (blockAlign !== channels * 2) throw fail(`inconsistent fmt chunk: block align ${blockAlign} for ${channels} channels of 16 bits (expected ${channels * 2})`);
  const frames = Math.floor(dataSize / blockAlign);
  if (frames === 0) throw fail('the data chunk holds no complete sample frame');
  return {
    channels,
    sampleRate,
    bitsPerSample: bits,
    blockAlign,
    dataOffset,
    dataBytes: frames * blockAlign,
    frames,
    partialBytes: dataSize - frames * blockAlign,
  };
}

/** Builds rows for frames [first, first + count) from `buf` (which starts at frame `first`). */
function wavRows(buf: Buffer, first: number, count: number, names: string[], msPerFrame: number): Row[] {
  const rows = new Array<Row>(count);
  const ch = names.length;
  for (let f = 0; f < count; f++) {
    const values: Record<string, number> = {};
    const base = f * ch * 2;
    for (let c = 0; c < ch; c++) values[names[c]] = buf.readInt16LE(base + c * 2) / 32768;
    rows[f] = { time: (first + f) * msPerFrame, values };
  }
  return rows;
}

class WavMemoryRows implements RowReader {
  readonly reuses = false; // rows are built afresh from the buffer each pass
  private frame = 0;
  constructor(
    private readonly data: Buffer,
    private readonly info: WavInfo,
    private readonly names: string[],
    private readonly msPerFrame: number,
  ) {}
  next(): Row[] | null {
    if (this.frame >= this.info.frames) return null;
    const count = Math.min(WAV_FRAMES_PER_BLOCK, this.info.frames - this.frame);
    const start = this.frame * this.info.blockAlign;
    const rows = wavRows(this.data.subarray(start, start + count * this.info.blockAlign), this.frame, count, this.names, this.msPerFrame);
    this.frame += count;
    return rows;
  }
  rewind(): void {
    this.frame = 0;
  }
  async close(): Promise<void> {}
}

class WavStreamRows extends StreamedRows {
  private frame = 0;
  constructor(
    private readonly fh: FileHandle,
    private readonly info: WavInfo,
    private readonly names: string[],
    private readonly msPerFrame: number,
  ) {
    super();
  }
  protected async readBlock(): Promise<Row[] | null> {
    const first = this.frame;
    if (first >= this.info.frames) return null;
    const perBlock = Math.max(1, Math.floor(CHUNK_BYTES / this.info.blockAlign));
    const count = Math.min(perBlock, this.info.frames - first);
    this.frame = first + count;
    const bytes = count * this.info.blockAlign;
    const buf = Buffer.allocUnsafe(bytes);
    const { bytesRead } = await this.fh.read(buf, 0, bytes, this.info.dataOffset + first * this.info.blockAlign);
    const got = Math.floor(bytesRead / this.info.blockAlign);
    if (got === 0) throw new Error(`the file ended early, at frame ${first} of ${this.info.frames} (was it truncated while playing?)`);
    return wavRows(buf, first, got, this.names, this.msPerFrame);
  }
  protected restart(): void {
    this.frame = 0;
  }
  protected release(): Promise<void> {
    return this.fh.close();
  }
}

async function checkWav(fh: FileHandle, size: number, config: ReplaySourceConfig, residentBytes: number, fail: Fail): Promise<Checked> {
  if (config.timeField !== undefined) throw fail('WAV files have no time field: remove timeField (the WAV sample rate gives the timing)');
  const read = async (position: number, length: number) => {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, position);
    if (bytesRead < length) throw fail('truncated file: it ends inside a chunk header');
    return buf;
  };
  const info = await readWavInfo(read, size, (m) => fail(m));
  const names = config.channels ?? Array.from({ length: info.channels }, (_, i) => `ch${i}`);
  if (names.length !== info.channels) {
    throw fail(`channels names ${names.length} channel(s) (${names.join(', ')}) but the WAV file has ${info.channels}`);
  }
  if (new Set(names).size !== names.length) throw fail('channels names a channel twice');
  const rate = config.rateHz ?? info.sampleRate;
  const msPerFrame = 1000 / rate;
  const dropped = info.partialBytes > 0 ? 1 : 0;
  const drops = dropped ? [{ line: info.frames, reason: `incomplete last frame (${info.partialBytes} of ${info.blockAlign} bytes) ignored` }] : [];
  let reader: RowReader;
  if (info.dataBytes <= residentBytes) {
    const data = Buffer.alloc(info.dataBytes);
    const { bytesRead } = await fh.read(data, 0, info.dataBytes, info.dataOffset);
    await fh.close();
    if (bytesRead < info.dataBytes) throw fail('truncated file: the data ended early');
    reader = new WavMemoryRows(data, info, names, msPerFrame);
  } else {
    reader = new WavStreamRows(fh, info, names, msPerFrame);
  }
  return { reader, t0: 0, periodMs: info.frames * msPerFrame, dropped, drops, format: 'wav' };
}

// ------------------------------------------------------------------ misc

/**
 * Lets other work run (timers, IO, other sources) between batches in `fast` mode. This is
 * cooperative scheduling on the real event loop, not a timer, so it does not go through the
 * injected clock.
 */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
