/**
 * Structured JSON logs (pino). `keel run` logs to stdout; the demo's live view owns stdout,
 * so there logs go to stderr.
 */
import { pino, type Logger, type Level } from 'pino';

/** Creates the process logger at `level`, writing JSON lines to the given fd (1 or 2). */
export function createLogger(level: Level | 'silent', fd: 1 | 2 = 1): Logger {
  return pino({ level, base: { app: 'keel' }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ fd, sync: true }));
}
