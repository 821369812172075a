/*
 * Checks the C protocol core against the shared vectors (firmware-bridge/vectors.json,
 * docs/firmware-bridge.md §10): every CRC and COBS vector, every frame encoded from its
 * fields and decoded back, every invalid frame's error kind and the NACK the MCU answers,
 * every stream's delivered frames and error counts. Frames the MCU sends (HELLO_ACK, SAMPLE,
 * ACK, NACK, HEARTBEAT, TIMESYNC replies) are also produced by the real MCU engine and must
 * match the vectors byte for byte.
 *
 * usage: test_vectors [path/to/vectors.json]
 */
#include "json.h"
#include "support.h"

static const char *str_of(const json_t *o, const char *key) {
  const json_t *v = json_get(o, key);
  return v && v->kind == JSON_STRING ? v->string : "";
}

static double num_of(const json_t *o, const char *key) {
  const json_t *v = json_get(o, key);
  if (!v || v->kind != JSON_NUMBER) {
    fprintf(stderr, "vectors: missing number '%s'\n", key);
    g_failures++;
    return -1;
  }
  return v->number;
}

static uint32_t u32_of(const json_t *o, const char *key) { return (uint32_t)num_of(o, key); }

static keel_dir_t dir_of(const json_t *o) {
  return strcmp(str_of(o, "direction"), "toHost") == 0 ? KEEL_TO_HOST : KEEL_TO_MCU;
}

/* Test-side payload encoder from the vector's fields (independent of the MCU's encoders). */
static size_t encode_fields(const char *kind, const json_t *f, uint8_t *p) {
  if (!strcmp(kind, "hello")) {
    p[0] = (uint8_t)u32_of(f, "maxVersion");
    keel_put_u32(p + 1, u32_of(f, "nonce"));
    return 5;
  }
  if (!strcmp(kind, "helloAck")) {
    const json_t *outs = json_get(f, "outputs");
    const char *id = str_of(f, "firmwareId");
    p[0] = (uint8_t)u32_of(f, "version");
    keel_put_u32(p + 1, u32_of(f, "nonce"));
    p[5] = (uint8_t)u32_of(f, "analogCount");
    p[6] = (uint8_t)u32_of(f, "digitalCount");
    p[7] = (uint8_t)outs->len;
    keel_put_u16(p + 8, (uint16_t)u32_of(f, "maxRateHz"));
    keel_put_u16(p + 10, (uint16_t)u32_of(f, "heartbeatTimeoutMs"));
    size_t at = 12;
    for (size_t i = 0; i < outs->len; i++) {
      p[at++] = (uint8_t)u32_of(outs->items[i], "pin");
      p[at++] = (uint8_t)u32_of(outs->items[i], "kind");
      p[at++] = (uint8_t)u32_of(outs->items[i], "safeValue");
    }
    p[at++] = (uint8_t)strlen(id);
    memcpy(p + at, id, strlen(id));
    return at + strlen(id);
  }
  if (!strcmp(kind, "sample")) {
    const json_t *vals = json_get(f, "values");
    p[0] = (uint8_t)u32_of(f, "channel");
    keel_put_u32(p + 1, u32_of(f, "t0Us"));
    keel_put_u16(p + 5, (uint16_t)u32_of(f, "periodUs"));
    p[7] = (uint8_t)vals->len;
    for (size_t i = 0; i < vals->len; i++) keel_put_u16(p + 8 + 2 * i, (uint16_t)(int16_t)vals->items[i]->number);
    return 8 + 2 * vals->len;
  }
  if (!strcmp(kind, "set")) {
    p[0] = (uint8_t)u32_of(f, "output");
    keel_put_u16(p + 1, (uint16_t)u32_of(f, "value"));
    return 3;
  }
  if (!strcmp(kind, "ack")) {
    keel_put_u16(p, (uint16_t)u32_of(f, "ackedSeq"));
    return 2;
  }
  if (!strcmp(kind, "nack")) {
    keel_put_u16(p, (uint16_t)u32_of(f, "refusedSeq"));
    p[2] = (uint8_t)u32_of(f, "reason");
    return 3;
  }
  if (!strcmp(kind, "heartbeat")) {
    p[0] = (uint8_t)u32_of(f, "flags");
    return 1;
  }
  if (!strcmp(kind, "timesyncRequest")) {
    keel_put_u32(p, u32_of(f, "token"));
    return 4;
  }
  if (!strcmp(kind, "timesyncReply")) {
    keel_put_u32(p, u32_of(f, "token"));
    keel_put_u32(p + 4, u32_of(f, "mcuTimeUs"));
    return 8;
  }
  if (!strcmp(kind, "config")) {
    p[0] = (uint8_t)u32_of(f, "channel");
    keel_put_u16(p + 1, (uint16_t)u32_of(f, "rateHz"));
    return 3;
  }
  if (!strcmp(kind, "error")) {
    const char *text = str_of(f, "text");
    p[0] = (uint8_t)u32_of(f, "code");
    p[1] = (uint8_t)strlen(text);
    memcpy(p + 2, text, strlen(text));
    return 2 + strlen(text);
  }
  fprintf(stderr, "vectors: unknown kind %s\n", kind);
  g_failures++;
  return 0;
}

