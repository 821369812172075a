/**
 * The `keel` command line. Subcommands with `--help`; human output on a terminal and JSON
 * with `--json`; distinct exit codes (see EXIT).
 */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { SystemClock } from './clock.ts';
import { loadConfigFile, type LoadedConfig } from './config/load.ts';
import { publishedSchema, type KeelConfig } from './config/schema.ts';
import { resolvePolicyModule } from './decisions/policy.ts';
import { ConfigError, KeelError, ModelError, PolicyError, asError, type ConfigIssue } from './errors.ts';
import { ModelRunner } from './inference.ts';
import { createLogger } from './ops/log.ts';
import { LiveView } from './ops/live-view.ts';
import { KEEL_VERSION, Runtime, inputElements, ruleIssues } from './runtime.ts';
import { createDriverDeps } from '../drivers/index.ts';
import { cmdId, cmdKeygen, cmdLog } from './cli-log.ts';
import { cmdRecord, RECORD_HELP } from '../firmware-bridge/record.ts';
import { generateKeyFile, type DeviceKey } from './ledger/keys.ts';
import { startSync, type SyncHandle } from './sync/attach.ts';
import { syncFileIssues } from './sync/config.ts';
import { createCommandHandler } from './sync/commands.ts';
import { LedgerRecorder, ledgerKey, ledgerKeyProblem } from './ledger/recorder.ts';
import { verifierKey } from './ledger/note.ts';
import { ServiceNotifications } from './ops/sd-notify.ts';

/** Process exit codes. */
export const EXIT = {
  ok: 0,
  /** The runtime failed while running, or could not start for a reason outside the config. */
  failure: 1,
  /** Bad command line. */
  usage: 2,
  /** The configuration (or a model it names) is invalid; nothing was started. */
  config: 3,
  /** A second signal forced the exit before the graceful shutdown finished. */
  forced: 130,
} as const;

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The config `npm start` / `keel demo` runs. */
export const DEMO_CONFIG = path.join(ROOT, 'examples', 'demo.yaml');

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Whether stderr is a terminal. */
  isTTY: boolean;
  /** Whether stdout is a terminal. */
  outTTY: boolean;
}

