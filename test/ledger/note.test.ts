import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { LedgerFormatError, LedgerVerifyError } from '../../runtime/ledger/errors.ts';
import { nobleEd25519, nodeEd25519, type Ed25519 } from '../../runtime/ledger/keys.ts';
import {
  cosign,
  cosignatureMessage,
  cosignatureTimestamp,
  formatCheckpoint,
  formatSignatureLine,
  keyId,
  MAX_NOTE_SIGNATURES,
  noteSigner,
  noteVerifier,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  parseSignatureLine,
  parseVerifierKey,
  signNote,
  splitNote,
  SIGNATURE_TYPE_COSIGNATURE_V1,
  SIGNATURE_TYPE_ED25519,
  verifierKey,
  verifyCosignature,
} from '../../runtime/ledger/note.ts';
import { requireTool } from '../helpers.ts';

const vectors = (name: string) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url), 'utf8'));
const c2sp = vectors('c2sp-note.json');
const keel = vectors('keel-ledger.json');
const backends: Ed25519[] = [nodeEd25519, nobleEd25519];
const seed = (hex: string) => new Uint8Array(Buffer.from(hex, 'hex'));
const formatError = (pattern: RegExp) => (e: unknown) => e instanceof LedgerFormatError && e.code === 'KEEL_E_LEDGER_FORMAT' && pattern.test(e.message);
const verifyError = (pattern: RegExp) => (e: unknown) => e instanceof LedgerVerifyError && e.code === 'KEEL_E_LEDGER_VERIFY' && pattern.test(e.message);

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-note-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('the signed-note spec example: verifier key, key ID and note verify with both backends', () => {
  const ex = c2sp.signedNoteExample;
  const k = parseVerifierKey(ex.vkey);
  assert.equal(k.name, ex.name);
  assert.equal(k.keyId.toString(16), ex.keyId);
  assert.equal(k.type, SIGNATURE_TYPE_ED25519);
  assert.equal(keyId(k.name, SIGNATURE_TYPE_ED25519, k.publicKey), 0x530d903a);
  assert.equal(verifierKey(k.name, k.publicKey), ex.vkey);
  for (const b of backends) {
    const opened = openNote(ex.note, [noteVerifier(ex.vkey, b)]);
    assert.equal(opened.text, ex.text);
    assert.deepEqual(opened.verified.map((s) => [s.name, s.keyId]), [[ex.name, 0x530d903a]]);
    assert.deepEqual(opened.unknown, []);
    // Bytes in, same answer.
    assert.equal(openNote(Buffer.from(ex.note, 'utf8'), [noteVerifier(k, b)]).text, ex.text);
  }
});

test("Go's note package example: our signer reproduces PeterNeumann's note byte for byte", () => {
  const g = c2sp.goNote;
  // skey = "PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)"
  const raw = Buffer.from(g.skey.split('+').slice(4).join('+'), 'base64');
  assert.equal(raw[0], 1);
  for (const b of backends) {
    const signer = noteSigner('PeterNeumann', raw.subarray(1), b);
    assert.equal(signer.keyId, 0xc74f20a3);
    assert.equal(signNote(g.text, [signer]), g.note);
    assert.equal(verifierKey('PeterNeumann', b.publicKey(raw.subarray(1))), g.vkey);
  }
  const both = openNote(g.note + g.enochLine, [noteVerifier(g.vkey), noteVerifier(g.enochVkey)]);
  assert.deepEqual(both.verified.map((s) => s.name), ['PeterNeumann', 'EnochRoot']);
  const onlyEnoch = openNote(g.note + g.enochLine, [noteVerifier(g.enochVkey)]);
  assert.deepEqual(onlyEnoch.verified.map((s) => s.name), ['EnochRoot']);
  assert.deepEqual(onlyEnoch.unknown.map((s) => [s.name, s.keyId]), [['PeterNeumann', 0xc74f20a3]]);
});

