/**
 * Fixtures for the device-sync tests: a real aedes broker on an ephemeral port (no auth) that
 * can be killed and restarted on the same port, a device ledger in a temp dir, and a minimal
 * fake fleet that verifies and acknowledges batches the way docs/fleet.md says (device
 * signature, records hashing to the checkpoint root, in order), with switches to misbehave.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import type { Clock } from '../../runtime/clock.ts';
import { defaultEd25519, type DeviceKey } from '../../runtime/ledger/keys.ts';
import { Ledger } from '../../runtime/ledger/ledger.ts';
import { leafHash } from '../../runtime/ledger/hash.ts';
import { MemoryTree, rootAt } from '../../runtime/ledger/merkle.ts';
import { cosign, formatCheckpoint, noteVerifier, openCheckpoint, signNote, noteSigner, verifierKey, SIGNATURE_TYPE_COSIGNATURE_V1 } from '../../runtime/ledger/note.ts';
import { SyncClient, type SyncClientOptions } from '../../runtime/sync/client.ts';
import { syncSettings } from '../../runtime/sync/config.ts';
import type { SyncConnector } from '../../runtime/sync/link.ts';
import { decodeBatch, deviceTopics, fleetStateTopic, parseDeviceTopic, type SigningKey } from '../../runtime/sync/wire.ts';
import type { SyncConfig } from '../../runtime/config/schema.ts';

export const silent = pino({ level: 'silent' });

/** A temp dir removed by the returned cleanup. */
export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `keel-sync-${tag}-`));
}

/** A fresh cosigner (fleet witness) key and its type-0x04 verifier key. */
export function fleetKey(name = 'keel-fleet'): SigningKey & { vkey: string } {
  const privateKey = new Uint8Array(randomBytes(32));
  return { name, privateKey, vkey: verifierKey(name, defaultEd25519.publicKey(privateKey), SIGNATURE_TYPE_COSIGNATURE_V1) };
}

/** A fresh device key named `name` (the ledger origin). */
export function deviceKey(name: string): DeviceKey & { name: string; vkey: string } {
  const privateKey = new Uint8Array(randomBytes(32));
  const publicKey = defaultEd25519.publicKey(privateKey);
  return { name, privateKey, publicKey, vkey: verifierKey(name, publicKey) };
}

/** Opens (or reopens) a device ledger; `maxBytes` small enough that pruning frees segments. */
export function openLedger(dir: string, key: DeviceKey & { name: string }, clock?: Clock, maxBytes = 1_048_576): Promise<Ledger> {
  return Ledger.open(dir, { key, origin: key.name, durability: 'batch', maxBytes, clock });
}

/** Appends `n` event records (about 120 bytes each); returns their exact bytes. */
export async function appendRecords(ledger: Ledger, n: number, tag = 'r'): Promise<void> {
  const inputs = Array.from({ length: n }, (_, i) => ({ kind: 'event' as const, body: { event: `${tag}${i}`, pad: 'x'.repeat(40) }, t: 1_700_000_000_000 + i }));
  for (let i = 0; i < inputs.length; i += 1000) await ledger.appendBatch(inputs.slice(i, i + 1000));
}

/** A real aedes broker on 127.0.0.1 that can be killed (every socket cut) and restarted on its port. */
export class TestBroker {
  port = 0;
  aedes?: Aedes;
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Starts on `port` (0: ephemeral, then kept for restarts). */
  async start(port = this.port): Promise<void> {
    const aedes = await Aedes.createBroker();
    const server = net.createServer((s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => undefined);
      aedes.handle(s);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.aedes = aedes;
    this.server = server;
  }

  /** Kills the broker: cuts every connection, stops listening, closes aedes. */
  async kill(): Promise<void> {
    const server = this.server;
    const aedes = this.aedes;
    this.server = undefined;
    this.aedes = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((r) => server.close(() => r()));
    if (aedes) await new Promise<void>((r) => aedes.close(() => r()));
  }

  /** Cuts one client's connection abruptly (the broker publishes its Will). */
  cutClient(clientId: string): boolean {
    const c = (this.aedes as unknown as { clients: Record<string, { conn: net.Socket }> } | undefined)?.clients?.[clientId];
    if (!c) return false;
    c.conn.destroy();
    return true;
  }
}

/** How the fake fleet answers a batch. */
export type FleetMode = 'ack' | 'silent' | 'bad-cosignature' | 'foreign-root' | 'duplicate';

/** What the fake fleet holds for one device. */
export interface FleetDevice {
  tree: MemoryTree;
  /** Record bytes by index (undefined for hash-only entries). */
  records: (Buffer | undefined)[];
  /** Every batch received, as [start, end). */
  batches: [number, number][];
  /** Entries received for indexes already held (redelivery). */
  redelivered: number;
  /** Problems found (a test asserts there are none). */
  problems: string[];
  /** The last ack published. */
  lastAck?: string;
}

/**
 * A fleet that only verifies and acknowledges: per device, checks the checkpoint signature by
 * the device's key, that the batch extends what it holds (in order), and that the leaves hash
 * to the checkpoint's root; then publishes the retained ack (the note plus a cosignature line).
 */
export class FakeFleet {
  mode: FleetMode = 'ack';
  /** Nack the next batch starting at one of these indexes (once each). */
  readonly nackAt = new Set<number>();
  readonly devices = new Map<string, FleetDevice>();
  client?: MqttClient;
  private readonly vkeys: Map<string, string>;

  constructor(
    readonly url: string,
    readonly key: SigningKey & { vkey: string },
    devices: Record<string, string>,
    readonly prefix = 'keel',
  ) {
    this.vkeys = new Map(Object.entries(devices));
  }

