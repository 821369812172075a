/*
 * keel-hil: hardware-in-the-loop harness for the keel reference firmware.
 *
 * Runs an AVR firmware ELF on libsimavr (ATmega328P, 16 MHz by default) in real time,
 * bridges its UART0 to a pseudo-terminal, and exposes a line-oriented control channel on
 * stdin/stdout through which a test plays the board's surroundings: it sets analog and
 * digital inputs (a simulated sensor) and reads the outputs (a simulated motor or relay),
 * which are also reported asynchronously on every change. Protocol: README.md beside this
 * file.
 *
 * Why its own pty instead of the uart_pty part of libsimavrparts: that part prints to
 * stdout (our control channel), creates a fixed /tmp/simavr-uart0 symlink (parallel
 * harnesses collide), feeds the AVR from a second thread, and does not survive the client
 * closing and reopening the port. Here everything runs on one thread: the emulation loop
 * polls the pty and stdin between slices of emulated time.
 *
 * Timing: emulated time is paced against CLOCK_MONOTONIC (x --speed), so host timeouts
 * mean what they say. Bytes from the pty enter the AVR UART at the line rate (--baud,
 * 10 bits per byte); the AVR's own UART model paces what the firmware sends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_adc.h"
#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"

/* ---------------------------------------------------------------- options and state */

static const char *opt_mcu = "atmega328p";
static uint32_t opt_freq = 16000000;
static uint32_t opt_baud = 115200;
static double opt_speed = 1.0;
static uint32_t opt_vcc_mv = 5000;
static const char *opt_link = NULL;
static int opt_verbose = 0;
static uint32_t opt_boot_ms = 20; /* emulated time run before "ready", so the firmware is up */

static avr_t *avr;
static FILE *out;                /* the control channel (a dup of the original stdout) */
static volatile sig_atomic_t got_signal;
static uint64_t cycle_offset;    /* emulated cycles before the last reset that zeroed avr->cycle */
static avr_cycle_count_t last_cycle;
static struct timespec wall_start;

/* A byte ring. */
typedef struct {
  uint8_t *buf;
  size_t cap, head, len; /* head: index of the oldest byte */
} ring_t;

static void ring_init(ring_t *r, size_t cap) {
  r->buf = malloc(cap);
  if (!r->buf) {
    fprintf(stderr, "keel-hil: out of memory\n");
    exit(2);
  }
  r->cap = cap;
  r->head = r->len = 0;
}
static int ring_put(ring_t *r, uint8_t b) {
  if (r->len == r->cap) return 0;
  r->buf[(r->head + r->len) % r->cap] = b;
  r->len++;
  return 1;
}
static uint8_t ring_get(ring_t *r) {
  uint8_t b = r->buf[r->head];
  r->head = (r->head + 1) % r->cap;
  r->len--;
  return b;
}
/* Contiguous readable bytes at the head. */
static size_t ring_span(const ring_t *r) {
  size_t s = r->cap - r->head;
  return s < r->len ? s : r->len;
}
static void ring_drop(ring_t *r, size_t n) {
  r->head = (r->head + n) % r->cap;
  r->len -= n;
}

static int pty_master = -1, pty_slave = -1;
static char pty_path[128];
static ring_t to_avr;   /* pty -> AVR UART, paced */
static ring_t to_pty;   /* AVR UART -> pty */
static int link_up = 1; /* "link 0" simulates a pulled cable */
static int uart_xoff;
static int feeder_armed;
static avr_cycle_count_t cycles_per_byte;
static avr_irq_t *uart_in_irq;

static struct {
  uint64_t bytes_to_avr, bytes_from_avr, dropped_to_pty, dropped_link, xoff_events, faults, resets;
  double max_behind_ms;
} stats;

/* ---------------------------------------------------------------- time */

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)(ts.tv_sec - wall_start.tv_sec) + (double)(ts.tv_nsec - wall_start.tv_nsec) / 1e9;
}

static double host_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Emulated cycles since start, monotonic across resets. */
static uint64_t total_cycles(void) {
  if (avr->cycle < last_cycle) cycle_offset += last_cycle; /* a reset started the counter over */
  last_cycle = avr->cycle;
  return cycle_offset + avr->cycle;
}

static uint64_t emu_us(void) { return (uint64_t)((double)total_cycles() * 1e6 / opt_freq); }

/* ---------------------------------------------------------------- control channel output */

static void emit(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(out, fmt, ap);
  va_end(ap);
  fputc('\n', out);
}

