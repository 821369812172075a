import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { loadConfigFile, parseConfigText, toPath } from '../../runtime/config/load.ts';
import { publishedSchema } from '../../runtime/config/schema.ts';
import { ConfigError } from '../../runtime/errors.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const SHA = 'a'.repeat(64);
const good = `
device: { name: bot-1 }
gpio: { backend: sim }
sources:
  - name: accel
    type: serial
    path: /dev/ttyUSB0
    baudRate: 115200
    format: { type: csv, columns: [ax, ay, az] }
actuators:
  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }
pipelines:
  - name: vib
    source: accel
    window: { size: 256, hop: 128, channels: [ax, ay, az] }
    transforms: [{ type: fft, dropDc: true }]
    model:
      path: m.onnx
      sha256: ${SHA}
      input: x
      inputs: { x: { shape: [1, 3, 128] } }
    rules:
      - name: anomaly
        when: { output: score, above: 0.8, hysteresis: 0.1 }
        debounce: { count: 3 }
        onEnter: [{ actuator: brake, value: 1 }]
        onExit: [{ actuator: brake, value: 0 }]
safety:
  safeState: [{ actuator: brake, value: 1 }]
`;

function issues(text: string, name = 'c.yaml') {
  try {
    parseConfigText(text, name);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.code, 'KEEL_E_CONFIG');
    return err.issues.map((i) => `${i.path}: ${i.message}`);
  }
  assert.fail('expected a ConfigError');
}

test('a good config loads with every default applied', () => {
  const c = parseConfigText(good, 'c.yaml');
  assert.equal(c.sources[0].type, 'serial');
  const s = c.sources[0] as Extract<(typeof c.sources)[number], { type: 'serial' }>;
  assert.equal(s.dataBits, 8);
  assert.equal(s.parity, 'none');
  assert.equal(s.maxLineBytes, 1024);
  assert.equal(c.http.host, '127.0.0.1');
  assert.equal(c.http.port, 9464);
  assert.equal(c.safety.silenceMs, 2000);
  assert.equal(c.pipelines[0].model.warmup, 3);
  assert.deepEqual(c.pipelines[0].model.executionProviders, ['cpu']);
  assert.equal(c.pipelines[0].rules[0].cooldownMs, 0);
  assert.equal(c.log.level, 'info');
});

test('every schema problem is reported at once, each with its path', () => {
  const bad = good
    .replace('baudRate: 115200', 'baudRate: fast\n    bogus: 1')
    .replace('type: csv, columns: [ax, ay, az]', 'type: csvv')
    .replace('safe: 1 }', 'safe: 2 }')
    .replace(`sha256: ${SHA}`, 'sha256: abc1234')
    .replace('size: 256', 'size: -4');
  const list = issues(bad);
  assert.ok(list.includes('sources[0].bogus: unknown key'), list.join('\n'));
  assert.ok(list.includes('sources[0].baudRate: expected integer'), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('sources[0].format.type: expected one of "csv", "jsonl", "kv", "binary"')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('actuators[0].safe: expected one of 0, 1')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].model.sha256: must match')), list.join('\n'));
  assert.ok(list.includes('pipelines[0].window.size: expected a number >= 1, got -4'), list.join('\n'));
  assert.ok(list.length >= 6);
});

test('unknown keys are errors at every depth, including the top level', () => {
  const list = issues(good.replace('device: { name: bot-1 }', 'device: { name: bot-1, colour: red }\nsafty: {}'));
  assert.ok(list.includes('device.colour: unknown key'), list.join('\n'));
  assert.ok(list.includes('safty: unknown key'), list.join('\n'));
});

test('a missing required key and an unknown source type are named', () => {
  const list = issues(good.replace('    path: /dev/ttyUSB0\n', '').replace('type: serial', 'type: serial'));
  assert.ok(list.includes('sources[0].path: required'), list.join('\n'));
  const list2 = issues(good.replace('type: serial', 'type: usb'));
  assert.ok(list2.some((l) => l.startsWith('sources[0].type: expected one of "serial", "replay", "synthetic", "gpio"')), list2.join('\n'));
});

