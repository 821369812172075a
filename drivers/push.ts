/**
 * A source whose samples are pushed by code: test harnesses, benchmarks and embedding
 * applications hand samples straight to the runtime through it (see RuntimeDeps.sources).
 */
import { EventEmitter } from 'node:events';
import type { Clock } from '../runtime/clock.ts';
import type { SensorSource, SourceEvents, SourceStats } from './types.ts';

/** A SensorSource fed by `push()`. Samples pushed while stopped are counted as dropped. */
export class PushSource extends EventEmitter<SourceEvents> implements SensorSource {
  readonly name: string;
  private readonly clock: Clock;
  private running = false;
  private readonly counters: SourceStats = { samples: 0, dropped: 0, reconnects: 0, connected: false };

  constructor(name: string, deps: { clock: Clock }) {
    super();
    this.name = name;
    this.clock = deps.clock;
  }

  /** Delivers one sample now (time from the clock unless given). Returns false when stopped. */
  push(values: Record<string, number>, t = this.clock.now()): boolean {
    if (!this.running) {
      this.counters.dropped++;
      return false;
    }
    this.counters.samples++;
    this.emit('sample', { t, values });
    return true;
  }

  /** Signals that no more samples will come (like a replay reaching its end). */
  end(): void {
    this.emit('end');
  }

  async start(): Promise<void> {
    this.running = true;
    this.counters.connected = true;
  }

  async stop(): Promise<void> {
    this.running = false;
    this.counters.connected = false;
  }

  stats(): SourceStats {
    return { ...this.counters };
  }
}
