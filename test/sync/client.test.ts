/**
 * Device sync against a real in-process aedes broker (ephemeral port, no auth) and a fake
 * fleet that verifies and cosigns batches: backlog drained in order with bounded in-flight,
 * pruning only after a verified ack, forged acks ignored, broker and device restarts, duplicate
 * acks, nacks, the fleet's offline state, birth and Will with bdSeq, signed telemetry, commands.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { SystemClock } from '../../runtime/clock.ts';
import type { Ledger } from '../../runtime/ledger/ledger.ts';
import { SYNC_STATE_FILE } from '../../runtime/sync/cursor.ts';
import { Telemetry } from '../../runtime/sync/telemetry.ts';
import { openEnvelope, TELEMETRY_DOMAIN, type StatusBody, type TelemetryBody } from '../../runtime/sync/wire.ts';
import type { SyncClient } from '../../runtime/sync/client.ts';
import { requireTool } from '../helpers.ts';
import { appendRecords, deviceKey, FakeFleet, fleetKey, openClient, openLedger, sleep, tempDir, TestBroker, testSettings, until } from './fixtures.ts';

const clock = new SystemClock();
const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

interface Rig {
  broker: TestBroker;
  fleet: FakeFleet;
  fk: ReturnType<typeof fleetKey>;
  dk: ReturnType<typeof deviceKey>;
  dir: string;
  ledger: Ledger;
  /** Bytes of every record appended, by index (pruning removes them from the ledger). */
  bytes: Buffer[];
  close(): Promise<void>;
}

async function rig(records: number, o: { fleetOnline?: boolean } = {}): Promise<Rig> {
  const broker = new TestBroker();
  await broker.start();
  const fk = fleetKey();
  const dk = deviceKey('test.example/dev1');
  const fleet = new FakeFleet(broker.url, fk, { dev1: dk.vkey });
  await fleet.start(o.fleetOnline ?? true);
  const dir = tempDir('client');
  dirs.push(dir);
  const ledger = await openLedger(path.join(dir, 'ledger'), dk);
  await appendRecords(ledger, records);
  const bytes = Array.from({ length: ledger.size }, (_, i) => ledger.read(i));
  const r: Rig = {
    broker,
    fleet,
    fk,
    dk,
    dir,
    ledger,
    bytes,
    async close() {
      await fleet.stop();
      await r.ledger.close().catch(() => undefined);
      await broker.kill();
    },
  };
  return r;
}

function client(r: Rig, o: Parameters<typeof testSettings>[2] = {}, extra: Partial<Parameters<typeof openClient>[0]> = {}): Promise<SyncClient> {
  return openClient({ device: 'dev1', ledger: r.ledger, key: r.dk, fleet: r.fk, settings: testSettings(r.broker.url, r.fk.vkey, o), clock, ...extra });
}

/** Checks that the fleet holds exactly the device's records, each once, with no problems. */
function assertFleetHoldsAll(r: Rig, n: number): void {
  const d = r.fleet.device('dev1');
  assert.deepEqual(d.problems, []);
  assert.equal(d.tree.size, n, 'fleet holds every index');
  for (let i = 0; i < n; i++) assert.ok(d.records[i]?.equals(r.bytes[i]), `record ${i} arrived intact`);
}

function syncJson(r: Rig): { delivered: number; bdSeq: number; ack?: string } {
  return JSON.parse(fs.readFileSync(path.join(r.ledger.dir, SYNC_STATE_FILE), 'utf8'));
}

