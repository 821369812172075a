/*
 * Test support for the host unit tests: a check counter and a simulated HAL (fake clock,
 * scripted inputs, recorded outputs, captured UART bytes decoded back into frames by the
 * core's own receiver in the host direction).
 */
#ifndef KEEL_TEST_SUPPORT_H
#define KEEL_TEST_SUPPORT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/keel_mcu.h"
#include "../avr/ref_board.h"

extern int g_checks;
extern int g_failures;

/* Records one check; prints the failing expression and a formatted detail. */
#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    g_checks++;                                                                 \
    if (!(cond)) {                                                              \
      g_failures++;                                                             \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
      fprintf(stderr, __VA_ARGS__);                                             \
      fputc('\n', stderr);                                                      \
    }                                                                           \
  } while (0)

/* Prints the closing summary line and returns the process exit code. */
int test_summary(const char *suite);

/* Hex string to bytes; returns the byte count or -1. out must hold strlen(hex)/2 bytes. */
int hex_to_bytes(const char *hex, uint8_t *out, size_t cap);
/* Bytes to a lower-case hex string in out (2n+1 chars). */
void bytes_to_hex(const uint8_t *b, size_t n, char *out);

/* One frame the simulated MCU sent, decoded in the host direction. */
typedef struct {
  uint8_t raw[KEEL_MAX_RAW];
  uint8_t len;
  keel_status_t status; /* keel_frame_check() result for KEEL_TO_HOST */
  keel_msg_t msg;       /* valid when status == KEEL_OK; points into raw */
} sent_frame_t;

#define FAKE_TX_CAP (1u << 20)
#define FAKE_MAX_FRAMES 4096

/* The simulated board. */
typedef struct {
  keel_hal_t hal;
  const keel_board_t *board;
  uint32_t now;             /* fake clock, µs */
  int16_t inputs[128];      /* value read_input() returns per channel */
  int16_t input_step[128];  /* added to inputs[ch] after each read (ramps) */
  uint32_t reads[128];
  uint16_t outputs[KEEL_MAX_OUTPUTS];
  uint32_t output_writes;
  int bad_output_write;     /* set if the core drove an out-of-range value */
  uint16_t tx_free;         /* what tx_free() reports (without the UART model) */
  int uart_model;           /* 1: a 256-byte queue drained at 115200 baud as the clock runs */
  double uart_level;        /* bytes queued in the modelled UART */
  uint8_t *tx;              /* captured bytes */
  size_t tx_len;
  keel_rx_t host_rx;        /* decodes tx into frames */
  sent_frame_t *frames;     /* frames decoded so far */
  size_t frame_count;
  uint32_t host_errors[KEEL_ERR_KINDS]; /* framing errors seen while decoding tx */
} fake_board_t;

/* Sets up the fake and its HAL table. */
void fake_init(fake_board_t *f, const keel_board_t *board);
/* Frees the capture buffers. */
void fake_free(fake_board_t *f);
/* Forgets captured frames and bytes. */
void fake_clear(fake_board_t *f);
/* Builds a host frame and feeds its wire bytes to the MCU. Returns the wire length. */
size_t send_to_mcu(keel_mcu_t *m, uint8_t version, uint8_t type, uint16_t seq, const uint8_t *payload, size_t n);
/* Advances the fake clock in steps of step_us, polling the MCU after each step. */
void run_for(keel_mcu_t *m, fake_board_t *f, uint32_t total_us, uint32_t step_us);
/* Count of captured frames of a type. */
size_t count_type(const fake_board_t *f, uint8_t type);
/* The last captured frame of a type, or NULL. */
const sent_frame_t *last_of_type(const fake_board_t *f, uint8_t type);


#endif
