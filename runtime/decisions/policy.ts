/**
 * Runs a user policy module (`export default function decide(input)`) in a worker thread.
 *
 * Why a worker: a policy that throws, returns garbage, loops forever or awaits forever must
 * not stall or crash the runtime. The host sends one call at a time, times it on the
 * injected clock, and on a timeout or crash terminates the worker (V8 stops even a
 * synchronous infinite loop) and starts a fresh one for later calls, with exponential
 * backoff while the failures continue. A worker isolates stalls and crashes, not trust: the
 * policy is local code the integrator installed, with the process's permissions.
 *
 * TypeScript policies: Node 20 does not give worker threads the tsx loader of the parent
 * (the worker inherits tsx's `--import` flag, but tsx registers its hooks in the main thread
 * only), so the worker starts without any inherited loader flags and registers tsx itself
 * (`tsx/esm/api` and `tsx/cjs/api` `register()`) when the module is `.ts`. That behaves the same whether the parent runs under tsx or plain node;
 * `.js`/`.mjs` policies need no tsx at all (`.mjs` is unambiguous ESM; `.js` follows the
 * nearest package.json `type`).
 *
 * Calls are not queued: a call while another is in flight, or while the worker restarts,
 * rejects at once (`busy` / `unavailable`), so a slow policy costs skipped decisions, never
 * a growing backlog.
 */
import { EventEmitter } from 'node:events';
import { realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import type { Clock, TimerHandle } from '../clock.ts';
import type { PolicyConfig } from '../config/schema.ts';
import { PolicyError, asError } from '../errors.ts';
import type { PolicyAction, PolicyInput, PolicyResult } from './policy-types.ts';

export type { PolicyAction, PolicyInput, PolicyResult } from './policy-types.ts';

/** Why a policy call or load failed. */
export type PolicyFailureReason =
  | 'load' // the module is missing, refused, does not load, or has no default function
  | 'timeout' // a call (or the load) took longer than its budget; the worker was terminated
  | 'crashed' // the worker died (process.exit, out of memory, uncaught async error)
  | 'threw' // decide() threw or rejected
  | 'invalid-result' // decide() returned something that is not a valid PolicyResult
  | 'busy' // a previous call is still running
  | 'unavailable' // the worker is restarting (possibly in backoff)
  | 'stopped'; // the host is not started, or stopped

/** A policy failure; `reason` tells callers what happened without parsing the message. */
export class PolicyCallError extends PolicyError {
  readonly reason: PolicyFailureReason;
  constructor(reason: PolicyFailureReason, message: string, options: { cause?: unknown } = {}) {
    super('KEEL_E_POLICY', message, { ...options, retryable: reason === 'busy' || reason === 'unavailable' || reason === 'timeout' || reason === 'crashed' });
    this.reason = reason;
  }
}

/** Restart backoff after consecutive failures that cost the worker (timeouts, crashes, load errors). */
export interface PolicyBackoff {
  /** Delay before the second consecutive restart, ms (the first restart is immediate). */
  initialMs: number;
  /** Longest delay, ms. */
  maxMs: number;
  factor: number;
}

/** Options of a `PolicyHost` besides the policy's own config. */
export interface PolicyHostOptions {
  /** Directory a relative `module` path resolves against (the config file's directory). */
  baseDir: string;
  /** Names of the configured actuators; results naming any other actuator are rejected. */
  actuators: ReadonlySet<string> | readonly string[];
  clock: Clock;
  /** Name used in timer names and messages (the pipeline). */
  name?: string;
  backoff?: Partial<PolicyBackoff>;
  /** Budget for starting the worker and loading the module, ms (TypeScript compiles here). */
  loadTimeoutMs?: number;
  /** V8 heap limits of the worker, so a leaking policy dies alone. */
  resourceLimits?: ResourceLimits;
}

/** Counters and state of a host, for metrics and the live view. */
export interface PolicyStats {
  state: 'idle' | 'starting' | 'ready' | 'busy' | 'backoff' | 'stopped';
  calls: number;
  ok: number;
  failed: Record<PolicyFailureReason, number>;
  /** Workers started after the first. */
  restarts: number;
  consecutiveFailures: number;
  /** Round trip of the last successful call, ms (message in, decide, message out). */
  lastMs: number;
  maxMs: number;
  meanMs: number;
}

/** Events of a host. */
export interface PolicyHostEvents {
  /** A failure, including ones in the background (a restarted worker that fails to load). */
  fault: [PolicyCallError];
  /** A worker loaded the module and accepts calls. */
  ready: [];
}

/** Every default of the host, in one place. */
const defaultOptions = {
  backoff: { initialMs: 250, maxMs: 10_000, factor: 2 } satisfies PolicyBackoff,
  /** tsx registration plus the first TypeScript compile take ~150 ms on a desktop, far more on a Pi. */
  loadTimeoutMs: 10_000,
  resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 16, stackSizeMb: 4 } satisfies ResourceLimits,
  timeoutMs: 50,
};

