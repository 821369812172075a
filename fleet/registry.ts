/**
 * The fleet registry: which devices may connect (their Ed25519 verifier keys) and which
 * operators and services may (a name and a secret). Both live in the fleet database
 * (fleet/db.ts: `devices`, `principals`); the broker reads them on every connect, so a change
 * made by `keel fleet enroll/revoke/user` in another process takes effect without a restart.
 *
 * Device ids and principal names share one namespace, the MQTT username, so a name is either
 * a device or a principal, never both. Secrets are stored only as salted scrypt hashes
 * (RFC 7914), `scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>`, and compared in constant time.
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { KeelError } from '../runtime/errors.ts';
import { parseVerifierKey, SIGNATURE_TYPE_ED25519, type VerifierKey } from '../runtime/ledger/note.ts';
import { deviceIdProblem } from '../runtime/sync/wire.ts';
import { deviceRow, fleetDbError, type DeviceRow, type FleetDb } from './db.ts';

export type { DeviceRow } from './db.ts';

/** Roles a principal can have: operators command devices and read; services (ingest) do anything under the prefix. */
export type PrincipalRole = 'operator' | 'service';

/** A principal's registry row (without its secret hash). Times are epoch ms. */
export interface PrincipalRow {
  name: string;
  role: PrincipalRole;
  /** The operator's command-signing verifier key (type 0x01), if registered. */
  vkey: string | null;
  createdAt: number;
  revokedAt: number | null;
}

/** scrypt cost parameters for new secrets: N = 2^14, r = 8, p = 1 (16 MiB, tens of ms per check). */
export const SCRYPT_PARAMS = { N: 16384, r: 8, p: 1 } as const;
/** Bytes of scrypt output and of salt. */
const HASH_BYTES = 32;
const SALT_BYTES = 16;
/** Shortest secret accepted when the caller chooses it, characters. */
export const MIN_SECRET_CHARS = 16;
/** Longest secret accepted, characters (it travels as the MQTT password). */
export const MAX_SECRET_CHARS = 1024;
/** Most scrypt work accepted from a stored hash (N * r), so a tampered row cannot exhaust memory. */
const MAX_SCRYPT_COST = 2 ** 20 * 8;

function registryError(message: string): KeelError {
  return new KeelError('KEEL_E_FLEET', message);
}

/** Runs `fn` on the database, mapping SQLite failures to KEEL_E_FLEET with `doing`. */
function withDb<T>(db: FleetDb, doing: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fleetDbError(err, db.name, doing);
  }
}

/** Why `name` is not a valid principal name, or undefined (the same alphabet as device ids). */
export function principalNameProblem(name: unknown): string | undefined {
  const p = deviceIdProblem(name);
  return p === undefined ? undefined : p.replace(/^device id/, 'principal name');
}

/**
 * Parses a device's verifier key: it must be a C2SP signed-note key of type 0x01 (Ed25519),
 * the kind `keel id` prints. A cosigner key (0x04) is refused: it signs no checkpoints.
 * @throws KeelError KEEL_E_FLEET with the reason.
 */
export function parseDeviceVkey(vkey: unknown): VerifierKey {
  if (typeof vkey !== 'string') throw new TypeError(`vkey must be a string, got ${typeof vkey}`);
  const text = vkey.trim();
  let vk: VerifierKey;
  try {
    vk = parseVerifierKey(text);
  } catch (err) {
    throw registryError(`not a verifier key (expected name+keyid+base64 as printed by "keel id"): ${(err as Error).message}`);
  }
  if (vk.type !== SIGNATURE_TYPE_ED25519) throw registryError(`${vk.name} is a type 0x${vk.type.toString(16).padStart(2, '0')} key; a device enrolls with its Ed25519 (type 0x01) verifier key from "keel id"`);
  return vk;
}

/** What `enroll` did. */
export interface EnrollResult {
  device: DeviceRow;
  /** 'enrolled' (new row), 'unchanged' (the same key was already enrolled) or 'reenrolled' (a revoked device was restored). */
  outcome: 'enrolled' | 'unchanged' | 'reenrolled';
}

