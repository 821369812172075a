/**
 * Inference with onnxruntime-node: any ONNX model from configuration alone.
 *
 * Loading pins the model by SHA-256 (the bytes that are hashed are the bytes that are
 * loaded, so a swap between check and load cannot slip through), then checks every
 * configured input, output and state binding against the model's own metadata and reports
 * every disagreement at once. Stateful (recurrent) models get their state outputs fed back
 * into their state inputs on the next run, until a reset.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { ModelError } from './errors.ts';
import type { ModelConfig } from './config/schema.ts';

type DType = 'float32' | 'float64' | 'int32' | 'int64' | 'int8' | 'uint8';
type TypedArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Int8Array | Uint8Array;

/** Outputs of one run, by output name, as plain numbers. */
export type ModelOutputs = Record<string, ArrayLike<number>>;

/** What the loader learned about the model, for logs, `keel check` and receipts. */
export interface ModelInfo {
  path: string;
  sha256: string;
  bytes: number;
  inputs: { name: string; type: string; shape: (number | string)[] }[];
  outputs: { name: string; type: string; shape: (number | string)[] }[];
}

/** Hex SHA-256 of a buffer. */
export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

const SUPPORTED: DType[] = ['float32', 'float64', 'int32', 'int64', 'int8', 'uint8'];
/** Output element types keel can hand to rules as numbers. */
const NUMERIC_OUTPUT = new Set(['float32', 'float64', 'int32', 'int64', 'int16', 'int8', 'uint8', 'uint16', 'uint32', 'uint64', 'bool']);

function allocate(dtype: DType, n: number): TypedArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(n);
    case 'float64':
      return new Float64Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'int64':
      return new BigInt64Array(n);
    case 'int8':
      return new Int8Array(n);
    case 'uint8':
      return new Uint8Array(n);
  }
}

/** Copies float values into a tensor buffer of the given dtype (rounding for integers). */
function fill(target: TypedArray, values: ArrayLike<number>): void {
  if (target instanceof BigInt64Array) {
    for (let i = 0; i < values.length; i++) target[i] = BigInt(Math.round(values[i]));
  } else if (target instanceof Float32Array || target instanceof Float64Array) {
    target.set(values);
  } else {
    for (let i = 0; i < values.length; i++) target[i] = Math.round(values[i]);
  }
}

function toNumbers(t: ort.Tensor): ArrayLike<number> {
  const d = t.data;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return Array.from(d, (x) => Number(x));
  if (Array.isArray(d)) throw new ModelError('KEEL_E_INFERENCE', `output of type ${t.type} is not numeric`);
  return d as ArrayLike<number>;
}

function sameShape(model: readonly (number | string)[], configured: readonly number[]): boolean {
  if (model.length !== configured.length) return false;
  return model.every((d, i) => {
    const c = configured[i];
    const dynamic = typeof d === 'string' || d < 0;
    if (c === -1) return dynamic;
    return dynamic || d === c;
  });
}

function fmtShape(shape: readonly (number | string)[]): string {
  return `[${shape.map((d) => (typeof d === 'number' && d < 0 ? '?' : String(d))).join(', ')}]`;
}

interface StateSlot {
  input: string;
  output: string;
  dims: number[];
  dtype: DType;
  initial: number;
  tensor: ort.Tensor;
}

/** A loaded, checked model with its recurrent state. */
export class ModelRunner {
  /** What was loaded. */
  readonly info: ModelInfo;
  private readonly session: ort.InferenceSession;
  private readonly inputName: string;
  private readonly inputDtype: DType;
  private readonly inputShape: number[];
  private readonly fetch: string[];
  private readonly state: StateSlot[];
  /** Constant inputs, built once. */
  private readonly constants: Record<string, ort.Tensor> = {};
  private runsSinceReset = 0;

