#!/usr/bin/env bash
# Build the llama.cpp LLM runtime (llama-cpp-python) into .venv, once per version and flags (a stamp in .venv).
#   bash scripts/llama_cpp.sh               build now; waits for a build already running, then finds its stamp
#   bash scripts/llama_cpp.sh --background  start the build in its own session and return at once
#                                           (scripts/app.sh: the page is up in minutes, not after the compile)
# PyPI has only the source of llama-cpp-python, so it is compiled here: 6-8 min on 2 cores, once. Portable flags
# (AVX2/FMA/F16C, no -march=native, no AVX-512/AMX): the build runs on other x86-64 CPUs and avoids a native
# build's crash seen on an AMX Xeon. A failed build is not retried until version or flags change, and the LLM
# then runs with transformers (--llm-runtime auto), as it does while a background build is still running.
# VQA_LLM_SKIP_LLAMA_CPP=1 skips it. --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP="llama-cpp-python==0.3.36"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
stamp=.venv/.llama-cpp-$(echo "$LLAMA_CPP $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)
if [ "${VQA_LLM_SKIP_LLAMA_CPP:-0}" = 1 ] || [ -e "$stamp" ]; then
  exit 0
fi
if [ "${1:-}" = "--background" ]; then
  echo "Compiling $LLAMA_CPP in the background (6-8 min once; log: .venv/llama-cpp-build.log). Until it is" \
       "built the LLM runs with transformers, slower; start the app again afterwards to use llama.cpp."
  setsid bash "$0" >.venv/llama-cpp-background.log 2>&1 </dev/null &
  exit 0
fi
exec 9>.venv/.llama-cpp.lock
flock 9  # one build at a time
if [ -e "$stamp" ]; then  # built while this call waited
  exit 0
fi
echo "Compiling $LLAMA_CPP (llama.cpp LLM runtime; once, several minutes; log: .venv/llama-cpp-build.log) ..."
started=$SECONDS
if CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/python -m pip install \
     --disable-pip-version-check --no-cache-dir "$LLAMA_CPP" >.venv/llama-cpp-build.log 2>&1 \
   && .venv/bin/python -c "import llama_cpp" >>.venv/llama-cpp-build.log 2>&1; then
  echo "ok $((SECONDS - started)) s" > "$stamp"
  echo "llama-cpp-python built in $((SECONDS - started)) s"
else
  echo "failed $((SECONDS - started)) s" > "$stamp"
  echo "warning: could not build $LLAMA_CPP (see .venv/llama-cpp-build.log); the LLM runs with transformers." \
       "Delete $stamp to try again." >&2
fi
