/*
 * keel firmware bridge: MCU protocol engine. See keel_mcu.h; clause numbers refer to
 * docs/firmware-bridge.md.
 */
#include "keel_mcu.h"

#include <string.h>

/* Signed difference a - b of two wrapping 32-bit microsecond times. */
static int32_t time_diff(uint32_t a, uint32_t b) { return (int32_t)(a - b); }

static uint32_t now_us(keel_mcu_t *m) { return m->hal->micros(m->hal->ctx); }

static uint8_t channel_count(const keel_mcu_t *m) {
  return (uint8_t)(m->board->analog_count + m->board->digital_count);
}

static void emit_to_hal(void *ctx, const uint8_t *bytes, uint16_t n) {
  const keel_hal_t *hal = (const keel_hal_t *)ctx;
  hal->tx_write(hal->ctx, bytes, n);
}

/*
 * Sends the payload already placed at m->tx_raw + 4 as one frame (§1.1): header and CRC
 * around it, COBS straight into the UART queue, then the delimiter.
 */
static void send_frame(keel_mcu_t *m, uint8_t type, uint8_t payload_len) {
  size_t n = keel_frame_build(m->tx_raw, KEEL_VERSION, type, m->tx_seq, m->tx_raw + KEEL_HEADER_BYTES, payload_len);
  m->tx_seq++; /* wraps 65535 -> 0 (§2.3) */
  keel_cobs_encode_emit(m->tx_raw, n, emit_to_hal, (void *)m->hal);
  static const uint8_t delimiter = 0;
  m->hal->tx_write(m->hal->ctx, &delimiter, 1);
  m->stats.frames_out++;
}

/* Bytes on the wire for a frame with this payload: raw + 1 COBS code byte + delimiter (§1.4). */
static uint16_t wire_size(uint8_t payload_len) {
  return (uint16_t)(KEEL_HEADER_BYTES + payload_len + KEEL_CRC_BYTES + 2u);
}

static void send_ack(keel_mcu_t *m, uint16_t seq) {
  keel_put_u16(m->tx_raw + KEEL_HEADER_BYTES, seq);
  send_frame(m, KEEL_T_ACK, 2);
}

static void send_nack(keel_mcu_t *m, uint16_t seq, uint8_t reason) {
  uint8_t *p = m->tx_raw + KEEL_HEADER_BYTES;
  keel_put_u16(p, seq);
  p[2] = reason;
  send_frame(m, KEEL_T_NACK, 3);
  m->stats.nacks_sent++;
}

static void send_heartbeat(keel_mcu_t *m) {
  m->tx_raw[KEEL_HEADER_BYTES] = m->failsafe ? KEEL_HB_FAILSAFE : 0;
  send_frame(m, KEEL_T_HEARTBEAT, 1);
}

/* §4.10: text, followed by number in decimal unless with_number is 0. */
static void send_error(keel_mcu_t *m, uint8_t code, const char *text, uint8_t with_number, uint32_t number) {
  uint8_t *p = m->tx_raw + KEEL_HEADER_BYTES;
  uint8_t len = 0;
  p[0] = code;
  while (text[len] && len < 200) {
    p[2 + len] = (uint8_t)text[len];
    len++;
  }
  if (with_number) {
    /* The count, so the host log says how many. */
    char digits[10];
    uint8_t nd = 0;
    do {
      digits[nd++] = (char)('0' + number % 10u);
      number /= 10u;
    } while (number && nd < sizeof digits);
    while (nd) p[2 + len++] = (uint8_t)digits[--nd];
  }
  p[1] = len;
  send_frame(m, KEEL_T_ERROR, (uint8_t)(2u + len));
}

/* Drives every output to its safe value (§2.1, §5.2). */
static void drive_safe(keel_mcu_t *m) {
  for (uint8_t i = 0; i < m->board->output_count; i++) {
    m->out_value[i] = m->board->outputs[i].safe_value;
    m->hal->write_output(m->hal->ctx, i, m->out_value[i]);
  }
}

/*
 * Sends the batch of channel c as one SAMPLE (§4.3) if the UART queue has room beyond the
 * reserve kept for replies; otherwise the values are dropped and reported (ERROR 1).
 */