const HELP: Record<string, string> = {
  record: RECORD_HELP,
  main: `keel ${KEEL_VERSION}: offline inference runtime for robots and IoT devices

Usage: keel <command> [options]

Commands:
  run <config>      run a configuration until SIGINT/SIGTERM (or --duration)
  check <config>    validate a configuration and its models without starting anything
  demo              run the bundled robot demo on simulated sensors and GPIO
  schema            print the configuration's JSON Schema (for editors)
  keygen            create a device key (Ed25519, mode 0600)
  id                print a device key's verifier key (name+keyid+base64)
  log <sub> <dir>   the signed ledger: append, checkpoint, proof, consistency, export, verify, tail
  record <config|dev>  capture a live serial source or MCU link to a replayable CSV/JSONL file
  hil <run|check> <scenario...>  hardware-in-the-loop scenarios on the emulated AVR (simavr)
  fleet <sub>       the fleet: serve (broker + ingest), enroll, revoke, user, devices, tail, verify, proof, send, ingest
  version           print the version

Run 'keel <command> --help' for a command's options.
Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid configuration, 130 forced stop.`,
  run: `Usage: keel run <config> [options]

Validates the whole configuration (and every model) first and starts nothing on any error.
Logs are JSON lines on stdout; /metrics and /healthz are served on the configured address.

Options:
  -d, --duration <s>   stop after this many seconds (default: run until SIGINT/SIGTERM)
  -l, --log-level <l>  override log.level (trace, debug, info, warn, error, fatal, silent)
      --live           print the compact live view on stderr every second
  -h, --help           show this help`,
  check: `Usage: keel check <config> [options]

Reports every problem at once, each with its path (pipelines[0].model.inputs.x.shape: ...).
Loads each model to check its SHA-256 pin and tensor names, shapes and dtypes; opens no device.

Options:
      --json           print {"ok": bool, "issues": [{"path", "message"}]}
      --skip-models    check the file only, do not load the models
  -h, --help           show this help`,
  demo: `Usage: keel demo [options]

Runs examples/demo.yaml: a robot on simulated sensors and GPIO with the shipped models,
fully offline, printing a live view (sensor rate, inference latency p50/p99, decisions,
faults) until Ctrl-C or --duration.

Options:
  -d, --duration <s>   stop after this many seconds
  -c, --config <file>  run another config with the live view
      --json           print one JSON snapshot per second instead of the live view
  -h, --help           show this help`,
  schema: `Usage: keel schema [--out <file>]

Prints the JSON Schema of the configuration file (draft 2020-12 compatible). Point your
editor at it (YAML: '# yaml-language-server: $schema=<path>') for completion and checks.

Options:
  -o, --out <file>     write to a file instead of stdout
  -h, --help           show this help`,
  version: 'Usage: keel version',
  keygen: `Usage: keel keygen --out <file> [--name <origin>]

Creates an Ed25519 device key (PEM PKCS#8, mode 0600; never overwrites) and prints its
verifier key. --name sets the checkpoint origin (default keel-device).`,
  id: `Usage: keel id --key <file> [--name <origin>]

Prints the verifier key of a device key in C2SP signed-note form: name+keyid+base64(0x01||key).`,
  log: `Usage: keel log <subcommand> <dir> [options]

  append <dir> --key <file>        append JSON objects read as lines from stdin (as "event"
                                   records); all lines are checked first; prints the new size
  checkpoint <dir> [--key <file>]  print the latest signed checkpoint (with --key: sign a new one)
  proof <dir> --index <i>          C2SP tlog-proof for record i against the latest checkpoint
  consistency <dir> --from <m>     tlog-witness add-checkpoint body from size m to the latest
  export <dir> --out <outdir>      write <outdir>/checkpoint and <outdir>/records.jsonl
  verify <dir> [--key <vkey>]      re-verify every record, the tree and the checkpoint
  tail <dir> [-n N] [--json]       show the last N records (default 10)`,
};

function usageError(msg: string, cmd: string): KeelError & { cmd: string } {
  return Object.assign(new KeelError('KEEL_E_USAGE', msg), { cmd });
}

type Flags = Record<string, string | boolean | undefined>;

function parse(cmd: string, args: string[], options: ParseArgsConfig['options']): { values: Flags; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Flags, positionals: r.positionals };
  } catch (err) {
    throw usageError(asError(err).message, cmd);
  }
}

/** Longest delay a Node timer accepts, ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function seconds(v: string | undefined, cmd: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw usageError(`--duration must be a positive number of seconds, got "${v}"`, cmd);
  // Node's timers hold at most 2^31-1 ms (24.8 days); a longer delay fires after 1 ms.
  if (n * 1000 > MAX_TIMER_MS) throw usageError(`--duration must be at most ${Math.floor(MAX_TIMER_MS / 1000)} seconds (24.8 days); leave it out to run until stopped`, cmd);
  return n;
}

function printIssues(io: Io, file: string, issues: ConfigIssue[]): void {
  io.err(`${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}`);
  for (const i of issues) io.err(`  ${i.path || '(file)'}: ${i.message}`);
}

/**
 * Files the config names besides models (replay recordings, policy modules) must exist.
 * Checked here, without opening any device, so that a typo in a path is a configuration error
 * reported with the others, not a start failure after the actuators were already driven.
 */
