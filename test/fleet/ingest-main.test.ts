/** `keel fleet ingest` (cmdIngest) in process, against an in-process aedes broker. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { connectAsync } from 'mqtt';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { openFleetDb } from '../../fleet/db.ts';
import { cmdIngest } from '../../fleet/ingest-main.ts';
import { waitFor } from '../helpers.ts';
import { appendRecords, enroll, makeBatch, makeDevice, startAedes, storedRows, tempDir } from './ingest-fixtures.ts';

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s) } };
}

test('usage errors exit 2, a missing fleet key exits 1 with a hint', async () => {
  const h = io();
  assert.equal(await cmdIngest(['--help'], h.io), 0);
  assert.match(h.out[0], /Usage: keel fleet ingest --broker <url>/);
  assert.equal(await cmdIngest([], h.io), 2);
  assert.match(h.err.at(-1)!, /--broker <url> is required/);
  assert.equal(await cmdIngest(['--broker', 'mqtt://x', '--bogus'], h.io), 2);
  assert.equal(await cmdIngest(['--broker', 'mqtt://x', '--duration', '-1'], h.io), 2);
  assert.equal(await cmdIngest(['--broker', 'mqtt://x', '--log-level', 'loud'], h.io), 2);
  const { dir, cleanup } = tempDir('main');
  try {
    assert.equal(await cmdIngest(['--broker', 'mqtt://127.0.0.1:1', '--state', dir], h.io), 1);
    assert.match(h.err.at(-1)!, /no fleet key at .*fleet.key: start "keel fleet serve/);
  } finally {
    cleanup();
  }
});

test('runs until aborted: ingests, acks, then stops with exit 0', async () => {
  const { dir, cleanup } = tempDir('main');
  const broker = await startAedes();
  const dev = await makeDevice(dir, 'robot-1');
  const state = path.join(dir, 'state');
  const db = openFleetDb(path.join(state, 'fleet.db'));
  try {
    generateKeyFile(path.join(state, 'fleet.key'), { name: 'my-fleet' });
    enroll(db, dev.id, dev.vkey);
    await appendRecords(dev, 50);
    const ac = new AbortController();
    const h = io();
    const run = cmdIngest(['--broker', broker.url, '--state', state, '--log-level', 'silent'], h.io, { signal: ac.signal });
    const c = await connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
    let ack = '';
    c.on('message', (_t, p) => (ack = p.toString()));
    await c.subscribeAsync('keel/robot-1/ack', { qos: 1 });
    // The worker subscribes asynchronously: resend until acked, as a device would.
    await waitFor(() => {
      if (ack === '') void makeBatch(dev, 0, 50).then((b) => c.publishAsync('keel/robot-1/log', b, { qos: 1 }));
      return ack !== '';
    }, 'ack from the worker', 5000, 100);
    assert.match(ack, /\n— my-fleet /, 'cosigned under the key file\'s name');
    ac.abort();
    assert.equal(await run, 0, h.err.join('\n'));
    assert.equal(storedRows(db, 'robot-1').length, 50);
    await c.endAsync(true);
  } finally {
    await broker.close();
    await dev.ledger.close();
    db.close();
    cleanup();
  }
});
