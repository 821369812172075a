/*
 * Fuzz loop for the protocol core (docs/firmware-bridge.md §6-6: no input may crash a peer
 * or make it use more than the §1.5 limits). Built with -fsanitize=address,undefined.
 *
 * Feeds N chunks (default 1,000,000) of random and mutated input into the MCU engine: pure
 * noise, oversize runs, valid frames of every type with random fields, valid frames with
 * flipped bits / truncation / inserted delimiters, and CRC-correct frames with random
 * version, type and length. The fake clock jumps randomly and the UART queue runs full now
 * and then. After every chunk it checks the invariants: the receiver holds at most 247
 * bytes, outputs are only driven within range, everything the engine sends passes the host's
 * checks, and the engine still answers a HELLO at the end. Also checks COBS round trips.
 *
 * usage: fuzz [chunks] [seed]
 */
#include "support.h"

static uint64_t rng_state;

static uint32_t rnd(void) {
  /* xorshift64*: deterministic per seed, so a failure can be replayed. */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

static keel_mcu_t m;
static fake_board_t fb;
static uint8_t buf[4096];

static void feed(const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++) keel_mcu_rx(&m, b[i]);
}

/* A valid-length payload for type t in the host -> MCU direction, random field values. */
static size_t random_payload(uint8_t t, uint8_t *p) {
  size_t n;
  switch (t) {
    case KEEL_T_HELLO: n = 5; break;
    case KEEL_T_SET: n = 3; break;
    case KEEL_T_CONFIG: n = 3; break;
    case KEEL_T_HEARTBEAT: n = 1; break;
    case KEEL_T_TIMESYNC: n = 4; break;
    default: n = below(KEEL_MAX_PAYLOAD + 1); break;
  }
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd();
  /* Bias towards in-range values so the handlers' accept paths run too. */
  if (t == KEEL_T_SET && below(2)) {
    p[0] = (uint8_t)below(4);
    keel_put_u16(p + 1, (uint16_t)below(300));
  }
  if (t == KEEL_T_CONFIG && below(2)) {
    p[0] = (uint8_t)below(10);
    keel_put_u16(p + 1, (uint16_t)(below(3) ? below(1100) : 0));
  }
  if (t == KEEL_T_HELLO && below(2)) p[0] = (uint8_t)below(3);
  return n;
}

static size_t wire_of(const uint8_t *raw, size_t rn, uint8_t *out) {
  size_t w = keel_cobs_encode(raw, rn, out);
  out[w++] = 0;
  return w;
}

static void check_invariants(uint64_t iter) {
  if (m.rx.len > KEEL_MAX_ENCODED) {
    fprintf(stderr, "iteration %llu: receiver holds %u bytes\n", (unsigned long long)iter, m.rx.len);
    abort();
  }
  if (fb.bad_output_write) {
    fprintf(stderr, "iteration %llu: output driven out of range\n", (unsigned long long)iter);
    abort();
  }
  for (size_t i = 0; i < fb.frame_count; i++) {
    if (fb.frames[i].status != KEEL_OK) {
      fprintf(stderr, "iteration %llu: MCU sent a frame the host refuses (%s)\n", (unsigned long long)iter,
              keel_status_name(fb.frames[i].status));
      abort();
    }
  }
  for (unsigned k = 1; k < KEEL_ERR_KINDS; k++) {
    if (fb.host_errors[k]) {
      fprintf(stderr, "iteration %llu: MCU output has %s damage\n", (unsigned long long)iter,
              keel_status_name((keel_status_t)k));
      abort();
    }
  }
  fake_clear(&fb);
}

static void cobs_roundtrips(uint32_t rounds) {
  static uint8_t src[1200], enc[1300], dec[1300];
  for (uint32_t r = 0; r < rounds; r++) {
    size_t n = below(1100);
    uint32_t zero_odds = 1 + below(20);
    for (size_t i = 0; i < n; i++) src[i] = below(zero_odds) ? (uint8_t)(1 + below(255)) : 0;
    size_t e = keel_cobs_encode(src, n, enc);
    CHECK(e <= n + 1 + n / 254, "encoded length %zu for %zu", e, n);
    CHECK(memchr(enc, 0, e) == NULL, "encoded output contains a zero");
    size_t d = 0;
    keel_status_t s = keel_cobs_decode(enc, e, dec, sizeof dec, &d);
    CHECK(s == KEEL_OK && d == n && !memcmp(src, dec, n), "round trip of %zu bytes", n);
    /* Random garbage never decodes past the output buffer. */
    for (size_t i = 0; i < e; i++) enc[i] = (uint8_t)rnd();
    s = keel_cobs_decode(enc, e, dec, 64, &d);
    CHECK(s != KEEL_OK || d <= 64, "decode overran");
  }
}