function fileIssues(config: KeelConfig, dir: string): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  config.sources.forEach((s, i) => {
    if (s.type !== 'replay') return;
    const abs = path.resolve(dir, s.file);
    try {
      if (!statSync(abs).isFile()) issues.push({ path: `sources[${i}].file`, message: `${abs} is not a regular file` });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : asError(err).message;
      issues.push({ path: `sources[${i}].file`, message: `cannot read ${abs}: ${why} (a relative path resolves against the config file's directory)` });
    }
  });
  if (config.ledger) {
    const problem = ledgerKeyProblem(config.ledger, dir);
    if (problem) issues.push({ path: 'ledger.key', message: problem });
  }
  if (config.sync) issues.push(...syncFileIssues(config.sync, dir));
  config.pipelines.forEach((p, i) => {
    if (!p.policy) return;
    try {
      resolvePolicyModule(p.policy.module, dir);
    } catch (err) {
      if (err instanceof PolicyError) issues.push({ path: `pipelines[${i}].policy.module`, message: err.message });
      else throw err;
    }
  });
  return issues;
}

/** Loads the config file and every model; returns the issues (empty when valid). */
async function checkAll(file: string, loadModels: boolean): Promise<{ loaded?: LoadedConfig; issues: ConfigIssue[] }> {
  let loaded: LoadedConfig;
  try {
    loaded = loadConfigFile(file);
  } catch (err) {
    if (err instanceof ConfigError) return { issues: err.issues };
    throw err;
  }
  const issues: ConfigIssue[] = fileIssues(loaded.config, loaded.dir);
  if (loadModels) {
    const { config, dir } = loaded;
    await Promise.all(
      config.pipelines.map(async (p, i) => {
        try {
          const runner = await ModelRunner.load(p.model, dir, `pipelines[${i}].model`, inputElements(p));
          issues.push(...ruleIssues(p, runner, i));
          await runner.release();
        } catch (err) {
          if (err instanceof ModelError) issues.push(...(err.issues.length ? err.issues : [{ path: `pipelines[${i}].model`, message: err.message }]));
          else throw err;
        }
      }),
    );
  }
  return { loaded, issues };
}

async function cmdCheck(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('check', args, { json: { type: 'boolean' }, 'skip-models': { type: 'boolean' } });
  if (values.help) return io.out(HELP.check), EXIT.ok;
  if (positionals.length !== 1) throw usageError('check takes exactly one config file', 'check');
  const file = positionals[0];
  const { loaded, issues } = await checkAll(file, !values['skip-models']);
  if (values.json) {
    io.out(JSON.stringify({ ok: issues.length === 0, file, issues }));
  } else if (issues.length > 0) {
    printIssues(io, file, issues);
  } else {
    const c = loaded!.config;
    io.out(`${file}: ok (${c.sources.length} source${c.sources.length === 1 ? '' : 's'}, ${c.actuators.length} actuator${c.actuators.length === 1 ? '' : 's'}, ${c.pipelines.length} pipeline${c.pipelines.length === 1 ? '' : 's'}${values['skip-models'] ? ', models not loaded' : ', models pinned and matching'})`);
  }
  return issues.length === 0 ? EXIT.ok : EXIT.config;
}

interface RunOptions {
  file: string;
  durationS?: number;
  logLevel?: string;
  live: 'tty' | 'json' | 'none';
  logFd: 1 | 2;
  /** If the configured ops port is taken, serve on a free one instead of refusing (the demo). */
  portFallback?: boolean;
  /** Without a ledger section, record into a fresh key and ledger in a temp dir (the demo). */
  demoLedger?: boolean;
}

/** Whether host:port can be bound right now. */
function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

