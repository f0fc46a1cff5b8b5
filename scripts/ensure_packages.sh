#!/usr/bin/env bash
# Debian packages the tests and benches drive for real: a Redis server (valkey-server where the release has
# it, else redis-server) for the remote tier, and fio, the ceiling of `kvtier bench storage`. Installed when
# missing and we are root with apt-get (CI); otherwise says what to install.
set -euo pipefail
missing=()
if ! command -v valkey-server >/dev/null && ! command -v redis-server >/dev/null; then
    missing+=(redis)
fi
if ! command -v fio >/dev/null; then
    missing+=(fio)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    pkgs=()
    for want in "${missing[@]}"; do
        if [ "$want" = redis ]; then
            if apt-cache show valkey-server >/dev/null 2>&1; then pkgs+=(valkey-server); else pkgs+=(redis-server); fi
        else
            pkgs+=("$want")
        fi
    done
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
    echo "installed ${pkgs[*]}"
else
    echo "warning: missing ${missing[*]}: the remote tier's tests fail without a server and bench storage runs" \
         "without its fio ceiling; apt-get install redis-server fio" >&2
fi
