/*
 * Behaviour of the MCU protocol engine on a simulated board with a fake clock
 * (docs/firmware-bridge.md §2, §4, §5.2): handshake, not-ready NACKs, SET/CONFIG/TIMESYNC,
 * sampling schedule and batching, heartbeats, failsafe, ERROR reports, seq wrap, and that
 * every byte the engine sends is a valid MCU -> host frame.
 */
#include "support.h"

static keel_mcu_t m;
static fake_board_t fb;

static void setup(void) {
  fake_init(&fb, &keel_ref_board);
  CHECK(keel_mcu_init(&m, &keel_ref_board, &fb.hal, 0) == 0, "init");
}

static void teardown(void) {
  /* Everything the engine ever sent must pass the host's checks 1..9. */
  for (size_t i = 0; i < fb.frame_count; i++)
    CHECK(fb.frames[i].status == KEEL_OK, "sent frame %zu type %u fails host checks: %s", i, fb.frames[i].raw[1],
          keel_status_name(fb.frames[i].status));
  for (unsigned k = 1; k < KEEL_ERR_KINDS; k++) CHECK(fb.host_errors[k] == 0, "host saw %s errors", keel_status_name((keel_status_t)k));
  CHECK(!fb.bad_output_write, "an output was driven out of range");
  fake_free(&fb);
}

static void hello(uint8_t max_version, uint32_t nonce, uint16_t seq) {
  uint8_t p[5];
  p[0] = max_version;
  keel_put_u32(p + 1, nonce);
  send_to_mcu(&m, 1, KEEL_T_HELLO, seq, p, 5);
}

static void set(uint8_t out, uint16_t value, uint16_t seq) {
  uint8_t p[3];
  p[0] = out;
  keel_put_u16(p + 1, value);
  send_to_mcu(&m, 1, KEEL_T_SET, seq, p, 3);
}

static void config(uint8_t ch, uint16_t rate, uint16_t seq) {
  uint8_t p[3];
  p[0] = ch;
  keel_put_u16(p + 1, rate);
  send_to_mcu(&m, 1, KEEL_T_CONFIG, seq, p, 3);
}

static void heartbeat(uint16_t seq) {
  uint8_t p[1] = {0};
  send_to_mcu(&m, 1, KEEL_T_HEARTBEAT, seq, p, 1);
}

static const sent_frame_t *only_frame(void) { return fb.frame_count == 1 ? &fb.frames[0] : NULL; }

static void test_not_ready_until_hello(void) {
  setup();
  /* Safe values are driven at power-up. */
  CHECK(fb.outputs[0] == 0 && fb.outputs[1] == 0 && fb.outputs[2] == 128, "outputs not safe at init");
  run_for(&m, &fb, 2000000, 1000);
  CHECK(fb.frame_count == 0, "sent %zu frames before HELLO (§2.2)", fb.frame_count);
  set(0, 10, 3);
  const sent_frame_t *f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_NACK && f->msg.u.nack.reason == KEEL_NACK_NOT_READY && f->msg.u.nack.seq == 3,
        "SET before HELLO must be NACK 6");
  CHECK(fb.outputs[0] == 0, "SET before HELLO drove the output");
  fake_clear(&fb);
  heartbeat(4);
  f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_NACK && f->msg.u.nack.reason == KEEL_NACK_NOT_READY, "HEARTBEAT before HELLO");
  /* The failsafe timer does not run before a session (outputs are safe anyway, nothing is sent). */
  fake_clear(&fb);
  run_for(&m, &fb, 3000000, 10000);
  CHECK(fb.frame_count == 0 && m.stats.failsafe_entries == 0, "activity without a session");
  teardown();
}

