/**
 * Test helpers for the HIL tests: a raw protocol client over the emulated board's pty (the
 * real `serialport` package on a real pseudo-terminal, the shared TS codec for frames), and
 * the skip-or-fail rule for missing HIL tools.
 */
import type { TestContext } from 'node:test';
import { SerialPort } from 'serialport';
import { FrameDecoder, encodeFrame, type Frame, type FrameErrorKind } from '../../firmware-bridge/codec.ts';
import { checkFrame, encodeMessage, type Message } from '../../firmware-bridge/messages.ts';
import { HIL_INSTALL_HINT, missingHilTools } from '../../firmware-bridge/hil/harness.ts';

/**
 * True when the HIL can run. Otherwise skips the test with the install hint, or, under
 * CI=true, throws (CI installs the tools, so missing ones are a broken CI).
 */
export function hilAvailable(t: TestContext): boolean {
  const missing = missingHilTools();
  if (missing.length === 0) return true;
  const basics = missing.some((m) => m === 'make' || m === 'cc') ? 'apt-get install make gcc; ' : '';
  const why = `HIL tools missing (${missing.join(', ')}): ${basics}${HIL_INSTALL_HINT}`;
  if (process.env.CI === 'true') throw new Error(why);
  t.skip(why);
  return false;
}

/** A frame the MCU sent, as the host received it. */
export interface Received {
  /** The decoded message, or null if checks 6..9 refused it. */
  msg: Message | null;
  frame: Frame;
  /** Host wall-clock ms at receipt. */
  at: number;
}

/** A raw protocol client on a pty: sends host frames with its own seq, records MCU frames. */
export class PtyLink {
  readonly received: Received[] = [];
  /** Frames that failed checks (any kind) on the host side. */
  readonly errors: FrameErrorKind[] = [];
  /** Seq gaps seen in MCU frames (§2.3): must stay 0 on a lossless pty. */
  lostFrames = 0;
  private nextSeq = 0;
  private expected: number | null = null;
  private readonly decoder: FrameDecoder;
  private waiters: Array<() => void> = [];

  private constructor(readonly port: SerialPort) {
    this.decoder = new FrameDecoder(
      (frame) => this.onFrame(frame),
      (kind) => this.errors.push(kind),
    );
    port.on('data', (d: Buffer) => this.decoder.push(d));
  }

  /** Opens the pty at 115200 baud (raw). */
  static async open(ptyPath: string): Promise<PtyLink> {
    const port = new SerialPort({ path: ptyPath, baudRate: 115200, autoOpen: false });
    await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(err) : resolve())));
    return new PtyLink(port);
  }

  private onFrame(frame: Frame): void {
    if (this.expected !== null) {
      const gap = (frame.seq - this.expected) & 0xffff;
      if (gap !== 0 && gap < 32768) this.lostFrames += gap;
    }
    this.expected = (frame.seq + 1) & 0xffff;
    const c = checkFrame(frame, 'toHost');
    if (!c.ok) this.errors.push(c.error);
    this.received.push({ msg: c.ok ? c.msg : null, frame, at: Date.now() });
    for (const w of this.waiters.splice(0)) w();
  }

  /** The seq the next frame will carry. */
  get seq(): number {
    return this.nextSeq;
  }

  /** Sends a message with the next seq (after a lone 0x00 if `resync`); returns its seq. */
  async send(msg: Message, resync = false): Promise<number> {
    const seq = this.nextSeq;
    this.nextSeq = (this.nextSeq + 1) & 0xffff;
    const wire = encodeMessage(msg, seq);
    await this.write(resync ? Buffer.concat([Buffer.from([0]), wire]) : wire);
    return seq;
  }

  /** Builds a raw frame (any version, type, payload) with the next seq, without sending it. */
  build(version: number, type: number, payload: Buffer): { seq: number; wire: Buffer } {
    const seq = this.nextSeq;
    this.nextSeq = (this.nextSeq + 1) & 0xffff;
    return { seq, wire: encodeFrame({ version, type, seq, payload }) };
  }

  /** Sends a raw frame (any version, type, payload) with the next seq; returns its seq. */
  async sendRaw(version: number, type: number, payload: Buffer): Promise<number> {
    const { seq, wire } = this.build(version, type, payload);
    await this.write(wire);
    return seq;
  }

  /** Writes bytes and waits until the OS took them. */
  write(bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.port.write(bytes, (err) => {
        if (err) reject(err);
        else this.port.drain((e) => (e ? reject(e) : resolve()));
      });
    });
  }

  /** Messages received so far (decoded ones only). */
  messages(): Message[] {
    return this.received.flatMap((r) => (r.msg ? [r.msg] : []));
  }

  /** Resolves with the first received frame from index `from` on that satisfies pred. */
  async waitFor(pred: (m: Message, r: Received) => boolean, timeoutMs = 2000, from = 0): Promise<Received> {
    const end = Date.now() + timeoutMs;
    let i = from;
    for (;;) {
      for (; i < this.received.length; i++) {
        const r = this.received[i]!;
        if (r.msg && pred(r.msg, r)) return r;
      }
      const left = end - Date.now();
      if (left <= 0) {
        const kinds = this.received.slice(from).map((r) => r.msg?.kind ?? 'refused');
        throw new Error(`timed out after ${timeoutMs} ms; received since: ${kinds.join(',') || 'nothing'}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 100));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Closes and opens the port again, as a host does after an error; seq numbering goes on. */
  async reopen(): Promise<void> {
    await this.close();
    this.decoder.reset();
    await new Promise<void>((resolve, reject) => this.port.open((err) => (err ? reject(err) : resolve())));
  }

  /** Closes the port. */
  async close(): Promise<void> {
    if (!this.port.isOpen) return;
    await new Promise<void>((resolve) => this.port.close(() => resolve()));
  }
}

/** Sleeps `ms` of wall time (the board runs in real time). */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
