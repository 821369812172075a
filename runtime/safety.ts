/**
 * Safety: a `Watchdog` that turns missing data, slow or failing inference and external
 * problems into faults, and a `SafeState` controller that drives the configured safe state on
 * any fault, holds it (decision actions suppressed), and recovers by rule.
 *
 * Time comes from the injected clock; every timer is named (`watchdog:<pipeline>:silence`,
 * `watchdog:<pipeline>:inference`, `safety:recovery`, `safety:drive:<actuator>`), so tests
 * run on FakeClock in milliseconds.
 *
 * Faults and conditions: a fault is an event. Some faults also open a *condition* that
 * lasts until the watchdog sees the problem gone (`lasting: true`): sensor silence (until
 * the next sample), inference overrun (until a run finishes within the limit), inference
 * failure (until a run succeeds), and external faults reported as lasting (until
 * `resolve()`). The watchdog is healthy when no condition is open. One-shot faults (an
 * actuator write failed, a policy timed out) open no condition.
 */
import { EventEmitter } from 'node:events';
import type { ActionContext, Actuator } from '../drivers/types.ts';
import type { Clock, TimerHandle } from './clock.ts';
import type { ActionConfig, SafetyConfig } from './config/schema.ts';
import { DriverError, KeelError, asError } from './errors.ts';

/** Fault kinds the watchdog raises itself; external reporters add their own (e.g. `actuator-failure`). */
export type FaultKind = 'sensor-silence' | 'inference-overrun' | 'inference-failure' | (string & {});

/** One fault, as logged, counted and shown on /healthz. */
export interface Fault {
  kind: FaultKind;
  /** Pipeline concerned, when there is one. */
  pipeline?: string;
  /** Human-readable cause, with numbers and units. */
  detail: string;
  /** Epoch ms (from the clock) when it was raised. */
  t: number;
  /** True when it opened a condition that clears by itself (see the module comment). */
  lasting?: boolean;
}

// ------------------------------------------------------------------------------ Watchdog

/** Limits per pipeline; unset ones fall back to the runtime-wide `safety` values. */
export interface PipelineLimits {
  silenceMs?: number;
  overrunMs?: number;
}

/** Options of a `Watchdog`: the `safety` defaults and the per-pipeline overrides. */
export interface WatchdogOptions extends Pick<SafetyConfig, 'silenceMs' | 'overrunMs' | 'maxInferenceFailures'> {
  clock: Clock;
  /** Every pipeline the watchdog covers, by name. */
  pipelines: Record<string, PipelineLimits>;
}

/** Events of a `Watchdog`. */
export interface WatchdogEvents {
  fault: [Fault];
  /** A condition closed (the fault that opened it is passed). */
  cleared: [Fault];
  /** The last open condition closed. */
  healthy: [];
}

/** What the watchdog knows about one pipeline (for /healthz and the live view). */
export interface PipelineWatch {
  silenceMs: number;
  overrunMs: number;
  /** Milliseconds since the last sample (or since start), monotonic. */
  sinceSampleMs: number;
  /** An inference is running. */
  running: boolean;
  consecutiveFailures: number;
}

interface Watched {
  name: string;
  silenceMs: number;
  overrunMs: number;
  /** Monotonic ms of the last feed (or of start). */
  lastFeed: number;
  silenceTimer: TimerHandle | undefined;
  silent: boolean;
  inferenceTimer: TimerHandle | undefined;
  runningSince: number | undefined;
  /** The running inference already raised an overrun (hung), so its late finish does not again. */
  hung: boolean;
  failures: number;
}

/** Watches every pipeline's samples and inference runs; emits faults. */
export class Watchdog extends EventEmitter<WatchdogEvents> {
  private readonly clock: Clock;
  private readonly maxFailures: number;
  private readonly watched = new Map<string, Watched>();
  private readonly conditions = new Map<string, Fault>();
  private readonly counts: Record<string, number> = {};
  private started = false;

