"""Probe entry point: option bias, accuracy and order flips per framing (see freeret/probes/framing_sensitivity.py).

    python probes/framing_sensitivity.py model=smollm2_135m
    python probes/framing_sensitivity.py -m model=smollm2_135m,gemma3_270m
"""

from _entry import entry

if __name__ == "__main__":
    entry("framing_sensitivity")()