static void test_hello(void) {
  setup();
  hello(3, 0xCAFEBABE, 0);
  const sent_frame_t *f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_HELLO_ACK, "no HELLO_ACK");
  if (f) {
    CHECK(f->msg.u.hello_ack.version == 1, "version chosen %u, want min(3,1)", f->msg.u.hello_ack.version);
    CHECK(f->msg.u.hello_ack.nonce == 0xCAFEBABE, "nonce not echoed");
    CHECK(f->msg.u.hello_ack.analog_count == 6 && f->msg.u.hello_ack.digital_count == 2 &&
              f->msg.u.hello_ack.output_count == 3,
          "counts");
    CHECK(f->msg.h.seq == 0, "first MCU frame has seq %u", f->msg.h.seq);
  }
  /* A second HELLO: new session, tx seq continues (§2.1), rates off, outputs safe. */
  set(0, 77, 1);
  config(0, 100, 2);
  CHECK(fb.outputs[0] == 77, "SET did not drive");
  fake_clear(&fb);
  hello(1, 2, 3);
  f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_HELLO_ACK && f->msg.h.seq == 3, "second HELLO_ACK seq");
  CHECK(fb.outputs[0] == 0, "HELLO did not drive outputs safe");
  fake_clear(&fb);
  run_for(&m, &fb, 200000, 1000);
  CHECK(count_type(&fb, KEEL_T_SAMPLE) == 0, "sampling survived a new HELLO");
  /* No version in common: HELLO_ACK version 0 and no session. */
  fake_clear(&fb);
  hello(0, 9, 4);
  f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_HELLO_ACK && f->msg.u.hello_ack.version == 0, "HELLO maxVersion 0");
  fake_clear(&fb);
  set(0, 1, 5);
  f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_NACK && f->msg.u.nack.reason == KEEL_NACK_NOT_READY, "session after version 0");
  teardown();
}

static void test_set_and_config(void) {
  setup();
  hello(1, 1, 0);
  fake_clear(&fb);
  set(0, 255, 10);
  set(1, 1, 11);
  set(2, 0, 12);
  CHECK(fb.outputs[0] == 255 && fb.outputs[1] == 1 && fb.outputs[2] == 0, "SET values not driven");
  CHECK(count_type(&fb, KEEL_T_ACK) == 3, "3 ACKs expected");
  CHECK(fb.frames[0].msg.u.ack.seq == 10 && fb.frames[2].msg.u.ack.seq == 12, "ACK seqs");
  fake_clear(&fb);
  set(3, 0, 20);   /* no output 3 */
  set(1, 2, 21);   /* digital takes 0/1 */
  set(0, 256, 22); /* PWM takes 0..255 */
  set(255, 65535, 23);
  CHECK(fb.frame_count == 4, "4 NACKs expected");
  if (fb.frame_count == 4) {
    CHECK(fb.frames[0].msg.u.nack.reason == KEEL_NACK_BAD_TARGET && fb.frames[0].msg.u.nack.seq == 20, "NACK 1");
    CHECK(fb.frames[1].msg.u.nack.reason == KEEL_NACK_BAD_VALUE && fb.frames[1].msg.u.nack.seq == 21, "NACK 2 digital");
    CHECK(fb.frames[2].msg.u.nack.reason == KEEL_NACK_BAD_VALUE, "NACK 2 pwm");
    CHECK(fb.frames[3].msg.u.nack.reason == KEEL_NACK_BAD_TARGET, "NACK 1 for 255");
  }
  CHECK(fb.outputs[0] == 255 && fb.outputs[1] == 1, "refused SET changed an output");
  fake_clear(&fb);
  config(8, 10, 30);   /* channels 0..7 */
  config(0, 1001, 31); /* max 1000 Hz */
  config(7, 1000, 32);
  config(0, 0, 33);
  CHECK(fb.frame_count == 4 && fb.frames[0].msg.u.nack.reason == KEEL_NACK_BAD_TARGET &&
            fb.frames[1].msg.u.nack.reason == KEEL_NACK_BAD_VALUE && fb.frames[2].msg.h.type == KEEL_T_ACK &&
            fb.frames[2].msg.u.ack.seq == 32 && fb.frames[3].msg.h.type == KEEL_T_ACK,
        "CONFIG answers");
  teardown();
}

