/**
 * TypeScript side of the simavr HIL harness (firmware-bridge/hil/keel-hil.c): builds the
 * reference firmware and the harness with make, starts an emulated ATmega328P whose UART is
 * a pseudo-terminal, and speaks the harness's control channel (README.md beside this file)
 * so a test can play the board's surroundings: set analog and digital inputs, read the
 * outputs, and wait for output changes.
 *
 * Test infrastructure: it runs real tools (make, avr-gcc, libsimavr) and is not imported by
 * the runtime.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The Debian packages the HIL needs (CI installs them; developers may not have them). */
export const HIL_APT_PACKAGES = 'gcc-avr avr-libc simavr libsimavr-dev libsimavrparts1';
/** The install hint printed by tests that skip for lack of the HIL tools. */
export const HIL_INSTALL_HINT = `apt-get install ${HIL_APT_PACKAGES}`;

/** Where the HIL sources and build outputs live. */
export interface HilPaths {
  /** firmware-bridge/firmware (Makefile for host tests and the AVR ELF). */
  firmwareDir: string;
  /** firmware-bridge/hil (Makefile for keel-hil). */
  hilDir: string;
  /** The reference firmware ELF (built by `make avr`). */
  elf: string;
  /** The harness executable (built by `make` in hilDir). */
  harness: string;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Paths of the HIL pieces in this checkout. */
export function hilPaths(): HilPaths {
  const firmwareDir = path.resolve(HERE, '..', 'firmware');
  return {
    firmwareDir,
    hilDir: HERE,
    elf: path.join(firmwareDir, 'build', 'avr', 'keel-ref-avr.elf'),
    harness: path.join(HERE, 'build', 'keel-hil'),
  };
}

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    if (!dir) return false;
    try {
      fs.accessSync(path.join(dir, tool), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * What is missing to build and run the HIL (empty when everything is there): tools on PATH
 * and the headers/libraries of avr-libc and libsimavr.
 */
export function missingHilTools(): string[] {
  const missing: string[] = [];
  for (const tool of ['make', 'cc', 'avr-gcc', 'avr-objcopy']) if (!onPath(tool)) missing.push(tool);
  const files: Array<[string, string]> = [
    ['/usr/lib/avr/include/avr/io.h', 'avr-libc'],
    ['/usr/include/simavr/sim_avr.h', 'libsimavr-dev'],
  ];
  for (const [file, what] of files) if (!fs.existsSync(file)) missing.push(`${what} (${file})`);
  const libdirs = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib', '/usr/local/lib'];
  if (!libdirs.some((d) => fs.existsSync(path.join(d, 'libsimavr.so')))) missing.push('libsimavr-dev (libsimavr.so)');
  return missing;
}

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = new Error(`${cmd} ${args.join(' ')} failed in ${cwd}: ${err.message}\n${stdout}\n${stderr}`.trim(), {
          cause: err,
        });
        reject(e);
      } else resolve({ stdout, stderr });
    });
  });
}

/** Whether a process with this pid exists (signal 0 probes without signalling). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Serializes builds across test processes (node's runner may run test files in parallel and
 * concurrent makes would write the same files). The lock is a directory holding the owner's
 * pid; a lock whose owner died is taken over.
 */
