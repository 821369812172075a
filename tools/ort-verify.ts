/**
 * Checks an exported model against the training code's own forward pass by running it in
 * onnxruntime-node, the engine keel uses on the device.
 */
import * as ort from 'onnxruntime-node';

/** Input tensors of one run: name -> values and dims (float32). */
export type Feeds = Record<string, { data: ArrayLike<number>; dims: number[] }>;

/** One check: what to feed and what each named output must be. */
export interface OrtCase {
  feeds: Feeds;
  expected: Record<string, ArrayLike<number>>;
}

/** Opens an ORT session on model bytes (single-threaded: the models are tiny). */
export async function openSession(model: Uint8Array | string): Promise<ort.InferenceSession> {
  const opts: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
  return typeof model === 'string' ? ort.InferenceSession.create(model, opts) : ort.InferenceSession.create(model, opts);
}

/** Runs a session once with float32 feeds; returns each output's values as float32. */
export async function runOnce(session: ort.InferenceSession, feeds: Feeds): Promise<Record<string, Float32Array>> {
  const t: Record<string, ort.Tensor> = {};
  for (const [name, f] of Object.entries(feeds)) t[name] = new ort.Tensor('float32', Float32Array.from(f.data), f.dims);
  const out = await session.run(t);
  const res: Record<string, Float32Array> = {};
  for (const [name, v] of Object.entries(out)) res[name] = v.data as Float32Array;
  return res;
}

/**
 * Runs every case and returns the largest absolute difference between ORT's outputs and the
 * expected values. Throws when it exceeds `tolerance`, naming the case and output.
 */
export async function verifyWithOrt(model: Uint8Array, cases: OrtCase[], tolerance = 1e-5): Promise<number> {
  const session = await openSession(model);
  let worst = 0;
  try {
    for (let c = 0; c < cases.length; c++) {
      const out = await runOnce(session, cases[c].feeds);
      for (const [name, want] of Object.entries(cases[c].expected)) {
        const got = out[name];
        if (!got) throw new Error(`verifyWithOrt: case ${c}: model has no output "${name}"`);
        if (got.length !== want.length) throw new Error(`verifyWithOrt: case ${c}: output "${name}" has ${got.length} values, expected ${want.length}`);
        for (let i = 0; i < want.length; i++) {
          const d = Math.abs(got[i] - want[i]);
          if (!(d <= tolerance)) throw new Error(`verifyWithOrt: case ${c}: ${name}[${i}] = ${got[i]} from ORT, ${want[i]} from TypeScript (|diff| ${d} > ${tolerance})`);
          worst = Math.max(worst, d);
        }
      }
    }
  } finally {
    await session.release();
  }
  return worst;
}
