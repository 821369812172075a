/*
 * keel firmware bridge, protocol v1: wire codec. See keel_proto.h and
 * docs/firmware-bridge.md; clause numbers (§n.m) refer to that document.
 */
#include "keel_proto.h"

#include <string.h>

uint16_t keel_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

uint32_t keel_get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void keel_put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

void keel_put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

/*
 * §1.3. Byte-at-a-time form of the MSB-first CRC with poly 0x1021 = x^12 + x^5 + 1: the
 * top byte folded with the input byte is reduced with shifts instead of a 512-byte table,
 * which would cost the AVR flash (and RAM unless placed in PROGMEM).
 */
uint16_t keel_crc16_update(uint16_t crc, const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint8_t x = (uint8_t)((crc >> 8) ^ data[i]);
    x ^= (uint8_t)(x >> 4);
    crc = (uint16_t)((crc << 8) ^ ((uint16_t)x << 12) ^ ((uint16_t)x << 5) ^ x);
  }
  return crc;
}

uint16_t keel_crc16(const uint8_t *data, size_t n) { return keel_crc16_update(0xFFFFu, data, n); }

/*
 * §1.4 canonical COBS. Blocks end at each zero (the zero is implied by a code < 0xFF) or
 * after 254 non-zero bytes (code 0xFF, no implied zero). After the last input byte one more
 * block is written unless the input ended exactly with a full 0xFF block.
 */
size_t keel_cobs_encode_emit(const uint8_t *src, size_t n, keel_emit_fn emit, void *ctx) {
  size_t i = 0;
  size_t total = 0;
  for (;;) {
    size_t start = i;
    while (i < n && src[i] != 0 && i - start < 254) i++;
    size_t k = i - start;
    uint8_t code = (uint8_t)(k + 1);
    emit(ctx, &code, 1);
    if (k) emit(ctx, src + start, (uint16_t)k);
    total += 1 + k;
    if (k < 254 && i < n) {
      i++; /* src[i] is the zero implied by this code (< 0xFF); a block (maybe empty) follows */
      continue;
    }
    if (i >= n) break; /* end of input after a short block, or after a full block */
    /* a full 0xFF block implies no zero: whatever follows (zero or not) starts the next block */
  }
  return total;
}

typedef struct {
  uint8_t *dst;
  size_t at;
} cobs_buf_t;

static void cobs_buf_emit(void *ctx, const uint8_t *bytes, uint16_t n) {
  cobs_buf_t *b = (cobs_buf_t *)ctx;
  memcpy(b->dst + b->at, bytes, n);
  b->at += n;
}

size_t keel_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst) {
  cobs_buf_t b;
  b.dst = dst;
  b.at = 0;
  return keel_cobs_encode_emit(src, n, cobs_buf_emit, &b);
}

keel_status_t keel_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t dst_cap, size_t *out_len) {
  size_t i = 0;
  size_t o = 0;
  while (i < n) {
    uint8_t code = src[i++];
    if (code == 0) return KEEL_ERR_COBS;
    size_t k = (size_t)code - 1u;
    if (k > n - i) return KEEL_ERR_COBS; /* the block runs past the end of the chunk */
    if (k > dst_cap - o) return KEEL_ERR_OVERSIZE;
    /* o <= i always holds, so a forward byte copy is safe in place (dst == src). */
    for (size_t j = 0; j < k; j++) dst[o + j] = src[i + j];
    o += k;
    i += k;
    if (code != 0xFF && i < n) {
      if (o >= dst_cap) return KEEL_ERR_OVERSIZE;
      dst[o++] = 0;
    }
  }
  *out_len = o;
  return KEEL_OK;
}

