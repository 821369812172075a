/**
 * The device runtime: sources -> windows -> transforms -> inference -> decisions -> actuators,
 * under a watchdog that drives the safe state on any fault.
 *
 * Everything with IO comes in through `RuntimeDeps` (clock, GPIO backend, serial opener,
 * logger), so the same runtime runs on a board, in CI on simulated twins, and in tests on a
 * fake clock. The runtime emits typed events for everything it sees and does (inference,
 * decision, action, fault); the ledger and the live view subscribe to them.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { ActionContext, Actuator, ActuatorValue, Sample, SensorSource } from '../drivers/types.ts';
import { createActuator, createSource, type DriverDeps } from '../drivers/index.ts';
import type { Clock } from './clock.ts';
import type { ActionConfig, KeelConfig, PipelineConfig } from './config/schema.ts';
import { RuleEngine, type DecisionEvent } from './decisions/rules.ts';
import { PolicyCallError, PolicyHost } from './decisions/policy.ts';
import { KeelError, ModelError, asError, type ConfigIssue } from './errors.ts';
import { ModelRunner, type ModelOutputs } from './inference.ts';
import { RuntimeMetrics } from './ops/metrics.ts';
import { startOpsServer, type Health, type OpsServer } from './ops/http.ts';
import { LatencyWindow } from './pipeline/latency.ts';
import { Windower, windowToInput } from './pipeline/window.ts';
import type { Frame } from './pipeline/transforms.ts';
import { SafeState, Watchdog, type Fault } from './safety.ts';

export { KEEL_VERSION } from './version.ts';
import { KEEL_VERSION } from './version.ts';

/** The IO capabilities a runtime is built with. */
export interface RuntimeDeps extends DriverDeps {
  clock: Clock;
  logger: Logger;
  /** Directory that relative paths in the config resolve against. */
  baseDir: string;
  /** Skip the HTTP endpoint even if the config enables it (tests, benchmarks). */
  noHttp?: boolean;
  /** Sources to use instead of building the configured ones of the same name (harnesses). */
  sources?: Record<string, SensorSource>;
  /** Actuators to use instead of building the configured ones of the same name (harnesses). */
  actuators?: Record<string, Actuator>;
}

/** One inference, as the runtime reports it. */
export interface InferenceEvent {
  pipeline: string;
  /** Epoch ms of the newest sample in the window. */
  t: number;
  /** Duration of session.run, ms. */
  ms: number;
  outputs: ModelOutputs;
  modelSha256: string;
  /** The exact values fed to the window input (after transforms), for receipts. */
  input: Float32Array;
  /** Name and dims of the window input tensor. */
  inputName: string;
  inputDims: number[];
  /** Outputs that are recurrent state (fed back), which receipts leave out. */
  stateOutputs: readonly string[];
}

/** An action the runtime applied (or refused, or failed to apply). */
export interface ActionEvent {
  actuator: string;
  value: ActionConfig['value'];
  origin: string;
  result: 'ok' | 'suppressed' | 'failed';
  error?: string;
  t: number;
}

/** Events of a running runtime. */
export interface RuntimeEvents {
  inference: [InferenceEvent];
  decision: [DecisionEvent];
  action: [ActionEvent];
  fault: [Fault];
  safe: [Fault];
  recovered: [];
  /** A finite source ended (replay without loop) and no other source is live. */
  idle: [];
}

/** A completed window waiting to run, with its time and the sensor values when it completed. */
interface Scheduled {
  frame: Frame;
  t: number;
  sensors: Record<string, number>;
}

interface PipelineState {
  cfg: PipelineConfig;
  windower: Windower;
  runner: ModelRunner;
  rules: RuleEngine;
  policy?: PolicyHost;
  busy: boolean;
  pending?: Scheduled;
  lastFrameAt: number;
  latency: LatencyWindow;
  /** Metric children with this pipeline's label bound (label lookup costs ~1 µs per call). */
  m: { inferences: { inc(): void }; seconds: { observe(v: number): void }; windows: { inc(): void } };
  inferences: number;
  windowsDropped: number;
  decisions: number;
  /** Actions applied (by rules and policy). */
  actions: number;
  /** Whether any rule or the policy reads sensor values (else they are not gathered per window). */
  usesSensors: boolean;
  stateOutputs: string[];
  idle?: Promise<void>;
  resolveIdle?: () => void;
}

