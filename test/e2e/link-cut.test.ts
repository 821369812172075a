/**
 * A device logging at a high rate to `keel fleet serve` through a TCP proxy that breaks the
 * link (test/e2e/link-proxy.ts), every part a separate process: the link is cut for seconds
 * under load, batches are duplicated and reordered on the wire while the backlog drains, the
 * link is blackholed (nothing forwarded, nothing closed) for longer than the ack timeout, and
 * the device is killed (SIGKILL) with batches in flight and started again on the same ledger.
 * Afterwards every record the device made is in the fleet database exactly once, byte for
 * byte, `keel fleet verify` passes, and the device never had more batches in flight than its
 * bound, checked at the wire by the proxy and on its /metrics gauge.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { killAll, startKeel } from '../cli/keel-process.ts';
import { waitFor } from '../helpers.ts';
import { deviceConfig, drained, keelOk, keygen, metricValue, opsAddress, scrape, tallyDevice, verifiedSizes } from './fleet-rig.ts';
import { LinkProxy } from './link-proxy.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-e2e-link-'));
let proxy: LinkProxy | undefined;
let db: Database.Database | undefined;
after(async () => {
  await killAll();
  await proxy?.close();
  db?.close();
  rmSync(dir, { recursive: true, force: true });
});

const DEVICE = 'rover';
const MAX_IN_FLIGHT = 3;
const ACK_TIMEOUT_MS = 2000;
const BATCH_RECORDS = 150;

/** Samples the device's in-flight gauge on /metrics every 50 ms (while `address()` names one); keeps the largest value. */
function watchInFlight(address: () => string | undefined): { max: number; samples: number; stop: () => void } {
  const w = { max: 0, samples: 0, stop: () => undefined as void };
  let stopped = false;
  void (async () => {
    while (!stopped) {
      const a = address();
      const text = a ? await scrape(a, 1000) : undefined;
      const inFlight = text ? metricValue(text, 'keel_sync_in_flight_batches') : undefined;
      if (inFlight !== undefined) {
        w.samples++;
        w.max = Math.max(w.max, inFlight);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  w.stop = () => {
    stopped = true;
  };
  return w;
}

test('link cut, duplicated and reordered batches, a blackhole and a device SIGKILL mid-batch: every record in the fleet once, verified; in flight stays bounded', { timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const phase = (what: string) => t.diagnostic(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
  const state = path.join(dir, 'fleet');
  const server = startKeel(['fleet', 'serve', '--state', state, '--port', '0'], { timeoutMs: 170_000 });
  const [vkeys] = await Promise.all([keygen(dir, [DEVICE]), server.waitForLog('fleet serving', 60_000)]);
  const serving = server.logs().find((l) => l.msg === 'fleet serving') as { addresses: { tcp: string } };
  await keelOk(['fleet', 'enroll', vkeys[DEVICE], '--state', state]);
  proxy = await LinkProxy.start({ host: '127.0.0.1', port: Number(new URL(serving.addresses.tcp).port) });
  db = new Database(path.join(state, 'fleet.db'), { readonly: true });
  const verified = () => verifiedSizes(db!)[DEVICE] ?? 0;

  // Small batches, so an outage's backlog is many batches and the in-flight bound is reached;
  // nothing pruned, so every record can be compared byte for byte at the end.
  const cfg = deviceConfig({ dir, name: DEVICE, broker: proxy.url, fleet: `@${path.join(state, 'fleet.vkey')}`, sync: { batchRecords: BATCH_RECORDS, maxInFlight: MAX_IN_FLIGHT, ackTimeoutMs: ACK_TIMEOUT_MS, pruneDelivered: false } });
  let run = startKeel(['run', cfg], { timeoutMs: 170_000 });
  let address: string | undefined = await opsAddress(run);
  const gauges = watchInFlight(() => address);
  try {
    await waitFor(() => verified() > 300, 'the first records verified by the fleet', 40_000, 100);
    phase(`syncing, ${verified()} verified`);

    // Live pacing, nothing to catch up: records go in batches about once per poll (client.ts
    // pollMs, 1000 ms by default, because each batch costs a device signature, fsyncs on both
    // sides and a fleet transaction), not one small batch per ack round trip. Counted at the
    // wire: batches short of batchRecords (a full one may go at once). A subtest: the rest runs
    // whatever it finds.
    await t.test('live records go out about once per poll, not once per ack round trip', async () => {
      const from = Date.now();
      await new Promise((r) => setTimeout(r, 3000));
      const live = proxy!.batchLog.filter((b) => b.device === DEVICE && b.at >= from && b.at < from + 3000);
      const partial = live.filter((b) => b.end - b.start < BATCH_RECORDS);
      assert.ok(
        partial.length <= 5,
        `${partial.length} partial batches in 3 s (records each: ${partial.map((b) => b.end - b.start).join(' ')}; ms apart: ${partial.slice(1).map((b, i) => b.at - partial[i].at).join(' ')}); ` +
          'expected about 3 with pollMs 1000: after each ack the device sends whatever was logged during the round trip',
      );
    });

    // 1. Cut for 4 s under load; batches duplicated and reordered on the wire while the
    //    backlog drains after it.
    const beforeCut = proxy.stats.connections;
    proxy.cut(4000);
    await new Promise((r) => setTimeout(r, 3500));
    assert.ok(run.running, `the device keeps running without its link:\n${run.stderr}`);
    proxy.mangle({ duplicateEvery: 3, reorder: true });
    await waitFor(() => proxy!.stats.connections > beforeCut, 'the device to reconnect after the cut', 20_000, 50);
    phase(`reconnected after the cut (${proxy.stats.refused} connects refused)`);
    await drained(address, verified, 'after the cut');
    await waitFor(() => proxy!.stats.duplicated >= 2 && proxy!.stats.reordered >= 2, 'some batches duplicated and reordered', 20_000, 100);
    proxy.mangle({});
    phase(`drained after the cut: ${verified()} verified; ${proxy.stats.duplicated} batches duplicated, ${proxy.stats.reordered} pairs reordered`);
    assert.ok(proxy.stats.refused >= 1, 'reconnects were refused during the cut');

    // 2. Blackhole for longer than two ack timeouts: the PUBLISH and the reconnect attempts
    //    vanish; only the device's own timeouts get it out.
    const swallowedBefore = proxy.stats.swallowedConnections;
    const seen = run.logs().length;
    proxy.blackhole();
    await waitFor(() => run.logs().slice(seen).some((l) => l.msg === 'the broker acknowledged no batch in time; reconnecting'), 'the device to give up on the blackholed link (no PUBACK in time)', 20_000, 100);
    await new Promise((r) => setTimeout(r, ACK_TIMEOUT_MS + 500));
    const swallowed = proxy.stats.swallowedConnections - swallowedBefore;
    proxy.heal();
    phase(`blackhole healed (${swallowed} connections swallowed)`);
    assert.ok(swallowed >= 2, `the blackholed connection and at least one reconnect attempt were swallowed (${swallowed})`);

    // 3. The backlog of the blackhole drains; kill the device while batches are in flight.
    await waitFor(() => proxy!.outstanding(DEVICE) >= 2, 'batches in flight after the blackhole', 30_000, 2);
    const inFlightAtKill = proxy.outstanding(DEVICE);
    run.signal('SIGKILL');
    await run.exited;
    address = undefined;
    phase(`device killed with ${inFlightAtKill} batches in flight; ${verified()} verified`);
    run = startKeel(['run', cfg], { timeoutMs: 170_000 });
    address = await opsAddress(run);
    // It resumes where its sync.json (or the fleet's retained ack) says, not from 0.
    const resumed = (await run.waitForLog('sync connected', 30_000)) as { delivered: number };
    assert.ok(resumed.delivered > 0, `the restarted device resumes from its delivery state: ${JSON.stringify(resumed)}`);
    const held = await drained(address, verified, 'after the restart');
    phase(`drained after the restart: ${verified()} verified`);

    // 4. Stop the device (SIGTERM: safe state, last acks awaited), then count.
    // A record older than one poll (1 s) plus the ack wait at stop went out in a batch whose
    // ack had time to come back: only younger ones may be left undelivered.
    const tailFrom = Date.now() - 1000 - ACK_TIMEOUT_MS;
    run.signal('SIGTERM');
    const r = await run.exited;
    assert.equal(r.code, 0, `device exit ${r.code}\n${r.stderr.slice(-3000)}`);
    gauges.stop();
    const tally = await tallyDevice(db, DEVICE, path.join(dir, DEVICE), tailFrom);
    phase(`counted: ${JSON.stringify(tally)}`);
    assert.ok(tally.delivered >= held, `delivered ${tally.delivered}, at least what the device held after its restart (${held})`);
    assert.equal(tally.compared, tally.rows, 'every stored record compared with the device ledger');
    const v = await keelOk(['fleet', 'verify', DEVICE, '--state', state]);
    phase(`keel fleet verify: ${v.trim().split('\n').pop()}`);

    // The in-flight bound, at the wire (exact) and on the gauge (sampled).
    const wireMax = proxy.maxOutstanding.get(DEVICE) ?? 0;
    phase(`in flight: at most ${wireMax} at the wire, ${gauges.max} on /metrics (${gauges.samples} samples); bound ${MAX_IN_FLIGHT}`);
    assert.ok(wireMax <= MAX_IN_FLIGHT, `at most ${MAX_IN_FLIGHT} batches awaited their ack at any time, saw ${wireMax}`);
    assert.equal(wireMax, MAX_IN_FLIGHT, 'the backlog drains reached the bound (the check is not vacuous)');
    assert.ok(gauges.samples > 50 && gauges.max <= MAX_IN_FLIGHT, `gauge max ${gauges.max} over ${gauges.samples} samples`);

    // The fleet saw the duplicates and the reordering, and refused nothing.
    server.signal('SIGTERM');
    const s = await server.exited;
    assert.equal(s.code, 0, s.stderr);
    const stopped = server.logs().find((l) => l.msg === 'fleet stopped') as { ingest: { duplicates: number; waits: number; nacks: number; forks: number } };
    phase(`fleet ingest: ${JSON.stringify(stopped.ingest)}; the proxy saw ${proxy.stats.batches} batches, ${proxy.stats.acks} acks`);
    assert.ok(stopped.ingest.duplicates >= 1, 'duplicate batches were re-acked');
    assert.equal(stopped.ingest.nacks, 0);
    assert.equal(stopped.ingest.forks, 0);
  } finally {
    gauges.stop();
  }
});
