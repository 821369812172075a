/**
 * Records what a running runtime sees and does into its ledger, without ever making the
 * pipeline wait: events become records in a bounded in-memory buffer, appended in batches
 * every `flushMs` (one fsync per batch in `batch` durability), and checkpoints are signed
 * every `checkpointEveryRecords` records or `checkpointEveryMs`, and at shutdown.
 *
 * A failing disk (full, read-only, IO errors) never stops sensing or acting: the failure is
 * logged and counted, the buffer keeps the records (up to `maxBuffered`), appends are
 * retried on the next flush, and if the buffer must drop its oldest records a `gap` record
 * written afterwards says how many, over which time span, and why. Nothing vanishes silently.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.ts';
import type { LedgerConfig } from '../config/schema.ts';
import { asError } from '../errors.ts';
import type { Runtime } from '../runtime.ts';
import { KEEL_VERSION } from '../version.ts';
import { KeyFileError } from './errors.ts';
import { loadOrCreateKeyFile, type KeyFileResult } from './keys.ts';
import { Ledger, type RecordInput } from './ledger.ts';
import { tensorDigest, type InferenceBody } from './records.ts';

/** What the recorder needs besides the ledger. */
export interface RecorderOptions {
  clock: Clock;
  logger: Logger;
  flushMs: number;
  checkpointEveryRecords: number;
  checkpointEveryMs: number;
  maxBuffered: number;
  /** Policy at the disk bound (see LedgerConfig.onFull). */
  onFull?: 'drop-oldest' | 'stop-recording';
  /** Append each record as it is added (durability `record`) instead of every flushMs. */
  immediate?: boolean;
}

/** Counters for /metrics and the live view. */
export interface RecorderStats {
  appended: number;
  buffered: number;
  dropped: number;
  failures: number;
  checkpoints: number;
  lastError?: string;
}

/** Subscribes to a runtime and writes its ledger. */
export class LedgerRecorder {
  readonly ledger: Ledger;
  private readonly o: RecorderOptions;
  private buffer: RecordInput[] = [];
  private flushTimer?: TimerHandle;
  private checkpointTimer?: TimerHandle;
  private flushing?: Promise<void>;
  private sinceCheckpoint = 0;
  private dropped = { count: 0, from: 0, to: 0, reason: '' };
  private readonly counters: RecorderStats = { appended: 0, buffered: 0, dropped: 0, failures: 0, checkpoints: 0 };
  private closed = false;

  constructor(ledger: Ledger, o: RecorderOptions) {
    this.ledger = ledger;
    this.o = o;
  }

  /** Opens the ledger a config section describes (paths relative to `baseDir`). */
  static async open(cfg: LedgerConfig, key: import('./keys.ts').DeviceKey, deviceName: string, dir: string, clock: Clock, logger: Logger): Promise<LedgerRecorder> {
    const ledger = await Ledger.open(dir, {
      key,
      origin: cfg.origin ?? key.name ?? deviceName,
      durability: cfg.durability,
      intervalMs: cfg.intervalMs,
      maxBytes: cfg.maxBytes,
      clock,
    });
    return new LedgerRecorder(ledger, {
      clock,
      logger,
      flushMs: cfg.flushMs,
      checkpointEveryRecords: cfg.checkpointEveryRecords,
      checkpointEveryMs: cfg.checkpointEveryMs,
      maxBuffered: cfg.maxBuffered,
      onFull: cfg.onFull,
      immediate: cfg.durability === 'record',
    });
  }

