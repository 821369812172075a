/**
 * The command line's surface: usage errors (exit 2 with a hint), `--help` on every command,
 * `keel version` and `keel schema`. A few cases run as real processes (exit codes reach the
 * shell, `bin/keel.js` works); the full matrix runs through `main()` in-process, the same
 * parsing code, because each tsx child costs about a CPU-second to start.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { EXIT, main } from '../../runtime/cli.ts';
import { KEEL_VERSION } from '../../runtime/runtime.ts';
import { ROOT, STACK_LINE, keel, killAll } from './keel-process.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-usage-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});
const SCHEMA = readFileSync(path.join(ROOT, 'docs/keel.schema.json'), 'utf8');
const PACKAGE_VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** Runs main() with captured output. */
async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (s) => (out += s + '\n'), err: (s) => (err += s + '\n'), isTTY: false, outTTY: false });
  return { code, out, err };
}

// Started at once, awaited by the tests below: real processes, in parallel.
const spawned = {
  unknown: keel(['frobnicate']),
  badDuration: keel(['run', 'examples/vibration.yaml', '--duration', 'soon']),
  help: keel(['--help']),
  version: keel(['version'], { bin: true }),
  schema: keel(['schema']),
};

test('usage errors from a real process: exit 2, the problem and where to get help, no stack trace', async () => {
  const unknown = await spawned.unknown;
  assert.equal(unknown.code, 2, unknown.stderr);
  assert.equal(unknown.stderr, `keel: unknown command "frobnicate"\nRun 'keel --help' for usage.\n`);
  assert.equal(unknown.stdout, '');
  const bad = await spawned.badDuration;
  assert.equal(bad.code, 2, bad.stderr);
  assert.equal(bad.stderr, `keel: --duration must be a positive number of seconds, got "soon"\nRun 'keel run --help' for usage.\n`);
  assert.equal(bad.stdout, '', 'nothing was started: no log line');
});

test('every usage error exits 2 with a one-line reason and the matching --help hint', async () => {
  const cases: [string[], RegExp, string][] = [
    [['frobnicate'], /unknown command "frobnicate"/, 'keel --help'],
    [['Run', 'examples/vibration.yaml'], /unknown command "Run"/, 'keel --help'],
    [['check', '--jsn', 'examples/vibration.yaml'], /Unknown option '--jsn'/, 'keel check --help'],
    [['run', 'examples/vibration.yaml', '--durration', '3'], /Unknown option '--durration'/, 'keel run --help'],
    [['demo', '--port', '9000'], /Unknown option '--port'/, 'keel demo --help'],
    [['check'], /check takes exactly one config file/, 'keel check --help'],
    [['run'], /run takes exactly one config file/, 'keel run --help'],
    [['run', '--duration', '3'], /run takes exactly one config file/, 'keel run --help'],
    [['run', 'a.yaml', 'b.yaml'], /run takes exactly one config file/, 'keel run --help'],
    [['check', 'examples/*.yaml', 'examples/demo.yaml'], /check takes exactly one config file/, 'keel check --help'],
    [['run', 'examples/vibration.yaml', '--duration', 'soon'], /--duration must be a positive number of seconds, got "soon"/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--duration=0'], /got "0"/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--duration=-5'], /got "-5"/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '-d', 'Infinity'], /got "Infinity"/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--duration', '3s'], /got "3s"/, 'keel run --help'],
    // 30 days: longer than a Node timer can wait (it would fire after 1 ms and stop at once).
    [['run', 'examples/vibration.yaml', '--duration', '2592000'], /--duration must be at most 2147483 seconds/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--duration', '-1'], /argument is ambiguous/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--duration'], /argument missing/, 'keel run --help'],
    [['run', 'examples/vibration.yaml', '--log-level', 'loud'], /--log-level must be one of trace, debug, info, warn, error, fatal, silent/, 'keel run --help'],
    [['demo', '--duration', 'NaN'], /got "NaN"/, 'keel demo --help'],
    [['demo', 'examples/vibration.yaml'], /demo takes no positional arguments/, 'keel demo --help'],
    [['schema', 'out.json'], /schema takes no positional arguments/, 'keel schema --help'],
    [['version', 'now'], /version takes no arguments/, 'keel version --help'],
    [['version', '--short'], /Unknown option '--short'/, 'keel version --help'],
  ];
  for (const [argv, reason, hint] of cases) {
    const r = await run(...argv);
    const what = `keel ${argv.join(' ')}\n${r.err}`;
    assert.equal(r.code, EXIT.usage, what);
    assert.equal(r.out, '', what);
    const lines = r.err.trimEnd().split('\n');
    assert.match(lines[0], /^keel: /, what);
    assert.match(lines[0], reason, what);
    assert.equal(lines.at(-1), `Run '${hint}' for usage.`, what);
    assert.doesNotMatch(r.err, STACK_LINE, what);
  }
  // No command at all: the overview, on stdout, but still a usage error for scripts.
  const bare = await run();
  assert.equal(bare.code, EXIT.usage);
  assert.match(bare.out, /^Usage: keel <command> \[options\]$/m);
});

