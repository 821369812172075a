/**
 * The fleet broker's authentication and ACLs, with a real aedes broker on an ephemeral port,
 * a real SQLite registry and real mqtt.js clients.
 */
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { enroll, revoke, addPrincipal, revokePrincipal } from '../../fleet/registry.ts';
import { forwardAllowed, publishProblem, subscribeProblem, TokenReplayCache, type FleetLogger, type Identity } from '../../fleet/auth.ts';
import { FakeClock } from '../../runtime/clock.ts';
import type { FleetBroker } from '../../fleet/broker.ts';
import type { FleetDb } from '../../fleet/db.ts';
import { broker, closed, collect, connect, endAll, makeKey, publishAck, refusal, sleep, subscribe, tempFleet, token, type TestKey } from './broker-fixtures.ts';
import { waitFor } from '../helpers.ts';

describe('fleet broker authentication and ACLs', () => {
  let fleet: ReturnType<typeof tempFleet>;
  let db: FleetDb;
  let b: FleetBroker;
  let url: string;
  let alpha: TestKey;
  let beta: TestKey;
  let opsSecret: string;
  let ingestSecret: string;
  const logged: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  const logger: FleetLogger = {
    debug: (obj, msg) => logged.push({ level: 'debug', obj, msg }),
    info: (obj, msg) => logged.push({ level: 'info', obj, msg }),
    warn: (obj, msg) => logged.push({ level: 'warn', obj, msg }),
    error: (obj, msg) => logged.push({ level: 'error', obj, msg }),
  };

  before(async () => {
    fleet = tempFleet('broker-auth');
    db = fleet.db;
    alpha = makeKey('alpha');
    beta = makeKey('beta');
    enroll(db, alpha.vkey);
    enroll(db, beta.vkey);
    opsSecret = (await addPrincipal(db, 'ops', { role: 'operator' })).secret;
    ingestSecret = (await addPrincipal(db, 'ingest', { role: 'service' })).secret;
    b = await broker(db, { revalidateMs: 50, logger });
    url = b.addresses.tcp!;
  });
  afterEach(endAll);
  after(async () => {
    await b.close();
    fleet.cleanup();
  });

  const device = (key: TestKey, o: { id?: string; clientId?: string; will?: { topic: string; payload: string; retain?: boolean } } = {}) =>
    connect(url, { username: o.id ?? key.name, password: token(o.id ?? key.name, key), clientId: o.clientId ?? `${o.id ?? key.name}-${Math.random().toString(36).slice(2)}`, will: o.will ? { qos: 1, retain: false, ...o.will } : undefined });

  test('a device with a valid token connects and publishes in its subtree; a service receives it', async () => {
    const svc = await connect(url, { username: 'ingest', password: ingestSecret });
    assert.deepEqual(await subscribe(svc, ['keel/+/log', 'keel/+/status']), [1, 1]);
    const got = collect(svc);
    const dev = await device(alpha);
    await publishAck(dev, 'keel/alpha/log', Buffer.from('batch'));
    await publishAck(dev, 'keel/alpha/status', '{"online":true}', { retain: true });
    await publishAck(dev, 'keel/alpha/telemetry', '{}');
    await publishAck(dev, 'keel/alpha/cmd/result', '{}');
    await waitFor(() => got.length === 2, 'the service to receive log and status');
    assert.deepEqual(got.map((g) => g.topic).sort(), ['keel/alpha/log', 'keel/alpha/status']);
    assert.ok(b.stats().accepted >= 2);
  });

  test('publishing as another device or outside the subtree is refused, disconnects the publisher, and the broker goes on', async () => {
    const svc = await connect(url, { username: 'ingest', password: ingestSecret });
    await subscribe(svc, ['keel/#']);
    const got = collect(svc);
    for (const topic of ['keel/beta/log', 'keel/alpha/ack', 'other/alpha/log', 'keel/alpha/log/x', 'keel/_fleet/state', '$SYS/x']) {
      const denied = b.stats().publishDenied;
      const dev = await device(alpha);
      await assert.rejects(publishAck(dev, topic, 'forged'), /closed|PUBACK/, topic);
      await closed(dev);
      assert.equal(b.stats().publishDenied, denied + 1, topic);
    }
    // A retained batch would pin 8 MiB in the broker: only status may be retained.
    const dev = await device(alpha);
    await assert.rejects(publishAck(dev, 'keel/alpha/log', 'x', { retain: true }));
    // The broker still serves, and nothing forged reached the subscriber.
    const ok = await device(alpha);
    await publishAck(ok, 'keel/alpha/log', 'real');
    await waitFor(() => got.some((g) => g.payload === 'real'), 'the real batch');
    assert.deepEqual(got.filter((g) => !g.retain && (g.payload === 'forged' || g.topic !== 'keel/alpha/log')), []);
  });

  test('expired, forged, wrong-audience, replayed and malformed tokens are refused with "bad username or password"', async () => {
    const before = b.stats().refused;
    const old = Date.now() - 2 * 3600_000;
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', alpha, { nowMs: old, lifetimeS: 600 }) }), 4);
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', beta) }), 4, 'signed by another key');
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', makeKey('alpha')) }), 4, 'same name, other key');
    assert.equal(await refusal(url, { username: 'alpha', password: token('beta', alpha) }), 4, 'token for another device');
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', alpha, { audience: 'other-fleet' }) }), 4);
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', alpha, { nowMs: Date.now() + 3600_000 }) }), 4, 'issued in the future');
    assert.equal(await refusal(url, { username: 'alpha', password: 'v1.garbage.here' }), 4);
    assert.equal(await refusal(url, { username: 'alpha', password: '' }), 4);
    assert.equal(await refusal(url, { username: 'alpha' }), 4);
    assert.equal(await refusal(url, { username: 'al/pha', password: token('al/pha', alpha) }), 4);
    const t = token('alpha', alpha);
    const first = await connect(url, { username: 'alpha', password: t });
    first.end(true);
    assert.equal(await refusal(url, { username: 'alpha', password: t }), 4, 'replay');
    const after = b.stats().refused;
    assert.equal(after.expired - before.expired, 2);
    assert.equal(after.forged - before.forged, 3);
    assert.equal(after.audience - before.audience, 1);
    assert.equal(after.replay - before.replay, 1);
    assert.equal(after.malformed - before.malformed, 4);
  });

  test('unenrolled and revoked devices are refused with "not authorized"; revocation kicks a live client', async () => {
    const stranger = makeKey('stranger');
    assert.equal(await refusal(url, { username: 'stranger', password: token('stranger', stranger) }), 5);
    const gamma = makeKey('gamma');
    enroll(db, gamma.vkey);
    const live = await device(gamma);
    await publishAck(live, 'keel/gamma/log', 'x');
    revoke(db, 'gamma'); // from "another process": the broker polls the registry
    await closed(live, 2000);
    assert.equal(await refusal(url, { username: 'gamma', password: token('gamma', gamma) }), 5);
    assert.ok(b.stats().kicked >= 1);
    assert.ok(b.stats().refused.revoked >= 1);
  });

  test('a revoked device’s Will is not published', async () => {
    const delta = makeKey('delta');
    enroll(db, delta.vkey);
    const svc = await connect(url, { username: 'ingest', password: ingestSecret });
    await subscribe(svc, ['keel/delta/status']);
    const got = collect(svc);
    const dev = await device(delta, { will: { topic: 'keel/delta/status', payload: '{"online":false}' } });
    revoke(db, 'delta');
    assert.equal(b.revalidate(), 1);
    await closed(dev);
    await sleep(100);
    assert.deepEqual(got, []);
  });

  test('a Will outside the device’s subtree is refused at connect', async () => {
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', alpha), will: { topic: 'keel/beta/status', payload: Buffer.from('x'), qos: 1, retain: true } }), 5);
    // Its own status is a fine Will, and it is published when the link drops.
    const svc = await connect(url, { username: 'ingest', password: ingestSecret });
    await subscribe(svc, ['keel/alpha/status']);
    const got = collect(svc);
    const dev = await device(alpha, { will: { topic: 'keel/alpha/status', payload: '{"online":false}' } });
    (dev.stream as net.Socket).destroy();
    await waitFor(() => got.some((g) => g.payload === '{"online":false}'), 'the Will');
  });

  test('device subscriptions are confined to its ack, nack, cmd and the fleet state', async () => {
    const dev = await device(alpha);
    assert.deepEqual(await subscribe(dev, ['keel/alpha/ack', 'keel/alpha/nack', 'keel/alpha/cmd', 'keel/_fleet/state']), [1, 1, 1, 1]);
    assert.deepEqual(await subscribe(dev, ['keel/beta/cmd', 'keel/+/ack', 'keel/#', '#', 'keel/alpha/log', '$SYS/#']), [128, 128, 128, 128, 128, 128]);
    assert.ok(dev.connected, 'a refused subscription does not disconnect');
  });

  test('operators publish commands but not logs; they read status and results, never batches', async () => {
    const ops = await connect(url, { username: 'ops', password: opsSecret });
    assert.deepEqual(await subscribe(ops, ['keel/#']), [1]);
    const got = collect(ops);
    const dev = await device(alpha);
    await subscribe(dev, ['keel/alpha/cmd']);
    const devGot = collect(dev);
    await publishAck(ops, 'keel/alpha/cmd', '{"cmd":1}');
    await waitFor(() => devGot.length === 1, 'the command at the device');
    await publishAck(dev, 'keel/alpha/log', 'secret batch');
    await publishAck(dev, 'keel/alpha/cmd/result', '{"ok":1}');
    await waitFor(() => got.some((g) => g.topic === 'keel/alpha/cmd/result'), 'the result at the operator');
    assert.equal(got.some((g) => g.topic === 'keel/alpha/log'), false, 'batches are not forwarded to operators');
    await assert.rejects(publishAck(ops, 'keel/alpha/log', 'forged'));
    const ops2 = await connect(url, { username: 'ops', password: opsSecret });
    await assert.rejects(publishAck(ops2, 'keel/alpha/cmd', 'x', { retain: true }), /closed/, 'retained commands');
    const ops3 = await connect(url, { username: 'ops', password: opsSecret });
    await assert.rejects(publishAck(ops3, 'keel/not a device/cmd', 'x'));
    assert.equal(await refusal(url, { username: 'ops', password: 'wrong-secret-wrong-secret' }), 4);
    assert.equal(await refusal(url, { username: 'nobody', password: 'wrong-secret-wrong-secret' }), 4);
  });

  test('a revoked principal is refused and kicked', async () => {
    const { secret } = await addPrincipal(db, 'temp-ops', { role: 'operator' });
    const c = await connect(url, { username: 'temp-ops', password: secret });
    revokePrincipal(db, 'temp-ops');
    await closed(c, 2000);
    assert.equal(await refusal(url, { username: 'temp-ops', password: secret }), 4);
  });

  test('services subscribe to anything under the prefix, including $share, and nothing outside', async () => {
    const svc = await connect(url, { username: 'ingest', password: ingestSecret });
    assert.deepEqual(await subscribe(svc, ['keel/+/log', '$share/workers/keel/+/log', 'keel/#']), [1, 1, 1]);
    assert.deepEqual(await subscribe(svc, ['#', '$SYS/#', 'other/#', '$share/g/other/#', '$share/g/#']), [128, 128, 128, 128, 128]);
    await publishAck(svc, 'keel/alpha/ack', 'note', { retain: true });
    await publishAck(svc, 'keel/_fleet/state', '{"online":true}', { retain: true });
    // A device receives its own retained ack, not another's.
    const dev = await device(beta);
    const got = collect(dev);
    await subscribe(dev, ['keel/beta/ack', 'keel/_fleet/state']);
    await waitFor(() => got.length === 1, 'the retained fleet state');
    assert.equal(got[0].topic, 'keel/_fleet/state');
  });

  test('a client id held by another identity cannot be taken over', async () => {
    const svc = await connect(url, { username: 'ingest', password: ingestSecret, clientId: 'keel-ingest-1' });
    assert.equal(await refusal(url, { username: 'alpha', password: token('alpha', alpha), clientId: 'keel-ingest-1' }), 2);
    assert.ok(svc.connected, 'the ingest stays connected');
    // The same identity may take over its own session (a reconnect before the broker noticed).
    const d1 = await device(alpha, { clientId: 'alpha' });
    const d2 = await device(alpha, { clientId: 'alpha' });
    await closed(d1);
    assert.ok(d2.connected);
  });

  test('an oversized packet closes the connection before it is buffered', async () => {
    const dev = await device(alpha);
    const before = b.stats().oversize;
    // 9 MiB: over the 8 MiB batch limit plus slack.
    dev.publish('keel/alpha/log', Buffer.alloc(9 * 1024 * 1024), { qos: 1 });
    await closed(dev);
    assert.equal(b.stats().oversize, before + 1);
    // An oversized CONNECT is refused too (the limit before authentication is small).
    const sock = net.connect(Number(new URL(url).port), '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write(Buffer.from([0x10, 0xff, 0xff, 0x7f])); // CONNECT announcing 2 MiB
    await new Promise((r) => sock.once('close', r));
    assert.equal(b.stats().oversize, before + 2);
  });

  test('refusals are logged with their reason, never with the secret or token', async () => {
    const t = token('alpha', makeKey('alpha'));
    assert.equal(await refusal(url, { username: 'alpha', password: t }), 4);
    assert.equal(await refusal(url, { username: 'ops', password: `${opsSecret}x` }), 4);
    const refusals = logged.filter((l) => l.msg === 'connect refused');
    assert.ok(refusals.some((l) => l.obj.reason === 'forged' && l.obj.username === 'alpha' && /does not verify/.test(String(l.obj.detail))));
    assert.ok(refusals.some((l) => l.obj.reason === 'secret' && l.obj.username === 'ops'));
    const text = JSON.stringify(logged);
    assert.ok(!text.includes(t.split('.')[2]), 'no token signature in the log');
    assert.ok(!text.includes(opsSecret) && !text.includes(ingestSecret), 'no secret in the log');
  });

  test('a device over the batch size limit but within the frame is refused by the ACL', async () => {
    const dev = await device(alpha);
    await assert.rejects(publishAck(dev, 'keel/alpha/telemetry', Buffer.alloc(70 * 1024)));
  });
});

describe('fleet broker with a fake clock', () => {
  test('tokens are checked against the injected clock, and tokens minted before the broker started are refused', async () => {
    const fleet = tempFleet('broker-clock');
    const clock = new FakeClock(Date.now());
    const k = makeKey('eps');
    enroll(fleet.db, k.vkey);
    const early = token('eps', k, { nowMs: clock.now() - 400_000, lifetimeS: 3600 });
    const b = await broker(fleet.db, { clock });
    try {
      const url = b.addresses.tcp!;
      assert.equal(await refusal(url, { username: 'eps', password: early }), 4, 'issued before start - skew');
      const t = token('eps', k, { nowMs: clock.now(), lifetimeS: 60 });
      clock.advance(61_000 + 300_000); // past exp + skew
      assert.equal(await refusal(url, { username: 'eps', password: t }), 4);
      const fresh = await connect(url, { username: 'eps', password: token('eps', k, { nowMs: clock.now() }) });
      fresh.end(true);
      // The revalidation timer runs on the injected clock.
      const live = await connect(url, { username: 'eps', password: token('eps', k, { nowMs: clock.now() }) });
      revoke(fleet.db, 'eps');
      clock.advance(1000);
      await closed(live);
    } finally {
      await endAll();
      await b.close();
      fleet.cleanup();
    }
  });
});

describe('ACL and replay-cache rules', () => {
  const dev: Identity = { kind: 'device', name: 'd1', vkey: 'x' };
  const op: Identity = { kind: 'principal', name: 'op', role: 'operator', ephemeral: false };
  const svc: Identity = { kind: 'principal', name: 'svc', role: 'service', ephemeral: false };

  test('publish rules with a multi-level prefix', () => {
    const p = 'plant/line-1';
    assert.equal(publishProblem(dev, { topic: 'plant/line-1/d1/log', payload: Buffer.alloc(8 * 1024 * 1024) }, p), undefined);
    assert.match(publishProblem(dev, { topic: 'plant/line-1/d1/log', payload: Buffer.alloc(8 * 1024 * 1024 + 1) }, p)!, /exceeds/);
    assert.match(publishProblem(dev, { topic: 'plant/d1/log', payload: 'x' }, p)!, /may publish only/);
    assert.match(publishProblem(dev, { topic: 'plant/line-1/d1/status\u0000', payload: 'x' }, p)!, /U\+0000/);
    assert.equal(publishProblem(dev, { topic: 'plant/line-1/d1/status', payload: '{}', retain: true }, p), undefined);
    assert.equal(publishProblem(op, { topic: 'plant/line-1/d9/cmd', payload: '{}' }, p), undefined);
    assert.match(publishProblem(op, { topic: 'plant/line-1/_fleet/cmd', payload: '{}' }, p)!, /may publish only/);
    assert.equal(publishProblem(svc, { topic: 'plant/line-1/_fleet/state', payload: '{}', retain: true }, p), undefined);
    assert.match(publishProblem(svc, { topic: 'plant/line-2/x', payload: '' }, p)!, /only under plant\/line-1\//);
    assert.match(publishProblem(svc, { topic: '$share/g/plant/line-1/x', payload: '' }, p)!, /reserved/);
  });

  test('subscribe and forward rules', () => {
    assert.equal(subscribeProblem(op, 'keel/#', 'keel'), undefined);
    assert.match(subscribeProblem(op, '$share/g/keel/+/log', 'keel')!, /may subscribe only/);
    assert.match(subscribeProblem(op, 'keel/', 'keel')!, /may subscribe only/);
    assert.match(subscribeProblem(op, 'keelx/#', 'keel')!, /may subscribe only/);
    assert.equal(subscribeProblem(svc, '$share/w-1/keel/+/log', 'keel'), undefined);
    assert.match(subscribeProblem(svc, '$share/w+/keel/+/log', 'keel')!, /may subscribe only/);
    assert.equal(forwardAllowed(op, 'keel/d1/telemetry', 'keel'), true);
    assert.equal(forwardAllowed(op, 'keel/d1/log', 'keel'), false);
    assert.equal(forwardAllowed(op, 'keel/d1/cmd', 'keel'), false);
    assert.equal(forwardAllowed(dev, 'keel/d1/cmd', 'keel'), true);
    assert.equal(forwardAllowed(dev, 'keel/d2/cmd', 'keel'), false);
    assert.equal(forwardAllowed(dev, 'keel/_fleet/state', 'keel'), true);
    assert.equal(forwardAllowed(svc, '$SYS/x/heartbeat', 'keel'), false);
  });

  test('the replay cache remembers ids until expiry and fails closed when full', () => {
    const c = new TokenReplayCache({ maxEntries: 4, maxPerDevice: 2 });
    assert.equal(c.admit('a', 'j1', 1000, 0), 'ok');
    assert.equal(c.admit('a', 'j1', 1000, 500), 'replay');
    assert.equal(c.admit('b', 'j1', 1000, 500), 'ok', 'ids are per device');
    assert.equal(c.admit('a', 'j2', 2000, 500), 'ok');
    assert.equal(c.admit('a', 'j3', 2000, 500), 'full', 'per-device bound');
    assert.equal(c.admit('c', 'j1', 2000, 500), 'ok');
    assert.equal(c.admit('d', 'j1', 2000, 500), 'full', 'global bound');
    // After j1 of a and b expire, there is room again; an expired id may not come back as new
    // (its token no longer verifies anyway), but it no longer takes room.
    assert.equal(c.admit('d', 'j1', 3000, 1000), 'ok');
    assert.equal(c.size, 3);
    assert.throws(() => new TokenReplayCache({ maxEntries: 0 }), RangeError);
  });
});
