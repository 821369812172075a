/**
 * Writes the example configs of the shipped models (examples/vibration.yaml, obstacle.yaml,
 * motor-stall.yaml): a synthetic source whose signals go from normal to abnormal, the exact
 * pipeline the model was trained for, the model pinned by its current SHA-256, rules on
 * simulated GPIO outputs, and safety settings. Run after retraining (train-all does):
 *
 *   npx tsx tools/write-examples.ts
 */
import { writeFileSync } from 'node:fs';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beamAngle, castRay, type Shape, BEAMS, MAX_RANGE, OBSTACLE_RATE_HZ } from './data/obstacle.ts';
import { configSnippet, readCardFacts, sha256File, type CardFacts } from './model-card.ts';
import { isMain, MODELS_DIR } from './script.ts';

/** The repository's examples/ folder. */
export const EXAMPLES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'examples');

function facts(name: string): CardFacts {
  const f = readCardFacts(path.join(MODELS_DIR, `${name}.md`));
  // Pin what is on disk: the card and the file are written together, and the tests check both.
  return { ...f, sha256: sha256File(path.join(MODELS_DIR, f.file)) };
}

function indent(text: string, spaces: number): string {
  return text
    .split('\n')
    .map((l) => (l ? ' '.repeat(spaces) + l : l))
    .join('\n');
}

/** The pipeline's window/transforms/model block, indented for a pipeline entry. */
function pipelineBlock(f: CardFacts): string {
  return indent(configSnippet(f, `../models/${f.file}`), 4);
}

/** examples/vibration.yaml */
export function vibrationExample(): string {
  const f = facts('vibration-anomaly');
  const healthy = `- {kind: constant, value: 1}
                - {kind: sine, freqHz: 29.5, amplitude: 0.12}
                - {kind: sine, freqHz: 59, amplitude: 0.012, phase: 0.7}
                - {kind: sine, freqHz: 88.5, amplitude: 0.005, phase: 2.1}
                - {kind: noise, amplitude: 0.02}`;
  return `# keel example: vibration anomaly detection on a motor's bearing housing.
# A simulated accelerometer (one axis, g, 1 kHz) shows 10 s of a healthy machine (29.5 Hz
# shaft, i.e. 1770 rpm, weak harmonics, gravity offset), then 10 s with an outer-race bearing
# defect (tones at 3.58x shaft speed and its harmonics), and loops. The model
# (models/vibration-anomaly.md) scores every 128 ms; a sustained high score lights the alarm
# lamp, a very high one for longer stops the machine.
#   npx tsx runtime/cli.ts run examples/vibration.yaml
device:
  name: vibration-demo
gpio:
  backend: sim
sources:
  - name: vib
    type: synthetic
    rateHz: 1000
    seed: 7
    channels:
      accel:
        - kind: sequence
          segments:
            - durationMs: 10000 # healthy
              signals:
                ${healthy}
            - durationMs: 10000 # bearing defect
              signals:
                ${healthy}
                - {kind: sine, freqHz: 105.6, amplitude: 0.1, phase: 0.3}
                - {kind: sine, freqHz: 211.2, amplitude: 0.06, phase: 1.3}
                - {kind: sine, freqHz: 316.8, amplitude: 0.04, phase: 2.9}
actuators:
  - name: alarm_lamp
    type: gpio
    line: {chip: sim, offset: 17}
    safe: 1 # lit whenever keel is in its safe state
  - name: motor_enable
    type: gpio
    line: {chip: sim, offset: 27}
    initial: 1
    safe: 0 # the machine stops on any fault
pipelines:
  - name: bearing
    source: vib
${pipelineBlock(f)}
    rules:
      - name: anomaly
        when: {output: score, above: 0.8, hysteresis: 0.3}
        debounce: {count: 4} # 4 windows = 0.5 s
        onEnter: [{actuator: alarm_lamp, value: 1}]
        onExit: [{actuator: alarm_lamp, value: 0}]
      - name: stop-machine
        when: {output: score, above: 0.95, hysteresis: 0.45}
        debounce: {ms: 5000}
        onEnter: [{actuator: motor_enable, value: 0}]
        onExit: [{actuator: motor_enable, value: 1}]
    watchdog:
      silenceMs: 1000
      overrunMs: 100
safety:
  safeState: [{actuator: motor_enable, value: 0}, {actuator: alarm_lamp, value: 1}]
  maxInferenceFailures: 3
  recovery: manual
`;
}

