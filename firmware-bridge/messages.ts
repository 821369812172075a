/**
 * Typed payloads of the firmware bridge messages (docs/firmware-bridge.md §3, §4): encode a
 * message object to its payload bytes and decode payload bytes back, with the direction
 * rules of §3 and the exact-length and value checks of §4.
 */
import { encodeFrame, PROTOCOL_VERSION, MAX_PAYLOAD, type Frame, type FrameErrorKind } from './codec.ts';

/** Message type bytes (§3). */
export const MessageType = {
  HELLO: 0x01,
  HELLO_ACK: 0x02,
  SAMPLE: 0x03,
  SET: 0x04,
  ACK: 0x05,
  NACK: 0x06,
  HEARTBEAT: 0x07,
  TIMESYNC: 0x08,
  CONFIG: 0x09,
  ERROR: 0x0a,
} as const;

/** Name of each known type byte. */
export const TYPE_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(MessageType).map(([k, v]) => [v, k]));

/** Which way a frame travels: to the MCU (sent by the host) or to the host (sent by the MCU). */
export type Direction = 'toMcu' | 'toHost';

/** NACK reasons (§4.6). */
export const NackReason = {
  BAD_TARGET: 1,
  BAD_VALUE: 2,
  UNSUPPORTED_TYPE: 3,
  BAD_LENGTH: 4,
  UNSUPPORTED_VERSION: 5,
  NOT_READY: 6,
} as const;

/** Human name of a NACK reason (unknown reasons are reported generically, §4.6). */
export function nackReasonName(reason: number): string {
  switch (reason) {
    case 1: return 'bad-target';
    case 2: return 'bad-value';
    case 3: return 'unsupported-type';
    case 4: return 'bad-length';
    case 5: return 'unsupported-version';
    case 6: return 'not-ready';
    default: return `reason ${reason}`;
  }
}

/** ERROR codes (§4.10). */
export const McuErrorCode = { SAMPLES_DROPPED: 1, UART_ERRORS: 2, WATCHDOG_RESET: 3, INPUT_FAILURE: 4, OTHER: 255 } as const;

/** Output kinds in HELLO_ACK (§4.2). */
export const OutputKind = { DIGITAL: 0, PWM: 1 } as const;

/** One output described in HELLO_ACK (§4.2). */
export interface OutputInfo {
  /** MCU pin number (informative; SET addresses the output by index). */
  pin: number;
  /** 0 digital (values 0/1), 1 PWM (values 0..255). */
  kind: number;
  /** Value the MCU drives in failsafe and after HELLO. */
  safeValue: number;
}

/** HELLO (§4.1). */
export interface HelloMsg { kind: 'hello'; maxVersion: number; nonce: number }
/** HELLO_ACK (§4.2). */
export interface HelloAckMsg {
  kind: 'helloAck';
  version: number;
  nonce: number;
  analogCount: number;
  digitalCount: number;
  maxRateHz: number;
  heartbeatTimeoutMs: number;
  outputs: OutputInfo[];
  firmwareId: string;
}
/** SAMPLE (§4.3). */
export interface SampleMsg { kind: 'sample'; channel: number; t0Us: number; periodUs: number; values: number[] }
/** SET (§4.4). */
export interface SetMsg { kind: 'set'; output: number; value: number }
/** ACK (§4.5). */
export interface AckMsg { kind: 'ack'; ackedSeq: number }
/** NACK (§4.6). */
export interface NackMsg { kind: 'nack'; refusedSeq: number; reason: number }
/** HEARTBEAT (§4.7). */
export interface HeartbeatMsg { kind: 'heartbeat'; flags: number }
/** TIMESYNC request, host → MCU (§4.8). */
export interface TimesyncRequestMsg { kind: 'timesyncRequest'; token: number }
/** TIMESYNC reply, MCU → host (§4.8). */
export interface TimesyncReplyMsg { kind: 'timesyncReply'; token: number; mcuTimeUs: number }
/** CONFIG (§4.9). */
export interface ConfigMsg { kind: 'config'; channel: number; rateHz: number }
/** ERROR (§4.10). */
export interface ErrorMsg { kind: 'error'; code: number; text: string }

/** Any v1 message. */
export type Message =
  | HelloMsg | HelloAckMsg | SampleMsg | SetMsg | AckMsg | NackMsg | HeartbeatMsg | TimesyncRequestMsg | TimesyncReplyMsg | ConfigMsg | ErrorMsg;

