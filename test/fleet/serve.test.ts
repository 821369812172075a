/**
 * `keel fleet serve / enroll / revoke / user` as a user runs them: real child processes, a
 * state directory in a temp dir, a real device (key, ledger, batch) over MQTT. Usage errors
 * and help run in-process (cmdFleet) to keep the file fast.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseVerifierKey, splitNote, verifyCosignature, SIGNATURE_TYPE_COSIGNATURE_V1 } from '../../runtime/ledger/note.ts';
import { mintToken } from '../../runtime/sync/wire.ts';
import { cmdFleet, FLEET_HELP, type FleetIo } from '../../fleet/serve.ts';
import { ROOT, jsonLines, killAll, startKeel, type KeelResult } from '../cli/keel-process.ts';
import { appendRecords, makeBatch, makeDevice, tempDir } from './ingest-fixtures.ts';
import { closed, collect, connect, endAll, publishAck, refusal, subscribe } from './broker-fixtures.ts';
import { waitFor } from '../helpers.ts';

/** Whether runtime/cli.ts dispatches `keel fleet` yet (the lead adds the line); else run fleet/serve.ts directly. */
const VIA_CLI = fs.readFileSync(path.join(ROOT, 'runtime/cli.ts'), 'utf8').includes("case 'fleet'");

/** A running `keel fleet ...` child. */
interface FleetChild {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<KeelResult>;
}

const direct = new Set<ChildProcess>();