/** Fixed scenes of the obstacle example: a corridor, then a box ahead, then a bin in the way. */
export const OBSTACLE_SCENES: { name: string; label: string; shapes: Shape[] }[] = (() => {
  const walls: Shape[] = [
    { kind: 'segment', ax: -1, ay: -0.9, bx: 10, by: -0.9 },
    { kind: 'segment', ax: -1, ay: 0.85, bx: 10, by: 0.85 },
    { kind: 'segment', ax: 3.6, ay: -2, bx: 3.6, by: 2 },
  ];
  const box = (cx: number, cy: number, h: number): Shape[] => {
    const p = [
      [cx - h, cy - h],
      [cx + h, cy - h],
      [cx + h, cy + h],
      [cx - h, cy + h],
    ];
    return p.map(([ax, ay], k) => ({ kind: 'segment', ax, ay, bx: p[(k + 1) % 4][0], by: p[(k + 1) % 4][1] }));
  };
  return [
    { name: 'corridor, end wall at 3.6 m', label: 'clear', shapes: walls },
    { name: 'box 0.4 m wide, front face at 0.85 m', label: 'near', shapes: [...walls, ...box(1.05, 0.05, 0.2)] },
    { name: 'bin (r 0.2 m), front at 0.3 m', label: 'blocked', shapes: [...walls, { kind: 'circle', cx: 0.5, cy: -0.05, r: 0.2 }] },
  ];
})();

/** Noise-free ranges of a scene as a ToF sensor with a 2-degree half-cone reads them, m. */
export function sceneRanges(shapes: Shape[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < BEAMS; i++) {
    let d = Infinity;
    for (let k = -2; k <= 2; k++) d = Math.min(d, castRay(shapes, beamAngle(i) + ((k / 2) * 2 * Math.PI) / 180).d);
    out.push(Math.round(Math.min(MAX_RANGE, d) * 1000) / 1000);
  }
  return out;
}

/** examples/obstacle.yaml */
export function obstacleExample(): string {
  const f = facts('obstacle');
  const ranges = OBSTACLE_SCENES.map((s) => sceneRanges(s.shapes));
  const channels = f.pipeline.window.channels
    .map((ch, i) => {
      const segs = ranges.map((r) => `{durationMs: 5000, signals: [{kind: constant, value: ${r[i]}}, {kind: noise, amplitude: 0.01}]}`).join(', ');
      return `      ${ch}: [{kind: sequence, segments: [${segs}]}]`;
    })
    .join('\n');
  return `# keel example: stop a small robot before it hits something.
# A forward-facing scanning range sensor reports one scan of 32 ranges (m, -60..+60 deg,
# r00 on the right) 10 times a second; here it is simulated: 5 s in a corridor (${OBSTACLE_SCENES[0].label}),
# 5 s with a box ahead (${OBSTACLE_SCENES[1].label}), 5 s with a bin in the way (${OBSTACLE_SCENES[2].label}), looping. The ranges
# were ray-cast from those scenes by tools/write-examples.ts. The model
# (models/obstacle.md) classifies every scan; the robot slows on "near" and its drive is
# disabled on "blocked".
#   npx tsx runtime/cli.ts run examples/obstacle.yaml
device:
  name: obstacle-demo
gpio:
  backend: sim
sources:
  - name: scanner
    type: synthetic
    rateHz: ${OBSTACLE_RATE_HZ}
    seed: 3
    channels:
${channels}
actuators:
  - name: drive_enable
    type: gpio
    line: {chip: sim, offset: 22}
    initial: 1
    safe: 0 # no driving in the safe state
  - name: slow_mode
    type: gpio
    line: {chip: sim, offset: 23}
    safe: 1
pipelines:
  - name: path-ahead
    source: scanner
${pipelineBlock(f)}
    rules:
      - name: slow
        when: {output: probs, labels: [clear, near, blocked], is: [near, blocked], minScore: 0.5}
        debounce: {count: 2}
        onEnter: [{actuator: slow_mode, value: 1}]
        onExit: [{actuator: slow_mode, value: 0}]
      - name: stop
        when: {output: probs, index: 2, above: 0.5, hysteresis: 0.3} # P(blocked)
        debounce: {count: 2}
        onEnter: [{actuator: drive_enable, value: 0}]
        onExit: [{actuator: drive_enable, value: 1}]
    watchdog:
      silenceMs: 500 # five missed scans
      overrunMs: 50
safety:
  safeState: [{actuator: drive_enable, value: 0}]
  silenceMs: 500
  maxInferenceFailures: 2
  recovery: auto
  healthyForMs: 2000
`;
}

