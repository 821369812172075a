/* keel firmware bridge: streaming frame receiver. See keel_rx.h. */
#include "keel_rx.h"

void keel_rx_init(keel_rx_t *rx) {
  rx->len = 0;
  rx->discarding = 0;
}

keel_status_t keel_rx_push(keel_rx_t *rx, uint8_t byte, const uint8_t **raw, uint8_t *raw_len) {
  if (byte != 0) {
    if (rx->discarding) return KEEL_PENDING;
    if (rx->len >= KEEL_MAX_ENCODED) {
      /* §1.6-2: this byte would be the 248th of the chunk. Count once, hold nothing more. */
      rx->len = 0;
      rx->discarding = 1;
      return KEEL_ERR_OVERSIZE;
    }
    rx->buf[rx->len++] = byte;
    return KEEL_PENDING;
  }

  /* Delimiter: end of a chunk. */
  uint8_t n = rx->len;
  rx->len = 0;
  if (rx->discarding) {
    rx->discarding = 0; /* the delimiter that ends an oversize chunk resynchronizes */
    return KEEL_PENDING;
  }
  if (n == 0) return KEEL_PENDING; /* §1.6-1: empty chunks are ignored, not counted */

  size_t out = 0;
  keel_status_t s = keel_cobs_decode(rx->buf, n, rx->buf, sizeof rx->buf, &out);
  if (s != KEEL_OK) return KEEL_ERR_COBS; /* in-place output never exceeds the input */
  if (out < KEEL_MIN_RAW) return KEEL_ERR_SHORT;
  if (out > KEEL_MAX_RAW) return KEEL_ERR_OVERSIZE; /* unreachable: 247 encoded bytes decode to <= 246 */
  if (keel_crc16(rx->buf, out - KEEL_CRC_BYTES) != keel_get_u16(rx->buf + out - KEEL_CRC_BYTES)) return KEEL_ERR_CRC;
  *raw = rx->buf;
  *raw_len = (uint8_t)out;
  return KEEL_OK;
}
