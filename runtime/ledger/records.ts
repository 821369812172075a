/**
 * Ledger record kinds (docs/ledger.md, "Records"). Every record is a JSON object whose RFC 8785
 * (JCS) serialization is the Merkle leaf. Common fields:
 *   v      format version (1)
 *   seq    the record's index in the log (0-based; equals its leaf index)
 *   t      device time, epoch milliseconds
 *   kind   inference | decision | action | fault | event | config | gap | command
 * Numbers are JSON numbers (IEEE doubles): float32 model outputs are widened exactly, so a
 * verifier that re-runs the model compares bit for bit.
 */
import { createHash } from 'node:crypto';

/** Record format version. */
export const RECORD_VERSION = 1;

/** The kinds of record keel writes. */
export type RecordKind = 'inference' | 'decision' | 'action' | 'fault' | 'event' | 'config' | 'gap' | 'command';

/** Fields every record carries. */
export interface RecordBase {
  v: typeof RECORD_VERSION;
  seq: number;
  t: number;
  kind: RecordKind;
}

/** Digest of one tensor: SHA-256 over its dtype, shape and little-endian element bytes. */
export interface TensorDigest {
  dtype: string;
  shape: number[];
  sha256: string;
}

/**
 * The input-tensor digest of an inference receipt: SHA-256 of
 * `"<dtype>\n" + shape.join(",") + "\n"` followed by the raw little-endian element bytes.
 * Binding dtype and shape into the hash means the same bytes read as another shape do not
 * collide.
 */
export function tensorDigest(dtype: string, shape: readonly number[], data: ArrayBufferView): TensorDigest {
  if (!/^[a-z0-9]+$/.test(dtype)) throw new TypeError(`dtype must be a tensor type name, got ${JSON.stringify(dtype)}`);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new RangeError(`shape must hold non-negative integers, got [${shape.join(', ')}]`);
  const h = createHash('sha256');
  h.update(`${dtype}\n${shape.join(',')}\n`);
  // Node runs on little-endian hosts only (x64, arm64), so the view's bytes are little-endian.
  h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return { dtype, shape: [...shape], sha256: h.digest('hex') };
}

/** Body of an inference receipt (before seq/t/kind are added). */
export interface InferenceBody {
  pipeline: string;
  model: { sha256: string };
  inputs: Record<string, TensorDigest>;
  outputs: Record<string, number[]>;
  /** Wall time of session.run, ms (rounded to µs). */
  ms: number;
  runtime: { keel: string; onnxruntime: string };
}
