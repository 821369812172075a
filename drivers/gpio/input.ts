/**
 * A GPIO input as a sensor source: one channel, 0 or 1, a sample per accepted edge.
 *
 * Debounce runs on the injected clock: an edge is reported only once the line has stayed at
 * its new level for `debounceMs` (a contact bouncing for 3 ms with debounceMs 10 gives one
 * sample, 10 ms after the last bounce, stamped with the time of that last bounce, i.e. when
 * the level settled). Raw edges that do not become a sample (bounces, glitches that return to
 * the reported level) are counted in `stats().dropped`.
 *
 * The backend is asked for both edges, whatever `edge` says: debouncing has to see the line
 * fall back to know a rise was a glitch. `edge` then filters which settled changes are
 * reported. `activeLow` is passed to the backend, which inverts levels (sysfs `active_low`).
 */
import { EventEmitter } from 'node:events';
import type { Clock, TimerHandle } from '../../runtime/clock.ts';
import type { GpioSourceConfig } from '../../runtime/config/schema.ts';
import type { SensorSource, SourceEvents, SourceStats } from '../types.ts';
import { checkEdge, type GpioBackend, type GpioEdge, type GpioInputLine, type GpioLevel } from './backend.ts';

/** What a GPIO input source needs from outside. */
export interface GpioInputDeps {
  backend: GpioBackend;
  clock: Clock;
}

/** A debounced GPIO input delivering `{ [channel]: 0 | 1 }` samples. */
export class GpioInputSource extends EventEmitter<SourceEvents> implements SensorSource {
  /** Source name (from config). */
  readonly name: string;
  /** Channel the level is delivered under: `channel` from config, else the source name. */
  readonly channel: string;
  private readonly config: GpioSourceConfig;
  private readonly backend: GpioBackend;
  private readonly clock: Clock;
  private readonly debounceMs: number;
  private readonly edge: GpioEdge;
  private line?: GpioInputLine;
  private starting?: Promise<void>;
  private timer?: TimerHandle;
  /** Last reported (settled) level. */
  private stable: GpioLevel = 0;
  /** Latest raw level and the host time it was seen, while a debounce is pending. */
  private raw: GpioLevel = 0;
  private rawT = 0;
  private counts = { samples: 0, dropped: 0 };

  constructor(config: GpioSourceConfig, deps: GpioInputDeps) {
    super();
    if (!config || typeof config !== 'object') throw new TypeError('config must be a GPIO source configuration');
    if (!deps?.backend || !deps.clock) throw new TypeError('deps.backend and deps.clock are required');
    const debounceMs = config.debounceMs ?? 10;
    if (!Number.isFinite(debounceMs) || debounceMs < 0) throw new RangeError(`config.debounceMs must be a non-negative number, got ${debounceMs}`);
    this.config = config;
    this.name = config.name;
    this.channel = config.channel ?? config.name;
    this.backend = deps.backend;
    this.clock = deps.clock;
    this.debounceMs = debounceMs;
    this.edge = checkEdge(config.edge ?? 'both', 'config.edge');
  }

  /** Opens the line and emits its current level as the first sample. Rejects with GpioError. */
  start(): Promise<void> {
    if (this.line) return Promise.resolve();
    this.starting ??= this.open().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** Closes the line; a pending debounce is abandoned. Idempotent. */
  async stop(): Promise<void> {
    if (this.starting) await this.starting.catch(() => undefined);
    this.clock.cancel(this.timer);
    this.timer = undefined;
    const line = this.line;
    this.line = undefined;
    if (line) await line.close();
  }

  /** Counters for metrics. */
  stats(): SourceStats {
    return { samples: this.counts.samples, dropped: this.counts.dropped, reconnects: 0, connected: this.line !== undefined };
  }

  private async open(): Promise<void> {
    const line = await this.backend.openInput(this.config.line, { edge: 'both', activeLow: this.config.activeLow ?? false });
    let initial: GpioLevel;
    try {
      initial = line.read();
    } catch (err) {
      await line.close();
      throw err;
    }
    this.line = line;
    this.stable = initial;
    this.raw = initial;
    line.onEdge((value, t) => this.onRawEdge(value, t));
    line.onError((err) => this.emit('fault', err));
    this.deliver(initial, this.clock.now());
  }

  private onRawEdge(value: GpioLevel, t: number): void {
    if (!this.line) return;
    this.raw = value;
    this.rawT = t;
    if (this.debounceMs === 0) {
      this.settle(value, t);
      return;
    }
    if (this.timer) {
      // The previous edge did not last debounceMs: it was a bounce.
      this.clock.cancel(this.timer);
      this.counts.dropped++;
    }
    this.timer = this.clock.setTimeout(
      `gpio:${this.name}:debounce`,
      () => {
        this.timer = undefined;
        this.settle(this.raw, this.rawT);
      },
      this.debounceMs,
    );
  }

  /** The line has held `value` since `t` for debounceMs: report it if it is a wanted change. */
  private settle(value: GpioLevel, t: number): void {
    if (value === this.stable) {
      // Went away and came back (a glitch), or a repeated report of the same level.
      this.counts.dropped++;
      return;
    }
    this.stable = value;
    const wanted = this.edge === 'both' || (this.edge === 'rising' && value === 1) || (this.edge === 'falling' && value === 0);
    if (wanted) this.deliver(value, t);
  }

  private deliver(value: GpioLevel, t: number): void {
    this.counts.samples++;
    this.emit('sample', { t, values: { [this.channel]: value } });
  }
}
