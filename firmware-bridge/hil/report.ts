/**
 * Reports of HIL scenario runs: a readable text report (each assertion with its verdict and
 * observed times, and on failure the timeline that explains it) and JUnit XML for CI (one
 * testsuite per scenario, one testcase per assertion).
 *
 * JUnit has no formal standard; this follows the schema the common consumers read (Jenkins
 * JUnit plugin, GitLab, GitHub test reporters): `testsuites > testsuite > testcase` with
 * `failure` (an assertion did not hold) and `error` (the scenario could not run), counts
 * and times in seconds as attributes, `system-out` for the timeline. Text is escaped for
 * XML 1.0 (§2.4 character data, §3.3.3 attribute values), and characters XML 1.0 cannot hold
 * at all (§2.2: control characters other than tab, LF, CR; lone surrogates; U+FFFE, U+FFFF)
 * are replaced by U+FFFD, so any fault message or scenario name yields a well-formed file.
 */
import os from 'node:os';
import path from 'node:path';
import type { AssertionResult, Timeline } from './expect.ts';
import type { ScenarioResult } from './scenario.ts';

const ms = (t: number) => `${Math.round(t)} ms`;

/** A path relative to the working directory when that is shorter (for reports). */
export function displayPath(file: string, cwd = process.cwd()): string {
  const rel = path.relative(cwd, file);
  return rel && !rel.startsWith('..') && rel.length < file.length ? rel : file;
}

/** What happened, one line per observation, in time order (for reports and system-out). */
export function timelineLines(tl: Timeline): string[] {
  const rows: Array<[number, string]> = [];
  for (const [name, t] of Object.entries(tl.events)) rows.push([t, `event ${name}`]);
  for (const o of tl.outputs) rows.push([o.atMs, `pin ${o.pin} ${o.kind === 'input' ? 'released (input)' : `= ${o.value} (${o.kind})`}`]);
  for (const d of tl.decisions) rows.push([d.atMs, `decision ${d.pipeline}/${d.rule} ${d.state} (value ${Number(d.value.toFixed(4))})`]);
  for (const a of tl.actions) rows.push([a.atMs, `action ${a.actuator} = ${JSON.stringify(a.value)} ${a.result}${a.error ? `: ${a.error}` : ''} (${a.origin})`]);
  for (const f of tl.faults) rows.push([f.atMs, `fault ${f.kind}: ${f.detail}`]);
  for (const s of tl.safe) rows.push([s.atMs, s.on ? `safe state (${s.detail ?? ''})` : 'not in safe state']);
  for (const l of tl.link) rows.push([l.atMs, l.on ? 'link up' : `link down${l.detail ? `: ${l.detail}` : ''}`]);
  rows.sort((a, b) => a[0] - b[0]);
  return rows.map(([t, text]) => `${String(Math.round(t)).padStart(7)} ms  ${text}`);
}

/** The text report of one scenario run. */
export function formatScenario(r: ScenarioResult, opts: { verbose?: boolean; color?: boolean } = {}): string {
  const c = opts.color ? { ok: '\x1b[32m', bad: '\x1b[31m', dim: '\x1b[2m', end: '\x1b[0m' } : { ok: '', bad: '', dim: '', end: '' };
  const out: string[] = [];
  out.push(`${r.name} (${displayPath(r.file)})`);
  out.push(`${c.dim}  config ${displayPath(r.configFile)}, firmware ${path.basename(r.firmware)}, ${ms(r.timeline.durationMs)} at speed ${r.speed}${c.end}`);
  if (r.error !== undefined) out.push(`  ${c.bad}ERROR${c.end} the scenario could not run: ${r.error}`);
  for (const a of r.assertions) {
    out.push(`  ${a.passed ? `${c.ok}ok  ${c.end}` : `${c.bad}FAIL${c.end}`}  ${a.name}`);
    const head = a.name === a.description ? '' : `${a.description}: `;
    out.push(`        ${head}${a.message}`);
  }
  const passed = r.assertions.filter((a) => a.passed).length;
  const verdict = r.error !== undefined ? `${c.bad}ERROR${c.end}` : r.ok ? `${c.ok}PASS${c.end}` : `${c.bad}FAIL${c.end}`;
  out.push(`  ${verdict} ${passed}/${r.assertions.length} assertions (${(r.wallMs / 1000).toFixed(1)} s)`);
  for (const n of r.notes) out.push(`  note: ${n}`);
  if (opts.verbose || !r.ok) {
    const lines = timelineLines(r.timeline);
    if (lines.length) {
      out.push('  timeline (scenario ms; 0 = link up):');
      for (const l of lines.slice(0, 200)) out.push(`    ${l}`);
      if (lines.length > 200) out.push(`    ... ${lines.length - 200} more`);
    }
    if (!r.ok) {
      const warn = r.log.filter((l) => /"level":(4|5|6)\d/.test(l)).slice(-10);
      if (warn.length) {
        out.push('  runtime warnings (last 10):');
        for (const l of warn) out.push(`    ${l}`);
      }
    }
  }
  return out.join('\n');
}

