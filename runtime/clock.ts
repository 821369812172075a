/**
 * Time as an injected capability. Everything with a timer (debounce, watchdog, backoff,
 * replay pacing) takes a `Clock`, so tests run on `FakeClock` in milliseconds.
 *
 * Times are milliseconds. `now()` is wall-clock-like (epoch ms); `monotonic()` never goes
 * backwards and is what durations are measured with.
 */

/** Handle of a scheduled timer; pass back to `Clock.cancel`. */
export interface TimerHandle {
  readonly name: string;
}

/** Source of time and named timers. */
export interface Clock {
  /** Epoch milliseconds (may jump when the system clock is set). */
  now(): number;
  /** Monotonic milliseconds with sub-millisecond resolution, for durations. */
  monotonic(): number;
  /** Runs `fn` once after `ms` milliseconds. `name` identifies the timer in debugging. */
  setTimeout(name: string, fn: () => void, ms: number): TimerHandle;
  /** Runs `fn` every `ms` milliseconds until cancelled. */
  setInterval(name: string, fn: () => void, ms: number): TimerHandle;
  /** Cancels a timer; cancelling twice or a fired one-shot is harmless. */
  cancel(handle: TimerHandle | undefined): void;
}

interface SystemTimer extends TimerHandle {
  id: NodeJS.Timeout;
  interval: boolean;
}

/** The real clock, backed by Node's timers. Timers are unref'd only if asked. */
export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }
  monotonic(): number {
    return performance.now();
  }
  setTimeout(name: string, fn: () => void, ms: number): TimerHandle {
    const t: SystemTimer = { name, id: setTimeout(fn, Math.max(0, ms)), interval: false };
    return t;
  }
  setInterval(name: string, fn: () => void, ms: number): TimerHandle {
    const t: SystemTimer = { name, id: setInterval(fn, Math.max(1, ms)), interval: true };
    return t;
  }
  cancel(handle: TimerHandle | undefined): void {
    if (!handle) return;
    const t = handle as SystemTimer;
    if (t.interval) clearInterval(t.id);
    else clearTimeout(t.id);
  }
}

interface FakeTimer extends TimerHandle {
  at: number;
  every: number; // 0 for one-shot
  fn: () => void;
  seq: number;
  cancelled: boolean;
}

/**
 * A clock that moves only when told to. `advance(ms)` fires due timers in time order
 * (ties in scheduling order), moving `now()` to each timer's due time as it fires.
 */
export class FakeClock implements Clock {
  private t: number;
  private readonly startEpoch: number;
  private timers: FakeTimer[] = [];
  private seq = 0;

  constructor(startEpochMs = 1_700_000_000_000) {
    this.startEpoch = startEpochMs;
    this.t = 0;
  }
  now(): number {
    return this.startEpoch + this.t;
  }
  monotonic(): number {
    return this.t;
  }
  setTimeout(name: string, fn: () => void, ms: number): TimerHandle {
    return this.add(name, fn, Math.max(0, ms), 0);
  }
  setInterval(name: string, fn: () => void, ms: number): TimerHandle {
    const every = Math.max(1, ms);
    return this.add(name, fn, every, every);
  }
  cancel(handle: TimerHandle | undefined): void {
    if (!handle) return;
    const t = handle as FakeTimer;
    t.cancelled = true;
    this.timers = this.timers.filter((x) => x !== t);
  }
  /** Names of the timers still pending, soonest first (for assertions). */
  pending(): string[] {
    return this.sorted().map((t) => t.name);
  }
  /** Moves time forward by `ms`, firing every timer that falls due on the way. */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`ms must be a non-negative number, got ${ms}`);
    const end = this.t + ms;
    for (;;) {
      const next = this.sorted()[0];
      if (!next || next.at > end) break;
      this.t = next.at;
      if (next.every > 0) {
        next.at += next.every;
      } else {
        this.timers = this.timers.filter((x) => x !== next);
      }
      next.fn();
    }
    this.t = end;
  }
  /** Like `advance`, but lets pending promise callbacks run between timers. */
  async advanceAsync(ms: number, stepMs = 1): Promise<void> {
    const end = this.t + ms;
    while (this.t < end) {
      this.advance(Math.min(stepMs, end - this.t));
      await new Promise<void>((r) => setImmediate(r));
    }
  }
  private add(name: string, fn: () => void, delay: number, every: number): TimerHandle {
    const t: FakeTimer = { name, at: this.t + delay, every, fn, seq: this.seq++, cancelled: false };
    this.timers.push(t);
    return t;
  }
  private sorted(): FakeTimer[] {
    return [...this.timers].sort((a, b) => a.at - b.at || a.seq - b.seq);
  }
}