/**
 * Enrolls a device: its id (`opts.name`, default the verifier key's name) may then connect
 * with tokens signed by that key. Enrolling the same key under the same id again changes
 * nothing. A revoked device comes back only with `opts.reenroll`.
 * @throws KeelError KEEL_E_FLEET for a bad key or id, an id taken by another key or by a
 *   principal, a key enrolled under another id, or a revoked device without `reenroll`.
 */
export function enroll(db: FleetDb, vkey: string, opts: { name?: string; reenroll?: boolean; now?: number } = {}): EnrollResult {
  const vk = parseDeviceVkey(vkey);
  const text = vkey.trim();
  const id = opts.name ?? vk.name;
  const idp = deviceIdProblem(id);
  if (idp) throw registryError(opts.name === undefined ? `the key's name cannot be a device id (${idp}); pass --name <device id>` : idp);
  const now = opts.now ?? Date.now();
  return withDb(db, `enrolling ${id}`, () =>
    db.transaction((): EnrollResult => {
      const byKey = db.prepare('SELECT id FROM devices WHERE vkey = ?').get(text) as { id: string } | undefined;
      if (byKey && byKey.id !== id) throw registryError(`this key is already enrolled as device "${byKey.id}"; one key, one device`);
      const row = deviceRow(db, id);
      if (row && row.vkey !== text) {
        throw registryError(`device id "${id}" is already enrolled with another key${row.revokedAt !== null ? ' (revoked)' : ''}; its records are bound to that key, so choose another id`);
      }
      if (db.prepare('SELECT 1 FROM principals WHERE name = ?').get(id)) throw registryError(`"${id}" is an operator/service name; device ids and principal names share the MQTT username space`);
      if (row && row.revokedAt === null) return { device: row, outcome: 'unchanged' };
      if (row) {
        if (!opts.reenroll) throw registryError(`device "${id}" was revoked at ${new Date(row.revokedAt!).toISOString()}; re-enroll it explicitly (--reenroll) if that was a mistake`);
        db.prepare('UPDATE devices SET revoked_at = NULL WHERE id = ?').run(id);
        return { device: { ...row, revokedAt: null }, outcome: 'reenrolled' };
      }
      db.prepare('INSERT INTO devices(id, vkey, enrolled_at, revoked_at) VALUES (?, ?, ?, NULL)').run(id, text, now);
      return { device: { id, vkey: text, enrolledAt: now, revokedAt: null }, outcome: 'enrolled' };
    }).immediate(),
  );
}

/**
 * Revokes a device: it can no longer connect, and a running broker disconnects it (see
 * FleetAuth.revalidate). Revoking twice keeps the first time.
 * @throws KeelError KEEL_E_FLEET for an unknown device.
 */
export function revoke(db: FleetDb, id: string, opts: { now?: number } = {}): DeviceRow {
  if (typeof id !== 'string') throw new TypeError(`id must be a string, got ${typeof id}`);
  const now = opts.now ?? Date.now();
  return withDb(db, `revoking ${id}`, () =>
    db.transaction((): DeviceRow => {
      const row = deviceRow(db, id);
      if (!row) throw registryError(`no device "${id.slice(0, 80)}" is enrolled`);
      if (row.revokedAt !== null) return row;
      db.prepare('UPDATE devices SET revoked_at = ? WHERE id = ?').run(now, id);
      return { ...row, revokedAt: now };
    }).immediate(),
  );
}

/** Every enrolled device (revoked ones too), by id. */
export function listDevices(db: FleetDb): DeviceRow[] {
  return withDb(db, 'listing devices', () => db.prepare('SELECT id, vkey, enrolled_at AS enrolledAt, revoked_at AS revokedAt FROM devices ORDER BY id').all() as DeviceRow[]);
}

// ---------------------------------------------------------------------------------------------
// Principals

