/**
 * The ONNX writer: models it writes load in onnxruntime-node and compute what the training
 * code computes; the protobuf fields are what the ONNX spec asks; bad graphs are refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import onnxPkg from 'onnx-proto';
import { GraphBuilder, IR_VERSION, OPSET, addElmanStep, addMlp } from '../../tools/onnx-export.ts';
import { openSession, runOnce, verifyWithOrt } from '../../tools/ort-verify.ts';
import { ElmanRnn, Mlp, Rng, sigmoid, softmax } from '../../tools/nn.ts';

const { onnx } = onnxPkg;

function addModel(): Uint8Array {
  const g = new GraphBuilder('add');
  g.input({ name: 'a', shape: [1, 3] });
  const c = g.initializer('c', [1, 3], [1, 2, 3.5]);
  g.node('Add', ['a', c], ['y']);
  g.output({ name: 'y', shape: [1, 3] });
  return g.encode({ metadata: { purpose: 'test' } });
}

test('a one-node Add model round-trips through onnxruntime-node', async () => {
  const bytes = addModel();
  const s = await openSession(bytes);
  try {
    const inMeta = s.inputMetadata[0];
    const outMeta = s.outputMetadata[0];
    assert.equal(inMeta.name, 'a');
    assert.ok(inMeta.isTensor && outMeta.isTensor);
    if (inMeta.isTensor && outMeta.isTensor) {
      assert.equal(inMeta.type, 'float32');
      assert.deepEqual(inMeta.shape, [1, 3]);
      assert.deepEqual(outMeta.shape, [1, 3]);
    }
    const out = await runOnce(s, { a: { data: [0.5, -1, 10], dims: [1, 3] } });
    assert.deepEqual(Array.from(out.y), [1.5, 1, 13.5]);
  } finally {
    await s.release();
  }
});

test('the protobuf carries IR 8, opset 13, raw little-endian float data and metadata', () => {
  const m = onnx.ModelProto.decode(addModel());
  assert.equal(Number(m.irVersion), IR_VERSION);
  const opsets = m.opsetImport ?? [];
  assert.equal(opsets.length, 1);
  assert.equal(opsets[0].domain, '');
  assert.equal(Number(opsets[0].version), OPSET);
  const init = m.graph!.initializer![0];
  assert.equal(init.dataType, onnx.TensorProto.DataType.FLOAT);
  assert.deepEqual((init.dims ?? []).map(Number), [1, 3]);
  const raw = Buffer.from(init.rawData!);
  assert.deepEqual([raw.readFloatLE(0), raw.readFloatLE(4), raw.readFloatLE(8)], [1, 2, 3.5]);
  assert.deepEqual((m.metadataProps ?? []).map((p) => [p.key, p.value]), [['purpose', 'test']]);
  assert.equal(m.graph!.node![0].opType, 'Add');
});

test('encoding is deterministic', () => {
  assert.deepEqual(addModel(), addModel());
});

test('an exported MLP (Gemm + Relu/Tanh + Softmax) matches the TypeScript forward pass', async () => {
  const rng = new Rng(5);
  const mlp = new Mlp([6, 7, 5, 3], ['relu', 'tanh', 'none']).init(rng);
  for (const p of mlp.params()) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i] + (p.name.endsWith('bias') ? rng.normal(0, 0.1) : 0));
  const g = new GraphBuilder('mlp');
  g.input({ name: 'x', shape: [1, 6] });
  const logits = addMlp(g, mlp, 'x', 'mlp');
  g.node('Softmax', [logits], ['p'], { axis: { i: 1 } });
  g.output({ name: 'p', shape: [1, 3] });
  const cases = Array.from({ length: 20 }, () => {
    const x = Float32Array.from({ length: 6 }, () => rng.normal());
    return { feeds: { x: { data: x, dims: [1, 6] } }, expected: { p: softmax(mlp.forward(x)) } };
  });
  const worst = await verifyWithOrt(g.encode(), cases, 1e-6);
  assert.ok(worst < 1e-6);
});

test('an exported Elman step matches the TypeScript cell, and state outputs feed back', async () => {
  const rng = new Rng(6);
  const rnn = new ElmanRnn(3, 4, [1], ['none']).init(rng);
  for (const p of rnn.params()) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]);
  const g = new GraphBuilder('rnn');
  g.input({ name: 'x', shape: [1, 3] });
  g.input({ name: 'h_in', shape: [1, 4] });
  const h = addElmanStep(g, rnn, 'x', 'h_in', 'h_out', 'rnn');
  const logit = addMlp(g, rnn.head, h, 'head');
  g.node('Sigmoid', [logit], ['p']);
  g.output({ name: 'p', shape: [1, 1] });
  g.output({ name: 'h_out', shape: [1, 4] });
  const s = await openSession(g.encode());
  try {
    let hTs: ArrayLike<number> = new Float64Array(4);
    let hOrt: ArrayLike<number> = new Float32Array(4);
    for (let t = 0; t < 10; t++) {
      const x = Float32Array.from({ length: 3 }, () => rng.normal());
      const ts = rnn.step(x, hTs);
      const out = await runOnce(s, { x: { data: x, dims: [1, 3] }, h_in: { data: hOrt, dims: [1, 4] } });
      assert.ok(Math.abs(out.p[0] - sigmoid(ts.y[0])) < 1e-6, `step ${t}: p ${out.p[0]} vs ${sigmoid(ts.y[0])}`);
      for (let i = 0; i < 4; i++) assert.ok(Math.abs(out.h_out[i] - ts.h[i]) < 1e-6);
      hTs = ts.h;
      hOrt = out.h_out;
    }
  } finally {
    await s.release();
  }
});

test('symbolic dimensions are written as dim_param and accepted by ORT', async () => {
  const g = new GraphBuilder('relu');
  g.input({ name: 'x', shape: ['batch', 2] });
  g.node('Relu', ['x'], ['y']);
  g.output({ name: 'y', shape: ['batch', 2] });
  const s = await openSession(g.encode());
  try {
    const meta = s.inputMetadata[0];
    assert.ok(meta.isTensor);
    if (meta.isTensor) assert.deepEqual(meta.shape, ['batch', 2]);
    const out = await runOnce(s, { x: { data: [-1, 2, 3, -4, 5, -6], dims: [3, 2] } });
    assert.deepEqual(Array.from(out.y), [0, 2, 3, 0, 5, 0]);
  } finally {
    await s.release();
  }
});

test('int64 initializers are written for shape-like constants', async () => {
  const g = new GraphBuilder('reshape');
  g.input({ name: 'x', shape: [2, 3] });
  const shape = g.initializer('shape', [2], [3, 2], 'int64');
  g.node('Reshape', ['x', shape], ['y']);
  g.output({ name: 'y', shape: [3, 2] });
  const s = await openSession(g.encode());
  try {
    const out = await runOnce(s, { x: { data: [1, 2, 3, 4, 5, 6], dims: [2, 3] } });
    assert.deepEqual(Array.from(out.y), [1, 2, 3, 4, 5, 6]);
  } finally {
    await s.release();
  }
});

test('malformed graphs are refused with errors naming the problem', () => {
  const g = new GraphBuilder('bad');
  g.input({ name: 'x', shape: [1, 2] });
  assert.throws(() => g.node('Add', ['x', 'nope'], ['y']), /input "nope" is not defined yet/);
  assert.throws(() => g.input({ name: 'x', shape: [1, 2] }), /already defined/);
  assert.throws(() => g.input({ name: 'z', shape: [0, 2] }), RangeError);
  assert.throws(() => g.input({ name: 'z2', shape: [] }), RangeError);
  assert.throws(() => g.input({ name: 'bad name', shape: [1] }), TypeError);
  assert.throws(() => g.initializer('w', [2, 2], [1, 2, 3]), /hold 4 values, got 3/);
  assert.throws(() => g.initializer('w2', [1], [NaN]), /not finite/);
  assert.throws(() => g.initializer('w3', [1], [1.5], 'int64'), /safe integer/);
  assert.throws(() => g.node('add', ['x'], ['y']), TypeError);
  assert.throws(() => g.node('Relu', ['x'], []), RangeError);
  g.output({ name: 'never', shape: [1, 2] });
  assert.throws(() => g.encode(), /output "never" is not produced/);
  assert.throws(() => new GraphBuilder(''), TypeError);
});

test('ORT disagreement is reported by verifyWithOrt', async () => {
  await assert.rejects(
    verifyWithOrt(addModel(), [{ feeds: { a: { data: [0, 0, 0], dims: [1, 3] } }, expected: { y: [1, 2, 3.6] } }], 1e-5),
    /y\[2\] = 3.5 from ORT, 3.6 from TypeScript/,
  );
  await assert.rejects(verifyWithOrt(addModel(), [{ feeds: { a: { data: [0, 0, 0], dims: [1, 3] } }, expected: { z: [1] } }]), /no output "z"/);
});
