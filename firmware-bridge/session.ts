/**
 * The host side of a firmware bridge link (docs/firmware-bridge.md §2, §5): one session per
 * serial port. It keeps the port open through the serial supervisor (drivers/serial/
 * supervisor.ts: reopen with backoff after an unplug), handshakes with HELLO (retrying with
 * a growing interval), keeps heartbeats going, synchronizes time, counts every kind of
 * damage and loss, runs SET/CONFIG commands through a bounded window of unacknowledged
 * frames with timeouts and retries, and tells its owners when the link goes down or comes
 * back.
 *
 * States: `closed` (port not open) -> `handshaking` (HELLO sent, waiting for a matching
 * HELLO_ACK) -> `established` -> back to `handshaking` when no MCU frame arrived for
 * `linkTimeoutMs` or the MCU reset, or to `closed` when the port fails. `stopped` is final.
 *
 * Events: `up` (established, with the MCU's capabilities), `down` (once per outage: the link
 * was lost or could not be established), `samples` (one SAMPLE frame, times mapped to host
 * epoch ms), `refused` (a channel or output the MCU does not have or refused: a
 * configuration problem, not a link problem), `failsafe` (the MCU's failsafe flag changed),
 * `mcuError` (an ERROR frame). Listener exceptions are caught and ignored: a listener must
 * not be able to break the link.
 *
 * Timers (all on the injected clock): `bridge:<name>:hello`, `bridge:<name>:heartbeat`,
 * `bridge:<name>:link`, `bridge:<name>:timesync`, `bridge:<name>:ack`, and the supervisor's
 * `serial:<name>:reopen`.
 */
import { EventEmitter } from 'node:events';
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import { DriverError } from '../runtime/errors.ts';
import type { SerialLinkOptions, SerialOpener } from '../drivers/serial/link.ts';
import { SupervisedPort, type ReconnectPolicy } from '../drivers/serial/supervisor.ts';
import { FrameDecoder, PROTOCOL_VERSION, type Frame, type FrameErrorKind } from './codec.ts';
import {
  checkFrame,
  encodeMessage,
  nackReasonName,
  NackReason,
  type HelloAckMsg,
  type Message,
  type OutputInfo,
  type SampleMsg,
} from './messages.ts';
import { McuTimeMap } from './mcu-time.ts';

/** Timing and window settings of a session (§5); every field has a default in `BRIDGE_DEFAULTS`. */
export interface BridgeTiming {
  /** Host HEARTBEAT period, ms (§5.1). */
  heartbeatMs: number;
  /** Link lost after this long without a valid MCU frame, ms (§5.1). */
  linkTimeoutMs: number;
  /** First HELLO retry delay, ms (§2.1). */
  helloTimeoutMs: number;
  /** Longest HELLO retry delay, ms (§2.1). */
  helloMaxMs: number;
  /** Time to wait for an ACK/NACK before sending a command again, ms (§5.3). */
  ackTimeoutMs: number;
  /** Retransmissions of a command before it fails (§5.3). */
  retries: number;
  /** Most unacknowledged commands on the wire (§5.3). */
  window: number;
  /** Most commands waiting for a window slot (§5.3). */
  maxQueued: number;
  /** TIMESYNC period, ms (§5.4). */
  timesyncMs: number;
}

/** Defaults of every session setting (docs/firmware-bridge.md §2.1, §5). */
export const BRIDGE_DEFAULTS: Readonly<BridgeTiming> = Object.freeze({
  heartbeatMs: 250,
  linkTimeoutMs: 1000,
  helloTimeoutMs: 500,
  helloMaxMs: 5000,
  ackTimeoutMs: 250,
  retries: 2,
  window: 4,
  maxQueued: 64,
  timesyncMs: 1000,
});

/** Everything a session needs. */
export interface BridgeSessionOptions extends Partial<BridgeTiming> {
  /** Name used in timer names and messages (the port path by default). */
  name?: string;
  link: SerialLinkOptions;
  opener: SerialOpener;
  clock: Clock;
  /** Uniform [0, 1) source for nonces, tokens and backoff jitter (default Math.random). */
  random?: () => number;
  reconnect?: Partial<ReconnectPolicy>;
}

