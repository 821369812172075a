/**
 * systemd service notifications (sd_notify(3)): READY=1 once keel runs, WATCHDOG=1 only while
 * /healthz would answer healthy (200: ok or degraded), STOPPING=1 at shutdown, and a STATUS=
 * line that `systemctl status keel` shows. Without NOTIFY_SOCKET (not started by systemd, or
 * a unit without Type=notify) nothing is sent and nothing is started.
 *
 * The protocol is a datagram on the AF_UNIX socket named by NOTIFY_SOCKET. Node has no unix
 * datagram sockets, so the real notifier runs systemd's own `systemd-notify` for each message
 * (deploy/systemd/keel.service sets NotifyAccess=all, since the sender is a child of keel).
 * systemd-notify follows each message with BARRIER=1 and waits until systemd has read it, so a
 * message is never lost to the sender having exited before systemd looked up its unit.
 *
 * Watchdog: systemd passes WATCHDOG_USEC (and WATCHDOG_PID); keel checks health every half of
 * that and pings only when healthy. A keel whose event loop hangs, or that stays out of health
 * (safe state, a failed start) for longer than WatchdogSec, is killed and restarted by systemd.
 */
import { spawn } from 'node:child_process';
import type { Clock, TimerHandle } from '../clock.ts';
import { KeelError } from '../errors.ts';
import type { Health } from './http.ts';

/** Sends one notification message ("KEY=value" lines) to the service manager. The slot. */
export interface ServiceNotifier {
  /** Resolves once the message was delivered; rejects with a KeelError (retryable) if not. */
  send(message: string): Promise<void>;
}

/** Longest a systemd-notify run may take before it is abandoned, ms (systemd answers in microseconds). */
const NOTIFY_TIMEOUT_MS = 5000;

/** The real notifier: `systemd-notify <lines...>` with NOTIFY_SOCKET in its environment. */
export class SystemdNotifyCommand implements ServiceNotifier {
  /**
   * @param socket the NOTIFY_SOCKET path (or @abstract name) systemd gave keel
   * @param command the systemd-notify binary (a test may point at another)
   */
  constructor(
    private readonly socket: string,
    private readonly command = 'systemd-notify',
  ) {
    if (typeof socket !== 'string' || socket === '') throw new TypeError('SystemdNotifyCommand: socket must be a non-empty string');
  }

  send(message: string): Promise<void> {
    const lines = message.split('\n').filter((l) => l !== '');
    return new Promise((resolve, reject) => {
      const child = spawn(this.command, lines, {
        env: { ...process.env, NOTIFY_SOCKET: this.socket },
        stdio: ['ignore', 'ignore', 'pipe'],
        timeout: NOTIFY_TIMEOUT_MS,
      });
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-500)));
      child.once('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'ENOENT' ? `${this.command} not found (it ships with systemd)` : e.message;
        reject(new KeelError('KEEL_E_NOTIFY', `cannot notify systemd: ${why}`, { cause: e, retryable: e.code !== 'ENOENT' }));
      });
      child.once('close', (code, signal) => {
        if (code === 0) resolve();
        else reject(new KeelError('KEEL_E_NOTIFY', `systemd-notify ${lines.join(' ')} failed (${signal ?? `exit ${code}`}): ${err.trim() || 'no message'}`, { retryable: true }));
      });
    });
  }
}

/** The simulated twin: keeps every message, optionally failing on demand. */
export class RecordingNotifier implements ServiceNotifier {
  /** Messages sent, in order. */
  readonly messages: string[] = [];
  /** When set, send() rejects with this error (after recording nothing). */
  failWith?: Error;

  send(message: string): Promise<void> {
    if (this.failWith) return Promise.reject(this.failWith);
    this.messages.push(message);
    return Promise.resolve();
  }
}

/** What ServiceNotifications needs. */
export interface ServiceNotificationsOptions {
  notifier: ServiceNotifier;
  clock: Clock;
  /** The same health /healthz reports. */
  health: () => Health;
  /** systemd's WATCHDOG_USEC, µs; undefined or 0: no watchdog pings. */
  watchdogUsec?: number;
  /** Called when a message could not be sent (keel keeps running; systemd decides). */
  onError?: (err: Error) => void;
}