/* Compares the decoder's typed view with the vector's fields. */
static void check_fields(const char *name, const char *kind, const json_t *f, const keel_msg_t *m) {
#define FIELD(expr, key) CHECK((uint32_t)(expr) == u32_of(f, key), "%s: field %s = %u", name, key, (unsigned)(expr))
  if (!strcmp(kind, "hello")) {
    FIELD(m->u.hello.max_version, "maxVersion");
    FIELD(m->u.hello.nonce, "nonce");
  } else if (!strcmp(kind, "helloAck")) {
    FIELD(m->u.hello_ack.version, "version");
    FIELD(m->u.hello_ack.nonce, "nonce");
    FIELD(m->u.hello_ack.analog_count, "analogCount");
    FIELD(m->u.hello_ack.digital_count, "digitalCount");
    FIELD(m->u.hello_ack.max_rate_hz, "maxRateHz");
    FIELD(m->u.hello_ack.heartbeat_timeout_ms, "heartbeatTimeoutMs");
    const json_t *outs = json_get(f, "outputs");
    CHECK(m->u.hello_ack.output_count == outs->len, "%s: output count", name);
    for (size_t i = 0; i < outs->len && i < m->u.hello_ack.output_count; i++) {
      const uint8_t *o = m->u.hello_ack.outputs + 3 * i;
      CHECK(o[0] == u32_of(outs->items[i], "pin") && o[1] == u32_of(outs->items[i], "kind") &&
                o[2] == u32_of(outs->items[i], "safeValue"),
            "%s: output %zu", name, i);
    }
    const char *id = str_of(f, "firmwareId");
    CHECK(m->u.hello_ack.id_len == strlen(id) && !memcmp(m->u.hello_ack.id, id, strlen(id)), "%s: firmware id", name);
  } else if (!strcmp(kind, "sample")) {
    FIELD(m->u.sample.channel, "channel");
    FIELD(m->u.sample.t0_us, "t0Us");
    FIELD(m->u.sample.period_us, "periodUs");
    const json_t *vals = json_get(f, "values");
    CHECK(m->u.sample.count == vals->len, "%s: count", name);
    for (size_t i = 0; i < vals->len && i < m->u.sample.count; i++)
      CHECK(keel_sample_value(m, (uint8_t)i) == (int16_t)vals->items[i]->number, "%s: value %zu", name, i);
  } else if (!strcmp(kind, "set")) {
    FIELD(m->u.set.output, "output");
    FIELD(m->u.set.value, "value");
  } else if (!strcmp(kind, "ack")) {
    FIELD(m->u.ack.seq, "ackedSeq");
  } else if (!strcmp(kind, "nack")) {
    FIELD(m->u.nack.seq, "refusedSeq");
    FIELD(m->u.nack.reason, "reason");
  } else if (!strcmp(kind, "heartbeat")) {
    FIELD(m->u.heartbeat.flags, "flags");
  } else if (!strcmp(kind, "timesyncRequest")) {
    FIELD(m->u.timesync.token, "token");
  } else if (!strcmp(kind, "timesyncReply")) {
    FIELD(m->u.timesync.token, "token");
    FIELD(m->u.timesync.mcu_time_us, "mcuTimeUs");
  } else if (!strcmp(kind, "config")) {
    FIELD(m->u.config.channel, "channel");
    FIELD(m->u.config.rate_hz, "rateHz");
  } else if (!strcmp(kind, "error")) {
    FIELD(m->u.error.code, "code");
    const char *text = str_of(f, "text");
    CHECK(m->u.error.text_len == strlen(text) && !memcmp(m->u.error.text, text, strlen(text)), "%s: text", name);
  }
#undef FIELD
}

