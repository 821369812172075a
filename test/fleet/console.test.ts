import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { cmdConsole, parseCommandWords, parseDuration, verifyStoredDevice } from '../../fleet/console.ts';
import { openFleetDb, type FleetDb } from '../../fleet/db.ts';
import { canonicalBytes } from '../../runtime/ledger/jcs.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import type { Ledger } from '../../runtime/ledger/ledger.ts';
import { cosign, noteVerifier, openNote, verifierKey } from '../../runtime/ledger/note.ts';
import { parseTlogProof, verifyTlogProof } from '../../runtime/ledger/proof.ts';
import { captureIo, enroll, ingestLedger, makeFleetState, storeSynthetic, type FleetKey } from './console-fixture.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-console-'));
const state = path.join(tmp, 'state');
let db: FleetDb;
let fleet: FleetKey;
let ledger: Ledger;
let deviceVkey: string;
const COUNT = 3000;
const HASH_ONLY = [5, 6, 7];

before(async () => {
  ({ db, fleet } = makeFleetState(state, path.join(tmp, 'fleet.key')));
  const key = generateKeyFile(path.join(tmp, 'bot-1.key'), { name: 'fleet.example/bot-1' });
  enroll(db, 'bot-1', verifierKey('fleet.example/bot-1', key.publicKey), 1_700_000_000_000);
  ({ ledger, vkey: deviceVkey } = await ingestLedger(db, fleet, { id: 'bot-1', key, ledgerDir: path.join(tmp, 'ledger-1'), count: COUNT, hashOnly: HASH_ONLY }));
  const now = Date.now();
  db.prepare('INSERT INTO status(device, online, bd_seq, birth, last_seen, faults) VALUES (?, ?, ?, ?, ?, ?)').run(
    'bot-1',
    1,
    3,
    JSON.stringify({ online: true, device: 'bot-1', bdSeq: 3, ledgerSize: COUNT + 250, delivered: COUNT - 10, backlog: 260 }),
    now - 5000,
    2,
  );
  db.prepare('INSERT INTO rejects(device, code, reason, at) VALUES (?, ?, ?, ?)').run('bot-1', 'KEEL_E_AUTH', 'bad token', now);
  // A second device that never connected, and a third with fork evidence.
  const k2 = generateKeyFile(path.join(tmp, 'bot-2.key'), { name: 'fleet.example/bot-2' });
  enroll(db, 'bot-2', verifierKey('fleet.example/bot-2', k2.publicKey));
  const k3 = generateKeyFile(path.join(tmp, 'bot-3.key'), { name: 'fleet.example/bot-3' });
  enroll(db, 'bot-3', verifierKey('fleet.example/bot-3', k3.publicKey));
  db.prepare('INSERT INTO status(device, online, bd_seq, birth, last_seen, faults) VALUES (?, 0, 7, NULL, ?, 0)').run('bot-3', now - 7_200_000);
  db.prepare('INSERT INTO forks(device, held, offered, detected_at) VALUES (?, ?, ?, ?)').run('bot-3', 'held note', 'offered note', now);
});

after(async () => {
  await ledger?.close();
  db?.close();
  rmSync(tmp, { recursive: true, force: true });
});

test('devices: a table of online, last seen, backlog, verified size, faults, rejects and alarms', async () => {
  const c = captureIo();
  assert.equal(await cmdConsole('devices', ['--state', state], c.io), 0);
  assert.match(c.out[0], /^DEVICE\s+ONLINE\s+LAST SEEN\s+BACKLOG\s+VERIFIED\s+FAULTS\s+REJECTS\s+ALARM$/);
  const rows = Object.fromEntries(c.out.slice(1).map((l) => [l.split(/\s+/)[0], l.split(/\s{2,}/)]));
  assert.deepEqual(rows['bot-1'], ['bot-1', 'yes (#3)', '5s ago', '250', String(COUNT), '2', '1']);
  assert.deepEqual(rows['bot-2'], ['bot-2', 'never', 'never', '?', '0', '0', '0']);
  assert.deepEqual(rows['bot-3'], ['bot-3', 'no', '2h ago', '?', '0', '0', '0', 'FORK (1)']);
  assert.match(c.err.join('\n'), /ALARM: fork evidence held for bot-3/);

  const j = captureIo();
  assert.equal(await cmdConsole('devices', ['--state', state, '--json'], j.io), 0);
  const list = JSON.parse(j.out.join(''));
  assert.equal(list.length, 3);
  assert.deepEqual(
    { ...list[0], lastSeen: undefined, verifiedAt: undefined },
    { id: 'bot-1', vkey: deviceVkey, enrolledAt: 1_700_000_000_000, revokedAt: null, online: true, bdSeq: 3, lastSeen: undefined, backlog: 250, verified: COUNT, verifiedAt: undefined, faults: 2, rejects: 1, forks: 0 },
  );
  assert.equal(list[2].forks, 1);
});

