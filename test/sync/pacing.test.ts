/**
 * Timing logic of device sync on a FakeClock, over the in-memory broker twin: reconnect
 * backoff with jitter, the token-bucket rate limit, ack and PUBACK timeouts, requestSync
 * skipping the pacing delay, telemetry ticks. Ledger IO is real (a temp dir), so the tests let
 * real IO settle between fake-clock steps.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { FakeClock } from '../../runtime/clock.ts';
import { KeelError } from '../../runtime/errors.ts';
import { cosign } from '../../runtime/ledger/note.ts';
import { MemoryBroker } from '../../runtime/sync/link.ts';
import { backoffDelay, TokenBucket } from '../../runtime/sync/pacing.ts';
import { Telemetry } from '../../runtime/sync/telemetry.ts';
import { decodeBatch, openEnvelope, TELEMETRY_DOMAIN, type TelemetryBody } from '../../runtime/sync/wire.ts';
import { appendRecords, deviceKey, fleetKey, openClient, openLedger, tempDir, testSettings, until } from './fixtures.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Lets real IO (file writes, fsync) and microtasks run. */
const settle = (ms = 15) => new Promise((r) => setTimeout(r, ms));

/** A fleet on the memory broker that cosigns every batch (or stays silent). */
function memoryFleet(mb: MemoryBroker, fk: ReturnType<typeof fleetKey>): { silent: boolean; batches: [number, number][] } {
  const state = { silent: false, batches: [] as [number, number][] };
  mb.subscribe('keel/+/log', (m) => {
    const b = decodeBatch(m.payload);
    state.batches.push([b.header.start, b.header.start + b.header.count]);
    if (state.silent) return;
    const note = b.header.checkpoint;
    mb.publish(`keel/${b.header.device}/ack`, note + cosign(note.slice(0, note.indexOf('\n\n') + 1), fk, 1_700_000_000), true);
  });
  return state;
}

async function setup(records: number, settings: Parameters<typeof testSettings>[2], o: { random?: () => number } = {}) {
  const clock = new FakeClock();
  const mb = new MemoryBroker();
  const fk = fleetKey();
  const dk = deviceKey('test.example/dev1');
  const dir = tempDir('pacing');
  dirs.push(dir);
  const ledger = await openLedger(path.join(dir, 'ledger'), dk, undefined, 8 * 1_048_576);
  if (records) await appendRecords(ledger, records);
  const fleet = memoryFleet(mb, fk);
  const client = await openClient({ device: 'dev1', ledger, key: dk, fleet: fk, settings: testSettings('mqtt://memory', fk.vkey, settings), clock, connector: mb.connector, random: o.random });
  return { clock, mb, fk, dk, ledger, fleet, client };
}

test('backoffDelay: doubles from initialMs, caps at maxMs, jitter shortens by up to the fraction', () => {
  const s = { initialMs: 500, maxMs: 4000, jitter: 0.5 };
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, s, () => 0)), [500, 1000, 2000, 4000, 4000, 4000]);
  assert.deepEqual([1, 2, 3].map((a) => backoffDelay(a, s, () => 0.5)), [375, 750, 1500]);
  for (let a = 1; a < 40; a++) {
    const base = Math.min(4000, 500 * 2 ** (a - 1));
    const d = backoffDelay(a, s);
    assert.ok(d >= base / 2 && d <= base, `attempt ${a}: ${d} within [${base / 2}, ${base}]`);
  }
  assert.equal(backoffDelay(1e6, s, () => 0), 4000, 'huge attempt counts do not overflow');
  assert.equal(backoffDelay(1, { ...s, jitter: 0 }, () => 0.99), 500);
  assert.throws(() => backoffDelay(0, s), RangeError);
});

test('TokenBucket: a burst of its capacity, then the rate; debt makes the next send wait', () => {
  const clock = new FakeClock();
  const b = new TokenBucket(1000, clock);
  assert.equal(b.delayMs(), 0);
  b.take(1500); // one big batch may go into debt
  assert.equal(b.delayMs(), 500);
  clock.advance(499);
  assert.equal(b.delayMs(), 1);
  clock.advance(1);
  assert.equal(b.delayMs(), 0);
  clock.advance(10_000);
  assert.equal(b.balance(), 1000, 'never more than the capacity');
  assert.throws(() => new TokenBucket(0, clock), RangeError);
  assert.throws(() => new TokenBucket(Infinity, clock), RangeError);
});

