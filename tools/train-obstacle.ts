/**
 * Trains `obstacle`: one 32-beam range scan -> probabilities of clear / near / blocked.
 * Writes models/obstacle.onnx and its card.
 *
 *   npx tsx tools/train-obstacle.ts
 *
 * Deterministic: same seeds, same weights, same file hash.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  BEAMS,
  BLOCKED_WITHIN,
  MAX_RANGE,
  NEAR_WITHIN,
  OBSTACLE_LABELS,
  OBSTACLE_PIPELINE,
  OBSTACLE_RATE_HZ,
  PATH_HALF_WIDTH,
  obstacleSet,
  type ObstacleSet,
} from './data/obstacle.ts';
import { accuracy, argmax, confusion, countParams, fitMlp, Mlp, Rng, roundToFloat32, softmax, type Example } from './nn.ts';
import { GraphBuilder, addMlp } from './onnx-export.ts';
import { verifyWithOrt } from './ort-verify.ts';
import { sha256Bytes, writeCard, type CardFacts } from './model-card.ts';
import { confusionTable, isMain, MODELS_DIR, pct } from './script.ts';

/** Seeds of the generated sets; the model tests use yet another seed. */
export const SEEDS = { init: 21, train: 201, validation: 202, heldOut: 203 } as const;
const SIZES = { train: 30000, validation: 3000, heldOut: 4500 };
const NAME = 'obstacle';

/** Class probabilities for one feature vector, as the ONNX graph computes them. */
export function obstacleProbs(mlp: Mlp, features: ArrayLike<number>): Float64Array {
  return softmax(mlp.forward(features));
}

/** Builds the ONNX graph: scan features -> MLP -> softmax. */
export function exportObstacle(mlp: Mlp): Uint8Array {
  const g = new GraphBuilder('obstacle');
  g.input({ name: 'scan', shape: [1, BEAMS] });
  const logits = addMlp(g, mlp, 'scan', 'mlp', 'logits');
  g.node('Softmax', [logits], ['probs'], { axis: { i: 1 } });
  g.output({ name: 'probs', shape: [1, OBSTACLE_LABELS.length] });
  return g.encode({
    docString: 'keel obstacle: 32 ranges (m) over -60..+60 deg, scaled by keel (x*0.5-1) -> P(clear, near, blocked). See models/obstacle.md.',
    metadata: { 'keel.model': NAME, 'keel.pipeline': JSON.stringify(OBSTACLE_PIPELINE), 'keel.labels': OBSTACLE_LABELS.join(',') },
  });
}