test('verifier keys from transparency-dev/formats: valid ones round-trip, invalid ones are refused', () => {
  for (const { vkey, type } of c2sp.transparencyDevKeys.valid) {
    const k = parseVerifierKey(vkey);
    assert.equal(k.type, type);
    assert.equal(verifierKey(k.name, k.publicKey, k.type), vkey, 'a "+" inside the base64 part is no separator');
  }
  for (const vkey of c2sp.transparencyDevKeys.invalid) assert.throws(() => parseVerifierKey(vkey), formatError(/verifier key/), vkey);
  const good: string = c2sp.signedNoteExample.vkey;
  const bad: [string, RegExp][] = [
    [good.replace('530d903a', '530D903A'), /8 lower-case hex digits/],
    [good.replace('530d903a', '530d903b'), /does not match the key \(expected 530d903a\)/],
    [good.replace('530d903a', '530d903'), /8 lower-case hex digits/],
    [good.slice(0, -1), /not padded standard base64/],
    [good.replace('example.com/foo', 'example com'), /must not contain spaces/],
    [`+530d903a+${good.split('+')[2]}`, /must not be empty/],
    ['example.com/foo', /expected <name>\+<key ID>\+<key>/],
    [`x+00000000+${Buffer.from([2, ...new Uint8Array(32)]).toString('base64')}`, /unsupported signature type 0x02/],
    [`x+00000000+${Buffer.from([1, ...new Uint8Array(31)]).toString('base64')}`, /32 bytes, got 31/],
    [`x+00000000+${Buffer.from([1, 1, ...new Uint8Array(31)]).toString('base64')}`, /not a canonical Ed25519 point of large order/],
  ];
  for (const [vkey, pattern] of bad) assert.throws(() => parseVerifierKey(vkey), formatError(pattern), vkey);
  assert.throws(() => verifierKey('a b', new Uint8Array(32)), RangeError);
  assert.throws(() => verifierKey('a', new Uint8Array(31)), /publicKey must be 32 bytes/);
  assert.throws(() => verifierKey('a', new Uint8Array(32), 2), /type must be 0x01/);
});

test('openNote: unknown keys are ignored, a bad known signature rejects the note, an unsigned note is refused', () => {
  const g = c2sp.goNote;
  const peter = noteVerifier(g.vkey);
  const tampered = g.note.replace('cryptography', 'cryptograpHy');
  assert.throws(() => openNote(tampered, [peter]), verifyError(/signature by PeterNeumann\+c74f20a3 does not verify/));
  assert.throws(() => openNote(g.note, [noteVerifier(g.enochVkey)]), verifyError(/no signature by a trusted key \(signed by: PeterNeumann\+c74f20a3\)/));
  assert.throws(() => openNote(g.note, []), LedgerVerifyError);
  // Same name, other key ID (and the reverse): unknown, not a failure [signed-note, "Signatures"].
  const otherSeed = new Uint8Array(randomBytes(32));
  const impostor = noteSigner('PeterNeumann', otherSeed);
  const mixed = signNote(g.text, [impostor]) + g.note.slice(g.note.lastIndexOf('\u2014'));
  const opened = openNote(mixed, [peter]);
  assert.deepEqual(opened.verified.map((s) => s.keyId), [0xc74f20a3]);
  assert.deepEqual(opened.unknown.map((s) => s.keyId), [impostor.keyId]);
  // A repeated signature by one key counts once; repeated unknown lines are listed once.
  const line = g.note.slice(g.note.lastIndexOf('\u2014'));
  const again = openNote(g.note + line + g.enochLine + g.enochLine, [peter]);
  assert.equal(again.verified.length, 1);
  assert.equal(again.unknown.length, 1);
  // Two verifiers for the same name and key ID are a configuration error.
  assert.throws(() => openNote(g.note, [peter, noteVerifier(g.vkey)]), (e: Error) => e instanceof RangeError && /share the name and key ID PeterNeumann\+c74f20a3/.test(e.message));
  assert.throws(() => openNote(g.note, [{} as never]), TypeError);
});

test('openNote accepts at least 16 (up to 100) signatures and refuses more', () => {
  const ex = c2sp.signedNoteExample;
  const others = Array.from({ length: MAX_NOTE_SIGNATURES - 1 }, (_, i) => noteSigner(`witness-${i}.example`, new Uint8Array(32).fill(i + 1)));
  const many = signNote(ex.text, others) + ex.note.slice(ex.note.lastIndexOf('\u2014'));
  const opened = openNote(many, [noteVerifier(ex.vkey), noteVerifier(verifierKey('witness-3.example', nodeEd25519.publicKey(new Uint8Array(32).fill(4))))]);
  assert.equal(opened.verified.length, 2);
  assert.equal(opened.unknown.length, MAX_NOTE_SIGNATURES - 2);
  assert.throws(() => openNote(many + ex.note.slice(ex.note.lastIndexOf('\u2014')), [noteVerifier(ex.vkey)]), formatError(/101 signature lines exceed the limit of 100/));
});

