#!/usr/bin/env bash
# Debian packages the project uses beyond its Python dependencies; idempotent.
#   wrk             the benchmark's load generator (make bench)
#   docker-compose  Debian's Compose 1.29, a second loader for the compose files
#                   in scripts/check_containers.sh (Compose v2 itself comes from
#                   PyPI with the dev extra; no Docker engine is needed)
#   chromium, chromium-driver   the headless browser of the job page's test
#                   (tests/jobs/test_ui_browser.py, driven by selenium)
#   jq              the README's job and CLI examples (tests/test_readme_examples.py)
#   haproxy         the proxy make bench measures beside the gateway (bench/haproxy.py)
#   redis-server    the shared rate-limit and quota tests start one of their own (tests/gateway, tests/integration)
#   npm             installs s3rver (below)
# and from npm:
#   s3rver          an S3 server that keeps objects on disk: the store outage of
#                   make chaos stops and restarts it (bench/outage_servers.py)
# apt-get runs only when a package is missing, so a ready machine pays nothing.
# Without these, the tests that need them skip locally, each naming what it misses;
# CI runs this script before the suite, so there they run.
set -euo pipefail

PACKAGES=(wrk docker-compose chromium chromium-driver jq redis-server haproxy)
S3RVER=s3rver@3.7.1
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

install_s3rver() {
    if command -v s3rver >/dev/null 2>&1; then
        return
    fi
    echo "installing $S3RVER (npm, global)"
    "${sudo[@]}" npm install --global --no-audit --no-fund --silent "$S3RVER" >/dev/null
}
if ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(npm)
fi

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages present: ${PACKAGES[*]}"
    install_s3rver
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]}: install them with your package manager" >&2
    exit 1
fi
echo "installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_s3rver
