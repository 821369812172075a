/**
 * Assertions of a HIL scenario, evaluated on what was observed (a `Timeline`). Pure: no
 * board, no runtime, no clock, so the semantics are tested on hand-made timelines.
 *
 * A matcher names one thing that can be observed:
 * - state matchers, true over intervals: `output` (an emulated pin's state), `safe` (the
 *   runtime holds its safe state), `link` (the host's bridge link is up);
 * - event matchers, true at instants: `decision`, `action`, `fault`.
 * An expectation puts one matcher under a quantifier over a time window:
 * - plain (eventually): it is observed at some time in the window (a state that already
 *   holds when the window opens counts, at the window's start);
 * - `never`: it is observed at no time in the window;
 * - `always` (state matchers only): it holds over the whole window;
 * - `times: n` (plain only): it occurs exactly n times in the window (for a state matcher:
 *   n transitions into the state).
 * The window opens at `after` (a named event, or the first time a matcher is observed from
 * scenario start; default: start) plus `afterMs`, and closes `withinMs` later, at `before`
 * (same forms as `after`; the anchor's own instant is outside), or at the end of the
 * scenario, whichever comes first. Times are scenario milliseconds; windows include both
 * ends, except a `before` end.
 */

/** The state of an emulated pin as observed, from `atMs` on. */
export interface OutputChange {
  atMs: number;
  pin: number;
  kind: 'digital' | 'pwm' | 'input';
  value: number;
  duty?: number;
}

/** A rule's decision as the runtime emitted it. */
export interface DecisionSeen {
  atMs: number;
  pipeline: string;
  rule: string;
  state: 'enter' | 'exit';
  value: number;
}

/** An action the runtime applied, suppressed or failed. */
export interface ActionSeen {
  atMs: number;
  actuator: string;
  value: number | boolean | string;
  origin: string;
  result: 'ok' | 'suppressed' | 'failed';
  error?: string;
}

/** A fault the runtime raised. */
export interface FaultSeen {
  atMs: number;
  kind: string;
  detail: string;
  pipeline?: string;
}

/** A change of a boolean state (safe state, link), from `atMs` on. */
export interface FlagChange {
  atMs: number;
  on: boolean;
  detail?: string;
}

/** An input value sent to the board. */
export interface InputSent {
  atMs: number;
  input: string;
  value: number;
}

/** Everything observed during one scenario run, in scenario milliseconds (0 = link up). */
export interface Timeline {
  durationMs: number;
  /** Named moments (input segments, board steps) and when they actually happened. */
  events: Record<string, number>;
  outputs: OutputChange[];
  decisions: DecisionSeen[];
  actions: ActionSeen[];
  faults: FaultSeen[];
  /** Safe-state changes; the first entry is the state when the runtime started. */
  safe: FlagChange[];
  /** Host link changes; the first entry is the state when the runtime started. */
  link: FlagChange[];
  inputs: InputSent[];
}

/** Matches an emulated pin's state. */
export interface OutputMatcher {
  pin: number;
  value?: number;
  above?: number;
  below?: number;
  kind?: 'digital' | 'pwm' | 'input';
}

/** Matches decisions; absent fields match anything. */
export interface DecisionMatcher {
  pipeline?: string;
  rule?: string;
  state?: 'enter' | 'exit';
}

/** Matches actions; absent fields match anything. */
export interface ActionMatcher {
  actuator?: string;
  value?: number | boolean | string;
  result?: 'ok' | 'suppressed' | 'failed';
}

/** Matches faults: `kind` exactly or as a glob with `*`, `detail` as a regular expression. */
export interface FaultMatcher {
  kind?: string;
  detail?: string;
}

/** One observable thing; exactly one key is set (checked by the scenario loader). */
export interface Matcher {
  output?: OutputMatcher;
  decision?: DecisionMatcher;
  action?: ActionMatcher;
  fault?: FaultMatcher;
  safe?: boolean;
  link?: 'up' | 'down';
}

