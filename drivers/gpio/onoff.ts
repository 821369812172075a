/**
 * The real GPIO backend: the sysfs interface through the `onoff` package.
 *
 * Lines are resolved to global sysfs numbers by chip label + offset (see `sysfs.ts`), then
 * exported and configured by onoff. onoff hard-codes `/sys/class/gpio`, so this backend only
 * runs on a board; the `gpioClass` slot lets tests put a scripted stand-in for onoff's `Gpio`
 * behind the same code path (as serialport's MockBinding does).
 *
 * onoff's own debounce runs on real timers; keel debounces in `GpioInputSource` on the
 * injected clock instead, so lines are opened here without `debounceTimeout`.
 */
import path from 'node:path';
import type { Clock } from '../../runtime/clock.ts';
import type { GpioLineConfig } from '../../runtime/config/schema.ts';
import {
  checkEdge,
  checkLevel,
  checkLineConfig,
  describeLine,
  GpioError,
  type GpioBackend,
  type GpioInputLine,
  type GpioInputOptions,
  type GpioLevel,
  type GpioOutputLine,
  type GpioOutputOptions,
} from './backend.ts';
import { checkExportWritable, DEFAULT_SYSFS_ROOT, resolveSysfsLine, type LineNameSource, type ResolvedSysfsLine } from './sysfs.ts';

/** The part of onoff's `Gpio` instance this backend uses. */
export interface OnoffGpio {
  readSync(): GpioLevel;
  writeSync(value: GpioLevel): void;
  watch(callback: (err: Error | null | undefined, value: GpioLevel) => void): void;
  unwatchAll(): void;
  unexport(): void;
}

/** The part of onoff's `Gpio` class this backend uses (constructor and `accessible`). */
export interface OnoffGpioClass {
  new (gpio: number, direction: 'in' | 'out' | 'high' | 'low', edge?: 'none' | 'rising' | 'falling' | 'both', options?: { activeLow?: boolean }): OnoffGpio;
  readonly accessible: boolean;
}

/** Options of the onoff backend. */
export interface OnoffGpioOptions {
  /** Stamps edges (epoch ms). */
  clock: Clock;
  /** GPIO sysfs root used to resolve chips; default `/sys/class/gpio` (the only one onoff opens under). */
  sysfsRoot?: string;
  /** Where line names come from; default: the libgpiod tools. */
  lineNames?: LineNameSource;
  /** A stand-in for onoff's `Gpio` (tests); default: onoff itself, loaded on first open. */
  gpioClass?: OnoffGpioClass;
}

/**
 * Lines exported by this process, across backend instances: sysfs has one export per line,
 * and onoff silently reuses an existing export, so a second open here would share the line.
 * Key: resolved sysfs root + global number.
 */
const claimedLines = new Map<string, string>();

/** GPIO over sysfs with onoff. Rejects opens with GpioError saying exactly what is wrong. */
export class OnoffGpioBackend implements GpioBackend {
  private readonly clock: Clock;
  private readonly root: string;
  private readonly lineNames?: LineNameSource;
  private gpioClass?: OnoffGpioClass;
  private readonly injected: boolean;

  constructor(opts: OnoffGpioOptions) {
    if (!opts || typeof opts !== 'object' || !opts.clock) throw new TypeError('opts.clock is required');
    if (opts.sysfsRoot !== undefined && (typeof opts.sysfsRoot !== 'string' || opts.sysfsRoot.length === 0)) {
      throw new TypeError('opts.sysfsRoot must be a non-empty path');
    }
    this.clock = opts.clock;
    this.root = path.resolve(opts.sysfsRoot ?? DEFAULT_SYSFS_ROOT);
    this.lineNames = opts.lineNames;
    this.gpioClass = opts.gpioClass;
    this.injected = opts.gpioClass !== undefined;
  }

