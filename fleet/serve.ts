/**
 * `keel fleet ...`: the fleet's command line. This file runs the broker and the registry
 * (`serve`, `enroll`, `revoke`, `user`) and dispatches the console (`devices`, `tail`,
 * `verify`, `proof`, `send`: fleet/console.ts) and the stand-alone ingest worker (`ingest`:
 * fleet/ingest-main.ts).
 *
 * `keel fleet serve` keeps everything in one state directory: fleet.db (the registry and
 * every verified record), fleet.key (the fleet's witness key, made on first start, mode 0600)
 * and fleet.vkey (its cosigner verifier key, type 0x04, for device configs). It runs the
 * embedded broker and, in the same process, the ingest, which connects over localhost with a
 * credential that exists only in this process's memory.
 *
 * Exit codes are those of runtime/cli.ts: 0 ok, 1 failure, 2 usage.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Level } from 'pino';
import { SystemClock } from '../runtime/clock.ts';
import { KeelError, asError } from '../runtime/errors.ts';
import { generateKeyFile, loadKeyFile, type DeviceKey } from '../runtime/ledger/keys.ts';
import { SIGNATURE_TYPE_COSIGNATURE_V1, verifierKey } from '../runtime/ledger/note.ts';
import { createLogger } from '../runtime/ops/log.ts';
import { DEFAULT_PREFIX, prefixProblem } from '../runtime/sync/wire.ts';
import { BROKER_DEFAULTS, startBroker, type FleetBroker } from './broker.ts';
import { cmdConsole, CONSOLE_HELP } from './console.ts';
import { openFleetDb, type FleetDb } from './db.ts';
import { Ingest, INGEST_DEFAULTS } from './ingest.ts';
import { cmdIngest, INGEST_HELP } from './ingest-main.ts';
import { addPrincipal, enroll, listPrincipals, revoke, revokePrincipal, type PrincipalRole } from './registry.ts';

/** Exit codes (the same as runtime/cli.ts EXIT). */
export const FLEET_EXIT = { ok: 0, failure: 1, usage: 2, forced: 130 } as const;

/** Default state directory (or $KEEL_FLEET_STATE). */
export const DEFAULT_FLEET_STATE = './fleet-state';
/** Default fleet name (the witness key's name) on first start. */
export const DEFAULT_FLEET_NAME = 'keel-fleet';
/** Name of the in-process ingest credential ("_" prefix: never a device or registry name). */
export const INGEST_PRINCIPAL = '_ingest';

/** Output channels (runtime/cli.ts passes its Io). */
export interface FleetIo {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Whether stderr / stdout are terminals. */
  isTTY?: boolean;
  outTTY?: boolean;
  /** Environment (KEEL_FLEET_STATE ...); default process.env. */
  env?: Record<string, string | undefined>;
  /** Stops `serve` when aborted (besides SIGINT/SIGTERM). */
  signal?: AbortSignal;
}

const STATE_OPT = `      --state <dir>    fleet state directory (default ${DEFAULT_FLEET_STATE}, or $KEEL_FLEET_STATE)`;