/** A window anchor: a named event or the first observation of a matcher. */
export type Anchor = string | Matcher;

/** One expectation as written in the scenario (validated by the loader). */
export interface Expectation extends Matcher {
  name?: string;
  never?: Matcher;
  always?: Matcher;
  after?: Anchor;
  afterMs?: number;
  withinMs?: number;
  before?: Anchor;
  times?: number;
}

/** The verdict on one expectation. */
export interface AssertionResult {
  /** Index in the scenario's `expect` list. */
  index: number;
  /** The expectation's `name`, or its description. */
  name: string;
  /** What it asserts, generated from the expectation (`pin 9 = 0 within 3000 ms after jam`). */
  description: string;
  passed: boolean;
  /** Why it passed or failed, with observed times. */
  message: string;
  /** When the matcher was first observed in the window (or the violation, for never/always). */
  observedAtMs?: number;
  /** The evaluated window, scenario ms (absent when an anchor never happened). */
  window?: { fromMs: number; toMs: number };
  /** Occurrences in the window (events, or transitions into the state). */
  count?: number;
}

const STATE_KEYS = ['output', 'safe', 'link'] as const;
const EVENT_KEYS = ['decision', 'action', 'fault'] as const;
/** Every matcher key. */
export const MATCHER_KEYS = [...STATE_KEYS, ...EVENT_KEYS] as const;
/** A matcher key. */
export type MatcherKey = (typeof MATCHER_KEYS)[number];

/** The one key a matcher sets (the loader guarantees there is exactly one). */
export function matcherKey(m: Matcher): MatcherKey {
  for (const k of MATCHER_KEYS) if (m[k] !== undefined) return k;
  throw new TypeError('m must set one of ' + MATCHER_KEYS.join(', '));
}

/** Whether the matcher describes a state (true over intervals) rather than events. */
export function isStateMatcher(m: Matcher): boolean {
  return (STATE_KEYS as readonly string[]).includes(matcherKey(m));
}

