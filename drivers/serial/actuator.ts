/**
 * An actuator on a serial line: each action writes the configured template, rendered with
 * the value and the action context, to a supervised port (text, or bytes given as hex).
 *
 * Template language (small on purpose):
 * - `{name}` is replaced by a value: `value` (the written value), `time` (the context's
 *   `time` if given, else the clock's epoch milliseconds), or any context key (`decision`,
 *   `pipeline`, model outputs such as `score`, ...). Context keys may be dotted (`out.score`)
 *   to reach into nested objects.
 * - `{name:spec}` formats a number: `.2f` (fixed decimals), `d` (rounded integer), `x`/`X`
 *   (hex integer), each with an optional zero-padded width: `{value:02x}`, `{n:5d}`, `{v:08.3f}`.
 * - `{{` and `}}` are literal braces (handy for JSON templates).
 * - An unknown name, or a number format applied to a non-number, renders as `?` and counts a
 *   warning (`stats().warnings`, last one in `stats().lastWarning`): an action still goes out,
 *   and the mistake is visible. A malformed template or spec is a ConfigError at `open()`.
 * - Substituted text never contains control characters (CR, LF, ...): they are replaced by
 *   `?` (and counted as a warning), so a context string cannot inject extra commands into a
 *   line protocol. Only the template's own literal text can contain line breaks.
 *
 * `encoding: hex` sends the rendered text as bytes: hex digit pairs, spaces ignored
 * (`A5 {value:02x} 0D`). Text that is not whole hex bytes is a DriverError and nothing is written.
 *
 * The port is supervised like a source's: `open()` resolves even when the device is absent
 * (it keeps reopening with backoff), and `write()`/`safe()` reject with a retryable
 * DriverError while the port is down rather than queueing.
 */
import { EventEmitter } from 'node:events';
import { ConfigError, DriverError, type ConfigIssue } from '../../runtime/errors.ts';
import type { Clock } from '../../runtime/clock.ts';
import type { SerialActuatorConfig } from '../../runtime/config/schema.ts';
import type { ActionContext, Actuator, ActuatorValue } from '../types.ts';
import { linkIssues, type SerialOpener, linkOptions } from './link.ts';
import { SupervisedPort, reconnectIssues } from './supervisor.ts';

/** Longest rendered action, bytes; longer renders are refused (a runaway context value). */
export const MAX_RENDERED_BYTES = 64 * 1024;

/** A number format from a `{name:spec}` placeholder. */
interface NumberSpec {
  zero: boolean;
  width: number;
  precision: number; // -1: none
  kind: 'f' | 'd' | 'x' | 'X';
}

type Part = string | { name: string; spec: NumberSpec | null; raw: string };

/** The result of rendering: text plus the problems met on the way. */
export interface Rendered {
  text: string;
  /** One entry per placeholder that rendered as `?` or had characters replaced. */
  warnings: string[];
}

const SPEC_RE = /^(0?)(\d{0,2})(?:\.(\d{1,2}))?([fdxX])$/;
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*$/;

/** A parsed output template; see the top of this file for its language. */
export class OutputTemplate {
  readonly source: string;
  private readonly parts: Part[];

  /** Parses `source`. Throws ConfigError (path `template`, or `path` if given) when malformed. */
  constructor(source: string, path = 'template') {
    if (typeof source !== 'string') throw new TypeError(`${path} must be a string`);
    this.source = source;
    const issues: ConfigIssue[] = [];
    this.parts = parseTemplate(source, (message) => issues.push({ path, message }));
    if (issues.length > 0) throw new ConfigError(issues, 'serial actuator template');
  }

