/**
 * The fleet wire contract (runtime/sync/wire.ts): the ledger batch codec (round trip, every
 * malformed shape refused with KEEL_E_WIRE), connect tokens (valid, forged, expired, wrong
 * audience or device, non-canonical, over-long lifetime, issued in the future, malformed), and
 * signed envelopes (valid, unknown key, tampered, wrong domain, malformed).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { canonicalBytes } from '../../runtime/ledger/jcs.ts';
import { defaultEd25519 } from '../../runtime/ledger/keys.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { formatCheckpoint, noteSigner, signNote, verifierKey } from '../../runtime/ledger/note.ts';
import {
  BATCH_MAGIC,
  COMMAND_DOMAIN,
  decodeBatch,
  deviceTopics,
  encodeBatch,
  fleetStateTopic,
  MAX_BATCH_BYTES,
  MAX_TOKEN_LIFETIME_S,
  mintToken,
  openEnvelope,
  parseDeviceTopic,
  readToken,
  sealEnvelope,
  TELEMETRY_DOMAIN,
  TOKEN_DOMAIN,
  TOKEN_SKEW_S,
  verifyToken,
  type Batch,
} from '../../runtime/sync/wire.ts';

function key(name: string) {
  const privateKey = new Uint8Array(randomBytes(32));
  const publicKey = defaultEd25519.publicKey(privateKey);
  return { name, privateKey, publicKey, vkey: verifierKey(name, publicKey) };
}

const dev = key('test.example/dev1');
const NOW = 1_700_000_000_000;

function sampleBatch(): Batch {
  const records = [Buffer.from('{"a":1}'), Buffer.from('{"b":2}'), Buffer.from('{"c":3}')];
  const text = formatCheckpoint({ origin: dev.name, size: 13, root: randomBytes(32) });
  return {
    header: { v: 1, device: 'dev1', start: 10, count: 3, checkpoint: signNote(text, [noteSigner(dev.name, dev.privateKey)]) },
    entries: [{ kind: 'record', bytes: records[0] }, { kind: 'hash', hash: leafHash(records[1]) }, { kind: 'record', bytes: records[2] }],
  };
}

/** A well-formed batch's bytes with `edit` applied to a copy. */
function edited(edit: (b: Buffer) => Buffer): Buffer {
  return edit(Buffer.from(encodeBatch(sampleBatch())));
}

const wire = { code: 'KEEL_E_WIRE' };

test('batch: encode/decode round trip keeps header and entries exactly', () => {
  const b = sampleBatch();
  const bytes = encodeBatch(b);
  assert.ok(bytes.subarray(0, 4).equals(BATCH_MAGIC));
  const d = decodeBatch(bytes);
  assert.deepEqual(d.header, b.header);
  assert.equal(d.entries.length, 3);
  assert.equal(d.entries[0].kind, 'record');
  assert.ok(Buffer.from((d.entries[0] as { bytes: Uint8Array }).bytes).equals(Buffer.from('{"a":1}')));
  assert.equal(d.entries[1].kind, 'hash');
  assert.ok(Buffer.from((d.entries[1] as { hash: Uint8Array }).hash).equals(leafHash(Buffer.from('{"b":2}'))));
  // The header is JCS: re-encoding what was decoded gives the same bytes.
  assert.ok(encodeBatch(d).equals(bytes));
  // Decoding from a view into a larger buffer works (MQTT payloads are often slices).
  const big = Buffer.concat([Buffer.alloc(7), bytes]);
  assert.deepEqual(decodeBatch(big.subarray(7)).header, b.header);
  assert.throws(() => encodeBatch({ header: { ...b.header, count: 2 }, entries: b.entries }), RangeError);
});

