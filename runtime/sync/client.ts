/**
 * Device sync: store-and-forward of the signed ledger to the fleet over MQTT
 * (docs/fleet.md; topics, batch and token formats in wire.ts).
 *
 * - Its own connect loop (mqtt.js never reconnects by itself here): a fresh connect token per
 *   attempt, clean session, exponential backoff with jitter on the injected clock, and the
 *   MQTT Will as death: a retained offline status carrying this connection's `bdSeq`. On
 *   connect: subscribe to ack, nack, cmd and the fleet's state, then the retained birth.
 * - Batches are read from the durable ledger, never from a memory queue: from `delivered`
 *   (the last size the fleet's cosignature verified for), each covering consecutive records
 *   with the device-signed checkpoint of its end (Ledger.signCheckpointAt syncs the store
 *   first, so nothing that could still vanish is sent). Records the disk bound pruned before
 *   delivery go as their stored leaf hashes. At most `maxInFlight` batches await their ack,
 *   each bounded by `batchRecords`/`batchBytes`, paced by token buckets (records/s, bytes/s),
 *   with a macrotask yield between batches so sensing and inference keep their turn.
 * - An ack counts only if its cosignature verifies with the configured fleet key and its
 *   checkpoint is this device's (origin, and the root of our own first `size` records). Then
 *   `delivered` advances, sync.json is replaced (atomic, fsynced; at most every
 *   `persistEveryMs` while acks stream in), and only then the ledger may prune below what it
 *   says. No ack in time, or a nack: back to `delivered`, resend after backoff.
 * - Every wait on the broker (connect, SUBACK, PUBACK, the fleet's ack) has its own timeout.
 *
 * Never throws into the caller's event loop: failures are logged, counted and retried.
 */
import { EventEmitter } from 'node:events';
import { setImmediate as yieldTurn } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.ts';
import type { SyncConfig } from '../config/schema.ts';
import { KeelError, asError } from '../errors.ts';
import { noteVerifier, openCheckpoint, parseVerifierKey, SIGNATURE_TYPE_COSIGNATURE_V1, type Checkpoint, type NoteVerifier, type VerifierKey } from '../ledger/note.ts';
import { KEEL_VERSION } from '../version.ts';
import { SyncCursor } from './cursor.ts';
import { mqttConnector, type LinkMessage, type SyncConnector, type SyncLink } from './link.ts';
import { backoffDelay, TokenBucket } from './pacing.ts';
import {
  deviceTopics,
  encodeBatch,
  fleetStateTopic,
  MAX_BATCH_BYTES,
  MAX_BATCH_HEADER_BYTES,
  mintToken,
  type BatchEntry,
  type DeviceTopics,
  type SigningKey,
  type StatusBody,
} from './wire.ts';

/**
 * The ledger operations sync uses; `Ledger` has them. `readRange`, when the ledger offers it,
 * reads a run of consecutive records with one read instead of one (or more) per record.
 */
export interface SyncLedger {
  readonly dir: string;
  readonly origin: string;
  readonly size: number;
  readonly firstAvailable: number;
  read(index: number): Buffer;
  /**
   * Exact bytes of consecutive records from `start` (below `end`), at least one when
   * start < end, stopping before the record that would take the total past `maxBytes`
   * (or earlier, e.g. at a segment boundary). Throws KEEL_E_LEDGER_PRUNED below firstAvailable.
   */
  readRange?(start: number, end: number, maxBytes: number): Buffer[];
  storedLeafHash(index: number): Buffer;
  signCheckpointAt(size: number): Promise<string>;
  rootAt(size: number): Buffer;
  pruneBefore(index: number): Promise<number>;
}

/** Handles one raw `/cmd` payload; what it returns is published on `/cmd/result`. */
export type CommandHandler = (payload: Buffer) => Promise<Buffer | undefined>;

/** What a SyncClient is built from. */
export interface SyncClientOptions {
  /** Device id: MQTT username and client id, topic level, batch header `device`. */
  device: string;
  /** The open ledger (the recorder's). */
  ledger: SyncLedger;
  /** The device key under the ledger's origin name (signs tokens and telemetry). */
  key: SigningKey;
  /** The fleet's cosigner key (type 0x04). */
  fleetKey: string | VerifierKey;
  /** Token audience (the fleet's name). */
  audience: string;
  /** The sync config section, defaults applied. */
  settings: SyncConfig;
  clock: Clock;
  logger: Logger;
  /** Transport; default mqtt.js. */
  connector?: SyncConnector;
  /** PEM CA for mqtts:// and wss://. */
  ca?: Buffer;
  /** Models announced in the birth. */
  models?: { name: string; sha256: string }[];
  /** Command handler (see runtime/sync/commands.ts); without one, commands are ignored. */
  onCommand?: CommandHandler;
  /** [0, 1) randomness for backoff jitter (tests inject a fixed one). */
  random?: () => number;
  /** MQTT keepalive, seconds (default 30). */
  keepaliveS?: number;
  /**
   * How often the ledger is checked for new records while connected, ms (default 1000). Each
   * batch costs a checkpoint signature, fsyncs and an ack, so live records go in batches at
   * about this pace, not one by one (an SD card's write budget is finite): a batch that does
   * not fill batchRecords or batchBytes (the device has caught up) goes at most once per
   * pollMs after the previous such batch, not after every ack. A backlog goes at once.
   */
  pollMs?: number;
  /** Least time between two prunes of delivered records, ms (default 5000; each one fsyncs the store). */
  pruneEveryMs?: number;
  /**
   * Least time between two saves of sync.json while acks stream in, ms (default 1000). Each
   * save is two fsyncs; a draining backlog is acked many times a second. The newest verified
   * ack is saved at most this late, before any prune, and at stop; after a crash in between,
   * the fleet's retained ack (or a resend, which the fleet stores idempotently) covers the gap.
   */
  persistEveryMs?: number;
}

