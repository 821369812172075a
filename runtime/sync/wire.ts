/**
 * The fleet wire formats shared by the device (runtime/sync) and the fleet (fleet/): MQTT
 * topics, the ledger batch, the device's connect token, and signed JSON envelopes for
 * commands, command results and telemetry. docs/fleet.md is the normative description.
 *
 * Everything signed here is signed over RFC 8785 (JCS) bytes behind a domain-separation line
 * (`keel-token/v1\n`, `keel-command/v1\n`, ...), so a signature made for one purpose can
 * never be replayed as another, and never collides with a signed-note or cosignature message.
 */
import { randomBytes } from 'node:crypto';
import { KeelError } from '../errors.ts';
import { canonicalBytes, parseIJson } from '../ledger/jcs.ts';
import { defaultEd25519, type Ed25519 } from '../ledger/keys.ts';
import { keyId, parseVerifierKey, SIGNATURE_TYPE_ED25519, type VerifierKey } from '../ledger/note.ts';

/** Device ids: also an MQTT topic level, so no '/', '+', '#', and no leading '$' or '_'. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Default MQTT topic prefix. */
export const DEFAULT_PREFIX = 'keel';

/** Why `id` is not a valid device id, or undefined. */
export function deviceIdProblem(id: unknown): string | undefined {
  if (typeof id !== 'string') return `device id must be a string, got ${typeof id}`;
  if (!DEVICE_ID_PATTERN.test(id)) return `device id "${id.slice(0, 80)}" must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`;
  return undefined;
}

/** Why `prefix` is not a valid topic prefix, or undefined (one or more plain topic levels). */
export function prefixProblem(prefix: unknown): string | undefined {
  if (typeof prefix !== 'string' || !/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(prefix) || prefix.length > 128) {
    return `topic prefix must be plain topic levels of letters, digits, '.', '_' or '-' separated by '/', got ${JSON.stringify(prefix)}`;
  }
  return undefined;
}

/** The topics of one device under `prefix` (see docs/fleet.md). */
export interface DeviceTopics {
  /** Retained birth (online) and Will (offline), tagged with a per-connection counter. */
  status: string;
  /** Ledger batches, QoS 1, device to fleet. */
  log: string;
  /** The fleet's cosigned checkpoint (retained), fleet to device. */
  ack: string;
  /** The fleet's refusal of a batch (JSON), fleet to device. */
  nack: string;
  /** Signed live values, QoS 0. */
  telemetry: string;
  /** Operator-signed commands, QoS 1. */
  cmd: string;
  /** Device-signed command outcomes, QoS 1. */
  cmdResult: string;
  /** The device's whole subtree, for ACLs and subscriptions. */
  subtree: string;
}

/** Topics for `device` under `prefix`. */
export function deviceTopics(prefix: string, device: string): DeviceTopics {
  const p = prefixProblem(prefix) ?? deviceIdProblem(device);
  if (p) throw new RangeError(p);
  const base = `${prefix}/${device}`;
  return {
    status: `${base}/status`,
    log: `${base}/log`,
    ack: `${base}/ack`,
    nack: `${base}/nack`,
    telemetry: `${base}/telemetry`,
    cmd: `${base}/cmd`,
    cmdResult: `${base}/cmd/result`,
    subtree: `${base}/#`,
  };
}

/** The fleet's retained state topic: `{"online":true|false,...}`; devices send backlog only while online. */
export function fleetStateTopic(prefix: string): string {
  const p = prefixProblem(prefix);
  if (p) throw new RangeError(p);
  return `${prefix}/_fleet/state`;
}

/** Splits `<prefix>/<device>/<rest>` into device and rest, or undefined if it is not under prefix. */
export function parseDeviceTopic(prefix: string, topic: string): { device: string; rest: string } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const tail = topic.slice(prefix.length + 1);
  const slash = tail.indexOf('/');
  if (slash <= 0) return undefined;
  const device = tail.slice(0, slash);
  if (deviceIdProblem(device)) return undefined;
  return { device, rest: tail.slice(slash + 1) };
}

function wireError(message: string): KeelError {
  return new KeelError('KEEL_E_WIRE', message);
}

function authError(message: string): KeelError {
  return new KeelError('KEEL_E_AUTH', message);
}

