/**
 * `keel hil`: hardware-in-the-loop scenarios on the emulated AVR board.
 *
 *   keel hil run <scenario...> [--junit out.xml] [--json] [--speed x] [--verbose]
 *   keel hil check <scenario...> [--json]
 *
 * Every scenario (and the config it names) is validated before anything starts; then each
 * runs on its own fresh board, one after the other. Exit codes: 0 every assertion held,
 * 1 an assertion failed or a scenario could not run (board, toolchain, runtime), 2 bad
 * command line, 3 an invalid scenario, config or model (nothing was run).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { asError, ConfigError, type ConfigIssue } from '../../runtime/errors.ts';
import { HIL_INSTALL_HINT, missingHilTools } from './harness.ts';
import { formatScenario, formatSummary, junitXml, displayPath } from './report.ts';
import { loadScenario, runScenario, ScenarioError, type LoadedScenario, type ScenarioResult } from './scenario.ts';

/** Exit codes of `keel hil` (the same meanings as keel's own). */
export const HIL_EXIT = { ok: 0, failed: 1, usage: 2, invalid: 3 } as const;

/** Output channels of the command (runtime/cli.ts's Io fits). */
export interface HilIo {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Whether stdout is a terminal (colors in the report). */
  outTTY?: boolean;
}

/** `keel hil --help`. */
export const HIL_HELP = `Usage: keel hil <command> [options]

Runs hardware-in-the-loop scenarios: the MCU firmware on an emulated ATmega328P (simavr),
keel's runtime with a config against the board's serial port, sensor waveforms played into
the board's pins, and assertions on decisions and output pins within time windows.
Scenario format: firmware-bridge/hil/SCENARIOS.md; examples: examples/hil/*.hil.yaml.

Commands:
  run <scenario...>    run scenarios, print a report, exit 1 if any assertion fails
  check <scenario...>  validate scenarios and their configs (models too) without running

Run 'keel hil <command> --help' for its options.
Needs: ${HIL_INSTALL_HINT}, make and a C compiler.
Exit codes: 0 all assertions held, 1 an assertion failed or a scenario could not run,
2 usage, 3 invalid scenario, config or model.`;

const RUN_HELP = `Usage: keel hil run <scenario...> [options]

Validates every scenario and its config first (nothing runs if one is invalid), then runs
each on a fresh emulated board, in order, and prints each assertion with its observed time.

Options:
      --junit <file>   also write JUnit XML (one testsuite per scenario, one testcase per assertion)
      --json           print the results as JSON on stdout instead of the report
      --speed <x>      emulated seconds per wall second, 0.5..2 (default: the scenario's, else 1)
  -v, --verbose        print the timeline of every scenario, not only of failing ones
  -h, --help           show this help`;

const CHECK_HELP = `Usage: keel hil check <scenario...> [--json]

Validates each scenario, the config it names (as keel check does, models included) and the
recordings it replays, and reports every problem with its path. Starts nothing.`;

class UsageError extends Error {}

function usage(io: HilIo, msg: string, sub?: string): number {
  io.err(`keel: ${msg}`);
  io.err(`Run 'keel hil ${sub ? `${sub} ` : ''}--help' for usage.`);
  return HIL_EXIT.usage;
}

function parse(args: string[], options: NonNullable<Parameters<typeof parseArgs>[0]>['options']): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (err) {
    throw new UsageError(asError(err).message);
  }
}

/** One invalid scenario and its problems. */
interface Invalid {
  file: string;
  /** The file the issues are about (the scenario, or its config). */
  about: string;
  issues: ConfigIssue[];
}

function printInvalid(io: HilIo, bad: Invalid): void {
  const n = bad.issues.length;
  io.err(`${displayPath(bad.about)}: ${n} problem${n === 1 ? '' : 's'}${bad.about !== bad.file ? ` (named by ${displayPath(bad.file)})` : ''}`);
  for (const i of bad.issues) io.err(`  ${i.path || '(file)'}: ${i.message}`);
}

function invalidOf(file: string, err: unknown): Invalid | null {
  if (err instanceof ScenarioError) return { file, about: err.file, issues: err.issues };
  if (err instanceof ConfigError) return { file, about: file, issues: err.issues };
  return null;
}

/** Loads every scenario; returns the loaded ones and the invalid ones. */
async function loadAll(files: string[]): Promise<{ loaded: LoadedScenario[]; invalid: Invalid[] }> {
  const loaded: LoadedScenario[] = [];
  const invalid: Invalid[] = [];
  for (const f of files) {
    try {
      loaded.push(await loadScenario(f));
    } catch (err) {
      const bad = invalidOf(f, err);
      if (!bad) throw err;
      invalid.push(bad);
    }
  }
  return { loaded, invalid };
}