  /** Exports `line` as an input reporting `opts.edge` edges. */
  async openInput(line: GpioLineConfig, opts: GpioInputOptions): Promise<GpioInputLine> {
    checkLineConfig(line);
    const edge = checkEdge(opts?.edge, 'opts.edge');
    const { resolved, Gpio, release } = await this.prepare(line, 'an input');
    let gpio: OnoffGpio;
    try {
      gpio = new Gpio(resolved.gpio, 'in', edge, { activeLow: Boolean(opts.activeLow) });
    } catch (err) {
      release();
      throw openError(err, resolved, edge !== 'none' ? 'input with edge detection' : 'input');
    }
    const where = describeResolved(resolved);
    let open = true;
    const edgeListeners: Array<(v: GpioLevel, t: number) => void> = [];
    const errorListeners: Array<(e: GpioError) => void> = [];
    if (edge !== 'none') {
      try {
        gpio.watch((err, value) => {
          if (!open) return;
          if (err) {
            const e = new GpioError('io', `GPIO ${where}: watching for edges failed: ${err.message}`, { cause: err, retryable: true });
            for (const cb of [...errorListeners]) cb(e);
            return;
          }
          const t = this.clock.now();
          for (const cb of [...edgeListeners]) cb(value === 1 ? 1 : 0, t);
        });
      } catch (err) {
        open = false;
        unexport(gpio);
        release();
        throw openError(err, resolved, 'input with edge detection');
      }
    }
    return {
      read: () => {
        if (!open) throw new GpioError('closed', `GPIO ${where} was used after close()`);
        try {
          return gpio.readSync() === 1 ? 1 : 0;
        } catch (err) {
          throw ioError(err, where, 'read');
        }
      },
      onEdge: (cb) => void edgeListeners.push(cb),
      onError: (cb) => void errorListeners.push(cb),
      close: async () => {
        if (!open) return;
        open = false;
        unexport(gpio);
        release();
      },
    };
  }

  /** Exports `line` as an output, driven to `opts.initial` without a glitch. */
  async openOutput(line: GpioLineConfig, opts: GpioOutputOptions): Promise<GpioOutputLine> {
    checkLineConfig(line);
    const initial = checkLevel(opts?.initial, 'opts.initial');
    const activeLow = Boolean(opts.activeLow);
    const { resolved, Gpio, release } = await this.prepare(line, 'an output');
    // sysfs `direction` = high/low sets the raw (physical) level atomically with the
    // direction, ignoring active_low; so the physical level of logical `initial` is asked for.
    const physical = initial ^ (activeLow ? 1 : 0);
    let gpio: OnoffGpio;
    try {
      gpio = new Gpio(resolved.gpio, physical ? 'high' : 'low', 'none', { activeLow });
    } catch (err) {
      release();
      throw openError(err, resolved, 'output');
    }
    const where = describeResolved(resolved);
    let open = true;
    const closed = () => new GpioError('closed', `GPIO ${where} was used after close()`);
    return {
      write: (value) => {
        const v = checkLevel(value);
        if (!open) throw closed();
        try {
          gpio.writeSync(v);
        } catch (err) {
          throw ioError(err, where, 'write');
        }
      },
      read: () => {
        if (!open) throw closed();
        try {
          return gpio.readSync() === 1 ? 1 : 0;
        } catch (err) {
          throw ioError(err, where, 'read');
        }
      },
      close: async () => {
        if (!open) return;
        open = false;
        unexport(gpio);
        release();
      },
    };
  }

