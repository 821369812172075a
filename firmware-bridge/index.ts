/**
 * The host side of the firmware bridge (docs/firmware-bridge.md): wire codec, typed
 * messages, the link session, the shared-port hub, the runtime's sensor source and
 * actuator, a simulated MCU, in-memory links, and the `keel record` command.
 */
export {
  type Frame,
  type FrameErrorKind,
  type ChunkResult,
  type DecoderCounters,
  HEADER_BYTES,
  CRC_BYTES,
  MAX_PAYLOAD,
  MIN_RAW,
  MAX_RAW,
  MAX_ENCODED,
  MAX_WIRE,
  PROTOCOL_VERSION,
  FRAME_ERROR_KINDS,
  crc16,
  cobsEncode,
  cobsEncodeInto,
  cobsDecode,
  cobsDecodeInto,
  cobsMaxEncodedLength,
  encodeRaw,
  encodeFrame,
  decodeChunk,
  FrameDecoder,
} from './codec.ts';
export {
  type Direction,
  type Message,
  type OutputInfo,
  type HelloMsg,
  type HelloAckMsg,
  type SampleMsg,
  type SetMsg,
  type AckMsg,
  type NackMsg,
  type HeartbeatMsg,
  type TimesyncRequestMsg,
  type TimesyncReplyMsg,
  type ConfigMsg,
  type ErrorMsg,
  type PayloadResult,
  type FrameCheck,
  MessageType,
  TYPE_NAMES,
  NackReason,
  McuErrorCode,
  OutputKind,
  MAX_SAMPLE_VALUES,
  MAX_OUTPUTS,
  MAX_INPUTS,
  MAX_FIRMWARE_ID,
  MAX_ERROR_TEXT,
  nackReasonName,
  typeOf,
  directionOf,
  encodePayload,
  encodeMessage,
  decodePayload,
  checkFrame,
} from './messages.ts';
export { type TimeEstimate, McuTimeMap, TIMESYNC_KEEP, TIMESYNC_MAX_RTT_MS } from './mcu-time.ts';
export { duplexPair, DuplexOpener } from './duplex-link.ts';
export {
  type BridgeTiming,
  type BridgeSessionOptions,
  type McuInfo,
  type ChannelSamples,
  type BridgeStats,
  type BridgeState,
  type BridgeSessionEvents,
  type BridgeFailure,
  BRIDGE_DEFAULTS,
  BridgeSession,
  bridgeError,
} from './session.ts';
export { type BridgeLinkRequest, type BridgeLease, type BridgeHubDeps, BridgeHub } from './hub.ts';
export { type BridgeSourceDeps, type BridgeSourceOptions, BridgeSource, bridgeSourceIssues } from './source.ts';
export { type BridgeActuatorDeps, type BridgeActuatorOptions, type BridgeActuatorEvents, BridgeActuator, bridgeActuatorIssues, outputValue } from './actuator.ts';
export { bridgeIssues } from './config.ts';
export { type SimMcuOptions, type SimMcuFaults, type SimMcuStats, type SimMcuEvents, SimMcu } from './sim-mcu.ts';
export { type RecordIo, type RecordDeps, type RecordFormat, type SampleFileStats, type RecordSummary, RECORD_HELP, SampleFile, cmdRecord } from './record.ts';
