/**
 * The firmware bridge wire codec (docs/firmware-bridge.md §1): CRC-16/IBM-3740, COBS,
 * frame encode/decode, and a streaming decoder that resynchronizes at every 0x00 and counts
 * each kind of damage. Pure functions and one small state machine; no IO, no timers.
 *
 * Hand-written on purpose (STYLE.md §7: small, central, must be exactly right) and tested
 * against the shared vectors in firmware-bridge/vectors.json.
 */

/** Header bytes: version u8, type u8, seq u16le (§1.2). */
export const HEADER_BYTES = 4;
/** CRC bytes at the end of a raw frame (§1.3). */
export const CRC_BYTES = 2;
/** Largest payload (§1.5). */
export const MAX_PAYLOAD = 240;
/** Smallest raw frame: header + CRC (§1.5). */
export const MIN_RAW = HEADER_BYTES + CRC_BYTES;
/** Largest raw frame: header + payload + CRC (§1.5). */
export const MAX_RAW = HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES;
/** Most COBS bytes between two delimiters (§1.5). */
export const MAX_ENCODED = MAX_RAW + 1;
/** Largest wire frame including its delimiter (§1.5). */
export const MAX_WIRE = MAX_ENCODED + 1;
/** The protocol version this codec speaks (§1.2). */
export const PROTOCOL_VERSION = 1;

/** Why a chunk or frame was dropped (§1.6); `version`, `type`, `length`, `value` come from later layers. */
export type FrameErrorKind = 'oversize' | 'cobs' | 'short' | 'crc' | 'version' | 'type' | 'length' | 'value';

/** Every error kind, in the order of the checks in §1.6. */
export const FRAME_ERROR_KINDS: readonly FrameErrorKind[] = ['oversize', 'cobs', 'short', 'crc', 'version', 'type', 'length', 'value'];

// ---------------------------------------------------------------- CRC (§1.3)

// CRC-16/IBM-3740: poly 0x1021, init 0xFFFF, not reflected, xorout 0. Table-driven, MSB first.
const CRC_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let b = 0; b < 8; b++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

/** CRC-16/IBM-3740 of `data[start..end)`; the check value over "123456789" is 0x29B1. */
export function crc16(data: Uint8Array, start = 0, end = data.length): number {
  let crc = 0xffff;
  const t = CRC_TABLE;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xff00) ^ t[((crc >>> 8) ^ data[i]!) & 0xff]!;
  return crc;
}

// ---------------------------------------------------------------- COBS (§1.4)

/** Upper bound of COBS output bytes for `n` input bytes (no delimiter). */
export function cobsMaxEncodedLength(n: number): number {
  return n + 1 + Math.floor(n / 254);
}

/**
 * COBS-encodes `src[start..end)` into `dst` at `at`; returns the index after the last byte
 * written (no delimiter). `dst` must have room for `cobsMaxEncodedLength(end - start)`.
 */
export function cobsEncodeInto(src: Uint8Array, dst: Uint8Array, at = 0, start = 0, end = src.length): number {
  let codeAt = at;
  let out = at + 1;
  let code = 1;
  for (let i = start; i < end; i++) {
    const b = src[i]!;
    if (b === 0) {
      dst[codeAt] = code;
      codeAt = out++;
      code = 1;
    } else {
      dst[out++] = b;
      code++;
      // A full block of 254 non-zero bytes carries no implied zero (code 0xFF). Only open a
      // new block if input remains, so 254 non-zero bytes encode as FF + bytes, no trailing 01.
      if (code === 0xff && i + 1 < end) {
        dst[codeAt] = code;
        codeAt = out++;
        code = 1;
      }
    }
  }
  dst[codeAt] = code;
  return out;
}

/** COBS-encodes `src` (no delimiter appended). */
export function cobsEncode(src: Uint8Array): Buffer {
  const dst = Buffer.allocUnsafe(cobsMaxEncodedLength(src.length));
  return dst.subarray(0, cobsEncodeInto(src, dst, 0));
}

/**
 * COBS-decodes `src[start..end)` into `dst` from index 0; returns the decoded length, or -1
 * when the input is not valid COBS (a zero byte, or a code pointing past the end), or -2
 * when the output would exceed `dst.length`.
 */
export function cobsDecodeInto(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  for (let i = start; i < end; i++) if (src[i] === 0) return -1;
  return cobsDecodeNoZeros(src, start, end, dst);
}

