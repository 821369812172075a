/**
 * Ed25519 for the ledger: the signing backend slot (node:crypto or @noble/ed25519) and the
 * device key file (docs/ledger.md, "Key files").
 *
 * Keys are RFC 8032 raw bytes throughout: a private key is the 32-byte seed, a public key the
 * 32-byte encoding of A, a signature 64 bytes.
 *
 * Key file format (chosen for standard tools): PEM "PRIVATE KEY" (PKCS#8, RFC 8410), which
 * `openssl pkey -in key.pem -pubout` and node:crypto read as they are, optionally preceded by
 * one explanatory line `keel-key-name: <name>` carrying the key's signed-note name (RFC 7468
 * section 5.2 lets text precede the encapsulation boundary; OpenSSL skips it). Keys written by
 * `openssl genpkey -algorithm ed25519` load too (without a name). The file is created with mode
 * 0600 and never overwritten; loading refuses a file that group or others can access (like
 * OpenSSH), since anyone who reads the key can forge the device's log.
 */
import { closeSync, constants as fsConstants, fstatSync, fsyncSync, openSync, readSync, unlinkSync, writeSync, fchmodSync } from 'node:fs';
import path from 'node:path';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import * as noble from '@noble/ed25519';
import { KeyFileError } from './errors.ts';

/** Sizes of Ed25519 values, bytes [RFC 8032 5.1.5, 5.1.6]. */
export const ED25519_PRIVATE_KEY_SIZE = 32;
/** See ED25519_PRIVATE_KEY_SIZE. */
export const ED25519_PUBLIC_KEY_SIZE = 32;
/** See ED25519_PRIVATE_KEY_SIZE. */
export const ED25519_SIGNATURE_SIZE = 64;

/**
 * An Ed25519 implementation (RFC 8032, pure Ed25519, strict verification). Contract:
 * - `sign` and `publicKey` take the 32-byte seed and throw RangeError for any other length;
 * - `verify` returns false, never throws, for a signature that is not 64 bytes or does not
 *   verify (non-canonical S, undecodable points); it throws RangeError if the public key is not
 *   32 bytes, since keys come from configuration, not from the wire.
 */
export interface Ed25519 {
  /** Which implementation this is, for benchmarks and logs. */
  readonly name: string;
  /** RFC 8032 5.1.6 signature of `message`, 64 bytes. */
  sign(message: Uint8Array, privateKey: Uint8Array): Uint8Array;
  /** RFC 8032 5.1.7 verification. */
  verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean;
  /** RFC 8032 5.1.5 public key of a seed, 32 bytes. */
  publicKey(privateKey: Uint8Array): Uint8Array;
}

function checkBytes(fn: string, name: string, v: unknown, size: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${fn}: ${name} must be a Uint8Array`);
  if (v.length !== size) throw new RangeError(`${fn}: ${name} must be ${size} bytes, got ${v.length}`);
  return v;
}

function checkMessage(fn: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${fn}: message must be a Uint8Array`);
  return v;
}

// DER prefixes of the only encodings node:crypto imports raw Ed25519 keys from [RFC 8410].
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex'); // || 32-byte seed
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex'); // || 32-byte public key

/** A small FIFO cache: importing a KeyObject costs more than signing a checkpoint. */
class KeyObjectCache<T> {
  private readonly map = new Map<string, T>();
  constructor(private readonly limit: number) {}
  get(bytes: Uint8Array, make: () => T): T {
    const id = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('base64');
    if (this.map.has(id)) return this.map.get(id) as T;
    const k = make();
    if (this.map.size >= this.limit) this.map.delete(this.map.keys().next().value as string);
    this.map.set(id, k);
    return k;
  }
}

/**
 * Whether a public key is one strict RFC 8032 verification accepts: a canonical encoding of a
 * curve point that is not of small order. OpenSSL (and Go) skip the small-order check, so with
 * a small-order key (the identity, for one) a forged R = identity, S = 0 verifies for every
 * message there; checking here makes both backends refuse such keys alike.
 */
export function isStrictPublicKey(publicKey: Uint8Array): boolean {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== ED25519_PUBLIC_KEY_SIZE) return false;
  try {
    return !noble.Point.fromBytes(publicKey, false).isSmallOrder();
  } catch {
    return false; // not a canonical point encoding
  }
}