  private constructor(session: ort.InferenceSession, info: ModelInfo, cfg: ModelConfig, dtypes: Map<string, DType>) {
    this.session = session;
    this.info = info;
    this.inputName = cfg.input;
    this.inputDtype = dtypes.get(cfg.input)!;
    this.inputShape = cfg.inputs[cfg.input].shape;
    this.state = (cfg.state ?? []).map((s) => {
      const dtype = (s.dtype as DType | undefined) ?? dtypes.get(s.input)!;
      const slot: StateSlot = { input: s.input, output: s.output, dims: s.shape, dtype, initial: s.initial, tensor: undefined! };
      slot.tensor = ModelRunner.initialState(slot);
      return slot;
    });
    for (const [name, spec] of Object.entries(cfg.inputs)) {
      if (name === cfg.input || spec.value === undefined) continue;
      const dtype = dtypes.get(name)!;
      const n = spec.shape.reduce((a, b) => a * b, 1);
      const data = allocate(dtype, n);
      fill(data, Array.isArray(spec.value) ? spec.value : new Array<number>(n).fill(spec.value));
      this.constants[name] = new ort.Tensor(dtype, data, spec.shape);
    }
    const stateOutputs = new Set(this.state.map((s) => s.output));
    // By default every numeric tensor output; maps and sequences (e.g. scikit-learn's ZipMap
    // probabilities) and string tensors cannot feed rules and are left out.
    const numeric = new Set(info.outputs.filter((o) => NUMERIC_OUTPUT.has(o.type)).map((o) => o.name));
    const wanted = cfg.outputs ?? session.outputNames.filter((n) => !stateOutputs.has(n) && numeric.has(n));
    this.fetch = [...new Set([...wanted, ...stateOutputs])];
  }

