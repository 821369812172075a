/**
 * The operator console: `keel fleet devices | tail | verify | proof | send`.
 *
 * - devices: the registry joined with status, verified state, forks and rejects (fleet.db).
 * - tail: a device's live telemetry, each message's signature checked with the enrolled key,
 *   sequence gaps and restarts shown.
 * - verify: re-verifies everything the fleet holds for a device from the stored bytes alone:
 *   every leaf hash, record canonical form and numbering, the root against the device-signed
 *   checkpoint, the device's signature and the fleet's cosignature. Streams rows, so a million
 *   records take seconds and constant memory.
 * - proof: a C2SP tlog-proof for one stored record.
 * - send: an operator-signed command (COMMAND_DOMAIN envelope), waiting for the device's
 *   signed answer on /cmd/result.
 *
 * Human output on a terminal, JSON lines with --json. Exit codes: 0 ok, 1 failed (verification,
 * command rejected/failed/timed out, broker or database trouble), 2 usage.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { KeelError, asError } from '../runtime/errors.ts';
import { canonicalBytes } from '../runtime/ledger/jcs.ts';
import { HASH_SIZE, leafHash, nodeHash } from '../runtime/ledger/hash.ts';
import { loadKeyFile } from '../runtime/ledger/keys.ts';
import { inclusionProof, type SubtreeHashes } from '../runtime/ledger/merkle.ts';
import { noteVerifier, openCheckpoint, openNote, parseVerifierKey, splitNote, verifyCosignature, SIGNATURE_TYPE_COSIGNATURE_V1, SIGNATURE_TYPE_ED25519, type VerifierKey } from '../runtime/ledger/note.ts';
import { formatTlogProof, verifyTlogProof } from '../runtime/ledger/proof.ts';
import {
  COMMAND_DOMAIN,
  DEFAULT_PREFIX,
  MAX_COMMAND_LIFETIME_MS,
  RESULT_DOMAIN,
  TELEMETRY_DOMAIN,
  deviceIdProblem,
  deviceTopics,
  openEnvelope,
  prefixProblem,
  sealEnvelope,
  type Command,
  type CommandBody,
  type CommandResultBody,
  type StatusBody,
  type TelemetryBody,
} from '../runtime/sync/wire.ts';
import { CompactRange } from './compact-range.ts';
import { deviceRow, openFleetDb, type FleetDb } from './db.ts';

/** Output channels of the console (the CLI's Io plus optional raw writers). */
export interface ConsoleIo {
  /** Writes one line to stdout. */
  out: (s: string) => void;
  /** Writes one line to stderr. */
  err: (s: string) => void;
  /** Whether stderr is a terminal (progress lines). */
  isTTY?: boolean;
  /** Whether stdout is a terminal. */
  outTTY?: boolean;
  /** Writes text to stdout exactly (public formats keep their own newlines). Default: process.stdout. */
  raw?: (s: string) => void;
  /** Writes text to stderr exactly (a progress line redrawn with \r). Default: process.stderr. */
  errRaw?: (s: string) => void;
  /** Environment (credentials); default process.env. */
  env?: Record<string, string | undefined>;
  /** Stops `tail` when aborted (default: SIGINT/SIGTERM). */
  signal?: AbortSignal;
}

/** Exit codes of the console. */
export const CONSOLE_EXIT = { ok: 0, failed: 1, usage: 2 } as const;

/** Default fleet state directory. */
export const DEFAULT_STATE_DIR = './fleet-state';

/** How often a progress line is redrawn, ms. */
const PROGRESS_EVERY_MS = 100;
/** Longest wait for the broker's CONNACK / SUBACK / PUBACK, ms (mqtt.js can hang on a dropped link). */
const BROKER_TIMEOUT_MS = 10_000;
/** How soon `tail` reconnects after losing the broker, ms. */
const TAIL_RECONNECT_MS = 1000;

const HELP: Record<string, string> = {
  devices: `Usage: keel fleet devices [--state DIR] [--json]

Lists enrolled devices: online (and connection counter), last seen, backlog (ledger size at
the last birth minus what the fleet verified), last verified size, faults, rejected input,
and a FORK alarm when the fleet holds two inconsistent signed checkpoints of the device.

Options:
      --state <dir>    fleet state directory (default ${DEFAULT_STATE_DIR}, or $KEEL_FLEET_STATE)
      --json           one JSON array
  -h, --help           show this help`,
  tail: `Usage: keel fleet tail <device> --broker URL [options]

Prints a device's live telemetry. Each message's signature is checked with the device's
enrolled key; unverifiable messages are flagged, never shown as values. Gaps in the sequence
and device restarts are shown. Runs until Ctrl-C (or --count / --duration).

Options:
      --broker <url>   mqtt://, mqtts:// or ws:// URL (or $KEEL_FLEET_BROKER)
      --user <name>    broker user (or $KEEL_FLEET_USER)
      --password <s>   broker password (or $KEEL_FLEET_PASSWORD; preferred: not visible in ps)
      --prefix <p>     topic prefix (default ${DEFAULT_PREFIX})
      --state <dir>    fleet state directory, for the device's enrolled key
      --vkey <key>     the device's verifier key instead of the database's
      --count <n>      stop after n messages
      --duration <d>   stop after this long (e.g. 30s, 5m)
      --json           one JSON object per message
  -h, --help           show this help`,
  verify: `Usage: keel fleet verify <device> [--state DIR] [--json]

Re-verifies everything the fleet stores for a device, from the stored bytes alone: every
leaf hash, every record's canonical JSON and numbering, the tree root against the stored
device-signed checkpoint, the device's signature and the fleet's cosignature. Names the
first bad record. Exit 0 only if everything verifies.

Options:
      --state <dir>        fleet state directory (default ${DEFAULT_STATE_DIR})
      --fleet-vkey <key>   the fleet's cosigner key (default: <state>/fleet.vkey)
      --json               print the result as JSON
  -h, --help               show this help`,
  proof: `Usage: keel fleet proof <device> <index> [--state DIR] [--json]

Prints a C2SP tlog-proof that record <index> is in the device's log, against the stored
checkpoint (with the fleet's cosignature when it covers the same tree). Any tlog-proof
verifier checks it with the device's verifier key and the record's bytes.

Options:
      --state <dir>    fleet state directory (default ${DEFAULT_STATE_DIR})
      --json           print {"index", "size", "proof", "record", "leafHash"}
  -h, --help           show this help`,
  send: `Usage: keel fleet send <device> <command> [args] --key FILE --broker URL [options]

Commands:
  actuate <actuator> <value>   drive an output (value a number; on/off = 1/0)
  checkpoint                   sign a ledger checkpoint now
  sync                         start a sync round now
  rebirth                      publish the status birth again

Signs the command with the operator key, publishes it (QoS 1) to the device's /cmd topic and
waits for the device's signed answer. Exit 0 when the device did it; 1 when it was rejected,
failed, or no verified answer came in time.

Options:
      --key <file>     operator key (keel keygen; its name is the signer name)
      --broker <url>   mqtt://, mqtts:// or ws:// URL (or $KEEL_FLEET_BROKER)
      --user <name>    broker user (or $KEEL_FLEET_USER)
      --password <s>   broker password (or $KEEL_FLEET_PASSWORD)
      --prefix <p>     topic prefix (default ${DEFAULT_PREFIX})
      --state <dir>    fleet state directory, for the device's enrolled key
      --vkey <key>     the device's verifier key instead of the database's
      --ttl <d>        how long the command stays valid (default 60s, at most 24h)
      --wait <d>       how long to wait for the answer (default 10s)
      --json           print the verified answer as JSON
  -h, --help           show this help`,
};

