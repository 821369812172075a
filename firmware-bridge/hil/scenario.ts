/**
 * HIL scenarios: a YAML file that says which keel config runs against the emulated board,
 * what the board's inputs read over time, what is done to the board (cable pulled, reset),
 * and which decisions and output changes must happen within which time windows. The format
 * is one TypeBox schema validated with Ajv (unknown keys refused, every problem reported at
 * once with its path), then cross-checked against the config it names. Documented in
 * firmware-bridge/hil/SCENARIOS.md.
 *
 * `runScenario()` starts the emulated board (harness.ts), builds a real keel `Runtime`
 * in-process from the config exactly as `keel run` does (loadConfigFile, createDriverDeps,
 * Runtime.create) with every bridge entry of the board's port pointed at the board's pty,
 * feeds the input waveforms through the harness's control channel on schedule, records the
 * runtime's decisions, actions, faults and safe-state changes, the host link's state and
 * the board's output changes with their times, and evaluates the expectations (expect.ts).
 *
 * Time: scenario milliseconds, 0 = the moment the host's bridge link first came up (so the
 * MCU's boot and the model warm-up do not count). Board outputs are placed by the harness's
 * host clock (`host_ms`), host-side events by this process's clock; both are wall time,
 * multiplied by `speed` (1 = real time).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import { pino, type Logger } from 'pino';
import { loadConfigFile, toPath } from '../../runtime/config/load.ts';
import type { KeelConfig } from '../../runtime/config/schema.ts';
import { SystemClock, type Clock, type TimerHandle } from '../../runtime/clock.ts';
import { ConfigError, ModelError, asError, type ConfigIssue } from '../../runtime/errors.ts';
import { Runtime } from '../../runtime/runtime.ts';
import { createDriverDeps } from '../../drivers/index.ts';
import type { BridgeLease } from '../hub.ts';
import { startBoard, hilPaths, type Board, type OutputEvent } from './harness.ts';
import { InputWave, loadRecording, type InputTarget, type Recording, type WaveSegment } from './waves.ts';
import { evaluateAll, isStateMatcher, kindPattern, MATCHER_KEYS, type AssertionResult, type Expectation, type Matcher, type Timeline } from './expect.ts';

// ---------------------------------------------------------------- the schema

const Strict = { additionalProperties: false } as const;
const EventName = Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_.-]{0,63}$', description: 'a name for this moment, for `after`/`before` in expectations' });
const TimeMs = (description: string) => Type.Number({ minimum: 0, maximum: 3_600_000, description });
const Pin = Type.Integer({ minimum: 2, maximum: 19, description: 'Arduino pin number (14..19 are A0..A5)' });

const Sine = Type.Object(
  {
    mean: Type.Number(),
    amplitude: Type.Number({ minimum: 0 }),
    periodMs: Type.Number({ exclusiveMinimum: 0, maximum: 3_600_000 }),
    phaseDeg: Type.Number({ default: 0 }),
  },
  Strict,
);
const Csv = Type.Object(
  {
    file: Type.String({ minLength: 1, description: 'CSV (header row, # comments: keel record writes these), JSON lines or 16-bit WAV; relative to the scenario' }),
    column: Type.String({ minLength: 1, description: 'column (field) to play' }),
    timeColumn: Type.Optional(Type.String({ minLength: 1, description: 'column holding each row\'s time (keel record: t_ms)' })),
    timeUnit: Type.Optional(Type.Union([Type.Literal('s'), Type.Literal('ms'), Type.Literal('us')])),
    rateHz: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000, description: 'row rate when there is no time column' })),
    scale: Type.Number({ default: 1, description: 'value = recorded * scale + offset, in the input\'s unit' }),
    offset: Type.Number({ default: 0 }),
    loop: Type.Boolean({ default: false, description: 'play again from the start; else hold the last value' }),
  },
  Strict,
);
const Follow = Type.Object(
  {
    pin: Pin,
    gain: Type.Number({ default: 1 }),
    offset: Type.Number({ default: 0 }),
  },
  { ...Strict, description: 'value = gain * (the emulated output pin\'s value: 0/1, or PWM 0..255) + offset' },
);
const Segment = Type.Object(
  {
    atMs: TimeMs('when this segment starts, scenario ms'),
    value: Type.Optional(Type.Number({ description: 'a constant (a step at atMs; with overMs, a ramp)' })),
    sine: Type.Optional(Sine),
    csv: Type.Optional(Csv),
    follow: Type.Optional(Follow),
    overMs: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 3_600_000, description: 'cross-fade from the previous segment over this long' })),
    noise: Type.Optional(Type.Number({ minimum: 0, description: 'standard deviation of added Gaussian noise, input units' })),
    event: Type.Optional(EventName),
  },
  { ...Strict, description: 'one of value, sine, csv, follow' },
);
const Input = Type.Object(
  {
    analog: Type.Optional(Type.Integer({ minimum: 0, maximum: 7, description: 'ADC channel (A0..A7)' })),
    digital: Type.Optional(Type.Integer({ minimum: 2, maximum: 19, description: 'Arduino pin driven as an input (D2..D19)' })),
    unit: Type.Optional(Type.Union([Type.Literal('counts'), Type.Literal('mv')], { description: 'analog only: ADC counts 0..1023 (default) or millivolts' })),
    label: Type.Optional(EventName),
    everyMs: Type.Integer({ minimum: 1, maximum: 1000, default: 10, description: 'how often time-varying shapes are re-sent, ms' }),
    seed: Type.Integer({ minimum: 0, maximum: 4294967295, default: 1, description: 'noise seed' }),
    wave: Type.Array(Segment, { minItems: 1 }),
  },
  { ...Strict, description: 'give analog or digital' },
);
const BoardStep = Type.Object(
  {
    atMs: TimeMs('when, scenario ms'),
    do: Type.Union([Type.Literal('link-down'), Type.Literal('link-up'), Type.Literal('reset')], {
      description: 'link-down pulls the serial cable (bytes both ways dropped), link-up plugs it back, reset presses the MCU\'s reset button',
    }),
    event: Type.Optional(EventName),
  },
  Strict,
);
const OutputMatch = Type.Object(
  {
    pin: Pin,
    value: Type.Optional(Type.Integer({ minimum: 0, maximum: 255, description: 'digital 0/1, or PWM 0..255' })),
    above: Type.Optional(Type.Number()),
    below: Type.Optional(Type.Number()),
    kind: Type.Optional(Type.Union([Type.Literal('digital'), Type.Literal('pwm'), Type.Literal('input')])),
  },
  Strict,
);
const MatcherProps = {
  output: Type.Optional(OutputMatch),
  decision: Type.Optional(
    Type.Object(
      {
        pipeline: Type.Optional(Type.String({ minLength: 1 })),
        rule: Type.Optional(Type.String({ minLength: 1 })),
        state: Type.Optional(Type.Union([Type.Literal('enter'), Type.Literal('exit')])),
      },
      Strict,
    ),
  ),
  action: Type.Optional(
    Type.Object(
      {
        actuator: Type.Optional(Type.String({ minLength: 1 })),
        value: Type.Optional(Type.Union([Type.Number(), Type.Boolean(), Type.String()])),
        result: Type.Optional(Type.Union([Type.Literal('ok'), Type.Literal('suppressed'), Type.Literal('failed')])),
      },
      Strict,
    ),
  ),
  fault: Type.Optional(
    Type.Object(
      {
        kind: Type.Optional(Type.String({ minLength: 1, description: 'fault kind, * matches any text (source-fault:*)' })),
        detail: Type.Optional(Type.String({ minLength: 1, description: 'regular expression on the fault\'s detail (case-insensitive)' })),
      },
      Strict,
    ),
  ),
  safe: Type.Optional(Type.Boolean({ description: 'true: the runtime holds its safe state; false: it does not' })),
  link: Type.Optional(Type.Union([Type.Literal('up'), Type.Literal('down')], { description: 'the host\'s bridge link' })),
};
const MatcherSchema = Type.Object(MatcherProps, { ...Strict, description: 'one of output, decision, action, fault, safe, link' });
const Anchor = Type.Union([EventName, MatcherSchema], { description: 'an event name (or start), or a matcher: the first time it is observed' });
const ExpectationSchema = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    ...MatcherProps,
    never: Type.Optional(MatcherSchema),
    always: Type.Optional(MatcherSchema),
    times: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'exactly this many occurrences in the window' })),
    after: Type.Optional(Anchor),
    afterMs: Type.Optional(TimeMs('the window opens this long after the anchor')),
    withinMs: Type.Optional(Type.Number({ minimum: 0, maximum: 3_600_000, description: 'the window is this long' })),
    before: Type.Optional(Anchor),
  },
  { ...Strict, description: 'one matcher (output, decision, action, fault, safe, link), or never/always with one' },
);

/** The scenario file's schema. */
export const ScenarioSchema = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    description: Type.Optional(Type.String()),
    config: Type.String({ minLength: 1, description: 'keel config, relative to the scenario; its bridge entries on `port` are pointed at the board' }),
    port: Type.Optional(Type.String({ minLength: 1, description: 'the bridge path in the config that is this board (default: the config\'s only bridge path)' })),
    firmware: Type.Optional(Type.String({ minLength: 1, description: 'AVR ELF to run, relative to the scenario (default: the reference firmware, built with make)' })),
    speed: Type.Number({ minimum: 0.5, maximum: 2, default: 1, description: 'emulated seconds per wall second; keel hil run --speed overrides' }),
    durationMs: Type.Integer({ minimum: 100, maximum: 600_000 }),
    startTimeoutMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 5000, description: 'longest wait for the bridge link to come up before time 0' }),
    inputs: Type.Array(Input, { default: [] }),
    board: Type.Array(BoardStep, { default: [] }),
    expect: Type.Array(ExpectationSchema, { minItems: 1 }),
  },
  { ...Strict, title: 'keel HIL scenario' },
);