static void emit_exit(const char *reason, int code) {
  emit("{\"event\":\"exit\",\"reason\":\"%s\",\"code\":%d,\"t_us\":%llu,\"host_ms\":%.3f}", reason, code,
       (unsigned long long)emu_us(), host_ms());
  fflush(out);
}

static int ready_sent;
static char boot_fault[512];

/* A fault event; the message is reduced to plain printable ASCII (no quotes, backslashes,
   control characters or colour codes) so the JSON stays simple. */
static void emit_fault(const char *msg) {
  char clean[512];
  size_t o = 0;
  for (size_t i = 0; msg[i] && o < sizeof clean - 1; i++) {
    unsigned char c = (unsigned char)msg[i];
    if (c == 0x1b) {
      while (msg[i] && msg[i] != 'm') i++;
      if (!msg[i]) break;
      continue;
    }
    if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f) continue;
    clean[o++] = (char)c;
  }
  clean[o] = 0;
  emit("{\"event\":\"fault\",\"message\":\"%s\",\"t_us\":%llu,\"host_ms\":%.3f}", clean,
       (unsigned long long)emu_us(), host_ms());
}

/* libsimavr logs go to stderr; core errors (invalid opcode, bad address) are also faults. */
static void hil_logger(avr_t *a, const int level, const char *format, va_list ap) {
  (void)a;
  char msg[512];
  vsnprintf(msg, sizeof msg, format, ap);
  if (level <= LOG_ERROR || opt_verbose) fprintf(stderr, "simavr: %s", msg);
  if (level != LOG_ERROR || !out) return;
  stats.faults++;
  if (!ready_sent) {
    /* The ready line must come first: a fault during the boot run is reported after it. */
    if (!boot_fault[0]) snprintf(boot_fault, sizeof boot_fault, "%s", msg);
    return;
  }
  emit_fault(msg);
}

/* The default raw sleep callback usleep()s; our loop paces emulated time itself. */
static void hil_sleep(avr_t *a, avr_cycle_count_t how_long) {
  (void)a;
  (void)how_long;
}

/* ---------------------------------------------------------------- UART <-> pty */

static void uart_out_hook(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  stats.bytes_from_avr++;
  if (!link_up) {
    stats.dropped_link++;
    return;
  }
  if (!ring_put(&to_pty, (uint8_t)value)) stats.dropped_to_pty++; /* nobody reads the pty */
}

static void uart_xon_hook(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  if (value) uart_xoff = 0;
}

static void uart_xoff_hook(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  if (value && !uart_xoff) stats.xoff_events++;
  uart_xoff = value != 0;
}

/* Hands one byte to the AVR UART per byte time, like a wire at --baud. */
static avr_cycle_count_t uart_feeder(struct avr_t *a, avr_cycle_count_t when, void *param) {
  (void)a;
  (void)param;
  if (to_avr.len == 0) {
    feeder_armed = 0;
    return 0;
  }
  if (!uart_xoff) {
    avr_raise_irq(uart_in_irq, ring_get(&to_avr));
    stats.bytes_to_avr++;
  }
  return when + cycles_per_byte;
}

static void arm_feeder(void) {
  if (feeder_armed || to_avr.len == 0) return;
  feeder_armed = 1;
  avr_cycle_timer_register(avr, cycles_per_byte, uart_feeder, NULL);
}

static int open_pty(void) {
  pty_master = posix_openpt(O_RDWR | O_NOCTTY);
  if (pty_master < 0 || grantpt(pty_master) != 0 || unlockpt(pty_master) != 0) return -1;
  const char *name = ptsname(pty_master);
  if (!name) return -1;
  snprintf(pty_path, sizeof pty_path, "%s", name);
  /* Hold the slave open ourselves: the master then never sees a hang-up when a client
     closes the port, and the line is raw (no echo back into the firmware, no CR/LF
     translation of binary frames) even before a client configures it. */
  pty_slave = open(pty_path, O_RDWR | O_NOCTTY);
  if (pty_slave < 0) return -1;
  struct termios tio;
  if (tcgetattr(pty_slave, &tio) != 0) return -1;
  cfmakeraw(&tio);
  cfsetispeed(&tio, B115200);
  cfsetospeed(&tio, B115200);
  if (tcsetattr(pty_slave, TCSANOW, &tio) != 0) return -1;
  int flags = fcntl(pty_master, F_GETFL);
  fcntl(pty_master, F_SETFL, flags | O_NONBLOCK);
  if (opt_link) {
    unlink(opt_link);
    if (symlink(pty_path, opt_link) != 0) {
      fprintf(stderr, "keel-hil: cannot create link %s: %s\n", opt_link, strerror(errno));
      return -1;
    }
  }
  return 0;
}

