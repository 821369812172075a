/**
 * The fleet on a standard broker, every part a separate process, as a new user runs it: a
 * Mosquitto the test starts itself (default max_queued_messages: broker queues drop silently,
 * so only the fleet's acks may decide what is delivered), two `keel fleet ingest` workers
 * sharing a `$share/workers` subscription on one state directory, two devices under
 * `keel run` logging at a high rate, and MQTT clients we did not write: `mosquitto_sub`
 * watching the retained births and the acks (each ack must be a signed note whose
 * cosignature verifies with the fleet's key), `mosquitto_pub` throwing garbage at a device's
 * /log topic. Then one ingest worker is killed, and Mosquitto is killed (SIGKILL) mid-sync
 * and restarted on the same port. At the end every record each device made is in the fleet
 * database once, byte for byte, and `keel fleet verify` passes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { noteVerifier, openCheckpoint, splitNote, SIGNATURE_TYPE_COSIGNATURE_V1, SIGNATURE_TYPE_ED25519, verifyCosignature } from '../../runtime/ledger/note.ts';
import { killAll, startKeel, type KeelProcess } from '../cli/keel-process.ts';
import { requireTool, waitFor } from '../helpers.ts';
import { deviceConfig, drained, keelOk, keygen, Mosquitto, opsAddress, tallyDevice, verifiedSizes } from './fleet-rig.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-e2e-mosq-'));
let mosquitto: Mosquitto | undefined;
const foreign: ChildProcess[] = [];
let db: Database.Database | undefined;
after(async () => {
  await killAll();
  for (const c of foreign) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await mosquitto?.kill('SIGKILL');
  db?.close();
  rmSync(dir, { recursive: true, force: true });
});

const DEVICES = ['rover-1', 'rover-2'];
const ACK_TIMEOUT_MS = 2000;

/** One message as `mosquitto_sub -v` printed it: "<topic> <payload>\n" (payloads may span lines). */
interface SubMessage {
  topic: string;
  payload: string;
}

/**
 * Splits `mosquitto_sub -v` output into messages. A message starts at a line "<prefix>/<id>/<leaf> ";
 * a checkpoint note's lines (origin, size, base64 root, blank, "— " signatures) never look like
 * that, so multi-line acks come out whole.
 */
function subMessages(out: string): SubMessage[] {
  const msgs: SubMessage[] = [];
  const start = /^(keel\/[A-Za-z0-9._-]+\/(?:status|ack|nack)) (.*)$/;
  for (const line of out.split('\n')) {
    const m = start.exec(line);
    if (m) msgs.push({ topic: m[1], payload: m[2] });
    else if (msgs.length) msgs[msgs.length - 1].payload += `\n${line}`;
  }
  // -v ends every message with a newline; an ack note's own final newline leaves one blank line.
  return msgs.map((m) => ({ topic: m.topic, payload: m.topic.endsWith('/ack') ? `${m.payload.replace(/\n+$/, '')}\n` : m.payload.trimEnd() }));
}

function startWorker(state: string, url: string): KeelProcess {
  return startKeel(['fleet', 'ingest', '--broker', url, '--state', state, '--share', 'workers'], { timeoutMs: 170_000 });
}