static void test_sampling(void) {
  setup();
  hello(1, 1, 0);
  fb.inputs[2] = 100;
  fb.input_step[2] = 1; /* a ramp: 100, 101, ... */
  fb.inputs[6] = 1;     /* digital channel 6 (D2) high */
  config(2, 100, 1);    /* 10 ms period: batches of 10 (100 ms window) */
  config(6, 5, 2);      /* 200 ms period: one value per frame, periodUs 0 (too long for u16? no: 200000 > 65535) */
  uint32_t start = fb.now;
  fake_clear(&fb);
  run_for(&m, &fb, 1000000, 500);
  size_t samples = 0, values = 0;
  int32_t expect = 100;
  uint32_t expect_t = start;
  int ordered = 1, times_ok = 1;
  size_t dig = 0;
  for (size_t i = 0; i < fb.frame_count; i++) {
    const keel_msg_t *msg = &fb.frames[i].msg;
    if (msg->h.type != KEEL_T_SAMPLE) continue;
    if (msg->u.sample.channel == 6) {
      dig++;
      CHECK(msg->u.sample.count == 1 && msg->u.sample.period_us == 0 && keel_sample_value(msg, 0) == 1, "digital frame");
      continue;
    }
    samples++;
    CHECK(msg->u.sample.channel == 2, "unexpected channel %u", msg->u.sample.channel);
    CHECK(msg->u.sample.count == 10 && msg->u.sample.period_us == 10000, "batch %u x %u", msg->u.sample.count,
          msg->u.sample.period_us);
    if (msg->u.sample.t0_us != expect_t) times_ok = 0;
    expect_t = msg->u.sample.t0_us + 10u * 10000u;
    for (uint8_t k = 0; k < msg->u.sample.count; k++) {
      if (keel_sample_value(msg, k) != expect) ordered = 0;
      expect++;
      values++;
    }
  }
  CHECK(samples == 10 && values == 100, "1 s at 100 Hz gave %zu frames / %zu values", samples, values);
  CHECK(ordered, "values out of order or lost");
  CHECK(times_ok, "t0 of consecutive batches not exactly 10 periods apart");
  CHECK(dig == 5 || dig == 6, "digital 5 Hz gave %zu frames", dig);
  /* Heartbeats every 250 ms meanwhile. */
  CHECK(count_type(&fb, KEEL_T_HEARTBEAT) == 4, "%zu heartbeats in 1 s", count_type(&fb, KEEL_T_HEARTBEAT));
  /* A late poll (the main loop stalled for 35 ms) resynchronizes instead of lying about times. */
  fake_clear(&fb);
  uint32_t resyncs = m.stats.sample_resyncs;
  fb.now += 35000;
  keel_mcu_poll(&m);
  CHECK(m.stats.sample_resyncs == resyncs + 1, "no resync after a stall");
  run_for(&m, &fb, 300000, 500);
  for (size_t i = 0; i < fb.frame_count; i++) {
    const keel_msg_t *msg = &fb.frames[i].msg;
    if (msg->h.type == KEEL_T_SAMPLE && msg->u.sample.channel == 2 && msg->u.sample.count > 1)
      CHECK(msg->u.sample.period_us == 10000, "period after resync");
  }
  /* Turning the channel off stops it; the partial batch is flushed first. */
  fake_clear(&fb);
  config(2, 0, 3);
  config(6, 0, 4);
  run_for(&m, &fb, 300000, 500);
  const sent_frame_t *last = last_of_type(&fb, KEEL_T_SAMPLE);
  CHECK(last == NULL || last < last_of_type(&fb, KEEL_T_ACK), "SAMPLE after the channel was turned off");
  teardown();
}

static void test_high_rate_batches(void) {
  setup();
  hello(1, 1, 0);
  config(0, 1000, 1);
  fake_clear(&fb);
  run_for(&m, &fb, 100000, 100);
  const sent_frame_t *f = last_of_type(&fb, KEEL_T_SAMPLE);
  CHECK(f && f->msg.u.sample.count == KEEL_REF_MAX_BATCH && f->msg.u.sample.period_us == 1000, "1 kHz batches of %d",
        KEEL_REF_MAX_BATCH);
  CHECK(fb.reads[0] >= 99 && fb.reads[0] <= 101, "%u reads in 100 ms at 1 kHz", fb.reads[0]);
  teardown();
}

