/**
 * Who may connect to the fleet broker and what each may publish, subscribe to and receive
 * (docs/fleet.md, "Device authentication" and "Topic ACLs"), as aedes hooks.
 *
 * - Devices: MQTT username = device id, password = a connect token (wire.ts) signed by the
 *   device's enrolled, unrevoked key, for this fleet (audience), unexpired, never seen before
 *   (a bounded replay cache of token ids, kept until each token's expiry plus skew).
 * - Operators and services: username = principal name, password = its secret (scrypt hash in
 *   the registry), or an in-process credential the fleet made for its own ingest.
 *
 * The password's form says which: tokens start with "v1.", and secrets may not.
 *
 * A client id belongs to the identity that holds it: a connect that would take over (and so
 * disconnect, [MQTT-3.1.4-2]) a live client of another identity is refused, so a device cannot
 * knock the ingest or another device off the broker by reusing its client id.
 *
 * Every hook catches its own failures: aedes runs hooks without try/catch, so an exception here
 * would take the whole broker down. Refusals are counted (FleetAuth.stats) and logged with
 * the reason, never with a secret or token.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { AedesOptions, AedesPublishPacket, Client, PublishPacket, Subscription } from 'aedes';
import type { Clock } from '../runtime/clock.ts';
import { KeelError, asError } from '../runtime/errors.ts';
import type { Ed25519 } from '../runtime/ledger/keys.ts';
import {
  deviceIdProblem,
  fleetStateTopic,
  MAX_BATCH_BYTES,
  MAX_ENVELOPE_BYTES,
  MAX_TOKEN_CHARS,
  MAX_TOKEN_LIFETIME_S,
  parseDeviceTopic,
  prefixProblem,
  readToken,
  TOKEN_SKEW_S,
  verifyToken,
  type TokenClaims,
} from '../runtime/sync/wire.ts';
import { deviceRow, type FleetDb } from './db.ts';
import { checkPrincipal, principalNameProblem, principalRow, type PrincipalRole } from './registry.ts';

/** The structured logger the fleet writes to (pino's Logger fits). */
export interface FleetLogger {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

/** A logger that drops everything. */
export const silentLogger: FleetLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** Who an authenticated client is. */
export type Identity =
  | { kind: 'device'; name: string; /** The verifier key the token verified with. */ vkey: string }
  | { kind: 'principal'; name: string; role: PrincipalRole; /** An in-process credential (not in the registry). */ ephemeral: boolean };

/** MQTT 3.1.1 CONNACK return codes used for refusals [MQTT-3.2.2.3]. */
export const CONNACK = { identifierRejected: 2, serverUnavailable: 3, badUsernameOrPassword: 4, notAuthorized: 5 } as const;

/** Why a connect was refused, for counting (stable labels). */
export type RefusalReason =
  | 'malformed' // no username/password, bad id, malformed token
  | 'unknown' // no such device or principal
  | 'revoked'
  | 'forged' // the token does not verify with the enrolled key, or is for another device
  | 'audience' // a token for another fleet
  | 'expired' // expired, not yet valid, over-long, or issued before this broker started
  | 'replay' // a token id seen before
  | 'secret' // wrong, unknown or revoked principal secret
  | 'client-id' // the client id is held by a live client of another identity
  | 'will' // the Will is outside what the identity may publish
  | 'unavailable'; // registry failure, replay cache full, too many logins in progress

/** Counters of the broker's security decisions. */
export interface AuthStats {
  /** Connects accepted. */
  accepted: number;
  /** Connects refused, by reason. */
  refused: Record<RefusalReason, number>;
  /** Publishes refused (the client is disconnected). */
  publishDenied: number;
  /** Subscriptions refused (SUBACK 0x80). */
  subscribeDenied: number;
  /** Messages not forwarded to a subscriber not allowed to read them. */
  forwardDropped: number;
  /** Live clients disconnected because their device or principal was revoked. */
  kicked: number;
}

/** Replay cache bounds. */
export interface ReplayLimits {
  /** Most token ids remembered in all. Default 100 000. */
  maxEntries?: number;
  /** Most token ids remembered per device (unexpired connects). Default 1 000. */
  maxPerDevice?: number;
}

/**
 * Token ids seen, each kept until its token can no longer verify (exp + skew). Bounded: when
 * full of unexpired ids, new connects are refused (fail closed) rather than forgetting an id,
 * which would let that token be replayed.
 */
export class TokenReplayCache {
  private readonly until = new Map<string, number>();
  private readonly perDevice = new Map<string, number>();
  private readonly maxEntries: number;
  private readonly maxPerDevice: number;