/**
 * Ed25519 on node:crypto (OpenSSL), importing raw keys through DER and caching KeyObjects.
 * OpenSSL already refuses non-canonical S; public keys are screened with isStrictPublicKey
 * once per key, so accept/reject decisions match the strict noble backend.
 */
class NodeEd25519 implements Ed25519 {
  readonly name = 'node:crypto';
  private readonly privateKeys = new KeyObjectCache<KeyObject>(64);
  /** Null marks a key strict verification refuses (see isStrictPublicKey). */
  private readonly publicKeys = new KeyObjectCache<KeyObject | null>(256);

  private privateKeyObject(seed: Uint8Array): KeyObject {
    return this.privateKeys.get(seed, () => createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' }));
  }

  sign(message: Uint8Array, privateKey: Uint8Array): Uint8Array {
    checkMessage('Ed25519.sign', message);
    checkBytes('Ed25519.sign', 'privateKey', privateKey, ED25519_PRIVATE_KEY_SIZE);
    return cryptoSign(null, message, this.privateKeyObject(privateKey));
  }

  verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
    checkMessage('Ed25519.verify', message);
    checkBytes('Ed25519.verify', 'publicKey', publicKey, ED25519_PUBLIC_KEY_SIZE);
    if (!(signature instanceof Uint8Array) || signature.length !== ED25519_SIGNATURE_SIZE) return false;
    try {
      const key = this.publicKeys.get(publicKey, () =>
        isStrictPublicKey(publicKey) ? createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' }) : null,
      );
      return key !== null && cryptoVerify(null, message, key, signature);
    } catch {
      return false; // an undecodable public key verifies nothing
    }
  }

  publicKey(privateKey: Uint8Array): Uint8Array {
    checkBytes('Ed25519.publicKey', 'privateKey', privateKey, ED25519_PRIVATE_KEY_SIZE);
    const spki = createPublicKey(this.privateKeyObject(privateKey)).export({ format: 'der', type: 'spki' });
    return new Uint8Array(spki.subarray(SPKI_PREFIX.length));
  }
}

/**
 * Ed25519 on @noble/ed25519 (audited pure JS, no native code). Its synchronous API needs a
 * SHA-512 slot; when the application has not filled `hashes.sha512`, this fills it with
 * node:crypto's SHA-512 (the result is length-checked by noble). Verification passes
 * `{ zip215: false }`: strict RFC 8032 / FIPS 186-5 rules, so accept/reject decisions agree with
 * OpenSSL and Go's crypto/ed25519 rather than with ZIP-215 consensus rules.
 */
class NobleEd25519 implements Ed25519 {
  readonly name = '@noble/ed25519';

  constructor() {
    const slot = noble.hashes as { sha512?: (message: Uint8Array) => Uint8Array };
    if (typeof slot.sha512 !== 'function') slot.sha512 = (m) => new Uint8Array(createHash('sha512').update(m).digest());
  }

  sign(message: Uint8Array, privateKey: Uint8Array): Uint8Array {
    checkMessage('Ed25519.sign', message);
    checkBytes('Ed25519.sign', 'privateKey', privateKey, ED25519_PRIVATE_KEY_SIZE);
    return noble.sign(message, privateKey);
  }

  verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
    checkMessage('Ed25519.verify', message);
    checkBytes('Ed25519.verify', 'publicKey', publicKey, ED25519_PUBLIC_KEY_SIZE);
    if (!(signature instanceof Uint8Array) || signature.length !== ED25519_SIGNATURE_SIZE) return false;
    try {
      return noble.verify(signature, message, publicKey, { zip215: false });
    } catch {
      return false;
    }
  }

  publicKey(privateKey: Uint8Array): Uint8Array {
    checkBytes('Ed25519.publicKey', 'privateKey', privateKey, ED25519_PRIVATE_KEY_SIZE);
    return noble.getPublicKey(privateKey);
  }
}

/** The node:crypto backend (OpenSSL; several times faster here, see bench/crypto.bench.ts). */
export const nodeEd25519: Ed25519 = new NodeEd25519();