static void test_crc(const json_t *list) {
  for (size_t i = 0; i < list->len; i++) {
    const json_t *v = list->items[i];
    uint8_t buf[1024];
    int n = hex_to_bytes(str_of(v, "inputHex"), buf, sizeof buf);
    CHECK(n >= 0, "%s: bad hex", str_of(v, "name"));
    if (n < 0) continue;
    uint16_t crc = keel_crc16(buf, (size_t)n);
    CHECK(crc == u32_of(v, "crc"), "%s: crc %04x", str_of(v, "name"), crc);
  }
}

static void test_cobs(const json_t *list) {
  for (size_t i = 0; i < list->len; i++) {
    const json_t *v = list->items[i];
    const char *name = str_of(v, "name");
    uint8_t dec[1024], enc[1100], out[1100];
    char hex[2300];
    int nd = hex_to_bytes(str_of(v, "decodedHex"), dec, sizeof dec);
    int ne = hex_to_bytes(str_of(v, "encodedHex"), enc, sizeof enc);
    CHECK(nd >= 0 && ne >= 0, "%s: bad hex", name);
    if (nd < 0 || ne < 0) continue;
    size_t w = keel_cobs_encode(dec, (size_t)nd, out);
    bytes_to_hex(out, w, hex);
    CHECK(!strcmp(hex, str_of(v, "encodedHex")), "%s: encoded %s", name, hex);
    size_t got = 0;
    keel_status_t s = keel_cobs_decode(enc, (size_t)ne, out, sizeof out, &got);
    CHECK(s == KEEL_OK && got == (size_t)nd && !memcmp(out, dec, got), "%s: decode status %s len %zu", name,
          keel_status_name(s), got);
    /* In place, as the receiver does it. */
    memcpy(out, enc, (size_t)ne);
    s = keel_cobs_decode(out, (size_t)ne, out, sizeof out, &got);
    CHECK(s == KEEL_OK && got == (size_t)nd && !memcmp(out, dec, got), "%s: in-place decode", name);
  }
}

/* Builds a board from a HELLO_ACK vector's fields so the MCU engine can announce it. */
typedef struct {
  keel_board_t board;
  keel_output_desc_t outs[KEEL_MAX_OUTPUTS];
  char id[KEEL_MAX_ID + 1];
} vec_board_t;

static void board_from_fields(const json_t *f, vec_board_t *b) {
  const json_t *outs = json_get(f, "outputs");
  memset(b, 0, sizeof *b);
  for (size_t i = 0; i < outs->len && i < KEEL_MAX_OUTPUTS; i++) {
    b->outs[i].pin = (uint8_t)u32_of(outs->items[i], "pin");
    b->outs[i].kind = (uint8_t)u32_of(outs->items[i], "kind");
    b->outs[i].safe_value = (uint8_t)u32_of(outs->items[i], "safeValue");
  }
  snprintf(b->id, sizeof b->id, "%s", str_of(f, "firmwareId"));
  b->board.analog_count = (uint8_t)u32_of(f, "analogCount");
  b->board.digital_count = (uint8_t)u32_of(f, "digitalCount");
  b->board.output_count = (uint8_t)outs->len;
  b->board.outputs = b->outs;
  b->board.max_rate_hz = (uint16_t)u32_of(f, "maxRateHz");
  b->board.heartbeat_timeout_ms = (uint16_t)u32_of(f, "heartbeatTimeoutMs");
  b->board.firmware_id = b->id;
  b->board.max_batch = 100;
}

