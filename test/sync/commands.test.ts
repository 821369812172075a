import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SimGpioBackend } from '../../drivers/gpio/index.ts';
import { PushSource } from '../../drivers/push.ts';
import { MockSerialOpener } from '../../drivers/serial/index.ts';
import { FakeClock } from '../../runtime/clock.ts';
import { parseConfigText } from '../../runtime/config/load.ts';
import { DriverError, KeelError } from '../../runtime/errors.ts';
import { sha256Hex } from '../../runtime/inference.ts';
import { generateKeyFile, type DeviceKey } from '../../runtime/ledger/keys.ts';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { verifierKey } from '../../runtime/ledger/note.ts';
import { LedgerRecorder } from '../../runtime/ledger/recorder.ts';
import { Runtime } from '../../runtime/runtime.ts';
import { createCommandHandler, UNVERIFIED_BURST, type CommandActions, type CommandHandler } from '../../runtime/sync/commands.ts';
import { COMMAND_DOMAIN, MAX_COMMAND_LIFETIME_MS, RESULT_DOMAIN, openEnvelope, sealEnvelope, type CommandBody, type CommandResultBody, type SigningKey } from '../../runtime/sync/wire.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-commands-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const silent = pino({ level: 'silent' });
const RANGES = Array.from({ length: 32 }, (_, i) => `r${String(i).padStart(2, '0')}`);
const DEVICE = 'bot-1';

const CONFIG = `
device: { name: ${DEVICE} }
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
    rules: []
safety: { silenceMs: 60000, healthyForMs: 100, recovery: manual }
`;

let n = 0;
function keyPair(name: string): { key: DeviceKey; signing: SigningKey; vkey: string } {
  const key = generateKeyFile(path.join(tmp, `key-${n++}.key`), { name });
  return { key, signing: { name, privateKey: key.privateKey }, vkey: verifierKey(name, key.publicKey) };
}

const deviceKeys = keyPair('fleet.example/bot-1');
const operator = keyPair('ops.alice');
const stranger = keyPair('ops.mallory');

/** A started runtime (sim GPIO, pushed lidar), its ledger and recorder, and a command handler. */
async function rig(o: { actions?: Partial<CommandActions>; maxRemembered?: number; stateFile?: string } = {}) {
  const clock = new FakeClock();
  const gpio = new SimGpioBackend({ clock });
  const push = new PushSource('lidar', { clock });
  const rt = await Runtime.create(parseConfigText(CONFIG, 'c.yaml'), { clock, logger: silent, baseDir: tmp, serial: new MockSerialOpener(), gpio, sources: { lidar: push }, noHttp: true });
  const ledgerDir = mkdtempSync(path.join(tmp, 'ledger-'));
  const ledger = await Ledger.open(ledgerDir, { key: deviceKeys.key, durability: 'batch', clock });
  const recorder = new LedgerRecorder(ledger, { clock, logger: silent, flushMs: 50, checkpointEveryRecords: 10_000, checkpointEveryMs: 3_600_000, maxBuffered: 1000 });
  recorder.attach(rt);
  await rt.start();
  const calls: string[] = [];
  const actions: CommandActions = {
    checkpoint: async () => {
      calls.push('checkpoint');
      await recorder.checkpoint();
    },
    sync: () => void calls.push('sync'),
    rebirth: () => void calls.push('rebirth'),
    ...o.actions,
  };
  const stateFile = o.stateFile ?? path.join(ledgerDir, 'commands.json');
  const make = () =>
    createCommandHandler({ device: DEVICE, key: deviceKeys.signing, operators: [operator.vkey], runtime: rt, recorder, clock, stateFile, actions, logger: silent, maxRemembered: o.maxRemembered });
  const handler = make();
  const close = async () => {
    await rt.stop('test done');
    await recorder.close();
  };
  return { clock, gpio, push, rt, ledger, recorder, handler, make, calls, stateFile, close };
}

function command(clock: FakeClock, over: Partial<CommandBody> = {}, key: SigningKey = operator.signing): Buffer {
  const now = clock.now();
  const body: CommandBody = { v: 1, id: randomBytes(8).toString('hex'), device: DEVICE, issuedAt: now, expiresAt: now + 60_000, command: { type: 'actuate', actuator: 'brake', value: 1 }, ...over };
  return sealEnvelope(COMMAND_DOMAIN, body, key);
}