/** The @noble/ed25519 backend (pure JS, strict RFC 8032 verification). */
export const nobleEd25519: Ed25519 = new NobleEd25519();

/** The backend used when a caller does not pass one: node:crypto, the faster on the hot path. */
export const defaultEd25519: Ed25519 = nodeEd25519;

const SPACE = /[\s\u0085]/u; // Unicode White_Space, as Go's unicode.IsSpace (which includes U+0085)
const CONTROL = /[\u0000-\u001f]/;
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Why `name` is not a valid signed-note key name, or undefined if it is: non-empty, no Unicode
 * spaces, no '+' [C2SP signed-note, "Format"], no control characters, well-formed Unicode.
 */
export function keyNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `must be a string, got ${typeof name}`;
  if (name.length === 0) return 'must not be empty';
  if (name.includes('+')) return "must not contain '+'";
  if (SPACE.test(name)) return 'must not contain spaces';
  if (CONTROL.test(name)) return 'must not contain control characters';
  if (LONE_SURROGATE.test(name)) return 'must be well-formed Unicode';
  return undefined;
}

/** A device's Ed25519 key as loaded from its key file. */
export interface DeviceKey {
  /** Signed-note key name stored in the file (`keel-key-name:`), if any. */
  name?: string;
  /** RFC 8032 32-byte seed. Secret. */
  privateKey: Uint8Array;
  /** RFC 8032 32-byte public key. */
  publicKey: Uint8Array;
}

/** Largest key file read, bytes: a PEM Ed25519 key is about 120; this refuses stray big files. */
export const MAX_KEY_FILE_SIZE = 16 * 1024;

const NAME_LINE = 'keel-key-name: ';

/**
 * The key file text for `key`: an optional `keel-key-name:` line, then the PEM PKCS#8 block.
 * @throws RangeError/TypeError for an invalid seed or name.
 */
export function formatKeyFile(key: { name?: string; privateKey: Uint8Array }): string {
  checkBytes('formatKeyFile', 'key.privateKey', key?.privateKey, ED25519_PRIVATE_KEY_SIZE);
  let head = '';
  if (key.name !== undefined) {
    const problem = keyNameProblem(key.name);
    if (problem) throw new RangeError(`formatKeyFile: key.name ${problem}`);
    head = `${NAME_LINE}${key.name}\n`;
  }
  const der = Buffer.concat([PKCS8_PREFIX, key.privateKey]).toString('base64');
  return `${head}-----BEGIN PRIVATE KEY-----\n${der}\n-----END PRIVATE KEY-----\n`;
}

/**
 * Parses key file text (see the module comment). `file` names the source in errors.
 * @throws KeyFileError (KEEL_E_KEY) for anything but one unencrypted Ed25519 PKCS#8 key.
 */
