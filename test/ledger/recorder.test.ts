import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import { FakeClock, SystemClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { Ledger, type RecordInput } from '../../runtime/ledger/ledger.ts';
import { LedgerRecorder } from '../../runtime/ledger/recorder.ts';
import { tensorDigest } from '../../runtime/ledger/records.ts';
import { Runtime } from '../../runtime/runtime.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-recorder-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const silent = pino({ level: 'silent' });
const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);

test('every inference, decision, action and the safe state at shutdown land in a verifiable ledger', async () => {
  const config = parseConfigText(
    `
gpio: { backend: sim }
sources:
  - { name: lidar, type: synthetic, rateHz: 10, channels: { ${[...RANGES, 'bumper'].map((c) => `${c}: [{ kind: constant, value: 1 }]`).join(', ')} } }
actuators:
  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }
pipelines:
  - name: obstacle
    source: lidar
    window: { size: 1, channels: [${RANGES.join(', ')}] }
    transforms: [{ type: scale, factor: 0.5, offset: -1 }]
    model: { path: ${OBSTACLE}, sha256: ${sha256Hex(readFileSync(OBSTACLE))}, input: scan, inputs: { scan: { shape: [1, 32] } } }
    rules:
      - { name: bumped, when: { sensor: lidar.bumper, above: 0.5 }, onEnter: [{ actuator: brake, value: 1 }], onExit: [{ actuator: brake, value: 0 }] }
`,
    'c.yaml',
  );
  const clock = new SystemClock();
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(config, { clock, logger: silent, baseDir: tmp, serial: new MockSerialOpener(), gpio: new SimGpioBackend({ clock }), sources: { lidar: push }, noHttp: true });
  const key = generateKeyFile(path.join(tmp, 'a.key'), { name: 'test.example/bot' });
  const dir = path.join(tmp, 'ledger-a');
  const rec = await LedgerRecorder.open(
    { dir, key: 'unused', durability: 'batch', onFull: 'drop-oldest', flushMs: 50, intervalMs: 1000, checkpointEveryRecords: 1000, checkpointEveryMs: 60_000, maxBuffered: 1000 },
    key,
    'bot',
    dir,
    clock,
    silent,
  );
  rec.attach(rt, Buffer.from('config bytes'));
  const inputs: Float32Array[] = [];
  rt.on('inference', (e) => inputs.push(e.input.slice()));
  await rt.start();
  const scan = (bumper: number) => Object.fromEntries([...RANGES.map((r) => [r, 1.5] as const), ['bumper', bumper] as const]);
  push.push(scan(0));
  await rt.settled();
  push.push(scan(1));
  await rt.settled();
  await rt.stop('test');
  await rec.close();

  const ledger = await Ledger.open(dir, { readOnly: true });
  const v = await ledger.verify();
  assert.ok(v.ok, JSON.stringify(v));
  const records = Array.from({ length: ledger.size }, (_, i) => JSON.parse(ledger.read(i).toString()) as Record<string, any>);
  await ledger.close();
  const kinds = records.map((r) => r.kind === 'event' ? `event:${r.event}` : r.kind);
  assert.deepEqual(kinds, ['config', 'event:start', 'inference', 'inference', 'decision', 'action', 'event:safe', 'event:stop']);
  const receipt = records[2];
  assert.equal(receipt.model.sha256, sha256Hex(readFileSync(OBSTACLE)));
  assert.deepEqual(receipt.inputs.scan, tensorDigest('float32', [1, 32], inputs[0]));
  assert.equal(receipt.outputs.probs.length, 3);
  assert.equal(records[0].sha256, sha256Hex(Buffer.from('config bytes')));
  assert.deepEqual({ rule: records[4].rule, state: records[4].state }, { rule: 'bumped', state: 'enter' });
  assert.deepEqual({ actuator: records[5].actuator, value: records[5].value, result: records[5].result }, { actuator: 'brake', value: 1, result: 'ok' });
  records.forEach((r, i) => assert.equal(r.seq, i));
});

