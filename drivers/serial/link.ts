/**
 * The serial hardware boundary: one small interface, `SerialOpener`, with a real
 * implementation on the `serialport` package and a simulated twin on
 * `@serialport/binding-mock`. Everything above this file (sources, actuators, the
 * supervisor) sees only `SerialOpener` and `SerialConnection`.
 *
 * Contract of `SerialOpener.open(opts)`:
 * - resolves with an open `SerialConnection`, or rejects with a `DriverError`
 *   `KEEL_E_SERIAL_OPEN` whose message says what to do (missing path, busy, permission) and
 *   whose `retryable` says whether trying again later may succeed without a human;
 * - rejects with `TypeError`/`RangeError` (naming the option) for malformed options.
 *
 * Contract of `SerialConnection` (a Node `Duplex`):
 * - bytes read from the port come out of its readable side, bytes written go to the port;
 * - when the port fails or vanishes (USB unplug), it is destroyed with a `DriverError`
 *   `KEEL_E_SERIAL_IO` (`retryable: true`): it emits 'error' then 'close'. Users must listen
 *   for 'error';
 * - `close()` releases the port, resolves once released, never rejects, and is idempotent.
 *
 * `serialport`'s `list()` is never used: it spawns `udevadm`, and pseudo-terminals
 * (`/dev/pts/N`, socat links) never appear in it. Ports are always named by path.
 */
import { Duplex } from 'node:stream';
import { statSync } from 'node:fs';
import { SerialPort, SerialPortMock } from 'serialport';
import { DriverError, asError, type ConfigIssue } from '../../runtime/errors.ts';

// Both are `SerialPortStream`s (from @serialport/stream, which keel does not import directly).
type PortStream = SerialPort | SerialPortMock;

/** Parity settings of a serial line. */
export type SerialParity = 'none' | 'even' | 'odd' | 'mark' | 'space';

/** Line settings, as in the configuration's serial link fields. */
export interface SerialLinkOptions {
  /** Device path, e.g. `/dev/ttyUSB0`, `/dev/serial/by-id/...` or a socat link. */
  path: string;
  /** Bits per second. */
  baudRate: number;
  /** Data bits per character (default 8). */
  dataBits?: 5 | 6 | 7 | 8;
  /** Parity (default none). */
  parity?: SerialParity | string;
  /** Stop bits (default 1). */
  stopBits?: 1 | 1.5 | 2;
  /** Hardware (RTS/CTS) flow control (default false). */
  rtscts?: boolean;
}

/** An open serial port: a Duplex of its bytes, plus an awaitable `close()`. */
export interface SerialConnection extends Duplex {
  /** The path the port was opened with. */
  readonly path: string;
  /** Releases the port. Resolves once released; never rejects; idempotent. */
  close(): Promise<void>;
}

/** Opens serial ports. Real (`SystemSerialOpener`) and simulated (`MockSerialOpener`). */
export interface SerialOpener {
  /** Opens the port described by `opts`; see the contract at the top of this file. */
  open(opts: SerialLinkOptions): Promise<SerialConnection>;
}

const PARITIES = ['none', 'even', 'odd', 'mark', 'space'];

/** The link options of a serial source or actuator config (baud rate defaults to 115200). */
export function linkOptions(c: Omit<SerialLinkOptions, 'baudRate'> & { baudRate?: number }): SerialLinkOptions {
  return { path: c.path, baudRate: c.baudRate ?? 115200, dataBits: c.dataBits, parity: c.parity, stopBits: c.stopBits, rtscts: c.rtscts };
}

/**
 * Problems with link options, paths relative to the options object (`baudRate`). Includes
 * settings the `serialport` Unix binding cannot apply (mark/space parity, 1.5 stop bits), so
 * that a config using them is refused at start instead of failing on every open.
 */
