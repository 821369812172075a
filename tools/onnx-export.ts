/**
 * Writes ONNX models from the training scripts' layers, with the protobuf classes of the
 * `onnx-proto` package (generated from onnx.proto of ONNX 1.10).
 *
 * Models use IR version 8 and the default-domain opset 13; every tensor is float32 unless
 * stated. Initializers are stored as little-endian `raw_data` (onnx.proto: "raw_data ...
 * stored in fixed-width, little-endian order"). Encoding is deterministic: the same graph
 * gives the same bytes, so a re-run of a training script reproduces the model's SHA-256.
 */
import onnxPkg from 'onnx-proto';
import type { Dense, ElmanRnn, Mlp, Activation } from './nn.ts';

const { onnx } = onnxPkg;

/** IR version written (ONNX 1.10 = IR 8). */
export const IR_VERSION = 8;
/** Default-domain opset written. */
export const OPSET = 13;

/** Element types the writer supports (`string` for graph inputs/outputs only, not initializers). */
export type ElementType = 'float32' | 'int64' | 'string';

const ELEMENT: Record<ElementType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  string: onnx.TensorProto.DataType.STRING,
};

/** A graph input or output: name, shape (numbers, or strings for symbolic dimensions), element type. */
export interface TensorSpec {
  name: string;
  shape: (number | string)[];
  dtype?: ElementType;
}

/** A node attribute value with its ONNX type made explicit (an integer 1 and a float 1.0 differ). */
export type AttrValue = { i: number } | { f: number } | { ints: number[] } | { floats: number[] } | { s: string };

/** Model-level fields. */
export interface ModelMeta {
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  modelVersion?: number;
  /** Free-form key/value pairs stored as ModelProto.metadata_props. */
  metadata?: Record<string, string>;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_.:/-]*$/;

/**
 * Builds one ONNX graph. Checks as it goes that names are unique and well formed, that every
 * node input exists when the node is added (so nodes are in topological order, as ONNX
 * requires) and that every graph output is produced.
 */
export class GraphBuilder {
  private readonly inputs: TensorSpec[] = [];
  private readonly outputs: TensorSpec[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly defined = new Set<string>();
  private counter = 0;

  constructor(readonly name: string) {
    if (!NAME.test(name)) throw new TypeError(`GraphBuilder: name must match ${NAME}, got ${JSON.stringify(name)}`);
  }

  private define(name: string, what: string): void {
    if (typeof name !== 'string' || !NAME.test(name)) throw new TypeError(`${what}: name must match ${NAME}, got ${JSON.stringify(name)}`);
    if (this.defined.has(name)) throw new RangeError(`${what}: "${name}" is already defined in graph ${this.name}`);
    this.defined.add(name);
  }

  /** A fresh value name with the given prefix. */
  fresh(prefix: string): string {
    let n: string;
    do n = `${prefix}_${this.counter++}`;
    while (this.defined.has(n));
    return n;
  }

  /** Declares a graph input. */
  input(spec: TensorSpec): string {
    checkShape(spec, 'input');
    this.define(spec.name, 'input');
    this.inputs.push(spec);
    return spec.name;
  }

  /** Declares a graph output; it must be produced by a node added before `encode`. */
  output(spec: TensorSpec): void {
    checkShape(spec, 'output');
    if (this.outputs.some((o) => o.name === spec.name)) throw new RangeError(`output: "${spec.name}" declared twice`);
    this.outputs.push(spec);
  }

  /** Adds a constant tensor; `values` are converted to the element type (float32 rounds). */
  initializer(name: string, dims: number[], values: ArrayLike<number>, dtype: ElementType = 'float32'): string {
    if (dtype === 'string') throw new TypeError(`initializer ${name}: string initializers are not supported`);
    this.define(name, 'initializer');
    if (!dims.every((d) => Number.isInteger(d) && d >= 0)) throw new RangeError(`initializer ${name}: dims must be non-negative integers, got [${dims}]`);
    const n = dims.reduce((a, b) => a * b, 1);
    if (values.length !== n) throw new RangeError(`initializer ${name}: dims [${dims}] hold ${n} values, got ${values.length}`);
    let raw: Uint8Array;
    if (dtype === 'float32') {
      const buf = new DataView(new ArrayBuffer(4 * n));
      for (let i = 0; i < n; i++) {
        if (!Number.isFinite(values[i])) throw new RangeError(`initializer ${name}: value ${i} is not finite (${values[i]})`);
        buf.setFloat32(4 * i, values[i], true);
      }
      raw = new Uint8Array(buf.buffer);
    } else {
      const buf = new DataView(new ArrayBuffer(8 * n));
      for (let i = 0; i < n; i++) {
        if (!Number.isSafeInteger(values[i])) throw new RangeError(`initializer ${name}: value ${i} is not a safe integer (${values[i]})`);
        buf.setBigInt64(8 * i, BigInt(values[i]), true);
      }
      raw = new Uint8Array(buf.buffer);
    }
    this.initializers.push(onnx.TensorProto.create({ name, dims, dataType: ELEMENT[dtype], rawData: raw }));
    return name;
  }

  /** Adds a node in the default domain; returns its first output's name. */
  node(opType: string, inputs: string[], outputs: string[], attrs: Record<string, AttrValue> = {}): string {
    if (!/^[A-Z][A-Za-z0-9]*$/.test(opType)) throw new TypeError(`node: opType must be an ONNX operator name, got ${JSON.stringify(opType)}`);
    if (outputs.length === 0) throw new RangeError(`node ${opType}: needs at least one output`);
    for (const i of inputs) if (i !== '' && !this.defined.has(i)) throw new RangeError(`node ${opType}: input "${i}" is not defined yet`);
    for (const o of outputs) this.define(o, `node ${opType} output`);
    const attribute = Object.entries(attrs).map(([name, v]) => attributeProto(name, v));
    this.nodes.push(onnx.NodeProto.create({ opType, input: inputs, output: outputs, name: `${opType}_${this.nodes.length}`, attribute }));
    return outputs[0];
  }

  /** Serializes the model. */
  encode(meta: ModelMeta = {}): Uint8Array {
    for (const o of this.outputs) if (!this.defined.has(o.name) || this.inputs.some((i) => i.name === o.name)) {
      throw new RangeError(`encode: output "${o.name}" is not produced by any node`);
    }
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      opsetImport: [onnx.OperatorSetIdProto.create({ domain: '', version: OPSET })],
      producerName: meta.producerName ?? 'keel-tools',
      producerVersion: meta.producerVersion ?? '1',
      modelVersion: meta.modelVersion ?? 1,
      docString: meta.docString ?? '',
      graph: onnx.GraphProto.create({
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs.map(valueInfo),
        output: this.outputs.map(valueInfo),
      }),
      metadataProps: Object.entries(meta.metadata ?? {}).map(([key, value]) => onnx.StringStringEntryProto.create({ key, value })),
    });
    const err = onnx.ModelProto.verify(model);
    if (err) throw new Error(`encode: invalid ModelProto: ${err}`);
    return onnx.ModelProto.encode(model).finish();
  }
}