test('reconnect backoff with jitter runs on the injected clock, and a fresh token is minted per connect', async () => {
  const { clock, mb, client } = await setup(0, { reconnect: { initialMs: 500, maxMs: 4000, jitter: 0.5 } }, { random: () => 0.5 });
  mb.refuse = new KeelError('KEEL_E_SYNC', 'connection refused', { retryable: true });
  const delays: number[] = [];
  const connectAt: number[] = [];
  client.on('backoff', (b) => b.reason === 'connect' && delays.push(b.delayMs));
  const origConnects = mb.connects;
  client.start();
  await until(() => delays.length === 1, 'first backoff');
  assert.equal(origConnects.length, 1);
  connectAt.push(clock.monotonic());
  const expected = [375, 750, 1500, 3000, 3000];
  for (const [k, d] of expected.entries()) {
    assert.equal(delays[k], d);
    clock.advance(d - 1);
    await settle(30);
    assert.equal(origConnects.length, connectAt.length, `no connect before ${d} ms`);
    clock.advance(1);
    await until(() => delays.length === k + 2, `backoff ${k + 2}`);
    assert.equal(origConnects.length, connectAt.length + 1, `a connect at ${d} ms`);
    connectAt.push(clock.monotonic());
  }
  assert.deepEqual(delays.slice(0, 5), expected);
  const passwords = new Set(origConnects.map((c) => c.password));
  assert.equal(passwords.size, origConnects.length, 'every connect carried a fresh token');
  assert.ok(origConnects.every((c) => c.username === 'dev1' && c.clientId === 'dev1' && c.will.retain && c.will.topic === 'keel/dev1/status'));
  // The broker comes back: the next attempt connects, and the backoff starts over.
  mb.refuse = undefined;
  clock.advance(3000);
  await until(() => client.isConnected, 'connected');
  await client.stop({ waitMs: 0 });
});

test('the rate limit holds the average: records sent never exceed burst + rate x time', async () => {
  const { clock, client, fleet } = await setup(8000, { rateRecordsPerS: 1000, batchRecords: 100, maxInFlight: 64 });
  const sent: { t: number; n: number }[] = [];
  let total = 0;
  client.on('sent', (b) => {
    total += b.end - b.start;
    sent.push({ t: clock.monotonic(), n: total });
  });
  client.start();
  for (let t = 0; t < 3000; t += 50) {
    await settle(8);
    clock.advance(50);
  }
  await settle(30);
  for (const s of sent) assert.ok(s.n <= 1000 + s.t + 100, `at ${s.t} ms: ${s.n} records sent, over the limit`);
  assert.ok(total >= 3000, `the limit is not a stall: ${total} records in 3 s at 1000/s with a 1000 burst`);
  assert.ok(total <= 4100, `${total} records in 3 s`);
  assert.ok(fleet.batches.length > 0);
  await client.stop({ waitMs: 0 });
});

test('requestSync sends now without waiting for the pacing delay', async () => {
  const { clock, client } = await setup(1000, { rateRecordsPerS: 100, batchRecords: 100, maxInFlight: 64 });
  client.start();
  await until(() => client.stats().recordsSent >= 200, 'first sends');
  await settle(30);
  // The bucket's one-second burst (100), plus one batch taken into debt, then paced.
  assert.equal(client.stats().recordsSent, 200, 'one second worth and a batch, then paced');
  client.requestSync();
  await until(() => client.deliveredSize === 1000, 'the rest went at once');
  assert.equal(clock.monotonic(), 0, 'no fake time passed');
  await client.stop({ waitMs: 0 });
});

test('no ack in time: back to delivered and resent after a backoff; no PUBACK in time: the link is dropped', async () => {
  const { clock, mb, client, fleet, ledger } = await setup(300, { ackTimeoutMs: 1000, batchRecords: 100, maxInFlight: 2, reconnect: { initialMs: 200, maxMs: 1000, jitter: 0 } });
  fleet.silent = true;
  const backoffs: string[] = [];
  client.on('backoff', (b) => backoffs.push(b.reason));
  client.start();
  await until(() => fleet.batches.length >= 2, 'two batches');
  await settle(30);
  assert.deepEqual(fleet.batches, [[0, 100], [100, 200]], 'two in flight, no more');
  clock.advance(999);
  await settle();
  assert.equal(backoffs.length, 0);
  clock.advance(1);
  await until(() => backoffs.length === 1, 'resend backoff');
  assert.deepEqual(backoffs, ['resend']);
  assert.equal(client.stats().ackTimeouts, 1);
  fleet.silent = false;
  clock.advance(200);
  await until(() => client.deliveredSize === 300, 'delivered after the resend');
  assert.deepEqual(fleet.batches.slice(2, 3), [[0, 100]], 'resent from delivered');

  // The broker swallows publishes (no PUBACK ever, as on a half-dead link).
  await appendRecords(ledger, 100);
  mb.filter = (topic) => (topic.endsWith('/log') ? 'hang' : 'deliver');
  const disconnects: string[] = [];
  client.on('disconnected', (d) => disconnects.push(d.reason));
  client.requestSync();
  await until(() => client.stats().inFlight > 0, 'a batch sent into the void');
  await settle(20);
  clock.advance(1000);
  await until(() => disconnects.length === 1, 'dropped the link');
  assert.match(disconnects[0], /PUBACK/);
  mb.filter = undefined;
  await until(() => clock.pending().includes('sync:reconnect'), 'reconnect scheduled');
  clock.advance(200);
  await until(() => client.deliveredSize === 400, 'delivered after reconnecting');
  await client.stop({ waitMs: 0 });
});