// ---------------------------------------------------------------------------------------------
// Ledger batch

/** "KLB1": a keel ledger batch, version 1. */
export const BATCH_MAGIC = Buffer.from('KLB1', 'ascii');
/** Largest batch accepted, bytes (whole MQTT payload). */
export const MAX_BATCH_BYTES = 8 * 1024 * 1024;
/** Most entries in one batch. */
export const MAX_BATCH_ENTRIES = 100_000;
/** Largest JSON header, bytes (it carries the signed checkpoint). */
export const MAX_BATCH_HEADER_BYTES = 64 * 1024;
/** Entry kinds: the record's exact bytes, or only its RFC 6962 leaf hash (record dropped on the device). */
export const ENTRY_RECORD = 0;
export const ENTRY_HASH = 1;

/** The JSON header of a batch. */
export interface BatchHeader {
  /** Format version, 1. */
  v: 1;
  /** Device id (must equal the MQTT topic's device). */
  device: string;
  /** Index of the first entry. */
  start: number;
  /** Number of entries; start + count is the size of `checkpoint`. */
  count: number;
  /** The device-signed checkpoint (C2SP signed note) of size start + count. */
  checkpoint: string;
}

/** One batch entry: a record's bytes, or the leaf hash of a record the device no longer holds. */
export type BatchEntry = { kind: 'record'; bytes: Uint8Array } | { kind: 'hash'; hash: Uint8Array };

/** A decoded batch. */
export interface Batch {
  header: BatchHeader;
  entries: BatchEntry[];
}

/**
 * Encodes a batch: "KLB1", u32 BE header length, the header as JCS JSON, then per entry a kind
 * byte, a u32 BE length and the bytes (the record, or a 32-byte leaf hash).
 */
export function encodeBatch(batch: Batch): Buffer {
  const { header, entries } = batch;
  if (header.count !== entries.length) throw new RangeError(`batch header count ${header.count} but ${entries.length} entries`);
  const head = Buffer.from(canonicalBytes(header));
  let total = 8 + head.length;
  for (const e of entries) total += 5 + (e.kind === 'record' ? e.bytes.length : e.hash.length);
  const out = Buffer.allocUnsafe(total);
  BATCH_MAGIC.copy(out, 0);
  out.writeUInt32BE(head.length, 4);
  head.copy(out, 8);
  let p = 8 + head.length;
  for (const e of entries) {
    const bytes = e.kind === 'record' ? e.bytes : e.hash;
    out[p] = e.kind === 'record' ? ENTRY_RECORD : ENTRY_HASH;
    out.writeUInt32BE(bytes.length, p + 1);
    out.set(bytes, p + 5);
    p += 5 + bytes.length;
  }
  return out;
}

function checkIndex(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw wireError(`batch header ${what} must be a non-negative integer`);
  return v;
}

