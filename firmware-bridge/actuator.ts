/**
 * An actuator on an MCU output over the firmware bridge: config `{type: bridge, path,
 * output, safeValue?}`. `write(v)` sends SET and resolves on the MCU's ACK
 * (docs/firmware-bridge.md §4.4, §5.3); `safe()` sets the configured safe value, or the
 * MCU's own safe value for the output when none is configured.
 *
 * Values: numbers are rounded to integers (a policy may compute 127.6 for a PWM duty),
 * booleans are 1/0, numeric strings are read as numbers; anything else, or a value the
 * output does not take (digital 0/1, PWM 0..255), is refused with a DriverError and nothing
 * is sent.
 *
 * While the link is down, `write` and `safe` reject with a retryable DriverError instead of
 * queueing: a command must not arrive late, after the world changed. The MCU itself drives
 * its outputs to their safe values when host frames stop (§5.2) and on every new HELLO
 * (§2.1), so an output is never left driven across an outage; `safe()` still rejects then,
 * so the safe-state report says the host could not confirm it.
 */
import { EventEmitter } from 'node:events';
import { ConfigError, DriverError, type ConfigIssue } from '../runtime/errors.ts';
import type { BridgeActuatorConfig } from '../runtime/config/schema.ts';
import type { ActionContext, Actuator, ActuatorValue } from '../drivers/types.ts';
import type { BridgeHub, BridgeLease } from './hub.ts';
import type { BridgeStats } from './session.ts';

/** What a bridge actuator needs from outside. */
export interface BridgeActuatorDeps {
  hub: BridgeHub;
}

/** Config fields a bridge actuator reads; the schema's type with defaults optional. */
export type BridgeActuatorOptions = Omit<BridgeActuatorConfig, 'baudRate'> & { baudRate?: number };

/** Events of a bridge actuator (beyond the `Actuator` interface). */
export interface BridgeActuatorEvents {
  /** The link went down or could not be established. */
  fault: [DriverError];
  /** The link is up again (the MCU's outputs are at their safe values until written). */
  recovered: [];
}

/** Problems with a bridge actuator config, paths relative to the actuator. */
export function bridgeActuatorIssues(c: BridgeActuatorOptions): ConfigIssue[] {
  if (c === null || typeof c !== 'object') return [{ path: '', message: 'expected a bridge actuator object' }];
  const issues: ConfigIssue[] = [];
  if (typeof c.name !== 'string' || c.name.length === 0) issues.push({ path: 'name', message: 'expected an actuator name' });
  if (typeof c.path !== 'string' || c.path.length === 0 || c.path.includes('\0')) issues.push({ path: 'path', message: `expected a device path, got ${JSON.stringify(c.path)}` });
  if (c.baudRate !== undefined && (!Number.isInteger(c.baudRate) || c.baudRate < 50 || c.baudRate > 4_000_000)) issues.push({ path: 'baudRate', message: `expected an integer from 50 to 4000000, got ${JSON.stringify(c.baudRate)}` });
  if (!Number.isInteger(c.output) || c.output < 0 || c.output > 255) issues.push({ path: 'output', message: `expected an integer 0..255, got ${JSON.stringify(c.output)}` });
  if (c.safeValue !== undefined && (!Number.isInteger(c.safeValue) || c.safeValue < 0 || c.safeValue > 255)) issues.push({ path: 'safeValue', message: `expected an integer 0..255, got ${JSON.stringify(c.safeValue)}` });
  return issues;
}

/** Turns an action value into an output value, or explains why it cannot be one. */
export function outputValue(value: ActuatorValue): number | string {
  let n: number;
  if (typeof value === 'boolean') n = value ? 1 : 0;
  else if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value))) n = Number(value);
  else return `${JSON.stringify(value)} is not a number`;
  if (!Number.isFinite(n)) return `${n} is not a finite number`;
  const r = Math.round(n);
  if (r < 0 || r > 255) return `${n} is outside 0..255`;
  return r;
}

/** An `Actuator` driving one MCU output over the firmware bridge. */
export class BridgeActuator extends EventEmitter<BridgeActuatorEvents> implements Actuator {
  readonly name: string;
  private readonly config: BridgeActuatorOptions;
  private readonly deps: BridgeActuatorDeps;
  private lease: BridgeLease | null = null;
  private closed = false;
  private last: ActuatorValue | undefined;
  private unbind: (() => void) | null = null;
  private counters = { writes: 0, failures: 0 };

