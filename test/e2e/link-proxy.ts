/**
 * A TCP proxy between devices and their MQTT broker, in the test process, that can break the
 * link the ways real networks do:
 *
 * - `cut(ms)`: every connection is destroyed (both sides see it at once, as with a dropped
 *   Wi-Fi association) and new ones are refused for `ms`.
 * - `blackhole()` ... `heal()`: nothing is forwarded and nothing is closed. Bytes vanish, so
 *   the device sees its PUBLISH never acknowledged (mqtt.js's publish promise never settles:
 *   only the device's own timeouts get it out) and the broker keeps the stale connection
 *   (its FIN is lost too) until keepalive or a takeover by the same client id. New
 *   connections are accepted and swallowed the same way. On `heal()` the device side of
 *   every swallowed connection is reset; the broker side is left for the broker to find.
 * - `mangle({ duplicateEvery, reorder })`: MQTT-aware. Device PUBLISHes on `.../log` are
 *   sent twice (the copy with the DUP flag, its extra PUBACK swallowed so the device never
 *   sees it) and/or swapped with the next one, so the fleet gets duplicate and reordered
 *   batches over a real broker while the device's protocol state stays consistent.
 *
 * It also watches the protocol: per device connection it tracks the ledger batches sent and
 * not yet covered by a fleet ack (go-back-N resends forget the older ones, a closed
 * connection forgets them all), so a test can check the device's in-flight bound at the wire
 * instead of sampling a gauge.
 */
import net from 'node:net';

/** Where the proxy forwards to. */
export interface ProxyTarget {
  host: string;
  port: number;
}

/** Counters of a proxy. */
export interface ProxyStats {
  /** Connections accepted and forwarded. */
  connections: number;
  /** Connections refused (reset at once) during a cut. */
  refused: number;
  /** Connections destroyed by cuts. */
  cutConnections: number;
  /** Connections (or packets on them) swallowed by a blackhole. */
  swallowedConnections: number;
  swallowedPackets: number;
  /** Batches (PUBLISH on <prefix>/<device>/log) the devices sent. */
  batches: number;
  /** Fleet acks (PUBLISH on <prefix>/<device>/ack) delivered to devices. */
  acks: number;
  /** Batches sent twice, and pairs swapped, by `mangle`. */
  duplicated: number;
  reordered: number;
}

/** What `mangle` does to device batches. */
export interface MangleOptions {
  /** Send every n-th batch twice (0: never). */
  duplicateEvery?: number;
  /** Hold each odd batch back until the next one has gone (a swapped pair; a lone one goes after 200 ms). */
  reorder?: boolean;
}

/** One MQTT control packet as it came off the wire. */
interface Frame {
  type: number;
  flags: number;
  /** The whole packet: fixed header, variable header, payload. */
  raw: Buffer;
  /** Offset of the variable header in `raw`. */
  body: number;
}

/**
 * Splits a byte stream into MQTT control packets (MQTT 3.1.1 section 2.2: one byte of type
 * and flags, then the remaining length as a variable-length integer of 1-4 bytes).
 */
class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Feeds bytes; returns the complete packets now available, in order. */
  push(data: Buffer): Frame[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.buffered < 2) return out;
      const head = this.peek(Math.min(5, this.buffered));
      let len = 0;
      let mult = 1;
      let i = 1;
      for (;;) {
        if (i >= head.length) {
          if (i >= 5) throw new Error('MQTT remaining length longer than 4 bytes');
          return out; // length not complete yet
        }
        const b = head[i++];
        len += (b & 0x7f) * mult;
        mult *= 128;
        if ((b & 0x80) === 0) break;
        if (i >= 5) throw new Error('MQTT remaining length longer than 4 bytes');
      }
      const total = i + len;
      if (this.buffered < total) return out;
      const raw = this.take(total);
      out.push({ type: raw[0] >> 4, flags: raw[0] & 0x0f, raw, body: i });
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0];
    const raw = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return raw;
  }
}

const PUBLISH = 3;
const PUBACK = 4;