/** The console's help overview (for `keel fleet --help`). */
export const CONSOLE_HELP = `  devices              enrolled devices: online, last seen, backlog, verified size, faults, alarms
  tail <device>        live telemetry, signatures checked
  verify <device>      re-verify everything stored for a device
  proof <device> <i>   C2SP tlog-proof for record i
  send <device> <cmd>  send an operator-signed command (actuate, checkpoint, sync, rebirth)`;

/** A usage error: printed with a hint, exit 2. */
class UsageError extends Error {}

type Flags = Record<string, string | boolean | undefined>;

function parse(args: string[], options: ParseArgsConfig['options']): { values: Flags; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Flags, positionals: r.positionals };
  } catch (err) {
    throw new UsageError(asError(err).message);
  }
}

function str(v: string | boolean | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Parses a duration: a number with an optional unit ms, s (default), m or h. Returns ms. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag} must be a duration like 500ms, 30s, 5m or 1h, got ${JSON.stringify(text)}`);
  const n = Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} must be positive, got ${JSON.stringify(text)}`);
  return Math.round(n);
}

function checkDevice(id: string | undefined, sub: string): string {
  if (id === undefined) throw new UsageError(`${sub} needs a device id`);
  const p = deviceIdProblem(id);
  if (p) throw new UsageError(p);
  return id;
}

function stateDir(values: Flags, io: ConsoleIo): string {
  return str(values.state) ?? (io.env ?? process.env).KEEL_FLEET_STATE ?? DEFAULT_STATE_DIR;
}

function openDb(dir: string): FleetDb {
  return openFleetDb(path.join(dir, 'fleet.db'), { readonly: true });
}

/**
 * Runs `keel fleet <sub> ...args` for the console subcommands (devices, tail, verify, proof,
 * send). Never throws: usage errors print a hint and give 2, failures print and give 1.
 */
export async function cmdConsole(sub: string, args: string[], io: ConsoleIo): Promise<number> {
  try {
    switch (sub) {
      case 'devices':
        return cmdDevices(args, io);
      case 'tail':
        return await cmdTail(args, io);
      case 'verify':
        return await cmdVerify(args, io);
      case 'proof':
        return cmdProof(args, io);
      case 'send':
        return await cmdSend(args, io);
      default:
        throw new UsageError(`unknown console command "${sub}" (devices, tail, verify, proof, send)`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err instanceof KeelError && err.code === 'KEEL_E_USAGE')) {
      io.err(`keel fleet ${sub}: ${err.message}`);
      io.err(`Run 'keel fleet ${HELP[sub] ? `${sub} ` : ''}--help' for usage.`);
      return CONSOLE_EXIT.usage;
    }
    io.err(`keel fleet ${sub}: ${asError(err).message}`);
    return CONSOLE_EXIT.failed;
  }
}

// ---------------------------------------------------------------------------------------------
// devices

/** One line of `keel fleet devices`. Times are epoch ms. */
export interface DeviceSummary {
  id: string;
  vkey: string;
  enrolledAt: number;
  revokedAt: number | null;
  online: boolean;
  bdSeq: number | null;
  lastSeen: number | null;
  /** Records the device had that the fleet has not verified (at its last birth); null if unknown. */
  backlog: number | null;
  /** Records the fleet holds verified (its verified size). */
  verified: number;
  verifiedAt: number | null;
  faults: number;
  rejects: number;
  forks: number;
}