  /** Throws RangeError for a non-positive limit (naming it). */
  constructor(options: WatchdogOptions) {
    super();
    if (!options || typeof options.clock?.setTimeout !== 'function') throw new TypeError('options.clock must be a Clock');
    this.clock = options.clock;
    positive('silenceMs', options.silenceMs);
    positive('overrunMs', options.overrunMs);
    if (!Number.isInteger(options.maxInferenceFailures) || options.maxInferenceFailures < 1) {
      throw new RangeError(`maxInferenceFailures must be an integer >= 1, got ${options.maxInferenceFailures}`);
    }
    this.maxFailures = options.maxInferenceFailures;
    if (!options.pipelines || typeof options.pipelines !== 'object') throw new TypeError('options.pipelines must map pipeline names to limits');
    for (const [name, lim] of Object.entries(options.pipelines)) {
      const silenceMs = lim?.silenceMs ?? options.silenceMs;
      const overrunMs = lim?.overrunMs ?? options.overrunMs;
      positive(`pipelines.${name}.silenceMs`, silenceMs);
      positive(`pipelines.${name}.overrunMs`, overrunMs);
      this.watched.set(name, { name, silenceMs, overrunMs, lastFeed: 0, silenceTimer: undefined, silent: false, inferenceTimer: undefined, runningSince: undefined, hung: false, failures: 0 });
    }
  }

  /**
   * Starts watching for silence: a pipeline that gets no sample within its `silenceMs` from
   * now faults. `names` limits it to some pipelines (default: all). Idempotent per pipeline.
   */
  start(names?: readonly string[]): void {
    this.started = true;
    for (const name of names ?? [...this.watched.keys()]) {
      const w = this.get(name, 'names');
      w.lastFeed = this.clock.monotonic();
      if (!w.silenceTimer && !w.silent) this.armSilence(w, w.silenceMs);
    }
  }

  /** Cancels every timer; conditions stay as they are. Idempotent. */
  stop(): void {
    this.started = false;
    for (const w of this.watched.values()) {
      this.clock.cancel(w.silenceTimer);
      this.clock.cancel(w.inferenceTimer);
      w.silenceTimer = w.inferenceTimer = undefined;
    }
  }

  /**
   * A sample arrived for `pipeline`. O(1) and timer-free on the hot path: the silence timer
   * re-checks the last feed time when it fires instead of being re-armed per sample.
   */
  feed(pipeline: string): void {
    const w = this.get(pipeline, 'pipeline');
    w.lastFeed = this.clock.monotonic();
    if (w.silent) {
      w.silent = false;
      this.close(key('sensor-silence', pipeline));
      if (this.started) this.armSilence(w, w.silenceMs);
    }
  }

  /**
   * An inference run of `pipeline` started; a run still going after `overrunMs` faults.
   * The hang timer is armed once and re-armed only when it fires, so a run costs no timer
   * operations in steady state (inference runs every few ms; the limit is ~a second).
   */
  inferenceStarted(pipeline: string): void {
    const w = this.get(pipeline, 'pipeline');
    w.runningSince = this.clock.monotonic();
    w.hung = false;
    if (!w.inferenceTimer) this.armHang(w, w.overrunMs);
  }

  private armHang(w: Watched, delay: number): void {
    w.inferenceTimer = this.clock.setTimeout(`watchdog:${w.name}:inference`, () => {
      w.inferenceTimer = undefined;
      if (w.runningSince === undefined || w.hung) return; // idle: re-armed by the next start
      const elapsed = this.clock.monotonic() - w.runningSince;
      if (elapsed >= w.overrunMs) {
        w.hung = true;
        this.raise({ kind: 'inference-overrun', pipeline: w.name, detail: `inference still running after ${round(elapsed)} ms (limit ${w.overrunMs} ms)` }, true);
      } else {
        this.armHang(w, w.overrunMs - elapsed);
      }
    }, delay);
  }

