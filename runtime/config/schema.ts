/**
 * The one schema of keel's configuration file. The TypeScript types are derived from it
 * (`Static<>`), and `docs/keel.schema.json` is generated from it for editors.
 *
 * Conventions: durations end in `Ms` (milliseconds), rates in `Hz`; every object rejects
 * unknown keys; every default is written here with `default:` and applied by the loader.
 */
import { Type, type Static, type TObject, type TSchema } from '@sinclair/typebox';

const Strict = { additionalProperties: false } as const;

/** A union of objects told apart by their `type` (or other) tag, validated branch-wise. */
function Tagged<T extends TObject[]>(tag: string, variants: [...T], description?: string) {
  return Type.Unsafe<Static<T[number]>>({
    type: 'object',
    required: [tag],
    oneOf: variants,
    discriminator: { propertyName: tag },
    ...(description ? { description } : {}),
  });
}

const Name = Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_-]{0,63}$', description: 'identifier: letters, digits, _ and -' });
const PositiveMs = (description: string, dflt?: number) =>
  Type.Integer({ minimum: 1, maximum: 86_400_000, description, ...(dflt !== undefined ? { default: dflt } : {}) });

// ---------------------------------------------------------------- serial framing and formats

const SerialLink = {
  path: Type.String({ minLength: 1, description: 'device path, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...' }),
  baudRate: Type.Integer({ minimum: 50, maximum: 4_000_000, default: 115200 }),
  dataBits: Type.Union([Type.Literal(5), Type.Literal(6), Type.Literal(7), Type.Literal(8)], { default: 8 }),
  // mark/space parity and 1.5 stop bits exist on some UARTs, but serialport's Linux binding rejects them.
  parity: Type.Union(['none', 'even', 'odd'].map((p) => Type.Literal(p)), { default: 'none' }),
  stopBits: Type.Union([Type.Literal(1), Type.Literal(2)], { default: 1 }),
  rtscts: Type.Boolean({ default: false, description: 'hardware flow control' }),
};

const Reconnect = Type.Object(
  {
    initialMs: PositiveMs('first reopen delay', 250),
    maxMs: PositiveMs('longest reopen delay', 10_000),
    factor: Type.Number({ minimum: 1, maximum: 10, default: 2 }),
  },
  { ...Strict, description: 'reopen with exponential backoff after the port fails or vanishes' },
);

const CsvFormat = Type.Object(
  {
    type: Type.Literal('csv'),
    columns: Type.Array(Name, { minItems: 1, description: 'channel name of each column, in order' }),
    delimiter: Type.String({ minLength: 1, maxLength: 1, default: ',' }),
  },
  Strict,
);
const JsonLinesFormat = Type.Object(
  {
    type: Type.Literal('jsonl'),
    fields: Type.Optional(Type.Array(Name, { minItems: 1, description: 'numeric fields to keep (default: all numeric fields)' })),
  },
  Strict,
);
const KeyValueFormat = Type.Object(
  {
    type: Type.Literal('kv'),
    separator: Type.String({ minLength: 1, maxLength: 1, default: '=' }),
    fields: Type.Optional(Type.Array(Name, { minItems: 1 })),
  },
  Strict,
);
const BinaryFieldType = Type.Union(
  ['int8', 'uint8', 'int16le', 'int16be', 'uint16le', 'uint16be', 'int32le', 'int32be', 'uint32le', 'uint32be', 'float32le', 'float32be'].map((t) =>
    Type.Literal(t),
  ),
);
const BinaryFormat = Type.Object(
  {
    type: Type.Literal('binary'),
    recordSize: Type.Integer({ minimum: 1, maximum: 4096, description: 'bytes per record, including any sync bytes' }),
    sync: Type.Optional(Type.String({ pattern: '^([0-9a-fA-F]{2})+$', description: 'hex bytes that start every record, used to resynchronize' })),
    fields: Type.Array(
      Type.Object(
        {
          name: Name,
          type: BinaryFieldType,
          offset: Type.Integer({ minimum: 0, description: 'byte offset within the record' }),
          scale: Type.Number({ default: 1 }),
        },
        Strict,
      ),
      { minItems: 1 },
    ),
  },
  Strict,
);
/** How bytes on a serial line become samples. */
export const SerialFormat = Tagged('type', [CsvFormat, JsonLinesFormat, KeyValueFormat, BinaryFormat]);

