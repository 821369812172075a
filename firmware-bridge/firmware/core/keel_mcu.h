/*
 * keel firmware bridge: the MCU side of protocol v1 (docs/firmware-bridge.md §2, §4, §5.2).
 *
 * A portable state machine behind a tiny HAL: it answers HELLO, SET, CONFIG, TIMESYNC and
 * HEARTBEAT, NACKs everything else as §1.6/§4.6 require, samples inputs at the configured
 * rates into batched SAMPLE frames, sends HEARTBEATs, and drives every output to its safe
 * value when host frames stop (failsafe). No allocation; all state lives in keel_mcu_t.
 */
#ifndef KEEL_MCU_H
#define KEEL_MCU_H

#include "keel_proto.h"
#include "keel_rx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Compile-time capacities (override with -D for small targets). */
#ifndef KEEL_MCU_MAX_CHANNELS
#define KEEL_MCU_MAX_CHANNELS 16 /* analog + digital inputs */
#endif
#ifndef KEEL_MCU_MAX_OUTPUTS
#define KEEL_MCU_MAX_OUTPUTS 8
#endif
#ifndef KEEL_MCU_MAX_BATCH
#define KEEL_MCU_MAX_BATCH 100 /* values per SAMPLE frame, 1..100 (§4.3) */
#endif
/* A SAMPLE frame covers at most this long (§4.3: SHOULD be <= 100 ms), microseconds. */
#ifndef KEEL_MCU_BATCH_WINDOW_US
#define KEEL_MCU_BATCH_WINDOW_US 100000UL
#endif
/* MCU HEARTBEAT period (§5.1), microseconds. */
#define KEEL_MCU_HEARTBEAT_US 250000UL
/* Bytes of UART transmit space that SAMPLE frames leave free for replies. */
#ifndef KEEL_MCU_TX_RESERVE
#define KEEL_MCU_TX_RESERVE 48u
#endif
/* Shortest interval between two ERROR frames of the same code, microseconds. */
#define KEEL_MCU_ERROR_INTERVAL_US 1000000UL

/*
 * The hardware the core runs on. Every function gets ctx back. Times are microseconds of a
 * free-running 32-bit clock that wraps (the SAMPLE/TIMESYNC clock of §4.3/§4.8).
 */
typedef struct {
  void *ctx;
  /* Current time in microseconds. */
  uint32_t (*micros)(void *ctx);
  /* Reads input channel ch (analog 0..A-1: ADC counts; digital A..A+D-1: 0/1). */
  int16_t (*read_input)(void *ctx, uint8_t ch);
  /* Drives output index to value (digital 0/1, PWM 0..255); the value was range-checked. */
  void (*write_output)(void *ctx, uint8_t index, uint16_t value);
  /* Bytes the UART can queue right now without waiting. */
  uint16_t (*tx_free)(void *ctx);
  /* Queues n bytes for the UART; may wait for room, never drops. */
  void (*tx_write)(void *ctx, const uint8_t *bytes, uint16_t n);
} keel_hal_t;

/* What the board offers; announced in HELLO_ACK (§4.2). */
typedef struct {
  uint8_t analog_count;  /* channels 0..A-1 */
  uint8_t digital_count; /* channels A..A+D-1 */
  uint8_t output_count;  /* outputs 0..O-1, <= KEEL_MCU_MAX_OUTPUTS */
  const keel_output_desc_t *outputs;
  uint16_t max_rate_hz;          /* per channel */
  uint16_t heartbeat_timeout_ms; /* failsafe after this long without a valid host frame */
  const char *firmware_id;       /* printable ASCII, 1..64 characters */
  uint8_t max_batch;             /* values per SAMPLE frame, 1..KEEL_MCU_MAX_BATCH */
} keel_board_t;

/* Counters for tests and debugging (never sent on the wire). */
typedef struct {
  uint32_t bytes_in;
  uint32_t frames_in;                 /* frames that passed checks 1..8 */
  uint32_t frames_out;
  uint32_t errors[KEEL_ERR_KINDS];    /* index = keel_status_t error kind */
  uint32_t nacks_sent;
  uint32_t samples_sent;              /* values */
  uint32_t samples_dropped;           /* values lost to a full UART queue */
  uint32_t sample_resyncs;            /* a channel fell a whole period behind */
  uint32_t uart_errors;               /* reported by the HAL */
  uint32_t failsafe_entries;
} keel_mcu_stats_t;

/* One input channel's schedule and the batch being filled. */
typedef struct {
  uint16_t rate_hz;   /* 0 = off */
  uint32_t period_us; /* 1e6 / rate_hz */
  uint32_t next_due;  /* time of the next value */
  uint32_t t0;        /* time of values[0] */
  uint8_t count;      /* values held */
  uint8_t target;     /* values per frame at this rate */
  int16_t values[KEEL_MCU_MAX_BATCH];
} keel_channel_t;

/* The MCU protocol engine. Initialize with keel_mcu_init(). */
typedef struct {
  const keel_board_t *board;
  const keel_hal_t *hal;
  keel_rx_t rx;
  uint8_t tx_raw[KEEL_MAX_RAW];
  uint16_t tx_seq;
  uint8_t session;       /* 1 after a HELLO with a common version (§2.1) */
  uint8_t failsafe;      /* 1 while outputs are held safe because host frames stopped (§5.2) */
  uint8_t watchdog_reset; /* report ERROR 3 after the next HELLO_ACK (§4.10) */
  uint8_t next_first;     /* channel sampled first: the one after the last that sent, so a
                             full UART queue drops every channel's values alike */
  uint32_t last_host_us; /* time of the last valid host frame */
  uint32_t next_heartbeat_us;
  uint32_t dropped_unreported;
  uint32_t uart_errors_unreported;
  uint32_t last_error_us[2]; /* last ERROR 1 / ERROR 2 sent */
  uint8_t error_sent[2];
  uint16_t out_value[KEEL_MCU_MAX_OUTPUTS];
  keel_channel_t ch[KEEL_MCU_MAX_CHANNELS];
  keel_mcu_stats_t stats;
} keel_mcu_t;

/*
 * Prepares the engine and drives every output to its safe value. Returns 0, or -1 if the
 * board exceeds the compile-time capacities or the protocol limits.
 * watchdog_reset: 1 if the MCU just came out of a watchdog reset (reported as ERROR 3).
 */
int keel_mcu_init(keel_mcu_t *m, const keel_board_t *board, const keel_hal_t *hal, uint8_t watchdog_reset);

/* Feeds one byte received from the host; answers complete frames at once. */
void keel_mcu_rx(keel_mcu_t *m, uint8_t byte);

/*
 * Time-driven work: sampling, heartbeats, failsafe, ERROR reports. Call often (at least
 * once per sample period). Returns microseconds until the next deadline (0: call again now).
 */
uint32_t keel_mcu_poll(keel_mcu_t *m);

/* The HAL saw n UART receive errors (overrun, framing, receive buffer full); reported as ERROR 2. */
void keel_mcu_uart_errors(keel_mcu_t *m, uint16_t n);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_MCU_H */
