/**
 * Configuration checks of the firmware bridge that need the whole config: each bridge
 * source and actuator on its own, and the entries that share a port agreeing with each
 * other (one port, one baud rate, one owner per output, no serial driver on the same tty).
 * Called by runtime/config/load.ts with the other cross-checks.
 */
import type { ConfigIssue } from '../runtime/errors.ts';
import type { KeelConfig } from '../runtime/config/schema.ts';
import { bridgeSourceIssues } from './source.ts';
import { bridgeActuatorIssues } from './actuator.ts';

/** Every bridge problem of a schema-valid config, with config paths. */
export function bridgeIssues(c: Pick<KeelConfig, 'sources' | 'actuators'>): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const add = (path: string, message: string) => issues.push({ path, message });
  const ports = new Map<string, { at: string; baudRate: number }>();
  const serialPaths = new Map<string, string>();
  c.sources.forEach((s, i) => s.type === 'serial' && serialPaths.set(s.path, `sources[${i}]`));
  c.actuators.forEach((a, i) => a.type === 'serial' && serialPaths.set(a.path, `actuators[${i}]`));

  const claimPort = (path: string, baudRate: number, at: string) => {
    const serial = serialPaths.get(path);
    if (serial) add(`${at}.path`, `${path} is also used by the serial driver of ${serial}; one port cannot carry both`);
    const first = ports.get(path);
    if (!first) ports.set(path, { at, baudRate });
    else if (first.baudRate !== baudRate) add(`${at}.baudRate`, `${baudRate} differs from the ${first.baudRate} baud of ${first.at} on the same port ${path}`);
  };

  c.sources.forEach((s, i) => {
    if (s.type !== 'bridge') return;
    const at = `sources[${i}]`;
    for (const x of bridgeSourceIssues(s)) add(x.path ? `${at}.${x.path}` : at, x.message);
    claimPort(s.path, s.baudRate ?? 115200, at);
  });
  const outputs = new Map<string, string>();
  c.actuators.forEach((a, i) => {
    if (a.type !== 'bridge') return;
    const at = `actuators[${i}]`;
    for (const x of bridgeActuatorIssues(a)) add(x.path ? `${at}.${x.path}` : at, x.message);
    claimPort(a.path, a.baudRate ?? 115200, at);
    const key = `${a.path}\0${a.output}`;
    const other = outputs.get(key);
    if (other) add(`${at}.output`, `output ${a.output} of the MCU on ${a.path} is already driven by ${other}`);
    else outputs.set(key, at);
  });
  return issues;
}
