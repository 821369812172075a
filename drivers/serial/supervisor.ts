/**
 * Keeps a serial port open. `serialport` has no auto-reconnect, and on a robot a USB
 * unplug (or a device that boots later than the Pi) is a normal event, so sources and
 * actuators hold their port through a `SupervisedPort`: it opens the port, notices when it
 * fails or vanishes, reports a fault, and reopens it with exponential backoff on the
 * injected clock until it is stopped.
 *
 * Backoff: attempt n (n = 0 after the first failure) waits
 * `min(maxMs, initialMs * factor^n)`, minus up to 10 % jitter (so the cap is never exceeded
 * and several ports that failed together do not retry in lockstep). The backoff starts over
 * once a connection has proved healthy: it delivered data / completed a write, or stayed up
 * for at least `maxMs`. Errors that retrying cannot fix by itself (permission denied, not a
 * tty) are retried at `maxMs` only, so that a fixed udev rule is still picked up without a
 * restart.
 *
 * Faults are reported on changes, not on every retry: a fault is reported when the port goes
 * down, and on a failed attempt only if its message differs from the last fault reported
 * (an absent device retried every 10 s for a month would otherwise log 260 000 faults).
 */
import { DriverError, asError } from '../../runtime/errors.ts';
import type { Clock, TimerHandle } from '../../runtime/clock.ts';
import type { SerialConnection, SerialLinkOptions, SerialOpener } from './link.ts';

/** Reopen backoff, milliseconds. */
export interface ReconnectPolicy {
  /** First reopen delay (default 250). */
  initialMs: number;
  /** Longest reopen delay (default 10 000). */
  maxMs: number;
  /** Growth per failed attempt (default 2). */
  factor: number;
}

/** The backoff used when a config gives none (same defaults as the schema). */
export const DEFAULT_RECONNECT: ReconnectPolicy = { initialMs: 250, maxMs: 10_000, factor: 2 };

/** Largest fraction taken off a delay as jitter. */
export const RECONNECT_JITTER = 0.1;

/** What a supervised port tells its owner. Hooks must not throw (exceptions are swallowed). */
export interface SupervisedPortHooks {
  /** Bytes arrived. */
  data?(chunk: Buffer): void;
  /** The port is open (first time, or again after a fault). `reopened` is true after a fault. */
  connected?(reopened: boolean): void;
  /** The port went down or an open attempt failed. */
  fault?(err: DriverError): void;
}

/** Everything a `SupervisedPort` needs. */
export interface SupervisedPortOptions {
  /** Owner's name, used in timer names (`serial:<name>:reopen`) and messages. */
  name: string;
  link: SerialLinkOptions;
  opener: SerialOpener;
  clock: Clock;
  reconnect?: Partial<ReconnectPolicy>;
  /** Uniform [0, 1) source for jitter; default Math.random. Tests pass `() => 0`. */
  random?: () => number;
  hooks?: SupervisedPortHooks;
}

/** Counters of a supervised port. */
export interface SupervisedPortStats {
  /** Times the port was opened again after a fault. */
  reconnects: number;
  /** Failed open attempts since the start. */
  failedOpens: number;
  /** Whether the port is open now. */
  connected: boolean;
}

type State = 'idle' | 'opening' | 'open' | 'waiting' | 'stopped';

/** Largest number of bytes waiting to be written before `write` refuses more (bytes). */
export const MAX_WRITE_BACKLOG = 64 * 1024;

/** Checks a reconnect policy; returns problems with paths relative to it. */
export function reconnectIssues(r: Partial<ReconnectPolicy> | undefined): { path: string; message: string }[] {
  if (r === undefined) return [];
  if (r === null || typeof r !== 'object') return [{ path: '', message: 'expected an object with initialMs, maxMs, factor' }];
  const p = { ...DEFAULT_RECONNECT, ...r };
  const issues: { path: string; message: string }[] = [];
  if (!Number.isFinite(p.initialMs) || p.initialMs < 1) issues.push({ path: 'initialMs', message: `expected a positive number of ms, got ${JSON.stringify(r.initialMs)}` });
  if (!Number.isFinite(p.maxMs) || p.maxMs < 1) issues.push({ path: 'maxMs', message: `expected a positive number of ms, got ${JSON.stringify(r.maxMs)}` });
  else if (p.maxMs < p.initialMs) issues.push({ path: 'maxMs', message: `must be at least initialMs (${p.initialMs})` });
  if (!Number.isFinite(p.factor) || p.factor < 1 || p.factor > 10) issues.push({ path: 'factor', message: `expected a number from 1 to 10, got ${JSON.stringify(r.factor)}` });
  return issues;
}