/** Help texts of `keel fleet` and its subcommands. */
export const FLEET_HELP: Record<string, string> = {
  fleet: `Usage: keel fleet <command> [options]

Broker and registry:
  serve                run the fleet broker (MQTT, TLS, WebSocket) and ingest until SIGINT/SIGTERM
  enroll <vkey|@file>  allow a device key to connect (its verifier key, from "keel id")
  revoke <device>      stop a device from connecting; a running broker disconnects it
  user add <name>      add an operator or service (prints its generated secret once)
  user revoke <name>   revoke an operator or service
  user list            list operators and services
Console:
${CONSOLE_HELP}
Scale-out:
  ingest               a stand-alone ingest worker against any MQTT broker

Run 'keel fleet <command> --help' for a command's options.
Exit codes: 0 ok, 1 failure, 2 usage.`,
  serve: `Usage: keel fleet serve [options]

Runs the embedded MQTT broker (aedes; MQTT 3.1.1) with device authentication and topic ACLs,
and the ingest (verify, store, cosign) in one process, until SIGINT or SIGTERM. On first start
it creates the state directory, the fleet witness key (fleet.key, mode 0600) and its cosigner
verifier key (fleet.vkey: put it in every device's sync.fleet). Logs are JSON lines on
stdout; the cosigner key and the listening addresses are also printed on stderr.

Options:
${STATE_OPT}
  -p, --port <n>       MQTT TCP port (default 1883; 0 picks a free one)
      --host <addr>    address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
      --tls-port <n>   also serve MQTT over TLS on this port (needs --cert and --key)
      --cert <file>    TLS certificate chain (PEM)
      --key <file>     TLS private key (PEM)
      --ws-port <n>    also serve MQTT over WebSocket on this port (for browsers)
      --ws-path <p>    WebSocket path (default ${BROKER_DEFAULTS.wsPath})
      --prefix <p>     topic prefix (default ${DEFAULT_PREFIX})
      --name <fleet>   fleet name for a new fleet key (default ${DEFAULT_FLEET_NAME}); the token audience
      --no-ingest      run the broker only (ingest runs elsewhere: keel fleet ingest)
  -l, --log-level <l>  trace, debug, info, warn, error, fatal, silent (default info)
  -d, --duration <s>   stop after this many seconds
  -h, --help           show this help`,
  enroll: `Usage: keel fleet enroll <vkey|@file> [options]

Allows a device to connect: its Ed25519 verifier key (type 0x01, as "keel id" prints it, or
@file holding it). The device id is the key's name unless --name is given; it must equal the
device's device.name. Enrolling the same key again changes nothing.

Options:
      --name <id>      device id (default: the key's name)
      --reenroll       restore a revoked device (same id, same key)
${STATE_OPT}
      --json           print {"id", "vkey", "outcome"}
  -h, --help           show this help`,
  revoke: `Usage: keel fleet revoke <device> [options]

Stops a device from connecting. A running broker disconnects it within a second. Its stored
records stay. "keel fleet enroll --reenroll" undoes it.

Options:
${STATE_OPT}
      --json           print {"id", "revokedAt"}
  -h, --help           show this help`,
  user: `Usage: keel fleet user <add|revoke|list> [options]

  add <name> --role operator|service [--vkey <key|@file>]
                       add a principal; prints its generated secret once (the fleet keeps
                       only a salted scrypt hash). It logs in with username <name> and the
                       secret as password. --vkey registers an operator's command-signing key.
  revoke <name>        revoke a principal; a running broker disconnects it within a second
  list                 list principals

Options:
      --role <r>       operator (publishes commands, reads status and results) or
                       service (anything under the prefix: ingest workers)
      --vkey <key>     operator command-signing verifier key (keel id), or @file
${STATE_OPT}
      --json           JSON output
  -h, --help           show this help`,
  ingest: INGEST_HELP,
};

/** A usage error: printed with a hint, exit 2. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly sub: string,
  ) {
    super(message);
  }
}

type Flags = Record<string, string | boolean | undefined>;

function parse(sub: string, args: string[], options: ParseArgsConfig['options']): { values: Flags; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Flags, positionals: r.positionals };
  } catch (err) {
    throw new UsageError(asError(err).message, sub);
  }
}

const str = (v: string | boolean | undefined): string | undefined => (typeof v === 'string' ? v : undefined);

function stateDir(values: Flags, io: FleetIo): string {
  const dir = str(values.state) ?? (io.env ?? process.env).KEEL_FLEET_STATE ?? DEFAULT_FLEET_STATE;
  if (dir === '') throw new UsageError('--state must not be empty', 'fleet');
  return dir;
}

function port(v: string | boolean | undefined, flag: string, sub: string): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'string' && /^\d{1,5}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 0 && n <= 65535)) throw new UsageError(`${flag} must be a port number 0..65535, got ${JSON.stringify(v)}`, sub);
  return n;
}

/** Reads a key argument: the key itself, or @file holding it (first non-empty line). */
function keyArgument(arg: string, what: string, sub: string): string {
  if (!arg.startsWith('@')) return arg.trim();
  const file = arg.slice(1);
  if (file === '') throw new UsageError(`${what}: "@" must be followed by a file name`, sub);
  let text: string;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new KeelError('KEEL_E_FLEET', `${file} is not a regular file`);
    if (st.size > 16 * 1024) throw new KeelError('KEEL_E_FLEET', `${file} is ${st.size} bytes; a verifier key file is one short line`);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof KeelError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new KeelError('KEEL_E_FLEET', `cannot read ${what} file ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : asError(err).message}`);
  }
  const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l !== '');
  if (!line) throw new KeelError('KEEL_E_FLEET', `${file} is empty; expected a verifier key (keel id)`);
  return line;
}