  /** Subscribes to every event of `rt` and starts the flush and checkpoint timers. */
  attach(rt: Runtime, configBytes?: Uint8Array): void {
    if (configBytes) {
      this.add('config', { device: rt.config.device.name, sha256: createHash('sha256').update(configBytes).digest('hex') });
    }
    this.add('event', { event: 'start', keel: KEEL_VERSION, onnxruntime: ort.env.versions.common });
    rt.on('inference', (e) => {
      const outputs: Record<string, number[]> = {};
      for (const [k, v] of Object.entries(e.outputs)) if (!e.stateOutputs.includes(k)) outputs[k] = Array.from(v);
      const body: InferenceBody = {
        pipeline: e.pipeline,
        model: { sha256: e.modelSha256 },
        inputs: { [e.inputName]: tensorDigest('float32', e.inputDims, e.input) },
        outputs,
        ms: Math.round(e.ms * 1000) / 1000,
        runtime: { keel: KEEL_VERSION, onnxruntime: ort.env.versions.common },
      };
      this.add('inference', body as unknown as Record<string, unknown>, e.t);
    });
    rt.on('decision', (d) => this.add('decision', { pipeline: d.pipeline, rule: d.rule, state: d.state, ...(d.value !== undefined && Number.isFinite(d.value) ? { value: d.value } : {}) }, d.t));
    rt.on('action', (a) => this.add('action', { actuator: a.actuator, value: a.value, origin: a.origin, result: a.result, ...(a.error ? { error: a.error } : {}) }, a.t));
    rt.on('fault', (f) => this.add('fault', { fault: f.kind, detail: f.detail, ...(f.pipeline ? { pipeline: f.pipeline } : {}) }, f.t));
    rt.on('safe', (f) => this.add('event', { event: 'safe', reason: f.kind, detail: f.detail }));
    rt.on('recovered', () => this.add('event', { event: 'recovered' }));
    this.flushTimer = this.o.clock.setInterval('ledger:flush', () => void this.flush(), this.o.flushMs);
    this.checkpointTimer = this.o.clock.setInterval('ledger:checkpoint', () => void this.checkpoint(), this.o.checkpointEveryMs);
  }

  /** Queues one record; never blocks and never throws (the caller is the pipeline). */
  add(kind: RecordInput['kind'], body: Record<string, unknown>, t = this.o.clock.now()): void {
    if (this.closed) return;
    this.buffer.push({ kind, body, t });
    this.trim();
    // Record mode: write now. A flush already running picks these up when it finishes (the
    // next timer tick at the latest), so concurrent records share one fsync.
    if (this.o.immediate && !this.flushing) void this.flush();
  }

  /** Drops the oldest buffered records beyond `maxBuffered`, remembering them for the gap record. */
  private trim(): void {
    while (this.buffer.length > this.o.maxBuffered) {
      const old = this.buffer.shift()!;
      const t = old.t ?? this.o.clock.now();
      if (this.dropped.count === 0) {
        this.dropped.from = t;
        this.dropped.reason = this.counters.lastError ? `ledger appends failing: ${this.counters.lastError}` : 'buffer full';
      }
      this.dropped.count++;
      this.dropped.to = t;
      this.counters.dropped++;
    }
  }

  /** Appends everything buffered (one batch); on failure keeps it for the next try. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    this.flushing = this.doFlush().finally(() => {
      this.flushing = undefined;
      // Record mode: what arrived during that write goes next, unless the disk is failing
      // (then the flush timer paces the retries instead of a hot loop).
      if (this.o.immediate && !this.closed && this.buffer.length > 0 && this.counters.lastError === undefined) void this.flush();
    });
    return this.flushing;
  }

  private async doFlush(): Promise<void> {
    if (this.buffer.length === 0 && this.dropped.count === 0) return;
    const records = this.buffer;
    this.buffer = [];
    const gap = { ...this.dropped };
    // The gap record goes first: it says, in the log itself, what was dropped before these.
    const batch: RecordInput[] =
      gap.count > 0 ? [{ kind: 'gap', body: { dropped: gap.count, fromT: gap.from, toT: gap.to, reason: gap.reason }, t: this.o.clock.now() }, ...records] : records;
    try {
      await this.ledger.appendBatch(batch);
      if (gap.count > 0) {
        // Drops that happened while this batch was being written stay for the next gap record.
        this.dropped.count -= gap.count;
        if (this.dropped.count <= 0) this.dropped = { count: 0, from: 0, to: 0, reason: '' };
      }
      this.counters.appended += batch.length;
      this.sinceCheckpoint += batch.length;
      this.counters.lastError = undefined;
      if (this.sinceCheckpoint >= this.o.checkpointEveryRecords) await this.checkpoint();
    } catch (err) {
      this.counters.failures++;
      this.counters.lastError = asError(err).message;
      // Put the records back in front; those that arrived meanwhile stay after them.
      this.buffer = records.concat(this.buffer);
      if ((err as { code?: string }).code === 'KEEL_E_LEDGER_FULL' && (this.o.onFull ?? 'drop-oldest') === 'drop-oldest') await this.dropOldest();
      this.trim();
      this.o.logger.error({ err: this.counters.lastError, buffered: this.buffer.length }, 'ledger append failed; records kept in memory and retried');
    }
  }

  /**
   * The disk-bound policy `drop-oldest`: prunes the record bytes of the oldest half of what is
   * stored (nothing is acknowledged by a fleet yet, so these are unacknowledged records) and
   * queues a gap record naming the range and the reason. The hashes stay: the tree and every
   * checkpoint still verify, only those records' contents are gone.
   */
  private async dropOldest(): Promise<void> {
    const first = this.ledger.firstAvailable;
    const size = this.ledger.size;
    if (size - first < 2) return;
    try {
      const newFirst = await this.ledger.pruneBefore(first + Math.floor((size - first) / 2));
      if (newFirst > first) {
        this.buffer.unshift({ kind: 'gap', body: { fromSeq: first, toSeq: newFirst - 1, dropped: newFirst - first, reason: 'disk bound reached: unacknowledged records pruned (ledger.onFull: drop-oldest)' }, t: this.o.clock.now() });
        this.o.logger.warn({ fromSeq: first, toSeq: newFirst - 1 }, 'ledger at its disk bound: oldest records pruned');
      }
    } catch (err) {
      this.o.logger.error({ err: asError(err).message }, 'ledger prune failed');
    }
  }

