/** Shared test helpers. */
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

/** Whether an executable is on PATH. */
export function hasTool(name: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    if (!dir) return false;
    try {
      accessSync(path.join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Skips the test with an install hint when `tool` is missing; under CI=true a missing tool
 * fails the test instead. Returns false when the test must stop.
 */
export function requireTool(t: TestContext, tool: string, install: string): boolean {
  if (hasTool(tool)) return true;
  if (process.env.CI === 'true') throw new Error(`${tool} is required in CI: ${install}`);
  t.skip(`${tool} is not installed: ${install}`);
  return false;
}

/** Wall-clock limits in tests are multiplied by this: KEEL_TEST_TIME_SCALE (tools/arm64/test.sh sets it for emulated runs). */
export const TIME_SCALE = Math.max(1, Number(process.env.KEEL_TEST_TIME_SCALE) || 1);

/** Resolves when `cond()` (sync or async) holds, polling every `everyMs`; rejects after `timeoutMs` with `what`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000, everyMs = 10): Promise<void> {
  timeoutMs *= TIME_SCALE;
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