/** A snapshot for the live view and `/healthz`. */
export interface RuntimeSnapshot {
  uptimeMs: number;
  status: Health['status'];
  sources: { name: string; samples: number; dropped: number; reconnects: number; connected: boolean }[];
  pipelines: { name: string; inferences: number; windowsDropped: number; p50Ms: number; p99Ms: number; decisions: number; actions: number; active: string[] }[];
  /** Last value written to each actuator (undefined before the first write). */
  actuators: { name: string; value: ActuatorValue | undefined }[];
  faults: number;
  activeFaults: string[];
}

/** A configured runtime. Build with `Runtime.create`, then `start()`, and `stop()` at the end. */
export class Runtime extends EventEmitter<RuntimeEvents> {
  readonly config: KeelConfig;
  readonly metrics = new RuntimeMetrics(() => [...this.sources].map(([name, s]) => [name, s.stats()] as const));
  private readonly deps: RuntimeDeps;
  private readonly log: Logger;
  private readonly sources = new Map<string, SensorSource>();
  private readonly actuators = new Map<string, Actuator>();
  private readonly pipelines: PipelineState[] = [];
  /** Latest value of each channel, per source (a source may send channels in separate samples). */
  private readonly latest = new Map<string, Record<string, number>>();
  private readonly watchdog: Watchdog;
  private readonly safeState: SafeState;
  private http?: OpsServer;
  private status: Health['status'] = 'starting';
  private startedAt = 0;
  private faultCount = 0;
  private ended = new Set<string>();
  private wired = false;

  private constructor(config: KeelConfig, deps: RuntimeDeps) {
    super();
    this.config = config;
    this.deps = deps;
    this.log = deps.logger;
    const s = config.safety;
    this.watchdog = new Watchdog({
      clock: deps.clock,
      silenceMs: s.silenceMs,
      overrunMs: s.overrunMs,
      maxInferenceFailures: s.maxInferenceFailures,
      pipelines: Object.fromEntries(config.pipelines.map((p) => [p.name, { silenceMs: p.watchdog?.silenceMs, overrunMs: p.watchdog?.overrunMs }])),
    });
    this.safeState = new SafeState({
      clock: deps.clock,
      actuators: this.actuators,
      safeState: s.safeState,
      recovery: s.recovery,
      healthyForMs: s.healthyForMs,
      watchdog: this.watchdog,
    });
  }