// ---------------------------------------------------------------- GPIO

/** A GPIO line named by its chip label and either its offset or its line name. */
export const GpioLine = Type.Object(
  {
    chip: Type.String({ minLength: 1, description: 'gpiochip label (e.g. pinctrl-bcm2711, pinctrl-rp1) or gpiochipN' }),
    offset: Type.Optional(Type.Integer({ minimum: 0, maximum: 1023, description: 'line offset within the chip' })),
    name: Type.Optional(Type.String({ minLength: 1, description: 'line name, e.g. GPIO17' })),
  },
  { ...Strict, description: 'give offset or name (never a global sysfs number: its base differs per kernel)' },
);

// ---------------------------------------------------------------- synthetic signals

const Sine = Type.Object(
  { kind: Type.Literal('sine'), freqHz: Type.Number({ exclusiveMinimum: 0 }), amplitude: Type.Number({ default: 1 }), phase: Type.Number({ default: 0 }) },
  Strict,
);
const Noise = Type.Object({ kind: Type.Literal('noise'), amplitude: Type.Number({ minimum: 0, description: 'standard deviation' }) }, Strict);
const Constant = Type.Object({ kind: Type.Literal('constant'), value: Type.Number() }, Strict);
const Steps = Type.Object(
  { kind: Type.Literal('steps'), levels: Type.Array(Type.Number(), { minItems: 1 }), everyMs: PositiveMs('time at each level') },
  Strict,
);
const Ramp = Type.Object({ kind: Type.Literal('ramp'), from: Type.Number(), to: Type.Number(), overMs: PositiveMs('ramp duration') }, Strict);
const BasicSignal = Tagged('kind', [Sine, Noise, Constant, Steps, Ramp]);
const Sequence = Type.Object(
  {
    kind: Type.Literal('sequence'),
    segments: Type.Array(
      Type.Object({ durationMs: PositiveMs('segment length'), signals: Type.Array(BasicSignal, { minItems: 1 }) }, Strict),
      { minItems: 1 },
    ),
    loop: Type.Boolean({ default: true }),
  },
  Strict,
);
/** One component of a synthetic channel; a channel's value is the sum of its components. */
export const Signal = Tagged('kind', [Sine, Noise, Constant, Steps, Ramp, Sequence]);

// ---------------------------------------------------------------- sources

const SourceBase = { name: Name };

