/**
 * A sensor source fed by MCU channels over the firmware bridge: config `{type: bridge,
 * path, channels: [{mcuChannel, name, rateHz, scale?, offset?}]}`. Every value of a SAMPLE
 * frame becomes one `Sample` stamped with its MCU time mapped to host epoch ms
 * (docs/firmware-bridge.md §5.4), `raw * scale + offset` under the configured name.
 *
 * The link is shared (firmware-bridge/hub.ts). Link loss is a 'fault' (the runtime's
 * watchdog holds the safe state), link restored is 'recovered'. A channel the MCU lacks or
 * refuses is a 'fault' too, one that no reconnect fixes: it stays until the config is fixed.
 * Only an invalid config makes `start()` reject.
 */
import { EventEmitter } from 'node:events';
import { ConfigError, DriverError, asError, type ConfigIssue, type KeelError } from '../runtime/errors.ts';
import type { BridgeSourceConfig } from '../runtime/config/schema.ts';
import type { SensorSource, SourceEvents, SourceStats } from '../drivers/types.ts';
import type { BridgeHub, BridgeLease } from './hub.ts';
import type { BridgeStats, ChannelSamples, McuInfo } from './session.ts';
import { ChannelAligner } from './align.ts';
import type { Clock } from '../runtime/clock.ts';

/** What a bridge source needs from outside. */
export interface BridgeSourceDeps {
  hub: BridgeHub;
  /** The clock the hub runs on (to bound how long channels wait for each other). */
  clock: Clock;
}

/** Config fields a bridge source reads; the schema's type with defaults optional. */
export type BridgeSourceOptions = Omit<BridgeSourceConfig, 'baudRate' | 'channels'> & {
  baudRate?: number;
  channels: { mcuChannel: number; name: string; rateHz: number; scale?: number; offset?: number }[];
};

/** Problems with a bridge source config, paths relative to the source (`channels[1].name`). */
export function bridgeSourceIssues(c: BridgeSourceOptions): ConfigIssue[] {
  if (c === null || typeof c !== 'object') return [{ path: '', message: 'expected a bridge source object' }];
  const issues: ConfigIssue[] = [];
  if (typeof c.name !== 'string' || c.name.length === 0) issues.push({ path: 'name', message: 'expected a source name' });
  if (typeof c.path !== 'string' || c.path.length === 0 || c.path.includes('\0')) issues.push({ path: 'path', message: `expected a device path, got ${JSON.stringify(c.path)}` });
  if (c.baudRate !== undefined && (!Number.isInteger(c.baudRate) || c.baudRate < 50 || c.baudRate > 4_000_000)) issues.push({ path: 'baudRate', message: `expected an integer from 50 to 4000000, got ${JSON.stringify(c.baudRate)}` });
  if (!Array.isArray(c.channels) || c.channels.length === 0) {
    issues.push({ path: 'channels', message: 'expected at least one channel' });
    return issues;
  }
  const names = new Set<string>();
  c.channels.forEach((ch, i) => {
    const at = `channels[${i}]`;
    if (ch === null || typeof ch !== 'object') return void issues.push({ path: at, message: 'expected {mcuChannel, name, rateHz}' });
    if (!Number.isInteger(ch.mcuChannel) || ch.mcuChannel < 0 || ch.mcuChannel > 255) issues.push({ path: `${at}.mcuChannel`, message: `expected an integer 0..255, got ${JSON.stringify(ch.mcuChannel)}` });
    if (!Number.isInteger(ch.rateHz) || ch.rateHz < 1 || ch.rateHz > 65535) issues.push({ path: `${at}.rateHz`, message: `expected an integer 1..65535, got ${JSON.stringify(ch.rateHz)}` });
    if (typeof ch.name !== 'string' || ch.name.length === 0) issues.push({ path: `${at}.name`, message: 'expected a channel name' });
    else if (names.has(ch.name)) issues.push({ path: `${at}.name`, message: `duplicate channel name "${ch.name}"` });
    else names.add(ch.name);
    for (const k of ['scale', 'offset'] as const) {
      if (ch[k] !== undefined && !Number.isFinite(ch[k])) issues.push({ path: `${at}.${k}`, message: `expected a finite number, got ${JSON.stringify(ch[k])}` });
    }
  });
  if (c.heartbeatMs !== undefined && c.linkTimeoutMs !== undefined && c.linkTimeoutMs < 2 * c.heartbeatMs) {
    issues.push({ path: 'linkTimeoutMs', message: `must be at least twice heartbeatMs (${c.heartbeatMs} ms), or one late frame would count as a lost link` });
  }
  return issues;
}

