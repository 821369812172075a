import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../runtime/clock.ts';
import type { RuleConfig } from '../../runtime/config/schema.ts';
import { RuleEngine, type DecisionEvent, type DecisionInput, type RuleIssue } from '../../runtime/decisions/rules.ts';

type RuleSpec = Omit<Partial<RuleConfig>, 'when'> & { when: Partial<RuleConfig['when']> };

/** A rule with the schema defaults applied, as the config loader would produce it. */
function rule(spec: RuleSpec): RuleConfig {
  return {
    name: 'r',
    cooldownMs: 0,
    onEnter: [{ actuator: 'led', value: 1 }],
    onExit: [{ actuator: 'led', value: 0 }],
    ...spec,
    when: { index: 0, hysteresis: 0, ...spec.when },
  } as RuleConfig;
}

const T0 = 1_700_000_000_000;

/** Drives one engine with output `score` (or a sensor) values, one evaluation per entry. */
function harness(rules: RuleConfig[], opts: { outputSizes?: Record<string, number>; onIssue?: (i: RuleIssue) => void } = {}) {
  const clock = new FakeClock(T0);
  const engine = new RuleEngine(rules, { clock, ...opts });
  let t = T0;
  return {
    engine,
    clock,
    /** Evaluates with output score = [v] at time t (advanced by `dt` ms per call by default). */
    score(v: number | number[] | undefined, dt = 100): DecisionEvent[] {
      t += dt;
      const outputs: DecisionInput['outputs'] = v === undefined ? {} : { score: Array.isArray(v) ? v : [v] };
      return engine.evaluate({ pipeline: 'p', t, outputs, sensors: {} });
    },
    sensor(v: number | undefined, dt = 100): DecisionEvent[] {
      t += dt;
      return engine.evaluate({ pipeline: 'p', t, outputs: {}, sensors: v === undefined ? {} : { 'imu.ax': v } });
    },
    at(): number {
      return t;
    },
  };
}

/** Feeds values and returns the state ('E'nter/'X'it/'.') produced by each evaluation. */
function trace(step: (v: number) => DecisionEvent[], values: number[]): string {
  return values.map((v) => {
    const ev = step(v);
    assert.ok(ev.length <= 1);
    return ev.length === 0 ? '.' : ev[0].state === 'enter' ? 'E' : 'X';
  }).join('');
}

test('threshold above: strict entry, hysteresis exit at the boundary', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.75, hysteresis: 0.25 } })]);
  // 0.75 is not above 0.75; 0.76 enters; 0.6 and 0.51 stay (> 0.5); 0.5 exits (not > 0.5).
  assert.equal(trace((v) => h.score(v), [0.75, 0.76, 0.6, 0.51, 0.5, 0.6, 0.75, 0.7500001]), '.E..X..E');
  assert.deepEqual(h.engine.states(), { r: true });
  assert.deepEqual(h.engine.stats().r, { enters: 2, exits: 1, suppressed: 0, unknown: 0 });
});

test('threshold above with hysteresis 0 is a plain strict comparison', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 } })]);
  assert.equal(trace((v) => h.score(v), [0.5, 0.51, 0.5, 0.51, 0.49]), '.EXEX');
});

test('threshold below and band, with hysteresis on both edges', () => {
  const below = harness([rule({ when: { sensor: 'imu.ax', below: 10, hysteresis: 2 } })]);
  // enters < 10, stays while < 12, exits at 12.
  assert.equal(trace((v) => below.sensor(v), [10, 9.5, 11.9, 12, 11]), '.E.X.');

  const band = harness([rule({ when: { output: 'score', above: 2, below: 4, hysteresis: 1 } })]);
  // enters inside (2, 4); stays inside (1, 5); exits at or past 1 and 5.
  // 2 no, 4 no, 3 E, 1.5 stays, 4.9 stays, 5 X, 3 E, 1 X, 4 no, 3.9 E, -7 X
  assert.equal(trace((v) => band.score(v), [2, 4, 3, 1.5, 4.9, 5, 3, 1, 4, 3.9, -7]), '..E..XEX.EX');
});

test('the tested value and the onEnter/onExit actions come with each event', () => {
  const h = harness([rule({ name: 'hot', when: { output: 'score', index: 2, above: 1 } })]);
  const [enter] = h.score([0, 0, 3.5]);
  assert.deepEqual(enter, { rule: 'hot', pipeline: 'p', state: 'enter', t: h.at(), value: 3.5, actions: [{ actuator: 'led', value: 1 }] });
  const [exit] = h.score([9, 9, 0.5]);
  assert.equal(exit.state, 'exit');
  assert.equal(exit.value, 0.5);
  assert.deepEqual(exit.actions, [{ actuator: 'led', value: 0 }]);
  // Mutating an event's actions must not change the configured ones.
  exit.actions[0].value = 99;
  assert.deepEqual(h.score([0, 0, 3])[0].actions, [{ actuator: 'led', value: 1 }]);
});

