#!/usr/bin/env bash
# System libraries the test suite needs beyond Python (Qt's offscreen platform
# plugin links against these). Installs only on Debian/Ubuntu when run as root
# (CI and fresh dev containers); elsewhere it prints what is missing.
set -euo pipefail
PKGS="libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0"
if ! command -v dpkg-query >/dev/null 2>&1; then exit 0; fi
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "note: Qt tests need these system packages:$missing (sudo apt-get install$missing)" >&2
fi
