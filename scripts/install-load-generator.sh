#!/usr/bin/env bash
# Install wrk, the benchmark's load generator (`make bench`), from the distribution's packages.
# scripts/install-system-deps.sh installs it too; this script is for a machine that only benchmarks.
# Without wrk the benchmark falls back to a slower Python load generator.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  echo "wrk already installed: $(command -v wrk)"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk
elif command -v brew >/dev/null 2>&1; then
  brew install wrk
else
  echo "install wrk with your package manager (https://github.com/wg/wrk)" >&2
  exit 1
fi
wrk --version | head -1 || true