interface Target {
  name: string;
  scale: number;
  offset: number;
}

/** A `SensorSource` fed by MCU input channels over the firmware bridge. */
export class BridgeSource extends EventEmitter<SourceEvents> implements SensorSource {
  readonly name: string;
  private readonly config: BridgeSourceOptions;
  private readonly deps: BridgeSourceDeps;
  private readonly owner = Symbol('bridge-source');
  private lease: BridgeLease | null = null;
  private targets = new Map<number, Target[]>();
  private aligner: ChannelAligner | null = null;
  private samples = 0;
  private stopped = false;
  private linkFault = false;
  private configFault: DriverError | null = null;
  private unbind: (() => void) | null = null;

  constructor(config: BridgeSourceOptions, deps: BridgeSourceDeps) {
    super();
    if (config === null || typeof config !== 'object') throw new TypeError('config must be a bridge source config object');
    if (!deps || !deps.hub || !deps.clock) throw new TypeError('deps must provide { hub, clock }');
    this.name = String(config.name);
    this.config = config;
    this.deps = deps;
  }

  /** Validates the config (ConfigError listing every problem), takes the shared link and asks the MCU for the channels. */
  async start(): Promise<void> {
    if (this.lease !== null) return;
    if (this.stopped) throw new DriverError('KEEL_E_SERIAL_IO', `bridge source ${this.name} was stopped; create a new one`);
    const issues = bridgeSourceIssues(this.config);
    if (issues.length > 0) throw new ConfigError(issues, `bridge source "${this.name}"`);
    const c = this.config;
    for (const ch of c.channels) {
      const list = this.targets.get(ch.mcuChannel) ?? [];
      list.push({ name: ch.name, scale: ch.scale ?? 1, offset: ch.offset ?? 0 });
      this.targets.set(ch.mcuChannel, list);
    }
    if (this.targets.size > 1) {
      const periods = new Map<number, number>();
      for (const ch of c.channels) periods.set(ch.mcuChannel, Math.min(periods.get(ch.mcuChannel) ?? Infinity, 1000 / ch.rateHz));
      this.aligner = new ChannelAligner([...periods].map(([id, periodMs]) => ({ id, periodMs })), (t, raw) => this.emitJoined(t, raw));
    }
    const lease = await this.deps.hub.acquire({ path: c.path, baudRate: c.baudRate, heartbeatMs: c.heartbeatMs, linkTimeoutMs: c.linkTimeoutMs });
    if (this.stopped) {
      await lease.release();
      return;
    }
    this.lease = lease;
    const s = lease.session;
    const onSamples = (cs: ChannelSamples) => this.onSamples(cs);
    const onDown = (err: DriverError) => this.onDown(err);
    const onUp = (info: McuInfo) => this.onUp(info);
    const onRefused = (err: DriverError, at: { channel: number }) => this.onRefused(err, at.channel);
    s.on('samples', onSamples);
    s.on('down', onDown);
    s.on('up', onUp);
    s.on('refused', onRefused);
    this.unbind = () => {
      s.off('samples', onSamples);
      s.off('down', onDown);
      s.off('up', onUp);
      s.off('refused', onRefused);
    };
    // The highest rate asked for a channel wins when several names read it.
    const rates = new Map<number, number>();
    for (const ch of c.channels) rates.set(ch.mcuChannel, Math.max(rates.get(ch.mcuChannel) ?? 0, ch.rateHz));
    for (const [ch, rate] of rates) s.subscribe(this.owner, ch, rate);
    // Someone else's lease may have seen the link fail already; do not wait for the next outage.
    if (s.inOutage) this.onDown(new DriverError('KEEL_E_SERIAL_IO', `link to MCU on ${c.path} is down; keel keeps re-establishing it`, { retryable: true }));
  }

