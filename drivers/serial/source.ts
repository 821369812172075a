/**
 * A sensor source on a serial line: bytes from a supervised port go through the configured
 * parser, and each record becomes a `Sample` stamped with the injected clock at parse time.
 *
 * The port may be absent at start (a robot can boot before its USB device appears) and may
 * vanish at any time: the source reports a 'fault', keeps reopening with backoff, and emits
 * 'recovered' when bytes flow again. Only an invalid configuration makes `start()` reject.
 */
import { EventEmitter } from 'node:events';
import { ConfigError, DriverError, asError, type ConfigIssue, type KeelError } from '../../runtime/errors.ts';
import type { Clock } from '../../runtime/clock.ts';
import type { SerialSourceConfig } from '../../runtime/config/schema.ts';
import type { SensorSource, SourceEvents, SourceStats } from '../types.ts';
import { linkIssues, type SerialOpener, linkOptions } from './link.ts';
import { createParser, formatIssues, type RecordParser, type RecordValues } from './parse.ts';
import { SupervisedPort, reconnectIssues } from './supervisor.ts';

/** What a serial source needs from outside. */
export interface SerialSourceDeps {
  opener: SerialOpener;
  clock: Clock;
  /** Uniform [0, 1) source for backoff jitter (default Math.random). */
  random?: () => number;
}

/** Config fields a serial source reads; the schema's type, with defaults optional. */
export type SerialSourceOptions = Omit<SerialSourceConfig, 'dataBits' | 'parity' | 'stopBits' | 'rtscts' | 'maxLineBytes' | 'baudRate'> &
  Partial<Pick<SerialSourceConfig, 'dataBits' | 'parity' | 'stopBits' | 'rtscts' | 'maxLineBytes' | 'baudRate'>>;

/** Problems with a serial source config, paths relative to the source (`format.columns[1]`). */
export function serialSourceIssues(config: SerialSourceOptions): ConfigIssue[] {
  if (config === null || typeof config !== 'object') return [{ path: '', message: 'expected a serial source object' }];
  const issues: ConfigIssue[] = [];
  if (typeof config.name !== 'string' || config.name.length === 0) issues.push({ path: 'name', message: 'expected a source name' });
  issues.push(...linkIssues({ ...config, baudRate: config.baudRate ?? 115200 }));
  issues.push(...formatIssues(config.format).map((i) => ({ path: i.path ? `format.${i.path}` : 'format', message: i.message })));
  const max = config.maxLineBytes;
  if (max !== undefined && (!Number.isInteger(max) || max < 16 || max > 1_048_576)) {
    issues.push({ path: 'maxLineBytes', message: `expected an integer from 16 to 1048576, got ${JSON.stringify(max)}` });
  }
  issues.push(...reconnectIssues(config.reconnect).map((i) => ({ path: i.path ? `reconnect.${i.path}` : 'reconnect', message: i.message })));
  return issues;
}

/** A `SensorSource` reading CSV, JSON lines, key/value lines or binary records from a serial port. */
export class SerialSource extends EventEmitter<SourceEvents> implements SensorSource {
  readonly name: string;
  private readonly config: SerialSourceOptions;
  private readonly deps: SerialSourceDeps;
  private parser: RecordParser | null = null;
  private port: SupervisedPort | null = null;
  private samples = 0;
  private awaitingData = false; // a fault happened; the next bytes mean 'recovered'
  private stopped = false;

  constructor(config: SerialSourceOptions, deps: SerialSourceDeps) {
    super();
    if (config === null || typeof config !== 'object') throw new TypeError('config must be a serial source config object');
    if (!deps || !deps.opener || !deps.clock) throw new TypeError('deps must provide { opener, clock }');
    this.name = String(config.name);
    this.config = config;
    this.deps = deps;
  }

  /**
   * Validates the config (rejects with ConfigError listing every problem), then starts the
   * supervised port and resolves after the first open attempt, successful or not.
   */
  async start(): Promise<void> {
    if (this.port !== null) return;
    if (this.stopped) throw new DriverError('KEEL_E_SERIAL_IO', `serial source ${this.name} was stopped; create a new one`);
    const issues = serialSourceIssues(this.config);
    if (issues.length > 0) throw new ConfigError(issues, `serial source "${this.name}"`);
    const c = this.config;
    this.parser = createParser(c.format, { maxLineBytes: c.maxLineBytes ?? 1024 });
    this.port = new SupervisedPort({
      name: this.name,
      link: linkOptions(c),
      opener: this.deps.opener,
      clock: this.deps.clock,
      reconnect: c.reconnect,
      random: this.deps.random,
      hooks: {
        data: (chunk) => this.onData(chunk),
        connected: (reopened) => this.onConnected(reopened),
        fault: (err) => this.onFault(err),
      },
    });
    await this.port.start();
  }

  /** Stops reading and closes the port. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    const port = this.port;
    if (port) await port.stop();
  }

  /** Samples delivered, input dropped, reconnects, and whether the port is open. */
  stats(): SourceStats {
    const p = this.port?.stats();
    return {
      samples: this.samples,
      dropped: this.parser?.counters.dropped ?? 0,
      reconnects: p?.reconnects ?? 0,
      connected: p?.connected ?? false,
    };
  }

  /** Parser counters (records, dropped, bytes), for diagnostics. */
  parserCounters(): { records: number; dropped: number; bytes: number } {
    return { ...(this.parser?.counters ?? { records: 0, dropped: 0, bytes: 0 }) };
  }

  private onConnected(reopened: boolean): void {
    // A line cut by the unplug is garbage; start the new connection clean.
    if (reopened) this.parser?.reset();
  }

  private onData(chunk: Buffer): void {
    if (this.stopped || this.parser === null) return;
    this.port?.markHealthy();
    if (this.awaitingData) {
      this.awaitingData = false;
      this.safeEmit('recovered');
    }
    this.parser.feed(chunk, this.sink);
  }

  private readonly sink = (values: RecordValues): void => {
    this.samples++;
    this.safeEmit('sample', { t: this.deps.clock.now(), values });
  };

  private onFault(err: DriverError): void {
    if (this.stopped) return;
    this.awaitingData = true;
    this.safeEmit('fault', err);
  }

  /**
   * Emits without letting a listener's exception escape into the port's data path (which
   * would become an uncaught exception). A throwing 'sample' or 'recovered' listener is
   * reported as a 'fault'; a throwing 'fault' listener is ignored.
   */
  private safeEmit<K extends keyof SourceEvents>(event: K, ...args: SourceEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      if (event === 'fault') return;
      const e: KeelError = new DriverError('KEEL_E_SERIAL_IO', `a '${event}' listener of serial source ${this.name} threw: ${asError(err).message}`, { cause: err });
      try {
        this.emit('fault', e);
      } catch {
        // The fault listener threw as well; nothing left to tell.
      }
    }
  }
}
