import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import { cmdConsole } from '../../fleet/console.ts';
import type { FleetDb } from '../../fleet/db.ts';
import { SystemClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { verifierKey } from '../../runtime/ledger/note.ts';
import { LedgerRecorder } from '../../runtime/ledger/recorder.ts';
import { Runtime } from '../../runtime/runtime.ts';
import { createCommandHandler } from '../../runtime/sync/commands.ts';
import { COMMAND_DOMAIN, RESULT_DOMAIN, TELEMETRY_DOMAIN, deviceTopics, openEnvelope, sealEnvelope, type CommandBody, type TelemetryBody } from '../../runtime/sync/wire.ts';
import { captureIo, enroll, makeFleetState } from './console-fixture.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);
const silent = pino({ level: 'silent' });
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-console-mqtt-'));
const state = path.join(tmp, 'state');
const topics = deviceTopics('keel', 'bot-1');

const deviceKey = generateKeyFile(path.join(tmp, 'bot-1.key'), { name: 'fleet.example/bot-1' });
const deviceSigning = { name: 'fleet.example/bot-1', privateKey: deviceKey.privateKey };
const operatorFile = path.join(tmp, 'alice.key');
const operator = generateKeyFile(operatorFile, { name: 'ops.alice' });
const strangerFile = path.join(tmp, 'mallory.key');
const stranger = generateKeyFile(strangerFile, { name: 'ops.mallory' });

let broker: Aedes;
let server: net.Server;
let url: string;
let db: FleetDb;
let device: MqttClient;
let rt: Runtime;
let recorder: LedgerRecorder;
let ledger: Ledger;
let gpio: SimGpioBackend;

async function client(id: string): Promise<MqttClient> {
  const c = mqtt.connect(url, { clientId: id, protocolVersion: 4, reconnectPeriod: 0 });
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
  });
  return c;
}

