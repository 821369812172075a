import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener, PtyPair, SystemSerialOpener } from '../../drivers/serial/index.ts';
import { FakeClock, SystemClock } from '../../runtime/clock.ts';
import { loadConfigFile, parseConfigText } from '../../runtime/config/load.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { Runtime } from '../../runtime/runtime.ts';
import type { DecisionEvent } from '../../runtime/decisions/rules.ts';
import { requireTool, waitFor } from '../helpers.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-runtime-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const silent = pino({ level: 'silent' });

test('a third-party model (Silero VAD) from config alone: speech in a replayed WAV lights the LED, silence turns it off', async () => {
  const { config, dir: base } = loadConfigFile(path.join(ROOT, 'examples/silero-vad.yaml'));
  const clock = new SystemClock();
  const gpio = new SimGpioBackend({ clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: base, serial: new MockSerialOpener(), gpio, noHttp: true });
  const decisions: DecisionEvent[] = [];
  rt.on('decision', (d) => decisions.push(d));
  const idle = new Promise<void>((r) => rt.once('idle', () => r()));
  await rt.start();
  await idle;
  await rt.settled();
  await rt.stop('test done');
  // The fixture: 1 s silence, ~4.2 s of speech, 1 s silence (tools/make-speech-fixture.sh).
  const enter = decisions.find((d) => d.rule === 'speech' && d.state === 'enter');
  const exit = decisions.findLast((d) => d.rule === 'speech' && d.state === 'exit');
  assert.ok(enter && exit, `decisions: ${JSON.stringify(decisions.map((d) => [d.state, d.t]))}`);
  const t0 = decisions.length ? Math.min(...decisions.map((d) => d.t)) : 0;
  assert.ok(exit.t > enter.t);
  const speechMs = exit.t - enter.t;
  assert.ok(speechMs > 2500 && speechMs < 5500, `speech lasted ${speechMs} ms (t0 ${t0})`);
  const led = gpio.history('sim', 5).map((c) => c.value);
  assert.deepEqual(led.slice(0, 3), [0, 1, 0], `LED history ${JSON.stringify(led)}`);
});

const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);

/** One scan as a CSV line: 32 ranges (m) and the bumper switch. */
function scanLine(range: number, bumper = 0): string {
  return `${RANGES.map((_, i) => (range + 0.01 * Math.sin(i)).toFixed(3)).join(',')},${bumper}\n`;
}

/** A config around the shipped obstacle model (one scan per sample) with a serial CSV source on `port`. */
function obstacleConfig(port: string, extra = ''): string {
  return `
gpio: { backend: sim }
sources:
  - name: lidar
    type: serial
    path: ${port}
    baudRate: 115200
    format: { type: csv, columns: [${RANGES.join(', ')}, bumper] }
    reconnect: { initialMs: 50, maxMs: 200 }
actuators:
  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }
pipelines:
  - name: obstacle
    source: lidar
    window: { size: 1, channels: [${RANGES.join(', ')}] }
    transforms: [{ type: scale, factor: 0.5, offset: -1 }]
    model:
      path: ${OBSTACLE}
      sha256: ${sha256Hex(readFileSync(OBSTACLE))}
      input: scan
      inputs: { scan: { shape: [1, 32] } }
    rules:
      - name: bumped
        when: { sensor: lidar.bumper, above: 0.5 }
        onEnter: [{ actuator: brake, value: 1 }]
        onExit: [{ actuator: brake, value: 0 }]
safety:
  silenceMs: 60000
  healthyForMs: 100
${extra}`;
}

/** The obstacle config with a synthetic source in place of the serial one (replaced in tests by a PushSource). */
function obstacleConfigNoSerial(extra = ''): string {
  return obstacleConfig('/dev/unused', extra).replace(
    /  - name: lidar\n[\s\S]*?reconnect: \{[^}]*\}\n/,
    `  - { name: lidar, type: synthetic, rateHz: 10, channels: { ${[...RANGES, 'bumper'].map((c) => `${c}: [{ kind: constant, value: 1 }]`).join(', ')} } }\n`,
  );
}