  constructor(limits: ReplayLimits = {}) {
    this.maxEntries = limits.maxEntries ?? 100_000;
    this.maxPerDevice = limits.maxPerDevice ?? 1_000;
    if (!Number.isSafeInteger(this.maxEntries) || this.maxEntries < 1) throw new RangeError(`maxEntries must be a positive integer, got ${this.maxEntries}`);
    if (!Number.isSafeInteger(this.maxPerDevice) || this.maxPerDevice < 1) throw new RangeError(`maxPerDevice must be a positive integer, got ${this.maxPerDevice}`);
  }

  /** Number of ids remembered. */
  get size(): number {
    return this.until.size;
  }

  /** Admits (device, jti) valid until `untilMs`: 'ok' the first time, 'replay' after, 'full' when no room. */
  admit(device: string, jti: string, untilMs: number, nowMs: number): 'ok' | 'replay' | 'full' {
    const key = `${device}\n${jti}`;
    const seen = this.until.get(key);
    if (seen !== undefined && seen > nowMs) return 'replay';
    if (seen !== undefined) this.forget(key, device);
    if (this.until.size >= this.maxEntries || (this.perDevice.get(device) ?? 0) >= this.maxPerDevice) this.sweep(nowMs);
    if (this.until.size >= this.maxEntries || (this.perDevice.get(device) ?? 0) >= this.maxPerDevice) return 'full';
    this.until.set(key, untilMs);
    this.perDevice.set(device, (this.perDevice.get(device) ?? 0) + 1);
    return 'ok';
  }

  /** Forgets every id whose token has expired by `nowMs`. */
  sweep(nowMs: number): void {
    for (const [key, until] of this.until) if (until <= nowMs) this.forget(key, key.slice(0, key.indexOf('\n')));
  }

