/**
 * Builds sources and actuators from configuration. The runtime only calls these factories;
 * which real or simulated implementation sits behind each interface is decided by the
 * injected `DriverDeps` (serial opener, GPIO backend), never imported by the runtime.
 */
import type { Clock } from '../runtime/clock.ts';
import type { ActuatorConfig, KeelConfig, SourceConfig } from '../runtime/config/schema.ts';
import { createGpioBackend, GpioActuator, GpioInputSource, type GpioBackend } from './gpio/index.ts';
import { ReplaySource } from './replay.ts';
import { SerialActuator, SerialSource, SystemSerialOpener, type SerialOpener } from './serial/index.ts';
import { SyntheticSource } from './synthetic.ts';
import type { Actuator, SensorSource } from './types.ts';
import { BridgeHub } from '../firmware-bridge/hub.ts';
import { BridgeSource } from '../firmware-bridge/source.ts';
import { BridgeActuator } from '../firmware-bridge/actuator.ts';

/** The IO a runtime's drivers are built with. */
export interface DriverDeps {
  clock: Clock;
  serial: SerialOpener;
  gpio: GpioBackend;
  /** Directory relative file paths (replay files) resolve against. */
  baseDir: string;
  /**
   * Firmware-bridge links, one per port path, shared by every bridge source and actuator
   * built with these deps. Optional: one is made on first use (on `serial`) and kept for
   * the deps object.
   */
  bridges?: BridgeHub;
}

const hubs = new WeakMap<object, BridgeHub>();

/** The bridge hub of `deps`: its own, or one made on `deps.serial` and remembered for this deps object. */
export function bridgeHubOf(deps: Pick<DriverDeps, 'serial' | 'clock' | 'bridges'>): BridgeHub {
  if (deps.bridges) return deps.bridges;
  let hub = hubs.get(deps);
  if (!hub) hubs.set(deps, (hub = new BridgeHub({ opener: deps.serial, clock: deps.clock })));
  return hub;
}

/** The real IO for a configuration: serialport, and the GPIO backend the config names. */
export function createDriverDeps(config: KeelConfig, clock: Clock): Omit<DriverDeps, 'baseDir'> {
  const serial = new SystemSerialOpener();
  return { clock, serial, gpio: createGpioBackend(config.gpio, clock), bridges: new BridgeHub({ opener: serial, clock }) };
}

/** Builds the source a config entry describes (nothing is opened until `start()`). */
export function createSource(cfg: SourceConfig, deps: DriverDeps): SensorSource {
  switch (cfg.type) {
    case 'serial':
      return new SerialSource(cfg, { opener: deps.serial, clock: deps.clock });
    case 'replay':
      return new ReplaySource(cfg, { clock: deps.clock, baseDir: deps.baseDir });
    case 'synthetic':
      return new SyntheticSource(cfg, { clock: deps.clock });
    case 'gpio':
      return new GpioInputSource(cfg, { backend: deps.gpio, clock: deps.clock });
    case 'bridge':
      return new BridgeSource(cfg, { hub: bridgeHubOf(deps), clock: deps.clock });
  }
}

/** Builds the actuator a config entry describes (nothing is opened until `open()`). */
export function createActuator(cfg: ActuatorConfig, deps: DriverDeps): Actuator {
  switch (cfg.type) {
    case 'gpio':
      return new GpioActuator(cfg, { backend: deps.gpio });
    case 'serial':
      return new SerialActuator(cfg, { opener: deps.serial, clock: deps.clock });
    case 'bridge':
      return new BridgeActuator(cfg, { hub: bridgeHubOf(deps) });
  }
}