const scan = (range: number, bumper = 0) => Object.fromEntries([...RANGES.map((r) => [r, range] as const), ['bumper', bumper] as const]);

test('a socat pseudo-terminal feeds the runtime; garbage is counted; unplug drives the safe state; replug recovers', async (t) => {
  if (!requireTool(t, 'socat', 'apt-get install socat')) return;
  const pair = await PtyPair.start({ dir });
  const config = parseConfigText(obstacleConfig(pair.b), 'obstacle.yaml');
  const clock = new SystemClock();
  const gpio = new SimGpioBackend({ clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new SystemSerialOpener(), gpio, noHttp: true });
  const faults: string[] = [];
  rt.on('fault', (f) => faults.push(f.kind));
  let inferences = 0;
  rt.on('inference', () => inferences++);
  try {
    await rt.start();
    // The sensor end stays open, like a device would: closing a socat pty ends socat.
    const opener = new SystemSerialOpener();
    let sensor = await opener.open({ path: pair.a, baudRate: 115200 });
    sensor.on('error', () => undefined);
    const write = (text: string) => new Promise<void>((resolve, reject) => sensor.write(Buffer.from(text, 'latin1'), (err) => (err ? reject(err) : resolve())));
    let lines = '';
    for (let i = 0; i < 3; i++) lines += scanLine(1.5 + i * 0.1);
    await write(`garbage\x00\xff\xfe line\n${'x'.repeat(5000)}\n1.0,0,extra,columns\n${lines}`);
    // Three scans in one burst: inference takes the newest window when it is busy, so every
    // window is either inferred or counted as dropped, never queued without bound.
    await waitFor(() => {
      const p = rt.snapshot().pipelines[0];
      return p.inferences + p.windowsDropped === 3;
    }, 'three windows from serial data');
    assert.ok(inferences >= 2);
    const stats = rt.snapshot().sources[0];
    assert.ok(stats.dropped >= 3, `dropped ${stats.dropped}`);
    await write(scanLine(1.0, 1));
    await waitFor(() => gpio.get('sim', 3) === 1, 'the bumper rule to brake');
    await write(scanLine(1.0, 0));
    await waitFor(() => gpio.get('sim', 3) === 0, 'the brake to release');

    await pair.stop(); // the USB adapter is unplugged
    await waitFor(() => faults.some((k) => k.startsWith('source-fault')), 'a source fault');
    await waitFor(() => rt.health().status === 'safe', 'the safe state');
    assert.equal(gpio.get('sim', 3), 1, 'the brake is applied in the safe state');
    await sensor.close().catch(() => undefined);
    await pair.restart(); // plugged back in
    sensor = await opener.open({ path: pair.a, baudRate: 115200 });
    sensor.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 300)); // the runtime reopens its end with backoff
    await write(lines);
    await waitFor(() => rt.health().status === 'ok', 'recovery after the port returns', 8000);
    const before = inferences;
    await write(lines);
    await waitFor(() => inferences > before, 'inference after recovery');
    assert.ok(rt.snapshot().sources[0].reconnects >= 1);
    await sensor.close().catch(() => undefined);
  } finally {
    await rt.stop('test done');
    await pair.stop();
  }
});

