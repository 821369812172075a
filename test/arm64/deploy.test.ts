/**
 * The deployment files, checked without Docker or systemd (milliseconds, x64; the arm64 smoke
 * test, tools/arm64/smoke.sh, runs the built install itself under emulation):
 * - deploy/docker-entrypoint.sh: each setup mistake gets its clear message and exit 3 (run as
 *   root, no config, a state volume that is read-only, not writable, or full), and good setups
 *   reach keel with the right arguments (a stub `node` records them);
 * - Dockerfile.arm64 and .dockerignore: every path the image copies exists, and no source file
 *   under them is excluded by .dockerignore (a pattern like `**\/ledger*` once took
 *   runtime/ledger/ out of the image);
 * - deploy/systemd/keel.service passes `systemd-analyze verify`; deploy/compose.yaml is sound.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { hasTool } from '../helpers.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ENTRY = path.join(ROOT, 'deploy/docker-entrypoint.sh');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-deploy-'));
chmodSync(tmp, 0o755);
after(() => {
  spawnSync('umount', ['-l', path.join(tmp, 'full')], { stdio: 'ignore' });
  rmSync(tmp, { recursive: true, force: true });
});
const isRoot = process.getuid?.() === 0;

// A stub `node` that prints the arguments it got, one per line, instead of starting keel.
const bin = path.join(tmp, 'bin');
mkdirSync(bin);
writeFileSync(path.join(bin, 'node'), '#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n', { mode: 0o755 });
const config = path.join(tmp, 'keel.yaml');
writeFileSync(config, 'device: { name: x }\n', { mode: 0o644 });

function entry(args: string[], env: Record<string, string>, wrap: string[] = []): { code: number | null; out: string; err: string; args: string[] } {
  const r = spawnSync(wrap[0] ?? 'sh', [...wrap.slice(1), ...(wrap.length ? ['sh'] : []), ENTRY, ...args], {
    env: { PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`, KEEL_BIN: '/app/bin/keel.js', KEEL_CONFIG: config, ...env },
    encoding: 'utf8',
    timeout: 10_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr, args: r.stdout.split('\n').filter((l) => l.startsWith('arg:')).map((l) => l.slice(4)) };
}

function stateDir(name: string, mode = 0o700): string {
  const d = path.join(tmp, name);
  mkdirSync(d, { mode });
  chmodSync(d, mode);
  return d;
}

test('entry point: run becomes keel run <KEEL_CONFIG> with the log level from the environment', { skip: !isRoot && 'checks run as root' }, () => {
  const r = entry(['run', '--live'], { KEEL_STATE_DIR: stateDir('ok'), KEEL_ALLOW_ROOT: '1', KEEL_LOG_LEVEL: 'debug' });
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(r.args, ['/app/bin/keel.js', 'run', config, '--log-level', 'debug', '--live']);
  // No arguments at all is the image's CMD: run.
  assert.deepEqual(entry([], { KEEL_STATE_DIR: stateDir('ok2'), KEEL_ALLOW_ROOT: '1' }).args, ['/app/bin/keel.js', 'run', config]);
});

test('entry point: other commands go to keel as they are, with no state checks', () => {
  const r = entry(['keygen', '--out', '/var/lib/keel/device.key'], { KEEL_STATE_DIR: '/nonexistent' });
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(r.args, ['/app/bin/keel.js', 'keygen', '--out', '/var/lib/keel/device.key']);
});

test('entry point: root is refused with what to do instead, unless KEEL_ALLOW_ROOT=1', { skip: !isRoot && 'needs root' }, () => {
  const r = entry(['run'], { KEEL_STATE_DIR: stateDir('root') });
  assert.equal(r.code, 3);
  assert.match(r.err, /refusing to run as root: .*--user 0.*--device and --group-add/);
  assert.deepEqual(r.args, []);
});

test('entry point: a missing or unreadable config says how to mount one', { skip: !isRoot && 'needs root' }, () => {
  const r = entry(['run'], { KEEL_STATE_DIR: stateDir('nocfg'), KEEL_ALLOW_ROOT: '1', KEEL_CONFIG: path.join(tmp, 'nope.yaml') });
  assert.equal(r.code, 3);
  assert.match(r.err, /no configuration at .*nope\.yaml: mount one \(docker run -v/);
  assert.match(entry(['run'], { KEEL_STATE_DIR: path.join(tmp, 'no-state'), KEEL_ALLOW_ROOT: '1' }).err, /state directory .*no-state does not exist: mount a volume there/);
});

const setpriv = isRoot && hasTool('setpriv');
test('entry point: a state volume the keel user cannot write names the owner and the fix', { skip: !setpriv && 'needs root and setpriv' }, () => {
  const d = stateDir('notmine', 0o755); // owned by root
  const r = entry(['run'], { KEEL_STATE_DIR: d }, ['setpriv', '--reuid=10001', '--regid=10001', '--clear-groups']);
  assert.equal(r.code, 3, r.err);
  assert.match(r.err, /state volume .*notmine is not writable by uid 10001 \(owner: 0:0\): use a named volume, or chown 10001/);
  chownSync(d, 10001, 10001);
  const ok = entry(['run'], { KEEL_STATE_DIR: d }, ['setpriv', '--reuid=10001', '--regid=10001', '--clear-groups']);
  assert.equal(ok.code, 0, ok.err);
  assert.equal(ok.args[1], 'run');
  assert.deepEqual(readdirSync(d), [], 'the write probe is removed');
  const cfg = path.join(tmp, 'secret.yaml');
  writeFileSync(cfg, 'x: 1\n', { mode: 0o600 });
  const unreadable = entry(['run'], { KEEL_STATE_DIR: d, KEEL_CONFIG: cfg }, ['setpriv', '--reuid=10001', '--regid=10001', '--clear-groups']);
  assert.match(unreadable.err, /configuration .*secret\.yaml is not readable by uid 10001/);
});

const unshare = isRoot && hasTool('unshare') && spawnSync('unshare', ['--mount', 'true']).status === 0;
test('entry point: a read-only state volume is named as such; a full one starts with a warning', { skip: !unshare && 'needs root and unshare' }, () => {
  const ro = stateDir('ro');
  const script = `mount --bind ${ro} ${ro} && mount -o remount,bind,ro ${ro} && exec sh ${ENTRY} run`;
  const r = spawnSync('unshare', ['--mount', 'sh', '-c', script], {
    env: { PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`, KEEL_CONFIG: config, KEEL_STATE_DIR: ro, KEEL_ALLOW_ROOT: '1' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /state volume .*ro is mounted read-only: keel appends its ledger there; mount it read-write/);

  const full = stateDir('full');
  const fill = `mount -t tmpfs -o size=64k tmpfs ${full} && (dd if=/dev/zero of=${full}/fill bs=4k count=100 2>/dev/null; true) && rm -f ${full}/.p && exec sh ${ENTRY} run`;
  const f = spawnSync('unshare', ['--mount', 'sh', '-c', fill], {
    env: { PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`, KEEL_CONFIG: config, KEEL_STATE_DIR: full, KEEL_ALLOW_ROOT: '1' },
    encoding: 'utf8',
  });
  assert.equal(f.status, 0, f.stderr);
  assert.match(f.stderr, /warning: state volume .*full has 0 KiB free/);
  assert.equal(f.stdout.includes('arg:run'), true);
});

/** Whether `rel` is excluded by a .dockerignore pattern (Docker's rules: a match on any parent excludes it too). */
function dockerIgnored(rel: string, patterns: string[]): boolean {
  const toRe = (p: string) =>
    new RegExp(
      `^${p
        .replace(/\/+$/, '')
        .split('**')
        .map((part) => part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]'))
        .join('.*')
        .replace(/\.\*\//g, '(.*/)?')}$`,
    );
  const parts = rel.split('/');
  let ignored = false;
  for (const raw of patterns) {
    const neg = raw.startsWith('!');
    const re = toRe(neg ? raw.slice(1) : raw);
    for (let i = 1; i <= parts.length; i++) if (re.test(parts.slice(0, i).join('/'))) ignored = !neg;
  }
  return ignored;
}

