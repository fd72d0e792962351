#!/usr/bin/env bash
# Render RUN/report.html with headless Chromium into RUN/report.png (for READMEs, issues and slides).
# Usage: scripts/screenshot_report.sh RUN [WIDTH [HEIGHT]]   (HEIGHT default: the whole page)
# Needs chromium (Debian: apt-get install chromium) or google-chrome; the page is self-contained, so this runs offline.
set -euo pipefail

run="${1:?usage: $0 RUN [WIDTH [HEIGHT]]}"
width="${2:-1280}"
height="${3:-}"
html="$(cd "$run" && pwd)/report.html"
[ -f "$html" ] || { echo "error: $html not found; run \`eikd-edge report $run\` first" >&2; exit 1; }

browser=""
for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$candidate" >/dev/null 2>&1; then browser="$candidate"; break; fi
done
[ -n "$browser" ] || { echo "error: no chromium/google-chrome found (Debian: apt-get install chromium)" >&2; exit 1; }

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
out="$(dirname "$html")/report.png"
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update --disable-sync
  --no-first-run --hide-scrollbars --user-data-dir="$profile" --virtual-time-budget=5000)
if [ -z "$height" ]; then  # measure the page: a copy of it records its own height once everything has loaded
  probe="$profile/probe.html"
  sed 's|</body>|<script>addEventListener("load",function(){document.body.dataset.pageHeight=document.documentElement.scrollHeight})</script></body>|' \
    "$html" >"$probe"
  height="$("$browser" "${flags[@]}" --window-size="${width},1000" --dump-dom "file://$probe" 2>/dev/null \
    | grep -o 'data-page-height="[0-9]*"' | grep -o '[0-9]\+' || true)"
  height="${height:-4000}"
fi
"$browser" "${flags[@]}" --window-size="${width},${height}" --screenshot="$out" "file://$html" >/dev/null 2>&1
[ -s "$out" ] || { echo "error: $browser wrote no screenshot" >&2; exit 1; }
echo "$out"
