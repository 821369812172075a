import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ActionContext, Actuator, ActuatorValue } from '../../drivers/types.ts';
import { FakeClock } from '../../runtime/clock.ts';
import type { ActionConfig } from '../../runtime/config/schema.ts';
import { DriverError } from '../../runtime/errors.ts';
import { SafeState, Watchdog, type Fault, type Recovery, type SafeDrive } from '../../runtime/safety.ts';

const T0 = 1_700_000_000_000;

/** An actuator that records every call in a shared log; `mode` scripts its failures. */
class FakeActuator implements Actuator {
  mode: { safe?: 'throw' | 'reject' | 'hang'; write?: 'reject' | 'hang' } = {};
  private value: ActuatorValue | undefined;
  private gate: (() => void) | undefined;
  constructor(
    readonly name: string,
    private readonly log: string[],
  ) {}
  async open(): Promise<void> {
    this.log.push(`${this.name}.open`);
  }
  write(value: ActuatorValue, _context?: ActionContext): Promise<void> {
    this.log.push(`${this.name}.write(${String(value)})`);
    if (this.mode.write === 'reject') return Promise.reject(new DriverError('KEEL_E_ACTUATOR', `${this.name} write failed`));
    if (this.mode.write === 'hang') return new Promise<void>((r) => (this.gate = r)).then(() => void (this.value = value));
    this.value = value;
    return Promise.resolve();
  }
  safe(): Promise<void> {
    this.log.push(`${this.name}.safe`);
    if (this.mode.safe === 'throw') throw new Error(`${this.name} is on fire`); // synchronous throw
    if (this.mode.safe === 'reject') return Promise.reject(new DriverError('KEEL_E_ACTUATOR', `${this.name} port vanished`));
    if (this.mode.safe === 'hang') return new Promise(() => undefined);
    this.value = 'SAFE';
    return Promise.resolve();
  }
  current(): ActuatorValue | undefined {
    return this.value;
  }
  async close(): Promise<void> {}
  /** Lets a hanging write finish. */
  release(): void {
    this.gate?.();
  }
}

interface Rig {
  clock: FakeClock;
  watchdog: Watchdog;
  safe: SafeState;
  log: string[];
  acts: Map<string, FakeActuator>;
  faults: Fault[];
  drives: SafeDrive[];
  recoveries: Recovery[];
}

/** Watchdog + SafeState wired the way the runtime wires them. */
function rig(opts: { recovery?: 'auto' | 'manual'; safeState?: ActionConfig[]; actuators?: string[]; healthyForMs?: number } = {}): Rig {
  const clock = new FakeClock(T0);
  const log: string[] = [];
  const acts = new Map<string, FakeActuator>();
  for (const n of opts.actuators ?? ['motor', 'led', 'buzzer']) acts.set(n, new FakeActuator(n, log));
  const watchdog = new Watchdog({ clock, silenceMs: 500, overrunMs: 100, maxInferenceFailures: 3, pipelines: { vad: {}, imu: { silenceMs: 2000, overrunMs: 50 } } });
  const safe = new SafeState({
    clock,
    actuators: acts,
    safeState: opts.safeState ?? [
      { actuator: 'buzzer', value: 1 },
      { actuator: 'led', value: 'blink' },
    ],
    recovery: opts.recovery ?? 'auto',
    healthyForMs: opts.healthyForMs ?? 1000,
    watchdog,
  });
  const r: Rig = { clock, watchdog, safe, log, acts, faults: [], drives: [], recoveries: [] };
  watchdog.on('fault', (f) => {
    r.faults.push(f);
    void safe.fault(f);
  });
  safe.on('safe', (d) => r.drives.push(d));
  safe.on('recovered', (x) => r.recoveries.push(x));
  return r;
}

// ----------------------------------------------------------------------------- watchdog

