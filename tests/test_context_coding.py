"""`benchmarks/context_coding.py`'s adaptive binary coder: its ideal code length is what an
adaptive coder of that binarization would spend, so it must follow the entropy of what it codes
and gain from its contexts exactly where the left latent tells something."""

from __future__ import annotations

import math

import numpy as np

from conftest import load_script

cc = load_script("benchmarks/context_coding.py")


def test_an_adaptive_estimate_costs_the_entropy_plus_a_learning_cost() -> None:
    """Bits of probability 0.1, one context, 64 columns of 256 rows: about n H(0.1) bits, more by
    the cost of learning one parameter a column at a time (the first column's 256 decisions at
    p = 1/2, at most one bit each, and a few dozen bits after), never less."""
    rng = np.random.default_rng(0)
    rows, cols = 256, 64
    bit = (rng.random((rows, cols)) < 0.1).astype(np.int64)
    col = np.broadcast_to(np.arange(cols), bit.shape).ravel()
    bits = cc.adaptive_bits(col, np.zeros(bit.size, np.int64), bit.ravel(), cols)
    p = bit.mean()
    entropy = -bit.size * (p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert entropy < bits < entropy + rows + 32


def test_a_probability_from_earlier_columns_only() -> None:
    """The first column is coded at p = 1/2 whatever it holds: one bit a decision."""
    bit = np.ones((10, 1), np.int64)
    assert cc.adaptive_bits(np.zeros(10, np.int64), np.zeros(10, np.int64), bit.ravel(), 1) \
        == 10.0


def test_contexts_pay_where_the_left_latent_tells_and_cost_little_where_it_does_not() -> None:
    rng = np.random.default_rng(1)
    # runs along each row: a latent is its left neighbour's, now and then a new one
    runs = np.cumsum(rng.random((64, 512)) < 0.05, axis=1) % 3 - 1
    assert cc.adaptive_bytes(runs, True) < 0.5 * cc.adaptive_bytes(runs, False)
    iid = rng.integers(-4, 5, size=(64, 512))
    with_ctx, without = cc.adaptive_bytes(iid, True), cc.adaptive_bytes(iid, False)
    assert without <= with_ctx < 1.03 * without
    # magnitudes past the unary part go through the Exp-Golomb remainder
    wide = rng.integers(-300, 301, size=(32, 64))
    assert cc.adaptive_bytes(wide, True) > 32 * 64 * 8 / 8  # about 9.2 bits a latent
