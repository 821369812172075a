/*
 * The reference board: what the ATmega328P port offers, as announced in HELLO_ACK (§4.2).
 * Portable data (no AVR headers) so the host tests check the exact HELLO_ACK the AVR sends.
 *
 *   channels 0..5  analog A0..A5 (ADC counts 0..1023, AVcc reference)
 *   channels 6..7  digital D2, D3 (0/1, internal pull-ups)
 *   output 0       pin 9  (OC1A) PWM 0..255, safe 0    e.g. a motor driver
 *   output 1       pin 13 (PB5)  digital,    safe 0    e.g. a relay / the on-board LED
 *   output 2       pin 10 (OC1B) PWM 0..255, safe 128  e.g. a servo-style centre position
 */
#ifndef KEEL_REF_BOARD_H
#define KEEL_REF_BOARD_H

#include "../core/keel_mcu.h"

#define KEEL_REF_ANALOG 6
#define KEEL_REF_DIGITAL 2
#define KEEL_REF_OUTPUTS 3
#define KEEL_REF_MAX_RATE_HZ 1000
#define KEEL_REF_HEARTBEAT_TIMEOUT_MS 1000
/* Values per SAMPLE frame: bounded by the AVR's 2 KiB of RAM (2 bytes x 16 x 8 channels). */
#define KEEL_REF_MAX_BATCH 16
#define KEEL_REF_FIRMWARE_ID "keel-ref-avr/1.0.0"

/* Arduino pin numbers of the digital inputs (channels 6, 7). */
#define KEEL_REF_DIGITAL_PIN0 2
#define KEEL_REF_DIGITAL_PIN1 3

/* The board description handed to keel_mcu_init(). */
extern const keel_board_t keel_ref_board;

#endif
