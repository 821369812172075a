/**
 * Resolves a GPIO line (chip label or gpiochipN, plus offset or line name) to its global
 * sysfs number, by reading the chips under the sysfs root.
 *
 * Why: since Linux 6.6 (every Raspberry Pi 5 image, and current Pi 4 images) the sysfs GPIO
 * numbers carry a per-chip base chosen by the kernel (512 for pinctrl-bcm2711, 571 for
 * pinctrl-rp1, ...), so "GPIO17" is sysfs gpio529 on one board and gpio588 on another, and
 * old hard-coded numbers fail with EINVAL. The only stable naming is chip + offset, and the
 * global number is `base + offset`, where `base` and `ngpio` are read from
 * `<root>/gpiochipB/{label,base,ngpio}` (Documentation/ABI/obsolete/sysfs-gpio).
 *
 * `gpiochipN` names are ambiguous on new kernels: sysfs names its chip directories after the
 * base (gpiochip512), while the character devices and gpiodetect use gpiochip0, gpiochip1...
 * Both are accepted; a sysfs chip's character-device name is found under its `device`
 * directory (the gpio device is a child of the chip's parent device, or the parent itself).
 *
 * Line names are not exposed by sysfs. They are read from the libgpiod tools (`gpiodetect`
 * and `gpioinfo`, whose output is alike in libgpiod v1 and v2), when installed.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants as fsConstants, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import type { GpioLineConfig } from '../../runtime/config/schema.ts';
import { checkLineConfig, describeLine, GpioError, listForMessage } from './backend.ts';

/** The sysfs root the kernel uses (and the only one onoff can open lines under). */
export const DEFAULT_SYSFS_ROOT = '/sys/class/gpio';

/** One GPIO chip as sysfs describes it. */
export interface SysfsChip {
  /** Directory name under the root, e.g. `gpiochip571` (the number is the base). */
  dir: string;
  /** Chip label, e.g. `pinctrl-rp1`. */
  label: string;
  /** First global sysfs number of the chip. */
  base: number;
  /** Number of lines. */
  ngpio: number;
  /** Character-device names of the chip (`gpiochip0`), when sysfs shows them; usually one. */
  devices: string[];
}

/** A line resolved to its global sysfs number. */
export interface ResolvedSysfsLine {
  chip: SysfsChip;
  offset: number;
  /** Global sysfs number: `chip.base + offset`. */
  gpio: number;
  /** The configured line, for messages. */
  line: GpioLineConfig;
}

/** Line names of one chip as the character-device tools report them. */
export interface ToolChipLines {
  /** Character-device name, e.g. `gpiochip0`. */
  device: string;
  /** Chip label, when `gpiodetect` gave it. */
  label?: string;
  /** Line names by offset; '' for unnamed lines. */
  names: string[];
}

/** Source of line names (the libgpiod tools on a board; a table in tests). */
export type LineNameSource = () => Promise<ToolChipLines[]>;

/** Options of the resolver. */
export interface SysfsResolveOptions {
  /** Root of the GPIO sysfs class, default `/sys/class/gpio`. */
  sysfsRoot?: string;
  /** Where line names come from; default: the libgpiod tools. */
  lineNames?: LineNameSource;
}

/**
 * Reads every chip under `sysfsRoot`. Throws GpioError `no-sysfs` when the directory does
 * not exist or holds no chips (not a board, /sys not mounted, a container without /sys).
 */
export function listSysfsChips(sysfsRoot: string = DEFAULT_SYSFS_ROOT): SysfsChip[] {
  let entries: string[];
  try {
    entries = readdirSync(sysfsRoot);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES') {
      throw new GpioError('permission', `permission denied reading ${sysfsRoot}: run keel as a member of the gpio group or as root`, { cause: err });
    }
    throw noSysfs(sysfsRoot, err);
  }
  const chips: SysfsChip[] = [];
  for (const dir of entries.filter((e) => /^gpiochip\d+$/.test(e)).sort(byNumber)) {
    const at = path.join(sysfsRoot, dir);
    const label = readAttr(at, 'label');
    const base = parseCount(readAttr(at, 'base'));
    const ngpio = parseCount(readAttr(at, 'ngpio'));
    // A chip whose attributes cannot be read is not one we can use; skip it rather than fail
    // the whole board (the message for a missing chip lists what was found).
    if (label === undefined || base === undefined || ngpio === undefined) continue;
    chips.push({ dir, label, base, ngpio, devices: deviceNames(at) });
  }
  if (chips.length === 0) throw noSysfs(sysfsRoot);
  return chips;
}

