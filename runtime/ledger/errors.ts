/**
 * Errors of the ledger's public formats (docs/ledger.md). Callers branch on `code`:
 * - `KEEL_E_LEDGER_FORMAT`: the bytes are not a well-formed checkpoint, signed note, proof or
 *   witness body (a parser refused them);
 * - `KEEL_E_LEDGER_VERIFY`: the input is well formed but a signature or Merkle proof does not
 *   verify, or no trusted key signed it;
 * - `KEEL_E_KEY`: a key file is missing, unreadable, readable by others, malformed, or holds a
 *   key that is not Ed25519.
 * Bad arguments (wrong types, negative sizes) stay plain `TypeError`/`RangeError`.
 */
import { KeelError } from '../errors.ts';

/** A ledger format was malformed; `format` names which one (`checkpoint`, `signed note`, ...). */
export class LedgerFormatError extends KeelError {
  /** The format being parsed, e.g. `checkpoint`, `signed note`, `tlog-proof`. */
  readonly format: string;
  constructor(format: string, message: string, options: { cause?: unknown } = {}) {
    super('KEEL_E_LEDGER_FORMAT', `malformed ${format}: ${message}`, options);
    this.format = format;
  }
}

/** A well-formed signature, note or proof failed verification. */
export class LedgerVerifyError extends KeelError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('KEEL_E_LEDGER_VERIFY', message, options);
  }
}

/** A device key file could not be used; `path` names the file. */
export class KeyFileError extends KeelError {
  /** The key file concerned. */
  readonly path: string;
  constructor(path: string, message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super('KEEL_E_KEY', message, options);
    this.path = path;
  }
}
