/**
 * Declarative decision rules: a pipeline's `rules` (config) evaluated on every inference.
 *
 * Each rule is a two-state machine (inactive/active). On every `evaluate()` the rule reads
 * one value, computes its *raw* condition relative to its current state (hysteresis), and
 * the debounce and cooldown settings decide whether that raw condition changes the state.
 * Every state change yields one `DecisionEvent` carrying the rule's onEnter/onExit actions.
 *
 * Semantics (the contract integrators configure against):
 *
 * - **Threshold** on an output element (`output` + `index`) or a sensor (`sensor`,
 *   "source.channel"). Entry needs `value > above` (if given) and `value < below` (if given;
 *   both give a band `above < value < below`). Once active, the thresholds move back by
 *   `hysteresis`: the rule stays active while `value > above - hysteresis` and
 *   `value < below + hysteresis`, and its raw condition turns false at the first value at or
 *   past those limits (above 0.8, hysteresis 0.1: enters at 0.81, stays at 0.75, exits at 0.7).
 *   With hysteresis 0 entry and exit use the same strict comparison.
 * - **Class test** (`output` + `labels` + `is`): argmax over the output (the first index wins
 *   a tie); the raw condition holds when the argmax label is one of `is` and its score is at
 *   least `minScore` (if given). Hysteresis applies to `minScore`: once active, the rule
 *   stays active while the argmax label is in `is` and `score >= minScore - hysteresis`.
 *   The output must have exactly `labels.length` elements. Pass `outputSizes` to check this
 *   (and threshold indices) at construction; otherwise a mismatch found at evaluation is
 *   recorded once as a `RuleIssue` (see `issues()` / `onIssue`) and every such evaluation
 *   counts as unknown, so the rule never enters on a misconfigured output.
 * - **Debounce**: `count` = the raw condition must disagree with the current state on N
 *   consecutive evaluations before the state changes; `ms` = it must disagree continuously
 *   for at least that long, timed by the inputs' `t` (from the first disagreeing
 *   evaluation). Both apply to entry and exit; when both are given both must be met.
 * - **Cooldown** (`cooldownMs`): an entry is not allowed within `cooldownMs` of the previous
 *   entry (input time). The rule stays inactive; the blocked entry is counted once per
 *   episode in `suppressed`, and if the condition still holds once the cooldown has elapsed
 *   the rule enters then.
 * - **Unknown**: a missing output or sensor, an index out of range, or a NaN/non-number
 *   value is not an error: the evaluation counts as `unknown`, does not change the state,
 *   and breaks any pending debounce streak (the condition was not observed to hold).
 *
 * Input times must be finite; if `t` goes backwards (the wall clock was set) pending
 * debounce timing and the cooldown restart from the new time rather than firing early.
 */
import type { Clock } from '../clock.ts';
import type { ActionConfig, RuleConfig } from '../config/schema.ts';

/** What rules (and policies) decide on: one pipeline's latest outputs and sensor values. */
export interface DecisionInput {
  /** Pipeline name. */
  pipeline: string;
  /** Time of the decision (the window's newest sample), epoch ms. */
  t: number;
  /** Model outputs by name. */
  outputs: Record<string, ArrayLike<number>>;
  /** Latest sensor values, keyed "source.channel". */
  sensors: Record<string, number>;
}

/** One rule state change. */
export interface DecisionEvent {
  rule: string;
  pipeline: string;
  state: 'enter' | 'exit';
  /** Input time of the evaluation that changed the state, epoch ms. */
  t: number;
  /** The tested value: the threshold value, or the argmax score of a class test. */
  value: number;
  /** Argmax label, for class tests. */
  label?: string;
  /** The rule's onEnter or onExit actions, in order. */
  actions: ActionConfig[];
}

/** Counters of one rule. */
export interface RuleStats {
  enters: number;
  exits: number;
  /** Entries blocked by the cooldown (once per blocked episode). */
  suppressed: number;
  /** Evaluations whose value was missing, out of range or NaN. */
  unknown: number;
}

/** A configuration/model mismatch found while evaluating (reported once per rule). */
export interface RuleIssue {
  rule: string;
  message: string;
}