const SerialSource = Type.Object(
  {
    ...SourceBase,
    type: Type.Literal('serial'),
    ...SerialLink,
    format: SerialFormat,
    maxLineBytes: Type.Integer({ minimum: 16, maximum: 1_048_576, default: 1024, description: 'longer lines are counted and skipped' }),
    reconnect: Type.Optional(Reconnect),
  },
  Strict,
);
const ReplaySource = Type.Object(
  {
    ...SourceBase,
    type: Type.Literal('replay'),
    file: Type.String({ minLength: 1, description: 'CSV (header row), JSON lines, or 16-bit PCM WAV; relative to the config file' }),
    timing: Type.Union([Type.Literal('original'), Type.Literal('fast')], { default: 'original', description: 'original timing (times speed) or as fast as possible' }),
    speed: Type.Number({ exclusiveMinimum: 0, maximum: 1000, default: 1 }),
    loop: Type.Boolean({ default: false }),
    timeField: Type.Optional(Type.String({ minLength: 1, description: 'CSV column / JSON field holding the sample time' })),
    timeUnit: Type.Union([Type.Literal('s'), Type.Literal('ms'), Type.Literal('us')], { default: 'ms' }),
    rateHz: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000, description: 'sample rate when the file has no time field' })),
    channels: Type.Optional(Type.Array(Name, { minItems: 1, description: 'WAV: names of the channels (default ch0, ch1, ...)' })),
  },
  Strict,
);
const SyntheticSource = Type.Object(
  {
    ...SourceBase,
    type: Type.Literal('synthetic'),
    rateHz: Type.Number({ exclusiveMinimum: 0, maximum: 100_000 }),
    seed: Type.Integer({ default: 1, description: 'seed of the noise generator, for reproducible runs' }),
    batchMs: Type.Integer({ minimum: 1, maximum: 1000, default: 10, description: 'emit due samples in batches this often' }),
    channels: Type.Record(Name, Type.Array(Signal, { minItems: 1 }), { minProperties: 1 }),
  },
  Strict,
);
const GpioSource = Type.Object(
  {
    ...SourceBase,
    type: Type.Literal('gpio'),
    line: GpioLine,
    edge: Type.Union([Type.Literal('rising'), Type.Literal('falling'), Type.Literal('both')], { default: 'both' }),
    debounceMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 10 }),
    activeLow: Type.Boolean({ default: false }),
    channel: Type.Optional(Name),
  },
  Strict,
);
// Firmware bridge (docs/firmware-bridge.md). Sources and actuators naming the same path share
// one port and one session; heartbeatMs/linkTimeoutMs have no schema default on purpose: the
// strictest value stated by the entries sharing a port applies (default 250 / 1000 ms).
const BridgeLink = {
  path: Type.String({ minLength: 1, description: 'serial device of the MCU, e.g. /dev/ttyACM0 or /dev/serial/by-id/...; entries naming one path share one link' }),
  baudRate: Type.Integer({ minimum: 50, maximum: 4_000_000, default: 115200 }),
};
const BridgeChannel = Type.Object(
  {
    mcuChannel: Type.Integer({ minimum: 0, maximum: 255, description: 'MCU input channel: analog 0..A-1, then digital A..A+D-1' }),
    name: Name,
    rateHz: Type.Integer({ minimum: 1, maximum: 65535, description: 'samples per second asked of the MCU' }),
    scale: Type.Number({ default: 1, description: 'value = raw * scale + offset (raw: ADC counts, or 0/1 for digital inputs)' }),
    offset: Type.Number({ default: 0 }),
  },
  Strict,
);
const BridgeSource = Type.Object(
  {
    ...SourceBase,
    type: Type.Literal('bridge'),
    ...BridgeLink,
    channels: Type.Array(BridgeChannel, { minItems: 1 }),
    heartbeatMs: Type.Optional(Type.Integer({ minimum: 10, maximum: 60_000, description: 'host HEARTBEAT period, ms (default 250)' })),
    linkTimeoutMs: Type.Optional(Type.Integer({ minimum: 50, maximum: 600_000, description: 'link lost (a fault) after this long without a valid MCU frame, ms (default 1000)' })),
  },
  Strict,
);
/** A sensor source. */
export const Source = Tagged('type', [SerialSource, ReplaySource, SyntheticSource, GpioSource, BridgeSource]);

// ---------------------------------------------------------------- actuators

const GpioActuator = Type.Object(
  {
    name: Name,
    type: Type.Literal('gpio'),
    line: GpioLine,
    activeLow: Type.Boolean({ default: false }),
    initial: Type.Union([Type.Literal(0), Type.Literal(1)], { default: 0 }),
    safe: Type.Union([Type.Literal(0), Type.Literal(1)], { description: 'level driven in the safe state' }),
  },
  Strict,
);
const SerialActuator = Type.Object(
  {
    name: Name,
    type: Type.Literal('serial'),
    ...SerialLink,
    template: Type.String({ default: '{value}\n', description: 'text written per action; {value}, {decision}, {pipeline}, {time} and model outputs like {score} or {score:.2f}' }),
    encoding: Type.Union([Type.Literal('text'), Type.Literal('hex')], { default: 'text', description: 'hex: the rendered template is hex digits sent as bytes' }),
    safe: Type.Optional(Type.String({ description: 'rendered with value "safe" and written when the safe state is driven' })),
    reconnect: Type.Optional(Reconnect),
  },
  Strict,
);
const BridgeActuator = Type.Object(
  {
    name: Name,
    type: Type.Literal('bridge'),
    ...BridgeLink,
    output: Type.Integer({ minimum: 0, maximum: 255, description: 'MCU output index (the order of its HELLO_ACK), not the pin number' }),
    safeValue: Type.Optional(Type.Integer({ minimum: 0, maximum: 255, description: "value driven in the safe state (default: the MCU's own safe value for this output)" })),
  },
  Strict,
);
/** An output the runtime drives. */
export const Actuator = Tagged('type', [GpioActuator, SerialActuator, BridgeActuator]);