test('silence: a fault after silenceMs without samples, once, cleared by the next sample', () => {
  const { clock, watchdog, faults } = rig();
  const cleared: Fault[] = [];
  let healthy = 0;
  watchdog.on('cleared', (f) => cleared.push(f));
  watchdog.on('healthy', () => healthy++);
  watchdog.start(['vad']);
  clock.advance(300);
  watchdog.feed('vad'); // resets the window
  clock.advance(499);
  assert.equal(faults.length, 0);
  clock.advance(1);
  assert.equal(faults.length, 1);
  assert.deepEqual(faults[0], { kind: 'sensor-silence', pipeline: 'vad', detail: 'no samples for 500 ms (limit 500 ms)', t: T0 + 800, lasting: true });
  assert.equal(watchdog.healthy(), false);
  clock.advance(5000); // still silent: no repeat
  assert.equal(faults.length, 1);
  watchdog.feed('vad');
  assert.equal(cleared.length, 1);
  assert.equal(healthy, 1);
  assert.equal(watchdog.healthy(), true);
  clock.advance(500); // the window re-arms after the sample
  assert.equal(faults.length, 2);
  assert.deepEqual(watchdog.faultCounts(), { 'sensor-silence': 2 });
});

test('silence: per-pipeline limits, and a steady feed costs no timer churn', () => {
  const { clock, watchdog, faults } = rig();
  watchdog.start();
  for (let i = 0; i < 200; i++) {
    clock.advance(50);
    watchdog.feed('vad');
    if (i < 30) watchdog.feed('imu');
  }
  // vad is fed every 50 ms: never silent. imu stopped at 1.5 s and has a 2 s limit.
  assert.deepEqual(faults.map((f) => `${f.kind}:${f.pipeline}`), ['sensor-silence:imu']);
  assert.equal(faults[0].t, T0 + 1500 + 2000);
  assert.deepEqual(clock.pending(), ['watchdog:vad:silence']);
  watchdog.stop();
  assert.deepEqual(clock.pending(), []);
});

test('overrun: a run slower than overrunMs faults; a run within the limit clears it', () => {
  const { watchdog, faults } = rig();
  watchdog.inferenceStarted('vad');
  watchdog.inferenceFinished('vad', 100); // at the limit: fine
  assert.equal(faults.length, 0);
  watchdog.inferenceStarted('vad');
  watchdog.inferenceFinished('vad', 150.04);
  assert.equal(faults.length, 1);
  assert.equal(faults[0].kind, 'inference-overrun');
  assert.equal(faults[0].detail, 'inference took 150 ms (limit 100 ms)');
  assert.equal(watchdog.healthy(), false);
  watchdog.inferenceStarted('vad');
  watchdog.inferenceFinished('vad', 20);
  assert.equal(watchdog.healthy(), true);
  // Per-pipeline limit: imu allows 50 ms.
  watchdog.inferenceStarted('imu');
  watchdog.inferenceFinished('imu', 60);
  assert.equal(faults.at(-1)?.pipeline, 'imu');
});

test('hung inference: the timer started at inference start faults; the late finish does not fault again', () => {
  const { clock, watchdog, faults } = rig();
  watchdog.inferenceStarted('vad');
  clock.advance(99);
  assert.equal(faults.length, 0);
  assert.ok(clock.pending().includes('watchdog:vad:inference'));
  clock.advance(1);
  assert.equal(faults.length, 1);
  assert.match(faults[0].detail, /still running after 100 ms/);
  assert.equal(watchdog.pipelines().vad.running, true);
  clock.advance(10_000);
  watchdog.inferenceFinished('vad'); // measured since start: 10.1 s
  assert.equal(faults.length, 1);
  assert.equal(watchdog.healthy(), false); // still open until a run is in time
  watchdog.inferenceStarted('vad');
  clock.advance(30);
  watchdog.inferenceFinished('vad'); // 30 ms by the clock
  assert.equal(watchdog.healthy(), true);
  // The hang timer is not cancelled per run; when it fires with nothing running it lapses.
  clock.advance(200);
  assert.equal(faults.length, 1);
  assert.ok(!clock.pending().includes('watchdog:vad:inference'));
});

