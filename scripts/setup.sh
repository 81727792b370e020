#!/usr/bin/env bash
# Install what RelayFS needs on a fresh Debian machine: FUSE 3 and its headers (pyfuse3
# builds from source), the tools the tests drive the mount with, a virtual environment
# in .venv, and RelayFS itself (with its test extras when called with --test).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=(fuse3 libfuse3-dev pkg-config gcc libc6-dev python3-dev python3-venv)
[ $want_test -eq 1 ] && pkgs+=(rsync attr vim systemd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extra=""
[ $want_test -eq 1 ] && extra="[test]"
.venv/bin/pip install -q -e ".${extra}"
echo "RelayFS installed in $(pwd)/.venv"
