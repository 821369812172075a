/**
 * The simulated twin of the GPIO backend: chips and lines in memory, driven from tests and
 * demos with `set()`, observed with `get()` and `history()`. It resolves chips and lines and
 * fails exactly like the sysfs backend (same GpioError reasons), so code that works against
 * the sim works against the board.
 *
 * Levels given to `set()` and returned by `get()`/`history()` are physical (what a probe on
 * the wire shows); open lines see logical levels (inverted when opened `activeLow`).
 */
import type { Clock } from '../../runtime/clock.ts';
import type { GpioLineConfig } from '../../runtime/config/schema.ts';
import {
  checkEdge,
  checkLevel,
  checkLineConfig,
  describeLine,
  GpioError,
  listForMessage,
  type GpioBackend,
  type GpioEdge,
  type GpioInputLine,
  type GpioInputOptions,
  type GpioLevel,
  type GpioOutputLine,
  type GpioOutputOptions,
} from './backend.ts';

/** One simulated chip. */
export interface SimChipSpec {
  /** Chip label, as `gpiodetect` would show it. */
  label: string;
  /** Number of lines (offsets 0 .. lines-1). Default 64. */
  lines?: number;
  /** Line names by offset (default `GPIO0`, `GPIO1`, ...). */
  names?: string[];
}

/** Options of the simulated backend. */
export interface SimGpioOptions {
  /** Clock stamping edges and output changes. */
  clock: Clock;
  /** Chips, addressed by label or as `gpiochipN` (N = index here). Default: one chip `sim` with 64 lines. */
  chips?: SimChipSpec[];
}

/** One change of a simulated output line. */
export interface GpioOutputChange {
  /** Chip label. */
  chip: string;
  offset: number;
  /** Physical level after the change. */
  value: GpioLevel;
  /** Host time, epoch ms (from the injected clock). */
  t: number;
}

/** Default chip set: one chip `sim` with 64 lines named GPIO0..GPIO63. */
export const DEFAULT_SIM_CHIPS: readonly SimChipSpec[] = Object.freeze([{ label: 'sim', lines: 64 }]);

type Mode = 'free' | 'input' | 'output';

interface SimLine {
  offset: number;
  name: string;
  /** Physical level on the wire. */
  level: GpioLevel;
  mode: Mode;
  activeLow: boolean;
  edge: GpioEdge;
  /** Bumped on every open, so a closed handle cannot touch a reopened line. */
  generation: number;
  edgeListeners: Array<(value: GpioLevel, hostTimeMs: number) => void>;
  errorListeners: Array<(err: GpioError) => void>;
  /** Who holds the line outside keel (simulates a kernel driver or another program). */
  heldBy?: string;
}

interface SimChip {
  label: string;
  index: number;
  lines: SimLine[];
}

/** In-memory GPIO chips implementing `GpioBackend`, for tests, demos and HIL runs. */
export class SimGpioBackend implements GpioBackend {
  private readonly clock: Clock;
  private readonly chipList: SimChip[];
  private readonly changes: GpioOutputChange[] = [];

  constructor(opts: SimGpioOptions) {
    if (!opts || typeof opts !== 'object' || !opts.clock) throw new TypeError('opts.clock is required');
    this.clock = opts.clock;
    const specs = opts.chips ?? DEFAULT_SIM_CHIPS;
    if (!Array.isArray(specs) || specs.length === 0) throw new TypeError('opts.chips must be a non-empty array');
    const seen = new Set<string>();
    this.chipList = specs.map((spec, index) => {
      if (typeof spec.label !== 'string' || spec.label.length === 0) throw new TypeError(`opts.chips[${index}].label must be a non-empty string`);
      if (seen.has(spec.label)) throw new TypeError(`opts.chips[${index}].label "${spec.label}" is used twice`);
      seen.add(spec.label);
      const count = spec.lines ?? 64;
      if (!Number.isInteger(count) || count < 1 || count > 1024) throw new RangeError(`opts.chips[${index}].lines must be an integer 1..1024, got ${count}`);
      if (spec.names !== undefined && (!Array.isArray(spec.names) || spec.names.length > count)) {
        throw new RangeError(`opts.chips[${index}].names must be an array of at most ${count} names`);
      }
      const lines: SimLine[] = [];
      for (let offset = 0; offset < count; offset++) {
        lines.push({
          offset,
          name: spec.names ? (spec.names[offset] ?? '') : `GPIO${offset}`,
          level: 0,
          mode: 'free',
          activeLow: false,
          edge: 'none',
          generation: 0,
          edgeListeners: [],
          errorListeners: [],
        });
      }
      return { label: spec.label, index, lines };
    });
  }

