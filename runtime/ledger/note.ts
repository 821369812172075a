/**
 * C2SP signed notes, checkpoints and cosignatures (docs/ledger.md, "Checkpoint", "Signed
 * note", "Cosignature"): what the device signs and what the fleet acknowledges, byte for byte
 * as golang.org/x/mod/sumdb/note and transparency-dev/formats read and write them.
 *
 * - Checkpoint [C2SP tlog-checkpoint, "Note text"]: origin line, decimal tree size without
 *   leading zeros, standard base64 of the 32-byte RFC 6962 root, optional non-empty extension
 *   lines, every line ending in U+000A.
 * - Signed note [C2SP signed-note, "Format"]: the text, one empty line, then lines
 *   "— <name> <base64(4-byte key ID || signature)>" (U+2014, U+0020). The signed message is the
 *   text including its final newline. Ed25519 key ID = SHA-256(name || 0x0A || 0x01 ||
 *   public key)[:4] ["Ed25519 signatures"].
 * - Verifier key [signed-note, "Verifier keys"; Go's note.NewVerifier]:
 *   "<name>+<8 lower-case hex digits of the key ID>+<base64(type || public key)>".
 * - Cosignature [C2SP tlog-cosignature, type 0x04]: the signature is key ID || 8-byte
 *   big-endian POSIX timestamp || Ed25519 signature over
 *   "cosignature/v1\ntime <t>\n" + the checkpoint text.
 *
 * Parsers are strict: a malformed note is refused with LedgerFormatError (KEEL_E_LEDGER_FORMAT),
 * a signature that fails, or a note no trusted key signed, with LedgerVerifyError
 * (KEEL_E_LEDGER_VERIFY). Signatures by unknown keys are ignored, as the spec requires.
 */
import { createHash } from 'node:crypto';
import { HASH_SIZE } from './hash.ts';
import { LedgerFormatError, LedgerVerifyError } from './errors.ts';
import { defaultEd25519, ED25519_PUBLIC_KEY_SIZE, ED25519_SIGNATURE_SIZE, isStrictPublicKey, keyNameProblem, type Ed25519 } from './keys.ts';

/** Signature type byte of Ed25519 note signatures [C2SP signed-note, "Signature types"]. */
export const SIGNATURE_TYPE_ED25519 = 0x01;
/** Signature type byte of timestamped Ed25519 cosignatures [C2SP tlog-cosignature]. */
export const SIGNATURE_TYPE_COSIGNATURE_V1 = 0x04;

/** Most signatures openNote reads; the spec requires at least 16, Go stops at 100. */
export const MAX_NOTE_SIGNATURES = 100;
/** Largest signed note openNote reads, bytes (100 post-quantum signatures fit easily). */
export const MAX_NOTE_SIZE = 1024 * 1024;

const EM_DASH_PREFIX = '\u2014 '; // "— "
const CONTROL_EXCEPT_NEWLINE = /[\u0000-\u0009\u000b-\u001f]/;
const LONE_SURROGATE = /\p{Cs}/u;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const DECIMAL = /^(?:0|[1-9][0-9]*)$/;

/**
 * Decodes canonical padded standard base64 [RFC 4648 section 4]; undefined for anything else
 * (other alphabets, missing padding, whitespace, non-zero padding bits).
 */
export function decodeBase64(s: string): Buffer | undefined {
  if (typeof s !== 'string' || !BASE64.test(s)) return undefined;
  const b = Buffer.from(s, 'base64');
  return b.toString('base64') === s ? b : undefined;
}

