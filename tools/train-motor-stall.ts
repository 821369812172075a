/**
 * Trains `motor-stall`, a stateful model: per 0.1 s step, current and command plus the
 * previous hidden state -> P(stalled) and the next hidden state (an Elman RNN cell trained
 * with truncated backpropagation through time). Writes models/motor-stall.onnx and its card.
 *
 *   npx tsx tools/train-motor-stall.ts
 *
 * Deterministic: same seeds, same weights, same file hash.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { MOTOR_FEATURES, MOTOR_PIPELINE, MOTOR_RATE_HZ, STATE_SIZE, STEP_SAMPLES, motorSet, type MotorSet } from './data/motor.ts';
import { Adam, ElmanRnn, Rng, accuracy, confusion, countParams, restore, rocAuc, roundToFloat32, sigmoid, sigmoidBce, snapshot } from './nn.ts';
import { GraphBuilder, addElmanStep, addMlp } from './onnx-export.ts';
import { openSession, runOnce } from './ort-verify.ts';
import { sha256Bytes, writeCard, type CardFacts } from './model-card.ts';
import { confusionTable, isMain, MODELS_DIR, pct } from './script.ts';

/** Seeds of the generated sets; the model tests use yet another seed. */
export const SEEDS = { init: 31, train: 301, validation: 302, heldOut: 303 } as const;
const SIZES = { train: 480, validation: 80, heldOut: 160 };
/** Steps per run (30 s). */
export const RUN_STEPS = 300;
const CHUNK = 50; // truncated BPTT length, steps (5 s)
const BATCH = 8; // runs per update
const EPOCHS = 30;
const NAME = 'motor-stall';

/** Per-step probabilities over a run, carrying the state (or resetting it every step when `stateless`). */
export function runProbabilities(rnn: ElmanRnn, xs: ArrayLike<number>[], stateless = false): number[] {
  let h: ArrayLike<number> = new Float64Array(rnn.hidden);
  return xs.map((x) => {
    const s = rnn.step(x, stateless ? new Float64Array(rnn.hidden) : h);
    h = s.h;
    return sigmoid(s.y[0]);
  });
}

/** Builds the ONNX graph: Concat(x, h_in) -> Gemm -> Tanh = h_out; h_out -> Gemm -> Sigmoid = stall. */
export function exportMotorStall(rnn: ElmanRnn): Uint8Array {
  const g = new GraphBuilder('motor_stall');
  g.input({ name: 'x', shape: [1, MOTOR_FEATURES] });
  g.input({ name: 'h_in', shape: [1, STATE_SIZE] });
  const h = addElmanStep(g, rnn, 'x', 'h_in', 'h_out', 'rnn');
  const logit = addMlp(g, rnn.head, h, 'head', 'logit');
  g.node('Sigmoid', [logit], ['stall']);
  g.output({ name: 'stall', shape: [1, 1] });
  g.output({ name: 'h_out', shape: [1, STATE_SIZE] });
  return g.encode({
    docString: 'keel motor-stall: 0.1 s of motor current and PWM command (keel normalize), plus state h_in -> P(stalled), h_out. Feed h_out back as h_in. See models/motor-stall.md.',
    metadata: { 'keel.model': NAME, 'keel.pipeline': JSON.stringify(MOTOR_PIPELINE), 'keel.state': JSON.stringify([{ input: 'h_in', output: 'h_out', shape: [1, STATE_SIZE], initial: 0 }]) },
  });
}

function meanLoss(rnn: ElmanRnn, set: MotorSet): number {
  let s = 0;
  let n = 0;
  set.x.forEach((xs, r) => {
    runProbabilities(rnn, xs).forEach((p, t) => {
      const y = set.y[r][t];
      s += -Math.log(Math.max(1e-12, y ? p : 1 - p));
      n++;
    });
  });
  return s / n;
}

/**
 * Event-level view: stall episodes detected, latency, false alarms. The alarm is raised when
 * `debounce` consecutive steps reach `threshold` (as a keel rule with `debounce.count` does).
 */
