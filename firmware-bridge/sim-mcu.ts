/**
 * A simulated MCU speaking bridge protocol v1 over any Duplex stream: the twin of the
 * reference firmware, for tests, demos and harnesses without an AVR. It follows
 * docs/firmware-bridge.md from the MCU's side: answers HELLO, refuses what §1.6/§2.2/§6 say
 * to refuse with the right NACK, samples its inputs at the configured rates and batches
 * them into SAMPLE frames, sends HEARTBEATs, answers TIMESYNC, drives outputs, and fails
 * safe when host frames stop (§5.2).
 *
 * Inputs are settable (`setInput`: a number or a function of MCU time), outputs observable
 * (`output(i)`, `'output'` events). Faults can be injected at any time through `faults`:
 * a firmware that stops answering, never acknowledges, drops or corrupts frames, or speaks
 * the wrong version; `injectGarbage` writes raw bytes; `reset()` reboots it.
 *
 * Time comes from the injected clock (timers `sim-mcu:<name>:sample`, `:heartbeat`,
 * `:failsafe`), so it runs on FakeClock in tests and on SystemClock over a real pty.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import { FrameDecoder, PROTOCOL_VERSION, type Frame, type FrameErrorKind } from './codec.ts';
import { checkFrame, encodeMessage, NackReason, MAX_SAMPLE_VALUES, type Message, type OutputInfo } from './messages.ts';

/** How the simulated MCU is built. */
export interface SimMcuOptions {
  clock: Clock;
  /** Name used in timer names (default `mcu`). */
  name?: string;
  /** Analog inputs (default 6; channels 0..A-1). */
  analogCount?: number;
  /** Digital inputs (default 2; channels A..A+D-1). */
  digitalCount?: number;
  /** Outputs (default: the reference firmware's PWM 9, digital 13, PWM 10). */
  outputs?: OutputInfo[];
  /** Highest sample rate per channel, Hz (default 1000). */
  maxRateHz?: number;
  /** Failsafe after this long without host frames, ms (default 1000). */
  heartbeatTimeoutMs?: number;
  /** Firmware id in HELLO_ACK (default `keel-sim-mcu/1.0.0`). */
  firmwareId?: string;
  /** Highest protocol version it speaks (default 1). */
  maxVersion?: number;
  /** HEARTBEAT period, ms (default 250, §5.1). */
  heartbeatMs?: number;
  /** Samples are flushed into SAMPLE frames this often, ms (default 20). */
  batchMs?: number;
  /** MCU clock at start, µs (default 0; set near 2^32 to exercise the wrap). */
  startTimeUs?: number;
  /** Seed of the generator used for dropping/corrupting frames (default 1). */
  seed?: number;
}

/** Faults to inject; change them at any time. */
export interface SimMcuFaults {
  /** Hung firmware: reads nothing, sends nothing (outputs still fail safe by its watchdog). */
  silent: boolean;
  /** Applies SET/CONFIG but never answers them. */
  neverAck: boolean;
  /** Fraction (0..1) of outgoing frames dropped. */
  dropRate: number;
  /** Fraction (0..1) of outgoing frames with one byte corrupted. */
  corruptRate: number;
  /** Version byte of outgoing frames other than HELLO_ACK (null: the session's). */
  frameVersion: number | null;
  /** Version chosen in HELLO_ACK (null: per §6 rule 2; 0: none in common). */
  helloVersion: number | null;
}

/** Counters of the simulated MCU. */
export interface SimMcuStats {
  framesIn: number;
  framesOut: number;
  dropped: number;
  corrupted: number;
  badChunks: number;
  nacksSent: number;
  samplesSent: number;
  hellos: number;
}

/** Events of the simulated MCU. */
export interface SimMcuEvents {
  /** An output was driven (by SET, HELLO or failsafe). */
  output: [index: number, value: number];
  failsafe: [boolean];
  /** A valid host frame arrived. */
  received: [Message];
}