  constructor(config: BridgeActuatorOptions, deps: BridgeActuatorDeps) {
    super();
    if (config === null || typeof config !== 'object') throw new TypeError('config must be a bridge actuator config object');
    if (!deps || !deps.hub) throw new TypeError('deps must provide { hub }');
    this.name = String(config.name);
    this.config = config;
    this.deps = deps;
  }

  /** Validates the config (ConfigError listing every problem) and takes the shared link; resolves even if the MCU is absent. */
  async open(): Promise<void> {
    if (this.lease !== null) return;
    if (this.closed) throw new DriverError('KEEL_E_ACTUATOR', `bridge actuator ${this.name} was closed; create a new one`);
    const issues = bridgeActuatorIssues(this.config);
    if (issues.length > 0) throw new ConfigError(issues, `bridge actuator "${this.name}"`);
    const lease = await this.deps.hub.acquire({ path: this.config.path, baudRate: this.config.baudRate });
    if (this.closed) {
      await lease.release();
      return;
    }
    this.lease = lease;
    const s = lease.session;
    const onDown = (err: DriverError) => this.quietEmit('fault', err);
    const onUp = () => {
      // The MCU put every output at its safe value on HELLO (§2.1).
      this.last = undefined;
      this.quietEmit('recovered');
    };
    s.on('down', onDown);
    s.on('up', onUp);
    this.unbind = () => {
      s.off('down', onDown);
      s.off('up', onUp);
    };
  }

  /** Sends SET for the output and resolves on the MCU's ACK. */
  async write(value: ActuatorValue, _context?: ActionContext): Promise<void> {
    const v = outputValue(value);
    if (typeof v === 'string') {
      this.counters.failures++;
      throw new DriverError('KEEL_E_ACTUATOR', `bridge actuator ${this.name}: ${v}; nothing was sent`);
    }
    await this.drive(v);
    this.last = value;
  }

  /** Drives the safe value (configured, else the MCU's own for this output). */
  async safe(): Promise<void> {
    const s = this.requireOpen();
    const info = s.info;
    const mcuSafe = info?.outputs[this.config.output]?.safeValue;
    const v = this.config.safeValue ?? mcuSafe;
    if (info === null || v === undefined) {
      this.counters.failures++;
      throw new DriverError(
        'KEEL_E_ACTUATOR',
        `bridge actuator ${this.name}: link to MCU on ${this.config.path} is down, cannot confirm the safe value; the MCU drives its outputs safe by itself when host heartbeats stop`,
        { retryable: true },
      );
    }
    await this.drive(v);
    this.last = v;
  }

  /** The last value written and acknowledged (undefined before the first, and after the link came back). */
  current(): ActuatorValue | undefined {
    return this.last;
  }

  /** Releases the link. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const lease = this.lease;
    this.lease = null;
    this.unbind?.();
    this.unbind = null;
    if (lease) await lease.release();
  }

  /** Writes and failures, and the shared link's counters. */
  stats(): { writes: number; failures: number; link: BridgeStats | null } {
    return { ...this.counters, link: this.lease?.session.stats() ?? null };
  }

  private async drive(v: number): Promise<void> {
    const s = this.requireOpen();
    try {
      await s.set(this.config.output, v);
    } catch (err) {
      this.counters.failures++;
      if (err instanceof DriverError) throw Object.assign(new DriverError(err.code, `bridge actuator ${this.name}: ${err.message}`, { cause: err, retryable: err.retryable }), { bridgeReason: (err as { bridgeReason?: string }).bridgeReason });
      throw err;
    }
    this.counters.writes++;
  }

  private requireOpen() {
    if (this.closed) throw new DriverError('KEEL_E_ACTUATOR', `bridge actuator ${this.name} is closed`);
    if (this.lease === null) throw new DriverError('KEEL_E_ACTUATOR', `bridge actuator ${this.name} is not open; call open() first`);
    return this.lease.session;
  }

  private quietEmit<K extends keyof BridgeActuatorEvents>(event: K, ...args: BridgeActuatorEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch {
      // A throwing listener is its owner's bug; the actuator keeps working.
    }
  }
}
