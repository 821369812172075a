/**
 * A pair of connected pseudo-terminals made by socat: bytes written to one end come out of
 * the other, and both ends are real tty devices that `serialport` opens like a USB adapter.
 * Tests and hardware-in-the-loop harnesses use it to drive the real serial code path.
 *
 * The ends are reached through stable symlinks (`<dir>/a`, `<dir>/b`), because the
 * `/dev/pts/N` numbers change on every start. Stopping socat (SIGTERM) makes both ports
 * vanish, like an unplugged USB adapter; `restart()` brings them back under the same names.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';

/** Where to make the pair. */
export interface PtyPairOptions {
  /** Directory for the two links (e.g. a fresh `fs.mkdtempSync` directory). */
  dir: string;
  /** Link names inside `dir` (default `a` and `b`). */
  names?: [string, string];
  /** How long to wait for socat to report both ends ready, ms (default 5000). */
  readyTimeoutMs?: number;
  /** socat executable (default: found on PATH). */
  socat?: string;
}

/** The socat executable on PATH, or null if it is not installed (`apt-get install socat`). */
export function socatPath(): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, 'socat');
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** Two linked pseudo-terminals from a socat child process. */
export class PtyPair {
  /** Path of the first end. */
  readonly a: string;
  /** Path of the second end. */
  readonly b: string;
  private readonly socat: string;
  private readonly readyTimeoutMs: number;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  private constructor(a: string, b: string, socat: string, readyTimeoutMs: number) {
    this.a = a;
    this.b = b;
    this.socat = socat;
    this.readyTimeoutMs = readyTimeoutMs;
  }

  /** Starts socat and resolves once both ends exist. Rejects if socat is missing or fails. */
  static async start(opts: PtyPairOptions): Promise<PtyPair> {
    if (!opts || typeof opts.dir !== 'string' || opts.dir.length === 0) throw new TypeError('opts.dir must be a directory path');
    const [na, nb] = opts.names ?? ['a', 'b'];
    const socat = opts.socat ?? socatPath();
    if (socat === null) throw new Error('socat is not installed (apt-get install socat)');
    const pair = new PtyPair(path.join(opts.dir, na), path.join(opts.dir, nb), socat, opts.readyTimeoutMs ?? 5000);
    await pair.launch();
    return pair;
  }

  /** Whether socat is running. */
  get running(): boolean {
    return this.child !== null;
  }

  /** Process id of the running socat, or undefined. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Stops socat (both ends vanish) and waits for it to exit. Idempotent. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child === null) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await this.exited;
  }

  /** Starts socat again with the same link names. */
  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  private launch(): Promise<void> {
    const args = ['-d', '-d', `pty,raw,echo=0,link=${this.a}`, `pty,raw,echo=0,link=${this.b}`];
    const child = spawn(this.socat, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    this.exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    let log = '';
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          if (this.child === child) this.child = null;
          child.kill('SIGKILL');
          reject(err);
        } else {
          resolve();
        }
      };
      const timer = setTimeout(() => settle(new Error(`socat did not become ready within ${this.readyTimeoutMs} ms:\n${log}`)), this.readyTimeoutMs);
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (text: string) => {
        // Keep the last few KiB for error messages; socat logs a little per connection.
        log = (log + text).slice(-4096);
        if (log.includes('starting data transfer loop')) settle();
      });
      child.once('error', (err) => settle(new Error(`cannot start socat: ${err.message}`)));
      child.once('exit', (code, signal) => {
        if (this.child === child) this.child = null;
        settle(new Error(`socat exited (${signal ?? code}) before it was ready:\n${log}`));
      });
    });
  }
}