/** Reads the device summaries from an open fleet database. */
export function deviceSummaries(db: FleetDb): DeviceSummary[] {
  const rows = db
    .prepare(
      `SELECT d.id, d.vkey, d.enrolled_at AS enrolledAt, d.revoked_at AS revokedAt,
              s.online, s.bd_seq AS bdSeq, s.birth, s.last_seen AS lastSeen, s.faults,
              ds.size, ds.updated_at AS verifiedAt,
              (SELECT count(*) FROM forks f WHERE f.device = d.id) AS forks,
              (SELECT count(*) FROM rejects r WHERE r.device = d.id) AS rejects
         FROM devices d
         LEFT JOIN status s ON s.device = d.id
         LEFT JOIN device_state ds ON ds.device = d.id
        ORDER BY d.id`,
    )
    .all() as {
    id: string;
    vkey: string;
    enrolledAt: number;
    revokedAt: number | null;
    online: number | null;
    bdSeq: number | null;
    birth: string | null;
    lastSeen: number | null;
    faults: number | null;
    size: number | null;
    verifiedAt: number | null;
    forks: number;
    rejects: number;
  }[];
  return rows.map((r) => {
    const verified = r.size ?? 0;
    let backlog: number | null = null;
    if (r.birth) {
      try {
        const b = JSON.parse(r.birth) as Partial<StatusBody>;
        // The birth's ledger size is the newest size the fleet heard of; anything verified
        // since (records made after the birth) can make the difference negative: no backlog.
        if (Number.isSafeInteger(b.ledgerSize)) backlog = Math.max(0, (b.ledgerSize as number) - verified);
      } catch {
        // a damaged birth tells nothing about the backlog
      }
    }
    return {
      id: r.id,
      vkey: r.vkey,
      enrolledAt: r.enrolledAt,
      revokedAt: r.revokedAt,
      online: r.online === 1 && r.revokedAt === null,
      bdSeq: r.bdSeq,
      lastSeen: r.lastSeen,
      backlog,
      verified,
      verifiedAt: r.verifiedAt,
      faults: r.faults ?? 0,
      rejects: r.rejects,
      forks: r.forks,
    };
  });
}

/** "12s ago", "3m ago", "2h ago", "4d ago". */
function ago(t: number | null, now: number): string {
  if (t === null) return 'never';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

/** Renders rows as aligned columns. */
function table(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)];
}