/** A serial port kept open by reopening it with backoff; see the top of this file. */
export class SupervisedPort {
  private readonly opts: SupervisedPortOptions;
  private readonly policy: ReconnectPolicy;
  private readonly random: () => number;
  private readonly timerName: string;
  private state: State = 'idle';
  private conn: SerialConnection | null = null;
  private timer: TimerHandle | undefined;
  private inflight: Promise<void> | null = null;
  private attempt = 0; // failed attempts since the last healthy connection
  private faulted = false; // a fault was reported and no connection has opened since
  private lastFault = ''; // message of the last fault reported
  private openedAt = 0; // clock.monotonic() when the current connection opened
  private healthy = false; // the current connection delivered data or completed a write
  private counters = { reconnects: 0, failedOpens: 0 };
  // Rejecters of writes not yet confirmed. A device that never completes a write (flow
  // control held off) must not leave callers waiting forever once the port is gone.
  private readonly unconfirmed = new Set<(err: DriverError) => void>();

  constructor(opts: SupervisedPortOptions) {
    if (opts === null || typeof opts !== 'object') throw new TypeError('opts must be an object');
    if (!opts.opener || typeof opts.opener.open !== 'function') throw new TypeError('opts.opener must be a SerialOpener');
    if (!opts.clock || typeof opts.clock.setTimeout !== 'function') throw new TypeError('opts.clock must be a Clock');
    const issues = reconnectIssues(opts.reconnect);
    if (issues.length > 0) throw new RangeError(`opts.reconnect: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    this.opts = opts;
    this.policy = { ...DEFAULT_RECONNECT, ...opts.reconnect };
    this.random = opts.random ?? Math.random;
    this.timerName = `serial:${opts.name}:reopen`;
  }

  /** Whether the port is open now. */
  get connected(): boolean {
    return this.state === 'open';
  }

  /** The path being supervised. */
  get path(): string {
    return this.opts.link.path;
  }

  /** Counters since construction. */
  stats(): SupervisedPortStats {
    return { ...this.counters, connected: this.state === 'open' };
  }

  /**
   * Starts supervising. Resolves once the first open attempt has settled, whether it
   * succeeded or not (a failure is reported as a fault and retried). Idempotent.
   */
  async start(): Promise<void> {
    if (this.state === 'stopped') throw new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} (${this.opts.name}) was stopped; create a new one`);
    if (this.state !== 'idle') return;
    await this.tryOpen();
  }

  /** Stops supervising: cancels the reopen timer and closes the port. Idempotent. */
  async stop(): Promise<void> {
    this.state = 'stopped';
    this.opts.clock.cancel(this.timer);
    this.timer = undefined;
    if (this.inflight) await this.inflight;
    const conn = this.conn;
    this.conn = null;
    this.abandonWrites('was closed');
    if (conn) await conn.close();
  }

  /** Marks the current connection healthy (the owner saw it work), resetting the backoff. */
  markHealthy(): void {
    if (this.state === 'open' && !this.healthy) {
      this.healthy = true;
      this.attempt = 0;
    }
  }

