/**
 * Ingest against a real Mosquitto started by the test: two `fleet/ingest-main.ts` worker
 * processes share a `$share/workers/keel/+/log` subscription and one state directory; three
 * devices publish their ledgers (with duplicates); every record must end up in the fleet
 * database exactly once, verified, and both workers must have taken part.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectAsync, type MqttClient } from 'mqtt';
import { generateKeyFile } from '../../runtime/ledger/keys.ts';
import { openFleetDb } from '../../fleet/db.ts';
import { requireTool, waitFor } from '../helpers.ts';
import { appendRecords, enroll, makeBatch, makeDevice, storedRows, tempDir, type TestDevice } from './ingest-fixtures.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Starts mosquitto on a free port; resolves once it accepts MQTT connections. */
async function startMosquitto(dir: string): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'max_queued_messages 100000', 'log_dest stderr', 'log_type error', ''].join('\n'));
  const proc = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const url = `mqtt://127.0.0.1:${port}`;
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      const c = await connectAsync(url, { reconnectPeriod: 0, connectTimeout: 500 });
      await c.endAsync(true);
      return { url, proc };
    } catch (err) {
      if (Date.now() > deadline || proc.exitCode !== null) {
        proc.kill('SIGKILL');
        throw new Error(`mosquitto did not start: ${(err as Error).message}; ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

interface Worker {
  proc: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

function startWorker(url: string, state: string): Worker {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'fleet/ingest-main.ts', '--broker', url, '--state', state, '--share', 'workers', '--log-level', 'info'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let buf = '';
  proc.stdout!.on('data', (d) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
  });
  proc.stderr!.on('data', (d) => lines.push(`stderr: ${d}`));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return { proc, lines, exited };
}

test('two ingest workers on a Mosquitto $share subscription neither duplicate nor lose records', { timeout: 60_000 }, async (t) => {
  if (!requireTool(t, 'mosquitto', 'apt-get install mosquitto mosquitto-clients')) return;
  const { dir, cleanup } = tempDir('mosq');
  const state = path.join(dir, 'state');
  fs.mkdirSync(state);
  const children: ChildProcess[] = [];
  const devices: TestDevice[] = [];
  const clients: MqttClient[] = [];
  const db = openFleetDb(path.join(state, 'fleet.db'));
  try {
    generateKeyFile(path.join(state, 'fleet.key'), { name: 'keel-fleet' });
    const PER_DEVICE = 3000;
    const BATCH = 100;
    for (const id of ['dev-a', 'dev-b', 'dev-c']) {
      const d = await makeDevice(dir, id);
      await appendRecords(d, PER_DEVICE);
      enroll(db, d.id, d.vkey);
      devices.push(d);
    }
    const mosq = await startMosquitto(dir);
    children.push(mosq.proc);
    const workers = [startWorker(mosq.url, state), startWorker(mosq.url, state)];
    children.push(...workers.map((w) => w.proc));
    await waitFor(() => workers.every((w) => w.lines.some((l) => l.includes('"ingest running"'))), `both workers running (${workers.map((w) => w.lines.join('\n')).join('\n---\n')})`, 20_000, 50);

    // Each device: its own client; acks tracked by size.
    const acked = new Map<string, number>();
    const batches = new Map<string, Buffer[]>();
    for (const d of devices) {
      const list: Buffer[] = [];
      for (let s = 0; s < PER_DEVICE; s += BATCH) list.push(await makeBatch(d, s, s + BATCH));
      batches.set(d.id, list);
      const c = await connectAsync(mosq.url, { clientId: d.id, protocolVersion: 4, reconnectPeriod: 0 });
      c.on('message', (_topic, p) => acked.set(d.id, Math.max(acked.get(d.id) ?? 0, Number(p.toString().split('\n')[1]))));
      await c.subscribeAsync(`keel/${d.id}/ack`, { qos: 1 });
      clients.push(c);
    }
    // Publish everything (every fifth batch twice), devices interleaved.
    const pubs: Promise<unknown>[] = [];
    for (let k = 0; k < PER_DEVICE / BATCH; k++) {
      devices.forEach((d, i) => {
        const b = batches.get(d.id)![k];
        pubs.push(clients[i].publishAsync(`keel/${d.id}/log`, b, { qos: 1 }));
        if (k % 5 === 0) pubs.push(clients[i].publishAsync(`keel/${d.id}/log`, b, { qos: 1 }));
      });
    }
    await Promise.all(pubs);
    // Like a device: if acks stall, go back to the acked size and resend (go-back-N).
    const deadline = Date.now() + 30_000;
    while (devices.some((d) => (acked.get(d.id) ?? 0) < PER_DEVICE)) {
      const before = devices.map((d) => acked.get(d.id) ?? 0);
      await new Promise((r) => setTimeout(r, 2000));
      if (Date.now() > deadline) break;
      devices.forEach((d, i) => {
        const a = acked.get(d.id) ?? 0;
        if (a < PER_DEVICE && a === before[i]) for (let s = a; s < PER_DEVICE; s += BATCH) void clients[i].publishAsync(`keel/${d.id}/log`, batches.get(d.id)![s / BATCH], { qos: 1 });
      });
    }
    for (const d of devices) assert.equal(acked.get(d.id), PER_DEVICE, `${d.id} acked to the end`);

    // Stop the workers and read their final counters.
    for (const w of workers) w.proc.kill('SIGTERM');
    const codes = await Promise.all(workers.map((w) => w.exited));
    assert.deepEqual(codes, [0, 0], workers.map((w) => w.lines.slice(-5).join('\n')).join('\n---\n'));
    const stats = workers.map((w) => {
      const line = w.lines.find((l) => l.includes('"ingest stopped"'));
      assert.ok(line, `a final stats line: ${w.lines.slice(-5).join('\n')}`);
      return (JSON.parse(line) as { stats: { batches: number; records: number; nacks: number; forks: number } }).stats;
    });
    t.diagnostic(`worker counters: ${JSON.stringify(stats)}`);
    assert.ok(stats.every((s) => s.batches > 0), `both workers took batches: ${JSON.stringify(stats)}`);
    assert.equal(stats[0].records + stats[1].records, PER_DEVICE * devices.length, 'every record stored exactly once across the workers');
    assert.equal(stats[0].nacks + stats[1].nacks, 0);

    for (const d of devices) {
      const rows = storedRows(db, d.id);
      assert.equal(rows.length, PER_DEVICE);
      rows.forEach((r, i) => {
        assert.equal(r.idx, i);
        assert.ok(r.bytes!.equals(d.ledger.read(i)), `${d.id} record ${i}`);
      });
      const st = db.prepare('SELECT size FROM device_state WHERE device = ?').pluck().get(d.id);
      assert.equal(st, PER_DEVICE);
    }
  } finally {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of devices) await d.ledger.close();
    db.close();
    cleanup();
  }
});