/** Topic, packet id and payload of a PUBLISH frame. */
function readPublish(f: Frame): { topic: string; packetId?: number; payload: Buffer } {
  const topicLen = f.raw.readUInt16BE(f.body);
  const topic = f.raw.toString('utf8', f.body + 2, f.body + 2 + topicLen);
  let at = f.body + 2 + topicLen;
  const qos = (f.flags >> 1) & 3;
  let packetId: number | undefined;
  if (qos > 0) {
    packetId = f.raw.readUInt16BE(at);
    at += 2;
  }
  return { topic, packetId, payload: f.raw.subarray(at) };
}

/** `[start, end)` from a batch payload's header ("KLB1", u32 length, JSON), or undefined. */
function batchRange(payload: Buffer): { start: number; end: number } | undefined {
  if (payload.length < 8 || payload.toString('latin1', 0, 4) !== 'KLB1') return undefined;
  const len = payload.readUInt32BE(4);
  try {
    const h = JSON.parse(payload.toString('utf8', 8, 8 + len)) as { start: number; count: number };
    return Number.isSafeInteger(h.start) && Number.isSafeInteger(h.count) ? { start: h.start, end: h.start + h.count } : undefined;
  } catch {
    return undefined;
  }
}

/** One proxied connection: a device socket and its upstream socket. */
interface Pair {
  device: net.Socket;
  upstream: net.Socket;
  /** Set once bytes were dropped: the stream can never be forwarded again. */
  swallowed: boolean;
  /** Batches sent on this connection not yet covered by an ack. */
  outstanding: { start: number; end: number }[];
  /** Device name seen in this connection's batch topics. */
  deviceName?: string;
  /** Highest batch end sent on this connection (a lower start is a go-back-N resend). */
  maxEnd: number;
  /** A batch held back by `reorder`. */
  held?: { frame: Frame; timer: NodeJS.Timeout };
  /** Packet ids whose duplicate's PUBACK must be swallowed. */
  extraPubacks: Map<number, number>;
}

/** The proxy. Start with `LinkProxy.start(target)`; `close()` at the end. */
export class LinkProxy {
  readonly stats: ProxyStats = { connections: 0, refused: 0, cutConnections: 0, swallowedConnections: 0, swallowedPackets: 0, batches: 0, acks: 0, duplicated: 0, reordered: 0 };
  /** Every batch the devices sent, in order: device, ledger range, when (Date.now()). */
  readonly batchLog: { device: string; start: number; end: number; at: number }[] = [];
  /** Per device: the most batches ever outstanding (sent, not yet acked) on one connection. */
  readonly maxOutstanding = new Map<string, number>();
  private readonly pairs = new Set<Pair>();
  /** Upstream sockets of swallowed connections, left open for the broker to discover. */
  private readonly stale = new Set<net.Socket>();
  private refuseUntil = 0;
  private holed = false;
  private mangling: Required<MangleOptions> = { duplicateEvery: 0, reorder: false };
  private batchSeq = 0;

  private constructor(
    private readonly server: net.Server,
    private readonly target: ProxyTarget,
    /** The port the proxy listens on (127.0.0.1). */
    readonly port: number,
  ) {}