  /**
   * Builds every driver, loads and checks every model (all problems reported at once, as a
   * ModelError whose `issues` carry config paths), warms the models up. Starts nothing.
   */
  static async create(config: KeelConfig, deps: RuntimeDeps): Promise<Runtime> {
    const rt = new Runtime(config, deps);
    for (const a of config.actuators) rt.actuators.set(a.name, deps.actuators?.[a.name] ?? createActuator(a, deps));
    for (const s of config.sources) rt.sources.set(s.name, deps.sources?.[s.name] ?? createSource(s, deps));
    const issues: ConfigIssue[] = [];
    const loaded = await Promise.allSettled(config.pipelines.map((p, i) => ModelRunner.load(p.model, deps.baseDir, `pipelines[${i}].model`, inputElements(p))));
    loaded.forEach((r) => {
      if (r.status === 'rejected') {
        const e = r.reason;
        if (e instanceof ModelError && e.issues.length) issues.push(...e.issues);
        else issues.push({ path: 'pipelines', message: asError(e).message });
      }
    });
    if (issues.length > 0) {
      await Promise.all(loaded.map((r) => (r.status === 'fulfilled' ? r.value.release() : undefined)));
      throw new ModelError('KEEL_E_MODEL_IO', `cannot load the models:\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, { issues });
    }
    const runners = loaded.map((r) => (r as PromiseFulfilledResult<ModelRunner>).value);
    const ruleProblems = config.pipelines.flatMap((p, i) => ruleIssues(p, runners[i], i));
    if (ruleProblems.length > 0) {
      await Promise.all(runners.map((r) => r.release()));
      throw new ModelError('KEEL_E_MODEL_IO', `rules do not fit the models:\n${ruleProblems.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`, { issues: ruleProblems });
    }
    config.pipelines.forEach((p, i) => {
      const runner = runners[i];
      rt.pipelines.push({
        cfg: p,
        windower: new Windower(p.window.channels, p.window.size, p.window.hop ?? p.window.size),
        runner,
        rules: new RuleEngine(p.rules, { clock: deps.clock, outputSizes: outputSizes(runner), onIssue: (i) => deps.logger.warn({ pipeline: p.name, issue: i }, 'rule problem') }),
        policy: p.policy ? new PolicyHost(p.policy, { baseDir: deps.baseDir, actuators: new Set(rt.actuators.keys()), clock: deps.clock, name: p.name }) : undefined,
        busy: false,
        lastFrameAt: 0,
        latency: new LatencyWindow(2048),
        m: {
          inferences: rt.metrics.inferences.labels({ pipeline: p.name }),
          seconds: rt.metrics.inferenceSeconds.labels({ pipeline: p.name }),
          windows: rt.metrics.windows.labels({ pipeline: p.name }),
        },
        inferences: 0,
        windowsDropped: 0,
        decisions: 0,
        actions: 0,
        usesSensors: p.policy !== undefined || p.rules.some((r) => r.when.sensor !== undefined),
        stateOutputs: (p.model.state ?? []).map((st) => st.output),
      });
    });
    for (const p of rt.pipelines) {
      await p.runner.warmup(p.cfg.model.warmup, inputElements(p.cfg));
    }
    return rt;
  }

  /** Binds the HTTP endpoint, opens actuators (initial values) and policy workers, then starts the sources. */
  async start(): Promise<void> {
    const { clock } = this.deps;
    this.startedAt = clock.monotonic();
    this.wire();
    // Bind the endpoint before touching any output: a taken port must fail before an
    // actuator has been driven to its initial value.
    if (this.config.http.enabled && !this.deps.noHttp) {
      this.http = await startOpsServer(this.config.http.host, this.config.http.port, {
        metrics: async () => ({ contentType: this.metrics.contentType, text: await this.metrics.text() }),
        health: () => this.health(),
      });
      this.log.info({ address: this.http.address }, 'ops endpoint listening (/metrics, /healthz)');
    }
    for (const a of this.actuators.values()) await a.open();
    for (const p of this.pipelines) if (p.policy) await p.policy.start();
    this.watchdog.start(this.pipelines.map((p) => p.cfg.name));
    for (const src of this.sources.values()) await src.start();
    this.status = 'ok';
    this.log.info(
      { device: this.config.device.name, version: KEEL_VERSION, pipelines: this.pipelines.map((p) => ({ name: p.cfg.name, model: p.runner.info.path, sha256: p.runner.info.sha256 })) },
      'keel running',
    );
  }

  /** Subscribes to the watchdog, the safe-state controller and the sources (once). */
  private wire(): void {
    if (this.wired) return;
    this.wired = true;
    this.watchdog.on('fault', (f: Fault) => this.onFault(f));
    this.safeState.on('safe', (f: Fault) => {
      this.metrics.safe.set(1);
      for (const p of this.pipelines) p.rules.reset();
      if (f.kind === 'requested') this.log.info({ reason: f.detail }, 'safe state driven for shutdown');
      else this.log.warn({ fault: f }, 'safe state driven');
      this.emit('safe', f);
    });
    this.safeState.on('recovered', () => {
      this.metrics.safe.set(0);
      this.log.info('recovered from the safe state');
      this.emit('recovered');
    });
    for (const [name, src] of this.sources) {
      src.on('sample', (s) => this.onSample(name, s));
      src.on('fault', (err) => {
        this.log.warn({ source: name, code: err.code, err: err.message }, 'source fault');
        // Lasting: automatic recovery waits until the source says it delivers again.
        this.watchdog.report(`source-fault:${name}`, `${name}: ${err.message}`, { lasting: true });
      });
      src.on('recovered', () => {
        this.log.info({ source: name }, 'source recovered');
        this.watchdog.resolve(`source-fault:${name}`);
      });
      src.on('end', () => {
        this.ended.add(name);
        this.log.info({ source: name }, 'source ended');
        if (this.ended.size === this.sources.size) this.emit('idle');
      });
    }
    // Actuators on a supervised link (serial, firmware bridge) report losing it: a lasting
    // fault, so an output nobody can drive keeps the machine safe until the link is back.
    for (const [name, a] of this.actuators) {
      const e = a as Actuator & { on?: (ev: string, fn: (...args: never[]) => void) => unknown };
      if (typeof e.on !== 'function') continue;
      e.on('fault', (err: KeelError) => {
        this.log.warn({ actuator: name, code: err.code, err: err.message }, 'actuator link fault');
        this.watchdog.report(`actuator-fault:${name}`, `${name}: ${err.message}`, { lasting: true });
      });
      e.on('recovered', () => {
        this.log.info({ actuator: name }, 'actuator link recovered');
        this.watchdog.resolve(`actuator-fault:${name}`);
      });
    }
  }

  /**
   * Stops in the order that keeps the machine safe: safe state first, then sources, then
   * waits (bounded) for in-flight inferences, then policies, actuators and models.
   */
  async stop(reason = 'shutdown'): Promise<void> {
    if (this.status === 'stopping') return;
    this.status = 'stopping';
    this.wire();
    this.log.info({ reason }, 'stopping: driving the safe state first');
    await this.safeState.driveSafe(reason);
    this.watchdog.stop();
    await Promise.allSettled([...this.sources.values()].map((s) => s.stop()));
    await Promise.race([
      Promise.allSettled(this.pipelines.map((p) => p.idle)),
      new Promise((r) => setTimeout(r, 2000).unref()),
    ]);
    await Promise.allSettled(this.pipelines.map((p) => p.policy?.stop()));
    await Promise.allSettled([...this.actuators.values()].map((a) => a.close()));
    await Promise.allSettled(this.pipelines.map((p) => p.runner.release()));
    await this.http?.close();
    this.safeState.dispose?.();
  }

  private onSample(source: string, s: Sample): void {
    let latest = this.latest.get(source);
    if (!latest) this.latest.set(source, (latest = {}));
    Object.assign(latest, s.values);
    for (const p of this.pipelines) {
      if (p.cfg.source !== source) continue;
      this.watchdog.feed(p.cfg.name);
      const before = p.windower.incomplete;
      const frame = p.windower.push(s);
      if (p.windower.incomplete !== before) this.metrics.incomplete.inc({ pipeline: p.cfg.name });
      // The window's time and the sensor values a rule may read are taken now, when the window
      // completes: by the time it runs (after a busy model, or a burst of samples) both moved on.
      if (frame) this.schedule(p, { frame, t: p.windower.lastTime, sensors: p.usesSensors ? this.sensorValues() : NO_SENSORS });
    }
  }

  /** Runs the frame now, or keeps it as the one pending frame (newest wins, older counted as dropped). */
  private schedule(p: PipelineState, frame: Scheduled): void {
    p.m.windows.inc();
    if (p.busy) {
      if (p.pending) {
        p.windowsDropped++;
        this.metrics.windowsDropped.inc({ pipeline: p.cfg.name });
      }
      p.pending = frame;
      return;
    }
    p.busy = true;
    p.idle = new Promise((r) => (p.resolveIdle = r));
    void this.drain(p, frame);
  }

  private async drain(p: PipelineState, first: Scheduled): Promise<void> {
    let frame: Scheduled | undefined = first;
    try {
      while (frame && this.status !== 'stopping') {
        await this.process(p, frame.frame, frame.t, frame.sensors);
        frame = p.pending;
        p.pending = undefined;
      }
    } catch (err) {
      // process() handles its own failures; anything here is a bug, and still must not crash.
      this.log.error({ err: asError(err).message, pipeline: p.cfg.name }, 'pipeline error');
    } finally {
      p.busy = false;
      p.pending = undefined;
      p.resolveIdle?.();
    }
  }

  private async process(p: PipelineState, frame: Frame, t: number, sensors?: Record<string, number>): Promise<void> {
    const { clock } = this.deps;
    const name = p.cfg.name;
    const reset = p.cfg.model.stateReset;
    if (p.runner.stateful && reset) {
      if (reset.everyRuns && p.runner.runsSinceStateReset >= reset.everyRuns) p.runner.resetState();
      if (reset.afterGapMs && p.lastFrameAt && t - p.lastFrameAt > reset.afterGapMs) p.runner.resetState();
    }
    p.lastFrameAt = t;
    const input = windowToInput(frame, p.cfg);
    this.watchdog.inferenceStarted(name);
    const t0 = clock.monotonic();
    let outputs: ModelOutputs;
    try {
      outputs = await p.runner.run(input);
    } catch (err) {
      const e = asError(err);
      this.metrics.inferenceFailures.inc({ pipeline: name });
      this.log.warn({ pipeline: name, err: e.message }, 'inference failed');
      if (p.runner.stateful && (reset?.onFault ?? true)) p.runner.resetState();
      this.watchdog.inferenceFailed(name, e);
      return;
    }
    const ms = clock.monotonic() - t0;
    this.watchdog.inferenceFinished(name, ms);
    p.latency.add(ms);
    p.inferences++;
    p.m.inferences.inc();
    p.m.seconds.observe(ms / 1000);
    if (this.listenerCount('inference') > 0) {
      this.emit('inference', {
        pipeline: name,
        t,
        ms,
        outputs,
        modelSha256: p.runner.info.sha256,
        input,
        inputName: p.cfg.model.input,
        inputDims: p.runner.inputDims(input.length),
        stateOutputs: p.stateOutputs,
      });
    }

    const decisionInput = { pipeline: name, t, outputs, sensors: p.usesSensors ? (sensors ?? this.sensorValues()) : NO_SENSORS };
    const events = p.rules.evaluate(decisionInput);
    for (const ev of events) {
      p.decisions++;
      this.metrics.decisions.inc({ pipeline: name, rule: ev.rule, state: ev.state });
      this.log.info({ pipeline: name, rule: ev.rule, state: ev.state, value: ev.value }, 'decision');
      this.emit('decision', ev);
      p.actions += await this.apply(ev.actions, { decision: ev.rule, pipeline: name, state: ev.state, time: new Date(t).toISOString(), value: ev.value, ...flatOutputs(outputs) }, `${name}/${ev.rule}`);
    }
    if (p.policy) {
      try {
        const res = await p.policy.decide({ ...decisionInput, states: p.rules.states() });
        this.metrics.policyCalls.inc({ pipeline: name, result: 'ok' });
        if (res.actions?.length) p.actions += await this.apply(res.actions, { pipeline: name, decision: 'policy', time: new Date(t).toISOString(), ...flatOutputs(outputs) }, `${name}/policy`);
      } catch (err) {
        const e = asError(err);
        const reason = err instanceof PolicyCallError ? err.reason : 'threw';
        this.metrics.policyCalls.inc({ pipeline: name, result: reason });
        this.log.warn({ pipeline: name, reason, err: e.message }, 'policy failed');
        // busy/unavailable mean the worker is restarting after a failure already reported;
        // reporting them again would re-trigger the safe state on every window.
        if (reason !== 'busy' && reason !== 'unavailable') this.watchdog.report('policy-failure', `${name}: ${e.message}`, { pipeline: name });
      }
    }
  }

  /** Applies actions in order; suppressed while the safe state holds. */
  private async apply(actions: readonly ActionConfig[], context: ActionContext, origin: string): Promise<number> {
    let applied = 0;
    for (const a of actions) {
      const t = this.deps.clock.now();
      try {
        // SafeState.apply re-drives the actuator safe if a fault lands while the write is in flight.
        const result = await this.safeState.apply(a, context);
        if (result === 'applied') applied++;
        this.metrics.actions.inc({ actuator: a.actuator, result: result === 'applied' ? 'ok' : 'suppressed' });
        this.emit('action', { actuator: a.actuator, value: a.value, origin, result: result === 'applied' ? 'ok' : 'suppressed', t });
      } catch (err) {
        const e = asError(err);
        this.metrics.actions.inc({ actuator: a.actuator, result: 'failed' });
        this.emit('action', { actuator: a.actuator, value: a.value, origin, result: 'failed', error: e.message, t });
        this.log.warn({ actuator: a.actuator, err: e.message }, 'action failed');
        this.watchdog.report('actuator-failure', `${a.actuator}: ${e.message}`);
      }
    }
    return applied;
  }

  /**
   * Drives one actuator on an operator's word (a signed command), exactly as a decision action
   * would be: refused ('suppressed') while the safe state holds, re-driven safe if a fault lands
   * during the write, reported as an `action` event with `origin`, a failed write reported to
   * the watchdog like any actuator failure. Resolves 'applied' or 'suppressed'.
   * @throws RangeError if no actuator is named `name`; KeelError (KEEL_E_ACTUATOR) if the
   *   runtime is not running, or the write's error.
   */
  async actuate(name: string, value: ActuatorValue, origin: string): Promise<'applied' | 'suppressed'> {
    if (typeof name !== 'string' || !this.actuators.has(name)) throw new RangeError(`name: no actuator named ${JSON.stringify(String(name).slice(0, 80))}`);
    if (this.status !== 'ok') throw new KeelError('KEEL_E_ACTUATOR', `the runtime is ${this.status === 'stopping' ? 'stopping' : 'not started'}; actuators are driven only while it runs`);
    const t = this.deps.clock.now();
    try {
      const result = await this.safeState.apply({ actuator: name, value }, { origin, time: new Date(t).toISOString() });
      this.metrics.actions.inc({ actuator: name, result: result === 'applied' ? 'ok' : 'suppressed' });
      this.emit('action', { actuator: name, value, origin, result: result === 'applied' ? 'ok' : 'suppressed', t });
      return result;
    } catch (err) {
      const e = asError(err);
      this.metrics.actions.inc({ actuator: name, result: 'failed' });
      this.emit('action', { actuator: name, value, origin, result: 'failed', error: e.message, t });
      this.log.warn({ actuator: name, origin, err: e.message }, 'action failed');
      this.watchdog.report('actuator-failure', `${name}: ${e.message}`);
      throw err;
    }
  }

  private onFault(f: Fault): void {
    this.faultCount++;
    this.metrics.faults.inc({ kind: f.kind });
    this.log.warn({ fault: f }, 'fault');
    if (f.pipeline && f.kind === 'sensor-silence') {
      const p = this.pipelines.find((x) => x.cfg.name === f.pipeline);
      // A window must never span a silence; a recurrent state must not carry across one.
      p?.windower.reset();
      if (p?.runner.stateful && (p.cfg.model.stateReset?.onFault ?? true)) p.runner.resetState();
    }
    this.emit('fault', f);
    void this.safeState.fault(f);
  }

  /**
   * The latest value of every channel of every source, keyed "source.channel". Built once per
   * decision rather than once per sample: samples arrive far more often than decisions.
   * A channel keeps its last value when a sample omits it.
   */
  private sensorValues(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [source, values] of this.latest) for (const ch in values) out[`${source}.${ch}`] = values[ch];
    return out;
  }

  /**
   * Runs one already-windowed frame (channel-major, the window's channels and size) through
   * `pipeline`'s transforms, model, rules, policy and actions, exactly as a window completed
   * from samples would be, and resolves when done. For harnesses that replay recorded windows.
   * `t` is the epoch ms the frame is stamped with (default: now).
   */
  async runWindow(pipeline: string, frame: Frame, t = this.deps.clock.now()): Promise<void> {
    const p = this.pipelines.find((x) => x.cfg.name === pipeline);
    if (!p) throw new RangeError(`pipeline: no pipeline named "${pipeline}"`);
    const want = p.cfg.window.channels.length * p.cfg.window.size;
    if (frame.channels !== p.cfg.window.channels.length || frame.length !== p.cfg.window.size || frame.data.length !== want) {
      throw new RangeError(`frame: expected ${p.cfg.window.channels.length} channels x ${p.cfg.window.size} samples`);
    }
    if (p.busy) await this.settled();
    p.busy = true;
    p.idle = new Promise((r) => (p.resolveIdle = r));
    try {
      p.m.windows.inc();
      await this.process(p, frame, t);
    } finally {
      p.busy = false;
      p.resolveIdle?.();
    }
  }

  /** Resolves when no pipeline has an inference running or pending. */
  async settled(): Promise<void> {
    while (this.pipelines.some((p) => p.busy)) await Promise.all(this.pipelines.map((p) => p.idle));
  }

  /** Address of the ops endpoint once started (host:port), if it is enabled. */
  get opsAddress(): string | undefined {
    return this.http?.address;
  }

  /** Health for /healthz. */
  health(): Health {
    const h = this.safeState.health();
    const status: Health['status'] = this.status === 'ok' ? h.status : this.status;
    return { ...h, status, device: this.config.device.name, version: KEEL_VERSION };
  }

  /** Numbers for the live view. */
  snapshot(): RuntimeSnapshot {
    return {
      uptimeMs: this.deps.clock.monotonic() - this.startedAt,
      status: this.health().status,
      sources: [...this.sources].map(([name, s]) => ({ name, ...s.stats() })),
      pipelines: this.pipelines.map((p) => ({
        name: p.cfg.name,
        inferences: p.inferences,
        windowsDropped: p.windowsDropped,
        p50Ms: p.latency.percentile(50),
        p99Ms: p.latency.percentile(99),
        decisions: p.decisions,
        actions: p.actions,
        active: Object.entries(p.rules.states())
          .filter(([, v]) => v)
          .map(([k]) => k),
      })),
      actuators: [...this.actuators].map(([name, a]) => ({ name, value: a.current() })),
      faults: this.faultCount,
      activeFaults: this.safeState.health().activeFaults?.map((f: Fault) => f.kind) ?? [],
    };
  }

}

/**
 * Problems of a pipeline's rules against its loaded model (an output that does not exist,
 * an index past its end, labels that do not match its size), with config paths.
 */
export function ruleIssues(p: PipelineConfig, runner: ModelRunner, index: number): ConfigIssue[] {
  try {
    new RuleEngine(p.rules, { clock: { now: () => 0 } as unknown as Clock, outputSizes: outputSizes(runner) });
    return [];
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    return err.message
      .split('\n')
      .slice(1)
      .map((line) => {
        const text = line.trim();
        const cut = text.indexOf(': ');
        return { path: `pipelines[${index}].${text.slice(0, cut)}`, message: text.slice(cut + 2) };
      });
  }
}

const NO_SENSORS: Record<string, number> = Object.freeze({}) as Record<string, number>;

/** Element count of each fetched output; NaN where the model leaves the size open. */
function outputSizes(runner: ModelRunner): Record<string, number> {
  const sizes: Record<string, number> = {};
  for (const o of runner.info.outputs) {
    if (!runner.outputNames.includes(o.name)) continue;
    const fixed = o.shape.length > 0 && o.shape.every((d) => typeof d === 'number' && d > 0);
    sizes[o.name] = fixed ? (o.shape as number[]).reduce((a, b) => a * b, 1) : NaN;
  }
  return sizes;
}

/** Number of values the pipeline's transforms produce from one window (the model input size). */
export function inputElements(p: PipelineConfig): number {
  const channels = p.window.channels.length;
  return windowToInput({ channels, length: p.window.size, data: new Float32Array(channels * p.window.size) }, p).length;
}

/** Scalar model outputs for templates: `score` is element 0 of output `score`, `score_1` element 1... */
function flatOutputs(outputs: ModelOutputs): Record<string, number> {
  const o: Record<string, number> = {};
  for (const [k, v] of Object.entries(outputs)) {
    if (v.length > 16) continue;
    o[k] = v[0];
    for (let i = 1; i < v.length; i++) o[`${k}_${i}`] = v[i];
  }
  return o;
}