test('nacks: an undecodable batch (null range) sends the device back; stale and malformed nacks change nothing', async () => {
  const { clock, mb, client, fleet } = await setup(300, { batchRecords: 100, maxInFlight: 2, reconnect: { initialMs: 100, maxMs: 100, jitter: 0 } });
  fleet.silent = true;
  const backoffs: string[] = [];
  client.on('backoff', (b) => backoffs.push(b.reason));
  client.start();
  await until(() => fleet.batches.length === 2, 'two batches in flight');
  for (const junk of ['not json', '[]', '{"start":-1,"end":5}', '{"start":"0","end":100}', JSON.stringify({ start: 0, end: 1e300 })]) mb.publish('keel/dev1/nack', junk);
  await settle(20);
  assert.deepEqual(backoffs, [], 'malformed nacks ignored');
  mb.publish('keel/dev1/nack', JSON.stringify({ start: null, end: null, code: 'KEEL_E_WIRE', reason: 'undecodable' }));
  await until(() => backoffs.length === 1, 'resend after a null-range nack');
  assert.equal(client.stats().nacks, 1);
  fleet.silent = false;
  clock.advance(100);
  await until(() => client.deliveredSize === 300, 'delivered');
  // A nack about batches delivered since is stale.
  mb.publish('keel/dev1/nack', JSON.stringify({ start: 0, end: 100, code: 'KEEL_E_WIRE', reason: 'late' }));
  await settle(20);
  assert.equal(client.stats().nacks, 1);
  await client.stop({ waitMs: 0 });
});

test('telemetry: every everyMs, configured outputs only, finite values, signed; dropped while offline', async () => {
  const clock = new FakeClock();
  const dk = deviceKey('test.example/dev1');
  const out: Buffer[] = [];
  let online = true;
  const t = new Telemetry({
    device: 'dev1',
    key: { name: dk.name, privateKey: dk.privateKey },
    clock,
    everyMs: 500,
    outputs: ['score', 'nav.vec'],
    send: (p) => (online ? (out.push(p), true) : false),
  });
  t.start();
  clock.advance(500);
  assert.equal(out.length, 0, 'nothing before the first inference');
  t.observe({ pipeline: 'nav', outputs: { score: Float32Array.of(0.5), vec: Float32Array.of(1, NaN, 3), other: Float32Array.of(7) }, stateOutputs: [] });
  t.observe({ pipeline: 'arm', outputs: { score: Float32Array.of(Infinity), vec: Float32Array.of(9) }, stateOutputs: [] });
  clock.advance(499);
  assert.equal(out.length, 0);
  clock.advance(1);
  assert.equal(out.length, 1);
  const { body } = openEnvelope<TelemetryBody>(TELEMETRY_DOMAIN, out[0], [dk.vkey]);
  assert.deepEqual(body.values, { 'nav.score': 0.5, 'nav.vec.0': 1, 'nav.vec.2': 3 });
  assert.equal(body.t, clock.now());
  clock.advance(500);
  assert.equal(out.length, 1, 'no new values, nothing sent');
  online = false;
  t.observe({ pipeline: 'nav', outputs: { score: Float32Array.of(0.25) }, stateOutputs: [] });
  clock.advance(500);
  assert.equal(t.stats().dropped, 1);
  online = true;
  clock.advance(500);
  assert.equal(out.length, 2);
  const second = openEnvelope<TelemetryBody>(TELEMETRY_DOMAIN, out[1], [dk.vkey]).body;
  assert.equal(second.seq, body.seq + 2, 'seq exposes the dropped message');
  assert.equal(second.boot, body.boot);
  t.stop();
  assert.deepEqual(clock.pending(), []);
  assert.throws(() => new Telemetry({ device: 'd', key: { name: 'n', privateKey: dk.privateKey }, clock, everyMs: 0, send: () => true }), RangeError);
});
