/**
 * `keel record`: captures a live source (a serial source or a bridge link from a config, or
 * an MCU straight from its device path) into a CSV or JSON-lines file that the `replay`
 * source plays back with its original timing (docs/firmware-bridge.md §8), so field data
 * becomes a regression test.
 *
 * The file: `# keel-record v1` comment lines, then a header `t_ms,<channels...>`, then one
 * row per sample, `t_ms` relative to the first sample (ms, 3 decimals, never decreasing:
 * replay refuses files whose times go backwards, so a sample stamped earlier than the one
 * before it is clamped and counted). Play back with
 * `{type: replay, file: <file>, timeField: t_ms, timeUnit: ms}`.
 */
import { closeSync, existsSync, openSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { SystemClock, type Clock, type TimerHandle } from '../runtime/clock.ts';
import { loadConfigFile, sourceChannels } from '../runtime/config/load.ts';
import type { SourceConfig } from '../runtime/config/schema.ts';
import { KeelError, asError, type DriverError } from '../runtime/errors.ts';
import { createDriverDeps, createSource, type DriverDeps } from '../drivers/index.ts';
import type { Sample, SensorSource } from '../drivers/types.ts';
import { SystemSerialOpener, type SerialOpener } from '../drivers/serial/link.ts';
import { BridgeHub } from './hub.ts';
import { BridgeSource } from './source.ts';
import type { McuInfo } from './session.ts';

/** Help text of `keel record` (the CLI shows it for `keel record --help` and `keel help record`). */
export const RECORD_HELP = `Usage: keel record <config | device> --out <file.csv|file.jsonl> [options]

Captures a live source into a file the replay source plays back with its timing
({type: replay, file: <file>, timeField: t_ms, timeUnit: ms}), so field data becomes a test.

  <config>   a keel config file: records one of its sources (--source, or its only one)
  <device>   a serial device with bridge firmware (e.g. /dev/ttyACM0): records MCU channels

Options:
  -o, --out <file>       output file; .csv or .jsonl (refuses to overwrite without --force)
  -d, --duration <s>     stop after this many seconds (default: until Ctrl-C)
  -s, --source <name>    config mode: the source to record
  -b, --baud <n>         device mode: baud rate (default 115200)
  -c, --channels <list>  device mode: MCU channels, e.g. 0,1,6 (default: every input)
  -r, --rate <hz>        device mode: samples per second per channel (default 100)
      --wait <s>         device mode: how long to wait for the MCU's HELLO_ACK (default 5)
  -f, --force            overwrite the output file
      --json             print the summary as JSON
  -h, --help             show this help`;

/** Where `cmdRecord` writes its messages. */
export interface RecordIo {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Capabilities `cmdRecord` uses; tests replace them (the CLI passes none). */
export interface RecordDeps {
  clock: Clock;
  /** Serial opener for device mode (default: real ports). */
  opener: SerialOpener;
  /** Driver deps for config mode (default: `createDriverDeps` of the config, real IO). */
  driverDeps: Omit<DriverDeps, 'baseDir'>;
  /** Stops the recording when aborted (default: SIGINT/SIGTERM). */
  signal: AbortSignal;
}

/** The output formats. */
export type RecordFormat = 'csv' | 'jsonl';

/** Counters of a sample file. */
export interface SampleFileStats {
  rows: number;
  /** Samples stamped earlier than the previous one, written at the previous time. */
  clamped: number;
  /** Values of channels not in the CSV header (seen only after the header was written). */
  unknownValues: number;
  bytes: number;
}

const FLUSH_BYTES = 64 * 1024;

/** Writes samples as a replayable CSV or JSON-lines file (docs/firmware-bridge.md §8). */
export class SampleFile {
  readonly file: string;
  readonly format: RecordFormat;
  private fd: number;
  private channels: string[] | null;
  private readonly meta: string[];
  private t0: number | null = null;
  private lastMs = 0;
  private pending: string[] = [];
  private pendingBytes = 0;
  private readonly counters: SampleFileStats = { rows: 0, clamped: 0, unknownValues: 0, bytes: 0 };

  /**
   * Creates `file` (format from its extension). `channels` fixes the CSV header; without it
   * the header is the channels of the first sample. `meta` lines become `#` comments (CSV).
   * Throws RangeError for an unknown extension, KeelError (KEEL_E_USAGE) if the file exists
   * and `overwrite` is false.
   */
  constructor(file: string, opts: { channels?: string[]; meta?: string[]; overwrite?: boolean } = {}) {
    if (typeof file !== 'string' || file.length === 0) throw new TypeError('file must be a path');
    const ext = path.extname(file).toLowerCase();
    if (ext === '.csv') this.format = 'csv';
    else if (ext === '.jsonl' || ext === '.ndjson') this.format = 'jsonl';
    else throw new RangeError(`file: ${file} must end in .csv or .jsonl (the formats the replay source reads)`);
    if (!opts.overwrite && existsSync(file)) throw new KeelError('KEEL_E_USAGE', `${file} exists; pass --force to overwrite it`);
    this.file = file;
    this.channels = opts.channels && opts.channels.length ? [...opts.channels] : null;
    this.meta = (opts.meta ?? []).map((m) => m.replace(/[\r\n]/g, ' '));
    this.fd = openSync(file, 'w');
    if (this.format === 'csv') {
      this.push(['# keel-record v1', ...this.meta.map((m) => `# ${m}`)].join('\n') + '\n');
      if (this.channels) this.push(this.header(this.channels));
    }
  }

  /** Appends one sample. */
  write(s: Sample): void {
    if (this.fd < 0) throw new KeelError('KEEL_E_REPLAY', `${this.file} is closed`);
    if (this.t0 === null) this.t0 = s.t;
    let ms = s.t - this.t0;
    if (!(ms >= this.lastMs)) {
      this.counters.clamped++;
      ms = this.lastMs;
    }
    this.lastMs = ms;
    const t = ms.toFixed(3);
    if (this.format === 'jsonl') {
      const obj: Record<string, number> = {};
      for (const [k, v] of Object.entries(s.values)) if (k !== 't_ms' && Number.isFinite(v)) obj[k] = v;
      this.push(`{"t_ms":${t}${Object.keys(obj).length ? ',' + JSON.stringify(obj).slice(1) : '}'}\n`);
    } else {
      if (!this.channels) {
        this.channels = Object.keys(s.values).filter((k) => k !== 't_ms');
        this.push(this.header(this.channels));
      }
      let line = t;
      let known = 0;
      for (const ch of this.channels) {
        const v = s.values[ch];
        line += ',';
        if (v !== undefined && Number.isFinite(v)) {
          line += String(v);
          known++;
        }
      }
      this.counters.unknownValues += Object.keys(s.values).length - known;
      this.push(line + '\n');
    }
    this.counters.rows++;
  }

  /** Counters. */
  stats(): SampleFileStats {
    return { ...this.counters };
  }

  /** The CSV header's channels (null before the first sample when none were given). */
  columns(): string[] | null {
    return this.channels ? [...this.channels] : null;
  }

  /** Flushes and closes the file. Idempotent. */
  close(): void {
    if (this.fd < 0) return;
    if (this.format === 'csv' && !this.channels) this.push('t_ms\n'); // no sample at all: still a valid header
    this.flush();
    closeSync(this.fd);
    this.fd = -1;
  }

  private header(channels: string[]): string {
    return ['t_ms', ...channels.map((c) => (/[",\n]/.test(c) ? `"${c.replace(/"/g, '""')}"` : c))].join(',') + '\n';
  }

  private push(text: string): void {
    this.pending.push(text);
    this.pendingBytes += text.length;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    const buf = Buffer.from(this.pending.join(''), 'utf8');
    this.pending = [];
    this.pendingBytes = 0;
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd, buf, off);
    this.counters.bytes += buf.length;
  }
}

function usage(msg: string): KeelError {
  return Object.assign(new KeelError('KEEL_E_USAGE', msg), { cmd: 'record' });
}

function positiveNumber(v: unknown, flag: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0 || n > max) throw usage(`${flag} must be a positive number up to ${max}, got "${String(v)}"`);
  return n;
}

function isConfigFile(target: string): boolean {
  try {
    return statSync(target).isFile() && /\.(ya?ml|json)$/i.test(target);
  } catch {
    return false;
  }
}

/** What one recording did. */
export interface RecordSummary {
  file: string;
  format: RecordFormat;
  source: string;
  channels: string[];
  samples: number;
  durationS: number;
  faults: number;
  clamped: number;
  reason: string;
}

/**
 * `keel record <config | device> --out <file> [...]`: see RECORD_HELP. Returns the exit code
 * (0 recorded, 1 failed: nothing to record from, link never came up); throws KeelError
 * `KEEL_E_USAGE` (exit 2) and ConfigError (exit 3) for the CLI to report.
 */
export async function cmdRecord(args: string[], io: RecordIo, deps: Partial<RecordDeps> = {}): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        out: { type: 'string', short: 'o' },
        duration: { type: 'string', short: 'd' },
        source: { type: 'string', short: 's' },
        baud: { type: 'string', short: 'b' },
        channels: { type: 'string', short: 'c' },
        rate: { type: 'string', short: 'r' },
        wait: { type: 'string' },
        force: { type: 'boolean', short: 'f' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw usage(asError(err).message);
  }
  const v = parsed.values;
  if (v.help) {
    io.out(RECORD_HELP);
    return 0;
  }
  if (parsed.positionals.length !== 1) throw usage('record takes exactly one config file or device path');
  const target = parsed.positionals[0]!;
  if (typeof v.out !== 'string') throw usage('record needs --out <file.csv|file.jsonl>');
  const durationS = positiveNumber(v.duration, '--duration', 2_000_000);
  const clock = deps.clock ?? new SystemClock();
  const configMode = isConfigFile(target);
  if (configMode && (v.baud !== undefined || v.channels !== undefined || v.rate !== undefined || v.wait !== undefined)) {
    throw usage('--baud, --channels, --rate and --wait apply to a device path, not to a config file (the config says those)');
  }
  if (!configMode && v.source !== undefined) throw usage(`--source applies to a config file; ${target} is not one (a config file ends in .yaml, .yml or .json)`);

  let source: SensorSource;
  let channels: string[] | undefined;
  let label: string;
  let cleanup: () => Promise<void> = async () => undefined;
  if (configMode) {
    const { config, dir } = loadConfigFile(target); // throws ConfigError listing every problem
    const candidates = config.sources;
    let cfg: SourceConfig | undefined;
    if (v.source !== undefined) {
      cfg = candidates.find((s) => s.name === v.source);
      if (!cfg) throw usage(`no source named "${v.source}" in ${target} (sources: ${candidates.map((s) => s.name).join(', ')})`);
    } else {
      const live = candidates.filter((s) => s.type === 'serial' || s.type === 'bridge');
      if (live.length !== 1) throw usage(`${target} has ${live.length === 0 ? 'no serial or bridge source' : `several live sources (${live.map((s) => s.name).join(', ')})`}; choose one with --source`);
      cfg = live[0]!;
    }
    const driverDeps = deps.driverDeps ?? createDriverDeps(config, clock);
    source = createSource(cfg, { ...driverDeps, baseDir: dir });
    channels = sourceChannels(cfg);
    label = `${cfg.name} (${cfg.type}${'path' in cfg ? ` on ${cfg.path}` : ''}) from ${target}`;
  } else {
    const baudRate = positiveNumber(v.baud, '--baud', 4_000_000) ?? 115200;
    if (!Number.isInteger(baudRate) || baudRate < 50) throw usage(`--baud must be an integer from 50 to 4000000, got "${v.baud}"`);
    const rate = positiveNumber(v.rate, '--rate', 65535) ?? 100;
    if (!Number.isInteger(rate)) throw usage(`--rate must be a whole number of Hz, got "${v.rate}"`);
    const waitS = positiveNumber(v.wait, '--wait', 3600) ?? 5;
    let wanted: number[] | undefined;
    if (v.channels !== undefined) {
      const parts = String(v.channels).split(',').map((x) => x.trim());
      if (parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw usage(`--channels must be MCU channel numbers 0..255 separated by commas, got "${v.channels}"`);
      wanted = [...new Set(parts.map(Number))];
    }
    const hub = new BridgeHub({ opener: deps.opener ?? new SystemSerialOpener(), clock });
    const probe = await hub.acquire({ path: target, baudRate });
    const info = await waitForLink(probe.session, clock, waitS * 1000);
    if (!info) {
      await probe.release();
      io.err(`keel record: no answer from bridge firmware on ${target} within ${waitS} s; check the device path, the baud rate (${baudRate}) and the firmware`);
      return 1;
    }
    const inputs = info.analogCount + info.digitalCount;
    const list = wanted ?? Array.from({ length: inputs }, (_, i) => i);
    const bad = list.filter((c) => c >= inputs);
    if (bad.length || list.length === 0) {
      await probe.release();
      throw usage(`MCU ${info.firmwareId} has channels 0..${inputs - 1} (${info.analogCount} analog, ${info.digitalCount} digital); ${bad.length ? `no channel ${bad.join(', ')}` : 'it has no inputs'}`);
    }
    if (rate > info.maxRateHz) {
      await probe.release();
      throw usage(`--rate ${rate} is above the ${info.maxRateHz} Hz that MCU ${info.firmwareId} accepts`);
    }
    channels = list.map((c) => `ch${c}`);
    source = new BridgeSource({ type: 'bridge', name: 'mcu', path: target, baudRate, channels: list.map((c) => ({ mcuChannel: c, name: `ch${c}`, rateHz: rate })) }, { hub, clock });
    label = `MCU ${info.firmwareId} on ${target} (channels ${list.join(', ')} at ${rate} Hz)`;
    cleanup = () => probe.release();
  }

  const started = clock.now();
  const file = new SampleFile(v.out, { channels, overwrite: Boolean(v.force), meta: [`source: ${label}`, `started: ${new Date(started).toISOString()}`] });
  let faults = 0;
  const onSample = (s: Sample) => file.write(s);
  source.on('sample', onSample);
  source.on('fault', (e: DriverError) => {
    faults++;
    io.err(`keel record: ${e.message}`);
  });
  source.on('recovered', () => io.err('keel record: source recovered; recording goes on'));
  let reason = 'stopped';
  let timer: TimerHandle | undefined;
  let cleanupSignals = (): void => undefined;
  const ownSignals = deps.signal === undefined;
  const done = new Promise<void>((resolve) => {
    const finish = (why: string) => {
      reason = why;
      resolve();
    };
    if (durationS !== undefined) timer = clock.setTimeout('record:duration', () => finish('duration'), durationS * 1000);
    source.once('end', () => finish('source ended'));
    if (deps.signal) {
      if (deps.signal.aborted) finish('aborted');
      else deps.signal.addEventListener('abort', () => finish('aborted'), { once: true });
    }
    if (ownSignals) {
      const onSignal = (sig: NodeJS.Signals) => finish(sig);
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      cleanupSignals = () => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      };
    }
  });
  try {
    await source.start();
    if (!v.json) io.err(`recording ${label} to ${v.out}${durationS ? ` for ${durationS} s` : ' until Ctrl-C'}`);
    await done;
  } finally {
    clock.cancel(timer);
    cleanupSignals();
    source.off('sample', onSample);
    await source.stop().catch(() => undefined);
    await cleanup().catch(() => undefined);
    file.close();
  }
  const st = file.stats();
  const summary: RecordSummary = {
    file: v.out,
    format: file.format,
    source: label,
    channels: file.columns() ?? channels ?? [],
    samples: st.rows,
    durationS: (clock.now() - started) / 1000,
    faults,
    clamped: st.clamped,
    reason,
  };
  if (v.json) io.out(JSON.stringify(summary));
  else {
    io.out(`${v.out}: ${st.rows} samples of ${summary.channels.join(', ') || 'no channels'} in ${summary.durationS.toFixed(1)} s (${reason})${st.clamped ? `, ${st.clamped} out-of-order times clamped` : ''}${faults ? `, ${faults} faults` : ''}`);
    io.out(`replay it with: {type: replay, name: <name>, file: ${path.basename(v.out)}, timeField: t_ms, timeUnit: ms}`);
  }
  return st.rows > 0 ? 0 : 1;
}

/** Resolves with the MCU's capabilities once the session is established, or null after `ms`. */
function waitForLink(session: { info: McuInfo | null; once: (e: 'up', l: (i: McuInfo) => void) => unknown; off: (e: 'up', l: (i: McuInfo) => void) => unknown }, clock: Clock, ms: number): Promise<McuInfo | null> {
  if (session.info) return Promise.resolve(session.info);
  return new Promise((resolve) => {
    const onUp = (info: McuInfo) => {
      clock.cancel(timer);
      resolve(info);
    };
    const timer = clock.setTimeout('record:wait', () => {
      session.off('up', onUp);
      resolve(null);
    }, ms);
    session.once('up', onUp);
  });
}
