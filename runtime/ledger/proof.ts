/**
 * Proofs that leave the device (docs/ledger.md, "Offline proof" and "Witness request"):
 *
 * - C2SP tlog-proof: "c2sp.org/tlog-proof@v1\n", optionally "extra <base64>\n",
 *   "index <n>\n", the RFC 6962 2.1.1 inclusion path as one base64 hash per line (leaf's
 *   sibling first), an empty line, then the signed checkpoint verbatim [C2SP tlog-proof,
 *   "Format"].
 * - C2SP tlog-witness add-checkpoint request body: "old <m>\n", the RFC 6962 2.1.2
 *   consistency proof as at most 63 base64 lines (none when m is 0), an empty line, then the
 *   signed checkpoint [C2SP tlog-witness, "add-checkpoint"].
 *
 * Parsers are strict and refuse with LedgerFormatError; verifyTlogProof refuses a proof that
 * does not hold with LedgerVerifyError.
 */
import { HASH_SIZE } from './hash.ts';
import { LedgerFormatError, LedgerVerifyError } from './errors.ts';
import { verifyInclusion } from './merkle.ts';
import { decodeBase64, openCheckpoint, parseCheckpoint, parseDecimal, splitNote, type NoteVerifier, type OpenedCheckpoint } from './note.ts';

/** First line of a tlog-proof. */
export const TLOG_PROOF_HEADER = 'c2sp.org/tlog-proof@v1';

/**
 * Most hash lines a proof may carry: a tree below 2^63 leaves needs at most 63, and
 * tlog-witness caps consistency proofs at 63 lines.
 */
export const MAX_PROOF_HASHES = 63;

/** An offline inclusion proof [C2SP tlog-proof]. */
export interface TlogProof {
  /** Zero-based index of the entry in the log. */
  index: number;
  /** RFC 6962 inclusion path, leaf's sibling first; 32-byte hashes. */
  proof: Buffer[];
  /** Opaque, unauthenticated extra data, if present. */
  extra?: Buffer;
  /** The signed checkpoint note, verbatim (ends in a newline). */
  checkpoint: string;
}

/** A tlog-witness add-checkpoint request body. */
export interface AddCheckpointRequest {
  /** Size of the checkpoint the witness last cosigned (0 if none). */
  oldSize: number;
  /** RFC 6962 consistency proof from oldSize to the checkpoint's size. */
  proof: Buffer[];
  /** The signed checkpoint note, verbatim. */
  checkpoint: string;
}

function checkHashes(fn: string, proof: unknown): Buffer[] {
  if (!Array.isArray(proof)) throw new TypeError(`${fn}: proof must be an array of hashes`);
  if (proof.length > MAX_PROOF_HASHES) throw new RangeError(`${fn}: proof has ${proof.length} hashes; at most ${MAX_PROOF_HASHES} are allowed`);
  return proof.map((h, i) => {
    if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) throw new RangeError(`${fn}: proof[${i}] must be a ${HASH_SIZE}-byte hash`);
    return Buffer.from(h);
  });
}

function checkSignedNote(fn: string, checkpoint: unknown): string {
  if (typeof checkpoint !== 'string') throw new TypeError(`${fn}: checkpoint must be the signed checkpoint note text`);
  try {
    parseCheckpoint(splitNote(checkpoint).text);
  } catch (err) {
    throw new RangeError(`${fn}: checkpoint is not a signed note of a checkpoint (${(err as Error).message})`);
  }
  return checkpoint;
}

function checkCount(fn: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new RangeError(`${fn}: ${name} must be a non-negative safe integer, got ${String(v)}`);
  return v;
}

/**
 * Formats a tlog-proof. `checkpoint` is the signed checkpoint note; `extra`, if given, must be
 * non-empty.
 * @throws RangeError/TypeError for invalid fields.
 */
