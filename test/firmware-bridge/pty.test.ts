/**
 * The bridge over real pseudo-terminals (socat), on the real serialport code path and the
 * system clock: the simulated MCU on one end, a bridge source and a bridge actuator sharing
 * one session on the other; garbage injected mid-stream; the port vanishing (socat killed)
 * and coming back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SystemClock } from '../../runtime/clock.ts';
import type { KeelError } from '../../runtime/errors.ts';
import { PtyPair, SystemSerialOpener, type SerialConnection } from '../../drivers/serial/index.ts';
import type { Sample } from '../../drivers/types.ts';
import { BridgeHub } from '../../firmware-bridge/hub.ts';
import { BridgeSource } from '../../firmware-bridge/source.ts';
import { BridgeActuator } from '../../firmware-bridge/actuator.ts';
import { SimMcu } from '../../firmware-bridge/sim-mcu.ts';
import { requireTool, waitFor } from '../helpers.ts';

test('real pty: samples, garbage resync, SET/ACK, port vanishes and comes back', async (t) => {
  if (!requireTool(t, 'socat', 'apt-get install socat')) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-bridge-pty-'));
  const clock = new SystemClock();
  const opener = new SystemSerialOpener();
  const mcu = new SimMcu({ clock, name: 'pty-mcu' });
  mcu.setInput(0, (tUs) => 512 + 400 * Math.sin(tUs / 1e5));
  mcu.setInput(6, 1);
  let pair: PtyPair | null = null;
  let mcuPort: SerialConnection | null = null;
  const hub = new BridgeHub({ opener, clock });
  const attachMcu = async () => {
    mcuPort = await opener.open({ path: pair!.a, baudRate: 115200 });
    mcuPort.on('error', () => undefined); // it dies with socat below
    mcu.attach(mcuPort);
  };
  let src: BridgeSource | null = null;
  let act: BridgeActuator | null = null;
  try {
    pair = await PtyPair.start({ dir });
    await attachMcu();
    src = new BridgeSource(
      { type: 'bridge', name: 'mcu', path: pair.b, baudRate: 115200, channels: [{ mcuChannel: 0, name: 'pot', rateHz: 200 }, { mcuChannel: 6, name: 'door', rateHz: 20 }] },
      { hub, clock },
    );
    act = new BridgeActuator({ type: 'bridge', name: 'fan', path: pair.b, baudRate: 115200, output: 0 }, { hub });
    const samples: Sample[] = [];
    const faults: KeelError[] = [];
    let recovered = 0;
    src.on('sample', (s) => samples.push(s));
    src.on('fault', (e) => faults.push(e));
    src.on('recovered', () => recovered++);
    await act.open();
    await src.start();
    assert.equal(hub.paths().length, 1, 'one session for the source and the actuator');
    await waitFor(() => samples.filter((s) => 'pot' in s.values).length >= 100, '100 pot samples');
    assert.ok(samples.some((s) => s.values.door === 1));
    const pots = samples.filter((s) => 'pot' in s.values);
    for (const s of pots) assert.ok(s.values.pot! >= 112 && s.values.pot! <= 912);
    // Sample times are MCU times mapped to host time: 5 ms apart, close to now.
    const last = pots.at(-1)!;
    assert.ok(Math.abs(last.t - Date.now()) < 500, `last sample ${Date.now() - last.t} ms old`);
    const dts = pots.slice(-20).map((s, i, a) => (i ? s.t - a[i - 1]!.t : 5)).slice(1);
    for (const d of dts) assert.ok(Math.abs(d - 5) < 1.5, `spacing ${d} ms`);

    // Garbage in mid-stream: counted, resynchronized, samples go on.
    const session = hub.session(pair.b)!;
    const before = samples.length;
    mcu.injectGarbage(Buffer.from('\x13\x37 this is line noise \xff\xfe\x00garbage without end', 'latin1'));
    await waitFor(() => samples.length > before + 50, 'samples after the garbage');
    const st = session.stats();
    assert.ok(st.cobs + st.crc + st.short >= 2, JSON.stringify(st));
    assert.ok(st.lostFrames >= 1);
    assert.equal(st.state, 'established');

    await act.write(200);
    assert.equal(mcu.output(0), 200);
    assert.equal(act.current(), 200);

    // The port vanishes (socat dies): a fault, writes refused, the MCU fails safe on its own.
    await pair.stop();
    await waitFor(() => faults.length >= 1, 'a link fault');
    assert.equal(faults[0]!.retryable, true);
    await assert.rejects(act.write(100), /down|not connected/);
    await waitFor(() => mcu.failsafe, 'the MCU to fail safe', 3000);
    assert.equal(mcu.output(0), 0);

    // It comes back: reopened with backoff, handshake, channels configured again.
    await pair.restart();
    await attachMcu();
    await waitFor(() => recovered === 1, 'the source to recover', 8000);
    const after = samples.length;
    await waitFor(() => samples.length > after + 20, 'samples after the reconnect');
    await act.write(150);
    assert.equal(mcu.output(0), 150);
    assert.equal(session.stats().reopens, 1);
    assert.equal(session.stats().linkLost, 1);
  } finally {
    await src?.stop();
    await act?.close();
    await (mcuPort as SerialConnection | null)?.close();
    mcu.stop();
    await pair?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
