import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import type { Actuator, ActuatorValue } from '../../drivers/types.ts';
import { FakeClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { DriverError, KeelError } from '../../runtime/errors.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { Runtime, type ActionEvent } from '../../runtime/runtime.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-actuate-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const silent = pino({ level: 'silent' });
const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);

const CONFIG = `
gpio: { backend: sim }
sources:
  - { name: lidar, type: synthetic, rateHz: 10, channels: { ${[...RANGES, 'bumper'].map((c) => `${c}: [{ kind: constant, value: 1 }]`).join(', ')} } }
actuators:
  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }
  - { name: lamp, type: gpio, line: { chip: sim, offset: 4 }, safe: 0 }
pipelines:
  - name: obstacle
    source: lidar
    window: { size: 1, channels: [${RANGES.join(', ')}] }
    transforms: [{ type: scale, factor: 0.5, offset: -1 }]
    model: { path: ${OBSTACLE}, sha256: ${sha256Hex(readFileSync(OBSTACLE))}, input: scan, inputs: { scan: { shape: [1, 32] } } }
    rules: []
safety: { silenceMs: 60000, healthyForMs: 100, recovery: manual }
`;

/** An actuator whose writes fail (a relay board that stopped answering). */
class BrokenActuator extends EventEmitter implements Actuator {
  readonly name = 'lamp';
  private last: ActuatorValue | undefined;
  async open(): Promise<void> {}
  async write(): Promise<void> {
    throw new DriverError('KEEL_E_ACTUATOR', 'lamp: write timed out');
  }
  async safe(): Promise<void> {
    this.last = 0;
  }
  current(): ActuatorValue | undefined {
    return this.last;
  }
  async close(): Promise<void> {}
}

async function build(actuators?: Record<string, Actuator>) {
  const clock = new FakeClock();
  const gpio = new SimGpioBackend({ clock });
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(parseConfigText(CONFIG, 'c.yaml'), { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio, sources: { lidar: push }, actuators, noHttp: true });
  const actions: ActionEvent[] = [];
  rt.on('action', (a) => actions.push(a));
  return { clock, gpio, push, rt, actions };
}

test('actuate drives a configured output with an origin, and refuses before start', async () => {
  const { gpio, rt, actions } = await build();
  await assert.rejects(rt.actuate('brake', 1, 'command:early'), (e: KeelError) => e.code === 'KEEL_E_ACTUATOR' && /not started/.test(e.message));
  await rt.start();
  assert.equal(gpio.get('sim', 3), 0);
  assert.equal(await rt.actuate('brake', 1, 'command:a1'), 'applied');
  assert.equal(gpio.get('sim', 3), 1);
  assert.deepEqual(
    actions.map((a) => [a.actuator, a.value, a.origin, a.result]),
    [['brake', 1, 'command:a1', 'ok']],
  );
  await assert.rejects(rt.actuate('horn', 1, 'command:x'), (e: Error) => e instanceof RangeError && /no actuator named "horn"/.test(e.message));
  await rt.stop('done');
  await assert.rejects(rt.actuate('brake', 0, 'command:late'), /stopping/);
});

test('actuate is suppressed while the safe state holds, and the output keeps its safe level', async () => {
  const { gpio, push, rt, actions } = await build();
  await rt.start();
  push.emit('fault', new DriverError('KEEL_E_SERIAL_IO', 'lidar unplugged'));
  await new Promise((r) => setImmediate(r));
  assert.equal(rt.health().status, 'safe');
  assert.equal(gpio.get('sim', 3), 1, 'safe level');
  assert.equal(await rt.actuate('brake', 0, 'command:release'), 'suppressed');
  assert.equal(gpio.get('sim', 3), 1, 'the brake holds');
  assert.deepEqual(actions.at(-1), { actuator: 'brake', value: 0, origin: 'command:release', result: 'suppressed', t: actions.at(-1)!.t });
  await rt.stop('done');
});

test('a failing write rejects, is reported as an action failure and drives the safe state', async () => {
  const { rt, actions } = await build({ lamp: new BrokenActuator() });
  const faults: string[] = [];
  rt.on('fault', (f) => faults.push(f.kind));
  await rt.start();
  await assert.rejects(rt.actuate('lamp', 1, 'command:l1'), /write timed out/);
  assert.equal(actions.at(-1)?.result, 'failed');
  assert.match(actions.at(-1)?.error ?? '', /write timed out/);
  assert.deepEqual(faults, ['actuator-failure']);
  assert.equal(rt.health().status, 'safe');
  await rt.stop('done');
});