test('verify: a good store verifies from its bytes, its checkpoint signature and the fleet cosignature', async () => {
  const c = captureIo();
  assert.equal(await cmdConsole('verify', ['bot-1', '--state', state], c.io), 0, c.err.join('\n'));
  assert.match(c.out[0], new RegExp(`^ok: bot-1: ${COUNT} records verified \\(3 held as hashes only: dropped on the device\\); checkpoint of ${COUNT} signed by fleet\\.example/bot-1\\+[0-9a-f]{8}, cosigned by keel-fleet\\+[0-9a-f]{8} at 2023-11-14T22:21:40\\.000Z$`));
  assert.deepEqual(c.errRaw, [], 'no progress line when stderr is not a terminal');
  // On a terminal: one line redrawn with \r, cleared at the end.
  const t = captureIo({ isTTY: true });
  assert.equal(await cmdConsole('verify', ['bot-1', '--state', state], t.io), 0);
  assert.ok(t.errRaw.length >= 2, 'progress drawn');
  assert.match(t.errRaw[0], /^\rverifying bot-1: \d+\/3000 \(\d+\.\d%\), \d+ records\/s/);
  assert.equal(t.errRaw.at(-1), '\r\x1b[K');
  const j = captureIo();
  assert.equal(await cmdConsole('verify', ['bot-1', '--state', state, '--json'], j.io), 0);
  assert.deepEqual({ ...JSON.parse(j.out[0]), signer: undefined, cosigner: undefined }, { ok: true, device: 'bot-1', records: COUNT, hashOnly: 3, size: COUNT, forks: 0, cosignedAt: 1_700_000_500, signer: undefined, cosigner: undefined });
});

/** Runs verify after `damage`, then undoes it; returns stderr. */
async function verifyDamaged(damage: () => void, undo: () => void): Promise<{ code: number; err: string }> {
  const rw = openFleetDb(path.join(state, 'fleet.db'));
  const saved = db;
  db = rw;
  try {
    damage();
    const c = captureIo();
    const code = await cmdConsole('verify', ['bot-1', '--state', state], c.io);
    return { code, err: c.err.join('\n') };
  } finally {
    undo();
    db = saved;
    rw.close();
  }
}

test('verify names the first bad record: flipped byte, wrong leaf, missing row, non-canonical JSON, wrong seq', async () => {
  const row = (i: number) => db.prepare('SELECT leaf, bytes FROM records WHERE device = ? AND idx = ?').get('bot-1', i) as { leaf: Buffer; bytes: Buffer };
  const put = (i: number, leaf: Buffer, bytes: Buffer | null) => db.prepare('UPDATE records SET leaf = ?, bytes = ? WHERE device = ? AND idx = ?').run(leaf, bytes, 'bot-1', i);
  const orig = row(1234);
  const restore = () => put(1234, orig.leaf, orig.bytes);

  let r = await verifyDamaged(() => {
    const b = Buffer.from(orig.bytes);
    b[b.length - 3] ^= 1;
    put(1234, orig.leaf, b);
  }, restore);
  assert.equal(r.code, 1);
  assert.match(r.err, /^FAILED: bot-1 at record 1234: the record bytes do not hash to the stored leaf hash$/);

  r = await verifyDamaged(() => put(1234, Buffer.alloc(32, 7), null), restore);
  assert.match(r.err, /FAILED: bot-1: the 3000 stored leaves do not hash to the root/);

  r = await verifyDamaged(
    () => db.prepare('DELETE FROM records WHERE device = ? AND idx = ?').run('bot-1', 1234),
    () => db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?, ?, ?, ?)').run('bot-1', 1234, orig.leaf, orig.bytes),
  );
  assert.match(r.err, /at record 1234: record 1234 is missing \(the next stored record is 1235\)/);

  const spaced = Buffer.from(JSON.stringify(JSON.parse(orig.bytes.toString()), null, 1));
  r = await verifyDamaged(() => put(1234, leafHash(spaced), spaced), restore);
  assert.match(r.err, /at record 1234: the record is not in RFC 8785 canonical form/);

  const reseq = Buffer.from(canonicalBytes({ ...JSON.parse(orig.bytes.toString()), seq: 99 }));
  r = await verifyDamaged(() => put(1234, leafHash(reseq), reseq), restore);
  assert.match(r.err, /at record 1234: the record says seq 99 at index 1234/);

  r = await verifyDamaged(
    () => db.prepare('INSERT INTO records(device, idx, leaf, bytes) VALUES (?, ?, ?, NULL)').run('bot-1', COUNT, Buffer.alloc(32)),
    () => db.prepare('DELETE FROM records WHERE device = ? AND idx = ?').run('bot-1', COUNT),
  );
  assert.match(r.err, new RegExp(`at record ${COUNT}: records beyond the verified size ${COUNT} are stored`));
  // Undone: good again.
  assert.equal(await cmdConsole('verify', ['bot-1', '--state', state], captureIo().io), 0);
});

