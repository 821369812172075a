/**
 * Serial-port twins over plain Duplex streams, so the bridge session (which talks to a
 * `SerialOpener`, drivers/serial/link.ts) runs over an in-memory pipe, a TCP socket or a
 * simulated MCU exactly as over a UART, reopen-with-backoff included.
 *
 * - `duplexPair()`: two connected in-memory Duplex ends; destroying one closes both, the
 *   way unplugging a USB adapter ends both sides of the conversation.
 * - `DuplexOpener`: a `SerialOpener` whose `open(path)` asks a callback for a Duplex; the
 *   callback returns null when the "device" is absent (open then fails as ENOENT, retryable).
 *   The connection follows the `SerialConnection` contract: when the stream ends, closes or
 *   errors, it is destroyed with a retryable `DriverError('KEEL_E_SERIAL_IO')`.
 */
import { Duplex } from 'node:stream';
import { DriverError } from '../runtime/errors.ts';
import { openError, type SerialConnection, type SerialLinkOptions, type SerialOpener } from '../drivers/serial/link.ts';

class PairEnd extends Duplex {
  peer: PairEnd | null = null;
  constructor() {
    super({ allowHalfOpen: false });
  }
  override _read(): void {
    // Data is pushed by the peer's writes.
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const peer = this.peer;
    if (!peer || peer.destroyed) {
      cb(new DriverError('KEEL_E_SERIAL_IO', 'the other end of the pipe is gone', { retryable: true }));
      return;
    }
    peer.push(chunk);
    cb();
  }
  override _final(cb: (err?: Error | null) => void): void {
    this.peer?.push(null);
    cb();
  }
  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    const peer = this.peer;
    this.peer = null;
    if (peer && !peer.destroyed) peer.destroy();
    cb(err);
  }
}

/** Two connected in-memory Duplex ends: bytes written to one are read from the other. */
export function duplexPair(): [Duplex, Duplex] {
  const a = new PairEnd();
  const b = new PairEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

class StreamConnection extends Duplex implements SerialConnection {
  private closing: Promise<void> | null = null;

  constructor(
    readonly path: string,
    private readonly inner: Duplex,
  ) {
    super({ allowHalfOpen: false });
    inner.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) inner.pause();
    });
    inner.on('error', (err: Error) => this.fail(`failed: ${err.message}`, err));
    inner.on('end', () => this.fail('ended'));
    inner.on('close', () => this.fail('closed unexpectedly'));
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.inner.destroyed || !this.inner.writable) {
      cb(new DriverError('KEEL_E_SERIAL_IO', `stream ${this.path} is not open`, { retryable: true }));
      return;
    }
    this.inner.write(chunk, (err) => cb(err ? new DriverError('KEEL_E_SERIAL_IO', `write to ${this.path} failed: ${err.message}`, { cause: err, retryable: true }) : null));
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    if (!this.inner.destroyed) this.inner.destroy();
    cb(err);
  }

  close(): Promise<void> {
    if (this.closing === null) {
      this.closing = Promise.resolve().then(() => {
        if (!this.inner.destroyed) this.inner.destroy();
        if (!this.destroyed) this.destroy();
      });
    }
    return this.closing;
  }

  private fail(why: string, cause?: Error): void {
    if (this.closing !== null || this.destroyed) return;
    this.closing = Promise.resolve();
    this.destroy(new DriverError('KEEL_E_SERIAL_IO', `stream ${this.path} ${why}`, { cause, retryable: true }));
  }
}

/** A `SerialOpener` over Duplex streams handed out by `connect` (null = device absent). */
export class DuplexOpener implements SerialOpener {
  /** Calls to `open`, successful or not. */
  opens = 0;

  constructor(private readonly connect: (opts: SerialLinkOptions) => Duplex | null | Promise<Duplex | null>) {
    if (typeof connect !== 'function') throw new TypeError('connect must be a function returning a Duplex or null');
  }

  async open(opts: SerialLinkOptions): Promise<SerialConnection> {
    this.opens++;
    if (!opts || typeof opts.path !== 'string' || opts.path.length === 0) throw new TypeError('opts.path must be a non-empty string');
    const stream = await this.connect(opts);
    if (stream === null) throw openError(opts.path, Object.assign(new Error(`ENOENT: no such file or directory, open '${opts.path}'`), { code: 'ENOENT' }));
    if (stream.destroyed) throw openError(opts.path, Object.assign(new Error('No such device'), { code: 'ENXIO' }));
    return new StreamConnection(opts.path, stream);
  }
}