/** Trains, verifies in ORT, writes the model and card into `outDir`. Returns the held-out metrics. */
export async function train(opts: { outDir?: string; log?: (line: string) => void } = {}): Promise<Record<string, number>> {
  const outDir = opts.outDir ?? MODELS_DIR;
  const log = opts.log ?? ((s: string) => console.log(s));
  const started = Date.now();
  const examples = (s: ObstacleSet): Example[] => s.x.map((x, i) => ({ x: Float64Array.from(x), y: s.y[i] }));
  const trainSet = obstacleSet(SEEDS.train, SIZES.train);
  const valSet = obstacleSet(SEEDS.validation, SIZES.validation);
  const heldOut = obstacleSet(SEEDS.heldOut, SIZES.heldOut);

  const rng = new Rng(SEEDS.init);
  const mlp = new Mlp([BEAMS, 48, 24, OBSTACLE_LABELS.length], ['relu', 'relu', 'none'], 'mlp').init(rng);
  const fit = fitMlp(mlp, examples(trainSet), examples(valSet), {
    loss: 'softmax',
    epochs: 30,
    batch: 64,
    lr: 2e-3,
    weightDecay: 1e-4,
    rng,
    log: (e, tl, vl) => (e % 5 === 4 ? log(`epoch ${e + 1}: train loss ${tl.toFixed(4)}, validation loss ${vl.toFixed(4)}`) : undefined),
  });
  roundToFloat32(mlp.params());

  const probs = heldOut.x.map((x) => obstacleProbs(mlp, x));
  const pred = probs.map((p) => argmax(p));
  const acc = accuracy(pred, heldOut.y);
  const cm = confusion(pred, heldOut.y, 3);
  // The costly mistake: something within 0.5 m of the path called clear.
  const blockedAsClear = cm[2][0] / cm[2].reduce((a, b) => a + b, 0);
  const blockedRecall = cm[2][2] / cm[2].reduce((a, b) => a + b, 0);
  const clearPrecision = cm[0][0] / (cm[0][0] + cm[1][0] + cm[2][0]);
  log(`held-out (${heldOut.x.length} scans): accuracy ${pct(acc)}, best epoch ${fit.bestEpoch + 1}`);
  log(`confusion [true][pred] (clear, near, blocked): ${JSON.stringify(cm)}`);

  const bytes = exportObstacle(mlp);
  const worst = await verifyWithOrt(
    bytes,
    heldOut.x.slice(0, 300).map((x) => ({ feeds: { scan: { data: x, dims: [1, BEAMS] } }, expected: { probs: obstacleProbs(mlp, x) } })),
    1e-5,
  );
  log(`ORT agrees with the TypeScript forward pass on 300 held-out scans (max |diff| ${worst.toExponential(2)})`);
  const file = `${NAME}.onnx`;
  writeFileSync(path.join(outDir, file), bytes);
  const sha256 = sha256Bytes(bytes);
  log(`wrote ${path.join(outDir, file)} (${bytes.length} bytes, sha256 ${sha256}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const metrics = {
    accuracy: round4(acc),
    blockedRecall: round4(blockedRecall),
    blockedAsClear: round4(blockedAsClear),
    clearPrecision: round4(clearPrecision),
  };
  const facts: CardFacts = {
    name: NAME,
    file,
    sha256,
    task: '3-class scene classification (clear / near / blocked)',
    windowInput: 'scan',
    inputs: [{ name: 'scan', shape: [1, BEAMS], dtype: 'float32', description: 'ranges r00..r31 (m), scaled to range * 0.5 - 1' }],
    outputs: [{ name: 'probs', shape: [1, 3], dtype: 'float32', description: 'softmax probabilities of clear, near, blocked' }],
    labels: [...OBSTACLE_LABELS],
    sourceRateHz: OBSTACLE_RATE_HZ,
    pipeline: OBSTACLE_PIPELINE,
    parameters: countParams(mlp.params()),
    training: { script: `tools/train-${NAME}.ts`, seed: SEEDS.train, heldOutSeed: SEEDS.heldOut, trainSize: SIZES.train, validationSize: SIZES.validation, heldOutSize: SIZES.heldOut },
    metrics,
  };
  writeCard(outDir, {
    facts,
    title: 'obstacle: is the path ahead clear, near or blocked?',
    purpose: `Tells a small ground robot whether the path straight ahead is \`clear\`, has something
\`near\` (within ${NEAR_WITHIN} m) or is \`blocked\` (within ${BLOCKED_WITHIN} m), from one scan of a forward-facing
range sensor. keel's rules turn the class into actions: slow down on \`near\`, stop on
\`blocked\`. The path is a strip ${2 * PATH_HALF_WIDTH} m wide (a robot 0.4 m wide plus 5 cm each side).`,
    inputs: `One scan is one sample of 32 channels, \`r00\` (−60°, right) to \`r31\` (+60°, left) in equal
steps of 3.87°, each a range in metres, ${MAX_RANGE} m meaning "no echo". A typical source is an MCU that
sweeps a ToF or ultrasonic sensor on a servo (or reads a row of a multi-zone ToF) and prints
one CSV line per scan:

\`\`\`yaml
sources:
  - name: scanner
    type: serial
    path: /dev/ttyACM0
    format: {type: csv, columns: [${OBSTACLE_PIPELINE.window.channels.join(', ')}]}
\`\`\`

The window is one sample (\`size: 1\`) of the 32 channels, channels-first, so the tensor is
the scan in beam order; the \`scale\` transform maps 0..${MAX_RANGE} m to −1..1. Readings above
${MAX_RANGE} m should be clipped to ${MAX_RANGE} m by the sender; a sensor that reports 0 for "no echo"
must send ${MAX_RANGE} instead.`,
    outputs: `\`probs\` holds P(clear), P(near), P(blocked), summing to 1. Use a class rule with
\`labels: [clear, near, blocked]\`; for stopping, a threshold on \`index: 2\` (P(blocked))
with a low threshold is the conservative choice.`,
    data: `Generated by \`tools/data/obstacle.ts\` (seeded): ${SIZES.train} training, ${SIZES.validation} validation and
${SIZES.heldOut} held-out scans, each of a new random scene, the three classes in equal shares.

- Scenes: a room (walls left, right and ahead) or a corridor (0.3–1.2 m to each side,
  sometimes an end wall) seen at a random heading, or open space with at most one far wall;
  plus 0–4 objects, half of them placed around the path: posts (r 3–10 cm), table/chair legs
  (r 1.2–3 cm), round bins (r 10–30 cm), boxes (20–70 cm, any orientation), pairs of legs.
- Sensor: ToF (beam half-cone 1–3°) or ultrasonic (7–15°, no echo from walls hit more
  than 40–65° off their normal). Each beam reads the nearest echo across its cone. Range
  noise 2–10 mm + 0.3–2.5 % of the range, up to 6 % dropouts (read as ${MAX_RANGE} m), up to
  1.5 % spurious short echoes, 1 mm resolution.
- Label: from the geometry, the nearest point of any shape inside the path strip
  (|y| ≤ ${PATH_HALF_WIDTH} m, x ≥ 0): below ${BLOCKED_WITHIN} m \`blocked\`, below ${NEAR_WITHIN} m \`near\`, else \`clear\`.`,
    training: `MLP ${BEAMS} → 48 (ReLU) → 24 (ReLU) → 3, then a softmax; cross-entropy, Adam (lr 2e-3,
cosine decay, decoupled weight decay 1e-4), batches of 64, 30 epochs, the epoch with the
lowest validation loss kept (epoch ${fit.bestEpoch + 1}). Weights rounded to float32 before evaluation and
export. Takes about half a minute on one core.`,
    results: `On ${SIZES.heldOut} held-out scans (seed ${SEEDS.heldOut}), argmax class:

- accuracy **${pct(acc)}**
- blocked recall ${pct(blockedRecall)}; blocked scenes called \`clear\`: ${pct(blockedAsClear)}
- precision of \`clear\` ${pct(clearPrecision)}

${confusionTable(cm, [...OBSTACLE_LABELS])}

Most errors sit at the class boundaries (an object at 0.45–0.55 m or 1.1–1.3 m, or just
inside or outside the path's edge), where the label flips on a few centimetres.`,
    limitations: `- 2-D only: overhangs (table tops), drop-offs (stairs) and objects below the beam are invisible.
- Thin objects between two beams (3.87° apart: 7 cm at 1 m) can be missed by a narrow ToF beam.
- Trained on simulated scans; glass, black fabric and soft surfaces that absorb ultrasound
  behave worse than the simulated dropouts. Validate on the real sensor before relying on it.
- One scan at a time, no memory: debounce the rules, and never use it as the only safety layer
  (keep a bumper or a hard stop on a short-range reading).`,
  });
  log(`wrote ${path.join(outDir, `${NAME}.md`)}`);
  return metrics;
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

if (isMain(import.meta.url)) await train({ outDir: process.env.KEEL_MODELS_DIR });