/** A scenario as written (defaults applied). */
export type ScenarioFile = Static<typeof ScenarioSchema>;
/** One input of a scenario. */
export type ScenarioInput = ScenarioFile['inputs'][number];

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, coerceTypes: false, verbose: true });
const validateScenarioSchema = ajv.compile<ScenarioFile>(ScenarioSchema);

// ---------------------------------------------------------------- loading

/** A scenario or the config it names is invalid; `issues` holds every problem with its path. */
export class ScenarioError extends ConfigError {
  /** The file the issues are about (the scenario, or the config it names). */
  readonly file: string;
  constructor(issues: ConfigIssue[], file: string) {
    super(issues, file);
    this.file = file;
  }
}

/** A validated scenario with its config loaded and cross-checked, ready to run. */
export interface LoadedScenario {
  /** Absolute path of the scenario file. */
  file: string;
  /** Its directory (relative paths resolve against it). */
  dir: string;
  /** `name`, or the file name without extension. */
  name: string;
  scenario: ScenarioFile;
  /** Absolute path of the config. */
  configFile: string;
  /** The validated config (bridge paths not yet rewritten). */
  config: KeelConfig;
  /** Directory of the config (its relative paths resolve against it). */
  configDir: string;
  /** The bridge path in the config that stands for the board. */
  port: string;
  /** The firmware ELF (absolute), or undefined for the reference firmware. */
  firmware?: string;
  /** Recordings of `csv` segments, by input index then segment index. */
  recordings: Map<number, Map<number, Recording>>;
}