  /** Renders with `value` and `context`; `now` supplies `{time}` when the context has none. */
  render(value: ActuatorValue, context: ActionContext, now: () => number): Rendered {
    const warnings: string[] = [];
    let text = '';
    for (const part of this.parts) {
      if (typeof part === 'string') {
        text += part;
        continue;
      }
      const v = lookup(part.name, value, context, now);
      if (v === undefined) {
        warnings.push(`unknown placeholder {${part.raw}}`);
        text += '?';
        continue;
      }
      if (part.spec !== null) {
        const n = typeof v === 'boolean' ? (v ? 1 : 0) : typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
        if (!Number.isFinite(n)) {
          warnings.push(`{${part.raw}}: ${JSON.stringify(v)} is not a finite number`);
          text += '?';
          continue;
        }
        text += formatNumber(n, part.spec);
        continue;
      }
      const s = typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : safeJson(v);
      const clean = s.replace(/[\u0000-\u001f\u007f]/g, '?');
      if (clean !== s) warnings.push(`{${part.raw}}: control characters replaced by ?`);
      text += clean;
    }
    return { text, warnings };
  }
}

function parseTemplate(src: string, problem: (m: string) => void): Part[] {
  const parts: Part[] = [];
  let lit = '';
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === '{' && src[i + 1] === '{') {
      lit += '{';
      i += 2;
    } else if (c === '}' && src[i + 1] === '}') {
      lit += '}';
      i += 2;
    } else if (c === '}') {
      problem(`unmatched "}" at position ${i}; write "}}" for a literal brace`);
      i++;
    } else if (c === '{') {
      const close = src.indexOf('}', i + 1);
      if (close === -1) {
        problem(`unclosed "{" at position ${i}; write "{{" for a literal brace`);
        break;
      }
      const raw = src.slice(i + 1, close);
      const colon = raw.indexOf(':');
      const name = colon === -1 ? raw : raw.slice(0, colon);
      let spec: NumberSpec | null = null;
      if (!NAME_RE.test(name)) problem(`bad placeholder {${raw}}: ${JSON.stringify(name)} is not a name`);
      if (colon !== -1) {
        const m = SPEC_RE.exec(raw.slice(colon + 1));
        if (!m) problem(`bad format in {${raw}}: expected .Nf, d, x or X with an optional zero-padded width (e.g. .2f, 02x)`);
        else {
          spec = { zero: m[1] === '0', width: m[2] ? Number(m[2]) : 0, precision: m[3] !== undefined ? Number(m[3]) : -1, kind: m[4] as NumberSpec['kind'] };
          if (spec.precision > 20) problem(`bad format in {${raw}}: at most 20 decimals`);
          if (spec.precision >= 0 && spec.kind !== 'f') problem(`bad format in {${raw}}: a precision (.N) needs the f kind`);
        }
      }
      if (lit) parts.push(lit);
      lit = '';
      parts.push({ name, spec, raw });
      i = close + 1;
    } else {
      lit += c;
      i++;
    }
  }
  if (lit) parts.push(lit);
  return parts;
}

