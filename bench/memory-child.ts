/**
 * Child process of the memory benchmark: `memory-child.ts <bare|keel> <config> <seconds>`.
 * bare: one onnxruntime session of the config's model, run in a loop.
 * keel: the keel runtime on the config (push source, simulated GPIO), fed in a loop.
 * Prints {"rssMb"} measured after the run, when both have reached steady state.
 */
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadConfigFile } from '../runtime/config/load.ts';
import { pushRuntime } from './harness.ts';

const [mode, file, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? '2');
const { config, dir } = loadConfigFile(file);
const p = config.pipelines[0];
const until = performance.now() + seconds * 1000;

if (mode === 'bare') {
  const m = p.model;
  const session = await ort.InferenceSession.create(path.resolve(dir, m.path), {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: m.threads?.intraOp ?? 1,
    interOpNumThreads: m.threads?.interOp ?? 1,
    executionMode: 'sequential',
  });
  const feeds: Record<string, ort.Tensor> = {};
  for (const meta of session.inputMetadata) {
    if (!meta.isTensor) continue;
    const spec = m.inputs[meta.name] ?? (m.state ?? []).find((s) => s.input === meta.name);
    const shape = (spec?.shape ?? []).map((d) => (d === -1 ? 1 : d));
    const n = shape.reduce((a, b) => a * b, 1);
    feeds[meta.name] = meta.type === 'int64' ? new ort.Tensor('int64', new BigInt64Array(n).fill(16000n), shape) : new ort.Tensor('float32', new Float32Array(n), shape);
  }
  while (performance.now() < until) await session.run(feeds);
} else {
  const { rt, push } = await pushRuntime(config, dir);
  await rt.start();
  while (performance.now() < until) {
    for (let i = 0; i < (p.window.hop ?? p.window.size); i++) {
      const v: Record<string, number> = {};
      for (const c of p.window.channels) v[c] = Math.random() - 0.5;
      push.push(v);
    }
    await rt.settled();
  }
  console.log(JSON.stringify({ rssMb: process.memoryUsage().rss / 2 ** 20 }));
  await rt.stop('bench');
  process.exit(0);
}
console.log(JSON.stringify({ rssMb: process.memoryUsage().rss / 2 ** 20 }));
