#!/usr/bin/env bash
# Every benchmark in turn: each prints a table and writes JSON to bench/results/.
# (`./dev.sh bench` runs this after set-up.) Takes a few minutes; the soak runs separately:
#   python -m bench.soak --minutes 30
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -m bench.tts_latency --trials 30
python -m bench.stt_latency
python -m bench.turn_pipeline
python -m bench.bargein --episodes 10
python -m bench.voice_to_voice
python -m bench.turn_taking
python -m bench.tool_round
python -m bench.web_latency
python -m bench.phone_calls
python -m bench.phone_calls --mode fake --calls 10 25 50 100 150
# Creates its own Pipecat venv under bench/work/ on the first run (pip, a few minutes, once).
python -m bench.vs_pipecat --turns 12