// The decoder proper, for input known to hold no 0x00 (a chunk split at delimiters).
function cobsDecodeNoZeros(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  let out = 0;
  let i = start;
  const cap = dst.length;
  while (i < end) {
    const code = src[i]!;
    const blockEnd = i + code;
    if (blockEnd > end) return -1;
    i++;
    if (out + (blockEnd - i) > cap) return -2;
    while (i < blockEnd) dst[out++] = src[i++]!;
    if (code < 0xff && i < end) {
      if (out >= cap) return -2;
      dst[out++] = 0;
    }
  }
  return out;
}

/** COBS-decodes `src` (without delimiter); throws RangeError naming `src` when it is not valid COBS. */
export function cobsDecode(src: Uint8Array): Buffer {
  const dst = Buffer.allocUnsafe(src.length);
  const n = cobsDecodeInto(src, 0, src.length, dst);
  if (n < 0) throw new RangeError('src is not valid COBS');
  return dst.subarray(0, n);
}

// ---------------------------------------------------------------- frames (§1.1, §1.2)

/** A frame that passed checks 1–5 of §1.6: header fields and a payload (owned by the receiver, not shared with the decoder). */
export interface Frame {
  /** Header version byte. */
  version: number;
  /** Message type byte (§3). */
  type: number;
  /** Sequence number, 0..65535 (§2.3). */
  seq: number;
  /** Payload bytes (0..MAX_PAYLOAD). */
  payload: Buffer;
}

/** Builds the raw frame (header | payload | crc) of a frame. Throws RangeError for out-of-range fields. */
export function encodeRaw(frame: Frame): Buffer {
  checkHeader(frame);
  const raw = Buffer.allocUnsafe(HEADER_BYTES + frame.payload.length + CRC_BYTES);
  writeRaw(frame.version, frame.type, frame.seq, frame.payload, raw);
  return raw;
}

// Scratch for the raw frame while encoding: encoding is synchronous, so one buffer serves all.
const RAW_SCRATCH = Buffer.allocUnsafe(MAX_RAW);

/** Encodes a frame for the wire: COBS(raw) followed by the 0x00 delimiter (§1.1). */
export function encodeFrame(frame: Frame): Buffer {
  checkHeader(frame);
  const rawLen = HEADER_BYTES + frame.payload.length + CRC_BYTES;
  writeRaw(frame.version, frame.type, frame.seq, frame.payload, RAW_SCRATCH);
  // A raw frame is at most 246 bytes, so its COBS form is exactly one byte longer (§1.4).
  const out = Buffer.allocUnsafe(rawLen + 2);
  const n = cobsEncodeInto(RAW_SCRATCH, out, 0, 0, rawLen);
  out[n] = 0;
  return n + 1 === out.length ? out : out.subarray(0, n + 1);
}

function checkHeader(frame: Frame): void {
  if (!Number.isInteger(frame.version) || frame.version < 0 || frame.version > 255) throw new RangeError(`frame.version must be 0..255, got ${frame.version}`);
  if (!Number.isInteger(frame.type) || frame.type < 0 || frame.type > 255) throw new RangeError(`frame.type must be 0..255, got ${frame.type}`);
  if (!Number.isInteger(frame.seq) || frame.seq < 0 || frame.seq > 0xffff) throw new RangeError(`frame.seq must be 0..65535, got ${frame.seq}`);
  if (!(frame.payload instanceof Uint8Array)) throw new TypeError('frame.payload must be a Buffer or Uint8Array');
  if (frame.payload.length > MAX_PAYLOAD) throw new RangeError(`frame.payload must be at most ${MAX_PAYLOAD} bytes, got ${frame.payload.length}`);
}

function writeRaw(version: number, type: number, seq: number, payload: Uint8Array, raw: Buffer): void {
  raw[0] = version;
  raw[1] = type;
  raw[2] = seq & 0xff;
  raw[3] = seq >>> 8;
  raw.set(payload, HEADER_BYTES);
  const end = HEADER_BYTES + payload.length;
  const crc = crc16(raw, 0, end);
  raw[end] = crc & 0xff;
  raw[end + 1] = crc >>> 8;
}

/** Result of checking one chunk: a frame, or the error kind of the first failing check. */
export type ChunkResult = { ok: true; frame: Frame } | { ok: false; error: FrameErrorKind };

/**
 * Checks one chunk (the bytes between two delimiters, without them) through checks 2–5 of
 * §1.6: size, COBS, minimum length, CRC. An empty chunk is `short` here; the streaming
 * decoder skips empty chunks before calling this.
 */
export function decodeChunk(chunk: Uint8Array): ChunkResult {
  if (chunk.length > MAX_ENCODED) return { ok: false, error: 'oversize' };
  const raw = Buffer.allocUnsafe(Math.max(1, chunk.length));
  const n = cobsDecodeInto(chunk, 0, chunk.length, raw);
  return checkRaw(raw, n);
}

