/*
 * keel reference firmware for the ATmega328P at 16 MHz (Arduino Uno / Nano pin names).
 *
 * The AVR half of the HAL behind the portable core (core/keel_mcu.h):
 *   - UART0 at 115200 baud nominal (U2X, UBRR 16: 117647 baud, +2.1 %), 8N1, interrupt
 *     driven: a 128-byte receive ring filled by the RX interrupt, a 256-byte transmit ring
 *     drained by the data-register-empty interrupt.
 *   - Timer0 (prescaler 64, overflow every 1024 us) is the microsecond clock, 4 us
 *     resolution, wrapping at 2^32 us like the protocol's clock.
 *   - ADC on A0..A5, AVcc reference, prescaler 128 (125 kHz ADC clock, about 104 us per
 *     conversion), one blocking conversion per value.
 *   - Digital inputs D2, D3 with internal pull-ups.
 *   - Outputs: pin 9 (OC1A) and pin 10 (OC1B) as 8-bit phase-correct PWM on Timer1
 *     (prescaler 64, 490 Hz; OCR = 0 is constantly low and OCR = 255 constantly high, so
 *     duty = value / 255 exactly), pin 13 (PB5) digital.
 *   - The watchdog (500 ms) resets a hung main loop; the next HELLO_ACK is followed by
 *     ERROR 3 (docs/firmware-bridge.md §4.10).
 * The main loop sleeps (idle mode) when nothing is due for more than about a millisecond;
 * any interrupt (timer tick, received byte) wakes it.
 */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include <stdint.h>

#include "../core/keel_mcu.h"
#include "ref_board.h"

#ifndef F_CPU
#error "F_CPU must be defined (16000000UL)"
#endif

/* ---------------------------------------------------------------- watchdog */

/* MCUSR as found at reset (kept across the .init3 code below). */
static uint8_t reset_cause __attribute__((section(".noinit")));

/*
 * After a watchdog reset the watchdog stays on at its shortest timeout; turn it off before
 * main() (and before the C runtime clears .bss) so start-up cannot loop in resets.
 */
void early_wdt_off(void) __attribute__((naked, used, section(".init3")));
void early_wdt_off(void) {
  reset_cause = MCUSR;
  MCUSR = 0;
  wdt_disable();
}

/* ---------------------------------------------------------------- clock */

static volatile uint32_t timer0_overflows;

ISR(TIMER0_OVF_vect) { timer0_overflows++; }

/* Microseconds since start: (overflows * 256 + TCNT0) * 4 us, wrapping at 2^32. */
static uint32_t hal_micros(void *ctx) {
  (void)ctx;
  uint8_t sreg = SREG;
  cli();
  uint32_t ov = timer0_overflows;
  uint8_t t = TCNT0;
  /* An overflow that happened since interrupts were disabled is not counted yet. */
  if ((TIFR0 & _BV(TOV0)) && t < 255) ov++;
  SREG = sreg;
  return ((ov << 8) + t) << 2;
}

/* ---------------------------------------------------------------- UART */

#define RX_RING 128u /* power of two; about 11 ms of bytes at 115200 baud */
#define TX_RING 256u /* uint8_t indexes wrap by themselves */

static volatile uint8_t rx_buf[RX_RING];
static volatile uint8_t rx_head, rx_tail; /* head: written by the ISR */
static volatile uint8_t tx_buf[TX_RING];
static volatile uint8_t tx_head, tx_tail; /* tail: advanced by the ISR */
static volatile uint8_t uart_errors;      /* framing errors, overruns, full receive ring */

ISR(USART_RX_vect) {
  uint8_t status = UCSR0A;
  uint8_t byte = UDR0;
  if (status & (_BV(FE0) | _BV(DOR0))) {
    if (uart_errors < 255) uart_errors++;
    if (status & _BV(FE0)) return; /* a byte with a framing error is garbage */
  }
  uint8_t next = (uint8_t)((rx_head + 1u) & (RX_RING - 1u));
  if (next == rx_tail) {
    if (uart_errors < 255) uart_errors++; /* the main loop fell behind: drop the byte */
    return;
  }
  rx_buf[rx_head] = byte;
  rx_head = next;
}

ISR(USART_UDRE_vect) {
  if (tx_head == tx_tail) {
    UCSR0B &= (uint8_t)~_BV(UDRIE0);
    return;
  }
  UDR0 = tx_buf[tx_tail];
  tx_tail++;
}

static uint16_t hal_tx_free(void *ctx) {
  (void)ctx;
  return (uint16_t)(TX_RING - 1u - (uint8_t)(tx_head - tx_tail));
}

