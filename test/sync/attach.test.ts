/**
 * startSync as `keel run` uses it: a real runtime (the shipped obstacle model) recording its
 * ledger, synced over the in-memory broker twin to a fleet that cosigns; the birth names the
 * model, telemetry carries the runtime's outputs signed by the ledger key, /metrics shows the
 * sync numbers, commands reach the handler, and stop() leaves an offline status behind.
 */
import assert from 'node:assert/strict';
import fs, { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import { SystemClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { cosign } from '../../runtime/ledger/note.ts';
import { LedgerRecorder } from '../../runtime/ledger/recorder.ts';
import { Runtime } from '../../runtime/runtime.ts';
import { startSync } from '../../runtime/sync/attach.ts';
import { MemoryBroker } from '../../runtime/sync/link.ts';
import { decodeBatch, openEnvelope, TELEMETRY_DOMAIN, type StatusBody, type TelemetryBody } from '../../runtime/sync/wire.ts';
import { fleetKey, silent, tempDir, until } from './fixtures.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);
const dir = tempDir('attach');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('keel run wiring: the ledger syncs as it is recorded, birth names the model, metrics, commands, offline at stop', async () => {
  const fk = fleetKey('fleet.example');
  const config = parseConfigText(
    `
device: { name: bot-7 }
gpio: { backend: sim }
sources:
  - { name: lidar, type: synthetic, rateHz: 10, channels: { ${[...RANGES, 'bumper'].map((c) => `${c}: [{ kind: constant, value: 1 }]`).join(', ')} } }
actuators:
  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }
pipelines:
  - name: obstacle
    source: lidar
    window: { size: 1, channels: [${RANGES.join(', ')}] }
    model: { path: ${OBSTACLE}, sha256: ${sha256Hex(readFileSync(OBSTACLE))}, input: scan, inputs: { scan: { shape: [1, 32] } } }
ledger: { dir: ledger, key: device.key, flushMs: 20 }
sync:
  broker: mqtt://memory
  fleet: "${fk.vkey}"
  reconnect: { initialMs: 20, maxMs: 100 }
`,
    'c.yaml',
  );
  const clock = new SystemClock();
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: dir, serial: new MockSerialOpener(), gpio: new SimGpioBackend({ clock }), sources: { lidar: push }, noHttp: true });
  const key = generateKeyFile(path.join(dir, 'device.key'), { name: 'test.example/bot-7' });
  const rec = await LedgerRecorder.open(config.ledger!, key, 'bot-7', path.join(dir, 'ledger'), clock, silent);
  rec.attach(rt, Buffer.from('config'));
  const mb = new MemoryBroker();
  const status: StatusBody[] = [];
  mb.subscribe('keel/bot-7/status', (m) => status.push(JSON.parse(m.payload.toString())));
  mb.subscribe('keel/+/log', (m) => {
    const note = decodeBatch(m.payload).header.checkpoint;
    mb.publish('keel/bot-7/ack', note + cosign(note.slice(0, note.indexOf('\n\n') + 1), fk, Math.floor(Date.now() / 1000)), true);
  });
  const commands: string[] = [];
  const results: string[] = [];
  mb.subscribe('keel/bot-7/cmd/result', (m) => results.push(m.payload.toString()));
  const handle = await startSync({
    config,
    baseDir: dir,
    runtime: rt,
    ledger: rec.ledger,
    key,
    clock,
    logger: silent,
    connector: mb.connector,
    commands: (client) => async (p) => {
      commands.push(p.toString());
      client.requestSync();
      return Buffer.from('ok');
    },
  });
  await rt.start();
  for (let i = 0; i < 20; i++) {
    push.push(Object.fromEntries([...RANGES.map((r) => [r, 1.5] as const), ['bumper', 0] as const]));
    await rt.settled();
  }
  await until(() => handle.client.deliveredSize >= 22, 'inference records delivered');
  assert.equal(handle.client.stats().ackRejects, 0);
  // Birth: the pinned model, the ledger numbers.
  const birth = status.find((s) => s.online)!;
  assert.deepEqual(birth.models, [{ name: 'obstacle.onnx', sha256: sha256Hex(readFileSync(OBSTACLE)) }]);
  assert.equal(birth.device, 'bot-7');
  assert.equal(handle.telemetry, undefined, 'no telemetry unless everyMs is set');
  // Metrics: the sync numbers are on the runtime's registry.
  const text = await rt.metrics.text();
  assert.match(text, /keel_sync_delivered_records \d+/);
  assert.match(text, /keel_sync_backlog_records \d+/);
  assert.match(text, /keel_sync_connected 1/);
  // A command reaches the handler and its answer is published.
  mb.publish('keel/bot-7/cmd', 'sync please');
  await until(() => results.length === 1, 'command result');
  assert.deepEqual(commands, ['sync please']);
  await rt.stop('test');
  await handle.stop();
  await rec.close();
  const last = status.at(-1)!;
  assert.equal(last.online, false);
  assert.equal(last.bdSeq, birth.bdSeq);
  const saved = JSON.parse(fs.readFileSync(path.join(dir, 'ledger', 'sync.json'), 'utf8'));
  assert.equal(saved.delivered, handle.client.deliveredSize, 'the delivered size is saved at stop');
});

