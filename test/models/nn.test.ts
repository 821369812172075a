/**
 * The training library: gradients against central finite differences, the PRNG, the
 * optimizer, determinism of training, and the metrics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Adam,
  ElmanRnn,
  Mlp,
  Rng,
  accuracy,
  argmax,
  confusion,
  fitMlp,
  rocAuc,
  sigmoidBce,
  softmax,
  softmaxCe,
  type Example,
  type Param,
} from '../../tools/nn.ts';

/** Compares analytic gradients (already accumulated in params) with central differences of `loss`. */
function checkGradients(params: Param[], loss: () => number, tol = 1e-6): number {
  const eps = 1e-6;
  let worst = 0;
  for (const p of params) {
    for (let i = 0; i < p.value.length; i++) {
      const keep = p.value[i];
      p.value[i] = keep + eps;
      const up = loss();
      p.value[i] = keep - eps;
      const down = loss();
      p.value[i] = keep;
      const numeric = (up - down) / (2 * eps);
      const analytic = p.grad[i];
      const err = Math.abs(numeric - analytic) / Math.max(1e-3, Math.abs(numeric) + Math.abs(analytic));
      assert.ok(err < tol, `${p.name}[${i}]: analytic ${analytic}, numeric ${numeric} (relative error ${err})`);
      worst = Math.max(worst, err);
    }
  }
  return worst;
}

function randomVector(rng: Rng, n: number): Float64Array {
  return Float64Array.from({ length: n }, () => rng.normal());
}

test('MLP (tanh) with softmax cross-entropy: backward matches finite differences', () => {
  const rng = new Rng(1);
  const mlp = new Mlp([4, 5, 3], ['tanh', 'none']).init(rng);
  const data = Array.from({ length: 3 }, (_, k) => ({ x: randomVector(rng, 4), y: k % 3 }));
  const loss = () => data.reduce((s, e) => s + softmaxCe(mlp.forward(e.x), e.y).loss, 0);
  for (const p of mlp.params()) p.grad.fill(0);
  for (const e of data) {
    const t = mlp.trace(e.x);
    mlp.backward(t, softmaxCe(t.acts[2], e.y).d);
  }
  checkGradients(mlp.params(), loss);
});

test('MLP (ReLU, two hidden layers) with sigmoid BCE: backward matches finite differences', () => {
  const rng = new Rng(2);
  const mlp = new Mlp([6, 8, 5, 1], ['relu', 'relu', 'none']).init(rng);
  const data = Array.from({ length: 4 }, (_, k) => ({ x: randomVector(rng, 6), y: k % 2 }));
  const loss = () => data.reduce((s, e) => s + sigmoidBce(mlp.forward(e.x)[0], e.y).loss, 0);
  for (const p of mlp.params()) p.grad.fill(0);
  for (const e of data) {
    const t = mlp.trace(e.x);
    mlp.backward(t, [sigmoidBce(t.acts[3][0], e.y).d]);
  }
  checkGradients(mlp.params(), loss);
});

test('MLP backward returns dL/dinput', () => {
  const rng = new Rng(3);
  const mlp = new Mlp([3, 4, 2], ['tanh', 'none']).init(rng);
  const x = randomVector(rng, 3);
  const dx = mlp.backward(mlp.trace(x), softmaxCe(mlp.forward(x), 1).d);
  for (let i = 0; i < 3; i++) {
    const up = Float64Array.from(x);
    up[i] += 1e-6;
    const down = Float64Array.from(x);
    down[i] -= 1e-6;
    const numeric = (softmaxCe(mlp.forward(up), 1).loss - softmaxCe(mlp.forward(down), 1).loss) / 2e-6;
    assert.ok(Math.abs(numeric - dx[i]) < 1e-6, `dx[${i}]: ${dx[i]} vs ${numeric}`);
  }
});

test('Elman RNN: backpropagation through time matches finite differences over a sequence', () => {
  const rng = new Rng(4);
  const rnn = new ElmanRnn(3, 4, [2, 1], ['tanh', 'none']).init(rng);
  const xs = Array.from({ length: 7 }, () => randomVector(rng, 3));
  const ys = [0, 1, 1, 0, 1, 0, 1];
  const h0 = Float64Array.from({ length: 4 }, () => rng.uniform(-0.5, 0.5));
  const loss = () => {
    let h: ArrayLike<number> = h0;
    let s = 0;
    xs.forEach((x, t) => {
      const r = rnn.step(x, h);
      h = r.h;
      s += sigmoidBce(r.y[0], ys[t]).loss;
    });
    return s;
  };
  for (const p of rnn.params()) p.grad.fill(0);
  const hEnd = rnn.bptt(xs, h0, (t, y) => [sigmoidBce(y[0], ys[t]).d]);
  checkGradients(rnn.params(), loss);
  // The returned state is the state after the last step, for truncated BPTT.
  let h: ArrayLike<number> = h0;
  for (const x of xs) h = rnn.step(x, h).h;
  assert.deepEqual(Array.from(hEnd), Array.from(h));
});

