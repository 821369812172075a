/**
 * A size limit on inbound MQTT packets, applied to the byte stream before aedes parses it.
 *
 * aedes 1.2 (through mqtt-packet) has no maximum packet size: it buffers whatever remaining
 * length a fixed header announces, up to 256 MiB [MQTT-2.2.3], before any hook runs. This
 * wrapper reads only the fixed headers (packet type byte and the Remaining Length varint,
 * MQTT 3.1.1 section 2.2.3) as bytes pass through, and destroys the connection as soon as a
 * header announces more than the limit, so an oversized payload is never buffered. The first
 * packet (CONNECT, before authentication) has its own, smaller limit.
 *
 * It is transport-neutral: TCP sockets, TLS sockets and WebSocket streams all pass through it.
 */
import { Duplex } from 'node:stream';

/** Limits for `limitPackets`, bytes of Remaining Length (variable header plus payload). */
export interface PacketLimits {
  /** Largest first packet (CONNECT, unauthenticated). */
  firstPacketMax: number;
  /** Largest later packet. */
  packetMax: number;
  /** Called once when a packet is refused (before the connection is destroyed); announced is -1 for a malformed length. */
  onOversize?: (announced: number, limit: number) => void;
}

/** Raised (as the stream's destroy error) when a packet exceeds its limit. */
export class PacketTooLargeError extends Error {
  readonly announced: number;
  readonly limit: number;
  constructor(announced: number, limit: number) {
    super(`MQTT packet of ${announced} bytes exceeds the ${limit}-byte limit; connection closed`);
    this.name = 'PacketTooLargeError';
    this.announced = announced;
    this.limit = limit;
  }
}

/** Tracks MQTT fixed headers in a byte stream (MQTT 3.1.1 section 2.2). */
export class FrameScanner {
  private state: 'type' | 'length' | 'body' = 'type';
  private lengthValue = 0;
  private lengthMultiplier = 1;
  private lengthBytes = 0;
  private remaining = 0;
  private packets = 0;

  constructor(private readonly limits: Pick<PacketLimits, 'firstPacketMax' | 'packetMax'>) {
    for (const k of ['firstPacketMax', 'packetMax'] as const) {
      const v = limits[k];
      if (!Number.isSafeInteger(v) || v < 2) throw new RangeError(`${k} must be an integer >= 2, got ${v}`);
    }
  }

  /** Feeds bytes; returns undefined while all is well, else the first refused packet's announced size and limit (announced -1: malformed length). */
  scan(chunk: Uint8Array): { announced: number; limit: number } | undefined {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.state === 'body') {
        const take = Math.min(this.remaining, n - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) this.state = 'type';
        continue;
      }
      const b = chunk[i++];
      if (this.state === 'type') {
        this.state = 'length';
        this.lengthValue = 0;
        this.lengthMultiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      // Remaining Length: 7 bits per byte, least significant first, at most 4 bytes [MQTT-2.2.3].
      this.lengthValue += (b & 0x7f) * this.lengthMultiplier;
      this.lengthMultiplier *= 128;
      this.lengthBytes++;
      if (b & 0x80) {
        if (this.lengthBytes >= 4) return { announced: -1, limit: this.limits.packetMax };
        continue;
      }
      const limit = this.packets === 0 ? this.limits.firstPacketMax : this.limits.packetMax;
      this.packets++;
      if (this.lengthValue > limit) return { announced: this.lengthValue, limit };
      this.remaining = this.lengthValue;
      this.state = this.remaining === 0 ? 'type' : 'body';
    }
    return undefined;
  }
}

/**
 * Wraps `inner` (a socket or any byte Duplex) in a Duplex that passes bytes both ways and
 * destroys both when an inbound packet exceeds the limits. Writes and end/destroy go to `inner`.
 */
export function limitPackets(inner: Duplex, limits: PacketLimits): Duplex {
  const scanner = new FrameScanner(limits);
  let refused = false;
  const outer = new Duplex({
    // Backpressure: pause the inner stream while the consumer (aedes) is not reading.
    read() {
      inner.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      if (inner.destroyed) return cb(new Error('connection closed'));
      inner.write(chunk, cb);
    },
    writev(chunks, cb) {
      if (inner.destroyed) return cb(new Error('connection closed'));
      // mqtt-packet writes a packet in several pieces; cork so they leave as one segment.
      inner.cork();
      for (let i = 0; i < chunks.length - 1; i++) inner.write(chunks[i].chunk);
      inner.write(chunks[chunks.length - 1].chunk, cb);
      inner.uncork();
    },
    final(cb) {
      inner.end(cb);
    },
    destroy(err, cb) {
      inner.destroy(err ?? undefined);
      cb(err);
    },
  });
  inner.on('data', (chunk: Buffer) => {
    if (refused) return;
    const over = scanner.scan(chunk);
    if (over !== undefined) {
      refused = true;
      limits.onOversize?.(over.announced, over.limit);
      const err = over.announced < 0 ? new Error('malformed MQTT Remaining Length (more than 4 bytes)') : new PacketTooLargeError(over.announced, over.limit);
      inner.destroy();
      outer.destroy(err);
      return;
    }
    if (!outer.push(chunk)) inner.pause();
  });
  inner.on('end', () => outer.push(null));
  inner.on('error', (err) => outer.destroy(err));
  inner.on('close', () => {
    if (!outer.destroyed) outer.destroy();
  });
  return outer;
}
