#!/usr/bin/env bash
# The interop tests' heavy peers (torch, transformers, gguf, llama-cpp-python), in a venv OUTSIDE
# the clone that later runs on the same machine reuse: ${LMCORE_PEERS_DIR:-~/.cache/lmcore/peers}.
# It is (re)built when tests/requirements-peers.txt changes (a stamp of its sha256). Progress goes
# to stderr; the one line on stdout is the peers' python, for LMCORE_PEERS_PYTHON:
#   export LMCORE_PEERS_PYTHON="$(bash scripts/peers.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS_DIR="${LMCORE_PEERS_DIR:-$HOME/.cache/lmcore/peers}"
REQ=tests/requirements-peers.txt
STAMP="$PEERS_DIR/requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [ -x "$PEERS_DIR/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "peers: reusing $PEERS_DIR" >&2
else
  # llama-cpp-python compiles llama.cpp: CMake and a C++ compiler, from Debian if missing.
  missing=""
  command -v cmake >/dev/null || missing="$missing cmake"
  command -v g++ >/dev/null || missing="$missing g++"
  command -v make >/dev/null || missing="$missing make"
  if [ -n "$missing" ]; then
    echo "peers: installing$missing with apt" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >&2
  fi
  echo "peers: installing $REQ into $PEERS_DIR (the first time takes long: torch, and llama.cpp from source)" >&2
  rm -f "$STAMP"
  [ -x "$PEERS_DIR/bin/python" ] || python3 -m venv "$PEERS_DIR" >&2
  # Only the library is needed: no llama.cpp examples, tests or multimodal (llava/mtmd) library.
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PEERS_DIR/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$want" > "$STAMP"
fi
echo "$PEERS_DIR/bin/python"