  private forget(key: string, device: string): void {
    this.until.delete(key);
    const n = (this.perDevice.get(device) ?? 1) - 1;
    if (n <= 0) this.perDevice.delete(device);
    else this.perDevice.set(device, n);
  }
}

// ---------------------------------------------------------------------------------------------
// The ACLs as pure functions (docs/fleet.md, "Topic ACLs")

/** What a device publishes in its own subtree. */
const DEVICE_PUBLISH = new Set(['status', 'log', 'telemetry', 'cmd/result']);
/** What a device subscribes to in its own subtree (besides the fleet state). */
const DEVICE_SUBSCRIBE = new Set(['ack', 'nack', 'cmd']);
/** What operators may receive from a device subtree (batches are not for consoles: they read the database). */
const OPERATOR_READ = new Set(['status', 'telemetry', 'cmd/result', 'ack', 'nack']);

function payloadLength(payload: PublishPacket['payload'] | undefined): number {
  if (payload === undefined || payload === null) return 0;
  return typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
}

function topicProblem(topic: unknown): string | undefined {
  if (typeof topic !== 'string' || topic.length === 0) return 'empty topic';
  if (topic.startsWith('$')) return '$-topics are reserved';
  if (topic.includes('+') || topic.includes('#')) return 'wildcards are not allowed in a published topic';
  if (topic.includes('\u0000')) return 'a topic must not contain U+0000 [MQTT-4.7.3-2]';
  return undefined;
}

/**
 * Why `identity` may not publish `packet` under `prefix`, or undefined when it may. Sizes:
 * a batch (`/log`) up to wire.MAX_BATCH_BYTES, every other device or operator message up to
 * wire.MAX_ENVELOPE_BYTES. Only a device's status (birth and Will) may be retained, so nobody
 * pins a batch or a command in the broker's retained store.
 */
export function publishProblem(identity: Identity, packet: Pick<PublishPacket, 'topic' | 'payload'> & { retain?: boolean }, prefix: string): string | undefined {
  const tp = topicProblem(packet.topic);
  if (tp) return tp;
  const topic = packet.topic;
  const size = payloadLength(packet.payload);
  if (identity.kind === 'device') {
    const t = parseDeviceTopic(prefix, topic);
    if (!t || t.device !== identity.name || !DEVICE_PUBLISH.has(t.rest)) {
      return `device "${identity.name}" may publish only ${prefix}/${identity.name}/{status,log,telemetry,cmd/result}, not "${topic.slice(0, 200)}"`;
    }
    const max = t.rest === 'log' ? MAX_BATCH_BYTES : MAX_ENVELOPE_BYTES;
    if (size > max) return `${t.rest} payload of ${size} bytes exceeds ${max}`;
    if (packet.retain && t.rest !== 'status') return `only status may be retained, not ${t.rest}`;
    return undefined;
  }
  if (identity.role === 'operator') {
    const t = parseDeviceTopic(prefix, topic);
    if (!t || t.rest !== 'cmd') return `operator "${identity.name}" may publish only ${prefix}/<device>/cmd, not "${topic.slice(0, 200)}"`;
    if (size > MAX_ENVELOPE_BYTES) return `command of ${size} bytes exceeds ${MAX_ENVELOPE_BYTES}`;
    if (packet.retain) return 'commands must not be retained';
    return undefined;
  }
  if (!topic.startsWith(`${prefix}/`)) return `service "${identity.name}" may publish only under ${prefix}/, not "${topic.slice(0, 200)}"`;
  if (size > MAX_BATCH_BYTES) return `payload of ${size} bytes exceeds ${MAX_BATCH_BYTES}`;
  return undefined;
}

/** Whether `filter` lies under `prefix/` (wildcards allowed after the prefix). */
function underPrefix(filter: string, prefix: string): boolean {
  return filter.startsWith(`${prefix}/`) && filter.length > prefix.length + 1;
}

/**
 * Why `identity` may not subscribe to `filter`, or undefined. Devices: exactly their own ack,
 * nack and cmd and the fleet state. Operators: any filter under the prefix (what they then
 * receive is limited by forwardAllowed). Services: any filter under the prefix, also as a
 * shared subscription `$share/<group>/<prefix>/...`.
 */
export function subscribeProblem(identity: Identity, filter: string, prefix: string): string | undefined {
  if (typeof filter !== 'string' || filter.length === 0) return 'empty topic filter';
  if (filter.includes('\u0000')) return 'a topic filter must not contain U+0000';
  if (identity.kind === 'device') {
    if (filter === fleetStateTopic(prefix)) return undefined;
    const t = parseDeviceTopic(prefix, filter);
    if (t && t.device === identity.name && DEVICE_SUBSCRIBE.has(t.rest)) return undefined;
    return `device "${identity.name}" may subscribe only to ${prefix}/${identity.name}/{ack,nack,cmd} and ${fleetStateTopic(prefix)}, not "${filter.slice(0, 200)}"`;
  }
  if (identity.role === 'service') {
    const share = /^\$share\/([^/+#]+)\/(.+)$/.exec(filter);
    if (share && underPrefix(share[2], prefix)) return undefined;
  }
  if (underPrefix(filter, prefix)) return undefined;
  return `${identity.role} "${identity.name}" may subscribe only under ${prefix}/${identity.role === 'service' ? ` (or $share/<group>/${prefix}/...)` : ''}, not "${filter.slice(0, 200)}"`;
}

/** Whether a message on `topic` may be delivered to `identity` (checked for every message, retained and queued ones too). */
export function forwardAllowed(identity: Identity, topic: string, prefix: string): boolean {
  if (identity.kind === 'device') {
    if (topic === `${prefix}/_fleet/state`) return true;
    const t = parseDeviceTopic(prefix, topic);
    return t !== undefined && t.device === identity.name && DEVICE_SUBSCRIBE.has(t.rest);
  }
  if (identity.role === 'service') return topic.startsWith(`${prefix}/`);
  if (topic === `${prefix}/_fleet/state`) return true;
  const t = parseDeviceTopic(prefix, topic);
  return t !== undefined && OPERATOR_READ.has(t.rest);
}

// ---------------------------------------------------------------------------------------------

/** Options of FleetAuth. */
export interface FleetAuthOptions {
  db: FleetDb;
  /** The fleet's name: the token audience. */
  fleetName: string;
  /** Topic prefix, e.g. "keel". */
  prefix: string;
  clock: Clock;
  logger?: FleetLogger;
  replay?: ReplayLimits;
  /** Most principal secret checks (scrypt, ~16 MiB each) running at once; more are refused as unavailable. Default 4. */
  maxConcurrentSecretChecks?: number;
  /** Ed25519 backend for token verification (default node:crypto). */
  backend?: Ed25519;
}

type Done = (error: (Error & { returnCode: number }) | null, success: boolean | null) => void;

/** Denials logged per client before going quiet (counted still): a misbehaving client must not flood the log. */
const DENIALS_LOGGED_PER_CLIENT = 5;
/** Refused connects logged per window, and the window, ms: a connect flood is counted, and summarized in the log. */
const REFUSALS_LOGGED_PER_WINDOW = 50;
const REFUSAL_LOG_WINDOW_MS = 10_000;

/**
 * The broker's authentication and authorization: aedes hooks plus revocation of live clients.
 * `hooks()` goes into the aedes options; `attach(broker)` lets it track live clients.
 */
export class FleetAuth {
  /** Counters of every decision. */
  readonly stats: AuthStats = {
    accepted: 0,
    refused: { malformed: 0, unknown: 0, revoked: 0, forged: 0, audience: 0, expired: 0, replay: 0, secret: 0, 'client-id': 0, will: 0, unavailable: 0 },
    publishDenied: 0,
    subscribeDenied: 0,
    forwardDropped: 0,
    kicked: 0,
  };
  readonly prefix: string;
  readonly fleetName: string;
  private readonly db: FleetDb;
  private readonly clock: Clock;
  private readonly logger: FleetLogger;
  private readonly backend?: Ed25519;
  private readonly replay: TokenReplayCache;
  private readonly maxSecretChecks: number;
  private secretChecks = 0;
  /** Tokens issued before this (epoch s) are refused: the replay cache starts empty. */
  private readonly notBeforeS: number;
  private readonly identities = new WeakMap<Client, Identity>();
  private readonly wills = new WeakMap<Client, { topic: string; payload: Buffer | string; retain?: boolean }>();
  private readonly revoked = new WeakSet<Client>();
  private readonly denials = new WeakMap<Client, number>();
  /** Authenticated, live clients by client id (claimed at authentication). */
  private readonly live = new Map<string, Client>();
  private readonly ephemeral = new Map<string, { digest: Buffer; role: PrincipalRole }>();
  private readonly refusalLog = { windowStart: Number.NEGATIVE_INFINITY, logged: 0, suppressed: 0 };

  constructor(o: FleetAuthOptions) {
    const pp = prefixProblem(o.prefix);
    if (pp) throw new RangeError(pp);
    if (typeof o.fleetName !== 'string' || o.fleetName.length === 0) throw new RangeError('fleetName must be a non-empty string');
    this.db = o.db;
    this.fleetName = o.fleetName;
    this.prefix = o.prefix;
    this.clock = o.clock;
    this.logger = o.logger ?? silentLogger;
    this.backend = o.backend;
    this.replay = new TokenReplayCache(o.replay);
    this.maxSecretChecks = o.maxConcurrentSecretChecks ?? 4;
    // A token minted up to one skew before the start may be used after it (a device whose
    // clock lags); older ones may have been used before a restart emptied the replay cache.
    this.notBeforeS = Math.floor(this.clock.now() / 1000) - TOKEN_SKEW_S;
  }

  /** The aedes hooks (bound). */
  hooks(): Required<Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward'>> {
    return {
      preConnect: (client, packet, cb) => {
        // Keep the Will to check it against the identity once authenticated.
        if (packet.will) this.wills.set(client, { topic: packet.will.topic, payload: packet.will.payload, retain: packet.will.retain });
        cb(null, true);
      },
      authenticate: (client, username, password, done) => this.authenticate(client, username, password, done as Done),
      authorizePublish: (client, packet, cb) => cb(this.authorizePublish(client, packet)),
      authorizeSubscribe: (client, sub, cb) => cb(null, this.authorizeSubscribe(client, sub)),
      authorizeForward: (client, packet) => this.authorizeForward(client, packet),
    };
  }

  /** Tracks live clients of `broker` (needed for client-id ownership and revocation). */
  attach(broker: { on(event: 'client' | 'clientDisconnect', listener: (client: Client) => void): unknown }): void {
    broker.on('client', (client) => {
      this.live.set(client.id, client);
    });
    broker.on('clientDisconnect', (client) => {
      if (this.live.get(client.id) === client) this.live.delete(client.id);
    });
  }

  /** Creates an in-process credential (kept in memory only, for this broker's life); returns its secret. */
  addEphemeralPrincipal(name: string, role: PrincipalRole): string {
    if (!name.startsWith('_') || principalNameProblem(name.slice(1))) throw new RangeError(`an in-process principal name starts with "_" (never a device or registry name), got ${JSON.stringify(name)}`);
    const secret = randomBytes(32).toString('base64url');
    this.ephemeral.set(name, { digest: createHash('sha256').update(secret).digest(), role });
    return secret;
  }

  /** The identity of an authenticated client, or undefined. */
  identityOf(client: Client): Identity | undefined {
    return this.identities.get(client);
  }

  /** Number of authenticated clients connected now. */
  get liveClients(): number {
    let n = 0;
    for (const c of this.live.values()) if (!c.closed) n++;
    return n;
  }

  /**
   * Re-checks every live client against the registry and disconnects those whose device or
   * principal was revoked (or re-keyed) since they connected. Also forgets expired token ids.
   * Returns how many were disconnected. A registry failure keeps everyone (logged).
   */
  revalidate(): number {
    this.replay.sweep(this.clock.now());
    const gone: Client[] = [];
    try {
      for (const [clientId, client] of this.live) {
        // A claim whose connect failed before aedes registered it.
        if (client.closed) {
          this.live.delete(clientId);
          continue;
        }
        const id = this.identities.get(client);
        if (!id) continue;
        if (id.kind === 'device') {
          const row = deviceRow(this.db, id.name);
          if (!row || row.revokedAt !== null || row.vkey !== id.vkey) gone.push(client);
        } else if (!id.ephemeral) {
          const row = principalRow(this.db, id.name);
          if (!row || row.revokedAt !== null || row.role !== id.role) gone.push(client);
        }
      }
    } catch (err) {
      this.logger.warn({ err: asError(err).message }, 'cannot re-check live clients against the registry; keeping them');
      return 0;
    }
    for (const c of gone) this.kick(c, 'revoked');
    return gone.length;
  }

  /** Disconnects every live client of device `id` now (after revoking it in-process). Returns how many. */
  disconnectDevice(id: string): number {
    let n = 0;
    for (const client of [...this.live.values()]) {
      const ident = this.identities.get(client);
      if (ident?.kind === 'device' && ident.name === id) {
        this.kick(client, 'disconnected by the fleet');
        n++;
      }
    }
    return n;
  }

  private kick(client: Client, why: string): void {
    const id = this.identities.get(client);
    // Revoked: refuse its Will and anything still in flight.
    this.revoked.add(client);
    this.stats.kicked++;
    this.logger.warn({ client: client.id, identity: id ? `${id.kind}:${id.name}` : undefined, why }, 'disconnecting client');
    if (this.live.get(client.id) === client) this.live.delete(client.id);
    try {
      client.close();
    } catch (err) {
      this.logger.warn({ client: client.id, err: asError(err).message }, 'closing a client failed');
    }
  }

  private refuse(client: Client, done: Done, code: number, reason: RefusalReason, detail: string, username?: string): void {
    this.stats.refused[reason]++;
    const w = this.refusalLog;
    const now = this.clock.monotonic();
    if (now - w.windowStart >= REFUSAL_LOG_WINDOW_MS) {
      if (w.suppressed > 0) this.logger.warn({ suppressed: w.suppressed, windowMs: REFUSAL_LOG_WINDOW_MS }, 'more connects were refused than logged (see the counters)');
      w.windowStart = now;
      w.logged = 0;
      w.suppressed = 0;
    }
    if (w.logged < REFUSALS_LOGGED_PER_WINDOW) {
      w.logged++;
      this.logger.warn({ client: String(client.id ?? '').slice(0, 128), username: username?.slice(0, 128), reason, detail }, 'connect refused');
    } else w.suppressed++;
    done(Object.assign(new Error(detail), { returnCode: code }), null);
  }

  private accept(client: Client, identity: Identity, done: Done): void {
    // [MQTT-3.1.4-2] would disconnect a live client with this id: only its own identity may.
    const holder = this.live.get(client.id);
    const held = holder && holder !== client && !holder.closed ? this.identities.get(holder) : undefined;
    if (held && (held.kind !== identity.kind || held.name !== identity.name)) {
      return this.refuse(client, done, CONNACK.identifierRejected, 'client-id', `client id "${client.id.slice(0, 128)}" is in use by another identity`, identity.name);
    }
    const will = this.wills.get(client);
    if (will) {
      const wp = publishProblem(identity, will, this.prefix);
      if (wp) return this.refuse(client, done, CONNACK.notAuthorized, 'will', `the Will is refused: ${wp}`, identity.name);
    }
    this.identities.set(client, identity);
    // Claimed now, not when aedes registers the client a few steps later, so a concurrent
    // connect of another identity with the same id is refused in between too.
    this.live.set(client.id, client);
    this.stats.accepted++;
    this.logger.info({ client: client.id.slice(0, 128), identity: `${identity.kind === 'device' ? 'device' : identity.role}:${identity.name}` }, 'client authenticated');
    done(null, true);
  }

  private authenticate(client: Client, username: string | undefined, password: Buffer | undefined, done: Done): void {
    try {
      if (typeof username !== 'string' || username.length === 0) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', 'no username');
      if (!password || password.length === 0) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', 'no password', username);
      if (password.length > MAX_TOKEN_CHARS * 2) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', `password of ${password.length} bytes is too long`, username);
      const pw = password.toString('utf8');
      if (pw.startsWith('v1.')) return this.authenticateDevice(client, username, pw, done);
      this.authenticatePrincipal(client, username, pw, done);
    } catch (err) {
      this.refuse(client, done, CONNACK.serverUnavailable, 'unavailable', `authentication failed inside the fleet: ${asError(err).message}`, username);
    }
  }

  private authenticateDevice(client: Client, device: string, token: string, done: Done): void {
    const idp = deviceIdProblem(device);
    if (idp) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', idp);
    let claims: TokenClaims;
    try {
      claims = readToken(token).claims;
    } catch (err) {
      return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', asError(err).message, device);
    }
    const row = deviceRow(this.db, device);
    if (!row) return this.refuse(client, done, CONNACK.notAuthorized, 'unknown', `device "${device}" is not enrolled`, device);
    if (row.revokedAt !== null) return this.refuse(client, done, CONNACK.notAuthorized, 'revoked', `device "${device}" is revoked`, device);
    const nowMs = this.clock.now();
    try {
      verifyToken(token, { device, audience: this.fleetName, vkey: row.vkey, nowMs }, this.backend);
    } catch (err) {
      if (!(err instanceof KeelError)) throw err;
      // A label for counting only (the logged message says exactly what failed): a claim
      // that fails on its own names the reason; otherwise the signature did not verify.
      const nowS = Math.floor(nowMs / 1000);
      const reason: RefusalReason =
        err.code === 'KEEL_E_WIRE' ? 'malformed'
        : claims.sub !== device ? 'forged'
        : claims.aud !== this.fleetName ? 'audience'
        : claims.exp + TOKEN_SKEW_S <= nowS || claims.iat > nowS + TOKEN_SKEW_S || claims.exp <= claims.iat || claims.exp - claims.iat > MAX_TOKEN_LIFETIME_S ? 'expired'
        : 'forged';
      return this.refuse(client, done, CONNACK.badUsernameOrPassword, reason, err.message, device);
    }
    if (claims.iat < this.notBeforeS) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'expired', 'token was issued before the fleet broker started; mint a new one', device);
    const admitted = this.replay.admit(device, claims.jti, (claims.exp + TOKEN_SKEW_S) * 1000, nowMs);
    if (admitted === 'replay') return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'replay', `token ${claims.jti.slice(0, 64)} was already used (replay)`, device);
    if (admitted === 'full') return this.refuse(client, done, CONNACK.serverUnavailable, 'unavailable', 'too many recent connects (token replay cache full); retry later', device);
    this.accept(client, { kind: 'device', name: device, vkey: row.vkey }, done);
  }