test('verify refuses a forged cosignature, a foreign checkpoint and fork evidence', async () => {
  const st = db.prepare('SELECT checkpoint, cosigned FROM device_state WHERE device = ?').get('bot-1') as { checkpoint: string; cosigned: string };
  const setCosigned = (v: string) => db.prepare('UPDATE device_state SET cosigned = ? WHERE device = ?').run(v, 'bot-1');
  const other = generateKeyFile(path.join(tmp, 'other-fleet.key'), { name: 'keel-fleet' });
  const text = st.checkpoint.slice(0, st.checkpoint.indexOf('\n\n') + 1);
  let r = await verifyDamaged(() => setCosigned(st.checkpoint + cosign(text, { name: 'keel-fleet', privateKey: other.privateKey }, 1_700_000_600)), () => setCosigned(st.cosigned));
  assert.equal(r.code, 1);
  assert.match(r.err, /cosigned checkpoint carries no cosignature by keel-fleet\+/);
  const tamperedSig = st.cosigned.replace(/(— keel-fleet \S{20})(\S)/, (_m, a: string, b: string) => a + (b === 'A' ? 'B' : 'A'));
  r = await verifyDamaged(() => setCosigned(tamperedSig), () => setCosigned(st.cosigned));
  assert.match(r.err, /cosigned checkpoint: .*(does not verify|not padded)/);
  const setCheckpoint = (v: string) => db.prepare('UPDATE device_state SET checkpoint = ? WHERE device = ?').run(v, 'bot-1');
  r = await verifyDamaged(() => setCheckpoint(st.checkpoint.replace(/^fleet\.example\/bot-1\n3000\n/, 'fleet.example/bot-1\n2999\n')), () => setCheckpoint(st.checkpoint));
  assert.match(r.err, /stored checkpoint: .*does not verify/);
  r = await verifyDamaged(
    () => db.prepare("INSERT INTO forks(device, held, offered, detected_at) VALUES ('bot-1', 'a', 'b', 0)").run(),
    () => db.prepare("DELETE FROM forks WHERE device = 'bot-1'").run(),
  );
  assert.match(r.err, /fork evidence held \(1\)/);
  // An unknown device is a failure, not a crash.
  const u = captureIo();
  assert.equal(await cmdConsole('verify', ['nobody', '--state', state], u.io), 1);
  assert.match(u.err.join(''), /"nobody" is not enrolled/);
});

test('proof: a C2SP tlog-proof that verifies with the record bytes, the device key and the cosignature', async () => {
  for (const index of [0, 1, 1234, COUNT - 2, COUNT - 1]) {
    const c = captureIo();
    assert.equal(await cmdConsole('proof', ['bot-1', String(index), '--state', state], c.io), 0, c.err.join('\n'));
    const text = c.raw.join('');
    const p = parseTlogProof(text);
    assert.equal(p.index, index);
    const opened = verifyTlogProof(text, leafHash(ledger.read(index)), [noteVerifier(deviceVkey)], { origin: 'fleet.example/bot-1' });
    assert.equal(opened.checkpoint.size, COUNT);
    // The proof's checkpoint carries the fleet's witness cosignature too.
    assert.ok(openNote(p.checkpoint, [noteVerifier(fleet.vkey)]).verified.length === 1);
    // The same record under another index, or another record, does not verify.
    assert.throws(() => verifyTlogProof(text, leafHash(ledger.read((index + 1) % COUNT)), [noteVerifier(deviceVkey)]), /does not lead to the root/);
  }
  const j = captureIo();
  assert.equal(await cmdConsole('proof', ['bot-1', '42', '--state', state, '--json'], j.io), 0);
  const out = JSON.parse(j.out[0]);
  assert.equal(out.record, ledger.read(42).toString('utf8'));
  verifyTlogProof(out.proof, leafHash(Buffer.from(out.record)), [noteVerifier(deviceVkey)]);
  // A record held as a hash only still has a proof (its leaf is stored); the console says so.
  const h = captureIo();
  assert.equal(await cmdConsole('proof', ['bot-1', String(HASH_ONLY[0]), '--state', state], h.io), 0);
  verifyTlogProof(h.raw.join(''), ledger.storedLeafHash(HASH_ONLY[0]), [noteVerifier(deviceVkey)]);
  assert.match(h.err.join(''), /held as a hash only/);
  const oob = captureIo();
  assert.equal(await cmdConsole('proof', ['bot-1', String(COUNT), '--state', state], oob.io), 2);
  assert.match(oob.err[0], /index 3000 is not covered by the stored checkpoint \(size 3000\)/);
  const none = captureIo();
  assert.equal(await cmdConsole('proof', ['bot-2', '0', '--state', state], none.io), 1);
  assert.match(none.err[0], /nothing verified is stored for "bot-2"/);
});

