#!/usr/bin/env bash
# Start the app on http://localhost:8501 (opening on the bundled demo data). The first start installs the
# pinned dependencies into .venv; later starts skip pip unless requirements.txt or pyproject.toml changed
# (their checksum is stamped in .venv/.gala-installed). Set GALA_REINSTALL=1 to force an install.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.gala-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "${GALA_REINSTALL:-0}" = "1" ] || [ ! -x .venv/bin/streamlit ] || [ "$want" != "$have" ]; then
  echo "Installing GALA Studio's dependencies into .venv (first start or requirements changed)…"
  log=$(mktemp)
  if ! PYTHONWARNINGS=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 bash scripts/setup.sh >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "Installing failed (the full log: $log)." >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$STAMP"
fi
exec .venv/bin/streamlit run app.py "$@"