// ---------------------------------------------------------------- pipelines

const DType = Type.Union(['float32', 'float64', 'int32', 'int64', 'int8', 'uint8'].map((t) => Type.Literal(t)));
const Dim = Type.Integer({ minimum: -1, maximum: 1 << 24, description: 'dimension; -1 (or a symbolic dimension in the model) for a dynamic one' });

const Window = Type.Object(
  {
    size: Type.Integer({ minimum: 1, maximum: 1 << 20, description: 'samples per window' }),
    hop: Type.Optional(Type.Integer({ minimum: 1, maximum: 1 << 20, description: 'samples between window starts (default: size)' })),
    channels: Type.Array(Name, { minItems: 1, description: 'source channels, in the order they fill the tensor' }),
    layout: Type.Union([Type.Literal('channels-first'), Type.Literal('channels-last')], {
      default: 'channels-first',
      description: 'channels-first: [c0 samples..., c1 samples...]; channels-last: interleaved',
    }),
  },
  Strict,
);

const Transform = Tagged('type', [
  Type.Object({ type: Type.Literal('scale'), factor: Type.Number(), offset: Type.Number({ default: 0 }) }, Strict),
  Type.Object(
    { type: Type.Literal('normalize'), mean: Type.Optional(Type.Array(Type.Number(), { minItems: 1 })), std: Type.Optional(Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1 })) },
    Strict,
  ),
  Type.Object({ type: Type.Literal('fft'), hann: Type.Boolean({ default: true }), dropDc: Type.Boolean({ default: false }) }, Strict),
]);

const ModelInput = Type.Object(
  {
    shape: Type.Array(Dim, { maxItems: 8, description: '[] for a scalar' }),
    dtype: Type.Optional(DType),
    value: Type.Optional(
      Type.Union([Type.Number(), Type.Array(Type.Number(), { minItems: 1 })], {
        description: 'constant fed on every run (e.g. a sample rate); one number fills every element',
      }),
    ),
  },
  Strict,
);
const StateBinding = Type.Object(
  {
    input: Type.String({ minLength: 1, description: 'model input that receives the state' }),
    output: Type.String({ minLength: 1, description: 'model output whose value becomes the next state' }),
    shape: Type.Array(Type.Integer({ minimum: 1 }), { minItems: 1, maxItems: 8 }),
    dtype: Type.Optional(DType),
    initial: Type.Number({ default: 0, description: 'value of every element after a reset' }),
  },
  Strict,
);
const Model = Type.Object(
  {
    path: Type.String({ minLength: 1, description: '.onnx file, relative to the config file' }),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'pinned SHA-256 of the model file (lowercase hex); a mismatch refuses to load' }),
    input: Type.String({ minLength: 1, description: 'name of the model input fed with the window' }),
    inputs: Type.Record(Type.String({ minLength: 1 }), ModelInput, { description: 'shape/dtype of the window input and of any constant inputs, checked against the model' }),
    outputs: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'outputs to fetch (default: all but state outputs)' })),
    state: Type.Optional(Type.Array(StateBinding)),
    stateReset: Type.Optional(
      Type.Object(
        {
          everyRuns: Type.Optional(Type.Integer({ minimum: 1 })),
          afterGapMs: Type.Optional(PositiveMs('reset when no window arrived for this long')),
          onFault: Type.Boolean({ default: true }),
        },
        Strict,
      ),
    ),
    threads: Type.Optional(
      Type.Object({ intraOp: Type.Integer({ minimum: 1, maximum: 64, default: 1 }), interOp: Type.Integer({ minimum: 1, maximum: 64, default: 1 }) }, Strict),
    ),
    warmup: Type.Integer({ minimum: 0, maximum: 1000, default: 3 }),
    executionProviders: Type.Array(Type.Union([Type.Literal('cpu'), Type.Literal('xnnpack')]), { default: ['cpu'] }),
  },
  Strict,
);

const Action = Type.Object(
  {
    actuator: Name,
    value: Type.Union([Type.Number(), Type.Boolean(), Type.String()]),
  },
  Strict,
);