test('splitNote refuses malformed notes with a reason', () => {
  const ex = c2sp.signedNoteExample;
  const sigLine = ex.note.slice(ex.note.lastIndexOf('\u2014'));
  const bad: [string | Uint8Array, RegExp][] = [
    [ex.text + sigLine, /no empty line/],
    [ex.note.slice(0, -1), /does not end in a newline/],
    [`${ex.text}\n`, /no signature lines/],
    [ex.note.replace('\u2014', '-'), /em dash/],
    [ex.note.replace('\u2014 ', '\u2014  '), /must not be empty/],
    [ex.note.replace('example.com/foo U', 'example.com/foo\u00a0U'), /expected "— <key name> <base64 signature>"|spaces/],
    [ex.note.replace('Uw2Q', 'Uw2Q!'), /not padded standard base64/],
    [ex.note.replace(/ Uw2Q.*=\n$/, ' AAAA\n'), /3 bytes; a key ID and a signature need at least 5/],
    [ex.note.replace('This is', 'This\tis'), /control character/],
    [ex.note.replace('\n\n', '\r\n\r\n'), /control character/],
    [Buffer.concat([Buffer.from([0xff]), Buffer.from(ex.note)]), /not valid UTF-8/],
    ['\ud800' + ex.note, /lone surrogate/],
    [ex.note + sigLine.replace('\n', '\nextra\n'), /signature line 3: does not start with an em dash/],
  ];
  for (const [note, pattern] of bad) assert.throws(() => splitNote(note), formatError(pattern), String(pattern));
  assert.throws(() => splitNote(7 as never), TypeError);
  // The text may itself contain empty lines: the last one separates the signatures.
  const q = c2sp.signedNoteQuasimodo;
  assert.equal(splitNote(q.note).text, q.text);
  assert.equal(splitNote(q.note).signatures[0].name, 'quasimodo.example/salvatore');
});

test('checkpoints: the spec example parses; format and parse round-trip; strict rules refuse the rest', () => {
  const ex = c2sp.checkpointExample;
  const { text, signatures } = splitNote(ex.note);
  const cp = parseCheckpoint(text);
  assert.deepEqual({ origin: cp.origin, size: cp.size, root: cp.root.toString('base64'), extensions: cp.extensions }, { origin: ex.origin, size: ex.size, root: ex.root, extensions: [] });
  assert.equal(formatCheckpoint(cp), text);
  assert.equal(signatures.length, 2);
  const root = Buffer.alloc(32, 7);
  const withExt = formatCheckpoint({ origin: 'o', size: 0, root, extensions: ['ext one', 'two'] });
  assert.equal(withExt, `o\n0\n${root.toString('base64')}\next one\ntwo\n`);
  assert.deepEqual(parseCheckpoint(withExt).extensions, ['ext one', 'two']);
  assert.equal(parseCheckpoint(formatCheckpoint({ origin: 'o', size: Number.MAX_SAFE_INTEGER, root })).size, Number.MAX_SAFE_INTEGER);
  const r = root.toString('base64');
  const bad: [string, RegExp][] = [
    [`o\n1\n${r}`, /does not end with a newline/],
    ['o\n1\n', /at least 3 lines/],
    [`o\n01\n${r}\n`, /tree size "01" is not a decimal/],
    [`o\n-1\n${r}\n`, /tree size/],
    [`o\n+1\n${r}\n`, /tree size/],
    [`o\n1.0\n${r}\n`, /tree size/],
    [`o\n\n${r}\n`, /tree size/],
    [`o\n9007199254740992\n${r}\n`, /below 2\^53/],
    [`o\n99999999999999999999\n${r}\n`, /tree size/],
    [`o\n1\n${Buffer.alloc(31).toString('base64')}\n`, /not base64 of 32 bytes/],
    [`o\n1\n${r.slice(0, -1)}\n`, /not base64/],
    [`o\n1\n${r.slice(0, -2)}B=\n`, /not base64/], // non-zero padding bits
    [`o\n1\n${r.replace(/=$/, '')}\n`, /not base64/],
    [`o\n1\n${r}\n\n`, /extension line 1 is empty/],
    [`\n1\n${r}\n`, /origin "" must not be empty/],
    [`my log\n1\n${r}\n`, /must not contain spaces/],
    [`a+b\n1\n${r}\n`, /must not contain '\+'/],
    [`o\r\n1\n${r}\n`, /control character/],
  ];
  for (const [t, pattern] of bad) assert.throws(() => parseCheckpoint(t), formatError(pattern), JSON.stringify(t));
  assert.throws(() => formatCheckpoint({ origin: 'a b', size: 1, root }), RangeError);
  assert.throws(() => formatCheckpoint({ origin: 'o', size: -1, root }), /size must be a non-negative safe integer/);
  assert.throws(() => formatCheckpoint({ origin: 'o', size: 1, root: root.subarray(1) }), /root must be 32 bytes/);
  assert.throws(() => formatCheckpoint({ origin: 'o', size: 1, root, extensions: ['a\nb'] }), /extensions\[0\]/);
});

