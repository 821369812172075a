/**
 * The `sync` config section (schema defaults, cross-checks with paths, the fleet key from a
 * file) and the delivery state file sync.json (atomic replace, damaged files).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { parseConfigText } from '../../runtime/config/load.ts';
import { ConfigError } from '../../runtime/errors.ts';
import { SyncCursor, SYNC_STATE_FILE } from '../../runtime/sync/cursor.ts';
import { resolveFleetKey, syncFileIssues } from '../../runtime/sync/config.ts';
import { deviceKey, fleetKey, tempDir } from './fixtures.ts';

const dir = tempDir('config');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const fk = fleetKey('fleet.example');
const op = deviceKey('operator.alice');

function config(sync: string, ledger = 'ledger: { dir: ledger, key: device.key }'): string {
  return `
device: { name: bot-1 }
gpio: { backend: sim }
sources:
  - { name: s, type: synthetic, rateHz: 10, channels: { a: [{ kind: constant, value: 1 }] } }
pipelines:
  - name: p
    source: s
    window: { size: 1, channels: [a] }
    model: { path: m.onnx, sha256: ${'a'.repeat(64)}, input: x, inputs: { x: { shape: [1, 1] } } }
${ledger}
${sync}
`;
}

function issues(text: string): string[] {
  try {
    parseConfigText(text, 'c.yaml');
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues.map((i) => `${i.path}: ${i.message}`);
  }
}

test('a sync section gets its defaults; the fleet key and audience resolve', () => {
  const c = parseConfigText(config(`sync: { broker: "mqtts://fleet.example:8883", fleet: "${fk.vkey}", operators: ["${op.vkey}"] }`), 'c.yaml');
  const s = c.sync!;
  assert.equal(s.prefix, 'keel');
  assert.equal(s.maxInFlight, 8);
  assert.equal(s.batchRecords, 10_000);
  assert.equal(s.batchBytes, 1_048_576);
  assert.equal(s.ackTimeoutMs, 10_000);
  assert.equal(s.tokenLifetimeS, 600);
  assert.deepEqual(s.reconnect, { initialMs: 500, maxMs: 30_000, jitter: 0.5 });
  assert.equal(s.pruneDelivered, true);
  assert.deepEqual(s.telemetry, { everyMs: 0 });
  assert.ok(Number.isFinite(s.rateRecordsPerS) && Number.isFinite(s.rateBytesPerS));
  assert.equal(resolveFleetKey(s, dir).key.name, 'fleet.example');
  // From a file, relative to the config's directory, with a trailing newline.
  fs.writeFileSync(path.join(dir, 'fleet.vkey'), `${fk.vkey}\n`);
  const f = parseConfigText(config(`sync: { broker: "mqtt://127.0.0.1:1883", fleet: "@fleet.vkey" }`), 'c.yaml').sync!;
  assert.equal(resolveFleetKey(f, dir).vkey, fk.vkey);
  assert.deepEqual(syncFileIssues(f, dir), []);
});

test('every sync problem is reported at once with its path', () => {
  const found = issues(
    config(
      `sync: { broker: "mqtt://user:pw@fleet.example", caFile: ca.pem, prefix: "a/#", fleet: "${op.vkey}", audience: "has space", operators: ["${fk.vkey}", "junk"], reconnect: { initialMs: 5000, maxMs: 1000 } }`,
    ),
  );
  const paths = found.map((f) => f.split(':')[0]);
  for (const p of ['sync.broker', 'sync.caFile', 'sync.prefix', 'sync.fleet', 'sync.audience', 'sync.operators[0]', 'sync.operators[1]', 'sync.reconnect']) {
    assert.ok(paths.includes(p), `${p} reported (got ${found.join(' | ')})`);
  }
  assert.ok(found.some((f) => f.startsWith('sync.fleet') && f.includes('0x04')));
  assert.ok(found.some((f) => f.startsWith('sync.operators[0]') && f.includes('0x01')));
  // Schema-level problems.
  assert.ok(issues(config(`sync: { broker: "http://fleet.example", fleet: "${fk.vkey}" }`)).some((f) => f.startsWith('sync.broker')));
  assert.ok(issues(config(`sync: { broker: "mqtt://x", fleet: "${fk.vkey}", maxInFlight: 0, bogus: 1 }`)).some((f) => f.startsWith('sync.bogus: unknown key')));
  // Sync without a ledger.
  assert.ok(issues(config(`sync: { broker: "mqtt://x", fleet: "${fk.vkey}" }`, '')).includes('sync: needs a ledger section (sync sends the signed ledger, signed with the ledger key)'));
});

test('files a sync section names: a missing fleet key file or CA, a file with two keys', () => {
  const base = { broker: 'mqtts://x', prefix: 'keel', operators: [], tokenLifetimeS: 600, maxInFlight: 4, batchRecords: 10, batchBytes: 4096, rateRecordsPerS: 10, rateBytesPerS: 4096, ackTimeoutMs: 1000, reconnect: { initialMs: 1, maxMs: 2, jitter: 0 }, pruneDelivered: true, telemetry: { everyMs: 0 } };
  const missing = syncFileIssues({ ...base, fleet: '@nope.vkey', caFile: 'nope.pem' }, dir);
  assert.deepEqual(missing.map((i) => i.path), ['sync.fleet', 'sync.caFile']);
  assert.match(missing[0].message, /file not found/);
  fs.writeFileSync(path.join(dir, 'two.vkey'), `${fk.vkey}\n${fk.vkey}\n`);
  assert.throws(() => resolveFleetKey({ ...base, fleet: '@two.vkey' }, dir), /exactly one/);
  fs.writeFileSync(path.join(dir, 'not-ca.pem'), 'hello');
  assert.match(syncFileIssues({ ...base, fleet: fk.vkey, caFile: 'not-ca.pem' }, dir)[0].message, /no PEM certificate/);
});

test('sync.json: saved atomically, reloaded; a damaged file restarts delivery with a larger bdSeq', async () => {
  const d = tempDir('cursor');
  try {
    const { cursor, problem } = SyncCursor.load(d, 5_000_000);
    assert.equal(problem, undefined);
    assert.deepEqual(cursor.current, { delivered: 0, bdSeq: 0 });
    // Coalescing: many saves in a row, the last one wins and all resolve.
    await Promise.all([1, 2, 3, 4].map((i) => cursor.save({ delivered: i * 10, bdSeq: i, ack: `ack${i}` })));
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(d, SYNC_STATE_FILE), 'utf8')), { delivered: 40, bdSeq: 4, ack: 'ack4' });
    assert.ok(!fs.existsSync(path.join(d, `${SYNC_STATE_FILE}.tmp`)), 'no temp file left');
    assert.deepEqual(SyncCursor.load(d, 0).cursor.current, { delivered: 40, bdSeq: 4, ack: 'ack4' });
    for (const junk of ['{"delivered":-1,"bdSeq":1}', '{"delivered":1.5,"bdSeq":1}', '{"delivered":1}', 'not json', '[]', '{"delivered":1,"bdSeq":1,"ack":5}']) {
      fs.writeFileSync(path.join(d, SYNC_STATE_FILE), junk);
      const r = SyncCursor.load(d, 5_000_000);
      assert.ok(r.problem, junk);
      assert.deepEqual(r.cursor.current, { delivered: 0, bdSeq: 5000 }, junk);
    }
    // A write that cannot happen (directory gone) rejects with a retryable KEEL_E_SYNC.
    fs.rmSync(d, { recursive: true, force: true });
    await assert.rejects(SyncCursor.load(d, 0).cursor.save({ delivered: 1, bdSeq: 1 }), { code: 'KEEL_E_SYNC', retryable: true });
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});