static void flush_batch(keel_mcu_t *m, uint8_t c) {
  keel_channel_t *ch = &m->ch[c];
  uint8_t n = ch->count;
  if (n == 0) return;
  ch->count = 0;
  uint8_t payload_len = (uint8_t)(8u + 2u * n);
  uint16_t need = (uint16_t)(wire_size(payload_len) + KEEL_MCU_TX_RESERVE);
  if (m->hal->tx_free(m->hal->ctx) < need) {
    m->stats.samples_dropped += n;
    m->dropped_unreported += n;
    return;
  }
  uint8_t *p = m->tx_raw + KEEL_HEADER_BYTES;
  p[0] = c;
  keel_put_u32(p + 1, ch->t0);
  /* periodUs is u16 (§4.3); slower channels send one value per frame with periodUs 0. */
  keel_put_u16(p + 5, ch->period_us <= 0xFFFFu ? (uint16_t)ch->period_us : 0u);
  p[7] = n;
  for (uint8_t i = 0; i < n; i++) keel_put_u16(p + 8 + 2 * i, (uint16_t)ch->values[i]);
  send_frame(m, KEEL_T_SAMPLE, payload_len);
  m->stats.samples_sent += n;
  /* The channel after this one gets the next chance at the UART queue. */
  m->next_first = (uint8_t)(c + 1u < channel_count(m) ? c + 1u : 0u);
}

/* Applies a channel rate (§4.9); 0 turns the channel off. The first value is taken at now. */
static void set_rate(keel_mcu_t *m, uint8_t c, uint16_t rate_hz, uint32_t now) {
  keel_channel_t *ch = &m->ch[c];
  ch->rate_hz = rate_hz;
  ch->count = 0;
  if (rate_hz == 0) return;
  ch->period_us = 1000000UL / rate_hz;
  uint32_t per_window = KEEL_MCU_BATCH_WINDOW_US / ch->period_us;
  if (ch->period_us > 0xFFFFu || per_window < 1) per_window = 1; /* §4.3: n = 1 when periodUs does not fit */
  if (per_window > m->board->max_batch) per_window = m->board->max_batch;
  ch->target = (uint8_t)per_window;
  ch->next_due = now;
}

/* Ends the current session: rates off, batches discarded, outputs safe. */
static void reset_session(keel_mcu_t *m) {
  for (uint8_t c = 0; c < KEEL_MCU_MAX_CHANNELS; c++) {
    m->ch[c].rate_hz = 0;
    m->ch[c].count = 0;
  }
  drive_safe(m);
  m->failsafe = 0;
}

int keel_mcu_init(keel_mcu_t *m, const keel_board_t *board, const keel_hal_t *hal, uint8_t watchdog_reset) {
  memset(m, 0, sizeof *m);
  m->board = board;
  m->hal = hal;
  keel_rx_init(&m->rx);
  size_t id_len = board->firmware_id ? strlen(board->firmware_id) : 0;
  if ((unsigned)board->analog_count + board->digital_count > KEEL_MCU_MAX_CHANNELS ||
      board->analog_count > KEEL_MAX_ANALOG || board->digital_count > KEEL_MAX_DIGITAL ||
      board->output_count > KEEL_MCU_MAX_OUTPUTS || board->output_count > KEEL_MAX_OUTPUTS ||
      board->max_batch < 1 || board->max_batch > KEEL_MCU_MAX_BATCH || id_len < 1 || id_len > KEEL_MAX_ID ||
      13u + 3u * board->output_count + id_len > KEEL_MAX_PAYLOAD) {
    m->board = 0;
    return -1;
  }
  m->watchdog_reset = watchdog_reset ? 1 : 0;
  reset_session(m);
  return 0;
}

static void handle_hello(keel_mcu_t *m, const keel_msg_t *msg, uint32_t now) {
  const keel_board_t *b = m->board;
  uint8_t chosen = msg->u.hello.max_version < KEEL_VERSION ? msg->u.hello.max_version : (uint8_t)KEEL_VERSION;
  /* §2.1: every HELLO starts afresh; with no common version (0) there is no session at all. */
  reset_session(m);
  m->session = chosen != 0;
  m->next_heartbeat_us = now + KEEL_MCU_HEARTBEAT_US;

  uint8_t *p = m->tx_raw + KEEL_HEADER_BYTES;
  p[0] = chosen;
  keel_put_u32(p + 1, msg->u.hello.nonce);
  p[5] = b->analog_count;
  p[6] = b->digital_count;
  p[7] = b->output_count;
  keel_put_u16(p + 8, b->max_rate_hz);
  keel_put_u16(p + 10, b->heartbeat_timeout_ms);
  uint8_t at = 12;
  for (uint8_t i = 0; i < b->output_count; i++) {
    p[at++] = b->outputs[i].pin;
    p[at++] = b->outputs[i].kind;
    p[at++] = b->outputs[i].safe_value;
  }
  uint8_t id_len = (uint8_t)strlen(b->firmware_id);
  p[at++] = id_len;
  memcpy(p + at, b->firmware_id, id_len);
  send_frame(m, KEEL_T_HELLO_ACK, (uint8_t)(at + id_len));

  if (m->session && m->watchdog_reset) {
    m->watchdog_reset = 0;
    send_error(m, KEEL_ERROR_WATCHDOG_RESET, "reset by the watchdog", 0, 0);
  }
}

