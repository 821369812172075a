import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FakeClock, SystemClock, type Clock } from '../../runtime/clock.ts';
import {
  PolicyCallError,
  PolicyHost,
  resolvePolicyModule,
  validatePolicyResult,
  type PolicyFailureReason,
  type PolicyHostOptions,
} from '../../runtime/decisions/policy.ts';
import { PolicyError } from '../../runtime/errors.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const FIXTURES = path.join(here, '..', 'fixtures', 'policies');
const ACTUATORS = ['led', 'motor'];

/** A started host on a fixture module, stopped when the test ends. */
async function host(t: TestContext, module: string, opts: Partial<PolicyHostOptions> & { timeoutMs?: number } = {}): Promise<PolicyHost> {
  const h = make(t, module, opts);
  await h.start();
  return h;
}

function make(t: TestContext, module: string, opts: Partial<PolicyHostOptions> & { timeoutMs?: number } = {}): PolicyHost {
  const { timeoutMs, ...rest } = opts;
  const h = new PolicyHost({ module, timeoutMs: timeoutMs ?? 50 }, { baseDir: FIXTURES, actuators: new Set(ACTUATORS), clock: new FakeClock(), name: 'p', ...rest });
  t.after(() => h.stop());
  return h;
}

function input(pipeline: string, extra: { outputs?: Record<string, ArrayLike<number>>; sensors?: Record<string, number>; states?: Record<string, boolean> } = {}) {
  return { pipeline, t: 1_700_000_000_000, outputs: extra.outputs ?? { score: [0.1] }, sensors: extra.sensors ?? {}, states: extra.states ?? {} };
}

/** Asserts a rejection with a PolicyCallError of `reason`, whose message matches `re`. */
async function rejectsWith(p: Promise<unknown>, reason: PolicyFailureReason, re?: RegExp): Promise<PolicyCallError> {
  let caught: unknown;
  await p.then(
    (v) => assert.fail(`expected a ${reason} rejection, got ${JSON.stringify(v)}`),
    (e) => (caught = e),
  );
  assert.ok(caught instanceof PolicyCallError, `expected PolicyCallError, got ${String(caught)}`);
  assert.ok(caught instanceof PolicyError);
  assert.equal(caught.code, 'KEEL_E_POLICY');
  assert.equal(caught.reason, reason, caught.message);
  if (re) assert.match(caught.message, re);
  return caught;
}

test('a TypeScript policy loads in the worker and gets plain inputs', async (t) => {
  const h = await host(t, 'good.ts');
  const r = await h.decide(input('pipe-a', { outputs: { score: new Float32Array([0.5]) }, sensors: { 'env.temp': 21.5 }, states: { alarm: true } }));
  assert.deepEqual(r, { actions: [{ actuator: 'led', value: true }], note: 'pipe-a t=1700000000000 score=0.5 temp=21.5' });
  const r2 = await h.decide(input('pipe-a', { outputs: { score: [0.2] } }));
  assert.deepEqual(r2.actions, [{ actuator: 'led', value: false }]);
  const s = h.stats();
  assert.equal(s.state, 'ready');
  assert.equal(s.ok, 2);
  assert.equal(s.restarts, 0);
  assert.ok(s.lastMs >= 0 && s.maxMs >= s.lastMs);
});

test('a plain .mjs policy loads too, async results are awaited', async (t) => {
  const h = await host(t, 'good.mjs');
  assert.deepEqual(await h.decide(input('x', { outputs: { score: [0.9] } })), { actions: [{ actuator: 'motor', value: 'stop' }] });
});