/** Parses an ASCII decimal without leading zeros into a safe integer; undefined otherwise. */
export function parseDecimal(s: string): number | undefined {
  if (typeof s !== 'string' || s.length > 16 || !DECIMAL.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

function hex8(id: number): string {
  return id.toString(16).padStart(8, '0');
}

function checkKeyName(fn: string, param: string, name: unknown): string {
  const problem = keyNameProblem(name);
  if (problem) throw new RangeError(`${fn}: ${param} ${problem}`);
  return name as string;
}

function checkPublicKey(fn: string, publicKey: unknown): Uint8Array {
  if (!(publicKey instanceof Uint8Array)) throw new TypeError(`${fn}: publicKey must be a Uint8Array`);
  if (publicKey.length !== ED25519_PUBLIC_KEY_SIZE) throw new RangeError(`${fn}: publicKey must be ${ED25519_PUBLIC_KEY_SIZE} bytes, got ${publicKey.length}`);
  return publicKey;
}

function checkType(fn: string, type: unknown): number {
  if (type !== SIGNATURE_TYPE_ED25519 && type !== SIGNATURE_TYPE_COSIGNATURE_V1) {
    throw new RangeError(`${fn}: type must be 0x01 (Ed25519) or 0x04 (cosignature/v1), got ${String(type)}`);
  }
  return type;
}

/**
 * The uint32 key ID SHA-256(name || 0x0A || type || publicKey)[:4], big-endian
 * [C2SP signed-note, "Signatures"].
 */
export function keyId(name: string, type: number, publicKey: Uint8Array): number {
  checkKeyName('keyId', 'name', name);
  checkType('keyId', type);
  checkPublicKey('keyId', publicKey);
  const d = createHash('sha256').update(name, 'utf8').update(Uint8Array.of(0x0a, type)).update(publicKey).digest();
  return d.readUInt32BE(0);
}

/** A parsed verifier key. */
export interface VerifierKey {
  /** Key name (for a log key, its origin). */
  name: string;
  /** uint32 key ID. */
  keyId: number;
  /** Signature type byte: SIGNATURE_TYPE_ED25519 or SIGNATURE_TYPE_COSIGNATURE_V1. */
  type: number;
  /** 32-byte Ed25519 public key. */
  publicKey: Uint8Array;
}

/**
 * The verifier key string "<name>+<hex key ID>+<base64(type || publicKey)>"; type defaults to
 * 0x01 (a log's note signing key); 0x04 gives a cosigner's key.
 * @throws RangeError/TypeError for an invalid name, key or type.
 */
export function verifierKey(name: string, publicKey: Uint8Array, type: number = SIGNATURE_TYPE_ED25519): string {
  const id = keyId(name, type, publicKey);
  return `${name}+${hex8(id)}+${Buffer.concat([Uint8Array.of(type), publicKey]).toString('base64')}`;
}

/**
 * Parses a verifier key string, checking the key ID against the key.
 * @throws LedgerFormatError (format `verifier key`) if malformed, of an unsupported type, or
 *   if the key ID does not match.
 */
export function parseVerifierKey(vkey: string): VerifierKey {
  const fail = (why: string): never => {
    throw new LedgerFormatError('verifier key', why);
  };
  if (typeof vkey !== 'string') return fail(`expected a string, got ${typeof vkey}`);
  // The name cannot contain '+', and the hex ID has none, so the first two '+' split it
  // (the base64 part may contain more).
  const p1 = vkey.indexOf('+');
  const p2 = p1 < 0 ? -1 : vkey.indexOf('+', p1 + 1);
  if (p1 < 0 || p2 < 0) fail('expected <name>+<key ID>+<key>');
  const name = vkey.slice(0, p1);
  const idText = vkey.slice(p1 + 1, p2);
  const keyText = vkey.slice(p2 + 1);
  const problem = keyNameProblem(name);
  if (problem) fail(`key name ${problem}`);
  if (!/^[0-9a-f]{8}$/.test(idText)) fail(`key ID ${JSON.stringify(idText)} is not 8 lower-case hex digits`);
  const raw = decodeBase64(keyText);
  if (!raw || raw.length < 2) return fail('the key is not padded standard base64 of a type byte and a key');
  const type = raw[0];
  if (type !== SIGNATURE_TYPE_ED25519 && type !== SIGNATURE_TYPE_COSIGNATURE_V1) {
    fail(`unsupported signature type 0x${type.toString(16).padStart(2, '0')} (keel reads 0x01 Ed25519 and 0x04 cosignature/v1)`);
  }
  const publicKey = new Uint8Array(raw.subarray(1));
  if (publicKey.length !== ED25519_PUBLIC_KEY_SIZE) fail(`an Ed25519 key is ${ED25519_PUBLIC_KEY_SIZE} bytes, got ${publicKey.length}`);
  if (!isStrictPublicKey(publicKey)) fail('the public key is not a canonical Ed25519 point of large order (strict RFC 8032 verification refuses it)');
  const id = keyId(name, type, publicKey);
  if (hex8(id) !== idText) fail(`key ID ${idText} does not match the key (expected ${hex8(id)})`);
  return { name, keyId: id, type, publicKey };
}

/** Something that signs note text under a name and key ID. */
export interface NoteSigner {
  /** Key name written in the signature line. */
  readonly name: string;
  /** uint32 key ID. */
  readonly keyId: number;
  /** Signature over the note text (UTF-8, including its final newline), without the key ID. */
  sign(text: Uint8Array): Uint8Array;
}

/** Something that verifies signatures by one key. */
export interface NoteVerifier {
  /** Key name the signature line must carry. */
  readonly name: string;
  /** uint32 key ID the signature must start with. */
  readonly keyId: number;
  /** Signature type byte, which decides how `signature` is read. */
  readonly type: number;
  /** Whether `signature` (the bytes after the key ID) signs `text`. Never throws on bad bytes. */
  verify(text: Uint8Array, signature: Uint8Array): boolean;
}

/**
 * A signer of Ed25519 note signatures (type 0x01), e.g. the device key over its checkpoints.
 * @throws RangeError/TypeError for an invalid name or private key.
 */
export function noteSigner(name: string, privateKey: Uint8Array, backend: Ed25519 = defaultEd25519): NoteSigner {
  checkKeyName('noteSigner', 'name', name);
  const publicKey = backend.publicKey(privateKey);
  const id = keyId(name, SIGNATURE_TYPE_ED25519, publicKey);
  const seed = new Uint8Array(privateKey);
  return { name, keyId: id, sign: (text) => backend.sign(text, seed) };
}

/**
 * A verifier for a verifier key of type 0x01 (Ed25519 note signatures) or 0x04 (cosignature/v1;
 * the timestamp must not exceed 2^53-1 seconds, far beyond any real clock).
 * @throws LedgerFormatError if `vkey` is a malformed string.
 */
export function noteVerifier(vkey: string | VerifierKey, backend: Ed25519 = defaultEd25519): NoteVerifier {
  const k = typeof vkey === 'string' ? parseVerifierKey(vkey) : vkey;
  checkKeyName('noteVerifier', 'vkey.name', k.name);
  checkType('noteVerifier', k.type);
  const publicKey = new Uint8Array(checkPublicKey('noteVerifier', k.publicKey));
  const expected = keyId(k.name, k.type, publicKey);
  if (expected !== k.keyId) throw new RangeError(`noteVerifier: vkey.keyId ${hex8(k.keyId)} does not match the key (${hex8(expected)})`);
  if (k.type === SIGNATURE_TYPE_ED25519) {
    return { name: k.name, keyId: k.keyId, type: k.type, verify: (text, sig) => backend.verify(sig, text, publicKey) };
  }
  return {
    name: k.name,
    keyId: k.keyId,
    type: k.type,
    verify: (text, sig) => {
      const ts = cosignatureTimestamp(sig);
      if (ts === undefined) return false;
      return backend.verify(sig.subarray(8), cosignatureMessage(text, ts), publicKey);
    },
  };
}

/** One signature line of a note, parsed but not verified. */
export interface NoteSignature {
  /** Key name from the line. */
  name: string;
  /** uint32 key ID (first 4 signature bytes). */
  keyId: number;
  /** The signature bytes after the key ID. */
  signature: Buffer;
  /** The line as written, without its newline. */
  line: string;
}

/** A signature that verified against a trusted key. */
export interface VerifiedSignature extends NoteSignature {
  /** Signature type of the verifier that accepted it. */
  type: number;
  /** For cosignatures (type 0x04): the cosigner's POSIX timestamp, seconds. */
  timestamp?: number;
}

/** A note whose text is backed by at least one trusted signature. */
export interface OpenedNote {
  /** The note text, including its final newline. */
  text: string;
  /** Signatures that verified, in note order (duplicates by one key dropped). */
  verified: VerifiedSignature[];
  /** Signatures by keys not among the verifiers, ignored as the spec requires. */
  unknown: NoteSignature[];
}

function noteProblem(text: string): string | undefined {
  if (CONTROL_EXCEPT_NEWLINE.test(text)) return 'contains a control character other than newline';
  if (LONE_SURROGATE.test(text)) return 'is not valid UTF-8 (lone surrogate)';
  return undefined;
}

/**
 * Parses a signature line "— <name> <base64>" (with or without its newline).
 * @throws LedgerFormatError (format `signature line`).
 */
export function parseSignatureLine(line: string): NoteSignature {
  const fail = (why: string): never => {
    throw new LedgerFormatError('signature line', why);
  };
  if (typeof line !== 'string') return fail(`expected a string, got ${typeof line}`);
  const l = line.endsWith('\n') ? line.slice(0, -1) : line;
  if (l.includes('\n')) fail('more than one line');
  if (!l.startsWith(EM_DASH_PREFIX)) fail('does not start with an em dash (U+2014) and a space');
  const rest = l.slice(EM_DASH_PREFIX.length);
  const sp = rest.indexOf(' ');
  if (sp < 0) fail('expected "— <key name> <base64 signature>"');
  const name = rest.slice(0, sp);
  const problem = keyNameProblem(name);
  if (problem) fail(`key name ${problem}`);
  const sig = decodeBase64(rest.slice(sp + 1));
  if (!sig) return fail(`signature by ${name} is not padded standard base64`);
  if (sig.length < 5) fail(`signature by ${name} is ${sig.length} bytes; a key ID and a signature need at least 5`);
  return { name, keyId: sig.readUInt32BE(0), signature: sig.subarray(4), line: l };
}

/**
 * Splits a signed note into its text and parsed signature lines, verifying nothing
 * [C2SP signed-note, "Format"]: the text ends at the last empty line; at most
 * MAX_NOTE_SIGNATURES lines; no control characters other than newline; valid UTF-8.
 * @throws LedgerFormatError (format `signed note`).
 */
export function splitNote(note: string | Uint8Array): { text: string; signatures: NoteSignature[] } {
  const fail = (why: string): never => {
    throw new LedgerFormatError('signed note', why);
  };
  let s: string;
  if (note instanceof Uint8Array) {
    if (note.length > MAX_NOTE_SIZE) fail(`${note.length} bytes exceeds the ${MAX_NOTE_SIZE}-byte limit`);
    try {
      s = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(note);
    } catch {
      return fail('is not valid UTF-8');
    }
  } else if (typeof note === 'string') {
    s = note;
    if (s.length > MAX_NOTE_SIZE) fail(`longer than the ${MAX_NOTE_SIZE}-byte limit`);
  } else {
    throw new TypeError(`splitNote: note must be a string or Uint8Array, got ${typeof note}`);
  }
  const problem = noteProblem(s);
  if (problem) fail(problem);
  const split = s.lastIndexOf('\n\n');
  if (split < 0) fail('no empty line between the text and the signatures');
  const text = s.slice(0, split + 1);
  const block = s.slice(split + 2);
  if (block.length === 0) fail('no signature lines after the empty line');
  if (!block.endsWith('\n')) fail('the last signature line does not end in a newline');
  const lines = block.slice(0, -1).split('\n');
  if (lines.length > MAX_NOTE_SIGNATURES) fail(`${lines.length} signature lines exceed the limit of ${MAX_NOTE_SIGNATURES}`);
  const signatures = lines.map((line, i) => {
    try {
      return parseSignatureLine(line);
    } catch (err) {
      return fail(`signature line ${i + 1}: ${(err as Error).message.replace(/^malformed signature line: /, '')}`);
    }
  });
  return { text, signatures };
}

function verifierIndex(verifiers: readonly NoteVerifier[], fn: string): Map<string, NoteVerifier> {
  if (!Array.isArray(verifiers)) throw new TypeError(`${fn}: verifiers must be an array`);
  const byKey = new Map<string, NoteVerifier>();
  for (const [i, v] of verifiers.entries()) {
    if (!v || typeof v.verify !== 'function' || typeof v.name !== 'string' || !Number.isInteger(v.keyId)) {
      throw new TypeError(`${fn}: verifiers[${i}] is not a NoteVerifier`);
    }
    const k = `${v.name}+${hex8(v.keyId)}`;
    if (byKey.has(k)) throw new RangeError(`${fn}: two verifiers share the name and key ID ${k}`);
    byKey.set(k, v);
  }
  return byKey;
}

/**
 * Opens a signed note: parses it (splitNote) and verifies every signature by a known key.
 * Signatures by unknown keys are ignored [signed-note, "Signatures"]; a repeated signature by
 * one key counts once.
 * @throws LedgerFormatError if malformed; LedgerVerifyError if a signature by a known key fails
 *   (the whole note is rejected) or no known key signed it.
 */
export function openNote(note: string | Uint8Array, verifiers: readonly NoteVerifier[]): OpenedNote {
  const byKey = verifierIndex(verifiers, 'openNote');
  const { text, signatures } = splitNote(note);
  const message = Buffer.from(text, 'utf8');
  const verified: VerifiedSignature[] = [];
  const unknown: NoteSignature[] = [];
  const seen = new Set<string>();
  const unknownLines = new Set<string>();
  for (const sig of signatures) {
    const k = `${sig.name}+${hex8(sig.keyId)}`;
    const v = byKey.get(k);
    if (!v) {
      if (!unknownLines.has(sig.line)) unknown.push(sig);
      unknownLines.add(sig.line);
      continue;
    }
    if (seen.has(k)) continue;
    seen.add(k);
    if (!v.verify(message, sig.signature)) throw new LedgerVerifyError(`signed note: the signature by ${k} does not verify`);
    const entry: VerifiedSignature = { ...sig, type: v.type };
    if (v.type === SIGNATURE_TYPE_COSIGNATURE_V1) entry.timestamp = cosignatureTimestamp(sig.signature);
    verified.push(entry);
  }
  if (verified.length === 0) {
    const found = signatures.map((s) => `${s.name}+${hex8(s.keyId)}`).join(', ');
    throw new LedgerVerifyError(`signed note: no signature by a trusted key (signed by: ${found})`);
  }
  return { text, verified, unknown };
}

/** Formats one signature line "— <name> <base64(keyId || signature)>\n". */
export function formatSignatureLine(name: string, id: number, signature: Uint8Array): string {
  checkKeyName('formatSignatureLine', 'name', name);
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw new RangeError(`formatSignatureLine: id must be a uint32, got ${id}`);
  if (!(signature instanceof Uint8Array) || signature.length === 0) throw new TypeError('formatSignatureLine: signature must be a non-empty Uint8Array');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(id, 0);
  return `${EM_DASH_PREFIX}${name} ${Buffer.concat([head, signature]).toString('base64')}\n`;
}

function checkNoteText(fn: string, text: unknown): string {
  if (typeof text !== 'string') throw new TypeError(`${fn}: text must be a string`);
  if (!text.endsWith('\n')) throw new RangeError(`${fn}: text must end with a newline`);
  const problem = noteProblem(text);
  if (problem) throw new RangeError(`${fn}: text ${problem}`);
  return text;
}

/**
 * Signs `text` (which must end in a newline and hold no control characters but newlines)
 * with each signer and returns the signed note: text, empty line, one line per signer.
 * @throws RangeError/TypeError for invalid text or signers.
 */
export function signNote(text: string, signers: readonly NoteSigner[]): string {
  checkNoteText('signNote', text);
  if (!Array.isArray(signers) || signers.length === 0) throw new RangeError('signNote: signers must be a non-empty array');
  const message = Buffer.from(text, 'utf8');
  const seen = new Set<string>();
  let lines = '';
  for (const s of signers) {
    const k = `${s.name}+${hex8(s.keyId)}`;
    if (seen.has(k)) throw new RangeError(`signNote: two signers share the name and key ID ${k}`);
    seen.add(k);
    lines += formatSignatureLine(s.name, s.keyId, s.sign(message));
  }
  return `${text}\n${lines}`;
}

/** A tree head: the body of a checkpoint [C2SP tlog-checkpoint, "Note text"]. */
export interface Checkpoint {
  /** Log identity, e.g. `example.com/robot-7`; the log key's name should match it. */
  origin: string;
  /** Number of leaves. */
  size: number;
  /** RFC 6962 root hash of the first `size` leaves, 32 bytes. */
  root: Buffer;
  /** Opaque extension lines (not recommended by the spec; keel writes none). */
  extensions: string[];
}

/**
 * The checkpoint note text "<origin>\n<size>\n<base64 root>\n[<extension>\n...]".
 * @throws RangeError/TypeError for an origin with spaces, '+' or controls, a negative or
 *   unsafe size, a root that is not 32 bytes, or an empty/multi-line extension.
 */
export function formatCheckpoint(cp: { origin: string; size: number; root: Uint8Array; extensions?: readonly string[] }): string {
  checkKeyName('formatCheckpoint', 'origin', cp?.origin);
  if (!Number.isSafeInteger(cp.size) || cp.size < 0) throw new RangeError(`formatCheckpoint: size must be a non-negative safe integer, got ${cp.size}`);
  if (!(cp.root instanceof Uint8Array) || cp.root.length !== HASH_SIZE) throw new RangeError(`formatCheckpoint: root must be ${HASH_SIZE} bytes`);
  let text = `${cp.origin}\n${cp.size}\n${Buffer.from(cp.root).toString('base64')}\n`;
  for (const [i, ext] of (cp.extensions ?? []).entries()) {
    if (typeof ext !== 'string' || ext === '' || ext.includes('\n') || noteProblem(ext)) {
      throw new RangeError(`formatCheckpoint: extensions[${i}] must be a non-empty single line without control characters`);
    }
    text += `${ext}\n`;
  }
  return text;
}

/**
 * Parses checkpoint note text strictly: at least three lines, each ending in a newline; an
 * origin that is a valid key name (non-empty, no spaces, no '+'); a decimal size without
 * leading zeros that is a safe integer; a root in canonical padded base64 of exactly 32 bytes;
 * non-empty extension lines.
 * @throws LedgerFormatError (format `checkpoint`).
 */
export function parseCheckpoint(text: string): Checkpoint {
  const fail = (why: string): never => {
    throw new LedgerFormatError('checkpoint', why);
  };
  if (typeof text !== 'string') return fail(`expected text, got ${typeof text}`);
  if (text.length > MAX_NOTE_SIZE) fail('too long');
  if (!text.endsWith('\n')) fail('does not end with a newline');
  const problem = noteProblem(text);
  if (problem) fail(problem);
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) fail(`expected at least 3 lines (origin, size, root), got ${lines.length}`);
  const [origin, sizeText, rootText, ...extensions] = lines;
  const originProblem = keyNameProblem(origin);
  if (originProblem) fail(`origin ${JSON.stringify(origin)} ${originProblem}`);
  const size = parseDecimal(sizeText);
  if (size === undefined) fail(`tree size ${JSON.stringify(sizeText.slice(0, 40))} is not a decimal without leading zeros below 2^53`);
  const root = decodeBase64(rootText);
  if (!root || root.length !== HASH_SIZE) fail(`root hash ${JSON.stringify(rootText.slice(0, 60))} is not base64 of ${HASH_SIZE} bytes`);
  extensions.forEach((ext, i) => {
    if (ext === '') fail(`extension line ${i + 1} is empty`);
  });
  return { origin, size: size as number, root: root as Buffer, extensions };
}

/** A checkpoint opened from a signed note. */
export interface OpenedCheckpoint {
  /** The parsed tree head. */
  checkpoint: Checkpoint;
  /** The verified note it came from. */
  note: OpenedNote;
}

/**
 * Opens a signed checkpoint: openNote, then parseCheckpoint on its text.
 * @throws LedgerFormatError / LedgerVerifyError as those do.
 */
export function openCheckpoint(signedNote: string | Uint8Array, verifiers: readonly NoteVerifier[]): OpenedCheckpoint {
  const note = openNote(signedNote, verifiers);
  return { checkpoint: parseCheckpoint(note.text), note };
}

/** Largest cosignature timestamp [tlog-cosignature: MUST NOT exceed 2^63 - 1]. */
const MAX_COSIGNATURE_TIME = (1n << 63n) - 1n;

/**
 * The timestamp of a cosignature's signature bytes (after the key ID): the first 8 bytes,
 * big-endian POSIX seconds; undefined if the bytes are not 8 + 64 long or the time exceeds
 * 2^53-1 (keel's limit; the spec's is 2^63-1).
 */
export function cosignatureTimestamp(signature: Uint8Array): number | undefined {
  if (!(signature instanceof Uint8Array) || signature.length !== 8 + ED25519_SIGNATURE_SIZE) return undefined;
  const t = Buffer.from(signature.buffer, signature.byteOffset, 8).readBigUInt64BE(0);
  if (t > MAX_COSIGNATURE_TIME || t > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return Number(t);
}

/**
 * The message an Ed25519 cosignature signs: "cosignature/v1\ntime <timestamp>\n" followed by
 * the checkpoint note text [C2SP tlog-cosignature, "Ed25519 signed message"].
 */
export function cosignatureMessage(checkpointText: string | Uint8Array, timestamp: number): Buffer {
  if (!Number.isSafeInteger(timestamp) || timestamp < 0) throw new RangeError(`cosignatureMessage: timestamp must be a non-negative safe integer, got ${timestamp}`);
  const body = typeof checkpointText === 'string' ? Buffer.from(checkpointText, 'utf8') : checkpointText;
  return Buffer.concat([Buffer.from(`cosignature/v1\ntime ${timestamp}\n`, 'ascii'), body]);
}

/**
 * Cosigns a checkpoint (tlog-cosignature/v1, type 0x04) at `time` (POSIX seconds) with the
 * cosigner's key; returns the signature line "— <name> <base64(keyID || time || sig)>\n",
 * which is also a tlog-witness add-checkpoint response line.
 * @throws LedgerFormatError if checkpointText is not a checkpoint; RangeError/TypeError for
 *   an invalid key, name or time.
 */
export function cosign(checkpointText: string, key: { name: string; privateKey: Uint8Array }, time: number, backend: Ed25519 = defaultEd25519): string {
  parseCheckpoint(checkpointText);
  checkKeyName('cosign', 'key.name', key?.name);
  if (!Number.isSafeInteger(time) || time < 0) throw new RangeError(`cosign: time must be non-negative POSIX seconds, got ${time}`);
  const publicKey = backend.publicKey(key.privateKey);
  const id = keyId(key.name, SIGNATURE_TYPE_COSIGNATURE_V1, publicKey);
  const sig = backend.sign(cosignatureMessage(checkpointText, time), key.privateKey);
  const ts = Buffer.alloc(8);
  ts.writeBigUInt64BE(BigInt(time), 0);
  return formatSignatureLine(key.name, id, Buffer.concat([ts, sig]));
}

/** A verified cosignature. */
export interface Cosignature {
  /** Cosigner key name. */
  name: string;
  /** Cosigner key ID. */
  keyId: number;
  /** When the cosigner signed, POSIX seconds. */
  timestamp: number;
}

/**
 * Verifies one cosignature line over a checkpoint text with the cosigner's key (a verifier
 * key string of type 0x04, or its parsed form).
 * @throws LedgerFormatError if the line or checkpoint is malformed; LedgerVerifyError if the
 *   line is by another key or the signature does not verify.
 */
export function verifyCosignature(checkpointText: string, signatureLine: string, cosigner: string | VerifierKey, backend: Ed25519 = defaultEd25519): Cosignature {
  parseCheckpoint(checkpointText);
  const k = typeof cosigner === 'string' ? parseVerifierKey(cosigner) : cosigner;
  if (k.type !== SIGNATURE_TYPE_COSIGNATURE_V1) throw new RangeError('verifyCosignature: the cosigner key must be of type 0x04 (cosignature/v1)');
  const sig = parseSignatureLine(signatureLine);
  if (sig.name !== k.name || sig.keyId !== k.keyId) {
    throw new LedgerVerifyError(`cosignature is by ${sig.name}+${hex8(sig.keyId)}, not by ${k.name}+${hex8(k.keyId)}`);
  }
  const timestamp = cosignatureTimestamp(sig.signature);
  if (timestamp === undefined) throw new LedgerFormatError('cosignature', `expected 8 timestamp bytes and a ${ED25519_SIGNATURE_SIZE}-byte signature, got ${sig.signature.length} bytes (or a timestamp beyond 2^53-1)`);
  if (!noteVerifier(k, backend).verify(Buffer.from(checkpointText, 'utf8'), sig.signature)) {
    throw new LedgerVerifyError(`cosignature by ${k.name}+${hex8(k.keyId)} does not verify`);
  }
  return { name: k.name, keyId: k.keyId, timestamp };
}
