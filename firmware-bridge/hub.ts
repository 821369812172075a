/**
 * One bridge session per serial port, shared by every source and actuator that names it.
 * A config may say "channel 3 of the MCU on /dev/ttyACM0 feeds this pipeline" in one source,
 * "channel 4 feeds that one" in another, and "drive its output 1" in an actuator: all three
 * must talk through ONE port (a tty can be opened once) and one handshake. The hub hands out
 * counted leases: the first lease of a path creates and starts the session, the last release
 * stops it.
 */
import type { Clock } from '../runtime/clock.ts';
import type { SerialOpener } from '../drivers/serial/link.ts';
import type { ReconnectPolicy } from '../drivers/serial/supervisor.ts';
import { BRIDGE_DEFAULTS, BridgeSession, type BridgeTiming } from './session.ts';

/** What a lease asks for: the port and the wishes for the link's timing. */
export interface BridgeLinkRequest {
  path: string;
  /** Baud rate (default 115200); every lease of a path must agree. */
  baudRate?: number;
  /** Wished host heartbeat period, ms; the smallest wish of the live leases wins. */
  heartbeatMs?: number;
  /** Wished link-loss timeout, ms; the smallest wish of the live leases wins. */
  linkTimeoutMs?: number;
  /** Reopen backoff; the first lease's applies (the port supervisor is built once). */
  reconnect?: Partial<ReconnectPolicy>;
}

/** A counted hold on a shared session; `release()` once when done (idempotent). */
export interface BridgeLease {
  readonly session: BridgeSession;
  release(): Promise<void>;
}

/** What a hub builds sessions with. */
export interface BridgeHubDeps {
  opener: SerialOpener;
  clock: Clock;
  /** Uniform [0, 1) source for nonces and jitter (default Math.random). */
  random?: () => number;
  /** Extra session settings for every session (tests shorten timeouts here). */
  timing?: Partial<BridgeTiming>;
}

interface Entry {
  session: BridgeSession;
  baudRate: number;
  /** The timing wishes of every live lease. */
  wishes: Set<BridgeLinkRequest>;
  started: Promise<void>;
}

/** Shares one `BridgeSession` per port path; see the top of this file. */
export class BridgeHub {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly deps: BridgeHubDeps) {
    if (!deps || !deps.opener || !deps.clock) throw new TypeError('deps must provide { opener, clock }');
  }

  /**
   * Takes a lease on the session of `req.path`, creating and starting it on first use.
   * Resolves once the session's first port open attempt has settled. Rejects with a
   * RangeError when another lease opened the same path at another baud rate.
   */
  async acquire(req: BridgeLinkRequest): Promise<BridgeLease> {
    if (!req || typeof req.path !== 'string' || req.path.length === 0) throw new TypeError('req.path must be a device path');
    const baudRate = req.baudRate ?? 115200;
    const wish = { ...req };
    let e = this.entries.get(req.path);
    if (e) {
      if (e.baudRate !== baudRate) throw new RangeError(`req.baudRate: ${req.path} is already open at ${e.baudRate} baud, not ${baudRate}`);
      e.wishes.add(wish);
      e.session.retime(this.timingOf(e.wishes));
    } else {
      const wishes = new Set([wish]);
      const session = new BridgeSession({
        ...this.deps.timing,
        ...this.timingOf(wishes),
        link: { path: req.path, baudRate },
        opener: this.deps.opener,
        clock: this.deps.clock,
        random: this.deps.random,
        reconnect: req.reconnect,
      });
      e = { session, baudRate, wishes, started: session.start() };
      this.entries.set(req.path, e);
    }
    const entry = e;
    await entry.started;
    let released = false;
    return {
      session: entry.session,
      release: async () => {
        if (released) return;
        released = true;
        entry.wishes.delete(wish);
        if (entry.wishes.size === 0) {
          if (this.entries.get(req.path) === entry) this.entries.delete(req.path);
          await entry.session.stop();
        } else if (entry.session.state !== 'stopped') {
          entry.session.retime(this.timingOf(entry.wishes));
        }
      },
    };
  }

  /**
   * The link timing for a set of leases: the strictest wish of those that state one (a
   * faster heartbeat and a quicker loss verdict serve everybody), else the defaults.
   */
  private timingOf(wishes: Set<BridgeLinkRequest>): { heartbeatMs: number; linkTimeoutMs: number } {
    const pick = (k: 'heartbeatMs' | 'linkTimeoutMs') => {
      const stated = [...wishes].map((w) => w[k]).filter((v): v is number => v !== undefined);
      return stated.length ? Math.min(...stated) : (this.deps.timing?.[k] ?? BRIDGE_DEFAULTS[k]);
    };
    return { heartbeatMs: pick('heartbeatMs'), linkTimeoutMs: pick('linkTimeoutMs') };
  }

  /** The session of `path` while someone holds it (for stats and tools). */
  session(path: string): BridgeSession | undefined {
    return this.entries.get(path)?.session;
  }

  /** Paths with a live session. */
  paths(): string[] {
    return [...this.entries.keys()];
  }
}