  private authenticatePrincipal(client: Client, name: string, secret: string, done: Done): void {
    const eph = this.ephemeral.get(name);
    if (eph) {
      const ok = timingSafeEqual(createHash('sha256').update(secret).digest(), eph.digest);
      if (!ok) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'secret', 'bad secret', name);
      return this.accept(client, { kind: 'principal', name, role: eph.role, ephemeral: true }, done);
    }
    const np = principalNameProblem(name);
    if (np) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'malformed', np);
    if (this.secretChecks >= this.maxSecretChecks) return this.refuse(client, done, CONNACK.serverUnavailable, 'unavailable', 'too many logins in progress; retry later', name);
    this.secretChecks++;
    checkPrincipal(this.db, name, secret).then(
      (row) => {
        this.secretChecks--;
        if (!row) return this.refuse(client, done, CONNACK.badUsernameOrPassword, 'secret', 'unknown principal, revoked, or bad secret', name);
        this.accept(client, { kind: 'principal', name, role: row.role, ephemeral: false }, done);
      },
      (err: unknown) => {
        this.secretChecks--;
        this.refuse(client, done, CONNACK.serverUnavailable, 'unavailable', `registry unavailable: ${asError(err).message}`, name);
      },
    );
  }

  private deny(client: Client | null, what: string, problem: string): Error {
    const n = client ? (this.denials.get(client) ?? 0) + 1 : 1;
    if (client) this.denials.set(client, n);
    if (n <= DENIALS_LOGGED_PER_CLIENT) {
      const id = client ? this.identities.get(client) : undefined;
      this.logger.warn({ client: client?.id.slice(0, 128), identity: id ? `${id.kind === 'device' ? 'device' : id.role}:${id.name}` : undefined, problem }, `${what} refused`);
    }
    return new Error(problem);
  }

  private authorizePublish(client: Client | null, packet: PublishPacket): Error | null {
    try {
      // No client: a Will aedes restores from storage for a client it no longer knows; its
      // identity cannot be checked, so it is not published.
      const id = client ? this.identities.get(client) : undefined;
      if (!client || !id) {
        this.stats.publishDenied++;
        return this.deny(client, 'publish', 'publisher is not authenticated');
      }
      if (this.revoked.has(client)) {
        this.stats.publishDenied++;
        return this.deny(client, 'publish', 'publisher was revoked');
      }
      const problem = publishProblem(id, packet, this.prefix);
      if (problem) {
        this.stats.publishDenied++;
        return this.deny(client, 'publish', problem);
      }
      return null;
    } catch (err) {
      this.stats.publishDenied++;
      return this.deny(client, 'publish', `authorization failed inside the fleet: ${asError(err).message}`);
    }
  }

  private authorizeSubscribe(client: Client, sub: Subscription): Subscription | null {
    try {
      const id = this.identities.get(client);
      const problem = !id ? 'subscriber is not authenticated' : this.revoked.has(client) ? 'subscriber was revoked' : subscribeProblem(id, sub.topic, this.prefix);
      if (problem) {
        this.stats.subscribeDenied++;
        this.deny(client, 'subscribe', problem);
        return null;
      }
      return sub;
    } catch (err) {
      this.stats.subscribeDenied++;
      this.deny(client, 'subscribe', `authorization failed inside the fleet: ${asError(err).message}`);
      return null;
    }
  }

  private authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    try {
      const id = this.identities.get(client);
      if (id && !this.revoked.has(client) && forwardAllowed(id, packet.topic, this.prefix)) return packet;
    } catch {
      // fall through: not forwarded
    }
    this.stats.forwardDropped++;
    return null;
  }
}