type Input = number | ((mcuTimeUs: number) => number);

interface ChannelState {
  rateHz: number;
  /** MCU time (unwrapped µs, fractional) of the next sample due. */
  nextUs: number;
  values: number[];
  firstUs: number;
}

const DEFAULT_OUTPUTS: OutputInfo[] = [
  { pin: 9, kind: 1, safeValue: 0 },
  { pin: 13, kind: 0, safeValue: 0 },
  { pin: 10, kind: 1, safeValue: 0 },
];

/** An in-process MCU speaking the bridge protocol; see the top of this file. */
export class SimMcu extends EventEmitter<SimMcuEvents> {
  /** Faults to inject (mutable). */
  readonly faults: SimMcuFaults = { silent: false, neverAck: false, dropRate: 0, corruptRate: 0, frameVersion: null, helloVersion: null };
  /** Every valid host message received, oldest first (bounded to the last 10 000). */
  readonly received: Message[] = [];
  private readonly clock: Clock;
  private readonly name: string;
  private readonly analogCount: number;
  private readonly digitalCount: number;
  private readonly outputInfo: OutputInfo[];
  private readonly maxRateHz: number;
  private readonly heartbeatTimeoutMs: number;
  private readonly firmwareId: string;
  private readonly maxVersion: number;
  private readonly heartbeatMs: number;
  private readonly batchMs: number;
  private readonly startTimeUs: number;
  private bootMono: number;
  private rng: number;
  private stream: Duplex | null = null;
  private detachStream: (() => void) | null = null;
  private readonly decoder: FrameDecoder;
  private txSeq = 0;
  private session = false;
  private version = PROTOCOL_VERSION;
  private lastHostFrame = 0;
  private inFailsafe = false;
  private readonly outputValues: number[];
  private readonly inputs: Input[];
  private readonly channels = new Map<number, ChannelState>();
  private sampleTimer: TimerHandle | undefined;
  private heartbeatTimer: TimerHandle | undefined;
  private failsafeTimer: TimerHandle | undefined;
  private running = false;
  private readonly counters: SimMcuStats = { framesIn: 0, framesOut: 0, dropped: 0, corrupted: 0, badChunks: 0, nacksSent: 0, samplesSent: 0, hellos: 0 };

