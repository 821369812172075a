/**
 * `npm run bench:arm64`: the pipeline and ledger benchmarks (bench/pipeline.bench.ts,
 * bench/ledger-store.bench.ts) on arm64, under qemu user-mode emulation in the arm64 test tree
 * (tools/arm64/build-tree.sh --dev), next to the same benchmarks on this x64 host. Emulation
 * makes absolute figures meaningless (qemu translates every instruction), so only ratios are
 * compared: each benchmark's ratio against its raw baseline measured in the same run, on the
 * same architecture. A ratio that holds on arm64 says keel's own overhead scales with the CPU
 * like the raw work it wraps; one that falls says keel's code suffers more from the change.
 *
 * Also answers whether onnxruntime's XNNPACK execution provider helps the shipped models on
 * arm64: it lists the execution providers onnxruntime-node's arm64 build offers and, when
 * XNNPACK is among them, times each shipped model's raw session.run with it against the CPU
 * provider.
 *
 *   npx tsx bench/arm64.ts [--quick] [--json] [filters...]   (default filters: pipeline ledger-store)
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchResult } from './lib.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const json = args.includes('--json');
const filters = args.filter((a) => !a.startsWith('--'));
const benches = filters.length ? filters : ['pipeline', 'ledger-store'];
const TREE = path.join(process.env.KEEL_ARM64_CACHE ?? path.join(ROOT, '.cache/arm64'), 'dev');
const QEMU_NODE = path.join(ROOT, 'tools/arm64/qemu-node.sh');

function sh(cmd: string, argv: string[], cwd = ROOT): string {
  const r = spawnSync(cmd, argv, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} exited ${r.status ?? r.signal}`);
  return r.stdout;
}

function parse(out: string): BenchResult[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as BenchResult);
}

sh('bash', ['tools/arm64/fetch.sh']);
sh('bash', ['tools/arm64/build-tree.sh', '--dev']);
const benchArgs = ['bench/run.ts', '--json', ...(quick ? ['--quick'] : []), ...benches];
const t0 = performance.now();
const x64 = parse(sh(process.execPath, ['--import', 'tsx', ...benchArgs]));
const t1 = performance.now();
const arm = parse(sh(QEMU_NODE, ['--import', 'tsx', ...benchArgs], TREE));
const t2 = performance.now();

// XNNPACK: offered by this onnxruntime-node build on arm64? If so, does it beat the CPU EP?
const probe = `
const ort = require('onnxruntime-node');
const fs = require('fs');
const eps = require('onnxruntime-node/dist/binding.js').binding.listSupportedBackends().map((b) => b.name);
const out = { eps, models: [] };
(async () => {
  if (eps.includes('xnnpack')) {
    for (const f of fs.readdirSync('models').filter((f) => f.endsWith('.onnx'))) {
      const row = { model: f };
      for (const ep of ['cpu', 'xnnpack']) {
        const s = await ort.InferenceSession.create(fs.readFileSync('models/' + f), { executionProviders: [ep], intraOpNumThreads: 1 });
        const feeds = {};
        for (const m of s.inputMetadata) {
          const shape = m.shape.map((d) => (typeof d === 'number' && d > 0 ? d : 1));
          feeds[m.name] = new ort.Tensor('float32', new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.1), shape);
        }
        for (let i = 0; i < 20; i++) await s.run(feeds);
        const n = ${quick ? 200 : 1000};
        const t = performance.now();
        for (let i = 0; i < n; i++) await s.run(feeds);
        row[ep] = n / ((performance.now() - t) / 1000);
        await s.release();
      }
      out.models.push(row);
    }
  }
  console.log(JSON.stringify(out));
})();`;
const xnn = JSON.parse(sh(QEMU_NODE, ['-e', probe], TREE).trim().split('\n').at(-1)!) as { eps: string[]; models: { model: string; cpu: number; xnnpack: number }[] };

const byName = new Map(x64.map((r) => [r.name, r]));
// Resident memory under qemu is the emulator's (its translation cache included), not the
// emulated program's: those rows say nothing about arm64 and are left out.
const rows = arm.filter((a) => !a.name.startsWith('resident memory')).map((a) => ({ name: a.name, unit: a.unit, x64Ratio: byName.get(a.name)?.ratio ?? NaN, arm64Ratio: a.ratio, arm64Value: a.value, arm64Baseline: a.baseline }));
if (json) {
  for (const r of rows) console.log(JSON.stringify(r));
  console.log(JSON.stringify({ xnnpack: xnn }));
} else {
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : '-');
  console.log(`| benchmark | x64 ratio | arm64 ratio (qemu) | arm64 / x64 |`);
  console.log(`| --- | --- | --- | --- |`);
  for (const r of rows) console.log(`| ${r.name} | ${f(r.x64Ratio)} | ${f(r.arm64Ratio)} | ${f(r.arm64Ratio / r.x64Ratio)} |`);
  console.log();
  console.log(`execution providers in onnxruntime-node's linux/arm64 build: ${xnn.eps.join(', ')}`);
  if (xnn.models.length === 0) console.log('XNNPACK: not offered by this build, so it cannot help here (keel accepts executionProviders: [xnnpack] only where the build has it)');
  for (const m of xnn.models) console.log(`XNNPACK ${m.model}: ${m.xnnpack.toFixed(0)} runs/s vs CPU ${m.cpu.toFixed(0)} (${(m.xnnpack / m.cpu).toFixed(2)}x)`);
  console.log(`(x64 run ${((t1 - t0) / 1000).toFixed(0)} s, arm64 run under qemu ${((t2 - t1) / 1000).toFixed(0)} s; shipped models: ${readdirSync(path.join(ROOT, 'models')).filter((x) => x.endsWith('.onnx')).length})`);
}