test('batch: malformed payloads are refused with KEEL_E_WIRE, never a crash', () => {
  const good = encodeBatch(sampleBatch());
  const hlen = good.readUInt32BE(4);
  const withHeader = (h: Record<string, unknown>) => {
    const head = Buffer.from(JSON.stringify(h));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(head.length);
    return Buffer.concat([BATCH_MAGIC, len, head, good.subarray(8 + hlen)]);
  };
  const hdr = sampleBatch().header;
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['no magic', edited((b) => (b.write('KLB2', 0), b))],
    ['header length past the end', edited((b) => (b.writeUInt32BE(b.length, 4), b))],
    ['header length over the limit', edited((b) => (b.writeUInt32BE(70_000, 4), b))],
    ['header not JSON', edited((b) => (b[8] = 0x7b + 1, b))],
    ['header an array', withHeader([] as unknown as Record<string, unknown>)],
    ['version 2', withHeader({ ...hdr, v: 2 })],
    ['device id with a slash', withHeader({ ...hdr, device: 'a/b' })],
    ['device id starting with _', withHeader({ ...hdr, device: '_fleet' })],
    ['negative start', withHeader({ ...hdr, start: -1 })],
    ['fractional start', withHeader({ ...hdr, start: 1.5 })],
    ['count 0', withHeader({ ...hdr, count: 0 })],
    ['count beyond the entries', withHeader({ ...hdr, count: 4 })],
    ['count below the entries (trailing bytes)', withHeader({ ...hdr, count: 2 })],
    ['no checkpoint', withHeader({ ...hdr, checkpoint: '' })],
    ['truncated entry', good.subarray(0, good.length - 2)],
    ['entry length past the payload', edited((b) => (b.writeUInt32BE(1 << 30, 8 + hlen + 1), b))],
    ['unknown entry kind', edited((b) => ((b[8 + hlen] = 7), b))],
    ['trailing byte', Buffer.concat([good, Buffer.of(0)])],
    ['oversized', Buffer.concat([good, Buffer.alloc(MAX_BATCH_BYTES)])],
  ];
  // A hash entry must be exactly 32 bytes: turn the 7-byte record entry into a "hash".
  cases.push(['31-byte hash', edited((b) => ((b[8 + hlen] = 1), b))]);
  for (const [what, bytes] of cases) assert.throws(() => decodeBatch(bytes), wire, what);
  // Random garbage, and random corruption of a good batch: always a clean refusal or a batch.
  for (let i = 0; i < 300; i++) {
    const junk = i % 2 ? randomBytes(i) : Buffer.from(good).fill(i & 0xff, 8 + (i % (good.length - 8)), 9 + (i % (good.length - 8)));
    try {
      decodeBatch(junk);
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'KEEL_E_WIRE', `garbage ${i}: ${(err as Error).message}`);
    }
  }
});

test('topics: per-device subtree, the fleet state, parsing; bad ids and prefixes refused', () => {
  const t = deviceTopics('keel', 'dev1');
  assert.equal(t.log, 'keel/dev1/log');
  assert.equal(t.cmdResult, 'keel/dev1/cmd/result');
  assert.equal(t.subtree, 'keel/dev1/#');
  assert.equal(fleetStateTopic('site/a'), 'site/a/_fleet/state');
  assert.deepEqual(parseDeviceTopic('keel', 'keel/dev1/cmd/result'), { device: 'dev1', rest: 'cmd/result' });
  assert.equal(parseDeviceTopic('keel', 'keel/_fleet/state'), undefined);
  assert.equal(parseDeviceTopic('keel', 'other/dev1/log'), undefined);
  assert.throws(() => deviceTopics('keel', 'a+b'), RangeError);
  assert.throws(() => deviceTopics('keel/#', 'dev1'), RangeError);
  assert.throws(() => deviceTopics('', 'dev1'), RangeError);
});

/** A token over arbitrary claim bytes, signed by `k`. */
function rawToken(claimBytes: Buffer, k = dev): string {
  const sig = defaultEd25519.sign(Buffer.concat([Buffer.from(`${TOKEN_DOMAIN}\n`), claimBytes]), k.privateKey);
  return `v1.${claimBytes.toString('base64url')}.${Buffer.from(sig).toString('base64url')}`;
}