test('a backlog of thousands drains in order with bounded batches in flight; pruned only after the verified acks', async () => {
  const r = await rig(3000);
  const c = await client(r, { batchRecords: 100, maxInFlight: 3 });
  let maxInFlight = 0;
  let lastEnd = 0;
  const order: number[] = [];
  c.on('sent', (b) => {
    maxInFlight = Math.max(maxInFlight, c.stats().inFlight);
    order.push(b.start);
    assert.ok(b.end - b.start <= 100, 'batch within batchRecords');
  });
  // Pruning must never get ahead of what sync.json says is delivered.
  c.on('pruned', ({ firstAvailable }) => assert.ok(firstAvailable <= syncJson(r).delivered, `pruned to ${firstAvailable} beyond the persisted ${syncJson(r).delivered}`));
  c.on('delivered', ({ size }) => {
    assert.ok(size > lastEnd);
    lastEnd = size;
  });
  c.start();
  await until(() => c.deliveredSize === 3000, 'all delivered');
  assert.ok(maxInFlight <= 3 && maxInFlight >= 2, `in flight stayed within 3 (max ${maxInFlight})`);
  assert.deepEqual(order, [...order].sort((a, b) => a - b), 'batches sent in index order');
  assertFleetHoldsAll(r, 3000);
  await until(() => syncJson(r).delivered === 3000, 'sync.json delivered');
  await until(() => r.ledger.firstAvailable > 0, 'pruned');
  // The retained birth says who we are.
  const st = c.stats();
  assert.equal(st.acks > 0, true);
  assert.equal(st.ackRejects, 0);
  await c.stop();
  await r.close();
});

test('records pruned before delivery (disk bound, drop-oldest) go as their stored leaf hashes; the fleet\'s root still matches', async () => {
  const r = await rig(2500);
  const first = await r.ledger.pruneBefore(1500);
  assert.ok(first > 0 && first <= 1500, `pruned some segments (first available ${first})`);
  const c = await client(r, { batchRecords: 200 });
  c.start();
  await until(() => c.deliveredSize === 2500, 'delivered');
  const d = r.fleet.device('dev1');
  assert.deepEqual(d.problems, [], 'every checkpoint root matched the leaves, hashes included');
  for (let i = 0; i < 2500; i++) {
    if (i < first) assert.equal(d.records[i], undefined, `index ${i} arrived as a hash only`);
    else assert.ok(d.records[i]?.equals(r.bytes[i]), `record ${i} arrived intact`);
  }
  await c.stop();
  await r.close();
});

test('acks with a bad cosignature or a foreign root are ignored: nothing delivered, nothing pruned', async () => {
  const r = await rig(600);
  r.fleet.mode = 'bad-cosignature';
  const c = await client(r, { batchRecords: 100, ackTimeoutMs: 400 });
  const rejected: string[] = [];
  c.on('ackRejected', ({ reason }) => rejected.push(reason));
  c.start();
  await until(() => rejected.length >= 3, 'bad cosignatures refused');
  r.fleet.mode = 'foreign-root';
  const before = rejected.length;
  await until(() => rejected.slice(before).some((x) => x.includes('root')), 'foreign root refused', 5000);
  assert.equal(c.deliveredSize, 0);
  assert.equal(r.ledger.firstAvailable, 0, 'nothing pruned');
  assert.ok(!fs.existsSync(path.join(r.ledger.dir, SYNC_STATE_FILE)) || syncJson(r).delivered === 0);
  assert.ok(rejected.some((x) => x.startsWith('cosignature')));
  // An honest fleet again: the device resends after its ack timeout and everything lands.
  r.fleet.mode = 'ack';
  await until(() => c.deliveredSize === 600, 'delivered after the fleet behaves');
  assertFleetHoldsAll(r, 600);
  await c.stop();
  await r.close();
});

test('broker killed and restarted mid-sync: resumes and nothing is lost', async () => {
  const r = await rig(4000);
  // Paced so the kill lands mid-backlog.
  const c = await client(r, { batchRecords: 100, rateRecordsPerS: 8000, maxInFlight: 4 });
  c.start();
  await until(() => c.deliveredSize >= 800, 'part delivered');
  const mid = c.deliveredSize;
  await r.broker.kill();
  await until(() => !c.isConnected, 'device noticed');
  assert.ok(c.deliveredSize < 4000, 'killed mid-sync');
  await sleep(100);
  await r.broker.start(); // same port
  await until(() => c.deliveredSize === 4000, 'all delivered after the restart', 15_000);
  assert.ok(c.stats().reconnects >= 1);
  assert.ok(mid > 0);
  assertFleetHoldsAll(r, 4000);
  await c.stop();
  await r.close();
});