async function withBuildLock<T>(fn: () => Promise<T>): Promise<T> {
  const lock = path.join(HERE, '..', 'firmware', 'build', '.lock');
  fs.mkdirSync(path.dirname(lock), { recursive: true });
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let owner = NaN;
      let stale = false;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
        stale = Number.isInteger(owner) && owner > 0 && !alive(owner);
      } catch {
        // No pid yet: the owner is between mkdir and writing it (or died right there).
        try {
          stale = Date.now() - fs.statSync(lock).mtimeMs > 10_000;
        } catch {
          /* released meanwhile */
        }
      }
      if (stale) fs.rmSync(lock, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for the build lock ${lock}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

/** Builds (incrementally) the AVR firmware ELF and the keel-hil harness; returns their paths. */
export async function buildHil(): Promise<HilPaths> {
  const p = hilPaths();
  await withBuildLock(async () => {
    await run('make', ['--no-print-directory', 'avr'], p.firmwareDir, 120_000);
    await run('make', ['--no-print-directory'], p.hilDir, 120_000);
  });
  return p;
}

/** Builds and runs the host unit tests of the C core (vectors, engine, fuzz); returns make's output. */
export async function runFirmwareHostTests(fuzzChunks = 1_000_000): Promise<string> {
  const p = hilPaths();
  const { stdout, stderr } = await withBuildLock(() =>
    run('make', ['--no-print-directory', 'test', `FUZZ_CHUNKS=${fuzzChunks}`], p.firmwareDir, 300_000),
  );
  return `${stdout}${stderr}`;
}

/** What an emulated pin currently does. */
export interface PinState {
  /** Arduino pin number (2..19; 14..19 are A0..A5). */
  pin: number;
  /** `input` when the firmware no longer drives the pin. */
  kind: 'digital' | 'pwm' | 'input';
  /** Digital level 0/1, or PWM duty scaled to 0..255 (the protocol's PWM value). */
  value: number;
  /** PWM duty cycle 0..1 (PWM only). */
  duty?: number;
}

/** An output change reported by the harness. */
export interface OutputEvent extends PinState {
  /** Emulated time of the change, microseconds since the board started (at most 50 us late). */
  tUs: number;
  /** Host wall-clock time when the harness saw it, epoch milliseconds. */
  hostMs: number;
}

/** Options of startBoard(). */
export interface BoardOptions {
  /** Firmware ELF; default: the reference firmware (built if `build` is not false). */
  elf?: string;
  /** Build firmware and harness first (default true; make is incremental). */
  build?: boolean;
  /** Emulated seconds per wall second (default 1: real time). */
  speed?: number;
  /** How long to wait for the harness's ready line, ms (default 10000). */
  startTimeoutMs?: number;
  /** How long a control command may take, ms (default 5000). */
  commandTimeoutMs?: number;
}

interface Pending {
  cmd: string;
  resolve: (reply: Record<string, unknown>) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A running emulated board. Emits `output` (OutputEvent), `fault` (message: a libsimavr core
 * error such as an invalid write), `lag` (behindMs) and `exit` ({ reason, code }).
 */
export class Board extends EventEmitter {
  /** The pseudo-terminal bridged to the MCU's UART0; open it like a serial port. */
  readonly ptyPath: string;
  /** Every output change so far, in order. */
  readonly events: OutputEvent[] = [];
  /** Every fault message so far. */
  readonly faults: string[] = [];
  /** Exit reason once the harness exited ('quit', 'eof', 'signal', 'crashed', ...). */
  exitReason: string | null = null;
  private readonly latest = new Map<number, OutputEvent>();
  private readonly pending: Pending[] = [];
  private readonly exited: Promise<number | null>;
  private stderrTail = '';

  /** @internal use startBoard(). */
  constructor(
    private readonly child: ChildProcess,
    ready: Record<string, unknown>,
    lines: AsyncIterator<string> & { onLine: (fn: (line: string) => void) => void },
    private readonly commandTimeoutMs: number,
  ) {
    super();
    this.ptyPath = String(ready.pty);
    lines.onLine((line) => this.onLine(line));
    this.exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        const err = new Error(`keel-hil exited (${this.exitReason ?? `code ${code}`})${this.stderrTail ? `: ${this.stderrTail.slice(-2000)}` : ''}`);
        for (const p of this.pending.splice(0)) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        resolve(code);
      });
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString('utf8')).slice(-8192);
    });
    // A failed kill() or a broken stdin pipe must not crash the test process; the exit
    // handler above reports what happened.
    child.on('error', () => {});
    child.stdin?.on('error', () => {});
  }

  /** The last lines libsimavr and the harness wrote to stderr (for diagnostics). */
  get stderr(): string {
    return this.stderrTail;
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not ours: the protocol is JSON lines only
    }
    if (typeof msg.reply === 'string') {
      const p = this.pending.shift();
      if (!p) return;
      clearTimeout(p.timer);
      if (msg.ok === true) p.resolve(msg);
      else p.reject(new Error(`keel-hil: ${p.cmd}: ${String(msg.error)}`));
      return;
    }
    switch (msg.event) {
      case 'output': {
        const ev: OutputEvent = {
          pin: Number(msg.pin),
          kind: msg.kind as PinState['kind'],
          value: Number(msg.value),
          tUs: Number(msg.t_us),
          hostMs: Number(msg.host_ms),
        };
        if (typeof msg.duty === 'number') ev.duty = msg.duty;
        this.events.push(ev);
        this.latest.set(ev.pin, ev);
        this.emit('output', ev);
        break;
      }
      case 'fault':
        this.faults.push(String(msg.message));
        this.emit('fault', String(msg.message));
        break;
      case 'lag':
        this.emit('lag', Number(msg.behind_ms));
        break;
      case 'exit':
        this.exitReason = String(msg.reason);
        this.emit('exit', { reason: this.exitReason, code: Number(msg.code) });
        break;
      default:
        break;
    }
  }

  /** Sends one control command and resolves with its reply (rejects on `ok: false`). */
  command(line: string): Promise<Record<string, unknown>> {
    if (/[\r\n]/.test(line)) throw new RangeError('line must be a single line');
    if (this.child.exitCode !== null || this.child.signalCode !== null || !this.child.stdin?.writable) {
      return Promise.reject(new Error(`keel-hil is not running (${this.exitReason ?? 'exited'})`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.pending.findIndex((p) => p.timer === timer);
        if (i >= 0) this.pending.splice(i, 1);
        reject(new Error(`keel-hil: no reply to '${line}' within ${this.commandTimeoutMs} ms`));
      }, this.commandTimeoutMs);
      this.pending.push({ cmd: line, resolve, reject, timer });
      this.child.stdin!.write(`${line}\n`);
    });
  }

  /** Sets analog input `channel` (0..7) to `counts` (0..1023 of the 10-bit ADC at the AVcc reference). */
  async setAnalog(channel: number, counts: number): Promise<void> {
    if (!Number.isInteger(channel) || channel < 0 || channel > 7) throw new RangeError(`channel must be 0..7, got ${channel}`);
    if (!Number.isInteger(counts) || counts < 0 || counts > 1023) throw new RangeError(`counts must be 0..1023, got ${counts}`);
    await this.command(`analog ${channel} ${counts}`);
  }

  /** Sets analog input `channel` (0..7) to a voltage in millivolts (0..vcc). */
  async setAnalogMillivolts(channel: number, mv: number): Promise<void> {
    if (!Number.isInteger(channel) || channel < 0 || channel > 7) throw new RangeError(`channel must be 0..7, got ${channel}`);
    if (!Number.isInteger(mv) || mv < 0) throw new RangeError(`mv must be a non-negative integer, got ${mv}`);
    await this.command(`analog_mv ${channel} ${mv}`);
  }

  /** Drives digital input `pin` (Arduino number 2..19) to `level`. */
  async setDigital(pin: number, level: 0 | 1 | boolean): Promise<void> {
    if (!Number.isInteger(pin) || pin < 2 || pin > 19) throw new RangeError(`pin must be 2..19, got ${pin}`);
    await this.command(`digital ${pin} ${level ? 1 : 0}`);
  }

  /** Every pin the firmware drives right now. */
  async outputs(): Promise<PinState[]> {
    const r = await this.command('outputs');
    return (r.outputs as PinState[]).map((o) => ({ ...o }));
  }

  /** The last reported state of `pin`, if it ever was an output. */
  output(pin: number): OutputEvent | undefined {
    return this.latest.get(pin);
  }

  /**
   * Resolves with the first output state that satisfies `pred`: the latest known state of a
   * pin if it already does, otherwise the next matching change. Rejects after `timeoutMs`.
   */
  waitForOutput(pred: (e: OutputEvent) => boolean, timeoutMs = 2000): Promise<OutputEvent> {
    for (const e of this.latest.values()) if (pred(e)) return Promise.resolve(e);
    return new Promise((resolve, reject) => {
      const onOutput = (e: OutputEvent): void => {
        if (!pred(e)) return;
        cleanup();
        resolve(e);
      };
      const onExit = (): void => {
        cleanup();
        reject(new Error(`keel-hil exited (${this.exitReason}) while waiting for an output`));
      };
      const timer = setTimeout(() => {
        cleanup();
        const now = [...this.latest.values()].map((e) => `${e.pin}:${e.kind}=${e.value}`).join(' ');
        reject(new Error(`no matching output change within ${timeoutMs} ms (pins: ${now})`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('output', onOutput);
        this.off('exit', onExit);
      };
      this.on('output', onOutput);
      this.once('exit', onExit);
    });
  }

  /** Emulated time (us since start), host time (epoch ms) and how far emulation trails wall time. */
  async time(): Promise<{ tUs: number; hostMs: number; behindMs: number }> {
    const r = await this.command('time');
    return { tUs: Number(r.t_us), hostMs: Number(r.host_ms), behindMs: Number(r.behind_ms) };
  }

  /** Harness counters (bytes each way, drops, UART XOFF events, faults, resets, worst lag). */
  async stats(): Promise<Record<string, number>> {
    const r = await this.command('stats');
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(r)) if (typeof v === 'number') out[k] = v;
    return out;
  }

  /** Discards firmware output that no client has read from the pty yet. */
  async flush(): Promise<void> {
    await this.command('flush');
  }

  /** Connects (true) or disconnects (false) the UART wire, as if the cable were pulled. */
  async setLink(up: boolean): Promise<void> {
    await this.command(`link ${up ? 1 : 0}`);
  }

  /** Resets the MCU (the reset button): firmware restarts, emulated time keeps running. */
  async reset(): Promise<void> {
    await this.command('reset');
  }

  /** Stops the harness (quit, then SIGTERM, then SIGKILL) and resolves with its exit code. */
  async stop(): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.stdin?.end('quit\n');
      const t1 = setTimeout(() => this.child.kill('SIGTERM'), 2000);
      const t2 = setTimeout(() => this.child.kill('SIGKILL'), 4000);
      const code = await this.exited;
      clearTimeout(t1);
      clearTimeout(t2);
      return code;
    }
    return this.exited;
  }
}