/** Board VCC in millivolts (the harness default; the ADC reference). */
const VCC_MV = 5000;
const RESERVED_EVENTS = new Set(['start', 'end']);

/** `{ message }` of Ajv errors as config issues with `inputs[0].wave[2].atMs`-style paths. */
function schemaIssues(errors: ErrorObject[]): ConfigIssue[] {
  // A union that failed (an anchor, a literal set) reports each branch too; the branches'
  // "must be string/object" add nothing to the union's own line.
  const unions = errors.filter((e) => e.keyword === 'anyOf').map((e) => ({ at: e.instancePath, schema: e.schemaPath }));
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    const at = toPath(e.instancePath);
    const inUnion = unions.some((u) => u.at === e.instancePath && e.schemaPath.startsWith(`${u.schema}/`));
    let issue: ConfigIssue | null;
    switch (e.keyword) {
      case 'additionalProperties':
        issue = { path: at ? `${at}.${String(e.params.additionalProperty)}` : String(e.params.additionalProperty), message: 'unknown key' };
        break;
      case 'required':
        issue = { path: at ? `${at}.${String(e.params.missingProperty)}` : String(e.params.missingProperty), message: 'required' };
        break;
      case 'type':
      case 'const':
        issue = inUnion ? null : { path: at, message: e.keyword === 'type' ? `expected ${String(e.params.type)}` : `expected ${JSON.stringify(e.params.allowedValue)}` };
        break;
      case 'pattern':
        issue = inUnion ? null : { path: at, message: `must match ${String(e.params.pattern)}${e.parentSchema?.description ? ` (${String(e.parentSchema.description)})` : ''}` };
        break;
      case 'anyOf': {
        const any = (e.parentSchema as { anyOf?: Array<{ const?: unknown }> }).anyOf ?? [];
        issue = any.every((s) => 'const' in s)
          ? { path: at, message: `expected one of ${any.map((s) => JSON.stringify(s.const)).join(', ')}` }
          : { path: at, message: `expected ${String((e.parentSchema as { description?: string }).description ?? 'one of the allowed forms')}` };
        break;
      }
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        issue = { path: at, message: `expected a number ${String(e.params.comparison)} ${String(e.params.limit)}, got ${JSON.stringify(e.data)}` };
        break;
      case 'minItems':
        issue = { path: at, message: `expected at least ${String(e.params.limit)} item${e.params.limit === 1 ? '' : 's'}` };
        break;
      case 'minLength':
        issue = { path: at, message: 'must not be empty' };
        break;
      default:
        issue = { path: at, message: e.message ?? e.keyword };
    }
    if (!issue) continue;
    const key = `${issue.path}\0${issue.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      issues.push(issue);
    }
  }
  return issues;
}

/** Parses and schema-checks scenario text; throws ScenarioError. `name` is used in messages. */
export function parseScenarioText(text: string, name = 'scenario.yaml'): ScenarioFile {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ScenarioError(
      doc.errors.map((e) => {
        const p = e.linePos?.[0];
        return { path: '', message: `YAML ${e.code}: ${e.message.split('\n')[0]}${p && !e.message.includes(`line ${p.line}`) ? ` (line ${p.line}, column ${p.col})` : ''}` };
      }),
      name,
    );
  }
  const raw = doc.toJS({ maxAliasCount: 100 }) as unknown;
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ScenarioError([{ path: '', message: 'expected a mapping (object) at the top level' }], name);
  if (!validateScenarioSchema(raw)) throw new ScenarioError(schemaIssues(validateScenarioSchema.errors ?? []), name);
  const s = raw as ScenarioFile;
  const issues = scenarioIssues(s);
  if (issues.length) throw new ScenarioError(issues, name);
  return s;
}

function matcherIssues(m: Matcher, at: string, allowEmpty = false): ConfigIssue[] {
  const keys = MATCHER_KEYS.filter((k) => m[k] !== undefined);
  if (keys.length === 0) return allowEmpty ? [] : [{ path: at, message: `give one of ${MATCHER_KEYS.join(', ')}` }];
  if (keys.length > 1) return [{ path: at, message: `give only one of ${keys.join(', ')} (one matcher per expectation)` }];
  const issues: ConfigIssue[] = [];
  const o = m.output;
  if (o) {
    if (o.value !== undefined && (o.above !== undefined || o.below !== undefined)) issues.push({ path: `${at}.output`, message: 'give value, or above/below, not both' });
    if (o.above !== undefined && o.below !== undefined && o.above >= o.below) issues.push({ path: `${at}.output`, message: `above (${o.above}) must be less than below (${o.below}) for a band` });
  }
  const f = m.fault;
  if (f?.detail !== undefined) {
    try {
      new RegExp(f.detail, 'i');
    } catch (err) {
      issues.push({ path: `${at}.fault.detail`, message: `not a valid regular expression: ${asError(err).message}` });
    }
  }
  if (f?.kind !== undefined) kindPattern(f.kind); // always valid: the glob is escaped
  return issues;
}

/** Checks no JSON Schema can express, on a schema-valid scenario. */
function scenarioIssues(s: ScenarioFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const add = (p: string, message: string) => issues.push({ path: p, message });
  const events = new Map<string, string>();
  const defineEvent = (name: string | undefined, at: string) => {
    if (name === undefined) return;
    if (RESERVED_EVENTS.has(name)) return add(at, `"${name}" is reserved (start and end are built in)`);
    const other = events.get(name);
    if (other) add(at, `event "${name}" is already defined at ${other}`);
    else events.set(name, at);
  };
  const targets = new Map<string, string>();
  s.inputs.forEach((inp, i) => {
    const at = `inputs[${i}]`;
    if ((inp.analog === undefined) === (inp.digital === undefined)) {
      add(at, 'give exactly one of analog (ADC channel) or digital (pin)');
      return;
    }
    const digital = inp.digital !== undefined;
    if (digital && inp.unit !== undefined) add(`${at}.unit`, 'unit applies to analog inputs only');
    const key = digital ? `digital ${inp.digital}` : `analog ${inp.analog}`;
    const other = targets.get(key);
    if (other) add(at, `${key} is already played by ${other}`);
    else targets.set(key, at);
    const max = digital ? 1 : inp.unit === 'mv' ? VCC_MV : 1023;
    inp.wave.forEach((seg, k) => {
      const sat = `${at}.wave[${k}]`;
      const shapes = (['value', 'sine', 'csv', 'follow'] as const).filter((x) => seg[x] !== undefined);
      if (shapes.length !== 1) add(sat, shapes.length === 0 ? 'give one of value, sine, csv, follow' : `give only one of ${shapes.join(', ')}`);
      if (k > 0 && seg.atMs <= inp.wave[k - 1].atMs) add(`${sat}.atMs`, `must be later than the previous segment's ${inp.wave[k - 1].atMs}`);
      if (seg.atMs > s.durationMs) add(`${sat}.atMs`, `${seg.atMs} is after the end of the scenario (durationMs ${s.durationMs})`);
      if (k === 0 && seg.overMs !== undefined) add(`${sat}.overMs`, 'the first segment has nothing to fade from');
      if (seg.value !== undefined) {
        if (digital && seg.value !== 0 && seg.value !== 1) add(`${sat}.value`, `a digital input reads 0 or 1, not ${seg.value}`);
        else if (!digital && (seg.value < 0 || seg.value > max)) add(`${sat}.value`, `expected 0..${max} ${inp.unit === 'mv' ? 'mV' : 'counts'}, got ${seg.value}`);
      }
      if (digital && (seg.sine || seg.noise !== undefined)) add(sat, 'sine and noise apply to analog inputs only');
      if (seg.csv && seg.csv.timeColumn !== undefined && seg.csv.rateHz !== undefined) add(`${sat}.csv`, 'give timeColumn or rateHz, not both');
      defineEvent(seg.event, `${sat}.event`);
    });
  });
  s.board.forEach((b, i) => {
    if (b.atMs > s.durationMs) add(`board[${i}].atMs`, `${b.atMs} is after the end of the scenario (durationMs ${s.durationMs})`);
    defineEvent(b.event, `board[${i}].event`);
  });
  const known = [...events.keys()];
  const checkAnchor = (a: string | Matcher | undefined, at: string) => {
    if (a === undefined) return;
    if (typeof a === 'string') {
      if (!events.has(a) && !RESERVED_EVENTS.has(a)) add(at, `no event named "${a}" (${known.length ? `defined: ${known.join(', ')}; ` : ''}or start, end)`);
      return;
    }
    issues.push(...matcherIssues(a, at));
  };
  s.expect.forEach((e, i) => {
    const at = `expect[${i}]`;
    const plain = MATCHER_KEYS.filter((k) => e[k] !== undefined);
    const forms = [...plain, ...(e.never ? ['never'] : []), ...(e.always ? ['always'] : [])];
    if (forms.length !== 1) {
      add(at, forms.length === 0 ? `give one of ${MATCHER_KEYS.join(', ')}, never, always` : `give only one of ${forms.join(', ')}`);
    } else if (e.never) {
      issues.push(...matcherIssues(e.never, `${at}.never`));
    } else if (e.always) {
      issues.push(...matcherIssues(e.always, `${at}.always`));
      if (MATCHER_KEYS.some((k) => e.always![k] !== undefined) && !isStateMatcher(e.always)) {
        add(`${at}.always`, 'always applies to states (output, safe, link); for events use never, or times');
      }
    } else {
      issues.push(...matcherIssues(e, at));
    }
    if (e.times !== undefined && (e.never || e.always)) add(`${at}.times`, 'times applies to a plain matcher, not to never/always');
    checkAnchor(e.after, `${at}.after`);
    checkAnchor(e.before, `${at}.before`);
  });
  return issues;
}

