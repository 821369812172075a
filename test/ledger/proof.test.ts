import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { LedgerFormatError, LedgerVerifyError } from '../../runtime/ledger/errors.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { canonicalBytes, canonicalize } from '../../runtime/ledger/jcs.ts';
import { consistencyProof, inclusionProof, MemoryTree, verifyConsistency } from '../../runtime/ledger/merkle.ts';
import { formatCheckpoint, noteSigner, noteVerifier, openCheckpoint, signNote, verifierKey } from '../../runtime/ledger/note.ts';
import { nodeEd25519, parseKeyFile } from '../../runtime/ledger/keys.ts';
import {
  formatAddCheckpoint,
  formatTlogProof,
  MAX_PROOF_HASHES,
  parseAddCheckpoint,
  parseTlogProof,
  TLOG_PROOF_HEADER,
  verifyTlogProof,
} from '../../runtime/ledger/proof.ts';
import { requireTool } from '../helpers.ts';

const vectors = (name: string) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url), 'utf8'));
const c2sp = vectors('c2sp-note.json');
const keel = vectors('keel-ledger.json');
const formatError = (pattern: RegExp) => (e: unknown) => e instanceof LedgerFormatError && e.code === 'KEEL_E_LEDGER_FORMAT' && pattern.test(e.message);
const verifyError = (pattern: RegExp) => (e: unknown) => e instanceof LedgerVerifyError && e.code === 'KEEL_E_LEDGER_VERIFY' && pattern.test(e.message);

const origin: string = keel.deviceKey.name;
const deviceSeed = new Uint8Array(Buffer.from(keel.deviceKey.seed, 'hex'));
const signer = noteSigner(origin, deviceSeed);
const verifiers = [noteVerifier(keel.deviceKey.vkey)];

function ledger(n: number): { tree: MemoryTree; records: Uint8Array[] } {
  const tree = new MemoryTree();
  const records: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const bytes = canonicalBytes({ v: 1, seq: i, t: 1_717_171_717_000 + i, kind: 'event', name: `e${i}` });
    records.push(bytes);
    tree.append(bytes);
  }
  return { tree, records };
}

function signedCheckpoint(tree: MemoryTree, size: number): string {
  return signNote(formatCheckpoint({ origin, size, root: tree.root(size) }), [signer]);
}

test('keel vectors: records hash to the documented leaves; the documented tlog-proof and witness body are reproduced', () => {
  const tree = new MemoryTree();
  keel.records.forEach((r: unknown, i: number) => {
    assert.equal(canonicalize(r), keel.canonical[i]);
    assert.equal(leafHash(canonicalBytes(r)).toString('hex'), keel.leafHashes[i]);
    tree.append(canonicalBytes(r));
    assert.equal(tree.root().toString('hex'), keel.roots[i]);
  });
  const text = formatTlogProof({ index: keel.tlogProof.index, proof: inclusionProof(keel.tlogProof.index, 3, tree), checkpoint: keel.signedCheckpoint });
  assert.equal(text, keel.tlogProof.text);
  const verified = verifyTlogProof(text, Buffer.from(keel.leafHashes[1], 'hex'), verifiers, { origin });
  assert.equal(verified.index, 1);
  assert.equal(verified.checkpoint.size, 3);
  const body = formatAddCheckpoint({ oldSize: 1, proof: consistencyProof(1, 3, tree), checkpoint: keel.signedCheckpoint });
  assert.equal(body, keel.addCheckpoint.text);
  const req = parseAddCheckpoint(body);
  const oldCp = openCheckpoint(keel.signedCheckpointSize1, verifiers).checkpoint;
  const newCp = openCheckpoint(req.checkpoint, verifiers).checkpoint;
  assert.ok(verifyConsistency(req.oldSize, newCp.size, req.proof, oldCp.root, newCp.root));
});