size_t keel_frame_build(uint8_t *raw, uint8_t version, uint8_t type, uint16_t seq,
                        const uint8_t *payload, size_t payload_len) {
  if (payload_len > KEEL_MAX_PAYLOAD) return 0;
  if (payload_len && payload != raw + KEEL_HEADER_BYTES) memmove(raw + KEEL_HEADER_BYTES, payload, payload_len);
  raw[0] = version;
  raw[1] = type;
  keel_put_u16(raw + 2, seq);
  size_t n = KEEL_HEADER_BYTES + payload_len;
  keel_put_u16(raw + n, keel_crc16(raw, n));
  return n + KEEL_CRC_BYTES;
}

int keel_type_accepted(uint8_t type, keel_dir_t dir) {
  switch (type) {
    case KEEL_T_HELLO:
    case KEEL_T_SET:
    case KEEL_T_CONFIG:
      return dir == KEEL_TO_MCU;
    case KEEL_T_HELLO_ACK:
    case KEEL_T_SAMPLE:
    case KEEL_T_ACK:
    case KEEL_T_NACK:
    case KEEL_T_ERROR:
      return dir == KEEL_TO_HOST;
    case KEEL_T_HEARTBEAT:
    case KEEL_T_TIMESYNC:
      return 1;
    default:
      return 0;
  }
}

/* §4.2: HELLO_ACK length and value checks. The length is checked first (§1.6-8 before -9). */
static keel_status_t check_hello_ack(const uint8_t *p, size_t n, keel_msg_t *m) {
  if (n < 13) return KEEL_ERR_LENGTH;
  uint8_t outputs = p[7];
  size_t id_at = 12u + 3u * outputs;
  if (n < id_at + 1u) return KEEL_ERR_LENGTH;
  uint8_t id_len = p[id_at];
  if (n != id_at + 1u + id_len) return KEEL_ERR_LENGTH;
  m->u.hello_ack.version = p[0];
  m->u.hello_ack.nonce = keel_get_u32(p + 1);
  m->u.hello_ack.analog_count = p[5];
  m->u.hello_ack.digital_count = p[6];
  m->u.hello_ack.output_count = outputs;
  m->u.hello_ack.max_rate_hz = keel_get_u16(p + 8);
  m->u.hello_ack.heartbeat_timeout_ms = keel_get_u16(p + 10);
  m->u.hello_ack.outputs = p + 12;
  m->u.hello_ack.id_len = id_len;
  m->u.hello_ack.id = p + id_at + 1;
  if (p[5] > KEEL_MAX_ANALOG || p[6] > KEEL_MAX_DIGITAL || outputs > KEEL_MAX_OUTPUTS) return KEEL_ERR_VALUE;
  if (id_len < 1 || id_len > KEEL_MAX_ID) return KEEL_ERR_VALUE;
  for (uint8_t i = 0; i < outputs; i++) {
    uint8_t kind = p[12 + 3 * i + 1];
    uint8_t safe = p[12 + 3 * i + 2];
    if (kind == KEEL_OUT_DIGITAL) {
      if (safe > 1) return KEEL_ERR_VALUE;
    } else if (kind != KEEL_OUT_PWM) {
      return KEEL_ERR_VALUE;
    }
  }
  return KEEL_OK;
}

