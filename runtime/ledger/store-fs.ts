/**
 * The filesystem slot of the ledger store (runtime/ledger/store.ts): the few calls the store
 * makes, the real implementation over node:fs (`nodeLedgerFs`), and an in-memory twin
 * (`MemoryLedgerFs`) that counts calls, injects faults (a full disk, a failing fsync) and
 * models what a power cut leaves behind, so the store's fsync ordering can be tested.
 *
 * Contract, as POSIX gives it and the store relies on:
 * - `write` is positioned and writes every byte or throws; when it throws, a prefix of the
 *   bytes may have reached the file (a short write before ENOSPC).
 * - Data written is visible to reads at once and survives the death of the process (it sits
 *   in the page cache); it survives a power cut only after `sync(fd)` resolved.
 * - A file's creation or removal survives a power cut only after `syncDir(dir)` resolved.
 * - Errors carry Node's `code` (`ENOENT`, `EEXIST`, `ENOSPC`, `EIO`, ...).
 */
import fs from 'node:fs';
import path from 'node:path';

/** How `LedgerFs.open` opens a file: read-only, read-write, or read-write and newly created (fails with EEXIST). */
export type LedgerOpenMode = 'read' | 'write' | 'create';

/** The filesystem calls of the ledger store. Paths are absolute or relative to the process. */
export interface LedgerFs {
  /** Creates `dir` and its parents; no error when it exists. */
  mkdir(dir: string): void;
  /** Names of the entries in `dir` (throws ENOENT when missing). */
  list(dir: string): string[];
  /** Opens `file`, returning a descriptor. */
  open(file: string, mode: LedgerOpenMode): number;
  /** Closes a descriptor. */
  close(fd: number): void;
  /** Current length of the open file, bytes. */
  size(fd: number): number;
  /** Reads up to `length` bytes at `position` into `buf[offset..]`; returns the count (0 at end of file). */
  read(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  /** Writes all of `data` (one buffer or several, in order) at `position`, or throws. */
  write(fd: number, data: Uint8Array | readonly Uint8Array[], position: number): void;
  /** Sets the file's length to `length` bytes. */
  truncate(fd: number, length: number): void;
  /** Makes the file's data durable (fdatasync). */
  sync(fd: number): Promise<void>;
  /** Makes creations and removals of entries in `dir` durable. */
  syncDir(dir: string): Promise<void>;
  /** Removes `file`. */
  unlink(file: string): void;
}

const OPEN_FLAGS: Record<LedgerOpenMode, string> = { read: 'r', write: 'r+', create: 'wx+' };

/** The real filesystem, through node:fs. Reads and writes are synchronous (page-cache speed); syncs run on the libuv pool. */
export const nodeLedgerFs: LedgerFs = {
  mkdir(dir) {
    fs.mkdirSync(dir, { recursive: true });
  },
  list(dir) {
    return fs.readdirSync(dir);
  },
  open(file, mode) {
    return fs.openSync(file, OPEN_FLAGS[mode], 0o644);
  },
  close(fd) {
    fs.closeSync(fd);
  },
  size(fd) {
    return fs.fstatSync(fd).size;
  },
  read(fd, buf, offset, length, position) {
    return fs.readSync(fd, buf, offset, length, position);
  },
  write(fd, data, position) {
    if (data instanceof Uint8Array) {
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
      return;
    }
    // writev in one syscall; on a short write, finish the rest buffer by buffer.
    const total = data.reduce((s, b) => s + b.length, 0);
    let done = data.length === 0 ? 0 : fs.writevSync(fd, data as Uint8Array[], position);
    if (done === total) return;
    let skip = done;
    for (const b of data) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      let off = skip;
      skip = 0;
      while (off < b.length) {
        const n = fs.writeSync(fd, b, off, b.length - off, position + done);
        off += n;
        done += n;
      }
    }
  },
  truncate(fd, length) {
    fs.ftruncateSync(fd, length);
  },
  sync(fd) {
    return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  },
  async syncDir(dir) {
    const fd = fs.openSync(dir, 'r');
    try {
      await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    } finally {
      fs.closeSync(fd);
    }
  },
  unlink(file) {
    fs.unlinkSync(file);
  },
};

/** An errno-style error as node:fs throws them. */
export function fsError(code: string, syscall: string, file?: string): NodeJS.ErrnoException {
  const err = new Error(`${code}: ${syscall}${file ? ` '${file}'` : ''}`) as NodeJS.ErrnoException;
  err.code = code;
  err.syscall = syscall;
  if (file) err.path = file;
  return err;
}

