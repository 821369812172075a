/** The MQTT packet-size limit in front of aedes: fixed-header scanning and the stream wrapper. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import mqttPacket from 'mqtt-packet';
import { FrameScanner, limitPackets, PacketTooLargeError } from '../../fleet/packet-limit.ts';

const publish = (payloadBytes: number): Buffer =>
  mqttPacket.generate({ cmd: 'publish', topic: 'keel/a/log', payload: Buffer.alloc(payloadBytes), qos: 1, messageId: 1, retain: false, dup: false });
const connectPacket = (): Buffer => mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'c', clean: true, keepalive: 30, username: 'u', password: Buffer.from('p') });

test('the scanner follows packets split anywhere, with 1- to 4-byte lengths', () => {
  const stream = Buffer.concat([connectPacket(), publish(10), publish(200), publish(20_000), publish(3_000_000), mqttPacket.generate({ cmd: 'pingreq' })]);
  for (const step of [1, 2, 3, 7, 1000, stream.length]) {
    const s = new FrameScanner({ firstPacketMax: 100, packetMax: 4_000_000 });
    for (let i = 0; i < stream.length; i += step) assert.equal(s.scan(stream.subarray(i, i + step)), undefined, `step ${step}`);
  }
});

test('the scanner refuses the first packet over its own limit, and later packets over theirs', () => {
  const c = connectPacket();
  assert.deepEqual(new FrameScanner({ firstPacketMax: c.length - 3, packetMax: 1000 }).scan(c), { announced: c.length - 2, limit: c.length - 3 });
  const s = new FrameScanner({ firstPacketMax: 100, packetMax: 1000 });
  assert.equal(s.scan(c), undefined);
  const big = publish(1000);
  // Refused on the header alone: the payload need not arrive.
  assert.deepEqual(s.scan(big.subarray(0, 3)), { announced: big.length - 3, limit: 1000 });
  // Five length bytes are malformed [MQTT-2.2.3].
  assert.deepEqual(new FrameScanner({ firstPacketMax: 100, packetMax: 100 }).scan(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])), { announced: -1, limit: 100 });
  assert.throws(() => new FrameScanner({ firstPacketMax: 1, packetMax: 100 }), RangeError);
});

/** A byte Duplex standing for a socket: `feed` writes what it receives, `sent` collects what is written to it. */
function pipePair(): { inner: Duplex; feed: PassThrough; sent: Buffer[] } {
  const feed = new PassThrough();
  const sent: Buffer[] = [];
  const inner = new Duplex({
    read() {},
    write(chunk, _e, cb) {
      sent.push(chunk);
      cb();
    },
  });
  feed.on('data', (d: Buffer) => inner.push(d));
  feed.on('end', () => inner.push(null));
  return { inner, feed, sent };
}

test('the wrapper passes bytes both ways and destroys the stream on an oversized packet', async () => {
  const { inner, feed, sent } = pipePair();
  let reported: [number, number] | undefined;
  const outer = limitPackets(inner, { firstPacketMax: 200, packetMax: 500, onOversize: (a, l) => (reported = [a, l]) });
  const got: Buffer[] = [];
  outer.on('data', (d: Buffer) => got.push(d));
  const err = new Promise<Error>((r) => outer.on('error', r));
  feed.write(connectPacket());
  feed.write(publish(100));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(Buffer.concat(got), Buffer.concat([connectPacket(), publish(100)]));
  outer.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
  assert.deepEqual(Buffer.concat(sent), Buffer.from([0x20, 0x02, 0x00, 0x00]));
  feed.write(publish(1000));
  const e = await err;
  assert.ok(e instanceof PacketTooLargeError);
  assert.equal(e.limit, 500);
  assert.ok(reported && reported[1] === 500);
  assert.ok(inner.destroyed && outer.destroyed);
  assert.equal(Buffer.concat(got).length, connectPacket().length + publish(100).length, 'nothing of the big packet was passed on');
});
