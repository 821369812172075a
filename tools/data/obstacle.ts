/**
 * Simulated range scans for the `obstacle` model: a robot with a forward-facing scanning
 * range sensor (a ToF or ultrasonic sensor swept by a servo, or a multi-zone ToF row) that
 * reports one scan of 32 ranges, in metres, over -60..+60 degrees.
 *
 * Scenes are 2-D: rooms and corridors seen at a random heading (walls as segments), plus
 * posts, table and chair legs, boxes and pairs of legs (circles and rotated squares). The
 * reading of a beam is ray-cast: the first echo among rays spread across the beam's cone
 * (narrow for ToF, wide for ultrasound), no echo from walls hit at a grazing angle by an
 * ultrasonic beam (specular reflection), range noise growing with distance, dropouts that
 * read as the maximum range, and rare spurious short echoes.
 *
 * The label comes from the geometry, not from the readings: what lies in the robot's path,
 * a strip 2 x 0.25 m wide straight ahead. `blocked`: something in the path closer than
 * 0.5 m; `near`: closer than 1.2 m; `clear`: nothing in the path within 1.2 m. Thin posts
 * between beams and objects at the edge of the field of view make some scenes ambiguous.
 */
import { Rng } from '../nn.ts';
import { windowFeatures, type PipelineSpec } from '../features.ts';

/** Beams per scan. */
export const BEAMS = 32;
/** Maximum range, m: a beam with no echo reads this. */
export const MAX_RANGE = 4;
/** Half of the field of view, degrees. */
export const HALF_FOV_DEG = 60;
/** Half-width of the robot's path, m (0.2 m half-width of the robot plus 5 cm margin). */
export const PATH_HALF_WIDTH = 0.25;
/** Distance limits of the classes, m. */
export const BLOCKED_WITHIN = 0.5;
/** Anything in the path closer than this (and not blocked) is `near`, m. */
export const NEAR_WITHIN = 1.2;
/** Class labels, by output index. */
export const OBSTACLE_LABELS = ['clear', 'near', 'blocked'] as const;
/** Scans per second of the simulated sensor (the source's rate; one sample = one scan). */
export const OBSTACLE_RATE_HZ = 10;

/** Channel names of the scan, r00 at -60 degrees (right) .. r31 at +60 degrees (left). */
export const SCAN_CHANNELS: string[] = Array.from({ length: BEAMS }, (_, i) => `r${String(i).padStart(2, '0')}`);

/** keel pipeline: one sample of 32 channels (one scan), scaled from 0..4 m to -1..1. */
export const OBSTACLE_PIPELINE: PipelineSpec = {
  window: { size: 1, hop: 1, channels: SCAN_CHANNELS, layout: 'channels-first' },
  transforms: [{ type: 'scale', factor: 0.5, offset: -1 }],
};

/** Angle of beam i, radians (counter-clockwise from straight ahead). */
export function beamAngle(i: number): number {
  return ((-HALF_FOV_DEG + (2 * HALF_FOV_DEG * i) / (BEAMS - 1)) * Math.PI) / 180;
}

/** A wall or a box face. */
export interface Segment {
  kind: 'segment';
  ax: number;
  ay: number;
  bx: number;
  by: number;
}
/** A post, a leg, a round bin. */
export interface Circle {
  kind: 'circle';
  cx: number;
  cy: number;
  r: number;
}
/** A 2-D scene around the sensor at the origin, looking along +x. */
export type Shape = Segment | Circle;

/** How the sensor sees. */
export interface SensorModel {
  /** half-angle of the beam cone, rad */
  halfCone: number;
  /** ultrasonic: walls hit more obliquely than this (rad from the normal) give no echo */
  specularLimit: number;
  /** range noise: std = base + rel * d, m */
  noiseBase: number;
  noiseRel: number;
  /** probability that a beam reads MAX_RANGE (lost echo) */
  dropout: number;
  /** probability that a beam reads a random short range (crosstalk) */
  spurious: number;
}

/** Distance along the ray (cos a, sin a) to the first shape it hits, and the hit's incidence angle. */
export function castRay(shapes: readonly Shape[], angle: number): { d: number; incidence: number; isSegment: boolean } {
  const dx = Math.cos(angle);
  const dy = Math.sin(angle);
  let best = { d: Infinity, incidence: 0, isSegment: false };
  for (const s of shapes) {
    if (s.kind === 'segment') {
      const ex = s.bx - s.ax;
      const ey = s.by - s.ay;
      const den = dx * ey - dy * ex;
      if (Math.abs(den) < 1e-12) continue;
      // Solve t*d = A + u*e for t (along the ray) and u (along the segment).
      const t = (s.ax * ey - s.ay * ex) / den;
      const u = (s.ax * dy - s.ay * dx) / den;
      if (t > 1e-6 && u >= 0 && u <= 1 && t < best.d) {
        const len = Math.hypot(ex, ey);
        // Angle between the ray and the wall's normal.
        const cosInc = Math.abs(dx * -ey + dy * ex) / len;
        best = { d: t, incidence: Math.acos(Math.min(1, cosInc)), isSegment: true };
      }
    } else {
      const b = dx * s.cx + dy * s.cy;
      const c = s.cx * s.cx + s.cy * s.cy - s.r * s.r;
      const disc = b * b - c;
      if (disc < 0) continue;
      const t = b - Math.sqrt(disc);
      if (t > 1e-6 && t < best.d) best = { d: t, incidence: 0, isSegment: false };
    }
  }
  return best;
}