interface MemFile {
  /** Current bytes (what reads see). */
  data: Buffer;
  /** Bytes as of the last sync (what a power cut keeps, at least). */
  durable: Buffer;
}

interface MemDir {
  /** Entries now. */
  names: Map<string, MemFile>;
  /** Entries as of the last syncDir (what a power cut keeps). */
  durable: Map<string, MemFile>;
}

/** Kinds of call `MemoryLedgerFs` reports to its `onCall` hook and can be told to fail. */
export type MemoryFsCall = 'open' | 'write' | 'truncate' | 'sync' | 'syncDir' | 'unlink';

/** Options of a power cut simulated by `MemoryLedgerFs.powerCut`. */
export interface PowerCutOptions {
  /** Random numbers in [0, 1); defaults to Math.random. Seed it to replay a failure. */
  random?: () => number;
  /** When true (the default), an unsynced tail may survive in part, and in part as zeros. */
  torn?: boolean;
}

/**
 * The simulated twin of the filesystem, in memory. It counts calls (`calls`), can fail the
 * next calls of a kind (`failNext`), has an optional capacity (ENOSPC past it, after writing
 * what fits, like a real disk), and `powerCut()` returns the filesystem a power cut would
 * leave: unsynced data lost (or torn, or zeroed), unsynced creations and removals undone.
 * Directories are created durably at once (the store creates its own once).
 */
export class MemoryLedgerFs implements LedgerFs {
  /** Calls made so far, per kind. */
  readonly calls: Record<MemoryFsCall, number> = { open: 0, write: 0, truncate: 0, sync: 0, syncDir: 0, unlink: 0 };
  /** Called before every call of these kinds (after fault injection is decided); a test can take a `powerCut()` here. */
  onCall?: (call: MemoryFsCall, file: string) => void;
  /** Total bytes all files may hold; undefined means unbounded. */
  capacity?: number;

  private dirs = new Map<string, MemDir>();
  private fds = new Map<number, { file: MemFile; name: string; writable: boolean }>();
  private nextFd = 3;
  private faults: { call: MemoryFsCall; code: string; count: number }[] = [];

  constructor(options: { capacity?: number } = {}) {
    this.capacity = options.capacity;
  }

  /** Makes the next `count` calls of kind `call` fail with errno `code` (e.g. 'ENOSPC', 'EIO'). */
  failNext(call: MemoryFsCall, code: string, count = 1): void {
    this.faults.push({ call, code, count });
  }

  /** Bytes held by all files now. */
  usedBytes(): number {
    let n = 0;
    for (const d of this.dirs.values()) for (const f of d.names.values()) n += f.data.length;
    return n;
  }

  /** The current bytes of `file` (a copy), or undefined when it does not exist. */
  contents(file: string): Buffer | undefined {
    const f = this.lookup(file);
    return f ? Buffer.from(f.data) : undefined;
  }

  /** Replaces the bytes of `file` (creating it), as durable; for tests that damage files. */
  setContents(file: string, data: Uint8Array): void {
    const d = this.dir(path.dirname(file), true)!;
    const f: MemFile = { data: Buffer.from(data), durable: Buffer.from(data) };
    d.names.set(path.basename(file), f);
    d.durable.set(path.basename(file), f);
  }

  /** The filesystem as a power cut right now would leave it (this one is unchanged). */
  powerCut(options: PowerCutOptions = {}): MemoryLedgerFs {
    const random = options.random ?? Math.random;
    const torn = options.torn ?? true;
    const out = new MemoryLedgerFs({ capacity: this.capacity });
    for (const [dirName, d] of this.dirs) {
      const nd: MemDir = { names: new Map(), durable: new Map() };
      for (const [name, f] of d.durable) {
        let data = Buffer.from(f.durable);
        const cur = f.data;
        if (torn && !cur.equals(f.durable)) {
          // Writeback reached the disk in file order up to a random point: a prefix of the
          // current bytes over the durable ones; appended bytes past it may be zeros
          // (the length was recorded, the data was not).
          const len = Math.max(cur.length, f.durable.length);
          const cut = Math.floor(random() * (len + 1));
          const keep = Buffer.alloc(Math.max(f.durable.length, Math.min(cut, cur.length)));
          f.durable.copy(keep);
          cur.copy(keep, 0, 0, Math.min(cut, cur.length));
          if (random() < 0.25 && keep.length > f.durable.length) keep.fill(0, f.durable.length + Math.floor(random() * (keep.length - f.durable.length)));
          data = keep;
        }
        const nf: MemFile = { data, durable: Buffer.from(data) };
        nd.names.set(name, nf);
        nd.durable.set(name, nf);
      }
      out.dirs.set(dirName, nd);
    }
    return out;
  }