/** Splits a stream into lines and hands each to the registered callback. */
function lineReader(stream: NodeJS.ReadableStream): AsyncIterator<string> & { onLine: (fn: (line: string) => void) => void } {
  let buf = '';
  let sink: ((line: string) => void) | null = null;
  const queued: string[] = [];
  const waiters: Array<(r: IteratorResult<string>) => void> = [];
  let ended = false;
  stream.setEncoding?.('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (sink) sink(line);
      else if (waiters.length) waiters.shift()!({ value: line, done: false });
      else queued.push(line);
    }
  });
  stream.on('end', () => {
    ended = true;
    for (const w of waiters.splice(0)) w({ value: undefined, done: true });
  });
  return {
    next(): Promise<IteratorResult<string>> {
      if (queued.length) return Promise.resolve({ value: queued.shift()!, done: false });
      if (ended) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve) => waiters.push(resolve));
    },
    onLine(fn: (line: string) => void): void {
      sink = fn;
      for (const line of queued.splice(0)) fn(line);
    },
  };
}

/**
 * Starts an emulated board running `opts.elf` (default: the reference firmware, built
 * first). Resolves once the harness reports its pty; the firmware is already running.
 */
export async function startBoard(opts: BoardOptions = {}): Promise<Board> {
  const speed = opts.speed ?? 1;
  if (!(speed > 0.001 && speed <= 100)) throw new RangeError(`opts.speed must be in (0.001, 100], got ${speed}`);
  const paths = opts.build === false ? hilPaths() : await buildHil();
  const elf = opts.elf ?? paths.elf;
  if (!fs.existsSync(elf)) throw new Error(`firmware ELF not found: ${elf} (run make -C ${paths.firmwareDir} avr)`);
  if (!fs.existsSync(paths.harness)) throw new Error(`keel-hil not built: ${paths.harness} (run make -C ${paths.hilDir})`);
  const child = spawn(paths.harness, ['--speed', String(speed), elf], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = lineReader(child.stdout!);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString('utf8')).slice(-4096);
  });
  const startTimeout = opts.startTimeoutMs ?? 10_000;
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`keel-hil did not report ready within ${startTimeout} ms: ${stderr}`));
    }, startTimeout);
    const fail = (why: string): void => {
      clearTimeout(timer);
      reject(new Error(`keel-hil failed to start (${why}): ${stderr}`));
    };
    child.once('error', (err) => fail(err.message));
    child.once('exit', (code) => fail(`exit code ${code}`));
    void (async () => {
      for (;;) {
        const r = await lines.next();
        if (r.done) return;
        try {
          const msg = JSON.parse(r.value) as Record<string, unknown>;
          if (msg.event === 'ready' && typeof msg.pty === 'string') {
            clearTimeout(timer);
            child.removeAllListeners('exit');
            child.removeAllListeners('error');
            resolve(msg);
            return;
          }
        } catch {
          /* not a JSON line: ignore */
        }
      }
    })();
  });
  return new Board(child, ready, lines, opts.commandTimeoutMs ?? 5000);
}
