/**
 * The GPIO hardware boundary: one small interface, with the sysfs/onoff implementation
 * (`onoff.ts`) and the in-memory twin (`sim.ts`) behind it.
 *
 * Lines are always named by chip (its label, e.g. `pinctrl-rp1`, or `gpiochipN`) plus an
 * `offset` within the chip or a line `name`, never by a global sysfs number: since Linux 6.6
 * those carry a per-chip base (512, 571, ...) that differs between kernels and boards.
 *
 * Values seen through this interface are logical: with `activeLow` the backend inverts
 * them (as the kernel does with sysfs `active_low`), so 1 always means "active".
 */
import { DriverError } from '../../runtime/errors.ts';
import type { GpioLineConfig } from '../../runtime/config/schema.ts';

/** A logical line level. */
export type GpioLevel = 0 | 1;

/** Which transitions of an input are reported (`none`: only reads). */
export type GpioEdge = 'none' | 'rising' | 'falling' | 'both';

/** Options for opening an input line. */
export interface GpioInputOptions {
  edge: GpioEdge;
  activeLow: boolean;
}

/** Options for opening an output line. */
export interface GpioOutputOptions {
  activeLow: boolean;
  /** Logical level driven from the moment the line becomes an output (no glitch). */
  initial: GpioLevel;
}

/** An open input line. */
export interface GpioInputLine {
  /** Current logical level. Throws GpioError when the line is closed or failing. */
  read(): GpioLevel;
  /**
   * Calls `cb` on every reported edge with the new logical level and the host time of the
   * edge (epoch ms, from the backend's clock). Edges are raw: no debouncing here.
   */
  onEdge(cb: (value: GpioLevel, hostTimeMs: number) => void): void;
  /** Calls `cb` when the line fails while open (the watch broke, the chip went away). */
  onError(cb: (err: GpioError) => void): void;
  /** Releases the line. Idempotent. */
  close(): Promise<void>;
}

/** An open output line. */
export interface GpioOutputLine {
  /** Drives the logical level. Throws GpioError when the line is closed or failing. */
  write(value: GpioLevel): void;
  /** The logical level currently driven. */
  read(): GpioLevel;
  /** Releases the line (the level stays as last driven). Idempotent. */
  close(): Promise<void>;
}

/** Opens GPIO lines. Implementations: `OnoffGpioBackend` (sysfs) and `SimGpioBackend`. */
export interface GpioBackend {
  /** Opens `line` as an input. Rejects with GpioError (missing chip/line, busy, no permission). */
  openInput(line: GpioLineConfig, opts: GpioInputOptions): Promise<GpioInputLine>;
  /** Opens `line` as an output driven to `opts.initial`. Rejects like `openInput`. */
  openOutput(line: GpioLineConfig, opts: GpioOutputOptions): Promise<GpioOutputLine>;
}

/** Why a GPIO operation failed; callers and tests branch on this, never on the message. */
export type GpioErrorReason =
  | 'no-sysfs' // this machine has no GPIO sysfs interface (not a board, not mounted, container)
  | 'chip-not-found' // no chip with that label or gpiochipN name
  | 'line-not-found' // offset beyond the chip's lines, or no line with that name
  | 'name-lookup' // line names cannot be resolved here (tools missing or failing)
  | 'busy' // the line is held by a kernel driver, another program, or this process
  | 'permission' // not allowed to export/configure the line (gpio group)
  | 'unsupported' // this backend cannot do what was asked (e.g. sysfs root moved, onoff missing)
  | 'closed' // the line was used after close()
  | 'io'; // the kernel failed a read/write/configure

/** A GPIO failure (code `KEEL_E_GPIO`) with a machine-readable `reason`. */
export class GpioError extends DriverError {
  /** What went wrong, for callers that react differently (e.g. retry `busy`). */
  readonly reason: GpioErrorReason;
  constructor(reason: GpioErrorReason, message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super('KEEL_E_GPIO', message, options);
    this.reason = reason;
  }
}

/** Throws TypeError unless `line` names exactly one of `offset` or `name` on a non-empty chip. */
export function checkLineConfig(line: GpioLineConfig, param = 'line'): void {
  if (line === null || typeof line !== 'object') throw new TypeError(`${param} must be an object { chip, offset | name }`);
  if (typeof line.chip !== 'string' || line.chip.length === 0) throw new TypeError(`${param}.chip must be a non-empty string`);
  const hasOffset = line.offset !== undefined;
  const hasName = line.name !== undefined;
  if (hasOffset === hasName) throw new TypeError(`${param}: give exactly one of offset or name (got ${hasOffset ? 'both' : 'neither'})`);
  if (hasOffset && (!Number.isInteger(line.offset) || (line.offset as number) < 0)) {
    throw new TypeError(`${param}.offset must be a non-negative integer, got ${String(line.offset)}`);
  }
  if (hasName && (typeof line.name !== 'string' || line.name.length === 0)) throw new TypeError(`${param}.name must be a non-empty string`);
}

/** Human name of a line for messages: `pinctrl-rp1 offset 17` or `pinctrl-rp1 line "GPIO17"`. */
export function describeLine(line: GpioLineConfig): string {
  return line.offset !== undefined ? `${line.chip} offset ${line.offset}` : `${line.chip} line "${line.name}"`;
}

/** Validates an edge option (TypeError naming the parameter otherwise). */
export function checkEdge(edge: unknown, param = 'edge'): GpioEdge {
  if (edge === 'none' || edge === 'rising' || edge === 'falling' || edge === 'both') return edge;
  throw new TypeError(`${param} must be one of "none", "rising", "falling", "both", got ${JSON.stringify(edge)}`);
}

/** Validates a level argument (0 or 1 exactly; TypeError otherwise). */
export function checkLevel(value: unknown, param = 'value'): GpioLevel {
  if (value === 0 || value === 1) return value;
  throw new TypeError(`${param} must be 0 or 1, got ${JSON.stringify(value)}`);
}

/** Lists names for a message, capped so a 300-line chip does not flood the log. */
export function listForMessage(items: string[], max = 12): string {
  if (items.length === 0) return '(none)';
  return items.length <= max ? items.join(', ') : `${items.slice(0, max).join(', ')}, ... (${items.length} in all)`;
}