/** The closing line over several scenarios. */
export function formatSummary(results: ScenarioResult[]): string {
  const passed = results.filter((r) => r.ok).length;
  const errors = results.filter((r) => r.error !== undefined).length;
  const failed = results.length - passed - errors;
  const assertions = results.reduce((n, r) => n + r.assertions.length, 0);
  const failing = results.reduce((n, r) => n + r.assertions.filter((a) => !a.passed).length, 0);
  return `${results.length} scenario${results.length === 1 ? '' : 's'}: ${passed} passed, ${failed} failed, ${errors} could not run; ${assertions - failing}/${assertions} assertions held`;
}

// ---------------------------------------------------------------- JUnit XML

/** Replaces what XML 1.0 cannot carry at all (§2.2) by U+FFFD. */
function xmlChars(s: string): string {
  // Allowed: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
  return s.replace(/[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu, '\uFFFD');
}

/** Escapes text for XML character data. */
export function xmlText(s: string): string {
  // `]]>` is not allowed in character data (§2.4); escaping every > covers it.
  return xmlChars(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Escapes text for a double-quoted XML attribute value (whitespace kept as character references). */
export function xmlAttr(s: string): string {
  // Attribute-value normalization (§3.3.3) would turn raw tabs and newlines into spaces.
  return xmlText(s).replace(/"/g, '&quot;').replace(/'/g, '&apos;').replace(/\t/g, '&#9;').replace(/\n/g, '&#10;').replace(/\r/g, '&#13;');
}

function attrs(a: Record<string, string | number>): string {
  return Object.entries(a)
    .map(([k, v]) => ` ${k}="${xmlAttr(String(v))}"`)
    .join('');
}

const seconds = (wallMs: number) => (wallMs / 1000).toFixed(3);

/** A JUnit class name for a scenario: `hil.<file name without .hil.yaml>`. */
function className(r: ScenarioResult): string {
  return `hil.${path.basename(r.file).replace(/(\.hil)?\.ya?ml$/i, '').replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

function testcase(r: ScenarioResult, a: AssertionResult): string {
  const head = `    <testcase${attrs({ name: a.name, classname: className(r), time: '0.000', file: displayPath(r.file) })}`;
  const text = `${a.description}\n${a.message}${a.window ? `\nwindow: ${ms(a.window.fromMs)} .. ${ms(a.window.toMs)}` : ''}`;
  if (a.passed) return `${head}>\n      <system-out>${xmlText(text)}</system-out>\n    </testcase>`;
  return `${head}>\n      <failure${attrs({ type: 'AssertionFailed', message: a.message })}>${xmlText(text)}</failure>\n    </testcase>`;
}

/**
 * JUnit XML for a set of scenario runs, plus scenarios that were invalid (`invalid`: one
 * testsuite each with one errored testcase, so CI shows them too).
 */
export function junitXml(results: ScenarioResult[], invalid: Array<{ file: string; message: string }> = []): string {
  const suites: string[] = [];
  let tests = 0;
  let failures = 0;
  let errors = 0;
  let totalMs = 0;
  const host = os.hostname();
  for (const r of results) {
    const cases: string[] = [];
    let f = 0;
    let e = 0;
    if (r.error !== undefined) {
      e++;
      cases.push(
        `    <testcase${attrs({ name: 'run the scenario', classname: className(r), time: seconds(r.wallMs), file: displayPath(r.file) })}>\n      <error${attrs({ type: 'ScenarioError', message: r.error })}>${xmlText(r.error)}</error>\n    </testcase>`,
      );
    }
    for (const a of r.assertions) {
      if (!a.passed) f++;
      cases.push(testcase(r, a));
    }
    const n = cases.length;
    tests += n;
    failures += f;
    errors += e;
    totalMs += r.wallMs;
    const props = [
      ['config', displayPath(r.configFile)],
      ['firmware', r.firmware],
      ['durationMs', String(r.timeline.durationMs)],
      ['speed', String(r.speed)],
    ]
      .map(([k, v]) => `      <property${attrs({ name: k, value: v })}/>`)
      .join('\n');
    const out = [...timelineLines(r.timeline), ...r.notes.map((x) => `note: ${x}`)].join('\n');
    suites.push(
      `  <testsuite${attrs({ name: r.name, tests: n, failures: f, errors: e, skipped: 0, time: seconds(r.wallMs), timestamp: r.startedAt.replace(/\.\d+Z$/, ''), hostname: host, file: displayPath(r.file) })}>\n` +
        `    <properties>\n${props}\n    </properties>\n` +
        `${cases.join('\n')}\n` +
        `    <system-out>${xmlText(out)}</system-out>\n` +
        `  </testsuite>`,
    );
  }
  for (const bad of invalid) {
    tests++;
    errors++;
    suites.push(
      `  <testsuite${attrs({ name: displayPath(bad.file), tests: 1, failures: 0, errors: 1, skipped: 0, time: '0.000', hostname: host, file: displayPath(bad.file) })}>\n` +
        `    <testcase${attrs({ name: 'load the scenario', classname: 'hil.invalid', time: '0.000' })}>\n      <error${attrs({ type: 'InvalidScenario', message: bad.message.split('\n').slice(0, 2).join(' ').trim() })}>${xmlText(bad.message)}</error>\n    </testcase>\n` +
        `  </testsuite>`,
    );
  }
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites${attrs({ name: 'keel hil', tests, failures, errors, time: seconds(totalMs) })}>\n${suites.join('\n')}\n</testsuites>\n`;
}