test('hang timer across many short runs: re-armed for the time left, no false overrun', () => {
  const { clock, watchdog, faults } = rig();
  for (let i = 0; i < 50; i++) {
    watchdog.inferenceStarted('vad');
    clock.advance(7);
    watchdog.inferenceFinished('vad');
    clock.advance(3);
  }
  // A run starting just before the timer's due time must get its full 100 ms.
  watchdog.inferenceStarted('vad');
  clock.advance(99);
  assert.equal(faults.length, 0);
  clock.advance(1);
  assert.equal(faults.length, 1);
  assert.match(faults[0].detail, /still running after 100 ms/);
});

test('inference failures: a fault at maxInferenceFailures consecutive ones, cleared by a success', () => {
  const { watchdog, faults, safe } = rig();
  const boom = new Error('session.run: bad tensor');
  watchdog.inferenceFailed('vad', boom);
  watchdog.inferenceFailed('vad', boom);
  assert.equal(faults.length, 0);
  assert.deepEqual(watchdog.warnings(), ['vad: 2 consecutive inference failure(s) of 3 allowed']);
  assert.equal(safe.health().status, 'degraded');
  watchdog.inferenceStarted('vad');
  watchdog.inferenceFinished('vad', 5); // a success resets the streak
  assert.equal(safe.health().status, 'ok');
  for (let i = 0; i < 5; i++) watchdog.inferenceFailed('vad', boom);
  assert.equal(faults.length, 1);
  assert.equal(faults[0].kind, 'inference-failure');
  assert.equal(faults[0].detail, '3 consecutive inference failures; last: session.run: bad tensor');
  assert.equal(watchdog.pipelines().vad.consecutiveFailures, 5);
  watchdog.inferenceFinished('vad', 5);
  assert.equal(watchdog.healthy(), true);
});

test('external reports: one-shot, or lasting until resolved', () => {
  const { watchdog, faults } = rig();
  const f = watchdog.report('actuator-failure', 'motor: EIO');
  assert.deepEqual(f, { kind: 'actuator-failure', detail: 'motor: EIO', t: T0 });
  assert.equal(watchdog.healthy(), true);
  watchdog.report('source-fault', 'imu: /dev/ttyUSB0 vanished', { pipeline: 'imu', lasting: true });
  assert.equal(watchdog.healthy(), false);
  assert.equal(watchdog.resolve('source-fault'), false); // a different pipeline key
  assert.equal(watchdog.resolve('source-fault', 'imu'), true);
  assert.equal(watchdog.healthy(), true);
  assert.equal(faults.length, 2);
  assert.throws(() => watchdog.report('', 'x'), TypeError);
});

test('watchdog arguments: unknown pipelines and bad limits are RangeErrors naming the parameter', () => {
  const { watchdog } = rig();
  assert.throws(() => watchdog.feed('vda'), /pipeline: no pipeline named "vda" is watched \(known: vad, imu\)/);
  assert.throws(() => watchdog.start(['nope']), /names: no pipeline named "nope"/);
  assert.throws(() => watchdog.inferenceFinished('vad', -1), RangeError);
  const clock = new FakeClock();
  assert.throws(() => new Watchdog({ clock, silenceMs: 0, overrunMs: 1, maxInferenceFailures: 1, pipelines: {} }), /silenceMs must be a positive/);
  assert.throws(() => new Watchdog({ clock, silenceMs: 1, overrunMs: 1, maxInferenceFailures: 0, pipelines: {} }), /maxInferenceFailures/);
  assert.throws(() => new Watchdog({ clock, silenceMs: 1, overrunMs: 1, maxInferenceFailures: 1, pipelines: { a: { overrunMs: -5 } } }), /pipelines\.a\.overrunMs/);
});

// ----------------------------------------------------------------------------- safe state

