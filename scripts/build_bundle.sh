#!/usr/bin/env bash
# Build the PyInstaller bundle (dist/switchman/: `switchman` + `switchman-console`)
# and run the frozen self-test. Takes a few minutes, so it is not part of
# `make test`; run it before a release:
#   bash scripts/build_bundle.sh            (VENV=... to use another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no $PY: run 'make setup' first" >&2; exit 2; }

"$PY" -m pip install -q "pyinstaller>=6.10"
[ -f assets/switchman.ico ] || "$PY" scripts/make_icons.py

start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller pyinstaller.spec
echo "built dist/switchman in $(( $(date +%s) - start )) s"
echo "bundle size: $(du -sh dist/switchman | cut -f1) ($(find dist/switchman -type f | wc -l) files)"

"$PY" scripts/bundle_selftest.py dist/switchman
