/**
 * The sysfs resolver against fake sysfs trees laid out like a Pi 5 (kernel >= 6.6, rp1 at
 * base 571) and a Pi 4 (bcm2711 at base 512), the onoff backend's open path with a scripted
 * stand-in for onoff's Gpio class on such a tree, and the real onoff backend on this machine.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeClock } from '../../runtime/clock.ts';
import {
  findSysfsChip,
  GpioError,
  listSysfsChips,
  OnoffGpioBackend,
  parseGpiodetect,
  parseGpioinfo,
  resolveSysfsLine,
  type GpioErrorReason,
  type GpioLevel,
  type OnoffGpio,
  type OnoffGpioClass,
  type ToolChipLines,
} from '../../drivers/gpio/index.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-gpio-sysfs-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface FakeChip {
  dir: string;
  label: string;
  base: number;
  ngpio: number;
  /** Name of the character device under the parent device (gpiochip0...). */
  device?: string;
  /** Parent platform device directory name. */
  parent?: string;
}

/** Lays out <root>/class/gpio with chips whose `device` links point at parents holding gpiochipN. */
function fakeTree(name: string, chips: FakeChip[]): string {
  const top = path.join(tmp, name);
  const root = path.join(top, 'class', 'gpio');
  mkdirSync(root, { recursive: true });
  writeFileSync(path.join(root, 'export'), '');
  writeFileSync(path.join(root, 'unexport'), '');
  for (const c of chips) {
    const dir = path.join(root, c.dir);
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'label'), `${c.label}\n`);
    writeFileSync(path.join(dir, 'base'), `${c.base}\n`);
    writeFileSync(path.join(dir, 'ngpio'), `${c.ngpio}\n`);
    if (c.parent) {
      const parent = path.join(top, 'devices', c.parent);
      mkdirSync(parent, { recursive: true });
      if (c.device) mkdirSync(path.join(parent, c.device), { recursive: true });
      symlinkSync(path.relative(dir, parent), path.join(dir, 'device'));
    }
  }
  return root;
}

// Raspberry Pi 5, kernel 6.6+: rp1's 54 lines at base 571 are gpiochip0 (gpiochip4 on early images).
const pi5 = fakeTree('pi5', [
  { dir: 'gpiochip512', label: 'gpio-brcmstb@107d508500', base: 512, ngpio: 32, parent: '107d508500.gpio', device: 'gpiochip1' },
  { dir: 'gpiochip544', label: 'gpio-brcmstb@107d508520', base: 544, ngpio: 4, parent: '107d508520.gpio', device: 'gpiochip2' },
  { dir: 'gpiochip571', label: 'pinctrl-rp1', base: 571, ngpio: 54, parent: '1f000d0000.gpio', device: 'gpiochip0' },
]);
// Raspberry Pi 4, kernel 6.6+: bcm2711 at base 512, the firmware expander at 570.
const pi4 = fakeTree('pi4', [
  { dir: 'gpiochip512', label: 'pinctrl-bcm2711', base: 512, ngpio: 58, parent: 'fe200000.gpio', device: 'gpiochip0' },
  { dir: 'gpiochip570', label: 'raspberrypi-exp-gpio', base: 570, ngpio: 8, parent: 'soc:firmware:gpio', device: 'gpiochip1' },
]);
// A tree without device links (older kernels, minimal containers).
const bare = fakeTree('bare', [{ dir: 'gpiochip0', label: 'pinctrl-bcm2835', base: 0, ngpio: 54 }]);

async function rejectsGpio(p: Promise<unknown>, reason: GpioErrorReason, message: RegExp): Promise<GpioError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof GpioError, `expected a GpioError, got ${String(caught)}`);
  assert.equal(caught.code, 'KEEL_E_GPIO');
  assert.equal(caught.reason, reason, caught.message);
  assert.match(caught.message, message);
  return caught;
}

const pi5Names: ToolChipLines[] = [
  { device: 'gpiochip0', label: 'pinctrl-rp1', names: Array.from({ length: 54 }, (_, i) => (i < 28 ? `GPIO${i}` : i === 34 ? 'PCIE_RP1_WAKE' : '')) },
  { device: 'gpiochip1', label: 'gpio-brcmstb@107d508500', names: Array.from({ length: 32 }, (_, i) => (i === 20 ? 'PWR_GPIO' : '')) },
];