/** Problems between a scenario and its (valid) config: ports, devices, names in matchers. */
function configIssues(s: ScenarioFile, config: KeelConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const add = (p: string, message: string) => issues.push({ path: p, message });
  const bridgePaths = new Set<string>();
  config.sources.forEach((x) => x.type === 'bridge' && bridgePaths.add(x.path));
  config.actuators.forEach((x) => x.type === 'bridge' && bridgePaths.add(x.path));
  if (bridgePaths.size === 0) add('config', 'the config has no bridge source or actuator: nothing would talk to the emulated board');
  if (s.port !== undefined && !bridgePaths.has(s.port)) add('port', `no bridge source or actuator of the config uses ${s.port} (they use ${[...bridgePaths].join(', ') || 'none'})`);
  if (s.port === undefined && bridgePaths.size > 1) add('port', `the config talks to ${bridgePaths.size} MCU ports (${[...bridgePaths].join(', ')}); name the one this board stands for`);
  // One emulated board per scenario; nothing else may reach real hardware. (Once the port
  // itself is in question, entries on other paths are not reported again.)
  const port = s.port !== undefined ? (bridgePaths.has(s.port) ? s.port : null) : bridgePaths.size === 1 ? [...bridgePaths][0] : null;
  config.sources.forEach((x, i) => {
    if (x.type === 'bridge' && port !== null && x.path !== port) add('config', `sources[${i}] talks to another MCU (${x.path}); a scenario has one board`);
    if (x.type === 'serial') add('config', `sources[${i}] reads the serial port ${x.path}; a HIL scenario talks to the emulated board only (use a replay or synthetic source)`);
  });
  config.actuators.forEach((x, i) => {
    if (x.type === 'bridge' && port !== null && x.path !== port) add('config', `actuators[${i}] drives another MCU (${x.path}); a scenario has one board`);
    if (x.type === 'serial') add('config', `actuators[${i}] writes the serial port ${x.path}; a HIL scenario talks to the emulated board only`);
  });
  const pipelines = new Map(config.pipelines.map((p) => [p.name, new Set(p.rules.map((r) => r.name))] as const));
  const rules = new Set(config.pipelines.flatMap((p) => p.rules.map((r) => r.name)));
  const actuators = new Set(config.actuators.map((a) => a.name));
  const checkMatcher = (m: Matcher | undefined, at: string) => {
    if (!m) return;
    const d = m.decision;
    if (d?.pipeline !== undefined && !pipelines.has(d.pipeline)) add(`${at}.decision.pipeline`, `the config has no pipeline "${d.pipeline}" (it has ${[...pipelines.keys()].join(', ')})`);
    if (d?.rule !== undefined) {
      const inPipe = d.pipeline !== undefined ? pipelines.get(d.pipeline) : undefined;
      if (inPipe ? !inPipe.has(d.rule) : !rules.has(d.rule)) add(`${at}.decision.rule`, `no rule "${d.rule}"${d.pipeline ? ` in pipeline "${d.pipeline}"` : ' in the config'} (rules: ${[...(inPipe ?? rules)].join(', ') || 'none'})`);
    }
    const a = m.action;
    if (a?.actuator !== undefined && !actuators.has(a.actuator)) add(`${at}.action.actuator`, `the config has no actuator "${a.actuator}" (it has ${[...actuators].join(', ') || 'none'})`);
  };
  s.expect.forEach((e, i) => {
    const at = `expect[${i}]`;
    checkMatcher(e, at);
    checkMatcher(e.never, `${at}.never`);
    checkMatcher(e.always, `${at}.always`);
    if (e.after && typeof e.after !== 'string') checkMatcher(e.after, `${at}.after`);
    if (e.before && typeof e.before !== 'string') checkMatcher(e.before, `${at}.before`);
  });
  return issues;
}

