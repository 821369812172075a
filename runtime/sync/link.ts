/**
 * The MQTT link device sync runs over, as a small interface (`SyncLink`, made by a
 * `SyncConnector`) with the real implementation on mqtt.js (`mqttConnector`) and an in-memory
 * twin (`MemoryBroker`) for tests of timing logic on a fake clock.
 *
 * Contract of a link (both implementations):
 * - one MQTT 3.1.1 connection with a clean session; the connector resolves after CONNACK
 *   accepted it and rejects (KeelError KEEL_E_SYNC, retryable unless the broker refused the
 *   credentials: KEEL_E_AUTH) otherwise. It never reconnects by itself: the sync client owns
 *   the reconnect loop (a fresh token per connect);
 * - `publish` resolves when the message left (QoS 0) or the broker acknowledged it (QoS 1),
 *   and rejects when the link is down. It may also never settle (mqtt.js issues 1974, 1987):
 *   callers put their own timeout around it;
 * - `end` sends DISCONNECT (the broker discards the Will); `destroy` drops the connection
 *   without one (the broker publishes the Will). `onClose` fires once, for either, or when
 *   the connection is lost.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { KeelError, asError } from '../errors.ts';

/** A message received on a subscription. */
export interface LinkMessage {
  topic: string;
  payload: Buffer;
  /** Whether the broker delivered it as a retained message (sent before this subscription). */
  retain: boolean;
}

/** What a link is opened with. */
export interface LinkConnectOptions {
  /** mqtt://, mqtts://, ws:// or wss:// */
  url: string;
  clientId: string;
  username: string;
  password: string;
  /** The MQTT Will, published by the broker if the connection drops without DISCONNECT. */
  will: { topic: string; payload: Buffer; qos: 0 | 1; retain: boolean };
  /** MQTT keepalive, seconds. */
  keepaliveS: number;
  /** Give up on CONNACK after this long, ms. */
  connectTimeoutMs: number;
  /** PEM CA certificate(s) for mqtts:// and wss://. */
  ca?: Buffer;
}

/** One connection to the broker (see the module comment for the contract). */
export interface SyncLink {
  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void>;
  /** Subscribes to `topics` at QoS 1; resolves after SUBACK. */
  subscribe(topics: readonly string[]): Promise<void>;
  onMessage(fn: (m: LinkMessage) => void): void;
  onClose(fn: (reason: string) => void): void;
  /** Clean disconnect (DISCONNECT sent: no Will). Waits for nothing in flight. */
  end(): Promise<void>;
  /** Abrupt close (no DISCONNECT: the broker publishes the Will). */
  destroy(): void;
  readonly connected: boolean;
}

/** Opens a link. */
export type SyncConnector = (o: LinkConnectOptions) => Promise<SyncLink>;

function syncError(message: string, cause?: unknown): KeelError {
  return new KeelError('KEEL_E_SYNC', message, { cause, retryable: true });
}

// CONNACK return codes [MQTT-3.2.2.3]; 4 and 5 are credential problems.
const CONNACK_REFUSALS: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'client identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

class MqttLink implements SyncLink {
  private readonly client: MqttClient;
  private closed = false;
  private closeFns: ((reason: string) => void)[] = [];
  private lastError?: string;

  constructor(client: MqttClient) {
    this.client = client;
    client.on('error', (err) => {
      this.lastError = err.message;
    });
    client.on('close', () => this.fireClose(this.lastError ?? 'connection closed'));
  }

  get connected(): boolean {
    return !this.closed && this.client.connected;
  }

  private fireClose(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    // Release mqtt.js's state: callbacks of unacknowledged publishes fail now instead of never.
    this.client.end(true);
    for (const fn of this.closeFns) fn(reason);
  }

  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void> {
    if (!this.connected) return Promise.reject(syncError('not connected'));
    return new Promise((resolve, reject) => {
      this.client.publish(topic, payload, { qos: opts.qos, retain: opts.retain ?? false }, (err) => (err ? reject(syncError(`publish to ${topic} failed: ${err.message}`, err)) : resolve()));
    });
  }