/** Options of a `RuleEngine`. */
export interface RuleEngineOptions {
  clock: Clock;
  /**
   * Element count of each model output, when known (from the model's metadata). Lets the
   * constructor reject out-of-range indices and label lists of the wrong length. A size of
   * NaN names an output whose size the model leaves open (only its existence is checked).
   */
  outputSizes?: Record<string, number>;
  /** Called once per rule the first time a mismatch is found at evaluation. */
  onIssue?: (issue: RuleIssue) => void;
}

type Reading = { value: number; label?: string; known: true } | { known: false; issue?: string };

interface CompiledRule {
  name: string;
  /** Reads the tested value; returns unknown when it is missing or NaN. */
  read: (input: DecisionInput) => Reading;
  /** Raw condition for `value`, given whether the rule is currently active. */
  holds: (r: { value: number; label?: string }, active: boolean) => boolean;
  debounceCount: number;
  debounceMs: number;
  cooldownMs: number;
  onEnter: ActionConfig[];
  onExit: ActionConfig[];
}

interface RuleState {
  active: boolean;
  /** Consecutive known evaluations whose raw condition disagrees with `active`. */
  streak: number;
  /** Input time of the first of those evaluations; undefined when no change is pending. */
  since: number | undefined;
  /** Input time of the last entry (for the cooldown). */
  lastEnterT: number | undefined;
  /** A pending entry was already counted as suppressed. */
  blocked: boolean;
  issued: boolean;
  stats: RuleStats;
}

/** Evaluates one pipeline's rules; see the module comment for the exact semantics. */
export class RuleEngine {
  private readonly rules: CompiledRule[];
  private readonly state = new Map<string, RuleState>();
  private readonly clock: Clock;
  private readonly onIssue?: (issue: RuleIssue) => void;
  private readonly found: RuleIssue[] = [];
  private resetAt: number | undefined;