/**
 * Reads, validates and cross-checks a scenario and the config it names (and loads the
 * recordings it replays). Throws ScenarioError listing every problem (of the scenario, or
 * else of the config); models are checked when the runtime is built (`runScenario`).
 */
export async function loadScenario(file: string): Promise<LoadedScenario> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory' : code === 'EACCES' ? 'permission denied' : asError(err).message;
    throw new ScenarioError([{ path: '', message: `cannot read ${file}: ${why}` }], file);
  }
  const scenario = parseScenarioText(text, file);
  const dir = path.dirname(abs);
  const configFile = path.resolve(dir, scenario.config);
  let loaded;
  try {
    loaded = loadConfigFile(configFile);
  } catch (err) {
    if (err instanceof ConfigError) {
      // A missing file is the scenario's `config` key being wrong; anything else is the config's.
      if (err.issues.length === 1 && err.issues[0].path === '' && /cannot read/.test(err.issues[0].message)) {
        throw new ScenarioError([{ path: 'config', message: `${err.issues[0].message} (relative to the scenario's directory)` }], file);
      }
      throw new ScenarioError(err.issues, configFile);
    }
    throw err;
  }
  const issues = configIssues(scenario, loaded.config);
  let firmware: string | undefined;
  if (scenario.firmware !== undefined) {
    firmware = path.resolve(dir, scenario.firmware);
    if (!fs.existsSync(firmware)) issues.push({ path: 'firmware', message: `${firmware}: file not found (relative paths resolve against the scenario's directory)` });
  }
  const recordings = new Map<number, Map<number, Recording>>();
  for (const [i, inp] of scenario.inputs.entries()) {
    for (const [k, seg] of inp.wave.entries()) {
      if (!seg.csv) continue;
      try {
        const rec = await loadRecording(seg.csv, dir);
        let m = recordings.get(i);
        if (!m) recordings.set(i, (m = new Map()));
        m.set(k, rec);
      } catch (err) {
        issues.push({ path: `inputs[${i}].wave[${k}].csv`, message: asError(err).message });
      }
    }
  }
  if (issues.length) throw new ScenarioError(issues, file);
  const bridgePaths = [...new Set([...loaded.config.sources, ...loaded.config.actuators].flatMap((x) => (x.type === 'bridge' ? [x.path] : [])))];
  return {
    file: abs,
    dir,
    name: scenario.name ?? path.basename(abs).replace(/(\.hil)?\.ya?ml$/i, ''),
    scenario,
    configFile: loaded.file,
    config: loaded.config,
    configDir: loaded.dir,
    port: scenario.port ?? bridgePaths[0],
    ...(firmware !== undefined ? { firmware } : {}),
    recordings,
  };
}

// ---------------------------------------------------------------- running

/** Options of `runScenario`. */
export interface RunScenarioOptions {
  /** Emulated seconds per wall second; overrides the scenario's `speed` (0.5..2). */
  speed?: number;
  /** Called with a line of progress (board started, link up, each named event). */
  progress?: (line: string) => void;
  /**
   * The clock of the runtime and of the feeding schedule (default: the system clock). The
   * board runs in real time, so this must advance in real time too; it is a slot for a
   * clock with other timer bookkeeping, not for a FakeClock.
   */
  clock?: Clock;
  /** Log level of the runtime's logger (its lines are kept in the result; default 'info'). */
  logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';
}

