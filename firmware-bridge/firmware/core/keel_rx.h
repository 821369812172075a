/*
 * keel firmware bridge: streaming frame receiver (docs/firmware-bridge.md §1.6 checks 1..5).
 *
 * Bytes go in one at a time; the receiver collects one chunk (at most KEEL_MAX_ENCODED
 * bytes, never more), and at each 0x00 decodes it in place and checks COBS, size and CRC.
 * Fixed memory, no allocation: safe to feed arbitrary bytes forever.
 */
#ifndef KEEL_RX_H
#define KEEL_RX_H

#include "keel_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Receiver state; zero it with keel_rx_init(). */
typedef struct {
  uint8_t buf[KEEL_MAX_ENCODED]; /* the current chunk, decoded in place at its delimiter */
  uint8_t len;                   /* bytes held in buf (<= KEEL_MAX_ENCODED) */
  uint8_t discarding;            /* 1 after an oversize chunk, until the next 0x00 */
} keel_rx_t;

/* Resets the receiver to "between frames". */
void keel_rx_init(keel_rx_t *rx);

/*
 * Feeds one byte. Returns KEEL_PENDING while no chunk completed (empty chunks included),
 * KEEL_OK with *raw / *raw_len set to the decoded frame (valid until the next call) when a
 * chunk passed checks 1..5, or the error kind (oversize, cobs, short, crc) of a dropped
 * chunk. KEEL_ERR_OVERSIZE is returned once, on the byte that made the chunk too long;
 * bytes up to and including the next 0x00 are then discarded (§1.6-2).
 */
keel_status_t keel_rx_push(keel_rx_t *rx, uint8_t byte, const uint8_t **raw, uint8_t *raw_len);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_RX_H */