/** What the MCU announced in HELLO_ACK (§4.2). */
export interface McuInfo {
  version: number;
  firmwareId: string;
  analogCount: number;
  digitalCount: number;
  maxRateHz: number;
  heartbeatTimeoutMs: number;
  outputs: OutputInfo[];
}

/** Values of one SAMPLE frame with host times. */
export interface ChannelSamples {
  channel: number;
  /** Host epoch ms of the first value. */
  t0: number;
  /** Host ms between values. */
  periodMs: number;
  values: number[];
  /** Whether the times come from a time-sync estimate (false: stamped at receipt, §5.4). */
  synced: boolean;
}

/** Counters of a session (§7). */
export interface BridgeStats {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  oversize: number;
  cobs: number;
  short: number;
  crc: number;
  version: number;
  type: number;
  length: number;
  value: number;
  lostFrames: number;
  seqResets: number;
  mcuResets: number;
  nacks: number;
  unacked: number;
  strayAcks: number;
  unknownChannel: number;
  mcuErrors: number;
  handshakes: number;
  linkLost: number;
  reopens: number;
  /** Frames that could not be written (port down, backlog full). */
  writeFailures: number;
  /** Commands refused because the queue was full. */
  queueFull: number;
  /** Last failsafe flag the MCU reported. */
  failsafe: boolean;
  /** Round-trip time of the time estimate in use, ms (NaN before the first). */
  rttMs: number;
  /** Current state. */
  state: BridgeState;
}

/** Session states; see the top of this file. */
export type BridgeState = 'idle' | 'closed' | 'handshaking' | 'established' | 'stopped';

/** Events of a session. */
export interface BridgeSessionEvents {
  up: [McuInfo];
  down: [DriverError];
  samples: [ChannelSamples];
  /** The MCU lacks or refused a channel the owners asked for (a configuration problem). */
  refused: [DriverError, { channel: number }];
  failsafe: [boolean];
  mcuError: [{ code: number; text: string }];
}

interface Command {
  msg: Extract<Message, { kind: 'set' } | { kind: 'config' }>;
  attempts: number;
  seqs: number[];
  timer: TimerHandle | undefined;
  waiters: { resolve: () => void; reject: (e: DriverError) => void }[];
}

function checkTiming(t: BridgeTiming): void {
  const positive = (k: keyof BridgeTiming, max: number) => {
    const v = t[k];
    if (!Number.isInteger(v) || v < 1 || v > max) throw new RangeError(`options.${k} must be an integer 1..${max}, got ${String(v)}`);
  };
  positive('heartbeatMs', 60_000);
  positive('linkTimeoutMs', 600_000);
  positive('helloTimeoutMs', 60_000);
  positive('helloMaxMs', 600_000);
  positive('ackTimeoutMs', 60_000);
  positive('window', 64);
  positive('maxQueued', 10_000);
  positive('timesyncMs', 3_600_000);
  if (!Number.isInteger(t.retries) || t.retries < 0 || t.retries > 100) throw new RangeError(`options.retries must be an integer 0..100, got ${String(t.retries)}`);
  if (t.helloMaxMs < t.helloTimeoutMs) throw new RangeError('options.helloMaxMs must be at least options.helloTimeoutMs');
}

/** Messages a bridge DriverError may carry as `bridgeReason` for callers that branch on it. */
export type BridgeFailure = 'link-down' | 'no-ack' | 'nack' | 'queue-full' | 'no-such-target' | 'bad-value' | 'version' | 'stopped';

/** A DriverError with the bridge failure kind attached (callers test `bridgeReason`, never the message). */
export function bridgeError(code: 'KEEL_E_SERIAL_IO' | 'KEEL_E_ACTUATOR' | 'KEEL_E_CONFIG', reason: BridgeFailure, message: string, retryable: boolean): DriverError & { bridgeReason: BridgeFailure } {
  return Object.assign(new DriverError(code, message, { retryable }), { bridgeReason: reason });
}