/** Opens a result with the device key (fails the test if it does not verify) and reads its ledger record. */
function outcome(r: { ledger: Ledger }, payload: Buffer | undefined): { result: CommandResultBody; record: Record<string, unknown> } {
  assert.ok(payload, 'the handler answered');
  const { body: result, signer } = openEnvelope<CommandResultBody>(RESULT_DOMAIN, payload, [deviceKeys.vkey]);
  assert.equal(signer.name, 'fleet.example/bot-1');
  assert.equal(result.device, DEVICE);
  assert.equal(typeof result.record, 'number', `result names its record: ${JSON.stringify(result)}`);
  const record = JSON.parse(r.ledger.read(result.record!).toString('utf8')) as Record<string, unknown>;
  assert.equal(record.kind, 'command');
  assert.equal(record.seq, result.record);
  assert.equal(record.status, result.status);
  return { result, record };
}

test('a valid actuate command drives the GPIO output and is recorded, answered and signed', async () => {
  const r = await rig();
  try {
    assert.equal(r.gpio.get('sim', 3), 0);
    const payload = command(r.clock, { id: 'cmd-1' });
    const { result, record } = outcome(r, await r.handler.handle(payload));
    assert.equal(result.status, 'done');
    assert.equal(result.id, 'cmd-1');
    assert.equal(result.reason, undefined);
    assert.equal(r.gpio.get('sim', 3), 1, 'the brake was driven');
    const opLabel = operator.vkey.split('+').slice(0, 2).join('+');
    assert.equal(record.signer, opLabel);
    assert.deepEqual(record.command, { type: 'actuate', actuator: 'brake', value: 1 });
    assert.equal(record.id, 'cmd-1');
    // The runtime's own action record names the command as its origin.
    await r.recorder.flush();
    const records = Array.from({ length: r.ledger.size }, (_, i) => JSON.parse(r.ledger.read(i).toString('utf8')));
    assert.ok(records.some((x) => x.kind === 'action' && x.origin === 'command:cmd-1' && x.result === 'ok' && x.actuator === 'brake'), JSON.stringify(records));
    // The replay store remembers the id until the command expires.
    const state = JSON.parse(readFileSync(r.stateFile, 'utf8'));
    assert.equal(state.seen['cmd-1'], r.clock.now() + 60_000);
  } finally {
    await r.close();
  }
});

test('checkpoint, sync and rebirth run their actions; a failing action answers failed', async () => {
  const r = await rig();
  try {
    for (const type of ['checkpoint', 'sync', 'rebirth'] as const) {
      const { result } = outcome(r, await r.handler.handle(command(r.clock, { command: { type } })));
      assert.equal(result.status, 'done', type);
    }
    assert.deepEqual(r.calls, ['checkpoint', 'sync', 'rebirth']);
    assert.ok(r.ledger.latestCheckpoint(), 'a checkpoint was signed');
  } finally {
    await r.close();
  }
  const f = await rig({ actions: { checkpoint: async () => Promise.reject(new KeelError('KEEL_E_LEDGER_IO', 'disk on fire')) } });
  try {
    const { result, record } = outcome(f, await f.handler.handle(command(f.clock, { command: { type: 'checkpoint' } })));
    assert.equal(result.status, 'failed');
    assert.match(result.reason ?? '', /disk on fire/);
    assert.match(String(record.reason), /disk on fire/);
  } finally {
    await f.close();
  }
});