test('debounce count: N consecutive agreeing evaluations for entry and for exit', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, debounce: { count: 3 } })]);
  // Two highs then a low reset the streak; three highs enter on the third.
  assert.equal(trace((v) => h.score(v), [0.9, 0.9, 0.1, 0.9, 0.9, 0.9]), '.....E');
  // Exit likewise needs three lows; an interleaved high resets the streak.
  assert.equal(trace((v) => h.score(v), [0.1, 0.1, 0.9, 0.1, 0.1, 0.1]), '.....X');
});

test('debounce ms: the condition must hold continuously for the time, timed by input t', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, debounce: { ms: 250 } })]);
  assert.equal(h.score(0.9, 100).length, 0); // first high at +100: timing starts here
  assert.equal(h.score(0.9, 100).length, 0); // held 100 ms
  assert.equal(h.score(0.9, 100).length, 0); // held 200 ms
  assert.equal(h.score(0.9, 49).length, 0); // held 249 ms
  assert.equal(h.score(0.9, 1)[0]?.state, 'enter'); // held 250 ms
  // A single low in between restarts the timing for the exit.
  assert.equal(h.score(0.1, 200).length, 0);
  assert.equal(h.score(0.9, 100).length, 0);
  assert.equal(h.score(0.1, 100).length, 0); // timing restarts here
  assert.equal(h.score(0.1, 200).length, 0);
  assert.equal(h.score(0.1, 50)[0]?.state, 'exit');
});

test('debounce count and ms together: both must be met', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, debounce: { count: 2, ms: 1000 } })]);
  assert.equal(h.score(0.9, 10).length, 0);
  assert.equal(h.score(0.9, 10).length, 0); // count met, 10 ms held
  assert.equal(h.score(0.9, 989).length, 0); // 999 ms held
  assert.equal(h.score(0.9, 1)[0]?.state, 'enter');
  // Time alone is not enough either: one low evaluation after a long gap is count 1.
  assert.equal(h.score(0.1, 5000).length, 0);
  assert.equal(h.score(0.1, 1).length, 0); // count 2 but only 1 ms
  assert.equal(h.score(0.1, 999)[0]?.state, 'exit');
});

test('debounce ms restarts when input time goes backwards (clock set back)', () => {
  const clock = new FakeClock(T0);
  const engine = new RuleEngine([rule({ when: { output: 'score', above: 0.5 }, debounce: { ms: 100 } })], { clock });
  const ev = (t: number, v: number) => engine.evaluate({ pipeline: 'p', t, outputs: { score: [v] }, sensors: {} });
  assert.equal(ev(T0 + 1000, 0.9).length, 0);
  assert.equal(ev(T0, 0.9).length, 0); // went back 1 s: timing restarts at T0
  assert.equal(ev(T0 + 99, 0.9).length, 0);
  assert.equal(ev(T0 + 100, 0.9)[0]?.state, 'enter');
});

test('cooldown: re-entry is blocked, counted once per episode, then allowed', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, cooldownMs: 1000 })]);
  assert.equal(h.score(0.9, 100)[0]?.state, 'enter'); // entry at +100
  assert.equal(h.score(0.1, 100)[0]?.state, 'exit');
  assert.equal(h.score(0.9, 100).length, 0); // +300: blocked
  assert.equal(h.score(0.9, 100).length, 0); // +400: still the same blocked episode
  assert.equal(h.engine.stats().r.suppressed, 1);
  assert.equal(h.score(0.1, 100).length, 0); // episode ends
  assert.equal(h.score(0.9, 100).length, 0); // +600: blocked again: a second episode
  assert.equal(h.engine.stats().r.suppressed, 2);
  assert.deepEqual(h.engine.states(), { r: false });
  // Still high when the cooldown has elapsed (+1100): enters then.
  assert.equal(h.score(0.9, 400).length, 0); // +1000: 900 ms since entry
  assert.equal(h.score(0.9, 100)[0]?.state, 'enter'); // +1100: 1000 ms since entry
  assert.deepEqual(h.engine.stats().r, { enters: 2, exits: 1, suppressed: 2, unknown: 0 });
});

test('cooldown does not delay exits', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, cooldownMs: 60_000 })]);
  assert.equal(trace((v) => h.score(v), [0.9, 0.1]), 'EX');
});

