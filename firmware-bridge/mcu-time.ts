/**
 * Maps the MCU's 32-bit microsecond clock to host time (docs/firmware-bridge.md §5.4):
 * unwraps the counter (it wraps every 71.6 minutes) and estimates the offset from TIMESYNC
 * round trips, keeping the estimate with the lowest round-trip time among the recent ones
 * (the least queueing delay, so the smallest error bound: |error| <= rtt / 2).
 */

/** Estimates kept (§5.4). */
export const TIMESYNC_KEEP = 8;
/** Replies slower than this are ignored (§5.4), ms. */
export const TIMESYNC_MAX_RTT_MS = 1000;

const WRAP = 2 ** 32;

/** One offset estimate. */
export interface TimeEstimate {
  /** Round-trip time of the exchange, ms. */
  rttMs: number;
  /** Host monotonic ms minus MCU ms. */
  offsetMs: number;
}

/** Unwraps MCU times and maps them to host monotonic milliseconds. */
export class McuTimeMap {
  private last: number | null = null; // last unwrapped MCU time, µs
  private readonly estimates: TimeEstimate[] = [];
  private best: TimeEstimate | null = null;

  /**
   * Unwraps a 32-bit MCU time (µs) against the last one seen: the result is the value
   * congruent to `t32` mod 2^32 that is nearest to the last (a signed 32-bit step).
   */
  unwrap(t32: number): number {
    if (!Number.isInteger(t32) || t32 < 0 || t32 >= WRAP) throw new RangeError(`t32 must be a u32, got ${t32}`);
    if (this.last === null) {
      this.last = t32;
      return t32;
    }
    let d = (t32 - (this.last % WRAP) + WRAP) % WRAP;
    if (d >= WRAP / 2) d -= WRAP;
    const u = this.last + d;
    // Only move forward: an old sample must not drag the reference back across a wrap.
    if (d > 0) this.last = u;
    return u;
  }

  /**
   * Adds one TIMESYNC exchange: host monotonic send and receive times (ms) and the MCU time
   * of the reply (u32 µs). Returns the estimate, or null when the reply was too slow.
   */
  addExchange(h0: number, h1: number, mcuTime32: number): TimeEstimate | null {
    const rttMs = h1 - h0;
    if (!(rttMs >= 0) || rttMs > TIMESYNC_MAX_RTT_MS) return null;
    const m = this.unwrap(mcuTime32);
    const est = { rttMs, offsetMs: (h0 + h1) / 2 - m / 1000 };
    this.estimates.push(est);
    if (this.estimates.length > TIMESYNC_KEEP) this.estimates.shift();
    this.best = this.estimates.reduce((a, b) => (b.rttMs <= a.rttMs ? b : a));
    return est;
  }

  /** The estimate in use (lowest rtt of the recent ones), or null before the first. */
  estimate(): TimeEstimate | null {
    return this.best;
  }

  /** Host monotonic ms of an unwrapped MCU time (µs), or null before the first estimate. */
  toHostMs(mcuUs: number): number | null {
    return this.best === null ? null : mcuUs / 1000 + this.best.offsetMs;
  }

  /** Forgets everything (a new handshake: the MCU may have reset). */
  reset(): void {
    this.last = null;
    this.estimates.length = 0;
    this.best = null;
  }
}
