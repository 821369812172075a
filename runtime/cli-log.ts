/**
 * `keel keygen`, `keel id` and `keel log ...`: device identity and the signed ledger from
 * the command line. Output is human text on a terminal and JSON with `--json` where a
 * command reports something; formats that are public specs (checkpoints, proofs) are
 * printed as the spec writes them.
 */
import { readFileSync } from 'node:fs';
import { KeelError, asError } from './errors.ts';
import { Ledger, type RecordInput } from './ledger/ledger.ts';
import { generateKeyFile, loadKeyFile } from './ledger/keys.ts';
import { parseIJson } from './ledger/jcs.ts';
import { verifierKey } from './ledger/note.ts';

/** Output channels and the exit codes the CLI uses. */
export interface LogIo {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Standard input as text (read fully). */
  stdin: () => string;
  /** Writes text exactly as given (public formats keep their own final newline). */
  raw?: (s: string) => void;
}

/** Flags as parsed by the CLI's parseArgs. */
export type LogFlags = Record<string, string | boolean | undefined>;

const usage = (msg: string) => new KeelError('KEEL_E_USAGE', msg);

/** Largest record `keel log append` accepts, bytes of JSON (the store refuses more anyway). */
export const MAX_APPEND_LINE = 256 * 1024;

function nonNegative(v: string | boolean | undefined, flag: string): number {
  if (typeof v !== 'string' || !/^(0|[1-9]\d*)$/.test(v) || !Number.isSafeInteger(Number(v))) throw usage(`${flag} must be a non-negative integer, got ${JSON.stringify(v ?? '')}`);
  return Number(v);
}

/** keel keygen --out <file> [--name <origin>] */
export function cmdKeygen(flags: LogFlags, io: LogIo): number {
  if (typeof flags.out !== 'string') throw usage('keygen needs --out <file>');
  const name = typeof flags.name === 'string' ? flags.name : undefined;
  const key = generateKeyFile(flags.out, { name });
  io.err(`wrote ${flags.out} (mode 0600)`);
  io.out(verifierKey(name ?? 'keel-device', key.publicKey));
  return 0;
}

/** keel id --key <file> [--name <origin>]: prints the verifier key. */
export function cmdId(flags: LogFlags, io: LogIo): number {
  if (typeof flags.key !== 'string') throw usage('id needs --key <file>');
  const key = loadKeyFile(flags.key);
  const name = typeof flags.name === 'string' ? flags.name : (key.name ?? 'keel-device');
  io.out(verifierKey(name, key.publicKey));
  return 0;
}

/**
 * Parses stdin lines into records: each line one JSON object (I-JSON), appended as an
 * `event` record with the object as `data`. Every bad line is reported, and nothing is
 * appended unless all lines are good.
 */
export function parseAppendInput(text: string): { records: RecordInput[]; problems: string[] } {
  const records: RecordInput[] = [];
  const problems: string[] = [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    if (Buffer.byteLength(line) > MAX_APPEND_LINE) {
      problems.push(`line ${i + 1}: ${Buffer.byteLength(line)} bytes is more than the ${MAX_APPEND_LINE} allowed per record`);
      return;
    }
    let value: unknown;
    try {
      value = parseIJson(line);
    } catch (err) {
      problems.push(`line ${i + 1}: ${asError(err).message}`);
      return;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      problems.push(`line ${i + 1}: expected a JSON object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`);
      return;
    }
    records.push({ kind: 'event', body: { data: value } });
  });
  return { records, problems };
}