function lookup(name: string, value: ActuatorValue, context: ActionContext, now: () => number): unknown {
  if (name === 'value') return value;
  if (Object.hasOwn(context, name)) return context[name];
  if (name === 'time') return now();
  if (!name.includes('.')) return undefined;
  let cur: unknown = context;
  for (const key of name.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

function formatNumber(n: number, spec: NumberSpec): string {
  const r = spec.kind === 'f' ? n : Math.round(n);
  const abs = Math.abs(r);
  let body = spec.kind === 'f' ? abs.toFixed(spec.precision >= 0 ? spec.precision : 6) : spec.kind === 'd' ? String(abs) : abs.toString(16);
  if (spec.kind === 'X') body = body.toUpperCase();
  // No "-0.00": a value that rounds to zero has no sign.
  const sign = r < 0 && /[1-9a-fA-F]/.test(body) ? '-' : '';
  if (spec.zero) return sign + body.padStart(spec.width - sign.length, '0');
  return (sign + body).padStart(spec.width, ' ');
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Decodes hex digit pairs (spaces and tabs between bytes are ignored) into bytes.
 * Returns null when the text is not whole hex bytes.
 */
export function decodeHex(text: string): Buffer | null {
  const compact = text.replace(/[ \t]/g, '');
  if (compact.length === 0 || compact.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(compact)) return null;
  return Buffer.from(compact, 'hex');
}

/** What a serial actuator needs from outside. */
export interface SerialActuatorDeps {
  opener: SerialOpener;
  clock: Clock;
  /** Uniform [0, 1) source for backoff jitter (default Math.random). */
  random?: () => number;
}

/** Config fields a serial actuator reads; the schema's type, with defaults optional. */
export type SerialActuatorOptions = Omit<SerialActuatorConfig, 'dataBits' | 'parity' | 'stopBits' | 'rtscts' | 'baudRate' | 'template' | 'encoding'> &
  Partial<Pick<SerialActuatorConfig, 'dataBits' | 'parity' | 'stopBits' | 'rtscts' | 'baudRate' | 'template' | 'encoding'>>;

/** Counters of a serial actuator. */
export interface SerialActuatorStats {
  /** Actions written to the port. */
  writes: number;
  /** Writes refused or failed (port down, bad hex, ...). */
  failures: number;
  /** Template problems met while rendering (unknown placeholder, non-number for a format...). */
  warnings: number;
  lastWarning: string | null;
  reconnects: number;
  connected: boolean;
}

/** Events of a serial actuator (beyond the `Actuator` interface). */
export interface SerialActuatorEvents {
  /** The port went down or could not be opened; it is being reopened. */
  fault: [DriverError];
  /** The port is open again after a fault. */
  recovered: [];
  /** A template problem while rendering (the action was still written, with `?`). */
  warning: [string];
}

/** Problems with a serial actuator config, paths relative to the actuator. */
export function serialActuatorIssues(config: SerialActuatorOptions): ConfigIssue[] {
  if (config === null || typeof config !== 'object') return [{ path: '', message: 'expected a serial actuator object' }];
  const issues: ConfigIssue[] = [];
  if (typeof config.name !== 'string' || config.name.length === 0) issues.push({ path: 'name', message: 'expected an actuator name' });
  issues.push(...linkIssues({ ...config, baudRate: config.baudRate ?? 115200 }));
  for (const [key, src] of [['template', config.template ?? '{value}\n'], ['safe', config.safe]] as const) {
    if (src === undefined) continue;
    if (typeof src !== 'string') {
      issues.push({ path: key, message: 'expected a string' });
      continue;
    }
    try {
      new OutputTemplate(src, key);
    } catch (err) {
      if (err instanceof ConfigError) issues.push(...err.issues);
      else throw err;
    }
  }
  const enc = config.encoding ?? 'text';
  if (enc !== 'text' && enc !== 'hex') issues.push({ path: 'encoding', message: `expected text or hex, got ${JSON.stringify(enc)}` });
  issues.push(...reconnectIssues(config.reconnect).map((i) => ({ path: i.path ? `reconnect.${i.path}` : 'reconnect', message: i.message })));
  return issues;
}

/** An `Actuator` that writes rendered templates to a serial port. */
export class SerialActuator extends EventEmitter<SerialActuatorEvents> implements Actuator {
  readonly name: string;
  private readonly config: SerialActuatorOptions;
  private readonly deps: SerialActuatorDeps;
  private template: OutputTemplate | null = null;
  private safeTemplate: OutputTemplate | null = null;
  private port: SupervisedPort | null = null;
  private last: ActuatorValue | undefined;
  private closed = false;
  private counters = { writes: 0, failures: 0, warnings: 0, lastWarning: null as string | null };

  constructor(config: SerialActuatorOptions, deps: SerialActuatorDeps) {
    super();
    if (config === null || typeof config !== 'object') throw new TypeError('config must be a serial actuator config object');
    if (!deps || !deps.opener || !deps.clock) throw new TypeError('deps must provide { opener, clock }');
    this.name = String(config.name);
    this.config = config;
    this.deps = deps;
  }

  /**
   * Validates the config (rejects with ConfigError listing every problem) and starts the
   * supervised port; resolves after the first open attempt even if the device is absent.
   */
  async open(): Promise<void> {
    if (this.port !== null) return;
    if (this.closed) throw new DriverError('KEEL_E_ACTUATOR', `serial actuator ${this.name} was closed; create a new one`);
    const issues = serialActuatorIssues(this.config);
    if (issues.length > 0) throw new ConfigError(issues, `serial actuator "${this.name}"`);
    const c = this.config;
    this.template = new OutputTemplate(c.template ?? '{value}\n', 'template');
    this.safeTemplate = c.safe !== undefined ? new OutputTemplate(c.safe, 'safe') : null;
    this.port = new SupervisedPort({
      name: this.name,
      link: linkOptions(c),
      opener: this.deps.opener,
      clock: this.deps.clock,
      reconnect: c.reconnect,
      random: this.deps.random,
      hooks: {
        connected: (reopened) => {
          if (reopened) this.quietEmit('recovered');
        },
        fault: (err) => this.quietEmit('fault', err),
      },
    });
    await this.port.start();
  }

  /** Renders the template with `value` and `context` and writes it. */
  async write(value: ActuatorValue, context: ActionContext = {}): Promise<void> {
    if (typeof value !== 'number' && typeof value !== 'boolean' && typeof value !== 'string') {
      throw new TypeError(`value must be a number, boolean or string, got ${typeof value}`);
    }
    if (context === null || typeof context !== 'object') throw new TypeError('context must be an object');
    await this.send(this.requireOpen().template, value, context);
    this.last = value;
  }

  /** Writes the configured `safe` text (rendered with value "safe"); does nothing if none is configured. */
  async safe(): Promise<void> {
    const { safe } = this.requireOpen();
    if (safe === null) return;
    await this.send(safe, 'safe', {});
    this.last = 'safe';
  }

  /** The last value written successfully. */
  current(): ActuatorValue | undefined {
    return this.last;
  }

  /** Closes the port and stops reopening it. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const port = this.port;
    if (port) await port.stop();
  }

  /** Counters and state. */
  stats(): SerialActuatorStats {
    const p = this.port?.stats();
    return { ...this.counters, reconnects: p?.reconnects ?? 0, connected: p?.connected ?? false };
  }

  private requireOpen(): { template: OutputTemplate; safe: OutputTemplate | null; port: SupervisedPort } {
    if (this.closed) throw new DriverError('KEEL_E_ACTUATOR', `serial actuator ${this.name} is closed`);
    if (this.port === null || this.template === null) throw new DriverError('KEEL_E_ACTUATOR', `serial actuator ${this.name} is not open; call open() first`);
    return { template: this.template, safe: this.safeTemplate, port: this.port };
  }

  private async send(template: OutputTemplate, value: ActuatorValue, context: ActionContext): Promise<void> {
    const { port } = this.requireOpen();
    const { text, warnings } = template.render(value, context, () => this.deps.clock.now());
    for (const w of warnings) {
      this.counters.warnings++;
      this.counters.lastWarning = w;
      this.quietEmit('warning', `serial actuator ${this.name}: ${w}`);
    }
    let bytes: Buffer;
    if ((this.config.encoding ?? 'text') === 'hex') {
      const decoded = decodeHex(text);
      if (decoded === null) {
        this.counters.failures++;
        const shown = text.length > 80 ? `${text.slice(0, 80)}...` : text;
        throw new DriverError('KEEL_E_ACTUATOR', `serial actuator ${this.name}: rendered ${JSON.stringify(shown)} is not hex bytes (pairs of 0-9/a-f); nothing was written`);
      }
      bytes = decoded;
    } else {
      bytes = Buffer.from(text, 'utf8');
    }
    if (bytes.length === 0) return; // an empty render is a successful no-op
    if (bytes.length > MAX_RENDERED_BYTES) {
      this.counters.failures++;
      throw new DriverError('KEEL_E_ACTUATOR', `serial actuator ${this.name}: rendered output is ${bytes.length} bytes, more than ${MAX_RENDERED_BYTES}; nothing was written`);
    }
    try {
      await port.write(bytes);
    } catch (err) {
      this.counters.failures++;
      throw err;
    }
    this.counters.writes++;
  }

  // Emits without letting a listener's exception reach the port's event handlers.
  private quietEmit<K extends keyof SerialActuatorEvents>(event: K, ...args: SerialActuatorEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch {
      // A throwing listener is its owner's bug; the actuator keeps working.
    }
  }
}
