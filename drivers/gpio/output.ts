/**
 * A GPIO output as an actuator: drives a line to 0 or 1, opens at its configured initial
 * level (set together with the direction, so the line never glitches), and drives its
 * configured safe level on demand.
 */
import type { GpioActuatorConfig } from '../../runtime/config/schema.ts';
import { DriverError } from '../../runtime/errors.ts';
import type { ActionContext, Actuator, ActuatorValue } from '../types.ts';
import { checkLevel, describeLine, type GpioBackend, type GpioLevel, type GpioOutputLine } from './backend.ts';

/** What a GPIO actuator needs from outside. */
export interface GpioActuatorDeps {
  backend: GpioBackend;
}

/**
 * Converts an action value to a level: 0/1, true/false, any other finite number (nonzero is
 * 1), or the strings "on"/"off", "1"/"0", "true"/"false", "high"/"low" (any case, trimmed).
 * Returns undefined for anything else.
 */
export function toGpioLevel(value: unknown): GpioLevel | undefined {
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (typeof value === 'number') return Number.isFinite(value) ? (value !== 0 ? 1 : 0) : undefined;
  if (typeof value === 'string') {
    switch (value.trim().toLowerCase()) {
      case '1':
      case 'on':
      case 'true':
      case 'high':
        return 1;
      case '0':
      case 'off':
      case 'false':
      case 'low':
        return 0;
    }
  }
  return undefined;
}

/** A GPIO output line driven by rules and the safe state. */
export class GpioActuator implements Actuator {
  /** Actuator name (from config). */
  readonly name: string;
  private readonly config: GpioActuatorConfig;
  private readonly backend: GpioBackend;
  private readonly initial: GpioLevel;
  private readonly safeLevel: GpioLevel;
  private line?: GpioOutputLine;
  private opening?: Promise<void>;
  private last?: GpioLevel;

  constructor(config: GpioActuatorConfig, deps: GpioActuatorDeps) {
    if (!config || typeof config !== 'object') throw new TypeError('config must be a GPIO actuator configuration');
    if (!deps?.backend) throw new TypeError('deps.backend is required');
    this.config = config;
    this.name = config.name;
    this.backend = deps.backend;
    this.initial = checkLevel(config.initial ?? 0, 'config.initial');
    this.safeLevel = checkLevel(config.safe, 'config.safe');
  }

  /** Exports the line as an output driven to `initial`. Rejects with GpioError. */
  open(): Promise<void> {
    return this.openAt(this.initial);
  }

  /**
   * Drives `value` (see `toGpioLevel`). Rejects with DriverError KEEL_E_ACTUATOR for a value
   * that is not a level or when the line is not open, and with GpioError when the write fails.
   */
  async write(value: ActuatorValue, _context?: ActionContext): Promise<void> {
    const level = toGpioLevel(value);
    if (level === undefined) {
      throw new DriverError(
        'KEEL_E_ACTUATOR',
        `GPIO actuator "${this.name}": cannot drive ${JSON.stringify(value)}; expected 0, 1, true, false, a number (nonzero is 1), or "on", "off", "1", "0"`,
      );
    }
    if (this.opening) await this.opening;
    const line = this.line;
    if (!line) throw new DriverError('KEEL_E_ACTUATOR', `GPIO actuator "${this.name}" is not open; call open() first`);
    line.write(level);
    this.last = level;
  }

  /**
   * Drives the configured safe level. Before `open()` (or after `close()`) it opens the line
   * straight at the safe level, so the safe state can be driven at any time.
   */
  async safe(): Promise<void> {
    if (this.opening) await this.opening.catch(() => undefined);
    if (!this.line) {
      await this.openAt(this.safeLevel);
      return;
    }
    this.line.write(this.safeLevel);
    this.last = this.safeLevel;
  }

  /** The level last driven (the initial level right after open); undefined before open. */
  current(): ActuatorValue | undefined {
    return this.last;
  }

  /** Releases the line; it keeps the level last driven. Idempotent. */
  async close(): Promise<void> {
    if (this.opening) await this.opening.catch(() => undefined);
    const line = this.line;
    this.line = undefined;
    if (line) await line.close();
  }

  /** Human name for messages. */
  describe(): string {
    return `GPIO actuator "${this.name}" (${describeLine(this.config.line)})`;
  }

  private openAt(level: GpioLevel): Promise<void> {
    if (this.line) return Promise.resolve();
    if (!this.opening) {
      const opts = { activeLow: this.config.activeLow ?? false, initial: level };
      const p = Promise.resolve().then(() => this.backend.openOutput(this.config.line, opts)).then((line) => {
        this.line = line;
        this.last = level;
      });
      this.opening = p;
      // Cleared in a later tick, whether the open worked or not, so a failed open can be retried.
      const clear = () => {
        if (this.opening === p) this.opening = undefined;
      };
      p.then(clear, clear);
    }
    return this.opening;
  }
}
