/**
 * The device's delivery state, `<ledger dir>/sync.json`: how many records the fleet has
 * acknowledged (`delivered`, only ever from an ack whose cosignature verified), that ack (the
 * cosigned checkpoint note), and the per-connection counter `bdSeq`. Replaced atomically:
 * written to a temporary file, fsynced, renamed over, the directory fsynced; a crash leaves
 * the old file or the new one, never a torn one.
 *
 * Writes use async file IO (an fsync on an SD card can take tens of milliseconds; the event
 * loop must keep serving the pipeline) and coalesce: while one write runs, later states
 * replace each other and only the newest is written next.
 */
import { existsSync, readFileSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import path from 'node:path';
import { KeelError, asError } from '../errors.ts';

/** File name of the delivery state inside the ledger directory. */
export const SYNC_STATE_FILE = 'sync.json';

/** What sync.json holds. */
export interface SyncCursorState {
  /** Records the fleet acknowledged (a verified cosignature covers indexes below it). */
  delivered: number;
  /** The verified ack note (device checkpoint plus the fleet's cosignature line), if any. */
  ack?: string;
  /** Per-connection counter of the last connection attempt. */
  bdSeq: number;
}

/** Reads and atomically replaces `<dir>/sync.json`. */
export class SyncCursor {
  readonly file: string;
  private state: SyncCursorState;
  private writing?: Promise<void>;
  private pending?: SyncCursorState;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  private constructor(file: string, state: SyncCursorState) {
    this.file = file;
    this.state = state;
  }

  /**
   * Loads the state in `dir` (a missing file is a fresh start). A file that cannot be read as
   * a delivery state does not stop sync: it starts over from zero (the fleet re-acknowledges
   * what it holds, nothing is pruned on the strength of it) and `problem` says why. `bdSeq`
   * then restarts from the current time in seconds, so it still grows past any value used.
   */
  static load(dir: string, nowMs: number): { cursor: SyncCursor; problem?: string } {
    const file = path.join(dir, SYNC_STATE_FILE);
    if (!existsSync(file)) return { cursor: new SyncCursor(file, { delivered: 0, bdSeq: 0 }) };
    const fresh = (problem: string) => ({ cursor: new SyncCursor(file, { delivered: 0, bdSeq: Math.floor(nowMs / 1000) }), problem });
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      return fresh(`${file} is unreadable (${asError(err).message}); starting delivery over from 0`);
    }
    const o = raw as Partial<SyncCursorState> | null;
    if (!o || typeof o !== 'object' || !Number.isSafeInteger(o.delivered) || (o.delivered as number) < 0 || !Number.isSafeInteger(o.bdSeq) || (o.bdSeq as number) < 0 || (o.ack !== undefined && typeof o.ack !== 'string')) {
      return fresh(`${file} is not a delivery state {delivered, ack, bdSeq}; starting delivery over from 0`);
    }
    return { cursor: new SyncCursor(file, { delivered: o.delivered as number, bdSeq: o.bdSeq as number, ...(o.ack !== undefined ? { ack: o.ack } : {}) }) };
  }

  /** The last state saved (or loaded). */
  get current(): SyncCursorState {
    return { ...this.state };
  }

  /** Saves `state`; resolves once it (or a newer state) is durable on disk. */
  save(state: SyncCursorState): Promise<void> {
    this.state = { ...state };
    this.pending = { ...state };
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.writing) this.writing = this.drain();
    return p;
  }

  /** Resolves when no write is running. */
  async idle(): Promise<void> {
    while (this.writing) await this.writing.catch(() => undefined);
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending) {
        const s = this.pending;
        const waiters = this.waiters;
        this.pending = undefined;
        this.waiters = [];
        try {
          await this.write(s);
          for (const w of waiters) w.resolve();
        } catch (err) {
          const e = new KeelError('KEEL_E_SYNC', `cannot write ${this.file}: ${asError(err).message}`, { cause: err, retryable: true });
          for (const w of waiters) w.reject(e);
        }
      }
    } finally {
      this.writing = undefined;
    }
  }

  private async write(s: SyncCursorState): Promise<void> {
    const tmp = `${this.file}.tmp`;
    const text = `${JSON.stringify({ delivered: s.delivered, bdSeq: s.bdSeq, ...(s.ack !== undefined ? { ack: s.ack } : {}) })}\n`;
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
    const dir = await open(path.dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
