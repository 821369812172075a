/**
 * Every shipped model, loaded as keel loads it (onnxruntime-node, from the file): its hash
 * is the one its card pins, its tensors are the ones the card states, its pipeline is the
 * one the data generator uses, and on freshly generated held-out data (a seed used neither
 * in training nor in the card) it still reaches the card's metrics, so a broken or swapped
 * model fails here. The stateful model must actually use its state.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { readCardFacts, sha256File, type CardFacts } from '../../tools/model-card.ts';
import { openSession, runOnce } from '../../tools/ort-verify.ts';
import { MODELS_DIR } from '../../tools/script.ts';
import { accuracy, argmax, rocAuc } from '../../tools/nn.ts';
import { VIBRATION_BINS, VIBRATION_PIPELINE, vibrationSet } from '../../tools/data/vibration.ts';
import { BEAMS, OBSTACLE_LABELS, OBSTACLE_PIPELINE, obstacleSet } from '../../tools/data/obstacle.ts';
import { MOTOR_FEATURES, MOTOR_PIPELINE, STATE_SIZE, motorSet } from '../../tools/data/motor.ts';
import { SEEDS as VIB_SEEDS } from '../../tools/train-vibration-anomaly.ts';
import { SEEDS as OBS_SEEDS } from '../../tools/train-obstacle.ts';
import { SEEDS as MOTOR_SEEDS, RUN_STEPS } from '../../tools/train-motor-stall.ts';

/** A seed none of the training scripts uses. */
const TEST_SEED = 9001;
/** How far below the card's figure a metric may fall on this smaller, differently seeded set. */
const ACCURACY_TOLERANCE = 0.03;
const AUC_TOLERANCE = 0.02;

const MODELS = ['vibration-anomaly', 'obstacle', 'motor-stall'];

function card(name: string): CardFacts {
  return readCardFacts(path.join(MODELS_DIR, `${name}.md`));
}

async function withSession<T>(f: CardFacts, body: (s: ort.InferenceSession) => Promise<T>): Promise<T> {
  const s = await openSession(path.join(MODELS_DIR, f.file));
  try {
    return await body(s);
  } finally {
    await s.release();
  }
}

test('the test seed is used by no training script', () => {
  for (const seeds of [VIB_SEEDS, OBS_SEEDS, MOTOR_SEEDS]) assert.ok(!Object.values(seeds).includes(TEST_SEED as never));
});

for (const name of MODELS) {
  test(`${name}: file hash equals the card's pinned SHA-256 and the index lists it`, () => {
    const f = card(name);
    assert.equal(f.name, name);
    assert.match(f.sha256, /^[0-9a-f]{64}$/);
    assert.equal(sha256File(path.join(MODELS_DIR, f.file)), f.sha256, `models/${f.file} does not match models/${name}.md; rerun npx tsx ${f.training.script}`);
    const readme = readFileSync(path.join(MODELS_DIR, 'README.md'), 'utf8');
    assert.ok(readme.includes(f.sha256), 'models/README.md lists a different hash');
    const body = readFileSync(path.join(MODELS_DIR, `${name}.md`), 'utf8');
    for (const section of ['## Purpose', '## Inputs', '## Outputs', '## Training data', '## Held-out results', '## Limitations', '## Reproduce']) {
      assert.ok(body.includes(section), `card lacks ${section}`);
    }
  });

  test(`${name}: ORT's input/output names, shapes and dtypes are the card's`, async () => {
    const f = card(name);
    await withSession(f, async (s) => {
      const describe = (m: readonly ort.InferenceSession.ValueMetadata[]) =>
        m.map((v) => (v.isTensor ? { name: v.name, shape: v.shape, dtype: v.type } : { name: v.name, shape: [], dtype: 'non-tensor' }));
      assert.deepEqual(describe(s.inputMetadata), f.inputs.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype })));
      assert.deepEqual(describe(s.outputMetadata), f.outputs.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype })));
    });
  });
}

test('each card states the pipeline its data generator uses', () => {
  assert.deepEqual(card('vibration-anomaly').pipeline, VIBRATION_PIPELINE);
  assert.deepEqual(card('obstacle').pipeline, OBSTACLE_PIPELINE);
  assert.deepEqual(card('motor-stall').pipeline, MOTOR_PIPELINE);
  assert.deepEqual(card('obstacle').labels, [...OBSTACLE_LABELS]);
});

test('vibration-anomaly reaches its card accuracy and AUC on fresh held-out windows', async () => {
  const f = card('vibration-anomaly');
  const set = vibrationSet(TEST_SEED, 1500);
  const scores = await withSession(f, async (s) => {
    const out: number[] = [];
    for (const x of set.x) out.push((await runOnce(s, { spectrum: { data: x, dims: [1, VIBRATION_BINS] } })).score[0]);
    return out;
  });
  assert.ok(scores.every((v) => v >= 0 && v <= 1), 'scores must be probabilities');
  const acc = accuracy(scores.map((v) => (v >= 0.5 ? 1 : 0)), set.y);
  const auc = rocAuc(scores, set.y);
  assert.ok(acc >= f.metrics.accuracy - ACCURACY_TOLERANCE, `accuracy ${acc} < card ${f.metrics.accuracy} - ${ACCURACY_TOLERANCE}`);
  assert.ok(auc >= f.metrics.auc - AUC_TOLERANCE, `AUC ${auc} < card ${f.metrics.auc} - ${AUC_TOLERANCE}`);
});

