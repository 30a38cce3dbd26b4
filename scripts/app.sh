#!/usr/bin/env bash
# Install (if needed) and start the app on http://localhost:8501, opening on the bundled demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run app.py "$@"
