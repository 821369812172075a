/**
 * Fixtures for the broker tests: a fleet database in a temp dir, device keys (random seeds),
 * a real broker on ephemeral ports, and real mqtt.js clients with their own timeouts
 * (mqtt.js can wait forever on a dropped link).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { defaultEd25519 } from '../../runtime/ledger/keys.ts';
import { verifierKey } from '../../runtime/ledger/note.ts';
import { mintToken, type SigningKey } from '../../runtime/sync/wire.ts';
import { openFleetDb, type FleetDb } from '../../fleet/db.ts';
import { startBroker, type BrokerOptions, type FleetBroker } from '../../fleet/broker.ts';

/** A fleet database in a fresh temp dir. */
export function tempFleet(tag: string): { dir: string; db: FleetDb; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `keel-${tag}-`));
  const db = openFleetDb(path.join(dir, 'fleet.db'));
  return {
    dir,
    db,
    cleanup: () => {
      db.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A device key: signing key plus its verifier key string. */
export interface TestKey extends SigningKey {
  publicKey: Uint8Array;
  vkey: string;
}

/** A fresh Ed25519 key named `name`. */
export function makeKey(name: string): TestKey {
  const privateKey = new Uint8Array(randomBytes(32));
  const publicKey = defaultEd25519.publicKey(privateKey);
  return { name, privateKey, publicKey, vkey: verifierKey(name, publicKey) };
}

/** A token for `device` signed by `key`, for fleet `audience` (default "keel-fleet"). */
export function token(device: string, key: SigningKey, o: { audience?: string; nowMs?: number; lifetimeS?: number } = {}): string {
  return mintToken({ device, audience: o.audience ?? 'keel-fleet', key, nowMs: o.nowMs ?? Date.now(), lifetimeS: o.lifetimeS });
}

/** Starts a broker on an ephemeral TCP port for `db` (fleet "keel-fleet", prefix "keel"). */
export function broker(db: FleetDb, o: Partial<BrokerOptions> = {}): Promise<FleetBroker> {
  return startBroker({ db, fleetName: 'keel-fleet', prefix: 'keel', tcp: { host: '127.0.0.1', port: 0 }, ...o });
}

const clients = new Set<MqttClient>();

/** Connects an mqtt.js client (no auto-reconnect, MQTT 3.1.1); rejects with the broker's refusal. */
export async function connect(url: string, o: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...o });
  clients.add(client);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no CONNACK from ${url} in 5 s`)), 5000);
      client.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      client.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      client.once('close', () => {
        clearTimeout(timer);
        reject(new Error('connection closed before CONNACK'));
      });
    });
  } catch (err) {
    client.end(true);
    clients.delete(client);
    throw err;
  }
  client.on('error', () => undefined);
  return client;
}

/** The CONNACK return code with which the broker refuses these credentials (fails if it accepts). */
export async function refusal(url: string, o: IClientOptions): Promise<number> {
  try {
    const c = await connect(url, o);
    c.end(true);
    throw new Error(`the broker accepted ${String(o.username)}`);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code !== 'number') throw err;
    return code;
  }
}

/** Publishes with QoS 1 and waits for PUBACK, or rejects within `ms` (close counts as failure). */
export function publishAck(client: MqttClient, topic: string, payload: string | Buffer, o: { retain?: boolean; ms?: number } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no PUBACK for ${topic} in ${o.ms ?? 3000} ms`)), o.ms ?? 3000);
    const onClose = () => {
      clearTimeout(timer);
      reject(new Error(`connection closed while publishing ${topic}`));
    };
    client.once('close', onClose);
    client.publish(topic, payload, { qos: 1, retain: o.retain ?? false }, (err) => {
      clearTimeout(timer);
      client.removeListener('close', onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

/** Subscribes (QoS 1) and returns the granted QoS per filter (128 = refused). */
export function subscribe(client: MqttClient, filters: string[]): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no SUBACK in 3 s')), 3000);
    client.subscribe(filters, { qos: 1 }, (err, granted) => {
      clearTimeout(timer);
      // mqtt.js reports any refused filter as an error carrying the SUBACK (return codes in order).
      const codes = (err as { packet?: { granted?: number[] } } | undefined)?.packet?.granted;
      if (err && codes) return resolve(codes.map(Number));
      if (err) return reject(err);
      resolve(filters.map((f) => granted?.find((g) => g.topic === f)?.qos ?? 128));
    });
  });
}

/** Resolves when the client's connection closes (or rejects after `ms`). */
export function closed(client: MqttClient, ms = 3000): Promise<void> {
  if (client.disconnected || !client.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`client still connected after ${ms} ms`)), ms);
    client.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Collects messages received by `client` (topic and payload as text). */
export function collect(client: MqttClient): { topic: string; payload: string; retain: boolean }[] {
  const got: { topic: string; payload: string; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), retain: packet.retain }));
  return got;
}

/** Ends every client the fixtures opened. */
export async function endAll(): Promise<void> {
  await Promise.all([...clients].map((c) => new Promise<void>((r) => c.end(true, {}, () => r()))));
  clients.clear();
}

/** Sleeps `ms` (for "nothing arrives" checks only). */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