  /** Listens on an ephemeral 127.0.0.1 port and forwards every connection to `target`. */
  static async start(target: ProxyTarget): Promise<LinkProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const proxy = new LinkProxy(server, target, (server.address() as net.AddressInfo).port);
    server.on('connection', (s) => proxy.accept(s));
    return proxy;
  }

  /** mqtt://127.0.0.1:<port>. */
  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Whether the link is blackholed now. */
  get blackholed(): boolean {
    return this.holed;
  }

  /** Batches outstanding right now for `device` (all its open connections). */
  outstanding(device: string): number {
    let n = 0;
    for (const p of this.pairs) if (p.deviceName === device && !p.swallowed) n += p.outstanding.length;
    return n;
  }

  /** Destroys every connection and refuses new ones for `ms`. */
  cut(ms: number): void {
    this.refuseUntil = Date.now() + ms;
    for (const p of [...this.pairs]) {
      this.stats.cutConnections++;
      this.drop(p);
    }
  }

  /** Stops forwarding in both directions without closing anything (see the file comment). */
  blackhole(): void {
    this.holed = true;
  }

  /** Ends a blackhole: swallowed connections' device sides are reset; forwarding resumes for new ones. */
  heal(): void {
    this.holed = false;
    for (const p of [...this.pairs]) {
      if (!p.swallowed) continue;
      this.pairs.delete(p);
      this.stale.add(p.upstream);
      p.upstream.once('close', () => this.stale.delete(p.upstream));
      p.device.resetAndDestroy();
    }
  }

  /** Duplicates and/or reorders device batches from now on (`{}` to stop). */
  mangle(o: MangleOptions): void {
    this.mangling = { duplicateEvery: o.duplicateEvery ?? 0, reorder: o.reorder ?? false };
    if (!this.mangling.reorder) for (const p of this.pairs) this.releaseHeld(p);
  }

  /** Closes the listener and every socket, stale ones included. */
  async close(): Promise<void> {
    for (const p of [...this.pairs]) this.drop(p);
    for (const s of this.stale) s.destroy();
    this.stale.clear();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(device: net.Socket): void {
    device.setNoDelay(true);
    if (Date.now() < this.refuseUntil) {
      this.stats.refused++;
      device.resetAndDestroy();
      return;
    }
    this.stats.connections++;
    const upstream = net.connect(this.target.port, this.target.host);
    upstream.setNoDelay(true);
    const pair: Pair = { device, upstream, swallowed: false, outstanding: [], maxEnd: 0, extraPubacks: new Map() };
    this.pairs.add(pair);
    if (this.holed) this.swallow(pair);
    const fromDevice = new FrameReader();
    const fromBroker = new FrameReader();
    device.on('data', (d: Buffer) => {
      if (!this.pairs.has(pair)) return;
      if (this.holed) this.swallow(pair);
      let frames: Frame[];
      try {
        frames = fromDevice.push(d);
      } catch {
        return this.drop(pair);
      }
      // Batches sent into a hole are in flight for the device too: counted, never forwarded.
      for (const f of frames) {
        const batch = this.observeBatch(pair, f);
        if (!pair.swallowed) this.forward(pair, f, batch);
      }
    });
    upstream.on('data', (d: Buffer) => {
      if (!this.pairs.has(pair)) return;
      if (this.holed) this.swallow(pair);
      if (pair.swallowed) return; // the device never sees these
      let frames: Frame[];
      try {
        frames = fromBroker.push(d);
      } catch {
        return this.drop(pair);
      }
      for (const f of frames) this.brokerFrame(pair, f);
    });
    // A close on one side closes the other, except for a swallowed connection whose broker
    // side must not learn that the device went away (the FIN is lost in the hole too).
    const closed = (side: 'device' | 'upstream') => () => {
      if (pair.swallowed && side === 'device') {
        if (this.pairs.delete(pair)) {
          this.stale.add(upstream);
          upstream.once('close', () => this.stale.delete(upstream));
        }
        return;
      }
      this.drop(pair);
    };
    device.on('close', closed('device'));
    upstream.on('close', closed('upstream'));
    device.on('error', () => undefined);
    upstream.on('error', () => undefined);
  }

  private swallow(p: Pair): void {
    if (!p.swallowed) {
      p.swallowed = true;
      this.stats.swallowedConnections++;
      if (p.held) clearTimeout(p.held.timer);
      p.held = undefined;
    }
    this.stats.swallowedPackets++;
  }

  private drop(p: Pair): void {
    if (!this.pairs.delete(p)) return;
    if (p.held) clearTimeout(p.held.timer);
    p.held = undefined;
    p.outstanding = [];
    p.device.resetAndDestroy();
    p.upstream.resetAndDestroy();
  }

  /** Tracks a device batch (the in-flight bound); returns its packet id when `f` is one, else undefined. */
  private observeBatch(p: Pair, f: Frame): { packetId?: number } | undefined {
    if (f.type !== PUBLISH) return undefined;
    const pub = readPublish(f);
    const m = /^[^/]+\/([^/]+)\/log$/.exec(pub.topic);
    const range = m ? batchRange(pub.payload) : undefined;
    if (!m || !range) return undefined;
    this.stats.batches++;
    this.batchLog.push({ device: m[1], ...range, at: Date.now() });
    p.deviceName = m[1];
    // A batch starting below what this connection already sent is a go-back-N resend: the
    // device forgot everything it had in flight.
    if (range.start < p.maxEnd) p.outstanding = [];
    p.maxEnd = Math.max(p.maxEnd, range.end);
    p.outstanding.push(range);
    const max = this.maxOutstanding.get(m[1]) ?? 0;
    if (p.outstanding.length > max) this.maxOutstanding.set(m[1], p.outstanding.length);
    return { packetId: pub.packetId };
  }

  /** Forwards a device packet upstream; batches are duplicated or held back per `mangle`. */
  private forward(p: Pair, f: Frame, batch: { packetId?: number } | undefined): void {
    if (!batch) return void p.upstream.write(f.raw);
    const seq = ++this.batchSeq;
    const packetId = batch.packetId;
    const copies = this.mangling.duplicateEvery > 0 && seq % this.mangling.duplicateEvery === 0 && packetId !== undefined ? 2 : 1;
    const send = (frame: Frame) => {
      p.upstream.write(frame.raw);
      if (copies === 2 && frame === f) {
        // The copy is a redelivery: DUP set [MQTT-3.3.1-1], same packet id; the broker
        // acknowledges both, and the device must see only one PUBACK.
        const dup = Buffer.from(f.raw);
        dup[0] |= 0x08;
        p.upstream.write(dup);
        p.extraPubacks.set(packetId!, (p.extraPubacks.get(packetId!) ?? 0) + 1);
        this.stats.duplicated++;
      }
    };
    if (!this.mangling.reorder) return send(f);
    if (p.held) {
      // Swap: this one first, then the one held back.
      const held = p.held;
      clearTimeout(held.timer);
      p.held = undefined;
      send(f);
      p.upstream.write(held.frame.raw);
      this.stats.reordered++;
      return;
    }
    if (copies === 2) return send(f); // keep duplicates simple: never hold one back
    p.held = { frame: f, timer: setTimeout(() => this.releaseHeld(p), 200) };
  }

  private releaseHeld(p: Pair): void {
    const held = p.held;
    if (!held) return;
    clearTimeout(held.timer);
    p.held = undefined;
    if (this.pairs.has(p) && !p.swallowed) p.upstream.write(held.frame.raw);
  }

  private brokerFrame(p: Pair, f: Frame): void {
    if (f.type === PUBACK && f.raw.length >= f.body + 2) {
      const id = f.raw.readUInt16BE(f.body);
      // The first PUBACK for a duplicated id goes to the device, the next one is swallowed
      // (positive: copies sent, first PUBACK not seen yet; negative: PUBACKs still to swallow).
      // The broker answers both before it reads anything newer from this connection.
      const extra = p.extraPubacks.get(id);
      if (extra !== undefined && extra > 0) p.extraPubacks.set(id, -extra);
      else if (extra !== undefined && extra < 0) {
        if (extra === -1) p.extraPubacks.delete(id);
        else p.extraPubacks.set(id, extra + 1);
        return;
      }
    }
    if (f.type === PUBLISH) {
      const pub = readPublish(f);
      if (/^[^/]+\/[^/]+\/ack$/.test(pub.topic)) {
        this.stats.acks++;
        const size = Number(pub.payload.toString('utf8').split('\n')[1]);
        if (Number.isSafeInteger(size)) p.outstanding = p.outstanding.filter((b) => b.end > size);
      }
    }
    p.device.write(f.raw);
  }
}