const Condition = Type.Object(
  {
    output: Type.Optional(Type.String({ minLength: 1, description: 'model output to test' })),
    sensor: Type.Optional(Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_-]*\\.[A-Za-z][A-Za-z0-9_-]*$', description: 'latest value of source.channel' })),
    index: Type.Integer({ minimum: 0, default: 0, description: 'element of the output tensor' }),
    above: Type.Optional(Type.Number()),
    below: Type.Optional(Type.Number()),
    hysteresis: Type.Number({ minimum: 0, default: 0, description: 'how far back across the threshold before the rule exits' }),
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'class labels of the output, by index (argmax)' })),
    is: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'active when the argmax label is one of these' })),
    minScore: Type.Optional(Type.Number({ description: 'argmax score must reach this as well' })),
  },
  { ...Strict, description: 'one of: output/sensor with above and/or below; or output with labels and is' },
);

const Rule = Type.Object(
  {
    name: Name,
    when: Condition,
    debounce: Type.Optional(
      Type.Object(
        {
          count: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000, description: 'consecutive evaluations that must agree' })),
          ms: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000, description: 'time the condition must hold' })),
        },
        Strict,
      ),
    ),
    cooldownMs: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 0, description: 'minimum time between two entries' }),
    onEnter: Type.Array(Action, { default: [] }),
    onExit: Type.Array(Action, { default: [] }),
  },
  Strict,
);

const Policy = Type.Object(
  {
    module: Type.String({ minLength: 1, description: 'local .ts/.js file exporting default function decide(input); relative to the config file' }),
    timeoutMs: Type.Integer({ minimum: 1, maximum: 60_000, default: 50 }),
  },
  Strict,
);

const PipelineWatchdog = Type.Object(
  {
    silenceMs: Type.Optional(PositiveMs('fault when the source delivers nothing for this long')),
    overrunMs: Type.Optional(PositiveMs('fault when one inference takes longer than this')),
  },
  Strict,
);

const Pipeline = Type.Object(
  {
    name: Name,
    source: Name,
    window: Window,
    transforms: Type.Array(Transform, { default: [] }),
    model: Model,
    rules: Type.Array(Rule, { default: [] }),
    policy: Type.Optional(Policy),
    watchdog: Type.Optional(PipelineWatchdog),
  },
  Strict,
);

// ---------------------------------------------------------------- runtime-wide

const Safety = Type.Object(
  {
    safeState: Type.Array(Action, { default: [], description: 'actions driven, in order, on any fault (after each actuator\'s own safe value)' }),
    silenceMs: PositiveMs('default sensor-silence limit', 2000),
    overrunMs: PositiveMs('default inference time limit', 1000),
    maxInferenceFailures: Type.Integer({ minimum: 1, maximum: 1000, default: 3, description: 'consecutive failures before a fault' }),
    recovery: Type.Union([Type.Literal('auto'), Type.Literal('manual')], { default: 'auto', description: 'auto: leave the safe state once healthy again' }),
    healthyForMs: PositiveMs('time without faults before an automatic recovery', 3000),
  },
  Strict,
);

const Http = Type.Object(
  {
    enabled: Type.Boolean({ default: true }),
    host: Type.String({ default: '127.0.0.1', description: 'bind address; keep it local unless a proxy guards it' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 9464, description: '0 picks a free port' }),
  },
  Strict,
);