async function runConfig(o: RunOptions, io: Io): Promise<number> {
  const { loaded, issues } = await checkAll(o.file, false);
  if (issues.length > 0 || !loaded) {
    printIssues(io, o.file, issues);
    io.err('refusing to start: fix the configuration (keel check shows the same list)');
    return EXIT.config;
  }
  const { config, dir } = loaded;
  if (o.portFallback && config.http.enabled && config.http.port !== 0 && !(await portFree(config.http.host, config.http.port))) {
    io.err(`keel: port ${config.http.port} is taken; serving /metrics and /healthz on a free port instead (shown in the live view)`);
    config.http.port = 0;
  }
  const level = (o.logLevel ?? config.log.level) as Parameters<typeof createLogger>[0];
  const logger = createLogger(level, o.logFd);
  const clock = new SystemClock();
  let runtime: Runtime;
  try {
    runtime = await Runtime.create(config, { ...createDriverDeps(config, clock), clock, logger, baseDir: dir });
  } catch (err) {
    if (err instanceof ModelError && err.issues.length) {
      printIssues(io, o.file, err.issues);
      io.err('refusing to start: fix the configuration (keel check shows the same list)');
      return EXIT.config;
    }
    throw err;
  }
  let recorder: LedgerRecorder | undefined;
  if (o.demoLedger && !config.ledger) {
    // Show the signed ledger at work without asking for a key: a throwaway one in a temp dir.
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-demo-'));
    generateKeyFile(path.join(tmp, 'demo.key'), { name: `${config.device.name}.demo` });
    config.ledger = { dir: path.join(tmp, 'ledger'), key: path.join(tmp, 'demo.key'), durability: 'batch', flushMs: 200, intervalMs: 1000, checkpointEveryRecords: 1000, checkpointEveryMs: 5000, maxBuffered: 100_000, onFull: 'drop-oldest' };
  }
  let deviceKey: DeviceKey | undefined;
  if (config.ledger) {
    try {
      const { key, created } = ledgerKey(config.ledger, dir, config.device.name);
      deviceKey = key;
      if (created) logger.warn({ key: path.resolve(dir, config.ledger.key), verifierKey: verifierKey(key.name ?? config.device.name, key.publicKey) }, 'ledger.createKey: created a new device key; give its verifier key to the fleet');
      recorder = await LedgerRecorder.open(config.ledger, key, config.device.name, path.resolve(dir, config.ledger.dir), clock, logger);
      recorder.attach(runtime, readFileSync(o.file));
    } catch (err) {
      await runtime.stop('ledger unavailable').catch(() => undefined);
      io.err(`keel: cannot open the ledger: ${asError(err).message}`);
      return EXIT.failure;
    }
  }
  let view: LiveView | undefined;
  const stopped = new Promise<string>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals > 1) {
        io.err(`second ${sig}: exiting without finishing the shutdown`);
        process.exit(EXIT.forced);
      }
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    if (o.durationS) setTimeout(() => resolve('duration'), o.durationS * 1000).unref();
    // The reader of the live view went away (`keel demo --json | head -1`): stop as for a
    // signal, safe state first, instead of writing into a closed pipe.
    if (o.live !== 'none') (o.logFd === 2 ? process.stdout : process.stderr).once('error', () => resolve('output closed'));
  });
  try {
    await runtime.start();
  } catch (err) {
    logger.error({ err: asError(err).message, code: (err as KeelError).code }, 'start failed');
    await runtime.stop('start failed').catch(() => undefined);
    await recorder?.close().catch(() => undefined);
    io.err(`keel: cannot start: ${asError(err).message}`);
    return err instanceof KeelError && err.code === 'KEEL_E_CONFIG' ? EXIT.config : EXIT.failure;
  }
  // Sync starts once the runtime runs (commands may actuate); a fleet that is down only grows
  // the backlog, so only a sync section that cannot work at all (unreadable fleet key) stops keel.
  let sync: SyncHandle | undefined;
  if (config.sync && recorder && deviceKey) {
    const ledger = recorder.ledger;
    const rec = recorder;
    const key = deviceKey;
    const operators = config.sync.operators;
    try {
      sync = await startSync({
        config,
        baseDir: dir,
        runtime,
        ledger,
        key,
        clock,
        logger,
        commands: (client) =>
          createCommandHandler({
            device: config.device.name,
            key: { name: ledger.origin, privateKey: key.privateKey },
            operators,
            runtime,
            recorder: rec,
            clock,
            logger,
            stateFile: path.join(ledger.dir, 'commands.json'),
            actions: {
              // Not recorder.checkpoint(): that one logs and swallows a failure, which would be answered as done.
              checkpoint: async () => {
                await rec.flush();
                await ledger.checkpoint();
              },
              sync: () => client.requestSync(),
              rebirth: () => void client.rebirth(),
            },
          }).handle,
      });
    } catch (err) {
      await runtime.stop('sync unavailable').catch(() => undefined);
      await recorder.close().catch(() => undefined);
      io.err(`keel: cannot start sync: ${asError(err).message}`);
      return err instanceof KeelError && err.code === 'KEEL_E_CONFIG' ? EXIT.config : EXIT.failure;
    }
  }
  // The live view takes whichever stream the logs do not use: stdout for the demo (logs on
  // stderr), stderr for `run --live` (JSON logs on stdout).
  if (o.live !== 'none') {
    const toStdout = o.logFd === 2;
    view = new LiveView(runtime, { json: o.live === 'json', write: toStdout ? io.out : io.err, tty: toStdout ? io.outTTY : io.isTTY, title: config.device.name, ledger: recorder, sync: sync?.client });
  }
  view?.start();
  const notify = ServiceNotifications.fromEnv(process.env, { clock, health: () => runtime.health(), onError: (e) => logger.warn({ err: e.message }, 'systemd notification failed') });
  await notify?.ready();
  const reason = await stopped;
  await notify?.stopping(reason);
  view?.stop();
  await runtime.stop(reason);
  // Sync stops before the ledger closes: in-flight acks are awaited briefly, then the offline status.
  await sync?.stop().catch((err) => logger.warn({ err: asError(err).message }, 'sync stop failed'));
  // After the runtime stopped (safe state recorded): final flush, checkpoint, close.
  await recorder?.close();
  // The last line of a clean run: tells a supervisor's log a clean stop from a crash.
  logger.info({ reason }, 'keel stopped');
  view?.final();
  if (recorder && o.demoLedger && o.live !== 'json') io.err(`ledger: ${recorder.ledger.dir} (${recorder.ledger.size} records, signed; check it with: npx keel log verify ${recorder.ledger.dir})`);
  return EXIT.ok;
}