static void hello(keel_mcu_t *m, uint8_t max_version, uint32_t nonce, uint16_t seq) {
  uint8_t p[5];
  p[0] = max_version;
  keel_put_u32(p + 1, nonce);
  send_to_mcu(m, 1, KEEL_T_HELLO, seq, p, 5);
}

/*
 * Makes the MCU engine send the frame of an MCU -> host vector and compares raw bytes.
 * Returns 1 if the kind is one the engine produces, 0 if skipped.
 */
static int engine_reproduces(const json_t *v, const char *kind, const json_t *f, const char *raw_hex) {
  const char *name = str_of(v, "name");
  uint16_t seq = (uint16_t)u32_of(v, "seq");
  static keel_mcu_t m;
  static fake_board_t fb;
  vec_board_t vb;
  const keel_board_t *board = &keel_ref_board;
  if (!strcmp(kind, "helloAck")) {
    board_from_fields(f, &vb);
    board = &vb.board;
  }
  fake_init(&fb, board);
  if (keel_mcu_init(&m, board, &fb.hal, 0) != 0) {
    CHECK(0, "%s: board refused by keel_mcu_init", name);
    fake_free(&fb);
    return 1;
  }
  int produced = 1;
  uint8_t p[8];
  if (!strcmp(kind, "helloAck")) {
    m.tx_seq = seq;
    hello(&m, (uint8_t)u32_of(f, "version"), u32_of(f, "nonce"), 0);
  } else if (!strcmp(kind, "ack")) {
    hello(&m, 1, 7, 0);
    m.tx_seq = seq;
    p[0] = 0;
    keel_put_u16(p + 1, 200);
    send_to_mcu(&m, 1, KEEL_T_SET, (uint16_t)u32_of(f, "ackedSeq"), p, 3);
  } else if (!strcmp(kind, "nack")) {
    uint8_t reason = (uint8_t)u32_of(f, "reason");
    uint16_t refused = (uint16_t)u32_of(f, "refusedSeq");
    if (reason != KEEL_NACK_NOT_READY) hello(&m, 1, 7, 0);
    m.tx_seq = seq;
    switch (reason) {
      case KEEL_NACK_BAD_TARGET: p[0] = 99; keel_put_u16(p + 1, 0); send_to_mcu(&m, 1, KEEL_T_SET, refused, p, 3); break;
      case KEEL_NACK_BAD_VALUE: p[0] = 1; keel_put_u16(p + 1, 2); send_to_mcu(&m, 1, KEEL_T_SET, refused, p, 3); break;
      case KEEL_NACK_UNSUPPORTED_TYPE: send_to_mcu(&m, 1, 0x0B, refused, p, 0); break;
      case KEEL_NACK_BAD_LENGTH: send_to_mcu(&m, 1, KEEL_T_HEARTBEAT, refused, p, 0); break;
      case KEEL_NACK_UNSUPPORTED_VERSION: p[0] = 0; send_to_mcu(&m, 2, KEEL_T_HEARTBEAT, refused, p, 1); break;
      default: p[0] = 0; send_to_mcu(&m, 1, KEEL_T_HEARTBEAT, refused, p, 1); break;
    }
  } else if (!strcmp(kind, "heartbeat")) {
    hello(&m, 1, 7, 0);
    if (u32_of(f, "flags") & KEEL_HB_FAILSAFE) {
      run_for(&m, &fb, 999000, 1000); /* just short of the 1000 ms failsafe timeout */
      m.tx_seq = seq;
      fake_clear(&fb);
      run_for(&m, &fb, 1000, 1000);
    } else {
      m.tx_seq = seq;
      fake_clear(&fb);
      run_for(&m, &fb, 250000, 1000);
    }
  } else if (!strcmp(kind, "timesyncReply")) {
    hello(&m, 1, 7, 0);
    fb.now = u32_of(f, "mcuTimeUs");
    m.tx_seq = seq;
    keel_put_u32(p, u32_of(f, "token"));
    send_to_mcu(&m, 1, KEEL_T_TIMESYNC, 1, p, 4);
  } else if (!strcmp(kind, "sample")) {
    const json_t *vals = json_get(f, "values");
    uint32_t period = u32_of(f, "periodUs");
    uint16_t rate = (uint16_t)(period ? 1000000u / period : 10u);
    static int16_t script[128];
    for (size_t i = 0; i < vals->len && i < 128; i++) script[i] = (int16_t)vals->items[i]->number;
    /* The engine batches up to max_batch values: use a board whose batch equals the count. */
    static keel_board_t sb;
    sb = keel_ref_board;
    sb.max_batch = (uint8_t)vals->len;
    fb.board = &sb;
    keel_mcu_init(&m, &sb, &fb.hal, 0);
    uint8_t ch = (uint8_t)u32_of(f, "channel");
    fb.now = u32_of(f, "t0Us") - 10;
    hello(&m, 1, 7, 0);
    fb.now += 10;
    p[0] = ch;
    keel_put_u16(p + 1, rate);
    send_to_mcu(&m, 1, KEEL_T_CONFIG, 1, p, 3);
    m.tx_seq = seq;
    fake_clear(&fb);
    /* Feed the scripted values through the fake inputs, one per poll at each due time. */
    for (size_t i = 0; i < vals->len; i++) {
      fb.inputs[ch] = script[i];
      keel_mcu_poll(&m);
      fb.now += period ? period : 100000u;
    }
  } else {
    produced = 0;
  }
  if (produced) {
    const sent_frame_t *fr = NULL;
    uint8_t want_type = (uint8_t)u32_of(v, "type");
    for (size_t i = 0; i < fb.frame_count && !fr; i++)
      if (fb.frames[i].raw[1] == want_type) fr = &fb.frames[i];
    CHECK(fr != NULL, "%s: the MCU engine sent no frame of this type", name);
    if (fr) {
      char hex[KEEL_MAX_RAW * 2 + 1];
      bytes_to_hex(fr->raw, fr->len, hex);
      CHECK(!strcmp(hex, raw_hex), "%s: MCU engine sent %s", name, hex);
    }
  }
  fake_free(&fb);
  return produced;
}