test('a fault drives every actuator safe first, then the safeState actions in order; actions are suppressed at once', async () => {
  const r = rig();
  const events: string[] = [];
  r.safe.on('fault', () => events.push('fault'));
  r.safe.on('safe', () => events.push('safe'));
  assert.equal(r.safe.mayApply(), true);
  r.watchdog.report('policy-failure', 'vad: took longer than 50 ms');
  // Synchronously safe: nothing may be applied from this instant.
  assert.equal(r.safe.isSafe(), true);
  assert.equal(r.safe.mayApply(), false);
  await r.safe.settled();
  assert.deepEqual(r.log, ['motor.safe', 'led.safe', 'buzzer.safe', 'buzzer.write(1)', 'led.write(blink)']);
  assert.deepEqual(events, ['fault', 'safe']);
  assert.equal(r.drives.length, 1);
  assert.equal(r.drives[0].kind, 'policy-failure');
  assert.deepEqual(r.drives[0].failures, []);
  assert.equal(await r.safe.apply({ actuator: 'motor', value: 1 }), 'suppressed');
  assert.equal(r.safe.health().suppressedActions, 2);
  assert.equal(r.acts.get('motor')!.current(), 'SAFE');
});

test('one actuator throwing, rejecting or hanging does not stop the others; failures are reported', async () => {
  const r = rig({
    healthyForMs: 10_000,
    actuators: ['a', 'b', 'c', 'd'],
    safeState: [
      { actuator: 'b', value: 7 },
      { actuator: 'ghost', value: 1 },
      { actuator: 'd', value: 'halt' },
      { actuator: 'a', value: 0 },
    ],
  });
  r.acts.get('a')!.mode = { safe: 'throw' };
  r.acts.get('b')!.mode = { safe: 'reject', write: 'reject' };
  r.acts.get('c')!.mode = { safe: 'hang' };
  r.watchdog.report('source-fault', 'imu: gone');
  await r.clock.advanceAsync(2000, 100); // the hung actuator's step times out after driveTimeoutMs
  await r.safe.settled();
  assert.deepEqual(r.log, ['a.safe', 'b.safe', 'c.safe', 'd.safe', 'b.write(7)', 'd.write(halt)', 'a.write(0)']);
  assert.equal(r.acts.get('d')!.current(), 'halt');
  const failures = r.drives[0].failures.map((f) => `${f.actuator}/${f.step}${f.index !== undefined ? `#${f.index}` : ''}: ${f.error}`);
  assert.deepEqual(failures, [
    'a/safe: a is on fire',
    'b/safe: b port vanished',
    'c/safe: c: no answer within 2000 ms',
    'b/action#0: b write failed',
    'ghost/action#1: no actuator named "ghost"',
  ]);
  assert.equal(r.safe.health().lastDrive?.failures.length, 5);
  assert.deepEqual(r.clock.pending(), ['safety:recovery']);
});

test('auto recovery: after healthyForMs with no fault once the condition has cleared', async () => {
  const r = rig({ healthyForMs: 1000 });
  r.watchdog.start(['vad']);
  r.clock.advance(500); // silence
  await r.safe.settled();
  assert.equal(r.safe.isSafe(), true);
  r.clock.advance(5000); // still silent: no recovery, however long
  assert.equal(r.recoveries.length, 0);
  assert.equal(r.safe.health().status, 'safe');
  r.watchdog.feed('vad'); // data flows again: the healthy window starts now
  r.clock.advance(400);
  r.watchdog.feed('vad');
  r.watchdog.report('actuator-failure', 'led: EIO'); // a new fault restarts the window
  await r.safe.settled();
  r.clock.advance(400);
  r.watchdog.feed('vad');
  r.clock.advance(400);
  r.watchdog.feed('vad');
  r.clock.advance(199);
  assert.equal(r.safe.isSafe(), true);
  r.clock.advance(1);
  assert.equal(r.safe.isSafe(), false);
  assert.equal(r.recoveries.length, 1);
  assert.equal(r.recoveries[0].how, 'auto');
  assert.equal(r.recoveries[0].safeForMs, 6400);
  assert.equal(r.safe.mayApply(), true);
  assert.equal(r.safe.health().status, 'ok');
  assert.equal(r.safe.health().since, T0 + 6900);
});

test('auto recovery waits for inference to succeed again', async () => {
  const r = rig({ healthyForMs: 100 });
  for (let i = 0; i < 3; i++) r.watchdog.inferenceFailed('vad', new Error('bad'));
  await r.safe.settled();
  r.clock.advance(10_000);
  assert.equal(r.safe.isSafe(), true);
  r.watchdog.inferenceStarted('vad');
  r.watchdog.inferenceFinished('vad', 3);
  r.clock.advance(100);
  assert.equal(r.safe.isSafe(), false);
});

test('manual recovery: holds until clear(), which is refused while a fault is active', async () => {
  const r = rig({ recovery: 'manual' });
  r.watchdog.start(['vad']);
  r.clock.advance(500);
  await r.safe.settled();
  const refused = r.safe.clear();
  assert.equal(refused.recovered, false);
  assert.match(refused.reason!, /faults still active: sensor-silence \(vad\): no samples for 500 ms/);
  for (let i = 0; i < 150; i++) {
    r.watchdog.feed('vad');
    r.clock.advance(400); // healthy for a minute, but manual means manual
  }
  assert.equal(r.faults.length, 1);
  assert.equal(r.safe.isSafe(), true);
  assert.deepEqual(r.safe.clear(), { recovered: true });
  assert.equal(r.safe.isSafe(), false);
  assert.equal(r.recoveries[0].how, 'manual');
  assert.deepEqual(r.safe.clear(), { recovered: false, reason: 'not in the safe state' });
  // force overrides an active condition.
  r.clock.advance(500);
  await r.safe.settled();
  assert.equal(r.safe.clear({ force: true }).recovered, true);
  assert.equal(r.recoveries[1].how, 'forced');
  assert.equal(r.safe.health().status, 'degraded'); // the silence condition is still open
});

test('faults during a drive coalesce into one more drive', async () => {
  const r = rig({ actuators: ['m'], safeState: [{ actuator: 'm', value: 0 }] });
  r.acts.get('m')!.mode = { write: 'hang' };
  const first = r.safe.fault({ kind: 'x', detail: '1', t: T0 });
  const second = r.safe.fault({ kind: 'y', detail: '2', t: T0 });
  const third = r.safe.fault({ kind: 'z', detail: '3', t: T0 });
  assert.equal(second, third);
  await new Promise((res) => setImmediate(res));
  r.acts.get('m')!.mode = {};
  r.acts.get('m')!.release();
  const [d1, d3] = await Promise.all([first, third]);
  assert.equal(d1.kind, 'x');
  assert.equal(d3.kind, 'z');
  assert.equal(r.drives.length, 2);
  assert.deepEqual(r.log, ['m.safe', 'm.write(0)', 'm.safe', 'm.write(0)']);
  assert.deepEqual(r.safe.health().faults, { x: 1, y: 1, z: 1 });
});

test('apply(): a write in flight when the safe state is entered is followed by safe() again', async () => {
  const r = rig({ actuators: ['motor'], safeState: [] });
  const m = r.acts.get('motor')!;
  m.mode = { write: 'hang' };
  const applying = r.safe.apply({ actuator: 'motor', value: 'full-speed' });
  r.watchdog.report('policy-failure', 'x');
  await r.safe.settled();
  m.release();
  assert.equal(await applying, 'applied');
  assert.deepEqual(r.log, ['motor.write(full-speed)', 'motor.safe', 'motor.safe']);
  assert.equal(m.current(), 'SAFE');
  assert.equal(await r.safe.apply({ actuator: 'nope', value: 1 }), 'suppressed'); // refused before the lookup
  r.clock.advance(1000); // one-shot fault: auto recovery after healthyForMs
  assert.equal(r.safe.isSafe(), false);
  await assert.rejects(r.safe.apply({ actuator: 'nope', value: 1 }), /no actuator named "nope"/);
});

test('health(): status, since, active faults and counts for /healthz', async () => {
  const r = rig({ healthyForMs: 1000 });
  assert.deepEqual(r.safe.health(), { status: 'ok', since: T0, activeFaults: [], faults: {}, warnings: [], recovery: 'auto', suppressedActions: 0 });
  r.watchdog.start(['vad']);
  r.clock.advance(500);
  r.watchdog.report('actuator-failure', 'led: EIO');
  await r.safe.settled();
  const h = r.safe.health();
  assert.equal(h.status, 'safe');
  assert.equal(h.since, T0 + 500);
  assert.deepEqual(h.activeFaults.map((f) => f.kind), ['sensor-silence', 'actuator-failure']);
  assert.deepEqual(h.faults, { 'sensor-silence': 1, 'actuator-failure': 1 });
  assert.equal(h.lastFault?.kind, 'actuator-failure');
  assert.equal(h.lastDrive?.failures.length, 0);
  r.watchdog.feed('vad');
  assert.deepEqual(r.safe.health().activeFaults.map((f) => f.kind), ['actuator-failure']); // one-shot: until recovery
  for (let i = 0; i < 4; i++) {
    r.clock.advance(250);
    r.watchdog.feed('vad');
  }
  assert.equal(r.safe.health().status, 'ok');
  assert.deepEqual(r.safe.health().activeFaults, []);
});

test('driveSafe() (shutdown) enters the safe state without counting a fault', async () => {
  const r = rig({ actuators: ['m'], safeState: [] });
  const d = await r.safe.driveSafe('shutdown');
  assert.equal(d.kind, 'requested');
  assert.equal(d.detail, 'shutdown');
  assert.equal(r.safe.isSafe(), true);
  assert.deepEqual(r.safe.health().faults, {});
  assert.deepEqual(r.log, ['m.safe']);
  r.safe.dispose();
});

test('SafeState rejects bad options, naming them', () => {
  const clock = new FakeClock();
  const watchdog = new Watchdog({ clock, silenceMs: 1, overrunMs: 1, maxInferenceFailures: 1, pipelines: {} });
  const base = { clock, actuators: new Map<string, Actuator>(), safeState: [], recovery: 'auto' as const, healthyForMs: 10, watchdog };
  assert.throws(() => new SafeState({ ...base, recovery: 'sometimes' as never }), /options\.recovery/);
  assert.throws(() => new SafeState({ ...base, healthyForMs: 0 }), /options\.healthyForMs/);
  assert.throws(() => new SafeState({ ...base, actuators: {} as never }), /options\.actuators/);
  assert.throws(() => new SafeState({ ...base, watchdog: undefined as never }), /options\.watchdog/);
});

test('never leaves the safe state mid-drive: clear() is refused and auto recovery waits for the drive', async () => {
  const r = rig({ actuators: ['m'], safeState: [], healthyForMs: 100, recovery: 'auto' });
  r.acts.get('m')!.mode = { safe: 'hang' };
  r.watchdog.report('policy-failure', 'x'); // one-shot: the watchdog stays healthy
  assert.deepEqual(r.safe.clear(), { recovered: false, reason: 'the safe state is still being driven' });
  r.clock.advance(100); // the healthy window ends while the drive still runs
  assert.equal(r.safe.isSafe(), true);
  await r.clock.advanceAsync(1900, 100); // the hung step times out at 2000 ms, the drive ends
  await r.safe.settled();
  await new Promise((res) => setImmediate(res));
  assert.equal(r.safe.isSafe(), false);
  assert.equal(r.recoveries.length, 1);
  assert.equal(r.drives[0].failures[0].error, 'm: no answer within 2000 ms');
});

test('auto recovery re-checks the watchdog: a condition whose fault was not forwarded still blocks it', async () => {
  const clock = new FakeClock(T0);
  const watchdog = new Watchdog({ clock, silenceMs: 500, overrunMs: 100, maxInferenceFailures: 1, pipelines: { p: {} } });
  const safe = new SafeState({ clock, actuators: new Map(), safeState: [], recovery: 'auto', healthyForMs: 1000, watchdog });
  await safe.fault({ kind: 'policy-failure', detail: 'x', t: T0 }); // healthy now: the window starts
  watchdog.report('source-fault', 'port gone', { lasting: true }); // nobody forwards this one
  clock.advance(1000);
  assert.equal(safe.isSafe(), true);
  watchdog.resolve('source-fault');
  clock.advance(999);
  assert.equal(safe.isSafe(), true);
  clock.advance(1);
  assert.equal(safe.isSafe(), false);
  safe.dispose();
});
