#!/usr/bin/env bash
# Upload this checkout's tracked files (git ls-files) to the Hugging Face Space OWNER/NAME, creating it if missing.
#   bash scripts/deploy_space.sh OWNER/NAME --dry-run      list each file (size, regular or lfs/xet) and the totals
#   HF_TOKEN=hf_... bash scripts/deploy_space.sh OWNER/NAME   upload (refused with uncommitted changes: --allow-dirty)
# Without a token it is a dry run. The work is done by scripts/deploy_space.py (huggingface_hub).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
exec "$python" "$root/scripts/deploy_space.py" "$@"
