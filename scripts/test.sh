#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every test: the Rust core's tests and the Python suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests find the corpus through LMCORE_DATA_DIR, in ../shared/data unless the caller says otherwise.
export LMCORE_DATA_DIR="${LMCORE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
# The interop tests' heavy peers (torch, transformers, gguf, llama-cpp-python) live in a venv outside the
# clone, built once per machine (scripts/peers.sh); without LMCORE_PEERS_PYTHON those tests skip.
export LMCORE_PEERS_PYTHON="${LMCORE_PEERS_PYTHON:-$(bash scripts/peers.sh)}"
# The chat page's test (tests/test_serve_page.py) drives Debian's Chromium headless through its driver
# (browser downloads are not reachable); installed with apt once if missing, else that test skips.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "test.sh: could not install chromium and chromium-driver; the chat page's test will skip"
  else
    echo "test.sh: no chromium and chromium-driver (apt-get install them as root); the chat page's test will skip"
  fi
fi
# The engine's build script finds its BLAS (scipy-openblas32) through this Python.
export PYO3_PYTHON="$PWD/.venv/bin/python"
cargo test --release -p lmcore-core
# Benchmarks are not run here, but they must keep compiling against the engine's API.
cargo build --release -p lmcore-core --benches --quiet
.venv/bin/python -m pytest -q "$@"