/** Dispatches `keel log <sub> <dir> ...`. */
export async function cmdLog(sub: string | undefined, dir: string | undefined, flags: LogFlags, io: LogIo): Promise<number> {
  if (!sub) throw usage('log needs a subcommand: append, checkpoint, proof, consistency, export, verify, tail');
  if (!dir) throw usage(`log ${sub} needs the ledger directory`);
  switch (sub) {
    case 'append': {
      if (typeof flags.key !== 'string') throw usage('log append needs --key <file>');
      const key = loadKeyFile(flags.key);
      const { records, problems } = parseAppendInput(io.stdin());
      if (problems.length > 0) {
        io.err(`stdin: ${problems.length} bad line${problems.length === 1 ? '' : 's'}; nothing was appended`);
        for (const p of problems.slice(0, 50)) io.err(`  ${p}`);
        if (problems.length > 50) io.err(`  ... and ${problems.length - 50} more`);
        return 3;
      }
      const ledger = await Ledger.open(dir, { key, durability: 'batch' });
      try {
        if (records.length > 0) await ledger.appendBatch(records);
        await ledger.checkpoint();
        io.out(String(ledger.size));
      } finally {
        await ledger.close();
      }
      return 0;
    }
    case 'checkpoint': {
      // With --key, sign a fresh checkpoint of the current tree first.
      const key = typeof flags.key === 'string' ? loadKeyFile(flags.key) : undefined;
      const ledger = await Ledger.open(dir, { key, readOnly: !key });
      try {
        const note = key ? await ledger.checkpoint() : ledger.latestCheckpoint();
        if (!note) throw usage(`${dir} has no checkpoint yet; sign one with: keel log checkpoint ${dir} --key <file>`);
        (io.raw ?? ((t: string) => process.stdout.write(t)))(note);
      } finally {
        await ledger.close();
      }
      return 0;
    }
    case 'proof': {
      const index = nonNegative(flags.index, '--index');
      const ledger = await Ledger.open(dir, { readOnly: true });
      try {
        (io.raw ?? ((t: string) => process.stdout.write(t)))(ledger.proof(index));
      } finally {
        await ledger.close();
      }
      return 0;
    }
    case 'consistency': {
      const from = nonNegative(flags.from, '--from');
      const ledger = await Ledger.open(dir, { readOnly: true });
      try {
        (io.raw ?? ((t: string) => process.stdout.write(t)))(ledger.consistency(from));
      } finally {
        await ledger.close();
      }
      return 0;
    }
    case 'export': {
      if (typeof flags.out !== 'string') throw usage('log export needs --out <dir>');
      const ledger = await Ledger.open(dir, { readOnly: true });
      try {
        const { records } = ledger.exportTo(flags.out);
        io.err(`wrote ${flags.out}/checkpoint and ${flags.out}/records.jsonl (${records} records)`);
      } finally {
        await ledger.close();
      }
      return 0;
    }
    case 'verify': {
      const vkey = typeof flags.key === 'string' ? readVkey(flags.key) : undefined;
      const ledger = await Ledger.open(dir, { readOnly: true });
      try {
        const r = await ledger.verify(vkey);
        if (flags.json) io.out(JSON.stringify(r));
        else if (r.ok) io.out(`ok: ${r.size} records${r.checkpointSize !== undefined ? `, checkpoint of ${r.checkpointSize} verified` : ', no checkpoint yet'}`);
        else io.err(`FAILED${r.problem?.index !== undefined ? ` at record ${r.problem.index}` : ''}: ${r.problem?.reason}`);
        return r.ok ? 0 : 1;
      } finally {
        await ledger.close();
      }
    }
    case 'tail': {
      const n = flags.n === undefined ? 10 : nonNegative(flags.n, '-n');
      const ledger = await Ledger.open(dir, { readOnly: true });
      try {
        const from = Math.max(ledger.firstAvailable, ledger.size - n);
        for (let i = from; i < ledger.size; i++) {
          const text = ledger.read(i).toString('utf8');
          if (flags.json) io.out(text);
          else io.out(readable(text));
        }
      } finally {
        await ledger.close();
      }
      return 0;
    }
    default:
      throw usage(`unknown log subcommand "${sub}"`);
  }
}

/** A --key for verify: a verifier key string, or a file holding one. */
function readVkey(v: string): string {
  if (v.includes('+')) return v;
  try {
    return readFileSync(v, 'utf8').trim();
  } catch (err) {
    throw usage(`--key: ${v} is neither a verifier key (name+id+key) nor a readable file (${asError(err).message})`);
  }
}

/** One line per record for people: index, time, kind, then the kind's main fields. */
function readable(text: string): string {
  const r = JSON.parse(text) as Record<string, unknown>;
  const { seq, t, kind, v: _v, ...rest } = r;
  const time = typeof t === 'number' ? new Date(t).toISOString() : String(t);
  const body = JSON.stringify(rest);
  return `${String(seq).padStart(6)}  ${time}  ${String(kind).padEnd(9)}  ${body.length > 160 ? `${body.slice(0, 157)}...` : body}`;
}