test('tokens: a valid one verifies; forged, expired, wrong audience or device, non-canonical, too long-lived are refused', () => {
  const check = { device: 'dev1', audience: 'keel-fleet', vkey: dev.vkey, nowMs: NOW };
  const tok = mintToken({ device: 'dev1', audience: 'keel-fleet', key: dev, nowMs: NOW, lifetimeS: 600 });
  const claims = verifyToken(tok, check);
  assert.equal(claims.sub, 'dev1');
  assert.equal(claims.exp - claims.iat, 600);
  assert.notEqual(mintToken({ device: 'dev1', audience: 'keel-fleet', key: dev, nowMs: NOW }), tok, 'a fresh jti each time');
  const auth = { code: 'KEEL_E_AUTH' };
  // Forged: signed by another key under the same name.
  const forger = key(dev.name);
  assert.throws(() => verifyToken(mintToken({ device: 'dev1', audience: 'keel-fleet', key: forger, nowMs: NOW }), check), auth);
  // A flipped signature bit.
  const parts = tok.split('.');
  const sig = Buffer.from(parts[2], 'base64url');
  sig[10] ^= 1;
  assert.throws(() => verifyToken(`${parts[0]}.${parts[1]}.${sig.toString('base64url')}`, check), auth);
  // Expired (beyond the tolerated skew), and issued in the future.
  assert.throws(() => verifyToken(tok, { ...check, nowMs: NOW + (600 + TOKEN_SKEW_S) * 1000 }), /expired/);
  assert.doesNotThrow(() => verifyToken(tok, { ...check, nowMs: NOW + (600 + TOKEN_SKEW_S - 1) * 1000 }));
  assert.throws(() => verifyToken(tok, { ...check, nowMs: NOW - (TOKEN_SKEW_S + 5) * 1000 }), /future/);
  // Another fleet, another device.
  assert.throws(() => verifyToken(tok, { ...check, audience: 'other-fleet' }), /fleet "keel-fleet", not "other-fleet"/);
  assert.throws(() => verifyToken(tok, { ...check, device: 'dev2' }), auth);
  // Non-canonical claims (whitespace, key order), validly signed: refused before the signature counts.
  const c = { aud: 'keel-fleet', sub: 'dev1', iat: NOW / 1000, exp: NOW / 1000 + 60, jti: 'abc' };
  assert.throws(() => verifyToken(rawToken(Buffer.from(JSON.stringify(c))), check), /canonical/);
  assert.throws(() => verifyToken(rawToken(Buffer.from(JSON.stringify(c, null, 1))), check), /canonical/);
  assert.doesNotThrow(() => verifyToken(rawToken(Buffer.from(canonicalBytes(c))), check));
  // Lifetime over the maximum, validly signed; and mintToken refuses to make one.
  const long = { ...c, exp: c.iat + MAX_TOKEN_LIFETIME_S + 1 };
  assert.throws(() => verifyToken(rawToken(Buffer.from(canonicalBytes(long))), check), /lifetime/);
  assert.throws(() => mintToken({ device: 'dev1', audience: 'a', key: dev, nowMs: NOW, lifetimeS: MAX_TOKEN_LIFETIME_S + 1 }), RangeError);
  assert.throws(() => verifyToken(rawToken(Buffer.from(canonicalBytes({ ...c, exp: c.iat }))), check), /lifetime/);
  // Extra or missing claims, malformed shapes.
  assert.throws(() => verifyToken(rawToken(Buffer.from(canonicalBytes({ ...c, admin: true }))), check), { code: 'KEEL_E_WIRE' });
  for (const bad of ['', 'v1', 'v2.a.b', 'v1.a.b.c', 'v1.!!.AA', `v1.${'A'.repeat(3000)}.AA`, 'v1.bm90IGpzb24.AA']) {
    assert.throws(() => verifyToken(bad, check), { code: 'KEEL_E_WIRE' }, bad.slice(0, 20));
  }
  // readToken does not verify: it only says whose key to check with.
  assert.equal(readToken(tok).claims.sub, 'dev1');
});

test('envelopes: valid ones open; unknown key, tampered body, wrong domain and malformed ones are refused', () => {
  const op = key('operator.alice');
  const body = { v: 1, id: 'c1', device: 'dev1', issuedAt: NOW, expiresAt: NOW + 60_000, command: { type: 'sync' } };
  const env = sealEnvelope(COMMAND_DOMAIN, body, op);
  const opened = openEnvelope(COMMAND_DOMAIN, env, [dev.vkey, op.vkey]);
  assert.deepEqual(opened.body, body);
  assert.equal(opened.signer.name, 'operator.alice');
  const auth = { code: 'KEEL_E_AUTH' };
  assert.throws(() => openEnvelope(COMMAND_DOMAIN, env, [dev.vkey]), auth, 'unknown signer');
  // Same name, other key: the key id differs, so it is unknown too.
  assert.throws(() => openEnvelope(COMMAND_DOMAIN, env, [key('operator.alice').vkey]), auth);
  const tampered = env.toString().replace('"sync"', '"rebirth"');
  assert.throws(() => openEnvelope(COMMAND_DOMAIN, tampered, [op.vkey]), auth, 'tampered body');
  assert.throws(() => openEnvelope(TELEMETRY_DOMAIN, env, [op.vkey]), auth, 'signed for another purpose');
  const e = JSON.parse(env.toString());
  assert.throws(() => openEnvelope(COMMAND_DOMAIN, JSON.stringify({ ...e, sig: Buffer.alloc(10).toString('base64') }), [op.vkey]), auth);
  for (const bad of ['', 'null', '[]', '{"body":1,"key":"x","sig":"y"}', '{"body":{},"key":1,"sig":"y"}', 'x'.repeat(70_000)]) {
    assert.throws(() => openEnvelope(COMMAND_DOMAIN, bad, [op.vkey]), { code: 'KEEL_E_WIRE' }, bad.slice(0, 20));
  }
});