/** Counters and gauges for /metrics and the live view. */
export interface SyncStats {
  connected: boolean;
  /** The fleet's announced state; null while unknown. */
  fleetOnline: boolean | null;
  bdSeq: number;
  ledgerSize: number;
  /** Records the fleet acknowledged with a verified cosignature. */
  delivered: number;
  /** Records not yet delivered. */
  backlog: number;
  /** Batches sent and awaiting their ack. */
  inFlight: number;
  connects: number;
  /** Reconnects scheduled after a failed or lost connection. */
  reconnects: number;
  batchesSent: number;
  recordsSent: number;
  bytesSent: number;
  /** Acks that advanced `delivered`. */
  acks: number;
  /** Acks for sizes already delivered. */
  duplicateAcks: number;
  /** Acks refused: bad cosignature, foreign checkpoint, malformed. */
  ackRejects: number;
  nacks: number;
  ackTimeouts: number;
  /** First record index still stored on the device. */
  firstAvailable: number;
  telemetrySent: number;
  telemetryDropped: number;
  commands: number;
  lastError?: string;
}

/** Events a SyncClient emits (for tests, the live view and logs). */
export interface SyncEvents {
  connected: [{ bdSeq: number }];
  disconnected: [{ reason: string }];
  backoff: [{ reason: 'connect' | 'resend'; attempt: number; delayMs: number }];
  sent: [{ start: number; end: number; bytes: number }];
  delivered: [{ size: number }];
  persisted: [{ delivered: number }];
  pruned: [{ firstAvailable: number }];
  ackRejected: [{ reason: string }];
  nack: [{ start: number; end: number; code: string; reason: string }];
  fleet: [{ online: boolean }];
}

interface InFlight {
  start: number;
  end: number;
  bytes: number;
  /** Root of the checkpoint this batch carries (its size is `end`): an ack of that size is checked against it without re-reading the tree. */
  root: Buffer;
  /** Monotonic ms when published. */
  sentAt: number;
  /** Monotonic ms when the broker acknowledged it (PUBACK). */
  pubackAt?: number;
}

/** Largest nack / fleet-state payload read, bytes. */
const MAX_SMALL_JSON = 4096;
/** Largest ack read, bytes (a checkpoint note with a few signature lines is well under 1 KiB). */
const MAX_ACK_BYTES = 16 * 1024;
/** Commands queued while one runs; beyond this they are dropped (and logged). */
const MAX_QUEUED_COMMANDS = 32;
/** Longest a command handler may take before its result is given up, ms. */
const COMMAND_TIMEOUT_MS = 30_000;
/** Longest stretch of synchronous ledger reading before yielding to the event loop, ms. */
const SLICE_MS = 1;
/** A record whose entry would not fit in a batch goes as its hash only (bytes). */
const MAX_RECORD_IN_BATCH = MAX_BATCH_BYTES - MAX_BATCH_HEADER_BYTES - 5;
/**
 * Record bytes read from the ledger with one readRange call at most. A call reads and checks
 * (CRC) synchronously: 256 KiB is some 0.2 ms of work, so a large batch is read in slices
 * between which the event loop gets its turn (SLICE_MS).
 */
const READ_CHUNK_BYTES = 256 * 1024;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Syncs one ledger with the fleet. Build with `SyncClient.open`, then `start()`; `stop()` at the end. */
export class SyncClient extends EventEmitter<SyncEvents> {
  readonly topics: DeviceTopics;
  readonly fleetStateTopic: string;
  private readonly o: SyncClientOptions;
  private readonly s: SyncConfig;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly ledger: SyncLedger;
  private readonly cursor: SyncCursor;
  private readonly fleetVkey: string;
  private readonly fleetVerifier: NoteVerifier;
  private readonly connector: SyncConnector;
  private readonly random: () => number;
  private readonly recordBucket: TokenBucket;
  private readonly byteBucket: TokenBucket;
  private onCommand?: CommandHandler;

  private delivered = 0;
  private persistedDelivered = 0;
  private ackNote?: string;
  private bdSeq = 0;
  private next = 0;
  private inflight: InFlight[] = [];
  private lastPubackAt = 0;
  private lastAckAt = 0;
  /** Records below this are sent without pacing (requestSync). */
  private urgentTo = 0;
  /** Monotonic ms when the last batch that took every record there was (a live batch) was sent. */
  private lastLiveAt = -Infinity;
  /** Batch bytes per record of the last batch: tells a full batch from a partial one before reading it. */
  private bytesPerRecord = 0;

  private link?: SyncLink;
  /** Incremented whenever the link changes; callbacks of an older link are ignored. */
  private linkGen = 0;
  private connected = false;
  private connecting = false;
  private fleetOnline: boolean | undefined;
  private started = false;
  private stopping = false;
  private stopped?: Promise<void>;
  private resendHold = false;
  private connectAttempt = 0;
  private resendAttempt = 0;
  private pumping = false;
  private pumpAgain = false;
  private pumpDone?: Promise<void>;

  private reconnectTimer?: TimerHandle;
  private resendTimer?: TimerHandle;
  private paceTimer?: TimerHandle;
  private ackTimer?: TimerHandle;
  private ackTimerAt = Infinity;
  private pruneTimer?: TimerHandle;
  private pollTimer?: TimerHandle;
  private pruning?: Promise<void>;
  private prunePending = false;
  private lastPruneAt = -Infinity;
  private persistTimer?: TimerHandle;
  private lastPersistAt = -Infinity;