test('telemetry through startSync carries the configured outputs, signed by the ledger key', async () => {
  const fk = fleetKey();
  const sub = tempDir('attach-tel');
  try {
    const config = parseConfigText(
      `
device: { name: bot-8 }
gpio: { backend: sim }
sources:
  - { name: lidar, type: synthetic, rateHz: 10, channels: { ${RANGES.map((c) => `${c}: [{ kind: constant, value: 1 }]`).join(', ')} } }
pipelines:
  - name: obstacle
    source: lidar
    window: { size: 1, channels: [${RANGES.join(', ')}] }
    model: { path: ${OBSTACLE}, sha256: ${sha256Hex(readFileSync(OBSTACLE))}, input: scan, inputs: { scan: { shape: [1, 32] } } }
ledger: { dir: ledger, key: device.key }
sync: { broker: "mqtt://memory", fleet: "${fk.vkey}", telemetry: { everyMs: 30, outputs: [probs] } }
`,
      'c.yaml',
    );
    const clock = new SystemClock();
    const push = new PushSource('lidar', { clock });
    const rt = await Runtime.create(config, { clock, logger: silent, baseDir: sub, serial: new MockSerialOpener(), gpio: new SimGpioBackend({ clock }), sources: { lidar: push }, noHttp: true });
    const key = generateKeyFile(path.join(sub, 'device.key'), { name: 'test.example/bot-8' });
    const rec = await LedgerRecorder.open(config.ledger!, key, 'bot-8', path.join(sub, 'ledger'), clock, silent);
    rec.attach(rt);
    const mb = new MemoryBroker();
    const telemetry: Buffer[] = [];
    mb.subscribe('keel/bot-8/telemetry', (m) => telemetry.push(m.payload));
    const handle = await startSync({ config, baseDir: sub, runtime: rt, ledger: rec.ledger, key, clock, logger: silent, connector: mb.connector });
    await rt.start();
    await until(() => handle.client.isConnected, 'connected');
    push.push(Object.fromEntries(RANGES.map((r) => [r, 1.5] as const)));
    await rt.settled();
    await until(() => telemetry.length >= 1, 'telemetry');
    const { body, signer } = openEnvelope<TelemetryBody>(TELEMETRY_DOMAIN, telemetry[0], [rec.ledger.vkey!]);
    assert.equal(signer.name, 'test.example/bot-8');
    assert.deepEqual(Object.keys(body.values).sort(), ['obstacle.probs.0', 'obstacle.probs.1', 'obstacle.probs.2']);
    const sum = Object.values(body.values).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - 1) < 1e-3, `softmax outputs sum to 1 (${sum})`);
    await rt.stop('test');
    await handle.stop();
    await rec.close();
  } finally {
    fs.rmSync(sub, { recursive: true, force: true });
  }
});