/** One host-side bridge link over one serial port; see the top of this file. */
export class BridgeSession extends EventEmitter<BridgeSessionEvents> {
  readonly name: string;
  readonly path: string;
  private readonly clock: Clock;
  private readonly random: () => number;
  private timing: BridgeTiming;
  private readonly port: SupervisedPort;
  private readonly decoder: FrameDecoder;
  private readonly timeMap = new McuTimeMap();
  private st: BridgeState = 'idle';
  private mcu: McuInfo | null = null;
  private txSeq = 0;
  private expectSeq: number | null = null;
  private lastRx = 0; // monotonic ms of the last valid MCU frame
  private nonce = 0;
  private helloDelay = 0;
  private helloTimer: TimerHandle | undefined;
  private heartbeatTimer: TimerHandle | undefined;
  private linkTimer: TimerHandle | undefined;
  private timesyncTimer: TimerHandle | undefined;
  /** A `down` was emitted and no `up` since. */
  private outage = false;
  private lastDownKey = '';
  private failsafeFlag = false;
  private readonly syncs = new Map<number, number>(); // token -> host monotonic send time
  private readonly inflight = new Map<number, Command>(); // seq of every attempt -> command
  private readonly inflightCommands = new Set<Command>();
  private readonly queue: Command[] = [];
  /** Desired sample rate per channel, per subscriber. */
  private readonly subscriptions = new Map<number, Map<symbol, number>>();
  private readonly counters = {
    framesIn: 0, framesOut: 0, bytesOut: 0, version: 0, type: 0, length: 0, value: 0, lostFrames: 0, seqResets: 0, mcuResets: 0,
    nacks: 0, unacked: 0, strayAcks: 0, unknownChannel: 0, mcuErrors: 0, handshakes: 0, linkLost: 0, writeFailures: 0, queueFull: 0,
  };

  constructor(options: BridgeSessionOptions) {
    super();
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    if (!options.clock || typeof options.clock.setTimeout !== 'function') throw new TypeError('options.clock must be a Clock');
    if (!options.opener || typeof options.opener.open !== 'function') throw new TypeError('options.opener must be a SerialOpener');
    if (!options.link || typeof options.link.path !== 'string' || options.link.path.length === 0) throw new TypeError('options.link.path must be a device path');
    this.timing = { ...BRIDGE_DEFAULTS };
    for (const k of Object.keys(BRIDGE_DEFAULTS) as (keyof BridgeTiming)[]) if (options[k] !== undefined) this.timing[k] = options[k] as number;
    checkTiming(this.timing);
    this.clock = options.clock;
    this.random = options.random ?? Math.random;
    this.path = options.link.path;
    this.name = options.name ?? options.link.path;
    this.decoder = new FrameDecoder((f) => this.onFrame(f), (k) => this.onBadChunk(k));
    this.port = new SupervisedPort({
      name: this.name,
      link: options.link,
      opener: options.opener,
      clock: options.clock,
      reconnect: options.reconnect,
      random: options.random,
      hooks: {
        data: (chunk) => this.decoder.push(chunk),
        connected: () => this.onConnected(),
        fault: (err) => this.onPortFault(err),
      },
    });
  }

  /** Current state. */
  get state(): BridgeState {
    return this.st;
  }

  /** The MCU's capabilities while established (null otherwise). */
  get info(): McuInfo | null {
    return this.st === 'established' ? this.mcu : null;
  }

  /** Whether a `down` was reported and the link has not come back since. */
  get inOutage(): boolean {
    return this.outage;
  }

  /** The settings in use. */
  get settings(): Readonly<BridgeTiming> {
    return this.timing;
  }

  /**
   * Changes heartbeatMs and/or linkTimeoutMs while running (the hub recomputes them when
   * several configs share one port). Throws RangeError for bad values.
   */
  retime(t: Partial<Pick<BridgeTiming, 'heartbeatMs' | 'linkTimeoutMs'>>): void {
    const next = { ...this.timing };
    if (t.heartbeatMs !== undefined) next.heartbeatMs = t.heartbeatMs;
    if (t.linkTimeoutMs !== undefined) next.linkTimeoutMs = t.linkTimeoutMs;
    checkTiming(next);
    const changed = next.heartbeatMs !== this.timing.heartbeatMs || next.linkTimeoutMs !== this.timing.linkTimeoutMs;
    this.timing = next;
    if (changed && this.st === 'established') this.startLinkTimers();
  }