/** Limits of a valid result. */
const MAX_ACTIONS = 64;
const MAX_TEXT = 4096; // characters of a string action value or a note

const EXTENSIONS = new Set(['.ts', '.js', '.mjs']);
const WORKER_URL = new URL('./policy-worker.mjs', import.meta.url);

/**
 * Resolves a policy module path against `baseDir` and checks it is a local regular file with
 * a .ts/.js/.mjs extension. Returns the real absolute path. Throws PolicyError
 * (KEEL_E_POLICY, reason `load`) for URLs (http:, https:, data:, node:, file: ...), missing
 * files, directories, devices and other extensions.
 */
export function resolvePolicyModule(spec: string, baseDir: string): string {
  if (typeof spec !== 'string' || spec.trim() === '') throw new PolicyCallError('load', 'policy.module must be a non-empty file path');
  if (typeof baseDir !== 'string' || baseDir === '') throw new TypeError('baseDir must be a directory path');
  if (spec.includes('\0')) throw new PolicyCallError('load', 'policy.module contains a NUL byte');
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(spec)) {
    throw new PolicyCallError('load', `policy.module must be a local file path, not a URL or specifier: "${spec.slice(0, 200)}" (schemes such as http:, https:, data:, node: and file: are refused)`);
  }
  const abs = path.resolve(baseDir, spec);
  let real: string;
  try {
    real = realpathSync(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable (permission denied)' : `cannot be resolved (${code ?? asError(err).message})`;
    throw new PolicyCallError('load', `policy module ${abs} ${why} (from "${spec}" relative to ${baseDir})`, { cause: err });
  }
  const st = statSync(real);
  if (!st.isFile()) throw new PolicyCallError('load', `policy module ${real} is not a regular file`);
  const ext = path.extname(real);
  if (!EXTENSIONS.has(ext)) throw new PolicyCallError('load', `policy module ${real} must end in .ts, .js or .mjs (got "${ext || 'no extension'}")`);
  return real;
}

/**
 * Checks a value returned by a policy against the PolicyResult contract and returns a clean
 * copy. Throws PolicyCallError (`invalid-result`) listing every problem found.
 */
