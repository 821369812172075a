/**
 * GPIO for keel: the backend interface, the sysfs/onoff backend and its simulated twin, and
 * the source and actuator built on them. `createGpioBackend` picks the backend from config.
 */
import type { Clock } from '../../runtime/clock.ts';
import type { KeelConfig } from '../../runtime/config/schema.ts';
import type { GpioBackend } from './backend.ts';
import { OnoffGpioBackend, type OnoffGpioOptions } from './onoff.ts';
import { SimGpioBackend, type SimChipSpec } from './sim.ts';

export * from './backend.ts';
export { GpioInputSource, type GpioInputDeps } from './input.ts';
export { GpioActuator, toGpioLevel, type GpioActuatorDeps } from './output.ts';
export { OnoffGpioBackend, type OnoffGpio, type OnoffGpioClass, type OnoffGpioOptions } from './onoff.ts';
export { SimGpioBackend, DEFAULT_SIM_CHIPS, type SimChipSpec, type SimGpioOptions, type GpioOutputChange } from './sim.ts';
export {
  DEFAULT_SYSFS_ROOT,
  listSysfsChips,
  findSysfsChip,
  resolveSysfsLine,
  checkExportWritable,
  gpioToolsLineNames,
  parseGpiodetect,
  parseGpioinfo,
  describeChip,
  type SysfsChip,
  type ResolvedSysfsLine,
  type ToolChipLines,
  type LineNameSource,
  type SysfsResolveOptions,
} from './sysfs.ts';

/** Extra knobs for `createGpioBackend` (tests and demos). */
export interface GpioBackendExtras {
  /** Chips of the simulated backend (default: one chip `sim` with 64 lines). */
  simChips?: SimChipSpec[];
  /** Passed to the onoff backend (line-name source, a Gpio stand-in). */
  onoff?: Omit<OnoffGpioOptions, 'clock' | 'sysfsRoot'>;
}

/** The backend named by `config.gpio`: `onoff` (sysfs, on a board) or `sim` (in memory). */
export function createGpioBackend(config: Partial<KeelConfig['gpio']> | undefined, clock: Clock, extras: GpioBackendExtras = {}): GpioBackend {
  if (!clock) throw new TypeError('clock is required');
  const backend = config?.backend ?? 'onoff';
  switch (backend) {
    case 'sim':
      return new SimGpioBackend({ clock, chips: extras.simChips });
    case 'onoff':
      return new OnoffGpioBackend({ ...extras.onoff, clock, sysfsRoot: config?.sysfsRoot });
    default:
      throw new TypeError(`config.gpio.backend must be "onoff" or "sim", got ${JSON.stringify(backend)}`);
  }
}