  /** Starts the port supervision; resolves after the first open attempt (the handshake continues). Idempotent. */
  async start(): Promise<void> {
    if (this.st === 'stopped') throw bridgeError('KEEL_E_SERIAL_IO', 'stopped', `bridge ${this.name} was stopped; create a new session`, false);
    if (this.st !== 'idle') return;
    this.st = 'closed';
    await this.port.start();
  }

  /** Stops: fails open commands, cancels every timer, closes the port. Idempotent. */
  async stop(): Promise<void> {
    if (this.st === 'stopped') return;
    this.st = 'stopped';
    this.cancelTimers();
    this.failCommands(bridgeError('KEEL_E_SERIAL_IO', 'stopped', `bridge ${this.name} stopped`, false));
    await this.port.stop();
  }

  /** Counters and state (§7). */
  stats(): BridgeStats {
    const d = this.decoder.counters;
    const p = this.port.stats();
    const est = this.timeMap.estimate();
    return {
      ...this.counters,
      bytesIn: d.bytes,
      oversize: d.oversize,
      cobs: d.cobs,
      short: d.short,
      crc: d.crc,
      reopens: p.reconnects,
      failsafe: this.failsafeFlag,
      rttMs: est ? est.rttMs : NaN,
      state: this.st,
    };
  }

  /**
   * Asks for samples of `channel` at `rateHz` (0 = off) on behalf of `owner`; the MCU is
   * configured with the highest rate any owner asked for, now if established and again after
   * every handshake. Problems (no such channel, rate too high) come as `refused` events.
   */
  subscribe(owner: symbol, channel: number, rateHz: number): void {
    if (!Number.isInteger(channel) || channel < 0 || channel > 255) throw new RangeError(`channel must be an integer 0..255, got ${channel}`);
    if (!Number.isInteger(rateHz) || rateHz < 0 || rateHz > 65535) throw new RangeError(`rateHz must be an integer 0..65535, got ${rateHz}`);
    let m = this.subscriptions.get(channel);
    if (!m) this.subscriptions.set(channel, (m = new Map()));
    const before = this.rateOf(channel);
    m.set(owner, rateHz);
    if (this.st === 'established' && this.rateOf(channel) !== before) this.configureChannel(channel);
  }

  /** Withdraws `owner`'s wishes; channels nobody wants any more are turned off. */
  unsubscribe(owner: symbol): void {
    for (const [channel, m] of this.subscriptions) {
      if (!m.delete(owner)) continue;
      if (m.size === 0) this.subscriptions.delete(channel);
      if (this.st === 'established') this.configureChannel(channel);
    }
  }

  /**
   * Drives output `output` to `value` (SET, §4.4), resolving on the MCU's ACK. Rejects with
   * a DriverError carrying `bridgeReason`: `link-down`, `no-ack` (retries exhausted) and
   * `queue-full` are retryable; `nack`, `no-such-target`, `bad-value` are not.
   */
  set(output: number, value: number): Promise<void> {
    if (!Number.isInteger(output) || output < 0 || output > 255) return Promise.reject(new RangeError(`output must be an integer 0..255, got ${output}`));
    if (!Number.isInteger(value) || value < 0 || value > 65535) return Promise.reject(new RangeError(`value must be an integer 0..65535, got ${value}`));
    const mcu = this.info;
    if (mcu) {
      const o = mcu.outputs[output];
      if (!o) return Promise.reject(bridgeError('KEEL_E_ACTUATOR', 'no-such-target', `MCU ${mcu.firmwareId} on ${this.path} has no output ${output} (it has ${mcu.outputs.length})`, false));
      const max = o.kind === 0 ? 1 : 255;
      if (value > max) return Promise.reject(bridgeError('KEEL_E_ACTUATOR', 'bad-value', `output ${output} (pin ${o.pin}, ${o.kind === 0 ? 'digital' : 'PWM'}) takes 0..${max}, not ${value}`, false));
    }
    return this.command({ kind: 'set', output, value });
  }

  // ------------------------------------------------------------------ port events

  private onConnected(): void {
    if (this.st === 'stopped') return;
    this.decoder.reset();
    this.txSeq = 0;
    this.expectSeq = null;
    this.beginHandshake();
  }

  private onPortFault(err: DriverError): void {
    if (this.st === 'stopped') return;
    const wasUp = this.st === 'established';
    this.st = 'closed';
    this.cancelTimers();
    this.linkDown(err, wasUp);
  }

