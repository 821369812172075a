/**
 * The C protocol core of the reference firmware, built and run on the host with gcc under
 * AddressSanitizer and UndefinedBehaviorSanitizer (firmware-bridge/firmware/Makefile
 * `test`): every shared vector (firmware-bridge/vectors.json), the MCU engine's behaviour on
 * a fake clock, and a fuzz loop of 10^6 random and mutated chunks. Also checks that the C
 * vector test really reads the vectors (a corrupted copy must fail) and that the AVR build
 * fits the ATmega328P with room for its stack.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildHil, hilPaths, runFirmwareHostTests } from '../../firmware-bridge/hil/harness.ts';
import { hilAvailable } from './pty-link.ts';

function exec(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { maxBuffer: 8 << 20, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

test('C core: vectors, engine and fuzz under ASan/UBSan', { timeout: 120_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const out = await runFirmwareHostTests(1_000_000);
  const line = (suite: string) => out.split('\n').find((l) => l.startsWith(`${suite}: `) && / passed, \d+ failed$/.test(l));
  for (const suite of ['vectors', 'mcu', 'fuzz']) {
    const l = line(suite);
    assert.ok(l, `no summary line for ${suite} in:\n${out}`);
    const [, passed, failed] = /(\d+) passed, (\d+) failed/.exec(l!)!;
    assert.equal(Number(failed), 0, l);
    assert.ok(Number(passed) > 100, `${suite} ran only ${passed} checks`);
  }
  const fuzz = /fuzz: (\d+) chunks, (\d+) bytes, (\d+) frames accepted/.exec(out);
  assert.ok(fuzz, 'fuzz summary missing');
  assert.ok(Number(fuzz![1]) >= 1_000_000, 'fewer than 10^6 fuzz chunks');
  const vec = /vectors: (\d+) crc, (\d+) cobs, (\d+) frames, (\d+) invalid, (\d+) streams/.exec(out);
  assert.ok(vec && Number(vec[3]) >= 20 && Number(vec[4]) >= 20, `vector counts: ${vec?.[0]}`);
});

test('C vector test fails on a corrupted vectors file', { timeout: 60_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const bin = path.join(hilPaths().firmwareDir, 'build', 'host', 'test_vectors');
  if (!fs.existsSync(bin)) await runFirmwareHostTests(1000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keel-vectors-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const vectors = JSON.parse(fs.readFileSync(path.join(hilPaths().firmwareDir, '..', 'vectors.json'), 'utf8')) as {
    frames: Array<{ rawHex: string }>;
    invalid: Array<{ error: string }>;
  };
  // One flipped nibble in a frame's CRC, and one invalid frame claiming the wrong error kind.
  const raw = vectors.frames[2]!.rawHex;
  vectors.frames[2]!.rawHex = raw.slice(0, -1) + (raw.at(-1) === '0' ? '1' : '0');
  vectors.invalid[0]!.error = vectors.invalid[0]!.error === 'crc' ? 'cobs' : 'crc';
  const file = path.join(dir, 'vectors.json');
  fs.writeFileSync(file, JSON.stringify(vectors));
  const bad = await exec(bin, [file]);
  assert.equal(bad.code, 1, bad.out);
  assert.match(bad.out, /vectors: \d+ passed, [1-9]\d* failed/);
  const good = await exec(bin, [path.join(hilPaths().firmwareDir, '..', 'vectors.json')]);
  assert.equal(good.code, 0, good.out);
  const missing = await exec(bin, [path.join(dir, 'nope.json')]);
  assert.equal(missing.code, 2, 'a missing vectors file must not pass');
});

test('AVR build fits the ATmega328P with stack to spare', { timeout: 120_000 }, async (t) => {
  if (!hilAvailable(t)) return;
  const p = await buildHil();
  const size = await exec('avr-size', ['-A', p.elf]);
  assert.equal(size.code, 0, size.out);
  const section = (name: string) => Number(new RegExp(`^\\${name}\\s+(\\d+)`, 'm').exec(size.out)?.[1] ?? 0);
  const flash = section('.text') + section('.data');
  const ram = section('.data') + section('.bss') + section('.noinit');
  assert.ok(flash > 1000 && flash < 32 * 1024 - 512, `flash ${flash} bytes`);
  // 2048 bytes of SRAM; the deepest call chain (receive -> NACK -> COBS -> UART queue, plus
  // an interrupt) needs about 160 bytes of stack: keep at least 384 free.
  assert.ok(ram <= 2048 - 384, `static RAM ${ram} bytes leaves too little stack`);
});
