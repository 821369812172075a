import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { KeyFileError } from '../../runtime/ledger/errors.ts';
import {
  formatKeyFile,
  generateKeyFile,
  isStrictPublicKey,
  keyNameProblem,
  loadKeyFile,
  MAX_KEY_FILE_SIZE,
  nobleEd25519,
  nodeEd25519,
  parseKeyFile,
  type Ed25519,
} from '../../runtime/ledger/keys.ts';
import { requireTool } from '../helpers.ts';

const rfc8032 = JSON.parse(readFileSync(new URL('../vectors/rfc8032-ed25519.json', import.meta.url), 'utf8'));
const backends: Ed25519[] = [nodeEd25519, nobleEd25519];
const hexb = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-keys-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const tmp = (name = 'key.pem') => path.join(dir, `${counter++}-${name}`);

function isKeyError(pattern: RegExp) {
  return (e: unknown) => e instanceof KeyFileError && e.code === 'KEEL_E_KEY' && pattern.test(e.message);
}

test('RFC 8032 7.1 vectors: both backends derive the key, produce the signature, and verify it', () => {
  for (const v of rfc8032.vectors) {
    const seed = hexb(v.secretKey);
    const msg = hexb(v.message);
    for (const b of backends) {
      assert.equal(hex(b.publicKey(seed)), v.publicKey, `${b.name} ${v.name} public key`);
      assert.equal(hex(b.sign(msg, seed)), v.signature, `${b.name} ${v.name} signature`);
      assert.ok(b.verify(hexb(v.signature), msg, hexb(v.publicKey)), `${b.name} ${v.name} verifies`);
      const bad = hexb(v.signature);
      bad[10] ^= 1;
      assert.equal(b.verify(bad, msg, hexb(v.publicKey)), false, `${b.name} ${v.name} flipped R`);
      const other = new Uint8Array([...msg, 0]);
      assert.equal(b.verify(hexb(v.signature), other, hexb(v.publicKey)), false, `${b.name} ${v.name} other message`);
    }
  }
});

test('node:crypto and @noble/ed25519 agree on random keys and messages, both ways', () => {
  for (let i = 0; i < 40; i++) {
    const seed = new Uint8Array(randomBytes(32));
    const msg = new Uint8Array(randomBytes(i * 7));
    const pub = nodeEd25519.publicKey(seed);
    assert.equal(hex(nobleEd25519.publicKey(seed)), hex(pub));
    const s1 = nodeEd25519.sign(msg, seed);
    const s2 = nobleEd25519.sign(msg, seed);
    assert.equal(hex(s1), hex(s2), 'Ed25519 is deterministic');
    assert.ok(nobleEd25519.verify(s1, msg, pub));
    assert.ok(nodeEd25519.verify(s2, msg, pub));
  }
});

test('strict verification: non-canonical S, small-order keys and malformed lengths are refused by both', () => {
  const v = rfc8032.vectors[1];
  const sig = hexb(v.signature);
  const pub = hexb(v.publicKey);
  const msg = hexb(v.message);
  // S + L: the same signature scalar, non-canonically encoded (a malleability attempt).
  const L = (1n << 252n) + 27742317777372353535851937790883648493n;
  let s = 0n;
  for (let i = 31; i >= 0; i--) s = (s << 8n) | BigInt(sig[32 + i]);
  let s2 = s + L;
  const mall = new Uint8Array(sig);
  for (let i = 0; i < 32; i++) {
    mall[32 + i] = Number(s2 & 0xffn);
    s2 >>= 8n;
  }
  // The identity as public key, R = identity, S = 0: "verifies" any message under
  // cofactorless checks without a small-order test (OpenSSL 3.0 accepts it on its own).
  const identity = new Uint8Array(32);
  identity[0] = 1;
  const forged = new Uint8Array(64);
  forged[0] = 1;
  assert.equal(isStrictPublicKey(identity), false);
  assert.equal(isStrictPublicKey(pub), true);
  assert.equal(isStrictPublicKey(new Uint8Array(32).fill(0xff)), false, 'y >= p is not canonical');
  for (const b of backends) {
    assert.equal(b.verify(mall, msg, pub), false, `${b.name}: S + L`);
    assert.equal(b.verify(forged, Buffer.from('anything'), identity), false, `${b.name}: small-order key`);
    assert.equal(b.verify(sig.subarray(0, 63), msg, pub), false, `${b.name}: 63-byte signature`);
    assert.equal(b.verify(new Uint8Array(65), msg, pub), false, `${b.name}: 65-byte signature`);
    assert.throws(() => b.verify(sig, msg, pub.subarray(1)), /publicKey must be 32 bytes/);
    assert.throws(() => b.sign(msg, new Uint8Array(64)), /privateKey must be 32 bytes, got 64/);
    assert.throws(() => b.publicKey(new Uint8Array(31)), RangeError);
    assert.throws(() => b.sign('text' as unknown as Uint8Array, new Uint8Array(32)), TypeError);
  }
});