  /** Signs a checkpoint of what is appended (if anything new). */
  async checkpoint(): Promise<void> {
    try {
      await this.ledger.checkpoint();
      this.sinceCheckpoint = 0;
      this.counters.checkpoints++;
    } catch (err) {
      this.counters.failures++;
      this.counters.lastError = asError(err).message;
      this.o.logger.error({ err: this.counters.lastError }, 'ledger checkpoint failed');
    }
  }

  /** Counters. */
  stats(): RecorderStats {
    return { ...this.counters, buffered: this.buffer.length };
  }

  /** Final flush and checkpoint, then closes the ledger (call after the runtime stopped). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.o.clock.cancel(this.flushTimer);
    this.o.clock.cancel(this.checkpointTimer);
    this.add('event', { event: 'stop' });
    this.closed = true;
    await this.flush();
    await this.checkpoint();
    await this.ledger.close();
  }
}

/** The verifier key a ledger directory was signed with (its `vkey` file), if any. */
function ledgerSigner(ledgerDir: string): string | undefined {
  try {
    return readFileSync(path.join(ledgerDir, 'vkey'), 'utf8').trim() || undefined;
  } catch {
    return undefined; // no ledger there yet
  }
}

function refuseCreate(ledgerDir: string): string | undefined {
  const signer = ledgerSigner(ledgerDir);
  return signer ? `the ledger in ${ledgerDir} is signed by ${signer}; restore that key file (or move the ledger away to start a new one)` : undefined;
}

/**
 * The device key of a ledger section for `keel run` (paths relative to `baseDir`): loaded, or
 * with `ledger.createKey`, created on first start and named as the checkpoints will be (origin,
 * else the device name). Never created for a ledger directory that a key already signed: a new
 * key could not extend that log. The caller logs the verifier key of a created key, which the
 * fleet must learn before it can verify this device.
 * @throws KeyFileError (KEEL_E_KEY) with what to do.
 */
export function ledgerKey(cfg: LedgerConfig, baseDir: string, deviceName: string): KeyFileResult {
  const ledgerDir = path.resolve(baseDir, cfg.dir);
  return loadOrCreateKeyFile(path.resolve(baseDir, cfg.key), { create: cfg.createKey ?? false, name: cfg.origin ?? deviceName, refuseCreate: refuseCreate(ledgerDir) });
}

/**
 * What `keel check` says about a ledger section's key, without creating anything: undefined
 * when `keel run` will have a key (it exists and loads, or createKey will create it), else the
 * problem.
 */
export function ledgerKeyProblem(cfg: LedgerConfig, baseDir: string): string | undefined {
  const file = path.resolve(baseDir, cfg.key);
  if (!cfg.createKey || existsSync(file)) {
    try {
      loadOrCreateKeyFile(file, { create: false });
      return undefined;
    } catch (err) {
      return asError(err).message;
    }
  }
  const refused = refuseCreate(path.resolve(baseDir, cfg.dir));
  if (refused) return new KeyFileError(file, `key file ${file} does not exist, and ledger.createKey will not create one: ${refused}`).message;
  const dir = path.dirname(file);
  try {
    if (!statSync(dir).isDirectory()) return `ledger.createKey cannot create ${file}: ${dir} is not a directory`;
  } catch {
    return `ledger.createKey cannot create ${file}: directory ${dir} does not exist`;
  }
  return undefined;
}