/** A fault kind glob (`source-fault:*`) as a regular expression. */
export function kindPattern(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

function outputMatches(m: OutputMatcher, c: OutputChange): boolean {
  if (m.kind !== undefined && c.kind !== m.kind) return false;
  if (m.value !== undefined && c.value !== m.value) return false;
  if (m.above !== undefined && !(c.value > m.above)) return false;
  if (m.below !== undefined && !(c.value < m.below)) return false;
  return true;
}

function sameValue(a: number | boolean | string, b: number | boolean | string): boolean {
  if (a === b) return true;
  // An action written as `value: 1` in the config and `value: true` in the scenario (or "1")
  // mean the same output value; compare as numbers when both read as numbers.
  const num = (v: number | boolean | string) => (typeof v === 'boolean' ? (v ? 1 : 0) : typeof v === 'number' ? v : v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : NaN);
  const x = num(a);
  const y = num(b);
  return Number.isFinite(x) && x === y;
}

/** A state as a step function: from each `atMs` on, the matcher is `on` (false before the first). */
interface Step {
  atMs: number;
  on: boolean;
}

function stateSteps(m: Matcher, tl: Timeline): Step[] {
  const key = matcherKey(m);
  const steps: Step[] = [];
  const push = (atMs: number, on: boolean) => {
    if (steps.length && steps[steps.length - 1].on === on) return;
    steps.push({ atMs, on });
  };
  if (key === 'output') {
    const om = m.output!;
    for (const c of tl.outputs) if (c.pin === om.pin) push(c.atMs, outputMatches(om, c));
  } else {
    const want = key === 'safe' ? m.safe! : m.link === 'up';
    for (const c of key === 'safe' ? tl.safe : tl.link) push(c.atMs, c.on === want);
  }
  return steps;
}

function eventTimes(m: Matcher, tl: Timeline): number[] {
  const key = matcherKey(m);
  if (key === 'decision') {
    const d = m.decision!;
    return tl.decisions.filter((e) => (d.pipeline === undefined || e.pipeline === d.pipeline) && (d.rule === undefined || e.rule === d.rule) && (d.state === undefined || e.state === d.state)).map((e) => e.atMs);
  }
  if (key === 'action') {
    const a = m.action!;
    return tl.actions.filter((e) => (a.actuator === undefined || e.actuator === a.actuator) && (a.value === undefined || sameValue(e.value, a.value)) && (a.result === undefined || e.result === a.result)).map((e) => e.atMs);
  }
  const f = m.fault!;
  const kind = f.kind === undefined ? null : kindPattern(f.kind);
  const detail = f.detail === undefined ? null : new RegExp(f.detail, 'i');
  return tl.faults.filter((e) => (!kind || kind.test(e.kind)) && (!detail || detail.test(e.detail))).map((e) => e.atMs);
}

function truthAt(steps: Step[], t: number): boolean {
  let on = false;
  for (const s of steps) {
    if (s.atMs > t) break;
    on = s.on;
  }
  return on;
}

/** First time >= from at which the matcher is observed, or null. */
function firstObserved(m: Matcher, tl: Timeline, from: number, to: number): number | null {
  if (isStateMatcher(m)) {
    const steps = stateSteps(m, tl);
    if (truthAt(steps, from)) return from;
    const s = steps.find((x) => x.atMs > from && x.atMs <= to && x.on);
    return s ? s.atMs : null;
  }
  const t = eventTimes(m, tl).find((x) => x >= from && x <= to);
  return t ?? null;
}

/** The time an anchor stands for, or null if it never happened. */
function anchorTime(a: Anchor, tl: Timeline): number | null {
  if (typeof a === 'string') return a === 'start' ? 0 : a === 'end' ? tl.durationMs : (tl.events[a] ?? null);
  return firstObserved(a, tl, 0, tl.durationMs);
}

const ms = (t: number) => `${Math.round(t)} ms`;

/** How far before a `before` anchor the window closes, ms (less than any clock's resolution). */
const BEFORE_EPSILON_MS = 1e-6;

/** Short text of a matcher: `pin 9 = 0`, `decision stall-guard/stall enter`, `safe state`. */
export function describeMatcher(m: Matcher): string {
  switch (matcherKey(m)) {
    case 'output': {
      const o = m.output!;
      const parts: string[] = [];
      if (o.value !== undefined) parts.push(`= ${o.value}`);
      if (o.above !== undefined && o.below !== undefined) parts.push(`in (${o.above}, ${o.below})`);
      else if (o.above !== undefined) parts.push(`> ${o.above}`);
      else if (o.below !== undefined) parts.push(`< ${o.below}`);
      if (o.kind !== undefined) parts.push(`(${o.kind})`);
      return `pin ${o.pin} ${parts.join(' ') || 'reported'}`.trim();
    }
    case 'decision': {
      const d = m.decision!;
      const who = d.pipeline && d.rule ? `${d.pipeline}/${d.rule}` : d.rule ? `rule ${d.rule}` : d.pipeline ? `${d.pipeline}/any rule` : 'any rule';
      return `decision ${who}${d.state ? ` ${d.state}` : ''}`;
    }
    case 'action': {
      const a = m.action!;
      return `action ${a.actuator ?? 'any actuator'}${a.value !== undefined ? ` = ${JSON.stringify(a.value)}` : ''}${a.result ? ` (${a.result})` : ''}`;
    }
    case 'fault': {
      const f = m.fault!;
      return `fault${f.kind ? ` ${f.kind}` : ''}${f.detail ? ` /${f.detail}/` : ''}`;
    }
    case 'safe':
      return m.safe ? 'safe state' : 'not in safe state';
    case 'link':
      return `link ${m.link}`;
  }
}

function describeAnchor(a: Anchor): string {
  return typeof a === 'string' ? a : `[${describeMatcher(a)}]`;
}

function offsetText(name: string, offset: number): string {
  return offset ? `${name} + ${ms(offset)}` : name;
}

/** The window of an expectation in words: `within 3000 ms after jam`, `from start until jam`. */
export function describeWindow(e: Expectation): string {
  const from = e.after !== undefined ? describeAnchor(e.after) : 'start';
  const off = e.afterMs ?? 0;
  const parts: string[] = [];
  if (e.withinMs !== undefined) parts.push(`within ${ms(e.withinMs)} after ${offsetText(from, off)}`);
  else if (e.after !== undefined || off) parts.push(`after ${offsetText(from, off)}`);
  if (e.before !== undefined) parts.push(`before ${describeAnchor(e.before)}`);
  return parts.join(', ') || 'during the scenario';
}

/** What an expectation asserts, in words. */
export function describeExpectation(e: Expectation): string {
  const win = describeWindow(e);
  if (e.never) return `never ${describeMatcher(e.never)} ${win}`;
  if (e.always) return `always ${describeMatcher(e.always)} ${win}`;
  const times = e.times !== undefined ? ` exactly ${e.times} time${e.times === 1 ? '' : 's'}` : '';
  return `${describeMatcher(e)}${times} ${win}`;
}

/** How a time relates to the window's anchor: `7312 ms (jam + 1312 ms)`. */
function at(t: number, anchorName: string, anchorT: number): string {
  if (anchorName === 'start') return ms(t);
  const d = Math.round(t - anchorT);
  if (d === 0) return `${ms(t)} (${anchorName})`;
  return `${ms(t)} (${anchorName} ${d > 0 ? '+' : '-'} ${ms(Math.abs(d))})`;
}

/** What happened around the window, to say why an expectation failed. */
function context(m: Matcher, tl: Timeline, from: number, to: number): string {
  const key = matcherKey(m);
  const list = <T>(items: T[], fmt: (x: T) => string, max = 6) => (items.length > max ? [...items.slice(0, max).map(fmt), `... ${items.length - max} more`] : items.map(fmt)).join(', ');
  if (key === 'output') {
    const pin = m.output!.pin;
    const changes = tl.outputs.filter((c) => c.pin === pin);
    if (changes.length === 0) return `pin ${pin} was never reported as an output`;
    const before = changes.filter((c) => c.atMs <= from).pop();
    const inside = changes.filter((c) => c.atMs > from && c.atMs <= to);
    const after = changes.find((c) => c.atMs > to);
    const fmt = (c: OutputChange) => `${c.kind === 'input' ? 'released' : c.value} at ${ms(c.atMs)}`;
    const parts = [before ? `pin ${pin} was ${before.kind === 'input' ? 'not driven' : `${before.value} (${before.kind})`} when the window opened` : `pin ${pin} not yet reported when the window opened`];
    if (inside.length) parts.push(`then ${list(inside, fmt)}`);
    if (after) parts.push(`next change after the window: ${fmt(after)}`);
    return parts.join('; ');
  }
  if (key === 'safe' || key === 'link') {
    const changes = key === 'safe' ? tl.safe : tl.link;
    const name = key === 'safe' ? (on: boolean) => (on ? 'safe' : 'not safe') : (on: boolean) => (on ? 'up' : 'down');
    return `${key}: ${list(changes, (c) => `${name(c.on)} at ${ms(c.atMs)}`, 8) || 'no change seen'}`;
  }
  if (key === 'decision') {
    return `decisions seen: ${list(tl.decisions, (d) => `${d.pipeline}/${d.rule} ${d.state} at ${ms(d.atMs)}`) || 'none'}`;
  }
  if (key === 'action') {
    return `actions seen: ${list(tl.actions, (a) => `${a.actuator} = ${JSON.stringify(a.value)} (${a.result}) at ${ms(a.atMs)}`) || 'none'}`;
  }
  return `faults seen: ${list(tl.faults, (f) => `${f.kind} at ${ms(f.atMs)}`) || 'none'}`;
}

/** Counts occurrences in [from, to]: events, or transitions into the state. */
function occurrences(m: Matcher, tl: Timeline, from: number, to: number): number[] {
  if (!isStateMatcher(m)) return eventTimes(m, tl).filter((t) => t >= from && t <= to);
  return stateSteps(m, tl)
    .filter((s) => s.on && s.atMs >= from && s.atMs <= to)
    .map((s) => s.atMs);
}

/** Evaluates one expectation on a timeline. */
export function evaluate(e: Expectation, index: number, tl: Timeline): AssertionResult {
  const description = describeExpectation(e);
  const base = { index, name: e.name ?? description, description };
  const afterName = e.after !== undefined ? describeAnchor(e.after) : 'start';
  const anchorT = e.after !== undefined ? anchorTime(e.after, tl) : 0;
  if (anchorT === null) {
    return { ...base, passed: false, message: `${afterName} never happened, so the window never opened` };
  }
  const from = Math.max(0, anchorT + (e.afterMs ?? 0));
  let to = tl.durationMs;
  if (e.withinMs !== undefined) to = Math.min(to, from + e.withinMs);
  let beforeNote = '';
  if (e.before !== undefined) {
    const b = anchorTime(e.before, tl);
    if (b === null) beforeNote = ` (${describeAnchor(e.before)} never happened: checked until the end)`;
    // `before` means before: the anchor's own instant is outside the window.
    else to = Math.min(to, b - BEFORE_EPSILON_MS);
  }
  const window = { fromMs: from, toMs: to };
  const span = `between ${at(from, afterName, anchorT)} and ${ms(to)}${beforeNote}`;
  if (to < from) {
    return { ...base, passed: false, window, message: `the window is empty: it would close at ${ms(to)}, before it opens at ${ms(from)}` };
  }
  if (e.never) {
    const t = firstObserved(e.never, tl, from, to);
    if (t === null) return { ...base, passed: true, window, message: `not observed ${span}` };
    return { ...base, passed: false, window, observedAtMs: t, message: `observed at ${at(t, afterName, anchorT)}; ${context(e.never, tl, from, to)}` };
  }
  if (e.always) {
    const steps = stateSteps(e.always, tl);
    let violation: number | null = null;
    if (!truthAt(steps, from)) violation = from;
    else violation = steps.find((s) => s.atMs > from && s.atMs <= to && !s.on)?.atMs ?? null;
    if (violation === null) return { ...base, passed: true, window, message: `held ${span}` };
    return { ...base, passed: false, window, observedAtMs: violation, message: `did not hold at ${at(violation, afterName, anchorT)}; ${context(e.always, tl, from, to)}` };
  }
  if (e.times !== undefined) {
    const seen = occurrences(e, tl, from, to);
    const times = seen.map((t) => ms(t)).join(', ');
    const msg = `observed ${seen.length} time${seen.length === 1 ? '' : 's'} ${span}${seen.length ? ` (at ${times})` : ''}`;
    const r = { ...base, window, count: seen.length, ...(seen.length ? { observedAtMs: seen[0] } : {}) };
    if (seen.length === e.times) return { ...r, passed: true, message: msg };
    return { ...r, passed: false, message: `${msg}, expected ${e.times}; ${context(e, tl, from, to)}` };
  }
  const t = firstObserved(e, tl, from, to);
  if (t !== null) return { ...base, passed: true, window, observedAtMs: t, message: `observed at ${at(t, afterName, anchorT)}` };
  return { ...base, passed: false, window, message: `not observed ${span}; ${context(e, tl, from, to)}` };
}

/** Evaluates every expectation, in order. */
export function evaluateAll(expectations: readonly Expectation[], tl: Timeline): AssertionResult[] {
  return expectations.map((e, i) => evaluate(e, i, tl));
}
