/**
 * Pacing for device sync: a token bucket that bounds the average rate of records and bytes
 * sent (so a backlog drains at a configured pace and never hogs the link or the CPU), and
 * exponential backoff with jitter for reconnects and resends (so a fleet of devices that lost
 * the broker together does not come back in lockstep).
 */
import type { Clock } from '../clock.ts';

/**
 * Token bucket over the injected clock's monotonic time. Holds up to `capacity` tokens (one
 * second's worth by default), refills at `ratePerS`. A send may take more tokens than are
 * left (the balance goes negative, "debt"); the next send waits until the balance is back at
 * zero. So a batch larger than the bucket still goes, and the long-run average never exceeds
 * the rate: over any interval T, at most capacity + ratePerS * T + one batch is sent.
 */
export class TokenBucket {
  readonly ratePerS: number;
  readonly capacity: number;
  private tokens: number;
  private at: number;
  private readonly clock: Clock;

  constructor(ratePerS: number, clock: Clock, capacity = ratePerS) {
    if (!(ratePerS > 0) || !Number.isFinite(ratePerS)) throw new RangeError(`ratePerS must be a positive finite number, got ${ratePerS}`);
    if (!(capacity > 0) || !Number.isFinite(capacity)) throw new RangeError(`capacity must be a positive finite number, got ${capacity}`);
    this.ratePerS = ratePerS;
    this.capacity = capacity;
    this.clock = clock;
    this.tokens = capacity;
    this.at = clock.monotonic();
  }

  private refill(): void {
    const now = this.clock.monotonic();
    if (now > this.at) this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) * this.ratePerS) / 1000);
    this.at = now;
  }

  /** Milliseconds until a send may go (0 when the balance is not negative). */
  delayMs(): number {
    this.refill();
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.ratePerS);
  }

  /** Takes `n` tokens (the balance may go negative). */
  take(n: number): void {
    this.refill();
    this.tokens -= n;
  }

  /** Current balance (negative while in debt), for tests and metrics. */
  balance(): number {
    this.refill();
    return this.tokens;
  }
}

/** Backoff settings: the first delay, the cap, and the jitter fraction (0..1), ms. */
export interface BackoffSettings {
  initialMs: number;
  maxMs: number;
  jitter: number;
}

/**
 * Delay before retry number `attempt` (1 for the first retry): initialMs * 2^(attempt-1),
 * capped at maxMs, then shortened by a random fraction up to `jitter` ("equal jitter" when
 * jitter = 0.5: uniformly within [d/2, d]). `random` returns [0, 1).
 */
export function backoffDelay(attempt: number, s: BackoffSettings, random: () => number = Math.random): number {
  if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError(`attempt must be an integer >= 1, got ${attempt}`);
  const base = Math.min(s.maxMs, s.initialMs * 2 ** Math.min(attempt - 1, 52));
  const r = random();
  const f = Number.isFinite(r) ? Math.min(Math.max(r, 0), 1) : 0;
  return Math.max(1, Math.round(base * (1 - s.jitter * f)));
}
