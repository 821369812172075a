/**
 * The simulated GPIO backend, the debounced GPIO input source and the GPIO actuator, all on
 * FakeClock: debounce timing takes no real time.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../runtime/clock.ts';
import type { GpioActuatorConfig, GpioSourceConfig } from '../../runtime/config/schema.ts';
import { DriverError, KeelError } from '../../runtime/errors.ts';
import type { Sample } from '../../drivers/types.ts';
import {
  createGpioBackend,
  GpioActuator,
  GpioError,
  GpioInputSource,
  OnoffGpioBackend,
  SimGpioBackend,
  toGpioLevel,
  type GpioErrorReason,
} from '../../drivers/gpio/index.ts';

function isGpio(reason: GpioErrorReason, message: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof GpioError, `expected GpioError, got ${String(err)}`);
    assert.equal(err.code, 'KEEL_E_GPIO');
    assert.equal(err.reason, reason, err.message);
    assert.match(err.message, message);
    return true;
  };
}

function source(over: Partial<GpioSourceConfig> = {}): GpioSourceConfig {
  return { name: 'button', type: 'gpio', line: { chip: 'sim', offset: 4 }, edge: 'both', debounceMs: 10, activeLow: false, ...over };
}

function actuator(over: Partial<GpioActuatorConfig> = {}): GpioActuatorConfig {
  return { name: 'relay', type: 'gpio', line: { chip: 'sim', offset: 20 }, activeLow: false, initial: 0, safe: 0, ...over };
}

function collect(src: GpioInputSource): Sample[] {
  const out: Sample[] = [];
  src.on('sample', (s) => out.push(s));
  return out;
}

describe('SimGpioBackend', () => {
  test('default chip "sim" has 64 lines named GPIO0..GPIO63; inputs see set() levels', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    sim.set('sim', 5, 1);
    const byName = await sim.openInput({ chip: 'sim', name: 'GPIO5' }, { edge: 'both', activeLow: false });
    assert.equal(byName.read(), 1);
    const edges: Array<[number, number]> = [];
    byName.onEdge((v, t) => edges.push([v, t]));
    clock.advance(7);
    sim.set('sim', 'GPIO5', 0);
    sim.set('sim', 5, 0); // no change, no edge
    assert.deepEqual(edges, [[0, clock.now()]]);
    await byName.close();
    const last = await sim.openInput({ chip: 'gpiochip0', offset: 63 }, { edge: 'none', activeLow: false });
    await last.close();
  });

  test('missing chips and lines fail like the sysfs backend, listing what exists', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock(), chips: [{ label: 'sim', lines: 8 }, { label: 'expander', lines: 16, names: ['LED', 'FAN'] }] });
    await assert.rejects(sim.openInput({ chip: 'pinctrl-rp1', offset: 1 }, { edge: 'both', activeLow: false }), isGpio('chip-not-found', /"pinctrl-rp1" not found.*sim \(gpiochip0, 8 lines\), expander \(gpiochip1, 16 lines\)/));
    await assert.rejects(sim.openOutput({ chip: 'sim', offset: 8 }, { activeLow: false, initial: 0 }), isGpio('line-not-found', /offset 8 is out of range for chip sim \(8 lines, offsets 0-7\)/));
    await assert.rejects(sim.openOutput({ chip: 'expander', name: 'PUMP' }, { activeLow: false, initial: 0 }), isGpio('line-not-found', /no line named "PUMP".*names: LED, FAN/));
    const fan = await sim.openOutput({ chip: 'gpiochip1', name: 'FAN' }, { activeLow: false, initial: 1 });
    assert.equal(sim.get('expander', 1), 1);
    await fan.close();
    assert.throws(() => sim.get('nope', 0), isGpio('chip-not-found', /nope/));
  });

  test('a line already taken is busy: opened by this process, or held elsewhere', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock() });
    const a = await sim.openInput({ chip: 'sim', offset: 3 }, { edge: 'both', activeLow: false });
    await assert.rejects(sim.openInput({ chip: 'sim', name: 'GPIO3' }, { edge: 'both', activeLow: false }), isGpio('busy', /already opened by this process \(as an input\)/));
    await assert.rejects(sim.openOutput({ chip: 'sim', offset: 3 }, { activeLow: false, initial: 0 }), isGpio('busy', /already opened/));
    await a.close();
    assert.throws(() => a.read(), isGpio('closed', /after close/));
    sim.hold('sim', 3, 'the w1-gpio overlay');
    await assert.rejects(sim.openInput({ chip: 'sim', offset: 3 }, { edge: 'both', activeLow: false }), (e: unknown) => {
      assert.ok(e instanceof GpioError && e.reason === 'busy' && e.retryable && /w1-gpio/.test(e.message));
      return true;
    });
    sim.unhold('sim', 3);
    const b = await sim.openInput({ chip: 'sim', offset: 3 }, { edge: 'both', activeLow: false });
    // A stale handle cannot touch the reopened line.
    await a.close();
    assert.equal(sim.mode('sim', 3), 'input');
    await b.close();
  });

  test('outputs: history of physical level changes with clock timestamps; set() refuses driven lines', async () => {
    const clock = new FakeClock(1_000);
    const sim = new SimGpioBackend({ clock });
    const out = await sim.openOutput({ chip: 'sim', offset: 9 }, { activeLow: true, initial: 1 });
    assert.equal(sim.get('sim', 9), 0); // active-low: logical 1 is a low wire
    assert.equal(out.read(), 1);
    clock.advance(5);
    out.write(0);
    out.write(0); // unchanged: not a change
    clock.advance(5);
    out.write(1);
    assert.deepEqual(sim.history('sim', 9), [
      { chip: 'sim', offset: 9, value: 0, t: 1_000 },
      { chip: 'sim', offset: 9, value: 1, t: 1_005 },
      { chip: 'sim', offset: 9, value: 0, t: 1_010 },
    ]);
    assert.throws(() => sim.set('sim', 9, 1), isGpio('busy', /output driven by keel/));
    assert.throws(() => out.write(2 as 0), /TypeError: value must be 0 or 1/);
    await out.close();
    assert.throws(() => out.write(1), isGpio('closed', /after close/));
  });

  test('edge filters and active-low inputs', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock() });
    const rising = await sim.openInput({ chip: 'sim', offset: 1 }, { edge: 'rising', activeLow: false });
    const seen: number[] = [];
    rising.onEdge((v) => seen.push(v));
    sim.set('sim', 1, 1);
    sim.set('sim', 1, 0);
    sim.set('sim', 1, 1);
    assert.deepEqual(seen, [1, 1]);
    const inverted = await sim.openInput({ chip: 'sim', offset: 2 }, { edge: 'both', activeLow: true });
    const inv: number[] = [];
    inverted.onEdge((v) => inv.push(v));
    assert.equal(inverted.read(), 1); // wire low, active low
    sim.set('sim', 2, 1);
    assert.deepEqual(inv, [0]);
  });

  test('bad constructor options are TypeErrors/RangeErrors', () => {
    assert.throws(() => new SimGpioBackend({} as never), /opts\.clock is required/);
    assert.throws(() => new SimGpioBackend({ clock: new FakeClock(), chips: [] }), /non-empty array/);
    assert.throws(() => new SimGpioBackend({ clock: new FakeClock(), chips: [{ label: 'a' }, { label: 'a' }] }), /used twice/);
    assert.throws(() => new SimGpioBackend({ clock: new FakeClock(), chips: [{ label: 'a', lines: 0 }] }), RangeError);
  });
});

describe('GpioInputSource', () => {
  test('emits the current level at start, then one sample per settled edge', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    const src = new GpioInputSource(source(), { backend: sim, clock });
    const got = collect(src);
    await src.start();
    assert.deepEqual(got, [{ t: clock.now(), values: { button: 0 } }]);
    assert.equal(src.stats().connected, true);
    clock.advance(100);
    sim.set('sim', 4, 1);
    clock.advance(9);
    assert.equal(got.length, 1, 'not reported before debounceMs');
    clock.advance(1);
    assert.deepEqual(got[1], { t: clock.now() - 10, values: { button: 1 } });
    await src.stop();
  });

  test('contact bounce within debounceMs gives one event; the bounces are counted as dropped', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    const src = new GpioInputSource(source({ debounceMs: 10 }), { backend: sim, clock });
    const got = collect(src);
    await src.start();
    const t0 = clock.now();
    // Press: 1, 0, 1, 0, 1 over 6 ms, then the contact rests closed.
    for (const [dt, v] of [[0, 1], [2, 0], [1, 1], [2, 0], [1, 1]] as const) {
      clock.advance(dt);
      sim.set('sim', 4, v);
    }
    clock.advance(50);
    assert.equal(got.length, 2);
    assert.deepEqual(got[1], { t: t0 + 6, values: { button: 1 } }, 'stamped when the level settled');
    assert.equal(src.stats().dropped, 4);
    // A glitch (up and back down within debounceMs) reports nothing and drops both edges.
    sim.set('sim', 4, 0);
    clock.advance(20);
    assert.equal(got.length, 3);
    sim.set('sim', 4, 1);
    clock.advance(3);
    sim.set('sim', 4, 0);
    clock.advance(30);
    assert.equal(got.length, 3);
    assert.equal(src.stats().dropped, 6);
    assert.equal(src.stats().samples, 3);
    await src.stop();
  });

  test('edge "rising" reports presses only; "falling" releases only', async () => {
    for (const [edge, expected] of [
      ['rising', [0, 1, 1]],
      ['falling', [0, 0, 0]],
      ['both', [0, 1, 0, 1, 0]],
    ] as const) {
      const clock = new FakeClock();
      const sim = new SimGpioBackend({ clock });
      const src = new GpioInputSource(source({ edge }), { backend: sim, clock });
      const got = collect(src);
      await src.start();
      for (const v of [1, 0, 1, 0] as const) {
        sim.set('sim', 4, v);
        clock.advance(20);
      }
      assert.deepEqual(got.map((s) => s.values.button), expected, edge);
      await src.stop();
    }
  });

  test('activeLow inverts: a low wire reads 1', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    sim.set('sim', 4, 1); // pulled up, button not pressed
    const src = new GpioInputSource(source({ activeLow: true, channel: 'pressed' }), { backend: sim, clock });
    const got = collect(src);
    await src.start();
    sim.set('sim', 4, 0);
    clock.advance(10);
    assert.deepEqual(got.map((s) => s.values), [{ pressed: 0 }, { pressed: 1 }]);
    await src.stop();
  });

  test('debounceMs 0 reports every change at once', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    const src = new GpioInputSource(source({ debounceMs: 0 }), { backend: sim, clock });
    const got = collect(src);
    await src.start();
    sim.set('sim', 4, 1);
    sim.set('sim', 4, 0);
    sim.set('sim', 4, 1);
    assert.deepEqual(got.map((s) => s.values.button), [0, 1, 0, 1]);
    assert.deepEqual(clock.pending(), []);
    await src.stop();
  });

  test('stop closes the line and abandons a pending debounce; stop is idempotent; restart works', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    const src = new GpioInputSource(source(), { backend: sim, clock });
    const got = collect(src);
    await src.start();
    sim.set('sim', 4, 1);
    assert.deepEqual(clock.pending(), ['gpio:button:debounce']);
    await src.stop();
    await src.stop();
    assert.deepEqual(clock.pending(), []);
    assert.equal(sim.mode('sim', 4), 'free');
    assert.equal(src.stats().connected, false);
    clock.advance(100);
    assert.equal(got.length, 1);
    await src.start();
    assert.deepEqual(got[1].values, { button: 1 });
    await src.stop();
  });

  test('start on a taken line rejects with busy; a failing line emits fault', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    sim.hold('sim', 4);
    const src = new GpioInputSource(source(), { backend: sim, clock });
    await assert.rejects(src.start(), isGpio('busy', /held by another program/));
    sim.unhold('sim', 4);
    const faults: KeelError[] = [];
    src.on('fault', (e) => faults.push(e));
    await src.start();
    sim.fail('sim', 4, 'chip vanished');
    assert.equal(faults.length, 1);
    assert.equal(faults[0].code, 'KEEL_E_GPIO');
    assert.match(faults[0].message, /chip vanished/);
    await src.stop();
  });
});

describe('GpioActuator', () => {
  test('opens at its initial level, writes levels, drives the safe level any number of times', async () => {
    const clock = new FakeClock();
    const sim = new SimGpioBackend({ clock });
    const relay = new GpioActuator(actuator({ initial: 1, safe: 0 }), { backend: sim });
    assert.equal(relay.current(), undefined);
    await relay.open();
    assert.equal(sim.get('sim', 20), 1);
    assert.equal(relay.current(), 1);
    await relay.write(false);
    assert.equal(sim.get('sim', 20), 0);
    await relay.write('ON');
    assert.equal(sim.get('sim', 20), 1);
    await relay.safe();
    await relay.safe();
    assert.equal(sim.get('sim', 20), 0);
    assert.equal(relay.current(), 0);
    assert.deepEqual(sim.history('sim', 20).map((h) => h.value), [1, 0, 1, 0]);
    await relay.close();
    await relay.close();
    assert.equal(sim.mode('sim', 20), 'free');
  });

  test('accepts 0/1/true/false, numbers (nonzero is 1) and on/off/1/0; refuses anything else with KEEL_E_ACTUATOR', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock() });
    const led = new GpioActuator(actuator({ name: 'led' }), { backend: sim });
    await led.open();
    const cases: Array<[unknown, number]> = [
      [1, 1], [0, 0], [true, 1], [false, 0], [2.5, 1], [-1, 1], [0.0, 0], ['on', 1], ['off', 0], ['1', 1], ['0', 0], [' Off ', 0], ['high', 1],
    ];
    for (const [v, level] of cases) {
      await led.write(v as never);
      assert.equal(sim.get('sim', 20), level, `write(${JSON.stringify(v)})`);
    }
    for (const bad of ['blink', '', '2', NaN, Infinity, null, {}, []]) {
      await assert.rejects(led.write(bad as never), (e: unknown) => {
        assert.ok(e instanceof DriverError, String(e));
        assert.equal(e.code, 'KEEL_E_ACTUATOR');
        assert.match(e.message, /GPIO actuator "led": cannot drive .*expected 0, 1, true, false/);
        return true;
      });
    }
    assert.equal(toGpioLevel('OFF'), 0);
    assert.equal(toGpioLevel(undefined), undefined);
    await led.close();
  });

  test('safe() before open opens straight at the safe level (no glitch through initial)', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock() });
    const valve = new GpioActuator(actuator({ initial: 1, safe: 0, activeLow: true }), { backend: sim });
    await valve.safe();
    // active low: logical 0 (safe) is a high wire; the wire never went low.
    assert.deepEqual(sim.history('sim', 20).map((h) => h.value), [1]);
    assert.equal(valve.current(), 0);
    await valve.open(); // already open: no change
    assert.deepEqual(sim.history('sim', 20).map((h) => h.value), [1]);
    await valve.write(1);
    assert.equal(sim.get('sim', 20), 0);
    await valve.close();
  });

  test('write before open or after close is refused; open on a busy line rejects with busy', async () => {
    const sim = new SimGpioBackend({ clock: new FakeClock() });
    const a = new GpioActuator(actuator(), { backend: sim });
    await assert.rejects(a.write(1), /KEEL_E_ACTUATOR|not open/);
    await a.open();
    const b = new GpioActuator(actuator({ name: 'other' }), { backend: sim });
    await assert.rejects(b.open(), isGpio('busy', /already opened/));
    await a.close();
    await assert.rejects(a.write(1), (e: unknown) => e instanceof DriverError && e.code === 'KEEL_E_ACTUATOR' && /not open/.test(e.message));
    await b.open(); // the failed open did not leave b stuck
    await b.close();
  });
});

describe('createGpioBackend', () => {
  test('picks the sim or onoff backend from config.gpio', () => {
    const clock = new FakeClock();
    assert.ok(createGpioBackend({ backend: 'sim', sysfsRoot: '/sys/class/gpio' }, clock) instanceof SimGpioBackend);
    assert.ok(createGpioBackend({ backend: 'onoff', sysfsRoot: '/sys/class/gpio' }, clock) instanceof OnoffGpioBackend);
    assert.ok(createGpioBackend(undefined, clock) instanceof OnoffGpioBackend);
    const sim = createGpioBackend({ backend: 'sim' }, clock, { simChips: [{ label: 'bench', lines: 4 }] }) as SimGpioBackend;
    assert.throws(() => sim.get('sim', 0), /chip "sim" not found.*bench/);
    assert.throws(() => createGpioBackend({ backend: 'pigpio' as 'sim' }, clock), /TypeError: config\.gpio\.backend must be "onoff" or "sim"/);
  });
});