export function linkIssues(opts: SerialLinkOptions, platform: NodeJS.Platform = process.platform): ConfigIssue[] {
  if (opts === null || typeof opts !== 'object') return [{ path: '', message: 'expected serial link options (an object)' }];
  const issues: ConfigIssue[] = [];
  const { path, baudRate, dataBits = 8, parity = 'none', stopBits = 1, rtscts = false } = opts;
  if (typeof path !== 'string' || path.length === 0) issues.push({ path: 'path', message: `expected a device path, got ${JSON.stringify(path)}` });
  else if (path.includes('\0')) issues.push({ path: 'path', message: 'must not contain NUL bytes' });
  if (!Number.isInteger(baudRate) || baudRate < 50 || baudRate > 4_000_000) {
    issues.push({ path: 'baudRate', message: `expected an integer from 50 to 4000000, got ${JSON.stringify(baudRate)}` });
  }
  if (![5, 6, 7, 8].includes(dataBits)) issues.push({ path: 'dataBits', message: `expected 5, 6, 7 or 8, got ${JSON.stringify(dataBits)}` });
  if (!PARITIES.includes(parity)) issues.push({ path: 'parity', message: `expected one of ${PARITIES.join(', ')}, got ${JSON.stringify(parity)}` });
  if (![1, 1.5, 2].includes(stopBits)) issues.push({ path: 'stopBits', message: `expected 1, 1.5 or 2, got ${JSON.stringify(stopBits)}` });
  if (typeof rtscts !== 'boolean') issues.push({ path: 'rtscts', message: `expected true or false, got ${JSON.stringify(rtscts)}` });
  if (platform !== 'win32') {
    // The serialport Unix binding rejects these at open time ("Invalid parity setting").
    if (parity === 'mark' || parity === 'space') issues.push({ path: 'parity', message: `"${parity}" parity is not supported by the serial driver on ${platform}; use none, even or odd` });
    if (stopBits === 1.5) issues.push({ path: 'stopBits', message: `1.5 stop bits are not supported by the serial driver on ${platform}; use 1 or 2` });
  }
  return issues;
}

function checkLink(opts: SerialLinkOptions): void {
  const issues = linkIssues(opts);
  if (issues.length === 0) return;
  const text = issues.map((i) => `${i.path || 'opts'}: ${i.message}`).join('; ');
  if (opts === null || typeof opts !== 'object' || typeof opts.path !== 'string') throw new TypeError(`serial link options: ${text}`);
  throw new RangeError(`serial link options: ${text}`);
}

/**
 * Turns a failure to open `path` into a `DriverError('KEEL_E_SERIAL_OPEN')` with advice.
 * The `serialport` native binding reports errors as text only ("Error: No such file or
 * directory, cannot open ...", "Error Resource temporarily unavailable Cannot lock port"),
 * so this boundary is the one place that reads messages; errno codes are used when present.
 */
export function openError(path: string, err: unknown): DriverError {
  const e = asError(err) as Error & { code?: string };
  const msg = e.message;
  const code = e.code;
  const has = (re: RegExp) => re.test(msg);
  if (code === 'ENOENT' || has(/No such file or directory|does not exist|ENOENT/i)) {
    return new DriverError('KEEL_E_SERIAL_OPEN', `serial port ${path} does not exist; check the cable / the path, or ls /dev/serial/by-id`, { cause: e, retryable: true });
  }
  if (code === 'EACCES' || code === 'EPERM' || has(/Permission denied|Operation not permitted|EACCES/i)) {
    return new DriverError(
      'KEEL_E_SERIAL_OPEN',
      `permission denied opening serial port ${path}; add the user to the dialout group (sudo usermod -aG dialout $USER, then log in again) or fix the device's udev permissions`,
      { cause: e, retryable: false },
    );
  }
  if (code === 'EBUSY' || code === 'EAGAIN' || has(/Cannot lock port|Port is locked|Device or resource busy|Resource temporarily unavailable|EBUSY/i)) {
    return new DriverError(
      'KEEL_E_SERIAL_OPEN',
      `serial port ${path} is busy: another process holds it (find it with: fuser -v ${path}); keel keeps retrying`,
      { cause: e, retryable: true },
    );
  }
  if (code === 'ENOTTY' || has(/Inappropriate ioctl for device|ENOTTY/i)) {
    return new DriverError('KEEL_E_SERIAL_OPEN', `${path} is not a serial port (the device does not accept terminal settings)`, { cause: e, retryable: false });
  }
  if (code === 'ENXIO' || code === 'ENODEV' || has(/No such device/i)) {
    return new DriverError('KEEL_E_SERIAL_OPEN', `serial port ${path} has no device behind it (unplugged?); check the cable`, { cause: e, retryable: true });
  }
  if (has(/baud rate/i)) {
    return new DriverError('KEEL_E_SERIAL_OPEN', `serial port ${path} does not support the configured baud rate: ${msg}`, { cause: e, retryable: false });
  }
  // The message did not say; the file system may (a dangling by-id link, for instance).
  try {
    statSync(path);
  } catch (statErr) {
    if ((statErr as NodeJS.ErrnoException).code === 'ENOENT') return openError(path, statErr);
  }
  return new DriverError('KEEL_E_SERIAL_OPEN', `cannot open serial port ${path}: ${msg}`, { cause: e, retryable: true });
}