  constructor(options: SimMcuOptions) {
    super();
    if (!options || !options.clock || typeof options.clock.setTimeout !== 'function') throw new TypeError('options.clock must be a Clock');
    const int = (k: string, v: number, min: number, max: number) => {
      if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`options.${k} must be an integer ${min}..${max}, got ${v}`);
      return v;
    };
    this.clock = options.clock;
    this.name = options.name ?? 'mcu';
    this.analogCount = int('analogCount', options.analogCount ?? 6, 0, 64);
    this.digitalCount = int('digitalCount', options.digitalCount ?? 2, 0, 64);
    this.outputInfo = (options.outputs ?? DEFAULT_OUTPUTS).map((o) => ({ ...o }));
    if (this.outputInfo.length > 32) throw new RangeError('options.outputs must have at most 32 entries');
    this.maxRateHz = int('maxRateHz', options.maxRateHz ?? 1000, 1, 65535);
    this.heartbeatTimeoutMs = int('heartbeatTimeoutMs', options.heartbeatTimeoutMs ?? 1000, 1, 65535);
    this.firmwareId = options.firmwareId ?? 'keel-sim-mcu/1.0.0';
    this.maxVersion = int('maxVersion', options.maxVersion ?? 1, 1, 255);
    this.heartbeatMs = int('heartbeatMs', options.heartbeatMs ?? 250, 1, 60_000);
    this.batchMs = int('batchMs', options.batchMs ?? 20, 1, 1000);
    this.startTimeUs = int('startTimeUs', options.startTimeUs ?? 0, 0, 0xffffffff);
    this.rng = (options.seed ?? 1) >>> 0 || 1;
    this.bootMono = this.clock.monotonic();
    this.outputValues = this.outputInfo.map((o) => o.safeValue);
    this.inputs = new Array<Input>(this.analogCount + this.digitalCount).fill(0);
    this.decoder = new FrameDecoder(
      (f) => this.onFrame(f),
      (_k: FrameErrorKind) => {
        this.counters.badChunks++;
      },
    );
  }

  /** Connects to a stream (the MCU's UART) and starts the MCU's timers. A previous stream is detached. */
  attach(stream: Duplex): void {
    this.detach();
    this.stream = stream;
    const onData = (chunk: Buffer) => {
      if (!this.faults.silent) this.decoder.push(chunk);
    };
    const onGone = () => this.detach();
    const onError = () => undefined; // the stream's owner reports it; the MCU just loses its UART
    stream.on('data', onData);
    stream.on('close', onGone);
    stream.on('error', onError);
    this.detachStream = () => {
      stream.off('data', onData);
      stream.off('close', onGone);
      stream.off('error', onError);
    };
    this.decoder.reset();
    this.start();
  }

  /** Disconnects from the stream (the MCU keeps running, and will fail safe). */
  detach(): void {
    this.detachStream?.();
    this.detachStream = null;
    this.stream = null;
  }

  /** Powers the MCU up (timers); `attach` does this too. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.lastHostFrame = this.clock.monotonic();
    const check = Math.max(1, Math.floor(this.heartbeatTimeoutMs / 10));
    this.failsafeTimer = this.clock.setInterval(`sim-mcu:${this.name}:failsafe`, () => this.checkFailsafe(), check);
    this.sampleTimer = this.clock.setInterval(`sim-mcu:${this.name}:sample`, () => this.sampleTick(), this.batchMs);
  }

  /** Powers the MCU down: stops every timer and detaches. */
  stop(): void {
    this.running = false;
    for (const t of [this.failsafeTimer, this.sampleTimer, this.heartbeatTimer]) this.clock.cancel(t);
    this.failsafeTimer = this.sampleTimer = this.heartbeatTimer = undefined;
    this.detach();
  }

  /** Reboots: no session, seq from 0, outputs safe, sampling off, clock from its start value. */
  reset(): void {
    this.session = false;
    this.txSeq = 0;
    this.bootMono = this.clock.monotonic();
    this.channels.clear();
    this.clock.cancel(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.decoder.reset();
    this.driveSafe();
    this.setFailsafe(false);
  }

  /** Sets input `channel` to a value, or to a function of MCU time (µs, unwrapped). */
  setInput(channel: number, value: Input): void {
    if (!Number.isInteger(channel) || channel < 0 || channel >= this.inputs.length) throw new RangeError(`channel must be 0..${this.inputs.length - 1}, got ${channel}`);
    if (typeof value !== 'number' && typeof value !== 'function') throw new TypeError('value must be a number or a function of MCU time');
    this.inputs[channel] = value;
  }

  /** Current value of output `index`. */
  output(index: number): number {
    const v = this.outputValues[index];
    if (v === undefined) throw new RangeError(`index must be 0..${this.outputValues.length - 1}, got ${index}`);
    return v;
  }

  /** Current values of all outputs. */
  outputs(): number[] {
    return [...this.outputValues];
  }

  /** Whether the outputs are held safe because host frames stopped (§5.2). */
  get failsafe(): boolean {
    return this.inFailsafe;
  }

  /** Whether a HELLO started a session since the last reset. */
  get inSession(): boolean {
    return this.session;
  }

  /** Current sample rate of `channel`, Hz (0 = off). */
  rateOf(channel: number): number {
    return this.channels.get(channel)?.rateHz ?? 0;
  }

  /** MCU clock now, µs (unwrapped; the wire carries it mod 2^32). */
  nowUs(): number {
    return this.startTimeUs + (this.clock.monotonic() - this.bootMono) * 1000;
  }

  /** Counters. */
  stats(): SimMcuStats {
    return { ...this.counters };
  }

  /** Writes raw bytes to the UART (garbage injection). */
  injectGarbage(bytes: Buffer): void {
    this.writeRaw(bytes);
  }

  /** Sends an ERROR frame (§4.10). */
  sendError(code: number, text: string): void {
    this.send({ kind: 'error', code, text });
  }

  // ------------------------------------------------------------------ receiving

  private onFrame(frame: Frame): void {
    // §6 rule 3: refuse another version, answered as a frame of our version.
    const r = checkFrame(frame, 'toMcu', frame.type === 0x01 ? PROTOCOL_VERSION : this.session ? this.version : PROTOCOL_VERSION);
    if (!r.ok) {
      if (r.nack !== null) this.nack(frame.seq, r.nack);
      return;
    }
    this.counters.framesIn++;
    this.lastHostFrame = this.clock.monotonic();
    if (this.inFailsafe) this.setFailsafe(false); // outputs stay safe until SET (§5.2)
    const msg = r.msg;
    this.received.push(msg);
    if (this.received.length > 10_000) this.received.splice(0, this.received.length - 10_000);
    this.emit('received', msg);
    if (msg.kind === 'hello') {
      this.onHello(msg.maxVersion, msg.nonce);
      return;
    }
    if (!this.session) {
      this.nack(frame.seq, NackReason.NOT_READY); // §2.2
      return;
    }
    switch (msg.kind) {
      case 'set': {
        const o = this.outputInfo[msg.output];
        if (!o) return this.nack(frame.seq, NackReason.BAD_TARGET);
        if (msg.value > (o.kind === 0 ? 1 : 255)) return this.nack(frame.seq, NackReason.BAD_VALUE);
        this.drive(msg.output, msg.value);
        if (!this.faults.neverAck) this.send({ kind: 'ack', ackedSeq: frame.seq });
        return;
      }
      case 'config': {
        if (msg.channel >= this.inputs.length) return this.nack(frame.seq, NackReason.BAD_TARGET);
        if (msg.rateHz > this.maxRateHz) return this.nack(frame.seq, NackReason.BAD_VALUE);
        if (msg.rateHz === 0) this.channels.delete(msg.channel);
        else {
          const now = this.nowUs();
          this.channels.set(msg.channel, { rateHz: msg.rateHz, nextUs: now, values: [], firstUs: now });
        }
        if (!this.faults.neverAck) this.send({ kind: 'ack', ackedSeq: frame.seq });
        return;
      }
      case 'timesyncRequest':
        this.send({ kind: 'timesyncReply', token: msg.token, mcuTimeUs: Math.floor(this.nowUs()) % 2 ** 32 });
        return;
      default:
        return; // HEARTBEAT: its arrival was the point
    }
  }

  private onHello(hostMax: number, nonce: number): void {
    this.counters.hellos++;
    const chosen = this.faults.helloVersion ?? Math.min(hostMax, this.maxVersion);
    // A fresh session (§2.1): sampling off, outputs safe.
    this.channels.clear();
    this.driveSafe();
    this.send(
      {
        kind: 'helloAck',
        version: chosen,
        nonce,
        analogCount: this.analogCount,
        digitalCount: this.digitalCount,
        maxRateHz: this.maxRateHz,
        heartbeatTimeoutMs: this.heartbeatTimeoutMs,
        outputs: this.outputInfo,
        firmwareId: this.firmwareId,
      },
      PROTOCOL_VERSION, // HELLO_ACK is always a version-1 frame (§6 rule 2)
    );
    if (chosen === 0) return;
    this.session = true;
    this.version = chosen;
    if (this.heartbeatTimer === undefined) {
      this.heartbeatTimer = this.clock.setInterval(`sim-mcu:${this.name}:heartbeat`, () => this.send({ kind: 'heartbeat', flags: this.inFailsafe ? 1 : 0 }), this.heartbeatMs);
    }
  }

  private nack(seq: number, reason: number): void {
    this.counters.nacksSent++;
    this.send({ kind: 'nack', refusedSeq: seq, reason });
  }

  // ------------------------------------------------------------------ outputs and failsafe

  private drive(index: number, value: number): void {
    this.outputValues[index] = value;
    this.emit('output', index, value);
  }

  private driveSafe(): void {
    this.outputInfo.forEach((o, i) => {
      if (this.outputValues[i] !== o.safeValue) this.drive(i, o.safeValue);
    });
  }

  private setFailsafe(on: boolean): void {
    if (on === this.inFailsafe) return;
    this.inFailsafe = on;
    this.emit('failsafe', on);
  }

  private checkFailsafe(): void {
    if (this.inFailsafe || !this.session) return;
    if (this.clock.monotonic() - this.lastHostFrame >= this.heartbeatTimeoutMs) {
      this.driveSafe();
      this.setFailsafe(true);
    }
  }

  // ------------------------------------------------------------------ sampling

  private readInput(channel: number, tUs: number): number {
    const src = this.inputs[channel]!;
    const v = typeof src === 'function' ? src(tUs) : src;
    const digital = channel >= this.analogCount;
    if (!Number.isFinite(v)) return 0;
    if (digital) return v ? 1 : 0;
    return Math.max(0, Math.min(1023, Math.round(v)));
  }

  private sampleTick(): void {
    if (!this.session) return;
    const now = this.nowUs();
    for (const [channel, st] of this.channels) {
      const step = 1e6 / st.rateHz;
      while (st.nextUs <= now) {
        if (st.values.length === 0) st.firstUs = st.nextUs;
        st.values.push(this.readInput(channel, st.nextUs));
        st.nextUs += step;
        if (st.values.length === MAX_SAMPLE_VALUES) this.flush(channel, st, step);
      }
      if (st.values.length > 0) this.flush(channel, st, step);
    }
  }

  private flush(channel: number, st: ChannelState, stepUs: number): void {
    const periodUs = Math.round(stepUs);
    const t0 = Math.floor(st.firstUs) % 2 ** 32;
    if (st.values.length === 1 || periodUs > 0xffff) {
      // A period that does not fit u16 goes out one value per frame (§4.3).
      st.values.forEach((v, i) => this.send({ kind: 'sample', channel, t0Us: Math.floor(st.firstUs + i * stepUs) % 2 ** 32, periodUs: 0, values: [v] }));
    } else {
      this.send({ kind: 'sample', channel, t0Us: t0, periodUs, values: st.values });
    }
    this.counters.samplesSent += st.values.length;
    st.values = [];
  }

  // ------------------------------------------------------------------ sending

  private send(msg: Message, version?: number): void {
    if (this.faults.silent) return;
    const v = version ?? this.faults.frameVersion ?? (this.session ? this.version : PROTOCOL_VERSION);
    const wire = encodeMessage(msg, this.txSeq, v);
    this.txSeq = (this.txSeq + 1) & 0xffff;
    this.counters.framesOut++;
    if (this.faults.dropRate > 0 && this.rand() < this.faults.dropRate) {
      this.counters.dropped++;
      return;
    }
    if (this.faults.corruptRate > 0 && this.rand() < this.faults.corruptRate) {
      this.counters.corrupted++;
      const i = Math.floor(this.rand() * (wire.length - 1)); // keep the delimiter
      wire[i] = (wire[i]! ^ (1 + Math.floor(this.rand() * 255))) || 0x55; // never 0x00 inside
    }
    this.writeRaw(wire);
  }

  private writeRaw(bytes: Buffer): void {
    const s = this.stream;
    if (!s || s.destroyed || !s.writable) return;
    s.write(bytes);
  }

  private rand(): number {
    // xorshift32: deterministic per seed, so fault injection is reproducible.
    let x = this.rng;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return this.rng / 2 ** 32;
  }
}