test('every bad command is rejected, recorded and answered; nothing throws and the output never moves', async () => {
  const r = await rig();
  try {
    const c = r.clock;
    const good = command(c, { id: 'replayed-1' });
    assert.equal(outcome(r, await r.handler.handle(good)).result.status, 'done');
    await r.rt.actuate('brake', 0, 'test reset');
    const tampered = JSON.parse(command(c, { id: 'tamper-1' }).toString('utf8'));
    tampered.body.command.value = 0.5;
    const unsignedBody = { v: 1, id: 'unsigned-1', device: DEVICE, issuedAt: c.now(), expiresAt: c.now() + 60_000, command: { type: 'actuate', actuator: 'brake', value: 1 } };
    const cases: { name: string; payload: Buffer; reason: RegExp; id?: string; verified: boolean }[] = [
      { name: 'unsigned', payload: Buffer.from(JSON.stringify(unsignedBody)), reason: /envelope must be/, verified: false },
      { name: 'unsigned (empty signature)', payload: Buffer.from(JSON.stringify({ body: unsignedBody, key: 'ops.alice+00000000', sig: '' })), reason: /not a trusted key/, id: 'unsigned-1', verified: false },
      { name: 'unknown signer', payload: command(c, { id: 'stranger-1' }, stranger.signing), reason: /ops\.mallory\+[0-9a-f]{8}, which is not a trusted key/, id: 'stranger-1', verified: false },
      { name: 'tampered', payload: Buffer.from(JSON.stringify(tampered)), reason: /does not verify/, id: 'tamper-1', verified: false },
      { name: 'not JSON', payload: Buffer.from('\x00\xffgarbage{'), reason: /not JSON/, verified: false },
      { name: 'empty', payload: Buffer.alloc(0), reason: /not JSON/, verified: false },
      { name: 'oversized', payload: Buffer.alloc(70 * 1024, 0x7b), reason: /exceeds 65536/, verified: false },
      { name: 'other target', payload: command(c, { id: 'other-1', device: 'bot-2' }), reason: /for device "bot-2", not "bot-1"/, id: 'other-1', verified: true },
      { name: 'expired', payload: command(c, { id: 'old-1', issuedAt: c.now() - 120_000, expiresAt: c.now() - 60_000 }), reason: /expired 60 s ago/, id: 'old-1', verified: true },
      { name: 'expires now', payload: command(c, { id: 'old-2', issuedAt: c.now() - 1000, expiresAt: c.now() }), reason: /expired/, id: 'old-2', verified: true },
      { name: 'issued in the future', payload: command(c, { id: 'future-1', issuedAt: c.now() + 3_600_000, expiresAt: c.now() + 3_660_000 }), reason: /issued 3600 s in the future/, id: 'future-1', verified: true },
      { name: 'lifetime too long', payload: command(c, { id: 'long-1', expiresAt: c.now() + MAX_COMMAND_LIFETIME_MS + 1 }), reason: /lifetime/, id: 'long-1', verified: true },
      { name: 'replayed', payload: good, reason: /already received \(replay\)/, id: 'replayed-1', verified: true },
      { name: 'unknown actuator', payload: command(c, { id: 'horn-1', command: { type: 'actuate', actuator: 'horn', value: 1 } }), reason: /no actuator named "horn"/, id: 'horn-1', verified: true },
      {
        name: 'malformed but signed',
        payload: sealEnvelope(COMMAND_DOMAIN, { v: 1, id: 'weird-1', device: DEVICE, issuedAt: c.now(), expiresAt: c.now() + 1000, command: { type: 'self-destruct' } }, operator.signing),
        reason: /unknown command type "self-destruct"/,
        id: 'weird-1',
        verified: true,
      },
      {
        name: 'actuate with a string value',
        payload: sealEnvelope(COMMAND_DOMAIN, { v: 1, id: 'str-1', device: DEVICE, issuedAt: c.now(), expiresAt: c.now() + 1000, command: { type: 'actuate', actuator: 'brake', value: '1' } }, operator.signing),
        reason: /finite number/,
        id: 'str-1',
        verified: true,
      },
    ];
    for (const k of cases) {
      let answer: Buffer | undefined;
      await assert.doesNotReject(async () => void (answer = await r.handler.handle(k.payload)), k.name);
      const { result, record } = outcome(r, answer);
      assert.equal(result.status, 'rejected', k.name);
      assert.match(result.reason ?? '', k.reason, `${k.name}: ${result.reason}`);
      assert.equal(result.id, k.id ?? '?', k.name);
      if (k.verified) assert.equal(record.signer, operator.vkey.split('+').slice(0, 2).join('+'), k.name);
      else {
        // An unverified payload is recorded by its digest, never its content.
        assert.equal(record.signer, undefined, k.name);
        assert.deepEqual(record.payload, { bytes: k.payload.length, sha256: createHash('sha256').update(k.payload).digest('hex') }, k.name);
        assert.ok(r.ledger.read(result.record!).length < 1024, `${k.name}: the record does not carry the payload`);
      }
    }
    assert.equal(r.gpio.get('sim', 3), 0, 'no rejected command moved the brake');
  } finally {
    await r.close();
  }
});