static void test_timesync(void) {
  setup();
  hello(1, 1, 0);
  fake_clear(&fb);
  fb.now = 0xFFFFFFF0u;
  uint8_t p[8];
  keel_put_u32(p, 0xDEADBEEF);
  send_to_mcu(&m, 1, KEEL_T_TIMESYNC, 9, p, 4);
  const sent_frame_t *f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_TIMESYNC && f->msg.u.timesync.token == 0xDEADBEEF &&
            f->msg.u.timesync.mcu_time_us == 0xFFFFFFF0u,
        "TIMESYNC reply");
  /* An 8-byte TIMESYNC (a reply) sent to the MCU is NACK 4. */
  fake_clear(&fb);
  send_to_mcu(&m, 1, KEEL_T_TIMESYNC, 10, p, 8);
  f = only_frame();
  CHECK(f && f->msg.h.type == KEEL_T_NACK && f->msg.u.nack.reason == KEEL_NACK_BAD_LENGTH && f->msg.u.nack.seq == 10,
        "TIMESYNC of 8 bytes");
  /* Heartbeats and failsafe keep working across the 32-bit wrap of the clock. */
  fake_clear(&fb);
  run_for(&m, &fb, 600000, 1000);
  CHECK(count_type(&fb, KEEL_T_HEARTBEAT) == 2, "heartbeats across the clock wrap: %zu", count_type(&fb, KEEL_T_HEARTBEAT));
  CHECK(!m.failsafe, "failsafe too early across the wrap");
  teardown();
}

static void test_failsafe(void) {
  setup();
  hello(1, 1, 0);
  set(0, 200, 1);
  set(1, 1, 2);
  set(2, 7, 3);
  config(0, 50, 4);
  fake_clear(&fb);
  /* Host heartbeats every 250 ms keep the outputs. */
  for (int i = 0; i < 8; i++) {
    run_for(&m, &fb, 250000, 1000);
    heartbeat((uint16_t)(5 + i));
  }
  CHECK(fb.outputs[0] == 200 && fb.outputs[1] == 1 && fb.outputs[2] == 7 && !m.failsafe, "failsafe with heartbeats");
  /* Heartbeats stop: safe after 1000 ms (not before), HEARTBEAT flags say so (§5.2). */
  run_for(&m, &fb, 990000, 1000);
  CHECK(fb.outputs[0] == 200, "failsafe before the timeout");
  fake_clear(&fb);
  run_for(&m, &fb, 20000, 1000);
  CHECK(fb.outputs[0] == 0 && fb.outputs[1] == 0 && fb.outputs[2] == 128, "outputs not safe after timeout");
  CHECK(m.failsafe && m.stats.failsafe_entries == 1, "failsafe flag");
  const sent_frame_t *hb = last_of_type(&fb, KEEL_T_HEARTBEAT);
  CHECK(hb && (hb->msg.u.heartbeat.flags & KEEL_HB_FAILSAFE), "HEARTBEAT without failsafe flag");
  /* Sampling continues during failsafe. */
  fake_clear(&fb);
  run_for(&m, &fb, 500000, 1000);
  CHECK(count_type(&fb, KEEL_T_SAMPLE) > 0, "sampling stopped in failsafe");
  hb = last_of_type(&fb, KEEL_T_HEARTBEAT);
  CHECK(hb && (hb->msg.u.heartbeat.flags & KEEL_HB_FAILSAFE), "failsafe flag dropped");
  /* An invalid frame does not end failsafe; the next valid frame does, outputs stay safe. */
  uint8_t junk[3] = {1, 2, 3};
  send_to_mcu(&m, 1, 0x42, 50, junk, 3);
  CHECK(m.failsafe, "an unknown type ended failsafe");
  heartbeat(51);
  CHECK(!m.failsafe, "valid frame did not end failsafe");
  CHECK(fb.outputs[0] == 0 && fb.outputs[2] == 128, "outputs left safe values without a SET");
  fake_clear(&fb);
  run_for(&m, &fb, 260000, 1000);
  hb = last_of_type(&fb, KEEL_T_HEARTBEAT);
  CHECK(hb && !(hb->msg.u.heartbeat.flags & KEEL_HB_FAILSAFE), "flag still set after recovery");
  set(0, 99, 52);
  CHECK(fb.outputs[0] == 99, "SET after failsafe");
  teardown();
}