/** Most values in one SAMPLE (§4.3). */
export const MAX_SAMPLE_VALUES = 100;
/** Most outputs in HELLO_ACK (§4.2). */
export const MAX_OUTPUTS = 32;
/** Most analog (and, separately, digital) inputs in HELLO_ACK (§4.2). */
export const MAX_INPUTS = 64;
/** Longest firmware id (§4.2). */
export const MAX_FIRMWARE_ID = 64;
/** Longest ERROR text (§4.10). */
export const MAX_ERROR_TEXT = 238;

/** The type byte of a message. */
export function typeOf(msg: Message): number {
  switch (msg.kind) {
    case 'hello': return MessageType.HELLO;
    case 'helloAck': return MessageType.HELLO_ACK;
    case 'sample': return MessageType.SAMPLE;
    case 'set': return MessageType.SET;
    case 'ack': return MessageType.ACK;
    case 'nack': return MessageType.NACK;
    case 'heartbeat': return MessageType.HEARTBEAT;
    case 'timesyncRequest':
    case 'timesyncReply': return MessageType.TIMESYNC;
    case 'config': return MessageType.CONFIG;
    case 'error': return MessageType.ERROR;
  }
}

/** The direction a message travels in (§3; HEARTBEAT goes both ways and is reported as toMcu). */
export function directionOf(msg: Message): Direction {
  switch (msg.kind) {
    case 'hello': case 'set': case 'config': case 'timesyncRequest': return 'toMcu';
    case 'heartbeat': return 'toMcu';
    default: return 'toHost';
  }
}

