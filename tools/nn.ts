/**
 * A tiny training library for the small models keel ships: a seeded PRNG, dense layers,
 * multilayer perceptrons, an Elman recurrent cell trained by backpropagation through time,
 * the Adam optimizer, losses and held-out metrics.
 *
 * Everything is plain Float64Array arithmetic in a fixed order, so a training run with the
 * same seed reproduces the same weights bit for bit on any machine running the same Node
 * major (V8's Math.exp/tanh/log/cos are fdlibm ports, identical across platforms).
 * Weights are rounded to float32 (`roundToFloat32`) before evaluation and export, so the
 * metrics in a model card are those of the exported file.
 */

// ---------------------------------------------------------------- randomness

/**
 * Seeded PRNG: sfc32 (Chris Doty-Humphrey's Small Fast Counting generator, 32-bit variant),
 * seeded through splitmix32 so that nearby seeds give unrelated streams.
 */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  private spare: number | undefined;

  /** `seed` is any integer (taken modulo 2^32). */
  constructor(seed: number) {
    if (!Number.isInteger(seed)) throw new TypeError(`Rng: seed must be an integer, got ${seed}`);
    let s = seed >>> 0;
    const split = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = split();
    this.b = split();
    this.c = split();
    this.d = 1;
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  /** Next 32-bit unsigned integer. */
  nextUint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Log-uniform in [lo, hi): equal odds for each decade (amplitudes, noise levels). */
  logUniform(lo: number, hi: number): number {
    return lo * Math.exp(Math.log(hi / lo) * this.next());
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** Gaussian (Box–Muller, the second value kept for the next call). */
  normal(mean = 0, std = 1): number {
    if (this.spare !== undefined) {
      const v = this.spare;
      this.spare = undefined;
      return mean + std * v;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return mean + std * r * Math.cos(2 * Math.PI * v);
  }

  /** Fisher–Yates shuffle, in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = items[i];
      items[i] = items[j];
      items[j] = t;
    }
    return items;
  }
}

// ---------------------------------------------------------------- parameters and layers

/** A trainable tensor: values, accumulated gradient, and its shape for export. */
export interface Param {
  name: string;
  shape: number[];
  value: Float64Array;
  grad: Float64Array;
}

function param(name: string, shape: number[]): Param {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name, shape, value: new Float64Array(n), grad: new Float64Array(n) };
}

/** Element-wise nonlinearity after a dense layer. */
export type Activation = 'relu' | 'tanh' | 'none';

/** A fully connected layer y = W x + b, W stored row-major [out, in] (ONNX Gemm with transB=1). */
export class Dense {
  readonly w: Param;
  readonly b: Param;
  constructor(
    readonly inDim: number,
    readonly outDim: number,
    name: string,
  ) {
    if (!Number.isInteger(inDim) || inDim < 1) throw new RangeError(`Dense: inDim must be a positive integer, got ${inDim}`);
    if (!Number.isInteger(outDim) || outDim < 1) throw new RangeError(`Dense: outDim must be a positive integer, got ${outDim}`);
    this.w = param(`${name}.weight`, [outDim, inDim]);
    this.b = param(`${name}.bias`, [outDim]);
  }

  /**
   * Glorot-uniform weights scaled by `gain` (use sqrt(2) before a ReLU), zero biases.
   * Drawn in index order from `rng`, so initialization is reproducible.
   */
  init(rng: Rng, gain = 1): this {
    const limit = gain * Math.sqrt(6 / (this.inDim + this.outDim));
    const w = this.w.value;
    for (let i = 0; i < w.length; i++) w[i] = rng.uniform(-limit, limit);
    this.b.value.fill(0);
    return this;
  }

  /** y = W x + b into `out` (length outDim). */
  forward(x: ArrayLike<number>, out: Float64Array): Float64Array {
    const { inDim, outDim } = this;
    const w = this.w.value;
    const b = this.b.value;
    for (let o = 0; o < outDim; o++) {
      let s = b[o];
      const row = o * inDim;
      for (let i = 0; i < inDim; i++) s += w[row + i] * x[i];
      out[o] = s;
    }
    return out;
  }

  /** Accumulates dL/dW, dL/db for input `x` and upstream `dy`; writes dL/dx into `dx` if given. */
  backward(x: ArrayLike<number>, dy: ArrayLike<number>, dx?: Float64Array): void {
    const { inDim, outDim } = this;
    const w = this.w.value;
    const gw = this.w.grad;
    const gb = this.b.grad;
    if (dx) dx.fill(0);
    for (let o = 0; o < outDim; o++) {
      const g = dy[o];
      if (g === 0) continue;
      gb[o] += g;
      const row = o * inDim;
      for (let i = 0; i < inDim; i++) gw[row + i] += g * x[i];
      if (dx) for (let i = 0; i < inDim; i++) dx[i] += g * w[row + i];
    }
  }

  /** The layer's parameters. */
  params(): Param[] {
    return [this.w, this.b];
  }
}

function activate(kind: Activation, z: Float64Array): void {
  if (kind === 'relu') for (let i = 0; i < z.length; i++) z[i] = z[i] > 0 ? z[i] : 0;
  else if (kind === 'tanh') for (let i = 0; i < z.length; i++) z[i] = Math.tanh(z[i]);
}

/** dL/dz from dL/da given the activation output a, in place on `d`. */
function activateBackward(kind: Activation, a: Float64Array, d: Float64Array): void {
  if (kind === 'relu') for (let i = 0; i < d.length; i++) d[i] = a[i] > 0 ? d[i] : 0;
  else if (kind === 'tanh') for (let i = 0; i < d.length; i++) d[i] *= 1 - a[i] * a[i];
}

/** Activations of one forward pass, kept for the backward pass. */
export interface MlpTrace {
  /** acts[0] is the input; acts[k] the output of layer k-1 after its activation. */
  acts: Float64Array[];
}

/** A multilayer perceptron: dense layers with an activation after each (the last usually 'none'). */
export class Mlp {
  readonly layers: Dense[];
  constructor(
    sizes: number[],
    readonly activations: Activation[],
    name = 'mlp',
  ) {
    if (sizes.length < 2) throw new RangeError('Mlp: sizes needs at least an input and an output size');
    if (activations.length !== sizes.length - 1) throw new RangeError(`Mlp: expected ${sizes.length - 1} activations, got ${activations.length}`);
    this.layers = [];
    for (let k = 0; k + 1 < sizes.length; k++) this.layers.push(new Dense(sizes[k], sizes[k + 1], `${name}.${k}`));
  }

  /** Input width. */
  get inDim(): number {
    return this.layers[0].inDim;
  }

  /** Output width. */
  get outDim(): number {
    return this.layers[this.layers.length - 1].outDim;
  }

  /** Initializes every layer (ReLU layers with gain sqrt(2)). */
  init(rng: Rng): this {
    this.layers.forEach((l, k) => l.init(rng, this.activations[k] === 'relu' ? Math.SQRT2 : 1));
    return this;
  }

  /** Forward pass keeping every activation. */
  trace(x: ArrayLike<number>): MlpTrace {
    if (x.length !== this.inDim) throw new RangeError(`Mlp: input has ${x.length} values, expected ${this.inDim}`);
    const acts: Float64Array[] = [Float64Array.from(x)];
    this.layers.forEach((l, k) => {
      const z = l.forward(acts[k], new Float64Array(l.outDim));
      activate(this.activations[k], z);
      acts.push(z);
    });
    return { acts };
  }

  /** Forward pass; returns the last layer's output (logits when the last activation is 'none'). */
  forward(x: ArrayLike<number>): Float64Array {
    const t = this.trace(x);
    return t.acts[t.acts.length - 1];
  }

  /** Accumulates gradients for dL/d(output) = `dOut`; returns dL/d(input). */
  backward(t: MlpTrace, dOut: ArrayLike<number>): Float64Array {
    let d = Float64Array.from(dOut);
    for (let k = this.layers.length - 1; k >= 0; k--) {
      activateBackward(this.activations[k], t.acts[k + 1], d);
      const dx = new Float64Array(this.layers[k].inDim);
      this.layers[k].backward(t.acts[k], d, dx);
      d = dx;
    }
    return d;
  }

  /** All parameters, layer by layer. */
  params(): Param[] {
    return this.layers.flatMap((l) => l.params());
  }
}

/**
 * An Elman recurrent cell with a dense head:
 *   h_t = tanh(W [x_t ; h_{t-1}] + b),  y_t = head(h_t).
 * The input and recurrent weights form one matrix so that the ONNX graph is
 * Concat -> Gemm -> Tanh, the same arithmetic as here.
 */
export class ElmanRnn {
  readonly cell: Dense;
  readonly head: Mlp;
  constructor(
    readonly inDim: number,
    readonly hidden: number,
    headSizes: number[],
    headActivations: Activation[],
    name = 'rnn',
  ) {
    this.cell = new Dense(inDim + hidden, hidden, `${name}.cell`);
    this.head = new Mlp([hidden, ...headSizes], headActivations, `${name}.head`);
  }

  /** Glorot init; the recurrent block is scaled down so that early training is stable. */
  init(rng: Rng): this {
    this.cell.init(rng, 1);
    const w = this.cell.w.value;
    const cols = this.inDim + this.hidden;
    for (let o = 0; o < this.hidden; o++) for (let j = this.inDim; j < cols; j++) w[o * cols + j] *= 0.5;
    this.head.init(rng);
    return this;
  }

  /** The cell alone: u = [x; h] and the new state. */
  cellStep(x: ArrayLike<number>, h: ArrayLike<number>): { h: Float64Array; u: Float64Array } {
    if (x.length !== this.inDim) throw new RangeError(`ElmanRnn: input has ${x.length} values, expected ${this.inDim}`);
    if (h.length !== this.hidden) throw new RangeError(`ElmanRnn: state has ${h.length} values, expected ${this.hidden}`);
    const u = new Float64Array(this.inDim + this.hidden);
    u.set(x, 0);
    u.set(h, this.inDim);
    const hn = this.cell.forward(u, new Float64Array(this.hidden));
    activate('tanh', hn);
    return { h: hn, u };
  }

  /** One step: returns the new state and the head's output. */
  step(x: ArrayLike<number>, h: ArrayLike<number>): { h: Float64Array; y: Float64Array } {
    const s = this.cellStep(x, h);
    return { h: s.h, y: this.head.forward(s.h) };
  }

  /**
   * Forward over `xs` from state `h0`, then backpropagation through time. `dLoss(t, y)`
   * returns dL/dy_t (and adds to the caller's loss). Gradients accumulate; returns the
   * final state so that truncated BPTT can carry it into the next chunk.
   */
  bptt(xs: ArrayLike<number>[], h0: ArrayLike<number>, dLoss: (t: number, y: Float64Array) => ArrayLike<number>): Float64Array {
    const T = xs.length;
    const us: Float64Array[] = [];
    const hs: Float64Array[] = [];
    const traces: MlpTrace[] = [];
    let h: ArrayLike<number> = h0;
    for (let t = 0; t < T; t++) {
      const s = this.cellStep(xs[t], h);
      us.push(s.u);
      hs.push(s.h);
      traces.push(this.head.trace(s.h));
      h = s.h;
    }
    let dhNext = new Float64Array(this.hidden);
    const du = new Float64Array(this.inDim + this.hidden);
    for (let t = T - 1; t >= 0; t--) {
      const tr = traces[t];
      const dy = dLoss(t, tr.acts[tr.acts.length - 1]);
      const dh = this.head.backward(tr, dy);
      for (let i = 0; i < this.hidden; i++) dh[i] += dhNext[i];
      activateBackward('tanh', hs[t], dh);
      this.cell.backward(us[t], dh, du);
      dhNext = du.slice(this.inDim);
    }
    return Float64Array.from(h);
  }

  /** All parameters. */
  params(): Param[] {
    return [...this.cell.params(), ...this.head.params()];
  }
}

// ---------------------------------------------------------------- losses

/** Logistic function, stable for large |z|. */
export function sigmoid(z: number): number {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

/** Binary cross-entropy on a logit: loss and dL/dlogit (= p - y). */
export function sigmoidBce(logit: number, y: number, weight = 1): { loss: number; d: number } {
  // log(1 + e^z) - y z, computed without overflow.
  const loss = (Math.max(logit, 0) - logit * y + Math.log1p(Math.exp(-Math.abs(logit)))) * weight;
  return { loss, d: (sigmoid(logit) - y) * weight };
}

/** Softmax of logits (max-subtracted, as ONNX Softmax does). */
export function softmax(z: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < z.length; i++) m = Math.max(m, z[i]);
  const out = new Float64Array(z.length);
  let s = 0;
  for (let i = 0; i < z.length; i++) s += out[i] = Math.exp(z[i] - m);
  for (let i = 0; i < z.length; i++) out[i] /= s;
  return out;
}

/** Cross-entropy of softmax(logits) against class `label`: loss and dL/dlogits (= p - onehot). */
export function softmaxCe(logits: ArrayLike<number>, label: number): { loss: number; d: Float64Array } {
  const p = softmax(logits);
  const loss = -Math.log(Math.max(p[label], 1e-300));
  p[label] -= 1;
  return { loss, d: p };
}

// ---------------------------------------------------------------- optimizer

/** Adam (Kingma & Ba, 2015) with optional decoupled weight decay (AdamW). */
export class Adam {
  private readonly m: Float64Array[];
  private readonly v: Float64Array[];
  private t = 0;
  constructor(
    readonly params: Param[],
    readonly opts: { lr: number; beta1?: number; beta2?: number; eps?: number; weightDecay?: number; clip?: number } = { lr: 1e-3 },
  ) {
    if (!(opts.lr > 0)) throw new RangeError(`Adam: lr must be > 0, got ${opts.lr}`);
    this.m = params.map((p) => new Float64Array(p.value.length));
    this.v = params.map((p) => new Float64Array(p.value.length));
  }

  /** Zeroes every gradient. */
  zeroGrad(): void {
    for (const p of this.params) p.grad.fill(0);
  }

  /**
   * One update from the accumulated gradients, each multiplied by `gradScale` (1/batch size).
   * With `clip`, the whole gradient is rescaled to at most that global L2 norm first.
   * `lr` overrides the configured learning rate (schedules).
   */
  step(gradScale = 1, lr = this.opts.lr): void {
    const b1 = this.opts.beta1 ?? 0.9;
    const b2 = this.opts.beta2 ?? 0.999;
    const eps = this.opts.eps ?? 1e-8;
    const wd = this.opts.weightDecay ?? 0;
    let scale = gradScale;
    if (this.opts.clip !== undefined) {
      let sq = 0;
      for (const p of this.params) for (let i = 0; i < p.grad.length; i++) sq += (p.grad[i] * gradScale) ** 2;
      const norm = Math.sqrt(sq);
      if (norm > this.opts.clip) scale *= this.opts.clip / norm;
    }
    this.t++;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    this.params.forEach((p, k) => {
      const m = this.m[k];
      const v = this.v[k];
      const decay = p.name.endsWith('.weight') ? wd : 0;
      for (let i = 0; i < p.value.length; i++) {
        const g = p.grad[i] * scale;
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        p.value[i] -= lr * ((m[i] / c1) / (Math.sqrt(v[i] / c2) + eps) + decay * p.value[i]);
      }
    });
  }
}

/** Copies parameter values (for keeping the best epoch). */
export function snapshot(params: Param[]): Float64Array[] {
  return params.map((p) => p.value.slice());
}

/** Restores values saved by `snapshot`. */
export function restore(params: Param[], saved: Float64Array[]): void {
  params.forEach((p, k) => p.value.set(saved[k]));
}

/** Rounds every value to the nearest float32, in place: what the exported model holds. */
export function roundToFloat32(params: Param[]): void {
  for (const p of params) for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]);
}

