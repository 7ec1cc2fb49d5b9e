"""Probe entry point: lexical bias at every sub-layer point (see freeret/probes/lexical_bias.py).

    python probes/lexical_bias.py model=smollm2_135m
    python probes/lexical_bias.py -m model=smollm2_135m,gemma3_270m
"""

from _entry import entry

if __name__ == "__main__":
    entry("lexical_bias")()