int main(int argc, char **argv) {
  uint64_t chunks = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000ULL;
  rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x6b65656cULL; /* "keel" */
  if (!rng_state) rng_state = 1;

  cobs_roundtrips(20000);

  fake_init(&fb, &keel_ref_board);
  if (keel_mcu_init(&m, &keel_ref_board, &fb.hal, 0) != 0) return 2;
  uint8_t raw[KEEL_MAX_RAW + 16], payload[KEEL_MAX_PAYLOAD + 16];
  uint64_t fed_bytes = 0;
  static const uint8_t mcu_types[] = {KEEL_T_HELLO, KEEL_T_SET, KEEL_T_CONFIG, KEEL_T_HEARTBEAT, KEEL_T_TIMESYNC};

  for (uint64_t it = 0; it < chunks; it++) {
    size_t n = 0;
    uint32_t mode = below(100);
    if (mode < 15) {
      /* Noise with occasional delimiters. */
      n = below(300);
      for (size_t i = 0; i < n; i++) buf[i] = below(16) ? (uint8_t)rnd() : 0;
    } else if (mode < 18) {
      /* An oversize run (248..3000 non-zero bytes), then maybe a delimiter. */
      n = 248 + below(2752);
      for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(1 + below(255));
      if (below(2)) buf[n++] = 0;
    } else if (mode < 55) {
      /* A valid frame of a host -> MCU type. */
      uint8_t t = mcu_types[below(sizeof mcu_types)];
      size_t pn = random_payload(t, payload);
      size_t rn = keel_frame_build(raw, 1, t, (uint16_t)rnd(), payload, pn);
      n = wire_of(raw, rn, buf);
    } else if (mode < 75) {
      /* A valid frame, then damaged: bit flips, truncation, inserted zeros, duplicated bytes. */
      uint8_t t = below(4) ? mcu_types[below(sizeof mcu_types)] : (uint8_t)rnd();
      size_t pn = random_payload(t, payload);
      size_t rn = keel_frame_build(raw, 1, t, (uint16_t)rnd(), payload, pn);
      n = wire_of(raw, rn, buf);
      uint32_t damage = 1 + below(4);
      for (uint32_t d = 0; d < damage && n > 1; d++) {
        switch (below(4)) {
          case 0: buf[below((uint32_t)n)] ^= (uint8_t)(1u << below(8)); break;
          case 1: n = 1 + below((uint32_t)n); break;
          case 2: buf[below((uint32_t)n)] = 0; break;
          default: {
            size_t at = below((uint32_t)n);
            if (n < sizeof buf - 1) {
              memmove(buf + at + 1, buf + at, n - at);
              n++;
            }
          }
        }
      }
    } else if (mode < 95) {
      /* CRC-correct frames with random version, type and length: checks 6..8 and NACKs. */
      uint8_t version = below(4) ? 1 : (uint8_t)rnd();
      uint8_t type = below(2) ? (uint8_t)below(12) : (uint8_t)rnd();
      size_t pn = below(4) ? below(12) : below(KEEL_MAX_PAYLOAD + 1);
      for (size_t i = 0; i < pn; i++) payload[i] = (uint8_t)rnd();
      size_t rn = keel_frame_build(raw, version, type, (uint16_t)rnd(), payload, pn);
      n = wire_of(raw, rn, buf);
    } else {
      /* A HELLO (new session) or a burst of identical frames (a flood). */
      uint8_t t = below(2) ? KEEL_T_HELLO : KEEL_T_HEARTBEAT;
      size_t pn = random_payload(t, payload);
      if (t == KEEL_T_HELLO) payload[0] = 1;
      size_t rn = keel_frame_build(raw, 1, t, (uint16_t)rnd(), payload, pn);
      size_t w = wire_of(raw, rn, buf);
      size_t copies = 1 + below(40);
      if (copies > sizeof buf / w) copies = sizeof buf / w;
      for (size_t c = 1; c < copies; c++) memcpy(buf + c * w, buf, w);
      n = w * copies;
    }
    feed(buf, n);
    fed_bytes += n;

    /* Time passes irregularly; the UART queue is sometimes full. */
    if (below(4) == 0) {
      fb.now += below(below(10) ? 20000 : 1500000);
      fb.tx_free = below(8) ? 1024 : (uint16_t)below(80);
      keel_mcu_poll(&m);
    }
    if (below(256) == 0) keel_mcu_uart_errors(&m, (uint16_t)below(5));
    for (uint8_t c = 0; c < 8; c++) fb.inputs[c] = (int16_t)below(1024);
    if (fb.frame_count > FAKE_MAX_FRAMES - 600 || (it & 1023) == 0) check_invariants(it);
  }
  check_invariants(chunks);

  /* Still alive and well: a clean HELLO after all that gets its HELLO_ACK. */
  fb.tx_free = 1024;
  keel_mcu_rx(&m, 0);
  payload[0] = 1;
  keel_put_u32(payload + 1, 0x600DF00D);
  size_t rn = keel_frame_build(raw, 1, KEEL_T_HELLO, 1, payload, 5);
  feed(buf, wire_of(raw, rn, buf));
  const sent_frame_t *ack = last_of_type(&fb, KEEL_T_HELLO_ACK);
  CHECK(ack && ack->msg.u.hello_ack.nonce == 0x600DF00D, "no HELLO_ACK after fuzzing");
  check_invariants(chunks + 1);

  uint32_t errs = 0;
  for (unsigned k = 1; k < KEEL_ERR_KINDS; k++) errs += m.stats.errors[k];
  printf("fuzz: %llu chunks, %llu bytes, %u frames accepted, %u refused (oversize %u cobs %u short %u crc %u "
         "version %u type %u length %u), %u NACKs, %u frames sent\n",
         (unsigned long long)chunks, (unsigned long long)fed_bytes, m.stats.frames_in, errs,
         m.stats.errors[KEEL_ERR_OVERSIZE], m.stats.errors[KEEL_ERR_COBS], m.stats.errors[KEEL_ERR_SHORT],
         m.stats.errors[KEEL_ERR_CRC], m.stats.errors[KEEL_ERR_VERSION], m.stats.errors[KEEL_ERR_TYPE],
         m.stats.errors[KEEL_ERR_LENGTH], m.stats.nacks_sent, m.stats.frames_out);
  CHECK(m.stats.frames_in > chunks / 4, "too few frames accepted: the fuzzer is not reaching the handlers");
  fake_free(&fb);
  return test_summary("fuzz");
}
