/**
 * Loads and validates a configuration file: YAML (JSON accepted), checked against the one
 * schema, then against the cross-references no schema can express (a pipeline's source
 * must exist, an action's actuator must exist, ...). Every problem is reported at once,
 * each with its path, and nothing is started by this module.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { parseDocument, YAMLError } from 'yaml';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { serialActuatorIssues, serialSourceIssues } from '../../drivers/serial/index.ts';
import { bridgeIssues } from '../../firmware-bridge/config.ts';
import { isFftSize } from '../pipeline/transforms.ts';
import { publishedSchema, type KeelConfig, type SourceConfig } from './schema.ts';
import { syncConfigIssues } from '../sync/config.ts';

const ajv = new Ajv({ allErrors: true, useDefaults: true, discriminator: true, strict: false, coerceTypes: false, verbose: true });
const validateSchema = ajv.compile<KeelConfig>(publishedSchema());

/** A loaded configuration and where it came from (relative paths resolve against `dir`). */
export interface LoadedConfig {
  config: KeelConfig;
  file: string;
  dir: string;
}

/** Reads, parses and validates `file`. Throws ConfigError listing every problem. */
export function loadConfigFile(file: string): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'file not found' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory' : e.message;
    throw new ConfigError([{ path: '', message: `cannot read ${file}: ${why}` }], file);
  }
  const config = parseConfigText(text, file);
  return { config, file: path.resolve(file), dir: path.dirname(path.resolve(file)) };
}

/** Parses YAML or JSON text and validates it; `name` is used in messages only. */
export function parseConfigText(text: string, name = 'config'): KeelConfig {
  let raw: unknown;
  if (name.endsWith('.json')) {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ConfigError([{ path: '', message: `not valid JSON: ${jsonErrorWhere(text, (err as Error).message)}` }], name);
    }
  } else {
    const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
    if (doc.errors.length > 0) {
      throw new ConfigError(
        doc.errors.map((e: YAMLError) => ({ path: '', message: `YAML ${e.code}: ${e.message.split('\n')[0]}` + linePos(e) })),
        name,
      );
    }
    raw = doc.toJS({ maxAliasCount: 100 });
  }
  return validateConfig(raw, name);
}

/** Node's JSON.parse message on one line, with the line and column of the position it names. */
function jsonErrorWhere(text: string, message: string): string {
  const flat = message.replace(/\r?\n/g, '\\n');
  const short = flat.length > 200 ? `${flat.slice(0, 200)}...` : flat;
  const m = /position (\d+)/.exec(message);
  if (!m) return short;
  const before = text.slice(0, Number(m[1]));
  return `${short} (line ${before.split('\n').length}, column ${Number(m[1]) - before.lastIndexOf('\n')})`;
}

function linePos(e: YAMLError): string {
  const p = e.linePos?.[0];
  return p && !e.message.includes(`line ${p.line}`) ? ` (line ${p.line}, column ${p.col})` : '';
}

/** Validates an already-parsed object, applying defaults in place. Throws ConfigError. */
export function validateConfig(raw: unknown, name = 'config'): KeelConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError([{ path: '', message: 'expected a mapping (object) at the top level' }], name);
  }
  const ok = validateSchema(raw);
  if (!ok) throw new ConfigError(schemaIssues(validateSchema.errors ?? []), name);
  const config = raw as KeelConfig;
  const issues = crossCheck(config);
  if (issues.length > 0) throw new ConfigError(issues, name);
  return config;
}

/** `/pipelines/0/model` -> `pipelines[0].model` */
export function toPath(pointer: string): string {
  let out = '';
  for (const part of pointer.split('/').slice(1)) {
    const key = part.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(key)) out += `[${key}]`;
    else out += out ? `.${key}` : key;
  }
  return out;
}

function join(base: string, key: string): string {
  return base ? `${base}.${key}` : key;
}