keel_status_t keel_frame_check(const uint8_t *raw, size_t len, keel_dir_t dir, uint8_t want_version,
                               keel_msg_t *msg) {
  memset(msg, 0, sizeof *msg);
  if (len < KEEL_MIN_RAW) return KEEL_ERR_SHORT;
  if (len > KEEL_MAX_RAW) return KEEL_ERR_OVERSIZE;
  size_t body = len - KEEL_CRC_BYTES;
  if (keel_crc16(raw, body) != keel_get_u16(raw + body)) return KEEL_ERR_CRC;

  msg->h.version = raw[0];
  msg->h.type = raw[1];
  msg->h.seq = keel_get_u16(raw + 2);
  msg->payload = raw + KEEL_HEADER_BYTES;
  msg->payload_len = (uint8_t)(body - KEEL_HEADER_BYTES);
  if (raw[0] != want_version) return KEEL_ERR_VERSION;
  if (!keel_type_accepted(raw[1], dir)) return KEEL_ERR_TYPE;

  const uint8_t *p = msg->payload;
  size_t n = msg->payload_len;
  switch (raw[1]) {
    case KEEL_T_HELLO:
      if (n != 5) return KEEL_ERR_LENGTH;
      msg->u.hello.max_version = p[0];
      msg->u.hello.nonce = keel_get_u32(p + 1);
      return KEEL_OK;
    case KEEL_T_HELLO_ACK:
      return check_hello_ack(p, n, msg);
    case KEEL_T_SAMPLE: {
      if (n < 8) return KEEL_ERR_LENGTH;
      uint8_t count = p[7];
      if (n != 8u + 2u * count) return KEEL_ERR_LENGTH;
      msg->u.sample.channel = p[0];
      msg->u.sample.t0_us = keel_get_u32(p + 1);
      msg->u.sample.period_us = keel_get_u16(p + 5);
      msg->u.sample.count = count;
      msg->u.sample.values = p + 8;
      if (count < 1 || count > KEEL_MAX_SAMPLE_VALUES) return KEEL_ERR_VALUE;
      return KEEL_OK;
    }
    case KEEL_T_SET:
      if (n != 3) return KEEL_ERR_LENGTH;
      msg->u.set.output = p[0];
      msg->u.set.value = keel_get_u16(p + 1);
      return KEEL_OK;
    case KEEL_T_ACK:
      if (n != 2) return KEEL_ERR_LENGTH;
      msg->u.ack.seq = keel_get_u16(p);
      return KEEL_OK;
    case KEEL_T_NACK:
      if (n != 3) return KEEL_ERR_LENGTH;
      msg->u.nack.seq = keel_get_u16(p);
      msg->u.nack.reason = p[2];
      return KEEL_OK;
    case KEEL_T_HEARTBEAT:
      if (n != 1) return KEEL_ERR_LENGTH;
      msg->u.heartbeat.flags = p[0];
      return KEEL_OK;
    case KEEL_T_TIMESYNC:
      /* §4.8: a request (to the MCU) is 4 bytes, a reply (to the host) 8 bytes. */
      if (n != (dir == KEEL_TO_MCU ? 4u : 8u)) return KEEL_ERR_LENGTH;
      msg->u.timesync.token = keel_get_u32(p);
      if (dir == KEEL_TO_HOST) msg->u.timesync.mcu_time_us = keel_get_u32(p + 4);
      return KEEL_OK;
    case KEEL_T_CONFIG:
      if (n != 3) return KEEL_ERR_LENGTH;
      msg->u.config.channel = p[0];
      msg->u.config.rate_hz = keel_get_u16(p + 1);
      return KEEL_OK;
    case KEEL_T_ERROR:
      if (n < 2 || n != 2u + p[1]) return KEEL_ERR_LENGTH;
      msg->u.error.code = p[0];
      msg->u.error.text_len = p[1];
      msg->u.error.text = p + 2;
      return KEEL_OK;
    default:
      return KEEL_ERR_TYPE; /* unreachable: keel_type_accepted() refused it */
  }
}

int16_t keel_sample_value(const keel_msg_t *msg, uint8_t i) {
  return (int16_t)keel_get_u16(msg->u.sample.values + 2u * i);
}

const char *keel_status_name(keel_status_t s) {
  switch (s) {
    case KEEL_OK: return "ok";
    case KEEL_ERR_OVERSIZE: return "oversize";
    case KEEL_ERR_COBS: return "cobs";
    case KEEL_ERR_SHORT: return "short";
    case KEEL_ERR_CRC: return "crc";
    case KEEL_ERR_VERSION: return "version";
    case KEEL_ERR_TYPE: return "type";
    case KEEL_ERR_LENGTH: return "length";
    case KEEL_ERR_VALUE: return "value";
    case KEEL_PENDING: return "pending";
  }
  return "?";
}
