/**
 * Fleet ingest over MQTT: subscribes to every device's `/log` (optionally through a
 * `$share/<group>/...` subscription, so several worker processes split the load on a broker
 * that supports it) and `/status`, hands batches to the FleetWitness (verify, store, cosign),
 * and publishes its verdicts: the cosigned checkpoint retained on `/ack`, a JSON refusal on
 * `/nack`. It also keeps the `status` table (birth/death with the bdSeq stale rule) and the
 * fleet's retained state topic (online while connected; the MQTT Will says offline).
 *
 * Flow control: batches are queued as they arrive and processed in groups (one database
 * transaction per group), so a backlog is stored with few fsyncs. When the queue holds more
 * than `maxQueueBytes`, the MQTT client's packet handler is held, which stops reading the
 * socket (TCP backpressure to the broker) instead of growing memory.
 *
 * Acks are per device, not per batch: after each group the device's newest cosigned
 * checkpoint is published once (retained), and it covers every batch that ends at or below
 * its size. A duplicate gets the newest cosigned checkpoint again. Out-of-order batches
 * (start above the held size; common with shared subscriptions, where another worker may be
 * committing the gap) are held and retried every `pendingRetryMs`, and at once when the
 * device's size moves here; at most MAX_PENDING_PER_DEVICE per device.
 *
 * Nothing is acked before its commit. When the database fails (locked, read-only, full),
 * batches are held in bounded memory and retried; anything that does not fit is dropped
 * without an ack, and the device resends it after its ack timeout. Losing nothing never
 * depends on this process's memory.
 */
