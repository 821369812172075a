/**
 * The local operations endpoint: Prometheus `/metrics` and `/healthz`.
 * Binds to 127.0.0.1 by default: it is for the board's own agents and a local scraper.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { KeelError } from '../errors.ts';

/** What /healthz reports. `ok` and `degraded` answer 200; `safe` and `starting` 503. */
export interface Health {
  status: 'starting' | 'ok' | 'degraded' | 'safe' | 'stopping';
  [key: string]: unknown;
}

/** Providers the endpoint reads on each request. */
export interface OpsSources {
  metrics(): Promise<{ contentType: string; text: string }>;
  health(): Health;
}

/** A running endpoint. */
export interface OpsServer {
  /** Bound address, e.g. 127.0.0.1:9464 (useful with port 0). */
  readonly address: string;
  close(): Promise<void>;
}

/** Starts the endpoint. Rejects with a clear KeelError if the port is taken or not permitted. */
export function startOpsServer(host: string, port: number, src: OpsSources): Promise<OpsServer> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      src.metrics().then(
        (m) => res.writeHead(200, { 'content-type': m.contentType }).end(m.text),
        (err) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err)),
      );
      return;
    }
    if (url === '/healthz') {
      const h = src.health();
      const code = h.status === 'ok' || h.status === 'degraded' ? 200 : 503;
      res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(h) + '\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
  });
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'EADDRINUSE'
          ? `port ${port} on ${host} is already in use (another keel running? set http.port)`
          : err.code === 'EACCES'
            ? `not permitted to listen on ${host}:${port}`
            : err.code === 'EADDRNOTAVAIL'
              ? `address ${host} is not on this machine (set http.host)`
              : err.message;
      reject(new KeelError('KEEL_E_CONFIG', `http: ${why}`, { cause: err }));
    });
    server.listen(port, host, () => {
      const a = server.address() as AddressInfo;
      resolve({
        address: `${a.address}:${a.port}`,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