  subscribe(topics: readonly string[]): Promise<void> {
    if (!this.connected) return Promise.reject(syncError('not connected'));
    return new Promise((resolve, reject) => {
      this.client.subscribe(
        Object.fromEntries(topics.map((t) => [t, { qos: 1 as const }])),
        (err, granted) => {
          if (err) return reject(syncError(`subscribe failed: ${err.message}`, err));
          // [MQTT-3.9.3] 0x80 in a SUBACK is a refusal (an ACL, typically).
          const refused = (granted ?? []).filter((g) => g.qos === 128).map((g) => g.topic);
          if (refused.length) return reject(new KeelError('KEEL_E_AUTH', `the broker refused the subscription to ${refused.join(', ')}`));
          resolve();
        },
      );
    });
  }

  onMessage(fn: (m: LinkMessage) => void): void {
    this.client.on('message', (topic, payload, packet) => fn({ topic, payload, retain: packet.retain === true }));
  }

  onClose(fn: (reason: string) => void): void {
    this.closeFns.push(fn);
  }

  end(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      // mqtt.js's end(false) first waits for every QoS 1 message in flight, which may be
      // never. With something outstanding, close at once instead: the broker then publishes
      // the Will, which says the same (offline, this bdSeq); the ledger resends the rest.
      const outstanding = Object.keys(this.client.outgoing ?? {}).length > 0;
      this.client.end(outstanding, {}, () => resolve());
    });
  }

  destroy(): void {
    this.client.end(true);
  }
}

/** The real connector: mqtt.js, MQTT 3.1.1, clean session, no automatic reconnect. */
export const mqttConnector: SyncConnector = (o) =>
  new Promise<SyncLink>((resolve, reject) => {
    let settled = false;
    let client: MqttClient;
    try {
      client = mqtt.connect(o.url, {
        clientId: o.clientId,
        username: o.username,
        password: o.password,
        protocolVersion: 4,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: o.connectTimeoutMs,
        keepalive: o.keepaliveS,
        resubscribe: false,
        queueQoSZero: false,
        will: { topic: o.will.topic, payload: o.will.payload, qos: o.will.qos, retain: o.will.retain },
        ...(o.ca ? { ca: o.ca, rejectUnauthorized: true } : {}),
      });
    } catch (err) {
      reject(syncError(`cannot connect to ${o.url}: ${asError(err).message}`, err));
      return;
    }
    // Only our own listeners come off again: mqtt.js keeps state in its own ones.
    const onError = (err: Error & { code?: number | string }) => {
      const code = typeof err.code === 'number' ? err.code : undefined;
      if (code !== undefined && CONNACK_REFUSALS[code]) {
        fail(new KeelError(code === 4 || code === 5 ? 'KEEL_E_AUTH' : 'KEEL_E_SYNC', `the broker ${o.url} refused the connection: ${CONNACK_REFUSALS[code]}`, { cause: err, retryable: true }));
      } else fail(syncError(`cannot connect to ${o.url}: ${err.message}`, err));
    };
    const onClose = () => fail(syncError(`the connection to ${o.url} closed before the broker accepted it`));
    const onConnect = () => {
      if (settled) return;
      settled = true;
      detach();
      resolve(new MqttLink(client));
    };
    const detach = () => {
      client.off('error', onError);
      client.off('close', onClose);
      client.off('connect', onConnect);
    };
    const fail = (err: KeelError) => {
      if (settled) return;
      settled = true;
      detach();
      client.on('error', () => undefined);
      client.end(true);
      reject(err);
    };
    client.on('error', onError);
    client.on('close', onClose);
    client.on('connect', onConnect);
  });

// ---------------------------------------------------------------------------------------------
// In-memory twin