/**
 * Adapts a `SerialPortStream` (real or mock) to `SerialConnection`. The port's own 'close'
 * carries a `DisconnectedError` when the device vanished; that becomes a destroy with a
 * retryable `KEEL_E_SERIAL_IO`.
 */
class PortConnection extends Duplex implements SerialConnection {
  readonly path: string;
  private closing: Promise<void> | null = null;

  constructor(readonly port: PortStream) {
    super({ allowHalfOpen: false });
    this.path = port.path;
    port.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) port.pause();
    });
    port.on('error', (err: Error) => {
      this.fail(new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} failed: ${err.message}`, { cause: err, retryable: true }));
    });
    port.on('close', (err: Error | null) => {
      if (this.closing !== null) return;
      const why = err && (err as Error & { disconnected?: boolean }).disconnected ? `disconnected (${err.message})` : 'closed unexpectedly';
      this.fail(new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} ${why}`, { cause: err ?? undefined, retryable: true }));
    });
  }

  override _read(): void {
    this.port.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    // SerialPortStream would queue writes until a reopen that never comes; refuse instead.
    if (!this.port.isOpen) {
      cb(new DriverError('KEEL_E_SERIAL_IO', `serial port ${this.path} is not open`, { retryable: true }));
      return;
    }
    this.port.write(chunk, (err) => {
      if (err) cb(new DriverError('KEEL_E_SERIAL_IO', `write to serial port ${this.path} failed: ${err.message}`, { cause: err, retryable: true }));
      else cb();
    });
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.close().then(() => cb(), cb);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.releasePort().then(() => cb(err));
  }

  close(): Promise<void> {
    if (this.closing === null) {
      this.closing = this.releasePort().then(() => {
        if (!this.destroyed) this.destroy();
      });
    }
    return this.closing;
  }

  private fail(err: DriverError): void {
    if (this.closing !== null || this.destroyed) return;
    this.closing = this.releasePort();
    this.destroy(err);
  }

  private releasePort(): Promise<void> {
    const port = this.port;
    return new Promise<void>((resolve) => {
      if (!port.isOpen) {
        resolve();
        return;
      }
      // Errors closing a vanished port say nothing useful; the port is gone either way.
      port.close(() => resolve());
    });
  }
}

/** Opens real serial ports with the `serialport` package (exclusive lock, like minicom). */
export class SystemSerialOpener implements SerialOpener {
  async open(opts: SerialLinkOptions): Promise<SerialConnection> {
    checkLink(opts);
    const port = new SerialPort({
      path: opts.path,
      baudRate: opts.baudRate,
      dataBits: opts.dataBits ?? 8,
      parity: (opts.parity ?? 'none') as 'none',
      stopBits: opts.stopBits ?? 1,
      rtscts: opts.rtscts ?? false,
      lock: true,
      autoOpen: false,
    });
    await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(openError(opts.path, err)) : resolve())));
    return new PortConnection(port);
  }
}