static void handle_set(keel_mcu_t *m, const keel_msg_t *msg) {
  uint8_t idx = msg->u.set.output;
  uint16_t v = msg->u.set.value;
  if (idx >= m->board->output_count) {
    send_nack(m, msg->h.seq, KEEL_NACK_BAD_TARGET);
    return;
  }
  uint16_t max = m->board->outputs[idx].kind == KEEL_OUT_PWM ? 255u : 1u;
  if (v > max) {
    send_nack(m, msg->h.seq, KEEL_NACK_BAD_VALUE);
    return;
  }
  m->out_value[idx] = v;
  m->hal->write_output(m->hal->ctx, idx, v); /* drive first, then ACK (§4.4) */
  send_ack(m, msg->h.seq);
}

static void handle_config(keel_mcu_t *m, const keel_msg_t *msg, uint32_t now) {
  uint8_t c = msg->u.config.channel;
  if (c >= channel_count(m)) {
    send_nack(m, msg->h.seq, KEEL_NACK_BAD_TARGET);
    return;
  }
  if (msg->u.config.rate_hz > m->board->max_rate_hz) {
    send_nack(m, msg->h.seq, KEEL_NACK_BAD_VALUE);
    return;
  }
  flush_batch(m, c); /* values taken at the old rate keep their own timing */
  set_rate(m, c, msg->u.config.rate_hz, now);
  send_ack(m, msg->h.seq);
}

static void handle_timesync(keel_mcu_t *m, const keel_msg_t *msg, uint32_t now) {
  uint8_t *p = m->tx_raw + KEEL_HEADER_BYTES;
  keel_put_u32(p, msg->u.timesync.token);
  keel_put_u32(p + 4, now);
  send_frame(m, KEEL_T_TIMESYNC, 8);
}

/* A raw frame that passed checks 1..5 in the receiver. */
static void handle_raw(keel_mcu_t *m, const uint8_t *raw, uint8_t len) {
  keel_msg_t msg;
  /* §6-3: the session version; before any HELLO (and for HELLO itself) it is 1. */
  keel_status_t s = keel_frame_check(raw, len, KEEL_TO_MCU, KEEL_VERSION, &msg);
  if (s != KEEL_OK) {
    m->stats.errors[s]++;
    /* §1.6: checks 6..8 are answered with a NACK carrying the refused seq; 2..5 are not. */
    if (s == KEEL_ERR_VERSION) send_nack(m, msg.h.seq, KEEL_NACK_UNSUPPORTED_VERSION);
    else if (s == KEEL_ERR_TYPE) send_nack(m, msg.h.seq, KEEL_NACK_UNSUPPORTED_TYPE);
    else if (s == KEEL_ERR_LENGTH) send_nack(m, msg.h.seq, KEEL_NACK_BAD_LENGTH);
    return;
  }
  m->stats.frames_in++;
  uint32_t now = now_us(m);

  if (msg.h.type == KEEL_T_HELLO) {
    m->last_host_us = now;
    handle_hello(m, &msg, now);
    return;
  }
  if (!m->session) {
    send_nack(m, msg.h.seq, KEEL_NACK_NOT_READY); /* §2.2 */
    return;
  }
  /* §5.2: any valid host frame feeds the failsafe timer and ends failsafe; outputs stay safe. */
  m->last_host_us = now;
  m->failsafe = 0;
  switch (msg.h.type) {
    case KEEL_T_SET: handle_set(m, &msg); break;
    case KEEL_T_CONFIG: handle_config(m, &msg, now); break;
    case KEEL_T_TIMESYNC: handle_timesync(m, &msg, now); break;
    case KEEL_T_HEARTBEAT: break; /* never acknowledged (§4.7) */
    default: break;               /* unreachable: keel_frame_check() accepts only the above */
  }
}

void keel_mcu_rx(keel_mcu_t *m, uint8_t byte) {
  if (!m->board) return;
  m->stats.bytes_in++;
  const uint8_t *raw = 0;
  uint8_t len = 0;
  keel_status_t s = keel_rx_push(&m->rx, byte, &raw, &len);
  if (s == KEEL_PENDING) return;
  if (s != KEEL_OK) {
    m->stats.errors[s]++; /* §1.6 checks 2..5: counted, never answered */
    return;
  }
  handle_raw(m, raw, len);
}