/** One scan of the scene (m), with the sensor's cone, echo losses and noise. */
export function scan(shapes: readonly Shape[], sensor: SensorModel, rng: Rng): Float64Array {
  const out = new Float64Array(BEAMS);
  const rays = 7;
  for (let i = 0; i < BEAMS; i++) {
    const a = beamAngle(i);
    let d = Infinity;
    for (let k = 0; k < rays; k++) {
      const hit = castRay(shapes, a + sensor.halfCone * ((2 * k) / (rays - 1) - 1));
      if (hit.isSegment && hit.incidence > sensor.specularLimit) continue;
      d = Math.min(d, hit.d);
    }
    let r = d > MAX_RANGE ? MAX_RANGE : d + rng.normal(0, sensor.noiseBase + sensor.noiseRel * d);
    if (rng.chance(sensor.dropout)) r = MAX_RANGE;
    else if (rng.chance(sensor.spurious)) r = rng.uniform(0.05, MAX_RANGE);
    out[i] = Math.min(MAX_RANGE, Math.max(0.02, Math.round(r * 1000) / 1000));
  }
  return out;
}

/** Nearest distance ahead (m, along x) of anything inside the robot's path |y| <= PATH_HALF_WIDTH, x >= 0. */
export function pathClearance(shapes: readonly Shape[]): number {
  const w = PATH_HALF_WIDTH;
  let best = Infinity;
  for (const s of shapes) {
    if (s.kind === 'segment') {
      // Parameter interval of the segment inside the strip and in front (x >= 0).
      let lo = 0;
      let hi = 1;
      const clip = (p0: number, dp: number, min: number, max: number) => {
        if (Math.abs(dp) < 1e-12) {
          if (p0 < min || p0 > max) hi = -1;
          return;
        }
        let t0 = (min - p0) / dp;
        let t1 = (max - p0) / dp;
        if (t0 > t1) [t0, t1] = [t1, t0];
        lo = Math.max(lo, t0);
        hi = Math.min(hi, t1);
      };
      clip(s.ay, s.by - s.ay, -w, w);
      clip(s.ax, s.bx - s.ax, 0, Infinity);
      if (lo <= hi) best = Math.min(best, s.ax + lo * (s.bx - s.ax), s.ax + hi * (s.bx - s.ax));
    } else {
      const dyEdge = Math.abs(s.cy) <= w ? 0 : Math.abs(s.cy) - w;
      if (dyEdge > s.r) continue;
      const x = s.cx - Math.sqrt(s.r * s.r - dyEdge * dyEdge);
      if (s.cx + s.r < 0) continue;
      best = Math.min(best, Math.max(0, x));
    }
  }
  return best;
}

/** Class index of a scene: 0 clear, 1 near, 2 blocked. */
export function sceneLabel(shapes: readonly Shape[]): number {
  const d = pathClearance(shapes);
  return d < BLOCKED_WITHIN ? 2 : d < NEAR_WITHIN ? 1 : 0;
}

function rotate(s: Shape, yaw: number): Shape {
  const c = Math.cos(yaw);
  const n = Math.sin(yaw);
  if (s.kind === 'circle') return { ...s, cx: c * s.cx - n * s.cy, cy: n * s.cx + c * s.cy };
  return { kind: 'segment', ax: c * s.ax - n * s.ay, ay: n * s.ax + c * s.ay, bx: c * s.bx - n * s.by, by: n * s.bx + c * s.by };
}

function box(cx: number, cy: number, half: number, yaw: number): Segment[] {
  const pts = [
    [-half, -half],
    [half, -half],
    [half, half],
    [-half, half],
  ].map(([x, y]) => [cx + Math.cos(yaw) * x - Math.sin(yaw) * y, cy + Math.sin(yaw) * x + Math.cos(yaw) * y]);
  return pts.map(([ax, ay], k) => ({ kind: 'segment', ax, ay, bx: pts[(k + 1) % 4][0], by: pts[(k + 1) % 4][1] }));
}