  // ------------------------------------------------------------------ handshake (§2.1)

  private beginHandshake(): void {
    this.cancelTimers();
    this.st = 'handshaking';
    this.mcu = null;
    this.helloDelay = this.timing.helloTimeoutMs;
    this.sendHello();
  }

  private sendHello(): void {
    this.nonce = Math.floor(this.random() * 0x1_0000_0000) >>> 0;
    // A lone delimiter first ends whatever partial chunk the MCU holds (§1.6).
    this.helloTimer = this.clock.setTimeout(`bridge:${this.name}:hello`, () => this.onHelloTimeout(), this.helloDelay);
    this.writeRaw(Buffer.from([0]));
    this.send({ kind: 'hello', maxVersion: PROTOCOL_VERSION, nonce: this.nonce });
  }

  private onHelloTimeout(): void {
    this.helloTimer = undefined;
    if (this.st !== 'handshaking') return;
    this.linkDown(bridgeError('KEEL_E_SERIAL_IO', 'link-down', `MCU on ${this.path} does not answer HELLO (no HELLO_ACK within ${this.helloDelay} ms); check the firmware, baud rate and wiring`, true), false);
    this.helloDelay = Math.min(this.timing.helloMaxMs, this.helloDelay * 2);
    this.sendHello();
  }

  private onHelloAck(m: HelloAckMsg, seq: number): void {
    if (this.st !== 'handshaking' || m.nonce !== this.nonce) return; // stale (§2.1)
    this.expectSeq = (seq + 1) & 0xffff; // not counted as a gap (§2.3)
    if (m.version === 0 || m.version > PROTOCOL_VERSION) {
      // No common version: refuse, and keep asking slowly (a newer host may be installed).
      this.clock.cancel(this.helloTimer);
      this.helloDelay = this.timing.helloMaxMs;
      this.linkDown(
        bridgeError('KEEL_E_SERIAL_IO', 'version', `MCU firmware "${m.firmwareId}" on ${this.path} speaks no protocol version in common with this host (host speaks ${PROTOCOL_VERSION}, MCU chose ${m.version}); update the firmware or keel`, false),
        false,
      );
      this.helloTimer = this.clock.setTimeout(`bridge:${this.name}:hello`, () => this.onHelloTimeout(), this.helloDelay);
      return;
    }
    this.clock.cancel(this.helloTimer);
    this.helloTimer = undefined;
    this.mcu = {
      version: m.version,
      firmwareId: m.firmwareId,
      analogCount: m.analogCount,
      digitalCount: m.digitalCount,
      maxRateHz: m.maxRateHz,
      heartbeatTimeoutMs: m.heartbeatTimeoutMs,
      outputs: m.outputs,
    };
    this.st = 'established';
    this.counters.handshakes++;
    this.lastRx = this.clock.monotonic();
    this.failsafeFlag = false;
    this.timeMap.reset();
    this.syncs.clear();
    this.startLinkTimers();
    this.timesyncTimer = this.clock.setInterval(`bridge:${this.name}:timesync`, () => this.sendTimesync(), this.timing.timesyncMs);
    this.sendTimesync();
    for (const channel of this.subscriptions.keys()) this.configureChannel(channel);
    this.outage = false;
    this.lastDownKey = '';
    this.safeEmit('up', this.mcu);
  }

  private startLinkTimers(): void {
    this.clock.cancel(this.heartbeatTimer);
    this.clock.cancel(this.linkTimer);
    const mcuLimit = this.mcu?.heartbeatTimeoutMs ?? 0;
    // Two lost heartbeats must not trip the MCU's failsafe (§5.1).
    const every = mcuLimit > 0 ? Math.max(1, Math.min(this.timing.heartbeatMs, Math.floor(mcuLimit / 3))) : this.timing.heartbeatMs;
    this.heartbeatTimer = this.clock.setInterval(`bridge:${this.name}:heartbeat`, () => this.send({ kind: 'heartbeat', flags: 0 }), every);
    // Checked at a tenth of the timeout: loss is declared within 1.1 x linkTimeoutMs.
    const check = Math.max(1, Math.floor(this.timing.linkTimeoutMs / 10));
    this.linkTimer = this.clock.setInterval(`bridge:${this.name}:link`, () => this.checkLink(), check);
  }

