/**
 * The first-run key path (`ledger.createKey`): generate or refuse, as configured, and never
 * replace a key that exists, nor start a new identity over a ledger that another key signed.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { parseConfigText } from '../../runtime/config/load.ts';
import type { LedgerConfig } from '../../runtime/config/schema.ts';
import { ConfigError } from '../../runtime/errors.ts';
import { KeyFileError } from '../../runtime/ledger/errors.ts';
import { generateKeyFile, loadKeyFile, loadOrCreateKeyFile } from '../../runtime/ledger/keys.ts';
import { ledgerKey, ledgerKeyProblem } from '../../runtime/ledger/recorder.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-first-key-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = () => {
  const d = path.join(tmp, String(n++));
  mkdirSync(d);
  return d;
};
const section = (over: Partial<LedgerConfig> = {}): LedgerConfig => ({
  dir: 'ledger',
  key: 'device.key',
  durability: 'batch',
  flushMs: 200,
  intervalMs: 1000,
  checkpointEveryRecords: 1000,
  checkpointEveryMs: 60_000,
  maxBuffered: 1000,
  onFull: 'drop-oldest',
  ...over,
});

test('without createKey a missing key is refused with both ways out, and nothing is created', () => {
  const f = path.join(fresh(), 'device.key');
  assert.throws(
    () => loadOrCreateKeyFile(f, { create: false }),
    (e: unknown) => e instanceof KeyFileError && e.code === 'KEEL_E_KEY' && e.message.includes(`keel keygen --out ${f}`) && e.message.includes('ledger.createKey: true'),
  );
  assert.equal(existsSync(f), false);
});

test('with createKey a missing key is created once (0600, named), then loaded as it is', () => {
  const f = path.join(fresh(), 'device.key');
  const first = loadOrCreateKeyFile(f, { create: true, name: 'cart-7.example.org' });
  assert.equal(first.created, true);
  assert.equal(statSync(f).mode & 0o777, 0o600);
  assert.equal(first.key.name, 'cart-7.example.org');
  const again = loadOrCreateKeyFile(f, { create: true, name: 'other' });
  assert.equal(again.created, false);
  assert.deepEqual(again.key.publicKey, first.key.publicKey);
  assert.deepEqual(loadKeyFile(f).privateKey, first.key.privateKey);
});

test('an existing key that does not load is never replaced: loose mode, garbage, a directory', () => {
  const dir = fresh();
  const loose = path.join(dir, 'loose.key');
  generateKeyFile(loose);
  chmodSync(loose, 0o644);
  const before = readFileSync(loose);
  assert.throws(() => loadOrCreateKeyFile(loose, { create: true }), /chmod 600/);
  assert.deepEqual(readFileSync(loose), before);

  const garbage = path.join(dir, 'garbage.key');
  writeFileSync(garbage, 'not a key\n', { mode: 0o600 });
  assert.throws(() => loadOrCreateKeyFile(garbage, { create: true }), /no PEM block/);
  assert.equal(readFileSync(garbage, 'utf8'), 'not a key\n');

  const asDir = path.join(dir, 'dir.key');
  mkdirSync(asDir);
  assert.throws(() => loadOrCreateKeyFile(asDir, { create: true }), /is a directory|not a regular file/);
});

test('refuseCreate wins over createKey, and a missing key directory is named', () => {
  const dir = fresh();
  assert.throws(() => loadOrCreateKeyFile(path.join(dir, 'k'), { create: true, refuseCreate: 'because' }), /will not create one: because/);
  assert.equal(existsSync(path.join(dir, 'k')), false);
  assert.throws(() => loadOrCreateKeyFile(path.join(dir, 'no', 'k'), { create: true }), /directory .*no does not exist/);
});

test('ledgerKey names a created key like the checkpoints (origin, else device name)', () => {
  const a = fresh();
  const made = ledgerKey(section({ createKey: true }), a, 'cart-7');
  assert.equal(made.created, true);
  assert.equal(made.key.name, 'cart-7');
  assert.equal(loadKeyFile(path.join(a, 'device.key')).name, 'cart-7');
  const b = fresh();
  assert.equal(ledgerKey(section({ createKey: true, origin: 'fleet.example/cart-7' }), b, 'cart-7').key.name, 'fleet.example/cart-7');
  const c = fresh();
  assert.throws(() => ledgerKey(section(), c, 'cart-7'), /keel keygen/);
});

test('a ledger already signed by a lost key is not continued under a new one', () => {
  const dir = fresh();
  mkdirSync(path.join(dir, 'ledger'));
  writeFileSync(path.join(dir, 'ledger', 'vkey'), 'cart-7+12345678+AQ==\n');
  const cfg = section({ createKey: true });
  assert.throws(() => ledgerKey(cfg, dir, 'cart-7'), /signed by cart-7\+12345678\+AQ==; restore that key/);
  assert.equal(existsSync(path.join(dir, 'device.key')), false);
  assert.match(ledgerKeyProblem(cfg, dir) ?? '', /restore that key/);
});

test('ledgerKeyProblem (keel check) creates nothing and says what run would do', () => {
  const dir = fresh();
  assert.match(ledgerKeyProblem(section(), dir) ?? '', /does not exist: create it with `keel keygen/);
  assert.equal(ledgerKeyProblem(section({ createKey: true }), dir), undefined);
  assert.equal(existsSync(path.join(dir, 'device.key')), false);
  assert.match(ledgerKeyProblem(section({ createKey: true, key: 'missing/device.key' }), dir) ?? '', /directory .*missing does not exist/);
  generateKeyFile(path.join(dir, 'device.key'));
  assert.equal(ledgerKeyProblem(section(), dir), undefined);
  chmodSync(path.join(dir, 'device.key'), 0o640);
  assert.match(ledgerKeyProblem(section({ createKey: true }), dir) ?? '', /chmod 600/);
});

test('the config schema takes createKey as a boolean, default false', () => {
  const base = `
gpio: { backend: sim }
sources: [{ name: s, type: synthetic, rateHz: 10, channels: { x: [{ kind: constant, value: 1 }] } }]
pipelines: [{ name: p, source: s, window: { size: 1, channels: [x] }, model: { path: m.onnx, sha256: ${'a'.repeat(64)}, input: x, inputs: { x: { shape: [1, 1] } } } }]
`;
  assert.equal(parseConfigText(`${base}ledger: { dir: l, key: k }\n`).ledger?.createKey, false);
  assert.equal(parseConfigText(`${base}ledger: { dir: l, key: k, createKey: true }\n`).ledger?.createKey, true);
  assert.throws(
    () => parseConfigText(`${base}ledger: { dir: l, key: k, createKey: "yes" }\n`),
    (e: unknown) => e instanceof ConfigError && e.issues.some((i) => i.path === 'ledger.createKey'),
  );
});