describe('sysfs chip listing', () => {
  test('reads label, base, ngpio and the character-device name of every chip', () => {
    const chips = listSysfsChips(pi5);
    assert.deepEqual(
      chips.map((c) => [c.dir, c.label, c.base, c.ngpio, c.devices]),
      [
        ['gpiochip512', 'gpio-brcmstb@107d508500', 512, 32, ['gpiochip1']],
        ['gpiochip544', 'gpio-brcmstb@107d508520', 544, 4, ['gpiochip2']],
        ['gpiochip571', 'pinctrl-rp1', 571, 54, ['gpiochip0']],
      ],
    );
  });

  test('a missing sysfs directory is reported as no GPIO sysfs, with the reasons and the sim hint', () => {
    assert.throws(
      () => listSysfsChips(path.join(tmp, 'nowhere', 'gpio')),
      (err: unknown) =>
        err instanceof GpioError &&
        err.reason === 'no-sysfs' &&
        /no GPIO sysfs at .*nowhere/.test(err.message) &&
        /container/.test(err.message) &&
        /gpio\.backend: sim/.test(err.message),
    );
  });

  test('a sysfs directory without chips is also no GPIO sysfs', () => {
    const empty = path.join(tmp, 'empty-gpio');
    mkdirSync(empty);
    assert.throws(() => listSysfsChips(empty), (err: unknown) => err instanceof GpioError && err.reason === 'no-sysfs');
  });

  test('a chip with an unreadable attribute is skipped, the others still resolve', () => {
    const root = fakeTree('broken', [
      { dir: 'gpiochip512', label: 'pinctrl-bcm2711', base: 512, ngpio: 58 },
      { dir: 'gpiochip600', label: 'odd', base: 600, ngpio: 8 },
    ]);
    writeFileSync(path.join(root, 'gpiochip600', 'ngpio'), 'garbage\n');
    assert.deepEqual(listSysfsChips(root).map((c) => c.label), ['pinctrl-bcm2711']);
  });
});