static void test_tx_full_drops_samples(void) {
  setup();
  hello(1, 1, 0);
  config(0, 1000, 1);
  config(1, 1000, 2);
  fake_clear(&fb);
  fb.tx_free = 40; /* the UART queue is nearly full: no room for SAMPLEs beyond the reserve */
  /* 200 ms at 1 kHz on 2 channels: 12 full batches of 16 per channel are dropped. */
  run_for(&m, &fb, 200000, 100);
  CHECK(count_type(&fb, KEEL_T_SAMPLE) == 0, "SAMPLE sent without room");
  CHECK(m.stats.samples_dropped >= 2 * 12 * KEEL_REF_MAX_BATCH, "dropped %u", m.stats.samples_dropped);
  fb.tx_free = 1024;
  run_for(&m, &fb, 20000, 100);
  const sent_frame_t *e = last_of_type(&fb, KEEL_T_ERROR);
  CHECK(e && e->msg.u.error.code == KEEL_ERROR_SAMPLES_DROPPED, "no ERROR 1 after drops");
  if (e) {
    char text[256];
    memcpy(text, e->msg.u.error.text, e->msg.u.error.text_len);
    text[e->msg.u.error.text_len] = 0;
    CHECK(strncmp(text, "samples dropped: ", 17) == 0 && atoi(text + 17) >= 2 * 12 * KEEL_REF_MAX_BATCH, "ERROR text '%s'", text);
  }
  /* Rate-limited: more drops within the second give no second ERROR. */
  fb.tx_free = 40;
  run_for(&m, &fb, 100000, 100);
  fb.tx_free = 1024;
  run_for(&m, &fb, 100000, 100);
  CHECK(count_type(&fb, KEEL_T_ERROR) == 1, "ERROR not rate-limited: %zu", count_type(&fb, KEEL_T_ERROR));
  run_for(&m, &fb, 1000000, 1000);
  CHECK(count_type(&fb, KEEL_T_ERROR) == 2, "second ERROR after a second: %zu", count_type(&fb, KEEL_T_ERROR));
  /* UART receive errors reported by the HAL become ERROR 2. */
  fake_clear(&fb);
  keel_mcu_uart_errors(&m, 3);
  run_for(&m, &fb, 20000, 1000);
  e = last_of_type(&fb, KEEL_T_ERROR);
  CHECK(e && e->msg.u.error.code == KEEL_ERROR_UART, "no ERROR 2");
  teardown();
}

/* 8 channels at 1 kHz need ~3x what 115200 baud carries: every channel loses alike. */
static void test_overload_is_fair(void) {
  setup();
  fb.uart_model = 1;
  hello(1, 1, 0);
  for (uint8_t c = 0; c < 8; c++) config(c, 1000, (uint16_t)(1 + c));
  fake_clear(&fb);
  run_for(&m, &fb, 2000000, 250);
  uint32_t per[8] = {0};
  for (size_t i = 0; i < fb.frame_count; i++)
    if (fb.frames[i].msg.h.type == KEEL_T_SAMPLE) per[fb.frames[i].msg.u.sample.channel] += fb.frames[i].msg.u.sample.count;
  uint32_t lo = per[0], hi = per[0], total = 0;
  for (int c = 0; c < 8; c++) {
    lo = per[c] < lo ? per[c] : lo;
    hi = per[c] > hi ? per[c] : hi;
    total += per[c];
  }
  CHECK(lo * 10 >= hi * 7, "unfair: channel values range %u..%u", lo, hi);
  /* About 11.5 kB/s at 3 bytes per value (16-value frames): roughly 3800 values/s (§9). */
  CHECK(total > 5000 && total < 8500, "%u values in 2 s", total);
  CHECK(m.stats.samples_dropped > 5000, "dropped %u", m.stats.samples_dropped);
  CHECK(count_type(&fb, KEEL_T_ERROR) >= 1, "overload not reported");
  CHECK(count_type(&fb, KEEL_T_HEARTBEAT) >= 7, "heartbeats starved: %zu", count_type(&fb, KEEL_T_HEARTBEAT));
  teardown();
}

static void test_watchdog_reset_report(void) {
  fake_init(&fb, &keel_ref_board);
  keel_mcu_init(&m, &keel_ref_board, &fb.hal, 1);
  hello(1, 1, 0);
  CHECK(fb.frame_count == 2 && fb.frames[0].msg.h.type == KEEL_T_HELLO_ACK && fb.frames[1].msg.h.type == KEEL_T_ERROR &&
            fb.frames[1].msg.u.error.code == KEEL_ERROR_WATCHDOG_RESET,
        "ERROR 3 right after the HELLO_ACK");
  fake_clear(&fb);
  hello(1, 2, 1);
  CHECK(count_type(&fb, KEEL_T_ERROR) == 0, "ERROR 3 sent twice");
  teardown();
}