/**
 * Runs `keel fleet <args>`; resolves with the exit code. Never throws: usage errors print a
 * hint (exit 2), failures print the reason (exit 1).
 */
export async function cmdFleet(args: string[], io: FleetIo): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case undefined:
        io.err(FLEET_HELP.fleet);
        return FLEET_EXIT.usage;
      case 'help':
      case '-h':
      case '--help':
        io.out(rest[0] && FLEET_HELP[rest[0]] ? FLEET_HELP[rest[0]] : FLEET_HELP.fleet);
        return FLEET_EXIT.ok;
      case 'serve':
        return await cmdServe(rest, io);
      case 'enroll':
        return cmdEnroll(rest, io);
      case 'revoke':
        return cmdRevoke(rest, io);
      case 'user':
        return await cmdUser(rest, io);
      case 'devices':
      case 'tail':
      case 'verify':
      case 'proof':
      case 'send':
        return await cmdConsole(sub, rest, io);
      case 'ingest':
        return await cmdIngest(rest, io, { signal: io.signal });
      default:
        throw new UsageError(`unknown fleet command "${sub}"`, 'fleet');
    }
  } catch (err) {
    if (err instanceof UsageError || (err instanceof KeelError && err.code === 'KEEL_E_USAGE')) {
      const where = err instanceof UsageError ? err.sub : (sub ?? 'fleet');
      io.err(`keel fleet${where === 'fleet' ? '' : ` ${where}`}: ${err.message}`);
      io.err(`Run 'keel fleet ${where !== 'fleet' && FLEET_HELP[where] ? `${where} ` : ''}--help' for usage.`);
      return FLEET_EXIT.usage;
    }
    io.err(`keel fleet ${sub}: ${asError(err).message}`);
    return FLEET_EXIT.failure;
  }
}

// ---------------------------------------------------------------------------------------------
// enroll, revoke, user

function openState(dir: string, create: boolean): FleetDb {
  return openFleetDb(path.join(dir, 'fleet.db'), { create });
}