export function parseKeyFile(text: string, file = '(key)'): DeviceKey {
  if (typeof text !== 'string') throw new TypeError('parseKeyFile: text must be a string');
  const fail = (why: string, cause?: unknown): never => {
    throw new KeyFileError(file, `key file ${file}: ${why}`, { cause });
  };
  const lines = text.split(/\r?\n/).map((l) => l.trimEnd()); // trailing blanks are editor noise
  const begin = lines.findIndex((l) => l.startsWith('-----BEGIN '));
  if (begin < 0) fail('no PEM block; expected "-----BEGIN PRIVATE KEY-----" (create a key with `keel keygen --out <file>`)');
  const label = /^-----BEGIN (.+)-----\s*$/.exec(lines[begin])?.[1];
  if (label !== 'PRIVATE KEY') {
    if (label === 'PUBLIC KEY') fail('holds a public key; keel needs the private key file');
    if (label === 'ENCRYPTED PRIVATE KEY') fail('the key is encrypted; keel needs an unencrypted key protected by file permissions');
    if (label === 'EC PRIVATE KEY' || label === 'RSA PRIVATE KEY' || label === 'DSA PRIVATE KEY') fail(`holds an ${label.split(' ')[0]} key; keel signs with Ed25519 only`);
    fail(`unsupported PEM block "${label ?? lines[begin]}"; expected "PRIVATE KEY" (PKCS#8 Ed25519)`);
  }
  let name: string | undefined;
  for (const line of lines.slice(0, begin)) {
    if (!line.startsWith(NAME_LINE.trim())) continue; // other explanatory text is allowed [RFC 7468 5.2]
    if (name !== undefined) fail(`more than one "${NAME_LINE.trim()}" line`);
    name = line.slice(NAME_LINE.trim().length).trim();
    const problem = keyNameProblem(name);
    if (problem) fail(`key name ${JSON.stringify(name)} ${problem}`);
  }
  const end = lines.indexOf('-----END PRIVATE KEY-----', begin + 1);
  if (end < 0) fail('the PEM block has no "-----END PRIVATE KEY-----" line');
  if (lines.slice(end + 1).some((l) => l.startsWith('-----BEGIN '))) fail('holds more than one PEM block');
  const body = lines.slice(begin + 1, end).join('').trim();
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || body.length % 4 !== 0) fail('the PEM body is not base64');
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(body, 'base64'), format: 'der', type: 'pkcs8' });
  } catch (err) {
    return fail('the PEM body is not a PKCS#8 private key', err);
  }
  if (key.asymmetricKeyType !== 'ed25519') fail(`holds an ${key.asymmetricKeyType ?? 'unknown'} key; keel signs with Ed25519 only`);
  const jwk = key.export({ format: 'jwk' });
  const privateKey = new Uint8Array(Buffer.from(jwk.d ?? '', 'base64url'));
  const publicKey = new Uint8Array(Buffer.from(jwk.x ?? '', 'base64url'));
  if (privateKey.length !== ED25519_PRIVATE_KEY_SIZE || publicKey.length !== ED25519_PUBLIC_KEY_SIZE) fail('the Ed25519 key has the wrong size');
  return name === undefined ? { privateKey, publicKey } : { name, privateKey, publicKey };
}

function fsError(file: string, what: string, err: unknown): KeyFileError {
  const code = (err as NodeJS.ErrnoException)?.code;
  const why =
    code === 'ENOENT' ? `does not exist (create one with \`keel keygen --out ${file}\`)`
    : code === 'EACCES' || code === 'EPERM' ? 'cannot be read: permission denied'
    : code === 'EISDIR' ? 'is a directory, not a key file'
    : `${what} failed: ${(err as Error)?.message ?? String(err)}`;
  // EIO/EAGAIN-style failures may pass; missing or forbidden files will not fix themselves.
  const retryable = code !== undefined && !['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ELOOP'].includes(code);
  return new KeyFileError(file, `key file ${file} ${why}`, { cause: err, retryable });
}

/**
 * Loads and checks a device key file.
 * @throws KeyFileError (KEEL_E_KEY) if the file is missing, unreadable, not a regular file,
 *   larger than MAX_KEY_FILE_SIZE, accessible by group or others (refused: fix with
 *   `chmod 600`), malformed, encrypted, or not an Ed25519 key.
 */
export function loadKeyFile(file: string): DeviceKey {
  if (typeof file !== 'string' || file === '') throw new TypeError('loadKeyFile: file must be a non-empty path');
  let fd: number;
  try {
    fd = openSync(file, fsConstants.O_RDONLY);
  } catch (err) {
    throw fsError(file, 'open', err);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new KeyFileError(file, `key file ${file} is not a regular file`);
    // Mode bits mean nothing on Windows; everywhere else, a key others can read is a leaked key.
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      throw new KeyFileError(file, `key file ${file} is accessible by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run \`chmod 600 ${file}\``);
    }
    if (st.size > MAX_KEY_FILE_SIZE) throw new KeyFileError(file, `key file ${file} is ${st.size} bytes; an Ed25519 key file is under ${MAX_KEY_FILE_SIZE}`);
    const buf = Buffer.alloc(MAX_KEY_FILE_SIZE + 1);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
      if (n > MAX_KEY_FILE_SIZE) throw new KeyFileError(file, `key file ${file} is larger than ${MAX_KEY_FILE_SIZE} bytes`);
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, n));
    } catch (err) {
      throw new KeyFileError(file, `key file ${file} is not text (not a PEM key file)`, { cause: err });
    }
    return parseKeyFile(text, file);
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    throw fsError(file, 'read', err);
  } finally {
    closeSync(fd);
  }
}

