/**
 * The TypeScript policy example (examples/policy/) run by the real runtime in-process, on
 * simulated GPIO: its decisions reach the GPIO lines, and a policy that hangs is a fault that
 * drives the safe state while the runtime keeps running.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import { FakeClock, SystemClock, type Clock } from '../../runtime/clock.ts';
import { loadConfigFile } from '../../runtime/config/load.ts';
import { Runtime, type ActionEvent } from '../../runtime/runtime.ts';
import type { Fault } from '../../runtime/safety.ts';
import { waitFor } from '../helpers.ts';
import { ROOT } from './keel-process.ts';

const EXAMPLE = path.join(ROOT, 'examples/policy/obstacle-policy.yaml');
const HANG = path.join(ROOT, 'test/fixtures/configs/policies/hang.ts');
const DRIVE = 22; // sim line of drive_enable
const SLOW = 23; // sim line of slow_mode
const silent = pino({ level: 'silent' });

async function build(clock: Clock, policyModule?: string) {
  const { config, dir } = loadConfigFile(EXAMPLE);
  if (policyModule) config.pipelines[0].policy!.module = policyModule;
  const gpio = new SimGpioBackend({ clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio, noHttp: true });
  const faults: Fault[] = [];
  const actions: ActionEvent[] = [];
  rt.on('fault', (f) => faults.push(f));
  rt.on('action', (a) => actions.push(a));
  return { rt, gpio, faults, actions };
}

/** Level changes of a sim line as [seconds since start (0.1 s resolution), level]. */
function changes(gpio: SimGpioBackend, line: number, t0: number): [number, number][] {
  return gpio.history('sim', line).map((c) => [Math.round((c.t - t0) / 100) / 10, c.value]);
}

test('the example policy combines the obstacle vote with the commanded speed, and its actions reach the GPIO lines', async () => {
  // Fake time: 31 s of the scenario run in about a second. Time moves in steps of the
  // sources' 10 ms batch timer, and each step waits for the inference and the policy call it
  // started, so the watchdog's overrun timer (fake time) never runs ahead of real work.
  const clock = new FakeClock();
  const t0 = clock.now();
  const { rt, gpio, faults, actions } = await build(clock);
  await rt.start();
  try {
    for (let ms = 0; ms < 31_000; ms += 10) {
      clock.advance(10);
      await rt.settled();
    }
    const drive = changes(gpio, DRIVE, t0);
    const slow = changes(gpio, SLOW, t0);
    const scene = `drive_enable ${JSON.stringify(drive)}\nslow_mode ${JSON.stringify(slow)}\nfaults ${JSON.stringify(faults)}`;
    assert.deepEqual(faults, [], scene);
    assert.equal(rt.health().status, 'ok', scene);
    // The scanner loops every 15 s: clear, a box ahead (near), a bin in the way (blocked).
    // The commanded speed is 0.4 m/s for the first 15 s, then 1.2 m/s.
    assert.deepEqual(drive.map(([, v]) => v), [1, 0, 1, 0, 1], scene);
    assert.deepEqual(slow.map(([, v]) => v), [0, 1, 0, 1, 0], scene);
    const near = (t: number, from: number) => t >= from && t <= from + 0.6; // the vote takes 2-3 scans
    // At 0.4 m/s a box ahead only slows the robot; the drive stops when the way is blocked.
    assert.ok(near(slow[1][0], 5), scene);
    assert.ok(near(drive[1][0], 10), scene);
    // Clear again: drive on, slow mode off.
    assert.ok(near(drive[2][0], 15) && near(slow[2][0], 15), scene);
    // At 1.2 m/s the robot cannot brake within the 0.7 m before the blocked zone: the same
    // "near" scene now stops it at once, something no single rule could decide.
    assert.ok(near(drive[3][0], 20) && near(slow[3][0], 20), scene);
    assert.ok(near(drive[4][0], 30) && near(slow[4][0], 30), scene);
    // Every write came from the policy and was applied.
    assert.ok(actions.length > 500, `${actions.length} actions`);
    for (const a of actions) assert.deepEqual([a.origin, a.result], ['path-ahead/policy', 'ok']);
    assert.equal(rt.snapshot().pipelines[0].decisions, 0, 'no rules in this config: the policy alone decides');
  } finally {
    await rt.stop('test done');
  }
  assert.equal(gpio.get('sim', DRIVE), 0, 'stopping drives the safe state');
});

test('a policy that hangs is a policy-failure fault: the safe state is driven and the runtime keeps running', async () => {
  // Real time: the policy's 50 ms budget must expire while its worker spins.
  const clock = new SystemClock();
  const { rt, gpio, faults, actions } = await build(clock, HANG);
  await rt.start();
  try {
    await waitFor(() => faults.some((f) => f.kind === 'policy-failure'), 'a policy-failure fault', 10_000);
    const fault = faults.find((f) => f.kind === 'policy-failure')!;
    assert.equal(fault.pipeline, 'path-ahead');
    assert.match(fault.detail, /path-ahead: .*50 ms/, fault.detail);
    await waitFor(() => rt.health().status === 'safe', 'the safe state');
    assert.equal(gpio.get('sim', DRIVE), 0, 'drive_enable at its safe level');
    assert.equal(gpio.get('sim', SLOW), 1, 'slow_mode at its safe level');
    // The runtime is not stalled behind the spinning policy: scans keep being inferred.
    const before = rt.snapshot().pipelines[0].inferences;
    await waitFor(() => rt.snapshot().pipelines[0].inferences >= before + 5, 'inferences to continue after the fault', 5000);
    assert.ok(faults.every((f) => f.kind === 'policy-failure'), JSON.stringify(faults));
    assert.ok(actions.every((a) => a.origin !== 'path-ahead/policy'), 'a hung policy never acted');
  } finally {
    await rt.stop('test done');
  }
  assert.equal(gpio.get('sim', DRIVE), 0);
});