  /**
   * Reads, pins and loads the model described by `cfg` (paths relative to `baseDir`).
   * Throws ModelError: KEEL_E_MODEL_LOAD (missing, unreadable, not ONNX),
   * KEEL_E_MODEL_HASH (SHA-256 mismatch), KEEL_E_MODEL_IO (names/shapes/dtypes disagree;
   * every disagreement listed, each with its config path under `at`). Ends with one probe run
   * on zeros of `probeElements` window values (default: the input shape's size, skipped when
   * it has a dynamic dimension and no count is given).
   */
  static async load(cfg: ModelConfig, baseDir: string, at = 'model', probeElements?: number): Promise<ModelRunner> {
    const file = path.resolve(baseDir, cfg.path);
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why =
        e.code === 'ENOENT' ? 'file not found' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory, not a model file' : e.message;
      throw new ModelError('KEEL_E_MODEL_LOAD', `${at}.path: cannot read model ${file}: ${why}`, { cause: err, issues: [{ path: `${at}.path`, message: `cannot read model ${file}: ${why}` }] });
    }
    const digest = sha256Hex(bytes);
    if (digest !== cfg.sha256) {
      const message =
        `model ${file} has SHA-256 ${digest} but the config pins ${cfg.sha256}; refusing to load it. ` +
        'If the model was replaced on purpose, put the new hash in the config.';
      throw new ModelError('KEEL_E_MODEL_HASH', `${at}.sha256: ${message}`, { issues: [{ path: `${at}.sha256`, message }] });
    }
    const options: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      intraOpNumThreads: cfg.threads?.intraOp ?? 1,
      interOpNumThreads: cfg.threads?.interOp ?? 1,
      executionMode: 'sequential',
      executionProviders: cfg.executionProviders,
      logSeverityLevel: 4, // errors reach the caller as ModelErrors; keep ORT's own log quiet
    };
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, options);
    } catch (err) {
      const msg = (err as Error).message?.split('\n')[0] ?? String(err);
      const message = `${file} is not a loadable ONNX model: ${msg}`;
      throw new ModelError('KEEL_E_MODEL_LOAD', `${at}.path: ${message}`, { cause: err, issues: [{ path: `${at}.path`, message }] });
    }
    const meta = (list: readonly ort.InferenceSession.ValueMetadata[]) =>
      list.map((m) => (m.isTensor ? { name: m.name, type: String(m.type), shape: [...m.shape] } : { name: m.name, type: 'non-tensor', shape: [] }));
    const info: ModelInfo = { path: file, sha256: digest, bytes: bytes.length, inputs: meta(session.inputMetadata), outputs: meta(session.outputMetadata) };
    const dtypes = new Map<string, DType>();
    const problems = ModelRunner.check(cfg, info, dtypes, at);
    if (problems.length > 0) {
      await session.release().catch(() => undefined);
      throw new ModelError('KEEL_E_MODEL_IO', `model ${file} does not match its configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`, {
        issues: problems.map((p) => {
          const cut = p.indexOf(': ');
          return { path: p.slice(0, cut), message: p.slice(cut + 2) };
        }),
      });
    }
    const runner = new ModelRunner(session, info, cfg, dtypes);
    // Metadata cannot tell everything (a scalar from an open rank, dims tied inside the
    // graph): one run on zeros proves the configured feeds are accepted, at load time
    // rather than on the first real window.
    const dynamic = runner.inputShape.includes(-1);
    const elements = probeElements ?? (dynamic ? 0 : runner.inputShape.reduce((a, b) => a * b, 1));
    try {
      if (elements > 0) await runner.run(new Float32Array(elements));
      runner.resetState();
    } catch (err) {
      await session.release().catch(() => undefined);
      const message = `the model rejects the configured inputs: ${(err as Error).message.replace(/^inference failed: /, '')}`;
      throw new ModelError('KEEL_E_MODEL_IO', `${at}.inputs: ${message}`, { cause: err, issues: [{ path: `${at}.inputs`, message }] });
    }
    return runner;
  }

  /** Compares configuration with model metadata; fills `dtypes`; returns every problem. */
  private static check(cfg: ModelConfig, info: ModelInfo, dtypes: Map<string, DType>, at: string): string[] {
    const problems: string[] = [];
    const inputs = new Map(info.inputs.map((i) => [i.name, i]));
    const outputs = new Map(info.outputs.map((o) => [o.name, o]));
    const names = (m: Map<string, unknown>) => [...m.keys()].join(', ') || '(none)';
    const typeOf = (name: string, where: string, configured: string | undefined, modelType: string) => {
      if (modelType === 'non-tensor') {
        problems.push(`${where}: "${name}" is not a tensor in the model`);
        return;
      }
      if (!SUPPORTED.includes(modelType as DType)) {
        problems.push(`${where}: model type of "${name}" is ${modelType}; keel feeds ${SUPPORTED.join(', ')}`);
        return;
      }
      if (configured && configured !== modelType) problems.push(`${where}.dtype: configured ${configured} but the model expects ${modelType}`);
      dtypes.set(name, modelType as DType);
    };
    for (const [name, spec] of Object.entries(cfg.inputs)) {
      const where = `${at}.inputs.${name}`;
      const m = inputs.get(name);
      if (!m) {
        problems.push(`${where}: the model has no input "${name}" (it has ${names(inputs)})`);
        continue;
      }
      typeOf(name, where, spec.dtype, m.type);
      if (m.shape.length > 0 && !sameShape(m.shape, spec.shape)) {
        problems.push(`${where}.shape: configured ${fmtShape(spec.shape)} but the model declares ${fmtShape(m.shape)}` + (m.shape.length !== spec.shape.length ? ` (expected ${m.shape.length} dimensions)` : ''));
      }
    }
    (cfg.state ?? []).forEach((s, k) => {
      const where = `${at}.state[${k}]`;
      const mi = inputs.get(s.input);
      const mo = outputs.get(s.output);
      if (!mi) problems.push(`${where}.input: the model has no input "${s.input}" (it has ${names(inputs)})`);
      if (!mo) problems.push(`${where}.output: the model has no output "${s.output}" (it has ${names(outputs)})`);
      if (mi) {
        typeOf(s.input, where, s.dtype, mi.type);
        if (mi.shape.length > 0 && !sameShape(mi.shape, s.shape)) problems.push(`${where}.shape: configured ${fmtShape(s.shape)} but input "${s.input}" is ${fmtShape(mi.shape)}`);
      }
      if (mo && mo.shape.length > 0 && !sameShape(mo.shape, s.shape)) problems.push(`${where}.shape: configured ${fmtShape(s.shape)} but output "${s.output}" is ${fmtShape(mo.shape)}`);
      if (mi && mo && mi.type !== mo.type) problems.push(`${where}: state input is ${mi.type} but state output is ${mo.type}`);
    });
    const fed = new Set([...Object.keys(cfg.inputs), ...(cfg.state ?? []).map((s) => s.input)]);
    for (const i of info.inputs) {
      if (!fed.has(i.name)) problems.push(`${at}.inputs: model input "${i.name}" ${fmtShape(i.shape)} is not fed; describe it in model.inputs or bind it in model.state`);
    }
    (cfg.outputs ?? []).forEach((o, k) => {
      const m = outputs.get(o);
      if (!m) problems.push(`${at}.outputs[${k}]: the model has no output "${o}" (it has ${names(outputs)})`);
      else if (!NUMERIC_OUTPUT.has(m.type)) problems.push(`${at}.outputs[${k}]: output "${o}" is ${m.type === 'non-tensor' ? 'not a tensor (a map or sequence)' : `a ${m.type} tensor`}; rules need numbers`);
    });
    if (!cfg.outputs && !info.outputs.some((o) => NUMERIC_OUTPUT.has(o.type) && !(cfg.state ?? []).some((s) => s.output === o.name))) {
      problems.push(`${at}.outputs: the model has no numeric tensor output to decide on`);
    }
    return problems;
  }

  private static initialState(s: Omit<StateSlot, 'tensor'>): ort.Tensor {
    const n = s.dims.reduce((a, b) => a * b, 1);
    const data = allocate(s.dtype, n);
    if (s.initial !== 0) fill(data, new Array<number>(n).fill(s.initial));
    return new ort.Tensor(s.dtype, data, s.dims);
  }

  /** Names of the outputs each run returns (state outputs included). */
  get outputNames(): readonly string[] {
    return this.fetch;
  }

  /** Number of runs since the state was last reset. */
  get runsSinceStateReset(): number {
    return this.runsSinceReset;
  }

  /** The dims the window tensor gets for `elements` values (one -1 is inferred). */
  inputDims(elements: number): number[] {
    const fixed = this.inputShape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
    return this.inputShape.map((d) => (d === -1 ? elements / fixed : d));
  }

  /**
   * Runs the model on one window (already transformed; length must fit the input shape),
   * feeding and then advancing the recurrent state. A Float32Array for a float32 input is
   * used as the tensor's buffer without a copy: do not modify it while the run is pending.
   * Throws ModelError KEEL_E_INFERENCE.
   */
  async run(window: ArrayLike<number>): Promise<ModelOutputs> {
    let data: TypedArray;
    if (this.inputDtype === 'float32' && window instanceof Float32Array) {
      data = window; // the pipeline hands over a fresh array per window: no copy needed
    } else {
      data = allocate(this.inputDtype, window.length);
      fill(data, window);
    }
    const feeds: Record<string, ort.Tensor> = { ...this.constants, [this.inputName]: new ort.Tensor(this.inputDtype, data, this.inputDims(window.length)) };
    for (const s of this.state) feeds[s.input] = s.tensor;
    let result: ort.InferenceSession.ReturnType;
    try {
      result = await this.session.run(feeds, this.fetch);
    } catch (err) {
      const msg = (err as Error).message?.split('\n')[0] ?? String(err);
      throw new ModelError('KEEL_E_INFERENCE', `inference failed: ${msg}`, { cause: err, retryable: true });
    }
    const out: ModelOutputs = {};
    for (const name of this.fetch) out[name] = toNumbers(result[name]);
    for (const s of this.state) {
      const next = result[s.output];
      // Copy into a fresh tensor of the declared shape: the output may carry symbolic dims.
      s.tensor = new ort.Tensor(s.dtype, next.data as TypedArray, s.dims);
    }
    this.runsSinceReset++;
    return out;
  }

  /** Puts every state input back to its initial value. */
  resetState(): void {
    for (const s of this.state) s.tensor = ModelRunner.initialState(s);
    this.runsSinceReset = 0;
  }

  /** Whether the model carries recurrent state. */
  get stateful(): boolean {
    return this.state.length > 0;
  }

  /** Runs `n` throwaway inferences on zeros (first runs allocate and are slow), then resets state. */
  async warmup(n: number, elements: number): Promise<void> {
    const zeros = new Float32Array(elements);
    for (let i = 0; i < n; i++) await this.run(zeros);
    this.resetState();
  }

  /** Frees the native session. */
  async release(): Promise<void> {
    await this.session.release();
  }
}