test('actuate while the safe state holds is rejected, recorded, and the output stays safe', async () => {
  const r = await rig();
  try {
    r.push.emit('fault', new DriverError('KEEL_E_SERIAL_IO', 'lidar unplugged'));
    await new Promise((res) => setImmediate(res));
    assert.equal(r.rt.health().status, 'safe');
    assert.equal(r.gpio.get('sim', 3), 1);
    const { result } = outcome(r, await r.handler.handle(command(r.clock, { command: { type: 'actuate', actuator: 'brake', value: 0 } })));
    assert.equal(result.status, 'rejected');
    assert.match(result.reason ?? '', /safe state holds/);
    assert.equal(r.gpio.get('sim', 3), 1, 'still at the safe level');
  } finally {
    await r.close();
  }
});

test('replay protection survives a restart of the handler, and expired ids are forgotten', async () => {
  const r = await rig();
  try {
    const payload = command(r.clock, { id: 'once-1' });
    assert.equal(outcome(r, await r.handler.handle(payload)).result.status, 'done');
    const restarted: CommandHandler = r.make();
    const again = outcome(r, await restarted.handle(payload));
    assert.equal(again.result.status, 'rejected');
    assert.match(again.result.reason ?? '', /replay/);
    // After expiry the id may go: the expiry check refuses the envelope by itself.
    r.clock.advance(61_000);
    const late = outcome(r, await restarted.handle(payload));
    assert.match(late.result.reason ?? '', /expired/);
    assert.equal(outcome(r, await restarted.handle(command(r.clock, { id: 'fresh-1', command: { type: 'sync' } }))).result.status, 'done');
    const state = JSON.parse(readFileSync(r.stateFile, 'utf8'));
    assert.deepEqual(Object.keys(state.seen), ['fresh-1'], 'expired ids are pruned');
  } finally {
    await r.close();
  }
});

test('the replay store is bounded without opening a replay hole', async () => {
  const r = await rig({ maxRemembered: 3 });
  try {
    const sent: Buffer[] = [];
    for (let i = 0; i < 5; i++) {
      // Later commands expire later, so the first ones are forgotten first.
      const p = command(r.clock, { id: `b-${i}`, expiresAt: r.clock.now() + 60_000 + i * 1000, command: { type: 'sync' } });
      sent.push(p);
      assert.equal(outcome(r, await r.handler.handle(p)).result.status, 'done');
    }
    const state = JSON.parse(readFileSync(r.stateFile, 'utf8'));
    assert.deepEqual(Object.keys(state.seen).sort(), ['b-2', 'b-3', 'b-4']);
    assert.equal(state.floor, r.clock.now() + 61_000);
    for (const p of sent) assert.equal(outcome(r, await r.handler.handle(p)).result.status, 'rejected');
    const early = outcome(r, await r.handler.handle(command(r.clock, { id: 'early-expiry', expiresAt: r.clock.now() + 30_000 })));
    assert.match(early.result.reason ?? '', /replay store overflow/);
  } finally {
    await r.close();
  }
});

test('a flood of unverifiable payloads is rate limited, and the next record counts what was suppressed', async () => {
  const r = await rig();
  try {
    let answered = 0;
    for (let i = 0; i < UNVERIFIED_BURST + 20; i++) if (await r.handler.handle(Buffer.from(`junk ${i}`))) answered++;
    assert.equal(answered, UNVERIFIED_BURST);
    await r.recorder.flush(); // the runtime's own start record, out of the count below
    const sizeBefore = r.ledger.size;
    // Verified commands are never rate limited.
    assert.equal(outcome(r, await r.handler.handle(command(r.clock, { command: { type: 'sync' } }))).result.status, 'done');
    r.clock.advance(5_000);
    const { record } = outcome(r, await r.handler.handle(Buffer.from('more junk')));
    assert.equal(record.suppressedBefore, 20);
    assert.equal(r.ledger.size, sizeBefore + 2);
  } finally {
    await r.close();
  }
});