test('cross-references: sources, channels, actuators, shapes, rule forms', () => {
  const bad = good
    .replace('source: accel', 'source: acel')
    .replace('onEnter: [{ actuator: brake, value: 1 }]', 'onEnter: [{ actuator: brakes, value: 1 }]')
    .replace('inputs: { x: { shape: [1, 3, 128] } }', 'inputs: { x: { shape: [1, 3, 129] } }')
    .replace('when: { output: score, above: 0.8, hysteresis: 0.1 }', 'when: { output: score, sensor: accel.ax, above: 0.8 }');
  const list = issues(bad);
  assert.ok(list.some((l) => l.startsWith('pipelines[0].source: no source named "acel" (known: accel)')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].rules[0].onEnter[0].actuator: no actuator named "brakes"')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].model.inputs.x.shape: [1, 3, 129] holds 387 values but the window gives 384')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].rules[0].when: give exactly one of output or sensor')), list.join('\n'));
});

test('window channels must exist in the source, and fft needs a power of two', () => {
  const list = issues(good.replace('channels: [ax, ay, az] }', 'channels: [ax, ay, gz] }').replace('size: 256', 'size: 200'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].window.channels[2]: source "accel" has no channel "gz"')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].transforms[0]: fft needs a power-of-two window size')), list.join('\n'));
});

test('duplicate names and a GPIO line used twice are refused', () => {
  const list = issues(
    good.replace(
      '  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }',
      '  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 1 }\n  - { name: brake, type: gpio, line: { chip: sim, offset: 3 }, safe: 0 }',
    ),
  );
  assert.ok(list.some((l) => l.startsWith('actuators[1].name: duplicate actuator name "brake"')), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('actuators[1].line: GPIO line sim/3 is already used by actuators[0].line')), list.join('\n'));
});

test('constant model inputs must have a value that fits their shape', () => {
  const list = issues(good.replace('inputs: { x: { shape: [1, 3, 128] } }', 'inputs: { x: { shape: [1, 3, 128] }, sr: { shape: [2], value: [1, 2, 3] }, k: { shape: [] } }'));
  assert.ok(list.includes('pipelines[0].model.inputs.sr.value: expected 2 values for shape [2], got 3'), list.join('\n'));
  assert.ok(list.some((l) => l.startsWith('pipelines[0].model.inputs.k.value: input "k" is neither the window input nor a state input')), list.join('\n'));
});

test('malformed YAML, duplicate keys, a non-mapping and bad JSON give clear errors', () => {
  assert.match(issues('sources: [\n')[0], /^: YAML/);
  assert.match(issues('device: {name: a}\ndevice: {name: b}\n').join('\n'), /YAML DUPLICATE_KEY/);
  assert.match(issues('- 1\n- 2\n')[0], /expected a mapping/);
  assert.match(issues('{"sources": ', 'c.json')[0], /not valid JSON/);
});

test('JSON is accepted as well as YAML', () => {
  const c = parseConfigText(JSON.stringify(parseConfigText(good, 'c.yaml')), 'c.json');
  assert.equal(c.pipelines[0].name, 'vib');
});

test('a missing or unreadable file is a ConfigError naming the file', () => {
  assert.throws(() => loadConfigFile(path.join(dir, 'nope.yaml')), (e: unknown) => e instanceof ConfigError && /file not found/.test(e.message));
  assert.throws(() => loadConfigFile(dir), (e: unknown) => e instanceof ConfigError && /is a directory/.test(e.message));
  const f = path.join(dir, 'ok.yaml');
  writeFileSync(f, good);
  assert.equal(loadConfigFile(f).dir, dir);
});

test('YAML alias bombs are refused rather than expanded', () => {
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]', 'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]', 'e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]'].join('\n');
  assert.throws(() => parseConfigText(bomb, 'bomb.yaml'));
});

test('JSON pointers become readable paths', () => {
  assert.equal(toPath('/pipelines/0/model/inputs/x~1y'), 'pipelines[0].model.inputs.x/y');
  assert.equal(toPath(''), '');
});

test('the published JSON Schema is the one the loader uses', () => {
  const published = JSON.parse(readFileSync(new URL('../../docs/keel.schema.json', import.meta.url), 'utf8'));
  assert.deepEqual(published, JSON.parse(JSON.stringify(publishedSchema())), 'docs/keel.schema.json is stale: run npx tsx runtime/cli.ts schema --out docs/keel.schema.json');
});