static void test_frames(const json_t *list) {
  int reproduced = 0;
  for (size_t i = 0; i < list->len; i++) {
    const json_t *v = list->items[i];
    const char *name = str_of(v, "name");
    const char *kind = str_of(v, "kind");
    const json_t *f = json_get(v, "fields");
    uint8_t payload[KEEL_MAX_PAYLOAD + 16], raw[KEEL_MAX_RAW], wire[KEEL_MAX_WIRE + 8];
    char hex[600];

    size_t n = encode_fields(kind, f, payload);
    bytes_to_hex(payload, n, hex);
    CHECK(!strcmp(hex, str_of(v, "payloadHex")), "%s: payload %s", name, hex);
    size_t rn = keel_frame_build(raw, (uint8_t)u32_of(v, "version"), (uint8_t)u32_of(v, "type"),
                                 (uint16_t)u32_of(v, "seq"), payload, n);
    bytes_to_hex(raw, rn, hex);
    CHECK(!strcmp(hex, str_of(v, "rawHex")), "%s: raw %s", name, hex);
    size_t wn = keel_cobs_encode(raw, rn, wire);
    wire[wn++] = 0;
    CHECK(wn <= KEEL_MAX_WIRE, "%s: wire too long", name);
    bytes_to_hex(wire, wn, hex);
    CHECK(!strcmp(hex, str_of(v, "wireHex")), "%s: wire %s", name, hex);

    /* Decode the vector's wire bytes with the streaming receiver and the frame checks. */
    uint8_t in[KEEL_MAX_WIRE + 8];
    int win = hex_to_bytes(str_of(v, "wireHex"), in, sizeof in);
    keel_rx_t rx;
    keel_rx_init(&rx);
    int frames = 0;
    for (int k = 0; k < win; k++) {
      const uint8_t *r;
      uint8_t rl;
      keel_status_t s = keel_rx_push(&rx, in[k], &r, &rl);
      if (s == KEEL_PENDING) continue;
      CHECK(s == KEEL_OK, "%s: receiver says %s", name, keel_status_name(s));
      if (s != KEEL_OK) continue;
      frames++;
      bytes_to_hex(r, rl, hex);
      CHECK(!strcmp(hex, str_of(v, "rawHex")), "%s: received raw %s", name, hex);
      keel_msg_t msg;
      keel_status_t c = keel_frame_check(r, rl, dir_of(v), KEEL_VERSION, &msg);
      CHECK(c == KEEL_OK, "%s: frame check says %s", name, keel_status_name(c));
      if (c != KEEL_OK) continue;
      CHECK(msg.h.seq == u32_of(v, "seq") && msg.h.type == u32_of(v, "type"), "%s: header", name);
      check_fields(name, kind, f, &msg);
      /* The other direction must refuse direction-specific types (§3). */
      keel_dir_t other = dir_of(v) == KEEL_TO_MCU ? KEEL_TO_HOST : KEEL_TO_MCU;
      if (msg.h.type != KEEL_T_HEARTBEAT && msg.h.type != KEEL_T_TIMESYNC)
        CHECK(keel_frame_check(r, rl, other, KEEL_VERSION, &msg) == KEEL_ERR_TYPE, "%s: accepted in the wrong direction",
              name);
    }
    CHECK(frames == 1, "%s: %d frames received", name, frames);

    if (dir_of(v) == KEEL_TO_HOST) reproduced += engine_reproduces(v, kind, f, str_of(v, "rawHex"));
  }
  CHECK(reproduced >= 10, "only %d MCU frames reproduced by the engine", reproduced);
}