describe('resolving lines to global numbers', () => {
  test('Pi 5: pinctrl-rp1 offset 17 is sysfs 588 (base 571 + 17)', async () => {
    const r = await resolveSysfsLine({ chip: 'pinctrl-rp1', offset: 17 }, { sysfsRoot: pi5 });
    assert.equal(r.gpio, 588);
    assert.equal(r.offset, 17);
    assert.equal(r.chip.dir, 'gpiochip571');
  });

  test('Pi 4: pinctrl-bcm2711 offset 17 is sysfs 529 (base 512 + 17)', async () => {
    const r = await resolveSysfsLine({ chip: 'pinctrl-bcm2711', offset: 17 }, { sysfsRoot: pi4 });
    assert.equal(r.gpio, 529);
    const exp = await resolveSysfsLine({ chip: 'raspberrypi-exp-gpio', offset: 2 }, { sysfsRoot: pi4 });
    assert.equal(exp.gpio, 572);
  });

  test('gpiochipN works as the character-device name (gpiodetect) and as the sysfs directory name', async () => {
    assert.equal((await resolveSysfsLine({ chip: 'gpiochip0', offset: 4 }, { sysfsRoot: pi5 })).gpio, 575);
    assert.equal((await resolveSysfsLine({ chip: 'gpiochip571', offset: 4 }, { sysfsRoot: pi5 })).gpio, 575);
    assert.equal((await resolveSysfsLine({ chip: 'gpiochip1', offset: 3 }, { sysfsRoot: pi5 })).gpio, 515);
    assert.equal((await resolveSysfsLine({ chip: 'gpiochip1', offset: 3 }, { sysfsRoot: pi4 })).gpio, 573);
    // Without device links only the sysfs directory name (here base 0) identifies the chip.
    assert.equal((await resolveSysfsLine({ chip: 'gpiochip0', offset: 17 }, { sysfsRoot: bare })).gpio, 17);
  });

  test('an unknown chip lists the chips that exist', async () => {
    const err = await rejectsGpio(resolveSysfsLine({ chip: 'pinctrl-bcm2711', offset: 17 }, { sysfsRoot: pi5 }), 'chip-not-found', /"pinctrl-bcm2711" not found/);
    assert.match(err.message, /pinctrl-rp1 \(gpiochip571, gpiochip0, 54 lines\)/);
    assert.match(err.message, /gpio-brcmstb@107d508500/);
    await rejectsGpio(resolveSysfsLine({ chip: 'gpiochip9', offset: 0 }, { sysfsRoot: pi5 }), 'chip-not-found', /gpiochip9/);
  });

  test('offset >= ngpio is out of range, naming the valid offsets', async () => {
    await rejectsGpio(resolveSysfsLine({ chip: 'pinctrl-rp1', offset: 54 }, { sysfsRoot: pi5 }), 'line-not-found', /offset 54 is out of range .*54 lines, offsets 0-53/);
    const ok = await resolveSysfsLine({ chip: 'pinctrl-rp1', offset: 53 }, { sysfsRoot: pi5 });
    assert.equal(ok.gpio, 624);
  });

  test('line names resolve through the line-name source, matched by chip label', async () => {
    const lineNames = async () => pi5Names;
    const r = await resolveSysfsLine({ chip: 'pinctrl-rp1', name: 'GPIO17' }, { sysfsRoot: pi5, lineNames });
    assert.equal(r.gpio, 588);
    const w = await resolveSysfsLine({ chip: 'gpiochip1', name: 'PWR_GPIO' }, { sysfsRoot: pi5, lineNames });
    assert.equal(w.gpio, 532);
    await rejectsGpio(resolveSysfsLine({ chip: 'pinctrl-rp1', name: 'GPIO99' }, { sysfsRoot: pi5, lineNames }), 'line-not-found', /no line named "GPIO99" on GPIO chip pinctrl-rp1 \(names: GPIO0, GPIO1/);
    await rejectsGpio(
      resolveSysfsLine({ chip: 'gpio-brcmstb@107d508520', name: 'X' }, { sysfsRoot: pi5, lineNames }),
      'name-lookup',
      /do not list chip gpio-brcmstb@107d508520.*give offset instead/,
    );
  });

  test('without the libgpiod tools a line name fails with a message saying to use offset', async (t) => {
    const onPath = (process.env.PATH ?? '').split(':').some((d) => d && existsSync(path.join(d, 'gpiodetect')));
    if (onPath) {
      t.skip('gpiodetect is installed here; this checks the message on machines without it');
      return;
    }
    await rejectsGpio(resolveSysfsLine({ chip: 'pinctrl-rp1', name: 'GPIO17' }, { sysfsRoot: pi5 }), 'name-lookup', /apt-get install gpiod.*offset/);
  });

  test('bad line configs are TypeErrors naming the parameter', async () => {
    await assert.rejects(resolveSysfsLine({ chip: 'pinctrl-rp1' }, { sysfsRoot: pi5 }), /TypeError: line: give exactly one of offset or name \(got neither\)/);
    await assert.rejects(resolveSysfsLine({ chip: 'pinctrl-rp1', offset: 1, name: 'GPIO1' }, { sysfsRoot: pi5 }), /got both/);
    await assert.rejects(resolveSysfsLine({ chip: '', offset: 1 }, { sysfsRoot: pi5 }), /line\.chip must be a non-empty string/);
    await assert.rejects(resolveSysfsLine({ chip: 'pinctrl-rp1', offset: -1 }, { sysfsRoot: pi5 }), /line\.offset must be a non-negative integer/);
  });

  test('a label used by two chips is refused with a hint to use gpiochipN', () => {
    const chips = listSysfsChips(pi4).map((c) => ({ ...c, label: 'same' }));
    assert.throws(() => findSysfsChip(chips, 'same'), (e: unknown) => e instanceof GpioError && /not unique/.test(e.message));
    assert.equal(findSysfsChip(chips, 'gpiochip1').base, 570);
  });
});

describe('libgpiod tool output parsing', () => {
  test('gpiodetect (v1 and v2 print the same)', () => {
    const m = parseGpiodetect('gpiochip0 [pinctrl-rp1] (54 lines)\ngpiochip1 [gpio-brcmstb@107d508500] (32 lines)\n\ngarbage\n');
    assert.deepEqual([...m], [
      ['gpiochip0', 'pinctrl-rp1'],
      ['gpiochip1', 'gpio-brcmstb@107d508500'],
    ]);
  });

  test('gpioinfo v1 (unnamed lines, quoted names)', () => {
    const v1 = [
      'gpiochip0 - 4 lines:',
      '\tline   0:     "ID_SDA"       unused   input  active-high ',
      '\tline   1:      unnamed       unused   input  active-high ',
      '\tline   2:     "GPIO2"        "sysfs"  output  active-high [used]',
      '\tline   3:     "GPIO3"       unused   input  active-high ',
      'gpiochip1 - 2 lines:',
      '\tline   0:      "BT_ON"   unused  output  active-high ',
      '\tline   1:     "WL_ON"   unused  output  active-high ',
    ].join('\n');
    assert.deepEqual(parseGpioinfo(v1), [
      { device: 'gpiochip0', names: ['ID_SDA', '', 'GPIO2', 'GPIO3'] },
      { device: 'gpiochip1', names: ['BT_ON', 'WL_ON'] },
    ]);
  });

  test('gpioinfo v2 (tab-separated, attributes in brackets)', () => {
    const v2 = ['gpiochip0 - 3 lines:', '\tline   0:\t"ID_SDA"        \tinput', '\tline   1:\tunnamed         \tinput', '\tline   2:\t"GPIO2"         \toutput consumer="keel"'].join('\n');
    assert.deepEqual(parseGpioinfo(v2), [{ device: 'gpiochip0', names: ['ID_SDA', '', 'GPIO2'] }]);
  });
});

/** A scripted stand-in for onoff's Gpio: records construction, lets tests fire edges and errors. */
function scriptedGpio() {
  const made: Array<{ gpio: number; direction: string; edge?: string; options?: { activeLow?: boolean }; inst: FakeGpio }> = [];
  let failNext: NodeJS.ErrnoException | undefined;
  class FakeGpio implements OnoffGpio {
    static accessible = true;
    value: GpioLevel = 0;
    watcher?: (err: Error | null | undefined, value: GpioLevel) => void;
    unexported = false;
    constructor(gpio: number, direction: 'in' | 'out' | 'high' | 'low', edge?: 'none' | 'rising' | 'falling' | 'both', options?: { activeLow?: boolean }) {
      if (failNext) {
        const e = failNext;
        failNext = undefined;
        throw e;
      }
      if (direction === 'high') this.value = 1;
      made.push({ gpio, direction, edge, options, inst: this });
    }
    readSync(): GpioLevel {
      return this.value;
    }
    writeSync(value: GpioLevel): void {
      this.value = value;
    }
    watch(cb: (err: Error | null | undefined, value: GpioLevel) => void): void {
      this.watcher = cb;
    }
    unwatchAll(): void {
      this.watcher = undefined;
    }
    unexport(): void {
      this.unexported = true;
    }
  }
  const fail = (code: string, message: string) => {
    const e = new Error(`${code}: ${message}`) as NodeJS.ErrnoException;
    e.code = code;
    failNext = e;
  };
  const typed: OnoffGpioClass = FakeGpio; // the stand-in must fit the slot onoff fills
  return { Gpio: FakeGpio, made, fail, typed };
}

describe('onoff backend open path (scripted Gpio on a fake tree)', () => {
  test('opens the resolved global number as an input, reports edges with clock time, closes by unexporting', async () => {
    const clock = new FakeClock();
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock, sysfsRoot: pi5, gpioClass: s.Gpio });
    const line = await backend.openInput({ chip: 'pinctrl-rp1', offset: 17 }, { edge: 'both', activeLow: true });
    assert.equal(s.made.length, 1);
    assert.deepEqual({ gpio: s.made[0].gpio, direction: s.made[0].direction, edge: s.made[0].edge, options: s.made[0].options }, {
      gpio: 588,
      direction: 'in',
      edge: 'both',
      options: { activeLow: true },
    });
    const seen: Array<[number, number]> = [];
    line.onEdge((v, t) => seen.push([v, t]));
    const errors: GpioError[] = [];
    line.onError((e) => errors.push(e));
    clock.advance(5);
    s.made[0].inst.watcher?.(null, 1);
    assert.deepEqual(seen, [[1, clock.now()]]);
    s.made[0].inst.watcher?.(new Error('EPOLL broke'), 0);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].reason, 'io');
    assert.equal(errors[0].retryable, true);
    s.made[0].inst.value = 1;
    assert.equal(line.read(), 1);
    await line.close();
    await line.close();
    assert.equal(s.made[0].inst.unexported, true);
    assert.throws(() => line.read(), (e: unknown) => e instanceof GpioError && e.reason === 'closed');
  });

  test('a line opened twice by this process is busy until closed', async () => {
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi4, gpioClass: s.Gpio });
    const out = await backend.openOutput({ chip: 'pinctrl-bcm2711', offset: 27 }, { activeLow: false, initial: 0 });
    await rejectsGpio(
      backend.openInput({ chip: 'gpiochip0', offset: 27 }, { edge: 'both', activeLow: false }),
      'busy',
      /sysfs gpio539\) is already opened by this process \(as an output, named pinctrl-bcm2711 offset 27\)/,
    );
    // Also across backend instances: sysfs has one export per line.
    const other = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi4, gpioClass: s.Gpio });
    await rejectsGpio(other.openOutput({ chip: 'pinctrl-bcm2711', offset: 27 }, { activeLow: false, initial: 0 }), 'busy', /already opened/);
    await out.close();
    const again = await other.openInput({ chip: 'pinctrl-bcm2711', offset: 27 }, { edge: 'none', activeLow: false });
    await again.close();
  });

  test('EBUSY from the kernel is a retryable busy error naming the likely holders', async () => {
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5, gpioClass: s.Gpio });
    s.fail('EBUSY', 'resource busy or locked, write');
    const err = await rejectsGpio(backend.openInput({ chip: 'pinctrl-rp1', offset: 4 }, { edge: 'both', activeLow: false }), 'busy', /EBUSY.*kernel driver.*gpioinfo/);
    assert.equal(err.retryable, true);
    assert.match(err.message, /sysfs gpio575/);
    // The failed open released the claim: the next open of the same line works.
    const line = await backend.openInput({ chip: 'pinctrl-rp1', offset: 4 }, { edge: 'both', activeLow: false });
    await line.close();
  });

  test('EACCES while configuring is a permission error pointing at the gpio group', async () => {
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5, gpioClass: s.Gpio });
    s.fail('EACCES', 'permission denied');
    await rejectsGpio(backend.openOutput({ chip: 'pinctrl-rp1', offset: 5 }, { activeLow: false, initial: 0 }), 'permission', /gpio group/);
  });

  test('an inaccessible export file is a permission error', async () => {
    const s = scriptedGpio();
    const Locked = class extends s.Gpio {
      static override accessible = false;
    };
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5, gpioClass: Locked });
    await rejectsGpio(backend.openOutput({ chip: 'pinctrl-rp1', offset: 6 }, { activeLow: false, initial: 0 }), 'permission', /export.*gpio group/);
    assert.equal(s.made.length, 0);
  });

  test('outputs start at the physical level of the logical initial value (sysfs high/low are raw)', async () => {
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5, gpioClass: s.Gpio });
    const cases: Array<[GpioLevel, boolean, string]> = [
      [0, false, 'low'],
      [1, false, 'high'],
      [0, true, 'high'],
      [1, true, 'low'],
    ];
    for (const [initial, activeLow, direction] of cases) {
      const out = await backend.openOutput({ chip: 'pinctrl-rp1', offset: 20 }, { activeLow, initial });
      const made = s.made[s.made.length - 1];
      assert.equal(made.direction, direction, `initial ${initial} activeLow ${activeLow}`);
      assert.deepEqual(made.options, { activeLow });
      out.write(1);
      assert.equal(out.read(), 1);
      await out.close();
      assert.throws(() => out.write(0), (e: unknown) => e instanceof GpioError && e.reason === 'closed');
    }
  });

  test('resolution errors come before anything is exported', async () => {
    const s = scriptedGpio();
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5, gpioClass: s.Gpio });
    await rejectsGpio(backend.openInput({ chip: 'pinctrl-rp1', offset: 60 }, { edge: 'both', activeLow: false }), 'line-not-found', /offsets 0-53/);
    await rejectsGpio(backend.openInput({ chip: 'nope', offset: 1 }, { edge: 'both', activeLow: false }), 'chip-not-found', /pinctrl-rp1/);
    assert.equal(s.made.length, 0);
  });
});

describe('onoff backend with the real onoff package', () => {
  test('on this machine opening fails with the clear "no GPIO sysfs" error', async (t) => {
    if (existsSync('/sys/class/gpio/export')) {
      t.skip('this machine has GPIO sysfs; the no-sysfs message is checked on machines without it');
      return;
    }
    const backend = new OnoffGpioBackend({ clock: new FakeClock() });
    await rejectsGpio(backend.openInput({ chip: 'pinctrl-rp1', offset: 17 }, { edge: 'both', activeLow: false }), 'no-sysfs', /no GPIO sysfs at \/sys\/class\/gpio/);
    await rejectsGpio(backend.openOutput({ chip: 'pinctrl-bcm2711', offset: 17 }, { activeLow: false, initial: 0 }), 'no-sysfs', /not a Raspberry Pi/);
  });

  test('a moved sysfs root cannot be used with onoff, which only opens /sys/class/gpio', async () => {
    const backend = new OnoffGpioBackend({ clock: new FakeClock(), sysfsRoot: pi5 });
    await rejectsGpio(backend.openInput({ chip: 'pinctrl-rp1', offset: 17 }, { edge: 'both', activeLow: false }), 'unsupported', /can only open lines under \/sys\/class\/gpio/);
  });
});