  private checkLink(): void {
    if (this.st !== 'established') return;
    const silent = this.clock.monotonic() - this.lastRx;
    if (silent < this.timing.linkTimeoutMs) return;
    this.linkDown(bridgeError('KEEL_E_SERIAL_IO', 'link-down', `MCU on ${this.path} went silent: no valid frame for ${Math.round(silent)} ms (limit ${this.timing.linkTimeoutMs} ms)`, true), true);
    this.beginHandshake();
  }

  /** Reports an outage (once per outage) and fails every open command. */
  private linkDown(err: DriverError, wasUp: boolean): void {
    if (wasUp) this.counters.linkLost++;
    this.failCommands(bridgeError('KEEL_E_SERIAL_IO', 'link-down', `link to MCU on ${this.path} is down: ${err.message}`, true));
    this.syncs.clear();
    // One `down` per outage; again only when it turns out to need a human (no common
    // version), since retrying will not fix that.
    const key = (err as { bridgeReason?: string }).bridgeReason === 'version' ? 'version' : 'link';
    if (this.outage && (key === 'link' || this.lastDownKey === 'version')) return;
    this.outage = true;
    this.lastDownKey = key;
    this.safeEmit('down', err);
  }

  // ------------------------------------------------------------------ receiving

  private onBadChunk(_kind: FrameErrorKind): void {
    // Counted by the decoder (§1.6 checks 2-5); nothing is answered.
  }

  private onFrame(frame: Frame): void {
    if (this.st === 'stopped') return;
    const r = checkFrame(frame, 'toHost', PROTOCOL_VERSION);
    if (!r.ok) {
      this.counters[r.error as 'version' | 'type' | 'length' | 'value']++;
      return;
    }
    this.counters.framesIn++;
    this.port.markHealthy();
    const msg = r.msg;
    if (msg.kind === 'helloAck') {
      this.onHelloAck(msg, frame.seq);
      return;
    }
    this.countSeq(frame.seq);
    if (this.st !== 'established') return; // left over from an earlier session, or noise before HELLO_ACK
    this.lastRx = this.clock.monotonic();
    switch (msg.kind) {
      case 'sample':
        this.onSample(msg);
        break;
      case 'ack':
        this.onAnswer(msg.ackedSeq, null);
        break;
      case 'nack':
        this.counters.nacks++;
        this.onAnswer(msg.refusedSeq, msg.reason);
        break;
      case 'heartbeat': {
        const fs = (msg.flags & 1) === 1;
        if (fs !== this.failsafeFlag) {
          this.failsafeFlag = fs;
          this.safeEmit('failsafe', fs);
        }
        break;
      }
      case 'timesyncReply': {
        const h0 = this.syncs.get(msg.token);
        if (h0 === undefined) break;
        this.syncs.delete(msg.token);
        this.timeMap.addExchange(h0, this.clock.monotonic(), msg.mcuTimeUs);
        break;
      }
      case 'error':
        this.counters.mcuErrors++;
        this.safeEmit('mcuError', { code: msg.code, text: msg.text });
        break;
      default:
        break;
    }
  }

  /** Sequence accounting (§2.3). */
  private countSeq(seq: number): void {
    if (this.expectSeq !== null) {
      const gap = (seq - this.expectSeq) & 0xffff;
      if (gap >= 0x8000) this.counters.seqResets++;
      else this.counters.lostFrames += gap;
    }
    this.expectSeq = (seq + 1) & 0xffff;
  }

  private onSample(m: SampleMsg): void {
    const mcu = this.mcu!;
    if (m.channel >= mcu.analogCount + mcu.digitalCount) {
      this.counters.unknownChannel++;
      return;
    }
    const n = m.values.length;
    const periodMs = n > 1 ? m.periodUs / 1000 : 0;
    const u0 = this.timeMap.unwrap(m.t0Us);
    const mono0 = this.timeMap.toHostMs(u0);
    const toEpoch = this.clock.now() - this.clock.monotonic();
    let t0: number;
    if (mono0 === null) t0 = this.clock.now() - (n - 1) * periodMs; // last value at receipt (§5.4)
    else t0 = mono0 + toEpoch;
    this.safeEmit('samples', { channel: m.channel, t0, periodMs, values: m.values, synced: mono0 !== null });
  }

