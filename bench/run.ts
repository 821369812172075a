/**
 * `npm run bench [-- --json] [-- --quick] [-- <name filter>]`: runs every `bench/*.bench.ts`.
 * Human output is a table; `--json` prints one JSON object per line:
 * {"name", "value", "unit", "baseline", "ratio"}.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Bench, BenchResult } from './lib.ts';

const dir = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick') || process.env.KEEL_BENCH_QUICK === '1';
const filters = args.filter((a) => !a.startsWith('--'));

const files = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();

if (!json) console.log(`${'benchmark'.padEnd(48)} ${'value'.padStart(14)} ${'unit'.padEnd(10)} ${'baseline'.padStart(14)} ${'ratio'.padStart(8)}`);
let failed = 0;
for (const f of files) {
  let results: BenchResult[];
  try {
    const mod = (await import(pathToFileURL(path.join(dir, f)).href)) as { default: Bench };
    results = await mod.default({ quick });
  } catch (err) {
    failed++;
    console.error(`${f}: ${(err as Error).stack ?? err}`);
    continue;
  }
  for (const r of results) {
    if (json) console.log(JSON.stringify(r));
    else console.log(`${r.name.padEnd(48)} ${fmt(r.value).padStart(14)} ${r.unit.padEnd(10)} ${fmt(r.baseline).padStart(14)} ${r.ratio.toFixed(3).padStart(8)}`);
  }
}
process.exitCode = failed ? 1 : 0;

function fmt(x: number): string {
  return Math.abs(x) >= 1000 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3);
}