const LedgerSection = Type.Object(
  {
    dir: Type.String({ minLength: 1, description: 'ledger directory, relative to the config file' }),
    key: Type.String({ minLength: 1, description: 'device key file (keel keygen), mode 0600' }),
    createKey: Type.Optional(
      Type.Boolean({
        default: false,
        description:
          'when the key file does not exist, keel run creates it (first start) and logs its verifier key; false: refuse to start until keel keygen made it. Never replaces an existing, unreadable or malformed key',
      }),
    ),
    origin: Type.Optional(Type.String({ minLength: 1, description: 'checkpoint origin (default: the key file name line, else device.name)' })),
    durability: Type.Union([Type.Literal('record'), Type.Literal('batch'), Type.Literal('interval')], {
      default: 'batch',
      description:
        'record: every record is appended and fsynced as it happens (concurrent ones share an fsync); batch: buffered records are appended and fsynced every flushMs; interval: appended every flushMs, fsynced at most intervalMs later',
    }),
    flushMs: Type.Integer({ minimum: 1, maximum: 60_000, default: 200, description: 'buffered records are appended at least this often' }),
    intervalMs: Type.Integer({ minimum: 1, maximum: 3_600_000, default: 1000 }),
    checkpointEveryRecords: Type.Integer({ minimum: 1, maximum: 100_000_000, default: 1000 }),
    checkpointEveryMs: Type.Integer({ minimum: 100, maximum: 86_400_000, default: 60_000 }),
    maxBytes: Type.Optional(Type.Integer({ minimum: 1_048_576, description: 'disk bound of the ledger, bytes' })),
    onFull: Type.Union([Type.Literal('drop-oldest'), Type.Literal('stop-recording')], {
      default: 'drop-oldest',
      description: 'at the disk bound: drop the oldest half of the stored records (a gap record says which) or keep the old ones and record nothing new (gap records when space returns)',
    }),
    maxBuffered: Type.Integer({ minimum: 16, maximum: 10_000_000, default: 100_000, description: 'records held in memory while the disk is failing; beyond it the oldest are dropped and a gap record says so' }),
  },
  { ...Strict, description: 'the signed, append-only log of every inference, decision, action and fault' },
);

const SyncSection = Type.Object(
  {
    broker: Type.String({ pattern: '^(mqtts?|wss?)://', description: 'fleet broker URL: mqtt://host:1883, mqtts://host:8883, ws://host/mqtt or wss://host/mqtt' }),
    caFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA certificate(s) the broker\'s TLS certificate must chain to (mqtts:// and wss:// only; default: the system CAs)' })),
    prefix: Type.String({ default: 'keel', description: 'MQTT topic prefix: <prefix>/<device.name>/...' }),
    fleet: Type.String({ minLength: 1, description: 'the fleet\'s cosigner verifier key (type 0x04, the contents of fleet.vkey), or "@<file>" holding it (relative to the config file)' }),
    audience: Type.Optional(Type.String({ minLength: 1, description: 'fleet name the connect token is issued for (default: the fleet key\'s name)' })),
    operators: Type.Array(Type.String({ minLength: 1 }), { default: [], description: 'verifier keys (type 0x01) of the operators whose signed commands this device accepts' }),
    tokenLifetimeS: Type.Integer({ minimum: 10, maximum: 3600, default: 600, description: 'lifetime of the connect token (a fresh one per connect), seconds' }),
    maxInFlight: Type.Integer({ minimum: 1, maximum: 64, default: 8, description: 'ledger batches sent and not yet acknowledged by the fleet' }),
    batchRecords: Type.Integer({ minimum: 1, maximum: 100_000, default: 10_000, description: 'most records in one batch' }),
    batchBytes: Type.Integer({ minimum: 1024, maximum: 4_194_304, default: 1_048_576, description: 'most record bytes in one batch (one record larger than this goes alone)' }),
    rateRecordsPerS: Type.Integer({ minimum: 1, maximum: 100_000_000, default: 20_000, description: 'average records sent per second (bursts up to one second\'s worth)' }),
    rateBytesPerS: Type.Integer({ minimum: 1024, maximum: 10_737_418_240, default: 8_388_608, description: 'average batch bytes sent per second (bursts up to one second\'s worth)' }),
    ackTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000, description: 'a batch not acknowledged this long after the broker took it is sent again (after a backoff)' }),
    reconnect: Type.Object(
      {
        initialMs: PositiveMs('first reconnect delay', 500),
        maxMs: PositiveMs('longest reconnect delay', 30_000),
        jitter: Type.Number({ minimum: 0, maximum: 1, default: 0.5, description: 'each delay is shortened by a random fraction up to this' }),
      },
      { ...Strict, default: {}, description: 'reconnect (and resend) with exponential backoff and jitter' },
    ),
    pruneDelivered: Type.Boolean({ default: true, description: 'delete records from the device once the fleet\'s cosignature covering them verifies' }),
    telemetry: Type.Object(
      {
        everyMs: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 0, description: 'send the latest output values this often (0: no telemetry)' }),
        outputs: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'outputs to send, as "output" or "pipeline.output" (default: every scalar output)' })),
      },
      { ...Strict, default: {}, description: 'signed live values (QoS 0, dropped while offline)' },
    ),
  },
  { ...Strict, description: 'store-and-forward of the ledger to a fleet over MQTT, status, telemetry and commands (needs a ledger section)' },
);

