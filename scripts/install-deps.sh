#!/usr/bin/env bash
# Installs the Debian packages starrelay builds and tests with. Safe to re-run.
set -euo pipefail
pkgs=(build-essential meson ninja-build pkg-config
      libjansson-dev libpcre2-dev libopenblas-dev
      libopenmpi-dev openmpi-bin
      libprotobuf-c-dev protobuf-c-compiler libgrpc-dev libmicrohttpd-dev
      python3 python3-grpcio python3-protobuf openssl shellcheck)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
