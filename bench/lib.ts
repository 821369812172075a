/**
 * Shared shape of benchmark results. Every figure is reported next to a baseline measured
 * in the same run (a raw limit: raw session.run, raw parsing of the same bytes, ...), and
 * the ratio between them, because the machines are shared and noisy.
 */

/** One benchmark figure. `ratio` = value / baseline (both in `unit`). */
export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  ratio: number;
}

/** Options every benchmark module receives. */
export interface BenchOptions {
  /** Shorter runs (CI smoke, `--quick`); figures are noisier. */
  quick: boolean;
}

/** A benchmark module's default export. */
export type Bench = (opts: BenchOptions) => Promise<BenchResult[]>;

/** Builds a result, computing the ratio. */
export function result(name: string, value: number, unit: string, baseline: number): BenchResult {
  return { name, value, unit, baseline, ratio: baseline === 0 ? 0 : value / baseline };
}

/** Percentile (0..100) of an unsorted sample, by nearest rank. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/**
 * Runs `a` and `b` alternately `rounds` times and returns the median duration of each in ms.
 * Interleaving spreads machine noise over both sides of a ratio.
 */
export async function interleave(rounds: number, a: () => Promise<void> | void, b: () => Promise<void> | void): Promise<[number, number]> {
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < rounds; i++) {
    let t0 = performance.now();
    await a();
    ta.push(performance.now() - t0);
    t0 = performance.now();
    await b();
    tb.push(performance.now() - t0);
  }
  return [percentile(ta, 50), percentile(tb, 50)];
}