  /**
   * An inference run succeeded after `ms` (measured by the caller; if omitted, since
   * `inferenceStarted`). Faults when it took longer than `overrunMs`; a run within the limit
   * closes an overrun condition, and any success closes an inference-failure condition.
   */
  inferenceFinished(pipeline: string, ms?: number): void {
    const w = this.get(pipeline, 'pipeline');
    const took = ms ?? (w.runningSince === undefined ? 0 : this.clock.monotonic() - w.runningSince);
    if (typeof took !== 'number' || !(took >= 0)) throw new RangeError(`ms must be a non-negative number, got ${String(ms)}`);
    w.runningSince = undefined;
    w.failures = 0;
    this.close(key('inference-failure', pipeline));
    if (took > w.overrunMs) {
      if (!w.hung) this.raise({ kind: 'inference-overrun', pipeline, detail: `inference took ${round(took)} ms (limit ${w.overrunMs} ms)` }, true);
    } else {
      this.close(key('inference-overrun', pipeline));
    }
    w.hung = false;
  }

  /** An inference run failed; `maxInferenceFailures` consecutive failures fault (once per streak). */
  inferenceFailed(pipeline: string, err: unknown): void {
    const w = this.get(pipeline, 'pipeline');
    w.runningSince = undefined;
    w.hung = false;
    w.failures++;
    if (w.failures === this.maxFailures) {
      this.raise({ kind: 'inference-failure', pipeline, detail: `${w.failures} consecutive inference failures; last: ${asError(err).message}` }, true);
    }
  }

  /**
   * Reports an external fault (a serial port vanished, an actuator failed, a policy timed
   * out). With `lasting`, it opens a condition that stays until `resolve(kind, pipeline)`.
   */
  report(kind: FaultKind, detail: string, options: { pipeline?: string; lasting?: boolean } = {}): Fault {
    if (typeof kind !== 'string' || kind === '') throw new TypeError('kind must be a non-empty string');
    return this.raise({ kind, detail: String(detail), ...(options.pipeline !== undefined ? { pipeline: options.pipeline } : {}) }, options.lasting === true);
  }

  /** Closes a lasting condition opened by `report`. Returns whether one was open. */
  resolve(kind: FaultKind, pipeline?: string): boolean {
    return this.close(key(kind, pipeline));
  }

  /** True when no condition is open. */
  healthy(): boolean {
    return this.conditions.size === 0;
  }

  /** The faults whose conditions are open. */
  active(): Fault[] {
    return [...this.conditions.values()];
  }

  /** Problems below the fault threshold (e.g. inference failures short of the limit). */
  warnings(): string[] {
    const out: string[] = [];
    for (const w of this.watched.values()) {
      if (w.failures > 0 && w.failures < this.maxFailures) out.push(`${w.name}: ${w.failures} consecutive inference failure(s) of ${this.maxFailures} allowed`);
    }
    return out;
  }

  /** Faults raised so far, by kind. */
  faultCounts(): Record<string, number> {
    return { ...this.counts };
  }

  /** Per-pipeline view. */
  pipelines(): Record<string, PipelineWatch> {
    const now = this.clock.monotonic();
    const out: Record<string, PipelineWatch> = {};
    for (const w of this.watched.values()) {
      out[w.name] = { silenceMs: w.silenceMs, overrunMs: w.overrunMs, sinceSampleMs: now - w.lastFeed, running: w.runningSince !== undefined, consecutiveFailures: w.failures };
    }
    return out;
  }

  private get(name: string, param: string): Watched {
    const w = this.watched.get(name);
    if (!w) throw new RangeError(`${param}: no pipeline named "${name}" is watched (known: ${[...this.watched.keys()].join(', ') || 'none'})`);
    return w;
  }

  private armSilence(w: Watched, delay: number): void {
    w.silenceTimer = this.clock.setTimeout(`watchdog:${w.name}:silence`, () => this.checkSilence(w), delay);
  }

  private checkSilence(w: Watched): void {
    w.silenceTimer = undefined;
    const quiet = this.clock.monotonic() - w.lastFeed;
    if (quiet < w.silenceMs) return this.armSilence(w, w.silenceMs - quiet);
    w.silent = true;
    this.raise({ kind: 'sensor-silence', pipeline: w.name, detail: `no samples for ${round(quiet)} ms (limit ${w.silenceMs} ms)` }, true);
  }