  /** Throws a TypeError listing every invalid rule (paths like `rules[2].when`). */
  constructor(rules: readonly RuleConfig[], options: RuleEngineOptions) {
    if (!Array.isArray(rules)) throw new TypeError('rules must be an array of rule configurations');
    if (!options || typeof options.clock?.now !== 'function') throw new TypeError('options.clock must be a Clock');
    this.clock = options.clock;
    this.onIssue = options.onIssue;
    const problems: string[] = [];
    this.rules = rules.map((r, i) => compile(r, `rules[${i}]`, options.outputSizes, problems));
    const seen = new Set<string>();
    for (const r of this.rules) {
      if (seen.has(r.name)) problems.push(`rules: duplicate rule name "${r.name}"`);
      seen.add(r.name);
    }
    if (problems.length) throw new TypeError(`invalid rules:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    for (const r of this.rules) {
      this.state.set(r.name, { active: false, streak: 0, since: undefined, lastEnterT: undefined, blocked: false, issued: false, stats: { enters: 0, exits: 0, suppressed: 0, unknown: 0 } });
    }
  }

  /** Evaluates every rule on `input`, in configuration order; returns the state changes. */
  evaluate(input: DecisionInput): DecisionEvent[] {
    if (!input || typeof input !== 'object') throw new TypeError('input must be a DecisionInput object');
    if (typeof input.t !== 'number' || !Number.isFinite(input.t)) throw new TypeError(`input.t must be a finite epoch-ms number, got ${String(input.t)}`);
    if (!input.outputs || typeof input.outputs !== 'object') throw new TypeError('input.outputs must be an object');
    if (!input.sensors || typeof input.sensors !== 'object') throw new TypeError('input.sensors must be an object');
    const t = input.t;
    const events: DecisionEvent[] = [];
    for (const rule of this.rules) {
      const st = this.state.get(rule.name)!;
      const reading = rule.read(input);
      if (!reading.known) {
        st.stats.unknown++;
        st.streak = 0;
        st.since = undefined;
        if (reading.issue && !st.issued) {
          st.issued = true;
          const issue = { rule: rule.name, message: reading.issue };
          this.found.push(issue);
          this.onIssue?.(issue);
        }
        continue;
      }
      const wanted = rule.holds(reading, st.active);
      if (wanted === st.active) {
        st.streak = 0;
        st.since = undefined;
        st.blocked = false;
        continue;
      }
      st.streak++;
      if (st.since === undefined || t < st.since) st.since = t;
      if (st.streak < rule.debounceCount || t - st.since < rule.debounceMs) continue;
      if (!st.active) {
        if (st.lastEnterT !== undefined && t < st.lastEnterT) st.lastEnterT = t; // wall clock set back
        if (rule.cooldownMs > 0 && st.lastEnterT !== undefined && t - st.lastEnterT < rule.cooldownMs) {
          if (!st.blocked) st.stats.suppressed++;
          st.blocked = true;
          continue;
        }
        st.active = true;
        st.lastEnterT = t;
        st.stats.enters++;
      } else {
        st.active = false;
        st.stats.exits++;
      }
      st.streak = 0;
      st.since = undefined;
      st.blocked = false;
      const ev: DecisionEvent = {
        rule: rule.name,
        pipeline: input.pipeline,
        state: st.active ? 'enter' : 'exit',
        t,
        value: reading.value,
        actions: (st.active ? rule.onEnter : rule.onExit).map((a) => ({ ...a })),
      };
      if (reading.label !== undefined) ev.label = reading.label;
      events.push(ev);
    }
    return events;
  }

  /** Current state of every rule (true = active). */
  states(): Record<string, boolean> {
    const out: Record<string, boolean> = {};
    for (const [name, st] of this.state) out[name] = st.active;
    return out;
  }

  /** Counters of every rule. */
  stats(): Record<string, RuleStats> {
    const out: Record<string, RuleStats> = {};
    for (const [name, st] of this.state) out[name] = { ...st.stats };
    return out;
  }

  /** Mismatches found so far (each rule at most once). */
  issues(): RuleIssue[] {
    return [...this.found];
  }

  /** Epoch ms of the last `reset()`, if any. */
  lastReset(): number | undefined {
    return this.resetAt;
  }

  /**
   * Puts every rule inactive and drops pending debounce streaks, without exit events (used
   * after a safe state, which has already driven the actuators). Counters and cooldowns are
   * kept, so a reset cannot be used to defeat a cooldown.
   */
  reset(): void {
    this.resetAt = this.clock.now();
    for (const st of this.state.values()) {
      st.active = false;
      st.streak = 0;
      st.since = undefined;
      st.blocked = false;
    }
  }
}

function isNum(v: unknown): v is number {
  return typeof v === 'number' && !Number.isNaN(v);
}

function compile(r: RuleConfig, at: string, sizes: Record<string, number> | undefined, problems: string[]): CompiledRule {
  const bad = (path: string, msg: string) => problems.push(`${at}${path}: ${msg}`);
  const name = typeof r?.name === 'string' && r.name.length > 0 ? r.name : `#${at}`;
  if (!r || typeof r !== 'object') {
    bad('', 'expected a rule object');
    return inert(name);
  }
  if (typeof r.name !== 'string' || r.name.length === 0) bad('.name', 'expected a non-empty string');
  const w = r.when;
  if (!w || typeof w !== 'object') {
    bad('.when', 'expected a condition object');
    return inert(name);
  }
  const index = w.index ?? 0;
  const h = w.hysteresis ?? 0;
  if ((w.output === undefined) === (w.sensor === undefined)) bad('.when', 'give exactly one of output or sensor');
  const threshold = w.above !== undefined || w.below !== undefined;
  const klass = w.labels !== undefined || w.is !== undefined;
  if (threshold === klass) bad('.when', 'give a threshold (above and/or below) or a class test (labels and is), not both or neither');
  if (klass && (!Array.isArray(w.labels) || !Array.isArray(w.is) || w.labels.length === 0 || w.is.length === 0)) bad('.when', 'a class test needs non-empty labels and is');
  if (klass && w.sensor !== undefined) bad('.when', 'class tests apply to model outputs, not sensors');
  if (Array.isArray(w.labels) && Array.isArray(w.is)) w.is.forEach((l, j) => !w.labels!.includes(l) && bad(`.when.is[${j}]`, `"${l}" is not one of the labels`));
  for (const k of ['above', 'below', 'minScore'] as const) {
    if (w[k] !== undefined && (typeof w[k] !== 'number' || !Number.isFinite(w[k]))) bad(`.when.${k}`, 'expected a finite number');
  }
  if (w.above !== undefined && w.below !== undefined && !(w.above < w.below)) bad('.when', `above (${w.above}) must be less than below (${w.below}) for a band`);
  if (typeof h !== 'number' || !(h >= 0) || !Number.isFinite(h)) bad('.when.hysteresis', 'expected a finite number >= 0');
  if (!Number.isInteger(index) || index < 0) bad('.when.index', 'expected an integer >= 0');
  const debounceCount = r.debounce?.count ?? 1;
  const debounceMs = r.debounce?.ms ?? 0;
  if (!Number.isInteger(debounceCount) || debounceCount < 1) bad('.debounce.count', 'expected an integer >= 1');
  if (typeof debounceMs !== 'number' || !(debounceMs >= 0) || !Number.isFinite(debounceMs)) bad('.debounce.ms', 'expected a finite number >= 0');
  const cooldownMs = r.cooldownMs ?? 0;
  if (typeof cooldownMs !== 'number' || !(cooldownMs >= 0) || !Number.isFinite(cooldownMs)) bad('.cooldownMs', 'expected a finite number >= 0');
  const onEnter = r.onEnter ?? [];
  const onExit = r.onExit ?? [];
  if (!Array.isArray(onEnter)) bad('.onEnter', 'expected an array of actions');
  if (!Array.isArray(onExit)) bad('.onExit', 'expected an array of actions');
  if (sizes && w.output !== undefined) {
    const n = sizes[w.output];
    if (n === undefined) bad('.when.output', `the model has no output "${w.output}" (outputs: ${Object.keys(sizes).join(', ') || 'none'})`);
    else if (!Number.isFinite(n)) {
      // The model leaves this output's size open (symbolic dims): checked at evaluation.
    } else if (klass && Array.isArray(w.labels) && w.labels.length !== n) bad('.when.labels', `${w.labels.length} labels for output "${w.output}" of ${n} elements`);
    else if (threshold && index >= n) bad('.when.index', `index ${index} is out of range for output "${w.output}" of ${n} elements`);
  }

  const base = { name, debounceCount, debounceMs, cooldownMs, onEnter: Array.isArray(onEnter) ? onEnter : [], onExit: Array.isArray(onExit) ? onExit : [] };
  if (klass) {
    const output = w.output ?? '';
    const labels = w.labels ?? [];
    const accepted = new Set(w.is ?? []);
    const minScore = w.minScore;
    return {
      ...base,
      read: (input) => {
        const arr = input.outputs[output];
        if (arr === undefined || arr === null) return { known: false, issue: `the model produced no output "${output}"` };
        if (arr.length !== labels.length) {
          return { known: false, issue: `output "${output}" has ${arr.length} elements but the class test has ${labels.length} labels` };
        }
        let best = 0;
        for (let i = 0; i < arr.length; i++) {
          if (!isNum(arr[i])) return { known: false };
          if (arr[i] > arr[best]) best = i;
        }
        return { known: true, value: arr[best], label: labels[best] };
      },
      holds: (r, active) => accepted.has(r.label!) && (minScore === undefined || r.value >= minScore - (active ? h : 0)),
    };
  }
  const { above, below } = w;
  const read: CompiledRule['read'] =
    w.sensor !== undefined
      ? ((key: string) => (input: DecisionInput): Reading => {
          const v = input.sensors[key];
          return isNum(v) ? { known: true, value: v } : { known: false };
        })(w.sensor)
      : ((output: string) => (input: DecisionInput): Reading => {
          const arr = input.outputs[output];
          if (arr === undefined || arr === null) return { known: false, issue: `the model produced no output "${output}"` };
          if (index >= arr.length) return { known: false, issue: `index ${index} is out of range for output "${output}" of ${arr.length} elements` };
          const v = arr[index];
          return isNum(v) ? { known: true, value: v } : { known: false };
        })(w.output ?? '');
  return {
    ...base,
    read,
    holds: (r, active) => {
      const back = active ? h : 0;
      return (above === undefined || r.value > above - back) && (below === undefined || r.value < below + back);
    },
  };
}

/** A placeholder for a rule too broken to compile; the constructor throws before it is used. */
function inert(name: string): CompiledRule {
  return { name, read: () => ({ known: false }), holds: () => false, debounceCount: 1, debounceMs: 0, cooldownMs: 0, onEnter: [], onExit: [] };
}