test('a policy that throws: sync, async and non-Error throws are reported, the worker lives on', async (t) => {
  const h = await host(t, 'throws.ts');
  const faults: PolicyCallError[] = [];
  h.on('fault', (e) => faults.push(e));
  await rejectsWith(h.decide(input('sync')), 'threw', /threw: Error: boom \(at .*throws\.ts/);
  await rejectsWith(h.decide(input('async')), 'threw', /RangeError: async boom/);
  await rejectsWith(h.decide(input('string')), 'threw', /non-Error thrown: a bare string/);
  assert.deepEqual(await h.decide(input('ok')), {});
  assert.equal(faults.length, 3);
  assert.equal(h.stats().restarts, 0);
  assert.equal(h.stats().failed.threw, 3);
});

test('garbage results are rejected with every problem named', async (t) => {
  const h = await host(t, 'garbage.ts');
  await rejectsWith(h.decide(input('undefined')), 'invalid-result', /returned undefined; expected an object/);
  await rejectsWith(h.decide(input('null')), 'invalid-result', /returned null/);
  await rejectsWith(h.decide(input('number')), 'invalid-result', /returned number/);
  await rejectsWith(h.decide(input('array')), 'invalid-result', /returned an array/);
  await rejectsWith(h.decide(input('typo')), 'invalid-result', /action: unknown key \(allowed: actions, note\)/);
  await rejectsWith(h.decide(input('unknown-actuator')), 'invalid-result', /actions\[0\]\.actuator: no actuator named "laser" \(known: led, motor\)/);
  const e = await rejectsWith(h.decide(input('bad-values')), 'invalid-result');
  for (const re of [
    /note: expected a string, got number/,
    /actions\[0\]\.value: expected a finite number, got NaN/,
    /actions\[1\]\.value: expected a number, boolean or string, got Object/,
    /actions\[2\]\.value: expected a number, boolean or string, got undefined/,
    /actions\[3\]\.actuator: expected a string, got number/,
    /actions\[4\]\.extra: unknown key/,
    /actions\[5\]: expected \{ actuator, value \}, got string/,
  ]) {
    assert.match(e.message, re);
  }
  await rejectsWith(h.decide(input('too-many')), 'invalid-result', /1000 actions, at most 64/);
  await rejectsWith(h.decide(input('function')), 'invalid-result', /cannot leave the worker: DataCloneError/);
  await rejectsWith(h.decide(input('map')), 'invalid-result', /returned object/);
  assert.deepEqual(await h.decide(input('fine')), { actions: [{ actuator: 'led', value: 0 }] });
  assert.equal(h.stats().restarts, 0);
});

test('an infinite loop times out, the worker is terminated and the next call works again', async (t) => {
  const clock = new FakeClock();
  const h = await host(t, 'loop.ts', { clock, timeoutMs: 50 });
  assert.deepEqual(await h.decide(input('count')), { note: 'call 1' });
  const stuck = h.decide(input('loop'));
  // While it loops, other calls are refused at once rather than queued.
  await rejectsWith(h.decide(input('count')), 'busy');
  clock.advance(49);
  assert.equal(h.stats().state, 'busy');
  clock.advance(1);
  await rejectsWith(stuck, 'timeout', /longer than 50 ms; worker terminated and restarted/);
  await rejectsWith(h.decide(input('count')), 'unavailable', /restarting/);
  await h.whenReady();
  // A fresh worker: the module state started over.
  assert.deepEqual(await h.decide(input('count')), { note: 'call 1' });
  const s = h.stats();
  assert.equal(s.restarts, 1);
  assert.equal(s.failed.timeout, 1);
  assert.equal(s.consecutiveFailures, 0);
});

test('a promise that never settles times out the same way', async (t) => {
  const clock = new FakeClock();
  const h = await host(t, 'loop.ts', { clock, timeoutMs: 20 });
  const p = h.decide(input('hang'));
  clock.advance(20);
  await rejectsWith(p, 'timeout');
  await h.whenReady();
  assert.deepEqual(await h.decide(input('count')), { note: 'call 1' });
});

test('a slow async policy: answers within its budget, times out beyond it', async (t) => {
  const real = await host(t, 'slow.ts', { clock: new SystemClock(), timeoutMs: 5000 });
  assert.deepEqual(await real.decide(input('x', { sensors: { 'delay.ms': 30 } })), { note: 'waited 30 ms' });
  assert.ok(real.stats().lastMs >= 25, `round trip ${real.stats().lastMs} ms should include the 30 ms wait`);

  const clock = new FakeClock();
  const fake = await host(t, 'slow.ts', { clock, timeoutMs: 50 });
  const p = fake.decide(input('x', { sensors: { 'delay.ms': 60_000 } }));
  clock.advance(50);
  await rejectsWith(p, 'timeout');
});

test('repeated worker failures back off exponentially; a success resets the backoff', async (t) => {
  const clock = new FakeClock();
  const h = await host(t, 'loop.ts', { clock, timeoutMs: 10, backoff: { initialMs: 100, maxMs: 1000, factor: 2 } });
  const timeOut = async () => {
    const p = h.decide(input('loop'));
    clock.advance(10);
    await rejectsWith(p, 'timeout');
  };
  await timeOut(); // failure 1: immediate restart
  await h.whenReady();
  await timeOut(); // failure 2: restart after 100 ms
  assert.equal(h.stats().state, 'backoff');
  assert.ok(clock.pending().includes('policy:p:restart'));
  await rejectsWith(h.decide(input('count')), 'unavailable', /backoff after 2 consecutive failures/);
  clock.advance(99);
  assert.equal(h.stats().state, 'backoff');
  clock.advance(1);
  assert.equal(h.stats().state, 'starting');
  await h.whenReady();
  await timeOut(); // failure 3: 200 ms
  clock.advance(199);
  assert.equal(h.stats().state, 'backoff');
  clock.advance(1);
  await h.whenReady();
  assert.deepEqual(await h.decide(input('count')), { note: 'call 1' });
  assert.equal(h.stats().consecutiveFailures, 0);
  assert.equal(h.stats().restarts, 3);
  await timeOut(); // after a success the next failure restarts at once again
  assert.equal(h.stats().state, 'starting');
  await h.whenReady();
});

test('a worker that exits, dies of an uncaught error or runs out of memory is restarted', async (t) => {
  const h = await host(t, 'crash.ts', { timeoutMs: 10_000, resourceLimits: { maxOldGenerationSizeMb: 24, maxYoungGenerationSizeMb: 4 } });
  await rejectsWith(h.decide(input('exit')), 'crashed', /exited \(code 3\)/);
  await h.whenReady();
  assert.deepEqual(await h.decide(input('ok')), { note: 'fine' });
  await rejectsWith(h.decide(input('uncaught')), 'crashed', /thrown outside decide/);
  await h.whenReady();
  assert.deepEqual(await h.decide(input('ok')), { note: 'fine' });
  await rejectsWith(h.decide(input('oom')), 'crashed', /memory limit/);
  await h.whenReady();
  assert.deepEqual(await h.decide(input('ok')), { note: 'fine' });
  assert.equal(h.stats().restarts, 3);
});

test('module paths: URLs, missing files, directories and other extensions are refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-policy-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'folder.ts'));
  fs.writeFileSync(path.join(dir, 'policy.json'), '{}');
  fs.writeFileSync(path.join(dir, 'real.mjs'), 'export default () => ({});');
  fs.symlinkSync(path.join(dir, 'real.mjs'), path.join(dir, 'link.mjs'));
  fs.symlinkSync(path.join(dir, 'policy.json'), path.join(dir, 'sneaky.mjs'));
  const refused: [string, RegExp][] = [
    ['http://example.com/p.mjs', /not a URL or specifier/],
    ['https://example.com/p.ts', /not a URL/],
    ['data:text/javascript,export default () => ({})', /not a URL/],
    ['node:fs', /not a URL/],
    ['file:///etc/passwd', /not a URL/],
    ['missing.ts', /missing\.ts does not exist \(from "missing\.ts" relative to/],
    ['folder.ts', /is not a regular file/],
    ['policy.json', /must end in \.ts, \.js or \.mjs \(got "\.json"\)/],
    ['sneaky.mjs', /must end in \.ts, \.js or \.mjs/],
    ['', /non-empty/],
    ['a\0b.ts', /NUL/],
  ];
  for (const [spec, re] of refused) {
    assert.throws(() => resolvePolicyModule(spec, dir), (e: unknown) => e instanceof PolicyCallError && e.reason === 'load' && e.code === 'KEEL_E_POLICY' && re.test(e.message), spec);
  }
  assert.equal(resolvePolicyModule('link.mjs', dir), fs.realpathSync(path.join(dir, 'real.mjs')));
  assert.equal(resolvePolicyModule(path.join(dir, 'real.mjs'), '/nonexistent'), fs.realpathSync(path.join(dir, 'real.mjs')));
  // start() refuses the same way and the host stays stopped.
  const h = new PolicyHost({ module: 'https://evil.example/p.mjs', timeoutMs: 50 }, { baseDir: dir, actuators: ACTUATORS, clock: new FakeClock() });
  await assert.rejects(h.start(), (e: unknown) => e instanceof PolicyCallError && e.reason === 'load');
  await rejectsWith(h.decide(input('x')), 'stopped');
});

test('policies outside a "type": "module" package: .ts loads, ESM .js gets a hint', async (t) => {
  // Like /etc/keel/policy.ts on a device: no package.json anywhere above.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-policy-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(
    path.join(dir, 'policy.ts'),
    'interface In { outputs: Record<string, number[]> }\nconst limit: number = 0.5;\nexport default function decide(i: In) { return { actions: [{ actuator: "led", value: i.outputs.score[0] > limit }] }; }\n',
  );
  fs.writeFileSync(path.join(dir, 'policy.js'), 'export default function decide() { return {}; }\n');
  const ts = new PolicyHost({ module: 'policy.ts' }, { baseDir: dir, actuators: ACTUATORS, clock: new FakeClock() });
  t.after(() => ts.stop());
  await ts.start();
  assert.deepEqual(await ts.decide(input('x', { outputs: { score: [0.7] } })), { actions: [{ actuator: 'led', value: true }] });
  const js = new PolicyHost({ module: 'policy.js' }, { baseDir: dir, actuators: ACTUATORS, clock: new FakeClock() });
  t.after(() => js.stop());
  // Node versions that detect ESM syntax load it; older ones fail with a hint to use .mjs.
  const loaded = await js.start().then(() => true, (e: PolicyCallError) => (assert.match(e.message, /name the policy \.mjs/), false));
  if (loaded) assert.deepEqual(await js.decide(input('x')), {});
});