static void test_invalid(const json_t *list) {
  for (size_t i = 0; i < list->len; i++) {
    const json_t *v = list->items[i];
    const char *name = str_of(v, "name");
    const char *want = str_of(v, "error");
    static uint8_t in[8192];
    int n = hex_to_bytes(str_of(v, "wireHex"), in, sizeof in);
    CHECK(n > 0, "%s: bad hex", name);
    if (n <= 0) continue;
    keel_rx_t rx;
    keel_rx_init(&rx);
    int errors = 0;
    const char *got = "none";
    for (int k = 0; k < n; k++) {
      const uint8_t *r;
      uint8_t rl;
      keel_status_t s = keel_rx_push(&rx, in[k], &r, &rl);
      if (s == KEEL_PENDING) continue;
      if (s == KEEL_OK) {
        keel_msg_t msg;
        s = keel_frame_check(r, rl, dir_of(v), KEEL_VERSION, &msg);
      }
      errors++;
      got = keel_status_name(s);
    }
    CHECK(errors == 1 && !strcmp(got, want), "%s: got %d results, last %s, want %s", name, errors, got, want);

    if (dir_of(v) != KEEL_TO_MCU) continue;
    /* The MCU engine, before and after a HELLO, counts it and answers the stated NACK. */
    const json_t *nack = json_get(v, "nack");
    for (int with_session = 0; with_session < 2; with_session++) {
      static keel_mcu_t m;
      static fake_board_t fb;
      fake_init(&fb, &keel_ref_board);
      keel_mcu_init(&m, &keel_ref_board, &fb.hal, 0);
      if (with_session) hello(&m, 1, 1, 0);
      fake_clear(&fb);
      for (int k = 0; k < n; k++) keel_mcu_rx(&m, in[k]);
      uint32_t total = 0;
      for (unsigned k = 1; k < KEEL_ERR_KINDS; k++) total += m.stats.errors[k];
      CHECK(total == 1, "%s: MCU counted %u errors", name, total);
      if (!nack || nack->kind == JSON_NULL) {
        CHECK(fb.frame_count == 0, "%s: MCU answered an unanswerable frame (session %d)", name, with_session);
      } else {
        const sent_frame_t *fr = fb.frame_count == 1 ? &fb.frames[0] : NULL;
        CHECK(fr && fr->status == KEEL_OK && fr->msg.h.type == KEEL_T_NACK &&
                  fr->msg.u.nack.reason == (uint8_t)nack->number,
              "%s: expected one NACK %d (session %d), got %zu frames", name, (int)nack->number, with_session,
              fb.frame_count);
        /* The refused seq is the frame's own (bytes 2..3 of raw, §4.6). */
        uint8_t dec[KEEL_MAX_RAW];
        size_t dl = 0;
        if (fr && keel_cobs_decode(in, (size_t)n - 1, dec, sizeof dec, &dl) == KEEL_OK && dl >= 4)
          CHECK(fr->msg.u.nack.seq == keel_get_u16(dec + 2), "%s: NACK carries seq %u", name, fr->msg.u.nack.seq);
        CHECK(fr == NULL || fr->msg.h.version == 1, "%s: NACK not sent as version 1", name);
      }
      fake_free(&fb);
    }
  }
}

