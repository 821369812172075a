/**
 * The embedded fleet broker: aedes 1.2 (MQTT 3.1.1) behind the fleet's authentication and
 * topic ACLs (fleet/auth.ts), listening on plain TCP, TLS when given a certificate and key,
 * and WebSocket for browsers. aedes itself never opens a socket: every transport hands it a
 * byte stream, first passed through the packet-size limit (fleet/packet-limit.ts), since
 * aedes would otherwise buffer a packet of any announced size before a hook could refuse it.
 *
 * Revocation reaches live clients: the registry is re-read every `revalidateMs` (the CLI
 * revokes from another process), and `revalidate()` does it at once in-process.
 */
import { once, type EventEmitter } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { Aedes, type Client } from 'aedes';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { SystemClock, type Clock, type TimerHandle } from '../runtime/clock.ts';
import { KeelError, asError } from '../runtime/errors.ts';
import { DEFAULT_PREFIX, MAX_BATCH_BYTES, MAX_ENVELOPE_BYTES, prefixProblem } from '../runtime/sync/wire.ts';
import { FleetAuth, silentLogger, type AuthStats, type FleetLogger, type ReplayLimits } from './auth.ts';
import type { FleetDb } from './db.ts';
import { limitPackets } from './packet-limit.ts';

export type { FleetLogger } from './auth.ts';

/** Every broker default in one place. */
export const BROKER_DEFAULTS = {
  /** How often live clients are re-checked against the registry (revocation), ms. */
  revalidateMs: 1000,
  /** A connection must send CONNECT within this, ms (aedes' default is 30 s). */
  connectTimeoutMs: 10_000,
  /** TLS handshake deadline, ms. */
  tlsHandshakeTimeoutMs: 10_000,
  /** Largest CONNECT (before authentication), bytes: a token, a small Will, slack. */
  firstPacketMax: MAX_ENVELOPE_BYTES + 8 * 1024,
  /** Largest later packet, bytes: a full batch plus topic and header slack. */
  packetMax: MAX_BATCH_BYTES + 64 * 1024,
  /** WebSocket path. */
  wsPath: '/mqtt',
} as const;

/** Options of startBroker. Ports may be 0 (any free port; see `addresses`). */
export interface BrokerOptions {
  db: FleetDb;
  /** The fleet's name: token audience. */
  fleetName: string;
  /** Topic prefix (default "keel"). */
  prefix?: string;
  tcp?: { host?: string; port: number };
  /** TLS listener: PEM certificate (chain) and private key. */
  tls?: { host?: string; port: number; cert: string | Buffer; key: string | Buffer };
  ws?: { host?: string; port: number; path?: string };
  clock?: Clock;
  logger?: FleetLogger;
  /** Registry re-check period, ms (BROKER_DEFAULTS.revalidateMs). */
  revalidateMs?: number;
  replay?: ReplayLimits;
}

/** Where the broker listens, as URLs for mqtt.js (mqtt://, mqtts://, ws://). */
export interface BrokerAddresses {
  tcp?: string;
  tls?: string;
  ws?: string;
}

/** Counters of a running broker. */
export interface BrokerStats extends AuthStats {
  /** Connections refused for an oversized or malformed packet header. */
  oversize: number;
  /** Authenticated clients connected now. */
  clients: number;
}

/** A running fleet broker. */
export interface FleetBroker {
  readonly addresses: BrokerAddresses;
  /** Authentication and ACLs (in-process credentials, identities, revocation). */
  readonly auth: FleetAuth;
  /** The aedes instance (for in-process inspection; clients connect over the listeners). */
  readonly aedes: Aedes;
  /** A snapshot of the counters. */
  stats(): BrokerStats;
  /** Re-checks live clients against the registry now; returns how many were disconnected. */
  revalidate(): number;
  /** Stops listening, disconnects everyone, and releases every handle. */
  close(): Promise<void>;
}

function url(scheme: string, addr: net.AddressInfo, path = ''): string {
  const host = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return `${scheme}://${host}:${addr.port}${path}`;
}

async function listen(server: net.Server, port: number, host: string, what: string): Promise<net.AddressInfo> {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`${what} port must be 0..65535, got ${port}`);
  server.listen(port, host);
  try {
    await once(server, 'listening');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'EADDRINUSE' ? 'the port is in use' : code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)' : code === 'EADDRNOTAVAIL' ? 'no such local address' : asError(err).message;
    throw new KeelError('KEEL_E_FLEET', `cannot listen for ${what} on ${host}:${port}: ${why}`, { cause: err, retryable: code === 'EADDRINUSE' });
  }
  return server.address() as net.AddressInfo;
}

