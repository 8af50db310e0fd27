#!/usr/bin/env bash
# Install what TTG's demo, tests and benchmarks need and a fresh machine may
# lack: redis-server (and redis-cli). Rust comes from rustup; protoc is vendored.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "setup: redis-server not found; installing it"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
elif command -v dnf >/dev/null 2>&1; then
  $SUDO dnf install -y redis
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "setup: cannot install redis-server here: install Redis >= 7 yourself and put redis-server on PATH" >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || { echo "setup: redis-server still not on PATH" >&2; exit 1; }
echo "setup: $(redis-server --version)"