static void pty_io(short revents) {
  if (revents & POLLIN) {
    uint8_t buf[512];
    size_t room = to_avr.cap - to_avr.len;
    if (room > sizeof buf) room = sizeof buf;
    ssize_t n = room ? read(pty_master, buf, room) : 0;
    for (ssize_t i = 0; i < n; i++) {
      if (!link_up) {
        stats.dropped_link++;
        continue;
      }
      ring_put(&to_avr, buf[i]);
    }
    arm_feeder();
  }
  while (to_pty.len) {
    ssize_t n = write(pty_master, to_pty.buf + to_pty.head, ring_span(&to_pty));
    if (n <= 0) break; /* EAGAIN: the client is not reading; keep the bytes for later */
    ring_drop(&to_pty, (size_t)n);
  }
}

/* ---------------------------------------------------------------- pins (ATmega328P, Arduino numbering) */

/*
 * Data-space register addresses from the ATmega328P datasheet register summary.
 * Arduino pins: D0..D7 = PD0..PD7, D8..D13 = PB0..PB5, D14..D19 (A0..A5) = PC0..PC5.
 */
enum {
  R_PINB = 0x23, R_DDRB = 0x24, R_PORTB = 0x25,
  R_PINC = 0x26, R_DDRC = 0x27, R_PORTC = 0x28,
  R_PIND = 0x29, R_DDRD = 0x2A, R_PORTD = 0x2B,
  R_TCCR0A = 0x44, R_TCCR0B = 0x45, R_OCR0A = 0x47, R_OCR0B = 0x48,
  R_TCCR1A = 0x80, R_TCCR1B = 0x81, R_ICR1L = 0x86, R_OCR1AL = 0x88, R_OCR1BL = 0x8A,
  R_TCCR2A = 0xB0, R_TCCR2B = 0xB1, R_OCR2A = 0xB3, R_OCR2B = 0xB4,
};

#define PIN_COUNT 20

typedef struct {
  char port;   /* 'B', 'C', 'D' */
  uint8_t bit;
  uint8_t ddr, portr;
  int timer;   /* -1, or 0/1/2 for an OCnx pin */
  int channel; /* 0 = A, 1 = B */
} pin_info_t;

static const pin_info_t pins[PIN_COUNT] = {
    {'D', 0, R_DDRD, R_PORTD, -1, 0}, {'D', 1, R_DDRD, R_PORTD, -1, 0}, {'D', 2, R_DDRD, R_PORTD, -1, 0},
    {'D', 3, R_DDRD, R_PORTD, 2, 1},  {'D', 4, R_DDRD, R_PORTD, -1, 0}, {'D', 5, R_DDRD, R_PORTD, 0, 1},
    {'D', 6, R_DDRD, R_PORTD, 0, 0},  {'D', 7, R_DDRD, R_PORTD, -1, 0}, {'B', 0, R_DDRB, R_PORTB, -1, 0},
    {'B', 1, R_DDRB, R_PORTB, 1, 0},  {'B', 2, R_DDRB, R_PORTB, 1, 1},  {'B', 3, R_DDRB, R_PORTB, 2, 0},
    {'B', 4, R_DDRB, R_PORTB, -1, 0}, {'B', 5, R_DDRB, R_PORTB, -1, 0}, {'C', 0, R_DDRC, R_PORTC, -1, 0},
    {'C', 1, R_DDRC, R_PORTC, -1, 0}, {'C', 2, R_DDRC, R_PORTC, -1, 0}, {'C', 3, R_DDRC, R_PORTC, -1, 0},
    {'C', 4, R_DDRC, R_PORTC, -1, 0}, {'C', 5, R_DDRC, R_PORTC, -1, 0},
};

typedef enum { PIN_INPUT = 0, PIN_DIGITAL, PIN_PWM } pin_kind_t;

typedef struct {
  pin_kind_t kind;
  int value;   /* digital level, or PWM duty scaled to 0..255 */
  double duty; /* PWM duty 0..1 */
} pin_state_t;

static pin_state_t pin_state[PIN_COUNT];

/* External drive of input pins, per port: mask of driven pins and their levels. */
static struct {
  uint8_t mask, value;
} external[3]; /* B, C, D */

static int port_index(char port) { return port == 'B' ? 0 : port == 'C' ? 1 : 2; }

/*
 * The duty cycle of a timer output pin, from the timer registers, or -1 if the timer does
 * not drive the pin as PWM (compare output disconnected, or a non-PWM mode).
 */