/** examples/motor-stall.yaml */
export function motorStallExample(): string {
  const f = facts('motor-stall');
  return `# keel example: cut a DC motor's drive when it stalls.
# Motor current (A) and the commanded PWM duty are sampled at 100 Hz; here they are
# simulated for a 12 V motor (R 1.75 ohm, so 4.8 A stall current at duty 0.7): a start from
# rest (inrush that decays), 6 s running at 1 A, a jam that builds up over 1.5 s, 4 s
# stalled, the drive switched off for 2 s, and again. The model (models/motor-stall.md) is
# recurrent: keel feeds h_out back into h_in every 0.1 s, so it tells the brief inrush of a
# start from a stall, which draw the same current.
#   npx tsx runtime/cli.ts run examples/motor-stall.yaml
device:
  name: motor-stall-demo
gpio:
  backend: sim
sources:
  - name: motor
    type: synthetic
    rateHz: 100
    seed: 5
    channels:
      current:
        - kind: sequence
          segments:
            - durationMs: 400 # start from rest: inrush decaying as the motor speeds up
              signals: [{kind: ramp, from: 4.8, to: 1.0, overMs: 400}, {kind: noise, amplitude: 0.05}]
            - durationMs: 6000 # running
              signals: [{kind: constant, value: 1.0}, {kind: noise, amplitude: 0.05}]
            - durationMs: 1500 # a jam builds up
              signals: [{kind: ramp, from: 1.0, to: 4.8, overMs: 1500}, {kind: noise, amplitude: 0.05}]
            - durationMs: 4000 # stalled
              signals: [{kind: constant, value: 4.8}, {kind: noise, amplitude: 0.05}]
            - durationMs: 2000 # drive off
              signals: [{kind: constant, value: 0}, {kind: noise, amplitude: 0.02}]
      command:
        - kind: sequence
          segments:
            - {durationMs: 11900, signals: [{kind: constant, value: 0.7}]}
            - {durationMs: 2000, signals: [{kind: constant, value: 0}]}
actuators:
  - name: motor_enable
    type: gpio
    line: {chip: sim, offset: 12}
    initial: 1
    safe: 0
  - name: stall_lamp
    type: gpio
    line: {chip: sim, offset: 13}
    safe: 1
pipelines:
  - name: stall-guard
    source: motor
${pipelineBlock(f)}
    rules:
      - name: stall
        when: {output: stall, above: 0.7, hysteresis: 0.4}
        debounce: {count: 3} # 0.3 s
        onEnter: [{actuator: motor_enable, value: 0}, {actuator: stall_lamp, value: 1}]
        # The demo re-enables the drive when the stall clears; a real machine would wait
        # for an operator (safety.recovery: manual and no onExit on motor_enable).
        onExit: [{actuator: stall_lamp, value: 0}, {actuator: motor_enable, value: 1}]
        cooldownMs: 1000
    watchdog:
      silenceMs: 300
      overrunMs: 50
safety:
  safeState: [{actuator: motor_enable, value: 0}]
  maxInferenceFailures: 2
  recovery: auto
  healthyForMs: 3000
`;
}

