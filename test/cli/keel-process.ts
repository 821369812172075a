/**
 * Runs the real `keel` command line as a child process, the way a user runs it
 * (`node --import tsx runtime/cli.ts ...` from the repository root), for the tests in this
 * folder. Every child is tracked, so `killAll()` in an `after` hook leaves none behind when a
 * test fails half-way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { TIME_SCALE } from '../helpers.ts';

/** The repository root (cwd of every child). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A line of a JavaScript stack trace, which a user must never see. */
export const STACK_LINE = /^\s+at \S/m;

/** How a finished child ended, and everything it printed. */
export interface KeelResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Options of `keel()` / `startKeel()`. */
export interface KeelOptions {
  /** Kill the child (SIGKILL) and fail after this long, ms. Default 20 000. */
  timeoutMs?: number;
  /** Run `bin/keel.js` (the installed `keel` command) instead of `runtime/cli.ts`. */
  bin?: boolean;
  /** Text written to the child's stdin (then closed); default: no stdin. */
  stdin?: string;
}

const live = new Set<ChildProcess>();
/** Set by killAll(): pools start no new child after it. */
let closing = false;

function env(): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  // A child must not think it is a node:test subprocess, nor print debug stacks.
  delete e.NODE_TEST_CONTEXT;
  delete e.KEEL_DEBUG;
  return e;
}

/** A running keel process. */
export class KeelProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  /** Settles when the child has exited (never rejects). */
  readonly exited: Promise<KeelResult>;
  private readonly timer: NodeJS.Timeout;
  private waiters: (() => void)[] = [];

  constructor(args: string[], o: KeelOptions = {}) {
    const entry = o.bin ? ['bin/keel.js'] : ['--import', 'tsx', 'runtime/cli.ts'];
    this.child = spawn(process.execPath, [...entry, ...args], { cwd: ROOT, env: env(), stdio: [o.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    if (o.stdin !== undefined) this.child.stdin!.end(o.stdin);
    live.add(this.child);
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d;
      this.notify();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      this.notify();
    });
    const timeoutMs = (o.timeoutMs ?? 20_000) * TIME_SCALE;
    this.timer = setTimeout(() => {
      this.stderr += `\n[test: killed after ${timeoutMs} ms]`;
      this.child.kill('SIGKILL');
    }, timeoutMs);
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        clearTimeout(this.timer);
        live.delete(this.child);
        this.notify();
        resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
      });
    });
  }

  /** Whether the child is still running. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** JSON log lines printed on stdout so far (non-JSON lines are skipped). */
  logs(): Record<string, unknown>[] {
    return jsonLines(this.stdout);
  }

  /** Resolves with the first stdout JSON log line whose msg starts with `msg`; rejects on exit or after `timeoutMs`. */
  async waitForLog(msg: string, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    timeoutMs *= TIME_SCALE;
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith(msg));
      if (hit) return hit;
      if (!this.running) throw new Error(`keel exited (${this.child.exitCode ?? this.child.signalCode}) before logging "${msg}"\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
      if (Date.now() > end) throw new Error(`no "${msg}" log line after ${timeoutMs} ms\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Sends a signal to the child. */
  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/** Starts `keel <args>` and returns the running process. */
export function startKeel(args: string[], o?: KeelOptions): KeelProcess {
  return new KeelProcess(args, o);
}

/** Runs `keel <args>` to completion. */
export function keel(args: string[], o?: KeelOptions): Promise<KeelResult> {
  return new KeelProcess(args, o).exited;
}

/** Runs the jobs with at most `limit` at a time (two cores: more children only thrash); starts none after killAll(). */
export async function pool<T, R>(items: readonly T[], limit: number, job: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length && !closing) {
      const i = next++;
      out[i] = await job(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Kills every child still running (SIGKILL) and waits for them to go. For `after` hooks. */
export async function killAll(): Promise<void> {
  closing = true;
  const waits = [...live].map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : (c.once('close', () => r()), c.kill('SIGKILL')))));
  await Promise.all(waits);
}

/** Parses every line of `text` that is a JSON object; other lines are skipped. */
export function jsonLines(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a partial line still being written
    }
  }
  return out;
}

/**
 * Copies a config into `dir` so it runs from there: model, replay and policy paths made
 * absolute (they are relative to the original file), `http.port` set to `port`
 * (0: any free port). Returns the new file's path.
 */
export function portableCopy(src: string, dir: string, port: number, edit?: (config: Record<string, any>) => void): string {
  const from = path.dirname(path.resolve(ROOT, src));
  const config = parse(readFileSync(path.resolve(ROOT, src), 'utf8')) as Record<string, any>;
  for (const s of config.sources ?? []) if (s.type === 'replay') s.file = path.resolve(from, s.file);
  for (const p of config.pipelines ?? []) {
    if (p.model?.path) p.model.path = path.resolve(from, p.model.path);
    if (p.policy?.module) p.policy.module = path.resolve(from, p.policy.module);
  }
  config.http = { ...config.http, port };
  edit?.(config);
  const out = path.join(dir, path.basename(src));
  writeFileSync(out, stringify(config));
  return out;
}

/** Whether nothing listens on host:port (tries to bind it, then lets go). */
export function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** Holds host:port (a plain TCP listener) until `close()`; records connections it saw. */
export async function holdPort(port: number, host = '127.0.0.1'): Promise<{ port: number; connections: number; close: () => Promise<void> }> {
  const held = { port: 0, connections: 0, close: async () => undefined as void };
  const server = net.createServer((sock) => {
    held.connections++;
    sock.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  held.port = (server.address() as net.AddressInfo).port;
  held.close = () => new Promise<void>((r) => server.close(() => r()));
  return held;
}
