/**
 * Joins several MCU channels into whole samples. The MCU samples each channel on its own
 * schedule and sends each in its own SAMPLE frames, but a pipeline window wants every
 * channel in every sample. The aligner emits one sample per value of the lead channel (the
 * fastest), carrying for each other channel its latest value taken at or before that time
 * (sample-and-hold, the usual way to join sensors of different rates).
 *
 * It waits, at most `maxLagMs`, until it knows the right held value: a lead value at time t
 * is emitted once every other channel has either delivered a value later than t, or its
 * next value is not due before t (last time + its period). Frames of different channels
 * arrive in either order, so without the wait a lead value would often be joined with a
 * value one batch old. A channel that delivered nothing yet is left out of the sample
 * (the runtime's windower then skips that sample) until it does.
 */

/** One channel's place in the join. */
export interface AlignedChannel {
  /** Key of the channel (the MCU channel number). */
  id: number;
  /** Time between its values, ms (from its configured rate). */
  periodMs: number;
}

interface Point {
  t: number;
  v: number;
}

/** Longest a lead value waits for the other channels, ms. */
export const DEFAULT_MAX_LAG_MS = 250;
/** Most values held per channel (bounded memory whatever the rates). */
const MAX_HELD = 1024;

/** Joins channels into whole samples; see the top of this file. */
export class ChannelAligner {
  readonly lead: number;
  private readonly others: AlignedChannel[];
  private readonly history = new Map<number, Point[]>();
  private readonly queue: Point[] = [];
  /** Lead values emitted before every channel was known (the lag ran out). */
  late = 0;
  /** Lead values dropped because the queue was full. */
  dropped = 0;

  /**
   * `channels` lists every channel; the lead is the fastest (the first of the fastest).
   * `emit` receives the lead time and the raw value of each channel known at that time.
   */
  constructor(
    channels: AlignedChannel[],
    private readonly emit: (t: number, raw: Map<number, number>) => void,
    private readonly maxLagMs = DEFAULT_MAX_LAG_MS,
  ) {
    if (!Array.isArray(channels) || channels.length === 0) throw new RangeError('channels must list at least one channel');
    let lead = channels[0]!;
    for (const c of channels) {
      if (!(c.periodMs > 0)) throw new RangeError(`channels: period of channel ${c.id} must be positive, got ${c.periodMs}`);
      if (c.periodMs < lead.periodMs) lead = c;
    }
    this.lead = lead.id;
    this.others = channels.filter((c) => c.id !== lead.id);
    for (const c of this.others) this.history.set(c.id, []);
  }

  /** Adds the values of one SAMPLE frame (host times `t0 + i * periodMs`), then emits what is ready; `now` is host epoch ms. */
  add(channel: number, t0: number, periodMs: number, values: readonly number[], now: number): void {
    if (channel === this.lead) {
      for (let i = 0; i < values.length; i++) {
        if (this.queue.length >= MAX_HELD) {
          this.queue.shift();
          this.dropped++;
        }
        this.queue.push({ t: t0 + i * periodMs, v: values[i]! });
      }
    } else {
      const h = this.history.get(channel);
      if (!h) return;
      for (let i = 0; i < values.length; i++) {
        const t = t0 + i * periodMs;
        // Times may step back a little when a better time estimate comes; keep the history ordered.
        while (h.length > 0 && h[h.length - 1]!.t >= t) h.pop();
        h.push({ t, v: values[i]! });
      }
      if (h.length > MAX_HELD) h.splice(0, h.length - MAX_HELD);
    }
    this.flush(now);
  }

  /** Lead values waiting for other channels. */
  waiting(): number {
    return this.queue.length;
  }

  private flush(now: number): void {
    while (this.queue.length > 0) {
      const e = this.queue[0]!;
      const expired = e.t < now - this.maxLagMs;
      if (!expired && !this.others.every((c) => this.known(c, e.t))) return;
      const raw = new Map<number, number>([[this.lead, e.v]]);
      let complete = true;
      for (const c of this.others) {
        const h = this.history.get(c.id)!;
        // Latest value at or before e.t; drop the ones before it (never needed again).
        let k = -1;
        for (let i = h.length - 1; i >= 0; i--) {
          if (h[i]!.t <= e.t) {
            k = i;
            break;
          }
        }
        if (k < 0) {
          complete = false;
          continue;
        }
        raw.set(c.id, h[k]!.v);
        if (k > 0) h.splice(0, k);
      }
      if (expired && !complete) this.late++;
      this.queue.shift();
      this.emit(e.t, raw);
    }
  }

  /** Whether channel `c`'s value for time `t` is settled (see the top of this file). */
  private known(c: AlignedChannel, t: number): boolean {
    const h = this.history.get(c.id)!;
    if (h.length === 0) return false;
    const last = h[h.length - 1]!;
    return last.t > t || last.t + c.periodMs > t;
  }
}