test('keel vectors: the signed checkpoint of docs/ledger.md is reproduced and opens', () => {
  const dev = keel.deviceKey;
  for (const b of backends) {
    const signer = noteSigner(dev.name, seed(dev.seed), b);
    assert.equal(verifierKey(dev.name, b.publicKey(seed(dev.seed))), dev.vkey);
    assert.equal(signNote(keel.checkpoint, [signer]), keel.signedCheckpoint);
    const { checkpoint, note } = openCheckpoint(keel.signedCheckpoint, [noteVerifier(dev.vkey, b)]);
    assert.equal(checkpoint.size, 3);
    assert.equal(checkpoint.root.toString('hex'), keel.roots[2]);
    assert.equal(note.verified[0].type, SIGNATURE_TYPE_ED25519);
  }
  assert.throws(() => signNote('no newline', [noteSigner('a', seed(dev.seed))]), /must end with a newline/);
  assert.throws(() => signNote('a\u0000\n', [noteSigner('a', seed(dev.seed))]), /control character/);
  assert.throws(() => signNote('a\n', []), /non-empty array/);
  const s = noteSigner('a', seed(dev.seed));
  assert.throws(() => signNote('a\n', [s, s]), /share the name and key ID/);
  assert.throws(() => noteSigner('bad name', seed(dev.seed)), /name must not contain spaces/);
});