  private commandQueue: Buffer[] = [];
  private commandRunning = false;
  private warnedCosigner = false;
  private readonly st = {
    connects: 0,
    reconnects: 0,
    batchesSent: 0,
    recordsSent: 0,
    bytesSent: 0,
    acks: 0,
    duplicateAcks: 0,
    ackRejects: 0,
    nacks: 0,
    ackTimeouts: 0,
    telemetrySent: 0,
    telemetryDropped: 0,
    commands: 0,
    lastError: undefined as string | undefined,
  };

  private constructor(o: SyncClientOptions, cursor: SyncCursor) {
    super();
    this.o = o;
    this.s = o.settings;
    this.clock = o.clock;
    this.ledger = o.ledger;
    this.log = o.logger.child({ component: 'sync' });
    this.cursor = cursor;
    const fk = typeof o.fleetKey === 'string' ? parseVerifierKey(o.fleetKey) : o.fleetKey;
    if (fk.type !== SIGNATURE_TYPE_COSIGNATURE_V1) throw new RangeError('fleetKey must be the fleet cosigner key (type 0x04)');
    this.fleetVkey = typeof o.fleetKey === 'string' ? o.fleetKey.trim() : '';
    this.fleetVerifier = noteVerifier(fk);
    this.topics = deviceTopics(this.s.prefix, o.device);
    this.fleetStateTopic = fleetStateTopic(this.s.prefix);
    this.connector = o.connector ?? mqttConnector;
    this.random = o.random ?? Math.random;
    this.recordBucket = new TokenBucket(this.s.rateRecordsPerS, o.clock);
    this.byteBucket = new TokenBucket(this.s.rateBytesPerS, o.clock, Math.max(this.s.rateBytesPerS, this.s.batchBytes));
    this.onCommand = o.onCommand;
  }

  /**
   * Loads `<ledger dir>/sync.json` and re-verifies the ack it holds; a state whose ack no longer
   * verifies (another fleet key, another ledger) restarts delivery from 0 with a warning.
   */
  static async open(o: SyncClientOptions): Promise<SyncClient> {
    const { cursor, problem } = SyncCursor.load(o.ledger.dir, o.clock.now());
    const c = new SyncClient(o, cursor);
    if (problem) c.log.warn({ problem }, 'sync state unreadable');
    const st = cursor.current;
    c.bdSeq = st.bdSeq;
    if (st.delivered > 0) {
      const why = st.ack === undefined ? 'it holds no ack' : c.ackProblem(st.ack, st.delivered);
      if (why) {
        c.log.warn({ delivered: st.delivered, why }, 'sync.json: the stored ack does not verify; delivery starts over from 0 (the fleet re-acknowledges what it holds)');
      } else {
        c.delivered = c.persistedDelivered = st.delivered;
        c.ackNote = st.ack;
      }
    }
    c.next = c.delivered;
    return c;
  }

  /** Starts the connect loop. */
  start(): void {
    if (this.started) return;
    this.started = true;
    void this.connect();
  }

  /** Sets (or replaces) the command handler. */
  setCommandHandler(fn: CommandHandler | undefined): void {
    this.onCommand = fn;
  }

  /** Records acknowledged by the fleet (verified). */
  get deliveredSize(): number {
    return this.delivered;
  }

  /** Whether the link is up and the birth was published. */
  get isConnected(): boolean {
    return this.connected;
  }

  /** Counters for metrics and the live view. */
  stats(): SyncStats {
    const size = this.ledger.size;
    return {
      connected: this.connected,
      fleetOnline: this.fleetOnline ?? null,
      bdSeq: this.bdSeq,
      ledgerSize: size,
      delivered: this.delivered,
      backlog: Math.max(0, size - this.delivered),
      inFlight: this.inflight.length,
      firstAvailable: this.ledger.firstAvailable,
      ...this.st,
    };
  }

  // ------------------------------------------------------------------------------------------
  // Connection

  private statusPayload(online: boolean): Buffer {
    const size = this.ledger.size;
    const body: StatusBody = online
      ? {
          online: true,
          device: this.o.device,
          bdSeq: this.bdSeq,
          version: KEEL_VERSION,
          models: this.o.models ?? [],
          ledgerSize: size,
          delivered: this.delivered,
          backlog: Math.max(0, size - this.delivered),
          t: this.clock.now(),
        }
      : { online: false, device: this.o.device, bdSeq: this.bdSeq, t: this.clock.now() };
    return Buffer.from(JSON.stringify(body));
  }