static void test_seq_wrap_and_refusals(void) {
  setup();
  hello(1, 1, 0);
  m.tx_seq = 65535;
  fake_clear(&fb);
  heartbeat(1);
  set(0, 1, 2);
  set(0, 2, 3);
  CHECK(fb.frame_count == 2 && fb.frames[0].msg.h.seq == 65535 && fb.frames[1].msg.h.seq == 0, "tx seq wrap");
  fake_clear(&fb);
  uint8_t p[4] = {0, 0, 0, 0};
  send_to_mcu(&m, 2, KEEL_T_SET, 77, p, 3);        /* version 2 */
  send_to_mcu(&m, 1, KEEL_T_SAMPLE, 78, p, 4);     /* wrong direction */
  send_to_mcu(&m, 1, KEEL_T_SET, 79, p, 4);        /* length */
  send_to_mcu(&m, 1, KEEL_T_HELLO, 80, p, 4);      /* length */
  CHECK(fb.frame_count == 4, "4 NACKs");
  if (fb.frame_count == 4) {
    CHECK(fb.frames[0].msg.u.nack.reason == 5 && fb.frames[0].msg.u.nack.seq == 77 && fb.frames[0].msg.h.version == 1,
          "NACK 5");
    CHECK(fb.frames[1].msg.u.nack.reason == 3 && fb.frames[1].msg.u.nack.seq == 78, "NACK 3");
    CHECK(fb.frames[2].msg.u.nack.reason == 4 && fb.frames[2].msg.u.nack.seq == 79, "NACK 4");
    CHECK(fb.frames[3].msg.u.nack.reason == 4 && fb.frames[3].msg.u.nack.seq == 80, "NACK 4 HELLO");
  }
  /* NACKs never feed the failsafe timer: refused frames are not valid host frames. */
  CHECK(m.stats.nacks_sent == 4, "nacks_sent %u", m.stats.nacks_sent);
  teardown();
}

static void test_garbage_between_frames(void) {
  setup();
  /* A lone delimiter, line noise, an oversize run, then a HELLO: the HELLO gets through. */
  keel_mcu_rx(&m, 0);
  for (int i = 0; i < 100; i++) keel_mcu_rx(&m, (uint8_t)(i * 37 + 1));
  keel_mcu_rx(&m, 0);
  for (int i = 0; i < 1000; i++) keel_mcu_rx(&m, 0x55);
  keel_mcu_rx(&m, 0);
  CHECK(m.rx.len == 0 && !m.rx.discarding, "receiver not resynchronized");
  CHECK(m.stats.errors[KEEL_ERR_OVERSIZE] == 1, "oversize counted %u times", m.stats.errors[KEEL_ERR_OVERSIZE]);
  hello(1, 5, 0);
  CHECK(count_type(&fb, KEEL_T_HELLO_ACK) == 1, "HELLO lost after garbage");
  teardown();
}

static void test_board_validation(void) {
  keel_board_t b = keel_ref_board;
  fake_init(&fb, &keel_ref_board);
  b.max_batch = 0;
  CHECK(keel_mcu_init(&m, &b, &fb.hal, 0) == -1, "max_batch 0 accepted");
  b = keel_ref_board;
  b.firmware_id = "";
  CHECK(keel_mcu_init(&m, &b, &fb.hal, 0) == -1, "empty id accepted");
  /* A refused board leaves an engine that ignores input instead of crashing. */
  keel_mcu_rx(&m, 0x01);
  keel_mcu_rx(&m, 0);
  CHECK(keel_mcu_poll(&m) > 0 && fb.frame_count == 0, "refused engine acted");
  fake_free(&fb);
}

int main(void) {
  test_not_ready_until_hello();
  test_hello();
  test_set_and_config();
  test_sampling();
  test_high_rate_batches();
  test_timesync();
  test_failsafe();
  test_tx_full_drops_samples();
  test_overload_is_fair();
  test_watchdog_reset_report();
  test_seq_wrap_and_refusals();
  test_garbage_between_frames();
  test_board_validation();
  return test_summary("mcu");
}