// `raw` belongs to the frame from here on: the payload is a view of it, not a copy.
function checkRaw(raw: Buffer, n: number): ChunkResult {
  if (n === -1) return { ok: false, error: 'cobs' };
  // -2 cannot happen for chunks within MAX_ENCODED (decoded length <= encoded length - 1),
  // but a defensive answer costs nothing.
  if (n === -2) return { ok: false, error: 'oversize' };
  if (n < MIN_RAW) return { ok: false, error: 'short' };
  const crc = raw[n - 2]! | (raw[n - 1]! << 8);
  if (crc16(raw, 0, n - 2) !== crc) return { ok: false, error: 'crc' };
  return {
    ok: true,
    frame: { version: raw[0]!, type: raw[1]!, seq: raw[2]! | (raw[3]! << 8), payload: raw.subarray(HEADER_BYTES, n - 2) },
  };
}

/** Counters of a streaming decoder. */
export interface DecoderCounters {
  /** Frames that passed checks 1–5. */
  frames: number;
  /** Bytes fed in. */
  bytes: number;
  /** Chunks longer than MAX_ENCODED (§1.6-2). */
  oversize: number;
  /** Chunks that were not valid COBS (§1.6-3). */
  cobs: number;
  /** Decoded frames shorter than MIN_RAW (§1.6-4). */
  short: number;
  /** CRC mismatches (§1.6-5). */
  crc: number;
}

/**
 * Streaming frame decoder: feed it bytes in any split (`push`), it calls `onFrame` for each
 * frame that passes checks 1–5 of §1.6 and `onError` for each dropped chunk. It never holds
 * more than MAX_ENCODED bytes (an over-long chunk is dropped as soon as it is over-long and
 * the rest of it is skipped up to the next 0x00), so no input can make it allocate more.
 * Callback exceptions propagate to the caller of `push` and leave the decoder consistent.
 */
export class FrameDecoder {
  /** Counters since construction (or `resetCounters`). */
  readonly counters: DecoderCounters = { frames: 0, bytes: 0, oversize: 0, cobs: 0, short: 0, crc: 0 };
  private readonly pending = Buffer.allocUnsafe(MAX_ENCODED);
  private pendingLen = 0;
  /** True while skipping the rest of an over-long chunk. */
  private skipping = false;

  constructor(
    private readonly onFrame: (frame: Frame) => void,
    private readonly onError: (kind: FrameErrorKind) => void = () => {},
  ) {}

  /** Feeds bytes. */
  push(data: Uint8Array): void {
    this.counters.bytes += data.length;
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
    let pos = 0;
    const len = buf.length;
    while (pos < len) {
      const z = buf.indexOf(0, pos);
      const end = z < 0 ? len : z;
      if (this.skipping) {
        if (z >= 0) this.skipping = false;
      } else if (this.pendingLen === 0 && z >= 0) {
        // Fast path: a whole chunk inside this buffer, decoded in place.
        if (end > pos) this.chunk(buf, pos, end);
      } else {
        const n = end - pos;
        if (this.pendingLen + n > MAX_ENCODED) {
          this.pendingLen = 0;
          this.fail('oversize');
          if (z < 0) this.skipping = true;
        } else {
          buf.copy(this.pending, this.pendingLen, pos, end);
          this.pendingLen += n;
          if (z >= 0) {
            const m = this.pendingLen;
            this.pendingLen = 0;
            if (m > 0) this.chunk(this.pending, 0, m);
          }
        }
      }
      pos = z < 0 ? len : z + 1;
    }
  }

  /** Drops any partial chunk (for instance after the port was reopened). */
  reset(): void {
    this.pendingLen = 0;
    this.skipping = false;
  }

  /** Bytes of an unfinished chunk currently held (at most MAX_ENCODED). */
  buffered(): number {
    return this.pendingLen;
  }

  private chunk(src: Buffer, start: number, end: number): void {
    if (end - start > MAX_ENCODED) {
      this.fail('oversize');
      return;
    }
    // A fresh buffer per chunk (from Node's pool; decoded length < encoded length), so the
    // frame handed out owns its bytes without a second copy.
    const raw = Buffer.allocUnsafe(end - start);
    const n = cobsDecodeNoZeros(src, start, end, raw);
    const r = checkRaw(raw, n);
    if (r.ok) {
      this.counters.frames++;
      this.onFrame(r.frame);
    } else {
      this.fail(r.error);
    }
  }

  private fail(kind: FrameErrorKind): void {
    if (kind === 'oversize' || kind === 'cobs' || kind === 'short' || kind === 'crc') this.counters[kind]++;
    this.onError(kind);
  }
}
