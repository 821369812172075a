/**
 * The contract between keel and a user policy module. Policy authors write
 *
 * ```ts
 * import type { PolicyInput, PolicyResult } from 'keel/runtime/decisions/policy-types.ts';
 * export default function decide(input: PolicyInput): PolicyResult { ... }
 * ```
 *
 * This file holds types only (no runtime code), so importing it costs a policy nothing.
 */

/** What a policy sees on every call: one pipeline's latest outputs, sensors and rule states. */
export interface PolicyInput {
  /** Pipeline name. */
  pipeline: string;
  /** Time of the decision (the window's newest sample), epoch ms. */
  t: number;
  /** Model outputs by name, as plain number arrays. */
  outputs: Record<string, number[]>;
  /** Latest sensor values, keyed "source.channel". */
  sensors: Record<string, number>;
  /** Current state of each declarative rule of the pipeline (true = active). */
  states: Record<string, boolean>;
}

/** One actuator command returned by a policy. */
export interface PolicyAction {
  /** Name of a configured actuator. */
  actuator: string;
  /** Value to drive: a finite number, a boolean, or a string (serial actuators). */
  value: number | boolean | string;
}

/** What a policy returns; `{}` means "nothing to do". Unknown keys are rejected. */
export interface PolicyResult {
  /** Actions applied in order (unless the runtime holds the safe state). */
  actions?: PolicyAction[];
  /** Free text recorded with the decision. */
  note?: string;
}

/** The shape of a policy module's default export. */
export type PolicyDecide = (input: PolicyInput) => PolicyResult | Promise<PolicyResult>;
