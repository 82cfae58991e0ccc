"""Experiments: the paper's reproduction and the side-by-side benchmark, both writing JSON first."""
