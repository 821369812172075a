/**
 * `keel run` end to end, as a real child process: a broken config starts nothing, a good one
 * logs JSON, serves /healthz and /metrics on the bound address and stops after --duration, and
 * SIGTERM / SIGINT shut it down gracefully (safe state first) with exit 0.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { STACK_LINE, holdPort, jsonLines, keel, killAll, portFree, portableCopy, startKeel } from './keel-process.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-cli-run-'));
after(async () => {
  await killAll();
  rmSync(tmp, { recursive: true, force: true });
});

/** A copy of `src` in its own directory under tmp (copies keep their base names). */
function copy(src: string, port: number, name: string, edit?: Parameters<typeof portableCopy>[3]): string {
  const dir = mkdtempSync(path.join(tmp, `${name}-`));
  return portableCopy(src, dir, port, edit);
}

async function get(address: string, route: string): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(`http://${address}${route}`);
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

/** Value of a Prometheus sample line `name{...} value` (summed over label sets). */
function sample(text: string, name: string): number {
  let sum = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`).exec(line);
    if (m) {
      seen = true;
      sum += Number(m[2]);
    }
  }
  assert.ok(seen, `no ${name} sample in /metrics:\n${text}`);
  return sum;
}

/** Messages of the JSON log lines, in order. */
function messages(stdout: string): string[] {
  return jsonLines(stdout).map((l) => String(l.msg));
}

describe('keel run', { concurrency: true }, () => {
  it('refuses a broken config with exit 3 and starts nothing (no log line, no port bound)', async () => {
    // keel would have to bind this port to start; holding it means a started keel would fail
    // with "already in use" instead of the configuration errors.
    const held = await holdPort(0);
    try {
      const schemaBroken = copy('test/fixtures/configs/broken/missing-actuator.yaml', held.port, 'refs');
      const modelBroken = copy('test/fixtures/configs/broken/model-wrong-sha256.yaml', held.port, 'sha');
      const fileBroken = copy('test/fixtures/configs/broken/replay-policy-missing.yaml', held.port, 'files', (c) => {
        c.sources[0].file = path.join(tmp, 'no-such-recording.csv');
      });
      const cases: [string, string][] = [
        [schemaBroken, 'pipelines[0].rules[1].onEnter[0].actuator: no actuator named "brake"'],
        [modelBroken, 'pipelines[0].model.sha256: model '],
        [fileBroken, 'sources[0].file: cannot read'],
        [path.join(tmp, 'missing.yaml'), '(file): cannot read'],
      ];
      const results = await Promise.all(cases.map(([file]) => keel(['run', file, '--duration', '5'])));
      cases.forEach(([file, issue], i) => {
        const r = results[i];
        const all = `${file}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
        assert.equal(r.code, 3, all);
        assert.equal(r.stdout, '', `no log line: nothing was started\n${all}`);
        assert.ok(r.stderr.includes(issue), all);
        assert.match(r.stderr, /refusing to start: fix the configuration/, all);
        assert.doesNotMatch(r.stderr, /already in use/, all);
        assert.doesNotMatch(r.stderr, STACK_LINE, all);
      });
      assert.equal(held.connections, 0);
    } finally {
      await held.close();
    }
  });

  it('runs examples/vibration.yaml for --duration 3: JSON logs, /healthz and /metrics while running, exit 0', async () => {
    const file = copy('examples/vibration.yaml', 0, 'vibration');
    const k = startKeel(['run', file, '--duration', '3']);
    const listening = await k.waitForLog('ops endpoint listening');
    const address = String(listening.address);
    assert.match(address, /^127\.0\.0\.1:\d+$/);
    const running = await k.waitForLog('keel running');
    assert.equal(running.device, 'vibration-demo');
    assert.equal(running.version, '0.1.0');

    const health = await get(address, '/healthz');
    assert.equal(health.status, 200, health.body);
    assert.match(health.type, /^application\/json/);
    const h = JSON.parse(health.body) as { status: string; device: string };
    assert.equal(h.status, 'ok', health.body);
    assert.equal(h.device, 'vibration-demo');

    // 1 kHz samples, a window every 128 ms: inferences show up within a second or so.
    let metrics = await get(address, '/metrics');
    for (let i = 0; i < 20 && !/^keel_inferences_total\{[^}]*\} [1-9]/m.test(metrics.body); i++) {
      await new Promise((r) => setTimeout(r, 100));
      metrics = await get(address, '/metrics');
    }
    assert.equal(metrics.status, 200);
    assert.match(metrics.type, /^text\/plain/);
    assert.ok(sample(metrics.body, 'keel_inferences_total') > 0, metrics.body);
    assert.ok(sample(metrics.body, 'keel_samples_total') > 0, metrics.body);
    assert.match(metrics.body, /^keel_inference_seconds_bucket\{.*le="\+Inf".*\} [1-9]/m);
    assert.equal((await get(address, '/nope')).status, 404);

    const r = await k.exited;
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE);
    const lines = r.stdout.trim().split('\n');
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `not a JSON log line: ${line}`);
    const msgs = messages(r.stdout);
    assert.deepEqual(msgs.slice(-3), ['stopping: driving the safe state first', 'safe state driven for shutdown', 'keel stopped'], msgs.join('\n'));
    assert.equal(jsonLines(r.stdout).at(-1)!.reason, 'duration');
    assert.ok(await portFree(Number(address.split(':')[1])), 'the ops port is released after exit');
  });

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`${sig} stops gracefully: the safe state is driven before the sources stop, exit 0`, async () => {
      const file = copy('examples/motor-stall.yaml', 0, sig);
      const k = startKeel(['run', file]);
      await k.waitForLog('keel running');
      k.signal(sig);
      const r = await k.exited;
      const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
      assert.equal(r.code, 0, all);
      assert.equal(r.signal, null);
      assert.doesNotMatch(r.stdout + r.stderr, STACK_LINE, all);
      const msgs = messages(r.stdout);
      const at = (m: string) => msgs.indexOf(m);
      assert.ok(at('keel running') >= 0, all);
      // Runtime.stop drives the safe state and awaits it before it stops any source; the
      // last line comes after the sources, actuators and models are closed.
      assert.ok(at('keel running') < at('stopping: driving the safe state first'), all);
      assert.ok(at('stopping: driving the safe state first') < at('safe state driven for shutdown'), all);
      assert.ok(at('safe state driven for shutdown') < at('keel stopped'), all);
      assert.equal(msgs.at(-1), 'keel stopped', all);
      for (const l of jsonLines(r.stdout).filter((x) => x.msg === 'stopping: driving the safe state first' || x.msg === 'keel stopped')) assert.equal(l.reason, sig);
    });
  }
});
