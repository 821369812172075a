/*
 * keel firmware bridge, protocol v1: wire codec (docs/firmware-bridge.md §1, §3, §4).
 *
 * Portable C99, no allocation, no global state: CRC-16/IBM-3740, COBS, frame build,
 * frame checks 4..9 of §1.6 and a typed view of every payload. Runs unchanged on the
 * host (unit tests, fuzzing) and on the AVR.
 */
#ifndef KEEL_PROTO_H
#define KEEL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* §1.5 sizes. */
#define KEEL_VERSION 1u         /* protocol version spoken by this code */
#define KEEL_HEADER_BYTES 4u    /* version u8, type u8, seq u16le (§1.2) */
#define KEEL_CRC_BYTES 2u       /* crc u16le (§1.3) */
#define KEEL_MAX_PAYLOAD 240u   /* payload bytes */
#define KEEL_MIN_RAW 6u         /* header + crc */
#define KEEL_MAX_RAW 246u       /* header + payload + crc */
#define KEEL_MAX_ENCODED 247u   /* COBS bytes between two delimiters */
#define KEEL_MAX_WIRE 248u      /* whole frame including its 0x00 delimiter */

/* §3 message types. */
enum {
  KEEL_T_HELLO = 0x01,
  KEEL_T_HELLO_ACK = 0x02,
  KEEL_T_SAMPLE = 0x03,
  KEEL_T_SET = 0x04,
  KEEL_T_ACK = 0x05,
  KEEL_T_NACK = 0x06,
  KEEL_T_HEARTBEAT = 0x07,
  KEEL_T_TIMESYNC = 0x08,
  KEEL_T_CONFIG = 0x09,
  KEEL_T_ERROR = 0x0A
};

/* §4.6 NACK reasons. */
enum {
  KEEL_NACK_BAD_TARGET = 1,
  KEEL_NACK_BAD_VALUE = 2,
  KEEL_NACK_UNSUPPORTED_TYPE = 3,
  KEEL_NACK_BAD_LENGTH = 4,
  KEEL_NACK_UNSUPPORTED_VERSION = 5,
  KEEL_NACK_NOT_READY = 6
};

/* §4.10 ERROR codes. */
enum {
  KEEL_ERROR_SAMPLES_DROPPED = 1,
  KEEL_ERROR_UART = 2,
  KEEL_ERROR_WATCHDOG_RESET = 3,
  KEEL_ERROR_INPUT = 4,
  KEEL_ERROR_OTHER = 255
};

/* §4.7 HEARTBEAT flag bits (MCU -> host). */
#define KEEL_HB_FAILSAFE 0x01u

/* §4.2 output kinds. */
enum { KEEL_OUT_DIGITAL = 0, KEEL_OUT_PWM = 1 };

/* §4.2 / §4.3 limits checked by the host (error kind `value`). */
#define KEEL_MAX_ANALOG 64u
#define KEEL_MAX_DIGITAL 64u
#define KEEL_MAX_OUTPUTS 32u
#define KEEL_MAX_ID 64u
#define KEEL_MAX_SAMPLE_VALUES 100u

/*
 * Result of a check, in the order of §1.6. KEEL_OK: the frame passed every check.
 * KEEL_PENDING is only returned by the streaming receiver: no complete chunk yet.
 */
typedef enum {
  KEEL_OK = 0,
  KEEL_ERR_OVERSIZE = 1, /* §1.6-2 */
  KEEL_ERR_COBS = 2,     /* §1.6-3 */
  KEEL_ERR_SHORT = 3,    /* §1.6-4 */
  KEEL_ERR_CRC = 4,      /* §1.6-5 */
  KEEL_ERR_VERSION = 5,  /* §1.6-6 */
  KEEL_ERR_TYPE = 6,     /* §1.6-7 */
  KEEL_ERR_LENGTH = 7,   /* §1.6-8 */
  KEEL_ERR_VALUE = 8,    /* §1.6-9 (host side only) */
  KEEL_PENDING = 9
} keel_status_t;

/* Number of distinct error kinds (KEEL_ERR_OVERSIZE..KEEL_ERR_VALUE), for counter arrays. */
#define KEEL_ERR_KINDS 9u

/* Which peer receives a frame: types are accepted per direction (§3). */
typedef enum { KEEL_TO_MCU = 0, KEEL_TO_HOST = 1 } keel_dir_t;

/* The §1.2 header. */
typedef struct {
  uint8_t version;
  uint8_t type;
  uint16_t seq;
} keel_header_t;

/* One output as described in HELLO_ACK (§4.2). */
typedef struct {
  uint8_t pin;
  uint8_t kind;       /* KEEL_OUT_DIGITAL or KEEL_OUT_PWM */
  uint8_t safe_value; /* digital 0/1, PWM 0..255 */
} keel_output_desc_t;