  /**
   * Writes `data`. Rejects with a retryable `DriverError('KEEL_E_SERIAL_IO')` if the port is
   * down or more than MAX_WRITE_BACKLOG bytes are already waiting: nothing queues unbounded.
   */
  write(data: Buffer): Promise<void> {
    const conn = this.conn;
    if (this.state !== 'open' || conn === null) {
      return Promise.reject(new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} (${this.opts.name}) is not connected; keel is reopening it`, { retryable: true }));
    }
    if (conn.writableLength + data.length > MAX_WRITE_BACKLOG) {
      return Promise.reject(
        new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} (${this.opts.name}) is not keeping up: ${conn.writableLength} bytes still waiting to be written`, { retryable: true }),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.unconfirmed.add(reject);
      conn.write(data, (err) => {
        this.unconfirmed.delete(reject);
        if (!err) {
          this.markHealthy();
          resolve();
        } else if (err instanceof DriverError) {
          reject(err);
        } else {
          reject(new DriverError('KEEL_E_SERIAL_IO', `write to serial port ${this.path} failed: ${err.message}`, { cause: err, retryable: true }));
        }
      });
    });
  }

  // Fails every write still waiting for the port to confirm it.
  private abandonWrites(why: string): void {
    if (this.unconfirmed.size === 0) return;
    const err = new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} (${this.opts.name}) ${why} before the write completed`, { retryable: true });
    const rejecters = [...this.unconfirmed];
    this.unconfirmed.clear();
    for (const r of rejecters) r(err);
  }

  private tryOpen(): Promise<void> {
    this.state = 'opening';
    const p = (async () => {
      let conn: SerialConnection;
      try {
        conn = await this.opts.opener.open(this.opts.link);
      } catch (err) {
        if (this.state === 'stopped') return;
        this.counters.failedOpens++;
        const e = err instanceof DriverError ? err : new DriverError('KEEL_E_SERIAL_OPEN', `cannot open serial port ${this.path}: ${asError(err).message}`, { cause: err });
        this.report(e, false);
        this.schedule(e.retryable);
        return;
      }
      if (this.state === 'stopped') {
        await conn.close();
        return;
      }
      this.adopt(conn);
    })();
    this.inflight = p;
    return p.finally(() => {
      if (this.inflight === p) this.inflight = null;
    });
  }

  private adopt(conn: SerialConnection): void {
    const reopened = this.faulted;
    this.conn = conn;
    this.state = 'open';
    this.openedAt = this.opts.clock.monotonic();
    this.healthy = false;
    this.faulted = false;
    this.lastFault = '';
    if (reopened) this.counters.reconnects++;
    conn.on('data', (chunk: Buffer) => {
      if (this.conn !== conn) return;
      this.call(() => this.opts.hooks?.data?.(chunk));
    });
    // Listening for 'error' is what keeps a vanished port from crashing the process.
    conn.on('error', (err: Error) => this.lost(conn, err));
    conn.on('close', () => this.lost(conn, null));
    this.call(() => this.opts.hooks?.connected?.(reopened));
    // It may have died between opening and now; its 'close' has then already been emitted.
    if (conn.destroyed) this.lost(conn, null);
  }

  private lost(conn: SerialConnection, err: Error | null): void {
    if (this.conn !== conn || this.state !== 'open') return;
    this.conn = null;
    // A connection that lived at least maxMs counts as healthy: start the backoff over.
    if (this.opts.clock.monotonic() - this.openedAt >= this.policy.maxMs) this.attempt = 0;
    this.abandonWrites('went down');
    void conn.close();
    const e =
      err instanceof DriverError
        ? err
        : new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} ${err ? `failed: ${err.message}` : 'closed unexpectedly'}`, { cause: err ?? undefined, retryable: true });
    this.report(e, true);
    this.schedule(true);
  }

  private report(err: DriverError, wentDown: boolean): void {
    this.faulted = true;
    if (!wentDown && err.message === this.lastFault) return;
    this.lastFault = err.message;
    this.call(() => this.opts.hooks?.fault?.(err));
  }

  private schedule(retryable: boolean): void {
    const { initialMs, maxMs, factor } = this.policy;
    const base = retryable ? Math.min(maxMs, initialMs * factor ** this.attempt) : maxMs;
    const delay = base * (1 - RECONNECT_JITTER * this.random());
    this.attempt++;
    this.state = 'waiting';
    this.timer = this.opts.clock.setTimeout(
      this.timerName,
      () => {
        this.timer = undefined;
        if (this.state === 'waiting') void this.tryOpen();
      },
      delay,
    );
  }

  // Runs an owner hook; a throwing hook must not take the port (or the process) down.
  private call(fn: () => void): void {
    try {
      fn();
    } catch {
      // Owners (source, actuator) guard their own listeners; nothing sensible to do here.
    }
  }
}
