#!/usr/bin/env bash
# Installs what DwarfStar needs on a fresh Debian 12 machine (idempotent). Runs as root or
# through sudo. Node packages for the test data and test clients are installed by test.sh.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PKGS=(build-essential cmake ninja-build pkg-config git
      libfmt-dev nlohmann-json3-dev libpcre2-dev libcli11-dev libcpp-httplib-dev libssl-dev
      libedit-dev libgtest-dev libgmock-dev libbenchmark-dev
      clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm (test data, official API clients): Debian's packages only where no node/npm
# is present, since a machine may already have another distribution of them (whose nodejs
# package bundles npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
# curl and python3 drive the server's client tests (health check, a free port).
for c in curl python3; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
