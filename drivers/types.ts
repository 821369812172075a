/**
 * The small interfaces every sensor source and actuator implements. Real drivers and their
 * simulated twins implement the same interface, and the runtime only ever sees these.
 */
import { EventEmitter } from 'node:events';
import type { KeelError } from '../runtime/errors.ts';

/** One reading from a source: named channel values at a host time (epoch ms). */
export interface Sample {
  /** Host time of the reading, epoch milliseconds (from the injected clock). */
  t: number;
  /** Channel name to value. Channels absent from a reading are simply missing. */
  values: Record<string, number>;
}

/** Counters every source keeps; the runtime exports them as metrics. */
export interface SourceStats {
  /** Samples delivered. */
  samples: number;
  /** Input discarded as malformed (garbage, overlong lines, partial records). */
  dropped: number;
  /** Times the underlying device was (re)opened after a failure. */
  reconnects: number;
  /** Whether the device is currently open and delivering. */
  connected: boolean;
}

/** Events a source emits. */
export interface SourceEvents {
  sample: [Sample];
  /** A problem the source recovers from by itself (port vanished, bad line, ...). */
  fault: [KeelError];
  /** The source is delivering again after a fault. */
  recovered: [];
  /** A finite source (replay without loop) has delivered everything. */
  end: [];
}

/** A stream of samples: serial, replay, synthetic, GPIO input, MCU channel. */
export interface SensorSource extends EventEmitter<SourceEvents> {
  readonly name: string;
  /** Starts delivering. Rejects only for faults that retrying cannot fix (bad config). */
  start(): Promise<void>;
  /** Stops delivering and releases the device. Idempotent. */
  stop(): Promise<void>;
  stats(): SourceStats;
}

/** A value an actuator is driven to: a level (GPIO), a duty, or text/bytes (serial). */
export type ActuatorValue = number | boolean | string;

/** Context available to templated actuator output (decision name, model outputs...). */
export type ActionContext = Record<string, unknown>;

/** Something the runtime drives: a GPIO output, a serial line, an MCU pin. */
export interface Actuator {
  readonly name: string;
  /** Acquires the device and drives its initial value. */
  open(): Promise<void>;
  /** Drives `value`. Rejects with a KeelError (`retryable` when transient). */
  write(value: ActuatorValue, context?: ActionContext): Promise<void>;
  /** Drives the configured safe value. Must be safe to call at any time, repeatedly. */
  safe(): Promise<void>;
  /** The last value written (undefined before the first write). */
  current(): ActuatorValue | undefined;
  /** Releases the device. Idempotent. */
  close(): Promise<void>;
}