  private raise(f: Omit<Fault, 't' | 'lasting'>, lasting: boolean): Fault {
    const fault: Fault = { ...f, t: this.clock.now(), ...(lasting ? { lasting } : {}) };
    this.counts[fault.kind] = (this.counts[fault.kind] ?? 0) + 1;
    if (lasting) this.conditions.set(key(fault.kind, fault.pipeline), fault);
    this.emit('fault', fault);
    return fault;
  }

  private close(k: string): boolean {
    if (this.conditions.size === 0) return false; // the common case, kept cheap
    const f = this.conditions.get(k);
    if (!f) return false;
    this.conditions.delete(k);
    this.emit('cleared', f);
    if (this.conditions.size === 0) this.emit('healthy');
    return true;
  }
}

function key(kind: string, pipeline: string | undefined): string {
  return `${kind}\u0000${pipeline ?? ''}`;
}

function positive(name: string, v: unknown): void {
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new RangeError(`${name} must be a positive number of ms, got ${String(v)}`);
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

// ------------------------------------------------------------------------------ SafeState

/** One actuator step of a safe-state drive that failed. */
export interface DriveFailure {
  actuator: string;
  /** `safe`: the actuator's own safe(); `action`: a `safety.safeState` action (index `index`). */
  step: 'safe' | 'action';
  index?: number;
  error: string;
}

/**
 * One drive of the safe state. It is also a Fault (the cause): `kind` is the fault kind, or
 * `requested` for `driveSafe()` (shutdown, operator), so `safe` listeners can log it as one.
 */
export interface SafeDrive extends Fault {
  /** Duration of the drive, ms. */
  ms: number;
  /** Steps that failed or did not answer within `driveTimeoutMs`; the others ran regardless. */
  failures: DriveFailure[];
}

/** A return to normal operation. */
export interface Recovery {
  t: number;
  /** Time spent in the safe state, ms. */
  safeForMs: number;
  how: 'auto' | 'manual' | 'forced';
}

/** The answer to `clear()`. */
export interface ClearResult {
  recovered: boolean;
  /** Why not, when not. */
  reason?: string;
}

/** The safety part of /healthz. */
export interface SafetyHealth {
  status: 'ok' | 'degraded' | 'safe';
  /** Epoch ms since which the runtime is in (or out of) the safe state. */
  since: number;
  /** Open watchdog conditions, and while safe also this episode's one-shot faults. */
  activeFaults: Fault[];
  lastFault?: Fault;
  /** Faults seen by this controller, by kind. */
  faults: Record<string, number>;
  warnings: string[];
  recovery: 'auto' | 'manual';
  /** Actions refused because the safe state held. */
  suppressedActions: number;
  lastDrive?: { t: number; ms: number; failures: DriveFailure[] };
}

/** Events of a `SafeState`. */
export interface SafeStateEvents {
  /** A fault reached the controller (before the drive). */
  fault: [Fault];
  /** The safe state has been driven (emitted after every drive, with what failed). */
  safe: [SafeDrive];
  recovered: [Recovery];
}

/** What SafeState needs from the watchdog: its health, and word when it turns healthy. */
export type HealthSource = Pick<Watchdog, 'healthy' | 'active' | 'warnings' | 'on' | 'off'>;

/** Options of a `SafeState`. */
export interface SafeStateOptions extends Pick<SafetyConfig, 'safeState' | 'recovery' | 'healthyForMs'> {
  clock: Clock;
  /** Every actuator, by name. Read at each drive, so it may be filled after construction. */
  actuators: ReadonlyMap<string, Actuator>;
  watchdog: HealthSource;
  /** Longest wait for one actuator step of a drive, ms; a hung actuator must not hold up the rest. */
  driveTimeoutMs?: number;
}

const safeStateDefaults = {
  /** Serial writes at 9600 baud of a short line take ~10 ms; GPIO far less. 2 s is generous. */
  driveTimeoutMs: 2000,
  /** One-shot faults kept for /healthz per safe episode. */
  maxEpisodeFaults: 50,
};

/**
 * Drives the safe state on faults and decides when decision actions may run again.
 *
 * On a fault: the mode turns `safe` at once (so actions are suppressed from that instant),
 * then every actuator's own `safe()` runs (concurrently: they are independent devices, and
 * one that hangs must not delay the others), then the `safety.safeState` actions in order.
 * A step that throws or does not answer within `driveTimeoutMs` is reported in the `safe`
 * event and the drive goes on. Faults arriving during a drive are coalesced into one more
 * drive after it (safe values are idempotent by the Actuator contract).
 *
 * Recovery: `auto` leaves the safe state once no fault has arrived for `healthyForMs` and the
 * watchdog has been healthy for all of that time; `manual` waits for `clear()`.
 */
export class SafeState extends EventEmitter<SafeStateEvents> {
  private readonly clock: Clock;
  private readonly actuators: ReadonlyMap<string, Actuator>;
  private readonly actions: readonly ActionConfig[];
  private readonly recovery: 'auto' | 'manual';
  private readonly healthyForMs: number;
  private readonly watchdog: HealthSource;
  private readonly driveTimeoutMs: number;
  private mode: 'ok' | 'safe' = 'ok';
  private since: number;
  private safeAt = 0; // monotonic ms of entering the safe state
  /** Bumped on every entry into the safe state; guarded writes compare it. */
  private epoch = 0;
  private episode: Fault[] = [];
  private lastFault: Fault | undefined;
  private counts: Record<string, number> = {};
  private suppressed = 0;
  private recoveryTimer: TimerHandle | undefined;
  private running: Promise<SafeDrive> | undefined;
  private queued: { cause: Omit<SafeDrive, 'ms' | 'failures'>; promise: Promise<SafeDrive>; resolve: (d: SafeDrive) => void } | undefined;
  private lastDrive: SafeDrive | undefined;
  private readonly onHealthy = () => this.armRecovery();

  /** Throws TypeError/RangeError for bad options. */
  constructor(options: SafeStateOptions) {
    super();
    if (!options || typeof options.clock?.setTimeout !== 'function') throw new TypeError('options.clock must be a Clock');
    if (!(options.actuators instanceof Map)) throw new TypeError('options.actuators must be a Map of name to Actuator');
    if (!Array.isArray(options.safeState)) throw new TypeError('options.safeState must be an array of actions');
    if (options.recovery !== 'auto' && options.recovery !== 'manual') throw new RangeError(`options.recovery must be "auto" or "manual", got ${String(options.recovery)}`);
    positive('options.healthyForMs', options.healthyForMs);
    if (!options.watchdog || typeof options.watchdog.healthy !== 'function') throw new TypeError('options.watchdog must be a Watchdog');
    this.clock = options.clock;
    this.actuators = options.actuators;
    this.actions = options.safeState.map((a) => ({ ...a }));
    this.recovery = options.recovery;
    this.healthyForMs = options.healthyForMs;
    this.watchdog = options.watchdog;
    this.driveTimeoutMs = options.driveTimeoutMs ?? safeStateDefaults.driveTimeoutMs;
    positive('options.driveTimeoutMs', this.driveTimeoutMs);
    this.since = this.clock.now();
    this.watchdog.on('healthy', this.onHealthy);
  }

  /**
   * Handles a fault: enters the safe state (at once) and drives it. Resolves when the drive
   * that covers this fault has finished; never rejects (failures are in the result).
   */
  fault(f: Fault): Promise<SafeDrive> {
    if (!f || typeof f.kind !== 'string') return Promise.reject(new TypeError('f must be a Fault'));
    this.counts[f.kind] = (this.counts[f.kind] ?? 0) + 1;
    this.lastFault = f;
    this.enter();
    if (!f.lasting && this.episode.length < safeStateDefaults.maxEpisodeFaults) this.episode.push(f);
    this.emit('fault', f);
    // Any fault restarts the healthy window; a one-shot fault leaves the watchdog healthy.
    this.clock.cancel(this.recoveryTimer);
    this.recoveryTimer = undefined;
    this.armRecovery();
    return this.drive({ kind: f.kind, detail: f.detail, t: this.clock.now(), ...(f.pipeline !== undefined ? { pipeline: f.pipeline } : {}) });
  }

  /**
   * Drives the safe state without a fault (shutdown, an operator's request): enters the safe
   * state like a fault would, but counts no fault. Resolves with the drive's result.
   */
  driveSafe(reason: string): Promise<SafeDrive> {
    this.enter();
    return this.drive({ kind: 'requested', detail: String(reason), t: this.clock.now() });
  }

  /** True while the safe state holds: decision actions must not be applied. */
  isSafe(): boolean {
    return this.mode === 'safe';
  }

  /** Asks whether a decision action may be applied now; a refusal is counted. */
  mayApply(): boolean {
    if (this.mode === 'safe') {
      this.suppressed++;
      return false;
    }
    return true;
  }

  /**
   * Applies one decision action unless the safe state holds. If the safe state was entered
   * while the write was in flight, the actuator is driven safe again afterwards, so a late
   * write can never leave an actuator un-safe. Resolves `suppressed` or `applied`; rejects
   * with the write's error, or a KeelError (KEEL_E_ACTUATOR) for an unknown actuator.
   */
  async apply(action: ActionConfig, context?: ActionContext): Promise<'applied' | 'suppressed'> {
    if (!this.mayApply()) return 'suppressed';
    const a = this.actuators.get(action.actuator);
    if (!a) throw new KeelError('KEEL_E_ACTUATOR', `no actuator named "${action.actuator}"`);
    const epoch = this.epoch;
    try {
      await a.write(action.value, context);
    } finally {
      if (this.epoch !== epoch) await a.safe().catch(() => undefined); // reported by the drive itself if it keeps failing
    }
    return 'applied';
  }

  /**
   * Leaves the safe state on an operator's word (manual recovery; works in auto mode too).
   * Refused while a drive is running or while a watchdog condition is open, unless `force`.
   */
  clear(options: { force?: boolean } = {}): ClearResult {
    if (this.mode !== 'safe') return { recovered: false, reason: 'not in the safe state' };
    if (this.running) return { recovered: false, reason: 'the safe state is still being driven' };
    if (!this.watchdog.healthy() && !options.force) {
      return { recovered: false, reason: `faults still active: ${this.watchdog.active().map(describe).join('; ')}` };
    }
    this.leave(options.force && !this.watchdog.healthy() ? 'forced' : 'manual');
    return { recovered: true };
  }

  /** The safety part of /healthz. */
  health(): SafetyHealth {
    const open = this.watchdog.active();
    const activeFaults = this.mode === 'safe' ? [...open, ...this.episode] : open;
    const warnings = this.watchdog.warnings();
    const status = this.mode === 'safe' ? 'safe' : open.length > 0 || warnings.length > 0 ? 'degraded' : 'ok';
    const h: SafetyHealth = { status, since: this.since, activeFaults, faults: { ...this.counts }, warnings, recovery: this.recovery, suppressedActions: this.suppressed };
    if (this.lastFault) h.lastFault = this.lastFault;
    if (this.lastDrive) h.lastDrive = { t: this.lastDrive.t, ms: this.lastDrive.ms, failures: this.lastDrive.failures };
    return h;
  }

  /** Resolves when no drive is running or queued (shutdown, tests). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Stops listening to the watchdog and cancels the recovery timer. Idempotent. */
  dispose(): void {
    this.watchdog.off('healthy', this.onHealthy);
    this.clock.cancel(this.recoveryTimer);
    this.recoveryTimer = undefined;
  }

  // ------------------------------------------------------------------ internals

  private enter(): void {
    if (this.mode === 'safe') return;
    this.mode = 'safe';
    this.epoch++;
    this.since = this.clock.now();
    this.safeAt = this.clock.monotonic();
    this.episode = [];
  }

  private leave(how: Recovery['how']): void {
    this.clock.cancel(this.recoveryTimer);
    this.recoveryTimer = undefined;
    this.mode = 'ok';
    this.since = this.clock.now();
    this.episode = [];
    this.emit('recovered', { t: this.since, safeForMs: this.clock.monotonic() - this.safeAt, how });
  }

  /** Starts the healthy window (auto recovery) if the watchdog is healthy now. */
  private armRecovery(): void {
    if (this.mode !== 'safe' || this.recovery !== 'auto' || !this.watchdog.healthy()) return;
    this.clock.cancel(this.recoveryTimer);
    this.recoveryTimer = this.clock.setTimeout('safety:recovery', () => this.autoRecover(), this.healthyForMs);
  }

  private autoRecover(): void {
    this.recoveryTimer = undefined;
    if (this.mode !== 'safe') return;
    // A condition that opened without its fault reaching us still blocks; its closing re-arms.
    if (!this.watchdog.healthy()) return;
    // Never leave the safe state in the middle of driving it.
    if (this.running) {
      void this.settled().then(() => this.autoRecover());
      return;
    }
    this.leave('auto');
  }

  /** Runs a drive, or coalesces into the one queued behind the running drive. */
  private drive(cause: Omit<SafeDrive, 'ms' | 'failures'>): Promise<SafeDrive> {
    if (!this.running) {
      this.running = this.driveOnce(cause).finally(() => this.next());
      return this.running;
    }
    if (this.queued) {
      this.queued.cause = cause; // the latest cause names the extra drive
      return this.queued.promise;
    }
    let resolve!: (d: SafeDrive) => void;
    const promise = new Promise<SafeDrive>((r) => (resolve = r));
    this.queued = { cause, promise, resolve };
    return promise;
  }

  private next(): void {
    this.running = undefined;
    const q = this.queued;
    if (!q) return;
    this.queued = undefined;
    this.running = this.driveOnce(q.cause).finally(() => this.next());
    this.running.then(q.resolve);
  }

  private async driveOnce(cause: Omit<SafeDrive, 'ms' | 'failures'>): Promise<SafeDrive> {
    const t0 = this.clock.monotonic();
    const failures: DriveFailure[] = [];
    const context: ActionContext = { decision: 'safe-state', reason: cause.kind, detail: cause.detail };
    await Promise.all(
      [...this.actuators].map(([name, a]) =>
        this.step(name, () => a.safe()).catch((err) => failures.push({ actuator: name, step: 'safe', error: asError(err).message })),
      ),
    );
    for (const [index, action] of this.actions.entries()) {
      const a = this.actuators.get(action.actuator);
      try {
        if (!a) throw new KeelError('KEEL_E_ACTUATOR', `no actuator named "${action.actuator}"`);
        await this.step(action.actuator, () => a.write(action.value, context));
      } catch (err) {
        failures.push({ actuator: action.actuator, step: 'action', index, error: asError(err).message });
      }
    }
    const drive: SafeDrive = { ...cause, ms: this.clock.monotonic() - t0, failures };
    this.lastDrive = drive;
    this.emit('safe', drive);
    return drive;
  }

  /** Runs one actuator step, bounded by `driveTimeoutMs` on the clock. */
  private step(actuator: string, fn: () => Promise<void>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = this.clock.setTimeout(
        `safety:drive:${actuator}`,
        () => reject(new DriverError('KEEL_E_ACTUATOR', `${actuator}: no answer within ${this.driveTimeoutMs} ms`, { retryable: true })),
        this.driveTimeoutMs,
      );
      Promise.resolve()
        .then(fn)
        .then(
          () => {
            this.clock.cancel(timer);
            resolve();
          },
          (err) => {
            this.clock.cancel(timer);
            reject(err);
          },
        );
    });
  }
}

function describe(f: Fault): string {
  return `${f.kind}${f.pipeline ? ` (${f.pipeline})` : ''}: ${f.detail}`;
}