/**
 * The demo `npm start` runs: one robot carrying all three models. A mobile manipulator whose
 * drive base watches the path ahead (obstacle), whose tool spindle is watched for bearing
 * faults (vibration) and whose lift motor is guarded against stalls (motor-stall). Composed
 * from the three examples, with each example's motor renamed to the part it drives.
 */
export function demoExample(): string {
  const parts: { text: string; rename: Record<string, string> }[] = [
    { text: obstacleExample(), rename: {} },
    { text: vibrationExample(), rename: { motor_enable: 'spindle_enable' } },
    { text: motorStallExample(), rename: { motor_enable: 'lift_enable' } },
  ];
  const sources: unknown[] = [];
  const actuators: unknown[] = [];
  const pipelines: unknown[] = [];
  for (const { text, rename } of parts) {
    const doc = parseYaml(text.replace(/\.\.\/models\//g, '../models/')) as { sources: unknown[]; actuators: { name: string }[]; pipelines: unknown[] };
    const renamed = (v: unknown): unknown => JSON.parse(JSON.stringify(v), (k, x) => (k === 'actuator' || k === 'name') && typeof x === 'string' && rename[x] ? rename[x] : x);
    sources.push(...doc.sources);
    actuators.push(...(renamed(doc.actuators) as unknown[]));
    pipelines.push(...(renamed(doc.pipelines) as unknown[]));
  }
  const config = {
    device: { name: 'keel-demo-robot' },
    gpio: { backend: 'sim' },
    sources,
    actuators,
    pipelines,
    safety: {
      // Any fault: the base stops, the spindle and the lift stop, the alarm lamp lights.
      safeState: [
        { actuator: 'drive_enable', value: 0 },
        { actuator: 'spindle_enable', value: 0 },
        { actuator: 'lift_enable', value: 0 },
        { actuator: 'alarm_lamp', value: 1 },
      ],
      silenceMs: 1000,
      recovery: 'auto',
      healthyForMs: 3000,
    },
    http: { enabled: true, host: '127.0.0.1', port: 9464 },
    log: { level: 'info' },
  };
  const header = [
    '# The keel demo (npm start): one robot, three shipped models, all offline on simulated',
    '# sensors and GPIO. A mobile manipulator: its drive base watches the path ahead (obstacle',
    '# model on a 32-beam range scan), its tool spindle is watched for bearing faults (vibration',
    '# model on 1 kHz accelerometer FFTs), and its lift motor is guarded against stalls (stateful',
    '# motor-stall RNN on current and command). Generated by tools/write-examples.ts from the',
    '# three single-model examples; edit those generators, not this file.',
    '',
  ].join('\n');
  return header + stringifyYaml(config, { lineWidth: 0, flowCollectionPadding: false });
}

/** Writes all examples into `dir` (default: examples/). */
export function writeExamples(dir = EXAMPLES_DIR, log: (s: string) => void = console.log): void {
  const all: [string, () => string][] = [
    ['vibration.yaml', vibrationExample],
    ['obstacle.yaml', obstacleExample],
    ['motor-stall.yaml', motorStallExample],
    ['demo.yaml', demoExample],
  ];
  for (const [file, make] of all) {
    writeFileSync(path.join(dir, file), make());
    log(`wrote ${path.join(dir, file)}`);
  }
}

if (isMain(import.meta.url)) writeExamples();