/** Finds the chip named `chip` (label, sysfs `gpiochipB`, or character-device `gpiochipN`). */
export function findSysfsChip(chips: SysfsChip[], chip: string, sysfsRoot: string = DEFAULT_SYSFS_ROOT): SysfsChip {
  const byLabel = chips.filter((c) => c.label === chip);
  if (byLabel.length === 1) return byLabel[0];
  if (byLabel.length > 1) {
    throw new GpioError(
      'chip-not-found',
      `GPIO chip label "${chip}" is not unique here (${byLabel.map((c) => c.dir).join(', ')}); name the chip as gpiochipN instead`,
    );
  }
  if (/^gpiochip\d+$/.test(chip)) {
    // Character-device names (what gpiodetect prints and what most people mean) first;
    // a sysfs directory name only when no device has that name.
    const byDevice = chips.filter((c) => c.devices.includes(chip));
    if (byDevice.length === 1) return byDevice[0];
    if (byDevice.length > 1) {
      throw new GpioError(
        'chip-not-found',
        `GPIO chip "${chip}" cannot be told apart here (sysfs ${byDevice.map((c) => `${c.dir} [${c.label}]`).join(', ')} share that device); name the chip by its label`,
      );
    }
    const byDir = chips.find((c) => c.dir === chip);
    if (byDir) return byDir;
  }
  throw new GpioError('chip-not-found', `GPIO chip "${chip}" not found under ${sysfsRoot}; chips here: ${listForMessage(chips.map(describeChip))}`);
}

/**
 * Resolves `line` to its global sysfs number. Throws GpioError: `no-sysfs`,
 * `chip-not-found`, `line-not-found` (offset >= ngpio, unknown name), `name-lookup`.
 */
export async function resolveSysfsLine(line: GpioLineConfig, opts: SysfsResolveOptions = {}): Promise<ResolvedSysfsLine> {
  checkLineConfig(line);
  const root = opts.sysfsRoot ?? DEFAULT_SYSFS_ROOT;
  const chip = findSysfsChip(listSysfsChips(root), line.chip, root);
  let offset: number;
  if (line.offset !== undefined) {
    offset = line.offset;
    if (offset >= chip.ngpio) {
      throw new GpioError(
        'line-not-found',
        `GPIO offset ${offset} is out of range for chip ${chip.label} (${chip.dir}: ${chip.ngpio} lines, offsets 0-${chip.ngpio - 1})`,
      );
    }
  } else {
    offset = await lookupLineName(chip, line.name as string, opts.lineNames ?? gpioToolsLineNames);
  }
  return { chip, offset, gpio: chip.base + offset, line };
}

/**
 * Throws GpioError unless `<root>/export` can be opened for writing (what onoff's
 * `Gpio.accessible` tests), saying why: no sysfs, or permission (gpio group).
 */
export function checkExportWritable(sysfsRoot: string = DEFAULT_SYSFS_ROOT): void {
  const exportPath = path.join(sysfsRoot, 'export');
  try {
    accessSync(exportPath, fsConstants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new GpioError(
        'permission',
        `permission denied on ${exportPath}: run keel as a member of the gpio group (sudo usermod -aG gpio $USER, then log in again) or as root` +
          (code === 'EROFS' ? '; /sys is mounted read-only here (in a container, mount /sys read-write)' : ''),
        { cause: err },
      );
    }
    throw noSysfs(sysfsRoot, err);
  }
}

/** Line names from the libgpiod tools (`gpiodetect` for labels, `gpioinfo` for names). */
export async function gpioToolsLineNames(): Promise<ToolChipLines[]> {
  const detect = await runTool('gpiodetect', []);
  const info = await runTool('gpioinfo', []);
  const labels = parseGpiodetect(detect);
  return parseGpioinfo(info).map((c) => ({ ...c, label: labels.get(c.device) }));
}

/**
 * Parses `gpiodetect` output (`gpiochip0 [pinctrl-bcm2711] (58 lines)`, the same in libgpiod
 * v1 and v2) into device name -> label.
 */
export function parseGpiodetect(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const m = /^\s*(gpiochip\d+)\s+\[([^\]]*)\]/.exec(raw);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

/**
 * Parses `gpioinfo` output: a header `gpiochip0 - 58 lines:` per chip, then one row per
 * line, `line  17: "GPIO17" ...` (v1: `unnamed` for lines without a name; v2 prints the
 * name in quotes as well, after a tab).
 */
export function parseGpioinfo(text: string): ToolChipLines[] {
  const out: ToolChipLines[] = [];
  let current: ToolChipLines | undefined;
  for (const raw of text.split('\n')) {
    const head = /^(gpiochip\d+)\s+-\s+(\d+)\s+lines?:/.exec(raw);
    if (head) {
      const count = Number(head[2]);
      current = { device: head[1], names: new Array<string>(Math.min(count, 4096)).fill('') };
      out.push(current);
      continue;
    }
    const row = /^\s+line\s+(\d+):\s+(?:"([^"]*)"|unnamed)/.exec(raw);
    if (row && current) {
      const offset = Number(row[1]);
      if (offset < current.names.length) current.names[offset] = row[2] ?? '';
    }
  }
  return out;
}

