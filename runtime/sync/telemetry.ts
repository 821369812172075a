/**
 * Live telemetry: every `everyMs`, the latest values of the configured model outputs, signed
 * by the device key (wire.ts sealEnvelope, TELEMETRY_DOMAIN) and handed to the sync link at
 * QoS 0. Nothing is queued: while offline a tick is dropped and counted (the ledger, not
 * telemetry, is the record of what happened). Per inference the cost is one map store; the
 * values are gathered and signed only at the tick.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../clock.ts';
import { asError } from '../errors.ts';
import type { ModelOutputs } from '../inference.ts';
import { MAX_ENVELOPE_BYTES, sealEnvelope, TELEMETRY_DOMAIN, type SigningKey, type TelemetryBody } from './wire.ts';

/** Most values in one telemetry message (keeps it well under MAX_ENVELOPE_BYTES). */
export const MAX_TELEMETRY_VALUES = 512;
/** Most elements taken from one configured non-scalar output. */
const MAX_ELEMENTS_PER_OUTPUT = 64;

/** What a Telemetry sender needs. */
export interface TelemetryOptions {
  device: string;
  /** The device key under the ledger's origin name. */
  key: SigningKey;
  clock: Clock;
  /** Period, ms (> 0). */
  everyMs: number;
  /**
   * Outputs to send, each "output" (in any pipeline) or "pipeline.output". Default: every
   * scalar (one-element) output that is not recurrent state.
   */
  outputs?: readonly string[];
  /** Hands a sealed payload to the link; false when it was dropped (offline). */
  send: (payload: Buffer) => boolean;
  /** Whether a send can succeed now; when false the tick is dropped without signing. */
  online?: () => boolean;
  logger?: Logger;
  /** Boot id (default: 9 random bytes, base64url). */
  boot?: string;
}

/** The part of an inference event telemetry reads. */
export interface TelemetrySource {
  on(event: 'inference', fn: (e: { pipeline: string; outputs: ModelOutputs; stateOutputs: readonly string[] }) => void): unknown;
  off(event: 'inference', fn: (e: { pipeline: string; outputs: ModelOutputs; stateOutputs: readonly string[] }) => void): unknown;
}

/** Counters. */
export interface TelemetryStats {
  sent: number;
  dropped: number;
  seq: number;
}

/** Periodic signed telemetry of a runtime's latest outputs. */
export class Telemetry {
  readonly boot: string;
  private readonly o: TelemetryOptions;
  private readonly latest = new Map<string, { outputs: ModelOutputs; stateOutputs: readonly string[] }>();
  private readonly wanted?: Set<string>;
  private fresh = false;
  private seq = 0;
  private sent = 0;
  private dropped = 0;
  private timer?: TimerHandle;
  private source?: TelemetrySource;
  private readonly listener = (e: { pipeline: string; outputs: ModelOutputs; stateOutputs: readonly string[] }) => this.observe(e);

  constructor(o: TelemetryOptions) {
    if (!Number.isInteger(o.everyMs) || o.everyMs <= 0) throw new RangeError(`everyMs must be a positive integer, got ${o.everyMs}`);
    this.o = o;
    this.boot = o.boot ?? randomBytes(9).toString('base64url');
    this.wanted = o.outputs ? new Set(o.outputs) : undefined;
  }

  /** Subscribes to a runtime's inference events. */
  attach(source: TelemetrySource): void {
    this.source = source;
    source.on('inference', this.listener);
  }

  /** Notes one inference's outputs (cheap: the values are read at the next tick). */
  observe(e: { pipeline: string; outputs: ModelOutputs; stateOutputs: readonly string[] }): void {
    this.latest.set(e.pipeline, { outputs: e.outputs, stateOutputs: e.stateOutputs });
    this.fresh = true;
  }

  /** Starts the timer `sync:telemetry`. */
  start(): void {
    if (this.timer) return;
    this.timer = this.o.clock.setInterval('sync:telemetry', () => this.tick(), this.o.everyMs);
  }

  /** Stops the timer and unsubscribes. */
  stop(): void {
    this.o.clock.cancel(this.timer);
    this.timer = undefined;
    this.source?.off('inference', this.listener);
    this.source = undefined;
  }

  /** The values the next message would carry. */
  values(): Record<string, number> {
    const values: Record<string, number> = {};
    let n = 0;
    for (const [pipeline, { outputs, stateOutputs }] of this.latest) {
      for (const name of Object.keys(outputs)) {
        if (stateOutputs.includes(name)) continue;
        const key = `${pipeline}.${name}`;
        const v = outputs[name];
        const explicit = this.wanted !== undefined && (this.wanted.has(name) || this.wanted.has(key));
        if (this.wanted !== undefined ? !explicit : v.length !== 1) continue;
        // JSON (and JCS) cannot carry NaN or infinities: such values are left out.
        if (v.length === 1) {
          if (Number.isFinite(v[0]) && n < MAX_TELEMETRY_VALUES) (values[key] = v[0]), n++;
        } else {
          for (let i = 0; i < Math.min(v.length, MAX_ELEMENTS_PER_OUTPUT); i++) if (Number.isFinite(v[i]) && n < MAX_TELEMETRY_VALUES) (values[`${key}.${i}`] = v[i]), n++;
        }
      }
    }
    return values;
  }

  /** Sends one message now if there are new values; returns whether one was handed to the link. */
  tick(): boolean {
    if (!this.fresh) return false;
    if (this.o.online && !this.o.online()) {
      this.dropped++;
      return false;
    }
    const values = this.values();
    if (Object.keys(values).length === 0) return false;
    const body: TelemetryBody = { device: this.o.device, seq: ++this.seq, boot: this.boot, t: this.o.clock.now(), values };
    let payload: Buffer;
    try {
      payload = sealEnvelope(TELEMETRY_DOMAIN, body, this.o.key);
    } catch (err) {
      this.o.logger?.warn({ err: asError(err).message }, 'telemetry not sent');
      return false;
    }
    if (payload.length > MAX_ENVELOPE_BYTES) {
      this.o.logger?.warn({ bytes: payload.length }, 'telemetry message too large; not sent');
      return false;
    }
    if (this.o.send(payload)) {
      this.sent++;
      this.fresh = false;
      return true;
    }
    this.dropped++;
    return false;
  }

  /** Counters. */
  stats(): TelemetryStats {
    return { sent: this.sent, dropped: this.dropped, seq: this.seq };
  }
}