/** The outcome of one scenario run. */
export interface ScenarioResult {
  name: string;
  /** Absolute path of the scenario file. */
  file: string;
  configFile: string;
  /** The firmware ELF that ran. */
  firmware: string;
  /** True when the scenario ran and every assertion passed. */
  ok: boolean;
  /** Why the scenario could not run to its end (board or runtime failure), if it could not. */
  error?: string;
  /** Wall-clock start, ISO 8601. */
  startedAt: string;
  /** Wall time of the whole run including setup, ms. */
  wallMs: number;
  speed: number;
  assertions: AssertionResult[];
  timeline: Timeline;
  /** Things worth knowing: clamped input values, emulation lag, overridden config settings. */
  notes: string[];
  /** The runtime's last log lines (JSON), for diagnosis. */
  log: string[];
  /** Harness counters at the end (bytes, drops, lag). */
  boardStats?: Record<string, number>;
}

/** Wall time in epoch ms with sub-millisecond resolution (comparable to the harness's host_ms). */
function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

/** A logger whose JSON lines are kept in memory (the last `max`). */
function memoryLogger(level: string, max = 200): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = pino(
    { level, base: { app: 'keel-hil' }, timestamp: pino.stdTimeFunctions.isoTime },
    {
      write(s: string) {
        lines.push(s.trimEnd());
        if (lines.length > max) lines.shift();
      },
    },
  );
  return { logger, lines };
}

function emptyTimeline(durationMs: number): Timeline {
  return { durationMs, events: {}, outputs: [], decisions: [], actions: [], faults: [], safe: [], link: [], inputs: [] };
}

function inputTarget(inp: ScenarioInput): InputTarget {
  if (inp.digital !== undefined) return { kind: 'digital', index: inp.digital, unit: 'level', max: 1 };
  return { kind: 'analog', index: inp.analog!, unit: inp.unit === 'mv' ? 'mv' : 'counts', max: inp.unit === 'mv' ? VCC_MV : 1023 };
}

function inputLabel(inp: ScenarioInput): string {
  return inp.label ?? (inp.digital !== undefined ? `D${inp.digital}` : `A${inp.analog}`);
}

function boardCommand(t: InputTarget, v: number): string {
  if (t.kind === 'digital') return `digital ${t.index} ${v}`;
  return t.unit === 'mv' ? `analog_mv ${t.index} ${v}` : `analog ${t.index} ${v}`;
}

/**
 * Runs a scenario (a file path, or one loaded with `loadScenario`) on a fresh emulated board
 * and returns what happened and the verdict on every expectation. Throws ScenarioError for an
 * invalid scenario, config or model (nothing is left running); a failure while running (the
 * board crashed, the runtime could not start) is reported in `result.error`, not thrown.
 */
