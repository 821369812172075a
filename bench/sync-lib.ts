/**
 * Pieces the device-sync benchmarks share (bench/sync.bench.ts, bench/drain.bench.ts): a
 * backlog of inference-receipt-like records in a real ledger, the record-count flag, and the
 * raw mqtt.js QoS 1 publish loop every drain figure is compared with.
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Ledger } from '../runtime/ledger/ledger.ts';

/**
 * Records to drain: `--<flag>=<n>` on the command line, else the environment variable `env`,
 * else undefined (the benchmark's default).
 * @throws RangeError unless an integer >= 1000.
 */
export function recordsFlag(flag: string, env: string): number | undefined {
  const arg = process.argv.find((a) => a.startsWith(`--${flag}=`))?.split('=')[1] ?? process.env[env];
  if (arg === undefined) return undefined;
  const n = Number(arg);
  if (!Number.isSafeInteger(n) || n < 1000) throw new RangeError(`--${flag} (or ${env}) must be an integer >= 1000, got ${arg}`);
  return n;
}

/** Appends `n` inference-receipt-like records (~340 bytes of JCS each) in batches of 10,000. */
export async function fillLedger(ledger: Ledger, n: number): Promise<void> {
  const batch = 10_000;
  for (let i = 0; i < n; i += batch) {
    const inputs = Array.from({ length: Math.min(batch, n - i) }, (_, k) => ({
      kind: 'inference' as const,
      body: {
        pipeline: 'obstacle',
        model: { sha256: '5f'.repeat(32) },
        inputs: { scan: { dtype: 'float32', shape: [1, 32], sha256: (i + k).toString(16).padStart(64, '0') } },
        outputs: { probs: [0.91, 0.07, 0.02] },
        ms: 0.112,
      },
      t: 1_700_000_000_000 + (i + k) * 100,
    }));
    await ledger.appendBatch(inputs);
  }
}

/** An mqtt.js client (MQTT 3.1.1, no reconnects), resolved once connected. */
export function connectRaw(url: string, o: Partial<IClientOptions> = {}): Promise<MqttClient> {
  const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, clientId: `bench-raw-${randomBytes(3).toString('hex')}`, ...o });
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

/**
 * The raw limit: one mqtt.js client publishing payloads of `sizes` bytes on `topic` at QoS 1,
 * all at once (mqtt.js's own flow control only), timed until every PUBACK arrived and, when
 * `done` is given, until it resolves too (a subscriber has them all). Returns ms.
 */
export async function rawPublishLoop(pub: MqttClient, topic: string, sizes: readonly number[], done?: () => Promise<void>): Promise<number> {
  const payloads = sizes.map((s) => randomBytes(s));
  const t0 = performance.now();
  const received = done?.();
  await Promise.all(payloads.map((p) => pub.publishAsync(topic, p, { qos: 1 })));
  await received;
  return performance.now() - t0;
}