test('Mosquitto, two ingest workers, two keel run devices, mosquitto_sub/pub; a worker and the broker killed mid-sync: every record in the fleet once, verified', { timeout: 180_000 }, async (t) => {
  for (const tool of ['mosquitto', 'mosquitto_sub', 'mosquitto_pub']) if (!requireTool(t, tool, 'apt-get install mosquitto mosquitto-clients')) return;
  const t0 = Date.now();
  const phase = (what: string) => t.diagnostic(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
  const state = path.join(dir, 'fleet');

  // The fleet state directory (fleet key, cosigner key, database) as a first `keel fleet serve`
  // makes it, and the device keys. Then, at once: the devices are enrolled, Mosquitto starts,
  // a foreign subscriber and two ingest workers connect.
  const [vkeys] = await Promise.all([keygen(dir, DEVICES), keelOk(['fleet', 'serve', '--state', state, '--port', '0', '--no-ingest', '--duration', '0.1'])]);
  const fleetVkey = readFileSync(path.join(state, 'fleet.vkey'), 'utf8').trim();
  mosquitto = await Mosquitto.start(dir);
  const port = String(mosquitto.port);
  const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', port, '-q', '1', '-v', '-t', 'keel/+/status', '-t', 'keel/+/ack', '-t', 'keel/+/nack'], { stdio: ['ignore', 'pipe', 'pipe'] });
  foreign.push(sub);
  let subOut = '';
  sub.once('error', (err) => (subOut += `\n[mosquitto_sub could not start: ${err.message}]\n`));
  sub.stdout!.setEncoding('utf8').on('data', (d: string) => (subOut += d));
  const workers = [startWorker(state, mosquitto.url), startWorker(state, mosquitto.url)];
  await Promise.all([...DEVICES.map((d) => keelOk(['fleet', 'enroll', vkeys[d], '--state', state])), ...workers.map((w) => w.waitForLog('ingest running', 60_000))]);
  phase(`devices enrolled; mosquitto on ${port}, two ingest workers running`);

  const runs: Record<string, KeelProcess> = {};
  for (const d of DEVICES) {
    const cfg = deviceConfig({ dir, name: d, broker: mosquitto.url, fleet: `@${path.join(state, 'fleet.vkey')}`, sync: { ackTimeoutMs: ACK_TIMEOUT_MS, batchRecords: 500 } });
    runs[d] = startKeel(['run', cfg], { timeoutMs: 170_000 });
  }
  const addresses = Object.fromEntries(await Promise.all(DEVICES.map(async (d) => [d, await opsAddress(runs[d])] as const)));
  db = new Database(path.join(state, 'fleet.db'), { readonly: true });
  const verified = () => verifiedSizes(db!);
  /** Waits until every device has more than `by` records verified past `from`. */
  const progress = async (from: Record<string, number>, by: number, what: string, ms = 40_000) => {
    await waitFor(() => {
      for (const d of DEVICES) if (!runs[d].running) throw new Error(`${d} exited`);
      const v = verified();
      return DEVICES.every((d) => (v[d] ?? 0) > (from[d] ?? 0) + by);
    }, `${what} (verified ${JSON.stringify(verified())}, from ${JSON.stringify(from)})`, ms, 100).catch((err: Error) => {
      const tails = [...DEVICES.map((d) => [d, runs[d]] as const), ...workers.map((w, i) => [`worker ${i}`, w] as const)].map(([n, p]) => `--- ${n}:\n${p.stdout.split('\n').slice(-12).join('\n')}\n${p.stderr.slice(-1500)}`);
      throw new Error(`${err.message}\n${tails.join('\n')}`);
    });
  };
  await progress({}, 300, 'both devices to have records verified');
  phase(`syncing: ${JSON.stringify(verified())}`);

  // Garbage on rover-1's /log from a client we did not write: refused (a nack, a rejects row),
  // and ingest goes on.
  const junk = path.join(dir, 'junk.bin');
  writeFileSync(junk, Buffer.concat([Buffer.from('KLB1'), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from('{"v":1,"device":"rover-1"')]));
  for (const payload of [['-m', 'this is not a ledger batch'], ['-f', junk]]) {
    const pub = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', port, '-q', '1', '-t', 'keel/rover-1/log', ...payload], { stdio: 'ignore' });
    foreign.push(pub);
    assert.equal(await new Promise((r) => (pub.once('close', r), pub.once('error', () => r('spawn failed')))), 0, 'mosquitto_pub exit code');
  }
  await waitFor(() => (db!.prepare("SELECT count(*) FROM rejects WHERE device = 'rover-1' AND code = 'KEEL_E_WIRE'").pluck().get() as number) >= 2, 'both garbage payloads refused and logged in rejects', 20_000, 100);
  let from = verified();
  await progress(from, 200, 'sync to go on after the garbage');
  phase(`garbage refused, sync goes on: ${JSON.stringify(verified())}`);

  // One ingest worker dies mid-sync (SIGKILL: its shared-subscription deliveries are lost, its
  // Will fires); the other one must carry on. A subtest: when it fails, the rest still runs
  // (the broker restart below heals a stalled fleet state).
  await t.test('an ingest worker killed mid-sync: the other one carries on', async () => {
    workers[0].signal('SIGKILL');
    await workers[0].exited;
    const killedAt = verified();
    await progress(killedAt, 400, 'sync to go on with one ingest worker', 12_000).catch((err: Error) => {
      const paused = DEVICES.filter((d) => runs[d].logs().filter((l) => typeof l.msg === 'string' && l.msg.startsWith('fleet ')).pop()?.msg === 'fleet offline: backlog paused');
      if (paused.length === 0) throw err;
      throw new Error(
        `${paused.join(', ')} paused their backlog: the killed worker's MQTT Will set keel/_fleet/state to offline (retained) although another worker is alive, ` +
          `and the survivor re-announces online only every stateEveryMs (30 s). Sync with one worker left stalls until then.\n${err.message}`,
      );
    });
    phase(`worker killed, sync goes on: ${JSON.stringify(verified())}`);
  });

  // The broker dies mid-sync (SIGKILL: no Wills, retained messages gone: persistence off) and
  // comes back on the same port; devices and the surviving worker reconnect by themselves.
  await mosquitto.kill('SIGKILL');
  const down = Date.now();
  await new Promise((r) => setTimeout(r, 2000));
  for (const d of DEVICES) assert.ok(runs[d].running, `${d} keeps running without a broker:\n${runs[d].stderr}`);
  assert.ok(workers[1].running, `the ingest worker keeps running without a broker:\n${workers[1].stderr}`);
  await mosquitto.restart();
  phase(`mosquitto restarted after ${Date.now() - down} ms`);
  from = verified();
  await progress(from, 400, 'sync to resume after the broker restart');
  phase(`sync resumed: ${JSON.stringify(verified())}`);

  // The outage's backlog drains; then stop the devices (SIGTERM: last acks awaited, ledger
  // flushed) and count.
  const held = await Promise.all(DEVICES.map((d) => drained(addresses[d], () => verified()[d] ?? 0, `${d} after the broker restart`)));
  phase(`drained: ${JSON.stringify(verified())}`);
  // A record older than one poll (1 s) plus the ack wait at stop went out in a batch whose
  // ack had time to come back: only younger ones may be left undelivered.
  const tailFrom = Date.now() - 1000 - ACK_TIMEOUT_MS;
  for (const d of DEVICES) runs[d].signal('SIGTERM');
  for (const d of DEVICES) {
    const r = await runs[d].exited;
    assert.equal(r.code, 0, `${d} exit ${r.code}\n${r.stderr.slice(-3000)}`);
  }
  for (const [i, d] of DEVICES.entries()) {
    const tally = await tallyDevice(db, d, path.join(dir, d), tailFrom);
    phase(`${d}: ${JSON.stringify(tally)}`);
    assert.ok(tally.delivered >= held[i], `${d}: delivered ${tally.delivered}, at least what it held after the outage (${held[i]})`);
  }
  const verifies = await Promise.all(DEVICES.map((d) => keelOk(['fleet', 'verify', d, '--state', state])));
  for (const v of verifies) assert.match(v, /^ok: /m);
  workers[1].signal('SIGTERM');
  const w = await workers[1].exited;
  assert.equal(w.code, 0, w.stderr);
  const stats = (workers[1].logs().find((l) => l.msg === 'ingest stopped') as { stats: { records: number; nacks: number; forks: number } }).stats;
  phase(`surviving worker: ${JSON.stringify(stats)}`);
  assert.equal(stats.forks, 0);

  // What the foreign subscriber saw. Births: retained, with bdSeq, a newer one after the broker
  // restart. Acks: signed notes carrying the device's signature and the fleet's cosignature,
  // which verify with the enrolled key and fleet.vkey; their roots are the device's own.
  sub.kill('SIGTERM');
  await new Promise((r) => (sub.exitCode !== null ? r(undefined) : sub.once('close', r)));
  const msgs = subMessages(subOut);
  for (const d of DEVICES) {
    const births = msgs.filter((m) => m.topic === `keel/${d}/status`).map((m) => JSON.parse(m.payload) as { online: boolean; device: string; bdSeq: number });
    const online = births.filter((b) => b.online);
    assert.ok(online.length >= 2, `${d}: births before and after the broker restart: ${JSON.stringify(births)}`);
    for (const b of births) assert.ok(b.device === d && Number.isSafeInteger(b.bdSeq) && b.bdSeq >= 1, JSON.stringify(b));
    assert.ok(online[online.length - 1].bdSeq > online[0].bdSeq, `${d}: a reconnect carries a higher bdSeq: ${online.map((b) => b.bdSeq)}`);
    const acks = msgs.filter((m) => m.topic === `keel/${d}/ack`).map((m) => m.payload);
    assert.ok(acks.length >= 5, `${d}: acks seen: ${acks.length}`);
    const ledger = await Ledger.open(path.join(dir, d), { readOnly: true });
    try {
      for (const note of acks) {
        const opened = openCheckpoint(note, [noteVerifier(vkeys[d]), noteVerifier(fleetVkey)]);
        assert.deepEqual(opened.note.verified.map((s) => s.type).sort(), [SIGNATURE_TYPE_ED25519, SIGNATURE_TYPE_COSIGNATURE_V1], `${d}: device signature and fleet cosignature`);
        const { text, signatures } = splitNote(note);
        assert.equal(verifyCosignature(text, signatures[signatures.length - 1].line, fleetVkey).name, 'keel-fleet');
        assert.ok(opened.checkpoint.root.equals(ledger.rootAt(opened.checkpoint.size)), `${d}: the acked root is the device's own at ${opened.checkpoint.size}`);
      }
    } finally {
      await ledger.close();
    }
  }
  // A subscriber arriving now gets the retained state at once: each device's offline status
  // (clean stop) with its last bdSeq, and the ack of exactly what the fleet holds.
  const late = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', port, '-v', '--retained-only', '-C', String(2 * DEVICES.length), '-W', '10', '-t', 'keel/+/status', '-t', 'keel/+/ack'], { stdio: ['ignore', 'pipe', 'ignore'] });
  foreign.push(late);
  let lateOut = '';
  late.stdout!.setEncoding('utf8').on('data', (d: string) => (lateOut += d));
  await new Promise((r) => (late.once('close', r), late.once('error', r)));
  const retained = subMessages(lateOut);
  const sizes = verified();
  for (const d of DEVICES) {
    const status = retained.find((m) => m.topic === `keel/${d}/status`);
    const ack = retained.find((m) => m.topic === `keel/${d}/ack`);
    assert.ok(status && ack, `${d}: retained status and ack: ${lateOut}`);
    const st = JSON.parse(status.payload) as { online: boolean; bdSeq: number };
    const seenSeqs = msgs.filter((m) => m.topic === `keel/${d}/status`).map((m) => (JSON.parse(m.payload) as { bdSeq: number }).bdSeq);
    assert.equal(st.online, false, `${d}: stopped cleanly, retained offline`);
    assert.equal(st.bdSeq, Math.max(...seenSeqs), `${d}: the retained status is the newest connection's`);
    assert.equal(openCheckpoint(ack.payload, [noteVerifier(fleetVkey)]).checkpoint.size, sizes[d], `${d}: the retained ack covers exactly what the fleet holds`);
  }
  const nacks = msgs.filter((m) => m.topic === 'keel/rover-1/nack').map((m) => JSON.parse(m.payload) as { start: unknown; code: string });
  assert.ok(nacks.filter((n) => n.code === 'KEEL_E_WIRE' && n.start === null).length >= 2, `the garbage was nacked: ${JSON.stringify(nacks)}`);
  phase(`mosquitto_sub saw ${msgs.length} messages`);
});