  /** Opens an input line. Rejects with GpioError like the sysfs backend. */
  async openInput(line: GpioLineConfig, opts: GpioInputOptions): Promise<GpioInputLine> {
    checkLineConfig(line);
    const edge = checkEdge(opts?.edge, 'opts.edge');
    const l = this.claim(line);
    l.mode = 'input';
    l.activeLow = Boolean(opts.activeLow);
    l.edge = edge;
    const gen = ++l.generation;
    const live = () => l.generation === gen && l.mode === 'input';
    const where = describeLine(line);
    return {
      read: () => {
        if (!live()) throw closedError(where);
        return logical(l);
      },
      onEdge: (cb) => {
        if (!live()) throw closedError(where);
        l.edgeListeners.push(cb);
      },
      onError: (cb) => {
        if (!live()) throw closedError(where);
        l.errorListeners.push(cb);
      },
      close: async () => {
        if (!live()) return;
        release(l);
      },
    };
  }

  /** Opens an output line driven to `opts.initial`. Rejects with GpioError like the sysfs backend. */
  async openOutput(line: GpioLineConfig, opts: GpioOutputOptions): Promise<GpioOutputLine> {
    checkLineConfig(line);
    const initial = checkLevel(opts?.initial, 'opts.initial');
    const l = this.claim(line);
    const chip = this.chipOf(line);
    l.mode = 'output';
    l.activeLow = Boolean(opts.activeLow);
    const gen = ++l.generation;
    const live = () => l.generation === gen && l.mode === 'output';
    const where = describeLine(line);
    const drive = (v: GpioLevel, always: boolean) => {
      const physical = (v ^ (l.activeLow ? 1 : 0)) as GpioLevel;
      if (always || physical !== l.level) {
        l.level = physical;
        this.changes.push({ chip: chip.label, offset: l.offset, value: physical, t: this.clock.now() });
      }
    };
    drive(initial, true);
    return {
      write: (value) => {
        if (!live()) throw closedError(where);
        drive(checkLevel(value), false);
      },
      read: () => {
        if (!live()) throw closedError(where);
        return logical(l);
      },
      close: async () => {
        if (!live()) return;
        release(l);
      },
    };
  }

  /**
   * Drives the physical level of a line from outside (a button, a sensor). Open inputs see
   * the change at once, stamped with the clock's `now()`. Refuses lines that keel drives.
   */
  set(chip: string, line: number | string, value: GpioLevel | boolean): void {
    const level = typeof value === 'boolean' ? (value ? 1 : 0) : checkLevel(value);
    const l = this.lineOf(toLineConfig(chip, line));
    if (l.mode === 'output') {
      throw new GpioError('busy', `GPIO ${describeLine(toLineConfig(chip, line))} is an output driven by keel; read it with get(), do not set() it`);
    }
    if (l.level === level) return;
    const before = logical(l);
    l.level = level;
    if (l.mode !== 'input') return;
    const after = logical(l);
    if (before === after || !edgeMatches(l.edge, after)) return;
    const t = this.clock.now();
    for (const cb of [...l.edgeListeners]) cb(after, t);
  }

  /** The physical level of a line (as driven by keel, or as last `set()`). */
  get(chip: string, line: number | string): GpioLevel {
    return this.lineOf(toLineConfig(chip, line)).level;
  }

  /** Output level changes so far, oldest first; optionally for one chip (and line) only. */
  history(chip?: string, line?: number | string): GpioOutputChange[] {
    if (chip === undefined) return this.changes.map((c) => ({ ...c }));
    const c = this.chipOf({ chip, offset: 0 });
    const offset = line === undefined ? undefined : this.lineOf(toLineConfig(chip, line)).offset;
    return this.changes.filter((x) => x.chip === c.label && (offset === undefined || x.offset === offset)).map((x) => ({ ...x }));
  }