test('cosignatures: spec example layout, transparency-dev timestamp, keel vector, round trip on both backends', () => {
  const ex = c2sp.checkpointExample;
  const { text, signatures } = splitNote(ex.note);
  const w = signatures[1];
  assert.equal(w.name, ex.cosignature.name);
  assert.equal(w.keyId.toString(16), ex.cosignature.keyId);
  assert.equal(cosignatureTimestamp(w.signature), ex.cosignature.timestamp);
  assert.equal(cosignatureMessage(text, ex.cosignature.timestamp).toString('utf8'), ex.cosignedMessage);
  const td = c2sp.transparencyDevKeys;
  assert.equal(cosignatureTimestamp(Buffer.from(td.cosignatureTimestamp.signatureBase64, 'base64').subarray(4)), td.cosignatureTimestamp.timestamp);
  assert.equal(cosignatureTimestamp(Buffer.from(td.notCosignature.signatureBase64, 'base64').subarray(4)), undefined, 'a 64-byte plain signature is no cosignature');

  const k = keel.cosignerKey;
  const fleet = { name: k.name, privateKey: seed(k.seed) };
  for (const b of backends) {
    const line = cosign(keel.checkpoint, fleet, keel.cosignature.time, b);
    assert.equal(line, keel.cosignature.line);
    assert.deepEqual(verifyCosignature(keel.checkpoint, line, k.vkey, b), { name: k.name, keyId: parseVerifierKey(k.vkey).keyId, timestamp: keel.cosignature.time });
    // The witness response line appended to the device's signed checkpoint opens with both keys.
    const both = openNote(keel.signedCheckpoint + line, [noteVerifier(keel.deviceKey.vkey, b), noteVerifier(k.vkey, b)]);
    assert.deepEqual(both.verified.map((s) => [s.type, s.timestamp]), [[SIGNATURE_TYPE_ED25519, undefined], [SIGNATURE_TYPE_COSIGNATURE_V1, keel.cosignature.time]]);
  }
  assert.equal(cosignatureMessage(keel.checkpoint, keel.cosignature.time).toString('utf8'), keel.cosignature.message);
  const cosigKey = parseVerifierKey(k.vkey);
  assert.equal(cosigKey.type, SIGNATURE_TYPE_COSIGNATURE_V1);
  // A note-signing (0x01) verifier for the same key does not accept a cosignature, and vice versa.
  const asNoteKey = verifierKey(k.name, cosigKey.publicKey);
  assert.throws(() => openNote(keel.signedCheckpoint + keel.cosignature.line, [noteVerifier(asNoteKey)]), LedgerVerifyError);

  // Tampering: another time, another checkpoint, another key, a truncated signature.
  const line: string = keel.cosignature.line;
  const sigBytes = Buffer.from(line.trim().split(' ')[2], 'base64');
  sigBytes.writeBigUInt64BE(BigInt(keel.cosignature.time + 1), 4);
  const retimed = formatSignatureLine(k.name, cosigKey.keyId, sigBytes.subarray(4));
  assert.throws(() => verifyCosignature(keel.checkpoint, retimed, k.vkey), verifyError(/does not verify/));
  const other = formatCheckpoint({ origin: 'example.com/keel-demo', size: 4, root: Buffer.alloc(32) });
  assert.throws(() => verifyCosignature(other, line, k.vkey), verifyError(/does not verify/));
  const stranger = verifierKey('other.example', nodeEd25519.publicKey(new Uint8Array(32).fill(9)), SIGNATURE_TYPE_COSIGNATURE_V1);
  assert.throws(() => verifyCosignature(keel.checkpoint, line, stranger), verifyError(/is by fleet\.example\.com\/witness\+6071b6a4, not by other\.example/));
  const short = formatSignatureLine(k.name, cosigKey.keyId, sigBytes.subarray(4, 70));
  assert.throws(() => verifyCosignature(keel.checkpoint, short, k.vkey), formatError(/expected 8 timestamp bytes/));
  assert.throws(() => verifyCosignature(keel.checkpoint, line, keel.deviceKey.vkey), /must be of type 0x04/);
  assert.throws(() => verifyCosignature('not a checkpoint\n', line, k.vkey), formatError(/checkpoint/));
  assert.throws(() => cosign(keel.checkpoint, fleet, -1), /time must be non-negative POSIX seconds/);
  assert.throws(() => cosign('x\n', fleet, 1), formatError(/checkpoint/));
  // Extension lines are covered by the cosignature [tlog-cosignature, "Ed25519 signed message"].
  const ext = formatCheckpoint({ origin: 'o', size: 1, root: Buffer.alloc(32), extensions: ['hello'] });
  const extLine = cosign(ext, fleet, 5);
  assert.equal(verifyCosignature(ext, extLine, k.vkey).timestamp, 5);
  assert.throws(() => verifyCosignature(ext.replace('hello', 'hellp'), extLine, k.vkey), LedgerVerifyError);
  assert.equal(parseSignatureLine(extLine).name, k.name);
});

test('OpenSSL verifies a signed checkpoint and a cosignature over the exact signed bytes', (t) => {
  if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
  const pem = (pub: Uint8Array) => `-----BEGIN PUBLIC KEY-----\n${Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), pub]).toString('base64')}\n-----END PUBLIC KEY-----\n`;
  const check = (vkey: string, message: Uint8Array, sig: Uint8Array, label: string) => {
    const k = parseVerifierKey(vkey);
    const files = ['pub.pem', 'msg', 'sig'].map((f) => path.join(dir, `${label}-${f}`));
    writeFileSync(files[0], pem(k.publicKey));
    writeFileSync(files[1], message);
    writeFileSync(files[2], sig);
    const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', files[0], '-rawin', '-in', files[1], '-sigfile', files[2]], { encoding: 'utf8' });
    assert.match(out, /Signature Verified Successfully/, label);
  };
  const note = splitNote(keel.signedCheckpoint);
  check(keel.deviceKey.vkey, Buffer.from(note.text), note.signatures[0].signature, 'checkpoint');
  const cos = parseSignatureLine(keel.cosignature.line);
  check(keel.cosignerKey.vkey, cosignatureMessage(keel.checkpoint, keel.cosignature.time), cos.signature.subarray(8), 'cosignature');
  const ex = c2sp.signedNoteExample;
  const exNote = splitNote(ex.note);
  check(ex.vkey, Buffer.from(exNote.text), exNote.signatures[0].signature, 'spec-example');
});
