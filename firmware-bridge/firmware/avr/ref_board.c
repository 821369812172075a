/* The reference board description; see ref_board.h. */
#include "ref_board.h"

static const keel_output_desc_t ref_outputs[KEEL_REF_OUTPUTS] = {
    {9, KEEL_OUT_PWM, 0},
    {13, KEEL_OUT_DIGITAL, 0},
    {10, KEEL_OUT_PWM, 128},
};

const keel_board_t keel_ref_board = {
    KEEL_REF_ANALOG,
    KEEL_REF_DIGITAL,
    KEEL_REF_OUTPUTS,
    ref_outputs,
    KEEL_REF_MAX_RATE_HZ,
    KEEL_REF_HEARTBEAT_TIMEOUT_MS,
    KEEL_REF_FIRMWARE_ID,
    KEEL_REF_MAX_BATCH,
};
