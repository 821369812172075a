/**
 * What the end-to-end fleet tests share: free ports, `keel` commands that must succeed,
 * device configs built from the shipped obstacle example at a high rate, a Mosquitto broker
 * the test starts and kills itself, scraping a device's /metrics, and the final count (every
 * record a device made is in the fleet database once, byte for byte, and verifies).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { connectAsync } from 'mqtt';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { keel, portableCopy, type KeelOptions, type KeelProcess } from '../cli/keel-process.ts';
import { waitFor } from '../helpers.ts';

/** A port nothing listens on now (bound once on 127.0.0.1, then released). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** Runs `keel <args>`, asserts exit 0, returns stdout. */
export async function keelOk(args: string[], o: KeelOptions = {}): Promise<string> {
  const r = await keel(args, { timeoutMs: 60_000, ...o });
  assert.equal(r.code, 0, `keel ${args.join(' ')} exited ${r.code ?? r.signal}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** `keel keygen` for each name (in parallel); returns each device's verifier key (keygen prints it). */
export async function keygen(dir: string, names: string[]): Promise<Record<string, string>> {
  const out = await Promise.all(names.map((n) => keelOk(['keygen', '--out', path.join(dir, `${n}.key`), '--name', n])));
  return Object.fromEntries(names.map((n, i) => [n, out[i].trim().split('\n').pop()!.trim()]));
}

/** Sync settings of a test device (the config's `sync` section, without broker and fleet). */
export interface DeviceSync {
  ackTimeoutMs?: number;
  batchRecords?: number;
  maxInFlight?: number;
  pruneDelivered?: boolean;
}

/**
 * A `keel run` config for device `name` in `dir`: the shipped obstacle example at 200 scans/s
 * (about 400 records/s: an inference receipt per scan plus decisions and actions), its ledger
 * in `<dir>/<name>` signed by `<dir>/<name>.key`, syncing to `broker`. /metrics on a free port.
 * Returns the path of the config file (in a new folder under `dir`).
 */
export function deviceConfig(o: { dir: string; name: string; broker: string; fleet: string; sync?: DeviceSync }): string {
  return portableCopy('examples/obstacle.yaml', mkdtempSync(path.join(o.dir, `${o.name}-config-`)), 0, (c) => {
    c.device = { name: o.name };
    c.sources[0].rateHz = 200;
    // A loaded 2-core machine runs several of these at once: no watchdog trips on a hiccup.
    c.pipelines[0].watchdog = { silenceMs: 3000, overrunMs: 500 };
    c.safety.silenceMs = 3000;
    c.ledger = { dir: path.join(o.dir, o.name), key: path.join(o.dir, `${o.name}.key`), durability: 'batch', flushMs: 50, checkpointEveryMs: 1000 };
    c.sync = {
      broker: o.broker,
      fleet: o.fleet,
      ackTimeoutMs: o.sync?.ackTimeoutMs ?? 2000,
      batchRecords: o.sync?.batchRecords ?? 500,
      maxInFlight: o.sync?.maxInFlight ?? 4,
      pruneDelivered: o.sync?.pruneDelivered ?? true,
      reconnect: { initialMs: 100, maxMs: 1000 },
    };
  });
}

/** Verified size per device, read from the fleet database (device_state). */
export function verifiedSizes(db: Database.Database): Record<string, number> {
  const rows = db.prepare('SELECT device, size FROM device_state').all() as { device: string; size: number }[];
  return Object.fromEntries(rows.map((r) => [r.device, r.size]));
}

/** One value of a Prometheus text exposition (first sample of `name`), or undefined. */
export function metricValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/** GET http://<address>/metrics (text), or undefined when it cannot be read. */
export function scrape(address: string, timeoutMs = 2000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = http.get(`http://${address}/metrics`, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 ? body : undefined));
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

/** A running device's /metrics address (host:port), from its "ops endpoint listening" log line. */
export async function opsAddress(run: KeelProcess): Promise<string> {
  const line = (await run.waitForLog('ops endpoint listening', 60_000)) as { address?: string };
  assert.ok(typeof line.address === 'string', `ops address in ${JSON.stringify(line)}`);
  return line.address;
}

/** Records a running device holds (delivered + backlog, from its /metrics), or undefined. */
export async function heldRecords(address: string): Promise<number | undefined> {
  const text = await scrape(address);
  const d = text ? metricValue(text, 'keel_sync_delivered_records') : undefined;
  const b = text ? metricValue(text, 'keel_sync_backlog_records') : undefined;
  return d === undefined || b === undefined ? undefined : d + b;
}

/**
 * Waits until the fleet has verified every record the device held when this was called
 * (`verified()` reads the fleet database): the backlog of an outage has drained.
 */
export async function drained(address: string, verified: () => number, what: string, timeoutMs = 40_000): Promise<number> {
  let target: number | undefined;
  await waitFor(async () => (target = await heldRecords(address)) !== undefined, `${what}: the device's /metrics`, 10_000, 100);
  await waitFor(() => verified() >= target!, `${what}: the fleet to verify the ${target} records the device held`, timeoutMs, 100);
  return target!;
}

/** A Mosquitto broker run by the test: generated config, 127.0.0.1 only, anonymous access. */
export class Mosquitto {
  proc!: ChildProcess;
  stderr = '';
  /** Settles when the current process exits. */
  exited!: Promise<void>;

  private constructor(
    private readonly conf: string,
    /** The port it listens on (the same across restarts). */
    readonly port: number,
  ) {}

  /**
   * Writes `<dir>/mosquitto.conf` and starts `mosquitto -c` on a free port. `max_queued_messages`
   * stays at its default (1000, and Mosquitto drops silently past it): delivery must be decided by
   * the fleet's acks, never by broker queues.
   */
  static async start(dir: string): Promise<Mosquitto> {
    const port = await freePort();
    const conf = path.join(dir, 'mosquitto.conf');
    writeFileSync(conf, [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'log_dest stderr', 'log_type error', 'log_type warning', ''].join('\n'));
    const m = new Mosquitto(conf, port);
    await m.restart();
    return m;
  }

  /** mqtt://127.0.0.1:<port>. */
  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Whether the broker process runs. */
  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** (Re)starts the broker on the same port; resolves once it accepts MQTT connections. */
  async restart(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const proc = spawn('mosquitto', ['-c', this.conf], { stdio: ['ignore', 'ignore', 'pipe'] });
      this.proc = proc;
      this.exited = new Promise((r) => proc.once('close', () => r()));
      proc.once('error', (err) => (this.stderr += `\n[spawn mosquitto: ${err.message}]`));
      proc.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
      for (;;) {
        try {
          const c = await connectAsync(this.url, { reconnectPeriod: 0, connectTimeout: 1000, protocolVersion: 4 });
          await c.endAsync(true);
          return;
        } catch {
          if (proc.exitCode !== null || proc.signalCode !== null) break; // e.g. the port is not free yet: start again
          if (Date.now() > deadline) {
            proc.kill('SIGKILL');
            throw new Error(`mosquitto did not start on port ${this.port}:\n${this.stderr}`);
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      if (Date.now() > deadline) throw new Error(`mosquitto did not start on port ${this.port}:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Sends `sig` and waits for the process to go. */
  async kill(sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.proc.kill(sig);
    await this.exited;
  }
}

/** What the final count found for one device. */
export interface DeviceTally {
  /** Rows in the fleet database (indexes 0..rows-1). */
  rows: number;
  /** `delivered` in the device's sync.json. */
  delivered: number;
  /** The device ledger's size. */
  size: number;
  /** Records compared byte for byte (those the device still holds). */
  compared: number;
}

/**
 * The final count for one device, after it stopped: the fleet holds exactly indexes 0..n-1
 * (no gaps, no duplicates: (device, idx) is the primary key), with bytes (nothing hash-only),
 * n >= the delivered size in sync.json, n <= the ledger size; every record the device still
 * holds equals the fleet's copy; and every record not delivered was made at or after
 * `tailFrom` (ms since the epoch): only the shutdown tail is left.
 */
export async function tallyDevice(db: Database.Database, device: string, ledgerDir: string, tailFrom: number): Promise<DeviceTally> {
  const delivered = (JSON.parse(readFileSync(path.join(ledgerDir, 'sync.json'), 'utf8')) as { delivered: number }).delivered;
  const row = db.prepare('SELECT count(*) AS n, min(idx) AS lo, max(idx) AS hi, sum(bytes IS NULL) AS hashOnly FROM records WHERE device = ?').get(device) as { n: number; lo: number; hi: number; hashOnly: number };
  assert.ok(row.n > 0, `${device}: the fleet holds no record`);
  assert.equal(row.lo, 0, `${device}: the first stored index is 0`);
  assert.equal(row.hi, row.n - 1, `${device}: ${row.n} rows are exactly indexes 0..${row.n - 1} (no gaps, no duplicates)`);
  assert.equal(row.hashOnly, 0, `${device}: no hash-only rows (nothing was dropped on the device)`);
  assert.ok(row.n >= delivered, `${device}: the fleet holds ${row.n} records, the device counts ${delivered} delivered`);
  const ledger = await Ledger.open(ledgerDir, { readOnly: true });
  try {
    const size = ledger.size;
    assert.ok(row.n <= size, `${device}: the fleet holds ${row.n} records, more than the device's ${size}`);
    // Byte for byte, everything both sides still hold.
    const get = db.prepare('SELECT idx, bytes FROM records WHERE device = ? AND idx >= ? ORDER BY idx');
    let compared = 0;
    for (const r of get.iterate(device, ledger.firstAvailable) as Iterable<{ idx: number; bytes: Buffer }>) {
      assert.ok(r.bytes.equals(ledger.read(r.idx)), `${device}: record ${r.idx} differs between the device and the fleet`);
      compared++;
    }
    // What was not delivered is only what the device made while stopping.
    for (let i = Math.max(delivered, ledger.firstAvailable); i < size; i++) {
      const t = (JSON.parse(ledger.read(i).toString('utf8')) as { t: number }).t;
      assert.ok(t >= tailFrom, `${device}: record ${i} (t=${new Date(t).toISOString()}) was made ${tailFrom - t} ms before the shutdown began and is still not delivered (delivered ${delivered}, size ${size})`);
    }
    return { rows: row.n, delivered, size, compared };
  } finally {
    await ledger.close();
  }
}