function checkShape(spec: TensorSpec, what: string): void {
  if (!Array.isArray(spec.shape) || spec.shape.length === 0) throw new RangeError(`${what} ${spec.name}: shape must be a non-empty array`);
  for (const d of spec.shape) {
    if (typeof d === 'number' ? !(Number.isInteger(d) && d >= 1) : !(typeof d === 'string' && NAME.test(d))) {
      throw new RangeError(`${what} ${spec.name}: dimension ${JSON.stringify(d)} is neither a positive integer nor a symbolic name`);
    }
  }
}

function valueInfo(spec: TensorSpec) {
  return onnx.ValueInfoProto.create({
    name: spec.name,
    type: onnx.TypeProto.create({
      tensorType: onnx.TypeProto.Tensor.create({
        elemType: ELEMENT[spec.dtype ?? 'float32'],
        shape: onnx.TensorShapeProto.create({
          dim: spec.shape.map((d) => onnx.TensorShapeProto.Dimension.create(typeof d === 'number' ? { dimValue: d } : { dimParam: d })),
        }),
      }),
    }),
  });
}

function attributeProto(name: string, v: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if ('i' in v) {
    if (!Number.isSafeInteger(v.i)) throw new RangeError(`attribute ${name}: i must be an integer`);
    return onnx.AttributeProto.create({ name, type: T.INT, i: v.i });
  }
  if ('f' in v) return onnx.AttributeProto.create({ name, type: T.FLOAT, f: v.f });
  if ('ints' in v) return onnx.AttributeProto.create({ name, type: T.INTS, ints: v.ints });
  if ('floats' in v) return onnx.AttributeProto.create({ name, type: T.FLOATS, floats: v.floats });
  return onnx.AttributeProto.create({ name, type: T.STRING, s: new TextEncoder().encode(v.s) });
}

// ---------------------------------------------------------------- layers to nodes

const ACT_OP: Record<Exclude<Activation, 'none'>, string> = { relu: 'Relu', tanh: 'Tanh' };

/** Adds `y = x W^T + b` as one Gemm (transB=1, W stored [out, in] as in `Dense`). */
export function addDense(g: GraphBuilder, layer: Dense, x: string, prefix: string, out?: string): string {
  const w = g.initializer(`${prefix}.weight`, layer.w.shape, layer.w.value);
  const b = g.initializer(`${prefix}.bias`, layer.b.shape, layer.b.value);
  return g.node('Gemm', [x, w, b], [out ?? g.fresh(`${prefix}.gemm`)], { transB: { i: 1 } });
}

/** Adds an MLP (Gemm + activation per layer); returns the name of its last output. */
export function addMlp(g: GraphBuilder, mlp: Mlp, x: string, prefix: string, out?: string): string {
  let cur = x;
  mlp.layers.forEach((layer, k) => {
    const last = k === mlp.layers.length - 1;
    const act = mlp.activations[k];
    const gemmOut = last && act === 'none' ? out : undefined;
    cur = addDense(g, layer, cur, `${prefix}.${k}`, gemmOut);
    if (act !== 'none') cur = g.node(ACT_OP[act], [cur], [last && out ? out : g.fresh(`${prefix}.${k}.${act}`)]);
  });
  return cur;
}

/**
 * Adds one step of an Elman cell: h_out = tanh(Gemm(Concat(x, h_in))). Returns h_out's
 * name; the caller adds the head on it.
 */
export function addElmanStep(g: GraphBuilder, rnn: ElmanRnn, x: string, hIn: string, hOut: string, prefix: string): string {
  const u = g.node('Concat', [x, hIn], [g.fresh(`${prefix}.concat`)], { axis: { i: 1 } });
  const z = addDense(g, rnn.cell, u, `${prefix}.cell`);
  return g.node('Tanh', [z], [hOut]);
}