test('OpenSSL verifies our signatures and we verify OpenSSL\'s (raw Ed25519 via pkeyutl)', (t) => {
  if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
  const seed = new Uint8Array(randomBytes(32));
  const pub = nodeEd25519.publicKey(seed);
  const keyFile = tmp('openssl.pem');
  writeFileSync(keyFile, formatKeyFile({ privateKey: seed }), { mode: 0o600 });
  const pubFile = tmp('pub.pem');
  const spki = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), pub]);
  writeFileSync(pubFile, `-----BEGIN PUBLIC KEY-----\n${spki.toString('base64')}\n-----END PUBLIC KEY-----\n`);
  const msgFile = tmp('msg');
  const msg = Buffer.from('example.com/robot\n42\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n');
  writeFileSync(msgFile, msg);
  for (const b of backends) {
    const sigFile = tmp('sig');
    writeFileSync(sigFile, b.sign(msg, seed));
    const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pubFile, '-rawin', '-in', msgFile, '-sigfile', sigFile], { encoding: 'utf8' });
    assert.match(out, /Signature Verified Successfully/, b.name);
  }
  const opensslSig = tmp('openssl.sig');
  execFileSync('openssl', ['pkeyutl', '-sign', '-inkey', keyFile, '-rawin', '-in', msgFile, '-out', opensslSig]);
  for (const b of backends) assert.ok(b.verify(readFileSync(opensslSig), msg, pub), `${b.name} verifies OpenSSL's signature`);
  // OpenSSL reads our key file, name line and all, and derives the same public key.
  const named = tmp('named.pem');
  writeFileSync(named, formatKeyFile({ name: 'example.com/robot', privateKey: seed }), { mode: 0o600 });
  const der = execFileSync('openssl', ['pkey', '-in', named, '-pubout', '-outform', 'DER']);
  assert.equal(hex(der), hex(spki));
});

test('generateKeyFile writes mode 0600 exclusively; loadKeyFile reads back the same key and name', () => {
  const file = tmp();
  const key = generateKeyFile(file, { name: 'example.com/robot-7' });
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(key.name, 'example.com/robot-7');
  const loaded = loadKeyFile(file);
  assert.deepEqual(loaded, key);
  assert.equal(hex(nodeEd25519.publicKey(loaded.privateKey)), hex(loaded.publicKey));
  const text = readFileSync(file, 'utf8');
  assert.match(text, /^keel-key-name: example\.com\/robot-7\n-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/]{64}\n-----END PRIVATE KEY-----\n$/);
  // node:crypto reads it as a standard PKCS#8 key.
  assert.equal(createPublicKey(text).asymmetricKeyType, 'ed25519');
  // Never overwritten: the old key survives a second keygen.
  assert.throws(() => generateKeyFile(file), isKeyError(/already exists; refusing to overwrite/));
  assert.equal(readFileSync(file, 'utf8'), text);
  const unnamed = generateKeyFile(tmp());
  assert.equal(unnamed.name, undefined);
  assert.notEqual(hex(unnamed.privateKey), hex(key.privateKey));
  // Mode 0600 even under a permissive umask.
  const old = process.umask(0o000);
  try {
    const f = tmp();
    generateKeyFile(f);
    assert.equal(statSync(f).mode & 0o777, 0o600);
  } finally {
    process.umask(old);
  }
  assert.throws(() => generateKeyFile(path.join(dir, 'no-such-dir', 'k.pem')), isKeyError(/cannot create key file .*: directory .*no-such-dir does not exist/));
  assert.throws(() => generateKeyFile(tmp(), { name: 'bad name' }), (e: Error) => e instanceof RangeError && /opts\.name must not contain spaces/.test(e.message));
  assert.throws(() => generateKeyFile(''), TypeError);
});