async function cmdRun(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('run', args, {
    duration: { type: 'string', short: 'd' },
    'log-level': { type: 'string', short: 'l' },
    live: { type: 'boolean' },
  });
  if (values.help) return io.out(HELP.run), EXIT.ok;
  if (positionals.length !== 1) throw usageError('run takes exactly one config file', 'run');
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  const lvl = values['log-level'] as string | undefined;
  if (lvl !== undefined && !levels.includes(lvl)) throw usageError(`--log-level must be one of ${levels.join(', ')}`, 'run');
  return runConfig({ file: positionals[0], durationS: seconds(values.duration as string | undefined, 'run'), logLevel: lvl, live: values.live ? 'tty' : 'none', logFd: 1 }, io);
}

async function cmdDemo(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('demo', args, {
    duration: { type: 'string', short: 'd' },
    config: { type: 'string', short: 'c' },
    json: { type: 'boolean' },
  });
  if (values.help) return io.out(HELP.demo), EXIT.ok;
  if (positionals.length) throw usageError('demo takes no positional arguments', 'demo');
  return runConfig(
    { file: (values.config as string | undefined) ?? DEMO_CONFIG, durationS: seconds(values.duration as string | undefined, 'demo'), logLevel: 'warn', live: values.json ? 'json' : 'tty', logFd: 2, portFallback: true, demoLedger: true },
    io,
  );
}

function cmdSchema(args: string[], io: Io): number {
  const { values, positionals } = parse('schema', args, { out: { type: 'string', short: 'o' } });
  if (values.help) return io.out(HELP.schema), EXIT.ok;
  if (positionals.length) throw usageError('schema takes no positional arguments', 'schema');
  const text = JSON.stringify(publishedSchema(), null, 2) + '\n';
  if (values.out) writeFileSync(values.out as string, text);
  else io.out(text.trimEnd());
  return EXIT.ok;
}