/* Queues bytes, waiting for the ISR to make room; the UART drains 1 byte per ~85 us. */
static void hal_tx_write(void *ctx, const uint8_t *bytes, uint16_t n) {
  (void)ctx;
  for (uint16_t i = 0; i < n; i++) {
    while ((uint8_t)(tx_head + 1u) == tx_tail) {
      /* full: wait for the UDRE interrupt to take a byte */
    }
    tx_buf[tx_head] = bytes[i];
    tx_head++;
    UCSR0B |= _BV(UDRIE0);
  }
}

static void uart_init(void) {
  UCSR0A = _BV(U2X0);
  UBRR0 = 16; /* 16 MHz / (8 * (16 + 1)) = 117647 baud, the usual "115200" at 16 MHz */
  UCSR0C = _BV(UCSZ01) | _BV(UCSZ00); /* 8N1 */
  UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}

/* ---------------------------------------------------------------- inputs */

static int16_t hal_read_input(void *ctx, uint8_t ch) {
  (void)ctx;
  if (ch < KEEL_REF_ANALOG) {
    ADMUX = (uint8_t)(_BV(REFS0) | ch); /* AVcc reference, right-adjusted, channel ch */
    ADCSRA |= _BV(ADSC);
    while (ADCSRA & _BV(ADSC)) {
    }
    return (int16_t)ADC; /* reads ADCL then ADCH */
  }
  uint8_t bit = ch == KEEL_REF_ANALOG ? _BV(PD2) : _BV(PD3);
  return (PIND & bit) ? 1 : 0;
}

static void inputs_init(void) {
  ADCSRA = _BV(ADEN) | _BV(ADPS2) | _BV(ADPS1) | _BV(ADPS0); /* enable, /128 */
  DIDR0 = 0x3F;                                             /* A0..A5: digital input buffers off */
  DDRD &= (uint8_t)~(_BV(PD2) | _BV(PD3));
  PORTD |= _BV(PD2) | _BV(PD3); /* pull-ups: an open input reads 1 */
}

/* ---------------------------------------------------------------- outputs */

static void hal_write_output(void *ctx, uint8_t index, uint16_t value) {
  (void)ctx;
  switch (index) {
    case 0: OCR1A = (uint8_t)value; break; /* pin 9 */
    case 1:                                /* pin 13 */
      if (value) PORTB |= _BV(PB5);
      else PORTB &= (uint8_t)~_BV(PB5);
      break;
    case 2: OCR1B = (uint8_t)value; break; /* pin 10 */
    default: break;
  }
}

static void outputs_init(void) {
  /* Safe levels before the pins become outputs: PWM duty 0 / 128 as in ref_board.c. */
  OCR1A = 0;
  OCR1B = 128;
  PORTB &= (uint8_t)~_BV(PB5);
  /* Timer1: mode 1, 8-bit phase-correct PWM (TOP 0xFF), non-inverting on OC1A and OC1B, /64. */
  TCCR1A = _BV(COM1A1) | _BV(COM1B1) | _BV(WGM10);
  TCCR1B = _BV(CS11) | _BV(CS10);
  DDRB |= _BV(PB1) | _BV(PB2) | _BV(PB5);
}

/* ---------------------------------------------------------------- main */

static keel_mcu_t mcu;

static const keel_hal_t hal = {
    0, hal_micros, hal_read_input, hal_write_output, hal_tx_free, hal_tx_write,
};

int main(void) {
  /* Timer0: normal mode, /64: one overflow per 1024 us drives the microsecond clock. */
  TCCR0A = 0;
  TCCR0B = _BV(CS01) | _BV(CS00);
  TIMSK0 = _BV(TOIE0);
  uart_init();
  inputs_init();
  outputs_init();
  keel_mcu_init(&mcu, &keel_ref_board, &hal, (reset_cause & _BV(WDRF)) ? 1 : 0);
  wdt_enable(WDTO_500MS);
  set_sleep_mode(SLEEP_MODE_IDLE);
  sei();

  for (;;) {
    wdt_reset();
    /* Bounded work per pass so sampling and heartbeats keep their schedule under a flood. */
    for (uint8_t i = 0; i < 64 && rx_tail != rx_head; i++) {
      uint8_t byte = rx_buf[rx_tail];
      rx_tail = (uint8_t)((rx_tail + 1u) & (RX_RING - 1u));
      keel_mcu_rx(&mcu, byte);
    }
    if (uart_errors) {
      cli();
      uint8_t n = uart_errors;
      uart_errors = 0;
      sei();
      keel_mcu_uart_errors(&mcu, n);
    }
    uint32_t wait_us = keel_mcu_poll(&mcu);
    if (wait_us > 1100) {
      /* Sleep until the next interrupt unless a byte arrived meanwhile. sei; sleep is
         atomic: an interrupt pending at sei wakes the sleep instead of being lost. */
      cli();
      if (rx_tail == rx_head) {
        sleep_enable();
        sei();
        sleep_cpu();
        sleep_disable();
      }
      sei();
    }
  }
}
