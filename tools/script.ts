/** Small pieces the training scripts share: where models go, and whether a module is the entry point. */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The repository's models/ folder. */
export const MODELS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'models');

/** True when the module with this `import.meta.url` was run directly (`npx tsx tools/x.ts`). */
export function isMain(moduleUrl: string): boolean {
  const entry = process.argv[1];
  return entry !== undefined && pathToFileURL(path.resolve(entry)).href === moduleUrl;
}

/** Formats a fraction as a percentage with one decimal. */
export function pct(x: number): string {
  return `${(100 * x).toFixed(1)} %`;
}

/** Renders a confusion matrix (rows: true class, columns: predicted) as a Markdown table. */
export function confusionTable(m: number[][], labels: string[]): string {
  const head = `| true \\ predicted | ${labels.join(' | ')} |`;
  const sep = `| --- | ${labels.map(() => '---').join(' | ')} |`;
  const rows = m.map((r, i) => `| ${labels[i]} | ${r.join(' | ')} |`);
  return [head, sep, ...rows].join('\n');
}
