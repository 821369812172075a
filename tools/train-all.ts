/**
 * Retrains every model keel ships, one after the other, then rewrites models/README.md and
 * the example configs (their pinned SHA-256s follow the new files).
 *
 *   npx tsx tools/train-all.ts
 *
 * Each script is deterministic, so on the same Node major the files come out byte for byte
 * as committed, and `git status` shows no change.
 */
import { train as trainVibration } from './train-vibration-anomaly.ts';
import { train as trainObstacle } from './train-obstacle.ts';
import { train as trainMotorStall } from './train-motor-stall.ts';
import { writeModelIndex } from './model-card.ts';
import { writeExamples } from './write-examples.ts';
import { isMain, MODELS_DIR } from './script.ts';

/** The training entry points, by model name. */
export const TRAINERS = {
  'vibration-anomaly': trainVibration,
  obstacle: trainObstacle,
  'motor-stall': trainMotorStall,
} as const;

/** Trains every model into `outDir` (default models/); returns each model's held-out metrics. */
export async function trainAll(outDir = MODELS_DIR): Promise<Record<string, Record<string, number>>> {
  const results: Record<string, Record<string, number>> = {};
  for (const [name, train] of Object.entries(TRAINERS)) {
    const started = Date.now();
    console.log(`== ${name}`);
    results[name] = await train({ outDir });
    console.log(`== ${name} done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  }
  writeModelIndex(outDir);
  if (outDir === MODELS_DIR) writeExamples();
  return results;
}

if (isMain(import.meta.url)) {
  const results = await trainAll(process.env.KEEL_MODELS_DIR ?? MODELS_DIR);
  console.log(JSON.stringify(results, null, 2));
}
