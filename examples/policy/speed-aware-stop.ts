/**
 * Example keel policy: decide from the obstacle classes of the last few scans together with
 * the speed the drive is commanded to, something declarative rules cannot express (a rule
 * tests one output or one sensor, and its debounce counts consecutive windows, it does not
 * average probabilities).
 *
 * The obstacle model (models/obstacle.md) says `near` for an object within 1.2 m of the
 * robot's path and `blocked` within 0.5 m. Whether `near` is dangerous depends on speed: a
 * slow robot can simply slow down further, a fast one would not stop before the 0.5 m zone
 * and must stop now. So:
 *   - P(blocked), averaged over the last VOTE_WINDOWS scans, above 0.5: stop.
 *   - P(near) + P(blocked) above 0.5: slow mode; and stop too if the stopping distance at
 *     the commanded speed is longer than the 0.7 m between the near and blocked zones.
 *   - otherwise: drive, no slow mode.
 *
 * Wired in examples/policy/obstacle-policy.yaml. keel runs it in a worker thread with a time
 * budget (policy.timeoutMs), and the runtime still drives the safe state on any fault.
 */
import type { PolicyInput, PolicyResult } from '../../runtime/decisions/policy-types.ts';

/** Scans averaged: 3 scans = 0.3 s at the scanner's 10 Hz. */
const VOTE_WINDOWS = 3;
/** Time from the command to the brakes biting, s. */
const REACTION_S = 0.2;
/** Braking deceleration of the base, m/s^2. */
const DECEL_M_S2 = 1.0;
/** Distance between the `near` (1.2 m) and `blocked` (0.5 m) zones, m. */
const NEAR_MARGIN_M = 1.2 - 0.5;
/** Speed assumed while the drive's speed is unknown (no sample yet), m/s: the worst case. */
const MAX_SPEED_M_S = 1.5;
/** The sensor carrying the commanded speed, "source.channel". */
const SPEED_SENSOR = 'drive.speed';

// Module state lives as long as the policy's worker: a restarted worker starts a new vote.
const recent: [number, number, number][] = [];

/** Stopping distance at speed `v` (m/s), m: reaction distance plus braking distance. */
function stoppingDistance(v: number): number {
  return v * REACTION_S + (v * v) / (2 * DECEL_M_S2);
}

/** The decision for one scan. */
export default function decide(input: PolicyInput): PolicyResult {
  const probs = input.outputs.probs;
  if (!probs || probs.length < 3) throw new Error(`expected output "probs" with 3 class probabilities, got ${JSON.stringify(probs)}`);
  recent.push([probs[0], probs[1], probs[2]]);
  if (recent.length > VOTE_WINDOWS) recent.shift();
  const mean = (k: number) => recent.reduce((sum, p) => sum + p[k], 0) / recent.length;
  const pBlocked = mean(2);
  const pObstacle = mean(1) + mean(2);

  const commanded = input.sensors[SPEED_SENSOR];
  const speed = Number.isFinite(commanded) ? Math.max(0, commanded) : MAX_SPEED_M_S;
  const stopping = stoppingDistance(speed);

  let drive = 1;
  let slow = 0;
  let why = 'clear';
  if (pBlocked > 0.5) {
    drive = 0;
    slow = 1;
    why = 'blocked';
  } else if (pObstacle > 0.5) {
    slow = 1;
    why = 'near';
    if (stopping > NEAR_MARGIN_M) {
      drive = 0;
      why = 'near at speed';
    }
  }
  // Both outputs on every call, not only on a change: the safe state may have moved the
  // lines since the last call, and driving a line to the level it has costs nothing.
  return {
    actions: [
      { actuator: 'drive_enable', value: drive },
      { actuator: 'slow_mode', value: slow },
    ],
    note: `${why}: P(near or blocked) ${pObstacle.toFixed(2)} over ${recent.length} scans, speed ${speed.toFixed(2)} m/s stops in ${stopping.toFixed(2)} m`,
  };
}
