/**
 * `keel check` as an integrator meets it: a corpus of broken configs (each file names the
 * errors it must produce in `# expect: <path>: <message substring>` lines at its top), every
 * shipped example, and the edge cases of a missing or empty file. Runs the real CLI.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ROOT, STACK_LINE, keel, killAll, pool, type KeelResult } from './keel-process.ts';

const BROKEN = 'test/fixtures/configs/broken';
const GOOD = 'test/fixtures/configs/good';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-check-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});

interface Expectation {
  /** Config path of the issue; '' for the file as a whole (printed as `(file)`). */
  path: string;
  /** Substring of its message. */
  message: string;
}

/** The `# expect:` lines of a fixture, or of its `.expect` sidecar (JSON has no comments). */
function expectations(file: string): Expectation[] {
  const abs = path.join(ROOT, file);
  const text = readFileSync(existsSync(abs + '.expect') ? abs + '.expect' : abs, 'utf8');
  const out: Expectation[] = [];
  for (const line of text.split('\n')) {
    const m = /^# expect: (.*)$/.exec(line);
    if (!m) continue;
    const cut = m[1].indexOf(': ');
    assert.ok(cut > 0, `${file}: an expect line must read "<path>: <message>": ${line}`);
    const p = m[1].slice(0, cut);
    out.push({ path: p === '(file)' ? '' : p, message: m[1].slice(cut + 2) });
  }
  return out;
}

/** Whether the human output has an issue line `  <path>: ...<message>...`. */
function printed(stderr: string, e: Expectation): boolean {
  const head = `${e.path || '(file)'}: `;
  return stderr.split('\n').some((l) => l.trimStart().startsWith(head) && l.includes(e.message));
}

const corpus = readdirSync(path.join(ROOT, BROKEN))
  .filter((f) => /\.(ya?ml|json)$/.test(f))
  .sort()
  .map((f) => `${BROKEN}/${f}`);
const JSON_CASES = ['many-errors.yaml', 'tensor-names.yaml', 'replay-policy-missing.yaml'].map((f) => `${BROKEN}/${f}`);
const EXAMPLES = ['examples', 'examples/policy', 'examples/hil', GOOD].flatMap((d) =>
  readdirSync(path.join(ROOT, d))
    // HIL scenario files (*.hil.yaml) are not keel configurations; keel hil check reads them.
    .filter((f) => f.endsWith('.yaml') && !f.endsWith('.hil.yaml'))
    .map((f) => `${d}/${f}`),
);
const zeroBytes = path.join(tmp, 'robot.yaml');
writeFileSync(zeroBytes, '');
/** Edge cases of the file itself: [args, text the output must contain]. */
const FILE_CASES: [string[], string][] = [
  [['check', 'examples/robot.yaml'], '  (file): cannot read examples/robot.yaml: file not found'],
  [['check', '--json', 'examples/robot.yaml'], '{"path":"","message":"cannot read examples/robot.yaml: file not found"}'],
  [['check', 'examples'], '  (file): cannot read examples: is a directory'],
  [['check', zeroBytes], '  (file): expected a mapping (object) at the top level'],
];

// Every child of this file goes through one pool started at once (a tsx child costs about a
// CPU-second to start): each test below only awaits and checks its own results.
const jobs: string[][] = [
  ...corpus.map((f) => ['check', f]),
  ...JSON_CASES.map((f) => ['check', '--json', f]),
  ...FILE_CASES.map(([args]) => args),
  ...EXAMPLES.map((f) => ['check', f]),
];
const done = new Map<string, Promise<KeelResult>>();
const settled = pool(jobs, 4, (args) => {
  const p = keel(args);
  done.set(args.join(' '), p);
  return p;
});
/** The result of `keel <args>` from the shared pool. */
async function result(...args: string[]): Promise<KeelResult> {
  await settled;
  const r = done.get(args.join(' '));
  assert.ok(r, `keel ${args.join(' ')} was not scheduled`);
  return r;
}

test('the broken corpus covers the mistakes it is meant to, and every fixture states its expectations', () => {
  assert.ok(corpus.length >= 24, `only ${corpus.length} fixtures`);
  for (const f of corpus) {
    assert.ok(expectations(f).length > 0, `${f} has no "# expect:" line`);
    const own = path.join(ROOT, existsSync(path.join(ROOT, f + '.expect')) ? f + '.expect' : f);
    assert.match(readFileSync(own, 'utf8'), /^# expect: /, `${own}: the first line must be an expect line`);
  }
});

test('keel check on each broken config: exit 3, every expected issue with its path on stderr, no stack trace', async (t) => {
  for (const file of corpus) {
    const r = await result('check', file);
    await t.test(path.basename(file), () => {
      const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
      assert.equal(r.code, 3, all);
      assert.equal(r.stdout, '', 'human output of a failed check goes to stderr');
      assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE, all);
      assert.match(r.stderr, new RegExp(`^${escape(file)}: \\d+ problems?$`, 'm'), all);
      for (const e of expectations(file)) assert.ok(printed(r.stderr, e), `missing "${e.path || '(file)'}: ...${e.message}..."\n${all}`);
    });
  }
});

test('every problem of a config is reported in one run (many-errors.yaml: 8 independent mistakes)', async () => {
  const file = `${BROKEN}/many-errors.yaml`;
  const [human, json] = [await result('check', file), await result('check', '--json', file)];
  const expected = expectations(file);
  assert.ok(expected.length >= 8);
  assert.match(human.stderr, new RegExp(`: ${expected.length} problems\n`), human.stderr);
  for (const e of expected) assert.ok(printed(human.stderr, e), `missing ${e.path}\n${human.stderr}`);
  const report = JSON.parse(json.stdout) as { ok: boolean; issues: { path: string; message: string }[] };
  assert.equal(report.issues.length, expected.length, json.stdout);
});

test('keel check --json: one JSON document on stdout with ok:false and every issue as {path, message}', async () => {
  for (const file of JSON_CASES) {
    const r = await result('check', '--json', file);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout.trim().split('\n').length, 1, 'exactly one line');
    let report: { ok: boolean; file: string; issues: { path: string; message: string }[] } | undefined;
    assert.doesNotThrow(() => (report = JSON.parse(r.stdout)), `not JSON: ${r.stdout}`);
    assert.equal(report!.ok, false);
    assert.equal(report!.file, file);
    for (const issue of report!.issues) {
      assert.equal(typeof issue.path, 'string');
      assert.ok(typeof issue.message === 'string' && issue.message.length > 0);
    }
    for (const e of expectations(file)) {
      assert.ok(
        report!.issues.some((x) => x.path === e.path && x.message.includes(e.message)),
        `${file}: no issue {path: "${e.path}", message ~ "${e.message}"} in ${r.stdout}`,
      );
    }
  }
});

test('a missing file, a directory and a zero-byte file are configuration errors with a clear message', async () => {
  for (const [args, message] of FILE_CASES) {
    const r = await result(...args);
    assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
    assert.ok((r.stdout + r.stderr).includes(message), `${args.join(' ')}:\n${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE);
  }
});

test('keel check passes every shipped example (and the policy example), loading each model', async () => {
  assert.ok(EXAMPLES.includes('examples/demo.yaml') && EXAMPLES.includes('examples/policy/obstacle-policy.yaml'), EXAMPLES.join());
  for (const file of EXAMPLES) {
    const r = await result('check', file);
    assert.equal(r.code, 0, `${file}:\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^${escape(file)}: ok \\(.*models pinned and matching\\)$`, 'm'));
    assert.equal(r.stderr, '');
  }
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
