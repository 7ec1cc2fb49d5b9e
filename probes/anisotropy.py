"""Probe entry point: anisotropy at every sub-layer point (see freeret/probes/anisotropy.py).

    python probes/anisotropy.py model=smollm2_135m
    python probes/anisotropy.py -m model=smollm2_135m,gemma3_270m
"""

from _entry import entry

if __name__ == "__main__":
    entry("anisotropy")()