test('Rng: same seed same stream, other seeds differ, ranges hold', () => {
  const a = new Rng(42);
  const b = new Rng(42);
  const c = new Rng(43);
  const sa = Array.from({ length: 100 }, () => a.next());
  const sb = Array.from({ length: 100 }, () => b.next());
  const sc = Array.from({ length: 100 }, () => c.next());
  assert.deepEqual(sa, sb);
  assert.notDeepEqual(sa, sc);
  assert.ok(sa.every((v) => v >= 0 && v < 1));
  const r = new Rng(7);
  const normals = Array.from({ length: 20000 }, () => r.normal(2, 3));
  const mean = normals.reduce((s, v) => s + v, 0) / normals.length;
  const sd = Math.sqrt(normals.reduce((s, v) => s + (v - mean) ** 2, 0) / normals.length);
  assert.ok(Math.abs(mean - 2) < 0.1, `mean ${mean}`);
  assert.ok(Math.abs(sd - 3) < 0.1, `std ${sd}`);
  const ints = Array.from({ length: 1000 }, () => r.int(5));
  assert.deepEqual([...new Set(ints)].sort(), [0, 1, 2, 3, 4]);
  assert.throws(() => new Rng(1.5), TypeError);
});

test('Adam minimizes a quadratic', () => {
  const p: Param = { name: 'w.weight', shape: [2], value: Float64Array.from([3, -2]), grad: new Float64Array(2) };
  const opt = new Adam([p], { lr: 0.1 });
  for (let i = 0; i < 500; i++) {
    opt.zeroGrad();
    p.grad[0] = 2 * (p.value[0] - 1);
    p.grad[1] = 2 * (p.value[1] + 0.5);
    opt.step();
  }
  assert.ok(Math.abs(p.value[0] - 1) < 1e-3 && Math.abs(p.value[1] + 0.5) < 1e-3, `ended at ${p.value}`);
  assert.throws(() => new Adam([p], { lr: 0 }), RangeError);
});

function xorData(seed: number, n: number): Example[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const a = rng.uniform(-1, 1);
    const b = rng.uniform(-1, 1);
    return { x: Float64Array.from([a, b]), y: a * b > 0 ? 1 : 0 };
  });
}

test('fitMlp learns XOR and is deterministic bit for bit', () => {
  const run = () => {
    const rng = new Rng(9);
    const mlp = new Mlp([2, 12, 1], ['tanh', 'none']).init(rng);
    fitMlp(mlp, xorData(1, 400), xorData(2, 100), { loss: 'sigmoid', epochs: 40, batch: 16, lr: 0.02, rng });
    return mlp;
  };
  const a = run();
  const b = run();
  a.params().forEach((p, k) => assert.deepEqual(Array.from(p.value), Array.from(b.params()[k].value)));
  const test = xorData(3, 300);
  const pred = test.map((e) => (a.forward(e.x)[0] > 0 ? 1 : 0));
  const acc = accuracy(pred, test.map((e) => e.y));
  assert.ok(acc > 0.9, `XOR accuracy ${acc}`);
});

test('metrics: AUC, confusion, argmax, softmax', () => {
  assert.equal(rocAuc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 0.75);
  assert.equal(rocAuc([0.5, 0.5], [0, 1]), 0.5);
  assert.equal(rocAuc([1, 2, 3], [1, 1, 1]), NaN);
  assert.deepEqual(confusion([0, 1, 2, 2], [0, 2, 2, 1], 3), [
    [1, 0, 0],
    [0, 0, 1],
    [0, 1, 1],
  ]);
  assert.equal(argmax([0.1, 0.7, 0.7]), 1);
  const p = softmax([1000, 1000, 999]);
  assert.ok(Math.abs(p[0] + p[1] + p[2] - 1) < 1e-12);
  assert.ok(Math.abs(p[0] - p[1]) < 1e-15);
  assert.ok(Number.isFinite(sigmoidBce(-800, 1).loss) && Number.isFinite(sigmoidBce(800, 0).loss));
  assert.throws(() => new Mlp([3], []), RangeError);
  assert.throws(() => new Mlp([3, 2], ['relu', 'relu']), RangeError);
  assert.throws(() => new Mlp([3, 2], ['none']).forward([1, 2]), RangeError);
});