test('loadKeyFile refuses missing, unreadable, exposed, oversized and non-key files with KEEL_E_KEY', (t) => {
  assert.throws(() => loadKeyFile(path.join(dir, 'missing.pem')), isKeyError(/does not exist \(create one with `keel keygen --out/));
  const sub = tmp('dir');
  mkdirSync(sub, { mode: 0o700 });
  assert.throws(() => loadKeyFile(sub), isKeyError(/is not a regular file|is a directory/));
  for (const mode of [0o644, 0o640, 0o604, 0o660, 0o611]) {
    const f = tmp();
    generateKeyFile(f);
    chmodSync(f, mode);
    assert.throws(() => loadKeyFile(f), isKeyError(new RegExp(`accessible by group or others \\(mode 0${mode.toString(8)}\\); run \`chmod 600`)));
  }
  const readOnly = tmp();
  generateKeyFile(readOnly);
  chmodSync(readOnly, 0o400);
  assert.ok(loadKeyFile(readOnly).privateKey.length === 32, 'mode 0400 is fine');
  const big = tmp();
  writeFileSync(big, 'x'.repeat(MAX_KEY_FILE_SIZE + 1), { mode: 0o600 });
  assert.throws(() => loadKeyFile(big), isKeyError(/bytes; an Ed25519 key file is under/));
  const binary = tmp();
  writeFileSync(binary, Buffer.from([0xff, 0xfe, 0x00, 0x80]), { mode: 0o600 });
  assert.throws(() => loadKeyFile(binary), isKeyError(/not text/));
  if (process.getuid?.() === 0) {
    t.diagnostic('running as root, which reads any file: the permission-denied case is not exercised');
  } else {
    const locked = tmp();
    generateKeyFile(locked);
    chmodSync(locked, 0o000);
    assert.throws(() => loadKeyFile(locked), isKeyError(/permission denied/));
  }
});

test('parseKeyFile: wrong formats and key types are named, not reported as crashes', () => {
  const seed = new Uint8Array(randomBytes(32));
  const good = formatKeyFile({ name: 'dev', privateKey: seed });
  assert.equal(hex(parseKeyFile(good).privateKey), hex(seed));
  assert.equal(parseKeyFile(`# a comment from the operator\n${good}`).name, 'dev', 'explanatory text before the block is allowed');
  assert.equal(parseKeyFile(good.replaceAll('\n', '\r\n')).name, 'dev', 'CRLF line ends');
  const ed = generateKeyPairSync('ed25519');
  const cases: [string, RegExp][] = [
    ['hello', /no PEM block/],
    ['', /no PEM block/],
    [ed.publicKey.export({ format: 'pem', type: 'spki' }) as string, /holds a public key/],
    [ed.privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'x' }) as string, /the key is encrypted/],
    [generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, /holds an ec key; keel signs with Ed25519 only/],
    [generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'sec1' }) as string, /holds an EC key/],
    [generateKeyPairSync('x25519').privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, /holds an x25519 key/],
    ['-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n', /unsupported PEM block "OPENSSH PRIVATE KEY"/],
    ['-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n', /no "-----END PRIVATE KEY-----" line/],
    ['-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n', /not base64/],
    ['-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', /not a PKCS#8 private key/],
    [`${good}${good}`, /more than one PEM block/],
    [`keel-key-name: a\n${good}`, /more than one "keel-key-name:" line/],
    [good.replace('keel-key-name: dev', 'keel-key-name: has space'), /key name "has space" must not contain spaces/],
    [good.replace('keel-key-name: dev', 'keel-key-name: '), /must not be empty/],
  ];
  for (const [text, pattern] of cases) assert.throws(() => parseKeyFile(text, 'k.pem'), isKeyError(pattern), String(pattern));
  assert.throws(() => formatKeyFile({ privateKey: new Uint8Array(31) }), RangeError);
  assert.throws(() => formatKeyFile({ name: 'a+b', privateKey: seed }), /must not contain '\+'/);
});

test('a key generated by `openssl genpkey -algorithm ed25519` loads (without a name)', (t) => {
  if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
  const f = tmp();
  execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', f]);
  chmodSync(f, 0o600);
  const k = loadKeyFile(f);
  assert.equal(k.name, undefined);
  const der = execFileSync('openssl', ['pkey', '-in', f, '-pubout', '-outform', 'DER']);
  assert.equal(hex(der.subarray(12)), hex(k.publicKey));
});

test('key names follow signed-note rules', () => {
  assert.equal(keyNameProblem('example.com/robot-7'), undefined);
  assert.equal(keyNameProblem('é/ü'), undefined);
  assert.match(keyNameProblem('') ?? '', /empty/);
  assert.match(keyNameProblem('a+b') ?? '', /'\+'/);
  for (const sp of [' ', '\t', '\u00a0', '\u2003', '\u3000', '\u0085']) assert.match(keyNameProblem(`a${sp}b`) ?? '', /spaces/, JSON.stringify(sp));
  assert.match(keyNameProblem('a\u0001b') ?? '', /control/);
  assert.match(keyNameProblem('a\ud800') ?? '', /well-formed/);
  assert.match(keyNameProblem(7) ?? '', /must be a string/);
});