export function episodeMetrics(
  set: MotorSet,
  probs: number[][],
  threshold = 0.5,
  debounce = 1,
): { episodes: number; detected: number; medianLatencyS: number; falseAlarmsPerHour: number } {
  let episodes = 0;
  let detected = 0;
  const latencies: number[] = [];
  let falseAlarms = 0;
  let normalSteps = 0;
  const margin = 10; // steps (1 s) around an episode where an alarm is not counted as false
  const stepsPerS = MOTOR_RATE_HZ / STEP_SAMPLES;
  set.y.forEach((ys, r) => {
    let run = 0;
    const alarm = probs[r].map((p) => {
      run = p >= threshold ? run + 1 : 0;
      return run >= debounce;
    });
    const near = new Uint8Array(ys.length);
    for (let t = 0; t < ys.length; ) {
      if (!ys[t]) {
        t++;
        continue;
      }
      let e = t;
      while (e < ys.length && ys[e]) e++;
      episodes++;
      for (let k = Math.max(0, t - margin); k < Math.min(ys.length, e + margin); k++) near[k] = 1;
      let first = -1;
      for (let k = Math.max(0, t - margin); k < e; k++) {
        if (alarm[k]) {
          first = k;
          break;
        }
      }
      if (first >= 0) {
        detected++;
        latencies.push((first - t) / stepsPerS);
      }
      t = e;
    }
    for (let t = 0; t < ys.length; t++) {
      if (!near[t]) normalSteps++;
      if (alarm[t] && (t === 0 || !alarm[t - 1]) && !near[t]) falseAlarms++;
    }
  });
  latencies.sort((a, b) => a - b);
  const hours = normalSteps / stepsPerS / 3600;
  const median = latencies.length ? latencies[Math.floor(latencies.length / 2)] : NaN;
  return { episodes, detected, medianLatencyS: Math.round(median * 10) / 10, falseAlarmsPerHour: falseAlarms / hours };
}