  /** Resolves and claims the line, and checks that sysfs can be written; returns the Gpio class. */
  private async prepare(line: GpioLineConfig, as: string): Promise<{ resolved: ResolvedSysfsLine; Gpio: OnoffGpioClass; release: () => void }> {
    const resolved = await resolveSysfsLine(line, { sysfsRoot: this.root, lineNames: this.lineNames });
    if (!this.injected && this.root !== DEFAULT_SYSFS_ROOT) {
      throw new GpioError(
        'unsupported',
        `gpio.sysfsRoot is ${this.root}, but the onoff backend can only open lines under ${DEFAULT_SYSFS_ROOT}; remove gpio.sysfsRoot`,
      );
    }
    const Gpio = await this.loadGpioClass();
    if (!Gpio.accessible) {
      checkExportWritable(this.root);
      throw new GpioError('permission', `cannot open ${path.join(this.root, 'export')} for writing: run keel as a member of the gpio group or as root`);
    }
    const key = `${this.root}:${resolved.gpio}`;
    const holder = claimedLines.get(key);
    if (holder !== undefined) {
      throw new GpioError(
        'busy',
        `GPIO ${describeResolved(resolved)} is already opened by this process (${holder}); one line serves one source or actuator`,
      );
    }
    claimedLines.set(key, `as ${as}, named ${describeLine(line)}`);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      claimedLines.delete(key);
    };
    return { resolved, Gpio, release };
  }

  private async loadGpioClass(): Promise<OnoffGpioClass> {
    if (this.gpioClass) return this.gpioClass;
    try {
      // Loaded on first use: onoff loads the native `epoll` addon, which the sim backend and
      // machines without GPIO never need.
      const mod = (await import('onoff')) as unknown as { Gpio?: OnoffGpioClass; default?: { Gpio?: OnoffGpioClass } };
      const Gpio = mod.Gpio ?? mod.default?.Gpio;
      if (typeof Gpio !== 'function') throw new Error('module has no Gpio export');
      this.gpioClass = Gpio;
      return Gpio;
    } catch (err) {
      throw new GpioError('unsupported', `the onoff package could not be loaded (${(err as Error).message}); reinstall keel's dependencies on this board`, {
        cause: err,
      });
    }
  }
}

function describeResolved(r: ResolvedSysfsLine): string {
  return `${describeLine(r.line)} (${r.chip.label}, sysfs gpio${r.gpio})`;
}

/** Maps an error thrown while exporting/configuring a line to a GpioError that says why. */
function openError(err: unknown, r: ResolvedSysfsLine, as: string): GpioError {
  const e = err as NodeJS.ErrnoException;
  const where = describeResolved(r);
  switch (e?.code) {
    case 'EBUSY':
      return new GpioError(
        'busy',
        `GPIO ${where} is busy: the kernel refused to export it (EBUSY). A kernel driver (a device-tree overlay such as w1-gpio or gpio-led) ` +
          `or another program using /dev/gpiochip* holds it; \`gpioinfo\` shows the holder`,
        { cause: err, retryable: true },
      );
    case 'EACCES':
    case 'EPERM':
      return new GpioError(
        'permission',
        `permission denied configuring GPIO ${where}: run keel as a member of the gpio group (sudo usermod -aG gpio $USER, then log in again) or as root`,
        { cause: err },
      );
    case 'EINVAL':
      return new GpioError(
        'io',
        `the kernel rejected GPIO ${where} as ${as} (EINVAL): the line may be reserved or may not support this mode`,
        { cause: err },
      );
    case 'ENOENT':
      return new GpioError(
        'io',
        `GPIO ${where} did not appear in sysfs after export${as.includes('edge') ? ', or the line cannot report edges (no edge file)' : ''}: ${e.message}`,
        { cause: err },
      );
    default:
      return new GpioError('io', `cannot open GPIO ${where} as ${as}: ${e?.message ?? String(err)}`, { cause: err, retryable: e?.code === 'EIO' });
  }
}

function ioError(err: unknown, where: string, op: string): GpioError {
  const e = err as NodeJS.ErrnoException;
  return new GpioError('io', `GPIO ${where}: ${op} failed: ${e?.message ?? String(err)}`, { cause: err, retryable: true });
}

function unexport(gpio: OnoffGpio): void {
  try {
    gpio.unwatchAll();
  } catch {
    // Closing must not throw: the line may already be gone with its chip.
  }
  try {
    gpio.unexport();
  } catch {
    // Same: nothing useful to do about a failed unexport while closing.
  }
}
