/**
 * The fleet broker's other transports and foreign clients: TLS with a certificate made by
 * openssl, WebSocket with mqtt.js ws://, and Mosquitto's command-line clients (another MQTT
 * implementation) authenticating as an operator.
 */
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { addPrincipal, enroll } from '../../fleet/registry.ts';
import { startBroker, type FleetBroker } from '../../fleet/broker.ts';
import { collect, connect, endAll, makeKey, publishAck, refusal, subscribe, tempFleet, token, type TestKey } from './broker-fixtures.ts';
import { requireTool, waitFor } from '../helpers.ts';

const run = promisify(execFile);

describe('fleet broker transports', () => {
  let fleet: ReturnType<typeof tempFleet>;
  let b: FleetBroker;
  let dev: TestKey;
  let opsSecret: string;
  let certPem: Buffer | undefined;

  before(async () => {
    fleet = tempFleet('broker-transports');
    dev = makeKey('rover');
    enroll(fleet.db, dev.vkey);
    opsSecret = (await addPrincipal(fleet.db, 'ops', { role: 'operator' })).secret;
    let tls: { port: number; cert: Buffer; key: Buffer } | undefined;
    try {
      // A self-signed certificate for 127.0.0.1, made the way an operator would.
      const cert = path.join(fleet.dir, 'cert.pem');
      const key = path.join(fleet.dir, 'key.pem');
      await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=keel-test', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
      certPem = fs.readFileSync(cert);
      tls = { port: 0, cert: certPem, key: fs.readFileSync(key) };
    } catch {
      certPem = undefined; // the TLS test skips (or fails in CI)
    }
    b = await startBroker({ db: fleet.db, fleetName: 'keel-fleet', prefix: 'keel', tcp: { port: 0 }, ws: { port: 0 }, tls });
  });
  afterEach(endAll);
  after(async () => {
    await b.close();
    fleet.cleanup();
  });

  test('TLS with a self-signed certificate from openssl', async (t) => {
    if (!requireTool(t, 'openssl', 'apt-get install openssl')) return;
    assert.ok(certPem && b.addresses.tls, 'openssl made a certificate');
    assert.match(b.addresses.tls!, /^mqtts:\/\/127\.0\.0\.1:\d+$/);
    const c = await connect(b.addresses.tls!, { username: 'rover', password: token('rover', dev), ca: certPem, rejectUnauthorized: true });
    await publishAck(c, 'keel/rover/telemetry', '{}');
    // The same ACLs hold over TLS.
    await assert.rejects(publishAck(c, 'keel/other/log', 'x'));
    // A client that does not trust the certificate never gets to authenticate.
    await assert.rejects(connect(b.addresses.tls!, { username: 'rover', password: token('rover', dev), rejectUnauthorized: true }), /self.signed|certificate/i);
  });

  test('WebSocket with mqtt.js ws://', async () => {
    assert.match(b.addresses.ws!, /^ws:\/\/127\.0\.0\.1:\d+\/mqtt$/);
    const ops = await connect(b.addresses.ws!, { username: 'ops', password: opsSecret });
    assert.deepEqual(await subscribe(ops, ['keel/+/status']), [1]);
    const got = collect(ops);
    const d = await connect(b.addresses.ws!, { username: 'rover', password: token('rover', dev) });
    await publishAck(d, 'keel/rover/status', '{"online":true}', { retain: true });
    await waitFor(() => got.length === 1, 'the status over WebSocket');
    assert.equal(await refusal(b.addresses.ws!, { username: 'rover', password: token('rover', makeKey('rover')) }), 4);
    // A plain HTTP request gets a hint, not a hang.
    const res = await fetch(b.addresses.ws!.replace('ws:', 'http:'));
    assert.equal(res.status, 426);
    await res.text();
  });

  test('mosquitto_sub and mosquitto_pub authenticate as an operator', async (t) => {
    if (!requireTool(t, 'mosquitto_sub', 'apt-get install mosquitto-clients')) return;
    const port = new URL(b.addresses.tcp!).port;
    const common = ['-h', '127.0.0.1', '-p', port, '-V', 'mqttv311', '-u', 'ops', '-P', opsSecret];
    // mosquitto_sub waits for one status message.
    const sub = spawn('mosquitto_sub', [...common, '-i', 'ops-sub', '-t', 'keel/+/status', '-C', '1', '-W', '10', '-v'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let subOut = '';
    sub.stdout.setEncoding('utf8').on('data', (d: string) => (subOut += d));
    const subDone = new Promise<number | null>((r) => sub.on('close', r));
    const d = await connect(b.addresses.tcp!, { username: 'rover', password: token('rover', dev) });
    await subscribe(d, ['keel/rover/cmd']);
    const cmds = collect(d);
    // Publish the status once mosquitto_sub is subscribed (retained, so order does not matter).
    await publishAck(d, 'keel/rover/status', '{"online":true,"bdSeq":7}', { retain: true });
    assert.equal(await subDone, 0);
    assert.match(subOut, /^keel\/rover\/status \{"online":true,"bdSeq":7\}$/m);
    // mosquitto_pub sends a command.
    await run('mosquitto_pub', [...common, '-i', 'ops-pub', '-t', 'keel/rover/cmd', '-q', '1', '-m', '{"cmd":"rebirth"}']);
    await waitFor(() => cmds.length === 1, 'the command at the device');
    assert.equal(cmds[0].payload, '{"cmd":"rebirth"}');
    // A wrong secret is refused by the embedded broker, as mosquitto_pub reports.
    const bad = await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', port, '-V', 'mqttv311', '-u', 'ops', '-P', 'not-the-secret-at-all', '-t', 'keel/rover/cmd', '-m', 'x']).then(
      () => undefined,
      (err: { code?: number; stderr?: string }) => err,
    );
    assert.ok(bad && bad.code !== 0, 'mosquitto_pub fails');
    assert.match(bad!.stderr ?? '', /not authori[sz]ed|bad user name or password/i);
    assert.equal(cmds.length, 1);
  });
});