test('device restarted mid-batch resumes from sync.json; a retained ack ahead of sync.json is taken', async () => {
  const r = await rig(3000);
  let c = await client(r, { batchRecords: 100, rateRecordsPerS: 6000 });
  c.start();
  await until(() => c.deliveredSize >= 600, 'part delivered');
  // Stop without waiting for acks (as a crash would leave things), close the ledger too.
  await c.stop({ waitMs: 0 });
  const saved = syncJson(r).delivered;
  assert.ok(saved >= 600 && saved < 3000, `sync.json holds ${saved}`);
  await r.ledger.close();
  r.ledger = await openLedger(path.join(r.dir, 'ledger'), r.dk);
  // Make sync.json lag behind the fleet: the retained ack must carry the device forward.
  const held = r.fleet.device('dev1').tree.size;
  fs.writeFileSync(path.join(r.ledger.dir, SYNC_STATE_FILE), JSON.stringify({ ...syncJson(r), delivered: 0, ack: undefined }));
  c = await client(r, { batchRecords: 100 });
  assert.equal(c.deliveredSize, 0);
  const starts: number[] = [];
  c.on('sent', (b) => starts.push(b.start));
  c.start();
  await until(() => c.deliveredSize === 3000, 'all delivered after the restart');
  assert.ok(starts[0] >= held, `first batch after the restart starts at ${starts[0]}, at or beyond the fleet's retained ack (${held})`);
  assertFleetHoldsAll(r, 3000);
  await c.stop();
  // And a plain restart: sync.json alone says where to go on (nothing new to send).
  const c2 = await client(r);
  assert.equal(c2.deliveredSize, 3000);
  await r.close();
});

test('duplicate and stale acks change nothing', async () => {
  const r = await rig(800);
  r.fleet.mode = 'duplicate';
  const c = await client(r, { batchRecords: 100 });
  c.start();
  await until(() => c.deliveredSize === 800, 'delivered');
  await until(() => c.stats().duplicateAcks >= 5, 'duplicates seen');
  assert.equal(c.stats().ackRejects, 0);
  assertFleetHoldsAll(r, 800);
  await c.stop();
  await r.close();
});

test('a nack sends the device back to delivered; it resends after a backoff', async () => {
  const r = await rig(500);
  r.fleet.nackAt.add(200);
  const c = await client(r, { batchRecords: 100, maxInFlight: 2 });
  const backoffs: string[] = [];
  c.on('backoff', (b) => backoffs.push(b.reason));
  c.start();
  await until(() => c.deliveredSize === 500, 'delivered');
  assert.equal(c.stats().nacks, 1);
  assert.ok(backoffs.includes('resend'));
  const batches = r.fleet.device('dev1').batches;
  assert.ok(batches.filter(([s]) => s === 200).length >= 2, 'batch 200 was sent again');
  assertFleetHoldsAll(r, 500);
  await c.stop();
  await r.close();
});

test('the fleet announcing offline pauses the backlog; online resumes it', async () => {
  const r = await rig(500, { fleetOnline: false });
  const c = await client(r, { batchRecords: 100 });
  c.start();
  await until(() => c.isConnected, 'connected');
  await sleep(300);
  assert.equal(c.stats().batchesSent, 0, 'nothing sent while the fleet is offline');
  r.fleet.state(true);
  await until(() => c.deliveredSize === 500, 'delivered once online');
  assertFleetHoldsAll(r, 500);
  await c.stop();
  await r.close();
});