test('modules that do not load: syntax error, throw at import, no default export, endless top level', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-policy-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files: Record<string, string> = {
    'syntax.ts': 'export default function decide( {',
    'import-throws.mjs': 'throw new Error("no config for me");',
    'no-default.ts': 'export function decide() { return {}; }',
    'default-object.mjs': 'export default { decide() { return {}; } };',
    'default-object.ts': 'export default { decide() { return {}; } };',
    'bad-import.mjs': 'import "./does-not-exist.mjs"; export default () => ({});',
    'spin.mjs': 'for (;;) {} export default () => ({});',
  };
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
  const expect: [string, PolicyFailureReason, RegExp][] = [
    ['syntax.ts', 'load', /syntax\.ts failed to load: .*(Error|error)/],
    ['import-throws.mjs', 'load', /failed to load: Error: no config for me/],
    ['no-default.ts', 'load', /must `export default function decide\(input\)`; its default export is missing \(it exports: decide\)/],
    ['default-object.mjs', 'load', /default export is object/],
    ['default-object.ts', 'load', /default export is object/], // loaded as CommonJS here
    ['bad-import.mjs', 'load', /does-not-exist\.mjs/],
  ];
  await Promise.all(
    expect.map(async ([f, reason, re]) => {
      const h = new PolicyHost({ module: f, timeoutMs: 50 }, { baseDir: dir, actuators: ACTUATORS, clock: new FakeClock(), name: f });
      t.after(() => h.stop());
      const err = await h.start().then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof PolicyCallError, `${f}: ${String(err)}`);
      assert.equal(err.reason, reason, `${f}: ${err.message}`);
      assert.match(err.message, re);
      assert.equal(h.stats().state, 'stopped', f);
    }),
  );
  // A module whose top level never returns hits the load budget.
  const clock = new FakeClock();
  const spin = new PolicyHost({ module: 'spin.mjs', timeoutMs: 50 }, { baseDir: dir, actuators: ACTUATORS, clock, loadTimeoutMs: 2000 });
  t.after(() => spin.stop());
  const started = spin.start();
  await new Promise((r) => setTimeout(r, 20));
  clock.advance(2000);
  await rejectsWith(started, 'timeout', /did not load within 2000 ms/);
});