void keel_mcu_uart_errors(keel_mcu_t *m, uint16_t n) {
  m->stats.uart_errors += n;
  m->uart_errors_unreported += n;
}

/* Samples every channel that is due; values carry their scheduled times (§4.3). */
static void sample_channels(keel_mcu_t *m, uint32_t now) {
  uint8_t n = channel_count(m);
  if (n == 0) return;
  uint8_t first = m->next_first < n ? m->next_first : 0;
  for (uint8_t k = 0; k < n; k++) {
    uint8_t c = (uint8_t)(first + k < n ? first + k : first + k - n);
    keel_channel_t *ch = &m->ch[c];
    if (!ch->rate_hz) continue;
    if (time_diff(now, ch->next_due) < 0) continue;
    if ((uint32_t)time_diff(now, ch->next_due) >= ch->period_us) {
      /* A whole period was missed: the batch's times would lie, so send what we have and
         restart the schedule at now. */
      flush_batch(m, c);
      ch->next_due = now;
      m->stats.sample_resyncs++;
    }
    if (ch->count == 0) ch->t0 = ch->next_due;
    ch->values[ch->count++] = m->hal->read_input(m->hal->ctx, c);
    ch->next_due += ch->period_us;
    if (ch->count >= ch->target) flush_batch(m, c);
  }
}

/* ERROR 1 / ERROR 2, at most once per KEEL_MCU_ERROR_INTERVAL_US each (§4.10). */
static void report_errors(keel_mcu_t *m, uint32_t now) {
  uint32_t *pending[2] = {&m->dropped_unreported, &m->uart_errors_unreported};
  static const uint8_t codes[2] = {KEEL_ERROR_SAMPLES_DROPPED, KEEL_ERROR_UART};
  static const char *const texts[2] = {"samples dropped: ", "uart receive errors: "};
  for (uint8_t i = 0; i < 2; i++) {
    if (!*pending[i]) continue;
    if (m->error_sent[i] && (uint32_t)time_diff(now, m->last_error_us[i]) < KEEL_MCU_ERROR_INTERVAL_US) continue;
    if (m->hal->tx_free(m->hal->ctx) < KEEL_MCU_TX_RESERVE) continue; /* try again later */
    send_error(m, codes[i], texts[i], 1, *pending[i]);
    *pending[i] = 0;
    m->error_sent[i] = 1;
    m->last_error_us[i] = now;
  }
}

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

uint32_t keel_mcu_poll(keel_mcu_t *m) {
  if (!m->board) return 1000000UL;
  uint32_t now = now_us(m);
  if (!m->session) return 1000000UL; /* §2.2: nothing unsolicited before the first HELLO */

  /* §5.2 failsafe. */
  uint32_t timeout_us = (uint32_t)m->board->heartbeat_timeout_ms * 1000UL;
  if (!m->failsafe && (uint32_t)time_diff(now, m->last_host_us) >= timeout_us) {
    drive_safe(m);
    m->failsafe = 1;
    m->stats.failsafe_entries++;
    send_heartbeat(m); /* tell the host at once, should it still listen */
    m->next_heartbeat_us = now + KEEL_MCU_HEARTBEAT_US;
  }

  sample_channels(m, now);

  if (time_diff(now, m->next_heartbeat_us) >= 0) {
    send_heartbeat(m);
    m->next_heartbeat_us += KEEL_MCU_HEARTBEAT_US;
    if (time_diff(now, m->next_heartbeat_us) >= 0) m->next_heartbeat_us = now + KEEL_MCU_HEARTBEAT_US;
  }

  report_errors(m, now);

  /* Time until the next deadline, for a caller that wants to sleep. */
  uint32_t wait = (uint32_t)time_diff(m->next_heartbeat_us, now);
  if (!m->failsafe) {
    int32_t left = (int32_t)(timeout_us - (uint32_t)time_diff(now, m->last_host_us));
    wait = min_u32(wait, left > 0 ? (uint32_t)left : 0u);
  }
  uint8_t n = channel_count(m);
  for (uint8_t c = 0; c < n; c++) {
    if (!m->ch[c].rate_hz) continue;
    int32_t d = time_diff(m->ch[c].next_due, now);
    wait = min_u32(wait, d > 0 ? (uint32_t)d : 0u);
  }
  if (m->dropped_unreported || m->uart_errors_unreported) wait = min_u32(wait, 10000u);
  return wait;
}