export async function runScenario(scenarioOrFile: string | LoadedScenario, opts: RunScenarioOptions = {}): Promise<ScenarioResult> {
  const ls = typeof scenarioOrFile === 'string' ? await loadScenario(scenarioOrFile) : scenarioOrFile;
  const s = ls.scenario;
  const speed = opts.speed ?? s.speed;
  if (!(speed >= 0.5 && speed <= 2)) throw new RangeError(`opts.speed must be 0.5..2, got ${speed}`);
  const clock = opts.clock ?? new SystemClock();
  const progress = opts.progress ?? (() => undefined);
  const startedWall = wallNow();
  const timeline = emptyTimeline(s.durationMs);
  const notes: string[] = [];
  const { logger, lines: log } = memoryLogger(opts.logLevel ?? 'info');
  const firmware = ls.firmware ?? hilPaths().elf;
  const result: ScenarioResult = {
    name: ls.name,
    file: ls.file,
    configFile: ls.configFile,
    firmware,
    ok: false,
    startedAt: new Date(startedWall).toISOString(),
    wallMs: 0,
    speed,
    assertions: [],
    timeline,
    notes,
    log,
  };

  // Each run gets its own copy of the config: the bridge paths are rewritten per board.
  const config = structuredClone(ls.config);
  if (config.gpio.backend !== 'sim' && (config.sources.some((x) => x.type === 'gpio') || config.actuators.some((x) => x.type === 'gpio'))) {
    notes.push('gpio.backend set to sim: GPIO lines are simulated in a HIL run');
  }
  config.gpio.backend = 'sim';

  let board: Board | undefined;
  let runtime: Runtime | undefined;
  let t0 = NaN; // wall ms of scenario time 0
  const toScenario = (wall: number) => (wall - t0) * speed;
  const pending: Array<{ wall: number; push: (atMs: number) => void }> = [];
  /** Records an observation now (or, before time 0 is known, once it is). */
  const observe = (wall: number, push: (atMs: number) => void) => {
    if (Number.isNaN(t0)) pending.push({ wall, push });
    else push(toScenario(wall));
  };
  let feeder: Feeder | undefined;
  let lease: BridgeLease | undefined;
  let invalid: ScenarioError | undefined;
  try {
    board = await startBoard({ ...(ls.firmware ? { elf: ls.firmware } : {}), speed });
    progress(`board up: ${path.basename(firmware)} on ${board.ptyPath}`);
    const b = board;
    // The harness stamps outputs with CLOCK_REALTIME (host_ms); map that onto this process's
    // clock once, from the midpoint of a `time` round trip.
    const h0 = wallNow();
    const tm = await b.time();
    const harnessSkew = tm.hostMs - (h0 + wallNow()) / 2;
    const pushOutput = (e: OutputEvent) =>
      observe(e.hostMs - harnessSkew, (atMs) => timeline.outputs.push({ atMs, pin: e.pin, kind: e.kind, value: e.value, ...(e.duty !== undefined ? { duty: e.duty } : {}) }));
    for (const e of b.events) pushOutput(e);
    b.on('output', pushOutput);
    b.on('fault', (m: string) => notes.push(`simavr fault: ${m}`));

    let baudRate = 115200;
    for (const x of [...config.sources, ...config.actuators]) {
      if (x.type !== 'bridge' || x.path !== ls.port) continue;
      x.path = b.ptyPath;
      baudRate = x.baudRate;
    }
    const deps = createDriverDeps(config, clock);
    try {
      runtime = await Runtime.create(config, { ...deps, clock, logger, baseDir: ls.configDir, noHttp: true });
    } catch (err) {
      if (err instanceof ModelError && err.issues.length) throw new ScenarioError(err.issues, ls.configFile);
      throw err;
    }
    const rt = runtime;
    rt.on('decision', (d) => observe(wallNow(), (atMs) => timeline.decisions.push({ atMs, pipeline: d.pipeline, rule: d.rule, state: d.state, value: d.value })));
    rt.on('action', (a) =>
      observe(wallNow(), (atMs) => timeline.actions.push({ atMs, actuator: a.actuator, value: a.value, origin: a.origin, result: a.result, ...(a.error ? { error: a.error } : {}) })),
    );
    rt.on('fault', (f) => observe(wallNow(), (atMs) => timeline.faults.push({ atMs, kind: f.kind, detail: f.detail, ...(f.pipeline ? { pipeline: f.pipeline } : {}) })));
    rt.on('safe', (f) => {
      if (f.kind === 'requested') return; // the shutdown after the end
      observe(wallNow(), (atMs) => timeline.safe.push({ atMs, on: true, detail: `${f.kind}: ${f.detail}` }));
    });
    rt.on('recovered', () => observe(wallNow(), (atMs) => timeline.safe.push({ atMs, on: false })));

    const waves = s.inputs.map((inp, i) => new InputWave(inputLabel(inp), inputTarget(inp), inp.wave as WaveSegment[], ls.recordings.get(i) ?? new Map(), inp.seed, inp.everyMs));
    feeder = new Feeder(
      b,
      waves,
      s.board,
      speed,
      clock,
      (name, wall) => {
        observe(wall, (atMs) => (timeline.events[name] = atMs));
        progress(`event ${name}`);
      },
      (input, value, wall) => observe(wall, (atMs) => timeline.inputs.push({ atMs, input, value })),
    );
    // The inputs read their time-0 values from power-up on, before the host says HELLO.
    await feeder.prime();

    // A lease of our own on the board's session (shared with the runtime's bridge entries
    // through the hub, as they share it with each other) to watch the link from its start.
    observe(wallNow(), (atMs) => timeline.link.push({ atMs, on: false }));
    lease = await deps.bridges!.acquire({ path: b.ptyPath, baudRate });
    const session = lease.session;
    session.on('up', () => observe(wallNow(), (atMs) => timeline.link.push({ atMs, on: true })));
    session.on('down', (err) => observe(wallNow(), (atMs) => timeline.link.push({ atMs, on: false, detail: err.message })));
    observe(wallNow(), (atMs) => timeline.safe.push({ atMs, on: false }));
    await rt.start();
    if (session.state !== 'established') {
      let timer: TimerHandle | undefined;
      const up = await new Promise<boolean>((resolve) => {
        session.once('up', () => resolve(true));
        timer = clock.setTimeout('hil:link-up', () => resolve(false), s.startTimeoutMs);
      });
      clock.cancel(timer);
      if (!up) {
        const st = session.stats();
        throw new Error(
          `the bridge link to the emulated board did not come up within ${s.startTimeoutMs} ms (state ${st.state}, ${st.framesIn} frames in, ${st.framesOut} out, ${st.crc + st.cobs} damaged); does the firmware speak protocol v1 at ${baudRate} baud?`,
        );
      }
    }
    // Time 0: the runtime runs and the link is up. Place what was observed before.
    t0 = wallNow();
    for (const p of pending.splice(0)) p.push(toScenario(p.wall));
    progress('link up: time 0');
    await feeder.run(t0, s.durationMs);
    if (feeder.failure) throw feeder.failure;
    const stats = await b.stats().catch(() => undefined);
    if (stats) {
      result.boardStats = stats;
      if ((stats.max_behind_ms ?? 0) > 50) notes.push(`the emulation fell behind wall time by up to ${stats.max_behind_ms} ms (a slow or busy host): times near that margin are unreliable`);
    }
    for (const w of waves) if (w.clamped) notes.push(`${w.label}: ${w.clamped} values clamped to 0..${w.target.max}`);
  } catch (err) {
    if (err instanceof ScenarioError) invalid = err;
    else result.error = asError(err).message;
  } finally {
    feeder?.stop();
    if (Number.isNaN(t0)) t0 = wallNow();
    for (const p of pending.splice(0)) p.push(toScenario(p.wall));
    if (runtime) await runtime.stop(invalid ? 'scenario invalid' : 'scenario done').catch(() => undefined);
    await lease?.release().catch(() => undefined);
    if (board) {
      const code = await board.stop().catch(() => null);
      const reason = board.exitReason;
      if (reason && reason !== 'quit' && reason !== 'eof' && !result.error && !invalid) result.error = `the emulated board stopped: ${reason} (exit code ${code})`;
    }
  }
  if (invalid) throw invalid;
  // Only what happened up to the end counts (the shutdown drives the safe state after it);
  // observations arrive slightly out of order across sources, so sort each list by time.
  for (const list of [timeline.outputs, timeline.decisions, timeline.actions, timeline.faults, timeline.safe, timeline.link, timeline.inputs] as Array<Array<{ atMs: number }>>) {
    const keep = list.filter((x) => x.atMs <= s.durationMs).sort((a, b) => a.atMs - b.atMs);
    list.length = 0;
    list.push(...keep);
  }
  result.wallMs = wallNow() - startedWall;
  result.assertions = result.error === undefined ? evaluateAll(s.expect as Expectation[], timeline) : [];
  result.ok = result.error === undefined && result.assertions.every((a) => a.passed);
  return result;
}

