/**
 * The bridge inside the runtime, from config alone: a bridge source (motor current and
 * commanded duty from the MCU's ADC) feeds the shipped motor-stall model, whose decision
 * drives a bridge actuator (the motor's PWM output) on the same link; the loop closes
 * through a simulated motor on the simulated MCU. Then the link is lost: a watchdog fault,
 * the safe state, the MCU's own failsafe; and it comes back: recovery.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { FakeClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { Runtime } from '../../runtime/runtime.ts';
import type { Fault } from '../../runtime/safety.ts';
import type { DecisionEvent } from '../../runtime/decisions/rules.ts';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { BridgeHub } from '../../firmware-bridge/hub.ts';
import { DuplexOpener, duplexPair } from '../../firmware-bridge/duplex-link.ts';
import { SimMcu } from '../../firmware-bridge/sim-mcu.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const silent = pino({ level: 'silent' });

const CONFIG = `
gpio: { backend: sim }
http: { enabled: false }
sources:
  - name: motor
    type: bridge
    path: /dev/ttyACM-sim
    baudRate: 115200
    linkTimeoutMs: 500
    channels:
      - {mcuChannel: 0, name: current, rateHz: 100, scale: 0.01}   # ACS712-like: 10 mA per count
      - {mcuChannel: 1, name: command, rateHz: 100, scale: 0.001}  # duty read back, 0..1000
actuators:
  - {name: drive, type: bridge, path: /dev/ttyACM-sim, output: 0, safeValue: 0}
  - {name: lamp, type: bridge, path: /dev/ttyACM-sim, output: 1}
pipelines:
  - name: stall-guard
    source: motor
    window: {size: 10, hop: 10, channels: [current, command]}
    transforms: [{type: normalize, mean: [2, 0.6], std: [2, 0.3]}]
    model:
      path: ${path.join(ROOT, 'models/motor-stall.onnx')}
      sha256: 165b1121e1e195290d003d3262d376761a5a0073500a33c447f5d7057b46734f
      input: x
      inputs: {x: {shape: [1, 20], dtype: float32}}
      outputs: [stall]
      state: [{input: h_in, output: h_out, shape: [1, 16], dtype: float32, initial: 0}]
    rules:
      - name: stall
        when: {output: stall, above: 0.7, hysteresis: 0.4}
        debounce: {count: 3}
        onEnter: [{actuator: drive, value: 0}, {actuator: lamp, value: 1}]
        onExit: [{actuator: lamp, value: 0}]
    watchdog: {silenceMs: 2000, overrunMs: 1000}
safety:
  safeState: [{actuator: drive, value: 0}]
  recovery: auto
  healthyForMs: 1000
`;

test('config with a bridge source and actuators closes a loop through the shipped motor-stall model; link loss is a fault', async () => {
  const config = parseConfigText(CONFIG, 'bridge.yaml');
  const clock = new FakeClock();
  // The MCU: a 12 V motor on PWM output 0 (duty = value / 255), its current on ADC 0,
  // the duty read back on ADC 1 (0..1000); a jam makes the current climb to stall current.
  const mcu = new SimMcu({ clock, outputs: [{ pin: 9, kind: 1, safeValue: 0 }, { pin: 13, kind: 0, safeValue: 0 }] });
  let jamSinceUs: number | null = null;
  mcu.setInput(0, (tUs) => {
    const duty = mcu.output(0) / 255;
    if (duty === 0) return 2;
    const running = 100 * (duty / 0.7); // 1.0 A at duty 0.7
    const stalled = 480 * (duty / 0.7); // 4.8 A
    const noise = 5 * Math.sin(tUs / 7e3);
    if (jamSinceUs === null) return running + noise;
    const k = Math.min(1, (tUs - jamSinceUs) / 1.5e6);
    return running + (stalled - running) * k + noise;
  });
  mcu.setInput(1, () => (mcu.output(0) / 255) * 1000);
  const opener = new DuplexOpener((opts) => {
    assert.equal(opts.path, '/dev/ttyACM-sim');
    const [host, dev] = duplexPair();
    mcu.attach(dev);
    return host;
  });
  const hub = new BridgeHub({ opener, clock });
  const gpio = new SimGpioBackend({ clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: ROOT, serial: opener, gpio, bridges: hub, noHttp: true });
  const decisions: DecisionEvent[] = [];
  const faults: Fault[] = [];
  const events: string[] = [];
  rt.on('decision', (d) => decisions.push(d));
  const stallP: number[] = [];
  rt.on('inference', (i) => stallP.push(Number(i.outputs.stall![0]!.toFixed(2))));
  rt.on('fault', (f) => faults.push(f));
  rt.on('safe', () => events.push('safe'));
  rt.on('recovered', () => events.push('recovered'));
  const lamp: number[] = [];
  mcu.on('output', (i, v) => i === 1 && lamp.push(v));
  const run = async (ms: number) => {
    for (let t = 0; t < ms; t += 50) {
      await clock.advanceAsync(50, 10);
      await rt.settled();
    }
  };
  await rt.start();
  try {
    assert.deepEqual(hub.paths(), ['/dev/ttyACM-sim'], 'one link for the source and both actuators');
    await run(300);
    const session = hub.session('/dev/ttyACM-sim')!;
    assert.equal(session.state, 'established');
    // Start the motor (an operator would; here straight on the link).
    await session.set(0, 178);
    await run(3000);
    assert.equal(rt.health().status, 'ok', JSON.stringify(faults));
    assert.ok(!decisions.some((d) => d.state === 'enter'), 'no stall while running');
    assert.equal(mcu.output(0), 178);

    // A jam: the model sees the stall, the decision cuts the drive over the bridge.
    jamSinceUs = mcu.nowUs();
    await run(4000);
    const stall = decisions.find((d) => d.rule === 'stall' && d.state === 'enter');
    assert.ok(stall, `decisions: ${JSON.stringify(decisions.map((d) => d.state))}, p(stall): ${stallP.join(' ')}, faults ${JSON.stringify(faults)}`);
    assert.equal(mcu.output(0), 0, 'drive cut');
    // The loop closes: with the drive cut the current falls, the stall clears, the lamp goes off.
    assert.deepEqual(lamp, [1, 0]);
    assert.ok(decisions.some((d) => d.rule === 'stall' && d.state === 'exit'));
    assert.equal(rt.health().status, 'ok');

    // The MCU stops answering: link lost -> watchdog fault -> safe state; the MCU fails safe itself.
    mcu.faults.silent = true;
    await run(1500);
    const linkFault = faults.find((f) => f.kind.startsWith('source-fault'));
    assert.ok(linkFault, JSON.stringify(faults));
    assert.match(linkFault.detail, /motor: .*went silent|motor: .*does not answer/);
    assert.ok(events.includes('safe'));
    assert.equal(rt.health().status, 'safe');
    assert.ok(mcu.failsafe);
    assert.deepEqual(mcu.outputs(), [0, 0]);
    const drive = rt.health().lastDrive as { failures: { actuator: string; error: string }[] };
    assert.ok(drive.failures.some((f) => f.actuator === 'drive' && /link .* down/.test(f.error)), JSON.stringify(drive));

    // It answers again: handshake, channels configured again, samples, automatic recovery.
    mcu.faults.silent = false;
    await run(7000);
    assert.equal(session.state, 'established');
    assert.ok(events.includes('recovered'), events.join());
    assert.equal(rt.health().status, 'ok');
    assert.equal(mcu.rateOf(0), 100);
    assert.ok(session.stats().handshakes >= 2);
  } finally {
    await rt.stop('test done');
    mcu.stop();
  }
  // Stopping released the shared link.
  assert.deepEqual(hub.paths(), []);
});

test('a bridge config with problems is refused with every problem and its path', () => {
  const bad = CONFIG.replace('output: 1}', 'output: 0}')
    .replace('{mcuChannel: 1, name: command', '{mcuChannel: 1, name: current')
    .replace("  - {name: drive, type: bridge, path: /dev/ttyACM-sim, output: 0, safeValue: 0}", "  - {name: drive, type: bridge, path: /dev/ttyACM-sim, baudRate: 9600, output: 0, safeValue: 300}");
  assert.throws(
    () => parseConfigText(bad, 'bad.yaml'),
    (e: Error & { issues?: { path: string; message: string }[] }) => {
      const paths = (e.issues ?? []).map((i) => i.path);
      assert.ok(paths.includes('actuators[0].safeValue'), paths.join());
      return true;
    },
  );
  const bad2 = CONFIG.replace('output: 1}', 'output: 0}')
    .replace('{mcuChannel: 1, name: command', '{mcuChannel: 1, name: current')
    .replace('path: /dev/ttyACM-sim, output: 0, safeValue: 0}', 'path: /dev/ttyACM-sim, baudRate: 9600, output: 0, safeValue: 0}');
  assert.throws(
    () => parseConfigText(bad2, 'bad.yaml'),
    (e: Error & { issues?: { path: string; message: string }[] }) => {
      const byPath = Object.fromEntries((e.issues ?? []).map((i) => [i.path, i.message]));
      assert.match(byPath['sources[0].channels[1].name'] ?? '', /duplicate channel name "current"/);
      assert.match(byPath['actuators[0].baudRate'] ?? '', /9600 differs from the 115200 baud of sources\[0\]/);
      assert.match(byPath['actuators[1].output'] ?? '', /already driven by actuators\[0\]/);
      return true;
    },
  );
});
