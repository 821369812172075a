/**
 * The `sync` config section beyond what its JSON Schema can say: the broker URL's scheme and
 * TLS options, the topic prefix, the fleet and operator keys (parsed and of the right type),
 * and where the fleet key comes from (`@file`). Used by the config loader (every problem at
 * once, with its path) and by `startSync`.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { ConfigSchema, type SyncConfig } from '../config/schema.ts';
import { KeelError, asError, type ConfigIssue } from '../errors.ts';
import { keyNameProblem } from '../ledger/keys.ts';
import { parseVerifierKey, SIGNATURE_TYPE_COSIGNATURE_V1, SIGNATURE_TYPE_ED25519, type VerifierKey } from '../ledger/note.ts';
import { prefixProblem } from './wire.ts';

const SCHEMES = new Set(['mqtt:', 'mqtts:', 'ws:', 'wss:']);

/** Why `vkey` is not a verifier key of `type`, or undefined. */
function vkeyProblem(vkey: string, type: number): string | undefined {
  let k: VerifierKey;
  try {
    k = parseVerifierKey(vkey.trim());
  } catch (err) {
    return asError(err).message;
  }
  if (k.type !== type) {
    return type === SIGNATURE_TYPE_COSIGNATURE_V1
      ? `is a key of type 0x${k.type.toString(16).padStart(2, '0')}; the fleet key must be its cosigner key of type 0x04 (the contents of the fleet's fleet.vkey)`
      : `is a key of type 0x${k.type.toString(16).padStart(2, '0')}; an operator key must be an Ed25519 signing key of type 0x01`;
  }
  return undefined;
}

/**
 * Problems of a schema-valid sync section that the schema cannot express, with paths relative
 * to the section (`broker`, `operators[1]`). Reads no file (see `syncFileIssues`).
 */
export function syncConfigIssues(s: SyncConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const add = (p: string, message: string) => issues.push({ path: p, message });
  let url: URL | undefined;
  try {
    url = new URL(s.broker);
  } catch {
    add('broker', `"${s.broker.slice(0, 200)}" is not a URL (expected mqtt://host:port, mqtts://, ws:// or wss://)`);
  }
  if (url) {
    if (!SCHEMES.has(url.protocol)) add('broker', `scheme ${url.protocol} is not one of mqtt:, mqtts:, ws:, wss:`);
    if (!url.hostname) add('broker', 'names no host');
    if (url.username || url.password) add('broker', 'must not carry credentials: the device signs in with its key (a fresh token per connect)');
    if (s.caFile !== undefined && url.protocol !== 'mqtts:' && url.protocol !== 'wss:') add('caFile', `only applies to mqtts:// and wss:// brokers, not ${url.protocol}//`);
  }
  const pp = prefixProblem(s.prefix);
  if (pp) add('prefix', pp);
  if (!s.fleet.startsWith('@')) {
    const p = vkeyProblem(s.fleet, SIGNATURE_TYPE_COSIGNATURE_V1);
    if (p) add('fleet', p);
  } else if (s.fleet.length < 2) add('fleet', '"@" must be followed by a file name');
  if (s.audience !== undefined) {
    const p = keyNameProblem(s.audience);
    if (p) add('audience', p);
  }
  s.operators.forEach((k, i) => {
    const p = vkeyProblem(k, SIGNATURE_TYPE_ED25519);
    if (p) add(`operators[${i}]`, p);
  });
  if (s.reconnect.initialMs > s.reconnect.maxMs) add('reconnect', `initialMs (${s.reconnect.initialMs}) must not exceed maxMs (${s.reconnect.maxMs})`);
  return issues;
}

/**
 * Problems with the files a sync section names (`fleet: "@file"`, `caFile`), paths relative to
 * `baseDir`; for `keel check` and `keel run` before anything starts.
 */
export function syncFileIssues(s: SyncConfig, baseDir: string): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (s.fleet.startsWith('@')) {
    try {
      resolveFleetKey(s, baseDir);
    } catch (err) {
      issues.push({ path: 'sync.fleet', message: asError(err).message });
    }
  }
  if (s.caFile !== undefined) {
    const file = path.resolve(baseDir, s.caFile);
    try {
      const text = readFileSync(file, 'utf8');
      if (!text.includes('-----BEGIN CERTIFICATE-----')) issues.push({ path: 'sync.caFile', message: `${file} holds no PEM certificate` });
    } catch (err) {
      issues.push({ path: 'sync.caFile', message: `cannot read ${file}: ${fsWhy(err)}` });
    }
  }
  return issues;
}

function fsWhy(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? 'file not found' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : asError(err).message;
}

/**
 * The fleet cosigner key of a sync section (read from the file for `@file`), parsed and
 * checked to be of type 0x04.
 * @throws KeelError KEEL_E_CONFIG naming the problem.
 */
export function resolveFleetKey(s: SyncConfig, baseDir: string): { vkey: string; key: VerifierKey } {
  let text = s.fleet;
  if (text.startsWith('@')) {
    const file = path.resolve(baseDir, text.slice(1));
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new KeelError('KEEL_E_CONFIG', `cannot read the fleet key ${file}: ${fsWhy(err)}`);
    }
    // A vkey file is one line; tolerate a trailing newline and comment lines.
    const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    if (lines.length !== 1) throw new KeelError('KEEL_E_CONFIG', `the fleet key file ${file} must hold exactly one verifier key line, found ${lines.length}`);
    text = lines[0];
  }
  const vkey = text.trim();
  const p = vkeyProblem(vkey, SIGNATURE_TYPE_COSIGNATURE_V1);
  if (p) throw new KeelError('KEEL_E_CONFIG', `the fleet key ${p}`);
  return { vkey, key: parseVerifierKey(vkey) };
}

/** A sync section with every default applied (for tests, benchmarks and tools that build one in code). */
export function syncSettings(partial: Partial<SyncConfig> & { broker: string; fleet: string }): SyncConfig {
  const schema = ConfigSchema.properties.sync;
  const value = Value.Default(schema, structuredClone(partial)) as SyncConfig;
  const errors = [...Value.Errors(schema, value)];
  if (errors.length) throw new RangeError(`sync settings: ${errors.map((e) => `${e.path || '/'}: ${e.message}`).join('; ')}`);
  const issues = syncConfigIssues(value);
  if (issues.length) throw new RangeError(`sync settings: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
  return value;
}