test('usage: help per subcommand, bad arguments exit 2 with a hint, a missing database exits 1', async () => {
  for (const sub of ['devices', 'tail', 'verify', 'proof', 'send']) {
    const c = captureIo();
    assert.equal(await cmdConsole(sub, ['--help'], c.io), 0);
    assert.match(c.out[0], new RegExp(`^Usage: keel fleet ${sub}`));
  }
  const cases: [string, string[], RegExp][] = [
    ['nonsense', [], /unknown console command "nonsense"/],
    ['verify', [], /exactly one device id/],
    ['verify', ['bad/id'], /device id "bad\/id" must be/],
    ['proof', ['bot-1', '-1', '--state', state], /Unknown option '-1'|index must be/],
    ['proof', ['bot-1', '01', '--state', state], /index must be a non-negative integer/],
    ['devices', ['--frobnicate'], /Unknown option '--frobnicate'/],
    ['send', ['bot-1', 'actuate', 'brake'], /actuate takes <actuator> <value>/],
    ['send', ['bot-1', 'checkpoint'], /send needs --key/],
    ['send', ['bot-1', 'reboot', '--key', 'k'], /unknown command "reboot"/],
    ['send', ['bot-1', 'sync', '--key', 'k', '--ttl', '2d'], /--ttl must be a duration/],
    ['send', ['bot-1', 'sync', '--key', 'k', '--ttl', '25h', '--broker', 'mqtt://x'], /--ttl must be at most 24h/],
    ['send', ['bot-1', 'sync', '--key', 'k'], /--broker <url> is required/],
    ['send', ['bot-1', 'sync', '--key', 'k', '--broker', 'http://x'], /--broker must be an mqtt:\/\//],
    ['tail', ['bot-1', '--broker', 'mqtt://127.0.0.1:1', '--count', '0'], /--count must be a positive integer/],
    ['tail', ['bot-1', '--broker', 'mqtt://127.0.0.1:1', '--state', path.join(tmp, 'nowhere')], /no fleet database in .*nowhere/],
  ];
  for (const [sub, args, re] of cases) {
    const c = captureIo();
    assert.equal(await cmdConsole(sub, args, c.io), 2, `${sub} ${args.join(' ')}: ${c.err.join('\n')}`);
    assert.match(c.err[0], re);
    assert.match(c.err[1], /Run 'keel fleet .*--help' for usage\./);
  }
  const missing = captureIo();
  assert.equal(await cmdConsole('devices', ['--state', path.join(tmp, 'nowhere')], missing.io), 1);
  assert.match(missing.err[0], /does not exist/);
  assert.equal(parseDuration('1500ms', '--x'), 1500);
  assert.equal(parseDuration('2', '--x'), 2000);
  assert.equal(parseDuration('1.5m', '--x'), 90_000);
  assert.deepEqual(parseCommandWords(['actuate', 'lamp', 'on']), { type: 'actuate', actuator: 'lamp', value: 1 });
  assert.deepEqual(parseCommandWords(['actuate', 'pwm', '0.25']), { type: 'actuate', actuator: 'pwm', value: 0.25 });
});

test('verify streams a large store in constant memory and names a corrupt row deep inside it', async () => {
  const dir = path.join(tmp, 'big');
  const { db: big, fleet: f } = makeFleetState(dir, path.join(tmp, 'big-fleet.key'));
  try {
    const key = generateKeyFile(path.join(tmp, 'big.key'), { name: 'fleet.example/big' });
    enroll(big, 'big', verifierKey('fleet.example/big', key.publicKey));
    const N = 100_000;
    storeSynthetic(big, f, { id: 'big', key, origin: 'fleet.example/big', count: N });
    const t0 = performance.now();
    const ro = openFleetDb(path.join(dir, 'fleet.db'), { readonly: true });
    const r = verifyStoredDevice(ro, 'big', { fleetVkey: f.vkey });
    const ms = performance.now() - t0;
    ro.close();
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.equal(r.records, N);
    // ~10 µs per record here: a million verify in seconds. Generous bound; the bench measures.
    assert.ok(ms < 20_000, `verify of ${N} records took ${ms.toFixed(0)} ms`);
    big.prepare("UPDATE records SET bytes = CAST('{}' AS BLOB) WHERE device = 'big' AND idx = 71717").run();
    const c = captureIo();
    assert.equal(await cmdConsole('verify', ['big', '--state', dir], c.io), 1);
    assert.match(c.err[0], /at record 71717: the record bytes do not hash/);
  } finally {
    big.close();
  }
});