import { randomBytes } from 'node:crypto';
import { connect as mqttConnect, type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import { SystemClock, type Clock, type TimerHandle } from '../runtime/clock.ts';
import { KeelError } from '../runtime/errors.ts';
import { parseIJson } from '../runtime/ledger/jcs.ts';
import { defaultEd25519 } from '../runtime/ledger/keys.ts';
import { SIGNATURE_TYPE_COSIGNATURE_V1, verifierKey } from '../runtime/ledger/note.ts';
import { DEFAULT_PREFIX, deviceIdProblem, deviceTopics, fleetStateTopic, MAX_ENVELOPE_BYTES, parseDeviceTopic, prefixProblem } from '../runtime/sync/wire.ts';
import { fleetDbError, type FleetDb } from './db.ts';
import { FleetWitness, type Delivery, type ForkEvidence, type Verdict, type WitnessKey, type WitnessStats } from './witness.ts';

/** Connects an MQTT client (the transport slot; mqtt.js `connect` by default). */
export type MqttConnect = (url: string, options: IClientOptions) => MqttClient;

/** Options of `Ingest`. Defaults are in `INGEST_DEFAULTS`. */
export interface IngestOptions {
  /** The open fleet database (openFleetDb). Ingest does not close it. Use a short busy timeout (see INGEST_DEFAULTS). */
  db: FleetDb;
  /** Broker URL: mqtt://host:port, mqtts://, ws://, wss://. */
  broker: string;
  /** MQTT username and password of a service principal (the embedded server passes its in-process credential). */
  username?: string;
  password?: string;
  /** The fleet witness key; `key.name` is the fleet's name (cosigner name, token audience). */
  key: WitnessKey;
  /** Topic prefix, default `keel`. */
  prefix?: string;
  /** Shared-subscription group: subscribe `$share/<group>/<prefix>/+/log` (Mosquitto, EMQX; not aedes 1.2). */
  shareGroup?: string;
  /** MQTT client id; default `keel-ingest-<random>`. */
  clientId?: string;
  clock?: Clock;
  log?: Logger;
  /** Fork alarm, called after the evidence is committed. */
  onFork?: (fork: ForkEvidence) => void;
  /** Extra mqtt.js options (TLS `ca`, `rejectUnauthorized`, `keepalive`...). */
  mqttOptions?: Partial<IClientOptions>;
  /** The transport: mqtt.js `connect` unless given. */
  connect?: MqttConnect;
  /** Publish the retained fleet state topic (online, Will offline). Default true. */
  announce?: boolean;
  /** Tuning; see INGEST_DEFAULTS. */
  maxQueueBytes?: number;
  maxGroupBatches?: number;
  maxGroupBytes?: number;
  maxHeldBytes?: number;
  maxHeldBatches?: number;
  pendingRetryMs?: number;
  pendingMaxAgeMs?: number;
  dbRetryMs?: number;
  dbRetryMaxAgeMs?: number;
  stateEveryMs?: number;
  startTimeoutMs?: number;
}

/** Every default of the ingest, in one place. */
export const INGEST_DEFAULTS = {
  /** Received but unprocessed batches held before the socket is paused, bytes. */
  maxQueueBytes: 64 * 1024 * 1024,
  /** Batches stored in one transaction (one fsync) at most. */
  maxGroupBatches: 64,
  /**
   * Bytes of batches stored in one transaction at most. A transaction runs synchronously on
   * the event loop it shares with the embedded broker: 4 MiB is about 20,000 records, some
   * 150 ms of work, while one fsync per that many records costs next to nothing per record.
   */
  maxGroupBytes: 4 * 1024 * 1024,
  /** Out-of-order and database-retry batches held in memory, bytes and count. */
  maxHeldBytes: 64 * 1024 * 1024,
  maxHeldBatches: 4096,
  /** How often out-of-order batches are retried (another worker may commit the gap), ms. */
  pendingRetryMs: 20,
  /** Out-of-order batches are dropped (no ack; the device resends) after this long, ms. */
  pendingMaxAgeMs: 10_000,
  /** Retry delay after a database failure, ms; doubles while it keeps failing, up to 10x. */
  dbRetryMs: 1000,
  /** Batches held for a failing database are dropped after this long, ms (the device resends). */
  dbRetryMaxAgeMs: 60_000,
  /** Re-announce the online fleet state this often, ms (heals a worker's Will); 0: never. */
  stateEveryMs: 30_000,
  /** start() fails if not connected and subscribed by then, ms. */
  startTimeoutMs: 10_000,
  /** Recommended busy timeout of the database connection ingest uses, ms: ingest is synchronous, so a lock must not freeze the process. */
  busyTimeoutMs: 250,
} as const;

/** Counters of an ingest, for metrics and the console. */
export interface IngestStats extends WitnessStats {
  connected: boolean;
  acksPublished: number;
  nacksPublished: number;
  /** Status messages applied / ignored as stale or for unknown devices / malformed. */
  statusApplied: number;
  statusIgnored: number;
  statusRejected: number;
  /** Batches queued, held out of order, held for the database. */
  queued: number;
  pending: number;
  retrying: number;
  /** Batches dropped without an ack (held too long, or over the memory bound); devices resend. */
  dropped: number;
}

/** Out-of-order batches held per device at most (a device has a few batches in flight). */
const MAX_PENDING_PER_DEVICE = 128;

interface Held {
  delivery: Delivery;
  since: number;
}

function positive(name: string, v: number | undefined, dflt: number, allowZero = false): number {
  const x = v ?? dflt;
  if (!Number.isFinite(x) || x < 0 || (!allowZero && x === 0)) throw new RangeError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, got ${x}`);
  return x;
}

/**
 * Applies a status message from topic device `device` to the `status` table: births and
 * deaths with a bdSeq lower than the held one are stale and ignored (a late Will must not
 * clobber a newer birth). Statuses of devices that are not enrolled are ignored. An empty
 * payload (a cleared retained message) is ignored.
 * @returns 'applied', 'stale' or 'ignored'.
 * @throws KeelError KEEL_E_WIRE for a malformed status; KEEL_E_FLEET when the database fails.
 */
export function applyStatus(db: FleetDb, device: string, payload: Uint8Array, now: number): 'applied' | 'stale' | 'ignored' {
  if (payload.length === 0) return 'ignored';
  if (payload.length > MAX_ENVELOPE_BYTES) throw new KeelError('KEEL_E_WIRE', `status of ${payload.length} bytes exceeds ${MAX_ENVELOPE_BYTES}`);
  let body: unknown;
  try {
    body = parseIJson(Buffer.from(payload).toString('utf8'));
  } catch (err) {
    throw new KeelError('KEEL_E_WIRE', `status is not JSON: ${(err as Error).message}`);
  }
  const b = body as Record<string, unknown> | null;
  if (!b || typeof b !== 'object' || Array.isArray(b)) throw new KeelError('KEEL_E_WIRE', 'status must be a JSON object');
  if (typeof b.online !== 'boolean') throw new KeelError('KEEL_E_WIRE', 'status "online" must be true or false');
  if (b.device !== device) throw new KeelError('KEEL_E_WIRE', `status names device ${JSON.stringify(String(b.device).slice(0, 80))} but was published on the topic of "${device}"`);
  if (typeof b.bdSeq !== 'number' || !Number.isSafeInteger(b.bdSeq) || b.bdSeq < 0) throw new KeelError('KEEL_E_WIRE', 'status "bdSeq" must be a non-negative integer');
  try {
    if (db.prepare('SELECT 1 FROM devices WHERE id = ?').get(device) === undefined) return 'ignored';
    const r = db
      .prepare(
        `INSERT INTO status(device, online, bd_seq, birth, last_seen, faults) VALUES (?, ?, ?, ?, ?, 0)
         ON CONFLICT(device) DO UPDATE SET online = excluded.online, bd_seq = excluded.bd_seq,
           birth = coalesce(excluded.birth, status.birth), last_seen = max(status.last_seen, excluded.last_seen)
         WHERE excluded.bd_seq >= status.bd_seq`,
      )
      .run(device, b.online ? 1 : 0, b.bdSeq, b.online ? JSON.stringify(b) : null, now);
    return r.changes > 0 ? 'applied' : 'stale';
  } catch (err) {
    throw fleetDbError(err, db.name, `recording the status of "${device}"`);
  }
}

/** Receives, verifies, stores and acknowledges device ledger batches over MQTT (see the module comment). */
export class Ingest {
  private readonly o: Required<Omit<IngestOptions, 'username' | 'password' | 'shareGroup' | 'log' | 'onFork' | 'mqttOptions' | 'connect' | 'clientId'>> &
    Pick<IngestOptions, 'username' | 'password' | 'shareGroup' | 'log' | 'mqttOptions'>;
  private readonly witness: FleetWitness;
  private readonly clock: Clock;
  private readonly log?: Logger;
  private readonly connectFn: MqttConnect;
  private readonly clientId: string;
  private readonly cosigner: string;
  private client?: MqttClient;
  private queue: Delivery[] = [];
  private queueBytes = 0;
  private readonly waiters: (() => void)[] = [];
  private scheduled = false;
  private pending: Held[] = [];
  private retrying: Held[] = [];
  private heldBytes = 0;
  private dbDown = false;
  private dbFailures = 0;
  private pendingTimer?: TimerHandle;
  private retryTimer?: TimerHandle;
  private stateTimer?: TimerHandle;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  private readonly counters = { acksPublished: 0, nacksPublished: 0, statusApplied: 0, statusIgnored: 0, statusRejected: 0, dropped: 0 };

  constructor(opts: IngestOptions) {
    if (!opts || typeof opts !== 'object') throw new TypeError('opts must be an object');
    if (typeof opts.broker !== 'string' || !/^(mqtts?|wss?|tcp|tls):\/\//.test(opts.broker)) throw new TypeError(`opts.broker must be an mqtt://, mqtts://, ws:// or wss:// URL, got ${JSON.stringify(opts.broker)}`);
    const prefix = opts.prefix ?? DEFAULT_PREFIX;
    const pp = prefixProblem(prefix);
    if (pp) throw new RangeError(`opts.prefix: ${pp}`);
    if (opts.shareGroup !== undefined && deviceIdProblem(opts.shareGroup)) throw new RangeError(`opts.shareGroup must be one plain topic level (letters, digits, '.', '_', '-'), got ${JSON.stringify(opts.shareGroup)}`);
    const d = INGEST_DEFAULTS;
    this.o = {
      db: opts.db,
      broker: opts.broker,
      key: opts.key,
      prefix,
      clock: opts.clock ?? new SystemClock(),
      announce: opts.announce ?? true,
      maxQueueBytes: positive('maxQueueBytes', opts.maxQueueBytes, d.maxQueueBytes),
      maxGroupBatches: positive('maxGroupBatches', opts.maxGroupBatches, d.maxGroupBatches),
      maxGroupBytes: positive('maxGroupBytes', opts.maxGroupBytes, d.maxGroupBytes),
      maxHeldBytes: positive('maxHeldBytes', opts.maxHeldBytes, d.maxHeldBytes, true),
      maxHeldBatches: positive('maxHeldBatches', opts.maxHeldBatches, d.maxHeldBatches, true),
      pendingRetryMs: positive('pendingRetryMs', opts.pendingRetryMs, d.pendingRetryMs),
      pendingMaxAgeMs: positive('pendingMaxAgeMs', opts.pendingMaxAgeMs, d.pendingMaxAgeMs, true),
      dbRetryMs: positive('dbRetryMs', opts.dbRetryMs, d.dbRetryMs),
      dbRetryMaxAgeMs: positive('dbRetryMaxAgeMs', opts.dbRetryMaxAgeMs, d.dbRetryMaxAgeMs, true),
      stateEveryMs: positive('stateEveryMs', opts.stateEveryMs, d.stateEveryMs, true),
      startTimeoutMs: positive('startTimeoutMs', opts.startTimeoutMs, d.startTimeoutMs),
      username: opts.username,
      password: opts.password,
      shareGroup: opts.shareGroup,
      log: opts.log,
      mqttOptions: opts.mqttOptions,
    };
    this.clock = this.o.clock;
    this.log = opts.log;
    this.connectFn = opts.connect ?? mqttConnect;
    this.clientId = opts.clientId ?? `keel-ingest-${randomBytes(6).toString('hex')}`;
    this.witness = new FleetWitness({ db: opts.db, key: opts.key, clock: this.clock, log: opts.log, onFork: opts.onFork });
    this.cosigner = verifierKey(opts.key.name, defaultEd25519.publicKey(opts.key.privateKey), SIGNATURE_TYPE_COSIGNATURE_V1);
  }

  /** The fleet's cosigner verifier key (type 0x04), as devices configure it. */
  get cosignerKey(): string {
    return this.cosigner;
  }

  /** Counters (a snapshot). */
  get stats(): IngestStats {
    return {
      ...this.witness.stats,
      ...this.counters,
      connected: this.client?.connected ?? false,
      queued: this.queue.length,
      pending: this.pending.length,
      retrying: this.retrying.length,
    };
  }

  /** The log subscription filter (shared when a group is set). */
  get logFilter(): string {
    const f = `${this.o.prefix}/+/log`;
    return this.o.shareGroup ? `$share/${this.o.shareGroup}/${f}` : f;
  }

  private stateBody(online: boolean): string {
    return JSON.stringify({ online, fleet: this.o.key.name, cosigner: this.cosigner, t: this.clock.now() });
  }

  /**
   * Connects, subscribes and announces the fleet online; resolves once subscribed. The client
   * reconnects by itself afterwards (and re-subscribes).
   * @throws KeelError KEEL_E_FLEET when not connected and subscribed within startTimeoutMs.
   */
  start(): Promise<void> {
    if (this.client) return Promise.reject(new Error('Ingest.start: already started'));
    const stateTopic = fleetStateTopic(this.o.prefix);
    const client = this.connectFn(this.o.broker, {
      clientId: this.clientId,
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      username: this.o.username,
      password: this.o.password,
      ...(this.o.announce ? { will: { topic: stateTopic, payload: Buffer.from(this.stateBody(false)), qos: 1, retain: true } } : {}),
      ...this.o.mqttOptions,
    });
    this.client = client;
    // Our own packet handler: it decides when mqtt.js may read the next packet (backpressure).
    client.handleMessage = (packet: IPublishPacket, done: (err?: Error) => void) => this.onPacket(packet, done);
    client.on('error', (err) => this.log?.warn({ err: err.message, broker: this.o.broker }, 'ingest MQTT error'));
    client.on('offline', () => this.log?.warn({ broker: this.o.broker }, 'ingest is offline; reconnecting'));
    client.on('connect', () => {
      this.log?.info({ broker: this.o.broker, filter: this.logFilter }, 'ingest connected');
      if (this.o.announce) this.announce();
    });
    if (this.o.announce && this.o.stateEveryMs > 0) this.stateTimer = this.clock.setInterval('ingest.state-announce', () => this.announce(), this.o.stateEveryMs);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (why: string) => {
        if (settled) return;
        settled = true;
        this.clock.cancel(timer);
        reject(new KeelError('KEEL_E_FLEET', `ingest could not subscribe at ${this.o.broker}: ${why}`, { retryable: true }));
        void this.stop();
      };
      const timer = this.clock.setTimeout('ingest.start-timeout', () => fail(`not connected within ${this.o.startTimeoutMs} ms`), this.o.startTimeoutMs);
      const subscribe = () => {
        client.subscribe(
          { [this.logFilter]: { qos: 1 }, [`${this.o.prefix}/+/status`]: { qos: 1 }, ...(this.o.announce ? { [stateTopic]: { qos: 1 } } : {}) },
          (err, granted) => {
            if (settled) return;
            const refused = (granted ?? []).find((g) => g.qos === 128);
            if (err || refused) return fail(err ? err.message : `the broker refused the subscription to ${refused!.topic} (check the service credential's ACL, and that the broker supports $share)`);
            settled = true;
            this.clock.cancel(timer);
            resolve();
          },
        );
      };
      if (client.connected) subscribe();
      else client.once('connect', subscribe);
    });
  }

  private announce(): void {
    if (!this.client?.connected || this.stopped) return;
    this.client.publish(fleetStateTopic(this.o.prefix), this.stateBody(true), { qos: 1, retain: true }, (err) => {
      if (err) this.log?.warn({ err: err.message }, 'could not announce the fleet state');
    });
  }

  /**
   * Stops: cancels timers, announces offline (best effort, bounded wait) and disconnects.
   * Held batches are dropped unacked; devices resend them.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of [this.pendingTimer, this.retryTimer, this.stateTimer]) this.clock.cancel(t);
    const client = this.client;
    for (const w of this.waiters.splice(0)) w();
    if (!client) return;
    if (client.connected && this.o.announce) {
      await new Promise<void>((resolve) => {
        const t = this.clock.setTimeout('ingest.stop-announce', resolve, 2000);
        client.publish(fleetStateTopic(this.o.prefix), this.stateBody(false), { qos: 1, retain: true }, () => {
          this.clock.cancel(t);
          resolve();
        });
      });
    }
    await new Promise<void>((resolve) => {
      const t = this.clock.setTimeout('ingest.stop-end', () => {
        client.end(true);
        resolve();
      }, 2000);
      client.end(false, {}, () => {
        this.clock.cancel(t);
        resolve();
      });
    });
    this.notifyIdle();
  }

  /** Resolves once nothing is queued, held out of order, or held for the database (tests, shutdown). */
  whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private isIdle(): boolean {
    return this.queue.length === 0 && this.pending.length === 0 && this.retrying.length === 0;
  }

  private notifyIdle(): void {
    if (!this.isIdle() && !this.stopped) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private onPacket(packet: IPublishPacket, done: (err?: Error) => void): void {
    try {
      this.route(packet, done);
    } catch (err) {
      // Never leave mqtt.js waiting: an unhandled packet would stall the connection.
      this.log?.error({ topic: String(packet.topic).slice(0, 200), err: (err as Error).message }, 'ingest failed on a packet; dropped without ack');
      done();
    }
  }

  private route(packet: IPublishPacket, done: (err?: Error) => void): void {
    const topic = packet.topic;
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    const where = parseDeviceTopic(this.o.prefix, topic);
    if (where?.rest === 'log' && !this.stopped) {
      this.queue.push({ device: where.device, payload });
      this.queueBytes += payload.length;
      this.schedule();
      if (this.queueBytes > this.o.maxQueueBytes) {
        this.waiters.push(() => done());
        return;
      }
    } else if (where?.rest === 'status') {
      this.onStatus(where.device, payload);
    } else if (topic === fleetStateTopic(this.o.prefix) && this.o.announce && !this.stopped) {
      // Another worker died (its Will) or stopped and said the fleet is offline; while this one
      // runs the fleet is not, and devices must not pause their backlog until the next
      // periodic announcement.
      if (/"online"\s*:\s*false/.test(payload.toString('utf8', 0, 512))) this.announce();
    }
    done();
  }

  private onStatus(device: string, payload: Buffer): void {
    try {
      const r = applyStatus(this.o.db, device, payload, this.clock.now());
      if (r === 'applied') this.counters.statusApplied++;
      else this.counters.statusIgnored++;
    } catch (err) {
      const e = err as KeelError;
      if (e.code === 'KEEL_E_WIRE') {
        this.counters.statusRejected++;
        this.log?.warn({ device, err: e.message }, 'malformed status ignored');
      } else this.log?.error({ device, err: e.message }, 'could not record a status (the retained status is read again on reconnect)');
    }
  }

  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => this.drain());
  }

  private drain(): void {
    this.scheduled = false;
    if (this.stopped) return;
    const group: Delivery[] = [];
    let bytes = 0;
    while (this.queue.length > 0 && group.length < this.o.maxGroupBatches && (group.length === 0 || bytes + this.queue[0].payload.length <= this.o.maxGroupBytes)) {
      const d = this.queue.shift()!;
      bytes += d.payload.length;
      group.push(d);
    }
    this.queueBytes -= bytes;
    if (group.length > 0) {
      if (this.dbDown) for (const d of group) this.hold(this.retrying, d, this.clock.monotonic());
      else this.settle(group, this.witness.accept(group), this.clock.monotonic());
    }
    if (this.queueBytes <= this.o.maxQueueBytes / 2) for (const w of this.waiters.splice(0)) w();
    if (this.queue.length > 0) this.schedule();
    this.notifyIdle();
  }

  /** Publishes verdicts; holds `wait` and `retry` deliveries. `since` is when they were first held. */
  private settle(group: readonly Delivery[], verdicts: readonly Verdict[], since: number | ((d: Delivery) => number)): void {
    const acks = new Map<string, { size: number; note: string }>();
    let failed = false;
    for (let i = 0; i < group.length; i++) {
      const v = verdicts[i];
      const d = group[i];
      const t = typeof since === 'number' ? since : since(d);
      if (v.kind === 'ack') {
        const a = acks.get(v.device);
        if (!a || v.size > a.size) acks.set(v.device, { size: v.size, note: v.note });
      } else if (v.kind === 'nack') {
        this.publishNack(v);
      } else if (v.kind === 'wait') {
        this.hold(this.pending, d, t);
      } else {
        failed = true;
        this.hold(this.retrying, d, t);
      }
    }
    if (failed) {
      this.dbDown = true;
      this.armRetry();
    }
    for (const [device, a] of acks) this.publishAck(device, a.note);
    // A device's held size moved: its out-of-order batches may fit now.
    if (acks.size > 0 && this.pending.length > 0) {
      const woke = this.pending.filter((h) => acks.has(h.delivery.device));
      if (woke.length > 0) {
        this.pending = this.pending.filter((h) => !acks.has(h.delivery.device));
        for (const h of woke) this.heldBytes -= h.delivery.payload.length;
        this.retryHeld(woke);
      }
    }
    if (this.pending.length > 0) this.armPending();
  }

  private hold(list: Held[], d: Delivery, since: number): void {
    // One device (its batches are signed, so only its key holder) must not crowd out the others.
    const crowded = list === this.pending && this.pending.reduce((n, h) => n + (h.delivery.device === d.device ? 1 : 0), 0) >= MAX_PENDING_PER_DEVICE;
    if (crowded || this.heldBytes + d.payload.length > this.o.maxHeldBytes || this.pending.length + this.retrying.length >= this.o.maxHeldBatches) {
      this.counters.dropped++;
      this.log?.warn({ device: d.device, start: d.prepared?.start }, 'held-batch memory is full; batch dropped without ack (the device resends it)');
      return;
    }
    this.heldBytes += d.payload.length;
    list.push({ delivery: d, since });
  }

  private armPending(): void {
    if (this.pendingTimer || this.stopped) return;
    this.pendingTimer = this.clock.setTimeout('ingest.pending-retry', () => {
      this.pendingTimer = undefined;
      const now = this.clock.monotonic();
      const held = this.pending;
      this.pending = [];
      for (const h of held) this.heldBytes -= h.delivery.payload.length;
      const live = held.filter((h) => {
        if (now - h.since <= this.o.pendingMaxAgeMs) return true;
        this.counters.dropped++;
        this.log?.warn({ device: h.delivery.device, start: h.delivery.prepared?.start }, 'out-of-order batch could not be placed in time; dropped without ack (the device resends from its delivered size)');
        return false;
      });
      this.retryHeld(live);
      this.notifyIdle();
    }, this.o.pendingRetryMs);
  }

  private armRetry(): void {
    if (this.retryTimer || this.stopped) return;
    // Each attempt may block up to the busy timeout (better-sqlite3 is synchronous), so back
    // off while the database keeps failing: dbRetryMs, doubling, at most 10x.
    this.dbFailures++;
    const delay = Math.min(this.o.dbRetryMs * 2 ** Math.min(this.dbFailures - 1, 10), this.o.dbRetryMs * 10);
    this.retryTimer = this.clock.setTimeout('ingest.db-retry', () => {
      this.retryTimer = undefined;
      const now = this.clock.monotonic();
      const held = this.retrying;
      this.retrying = [];
      for (const h of held) this.heldBytes -= h.delivery.payload.length;
      const live = held.filter((h) => {
        if (now - h.since <= this.o.dbRetryMaxAgeMs) return true;
        this.counters.dropped++;
        return false;
      });
      if (live.length < held.length) this.log?.warn({ dropped: held.length - live.length }, 'batches held for the database too long were dropped without ack (devices resend them)');
      this.dbDown = false;
      this.retryHeld(live);
      if (!this.dbDown) {
        this.dbFailures = 0;
        this.log?.info({ batches: live.length }, 'fleet database writable again');
        if (this.queue.length > 0) this.schedule();
      }
      this.notifyIdle();
    }, delay);
  }

  private retryHeld(held: Held[]): void {
    if (held.length === 0) return;
    // Retry in ledger order per device, so an earlier batch unblocks a later one in the same group.
    held.sort((a, b) => (a.delivery.device < b.delivery.device ? -1 : a.delivery.device > b.delivery.device ? 1 : (a.delivery.prepared?.start ?? 0) - (b.delivery.prepared?.start ?? 0)));
    const since = new Map(held.map((h) => [h.delivery, h.since]));
    for (let i = 0; i < held.length; i += this.o.maxGroupBatches) {
      const group = held.slice(i, i + this.o.maxGroupBatches).map((h) => h.delivery);
      if (this.dbDown) {
        for (const d of group) this.hold(this.retrying, d, since.get(d)!);
        continue;
      }
      this.settle(group, this.witness.accept(group), (d) => since.get(d)!);
    }
  }

  private publishAck(device: string, note: string): void {
    const c = this.client;
    if (!c) return;
    c.publish(deviceTopics(this.o.prefix, device).ack, note, { qos: 1, retain: true }, (err) => {
      if (err) this.log?.warn({ device, err: err.message }, 'ack not published (the device resends and is acked again)');
    });
    this.counters.acksPublished++;
  }

  private publishNack(v: Extract<Verdict, { kind: 'nack' }>): void {
    this.log?.warn({ device: v.device, start: v.start, end: v.end, code: v.code, reason: v.reason }, 'batch refused');
    const c = this.client;
    if (!c) return;
    const body = JSON.stringify({ start: v.start ?? null, end: v.end ?? null, code: v.code, reason: v.reason });
    c.publish(deviceTopics(this.o.prefix, v.device).nack, body, { qos: 1, retain: false }, (err) => {
      if (err) this.log?.warn({ device: v.device, err: err.message }, 'nack not published');
    });
    this.counters.nacksPublished++;
  }
}