/** Number of trainable scalars. */
export function countParams(params: Param[]): number {
  return params.reduce((a, p) => a + p.value.length, 0);
}

// ---------------------------------------------------------------- training loop for MLPs

/** A labelled example: features, and a class index (or 0/1 for a single-logit model). */
export interface Example {
  x: Float64Array;
  y: number;
}

/** Options of `fitMlp`. */
export interface FitOptions {
  loss: 'sigmoid' | 'softmax';
  epochs: number;
  batch: number;
  lr: number;
  weightDecay?: number;
  rng: Rng;
  /** Called once per epoch with the mean training loss and the validation loss. */
  log?: (epoch: number, trainLoss: number, valLoss: number) => void;
}

/** Mean loss of `mlp` over `data`. */
export function meanLoss(mlp: Mlp, data: Example[], loss: FitOptions['loss']): number {
  let s = 0;
  for (const e of data) {
    const out = mlp.forward(e.x);
    s += loss === 'sigmoid' ? sigmoidBce(out[0], e.y).loss : softmaxCe(out, e.y).loss;
  }
  return s / Math.max(1, data.length);
}

/**
 * Minibatch Adam with a cosine learning-rate decay; keeps the weights of the epoch with the
 * lowest validation loss. Deterministic for a given `rng` state.
 */
