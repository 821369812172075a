/**
 * HIL scenarios (firmware-bridge/hil/scenario.ts, expect.ts, waves.ts, report.ts, cli.ts).
 *
 * Without the board: the assertion semantics on hand-made timelines, the input waveforms,
 * invalid scenario files (every problem with its path, exit 3, nothing started), and JUnit
 * XML that stays well-formed whatever the names and messages hold.
 *
 * On the emulated board (simavr; skipped with an install hint when the AVR toolchain or
 * simavr is missing, failing under CI=true): the shipped example scenarios pass (a real keel
 * Runtime with the shipped motor-stall model closes the loop through the reference firmware);
 * a scenario written here with assertions that must fail is reported as failing in the text
 * report, the JSON and the JUnit XML, with exit code 1; and the host's BridgeSession talks to
 * the real firmware over the pty (handshake, samples, SET, TIMESYNC, link loss, failsafe).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SystemClock } from '../../runtime/clock.ts';
import { SystemSerialOpener } from '../../drivers/serial/index.ts';
import { BridgeSession, type ChannelSamples } from '../../firmware-bridge/session.ts';
import { startBoard } from '../../firmware-bridge/hil/harness.ts';
import { evaluate, evaluateAll, type Expectation, type Timeline } from '../../firmware-bridge/hil/expect.ts';
import { InputWave, loadRecording } from '../../firmware-bridge/hil/waves.ts';
import { junitXml, xmlAttr, xmlText } from '../../firmware-bridge/hil/report.ts';
import { loadScenario, parseScenarioText, runScenario, ScenarioError, type ScenarioResult } from '../../firmware-bridge/hil/scenario.ts';
import { cmdHil } from '../../firmware-bridge/hil/cli.ts';
import { main as keelMain } from '../../runtime/cli.ts';
import { hilAvailable, sleep } from './pty-link.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const EXAMPLES = path.join(ROOT, 'examples/hil');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-hil-scenario-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `keel hil <args>` in-process and captures its output. */
async function hil(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await cmdHil(args, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

// ---------------------------------------------------------------- a strict XML 1.0 reader

interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

/**
 * Parses a document the way a conforming XML 1.0 parser must accept it (well-formedness
 * only: one root, nested tags, quoted unique attributes, the five predefined entities and
 * character references, no `<` or bare `&` in text or values, only XML characters).
 * Throws on anything else. Enough to hold JUnit output to the standard.
 */
function parseXml(doc: string): XmlElement {
  if (/[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u.test(doc)) throw new Error('a character XML 1.0 does not allow');
  let i = 0;
  const decode = (s: string, where: string): string => {
    if (s.includes('<')) throw new Error(`raw < in ${where}`);
    return s.replace(/&([^;]*);|&/g, (m, ent: string | undefined) => {
      if (ent === undefined) throw new Error(`bare & in ${where}`);
      const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
      if (ent in named) return named[ent];
      const num = /^#(\d+)$/.exec(ent) ?? /^#x([0-9a-fA-F]+)$/.exec(ent);
      if (!num) throw new Error(`unknown entity &${ent}; in ${where}`);
      return String.fromCodePoint(parseInt(num[1], ent[1] === 'x' ? 16 : 10));
    });
  };
  const prolog = /^<\?xml version="1\.0" encoding="UTF-8"\?>\n/.exec(doc);
  if (!prolog) throw new Error('missing XML declaration');
  i = prolog[0].length;
  const stack: XmlElement[] = [];
  let root: XmlElement | null = null;
  while (i < doc.length) {
    if (doc.startsWith('</', i)) {
      const end = doc.indexOf('>', i);
      const name = doc.slice(i + 2, end).trim();
      const open = stack.pop();
      if (!open || open.name !== name) throw new Error(`</${name}> closes <${open?.name}>`);
      i = end + 1;
      if (stack.length === 0) root = open;
      continue;
    }
    if (doc[i] === '<') {
      const m = /^<([A-Za-z_][\w.-]*)((?:\s+[A-Za-z_][\w.-]*="[^"]*")*)\s*(\/?)>/.exec(doc.slice(i));
      if (!m) throw new Error(`bad tag at ${i}: ${doc.slice(i, i + 60)}`);
      const attrs: Record<string, string> = {};
      for (const a of m[2].matchAll(/([A-Za-z_][\w.-]*)="([^"]*)"/g)) {
        if (a[1] in attrs) throw new Error(`duplicate attribute ${a[1]}`);
        attrs[a[1]] = decode(a[2], `attribute ${a[1]}`);
      }
      const el: XmlElement = { name: m[1], attrs, children: [], text: '' };
      if (stack.length) stack[stack.length - 1].children.push(el);
      else if (root) throw new Error('two root elements');
      if (m[3] === '/') {
        if (!stack.length) root = el;
      } else stack.push(el);
      i += m[0].length;
      continue;
    }
    const next = doc.indexOf('<', i);
    const raw = doc.slice(i, next < 0 ? doc.length : next);
    if (raw.includes(']]>')) throw new Error(']]> in text');
    if (stack.length) stack[stack.length - 1].text += decode(raw, `<${stack[stack.length - 1].name}> text`);
    else if (raw.trim()) throw new Error('text outside the root element');
    i = next < 0 ? doc.length : next;
  }
  if (stack.length || !root) throw new Error('unclosed elements');
  return root;
}

function all(el: XmlElement, name: string): XmlElement[] {
  return [...(el.name === name ? [el] : []), ...el.children.flatMap((c) => all(c, name))];
}

// ---------------------------------------------------------------- assertion semantics

/** A timeline: pin 9 at 0 from power-up, 178 at 700, 0 at 5800; lamp 1 at 5806, 0 at 6200. */
function timeline(): Timeline {
  return {
    durationMs: 10_000,
    events: { 'start-pressed': 500, jam: 4000 },
    outputs: [
      { atMs: -50, pin: 9, kind: 'pwm', value: 0, duty: 0 },
      { atMs: -50, pin: 13, kind: 'digital', value: 0 },
      { atMs: 700, pin: 9, kind: 'pwm', value: 178, duty: 0.698 },
      { atMs: 5800, pin: 9, kind: 'pwm', value: 0, duty: 0 },
      { atMs: 5806, pin: 13, kind: 'digital', value: 1 },
      { atMs: 6200, pin: 13, kind: 'digital', value: 0 },
    ],
    decisions: [
      { atMs: 698, pipeline: 'p', rule: 'start', state: 'enter', value: 0 },
      { atMs: 5798, pipeline: 'p', rule: 'stall', state: 'enter', value: 0.86 },
      { atMs: 6198, pipeline: 'p', rule: 'stall', state: 'exit', value: 0.01 },
    ],
    actions: [{ atMs: 5799, actuator: 'drive', value: 0, origin: 'p/stall', result: 'ok' }],
    faults: [{ atMs: 8000, kind: 'source-fault:motor', detail: 'motor: MCU on /dev/pts/3 went silent: no valid frame for 510 ms' }],
    safe: [
      { atMs: -10, on: false },
      { atMs: 8001, on: true, detail: 'source-fault:motor' },
      { atMs: 9500, on: false },
    ],
    link: [
      { atMs: -12, on: false },
      { atMs: 0, on: true },
      { atMs: 7990, on: false },
    ],
    inputs: [],
  };
}

test('assertion semantics on a hand-made timeline', () => {
  const tl = timeline();
  const check = (e: Expectation, passed: boolean, observed?: number, message?: RegExp) => {
    const r = evaluate(e, 0, tl);
    assert.equal(r.passed, passed, `${r.description}: ${r.message}`);
    if (observed !== undefined) assert.equal(r.observedAtMs, observed, `${r.description}: ${r.message}`);
    if (message) assert.match(r.message, message);
    return r;
  };
  // Eventually, with windows from events and offsets.
  check({ output: { pin: 9, value: 178 }, after: 'start-pressed', withinMs: 400 }, true, 700, /start-pressed \+ 200 ms/);
  check({ output: { pin: 9, value: 178 }, after: 'start-pressed', withinMs: 199 }, false, undefined, /not observed between 500 ms \(start-pressed\) and 699 ms; pin 9 was 0 \(pwm\) when the window opened; next change after the window: 178 at 700 ms/);
  // A state that already holds when the window opens counts at the window's start.
  check({ output: { pin: 9, value: 178 }, afterMs: 1000, withinMs: 10 }, true, 1000);
  check({ output: { pin: 9, above: 100, below: 200 } }, true, 700);
  check({ output: { pin: 9, kind: 'digital' } }, false);
  check({ output: { pin: 11, value: 1 } }, false, undefined, /pin 11 was never reported as an output/);
  // Anchored on another observation: the cut reaches the pin 2 ms after the decision.
  check({ output: { pin: 9, value: 0 }, after: { decision: { rule: 'stall', state: 'enter' } }, withinMs: 5 }, true, 5800);
  check({ output: { pin: 9, value: 0 }, after: { decision: { rule: 'stall', state: 'enter' } }, withinMs: 1 }, false);
  check({ output: { pin: 9, value: 0 }, after: { decision: { rule: 'nope' } } }, false, undefined, /never happened/);
  // never / always, with before.
  check({ never: { output: { pin: 13, value: 1 } }, before: 'jam' }, true);
  check({ never: { output: { pin: 13, value: 1 } } }, false, 5806, /observed at 5806 ms/);
  check({ always: { output: { pin: 9, value: 178 } }, after: 'start-pressed', afterMs: 300, before: 'jam' }, true);
  check({ always: { output: { pin: 9, value: 178 } }, after: 'start-pressed', afterMs: 100, before: 'jam' }, false, 600, /did not hold at 600 ms/);
  check({ always: { output: { pin: 9, value: 178 } }, after: 'start-pressed', afterMs: 300 }, false, 5800);
  // times: events, and transitions into a state.
  check({ decision: { rule: 'stall' }, times: 2 }, true);
  check({ decision: { rule: 'stall' }, times: 1 }, false, undefined, /observed 2 times .* expected 1/);
  check({ output: { pin: 13, value: 1 }, times: 1 }, true);
  check({ output: { pin: 13, value: 0 }, times: 1, afterMs: 1 }, true, 6200);
  // Actions: values compare as numbers (false, 0 and "0" are the same output value).
  check({ action: { actuator: 'drive', value: false, result: 'ok' } }, true, 5799);
  check({ action: { actuator: 'drive', value: '0' } }, true);
  check({ action: { actuator: 'drive', value: 1 } }, false, undefined, /actions seen: drive = 0 \(ok\) at 5799 ms/);
  // Faults: kind globs, detail regexes (case-insensitive).
  check({ fault: { kind: 'source-fault:*', detail: 'WENT SILENT' } }, true, 8000);
  check({ fault: { kind: 'source-fault' } }, false);
  // Safe state and link as states.
  check({ safe: true, after: { fault: {} }, withinMs: 5 }, true, 8001);
  check({ safe: false, after: { safe: true }, withinMs: 1000 }, false, undefined, /safe: not safe at -10 ms, safe at 8001 ms, not safe at 9500 ms/);
  check({ safe: false, after: { safe: true } }, true, 9500);
  check({ link: 'down', after: 'start', afterMs: 1 }, true, 7990);
  check({ always: { link: 'up' }, after: 'start', before: { link: 'down' } }, true);
  // `before` closes the window just before its anchor: the anchor's own instant is outside.
  check({ never: { link: 'down' }, after: 'start', before: { link: 'down' } }, true);
  // An empty window fails instead of passing vacuously.
  check({ never: { safe: true }, after: 'jam', before: 'start-pressed' }, false, undefined, /window is empty/);
  // A `before` anchor that never happens checks until the end, and says so.
  check({ never: { output: { pin: 10 } }, before: { decision: { rule: 'nope' } } }, true, undefined, /checked until the end/);
  const named = evaluateAll([{ name: 'my name', safe: true }], tl)[0];
  assert.equal(named.name, 'my name');
  assert.equal(named.description, 'safe state during the scenario');
});

// ---------------------------------------------------------------- input waveforms

test('input waveforms: steps, ramps, sine, follow, noise, digital, recordings', async () => {
  const counts = { kind: 'analog', index: 0, unit: 'counts', max: 1023 } as const;
  const pins = new Map<number, number>([[9, 178]]);
  const read = (p: number) => pins.get(p);
  const w = new InputWave(
    'current',
    counts,
    [
      { atMs: 0, value: 100 },
      { atMs: 1000, value: 500, overMs: 1000 },
      { atMs: 3000, follow: { pin: 9, gain: 2, offset: 5 } },
      { atMs: 4000, sine: { mean: 500, amplitude: 100, periodMs: 400 } },
      { atMs: 5000, value: 2000 },
    ],
    new Map(),
    1,
    10,
  );
  assert.equal(w.sample(-1, read), undefined);
  assert.equal(w.sample(500, read), 100);
  assert.equal(w.sample(1500, read), 300, 'halfway through the ramp');
  assert.equal(w.sample(2500, read), 500);
  assert.equal(w.varies(1, 1500), true);
  assert.equal(w.varies(1, 2500), false);
  assert.equal(w.sample(3500, read), 361);
  pins.set(9, 0);
  assert.equal(w.sample(3500, read), 5, 'follows the pin');
  assert.equal(w.sample(4100, read), 600, 'sine peak a quarter period in');
  assert.equal(w.sample(5000, read), 1023, 'clamped');
  assert.equal(w.clamped, 1);
  assert.deepEqual(w.followedPins(), [9]);
  assert.equal(w.nextStart(2), 4000);
  assert.equal(w.nextStart(4), Infinity);

  // Noise: seeded, the same sequence every time, roughly the stated deviation.
  const noisy = (seed: number) => {
    const n = new InputWave('n', counts, [{ atMs: 0, value: 500, noise: 10 }], new Map(), seed, 10);
    return Array.from({ length: 2000 }, () => n.sample(0, read)!);
  };
  assert.deepEqual(noisy(7), noisy(7));
  assert.notDeepEqual(noisy(7), noisy(8));
  const xs = noisy(7);
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length);
  assert.ok(Math.abs(mean - 500) < 1.5 && sd > 9 && sd < 11, `mean ${mean} sd ${sd}`);

  // Digital inputs read 1 from 0.5 up.
  const d = new InputWave('btn', { kind: 'digital', index: 2, unit: 'level', max: 1 }, [{ atMs: 0, follow: { pin: 9, gain: 0.01 } }], new Map(), 1, 10);
  pins.set(9, 49);
  assert.equal(d.sample(0, read), 0);
  pins.set(9, 50);
  assert.equal(d.sample(0, read), 1);

  // A recording as keel record writes it, played sample-and-hold from the segment start.
  const csv = path.join(tmp, 'rec.csv');
  fs.writeFileSync(csv, '# keel-record v1\n# source: motor  started: 2025-01-01T00:00:00Z\nt_ms,current,note\n100.000,10,a\n110.000,20,b\n130.000,40,c\n');
  const rec = await loadRecording({ file: 'rec.csv', column: 'current', timeColumn: 't_ms' }, tmp);
  assert.deepEqual([...rec.timesMs], [0, 10, 30]);
  const r = new InputWave('rec', counts, [{ atMs: 0, value: 0 }, { atMs: 1000, csv: { file: 'rec.csv', column: 'current', scale: 2, offset: 1, loop: true } }], new Map([[1, rec]]), 1, 5);
  assert.equal(r.sample(1000, read), 21);
  assert.equal(r.sample(1015, read), 41);
  assert.equal(r.sample(1035, read), 81);
  assert.equal(r.sample(1040, read), 81);
  assert.equal(r.sample(1045, read), 21, 'loops after one period (span 30 ms + mean interval 15 ms)');
  await assert.rejects(loadRecording({ file: 'rec.csv', column: 'voltage', timeColumn: 't_ms' }, tmp), /column "voltage" not in the header/);
  await assert.rejects(loadRecording({ file: 'nope.csv', column: 'current', rateHz: 100 }, tmp), /nope\.csv: file not found/);
});

// ---------------------------------------------------------------- invalid scenarios

test('invalid scenarios: every problem with its path, exit 3, nothing runs', async () => {
  const config = path.join(EXAMPLES, 'motor.yaml');
  const write = (name: string, text: string) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, text);
    return f;
  };
  const issuesOf = async (file: string): Promise<Record<string, string>> => {
    try {
      await loadScenario(file);
    } catch (err) {
      assert.ok(err instanceof ScenarioError, String(err));
      return Object.fromEntries(err.issues.map((i) => [i.path, i.message]));
    }
    assert.fail(`${file} loaded`);
  };
  // Schema: unknown keys, ranges, enums, anchors (all reported at once).
  const schema = await issuesOf(
    write(
      'schema.hil.yaml',
      `config: ${config}\ndurationMs: 5000\nspeeed: 2\ninputs:\n  - analog: 9\n    wave: [{atMs: 0, value: 1}]\nboard: [{atMs: 10, do: unplug}]\nexpect:\n  - output: {pin: 1}\n  - action: {}\n    after: {outptu: {pin: 9}}\n`,
    ),
  );
  assert.equal(schema.speeed, 'unknown key');
  assert.match(schema['inputs[0].analog'], /<= 7, got 9/);
  assert.match(schema['board[0].do'], /one of "link-down", "link-up", "reset"/);
  assert.match(schema['expect[0].output.pin'], />= 2, got 1/);
  assert.equal(schema['expect[1].after.outptu'], 'unknown key');
  // Semantics: shapes, order, events, matchers, regexes, quantifiers.
  const sem = await issuesOf(
    write(
      'semantics.hil.yaml',
      `config: ${config}
durationMs: 5000
inputs:
  - analog: 0
    wave: [{atMs: 0, value: 2000}, {atMs: 0, value: 3, sine: {mean: 1, amplitude: 1, periodMs: 10}}]
  - {digital: 2, analog: 1, wave: [{atMs: 0, value: 1}]}
  - digital: 3
    wave: [{atMs: 0, value: 0.5, event: go}, {atMs: 9000, value: 1, event: go}]
expect:
  - {output: {pin: 9, value: 0}, after: jamm}
  - {decision: {rule: stall}, output: {pin: 9}}
  - never: {fault: {detail: "([a"}}
  - always: {decision: {}}
  - {}
  - {never: {safe: true}, times: 2}
`,
    ),
  );
  assert.match(sem['inputs[0].wave[0].value'], /0\.\.1023 counts, got 2000/);
  assert.match(sem['inputs[0].wave[1]'], /only one of value, sine/);
  assert.match(sem['inputs[0].wave[1].atMs'], /later than the previous/);
  assert.match(sem['inputs[1]'], /exactly one of analog .* or digital/);
  assert.match(sem['inputs[2].wave[0].value'], /reads 0 or 1, not 0.5/);
  assert.match(sem['inputs[2].wave[1].atMs'], /after the end of the scenario/);
  assert.match(sem['inputs[2].wave[1].event'], /"go" is already defined at inputs\[2\]\.wave\[0\]\.event/);
  assert.match(sem['expect[0].after'], /no event named "jamm" \(defined: go; or start, end\)/);
  assert.match(sem['expect[1]'], /only one of output, decision/);
  assert.match(sem['expect[2].never.fault.detail'], /not a valid regular expression/);
  assert.match(sem['expect[3].always'], /always applies to states/);
  assert.match(sem['expect[4]'], /give one of output/);
  assert.match(sem['expect[5].times'], /plain matcher/);
  // Against the config: names that do not exist there, ports, files.
  const cfg = await issuesOf(
    write(
      'config.hil.yaml',
      `config: ${config}\nport: /dev/ttyUSB9\nfirmware: nofw.elf\ndurationMs: 5000\ninputs:\n  - analog: 0\n    wave: [{atMs: 0, csv: {file: missing.csv, column: current, rateHz: 100}}]\nexpect:\n  - action: {actuator: motr}\n  - decision: {pipeline: stall-guard, rule: stal}\n`,
    ),
  );
  assert.match(cfg.port, /no bridge source or actuator of the config uses \/dev\/ttyUSB9 \(they use \/dev\/ttyACM0\)/);
  assert.match(cfg.firmware, /nofw\.elf: file not found/);
  assert.match(cfg['inputs[0].wave[0].csv'], /missing\.csv: file not found/);
  assert.match(cfg['expect[0].action.actuator'], /no actuator "motr" \(it has drive, lamp\)/);
  assert.match(cfg['expect[1].decision.rule'], /no rule "stal" in pipeline "stall-guard" \(rules: start, stall\)/);
  // YAML damage and a missing config file.
  assert.match((await issuesOf(write('dup.hil.yaml', 'config: x.yaml\nconfig: y.yaml\n')))[''], /YAML DUPLICATE_KEY/);
  assert.match((await issuesOf(write('noconf.hil.yaml', 'config: nope.yaml\ndurationMs: 1000\nexpect: [{safe: true}]\n'))).config, /nope\.yaml: file not found \(relative to the scenario's directory\)/);
  // A config that is itself broken is reported against the config file.
  const brokenConfig = write('broken-config.yaml', fs.readFileSync(config, 'utf8').replace('rateHz: 100, scale: 0.01', 'rateHz: 0, scale: 0.01'));
  await assert.rejects(loadScenario(write('bc.hil.yaml', `config: broken-config.yaml\ndurationMs: 1000\nexpect: [{safe: true}]\n`)), (err: ScenarioError) => {
    assert.equal(err.file, path.join(tmp, 'broken-config.yaml'));
    assert.ok(err.issues.some((i) => i.path === 'sources[0].channels[0].rateHz'), JSON.stringify(err.issues));
    return true;
  });
  assert.throws(() => parseScenarioText('- a list\n'), /expected a mapping/);

  // The command: exit 3, every file's problems on stderr, nothing run, the JUnit file says so.
  const junit = path.join(tmp, 'invalid.xml');
  const r = await hil('run', path.join(tmp, 'schema.hil.yaml'), path.join(tmp, 'nothere.hil.yaml'), '--junit', junit);
  assert.equal(r.code, 3, r.err);
  assert.match(r.err, /schema\.hil\.yaml: 6 problems/);
  assert.match(r.err, /  expect\[1\]\.after: expected an event name \(or start\), or a matcher/);
  assert.match(r.err, /  expect\[1\]\.after\.outptu: unknown key/);
  assert.match(r.err, /nothere\.hil\.yaml: file not found/);
  assert.match(r.err, /nothing was run/);
  assert.doesNotMatch(r.out, /running/);
  const doc = parseXml(fs.readFileSync(junit, 'utf8'));
  assert.equal(doc.attrs.errors, '2');
  assert.equal(all(doc, 'error').length, 2);
  const c = await hil('check', path.join(tmp, 'config.hil.yaml'), path.join(EXAMPLES, 'motor-stall.hil.yaml'));
  assert.equal(c.code, 3);
  assert.match(c.err, /config\.hil\.yaml: 5 problems/);
  assert.match(c.out, /motor-stall\.hil\.yaml: ok \(3 inputs, 0 board steps, \d+ assertions; config .*motor\.yaml ok, models pinned and matching\)/);
  // Usage errors.
  assert.equal((await hil()).code, 2);
  assert.equal((await hil('run')).code, 2);
  assert.equal((await hil('run', 'x.yaml', '--sped', '1')).code, 2);
  const speed = await hil('run', 'x.yaml', '--speed', '5');
  assert.equal(speed.code, 2);
  assert.match(speed.err, /--speed must be a number from 0.5 to 2/);
  assert.equal((await hil('frobnicate')).code, 2);
  assert.equal((await hil('run', '--help')).code, 0);
});

test('the example config passes keel check as it stands (a real device path, not a placeholder)', async () => {
  const out: string[] = [];
  const code = await keelMain(['check', path.join(EXAMPLES, 'motor.yaml')], { out: (s) => out.push(s), err: (s) => out.push(s), isTTY: false, outTTY: false });
  assert.equal(code, 0, out.join('\n'));
  assert.match(out.join('\n'), /ok \(1 source, 2 actuators, 1 pipeline, models pinned and matching\)/);
});

// ---------------------------------------------------------------- JUnit XML

test('JUnit XML is well-formed whatever names and messages hold', () => {
  const nasty = `<&"'> ]]> tab\there \u0001\u0008 bell\u0007 lone \uD800 surrogate \uFFFE emoji \u{1F600} nul\u0000`;
  assert.equal(xmlText('a<b&c>d'), 'a&lt;b&amp;c&gt;d');
  assert.equal(xmlAttr(`"'\n`), '&quot;&apos;&#10;');
  const result: ScenarioResult = {
    name: `suite ${nasty}`,
    file: path.join(tmp, `x ${'"'}.hil.yaml`),
    configFile: path.join(tmp, 'c.yaml'),
    firmware: '/fw/keel-ref-avr.elf',
    ok: false,
    startedAt: new Date(0).toISOString(),
    wallMs: 1234,
    speed: 1,
    assertions: [
      { index: 0, name: `passes ${nasty}`, description: 'safe state', passed: true, message: 'observed at 1 ms', observedAtMs: 1, window: { fromMs: 0, toMs: 10 } },
      { index: 1, name: 'fails', description: 'pin 9 = 0', passed: false, message: `not observed; ${nasty}`, window: { fromMs: 0, toMs: 10 } },
    ],
    timeline: { ...timeline(), faults: [{ atMs: 1, kind: 'k', detail: nasty }] },
    notes: [nasty],
    log: [],
  };
  const errored: ScenarioResult = { ...result, name: 'errored', error: `board died ${nasty}`, assertions: [] };
  const xml = junitXml([result, errored], [{ file: '/x/bad.hil.yaml', message: `bad.hil.yaml:\n  expect[0]: ${nasty}` }]);
  const doc = parseXml(xml);
  assert.equal(doc.name, 'testsuites');
  assert.deepEqual([doc.attrs.tests, doc.attrs.failures, doc.attrs.errors], ['4', '1', '2']);
  const suites = all(doc, 'testsuite');
  assert.equal(suites.length, 3, 'one testsuite per scenario and per invalid file');
  assert.equal(suites[0].attrs.name, `suite <&"'> ]]> tab\there \uFFFD\uFFFD bell\uFFFD lone \uFFFD surrogate \uFFFD emoji \u{1F600} nul\uFFFD`);
  assert.deepEqual(
    all(suites[0], 'testcase').map((t) => t.attrs.name.slice(0, 6)),
    ['passes', 'fails'],
  );
  const failure = all(suites[0], 'failure')[0];
  assert.match(failure.attrs.message, /^not observed; <&"'> \]\]> tab\there/);
  assert.match(failure.text, /pin 9 = 0\nnot observed/);
  assert.equal(suites[0].attrs.time, '1.234');
  assert.match(all(suites[1], 'error')[0].attrs.message, /^board died/);
  assert.match(all(suites[2], 'error')[0].text, /expect\[0\]: <&/);
});

// ---------------------------------------------------------------- on the emulated board

test('the shipped example scenarios pass on the emulated board', { timeout: 60_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith('.hil.yaml')).sort();
  assert.deepEqual(files, ['link-loss.hil.yaml', 'motor-stall.hil.yaml']);
  // Each on its own board and runtime; run side by side to keep the file short.
  const results = await Promise.all(files.map((f) => runScenario(path.join(EXAMPLES, f))));
  for (const r of results) {
    const report = [r.error ?? '', ...r.assertions.map((a) => `${a.passed ? 'ok  ' : 'FAIL'} ${a.name}: ${a.message}`), ...r.notes, ...r.log.filter((l) => /"level":[45]0/.test(l)).slice(-5)].join('\n');
    assert.equal(r.error, undefined, report);
    assert.ok(r.assertions.length >= 8);
    assert.ok(r.ok, `${r.name}:\n${report}`);
    // The pulled cable shows as the link fault and the silence of the source behind it.
    assert.deepEqual(r.timeline.faults.filter((f) => !/^(source-fault|actuator-fault):|^sensor-silence$/.test(f.kind)), [], 'no fault but the link loss');
  }
  const stall = results[1];
  // The loop really closed: the model's decision drove the emulated pins.
  const enter = stall.timeline.decisions.find((d) => d.rule === 'stall' && d.state === 'enter')!;
  const cut = stall.timeline.outputs.find((o) => o.pin === 9 && o.value === 0 && o.atMs > enter.atMs)!;
  assert.ok(cut.atMs - enter.atMs < 50, `decision at ${enter.atMs}, pin 9 cut at ${cut.atMs}`);
  assert.ok(stall.timeline.inputs.some((i) => i.input === 'current' && i.value > 400), 'the jam drove the current to stall levels');
  assert.ok(stall.timeline.inputs.some((i) => i.input === 'current' && i.atMs > cut.atMs && i.value < 20), 'the current followed the cut drive');
});

test('a scenario with assertions that must fail is reported as failing (text, JSON, JUnit, exit 1)', { timeout: 30_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const file = path.join(tmp, 'must-fail.hil.yaml');
  fs.writeFileSync(
    file,
    `name: must fail <&> "quoted"
config: ${path.join(EXAMPLES, 'motor.yaml')}
durationMs: 1500
inputs:
  - analog: 0
    wave: [{atMs: 0, follow: {pin: 9, gain: 0.56, offset: 2}}]
  - analog: 1
    wave: [{atMs: 0, follow: {pin: 9, gain: 4.012}}]
  - digital: 2
    wave: [{atMs: 0, value: 1}, {atMs: 200, value: 0, event: press}, {atMs: 500, value: 1}]
expect:
  - name: passes - the button starts the motor
    output: {pin: 9, value: 178}
    after: press
    withinMs: 600
  - name: fails - the lamp lights within 100 ms of the press
    output: {pin: 13, value: 1}
    after: press
    withinMs: 100
  - name: fails - the drive never runs <&>
    never: {output: {pin: 9, value: 178}}
  - name: fails - after a stall that never comes
    output: {pin: 9, value: 0}
    after: {decision: {rule: stall, state: enter}}
`,
  );
  const junit = path.join(tmp, 'must-fail.xml');
  const r = await hil('run', file, '--junit', junit);
  assert.equal(r.code, 1, `${r.out}\n${r.err}`);
  assert.match(r.out, /ok    passes - the button starts the motor\n        pin 9 = 178 within 600 ms after press: observed at \d+ ms \(press \+ \d+ ms\)/);
  assert.match(r.out, /FAIL  fails - the lamp lights within 100 ms of the press\n        pin 13 = 1 within 100 ms after press: not observed between \d+ ms \(press\) and \d+ ms; pin 13 was 0 \(digital\) when the window opened/);
  assert.match(r.out, /FAIL  fails - the drive never runs <&>\n        never pin 9 = 178 during the scenario: observed at \d+ ms/);
  assert.match(r.out, /FAIL  fails - after a stall that never comes\n .*decision rule stall enter\] never happened/);
  assert.match(r.out, /FAIL 1\/4 assertions/);
  assert.match(r.out, /timeline \(scenario ms; 0 = link up\):[\s\S]*decision stall-guard\/start enter/);
  assert.match(r.out, /1 scenario: 0 passed, 1 failed, 0 could not run; 1\/4 assertions held/);
  const doc = parseXml(fs.readFileSync(junit, 'utf8'));
  assert.deepEqual([doc.attrs.tests, doc.attrs.failures, doc.attrs.errors], ['4', '3', '0']);
  const [suite] = all(doc, 'testsuite');
  assert.equal(suite.attrs.name, 'must fail <&> "quoted"');
  const cases = all(suite, 'testcase');
  assert.deepEqual(
    cases.map((c) => [c.attrs.name, all(c, 'failure').length]),
    [
      ['passes - the button starts the motor', 0],
      ['fails - the lamp lights within 100 ms of the press', 1],
      ['fails - the drive never runs <&>', 1],
      ['fails - after a stall that never comes', 1],
    ],
  );
  assert.match(all(cases[1], 'failure')[0].attrs.message, /^not observed between/);
  assert.match(all(suite, 'system-out').pop()!.text, /pin 9 = 178 \(pwm\)/);
  // The same verdicts as JSON.
  const j = await hil('run', file, '--json');
  assert.equal(j.code, 1);
  const parsed = JSON.parse(j.out) as { ok: boolean; scenarios: ScenarioResult[] };
  assert.equal(parsed.ok, false);
  assert.deepEqual(
    parsed.scenarios[0].assertions.map((a) => a.passed),
    [true, false, false, false],
  );
});

test("the host's BridgeSession talks to the reference firmware on the emulated board", { timeout: 30_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const board = await startBoard();
  const clock = new SystemClock();
  const session = new BridgeSession({ link: { path: board.ptyPath, baudRate: 115200 }, opener: new SystemSerialOpener(), clock, linkTimeoutMs: 500 });
  t.after(async () => {
    await session.stop();
    await board.stop();
  });
  const owner = Symbol('test');
  const samples: ChannelSamples[] = [];
  const events: string[] = [];
  session.on('samples', (s) => samples.push(s));
  session.on('up', () => events.push('up'));
  session.on('down', () => events.push('down'));
  const waitFor = async (cond: () => boolean, what: string, ms = 3000) => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; events ${events.join(',')}, state ${session.state}`);
      await sleep(5);
    }
  };
  await board.setAnalog(0, 321);
  await board.setDigital(2, 0);
  session.subscribe(owner, 0, 100);
  session.subscribe(owner, 6, 50);
  await session.start();
  await waitFor(() => session.state === 'established', 'the handshake');
  assert.deepEqual(session.info, {
    version: 1,
    firmwareId: 'keel-ref-avr/1.0.0',
    analogCount: 6,
    digitalCount: 2,
    maxRateHz: 1000,
    heartbeatTimeoutMs: 1000,
    outputs: [
      { pin: 9, kind: 1, safeValue: 0 },
      { pin: 13, kind: 0, safeValue: 0 },
      { pin: 10, kind: 1, safeValue: 128 },
    ],
  });
  // Samples: the pin values, on MCU time mapped to host time (TIMESYNC), 10 ms apart.
  await waitFor(() => samples.filter((s) => s.channel === 0 && s.synced).length >= 3 && samples.some((s) => s.channel === 6), 'samples');
  const a0 = samples.filter((s) => s.channel === 0 && s.synced);
  assert.ok(a0.every((s) => s.values.every((v) => v === 321)), JSON.stringify(a0.map((s) => s.values)));
  assert.equal(a0[0].periodMs, 10);
  const last = a0[a0.length - 1];
  const newest = last.t0 + (last.values.length - 1) * last.periodMs;
  assert.ok(Math.abs(Date.now() - newest) < 150, `the newest value is stamped ${Date.now() - newest} ms ago`);
  assert.ok(samples.filter((s) => s.channel === 6).every((s) => s.values.every((v) => v === 0)), 'D2 driven low reads 0');
  const rtt = session.stats().rttMs;
  assert.ok(rtt > 0 && rtt < 50, `TIMESYNC round trip ${rtt} ms`);
  // SET: resolved on the ACK, and the emulated pin follows.
  await session.set(0, 200);
  await session.set(1, 1);
  assert.equal((await board.waitForOutput((e) => e.pin === 9 && e.value === 200, 500)).kind, 'pwm');
  await board.waitForOutput((e) => e.pin === 13 && e.value === 1, 500);
  await assert.rejects(session.set(1, 2), (e: { bridgeReason?: string }) => e.bridgeReason === 'bad-value');
  const clean = session.stats();
  assert.equal(clean.crc + clean.cobs + clean.oversize + clean.short + clean.lostFrames, 0, 'a clean link up to here');
  // The cable is pulled: the host declares the link lost, the MCU fails safe on its own.
  const pulledAt = Date.now();
  await board.setLink(false);
  await waitFor(() => events.includes('down'), 'link loss');
  const lostAfter = Date.now() - pulledAt;
  assert.ok(lostAfter >= 450 && lostAfter < 1000, `link declared lost after ${lostAfter} ms (linkTimeoutMs 500)`);
  await assert.rejects(session.set(0, 10), (e: { bridgeReason?: string; retryable?: boolean }) => e.bridgeReason === 'link-down' && e.retryable === true);
  const safe9 = await board.waitForOutput((e) => e.pin === 9 && e.value === 0, 2000);
  await board.waitForOutput((e) => e.pin === 13 && e.value === 0, 500);
  await board.waitForOutput((e) => e.pin === 10 && e.value === 128, 500);
  assert.ok(safe9.hostMs - pulledAt > 600, `the MCU failed safe ${safe9.hostMs - pulledAt} ms after the pull (heartbeat timeout 1000 ms)`);
  // Plugged back: a new handshake, channels configured again, samples flow.
  await board.setLink(true);
  await waitFor(() => events.filter((e) => e === 'up').length >= 2, 'the link coming back', 6000);
  const after = samples.length;
  await waitFor(() => samples.slice(after).some((s) => s.channel === 0), 'samples after the outage');
  const st = session.stats();
  assert.ok(st.handshakes >= 2 && st.linkLost === 1, JSON.stringify(st));
  // A frame on the wire when the cable went or came back may arrive cut (as on a real cable).
  assert.ok(st.crc + st.cobs + st.oversize + st.short <= 2, JSON.stringify(st));
  assert.equal(board.output(9)!.value, 0, 'outputs stay safe until SET again');
  await session.set(0, 42);
  await board.waitForOutput((e) => e.pin === 9 && e.value === 42, 500);
});