export function formatTlogProof(p: { index: number; proof: readonly Uint8Array[]; checkpoint: string; extra?: Uint8Array }): string {
  const fn = 'formatTlogProof';
  const index = checkCount(fn, 'index', p?.index);
  const proof = checkHashes(fn, p.proof);
  const checkpoint = checkSignedNote(fn, p.checkpoint);
  let out = `${TLOG_PROOF_HEADER}\n`;
  if (p.extra !== undefined) {
    if (!(p.extra instanceof Uint8Array) || p.extra.length === 0) throw new RangeError(`${fn}: extra must be a non-empty Uint8Array when given`);
    out += `extra ${Buffer.from(p.extra).toString('base64')}\n`;
  }
  out += `index ${index}\n`;
  for (const h of proof) out += `${h.toString('base64')}\n`;
  return `${out}\n${checkpoint}`;
}

/** Reads "<keyword> <value>" lines, hash lines and the trailing note shared by both formats. */
class LineReader {
  private pos = 0;
  constructor(
    private readonly text: string,
    private readonly format: string,
  ) {}

  fail(why: string): never {
    throw new LedgerFormatError(this.format, why);
  }

  /** The next line without its newline; fails at the end of text or on a missing newline. */
  line(what: string): string {
    const nl = this.text.indexOf('\n', this.pos);
    if (nl < 0) this.fail(`expected ${what}, found ${this.pos >= this.text.length ? 'the end of the text' : 'a line without a newline'}`);
    const l = this.text.slice(this.pos, nl);
    this.pos = nl + 1;
    return l;
  }

  peek(): string | undefined {
    const nl = this.text.indexOf('\n', this.pos);
    return nl < 0 ? undefined : this.text.slice(this.pos, nl);
  }

  /** Hash lines up to the empty line (consumed). */
  hashes(): Buffer[] {
    const out: Buffer[] = [];
    for (;;) {
      const l = this.line('a proof hash or the empty line before the checkpoint');
      if (l === '') return out;
      if (out.length === MAX_PROOF_HASHES) this.fail(`more than ${MAX_PROOF_HASHES} proof hashes`);
      const h = decodeBase64(l);
      if (!h || h.length !== HASH_SIZE) this.fail(`proof line ${out.length + 1} is not base64 of a ${HASH_SIZE}-byte hash`);
      out.push(h as Buffer);
    }
  }

  /** The rest of the text, which must be a well-formed signed checkpoint (not yet verified). */
  signedNote(): string {
    const rest = this.text.slice(this.pos);
    if (rest === '') this.fail('no signed checkpoint after the empty line');
    try {
      parseCheckpoint(splitNote(rest).text);
    } catch (err) {
      this.fail(`the checkpoint is not a signed note of a checkpoint: ${(err as Error).message}`);
    }
    return rest;
  }
}

function valueAfter(r: LineReader, line: string, keyword: string): string {
  if (!line.startsWith(`${keyword} `)) r.fail(`expected a line "${keyword} <value>", got ${JSON.stringify(line.slice(0, 60))}`);
  return line.slice(keyword.length + 1);
}

/**
 * Parses a tlog-proof strictly (exact header, canonical base64, decimal index without leading
 * zeros, at most 63 hashes, a well-formed signed checkpoint after the empty line). No signature
 * or proof is verified: use verifyTlogProof.
 * @throws LedgerFormatError (format `tlog-proof`).
 */
export function parseTlogProof(text: string): TlogProof {
  if (typeof text !== 'string') throw new TypeError('parseTlogProof: text must be a string');
  const r = new LineReader(text, 'tlog-proof');
  if (r.line('the header') !== TLOG_PROOF_HEADER) r.fail(`the first line must be ${TLOG_PROOF_HEADER}`);
  let extra: Buffer | undefined;
  if (r.peek()?.startsWith('extra ')) {
    const v = valueAfter(r, r.line('extra'), 'extra');
    extra = decodeBase64(v);
    if (!extra || extra.length === 0) r.fail('extra data is not non-empty padded standard base64');
  }
  const index = parseDecimal(valueAfter(r, r.line('the index line'), 'index'));
  if (index === undefined) r.fail('the index is not a decimal without leading zeros below 2^53');
  const proof = r.hashes();
  const checkpoint = r.signedNote();
  const out: TlogProof = { index: index as number, proof, checkpoint };
  if (extra) out.extra = extra;
  return out;
}

