/**
 * `keel keygen`, `keel id` and `keel log ...` as real processes, checked with tools that keel
 * did not write where they exist here: OpenSSL verifies the checkpoint's Ed25519 signature,
 * and Python's hashlib recomputes the RFC 6962 root from the exported records.jsonl.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { noteVerifier, parseVerifierKey, splitNote } from '../../runtime/ledger/note.ts';
import { verifyTlogProof, parseAddCheckpoint } from '../../runtime/ledger/proof.ts';
import { verifyConsistency } from '../../runtime/ledger/merkle.ts';
import { requireTool } from '../helpers.ts';
import { STACK_LINE, keel, killAll } from './keel-process.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-log-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});
const key = path.join(tmp, 'device.key');
const dir = path.join(tmp, 'ledger');
let vkey = '';

test('keygen writes a 0600 key and prints its verifier key; it never overwrites; id agrees', async () => {
  const r = await keel(['keygen', '--out', key, '--name', 'example.org/cart-7']);
  assert.equal(r.code, 0, r.stderr);
  vkey = r.stdout.trim();
  assert.match(vkey, /^example\.org\/cart-7\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$/);
  assert.equal(statSync(key).mode & 0o777, 0o600);
  const again = await keel(['keygen', '--out', key]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /already exists; refusing to overwrite/);
  const id = await keel(['id', '--key', key]);
  assert.equal(id.stdout.trim(), vkey);
});

test('append checks every line first: bad input is reported by line and nothing is appended', async () => {
  const r = await keel(['log', 'append', dir, '--key', key], { stdin: '{"ok":1}\nnot json\n[1,2]\n{"a":1,"a":2}\n' });
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /3 bad lines; nothing was appended/);
  assert.match(r.stderr, /line 2: /);
  assert.match(r.stderr, /line 3: expected a JSON object, got an array/);
  assert.match(r.stderr, /line 4: .*duplicate member name "a"/);
  assert.doesNotMatch(r.stderr, STACK_LINE);
});

test('append, checkpoint, proof, consistency, export: verified by OpenSSL and a Python root', async (t) => {
  const a = await keel(['log', 'append', dir, '--key', key], { stdin: '{"event":"boot","fw":"1.2"}\n{"temp":21.5}\n{"temp":21.75}\n' });
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdout.trim(), '3');
  const b = await keel(['log', 'append', dir, '--key', key], { stdin: '{"temp":22}\n{"door":"open"}\n' });
  assert.equal(b.stdout.trim(), '5');

  const cp = (await keel(['log', 'checkpoint', dir])).stdout;
  const { text, signatures } = splitNote(cp);
  assert.match(text, /^example\.org\/cart-7\n5\n[A-Za-z0-9+/]{43}=\n$/);

  // The inclusion proof of record 3 verifies against the signed checkpoint.
  const out = path.join(tmp, 'export');
  assert.equal((await keel(['log', 'export', dir, '--out', out])).code, 0);
  const records = readFileSync(path.join(out, 'records.jsonl'), 'utf8').split('\n').slice(0, -1);
  assert.equal(records.length, 5);
  assert.deepEqual(JSON.parse(records[3]), { data: { temp: 22 }, kind: 'event', seq: 3, t: JSON.parse(records[3]).t, v: 1 });
  const proof = (await keel(['log', 'proof', dir, '--index', '3'])).stdout;
  const opened = verifyTlogProof(proof, leafHash(Buffer.from(records[3])), [noteVerifier(vkey)]);
  assert.equal(opened.checkpoint.size, 5);
  assert.throws(() => verifyTlogProof(proof, leafHash(Buffer.from(records[2])), [noteVerifier(vkey)]));

  // Consistency from size 3 to 5 in the tlog-witness body form.
  const body = parseAddCheckpoint((await keel(['log', 'consistency', dir, '--from', '3'])).stdout);
  assert.equal(body.oldSize, 3);
  const root3 = await pythonRoot(records.slice(0, 3), t);
  if (root3) assert.ok(verifyConsistency(3, 5, body.proof, Buffer.from(root3, 'base64'), Buffer.from(text.split('\n')[2], 'base64')));

  // Python recomputes the root from records.jsonl alone.
  const root5 = await pythonRoot(records, t);
  if (root5) assert.equal(root5, text.split('\n')[2]);

  // OpenSSL verifies the checkpoint signature with the public key from the verifier key.
  if (requireTool(t, 'openssl', 'apt-get install openssl')) {
    const pub = Buffer.from(parseVerifierKey(vkey).publicKey);
    const der = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), pub]);
    writeFileSync(path.join(tmp, 'pub.pem'), `-----BEGIN PUBLIC KEY-----\n${der.toString('base64')}\n-----END PUBLIC KEY-----\n`);
    writeFileSync(path.join(tmp, 'msg'), text);
    writeFileSync(path.join(tmp, 'sig'), Buffer.from(signatures[0].signature).subarray(0));
    const res = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', path.join(tmp, 'pub.pem'), '-rawin', '-in', path.join(tmp, 'msg'), '-sigfile', path.join(tmp, 'sig')], { encoding: 'utf8' });
    assert.match(res, /Signature Verified Successfully/);
  }

  const v = await keel(['log', 'verify', dir]);
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /ok: 5 records, checkpoint of 5 verified/);
  const tail = await keel(['log', 'tail', dir, '-n', '2', '--json']);
  assert.deepEqual(tail.stdout.trim().split('\n'), records.slice(3));
});

test('asking for proofs that do not exist is a clear usage error', async () => {
  const r = await keel(['log', 'proof', dir, '--index', '99']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /index 99 is not covered by the latest checkpoint \(size 5\)/);
  const c = await keel(['log', 'consistency', dir, '--from', '6']);
  assert.equal(c.code, 2);
  assert.match(c.stderr, /from 6 is past the latest checkpoint/);
  const bad = await keel(['log', 'proof', dir, '--index', '-1']);
  assert.equal(bad.code, 2);
  assert.doesNotMatch(bad.stderr + r.stderr + c.stderr, STACK_LINE);
});

test('verify names a flipped record and fails', async () => {
  const copy = path.join(tmp, 'flipped');
  execFileSync('cp', ['-r', dir, copy]);
  const seg = execFileSync('sh', ['-c', `ls ${path.join(copy, 'records')}/*.rec | head -1`], { encoding: 'utf8' }).trim();
  const bytes = readFileSync(seg);
  const at = bytes.indexOf(Buffer.from('"temp":21.75'));
  assert.ok(at > 0);
  bytes[at + 8] ^= 0x01; // 21.75 -> 20.75 ('1' ^ 1 = '0')
  writeFileSync(seg, bytes);
  const v = await keel(['log', 'verify', copy]);
  assert.notEqual(v.code, 0);
  assert.match(v.stderr + v.stdout, /record 2|index 2/);
  assert.doesNotMatch(v.stderr, STACK_LINE);
});

/** RFC 6962 root of the records, computed by Python's hashlib (undefined with a skip if no python3). */
async function pythonRoot(records: string[], t: import('node:test').TestContext): Promise<string | undefined> {
  if (!requireTool(t, 'python3', 'apt-get install python3')) return undefined;
  const script = `
import base64, hashlib, sys
leaves = [l.rstrip(b"\\n") for l in open(sys.argv[1], "rb")]
def mth(xs):
    if len(xs) == 0: return hashlib.sha256(b"").digest()
    if len(xs) == 1: return hashlib.sha256(b"\\x00" + xs[0]).digest()
    k = 1
    while k * 2 < len(xs): k *= 2
    return hashlib.sha256(b"\\x01" + mth(xs[:k]) + mth(xs[k:])).digest()
print(base64.b64encode(mth(leaves)).decode())
`;
  const f = path.join(tmp, `records-${records.length}.jsonl`);
  writeFileSync(f, records.map((r) => `${r}\n`).join(''));
  return execFileSync('python3', ['-c', script, f], { encoding: 'utf8' }).trim();
}
