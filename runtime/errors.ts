/**
 * keel's error hierarchy: one root class with stable string codes.
 *
 * Callers branch on `code` (never on the message) and on the `retryable` flag for
 * transient IO failures. Bad arguments to functions are plain `TypeError`/`RangeError`
 * naming the parameter; `KeelError` is for conditions a user or the world caused.
 */

/** Stable error codes. Append only; never rename, tests and operators rely on them. */
export type KeelErrorCode =
  | 'KEEL_E_CONFIG'            // configuration file missing, unparsable or invalid
  | 'KEEL_E_MODEL_LOAD'        // model file missing, unreadable, not ONNX
  | 'KEEL_E_MODEL_HASH'        // model file does not match its pinned SHA-256
  | 'KEEL_E_MODEL_IO'          // configured tensor names/shapes/dtypes disagree with the model
  | 'KEEL_E_INFERENCE'         // session.run failed
  | 'KEEL_E_SERIAL_OPEN'       // serial port missing, busy or not permitted
  | 'KEEL_E_SERIAL_IO'         // serial port failed or vanished while running
  | 'KEEL_E_GPIO'              // GPIO line missing, taken or failing
  | 'KEEL_E_REPLAY'            // replay file missing or malformed
  | 'KEEL_E_POLICY'            // policy module failed to load, threw, or ran too long
  | 'KEEL_E_ACTUATOR'          // an actuator could not be driven
  | 'KEEL_E_SAFETY'            // watchdog fault
  | 'KEEL_E_USAGE'             // CLI misuse
  | 'KEEL_E_LEDGER_FORMAT'     // a ledger format (checkpoint, signed note, proof, witness body) is malformed
  | 'KEEL_E_LEDGER_VERIFY'     // a well-formed signature or proof does not verify
  | 'KEEL_E_KEY'               // a key file is missing, unreadable, exposed, malformed or of the wrong type
  | 'KEEL_E_LEDGER_CORRUPT'    // a stored ledger record, index entry or hash fails its checks (names index and file)
  | 'KEEL_E_LEDGER_FULL'       // the ledger store hit its disk bound or the disk is full (retryable)
  | 'KEEL_E_LEDGER_IO'         // the ledger store's files failed (fsync, EIO); it refuses writes until reopened
  | 'KEEL_E_LEDGER_PRUNED'     // a ledger record was pruned (its hashes are kept, its bytes are not)
  | 'KEEL_E_LEDGER_LOCKED'     // the ledger store is open for writing by another live process
  | 'KEEL_E_LEDGER_CLOSED'     // the ledger store was closed
  | 'KEEL_E_LEDGER_READONLY'   // the ledger store was opened read-only (repair: false)
  | 'KEEL_E_LEDGER_DIR'        // no ledger store in the directory, a foreign directory, or a newer format
  | 'KEEL_E_WIRE'              // a fleet message (batch, token, envelope, ack) is malformed or oversized
  | 'KEEL_E_AUTH'              // a token, envelope or batch signature is forged, expired, replayed or by an unknown key
  | 'KEEL_E_SYNC'              // the device's sync link failed (retryable)
  | 'KEEL_E_FLEET'             // the fleet (broker, registry, database) failed
  | 'KEEL_E_FORK'              // two valid checkpoints of one device are inconsistent
  | 'KEEL_E_NOTIFY'            // systemd could not be notified (sd_notify: READY, WATCHDOG, STOPPING)
  | 'KEEL_E_BRIDGE';           // the firmware bridge link failed or the MCU misbehaved

/** Root of every error keel raises on purpose. */
export class KeelError extends Error {
  /** Stable identifier, e.g. `KEEL_E_MODEL_HASH`. */
  readonly code: KeelErrorCode;
  /** True when retrying the same operation later may succeed (port unplugged, busy). */
  readonly retryable: boolean;

  constructor(code: KeelErrorCode, message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

/** One problem found in a configuration file, located by its path (`pipelines[0].model.path`). */
export interface ConfigIssue {
  path: string;
  message: string;
}

/** The configuration is invalid; `issues` holds every problem found, not just the first. */
export class ConfigError extends KeelError {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[], file?: string) {
    const head = file ? `invalid configuration ${file}` : 'invalid configuration';
    super('KEEL_E_CONFIG', `${head}:\n${issues.map((i) => `  ${i.path || '(root)'}: ${i.message}`).join('\n')}`);
    this.issues = issues;
  }
}

/** Model loading, pinning or tensor-mapping failures; `issues` locates each in the config. */
export class ModelError extends KeelError {
  readonly issues: ConfigIssue[];
  constructor(code: KeelErrorCode, message: string, options: { cause?: unknown; retryable?: boolean; issues?: ConfigIssue[] } = {}) {
    super(code, message, options);
    this.issues = options.issues ?? [];
  }
}

/** A driver (serial, GPIO, replay, actuator) failed. */
export class DriverError extends KeelError {}

/** A policy module failed to load, threw, or exceeded its time budget. */
export class PolicyError extends KeelError {}

/** Returns `err` as an Error, wrapping anything else that was thrown. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
