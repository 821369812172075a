#!/usr/bin/env bash
# Regenerates test/fixtures/speech-16k.wav, the audio the third-party (Silero VAD) model
# example replays: 1 s of silence, a spoken sentence from espeak-ng, 1 s of silence,
# as 16 kHz mono 16-bit PCM. Needs: apt-get install espeak-ng sox
set -euo pipefail
out="$(dirname "$0")/../test/fixtures/speech-16k.wav"
tmp=$(mktemp --suffix=.wav)
espeak-ng -w "$tmp" "Obstacle ahead. Stopping the robot now. Please clear the path."
sox "$tmp" -r 16000 -c 1 -b 16 "$out" pad 1 1
rm -f "$tmp"