  // ------------------------------------------------------------------ time sync (§5.4)

  private sendTimesync(): void {
    if (this.st !== 'established') return;
    const now = this.clock.monotonic();
    for (const [token, h0] of this.syncs) if (now - h0 > 1000) this.syncs.delete(token);
    if (this.syncs.size >= 16) return; // an MCU that never replies must not grow the map
    let token = Math.floor(this.random() * 0x1_0000_0000) >>> 0;
    while (this.syncs.has(token)) token = (token + 1) >>> 0;
    this.syncs.set(token, now);
    this.send({ kind: 'timesyncRequest', token });
  }

  // ------------------------------------------------------------------ commands (§5.3)

  private rateOf(channel: number): number {
    const m = this.subscriptions.get(channel);
    return m && m.size ? Math.max(...m.values()) : 0;
  }

  private configureChannel(channel: number): void {
    const mcu = this.mcu!;
    const rateHz = this.rateOf(channel);
    const inputs = mcu.analogCount + mcu.digitalCount;
    if (channel >= inputs) {
      if (rateHz > 0) {
        this.safeEmit('refused', bridgeError('KEEL_E_CONFIG', 'no-such-target', `MCU ${mcu.firmwareId} on ${this.path} has no input channel ${channel} (it has ${mcu.analogCount} analog 0..${mcu.analogCount - 1}, ${mcu.digitalCount} digital ${mcu.analogCount}..${inputs - 1})`, false), { channel });
      }
      return;
    }
    if (rateHz > mcu.maxRateHz) {
      this.safeEmit('refused', bridgeError('KEEL_E_CONFIG', 'bad-value', `channel ${channel}: ${rateHz} Hz is above the ${mcu.maxRateHz} Hz that MCU ${mcu.firmwareId} on ${this.path} accepts`, false), { channel });
      return;
    }
    this.command({ kind: 'config', channel, rateHz }).catch((err: DriverError & { bridgeReason?: BridgeFailure }) => {
      // A lost link re-configures on the next handshake; anything else is a config problem.
      if (err.bridgeReason === 'link-down' || err.bridgeReason === 'stopped') return;
      this.safeEmit('refused', bridgeError('KEEL_E_CONFIG', err.bridgeReason ?? 'nack', `CONFIG of channel ${channel} at ${rateHz} Hz failed: ${err.message}`, false), { channel });
    });
  }

