#!/usr/bin/env bash
# Install (if needed) everything the tests use, then run lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if ! [ -x /usr/bin/chromium ]; then   # the browser (e2e) tests drive Debian's Chromium
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium >/dev/null;
  else sudo apt-get update -q && sudo apt-get install -y -q chromium >/dev/null; fi
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