/** One-line description of a chip for messages: `pinctrl-rp1 (gpiochip571, gpiochip0, 54 lines)`. */
export function describeChip(c: SysfsChip): string {
  return `${c.label} (${[c.dir, ...c.devices].join(', ')}, ${c.ngpio} lines)`;
}

async function lookupLineName(chip: SysfsChip, name: string, source: LineNameSource): Promise<number> {
  let tables: ToolChipLines[];
  try {
    tables = await source();
  } catch (err) {
    if (err instanceof GpioError) throw err;
    throw new GpioError('name-lookup', `cannot resolve GPIO line name "${name}": ${(err as Error).message}; give offset instead`, { cause: err });
  }
  const table =
    tables.find((t) => t.label !== undefined && t.label === chip.label) ?? tables.find((t) => chip.devices.includes(t.device));
  if (!table) {
    throw new GpioError(
      'name-lookup',
      `cannot resolve GPIO line name "${name}": the libgpiod tools do not list chip ${chip.label} (they list ${listForMessage(
        tables.map((t) => (t.label ? `${t.device} [${t.label}]` : t.device)),
      )}); give offset instead`,
    );
  }
  const offsets = table.names.flatMap((n, i) => (n === name ? [i] : []));
  if (offsets.length === 0) {
    throw new GpioError(
      'line-not-found',
      `no line named "${name}" on GPIO chip ${chip.label} (names: ${listForMessage(table.names.filter((n) => n.length > 0))})`,
    );
  }
  if (offsets.length > 1) {
    throw new GpioError('line-not-found', `line name "${name}" is not unique on GPIO chip ${chip.label} (offsets ${offsets.join(', ')}); give offset instead`);
  }
  if (offsets[0] >= chip.ngpio) {
    throw new GpioError('line-not-found', `line "${name}" is offset ${offsets[0]}, beyond chip ${chip.label}'s ${chip.ngpio} sysfs lines`);
  }
  return offsets[0];
}

/** Runs one of the libgpiod tools with a time limit; GpioError `name-lookup` when absent or failing. */
function runTool(tool: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    // 5 s is generous: the tools answer in milliseconds; a hang must not stall startup.
    execFile(tool, args, { timeout: 5000, maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      if (e.code === 'ENOENT') {
        return reject(
          new GpioError(
            'name-lookup',
            `cannot resolve GPIO line names: sysfs does not expose them and the libgpiod tools (${tool}) are not installed (apt-get install gpiod); give the line's offset instead (e.g. offset: 17)`,
            { cause: err },
          ),
        );
      }
      const why = e.killed ? 'timed out' : (String(stderr).trim().split('\n')[0] || e.message);
      reject(new GpioError('name-lookup', `cannot resolve GPIO line names: ${tool} failed: ${why}; give the line's offset instead`, { cause: err }));
    });
  });
}

function noSysfs(root: string, cause?: unknown): GpioError {
  return new GpioError(
    'no-sysfs',
    `no GPIO sysfs at ${root}: this machine has no GPIO sysfs interface (not a Raspberry Pi or similar board; /sys not mounted; ` +
      `a container started without the host's /sys (docker run -v /sys:/sys ...); or a kernel built without CONFIG_GPIO_SYSFS). ` +
      `For tests and demos without hardware set gpio.backend: sim`,
    cause === undefined ? {} : { cause },
  );
}

function readAttr(dir: string, name: string): string | undefined {
  try {
    return readFileSync(path.join(dir, name), 'utf8').trim();
  } catch {
    return undefined;
  }
}

function parseCount(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d{1,9}$/.test(text)) return undefined;
  return Number(text);
}

/** Character-device names under a sysfs chip's `device` (the gpio device, or its parent). */
function deviceNames(chipDir: string): string[] {
  // The kernel parents the sysfs chip on the driver's device (whose children include the gpio
  // device gpiochipN) or, without one, on the gpio device itself.
  const dev = path.join(chipDir, 'device');
  const names = new Set<string>();
  try {
    const real = realpathSync(dev);
    const own = path.basename(real);
    if (/^gpiochip\d+$/.test(own) && !statSync(path.join(real, 'base'), { throwIfNoEntry: false })) names.add(own);
    for (const e of readdirSync(real)) if (/^gpiochip\d+$/.test(e)) names.add(e);
  } catch {
    // No `device` link: older kernels or a fake tree; the chip is still usable by label.
  }
  return [...names].sort(byNumber);
}

function byNumber(a: string, b: string): number {
  return Number(a.replace(/\D/g, '')) - Number(b.replace(/\D/g, '')) || a.localeCompare(b);
}
