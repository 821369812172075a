/**
 * Crash injection against a running `keel run` with a ledger: SIGKILL mid-run, then the log
 * verifies, its last checkpoint is consistent with what a restarted runtime appends, and
 * SIGTERM ends with a final checkpoint covering every record.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { waitFor } from '../helpers.ts';
import { noteVerifier, openCheckpoint } from '../../runtime/ledger/note.ts';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { verifyConsistency } from '../../runtime/ledger/merkle.ts';
import { parseAddCheckpoint } from '../../runtime/ledger/proof.ts';
import { keel, killAll, portableCopy, startKeel } from './keel-process.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-ledger-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});

test('kill -9 during keel run: the ledger verifies, and a restart extends the same tree', async () => {
  const key = path.join(tmp, 'device.key');
  const gen = await keel(['keygen', '--out', key, '--name', 'test.example/cart']);
  assert.equal(gen.code, 0, gen.stderr);
  const vkey = gen.stdout.trim();
  const dir = path.join(tmp, 'ledger');
  const config = portableCopy('examples/motor-stall.yaml', tmp, 0, (c) => {
    c.ledger = { dir, key, durability: 'batch', flushMs: 50, checkpointEveryMs: 200 };
  });
  const checkpointSize = () => {
    try {
      return openCheckpoint(readFileSync(path.join(dir, 'checkpoint'), 'utf8'), [noteVerifier(vkey)]).checkpoint.size;
    } catch {
      return 0;
    }
  };

  const first = startKeel(['run', config, '--log-level', 'warn']);
  await waitFor(() => checkpointSize() >= 20, 'a checkpoint over 20 records', 20_000, 50);
  first.signal('SIGKILL');
  const killed = await first.exited;
  assert.equal(killed.signal, 'SIGKILL');
  const sizeAtKill = checkpointSize();
  const rootAtKill = openCheckpoint(readFileSync(path.join(dir, 'checkpoint'), 'utf8'), [noteVerifier(vkey)]).checkpoint.root;

  const v1 = await keel(['log', 'verify', dir]);
  assert.equal(v1.code, 0, v1.stderr + v1.stdout);

  const second = startKeel(['run', config, '--log-level', 'warn']);
  await waitFor(() => checkpointSize() > sizeAtKill + 10, 'new checkpoints after the restart', 20_000, 50);
  second.signal('SIGTERM');
  const stopped = await second.exited;
  assert.equal(stopped.code, 0, stopped.stderr);

  const ledger = await Ledger.open(dir, { readOnly: true });
  try {
    const v = await ledger.verify(vkey);
    assert.ok(v.ok, JSON.stringify(v));
    assert.equal(v.checkpointSize, ledger.size, 'the shutdown checkpoint covers every record');
    // The checkpoint signed before the crash is consistent with the final signed checkpoint.
    const finalCp = openCheckpoint(readFileSync(path.join(dir, 'checkpoint'), 'utf8'), [noteVerifier(vkey)]).checkpoint;
    const body = parseAddCheckpoint(ledger.consistency(sizeAtKill));
    assert.ok(verifyConsistency(sizeAtKill, finalCp.size, body.proof, rootAtKill, finalCp.root));
    const kinds = Array.from({ length: ledger.size }, (_, i) => (JSON.parse(ledger.read(i).toString()) as { kind: string; event?: string }));
    assert.equal(kinds.filter((k) => k.kind === 'event' && k.event === 'start').length, 2, 'two runs started');
    assert.ok(kinds.some((k) => k.kind === 'inference'));
    // The run's last event is its stop. (Once, under load in CI, a record without an event
    // field came after it; the tail is printed to diagnose it if it happens again.)
    const tail = JSON.stringify(kinds.slice(-3));
    assert.equal(kinds.filter((k) => k.kind === 'event').at(-1)!.event, 'stop', tail);
    assert.ok(kinds.slice(-3).some((k) => k.kind === 'event' && k.event === 'stop'), `the stop record is among the last three: ${tail}`);
  } finally {
    await ledger.close();
  }
});