test('--help on the program and on every command exits 0 and prints that command\'s usage', async () => {
  const real = await spawned.help;
  assert.equal(real.code, 0, real.stderr);
  assert.match(real.stdout, /^Usage: keel <command> \[options\]$/m);
  assert.match(real.stdout, /^Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid configuration, 130 forced stop\.$/m);
  const cases: [string[], string][] = [
    [['--help'], 'Usage: keel <command> [options]'],
    [['-h'], 'Usage: keel <command> [options]'],
    [['help'], 'Usage: keel <command> [options]'],
    [['help', 'run'], 'Usage: keel run <config> [options]'],
    [['run', '--help'], 'Usage: keel run <config> [options]'],
    [['run', 'examples/vibration.yaml', '-h'], 'Usage: keel run <config> [options]'],
    [['check', '--help'], 'Usage: keel check <config> [options]'],
    [['demo', '--help'], 'Usage: keel demo [options]'],
    [['schema', '--help'], 'Usage: keel schema [--out <file>]'],
    [['version', '--help'], 'Usage: keel version'],
  ];
  for (const [argv, first] of cases) {
    const r = await run(...argv);
    assert.equal(r.code, EXIT.ok, `keel ${argv.join(' ')}: ${r.err}`);
    assert.equal(r.err, '');
    assert.ok(r.out.split('\n').includes(first), `keel ${argv.join(' ')} printed:\n${r.out}`);
  }
  // Each command's help names its flags.
  assert.match((await run('run', '--help')).out, /-d, --duration <s>[\s\S]*-l, --log-level <l>[\s\S]*--live/);
  assert.match((await run('check', '--help')).out, /--json[\s\S]*--skip-models/);
  assert.match((await run('demo', '--help')).out, /-d, --duration <s>[\s\S]*-c, --config <file>[\s\S]*--json/);
});

test('keel version prints the package version (bin/keel.js, as installed)', async () => {
  const r = await spawned.version;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${PACKAGE_VERSION}\n`);
  assert.equal(KEEL_VERSION, PACKAGE_VERSION);
  for (const flag of ['--version', '-V']) assert.deepEqual(await run(flag), { code: 0, out: `${PACKAGE_VERSION}\n`, err: '' });
});

test('keel schema prints exactly docs/keel.schema.json; --out writes the same bytes', async () => {
  const r = await spawned.schema;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, SCHEMA, 'docs/keel.schema.json is stale: regenerate it with keel schema --out docs/keel.schema.json');
  const file = path.join(tmp, 'keel.schema.json');
  assert.deepEqual(await run('schema', '--out', file), { code: 0, out: '', err: '' });
  assert.equal(readFileSync(file, 'utf8'), SCHEMA);
  const schema = JSON.parse(SCHEMA) as { title: string; properties: Record<string, unknown> };
  assert.equal(schema.title, 'keel configuration');
  assert.ok('pipelines' in schema.properties);
});