test('birth and Will carry bdSeq: a cut socket publishes the Will, the reconnect a newer birth', async () => {
  const r = await rig(10);
  const seen: StatusBody[] = [];
  const watcher = mqtt.connect(r.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  watcher.on('error', () => undefined);
  watcher.on('message', (_t, p) => seen.push(JSON.parse(p.toString())));
  await new Promise<void>((res) => watcher.once('connect', () => watcher.subscribe('keel/dev1/status', { qos: 1 }, () => res())));
  const c = await client(r, {}, { models: [{ name: 'm.onnx', sha256: 'ab'.repeat(32) }] });
  c.start();
  await until(() => seen.some((s) => s.online), 'birth');
  const birth = seen.find((s) => s.online)!;
  assert.equal(birth.device, 'dev1');
  assert.equal(birth.version, '0.1.0');
  assert.deepEqual(birth.models, [{ name: 'm.onnx', sha256: 'ab'.repeat(32) }]);
  assert.equal(birth.ledgerSize, 10);
  assert.equal(syncJson(r).bdSeq, birth.bdSeq, 'bdSeq persisted before use');
  assert.ok(r.broker.cutClient('dev1'), 'cut the device socket');
  await until(() => seen.some((s) => !s.online), 'Will');
  const will = seen.find((s) => !s.online)!;
  assert.equal(will.bdSeq, birth.bdSeq, 'the Will carries the connection\'s bdSeq');
  await until(() => seen.filter((s) => s.online).length >= 2, 'rebirth after reconnect');
  const second = seen.filter((s) => s.online)[1];
  assert.equal(second.bdSeq, birth.bdSeq + 1);
  // rebirth() republishes with the same bdSeq (it must match the connection's Will).
  assert.equal(await c.rebirth(), true);
  await until(() => seen.filter((s) => s.online).length >= 3, 'rebirth command');
  assert.equal(seen.filter((s) => s.online)[2].bdSeq, second.bdSeq);
  // A graceful stop publishes offline with the same bdSeq; rebirth while stopped says so, never throws.
  await c.stop();
  assert.equal(await c.rebirth(), false);
  await until(() => seen.filter((s) => !s.online).length >= 2, 'offline at stop');
  assert.equal(seen.filter((s) => !s.online)[1].bdSeq, second.bdSeq);
  watcher.end(true);
  await r.close();
});

test('telemetry is signed by the device key and verifiable; commands are answered on /cmd/result', async () => {
  const r = await rig(0);
  const received: Buffer[] = [];
  const results: string[] = [];
  const watcher = mqtt.connect(r.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  watcher.on('error', () => undefined);
  watcher.on('message', (t, p) => (t.endsWith('/telemetry') ? received.push(p) : results.push(p.toString())));
  await new Promise<void>((res) => watcher.once('connect', () => watcher.subscribe(['keel/dev1/telemetry', 'keel/dev1/cmd/result'], { qos: 1 }, () => res())));
  const commands: string[] = [];
  const c = await client(r, {}, { onCommand: async (p) => (commands.push(p.toString()), Buffer.from(`done:${p.toString()}`)) });
  c.start();
  await until(() => c.isConnected, 'connected');
  const tel = new Telemetry({ device: 'dev1', key: { name: r.dk.name, privateKey: r.dk.privateKey }, clock, everyMs: 1000, send: (p) => c.publishTelemetry(p), online: () => c.isConnected });
  tel.observe({ pipeline: 'p', outputs: { score: Float32Array.of(0.25), state: Float32Array.of(9), vec: Float32Array.of(1, 2) }, stateOutputs: ['state'] });
  assert.equal(tel.tick(), true);
  await until(() => received.length === 1, 'telemetry');
  const { body, signer } = openEnvelope<TelemetryBody>(TELEMETRY_DOMAIN, received[0], [r.dk.vkey]);
  assert.equal(signer.name, r.dk.name);
  assert.deepEqual(body.values, { 'p.score': 0.25 });
  assert.equal(body.device, 'dev1');
  assert.equal(body.seq, 1);
  // Tampered values do not verify.
  const tampered = received[0].toString().replace('0.25', '0.5');
  assert.throws(() => openEnvelope(TELEMETRY_DOMAIN, tampered, [r.dk.vkey]), { code: 'KEEL_E_AUTH' });
  // Commands in, results out.
  watcher.publish('keel/dev1/cmd', 'hello', { qos: 1 });
  await until(() => results.length === 1, 'command result');
  assert.deepEqual(commands, ['hello']);
  assert.equal(results[0], 'done:hello');
  await c.stop();
  // Offline: dropped, not queued.
  tel.observe({ pipeline: 'p', outputs: { score: Float32Array.of(0.5) }, stateOutputs: [] });
  assert.equal(tel.tick(), false);
  assert.equal(tel.stats().dropped, 1);
  watcher.end(true);
  await r.close();
});

test('over WebSocket (ws://) the same: connect, drain, ack', async () => {
  const r = await rig(300);
  // A second listener of the same kind a browser-facing fleet has: MQTT over WebSocket.
  const aedes = await Aedes.createBroker();
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => aedes.handle(createWebSocketStream(ws) as never));
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const url = `ws://127.0.0.1:${(server.address() as { port: number }).port}`;
  const fleet = new FakeFleet(url, r.fk, { dev1: r.dk.vkey });
  await fleet.start();
  const c = await openClient({ device: 'dev1', ledger: r.ledger, key: r.dk, fleet: r.fk, settings: testSettings(url, r.fk.vkey), clock });
  c.start();
  await until(() => c.deliveredSize === 300, 'delivered over ws');
  assert.deepEqual(fleet.device('dev1').problems, []);
  await c.stop();
  await fleet.stop();
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  await new Promise<void>((res) => server.close(() => res()));
  await new Promise<void>((res) => aedes.close(() => res()));
  await r.close();
});

test('over TLS (mqtts://) with the configured CA; without it the device refuses the broker', async (t) => {
  if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
  const r = await rig(200);
  const cert = path.join(r.dir, 'cert.pem');
  const keyFile = path.join(r.dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', cert, '-days', '1', '-subj', '/CN=keel-test', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const aedes = await Aedes.createBroker();
  const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(keyFile) }, (s) => aedes.handle(s));
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const port = (server.address() as { port: number }).port;
  // The fake fleet reaches the same aedes over plain TCP (the rig's broker is another one).
  const plain = await import('node:net').then((net) => net.createServer((s) => aedes.handle(s)));
  await new Promise<void>((res) => plain.listen(0, '127.0.0.1', () => res()));
  const fleet = new FakeFleet(`mqtt://127.0.0.1:${(plain.address() as { port: number }).port}`, r.fk, { dev1: r.dk.vkey });
  await fleet.start();
  const url = `mqtts://127.0.0.1:${port}`;
  // No CA: the self-signed certificate is refused, and the device keeps retrying.
  const bare = await openClient({ device: 'dev1', ledger: r.ledger, key: r.dk, fleet: r.fk, settings: testSettings(url, r.fk.vkey), clock });
  const failures: string[] = [];
  bare.on('backoff', (b) => failures.push(b.reason));
  bare.start();
  await until(() => failures.length >= 1, 'refused without the CA');
  assert.equal(bare.isConnected, false);
  assert.match(bare.stats().lastError ?? '', /certificate/i);
  await bare.stop();
  const c = await openClient({ device: 'dev1', ledger: r.ledger, key: r.dk, fleet: r.fk, settings: testSettings(url, r.fk.vkey), clock, ca: fs.readFileSync(cert) });
  c.start();
  await until(() => c.deliveredSize === 200, 'delivered over TLS');
  await c.stop();
  await fleet.stop();
  await new Promise<void>((res) => server.close(() => res()));
  await new Promise<void>((res) => plain.close(() => res()));
  await new Promise<void>((res) => aedes.close(() => res()));
  await r.close();
});