export function validatePolicyResult(value: unknown, actuators: ReadonlySet<string>): PolicyResult {
  const problems: string[] = [];
  const out: PolicyResult = {};
  if (!isPlainObject(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new PolicyCallError('invalid-result', `policy returned ${got}; expected an object like { actions: [...] } (return {} to do nothing)`);
  }
  for (const key of Object.keys(value)) if (key !== 'actions' && key !== 'note') problems.push(`${key}: unknown key (allowed: actions, note)`);
  const { actions, note } = value as { actions?: unknown; note?: unknown };
  if (note !== undefined) {
    if (typeof note !== 'string') problems.push(`note: expected a string, got ${typeName(note)}`);
    else if (note.length > MAX_TEXT) problems.push(`note: longer than ${MAX_TEXT} characters`);
    else out.note = note;
  }
  if (actions !== undefined) {
    if (!Array.isArray(actions)) problems.push(`actions: expected an array, got ${typeName(actions)}`);
    else if (actions.length > MAX_ACTIONS) problems.push(`actions: ${actions.length} actions, at most ${MAX_ACTIONS} allowed`);
    else {
      const list: PolicyAction[] = [];
      actions.forEach((a: unknown, i) => {
        const at = `actions[${i}]`;
        if (!isPlainObject(a)) return void problems.push(`${at}: expected { actuator, value }, got ${typeName(a)}`);
        for (const key of Object.keys(a)) if (key !== 'actuator' && key !== 'value') problems.push(`${at}.${key}: unknown key (allowed: actuator, value)`);
        const { actuator, value: v } = a as { actuator?: unknown; value?: unknown };
        if (typeof actuator !== 'string') problems.push(`${at}.actuator: expected a string, got ${typeName(actuator)}`);
        else if (!actuators.has(actuator)) problems.push(`${at}.actuator: no actuator named "${actuator.slice(0, 64)}"${hint([...actuators])}`);
        if (typeof v === 'number') {
          if (!Number.isFinite(v)) problems.push(`${at}.value: expected a finite number, got ${v}`);
        } else if (typeof v === 'string') {
          if (v.length > MAX_TEXT) problems.push(`${at}.value: string longer than ${MAX_TEXT} characters`);
        } else if (typeof v !== 'boolean') {
          problems.push(`${at}.value: expected a number, boolean or string, got ${typeName(v)}`);
        }
        list.push({ actuator: actuator as string, value: v as PolicyAction['value'] });
      });
      out.actions = list;
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, 10);
    const more = problems.length > shown.length ? `\n  ... and ${problems.length - shown.length} more` : '';
    throw new PolicyCallError('invalid-result', `policy returned an invalid result:\n${shown.map((p) => `  ${p}`).join('\n')}${more}`);
  }
  return out;
}

interface Call {
  id: number;
  t0: number;
  timer: TimerHandle;
  resolve: (r: PolicyResult) => void;
  reject: (e: PolicyCallError) => void;
}

interface Loading {
  resolve: () => void;
  reject: (e: PolicyCallError) => void;
  timer: TimerHandle;
}

type WorkerMessage =
  | { type: 'ready' }
  | { type: 'load-error'; message: string }
  | { type: 'result'; id: number; result: unknown }
  | { type: 'threw'; id: number; message: string }
  | { type: 'unclonable'; id: number; message: string };

/** One policy module in its own worker thread; see the module comment. */
export class PolicyHost extends EventEmitter<PolicyHostEvents> {
  readonly module: string;
  readonly timeoutMs: number;
  private readonly name: string;
  private readonly baseDir: string;
  private readonly actuators: ReadonlySet<string>;
  private readonly clock: Clock;
  private readonly backoff: PolicyBackoff;
  private readonly loadTimeoutMs: number;
  private readonly resourceLimits: ResourceLimits;
  private file = '';
  private worker: Worker | undefined;
  /** Generation of the current worker; events of older workers are ignored. */
  private gen = 0;
  private state: PolicyStats['state'] = 'idle';
  private loading: Loading | undefined;
  private call: Call | undefined;
  private nextId = 1;
  private restartTimer: TimerHandle | undefined;
  /** start() is loading the first worker: a failure is reported to it, not retried. */
  private starting = false;
  private readyWaiters: (() => void)[] = [];
  private counters = { calls: 0, ok: 0, restarts: 0, consecutiveFailures: 0, lastMs: 0, maxMs: 0, totalMs: 0 };
  private failed: Record<PolicyFailureReason, number> = { load: 0, timeout: 0, crashed: 0, threw: 0, 'invalid-result': 0, busy: 0, unavailable: 0, stopped: 0 };

  /** `policy` is the pipeline's `policy` config (`module`, `timeoutMs`). */
  constructor(policy: Pick<PolicyConfig, 'module'> & Partial<Pick<PolicyConfig, 'timeoutMs'>>, options: PolicyHostOptions) {
    super();
    if (!policy || typeof policy.module !== 'string') throw new TypeError('policy.module must be a string');
    const timeoutMs = policy.timeoutMs ?? defaultOptions.timeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`policy.timeoutMs must be a positive number of ms, got ${timeoutMs}`);
    if (!options || typeof options.clock?.setTimeout !== 'function') throw new TypeError('options.clock must be a Clock');
    if (typeof options.baseDir !== 'string') throw new TypeError('options.baseDir must be a directory path');
    this.module = policy.module;
    this.timeoutMs = timeoutMs;
    this.name = options.name ?? 'policy';
    this.baseDir = options.baseDir;
    this.actuators = new Set(options.actuators);
    this.clock = options.clock;
    this.backoff = { ...defaultOptions.backoff, ...options.backoff };
    if (!(this.backoff.initialMs >= 0 && this.backoff.maxMs >= this.backoff.initialMs && this.backoff.factor >= 1)) {
      throw new RangeError('options.backoff needs initialMs >= 0, maxMs >= initialMs and factor >= 1');
    }
    this.loadTimeoutMs = options.loadTimeoutMs ?? defaultOptions.loadTimeoutMs;
    this.resourceLimits = options.resourceLimits ?? defaultOptions.resourceLimits;
  }

  /**
   * Checks the module path, starts the worker and waits until the module has loaded.
   * Rejects with PolicyCallError (`load` or `timeout`) when it cannot, and then stays
   * stopped: a policy that does not load at startup is a configuration error.
   */
  async start(): Promise<void> {
    if (this.state !== 'idle' && this.state !== 'stopped') return this.whenReady();
    this.file = resolvePolicyModule(this.module, this.baseDir);
    this.starting = true;
    try {
      await this.spawn();
    } catch (err) {
      await this.stop();
      throw err;
    } finally {
      this.starting = false;
    }
  }

  /**
   * Resolves when a worker is ready for calls (after start or a restart); at once when the
   * host is not running (the next call then rejects with `stopped`).
   */
  whenReady(): Promise<void> {
    if (this.state === 'ready' || this.state === 'busy' || this.state === 'idle' || this.state === 'stopped') return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * Calls the policy. Resolves with the validated result; rejects with PolicyCallError:
   * `threw`, `invalid-result`, `timeout` (the worker is then restarted), `crashed`, `busy`,
   * `unavailable` or `stopped`. Never throws synchronously for a runtime condition.
   */
  decide(input: Omit<PolicyInput, 'outputs'> & { outputs: Record<string, ArrayLike<number>> }): Promise<PolicyResult> {
    if (!input || typeof input !== 'object') return Promise.reject(new TypeError('input must be a PolicyInput object'));
    this.counters.calls++;
    if (this.state === 'idle' || this.state === 'stopped') return this.refuse('stopped', 'the policy host is not running');
    if (this.call) return this.refuse('busy', `the previous call to ${this.name} is still running`);
    if (this.state !== 'ready' || !this.worker) {
      const n = this.counters.consecutiveFailures;
      return this.refuse('unavailable', `the ${this.name} worker is restarting${n > 1 ? ` (backoff after ${n} consecutive failures)` : ''}`);
    }
    const message = { type: 'decide', id: this.nextId++, input: plainInput(input) };
    const gen = this.gen;
    return new Promise<PolicyResult>((resolve, reject) => {
      const timer = this.clock.setTimeout(
        `policy:${this.name}:call`,
        () => this.fail(gen, new PolicyCallError('timeout', `${this.name} took longer than ${this.timeoutMs} ms; worker terminated and restarted`)),
        this.timeoutMs,
      );
      this.call = { id: message.id, t0: this.clock.monotonic(), timer, resolve, reject };
      this.state = 'busy';
      try {
        this.worker!.postMessage(message);
      } catch (err) {
        // plainInput() makes this unreachable in practice; never leave a call hanging on it.
        this.clock.cancel(timer);
        this.call = undefined;
        this.state = 'ready';
        reject(new TypeError(`input cannot be sent to the policy worker: ${asError(err).message}`));
      }
    });
  }

  /** Counters and state. */
  stats(): PolicyStats {
    const c = this.counters;
    return {
      state: this.state,
      calls: c.calls,
      ok: c.ok,
      failed: { ...this.failed },
      restarts: c.restarts,
      consecutiveFailures: c.consecutiveFailures,
      lastMs: c.lastMs,
      maxMs: c.maxMs,
      meanMs: c.ok ? c.totalMs / c.ok : 0,
    };
  }

  /** Terminates the worker; a call in flight rejects with `stopped`. Idempotent. */
  async stop(): Promise<void> {
    this.state = 'stopped';
    this.clock.cancel(this.restartTimer);
    this.restartTimer = undefined;
    const w = this.worker;
    this.worker = undefined;
    this.gen++;
    const err = new PolicyCallError('stopped', `${this.name} stopped`);
    this.settleLoading(err);
    this.settleCall(err);
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const r of waiters) r(); // whoever waits for ready gets `stopped` on their next call
    if (w) await w.terminate();
  }

  // ------------------------------------------------------------------ internals

  private refuse(reason: PolicyFailureReason, message: string): Promise<never> {
    this.failed[reason]++;
    return Promise.reject(new PolicyCallError(reason, message));
  }

  private spawn(): Promise<void> {
    const gen = ++this.gen;
    this.state = 'starting';
    const typescript = path.extname(this.file) === '.ts';
    let worker: Worker;
    try {
      worker = new Worker(WORKER_URL, {
        workerData: { moduleUrl: pathToFileURL(this.file).href, typescript, tsxApi: typescript ? tsxApiUrls() : null },
        // The worker gets its loaders from us only (see the module comment).
        execArgv: workerExecArgv(process.execArgv),
        resourceLimits: this.resourceLimits,
        name: `keel-policy-${this.name}`,
      });
    } catch (err) {
      const e = new PolicyCallError('load', `cannot start the ${this.name} worker: ${asError(err).message}`, { cause: err });
      this.fail(gen, e);
      return Promise.reject(e);
    }
    this.worker = worker;
    worker.on('message', (m: unknown) => this.onMessage(gen, m));
    worker.on('error', (err) => this.fail(gen, new PolicyCallError(this.state === 'starting' ? 'load' : 'crashed', `${this.name} worker failed: ${asError(err).message}`, { cause: err })));
    worker.on('exit', (code) => this.fail(gen, new PolicyCallError(this.state === 'starting' ? 'load' : 'crashed', `${this.name} worker exited (code ${code})`)));
    return new Promise<void>((resolve, reject) => {
      const timer = this.clock.setTimeout(
        `policy:${this.name}:load`,
        () => this.fail(gen, new PolicyCallError('timeout', `${this.name} did not load within ${this.loadTimeoutMs} ms; worker terminated`)),
        this.loadTimeoutMs,
      );
      this.loading = { resolve, reject, timer };
    });
  }

  private onMessage(gen: number, raw: unknown): void {
    if (gen !== this.gen || !raw || typeof raw !== 'object') return;
    const m = raw as WorkerMessage;
    switch (m.type) {
      case 'ready': {
        if (!this.loading) return;
        this.clock.cancel(this.loading.timer);
        const { resolve } = this.loading;
        this.loading = undefined;
        this.state = 'ready';
        resolve();
        const waiters = this.readyWaiters;
        this.readyWaiters = [];
        for (const r of waiters) r();
        this.emit('ready');
        return;
      }
      case 'load-error':
        this.fail(gen, new PolicyCallError('load', `policy module ${this.file} failed to load: ${String(m.message)}`));
        return;
      case 'result':
      case 'threw':
      case 'unclonable': {
        const call = this.call;
        if (!call || m.id !== call.id) return; // not ours (a policy posting on parentPort itself)
        this.clock.cancel(call.timer);
        this.call = undefined;
        this.state = 'ready';
        if (m.type === 'threw') return this.reject(call, new PolicyCallError('threw', `${this.name} threw: ${String(m.message)}`));
        if (m.type === 'unclonable') return this.reject(call, new PolicyCallError('invalid-result', `${this.name} returned a value that cannot leave the worker: ${String(m.message)}`));
        let result: PolicyResult;
        try {
          result = validatePolicyResult(m.result, this.actuators);
        } catch (err) {
          return this.reject(call, err as PolicyCallError);
        }
        const ms = this.clock.monotonic() - call.t0;
        const c = this.counters;
        c.ok++;
        c.consecutiveFailures = 0;
        c.lastMs = ms;
        c.totalMs += ms;
        if (ms > c.maxMs) c.maxMs = ms;
        call.resolve(result);
        return;
      }
      default:
        return;
    }
  }

  private reject(call: Call, err: PolicyCallError): void {
    this.failed[err.reason]++;
    call.reject(err);
    this.emit('fault', err);
  }

  /**
   * The current worker is lost (timeout, crash, load error): terminate it, fail whatever
   * waited on it, and schedule a fresh worker unless the host is stopping or never started.
   */
  private fail(gen: number, err: PolicyCallError): void {
    if (gen !== this.gen) return;
    const w = this.worker;
    this.worker = undefined;
    this.gen++;
    if (w) void w.terminate().catch(() => undefined);
    this.failed[err.reason]++;
    this.settleLoading(err);
    this.settleCall(err);
    this.counters.consecutiveFailures++;
    this.emit('fault', err);
    if (this.state === 'stopped' || this.starting) return; // start() reports it and stops
    this.state = 'backoff';
    const k = this.counters.consecutiveFailures;
    const delay = k <= 1 ? 0 : Math.min(this.backoff.maxMs, this.backoff.initialMs * this.backoff.factor ** (k - 2));
    const restart = () => {
      this.restartTimer = undefined;
      if (this.state !== 'backoff') return;
      this.counters.restarts++;
      this.spawn().catch(() => undefined); // failures arrive through fail() again
    };
    if (delay === 0) restart();
    else this.restartTimer = this.clock.setTimeout(`policy:${this.name}:restart`, restart, delay);
  }

  private settleLoading(err: PolicyCallError): void {
    const l = this.loading;
    if (!l) return;
    this.loading = undefined;
    this.clock.cancel(l.timer);
    l.reject(err);
  }

  private settleCall(err: PolicyCallError): void {
    const c = this.call;
    if (!c) return;
    this.call = undefined;
    this.clock.cancel(c.timer);
    c.reject(err);
  }
}