/**
 * Creates a new Ed25519 key file at `file`: created exclusively (O_EXCL: an existing file is
 * never overwritten), mode 0600 regardless of umask, fsynced with its directory entry.
 * `opts.name` (a signed-note key name, e.g. the device's log origin) is stored in the file.
 * @throws RangeError for an invalid name; KeyFileError (KEEL_E_KEY) if the file exists or
 *   cannot be written (a partly written file is removed).
 */
export function generateKeyFile(file: string, opts: { name?: string } = {}): DeviceKey {
  if (typeof file !== 'string' || file === '') throw new TypeError('generateKeyFile: file must be a non-empty path');
  if (opts.name !== undefined) {
    const problem = keyNameProblem(opts.name);
    if (problem) throw new RangeError(`generateKeyFile: opts.name ${problem}`);
  }
  const { privateKey: keyObject } = generateKeyPairSync('ed25519');
  const seed = new Uint8Array(keyObject.export({ format: 'der', type: 'pkcs8' }).subarray(PKCS8_PREFIX.length));
  const text = formatKeyFile({ name: opts.name, privateKey: seed });
  let fd: number;
  try {
    fd = openSync(file, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new KeyFileError(file, `key file ${file} already exists; refusing to overwrite a key (move it away first)`, { cause: err });
    if (code === 'ENOENT') throw new KeyFileError(file, `cannot create key file ${file}: directory ${path.dirname(file)} does not exist`, { cause: err });
    throw fsError(file, 'create', err);
  }
  try {
    fchmodSync(fd, 0o600); // the umask can only remove bits, but be exact
    const bytes = Buffer.from(text, 'utf8');
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    try {
      unlinkSync(file);
    } catch {
      // already gone; the original error matters
    }
    throw fsError(file, 'write', err);
  }
  closeSync(fd);
  syncDirectory(path.dirname(path.resolve(file)));
  const publicKey = new Uint8Array(createPublicKey(keyObject).export({ format: 'der', type: 'spki' }).subarray(SPKI_PREFIX.length));
  return opts.name === undefined ? { privateKey: seed, publicKey } : { name: opts.name, privateKey: seed, publicKey };
}

/** Makes a new directory entry durable; some filesystems refuse fsync on directories. */
function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, fsConstants.O_RDONLY);
    fsyncSync(fd);
  } catch {
    // best effort: the key file itself is already fsynced
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** What loadOrCreateKeyFile did. */
export interface KeyFileResult {
  key: DeviceKey;
  /** True when the file did not exist and was created now. */
  created: boolean;
}

/**
 * The first-run key path (config `ledger.createKey`): loads `file`; when it does not exist
 * (ENOENT, nothing else) and `opts.create` is set, creates it as generateKeyFile does, named
 * `opts.name`. Any other problem (unreadable, loose mode, malformed, a directory) is thrown as
 * loadKeyFile throws it: an existing key is never replaced, since a new key is a new device
 * identity. `opts.refuseCreate`, when given, is why a key must not be created even though none
 * exists (the ledger already holds checkpoints signed by a lost key, for one).
 * @throws KeyFileError (KEEL_E_KEY); a missing key without `create` says how to make one.
 */
export function loadOrCreateKeyFile(file: string, opts: { create: boolean; name?: string; refuseCreate?: string }): KeyFileResult {
  try {
    return { key: loadKeyFile(file), created: false };
  } catch (err) {
    const code = ((err as KeyFileError).cause as NodeJS.ErrnoException | undefined)?.code;
    if (!(err instanceof KeyFileError) || code !== 'ENOENT') throw err;
    if (!opts.create) {
      throw new KeyFileError(file, `key file ${file} does not exist: create it with \`keel keygen --out ${file}\`, or set ledger.createKey: true to create it on first start`, { cause: err.cause });
    }
    if (opts.refuseCreate) {
      throw new KeyFileError(file, `key file ${file} does not exist, and ledger.createKey will not create one: ${opts.refuseCreate}`, { cause: err.cause });
    }
  }
  return { key: generateKeyFile(file, { name: opts.name }), created: true };
}
