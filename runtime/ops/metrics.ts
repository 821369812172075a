/**
 * Prometheus metrics of one runtime, on a registry of its own (never prom-client's global
 * one, so two runtimes in one process, as in tests, do not collide).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SourceStats } from '../../drivers/types.ts';

/** Reads every source's counters (the drivers own them; metrics are pulled at scrape time). */
export type SourceStatsReader = () => Iterable<readonly [string, SourceStats]>;

/** A counter whose value is read from driver stats at scrape time. */
function pulledCounter(registry: Registry, name: string, help: string, read: SourceStatsReader, pick: (s: SourceStats) => number): Counter<'source'> {
  return new Counter({
    name,
    help,
    labelNames: ['source'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [source, st] of read()) this.inc({ source }, pick(st));
    },
  });
}

/** Inference latency buckets in seconds: 0.1 ms to 2.5 s, dense where small models live. */
const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Every metric the runtime exports. Source counters are pulled from the drivers at scrape time. */
export class RuntimeMetrics {
  readonly registry = new Registry();
  readonly samples: Counter<'source'>;
  readonly samplesDropped: Counter<'source'>;
  readonly reconnects: Counter<'source'>;
  readonly sourceConnected: Gauge<'source'>;
  readonly windows = new Counter({ name: 'keel_windows_total', help: 'Windows completed per pipeline (frames)', labelNames: ['pipeline'], registers: [this.registry] });
  readonly windowsDropped = new Counter({
    name: 'keel_windows_dropped_total',
    help: 'Windows skipped because inference was still busy (the newest window always wins)',
    labelNames: ['pipeline'],
    registers: [this.registry],
  });
  readonly incomplete = new Counter({ name: 'keel_samples_incomplete_total', help: 'Samples skipped by a pipeline for a missing or non-finite channel', labelNames: ['pipeline'], registers: [this.registry] });
  readonly inferences = new Counter({ name: 'keel_inferences_total', help: 'Inference runs', labelNames: ['pipeline'], registers: [this.registry] });
  readonly inferenceFailures = new Counter({ name: 'keel_inference_failures_total', help: 'Failed inference runs', labelNames: ['pipeline'], registers: [this.registry] });
  readonly inferenceSeconds = new Histogram({
    name: 'keel_inference_seconds',
    help: 'Time of one session.run, seconds',
    labelNames: ['pipeline'],
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly decisions = new Counter({ name: 'keel_decisions_total', help: 'Rule state changes', labelNames: ['pipeline', 'rule', 'state'], registers: [this.registry] });
  readonly actions = new Counter({ name: 'keel_actions_total', help: 'Actions applied to actuators, by result', labelNames: ['actuator', 'result'], registers: [this.registry] });
  readonly faults = new Counter({ name: 'keel_faults_total', help: 'Faults raised, by kind', labelNames: ['kind'], registers: [this.registry] });
  readonly safe = new Gauge({ name: 'keel_safe_state', help: '1 while the runtime holds the safe state', registers: [this.registry] });
  readonly policyCalls = new Counter({ name: 'keel_policy_calls_total', help: 'Policy module calls, by result', labelNames: ['pipeline', 'result'], registers: [this.registry] });

  constructor(sources: SourceStatsReader) {
    const r = this.registry;
    this.samples = pulledCounter(r, 'keel_samples_total', 'Samples delivered by each source', sources, (s) => s.samples);
    this.samplesDropped = pulledCounter(r, 'keel_samples_dropped_total', 'Malformed input discarded by each source (garbage, overlong lines, partial records, bounces)', sources, (s) => s.dropped);
    this.reconnects = pulledCounter(r, 'keel_source_reconnects_total', 'Times a source device was reopened after a failure', sources, (s) => s.reconnects);
    this.sourceConnected = new Gauge({
      name: 'keel_source_connected',
      help: '1 while the source device is open and delivering',
      labelNames: ['source'],
      registers: [r],
      collect() {
        for (const [source, st] of sources()) this.set({ source }, st.connected ? 1 : 0);
      },
    });
  }

  /** The exposition text for /metrics. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Content type of the exposition text. */
  get contentType(): string {
    return this.registry.contentType;
  }
}

/** The sync numbers /metrics exports (runtime/sync/client.ts SyncStats has them all). */
export interface SyncMetricStats {
  connected: boolean;
  delivered: number;
  backlog: number;
  inFlight: number;
  reconnects: number;
  acks: number;
  ackRejects: number;
  nacks: number;
  ackTimeouts: number;
  batchesSent: number;
  recordsSent: number;
  bytesSent: number;
  telemetrySent: number;
  telemetryDropped: number;
}

/** Registers the device-sync metrics on `registry`, pulled from `read()` at scrape time. */
export function registerSyncMetrics(registry: Registry, read: () => SyncMetricStats): void {
  const gauge = (name: string, help: string, pick: (s: SyncMetricStats) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(pick(read()));
      },
    });
  const counter = (name: string, help: string, pick: (s: SyncMetricStats) => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(pick(read()));
      },
    });
  gauge('keel_sync_connected', '1 while connected to the fleet broker', (s) => (s.connected ? 1 : 0));
  gauge('keel_sync_delivered_records', 'Records the fleet acknowledged with a verified cosignature', (s) => s.delivered);
  gauge('keel_sync_backlog_records', 'Records not yet acknowledged by the fleet', (s) => s.backlog);
  gauge('keel_sync_in_flight_batches', 'Ledger batches sent and awaiting the fleet\'s ack', (s) => s.inFlight);
  counter('keel_sync_reconnects_total', 'Reconnects after a failed or lost connection', (s) => s.reconnects);
  counter('keel_sync_acks_total', 'Fleet acks that verified and advanced delivery', (s) => s.acks);
  counter('keel_sync_ack_rejects_total', 'Acks refused (bad cosignature, foreign checkpoint, malformed)', (s) => s.ackRejects);
  counter('keel_sync_nacks_total', 'Batches the fleet refused', (s) => s.nacks);
  counter('keel_sync_ack_timeouts_total', 'Batches not acknowledged in time (resent)', (s) => s.ackTimeouts);
  counter('keel_sync_batches_sent_total', 'Ledger batches published', (s) => s.batchesSent);
  counter('keel_sync_records_sent_total', 'Records published in batches (resends included)', (s) => s.recordsSent);
  counter('keel_sync_bytes_sent_total', 'Batch payload bytes published', (s) => s.bytesSent);
  counter('keel_sync_telemetry_sent_total', 'Telemetry messages published', (s) => s.telemetrySent);
  counter('keel_sync_telemetry_dropped_total', 'Telemetry messages dropped while offline', (s) => s.telemetryDropped);
}
