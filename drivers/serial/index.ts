/**
 * Serial drivers: the port boundary (real and simulated), incremental parsers, a supervised
 * port that reopens after unplugs, the serial sensor source and the serial actuator, and a
 * socat pseudo-terminal pair for tests and hardware-in-the-loop harnesses.
 */
export {
  type SerialLinkOptions,
  type SerialParity,
  type SerialConnection,
  type SerialOpener,
  type MockPortOptions,
  SystemSerialOpener,
  MockSerialOpener,
  linkIssues,
  openError,
} from './link.ts';
export {
  type RecordValues,
  type RecordSink,
  type ParserCounters,
  type RecordParser,
  type LineParserOptions,
  type BinaryField,
  type BinaryFieldType,
  type BinaryLayout,
  DEFAULT_MAX_LINE_BYTES,
  BINARY_FIELD_SIZES,
  parseNumber,
  CsvParser,
  JsonLinesParser,
  KeyValueParser,
  BinaryRecordParser,
  formatIssues,
  createParser,
} from './parse.ts';
export {
  type ReconnectPolicy,
  type SupervisedPortHooks,
  type SupervisedPortOptions,
  type SupervisedPortStats,
  DEFAULT_RECONNECT,
  RECONNECT_JITTER,
  MAX_WRITE_BACKLOG,
  SupervisedPort,
  reconnectIssues,
} from './supervisor.ts';
export { type SerialSourceDeps, type SerialSourceOptions, SerialSource, serialSourceIssues } from './source.ts';
export {
  type Rendered,
  type SerialActuatorDeps,
  type SerialActuatorOptions,
  type SerialActuatorStats,
  type SerialActuatorEvents,
  MAX_RENDERED_BYTES,
  OutputTemplate,
  SerialActuator,
  decodeHex,
  serialActuatorIssues,
} from './actuator.ts';
export { type PtyPairOptions, PtyPair, socatPath } from './pty-pair.ts';