  /** Stops asking for the channels and releases the link. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    const lease = this.lease;
    this.lease = null;
    if (!lease) return;
    this.unbind?.();
    this.unbind = null;
    if (lease.session.state !== 'stopped') lease.session.unsubscribe(this.owner);
    await lease.release();
  }

  /** Samples delivered, frames dropped on the link (shared port), reopens, and link state. */
  stats(): SourceStats {
    const b = this.lease?.session.stats();
    return {
      samples: this.samples,
      dropped: b ? b.oversize + b.cobs + b.short + b.crc + b.version + b.type + b.length + b.value + b.unknownChannel : 0,
      reconnects: b?.reopens ?? 0,
      connected: b?.state === 'established',
    };
  }

  /** The shared link's counters (docs/firmware-bridge.md §7), or null before `start()`. */
  bridgeStats(): BridgeStats | null {
    return this.lease?.session.stats() ?? null;
  }

  private onSamples(cs: ChannelSamples): void {
    if (this.stopped) return;
    const targets = this.targets.get(cs.channel);
    if (!targets) return;
    if (this.aligner) {
      this.aligner.add(cs.channel, cs.t0, cs.periodMs, cs.values, this.deps.clock.now());
      return;
    }
    const n = cs.values.length;
    for (let i = 0; i < n; i++) {
      const raw = cs.values[i]!;
      const values: Record<string, number> = {};
      for (const t of targets) values[t.name] = raw * t.scale + t.offset;
      this.samples++;
      this.safeEmit('sample', { t: cs.t0 + i * cs.periodMs, values });
    }
  }

  private emitJoined(t: number, raw: Map<number, number>): void {
    const values: Record<string, number> = {};
    for (const [ch, v] of raw) for (const tg of this.targets.get(ch)!) values[tg.name] = v * tg.scale + tg.offset;
    this.samples++;
    this.safeEmit('sample', { t, values });
  }

  private onDown(err: DriverError): void {
    if (this.stopped) return;
    // A new session re-asks for every channel; its refusals (if any) arrive before 'up'.
    this.configFault = null;
    this.linkFault = true;
    this.safeEmit('fault', err);
  }

  private onUp(_info: McuInfo): void {
    if (this.stopped || !this.linkFault) return;
    this.linkFault = false;
    if (this.configFault === null) this.safeEmit('recovered');
  }

  private onRefused(err: DriverError, channel: number): void {
    if (this.stopped || !this.targets.has(channel)) return;
    const names = this.targets.get(channel)!.map((t) => t.name).join(', ');
    const e = new DriverError('KEEL_E_CONFIG', `bridge source ${this.name} (${names}): ${err.message}`, { cause: err, retryable: false });
    this.configFault = e;
    this.safeEmit('fault', e);
  }

  /** Emits without letting a listener's exception into the link's data path (see drivers/serial/source.ts). */
  private safeEmit<K extends keyof SourceEvents>(event: K, ...args: SourceEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      if (event === 'fault') return;
      const e: KeelError = new DriverError('KEEL_E_SERIAL_IO', `a '${event}' listener of bridge source ${this.name} threw: ${asError(err).message}`, { cause: err });
      try {
        this.emit('fault', e);
      } catch {
        // The fault listener threw as well; nothing left to tell.
      }
    }
  }
}
