/**
 * The device's side of operator commands (`<prefix>/<device>/cmd`): opens each operator-signed
 * envelope (wire.ts, COMMAND_DOMAIN), checks signer, target, issue and expiry times and replay,
 * executes it (drive an actuator, sign a checkpoint, sync now, re-publish the birth), records
 * every decision in the ledger as a `command` record, and answers with a device-signed result
 * envelope (RESULT_DOMAIN) that names the record's index.
 *
 * Nothing an operator (or an attacker who reaches the topic) sends can make `handle()` throw:
 * every refusal becomes a `rejected` result and a record. Payloads that are not a verified
 * command record only a SHA-256 of the payload, never the payload itself, and are rate limited
 * (a token bucket) so a flood cannot fill the ledger; what the limit suppressed is counted in
 * the next such record, so nothing vanishes silently.
 *
 * Replay: a command id is remembered until the command expires, in `stateFile` (JSON, replaced
 * atomically: write, fsync, rename, fsync the directory) before the command runs, so neither a
 * restart nor a crash mid-command lets the same envelope run twice. The store is bounded:
 * beyond `maxRemembered` ids the one expiring first is forgotten and its expiry becomes a
 * floor; commands expiring at or before the floor are refused (they might be replays), so the
 * bound never opens a replay hole.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import { KeelError, asError } from '../errors.ts';
import type { RecordInput } from '../ledger/ledger.ts';
import { parseIJson } from '../ledger/jcs.ts';
import type { RecordKind } from '../ledger/records.ts';
import { parseVerifierKey, SIGNATURE_TYPE_ED25519, type VerifierKey } from '../ledger/note.ts';
import {
  COMMAND_DOMAIN,
  MAX_COMMAND_LIFETIME_MS,
  MAX_ENVELOPE_BYTES,
  RESULT_DOMAIN,
  deviceIdProblem,
  openEnvelope,
  sealEnvelope,
  type Command,
  type CommandBody,
  type CommandResultBody,
  type SigningKey,
} from './wire.ts';

/** Clock difference tolerated for a command's issue time, ms (a command from slightly in the future). */
export const COMMAND_SKEW_MS = 60_000;
/** Default bound on remembered command ids. */
export const DEFAULT_MAX_REMEMBERED = 10_000;
/** Longest command id, characters. */
export const MAX_COMMAND_ID_CHARS = 128;
/** Commands waiting for their turn beyond which new ones are refused as busy. */
export const MAX_PENDING_COMMANDS = 64;
/** Token bucket for payloads that are not verified commands: burst size, and refill per second. */
export const UNVERIFIED_BURST = 32;
/** See UNVERIFIED_BURST. */
export const UNVERIFIED_PER_SECOND = 1;

const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** What a command can drive on the device: the runtime (see Runtime.actuate). */
export interface CommandRuntime {
  /**
   * Drives actuator `name` to `value` unless the safe state holds ('suppressed').
   * Throws RangeError for an unknown actuator, anything else for a failed write.
   */
  actuate(name: string, value: number, origin: string): Promise<'applied' | 'suppressed'>;
}

/** Where command records go: the recorder's ledger (durable append, for the index) and its buffer (fallback). */
export interface CommandRecorder {
  readonly ledger: { append(input: RecordInput): Promise<number> };
  add(kind: RecordKind, body: Record<string, unknown>, t?: number): void;
}

/** What the sync layer does for the non-actuator commands. */
export interface CommandActions {
  /** Signs a checkpoint of the ledger now. */
  checkpoint(): Promise<void>;
  /** Starts a sync round now (does not wait for it). */
  sync(): void;
  /** Publishes the status birth again. */
  rebirth(): void;
}

/** Options of createCommandHandler. */
export interface CommandHandlerOptions {
  /** This device's id: commands for any other target are refused. */
  device: string;
  /** The device key, which signs the results (name = the ledger origin). */
  key: SigningKey;
  /** Trusted operator verifier keys (type 0x01 strings or parsed). */
  operators: readonly (string | VerifierKey)[];
  runtime: CommandRuntime;
  recorder: CommandRecorder;
  clock: Clock;
  /** The replay store, e.g. `<ledger dir>/commands.json`. */
  stateFile: string;
  actions: CommandActions;
  logger?: Logger;
  /** Bound on remembered ids (default DEFAULT_MAX_REMEMBERED). */
  maxRemembered?: number;
}