/** The whole configuration file. */
export const ConfigSchema = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    device: Type.Object({ name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$', default: 'keel-device' }) }, { ...Strict, default: {} }),
    gpio: Type.Object(
      {
        backend: Type.Union([Type.Literal('onoff'), Type.Literal('sim')], { default: 'onoff', description: 'sim: in-memory lines for tests and demos' }),
        sysfsRoot: Type.String({ default: '/sys/class/gpio' }),
      },
      { ...Strict, default: {} },
    ),
    sources: Type.Array(Source, { minItems: 1 }),
    actuators: Type.Array(Actuator, { default: [] }),
    pipelines: Type.Array(Pipeline, { minItems: 1 }),
    safety: Type.Object(Safety.properties, { ...Strict, default: {} }),
    http: Type.Object(Http.properties, { ...Strict, default: {} }),
    ledger: Type.Optional(LedgerSection),
    sync: Type.Optional(SyncSection),
    log: Type.Object(
      { level: Type.Union(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }) },
      { ...Strict, default: {} },
    ),
  },
  { ...Strict, title: 'keel configuration', description: 'keel runtime configuration (docs/keel.schema.json; generated by keel schema)' },
);

/** A validated configuration, defaults applied. */
export type KeelConfig = Static<typeof ConfigSchema>;
export type SourceConfig = KeelConfig['sources'][number];
export type SerialSourceConfig = Extract<SourceConfig, { type: 'serial' }>;
export type ReplaySourceConfig = Extract<SourceConfig, { type: 'replay' }>;
export type SyntheticSourceConfig = Extract<SourceConfig, { type: 'synthetic' }>;
export type GpioSourceConfig = Extract<SourceConfig, { type: 'gpio' }>;
export type BridgeSourceConfig = Extract<SourceConfig, { type: 'bridge' }>;
export type ActuatorConfig = KeelConfig['actuators'][number];
export type GpioActuatorConfig = Extract<ActuatorConfig, { type: 'gpio' }>;
export type SerialActuatorConfig = Extract<ActuatorConfig, { type: 'serial' }>;
export type BridgeActuatorConfig = Extract<ActuatorConfig, { type: 'bridge' }>;
export type SerialFormatConfig = Static<typeof SerialFormat>;
export type SignalConfig = Static<typeof Signal>;
export type GpioLineConfig = Static<typeof GpioLine>;
export type PipelineConfig = KeelConfig['pipelines'][number];
export type ModelConfig = PipelineConfig['model'];
export type TransformConfig = PipelineConfig['transforms'][number];
export type RuleConfig = PipelineConfig['rules'][number];
export type ActionConfig = RuleConfig['onEnter'][number];
export type PolicyConfig = NonNullable<PipelineConfig['policy']>;
export type SafetyConfig = KeelConfig['safety'];
export type ReconnectConfig = Static<typeof Reconnect>;
export type LedgerConfig = Static<typeof LedgerSection>;
export type SyncConfig = Static<typeof SyncSection>;

/**
 * The JSON Schema as published (docs/keel.schema.json) and as the loader validates with:
 * ConfigSchema with every key that has a default taken out of `required`, so an editor does
 * not demand what the loader fills in. (The TypeScript type keeps them required: after
 * loading they are always present.)
 */
export function publishedSchema(): TSchema {
  const relax = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(relax);
    if (node === null || typeof node !== 'object') return node;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(node)) out[k] = relax(v);
    const props = out.properties as Record<string, { default?: unknown }> | undefined;
    if (Array.isArray(out.required) && props) {
      out.required = (out.required as string[]).filter((k) => props[k]?.default === undefined);
    }
    return out;
  };
  return { $schema: 'http://json-schema.org/draft-07/schema#', ...(relax(ConfigSchema) as object) } as TSchema;
}
