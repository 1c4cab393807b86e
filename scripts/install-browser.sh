#!/usr/bin/env bash
# Installs what the JavaScript device runtime's tests run in: Node.js (>= 18) and Debian's Chromium
# (driven by the pinned `playwright` package; its own browser download is not used). Root + apt only;
# elsewhere it says what to install and the tests that need them skip with the same message.
set -uo pipefail
need=()
if ! command -v node >/dev/null || [ "$(node -e 'console.log(process.versions.node.split(".")[0])')" -lt 18 ]; then
  need+=(nodejs)
fi
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || \
    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need[@]}" >/dev/null 2>&1)) || \
    echo "warning: could not apt-get install ${need[*]}; the JS runtime / web page tests will be skipped" >&2
else
  echo "note: the JS runtime and web page tests need: sudo apt-get install ${need[*]} (Debian/Ubuntu)" >&2
fi
exit 0