test('bad construction arguments throw TypeError/RangeError naming the parameter', () => {
  const clock = new FakeClock();
  assert.throws(() => new PolicyHost({ module: 5 as never }, { baseDir: '.', actuators: [], clock }), /policy\.module/);
  assert.throws(() => new PolicyHost({ module: 'a.ts', timeoutMs: 0 }, { baseDir: '.', actuators: [], clock }), RangeError);
  assert.throws(() => new PolicyHost({ module: 'a.ts' }, { baseDir: '.', actuators: [], clock: undefined as unknown as Clock }), /options\.clock/);
  assert.throws(() => new PolicyHost({ module: 'a.ts' }, { baseDir: '.', actuators: [], clock, backoff: { factor: 0.5 } }), /backoff/);
});

test('validatePolicyResult returns a clean copy', () => {
  const set = new Set(['led']);
  const src = { actions: [{ actuator: 'led', value: 1 }], note: 'n' };
  const out = validatePolicyResult(src, set);
  assert.deepEqual(out, src);
  assert.notEqual(out.actions, src.actions);
  assert.deepEqual(validatePolicyResult({}, set), {});
  assert.deepEqual(validatePolicyResult(Object.assign(Object.create(null), { actions: [] }), set), { actions: [] });
  assert.throws(() => validatePolicyResult({ actions: [{ actuator: 'led', value: Infinity }] }, set), /finite/);
});

