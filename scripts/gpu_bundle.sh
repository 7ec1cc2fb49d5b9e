#!/usr/bin/env bash
# Where the network is: the files the offline GPU host needs beside the working tree, into the git-ignored
# .gpu_bundle/ (carry it with the tree; docs/gpu.md). The pure-Python wheels pinned in scripts/gpu_bundle.txt
# (--no-deps, so one bundle installs on any Python 3.11+) and SmolLM2's tokenizer and config (no weights: the GPU
# check's rerank benchmark runs random weights of its exact shape where the real ones are absent). Fails above 40 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BUNDLE=.gpu_bundle
LIMIT_MIB=40
PIP="$PY -m pip --disable-pip-version-check -q"
rm -rf "$BUNDLE/wheels.tmp" && mkdir -p "$BUNDLE/wheels.tmp"
mapfile -t PINS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/gpu_bundle.txt)
# --no-binary for the pins that publish only an sdist (antlr4 4.9.3): pip builds their pure-Python wheel.
$PIP wheel --no-deps --no-binary antlr4-python3-runtime -w "$BUNDLE/wheels.tmp" "${PINS[@]}"
for whl in "$BUNDLE"/wheels.tmp/*.whl; do
  case "$whl" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) echo "error: $whl is not pure Python" >&2; exit 1;; esac
done
[ "$(ls "$BUNDLE"/wheels.tmp/*.whl | wc -l)" = "${#PINS[@]}" ] || { echo "error: expected ${#PINS[@]} wheels" >&2; exit 1; }
rm -rf "$BUNDLE/wheels" && mv "$BUNDLE/wheels.tmp" "$BUNDLE/wheels"
# SmolLM2-135M-Instruct's tokenizer and config, from the embedded model (the package setup.sh installs).
"$PY" - "$BUNDLE/smollm2_135m" <<'PYEOF'
import sys
from transformers import AutoConfig, AutoTokenizer
from freeret.backbone.embedded import embedded_checkpoint
folder, _ = embedded_checkpoint("smollm2_135m")
AutoConfig.from_pretrained(folder).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(folder).save_pretrained(sys.argv[1])
PYEOF
ls -l "$BUNDLE"/wheels/*.whl | awk '{printf "  %6.2f MiB  %s\n", $5 / 1048576, $NF}'
TOTAL=$(cat "$BUNDLE"/wheels/*.whl "$BUNDLE"/smollm2_135m/* | wc -c)
awk -v t="$TOTAL" -v l="$LIMIT_MIB" 'BEGIN {printf "gpu bundle: %.1f MiB in .gpu_bundle (wheels/ + smollm2_135m/; limit %d MiB)\n", t / 1048576, l}'
[ "$TOTAL" -le $((LIMIT_MIB * 1048576)) ] || { echo "error: the GPU bundle is over $LIMIT_MIB MiB" >&2; exit 1; }