function fleet(args: string[], o: { timeoutMs?: number } = {}): FleetChild {
  if (VIA_CLI) {
    const p = startKeel(['fleet', ...args], { timeoutMs: o.timeoutMs ?? 20_000 });
    return { child: p.child, stdout: () => p.stdout, stderr: () => p.stderr, exited: p.exited };
  }
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.NODE_TEST_CONTEXT;
  delete env.KEEL_FLEET_STATE;
  const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/serve.ts', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  direct.add(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 20_000);
  const exited = new Promise<KeelResult>((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      direct.delete(child);
      resolve({ code, signal, stdout: out, stderr: err });
    }),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

const run = (args: string[]) => fleet(args).exited;

async function serving(p: FleetChild): Promise<{ vkey: string; addresses: { tcp: string; ws?: string } }> {
  let line: Record<string, unknown> | undefined;
  await waitFor(() => {
    if (p.child.exitCode !== null) throw new Error(`fleet serve exited ${p.child.exitCode}\n${p.stdout()}\n${p.stderr()}`);
    line = jsonLines(p.stdout()).find((l) => l.msg === 'fleet serving');
    return line !== undefined;
  }, 'the "fleet serving" log line', 15_000, 50);
  return line as unknown as { vkey: string; addresses: { tcp: string; ws?: string } };
}

after(async () => {
  await endAll();
  await killAll();
  for (const c of direct) c.kill('SIGKILL');
});

describe('keel fleet serve (child process)', () => {
  test('serve creates the state, enroll/user/revoke work against it live, a device gets its batch cosigned, SIGTERM stops cleanly', async () => {
    const { dir, cleanup } = tempDir('fleet-serve');
    try {
      const state = path.join(dir, 'state');
      const server = fleet(['serve', '--state', state, '--port', '0', '--ws-port', '0']);
      const dev = await makeDevice(dir, 'rover');
      await appendRecords(dev, 20);
      fs.writeFileSync(path.join(dir, 'rover.vkey'), `${dev.vkey}\n`);
      // Enroll and add an operator while the server starts (separate processes, one database).
      const [enrolled, user] = await Promise.all([run(['enroll', `@${path.join(dir, 'rover.vkey')}`, '--state', state]), run(['user', 'add', 'ops', '--role', 'operator', '--state', state, '--json'])]);
      assert.equal(enrolled.code, 0, enrolled.stderr);
      assert.match(enrolled.stdout, /^enrolled rover \(key rover\+[0-9a-f]{8}\)/);
      assert.equal(user.code, 0, user.stderr);
      const ops = JSON.parse(user.stdout) as { name: string; role: string; secret: string };
      assert.equal(ops.role, 'operator');

      const { vkey, addresses } = await serving(server);
      // The fleet key: mode 0600; fleet.vkey holds its cosigner key (type 0x04).
      assert.equal(fs.statSync(path.join(state, 'fleet.key')).mode & 0o777, 0o600);
      assert.equal(fs.readFileSync(path.join(state, 'fleet.vkey'), 'utf8'), `${vkey}\n`);
      assert.equal(parseVerifierKey(vkey).type, SIGNATURE_TYPE_COSIGNATURE_V1);
      assert.match(server.stderr(), new RegExp(`cosigner key ${vkey.replace(/[+/]/g, '\\$&')}`));
      assert.match(server.stderr(), /listening: mqtt:\/\/127\.0\.0\.1:\d+, ws:\/\/127\.0\.0\.1:\d+\/mqtt; ingest running/);

      // The device connects with a token, sees the fleet online, and its batch is cosigned by the in-process ingest.
      const client = await connect(addresses.tcp, { username: 'rover', password: mintToken({ device: 'rover', audience: 'keel-fleet', key: dev.key, nowMs: Date.now() }) });
      const got = collect(client);
      assert.deepEqual(await subscribe(client, ['keel/rover/ack', 'keel/_fleet/state']), [1, 1]);
      await waitFor(() => got.some((g) => g.topic === 'keel/_fleet/state'), 'the fleet state');
      const st = JSON.parse(got.find((g) => g.topic === 'keel/_fleet/state')!.payload) as { online: boolean; cosigner: string };
      assert.equal(st.online, true);
      assert.equal(st.cosigner, vkey);
      await publishAck(client, 'keel/rover/log', await makeBatch(dev, 0, 20));
      await waitFor(() => got.some((g) => g.topic === 'keel/rover/ack'), 'the ack', 10_000);
      const note = splitNote(got.find((g) => g.topic === 'keel/rover/ack')!.payload);
      const cosig = note.signatures.find((s) => s.name === 'keel-fleet')!;
      assert.equal(verifyCosignature(note.text, cosig.line, vkey).name, 'keel-fleet');
      assert.match(note.text, /^rover\n20\n/);

      // The operator logs in over WebSocket with the printed secret.
      const op = await connect(addresses.ws!, { username: 'ops', password: ops.secret });
      await publishAck(op, 'keel/rover/cmd', '{}');

      // Revoking from the CLI disconnects the live device within a second or so.
      const revoked = await run(['revoke', 'rover', '--state', state]);
      assert.equal(revoked.code, 0, revoked.stderr);
      assert.match(revoked.stdout, /^revoked rover/);
      await closed(client, 5000);
      assert.equal(await refusal(addresses.tcp, { username: 'rover', password: mintToken({ device: 'rover', audience: 'keel-fleet', key: dev.key, nowMs: Date.now() }) }), 5);

      server.child.kill('SIGTERM');
      const done = await server.exited;
      assert.equal(done.code, 0, done.stderr);
      const logs = jsonLines(done.stdout);
      assert.ok(logs.some((l) => l.msg === 'fleet stopped'), 'the last log line says it stopped');
      assert.ok(!/^\s+at \S/m.test(done.stderr), 'no stack trace');

      // A restart keeps the fleet key (in process: the child's part is done).
      const ac = new AbortController();
      ac.abort();
      const io = captureIo();
      assert.equal(await cmdFleet(['serve', '--state', state, '--port', '0', '--no-ingest', '--log-level', 'silent'], { ...io, signal: ac.signal }), 0, io.stderr.join('\n'));
      assert.equal(io.stderr[0], `fleet keel-fleet: cosigner key ${vkey}`);
      await dev.ledger.close();
    } finally {
      cleanup();
    }
  });
});

/** An in-process Io that records what was printed. */
function captureIo(env: Record<string, string | undefined> = {}): FleetIo & { stdout: string[]; stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return { out: (s) => stdout.push(s), err: (s) => stderr.push(s), env, stdout, stderr };
}

describe('keel fleet (in process)', () => {
  test('help for every subcommand, exit 0', async () => {
    for (const sub of ['serve', 'enroll', 'revoke', 'user', 'ingest', 'devices', 'tail', 'verify', 'proof', 'send']) {
      const io = captureIo();
      assert.equal(await cmdFleet([sub, '--help'], io), 0, sub);
      assert.match(io.stdout.join('\n'), /^Usage: keel fleet /, sub);
    }
    const io = captureIo();
    assert.equal(await cmdFleet(['--help'], io), 0);
    assert.equal(io.stdout.join('\n'), FLEET_HELP.fleet);
    const none = captureIo();
    assert.equal(await cmdFleet([], none), 2);
  });

  test('usage errors exit 2 with a hint; failures exit 1 with the reason', async () => {
    const { dir, cleanup } = tempDir('fleet-usage');
    try {
      const state = path.join(dir, 'state');
      const cases: [string[], number, RegExp][] = [
        [['bogus'], 2, /unknown fleet command "bogus"[\s\S]*keel fleet --help/],
        [['enroll'], 2, /exactly one verifier key[\s\S]*keel fleet enroll --help/],
        [['enroll', 'a', 'b'], 2, /exactly one/],
        [['enroll', '--bogus', 'x'], 2, /Unknown option '--bogus'/],
        [['serve', '--port', 'http'], 2, /--port must be a port number/],
        [['serve', '--port', '70000'], 2, /--port must be a port number/],
        [['serve', '--tls-port', '8883'], 2, /needs --cert/],
        [['serve', '--cert', 'c.pem', '--key', 'k.pem'], 2, /need --tls-port/],
        [['serve', '--prefix', 'a/+/b'], 2, /--prefix/],
        [['serve', '--log-level', 'loud'], 2, /--log-level/],
        [['user'], 2, /user needs add, revoke or list/],
        [['user', 'add', 'x'], 2, /--role operator/],
        [['user', 'add', 'x', '--role', 'root'], 2, /--role operator/],
        [['revoke'], 2, /exactly one device id/],
        [['enroll', 'not-a-key', '--state', state], 1, /not a verifier key/],
        [['enroll', '@/nonexistent/file', '--state', state], 1, /no such file/],
        [['revoke', 'ghost', '--state', path.join(dir, 'missing')], 1, /does not exist/],
      ];
      for (const [args, code, re] of cases) {
        const io = captureIo();
        assert.equal(await cmdFleet(args, io), code, args.join(' '));
        assert.match(io.stderr.join('\n'), re, args.join(' '));
        assert.ok(!/^\s+at \S/m.test(io.stderr.join('\n')));
      }
    } finally {
      cleanup();
    }
  });

  test('enroll, revoke and user with --json and KEEL_FLEET_STATE', async () => {
    const { dir, cleanup } = tempDir('fleet-json');
    try {
      const env = { KEEL_FLEET_STATE: path.join(dir, 'st') };
      const dev = await makeDevice(dir, 'arm-1');
      let io = captureIo(env);
      assert.equal(await cmdFleet(['enroll', dev.vkey, '--name', 'arm-one', '--json'], io), 0, io.stderr.join('\n'));
      assert.deepEqual(JSON.parse(io.stdout[0]), { id: 'arm-one', vkey: dev.vkey, outcome: 'enrolled' });
      io = captureIo(env);
      assert.equal(await cmdFleet(['enroll', dev.vkey, '--name', 'arm-one'], io), 0);
      assert.equal(io.stdout[0], 'arm-one is already enrolled with this key');
      io = captureIo(env);
      assert.equal(await cmdFleet(['revoke', 'arm-one', '--json'], io), 0);
      assert.equal(JSON.parse(io.stdout[0]).id, 'arm-one');
      io = captureIo(env);
      assert.equal(await cmdFleet(['enroll', dev.vkey, '--name', 'arm-one'], io), 1);
      assert.match(io.stderr.join('\n'), /--reenroll/);
      io = captureIo(env);
      assert.equal(await cmdFleet(['enroll', dev.vkey, '--name', 'arm-one', '--reenroll'], io), 0);
      assert.match(io.stdout[0], /^reenrolled arm-one/);
      io = captureIo(env);
      assert.equal(await cmdFleet(['user', 'add', 'svc', '--role', 'service'], io), 0);
      assert.match(io.stdout[0], /^[A-Za-z0-9_-]{43}$/, 'the secret alone on stdout');
      assert.match(io.stderr[0], /shown only now/);
      io = captureIo(env);
      assert.equal(await cmdFleet(['user', 'revoke', 'svc'], io), 0);
      io = captureIo(env);
      assert.equal(await cmdFleet(['user', 'list', '--json'], io), 0);
      const list = JSON.parse(io.stdout[0]) as { name: string; revokedAt: number | null }[];
      assert.equal(list.length, 1);
      assert.equal(list[0].name, 'svc');
      assert.ok(list[0].revokedAt !== null);
      await dev.ledger.close();
    } finally {
      cleanup();
    }
  });

  test('serve refuses a --name that does not match the existing fleet key', async () => {
    const { dir, cleanup } = tempDir('fleet-name');
    try {
      const ac = new AbortController();
      ac.abort();
      let io = captureIo();
      assert.equal(await cmdFleet(['serve', '--state', dir, '--port', '0', '--name', 'plant-7', '--log-level', 'silent'], { ...io, signal: ac.signal }), 0, io.stderr.join('\n'));
      assert.match(fs.readFileSync(path.join(dir, 'fleet.vkey'), 'utf8'), /^plant-7\+/);
      io = captureIo();
      assert.equal(await cmdFleet(['serve', '--state', dir, '--port', '0', '--name', 'other', '--log-level', 'silent'], { ...io, signal: ac.signal }), 1);
      assert.match(io.stderr.join('\n'), /belongs to fleet "plant-7"/);
    } finally {
      cleanup();
    }
  });
});