  private command(msg: Command['msg']): Promise<void> {
    if (this.st !== 'established') {
      return Promise.reject(bridgeError('KEEL_E_SERIAL_IO', 'link-down', `link to MCU on ${this.path} is down (${this.st}); keel is re-establishing it`, true));
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = { resolve, reject };
      // Only the newest value of an output matters: a queued SET for it takes the new value (§5.3).
      if (msg.kind === 'set') {
        const queued = this.queue.find((c) => c.msg.kind === 'set' && c.msg.output === msg.output);
        if (queued) {
          queued.msg = msg;
          queued.waiters.push(waiter);
          return;
        }
      }
      if (this.queue.length >= this.timing.maxQueued) {
        this.counters.queueFull++;
        reject(bridgeError('KEEL_E_ACTUATOR', 'queue-full', `bridge ${this.name}: ${this.queue.length} commands already waiting for the MCU; dropping this one`, true));
        return;
      }
      this.queue.push({ msg, attempts: 0, seqs: [], timer: undefined, waiters: [waiter] });
      this.pump();
    });
  }

  private pump(): void {
    while (this.st === 'established' && this.inflightCommands.size < this.timing.window && this.queue.length > 0) {
      const c = this.queue.shift()!;
      this.inflightCommands.add(c);
      this.transmit(c);
    }
  }

  private transmit(c: Command): void {
    c.attempts++;
    // Register before writing: over an in-process stream the answer can arrive inside write().
    const seq = this.txSeq;
    c.seqs.push(seq);
    this.inflight.set(seq, c);
    c.timer = this.clock.setTimeout(`bridge:${this.name}:ack`, () => this.onAckTimeout(c), this.timing.ackTimeoutMs);
    this.send(c.msg);
  }

  private onAckTimeout(c: Command): void {
    c.timer = undefined;
    if (!this.inflightCommands.has(c)) return;
    if (c.attempts <= this.timing.retries) {
      this.transmit(c); // a new frame with a new seq (§2.3); SET and CONFIG are idempotent
      return;
    }
    this.counters.unacked++;
    const what = c.msg.kind === 'set' ? `SET output ${c.msg.output} = ${c.msg.value}` : `CONFIG channel ${c.msg.channel} = ${c.msg.rateHz} Hz`;
    this.settle(c, bridgeError('KEEL_E_ACTUATOR', 'no-ack', `MCU on ${this.path} did not acknowledge ${what} after ${c.attempts} attempts ${this.timing.ackTimeoutMs} ms apart`, true));
  }

  private onAnswer(seq: number, nack: number | null): void {
    const c = this.inflight.get(seq);
    if (!c) {
      if (nack === NackReason.NOT_READY) this.onMcuReset(seq);
      else this.counters.strayAcks++;
      return;
    }
    if (nack === null) {
      this.settle(c, null);
      return;
    }
    if (nack === NackReason.NOT_READY) {
      this.onMcuReset(seq);
      return;
    }
    const what = c.msg.kind === 'set' ? `SET output ${c.msg.output} = ${c.msg.value}` : `CONFIG channel ${c.msg.channel} = ${c.msg.rateHz} Hz`;
    const reason = nack === NackReason.BAD_TARGET ? 'no-such-target' : nack === NackReason.BAD_VALUE ? 'bad-value' : 'nack';
    this.settle(c, bridgeError('KEEL_E_ACTUATOR', reason, `MCU on ${this.path} refused ${what}: ${nackReasonName(nack)}`, false));
  }

  /** NACK 6 while established: the MCU reset and forgot the session (§2.2). */
  private onMcuReset(_seq: number): void {
    if (this.st !== 'established') return;
    this.counters.mcuResets++;
    this.linkDown(bridgeError('KEEL_E_SERIAL_IO', 'link-down', `MCU on ${this.path} reset (it answered "not ready"); handshaking again`, true), true);
    this.beginHandshake();
  }

  private settle(c: Command, err: DriverError | null): void {
    this.clock.cancel(c.timer);
    c.timer = undefined;
    this.inflightCommands.delete(c);
    for (const s of c.seqs) if (this.inflight.get(s) === c) this.inflight.delete(s);
    for (const w of c.waiters) err ? w.reject(err) : w.resolve();
    this.pump();
  }

  private failCommands(err: DriverError): void {
    const all = [...this.inflightCommands, ...this.queue];
    this.queue.length = 0;
    this.inflightCommands.clear();
    this.inflight.clear();
    for (const c of all) {
      this.clock.cancel(c.timer);
      for (const w of c.waiters) w.reject(err);
    }
  }

  // ------------------------------------------------------------------ sending

  /** Sends a message with the next seq; returns that seq. Write failures are counted, not thrown. */
  private send(msg: Message): number {
    const seq = this.txSeq;
    this.txSeq = (this.txSeq + 1) & 0xffff;
    const wire = encodeMessage(msg, seq);
    this.counters.framesOut++;
    this.writeRaw(wire);
    return seq;
  }

  private writeRaw(buf: Buffer): void {
    if (!this.port.connected) {
      this.counters.writeFailures++;
      return;
    }
    this.counters.bytesOut += buf.length;
    this.port.write(buf).catch(() => {
      this.counters.writeFailures++;
    });
  }

  private cancelTimers(): void {
    for (const t of [this.helloTimer, this.heartbeatTimer, this.linkTimer, this.timesyncTimer]) this.clock.cancel(t);
    this.helloTimer = this.heartbeatTimer = this.linkTimer = this.timesyncTimer = undefined;
  }

  private safeEmit<K extends keyof BridgeSessionEvents>(event: K, ...args: BridgeSessionEvents[K]): void {
    // rawListeners: `once` wrappers remove themselves when called.
    for (const l of this.rawListeners(event) as ((...a: BridgeSessionEvents[K]) => void)[]) {
      try {
        l(...args);
      } catch {
        // A listener's bug must not break the link (see the top of this file).
      }
    }
  }
}
