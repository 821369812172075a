/* Test support: check counter and the simulated board. See support.h. */
#include "support.h"

int g_checks;
int g_failures;

int test_summary(const char *suite) {
  /* The plain closing line understood by CI: "<suite>: N passed, N failed". */
  printf("%s: %d passed, %d failed\n", suite, g_checks - g_failures, g_failures);
  return g_failures ? 1 : 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int hex_to_bytes(const char *hex, uint8_t *out, size_t cap) {
  size_t n = strlen(hex);
  if (n % 2 || n / 2 > cap) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return (int)(n / 2);
}

void bytes_to_hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = 0;
}

static uint32_t fake_micros(void *ctx) { return ((fake_board_t *)ctx)->now; }

static int16_t fake_read(void *ctx, uint8_t ch) {
  fake_board_t *f = (fake_board_t *)ctx;
  int16_t v = f->inputs[ch];
  f->inputs[ch] = (int16_t)(f->inputs[ch] + f->input_step[ch]);
  f->reads[ch]++;
  return v;
}

static void fake_write(void *ctx, uint8_t index, uint16_t value) {
  fake_board_t *f = (fake_board_t *)ctx;
  if (index >= f->board->output_count) {
    f->bad_output_write = 1;
    return;
  }
  uint16_t max = f->board->outputs[index].kind == KEEL_OUT_PWM ? 255 : 1;
  if (value > max) f->bad_output_write = 1;
  f->outputs[index] = value;
  f->output_writes++;
}

static uint16_t fake_tx_free(void *ctx) {
  fake_board_t *f = (fake_board_t *)ctx;
  if (!f->uart_model) return f->tx_free;
  return f->uart_level >= 255 ? 0 : (uint16_t)(255 - (int)f->uart_level);
}

static void fake_tx_write(void *ctx, const uint8_t *bytes, uint16_t n) {
  fake_board_t *f = (fake_board_t *)ctx;
  f->uart_level += n; /* the real HAL would wait for room; the model lets it overfill */
  for (uint16_t i = 0; i < n; i++) {
    if (f->tx_len < FAKE_TX_CAP) f->tx[f->tx_len++] = bytes[i];
    const uint8_t *raw;
    uint8_t len;
    keel_status_t s = keel_rx_push(&f->host_rx, bytes[i], &raw, &len);
    if (s == KEEL_PENDING) continue;
    if (s != KEEL_OK) {
      f->host_errors[s]++;
      continue;
    }
    if (f->frame_count >= FAKE_MAX_FRAMES) continue;
    sent_frame_t *fr = &f->frames[f->frame_count++];
    memcpy(fr->raw, raw, len);
    fr->len = len;
    fr->status = keel_frame_check(fr->raw, len, KEEL_TO_HOST, KEEL_VERSION, &fr->msg);
  }
}

void fake_init(fake_board_t *f, const keel_board_t *board) {
  memset(f, 0, sizeof *f);
  f->board = board;
  f->tx = (uint8_t *)malloc(FAKE_TX_CAP);
  f->frames = (sent_frame_t *)calloc(FAKE_MAX_FRAMES, sizeof *f->frames);
  if (!f->tx || !f->frames) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  f->tx_free = 1024;
  f->now = 5000; /* any start; tests that care about wrap set it */
  keel_rx_init(&f->host_rx);
  f->hal.ctx = f;
  f->hal.micros = fake_micros;
  f->hal.read_input = fake_read;
  f->hal.write_output = fake_write;
  f->hal.tx_free = fake_tx_free;
  f->hal.tx_write = fake_tx_write;
}

void fake_free(fake_board_t *f) {
  free(f->tx);
  free(f->frames);
  f->tx = NULL;
  f->frames = NULL;
}

void fake_clear(fake_board_t *f) {
  f->tx_len = 0;
  f->frame_count = 0;
}

size_t send_to_mcu(keel_mcu_t *m, uint8_t version, uint8_t type, uint16_t seq, const uint8_t *payload, size_t n) {
  uint8_t raw[KEEL_MAX_RAW];
  uint8_t wire[KEEL_MAX_WIRE + 8];
  size_t len = keel_frame_build(raw, version, type, seq, payload, n);
  size_t w = keel_cobs_encode(raw, len, wire);
  wire[w++] = 0;
  for (size_t i = 0; i < w; i++) keel_mcu_rx(m, wire[i]);
  return w;
}

void run_for(keel_mcu_t *m, fake_board_t *f, uint32_t total_us, uint32_t step_us) {
  for (uint32_t t = 0; t < total_us; t += step_us) {
    f->now += step_us;
    if (f->uart_model) {
      f->uart_level -= step_us * (115200.0 / 10.0 / 1e6); /* bytes the line took meanwhile */
      if (f->uart_level < 0) f->uart_level = 0;
    }
    keel_mcu_poll(m);
  }
}

size_t count_type(const fake_board_t *f, uint8_t type) {
  size_t n = 0;
  for (size_t i = 0; i < f->frame_count; i++)
    if (f->frames[i].len >= KEEL_MIN_RAW && f->frames[i].raw[1] == type) n++;
  return n;
}

const sent_frame_t *last_of_type(const fake_board_t *f, uint8_t type) {
  for (size_t i = f->frame_count; i-- > 0;)
    if (f->frames[i].len >= KEEL_MIN_RAW && f->frames[i].raw[1] == type) return &f->frames[i];
  return NULL;
}
