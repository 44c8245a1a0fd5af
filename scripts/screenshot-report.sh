#!/usr/bin/env bash
# Render a report in headless Chromium to a PNG, to look at it as a reader would.
#   scripts/screenshot-report.sh runs/quickstart/report.html [report.png] [height]
# Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install chromium" >&2; exit 1; }
[ -f "${1:-}" ] || { echo "no report at ${1:-(none given)}: give the path of a report.html" >&2; exit 1; }
report="$(realpath "$1")"
out="${2:-${report%.html}.png}"
height="${3:-3000}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1200,"$height" \
  --screenshot="$out" "file://$report" 2>/dev/null
echo "$out"