before(async () => {
  broker = await Aedes.createBroker();
  server = net.createServer(broker.handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  url = `mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  let fleetDb: FleetDb;
  ({ db: fleetDb } = makeFleetState(state, path.join(tmp, 'fleet.key')));
  db = fleetDb;
  enroll(db, 'bot-1', verifierKey('fleet.example/bot-1', deviceKey.publicKey));
  const other = generateKeyFile(path.join(tmp, 'bot-2.key'), { name: 'fleet.example/bot-2' });
  enroll(db, 'bot-2', verifierKey('fleet.example/bot-2', other.publicKey));

  // The device: a real runtime on sim GPIO, a real ledger, the command handler on /cmd.
  const clock = new SystemClock();
  gpio = new SimGpioBackend({ clock });
  const config = parseConfigText(
    `
device: { name: bot-1 }
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
    rules: []
safety: { silenceMs: 60000 }
`,
    'c.yaml',
  );
  rt = await Runtime.create(config, { clock, logger: silent, baseDir: tmp, serial: new MockSerialOpener(), gpio, sources: { lidar: new PushSource('lidar', { clock }) }, noHttp: true });
  ledger = await Ledger.open(path.join(tmp, 'ledger'), { key: deviceKey, durability: 'batch', clock });
  recorder = new LedgerRecorder(ledger, { clock, logger: silent, flushMs: 50, checkpointEveryRecords: 10_000, checkpointEveryMs: 3_600_000, maxBuffered: 1000 });
  recorder.attach(rt);
  await rt.start();
  const handler = createCommandHandler({
    device: 'bot-1',
    key: deviceSigning,
    operators: [verifierKey('ops.alice', operator.publicKey)],
    runtime: rt,
    recorder,
    clock,
    stateFile: path.join(tmp, 'ledger', 'commands.json'),
    actions: { checkpoint: () => recorder.checkpoint(), sync: () => {}, rebirth: () => {} },
  });
  device = await client('bot-1');
  device.on('message', (topic, payload) => {
    if (topic !== topics.cmd) return;
    void handler.handle(payload).then((answer) => answer && device.publish(topics.cmdResult, answer, { qos: 1 }));
  });
  await device.subscribeAsync(topics.cmd, { qos: 1 });
});

after(async () => {
  await device?.endAsync();
  await rt?.stop('test done');
  await recorder?.close();
  db?.close();
  await new Promise<void>((r) => broker.close(() => r()));
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(tmp, { recursive: true, force: true });
});

const brokerArgs = () => ['--broker', url, '--state', state];

test('send: a signed actuate reaches the device, drives its GPIO output, and the signed answer is verified', async () => {
  assert.equal(gpio.get('sim', 3), 0);
  const c = captureIo();
  const code = await cmdConsole('send', ['bot-1', 'actuate', 'brake', 'on', '--key', operatorFile, ...brokerArgs()], c.io);
  assert.equal(code, 0, c.err.join('\n'));
  const m = /^done: actuate brake=1 on bot-1 \(device ledger record (\d+)\)$/.exec(c.out[0]);
  assert.ok(m, c.out.join('\n'));
  assert.equal(gpio.get('sim', 3), 1);
  const rec = JSON.parse(ledger.read(Number(m[1])).toString('utf8'));
  assert.equal(rec.kind, 'command');
  assert.equal(rec.status, 'done');
  assert.match(rec.signer, /^ops\.alice\+[0-9a-f]{8}$/);

  // --json, credentials and broker from the environment, another command.
  const j = captureIo({ env: { KEEL_FLEET_BROKER: url, KEEL_FLEET_USER: 'alice', KEEL_FLEET_PASSWORD: 'unused-by-this-broker' } });
  assert.equal(await cmdConsole('send', ['bot-1', 'checkpoint', '--key', operatorFile, '--state', state, '--json'], j.io), 0, j.err.join('\n'));
  const out = JSON.parse(j.out[0]);
  assert.equal(out.status, 'done');
  assert.match(out.verified, /^fleet\.example\/bot-1\+[0-9a-f]{8}$/);
  assert.ok(ledger.latestCheckpoint(), 'the device signed a checkpoint');
});

test('send: an untrusted operator key and an unknown actuator are rejected by the device (exit 1)', async () => {
  const s = captureIo();
  assert.equal(await cmdConsole('send', ['bot-1', 'actuate', 'brake', '0', '--key', strangerFile, ...brokerArgs()], s.io), 1);
  assert.match(s.err.join('\n'), /^rejected: actuate brake=0 on bot-1: envelope is signed by ops\.mallory\+[0-9a-f]{8}, which is not a trusted key \(device ledger record \d+\)$/m);
  assert.equal(gpio.get('sim', 3), 1, 'the brake did not move');
  const u = captureIo();
  assert.equal(await cmdConsole('send', ['bot-1', 'actuate', 'horn', '1', '--key', operatorFile, ...brokerArgs()], u.io), 1);
  assert.match(u.err.join('\n'), /rejected: actuate horn=1 on bot-1: no actuator named "horn"/);
});

test('send: no answer in time, or only forged answers, is a timeout (exit 1)', async () => {
  const t = captureIo();
  const t0 = Date.now();
  assert.equal(await cmdConsole('send', ['bot-2', 'sync', '--key', operatorFile, '--wait', '300ms', ...brokerArgs()], t.io), 1);
  assert.ok(Date.now() - t0 < 5000);
  assert.match(t.err.join('\n'), /timeout: no verified answer from bot-2 within 0\.3 s/);
  // A rogue client answers for bot-2 with a key that is not bot-2's: never taken as the answer.
  const rogue = await client('rogue');
  const bot2 = deviceTopics('keel', 'bot-2');
  rogue.on('message', (_topic, payload) => {
    const cmd = JSON.parse(payload.toString()) as { body: CommandBody };
    const forged = sealEnvelope(RESULT_DOMAIN, { v: 1, id: cmd.body.id, device: 'bot-2', status: 'done', t: Date.now() }, deviceSigning);
    rogue.publish(bot2.cmdResult, forged, { qos: 1 });
  });
  await rogue.subscribeAsync(bot2.cmd, { qos: 1 });
  try {
    const f = captureIo();
    assert.equal(await cmdConsole('send', ['bot-2', 'sync', '--key', operatorFile, '--wait', '500ms', ...brokerArgs()], f.io), 1);
    const err = f.err.join('\n');
    assert.match(err, /warning: an answer naming this command does not verify with the device key: envelope is signed by fleet\.example\/bot-1\+[0-9a-f]{8}, which is not a trusted key/);
    assert.match(err, /timeout: .*\(1 unverifiable\)/);
  } finally {
    await rogue.endAsync();
  }
  // A broker that is not there: a clear failure, not a hang.
  const dead = captureIo();
  assert.equal(await cmdConsole('send', ['bot-1', 'sync', '--key', operatorFile, '--broker', 'mqtt://127.0.0.1:1', '--state', state], dead.io), 1);
  assert.match(dead.err[0], /cannot connect to mqtt:\/\/127\.0\.0\.1:1: .*ECONNREFUSED/);
});

/** Resolves when the broker sees a subscription to `topic`. */
function subscribed(topic: string): Promise<void> {
  return new Promise((resolve) => {
    const on = (subs: { topic: string }[]) => {
      if (subs.some((s) => s.topic === topic)) {
        broker.off('subscribe', on);
        resolve();
      }
    };
    broker.on('subscribe', on);
  });
}

function telemetry(seq: number, boot: string, values: Record<string, number>, key = deviceSigning): Buffer {
  const body: TelemetryBody = { device: 'bot-1', seq, boot, t: 1_700_000_000_000 + seq * 100, values };
  return sealEnvelope(TELEMETRY_DOMAIN, body, key);
}

test('tail: verified values, gaps, restarts, and forged messages flagged', async () => {
  const pub = await client('bot-1-telemetry');
  try {
    await pub.publishAsync(topics.status, JSON.stringify({ online: true, device: 'bot-1', bdSeq: 4, backlog: 12 }), { qos: 1, retain: true });
    const ready = subscribed(topics.telemetry);
    const c = captureIo();
    const run = cmdConsole('tail', ['bot-1', '--count', '4', ...brokerArgs()], c.io);
    await ready;
    await pub.publishAsync(topics.telemetry, telemetry(0, 'b1', { 'lidar.r00': 1.5, speed: 0.25 }));
    await pub.publishAsync(topics.telemetry, telemetry(1, 'b1', { 'lidar.r00': 1.25 }));
    await pub.publishAsync(topics.telemetry, telemetry(4, 'b1', { 'lidar.r00': 1 }));
    // Signed by the right key name but another key; and a genuine message with a changed value.
    await pub.publishAsync(topics.telemetry, telemetry(5, 'b1', { 'lidar.r00': 9 }, { name: 'fleet.example/bot-1', privateKey: stranger.privateKey }));
    const tampered = JSON.parse(telemetry(6, 'b1', { 'lidar.r00': 1 }).toString());
    tampered.body.values['lidar.r00'] = 9;
    await pub.publishAsync(topics.telemetry, JSON.stringify(tampered));
    await pub.publishAsync(topics.telemetry, Buffer.from('{"not":"an envelope"}'));
    await pub.publishAsync(topics.telemetry, telemetry(0, 'b2', { 'lidar.r00': 0.5 }));
    assert.equal(await run, 1, 'unverified messages were seen');
    const out = c.out.join('\n');
    assert.match(out, /^status: online \(connection #4\), backlog 12$/m);
    assert.match(out, /^22:13:20\.000 {2}#0 {2}lidar\.r00=1\.5 speed=0\.25$/m);
    assert.match(out, /#1 {2}lidar\.r00=1\.25$/m);
    assert.match(out, /^-- gap: 2 messages missed\n.*#4 {2}lidar\.r00=1$/m);
    assert.match(out, /^UNVERIFIED message \(\d+ bytes\): envelope is signed by fleet\.example\/bot-1\+[0-9a-f]{8}, which is not a trusted key$/m);
    assert.match(out, /^UNVERIFIED message \(\d+ bytes\): envelope signature by fleet\.example\/bot-1\+[0-9a-f]{8} does not verify$/m);
    assert.match(out, /^UNVERIFIED message \(21 bytes\): envelope must be/m);
    assert.match(out, /^-- device restarted \(boot b2\)\n.*#0 {2}lidar\.r00=0\.5$/m);
    assert.ok(!/=9\b/.test(out), 'a forged value is never printed as a value');
    assert.match(c.err.join('\n'), /4 verified messages, 3 UNVERIFIED/);
  } finally {
    await pub.publishAsync(topics.status, '', { qos: 1, retain: true });
    await pub.endAsync();
  }
});

test('tail --json stops when its signal aborts, and with a --vkey instead of the database', async () => {
  const pub = await client('bot-1-telemetry-2');
  try {
    const ready = subscribed(topics.telemetry);
    const ac = new AbortController();
    const c = captureIo({ signal: ac.signal });
    const vkey = verifierKey('fleet.example/bot-1', deviceKey.publicKey);
    const run = cmdConsole('tail', ['bot-1', '--json', '--broker', url, '--vkey', vkey], c.io);
    await ready;
    await pub.publishAsync(topics.telemetry, telemetry(7, 'b9', { x: 2 }));
    const deadline = Date.now() + 3000;
    while (c.out.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    assert.equal(await run, 0);
    assert.deepEqual(JSON.parse(c.out[0]), { verified: true, device: 'bot-1', seq: 7, boot: 'b9', t: 1_700_000_000_700, values: { x: 2 } });
  } finally {
    await pub.endAsync();
  }
  // The command envelope domain is not a telemetry domain: a command replayed as telemetry fails.
  const cmd = sealEnvelope(COMMAND_DOMAIN, { device: 'bot-1', seq: 1, boot: 'x', t: 0, values: {} }, deviceSigning);
  assert.throws(() => openEnvelope(TELEMETRY_DOMAIN, cmd, [verifierKey('fleet.example/bot-1', deviceKey.publicKey)]), /does not verify/);
});

test('tail rides out a dropped broker connection: it says so, reconnects, resubscribes and goes on', async () => {
  const pub = await client('bot-1-telemetry-3');
  try {
    let ready = subscribed(topics.telemetry);
    const c = captureIo();
    const run = cmdConsole('tail', ['bot-1', '--count', '2', '--duration', '20s', ...brokerArgs()], c.io);
    await ready;
    await pub.publishAsync(topics.telemetry, telemetry(0, 'r1', { x: 1 }));
    const waitFor = async (cond: () => boolean, what: string) => {
      const deadline = Date.now() + 5000;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; err: ${c.err.join(' | ')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    await waitFor(() => c.out.length === 1, 'the first message');
    ready = subscribed(topics.telemetry);
    // aedes keeps its connected clients by id (not in its type declarations).
    const clients = (broker as unknown as { clients: Record<string, { conn: { destroy(): void } }> }).clients;
    const id = Object.keys(clients).find((k) => k.startsWith('keel-tail-'));
    assert.ok(id, 'the tail client is connected');
    clients[id].conn.destroy();
    await ready; // resubscribed after the reconnect
    await waitFor(() => c.err.includes('reconnected'), 'the reconnect notice');
    await pub.publishAsync(topics.telemetry, telemetry(1, 'r1', { x: 2 }));
    assert.equal(await run, 0);
    assert.ok(c.err.includes('link to the broker lost; reconnecting...'), c.err.join('\n'));
    assert.match(c.out[1], /#1 {2}x=2$/);
  } finally {
    await pub.endAsync();
  }
});