/** Trains, verifies in ORT, writes the model and card into `outDir`. Returns the held-out metrics. */
export async function train(opts: { outDir?: string; log?: (line: string) => void } = {}): Promise<Record<string, number>> {
  const outDir = opts.outDir ?? MODELS_DIR;
  const log = opts.log ?? ((s: string) => console.log(s));
  const started = Date.now();
  const trainSet = motorSet(SEEDS.train, SIZES.train, RUN_STEPS);
  const valSet = motorSet(SEEDS.validation, SIZES.validation, RUN_STEPS);
  const heldOut = motorSet(SEEDS.heldOut, SIZES.heldOut, RUN_STEPS);
  const xs = trainSet.x.map((run) => run.map((x) => Float64Array.from(x)));

  const rng = new Rng(SEEDS.init);
  const rnn = new ElmanRnn(MOTOR_FEATURES, STATE_SIZE, [1], ['none'], 'rnn').init(rng);
  const params = rnn.params();
  const lr0 = 3e-3;
  const opt = new Adam(params, { lr: lr0, clip: 1 });
  const order = xs.map((_, i) => i);
  let best = { epoch: -1, loss: Infinity, weights: snapshot(params) };
  for (let epoch = 0; epoch < EPOCHS; epoch++) {
    rng.shuffle(order);
    const lr = lr0 * 0.5 * (1 + Math.cos((Math.PI * epoch) / EPOCHS));
    let total = 0;
    for (let b0 = 0; b0 < order.length; b0 += BATCH) {
      const batch = order.slice(b0, b0 + BATCH);
      const states: Float64Array[] = batch.map(() => new Float64Array(STATE_SIZE));
      for (let c = 0; c < RUN_STEPS; c += CHUNK) {
        opt.zeroGrad();
        batch.forEach((r, k) => {
          const ys = trainSet.y[r];
          states[k] = rnn.bptt(xs[r].slice(c, c + CHUNK), states[k], (t, y) => {
            const l = sigmoidBce(y[0], ys[c + t]);
            total += l.loss;
            return [l.d];
          });
        });
        opt.step(1 / (batch.length * CHUNK), lr);
      }
    }
    const valLoss = meanLoss(rnn, valSet);
    if (epoch % 3 === 2) log(`epoch ${epoch + 1}: train loss ${(total / (order.length * RUN_STEPS)).toFixed(4)}, validation loss ${valLoss.toFixed(4)}`);
    if (valLoss < best.loss) best = { epoch, loss: valLoss, weights: snapshot(params) };
  }
  restore(params, best.weights);
  roundToFloat32(params);

  const probs = heldOut.x.map((run) => runProbabilities(rnn, run));
  const resetProbs = heldOut.x.map((run) => runProbabilities(rnn, run, true));
  const flat = (a: number[][]) => a.flat();
  const labels = flat(heldOut.y);
  const p = flat(probs);
  const pred = p.map((v) => (v >= 0.5 ? 1 : 0));
  const acc = accuracy(pred, labels);
  const auc = rocAuc(p, labels);
  const cm = confusion(pred, labels, 2);
  const accReset = accuracy(flat(resetProbs).map((v) => (v >= 0.5 ? 1 : 0)), labels);
  const aucReset = rocAuc(flat(resetProbs), labels);
  const ep = episodeMetrics(heldOut, probs);
  const ep3 = episodeMetrics(heldOut, probs, 0.5, 3);
  const stallRecall = cm[1][1] / (cm[1][0] + cm[1][1]);
  const stallPrecision = cm[1][1] / (cm[0][1] + cm[1][1]);
  log(`held-out (${heldOut.x.length} runs, ${labels.length} steps): accuracy ${pct(acc)}, AUC ${auc.toFixed(4)}, best epoch ${best.epoch + 1}`);
  log(`  state reset every step: accuracy ${pct(accReset)}, AUC ${aucReset.toFixed(4)}`);
  log(`  confusion [true][pred]: ${JSON.stringify(cm)}; episodes ${ep.detected}/${ep.episodes} detected, median latency ${ep.medianLatencyS} s, ${ep.falseAlarmsPerHour.toFixed(1)} false alarms/h`);
  log(`  debounced (3 steps): episodes ${ep3.detected}/${ep3.episodes} detected, median latency ${ep3.medianLatencyS} s, ${ep3.falseAlarmsPerHour.toFixed(1)} false alarms/h`);

  const bytes = exportMotorStall(rnn);
  const worst = await verifyStateful(bytes, rnn, heldOut.x.slice(0, 3));
  log(`ORT agrees with the TypeScript forward pass over 3 held-out runs with state fed back (${3 * RUN_STEPS} steps, max |diff| ${worst.toExponential(2)})`);
  const file = `${NAME}.onnx`;
  writeFileSync(path.join(outDir, file), bytes);
  const sha256 = sha256Bytes(bytes);
  log(`wrote ${path.join(outDir, file)} (${bytes.length} bytes, sha256 ${sha256}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const metrics = {
    accuracy: round4(acc),
    auc: round4(auc),
    stallRecall: round4(stallRecall),
    stallPrecision: round4(stallPrecision),
    accuracyStateReset: round4(accReset),
    aucStateReset: round4(aucReset),
    episodeRecall: round4(ep.detected / ep.episodes),
    medianLatencyS: ep.medianLatencyS,
    falseAlarmsPerHour: Math.round(ep.falseAlarmsPerHour * 10) / 10,
    episodeRecallDebounced3: round4(ep3.detected / ep3.episodes),
    falseAlarmsPerHourDebounced3: Math.round(ep3.falseAlarmsPerHour * 10) / 10,
    threshold: 0.5,
  };
  const facts: CardFacts = {
    name: NAME,
    file,
    sha256,
    task: 'stall detection on a sequence (stateful RNN)',
    windowInput: 'x',
    inputs: [
      { name: 'x', shape: [1, MOTOR_FEATURES], dtype: 'float32', description: '10 samples of current then 10 of command, normalized' },
      { name: 'h_in', shape: [1, STATE_SIZE], dtype: 'float32', description: 'state from the previous step (zeros after a reset)' },
    ],
    outputs: [
      { name: 'stall', shape: [1, 1], dtype: 'float32', description: 'probability that the motor is stalled' },
      { name: 'h_out', shape: [1, STATE_SIZE], dtype: 'float32', description: 'state for the next step' },
    ],
    state: [{ input: 'h_in', output: 'h_out', shape: [1, STATE_SIZE], initial: 0 }],
    sourceRateHz: MOTOR_RATE_HZ,
    pipeline: MOTOR_PIPELINE,
    parameters: countParams(params),
    training: { script: `tools/train-${NAME}.ts`, seed: SEEDS.train, heldOutSeed: SEEDS.heldOut, trainSize: SIZES.train, validationSize: SIZES.validation, heldOutSize: SIZES.heldOut },
    metrics,
  };
  const minutes = (n: number) => Math.round((n * RUN_STEPS) / (MOTOR_RATE_HZ / STEP_SAMPLES) / 60);
  writeCard(outDir, {
    facts,
    title: 'motor-stall: stall detection for a brushed DC motor (stateful)',
    purpose: `Detects that a PWM-driven brushed DC motor (a wheel, a winch, a conveyor, a pump) has
stalled, from its current and the commanded duty alone, without a speed sensor, so that
keel can cut the drive before the windings or the driver overheat. A stall develops over
seconds (a jam builds up, current climbs and stays high while the motor slows to a stop),
while a start from rest or a passing bump draws the same current for a moment: one step
cannot tell them apart, the history can. The model is a recurrent cell: keel feeds its
state output \`h_out\` back into \`h_in\` on the next step (config \`model.state\`).`,
    inputs: `Each step is a window of 10 samples (0.1 s at ${MOTOR_RATE_HZ} Hz, \`hop: 10\`) of two channels,
channels-first: \`current\` (armature current, A, e.g. from an INA219/INA226 or a hall sensor)
and \`command\` (PWM duty, 0..1, as the controller commands it). keel's \`normalize\` with
fixed constants (mean 2 A / 0.6, std 2 A / 0.3) gives \`x\`. \`h_in\` is the previous
step's \`h_out\`, all zeros at start and after a reset. Reset the state when the stream has a
gap (\`stateReset.afterGapMs\`): the state summarizes the last seconds and is meaningless
after a gap.`,
    outputs: `\`stall\` is P(stalled) for the current step; \`h_out\` is the next state (do not fetch it
as an output; keel carries it). The card's metrics use 0.5 as the threshold.`,
    data: `Generated by \`tools/data/motor.ts\` (seeded): ${SIZES.train} training runs, ${SIZES.validation} validation and
${SIZES.heldOut} held-out runs of ${RUN_STEPS} steps (30 s) each, i.e. ${minutes(SIZES.train)} / ${minutes(SIZES.validation)} / ${minutes(SIZES.heldOut)} minutes.

- Motor (new per run): supply 10.8–13.2 V, R 0.8–3 Ω, k 0.015–0.05 V·s/rad, mechanical
  time constant 0.08–0.5 s, viscous loss and Coulomb friction; stall current about 4–16 A.
- Command: starts at 0, then steps or ramps (30 %) between duties 0.35–1 every 2–8 s,
  sometimes stops for 1–3 s and restarts.
- Load: 3–20 % of stall torque, a random wander, bumps of 5–30 % lasting 0.3–1.5 s
  (about one per 10 s); in 60 % of runs one or two jams rising over 0.5–3 s to 1.2–2.5 ×
  stall torque, held 1.5–6 s, released in 70 % of cases.
- Measurement: current averaged over each 10 ms sample, noise 0.5–3 % of stall current,
  10 mA resolution. About 19 % of steps are stalled.
- Label: stalled when the speed has been below 10 % of the no-load speed for the commanded
  duty for at least 0.3 s, with a duty of at least 0.2.`,
    training: `Elman cell: h_t = tanh(W [x_t; h_{t−1}] + b) with ${STATE_SIZE} units, head p_t = sigmoid(w·h_t + c).
Binary cross-entropy on every step; truncated backpropagation through time over chunks of
${CHUNK} steps (5 s), the state carried from chunk to chunk; Adam (lr 3e-3, cosine decay), gradient
norm clipped at 1, ${BATCH} runs per update, ${EPOCHS} epochs; the epoch with the lowest validation loss
kept (epoch ${best.epoch + 1}). Weights rounded to float32 before evaluation and export. About a minute on
one core.`,
    results: `On ${SIZES.heldOut} held-out runs (seed ${SEEDS.heldOut}, ${labels.length} steps), threshold 0.5, state carried:

- per-step accuracy **${pct(acc)}**, ROC AUC **${auc.toFixed(4)}**, stall recall ${pct(stallRecall)}, stall precision ${pct(stallPrecision)}
- stall episodes detected: ${ep.detected} of ${ep.episodes} (${pct(ep.detected / ep.episodes)}); median latency from the label's onset
  ${ep.medianLatencyS} s (an alarm up to 1 s before the onset counts, as negative latency)
- false alarms (alarm onsets more than 1 s away from any stall): ${ep.falseAlarmsPerHour.toFixed(1)} per hour of running
- with the alarm debounced over 3 steps (\`debounce: {count: 3}\`, as in \`examples/motor-stall.yaml\`):
  ${ep3.detected} of ${ep3.episodes} episodes detected, median latency ${ep3.medianLatencyS} s, ${ep3.falseAlarmsPerHour.toFixed(1)} false alarms per hour

${confusionTable(cm, ['running', 'stalled'])}

**The state matters**: the same weights with the state reset to zeros at every step score
accuracy ${pct(accReset)} and AUC ${aucReset.toFixed(4)}.`,
    limitations: `- Trained on a simulated brushed DC motor with a quasi-static electrical model; brushless
  motors with their own controllers, current-limited drivers (which cap the stall current)
  and motors reversing direction are out of distribution.
- Current must be the armature (supply-side) current in amperes; stall currents from about
  4 to 16 A at full duty were simulated. Scale other ranges with a \`scale\` transform only
  after checking the result on recorded stalls.
- The state needs a few seconds of history after a reset; a stall already present at
  start-up is reported after the state has settled (about 1 s).
- False alarms are frequent on the generated data (see the held-out results): tune the
  threshold and the debounce on recordings of your own motor; a longer debounce trades
  latency for fewer false alarms.
- A step is 0.1 s, so the earliest the model can react is a few hundred ms after the
  motor stops; keep a hardware current limit and a thermal cut-out.`,
  });
  log(`wrote ${path.join(outDir, `${NAME}.md`)}`);
  return metrics;
}

