/**
 * `keel fleet ingest`: one ingest worker process against any MQTT broker. Several workers
 * given the same `--share GROUP` and `--state DIR` split the devices' batches through a
 * `$share/GROUP/...` subscription (Mosquitto, EMQX); idempotent inserts and BEGIN IMMEDIATE
 * transactions that re-read each device's state keep the database exact.
 *
 * Also runnable directly: `node --import tsx fleet/ingest-main.ts --broker ... --state DIR`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { Level } from 'pino';
import { KeelError, asError } from '../runtime/errors.ts';
import { loadKeyFile } from '../runtime/ledger/keys.ts';
import { createLogger } from '../runtime/ops/log.ts';
import { openFleetDb } from './db.ts';
import { Ingest, INGEST_DEFAULTS } from './ingest.ts';

/** Output channels of the command. */
export interface IngestIo {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Help text of `keel fleet ingest`. */
export const INGEST_HELP = `Usage: keel fleet ingest --broker <url> [options]

Verifies, stores and acknowledges device ledger batches from an MQTT broker until SIGINT or
SIGTERM. Several workers with the same --share group and --state directory split the load
(needs a broker with shared subscriptions: Mosquitto, EMQX; not the embedded aedes broker).

Options:
  -b, --broker <url>      mqtt://host:port, mqtts://, ws://, wss:// (required)
  -s, --state <dir>       fleet state directory with fleet.key and fleet.db (default ./fleet-state)
      --share <group>     subscribe through $share/<group>/<prefix>/+/log
  -u, --user <name>       service principal name
  -p, --password <secret> its secret (or set KEEL_FLEET_PASSWORD, which stays out of ps)
      --prefix <p>        topic prefix (default keel)
      --ca <file>         CA certificate for mqtts:// / wss://
  -l, --log-level <l>     trace, debug, info, warn, error, fatal, silent (default info)
  -d, --duration <s>      stop after this many seconds
  -h, --help              show this help
Logs are JSON lines on stdout; the last one ("ingest stopped") carries the counters.
Exit codes: 0 ok, 1 failure, 2 usage.`;

const usage = (msg: string) => new KeelError('KEEL_E_USAGE', msg);

/**
 * Runs one ingest worker (see INGEST_HELP). Resolves with the exit code when stopped by
 * SIGINT/SIGTERM, `--duration` or `signal`.
 */
export async function cmdIngest(args: string[], io: IngestIo, o: { signal?: AbortSignal } = {}): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      allowPositionals: false,
      options: {
        broker: { type: 'string', short: 'b' },
        state: { type: 'string', short: 's' },
        share: { type: 'string' },
        user: { type: 'string', short: 'u' },
        password: { type: 'string', short: 'p' },
        prefix: { type: 'string' },
        ca: { type: 'string' },
        'log-level': { type: 'string', short: 'l' },
        duration: { type: 'string', short: 'd' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.err(`keel fleet ingest: ${(err as Error).message}\nRun 'keel fleet ingest --help' for usage.`);
    return 2;
  }
  if (values.help) {
    io.out(INGEST_HELP);
    return 0;
  }
  let ingest: Ingest | undefined;
  let db: ReturnType<typeof openFleetDb> | undefined;
  try {
    const broker = values.broker;
    if (typeof broker !== 'string') throw usage('--broker <url> is required');
    const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
    const level = (values['log-level'] as string | undefined) ?? 'info';
    if (!levels.includes(level)) throw usage(`--log-level must be one of ${levels.join(', ')}`);
    let durationMs: number | undefined;
    if (values.duration !== undefined) {
      const d = Number(values.duration);
      if (!Number.isFinite(d) || d <= 0) throw usage(`--duration must be a positive number of seconds, got ${JSON.stringify(values.duration)}`);
      durationMs = d * 1000;
    }
    const state = (values.state as string | undefined) ?? './fleet-state';
    const keyFile = path.join(state, 'fleet.key');
    if (!fs.existsSync(keyFile)) throw new KeelError('KEEL_E_FLEET', `no fleet key at ${keyFile}: start "keel fleet serve --state ${state}" once to create the state directory, or copy fleet.key there (mode 0600)`);
    const key = loadKeyFile(keyFile);
    const password = (values.password as string | undefined) ?? process.env.KEEL_FLEET_PASSWORD;
    const log = createLogger(level as Level, 1);
    db = openFleetDb(path.join(state, 'fleet.db'), { busyTimeoutMs: INGEST_DEFAULTS.busyTimeoutMs });
    const ca = values.ca !== undefined ? fs.readFileSync(values.ca as string) : undefined;
    ingest = new Ingest({
      db,
      broker,
      username: values.user as string | undefined,
      password,
      key: { name: key.name ?? 'keel-fleet', privateKey: key.privateKey },
      prefix: values.prefix as string | undefined,
      shareGroup: values.share as string | undefined,
      log,
      mqttOptions: ca ? { ca } : undefined,
    });
    await ingest.start();
    log.info({ broker, state, share: values.share ?? null, cosigner: ingest.cosignerKey }, 'ingest running');
    await waitForStop(durationMs, o.signal);
    await ingest.stop();
    log.info({ stats: ingest.stats }, 'ingest stopped');
    db.close();
    return 0;
  } catch (err) {
    await ingest?.stop().catch(() => undefined);
    try {
      db?.close();
    } catch {
      // closing after a failure: the original error matters
    }
    if (err instanceof KeelError && err.code === 'KEEL_E_USAGE') {
      io.err(`keel fleet ingest: ${err.message}\nRun 'keel fleet ingest --help' for usage.`);
      return 2;
    }
    io.err(`keel fleet ingest: ${asError(err).message}`);
    return 1;
  }
}

/** Resolves on SIGINT, SIGTERM, after `durationMs`, or when `signal` aborts; unhooks itself. */
function waitForStop(durationMs: number | undefined, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      signal?.removeEventListener('abort', stop);
      if (timer) clearTimeout(timer);
      resolve();
    };
    const timer = durationMs !== undefined ? setTimeout(stop, durationMs) : undefined;
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    if (signal?.aborted) stop();
    else signal?.addEventListener('abort', stop, { once: true });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  cmdIngest(process.argv.slice(2), { out: (s) => process.stdout.write(`${s}\n`), err: (s) => process.stderr.write(`${s}\n`) }).then((code) => {
    process.exitCode = code;
  });
}