function scryptAsync(secret: string, salt: Buffer, p: { N: number; r: number; p: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // maxmem: scrypt needs 128 * N * r bytes; allow exactly that plus slack.
    scrypt(secret, salt, HASH_BYTES, { N: p.N, r: p.r, p: p.p, maxmem: 128 * p.N * p.r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** Hashes `secret` for storage: `scrypt$N$r$p$<salt>$<hash>` (base64). */
export async function hashSecret(secret: string): Promise<string> {
  if (typeof secret !== 'string' || secret.length === 0) throw new TypeError('secret must be a non-empty string');
  const salt = randomBytes(SALT_BYTES);
  const hash = await scryptAsync(secret, salt, SCRYPT_PARAMS);
  return `scrypt$${SCRYPT_PARAMS.N}$${SCRYPT_PARAMS.r}$${SCRYPT_PARAMS.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** Whether `secret` matches a stored hash (constant-time compare). A malformed hash matches nothing. */
export async function secretMatches(secret: string, stored: string): Promise<boolean> {
  const m = /^scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$/.exec(stored);
  if (!m || typeof secret !== 'string') return false;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const salt = Buffer.from(m[4], 'base64');
  const want = Buffer.from(m[5], 'base64');
  // N must be a power of two > 1; bound the work a stored row can ask for.
  if (N < 2 || (N & (N - 1)) !== 0 || r < 1 || p < 1 || N * r > MAX_SCRYPT_COST || p > 16 || want.length !== HASH_BYTES || salt.length < 8) return false;
  const got = await scryptAsync(secret, salt, { N, r, p });
  return timingSafeEqual(got, want);
}

/** A new random secret: 32 bytes, base64url (43 characters). */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** Why `secret` cannot be a principal's secret, or undefined. */
export function secretProblem(secret: unknown): string | undefined {
  if (typeof secret !== 'string') return `secret must be a string, got ${typeof secret}`;
  if (secret.length < MIN_SECRET_CHARS) return `secret must be at least ${MIN_SECRET_CHARS} characters (leave it out to generate one)`;
  if (secret.length > MAX_SECRET_CHARS) return `secret must be at most ${MAX_SECRET_CHARS} characters`;
  // The broker tells device tokens from secrets by this prefix.
  if (secret.startsWith('v1.')) return 'secret must not start with "v1." (that marks a device token)';
  if (/[\u0000-\u001f\u007f]/.test(secret)) return 'secret must not contain control characters';
  return undefined;
}

const PRINCIPAL_COLUMNS = 'name, role, vkey, created_at AS createdAt, revoked_at AS revokedAt';

/** The principal row of `name` (revoked or not), or undefined. */
export function principalRow(db: FleetDb, name: string): PrincipalRow | undefined {
  return withDb(db, `reading principal ${name}`, () => db.prepare(`SELECT ${PRINCIPAL_COLUMNS} FROM principals WHERE name = ?`).get(name) as PrincipalRow | undefined);
}

/**
 * Adds an operator or service with `opts.secret` or a generated one (returned; it is stored
 * only hashed, so this is the only time it can be shown). A revoked principal's name can be
 * reused (that replaces the row); a live one cannot.
 * @throws KeelError KEEL_E_FLEET for a bad name, role, secret or vkey, or a name in use.
 */
export async function addPrincipal(
  db: FleetDb,
  name: string,
  opts: { role: PrincipalRole; secret?: string; vkey?: string; now?: number },
): Promise<{ principal: PrincipalRow; secret: string }> {
  const np = principalNameProblem(name);
  if (np) throw registryError(np);
  if (opts.role !== 'operator' && opts.role !== 'service') throw registryError(`role must be "operator" or "service", got ${JSON.stringify(opts.role)}`);
  let vkey: string | null = null;
  if (opts.vkey !== undefined) {
    if (opts.role !== 'operator') throw registryError('only operators have a command-signing key (--vkey)');
    parseDeviceVkey(opts.vkey);
    vkey = opts.vkey.trim();
  }
  const secret = opts.secret ?? generateSecret();
  const sp = secretProblem(secret);
  if (sp) throw registryError(sp);
  const hash = await hashSecret(secret);
  const now = opts.now ?? Date.now();
  const principal: PrincipalRow = { name, role: opts.role, vkey, createdAt: now, revokedAt: null };
  withDb(db, `adding ${name}`, () =>
    db.transaction(() => {
      if (db.prepare('SELECT 1 FROM devices WHERE id = ?').get(name)) throw registryError(`"${name}" is a device id; device ids and principal names share the MQTT username space`);
      const row = db.prepare('SELECT revoked_at AS revokedAt FROM principals WHERE name = ?').get(name) as { revokedAt: number | null } | undefined;
      if (row && row.revokedAt === null) throw registryError(`principal "${name}" already exists; revoke it first to replace it`);
      db.prepare('INSERT OR REPLACE INTO principals(name, role, secret_hash, vkey, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, NULL)').run(name, opts.role, hash, vkey, now);
    }).immediate(),
  );
  return { principal, secret };
}

/**
 * Revokes a principal; a running broker disconnects its clients. Revoking twice keeps the first time.
 * @throws KeelError KEEL_E_FLEET for an unknown name.
 */
export function revokePrincipal(db: FleetDb, name: string, opts: { now?: number } = {}): PrincipalRow {
  if (typeof name !== 'string') throw new TypeError(`name must be a string, got ${typeof name}`);
  const now = opts.now ?? Date.now();
  return withDb(db, `revoking ${name}`, () =>
    db.transaction((): PrincipalRow => {
      const row = db.prepare(`SELECT ${PRINCIPAL_COLUMNS} FROM principals WHERE name = ?`).get(name) as PrincipalRow | undefined;
      if (!row) throw registryError(`no operator or service "${name.slice(0, 80)}" exists`);
      if (row.revokedAt !== null) return row;
      db.prepare('UPDATE principals SET revoked_at = ? WHERE name = ?').run(now, name);
      return { ...row, revokedAt: now };
    }).immediate(),
  );
}

/** Every principal (revoked ones too), by name. */
export function listPrincipals(db: FleetDb): PrincipalRow[] {
  return withDb(db, 'listing principals', () => db.prepare(`SELECT ${PRINCIPAL_COLUMNS} FROM principals ORDER BY name`).all() as PrincipalRow[]);
}

/** The command-signing verifier keys of live operators (for consoles and device configs). */
export function operatorKeys(db: FleetDb): string[] {
  return withDb(db, 'listing operator keys', () =>
    (db.prepare("SELECT vkey FROM principals WHERE role = 'operator' AND revoked_at IS NULL AND vkey IS NOT NULL ORDER BY name").all() as { vkey: string }[]).map((r) => r.vkey),
  );
}

// A valid hash of a random secret nobody knows: unknown names cost the same scrypt as known ones.
const DUMMY_HASH = `scrypt$${SCRYPT_PARAMS.N}$${SCRYPT_PARAMS.r}$${SCRYPT_PARAMS.p}$${randomBytes(SALT_BYTES).toString('base64')}$${randomBytes(HASH_BYTES).toString('base64')}`;

/**
 * Checks a principal's secret: the live row when it matches, otherwise undefined (unknown,
 * revoked or wrong secret; the caller cannot tell which, and neither can a timing observer:
 * an unknown name still costs one scrypt).
 */
export async function checkPrincipal(db: FleetDb, name: string, secret: string): Promise<PrincipalRow | undefined> {
  if (typeof secret !== 'string' || secret.length > MAX_SECRET_CHARS) return undefined;
  const row = withDb(db, `reading principal ${name}`, () =>
    db.prepare(`SELECT ${PRINCIPAL_COLUMNS}, secret_hash AS secretHash FROM principals WHERE name = ? AND revoked_at IS NULL`).get(name) as (PrincipalRow & { secretHash: string }) | undefined,
  );
  const ok = await secretMatches(secret, row?.secretHash ?? DUMMY_HASH);
  if (!row || !ok) return undefined;
  const { secretHash: _ignored, ...principal } = row;
  return principal;
}