test('concurrent commands are handled one at a time, in order', async () => {
  const r = await rig();
  try {
    const payloads = [0, 1, 0, 1, 1].map((v, i) => command(r.clock, { id: `c-${i}`, command: { type: 'actuate', actuator: 'brake', value: v } }));
    const answers = await Promise.all(payloads.map((p) => r.handler.handle(p)));
    const results = answers.map((a) => outcome(r, a).result);
    assert.deepEqual(
      results.map((x) => [x.id, x.status]),
      payloads.map((_, i) => [`c-${i}`, 'done']),
    );
    assert.deepEqual(
      results.map((x) => x.record),
      [...results.map((x) => x.record!)].sort((a, b) => a - b),
      'records in arrival order',
    );
    assert.equal(r.gpio.get('sim', 3), 1);
  } finally {
    await r.close();
  }
});

test('a damaged replay store refuses to start; bad options are named', async () => {
  const r = await rig();
  try {
    writeFileSync(r.stateFile, '{"v":1,"floor":0,"seen":{"x":"soon"}}');
    assert.throws(() => r.make(), (e: KeelError) => e.code === 'KEEL_E_SYNC' && /not a keel replay store/.test(e.message));
    writeFileSync(r.stateFile, '{"v":1,');
    assert.throws(() => r.make(), (e: KeelError) => e.code === 'KEEL_E_SYNC' && /unreadable/.test(e.message));
    const base = { device: DEVICE, key: deviceKeys.signing, operators: [operator.vkey], runtime: r.rt, recorder: r.recorder, clock: r.clock, stateFile: path.join(tmp, 'x.json'), actions: { checkpoint: async () => {}, sync: () => {}, rebirth: () => {} } };
    assert.throws(() => createCommandHandler({ ...base, device: 'a/b' }), RangeError);
    assert.throws(() => createCommandHandler({ ...base, operators: [operator.vkey.replace(/\+([A-Za-z0-9/+=]+)$/, (_m, k: string) => `+${Buffer.concat([Buffer.of(4), Buffer.from(k, 'base64').subarray(1)]).toString('base64')}`)] }));
    assert.throws(() => createCommandHandler({ ...base, actions: { ...base.actions, rebirth: undefined as unknown as () => void } }), /actions\.rebirth/);
    assert.ok(!existsSync(path.join(tmp, 'x.json')), 'nothing written by a refused construction');
  } finally {
    await r.close();
  }
});

test('when the ledger cannot append, the command is still answered and its record waits in the recorder', async () => {
  const r = await rig();
  try {
    const added: unknown[] = [];
    const failing = {
      ledger: { append: async () => Promise.reject(new KeelError('KEEL_E_LEDGER_FULL', 'disk full', { retryable: true })) },
      add: (kind: string, body: Record<string, unknown>) => void added.push({ kind, body }),
    };
    const h = createCommandHandler({ device: DEVICE, key: deviceKeys.signing, operators: [operator.vkey], runtime: r.rt, recorder: failing, clock: r.clock, stateFile: path.join(tmp, 'failing.json'), actions: { checkpoint: async () => {}, sync: () => {}, rebirth: () => {} } });
    const answer = await h.handle(command(r.clock, { id: 'nf-1', command: { type: 'rebirth' } }));
    const { body } = openEnvelope<CommandResultBody>(RESULT_DOMAIN, answer!, [deviceKeys.vkey]);
    assert.equal(body.status, 'done');
    assert.equal(body.record, undefined);
    assert.equal(added.length, 1);
    assert.equal((added[0] as { kind: string }).kind, 'command');
  } finally {
    await r.close();
  }
});

test('a replay store that cannot be written refuses the command rather than run it unremembered', async () => {
  const r = await rig({ stateFile: path.join(tmp, 'no-such-dir', 'commands.json') });
  try {
    const { result } = outcome(r, await r.handler.handle(command(r.clock, { id: 'unpersisted-1' })));
    assert.equal(result.status, 'rejected');
    assert.match(result.reason ?? '', /cannot persist the replay store \(ENOENT/);
    assert.equal(r.gpio.get('sim', 3), 0, 'not run');
  } finally {
    await r.close();
  }
});