/** The handler: `handle` takes a /cmd payload and resolves with the /cmd/result payload (undefined when rate limited). */
export interface CommandHandler {
  handle(payload: Uint8Array): Promise<Buffer | undefined>;
}

/** A refusal with its reason (never leaves this module). */
class Refusal extends Error {}

/** The persisted replay store. */
interface ReplayState {
  v: 1;
  /** Commands expiring at or before this (epoch ms) are refused: their ids may have been forgotten. */
  floor: number;
  /** Remembered ids and their expiry, epoch ms. */
  seen: Record<string, number>;
}

/** Why `body` is not a well-formed CommandBody, or undefined. */
export function commandProblem(body: unknown): string | undefined {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return 'command body must be a JSON object';
  const b = body as Record<string, unknown>;
  if (b.v !== 1) return `command version ${JSON.stringify(b.v)} is not supported (1)`;
  if (typeof b.id !== 'string' || !ID_PATTERN.test(b.id)) return `command id must be 1-${MAX_COMMAND_ID_CHARS} letters, digits, '.', '_', ':' or '-'`;
  const dp = deviceIdProblem(b.device);
  if (dp) return `command target: ${dp}`;
  if (!Number.isSafeInteger(b.issuedAt) || (b.issuedAt as number) < 0) return 'command issuedAt must be epoch milliseconds';
  if (!Number.isSafeInteger(b.expiresAt) || (b.expiresAt as number) < 0) return 'command expiresAt must be epoch milliseconds';
  const extra = Object.keys(b).filter((k) => !['v', 'id', 'device', 'issuedAt', 'expiresAt', 'command'].includes(k));
  if (extra.length) return `command has unknown fields: ${extra.slice(0, 5).join(', ')}`;
  const c = b.command as Record<string, unknown> | null;
  if (c === null || typeof c !== 'object' || Array.isArray(c)) return 'command.command must be an object with a type';
  const keys = Object.keys(c);
  switch (c.type) {
    case 'actuate':
      if (typeof c.actuator !== 'string' || c.actuator.length === 0 || c.actuator.length > 64) return 'actuate needs an actuator name';
      if (typeof c.value !== 'number' || !Number.isFinite(c.value)) return 'actuate needs a finite number value';
      if (keys.length !== 3) return 'actuate takes exactly {type, actuator, value}';
      return undefined;
    case 'checkpoint':
    case 'sync':
    case 'rebirth':
      if (keys.length !== 1) return `${c.type} takes no arguments`;
      return undefined;
    default:
      return `unknown command type ${JSON.stringify(String(c.type).slice(0, 40))} (actuate, checkpoint, sync, rebirth)`;
  }
}

/** Reads the replay store; a missing file is empty, a damaged one is refused loudly (it guards against replay). */
function loadReplay(file: string): ReplayState {
  if (!existsSync(file)) return { v: 1, floor: 0, seen: {} };
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new KeelError('KEEL_E_SYNC', `command replay store ${file} is unreadable (${asError(err).message}); move it away only if no command issued in the last ${MAX_COMMAND_LIFETIME_MS / 3_600_000} h may be replayed`);
  }
  const s = raw as Partial<ReplayState> | null;
  if (!s || s.v !== 1 || !Number.isSafeInteger(s.floor) || s.seen === null || typeof s.seen !== 'object' || Array.isArray(s.seen) || !Object.values(s.seen).every((x) => Number.isSafeInteger(x))) {
    throw new KeelError('KEEL_E_SYNC', `command replay store ${file} is not a keel replay store`);
  }
  return { v: 1, floor: s.floor as number, seen: { ...(s.seen as Record<string, number>) } };
}

