/** The fleet registry on a real SQLite file: devices, principals, secrets. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { KeelError } from '../../runtime/errors.ts';
import { verifierKey, SIGNATURE_TYPE_COSIGNATURE_V1 } from '../../runtime/ledger/note.ts';
import { openFleetDb, deviceKey, type FleetDb } from '../../fleet/db.ts';
import {
  addPrincipal,
  checkPrincipal,
  enroll,
  hashSecret,
  listDevices,
  listPrincipals,
  operatorKeys,
  principalRow,
  revoke,
  revokePrincipal,
  secretMatches,
} from '../../fleet/registry.ts';
import { makeKey, tempFleet } from './broker-fixtures.ts';

const fleetError = (re: RegExp) => (err: unknown) => err instanceof KeelError && err.code === 'KEEL_E_FLEET' && re.test(err.message);

describe('device registry', () => {
  let fleet: ReturnType<typeof tempFleet>;
  let db: FleetDb;
  before(() => {
    fleet = tempFleet('registry');
    db = fleet.db;
  });
  after(() => fleet.cleanup());

  test('enroll uses the key name by default, is idempotent, and is visible to another connection', () => {
    const k = makeKey('robot-1');
    const r1 = enroll(db, k.vkey, { now: 1000 });
    assert.equal(r1.outcome, 'enrolled');
    assert.deepEqual(r1.device, { id: 'robot-1', vkey: k.vkey, enrolledAt: 1000, revokedAt: null });
    const r2 = enroll(db, `  ${k.vkey}\n`, { now: 2000 });
    assert.equal(r2.outcome, 'unchanged');
    assert.equal(r2.device.enrolledAt, 1000);
    const other = openFleetDb(path.join(fleet.dir, 'fleet.db'), { readonly: true });
    try {
      assert.equal(deviceKey(other, 'robot-1'), k.vkey);
    } finally {
      other.close();
    }
  });

  test('--name overrides the key name and must be a valid device id', () => {
    const k = makeKey('some-key');
    assert.equal(enroll(db, k.vkey, { name: 'arm-7' }).device.id, 'arm-7');
    assert.throws(() => enroll(db, makeKey('x').vkey, { name: 'a/b' }), fleetError(/device id/));
    assert.throws(() => enroll(db, makeKey('x').vkey, { name: '_fleet' }), fleetError(/device id/));
    assert.throws(() => enroll(db, makeKey('ünïcode').vkey), fleetError(/pass --name/));
  });

  test('one key, one device; one id, one key', () => {
    const k = makeKey('robot-2');
    enroll(db, k.vkey);
    assert.throws(() => enroll(db, k.vkey, { name: 'robot-2b' }), fleetError(/already enrolled as device "robot-2"/));
    assert.throws(() => enroll(db, makeKey('robot-2').vkey), fleetError(/already enrolled with another key/));
  });

  test('bad keys are refused with the reason', () => {
    const k = makeKey('robot-3');
    assert.throws(() => enroll(db, 'robot-3+deadbeef+AAAA'), fleetError(/not a verifier key/));
    assert.throws(() => enroll(db, ''), fleetError(/not a verifier key/));
    assert.throws(() => enroll(db, k.vkey.replace(/\+[0-9a-f]{8}\+/, '+00000000+')), fleetError(/key ID/));
    const cosigner = verifierKey('robot-3', k.publicKey, SIGNATURE_TYPE_COSIGNATURE_V1);
    assert.throws(() => enroll(db, cosigner), fleetError(/type 0x04/));
    assert.throws(() => enroll(db, 42 as unknown as string), TypeError);
  });

  test('revoke sets revoked_at once; unknown devices are an error; re-enrolling a revoked device is explicit', () => {
    const k = makeKey('robot-4');
    enroll(db, k.vkey);
    assert.equal(revoke(db, 'robot-4', { now: 5000 }).revokedAt, 5000);
    assert.equal(revoke(db, 'robot-4', { now: 6000 }).revokedAt, 5000);
    assert.equal(deviceKey(db, 'robot-4'), undefined);
    assert.throws(() => revoke(db, 'nope'), fleetError(/no device "nope"/));
    assert.throws(() => enroll(db, k.vkey), fleetError(/revoked.*--reenroll/));
    assert.equal(enroll(db, k.vkey, { reenroll: true }).outcome, 'reenrolled');
    assert.equal(deviceKey(db, 'robot-4'), k.vkey);
    // A revoked id never takes another key: its records are bound to the old one.
    revoke(db, 'robot-4');
    assert.throws(() => enroll(db, makeKey('robot-4').vkey, { reenroll: true }), fleetError(/another key \(revoked\)/));
  });

  test('listDevices lists every device by id', () => {
    const ids = listDevices(db).map((d) => d.id);
    assert.deepEqual(ids, [...ids].sort());
    assert.ok(ids.includes('robot-1') && ids.includes('robot-4'));
  });
});

describe('principals', () => {
  let fleet: ReturnType<typeof tempFleet>;
  let db: FleetDb;
  before(() => {
    fleet = tempFleet('principals');
    db = fleet.db;
  });
  after(() => fleet.cleanup());

  test('secrets are stored only as salted scrypt hashes and checked in constant time', async () => {
    const { secret, principal } = await addPrincipal(db, 'alice', { role: 'operator', now: 10 });
    assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(principal, { name: 'alice', role: 'operator', vkey: null, createdAt: 10, revokedAt: null });
    const stored = (db.prepare('SELECT secret_hash FROM principals WHERE name = ?').get('alice') as { secret_hash: string }).secret_hash;
    assert.match(stored, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    assert.ok(!stored.includes(secret));
    assert.deepEqual(await checkPrincipal(db, 'alice', secret), principal);
    assert.equal(await checkPrincipal(db, 'alice', secret + 'x'), undefined);
    assert.equal(await checkPrincipal(db, 'bob', secret), undefined);
    // Two hashes of one secret differ (salt).
    assert.notEqual(await hashSecret('same-secret-123456'), await hashSecret('same-secret-123456'));
  });

  test('a malformed or greedy stored hash matches nothing', async () => {
    assert.equal(await secretMatches('x', 'plain'), false);
    assert.equal(await secretMatches('x', 'scrypt$1048576000$8$1$AAAAAAAAAAA=$AAAA'), false);
    assert.equal(await secretMatches('x', 'scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='), false);
  });

  test('given secrets, roles, operator keys and name rules', async () => {
    const op = makeKey('carol-signing');
    const { secret } = await addPrincipal(db, 'carol', { role: 'operator', secret: 'a-long-enough-secret', vkey: op.vkey });
    assert.equal(secret, 'a-long-enough-secret');
    assert.deepEqual(operatorKeys(db), [op.vkey]);
    await assert.rejects(addPrincipal(db, 'dave', { role: 'operator', secret: 'short' }), fleetError(/at least 16/));
    await assert.rejects(addPrincipal(db, 'dave', { role: 'operator', secret: 'v1.looks-like-a-token' }), fleetError(/v1\./));
    await assert.rejects(addPrincipal(db, 'dave', { role: 'admin' as 'operator' }), fleetError(/role/));
    await assert.rejects(addPrincipal(db, 'dave', { role: 'service', vkey: op.vkey }), fleetError(/only operators/));
    await assert.rejects(addPrincipal(db, 'dave', { role: 'operator', vkey: 'nonsense' }), fleetError(/not a verifier key/));
    await assert.rejects(addPrincipal(db, 'bad name', { role: 'operator' }), fleetError(/principal name/));
    await assert.rejects(addPrincipal(db, 'carol', { role: 'service' }), fleetError(/already exists/));
  });

  test('device ids and principal names share one namespace', async () => {
    enroll(db, makeKey('shared').vkey);
    await assert.rejects(addPrincipal(db, 'shared', { role: 'service' }), fleetError(/is a device id/));
    await addPrincipal(db, 'svc-1', { role: 'service' });
    assert.throws(() => enroll(db, makeKey('svc-1').vkey), fleetError(/operator\/service name/));
  });

  test('revoking a principal stops its secret; the name can then be reused', async () => {
    const { secret } = await addPrincipal(db, 'erin', { role: 'service' });
    assert.equal(revokePrincipal(db, 'erin', { now: 99 }).revokedAt, 99);
    assert.equal(revokePrincipal(db, 'erin', { now: 100 }).revokedAt, 99);
    assert.equal(await checkPrincipal(db, 'erin', secret), undefined);
    assert.throws(() => revokePrincipal(db, 'nobody'), fleetError(/no operator or service/));
    const again = await addPrincipal(db, 'erin', { role: 'operator' });
    assert.equal(principalRow(db, 'erin')?.revokedAt, null);
    assert.equal((await checkPrincipal(db, 'erin', again.secret))?.role, 'operator');
    assert.deepEqual(listPrincipals(db).map((p) => p.name), ['alice', 'carol', 'erin', 'svc-1']);
  });

  test('a read-only database gives a clear fleet error', async () => {
    const ro = openFleetDb(path.join(fleet.dir, 'fleet.db'), { readonly: true });
    try {
      assert.throws(() => enroll(ro, makeKey('ro-dev').vkey), fleetError(/read-only/));
      await assert.rejects(addPrincipal(ro, 'ro-user', { role: 'service' }), fleetError(/read-only/));
    } finally {
      ro.close();
    }
  });
});
