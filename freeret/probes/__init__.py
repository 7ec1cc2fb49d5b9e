"""Mechanistic probes (no Hydra): sub-layer sweeps, anisotropy, lexical bias, framing sensitivity, plots."""