function schemaIssues(errors: ErrorObject[]): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    const at = toPath(e.instancePath);
    let issue: ConfigIssue;
    switch (e.keyword) {
      case 'additionalProperties':
        issue = { path: join(at, String(e.params.additionalProperty)), message: 'unknown key' };
        break;
      case 'required':
        issue = { path: join(at, String(e.params.missingProperty)), message: 'required' };
        break;
      case 'type':
        issue = { path: at, message: `expected ${e.params.type}` };
        break;
      case 'const':
        issue = { path: at, message: `expected ${JSON.stringify(e.params.allowedValue)}` };
        break;
      case 'discriminator': {
        const variants = discriminatorValues(e);
        issue =
          e.params.error === 'mapping'
            ? { path: join(at, String(e.params.tag)), message: `expected one of ${variants}` }
            : { path: join(at, String(e.params.tag)), message: `required, one of ${variants}` };
        break;
      }
      case 'anyOf': {
        // Unions of literals (enums): say which values are allowed.
        const allowed = literalValues(e.parentSchema);
        issue = { path: at, message: allowed ? `expected one of ${allowed}` : 'does not match any allowed form' };
        break;
      }
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        issue = { path: at, message: `expected a number ${e.params.comparison} ${e.params.limit}, got ${JSON.stringify(e.data)}` };
        break;
      case 'minLength':
        issue = { path: at, message: e.params.limit === 1 ? 'must not be empty' : `expected at least ${e.params.limit} characters` };
        break;
      case 'maxLength':
        issue = { path: at, message: `expected at most ${e.params.limit} characters` };
        break;
      case 'minItems':
        issue = { path: at, message: `expected at least ${e.params.limit} item${e.params.limit === 1 ? '' : 's'}` };
        break;
      case 'pattern':
        issue = { path: at, message: `must match ${e.params.pattern}` + (e.parentSchema?.description ? ` (${e.parentSchema.description})` : '') };
        break;
      default:
        issue = { path: at, message: e.message ?? e.keyword };
    }
    // Members of a literal union each report `const`; the anyOf line says it better.
    if (e.keyword === 'const' && /\/anyOf\/\d+\/const$/.test(e.schemaPath)) continue;
    const key = `${issue.path}\0${issue.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      issues.push(issue);
    }
  }
  return issues;
}

function literalValues(schema: unknown): string | undefined {
  const any = (schema as { anyOf?: Array<{ const?: unknown }> } | undefined)?.anyOf;
  if (!any || !any.every((s) => 'const' in s)) return undefined;
  return any.map((s) => JSON.stringify(s.const)).join(', ');
}

function discriminatorValues(e: ErrorObject): string {
  const oneOf = (e.parentSchema as { oneOf?: Array<{ properties?: Record<string, { const?: unknown }> }> } | undefined)?.oneOf ?? [];
  return oneOf.map((s) => JSON.stringify(s.properties?.[String(e.params.tag)]?.const)).join(', ');
}

/** Channel names a source is known to deliver, or undefined when only runtime can tell. */
export function sourceChannels(s: SourceConfig): string[] | undefined {
  switch (s.type) {
    case 'synthetic':
      return Object.keys(s.channels);
    case 'gpio':
      return [s.channel ?? s.name];
    case 'serial':
      switch (s.format.type) {
        case 'csv':
          return s.format.columns;
        case 'binary':
          return s.format.fields.map((f) => f.name);
        default:
          return s.format.fields;
      }
    case 'replay':
      return s.channels;
    case 'bridge':
      return s.channels.map((ch) => ch.name);
  }
}

function duplicates(names: string[]): Set<string> {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const n of names) (seen.has(n) ? dup : seen).add(n);
  return dup;
}

/** Checks that no JSON Schema can express. Returns every issue found. */
function crossCheck(c: KeelConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const add = (p: string, message: string) => issues.push({ path: p, message });

  const dupSources = duplicates(c.sources.map((s) => s.name));
  c.sources.forEach((s, i) => {
    if (dupSources.has(s.name)) add(`sources[${i}].name`, `duplicate source name "${s.name}"`);
    if (s.type === 'serial') for (const x of serialSourceIssues(s)) add(join(`sources[${i}]`, x.path), x.message);
    if (s.type === 'gpio') checkLine(s.line, `sources[${i}].line`, add);
  });

  const dupAct = duplicates(c.actuators.map((a) => a.name));
  c.actuators.forEach((a, i) => {
    if (dupAct.has(a.name)) add(`actuators[${i}].name`, `duplicate actuator name "${a.name}"`);
    if (a.type === 'gpio') checkLine(a.line, `actuators[${i}].line`, add);
    if (a.type === 'serial') for (const x of serialActuatorIssues(a)) add(join(`actuators[${i}]`, x.path), x.message);
  });
  // Two outputs, or an output and an input, on one GPIO line cannot both work.
  const lines = new Map<string, string>();
  const claim = (line: { chip: string; offset?: number; name?: string }, where: string) => {
    const key = `${line.chip}/${line.offset ?? line.name}`;
    const other = lines.get(key);
    if (other) add(where, `GPIO line ${key} is already used by ${other}`);
    else lines.set(key, where);
  };
  c.sources.forEach((s, i) => s.type === 'gpio' && claim(s.line, `sources[${i}].line`));
  c.actuators.forEach((a, i) => a.type === 'gpio' && claim(a.line, `actuators[${i}].line`));
  // Firmware bridge entries: each one's own checks, and agreement among those sharing a port.
  issues.push(...bridgeIssues(c));

  const actuators = new Set(c.actuators.map((a) => a.name));
  const sources = new Map(c.sources.map((s) => [s.name, s] as const));
  const checkActions = (list: { actuator: string }[], at: string) =>
    list.forEach((a, k) => {
      if (!actuators.has(a.actuator)) add(`${at}[${k}].actuator`, `no actuator named "${a.actuator}"${hint(a.actuator, [...actuators])}`);
    });
  checkActions(c.safety.safeState, 'safety.safeState');

  const dupPipes = duplicates(c.pipelines.map((p) => p.name));
  c.pipelines.forEach((p, i) => {
    const at = `pipelines[${i}]`;
    if (dupPipes.has(p.name)) add(`${at}.name`, `duplicate pipeline name "${p.name}"`);
    const src = sources.get(p.source);
    if (!src) add(`${at}.source`, `no source named "${p.source}"${hint(p.source, [...sources.keys()])}`);
    const known = src ? sourceChannels(src) : undefined;
    if (known) {
      p.window.channels.forEach((ch, k) => {
        if (!known.includes(ch)) add(`${at}.window.channels[${k}]`, `source "${p.source}" has no channel "${ch}" (it has ${known.join(', ')})`);
      });
    }
    duplicates(p.window.channels).forEach((d) => add(`${at}.window.channels`, `duplicate channel "${d}"`));
    // Length along the time axis after each transform, to check the FFT's constraint.
    let len = p.window.size;
    p.transforms.forEach((t, k) => {
      if (t.type === 'fft') {
        if (!isFftSize(len)) add(`${at}.transforms[${k}]`, `fft needs a power-of-two window size >= 4, got ${len}`);
        len = len / 2 + 1 - (t.dropDc ? 1 : 0);
      }
      if (t.type === 'normalize') {
        if ((t.mean === undefined) !== (t.std === undefined)) add(`${at}.transforms[${k}]`, 'give both mean and std, or neither (per-window z-score)');
        for (const key of ['mean', 'std'] as const) {
          const v = t[key];
          if (v && v.length !== 1 && v.length !== p.window.channels.length) {
            add(`${at}.transforms[${k}].${key}`, `expected 1 or ${p.window.channels.length} values (one per channel), got ${v.length}`);
          }
        }
      }
    });
    const m = p.model;
    if (!(m.input in m.inputs)) add(`${at}.model.inputs`, `must describe the window input "${m.input}"`);
    const fed = m.inputs[m.input];
    if (fed) {
      const elements = p.window.channels.length * len;
      const fixed = fed.shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
      const dynamic = fed.shape.filter((d) => d === -1).length;
      if (dynamic > 1) add(`${at}.model.inputs.${m.input}.shape`, 'at most one dynamic (-1) dimension can be inferred from the window');
      else if (dynamic === 0 && fixed !== elements) {
        add(`${at}.model.inputs.${m.input}.shape`, `[${fed.shape.join(', ')}] holds ${fixed} values but the window gives ${elements} (${p.window.channels.length} channel${p.window.channels.length === 1 ? '' : 's'} x ${len})`);
      } else if (dynamic === 1 && (fixed === 0 || elements % fixed !== 0)) {
        add(`${at}.model.inputs.${m.input}.shape`, `[${fed.shape.join(', ')}] cannot hold the window's ${elements} values`);
      }
    }
    for (const [name, spec] of Object.entries(m.inputs)) {
      if (name === m.input) {
        if (spec.value !== undefined) add(`${at}.model.inputs.${name}.value`, 'the window input is fed from the window; it cannot have a constant value');
        continue;
      }
      if ((m.state ?? []).some((s) => s.input === name)) {
        add(`${at}.model.inputs.${name}`, `"${name}" is bound in model.state; describe it there only`);
      } else if (spec.value === undefined) {
        add(`${at}.model.inputs.${name}.value`, `input "${name}" is neither the window input nor a state input: give it a constant value`);
      } else if (Array.isArray(spec.value)) {
        if (spec.shape.includes(-1)) add(`${at}.model.inputs.${name}.shape`, 'a constant input needs a fixed shape');
        const n = spec.shape.reduce((a, b) => a * b, 1);
        if (spec.value.length !== n) add(`${at}.model.inputs.${name}.value`, `expected ${n} values for shape [${spec.shape.join(', ')}], got ${spec.value.length}`);
      } else if (spec.shape.includes(-1)) {
        add(`${at}.model.inputs.${name}.shape`, 'a constant input needs a fixed shape');
      }
    }
    if (fed && fed.shape.length === 0) add(`${at}.model.inputs.${m.input}.shape`, 'the window input cannot be a scalar');
    (m.state ?? []).forEach((s, k) => {
      if (s.input === m.input) add(`${at}.model.state[${k}].input`, 'the window input cannot also be a state input');
    });
    p.rules.forEach((r, k) => {
      const w = r.when;
      const rat = `${at}.rules[${k}]`;
      if ((w.output === undefined) === (w.sensor === undefined)) add(`${rat}.when`, 'give exactly one of output or sensor');
      const threshold = w.above !== undefined || w.below !== undefined;
      const klass = w.labels !== undefined || w.is !== undefined;
      if (threshold === klass) add(`${rat}.when`, 'give a threshold (above and/or below) or a class test (labels and is), not both or neither');
      if (klass && (w.labels === undefined || w.is === undefined)) add(`${rat}.when`, 'a class test needs both labels and is');
      if (klass && w.sensor !== undefined) add(`${rat}.when`, 'class tests apply to model outputs, not sensors');
      if (w.labels && w.is) w.is.forEach((l, j) => !w.labels!.includes(l) && add(`${rat}.when.is[${j}]`, `"${l}" is not one of the labels`));
      if (w.above !== undefined && w.below !== undefined && w.above >= w.below) {
        add(`${rat}.when`, `above (${w.above}) must be less than below (${w.below}) for a band`);
      }
      if (w.sensor) {
        const [sname, ch] = w.sensor.split('.');
        const s = sources.get(sname);
        if (!s) add(`${rat}.when.sensor`, `no source named "${sname}"`);
        else {
          const chans = sourceChannels(s);
          if (chans && !chans.includes(ch)) add(`${rat}.when.sensor`, `source "${sname}" has no channel "${ch}"`);
        }
      }
      if (w.output && m.outputs && !m.outputs.includes(w.output)) add(`${rat}.when.output`, `"${w.output}" is not in model.outputs`);
      if (r.debounce && r.debounce.count === undefined && r.debounce.ms === undefined) add(`${rat}.debounce`, 'give count or ms');
      checkActions(r.onEnter, `${rat}.onEnter`);
      checkActions(r.onExit, `${rat}.onExit`);
    });
    duplicates(p.rules.map((r) => r.name)).forEach((d) => add(`${at}.rules`, `duplicate rule name "${d}"`));
  });
  if (c.sync) {
    // Sync sends the ledger: without one there is nothing to send and no key to sign with.
    if (!c.ledger) add('sync', 'needs a ledger section (sync sends the signed ledger, signed with the ledger key)');
    for (const x of syncConfigIssues(c.sync)) add(join('sync', x.path), x.message);
  }
  return issues;
}

function checkLine(line: { offset?: number; name?: string }, at: string, add: (p: string, m: string) => void) {
  if ((line.offset === undefined) === (line.name === undefined)) add(at, 'give exactly one of offset or name');
}

function hint(name: string, known: string[]): string {
  return known.length ? ` (known: ${known.join(', ')})` : '';
}