/** Decodes and shape-checks a batch (not its signatures or hashes: that is ingest's job). */
export function decodeBatch(payload: Uint8Array): Batch {
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (buf.length > MAX_BATCH_BYTES) throw wireError(`batch of ${buf.length} bytes exceeds ${MAX_BATCH_BYTES}`);
  if (buf.length < 8 || !buf.subarray(0, 4).equals(BATCH_MAGIC)) throw wireError('not a keel batch (no KLB1 magic)');
  const hlen = buf.readUInt32BE(4);
  if (hlen > MAX_BATCH_HEADER_BYTES || 8 + hlen > buf.length) throw wireError(`batch header length ${hlen} is out of bounds`);
  let raw: unknown;
  try {
    raw = parseIJson(buf.subarray(8, 8 + hlen).toString('utf8'));
  } catch (err) {
    throw wireError(`batch header is not JSON: ${(err as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw wireError('batch header must be a JSON object');
  const h = raw as Record<string, unknown>;
  if (h.v !== 1) throw wireError(`batch version ${String(h.v)} is not supported (1)`);
  const idp = deviceIdProblem(h.device);
  if (idp) throw wireError(`batch header: ${idp}`);
  const start = checkIndex(h.start, 'start');
  const count = checkIndex(h.count, 'count');
  if (count === 0 || count > MAX_BATCH_ENTRIES) throw wireError(`batch count must be 1..${MAX_BATCH_ENTRIES}, got ${count}`);
  if (typeof h.checkpoint !== 'string' || h.checkpoint.length === 0 || h.checkpoint.length > MAX_BATCH_HEADER_BYTES) throw wireError('batch header checkpoint must be a signed note');
  const entries: BatchEntry[] = new Array(count);
  let p = 8 + hlen;
  for (let i = 0; i < count; i++) {
    if (p + 5 > buf.length) throw wireError(`batch ends inside entry ${i} of ${count}`);
    const kind = buf[p];
    const len = buf.readUInt32BE(p + 1);
    p += 5;
    if (len > buf.length - p) throw wireError(`batch entry ${i} length ${len} runs past the payload`);
    const bytes = buf.subarray(p, p + len);
    p += len;
    if (kind === ENTRY_RECORD) entries[i] = { kind: 'record', bytes };
    else if (kind === ENTRY_HASH) {
      if (len !== 32) throw wireError(`batch entry ${i}: a hash entry must be 32 bytes, got ${len}`);
      entries[i] = { kind: 'hash', hash: bytes };
    } else throw wireError(`batch entry ${i} has unknown kind ${kind}`);
  }
  if (p !== buf.length) throw wireError(`batch has ${buf.length - p} bytes after its last entry`);
  return { header: { v: 1, device: h.device as string, start, count, checkpoint: h.checkpoint }, entries };
}

// ---------------------------------------------------------------------------------------------
// Signed JSON: tokens and envelopes

const b64url = (b: Uint8Array): string => Buffer.from(b).toString('base64url');

function fromB64url(s: string, what: string): Buffer {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw wireError(`${what} is not base64url`);
  return Buffer.from(s, 'base64url');
}

/** A signing key: an Ed25519 seed under a signed-note key name. */
export interface SigningKey {
  name: string;
  privateKey: Uint8Array;
}

/** `name+hexid` naming the Ed25519 key (the verifier key string without its public key). */
export function keyLabel(name: string, publicKey: Uint8Array): string {
  return `${name}+${keyId(name, SIGNATURE_TYPE_ED25519, publicKey).toString(16).padStart(8, '0')}`;
}

function labelOf(vkey: VerifierKey): string {
  return `${vkey.name}+${vkey.keyId.toString(16).padStart(8, '0')}`;
}

function signDomain(domain: string, body: unknown, key: SigningKey, backend: Ed25519): { label: string; sig: Buffer } {
  const msg = Buffer.concat([Buffer.from(`${domain}\n`), canonicalBytes(body)]);
  const publicKey = backend.publicKey(key.privateKey);
  return { label: keyLabel(key.name, publicKey), sig: Buffer.from(backend.sign(msg, key.privateKey)) };
}

/** Token domain line. */
export const TOKEN_DOMAIN = 'keel-token/v1';
/** Longest token lifetime the fleet accepts, seconds. */
export const MAX_TOKEN_LIFETIME_S = 3600;
/** Clock skew tolerated between device and fleet, seconds. */
export const TOKEN_SKEW_S = 300;
/** Longest token accepted, characters (MQTT passwords are small). */
export const MAX_TOKEN_CHARS = 2048;

/** Claims of a connect token. Times are POSIX seconds. */
export interface TokenClaims {
  /** Audience: the fleet's name (its witness key name), so a token for one fleet is useless at another. */
  aud: string;
  /** Subject: the device id (must equal the MQTT username). */
  sub: string;
  iat: number;
  exp: number;
  /** Unique id: the fleet refuses a second connect with the same one (replay). */
  jti: string;
}

/**
 * A connect token for MQTT's password field: `v1.<base64url(JCS claims)>.<base64url(signature)>`,
 * the signature over "keel-token/v1\n" || JCS(claims) with the device key.
 */
export function mintToken(
  o: { device: string; audience: string; key: SigningKey; nowMs: number; lifetimeS?: number },
  backend: Ed25519 = defaultEd25519,
): string {
  const iat = Math.floor(o.nowMs / 1000);
  const lifetime = o.lifetimeS ?? 600;
  if (!Number.isInteger(lifetime) || lifetime < 1 || lifetime > MAX_TOKEN_LIFETIME_S) throw new RangeError(`lifetimeS must be 1..${MAX_TOKEN_LIFETIME_S}, got ${lifetime}`);
  const claims: TokenClaims = { aud: o.audience, sub: o.device, iat, exp: iat + lifetime, jti: randomBytes(12).toString('base64url') };
  const { sig } = signDomain(TOKEN_DOMAIN, claims, o.key, backend);
  return `v1.${b64url(canonicalBytes(claims))}.${b64url(sig)}`;
}

/** Reads a token's claims without verifying it (to find which device's key to check it with). */
export function readToken(token: string): { claims: TokenClaims; signed: Buffer; sig: Buffer } {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_CHARS) throw wireError('token is missing or too long');
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== 'v1') throw wireError('token must be v1.<claims>.<signature>');
  const claimBytes = fromB64url(parts[1], 'token claims');
  const sig = fromB64url(parts[2], 'token signature');
  let raw: unknown;
  try {
    raw = parseIJson(claimBytes.toString('utf8'));
  } catch {
    throw wireError('token claims are not JSON');
  }
  const c = raw as Partial<TokenClaims> | null;
  if (
    !c || typeof c !== 'object' || typeof c.aud !== 'string' || typeof c.sub !== 'string' || typeof c.jti !== 'string' || c.jti.length === 0 || c.jti.length > 64 ||
    !Number.isSafeInteger(c.iat) || !Number.isSafeInteger(c.exp) || Object.keys(c).length !== 5
  ) {
    throw wireError('token claims must be exactly {aud, sub, iat, exp, jti}');
  }
  const claims = c as TokenClaims;
  // Verify over the canonical form, so a token re-encoded with other whitespace or key order fails.
  if (!Buffer.from(canonicalBytes(claims)).equals(claimBytes)) throw wireError('token claims are not in canonical (JCS) form');
  return { claims, signed: Buffer.concat([Buffer.from(`${TOKEN_DOMAIN}\n`), claimBytes]), sig };
}

/**
 * Verifies a token for `device` against its enrolled verifier key, the fleet's audience and the
 * clock (expiry, not-yet-valid, over-long lifetime). Replay (a reused jti) is the caller's check.
 * @throws KeelError KEEL_E_AUTH (or KEEL_E_WIRE for a malformed token).
 */
export function verifyToken(
  token: string,
  o: { device: string; audience: string; vkey: string | VerifierKey; nowMs: number },
  backend: Ed25519 = defaultEd25519,
): TokenClaims {
  const { claims, signed, sig } = readToken(token);
  const vk = typeof o.vkey === 'string' ? parseVerifierKey(o.vkey) : o.vkey;
  if (vk.type !== SIGNATURE_TYPE_ED25519) throw authError('the enrolled key is not an Ed25519 signing key');
  if (sig.length !== 64 || !backend.verify(sig, signed, vk.publicKey)) throw authError(`token signature does not verify with ${labelOf(vk)}`);
  if (claims.sub !== o.device) throw authError(`token is for device "${claims.sub}", not "${o.device}"`);
  if (claims.aud !== o.audience) throw authError(`token is for fleet "${claims.aud}", not "${o.audience}"`);
  const now = Math.floor(o.nowMs / 1000);
  if (claims.exp - claims.iat > MAX_TOKEN_LIFETIME_S || claims.exp <= claims.iat) throw authError(`token lifetime ${claims.exp - claims.iat} s is not within 1..${MAX_TOKEN_LIFETIME_S} s`);
  if (claims.iat > now + TOKEN_SKEW_S) throw authError('token is issued in the future (check the device clock)');
  if (claims.exp + TOKEN_SKEW_S <= now) throw authError('token has expired');
  return claims;
}

/** Envelope domains. */
export const COMMAND_DOMAIN = 'keel-command/v1';
export const RESULT_DOMAIN = 'keel-cmd-result/v1';
export const TELEMETRY_DOMAIN = 'keel-telemetry/v1';
/** Largest envelope accepted, bytes. */
export const MAX_ENVELOPE_BYTES = 64 * 1024;

/** A signed JSON envelope as sent: `{"body":{...},"key":"name+hexid","sig":"base64"}` (JCS). */
export interface Envelope<T> {
  body: T;
  key: string;
  sig: string;
}

/** Signs `body` under `domain` with `key`; returns the envelope's JCS bytes. */
export function sealEnvelope(domain: string, body: object, key: SigningKey, backend: Ed25519 = defaultEd25519): Buffer {
  const { label, sig } = signDomain(domain, body, key, backend);
  return Buffer.from(canonicalBytes({ body, key: label, sig: sig.toString('base64') }));
}

/**
 * Parses and verifies an envelope under `domain` against `trusted` verifier keys (type 0x01).
 * Returns the body and which key signed. Unknown signer, bad signature or shape: KeelError.
 */
export function openEnvelope<T = Record<string, unknown>>(
  domain: string,
  payload: Uint8Array | string,
  trusted: readonly (string | VerifierKey)[],
  backend: Ed25519 = defaultEd25519,
): { body: T; signer: VerifierKey } {
  const text = typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8');
  if (Buffer.byteLength(text) > MAX_ENVELOPE_BYTES) throw wireError(`envelope exceeds ${MAX_ENVELOPE_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = parseIJson(text);
  } catch (err) {
    throw wireError(`envelope is not JSON: ${(err as Error).message}`);
  }
  const env = raw as Partial<Envelope<unknown>> | null;
  if (!env || typeof env !== 'object' || Array.isArray(env) || env.body === null || typeof env.body !== 'object' || Array.isArray(env.body) || typeof env.key !== 'string' || typeof env.sig !== 'string') {
    throw wireError('envelope must be {"body": {...}, "key": "name+keyid", "sig": "base64"}');
  }
  const keys = trusted.map((k) => (typeof k === 'string' ? parseVerifierKey(k) : k));
  const signer = keys.find((k) => k.type === SIGNATURE_TYPE_ED25519 && labelOf(k) === env.key);
  if (!signer) throw authError(`envelope is signed by ${env.key.slice(0, 100)}, which is not a trusted key`);
  const sig = Buffer.from(env.sig, 'base64');
  const msg = Buffer.concat([Buffer.from(`${domain}\n`), canonicalBytes(env.body)]);
  if (sig.length !== 64 || !backend.verify(sig, msg, signer.publicKey)) throw authError(`envelope signature by ${env.key} does not verify`);
  return { body: env.body as T, signer };
}

// ---------------------------------------------------------------------------------------------
// Message bodies

/** Retained status: birth (online) or the MQTT Will (offline). `bdSeq` grows by one per connection. */
export interface StatusBody {
  online: boolean;
  device: string;
  /** Per-connection counter (Sparkplug's bdSeq): a status with a lower one is stale. */
  bdSeq: number;
  /** Present in births. */
  version?: string;
  models?: { name: string; sha256: string }[];
  /** Ledger size, delivered (cosigned) size and backlog at birth. */
  ledgerSize?: number;
  delivered?: number;
  backlog?: number;
  t?: number;
}

/** A command the operator signs (COMMAND_DOMAIN). Times are milliseconds since the epoch. */
export interface CommandBody {
  v: 1;
  /** Unique id; the device refuses a second command with the same one. */
  id: string;
  /** Target device id. */
  device: string;
  issuedAt: number;
  expiresAt: number;
  command: Command;
}

/** What a command asks for. */
export type Command =
  | { type: 'actuate'; actuator: string; value: number }
  | { type: 'checkpoint' }
  | { type: 'sync' }
  | { type: 'rebirth' };

/** Longest command validity accepted by a device, ms. */
export const MAX_COMMAND_LIFETIME_MS = 24 * 3600 * 1000;

/** The device's signed answer to a command (RESULT_DOMAIN). */
export interface CommandResultBody {
  v: 1;
  /** The command id (or "?" when the envelope could not be read). */
  id: string;
  device: string;
  status: 'done' | 'rejected' | 'failed';
  reason?: string;
  /** Ledger index of the record of this outcome, when recorded. */
  record?: number;
  t: number;
}

/** Signed live values (TELEMETRY_DOMAIN). */
export interface TelemetryBody {
  device: string;
  /** Counter per device process start; with `boot` it orders messages and exposes gaps. */
  seq: number;
  boot: string;
  t: number;
  values: Record<string, number>;
}