  private async connect(): Promise<void> {
    this.reconnectTimer = undefined;
    if (this.stopping || this.link || this.connecting) return;
    this.connecting = true;
    const gen = ++this.linkGen;
    // A new connection, a new bdSeq, durable before its Will can exist: a restart never
    // reuses one, so a late Will can always be told from a newer birth.
    this.bdSeq++;
    let link: SyncLink | undefined;
    try {
      await this.persist();
      if (this.stopping) return;
      const token = mintToken({ device: this.o.device, audience: this.o.audience, key: this.o.key, nowMs: this.clock.now(), lifetimeS: this.s.tokenLifetimeS });
      const pending = this.connector({
        url: this.s.broker,
        clientId: this.o.device,
        username: this.o.device,
        password: token,
        will: { topic: this.topics.status, payload: this.statusPayload(false), qos: 1, retain: true },
        keepaliveS: this.o.keepaliveS ?? 30,
        connectTimeoutMs: this.s.ackTimeoutMs,
        ca: this.o.ca,
      });
      let abandoned = false;
      pending.then(
        (l) => abandoned && l.destroy(),
        () => undefined,
      );
      try {
        link = await this.within(pending, this.s.ackTimeoutMs, 'connect');
      } catch (err) {
        abandoned = true;
        throw err;
      }
      if (this.stopping || gen !== this.linkGen) {
        link.destroy();
        return;
      }
      this.link = link;
      link.onMessage((m) => this.onMessage(gen, m));
      link.onClose((reason) => {
        if (gen === this.linkGen) this.lostLink(`connection lost: ${reason}`);
      });
      await this.within(link.subscribe([this.topics.ack, this.topics.nack, this.topics.cmd, this.fleetStateTopic]), this.s.ackTimeoutMs, 'subscribe');
      await this.within(link.publish(this.topics.status, this.statusPayload(true), { qos: 1, retain: true }), this.s.ackTimeoutMs, 'birth');
      if (gen !== this.linkGen || this.stopping) return;
      this.connected = true;
      this.connectAttempt = 0;
      this.st.connects++;
      this.log.info({ broker: this.s.broker, bdSeq: this.bdSeq, delivered: this.delivered, backlog: this.ledger.size - this.delivered }, 'sync connected');
      this.emit('connected', { bdSeq: this.bdSeq });
      // The ledger has no events: look for new records now and then (a size read, cheap).
      this.clock.cancel(this.pollTimer);
      this.pollTimer = this.clock.setInterval(
        'sync:poll',
        () => {
          if (this.next < this.ledger.size) this.pump();
        },
        this.o.pollMs ?? 1000,
      );
      this.pump();
    } catch (err) {
      const e = asError(err);
      this.st.lastError = e.message;
      if (gen !== this.linkGen) return;
      this.log.warn({ broker: this.s.broker, err: e.message, code: (err as KeelError).code }, 'sync connect failed');
      const l = this.link ?? link;
      this.lostLink(`connect failed: ${e.message}`, true);
      l?.destroy();
    } finally {
      this.connecting = false;
    }
  }

  /** The link is gone (or never came up): forget what is in flight, reconnect after backoff. */
  private lostLink(reason: string, quiet = false): void {
    const wasConnected = this.connected;
    this.link = undefined;
    this.connected = false;
    this.linkGen++;
    this.resetInFlight();
    this.clock.cancel(this.paceTimer);
    this.paceTimer = undefined;
    this.clock.cancel(this.pollTimer);
    this.pollTimer = undefined;
    if (wasConnected) {
      this.log.warn({ reason }, 'sync disconnected');
      this.emit('disconnected', { reason });
    } else if (!quiet) this.emit('disconnected', { reason });
    if (!this.stopping) this.scheduleReconnect();
  }

