#!/usr/bin/env bash
# Install what the app needs (idempotent) and start it. Extra arguments go to app.py
# (e.g. --profile bundled, --port 7861). Offline machines fall back to the bundled models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