  /** Connects (reconnecting by itself if the broker goes away) and announces `online` (retained). */
  async start(online = true): Promise<void> {
    const client = mqtt.connect(this.url, { clientId: `fake-fleet-${randomBytes(3).toString('hex')}`, protocolVersion: 4, reconnectPeriod: 50, connectTimeout: 2000 });
    this.client = client;
    client.on('error', () => undefined);
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    client.on('connect', () => {
      client.subscribe(`${this.prefix}/+/log`, { qos: 1 });
      this.state(online);
    });
    await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  }

  /** Publishes the retained fleet state. */
  state(online: boolean): void {
    this.client?.publish(fleetStateTopic(this.prefix), JSON.stringify({ online, fleet: this.key.name, cosigner: this.key.vkey, t: Date.now() }), { qos: 1, retain: true });
  }

  device(id: string): FleetDevice {
    let d = this.devices.get(id);
    if (!d) this.devices.set(id, (d = { tree: new MemoryTree(), records: [], batches: [], redelivered: 0, problems: [] }));
    return d;
  }

  private onMessage(topic: string, payload: Buffer): void {
    const where = parseDeviceTopic(this.prefix, topic);
    if (!where || where.rest !== 'log') return;
    const vkey = this.vkeys.get(where.device);
    const d = this.device(where.device);
    let batch;
    let cp;
    try {
      batch = decodeBatch(payload);
      cp = openCheckpoint(batch.header.checkpoint, [noteVerifier(vkey!)]).checkpoint;
    } catch (err) {
      d.problems.push(`bad batch: ${(err as Error).message}`);
      return;
    }
    const { start, count } = batch.header;
    const end = start + count;
    d.batches.push([start, end]);
    if (cp.size !== end) d.problems.push(`checkpoint size ${cp.size} != ${end}`);
    const topics = deviceTopics(this.prefix, where.device);
    if (this.nackAt.has(start)) {
      this.nackAt.delete(start);
      this.client!.publish(topics.nack, JSON.stringify({ start, end, code: 'KEEL_E_WIRE', reason: 'test nack' }), { qos: 1 });
      return;
    }
    const held = d.tree.size;
    if (start > held) return; // out of order: no ack, the device resends
    for (let i = start; i < end; i++) {
      const e = batch.entries[i - start];
      const h = e.kind === 'record' ? leafHash(e.bytes) : Buffer.from(e.hash);
      if (i < held) {
        d.redelivered++;
        if (!h.equals(d.tree.node(0, i))) d.problems.push(`index ${i} redelivered with other bytes`);
        continue;
      }
      d.tree.appendLeafHash(h);
      d.records[i] = e.kind === 'record' ? Buffer.from(e.bytes) : undefined;
    }
    if (end > held && !rootAt(end, d.tree).equals(cp.root)) d.problems.push(`root of ${end} leaves != checkpoint root`);
    if (this.mode === 'silent') return;
    const note = batch.header.checkpoint;
    let ack: string;
    if (this.mode === 'bad-cosignature') {
      // Cosigned under the fleet's name by another key: the key ID differs, the line is unknown.
      const impostor = fleetKey(this.key.name);
      ack = note + cosign(cpText(note), impostor, Math.floor(Date.now() / 1000));
    } else if (this.mode === 'foreign-root') {
      // A checkpoint of the device's origin and size but another tree, genuinely cosigned.
      const text = formatCheckpoint({ origin: cp.origin, size: cp.size, root: randomBytes(32) });
      const other = signNote(text, [noteSigner(cp.origin, randomBytes(32))]);
      ack = other + cosign(text, this.key, Math.floor(Date.now() / 1000));
    } else {
      ack = note + cosign(cpText(note), this.key, Math.floor(Date.now() / 1000));
    }
    this.client!.publish(topics.ack, ack, { qos: 1, retain: true });
    if (this.mode === 'duplicate') {
      this.client!.publish(topics.ack, ack, { qos: 1, retain: true });
      // And an old one again, as a redelivered ack would be.
      if (d.lastAck) this.client!.publish(topics.ack, d.lastAck, { qos: 1, retain: false });
    }
    d.lastAck = ack;
  }

  async stop(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (c) await new Promise<void>((r) => c.end(true, {}, () => r()));
  }
}

function cpText(note: string): string {
  return note.slice(0, note.indexOf('\n\n') + 1);
}

/** Sync settings for tests: fast timeouts and backoff, small batches, no rate limit to speak of. */
export function testSettings(broker: string, fleet: string, o: Partial<SyncConfig> = {}): SyncConfig {
  return syncSettings({
    broker,
    fleet,
    batchRecords: 100,
    maxInFlight: 3,
    ackTimeoutMs: 1000,
    rateRecordsPerS: 10_000_000,
    rateBytesPerS: 1_000_000_000,
    reconnect: { initialMs: 20, maxMs: 200, jitter: 0.5 },
    ...o,
  });
}

/** Opens a SyncClient for device `device` on `ledger`. */
export function openClient(o: { device: string; ledger: Ledger; key: DeviceKey & { name: string }; fleet: { vkey: string; name: string }; settings: SyncConfig; clock: Clock; connector?: SyncConnector } & Partial<SyncClientOptions>): Promise<SyncClient> {
  return SyncClient.open({
    audience: o.fleet.name,
    fleetKey: o.fleet.vkey,
    logger: silent,
    pollMs: 50,
    pruneEveryMs: 50,
    ...o,
    key: { name: o.key.name, privateKey: o.key.privateKey },
  });
}

/** Resolves when `cond()` holds (polling), rejecting after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 8000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Sleeps `ms` of real time. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