function cmdDevices(args: string[], io: ConsoleIo): number {
  const { values, positionals } = parse(args, { state: { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(HELP.devices), CONSOLE_EXIT.ok;
  if (positionals.length) throw new UsageError('devices takes no positional arguments');
  const db = openDb(stateDir(values, io));
  let list: DeviceSummary[];
  try {
    list = deviceSummaries(db);
  } finally {
    db.close();
  }
  if (values.json) {
    io.out(JSON.stringify(list));
    return CONSOLE_EXIT.ok;
  }
  if (list.length === 0) {
    io.out('no devices enrolled (keel fleet enroll <vkey> --name <id>)');
    return CONSOLE_EXIT.ok;
  }
  const now = Date.now();
  const rows = list.map((d) => [
    d.id,
    d.revokedAt !== null ? 'revoked' : d.online ? `yes (#${d.bdSeq})` : d.bdSeq === null ? 'never' : 'no',
    ago(d.lastSeen, now),
    d.backlog === null ? '?' : String(d.backlog),
    String(d.verified),
    String(d.faults),
    String(d.rejects),
    d.forks > 0 ? `FORK (${d.forks})` : '',
  ]);
  for (const l of table(['DEVICE', 'ONLINE', 'LAST SEEN', 'BACKLOG', 'VERIFIED', 'FAULTS', 'REJECTS', 'ALARM'], rows)) io.out(l);
  const forked = list.filter((d) => d.forks > 0);
  if (forked.length) io.err(`ALARM: fork evidence held for ${forked.map((d) => d.id).join(', ')} (keel fleet verify <device>)`);
  return CONSOLE_EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// verify

/** The outcome of re-verifying a device's stored log. */
export interface StoreVerification {
  ok: boolean;
  device: string;
  /** Records held (rows). */
  records: number;
  /** Rows held as hashes only (records the device dropped before delivery). */
  hashOnly: number;
  /** Verified size the fleet recorded. */
  size: number;
  /** The device key that signed the checkpoint, and the fleet key that cosigned it. */
  signer?: string;
  cosigner?: string;
  /** Cosignature time, POSIX seconds. */
  cosignedAt?: number;
  forks: number;
  /** The first problem, with the record index when one is concerned. */
  problem?: { index?: number; reason: string };
}

/** A progress reporter: redraws one line on a terminal every PROGRESS_EVERY_MS. */
function progressLine(io: ConsoleIo, label: string, total: number): { tick(done: number): void; end(): void } {
  if (!io.isTTY) return { tick() {}, end() {} };
  const write = io.errRaw ?? ((s: string) => void process.stderr.write(s));
  const start = performance.now();
  let last = 0;
  let drawn = false;
  const draw = (done: number) => {
    const s = (performance.now() - start) / 1000;
    const pct = total > 0 ? ` (${((100 * done) / total).toFixed(1)}%)` : '';
    write(`\r${label}: ${done}/${total}${pct}, ${s > 0 ? Math.round(done / s) : 0} records/s   `);
    drawn = true;
  };
  return {
    tick(done: number) {
      const now = performance.now();
      if (now - last >= PROGRESS_EVERY_MS) {
        last = now;
        draw(done);
      }
    },
    end() {
      if (drawn) write('\r\x1b[K');
    },
  };
}

function readVkeyArg(v: string, flag: string): string {
  if (v.includes('+')) return v;
  try {
    return readFileSync(v, 'utf8').trim();
  } catch (err) {
    throw new UsageError(`${flag}: ${v} is neither a verifier key (name+id+key) nor a readable file (${asError(err).message})`);
  }
}

/**
 * Re-verifies everything `db` stores for `device` (see `keel fleet verify --help`). `onProgress`
 * is called with the number of rows checked so far (often; throttle it yourself).
 */
export function verifyStoredDevice(db: FleetDb, device: string, opts: { fleetVkey?: string; onProgress?: (done: number, total: number) => void } = {}): StoreVerification {
  const dev = deviceRow(db, device);
  if (!dev) throw new KeelError('KEEL_E_FLEET', `device "${device}" is not enrolled in this fleet`);
  const forks = (db.prepare('SELECT count(*) AS n FROM forks WHERE device = ?').get(device) as { n: number }).n;
  const state = db.prepare('SELECT size, range, checkpoint, cosigned FROM device_state WHERE device = ?').get(device) as
    | { size: number; range: Buffer; checkpoint: string; cosigned: string }
    | undefined;
  const size = state?.size ?? 0;
  const res: StoreVerification = { ok: false, device, records: 0, hashOnly: 0, size, forks };
  const fail = (reason: string, index?: number): StoreVerification => ({ ...res, ok: false, problem: index === undefined ? { reason } : { index, reason } });

  let vkey: VerifierKey;
  try {
    vkey = parseVerifierKey(dev.vkey);
  } catch (err) {
    return fail(`the enrolled key is malformed: ${asError(err).message}`);
  }
  // The cosigned note's checkpoint may be older than the device checkpoint: remember its root
  // when the stream passes its size.
  let cosignedText: string | undefined;
  let cosignedSize = -1;
  if (state) {
    try {
      cosignedText = splitNote(state.cosigned).text;
      cosignedSize = openCheckpoint(state.cosigned, [noteVerifier(vkey)]).checkpoint.size;
    } catch {
      cosignedSize = -1; // reported below with the precise reason
    }
  }
  let cosignedRoot: Buffer | undefined;

  const range = new CompactRange();
  const total = (db.prepare('SELECT count(*) AS n FROM records WHERE device = ?').get(device) as { n: number }).n;
  const rows = db.prepare('SELECT idx, leaf, bytes FROM records WHERE device = ? ORDER BY idx').raw(true);
  let i = 0;
  let hashOnly = 0;
  let problem: { index: number; reason: string } | undefined;
  for (const row of rows.iterate(device) as IterableIterator<[number, Buffer, Buffer | null]>) {
    const [idx, leaf, bytes] = row;
    if (idx !== i) {
      problem = { index: i, reason: idx > i ? `record ${i} is missing (the next stored record is ${idx})` : `record index ${idx} is out of order` };
      break;
    }
    if (!(leaf instanceof Uint8Array) || leaf.length !== HASH_SIZE) {
      problem = { index: i, reason: `the stored leaf hash is not ${HASH_SIZE} bytes` };
      break;
    }
    if (bytes === null) hashOnly++;
    else {
      if (!leafHash(bytes).equals(leaf)) {
        problem = { index: i, reason: 'the record bytes do not hash to the stored leaf hash' };
        break;
      }
      const why = recordProblem(bytes, i);
      if (why) {
        problem = { index: i, reason: why };
        break;
      }
    }
    range.append(leaf);
    i++;
    if (i === cosignedSize) cosignedRoot = range.root();
    if (opts.onProgress && i % 1024 === 0) opts.onProgress(i, total);
  }
  opts.onProgress?.(i, total);
  res.records = problem ? total : i;
  res.hashOnly = hashOnly;
  if (problem) return fail(problem.reason, problem.index);
  if (!state) {
    if (i > 0) return fail(`${i} records are stored but no verified checkpoint is held`, 0);
    return forks > 0 ? fail(`fork evidence held (${forks}): the device signed two inconsistent checkpoints`) : { ...res, ok: true };
  }
  if (i !== size) return fail(i < size ? `record ${i} is missing (verified size ${size})` : `records beyond the verified size ${size} are stored`, Math.min(i, size));

  // The device checkpoint: signed by the enrolled key, origin its name, covering exactly the rows.
  let cpRoot: Buffer;
  try {
    const cp = openCheckpoint(state.checkpoint, [noteVerifier(vkey)]).checkpoint;
    if (cp.origin !== vkey.name) return fail(`the stored checkpoint's origin "${cp.origin}" is not the device key's name "${vkey.name}"`);
    if (cp.size !== size) return fail(`the stored checkpoint is of size ${cp.size}, the verified size is ${size}`);
    cpRoot = cp.root;
  } catch (err) {
    return fail(`the stored checkpoint: ${asError(err).message}`);
  }
  const root = range.root();
  if (!root.equals(cpRoot)) return fail(`the ${size} stored leaves do not hash to the root of the device-signed checkpoint`);
  try {
    if (!CompactRange.fromBytes(state.range).toBytes().equals(range.toBytes())) return fail('the stored compact range does not match the stored leaves');
  } catch (err) {
    return fail(`the stored compact range is malformed: ${asError(err).message}`);
  }
  res.signer = `${vkey.name}+${vkey.keyId.toString(16).padStart(8, '0')}`;

  // The cosigned note: the device's signature and the fleet's cosignature over a checkpoint of
  // these leaves (the same tree, or an earlier size of it).
  const fleetVkey = opts.fleetVkey;
  if (!fleetVkey) return fail('no fleet cosigner key to check the cosignature with (<state>/fleet.vkey or --fleet-vkey)');
  let fleetKey: VerifierKey;
  try {
    fleetKey = parseVerifierKey(fleetVkey);
    if (fleetKey.type !== SIGNATURE_TYPE_COSIGNATURE_V1) return fail('the fleet key is not a cosigner key (type 0x04)');
  } catch (err) {
    return fail(`the fleet key is malformed: ${asError(err).message}`);
  }
  try {
    const opened = openNote(state.cosigned, [noteVerifier(vkey), noteVerifier(fleetKey)]);
    const deviceSig = opened.verified.find((s) => s.type === SIGNATURE_TYPE_ED25519);
    const cosig = opened.verified.find((s) => s.type === SIGNATURE_TYPE_COSIGNATURE_V1);
    if (!deviceSig) return fail('the cosigned checkpoint carries no signature by the device');
    if (!cosig) return fail(`the cosigned checkpoint carries no cosignature by ${fleetKey.name}+${fleetKey.keyId.toString(16).padStart(8, '0')}`);
    const c = verifyCosignature(opened.text, cosig.line, fleetKey);
    const cp = openCheckpoint(state.cosigned, [noteVerifier(vkey)]).checkpoint;
    if (cp.origin !== vkey.name) return fail(`the cosigned checkpoint's origin "${cp.origin}" is not "${vkey.name}"`);
    const expect = cp.size === size ? root : cp.size === cosignedSize ? cosignedRoot : undefined;
    if (cp.size > size || !expect) return fail(`the cosigned checkpoint of size ${cp.size} is not covered by the ${size} stored records`);
    if (!expect.equals(cp.root)) return fail(`the stored leaves do not hash to the root of the cosigned checkpoint of size ${cp.size}`);
    if (cosignedText !== undefined && cp.size === size && cosignedText !== splitNote(state.checkpoint).text) return fail('the cosigned checkpoint differs from the device checkpoint of the same size');
    res.cosigner = `${c.name}+${c.keyId.toString(16).padStart(8, '0')}`;
    res.cosignedAt = c.timestamp;
  } catch (err) {
    return fail(`the cosigned checkpoint: ${asError(err).message}`);
  }
  if (forks > 0) return fail(`fork evidence held (${forks}): the device signed two inconsistent checkpoints (the stored log itself verifies)`);
  return { ...res, ok: true };
}

/** Why stored record bytes are not a keel record at `index`, or undefined. */
function recordProblem(bytes: Buffer, index: number): string | undefined {
  let rec: unknown;
  try {
    rec = JSON.parse(bytes.toString('utf8'));
  } catch {
    return 'the record is not JSON';
  }
  if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) return 'the record is not a JSON object';
  let canon: Uint8Array;
  try {
    canon = canonicalBytes(rec);
  } catch (err) {
    return `the record cannot be canonicalized: ${asError(err).message}`;
  }
  if (!Buffer.from(canon.buffer, canon.byteOffset, canon.byteLength).equals(bytes)) return 'the record is not in RFC 8785 canonical form';
  const seq = (rec as { seq?: unknown }).seq;
  if (seq !== index) return `the record says seq ${JSON.stringify(seq)} at index ${index}`;
  return undefined;
}

function fleetVkeyFor(dir: string, flag: string | undefined): string | undefined {
  if (flag) return readVkeyArg(flag, '--fleet-vkey');
  const f = path.join(dir, 'fleet.vkey');
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined;
}

async function cmdVerify(args: string[], io: ConsoleIo): Promise<number> {
  const { values, positionals } = parse(args, { state: { type: 'string' }, 'fleet-vkey': { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(HELP.verify), CONSOLE_EXIT.ok;
  if (positionals.length !== 1) throw new UsageError('verify takes exactly one device id');
  const device = checkDevice(positionals[0], 'verify');
  const dir = stateDir(values, io);
  const fleetVkey = fleetVkeyFor(dir, str(values['fleet-vkey']));
  const db = openDb(dir);
  let r: StoreVerification;
  let progress: ReturnType<typeof progressLine> | undefined;
  try {
    r = verifyStoredDevice(db, device, {
      fleetVkey,
      onProgress: (done, total) => {
        progress ??= progressLine(io, `verifying ${device}`, total);
        progress.tick(done);
      },
    });
  } finally {
    progress?.end();
    db.close();
  }
  if (values.json) io.out(JSON.stringify(r));
  else if (r.ok) {
    const when = r.cosignedAt !== undefined ? ` at ${new Date(r.cosignedAt * 1000).toISOString()}` : '';
    io.out(
      r.size === 0
        ? `ok: nothing stored for ${device} yet`
        : `ok: ${device}: ${r.records} records verified${r.hashOnly ? ` (${r.hashOnly} held as hashes only: dropped on the device)` : ''}; checkpoint of ${r.size} signed by ${r.signer}, cosigned by ${r.cosigner}${when}`,
    );
  } else io.err(`FAILED: ${device}${r.problem?.index !== undefined ? ` at record ${r.problem.index}` : ''}: ${r.problem?.reason}`);
  return r.ok ? CONSOLE_EXIT.ok : CONSOLE_EXIT.failed;
}

// ---------------------------------------------------------------------------------------------
// proof

/**
 * SubtreeHashes over leaf hashes held in one buffer (32 bytes each): interior nodes are
 * computed on demand. An inclusion proof touches disjoint subtrees, so one proof costs at most
 * size-1 node hashes and no more memory than the leaves.
 */
class LeafBuffer implements SubtreeHashes {
  constructor(
    private readonly leaves: Buffer,
    readonly size: number,
  ) {}
  node(level: number, index: number): Buffer {
    if (level === 0) return this.leaves.subarray(index * HASH_SIZE, (index + 1) * HASH_SIZE);
    return nodeHash(this.node(level - 1, 2 * index), this.node(level - 1, 2 * index + 1));
  }
}

/** A tlog-proof for record `index` of `device`, from the database (see `keel fleet proof --help`). */
export function storedProof(db: FleetDb, device: string, index: number): { proof: string; size: number; record: Buffer | null; leafHash: Buffer } {
  const dev = deviceRow(db, device);
  if (!dev) throw new KeelError('KEEL_E_FLEET', `device "${device}" is not enrolled in this fleet`);
  const state = db.prepare('SELECT size, checkpoint, cosigned FROM device_state WHERE device = ?').get(device) as { size: number; checkpoint: string; cosigned: string } | undefined;
  if (!state || state.size === 0) throw new KeelError('KEEL_E_FLEET', `nothing verified is stored for "${device}" yet`);
  if (index >= state.size) throw new RangeError(`index ${index} is not covered by the stored checkpoint (size ${state.size})`);
  const verifier = noteVerifier(dev.vkey);
  // Prefer the cosigned note (device signature plus the fleet's witness cosignature) when it is
  // the same checkpoint; it is a signed note every tlog-proof verifier reads.
  let note = state.checkpoint;
  try {
    if (splitNote(state.cosigned).text === splitNote(state.checkpoint).text) note = state.cosigned;
  } catch {
    // a malformed cosigned note: fall back to the device checkpoint
  }
  const leaves = Buffer.allocUnsafe(state.size * HASH_SIZE);
  let i = 0;
  let record: Buffer | null = null;
  for (const [idx, leaf, bytes] of db.prepare('SELECT idx, leaf, CASE WHEN idx = ? THEN bytes END FROM records WHERE device = ? AND idx < ? ORDER BY idx').raw(true).iterate(index, device, state.size) as IterableIterator<
    [number, Buffer, Buffer | null]
  >) {
    if (idx !== i) throw new KeelError('KEEL_E_FLEET', `stored records of "${device}" have a hole at ${i} (run keel fleet verify ${device})`);
    if (!(leaf instanceof Uint8Array) || leaf.length !== HASH_SIZE) throw new KeelError('KEEL_E_FLEET', `stored leaf ${i} of "${device}" is not a hash (run keel fleet verify ${device})`);
    leaf.copy(leaves, i * HASH_SIZE);
    if (idx === index) record = bytes;
    i++;
  }
  if (i !== state.size) throw new KeelError('KEEL_E_FLEET', `only ${i} of ${state.size} records of "${device}" are stored (run keel fleet verify ${device})`);
  const lh = Buffer.from(leaves.subarray(index * HASH_SIZE, (index + 1) * HASH_SIZE));
  if (record && !leafHash(record).equals(lh)) throw new KeelError('KEEL_E_FLEET', `stored record ${index} of "${device}" does not hash to its leaf (run keel fleet verify ${device})`);
  const proof = formatTlogProof({ index, proof: inclusionProof(index, state.size, new LeafBuffer(leaves, state.size)), checkpoint: note });
  // Self-check before handing it out: a proof the fleet's own data does not support is a bug or damage.
  verifyTlogProof(proof, lh, [verifier], { origin: parseVerifierKey(dev.vkey).name });
  return { proof, size: state.size, record, leafHash: lh };
}

function cmdProof(args: string[], io: ConsoleIo): number {
  const { values, positionals } = parse(args, { state: { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(HELP.proof), CONSOLE_EXIT.ok;
  if (positionals.length !== 2) throw new UsageError('proof takes a device id and a record index');
  const device = checkDevice(positionals[0], 'proof');
  if (!/^(0|[1-9]\d{0,15})$/.test(positionals[1]) || !Number.isSafeInteger(Number(positionals[1]))) throw new UsageError(`index must be a non-negative integer, got ${JSON.stringify(positionals[1])}`);
  const index = Number(positionals[1]);
  const db = openDb(stateDir(values, io));
  let p: ReturnType<typeof storedProof>;
  try {
    p = storedProof(db, device, index);
  } catch (err) {
    if (err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  } finally {
    db.close();
  }
  if (values.json) io.out(JSON.stringify({ index, size: p.size, proof: p.proof, record: p.record ? p.record.toString('utf8') : null, leafHash: p.leafHash.toString('hex') }));
  else (io.raw ?? ((s: string) => void process.stdout.write(s)))(p.proof);
  if (!values.json && !p.record) io.err(`note: record ${index} is held as a hash only (the device dropped its bytes before delivery)`);
  return CONSOLE_EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// broker (tail, send)

interface BrokerFlags {
  url: string;
  username?: string;
  password?: string;
  prefix: string;
}

function brokerFlags(values: Flags, io: ConsoleIo): BrokerFlags {
  const env = io.env ?? process.env;
  const url = str(values.broker) ?? env.KEEL_FLEET_BROKER;
  if (!url) throw new UsageError('--broker <url> is required (or set KEEL_FLEET_BROKER)');
  if (!/^(mqtts?|wss?|tcp|ssl):\/\//.test(url)) throw new UsageError(`--broker must be an mqtt://, mqtts://, ws:// or wss:// URL, got ${JSON.stringify(url)}`);
  const prefix = str(values.prefix) ?? DEFAULT_PREFIX;
  const pp = prefixProblem(prefix);
  if (pp) throw new UsageError(`--prefix: ${pp}`);
  return { url, username: str(values.user) ?? env.KEEL_FLEET_USER, password: str(values.password) ?? env.KEEL_FLEET_PASSWORD, prefix };
}

/** The device's verifier key: --vkey, else the enrolled one from the database. */
function deviceVkey(values: Flags, io: ConsoleIo, device: string): VerifierKey {
  const flag = str(values.vkey);
  let text: string;
  if (flag) text = readVkeyArg(flag, '--vkey');
  else {
    const dir = stateDir(values, io);
    if (!existsSync(path.join(dir, 'fleet.db'))) throw new UsageError(`no fleet database in ${dir}: pass --state DIR or the device's --vkey`);
    const db = openDb(dir);
    try {
      const row = deviceRow(db, device);
      if (!row) throw new KeelError('KEEL_E_FLEET', `device "${device}" is not enrolled in ${dir} (pass --vkey to use a key directly)`);
      if (row.revokedAt !== null) io.err(`warning: device "${device}" was revoked at ${new Date(row.revokedAt).toISOString()}`);
      text = row.vkey;
    } finally {
      db.close();
    }
  }
  let vk: VerifierKey;
  try {
    vk = parseVerifierKey(text);
  } catch (err) {
    throw new UsageError(`the device key is malformed: ${asError(err).message}`);
  }
  if (vk.type !== SIGNATURE_TYPE_ED25519) throw new UsageError('the device key must be an Ed25519 signing key (type 0x01)');
  return vk;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new KeelError('KEEL_E_FLEET', `${what}: no answer from the broker within ${ms} ms`, { retryable: true })), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Connects (MQTT 3.1.1, clean session); rejects with a clear message on refusal or timeout. */
async function connect(b: BrokerFlags, role: string, reconnect: boolean): Promise<MqttClient> {
  const client = mqtt.connect(b.url, {
    protocolVersion: 4,
    clean: true,
    clientId: `keel-${role}-${randomBytes(6).toString('hex')}`,
    username: b.username,
    password: b.password,
    reconnectPeriod: 0,
    connectTimeout: BROKER_TIMEOUT_MS,
    keepalive: 30,
  });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        client.once('connect', () => resolve());
        client.once('error', (err) => reject(err));
        client.once('close', () => reject(new Error('the broker closed the connection')));
      }),
      BROKER_TIMEOUT_MS,
      `connecting to ${b.url}`,
    );
  } catch (err) {
    client.end(true);
    const e = asError(err) as Error & { code?: number };
    const why = e.code === 4 || e.code === 5 || /Not authorized|Bad User/i.test(e.message) ? 'the broker refused the credentials (--user/--password or KEEL_FLEET_USER/KEEL_FLEET_PASSWORD)' : e.message;
    throw new KeelError('KEEL_E_FLEET', `cannot connect to ${b.url}: ${why}`, { cause: err, retryable: true });
  }
  client.removeAllListeners('error');
  client.on('error', () => undefined); // reported through 'close' / timeouts; never crash
  // Only after the first connect: refused credentials must fail at once, not retry forever.
  if (reconnect) client.options.reconnectPeriod = TAIL_RECONNECT_MS;
  return client;
}

async function disconnect(client: MqttClient): Promise<void> {
  await withTimeout(client.endAsync(), 2000, 'disconnecting').catch(() => client.end(true));
}

// ---------------------------------------------------------------------------------------------
// tail

/** Why a verified telemetry body is malformed, or undefined. */
function telemetryProblem(b: Partial<TelemetryBody>, device: string): string | undefined {
  if (b.device !== device) return `signed for device ${JSON.stringify(b.device)}, not ${device}`;
  if (!Number.isSafeInteger(b.seq) || (b.seq as number) < 0) return 'seq is not a non-negative integer';
  if (typeof b.boot !== 'string' || b.boot.length === 0 || b.boot.length > 64) return 'boot is not a short string';
  if (typeof b.t !== 'number' || !Number.isFinite(b.t)) return 't is not a time';
  if (!b.values || typeof b.values !== 'object' || Array.isArray(b.values) || !Object.values(b.values).every((v) => typeof v === 'number' && Number.isFinite(v))) return 'values must map names to finite numbers';
  return undefined;
}

/** Options of the commands that talk to the broker and check signatures against the registry (tail, send). */
const BROKER_OPTIONS = {
  broker: { type: 'string' },
  user: { type: 'string' },
  password: { type: 'string' },
  prefix: { type: 'string' },
  state: { type: 'string' },
  vkey: { type: 'string' },
} as const;

async function cmdTail(args: string[], io: ConsoleIo): Promise<number> {
  const { values, positionals } = parse(args, {
    ...BROKER_OPTIONS,
    count: { type: 'string' },
    duration: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.help) return io.out(HELP.tail), CONSOLE_EXIT.ok;
  if (positionals.length !== 1) throw new UsageError('tail takes exactly one device id');
  const device = checkDevice(positionals[0], 'tail');
  const b = brokerFlags(values, io);
  const count = str(values.count);
  if (count !== undefined && !/^[1-9]\d{0,9}$/.test(count)) throw new UsageError(`--count must be a positive integer, got ${JSON.stringify(count)}`);
  const limit = count === undefined ? Infinity : Number(count);
  const durationMs = str(values.duration) === undefined ? undefined : parseDuration(str(values.duration)!, '--duration');
  const vkey = deviceVkey(values, io, device);
  const topics = deviceTopics(b.prefix, device);
  const client = await connect(b, 'tail', true);
  const json = Boolean(values.json);
  let seen = 0;
  let unverified = 0;
  let boot: string | undefined;
  let lastSeq = -1;
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const onMessage = (topic: string, payload: Buffer) => {
    if (topic === topics.status) {
      try {
        const s = JSON.parse(payload.toString('utf8')) as Partial<StatusBody>;
        const line = `status: ${s.online ? 'online' : 'offline'} (connection #${String(s.bdSeq)})${s.backlog !== undefined ? `, backlog ${s.backlog}` : ''}`;
        if (json) io.out(JSON.stringify({ status: s }));
        else io.out(line);
      } catch {
        // status is informative only
      }
      return;
    }
    if (topic !== topics.telemetry) return;
    let body: TelemetryBody;
    try {
      body = openEnvelope<TelemetryBody>(TELEMETRY_DOMAIN, payload, [vkey]).body;
      const p = telemetryProblem(body, device);
      if (p) throw new Error(p);
    } catch (err) {
      unverified++;
      const reason = asError(err).message;
      if (json) io.out(JSON.stringify({ verified: false, reason, bytes: payload.length }));
      else io.out(`UNVERIFIED message (${payload.length} bytes): ${reason}`);
      return;
    }
    const notes: string[] = [];
    let gap: number | undefined;
    if (boot !== body.boot) {
      if (boot !== undefined) notes.push(`device restarted (boot ${body.boot})`);
      boot = body.boot;
    } else if (body.seq > lastSeq + 1) {
      gap = body.seq - lastSeq - 1;
      notes.push(`gap: ${gap} message${gap === 1 ? '' : 's'} missed`);
    } else if (body.seq <= lastSeq) notes.push(`out of order (seq ${body.seq} after ${lastSeq})`);
    lastSeq = Math.max(lastSeq, body.seq);
    if (json) io.out(JSON.stringify({ verified: true, device, seq: body.seq, boot: body.boot, t: body.t, values: body.values, ...(gap !== undefined ? { gap } : {}), ...(notes.length ? { notes } : {}) }));
    else {
      for (const n of notes) io.out(`-- ${n}`);
      const vals = Object.entries(body.values)
        .map(([k, v]) => `${k}=${Number(v.toPrecision(6))}`) // 6 significant digits, no trailing zeros
        .join(' ');
      io.out(`${new Date(body.t).toISOString().slice(11, 23)}  #${body.seq}  ${vals}`);
    }
    if (++seen >= limit) finish();
  };
  client.on('message', onMessage);
  let lost = false;
  client.on('offline', () => {
    if (!lost) io.err('link to the broker lost; reconnecting...');
    lost = true;
  });
  client.on('connect', () => {
    if (lost) io.err('reconnected');
    lost = false;
  });
  const timers: NodeJS.Timeout[] = [];
  const onSignal = () => finish();
  const signal = io.signal;
  if (signal) signal.addEventListener('abort', onSignal, { once: true });
  else {
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  }
  try {
    await withTimeout(client.subscribeAsync([topics.telemetry, topics.status], { qos: 1 }), BROKER_TIMEOUT_MS, 'subscribing');
    if (!json) io.err(`tailing ${topics.telemetry} (signatures checked with ${vkey.name}+${vkey.keyId.toString(16).padStart(8, '0')}); Ctrl-C stops`);
    if (durationMs !== undefined) timers.push(setTimeout(finish, durationMs));
    if (signal?.aborted) finish();
    await done;
  } finally {
    for (const t of timers) clearTimeout(t);
    if (signal) signal.removeEventListener('abort', onSignal);
    else {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    client.off('message', onMessage);
    await disconnect(client);
  }
  if (!json) io.err(`${seen} verified message${seen === 1 ? '' : 's'}${unverified ? `, ${unverified} UNVERIFIED` : ''}`);
  return unverified > 0 ? CONSOLE_EXIT.failed : CONSOLE_EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// send

/** Parses `send`'s command words into a Command. */
export function parseCommandWords(words: string[]): Command {
  const [type, ...rest] = words;
  switch (type) {
    case 'actuate': {
      if (rest.length !== 2) throw new UsageError('actuate takes <actuator> <value>');
      const [actuator, raw] = rest;
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(actuator)) throw new UsageError(`actuator name ${JSON.stringify(actuator)} is not a valid name`);
      const named: Record<string, number> = { on: 1, off: 0, true: 1, false: 0 };
      const value = raw in named ? named[raw] : Number(raw);
      if (raw.trim() === '' || !Number.isFinite(value)) throw new UsageError(`value must be a number (or on/off), got ${JSON.stringify(raw)}`);
      return { type: 'actuate', actuator, value };
    }
    case 'checkpoint':
    case 'sync':
    case 'rebirth':
      if (rest.length) throw new UsageError(`${type} takes no arguments`);
      return { type };
    case undefined:
      throw new UsageError('send needs a command: actuate, checkpoint, sync or rebirth');
    default:
      throw new UsageError(`unknown command "${type}" (actuate, checkpoint, sync, rebirth)`);
  }
}

function describeCommand(c: Command): string {
  return c.type === 'actuate' ? `actuate ${c.actuator}=${c.value}` : c.type;
}

async function cmdSend(args: string[], io: ConsoleIo): Promise<number> {
  const { values, positionals } = parse(args, {
    key: { type: 'string', short: 'k' },
    ...BROKER_OPTIONS,
    ttl: { type: 'string' },
    wait: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (values.help) return io.out(HELP.send), CONSOLE_EXIT.ok;
  const device = checkDevice(positionals[0], 'send');
  const command = parseCommandWords(positionals.slice(1));
  const keyFile = str(values.key);
  if (!keyFile) throw new UsageError('send needs --key <operator key file>');
  const ttl = parseDuration(str(values.ttl) ?? '60s', '--ttl');
  if (ttl > MAX_COMMAND_LIFETIME_MS) throw new UsageError(`--ttl must be at most ${MAX_COMMAND_LIFETIME_MS / 3_600_000}h`);
  const wait = parseDuration(str(values.wait) ?? '10s', '--wait');
  const b = brokerFlags(values, io);
  const vkey = deviceVkey(values, io, device);
  const key = loadKeyFile(keyFile);
  // The signer name must be the one the device trusts: the name in the key file, as `keel id` prints it.
  const signing = { name: key.name ?? 'keel-device', privateKey: key.privateKey };
  const topics = deviceTopics(b.prefix, device);
  const now = Date.now();
  const body: CommandBody = { v: 1, id: randomBytes(16).toString('hex'), device, issuedAt: now, expiresAt: now + ttl, command };
  const envelope = sealEnvelope(COMMAND_DOMAIN, body, signing);

  const client = await connect(b, 'send', false);
  let result: CommandResultBody | undefined;
  let forged = 0;
  try {
    let resolve!: (r: CommandResultBody) => void;
    const answered = new Promise<CommandResultBody>((r) => (resolve = r));
    client.on('message', (topic, payload) => {
      if (topic !== topics.cmdResult) return;
      let r: CommandResultBody;
      try {
        r = openEnvelope<CommandResultBody>(RESULT_DOMAIN, payload, [vkey]).body;
      } catch (err) {
        // Someone else's answer, or a forgery: never taken as the device's word.
        if (payload.includes(body.id)) {
          forged++;
          io.err(`warning: an answer naming this command does not verify with the device key: ${asError(err).message}`);
        }
        return;
      }
      if (r.id !== body.id) return;
      if (r.device !== device) {
        io.err(`warning: an answer for this command names device ${JSON.stringify(r.device)}`);
        return;
      }
      resolve(r);
    });
    await withTimeout(client.subscribeAsync(topics.cmdResult, { qos: 1 }), BROKER_TIMEOUT_MS, 'subscribing to the result topic');
    await withTimeout(client.publishAsync(topics.cmd, envelope, { qos: 1 }), Math.min(BROKER_TIMEOUT_MS, wait), 'publishing the command');
    if (io.isTTY && !values.json) io.err(`sent ${describeCommand(command)} to ${device} (id ${body.id}); waiting up to ${wait / 1000} s for its answer...`);
    let timer: NodeJS.Timeout | undefined;
    result = await Promise.race([answered, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), wait)))]);
    clearTimeout(timer);
  } finally {
    await disconnect(client);
  }
  if (!result) {
    const msg = `no verified answer from ${device} within ${wait / 1000} s${forged ? ` (${forged} unverifiable)` : ''}; the device may be offline (the command stays valid until ${new Date(body.expiresAt).toISOString()})`;
    if (values.json) io.out(JSON.stringify({ id: body.id, device, status: 'timeout', reason: msg }));
    else io.err(`timeout: ${msg}`);
    return CONSOLE_EXIT.failed;
  }
  if (values.json) io.out(JSON.stringify({ ...result, verified: `${vkey.name}+${vkey.keyId.toString(16).padStart(8, '0')}` }));
  else {
    const rec = result.record !== undefined ? ` (device ledger record ${result.record})` : ' (not yet in the device ledger)';
    const line = `${result.status}: ${describeCommand(command)} on ${device}${result.reason ? `: ${result.reason}` : ''}${rec}`;
    if (result.status === 'done') io.out(line);
    else io.err(line);
  }
  return result.status === 'done' ? CONSOLE_EXIT.ok : CONSOLE_EXIT.failed;
}