static void test_streams(const json_t *list) {
  for (size_t i = 0; i < list->len; i++) {
    const json_t *v = list->items[i];
    const char *name = str_of(v, "name");
    static uint8_t in[16384];
    int n = hex_to_bytes(str_of(v, "wireHex"), in, sizeof in);
    CHECK(n > 0, "%s: bad hex", name);
    if (n <= 0) continue;
    const json_t *frames = json_get(v, "frames");
    const json_t *errors = json_get(v, "errors");
    keel_rx_t rx;
    keel_rx_init(&rx);
    uint32_t counts[KEEL_ERR_KINDS] = {0};
    size_t got = 0;
    for (int k = 0; k < n; k++) {
      const uint8_t *r;
      uint8_t rl;
      keel_status_t s = keel_rx_push(&rx, in[k], &r, &rl);
      if (s == KEEL_PENDING) continue;
      if (s != KEEL_OK) {
        counts[s]++;
        continue;
      }
      char hex[KEEL_MAX_RAW * 2 + 1];
      bytes_to_hex(r, rl, hex);
      CHECK(got < frames->len && !strcmp(hex, frames->items[got]->string), "%s: frame %zu is %s", name, got, hex);
      got++;
    }
    CHECK(got == frames->len, "%s: %zu frames, want %zu", name, got, frames->len);
    for (unsigned k = 1; k <= KEEL_ERR_CRC; k++) {
      const json_t *want = json_get(errors, keel_status_name((keel_status_t)k));
      uint32_t w = want ? (uint32_t)want->number : 0;
      CHECK(counts[k] == w, "%s: %u %s errors, want %u", name, counts[k], keel_status_name((keel_status_t)k), w);
    }
  }
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "../vectors.json";
  char err[256];
  json_t *doc = json_parse_file(path, err, sizeof err);
  if (!doc) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  CHECK(!strcmp(str_of(doc, "schema"), "keel-firmware-bridge-vectors/1"), "schema %s", str_of(doc, "schema"));
  const json_t *limits = json_get(doc, "limits");
  CHECK(u32_of(limits, "maxPayload") == KEEL_MAX_PAYLOAD && u32_of(limits, "maxRaw") == KEEL_MAX_RAW &&
            u32_of(limits, "maxEncoded") == KEEL_MAX_ENCODED && u32_of(limits, "maxWire") == KEEL_MAX_WIRE,
        "limits differ from keel_proto.h");
  const char *sections[] = {"crc", "cobs", "frames", "invalid", "streams"};
  for (size_t i = 0; i < 5; i++) {
    const json_t *s = json_get(doc, sections[i]);
    CHECK(s && s->kind == JSON_ARRAY && s->len > 0, "section %s missing or empty", sections[i]);
    if (!s || s->kind != JSON_ARRAY) {
      json_free(doc);
      return test_summary("vectors");
    }
  }
  test_crc(json_get(doc, "crc"));
  test_cobs(json_get(doc, "cobs"));
  test_frames(json_get(doc, "frames"));
  test_invalid(json_get(doc, "invalid"));
  test_streams(json_get(doc, "streams"));
  printf("vectors: %zu crc, %zu cobs, %zu frames, %zu invalid, %zu streams\n", json_get(doc, "crc")->len,
         json_get(doc, "cobs")->len, json_get(doc, "frames")->len, json_get(doc, "invalid")->len,
         json_get(doc, "streams")->len);
  json_free(doc);
  return test_summary("vectors");
}