async function cmdRun(args: string[], io: HilIo): Promise<number> {
  const { values, positionals } = parse(args, {
    junit: { type: 'string' },
    json: { type: 'boolean' },
    speed: { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
  });
  if (values.help) return io.out(RUN_HELP), HIL_EXIT.ok;
  if (positionals.length === 0) return usage(io, 'hil run needs at least one scenario file', 'run');
  let speed: number | undefined;
  if (values.speed !== undefined) {
    speed = Number(values.speed);
    if (!Number.isFinite(speed) || speed < 0.5 || speed > 2) return usage(io, `--speed must be a number from 0.5 to 2, got "${String(values.speed)}"`, 'run');
  }
  const junit = values.junit as string | undefined;
  if (junit !== undefined) {
    const dir = path.dirname(path.resolve(junit));
    if (!fs.existsSync(dir)) return usage(io, `--junit: directory ${dir} does not exist`, 'run');
  }
  const json = Boolean(values.json);
  const { loaded, invalid } = await loadAll(positionals);
  if (invalid.length) {
    for (const bad of invalid) printInvalid(io, bad);
    io.err('nothing was run: fix the scenarios (keel hil check shows the same list)');
    if (json) io.out(JSON.stringify({ ok: false, invalid: invalid.map((b) => ({ file: b.file, about: b.about, issues: b.issues })), scenarios: [] }));
    if (junit) writeJunit(junit, [], invalid);
    return HIL_EXIT.invalid;
  }
  const missing = missingHilTools();
  if (missing.length) {
    io.err(`keel: the HIL needs tools that are missing: ${missing.join(', ')}`);
    io.err(`install them with: ${HIL_INSTALL_HINT}`);
    return HIL_EXIT.failed;
  }
  const results: ScenarioResult[] = [];
  const lateInvalid: Invalid[] = [];
  for (const ls of loaded) {
    if (!json) io.out(`running ${ls.name} (${displayPath(ls.file)}, ${ls.scenario.durationMs} ms) ...`);
    let r: ScenarioResult;
    try {
      r = await runScenario(ls, { ...(speed !== undefined ? { speed } : {}) });
    } catch (err) {
      // A model that does not fit the config shows only once the runtime is built.
      const bad = invalidOf(ls.file, err);
      if (!bad) throw err;
      printInvalid(io, bad);
      lateInvalid.push(bad);
      continue;
    }
    results.push(r);
    if (!json) io.out(formatScenario(r, { verbose: Boolean(values.verbose), color: io.outTTY === true }));
  }
  if (junit) writeJunit(junit, results, lateInvalid);
  if (json) {
    io.out(JSON.stringify({ ok: lateInvalid.length === 0 && results.every((r) => r.ok), scenarios: results, invalid: lateInvalid }));
  } else {
    io.out(formatSummary(results));
    if (junit) io.out(`JUnit XML: ${junit}`);
  }
  if (lateInvalid.length) return HIL_EXIT.invalid;
  return results.every((r) => r.ok) ? HIL_EXIT.ok : HIL_EXIT.failed;
}

function writeJunit(file: string, results: ScenarioResult[], invalid: Invalid[]): void {
  const bad = invalid.map((b) => ({ file: b.file, message: [`${displayPath(b.about)}:`, ...b.issues.map((i) => `  ${i.path || '(file)'}: ${i.message}`)].join('\n') }));
  fs.writeFileSync(file, junitXml(results, bad));
}

async function cmdCheck(args: string[], io: HilIo): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } });
  if (values.help) return io.out(CHECK_HELP), HIL_EXIT.ok;
  if (positionals.length === 0) return usage(io, 'hil check needs at least one scenario file', 'check');
  const { loaded, invalid } = await loadAll(positionals);
  // The configs as keel check sees them: models loaded, hashes and tensors checked.
  const { checkConfigFile } = await configChecker();
  for (const ls of loaded) {
    const issues = await checkConfigFile(ls.configFile);
    if (issues.length) invalid.push({ file: ls.file, about: ls.configFile, issues });
  }
  if (values.json) {
    io.out(JSON.stringify({ ok: invalid.length === 0, scenarios: positionals.map((f) => ({ file: f, issues: invalid.filter((b) => b.file === f || path.resolve(b.file) === path.resolve(f)).flatMap((b) => b.issues.map((i) => ({ ...i, file: b.about }))) })) }));
  } else {
    for (const bad of invalid) printInvalid(io, bad);
    for (const ls of loaded) {
      if (invalid.some((b) => b.file === ls.file)) continue;
      const s = ls.scenario;
      io.out(`${displayPath(ls.file)}: ok (${s.inputs.length} input${s.inputs.length === 1 ? '' : 's'}, ${s.board.length} board step${s.board.length === 1 ? '' : 's'}, ${s.expect.length} assertion${s.expect.length === 1 ? '' : 's'}; config ${displayPath(ls.configFile)} ok, models pinned and matching)`);
    }
  }
  return invalid.length ? HIL_EXIT.invalid : HIL_EXIT.ok;
}

/**
 * `keel check` of one config file, as issues: runs the real command in-process with
 * `--json` (runtime/cli.ts is loaded lazily: it imports this module lazily too).
 */
async function configChecker(): Promise<{ checkConfigFile: (file: string) => Promise<ConfigIssue[]> }> {
  const { main } = await import('../../runtime/cli.ts');
  return {
    async checkConfigFile(file: string): Promise<ConfigIssue[]> {
      let out = '';
      const errs: string[] = [];
      await main(['check', '--json', file], { out: (s) => (out += s), err: (s) => errs.push(s), isTTY: false, outTTY: false });
      try {
        const r = JSON.parse(out) as { ok: boolean; issues: ConfigIssue[] };
        return r.ok ? [] : r.issues;
      } catch {
        return [{ path: '', message: errs.join(' ') || 'keel check failed' }];
      }
    },
  };
}

/** Runs `keel hil <args>`; returns the exit code. Never throws for bad input. */
export async function cmdHil(args: string[], io: HilIo): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case undefined:
        io.out(HIL_HELP);
        return HIL_EXIT.usage;
      case '-h':
      case '--help':
      case 'help':
        io.out(HIL_HELP);
        return HIL_EXIT.ok;
      case 'run':
        return await cmdRun(rest, io);
      case 'check':
        return await cmdCheck(rest, io);
      default:
        return usage(io, `unknown hil command "${sub}" (run, check)`);
    }
  } catch (err) {
    if (err instanceof UsageError) return usage(io, err.message, sub);
    io.err(`keel: ${asError(err).message}`);
    return HIL_EXIT.failed;
  }
}
