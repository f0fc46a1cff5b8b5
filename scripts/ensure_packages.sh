#!/usr/bin/env bash
# Debian packages the tests drive for real: a Redis server (valkey-server where the release has it, else
# redis-server). Installed when missing and we are root with apt-get (CI); otherwise says what to install.
set -euo pipefail
if command -v valkey-server >/dev/null || command -v redis-server >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if apt-cache show valkey-server >/dev/null 2>&1; then pkg=valkey-server; else pkg=redis-server; fi
    apt-get install -y -qq "$pkg" >/dev/null
    echo "installed $pkg"
else
    echo "warning: no valkey-server or redis-server; the remote tier's tests will fail: apt-get install redis-server" >&2
fi
