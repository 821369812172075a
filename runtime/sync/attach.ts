/**
 * Wires device sync into a running `keel run`: resolves the sync section (fleet key, CA),
 * builds the SyncClient on the recorder's ledger, registers its metrics, starts telemetry,
 * and returns a handle whose `stop()` is the graceful shutdown (call it after the runtime
 * stopped and before the recorder closes the ledger).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import type { KeelConfig } from '../config/schema.ts';
import { KeelError } from '../errors.ts';
import type { DeviceKey } from '../ledger/keys.ts';
import type { Ledger } from '../ledger/ledger.ts';
import { registerSyncMetrics } from '../ops/metrics.ts';
import type { Runtime } from '../runtime.ts';
import { SyncClient, type CommandHandler } from './client.ts';
import { resolveFleetKey } from './config.ts';
import type { SyncConnector } from './link.ts';
import { Telemetry } from './telemetry.ts';
import type { SigningKey } from './wire.ts';

/** What `startSync` needs from `keel run`. */
export interface StartSyncOptions {
  /** The loaded configuration (must have `sync` and `ledger` sections). */
  config: KeelConfig;
  /** Directory relative paths in the config resolve against. */
  baseDir: string;
  runtime: Runtime;
  /** The open ledger: the recorder's (`recorder.ledger`). */
  ledger: Ledger;
  /** The device key the ledger is signed with. */
  key: DeviceKey;
  clock: Clock;
  logger: Logger;
  /** Handles `/cmd` payloads (runtime/sync/commands.ts); its answer goes to `/cmd/result`. */
  onCommand?: CommandHandler;
  /** Or: builds the handler from the client (a command handler needs requestSync and rebirth). */
  commands?: (client: SyncClient) => CommandHandler;
  /** Transport (default mqtt.js); tests pass the in-memory twin. */
  connector?: SyncConnector;
}

/** A started sync. */
export interface SyncHandle {
  client: SyncClient;
  telemetry?: Telemetry;
  /** Graceful stop: nothing new sent, in-flight acks awaited briefly, offline status, disconnect. */
  stop(): Promise<void>;
}

/**
 * Starts syncing the ledger with the fleet named in `config.sync`.
 * @throws KeelError KEEL_E_CONFIG for an unreadable fleet key or CA file, or a missing section.
 */
export async function startSync(o: StartSyncOptions): Promise<SyncHandle> {
  const s = o.config.sync;
  if (!s) throw new KeelError('KEEL_E_CONFIG', 'startSync: the configuration has no sync section');
  const fleet = resolveFleetKey(s, o.baseDir);
  let ca: Buffer | undefined;
  if (s.caFile !== undefined) {
    const file = path.resolve(o.baseDir, s.caFile);
    try {
      ca = readFileSync(file);
    } catch (err) {
      throw new KeelError('KEEL_E_CONFIG', `cannot read sync.caFile ${file}: ${(err as Error).message}`);
    }
  }
  // Tokens and telemetry are signed under the ledger's origin: the name of the verifier key
  // the fleet enrolled (the ledger's vkey file).
  const key: SigningKey = { name: o.ledger.origin, privateKey: o.key.privateKey };
  const models = dedupe(o.config.pipelines.map((p) => ({ name: path.basename(p.model.path), sha256: p.model.sha256 })));
  const client = await SyncClient.open({
    device: o.config.device.name,
    ledger: o.ledger,
    key,
    fleetKey: fleet.vkey,
    audience: s.audience ?? fleet.key.name,
    settings: s,
    clock: o.clock,
    logger: o.logger,
    connector: o.connector,
    ca,
    models,
  });
  if (o.onCommand && o.commands) throw new TypeError('startSync: give onCommand or commands, not both');
  const handler = o.onCommand ?? o.commands?.(client);
  if (handler) client.setCommandHandler(handler);
  registerSyncMetrics(o.runtime.metrics.registry, () => client.stats());
  let telemetry: Telemetry | undefined;
  if (s.telemetry.everyMs > 0) {
    telemetry = new Telemetry({
      device: o.config.device.name,
      key,
      clock: o.clock,
      everyMs: s.telemetry.everyMs,
      outputs: s.telemetry.outputs,
      send: (payload) => client.publishTelemetry(payload),
      online: () => client.isConnected,
      logger: o.logger,
    });
    telemetry.attach(o.runtime);
    telemetry.start();
  }
  client.start();
  let stopping: Promise<void> | undefined;
  return {
    client,
    telemetry,
    stop: () =>
      (stopping ??= (async () => {
        telemetry?.stop();
        await client.stop();
      })()),
  };
}

function dedupe(models: { name: string; sha256: string }[]): { name: string; sha256: string }[] {
  const seen = new Set<string>();
  return models.filter((m) => !seen.has(`${m.name}\0${m.sha256}`) && (seen.add(`${m.name}\0${m.sha256}`), true));
}