/** Whether MQTT topic filter `filter` (with + and #) matches `topic` [MQTT-4.7]. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return i > 0 || !topic.startsWith('$') ? true : false;
    if (i >= t.length) return false;
    if (f[i] === '+') {
      if (i === 0 && t[0].startsWith('$')) return false;
      continue;
    }
    if (f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

type Subscriber = (m: LinkMessage) => void;

class MemoryLink implements SyncLink {
  private closed = false;
  private msgFns: Subscriber[] = [];
  private closeFns: ((reason: string) => void)[] = [];
  readonly filters: string[] = [];

  constructor(
    private readonly broker: MemoryBroker,
    readonly options: LinkConnectOptions,
  ) {}

  get connected(): boolean {
    return !this.closed;
  }

  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void> {
    if (this.closed) return Promise.reject(syncError('not connected'));
    return this.broker.accept(this, topic, payload, opts.retain ?? false, opts.qos);
  }

  async subscribe(topics: readonly string[]): Promise<void> {
    if (this.closed) throw syncError('not connected');
    await Promise.resolve();
    for (const t of topics) {
      this.filters.push(t);
      for (const [topic, payload] of this.broker.retainedMessages()) if (topicMatches(t, topic)) this.deliver({ topic, payload, retain: true });
    }
  }

  onMessage(fn: Subscriber): void {
    this.msgFns.push(fn);
  }

  onClose(fn: (reason: string) => void): void {
    this.closeFns.push(fn);
  }

  deliver(m: LinkMessage): void {
    queueMicrotask(() => {
      if (!this.closed) for (const fn of this.msgFns) fn(m);
    });
  }

  async end(): Promise<void> {
    this.close('disconnected', false);
  }

  destroy(): void {
    this.close('connection destroyed', true);
  }

  /** Closes; with `will`, the broker publishes the Will. */
  close(reason: string, will: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.broker.detach(this, will);
    queueMicrotask(() => {
      for (const fn of this.closeFns) fn(reason);
    });
  }
}

/**
 * An in-memory MQTT broker for tests: retained messages, + and # filters, the Will on an
 * abrupt close, and switches to refuse connections, swallow publishes (no PUBACK ever, as on
 * a dead link) or drop whole connections. Messages are delivered on a microtask.
 */
export class MemoryBroker {
  /** When set, connects are refused with this error. */
  refuse?: Error;
  /** When it returns 'hang' for a publish, the publish never settles; 'drop' acknowledges and discards it. */
  filter?: (topic: string, payload: Buffer) => 'deliver' | 'drop' | 'hang';
  /** Every connect attempt, with the options it carried. */
  readonly connects: LinkConnectOptions[] = [];
  private readonly links = new Set<MemoryLink>();
  private readonly retained = new Map<string, Buffer>();
  private readonly taps: { filter: string; fn: Subscriber }[] = [];

  /** The connector for a SyncClient. */
  readonly connector: SyncConnector = async (o) => {
    this.connects.push(o);
    await Promise.resolve();
    if (this.refuse) throw this.refuse;
    const link = new MemoryLink(this, o);
    this.links.add(link);
    return link;
  };

  /** Open connections. */
  get connections(): number {
    return this.links.size;
  }

  /** The retained messages. */
  retainedMessages(): [string, Buffer][] {
    return [...this.retained];
  }

  /** Subscribes the test itself (as the fleet would) to `filter`. */
  subscribe(filter: string, fn: Subscriber): void {
    this.taps.push({ filter, fn });
    for (const [topic, payload] of this.retained) if (topicMatches(filter, topic)) queueMicrotask(() => fn({ topic, payload, retain: true }));
  }

  /** Publishes as the test (the fleet). */
  publish(topic: string, payload: Buffer | string, retain = false): void {
    void this.route(topic, Buffer.from(payload), retain);
  }

  /** Drops every connection abruptly (their Wills are published). */
  dropAll(): void {
    for (const l of [...this.links]) l.close('connection lost', true);
  }

  /** @internal A publish from a link. */
  accept(from: MemoryLink, topic: string, payload: Buffer, retain: boolean, _qos: 0 | 1): Promise<void> {
    const verdict = this.filter?.(topic, payload) ?? 'deliver';
    if (verdict === 'hang') return new Promise(() => undefined);
    if (verdict === 'drop') return Promise.resolve();
    return this.route(topic, payload, retain);
  }

  /** @internal A link closed. */
  detach(link: MemoryLink, will: boolean): void {
    this.links.delete(link);
    if (will) {
      const w = link.options.will;
      void this.route(w.topic, w.payload, w.retain);
    }
  }

  private async route(topic: string, payload: Buffer, retain: boolean): Promise<void> {
    if (retain) {
      if (payload.length === 0) this.retained.delete(topic);
      else this.retained.set(topic, payload);
    }
    for (const l of this.links) if (l.filters.some((f) => topicMatches(f, topic))) l.deliver({ topic, payload, retain: false });
    for (const t of this.taps) if (topicMatches(t.filter, topic)) queueMicrotask(() => t.fn({ topic, payload, retain: false }));
  }
}