static double pwm_duty(int timer, int channel) {
  const uint8_t *d = avr->data;
  uint8_t com, wgm;
  uint32_t top, ocr;
  int phase_correct;
  if (timer == 1) {
    com = (uint8_t)((d[R_TCCR1A] >> (channel ? 4 : 6)) & 3);
    wgm = (uint8_t)((d[R_TCCR1A] & 3) | (((d[R_TCCR1B] >> 3) & 3) << 2));
    ocr = channel ? (uint32_t)(d[R_OCR1BL] | (d[R_OCR1BL + 1] << 8)) : (uint32_t)(d[R_OCR1AL] | (d[R_OCR1AL + 1] << 8));
    uint32_t icr = (uint32_t)(d[R_ICR1L] | (d[R_ICR1L + 1] << 8));
    uint32_t ocra = (uint32_t)(d[R_OCR1AL] | (d[R_OCR1AL + 1] << 8));
    switch (wgm) {
      case 1: top = 0xFF; phase_correct = 1; break;
      case 2: top = 0x1FF; phase_correct = 1; break;
      case 3: top = 0x3FF; phase_correct = 1; break;
      case 5: top = 0xFF; phase_correct = 0; break;
      case 6: top = 0x1FF; phase_correct = 0; break;
      case 7: top = 0x3FF; phase_correct = 0; break;
      case 8: case 10: top = icr; phase_correct = 1; break;
      case 9: case 11: top = ocra; phase_correct = 1; break;
      case 14: top = icr; phase_correct = 0; break;
      case 15: top = ocra; phase_correct = 0; break;
      default: return -1;
    }
    if ((wgm == 9 || wgm == 11 || wgm == 15) && channel == 0) return -1; /* OCR1A is TOP there */
  } else {
    uint8_t a = timer == 0 ? R_TCCR0A : R_TCCR2A, b = timer == 0 ? R_TCCR0B : R_TCCR2B;
    com = (uint8_t)((d[a] >> (channel ? 4 : 6)) & 3);
    wgm = (uint8_t)((d[a] & 3) | (((d[b] >> 3) & 1) << 2));
    ocr = d[timer == 0 ? (channel ? R_OCR0B : R_OCR0A) : (channel ? R_OCR2B : R_OCR2A)];
    uint32_t ocra = d[timer == 0 ? R_OCR0A : R_OCR2A];
    switch (wgm) {
      case 1: top = 0xFF; phase_correct = 1; break;
      case 3: top = 0xFF; phase_correct = 0; break;
      case 5: top = ocra; phase_correct = 1; break;
      case 7: top = ocra; phase_correct = 0; break;
      default: return -1;
    }
    if ((wgm == 5 || wgm == 7) && channel == 0) return -1;
  }
  if (com < 2 || top == 0) return -1; /* disconnected or toggle mode: the PORT bit drives the pin */
  double duty;
  if (phase_correct) duty = ocr >= top ? 1.0 : (double)ocr / top;
  else duty = ocr >= top ? 1.0 : (double)(ocr + 1) / (top + 1);
  return com == 3 ? 1.0 - duty : duty;
}

static pin_state_t read_pin(int p) {
  const pin_info_t *pi = &pins[p];
  pin_state_t s = {PIN_INPUT, 0, 0};
  uint8_t mask = (uint8_t)(1u << pi->bit);
  if (!(avr->data[pi->ddr] & mask)) {
    s.value = (avr->data[pi->portr] & mask) ? 1 : 0; /* pull-up enabled */
    return s;
  }
  double duty = pi->timer >= 0 ? pwm_duty(pi->timer, pi->channel) : -1;
  if (duty >= 0) {
    s.kind = PIN_PWM;
    s.duty = duty;
    s.value = (int)lround(duty * 255.0);
  } else {
    s.kind = PIN_DIGITAL;
    s.value = (avr->data[pi->portr] & mask) ? 1 : 0;
  }
  return s;
}

static const char *kind_name(pin_kind_t k) { return k == PIN_PWM ? "pwm" : k == PIN_DIGITAL ? "digital" : "input"; }

static void print_pin(int p, const pin_state_t *s) {
  if (s->kind == PIN_PWM)
    fprintf(out, "{\"pin\":%d,\"kind\":\"pwm\",\"value\":%d,\"duty\":%.5f}", p, s->value, s->duty);
  else
    fprintf(out, "{\"pin\":%d,\"kind\":\"%s\",\"value\":%d}", p, kind_name(s->kind), s->value);
}

