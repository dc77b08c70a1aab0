#!/usr/bin/env bash
# Install what the tests need (idempotent) and run the whole suite on CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# The whole suite, in two processes: the tests that load OpenVINO run in their own. With them in the same process,
# the interpreter crashed (SIGSEGV, no Python traceback) later in tests/test_readme.py on fresh-clone CI runs; the
# cause is not found yet. The rest runs with PyTorch's int8 mode so that nothing there loads OpenVINO.
OPENVINO_TESTS=(tests/test_openvino_vqa.py tests/test_quantization.py)
status=0
VQA_LLM_INT8_RUNTIME=torch.ao .venv/bin/python -m pytest "${OPENVINO_TESTS[@]/#/--ignore=}" || status=$?
.venv/bin/python -m pytest "${OPENVINO_TESTS[@]}" || status=$?
exit "$status"