  mkdir(dir: string): void {
    let p = path.resolve(dir);
    const chain: string[] = [];
    while (!this.dirs.has(p) && p !== path.dirname(p)) {
      chain.push(p);
      p = path.dirname(p);
    }
    for (const c of chain) this.dirs.set(c, { names: new Map(), durable: new Map() });
  }
  list(dir: string): string[] {
    const d = this.dir(dir, false);
    if (!d) throw fsError('ENOENT', 'scandir', dir);
    return [...d.names.keys()];
  }
  open(file: string, mode: LedgerOpenMode): number {
    this.call('open', file);
    const d = this.dir(path.dirname(file), false);
    if (!d) throw fsError('ENOENT', 'open', file);
    const name = path.basename(file);
    let f = d.names.get(name);
    if (mode === 'create') {
      if (f) throw fsError('EEXIST', 'open', file);
      f = { data: Buffer.alloc(0), durable: Buffer.alloc(0) };
      d.names.set(name, f);
    } else if (!f) {
      throw fsError('ENOENT', 'open', file);
    }
    const fd = this.nextFd++;
    this.fds.set(fd, { file: f, name: file, writable: mode !== 'read' });
    return fd;
  }
  close(fd: number): void {
    if (!this.fds.delete(fd)) throw fsError('EBADF', 'close');
  }
  size(fd: number): number {
    return this.fd(fd).file.data.length;
  }
  read(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number {
    const f = this.fd(fd).file;
    if (position >= f.data.length) return 0;
    const n = Math.min(length, f.data.length - position);
    buf.set(f.data.subarray(position, position + n), offset);
    return n;
  }
  write(fd: number, data: Uint8Array | readonly Uint8Array[], position: number): void {
    const h = this.fd(fd);
    if (!h.writable) throw fsError('EBADF', 'write', h.name);
    this.call('write', h.name);
    const bytes = data instanceof Uint8Array ? data : Buffer.concat(data as Uint8Array[]);
    let room = Infinity;
    if (this.capacity !== undefined) room = Math.max(0, this.capacity - this.usedBytes() + Math.max(0, h.file.data.length - position));
    const n = Math.min(bytes.length, room);
    const end = position + n;
    if (end > h.file.data.length) {
      const grown = Buffer.alloc(end);
      h.file.data.copy(grown);
      h.file.data = grown;
    }
    h.file.data.set(bytes.subarray(0, n), position);
    if (n < bytes.length) throw fsError('ENOSPC', 'write', h.name);
  }
  truncate(fd: number, length: number): void {
    const h = this.fd(fd);
    this.call('truncate', h.name);
    const next = Buffer.alloc(length);
    h.file.data.copy(next, 0, 0, Math.min(length, h.file.data.length));
    h.file.data = next;
  }
  async sync(fd: number): Promise<void> {
    const h = this.fd(fd);
    this.call('sync', h.name);
    h.file.durable = Buffer.from(h.file.data);
  }
  async syncDir(dir: string): Promise<void> {
    this.call('syncDir', dir);
    const d = this.dir(dir, false);
    if (!d) throw fsError('ENOENT', 'fsync', dir);
    d.durable = new Map(d.names);
  }
  unlink(file: string): void {
    this.call('unlink', file);
    const d = this.dir(path.dirname(file), false);
    if (!d || !d.names.delete(path.basename(file))) throw fsError('ENOENT', 'unlink', file);
  }

  private call(kind: MemoryFsCall, file: string): void {
    this.calls[kind]++;
    const i = this.faults.findIndex((f) => f.call === kind);
    if (i >= 0) {
      const f = this.faults[i];
      if (--f.count <= 0) this.faults.splice(i, 1);
      throw fsError(f.code, kind, file);
    }
    this.onCall?.(kind, file);
  }
  private fd(fd: number) {
    const h = this.fds.get(fd);
    if (!h) throw fsError('EBADF', 'fd');
    return h;
  }
  private dir(dir: string, create: boolean): MemDir | undefined {
    const p = path.resolve(dir);
    if (create) this.mkdir(p);
    return this.dirs.get(p);
  }
  private lookup(file: string): MemFile | undefined {
    return this.dir(path.dirname(file), false)?.names.get(path.basename(file));
  }
}