test('obstacle reaches its card accuracy on fresh held-out scans, and rarely calls blocked clear', async () => {
  const f = card('obstacle');
  const set = obstacleSet(TEST_SEED, 1500);
  const preds = await withSession(f, async (s) => {
    const out: number[] = [];
    for (const x of set.x) {
      const p = (await runOnce(s, { scan: { data: x, dims: [1, BEAMS] } })).probs;
      assert.ok(Math.abs(p[0] + p[1] + p[2] - 1) < 1e-5, 'probs must sum to 1');
      out.push(argmax(p));
    }
    return out;
  });
  const acc = accuracy(preds, set.y);
  assert.ok(acc >= f.metrics.accuracy - ACCURACY_TOLERANCE, `accuracy ${acc} < card ${f.metrics.accuracy} - ${ACCURACY_TOLERANCE}`);
  const blocked = set.y.map((y, i) => (y === 2 ? i : -1)).filter((i) => i >= 0);
  const asClear = blocked.filter((i) => preds[i] === 0).length / blocked.length;
  assert.ok(asClear <= f.metrics.blockedAsClear + 0.03, `blocked called clear ${asClear} > card ${f.metrics.blockedAsClear} + 0.03`);
});

test('motor-stall reaches its card accuracy with state, and the state matters', async () => {
  const f = card('motor-stall');
  const set = motorSet(TEST_SEED, 50, RUN_STEPS);
  const { carried, reset, maxDiff } = await withSession(f, async (s) => {
    const carried: number[] = [];
    const reset: number[] = [];
    let maxDiff = 0;
    const zeros = new Float32Array(STATE_SIZE);
    for (const run of set.x) {
      let h: Float32Array = zeros;
      for (const x of run) {
        const a = await runOnce(s, { x: { data: x, dims: [1, MOTOR_FEATURES] }, h_in: { data: h, dims: [1, STATE_SIZE] } });
        const b = await runOnce(s, { x: { data: x, dims: [1, MOTOR_FEATURES] }, h_in: { data: zeros, dims: [1, STATE_SIZE] } });
        h = a.h_out;
        assert.equal(h.length, STATE_SIZE);
        carried.push(a.stall[0]);
        reset.push(b.stall[0]);
        maxDiff = Math.max(maxDiff, Math.abs(a.stall[0] - b.stall[0]));
      }
    }
    return { carried, reset, maxDiff };
  });
  const labels = set.y.flat();
  const acc = accuracy(carried.map((v) => (v >= 0.5 ? 1 : 0)), labels);
  const auc = rocAuc(carried, labels);
  const accReset = accuracy(reset.map((v) => (v >= 0.5 ? 1 : 0)), labels);
  assert.ok(acc >= f.metrics.accuracy - ACCURACY_TOLERANCE, `accuracy ${acc} < card ${f.metrics.accuracy} - ${ACCURACY_TOLERANCE}`);
  assert.ok(auc >= f.metrics.auc - AUC_TOLERANCE, `AUC ${auc} < card ${f.metrics.auc} - ${AUC_TOLERANCE}`);
  // Feeding h_out back must change the outputs, and for the better.
  assert.ok(maxDiff > 0.2, `outputs with and without state differ by at most ${maxDiff}`);
  assert.ok(acc > accReset + 0.02, `accuracy with state ${acc} is not clearly above accuracy with the state reset every step ${accReset}`);
});

test('motor-stall: identical inputs give different outputs for different states', async () => {
  const f = card('motor-stall');
  const set = motorSet(TEST_SEED + 1, 1, RUN_STEPS);
  const run = set.x[0];
  // Warm the state up on the first 20 s, then compare one step from that state and from zeros.
  await withSession(f, async (s) => {
    let h: Float32Array = new Float32Array(STATE_SIZE);
    for (let t = 0; t < 200; t++) h = (await runOnce(s, { x: { data: run[t], dims: [1, MOTOR_FEATURES] }, h_in: { data: h, dims: [1, STATE_SIZE] } })).h_out;
    assert.ok(h.some((v) => Math.abs(v) > 0.05), 'the state stays near zero');
    const x = { data: run[200], dims: [1, MOTOR_FEATURES] };
    const warm = await runOnce(s, { x, h_in: { data: h, dims: [1, STATE_SIZE] } });
    const cold = await runOnce(s, { x, h_in: { data: new Float32Array(STATE_SIZE), dims: [1, STATE_SIZE] } });
    const d = warm.h_out.reduce((m, v, i) => Math.max(m, Math.abs(v - cold.h_out[i])), 0);
    assert.ok(d > 0.01, `h_out barely depends on h_in (max diff ${d})`);
  });
});