test('class test: argmax label, is-set, minScore with hysteresis', () => {
  const labels = ['silence', 'speech', 'music'];
  const h = harness([rule({ name: 'talk', when: { output: 'score', labels, is: ['speech'], minScore: 0.6, hysteresis: 0.2 } })]);
  assert.equal(h.score([0.9, 0.05, 0.05]).length, 0); // silence
  assert.equal(h.score([0.45, 0.55, 0]).length, 0); // speech but below minScore
  const [e] = h.score([0.3, 0.6, 0.1]); // speech at exactly minScore: enters
  assert.equal(e.state, 'enter');
  assert.equal(e.label, 'speech');
  assert.equal(e.value, 0.6);
  assert.equal(h.score([0.1, 0.45, 0.45]).length, 0); // tie: first index (speech) wins, 0.45 >= 0.4 stays
  assert.equal(h.score([0.3, 0.41, 0.29]).length, 0); // >= 0.4: stays
  const [x] = h.score([0.2, 0.39, 0.41]); // music wins: exits
  assert.equal(x.state, 'exit');
  assert.equal(x.label, 'music');
  assert.equal(h.score([0, 0.7, 0])[0]?.state, 'enter');
  assert.equal(h.score([0, 0.39, 0.3])[0]?.state, 'exit'); // speech but under minScore - hysteresis
});

test('class test without minScore: any argmax in the set', () => {
  const h = harness([rule({ when: { output: 'score', labels: ['a', 'b', 'c'], is: ['b', 'c'] } })]);
  assert.equal(trace((v) => h.score([v, 0.5, 0.4]), [0.9, 0.1, 0.3, 0.6]), '.E.X');
});

test('class test with an output of the wrong length: one issue, counted unknown, never enters', () => {
  const issues: RuleIssue[] = [];
  const h = harness([rule({ name: 'cls', when: { output: 'score', labels: ['a', 'b'], is: ['b'] } })], { onIssue: (i) => issues.push(i) });
  assert.equal(h.score([0, 1, 0]).length, 0);
  assert.equal(h.score([0, 1, 0]).length, 0);
  assert.equal(issues.length, 1);
  assert.match(issues[0].message, /has 3 elements but the class test has 2 labels/);
  assert.deepEqual(h.engine.issues(), issues);
  assert.equal(h.engine.stats().cls.unknown, 2);
  assert.deepEqual(h.engine.states(), { cls: false });
});

test('outputSizes checks labels and indices at construction, every problem at once', () => {
  const clock = new FakeClock();
  assert.throws(
    () =>
      new RuleEngine(
        [
          rule({ name: 'a', when: { output: 'score', labels: ['x', 'y'], is: ['y'] } }),
          rule({ name: 'b', when: { output: 'score', index: 3, above: 1 } }),
          rule({ name: 'c', when: { output: 'nope', above: 1 } }),
        ],
        { clock, outputSizes: { score: 3 } },
      ),
    (err: Error) => {
      assert.ok(err instanceof TypeError);
      assert.match(err.message, /rules\[0\]\.when\.labels: 2 labels for output "score" of 3 elements/);
      assert.match(err.message, /rules\[1\]\.when\.index: index 3 is out of range/);
      assert.match(err.message, /rules\[2\]\.when\.output: the model has no output "nope"/);
      return true;
    },
  );
  // Matching sizes construct fine.
  new RuleEngine([rule({ when: { output: 'score', labels: ['x', 'y', 'z'], is: ['y'] } })], { clock, outputSizes: { score: 3 } });
});

test('invalid rules are rejected with their paths', () => {
  const clock = new FakeClock();
  const cases: [RuleSpec, RegExp][] = [
    [{ when: { above: 1 } }, /rules\[0\]\.when: give exactly one of output or sensor/],
    [{ when: { output: 's', sensor: 'a.b', above: 1 } }, /exactly one of output or sensor/],
    [{ when: { output: 's' } }, /give a threshold .* or a class test/],
    [{ when: { output: 's', above: 1, labels: ['a'], is: ['a'] } }, /not both or neither/],
    [{ when: { output: 's', labels: ['a'], is: ['b'] } }, /rules\[0\]\.when\.is\[0\]: "b" is not one of the labels/],
    [{ when: { output: 's', above: 5, below: 5 } }, /above \(5\) must be less than below \(5\)/],
    [{ when: { output: 's', above: Number.NaN } }, /when\.above: expected a finite number/],
    [{ when: { output: 's', above: 1, hysteresis: -1 } }, /hysteresis: expected a finite number >= 0/],
    [{ when: { output: 's', above: 1, index: 1.5 } }, /index: expected an integer >= 0/],
    [{ when: { output: 's', above: 1 }, debounce: { count: 0 } }, /debounce\.count: expected an integer >= 1/],
    [{ when: { sensor: 'a.b', labels: ['a'], is: ['a'] } }, /class tests apply to model outputs/],
  ];
  for (const [spec, re] of cases) assert.throws(() => new RuleEngine([rule(spec)], { clock }), re, JSON.stringify(spec));
  assert.throws(() => new RuleEngine([rule({ when: { output: 's', above: 1 } }), rule({ when: { output: 's', above: 2 } })], { clock }), /duplicate rule name "r"/);
  assert.throws(() => new RuleEngine('nope' as never, { clock }), TypeError);
  assert.throws(() => new RuleEngine([], {} as never), /options\.clock/);
});