/**
 * Verifies a tlog-proof for the entry whose RFC 6962 leaf hash is `leafHashValue`: the
 * checkpoint must be signed by one of `verifiers` (and name `opts.origin`, if given), the
 * index must be inside the tree, and the inclusion path must lead to the checkpoint's root
 * (RFC 9162 2.1.3.2).
 * @throws LedgerFormatError if malformed; LedgerVerifyError if any check fails.
 */
export function verifyTlogProof(
  proof: string | TlogProof,
  leafHashValue: Uint8Array,
  verifiers: readonly NoteVerifier[],
  opts: { origin?: string } = {},
): OpenedCheckpoint & { index: number } {
  if (!(leafHashValue instanceof Uint8Array) || leafHashValue.length !== HASH_SIZE) throw new RangeError(`verifyTlogProof: leafHash must be ${HASH_SIZE} bytes`);
  const p = typeof proof === 'string' ? parseTlogProof(proof) : proof;
  const opened = openCheckpoint(p.checkpoint, verifiers);
  const { checkpoint } = opened;
  if (opts.origin !== undefined && checkpoint.origin !== opts.origin) {
    throw new LedgerVerifyError(`tlog-proof: checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(opts.origin)}`);
  }
  if (p.index >= checkpoint.size) throw new LedgerVerifyError(`tlog-proof: index ${p.index} is not inside the checkpoint's tree of ${checkpoint.size} leaves`);
  if (!verifyInclusion(leafHashValue, p.index, checkpoint.size, p.proof, checkpoint.root)) {
    throw new LedgerVerifyError(`tlog-proof: the inclusion proof for index ${p.index} does not lead to the root of the checkpoint of size ${checkpoint.size}`);
  }
  return { ...opened, index: p.index };
}

/**
 * Formats a tlog-witness add-checkpoint request body.
 * @throws RangeError/TypeError for invalid fields (including a non-empty proof with oldSize 0).
 */
export function formatAddCheckpoint(req: { oldSize: number; proof: readonly Uint8Array[]; checkpoint: string }): string {
  const fn = 'formatAddCheckpoint';
  const oldSize = checkCount(fn, 'oldSize', req?.oldSize);
  const proof = checkHashes(fn, req.proof);
  if (oldSize === 0 && proof.length > 0) throw new RangeError(`${fn}: the proof must be empty when oldSize is 0`);
  const checkpoint = checkSignedNote(fn, req.checkpoint);
  return `old ${oldSize}\n${proof.map((h) => `${h.toString('base64')}\n`).join('')}\n${checkpoint}`;
}

/**
 * Parses a tlog-witness add-checkpoint request body strictly ("old" line, at most 63
 * canonical base64 hashes, none when old is 0, an empty line, a well-formed signed checkpoint).
 * Nothing is verified; a witness still checks the signature, old <= size and the proof.
 * @throws LedgerFormatError (format `add-checkpoint body`).
 */
export function parseAddCheckpoint(text: string): AddCheckpointRequest {
  if (typeof text !== 'string') throw new TypeError('parseAddCheckpoint: text must be a string');
  const r = new LineReader(text, 'add-checkpoint body');
  const oldSize = parseDecimal(valueAfter(r, r.line('the old size line'), 'old'));
  if (oldSize === undefined) r.fail('the old size is not a decimal without leading zeros below 2^53');
  const proof = r.hashes();
  if (oldSize === 0 && proof.length > 0) r.fail('the consistency proof must be empty when the old size is 0');
  return { oldSize: oldSize as number, proof, checkpoint: r.signedNote() };
}