  /** Marks a line as held outside keel (a kernel driver, another program): opening it fails `busy`. */
  hold(chip: string, line: number | string, holder = 'another program'): void {
    this.lineOf(toLineConfig(chip, line)).heldBy = holder;
  }

  /** Undoes `hold()`. */
  unhold(chip: string, line: number | string): void {
    delete this.lineOf(toLineConfig(chip, line)).heldBy;
  }

  /** Makes an open input report a failure to its `onError` listeners (a broken watch). */
  fail(chip: string, line: number | string, message = 'simulated GPIO failure'): void {
    const l = this.lineOf(toLineConfig(chip, line));
    const err = new GpioError('io', `GPIO ${describeLine(toLineConfig(chip, line))}: ${message}`, { retryable: true });
    for (const cb of [...l.errorListeners]) cb(err);
  }

  /** Whether a line is currently opened by keel, and how. */
  mode(chip: string, line: number | string): Mode {
    return this.lineOf(toLineConfig(chip, line)).mode;
  }

  private chipOf(line: GpioLineConfig): SimChip {
    const byLabel = this.chipList.find((c) => c.label === line.chip);
    if (byLabel) return byLabel;
    const m = /^gpiochip(\d+)$/.exec(line.chip);
    if (m) {
      const byIndex = this.chipList[Number(m[1])];
      if (byIndex) return byIndex;
    }
    const known = this.chipList.map((c) => `${c.label} (gpiochip${c.index}, ${c.lines.length} lines)`);
    throw new GpioError('chip-not-found', `GPIO chip "${line.chip}" not found; chips here: ${listForMessage(known)}`);
  }

  private lineOf(line: GpioLineConfig): SimLine {
    const chip = this.chipOf(line);
    if (line.offset !== undefined) {
      const l = chip.lines[line.offset];
      if (!l) {
        throw new GpioError(
          'line-not-found',
          `GPIO offset ${line.offset} is out of range for chip ${chip.label} (${chip.lines.length} lines, offsets 0-${chip.lines.length - 1})`,
        );
      }
      return l;
    }
    const l = chip.lines.find((x) => x.name === line.name);
    if (!l) {
      const names = chip.lines.map((x) => x.name).filter((n) => n.length > 0);
      throw new GpioError('line-not-found', `no line named "${line.name}" on GPIO chip ${chip.label} (names: ${listForMessage(names)})`);
    }
    return l;
  }

  private claim(line: GpioLineConfig): SimLine {
    const l = this.lineOf(line);
    if (l.heldBy !== undefined) {
      throw new GpioError('busy', `GPIO ${describeLine(line)} is busy: held by ${l.heldBy}`, { retryable: true });
    }
    if (l.mode !== 'free') {
      throw new GpioError('busy', `GPIO ${describeLine(line)} is already opened by this process (as an ${l.mode}); one line serves one source or actuator`);
    }
    return l;
  }
}

function toLineConfig(chip: string, line: number | string): GpioLineConfig {
  if (typeof chip !== 'string' || chip.length === 0) throw new TypeError('chip must be a non-empty string');
  if (typeof line === 'number') {
    if (!Number.isInteger(line) || line < 0) throw new TypeError(`line offset must be a non-negative integer, got ${line}`);
    return { chip, offset: line };
  }
  if (typeof line !== 'string' || line.length === 0) throw new TypeError('line must be an offset or a non-empty line name');
  return { chip, name: line };
}

function logical(l: SimLine): GpioLevel {
  return (l.level ^ (l.activeLow ? 1 : 0)) as GpioLevel;
}

function edgeMatches(edge: GpioEdge, after: GpioLevel): boolean {
  return edge === 'both' || (edge === 'rising' && after === 1) || (edge === 'falling' && after === 0);
}

function release(l: SimLine): void {
  l.mode = 'free';
  l.edge = 'none';
  l.activeLow = false;
  l.edgeListeners = [];
  l.errorListeners = [];
}

function closedError(where: string): GpioError {
  return new GpioError('closed', `GPIO ${where} was used after close()`);
}
