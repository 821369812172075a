/**
 * `keel demo` (what `npm start` runs) as a first-time user meets it: the live view, its JSON
 * form, and what it does when the demo's default ops port 127.0.0.1:9464 is taken (it serves on
 * a free port instead and says so).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it, test } from 'node:test';
import { TIME_SCALE, waitFor } from '../helpers.ts';
import { STACK_LINE, holdPort, jsonLines, keel, killAll, portFree, portableCopy, startKeel } from './keel-process.ts';

const DEMO_PORT = 9464;
const PIPELINES = ['path-ahead', 'bearing', 'stall-guard'];
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-demo-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});

/** examples/demo.yaml copied so that its ops endpoint takes any free port. */
function demoOnFreePort(name: string): string {
  return portableCopy('examples/demo.yaml', mkdtempSync(path.join(tmp, `${name}-`)), 0);
}

test(`the demo still runs when ${DEMO_PORT} is taken: it says so and serves on a free port`, async (t) => {
  if (!(await portFree(DEMO_PORT))) {
    t.skip(`127.0.0.1:${DEMO_PORT} is in use on this machine (another keel demo?), so this test cannot take it`);
    return;
  }
  const held = await holdPort(DEMO_PORT);
  try {
    const r = await keel(['demo', '--duration', '3']);
    const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
    assert.equal(r.code, 0, all);
    assert.match(r.stderr, /^keel: port 9464 is taken; serving \/metrics and \/healthz on a free port instead/m, all);
    assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE, all);
    const m = /^keel keel-demo-robot .*http:\/\/127\.0\.0\.1:(\d+)\/metrics$/m.exec(r.stdout);
    assert.ok(m, `the live view names the ops address\n${all}`);
    assert.notEqual(Number(m[1]), DEMO_PORT);
  } finally {
    await held.close();
  }
});

describe('keel demo', { concurrency: true }, () => {
  it('--duration 3 prints the live view (rates, p50/p99 latency, decisions) and exits 0', async (t) => {
    const args = ['demo', '--duration', '3'];
    if (!(await portFree(DEMO_PORT))) {
      t.diagnostic(`127.0.0.1:${DEMO_PORT} is in use: running the demo config on a free port instead (keel demo -c <copy>)`);
      args.push('--config', demoOnFreePort('view'));
    }
    const r = await keel(args);
    const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
    assert.equal(r.code, 0, all);
    assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE, all);
    // Not a terminal here, so the view prints a block per second instead of repainting (on
    // stdout; the demo's logs go to stderr).
    const view = r.stdout;
    assert.match(view, /^keel keel-demo-robot {2}up \d+s {2}status OK/m, all);
    for (const [source, hz] of [['scanner', 10], ['vib', 1000], ['motor', 100]] as const) {
      const m = new RegExp(`^ {2}source +${source} +([\\d.]+) Hz +samples (\\d+)`, 'm').exec(view);
      assert.ok(m, `no rate line for ${source}\n${all}`);
      assert.ok(Number(m[1]) > hz * 0.5 && Number(m[1]) < hz * 1.5, `${source} at ${m[1]} Hz, expected about ${hz}`);
    }
    for (const p of PIPELINES) {
      assert.match(view, new RegExp(`^ {2}pipeline ${p} +[\\d.]+ inf/s +p50 [\\d.]+ ms +p99 [\\d.]+ ms +dropped \\d+ +decisions \\d+`, 'm'), all);
    }
    assert.match(view, /\[stopped\]/, 'a final summary after the shutdown');
    assert.match(view, /-> SAFE STATE driven/, 'the shutdown drives the safe state');
  });

  it('--json prints one JSON snapshot per second on stdout', async () => {
    const r = await keel(['demo', '--json', '--duration', '3', '--config', demoOnFreePort('json')]);
    const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
    assert.equal(r.code, 0, all);
    const lines = r.stdout.trim().split('\n');
    assert.ok(lines.length >= 3, `expected a snapshot a second and a final one\n${all}`);
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `not JSON: ${line}`);
    type Snap = { status: string; uptimeMs: number; sources: { name: string; rateHz: number; samples: number }[]; pipelines: { name: string; inferences: number; p50Ms: number; p99Ms: number; decisions: number }[] };
    const snaps = jsonLines(r.stdout) as unknown as Snap[];
    assert.equal(snaps[0].status, 'ok', lines[0]);
    assert.equal(snaps.at(-1)!.status, 'stopping', 'the last snapshot is taken after the shutdown');
    for (const s of snaps) {
      assert.deepEqual(s.pipelines.map((p) => p.name), PIPELINES);
      assert.deepEqual(s.sources.map((x) => x.name), ['scanner', 'vib', 'motor']);
    }
    const first = snaps[0];
    assert.ok(first.sources[0].rateHz > 5 && first.sources[0].rateHz < 15, `scanner ${first.sources[0].rateHz} Hz`);
    for (const p of snaps.at(-1)!.pipelines) {
      assert.ok(p.inferences > 0, `${p.name} ran no inference`);
      assert.ok(p.p50Ms > 0 && p.p99Ms >= p.p50Ms, `${p.name}: p50 ${p.p50Ms} p99 ${p.p99Ms}`);
      assert.equal(typeof p.decisions, 'number');
    }
  });

  it('stops gracefully, exit 0 and no stack trace, when the reader of --json goes away (keel demo --json | head -1)', async () => {
    const started = Date.now();
    const k = startKeel(['demo', '--json', '--duration', '30', '--config', demoOnFreePort('pipe')]);
    await waitFor(() => k.stdout.includes('\n') || !k.running, 'the first snapshot', 15_000);
    assert.ok(k.running, k.stderr);
    k.child.stdout!.destroy(); // what head does after its first line
    const r = await k.exited;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.signal, null);
    assert.doesNotMatch(r.stderr, STACK_LINE, r.stderr);
    assert.doesNotMatch(r.stderr, /EPIPE/, r.stderr);
    assert.ok(Date.now() - started < 20_000 * TIME_SCALE, 'stopped when the reader went away, not at --duration');
  });
});