/* Compares every pin with its last reported state and reports changes. */
static void scan_pins(void) {
  for (int p = 2; p < PIN_COUNT; p++) { /* D0/D1 are the UART */
    pin_state_t s = read_pin(p);
    pin_state_t *old = &pin_state[p];
    if (s.kind == old->kind && s.value == old->value && fabs(s.duty - old->duty) < 1e-9) continue;
    int was_output = old->kind != PIN_INPUT;
    *old = s;
    if (s.kind == PIN_INPUT && !was_output) continue; /* pull-up changes of inputs are not outputs */
    fprintf(out, "{\"event\":\"output\",\"pin\":%d,\"kind\":\"%s\",\"value\":%d", p, kind_name(s.kind), s.value);
    if (s.kind == PIN_PWM) fprintf(out, ",\"duty\":%.5f", s.duty);
    fprintf(out, ",\"t_us\":%llu,\"host_ms\":%.3f}\n", (unsigned long long)emu_us(), host_ms());
  }
}

#define SCAN_PERIOD_US 50 /* output changes are reported at most this late (emulated time) */

static uint64_t last_scan_cycle;

static avr_cycle_count_t pin_scanner(struct avr_t *a, avr_cycle_count_t when, void *param) {
  (void)a;
  (void)param;
  last_scan_cycle = total_cycles();
  scan_pins();
  return when + (avr_cycle_count_t)opt_freq / 1000000u * SCAN_PERIOD_US;
}

/* ---------------------------------------------------------------- commands */

static void reply_error(const char *cmd, const char *error) {
  emit("{\"reply\":\"%s\",\"ok\":false,\"error\":\"%s\"}", cmd, error);
}

static int parse_int(const char *s, long lo, long hi, long *out_v) {
  if (!s) return 0;
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return 0;
  *out_v = v;
  return 1;
}

static void set_analog_mv(int ch, long mv) {
  avr_irq_t *irq = avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0 + ch);
  avr_raise_irq(irq, (uint32_t)mv);
}

static void set_digital(int p, int level) {
  const pin_info_t *pi = &pins[p];
  int port = port_index(pi->port);
  uint8_t mask = (uint8_t)(1u << pi->bit);
  external[port].mask |= mask;
  external[port].value = (uint8_t)((external[port].value & ~mask) | (level ? mask : 0));
  /* The "external" state wins over the internal pull-up whenever the firmware rewrites
     PORTx/DDRx; the IRQ sets the PIN bit now. */
  avr_ioport_external_t e = {.name = (unsigned long)pi->port, .mask = external[port].mask, .value = external[port].value};
  avr_ioctl(avr, AVR_IOCTL_IOPORT_SET_EXTERNAL(pi->port), &e);
  avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(pi->port), pi->bit), (uint32_t)(level ? 1 : 0));
}

/* UART0 without the console echo (it would print our binary frames) and without the
   usleep() it does when firmware polls the status register (we pace time ourselves). */
static void configure_uart(void) {
  uint32_t flags = 0;
  avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
  flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
  avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
}

static void register_timers(void) {
  last_scan_cycle = total_cycles();
  avr_cycle_timer_register(avr, 1, pin_scanner, NULL);
  feeder_armed = 0;
  arm_feeder();
}