test('missing and NaN values are unknown: no crash, no state change, streak broken', () => {
  const h = harness([rule({ when: { sensor: 'imu.ax', above: 1 }, debounce: { count: 2 } })]);
  assert.equal(h.sensor(undefined).length, 0);
  assert.equal(h.sensor(Number.NaN).length, 0);
  assert.equal(h.sensor(5).length, 0); // streak 1
  assert.equal(h.sensor(undefined).length, 0); // unknown breaks the streak
  assert.equal(h.sensor(5).length, 0); // streak 1 again
  assert.equal(h.sensor(5)[0]?.state, 'enter');
  assert.equal(h.sensor(Number.NaN).length, 0); // stays active
  assert.equal(h.sensor(undefined).length, 0);
  assert.deepEqual(h.engine.states(), { r: true });
  assert.equal(h.engine.stats().r.unknown, 5);
  // Infinity is a real comparison, not unknown.
  assert.equal(h.sensor(Number.NEGATIVE_INFINITY).length, 0);
  assert.equal(h.sensor(Number.NEGATIVE_INFINITY)[0]?.state, 'exit');
});

test('missing output, out-of-range index, NaN element and a NaN in a class output are unknown', () => {
  const issues: RuleIssue[] = [];
  const h = harness(
    [rule({ name: 'th', when: { output: 'score', index: 1, above: 0.5 } }), rule({ name: 'cls', when: { output: 'score', labels: ['a', 'b'], is: ['b'] } })],
    { onIssue: (i) => issues.push(i) },
  );
  h.score(undefined); // no output at all: both unknown, issue once each
  h.score([0.9]); // th: index out of range; cls: wrong length
  h.score([0.9, Number.NaN]); // th: NaN; cls: NaN element
  assert.deepEqual(h.engine.stats().th.unknown, 3);
  assert.deepEqual(h.engine.stats().cls.unknown, 3);
  assert.deepEqual(issues.map((i) => i.rule), ['th', 'cls']);
  assert.match(issues[0].message, /produced no output "score"/);
  // Typed arrays work like arrays.
  assert.equal(h.score(Array.from(new Float32Array([0, 0.9])))[0]?.rule, 'th');
  assert.equal(h.engine.evaluate({ pipeline: 'p', t: h.at() + 1, outputs: { score: new Float32Array([0.1, 0.1]) }, sensors: {} })[0]?.state, 'exit');
});

test('bad inputs throw a TypeError naming the field', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 } })]);
  assert.throws(() => h.engine.evaluate(null as never), /input must be/);
  assert.throws(() => h.engine.evaluate({ pipeline: 'p', t: Number.NaN, outputs: {}, sensors: {} }), /input\.t/);
  assert.throws(() => h.engine.evaluate({ pipeline: 'p', t: 1, outputs: null as never, sensors: {} }), /input\.outputs/);
  assert.throws(() => h.engine.evaluate({ pipeline: 'p', t: 1, outputs: {}, sensors: undefined as never }), /input\.sensors/);
});

test('several rules evaluate independently, in configuration order', () => {
  const h = harness([
    rule({ name: 'low', when: { output: 'score', below: 0.2 } }),
    rule({ name: 'high', when: { output: 'score', above: 0.8 } }),
  ]);
  assert.deepEqual(h.score(0.1).map((e) => `${e.rule}:${e.state}`), ['low:enter']);
  assert.deepEqual(h.score(0.9).map((e) => `${e.rule}:${e.state}`), ['low:exit', 'high:enter']);
  assert.deepEqual(h.engine.states(), { low: false, high: true });
});

test('reset puts every rule inactive without events, keeps counters and cooldowns', () => {
  const h = harness([rule({ when: { output: 'score', above: 0.5 }, cooldownMs: 1000, debounce: { count: 2 } })]);
  assert.equal(trace((v) => h.score(v), [0.9, 0.9]), '.E');
  h.clock.advance(5);
  h.engine.reset();
  assert.equal(h.engine.lastReset(), T0 + 5);
  assert.deepEqual(h.engine.states(), { r: false });
  assert.equal(h.engine.stats().r.enters, 1);
  // Still high: needs the full debounce again, and the cooldown from the last entry holds.
  assert.equal(h.score(0.9, 100).length, 0); // streak 1
  assert.equal(h.score(0.9, 100).length, 0); // streak 2, but within the cooldown
  assert.equal(h.engine.stats().r.suppressed, 1);
  assert.equal(h.score(0.9, 800)[0]?.state, 'enter'); // 1000 ms after the first entry
});