function cmdEnroll(args: string[], io: FleetIo): number {
  const { values, positionals } = parse('enroll', args, { name: { type: 'string' }, reenroll: { type: 'boolean' }, state: { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(FLEET_HELP.enroll), FLEET_EXIT.ok;
  if (positionals.length !== 1) throw new UsageError('enroll takes exactly one verifier key (or @file)', 'enroll');
  const vkey = keyArgument(positionals[0], 'verifier key', 'enroll');
  const dir = stateDir(values, io);
  const db = openState(dir, true);
  try {
    const r = enroll(db, vkey, { name: str(values.name), reenroll: values.reenroll === true });
    if (values.json) io.out(JSON.stringify({ id: r.device.id, vkey: r.device.vkey, outcome: r.outcome }));
    else if (r.outcome === 'unchanged') io.out(`${r.device.id} is already enrolled with this key`);
    else io.out(`${r.outcome} ${r.device.id} (key ${r.device.vkey.split('+').slice(0, 2).join('+')}) in ${path.join(dir, 'fleet.db')}`);
    return FLEET_EXIT.ok;
  } finally {
    db.close();
  }
}

function cmdRevoke(args: string[], io: FleetIo): number {
  const { values, positionals } = parse('revoke', args, { state: { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(FLEET_HELP.revoke), FLEET_EXIT.ok;
  if (positionals.length !== 1) throw new UsageError('revoke takes exactly one device id', 'revoke');
  const db = openState(stateDir(values, io), false);
  try {
    const now = Date.now();
    const row = revoke(db, positionals[0], { now });
    if (values.json) io.out(JSON.stringify({ id: row.id, revokedAt: row.revokedAt }));
    else if (row.revokedAt !== now) io.out(`${row.id} was already revoked at ${new Date(row.revokedAt!).toISOString()}`);
    else io.out(`revoked ${row.id}; a running fleet broker disconnects it within a second`);
    return FLEET_EXIT.ok;
  } finally {
    db.close();
  }
}

async function cmdUser(args: string[], io: FleetIo): Promise<number> {
  const { values, positionals } = parse('user', args, { role: { type: 'string' }, vkey: { type: 'string' }, state: { type: 'string' }, json: { type: 'boolean' } });
  if (values.help) return io.out(FLEET_HELP.user), FLEET_EXIT.ok;
  const [action, name, ...extra] = positionals;
  if (action === 'list') {
    if (name !== undefined) throw new UsageError('user list takes no arguments', 'user');
    const db = openState(stateDir(values, io), false);
    try {
      const rows = listPrincipals(db);
      if (values.json) io.out(JSON.stringify(rows));
      else if (rows.length === 0) io.out('no operators or services (add one: keel fleet user add <name> --role operator)');
      else for (const r of rows) io.out(`${r.name}\t${r.role}\t${r.revokedAt !== null ? `revoked ${new Date(r.revokedAt).toISOString()}` : 'active'}${r.vkey ? `\t${r.vkey}` : ''}`);
      return FLEET_EXIT.ok;
    } finally {
      db.close();
    }
  }
  if (action !== 'add' && action !== 'revoke') throw new UsageError(`user needs add, revoke or list${action ? `, not "${action}"` : ''}`, 'user');
  if (name === undefined || extra.length > 0) throw new UsageError(`user ${action} takes exactly one name`, 'user');
  if (action === 'revoke') {
    if (values.role !== undefined || values.vkey !== undefined) throw new UsageError('user revoke takes no --role or --vkey', 'user');
    const db = openState(stateDir(values, io), false);
    try {
      const now = Date.now();
      const row = revokePrincipal(db, name, { now });
      if (values.json) io.out(JSON.stringify({ name: row.name, revokedAt: row.revokedAt }));
      else io.out(row.revokedAt !== now ? `${row.name} was already revoked` : `revoked ${row.name}; a running fleet broker disconnects it within a second`);
      return FLEET_EXIT.ok;
    } finally {
      db.close();
    }
  }
  const role = str(values.role);
  if (role !== 'operator' && role !== 'service') throw new UsageError('user add needs --role operator or --role service', 'user');
  const vkey = str(values.vkey) !== undefined ? keyArgument(str(values.vkey)!, 'operator key', 'user') : undefined;
  const db = openState(stateDir(values, io), true);
  try {
    const { principal, secret } = await addPrincipal(db, name, { role: role as PrincipalRole, vkey });
    if (values.json) io.out(JSON.stringify({ name: principal.name, role: principal.role, secret }));
    else {
      io.err(`added ${principal.role} ${principal.name}; its secret (shown only now; the fleet keeps a hash):`);
      io.out(secret);
    }
    return FLEET_EXIT.ok;
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------------------------
// serve

/** Loads `<state>/fleet.key`, creating it (and the directory) on first start; writes fleet.vkey. */
export function loadOrCreateFleetKey(dir: string, name: string | undefined): { key: DeviceKey; name: string; vkey: string; created: boolean } {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new KeelError('KEEL_E_FLEET', `cannot create the fleet state directory ${dir}: ${asError(err).message}`, { cause: err });
  }
  const keyFile = path.join(dir, 'fleet.key');
  let key: DeviceKey;
  let created = false;
  if (fs.existsSync(keyFile)) {
    key = loadKeyFile(keyFile);
    if (name !== undefined && (key.name ?? DEFAULT_FLEET_NAME) !== name) {
      throw new KeelError('KEEL_E_FLEET', `${keyFile} belongs to fleet "${key.name ?? DEFAULT_FLEET_NAME}"; --name only names a new fleet key (devices' tokens and acks are bound to the name)`);
    }
  } else {
    key = generateKeyFile(keyFile, { name: name ?? DEFAULT_FLEET_NAME });
    created = true;
  }
  const fleetName = key.name ?? DEFAULT_FLEET_NAME;
  const vkey = verifierKey(fleetName, key.publicKey, SIGNATURE_TYPE_COSIGNATURE_V1);
  const vkeyFile = path.join(dir, 'fleet.vkey');
  let current: string | undefined;
  try {
    current = fs.readFileSync(vkeyFile, 'utf8');
  } catch {
    current = undefined;
  }
  if (current !== `${vkey}\n`) {
    // Derived from the key, so rewriting it is always safe; replace atomically.
    const tmp = `${vkeyFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${vkey}\n`, { mode: 0o644 });
    fs.renameSync(tmp, vkeyFile);
  }
  return { key, name: fleetName, vkey, created };
}

/** The URL the in-process ingest uses to reach the TCP listener. */
function localUrl(tcpUrl: string): string {
  const u = new URL(tcpUrl);
  // A wildcard listener is reachable on loopback.
  if (u.hostname === '0.0.0.0' || u.hostname === '[::]') u.hostname = '127.0.0.1';
  return u.toString().replace(/\/$/, '');
}

async function cmdServe(args: string[], io: FleetIo): Promise<number> {
  const { values, positionals } = parse('serve', args, {
    state: { type: 'string' },
    port: { type: 'string', short: 'p' },
    host: { type: 'string' },
    'tls-port': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'ws-port': { type: 'string' },
    'ws-path': { type: 'string' },
    prefix: { type: 'string' },
    name: { type: 'string' },
    'no-ingest': { type: 'boolean' },
    'log-level': { type: 'string', short: 'l' },
    duration: { type: 'string', short: 'd' },
  });
  if (values.help) return io.out(FLEET_HELP.serve), FLEET_EXIT.ok;
  if (positionals.length) throw new UsageError('serve takes no positional arguments', 'serve');
  const host = str(values.host) ?? '127.0.0.1';
  const tcpPort = port(values.port, '--port', 'serve') ?? 1883;
  const tlsPort = port(values['tls-port'], '--tls-port', 'serve');
  const wsPort = port(values['ws-port'], '--ws-port', 'serve');
  const cert = str(values.cert);
  const keyPem = str(values.key);
  if (tlsPort !== undefined && (!cert || !keyPem)) throw new UsageError('--tls-port needs --cert <file> and --key <file>', 'serve');
  if (tlsPort === undefined && (cert || keyPem)) throw new UsageError('--cert and --key need --tls-port <n>', 'serve');
  const wsPath = str(values['ws-path']);
  if (wsPath !== undefined && !wsPath.startsWith('/')) throw new UsageError(`--ws-path must start with "/", got ${JSON.stringify(wsPath)}`, 'serve');
  const prefix = str(values.prefix) ?? DEFAULT_PREFIX;
  const pp = prefixProblem(prefix);
  if (pp) throw new UsageError(`--prefix: ${pp}`, 'serve');
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  const level = str(values['log-level']) ?? 'info';
  if (!levels.includes(level)) throw new UsageError(`--log-level must be one of ${levels.join(', ')}`, 'serve');
  let durationMs: number | undefined;
  if (values.duration !== undefined) {
    const d = Number(values.duration);
    if (!Number.isFinite(d) || d <= 0 || d * 1000 > 2 ** 31 - 1) throw new UsageError(`--duration must be a positive number of seconds (at most 24.8 days), got ${JSON.stringify(values.duration)}`, 'serve');
    durationMs = d * 1000;
  }
  const readPem = (file: string, what: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new KeelError('KEEL_E_FLEET', `cannot read the TLS ${what} ${file}: ${asError(err).message}`, { cause: err });
    }
  };
  const tls = tlsPort !== undefined ? { host, port: tlsPort, cert: readPem(cert!, 'certificate'), key: readPem(keyPem!, 'key') } : undefined;

  const dir = stateDir(values, io);
  const fleetKey = loadOrCreateFleetKey(dir, str(values.name));
  const logger = createLogger(level as Level, 1);
  const clock = new SystemClock();
  const dbFile = path.join(dir, 'fleet.db');
  // The broker reads the registry synchronously on the event loop: wait briefly for a lock.
  const db = openFleetDb(dbFile, { busyTimeoutMs: INGEST_DEFAULTS.busyTimeoutMs });
  let ingestDb: FleetDb | undefined;
  let broker: FleetBroker | undefined;
  let ingest: Ingest | undefined;
  // Hooked before anything starts, so a signal during startup is a clean stop, not a kill.
  const stop = stopTrigger(durationMs, io.signal, () => {
    io.err('second signal: exiting without finishing the shutdown');
    process.exit(FLEET_EXIT.forced);
  });
  try {
    broker = await startBroker({ db, fleetName: fleetKey.name, prefix, clock, logger, tcp: { host, port: tcpPort }, tls, ws: wsPort !== undefined ? { host, port: wsPort, path: wsPath } : undefined });
    if (!values['no-ingest']) {
      const password = broker.auth.addEphemeralPrincipal(INGEST_PRINCIPAL, 'service');
      ingestDb = openFleetDb(dbFile, { busyTimeoutMs: INGEST_DEFAULTS.busyTimeoutMs });
      ingest = new Ingest({
        db: ingestDb,
        broker: localUrl(broker.addresses.tcp!),
        username: INGEST_PRINCIPAL,
        password,
        key: { name: fleetKey.name, privateKey: fleetKey.key.privateKey },
        prefix,
        clock,
        log: logger,
        onFork: (fork) => logger.error({ device: fork.device }, 'FORK: two valid, inconsistent checkpoints from one device; evidence stored, acks stopped'),
      });
      await ingest.start();
    }
    const addresses = broker.addresses;
    logger.info({ fleet: fleetKey.name, vkey: fleetKey.vkey, addresses, state: path.resolve(dir), ingest: ingest !== undefined, createdKey: fleetKey.created }, 'fleet serving');
    io.err(`fleet ${fleetKey.name}${fleetKey.created ? ' (new fleet key)' : ''}: cosigner key ${fleetKey.vkey}`);
    io.err(`  (in ${path.join(dir, 'fleet.vkey')}; devices set it as sync.fleet)`);
    io.err(`listening: ${Object.values(addresses).join(', ')}${ingest ? '; ingest running' : '; no ingest (--no-ingest)'}`);
    const reason = await stop.stopped;
    logger.info({ reason }, 'fleet stopping');
    await ingest?.stop();
    await broker.close();
    logger.info({ reason, broker: broker.stats(), ingest: ingest?.stats }, 'fleet stopped');
    return FLEET_EXIT.ok;
  } catch (err) {
    await ingest?.stop().catch(() => undefined);
    await broker?.close().catch(() => undefined);
    throw err;
  } finally {
    stop.dispose();
    for (const d of [ingestDb, db]) {
      try {
        d?.close();
      } catch {
        // closing after a failure: the original error matters
      }
    }
  }
}

/**
 * Waits for SIGINT, SIGTERM, `durationMs` or `signal`: `stopped` resolves with the reason. A
 * second signal during the shutdown calls `forced`. `dispose()` unhooks everything.
 */
function stopTrigger(durationMs: number | undefined, signal: AbortSignal | undefined, forced: () => void): { stopped: Promise<string>; dispose: () => void } {
  let resolveStop!: (why: string) => void;
  const stopped = new Promise<string>((r) => (resolveStop = r));
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) forced();
    else resolveStop(sig);
  };
  const onAbort = () => resolveStop('aborted');
  const timer = durationMs !== undefined ? setTimeout(() => resolveStop('duration'), durationMs) : undefined;
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  if (signal?.aborted) resolveStop('aborted');
  else signal?.addEventListener('abort', onAbort, { once: true });
  return {
    stopped,
    dispose: () => {
      if (timer) clearTimeout(timer);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // Direct use: `node --import tsx fleet/serve.ts <command> ...` (the same as `keel fleet ...`).
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  void cmdFleet(process.argv.slice(2), { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`), isTTY: Boolean(process.stderr.isTTY), outTTY: Boolean(process.stdout.isTTY) }).then((code) => {
    process.exitCode = code;
    setTimeout(() => process.exit(code), 3000).unref();
  });
}