test('stop() rejects a call in flight and is idempotent', async (t) => {
  const h = await host(t, 'loop.ts', { timeoutMs: 60_000 });
  const p = rejectsWith(h.decide(input('hang')), 'stopped');
  await h.stop();
  await h.stop();
  await p;
  await rejectsWith(h.decide(input('count')), 'stopped');
});

test('the worker entry works under plain node (no tsx in the parent) for .mjs and, with tsx registered, .ts', async () => {
  // A child process of plain `node`, without tsx's flags, drives policy-worker.mjs directly.
  const workerUrl = pathToFileURL(path.join(here, '..', '..', 'runtime', 'decisions', 'policy-worker.mjs')).href;
  const tsxApi = { esm: import.meta.resolve('tsx/esm/api'), cjs: import.meta.resolve('tsx/cjs/api') };
  const script = `
    import { Worker } from 'node:worker_threads';
    const run = (file, typescript, tsx) => new Promise((resolve) => {
      const w = new Worker(new URL(${JSON.stringify(workerUrl)}), { workerData: { moduleUrl: file, typescript, tsxApi: tsx }, execArgv: [] });
      w.on('message', (m) => {
        if (m.type === 'ready') w.postMessage({ type: 'decide', id: 1, input: { pipeline: 'p', t: 0, outputs: { score: [0.9] }, sensors: {}, states: {} } });
        else { resolve(m); w.terminate(); }
      });
    });
    const out = [
      await run(${JSON.stringify(pathToFileURL(path.join(FIXTURES, 'good.mjs')).href)}, false, null),
      await run(${JSON.stringify(pathToFileURL(path.join(FIXTURES, 'good.ts')).href)}, true, ${JSON.stringify(tsxApi)}),
      await run(${JSON.stringify(pathToFileURL(path.join(FIXTURES, 'good.ts')).href)}, true, null),
    ];
    console.log(JSON.stringify({ execArgv: process.execArgv, out }));
  `;
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, NODE_OPTIONS: '' }, timeout: 20_000 }, (err, out, errOut) =>
      err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve(out),
    ),
  );
  const { execArgv, out } = JSON.parse(stdout);
  assert.ok(!execArgv.some((a: string) => /^--(import|require|loader)/.test(a)), 'the child runs without any loader');
  assert.deepEqual(out[0], { type: 'result', id: 1, result: { actions: [{ actuator: 'motor', value: 'stop' }] } });
  assert.equal(out[1].type, 'result');
  assert.deepEqual(out[1].result.actions, [{ actuator: 'led', value: true }]);
  assert.equal(out[2].type, 'load-error');
  assert.match(out[2].message, /needs the tsx package/);
});