function closeServer(server: net.Server | http.Server | undefined): Promise<void> {
  if (!server || !server.listening) return Promise.resolve();
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * Starts the broker on the configured listeners (at least one).
 * @throws RangeError for bad options; KeelError KEEL_E_FLEET when a port cannot be bound
 *   (everything already started is closed again).
 */
export async function startBroker(o: BrokerOptions): Promise<FleetBroker> {
  const prefix = o.prefix ?? DEFAULT_PREFIX;
  const pp = prefixProblem(prefix);
  if (pp) throw new RangeError(pp);
  if (!o.tcp && !o.tls && !o.ws) throw new RangeError('startBroker needs at least one listener (tcp, tls or ws)');
  const clock = o.clock ?? new SystemClock();
  const logger = o.logger ?? silentLogger;
  const revalidateMs = o.revalidateMs ?? BROKER_DEFAULTS.revalidateMs;
  if (!(revalidateMs > 0)) throw new RangeError(`revalidateMs must be positive, got ${revalidateMs}`);
  const auth = new FleetAuth({ db: o.db, fleetName: o.fleetName, prefix, clock, logger, replay: o.replay });
  const aedes = await Aedes.createBroker({ ...auth.hooks(), connectTimeout: BROKER_DEFAULTS.connectTimeoutMs });
  auth.attach(aedes);
  // aedes emits 'error' for persistence failures; unhandled, that would end the process.
  (aedes as EventEmitter).on('error', (err: unknown) => logger.error({ err: asError(err).message }, 'broker error'));
  aedes.on('clientError', (client, err) => logger.debug({ client: client?.id?.slice(0, 128), err: err.message }, 'client error'));
  aedes.on('connectionError', (client, err) => logger.debug({ client: client?.id?.slice(0, 128), err: err.message }, 'connection error'));

  let oversize = 0;
  const sockets = new Set<Duplex>();
  const accept = (stream: Duplex, req?: http.IncomingMessage): void => {
    sockets.add(stream);
    stream.once('close', () => sockets.delete(stream));
    // Any stray error on the raw stream is the connection's end, never the process's.
    stream.on('error', () => undefined);
    const limited = limitPackets(stream, {
      firstPacketMax: BROKER_DEFAULTS.firstPacketMax,
      packetMax: BROKER_DEFAULTS.packetMax,
      onOversize: (announced, limit) => {
        oversize++;
        logger.warn({ announced, limit }, announced < 0 ? 'malformed MQTT packet length; connection closed' : 'oversized MQTT packet; connection closed');
      },
    });
    aedes.handle(limited, req);
  };

  const servers: { tcp?: net.Server; tls?: tls.Server; http?: http.Server } = {};
  let wss: WebSocketServer | undefined;
  const addresses: BrokerAddresses = {};
  let timer: TimerHandle | undefined;
  let closed = false;

  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    clock.cancel(timer);
    const stopped = Promise.all([closeServer(servers.tcp), closeServer(servers.tls), closeServer(servers.http)]);
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    for (const s of sockets) s.destroy();
    if (wss) {
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((resolve) => wss!.close(() => resolve()));
    }
    servers.http?.closeAllConnections();
    await stopped;
  };

  try {
    if (o.tcp) {
      const server = (servers.tcp = net.createServer((socket) => {
        socket.setNoDelay(true);
        accept(socket);
      }));
      addresses.tcp = url('mqtt', await listen(server, o.tcp.port, o.tcp.host ?? '127.0.0.1', 'MQTT'));
    }
    if (o.tls) {
      let server: tls.Server;
      try {
        server = tls.createServer({ cert: o.tls.cert, key: o.tls.key, handshakeTimeout: BROKER_DEFAULTS.tlsHandshakeTimeoutMs });
      } catch (err) {
        throw new KeelError('KEEL_E_FLEET', `the TLS certificate or key is unusable: ${asError(err).message}`, { cause: err });
      }
      servers.tls = server;
      server.on('secureConnection', (socket) => {
        socket.setNoDelay(true);
        accept(socket);
      });
      server.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'TLS handshake failed'));
      addresses.tls = url('mqtts', await listen(server, o.tls.port, o.tls.host ?? '127.0.0.1', 'MQTT over TLS'));
    }
    if (o.ws) {
      const path = o.ws.path ?? BROKER_DEFAULTS.wsPath;
      if (!path.startsWith('/')) throw new RangeError(`ws.path must start with "/", got ${JSON.stringify(path)}`);
      const server = (servers.http = http.createServer((_req, res) => {
        res.writeHead(426, { 'content-type': 'text/plain' }).end(`MQTT over WebSocket: connect to ${path}\n`);
      }));
      wss = new WebSocketServer({ server, path, maxPayload: BROKER_DEFAULTS.packetMax });
      wss.on('connection', (ws, req) => accept(createWebSocketStream(ws), req));
      wss.on('error', (err) => logger.warn({ err: err.message }, 'WebSocket server error'));
      addresses.ws = url('ws', await listen(server, o.ws.port, o.ws.host ?? '127.0.0.1', 'MQTT over WebSocket'), path);
    }
  } catch (err) {
    await close();
    throw err;
  }

  timer = clock.setInterval(
    'fleet-broker-revalidate',
    () => {
      const n = auth.revalidate();
      if (n > 0) logger.info({ disconnected: n }, 'disconnected revoked clients');
    },
    revalidateMs,
  );
  logger.info({ addresses, prefix, fleet: o.fleetName }, 'fleet broker listening');

  return {
    addresses,
    auth,
    aedes,
    stats: () => ({ ...auth.stats, refused: { ...auth.stats.refused }, oversize, clients: auth.liveClients }),
    revalidate: () => auth.revalidate(),
    close,
  };
}

/** The identity name of an aedes client, for logs ("device:robot-1"), or undefined. */
export function clientLabel(broker: FleetBroker, client: Client): string | undefined {
  const id = broker.auth.identityOf(client);
  return id ? `${id.kind === 'device' ? 'device' : id.role}:${id.name}` : undefined;
}