export function fitMlp(mlp: Mlp, train: Example[], val: Example[], o: FitOptions): { bestEpoch: number; valLoss: number } {
  const params = mlp.params();
  const opt = new Adam(params, { lr: o.lr, weightDecay: o.weightDecay ?? 0 });
  const order = train.map((_, i) => i);
  let best = { epoch: -1, loss: Infinity, weights: snapshot(params) };
  for (let epoch = 0; epoch < o.epochs; epoch++) {
    o.rng.shuffle(order);
    const lr = o.lr * 0.5 * (1 + Math.cos((Math.PI * epoch) / o.epochs));
    let total = 0;
    for (let start = 0; start < order.length; start += o.batch) {
      const end = Math.min(order.length, start + o.batch);
      opt.zeroGrad();
      for (let k = start; k < end; k++) {
        const e = train[order[k]];
        const t = mlp.trace(e.x);
        const out = t.acts[t.acts.length - 1];
        if (o.loss === 'sigmoid') {
          const l = sigmoidBce(out[0], e.y);
          total += l.loss;
          mlp.backward(t, [l.d]);
        } else {
          const l = softmaxCe(out, e.y);
          total += l.loss;
          mlp.backward(t, l.d);
        }
      }
      opt.step(1 / (end - start), lr);
    }
    const valLoss = meanLoss(mlp, val, o.loss);
    o.log?.(epoch, total / order.length, valLoss);
    if (valLoss < best.loss) best = { epoch, loss: valLoss, weights: snapshot(params) };
  }
  restore(params, best.weights);
  return { bestEpoch: best.epoch, valLoss: best.loss };
}