function walk(dir: string, rel = ''): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true }).flatMap((e) => {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.name === 'node_modules') return [];
    return e.isDirectory() ? walk(dir, r) : [r];
  });
}

test('Dockerfile.arm64 copies paths that exist, and .dockerignore drops no source file under them', () => {
  const df = readFileSync(path.join(ROOT, 'Dockerfile.arm64'), 'utf8');
  const block = df.slice(df.indexOf('# app files: begin'), df.indexOf('# app files: end'));
  const paths = block
    .split('\n')
    .filter((l) => l.startsWith('COPY '))
    .flatMap((l) => l.split(/\s+/).slice(1, -1).filter((a) => !a.startsWith('--')));
  assert.ok(paths.includes('runtime') && paths.includes('bin') && paths.includes('deploy'), paths.join(' '));
  const patterns = readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  assert.equal(dockerIgnored('runtime/ledger/keys.ts', ['**/ledger*/']), true, 'the matcher sees what broke once');
  assert.equal(dockerIgnored('test/x.ts', patterns), true);
  for (const p of paths) {
    const abs = path.join(ROOT, p);
    assert.ok(statSync(abs, { throwIfNoEntry: false }), `Dockerfile.arm64 copies ${p}, which does not exist`);
    if (dockerIgnored(p, patterns)) assert.fail(`.dockerignore excludes ${p}, which the Dockerfile copies`);
    if (!statSync(abs).isDirectory()) continue;
    const sources = walk(abs).map((f) => `${p}/${f}`).filter((f) => /\.(ts|mjs|js|json|onnx|sh|yaml|md|c|h)$/.test(f) && !f.endsWith('.test.ts'));
    const dropped = sources.filter((f) => dockerIgnored(f, patterns));
    assert.deepEqual(dropped, [], `.dockerignore drops source files the image needs`);
  }
  // The image runs the same Node as the arm64 tests.
  const common = readFileSync(path.join(ROOT, 'tools/arm64/common.sh'), 'utf8');
  const tested = /KEEL_ARM64_NODE_VERSION:-([\d.]+)/.exec(common)?.[1];
  assert.equal(/ARG NODE_VERSION=([\d.]+)/.exec(df)?.[1], tested, 'Dockerfile.arm64 NODE_VERSION differs from tools/arm64/common.sh');
  assert.match(df, /^USER keel$/m);
  assert.match(df, /^HEALTHCHECK .*\n\s+CMD \["node", "\/app\/deploy\/healthcheck.mjs"\]/m);
});

