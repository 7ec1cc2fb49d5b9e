#!/usr/bin/env bash
# The GPU check in one command, offline: bash scripts/gpu_check.sh --out DIR (docs/gpu.md). Extra arguments go to
# scripts/gpu_check.py. With .gpu_bundle/ beside the tree (scripts/gpu_bundle.sh), its wheels are installed with
# --no-index into $FREERET_GPU_SITE (default .gpu_site/) and put first on PYTHONPATH; without it, set-up runs only
# when scripts/gpu_env.py finds a version outside setup.cfg's ranges. $PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PY="${PYTHON:-python3}"
SITE="${FREERET_GPU_SITE:-$REPO/.gpu_site}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_bundle/wheels ]; then
  STAMP="$(cd .gpu_bundle/wheels && sha256sum ./*.whl)"
  if [ "$(cat "$SITE/.bundle_stamp" 2>/dev/null)" != "$STAMP" ]; then
    rm -rf "$SITE" && mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore -q --no-index --no-deps --no-compile --target "$SITE" \
        .gpu_bundle/wheels/*.whl || { echo "error: could not install .gpu_bundle/wheels into $SITE" >&2; exit 2; }
    else  # no pip: pure-Python wheels are zip files laid out as installed
      for whl in .gpu_bundle/wheels/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE" || exit 2; done
    fi
    echo "$STAMP" > "$SITE/.bundle_stamp"
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  export FREERET_SMOLLM2_CONFIG="${FREERET_SMOLLM2_CONFIG:-$REPO/.gpu_bundle/smollm2_135m}"
elif ! "$PY" scripts/gpu_env.py check; then
  echo "[gpu_check] no .gpu_bundle/ and versions outside setup.cfg's ranges: running scripts/setup.sh" >&2
  bash scripts/setup.sh || echo "[gpu_check] scripts/setup.sh failed: the env step will say what is missing" >&2
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-disabled}"
exec "$PY" scripts/gpu_check.py "$@"