/** Options of a simulated port. */
export interface MockPortOptions {
  /** Opening fails with permission denied (EACCES). */
  denied?: boolean;
}

// What the tests drive on a port of `@serialport/binding-mock` (its MockPortBinding).
interface MockPortBinding {
  emitData(data: Buffer | string): void;
  lastWrite: Buffer | null;
  recording: Buffer;
}

/**
 * Simulated serial ports on `@serialport/binding-mock` (through serialport's `SerialPortMock`,
 * a `SerialPortStream` on `MockBinding`), with the same errors as the real
 * opener. Ports exist only while plugged in: `plug(path)` creates one, `unplug(path)` makes
 * it vanish (an open connection is disconnected the way a USB unplug disconnects a real one).
 * Locking is real: a second open of an open port fails as busy.
 *
 * MockBinding keeps its ports in one process-wide table; use distinct paths per test.
 */
export class MockSerialOpener implements SerialOpener {
  private readonly plugged = new Map<string, MockPortOptions>();
  private readonly open_ = new Map<string, PortConnection>();
  /** Calls to `open`, successful or not (for assertions on retry timing). */
  opens = 0;

  /** Makes `path` exist. */
  plug(path: string, opts: MockPortOptions = {}): void {
    SerialPortMock.binding.createPort(path, { record: true });
    this.plugged.set(path, { ...opts });
  }

  /** Makes `path` vanish; an open connection on it is disconnected. */
  unplug(path: string): void {
    this.plugged.delete(path);
    const conn = this.open_.get(path);
    if (conn && conn.port.isOpen) {
      // The same path a real port takes when a read fails: close with a disconnect error.
      conn.port.close(undefined, Object.assign(new Error(`device ${path} unplugged`), { disconnected: true }));
    }
  }

  async open(opts: SerialLinkOptions): Promise<SerialConnection> {
    this.opens++;
    checkLink(opts);
    const state = this.plugged.get(opts.path);
    if (state === undefined) throw openError(opts.path, Object.assign(new Error(`ENOENT: no such file or directory, open '${opts.path}'`), { code: 'ENOENT' }));
    if (state.denied) throw openError(opts.path, Object.assign(new Error(`EACCES: permission denied, open '${opts.path}'`), { code: 'EACCES' }));
    const port = new SerialPortMock({
      path: opts.path,
      baudRate: opts.baudRate,
      dataBits: opts.dataBits ?? 8,
      parity: opts.parity ?? 'none',
      stopBits: opts.stopBits ?? 1,
      rtscts: opts.rtscts ?? false,
      lock: true,
      autoOpen: false,
    });
    await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(openError(opts.path, err)) : resolve())));
    const conn = new PortConnection(port);
    this.open_.set(opts.path, conn);
    conn.once('close', () => {
      if (this.open_.get(opts.path) === conn) this.open_.delete(opts.path);
    });
    return conn;
  }

  /** Whether `path` has an open connection. */
  isOpen(path: string): boolean {
    return this.binding(path) !== null;
  }

  /** Delivers `data` as if the device had sent it. Throws if `path` is not open. */
  emitData(path: string, data: Buffer | string): void {
    const b = this.binding(path);
    if (b === null) throw new Error(`mock serial port ${path} is not open`);
    b.emitData(data);
  }

  /** The last chunk written to `path` by the open connection, or null. */
  lastWrite(path: string): Buffer | null {
    return this.binding(path)?.lastWrite ?? null;
  }

  /** Everything written to `path` by the open connection, or null if not open. */
  written(path: string): Buffer | null {
    return this.binding(path)?.recording ?? null;
  }

  private binding(path: string): MockPortBinding | null {
    const conn = this.open_.get(path);
    if (!conn || !conn.port.isOpen) return null;
    return conn.port.port as unknown as MockPortBinding;
  }
}
