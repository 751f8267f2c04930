#!/usr/bin/env bash
# System libraries the test suite needs beyond Python (Qt's offscreen platform
# plugin links against these). Installs only on Debian/Ubuntu when run as root
# (CI and fresh dev containers); elsewhere it prints what is missing.
set -euo pipefail
# offscreen (tests) needs the first line; a real X11 window (make run) the second
PKGS="libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0
      libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
      libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libx11-xcb1"
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