test('deploy/systemd/keel.service: Type=notify with the watchdog, restart policy, and systemd-analyze accepts it', (t) => {
  const unit = readFileSync(path.join(ROOT, 'deploy/systemd/keel.service'), 'utf8');
  for (const line of ['Type=notify', 'NotifyAccess=all', 'WatchdogSec=30s', 'Restart=on-failure', 'RestartPreventExitStatus=2 3', 'User=keel', 'StateDirectory=keel', 'KillMode=mixed']) {
    assert.ok(unit.split('\n').includes(line), `keel.service lacks ${line}`);
  }
  if (!hasTool('systemd-analyze')) return t.skip('systemd-analyze not installed (apt-get install systemd)');
  const copy = path.join(tmp, 'keel.service');
  writeFileSync(copy, unit);
  const r = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8', timeout: 20_000 });
  const problems = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('keel.service') && !/Failed to resolve (user|group)|No such file or directory.*keel\.js|Unit keel\.service not found/i.test(l));
  assert.deepEqual(problems, []);
});

test('deploy/compose.yaml: device and fleet from the image, devices mapped, state on volumes, never root', () => {
  const c = parse(readFileSync(path.join(ROOT, 'deploy/compose.yaml'), 'utf8')) as {
    services: Record<string, { image: string; user?: string; devices?: string[]; volumes?: string[]; group_add?: string[]; stop_grace_period?: string; command?: string[] }>;
    volumes: Record<string, unknown>;
  };
  assert.deepEqual(Object.keys(c.services).sort(), ['device', 'fleet']);
  const d = c.services.device;
  assert.equal(d.user, undefined);
  assert.ok(d.devices?.some((x) => x.includes('/dev/serial/by-id/')) && d.devices.some((x) => x.startsWith('/dev/gpiochip')));
  assert.ok(d.volumes?.includes('device-state:/var/lib/keel') && d.volumes.some((v) => v.endsWith(':/etc/keel/keel.yaml:ro')));
  assert.ok(d.group_add?.length);
  assert.equal(d.stop_grace_period, '30s');
  assert.deepEqual(c.services.fleet.command?.slice(0, 2), ['fleet', 'serve']);
  assert.ok('device-state' in c.volumes && 'fleet-state' in c.volumes);
});
