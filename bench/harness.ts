/**
 * A runtime for benchmarks: the config's first pipeline fed by a PushSource, on simulated
 * GPIO and a mock serial opener, with a silent logger and no HTTP endpoint.
 */
import { pino } from 'pino';
import { SimGpioBackend } from '../drivers/gpio/index.ts';
import { PushSource } from '../drivers/push.ts';
import { MockSerialOpener } from '../drivers/serial/index.ts';
import type { Actuator } from '../drivers/types.ts';
import { SystemClock } from '../runtime/clock.ts';
import type { KeelConfig } from '../runtime/config/schema.ts';
import { Runtime } from '../runtime/runtime.ts';

/** A built (not started) runtime on `config`'s first pipeline, and the source that feeds it. */
export async function pushRuntime(config: KeelConfig, baseDir: string, actuators: Record<string, Actuator> = {}): Promise<{ rt: Runtime; push: PushSource; clock: SystemClock }> {
  const p = config.pipelines[0];
  config.pipelines = [p];
  config.sources = config.sources.filter((s) => s.name === p.source);
  const clock = new SystemClock();
  const push = new PushSource(p.source, { clock });
  const rt = await Runtime.create(config, {
    clock,
    logger: pino({ level: 'silent' }),
    baseDir,
    serial: new MockSerialOpener(),
    gpio: new SimGpioBackend({ clock }),
    sources: { [p.source]: push },
    actuators,
    noHttp: true,
  });
  return { rt, push, clock };
}