/** A random scene: walls (room, corridor or open space) and 0–4 objects. */
export function randomScene(rng: Rng): Shape[] {
  const shapes: Shape[] = [];
  const layout = rng.pick(['room', 'room', 'corridor', 'open'] as const);
  if (layout !== 'open') {
    const yaw = rng.uniform(-1, 1) * (layout === 'corridor' ? 0.35 : 0.8);
    const right = rng.uniform(0.3, layout === 'corridor' ? 1.2 : 3);
    const left = rng.uniform(0.3, layout === 'corridor' ? 1.2 : 3);
    const walls: Segment[] = [
      { kind: 'segment', ax: -2, ay: -right, bx: 12, by: -right },
      { kind: 'segment', ax: -2, ay: left, bx: 12, by: left },
    ];
    if (layout === 'room' || rng.chance(0.4)) {
      const front = rng.logUniform(0.25, 7);
      walls.push({ kind: 'segment', ax: front, ay: -right - 1, bx: front, by: left + 1 });
    }
    for (const w of walls) shapes.push(rotate(w, yaw));
  } else if (rng.chance(0.5)) {
    const d = rng.uniform(1, 8);
    shapes.push(rotate({ kind: 'segment', ax: d, ay: -10, bx: d, by: 10 }, rng.uniform(-0.8, 0.8)));
  }
  const objects = rng.int(5);
  for (let k = 0; k < objects; k++) {
    // Half the objects are placed around the path, where the classes are decided.
    const x = rng.chance(0.5) ? rng.uniform(0.15, 2.2) : rng.uniform(0.2, 4.5);
    const y = rng.chance(0.5) ? rng.uniform(-0.6, 0.6) : rng.uniform(-2.5, 2.5);
    const kind = rng.pick(['post', 'leg', 'bin', 'box', 'legs'] as const);
    if (kind === 'post') shapes.push({ kind: 'circle', cx: x, cy: y, r: rng.uniform(0.03, 0.1) });
    else if (kind === 'leg') shapes.push({ kind: 'circle', cx: x, cy: y, r: rng.uniform(0.012, 0.03) });
    else if (kind === 'bin') shapes.push({ kind: 'circle', cx: x, cy: y, r: rng.uniform(0.1, 0.3) });
    else if (kind === 'box') shapes.push(...box(x, y, rng.uniform(0.1, 0.35), rng.uniform(0, Math.PI / 2)));
    else {
      const gap = rng.uniform(0.1, 0.3);
      shapes.push({ kind: 'circle', cx: x, cy: y - gap / 2, r: 0.06 }, { kind: 'circle', cx: x + rng.uniform(-0.1, 0.1), cy: y + gap / 2, r: 0.06 });
    }
  }
  // Nothing may overlap the robot itself (x < 0.1 m in its footprint).
  return shapes.filter((s) => s.kind !== 'circle' || Math.hypot(s.cx, s.cy) - s.r > 0.1);
}

/** A random sensor: ToF (narrow cone) or ultrasonic (wide cone, specular walls). */
export function randomSensor(rng: Rng): SensorModel {
  const ultrasonic = rng.chance(0.5);
  const deg = Math.PI / 180;
  return {
    halfCone: ultrasonic ? rng.uniform(7, 15) * deg : rng.uniform(1, 3) * deg,
    specularLimit: ultrasonic ? rng.uniform(40, 65) * deg : Math.PI,
    noiseBase: rng.uniform(0.002, 0.01),
    noiseRel: rng.uniform(0.003, 0.025),
    dropout: rng.uniform(0, 0.06),
    spurious: rng.uniform(0, 0.015),
  };
}

/** A labelled set: features (as keel computes them), class indices, and the raw scans. */
export interface ObstacleSet {
  x: Float32Array[];
  y: number[];
  scans: Float64Array[];
}

/** `n` scans with the three classes in equal shares (scenes drawn until each quota is met), from `seed`. */
export function obstacleSet(seed: number, n: number): ObstacleSet {
  const rng = new Rng(seed);
  const quota = [0, 1, 2].map((c) => Math.floor(n / 3) + (c < n % 3 ? 1 : 0));
  const set: ObstacleSet = { x: [], y: [], scans: [] };
  while (set.y.length < n) {
    const shapes = randomScene(rng);
    const label = sceneLabel(shapes);
    const sensor = randomSensor(rng);
    if (quota[label] === 0) continue;
    quota[label]--;
    const s = scan(shapes, sensor, rng);
    set.scans.push(s);
    set.x.push(scanFeatures(s));
    set.y.push(label);
  }
  return set;
}

/** Features of one scan, through keel's transforms. */
export function scanFeatures(ranges: ArrayLike<number>): Float32Array {
  return windowFeatures(Array.from(ranges, (r) => [r]), OBSTACLE_PIPELINE);
}