/**
 * Plays the inputs and board steps on the emulated board on schedule: each input's value is
 * sent at every segment start, every `everyMs` while its shape varies, and whenever a pin
 * it follows changes; unchanged values are not re-sent. Timer: `hil:feed`.
 */
class Feeder {
  /** The first failed board command, if any (the run stops there). */
  failure: Error | undefined;
  private readonly last: Array<number | undefined>;
  private readonly seg: number[];
  private readonly steps: ScenarioFile['board'];
  private nextStep = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;
  private t0 = 0;
  private durationMs = 0;
  private finish: (() => void) | undefined;
  private readonly pins = new Map<number, number>();
  private readonly onOutput: (e: OutputEvent) => void;

  constructor(
    private readonly board: Board,
    private readonly waves: InputWave[],
    steps: ScenarioFile['board'],
    private readonly speed: number,
    private readonly clock: Clock,
    private readonly onEvent: (name: string, wall: number) => void,
    private readonly onInput: (input: string, value: number, wall: number) => void,
  ) {
    this.last = waves.map(() => undefined);
    this.seg = waves.map(() => -1);
    this.steps = [...steps].sort((a, b) => a.atMs - b.atMs);
    for (const e of board.events) this.pins.set(e.pin, e.value);
    const followed = new Set(waves.flatMap((w) => w.followedPins()));
    this.onOutput = (e) => {
      this.pins.set(e.pin, e.value);
      if (!followed.has(e.pin) || this.stopped || !this.t0) return;
      // The plant reacts now, not at the next tick.
      this.update(this.now(), (w) => w.followedPins().includes(e.pin));
    };
    board.on('output', this.onOutput);
  }

  private now(): number {
    return (wallNow() - this.t0) * this.speed;
  }

  private readPin = (pin: number): number | undefined => this.pins.get(pin);

  /** Sends every input's value at time 0, before the runtime starts. */
  async prime(): Promise<void> {
    const sends: Promise<unknown>[] = [];
    this.waves.forEach((w, i) => {
      const v = w.sample(0, this.readPin);
      if (v === undefined) return;
      this.last[i] = v;
      sends.push(this.board.command(boardCommand(w.target, v)));
    });
    await Promise.all(sends);
  }

  /** Plays the schedule from wall time `t0` for `durationMs` scenario ms; resolves at the end. */
  run(t0: number, durationMs: number): Promise<void> {
    this.t0 = t0;
    this.durationMs = durationMs;
    return new Promise((resolve) => {
      this.finish = resolve;
      this.tick();
    });
  }

  /** Stops the schedule (idempotent). */
  stop(): void {
    this.stopped = true;
    this.clock.cancel(this.timer);
    this.timer = undefined;
    this.board.off('output', this.onOutput);
    this.finish?.();
    this.finish = undefined;
  }

  private fail(err: unknown): void {
    if (this.stopped) return;
    this.failure ??= asError(err);
    this.stop();
  }

  private send(line: string): void {
    this.board.command(line).catch((err) => this.fail(err));
  }

  /** Sends the inputs selected by `which` whose value at `t` differs from the last sent. */
  private update(t: number, which: (w: InputWave) => boolean = () => true): void {
    this.waves.forEach((w, i) => {
      if (!which(w)) return;
      const segNow = w.segmentAt(t);
      const started = segNow !== this.seg[i];
      this.seg[i] = segNow;
      const v = w.sample(t, this.readPin);
      const wall = wallNow();
      if (started && segNow >= 0 && w.segments[segNow].event) this.onEvent(w.segments[segNow].event!, wall);
      if (v === undefined || (v === this.last[i] && !started)) return;
      this.last[i] = v;
      this.send(boardCommand(w.target, v));
      this.onInput(w.label, v, wall);
    });
  }

  private tick(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const t = this.now();
    while (this.nextStep < this.steps.length && this.steps[this.nextStep].atMs <= t) {
      const st = this.steps[this.nextStep++];
      const line = st.do === 'link-down' ? 'link 0' : st.do === 'link-up' ? 'link 1' : 'reset';
      this.send(line);
      this.onEvent(st.event ?? `${st.do}@${st.atMs}`, wallNow());
    }
    this.update(t);
    if (t >= this.durationMs) {
      this.stop();
      return;
    }
    // Next due: a segment start, a board step, a tick of a varying input, or the end.
    let next = this.durationMs;
    if (this.nextStep < this.steps.length) next = Math.min(next, this.steps[this.nextStep].atMs);
    this.waves.forEach((w, i) => {
      const k = this.seg[i];
      next = Math.min(next, w.nextStart(k));
      if (w.varies(k, t)) next = Math.min(next, (Math.floor(t / w.everyMs) + 1) * w.everyMs);
    });
    const waitWall = Math.max(0, (next - this.now()) / this.speed);
    this.timer = this.clock.setTimeout('hil:feed', () => this.tick(), waitWall);
  }
}