/** Runs runs through ORT with its own state fed back, against the TypeScript cell; returns the worst |diff|. */
async function verifyStateful(bytes: Uint8Array, rnn: ElmanRnn, runs: Float32Array[][]): Promise<number> {
  const session = await openSession(bytes);
  let worst = 0;
  try {
    for (const run of runs) {
      let hTs: ArrayLike<number> = new Float64Array(STATE_SIZE);
      let hOrt: ArrayLike<number> = new Float32Array(STATE_SIZE);
      for (let t = 0; t < run.length; t++) {
        const s = rnn.step(run[t], hTs);
        hTs = s.h;
        const out = await runOnce(session, { x: { data: run[t], dims: [1, MOTOR_FEATURES] }, h_in: { data: hOrt, dims: [1, STATE_SIZE] } });
        hOrt = out.h_out;
        const diffs = [Math.abs(out.stall[0] - sigmoid(s.y[0])), ...Array.from(hOrt, (v, i) => Math.abs(v - s.h[i]))];
        for (const d of diffs) {
          if (!(d <= 1e-5)) throw new Error(`motor-stall: ORT and TypeScript disagree at step ${t} (|diff| ${d})`);
          worst = Math.max(worst, d);
        }
      }
    }
  } finally {
    await session.release();
  }
  return worst;
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

if (isMain(import.meta.url)) await train({ outDir: process.env.KEEL_MODELS_DIR });