/*
 * A checked frame: header plus a typed view of the payload. Pointers point into the raw
 * buffer that was checked, so the view is valid only as long as that buffer is.
 */
typedef struct {
  keel_header_t h;
  const uint8_t *payload;
  uint8_t payload_len;
  union {
    struct { uint8_t max_version; uint32_t nonce; } hello;
    struct {
      uint8_t version;
      uint32_t nonce;
      uint8_t analog_count, digital_count, output_count;
      uint16_t max_rate_hz, heartbeat_timeout_ms;
      const uint8_t *outputs; /* output_count x (pin, kind, safe_value) */
      uint8_t id_len;
      const uint8_t *id;
    } hello_ack;
    struct {
      uint8_t channel;
      uint32_t t0_us;
      uint16_t period_us;
      uint8_t count;
      const uint8_t *values; /* count x i16le; read with keel_sample_value() */
    } sample;
    struct { uint8_t output; uint16_t value; } set;
    struct { uint16_t seq; } ack;
    struct { uint16_t seq; uint8_t reason; } nack;
    struct { uint8_t flags; } heartbeat;
    struct { uint32_t token; uint32_t mcu_time_us; } timesync; /* mcu_time_us: replies only */
    struct { uint8_t channel; uint16_t rate_hz; } config;
    struct { uint8_t code; uint8_t text_len; const uint8_t *text; } error;
  } u;
} keel_msg_t;

/* Little-endian helpers. */
uint16_t keel_get_u16(const uint8_t *p);
uint32_t keel_get_u32(const uint8_t *p);
void keel_put_u16(uint8_t *p, uint16_t v);
void keel_put_u32(uint8_t *p, uint32_t v);

/* CRC-16/IBM-3740 (§1.3) of n bytes; check value over "123456789" is 0x29B1. */
uint16_t keel_crc16(const uint8_t *data, size_t n);
/* Continues a CRC-16/IBM-3740 over more bytes (start with crc = 0xFFFF). */
uint16_t keel_crc16_update(uint16_t crc, const uint8_t *data, size_t n);

/*
 * COBS-encodes n bytes (§1.4, canonical form) into dst, which must hold n + 1 + n/254
 * bytes; writes no delimiter. Returns the number of bytes written.
 */
size_t keel_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst);

/* Receives COBS output piece by piece: a code byte, then a block of the input. */
typedef void (*keel_emit_fn)(void *ctx, const uint8_t *bytes, uint16_t n);

/*
 * COBS-encodes n bytes without an output buffer, handing each code byte and each block of
 * src to emit in wire order; returns the encoded length. Same bytes as keel_cobs_encode().
 */
size_t keel_cobs_encode_emit(const uint8_t *src, size_t n, keel_emit_fn emit, void *ctx);

/*
 * Decodes a COBS chunk of n bytes (no delimiter) into dst (capacity dst_cap bytes; dst may
 * equal src for in-place decoding). Returns KEEL_OK and the decoded length in *out_len,
 * KEEL_ERR_COBS for a 0x00 code or a code pointing past the end (§1.4), or
 * KEEL_ERR_OVERSIZE if the output would exceed dst_cap.
 */
keel_status_t keel_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t dst_cap, size_t *out_len);

/*
 * Builds raw = header || payload || crc into raw (capacity KEEL_MAX_RAW). payload may
 * already sit at raw + 4 (it is moved with memmove). Returns the raw length, or 0 if
 * payload_len > KEEL_MAX_PAYLOAD.
 */
size_t keel_frame_build(uint8_t *raw, uint8_t version, uint8_t type, uint16_t seq,
                        const uint8_t *payload, size_t payload_len);

/*
 * Checks a decoded raw frame as a receiver in direction dir (§1.6 checks 4..9): size,
 * CRC, version (must equal want_version), type accepted in dir, exact payload length,
 * host-side value ranges. On KEEL_OK fills *msg; on KEEL_ERR_VERSION, KEEL_ERR_TYPE and
 * KEEL_ERR_LENGTH it still fills msg->h (the seq is trustworthy once the CRC matched) so
 * the MCU can NACK it. msg may not be NULL.
 */
keel_status_t keel_frame_check(const uint8_t *raw, size_t len, keel_dir_t dir, uint8_t want_version,
                               keel_msg_t *msg);

/* Value i (0-based) of a checked SAMPLE frame. */
int16_t keel_sample_value(const keel_msg_t *msg, uint8_t i);

/* Whether type is accepted by a receiver in direction dir (§3). */
int keel_type_accepted(uint8_t type, keel_dir_t dir);

/* Stable lower-case name of an error kind as used in the spec and vectors ("crc", ...), or "ok". */
const char *keel_status_name(keel_status_t s);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_PROTO_H */