test('a failing disk keeps records in memory; past the bound the oldest go, and a gap record says so', async () => {
  const clock = new FakeClock();
  let failing = true;
  const appended: RecordInput[] = [];
  const fakeLedger = {
    appendBatch: async (batch: RecordInput[]) => {
      if (failing) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
      appended.push(...batch);
      return 0;
    },
    checkpoint: async () => '',
    close: async () => {},
  } as unknown as Ledger;
  const rec = new LedgerRecorder(fakeLedger, { clock, logger: silent, flushMs: 10, checkpointEveryRecords: 1000, checkpointEveryMs: 60_000, maxBuffered: 5 });
  for (let i = 0; i < 8; i++) rec.add('event', { n: i }, 1000 + i);
  await rec.flush();
  assert.equal(rec.stats().failures, 1);
  assert.equal(rec.stats().dropped, 3);
  assert.equal(rec.stats().buffered, 5);
  failing = false;
  await rec.flush();
  assert.deepEqual(appended[0].kind, 'gap');
  assert.deepEqual({ ...appended[0].body }, { dropped: 3, fromT: 1000, toT: 1002, reason: 'buffer full' });
  assert.deepEqual(appended.slice(1).map((r) => r.body.n), [3, 4, 5, 6, 7]);
});

test('at the disk bound, drop-oldest prunes the oldest records, writes a gap record, and the tree still verifies', async () => {
  const clock = new SystemClock();
  const key = generateKeyFile(path.join(tmp, 'b.key'), { name: 'test.example/bounded' });
  const dir = path.join(tmp, 'ledger-b');
  const rec = await LedgerRecorder.open(
    { dir, key: 'unused', durability: 'batch', onFull: 'drop-oldest', maxBytes: 1_048_576, flushMs: 60_000, intervalMs: 1000, checkpointEveryRecords: 100_000, checkpointEveryMs: 60_000, maxBuffered: 10_000 },
    key,
    'bounded',
    dir,
    clock,
    silent,
  );
  const blob = 'x'.repeat(8000);
  for (let i = 0; i < 400; i++) {
    rec.add('event', { n: i, blob });
    await rec.flush();
  }
  await rec.close();
  const ledger = await Ledger.open(dir, { readOnly: true });
  try {
    assert.ok(ledger.firstAvailable > 0, 'old records were pruned');
    const v = await ledger.verify();
    assert.ok(v.ok, JSON.stringify(v));
    const kept = Array.from({ length: ledger.size - ledger.firstAvailable }, (_, i) => JSON.parse(ledger.read(ledger.firstAvailable + i).toString()) as Record<string, any>);
    const gaps = kept.filter((r) => r.kind === 'gap');
    assert.ok(gaps.length >= 1, 'a gap record says what was dropped');
    assert.match(gaps[0].reason, /disk bound/);
    assert.equal(gaps[0].toSeq - gaps[0].fromSeq + 1, gaps[0].dropped);
    // Every event record ever added is either still stored or inside a gap's range: nothing vanished.
    const stored = new Set(kept.filter((r) => r.kind === 'event' && r.data === undefined).map((r) => r.n));
    assert.ok(stored.has(399), 'the newest record is kept');
    assert.equal(rec.stats().dropped, 0, 'nothing was dropped from memory');
  } finally {
    await ledger.close();
  }
});

test('record durability: each record is appended as it happens, with no timer tick needed', async () => {
  const clock = new FakeClock();
  const key = generateKeyFile(path.join(tmp, 'c.key'), { name: 'test.example/record' });
  const dir = path.join(tmp, 'ledger-c');
  const rec = await LedgerRecorder.open(
    { dir, key: 'unused', durability: 'record', onFull: 'drop-oldest', flushMs: 60_000, intervalMs: 1000, checkpointEveryRecords: 100_000, checkpointEveryMs: 60_000, maxBuffered: 1000 },
    key,
    'rec',
    dir,
    clock,
    silent,
  );
  for (let i = 0; i < 5; i++) rec.add('event', { n: i });
  const deadline = Date.now() + 5000;
  while (rec.stats().appended < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.equal(rec.stats().appended, 5, 'appended without the flush timer firing');
  assert.equal(rec.ledger.size, 5);
  await rec.close();
});