/** The input as plain data: typed arrays become number arrays, nothing else crosses. */
function plainInput(input: Omit<PolicyInput, 'outputs'> & { outputs: Record<string, ArrayLike<number>> }): PolicyInput {
  const outputs: Record<string, number[]> = {};
  for (const [k, v] of Object.entries(input.outputs ?? {})) outputs[k] = Array.from(v ?? [], Number);
  const sensors: Record<string, number> = {};
  for (const [k, v] of Object.entries(input.sensors ?? {})) if (typeof v === 'number') sensors[k] = v;
  const states: Record<string, boolean> = {};
  for (const [k, v] of Object.entries(input.states ?? {})) states[k] = v === true;
  return { pipeline: String(input.pipeline), t: Number(input.t), outputs, sensors, states };
}

/**
 * Parent flags the worker keeps. Everything else is dropped: loader flags (tsx's --require
 * and --import; the worker registers its own), and flags a Worker rejects outright
 * (ERR_WORKER_INVALID_EXEC_ARGV) or that only make sense for the main script.
 */
const WORKER_FLAGS = new Set([
  '--enable-source-maps',
  '--experimental-strip-types',
  '--no-experimental-strip-types',
  '--experimental-transform-types',
  '--experimental-detect-module',
  '--no-experimental-detect-module',
  '--experimental-require-module',
  '--no-experimental-require-module',
  '--no-warnings',
  '--no-deprecation',
]);

/** The parent's execArgv reduced to WORKER_FLAGS. */
function workerExecArgv(argv: readonly string[]): string[] {
  return argv.filter((a) => WORKER_FLAGS.has(a));
}

let tsxApi: { esm: string; cjs: string } | null | undefined;
/** URLs of tsx's register APIs (ESM and CommonJS hooks), or null when tsx is not installed. */
function tsxApiUrls(): { esm: string; cjs: string } | null {
  if (tsxApi === undefined) {
    try {
      tsxApi = { esm: import.meta.resolve('tsx/esm/api'), cjs: import.meta.resolve('tsx/cjs/api') };
    } catch {
      tsxApi = null;
    }
  }
  return tsxApi;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return (Object.getPrototypeOf(v)?.constructor?.name as string | undefined) ?? 'object';
  return typeof v;
}

function hint(known: string[]): string {
  return known.length ? ` (known: ${known.slice(0, 20).join(', ')})` : ' (no actuators are configured)';
}