static int handle_command(char *line) {
  char *argv[8];
  int argc = 0;
  for (char *tok = strtok(line, " \t\r"); tok && argc < 8; tok = strtok(NULL, " \t\r")) argv[argc++] = tok;
  if (argc == 0) return 0;
  const char *cmd = argv[0];
  long a, b;

  if (!strcmp(cmd, "analog") || !strcmp(cmd, "analog_mv")) {
    int counts = !strcmp(cmd, "analog");
    if (argc != 3 || !parse_int(argv[1], 0, 7, &a) ||
        !parse_int(argv[2], 0, counts ? 1023 : (long)opt_vcc_mv, &b)) {
      reply_error(cmd, counts ? "usage: analog <channel 0..7> <counts 0..1023>" : "usage: analog_mv <channel 0..7> <millivolts 0..vcc>");
      return 0;
    }
    /* simavr converts mV to counts as mv * 1023 / vref (integer): the smallest mV that
       gives the requested count is ceil(counts * vref / 1023). */
    long mv = counts ? (long)((b * (long)opt_vcc_mv + 1022) / 1023) : b;
    set_analog_mv((int)a, mv);
    long expect = mv * 1023 / (long)opt_vcc_mv;
    emit("{\"reply\":\"%s\",\"ok\":true,\"channel\":%ld,\"mv\":%ld,\"counts\":%ld,\"t_us\":%llu}", cmd, a, mv, expect,
         (unsigned long long)emu_us());
    return 0;
  }
  if (!strcmp(cmd, "digital")) {
    if (argc != 3 || !parse_int(argv[1], 2, PIN_COUNT - 1, &a) || !parse_int(argv[2], 0, 1, &b)) {
      reply_error(cmd, "usage: digital <pin 2..19> <0|1>");
      return 0;
    }
    set_digital((int)a, (int)b);
    emit("{\"reply\":\"digital\",\"ok\":true,\"pin\":%ld,\"level\":%ld,\"t_us\":%llu}", a, b, (unsigned long long)emu_us());
    return 0;
  }
  if (!strcmp(cmd, "outputs")) {
    scan_pins();
    fprintf(out, "{\"reply\":\"outputs\",\"ok\":true,\"t_us\":%llu,\"host_ms\":%.3f,\"outputs\":[",
            (unsigned long long)emu_us(), host_ms());
    int first = 1;
    for (int p = 2; p < PIN_COUNT; p++) {
      if (pin_state[p].kind == PIN_INPUT) continue;
      if (!first) fputc(',', out);
      first = 0;
      print_pin(p, &pin_state[p]);
    }
    fputs("]}\n", out);
    return 0;
  }
  if (!strcmp(cmd, "time")) {
    double behind = wall_s() * opt_speed * 1000.0 - (double)total_cycles() * 1000.0 / opt_freq;
    emit("{\"reply\":\"time\",\"ok\":true,\"t_us\":%llu,\"host_ms\":%.3f,\"behind_ms\":%.3f}",
         (unsigned long long)emu_us(), host_ms(), behind);
    return 0;
  }
  if (!strcmp(cmd, "stats")) {
    emit("{\"reply\":\"stats\",\"ok\":true,\"t_us\":%llu,\"bytes_to_mcu\":%llu,\"bytes_from_mcu\":%llu,"
         "\"queued_to_mcu\":%zu,\"queued_to_pty\":%zu,\"dropped_to_pty\":%llu,\"dropped_link\":%llu,"
         "\"xoff\":%llu,\"faults\":%llu,\"resets\":%llu,\"max_behind_ms\":%.3f}",
         (unsigned long long)emu_us(), (unsigned long long)stats.bytes_to_avr,
         (unsigned long long)stats.bytes_from_avr, to_avr.len, to_pty.len,
         (unsigned long long)stats.dropped_to_pty, (unsigned long long)stats.dropped_link,
         (unsigned long long)stats.xoff_events, (unsigned long long)stats.faults, (unsigned long long)stats.resets,
         stats.max_behind_ms);
    return 0;
  }
  if (!strcmp(cmd, "flush")) {
    /* Forget what the firmware sent that no client has read yet. */
    to_pty.head = to_pty.len = 0;
    tcflush(pty_slave, TCIFLUSH);
    emit("{\"reply\":\"flush\",\"ok\":true}");
    return 0;
  }
  if (!strcmp(cmd, "link")) {
    if (argc != 2 || !parse_int(argv[1], 0, 1, &a)) {
      reply_error(cmd, "usage: link <0|1>");
      return 0;
    }
    link_up = (int)a;
    if (!link_up) to_avr.head = to_avr.len = 0;
    emit("{\"reply\":\"link\",\"ok\":true,\"up\":%d,\"t_us\":%llu}", link_up, (unsigned long long)emu_us());
    return 0;
  }
  if (!strcmp(cmd, "reset")) {
    total_cycles();
    avr_reset(avr);
    stats.resets++;
    to_avr.head = to_avr.len = 0;
    uart_xoff = 0;
    configure_uart();
    register_timers();
    emit("{\"reply\":\"reset\",\"ok\":true,\"t_us\":%llu}", (unsigned long long)emu_us());
    return 0;
  }
  if (!strcmp(cmd, "quit")) {
    emit("{\"reply\":\"quit\",\"ok\":true}");
    return 1;
  }
  reply_error(cmd[0] ? "?" : "", "unknown command (analog, analog_mv, digital, outputs, time, stats, flush, link, reset, quit)");
  return 0;
}

/* ---------------------------------------------------------------- main */

static void on_signal(int sig) { got_signal = sig; }

static void usage(void) {
  fprintf(stderr,
          "usage: keel-hil [--mcu atmega328p] [--freq HZ] [--baud BAUD] [--speed X] [--vcc MV]\n"
          "                [--boot-ms MS] [--link PATH] [--verbose] FIRMWARE.elf\n"
          "Runs the firmware in real time; UART0 <-> a pty; control channel on stdin/stdout\n"
          "(see firmware-bridge/hil/README.md).\n");
}