// ---------------------------------------------------------------- metrics

/** Fraction of predictions equal to labels. */
export function accuracy(pred: ArrayLike<number>, labels: ArrayLike<number>): number {
  let ok = 0;
  for (let i = 0; i < labels.length; i++) if (pred[i] === labels[i]) ok++;
  return ok / Math.max(1, labels.length);
}

/** Area under the ROC curve (Mann–Whitney statistic, ties counted half). */
export function rocAuc(scores: ArrayLike<number>, labels: ArrayLike<number>): number {
  const idx = Array.from({ length: labels.length }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  let pos = 0;
  let neg = 0;
  let rankSum = 0;
  for (let i = 0; i < idx.length; ) {
    let j = i;
    while (j + 1 < idx.length && scores[idx[j + 1]] === scores[idx[i]]) j++;
    const avgRank = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) {
      if (labels[idx[k]] === 1) {
        pos++;
        rankSum += avgRank;
      } else neg++;
    }
    i = j + 1;
  }
  if (pos === 0 || neg === 0) return NaN;
  return (rankSum - (pos * (pos + 1)) / 2) / (pos * neg);
}

/** Confusion matrix: m[true][predicted] counts. */
export function confusion(pred: ArrayLike<number>, labels: ArrayLike<number>, classes: number): number[][] {
  const m = Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
  for (let i = 0; i < labels.length; i++) m[labels[i]][pred[i]]++;
  return m;
}

/** Index of the largest value (first on ties). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}
