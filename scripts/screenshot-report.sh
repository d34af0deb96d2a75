#!/usr/bin/env bash
# Screenshot of an audit report (or any local HTML page) with headless Chromium.
#
#   scripts/screenshot-report.sh REPORT.html OUT.png [WIDTH,HEIGHT]
#
# The window size defaults to 1280,2400 (the top of a long report). CHROMIUM overrides the
# browser (default /usr/bin/chromium, else chromium or chromium-browser on PATH). A fresh profile
# folder is used and removed, and the flags keep the browser off the network: the report needs
# nothing from it.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH,HEIGHT]" >&2
  exit 2
fi
report=$1
png=$2
size=${3:-1280,2400}

if [ ! -f "$report" ]; then
  echo "$0: $report does not exist" >&2
  exit 1
fi
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for b in /usr/bin/chromium chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then
      browser=$(command -v "$b")
      break
    fi
  done
fi
if [ -z "$browser" ]; then
  echo "$0: no Chromium found (install the chromium package or set CHROMIUM)" >&2
  exit 1
fi

url="file://$(realpath "$report")"
out=$(realpath -m "$png")
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
rm -f "$out"

# Chromium writes the file and exits; the timeout guards against a browser that hangs.
if ! timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --screenshot="$out" --window-size="$size" \
  "$url" >"$log" 2>&1 || [ ! -s "$out" ]; then
  echo "$0: Chromium did not write $out; its output:" >&2
  cat "$log" >&2
  exit 1
fi
echo "$out"
