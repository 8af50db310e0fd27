#!/usr/bin/env bash
# Install what TTG's demo, tests and benchmarks need and a fresh machine may
# lack: redis-server (and redis-cli), chromium (headless, for the dashboard's
# browser tests), and a Python virtual environment
# (target/pyenv) holding pytest and the ttg library from python/. Rust comes
# from rustup; protoc is vendored. Each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# install DEBIAN_PKG FEDORA_PKG BREW_PKG
install() {
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y "$2"
  elif command -v brew >/dev/null 2>&1; then
    brew install "$3"
  else
    echo "setup: cannot install $1 here: install it yourself" >&2
    exit 1
  fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: redis-server not found; installing it"
  install redis-server redis redis
  command -v redis-server >/dev/null 2>&1 || { echo "setup: redis-server still not on PATH" >&2; exit 1; }
  echo "setup: $(redis-server --version)"
fi

# The dashboard's tests drive a real headless browser (server/tests/dashboard.rs).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${TTG_CHROMIUM:-}" ]; then
  echo "setup: chromium not found; installing it (the dashboard's browser tests)"
  install chromium chromium chromium
  command -v chromium >/dev/null 2>&1 || { echo "setup: chromium still not on PATH (or set TTG_CHROMIUM)" >&2; exit 1; }
fi

# The Python library's tests (pytest) and the Python demo and benchmarks.
PYENV=target/pyenv
if ! command -v python3 >/dev/null 2>&1; then
  echo "setup: python3 not found; installing it"
  install python3 python3 python3
fi
if [ ! -x "$PYENV/bin/python" ]; then
  mkdir -p target
  if ! python3 -m venv "$PYENV" >/dev/null 2>&1; then
    echo "setup: python3 cannot make a virtual environment; installing python3-venv"
    rm -rf "$PYENV"
    install python3-venv python3 python3
    python3 -m venv "$PYENV"
  fi
fi
if ! "$PYENV/bin/python" -c "import pytest" 2>/dev/null; then
  echo "setup: installing pytest into $PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check pytest
fi
# Always reinstall the library: python/ may have changed since.
"$PYENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./python
rm -rf python/build python/*.egg-info