test('sensor silence on a fake clock: fault, safe state, then automatic recovery when data flows again', async () => {
  const config = parseConfigText(obstacleConfigNoSerial().replace('silenceMs: 60000', 'silenceMs: 500'), 'c.yaml');
  const clock = new FakeClock();
  const gpio = new SimGpioBackend({ clock });
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio, sources: { lidar: push }, noHttp: true });
  const events: string[] = [];
  rt.on('fault', (f) => events.push(`fault:${f.kind}`));
  rt.on('safe', () => events.push('safe'));
  rt.on('recovered', () => events.push('recovered'));
  await rt.start();
  const feed = async (ms: number) => {
    for (let i = 0; i < ms / 10; i++) {
      push.push(scan(1));
      await clock.advanceAsync(10, 10);
    }
  };
  await feed(300);
  assert.equal(rt.health().status, 'ok');
  await clock.advanceAsync(600, 50); // nothing arrives
  assert.ok(events.includes('fault:sensor-silence'), events.join());
  assert.ok(events.includes('safe'));
  assert.equal(gpio.get('sim', 3), 1);
  await feed(50);
  assert.equal(rt.health().status, 'safe', 'still safe until healthy for healthyForMs');
  // Decisions still happen while safe, but their actions are suppressed: the brake stays on.
  const actions: string[] = [];
  rt.on('action', (a) => actions.push(`${a.actuator}=${a.value}:${a.result}`));
  push.push(scan(1, 1));
  await clock.advanceAsync(10, 10);
  push.push(scan(1, 0));
  await clock.advanceAsync(10, 10);
  assert.deepEqual(actions, ['brake=1:suppressed', 'brake=0:suppressed']);
  assert.equal(gpio.get('sim', 3), 1, 'the release was suppressed: the brake holds');
  await feed(300);
  assert.ok(events.includes('recovered'), events.join());
  assert.equal(rt.health().status, 'ok');
  await rt.stop('done');
});

test('a decision drives its actuator, and stop() drives the safe state first', async () => {
  const config = parseConfigText(obstacleConfigNoSerial(), 'c.yaml');
  const clock = new SystemClock();
  const gpio = new SimGpioBackend({ clock });
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio, sources: { lidar: push }, noHttp: true });
  const actions: string[] = [];
  rt.on('action', (a) => actions.push(`${a.actuator}=${a.value}:${a.result}`));
  await rt.start();
  assert.equal(gpio.get('sim', 3), 0);
  push.push(scan(1, 1));
  await rt.settled();
  assert.deepEqual(actions, ['brake=1:ok']);
  await rt.stop('SIGTERM');
  assert.equal(gpio.get('sim', 3), 1);
  assert.equal(rt.health().status, 'stopping');
});

test('Runtime.create reports every model problem at once with config paths', async () => {
  const text = obstacleConfig('/dev/x').replace(/sha256: [0-9a-f]{64}/, `sha256: ${'c'.repeat(64)}`);
  const config = parseConfigText(text + '', 'c.yaml');
  config.pipelines.push({ ...structuredClone(config.pipelines[0]), name: 'second', model: { ...config.pipelines[0].model, path: 'missing.onnx' } });
  const clock = new SystemClock();
  await assert.rejects(
    Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio: new SimGpioBackend({ clock }), noHttp: true }),
    (e: Error & { issues?: { path: string }[] }) => {
      const paths = e.issues?.map((i) => i.path) ?? [];
      assert.deepEqual(paths.sort(), ['pipelines[0].model.sha256', 'pipelines[1].model.path']);
      return true;
    },
  );
});

test('a sensor rule sees the sensor values of the moment its window completed, not of when it ran', async () => {
  const clock = new SystemClock();
  const config = parseConfigText(obstacleConfigNoSerial(), 'obstacle.yaml');
  const gpio = new SimGpioBackend({ clock });
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio, sources: { lidar: push }, noHttp: true });
  const decisions: string[] = [];
  rt.on('decision', (d) => decisions.push(`${d.rule}:${d.state}`));
  await rt.start();
  try {
    // A bumper pulse that lasts one sample, in a burst: the first window is still being inferred
    // when the release arrives. Its rule must still see the bumper pressed.
    push.push(scan(1, 1));
    push.push(scan(1, 0));
    await waitFor(() => rt.snapshot().pipelines[0].inferences === 2, 'both windows inferred');
    await rt.settled();
    assert.deepEqual(decisions, ['bumped:enter', 'bumped:exit']);
  } finally {
    await rt.stop('test done');
  }
});
