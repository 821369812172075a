/**
 * Ingest over MQTT against an in-process aedes broker on an ephemeral port: real ledgers make
 * the batches, a plain mqtt.js client plays the device (publish /log, read /ack and /nack).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from 'better-sqlite3';
import { connectAsync, type MqttClient } from 'mqtt';
import { FakeClock } from '../../runtime/clock.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { SIGNATURE_TYPE_COSIGNATURE_V1, splitNote, verifierKey, verifyCosignature } from '../../runtime/ledger/note.ts';
import { Ingest, applyStatus } from '../../fleet/ingest.ts';
import { deviceState, deviceStatus, forks, recentRejects, type FleetDb } from '../../fleet/db.ts';
import type { ForkEvidence } from '../../fleet/witness.ts';
import { waitFor } from '../helpers.ts';
import { appendRecords, enroll, fleetDb, makeBatch, makeDevice, startAedes, storedRows, tempDir, type TestDevice } from './ingest-fixtures.ts';

interface Rig {
  dir: string;
  db: FleetDb;
  ingest: Ingest;
  cosigner: string;
  dev: TestDevice;
  client: MqttClient;
  acks: string[];
  nacks: { start: number | null; end: number | null; code: string; reason: string }[];
  states: { online: boolean; fleet: string; cosigner: string }[];
  forksSeen: ForkEvidence[];
  broker: Awaited<ReturnType<typeof startAedes>>;
  close: () => Promise<void>;
}

async function rig(opts: { maxQueueBytes?: number; dbRetryMs?: number; clock?: FakeClock; pendingRetryMs?: number; pendingMaxAgeMs?: number; stateEveryMs?: number } = {}): Promise<Rig> {
  const { dir, cleanup } = tempDir('ingest');
  const broker = await startAedes();
  const db = fleetDb(dir);
  const fk = generateKeyFile(path.join(dir, 'fleet.key'), { name: 'keel-fleet' });
  const dev = await makeDevice(dir, 'robot-1');
  enroll(db, dev.id, dev.vkey);
  const forksSeen: ForkEvidence[] = [];
  const ingest = new Ingest({ db, broker: broker.url, key: { name: 'keel-fleet', privateKey: fk.privateKey }, onFork: (f) => forksSeen.push(f), dbRetryMs: opts.dbRetryMs ?? 100, ...opts });
  await ingest.start();
  const client = await connectAsync(broker.url, { clientId: 'robot-1', protocolVersion: 4, reconnectPeriod: 0 });
  const acks: string[] = [];
  const nacks: Rig['nacks'] = [];
  const states: Rig['states'] = [];
  client.on('message', (topic, payload) => {
    if (topic === 'keel/robot-1/ack') acks.push(payload.toString());
    else if (topic === 'keel/robot-1/nack') nacks.push(JSON.parse(payload.toString()));
    else if (topic === 'keel/_fleet/state') states.push(JSON.parse(payload.toString()));
  });
  await client.subscribeAsync(['keel/robot-1/ack', 'keel/robot-1/nack', 'keel/_fleet/state'], { qos: 1 });
  return {
    dir,
    db,
    ingest,
    cosigner: verifierKey('keel-fleet', fk.publicKey, SIGNATURE_TYPE_COSIGNATURE_V1),
    dev,
    client,
    acks,
    nacks,
    states,
    forksSeen,
    broker,
    close: async () => {
      await client.endAsync(true);
      await ingest.stop();
      await broker.close();
      await dev.ledger.close();
      db.close();
      cleanup();
    },
  };
}

const ackSize = (note: string | undefined): number => (note === undefined ? -1 : Number(note.split('\n')[1]));
const lastAck = (r: Rig): number => ackSize(r.acks[r.acks.length - 1]);

async function publish(r: Rig, payload: Buffer, device = 'robot-1'): Promise<void> {
  await r.client.publishAsync(`keel/${device}/log`, payload, { qos: 1 });
}

test('batches are acked retained with a cosignature that verifies; records are stored once', async () => {
  const r = await rig();
  try {
    await waitFor(() => r.states.some((s) => s.online), 'fleet state online');
    assert.deepEqual(Object.keys(r.states[0]).sort(), ['cosigner', 'fleet', 'online', 't']);
    assert.equal(r.states[0].cosigner, r.cosigner);
    assert.equal(r.states[0].fleet, 'keel-fleet');
    await appendRecords(r.dev, 300);
    await publish(r, await makeBatch(r.dev, 0, 100));
    await publish(r, await makeBatch(r.dev, 100, 300));
    await waitFor(() => lastAck(r) === 300, 'ack of size 300');
    const note = r.acks[r.acks.length - 1];
    const { text, signatures } = splitNote(note);
    assert.equal(verifyCosignature(text, signatures[signatures.length - 1].line, r.cosigner).name, 'keel-fleet');
    assert.equal(text.split('\n')[2], r.dev.ledger.rootAt(300).toString('base64'));
    assert.equal(storedRows(r.db, 'robot-1').length, 300);
    // The ack is retained: a device connecting later reads it at once.
    const late = await connectAsync(r.broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
    const got = new Promise<string>((resolve) => late.on('message', (_t, p) => resolve(p.toString())));
    await late.subscribeAsync('keel/robot-1/ack', { qos: 1 });
    assert.equal(ackSize(await got), 300);
    await late.endAsync(true);
  } finally {
    await r.close();
  }
});

test('duplicate and reordered deliveries: stored once, acked up to the end', async () => {
  const r = await rig();
  try {
    await appendRecords(r.dev, 400);
    const b = [await makeBatch(r.dev, 0, 100), await makeBatch(r.dev, 100, 200), await makeBatch(r.dev, 200, 300), await makeBatch(r.dev, 300, 400)];
    // Out of order, with duplicates.
    for (const i of [2, 3, 0, 0, 2, 1, 3, 1]) await publish(r, b[i]);
    await waitFor(() => lastAck(r) === 400 && r.ingest.stats.pending === 0, 'ack of size 400');
    await r.ingest.whenIdle();
    const rows = storedRows(r.db, 'robot-1');
    assert.equal(rows.length, 400);
    rows.forEach((row, i) => assert.deepEqual(row.bytes, r.dev.ledger.read(i)));
    assert.equal(r.nacks.length, 0);
    assert.ok(r.ingest.stats.duplicates >= 1);
    assert.ok(r.ingest.stats.waits >= 1);
  } finally {
    await r.close();
  }
});

test('refused batches get a JSON nack and a rejects row; the fleet keeps running', async () => {
  const r = await rig();
  try {
    await appendRecords(r.dev, 20);
    await publish(r, Buffer.from('not a batch'));
    await publish(r, await makeBatch(r.dev, 0, 10), 'robot-9'); // another device's topic
    await waitFor(() => r.nacks.length === 1, 'nack on robot-1');
    assert.deepEqual(r.nacks[0], { start: null, end: null, code: 'KEEL_E_WIRE', reason: 'not a keel batch (no KLB1 magic)' });
    await waitFor(() => recentRejects(r.db).length === 2, 'two rejects rows');
    assert.equal(recentRejects(r.db)[0].device, 'robot-9');
    await publish(r, await makeBatch(r.dev, 0, 20));
    await waitFor(() => lastAck(r) === 20, 'ack after refusals');
  } finally {
    await r.close();
  }
});

test('a fork is stored as evidence, alarmed and nacked', async () => {
  const r = await rig();
  try {
    await appendRecords(r.dev, 10);
    const twin = await makeDevice(r.dir, 'robot-1', { key: r.dev.key, ledgerDir: path.join(r.dir, 'twin') });
    await appendRecords(twin, 10, 3);
    await publish(r, await makeBatch(r.dev, 0, 10));
    await waitFor(() => lastAck(r) === 10, 'ack 10');
    await publish(r, await makeBatch(twin, 0, 10));
    await waitFor(() => r.nacks.length === 1, 'fork nack');
    assert.equal(r.nacks[0].code, 'KEEL_E_FORK');
    assert.equal(r.forksSeen.length, 1);
    assert.equal(forks(r.db, 'robot-1').length, 1);
    await twin.ledger.close();
  } finally {
    await r.close();
  }
});

test('database locked, read-only and full: no ack while failing, nothing lost, acked after recovery', async () => {
  const r = await rig({ dbRetryMs: 100 });
  try {
    await appendRecords(r.dev, 3000, 300);
    // Locked by another connection's write transaction.
    const other = new Database(path.join(r.dir, 'fleet.db'), { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    await publish(r, await makeBatch(r.dev, 0, 10));
    await waitFor(() => r.ingest.stats.retrying === 1, 'batch held for the database');
    await new Promise((res) => setTimeout(res, 200));
    assert.equal(r.acks.length, 0, 'no ack while the database is locked');
    other.exec('ROLLBACK');
    other.close();
    await waitFor(() => lastAck(r) === 10, 'ack after the lock is released');

    // Read-only.
    r.db.pragma('query_only = ON');
    await publish(r, await makeBatch(r.dev, 10, 20));
    await waitFor(() => r.ingest.stats.retrying === 1, 'held while read-only');
    await new Promise((res) => setTimeout(res, 250));
    assert.equal(lastAck(r), 10);
    r.db.pragma('query_only = OFF');
    await waitFor(() => lastAck(r) === 20, 'ack once writable');

    // Full.
    r.db.pragma(`max_page_count = ${r.db.pragma('page_count', { simple: true })}`);
    await publish(r, await makeBatch(r.dev, 20, 3000));
    await waitFor(() => r.ingest.stats.retrying === 1, 'held while full');
    await new Promise((res) => setTimeout(res, 250));
    assert.equal(lastAck(r), 20);
    assert.equal(deviceState(r.db, 'robot-1')!.size, 20);
    r.db.pragma('max_page_count = 1073741823');
    await waitFor(() => lastAck(r) === 3000, 'ack once space is back');
    assert.equal(storedRows(r.db, 'robot-1').length, 3000);
    assert.ok(r.ingest.stats.dbErrors >= 3);
    assert.equal(r.nacks.length, 0);
  } finally {
    await r.close();
  }
});

test('backpressure: a tiny queue bound still stores everything', async () => {
  const r = await rig({ maxQueueBytes: 4096 });
  try {
    await appendRecords(r.dev, 2000);
    const pubs: Promise<unknown>[] = [];
    for (let s = 0; s < 2000; s += 50) pubs.push(publish(r, await makeBatch(r.dev, s, s + 50)));
    await Promise.all(pubs);
    await waitFor(() => lastAck(r) === 2000, 'ack of size 2000', 10_000);
    assert.equal(storedRows(r.db, 'robot-1').length, 2000);
  } finally {
    await r.close();
  }
});

test('status: births and deaths by bdSeq, stale ones ignored; unknown devices ignored', async () => {
  const r = await rig();
  try {
    const pub = (body: object, device = 'robot-1') => r.client.publishAsync(`keel/${device}/status`, JSON.stringify(body), { qos: 1, retain: true });
    await pub({ online: true, device: 'robot-1', bdSeq: 3, version: '0.1.0', backlog: 12 });
    await waitFor(() => deviceStatus(r.db, 'robot-1')?.online === true, 'birth recorded');
    assert.equal(deviceStatus(r.db, 'robot-1')!.bdSeq, 3);
    // A late Will of an earlier connection: stale.
    await pub({ online: false, device: 'robot-1', bdSeq: 2 });
    await waitFor(() => r.ingest.stats.statusIgnored === 1, 'stale status ignored');
    assert.equal(deviceStatus(r.db, 'robot-1')!.online, true);
    await pub({ online: false, device: 'robot-1', bdSeq: 3 });
    await waitFor(() => deviceStatus(r.db, 'robot-1')?.online === false, 'death recorded');
    assert.match(deviceStatus(r.db, 'robot-1')!.birth!, /"backlog":12/, 'the last birth is kept');
    await pub({ online: true, device: 'nobody', bdSeq: 1 }, 'nobody');
    await pub({ online: 'yes' });
    await waitFor(() => r.ingest.stats.statusRejected === 1 && r.ingest.stats.statusIgnored === 2, 'unknown ignored, malformed rejected');
    assert.equal(deviceStatus(r.db, 'nobody'), undefined);
    assert.throws(() => applyStatus(r.db, 'robot-1', Buffer.from('{"online":true,"device":"robot-2","bdSeq":1}'), 0), /topic of "robot-1"/);
    assert.equal(applyStatus(r.db, 'robot-1', Buffer.alloc(0), 0), 'ignored');
  } finally {
    await r.close();
  }
});

test('fleet state: the Will says offline when the link drops; online again after the reconnect; offline on stop', async () => {
  const r = await rig();
  try {
    await waitFor(() => r.states.length >= 1 && r.states[r.states.length - 1].online, 'online');
    // Cut the ingest's connection without DISCONNECT: the broker publishes its Will.
    const client = (r.ingest as unknown as { client: MqttClient }).client;
    client.stream.destroy();
    await waitFor(() => !r.states[r.states.length - 1].online, 'Will: offline');
    await waitFor(() => r.states[r.states.length - 1].online, 'online after reconnect', 5000);
    // Still ingesting after the reconnect (re-subscribed).
    await appendRecords(r.dev, 5);
    await publish(r, await makeBatch(r.dev, 0, 5));
    await waitFor(() => lastAck(r) === 5, 'ack after reconnect');
    await r.ingest.stop();
    await waitFor(() => !r.states[r.states.length - 1].online, 'offline on stop');
  } finally {
    await r.close();
  }
});

test('start fails with KEEL_E_FLEET when the broker is unreachable; bad options are refused', async () => {
  const { dir, cleanup } = tempDir('ingest');
  const db = fleetDb(dir);
  try {
    const key = { name: 'keel-fleet', privateKey: new Uint8Array(32).fill(3) };
    const ing = new Ingest({ db, broker: 'mqtt://127.0.0.1:1', key, startTimeoutMs: 300 });
    await assert.rejects(ing.start(), (err: Error & { code?: string }) => err.code === 'KEEL_E_FLEET' && /could not subscribe at mqtt:\/\/127.0.0.1:1/.test(err.message));
    assert.throws(() => new Ingest({ db, broker: 'http://x', key }), /mqtt:\/\//);
    assert.throws(() => new Ingest({ db, broker: 'mqtt://x', key, prefix: 'a/+' }), /prefix/);
    assert.throws(() => new Ingest({ db, broker: 'mqtt://x', key, shareGroup: 'a/b' }), /shareGroup/);
    assert.throws(() => new Ingest({ db, broker: 'mqtt://x', key, maxQueueBytes: 0 }), /maxQueueBytes/);
    assert.equal(new Ingest({ db, broker: 'mqtt://x', key, shareGroup: 'w' }).logFilter, '$share/w/keel/+/log');
  } finally {
    db.close();
    cleanup();
  }
});

test('on a fake clock: out-of-order batches are retried, dropped unacked after pendingMaxAgeMs, and the gap later fills', async () => {
  const clock = new FakeClock();
  const r = await rig({ clock, pendingRetryMs: 20, pendingMaxAgeMs: 100, stateEveryMs: 0 });
  try {
    await appendRecords(r.dev, 20);
    await publish(r, await makeBatch(r.dev, 10, 20));
    await waitFor(() => r.ingest.stats.pending === 1, 'held out of order');
    assert.deepEqual(clock.pending(), ['ingest.pending-retry']);
    clock.advance(60); // three retries: still no gap filled
    assert.equal(r.ingest.stats.pending, 1);
    assert.ok(r.ingest.stats.waits >= 3);
    clock.advance(60); // past pendingMaxAgeMs
    assert.equal(r.ingest.stats.pending, 0);
    assert.equal(r.ingest.stats.dropped, 1);
    assert.deepEqual(clock.pending(), []);
    assert.equal(r.acks.length, 0, 'never acked');
    // The device resends from its delivered size: all stored.
    await publish(r, await makeBatch(r.dev, 0, 10));
    await publish(r, await makeBatch(r.dev, 10, 20));
    await waitFor(() => lastAck(r) === 20, 'ack 20');
  } finally {
    await r.close();
  }
});

test('on a fake clock: database retries back off (dbRetryMs doubling) while it stays locked', async () => {
  const clock = new FakeClock();
  const r = await rig({ clock, dbRetryMs: 100, stateEveryMs: 0 });
  try {
    await appendRecords(r.dev, 10);
    const other = new Database(path.join(r.dir, 'fleet.db'), { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    await publish(r, await makeBatch(r.dev, 0, 10));
    await waitFor(() => r.ingest.stats.retrying === 1, 'held for the database');
    const errs = () => r.ingest.stats.dbErrors;
    assert.equal(errs(), 1);
    clock.advance(99);
    assert.equal(errs(), 1);
    clock.advance(1); // retry 1 at +100
    assert.equal(errs(), 2);
    clock.advance(199);
    assert.equal(errs(), 2);
    clock.advance(1); // retry 2 at +200 more
    assert.equal(errs(), 3);
    // While the database is down, new batches are held without touching it.
    await publish(r, await makeBatch(r.dev, 0, 10));
    await waitFor(() => r.ingest.stats.retrying === 2, 'second batch held');
    assert.equal(errs(), 3);
    other.exec('ROLLBACK');
    other.close();
    clock.advance(400);
    await waitFor(() => lastAck(r) === 10, 'acked once the lock is gone');
    assert.equal(r.ingest.stats.retrying, 0);
    assert.equal(storedRows(r.db, 'robot-1').length, 10);
  } finally {
    await r.close();
  }
});
