#!/usr/bin/env bash
# Install what the app needs (idempotent) and start it. Extra arguments go to app.py
# (e.g. --profile bundled, --port 7861). Offline machines fall back to the bundled models. On the first run the
# llama.cpp LLM runtime compiles in the background (scripts/llama_cpp.sh): the app answers with transformers
# meanwhile, and with llama.cpp from its next start.
set -euo pipefail
cd "$(dirname "$0")/.."
VQA_LLM_LLAMA_CPP_BACKGROUND=1 bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