/** Replaces `file` atomically and durably: write a temporary, fsync, rename, fsync the directory. */
function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    const bytes = Buffer.from(text);
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  let dfd: number | undefined;
  try {
    dfd = openSync(path.dirname(file), 'r');
    fsyncSync(dfd);
  } catch {
    // some filesystems refuse fsync on a directory; the file itself is durable
  } finally {
    if (dfd !== undefined) closeSync(dfd);
  }
}

/** A short printable excerpt of an untrusted string for records and results. */
function excerpt(s: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u001f\u007f]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

/**
 * Builds the device's command handler. Reads the replay store now.
 * @throws TypeError/RangeError for bad options; KeelError (KEEL_E_SYNC) if the replay store
 *   exists but is damaged (refusing to start is safer than forgetting which commands ran).
 */
export function createCommandHandler(o: CommandHandlerOptions): CommandHandler {
  if (!o || typeof o !== 'object') throw new TypeError('options must be an object');
  const dp = deviceIdProblem(o.device);
  if (dp) throw new RangeError(`device: ${dp}`);
  if (!o.key || typeof o.key.name !== 'string' || !(o.key.privateKey instanceof Uint8Array)) throw new TypeError('key must be a SigningKey {name, privateKey}');
  if (!Array.isArray(o.operators)) throw new TypeError('operators must be an array of verifier keys');
  const operators = o.operators.map((k, i) => {
    const vk = typeof k === 'string' ? parseVerifierKey(k) : k;
    if (vk.type !== SIGNATURE_TYPE_ED25519) throw new RangeError(`operators[${i}]: an operator key must be of type 0x01 (Ed25519), not a cosigner key`);
    return vk;
  });
  if (typeof o.runtime?.actuate !== 'function') throw new TypeError('runtime must have actuate(name, value, origin)');
  if (typeof o.recorder?.add !== 'function' || typeof o.recorder.ledger?.append !== 'function') throw new TypeError('recorder must be a LedgerRecorder');
  if (typeof o.clock?.now !== 'function') throw new TypeError('clock must be a Clock');
  if (typeof o.stateFile !== 'string' || o.stateFile === '') throw new TypeError('stateFile must be a path');
  for (const a of ['checkpoint', 'sync', 'rebirth'] as const) if (typeof o.actions?.[a] !== 'function') throw new TypeError(`actions.${a} must be a function`);
  const maxRemembered = o.maxRemembered ?? DEFAULT_MAX_REMEMBERED;
  if (!Number.isSafeInteger(maxRemembered) || maxRemembered < 1) throw new RangeError(`maxRemembered must be a positive integer, got ${maxRemembered}`);
  const { clock, recorder, logger } = o;
  const replay = loadReplay(o.stateFile);

  // Token bucket for unverified payloads (tokens, last refill in monotonic ms).
  let tokens = UNVERIFIED_BURST;
  let refilledAt = clock.monotonic();
  let suppressed = 0;
  let pending = 0;
  let queue: Promise<unknown> = Promise.resolve();

  function takeToken(): boolean {
    const now = clock.monotonic();
    tokens = Math.min(UNVERIFIED_BURST, tokens + ((now - refilledAt) / 1000) * UNVERIFIED_PER_SECOND);
    refilledAt = now;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  }

  /** Appends the record durably (for its index); if the ledger fails, the recorder keeps it and retries. */
  async function record(body: Record<string, unknown>): Promise<number | undefined> {
    const t = clock.now();
    try {
      return await recorder.ledger.append({ kind: 'command', body, t });
    } catch (err) {
      logger?.error({ err: asError(err).message, command: body.id }, 'command record not written now; kept in the recorder buffer');
      recorder.add('command', body, t);
      return undefined;
    }
  }

  function answer(id: string, status: CommandResultBody['status'], reason: string | undefined, index: number | undefined): Buffer {
    const body: CommandResultBody = { v: 1, id, device: o.device, status, t: clock.now() };
    if (reason !== undefined) body.reason = reason;
    if (index !== undefined) body.record = index;
    return sealEnvelope(RESULT_DOMAIN, body, o.key);
  }

  /** Drops expired ids; the floor only ever rises. */
  function prune(now: number): void {
    for (const [id, exp] of Object.entries(replay.seen)) if (exp <= now) delete replay.seen[id];
  }

  /** Remembers `id` until `expiresAt`, durably, before the command runs. */
  function remember(id: string, expiresAt: number, now: number): void {
    prune(now);
    replay.seen[id] = expiresAt;
    let ids = Object.keys(replay.seen);
    if (ids.length > maxRemembered) {
      // Forget the soonest-expiring ids; raise the floor to their expiry so they stay refused.
      ids = ids.sort((a, b) => replay.seen[a] - replay.seen[b]);
      for (const victim of ids.slice(0, ids.length - maxRemembered)) {
        replay.floor = Math.max(replay.floor, replay.seen[victim]);
        delete replay.seen[victim];
      }
    }
    writeAtomic(o.stateFile, JSON.stringify(replay));
  }

  /** Checks a verified, well-formed command against target, clock and replay. Throws Refusal. */
  function admit(cmd: CommandBody): void {
    if (cmd.device !== o.device) throw new Refusal(`command is for device "${cmd.device}", not "${o.device}"`);
    const now = clock.now();
    const lifetime = cmd.expiresAt - cmd.issuedAt;
    if (lifetime <= 0 || lifetime > MAX_COMMAND_LIFETIME_MS) throw new Refusal(`command lifetime ${lifetime} ms is not within 1..${MAX_COMMAND_LIFETIME_MS} ms`);
    if (cmd.issuedAt > now + COMMAND_SKEW_MS) throw new Refusal(`command is issued ${Math.round((cmd.issuedAt - now) / 1000)} s in the future (check the clocks)`);
    if (cmd.expiresAt <= now) throw new Refusal(`command expired ${Math.round((now - cmd.expiresAt) / 1000)} s ago`);
    if (Object.hasOwn(replay.seen, cmd.id)) throw new Refusal(`command ${cmd.id} was already received (replay)`);
    if (cmd.expiresAt <= replay.floor) throw new Refusal('command expires before ids the device has forgotten (replay store overflow); send a fresh command with a later expiry');
    try {
      remember(cmd.id, cmd.expiresAt, now);
    } catch (err) {
      // Without a durable record of the id, running it could allow a replay after a restart.
      delete replay.seen[cmd.id];
      throw new Refusal(`cannot persist the replay store (${asError(err).message}); command not run`);
    }
  }

  /** Runs an admitted command; resolves the outcome. */
  async function execute(cmd: CommandBody): Promise<{ status: 'done' | 'rejected' | 'failed'; reason?: string }> {
    const c: Command = cmd.command;
    try {
      switch (c.type) {
        case 'actuate': {
          const r = await o.runtime.actuate(c.actuator, c.value, `command:${cmd.id}`);
          return r === 'applied' ? { status: 'done' } : { status: 'rejected', reason: 'the safe state holds: actuators follow only the safe state until it recovers' };
        }
        case 'checkpoint':
          await o.actions.checkpoint();
          return { status: 'done' };
        case 'sync':
          o.actions.sync();
          return { status: 'done' };
        case 'rebirth':
          o.actions.rebirth();
          return { status: 'done' };
      }
    } catch (err) {
      if (err instanceof RangeError) return { status: 'rejected', reason: excerpt(err.message.replace(/^name: /, '')) };
      return { status: 'failed', reason: excerpt(asError(err).message) };
    }
  }

  /** Refuses a payload that is not a verified command: rate limited, recorded by digest. */
  async function refuseUnverified(payload: Uint8Array, reason: string, claimed: { id?: string; key?: string }): Promise<Buffer | undefined> {
    if (!takeToken()) {
      suppressed++;
      return undefined;
    }
    const body: Record<string, unknown> = {
      id: claimed.id ?? '?',
      status: 'rejected',
      reason,
      payload: { bytes: payload.length, sha256: createHash('sha256').update(payload).digest('hex') },
    };
    if (claimed.key !== undefined) body.claimedSigner = claimed.key;
    if (suppressed > 0) {
      body.suppressedBefore = suppressed;
      suppressed = 0;
    }
    logger?.warn({ id: body.id, reason }, 'command rejected');
    const index = await record(body);
    return answer(claimed.id ?? '?', 'rejected', reason, index);
  }

  /** The whole decision for one payload. Never throws. */
  async function decide(payload: Uint8Array): Promise<Buffer | undefined> {
    if (!(payload instanceof Uint8Array)) return refuseUnverified(new Uint8Array(0), 'payload is not bytes', {});
    if (payload.length > MAX_ENVELOPE_BYTES) return refuseUnverified(payload, `payload of ${payload.length} bytes exceeds ${MAX_ENVELOPE_BYTES}`, {});
    let body: CommandBody;
    let signer: VerifierKey;
    try {
      ({ body, signer } = openEnvelope<CommandBody>(COMMAND_DOMAIN, payload, operators));
    } catch (err) {
      return refuseUnverified(payload, excerpt(asError(err).message), claimedFields(payload));
    }
    const signerLabel = `${signer.name}+${signer.keyId.toString(16).padStart(8, '0')}`;
    const problem = commandProblem(body);
    if (problem) {
      // Signed by a trusted operator but malformed: record it with the signer, not rate limited.
      const id = typeof (body as { id?: unknown }).id === 'string' && ID_PATTERN.test((body as { id: string }).id) ? (body as { id: string }).id : '?';
      const index = await record({ id, signer: signerLabel, status: 'rejected', reason: problem });
      return answer(id, 'rejected', problem, index);
    }
    let outcome: { status: 'done' | 'rejected' | 'failed'; reason?: string };
    try {
      admit(body);
      outcome = await execute(body);
    } catch (err) {
      outcome = err instanceof Refusal ? { status: 'rejected', reason: excerpt(err.message) } : { status: 'failed', reason: excerpt(`internal error: ${asError(err).message}`) };
    }
    const rec: Record<string, unknown> = { id: body.id, signer: signerLabel, command: body.command, status: outcome.status, issuedAt: body.issuedAt, expiresAt: body.expiresAt };
    if (body.device !== o.device) rec.target = body.device;
    if (outcome.reason !== undefined) rec.reason = outcome.reason;
    const log = outcome.status === 'done' ? logger?.info.bind(logger) : logger?.warn.bind(logger);
    log?.({ id: body.id, signer: signerLabel, command: body.command.type, status: outcome.status, reason: outcome.reason }, 'command');
    const index = await record(rec);
    return answer(body.id, outcome.status, outcome.reason, index);
  }

  return {
    async handle(payload: Uint8Array): Promise<Buffer | undefined> {
      if (pending >= MAX_PENDING_COMMANDS) {
        try {
          return await refuseUnverified(payload instanceof Uint8Array ? payload : new Uint8Array(0), `device busy: ${pending} commands waiting`, {});
        } catch {
          return undefined;
        }
      }
      pending++;
      // One command at a time: the replay check, its persistence and the action stay ordered.
      const run = queue.then(() => decide(payload));
      queue = run.catch(() => undefined);
      try {
        return await run;
      } catch (err) {
        // A bug, not an input: still never thrown at the transport.
        logger?.error({ err: asError(err).message }, 'command handler failed');
        try {
          return answer('?', 'failed', excerpt(`internal error: ${asError(err).message}`), undefined);
        } catch {
          return undefined;
        }
      } finally {
        pending--;
      }
    },
  };

  /** The id and key label an unverifiable envelope claims, if they are sane (for the answer only). */
  function claimedFields(payload: Uint8Array): { id?: string; key?: string } {
    try {
      const env = parseIJson(Buffer.from(payload).toString('utf8')) as { body?: { id?: unknown }; key?: unknown } | null;
      const id = typeof env?.body?.id === 'string' && ID_PATTERN.test(env.body.id) ? env.body.id : undefined;
      const key = typeof env?.key === 'string' ? excerpt(env.key, 100) : undefined;
      return { id, key };
    } catch {
      return {};
    }
  }
}