  /** Drops the current link (abruptly: the broker publishes the Will) and reconnects later. */
  private dropLink(reason: string): void {
    const l = this.link;
    this.lostLink(reason);
    l?.destroy();
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.stopping) return;
    const attempt = ++this.connectAttempt;
    const delayMs = backoffDelay(attempt, this.s.reconnect, this.random);
    this.st.reconnects++;
    this.emit('backoff', { reason: 'connect', attempt, delayMs });
    this.reconnectTimer = this.clock.setTimeout('sync:reconnect', () => void this.connect(), delayMs);
  }

  /** Races `p` against a named timer on the injected clock. */
  private within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const t = this.clock.setTimeout(`sync:${what}-timeout`, () => reject(new KeelError('KEEL_E_SYNC', `${what} timed out after ${ms} ms`, { retryable: true })), ms);
      p.then(
        (v) => {
          this.clock.cancel(t);
          resolve(v);
        },
        (err) => {
          this.clock.cancel(t);
          reject(err);
        },
      );
    });
  }

  // ------------------------------------------------------------------------------------------
  // Sending

  private canSend(): boolean {
    return (
      this.started &&
      !this.stopping &&
      this.connected &&
      this.fleetOnline !== false &&
      !this.resendHold &&
      this.inflight.length < this.s.maxInFlight &&
      this.next < this.ledger.size
    );
  }

  /** Sends batches while allowed; one loop at a time (a call during a loop makes it go on). */
  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    this.pumpDone = this.pumpLoop()
      .catch((err) => {
        if (this.stopping) return; // the ledger may be closing under us: nothing to retry
        const e = asError(err);
        this.st.lastError = e.message;
        this.log.error({ err: e.message, code: (err as KeelError).code }, 'sync could not build a batch from the ledger; retrying after a backoff');
        this.goBack(`ledger: ${e.message}`);
      })
      .finally(() => {
        this.pumping = false;
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.pump();
        }
      });
  }

  private async pumpLoop(): Promise<void> {
    for (;;) {
      this.pumpAgain = false;
      if (!this.canSend()) return;
      const gen = this.linkGen;
      const start = this.next;
      if (start >= this.urgentTo) {
        const wait = Math.max(this.recordBucket.delayMs(), this.byteBucket.delayMs(), this.liveDelayMs(start));
        if (wait > 0) {
          this.armPace(wait);
          return;
        }
      }
      const { end, entries, caughtUp } = await this.readEntries(start);
      if (entries.length === 0) continue;
      // Syncs the store first: every record this batch carries is durable before it leaves.
      const checkpoint = await this.ledger.signCheckpointAt(end);
      if (gen !== this.linkGen || this.next !== start || !this.canSend()) continue;
      const payload = encodeBatch({ header: { v: 1, device: this.o.device, start, count: entries.length, checkpoint }, entries });
      this.recordBucket.take(entries.length);
      this.byteBucket.take(payload.length);
      const b: InFlight = { start, end, bytes: payload.length, root: checkpointRoot(checkpoint), sentAt: this.clock.monotonic() };
      this.inflight.push(b);
      this.next = end;
      this.bytesPerRecord = payload.length / entries.length;
      if (caughtUp) this.lastLiveAt = b.sentAt;
      this.st.batchesSent++;
      this.st.recordsSent += entries.length;
      this.st.bytesSent += payload.length;
      this.publishBatch(gen, b, payload);
      this.armAckTimer();
      this.emit('sent', { start, end, bytes: payload.length });
      // A macrotask turn: I/O callbacks and timers (sensor data, inference) run between batches.
      await yieldTurn();
    }
  }

  /**
   * Ms until a batch from `start` may go if it would be partial (fewer than batchRecords
   * records, and by the last batch's bytes per record fewer than batchBytes): live records go
   * about once per pollMs. 0 for a full batch (a backlog drains at once, paced by the buckets).
   */
  private liveDelayMs(start: number): number {
    const available = this.ledger.size - start;
    if (available >= this.s.batchRecords || available * this.bytesPerRecord >= this.s.batchBytes) return 0;
    return Math.max(0, this.lastLiveAt + (this.o.pollMs ?? 1000) - this.clock.monotonic());
  }

  /**
   * Entries from `start`: records (or leaf hashes of pruned ones), bounded by count and bytes.
   * `caughtUp`: the batch holds every record the ledger had when reading began.
   */
  private async readEntries(start: number): Promise<{ end: number; entries: BatchEntry[]; caughtUp: boolean }> {
    const size = this.ledger.size;
    const maxEnd = Math.min(size, start + this.s.batchRecords);
    let first = this.ledger.firstAvailable;
    const entries: BatchEntry[] = [];
    let bytes = 0;
    const fits = (cost: number) => entries.length === 0 || bytes + cost <= this.s.batchBytes;
    let i = start;
    let slice = performance.now();
    while (i < maxEnd) {
      // Reading is synchronous file IO: give the event loop a turn every SLICE_MS of it, so a
      // batch of thousands of records never holds up a sensor sample or an inference.
      if (performance.now() - slice > SLICE_MS) {
        await yieldTurn();
        slice = performance.now();
        if (this.stopping) break;
      }
      if (i >= first && this.ledger.readRange) {
        // One read for a run of consecutive records (the store's frames are contiguous).
        let run: Buffer[];
        try {
          run = this.ledger.readRange(i, maxEnd, Math.max(1, Math.min(READ_CHUNK_BYTES, this.s.batchBytes - bytes)));
        } catch (err) {
          if ((err as KeelError).code !== 'KEEL_E_LEDGER_PRUNED') throw err;
          first = this.ledger.firstAvailable;
          continue;
        }
        if (run.length === 0) break;
        for (const r of run) {
          const e: BatchEntry = r.length <= MAX_RECORD_IN_BATCH ? { kind: 'record', bytes: r } : this.oversized(i);
          const cost = 5 + (e.kind === 'record' ? r.length : 32);
          if (!fits(cost)) return { end: i, entries, caughtUp: false };
          entries.push(e);
          bytes += cost;
          i++;
        }
        continue;
      }
      let e: BatchEntry | undefined;
      if (i >= first) {
        try {
          const r = this.ledger.read(i);
          e = r.length <= MAX_RECORD_IN_BATCH ? { kind: 'record', bytes: r } : this.oversized(i);
        } catch (err) {
          // Pruned meanwhile (the disk bound's drop-oldest): its hash is still stored.
          if ((err as KeelError).code !== 'KEEL_E_LEDGER_PRUNED') throw err;
          first = this.ledger.firstAvailable;
        }
      }
      e ??= { kind: 'hash', hash: this.ledger.storedLeafHash(i) };
      const cost = 5 + (e.kind === 'record' ? e.bytes.length : 32);
      if (!fits(cost)) break;
      entries.push(e);
      bytes += cost;
      i++;
    }
    return { end: i, entries, caughtUp: i === size };
  }

  /** A record too large for any batch goes as its hash (and says so). */
  private oversized(index: number): BatchEntry {
    this.log.error({ index }, `record ${index} is larger than a batch can carry; sent as its hash only`);
    return { kind: 'hash', hash: this.ledger.storedLeafHash(index) };
  }

  private publishBatch(gen: number, b: InFlight, payload: Buffer): void {
    const link = this.link;
    if (!link) return;
    link.publish(this.topics.log, payload, { qos: 1 }).then(
      () => {
        if (gen !== this.linkGen) return;
        b.pubackAt = this.lastPubackAt = this.clock.monotonic();
        this.armAckTimer();
      },
      (err) => {
        if (gen !== this.linkGen) return;
        this.st.lastError = asError(err).message;
        this.dropLink(`publish failed: ${asError(err).message}`);
      },
    );
  }

  private armPace(ms: number): void {
    if (this.paceTimer) return;
    this.paceTimer = this.clock.setTimeout(
      'sync:pace',
      () => {
        this.paceTimer = undefined;
        this.pump();
      },
      ms,
    );
  }

  /**
   * One timer for two deadlines: the broker must acknowledge (PUBACK) the oldest unacknowledged
   * batch within ackTimeoutMs of its publish or of the last PUBACK, whichever is later (so a
   * slow link that keeps moving is not cut), else the link is dead; the fleet must ack the
   * oldest batch within ackTimeoutMs of its PUBACK or of the last ack, else it is resent.
   */
  private deadlines(): { puback: number; ack: number } {
    let puback = Infinity;
    const waiting = this.inflight.find((b) => b.pubackAt === undefined);
    if (waiting) puback = Math.max(waiting.sentAt, this.lastPubackAt) + this.s.ackTimeoutMs;
    let ack = Infinity;
    const oldest = this.inflight[0];
    if (oldest?.pubackAt !== undefined) ack = Math.max(oldest.pubackAt, this.lastAckAt) + this.s.ackTimeoutMs;
    return { puback, ack };
  }

  private armAckTimer(): void {
    const d = this.deadlines();
    const at = Math.min(d.puback, d.ack);
    if (at === Infinity || (this.ackTimer && at >= this.ackTimerAt)) return;
    this.clock.cancel(this.ackTimer);
    this.ackTimerAt = at;
    this.ackTimer = this.clock.setTimeout('sync:ack-timeout', () => this.onAckTimer(), Math.max(0, at - this.clock.monotonic()));
  }

  private onAckTimer(): void {
    this.ackTimer = undefined;
    this.ackTimerAt = Infinity;
    const now = this.clock.monotonic();
    const d = this.deadlines();
    if (d.puback <= now) {
      this.st.ackTimeouts++;
      this.log.warn({ timeoutMs: this.s.ackTimeoutMs }, 'the broker acknowledged no batch in time; reconnecting');
      this.dropLink('no PUBACK in time');
      return;
    }
    if (d.ack <= now) {
      this.st.ackTimeouts++;
      const b = this.inflight[0];
      this.log.warn({ start: b.start, end: b.end, timeoutMs: this.s.ackTimeoutMs }, 'no ack from the fleet in time; resending from the last delivered record');
      this.goBack('ack timeout');
      return;
    }
    this.armAckTimer();
  }

  private resetInFlight(): void {
    this.inflight = [];
    this.next = this.delivered;
    this.clock.cancel(this.ackTimer);
    this.ackTimer = undefined;
    this.ackTimerAt = Infinity;
  }

  /** Back to `delivered`; resend after a backoff. */
  private goBack(reason: string): void {
    this.resetInFlight();
    if (this.resendHold || this.stopping) return;
    this.resendHold = true;
    const attempt = ++this.resendAttempt;
    const delayMs = backoffDelay(attempt, this.s.reconnect, this.random);
    this.log.info({ reason, attempt, delayMs, from: this.delivered }, 'sync resends after a backoff');
    this.emit('backoff', { reason: 'resend', attempt, delayMs });
    this.resendTimer = this.clock.setTimeout(
      'sync:resend',
      () => {
        this.resendTimer = undefined;
        this.resendHold = false;
        this.pump();
      },
      delayMs,
    );
  }

  // ------------------------------------------------------------------------------------------
  // Receiving

  private onMessage(gen: number, m: LinkMessage): void {
    if (gen !== this.linkGen) return;
    try {
      if (m.topic === this.topics.ack) this.onAck(m.payload);
      else if (m.topic === this.topics.nack) this.onNack(m.payload);
      else if (m.topic === this.topics.cmd) this.onCmd(m.payload);
      else if (m.topic === this.fleetStateTopic) this.onFleetState(m.payload);
    } catch (err) {
      // A bug here must not take the runtime down; say so loudly.
      this.log.error({ topic: m.topic, err: asError(err).message }, 'sync message handling failed');
    }
  }

  /** Why `note` is not a valid ack of size `expectSize` (if given) for this ledger, or undefined. */
  private ackProblem(note: string, expectSize?: number): string | undefined {
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(note, [this.fleetVerifier]).checkpoint;
    } catch (err) {
      return `cosignature: ${asError(err).message}`;
    }
    if (expectSize !== undefined && cp.size !== expectSize) return `checkpoint size ${cp.size} is not ${expectSize}`;
    return this.checkpointProblem(cp);
  }

  /** Why a (cosignature-verified) checkpoint is not one of this ledger's, or undefined. */
  private checkpointProblem(cp: Checkpoint): string | undefined {
    if (cp.origin !== this.ledger.origin) return `checkpoint origin ${cp.origin} is not this ledger's (${this.ledger.origin})`;
    if (cp.size > this.ledger.size) return `checkpoint size ${cp.size} is beyond this ledger's ${this.ledger.size} records`;
    // The root signed for a batch in flight is the ledger's root at its end (history never
    // changes): comparing with it spares the tree reads of rootAt on every ack.
    const root = this.inflight.find((b) => b.end === cp.size)?.root ?? this.ledger.rootAt(cp.size);
    if (!root.equals(cp.root)) return `checkpoint root is not the root of this ledger's first ${cp.size} records`;
    return undefined;
  }

  private rejectAck(reason: string): void {
    this.st.ackRejects++;
    this.st.lastError = `ack refused: ${reason}`;
    this.log.warn({ reason }, 'ack refused');
    this.emit('ackRejected', { reason });
  }

  private onAck(payload: Buffer): void {
    if (payload.length === 0) return; // a cleared retained message
    if (payload.length > MAX_ACK_BYTES) return this.rejectAck(`${payload.length} bytes is too large for an ack`);
    let text: string;
    try {
      text = utf8.decode(payload);
    } catch {
      return this.rejectAck('not UTF-8');
    }
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(text, [this.fleetVerifier]).checkpoint;
    } catch (err) {
      return this.rejectAck(`cosignature: ${asError(err).message}`);
    }
    if (cp.size <= this.delivered && cp.origin === this.ledger.origin) {
      this.st.duplicateAcks++;
      return;
    }
    const problem = this.checkpointProblem(cp);
    if (problem) return this.rejectAck(problem);
    this.delivered = cp.size;
    this.ackNote = text;
    this.st.acks++;
    this.lastAckAt = this.clock.monotonic();
    this.resendAttempt = 0;
    while (this.inflight.length && this.inflight[0].end <= cp.size) this.inflight.shift();
    if (this.next < cp.size) this.next = cp.size;
    this.clock.cancel(this.ackTimer);
    this.ackTimer = undefined;
    this.ackTimerAt = Infinity;
    this.armAckTimer();
    this.emit('delivered', { size: cp.size });
    this.schedulePersist();
    this.pump();
  }

  private onNack(payload: Buffer): void {
    if (payload.length > MAX_SMALL_JSON) return;
    let n: { start?: unknown; end?: unknown; code?: unknown; reason?: unknown };
    try {
      n = JSON.parse(payload.toString('utf8'));
    } catch {
      this.log.warn('malformed nack ignored');
      return;
    }
    // start/end are null when the fleet could not even decode the batch (docs/fleet.md).
    const range = (v: unknown) => v === null || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
    if (!n || typeof n !== 'object' || !range(n.start) || !range(n.end)) {
      this.log.warn('malformed nack ignored');
      return;
    }
    const start = n.start as number | null;
    const end = n.end as number | null;
    const body = { start: start ?? this.delivered, end: end ?? this.next, code: String(n.code ?? 'KEEL_E_SYNC').slice(0, 64), reason: String(n.reason ?? '').slice(0, 500) };
    // About a batch delivered since, or nothing is outstanding: nothing to resend.
    if (end !== null ? end <= this.delivered : this.next <= this.delivered) return;
    this.st.nacks++;
    const fields = { start, end, code: body.code, reason: body.reason };
    if (body.code === 'KEEL_E_FORK') this.log.error(fields, 'the fleet holds an inconsistent history of this device (fork); it refuses our batches');
    else this.log.warn(fields, 'the fleet refused a batch');
    this.emit('nack', body);
    this.goBack(`nack ${body.code}`);
  }

  private onFleetState(payload: Buffer): void {
    if (payload.length === 0 || payload.length > MAX_SMALL_JSON) return;
    let s: { online?: unknown; cosigner?: unknown };
    try {
      s = JSON.parse(payload.toString('utf8'));
    } catch {
      return;
    }
    if (!s || typeof s !== 'object' || typeof s.online !== 'boolean') return;
    if (typeof s.cosigner === 'string' && this.fleetVkey && s.cosigner !== this.fleetVkey) {
      if (!this.warnedCosigner) this.log.warn({ cosigner: s.cosigner }, 'fleet state from a fleet with another cosigner key ignored');
      this.warnedCosigner = true;
      return;
    }
    const was = this.fleetOnline;
    this.fleetOnline = s.online;
    if (was !== s.online) {
      this.log.info({ online: s.online }, s.online ? 'fleet online: sending backlog' : 'fleet offline: backlog paused');
      this.emit('fleet', { online: s.online });
    }
    if (!s.online) this.resetInFlight();
    else this.pump();
  }

  private onCmd(payload: Buffer): void {
    if (!this.onCommand) {
      this.log.warn('command received but no command handler is configured; ignored');
      return;
    }
    if (this.commandQueue.length >= MAX_QUEUED_COMMANDS) {
      this.log.warn({ queued: this.commandQueue.length }, 'command dropped: too many queued');
      return;
    }
    this.commandQueue.push(payload);
    if (!this.commandRunning) void this.runCommands();
  }

  private async runCommands(): Promise<void> {
    this.commandRunning = true;
    try {
      while (this.commandQueue.length && this.onCommand) {
        const payload = this.commandQueue.shift()!;
        this.st.commands++;
        let result: Buffer | undefined;
        try {
          result = await this.within(this.onCommand(payload), COMMAND_TIMEOUT_MS, 'command');
        } catch (err) {
          this.log.error({ err: asError(err).message }, 'command handler failed');
          continue;
        }
        if (!result) continue;
        const link = this.link;
        if (!link || !this.connected) {
          this.log.warn('command result not sent: offline');
          continue;
        }
        await this.within(link.publish(this.topics.cmdResult, result, { qos: 1 }), this.s.ackTimeoutMs, 'command-result').catch((err) =>
          this.log.warn({ err: asError(err).message }, 'command result not acknowledged by the broker'),
        );
      }
    } finally {
      this.commandRunning = false;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Persistence and pruning

  private persist(): Promise<void> {
    return this.cursor.save({ delivered: this.delivered, bdSeq: this.bdSeq, ...(this.ackNote !== undefined ? { ack: this.ackNote } : {}) });
  }

  /** Saves the delivery state now, or at most persistEveryMs after the last save (then prunes). */
  private schedulePersist(): void {
    if (this.persistTimer || this.stopping) return;
    const wait = this.lastPersistAt + (this.o.persistEveryMs ?? 1000) - this.clock.monotonic();
    if (wait <= 0) {
      this.lastPersistAt = this.clock.monotonic();
      void this.persistThenPrune();
      return;
    }
    this.persistTimer = this.clock.setTimeout(
      'sync:persist',
      () => {
        this.persistTimer = undefined;
        this.schedulePersist();
      },
      wait,
    );
  }

  private async persistThenPrune(): Promise<void> {
    const d = this.delivered;
    try {
      await this.persist();
    } catch (err) {
      this.st.lastError = asError(err).message;
      this.log.error({ err: asError(err).message }, 'cannot save the delivery state; nothing is pruned until it is saved');
      return;
    }
    if (d > this.persistedDelivered) {
      this.persistedDelivered = d;
      this.emit('persisted', { delivered: d });
    }
    if (this.s.pruneDelivered) this.prune();
  }

  /** Prunes below the persisted delivered size; at most every pruneEveryMs, one at a time. */
  private prune(): void {
    if (this.pruning) {
      this.prunePending = true;
      return;
    }
    if (this.pruneTimer) return;
    const wait = this.lastPruneAt + (this.o.pruneEveryMs ?? 5000) - this.clock.monotonic();
    if (wait > 0) {
      this.pruneTimer = this.clock.setTimeout(
        'sync:prune',
        () => {
          this.pruneTimer = undefined;
          this.prune();
        },
        wait,
      );
      return;
    }
    const target = this.persistedDelivered;
    if (target <= this.ledger.firstAvailable) return;
    this.lastPruneAt = this.clock.monotonic();
    this.pruning = this.ledger
      .pruneBefore(target)
      .then((first) => {
        this.emit('pruned', { firstAvailable: first });
      })
      .catch((err) => {
        this.log.error({ err: asError(err).message }, 'pruning delivered records failed');
      })
      .finally(() => {
        this.pruning = undefined;
        if (this.prunePending && !this.stopping) {
          this.prunePending = false;
          this.prune();
        }
      });
  }

  // ------------------------------------------------------------------------------------------
  // For commands, telemetry and shutdown

  /** Sends what the ledger holds now without waiting for pacing or a resend backoff (connects now if waiting to). */
  requestSync(): void {
    if (this.stopping) return;
    this.urgentTo = this.ledger.size;
    this.clock.cancel(this.paceTimer);
    this.paceTimer = undefined;
    if (this.resendHold) {
      this.clock.cancel(this.resendTimer);
      this.resendTimer = undefined;
      this.resendHold = false;
    }
    if (!this.link && this.reconnectTimer) {
      this.clock.cancel(this.reconnectTimer);
      this.reconnectTimer = undefined;
      void this.connect();
      return;
    }
    this.pump();
  }

  /**
   * Republishes the retained birth with the current numbers. It keeps this connection's bdSeq:
   * the Will registered at CONNECT carries it and cannot change without reconnecting, and a
   * birth with a higher bdSeq would make that Will look stale to the fleet. Resolves whether the
   * broker took it; never rejects (commands call it fire-and-forget), failures are logged.
   */
  async rebirth(): Promise<boolean> {
    const link = this.link;
    if (!link || !this.connected) {
      this.log.warn('rebirth requested while offline; the next connection publishes a birth anyway');
      return false;
    }
    try {
      await this.within(link.publish(this.topics.status, this.statusPayload(true), { qos: 1, retain: true }), this.s.ackTimeoutMs, 'birth');
      return true;
    } catch (err) {
      this.log.warn({ err: asError(err).message }, 'rebirth not acknowledged by the broker');
      return false;
    }
  }

  /** Publishes a telemetry payload at QoS 0; false (and counted as dropped) while offline. */
  publishTelemetry(payload: Buffer): boolean {
    const link = this.link;
    if (!link || !this.connected || this.stopping) {
      this.st.telemetryDropped++;
      return false;
    }
    link.publish(this.topics.telemetry, payload, { qos: 0 }).catch(() => undefined);
    this.st.telemetrySent++;
    return true;
  }

  /**
   * Stops: sends nothing new, waits up to `waitMs` (default min(2000, ackTimeoutMs)) for the
   * acks of batches in flight, saves the delivery state, publishes the retained offline status
   * and disconnects cleanly. Safe to call twice.
   */
  stop(o: { waitMs?: number } = {}): Promise<void> {
    this.stopped ??= this.doStop(o.waitMs ?? Math.min(2000, this.s.ackTimeoutMs));
    return this.stopped;
  }

  private async doStop(waitMs: number): Promise<void> {
    this.stopping = true;
    for (const t of [this.reconnectTimer, this.resendTimer, this.paceTimer, this.pruneTimer, this.pollTimer, this.persistTimer]) this.clock.cancel(t);
    this.reconnectTimer = this.resendTimer = this.paceTimer = this.pruneTimer = this.pollTimer = this.persistTimer = undefined;
    if (this.connected && this.inflight.length > 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.off('delivered', check);
          this.off('disconnected', done);
          this.clock.cancel(timer);
          resolve();
        };
        const check = () => {
          if (this.inflight.length === 0) done();
        };
        const timer = this.clock.setTimeout('sync:stop-wait', done, waitMs);
        this.on('delivered', check);
        this.on('disconnected', done);
      });
    }
    this.clock.cancel(this.ackTimer);
    this.ackTimer = undefined;
    // A batch being built finishes (or is dropped) before the ledger can be closed.
    await this.pumpDone;
    await this.pruning;
    await this.persist().catch((err) => this.log.error({ err: asError(err).message }, 'cannot save the delivery state at stop'));
    const link = this.link;
    this.linkGen++; // callbacks of this link are ignored from here on
    this.link = undefined;
    if (link && this.connected) {
      this.connected = false;
      try {
        await this.within(link.publish(this.topics.status, this.statusPayload(false), { qos: 1, retain: true }), 1000, 'offline-status');
        await this.within(link.end(), 1000, 'disconnect');
      } catch (err) {
        this.log.warn({ err: asError(err).message }, 'clean disconnect failed; closing (the broker publishes the Will)');
        link.destroy();
      }
    } else link?.destroy();
    this.connected = false;
    await this.cursor.idle();
    this.log.info({ delivered: this.delivered, backlog: this.ledger.size - this.delivered }, 'sync stopped');
  }
}

/** The root hash of a checkpoint note this device signed (its third line, base64). */
function checkpointRoot(note: string): Buffer {
  const a = note.indexOf('\n');
  const b = note.indexOf('\n', a + 1);
  return Buffer.from(note.slice(b + 1, note.indexOf('\n', b + 1)), 'base64');
}