/** Whether /healthz answers 200 for this health (see runtime/ops/http.ts). */
export function isHealthy(h: Health): boolean {
  return h.status === 'ok' || h.status === 'degraded';
}

/** READY / WATCHDOG / STOPPING / STATUS notifications of one keel run. */
export class ServiceNotifications {
  private readonly o: ServiceNotificationsOptions;
  private timer?: TimerHandle;
  private lastStatus?: string;
  private stopped = false;
  /** Serializes sends so that systemd sees them in order (READY before the first WATCHDOG). */
  private chain: Promise<void> = Promise.resolve();

  constructor(o: ServiceNotificationsOptions) {
    if (o.watchdogUsec !== undefined && !(Number.isFinite(o.watchdogUsec) && o.watchdogUsec >= 0)) {
      throw new RangeError(`watchdogUsec must be a non-negative number of microseconds, got ${o.watchdogUsec}`);
    }
    this.o = o;
  }

  /**
   * Notifications as systemd asks for them through `env`, or undefined when keel was not
   * started by a Type=notify unit (no NOTIFY_SOCKET). The watchdog is ignored when
   * WATCHDOG_PID names another process (it is meant for that one) [sd_watchdog_enabled(3)].
   */
  static fromEnv(env: NodeJS.ProcessEnv, o: { clock: Clock; health: () => Health; onError?: (err: Error) => void; notifier?: ServiceNotifier; pid?: number }): ServiceNotifications | undefined {
    const socket = env.NOTIFY_SOCKET;
    if (!socket) return undefined;
    let watchdogUsec: number | undefined;
    const usec = Number(env.WATCHDOG_USEC);
    const forPid = env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === '' || Number(env.WATCHDOG_PID) === (o.pid ?? process.pid);
    if (env.WATCHDOG_USEC && Number.isFinite(usec) && usec > 0 && forPid) watchdogUsec = usec;
    return new ServiceNotifications({ notifier: o.notifier ?? new SystemdNotifyCommand(socket), clock: o.clock, health: o.health, watchdogUsec, onError: o.onError });
  }

  /** Watchdog check period, ms: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; 0 when off. */
  get watchdogPeriodMs(): number {
    return this.o.watchdogUsec ? Math.max(1, Math.floor(this.o.watchdogUsec / 2000)) : 0;
  }

  /** Sends READY=1 with the current status and starts the watchdog pings (call after keel started). */
  ready(): Promise<void> {
    const h = this.o.health();
    this.lastStatus = h.status;
    const done = this.send(`READY=1\nSTATUS=${statusLine(h)}\nMAINPID=${process.pid}`);
    if (this.watchdogPeriodMs > 0 && !this.stopped) {
      this.timer = this.o.clock.setInterval('sd-notify:watchdog', () => void this.tick(), this.watchdogPeriodMs);
    }
    return done;
  }

  /** One watchdog period: ping if healthy; tell systemd when the status changed. */
  tick(): Promise<void> {
    if (this.stopped) return this.chain;
    const h = this.o.health();
    const lines: string[] = [];
    if (isHealthy(h)) lines.push('WATCHDOG=1');
    if (h.status !== this.lastStatus) {
      lines.push(`STATUS=${statusLine(h)}`);
      this.lastStatus = h.status;
    }
    return lines.length ? this.send(lines.join('\n')) : this.chain;
  }

  /** Stops the pings and sends STOPPING=1 (call when shutdown begins, before the safe state). */
  stopping(reason?: string): Promise<void> {
    if (this.stopped) return this.chain;
    this.stopped = true;
    this.o.clock.cancel(this.timer);
    this.timer = undefined;
    return this.send(`STOPPING=1\nSTATUS=stopping${reason ? ` (${oneLine(reason)})` : ''}`);
  }

  private send(message: string): Promise<void> {
    this.chain = this.chain.then(() =>
      this.o.notifier.send(message).catch((err: unknown) => {
        this.o.onError?.(err instanceof Error ? err : new Error(String(err)));
      }),
    );
    return this.chain;
  }
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ').slice(0, 200);
}

function statusLine(h: Health): string {
  const faults = Array.isArray(h.activeFaults) && h.activeFaults.length ? `; faults: ${oneLine(h.activeFaults.map(String).join(', '))}` : '';
  return `${h.status}${faults}`;
}
