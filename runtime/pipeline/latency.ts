/**
 * A fixed-size reservoir of recent latencies (ms) for the live view's p50/p99. Bounded
 * memory whatever the run length; Prometheus keeps the long-run histogram.
 */
export class LatencyWindow {
  private readonly values: Float64Array;
  private next = 0;
  private count = 0;

  constructor(capacity = 1024) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, got ${capacity}`);
    this.values = new Float64Array(capacity);
  }

  /** Records one latency in milliseconds. */
  add(ms: number): void {
    this.values[this.next] = ms;
    this.next = (this.next + 1) % this.values.length;
    if (this.count < this.values.length) this.count++;
  }

  /** The p-th percentile (0..100) of the held values by nearest rank, or NaN when empty. */
  percentile(p: number): number {
    if (this.count === 0) return NaN;
    const sorted = Array.from(this.values.subarray(0, this.count)).sort((a, b) => a - b);
    const rank = Math.min(this.count - 1, Math.max(0, Math.ceil((p / 100) * this.count) - 1));
    return sorted[rank];
  }

  /** Number of values held. */
  get size(): number {
    return this.count;
  }
}