test('tlog-proof: every index of a 37-record log formats, parses back, and verifies; tampering is caught', () => {
  const { tree, records } = ledger(37);
  const cp = signedCheckpoint(tree, 37);
  for (let i = 0; i < 37; i++) {
    const proof = inclusionProof(i, 37, tree);
    const extra = i % 5 === 0 ? Buffer.from(`context ${i}`) : undefined;
    const text = formatTlogProof({ index: i, proof, checkpoint: cp, extra });
    assert.ok(text.startsWith(`${TLOG_PROOF_HEADER}\n${extra ? `extra ${extra.toString('base64')}\n` : ''}index ${i}\n`));
    const parsed = parseTlogProof(text);
    assert.deepEqual(parsed, extra ? { index: i, proof, extra, checkpoint: cp } : { index: i, proof, checkpoint: cp });
    assert.equal(formatTlogProof(parsed), text);
    verifyTlogProof(text, leafHash(records[i]), verifiers);
    assert.throws(() => verifyTlogProof(text, leafHash(records[(i + 1) % 37]), verifiers), verifyError(/does not lead to the root/));
  }
  const text = formatTlogProof({ index: 3, proof: inclusionProof(3, 37, tree), checkpoint: cp });
  assert.throws(() => verifyTlogProof(text, leafHash(records[3]), [noteVerifier(verifierKey(origin, nodeEd25519.publicKey(new Uint8Array(32))))]), verifyError(/no signature by a trusted key/));
  assert.throws(() => verifyTlogProof(text, leafHash(records[3]), verifiers, { origin: 'example.com/other' }), verifyError(/origin "example.com\/keel-demo" is not "example.com\/other"/));
  const beyond = formatTlogProof({ index: 40, proof: inclusionProof(3, 37, tree), checkpoint: cp });
  assert.throws(() => verifyTlogProof(beyond, leafHash(records[3]), verifiers), verifyError(/index 40 is not inside the checkpoint's tree of 37 leaves/));
  const forgedCp = cp.replace(/\n37\n/, '\n38\n');
  assert.throws(() => verifyTlogProof(text.replace(cp, forgedCp), leafHash(records[3]), verifiers), verifyError(/does not verify/));
  const flipped = text.replace(inclusionProof(3, 37, tree)[0].toString('base64'), Buffer.alloc(32, 1).toString('base64'));
  assert.throws(() => verifyTlogProof(flipped, leafHash(records[3]), verifiers), verifyError(/does not lead to the root/));
  assert.throws(() => verifyTlogProof(text, new Uint8Array(31), verifiers), RangeError);
});

test('the tlog-proof spec example parses (with a checkpoint we sign, its signatures being elided in the spec)', () => {
  const ex = c2sp.tlogProofExampleHead;
  const note = signNote(ex.checkpointText, [noteSigner('example.com/fancylog', deviceSeed)]);
  const p = parseTlogProof(ex.head + note);
  assert.equal(p.index, ex.index);
  assert.equal(p.proof.length, ex.proofLines);
  assert.equal(p.extra?.toString('latin1').slice(0, 20), 'age-v1.2.1-darwin-ar');
  assert.equal(p.checkpoint, note);
  assert.equal(formatTlogProof(p), ex.head + note);
});

test('parseTlogProof is strict', () => {
  const { tree } = ledger(5);
  const cp = signedCheckpoint(tree, 5);
  const good = formatTlogProof({ index: 2, proof: inclusionProof(2, 5, tree), checkpoint: cp });
  const [h0] = inclusionProof(2, 5, tree).map((h) => h.toString('base64'));
  const bad: [string, RegExp][] = [
    [good.replace(TLOG_PROOF_HEADER, 'c2sp.org/tlog-proof@v2'), /first line must be c2sp.org\/tlog-proof@v1/],
    [good.replace('index 2', 'index 02'), /index is not a decimal/],
    [good.replace('index 2', 'index -2'), /index is not a decimal/],
    [good.replace('index 2', 'index  2'), /index is not a decimal/],
    [good.replace('index 2', 'idx 2'), /expected a line "index <value>"/],
    [good.replace('index 2\n', ''), /expected a line "index <value>"/],
    [good.replace('index 2\n', 'extra \nindex 2\n'), /extra data is not non-empty/],
    [good.replace('index 2\n', 'extra !!\nindex 2\n'), /extra data is not non-empty/],
    [good.replace(h0, h0.slice(1)), /proof line 1 is not base64 of a 32-byte hash/],
    [good.replace(h0, Buffer.alloc(33).toString('base64')), /proof line 1 is not base64/],
    [good.replace(`${h0}\n`, `${h0}\n`.repeat(MAX_PROOF_HASHES + 1)), /more than 63 proof hashes/],
    [good.slice(0, good.indexOf('\n\n') + 2), /no signed checkpoint after the empty line/],
    [good.slice(0, good.indexOf('\n\n') + 1), /expected a proof hash or the empty line/],
    [good.replace('\n\n', '\n\n\n'), /not a signed note/],
    [good.slice(0, -1), /not a signed note/],
    [good.replaceAll('\n', '\r\n'), /first line must be/],
    ['', /expected the header, found the end of the text/],
    [TLOG_PROOF_HEADER, /a line without a newline/],
  ];
  for (const [text, pattern] of bad) assert.throws(() => parseTlogProof(text), formatError(pattern), String(pattern));
  assert.throws(() => parseTlogProof(5 as never), TypeError);
  assert.throws(() => formatTlogProof({ index: -1, proof: [], checkpoint: cp }), /index must be a non-negative safe integer/);
  assert.throws(() => formatTlogProof({ index: 0, proof: [Buffer.alloc(31)], checkpoint: cp }), /proof\[0\] must be a 32-byte hash/);
  assert.throws(() => formatTlogProof({ index: 0, proof: new Array(64).fill(Buffer.alloc(32)), checkpoint: cp }), /at most 63/);
  assert.throws(() => formatTlogProof({ index: 0, proof: [], checkpoint: 'x\n' }), /checkpoint is not a signed note/);
  assert.throws(() => formatTlogProof({ index: 0, proof: [], checkpoint: cp, extra: new Uint8Array(0) }), /extra must be a non-empty/);
});

test('witness add-checkpoint: the spec example parses and re-formats byte for byte; consistency verifies end to end', () => {
  const ex = c2sp.witnessRequestExample;
  const req = parseAddCheckpoint(ex.body);
  assert.equal(req.oldSize, ex.oldSize);
  assert.equal(req.proof.length, ex.proofLines);
  assert.ok(req.checkpoint.startsWith('example.com/behind-the-sofa\n20852163\n'));
  assert.equal(formatAddCheckpoint(req), ex.body);

  const { tree } = ledger(50);
  const checkpoints = new Map<number, string>();
  for (const size of [0, 1, 2, 7, 8, 31, 32, 50]) checkpoints.set(size, signedCheckpoint(tree, size));
  for (const [m, oldCp] of checkpoints) {
    for (const [n, newCp] of checkpoints) {
      if (m > n) continue;
      const body = formatAddCheckpoint({ oldSize: m, proof: consistencyProof(m, n, tree), checkpoint: newCp });
      const parsed = parseAddCheckpoint(body);
      assert.equal(formatAddCheckpoint(parsed), body);
      const oldRoot = openCheckpoint(oldCp, verifiers).checkpoint.root;
      const next = openCheckpoint(parsed.checkpoint, verifiers).checkpoint;
      assert.ok(verifyConsistency(parsed.oldSize, next.size, parsed.proof, oldRoot, next.root), `${m} -> ${n}`);
    }
  }
});

test('parseAddCheckpoint is strict; formatAddCheckpoint refuses impossible bodies', () => {
  const { tree } = ledger(9);
  const cp = signedCheckpoint(tree, 9);
  const good = formatAddCheckpoint({ oldSize: 3, proof: consistencyProof(3, 9, tree), checkpoint: cp });
  const h0 = consistencyProof(3, 9, tree)[0].toString('base64');
  const bad: [string, RegExp][] = [
    [good.replace('old 3', 'old 03'), /old size is not a decimal/],
    [good.replace('old 3', 'Old 3'), /expected a line "old <value>"/],
    [good.replace('old 3', 'old'), /expected a line "old <value>"/],
    [good.replace('old 3', 'old 0'), /proof must be empty when the old size is 0/],
    [good.replace(`${h0}\n`, `${h0}\n`.repeat(64)), /more than 63 proof hashes/],
    [good.replace(h0, `${h0} `), /not base64/],
    [good.slice(0, good.indexOf('\n\n') + 2), /no signed checkpoint/],
    [good.replace(/\n\n— .*\n$/, '\n'), /not a signed note/],
  ];
  for (const [text, pattern] of bad) assert.throws(() => parseAddCheckpoint(text), formatError(pattern), String(pattern));
  assert.equal(parseAddCheckpoint(formatAddCheckpoint({ oldSize: 0, proof: [], checkpoint: cp })).proof.length, 0);
  assert.throws(() => formatAddCheckpoint({ oldSize: 0, proof: [Buffer.alloc(32)], checkpoint: cp }), /proof must be empty when oldSize is 0/);
  assert.throws(() => formatAddCheckpoint({ oldSize: 1.5, proof: [], checkpoint: cp }), /oldSize must be a non-negative safe integer/);
  assert.throws(() => formatAddCheckpoint({ oldSize: 1, proof: [], checkpoint: 'nope' }), /checkpoint is not a signed note/);
  assert.throws(() => parseAddCheckpoint(null as never), TypeError);
});

const DOC = new URL('../../docs/ledger.md', import.meta.url);

/** The fenced code block following `<!-- keel-doc-test: <name> -->` in docs/ledger.md. */
function docBlock(name: string): string {
  const doc = readFileSync(DOC, 'utf8');
  const m = new RegExp(`<!-- keel-doc-test: ${name} -->\\n\`\`\`\\w*\\n([\\s\\S]*?)\`\`\`\\n`).exec(doc);
  assert.ok(m, `docs/ledger.md has no block ${name}`);
  return m[1];
}

test('docs/ledger.md shows exactly the vectors of keel-ledger.json', () => {
  const doc = readFileSync(DOC, 'utf8');
  const block = (text: string) => `\`\`\`\n${text}${text.endsWith('\n') ? '' : '\n'}\`\`\``;
  assert.ok(doc.includes(block(keel.canonical.join('\n'))), 'canonical records');
  assert.ok(doc.includes(block(keel.leafHashes.join('\n'))), 'leaf hashes');
  assert.ok(doc.includes(block(keel.roots.join('\n'))), 'roots');
  assert.ok(doc.includes(block(keel.checkpoint)), 'checkpoint');
  assert.ok(doc.includes(block(keel.signedCheckpoint)), 'signed checkpoint');
  assert.ok(doc.includes(block(keel.cosignature.line)), 'cosignature line');
  assert.ok(doc.includes(block(keel.cosignature.message)), 'cosignature message');
  assert.ok(doc.includes(block(keel.tlogProof.text)), 'tlog-proof');
  assert.ok(doc.includes(block(keel.addCheckpoint.text)), 'add-checkpoint body');
  assert.ok(doc.includes(keel.deviceKey.vkey) && doc.includes(keel.cosignerKey.vkey), 'verifier keys');
  const pem = /(keel-key-name: .*\n-----BEGIN PRIVATE KEY-----\n[\s\S]*?-----END PRIVATE KEY-----\n)/.exec(doc)?.[1];
  assert.ok(pem, 'key file example');
  assert.equal(Buffer.from(parseKeyFileForDoc(pem)).toString('hex'), keel.deviceKey.seed);
});

function parseKeyFileForDoc(text: string): Uint8Array {
  const key = parseKeyFile(text, 'docs/ledger.md');
  assert.equal(key.name, keel.deviceKey.name);
  return key.privateKey;
}

test('the OpenSSL recipe of docs/ledger.md verifies the documented checkpoint, and rejects a forged one', (t) => {
  if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
  const work = mkdtempSync(path.join(os.tmpdir(), 'keel-doc-'));
  try {
    writeFileSync(path.join(work, 'checkpoint'), keel.signedCheckpoint);
    const out = execFileSync('bash', ['-euo', 'pipefail', '-c', docBlock('openssl-checkpoint')], { cwd: work, encoding: 'utf8' });
    assert.match(out, /^86c30781\n/);
    assert.match(out, /Signature Verified Successfully/);
    writeFileSync(path.join(work, 'checkpoint'), keel.signedCheckpoint.replace('\n3\n', '\n4\n'));
    assert.throws(() => execFileSync('bash', ['-euo', 'pipefail', '-c', docBlock('openssl-checkpoint')], { cwd: work, stdio: 'pipe' }), /Command failed/);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('the Python root recomputation of docs/ledger.md matches the checkpoint', (t) => {
  if (!requireTool(t, 'python3', 'apt-get install python3')) return;
  const work = mkdtempSync(path.join(os.tmpdir(), 'keel-doc-'));
  try {
    writeFileSync(path.join(work, 'verify.py'), docBlock('python-root'));
    writeFileSync(path.join(work, 'records.jsonl'), keel.canonical.map((c: string) => `${c}\n`).join(''));
    const out = execFileSync('python3', ['verify.py', 'records.jsonl'], { cwd: work, encoding: 'utf8' });
    assert.equal(out.trim(), Buffer.from(keel.roots[2], 'hex').toString('base64'));
    assert.ok(keel.checkpoint.includes(`\n${out.trim()}\n`));
    writeFileSync(path.join(work, 'empty.jsonl'), '');
    assert.equal(execFileSync('python3', ['verify.py', 'empty.jsonl'], { cwd: work, encoding: 'utf8' }).trim(), '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
