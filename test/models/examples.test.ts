/**
 * The example configs of the shipped models: each loads with keel's config loader, pins
 * the model file's actual SHA-256, feeds the model exactly the pipeline its card states,
 * and its synthetic signals really drive the model to the intended decisions (normal
 * segments stay quiet, abnormal ones trigger the rules), checked by running the signals
 * through keel's transforms and the model in onnxruntime-node.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfigFile, type LoadedConfig } from '../../runtime/config/load.ts';
import type { PipelineConfig } from '../../runtime/config/schema.ts';
import { readCardFacts, sha256File } from '../../tools/model-card.ts';
import { openSession, runOnce, type Feeds } from '../../tools/ort-verify.ts';
import { applyTransforms, frameOf } from '../../tools/features.ts';
import { synthesizeChannel } from '../../tools/signals.ts';
import { MODELS_DIR } from '../../tools/script.ts';
import { EXAMPLES_DIR, motorStallExample, obstacleExample, vibrationExample } from '../../tools/write-examples.ts';

const EXAMPLES = [
  { file: 'vibration.yaml', model: 'vibration-anomaly', make: vibrationExample },
  { file: 'obstacle.yaml', model: 'obstacle', make: obstacleExample },
  { file: 'motor-stall.yaml', model: 'motor-stall', make: motorStallExample },
];

for (const ex of EXAMPLES) {
  test(`examples/${ex.file} loads, pins the model's hash and uses the card's pipeline`, () => {
    const loaded = loadConfigFile(path.join(EXAMPLES_DIR, ex.file));
    const { config, dir } = loaded;
    assert.equal(config.gpio.backend, 'sim');
    assert.ok(config.actuators.length > 0 && config.actuators.every((a) => a.type === 'gpio'));
    assert.ok(config.safety.safeState.length > 0, 'a safe state is configured');
    assert.equal(config.pipelines.length, 1);
    const p = config.pipelines[0];
    const src = config.sources.find((s) => s.name === p.source);
    assert.equal(src?.type, 'synthetic');
    const f = readCardFacts(path.join(MODELS_DIR, `${ex.model}.md`));
    const modelFile = path.resolve(dir, p.model.path);
    assert.equal(modelFile, path.join(MODELS_DIR, f.file), 'model path is relative to the config file');
    assert.ok(existsSync(modelFile));
    assert.equal(p.model.sha256, sha256File(modelFile));
    assert.equal(p.model.sha256, f.sha256);
    assert.deepEqual(p.window, f.pipeline.window);
    assert.deepEqual(p.transforms, f.pipeline.transforms);
    if (src?.type === 'synthetic') assert.equal(src.rateHz, f.sourceRateHz);
    assert.equal(p.model.input, f.windowInput);
    const fed = f.inputs.find((t) => t.name === f.windowInput)!;
    assert.deepEqual(p.model.inputs, { [fed.name]: { shape: fed.shape, dtype: fed.dtype } });
    assert.deepEqual(
      (p.model.state ?? []).map((s) => ({ input: s.input, output: s.output, shape: s.shape, initial: s.initial })),
      (f.state ?? []).map((s) => ({ input: s.input, output: s.output, shape: s.shape, initial: s.initial })),
    );
    assert.ok(p.rules.length > 0);
  });

  test(`examples/${ex.file} is what tools/write-examples.ts generates (re-run it after retraining)`, () => {
    assert.equal(readFileSync(path.join(EXAMPLES_DIR, ex.file), 'utf8'), ex.make());
  });
}

/** Runs the example's signals through its pipeline and model; returns the first fetched output per window, with the window's end time (s). */
async function simulate(loaded: LoadedConfig, seconds: number): Promise<{ t: number; out: Float32Array }[]> {
  const p: PipelineConfig = loaded.config.pipelines[0];
  const src = loaded.config.sources.find((s) => s.name === p.source);
  if (src?.type !== 'synthetic') throw new Error('example source is not synthetic');
  const n = Math.round(seconds * src.rateHz);
  const channels = p.window.channels.map((c, k) => synthesizeChannel(src.channels[c], src.rateHz, n, 100 + k));
  const s = await openSession(path.resolve(loaded.dir, p.model.path));
  const state = p.model.state?.[0];
  let h: ArrayLike<number> | undefined = state ? new Float32Array(state.shape.reduce((a, b) => a * b, 1)).fill(state.initial) : undefined;
  const hop = p.window.hop ?? p.window.size;
  const result: { t: number; out: Float32Array }[] = [];
  try {
    for (let a = 0; a + p.window.size <= n; a += hop) {
      const x = applyTransforms(frameOf(channels.map((c) => c.subarray(a, a + p.window.size))), p.transforms);
      const feeds: Feeds = { [p.model.input]: { data: x, dims: p.model.inputs[p.model.input].shape } };
      if (state && h) feeds[state.input] = { data: h, dims: state.shape };
      const out = await runOnce(s, feeds);
      if (state) h = out[state.output];
      result.push({ t: (a + p.window.size) / src.rateHz, out: out[p.model.outputs![0]] });
    }
  } finally {
    await s.release();
  }
  return result;
}

const between = (r: { t: number; out: Float32Array }[], from: number, to: number) => r.filter((w) => w.t > from && w.t <= to);

test('vibration example: quiet while healthy, alarm during the bearing defect', async () => {
  const r = await simulate(loadConfigFile(path.join(EXAMPLES_DIR, 'vibration.yaml')), 20);
  const healthy = between(r, 0.3, 10).map((w) => w.out[0]);
  const faulty = between(r, 10.3, 20).map((w) => w.out[0]);
  // The anomaly rule fires after 4 consecutive windows above 0.8: never while healthy.
  let run = 0;
  for (const v of healthy) {
    run = v > 0.8 ? run + 1 : 0;
    assert.ok(run < 4, 'the anomaly rule would fire on the healthy machine');
  }
  assert.ok(faulty.filter((v) => v > 0.8).length >= 0.8 * faulty.length, `only ${faulty.filter((v) => v > 0.8).length} of ${faulty.length} faulty windows score above 0.8`);
});

test('obstacle example: clear, then near, then blocked', async () => {
  const r = await simulate(loadConfigFile(path.join(EXAMPLES_DIR, 'obstacle.yaml')), 15);
  const labels = ['clear', 'near', 'blocked'];
  [0, 1, 2].forEach((cls) => {
    const seg = between(r, cls * 5 + 0.1, cls * 5 + 5);
    const right = seg.filter((w) => w.out.indexOf(Math.max(...w.out)) === cls).length;
    assert.ok(right >= 0.9 * seg.length, `${labels[cls]} segment: ${right} of ${seg.length} scans classified ${labels[cls]}`);
  });
});

test('motor-stall example: the start and steady running stay quiet, the stall trips, drive-off clears', async () => {
  const r = await simulate(loadConfigFile(path.join(EXAMPLES_DIR, 'motor-stall.yaml')), 14);
  const max = (a: number, b: number) => Math.max(...between(r, a, b).map((w) => w.out[0]));
  const min = (a: number, b: number) => Math.min(...between(r, a, b).map((w) => w.out[0]));
  assert.ok(max(0, 6.4) < 0.7, `start/running: stall up to ${max(0, 6.4)}`);
  assert.ok(min(9, 11.9) > 0.7, `stalled: stall down to ${min(9, 11.9)}`);
  assert.ok(max(12.3, 13.9) < 0.3, `drive off: stall up to ${max(12.3, 13.9)}`);
});
