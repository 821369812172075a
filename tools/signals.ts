/**
 * Evaluates the synthetic-signal part of a keel config (sine, noise, constant, steps, ramp,
 * sequence) offline, so that the model tests can check that an example config's signals
 * really drive its model to the intended decisions. Semantics follow the schema's
 * documentation: times in ms, sine phase in radians, noise amplitude is the standard
 * deviation, `steps` cycles through its levels, `ramp` holds `to` after `overMs`, a
 * `sequence` restarts each segment's time at 0 and loops unless `loop: false` (then the last
 * segment keeps running). Noise is drawn from this module's own seeded generator: the same
 * statistics as keel's synthetic source, not the same stream.
 */
import type { SignalConfig } from '../runtime/config/schema.ts';
import { Rng } from './nn.ts';

type Fn = (tMs: number) => number;

function compile(s: SignalConfig, rng: Rng): Fn {
  switch (s.kind) {
    case 'sine': {
      const a = s.amplitude ?? 1;
      const ph = s.phase ?? 0;
      return (t) => a * Math.sin(2 * Math.PI * s.freqHz * (t / 1000) + ph);
    }
    case 'noise':
      return () => rng.normal(0, s.amplitude);
    case 'constant':
      return () => s.value;
    case 'steps':
      return (t) => s.levels[Math.floor(t / s.everyMs) % s.levels.length];
    case 'ramp':
      return (t) => (t >= s.overMs ? s.to : s.from + ((s.to - s.from) * t) / s.overMs);
    case 'sequence': {
      const segs = s.segments.map((seg) => ({ ms: seg.durationMs, fns: seg.signals.map((x) => compile(x as SignalConfig, rng)) }));
      const total = segs.reduce((a, g) => a + g.ms, 0);
      const loop = s.loop ?? true;
      return (t) => {
        let local = loop ? t % total : t;
        for (let k = 0; k < segs.length; k++) {
          const last = k === segs.length - 1;
          if (local < segs[k].ms || last) return segs[k].fns.reduce((sum, f) => sum + f(local), 0);
          local -= segs[k].ms;
        }
        return 0;
      };
    }
  }
}

/** `n` samples of one channel (the sum of its signals) at `rateHz`, starting at t = 0. */
export function synthesizeChannel(signals: readonly SignalConfig[], rateHz: number, n: number, seed = 1): Float64Array {
  if (!(rateHz > 0)) throw new RangeError(`synthesizeChannel: rateHz must be > 0, got ${rateHz}`);
  const rng = new Rng(seed);
  const fns = signals.map((s) => compile(s, rng));
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t = (i * 1000) / rateHz;
    out[i] = fns.reduce((sum, f) => sum + f(t), 0);
  }
  return out;
}