function int(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} must be an integer ${min}..${max}, got ${String(v)}`);
  return v;
}

function ascii(name: string, s: unknown, maxLen: number): Buffer {
  if (typeof s !== 'string') throw new TypeError(`${name} must be a string`);
  // eslint-disable-next-line no-control-regex
  if (!/^[\x20-\x7e]*$/.test(s)) throw new RangeError(`${name} must be printable ASCII (0x20..0x7E)`);
  if (s.length > maxLen) throw new RangeError(`${name} must be at most ${maxLen} characters, got ${s.length}`);
  return Buffer.from(s, 'latin1');
}

/** Encodes a message's payload (§4). Throws TypeError/RangeError naming the field for out-of-range values. */
export function encodePayload(msg: Message): Buffer {
  switch (msg.kind) {
    case 'hello': {
      const b = Buffer.allocUnsafe(5);
      b[0] = int('maxVersion', msg.maxVersion, 1, 255);
      b.writeUInt32LE(int('nonce', msg.nonce, 0, 0xffffffff), 1);
      return b;
    }
    case 'helloAck': {
      if (!Array.isArray(msg.outputs) || msg.outputs.length > MAX_OUTPUTS) throw new RangeError(`outputs must be an array of at most ${MAX_OUTPUTS}`);
      const id = ascii('firmwareId', msg.firmwareId, MAX_FIRMWARE_ID);
      if (id.length === 0) throw new RangeError('firmwareId must not be empty');
      const o = msg.outputs.length;
      const b = Buffer.allocUnsafe(13 + 3 * o + id.length);
      b[0] = int('version', msg.version, 0, 255);
      b.writeUInt32LE(int('nonce', msg.nonce, 0, 0xffffffff), 1);
      b[5] = int('analogCount', msg.analogCount, 0, MAX_INPUTS);
      b[6] = int('digitalCount', msg.digitalCount, 0, MAX_INPUTS);
      b[7] = o;
      b.writeUInt16LE(int('maxRateHz', msg.maxRateHz, 0, 0xffff), 8);
      b.writeUInt16LE(int('heartbeatTimeoutMs', msg.heartbeatTimeoutMs, 0, 0xffff), 10);
      msg.outputs.forEach((out, i) => {
        b[12 + 3 * i] = int(`outputs[${i}].pin`, out.pin, 0, 255);
        const kind = int(`outputs[${i}].kind`, out.kind, 0, 1);
        b[13 + 3 * i] = kind;
        b[14 + 3 * i] = int(`outputs[${i}].safeValue`, out.safeValue, 0, kind === 0 ? 1 : 255);
      });
      b[12 + 3 * o] = id.length;
      id.copy(b, 13 + 3 * o);
      return b;
    }
    case 'sample': {
      const values = msg.values;
      if (!Array.isArray(values) || values.length < 1 || values.length > MAX_SAMPLE_VALUES) {
        throw new RangeError(`values must hold 1..${MAX_SAMPLE_VALUES} numbers`);
      }
      const n = values.length;
      const b = Buffer.allocUnsafe(8 + 2 * n);
      b[0] = int('channel', msg.channel, 0, 255);
      b.writeUInt32LE(int('t0Us', msg.t0Us, 0, 0xffffffff), 1);
      b.writeUInt16LE(int('periodUs', msg.periodUs, 0, 0xffff), 5);
      b[7] = n;
      // The hot path of a simulated MCU and of the encode benchmark: plain byte writes.
      for (let i = 0, o = 8; i < n; i++, o += 2) {
        const v = values[i]!;
        if (!Number.isInteger(v) || v < -32768 || v > 32767) int(`values[${i}]`, v, -32768, 32767);
        b[o] = v & 0xff;
        b[o + 1] = (v >> 8) & 0xff;
      }
      return b;
    }
    case 'set': {
      const b = Buffer.allocUnsafe(3);
      b[0] = int('output', msg.output, 0, 255);
      b.writeUInt16LE(int('value', msg.value, 0, 0xffff), 1);
      return b;
    }
    case 'ack': {
      const b = Buffer.allocUnsafe(2);
      b.writeUInt16LE(int('ackedSeq', msg.ackedSeq, 0, 0xffff), 0);
      return b;
    }
    case 'nack': {
      const b = Buffer.allocUnsafe(3);
      b.writeUInt16LE(int('refusedSeq', msg.refusedSeq, 0, 0xffff), 0);
      b[2] = int('reason', msg.reason, 0, 255);
      return b;
    }
    case 'heartbeat':
      return Buffer.from([int('flags', msg.flags, 0, 255)]);
    case 'timesyncRequest': {
      const b = Buffer.allocUnsafe(4);
      b.writeUInt32LE(int('token', msg.token, 0, 0xffffffff), 0);
      return b;
    }
    case 'timesyncReply': {
      const b = Buffer.allocUnsafe(8);
      b.writeUInt32LE(int('token', msg.token, 0, 0xffffffff), 0);
      b.writeUInt32LE(int('mcuTimeUs', msg.mcuTimeUs, 0, 0xffffffff), 4);
      return b;
    }
    case 'config': {
      const b = Buffer.allocUnsafe(3);
      b[0] = int('channel', msg.channel, 0, 255);
      b.writeUInt16LE(int('rateHz', msg.rateHz, 0, 0xffff), 1);
      return b;
    }
    case 'error': {
      const text = ascii('text', msg.text, MAX_ERROR_TEXT);
      const b = Buffer.allocUnsafe(2 + text.length);
      b[0] = int('code', msg.code, 0, 255);
      b[1] = text.length;
      text.copy(b, 2);
      return b;
    }
    default:
      throw new TypeError(`msg.kind is not a message kind: ${String((msg as { kind?: unknown }).kind)}`);
  }
}

/** Encodes a message as a wire frame (COBS + delimiter) with the given seq and header version. */
export function encodeMessage(msg: Message, seq: number, version = PROTOCOL_VERSION): Buffer {
  const payload = encodePayload(msg);
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`payload of ${msg.kind} exceeds ${MAX_PAYLOAD} bytes`);
  return encodeFrame({ version, type: typeOf(msg), seq, payload });
}

/** Result of decoding a payload: the message, or the error kind of §1.6 (checks 7–9). */
export type PayloadResult = { ok: true; msg: Message } | { ok: false; error: Extract<FrameErrorKind, 'type' | 'length' | 'value'> };

const TYPE_ERR = { ok: false, error: 'type' } as const;
const LEN_ERR = { ok: false, error: 'length' } as const;
const VAL_ERR = { ok: false, error: 'value' } as const;

function printable(b: Buffer): string {
  let s = '';
  for (const c of b) s += c >= 0x20 && c <= 0x7e ? String.fromCharCode(c) : '?';
  return s;
}

/**
 * Decodes the payload of a frame of `type` travelling in `direction` (§3, §4). Unknown types
 * and types sent the wrong way are `type`; wrong lengths are `length`; out-of-range fields
 * that §4 lists as host checks are `value`. Never throws on any input.
 */
export function decodePayload(type: number, p: Buffer, direction: Direction): PayloadResult {
  const toHost = direction === 'toHost';
  switch (type) {
    case MessageType.HELLO:
      if (toHost) return TYPE_ERR;
      if (p.length !== 5) return LEN_ERR;
      return { ok: true, msg: { kind: 'hello', maxVersion: p[0]!, nonce: p.readUInt32LE(1) } };
    case MessageType.HELLO_ACK: {
      if (!toHost) return TYPE_ERR;
      if (p.length < 13) return LEN_ERR;
      const o = p[7]!;
      if (p.length < 13 + 3 * o) return LEN_ERR;
      const idLen = p[12 + 3 * o]!;
      if (p.length !== 13 + 3 * o + idLen) return LEN_ERR;
      const analogCount = p[5]!;
      const digitalCount = p[6]!;
      if (analogCount > MAX_INPUTS || digitalCount > MAX_INPUTS || o > MAX_OUTPUTS || idLen < 1 || idLen > MAX_FIRMWARE_ID) return VAL_ERR;
      const outputs: OutputInfo[] = [];
      for (let i = 0; i < o; i++) {
        const kind = p[13 + 3 * i]!;
        const safeValue = p[14 + 3 * i]!;
        if (kind > 1 || (kind === 0 && safeValue > 1)) return VAL_ERR;
        outputs.push({ pin: p[12 + 3 * i]!, kind, safeValue });
      }
      return {
        ok: true,
        msg: {
          kind: 'helloAck',
          version: p[0]!,
          nonce: p.readUInt32LE(1),
          analogCount,
          digitalCount,
          maxRateHz: p.readUInt16LE(8),
          heartbeatTimeoutMs: p.readUInt16LE(10),
          outputs,
          firmwareId: printable(p.subarray(13 + 3 * o)),
        },
      };
    }
    case MessageType.SAMPLE: {
      if (!toHost) return TYPE_ERR;
      if (p.length < 8) return LEN_ERR;
      const n = p[7]!;
      if (p.length !== 8 + 2 * n) return LEN_ERR;
      if (n < 1 || n > MAX_SAMPLE_VALUES) return VAL_ERR;
      const values = new Array<number>(n);
      for (let i = 0, o = 8; i < n; i++, o += 2) values[i] = ((p[o]! | (p[o + 1]! << 8)) << 16) >> 16; // i16 LE
      return { ok: true, msg: { kind: 'sample', channel: p[0]!, t0Us: p.readUInt32LE(1), periodUs: p.readUInt16LE(5), values } };
    }
    case MessageType.SET:
      if (toHost) return TYPE_ERR;
      if (p.length !== 3) return LEN_ERR;
      return { ok: true, msg: { kind: 'set', output: p[0]!, value: p.readUInt16LE(1) } };
    case MessageType.ACK:
      if (!toHost) return TYPE_ERR;
      if (p.length !== 2) return LEN_ERR;
      return { ok: true, msg: { kind: 'ack', ackedSeq: p.readUInt16LE(0) } };
    case MessageType.NACK:
      if (!toHost) return TYPE_ERR;
      if (p.length !== 3) return LEN_ERR;
      return { ok: true, msg: { kind: 'nack', refusedSeq: p.readUInt16LE(0), reason: p[2]! } };
    case MessageType.HEARTBEAT:
      if (p.length !== 1) return LEN_ERR;
      return { ok: true, msg: { kind: 'heartbeat', flags: p[0]! } };
    case MessageType.TIMESYNC:
      if (toHost) {
        if (p.length !== 8) return LEN_ERR;
        return { ok: true, msg: { kind: 'timesyncReply', token: p.readUInt32LE(0), mcuTimeUs: p.readUInt32LE(4) } };
      }
      if (p.length !== 4) return LEN_ERR;
      return { ok: true, msg: { kind: 'timesyncRequest', token: p.readUInt32LE(0) } };
    case MessageType.CONFIG:
      if (toHost) return TYPE_ERR;
      if (p.length !== 3) return LEN_ERR;
      return { ok: true, msg: { kind: 'config', channel: p[0]!, rateHz: p.readUInt16LE(1) } };
    case MessageType.ERROR: {
      if (!toHost) return TYPE_ERR;
      if (p.length < 2) return LEN_ERR;
      const l = p[1]!;
      if (p.length !== 2 + l) return LEN_ERR;
      return { ok: true, msg: { kind: 'error', code: p[0]!, text: printable(p.subarray(2)) } };
    }
    default:
      return TYPE_ERR;
  }
}

/** Result of checking a whole frame past the codec: message, or error kind with the NACK an MCU would send. */
export type FrameCheck = { ok: true; msg: Message } | { ok: false; error: FrameErrorKind; nack: number | null };

/**
 * Applies checks 6–9 of §1.6 to a frame that passed the codec: version (must be
 * `version`), type/direction, length, values. `nack` is the reason an MCU answers with
 * (§6; null where no NACK is sent: value errors are host-side only).
 */
export function checkFrame(frame: Frame, direction: Direction, version = PROTOCOL_VERSION): FrameCheck {
  if (frame.version !== version) return { ok: false, error: 'version', nack: NackReason.UNSUPPORTED_VERSION };
  const r = decodePayload(frame.type, frame.payload, direction);
  if (r.ok) return r;
  const nack = r.error === 'type' ? NackReason.UNSUPPORTED_TYPE : r.error === 'length' ? NackReason.BAD_LENGTH : null;
  return { ok: false, error: r.error, nack };
}
