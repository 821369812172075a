/**
 * Child process of the sync benchmark: an aedes broker (ephemeral TCP port) and, in the same
 * process as `keel fleet serve` runs them, a fleet that only acknowledges: for each batch on
 * `<prefix>/+/log` it reads the batch header, cosigns its checkpoint with a witness key and
 * publishes the ack (retained). It stores and verifies nothing (ingest's cost is measured by
 * the fleet's own benchmarks); this isolates the device side of the drain protocol.
 * It also counts what arrives on `bench/raw` (the raw publish baseline), and answers
 * `bench/expect` {count} with `bench/done` once that many raw messages arrived.
 *
 * Prints one JSON line {"port","fleetVkey"} when ready; exits when stdin closes.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { defaultEd25519 } from '../runtime/ledger/keys.ts';
import { cosign, verifierKey, SIGNATURE_TYPE_COSIGNATURE_V1 } from '../runtime/ledger/note.ts';
import { BATCH_MAGIC, parseDeviceTopic } from '../runtime/sync/wire.ts';

const prefix = 'keel';
const aedes = await Aedes.createBroker();
const server = net.createServer(aedes.handle);
await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
const port = (server.address() as net.AddressInfo).port;
const key = { name: 'bench-fleet', privateKey: new Uint8Array(randomBytes(32)) };
const fleetVkey = verifierKey(key.name, defaultEd25519.publicKey(key.privateKey), SIGNATURE_TYPE_COSIGNATURE_V1);

const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { clientId: 'bench-fleet', protocolVersion: 4, reconnectPeriod: 0 });
client.on('error', (err) => {
  console.error(`fleet client: ${err.message}`);
  process.exit(1);
});
await new Promise<void>((r) => client.once('connect', () => r()));
await client.subscribeAsync({ [`${prefix}/+/log`]: { qos: 1 }, 'bench/raw': { qos: 1 }, 'bench/expect': { qos: 1 } });

let expect = -1;
let raw = 0;
client.on('message', (topic, payload) => {
  if (topic === 'bench/raw') {
    raw++;
    if (raw === expect) client.publish('bench/done', JSON.stringify({ count: raw }), { qos: 1 });
    return;
  }
  if (topic === 'bench/expect') {
    expect = JSON.parse(payload.toString()).count;
    raw = 0;
    return;
  }
  const where = parseDeviceTopic(prefix, topic);
  if (!where) return;
  // Only the header is read (the fleet here acknowledges, it does not verify or store).
  const hlen = payload.readUInt32BE(4);
  if (!payload.subarray(0, 4).equals(BATCH_MAGIC) || 8 + hlen > payload.length) return;
  const note = (JSON.parse(payload.subarray(8, 8 + hlen).toString('utf8')) as { checkpoint: string }).checkpoint;
  const text = note.slice(0, note.indexOf('\n\n') + 1);
  client.publish(`${prefix}/${where.device}/ack`, note + cosign(text, key, Math.floor(Date.now() / 1000)), { qos: 1, retain: true });
});

process.stdout.write(`${JSON.stringify({ port, fleetVkey })}\n`);
process.stdin.resume();
process.stdin.on('end', () => {
  client.end(true);
  server.close();
  aedes.close(() => process.exit(0));
});