/** Runs the CLI with `argv` (without node and script); returns the exit code. */
export async function main(argv: string[], io: Io): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case undefined:
      case 'help':
      case '-h':
      case '--help':
        if (rest[0] && HELP[rest[0]]) io.out(HELP[rest[0]]);
        else io.out(HELP.main);
        return cmd === undefined ? EXIT.usage : EXIT.ok;
      case 'version':
      case '--version':
      case '-V': {
        const { values, positionals } = parse('version', rest, {});
        if (values.help) return io.out(HELP.version), EXIT.ok;
        if (positionals.length) throw usageError('version takes no arguments', 'version');
        io.out(KEEL_VERSION);
        return EXIT.ok;
      }
      case 'check':
        return await cmdCheck(rest, io);
      case 'run':
        return await cmdRun(rest, io);
      case 'demo':
        return await cmdDemo(rest, io);
      case 'schema':
        return cmdSchema(rest, io);
      case 'record':
        return await cmdRecord(rest, io);
      case 'hil':
        // Imported lazily: keel run does not load the HIL harness.
        return await (await import('../firmware-bridge/hil/cli.ts')).cmdHil(rest, io);
      case 'fleet':
        // Imported lazily: keel run does not load aedes, ws and SQLite.
        return await (await import('../fleet/serve.ts')).cmdFleet(rest, io);
      case 'keygen':
      case 'id':
      case 'log': {
        const { values, positionals } = parse(cmd, rest, {
          out: { type: 'string', short: 'o' },
          name: { type: 'string' },
          key: { type: 'string', short: 'k' },
          index: { type: 'string' },
          from: { type: 'string' },
          json: { type: 'boolean' },
          n: { type: 'string', short: 'n' },
        });
        if (values.help) return io.out(HELP[cmd]), EXIT.ok;
        const logIo = { ...io, stdin: () => readFileSync(0, 'utf8') };
        try {
          if (cmd === 'keygen') return cmdKeygen(values, logIo);
          if (cmd === 'id') return cmdId(values, logIo);
          return await cmdLog(positionals[0], positionals[1], values, logIo);
        } catch (err) {
          if (err instanceof KeelError && err.code === 'KEEL_E_USAGE') throw Object.assign(err, { cmd });
          if (err instanceof RangeError) {
            io.err(`keel: ${err.message}`);
            return EXIT.usage;
          }
          throw err;
        }
      }
      default:
        throw usageError(`unknown command "${cmd}"`, 'main');
    }
  } catch (err) {
    if (err instanceof KeelError && err.code === 'KEEL_E_USAGE') {
      io.err(`keel: ${err.message}`);
      io.err(`Run 'keel ${(err as KeelError & { cmd?: string }).cmd === 'main' ? '' : `${(err as KeelError & { cmd?: string }).cmd} `}--help' for usage.`);
      return EXIT.usage;
    }
    if (err instanceof ConfigError) {
      printIssues(io, 'config', err.issues);
      return EXIT.config;
    }
    const e = asError(err);
    io.err(`keel: ${e.message}`);
    if (!(err instanceof KeelError) && process.env.KEEL_DEBUG) io.err(e.stack ?? '');
    return EXIT.failure;
  }
}

/** Entry point for bin/keel.js and `tsx runtime/cli.ts`: runs main on process.argv and sets the exit code. */
export async function runCli(): Promise<void> {
  const io: Io = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n'), isTTY: Boolean(process.stderr.isTTY), outTTY: Boolean(process.stdout.isTTY) };
  // Writing to a pipe whose reader has gone (EPIPE) emits 'error' on the stream, which would
  // crash keel with a stack trace; output nobody reads is lost, nothing else (runConfig stops
  // a live view whose reader went away).
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  let code: number;
  try {
    code = await main(process.argv.slice(2), io);
  } catch (err) {
    process.stderr.write(`keel: ${asError(err).message}\n`);
    code = EXIT.failure;
  }
  process.exitCode = code;
  // Everything is closed by now; if a stray handle still holds the loop, do not hang forever.
  setTimeout(() => process.exit(code), 3000).unref();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) void runCli();
