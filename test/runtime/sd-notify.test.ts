/**
 * systemd notifications: the logic on a fake clock and a recording notifier, then the real
 * path: systemd's own systemd-notify sending to a real AF_UNIX datagram socket that python3
 * listens on, as systemd's NOTIFY_SOCKET would be.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { FakeClock } from '../../runtime/clock.ts';
import { KeelError } from '../../runtime/errors.ts';
import type { Health } from '../../runtime/ops/http.ts';
import { RecordingNotifier, ServiceNotifications, SystemdNotifyCommand, isHealthy } from '../../runtime/ops/sd-notify.ts';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'keel-sdnotify-'));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
});

function setup(watchdogUsec?: number) {
  const clock = new FakeClock();
  const notifier = new RecordingNotifier();
  let health: Health = { status: 'ok' };
  const errors: Error[] = [];
  const n = new ServiceNotifications({ notifier, clock, health: () => health, watchdogUsec, onError: (e) => errors.push(e) });
  return { clock, notifier, n, errors, set: (h: Health) => (health = h) };
}

test('no NOTIFY_SOCKET: nothing is set up (keel not started by a Type=notify unit)', () => {
  const clock = new FakeClock();
  assert.equal(ServiceNotifications.fromEnv({}, { clock, health: () => ({ status: 'ok' }) }), undefined);
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '' }, { clock, health: () => ({ status: 'ok' }) }), undefined);
  assert.deepEqual(clock.pending(), []);
});

test('fromEnv: the watchdog period is half WATCHDOG_USEC, and only for our own PID', () => {
  const clock = new FakeClock();
  const o = { clock, health: (): Health => ({ status: 'ok' }), notifier: new RecordingNotifier(), pid: 4242 };
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '30000000' }, o)!.watchdogPeriodMs, 15_000);
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '4242' }, o)!.watchdogPeriodMs, 15_000);
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '1' }, o)!.watchdogPeriodMs, 0);
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: 'soon' }, o)!.watchdogPeriodMs, 0);
  assert.equal(ServiceNotifications.fromEnv({ NOTIFY_SOCKET: '/run/x' }, o)!.watchdogPeriodMs, 0);
  assert.throws(() => new ServiceNotifications({ ...o, watchdogUsec: -1 }), /watchdogUsec/);
});

test('READY once started; WATCHDOG=1 only while /healthz would answer 200; STOPPING ends the pings', async () => {
  const { clock, notifier, n, set } = setup(10_000_000); // WatchdogSec=10s: check every 5 s
  await n.ready();
  assert.match(notifier.messages[0], /^READY=1\nSTATUS=ok\nMAINPID=\d+$/);
  assert.deepEqual(clock.pending(), ['sd-notify:watchdog']);

  clock.advance(5000);
  await n.tick(); // flush the chain the timer started
  assert.equal(notifier.messages.at(-1), 'WATCHDOG=1');

  set({ status: 'safe', activeFaults: ['silence'] });
  const before = notifier.messages.length;
  clock.advance(5000);
  clock.advance(5000);
  await n.tick();
  // The status change is told once; no WATCHDOG=1 while safe, so systemd restarts keel if it stays so.
  assert.deepEqual(notifier.messages.slice(before), ['STATUS=safe; faults: silence']);

  set({ status: 'degraded' });
  clock.advance(5000);
  await n.tick();
  assert.equal(notifier.messages.at(-1), 'WATCHDOG=1');
  assert.ok(notifier.messages.includes('WATCHDOG=1\nSTATUS=degraded'));

  await n.stopping('SIGTERM');
  assert.equal(notifier.messages.at(-1), 'STOPPING=1\nSTATUS=stopping (SIGTERM)');
  assert.deepEqual(clock.pending(), []);
  const count = notifier.messages.length;
  await n.tick();
  await n.stopping();
  assert.equal(notifier.messages.length, count, 'nothing after STOPPING');
  assert.ok(isHealthy({ status: 'ok' }) && isHealthy({ status: 'degraded' }) && !isHealthy({ status: 'starting' }) && !isHealthy({ status: 'stopping' }));
});

test('without WATCHDOG_USEC no timer runs; a failing notifier is reported, never thrown', async () => {
  const { clock, notifier, n, errors } = setup();
  notifier.failWith = new KeelError('KEEL_E_NOTIFY', 'boom', { retryable: true });
  await n.ready();
  assert.deepEqual(clock.pending(), []);
  assert.equal(errors.length, 1);
  assert.equal((errors[0] as KeelError).code, 'KEEL_E_NOTIFY');
});

/** Binds a real AF_UNIX datagram socket in python3 and collects what arrives, one message per line (JSON). */
async function listen(sock: string): Promise<{ messages: string[]; stop: () => void }> {
  const py = spawn(
    'python3',
    [
      '-u',
      '-c',
      `import socket, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    m = s.recv(65536)
    print(json.dumps(m.decode()), flush=True)`,
      sock,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(py);
  const messages: string[] = [];
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    py.once('error', reject);
    py.once('exit', (c) => reject(new Error(`python3 exited ${c}`)));
    py.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'bound') resolve();
        else messages.push(JSON.parse(line) as string);
      }
    });
  });
  return { messages, stop: () => py.kill('SIGKILL') };
}

function missing(tool: string, pkg: string): string | undefined {
  if (spawnSync(tool, ['--version']).error === undefined) return undefined;
  const msg = `${tool} not found: apt-get install ${pkg}`;
  if (process.env.CI === 'true') throw new Error(msg);
  return msg;
}

test('real: systemd-notify delivers READY, WATCHDOG and STOPPING to a unix datagram socket', async (t) => {
  const skip = missing('python3', 'python3') ?? missing('systemd-notify', 'systemd');
  if (skip) return t.skip(skip);
  const sock = path.join(tmp, 'notify.sock');
  const rx = await listen(sock);
  const clock = new FakeClock();
  let health: Health = { status: 'ok' };
  const errors: Error[] = [];
  const n = ServiceNotifications.fromEnv({ NOTIFY_SOCKET: sock, WATCHDOG_USEC: '2000000' }, { clock, health: () => health, onError: (e) => errors.push(e) })!;
  await n.ready();
  await n.tick();
  health = { status: 'safe' };
  await n.tick();
  await n.stopping('SIGTERM');
  rx.stop();
  assert.deepEqual(errors, []);
  // systemd-notify follows every message with BARRIER=1 (it waits until the reader took it).
  const got = rx.messages.filter((m) => m !== 'BARRIER=1');
  assert.equal(got.length, 4, JSON.stringify(rx.messages));
  assert.match(got[0], /^READY=1\nSTATUS=ok\nMAINPID=\d+$/);
  assert.equal(got[1], 'WATCHDOG=1');
  assert.equal(got[2], 'STATUS=safe');
  assert.equal(got[3], 'STOPPING=1\nSTATUS=stopping (SIGTERM)');
});

test('real: a socket nobody listens on, and a missing binary, are clear KeelErrors', async (t) => {
  const skip = missing('systemd-notify', 'systemd');
  if (skip) return t.skip(skip);
  const nobody = path.join(tmp, 'nobody.sock');
  assert.equal(existsSync(nobody), false);
  await assert.rejects(new SystemdNotifyCommand(nobody).send('READY=1'), (e: unknown) => e instanceof KeelError && e.code === 'KEEL_E_NOTIFY' && /failed/.test(e.message));
  await assert.rejects(new SystemdNotifyCommand(nobody, path.join(tmp, 'no-such-notify')).send('READY=1'), /not found \(it ships with systemd\)/);
  assert.throws(() => new SystemdNotifyCommand(''), TypeError);
});