int main(int argc, char **argv) {
  const char *elf = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--mcu") && v) opt_mcu = argv[++i];
    else if (!strcmp(a, "--freq") && v) opt_freq = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(a, "--baud") && v) opt_baud = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(a, "--speed") && v) opt_speed = strtod(argv[++i], NULL);
    else if (!strcmp(a, "--vcc") && v) opt_vcc_mv = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(a, "--link") && v) opt_link = argv[++i];
    else if (!strcmp(a, "--boot-ms") && v) opt_boot_ms = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(a, "--verbose")) opt_verbose = 1;
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage();
      return 0;
    } else if (a[0] != '-' && !elf) elf = a;
    else {
      usage();
      return 64;
    }
  }
  if (!elf || opt_freq < 1000000 || opt_baud < 300 || opt_baud > 2000000 || !(opt_speed > 0.001 && opt_speed <= 100) ||
      opt_vcc_mv < 1000 || opt_vcc_mv > 6000 || opt_boot_ms > 10000) {
    usage();
    return 64;
  }
  if (strcmp(opt_mcu, "atmega328p") != 0) {
    fprintf(stderr, "keel-hil: only atmega328p is supported (its pin map is built in)\n");
    return 64;
  }

  /* The control channel keeps the real stdout; anything libsimavr printf()s goes to stderr. */
  int out_fd = dup(STDOUT_FILENO);
  if (out_fd < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) return 70;
  out = fdopen(out_fd, "w");
  if (!out) return 70;
  setvbuf(out, NULL, _IOFBF, 1 << 16);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGHUP, on_signal);
  clock_gettime(CLOCK_MONOTONIC, &wall_start);

  avr_global_logger_set(hil_logger);
  static elf_firmware_t fw;
  memset(&fw, 0, sizeof fw);
  if (elf_read_firmware(elf, &fw) != 0) {
    fprintf(stderr, "keel-hil: cannot read firmware %s\n", elf);
    return 66;
  }
  avr = avr_make_mcu_by_name(opt_mcu);
  if (!avr) return 70;
  avr_init(avr);
  avr->log = opt_verbose ? LOG_TRACE : LOG_ERROR;
  snprintf(fw.mmcu, sizeof fw.mmcu, "%s", opt_mcu);
  fw.frequency = opt_freq;
  fw.vcc = fw.avcc = fw.aref = opt_vcc_mv;
  avr_load_firmware(avr, &fw);
  avr->frequency = opt_freq;
  avr->vcc = avr->avcc = avr->aref = opt_vcc_mv;
  avr->sleep = hil_sleep;

  /* UART0: bytes out to the pty, xon/xoff for input. */
  configure_uart();
  uart_in_irq = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), uart_out_hook, NULL);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), uart_xon_hook, NULL);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), uart_xoff_hook, NULL);
  cycles_per_byte = (avr_cycle_count_t)opt_freq * 10u / opt_baud; /* start + 8 data + stop */

  ring_init(&to_avr, 1 << 16);
  ring_init(&to_pty, 1 << 13); /* about 0.7 s of output at 115200 baud, like a USB adapter's buffers */
  if (open_pty() != 0) {
    fprintf(stderr, "keel-hil: cannot create a pseudo-terminal: %s\n", strerror(errno));
    return 71;
  }
  /* Power-up: run the firmware through its start-up (C runtime, UART init) before anyone
     can talk to it, then start pacing against wall time as if it had run in real time. A
     byte sent to a real MCU before it enables its receiver is lost; a harness client
     should not have to race that. */
  uint64_t boot_cycles = (uint64_t)opt_freq / 1000u * opt_boot_ms;
  while (total_cycles() < boot_cycles) {
    int st = avr_run(avr);
    if (st == cpu_Done || st == cpu_Crashed) break;
  }
  clock_gettime(CLOCK_MONOTONIC, &wall_start);
  double boot_s = (double)total_cycles() / opt_freq / opt_speed;
  wall_start.tv_sec -= (time_t)boot_s;
  wall_start.tv_nsec -= (long)((boot_s - (double)(time_t)boot_s) * 1e9);
  if (wall_start.tv_nsec < 0) {
    wall_start.tv_nsec += 1000000000L;
    wall_start.tv_sec--;
  }

  register_timers(); /* after the boot run: the ready line must be the first line */

  emit("{\"event\":\"ready\",\"pty\":\"%s\",\"mcu\":\"%s\",\"freq\":%u,\"baud\":%u,\"speed\":%g,\"vcc_mv\":%u,"
       "\"scan_us\":%d,\"t_us\":%llu,\"host_ms\":%.3f}",
       pty_path, opt_mcu, opt_freq, opt_baud, opt_speed, opt_vcc_mv, SCAN_PERIOD_US, (unsigned long long)emu_us(),
       host_ms());
  ready_sent = 1;
  if (boot_fault[0]) emit_fault(boot_fault);
  fflush(out);

  int stdin_fl = fcntl(STDIN_FILENO, F_GETFL);
  fcntl(STDIN_FILENO, F_SETFL, stdin_fl | O_NONBLOCK);
  char line[1024];
  size_t line_len = 0;
  int line_overflow = 0;
  int stdin_open = 1;
  const char *exit_reason = NULL;
  int exit_code = 0;
  double last_lag_report = -10;
  const avr_cycle_count_t slice = opt_freq / 200; /* at most 5 ms of emulation between IO checks */

  for (;;) {
    /* Run the emulation up to where wall time says it should be. */
    double target_d = wall_s() * opt_speed * opt_freq;
    uint64_t target = (uint64_t)target_d;
    uint64_t now_c = total_cycles();
    uint64_t stop = target < now_c + slice ? target : now_c + slice;
    while (total_cycles() < stop) {
      int st = avr_run(avr);
      if (st == cpu_Done || st == cpu_Crashed) {
        exit_reason = st == cpu_Done ? "firmware-stopped" : "crashed";
        exit_code = 3;
        break;
      }
    }
    if (exit_reason) break;
    /* A reset inside the firmware (watchdog) clears libsimavr's timers: put ours back. */
    if (total_cycles() - last_scan_cycle > (uint64_t)opt_freq / 100) { /* silent for 10 ms */
      stats.resets++;
      configure_uart();
      register_timers();
    }
    if (!feeder_armed) arm_feeder();

    double behind_ms = (target_d - (double)total_cycles()) * 1000.0 / opt_freq / opt_speed;
    if (behind_ms > stats.max_behind_ms) stats.max_behind_ms = behind_ms;
    if (behind_ms > 100 && wall_s() - last_lag_report > 1.0) {
      last_lag_report = wall_s();
      emit("{\"event\":\"lag\",\"behind_ms\":%.1f,\"t_us\":%llu,\"host_ms\":%.3f}", behind_ms,
           (unsigned long long)emu_us(), host_ms());
    }

    /* IO: wait only if the emulation has caught up with wall time. */
    struct pollfd fds[2];
    int nfds = 0;
    fds[nfds].fd = pty_master;
    fds[nfds].events = (short)((to_avr.len < to_avr.cap ? POLLIN : 0) | (to_pty.len ? POLLOUT : 0));
    fds[nfds++].revents = 0;
    if (stdin_open) {
      fds[nfds].fd = STDIN_FILENO;
      fds[nfds].events = POLLIN;
      fds[nfds++].revents = 0;
    }
    fflush(out);
    int timeout_ms = total_cycles() >= (uint64_t)(wall_s() * opt_speed * opt_freq) ? 1 : 0;
    int r = poll(fds, (nfds_t)nfds, timeout_ms);
    if (got_signal) {
      exit_reason = "signal";
      break;
    }
    if (r < 0 && errno != EINTR) {
      exit_reason = "poll-failed";
      exit_code = 70;
      break;
    }
    if (r > 0) pty_io(fds[0].revents);
    else if (to_pty.len) pty_io(0);
    if (stdin_open && nfds > 1 && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      char buf[512];
      ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        stdin_open = 0;
        exit_reason = "eof";
        break;
      }
      int quit = 0;
      for (ssize_t i = 0; i < n && !quit; i++) {
        if (buf[i] == '\n') {
          line[line_len] = 0;
          if (line_overflow) reply_error("?", "line too long");
          else quit = handle_command(line);
          line_len = 0;
          line_overflow = 0;
        } else if (line_len < sizeof line - 1) {
          line[line_len++] = buf[i];
        } else {
          line_overflow = 1;
        }
      }
      if (quit) {
        exit_reason = "quit";
        break;
      }
    }
    if (ferror(out)) {
      exit_reason = "stdout-closed";
      break;
    }
  }

  fcntl(STDIN_FILENO, F_SETFL, stdin_fl); /* stdin may be a terminal shared with the shell */
  emit_exit(exit_reason ? exit_reason : "unknown", exit_code);
  fclose(out);
  if (opt_link) unlink(opt_link);
  close(pty_master);
  close(pty_slave);
  if (avr->state != cpu_Done) avr_terminate(avr); /* libsimavr already did for cpu_Done */
  return exit_code;
}
